//! Request outcomes: timeouts, publish retries with idempotency keys, connection loss, close,
//! local validation and backpressure.

use std::time::Duration;

use redistribute_protocol::session::{
    Action, Config, DisconnectReason, Event, PublishOptions, RequestError, RequestId, SessionError,
};
use redistribute_protocol::{ClientFrame, ErrorCode, Fields, ProtocolError, ServerFrame};

use crate::harness::{body, ms, Pair};

/// The outcome events of one request.
fn outcomes(pair: &Pair, id: RequestId) -> Vec<Event> {
    pair.events
        .iter()
        .map(|(_, e)| e.clone())
        .filter(|e| match e {
            Event::Published { id: i, .. }
            | Event::Pong { id: i }
            | Event::Unsubscribed { id: i, .. }
            | Event::Subscribed { id: i, .. }
            | Event::RequestFailed { id: i, .. } => *i == id,
            _ => false,
        })
        .collect()
}

fn keys(pair: &Pair) -> Vec<Option<String>> {
    pair.server
        .received_of("publish")
        .into_iter()
        .map(|f| match f {
            ClientFrame::Publish {
                idempotency_key, ..
            } => idempotency_key,
            _ => unreachable!(),
        })
        .collect()
}

fn config(auto_idempotency: bool) -> Config {
    let mut c = Config::new(["ws://a", "ws://b"]);
    c.auto_idempotency = auto_idempotency;
    c
}

#[test]
fn a_request_times_out_after_the_request_timeout_from_the_call() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.advance(Duration::from_secs(3));
    pair.server.swallow.insert("publish");
    let id = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    pair.advance(Duration::from_secs(10) - ms(1));
    assert!(outcomes(&pair, id).is_empty());
    pair.advance(ms(1));
    assert_timed_out(&pair, id);
    assert_eq!(pair.events.last().unwrap().0, Duration::from_secs(13));
    // A late reply is ignored: still exactly one outcome.
    pair.server.outbox.push_back(ServerFrame::Published {
        id: id.get(),
        channel: "c".into(),
        offset: Default::default(),
    });
    pair.drive();
    assert_eq!(outcomes(&pair, id).len(), 1);
    assert!(
        pair.session.is_connected(),
        "a caller's timeout keeps the connection"
    );
    assert_eq!(pair.session.pending_requests(), 0);
}

#[test]
fn each_request_gets_exactly_one_outcome() {
    let mut pair = Pair::connected(&["ws://a"]);
    let ping = pair.session.ping().unwrap();
    let publish = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    assert!(publish > ping, "ids increase");
    pair.drive();
    assert_eq!(outcomes(&pair, ping), vec![Event::Pong { id: ping }]);
    let stored = pair.server.stored("c");
    assert_eq!(
        outcomes(&pair, publish),
        vec![Event::Published {
            id: publish,
            channel: "c".into(),
            offset: stored[0]
        }]
    );
}

#[test]
fn a_publish_whose_reply_was_lost_is_retried_with_the_same_key() {
    let mut pair = Pair::new(config(true), 1);
    pair.start();
    pair.server.lose_replies.insert("publish");
    let id = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    assert_eq!(pair.server.stored("c").len(), 1, "stored, reply lost");
    pair.drop_transport();
    pair.server.lose_replies.clear();
    pair.reconnect_within(ms(200));
    pair.drive();

    let keys = keys(&pair);
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "the retry carries the same key");
    let key = keys[0].clone().unwrap();
    let (prefix, counter) = key.split_once('-').unwrap();
    assert_eq!(prefix.len(), 16);
    assert!(prefix.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(counter, id.to_string());
    let stored = pair.server.stored("c");
    assert_eq!(stored.len(), 1, "the server deduplicated the retry");
    assert_eq!(
        outcomes(&pair, id),
        vec![Event::Published {
            id,
            channel: "c".into(),
            offset: stored[0]
        }]
    );
}

#[test]
fn generated_keys_differ_between_publishes_and_seeds() {
    let mut all = Vec::new();
    for seed in [1, 2] {
        let mut pair = Pair::new(config(true), seed);
        pair.start();
        for n in 0..3 {
            pair.session
                .publish("c", body(n), PublishOptions::default())
                .unwrap();
        }
        pair.drive();
        all.extend(keys(&pair).into_iter().map(Option::unwrap));
    }
    let mut distinct = all.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "{all:?}");
}

#[test]
fn publishes_issued_while_disconnected_go_out_on_the_next_connection() {
    let mut pair = Pair::new(config(false), 1);
    pair.server.down.insert("ws://a".into());
    pair.start();
    assert!(!pair.session.is_connected());
    let id = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    pair.reconnect_within(Duration::from_secs(1));
    pair.drive();
    assert!(matches!(outcomes(&pair, id)[..], [Event::Published { .. }]));
    assert_eq!(keys(&pair), vec![None], "no key with auto idempotency off");
}

#[test]
fn queued_publishes_still_time_out() {
    let mut pair = Pair::new(config(true), 1);
    pair.server.down.insert("ws://a".into());
    pair.server.down.insert("ws://b".into());
    pair.start();
    let id = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    pair.advance(Duration::from_secs(10) - ms(1));
    assert!(outcomes(&pair, id).is_empty());
    pair.advance(ms(1));
    assert_timed_out(&pair, id);
}

#[test]
fn without_auto_idempotency_a_publish_in_flight_fails_with_connection_lost() {
    let mut pair = Pair::new(config(false), 1);
    pair.start();
    pair.server.swallow.insert("publish");
    pair.server.swallow.insert("ping");
    let bare = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    let keyed = pair
        .session
        .publish(
            "c",
            body(2),
            PublishOptions {
                maxlen: Some(100),
                idempotency_key: Some("mine-1".into()),
            },
        )
        .unwrap();
    let ping = pair.session.ping().unwrap();
    pair.drive();
    pair.drop_transport();
    assert_eq!(
        outcomes(&pair, bare),
        vec![Event::RequestFailed {
            id: bare,
            error: RequestError::ConnectionLost
        }]
    );
    assert_eq!(
        outcomes(&pair, ping),
        vec![Event::RequestFailed {
            id: ping,
            error: RequestError::ConnectionLost
        }]
    );
    // A caller's key makes the retry safe even with auto idempotency off.
    assert!(outcomes(&pair, keyed).is_empty());
    pair.server.swallow.clear();
    pair.reconnect_within(ms(200));
    pair.drive();
    assert!(matches!(
        outcomes(&pair, keyed)[..],
        [Event::Published { .. }]
    ));
    assert_eq!(
        keys(&pair),
        vec![None, Some("mine-1".into()), Some("mine-1".into())]
    );
    assert_eq!(pair.server.stored("c").len(), 1);
}

#[test]
fn close_fails_pending_requests_and_stops_reconnecting() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("publish");
    let sent = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    pair.session.close();
    pair.drive();
    assert_eq!(
        outcomes(&pair, sent),
        vec![Event::RequestFailed {
            id: sent,
            error: RequestError::Closed
        }]
    );
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::Closed
        }
    )));
    assert_eq!(pair.actions.last().unwrap().1, Action::Close);
    assert!(pair.transport.is_none());
    assert!(pair.session.is_closed());
    assert_eq!(pair.session.poll_timeout(), None);
    let connects = pair.connects().len();
    pair.advance(Duration::from_secs(120));
    assert_eq!(pair.connects().len(), connects, "no reconnect after close");
    assert_eq!(pair.session.ping(), Err(SessionError::Closed));
    pair.session.close();
    assert_eq!(pair.session.poll_action(), None, "close is idempotent");
}

#[test]
fn close_while_disconnected_fails_queued_requests() {
    let mut pair = Pair::new(config(true), 1);
    let id = pair.session.ping().unwrap();
    pair.session.close();
    pair.drive();
    assert_eq!(
        outcomes(&pair, id),
        vec![Event::RequestFailed {
            id,
            error: RequestError::Closed
        }]
    );
    pair.session.connect(Duration::ZERO);
    assert_eq!(
        pair.session.poll_action(),
        None,
        "a closed session never connects"
    );
}

#[test]
fn invalid_requests_are_refused_before_anything_is_sent() {
    let mut pair = Pair::connected(&["ws://a"]);
    let received = pair.server.received.len();
    assert!(matches!(
        pair.session.subscribe("bad name", Default::default()),
        Err(SessionError::Invalid(ProtocolError::BadChannel(_)))
    ));
    assert!(matches!(
        pair.session.unsubscribe(""),
        Err(SessionError::Invalid(ProtocolError::BadChannel(_)))
    ));
    assert!(matches!(
        pair.session
            .publish("c", Fields::new(), PublishOptions::default()),
        Err(SessionError::Invalid(ProtocolError::InvalidFrame { .. }))
    ));
    let zero = PublishOptions {
        maxlen: Some(0),
        idempotency_key: None,
    };
    assert!(pair.session.publish("c", body(1), zero).is_err());
    let long_key = PublishOptions {
        maxlen: None,
        idempotency_key: Some("k".repeat(201)),
    };
    assert!(pair.session.publish("c", body(1), long_key).is_err());
    pair.drive();
    assert_eq!(pair.server.received.len(), received);
    assert_eq!(pair.session.pending_requests(), 0);
    // Refused commands use no id.
    assert_eq!(pair.session.ping().unwrap(), RequestId(2));
}

#[test]
fn too_many_pending_requests_is_backpressure() {
    let mut c = Config::new(["ws://a"]);
    c.max_pending = 3;
    let mut pair = Pair::new(c, 1);
    for _ in 0..3 {
        pair.session.ping().unwrap();
    }
    assert_eq!(
        pair.session.ping(),
        Err(SessionError::Backpressure { limit: 3 })
    );
    pair.start();
    assert_eq!(pair.session.pending_requests(), 0);
    pair.session.ping().unwrap();
}

#[test]
fn server_errors_with_and_without_id() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("publish");
    let id = pair
        .session
        .publish("c", body(1), PublishOptions::default())
        .unwrap();
    pair.drive();
    pair.take_events();
    for frame in [
        ServerFrame::Error {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
        },
        ServerFrame::Error {
            id: Some(999),
            code: ErrorCode::Internal,
            message: "unknown id".into(),
        },
        ServerFrame::Pong { id: id.get() },
        ServerFrame::Error {
            id: Some(id.get()),
            code: ErrorCode::Unavailable,
            message: "redis down".into(),
        },
    ] {
        pair.server.outbox.push_back(frame);
    }
    pair.drive();
    assert_eq!(
        pair.take_events(),
        vec![
            Event::ServerError {
                code: ErrorCode::RateLimited,
                message: "slow down".into()
            },
            Event::RequestFailed {
                id,
                error: RequestError::Server {
                    code: ErrorCode::Unavailable,
                    message: "redis down".into()
                }
            },
        ]
    );
}

/// Asserts the request's one outcome is a timeout.
fn assert_timed_out(pair: &Pair, id: RequestId) {
    assert_eq!(
        outcomes(pair, id),
        vec![Event::RequestFailed {
            id,
            error: RequestError::Timeout
        }]
    );
}
