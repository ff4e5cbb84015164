//! The DNS upstream: the gateway forwards DNS (udp and tcp port 53, to its IPv4 address and
//! to its IPv6 address `fd64::1`) to it through a NAT redirect (or, for the other family,
//! the gateway's DNS relay). The one resolver-configuration reader of the workspace
//! (hostnetd and `hostnet-lab attach` both use it): [`ResolverPaths::choose_upstream`].
//!
//! The upstream is reached from the NAT's external address through the TUN, so the host
//! kernel routes it like a packet from another machine: a loopback nameserver (127.0.0.0/8,
//! 0.0.0.0, `::1`, `::`) is a martian destination there and is dropped, and a link-local
//! IPv6 one (`fe80::/10`) has no meaning off its own link. The choice, IPv4 first:
//!
//! 1. the first IPv4 nameserver of `/etc/resolv.conf` that is not loopback or unspecified;
//! 2. if it names only loopback ones and one of them is systemd-resolved's stub (127.0.0.53,
//!    or 127.0.0.54 in proxy mode), the first usable IPv4 one of
//!    `/run/systemd/resolve/resolv.conf`, where systemd-resolved writes the upstreams it
//!    uses itself (slirp4netns does the same; passt takes the first non-loopback entry);
//! 3. then the same for IPv6: the first usable IPv6 nameserver of `/etc/resolv.conf`, else
//!    (stub only) of systemd-resolved's file;
//! 4. otherwise none: [`DnsChoice::upstream`] is `None`, the gateway answers the guest's DNS
//!    queries with REFUSED at once (as dnsmasq does with no servers; TCP: a RST), and
//!    [`DnsChoice::log`] warns.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::io;
use std::path::{Path, PathBuf};

/// Every IPv4 `nameserver` in resolv.conf text, in file order: the one resolv.conf parser of
/// the workspace. Comments (from `#` or `;`) are ignored, IPv6 and malformed addresses
/// skipped; loopback addresses are kept (see [`parse_resolv_conf`] for the usable one).
pub fn resolv_conf_nameservers(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    nameserver_entries(text).filter_map(|a| match a {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    })
}

/// The first usable IPv4 `nameserver` in resolv.conf text ([`is_usable_upstream`]).
pub fn parse_resolv_conf(text: &str) -> Option<Ipv4Addr> {
    resolv_conf_nameservers(text).find(|&a| is_usable_upstream(a))
}

/// Whether packets from the guest can reach `addr` through the TUN: not loopback
/// (127.0.0.0/8, `::1`: a martian destination for the host kernel on a non-loopback device),
/// not unspecified (0.0.0.0, `::`, which resolvers read as "this host"), not multicast, and
/// for IPv6 not link-local (`fe80::/10`: which link is lost on the way through the TUN).
#[must_use]
pub fn is_usable_upstream(addr: impl Into<IpAddr>) -> bool {
    let addr = addr.into();
    !addr.is_loopback()
        && !addr.is_unspecified()
        && !addr.is_multicast()
        && !matches!(addr, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// The host's DNS upstream, port 53, chosen from the default [`ResolverPaths`] (see the
/// module docs); `None` if none is usable.
pub fn host_dns_upstream() -> Option<SocketAddr> {
    ResolverPaths::default().choose_upstream().upstream
}

/// Parses a DNS upstream as `--dns-upstream` takes it: `A`, `A:port`, `V6`, `[V6]` or
/// `[V6]:port` (IPv4 `A`, IPv6 `V6`; the port defaults to 53 and is not 0). Says nothing of
/// whether the address is usable ([`DnsChoice::explicit`] does).
///
/// # Errors
///
/// The message `bad --dns-upstream "<s>": expected <IPv4>[:port], <IPv6> or [<IPv6>]:port`.
pub fn parse_dns_upstream(s: &str) -> Result<SocketAddr, String> {
    let bracketed = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(a) = bracketed.parse::<IpAddr>() {
        return Ok(SocketAddr::new(a, 53));
    }
    match s.parse::<SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(sa),
        _ => Err(format!(
            "bad --dns-upstream {s:?}: expected <IPv4>[:port], <IPv6> or [<IPv6>]:port"
        )),
    }
}

/// Where the resolver configuration is read: injectable for tests and for a namespace's own
/// `/etc/netns/<name>/resolv.conf`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverPaths {
    /// The resolver configuration (default [`RESOLV_CONF`]).
    pub resolv_conf: PathBuf,
    /// systemd-resolved's list of its real upstreams, read when `resolv_conf` names only
    /// its stub (default [`SYSTEMD_RESOLV_CONF`]).
    pub systemd_resolv_conf: PathBuf,
}

impl Default for ResolverPaths {
    fn default() -> Self {
        Self {
            resolv_conf: PathBuf::from(RESOLV_CONF),
            systemd_resolv_conf: PathBuf::from(SYSTEMD_RESOLV_CONF),
        }
    }
}

impl ResolverPaths {
    /// The paths for a process in the named network namespace: `/etc/netns/<name>/resolv.conf`
    /// if it exists (what `ip netns exec` bind-mounts over `/etc/resolv.conf`), else the
    /// defaults.
    #[must_use]
    pub fn for_netns(name: &str) -> Self {
        let own = PathBuf::from(format!("/etc/netns/{name}/resolv.conf"));
        let mut paths = Self::default();
        if own.exists() {
            paths.resolv_conf = own;
        }
        paths
    }

    /// Chooses the upstream (see the module docs). Reads `resolv_conf`, and
    /// `systemd_resolv_conf` only if `resolv_conf` names nothing usable but the stub.
    #[must_use]
    pub fn choose_upstream(&self) -> DnsChoice {
        let text = match std::fs::read_to_string(&self.resolv_conf) {
            Ok(t) => t,
            Err(e) => return DnsChoice::none(format!("{}: {e}", self.resolv_conf.display())),
        };
        let systemd = || {
            (
                self.systemd_resolv_conf.as_path(),
                std::fs::read_to_string(&self.systemd_resolv_conf),
            )
        };
        choose(&self.resolv_conf, &text, systemd)
    }
}

/// The chosen DNS upstream and where it came from, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsChoice {
    /// The upstream, IPv4 or IPv6 (port 53 unless given); `None`: no usable one, the
    /// gateway refuses DNS.
    pub upstream: Option<SocketAddr>,
    /// Where the upstream came from, or why none is usable (one line, for the log).
    pub reason: String,
}

impl DnsChoice {
    /// An upstream given on the command line (`--dns-upstream`, IPv4 or IPv6). A loopback,
    /// unspecified, multicast or link-local address is not usable through the TUN
    /// ([`is_usable_upstream`]): it gives no upstream, and says why.
    #[must_use]
    pub fn explicit(addr: SocketAddr) -> Self {
        if is_usable_upstream(addr.ip()) {
            Self {
                upstream: Some(addr),
                reason: "--dns-upstream".to_owned(),
            }
        } else {
            Self::none(format!(
                "--dns-upstream {addr} is a loopback, unspecified, multicast or link-local \
                 address, which the host kernel does not route from the TUN"
            ))
        }
    }

    /// Logs the choice once at start: INFO `dns upstream` with the address and its source, or
    /// WARN that there is none and the gateway refuses DNS.
    pub fn log(&self) {
        match self.upstream {
            Some(up) => tracing::info!(dns_upstream = %up, source = %self.reason, "dns upstream"),
            None => tracing::warn!(reason = %self.reason, "{self}"),
        }
    }

    fn none(reason: String) -> Self {
        Self {
            upstream: None,
            reason,
        }
    }
}

impl fmt::Display for DnsChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.upstream {
            Some(up) => write!(f, "dns upstream {up} ({})", self.reason),
            None => write!(
                f,
                "no usable dns upstream ({}): the gateway answers the guest's DNS queries with \
                 REFUSED; pass --dns-upstream <IPv4 or IPv6 address>",
                self.reason
            ),
        }
    }
}

/// The choice from `text` (read from `path`) and, lazily, systemd-resolved's file.
fn choose<'a>(
    path: &Path,
    text: &str,
    systemd: impl FnOnce() -> (&'a Path, io::Result<String>),
) -> DnsChoice {
    let found = |ip: IpAddr, reason: String| DnsChoice {
        upstream: Some(SocketAddr::new(ip, 53)),
        reason,
    };
    let all: Vec<IpAddr> = nameserver_entries(text).collect();
    if let Some(ip) = first_usable(&all, IpAddr::is_ipv4) {
        return found(ip, path.display().to_string());
    }
    let stub = all.iter().find_map(|a| match a {
        IpAddr::V4(v4) if SYSTEMD_STUBS.contains(v4) => Some(*v4),
        _ => None,
    });
    let own_v6 = first_usable(&all, IpAddr::is_ipv6);
    let Some(stub) = stub else {
        if let Some(ip) = own_v6 {
            return found(
                ip,
                format!("{} (no usable IPv4 nameserver)", path.display()),
            );
        }
        let why = if all.is_empty() {
            "names no nameserver".to_owned()
        } else {
            format!(
                "names only nameservers not reachable through the TUN ({}: loopback, \
                 unspecified or link-local)",
                list(&all)
            )
        };
        return DnsChoice::none(format!("{} {why}", path.display()));
    };
    let (spath, stext) = systemd();
    let head = format!(
        "{} names only systemd-resolved's stub {stub}",
        path.display()
    );
    let theirs: Vec<IpAddr> = match &stext {
        Ok(t) => nameserver_entries(t).collect(),
        Err(_) => Vec::new(),
    };
    if let Some(ip) = first_usable(&theirs, IpAddr::is_ipv4) {
        return found(ip, format!("{}, because {head}", spath.display()));
    }
    if let Some(ip) = own_v6 {
        return found(
            ip,
            format!("{} (no usable IPv4 nameserver)", path.display()),
        );
    }
    if let Some(ip) = first_usable(&theirs, IpAddr::is_ipv6) {
        return found(
            ip,
            format!(
                "{}, because {head} (no usable IPv4 nameserver)",
                spath.display()
            ),
        );
    }
    match stext {
        Ok(_) => DnsChoice::none(format!(
            "{head} and {} names no usable nameserver",
            spath.display()
        )),
        Err(e) => DnsChoice::none(format!("{head} and {}: {e}", spath.display())),
    }
}

/// The first usable ([`is_usable_upstream`]) address of `addrs` of the family `family`
/// says.
fn first_usable(addrs: &[IpAddr], family: impl Fn(&IpAddr) -> bool) -> Option<IpAddr> {
    addrs
        .iter()
        .copied()
        .find(|a| family(a) && is_usable_upstream(*a))
}

/// Every `nameserver` address in resolv.conf text, IPv4 and IPv6, in file order.
fn nameserver_entries(text: &str) -> impl Iterator<Item = IpAddr> + '_ {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) is still IPv6.
        .filter_map(|a| a.split('%').next().and_then(|a| a.parse::<IpAddr>().ok()))
}

fn list(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The host's resolver configuration.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The upstreams systemd-resolved uses (not its stub).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
/// systemd-resolved's stub listeners (127.0.0.54: proxy mode).
const SYSTEMD_STUBS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(127, 0, 0, 54)];

#[cfg(test)]
mod tests {
    use super::*;

    const STUB: &str = "# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n";
    const REAL: &str = "# This is /run/systemd/resolve/resolv.conf\nnameserver fe80::1%enp1s0\nnameserver 10.0.2.3\nnameserver 9.9.9.9\n";

    fn pick(text: &str, systemd: io::Result<String>) -> DnsChoice {
        choose(Path::new("/etc/resolv.conf"), text, || {
            (Path::new("/run/systemd/resolve/resolv.conf"), systemd)
        })
    }

    fn up(a: [u8; 4]) -> Option<SocketAddr> {
        Some(SocketAddr::new(Ipv4Addr::from(a).into(), 53))
    }

    fn up6(a: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(a.parse().unwrap(), 53))
    }

    #[test]
    fn first_usable_ipv4_nameserver() {
        let t = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\n  nameserver\t198.18.0.53 # comment\nnameserver 9.9.9.9\n";
        assert_eq!(parse_resolv_conf(t), Some(Ipv4Addr::new(198, 18, 0, 53)));
        assert_eq!(
            parse_resolv_conf("nameserver 127.0.0.1\noptions edns0\n"),
            None
        );
        assert_eq!(parse_resolv_conf("nameserver 0.0.0.0\n"), None);
        assert_eq!(
            parse_resolv_conf("; nameserver 1.2.3.4\nnameserverx 5.6.7.8\n"),
            None
        );
        assert_eq!(parse_resolv_conf(""), None);
    }

    #[test]
    fn every_ipv4_nameserver_in_order_loopback_included() {
        let t = "nameserver 127.0.0.53\nnameserver fe80::1\n#nameserver 1.1.1.1\nnameserver 9.9.9.9 # x\n";
        let all: Vec<Ipv4Addr> = resolv_conf_nameservers(t).collect();
        assert_eq!(
            all,
            [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }

    #[test]
    fn a_usable_entry_of_resolv_conf_wins_and_systemd_is_not_read() {
        let c = choose(
            Path::new("/etc/resolv.conf"),
            "nameserver 127.0.0.53\nnameserver 192.0.2.53\n",
            || panic!("systemd-resolved's file read although resolv.conf has a usable entry"),
        );
        assert_eq!(c.upstream, up([192, 0, 2, 53]));
        assert_eq!(c.reason, "/etc/resolv.conf");
    }

    #[test]
    fn the_stub_alone_takes_systemd_resolveds_upstreams() {
        let c = pick(STUB, Ok(REAL.to_owned()));
        assert_eq!(c.upstream, up([10, 0, 2, 3]));
        assert!(c.reason.contains("/run/systemd/resolve/resolv.conf"), "{c}");
        assert!(c.reason.contains("stub 127.0.0.53"), "{c}");
        let c = pick("nameserver 127.0.0.54\n", Ok(REAL.to_owned()));
        assert_eq!(c.upstream, up([10, 0, 2, 3]));
    }

    #[test]
    fn no_usable_upstream_says_why() {
        let c = pick(STUB, Err(io::ErrorKind::NotFound.into()));
        assert_eq!(c.upstream, None);
        assert!(c.reason.contains("stub 127.0.0.53"), "{c}");
        assert!(c.to_string().contains("REFUSED"), "{c}");
        let c = pick(STUB, Ok("nameserver 127.0.0.1\n".to_owned()));
        assert_eq!(c.upstream, None);
        assert!(c.reason.contains("no usable"), "{c}");
        // A loopback resolver other than the stub (dnsmasq, unbound on 127.0.0.1): systemd's
        // file is not consulted.
        let c = choose(
            Path::new("/etc/resolv.conf"),
            "nameserver 127.0.0.1\n",
            || panic!("read for a non-stub loopback"),
        );
        assert_eq!(c.upstream, None);
        assert!(
            c.reason
                .contains("not reachable through the TUN (127.0.0.1"),
            "{c}"
        );
        let c = pick(
            "nameserver ::1\nnameserver fe80::1%eth0\nnameserver ::\n",
            Ok(REAL.to_owned()),
        );
        assert_eq!(c.upstream, None);
        assert!(c.reason.contains("not reachable through the TUN"), "{c}");
        let c = pick("search x\n", Ok(REAL.to_owned()));
        assert!(c.reason.contains("names no nameserver"), "{c}");
    }

    #[test]
    fn ipv6_nameservers_are_the_fallback_ipv4_stays_preferred() {
        let t = "nameserver ::1\nnameserver fe80::1%eth0\nnameserver 2001:db8::53\n";
        let c = pick(t, Ok(REAL.to_owned()));
        assert_eq!(c.upstream, up6("2001:db8::53"));
        assert!(c.reason.contains("no usable IPv4"), "{c}");
        // An IPv4 one wins wherever it is in the file.
        let c = pick(
            "nameserver 2001:db8::53\nnameserver 198.18.0.2\n",
            Ok(REAL.to_owned()),
        );
        assert_eq!(c.upstream, up([198, 18, 0, 2]));
        // The stub: systemd's IPv4 upstream before resolv.conf's own IPv6 one, which comes
        // before systemd's IPv6 one.
        let stub_and_v6 = "nameserver 127.0.0.53\nnameserver 2001:db8::53\n";
        assert_eq!(
            pick(stub_and_v6, Ok(REAL.to_owned())).upstream,
            up([10, 0, 2, 3])
        );
        let v6_only = "nameserver fe80::1%eth0\nnameserver 2001:db8::99\n".to_owned();
        assert_eq!(
            pick(stub_and_v6, Ok(v6_only.clone())).upstream,
            up6("2001:db8::53")
        );
        let c = pick(STUB, Ok(v6_only));
        assert_eq!(c.upstream, up6("2001:db8::99"));
        assert!(c.reason.contains("stub 127.0.0.53"), "{c}");
    }

    #[test]
    fn explicit_loopback_link_local_and_unspecified_are_not_usable() {
        for bad in [
            "127.0.0.53:53",
            "[::1]:53",
            "[fe80::1]:53",
            "[::]:53",
            "[ff02::1]:53",
        ] {
            let a: SocketAddr = bad.parse().unwrap();
            assert_eq!(DnsChoice::explicit(a).upstream, None, "{bad}");
        }
        for good in ["198.18.0.2:5353", "[2001:db8::2]:53"] {
            let a: SocketAddr = good.parse().unwrap();
            assert_eq!(DnsChoice::explicit(a).upstream, Some(a));
        }
    }

    #[test]
    fn upstreams_parse_in_either_family() {
        let ok = [
            ("198.18.0.2", "198.18.0.2:53"),
            ("198.18.0.2:5353", "198.18.0.2:5353"),
            ("2001:db8::2", "[2001:db8::2]:53"),
            ("[2001:db8::2]", "[2001:db8::2]:53"),
            ("[2001:db8::2]:5353", "[2001:db8::2]:5353"),
        ];
        for (s, want) in ok {
            assert_eq!(parse_dns_upstream(s), Ok(want.parse().unwrap()), "{s}");
        }
        for bad in [
            "example.com",
            "1.2.3.4:0",
            "[2001:db8::2]:0",
            "2001:db8::2:53:x",
            "",
        ] {
            let e = parse_dns_upstream(bad).unwrap_err();
            assert!(e.contains("bad --dns-upstream"), "{e}");
        }
    }

    #[test]
    fn the_paths_are_read_from_the_files() {
        let dir = std::env::temp_dir().join(format!("hostnet-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let paths = ResolverPaths {
            resolv_conf: dir.join("resolv.conf"),
            systemd_resolv_conf: dir.join("systemd.conf"),
        };
        std::fs::write(&paths.resolv_conf, STUB).unwrap();
        let c = paths.choose_upstream();
        assert_eq!(c.upstream, None);
        assert!(c.reason.contains("systemd.conf"), "{c}");
        std::fs::write(&paths.systemd_resolv_conf, REAL).unwrap();
        assert_eq!(paths.choose_upstream().upstream, up([10, 0, 2, 3]));
        std::fs::remove_file(&paths.resolv_conf).unwrap();
        let c = paths.choose_upstream();
        assert_eq!(c.upstream, None);
        assert!(c.reason.contains("resolv.conf"), "{c}");
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            ResolverPaths::default().resolv_conf,
            PathBuf::from("/etc/resolv.conf")
        );
    }
}
