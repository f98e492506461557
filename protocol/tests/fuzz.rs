//! A bounded fuzz harness for everything that parses untrusted input: the client and server
//! frame decoders, offsets and channel names. It feeds random bytes, random JSON built from the
//! protocol's own vocabulary, and mutations of the golden vectors; each input must either be
//! rejected with an error or decode to a frame that re-encodes and decodes to itself — never
//! panic. The random source is seeded, so a failure names the seed and iteration to replay;
//! each crash found becomes a fixed case in `regressions()`.
//!
//! Longer runs: `FUZZ_ITERATIONS=10000000 cargo test -p redistribute-protocol --test fuzz --release`.

use redistribute_protocol::{
    decode_client, decode_server, encode_client, encode_server, lite, validate_channel,
    DecodeError, Offset,
};

/// splitmix64: small, seedable, good enough to drive a fuzzer.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

const KEYS: &[&str] = &[
    "type",
    "id",
    "channel",
    "offset",
    "fields",
    "maxlen",
    "idempotency_key",
    "group",
    "consumer",
    "offsets",
    "token",
    "messages",
    "from",
    "to",
    "code",
    "message",
    "truncated",
    "client",
    "version",
    "count",
    "rewind",
    "limit",
    "reverse",
    "next",
    "more",
    "gap",
    "join_leave",
    "members",
    "joins",
    "leaves",
    "missed",
    "clients",
    "users",
    "user",
    "info",
];
const TYPES: &[&str] = &[
    "connect",
    "subscribe",
    "unsubscribe",
    "publish",
    "ack",
    "ping",
    "subscribed",
    "messages",
    "gap",
    "error",
    "published",
    "pong",
    "acked",
    "connected",
    "unsubscribed",
    "history",
    "history_page",
    "presence",
    "presence_stats",
    "presence_members",
    "presence_counts",
    "presence_event",
    "x",
];
const ATOMS: &[&str] = &[
    "0",
    "1",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1.5",
    "1e3",
    "true",
    "false",
    "1000",
    "1001",
    "null",
    "\"\"",
    "\"$\"",
    "\"0\"",
    "\"1-2\"",
    "\"1-\"",
    "\"a b\"",
    "\"chat\"",
    "\"x-1\"",
    "\"99999999999999999999-0\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "[]",
    "{}",
    "{\"from\":\"1-2\",\"to\":\"3-4\"}",
    "[\"1-2\"]",
    "\"bad_request\"",
    "\"unavailable\"",
    "[{\"client\":\"c\"}]",
    "[{\"client\":\"c\",\"info\":{}}]",
    "[{\"client\":1}]",
];

fn random_value(rng: &mut Rng, depth: usize) -> String {
    match if depth > 3 { 0 } else { rng.below(4) } {
        0 => rng.pick(ATOMS).to_owned(),
        1 => format!("\"{}\"", rng.pick(TYPES)),
        2 => {
            let items: Vec<String> = (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect();
            format!("[{}]", items.join(","))
        }
        _ => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> String {
    let mut parts = Vec::new();
    if rng.below(4) != 0 {
        parts.push(format!("\"type\":\"{}\"", rng.pick(TYPES)));
    }
    for _ in 0..rng.below(6) {
        parts.push(format!(
            "\"{}\":{}",
            rng.pick(KEYS),
            random_value(rng, depth)
        ));
    }
    format!("{{{}}}", parts.join(","))
}

fn mutate(rng: &mut Rng, text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..1 + rng.below(4) {
        if bytes.is_empty() {
            break;
        }
        let i = rng.below(bytes.len());
        match rng.below(4) {
            0 => bytes[i] = rng.next() as u8,
            1 => {
                bytes.remove(i);
            }
            2 => bytes.insert(i, b"{}[]\",:0-$\\"[rng.below(11)]),
            _ => bytes.truncate(i),
        }
    }
    bytes
}

/// Checks one input against every parser.
fn check(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Ok(frame) = decode_client(text) {
        let again = decode_client(&encode_client(&frame)).expect("a decoded frame re-decodes");
        assert_eq!(again, frame, "client round trip of {text:?}");
    }
    if let Ok(frame) = decode_server(text) {
        let again = decode_server(&encode_server(&frame)).expect("a decoded frame re-decodes");
        assert_eq!(again, frame, "server round trip of {text:?}");
    }
    if let Ok(offset) = Offset::parse(text) {
        assert_eq!(Offset::parse(&offset.to_string()), Ok(offset), "{text:?}");
    }
    let _ = validate_channel(text);
    same_as_lite(text);
}

/// Whether some object of a JSON text repeats a key.
fn has_duplicate_key(text: &str) -> bool {
    use serde::de::{Deserialize, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> Deserialize<'de> for Unique {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(Unique)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = Unique;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_unit<E>(self) -> Result<Unique, E> {
            Ok(Unique)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
            while seq.next_element::<Unique>()?.is_some() {}
            Ok(Unique)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
            let mut keys = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !keys.insert(key) {
                    return Err(A::Error::custom("repeated key"));
                }
                map.next_value::<Unique>()?;
            }
            Ok(Unique)
        }
    }
    matches!(serde_json::from_str::<Unique>(text), Err(e) if e.to_string().contains("repeated key"))
}

/// The hand-written codec (`lite`, the browser client's) accepts exactly what the serde codec
/// accepts, decodes it to the same frame, and reads the same request id from what it refuses.
/// The one designed difference: a repeated key, which serde refuses and `lite` takes the last
/// of (as `JSON.parse` does).
fn same_as_lite(text: &str) {
    let duplicates = has_duplicate_key(text);
    let serde_refuses_duplicate = |_: &DecodeError| duplicates;
    match (decode_client(text), lite::decode_client(text)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "client frame of {text:?}");
            assert_eq!(lite::decode_client(&lite::encode_client(&a)), Ok(a));
        }
        (Err(a), Err(b)) => assert_eq!(a.id, b.id, "client error id of {text:?}: {a:?} {b:?}"),
        (Err(a), Ok(_)) if serde_refuses_duplicate(&a) => {}
        (a, b) => panic!("client codecs disagree on {text:?}: {a:?} vs {b:?}"),
    }
    match (decode_server(text), lite::decode_server(text)) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "server frame of {text:?}");
            assert_eq!(lite::decode_server(&lite::encode_server(&a)), Ok(a));
        }
        (Err(_), Err(_)) => {}
        (Err(a), Ok(_)) if serde_refuses_duplicate(&a) => {}
        (a, b) => panic!("server codecs disagree on {text:?}: {a:?} vs {b:?}"),
    }
}

fn golden_texts() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors");
    let mut texts = Vec::new();
    for sub in ["client", "server", "bad"] {
        let Ok(entries) = std::fs::read_dir(format!("{dir}/{sub}")) else {
            continue;
        };
        for entry in entries.flatten() {
            if let Ok(text) = std::fs::read_to_string(entry.path()) {
                texts.push(text);
            }
        }
    }
    texts
}

/// Inputs that once broke a parser (keep adding here).
fn regressions() -> Vec<String> {
    let deep = format!(
        "{{\"type\":\"publish\",\"id\":1,\"channel\":\"c\",\"fields\":{{\"a\":{}1{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let mut cases: Vec<String> = vec![
        // Offsets whose parts overflow u64.
        r#"{"type":"subscribe","id":1,"channel":"c","offset":"18446744073709551616-0"}"#,
        // An id that is a float, and one beyond u64.
        r#"{"type":"ping","id":1.0}"#,
        r#"{"type":"ping","id":18446744073709551616}"#,
        // Lone surrogates and NULs in strings.
        r#"{"type":"subscribe","id":1,"channel":"\ud800"}"#,
        "{\"type\":\"publish\",\"id\":1,\"channel\":\"c\",\"fields\":{\"\\u0000\":1}}",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    // Nesting deeper than serde_json's recursion limit must be an error, not a stack overflow.
    cases.push(deep);
    cases
}

#[test]
fn parsers_never_panic() {
    for text in regressions() {
        check(text.as_bytes());
    }
    let iterations: usize = std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_u64);
    let golden = golden_texts();
    assert!(!golden.is_empty(), "golden vectors not found");
    let mut rng = Rng(seed);
    for i in 0..iterations {
        let input: Vec<u8> = match rng.below(3) {
            0 => (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
            1 => random_object(&mut rng, 0).into_bytes(),
            _ => {
                let base = &golden[rng.below(golden.len())];
                mutate(&mut rng, base)
            }
        };
        let result = std::panic::catch_unwind(|| check(&input));
        assert!(
            result.is_ok(),
            "seed {seed} iteration {i}: parser panicked on {:?}",
            String::from_utf8_lossy(&input)
        );
    }
}
