//! [`Queue`]: the first-in, first-out queue the sans-IO state machines hand their outputs out
//! of (frames to send, events, actions, the multiplexer's outputs) and the browser driver
//! queues page events in.
//!
//! A `Vec` and a read position instead of `VecDeque`: each element type of a `VecDeque` links
//! its own ring-buffer code (about 1 KB of wasm apiece, and the browser client has six), while
//! this is little more than `Vec::push`. Pushes and pops are O(1) amortized: the slots already
//! read are dropped when the queue runs empty, or when they are over half of it.

/// A first-in, first-out queue. See the [module documentation](self).
#[derive(Debug, Clone)]
pub struct Queue<T> {
    /// The slots; those before `head` were read (and are `None`).
    items: Vec<Option<T>>,
    head: usize,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            items: Vec::new(),
            head: 0,
        }
    }
}

impl<T> Queue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an item at the back.
    pub fn push_back(&mut self, item: T) {
        self.items.push(Some(item));
    }

    /// Takes the item at the front.
    pub fn pop_front(&mut self) -> Option<T> {
        let item = self.items.get_mut(self.head)?.take();
        self.head += 1;
        if self.head == self.items.len() {
            self.clear();
        } else if self.head >= 32 && self.head * 2 >= self.items.len() {
            // Moves the unread items to the front (a loop of swaps: less code than `drain`).
            for i in self.head..self.items.len() {
                self.items.swap(i - self.head, i);
            }
            self.items.truncate(self.items.len() - self.head);
            self.head = 0;
        }
        item
    }

    /// How many items wait.
    pub fn len(&self) -> usize {
        self.items.len() - self.head
    }

    /// Whether no item waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every item.
    pub fn clear(&mut self) {
        self.items.clear();
        self.head = 0;
    }

    /// Takes every item, front first.
    pub fn take_all(&mut self) -> impl Iterator<Item = T> {
        let items = std::mem::take(&mut self.items);
        let head = std::mem::replace(&mut self.head, 0);
        items.into_iter().skip(head).flatten()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Any mix of pushes, pops, takes and clears gives what `VecDeque` gives.
    #[test]
    fn behaves_like_vec_deque() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let (mut ours, mut std) = (Queue::new(), VecDeque::new());
            let mut counter = 0u32;
            for _ in 0..400 {
                match next(20) {
                    0..=9 => {
                        counter += 1;
                        ours.push_back(counter);
                        std.push_back(counter);
                    }
                    10..=17 => assert_eq!(ours.pop_front(), std.pop_front()),
                    18 => assert!(ours.take_all().eq(std.drain(..))),
                    _ => {
                        ours.clear();
                        std.clear();
                    }
                }
                assert_eq!(ours.len(), std.len());
                assert_eq!(ours.is_empty(), std.is_empty());
            }
        }
    }

    /// Slots already read do not pile up while the queue never runs empty.
    #[test]
    fn reclaims_read_slots() {
        let mut q = Queue::new();
        q.push_back(0);
        for i in 1..10_000 {
            q.push_back(i);
            assert_eq!(q.pop_front(), Some(i - 1));
            assert!(q.items.len() <= 64, "{} slots for one item", q.items.len());
        }
    }
}
