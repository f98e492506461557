//! Presence settings: which channels have presence, member expiry, and the bounds.

use std::time::Duration;

use crate::auth::pattern::ChannelPattern;

/// Presence settings (`--presence-*`).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Channel patterns with presence (`*` one segment, trailing `**` the rest); empty (the
    /// default) turns presence off everywhere.
    pub channels: Vec<String>,
    /// `channels`, compiled.
    patterns: Vec<ChannelPattern>,
    /// How long a member outlives its instance's last heartbeat (default 30 s); instances
    /// refresh their members every third of it.
    pub ttl: Duration,
    /// Most members one channel may have (default 1,000); a subscribe beyond it is refused
    /// `too_large`.
    pub max_members: usize,
    /// Largest `info` claim shown as a member's info, in bytes of JSON (default 1,024); a
    /// subscribe with a larger one is refused `too_large`.
    pub max_info_bytes: usize,
    /// Join/leave events are gathered for this long and sent as one frame per channel
    /// (default 1 s).
    pub window: Duration,
    /// Most changes one `presence_event` frame lists (default 100); beyond, the frame carries
    /// only their count (`missed`).
    pub max_events: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            channels: Vec::new(),
            patterns: Vec::new(),
            ttl: Duration::from_secs(30),
            max_members: 1_000,
            max_info_bytes: 1_024,
            window: Duration::from_secs(1),
            max_events: 100,
        }
    }
}

impl PresenceConfig {
    /// Adds a channel pattern; the error says why it is malformed.
    pub fn add_channels(&mut self, pattern: &str) -> Result<(), String> {
        if pattern.contains("{sub}") {
            return Err(format!("{pattern:?}: `{{sub}}` has no meaning here"));
        }
        let compiled = ChannelPattern::parse(pattern).ok_or_else(|| {
            format!(
                "{pattern:?} is not a channel pattern (`*` one segment, a trailing `**` the rest)"
            )
        })?;
        self.channels.push(pattern.to_owned());
        self.patterns.push(compiled);
        Ok(())
    }

    /// Whether `channel` has presence.
    pub fn enabled(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel, None))
    }

    /// How often an instance refreshes its members: a third of the expiry.
    pub fn heartbeat(&self) -> Duration {
        self.ttl / 3
    }

    /// How long after an instance's death its members are gone: from `presence` answers at
    /// most `ttl`, and their leave events follow within a heartbeat and a window more (from
    /// any instance that still has members of the channel).
    pub fn leave_bound(&self) -> Duration {
        self.ttl + self.heartbeat() + self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_select_channels() {
        let mut c = PresenceConfig::default();
        assert!(!c.enabled("room:1"));
        c.add_channels("room:*").unwrap();
        c.add_channels("team:**").unwrap();
        assert!(c.enabled("room:1"));
        assert!(!c.enabled("room:1:x"));
        assert!(c.enabled("team:a:b"));
        assert!(!c.enabled("chat"));
        assert!(c.add_channels("a:**:b").is_err());
        assert!(c.add_channels("user:{sub}").is_err());
        assert_eq!(c.heartbeat(), Duration::from_secs(10));
    }
}
