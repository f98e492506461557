//! The fallback driving a real [`Session`] against a model of the server's `/sse` and
//! `/publish`: the frames the session sees, and exactly-once delivery across stream drops,
//! subscription changes and chunks cut anywhere.

use std::time::Duration;

mod model;

use super::*;
use crate::codec::encode_client;
use crate::session::{Action, Config, Event, PublishOptions, RequestError, Session};

/// A session, its fallback and what came out of them.
struct Harness {
    session: Session,
    fallback: Fallback,
    now: Duration,
    events: Vec<Event>,
    ops: Vec<Op>,
}

impl Harness {
    fn new() -> Harness {
        let mut config = Config::new(["ws://h:1/app/ws?x=1"]);
        config.backoff_initial = Duration::from_millis(10);
        config.backoff_max = Duration::from_millis(10);
        Harness {
            session: Session::new(config, 7).unwrap(),
            fallback: Fallback::new("ws://h:1/app/ws?x=1"),
            now: Duration::ZERO,
            events: Vec::new(),
            ops: Vec::new(),
        }
    }

    /// What a driver does after every input: until both are quiet.
    fn pump(&mut self) {
        loop {
            let mut busy = false;
            while let Some(action) = self.session.poll_action() {
                busy = true;
                match action {
                    Action::Connect { .. } => {
                        self.fallback.reset();
                        self.session.handle_transport_open(self.now);
                    }
                    Action::Close => self.fallback.reset(),
                    Action::RefreshToken => {}
                }
            }
            while let Some(frame) = self.session.poll_transmit() {
                busy = true;
                self.fallback.send(frame);
            }
            for input in self.fallback.take_inputs() {
                busy = true;
                match input {
                    Input::Frame(f) => self.session.handle_frame(f, self.now),
                    Input::Text(t) => self.session.handle_text(&t, self.now),
                    Input::Closed(r) => self.session.handle_transport_closed(self.now, r),
                }
            }
            for op in self.fallback.take_ops() {
                busy = true;
                self.ops.push(op);
            }
            while let Some(e) = self.session.poll_event() {
                busy = true;
                self.events.push(e);
            }
            if !busy {
                return;
            }
        }
    }

    /// Lets time pass by `ms` (timers fire).
    fn wait(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.session.handle_timeout(self.now);
        self.pump();
    }

    fn start(&mut self) {
        self.session.connect(self.now);
        self.pump();
    }

    /// The last `Open` op: its epoch and URL.
    fn last_open(&self) -> (u64, String) {
        self.ops
            .iter()
            .rev()
            .find_map(|op| match op {
                Op::Open { epoch, url, .. } => Some((*epoch, url.clone())),
                _ => None,
            })
            .expect("a stream was opened")
    }

    fn data(&mut self, text: &str) {
        let (epoch, _) = self.last_open();
        self.fallback.stream_data(epoch, text.as_bytes());
        self.pump();
    }

    /// The session's events so far, without its state announcements (the session's own
    /// tests check those).
    fn take_events(&mut self) -> Vec<Event> {
        let mut events = std::mem::take(&mut self.events);
        events.retain(|e| !matches!(e, Event::State { .. } | Event::SubscriptionState { .. }));
        events
    }
}

/// Whether a request failed with the server's `code`.
fn failed_with(events: &[Event], code: ErrorCode) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::RequestFailed { error: RequestError::Server { code: c, .. }, .. } if *c == code)
    })
}

fn id(ms: u64) -> StreamId {
    StreamId::new(ms, 0)
}

fn message(channel: &str, token: &str, ms: u64) -> String {
    format!(
        "event: message\nid: {token}\ndata: {{\"channel\":\"{channel}\",\"offset\":\"{ms}-0\",\"fields\":{{\"n\":{ms}}}}}\n\n"
    )
}

#[test]
fn http_base_maps_the_websocket_target() {
    assert_eq!(http_base("ws://h:1/ws"), "http://h:1/");
    assert_eq!(http_base("wss://h/app/ws?token=x#y"), "https://h/app/");
    assert_eq!(http_base("ws://h:1"), "http://h:1/");
    assert_eq!(http_base("https://h/a/ws"), "https://h/a/");
    assert_eq!(http_base("wss://h:2/"), "https://h:2/");
}

#[test]
fn the_reader_gives_the_same_events_whatever_the_chunks() {
    let text = "retry: 2000\r\n\r\n: heartbeat\n\nevent: gap\ndata: {\"a\":1}\n\nid: 1-0,2-0\n\n\
                event: message\nid: 3-0\ndata: x\ndata: y\nunknown: z\n\n";
    let mut whole = Vec::new();
    SseReader::default()
        .push(text.as_bytes(), &mut whole)
        .unwrap();
    assert_eq!(
        whole,
        [
            SseEvent {
                event: "gap".into(),
                data: "{\"a\":1}".into(),
                id: None
            },
            SseEvent {
                event: "message".into(),
                data: String::new(),
                id: Some("1-0,2-0".into())
            },
            SseEvent {
                event: "message".into(),
                data: "x\ny".into(),
                id: Some("3-0".into())
            },
        ]
    );
    for cut in 0..text.len() {
        let mut reader = SseReader::default();
        let mut got = Vec::new();
        reader.push(&text.as_bytes()[..cut], &mut got).unwrap();
        reader.push(&text.as_bytes()[cut..], &mut got).unwrap();
        assert_eq!(got, whole, "cut at {cut}");
    }
    let mut got = Vec::new();
    assert_eq!(
        SseReader::default().push(b"data: \xff\n", &mut got),
        Err(SseError::NotUtf8)
    );
}

#[test]
fn subscribes_reopen_the_stream_from_exact_positions() {
    let mut h = Harness::new();
    h.session.subscribe("a", Offset::Latest).unwrap();
    h.start();
    let (_, url) = h.last_open();
    assert_eq!(url, "http://h:1/app/sse?channel=a&offset=%24");
    h.data("retry: 2000\n\nid: 5-0\n\n");
    assert!(h.take_events().iter().any(
        |e| matches!(e, Event::Subscribed { channel, offset, truncated: false, .. } if channel == "a" && *offset == id(5))
    ));
    h.data(&message("a", "6-0", 6));
    // b, from the start: the stream is re-opened with a at its last position.
    h.session.subscribe("b", Offset::Earliest).unwrap();
    h.pump();
    let (_, url) = h.last_open();
    assert_eq!(
        url,
        "http://h:1/app/sse?channel=a&offset=6-0&channel=b&offset=0"
    );
    // The opening's gap for b comes after b's `subscribed`, so the session takes it.
    h.data(
        "event: gap\ndata: {\"channel\":\"b\",\"from\":\"0-0\",\"to\":\"2-0\"}\n\nid: 6-0,2-0\n\n",
    );
    h.data(&message("b", "6-0,3-0", 3));
    h.data(&message("a", "7-0,3-0", 7));
    let events = h.take_events();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::Messages { channel, messages } => format!("{channel}:{}", messages[0].offset),
            Event::Subscribed {
                channel, offset, ..
            } => format!("sub {channel}@{offset}"),
            Event::Gap { channel, to, .. } => format!("gap {channel} {to}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(kinds, ["a:6-0", "sub b@2-0", "gap b 2-0", "b:3-0", "a:7-0"]);
    h.session.unsubscribe("a").unwrap();
    h.pump();
    assert_eq!(h.last_open().1, "http://h:1/app/sse?channel=b&offset=3-0");
    h.data("id: 3-0\n\n");
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Unsubscribed { channel, .. } if channel == "a")));
    // The last channel unsubscribed: the stream is aborted, the answer comes at once.
    h.session.unsubscribe("b").unwrap();
    h.pump();
    assert_eq!(h.ops.last(), Some(&Op::Abort));
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Unsubscribed { channel, .. } if channel == "b")));
}

#[test]
fn a_dropped_stream_reconnects_from_the_positions() {
    let mut h = Harness::new();
    h.session.subscribe("a", Offset::Earliest).unwrap();
    h.start();
    h.data("id: 0-0\n\n");
    h.data(&message("a", "4-0", 4));
    let (epoch, _) = h.last_open();
    h.fallback.stream_ended(epoch, "network error");
    h.pump();
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    // Late bytes of the dead stream are ignored.
    h.fallback
        .stream_data(epoch, message("a", "5-0", 5).as_bytes());
    h.pump();
    assert!(!h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Messages { .. })));
    h.wait(50);
    assert_eq!(h.last_open().1, "http://h:1/app/sse?channel=a&offset=4-0");
    h.data("id: 4-0\n\n");
    // A repeat of what was delivered is dropped by the session; the next one passes.
    h.data(&message("a", "4-0", 4));
    h.data(&message("a", "5-0", 5));
    let got: Vec<StreamId> = h
        .take_events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Messages { messages, .. } => Some(messages[0].offset),
            _ => None,
        })
        .collect();
    assert_eq!(got, [id(5)]);
}

#[test]
fn publishes_post_and_resend_with_their_key_after_a_loss() {
    let mut h = Harness::new();
    h.start();
    let mut fields = crate::Fields::new();
    fields.insert("n".into(), 1.into());
    let first = h
        .session
        .publish("a", fields.clone(), PublishOptions::default())
        .unwrap();
    h.pump();
    let post = |h: &Harness| {
        h.ops
            .iter()
            .rev()
            .find_map(|op| match op {
                Op::Post {
                    conn,
                    id,
                    url,
                    frame,
                    ..
                } => Some((*conn, *id, url.clone(), frame.clone())),
                _ => None,
            })
            .unwrap()
    };
    let (conn, pid, url, frame) = post(&h);
    assert_eq!(url, "http://h:1/app/publish");
    assert_eq!(pid, first.get());
    let ClientFrame::Publish {
        idempotency_key: Some(key),
        ..
    } = &frame
    else {
        panic!("a publish with a key: {frame:?}");
    };
    // No answer: the transport is lost; the session posts it again with the same key.
    h.fallback.post_failed(conn, pid, "Failed to fetch");
    h.pump();
    h.wait(50);
    let (conn2, pid2, _, frame2) = post(&h);
    assert_ne!(conn2, conn);
    assert_eq!(pid2, pid);
    assert_eq!(encode_client(&frame2), encode_client(&frame));
    assert!(encode_client(&frame2).contains(key.as_str()));
    h.fallback
        .post_response(conn2, pid2, 200, r#"{"offset":"9-1"}"#);
    h.pump();
    assert!(h.take_events().iter().any(
        |e| matches!(e, Event::Published { channel, offset, .. } if channel == "a" && *offset == StreamId::new(9, 1))
    ));
    // An error body is the request's error.
    let second = h
        .session
        .publish("a", fields, PublishOptions::default())
        .unwrap();
    h.pump();
    let (conn, pid, _, _) = post(&h);
    assert_eq!(pid, second.get());
    let body = r#"{"error":{"code":"too_large","message":"fields too big"}}"#;
    h.fallback.post_response(conn, pid, 413, body);
    h.pump();
    let events = h.take_events();
    assert!(failed_with(&events, ErrorCode::TooLarge), "{events:?}");
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
}

#[test]
fn refused_subscribes_are_told_apart() {
    let mut h = Harness::new();
    h.start();
    h.session.subscribe("ok", Offset::Latest).unwrap();
    h.session.subscribe("secret", Offset::Latest).unwrap();
    h.pump();
    let (epoch, url) = h.last_open();
    assert!(
        url.contains("channel=ok") && url.contains("channel=secret"),
        "{url}"
    );
    let forbidden = r#"{"error":{"code":"forbidden","message":"not allowed"}}"#;
    h.fallback.stream_refused(epoch, 403, forbidden);
    h.pump();
    // One by one: `ok` alone opens fine.
    let (_, url) = h.last_open();
    assert_eq!(url, "http://h:1/app/sse?channel=ok&offset=%24");
    h.data("id: 1-0\n\n");
    let (epoch, url) = h.last_open();
    assert_eq!(
        url,
        "http://h:1/app/sse?channel=ok&offset=1-0&channel=secret&offset=%24"
    );
    h.fallback.stream_refused(epoch, 403, forbidden);
    h.pump();
    assert_eq!(h.last_open().1, "http://h:1/app/sse?channel=ok&offset=1-0");
    h.data("id: 1-0\n\n");
    let events = h.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Subscribed { channel, .. } if channel == "ok")));
    assert!(failed_with(&events, ErrorCode::Forbidden));
    assert_eq!(h.session.subscriptions().collect::<Vec<_>>(), ["ok"]);
    // A proxy's page instead of the server's error: the transport is lost.
    let (epoch, _) = h.last_open();
    h.fallback.stream_ended(epoch, "gone");
    h.pump();
    h.wait(50);
    let (epoch, _) = h.last_open();
    h.fallback
        .stream_refused(epoch, 403, "<html>blocked</html>");
    h.pump();
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::ConnectFailed { .. } | Event::Disconnected { .. })));
}

#[test]
fn truncation_and_bad_streams() {
    let mut h = Harness::new();
    h.session.subscribe("a", Offset::Id(id(9))).unwrap();
    h.start();
    h.data("event: truncated\ndata: {\"channel\":\"a\",\"offset\":\"0-0\"}\n\nid: 0-0\n\n");
    assert!(h.take_events().iter().any(
        |e| matches!(e, Event::Subscribed { channel, truncated: true, offset, .. } if channel == "a" && *offset == StreamId::new(0, 0))
    ));
    // A flowing channel truncated in a re-opening: a new connection re-subscribes it.
    h.session.subscribe("b", Offset::Latest).unwrap();
    h.pump();
    h.data("event: truncated\ndata: {\"channel\":\"a\",\"offset\":\"0-0\"}\n\nid: 0-0,3-0\n\n");
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    h.wait(50);
    for bad in [
        "id: 1-0\n\n",                  // one position for two channels
        "id: x,1-0\n\n",                // not an offset
        "event: nope\ndata: {}\n\n",    // an unknown event
        "event: message\ndata: {}\n\n", // a message before the resume token
    ] {
        h.data(bad);
        let events = h.take_events();
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::Disconnected {
                    reason: DisconnectReason::BadFrame { .. }
                }
            )),
            "{bad:?}: {events:?}"
        );
        h.wait(100);
    }
    // The token expired: the stream's error event ends the transport with its code.
    h.data("id: 1-0,1-0\n\n");
    h.data("event: error\ndata: {\"error\":{\"code\":\"unauthorized\",\"message\":\"token expired\"}}\n\n");
    let events = h.take_events();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Disconnected {
                reason: DisconnectReason::Rejected {
                    code: ErrorCode::Unauthorized,
                    ..
                }
            }
        )),
        "{events:?}"
    );
}

#[test]
fn groups_and_acks_are_refused() {
    let mut h = Harness::new();
    h.start();
    h.session
        .subscribe_group("jobs", "g", "c1", Offset::Latest)
        .unwrap();
    h.pump();
    let events = h.take_events();
    assert!(failed_with(&events, ErrorCode::BadRequest), "{events:?}");
    assert!(!h.ops.iter().any(|op| matches!(op, Op::Open { .. })));
}

#[test]
fn pings_wait_for_the_stream_to_speak() {
    let mut h = Harness::new();
    h.start();
    // No stream: answered at once.
    let ping = h.session.ping().unwrap();
    h.pump();
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Pong { id } if *id == ping)));
    h.session.subscribe("a", Offset::Latest).unwrap();
    h.pump();
    h.data("id: 1-0\n\n");
    // The opening was heard: the first ping is answered at once, the next waits.
    let first = h.session.ping().unwrap();
    h.pump();
    let second = h.session.ping().unwrap();
    h.pump();
    let events = h.take_events();
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Pong { id } if *id == first)));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Event::Pong { id } if *id == second)));
    h.data(": heartbeat\n\n");
    assert!(h
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Pong { id } if *id == second)));
}

#[test]
fn sse_error_messages_name_the_limit() {
    let too_long = SseError::LineTooLong.to_string();
    assert!(too_long.contains(&MAX_LINE.to_string()), "{too_long}");
    assert_eq!(SseError::NotUtf8.to_string(), SseError::NotUtf8.message());
}
