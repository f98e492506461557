//! Browser tests of the cache over the real `localStorage` and of the JavaScript-facing API, in
//! headless Chromium: `cargo test -p redistribute-wasm --target wasm32-unknown-unknown` (the
//! runner is wasm-bindgen-test-runner, see `.cargo/config.toml`; chromedriver from
//! `chromium-driver`). No server is needed: the targets are unreachable ports, which is what
//! these tests are about (errors, validation, cache). The chat e2e test covers a real server.
#![cfg(target_arch = "wasm32")]

use js_sys::{Array, Function, Object, Promise, Reflect};
use redistribute_protocol::{Message, StreamId};
use redistribute_wasm::cache::{Cache, CacheError, CachedMessage};
use redistribute_wasm::namespace::Namespace;
use redistribute_wasm::storage::{LocalStorage, Storage};
use redistribute_wasm::{Client, Subscription};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

mod outbox;

/// Nothing listens there: connection attempts fail at once.
const NOWHERE: &str = "ws://127.0.0.1:9/ws";

fn js(expr: &str) -> JsValue {
    Function::new_no_args(&format!("return ({expr});"))
        .call0(&JsValue::UNDEFINED)
        .unwrap()
}

fn prop(target: &JsValue, key: &str) -> JsValue {
    Reflect::get(target, &key.into()).unwrap()
}

fn code(err: &JsValue) -> String {
    assert!(
        err.is_instance_of::<js_sys::Error>(),
        "not an Error: {err:?}"
    );
    prop(err, "code").as_string().unwrap_or_default()
}

fn local_storage() -> web_sys::Storage {
    web_sys::window().unwrap().local_storage().unwrap().unwrap()
}

/// A listener that records its arguments into `log` (an array of argument arrays).
fn recorder(log: &Array) -> Function {
    Function::new_with_args("log", "return (...args) => { log.push(args); }")
        .call1(&JsValue::UNDEFINED, log)
        .unwrap()
        .unchecked_into()
}

fn client(options: &str) -> Client {
    Client::new(js(options)).expect("valid options")
}

async fn rejection(promise: Promise) -> JsValue {
    JsFuture::from(promise)
        .await
        .expect_err("the promise should reject")
}

/// Lets pending timers and socket events run.
async fn tick(ms: i32) {
    let p = Promise::new(&mut |resolve, _| {
        web_sys::window()
            .unwrap()
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .unwrap();
    });
    JsFuture::from(p).await.unwrap();
}

fn message(ms: u64, text: &str) -> CachedMessage {
    let mut fields = serde_json::Map::new();
    fields.insert("text".into(), text.into());
    CachedMessage::from_message(&Message {
        offset: StreamId::new(ms, 0),
        fields,
    })
}

#[wasm_bindgen_test]
fn cache_round_trips_through_local_storage() {
    let cache = Cache::with_prefix(LocalStorage::open().unwrap(), 2, "t1:");
    cache.clear("c").unwrap();
    let problems = cache.store("c", &[message(1, "a"), message(2, "b")], None, 1.0);
    assert!(problems.is_empty(), "{problems:?}");
    cache.store("c", &[message(3, "c")], Some(StreamId::new(3, 0)), 2.0);
    let loaded = cache.load("c").unwrap();
    let got: Vec<u64> = loaded.messages.iter().map(|m| m.offset.ms).collect();
    assert_eq!(got, vec![2, 3]);
    assert_eq!(loaded.last_offset, Some(StreamId::new(3, 0)));
    assert!(local_storage().get_item("t1:c").unwrap().is_some());
    cache.clear("c").unwrap();
}

#[wasm_bindgen_test]
fn full_local_storage_is_reported_not_fatal() {
    let storage = local_storage();
    let cache = Cache::with_prefix(LocalStorage::open().unwrap(), 100, "t2:");
    cache.store("c", &[message(1, "before")], None, 1.0);
    // Fill the origin's quota with foreign data.
    let mut chunk = "x".repeat(1 << 20);
    let mut junk = 0;
    while !chunk.is_empty() {
        if storage.set_item(&format!("junk-{junk}"), &chunk).is_ok() {
            junk += 1;
        } else {
            chunk.truncate(chunk.len() / 2);
        }
    }
    let batch: Vec<_> = (2..50)
        .map(|i| message(i, "a longer message text"))
        .collect();
    let problems = cache.store("c", &batch, None, 2.0);
    assert!(
        matches!(problems[..], [CacheError::QuotaExceeded { .. }]),
        "{problems:?}"
    );
    // Still readable, and the foreign data was left alone.
    assert!(cache.load("c").is_ok());
    for i in 0..junk {
        assert!(LocalStorage::open()
            .unwrap()
            .get(&format!("junk-{i}"))
            .unwrap()
            .is_some());
        storage.remove_item(&format!("junk-{i}")).unwrap();
    }
    cache.clear("c").unwrap();
}

#[wasm_bindgen_test]
fn bad_options_throw_bad_config() {
    for options in [
        "undefined",
        "{}",
        "{ targets: [] }",
        "{ targets: ['http://example.com/ws'] }",
        "{ targets: [42] }",
        "{ targets: 'ws://a/ws', decode: 'nope' }",
        "{ targets: 'ws://a/ws', cacheSize: -1 }",
        "{ targets: 'ws://a/ws', requestTimeout: 0 }",
        "{ targets: 'ws://a/ws', minReconnectDelay: 0 }",
        "{ targets: 'ws://a/ws', minReconnectDelay: -5 }",
        "{ targets: 'ws://a/ws', minReconnectDelay: 'soon' }",
        "{ targets: 'ws://a/ws', maxReconnectDelay: 0 }",
        "{ targets: 'ws://a/ws', minReconnectDelay: 500, maxReconnectDelay: 499 }",
        "{ targets: 'ws://a/ws', minReconnectDelay: 20000 }",
        "{ targets: 'ws://a/ws', maxReconnectDelay: 50 }",
        "{ targets: 'ws://a/ws', maxReconnectDelay: Infinity }",
        "{ targets: 'ws://a/ws', reconnectJitter: 1.5 }",
        "{ targets: 'ws://a/ws', reconnectJitter: -0.1 }",
        "{ targets: 'ws://a/ws', reconnectJitter: NaN }",
        "{ targets: 'ws://a/ws', pingInterval: -1 }",
    ] {
        let err = Client::new(js(options)).err().expect(options);
        assert_eq!(code(&err), "bad_config", "{options}");
    }
    for options in [
        "{ targets: 'ws://a/ws', localStorage: false, minReconnectDelay: 500, maxReconnectDelay: 500 }",
        "{ targets: 'ws://a/ws', localStorage: false, reconnectJitter: 0, pingInterval: 0 }",
        "{ targets: 'ws://a/ws', localStorage: false, reconnectJitter: 1, pingInterval: 1000 }",
    ] {
        Client::new(js(options)).expect(options).close();
    }
}

#[wasm_bindgen_test]
fn unknown_event_names_throw() {
    let c = client(&format!("{{ targets: '{NOWHERE}', localStorage: false }}"));
    let err = c.on("message", recorder(&Array::new())).unwrap_err();
    assert_eq!(code(&err), "bad_request");
    c.close();
}

#[wasm_bindgen_test]
async fn invalid_requests_reject_with_bad_request() {
    let c = client(&format!(
        "{{ targets: ['{NOWHERE}'], localStorage: false }}"
    ));
    let cases = [
        c.subscribe("bad channel".into(), None),
        c.subscribe("c".into(), Some("x-1".into())),
        c.unsubscribe("*".into()),
        c.publish("c".into(), js("{}"), None),
        c.publish("c".into(), js("42"), None),
        c.publish(
            "c".into(),
            js("{ a: 1 }"),
            Some(js("{ maxlen: 0 }").unchecked_into()),
        ),
        c.load("no spaces"),
    ];
    for (i, promise) in cases.into_iter().enumerate() {
        assert_eq!(code(&rejection(promise).await), "bad_request", "case {i}");
    }
    c.close();
}

/// The storage key of a channel's cache entry for a client of `targets` and `name`.
fn cache_key(targets: &[&str], name: Option<&str>, channel: &str) -> String {
    format!("{}{channel}", Namespace::new(targets, name).cache_prefix())
}

#[wasm_bindgen_test]
async fn load_reads_the_cache_without_network_and_decodes() {
    let key = cache_key(&[NOWHERE], None, "room");
    local_storage()
        .set_item(
            &key,
            r#"{"v":1,"t":1,"offset":"7-0","messages":[{"offset":"5-0","fields":{"text":"hi"}}]}"#,
        )
        .unwrap();
    let c = client(&format!(
        "{{ targets: '{NOWHERE}', decode: (t) => ({{ wrapped: JSON.parse(t) }}) }}"
    ));
    let loaded = JsFuture::from(c.load("room")).await.unwrap();
    assert_eq!(
        prop(&loaded, "lastOffset").as_string().as_deref(),
        Some("7-0")
    );
    let messages: Array = prop(&loaded, "messages").unchecked_into();
    assert_eq!(messages.length(), 1);
    let first = messages.get(0);
    assert_eq!(prop(&first, "offset").as_string().as_deref(), Some("5-0"));
    let text = prop(&prop(&prop(&first, "fields"), "wrapped"), "text");
    assert_eq!(text.as_string().as_deref(), Some("hi"));

    // An empty channel: no messages, no offset.
    let loaded = JsFuture::from(c.load("empty-room")).await.unwrap();
    assert!(prop(&loaded, "lastOffset").is_undefined());
    c.close();

    // With localStorage off, nothing is read.
    let c = client(&format!("{{ targets: '{NOWHERE}', localStorage: false }}"));
    let loaded = JsFuture::from(c.load("room")).await.unwrap();
    assert_eq!(
        prop(&loaded, "messages").unchecked_into::<Array>().length(),
        0
    );
    c.close();
    local_storage().remove_item(&key).unwrap();
}

#[wasm_bindgen_test]
async fn caches_are_scoped_by_targets_and_namespace() {
    let entry = r#"{"v":1,"t":1,"offset":"7-0","messages":[{"offset":"7-0","fields":{"n":1}}]}"#;
    let key = cache_key(&[NOWHERE], None, "scoped");
    local_storage().set_item(&key, entry).unwrap();
    // The unscoped entry of earlier versions is never a resume point.
    local_storage()
        .set_item("redistribute:v1:scoped", entry)
        .unwrap();
    let last = |options: &str| {
        let c = client(options);
        let loaded = c.load("scoped");
        c.close();
        JsFuture::from(loaded)
    };
    let found = last(&format!("{{ targets: ['{NOWHERE}', '{NOWHERE}'] }}"))
        .await
        .unwrap();
    assert_eq!(
        prop(&found, "lastOffset").as_string().as_deref(),
        Some("7-0")
    );
    for options in [
        format!("{{ targets: '{NOWHERE}', namespace: 'user-1' }}"),
        format!("{{ targets: ['{NOWHERE}', 'ws://127.0.0.1:9/other'] }}"),
        "{ targets: 'ws://127.0.0.1:9/other' }".to_owned(),
    ] {
        let loaded = last(&options).await.unwrap();
        assert!(prop(&loaded, "lastOffset").is_undefined(), "{options}");
        assert_eq!(
            prop(&loaded, "messages").unchecked_into::<Array>().length(),
            0
        );
    }
    // An empty name is no name.
    let loaded = last(&format!("{{ targets: '{NOWHERE}', namespace: '' }}"))
        .await
        .unwrap();
    assert_eq!(
        prop(&loaded, "lastOffset").as_string().as_deref(),
        Some("7-0")
    );
    assert_eq!(
        code(
            &Client::new(js("{ targets: 'ws://x/ws', namespace: 42 }"))
                .err()
                .expect("a number is no namespace")
        ),
        "bad_config"
    );
    local_storage().remove_item(&key).unwrap();
    local_storage()
        .remove_item("redistribute:v1:scoped")
        .unwrap();
}

#[wasm_bindgen_test]
async fn corrupt_cache_entries_are_skipped_and_reported() {
    let key = cache_key(&[NOWHERE], None, "broken");
    local_storage().set_item(&key, "{not json").unwrap();
    let c = client(&format!("{{ targets: '{NOWHERE}' }}"));
    let errors = Array::new();
    c.on("error", recorder(&errors)).unwrap();
    let loaded = JsFuture::from(c.load("broken")).await.unwrap();
    assert_eq!(
        prop(&loaded, "messages").unchecked_into::<Array>().length(),
        0
    );
    let codes: Vec<String> = errors
        .iter()
        .map(|args| code(&Array::from(&args).get(0)))
        .collect();
    assert!(codes.iter().any(|c| c == "cache_corrupt"), "{codes:?}");
    let err = errors
        .iter()
        .map(|a| Array::from(&a).get(0))
        .find(|e| code(e) == "cache_corrupt")
        .unwrap();
    assert_eq!(prop(&err, "channel").as_string().as_deref(), Some("broken"));
    assert_eq!(local_storage().get_item(&key).unwrap(), None);
    c.close();
}

#[wasm_bindgen_test]
async fn unreachable_servers_report_errors_and_requests_time_out() {
    let c = client(&format!(
        "{{ targets: ['{NOWHERE}'], localStorage: false, outbox: false, requestTimeout: 300 }}"
    ));
    let errors = Array::new();
    c.on("error", recorder(&errors)).unwrap();
    let err = rejection(c.publish("c".into(), js("{ text: 'hi' }"), None)).await;
    assert_eq!(code(&err), "timeout");
    assert!(!c.connected());
    let codes: Vec<String> = errors
        .iter()
        .map(|args| code(&Array::from(&args).get(0)))
        .collect();
    assert!(codes.iter().any(|c| c == "connect_failed"), "{codes:?}");
    c.close();
}

#[wasm_bindgen_test]
async fn close_rejects_pending_requests_and_refuses_new_ones() {
    let c = client(&format!("{{ targets: '{NOWHERE}', localStorage: false }}"));
    let pending = c.subscribe("c".into(), Some("0".into()));
    tick(10).await;
    c.close();
    assert_eq!(code(&rejection(pending).await), "closed");
    let err = rejection(c.publish("c".into(), js("{ a: 1 }"), None)).await;
    assert_eq!(code(&err), "closed");
}

#[wasm_bindgen_test]
async fn off_removes_a_listener_and_listeners_may_reenter() {
    let c = client(&format!(
        "{{ targets: '{NOWHERE}', localStorage: false, requestTimeout: 200 }}"
    ));
    let removed = Array::new();
    let listener = recorder(&removed);
    c.on("error", listener.clone()).unwrap();
    c.off("error", &listener).unwrap();
    // A listener that calls back into the client while events are being delivered.
    let seen = Array::new();
    let holder = Object::new();
    Reflect::set(&holder, &"seen".into(), &seen).unwrap();
    let reenter = Function::new_with_args(
        "holder",
        "return (err) => { holder.seen.push(err.code); holder.client.load('c'); }",
    )
    .call1(&JsValue::UNDEFINED, &holder)
    .unwrap()
    .unchecked_into::<Function>();
    c.on("error", reenter).unwrap();
    let client_js = JsValue::from(c);
    Reflect::set(&holder, &"client".into(), &client_js).unwrap();
    tick(300).await;
    assert_eq!(removed.length(), 0);
    assert!(seen.length() > 0, "the re-entering listener ran");
    let close: Function = prop(&client_js, "close").unchecked_into();
    close.call0(&client_js).unwrap();
}

/// Waits (bounded) until `check` holds.
async fn until(what: &str, ms: i32, check: impl Fn() -> bool) {
    let mut waited = 0;
    while !check() {
        assert!(waited < ms, "timed out after {ms} ms waiting for {what}");
        tick(10).await;
        waited += 10;
    }
}

#[wasm_bindgen_test]
async fn one_leader_per_targets_and_a_follower_takes_over() {
    let options = "{ targets: 'ws://127.0.0.1:9/ws?roles' }";
    let a = client(options);
    assert_eq!(a.role(), "pending");
    let b = client(options);
    let (led_a, led_b, followed_b) = (Array::new(), Array::new(), Array::new());
    a.on("leader", recorder(&led_a)).unwrap();
    b.on("leader", recorder(&led_b)).unwrap();
    b.on("follower", recorder(&followed_b)).unwrap();
    until("the election", 2000, || {
        a.role() == "leader" && b.role() == "follower"
    })
    .await;
    assert_eq!((led_a.length(), followed_b.length()), (1, 1));

    // Other targets: another election.
    let other = client("{ targets: 'ws://127.0.0.1:9/ws?roles-other' }");
    until("the other election", 2000, || other.role() == "leader").await;

    // The leader goes away: the follower leads within a second.
    let t0 = js_sys::Date::now();
    a.close();
    until("the takeover", 1000, || b.role() == "leader").await;
    assert!(js_sys::Date::now() - t0 < 1000.0);
    assert_eq!(led_b.length(), 1);

    let alone = client("{ targets: 'ws://127.0.0.1:9/ws?roles', shareSocket: false }");
    assert_eq!(alone.role(), "standalone");
    for c in [b, other, alone] {
        c.close();
    }
}

/// The names of the recorded calls' first arguments (states, error codes).
fn firsts(log: &Array) -> Vec<String> {
    log.iter()
        .map(|args| {
            let first = Array::from(&args).get(0);
            first
                .as_string()
                .unwrap_or_else(|| prop(&first, "code").as_string().unwrap_or_default())
        })
        .collect()
}

#[wasm_bindgen_test]
async fn subscription_objects_validate_and_end_unsubscribed_with_the_error() {
    let c = client(&format!(
        "{{ targets: ['{NOWHERE}'], localStorage: false, outbox: false, requestTimeout: 300, \
           retrySubscribe: false }}"
    ));
    assert_eq!(c.state(), "disconnected");
    let client_states = Array::new();
    c.on("state", recorder(&client_states)).unwrap();
    for (channel, options) in [("bad channel", "undefined"), ("c", "{ offset: 'x-1' }")] {
        let err = c
            .new_subscription(
                channel.into(),
                Some(js(options).unchecked_into()).filter(|o: &Object| !o.is_undefined()),
            )
            .err()
            .expect("refused");
        assert_eq!(code(&err), "bad_request", "{channel}");
    }
    let sub: Subscription = c.new_subscription("c".into(), None).unwrap();
    assert_eq!(sub.state(), "unsubscribed");
    assert_eq!(sub.channel(), "c");
    let twice = c
        .new_subscription("c".into(), None)
        .err()
        .expect("one per channel");
    assert_eq!(code(&twice), "duplicate_subscription");
    assert!(c.get_subscription("c".into()).is_some());
    assert!(c.get_subscription("d".into()).is_none());
    assert_eq!(
        code(&sub.on("message", recorder(&Array::new())).unwrap_err()),
        "bad_request"
    );

    let (states, errors, ended) = (Array::new(), Array::new(), Array::new());
    sub.on("state", recorder(&states)).unwrap();
    sub.on("error", recorder(&errors)).unwrap();
    sub.on("unsubscribed", recorder(&ended)).unwrap();
    // Nothing listens: the subscribe waits for a connection and times out.
    let err = rejection(sub.subscribe()).await;
    assert_eq!(code(&err), "timeout");
    tick(10).await;
    assert_eq!(sub.state(), "unsubscribed");
    assert_eq!(firsts(&states), ["subscribing", "unsubscribed"]);
    assert_eq!(firsts(&errors), ["timeout"]);
    assert_eq!(firsts(&ended), ["timeout"]);
    assert_eq!(c.state(), "connecting");
    assert_eq!(firsts(&client_states), ["connecting"]);

    // Removed: it hears nothing more and its calls reject; the channel is free again.
    c.remove_subscription(&sub);
    assert_eq!(code(&rejection(sub.subscribe()).await), "cancelled");
    assert!(c.get_subscription("c".into()).is_none());
    let again = c.new_subscription("c".into(), None).unwrap();
    let pending = again.subscribe();
    tick(10).await;
    c.close();
    assert_eq!(code(&rejection(pending).await), "closed");
    assert_eq!(again.state(), "unsubscribed");
    assert_eq!(c.state(), "closed");
    assert_eq!(firsts(&client_states), ["connecting", "closed"]);
}
