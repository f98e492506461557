//! The operator's retention policy: how many entries and how old entries a channel keeps, per
//! channel pattern and by default, and the lowest `maxlen` a publisher may ask for.
//!
//! Both engines ask [`Retention::trim`] on every publish what to trim, so no publish path (the
//! WebSocket, `/api/publish`, dead-lettering) can go around it:
//!
//! - A channel's spec is the first `--retention` rule whose pattern matches it (in the order
//!   given), else `--retention-default`, else none (no limit).
//! - `maxlen`: a publisher's `maxlen` below the floor (`--min-maxlen`) is raised to the floor;
//!   one above the spec's `maxlen` is lowered to it; a publish without `maxlen` trims to the
//!   spec's `maxlen`. The spec's `maxlen` is a hard cap, so it wins over the floor when lower.
//! - `age`: entries older than the spec's age are removed when the channel is next published
//!   to (bounded per publish like length trimming; later publishes continue).
//!
//! Trimming records its watermark the same way either way, so readers that miss trimmed
//! entries are told (a `gap`).

use std::fmt;
use std::time::Duration;

use crate::auth::pattern::ChannelPattern;

/// The floor the server applies when the operator sets none: a publisher cannot make a
/// channel keep fewer entries than this.
pub(crate) const DEFAULT_MIN_MAXLEN: u64 = 1_000;

/// How long and how much a channel keeps: either or both of a length and an age.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSpec {
    /// Most entries kept (about: trimming is amortized like `MAXLEN ~`).
    pub maxlen: Option<u64>,
    /// Entries older than this are removed on the next publish.
    pub max_age: Option<Duration>,
}

impl RetentionSpec {
    /// Parses `10000`, `age=1h`, `10000,age=24h` or `maxlen=10000,age=30m` (units `ms`, `s`,
    /// `m`, `h`, `d`; both values positive), or `none` (no limit).
    pub fn parse(text: &str) -> Result<RetentionSpec, String> {
        let mut spec = RetentionSpec::default();
        if text.trim() == "none" {
            return Ok(spec);
        }
        if text.trim().is_empty() {
            return Err(
                "empty retention spec; expected e.g. 10000, age=1h or 10000,age=24h".into(),
            );
        }
        for part in text.split(',').map(str::trim) {
            let (key, value) = match part.split_once('=') {
                Some((key, value)) => (key.trim(), value.trim()),
                None => ("maxlen", part),
            };
            match key {
                "maxlen" if spec.maxlen.is_none() => {
                    let n: u64 = value
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("maxlen {value:?} is not a positive integer"))?;
                    spec.maxlen = Some(n);
                }
                "age" if spec.max_age.is_none() => spec.max_age = Some(parse_age(value)?),
                "maxlen" | "age" => return Err(format!("{key} is given twice in {text:?}")),
                other => {
                    return Err(format!(
                        "unknown retention key {other:?} in {text:?}; expected maxlen or age"
                    ))
                }
            }
        }
        Ok(spec)
    }

    /// Whether the spec limits nothing.
    pub fn is_unlimited(&self) -> bool {
        self.maxlen.is_none() && self.max_age.is_none()
    }
}

impl fmt::Display for RetentionSpec {
    /// The form [`RetentionSpec::parse`] reads (`10000,age=24h`, or `none`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            return f.write_str("none");
        }
        let mut parts = Vec::new();
        if let Some(n) = self.maxlen {
            parts.push(n.to_string());
        }
        if let Some(age) = self.max_age {
            parts.push(format!("age={}", format_age(age)));
        }
        f.write_str(&parts.join(","))
    }
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d`.
fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("age {text:?} has no unit; use ms, s, m, h or d (e.g. 24h)"))?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("age {text:?} is not a positive number with a unit"))?;
    let ms_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "age {text:?}: unknown unit {unit:?}; use ms, s, m, h or d"
            ))
        }
    };
    n.checked_mul(ms_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("age {text:?} is too large"))
}

/// The largest unit that expresses `age` exactly.
fn format_age(age: Duration) -> String {
    let ms = age.as_millis() as u64;
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// One `PATTERN=SPEC` rule.
#[derive(Debug, Clone)]
struct Rule {
    text: String,
    pattern: ChannelPattern,
    spec: RetentionSpec,
}

/// What one publish trims: the effective length and age limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trim {
    /// Keep about this many entries.
    pub maxlen: Option<u64>,
    /// Remove entries older than this.
    pub max_age: Option<Duration>,
}

/// The retention policy; see the module docs.
#[derive(Debug, Clone)]
pub struct Retention {
    rules: Vec<Rule>,
    default: RetentionSpec,
    min_maxlen: u64,
}

impl Default for Retention {
    /// No rules, no default, no floor: publishers' `maxlen` as sent (the engines' default
    /// when used as a library; the server's is [`Retention::server_default`]).
    fn default() -> Self {
        Retention {
            rules: Vec::new(),
            default: RetentionSpec::default(),
            min_maxlen: 0,
        }
    }
}

impl Retention {
    /// The server's default: no limits, and the floor `min_maxlen` of 1,000 entries.
    pub fn server_default() -> Retention {
        Retention {
            min_maxlen: DEFAULT_MIN_MAXLEN,
            ..Retention::default()
        }
    }

    /// Adds a `PATTERN=SPEC` rule (patterns as in token claims, without `{sub}`), checked after
    /// those added before.
    pub fn add_rule(&mut self, text: &str) -> Result<(), String> {
        // Channel names may contain `=`: the spec starts after the first `=` that leaves a
        // valid spec behind it.
        let rule = text
            .match_indices('=')
            .find_map(|(at, _)| {
                let spec = RetentionSpec::parse(&text[at + 1..]).ok()?;
                Some((&text[..at], spec))
            })
            .ok_or_else(|| {
                format!("{text:?} is not PATTERN=SPEC, e.g. chat:*=10000 or logs:**=age=24h")
            })?;
        let (pattern_text, spec) = rule;
        if pattern_text.contains("{sub}") {
            return Err(format!(
                "{text:?}: {{sub}} has no meaning in a retention pattern (there is no token)"
            ));
        }
        let pattern = ChannelPattern::parse(pattern_text).ok_or_else(|| {
            format!("{pattern_text:?} is not a channel pattern (`*`: one segment, `**` at the end: the rest)")
        })?;
        self.rules.push(Rule {
            text: format!("{pattern_text}={spec}"),
            pattern,
            spec,
        });
        Ok(())
    }

    /// Sets the spec of channels no rule matches.
    pub fn set_default(&mut self, spec: RetentionSpec) {
        self.default = spec;
    }

    /// Sets the lowest `maxlen` a publisher's request is raised to (0: none).
    pub fn set_min_maxlen(&mut self, floor: u64) {
        self.min_maxlen = floor;
    }

    /// The rules as `PATTERN=SPEC`, in order.
    pub fn rules(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.text.as_str())
    }

    /// The spec of channels no rule matches.
    pub fn default_spec(&self) -> RetentionSpec {
        self.default
    }

    /// The floor of publishers' `maxlen`.
    pub fn min_maxlen(&self) -> u64 {
        self.min_maxlen
    }

    /// The spec that applies to `channel`.
    pub fn spec(&self, channel: &str) -> RetentionSpec {
        self.rules
            .iter()
            .find(|r| r.pattern.matches(channel, None))
            .map_or(self.default, |r| r.spec)
    }

    /// What a publish to `channel` asking for `requested` trims.
    pub fn trim(&self, channel: &str, requested: Option<u64>) -> Trim {
        let spec = self.spec(channel);
        let maxlen = match (requested, spec.maxlen) {
            (None, cap) => cap,
            (Some(asked), None) => Some(asked.max(self.min_maxlen)),
            (Some(asked), Some(cap)) => Some(asked.max(self.min_maxlen).min(cap)),
        };
        Trim {
            maxlen,
            max_age: spec.max_age,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, maxlen, age_ms, printed) in [
            ("10000", Some(10_000), None, "10000"),
            ("age=1h", None, Some(3_600_000), "age=1h"),
            (
                "10000,age=24h",
                Some(10_000),
                Some(86_400_000),
                "10000,age=1d",
            ),
            ("maxlen=5, age=90s", Some(5), Some(90_000), "5,age=90s"),
            ("age=1500ms", None, Some(1_500), "age=1500ms"),
            ("none", None, None, "none"),
        ] {
            let spec = RetentionSpec::parse(text).unwrap();
            assert_eq!(spec.maxlen, maxlen, "{text}");
            assert_eq!(spec.max_age.map(|d| d.as_millis() as u64), age_ms, "{text}");
            assert_eq!(spec.to_string(), printed);
            assert_eq!(RetentionSpec::parse(printed).unwrap(), spec);
        }
        for bad in [
            "",
            "0",
            "-1",
            "x",
            "age=",
            "age=0s",
            "age=5",
            "age=5y",
            "1,2",
            "age=1h,age=2h",
            "size=3",
            "99999999999999999999",
            "age=99999999999999999d",
        ] {
            assert!(RetentionSpec::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn rules_match_in_order_then_the_default() {
        let mut r = Retention::server_default();
        r.add_rule("chat:vip=50000").unwrap();
        r.add_rule("chat:*=10000").unwrap();
        r.add_rule("logs:**=age=1h").unwrap();
        r.add_rule("a=b:*=7,age=2s").unwrap();
        r.set_default(RetentionSpec::parse("100000").unwrap());
        assert_eq!(r.spec("chat:vip").maxlen, Some(50_000));
        assert_eq!(r.spec("chat:room").maxlen, Some(10_000));
        assert_eq!(r.spec("logs:a:b").max_age, Some(Duration::from_secs(3600)));
        assert_eq!(r.spec("a=b:x").maxlen, Some(7));
        assert_eq!(r.spec("other").maxlen, Some(100_000));
        assert_eq!(
            r.rules().collect::<Vec<_>>(),
            [
                "chat:vip=50000",
                "chat:*=10000",
                "logs:**=age=1h",
                "a=b:*=7,age=2s"
            ]
        );
        for bad in ["chat:*", "=10", "chat:**:x=10", "user:{sub}=10", "chat:*=0"] {
            assert!(Retention::default().add_rule(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn client_maxlen_is_honoured_only_within_the_policy() {
        let mut r = Retention::server_default();
        r.add_rule("chat:*=10000").unwrap();
        r.add_rule("tiny=10").unwrap();
        let maxlen = |channel: &str, asked: Option<u64>| r.trim(channel, asked).maxlen;
        // Below the floor: raised to it. Above the cap: lowered to it.
        assert_eq!(maxlen("chat:a", Some(1)), Some(DEFAULT_MIN_MAXLEN));
        assert_eq!(maxlen("chat:a", Some(5_000)), Some(5_000));
        assert_eq!(maxlen("chat:a", Some(1 << 40)), Some(10_000));
        assert_eq!(maxlen("chat:a", None), Some(10_000));
        // No policy: only the floor.
        assert_eq!(maxlen("free", Some(1)), Some(DEFAULT_MIN_MAXLEN));
        assert_eq!(maxlen("free", None), None);
        assert_eq!(maxlen("free", Some(u64::MAX)), Some(u64::MAX));
        // A cap below the floor wins: the operator asked for it.
        assert_eq!(maxlen("tiny", Some(1)), Some(10));
        assert_eq!(maxlen("tiny", None), Some(10));
        // The library default honours the request as sent.
        assert_eq!(Retention::default().trim("x", Some(1)).maxlen, Some(1));
    }
}
