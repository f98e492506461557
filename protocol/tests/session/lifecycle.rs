//! Reconnect timing the driver can tune or cut short: the jitter of backoff delays,
//! `retry_now` (a browser's `online` / `visibilitychange`), and idle probes that notice a
//! socket that died without a close.

use std::time::Duration;

use redistribute_protocol::session::{Action, Config, DisconnectReason, Event};
use redistribute_protocol::{ClientFrame, Offset};

use crate::harness::{body, ms, Pair};

/// A pair whose every target refuses connections.
fn down_pair(config: Config, seed: u64) -> Pair {
    let targets = config.targets.clone();
    let mut pair = Pair::new(config, seed);
    for t in targets {
        pair.server.down.insert(t);
    }
    pair
}

/// The delays between consecutive connection attempts.
fn delays(pair: &Pair) -> Vec<Duration> {
    pair.connects()
        .windows(2)
        .map(|w| w[1].0 - w[0].0)
        .collect()
}

#[test]
fn every_delay_stays_within_its_jittered_bounds() {
    for jitter in [0.0, 0.2, 0.5, 0.9, 1.0] {
        for seed in [1, 2, 3] {
            let mut config = Config::new(["ws://a", "ws://b"]);
            config.backoff_initial = ms(50);
            config.backoff_max = Duration::from_secs(3);
            config.backoff_jitter = jitter;
            let mut pair = down_pair(config, seed);
            pair.start();
            pair.advance(Duration::from_secs(120));
            let delays = delays(&pair);
            assert!(delays.len() > 30, "only {} attempts", delays.len());
            for (n, d) in delays.iter().enumerate() {
                let ceiling = ms(50)
                    .checked_mul(1 << n.min(20))
                    .unwrap()
                    .min(Duration::from_secs(3));
                let floor = ceiling.mul_f64(1.0 - jitter);
                assert!(
                    *d <= ceiling && *d + Duration::from_nanos(1) >= floor,
                    "jitter {jitter}, seed {seed}: delay {n} is {d:?}, outside [{floor:?}, {ceiling:?}]"
                );
            }
            let late = &delays[delays.len() - 10..];
            let mut distinct = late.to_vec();
            distinct.sort();
            distinct.dedup();
            if jitter == 0.0 {
                assert_eq!(
                    distinct,
                    vec![Duration::from_secs(3)],
                    "no jitter: {late:?}"
                );
            } else {
                assert!(distinct.len() > 5, "jitter {jitter} not jittered: {late:?}");
            }
        }
    }
}

#[test]
fn subscribe_retries_follow_the_jitter_setting_too() {
    let mut config = Config::new(["ws://a"]);
    config.backoff_jitter = 0.0;
    let mut pair = Pair::new(config, 5);
    pair.start();
    pair.server.refuse.insert(
        "c".into(),
        (redistribute_protocol::ErrorCode::Unavailable, 3),
    );
    pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.advance(Duration::from_secs(5));
    let sent: Vec<Duration> = pair
        .server
        .received
        .iter()
        .filter(|(_, f)| matches!(f, ClientFrame::Subscribe { .. }))
        .map(|_| Duration::ZERO)
        .collect();
    assert_eq!(sent.len(), 4, "three refusals, then success");
    let retrying: Vec<Duration> = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::SubscribeRetrying { .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(retrying.len(), 3);
    // Without jitter, each retry waits exactly its bound: 100 ms, 200 ms, 400 ms.
    let subscribed_at = pair
        .events
        .iter()
        .find(|(_, e)| matches!(e, Event::Subscribed { .. }))
        .map(|(t, _)| *t)
        .expect("subscribed");
    assert_eq!(subscribed_at - retrying[0], ms(700));
}

#[test]
fn retry_now_cuts_the_backoff_short_and_nothing_else() {
    let mut config = Config::new(["ws://a"]);
    config.backoff_initial = Duration::from_secs(30);
    config.backoff_max = Duration::from_secs(60);
    config.backoff_jitter = 0.0;
    let mut pair = down_pair(config, 3);

    // Not started: nothing happens.
    pair.session.retry_now(pair.now);
    pair.drive();
    assert!(pair.connects().is_empty());

    pair.start();
    assert_eq!(pair.connects().len(), 1);
    pair.advance(Duration::from_secs(1));
    assert_eq!(pair.connects().len(), 1, "waiting out 30 s");

    // Still down: one attempt at once, and the next delay is the next bound (60 s).
    pair.session.retry_now(pair.now);
    pair.drive();
    assert_eq!(pair.connects().len(), 2);
    assert_eq!(pair.connects()[1].0, Duration::from_secs(1));
    pair.session.retry_now(pair.now);
    pair.drive();
    assert_eq!(pair.connects().len(), 3, "one attempt per call while down");
    assert_eq!(
        pair.session.poll_timeout(),
        Some(pair.now + Duration::from_secs(60)),
        "failures still count"
    );

    // Back up: the next call connects.
    pair.server.down.clear();
    pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.advance(Duration::from_secs(2));
    assert!(!pair.session.is_connected());
    pair.session.retry_now(pair.now);
    pair.drive();
    assert!(pair.session.is_connected());
    let attempts = pair.connects().len();

    // Connected: no second connection, however often it is called.
    for _ in 0..5 {
        pair.session.retry_now(pair.now);
        pair.drive();
    }
    assert_eq!(pair.connects().len(), attempts);
    assert!(pair.session.is_connected());

    // While a transport is being opened: nothing either.
    pair.drop_transport();
    pair.server.down.insert("ws://a".into());
    let before = pair.connects().len();
    pair.session.retry_now(pair.now);
    pair.session.retry_now(pair.now);
    pair.drive();
    assert_eq!(pair.connects().len(), before + 1);

    // Closed: nothing.
    pair.session.close();
    pair.drive();
    let before = pair.connects().len();
    pair.session.retry_now(pair.now);
    pair.drive();
    assert_eq!(pair.connects().len(), before);
    assert!(pair.session.poll_action().is_none());
}

#[test]
fn retry_now_during_an_attempt_keeps_a_single_transport() {
    // The harness asserts on every `Connect` that no transport is open: call `retry_now`
    // between every step of a connection's life.
    let mut config = Config::new(["ws://a"]);
    config.token = Some("t".into());
    let mut pair = Pair::new(config, 8);
    pair.server.token = Some("t".into());
    pair.session.connect(pair.now);
    for _ in 0..20 {
        pair.session.retry_now(pair.now);
        if !pair.pump_io() {
            break;
        }
    }
    pair.drive();
    assert!(pair.session.is_connected());
    assert_eq!(pair.connects().len(), 1);
}

fn probing_pair(interval: Duration, timeout: Duration) -> Pair {
    let mut config = Config::new(["ws://a"]);
    config.ping_interval = Some(interval);
    config.request_timeout = timeout;
    let mut pair = Pair::new(config, 4);
    pair.start();
    assert!(pair.session.is_connected());
    pair
}

fn pings(pair: &Pair) -> usize {
    pair.server.received_of("ping").len()
}

#[test]
fn an_idle_live_connection_is_probed_and_kept() {
    let mut pair = probing_pair(Duration::from_secs(25), Duration::from_secs(10));
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.advance(Duration::from_secs(600));
    assert!(pair.session.is_connected());
    assert_eq!(pair.connects().len(), 1);
    let n = pings(&pair);
    // One probe per 25 s of silence (the pong is the only frame): 600 / 25 = 24, give or
    // take the first probe of the connection.
    assert!((22..=26).contains(&n), "{n} probes in 600 s");
    assert!(pair
        .events
        .iter()
        .all(|(_, e)| !matches!(e, Event::Pong { .. } | Event::RequestFailed { .. })));
}

#[test]
fn frames_arriving_postpone_the_probe() {
    let mut pair = probing_pair(Duration::from_secs(25), Duration::from_secs(10));
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    let before = pings(&pair);
    for i in 0..30 {
        pair.advance(Duration::from_secs(20));
        pair.server.append("c", body(i));
        pair.drive();
    }
    assert_eq!(pings(&pair), before, "a busy connection needs no probe");
    assert_eq!(pair.delivered("c").len(), 30);
}

#[test]
fn a_silently_dead_connection_is_noticed_within_interval_plus_timeout() {
    let interval = Duration::from_secs(25);
    let timeout = Duration::from_secs(10);
    let mut pair = probing_pair(interval, timeout);
    pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.server.append("c", body(1));
    pair.drive();
    assert_eq!(pair.delivered("c").len(), 1);
    let last_frame = pair.now;

    // The socket dies without a close: nothing arrives any more, and what the client sends
    // is lost.
    pair.server.swallow.extend(["ping", "publish", "subscribe"]);
    pair.advance(interval + timeout + Duration::from_secs(1));
    let lost = pair
        .events
        .iter()
        .find(|(_, e)| {
            matches!(
                e,
                Event::Disconnected {
                    reason: DisconnectReason::Timeout
                }
            )
        })
        .map(|(t, _)| *t)
        .expect("the dead connection was noticed");
    assert!(
        lost > last_frame + interval,
        "noticed before a probe: {lost:?}"
    );
    assert!(
        lost <= last_frame + interval + timeout,
        "noticed at {lost:?}"
    );
    assert!(
        pair.actions
            .iter()
            .any(|(t, a)| *t == lost && *a == Action::Close),
        "the transport was closed"
    );

    // The network comes back: the client reconnects (again, if its re-subscribe on the
    // connection it opened meanwhile went unanswered) and resumes, missing nothing.
    pair.server.swallow.clear();
    pair.server.append("c", body(2));
    pair.advance(Duration::from_secs(30));
    assert!(pair.session.is_connected());
    let expected = pair.server.stored("c");
    assert_eq!(pair.delivered("c"), expected);
}

#[test]
fn without_ping_interval_an_idle_connection_sends_nothing() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    let before = pings(&pair);
    pair.advance(Duration::from_secs(600));
    assert_eq!(pings(&pair), before);
    assert!(pair.session.is_connected());
}
