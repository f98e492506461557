//! Unit tests of the message cache, over the in-memory storage.
use super::*;
use crate::storage::MemoryStorage;

fn msg(ms: u64, text: &str) -> CachedMessage {
    let mut fields = serde_json::Map::new();
    fields.insert("text".into(), text.into());
    CachedMessage::from_message(&Message {
        offset: StreamId::new(ms, 0),
        fields,
    })
}

fn ns() -> Namespace {
    Namespace::new(&["ws://a/ws"], None)
}

fn offsets(loaded: &Loaded) -> Vec<u64> {
    loaded.messages.iter().map(|m| m.offset.ms).collect()
}

/// Interleaved, overlapping writes (two tabs) merge into one run in offset order, each
/// offset once, the newest `limit` kept.
#[test]
fn merge_interleaves_and_dedups() {
    let ms = |v: &[u64]| v.iter().map(|&n| msg(n, "x")).collect::<Vec<_>>();
    let mut stored = ms(&[2, 4, 6, 8]);
    merge(&mut stored, &ms(&[1, 4, 5, 9, 9]), 100);
    let got: Vec<u64> = stored.iter().map(|m| m.offset.ms).collect();
    assert_eq!(got, [1, 2, 4, 5, 6, 8, 9]);
    merge(&mut stored, &ms(&[3, 7]), 4);
    let got: Vec<u64> = stored.iter().map(|m| m.offset.ms).collect();
    assert_eq!(got, [6, 7, 8, 9]);
}

#[test]
fn empty_channel_loads_nothing() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    let loaded = cache.load("chat").unwrap();
    assert!(loaded.messages.is_empty());
    assert_eq!(loaded.last_offset, None);
}

#[test]
fn stores_and_bounds_per_channel() {
    let cache = Cache::new(MemoryStorage::new(), 3, &ns());
    assert!(cache
        .store("chat", &[msg(1, "a"), msg(2, "b")], None, 1.0)
        .is_empty());
    assert!(cache
        .store(
            "chat",
            &[msg(3, "c"), msg(4, "d")],
            Some(StreamId::new(4, 0)),
            2.0
        )
        .is_empty());
    let loaded = cache.load("chat").unwrap();
    assert_eq!(offsets(&loaded), vec![2, 3, 4]);
    assert_eq!(loaded.last_offset, Some(StreamId::new(4, 0)));
    assert_eq!(loaded.messages[2].fields, r#"{"text":"d"}"#);
    assert!(cache.load("other").unwrap().messages.is_empty());
}

#[test]
fn position_without_messages_is_the_resume_point() {
    let cache = Cache::new(MemoryStorage::new(), 3, &ns());
    cache.store("chat", &[], Some(StreamId::new(9, 1)), 1.0);
    let loaded = cache.load("chat").unwrap();
    assert!(loaded.messages.is_empty());
    assert_eq!(loaded.last_offset, Some(StreamId::new(9, 1)));
    // A later message moves it on; an older position never moves it back.
    cache.store("chat", &[msg(10, "x")], Some(StreamId::new(5, 0)), 2.0);
    assert_eq!(
        cache.load("chat").unwrap().last_offset,
        Some(StreamId::new(10, 0))
    );
}

#[test]
fn offsets_order_numerically() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    cache.store("c", &[msg(9, "a")], None, 1.0);
    cache.store("c", &[msg(10, "b")], None, 2.0);
    assert_eq!(offsets(&cache.load("c").unwrap()), vec![9, 10]);
    assert_eq!(
        cache.load("c").unwrap().last_offset,
        Some(StreamId::new(10, 0))
    );
}

#[test]
fn concurrent_writers_merge_without_duplicates() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    cache.store("c", &[msg(1, "a"), msg(2, "b"), msg(3, "c")], None, 1.0);
    // A second tab that saw 2..4 writes after the first.
    cache.store("c", &[msg(2, "b"), msg(3, "c"), msg(4, "d")], None, 2.0);
    assert_eq!(offsets(&cache.load("c").unwrap()), vec![1, 2, 3, 4]);
}

#[test]
fn zero_limit_keeps_only_the_offset() {
    let cache = Cache::new(MemoryStorage::new(), 0, &ns());
    cache.store("c", &[msg(1, "a")], None, 1.0);
    let loaded = cache.load("c").unwrap();
    assert!(loaded.messages.is_empty());
    assert_eq!(loaded.last_offset, Some(StreamId::new(1, 0)));
}

#[test]
fn corrupt_entries_are_removed_and_reported() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    for bad in [
        "not json",
        r#"{"v":2,"messages":[]}"#,
        r#"{"v":1,"messages":[{"offset":"x","fields":{}}]}"#,
        r#"{"v":1,"messages":[{"offset":"1-0","fields":[1]}]}"#,
        r#"{"v":1,"messages":[{"offset":"2-0","fields":{}},{"offset":"1-0","fields":{}}]}"#,
    ] {
        cache.storage().set(&cache.key("c"), bad).unwrap();
        let err = cache.load("c").unwrap_err();
        assert!(matches!(err, CacheError::Corrupt { .. }), "{bad}: {err}");
        assert_eq!(cache.storage().get(&cache.key("c")).unwrap(), None);
        assert!(cache.load("c").unwrap().messages.is_empty());
    }
    // A write over a corrupt entry replaces it and reports it.
    cache.storage().set(&cache.key("c"), "{").unwrap();
    let problems = cache.store("c", &[msg(5, "e")], None, 1.0);
    assert!(matches!(problems[..], [CacheError::Corrupt { .. }]));
    assert_eq!(offsets(&cache.load("c").unwrap()), vec![5]);
}

#[test]
fn full_quota_empties_least_recently_written_channels_first_keeping_offsets() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    cache.store("old", &[msg(1, "old")], Some(StreamId::new(1, 5)), 1.0);
    cache.store("new", &[msg(1, "new")], None, 2.0);
    cache.store("bare", &[], Some(StreamId::new(3, 0)), 0.5);
    cache.storage().set("app-data", "keep me").unwrap();
    let batch = [msg(1, "a"), msg(2, "b")];
    let scratch = Cache::new(MemoryStorage::new(), 10, &ns());
    scratch.store("c", &batch, None, 3.0);
    // Room for the new entry once the oldest channel's message is gone (it frees ~40).
    let used = cache.storage().used();
    cache
        .storage()
        .set_quota(Some(used + scratch.storage().used() - 20));
    let problems = cache.store("c", &batch, None, 3.0);
    assert!(
        matches!(
            &problems[..],
            [CacheError::QuotaExceeded {
                evicted: 1,
                dropped: 0,
                stored: true,
                ..
            }]
        ),
        "{problems:?}"
    );
    let old = cache.load("old").unwrap();
    assert!(old.messages.is_empty());
    assert_eq!(old.last_offset, Some(StreamId::new(1, 5)), "offset kept");
    assert_eq!(offsets(&cache.load("new").unwrap()), vec![1]);
    assert_eq!(offsets(&cache.load("c").unwrap()), vec![1, 2]);
    assert_eq!(
        cache.load("bare").unwrap().last_offset,
        Some(StreamId::new(3, 0))
    );
    // Foreign keys are never touched.
    assert_eq!(
        cache.storage().get("app-data").unwrap().as_deref(),
        Some("keep me")
    );
}

#[test]
fn full_quota_never_removes_another_channels_offset() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    for (i, channel) in ["a", "b", "c"].iter().enumerate() {
        cache.store(channel, &[], Some(StreamId::new(i as u64 + 1, 0)), 1.0);
    }
    cache.store("d", &[msg(1, "x")], None, 2.0);
    cache.storage().set_quota(Some(cache.storage().used()));
    let problems = cache.store("d", &[msg(2, "a long message")], None, 3.0);
    assert!(
        matches!(problems[..], [CacheError::QuotaExceeded { .. }]),
        "{problems:?}"
    );
    for (i, channel) in ["a", "b", "c"].iter().enumerate() {
        assert_eq!(
            cache.load(channel).unwrap().last_offset,
            Some(StreamId::new(i as u64 + 1, 0)),
            "{channel}"
        );
    }
    // The channel being written resumes no later than what it delivered.
    assert!(cache.load("d").unwrap().last_offset >= Some(StreamId::new(1, 0)));
}

#[test]
fn other_namespaces_and_old_unscoped_entries_are_not_read() {
    let storage = MemoryStorage::new();
    let a = Cache::new(&storage, 10, &Namespace::new(&["ws://a/ws"], None));
    let b = Cache::new(&storage, 10, &Namespace::new(&["ws://b/ws"], None));
    let user = Cache::new(&storage, 10, &Namespace::new(&["ws://a/ws"], Some("u1")));
    storage
        .set(
            &format!("{LEGACY_PREFIX}chat"),
            r#"{"v":1,"t":1,"offset":"9-0","messages":[]}"#,
        )
        .unwrap();
    a.store("chat", &[msg(5, "a")], None, 1.0);
    for cache in [&b, &user] {
        let loaded = cache.load("chat").unwrap();
        assert!(loaded.messages.is_empty() && loaded.last_offset.is_none());
    }
    assert_eq!(
        a.load("chat").unwrap().last_offset,
        Some(StreamId::new(5, 0))
    );
    // Under quota pressure the old entry goes first, before any message of this cache.
    storage.set_quota(Some(storage.used()));
    let problems = a.store("chat", &[msg(6, "b")], None, 2.0);
    assert!(
        matches!(
            problems[..],
            [CacheError::QuotaExceeded {
                evicted: 1,
                dropped: 0,
                stored: true,
                ..
            }]
        ),
        "{problems:?}"
    );
    assert_eq!(storage.get(&format!("{LEGACY_PREFIX}chat")).unwrap(), None);
    assert_eq!(offsets(&a.load("chat").unwrap()), vec![5, 6]);
}

#[test]
fn full_quota_drops_old_messages_then_skips() {
    let storage = MemoryStorage::new();
    storage.set("app-data", &"x".repeat(100)).unwrap();
    let cache = Cache::new(storage, 100, &ns());
    let batch: Vec<_> = (1..=8).map(|i| msg(i, "message")).collect();
    cache.storage().set_quota(Some(100 + 200));
    let problems = cache.store("c", &batch, None, 1.0);
    let [CacheError::QuotaExceeded {
        dropped,
        stored: true,
        ..
    }] = problems[..]
    else {
        panic!("{problems:?}");
    };
    let loaded = cache.load("c").unwrap();
    assert_eq!(loaded.messages.len(), 8 - dropped);
    assert_eq!(loaded.messages.last().unwrap().offset, StreamId::new(8, 0));
    assert_eq!(loaded.last_offset, Some(StreamId::new(8, 0)));

    // Now nothing fits at all: the write is skipped, the old entry stays readable.
    cache.storage().set_quota(Some(0));
    let problems = cache.store("c", &[msg(9, "m")], None, 2.0);
    assert!(matches!(
        problems[..],
        [CacheError::QuotaExceeded { stored: false, .. }]
    ));
    assert_eq!(
        cache.load("c").unwrap().last_offset,
        Some(StreamId::new(8, 0))
    );
}

#[test]
fn nothing_new_writes_nothing() {
    let cache = Cache::new(MemoryStorage::new(), 10, &ns());
    cache.store("c", &[msg(1, "a")], Some(StreamId::new(1, 0)), 1.0);
    cache.storage().set_quota(Some(0));
    // Same message and position again: no write, so no quota problem either.
    assert!(cache
        .store("c", &[msg(1, "a")], Some(StreamId::new(1, 0)), 2.0)
        .is_empty());
}
