//! The payload index of a segment: which nodes (the side-car index's node ids, the slots of
//! the SSTable's vector region) hold which payload values, so that a filter becomes a node
//! set before the graph search starts, instead of a payload decoded per visited node.
//!
//! - keyword fields (strings, and each string of a list): value → node bitset;
//! - bool fields: value → node bitset;
//! - numeric fields: `(value, node)` sorted by value, ints and floats apart (ints compare
//!   exactly, not through `f64`); an equality or a range is a binary search;
//! - whole lists, for the rare `Eq` of a list against a list.
//!
//! [`PayloadIndex::evaluate`] gives exactly the nodes whose payload `payload::matches` the
//! filter (a unit test holds the two to each other over random payloads and filters): `Not`
//! is the complement over every node, so nodes without the field are included.
//!
//! The index lives in memory and is built with the side-car (from the table's entries) and
//! again when a shard opens.

use std::collections::HashMap;
use vortex_index::NodeSet;
use vortex_vbp::message::{Filter, FilterNode, Payload, PayloadValue};

/// A node set as plain words, for the set algebra.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bits(Vec<u64>);

impl Bits {
    fn empty(nodes: u32) -> Bits {
        Bits(vec![0; (nodes as usize).div_ceil(64)])
    }

    fn all(nodes: u32) -> Bits {
        let mut bits = Bits(vec![u64::MAX; (nodes as usize).div_ceil(64)]);
        bits.trim(nodes);
        bits
    }

    fn trim(&mut self, nodes: u32) {
        let tail = nodes % 64;
        if tail != 0 {
            if let Some(last) = self.0.last_mut() {
                *last &= (1u64 << tail) - 1;
            }
        }
    }

    /// Makes room for `nodes` (a missing child reads as an empty set of any size).
    fn resize(&mut self, nodes: u32) {
        self.0.resize((nodes as usize).div_ceil(64), 0);
    }

    fn set(&mut self, node: u32) {
        if let Some(word) = self.0.get_mut(node as usize / 64) {
            *word |= 1 << (node % 64);
        }
    }

    fn or(&mut self, other: &Bits) {
        self.0.iter_mut().zip(&other.0).for_each(|(a, b)| *a |= b);
    }

    fn and(&mut self, other: &Bits) {
        let shared = other.0.len().min(self.0.len());
        self.0[..shared]
            .iter_mut()
            .zip(&other.0)
            .for_each(|(a, b)| *a &= b);
        self.0[shared..].iter_mut().for_each(|word| *word = 0);
    }

    fn not(&mut self, nodes: u32) {
        self.0.iter_mut().for_each(|word| *word = !*word);
        self.trim(nodes);
    }

    fn to_node_set(&self) -> NodeSet {
        let mut set = NodeSet::with_capacity(self.0.len() * 64);
        for (index, word) in self.0.iter().enumerate() {
            let mut word = *word;
            while word != 0 {
                let bit = word.trailing_zeros();
                set.insert(index as u32 * 64 + bit);
                word &= word - 1;
            }
        }
        set
    }
}

/// One segment's payload index.
#[derive(Debug, Default)]
pub struct PayloadIndex {
    nodes: u32,
    keywords: HashMap<(String, String), Vec<u32>>,
    bools: HashMap<(String, bool), Vec<u32>>,
    ints: HashMap<String, Vec<(i64, u32)>>,
    floats: HashMap<String, Vec<(f64, u32)>>,
    lists: HashMap<(String, Vec<String>), Vec<u32>>,
}

impl PayloadIndex {
    /// Indexes `payloads[node]` for every node.
    pub fn build(payloads: &[Option<Payload>]) -> PayloadIndex {
        let mut index = PayloadIndex {
            nodes: payloads.len() as u32,
            ..PayloadIndex::default()
        };
        for (node, payload) in payloads.iter().enumerate() {
            let node = node as u32;
            let Some(payload) = payload else { continue };
            for field in &payload.fields {
                let key = field.key.clone();
                match &field.value {
                    PayloadValue::Str(text) => index
                        .keywords
                        .entry((key, text.clone()))
                        .or_default()
                        .push(node),
                    PayloadValue::StrList(items) => {
                        for item in items {
                            index
                                .keywords
                                .entry((key.clone(), item.clone()))
                                .or_default()
                                .push(node);
                        }
                        index
                            .lists
                            .entry((key, items.clone()))
                            .or_default()
                            .push(node);
                    }
                    PayloadValue::Bool(value) => {
                        index.bools.entry((key, *value)).or_default().push(node)
                    }
                    PayloadValue::Int(value) => {
                        index.ints.entry(key).or_default().push((*value, node))
                    }
                    PayloadValue::Float(value) => {
                        index.floats.entry(key).or_default().push((*value, node))
                    }
                }
            }
        }
        index.ints.values_mut().for_each(|v| v.sort_unstable());
        index
            .floats
            .values_mut()
            .for_each(|v| v.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1))));
        index
    }

    fn listed(&self, nodes: Option<&Vec<u32>>) -> Bits {
        let mut bits = Bits::empty(self.nodes);
        nodes.into_iter().flatten().for_each(|&node| bits.set(node));
        bits
    }

    /// Nodes whose numeric `field` lies in the range (bounds as in a filter's `Range`).
    fn numeric(
        &self,
        field: &str,
        min: Option<f64>,
        max: Option<f64>,
        min_inclusive: bool,
        max_inclusive: bool,
    ) -> Bits {
        let mut bits = Bits::empty(self.nodes);
        let inside = |value: f64| {
            min.is_none_or(|min| {
                if min_inclusive {
                    value >= min
                } else {
                    value > min
                }
            }) && max.is_none_or(|max| {
                if max_inclusive {
                    value <= max
                } else {
                    value < max
                }
            })
        };
        if let Some(floats) = self.floats.get(field) {
            let start = match min {
                Some(min) => floats.partition_point(|(value, _)| *value < min),
                None => 0,
            };
            for &(value, node) in &floats[start..] {
                if max.is_some_and(|max| value > max) {
                    break;
                }
                if inside(value) {
                    bits.set(node);
                }
            }
        }
        if let Some(ints) = self.ints.get(field) {
            // Compared as `f64`, as `payload::matches` compares them.
            for &(value, node) in ints {
                if inside(value as f64) {
                    bits.set(node);
                }
            }
        }
        bits
    }

    fn equal(&self, field: &str, wanted: &PayloadValue) -> Bits {
        match wanted {
            PayloadValue::Str(text) => {
                self.listed(self.keywords.get(&(field.to_owned(), text.clone())))
            }
            PayloadValue::Bool(value) => self.listed(self.bools.get(&(field.to_owned(), *value))),
            PayloadValue::StrList(items) => {
                self.listed(self.lists.get(&(field.to_owned(), items.clone())))
            }
            PayloadValue::Int(wanted) => {
                let mut bits = Bits::empty(self.nodes);
                if let Some(ints) = self.ints.get(field) {
                    let start = ints.partition_point(|(value, _)| value < wanted);
                    for &(_, node) in ints[start..].iter().take_while(|(v, _)| v == wanted) {
                        bits.set(node);
                    }
                }
                if let Some(floats) = self.floats.get(field) {
                    for &(value, node) in floats {
                        if value == *wanted as f64 {
                            bits.set(node);
                        }
                    }
                }
                bits
            }
            PayloadValue::Float(wanted) => {
                self.numeric(field, Some(*wanted), Some(*wanted), true, true)
            }
        }
    }

    /// The nodes whose payload matches a validated `filter`.
    pub fn evaluate(&self, filter: &Filter) -> NodeSet {
        let mut results: Vec<Bits> = Vec::with_capacity(filter.nodes.len());
        for node in &filter.nodes {
            let empty = Bits::empty(0);
            let child = |index: &u32| results.get(*index as usize).unwrap_or(&empty);
            let bits = match node {
                FilterNode::Eq { field, value } => self.equal(field, value),
                FilterNode::In { field, values } => {
                    let mut bits = Bits::empty(self.nodes);
                    for value in values {
                        bits.or(&self.equal(field, value));
                    }
                    bits
                }
                FilterNode::Range {
                    field,
                    min,
                    max,
                    min_inclusive,
                    max_inclusive,
                } => self.numeric(field, *min, *max, *min_inclusive, *max_inclusive),
                FilterNode::And(children) => {
                    let mut bits = Bits::all(self.nodes);
                    children.iter().for_each(|c| bits.and(child(c)));
                    bits
                }
                FilterNode::Or(children) => {
                    let mut bits = Bits::empty(self.nodes);
                    children.iter().for_each(|c| bits.or(child(c)));
                    bits
                }
                FilterNode::Not(index) => {
                    let mut bits = child(index).clone();
                    bits.resize(self.nodes);
                    bits.not(self.nodes);
                    bits
                }
            };
            results.push(bits);
        }
        results
            .last()
            .map_or_else(|| NodeSet::with_capacity(0), Bits::to_node_set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::matches;
    use proptest::prelude::*;
    use vortex_vbp::message::PayloadField;

    fn value_strategy() -> impl Strategy<Value = PayloadValue> {
        prop_oneof![
            (-3i64..4).prop_map(PayloadValue::Int),
            (-3i64..4).prop_map(|v| PayloadValue::Float(v as f64 / 2.0)),
            prop::sample::select(vec!["a", "b", "c"]).prop_map(|s| PayloadValue::Str(s.into())),
            any::<bool>().prop_map(PayloadValue::Bool),
            prop::collection::vec(prop::sample::select(vec!["a", "b"]), 0..3)
                .prop_map(|v| PayloadValue::StrList(v.into_iter().map(String::from).collect())),
        ]
    }

    fn payload_strategy() -> impl Strategy<Value = Option<Payload>> {
        proptest::option::of(
            prop::collection::vec(
                (prop::sample::select(vec!["x", "y"]), value_strategy()),
                0..3,
            )
            .prop_map(|fields| {
                let mut seen = Vec::new();
                Payload {
                    fields: fields
                        .into_iter()
                        .filter(|(key, _)| {
                            let fresh = !seen.contains(key);
                            seen.push(*key);
                            fresh
                        })
                        .map(|(key, value)| PayloadField {
                            key: key.into(),
                            value,
                        })
                        .collect(),
                }
            }),
        )
    }

    fn leaf_strategy() -> impl Strategy<Value = FilterNode> {
        let field = prop::sample::select(vec!["x", "y"]).prop_map(String::from);
        prop_oneof![
            (field.clone(), value_strategy())
                .prop_map(|(field, value)| FilterNode::Eq { field, value }),
            (field.clone(), prop::collection::vec(value_strategy(), 1..3))
                .prop_map(|(field, values)| FilterNode::In { field, values }),
            (
                field,
                proptest::option::of(-2.0f64..2.0),
                proptest::option::of(-2.0f64..2.0),
                any::<bool>(),
                any::<bool>()
            )
                .prop_filter("a range needs a bound", |r| r.1.is_some() || r.2.is_some())
                .prop_map(|(field, min, max, min_inclusive, max_inclusive)| {
                    FilterNode::Range {
                        field,
                        min,
                        max,
                        min_inclusive,
                        max_inclusive,
                    }
                }),
        ]
    }

    proptest! {
        /// The index and the per-payload evaluation agree on every node.
        #[test]
        fn the_index_agrees_with_matching_each_payload(
            payloads in prop::collection::vec(payload_strategy(), 0..150),
            leaves in prop::collection::vec(leaf_strategy(), 1..4),
            combine in 0u8..4,
        ) {
            let mut nodes = leaves.clone();
            let count = nodes.len() as u32;
            match combine {
                1 => nodes.push(FilterNode::And((0..count).collect())),
                2 => nodes.push(FilterNode::Or((0..count).collect())),
                3 => nodes.push(FilterNode::Not(count - 1)),
                _ => {}
            }
            let filter = Filter { nodes };
            crate::payload::validate_filter(&filter).unwrap();
            let index = PayloadIndex::build(&payloads);
            let set = index.evaluate(&filter);
            for (node, payload) in payloads.iter().enumerate() {
                prop_assert_eq!(
                    set.contains(node as u32),
                    matches(&filter, payload.as_ref()),
                    "node {} payload {:?} filter {:?}", node, payload, filter
                );
            }
            prop_assert_eq!(set.len(), payloads.iter().filter(|p| matches(&filter, p.as_ref())).count());
        }
    }
}
