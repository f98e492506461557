//! The tab multiplexer's rules (see `redistribute_protocol::multiplex`), one test each, with
//! real tab sessions over virtual connections to a leader session ([`World`]).

use std::time::Duration;

use redistribute_protocol::multiplex::Output;
use redistribute_protocol::session::{Event, PublishOptions, RequestError};
use redistribute_protocol::{ErrorCode, Offset, ServerFrame, StreamId};

use crate::harness::{body, ms};
use crate::tabs_world::{Link, World};

/// The messages of a channel after `start`, as stored.
fn after(world: &World, channel: &str, start: StreamId) -> Vec<StreamId> {
    let stored = world.pair.server.stored(channel);
    stored.into_iter().filter(|o| *o > start).collect()
}

#[test]
fn tabs_connect_only_while_the_leader_is_connected() {
    let mut world = World::with_tabs(&["a", "b"]);
    assert_eq!(world.tab("a").connects(), 1);
    assert!(world.tab("b").session.is_connected());
    // The leader loses the server and cannot reach it again for a while.
    world.pair.server.down.insert("ws://leader".into());
    world.drop_leader();
    assert!(world.outputs.contains(&Output::Down));
    world.advance(ms(2_000));
    for name in ["a", "b"] {
        let tab = world.tab(name);
        assert!(
            !tab.session.is_connected(),
            "{name} connected without a leader"
        );
        assert_eq!(tab.link, Link::Joining, "{name} waits for the leader");
        assert!(tab
            .events
            .iter()
            .any(|e| matches!(e, Event::Disconnected { .. })));
    }
    world.pair.server.down.clear();
    world.advance(ms(60_000));
    for name in ["a", "b"] {
        assert!(world.tab(name).session.is_connected(), "{name}");
        assert_eq!(world.tab(name).connects(), 2, "{name}");
    }
}

#[test]
fn a_subscribe_at_or_after_the_standing_position_is_answered_by_the_leader() {
    let mut world = World::with_tabs(&["a", "b", "c"]);
    world.subscribe("a", "ch", Offset::Earliest);
    world.drive();
    let first = world.append("ch", 3);
    assert_eq!(world.tab("a").delivered("ch"), first);
    // b resumes from the last message, c asks for `$`: neither needs the server.
    let sent = world.server_subscribes().len();
    world.subscribe("b", "ch", Offset::Id(first[2]));
    world.subscribe("c", "ch", Offset::Latest);
    world.drive();
    assert_eq!(world.server_subscribes().len(), sent);
    let answered = |world: &mut World, name: &str| {
        world.tab(name).events.iter().find_map(|e| match e {
            Event::Subscribed { offset, .. } => Some(*offset),
            _ => None,
        })
    };
    assert_eq!(answered(&mut world, "b"), Some(first[2]));
    assert_eq!(answered(&mut world, "c"), Some(first[2]));
    let more = world.append("ch", 2);
    assert_eq!(
        world.tab("a").delivered("ch"),
        [&first[..], &more[..]].concat()
    );
    assert_eq!(world.tab("b").delivered("ch"), more);
    assert_eq!(world.tab("c").delivered("ch"), more);
}

#[test]
fn an_older_offset_replaces_the_subscription_and_each_tab_gets_its_own_messages_once() {
    let mut world = World::with_tabs(&["a", "b"]);
    let old = world.append("ch", 3);
    world.subscribe("a", "ch", Offset::Latest);
    world.drive();
    let live = world.append("ch", 1);
    // b needs everything: the leader replaces its subscription with one from `0-0` (whose
    // answer, unlike `0`'s, would report what was trimmed: a's messages then, as a gap).
    world.subscribe("b", "ch", Offset::Earliest);
    world.drive();
    let frames = world.pair.server.received_of("unsubscribe");
    assert_eq!(frames.len(), 1, "the barrier before the replacement");
    assert!(world
        .server_subscribes()
        .last()
        .unwrap()
        .contains("\"offset\":\"0-0\""));
    let more = world.append("ch", 2);
    assert_eq!(
        world.tab("a").delivered("ch"),
        [&live[..], &more[..]].concat()
    );
    let all = [&old[..], &live[..], &more[..]].concat();
    assert_eq!(world.tab("b").delivered("ch"), all);
    assert!(world.tab("a").gaps("ch").is_empty());
}

#[test]
fn publish_keeps_the_tabs_idempotency_key_and_answers_the_tab() {
    let mut world = World::with_tabs(&["a"]);
    let options = || PublishOptions {
        maxlen: Some(10),
        idempotency_key: Some("k-1".into()),
    };
    let first = world
        .tab("a")
        .session
        .publish("ch", body(1), options())
        .unwrap();
    let again = world
        .tab("a")
        .session
        .publish("ch", body(1), options())
        .unwrap();
    world.drive();
    let published: Vec<_> = world.pair.server.received_of("publish");
    assert_eq!(published.len(), 2);
    assert!(published.iter().all(|f| {
        redistribute_protocol::lite::encode_client(f).contains("\"idempotency_key\":\"k-1\"")
    }));
    assert_eq!(world.pair.server.stored("ch").len(), 1, "stored once");
    let offsets: Vec<_> = world
        .tab("a")
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Published { id, offset, .. } => Some((*id, *offset)),
            _ => None,
        })
        .collect();
    let stored = world.pair.server.stored("ch")[0];
    assert_eq!(offsets, [(first, stored), (again, stored)]);
}

#[test]
fn the_last_tab_to_leave_a_channel_ends_the_subscription() {
    let mut world = World::with_tabs(&["a", "b"]);
    world.subscribe("a", "ch", Offset::Latest);
    world.subscribe("b", "ch", Offset::Latest);
    world.drive();
    world.tab("a").session.unsubscribe("ch").unwrap();
    world.drive();
    assert!(world
        .tab("a")
        .events
        .iter()
        .any(|e| matches!(e, Event::Unsubscribed { .. })));
    assert!(world.pair.server.received_of("unsubscribe").is_empty());
    assert_eq!(world.mux.members("ch").collect::<Vec<_>>(), ["b"]);
    // b's page goes away without a word: its lock is released, the leader hears `bye`.
    world.remove_tab("b");
    assert!(!world.mux.knows("b"));
    assert_eq!(world.pair.server.received_of("unsubscribe").len(), 1);
    assert_eq!(world.pair.session.subscription_count(), 0);
    assert_eq!(world.mux.members("ch").count(), 0);
}

#[test]
fn messages_are_broadcast_once_per_batch() {
    let mut world = World::with_tabs(&["a", "b", "c"]);
    world.subscribe("a", "ch", Offset::Latest);
    world.subscribe("b", "ch", Offset::Latest);
    world.drive();
    world.outputs.clear();
    let sent = world.append("ch", 1);
    let batches: Vec<_> = world
        .outputs
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::Broadcast {
                    frame: ServerFrame::Messages { .. }
                }
            )
        })
        .collect();
    assert_eq!(batches.len(), 1);
    assert_eq!(world.tab("a").delivered("ch"), sent);
    assert_eq!(world.tab("b").delivered("ch"), sent);
    assert!(world.tab("c").delivered("ch").is_empty(), "not subscribed");
}

#[test]
fn when_the_leader_loses_the_server_every_tab_resumes_from_its_own_position() {
    let mut world = World::with_tabs(&["a", "b"]);
    let old = world.append("ch", 2);
    world.subscribe("a", "ch", Offset::Earliest);
    world.subscribe("b", "ch", Offset::Latest);
    world.drive();
    let live = world.append("ch", 2);
    world.drop_leader();
    // Published while nobody listens.
    let missed: Vec<_> = (0..3)
        .map(|i| world.pair.server.append("ch", body(i)))
        .collect();
    world.advance(ms(60_000));
    assert!(world.tab("a").session.is_connected());
    let after_drop = world.append("ch", 1);
    let tail = [&live[..], &missed[..], &after_drop[..]].concat();
    assert_eq!(
        world.tab("a").delivered("ch"),
        [&old[..], &tail[..]].concat()
    );
    // b's `$` was answered from the position of the subscription from `0` that served both.
    let start = world.tab("b").events.iter().find_map(|e| match e {
        Event::Subscribed { offset, .. } => Some(*offset),
        _ => None,
    });
    let owed = after(&world, "ch", start.unwrap());
    assert!(owed.ends_with(&tail));
    assert_eq!(world.tab("b").delivered("ch"), owed);
}

#[test]
fn consumer_groups_are_refused() {
    let mut world = World::with_tabs(&["a"]);
    let id = world
        .tab("a")
        .session
        .subscribe_group("ch", "g", "c", Offset::Latest)
        .unwrap();
    world.drive();
    let failed = world.tab("a").events.iter().any(|e| match e {
        Event::RequestFailed {
            id: failed,
            error: RequestError::Server { code, .. },
        } => *failed == id && *code == ErrorCode::BadRequest,
        _ => false,
    });
    assert!(failed, "{:?}", world.tab("a").events);
    assert!(world.server_subscribes().is_empty());
}

#[test]
fn ping_is_answered_by_the_leader() {
    let mut world = World::with_tabs(&["a"]);
    let pings = world.pair.server.received_of("ping").len();
    let id = world.tab("a").session.ping().unwrap();
    world.drive();
    assert!(world.tab("a").events.contains(&Event::Pong { id }));
    assert_eq!(world.pair.server.received_of("ping").len(), pings);
}

#[test]
fn a_gap_reaches_only_the_tabs_it_concerns_from_their_own_position() {
    let mut world = World::with_tabs(&["a", "b", "c"]);
    world.subscribe("a", "ch", Offset::Earliest);
    world.drive();
    let sent = world.append("ch", 6);
    world.pair.server.trim("ch", 4);
    // b resumes from the first message, whose successors up to the fourth are gone; c resumes
    // from the fifth, after the trimmed range.
    world.subscribe("b", "ch", Offset::Id(sent[0]));
    world.drive();
    world.subscribe("c", "ch", Offset::Id(sent[4]));
    world.drive();
    assert_eq!(world.tab("b").gaps("ch"), [(sent[0], sent[3])]);
    assert_eq!(world.tab("b").delivered("ch"), sent[4..]);
    assert!(world.tab("a").gaps("ch").is_empty(), "a had them all");
    assert_eq!(world.tab("a").delivered("ch"), sent);
    assert!(world.tab("c").gaps("ch").is_empty());
    let truncated = world.tab("c").events.iter().any(|e| match e {
        Event::Subscribed { truncated, .. } => *truncated,
        _ => false,
    });
    assert!(!truncated, "nothing after c's offset was trimmed");
    let more = world.append("ch", 1);
    for name in ["a", "b", "c"] {
        assert_eq!(
            world.tab(name).delivered("ch").last(),
            more.last(),
            "{name}"
        );
    }
}

#[test]
fn a_lost_subscription_closes_its_tabs_which_resume_and_hear_the_answer_themselves() {
    let mut world = World::with_tabs(&["a", "b", "c"]);
    world.subscribe("a", "ch", Offset::Earliest);
    world.subscribe("c", "other", Offset::Earliest);
    world.drive();
    let first = world.append("ch", 2);
    // A frame of the channel the leader cannot decode ends its subscription there.
    world
        .pair
        .server
        .raw
        .push_back(r#"{"type":"messages","channel":"ch","messages":[{"offset":"x"}]}"#.into());
    world.drive();
    world.advance(ms(5_000));
    assert_eq!(
        world.tab("a").connects(),
        2,
        "a resumed over a new connection"
    );
    assert_eq!(world.tab("c").connects(), 1, "c was not concerned");
    let more = world.append("ch", 1);
    assert_eq!(
        world.tab("a").delivered("ch"),
        [&first[..], &more[..]].concat()
    );

    // Now the channel is forbidden and b asks for older messages: the replacement is refused,
    // b's subscribe fails, and a, no longer served, resumes and hears the refusal itself.
    world.pair.server.forbidden.insert("ch".into());
    world.subscribe("b", "ch", Offset::Earliest);
    world.advance(ms(5_000));
    let refused = |events: &[Event]| {
        events.iter().any(|e| match e {
            Event::RequestFailed { error, .. } | Event::SubscriptionLost { error, .. } => {
                matches!(
                    error,
                    RequestError::Server {
                        code: ErrorCode::Forbidden,
                        ..
                    }
                )
            }
            _ => false,
        })
    };
    assert!(
        refused(&world.tab("b").events),
        "{:?}",
        world.tab("b").events
    );
    let lost = world.tab("a").events.iter().any(|e| {
        matches!(e, Event::SubscriptionLost { channel, error: RequestError::Server { code: ErrorCode::Forbidden, .. } } if channel == "ch")
    });
    assert!(lost, "{:?}", world.tab("a").events);
    assert_eq!(world.mux.members("ch").count(), 0);
    assert_eq!(
        world.pair.session.subscriptions().collect::<Vec<_>>(),
        ["other"]
    );
}

#[test]
fn a_tab_that_leaves_is_forgotten_with_its_requests() {
    let mut world = World::with_tabs(&["a", "b"]);
    world.pair.server.swallow.insert("publish");
    world
        .tab("a")
        .session
        .publish("ch", body(1), PublishOptions::default())
        .unwrap();
    world.subscribe("a", "ch", Offset::Latest);
    world.drive();
    world.remove_tab("a");
    let left = world.outputs.len();
    assert!(!world.mux.knows("a"));
    assert!(world.mux.knows("b"));
    assert_eq!(world.mux.members("ch").count(), 0);
    // Frames still in flight from it are ignored.
    let ping = redistribute_protocol::ClientFrame::Ping { id: 9 };
    world.mux.handle_frame(&mut world.pair.session, "a", ping);
    assert!(world.mux.poll_output().is_none());
    // Its publish times out in the leader's session: nothing goes to the tab.
    world.advance(Duration::from_secs(30));
    let to_a = |o: &Output| matches!(o, Output::Send { tab, .. } if tab == "a");
    assert!(!world.outputs[left..].iter().any(to_a));
}

#[test]
fn a_tab_joining_again_starts_afresh() {
    let mut world = World::with_tabs(&["a"]);
    world.subscribe("a", "ch", Offset::Latest);
    world.drive();
    assert_eq!(world.mux.members("ch").count(), 1);
    // A second `hello` (the tab's virtual connection was re-made): its old state is gone.
    world.mux.tab_joined(&mut world.pair.session, "a");
    assert!(world.mux.is_open("a"));
    assert_eq!(world.mux.members("ch").count(), 0);
    assert_eq!(
        world.mux.poll_output(),
        Some(Output::Open { tab: "a".into() })
    );
}

#[test]
fn presence_requests_go_through_the_leader_and_join_leave_reaches_the_channels_tabs() {
    let mut world = World::with_tabs(&["a", "b", "c"]);
    world.subscribe("a", "room", Offset::Latest);
    world.subscribe("b", "room", Offset::Latest);
    world.drive();
    let members = world.tab("a").session.presence("room").unwrap();
    let stats = world.tab("b").session.presence_stats("room").unwrap();
    world.drive();
    // The fake server lists the leader's connection, subscribed for the tabs.
    assert!(world.tab("a").events.iter().any(|e| matches!(e,
        Event::Presence { id, channel, members: m } if *id == members && channel == "room" && m.len() == 1)));
    assert!(world.tab("b").events.iter().any(|e| matches!(e,
        Event::PresenceStats { id, clients: 1, .. } if *id == stats)));
    let change = redistribute_protocol::PresenceEvent {
        channel: "room".into(),
        joins: vec![redistribute_protocol::PresenceMember {
            client: "x-1".into(),
            user: Some("zoe".into()),
            info: None,
        }],
        leaves: vec![],
        missed: None,
    };
    let now = world.pair.now;
    world
        .pair
        .session
        .handle_frame(ServerFrame::PresenceEvent(Box::new(change.clone())), now);
    world.drive();
    for (name, expected) in [("a", 1), ("b", 1), ("c", 0)] {
        let heard = world
            .tab(name)
            .events
            .iter()
            .filter(|e| matches!(e, Event::PresenceChanged(got) if **got == change))
            .count();
        assert_eq!(heard, expected, "tab {name}");
    }
}

#[test]
fn a_latest_tab_next_to_a_tab_that_asked_for_0_is_owed_no_trimmed_entry() {
    // Everything stored was trimmed. A subscription from `0` would stand at `0-0`, saying
    // nothing of what was trimmed before it.
    let mut world = World::with_tabs(&["a", "b"]);
    let gone = world.append("ch", 2);
    world.pair.server.trim("ch", 2);
    world.subscribe("a", "ch", Offset::Earliest);
    world.drive();
    // Answered `0-0`, b would be owed the trimmed entries and told of no gap.
    world.subscribe("b", "ch", Offset::Latest);
    world.drive();
    let answered = |world: &mut World, name: &str| {
        world.tab(name).events.iter().find_map(|e| match e {
            Event::Subscribed { offset, .. } => Some(*offset),
            _ => None,
        })
    };
    let b = answered(&mut world, "b").expect("b is answered");
    let told = world
        .tab("b")
        .gaps("ch")
        .iter()
        .any(|(_, to)| *to >= gone[1]);
    assert!(
        b >= gone[1] || told,
        "b answered {b}, no gap to {}",
        gone[1]
    );
    // a asked for whatever is retained: the trimmed entries are none of its business.
    assert_eq!(world.tab("a").gaps("ch"), vec![]);
    let more = world.append("ch", 2);
    assert_eq!(world.tab("a").delivered("ch"), more);
    assert_eq!(world.tab("b").delivered("ch"), more);
}

#[test]
fn a_tab_asking_for_0_is_answered_after_the_trimmed_entries_and_the_others_hear_no_gap() {
    let mut world = World::with_tabs(&["a", "b"]);
    let old = world.append("ch", 3);
    world.pair.server.trim("ch", 2);
    world.subscribe("a", "ch", Offset::Latest);
    world.drive();
    let live = world.append("ch", 1);
    // b needs everything retained: the replacement (from `0-0`) reports the trimmed entries,
    // which are before b's answer and before a's position.
    world.subscribe("b", "ch", Offset::Earliest);
    world.drive();
    let answered = world.tab("b").events.iter().find_map(|e| match e {
        Event::Subscribed {
            offset, truncated, ..
        } => Some((*offset, *truncated)),
        _ => None,
    });
    assert_eq!(answered, Some((old[1], false)));
    let more = world.append("ch", 2);
    assert_eq!(
        world.tab("b").delivered("ch"),
        [&old[2..], &live[..], &more[..]].concat()
    );
    assert_eq!(
        world.tab("a").delivered("ch"),
        [&live[..], &more[..]].concat()
    );
    assert_eq!(world.tab("a").gaps("ch"), vec![]);
    assert_eq!(world.tab("b").gaps("ch"), vec![]);
}
