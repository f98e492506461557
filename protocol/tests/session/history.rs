//! History requests and rewinding subscribes: outcomes, paging, retries across reconnects,
//! timeouts, local validation, and a rewind that resumes (not rewinds again) after a reconnect.

use std::time::Duration;

use redistribute_protocol::history::{HistoryOptions, Page, MAX_HISTORY_LIMIT, MAX_REWIND};
use redistribute_protocol::session::{Event, RequestError, RequestId, SessionError};
use redistribute_protocol::{ClientFrame, Offset, StreamId};

use crate::harness::{body, ms, offsets, Pair};

/// The page answering `id`, or the failure, if any.
fn outcome(pair: &Pair, id: RequestId) -> Vec<Result<Page, RequestError>> {
    pair.events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::History { id: i, page, .. } if *i == id => Some(Ok(page.clone())),
            Event::RequestFailed { id: i, error } if *i == id => Some(Err(error.clone())),
            _ => None,
        })
        .collect()
}

fn stored(pair: &mut Pair, channel: &str, n: u64) -> Vec<StreamId> {
    (0..n)
        .map(|i| pair.server.append(channel, body(i)))
        .collect()
}

#[test]
fn pages_forwards_and_backwards_through_a_channel() {
    let mut pair = Pair::connected(&["ws://a"]);
    let all = stored(&mut pair, "c", 25);
    for reverse in [false, true] {
        let mut seen = Vec::new();
        let mut options = HistoryOptions {
            limit: Some(10),
            reverse,
            ..HistoryOptions::default()
        };
        loop {
            let id = pair.session.history("c", options).unwrap();
            pair.drive();
            let pages = outcome(&pair, id);
            assert_eq!(pages.len(), 1, "one outcome per request");
            let page = pages[0].clone().unwrap();
            seen.extend(offsets(&page.messages));
            if !page.more {
                break;
            }
            if reverse {
                options.to = Some(page.next);
            } else {
                options.from = Some(Offset::Id(page.next));
            }
        }
        let mut expected = all.clone();
        if reverse {
            expected.reverse();
        }
        assert_eq!(seen, expected, "reverse: {reverse}");
    }
}

#[test]
fn a_history_request_in_flight_is_sent_again_after_a_reconnect() {
    let mut pair = Pair::connected(&["ws://a"]);
    stored(&mut pair, "c", 3);
    pair.server.swallow.insert("history");
    let id = pair
        .session
        .history("c", HistoryOptions::default())
        .unwrap();
    pair.drive();
    assert_eq!(pair.server.received_of("history").len(), 1);
    pair.drop_transport();
    pair.server.swallow.remove("history");
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    assert_eq!(pair.server.received_of("history").len(), 2);
    let pages = outcome(&pair, id);
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0].as_ref().unwrap().messages.len(), 3);
}

#[test]
fn an_unanswered_history_request_times_out_once() {
    let mut pair = Pair::connected(&["ws://a"]);
    pair.server.swallow.insert("history");
    let id = pair
        .session
        .history("c", HistoryOptions::default())
        .unwrap();
    pair.drive();
    pair.advance(Duration::from_secs(10) - ms(1));
    assert!(outcome(&pair, id).is_empty());
    pair.advance(ms(1));
    assert!(matches!(
        outcome(&pair, id).as_slice(),
        [Err(RequestError::Timeout)]
    ));
    pair.advance(Duration::from_secs(30));
    assert_eq!(outcome(&pair, id).len(), 1);
}

#[test]
fn bad_history_and_rewind_requests_never_reach_the_wire() {
    let mut pair = Pair::connected(&["ws://a"]);
    let too_many = HistoryOptions {
        limit: Some(MAX_HISTORY_LIMIT + 1),
        ..HistoryOptions::default()
    };
    let backwards = HistoryOptions {
        from: Some(Offset::Id(StreamId::new(9, 0))),
        to: Some(StreamId::new(8, 0)),
        ..HistoryOptions::default()
    };
    for options in [too_many, backwards] {
        assert!(matches!(
            pair.session.history("c", options),
            Err(SessionError::Invalid(_))
        ));
    }
    assert!(matches!(
        pair.session.history("a b", HistoryOptions::default()),
        Err(SessionError::Invalid(_))
    ));
    assert!(matches!(
        pair.session.subscribe_rewind("c", MAX_REWIND + 1),
        Err(SessionError::Invalid(_))
    ));
    pair.drive();
    assert!(pair.server.received_of("history").is_empty());
    assert!(pair.server.received_of("subscribe").is_empty());
    assert_eq!(pair.session.pending_requests(), 0);
}

#[test]
fn a_rewind_starts_with_the_last_messages_and_resumes_from_its_position() {
    let mut pair = Pair::connected(&["ws://a"]);
    let all = stored(&mut pair, "c", 5);
    pair.session.subscribe_rewind("c", 2).unwrap();
    pair.drive();
    let sent = pair.server.received_of("subscribe");
    assert!(matches!(
        sent.as_slice(),
        [ClientFrame::Subscribe {
            offset: None,
            rewind: Some(2),
            ..
        }]
    ));
    assert_eq!(pair.session.offset("c"), Some(all[4]));
    assert_eq!(pair.delivered("c"), all[3..].to_vec());
    let later = stored(&mut pair, "c", 2);
    pair.drive();
    pair.drop_transport();
    let missed = stored(&mut pair, "c", 2);
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    // The re-subscribe resumes from the position: no rewind, nothing twice, nothing lost.
    let resent = pair.server.received_of("subscribe");
    assert!(matches!(
        resent.last(),
        Some(ClientFrame::Subscribe {
            offset: Some(Offset::Id(p)),
            rewind: None,
            ..
        }) if *p == later[1]
    ));
    let expected: Vec<StreamId> = all[3..]
        .iter()
        .chain(&later)
        .chain(&missed)
        .copied()
        .collect();
    assert_eq!(pair.delivered("c"), expected);
}

#[test]
fn a_rewind_unanswered_when_the_connection_drops_rewinds_again() {
    let mut pair = Pair::connected(&["ws://a"]);
    let all = stored(&mut pair, "c", 4);
    pair.server.swallow.insert("subscribe");
    pair.session.subscribe_rewind("c", 1).unwrap();
    pair.drive();
    pair.drop_transport();
    pair.server.swallow.remove("subscribe");
    pair.reconnect_within(Duration::from_secs(5));
    pair.drive();
    let sent = pair.server.received_of("subscribe");
    assert_eq!(sent.len(), 2);
    assert!(sent.iter().all(|f| matches!(
        f,
        ClientFrame::Subscribe {
            rewind: Some(1),
            offset: None,
            ..
        }
    )));
    assert_eq!(pair.delivered("c"), vec![all[3]]);
}

#[test]
fn a_rewind_of_more_than_the_channel_holds_delivers_all_of_it() {
    let mut pair = Pair::connected(&["ws://a"]);
    let all = stored(&mut pair, "c", 3);
    pair.session.subscribe_rewind("c", 10).unwrap();
    pair.drive();
    assert_eq!(pair.delivered("c"), all);
    let empty = pair.session.subscribe_rewind("d", 10).unwrap();
    pair.drive();
    assert!(pair
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Subscribed { id, offset, .. } if *id == empty && *offset == StreamId::ZERO)));
    let next = stored(&mut pair, "d", 1);
    pair.drive();
    assert_eq!(pair.delivered("d"), next);
}
