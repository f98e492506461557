//! Presence requests and join/leave events: replies matched by id, re-sent after a reconnect,
//! `join_leave` carried by every subscribe (the caller's and re-subscribes), events only for
//! current subscriptions.

use redistribute_protocol::session::{Config, Event, RequestError};
use redistribute_protocol::{ClientFrame, PresenceEvent, PresenceMember, ServerFrame};

use crate::harness::Pair;

fn member(client: &str) -> PresenceMember {
    PresenceMember {
        client: client.into(),
        user: Some("u".into()),
        info: None,
    }
}

fn join_leave_pair() -> Pair {
    let mut config = Config::new(["ws://a"]);
    config.join_leave = true;
    let mut pair = Pair::new(config, 3);
    pair.start();
    pair
}

#[test]
fn presence_and_stats_are_answered_by_id() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session
        .subscribe("room", redistribute_protocol::Offset::Latest)
        .unwrap();
    let members = pair.session.presence("room").unwrap();
    let stats = pair.session.presence_stats("room").unwrap();
    pair.drive();
    let events = pair.take_events();
    assert!(events.iter().any(|e| matches!(e,
        Event::Presence { id, channel, members: m }
            if *id == members && channel == "room" && m.len() == 1 && m[0].client == "c1")));
    assert!(events.iter().any(|e| matches!(e,
        Event::PresenceStats { id, clients: 1, users: 1, .. } if *id == stats)));
}

#[test]
fn a_presence_request_is_sent_again_after_a_reconnect() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("presence");
    let id = pair.session.presence("room").unwrap();
    pair.drive();
    pair.cut_transport();
    pair.server.swallow.clear();
    pair.reconnect_within(std::time::Duration::from_secs(30));
    pair.drive();
    let sent = pair.server.received_of("presence");
    assert_eq!(sent.len(), 2, "{sent:?}");
    let answered: Vec<_> = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Presence { id: i, .. } if *i == id))
        .collect();
    assert_eq!(answered.len(), 1);
    assert!(!pair
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::RequestFailed { id: i, .. } if *i == id)));
}

#[test]
fn a_refused_presence_request_fails_with_the_servers_code() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("presence");
    let id = pair.session.presence("room").unwrap();
    pair.drive();
    pair.session.handle_frame(
        ServerFrame::Error {
            id: Some(id.0),
            code: redistribute_protocol::ErrorCode::NotFound,
            message: "presence is not enabled".into(),
        },
        pair.now,
    );
    pair.drive();
    assert!(pair.events.iter().any(|(_, e)| matches!(e,
        Event::RequestFailed { id: i, error: RequestError::Server { code, .. } }
            if *i == id && *code == redistribute_protocol::ErrorCode::NotFound)));
}

#[test]
fn join_leave_is_asked_on_every_subscribe_when_configured() {
    let mut pair = join_leave_pair();
    pair.session
        .subscribe("room", redistribute_protocol::Offset::Latest)
        .unwrap();
    pair.drive();
    pair.cut_transport();
    pair.reconnect_within(std::time::Duration::from_secs(30));
    let subscribes = pair.server.received_of("subscribe");
    assert_eq!(subscribes.len(), 2);
    for frame in subscribes {
        assert!(matches!(
            frame,
            ClientFrame::Subscribe {
                join_leave: true,
                ..
            }
        ));
    }
    // Off by default.
    let mut plain = Pair::connected(&["ws://a"]);
    plain
        .session
        .subscribe("room", redistribute_protocol::Offset::Latest)
        .unwrap();
    plain.drive();
    assert!(matches!(
        plain.server.received_of("subscribe")[0],
        ClientFrame::Subscribe {
            join_leave: false,
            ..
        }
    ));
}

#[test]
fn join_leave_events_reach_the_application_only_for_current_subscriptions() {
    let mut pair = join_leave_pair();
    pair.session
        .subscribe("room", redistribute_protocol::Offset::Latest)
        .unwrap();
    pair.drive();
    pair.take_events();
    let event = |channel: &str| {
        ServerFrame::PresenceEvent(Box::new(PresenceEvent {
            channel: channel.into(),
            joins: vec![member("a")],
            leaves: vec![member("b")],
            missed: None,
        }))
    };
    pair.session.handle_frame(event("room"), pair.now);
    pair.session.handle_frame(event("elsewhere"), pair.now);
    let overflow = ServerFrame::PresenceEvent(Box::new(PresenceEvent {
        channel: "room".into(),
        joins: vec![],
        leaves: vec![],
        missed: Some(1000),
    }));
    pair.session.handle_frame(overflow, pair.now);
    pair.drive();
    let changes: Vec<Event> = pair
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::PresenceChanged(_)))
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    let [Event::PresenceChanged(first), Event::PresenceChanged(second)] = &changes[..] else {
        panic!("{changes:?}");
    };
    assert_eq!(first.channel, "room");
    assert_eq!(first.joins[0].client, "a");
    assert_eq!(first.leaves[0].client, "b");
    assert_eq!(first.missed, None);
    assert_eq!(second.missed, Some(1000));
    pair.session.unsubscribe("room").unwrap();
    pair.drive();
    pair.session.handle_frame(event("room"), pair.now);
    pair.drive();
    assert!(!pair
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::PresenceChanged(_))));
}
