//! Channel patterns in token claims: `*` matches exactly one segment between `:`, a trailing
//! `**` matches the rest (one or more segments), and `{sub}` stands for the token's subject.
//! `user:{sub}` gives each user a private channel; `chat:*` every chat room; `team:7:**`
//! everything under team 7.

/// A compiled channel pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelPattern {
    segments: Vec<Segment>,
    rest: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Any,
    Subject,
}

impl ChannelPattern {
    /// Compiles a pattern; `None` if it is malformed (`**` not at the end, `{sub}` mixed with
    /// other text in one segment, or empty).
    pub fn parse(pattern: &str) -> Option<ChannelPattern> {
        if pattern.is_empty() {
            return None;
        }
        let parts: Vec<&str> = pattern.split(':').collect();
        let mut segments = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, part) in parts.iter().enumerate() {
            match *part {
                "**" if i + 1 == parts.len() && i > 0 => rest = true,
                "**" => return None,
                "*" => segments.push(Segment::Any),
                "{sub}" => segments.push(Segment::Subject),
                p if p.contains('*') || p.contains('{') || p.contains('}') => return None,
                p => segments.push(Segment::Literal(p.to_owned())),
            }
        }
        Some(ChannelPattern { segments, rest })
    }

    /// Whether `channel` matches, with `{sub}` bound to `subject` (a pattern using `{sub}`
    /// matches nothing without a subject).
    pub fn matches(&self, channel: &str, subject: Option<&str>) -> bool {
        let mut parts = channel.split(':');
        for segment in &self.segments {
            let Some(part) = parts.next() else {
                return false;
            };
            let ok = match segment {
                Segment::Literal(l) => l == part,
                Segment::Any => !part.is_empty(),
                Segment::Subject => subject.is_some_and(|s| !s.is_empty() && s == part),
            };
            if !ok {
                return false;
            }
        }
        let remaining: Vec<&str> = parts.collect();
        if self.rest {
            !remaining.is_empty() && remaining.iter().all(|p| !p.is_empty())
        } else {
            remaining.is_empty()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, channel: &str, sub: Option<&str>) -> bool {
        ChannelPattern::parse(pattern)
            .unwrap()
            .matches(channel, sub)
    }

    #[test]
    fn literal_star_and_rest() {
        assert!(m("news", "news", None));
        assert!(!m("news", "news:1", None));
        assert!(m("chat:*", "chat:room1", None));
        assert!(!m("chat:*", "chat:room1:x", None));
        assert!(!m("chat:*", "chat", None));
        assert!(!m("chat:*", "chat:", None));
        assert!(m("team:7:**", "team:7:a:b", None));
        assert!(m("team:7:**", "team:7:a", None));
        assert!(!m("team:7:**", "team:7", None));
        assert!(!m("team:7:**", "team:8:a", None));
    }

    #[test]
    fn subject_substitution() {
        assert!(m("user:{sub}", "user:42", Some("42")));
        assert!(!m("user:{sub}", "user:43", Some("42")));
        assert!(!m("user:{sub}", "user:42", None));
        assert!(m("user:{sub}:**", "user:42:inbox", Some("42")));
    }

    #[test]
    fn malformed_patterns() {
        for bad in ["", "**", "a:**:b", "a*", "user:{sub}x", "a:{b}"] {
            assert!(ChannelPattern::parse(bad).is_none(), "{bad}");
        }
    }
}
