//! Replacing and resuming subscriptions with [`Session::resubscribe`]: the new subscription
//! waits for the old one's `unsubscribed`, and nothing of the old one (a history replay, live
//! messages on the wire, a late reply) reaches it, across refusals, reconnects and repeated
//! calls.
//!
//! [`Session::resubscribe`]: redistribute_protocol::session::Session::resubscribe

use redistribute_protocol::session::{Config, DisconnectReason, Event, RequestError, RequestId};
use redistribute_protocol::{ClientFrame, ErrorCode, Offset, ServerFrame, StreamId};

use crate::harness::{body, kind, ms, offsets, Pair};

/// The `(type, offset)` of every `subscribe` and `unsubscribe` the server received for a
/// channel, in order.
fn wire(pair: &Pair, channel: &str) -> Vec<(&'static str, Option<Offset>)> {
    pair.server
        .received
        .iter()
        .filter_map(|(_, f)| match f {
            ClientFrame::Subscribe {
                channel: c, offset, ..
            } if c == channel => Some((kind(f), *offset)),
            ClientFrame::Unsubscribe { channel: c, .. } if c == channel => Some((kind(f), None)),
            _ => None,
        })
        .collect()
}

/// The outcome events of one request.
fn outcomes(pair: &Pair, id: RequestId) -> Vec<Event> {
    pair.events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| match e {
            Event::Subscribed { id: i, .. }
            | Event::RequestFailed { id: i, .. }
            | Event::Unsubscribed { id: i, .. } => *i == id,
            _ => false,
        })
        .cloned()
        .collect()
}

/// Whether `id` succeeded with `subscribed` (as the caller's request, not a resume).
fn subscribed_at(pair: &Pair, id: RequestId) -> Option<StreamId> {
    match outcomes(pair, id).as_slice() {
        [Event::Subscribed {
            offset,
            resumed: false,
            ..
        }] => Some(*offset),
        other => panic!("request {id}: {other:?}"),
    }
}

fn cancelled(pair: &Pair, id: RequestId) -> bool {
    matches!(
        outcomes(pair, id).as_slice(),
        [Event::RequestFailed {
            error: RequestError::Cancelled,
            ..
        }]
    )
}

/// A connected pair with `n` entries stored in `chat`.
fn with_history(n: u64) -> (Pair, Vec<StreamId>) {
    let mut pair = Pair::connected(&["ws://a"]);
    let stored = (0..n)
        .map(|i| pair.server.append("chat", body(i)))
        .collect();
    (pair, stored)
}

#[test]
fn with_nothing_standing_it_is_a_plain_subscribe() {
    let (mut pair, stored) = with_history(3);
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.drive();
    assert_eq!(
        wire(&pair, "chat"),
        [("subscribe", Some(Offset::Id(stored[0])))]
    );
    assert_eq!(subscribed_at(&pair, id), Some(stored[0]));
    assert_eq!(pair.delivered("chat"), stored[1..]);

    // While disconnected nothing stands either: it goes out on the next connection.
    let mut pair = Pair::new(Config::new(["ws://a"]), 3);
    pair.server.streams = std::mem::take(&mut with_history(2).0.server.streams);
    let id = pair.session.resubscribe("chat", Offset::Earliest).unwrap();
    pair.start();
    assert_eq!(wire(&pair, "chat"), [("subscribe", Some(Offset::Earliest))]);
    assert!(subscribed_at(&pair, id).is_some());
    assert_eq!(pair.delivered("chat").len(), 2);
}

#[test]
fn replacing_during_a_history_replay_starts_clean_at_the_new_offset() {
    let (mut pair, stored) = with_history(6);
    pair.hold = true;
    let first = pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    // The server has answered and replayed all six; none of it has arrived yet.
    let second = pair
        .session
        .resubscribe("chat", Offset::Id(stored[3]))
        .unwrap();
    pair.drive();
    assert_eq!(
        wire(&pair, "chat"),
        [("subscribe", Some(Offset::Earliest)), ("unsubscribe", None)],
        "the new subscribe waits for the unsubscribe's reply"
    );
    assert_eq!(pair.session.offset("chat"), Some(stored[3]));
    pair.hold = false;
    pair.drive();
    assert!(cancelled(&pair, first));
    assert_eq!(subscribed_at(&pair, second), Some(stored[3]));
    assert_eq!(
        wire(&pair, "chat")[2..],
        [("subscribe", Some(Offset::Id(stored[3])))]
    );
    assert_eq!(pair.delivered("chat"), stored[4..]);
    let live = pair.server.append("chat", body(9));
    pair.drive();
    assert_eq!(pair.delivered("chat").last(), Some(&live));
    assert_eq!(pair.delivered("chat").len(), 3);
}

#[test]
fn messages_of_the_old_subscription_still_on_the_wire_never_reach_the_new_one() {
    let (mut pair, stored) = with_history(2);
    let first = pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    assert_eq!(subscribed_at(&pair, first), Some(stored[1]));
    pair.hold = true;
    let live: Vec<_> = (0..3)
        .map(|i| pair.server.append("chat", body(i)))
        .collect();
    let resume = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.drive();
    // A late frame of the old subscription after its `unsubscribed` (the protocol allows one)
    // and a gap of it: both arrive before the new subscribe's reply.
    pair.server.outbox.push_back(ServerFrame::Messages {
        channel: "chat".into(),
        messages: pair.server.streams["chat"][3..].to_vec(),
    });
    pair.server.outbox.push_back(ServerFrame::Gap {
        channel: "chat".into(),
        from: stored[0],
        to: live[2],
    });
    pair.hold = false;
    pair.drive();
    assert_eq!(subscribed_at(&pair, resume), Some(stored[0]));
    let mut owed = vec![stored[1]];
    owed.extend(&live);
    assert_eq!(
        pair.delivered("chat"),
        owed,
        "each once, in order, from the new offset"
    );
    assert!(
        !pair
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::Gap { .. })),
        "the old subscription's gap is not the new one's"
    );
    assert_eq!(pair.session.offset("chat"), Some(live[2]));
}

#[test]
fn a_refused_subscribe_ends_the_replacement_like_a_subscribe() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    pair.server.forbidden.insert("chat".into());
    let id = pair.session.resubscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    match outcomes(&pair, id).as_slice() {
        [Event::RequestFailed {
            error: RequestError::Server { code, .. },
            ..
        }] => assert_eq!(*code, ErrorCode::Forbidden),
        other => panic!("{other:?}"),
    }
    assert_eq!(pair.session.subscription_count(), 0);
    pair.server.forbidden.clear();
    pair.server.append("chat", body(5));
    pair.drive();
    assert_eq!(pair.delivered("chat"), stored, "nothing after the refusal");

    // A transient refusal is retried, then the replacement stands.
    pair.server
        .refuse
        .insert("chat".into(), (ErrorCode::Unavailable, 2));
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[1]))
        .unwrap();
    pair.advance(ms(5_000));
    assert!(subscribed_at(&pair, id).is_some());
    let retries = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::SubscribeRetrying { .. }))
        .count();
    assert_eq!(retries, 2);
    assert_eq!(pair.delivered("chat")[2..], pair.server.stored("chat")[2..]);
}

#[test]
fn a_disconnect_while_waiting_resumes_from_the_new_offset_on_the_next_connection() {
    let (mut pair, stored) = with_history(4);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server.swallow.insert("unsubscribe");
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[1]))
        .unwrap();
    pair.drive();
    assert_eq!(wire(&pair, "chat").last(), Some(&("unsubscribe", None)));
    pair.drop_transport();
    let missed = pair.server.append("chat", body(7));
    pair.reconnect_within(ms(500));
    pair.drive();
    assert_eq!(
        wire(&pair, "chat")[2..],
        [("subscribe", Some(Offset::Id(stored[1])))],
        "one subscribe, from the resubscribe's offset"
    );
    assert_eq!(subscribed_at(&pair, id), Some(stored[1]));
    assert_eq!(pair.delivered("chat"), [stored[2], stored[3], missed]);
}

#[test]
fn an_unanswered_unsubscribe_times_the_connection_out() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server.swallow.insert("unsubscribe");
    let timeout = pair.session.config().request_timeout;
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.advance(timeout + ms(1));
    assert!(pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::Disconnected {
            reason: DisconnectReason::Timeout
        }
    )));
    assert!(matches!(
        outcomes(&pair, id).as_slice(),
        [Event::RequestFailed {
            error: RequestError::Timeout,
            ..
        }]
    ));
    // The caller's request ran out with the connection: nothing is subscribed any more.
    pair.reconnect_within(ms(5_000));
    assert_eq!(pair.session.subscription_count(), 0);
}

#[test]
fn the_last_of_two_quick_resubscribes_wins_behind_one_unsubscribe() {
    let (mut pair, stored) = with_history(5);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.hold = true;
    let a = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    let b = pair
        .session
        .resubscribe("chat", Offset::Id(stored[2]))
        .unwrap();
    pair.drive();
    pair.hold = false;
    pair.drive();
    assert!(cancelled(&pair, a));
    assert_eq!(subscribed_at(&pair, b), Some(stored[2]));
    assert_eq!(
        wire(&pair, "chat")[1..],
        [
            ("unsubscribe", None),
            ("subscribe", Some(Offset::Id(stored[2])))
        ]
    );
    assert_eq!(pair.delivered("chat"), stored[3..]);

    // A plain subscribe while a resubscribe waits waits too, and wins.
    pair.hold = true;
    let c = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    let d = pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    assert_eq!(wire(&pair, "chat").last(), Some(&("unsubscribe", None)));
    pair.hold = false;
    pair.drive();
    assert!(cancelled(&pair, c));
    assert_eq!(subscribed_at(&pair, d), Some(stored[4]));
    assert_eq!(pair.delivered("chat"), stored[3..], "nothing replayed");
}

#[test]
fn resuming_after_an_overflow_continues_after_the_last_kept_message() {
    let (mut pair, stored) = with_history(3);
    let id = pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    assert_eq!(subscribed_at(&pair, id), Some(StreamId::ZERO));
    // The application kept the first message only; the rest, and what comes while the
    // resume is on its way, went past its full buffer.
    let kept = stored[0];
    pair.hold = true;
    let more: Vec<_> = (0..2)
        .map(|i| pair.server.append("chat", body(i)))
        .collect();
    let seen = pair.events.len();
    let resume = pair.session.resubscribe("chat", Offset::Id(kept)).unwrap();
    pair.drive();
    pair.hold = false;
    pair.drive();
    assert_eq!(subscribed_at(&pair, resume), Some(kept));
    let after: Vec<StreamId> = pair.events[seen..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Messages { messages, .. } => Some(offsets(messages)),
            _ => None,
        })
        .flatten()
        .collect();
    let mut owed = stored[1..].to_vec();
    owed.extend(&more);
    assert_eq!(after, owed);
}

#[test]
fn a_resubscribe_after_an_unsubscribe_waits_for_it_and_switches_to_a_group() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.hold = true;
    let unsub = pair.session.unsubscribe("chat").unwrap();
    let join = pair
        .session
        .resubscribe_group("chat", "workers", "w1", Offset::Earliest)
        .unwrap();
    pair.drive();
    let frames: Vec<&'static str> = wire(&pair, "chat").iter().map(|(k, _)| *k).collect();
    assert_eq!(frames, ["subscribe", "unsubscribe", "unsubscribe"]);
    pair.hold = false;
    pair.drive();
    assert!(matches!(
        outcomes(&pair, unsub).as_slice(),
        [Event::Unsubscribed { .. }]
    ));
    assert!(subscribed_at(&pair, join).is_some());
    let last = pair.server.received.last().map(|(_, f)| f.clone());
    assert!(matches!(
        last,
        Some(ClientFrame::Subscribe { group: Some(g), consumer: Some(c), .. })
            if g == "workers" && c == "w1"
    ));
    // The fake server has no groups: it replays from the offset like a plain subscribe.
    assert_eq!(pair.delivered("chat"), stored);
}

#[test]
fn an_unsubscribe_refused_as_not_found_lets_the_subscribe_go_ahead() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server.swallow.insert("unsubscribe");
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.drive();
    let barrier = match pair.server.received.last() {
        Some((_, ClientFrame::Unsubscribe { id, .. })) => *id,
        other => panic!("{other:?}"),
    };
    pair.server.outbox.push_back(ServerFrame::Error {
        id: Some(barrier),
        code: ErrorCode::NotFound,
        message: "not subscribed".into(),
    });
    pair.drive();
    assert_eq!(subscribed_at(&pair, id), Some(stored[0]));
    assert_eq!(pair.delivered("chat"), [stored[1]]);
    assert!(
        !pair
            .events
            .iter()
            .any(|(_, e)| matches!(e, Event::RequestFailed { .. })),
        "the session's own unsubscribe reports nothing"
    );
}

#[test]
fn an_unsubscribe_while_waiting_cancels_the_resubscribe() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.hold = true;
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    let unsub = pair.session.unsubscribe("chat").unwrap();
    pair.drive();
    pair.hold = false;
    pair.drive();
    assert!(cancelled(&pair, id));
    assert_eq!(outcomes(&pair, unsub).len(), 1);
    let frames: Vec<&'static str> = wire(&pair, "chat").iter().map(|(k, _)| *k).collect();
    assert_eq!(
        frames,
        ["subscribe", "unsubscribe", "unsubscribe"],
        "no subscribe after"
    );
    assert_eq!(pair.session.subscription_count(), 0);
    pair.server.append("chat", body(3));
    pair.drive();
    assert!(pair.delivered("chat").is_empty());
}

#[test]
fn a_resubscribe_while_a_transient_refusal_waits_for_its_retry_replaces_it() {
    let (mut pair, stored) = with_history(3);
    pair.server
        .refuse
        .insert("chat".into(), (ErrorCode::Unavailable, 1));
    let first = pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    assert!(pair
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::SubscribeRetrying { .. })));
    let second = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.drive();
    assert!(cancelled(&pair, first));
    assert_eq!(subscribed_at(&pair, second), Some(stored[0]));
    // The retry of the replaced subscribe never goes out.
    pair.advance(ms(10_000));
    let frames: Vec<_> = wire(&pair, "chat");
    assert_eq!(
        frames,
        [
            ("subscribe", Some(Offset::Latest)),
            ("unsubscribe", None),
            ("subscribe", Some(Offset::Id(stored[0])))
        ]
    );
    assert_eq!(pair.delivered("chat"), stored[1..]);
}

#[test]
fn an_undecodable_frame_of_the_old_subscription_does_not_end_the_new_one() {
    let (mut pair, stored) = with_history(2);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.hold = true;
    let id = pair
        .session
        .resubscribe("chat", Offset::Id(stored[0]))
        .unwrap();
    pair.drive();
    // Before the `unsubscribed` reply: a cut-off frame of the old subscription.
    pair.server
        .raw
        .push_back(r#"{"type":"messages","channel":"chat","messages":[{"offset":"#.into());
    pair.hold = false;
    pair.drive();
    assert_eq!(subscribed_at(&pair, id), Some(stored[0]));
    assert!(!pair.events.iter().any(|(_, e)| matches!(
        e,
        Event::SubscriptionLost { .. } | Event::Disconnected { .. }
    )));
    assert_eq!(pair.delivered("chat"), [stored[1]]);
}
