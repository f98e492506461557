//! The storage namespace of a client: which cache entries and outbox messages are its own.
//!
//! Two clients on one origin share their localStorage entries exactly when they have the same
//! [`Namespace`]: the same set of targets (normalized, order and duplicates ignored) and the
//! same optional `namespace` name the page passes (e.g. the signed-in user). So two apps
//! talking to two servers never resume from each other's offsets, and two users taking turns on
//! one browser never see each other's cached messages or send each other's queued publishes.
//!
//! Keys are `redistribute:<id>:cache:v1:<channel>` and `redistribute:<id>:outbox:v2:<message
//! id>`, where `<id>` is 16 hex digits ([`Namespace::id`]). Entries of the unscoped format of
//! earlier versions (`redistribute:v1:<channel>`, `redistribute:outbox:v1:<scope>`) are never
//! read as a namespace's own; see [`crate::cache`] and [`crate::outbox`] for what becomes of
//! them.

/// Where a client's entries live in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    id: String,
    named: bool,
}

impl Namespace {
    /// The namespace of a client of `targets` (WebSocket URLs) with the page's optional
    /// `name`. An empty name is the same as none.
    pub fn new<T: AsRef<str>>(targets: &[T], name: Option<&str>) -> Self {
        // Sorted and deduplicated by insertion (a handful of targets; no sort routine to ship).
        let mut normal: Vec<String> = Vec::with_capacity(targets.len());
        for t in targets {
            let t = normalize(t.as_ref());
            if let Err(i) = normal.binary_search(&t) {
                normal.insert(i, t);
            }
        }
        let name = name.filter(|n| !n.is_empty());
        let mut parts: Vec<&str> = vec!["targets"];
        parts.extend(normal.iter().map(String::as_str));
        if let Some(name) = name {
            parts.extend(["namespace", name]);
        }
        Namespace {
            id: hash(&parts),
            named: name.is_some(),
        }
    }

    /// 16 hex digits naming the namespace in storage keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the page named the namespace (the `namespace` option).
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// The key prefix of this namespace's cache entries; the channel name follows.
    pub fn cache_prefix(&self) -> String {
        format!("redistribute:{}:cache:v1:", self.id)
    }

    /// The key prefix of this namespace's outbox messages; the message id follows.
    pub fn outbox_prefix(&self) -> String {
        format!("redistribute:{}:outbox:v2:", self.id)
    }

    /// The key prefix of the outcomes of this namespace's sent outbox messages (how other
    /// tabs learn them); the message id follows.
    pub fn outcome_prefix(&self) -> String {
        format!("redistribute:{}:outbox-done:v2:", self.id)
    }
}

/// A target URL in a canonical form: scheme and host in lower case, the scheme's default port
/// (80 for `ws`, 443 for `wss`) dropped, an empty path written `/`, surrounding blanks
/// removed. Path and query are kept as they are (they may name different endpoints).
pub fn normalize(target: &str) -> String {
    let target = target.trim();
    // The first `:` followed by `//` (a scheme has no `:`); a char search, not a substring
    // one, which would add a string searcher to the browser client.
    let Some((scheme, rest)) = target
        .split_once(':')
        .and_then(|(scheme, rest)| Some((scheme, rest.strip_prefix("//")?)))
    else {
        return target.to_owned();
    };
    let scheme = scheme.to_ascii_lowercase();
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at_checked(split).unwrap_or((rest, ""));
    let mut authority = authority.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "ws" => Some(":80"),
        "wss" => Some(":443"),
        _ => None,
    };
    if let Some(port) = default_port {
        if let Some(host) = authority.strip_suffix(port) {
            authority = host.to_owned();
        }
    }
    let tail = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    format!("{scheme}://{authority}{tail}")
}

/// A short stable name for a list of strings (64-bit FNV-1a over the parts, each ended by a
/// zero byte; 16 hex digits).
pub fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain([0]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_normalized_and_order_independent() {
        let a = Namespace::new(&["ws://a:8080/ws", "wss://B.example/ws"], None);
        let same = [
            vec!["wss://b.example:443/ws", "ws://a:8080/ws"],
            vec![" WS://A:8080/ws ", "wss://b.example/ws", "ws://a:8080/ws"],
        ];
        for targets in same {
            assert_eq!(Namespace::new(&targets, None), a, "{targets:?}");
        }
        for other in [
            vec!["ws://a:8080/ws"],
            vec!["ws://a:8081/ws", "wss://b.example/ws"],
            vec!["ws://a:8080/ws2", "wss://b.example/ws"],
            vec!["ws://a:8080/ws", "ws://b.example/ws"],
        ] {
            assert_ne!(Namespace::new(&other, None), a, "{other:?}");
        }
        assert_eq!(normalize("ws://h"), "ws://h/");
        assert_eq!(normalize("ws://h:80?x=1"), "ws://h/?x=1");
        assert_eq!(normalize("wss://h:80/"), "wss://h:80/");
        assert_eq!(normalize("ws://H/Path?Q"), "ws://h/Path?Q");
    }

    #[test]
    fn names_separate_namespaces_of_the_same_targets() {
        let t = ["ws://a/ws"];
        let plain = Namespace::new(&t, None);
        assert!(!plain.is_named());
        assert_eq!(Namespace::new(&t, Some("")), plain);
        let u1 = Namespace::new(&t, Some("user-1"));
        let u2 = Namespace::new(&t, Some("user-2"));
        assert!(u1.is_named());
        assert_ne!(u1, plain);
        assert_ne!(u1, u2);
        assert_eq!(u1, Namespace::new(&t, Some("user-1")));
        // A name cannot pose as a target.
        assert_ne!(
            Namespace::new(&["ws://a/ws", "ws://b/ws"], None),
            Namespace::new(&["ws://a/ws"], Some("ws://b/ws"))
        );
        assert_eq!(plain.id().len(), 16);
        assert_eq!(
            plain.cache_prefix(),
            format!("redistribute:{}:cache:v1:", plain.id())
        );
        assert_eq!(
            plain.outbox_prefix(),
            format!("redistribute:{}:outbox:v2:", plain.id())
        );
    }
}
