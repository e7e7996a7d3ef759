//! Payloads as stored, and payload filters.
//!
//! A point's payload (VBP's [`Payload`]: a small map of field → int, float, string, bool or
//! list of strings) is stored in the point's SSTable entry in this encoding, little-endian:
//!
//! ```text
//! version u8 (1) | field_count u8 | fields
//! field: key_len u8 | key (UTF-8) | tag u8 | value
//!   tag 1 int    i64
//!   tag 2 float  f64
//!   tag 3 str    len u32 | UTF-8 bytes
//!   tag 4 bool   u8 (0 or 1)
//!   tag 5 list   count u32 | (len u32 | UTF-8 bytes) × count
//! ```
//!
//! No payload (and an empty one) is stored as zero bytes. [`decode`] refuses anything else
//! that does not follow the format (it reads bytes from disk, which a bug or damage could
//! have changed) instead of trusting it.
//!
//! [`matches`] evaluates a VBP [`Filter`] (nodes in dependency order, the last the root)
//! against a payload: `Eq` (a list matches when it contains the value; ints and floats
//! compare as numbers), `Range` over an int or float field, `In`, `And`, `Or`, `Not`. A
//! missing field matches no `Eq`, `Range` or `In`.

use vortex_vbp::message::{Filter, FilterNode, Payload, PayloadField, PayloadValue};

/// The encoding's version byte.
const VERSION: u8 = 1;
/// Fields a payload may hold (VBP's limit).
pub const FIELDS_MAX: usize = vortex_vbp::validator::PAYLOAD_FIELDS_MAX;
/// Bytes a string value may hold (VBP's limit).
pub const STRING_BYTES_MAX: usize = vortex_vbp::validator::STRING_BYTES_MAX;
/// Strings a list may hold (VBP's limit).
pub const LIST_ITEMS_MAX: usize = vortex_vbp::validator::LIST_VALUES_MAX;
/// Nodes a filter may hold (VBP's limit).
pub const FILTER_NODES_MAX: usize = vortex_vbp::validator::FILTER_NODES_MAX;

const TAG_INT: u8 = 1;
const TAG_FLOAT: u8 = 2;
const TAG_STR: u8 = 3;
const TAG_BOOL: u8 = 4;
const TAG_LIST: u8 = 5;

/// Why a payload or a filter is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// A payload that breaks a limit or a rule (from a client).
    #[error("invalid payload: {0}")]
    Invalid(String),
    /// Stored bytes that do not decode.
    #[error("undecodable stored payload: {0}")]
    Corrupt(String),
    /// A filter that breaks a rule.
    #[error("invalid filter: {0}")]
    BadFilter(String),
}

/// Checks a client's payload against the limits.
pub fn validate(payload: &Payload) -> Result<(), PayloadError> {
    let invalid = |detail: String| Err(PayloadError::Invalid(detail));
    if payload.fields.len() > FIELDS_MAX {
        return invalid(format!(
            "{} fields, at most {FIELDS_MAX}",
            payload.fields.len()
        ));
    }
    for (index, field) in payload.fields.iter().enumerate() {
        if field.key.is_empty() || field.key.len() > 255 {
            return invalid(format!("field key of {} bytes (1 to 255)", field.key.len()));
        }
        if payload.fields[..index].iter().any(|f| f.key == field.key) {
            return invalid(format!("field {:?} appears twice", field.key));
        }
        match &field.value {
            PayloadValue::Str(text) if text.len() > STRING_BYTES_MAX => {
                return invalid(format!(
                    "field {:?}: string over {STRING_BYTES_MAX} bytes",
                    field.key
                ))
            }
            PayloadValue::StrList(items)
                if items.len() > LIST_ITEMS_MAX
                    || items.iter().any(|item| item.len() > STRING_BYTES_MAX) =>
            {
                return invalid(format!("field {:?}: list over its limits", field.key))
            }
            PayloadValue::Float(value) if !value.is_finite() => {
                return invalid(format!("field {:?}: a float must be finite", field.key))
            }
            _ => {}
        }
    }
    Ok(())
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Encodes a validated payload (`None` or no fields: nothing).
pub fn encode(payload: Option<&Payload>, out: &mut Vec<u8>) {
    out.clear();
    let Some(payload) = payload.filter(|p| !p.fields.is_empty()) else {
        return;
    };
    out.push(VERSION);
    out.push(payload.fields.len() as u8);
    for field in &payload.fields {
        out.push(field.key.len() as u8);
        out.extend_from_slice(field.key.as_bytes());
        match &field.value {
            PayloadValue::Int(value) => {
                out.push(TAG_INT);
                out.extend_from_slice(&value.to_le_bytes());
            }
            PayloadValue::Float(value) => {
                out.push(TAG_FLOAT);
                out.extend_from_slice(&value.to_le_bytes());
            }
            PayloadValue::Str(text) => {
                out.push(TAG_STR);
                put_str(out, text);
            }
            PayloadValue::Bool(value) => {
                out.push(TAG_BOOL);
                out.push(u8::from(*value));
            }
            PayloadValue::StrList(items) => {
                out.push(TAG_LIST);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for item in items {
                    put_str(out, item);
                }
            }
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], PayloadError> {
        let end = self
            .at
            .checked_add(count)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| PayloadError::Corrupt(format!("truncated at byte {}", self.at)))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, PayloadError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, PayloadError> {
        let raw = self.take(4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }

    fn u64(&mut self) -> Result<u64, PayloadError> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(word))
    }

    fn text(&mut self, len: usize) -> Result<String, PayloadError> {
        if len > STRING_BYTES_MAX {
            return Err(PayloadError::Corrupt(format!("string of {len} bytes")));
        }
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| PayloadError::Corrupt("a string is not UTF-8".to_owned()))
    }
}

/// Decodes stored payload bytes: `None` for no payload.
pub fn decode(bytes: &[u8]) -> Result<Option<Payload>, PayloadError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.u8()?;
    if version != VERSION {
        return Err(PayloadError::Corrupt(format!("version {version}")));
    }
    let count = reader.u8()? as usize;
    if count == 0 || count > FIELDS_MAX {
        return Err(PayloadError::Corrupt(format!("{count} fields")));
    }
    let mut fields = Vec::with_capacity(count);
    for _ in 0..count {
        let key_len = reader.u8()? as usize;
        let key = reader.text(key_len)?;
        let value = match reader.u8()? {
            TAG_INT => PayloadValue::Int(reader.u64()? as i64),
            TAG_FLOAT => PayloadValue::Float(f64::from_bits(reader.u64()?)),
            TAG_STR => {
                let len = reader.u32()? as usize;
                PayloadValue::Str(reader.text(len)?)
            }
            TAG_BOOL => match reader.u8()? {
                0 => PayloadValue::Bool(false),
                1 => PayloadValue::Bool(true),
                other => return Err(PayloadError::Corrupt(format!("bool {other}"))),
            },
            TAG_LIST => {
                let items = reader.u32()? as usize;
                if items > LIST_ITEMS_MAX {
                    return Err(PayloadError::Corrupt(format!("list of {items} items")));
                }
                let mut list = Vec::with_capacity(items);
                for _ in 0..items {
                    let len = reader.u32()? as usize;
                    list.push(reader.text(len)?);
                }
                PayloadValue::StrList(list)
            }
            tag => return Err(PayloadError::Corrupt(format!("unknown tag {tag}"))),
        };
        fields.push(PayloadField { key, value });
    }
    if reader.at != bytes.len() {
        return Err(PayloadError::Corrupt(
            "bytes after the last field".to_owned(),
        ));
    }
    let payload = Payload { fields };
    validate(&payload).map_err(|error| PayloadError::Corrupt(error.to_string()))?;
    Ok(Some(payload))
}

/// Checks a filter's shape: 1 to 256 nodes, each child an earlier node, at least one bound
/// per range, 1 to 1024 values per `In`.
pub fn validate_filter(filter: &Filter) -> Result<(), PayloadError> {
    let bad = |detail: String| Err(PayloadError::BadFilter(detail));
    if filter.nodes.is_empty() || filter.nodes.len() > FILTER_NODES_MAX {
        return bad(format!(
            "{} nodes (1 to {FILTER_NODES_MAX})",
            filter.nodes.len()
        ));
    }
    for (index, node) in filter.nodes.iter().enumerate() {
        let earlier = |child: &u32| (*child as usize) < index;
        match node {
            FilterNode::Range { min, max, .. } if min.is_none() && max.is_none() => {
                return bad(format!("node {index}: a range needs a bound"))
            }
            FilterNode::In { values, .. } if values.is_empty() || values.len() > 1024 => {
                return bad(format!("node {index}: `in` takes 1 to 1024 values"))
            }
            FilterNode::And(children) | FilterNode::Or(children)
                if children.is_empty() || !children.iter().all(earlier) =>
            {
                return bad(format!("node {index}: children must be earlier nodes"))
            }
            FilterNode::Not(child) if !earlier(child) => {
                return bad(format!("node {index}: its child must be an earlier node"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn number(value: &PayloadValue) -> Option<f64> {
    match value {
        PayloadValue::Int(value) => Some(*value as f64),
        PayloadValue::Float(value) => Some(*value),
        _ => None,
    }
}

fn equal(held: &PayloadValue, wanted: &PayloadValue) -> bool {
    match (held, wanted) {
        (PayloadValue::StrList(items), PayloadValue::Str(text)) => items.contains(text),
        (PayloadValue::Int(a), PayloadValue::Int(b)) => a == b,
        (held, wanted) => match (number(held), number(wanted)) {
            (Some(a), Some(b)) => a == b,
            _ => held == wanted,
        },
    }
}

fn field<'a>(payload: Option<&'a Payload>, name: &str) -> Option<&'a PayloadValue> {
    payload?
        .fields
        .iter()
        .find(|field| field.key == name)
        .map(|field| &field.value)
}

/// Whether `payload` matches a validated `filter`.
pub fn matches(filter: &Filter, payload: Option<&Payload>) -> bool {
    let mut results: Vec<bool> = Vec::with_capacity(filter.nodes.len());
    for node in &filter.nodes {
        let at = |child: &u32| results.get(*child as usize).copied().unwrap_or(false);
        let result = match node {
            FilterNode::Eq { field: name, value } => {
                field(payload, name).is_some_and(|held| equal(held, value))
            }
            FilterNode::In {
                field: name,
                values,
            } => field(payload, name).is_some_and(|held| values.iter().any(|v| equal(held, v))),
            FilterNode::Range {
                field: name,
                min,
                max,
                min_inclusive,
                max_inclusive,
            } => field(payload, name).and_then(number).is_some_and(|value| {
                let above = min.is_none_or(|min| {
                    if *min_inclusive {
                        value >= min
                    } else {
                        value > min
                    }
                });
                let below = max.is_none_or(|max| {
                    if *max_inclusive {
                        value <= max
                    } else {
                        value < max
                    }
                });
                above && below
            }),
            FilterNode::And(children) => children.iter().all(at),
            FilterNode::Or(children) => children.iter().any(at),
            FilterNode::Not(child) => !at(child),
        };
        results.push(result);
    }
    results.last().copied().unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Payload {
        Payload {
            fields: vec![
                PayloadField {
                    key: "year".into(),
                    value: PayloadValue::Int(1959),
                },
                PayloadField {
                    key: "rating".into(),
                    value: PayloadValue::Float(4.5),
                },
                PayloadField {
                    key: "genres".into(),
                    value: PayloadValue::StrList(vec!["jazz".into(), "modal".into()]),
                },
                PayloadField {
                    key: "live".into(),
                    value: PayloadValue::Bool(false),
                },
                PayloadField {
                    key: "title".into(),
                    value: PayloadValue::Str("Kind of Blue".into()),
                },
            ],
        }
    }

    #[test]
    fn payloads_round_trip_and_damage_is_refused() {
        let mut bytes = Vec::new();
        encode(Some(&sample()), &mut bytes);
        assert_eq!(decode(&bytes).unwrap(), Some(sample()));
        encode(None, &mut bytes);
        assert!(bytes.is_empty());
        assert_eq!(decode(&bytes).unwrap(), None);
        encode(Some(&sample()), &mut bytes);
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
        bytes[0] = 9;
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn limits_are_enforced() {
        let mut payload = sample();
        payload.fields.push(payload.fields[0].clone());
        assert!(validate(&payload)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        let nan = Payload {
            fields: vec![PayloadField {
                key: "x".into(),
                value: PayloadValue::Float(f64::NAN),
            }],
        };
        assert!(validate(&nan).is_err());
        assert!(validate(&sample()).is_ok());
    }

    fn eq(field: &str, value: PayloadValue) -> FilterNode {
        FilterNode::Eq {
            field: field.into(),
            value,
        }
    }

    #[test]
    fn filters_match_as_documented() {
        let payload = sample();
        let check = |nodes: Vec<FilterNode>| {
            let filter = Filter { nodes };
            validate_filter(&filter).unwrap();
            matches(&filter, Some(&payload))
        };
        assert!(check(vec![eq("genres", PayloadValue::Str("jazz".into()))]));
        assert!(!check(vec![eq("genres", PayloadValue::Str("rock".into()))]));
        assert!(check(vec![eq("year", PayloadValue::Float(1959.0))]));
        assert!(check(vec![eq("live", PayloadValue::Bool(false))]));
        assert!(!check(vec![eq("missing", PayloadValue::Bool(false))]));
        let range = |min, max, inclusive| FilterNode::Range {
            field: "rating".into(),
            min,
            max,
            min_inclusive: inclusive,
            max_inclusive: inclusive,
        };
        assert!(check(vec![range(Some(4.5), None, true)]));
        assert!(!check(vec![range(Some(4.5), None, false)]));
        assert!(check(vec![range(None, Some(5.0), false)]));
        assert!(check(vec![FilterNode::In {
            field: "year".into(),
            values: vec![PayloadValue::Int(1), PayloadValue::Int(1959)],
        }]));
        assert!(check(vec![
            eq("live", PayloadValue::Bool(true)),
            FilterNode::Not(0),
            eq("year", PayloadValue::Int(1959)),
            FilterNode::And(vec![1, 2]),
        ]));
        assert!(!check(vec![
            eq("live", PayloadValue::Bool(true)),
            eq("year", PayloadValue::Int(1)),
            FilterNode::Or(vec![0, 1]),
        ]));
        // No payload: no field matches, so its negation does.
        let absent = Filter {
            nodes: vec![eq("year", PayloadValue::Int(1959)), FilterNode::Not(0)],
        };
        assert!(!matches(
            &Filter {
                nodes: vec![absent.nodes[0].clone()]
            },
            None
        ));
        assert!(matches(&absent, None));
        assert!(validate_filter(&Filter {
            nodes: vec![FilterNode::Not(0)]
        })
        .is_err());
        assert!(validate_filter(&Filter { nodes: vec![] }).is_err());
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(Some(payload)) = decode(&bytes) {
                let mut again = Vec::new();
                encode(Some(&payload), &mut again);
                prop_assert_eq!(decode(&again).unwrap(), Some(payload));
            }
        }
    }
}
