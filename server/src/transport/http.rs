//! What the HTTP transports share: JSON errors with status codes, query parsing (channels
//! paired with offsets), message encoding in the WebSocket message shape, and the per-key
//! holder registry that lets a newer request of the same user replace an older one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use redistribute_protocol::{validate_channel, ErrorCode, Offset, StreamId};
use tokio_util::sync::CancellationToken;

use crate::error::RequestError;
use crate::request::Subscribe;

/// An error answer: status code plus `{"error":{"code","message"}}`.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl HttpError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        HttpError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `400 bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// `409 replaced`: a newer request with the same key took over.
    pub fn replaced(message: impl Into<String>) -> Self {
        HttpError::new(StatusCode::CONFLICT, "replaced", message)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({"error": {"code": self.code, "message": self.message}}).to_string()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let body = self.body();
        (
            self.status,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl From<RequestError> for HttpError {
    fn from(err: RequestError) -> Self {
        let (code, message) = match err {
            RequestError::Protocol { code, message } => (code, message),
            RequestError::Socket => (ErrorCode::Internal, "internal server error".into()),
        };
        let status = match code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError::new(status, code.as_str(), message)
    }
}

/// The decoded `key=value` pairs of a query string, in order.
pub(crate) fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The value of the last `key` in the pairs.
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// The channels a request names (`channel=` repeated) with their starting offsets (`offset=`:
/// none means `$` for all, one applies to all, otherwise one per channel in the same order).
pub(crate) fn channels_with_offsets(
    pairs: &[(String, String)],
) -> Result<Vec<(String, Offset)>, HttpError> {
    let channels: Vec<&str> = values(pairs, "channel");
    if channels.is_empty() {
        return Err(HttpError::bad_request(
            "name at least one channel with channel=",
        ));
    }
    for channel in &channels {
        validate_channel(channel).map_err(|e| HttpError::bad_request(e.to_string()))?;
    }
    let offsets = values(pairs, "offset")
        .into_iter()
        .map(|o| Offset::parse(o).map_err(|e| HttpError::bad_request(e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    let offsets = match offsets.len() {
        0 => vec![Offset::Latest; channels.len()],
        1 => vec![offsets[0]; channels.len()],
        n if n == channels.len() => offsets,
        n => {
            return Err(HttpError::bad_request(format!(
                "{n} offsets for {} channels: give none, one, or one per channel",
                channels.len()
            )))
        }
    };
    let mut seen = std::collections::HashSet::new();
    if let Some(dup) = channels.iter().find(|c| !seen.insert(**c)) {
        return Err(HttpError::bad_request(format!(
            "channel {dup:?} is named twice"
        )));
    }
    Ok(channels
        .into_iter()
        .map(str::to_owned)
        .zip(offsets)
        .collect())
}

/// The plain subscribes a request names ([`channels_with_offsets`]).
pub(crate) fn subscribes(pairs: &[(String, String)]) -> Result<Vec<Subscribe>, HttpError> {
    Ok(channels_with_offsets(pairs)?
        .into_iter()
        .map(|(channel, offset)| Subscribe {
            channel,
            offset,
            group: None,
            rewind: None,
            join_leave: false,
        })
        .collect())
}

/// Longest numeric query value accepted, in characters.
const MAX_NUMBER_CHARS: usize = 32;

/// Parses a duration query parameter `name`: a plain decimal number of seconds (`0`, `25`,
/// `2.5`), capped at `max`. Anything else (empty, signs, exponents, `inf`, `NaN`, over 32
/// characters) is `400`.
pub(crate) fn parse_seconds(name: &str, value: &str, max: Duration) -> Result<Duration, HttpError> {
    let bad = || {
        HttpError::bad_request(format!(
            "{name} must be a plain decimal number of seconds such as 25 or 2.5 (larger than \
             {} is capped to it), not {value:?}",
            max.as_secs_f64()
        ))
    };
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if value.len() > MAX_NUMBER_CHARS || !digits(whole) || !digits(fraction) {
        return Err(bad());
    }
    let secs: f64 = value.parse().map_err(|_| bad())?;
    // Cap before converting: a `Duration` cannot hold every finite f64.
    if secs >= max.as_secs_f64() {
        return Ok(max);
    }
    Duration::try_from_secs_f64(secs).map_err(|_| bad())
}

/// Parses a count query parameter `name`: plain decimal digits within `range`; anything else
/// (empty, signs, fractions, exponents, out of range) is `400`.
pub(crate) fn parse_count(
    name: &str,
    value: &str,
    range: std::ops::RangeInclusive<usize>,
) -> Result<usize, HttpError> {
    let bad = || {
        HttpError::bad_request(format!(
            "{name} must be a whole number from {} to {}, not {value:?}",
            range.start(),
            range.end()
        ))
    };
    if value.is_empty()
        || value.len() > MAX_NUMBER_CHARS
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    // All digits: the only parse failure left is overflow, which is out of range too.
    value
        .parse::<usize>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(bad)
}

fn values<'a>(pairs: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Appends `{"channel":"<channel>","offset":…,"fields":…}` given an encoded entry
/// (`{"offset":…,"fields":…}`). Channel names need no JSON escaping.
pub(crate) fn push_message(out: &mut String, channel: &str, entry: &str) {
    out.push_str("{\"channel\":\"");
    out.push_str(channel);
    out.push_str("\",");
    out.push_str(&entry[1..]);
}

/// A gap as JSON: `{"channel","from","to"}` (the channel's entries in `(from, to]` are missed).
pub(crate) fn gap_json(channel: &str, from: StreamId, to: StreamId) -> String {
    // Channel names are validated: no JSON escaping needed.
    format!("{{\"channel\":\"{channel}\",\"from\":\"{from}\",\"to\":\"{to}\"}}")
}

/// Appends `"offsets":{"<channel>":"<offset>",…}` (no surrounding braces).
pub(crate) fn push_offsets<'a>(
    out: &mut String,
    offsets: impl IntoIterator<Item = (&'a str, StreamId)>,
) {
    out.push_str("\"offsets\":{");
    for (i, (channel, offset)) in offsets.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        out.push_str(channel);
        out.push_str("\":\"");
        out.push_str(&offset.to_string());
        out.push('"');
    }
    out.push('}');
}

/// Who holds each key (a long-poll `client_id`, a task id) and for which user: a claim by the
/// same user cancels the previous holder's token; a claim by another user is refused.
#[derive(Debug, Default)]
pub struct Holders {
    inner: Mutex<HashMap<String, Holder>>,
    next: AtomicU64,
}

#[derive(Debug)]
struct Holder {
    id: u64,
    /// The user ([`crate::auth::AuthContext::owner`]).
    owner: Option<String>,
    replaced: CancellationToken,
}

/// A claim on a key; released on drop (unless a newer claim replaced it).
#[derive(Debug)]
pub struct HolderGuard {
    holders: Arc<Holders>,
    key: String,
    id: u64,
    /// Cancelled when a newer request claims the same key.
    pub replaced: CancellationToken,
}

impl Holders {
    /// Claims `key` for `owner`, replacing (cancelling) its current holder if that is the
    /// same user; a key held by another user is refused (`403 forbidden`) and its holder
    /// left alone.
    pub fn claim(
        self: &Arc<Self>,
        key: String,
        owner: Option<&str>,
    ) -> Result<HolderGuard, HttpError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let mut inner = self.inner.lock();
        if let Some(old) = inner.get(&key) {
            if old.owner.as_deref() != owner {
                return Err(HttpError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this key is held by another user",
                ));
            }
            old.replaced.cancel();
        }
        let holder = Holder {
            id,
            owner: owner.map(str::to_owned),
            replaced: replaced.clone(),
        };
        inner.insert(key.clone(), holder);
        drop(inner);
        Ok(HolderGuard {
            holders: self.clone(),
            key,
            id,
            replaced,
        })
    }

    /// Number of keys currently held.
    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for HolderGuard {
    fn drop(&mut self) {
        let mut inner = self.holders.inner.lock();
        if inner.get(&self.key).is_some_and(|h| h.id == self.id) {
            inner.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        query_pairs(Some(q))
    }

    #[test]
    fn channels_pair_with_offsets() {
        let got =
            channels_with_offsets(&pairs("channel=a&channel=b&offset=1-0&offset=2-0")).unwrap();
        assert_eq!(got[1], ("b".into(), Offset::Id(StreamId::new(2, 0))));
        let got = channels_with_offsets(&pairs("channel=a&channel=b&offset=0")).unwrap();
        assert_eq!(got[1].1, Offset::Earliest);
        let got = channels_with_offsets(&pairs("channel=a")).unwrap();
        assert_eq!(got[0].1, Offset::Latest);
        for bad in [
            "",
            "channel=a%20b",
            "channel=a&offset=x",
            "channel=a&channel=b&channel=c&offset=0&offset=0",
            "channel=a&channel=a",
        ] {
            assert!(channels_with_offsets(&pairs(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn seconds_are_plain_decimals_capped_at_the_maximum() {
        let max = Duration::from_secs(120);
        let ok = |v: &str| parse_seconds("timeout", v, max).unwrap();
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0.0"), Duration::ZERO);
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("119.999"), Duration::from_millis(119_999));
        assert_eq!(ok("120"), max);
        assert_eq!(ok("120.001"), max);
        assert_eq!(ok("20000000000000000000"), max);
        assert_eq!(ok(&"9".repeat(32)), max);
        for bad in [
            "", " 1", "1 ", "+1", "-1", "-0", "1.", ".5", "1e3", "2e19", "1E3", "inf", "-inf",
            "infinity", "NaN", "nan", "0x10", "1_0", "1,5", "5s", "1..2", "1.2.3",
        ] {
            let err = parse_seconds("timeout", bad, max).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(parse_seconds("timeout", &"9".repeat(33), max).is_err());
    }

    #[test]
    fn counts_are_plain_digits_in_range() {
        let count = |v: &str| parse_count("limit", v, 1..=1000);
        assert_eq!(count("1").unwrap(), 1);
        assert_eq!(count("1000").unwrap(), 1000);
        assert_eq!(count("0007").unwrap(), 7);
        for bad in [
            "",
            "0",
            "1001",
            "-1",
            "+5",
            " 5",
            "5 ",
            "1.5",
            "1e3",
            "NaN",
            "inf",
            "x",
            "18446744073709551616",
            "99999999999999999999999999999999",
        ] {
            assert!(count(bad).is_err(), "{bad:?}");
        }
        let message = count("0").unwrap_err().message;
        assert!(message.contains("1 to 1000"), "{message}");
    }

    #[test]
    fn a_new_claim_replaces_the_old_one() {
        let holders = Arc::new(Holders::default());
        let first = holders.claim("k".into(), Some("alice")).unwrap();
        let second = holders.claim("k".into(), Some("alice")).unwrap();
        assert!(first.replaced.is_cancelled());
        assert!(!second.replaced.is_cancelled());
        drop(first);
        assert_eq!(holders.len(), 1);
        drop(second);
        assert!(holders.is_empty());
    }

    #[test]
    fn another_user_cannot_take_a_key_over() {
        let holders = Arc::new(Holders::default());
        let alice = holders.claim("k".into(), Some("alice")).unwrap();
        for other in [Some("bob"), None, Some("alice ")] {
            let err = holders.claim("k".into(), other).unwrap_err();
            assert_eq!(err.status, StatusCode::FORBIDDEN);
            assert_eq!(err.code, "forbidden");
        }
        assert!(!alice.replaced.is_cancelled());
        drop(alice);
        // Released: anyone may claim it now.
        let bob = holders.claim("k".into(), Some("bob")).unwrap();
        assert!(!bob.replaced.is_cancelled());
        // No user (authentication off) replaces no user.
        let open = holders.claim("o".into(), None).unwrap();
        let again = holders.claim("o".into(), None).unwrap();
        assert!(open.replaced.is_cancelled());
        drop(again);
    }
}
