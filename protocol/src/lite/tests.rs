//! Tests of the hand-written codec: encoding like the serde codec, and error wording.

use super::*;
use crate::codec;

#[test]
fn encodes_like_the_serde_codec() {
    let mut fields = Fields::new();
    fields.insert("text".into(), Value::String("hé \"x\"\n".into()));
    fields.insert("n".into(), Value::from(-3.25));
    let frames = [
        ClientFrame::Connect {
            id: 1,
            token: Some("t".into()),
        },
        ClientFrame::Subscribe {
            id: 2,
            channel: "c".into(),
            offset: Some(Offset::Id(StreamId::new(5, 6))),
            group: None,
            consumer: None,
            rewind: None,
            join_leave: true,
        },
        ClientFrame::Publish {
            id: 3,
            channel: "c".into(),
            fields: fields.clone(),
            maxlen: Some(10),
            idempotency_key: None,
        },
        ClientFrame::Ack {
            id: 4,
            channel: "c".into(),
            group: "g".into(),
            offsets: vec![StreamId::new(1, 2), StreamId::new(3, 4)],
        },
    ];
    for frame in frames {
        let ours = encode_client(&frame);
        assert_eq!(
            json::parse(&ours).unwrap(),
            json::parse(&codec::encode_client(&frame)).unwrap()
        );
        assert_eq!(decode_client(&ours).unwrap(), frame);
    }
    let server = [
        ServerFrame::Messages {
            channel: "c".into(),
            messages: vec![Message {
                offset: StreamId::new(1, 0),
                fields,
            }],
        },
        ServerFrame::Error {
            id: None,
            code: ErrorCode::RateLimited,
            message: "slow".into(),
        },
    ];
    for frame in server {
        let ours = encode_server(&frame);
        assert_eq!(
            json::parse(&ours).unwrap(),
            json::parse(&codec::encode_server(&frame)).unwrap()
        );
        assert_eq!(decode_server(&ours).unwrap(), frame);
    }
}

#[test]
fn names_what_is_wrong() {
    let err = |t: &str| decode_server(t).unwrap_err().error;
    assert!(matches!(err("[1]"), ProtocolError::NotJson(_)));
    assert!(matches!(err("{"), ProtocolError::NotJson(_)));
    assert_eq!(err(r#"{"id":1}"#), ProtocolError::MissingType);
    assert!(matches!(err(r#"{"type":"x"}"#), ProtocolError::UnknownType(t) if t == "x"));
    assert!(matches!(
        err(r#"{"type":"gap","channel":"c","from":"1-0","to":"x"}"#),
        ProtocolError::BadOffset(o) if o == "x"
    ));
    assert!(matches!(
        err(r#"{"type":"pong"}"#),
        ProtocolError::InvalidFrame { reason, .. } if reason == "missing field `id`"
    ));
    assert!(matches!(
        err(r#"{"type":"error","code":"nope","message":""}"#),
        ProtocolError::InvalidFrame { reason, .. } if reason.contains("nope")
    ));
    let e = decode_client(r#"{"type":"publish","id":7,"channel":"c","fields":{}}"#);
    assert_eq!(e.unwrap_err().id, Some(7));
}
