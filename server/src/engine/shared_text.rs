//! [`SharedText`]: the text of a frame encoded once and sent to every subscriber, in the
//! engine's own type (no transport library's).
//!
//! A transport that sends text in its library's type (a WebSocket text message, say) converts
//! it with [`SharedText::wire`]: the first call converts, every later call for the same type is
//! a clone of that conversion. So a batch fanned out to any number of subscribers is validated
//! or copied into the transport's type at most once, never per subscriber.

use std::any::Any;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

/// Immutable UTF-8 text, cheap to clone (one reference count), with a per-transport cache of
/// its wire form.
#[derive(Clone)]
pub struct SharedText {
    inner: Arc<Inner>,
    /// The text's length, kept inline: the hub reads it for every queue a batch enters.
    len: usize,
}

struct Inner {
    /// Kept as built: shrinking it to a `Box<str>` could reallocate and copy.
    text: String,
    /// The text in one transport library's type, made on first use by [`SharedText::wire`].
    wire: OnceLock<Box<dyn Any + Send + Sync>>,
}

impl SharedText {
    /// Takes `text` (no copy).
    pub fn new(text: String) -> SharedText {
        SharedText {
            len: text.len(),
            inner: Arc::new(Inner {
                text,
                wire: OnceLock::new(),
            }),
        }
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.inner.text
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the text is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The text's bytes as [`Bytes`] sharing this allocation (no copy).
    pub fn bytes(&self) -> Bytes {
        Bytes::from_owner(Owner(self.inner.clone()))
    }

    /// The text in a transport's type `T`: `convert` makes it on the first call, later calls
    /// return a clone of that (connections racing on the very first send may each convert once).
    /// Each text caches one wire type (for another `T`, `convert` runs on every call).
    pub fn wire<T>(&self, convert: impl FnOnce(&SharedText) -> T) -> T
    where
        T: Clone + Send + Sync + 'static,
    {
        if let Some(cached) = self.inner.wire.get() {
            return match cached.downcast_ref::<T>() {
                Some(value) => value.clone(),
                None => convert(self),
            };
        }
        let value = convert(self);
        // Connections racing on the first send each convert; the first to finish is kept.
        let _ = self.inner.wire.set(Box::new(value.clone()));
        value
    }
}

impl std::ops::Deref for SharedText {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for SharedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Keeps the text alive for [`SharedText::bytes`].
struct Owner(Arc<Inner>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        self.0.text.as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn wire_form_is_made_once_and_shared() {
        let text = SharedText::new("{\"type\":\"messages\"}".to_owned());
        let conversions = AtomicUsize::new(0);
        let convert = |t: &SharedText| {
            conversions.fetch_add(1, Ordering::Relaxed);
            t.bytes()
        };
        let first: Bytes = text.clone().wire(convert);
        for _ in 0..100 {
            let again: Bytes = text.wire(convert);
            assert_eq!(again.as_ptr(), first.as_ptr());
        }
        assert_eq!(conversions.load(Ordering::Relaxed), 1);
        assert_eq!(
            first.as_ptr(),
            text.as_str().as_ptr(),
            "no copy of the text"
        );
        assert_eq!(&first[..], text.as_str().as_bytes());
    }

    #[test]
    fn another_wire_type_is_converted_uncached() {
        let text = SharedText::new("héllo".to_owned());
        let bytes: Bytes = text.wire(SharedText::bytes);
        let owned: String = text.wire(|t| t.as_str().to_owned());
        assert_eq!(&bytes[..], owned.as_bytes());
        assert_eq!(text.len(), "héllo".len());
        assert!(!text.is_empty());
    }
}
