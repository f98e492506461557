//! The HTTP side's text: the routes' base from a WebSocket target, query escaping, error
//! bodies.

use crate::ErrorCode;

/// The code and message of an error body `{"error":{"code","message"}}`.
pub(super) fn error_body(body: &str) -> Option<(ErrorCode, String)> {
    let value = crate::json::parse(body).ok()?;
    let error = value.get("error")?;
    let code = ErrorCode::from_wire(error.get("code")?.as_str()?)?;
    let message = error.get("message")?.as_str()?.to_owned();
    Some((code, message))
}

/// `http(s)://authority/prefix/` of a WebSocket target: its scheme mapped, its last path
/// segment (and query) dropped.
pub fn http_base(target: &str) -> String {
    // Byte scans and checked splits, not `str` indexing: the browser client ships this code,
    // and an index's panic links `str`'s slice error formatting (char Debug, Unicode tables).
    let (mut base, rest) = match target.strip_prefix("ws") {
        Some(rest) if rest.starts_with("s://") => (String::from("https"), rest.get(1..)),
        Some(rest) if rest.starts_with("://") => (String::from("http"), Some(rest)),
        _ => (String::new(), Some(target)),
    };
    let rest = rest.unwrap_or_default();
    let end = rest
        .bytes()
        .position(|b| b == b'?' || b == b'#')
        .unwrap_or(rest.len());
    let rest = rest.get(..end).unwrap_or_default();
    // The authority ends at the first `/` after `://`.
    let path = rest
        .get(3..)
        .and_then(|r| r.bytes().position(|b| b == b'/'));
    let keep = match path {
        Some(_) => rest.bytes().rposition(|b| b == b'/').map_or(end, |i| i + 1),
        None => end,
    };
    base.push_str(rest.get(..keep).unwrap_or_default());
    if !base.ends_with('/') {
        base.push('/');
    }
    base
}

pub(super) fn escape(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
}
