//! "No silent loss": frames the session cannot decode are never skipped, and transient errors
//! never end a subscription.

use std::time::Duration;

use redistribute_protocol::session::{Action, Config, DisconnectReason, Event, RequestError};
use redistribute_protocol::{decode_server, ClientFrame, ErrorCode, Offset, StreamId};

use crate::harness::{body, ms, Pair};

/// A `messages` frame of `channel` whose one message holds a value nested `depth` arrays deep.
fn nested_messages(channel: &str, offset: StreamId, depth: usize) -> String {
    let value = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    format!(
        r#"{{"type":"messages","channel":"{channel}","messages":[{{"offset":"{offset}","fields":{{"v":{value}}}}}]}}"#
    )
}

/// The deepest `fields` value nesting the decoder accepts.
fn deepest_decodable() -> usize {
    let at = StreamId::new(1, 0);
    (1..1000)
        .take_while(|&d| decode_server(&nested_messages("c", at, d)).is_ok())
        .last()
        .expect("shallow values decode")
}

/// The `subscribe` frames sent for a channel, as `(id, offset)`.
fn subscribes(pair: &Pair, channel: &str) -> Vec<(u64, Option<Offset>)> {
    pair.server
        .received_of("subscribe")
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Subscribe {
                id,
                channel: c,
                offset,
                ..
            } if c == channel => Some((id, offset)),
            _ => None,
        })
        .collect()
}

fn lost(pair: &Pair) -> Vec<(String, RequestError)> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SubscriptionLost { channel, error } => Some((channel.clone(), error.clone())),
            _ => None,
        })
        .collect()
}

fn retries(pair: &Pair, channel: &str) -> Vec<u32> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SubscribeRetrying {
                channel: c,
                attempt,
                ..
            } if c == channel => Some(*attempt),
            _ => None,
        })
        .collect()
}

/// A `messages` frame too deep to decode ends that channel's subscription with an error that
/// names the last delivered offset; the channel's later messages are not delivered past it,
/// the server is told to stop, and other channels keep flowing. At the decoder's limit the
/// frame is delivered (and the server's cap of 64 levels inside `fields` is well within it).
#[test]
fn an_undecodable_frame_ends_its_channel_at_the_last_delivered_offset() {
    let limit = deepest_decodable();
    assert!(
        limit >= 64,
        "the decoder must accept what the server may send: {limit}"
    );
    for (depth, decodable) in [
        (64, true),
        (limit, true),
        (limit + 1, false),
        (1000, false),
        (100_000, false),
    ] {
        let mut pair = Pair::connected(&["ws://a"]);
        pair.session.subscribe("a", Offset::Latest).unwrap();
        pair.session.subscribe("b", Offset::Latest).unwrap();
        pair.drive();
        let a1 = pair.server.append("a", body(1));
        let b1 = pair.server.append("b", body(1));
        pair.drive();

        let deep = StreamId::new(a1.ms + 1, 0);
        pair.server.raw.push_back(nested_messages("a", deep, depth));
        pair.drive();
        let a2 = pair.server.append("a", body(2));
        let b2 = pair.server.append("b", body(2));
        pair.drive();

        assert_eq!(pair.delivered("b"), vec![b1, b2], "depth {depth}");
        assert!(pair.session.is_connected(), "depth {depth}");
        if decodable {
            assert_eq!(pair.delivered("a"), vec![a1, deep, a2], "depth {depth}");
            assert!(lost(&pair).is_empty(), "depth {depth}");
            continue;
        }
        assert_eq!(pair.delivered("a"), vec![a1], "depth {depth}");
        let lost = lost(&pair);
        assert_eq!(lost.len(), 1, "depth {depth}: {lost:?}");
        assert_eq!(lost[0].0, "a");
        assert!(
            matches!(&lost[0].1, RequestError::Undecodable { after: Some(at), .. } if *at == a1),
            "depth {depth}: {:?}",
            lost[0].1
        );
        assert!(lost[0].1.to_string().contains(&a1.to_string()));
        assert_eq!(pair.session.subscriptions().collect::<Vec<_>>(), vec!["b"]);
        let unsubscribed = pair.server.received_of("unsubscribe");
        assert!(
            matches!(&unsubscribed[..], [ClientFrame::Unsubscribe { channel, .. }] if channel == "a"),
            "{unsubscribed:?}"
        );
        // A reconnect does not bring the channel back past the loss.
        pair.drop_transport();
        pair.reconnect_within(ms(500));
        pair.server.append("a", body(3));
        pair.drive();
        assert_eq!(pair.delivered("a"), vec![a1], "depth {depth}");
    }
}

/// Undecodable frames of a channel being subscribed (its `subscribed` reply) fail the caller's
/// subscribe with the error; a `gap` frame that does not parse ends a live subscription.
#[test]
fn undecodable_subscribed_and_gap_frames_are_attributed_to_their_channel() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("subscribe");
    let id = pair.session.subscribe("s", Offset::Earliest).unwrap();
    pair.drive();
    let (sent_id, _) = subscribes(&pair, "s")[0];
    pair.server.raw.push_back(format!(
        r#"{{"type":"subscribed","id":{sent_id},"channel":"s","offset":"nope","truncated":false}}"#
    ));
    pair.drive();
    let outcome: Vec<_> = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::RequestFailed { id: i, .. } | Event::Subscribed { id: i, .. } if *i == id))
        .collect();
    assert!(
        matches!(
            outcome[..],
            [(
                _,
                Event::RequestFailed {
                    error: RequestError::Undecodable { after: None, .. },
                    ..
                }
            )]
        ),
        "{outcome:?}"
    );
    assert_eq!(pair.session.subscription_count(), 0);

    pair.server.swallow.clear();
    pair.session.subscribe("g", Offset::Latest).unwrap();
    pair.drive();
    let tip = pair.server.append("g", body(1));
    pair.drive();
    pair.server
        .raw
        .push_back(r#"{"channel":"g","type":"gap","from":"x","to":"1-0"}"#.into());
    pair.drive();
    assert!(
        matches!(&lost(&pair)[..], [(c, RequestError::Undecodable { after: Some(at), .. })] if c == "g" && *at == tip),
        "{:?}",
        lost(&pair)
    );
    assert!(pair.session.is_connected());
}

/// Text that belongs to no channel (not JSON, an unknown type, a reply that does not parse, a
/// frame too large for the driver) ends the connection with a `BadFrame` reason; the session
/// resumes from unchanged positions, so nothing is lost or repeated.
#[test]
fn unattributable_garbage_reconnects_and_resumes_from_unchanged_positions() {
    for garbage in [
        "not json".to_owned(),
        r#"{"type":"nope","channel":"a"}"#.to_owned(),
        r#"{"type":"pong","id":"x"}"#.to_owned(),
        format!(r#"{{"type":"published","id":1,"v":{}}}"#, "[".repeat(300)),
        String::new(),
    ] {
        let mut pair = Pair::connected(&["ws://a"]);
        pair.session.subscribe("a", Offset::Latest).unwrap();
        pair.drive();
        let a1 = pair.server.append("a", body(1));
        pair.drive();
        pair.server.raw.push_back(garbage.clone());
        pair.drive();
        assert!(
            pair.events.iter().any(|(_, e)| matches!(
                e,
                Event::Disconnected {
                    reason: DisconnectReason::BadFrame { .. }
                }
            )),
            "{garbage:?}"
        );
        assert!(pair.actions.iter().any(|(_, a)| *a == Action::Close));
        assert_eq!(pair.session.offset("a"), Some(a1));
        let a2 = pair.server.append("a", body(2));
        pair.reconnect_within(ms(500));
        pair.drive();
        let a3 = pair.server.append("a", body(3));
        pair.drive();
        assert_eq!(pair.delivered("a"), vec![a1, a2, a3], "{garbage:?}");
        assert_eq!(
            subscribes(&pair, "a").last().unwrap().1,
            Some(Offset::Id(a1))
        );
        assert!(lost(&pair).is_empty());
    }

    // The same for a frame the driver could not receive at all.
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session
        .handle_bad_frame("frame above 16 MiB", pair.now);
    pair.drive();
    assert!(pair.events.iter().any(|(_, e)| matches!(e,
        Event::Disconnected { reason: DisconnectReason::BadFrame { reason } } if reason.contains("16 MiB"))));
}

/// Garbage that comes again right after every resume cannot cause a tight reconnect loop: the
/// delay grows (equal jitter, at least half the bound) to `backoff_max`, although every
/// connection answers requests. A connection that lasted `backoff_max` starts over.
#[test]
fn repeated_garbage_backs_off_up_to_the_maximum() {
    let mut config = Config::new(["ws://a"]);
    config.backoff_initial = ms(100);
    config.backoff_max = ms(3200);
    let mut pair = Pair::new(config, 11);
    pair.start();
    pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.drive();
    for _ in 0..10 {
        pair.server.raw.push_back("garbage".into());
        pair.drive();
        pair.reconnect_within(ms(10_000));
    }
    let times: Vec<Duration> = pair.connects().iter().map(|(t, _)| *t).collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps.len(), 10);
    for (k, gap) in gaps.iter().enumerate() {
        let bound = ms(100 * (1 << k.min(5)));
        assert!(
            *gap >= bound / 2 && *gap <= bound,
            "reconnect {k} after {gap:?}, bound {bound:?}: {gaps:?}"
        );
    }
    // Healthy for a full `backoff_max`: the next bad frame starts from the first bound again.
    pair.advance(ms(3200));
    pair.server.raw.push_back("garbage".into());
    pair.drive();
    let before = pair.now;
    pair.reconnect_within(ms(10_000));
    assert!(pair.now - before <= ms(100), "{:?}", pair.now - before);
}

/// A re-subscribe after a reconnect answered with a transient error N times, then accepted:
/// the subscription stays, each failure is reported and retried with backoff from the same
/// offset, and delivery resumes after the last delivered message, without loss or duplicate.
#[test]
fn transient_resubscribe_failures_are_retried_until_subscribed() {
    for code in [
        ErrorCode::Unavailable,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
    ] {
        for failures in [1usize, 3, 30] {
            let mut pair = Pair::connected(&["ws://a"]);
            pair.session.subscribe("a", Offset::Latest).unwrap();
            pair.drive();
            let a1 = pair.server.append("a", body(1));
            pair.drive();
            pair.drop_transport();
            pair.server.refuse.insert("a".into(), (code, failures));
            let a2 = pair.server.append("a", body(2));
            pair.reconnect_within(ms(500));
            pair.advance(Duration::from_secs(20 * failures as u64));
            let a3 = pair.server.append("a", body(3));
            pair.drive();

            let label = format!("{code} x{failures}");
            assert_eq!(pair.delivered("a"), vec![a1, a2, a3], "{label}");
            assert!(lost(&pair).is_empty(), "{label}");
            let attempts = retries(&pair, "a");
            assert_eq!(
                attempts,
                (1..=failures as u32).collect::<Vec<_>>(),
                "{label}"
            );
            let sent = subscribes(&pair, "a");
            assert_eq!(sent.len(), 1 + failures + 1, "{label}");
            assert!(
                sent[1..].iter().all(|(_, o)| *o == Some(Offset::Id(a1))),
                "{label}: {sent:?}"
            );
            assert_eq!(pair.session.offset("a"), Some(a3));
            assert!(pair.session.is_connected(), "{label}");
        }
    }
}

/// The retry delays grow per channel (full jitter under a doubling bound, capped at
/// `backoff_max`), so a server answering `unavailable` is not hammered.
#[test]
fn subscribe_retry_delays_follow_the_backoff() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.drive();
    pair.drop_transport();
    pair.server
        .refuse
        .insert("a".into(), (ErrorCode::Unavailable, 12));
    pair.reconnect_within(ms(500));
    pair.advance(Duration::from_secs(120));
    let delays: Vec<Duration> = pair
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SubscribeRetrying { retry_in, .. } => Some(*retry_in),
            _ => None,
        })
        .collect();
    assert_eq!(delays.len(), 12);
    for (k, d) in delays.iter().enumerate() {
        let bound = ms(100u64 << k.min(10)).min(Duration::from_secs(10));
        assert!(*d <= bound, "retry {k} after {d:?} > {bound:?}");
    }
    assert!(
        delays.iter().sum::<Duration>() > Duration::from_secs(5),
        "{delays:?}"
    );
    assert_eq!(pair.session.subscription_count(), 1);
}

/// Permanent errors end a subscription (reported), on a re-subscribe and on the caller's own.
#[test]
fn permanent_errors_end_the_subscription() {
    for code in [
        ErrorCode::Forbidden,
        ErrorCode::BadRequest,
        ErrorCode::NotFound,
        ErrorCode::Unauthorized,
        ErrorCode::TooLarge,
    ] {
        let mut pair = Pair::connected(&["ws://a"]);
        pair.session.subscribe("a", Offset::Latest).unwrap();
        pair.drive();
        pair.drop_transport();
        pair.server.refuse.insert("a".into(), (code, 1));
        pair.reconnect_within(ms(500));
        pair.advance(Duration::from_secs(30));
        assert!(
            matches!(&lost(&pair)[..], [(c, RequestError::Server { code: got, .. })] if c == "a" && *got == code),
            "{code}: {:?}",
            lost(&pair)
        );
        assert_eq!(pair.session.subscription_count(), 0, "{code}");
        assert!(retries(&pair, "a").is_empty(), "{code}");
        assert_eq!(subscribes(&pair, "a").len(), 2, "{code}");

        pair.server.refuse.insert("b".into(), (code, 1));
        let id = pair.session.subscribe("b", Offset::Latest).unwrap();
        pair.advance(Duration::from_secs(30));
        assert!(pair.events.iter().any(|(_, e)| matches!(e,
            Event::RequestFailed { id: i, error: RequestError::Server { code: got, .. } } if *i == id && *got == code)));
        assert_eq!(pair.session.subscription_count(), 0, "{code}");
    }
}

/// The caller's own subscribe: retried on transient errors by default (one outcome, the
/// success), failed at once with `retry_subscribe` off, and bounded by its request timeout.
#[test]
fn the_callers_subscribe_is_retried_within_its_request_timeout() {
    let outcomes = |pair: &Pair, id| -> Vec<Event> {
        pair.events
            .iter()
            .filter(|(_, e)| {
                matches!(e,
                Event::RequestFailed { id: i, .. } | Event::Subscribed { id: i, .. } if *i == id)
            })
            .map(|(_, e)| e.clone())
            .collect()
    };

    let mut pair = Pair::connected(&["ws://a"]);
    pair.server
        .refuse
        .insert("a".into(), (ErrorCode::Unavailable, 3));
    let id = pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.advance(Duration::from_secs(5));
    let got = outcomes(&pair, id);
    assert!(
        matches!(got[..], [Event::Subscribed { resumed: false, .. }]),
        "{got:?}"
    );
    assert_eq!(retries(&pair, "a"), vec![1, 2, 3]);

    let mut config = Config::new(["ws://a"]);
    config.retry_subscribe = false;
    let mut pair = Pair::new(config, 3);
    pair.start();
    pair.server
        .refuse
        .insert("a".into(), (ErrorCode::Unavailable, 1));
    let id = pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.advance(Duration::from_secs(5));
    let got = outcomes(&pair, id);
    assert!(
        matches!(
            &got[..],
            [Event::RequestFailed {
                error: RequestError::Server {
                    code: ErrorCode::Unavailable,
                    ..
                },
                ..
            }]
        ),
        "{got:?}"
    );
    assert_eq!(pair.session.subscription_count(), 0);

    let mut pair = Pair::connected(&["ws://a"]);
    pair.server
        .refuse
        .insert("a".into(), (ErrorCode::Unavailable, usize::MAX));
    let id = pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.advance(Duration::from_secs(60));
    assert_eq!(
        outcomes(&pair, id),
        vec![Event::RequestFailed {
            id,
            error: RequestError::Timeout
        }]
    );
    assert_eq!(pair.session.subscription_count(), 0);
}

/// `subscribe_retry_limit` caps consecutive transient failures: at the limit the subscription
/// survives, one failure past it ends it with the last error.
#[test]
fn the_retry_limit_caps_consecutive_transient_failures() {
    for (limit, failures, survives) in [(3, 3, true), (3, 4, false), (0, 1, false)] {
        let mut config = Config::new(["ws://a"]);
        config.subscribe_retry_limit = Some(limit);
        let mut pair = Pair::new(config, 5);
        pair.start();
        pair.session.subscribe("a", Offset::Latest).unwrap();
        pair.drive();
        pair.drop_transport();
        pair.server
            .refuse
            .insert("a".into(), (ErrorCode::Unavailable, failures));
        pair.reconnect_within(ms(500));
        pair.advance(Duration::from_secs(60));
        let label = format!("limit {limit}, {failures} failures");
        assert_eq!(pair.session.subscription_count() == 1, survives, "{label}");
        assert_eq!(lost(&pair).len(), usize::from(!survives), "{label}");
    }
}
