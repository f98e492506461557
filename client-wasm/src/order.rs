//! One sort routine for the crate: lists ordered by a `(time, sequence, name)` key.
//!
//! Each element type sorted with the standard library's sort links its own copy of the sort
//! (a few KB of wasm each), and even one copy is ~4 KB; so the keys are sorted, by a heapsort
//! written here (O(n log n) and a few hundred bytes), and the items follow their keys.

use std::cmp::Ordering;

/// A sort key: `(time, sequence, name, index in the input)`.
type Key = (f64, u64, String, usize);

/// `items` ordered by `key` (`f64` first, NaN equal to anything; then the `u64`; then the name;
/// items with equal keys keep their input order).
pub fn sorted_by_key<T>(items: Vec<T>, key: impl Fn(&T) -> (f64, u64, String)) -> Vec<T> {
    let mut keys: Vec<Key> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (a, b, c) = key(item);
            (a, b, c, i)
        })
        .collect();
    heapsort(&mut keys);
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keys.into_iter()
        .filter_map(|(.., i)| slots[i].take())
        .collect()
}

/// Whether `x` sorts before `y`; the input index breaks ties, so the order is total except
/// around a NaN time (which may land anywhere, but never breaks the sort).
fn less(x: &Key, y: &Key) -> bool {
    x.0.partial_cmp(&y.0)
        .unwrap_or(Ordering::Equal)
        .then(x.1.cmp(&y.1))
        .then_with(|| x.2.cmp(&y.2))
        .then(x.3.cmp(&y.3))
        == Ordering::Less
}

/// Sorts `v` ascending by [`less`].
fn heapsort(v: &mut [Key]) {
    // A max-heap of the whole slice, then its top moved behind the shrinking heap, one by one.
    for root in (0..v.len() / 2).rev() {
        sift_down(v, root);
    }
    for end in (1..v.len()).rev() {
        v.swap(0, end);
        sift_down(&mut v[..end], 0);
    }
}

/// Moves `v[root]` down until both its children are not greater.
fn sift_down(v: &mut [Key], mut root: usize) {
    loop {
        let mut child = 2 * root + 1;
        if child >= v.len() {
            return;
        }
        if child + 1 < v.len() && less(&v[child], &v[child + 1]) {
            child += 1;
        }
        if !less(&v[root], &v[child]) {
            return;
        }
        v.swap(root, child);
        root = child;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_time_then_sequence_then_name() {
        let items = vec![(2.0, 0, "a"), (1.0, 5, "z"), (1.0, 5, "b"), (1.0, 1, "q")];
        let sorted = sorted_by_key(items, |&(t, s, n)| (t, s, n.to_owned()));
        assert_eq!(
            sorted,
            [(1.0, 1, "q"), (1.0, 5, "b"), (1.0, 5, "z"), (2.0, 0, "a")]
        );
        assert!(sorted_by_key(Vec::<u8>::new(), |_| (0.0, 0, String::new())).is_empty());
    }

    /// Agrees with the standard library's stable sort on many shuffled lists with repeated
    /// keys (equal keys keep their input order).
    #[test]
    fn agrees_with_the_standard_sort() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for len in 0..70 {
            for _ in 0..20 {
                let items: Vec<(u64, u64, u64, usize)> =
                    (0..len).map(|i| (next(5), next(3), next(4), i)).collect();
                let ours =
                    sorted_by_key(items.clone(), |&(t, s, n, _)| (t as f64, s, n.to_string()));
                let mut theirs = items;
                theirs.sort_by_key(|&(t, s, n, _)| (t, s, n));
                assert_eq!(ours, theirs);
            }
        }
    }

    /// A NaN time neither panics nor loses an item.
    #[test]
    fn survives_nan_times() {
        let items: Vec<(f64, u64)> = (0..40)
            .map(|i| (if i % 3 == 0 { f64::NAN } else { (i % 7) as f64 }, i))
            .collect();
        let sorted = sorted_by_key(items, |&(t, s)| (t, s, String::new()));
        let mut seen: Vec<u64> = sorted.iter().map(|&(_, s)| s).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<_>>());
    }
}
