//! Who owns a room or a user: rendezvous (highest-random-weight) hashing over node names.
//!
//! Every node computes the same owner from the same membership without talking to anyone:
//! for a key, each node gets the score `xxh3(key ‖ 0 ‖ node)`, and the highest score wins.
//! xxh3 is used because its output is specified and stable across releases (unlike
//! `DefaultHasher`), which matters when nodes of different builds must agree. Removing a node
//! moves exactly the keys it owned; adding one moves only the keys it now wins.
//!
//! A single node is a ring of one; the cluster feeds this struct its live membership.

use xxhash_rust::xxh3::xxh3_64;

/// A set of node names and the owner function over them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    nodes: Vec<String>,
}

impl Ring {
    /// A ring over `nodes` (duplicates are ignored; order does not matter).
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut nodes: Vec<String> = nodes.into_iter().map(Into::into).collect();
        nodes.sort();
        nodes.dedup();
        Ring { nodes }
    }

    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The owner of `key`, or `None` for an empty ring.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.nodes
            .iter()
            .max_by_key(|n| score(key, n))
            .map(String::as_str)
    }
}

fn score(key: &str, node: &str) -> u64 {
    let mut buf = Vec::with_capacity(key.len() + node.len() + 1);
    buf.extend_from_slice(key.as_bytes());
    buf.push(0);
    buf.extend_from_slice(node.as_bytes());
    xxh3_64(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PINNED_SCORE: u64 = 9_074_934_022_725_258_074;

    #[test]
    fn ring_of_one_owns_everything() {
        let r = Ring::new(["a"]);
        assert_eq!(r.owner("room-1"), Some("a"));
        assert_eq!(Ring::default().owner("x"), None);
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned: if this changes, nodes of different builds disagree on owners.
        assert_eq!(score("room-1", "node-a"), PINNED_SCORE);
        let r = Ring::new(["node-a", "node-b", "node-c"]);
        let shuffled = Ring::new(["node-c", "node-a", "node-b", "node-a"]);
        for i in 0..100 {
            let k = format!("room-{i}");
            assert_eq!(
                r.owner(&k),
                shuffled.owner(&k),
                "order and duplicates do not matter"
            );
        }
    }

    #[test]
    fn balance_over_ten_nodes() {
        let nodes: Vec<String> = (0..10).map(|i| format!("n{i}")).collect();
        let r = Ring::new(nodes.clone());
        let mut counts = std::collections::HashMap::new();
        let keys = 100_000;
        for k in 0..keys {
            *counts
                .entry(r.owner(&format!("k{k}")).unwrap().to_string())
                .or_insert(0) += 1;
        }
        let avg = keys as f64 / 10.0;
        let max = *counts.values().max().unwrap() as f64;
        assert!(max / avg <= 1.05, "max/avg = {}", max / avg);
    }

    proptest! {
        #[test]
        fn removing_a_node_moves_only_its_keys(n in 2usize..12, removed in 0usize..12, seed in 0u64..1000) {
            let removed = removed % n;
            let nodes: Vec<String> = (0..n).map(|i| format!("node-{seed}-{i}")).collect();
            let full = Ring::new(nodes.clone());
            let mut less = nodes.clone();
            let gone = less.remove(removed);
            let less = Ring::new(less);
            for k in 0..500 {
                let key = format!("room-{k}");
                let before = full.owner(&key).unwrap();
                let after = less.owner(&key).unwrap();
                if before != gone {
                    prop_assert_eq!(before, after);
                }
            }
        }
    }
}
