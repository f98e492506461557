//! Consumer-group subscriptions: the group and consumer go on every `subscribe` (also after a
//! reconnect), redelivered messages are passed on, and `ack` gets its outcome, surviving a
//! reconnect.

use std::time::Duration;

use redistribute_protocol::session::Event;
use redistribute_protocol::{ClientFrame, Message, Offset, ServerFrame, StreamId};

use crate::harness::{body, Pair};

fn group_subscribes(pair: &Pair) -> Vec<(Option<String>, Option<String>)> {
    pair.server
        .received_of("subscribe")
        .into_iter()
        .map(|f| match f {
            ClientFrame::Subscribe {
                group, consumer, ..
            } => (group, consumer),
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn group_subscriptions_resubscribe_as_the_same_consumer_and_pass_redeliveries() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.session
        .subscribe_group("jobs", "workers", "w1", Offset::Earliest)
        .unwrap();
    pair.drive();
    let message = |ms| Message {
        offset: StreamId::new(ms, 0),
        fields: body(ms),
    };
    let deliver = |pair: &mut Pair, ms: &[u64]| {
        let frame = ServerFrame::Messages {
            channel: "jobs".into(),
            messages: ms.iter().map(|&m| message(m)).collect(),
        };
        pair.session.handle_frame(frame, pair.now);
        pair.drive();
    };
    deliver(&mut pair, &[5, 6]);
    pair.drop_transport();
    pair.reconnect_within(Duration::from_secs(30));
    // The server redelivers the consumer's pending entries first, older than the last seen.
    deliver(&mut pair, &[5, 7]);
    assert_eq!(
        pair.delivered("jobs"),
        [5, 6, 5, 7].map(|ms| StreamId::new(ms, 0))
    );
    let w1 = (Some("workers".to_owned()), Some("w1".to_owned()));
    assert_eq!(group_subscribes(&pair), [w1.clone(), w1]);
    // A group subscription has no position to persist.
    assert!(pair.session.offsets().is_empty());
}

#[test]
fn acks_get_their_count_and_are_resent_after_a_reconnect() {
    let mut pair = Pair::connected(&["ws://a"]);
    let offsets = vec![StreamId::new(5, 0), StreamId::new(6, 0)];
    let id = pair
        .session
        .ack("jobs", "workers", offsets.clone())
        .unwrap();
    pair.drive();
    assert!(pair
        .events
        .iter()
        .any(|(_, e)| *e == Event::Acked { id, count: 2 }));
    // An ack whose reply is lost with the connection is sent again on the next one.
    pair.server.swallow.insert("ack");
    let id = pair.session.ack("jobs", "workers", offsets).unwrap();
    pair.drive();
    pair.drop_transport();
    pair.server.swallow.clear();
    pair.reconnect_within(Duration::from_secs(30));
    assert!(pair
        .events
        .iter()
        .any(|(_, e)| *e == Event::Acked { id, count: 2 }));
    assert_eq!(pair.server.received_of("ack").len(), 3);
    // Invalid requests never reach the wire.
    assert!(pair.session.ack("jobs", "workers", Vec::new()).is_err());
    assert!(pair
        .session
        .subscribe_group("jobs", "bad group", "w1", Offset::Latest)
        .is_err());
}
