//! Channel names: 1–200 bytes from `[A-Za-z0-9_.:@/=+-]`, checked before any engine is touched.

use crate::error::ProtocolError;

/// Longest channel name accepted, in bytes.
pub const MAX_CHANNEL_LEN: usize = 200;

/// Whether `b` may appear in a channel name.
const fn allowed(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b':' | b'@' | b'/' | b'=' | b'+' | b'-')
}

/// Checks a channel name against the rules of `docs/protocol.md` §2 (1–200 bytes of
/// `A-Z a-z 0-9 _ . : @ / = + -`).
pub fn validate_channel(name: &str) -> Result<(), ProtocolError> {
    if name.is_empty() {
        return Err(ProtocolError::BadChannel("channel name is empty".into()));
    }
    if name.len() > MAX_CHANNEL_LEN {
        return Err(ProtocolError::BadChannel(format!(
            "channel name is {} bytes, at most {MAX_CHANNEL_LEN} allowed",
            name.len()
        )));
    }
    if let Some(b) = name.bytes().find(|&b| !allowed(b)) {
        return Err(ProtocolError::BadChannel(format!(
            "channel name contains byte 0x{b:02x}; allowed are A-Z a-z 0-9 _ . : @ / = + -"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_names() {
        for ok in ["a", "chat", "user:42", "a.b/c=d+e-f@g_h", &"x".repeat(200)] {
            validate_channel(ok).unwrap();
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for bad in [
            "",
            "has space",
            "ü",
            "a{b}",
            "a*",
            "new\nline",
            &"x".repeat(201),
        ] {
            assert!(validate_channel(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
