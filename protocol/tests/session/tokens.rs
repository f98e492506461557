//! Short-lived tokens: the session asks for a new token before the current one ends, switches
//! the open connection to it without a reconnect, and handles a refused refresh like any lost
//! connection (reconnect with the newest token, resume from every position).

use std::time::Duration;

use redistribute_protocol::session::{Action, Config, DisconnectReason, Event};
use redistribute_protocol::{ClientFrame, ErrorCode, Offset};

use crate::harness::{body, ms, Pair};

const LIFETIME: Duration = Duration::from_secs(10);

/// A pair connected with token `t0`, which the server requires.
fn connected_with_token() -> Pair {
    let mut config = Config::new(["ws://a"]);
    config.token = Some("t0".into());
    let mut pair = Pair::new(config, 3);
    pair.server.token = Some("t0".into());
    pair.start();
    assert!(pair.session.is_connected());
    pair
}

/// The times at which the session asked for a new token.
fn refresh_asks(pair: &Pair) -> Vec<Duration> {
    pair.actions
        .iter()
        .filter(|(_, a)| *a == Action::RefreshToken)
        .map(|(at, _)| *at)
        .collect()
}

fn connects(pair: &Pair) -> Vec<Option<String>> {
    pair.server
        .received_of("connect")
        .into_iter()
        .map(|f| match f {
            ClientFrame::Connect { token, .. } => token,
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn a_stream_outlives_many_token_lifetimes_without_a_reconnect() {
    let mut pair = connected_with_token();
    pair.session
        .refresh_token(pair.now, "t0".into(), Some(LIFETIME));
    pair.drive();
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    let mut published = Vec::new();
    let mut given = pair.now;
    for n in 1..=10u64 {
        // Messages flow all through the token's life, until the session asks for the next.
        while refresh_asks(&pair).len() < n as usize {
            assert!(
                pair.now < given + LIFETIME,
                "no ask within the token's lifetime"
            );
            pair.advance(ms(500));
            published.push(pair.server.append("c", body(n)));
            pair.drive();
        }
        // A tenth of the lifetime (1 s) before its end.
        let asked = *refresh_asks(&pair).last().unwrap();
        assert_eq!(asked, given + LIFETIME - Duration::from_secs(1));
        let token = format!("t{n}");
        pair.server.token = Some(token.clone());
        pair.session.refresh_token(pair.now, token, Some(LIFETIME));
        given = pair.now;
        pair.drive();
    }
    let events = pair.take_events();
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Connected { .. }))
            .count(),
        1,
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::Disconnected { .. } | Event::ConnectFailed { .. } | Event::RequestFailed { .. }
        )),
        "{events:?}"
    );
    let delivered: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Messages { messages, .. } => Some(messages.iter().map(|m| m.offset)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(delivered, published, "every message once, in order");
    let sent = connects(&pair);
    assert_eq!(sent.len(), 12, "{sent:?}");
    assert_eq!(sent.last().unwrap().as_deref(), Some("t10"));
    assert!(pair.session.is_connected());
}

#[test]
fn a_token_given_while_connecting_is_used_by_the_handshake() {
    let mut config = Config::new(["ws://a"]);
    config.token = Some("stale".into());
    let mut pair = Pair::new(config, 4);
    pair.server.token = Some("fresh".into());
    pair.server.down.insert("ws://a".into());
    pair.start();
    // The first attempt fails; while backing off the driver obtains a fresh token.
    assert!(!pair.session.is_connected());
    pair.session
        .refresh_token(pair.now, "fresh".into(), Some(LIFETIME));
    pair.server.down.clear();
    pair.reconnect_within(Duration::from_secs(5));
    assert_eq!(connects(&pair), vec![Some("fresh".to_owned())]);
    // No refresh frame on top of the handshake.
    pair.advance(ms(100));
    assert_eq!(connects(&pair).len(), 1);
}

#[test]
fn without_a_lifetime_nothing_is_asked() {
    let mut pair = connected_with_token();
    pair.session.refresh_token(pair.now, "t0".into(), None);
    pair.advance(Duration::from_secs(3600));
    assert!(refresh_asks(&pair).is_empty());
    assert!(pair.session.is_connected());
}

#[test]
fn a_refused_refresh_reconnects_with_the_newest_token_and_resumes() {
    let mut pair = connected_with_token();
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    let first = pair.server.append("c", body(1));
    pair.drive();
    // The server does not take `t1` on the live connection…
    pair.session
        .refresh_token(pair.now, "t1".into(), Some(LIFETIME));
    pair.drive();
    let events = pair.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Disconnected {
                reason: DisconnectReason::Rejected {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            }
        )),
        "{events:?}"
    );
    assert_eq!(pair.actions.last().unwrap().1, Action::Close);
    // …published while away, and the server now takes `t1`.
    let second = pair.server.append("c", body(2));
    pair.server.token = Some("t1".into());
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    assert_eq!(connects(&pair).last().unwrap().as_deref(), Some("t1"));
    let delivered: Vec<_> = pair
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Messages { messages, .. } => Some(messages.iter().map(|m| m.offset)),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(delivered, vec![second], "resumed after {first}");
}

#[test]
fn an_unanswered_refresh_ends_the_connection_after_the_request_timeout() {
    let mut pair = connected_with_token();
    pair.server.swallow.insert("connect");
    pair.session
        .refresh_token(pair.now, "t0".into(), Some(LIFETIME));
    pair.advance(Duration::from_secs(11));
    let events = pair.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Disconnected {
                reason: DisconnectReason::Timeout
            }
        )),
        "{events:?}"
    );
}
