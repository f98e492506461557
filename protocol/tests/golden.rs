//! Golden vectors of wire protocol v1 (`tests/vectors/`), shared with other implementations
//! (the browser client's tests, third-party clients).
//!
//! * `client/*.json`, `server/*.json`: each file is one frame exactly as on the wire. It must
//!   decode, and re-encoding the decoded frame must give the same JSON value (field order and
//!   whitespace aside). Together they cover every frame type.
//! * `bad/*.json`: `{"side": "client"|"server", "text": "<wire text>", "error": "<kind>",
//!   "code": "<wire code>", "id": <id or null>}`: decoding `text` must fail with that error kind,
//!   wire code, and readable request id.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use redistribute_protocol::{
    codec::{CLIENT_FRAME_TYPES, SERVER_FRAME_TYPES},
    decode_client, decode_server, encode_client, encode_server, lite, DecodeError, ProtocolError,
};
use serde_json::Value;

/// The `.json` files of a vector folder, sorted.
fn vectors(folder: &str) -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(folder);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no vectors in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("vector file is JSON")
}

/// Decodes and re-encodes every vector of a side; returns the frame types seen.
fn round_trip(
    folder: &str,
    codec: impl Fn(&str) -> Result<String, DecodeError>,
) -> BTreeSet<String> {
    let mut types = BTreeSet::new();
    for (path, text) in vectors(folder) {
        let text = text.trim_end();
        let encoded = codec(text).unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
        assert_eq!(json(&encoded), json(text), "{}", path.display());
        let kind = json(text)["type"].as_str().unwrap().to_owned();
        types.insert(kind);
    }
    types
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn client_vectors_round_trip_and_cover_every_frame() {
    let types = round_trip("client", |t| decode_client(t).map(|f| encode_client(&f)));
    assert_eq!(types, set(CLIENT_FRAME_TYPES));
}

#[test]
fn server_vectors_round_trip_and_cover_every_frame() {
    let types = round_trip("server", |t| decode_server(t).map(|f| encode_server(&f)));
    assert_eq!(types, set(SERVER_FRAME_TYPES));
}

#[test]
fn vectors_round_trip_through_the_lite_codec() {
    let types = round_trip("client", |t| {
        let frame = lite::decode_client(t)?;
        assert_eq!(decode_client(t).as_ref(), Ok(&frame));
        Ok(lite::encode_client(&frame))
    });
    assert_eq!(types, set(CLIENT_FRAME_TYPES));
    let types = round_trip("server", |t| {
        let frame = lite::decode_server(t)?;
        assert_eq!(decode_server(t).as_ref(), Ok(&frame));
        Ok(lite::encode_server(&frame))
    });
    assert_eq!(types, set(SERVER_FRAME_TYPES));
}

#[test]
fn vectors_of_one_side_are_not_frames_of_the_other() {
    for (path, text) in vectors("client") {
        let err = decode_server(&text).unwrap_err();
        assert!(
            matches!(err.error, ProtocolError::UnknownType(_)),
            "{}",
            path.display()
        );
    }
    for (path, text) in vectors("server") {
        assert!(decode_client(&text).is_err(), "{}", path.display());
    }
}

/// The vector name of a decode error.
fn kind(error: &ProtocolError) -> &'static str {
    match error {
        ProtocolError::NotJson(_) => "not_json",
        ProtocolError::MissingType => "missing_type",
        ProtocolError::UnknownType(_) => "unknown_type",
        ProtocolError::InvalidFrame { .. } => "invalid_frame",
        ProtocolError::BadOffset(_) => "bad_offset",
        ProtocolError::BadChannel(_) => "bad_channel",
    }
}

#[test]
fn bad_vectors_fail_as_expected() {
    let mut kinds = BTreeSet::new();
    for (path, file) in vectors("bad") {
        let name = path.display();
        let case = json(&file);
        let text = case["text"].as_str().expect("text");
        let (result, lite) = match case["side"].as_str() {
            Some("client") => (
                decode_client(text).map(|_| ()),
                lite::decode_client(text).map(|_| ()),
            ),
            Some("server") => (
                decode_server(text).map(|_| ()),
                lite::decode_server(text).map(|_| ()),
            ),
            other => panic!("{name}: bad side {other:?}"),
        };
        let lite = lite.expect_err(&format!("{name} must not decode (lite)"));
        assert_eq!(
            kind(&lite.error),
            case["error"],
            "{name} (lite): {:?}",
            lite.error
        );
        assert_eq!(lite.id, case["id"].as_u64(), "{name} (lite)");
        let err = result.expect_err(&format!("{name} must not decode"));
        assert_eq!(kind(&err.error), case["error"], "{name}: {:?}", err.error);
        assert_eq!(err.error.code().as_str(), case["code"], "{name}");
        assert_eq!(err.id, case["id"].as_u64(), "{name}");
        assert!(!err.error.to_string().is_empty());
        kinds.insert(kind(&err.error));
    }
    let all = [
        "not_json",
        "missing_type",
        "unknown_type",
        "invalid_frame",
        "bad_offset",
        "bad_channel",
    ];
    assert_eq!(
        kinds,
        all.into_iter().collect(),
        "every error kind has a vector"
    );
}
