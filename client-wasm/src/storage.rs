//! Key-value storage under the cache: the [`Storage`] trait, an in-memory implementation with
//! an optional quota (tests), and (wasm32 only) the browser's `localStorage` or, where there is
//! no window (Node.js, workers) or the window's storage throws on access (blocked, Safari's
//! private mode), an in-memory map shared by the clients of the process.
//!
//! The trait is the small part of the Web Storage API the cache needs. Every call may fail:
//! `localStorage` throws when the origin's quota is full (`QuotaExceededError`) and when storage
//! is disabled (`SecurityError`), and the cache must survive both.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use thiserror::Error;

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorageError {
    /// The write does not fit in the quota: free space (evict) or skip the write.
    #[error("storage quota exceeded")]
    QuotaExceeded,
    /// Storage cannot be used at all (disabled, blocked, or not a browser window): work
    /// without it.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A string key-value store shaped like Web Storage.
pub trait Storage {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, StorageError>;
    /// Stores `value` under `key`, replacing any previous value.
    fn set(&self, key: &str, value: &str) -> Result<(), StorageError>;
    /// Removes `key` (nothing happens if it is absent).
    fn remove(&self, key: &str) -> Result<(), StorageError>;
    /// Every key currently stored, in no particular order.
    fn keys(&self) -> Result<Vec<String>, StorageError>;
}

impl<S: Storage + ?Sized> Storage for &S {
    fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &str) -> Result<(), StorageError> {
        (**self).set(key, value)
    }
    fn remove(&self, key: &str) -> Result<(), StorageError> {
        (**self).remove(key)
    }
    fn keys(&self) -> Result<Vec<String>, StorageError> {
        (**self).keys()
    }
}

/// An in-memory [`Storage`], optionally with a quota counted like browsers count
/// `localStorage`: UTF-16 code units of keys plus values.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    entries: RefCell<BTreeMap<String, String>>,
    quota: Cell<Option<usize>>,
}

impl MemoryStorage {
    /// An empty store without quota.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store whose keys and values may total at most `units` UTF-16 code units.
    pub fn with_quota(units: usize) -> Self {
        let storage = Self::default();
        storage.quota.set(Some(units));
        storage
    }

    /// Changes the quota (`None`: unlimited). Existing entries stay even if they exceed it.
    pub fn set_quota(&self, units: Option<usize>) {
        self.quota.set(units);
    }

    /// UTF-16 code units used by all keys and values.
    pub fn used(&self) -> usize {
        self.entries
            .borrow()
            .iter()
            .map(|(k, v)| units(k) + units(v))
            .sum()
    }
}

/// The length of `s` in UTF-16 code units, as browsers measure storage.
fn units(s: &str) -> usize {
    s.encode_utf16().count()
}

impl Storage for MemoryStorage {
    fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        Ok(self.entries.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StorageError> {
        if let Some(quota) = self.quota.get() {
            let old = self
                .entries
                .borrow()
                .get(key)
                .map_or(0, |v| units(key) + units(v));
            if self.used() - old + units(key) + units(value) > quota {
                return Err(StorageError::QuotaExceeded);
            }
        }
        self.entries
            .borrow_mut()
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), StorageError> {
        self.entries.borrow_mut().remove(key);
        Ok(())
    }

    fn keys(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.entries.borrow().keys().cloned().collect())
    }
}

/// The page's `window.localStorage`, or, with no window (Node.js, a worker), a JS `Map` shared
/// by the clients of the process for its lifetime.
#[cfg(target_arch = "wasm32")]
pub enum LocalStorage {
    /// `window.localStorage`.
    Web(web_sys::Storage),
    /// The process's in-memory map.
    Memory(js_sys::Map),
}

#[cfg(target_arch = "wasm32")]
thread_local! {
    /// The in-memory storage of a process without a window (wasm is single-threaded: one map).
    static MEMORY: js_sys::Map = js_sys::Map::new();
}

#[cfg(target_arch = "wasm32")]
impl LocalStorage {
    /// The window's `localStorage`; where there is no window at all (Node.js, a worker), or
    /// where the window's storage throws on access (disabled by the user, blocked for the
    /// origin, Safari's private mode), the process's in-memory map, so the cache and the outbox
    /// work for the life of the page. In the second case the reason comes along, for the page
    /// to be told (it must not silently lose what it expects to persist).
    pub fn open_or_memory() -> (Self, Option<StorageError>) {
        let memory = || LocalStorage::Memory(MEMORY.with(Clone::clone));
        if web_sys::window().is_none() {
            return (memory(), None);
        }
        match Self::open() {
            Ok(storage) => (storage, None),
            Err(e) => (memory(), Some(e)),
        }
    }

    /// The window's `localStorage`, or why it cannot be used (no window, e.g. in a worker;
    /// storage disabled by the user or blocked for this origin).
    pub fn open() -> Result<Self, StorageError> {
        let window = web_sys::window()
            .ok_or_else(|| StorageError::Unavailable("no window (not a page)".into()))?;
        match window.local_storage() {
            Ok(Some(storage)) => Ok(LocalStorage::Web(storage)),
            Ok(None) => Err(StorageError::Unavailable("localStorage is absent".into())),
            Err(e) => Err(unavailable(&e)),
        }
    }
}

/// Maps a thrown DOM exception to a [`StorageError`].
#[cfg(target_arch = "wasm32")]
fn storage_error(e: &wasm_bindgen::JsValue) -> StorageError {
    let name = js_sys::Reflect::get(e, &"name".into())
        .ok()
        .and_then(|n| n.as_string())
        .unwrap_or_default();
    // Firefox used NS_ERROR_DOM_QUOTA_REACHED before it adopted the standard name.
    if name == "QuotaExceededError" || name == "NS_ERROR_DOM_QUOTA_REACHED" {
        StorageError::QuotaExceeded
    } else {
        unavailable(e)
    }
}

#[cfg(target_arch = "wasm32")]
fn unavailable(e: &wasm_bindgen::JsValue) -> StorageError {
    let text = js_sys::Reflect::get(e, &"message".into())
        .ok()
        .and_then(|m| m.as_string())
        .unwrap_or_else(|| "localStorage threw".into());
    StorageError::Unavailable(text)
}

#[cfg(target_arch = "wasm32")]
impl Storage for LocalStorage {
    fn get(&self, key: &str) -> Result<Option<String>, StorageError> {
        match self {
            LocalStorage::Web(s) => s.get_item(key).map_err(|e| storage_error(&e)),
            LocalStorage::Memory(m) => Ok(m.get(&key.into()).as_string()),
        }
    }

    fn set(&self, key: &str, value: &str) -> Result<(), StorageError> {
        match self {
            LocalStorage::Web(s) => s.set_item(key, value).map_err(|e| storage_error(&e)),
            LocalStorage::Memory(m) => {
                m.set(&key.into(), &value.into());
                Ok(())
            }
        }
    }

    fn remove(&self, key: &str) -> Result<(), StorageError> {
        match self {
            LocalStorage::Web(s) => s.remove_item(key).map_err(|e| storage_error(&e)),
            LocalStorage::Memory(m) => {
                m.delete(&key.into());
                Ok(())
            }
        }
    }

    fn keys(&self) -> Result<Vec<String>, StorageError> {
        let s = match self {
            LocalStorage::Web(s) => s,
            LocalStorage::Memory(m) => {
                let keys = js_sys::Array::from(&m.keys());
                return Ok(keys.iter().filter_map(|k| k.as_string()).collect());
            }
        };
        let len = s.length().map_err(|e| storage_error(&e))?;
        let mut keys = Vec::with_capacity(len as usize);
        for i in 0..len {
            if let Some(key) = s.key(i).map_err(|e| storage_error(&e))? {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_enforces_its_quota() {
        let s = MemoryStorage::with_quota(10);
        s.set("ab", "cdef").unwrap(); // 6 units
        assert_eq!(s.set("x", "12345"), Err(StorageError::QuotaExceeded)); // 6 + 6 > 10
        s.set("ab", "cdefghij").unwrap(); // replacing counts only the new value: 10
        assert_eq!(s.used(), 10);
        s.remove("ab").unwrap();
        s.set("x", "12345").unwrap();
        assert_eq!(s.keys().unwrap(), vec!["x".to_owned()]);
        assert_eq!(s.get("x").unwrap().as_deref(), Some("12345"));
        assert_eq!(s.get("ab").unwrap(), None);
    }

    #[test]
    fn quota_counts_utf16_units() {
        let s = MemoryStorage::with_quota(3);
        s.set("k", "é😀").unwrap_err(); // 1 + 1 + 2 = 4 units
        s.set("k", "éa").unwrap(); // 3 units
    }
}
