//! Subscription and client states ([`SubscriptionState`], [`ClientState`]) on the virtual
//! clock: every transition is announced once, after its cause, and resets at every step (a
//! subscribe in flight when the socket drops, an unsubscribe while subscribing, a refused
//! re-subscribe, a timeout, a server error, closing) end in a clear state, never silently.

use std::time::Duration;

use redistribute_protocol::session::{ClientState, Config, Event, RequestError, SubscriptionState};
use redistribute_protocol::{ErrorCode, Offset};

use crate::harness::{body, Pair};

use SubscriptionState::{Subscribed, Subscribing, Unsubscribed};

/// The subscription states announced for `channel`, with their errors, in order.
fn states(pair: &Pair, channel: &str) -> Vec<(SubscriptionState, Option<RequestError>)> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::SubscriptionState {
                channel: c,
                state,
                error,
            } if c == channel => Some((*state, error.clone())),
            _ => None,
        })
        .collect()
}

/// The client states announced, in order.
fn client_states(pair: &Pair) -> Vec<ClientState> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::State { state } => Some(*state),
            _ => None,
        })
        .collect()
}

/// `(truncated, resumed, recovered)` of every `Subscribed` of `channel`.
fn subscribed(pair: &Pair, channel: &str) -> Vec<(bool, bool, bool)> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Subscribed {
                channel: c,
                truncated,
                resumed,
                recovered,
                ..
            } if c == channel => Some((*truncated, *resumed, *recovered)),
            _ => None,
        })
        .collect()
}

/// The position in the event list of the first event matching `f`.
fn index_of(pair: &Pair, f: impl Fn(&Event) -> bool) -> usize {
    pair.events
        .iter()
        .position(|(_, e)| f(e))
        .expect("the event was emitted")
}

fn server_error(code: ErrorCode) -> impl Fn(&Option<RequestError>) -> bool {
    move |e| matches!(e, Some(RequestError::Server { code: c, .. }) if *c == code)
}

#[test]
fn states_follow_connect_subscribe_drop_and_resume() {
    let mut pair = Pair::new(Config::new(["ws://a"]), 1);
    assert_eq!(pair.session.state(), ClientState::Disconnected);
    assert_eq!(pair.session.subscription_state("chat"), Unsubscribed);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.start();
    assert_eq!(pair.session.state(), ClientState::Connected);
    assert_eq!(pair.session.subscription_state("chat"), Subscribed);
    // `$` has no known offset to recover from.
    assert_eq!(subscribed(&pair, "chat"), [(false, false, false)]);

    pair.server.append("chat", body(1));
    pair.drop_transport();
    assert_eq!(pair.session.state(), ClientState::Connecting);
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.server.append("chat", body(2));
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    assert_eq!(pair.session.subscription_state("chat"), Subscribed);
    // Resumed from its position with nothing trimmed: recovered.
    assert_eq!(
        subscribed(&pair, "chat"),
        [(false, false, false), (false, true, true)]
    );
    assert_eq!(pair.delivered("chat").len(), 2);
    assert_eq!(
        states(&pair, "chat"),
        [
            (Subscribing, None),
            (Subscribed, None),
            (Subscribing, None),
            (Subscribed, None)
        ]
    );
    assert_eq!(
        client_states(&pair),
        [
            ClientState::Connecting,
            ClientState::Connected,
            ClientState::Connecting,
            ClientState::Connected
        ]
    );
    // Each state event comes right after its cause.
    let disconnected = index_of(&pair, |e| matches!(e, Event::Disconnected { .. }));
    assert!(matches!(
        pair.events[disconnected + 1].1,
        Event::State {
            state: ClientState::Connecting
        }
    ));
    assert!(matches!(
        &pair.events[disconnected + 2].1,
        Event::SubscriptionState { channel, state: Subscribing, error: None } if channel == "chat"
    ));
}

#[test]
fn a_failed_connection_attempt_stays_connecting() {
    let mut pair = Pair::new(Config::new(["ws://a", "ws://b"]), 2);
    pair.server.down.insert("ws://a".into());
    pair.start();
    pair.reconnect_within(Duration::from_secs(5));
    assert_eq!(
        client_states(&pair),
        [ClientState::Connecting, ClientState::Connected]
    );
}

#[test]
fn a_subscribe_in_flight_when_the_socket_drops_stays_subscribing_then_subscribes() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.hold = true;
    pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.hold = false;
    pair.drop_transport();
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    assert_eq!(
        states(&pair, "chat"),
        [(Subscribing, None), (Subscribed, None)]
    );
    // The caller's subscribe was answered on the new connection: not a resume.
    assert_eq!(subscribed(&pair, "chat"), [(false, false, false)]);
}

#[test]
fn an_unsubscribe_while_subscribing_ends_unsubscribed_and_nothing_arrives() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.append("chat", body(1));
    pair.hold = true;
    pair.session.subscribe("chat", Offset::Earliest).unwrap();
    pair.drive();
    pair.session.unsubscribe("chat").unwrap();
    pair.drive();
    assert_eq!(pair.session.subscription_state("chat"), Unsubscribed);
    pair.hold = false;
    pair.drive();
    assert_eq!(
        states(&pair, "chat"),
        [(Subscribing, None), (Unsubscribed, None)]
    );
    assert!(pair.delivered("chat").is_empty());
    assert_eq!(pair.session.subscription_state("chat"), Unsubscribed);
}

#[test]
fn an_unsubscribe_while_disconnected_ends_unsubscribed_at_once() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server.down.insert("ws://a".into());
    pair.drop_transport();
    pair.session.unsubscribe("chat").unwrap();
    pair.drive();
    assert_eq!(
        states(&pair, "chat"),
        [
            (Subscribing, None),
            (Subscribed, None),
            (Subscribing, None),
            (Unsubscribed, None)
        ]
    );
    pair.server.down.clear();
    pair.reconnect_within(Duration::from_secs(30));
    pair.drive();
    assert_eq!(pair.session.subscription_state("chat"), Unsubscribed);
    assert!(pair.server.received_of("subscribe").len() == 1);
}

#[test]
fn a_resubscribe_refused_after_a_reconnect_ends_unsubscribed_with_the_error() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.session.subscribe("news", Offset::Latest).unwrap();
    pair.drive();
    pair.server.forbidden.insert("chat".into());
    pair.drop_transport();
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    let chat = states(&pair, "chat");
    assert_eq!(chat.len(), 4, "{chat:?}");
    assert_eq!(chat[3].0, Unsubscribed);
    assert!(server_error(ErrorCode::Forbidden)(&chat[3].1), "{chat:?}");
    // The loss is announced first, then the state.
    let lost = index_of(&pair, |e| matches!(e, Event::SubscriptionLost { .. }));
    let ended = index_of(&pair, |e| {
        matches!(
            e,
            Event::SubscriptionState {
                state: Unsubscribed,
                ..
            }
        )
    });
    assert!(lost < ended);
    // The other channel is unaffected.
    assert_eq!(pair.session.subscription_state("news"), Subscribed);
    assert_eq!(pair.session.subscription_state("chat"), Unsubscribed);
}

#[test]
fn a_refused_subscribe_ends_unsubscribed_with_the_error() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.forbidden.insert("chat".into());
    let id = pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    let failed = index_of(
        &pair,
        |e| matches!(e, Event::RequestFailed { id: i, .. } if *i == id),
    );
    let ended = index_of(&pair, |e| {
        matches!(
            e,
            Event::SubscriptionState {
                state: Unsubscribed,
                ..
            }
        )
    });
    assert!(failed < ended);
    let chat = states(&pair, "chat");
    assert_eq!(chat.len(), 2);
    assert!(server_error(ErrorCode::Forbidden)(&chat[1].1));
}

#[test]
fn transient_server_errors_keep_it_subscribing_until_it_gets_through() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server
        .refuse
        .insert("chat".into(), (ErrorCode::Unavailable, 3));
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.advance(Duration::from_secs(5));
    assert_eq!(
        states(&pair, "chat"),
        [(Subscribing, None), (Subscribed, None)]
    );
    let retries = pair
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::SubscribeRetrying { .. }))
        .count();
    assert_eq!(retries, 3);
}

#[test]
fn a_subscribe_that_times_out_ends_unsubscribed_with_timeout() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("subscribe");
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.advance(Duration::from_secs(11));
    let chat = states(&pair, "chat");
    assert_eq!(
        chat,
        [
            (Subscribing, None),
            (Unsubscribed, Some(RequestError::Timeout))
        ]
    );
}

#[test]
fn a_truncated_resume_is_not_recovered() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server.down.insert("ws://a".into());
    pair.drop_transport();
    for n in 0..4 {
        pair.server.append("chat", body(n));
    }
    pair.server.trim("chat", 2);
    pair.server.down.clear();
    pair.reconnect_within(Duration::from_secs(30));
    pair.drive();
    assert_eq!(
        subscribed(&pair, "chat"),
        [(false, false, false), (true, true, false)]
    );
    assert_eq!(pair.session.subscription_state("chat"), Subscribed);
}

#[test]
fn a_saved_offset_with_everything_retained_is_recovered() {
    let mut pair = Pair::connected(&["ws://a"]);
    let first = pair.server.append("chat", body(1));
    pair.server.append("chat", body(2));
    pair.session.subscribe("chat", Offset::Id(first)).unwrap();
    pair.session.subscribe("all", Offset::Earliest).unwrap();
    pair.drive();
    assert_eq!(subscribed(&pair, "chat"), [(false, false, true)]);
    assert_eq!(subscribed(&pair, "all"), [(false, false, false)]);
}

#[test]
fn replacing_a_subscription_goes_back_to_subscribing() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.session.resubscribe("chat", Offset::Earliest).unwrap();
    assert_eq!(pair.session.subscription_state("chat"), Subscribing);
    pair.drive();
    assert_eq!(
        states(&pair, "chat"),
        [
            (Subscribing, None),
            (Subscribed, None),
            (Subscribing, None),
            (Subscribed, None)
        ]
    );
}

#[test]
fn an_undecodable_frame_ends_the_channel_unsubscribed_with_the_error() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.drive();
    pair.server
        .raw
        .push_back(r#"{"type":"messages","channel":"chat","messages":7}"#.into());
    pair.drive();
    let chat = states(&pair, "chat");
    assert!(
        matches!(
            chat.last(),
            Some((Unsubscribed, Some(RequestError::Undecodable { .. })))
        ),
        "{chat:?}"
    );
}

#[test]
fn closing_unsubscribes_everything_with_closed() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session.subscribe("chat", Offset::Latest).unwrap();
    pair.session.subscribe("news", Offset::Latest).unwrap();
    pair.drive();
    pair.session.close();
    pair.drive();
    for channel in ["chat", "news"] {
        assert_eq!(
            states(&pair, channel).last(),
            Some(&(Unsubscribed, Some(RequestError::Closed)))
        );
        assert_eq!(pair.session.subscription_state(channel), Unsubscribed);
    }
    assert_eq!(client_states(&pair).last(), Some(&ClientState::Closed));
    assert_eq!(pair.session.state(), ClientState::Closed);
    // Positions stay readable after closing.
    assert_eq!(pair.session.offsets().len(), 2);
}
