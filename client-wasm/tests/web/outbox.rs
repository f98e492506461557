//! The outbox in the browser: offline publishes waiting, cancelled, scoped, bounded.

use super::*;

#[wasm_bindgen_test]
async fn offline_publishes_wait_in_the_outbox_and_can_be_cancelled() {
    let options = "{ targets: 'ws://127.0.0.1:9/ws?outbox-test', shareSocket: false }";
    let c = client(options);
    let sizes = Array::new();
    c.on("outbox", recorder(&sizes)).unwrap();
    let first = c.publish("chat".into(), js("{ text: 'a' }"), None);
    let second = c.publish("chat".into(), js("{ text: 'b' }"), None);
    let waiting = c.outbox();
    assert_eq!(waiting.length(), 2);
    let entry = waiting.get(0);
    assert_eq!(prop(&entry, "channel").as_string().unwrap(), "chat");
    assert_eq!(
        prop(&prop(&entry, "fields"), "text").as_string().unwrap(),
        "a"
    );
    assert!(prop(&entry, "createdAt").as_f64().unwrap() > 0.0);
    let id = prop(&entry, "id").as_string().unwrap();
    // One entry per message, under the namespace's prefix and the message's id.
    let prefix = Namespace::new(&["ws://127.0.0.1:9/ws?outbox-test"], None).outbox_prefix();
    let stored: Vec<String> = (0..local_storage().length().unwrap())
        .filter_map(|i| local_storage().key(i).unwrap())
        .filter(|k| k.starts_with(&prefix))
        .collect();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let key = format!("{prefix}{id}");
    assert!(local_storage()
        .get_item(&key)
        .unwrap()
        .unwrap()
        .contains(r#""text":"a""#));

    assert!(c.cancel(&id));
    assert!(!c.cancel(&id), "already gone");
    assert_eq!(code(&rejection(first).await), "cancelled");
    assert_eq!(c.outbox().length(), 1);
    c.close();
    assert_eq!(code(&rejection(second).await), "closed");
    tick(0).await;
    let sizes: Vec<f64> = sizes
        .iter()
        .map(|args| Array::from(&args).get(0).as_f64().unwrap())
        .collect();
    assert_eq!(sizes, [1.0, 2.0, 1.0]);

    // A new client (a reload) finds the message that waits, with the same id.
    let again = client(options);
    let left = again.outbox();
    assert_eq!(left.length(), 1);
    let id = prop(&left.get(0), "id").as_string().unwrap();
    assert!(again.cancel(&id));
    assert_eq!(again.outbox().length(), 0);
    assert!((0..local_storage().length().unwrap())
        .filter_map(|i| local_storage().key(i).unwrap())
        .all(|k| !k.starts_with(&prefix)));
    again.close();
}

#[wasm_bindgen_test]
async fn outboxes_are_scoped_and_the_old_format_is_moved() {
    let targets = "ws://127.0.0.1:9/ws?outbox-move";
    // What an earlier version left: one entry holding the list, keyed by the targets' scope.
    let old = format!(
        "redistribute:outbox:v1:{}",
        redistribute_wasm::outbox::scope(&[targets])
    );
    local_storage()
        .set_item(
            &old,
            r#"{"v":1,"entries":[{"id":"old-1","channel":"chat","fields":{"n":1},"createdAt":1},{"id":"old-2","channel":"chat","fields":{"n":2},"createdAt":2}]}"#,
        )
        .unwrap();
    let ids = |c: &Client| -> Vec<String> {
        c.outbox()
            .iter()
            .map(|e| prop(&e, "id").as_string().unwrap())
            .collect()
    };
    // A named client never takes them: the old format does not say whose they are.
    let named = client(&format!(
        "{{ targets: '{targets}', shareSocket: false, namespace: 'user-1' }}"
    ));
    assert!(ids(&named).is_empty());
    assert!(local_storage().get_item(&old).unwrap().is_some());
    let plain = client(&format!("{{ targets: '{targets}', shareSocket: false }}"));
    assert_eq!(ids(&plain), ["old-1", "old-2"]);
    assert_eq!(local_storage().get_item(&old).unwrap(), None, "moved");
    // New messages queue behind them, in their own namespace only.
    let mine = plain.publish("chat".into(), js("{ n: 3 }"), None);
    let theirs = named.publish("chat".into(), js("{ n: 4 }"), None);
    assert_eq!(ids(&plain).len(), 3);
    assert_eq!(ids(&plain)[..2], ["old-1", "old-2"]);
    assert_eq!(ids(&named).len(), 1);
    assert!(!named.cancel("old-1"));
    for id in ids(&plain) {
        assert!(plain.cancel(&id));
    }
    let named_id = ids(&named).remove(0);
    assert!(named.cancel(&named_id));
    assert_eq!(code(&rejection(mine).await), "cancelled");
    assert_eq!(code(&rejection(theirs).await), "cancelled");
    plain.close();
    named.close();
}

#[wasm_bindgen_test]
async fn outbox_is_bounded_and_can_be_switched_off() {
    let c = client(
        "{ targets: 'ws://127.0.0.1:9/ws?outbox-bound', shareSocket: false, outboxSize: 1 }",
    );
    let kept = c.publish("chat".into(), js("{ n: 1 }"), None);
    let refused = c.publish("chat".into(), js("{ n: 2 }"), None);
    assert_eq!(code(&rejection(refused).await), "outbox_full");
    let empty = c.publish("chat".into(), js("{}"), None);
    assert_eq!(code(&rejection(empty).await), "bad_request");
    let id = prop(&c.outbox().get(0), "id").as_string().unwrap();
    assert!(c.cancel(&id));
    assert_eq!(code(&rejection(kept).await), "cancelled");
    c.close();

    let off = client("{ targets: 'ws://127.0.0.1:9/ws?outbox-off', shareSocket: false, outbox: false, requestTimeout: 50 }");
    let p = off.publish("chat".into(), js("{ n: 1 }"), None);
    assert_eq!(off.outbox().length(), 0);
    assert_eq!(code(&rejection(p).await), "timeout");
    off.close();
    assert!(Client::new(js("{ targets: 'ws://x/ws', outboxSize: 0 }")).is_err());
}
