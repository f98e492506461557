//! The client's address behind trusted reverse proxies: the configured proxy networks
//! ([`Cidr`]), and the walk over `X-Forwarded-For` or `Forwarded` (RFC 7239) that finds the
//! first address no trusted proxy added ([`TrustedProxies::client_addr`]).
//!
//! Only a request whose TCP peer is a trusted proxy has its header read; the header's entries
//! are walked from the right (the one the nearest proxy added) to the left, skipping trusted
//! hops. The walk stops at an entry that is not an address (`unknown`, an obfuscated name,
//! garbage): the client is then the last trusted hop seen (the peer itself when the nearest
//! entry is already unusable). A header that cannot be parsed at all counts as absent. So an
//! address is only ever taken from an entry a trusted proxy wrote.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use axum::http::HeaderMap;

/// An IP network, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a network of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// The network's address, host bits cleared.
    addr: IpAddr,
    /// Prefix length in bits.
    prefix: u8,
}

/// A string that is not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or network like 10.0.0.0/8 or 2001:db8::/32")]
pub struct CidrError(String);

impl Cidr {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u128::from(u32::from(ip)), self.prefix, 32) == u128::from(u32::from(net))
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), self.prefix, 128) == u128::from(net)
            }
            _ => false,
        }
    }
}

/// `bits` (of a `width`-bit address) with all but the first `prefix` bits cleared.
fn mask(bits: u128, prefix: u8, width: u8) -> u128 {
    let host_bits = u32::from(width - prefix);
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits << host_bits
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || CidrError(text.to_owned());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let addr = addr.to_canonical();
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(err)?,
        };
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4((mask(u128::from(u32::from(a)), prefix, 32) as u32).into()),
            IpAddr::V6(a) => IpAddr::V6(mask(u128::from(a), prefix, 128).into()),
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Which header a trusted proxy writes the client's address into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy `option forwardfor`, most
    /// cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for="[2001:db8::1]:4711"` (RFC 7239).
    Forwarded,
}

impl ClientIpHeader {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            ClientIpHeader::XForwardedFor => "x-forwarded-for",
            ClientIpHeader::Forwarded => "forwarded",
        }
    }
}

/// The trusted proxy networks and the header they set.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    /// Networks whose connections may name the client.
    pub networks: Vec<Cidr>,
    /// The header read from them.
    pub header: ClientIpHeader,
}

impl TrustedProxies {
    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|net| net.contains(ip))
    }

    /// The client's address for a request that came over a connection from `peer`: the peer
    /// itself unless it is trusted, else found by the walk described in the module doc. The
    /// port is the one the header gives, 0 when it gives none.
    pub fn client_addr(&self, peer: SocketAddr, headers: &HeaderMap) -> SocketAddr {
        if !self.trusts(peer.ip()) {
            return peer;
        }
        let mut joined = String::new();
        for value in headers.get_all(self.header.name()) {
            let Ok(value) = value.to_str() else {
                return peer;
            };
            if !joined.is_empty() {
                joined.push(',');
            }
            joined.push_str(value);
        }
        let hops = match self.header {
            ClientIpHeader::XForwardedFor => joined.split(',').map(parse_node).collect(),
            ClientIpHeader::Forwarded => match forwarded_for(&joined) {
                Some(hops) => hops,
                None => return peer,
            },
        };
        self.walk(peer, hops)
    }

    /// Walks `hops` (left to right as written) from the right; see the module doc.
    fn walk(&self, peer: SocketAddr, hops: Vec<Option<SocketAddr>>) -> SocketAddr {
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(hop) = hop else {
                return client;
            };
            client = hop;
            if !self.trusts(hop.ip()) {
                return hop;
            }
        }
        client
    }
}

/// One address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`; `None` for anything else (`unknown`, `_hidden`).
/// An obfuscated port (`_abc`) is ignored.
fn parse_node(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip.to_canonical(), 0));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        let ip = host.parse::<std::net::Ipv6Addr>().ok()?;
        (IpAddr::V6(ip), port)
    } else {
        let (host, port) = text.split_once(':')?;
        (IpAddr::V4(host.parse().ok()?), Some(port))
    };
    let port = match port {
        None => 0,
        Some(p) if p.starts_with('_') => 0,
        Some(p) => p.parse().ok()?,
    };
    Some(SocketAddr::new(host.to_canonical(), port))
}

/// The `for=` node of every element of a `Forwarded` value (elements without one are `None`),
/// or `None` when the value does not parse (e.g. an unterminated quoted string).
fn forwarded_for(value: &str) -> Option<Vec<Option<SocketAddr>>> {
    let mut hops = Vec::new();
    let mut found: Option<Option<SocketAddr>> = None;
    let mut chars = value.chars().peekable();
    loop {
        // One `name=value` pair.
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ';' || c == ',' {
                break;
            }
            name.push(c);
            chars.next();
        }
        let name = name.trim().to_ascii_lowercase();
        let mut text = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => text.push(chars.next()?),
                        c => text.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ';' || c == ',' {
                        break;
                    }
                    text.push(c);
                    chars.next();
                }
            }
        } else if !name.is_empty() {
            // A pair without `=`.
            return None;
        }
        if name == "for" {
            found = Some(parse_node(&text));
        }
        while chars.peek().is_some_and(|c| *c == ' ' || *c == '\t') {
            chars.next();
        }
        match chars.next() {
            Some(';') => {}
            Some(',') => hops.push(found.take().flatten()),
            None => {
                hops.push(found.take().flatten());
                return Some(hops);
            }
            Some(_) => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(nets: &[&str], header: ClientIpHeader) -> TrustedProxies {
        TrustedProxies {
            networks: nets.iter().map(|n| n.parse().unwrap()).collect(),
            header,
        }
    }

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn sock(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let net: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let all6: Cidr = "::/0".parse().unwrap();
        assert!(all6.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0/8",
            "host",
            "10.0.0.0/x",
            "/8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn untrusted_peers_headers_are_ignored() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let peer = sock("192.0.2.9:5000");
        let h = headers("x-forwarded-for", &["203.0.113.7"]);
        assert_eq!(p.client_addr(peer, &h), peer);
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let peer = sock("10.0.0.1:5000");
        let cases: &[(&[&str], &str)] = &[
            (&["203.0.113.7"], "203.0.113.7:0"),
            // The client forged the leftmost entry; the proxy appended the real one.
            (&["1.1.1.1, 203.0.113.7"], "203.0.113.7:0"),
            // Two trusted hops in between.
            (&["203.0.113.7, 10.0.0.5, 10.0.0.6"], "203.0.113.7:0"),
            // Split over several header lines.
            (&["1.1.1.1", "203.0.113.7, 10.0.0.5"], "203.0.113.7:0"),
            (&["2001:db8::7"], "[2001:db8::7]:0"),
            (&["[2001:db8::7]:4711"], "[2001:db8::7]:4711"),
            (&["203.0.113.7:4711"], "203.0.113.7:4711"),
            (&["::ffff:203.0.113.7"], "203.0.113.7:0"),
            // Every hop trusted: the leftmost.
            (&["10.0.0.7, 10.0.0.5"], "10.0.0.7:0"),
            // Garbage at the right: the peer; after a trusted hop: that hop.
            (&["203.0.113.7, unknown"], "10.0.0.1:5000"),
            (&["unknown, 10.0.0.5"], "10.0.0.5:0"),
            (&["203.0.113.7, 10.0.0.5:port"], "10.0.0.1:5000"),
            (&[""], "10.0.0.1:5000"),
            (&[" , "], "10.0.0.1:5000"),
            (&["[2001:db8::7"], "10.0.0.1:5000"),
            (&["fe80::1%eth0"], "10.0.0.1:5000"),
        ];
        for (values, want) in cases {
            let got = p.client_addr(peer, &headers("x-forwarded-for", values));
            assert_eq!(got, sock(want), "{values:?}");
        }
        assert_eq!(p.client_addr(peer, &HeaderMap::new()), peer);
        // The other header is not read.
        let h = headers("forwarded", &["for=203.0.113.7"]);
        assert_eq!(p.client_addr(peer, &h), peer);
    }

    #[test]
    fn forwarded_is_walked_from_the_right() {
        let p = proxies(&["10.0.0.0/8", "fd00::/8"], ClientIpHeader::Forwarded);
        let peer = sock("10.0.0.1:5000");
        let cases: &[(&[&str], &str)] = &[
            (&["for=203.0.113.7"], "203.0.113.7:0"),
            (
                &["For=203.0.113.7;proto=https;by=10.0.0.1"],
                "203.0.113.7:0",
            ),
            (&["proto=https; for=203.0.113.7"], "203.0.113.7:0"),
            (
                &[r#"for="[2001:db8:cafe::17]:4711""#],
                "[2001:db8:cafe::17]:4711",
            ),
            (&[r#"for="[2001:db8:cafe::17]""#], "[2001:db8:cafe::17]:0"),
            (&[r#"for="203.0.113.7:_hidden""#], "203.0.113.7:0"),
            (&["for=1.1.1.1, for=203.0.113.7"], "203.0.113.7:0"),
            (
                &["for=1.1.1.1", "for=203.0.113.7, for=10.0.0.9"],
                "203.0.113.7:0",
            ),
            (&[r#"for=203.0.113.7, for="[fd00::1]""#], "203.0.113.7:0"),
            (&["for=unknown"], "10.0.0.1:5000"),
            (&["for=_hidden, for=10.0.0.9"], "10.0.0.9:0"),
            (&["for=203.0.113.7, proto=https"], "10.0.0.1:5000"),
            // Malformed: the peer.
            (&[r#"for="203.0.113.7"#], "10.0.0.1:5000"),
            (&["for=203.0.113.7 junk"], "10.0.0.1:5000"),
            (&["for"], "10.0.0.1:5000"),
            (&[r#"for="\"#], "10.0.0.1:5000"),
        ];
        for (values, want) in cases {
            let got = p.client_addr(peer, &headers("forwarded", values));
            assert_eq!(got, sock(want), "{values:?}");
        }
    }

    #[test]
    fn header_values_that_are_not_text_fall_back_to_the_peer() {
        let p = proxies(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
        let peer = sock("10.0.0.1:5000");
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap(),
        );
        assert_eq!(p.client_addr(peer, &h), peer);
    }
}
