//! The SSRF guard: which addresses a user-supplied source may reach.
//!
//! It owns address classification, the `data_extraction.allow_hosts` allow-list and
//! [`GuardedResolver`], the DNS resolver of the kind's HTTP client. The resolver
//! checks every address a name resolves to and hands reqwest only the addresses it
//! checked, so the connection goes to an address that passed (a DNS answer cannot
//! change between the check and the connect). IP literals never reach a resolver,
//! so [`Guard::check_url`] checks them before each request.
//!
//! **Invariant:** this module never opens a connection; it only answers "may we"
//! (it resolves names). Checked by
//! `tests/integration/invariants.rs::the_ssrf_guard_never_opens_a_connection`.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::{Host, Url};

/// What kind of network an address belongs to. Everything but `Public` is refused
/// unless the allow-list opens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    Loopback,
    /// RFC 1918 and IPv6 unique-local (fc00::/7).
    Private,
    LinkLocal,
    Unspecified,
    Multicast,
    /// Carrier-grade NAT, 100.64.0.0/10.
    SharedCgnat,
    /// 169.254.169.254 and fd00:ec2::254, where cloud VMs read their credentials.
    CloudMetadata,
    /// Broadcast and the reserved 240.0.0.0/4.
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Multicast => "multicast",
            AddressClass::SharedCgnat => "shared (CGNAT)",
            AddressClass::CloudMetadata => "cloud metadata",
            AddressClass::Reserved => "reserved",
        })
    }
}

/// A source or redirect target the guard refused. The message is the one users see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error(
        "host {host} resolves to {article} {class} address; refused (add it to data_extraction.allow_hosts to permit)",
        article = article(class)
    )]
    Literal { host: String, class: AddressClass },
    #[error(
        "host {host} resolves to {addr}, {article} {class} address; refused (add it to data_extraction.allow_hosts to permit)",
        article = article(class)
    )]
    Resolved {
        host: String,
        addr: IpAddr,
        class: AddressClass,
    },
    #[error("host {host} did not resolve to any address")]
    NoAddress { host: String },
}

fn article(class: &AddressClass) -> &'static str {
    match class {
        AddressClass::Unspecified => "an",
        _ => "a",
    }
}

/// The allow-list, normalised once. Shared by the handler and the resolver.
#[derive(Debug, Default)]
pub struct Guard {
    /// Lower-case host names, without a trailing dot.
    names: HashSet<String>,
    ips: HashSet<IpAddr>,
}

impl Guard {
    pub fn new(allow_hosts: &[String]) -> Guard {
        let mut guard = Guard::default();
        for entry in allow_hosts {
            let plain = entry.trim_start_matches('[').trim_end_matches(']');
            match plain.parse::<IpAddr>() {
                Ok(ip) => {
                    guard.ips.insert(canonical(ip));
                }
                Err(_) => {
                    guard
                        .names
                        .insert(plain.trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        guard
    }

    /// Checks the parts of a URL no resolver sees: an IP-literal host. A host name
    /// is checked when it is resolved (see [`GuardedResolver`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        let ip = match url.host() {
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        match self.class_if_refused(None, ip) {
            None => Ok(()),
            Some(class) => Err(Refused::Literal {
                host: ip.to_string(),
                class,
            }),
        }
    }

    /// Keeps the addresses `host` may use; refuses when none is left. Addresses
    /// that fail are dropped rather than tried later, so an answer mixing a public
    /// and a private address cannot steer the connection to the private one.
    pub fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refused> {
        let mut first_refused = None;
        let kept: Vec<SocketAddr> = addrs
            .into_iter()
            .filter(|addr| match self.class_if_refused(Some(host), addr.ip()) {
                None => true,
                Some(class) => {
                    first_refused.get_or_insert((addr.ip(), class));
                    false
                }
            })
            .collect();
        match (kept.is_empty(), first_refused) {
            (false, _) => Ok(kept),
            (true, Some((addr, class))) => Err(Refused::Resolved {
                host: host.to_owned(),
                addr: canonical(addr),
                class,
            }),
            (true, None) => Err(Refused::NoAddress {
                host: host.to_owned(),
            }),
        }
    }

    /// None when `ip` (reached through `host`, if a name) may be used.
    fn class_if_refused(&self, host: Option<&str>, ip: IpAddr) -> Option<AddressClass> {
        let class = classify(ip);
        let allowed = class == AddressClass::Public
            || self.ips.contains(&canonical(ip))
            || host.is_some_and(|h| {
                self.names
                    .contains(&h.trim_end_matches('.').to_ascii_lowercase())
            });
        (!allowed).then_some(class)
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:127.0.0.1`) reach the IPv4 host, so they
/// are treated as that IPv4 address everywhere.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// Which network `ip` is on.
pub fn classify(ip: IpAddr) -> AddressClass {
    match canonical(ip) {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        AddressClass::CloudMetadata
    } else if a == 0 {
        // 0.0.0.0/8 means "this host" to most stacks: as good as loopback.
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if a >= 240 {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let first = ip.segments()[0];
    if ip == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
        AddressClass::CloudMetadata
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if (first & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (first & 0xffc0) == 0xfe80 {
        AddressClass::LinkLocal
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if let Some(embedded) = nat64_embedded(ip) {
        // A NAT64 gateway forwards 64:ff9b::/96 to the IPv4 address in its low bits.
        classify_v4(embedded)
    } else {
        AddressClass::Public
    }
}

fn nat64_embedded(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    (s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]).then(|| {
        let [.., a, b, c, d] = ip.octets();
        Ipv4Addr::new(a, b, c, d)
    })
}

/// The HTTP client's resolver: the system resolver, then [`Guard::filter`].
pub struct GuardedResolver {
    pub guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest replaces it with the URL's port.
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let kept = guard.filter(&host, found)?;
            let addrs: Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

/// Finds a [`Refused`] in an error's source chain (reqwest wraps resolver errors).
pub fn find_refused<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Refused> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn loopback_private_link_local_and_cgnat_addresses_are_not_public() {
        for (addr, class) in [
            ("127.0.0.1", AddressClass::Loopback),
            ("127.8.9.10", AddressClass::Loopback),
            ("::1", AddressClass::Loopback),
            ("10.1.2.3", AddressClass::Private),
            ("172.16.0.1", AddressClass::Private),
            ("172.31.255.255", AddressClass::Private),
            ("192.168.1.1", AddressClass::Private),
            ("fd12:3456::1", AddressClass::Private),
            ("fc00::1", AddressClass::Private),
            ("169.254.1.1", AddressClass::LinkLocal),
            ("fe80::1", AddressClass::LinkLocal),
            ("0.0.0.0", AddressClass::Unspecified),
            ("::", AddressClass::Unspecified),
            ("224.0.0.1", AddressClass::Multicast),
            ("ff02::1", AddressClass::Multicast),
            ("100.64.0.1", AddressClass::SharedCgnat),
            ("100.127.255.254", AddressClass::SharedCgnat),
            ("169.254.169.254", AddressClass::CloudMetadata),
            ("fd00:ec2::254", AddressClass::CloudMetadata),
            ("255.255.255.255", AddressClass::Reserved),
        ] {
            assert_eq!(classify(ip(addr)), class, "{addr}");
        }
    }

    #[test]
    fn ordinary_internet_addresses_are_public() {
        for addr in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            assert_eq!(classify(ip(addr)), AddressClass::Public, "{addr}");
        }
    }

    #[test]
    fn ipv4_mapped_and_nat64_addresses_are_classified_by_their_ipv4_address() {
        assert_eq!(classify(ip("::ffff:127.0.0.1")), AddressClass::Loopback);
        assert_eq!(classify(ip("::ffff:10.0.0.1")), AddressClass::Private);
        assert_eq!(
            classify(ip("64:ff9b::a9fe:a9fe")),
            AddressClass::CloudMetadata
        );
        assert_eq!(classify(ip("64:ff9b::808:808")), AddressClass::Public);
    }

    #[test]
    fn an_ip_literal_url_on_loopback_is_refused_with_the_allow_list_hint() {
        let guard = Guard::new(&[]);
        let err = guard
            .check_url(&Url::parse("http://127.0.0.1:8080/x").unwrap())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "host 127.0.0.1 resolves to a loopback address; refused (add it to data_extraction.allow_hosts to permit)"
        );
        // The URL parser normalises tricks like hex octets before we see them.
        assert!(
            guard
                .check_url(&Url::parse("http://0x7f.1/").unwrap())
                .is_err()
        );
        assert!(
            guard
                .check_url(&Url::parse("http://[::ffff:7f00:1]/").unwrap())
                .is_err()
        );
        assert!(
            guard
                .check_url(&Url::parse("http://example.com/").unwrap())
                .is_ok()
        );
    }

    #[test]
    fn the_allow_list_opens_an_address_or_a_host_name() {
        let guard = Guard::new(&["127.0.0.1".into(), "Intranet.Local.".into(), "[::1]".into()]);
        assert!(
            guard
                .check_url(&Url::parse("http://127.0.0.1/").unwrap())
                .is_ok()
        );
        assert!(
            guard
                .check_url(&Url::parse("http://[::1]/").unwrap())
                .is_ok()
        );
        let private: SocketAddr = "10.0.0.5:80".parse().unwrap();
        assert_eq!(
            guard.filter("intranet.local", vec![private]).unwrap(),
            vec![private]
        );
        let err = guard.filter("other.local", vec![private]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "host other.local resolves to 10.0.0.5, a private address; refused (add it to data_extraction.allow_hosts to permit)"
        );
    }

    #[test]
    fn a_name_resolving_to_public_and_private_addresses_keeps_only_the_public_one() {
        let guard = Guard::new(&[]);
        let public: SocketAddr = "93.184.216.34:443".parse().unwrap();
        let private: SocketAddr = "192.168.0.1:443".parse().unwrap();
        assert_eq!(
            guard
                .filter("mixed.example", vec![private, public])
                .unwrap(),
            vec![public]
        );
    }
}
