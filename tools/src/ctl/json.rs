//! JSON for `vortexctl`: payloads, filters and vectors as a user types them, to and from
//! the VBP messages (docs/VORTEXCTL.md has the grammar).
//!
//! - A **payload** is a JSON object of at most 64 fields; a value is an integer, a float, a
//!   string, a boolean or an array of strings.
//! - A **filter** is a tree: `{"field": F, "eq": V}`, `{"field": F, "in": [V, …]}`,
//!   `{"field": F, "gte": x, "lt": y}` (any of `gt`, `gte`, `lt`, `lte`),
//!   `{"and": [filter, …]}`, `{"or": [filter, …]}`, `{"not": filter}`. It becomes VBP's
//!   node list (children before parents, the root last).
//!
//! Every error names where in the input it is (`filter.and[1].in`) and what is accepted.

use serde_json::{Map, Number, Value};
use vortex_vbp::message::{Filter, FilterNode, Payload, PayloadField, PayloadValue};

/// The most nodes a filter may have (VBP's limit).
pub const FILTER_NODES_MAX: usize = 256;
/// The most fields a payload may have (VBP's limit).
pub const PAYLOAD_FIELDS_MAX: usize = 64;
/// How deep a filter may nest (bounds the recursion on user input).
const FILTER_DEPTH_MAX: usize = 32;

/// Input that does not say what it should; the message says where and what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct JsonError(pub String);

fn error(at: &str, message: impl std::fmt::Display) -> JsonError {
    JsonError(format!("{at}: {message}"))
}

/// A payload from a JSON object.
pub fn payload_from_json(value: &Value, at: &str) -> Result<Payload, JsonError> {
    let Value::Object(map) = value else {
        return Err(error(at, "expected a JSON object of fields"));
    };
    if map.len() > PAYLOAD_FIELDS_MAX {
        return Err(error(
            at,
            format!(
                "{} fields; a payload has at most {PAYLOAD_FIELDS_MAX}",
                map.len()
            ),
        ));
    }
    let mut fields = Vec::with_capacity(map.len());
    for (key, value) in map {
        let at = format!("{at}.{key}");
        if key.is_empty() || key.len() > 255 {
            return Err(error(&at, "a field name has 1 to 255 bytes"));
        }
        fields.push(PayloadField {
            key: key.clone(),
            value: payload_value(value, &at)?,
        });
    }
    Ok(Payload { fields })
}

fn payload_value(value: &Value, at: &str) -> Result<PayloadValue, JsonError> {
    match value {
        Value::Bool(b) => Ok(PayloadValue::Bool(*b)),
        Value::Number(n) => Ok(number(n)),
        Value::String(s) => Ok(PayloadValue::Str(s.clone())),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(error(
                    &format!("{at}[{i}]"),
                    "a list holds strings only (integers, floats and booleans are single values)",
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(PayloadValue::StrList),
        Value::Null | Value::Object(_) => Err(error(
            at,
            "expected an integer, a float, a string, a boolean or a list of strings",
        )),
    }
}

fn number(n: &Number) -> PayloadValue {
    match n.as_i64() {
        Some(i) => PayloadValue::Int(i),
        None => PayloadValue::Float(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// A payload as a JSON object.
pub fn payload_to_json(payload: &Payload) -> Value {
    let mut map = Map::new();
    for field in &payload.fields {
        let value = match &field.value {
            PayloadValue::Int(i) => Value::from(*i),
            PayloadValue::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
            PayloadValue::Str(s) => Value::from(s.clone()),
            PayloadValue::Bool(b) => Value::from(*b),
            PayloadValue::StrList(list) => Value::from(list.clone()),
        };
        map.insert(field.key.clone(), value);
    }
    Value::Object(map)
}

/// A filter from its JSON tree.
pub fn filter_from_json(value: &Value) -> Result<Filter, JsonError> {
    let mut nodes = Vec::new();
    add_filter(value, "filter", 0, &mut nodes)?;
    Ok(Filter { nodes })
}

/// Adds `value`'s nodes (children first) and returns the index of its root.
fn add_filter(
    value: &Value,
    at: &str,
    depth: usize,
    nodes: &mut Vec<FilterNode>,
) -> Result<u32, JsonError> {
    if depth > FILTER_DEPTH_MAX {
        return Err(error(
            at,
            format!("nested deeper than {FILTER_DEPTH_MAX} levels"),
        ));
    }
    let Value::Object(map) = value else {
        return Err(error(
            at,
            "expected an object: {\"field\": …, \"eq\"|\"in\"|\"gt\"|\"gte\"|\"lt\"|\"lte\": …} or {\"and\"|\"or\": [...]} or {\"not\": {...}}",
        ));
    };
    let node = if let Some(children) = map.get("and").or_else(|| map.get("or")) {
        let word = if map.contains_key("and") { "and" } else { "or" };
        if map.len() != 1 {
            return Err(error(at, format!("`{word}` stands alone in its object")));
        }
        let Value::Array(children) = children else {
            return Err(error(&format!("{at}.{word}"), "expected a list of filters"));
        };
        if children.is_empty() {
            return Err(error(
                &format!("{at}.{word}"),
                "expected at least one filter",
            ));
        }
        let mut indices = Vec::with_capacity(children.len());
        for (i, child) in children.iter().enumerate() {
            indices.push(add_filter(
                child,
                &format!("{at}.{word}[{i}]"),
                depth + 1,
                nodes,
            )?);
        }
        if word == "and" {
            FilterNode::And(indices)
        } else {
            FilterNode::Or(indices)
        }
    } else if let Some(child) = map.get("not") {
        if map.len() != 1 {
            return Err(error(at, "`not` stands alone in its object"));
        }
        FilterNode::Not(add_filter(child, &format!("{at}.not"), depth + 1, nodes)?)
    } else {
        condition(map, at)?
    };
    if nodes.len() >= FILTER_NODES_MAX {
        return Err(error(
            at,
            format!("a filter has at most {FILTER_NODES_MAX} conditions and combinators"),
        ));
    }
    nodes.push(node);
    Ok((nodes.len() - 1) as u32)
}

/// A leaf: `{"field": F, "eq": V}`, `{"field": F, "in": [...]}` or a range.
fn condition(map: &Map<String, Value>, at: &str) -> Result<FilterNode, JsonError> {
    let field = match map.get("field") {
        Some(Value::String(field)) if !field.is_empty() => field.clone(),
        Some(_) => return Err(error(&format!("{at}.field"), "expected a field name")),
        None => {
            return Err(error(
                at,
                "expected `field` with `eq`, `in` or a range (`gt`, `gte`, `lt`, `lte`), or `and`, `or`, `not`",
            ))
        }
    };
    let others: Vec<&str> = map
        .keys()
        .map(String::as_str)
        .filter(|k| *k != "field")
        .collect();
    let unknown: Vec<&str> = others
        .iter()
        .copied()
        .filter(|k| !["eq", "in", "gt", "gte", "lt", "lte"].contains(k))
        .collect();
    if !unknown.is_empty() {
        return Err(error(
            at,
            format!(
                "unknown key(s) {}: expected eq, in, gt, gte, lt, lte",
                unknown.join(", ")
            ),
        ));
    }
    if let Some(value) = map.get("eq") {
        if others.len() != 1 {
            return Err(error(at, "`eq` takes no other condition beside it"));
        }
        return Ok(FilterNode::Eq {
            field,
            value: payload_value(value, &format!("{at}.eq"))?,
        });
    }
    if let Some(values) = map.get("in") {
        if others.len() != 1 {
            return Err(error(at, "`in` takes no other condition beside it"));
        }
        let Value::Array(values) = values else {
            return Err(error(&format!("{at}.in"), "expected a list of values"));
        };
        if values.is_empty() || values.len() > 1024 {
            return Err(error(&format!("{at}.in"), "expected 1 to 1,024 values"));
        }
        let values = values
            .iter()
            .enumerate()
            .map(|(i, v)| payload_value(v, &format!("{at}.in[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(FilterNode::In { field, values });
    }
    let bound = |key: &str| -> Result<Option<f64>, JsonError> {
        match map.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x)),
                _ => Err(error(&format!("{at}.{key}"), "expected a finite number")),
            },
            Some(_) => Err(error(&format!("{at}.{key}"), "expected a number")),
        }
    };
    let (gt, gte, lt, lte) = (bound("gt")?, bound("gte")?, bound("lt")?, bound("lte")?);
    if gt.is_some() && gte.is_some() || lt.is_some() && lte.is_some() {
        return Err(error(
            at,
            "give one lower bound (gt or gte) and one upper (lt or lte)",
        ));
    }
    let (min, max) = (gt.or(gte), lt.or(lte));
    if min.is_none() && max.is_none() {
        return Err(error(at, "a range needs gt, gte, lt or lte"));
    }
    Ok(FilterNode::Range {
        field,
        min,
        max,
        min_inclusive: gte.is_some(),
        max_inclusive: lte.is_some(),
    })
}

/// A vector from a JSON array of numbers (finite, so the server will take it).
pub fn vector_from_json(value: &Value, at: &str) -> Result<Vec<f32>, JsonError> {
    let Value::Array(items) = value else {
        return Err(error(at, "expected a JSON array of numbers"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.as_f64() {
            Some(x) if (x as f32).is_finite() => Ok(x as f32),
            _ => Err(error(
                &format!("{at}[{i}]"),
                "expected a finite number within f32's range",
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payloads_go_both_ways() {
        let value = json!({"n": 3, "x": 1.5, "s": "red", "b": true, "tags": ["a", "b"]});
        let payload = payload_from_json(&value, "payload").unwrap();
        assert_eq!(payload.fields.len(), 5);
        assert_eq!(payload_to_json(&payload), value);
    }

    #[test]
    fn bad_payloads_say_where_and_what() {
        let cases = [
            (json!([1]), "payload: expected a JSON object"),
            (json!({"a": null}), "payload.a: expected an integer"),
            (json!({"a": {"b": 1}}), "payload.a: expected an integer"),
            (
                json!({"a": ["x", 2]}),
                "payload.a[1]: a list holds strings only",
            ),
        ];
        for (value, expected) in cases {
            let got = payload_from_json(&value, "payload").unwrap_err().0;
            assert!(got.starts_with(expected), "{got}");
        }
        let many: Map<String, Value> = (0..65).map(|i| (format!("f{i}"), json!(i))).collect();
        let got = payload_from_json(&Value::Object(many), "payload").unwrap_err();
        assert!(got.0.contains("at most 64"), "{got}");
    }

    #[test]
    fn a_filter_tree_becomes_nodes_children_first() {
        let value = json!({"and": [
            {"field": "color", "eq": "red"},
            {"not": {"field": "size", "in": [1, 2]}},
            {"field": "price", "gte": 1, "lt": 10.5}
        ]});
        let filter = filter_from_json(&value).unwrap();
        assert_eq!(
            filter.nodes,
            vec![
                FilterNode::Eq {
                    field: "color".into(),
                    value: PayloadValue::Str("red".into())
                },
                FilterNode::In {
                    field: "size".into(),
                    values: vec![PayloadValue::Int(1), PayloadValue::Int(2)]
                },
                FilterNode::Not(1),
                FilterNode::Range {
                    field: "price".into(),
                    min: Some(1.0),
                    max: Some(10.5),
                    min_inclusive: true,
                    max_inclusive: false
                },
                FilterNode::And(vec![0, 2, 3]),
            ]
        );
    }

    #[test]
    fn bad_filters_say_where_and_what() {
        let cases = [
            (json!("red"), "filter: expected an object"),
            (
                json!({"and": []}),
                "filter.and: expected at least one filter",
            ),
            (
                json!({"and": [{"field": "a"}]}),
                "filter.and[0]: a range needs",
            ),
            (
                json!({"field": "a", "eq": 1, "gt": 2}),
                "filter: `eq` takes no other",
            ),
            (
                json!({"field": "a", "gt": 1, "gte": 2}),
                "filter: give one lower bound",
            ),
            (
                json!({"field": "a", "like": "x"}),
                "filter: unknown key(s) like",
            ),
            (
                json!({"or": [{"not": {"eq": 1}}]}),
                "filter.or[0].not: expected `field`",
            ),
            (
                json!({"field": "a", "in": []}),
                "filter.in: expected 1 to 1,024",
            ),
        ];
        for (value, expected) in cases {
            let got = filter_from_json(&value).unwrap_err().0;
            assert!(got.starts_with(expected), "{value}: {got}");
        }
        let mut deep = json!({"field": "a", "eq": 1});
        for _ in 0..40 {
            deep = json!({ "not": deep });
        }
        assert!(filter_from_json(&deep).unwrap_err().0.contains("deeper"));
        let wide =
            json!({"or": (0..300).map(|i| json!({"field": "a", "eq": i})).collect::<Vec<_>>()});
        assert!(filter_from_json(&wide)
            .unwrap_err()
            .0
            .contains("at most 256"));
    }

    #[test]
    fn vectors_must_be_finite_numbers() {
        assert_eq!(
            vector_from_json(&json!([1, 2.5]), "v").unwrap(),
            vec![1.0, 2.5]
        );
        assert!(vector_from_json(&json!([1, "x"]), "v")
            .unwrap_err()
            .0
            .starts_with("v[1]"));
        assert!(vector_from_json(&json!([1e300]), "v").is_err());
    }
}
