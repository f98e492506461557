//! The ordered map and set the sans-IO state machines keep their tables in (the session's
//! requests by id and by deadline, subscriptions by channel, subscribe retries by due time):
//! [`Map`] and [`Set`].
//!
//! By default they are the standard `BTreeMap` and `BTreeSet`. With the crate's `compact`
//! feature (the browser client turns it on) they are [`VecMap`] and [`VecSet`]: sorted `Vec`s
//! searched by bisection. A B-tree costs about 8 KB of wasm per key/value type and the session
//! has six of them; a sorted `Vec` costs a few hundred bytes, with O(n) inserts and removals
//! that a page's few channels and in-flight requests do not feel. Both behave alike for every
//! method the session uses (same results, same ascending iteration order); the tests below hold
//! the `Vec` versions to the standard ones, and `cargo test -p redistribute-protocol --features
//! compact` runs the whole session suite over them.

use std::borrow::Borrow;

/// The session's ordered map.
#[cfg(not(feature = "compact"))]
pub type Map<K, V> = std::collections::BTreeMap<K, V>;
/// The session's ordered map.
#[cfg(feature = "compact")]
pub type Map<K, V> = VecMap<K, V>;

/// The session's ordered set.
#[cfg(not(feature = "compact"))]
pub type Set<T> = std::collections::BTreeSet<T>;
/// The session's ordered set.
#[cfg(feature = "compact")]
pub type Set<T> = VecSet<T>;

/// An ordered map over a `Vec` of entries sorted by key: the `BTreeMap` methods the session
/// uses, with the same results.
#[derive(Debug, Clone)]
pub struct VecMap<K, V> {
    entries: Vec<(K, V)>,
}

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap {
            entries: Vec::new(),
        }
    }
}

impl<K: Ord, V> VecMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where `key` is (`Ok`) or would go (`Err`).
    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        K: Borrow<Q>,
    {
        self.entries.binary_search_by(|(k, _)| k.borrow().cmp(key))
    }

    /// The value of `key`.
    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(&self.entries[i].1)
    }

    /// The value of `key`, mutably.
    pub fn get_mut<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(&mut self.entries[i].1)
    }

    /// Whether `key` is in the map.
    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets the value of `key`, returning the old value (the old key stays, as in `BTreeMap`).
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            Err(i) => {
                self.entries.insert(i, (key, value));
                None
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let i = self.find(key).ok()?;
        Some(self.entries.remove(i).1)
    }

    /// Keeps the entries for which `keep` returns `true`.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) {
        self.entries.retain_mut(|(k, v)| keep(k, v));
    }
}

impl<K, V> VecMap<K, V> {
    /// The entries in ascending key order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + ExactSizeIterator {
        self.entries.iter().map(|(k, v)| (k, v))
    }

    /// The entries in ascending key order, values mutably.
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&K, &mut V)> + ExactSizeIterator {
        self.entries.iter_mut().map(|(k, v)| (&*k, v))
    }

    /// The keys in ascending order.
    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.entries.iter().map(|(k, _)| k)
    }

    /// The values in ascending key order.
    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.entries.iter().map(|(_, v)| v)
    }

    /// The values in ascending key order, mutably.
    pub fn values_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut V> + ExactSizeIterator {
        self.entries.iter_mut().map(|(_, v)| v)
    }

    /// The entry with the smallest key.
    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.entries.first().map(|(k, v)| (k, v))
    }

    /// Removes the entry with the smallest key.
    pub fn pop_first(&mut self) -> Option<(K, V)> {
        (!self.entries.is_empty()).then(|| self.entries.remove(0))
    }

    /// How many entries the map holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Removes every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// An ordered set over a sorted `Vec`: the `BTreeSet` methods the session uses, with the same
/// results.
#[derive(Debug, Clone)]
pub struct VecSet<T> {
    map: VecMap<T, ()>,
}

impl<T> Default for VecSet<T> {
    fn default() -> Self {
        VecSet {
            map: VecMap::default(),
        }
    }
}

impl<T: Ord> VecSet<T> {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `value`; `false` if it was there already (the old one stays).
    pub fn insert(&mut self, value: T) -> bool {
        match self.map.find(&value) {
            Ok(_) => false,
            Err(i) => {
                self.map.entries.insert(i, (value, ()));
                true
            }
        }
    }

    /// Removes `value`; `false` if it was not there.
    pub fn remove<Q: Ord + ?Sized>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.map.remove(value).is_some()
    }

    /// Whether `value` is in the set.
    pub fn contains<Q: Ord + ?Sized>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
    {
        self.map.contains_key(value)
    }
}

impl<T> VecSet<T> {
    /// The smallest value.
    pub fn first(&self) -> Option<&T> {
        self.map.first_key_value().map(|(k, _)| k)
    }

    /// Removes the smallest value.
    pub fn pop_first(&mut self) -> Option<T> {
        self.map.pop_first().map(|(k, _)| k)
    }

    /// The values in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.map.keys()
    }

    /// How many values the set holds.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    /// One call on a map (keys from a small range, so hits and misses both happen often).
    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u32),
        Remove(u8),
        Get(u8),
        GetMut(u8, u32),
        Contains(u8),
        PopFirst,
        RetainOdd,
        Clear,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..24, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => (0u8..24).prop_map(Op::Remove),
            1 => (0u8..24).prop_map(Op::Get),
            1 => (0u8..24, any::<u32>()).prop_map(|(k, v)| Op::GetMut(k, v)),
            1 => (0u8..24).prop_map(Op::Contains),
            1 => Just(Op::PopFirst),
            1 => Just(Op::RetainOdd),
            1 => Just(Op::Clear),
        ]
    }

    fn run(cases: u32, test: impl Fn(Vec<Op>) -> Result<(), TestCaseError>) {
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(e) = runner.run(&proptest::collection::vec(op(), 0..200), test) {
            panic!("{e}");
        }
    }

    /// Every call answers as `BTreeMap`'s does, and the entries stay in the same order.
    #[test]
    fn vec_map_answers_like_btree_map() {
        run(512, |ops| {
            let mut ours = VecMap::new();
            let mut std = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => prop_assert_eq!(ours.insert(k, v), std.insert(k, v)),
                    Op::Remove(k) => prop_assert_eq!(ours.remove(&k), std.remove(&k)),
                    Op::Get(k) => prop_assert_eq!(ours.get(&k), std.get(&k)),
                    Op::GetMut(k, v) => {
                        let (a, b) = (ours.get_mut(&k), std.get_mut(&k));
                        prop_assert_eq!(a.is_some(), b.is_some());
                        if let (Some(a), Some(b)) = (a, b) {
                            *a = v;
                            *b = v;
                        }
                    }
                    Op::Contains(k) => prop_assert_eq!(ours.contains_key(&k), std.contains_key(&k)),
                    Op::PopFirst => prop_assert_eq!(ours.pop_first(), std.pop_first()),
                    Op::RetainOdd => {
                        ours.retain(|_, v| *v % 2 == 1);
                        std.retain(|_, v| *v % 2 == 1);
                    }
                    Op::Clear => {
                        ours.clear();
                        std.clear();
                    }
                }
                prop_assert_eq!(ours.len(), std.len());
                prop_assert_eq!(ours.is_empty(), std.is_empty());
                prop_assert_eq!(ours.first_key_value(), std.first_key_value());
                prop_assert!(ours.iter().eq(std.iter()));
                prop_assert!(ours.keys().eq(std.keys()));
                prop_assert!(ours.values().eq(std.values()));
            }
            for (v, _) in ours.values_mut().zip(std.values_mut()) {
                *v = v.wrapping_add(1);
            }
            for ((_, v), (_, w)) in ours.iter_mut().zip(std.iter_mut()) {
                *v = v.wrapping_mul(3);
                *w = w.wrapping_add(1).wrapping_mul(3);
            }
            prop_assert!(ours.iter().eq(std.iter()));
            Ok(())
        });
    }

    /// The same for the set, with tuple keys like the session's deadlines.
    #[test]
    fn vec_set_answers_like_btree_set() {
        run(512, |ops| {
            let mut ours = VecSet::new();
            let mut std = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        prop_assert_eq!(ours.insert((k, v % 4)), std.insert((k, v % 4)))
                    }
                    Op::Remove(k) => prop_assert_eq!(ours.remove(&(k, 0)), std.remove(&(k, 0))),
                    Op::Get(k) | Op::Contains(k) | Op::GetMut(k, _) => {
                        prop_assert_eq!(ours.contains(&(k, 1)), std.contains(&(k, 1)))
                    }
                    Op::PopFirst => prop_assert_eq!(ours.pop_first(), std.pop_first()),
                    Op::RetainOdd | Op::Clear => {
                        ours.clear();
                        std.clear();
                    }
                }
                prop_assert_eq!(ours.len(), std.len());
                prop_assert_eq!(ours.is_empty(), std.is_empty());
                prop_assert_eq!(ours.first(), std.first());
                prop_assert!(ours.iter().eq(std.iter()));
            }
            Ok(())
        });
    }

    /// A key borrowed as `&str` finds a `String` key, as in the subscription table.
    #[test]
    fn looks_up_by_borrowed_key() {
        let mut m: VecMap<String, u8> = VecMap::new();
        assert_eq!(m.insert("b".into(), 1), None);
        assert_eq!(m.insert("a".into(), 2), None);
        assert_eq!(m.insert("b".into(), 3), Some(1));
        assert_eq!(m.get("b"), Some(&3));
        assert!(m.contains_key("a"));
        assert_eq!(m.remove("a"), Some(2));
        assert_eq!(m.get("a"), None);
        assert!(m.keys().eq(["b"]));
    }
}
