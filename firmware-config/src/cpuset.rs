//! Sets of CPU ids and the kernel's "cpulist" text format (`0-3,8,10-11`).
//!
//! sysfs reports CPU sets in this format (`/sys/devices/system/cpu/online`, `isolated`,
//! `thread_siblings_list`, `node*/cpulist`) and operators write it on the kernel command line,
//! so it is both parsed and printed here.

use serde::{Serialize, Serializer};
use std::fmt;

/// The largest CPU id accepted, bounding what a malformed list can make us allocate.
/// Linux's own `NR_CPUS` maximum is 8192.
pub const CPU_ID_MAX: u32 = 8191;

/// A set of logical CPU ids, kept sorted and without duplicates.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet {
    ids: Vec<u32>,
}

impl CpuSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses the kernel's cpulist format: comma-separated ids and inclusive ranges, with
    /// surrounding whitespace ignored. An empty string, or the `(null)` some kernels print for
    /// an unset `nohz_full`, is the empty set.
    pub fn parse_list(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text == "(null)" {
            return Ok(Self::new());
        }
        let mut ids = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let (first, last) = match part.split_once('-') {
                Some((first, last)) => (parse_id(first)?, parse_id(last)?),
                None => {
                    let id = parse_id(part)?;
                    (id, id)
                }
            };
            if first > last {
                return Err(format!("range `{part}` runs backwards"));
            }
            ids.extend(first..=last);
        }
        Ok(Self::from_iter(ids))
    }

    /// The ids in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.ids.iter().copied()
    }

    /// The ids as a sorted slice.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u32) -> bool {
        self.ids.binary_search(&id).is_ok()
    }

    /// Adds `id`.
    pub fn insert(&mut self, id: u32) {
        if let Err(position) = self.ids.binary_search(&id) {
            self.ids.insert(position, id);
        }
    }

    /// Removes `id`.
    pub fn remove(&mut self, id: u32) {
        if let Ok(position) = self.ids.binary_search(&id) {
            self.ids.remove(position);
        }
    }

    /// The number of ids.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The smallest id.
    pub fn first(&self) -> Option<u32> {
        self.ids.first().copied()
    }

    /// Ids in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            ids: self.iter().filter(|id| other.contains(*id)).collect(),
        }
    }

    /// Ids in `self` and not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet {
            ids: self.iter().filter(|id| !other.contains(*id)).collect(),
        }
    }
}

fn parse_id(text: &str) -> Result<u32, String> {
    let id: u32 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a CPU id"))?;
    if id > CPU_ID_MAX {
        return Err(format!("CPU id {id} is above the maximum {CPU_ID_MAX}"));
    }
    Ok(id)
}

impl FromIterator<u32> for CpuSet {
    fn from_iter<I: IntoIterator<Item = u32>>(iter: I) -> Self {
        let mut ids: Vec<u32> = iter.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        CpuSet { ids }
    }
}

/// Prints the cpulist format, collapsing runs into ranges; the empty set prints as `none`.
impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.ids.is_empty() {
            return f.write_str("none");
        }
        let mut index = 0;
        let mut first_part = true;
        while index < self.ids.len() {
            let start = self.ids[index];
            let mut end = start;
            while index + 1 < self.ids.len() && self.ids[index + 1] == end + 1 {
                index += 1;
                end = self.ids[index];
            }
            if !first_part {
                f.write_str(",")?;
            }
            first_part = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
            index += 1;
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

impl Serialize for CpuSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.ids.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ids_ranges_and_whitespace() {
        let set = CpuSet::parse_list(" 0-3,8, 10-11\n").unwrap();
        assert_eq!(set.as_slice(), &[0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(set.to_string(), "0-3,8,10-11");
    }

    #[test]
    fn empty_and_null_are_the_empty_set() {
        assert!(CpuSet::parse_list("").unwrap().is_empty());
        assert!(CpuSet::parse_list("\n").unwrap().is_empty());
        assert!(CpuSet::parse_list("(null)\n").unwrap().is_empty());
        assert_eq!(CpuSet::new().to_string(), "none");
    }

    #[test]
    fn refuses_malformed_lists() {
        for bad in ["a", "1-", "-1", "3-1", "1,,2", "0-99999", "1:2", "1-2-3"] {
            assert!(CpuSet::parse_list(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn duplicates_collapse_and_order_is_sorted() {
        let set: CpuSet = [5, 1, 5, 3, 1].into_iter().collect();
        assert_eq!(set.as_slice(), &[1, 3, 5]);
        assert_eq!(set.to_string(), "1,3,5");
    }

    #[test]
    fn set_operations() {
        let a = CpuSet::parse_list("0-7").unwrap();
        let b = CpuSet::parse_list("4-11").unwrap();
        assert_eq!(a.intersection(&b).to_string(), "4-7");
        assert_eq!(a.difference(&b).to_string(), "0-3");
        let mut c = a.clone();
        c.remove(3);
        c.insert(20);
        assert_eq!(c.to_string(), "0-2,4-7,20");
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Printing and parsing are inverse: any set survives a round trip.
        #[test]
        fn display_parse_round_trip(ids in proptest::collection::vec(0u32..=CPU_ID_MAX, 0..64)) {
            let set: CpuSet = ids.into_iter().collect();
            let text = set.to_string();
            let text = if set.is_empty() { String::new() } else { text };
            prop_assert_eq!(CpuSet::parse_list(&text).unwrap(), set);
        }

        /// Arbitrary text is parsed or refused, never a panic, and never a set beyond the
        /// id bound.
        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            if let Ok(set) = CpuSet::parse_list(&text) {
                prop_assert!(set.iter().all(|id| id <= CPU_ID_MAX));
            }
        }

        #[test]
        fn list_shaped_text_never_panics(text in "[0-9,\\- ]{0,32}") {
            let _ = CpuSet::parse_list(&text);
        }
    }
}
