//! Targets, failover and backoff, the `connect` handshake and its failures.

use std::time::Duration;

use redistribute_protocol::session::{Action, Config, DisconnectReason, Event};
use redistribute_protocol::{ClientFrame, ErrorCode, Offset};

use crate::harness::{ms, Pair};

fn down_pair(targets: &[&str], seed: u64) -> Pair {
    let mut pair = Pair::new(Config::new(targets.iter().copied()), seed);
    for t in targets {
        pair.server.down.insert(t.to_string());
    }
    pair
}

/// The delays between consecutive connection attempts.
fn delays(connects: &[(Duration, String)]) -> Vec<Duration> {
    connects.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[test]
fn fails_over_round_robin_with_growing_capped_jittered_backoff() {
    let mut pair = down_pair(&["ws://a", "ws://b", "ws://c"], 11);
    pair.start();
    pair.advance(Duration::from_secs(300));
    let connects = pair.connects();
    assert!(connects.len() > 30, "only {} attempts", connects.len());
    for (i, (_, target)) in connects.iter().enumerate() {
        assert_eq!(target, ["ws://a", "ws://b", "ws://c"][i % 3], "attempt {i}");
    }
    assert_eq!(
        connects[0].0,
        Duration::ZERO,
        "the first attempt is immediate"
    );

    let delays = delays(&connects);
    for (n, d) in delays.iter().enumerate() {
        let ceiling = ms(100)
            .checked_mul(1 << n.min(20))
            .unwrap()
            .min(Duration::from_secs(10));
        assert!(*d <= ceiling, "delay {n} is {d:?}, above {ceiling:?}");
    }
    // Capped yet still large, and jittered rather than constant.
    let late = &delays[10..];
    assert!(late.iter().any(|d| *d > Duration::from_secs(5)), "{late:?}");
    let mut distinct = late.to_vec();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() > late.len() / 2, "not jittered: {late:?}");
    let early: Duration = delays[..3].iter().sum();
    let later: Duration = late[..3].iter().sum();
    assert!(
        later > early,
        "backoff did not grow: {early:?} then {later:?}"
    );

    // Every attempt failed visibly; nothing connected.
    let failed = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::ConnectFailed { .. }))
        .count();
    assert_eq!(failed, connects.len());
    assert!(!pair.session.is_connected());
}

#[test]
fn same_seed_same_schedule_other_seed_other_jitter() {
    let run = |seed| {
        let mut pair = down_pair(&["ws://a"], seed);
        pair.start();
        pair.advance(Duration::from_secs(60));
        delays(&pair.connects())
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

#[test]
fn backoff_resets_once_a_connection_proves_healthy() {
    let mut pair = down_pair(&["ws://a", "ws://b"], 3);
    pair.start();
    pair.advance(Duration::from_secs(30));
    assert!(pair.connects().len() >= 6);
    pair.server.down.remove("ws://b");
    pair.reconnect_within(Duration::from_secs(30));
    assert_eq!(pair.session.current_target(), "ws://b");
    // The liveness probe (nothing else to send) got its pong.
    assert_eq!(pair.server.received_of("ping").len(), 1);
    assert!(pair.events.iter().any(|(_, e)| matches!(e,
        Event::Connected { target } if target == "ws://b")));

    let before = pair.connects().len();
    let dropped_at = pair.now;
    pair.drop_transport();
    pair.advance(ms(300));
    let (at, target) = pair.connects()[before].clone();
    assert!(at - dropped_at <= ms(100), "waited {:?}", at - dropped_at);
    assert_eq!(target, "ws://a", "then the next target");
}

#[test]
fn an_unanswered_probe_abandons_the_connection() {
    let mut pair = Pair::new(Config::new(["ws://a"]), 4);
    pair.server.swallow.insert("ping");
    pair.start();
    // The probe is never answered: after the request timeout the session gives up on the
    // connection and backs off.
    pair.advance(Duration::from_secs(10));
    assert!(pair.actions.iter().any(|(_, a)| *a == Action::Close));
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::Timeout
        }
    )));
}

#[test]
fn sends_connect_first_on_every_connection() {
    let mut config = Config::new(["ws://a"]);
    config.token = Some("jwt".into());
    let mut pair = Pair::new(config, 1);
    pair.server.token = Some("jwt".into());
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.start();
    assert!(pair.session.is_connected());
    pair.drop_transport();
    pair.reconnect_within(ms(200));
    let kinds: Vec<&str> = pair
        .server
        .received
        .iter()
        .map(|(_, f)| crate::harness::kind(f))
        .collect();
    assert_eq!(kinds, ["connect", "subscribe", "connect", "subscribe"]);
    for (_, f) in &pair.server.received {
        if let ClientFrame::Connect { token, .. } = f {
            assert_eq!(token.as_deref(), Some("jwt"));
        }
    }
}

#[test]
fn waits_for_connected_before_other_frames() {
    let mut config = Config::new(["ws://a"]);
    config.token = Some("jwt".into());
    let mut pair = Pair::new(config, 1);
    pair.server.swallow.insert("connect");
    pair.session.ping().unwrap();
    pair.start();
    assert!(!pair.session.is_connected());
    assert_eq!(pair.server.received.len(), 1, "only connect went out");
    // The handshake times out after the request timeout.
    pair.advance(Duration::from_secs(10) - ms(1));
    assert!(!pair.actions.iter().any(|(_, a)| *a == Action::Close));
    pair.advance(ms(1));
    assert!(pair.actions.iter().any(|(_, a)| *a == Action::Close));
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::ConnectFailed {
            reason: DisconnectReason::Timeout,
            ..
        }
    )));
}

#[test]
fn a_rejected_token_fails_the_attempt_and_retries() {
    let mut config = Config::new(["ws://a"]);
    config.token = Some("old".into());
    let mut pair = Pair::new(config, 1);
    pair.server.token = Some("new".into());
    pair.start();
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::ConnectFailed {
            reason: DisconnectReason::Rejected {
                code: ErrorCode::Unauthorized,
                ..
            },
            ..
        }
    )));
    assert_eq!(pair.actions.last().unwrap().1, Action::Close);
    pair.session.set_token(Some("new".into()));
    pair.reconnect_within(Duration::from_secs(1));
    assert!(pair.session.is_connected());
}

#[test]
fn gives_up_on_a_transport_that_never_opens() {
    let mut pair = Pair::new(Config::new(["ws://a", "ws://b"]), 1);
    pair.session.connect(Duration::ZERO);
    // The driver opens nothing: the attempt times out and the session asks to close it.
    assert!(matches!(
        pair.session.poll_action(),
        Some(Action::Connect { .. })
    ));
    assert_eq!(pair.session.poll_timeout(), Some(Duration::from_secs(10)));
    pair.session.handle_timeout(Duration::from_secs(10));
    assert_eq!(pair.session.poll_action(), Some(Action::Close));
    // A late "closed" for the abandoned transport changes nothing.
    let timer = pair.session.poll_timeout();
    pair.session.handle_transport_closed(
        Duration::from_secs(10),
        DisconnectReason::transport(None, "late"),
    );
    assert_eq!(pair.session.poll_timeout(), timer);
    pair.session.handle_timeout(timer.unwrap());
    assert_eq!(
        pair.session.poll_action(),
        Some(Action::Connect {
            target: "ws://b".into()
        })
    );
}

#[test]
fn an_unanswered_resubscribe_abandons_the_connection() {
    let mut pair = Pair::connected(&["ws://a", "ws://b"]);
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    pair.drop_transport();
    pair.server.swallow.insert("subscribe");
    pair.reconnect_within(ms(200));
    pair.advance(Duration::from_secs(10));
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::Timeout
        }
    )));
    pair.server.swallow.clear();
    pair.reconnect_within(Duration::from_secs(1));
    pair.drive();
    assert_eq!(pair.session.subscription_count(), 1);
    assert!(pair
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Subscribed { resumed: true, .. })));
}
