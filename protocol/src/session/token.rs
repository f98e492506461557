//! Token refresh: replacing a short-lived token on a live connection before it expires.
//!
//! The driver owns the token source (an application callback) and the wall clock; the session
//! owns the timing and the wire. The driver calls [`Session::refresh_token`] with each token
//! it obtains (before [`Session::handle_transport_open`] on a new connection, or any time
//! later) and how long it stays valid ([`token_lifetime`] reads it from a JWT). On an open
//! connection the session sends `connect` with the new token at once; the server's `connected`
//! reply switches the connection to it without touching its subscriptions, so nothing is
//! missed, repeated or reconnected. [`refresh_lead`] before the token's end the session emits
//! [`Action::RefreshToken`]: the driver obtains a new token and calls `refresh_token` again.
//!
//! A refresh the server refuses (an invalid token, or one that no longer allows a current
//! subscription) ends the connection with [`DisconnectReason::Rejected`]; the server closes it
//! too. The session reconnects as after any loss, with the newest token, and re-subscribes
//! from every position (a channel the new token forbids then ends with
//! [`Event::SubscriptionLost`](super::Event::SubscriptionLost)).

use std::time::Duration;

use super::connection::request_frame;
use super::event::{Action, DisconnectReason};
use super::requests::{Kind, Origin, Pending};
use super::{Session, State};

/// Shortest time before a token's end at which the session asks for a new one (unless the
/// token lives less than twice as long: then half its lifetime).
pub const MIN_REFRESH_LEAD: Duration = Duration::from_secs(1);

/// How long before the end of a token valid for `lifetime` the session asks for a new one:
/// a tenth of the lifetime, at least [`MIN_REFRESH_LEAD`], at most half the lifetime.
pub fn refresh_lead(lifetime: Duration) -> Duration {
    (lifetime / 10).max(MIN_REFRESH_LEAD).min(lifetime / 2)
}

/// How long a JWT stays valid: its `exp` claim (seconds since the Unix epoch) minus
/// `unix_now`, the wall-clock time since the epoch. Reads the payload without verifying the
/// signature (only the server can). `None` for text that is not a JWT with a numeric `exp`;
/// zero for a token already expired.
pub fn token_lifetime(token: &str, unix_now: Duration) -> Option<Duration> {
    let payload = token.split('.').nth(1)?;
    let json = base64url_decode(payload)?;
    // The crate's own reader, not serde_json's: the browser client carries no serde decoder.
    let claims = crate::json::parse(std::str::from_utf8(&json).ok()?).ok()?;
    let exp = claims.get("exp")?.as_f64().filter(|e| e.is_finite())?;
    // Whole milliseconds through a saturating cast: no float-to-duration conversion code,
    // which the browser client would carry.
    let exp = Duration::from_millis((exp.max(0.0) * 1000.0) as u64);
    Some(exp.saturating_sub(unix_now))
}

/// Decodes unpadded (or padded) base64url; `None` on any other character.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

impl Session {
    /// Uses `token` from now on: for every later connection's `connect`, and, when a
    /// connection is open, at once through a `connect` on it (see "Short-lived tokens" in the
    /// [session documentation](super)). `valid_for` is how long the token stays valid (e.g. from
    /// [`token_lifetime`]); with it, [`Action::RefreshToken`] asks for the next token
    /// [`refresh_lead`] before the end. `None`: the token does not expire, nothing is asked.
    pub fn refresh_token(&mut self, now: Duration, token: String, valid_for: Option<Duration>) {
        self.tick(now);
        self.token_refresh_at =
            valid_for.map(|v| self.now.saturating_add(v.saturating_sub(refresh_lead(v))));
        self.config.token = Some(token.clone());
        if !matches!(self.state, State::Open { .. }) {
            // A handshake in flight finishes with the token it carries; the next one uses this.
            return;
        }
        let id = self.alloc_id();
        let kind = Kind::Refresh { token };
        let frame = request_frame(id, &kind);
        let mut pending = Pending::new(kind, Origin::Internal);
        pending.sent = true;
        let deadline = self.deadline();
        self.requests.insert(id, pending, Some(deadline));
        self.transmit.push_back(frame);
    }

    /// When the driver should be asked for a new token, if a refresh is scheduled. Only on an
    /// open connection: every new connection starts with a token the driver just obtained.
    pub(super) fn token_timer(&self) -> Option<Duration> {
        self.token_refresh_at
            .filter(|_| matches!(self.state, State::Open { .. }))
    }

    /// Asks the driver for a new token once the refresh time has come.
    pub(super) fn fire_token_refresh(&mut self) {
        if self.token_timer().is_some_and(|at| at <= self.now) {
            self.token_refresh_at = None;
            self.actions.push_back(Action::RefreshToken);
        }
    }

    /// The server refused a refresh: the connection is over (the server closes it too).
    pub(super) fn refresh_refused(&mut self, code: crate::ErrorCode, message: String) {
        self.fail_connection(DisconnectReason::Rejected { code, message }, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads() {
        let s = Duration::from_secs;
        assert_eq!(refresh_lead(s(3600)), s(360));
        assert_eq!(refresh_lead(s(3)), s(1));
        assert_eq!(refresh_lead(s(1)), Duration::from_millis(500));
        assert_eq!(refresh_lead(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn lifetimes_come_from_exp() {
        // {"alg":"HS256"} . {"sub":"u","exp":1700000100} . signature
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1IiwiZXhwIjoxNzAwMDAwMTAwfQ.c2ln";
        let now = Duration::from_secs(1_700_000_000);
        assert_eq!(token_lifetime(token, now), Some(Duration::from_secs(100)));
        assert_eq!(
            token_lifetime(token, now + Duration::from_secs(500)),
            Some(Duration::ZERO)
        );
        for bad in [
            "",
            "abc",
            "a.!!!.c",
            "a.eyJzdWIiOiJ1In0.c", // {"sub":"u"}: no exp
            "a.eyJleHAiOiJ4In0.c", // {"exp":"x"}
            "a.bm90IGpzb24.c",     // not json
        ] {
            assert_eq!(token_lifetime(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn base64url() {
        assert_eq!(base64url_decode("aGk").unwrap(), b"hi");
        assert_eq!(base64url_decode("aGk=").unwrap(), b"hi");
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(base64url_decode("a+b").is_none());
    }
}
