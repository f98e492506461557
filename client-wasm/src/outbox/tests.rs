//! Unit tests of the outbox, over the in-memory storage.
use super::*;
use crate::storage::MemoryStorage;

fn entry(id: &str) -> Entry {
    entry_at(id, 1.0)
}

fn entry_at(id: &str, t: f64) -> Entry {
    let mut fields = Fields::new();
    fields.insert("text".into(), id.into());
    Entry {
        id: id.into(),
        channel: "c".into(),
        fields,
        maxlen: None,
        created_at: t,
    }
}

fn ns() -> Namespace {
    Namespace::new(&["ws://a/ws"], None)
}

fn ids(outbox: &Outbox<impl Storage>) -> Vec<String> {
    outbox.list().into_iter().map(|e| e.id).collect()
}

#[test]
fn keeps_order_and_survives_a_new_instance() {
    let storage = MemoryStorage::new();
    let outbox = Outbox::new(&storage, &ns(), "s", 10);
    assert!(outbox.is_empty());
    // Same millisecond, then a clock that went back: the order is still the push order.
    for (id, t) in [("b", 5.0), ("a", 5.0), ("c", 4.0), ("0", 6.0)] {
        outbox.push(entry_at(id, t)).unwrap();
    }
    assert_eq!(ids(&outbox), ["b", "a", "c", "0"]);
    assert!(outbox.remove("a"));
    assert!(!outbox.remove("a"));
    assert!(outbox.contains("c") && !outbox.contains("a"));
    let again = Outbox::new(&storage, &ns(), "s", 10);
    assert_eq!(ids(&again), ["b", "c", "0"]);
    assert_eq!(again.list()[1], entry_at("c", 4.0));
    let key = again.key("c");
    assert!(key.starts_with(&ns().outbox_prefix()) && key.ends_with(":c"));
    assert!(storage
        .get(&key)
        .unwrap()
        .unwrap()
        .contains(r#""createdAt":4.0"#));
    for id in ["b", "c", "0"] {
        assert!(again.remove(id));
    }
    assert!(storage.keys().unwrap().is_empty());
}

#[test]
fn a_remove_never_touches_another_message() {
    // Two tabs: each works from what it read, as with a stale localStorage view.
    let storage = MemoryStorage::new();
    let tab1 = Outbox::new(&storage, &ns(), "s", 10);
    let tab2 = Outbox::new(&storage, &ns(), "s", 10);
    tab1.push(entry("x")).unwrap();
    let seen_by_2 = tab2.list();
    tab1.push(entry("y")).unwrap();
    assert_eq!(seen_by_2.len(), 1);
    assert!(tab2.remove("x"));
    assert_eq!(ids(&tab1), ["y"]);
    let before: Vec<String> = storage.keys().unwrap();
    tab2.push(entry("z")).unwrap();
    // Pushing writes one new key and rewrites nothing.
    let after: Vec<String> = storage.keys().unwrap();
    assert_eq!(after.len(), before.len() + 1);
    assert!(storage.get(&tab1.key("y")).unwrap().is_some());
}

#[test]
fn a_waiting_id_is_not_stored_twice() {
    let storage = MemoryStorage::new();
    let outbox = Outbox::new(&storage, &ns(), "s", 10);
    assert_eq!(outbox.push(entry_at("k", 1.0)), Ok(1));
    assert_eq!(outbox.push(entry_at("k", 2.0)), Ok(1));
    assert_eq!(outbox.list(), [entry_at("k", 1.0)]);
}

#[test]
fn is_bounded_and_reports_a_full_quota() {
    let storage = MemoryStorage::new();
    let outbox = Outbox::new(&storage, &ns(), "s", 2);
    outbox.push(entry("a")).unwrap();
    assert_eq!(outbox.push(entry("b")), Ok(2));
    assert_eq!(outbox.push(entry("c")), Err(OutboxError::Full(2)));
    assert!(outbox.remove("a"));
    assert_eq!(outbox.push(entry("c")), Ok(2));
    let tight = MemoryStorage::with_quota(10);
    let outbox = Outbox::new(&tight, &ns(), "s", 2);
    assert!(matches!(
        outbox.push(entry("a")),
        Err(OutboxError::Storage(StorageError::QuotaExceeded))
    ));
    assert!(outbox.is_empty());
}

#[test]
fn unreadable_or_other_versions_are_skipped() {
    let storage = MemoryStorage::new();
    let outbox = Outbox::new(&storage, &ns(), "s", 10);
    storage.set(&outbox.key("bad"), "{not json").unwrap();
    let mut v3 = Record {
        v: FORMAT_VERSION,
        o: 1.0,
        seq: 1,
        entry: entry("v3"),
    }
    .to_text();
    v3 = v3.replace(r#""v":2"#, r#""v":3"#);
    storage.set(&outbox.key("v3"), &v3).unwrap();
    // A record under another id's key is not that key's message.
    let moved = Record {
        v: FORMAT_VERSION,
        o: 1.0,
        seq: 1,
        entry: entry("elsewhere"),
    }
    .to_text();
    storage.set(&outbox.key("here"), &moved).unwrap();
    assert!(outbox.is_empty());
    outbox.push(entry("a")).unwrap();
    assert_eq!(ids(&outbox), ["a"]);
}

#[test]
fn namespaces_do_not_share_messages() {
    let storage = MemoryStorage::new();
    let t = ["ws://a/ws"];
    let plain = Outbox::new(&storage, &Namespace::new(&t, None), "s", 10);
    let user = Outbox::new(&storage, &Namespace::new(&t, Some("u1")), "s", 10);
    let other = Outbox::new(&storage, &Namespace::new(&["ws://b/ws"], None), "s", 10);
    plain.push(entry("p")).unwrap();
    user.push(entry("u")).unwrap();
    other.push(entry("o")).unwrap();
    assert_eq!(ids(&plain), ["p"]);
    assert_eq!(ids(&user), ["u"]);
    assert_eq!(ids(&other), ["o"]);
    assert!(!plain.remove("u") && !user.remove("p"));
}

fn legacy_text(ids: &[(&str, f64)]) -> String {
    let entries: Vec<Entry> = ids.iter().map(|(id, t)| entry_at(id, *t)).collect();
    Legacy { v: 1, entries }.to_text()
}

#[test]
fn the_old_single_entry_is_moved_once_and_in_order() {
    let storage = MemoryStorage::new();
    let old = format!("{LEGACY_PREFIX}s");
    storage
        .set(&old, &legacy_text(&[("a", 5.0), ("b", 5.0), ("c", 3.0)]))
        .unwrap();
    let outbox = Outbox::new(&storage, &ns(), "s", 10);
    assert_eq!(ids(&outbox), ["a", "b", "c"]);
    assert_eq!(storage.get(&old).unwrap(), None, "the old entry is gone");
    outbox.push(entry_at("d", 4.0)).unwrap();
    assert_eq!(ids(&outbox), ["a", "b", "c", "d"]);
    assert!(outbox.remove("b"));
    assert_eq!(ids(&Outbox::new(&storage, &ns(), "s", 10)), ["a", "c", "d"]);

    // Other targets' old outbox is not this one's; a named namespace never reads it.
    storage.set(&old, &legacy_text(&[("x", 1.0)])).unwrap();
    let named = Namespace::new(&["ws://a/ws"], Some("u1"));
    assert!(Outbox::new(&storage, &named, "s", 10).is_empty());
    assert_eq!(ids(&Outbox::new(&storage, &ns(), "t", 10)), ["a", "c", "d"]);
    assert!(storage.get(&old).unwrap().is_some());
    // An unreadable old entry is dropped.
    storage.set(&old, "{nope").unwrap();
    assert_eq!(ids(&outbox), ["a", "c", "d"]);
    assert_eq!(storage.get(&old).unwrap(), None);
}

#[test]
fn a_move_stopped_by_the_quota_loses_nothing() {
    let storage = MemoryStorage::new();
    let old = format!("{LEGACY_PREFIX}s");
    storage
        .set(&old, &legacy_text(&[("a", 1.0), ("b", 2.0), ("c", 3.0)]))
        .unwrap();
    // Room for about one more message.
    storage.set_quota(Some(storage.used() + 150));
    let outbox = Outbox::new(&storage, &ns(), "s", 10);
    assert_eq!(ids(&outbox), ["a", "b", "c"]);
    assert!(storage.get(&old).unwrap().is_some(), "kept until moved");
    // Removing a message not yet moved rewrites the old entry without it.
    assert!(outbox.remove("c"));
    assert_eq!(ids(&outbox), ["a", "b"]);
    storage.set_quota(None);
    assert_eq!(ids(&outbox), ["a", "b"]);
    assert_eq!(storage.get(&old).unwrap(), None);
    assert!(outbox.remove("a") && outbox.remove("b"));
    assert!(outbox.is_empty() && !outbox.remove("a"));
}

#[test]
fn outcomes_are_recorded_for_other_tabs_then_expire() {
    let storage = MemoryStorage::new();
    let tab1 = Outbox::new(&storage, &ns(), "s", 10);
    let tab2 = Outbox::new(&storage, &ns(), "s", 10);
    tab2.push(entry("x")).unwrap();
    tab2.push(entry("y")).unwrap();
    assert_eq!(tab1.outcome("x"), None, "still waiting");
    let stored = Outcome::Stored("5-0".into());
    assert!(tab1.finish("x", &stored, 1000.0));
    let refused = Outcome::Refused {
        code: "cancelled".into(),
        message: "the message was cancelled".into(),
    };
    assert!(tab1.finish("y", &refused, 2000.0));
    assert!(tab2.is_empty(), "outcomes are not waiting messages");
    assert_eq!(tab2.outcome("x"), Some(stored.clone()));
    assert_eq!(tab2.outcome("y"), Some(refused));
    assert!(!tab1.finish("z", &stored, 1000.0 + OUTCOME_TTL_MS));
    // Written at 1000 and 2000: at 1000 + TTL both are still there, just past it x goes.
    assert!(tab2.outcome("x").is_some() && tab2.outcome("y").is_some());
    tab1.finish("w", &stored, 1000.0 + OUTCOME_TTL_MS + 1.0);
    assert_eq!(tab2.outcome("x"), None);
    assert!(tab2.outcome("y").is_some());
    // Another namespace never sees them.
    let other = Outbox::new(&storage, &Namespace::new(&["ws://b/ws"], None), "s", 10);
    assert_eq!(other.outcome("y"), None);
}

#[test]
fn scopes_differ_by_targets() {
    assert_eq!(scope(&["ws://a"]), scope(&["ws://a"]));
    assert_ne!(scope(&["ws://a", "ws://b"]), scope(&["ws://ab"]));
    assert_eq!(scope(&["x"]).len(), 16);
}
