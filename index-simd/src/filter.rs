//! Filters for search: which nodes may be returned.
//!
//! A filter is asked about nodes (the index's local ids, which are the rows the vectors were
//! given in). A filter that knows how many nodes it allows ([`NodeSet`]) lets the search pick
//! its strategy: an exact scan of the allowed nodes when they are few, a graph walk that
//! only admits allowed nodes to the results when they are many.

/// Which nodes a search may return.
pub trait Filter {
    /// Whether `node` may be returned.
    fn allows(&self, node: u32) -> bool;

    /// How many nodes the filter allows, when it knows.
    fn allowed_count(&self) -> Option<usize> {
        None
    }

    /// Calls `visit` with every allowed node below `count`, in increasing order.
    fn for_each_allowed(&self, count: u32, visit: &mut dyn FnMut(u32)) {
        (0..count).filter(|&node| self.allows(node)).for_each(visit);
    }
}

impl<F: Fn(u32) -> bool> Filter for F {
    fn allows(&self, node: u32) -> bool {
        self(node)
    }
}

/// A set of nodes as a bitset, with its size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeSet {
    words: Vec<u64>,
    count: usize,
}

impl NodeSet {
    /// An empty set for nodes below `capacity`.
    pub fn with_capacity(capacity: usize) -> NodeSet {
        NodeSet {
            words: vec![0; capacity.div_ceil(64)],
            count: 0,
        }
    }

    /// Adds `node`, growing the set if needed; true when it was not there yet.
    pub fn insert(&mut self, node: u32) -> bool {
        let (word, bit) = (node as usize / 64, node % 64);
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        self.words[word] |= 1 << bit;
        self.count += usize::from(fresh);
        fresh
    }

    /// Whether `node` is in the set.
    #[inline]
    pub fn contains(&self, node: u32) -> bool {
        self.words
            .get(node as usize / 64)
            .is_some_and(|word| word & (1 << (node % 64)) != 0)
    }

    /// The number of nodes in the set.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The bitset's words (node `n` is bit `n % 64` of word `n / 64`).
    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    /// A set from its bitset words.
    pub(crate) fn from_words(words: Vec<u64>) -> NodeSet {
        let count = words.iter().map(|word| word.count_ones() as usize).sum();
        NodeSet { words, count }
    }
}

impl FromIterator<u32> for NodeSet {
    fn from_iter<I: IntoIterator<Item = u32>>(nodes: I) -> NodeSet {
        let mut set = NodeSet::default();
        nodes.into_iter().for_each(|node| {
            set.insert(node);
        });
        set
    }
}

impl Filter for NodeSet {
    #[inline]
    fn allows(&self, node: u32) -> bool {
        self.contains(node)
    }

    fn allowed_count(&self) -> Option<usize> {
        Some(self.count)
    }

    fn for_each_allowed(&self, count: u32, visit: &mut dyn FnMut(u32)) {
        for (index, &word) in self.words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let node = (index * 64) as u32 + bits.trailing_zeros();
                if node >= count {
                    return;
                }
                visit(node);
                bits &= bits - 1;
            }
        }
    }
}
