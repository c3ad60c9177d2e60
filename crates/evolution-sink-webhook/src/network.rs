//! SSRF protection: which addresses a webhook may reach.
//!
//! Every address a webhook request connects to is checked after DNS resolution (by the resolver
//! the HTTP client uses, so a name that later resolves elsewhere — DNS rebinding — is checked at
//! each connection), and IP-literal hosts before the request. Private, loopback, link-local,
//! carrier-grade NAT, multicast, documentation, benchmarking and other special-purpose ranges are
//! refused unless `WEBHOOK_ALLOWED_NETWORKS` lists a network containing the address.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// An IPv4 or IPv6 network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a /32 or
/// /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not a CIDR network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a network in CIDR notation (e.g. 10.0.0.0/8, 127.0.0.1/32 or fd00::/8)")]
pub struct InvalidNetwork(pub String);

impl FromStr for Network {
    type Err = InvalidNetwork;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidNetwork(s.to_owned());
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| invalid())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(invalid)?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Network {
    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as its IPv4 address).
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Parses `WEBHOOK_ALLOWED_NETWORKS`: comma-separated CIDR networks.
///
/// # Errors
/// The first entry that is not a network.
pub fn parse_networks(list: &str) -> Result<Vec<Network>, InvalidNetwork> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::parse)
        .collect()
}

/// `::ffff:a.b.c.d` as `a.b.c.d`.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 @ IpAddr::V4(_) => v4,
    }
}

/// The special-purpose range `ip` is in, if any (refused unless allowed).
#[must_use]
pub fn special_range(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, ..) => "\"this network\" (0.0.0.0/8)",
        (10, ..) => "private (10.0.0.0/8)",
        (100, 64..=127, _) => "carrier-grade NAT (100.64.0.0/10)",
        (127, ..) => "loopback (127.0.0.0/8)",
        (169, 254, _) => "link-local (169.254.0.0/16)",
        (172, 16..=31, _) => "private (172.16.0.0/12)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) => "documentation (192.0.2.0/24)",
        (192, 88, 99) => "6to4 relay (192.88.99.0/24)",
        (192, 168, _) => "private (192.168.0.0/16)",
        (198, 18..=19, _) => "benchmarking (198.18.0.0/15)",
        (198, 51, 100) => "documentation (198.51.100.0/24)",
        (203, 0, 113) => "documentation (203.0.113.0/24)",
        (224..=239, ..) => "multicast (224.0.0.0/4)",
        (240..=255, ..) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    Some(match s[0] {
        0x0064 if s[1] == 0xff9b => return embedded_v4(ip, "NAT64 (64:ff9b::/96)"),
        0x2001 if s[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x2001 if s[1] < 0x0200 => "IETF protocol assignments (2001::/23)",
        0x2002 => return embedded_v4(ip, "6to4 (2002::/16)").or(Some("6to4 (2002::/16)")),
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        x if x & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        x if x & 0xff00 == 0xff00 => "multicast (ff00::/8)",
        0 if s[1..6] == [0, 0, 0, 0, 0] => "IPv4-compatible (::/96)",
        _ => return None,
    })
}

/// For NAT64/6to4 addresses, the range of the embedded IPv4 address (or the outer range).
fn embedded_v4(ip: Ipv6Addr, outer: &'static str) -> Option<&'static str> {
    let o = ip.octets();
    let v4 = if ip.segments()[0] == 0x2002 {
        Ipv4Addr::new(o[2], o[3], o[4], o[5])
    } else {
        Ipv4Addr::new(o[12], o[13], o[14], o[15])
    };
    v4_range(v4).map(|_| outer)
}

/// Which special-purpose addresses are allowed anyway.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guard {
    allowed: Vec<Network>,
}

/// A refused address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ip} is a {range} address; webhooks to private and special networks are refused (SSRF protection): \
     allow it with WEBHOOK_ALLOWED_NETWORKS (e.g. WEBHOOK_ALLOWED_NETWORKS={ip}/32)"
)]
pub struct Forbidden {
    /// The address.
    pub ip: IpAddr,
    /// Its range.
    pub range: &'static str,
}

impl Guard {
    /// A guard allowing these networks besides the public internet.
    #[must_use]
    pub fn new(allowed: Vec<Network>) -> Self {
        Self { allowed }
    }

    /// Checks one address.
    ///
    /// # Errors
    /// [`Forbidden`] naming the address, its range and the setting that allows it.
    pub fn check(&self, ip: IpAddr) -> Result<(), Forbidden> {
        match special_range(ip) {
            Some(range) if !self.allowed.iter().any(|n| n.contains(ip)) => Err(Forbidden {
                ip: canonical(ip),
                range,
            }),
            _ => Ok(()),
        }
    }
}

/// Checks a webhook URL when its setting is saved: an IP-literal host is checked directly, a name
/// is resolved (for at most 3 s) and refused when every address it has is refused. A name that does
/// not resolve yet is accepted: every connection is checked again anyway.
///
/// # Errors
/// [`Forbidden`] for the first refused address.
pub async fn check_url(guard: &Guard, url: &str) -> Result<(), Forbidden> {
    match host_of(url) {
        Some(Host::Ip(ip)) => guard.check(ip),
        Some(Host::Name(name, port)) => {
            let lookup = tokio::net::lookup_host((name.as_str(), port));
            let Ok(Ok(addrs)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await else {
                return Ok(());
            };
            first_refusal(guard, addrs)
        }
        None => Ok(()),
    }
}

/// Checks a webhook URL given in the configuration (`WEBHOOK_GLOBAL_URL`), for a reader that cannot
/// wait asynchronously: the same rule as [`check_url`] (an IP-literal host checked directly, a
/// name resolved for at most 3 s and refused when every address it has is refused, a name that
/// does not resolve yet accepted), the lookup made on a thread of its own.
///
/// # Errors
/// [`Forbidden`] for the first refused address.
pub fn check_url_blocking(guard: &Guard, url: &str) -> Result<(), Forbidden> {
    use std::net::ToSocketAddrs as _;
    match host_of(url) {
        Some(Host::Ip(ip)) => guard.check(ip),
        Some(Host::Name(name, port)) => {
            let (tx, rx) = std::sync::mpsc::channel();
            // A lookup that outlives the deadline ends on its own; its answer is dropped.
            let _detached = std::thread::Builder::new()
                .name("webhook-url-check".to_owned())
                .spawn(move || {
                    let addrs: Vec<SocketAddr> = (name.as_str(), port)
                        .to_socket_addrs()
                        .map(Iterator::collect)
                        .unwrap_or_default();
                    let _ignored = tx.send(addrs);
                });
            first_refusal(guard, rx.recv_timeout(LOOKUP_TIMEOUT).unwrap_or_default())
        }
        None => Ok(()),
    }
}

/// How long a URL's name may take to resolve when it is checked.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// A URL's host: an address checked as it is, or a name (with the port) to resolve first.
enum Host {
    Ip(IpAddr),
    Name(String, u16),
}

/// `None` for a URL that does not parse (its syntax is checked elsewhere) or has no host.
fn host_of(url: &str) -> Option<Host> {
    let parsed = url::Url::parse(url).ok()?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    Some(match parsed.host()? {
        url::Host::Ipv4(v4) => Host::Ip(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Host::Ip(IpAddr::V6(v6)),
        url::Host::Domain(name) => Host::Name(name.to_owned(), port),
    })
}

/// `Ok` when any of `addrs` is allowed (or there are none), else the first refusal.
fn first_refusal(guard: &Guard, addrs: impl IntoIterator<Item = SocketAddr>) -> Result<(), Forbidden> {
    let mut refusal = None;
    for addr in addrs {
        match guard.check(addr.ip()) {
            Ok(()) => return Ok(()),
            Err(e) => {
                refusal.get_or_insert(e);
            }
        }
    }
    refusal.map_or(Ok(()), Err)
}

/// The HTTP client's resolver: the system resolver, then [`Guard::check`] on every address. A name
/// whose addresses are all refused fails with [`Forbidden`]; refused addresses are dropped from a
/// mixed answer.
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver(pub(crate) Arc<Guard>);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = Arc::clone(&self.0);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|addr| match guard.check(addr.ip()) {
                    Ok(()) => true,
                    Err(e) => {
                        first_refusal.get_or_insert(e);
                        false
                    }
                })
                .collect();
            match (allowed.is_empty(), first_refusal) {
                (true, Some(refusal)) => Err(Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_are_refused_and_public_ones_allowed() {
        let guard = Guard::default();
        for refused in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
        ] {
            let e = guard.check(ip(refused)).unwrap_err();
            assert!(
                e.to_string().contains("WEBHOOK_ALLOWED_NETWORKS"),
                "{refused}: {e}"
            );
        }
        for allowed in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(guard.check(ip(allowed)).is_ok(), "{allowed}");
        }
        let e = guard.check(ip("::ffff:127.0.0.1")).unwrap_err();
        assert_eq!(e.ip, ip("127.0.0.1"), "mapped addresses are shown as IPv4");
    }

    #[test]
    fn allowed_networks() {
        let nets = parse_networks("127.0.0.0/8, 10.0.0.5, fd00::/8").unwrap();
        let guard = Guard::new(nets);
        assert!(guard.check(ip("127.0.0.1")).is_ok());
        assert!(guard.check(ip("::ffff:127.9.9.9")).is_ok());
        assert!(guard.check(ip("10.0.0.5")).is_ok());
        assert!(guard.check(ip("10.0.0.6")).is_err());
        assert!(guard.check(ip("fd12::1")).is_ok());
        assert!(guard.check(ip("fe80::1")).is_err());
        assert!(parse_networks("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "nope", "::/129", "1.2.3.4/x"] {
            assert!(parse_networks(bad).is_err(), "{bad}");
        }
        assert_eq!("0.0.0.0/0".parse::<Network>().unwrap().to_string(), "0.0.0.0/0");
        assert!(
            "0.0.0.0/0"
                .parse::<Network>()
                .unwrap()
                .contains(ip("192.168.0.1"))
        );
    }

    #[tokio::test]
    async fn urls_are_checked_when_saved() {
        let guard = Guard::default();
        assert!(check_url(&guard, "http://127.0.0.1:9/x").await.is_err());
        assert!(check_url(&guard, "http://localhost/x").await.is_err());
        assert!(check_url(&guard, "http://[fd00::1]/x").await.is_err());
        assert!(check_url(&guard, "https://93.184.215.14/x").await.is_ok());
        assert!(
            check_url(&guard, "http://name.invalid/x").await.is_ok(),
            "unresolvable: checked at connect time"
        );
        let open = Guard::new(parse_networks("127.0.0.0/8,::1/128").unwrap());
        assert!(check_url(&open, "http://localhost/x").await.is_ok());
    }

    #[test]
    fn configured_urls_are_checked_without_a_runtime() {
        let guard = Guard::default();
        let e = check_url_blocking(&guard, "http://127.0.0.1:9/x").unwrap_err();
        assert_eq!(e.ip, ip("127.0.0.1"));
        assert!(check_url_blocking(&guard, "http://localhost/x").is_err());
        assert!(check_url_blocking(&guard, "https://93.184.215.14/x").is_ok());
        assert!(check_url_blocking(&guard, "http://name.invalid/x").is_ok());
        let open = Guard::new(parse_networks("127.0.0.0/8,::1/128").unwrap());
        assert!(check_url_blocking(&open, "http://localhost/x").is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_special_addresses() {
        let resolver = GuardedResolver(Arc::new(Guard::default()));
        let name: Name = "localhost".parse().unwrap();
        let err = match resolver.resolve(name).await {
            Err(e) => e,
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
        };
        assert!(err.to_string().contains("loopback"), "{err}");
        let allowed = GuardedResolver(Arc::new(Guard::new(
            parse_networks("127.0.0.0/8,::1/128").unwrap(),
        )));
        let addrs: Vec<_> = allowed
            .resolve("localhost".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert!(!addrs.is_empty());
    }
}
