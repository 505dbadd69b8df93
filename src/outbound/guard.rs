//! Target safety for outbound requests (WH-7): a user's URL must never make
//! hookflow reach loopback, a private network, link-local (cloud metadata at
//! 169.254.169.254) or any other non-public address, unless an operator
//! allowlisted the range.
//!
//! Three checks, one rule ([`TargetPolicy::check`]):
//! - **At save time**, [`TargetPolicy::check_url`] refuses URLs that cannot be
//!   safe: other schemes, credentials in the URL, a literal IP in a refused range.
//! - **At connect time**, [`GuardedResolver`] drops refused addresses from what a
//!   name resolves to, so the check is on the address actually connected to
//!   (a name that resolved to a public address when saved and to 127.0.0.1 now,
//!   DNS rebinding, is refused now).
//! - **Before sending**, [`TargetPolicy::check_target`]: reqwest connects to a
//!   literal IP host without asking the resolver, so a URL stored before an
//!   allowlist changed is checked again. Redirect hops get the same check from
//!   [`redirect_policy`] (off unless a webhook opts in).
//!
//! [`client`] is the only way to build the HTTP client: without it, an
//! environment proxy would connect on our behalf to whatever the name means to
//! the proxy, and reqwest's default redirect policy would follow ten hops.
//!
//! Must not: open a connection itself (no I/O but the system resolver), or
//! parse IPv4 forms by hand (the URL parser turns `http://2130706433/`,
//! `http://0x7f.1/` and `http://0177.0.0.1/` into 127.0.0.1; the tests pin it).

use std::error::Error as StdError;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;
use url::Host;

/// A category of addresses that webhooks may not reach. `name` is stable
/// (logs, metrics, API errors); the order of the variants is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnsafeRange {
    /// 0.0.0.0/8 ("this network"; Linux connects 0.0.0.0 to itself) and `::`.
    Unspecified,
    /// 127.0.0.0/8 and `::1`: this machine, including hookflow's own API.
    Loopback,
    /// RFC 1918: 10/8, 172.16/12, 192.168/16.
    Private,
    /// 100.64.0.0/10, shared address space behind carrier-grade NAT.
    CarrierGradeNat,
    /// fc00::/7, IPv6's private networks.
    UniqueLocal,
    /// 169.254.0.0/16 (cloud metadata services live at 169.254.169.254) and fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4 and ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15, for benchmarking networks.
    Benchmarking,
    /// 240.0.0.0/4, and IPv6 outside global unicast 2000::/3 (site-local
    /// fec0::/10, discard 100::/64, local NAT64 64:ff9b:1::/48, unassigned space).
    Reserved,
    /// 192.0.0.0/24 and 2001::/23 (IETF protocol assignments, Teredo among them).
    IetfProtocol,
}

impl UnsafeRange {
    /// The stable snake_case name of the category.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::CarrierGradeNat => "carrier_grade_nat",
            Self::UniqueLocal => "unique_local",
            Self::LinkLocal => "link_local",
            Self::Multicast => "multicast",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::Reserved => "reserved",
            Self::IetfProtocol => "ietf_protocol",
        }
    }

    /// The category in words, after "is".
    fn described(self) -> &'static str {
        match self {
            Self::Unspecified => "an unspecified (\"this network\") address",
            Self::Loopback => "a loopback address (this machine)",
            Self::Private => "a private network address",
            Self::CarrierGradeNat => "a carrier-grade NAT (shared) address",
            Self::UniqueLocal => "a unique local (private IPv6) address",
            Self::LinkLocal => "a link-local address",
            Self::Multicast => "a multicast address",
            Self::Broadcast => "the broadcast address",
            Self::Documentation => "an address reserved for documentation",
            Self::Benchmarking => "an address reserved for benchmarking",
            Self::Reserved => "a reserved address",
            Self::IetfProtocol => "an address reserved for IETF protocols",
        }
    }
}

impl fmt::Display for UnsafeRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const THIS_NETWORK: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8);
const CARRIER_GRADE_NAT: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);
const IETF_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24);
const BENCHMARKING: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15);
const RESERVED_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4);

const NAT64: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
const SIX_TO_FOUR: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);
const GLOBAL_UNICAST: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);
const DOCUMENTATION_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32);
const DOCUMENTATION_V6_2024: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20);
const IETF_V6: Ipv6Net = Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23);

/// A range test and the category it refuses; in a list, the first match wins.
type Rule<A> = (fn(&A) -> bool, UnsafeRange);

fn first_match<A>(rules: &[Rule<A>], ip: &A) -> Option<UnsafeRange> {
    rules
        .iter()
        .find(|(applies, _)| applies(ip))
        .map(|&(_, range)| range)
}

/// IPv4 rules (255.255.255.255 is also in 240/4).
const V4_RULES: [Rule<Ipv4Addr>; 11] = [
    (|ip| THIS_NETWORK.contains(ip), UnsafeRange::Unspecified),
    (Ipv4Addr::is_loopback, UnsafeRange::Loopback),
    (Ipv4Addr::is_private, UnsafeRange::Private),
    (
        |ip| CARRIER_GRADE_NAT.contains(ip),
        UnsafeRange::CarrierGradeNat,
    ),
    (Ipv4Addr::is_link_local, UnsafeRange::LinkLocal),
    (|ip| IETF_V4.contains(ip), UnsafeRange::IetfProtocol),
    (Ipv4Addr::is_documentation, UnsafeRange::Documentation),
    (|ip| BENCHMARKING.contains(ip), UnsafeRange::Benchmarking),
    (Ipv4Addr::is_multicast, UnsafeRange::Multicast),
    (Ipv4Addr::is_broadcast, UnsafeRange::Broadcast),
    (|ip| RESERVED_V4.contains(ip), UnsafeRange::Reserved),
];

/// IPv6 rules for addresses that embed no IPv4 address. Everything public is
/// inside 2000::/3, so the last rule refuses the rest.
const V6_RULES: [Rule<Ipv6Addr>; 8] = [
    (Ipv6Addr::is_unspecified, UnsafeRange::Unspecified),
    (Ipv6Addr::is_loopback, UnsafeRange::Loopback),
    (Ipv6Addr::is_multicast, UnsafeRange::Multicast),
    (Ipv6Addr::is_unique_local, UnsafeRange::UniqueLocal),
    (Ipv6Addr::is_unicast_link_local, UnsafeRange::LinkLocal),
    (
        |ip| DOCUMENTATION_V6.contains(ip) || DOCUMENTATION_V6_2024.contains(ip),
        UnsafeRange::Documentation,
    ),
    (|ip| IETF_V6.contains(ip), UnsafeRange::IetfProtocol),
    (|ip| !GLOBAL_UNICAST.contains(ip), UnsafeRange::Reserved),
];

/// Why a webhook may not reach `ip`, or `None` for a public address.
///
/// IPv6 forms that carry an IPv4 address (mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`) get the
/// verdict of the IPv4 address they carry: a NAT64 gateway or a dual-stack
/// socket would connect to it.
pub fn refusal(ip: IpAddr) -> Option<UnsafeRange> {
    match ip {
        IpAddr::V4(ip) => refusal_v4(ip),
        IpAddr::V6(ip) => refusal_v6(ip),
    }
}

fn refusal_v4(ip: Ipv4Addr) -> Option<UnsafeRange> {
    first_match(&V4_RULES, &ip)
}

fn refusal_v6(ip: Ipv6Addr) -> Option<UnsafeRange> {
    // `::` and `::1` first: as "IPv4-compatible" forms they would read as 0.0.0.0/8.
    if ip.is_unspecified() {
        return Some(UnsafeRange::Unspecified);
    }
    if ip.is_loopback() {
        return Some(UnsafeRange::Loopback);
    }
    if let Some(v4) = embedded_v4(ip) {
        return refusal_v4(v4);
    }
    first_match(&V6_RULES, &ip)
}

/// The IPv4 address an IPv6 address carries in a form that reaches it.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = ip.octets();
    if let Some(v4) = ip.to_ipv4() {
        // ::ffff:a.b.c.d (mapped) and ::a.b.c.d (compatible).
        Some(v4)
    } else if NAT64.contains(&ip) {
        Some(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
    } else if SIX_TO_FOUR.contains(&ip) {
        Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]))
    } else {
        None
    }
}

/// A refused target address. The delivery engine finds it in a send error with
/// [`refusal_in`] and reports `incorrect_url_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{ip} is {}; webhooks may only be sent to public addresses (an operator can allowlist a range)",
    .range.described()
)]
pub struct Refused {
    /// The address refused, as connected to or written in the URL.
    pub ip: IpAddr,
    /// Why.
    pub range: UnsafeRange,
}

/// The refusal behind an error of a guarded request (from the resolver, the
/// redirect policy or [`TargetPolicy::check_target`]), however deeply reqwest
/// and hyper wrapped it.
pub fn refusal_in<'e>(error: &'e (dyn StdError + 'static)) -> Option<&'e Refused> {
    std::iter::successors(Some(error), |&e| e.source()).find_map(|e| {
        e.downcast_ref::<Refused>()
            .or(match e.downcast_ref::<UrlProblem>() {
                Some(UrlProblem::Refused(refused)) => Some(refused),
                _ => None,
            })
    })
}

/// The operator's exceptions to [`refusal`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetPolicy {
    /// Ranges opened even if they are in a refused category: a receiver on the
    /// operator's own network, or 127.0.0.0/8 in tests. An IPv4 range also
    /// opens the IPv4-mapped IPv6 forms of its addresses.
    pub allow: Vec<IpNet>,
}

/// What is wrong with a webhook URL, in words the user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    #[error("not a valid URL ({0}); write it in full, like https://example.com/hooks")]
    Invalid(url::ParseError),
    #[error("the URL must start with http:// or https://, not {0}://")]
    Scheme(String),
    #[error("the URL has no host; write it like https://example.com/hooks")]
    NoHost,
    #[error(
        "the URL must not contain a user name or password; set the webhook's authentication instead"
    )]
    Credentials,
    #[error(transparent)]
    Refused(Refused),
}

impl TargetPolicy {
    /// Whether a request may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(range) = refusal(ip) else {
            return Ok(());
        };
        let canonical = ip.to_canonical();
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Ok(());
        }
        Err(Refused { ip, range })
    }

    /// The save-time check of a webhook URL: parsed as reqwest will send it
    /// (odd IPv4 forms normalised to dotted decimal), then [`check_target`].
    ///
    /// A name passes here whatever it resolves to now; [`GuardedResolver`]
    /// checks it at every connect.
    ///
    /// [`check_target`]: Self::check_target
    pub fn check_url(&self, url: &str) -> Result<Url, UrlProblem> {
        let url = Url::parse(url).map_err(UrlProblem::Invalid)?;
        self.check_target(&url)?;
        Ok(url)
    }

    /// The check of a parsed URL, before every send and at every redirect hop:
    /// http or https, a host, no userinfo, and a literal IP host allowed by
    /// [`check`](Self::check). reqwest does not call the resolver for a literal
    /// IP, so this is the only check such a URL gets.
    pub fn check_target(&self, url: &Url) -> Result<(), UrlProblem> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlProblem::Scheme(url.scheme().to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlProblem::Credentials);
        }
        // A `Domain` goes through the guarded resolver, which checks whatever
        // it returns. hyper skips the resolver only for hosts std parses as an
        // IP, and the URL parser has already made every such host (and odder
        // IPv4 forms) an `Ipv4`/`Ipv6` here.
        let literal = match url.host() {
            None => return Err(UrlProblem::NoHost),
            Some(Host::Domain(_)) => return Ok(()),
            Some(Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(Host::Ipv6(ip)) => IpAddr::V6(ip),
        };
        self.check(literal).map_err(UrlProblem::Refused)
    }
}

/// A `reqwest` resolver that lets through only the addresses the policy
/// allows, so the check is on the addresses connected to, at connect time.
pub struct GuardedResolver {
    policy: Arc<TargetPolicy>,
    /// Does the lookup; [`SystemResolver`] in production, a fixed map in tests.
    inner: Arc<dyn Resolve>,
}

impl GuardedResolver {
    pub fn new(policy: Arc<TargetPolicy>, inner: Arc<dyn Resolve>) -> Self {
        Self { policy, inner }
    }
}

impl Resolve for GuardedResolver {
    /// The allowed addresses, in the inner resolver's order; a [`Refused`]
    /// error (the first refused address) when it found some and none is allowed.
    fn resolve(&self, name: Name) -> Resolving {
        let policy = Arc::clone(&self.policy);
        let lookup = self.inner.resolve(name);
        Box::pin(async move {
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = lookup
                .await?
                .filter(|addr| match policy.check(addr.ip()) {
                    Ok(()) => true,
                    Err(refused) => {
                        tracing::debug!(ip = %refused.ip, range = refused.range.name(), "outbound: refused address dropped");
                        first_refusal.get_or_insert(refused);
                        false
                    }
                })
                .collect();
            match first_refusal {
                Some(refused) if allowed.is_empty() => Err(refused.into()),
                _ => Ok(Box::new(allowed.into_iter()) as Addrs),
            }
        })
    }
}

/// The operating system's resolver (`getaddrinfo` via tokio's blocking pool).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: reqwest puts the URL's port (or the scheme's) in.
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Redirects for a webhook: none when `follow` is 0 (the 3xx is the answer,
/// as Svix does); else up to `follow` hops, each checked by
/// [`TargetPolicy::check_target`] (names are checked again by the resolver
/// when the hop connects). One hop too many also returns the 3xx as is.
pub fn redirect_policy(policy: Arc<TargetPolicy>, follow: usize) -> redirect::Policy {
    if follow == 0 {
        return redirect::Policy::none();
    }
    redirect::Policy::custom(move |attempt| {
        // `previous` holds the first URL and every hop before this one.
        if attempt.previous().len() > follow {
            return attempt.stop();
        }
        match policy.check_target(attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(UrlProblem::Refused(refused)) => attempt.error(refused),
            Err(problem) => attempt.error(problem),
        }
    })
}

/// The HTTP client for user-configured targets: names resolved through a
/// [`GuardedResolver`] over `resolver`, environment proxies ignored (a proxy
/// would resolve and connect for us, unchecked), redirects by
/// [`redirect_policy`]. Callers still run [`TargetPolicy::check_target`]
/// before each send, for literal IP hosts.
pub fn client(
    policy: Arc<TargetPolicy>,
    resolver: Arc<dyn Resolve>,
    follow_redirects: usize,
    connect_timeout: Duration,
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver::new(
            Arc::clone(&policy),
            resolver,
        )))
        .redirect(redirect_policy(policy, follow_redirects))
        .connect_timeout(connect_timeout)
        .build()
}

#[cfg(test)]
mod tests {
    use super::UnsafeRange::*;
    use super::*;
    use proptest::prelude::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a test address")
    }

    /// Each refused range with the addresses just inside its edges; the
    /// neighbours just outside are in `PUBLIC` when they are public.
    const REFUSED: &[(&str, UnsafeRange)] = &[
        ("0.0.0.0", Unspecified),
        ("0.255.255.255", Unspecified),
        ("10.0.0.0", Private),
        ("10.255.255.255", Private),
        ("100.64.0.0", CarrierGradeNat),
        ("100.127.255.255", CarrierGradeNat),
        ("127.0.0.0", Loopback),
        ("127.0.0.1", Loopback),
        ("127.255.255.255", Loopback),
        ("169.254.0.0", LinkLocal),
        ("169.254.169.254", LinkLocal),
        ("169.254.255.255", LinkLocal),
        ("172.16.0.0", Private),
        ("172.31.255.255", Private),
        ("192.0.0.0", IetfProtocol),
        ("192.0.0.255", IetfProtocol),
        ("192.0.2.0", Documentation),
        ("192.0.2.255", Documentation),
        ("192.168.0.0", Private),
        ("192.168.255.255", Private),
        ("198.18.0.0", Benchmarking),
        ("198.19.255.255", Benchmarking),
        ("198.51.100.0", Documentation),
        ("198.51.100.255", Documentation),
        ("203.0.113.0", Documentation),
        ("203.0.113.255", Documentation),
        ("224.0.0.0", Multicast),
        ("239.255.255.255", Multicast),
        ("240.0.0.0", Reserved),
        ("255.255.255.254", Reserved),
        ("255.255.255.255", Broadcast),
        ("::", Unspecified),
        ("::1", Loopback),
        ("fc00::", UniqueLocal),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", UniqueLocal),
        ("fe80::", LinkLocal),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", LinkLocal),
        ("fec0::1", Reserved),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
        ("fe00::", Reserved),
        ("ff00::", Multicast),
        ("ff02::1", Multicast),
        ("100::1", Reserved),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Reserved),
        ("4000::", Reserved),
        ("2001::", IetfProtocol),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", IetfProtocol),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", IetfProtocol),
        ("2001:db8::", Documentation),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
        ("3fff::", Documentation),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Documentation),
        ("64:ff9b:1::1", Reserved),
        // IPv4 inside IPv6: mapped, compatible, NAT64, 6to4.
        ("::ffff:127.0.0.1", Loopback),
        ("::ffff:10.1.2.3", Private),
        ("::ffff:169.254.169.254", LinkLocal),
        ("::ffff:0.0.0.0", Unspecified),
        ("::127.0.0.1", Loopback),
        ("::192.168.1.1", Private),
        ("::2", Unspecified),
        ("64:ff9b::7f00:1", Loopback),
        ("64:ff9b::a9fe:a9fe", LinkLocal),
        ("64:ff9b::a64:1", Private),
        ("2002:7f00:1::", Loopback),
        ("2002:a00:1::1", Private),
        ("2002:a9fe:a9fe::1", LinkLocal),
        ("2002:6440:1::", CarrierGradeNat),
    ];

    const PUBLIC: &[&str] = &[
        "1.0.0.0",
        "8.8.8.8",
        "1.1.1.1",
        "9.255.255.255",
        "11.0.0.0",
        "100.63.255.255",
        "100.128.0.0",
        "126.255.255.255",
        "128.0.0.0",
        "169.253.255.255",
        "169.255.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "191.255.255.255",
        "192.0.1.0",
        "192.0.3.0",
        "192.167.255.255",
        "192.169.0.0",
        "198.17.255.255",
        "198.20.0.0",
        "198.51.99.255",
        "198.51.101.0",
        "203.0.112.255",
        "203.0.114.0",
        "223.255.255.255",
        "2606:4700::1111",
        "2a00:1450:4001:80b::200e",
        "2000::",
        "2001:200::",
        "2001:db7:ffff:ffff:ffff:ffff:ffff:ffff",
        "2001:db9::",
        "3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "3fff:1000::",
        "::ffff:8.8.8.8",
        "::8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ];

    #[test]
    fn every_refused_range_is_refused_up_to_its_edges() {
        for &(text, expected) in REFUSED {
            assert_eq!(refusal(ip(text)), Some(expected), "{text}");
        }
    }

    #[test]
    fn public_addresses_and_the_neighbours_of_refused_ranges_are_allowed() {
        for &text in PUBLIC {
            assert_eq!(refusal(ip(text)), None, "{text}");
        }
    }

    #[test]
    fn range_names_are_stable() {
        let names: Vec<&str> = [
            Unspecified,
            Loopback,
            Private,
            CarrierGradeNat,
            UniqueLocal,
            LinkLocal,
            Multicast,
            Broadcast,
            Documentation,
            Benchmarking,
            Reserved,
            IetfProtocol,
        ]
        .map(UnsafeRange::name)
        .to_vec();
        assert_eq!(
            names,
            [
                "unspecified",
                "loopback",
                "private",
                "carrier_grade_nat",
                "unique_local",
                "link_local",
                "multicast",
                "broadcast",
                "documentation",
                "benchmarking",
                "reserved",
                "ietf_protocol"
            ]
        );
    }

    fn allowing(nets: &[&str]) -> TargetPolicy {
        TargetPolicy {
            allow: nets
                .iter()
                .map(|n| n.parse().expect("a test net"))
                .collect(),
        }
    }

    #[test]
    fn the_allowlist_opens_its_ranges_and_their_mapped_forms_only() {
        let policy = allowing(&["127.0.0.0/8", "10.1.0.0/16", "fd00::/64"]);
        for open in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "10.1.255.255",
            "fd00::2",
            "8.8.8.8",
        ] {
            assert_eq!(policy.check(ip(open)), Ok(()), "{open}");
        }
        for (closed, range) in [
            ("10.2.0.0", Private),
            ("::1", Loopback),
            ("fd00:0:0:1::2", UniqueLocal),
        ] {
            assert_eq!(
                policy.check(ip(closed)),
                Err(Refused {
                    ip: ip(closed),
                    range
                })
            );
        }
        assert!(TargetPolicy::default().check(ip("127.0.0.1")).is_err());
    }

    #[test]
    fn odd_ipv4_forms_in_urls_are_normalised_by_the_parser_and_refused() {
        let policy = TargetPolicy::default();
        for url in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://127.0.0.1./",
            "http://127.000.000.001/",
            "http://①②⑦.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]:8080/",
            "https://[::1]/",
        ] {
            let problem = policy.check_url(url).expect_err(url);
            assert!(
                matches!(
                    problem,
                    UrlProblem::Refused(Refused {
                        range: Loopback,
                        ..
                    })
                ),
                "{url}: {problem:?}"
            );
        }
        let parsed = Url::parse("http://0x7f.1/").expect("a URL");
        assert_eq!(parsed.host_str(), Some("127.0.0.1"));
    }

    #[test]
    fn refused_literal_hosts_of_every_kind_are_named_in_the_error() {
        let policy = TargetPolicy::default();
        let problem = policy
            .check_url("https://169.254.169.254/latest/meta-data/")
            .expect_err("metadata");
        assert_eq!(
            problem.to_string(),
            "169.254.169.254 is a link-local address; webhooks may only be sent to public \
             addresses (an operator can allowlist a range)"
        );
        assert!(policy.check_url("http://10.0.0.1/").is_err());
        assert!(policy.check_url("http://[fd00::1]/").is_err());
    }

    #[test]
    fn urls_that_cannot_be_webhook_targets_are_refused_with_the_reason() {
        let policy = TargetPolicy::default();
        type Expected = fn(&UrlProblem) -> bool;
        let cases: &[(&str, Expected)] = &[
            (
                "ftp://example.com/",
                |p| matches!(p, UrlProblem::Scheme(s) if s == "ftp"),
            ),
            ("file:///etc/passwd", |p| matches!(p, UrlProblem::Scheme(_))),
            ("https://user:pw@example.com/", |p| {
                *p == UrlProblem::Credentials
            }),
            ("https://user@example.com/", |p| {
                *p == UrlProblem::Credentials
            }),
            ("https://:pw@example.com/", |p| {
                *p == UrlProblem::Credentials
            }),
            ("example.com/hooks", |p| matches!(p, UrlProblem::Invalid(_))),
            ("http://", |p| matches!(p, UrlProblem::Invalid(_))),
            ("http://256.0.0.1/", |p| matches!(p, UrlProblem::Invalid(_))),
            ("http://[::1/", |p| matches!(p, UrlProblem::Invalid(_))),
            ("", |p| matches!(p, UrlProblem::Invalid(_))),
        ];
        for (url, expected) in cases {
            let problem = policy.check_url(url).expect_err(url);
            assert!(expected(&problem), "{url}: {problem:?}");
        }
        assert_eq!(
            policy
                .check_url("ftp://example.com/")
                .expect_err("ftp")
                .to_string(),
            "the URL must start with http:// or https://, not ftp://"
        );
    }

    #[test]
    fn public_and_named_targets_pass_the_url_check() {
        let policy = TargetPolicy::default();
        for url in [
            "https://example.com/hooks?x=1",
            "http://8.8.8.8:8080/",
            "https://[2606:4700::1111]/",
            // A name passes whatever it means; the resolver checks it at connect.
            "http://localhost/",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url}");
        }
        let allowed = allowing(&["127.0.0.0/8"]);
        assert!(allowed.check_url("http://127.0.0.1:9000/").is_ok());
    }

    /// A resolver that answers every name with the same addresses.
    struct Fixed(Vec<&'static str>);

    impl Resolve for Fixed {
        fn resolve(&self, _: Name) -> Resolving {
            let addrs: Vec<SocketAddr> = self.0.iter().map(|a| SocketAddr::new(ip(a), 0)).collect();
            Box::pin(async move { Ok(Box::new(addrs.into_iter()) as Addrs) })
        }
    }

    async fn guarded(
        answers: Vec<&'static str>,
    ) -> Result<Vec<IpAddr>, Box<dyn StdError + Send + Sync>> {
        let resolver =
            GuardedResolver::new(Arc::new(TargetPolicy::default()), Arc::new(Fixed(answers)));
        let name: Name = "target.example".parse().expect("a name");
        Ok(resolver.resolve(name).await?.map(|a| a.ip()).collect())
    }

    #[tokio::test]
    async fn the_resolver_drops_refused_addresses_and_keeps_the_rest_in_order() {
        let kept = guarded(vec!["10.0.0.1", "8.8.8.8", "::1", "2606:4700::1111"]).await;
        assert_eq!(
            kept.expect("allowed addresses"),
            [ip("8.8.8.8"), ip("2606:4700::1111")]
        );
    }

    #[tokio::test]
    async fn the_resolver_fails_with_the_first_refusal_when_nothing_is_left() {
        let error = guarded(vec!["169.254.169.254", "10.0.0.1"])
            .await
            .expect_err("all refused");
        let refused = refusal_in(&*error).expect("a Refused");
        assert_eq!(
            *refused,
            Refused {
                ip: ip("169.254.169.254"),
                range: LinkLocal
            }
        );
        // An empty answer is the inner resolver's business, not a refusal.
        assert_eq!(guarded(vec![]).await.expect("empty"), Vec::<IpAddr>::new());
    }

    proptest! {
        #[test]
        fn an_ipv4_address_and_its_mapped_form_get_one_verdict(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            prop_assert_eq!(refusal(IpAddr::V4(v4)), refusal(IpAddr::V6(v4.to_ipv6_mapped())));
        }

        #[test]
        fn a_decimal_integer_host_is_checked_as_its_dotted_form(bits: u32) {
            let policy = TargetPolicy::default();
            let dotted = policy.check_url(&format!("http://{}/", Ipv4Addr::from(bits)));
            let integer = policy.check_url(&format!("http://{bits}/"));
            prop_assert_eq!(integer, dotted);
        }

        #[test]
        fn no_url_makes_the_check_panic(url in "\\PC*", host in "[0-9a-fx.:\\[\\]%@]{0,24}") {
            let policy = TargetPolicy::default();
            let _ = policy.check_url(&url);
            let _ = policy.check_url(&format!("http://{host}/"));
        }
    }
}
