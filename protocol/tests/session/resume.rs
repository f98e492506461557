//! Subscriptions across reconnects: resume from the last offset, dedupe at the seam, `$`
//! resume points, restored offsets, unsubscribe and refused subscriptions.

use redistribute_protocol::session::{Config, Event, RequestError};
use redistribute_protocol::{ClientFrame, ErrorCode, Offset, StreamId};

use crate::harness::{body, ms, Pair};

/// The `offset` of every `subscribe` frame the server received for a channel.
fn subscribe_offsets(pair: &Pair, channel: &str) -> Vec<Option<Offset>> {
    pair.server
        .received_of("subscribe")
        .into_iter()
        .filter_map(|f| match f {
            ClientFrame::Subscribe {
                channel: c, offset, ..
            } if c == channel => Some(offset),
            _ => None,
        })
        .collect()
}

fn subscribed(events: &[Event]) -> Vec<(String, StreamId, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Subscribed {
                channel,
                offset,
                resumed,
                ..
            } => Some((channel.clone(), *offset, *resumed)),
            _ => None,
        })
        .collect()
}

#[test]
fn resumes_from_the_last_delivered_offset_after_a_drop() {
    let mut pair = Pair::connected(&["ws://a"]);
    let first: Vec<_> = (0..3)
        .map(|n| pair.server.append("chat", body(n)))
        .collect();
    let id = pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    assert_eq!(pair.delivered("chat"), first);
    let events = pair.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Subscribed { id: i, resumed: false, .. } if *i == id)));

    pair.drop_transport();
    assert!(pair
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    let missed: Vec<_> = (3..5)
        .map(|n| pair.server.append("chat", body(n)))
        .collect();
    pair.reconnect_within(ms(200));
    pair.drive();

    assert_eq!(
        subscribe_offsets(&pair, "chat"),
        vec![Some(Offset::Earliest), Some(Offset::Id(first[2]))]
    );
    assert_eq!(pair.delivered("chat"), missed);
    let events = pair.take_events();
    assert_eq!(subscribed(&events), vec![("chat".into(), first[2], true)]);
    let live = pair.server.append("chat", body(9));
    pair.drive();
    assert_eq!(pair.delivered("chat"), vec![live]);
    assert_eq!(pair.session.offset("chat"), Some(live));
}

#[test]
fn drops_replayed_messages_at_the_seam() {
    let mut pair = Pair::connected(&["ws://a"]);
    let first: Vec<_> = (0..3)
        .map(|n| pair.server.append("chat", body(n)))
        .collect();
    pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    pair.drop_transport();
    let next = pair.server.append("chat", body(3));
    // A sloppy server replays two old entries before the new one.
    pair.server.overlap = 2;
    pair.reconnect_within(ms(200));
    pair.drive();
    let mut all = first.clone();
    all.push(next);
    assert_eq!(pair.delivered("chat"), all);

    // A live frame repeating entries already delivered yields nothing.
    let newer = pair.server.append("chat", body(4));
    pair.drive();
    pair.server
        .outbox
        .push_back(redistribute_protocol::ServerFrame::Messages {
            channel: "chat".into(),
            messages: pair.server.streams["chat"][1..].to_vec(),
        });
    pair.drive();
    all.push(newer);
    assert_eq!(pair.delivered("chat"), all);
}

#[test]
fn dollar_then_drop_before_any_message_resumes_from_the_subscribed_offset() {
    let mut pair = Pair::connected(&["ws://a"]);
    for n in 0..3 {
        pair.server.append("news", body(n));
    }
    let tip = *pair.server.stored("news").last().unwrap();
    pair.session.subscribe("news", Offset::Latest).unwrap();
    pair.drive();
    assert_eq!(
        subscribed(&pair.take_events()),
        vec![("news".into(), tip, false)]
    );
    assert!(pair.delivered("news").is_empty());
    assert_eq!(pair.session.offsets().get("news"), Some(&tip));

    pair.drop_transport();
    let during = pair.server.append("news", body(3));
    pair.reconnect_within(ms(200));
    pair.drive();
    assert_eq!(
        subscribe_offsets(&pair, "news"),
        vec![Some(Offset::Latest), Some(Offset::Id(tip))]
    );
    assert_eq!(pair.delivered("news"), vec![during]);
}

#[test]
fn never_answered_subscribe_is_resent_with_the_requested_offset() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("subscribe");
    let id = pair.session.subscribe("news", Offset::Latest).unwrap();
    pair.drive();
    pair.drop_transport();
    pair.server.swallow.clear();
    pair.reconnect_within(ms(200));
    pair.drive();
    assert_eq!(
        subscribe_offsets(&pair, "news"),
        vec![Some(Offset::Latest), Some(Offset::Latest)]
    );
    // The caller's request is answered by the re-sent subscribe, under its own id.
    let events = pair.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Subscribed { id: i, resumed: false, .. } if *i == id)));
}

#[test]
fn restored_offsets_resume_a_new_session() {
    let mut pair = Pair::connected(&["ws://a"]);
    let all: Vec<_> = (0..4).map(|n| pair.server.append("c", body(n))).collect();
    pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.drive();
    let saved = pair.session.offsets();
    assert_eq!(saved.get("c"), Some(&all[3]));

    // "Reload the page": a new session, same server, from the saved offset of an earlier point.
    let mut fresh = Pair::new(Config::new(["ws://a"]), 99);
    fresh.server = std::mem::take(&mut pair.server);
    fresh.start();
    fresh.session.subscribe("c", Offset::Id(all[1])).unwrap();
    fresh.drive();
    assert_eq!(fresh.delivered("c"), all[2..].to_vec());
}

#[test]
fn drops_messages_of_other_channels_and_reports_gaps() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("mine", Offset::Latest).unwrap();
    pair.drive();
    pair.take_events();
    let stray = redistribute_protocol::Message {
        offset: StreamId::new(5, 0),
        fields: Default::default(),
    };
    for channel in ["other", "mine"] {
        pair.server
            .outbox
            .push_back(redistribute_protocol::ServerFrame::Messages {
                channel: channel.into(),
                messages: vec![stray.clone()],
            });
        pair.server
            .outbox
            .push_back(redistribute_protocol::ServerFrame::Gap {
                channel: channel.into(),
                from: StreamId::new(1, 0),
                to: StreamId::new(4, 0),
            });
    }
    pair.drive();
    assert_eq!(
        pair.take_events(),
        vec![
            Event::Messages {
                channel: "mine".into(),
                messages: vec![stray]
            },
            Event::Gap {
                channel: "mine".into(),
                from: StreamId::new(1, 0),
                to: StreamId::new(4, 0)
            },
        ]
    );
}

#[test]
fn unsubscribe_stops_delivery_and_resubscription() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("a", Offset::Latest).unwrap();
    pair.session.subscribe("b", Offset::Latest).unwrap();
    pair.drive();
    let id = pair.session.unsubscribe("a").unwrap();
    pair.drive();
    assert!(pair.take_events().iter().any(|e| matches!(e,
        Event::Unsubscribed { id: i, channel } if *i == id && channel == "a")));
    pair.server.append("a", body(1));
    pair.drive();
    assert!(pair.delivered("a").is_empty());

    pair.drop_transport();
    // Unsubscribing while disconnected completes at once.
    let id_b = pair.session.unsubscribe("b").unwrap();
    pair.drive();
    assert!(pair.take_events().iter().any(|e| matches!(e,
        Event::Unsubscribed { id: i, .. } if *i == id_b)));
    pair.reconnect_within(ms(200));
    assert_eq!(subscribe_offsets(&pair, "a").len(), 1);
    assert_eq!(subscribe_offsets(&pair, "b").len(), 1);
    assert_eq!(pair.session.subscription_count(), 0);
}

#[test]
fn refused_subscriptions_are_forgotten() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.forbidden.insert("secret".into());
    let id = pair.session.subscribe("secret", Offset::Latest).unwrap();
    pair.session.subscribe("open", Offset::Latest).unwrap();
    pair.drive();
    assert!(pair.take_events().iter().any(|e| matches!(e,
        Event::RequestFailed { id: i, error: RequestError::Server { code: ErrorCode::Forbidden, .. } }
            if *i == id)));
    assert_eq!(
        pair.session.subscriptions().collect::<Vec<_>>(),
        vec!["open"]
    );

    // Rights revoked while disconnected: the re-subscribe is refused and reported.
    pair.drop_transport();
    pair.server.forbidden.insert("open".into());
    pair.reconnect_within(ms(200));
    pair.drive();
    assert!(pair.take_events().iter().any(|e| matches!(e,
        Event::SubscriptionLost { channel, error: RequestError::Server { code: ErrorCode::Forbidden, .. } }
            if channel == "open")));
    assert_eq!(pair.session.subscription_count(), 0);
    assert!(pair.session.is_connected());
}

/// Replacing a live subscription (here with one from `0`): messages of the old subscription that
/// arrive before the new `subscribed` are dropped, or they would move the position past the
/// history the new subscription then receives, which would be lost as "already seen".
#[test]
fn messages_before_a_replacing_subscribed_belong_to_the_old_subscription() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("c", Offset::Latest).unwrap();
    pair.drive();
    let a = pair.server.append("c", body(1));
    pair.drive();
    assert_eq!(pair.delivered("c"), vec![a]);

    // The server has not answered the second subscribe when the next live message goes out.
    pair.server.swallow.insert("subscribe");
    pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.drive();
    let b = pair.server.append("c", body(2));
    pair.drive();
    assert_eq!(
        pair.delivered("c"),
        vec![a],
        "a message of the replaced subscription"
    );

    // Now it answers: `subscribed` from 0, then the history.
    pair.server.swallow.clear();
    let (target, resubscribe) = pair.server.received.last().cloned().unwrap();
    pair.server.handle(&target, resubscribe);
    pair.drive();
    assert_eq!(
        pair.delivered("c"),
        vec![a, a, b],
        "the new subscription's full history"
    );
}

#[test]
fn resubscribing_replaces_and_cancels_the_unanswered_request() {
    let mut pair = Pair::new(Config::new(["ws://a"]), 1);
    let first = pair.session.subscribe("c", Offset::Latest).unwrap();
    let second = pair.session.subscribe("c", Offset::Earliest).unwrap();
    pair.start();
    let events = pair.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::RequestFailed { id, error: RequestError::Cancelled } if *id == first)));
    assert!(events.iter().any(|e| matches!(e,
        Event::Subscribed { id, .. } if *id == second)));
    assert_eq!(
        subscribe_offsets(&pair, "c"),
        vec![Some(Offset::Earliest)],
        "only the surviving subscription goes out"
    );
}
