//! One sort routine for the crate: lists ordered by a `(time, sequence, name)` key.
//!
//! Each element type sorted with the standard library's sort links its own copy of the sort
//! (a few KB of wasm each); sorting the keys instead links one.

use std::cmp::Ordering;

/// `items` ordered by `key` (`f64` first, NaN equal to anything; then the `u64`; then the name).
pub fn sorted_by_key<T>(items: Vec<T>, key: impl Fn(&T) -> (f64, u64, String)) -> Vec<T> {
    let mut keys: Vec<(f64, u64, String, usize)> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let (a, b, c) = key(item);
            (a, b, c, i)
        })
        .collect();
    keys.sort_unstable_by(|x, y| {
        x.0.partial_cmp(&y.0)
            .unwrap_or(Ordering::Equal)
            .then(x.1.cmp(&y.1))
            .then_with(|| x.2.cmp(&y.2))
    });
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keys.into_iter()
        .filter_map(|(.., i)| slots[i].take())
        .collect()
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
}
