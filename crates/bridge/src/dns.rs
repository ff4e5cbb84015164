//! The DNS upstream: the gateway forwards DNS (udp and tcp port 53) to it through a NAT
//! redirect. The one resolver-configuration reader of the workspace (hostnetd and
//! `hostnet-lab attach` both use it): [`ResolverPaths::choose_upstream`].
//!
//! The upstream is reached from the NAT's external address through the TUN, so the host
//! kernel routes it like a packet from another machine: a loopback nameserver (127.0.0.0/8,
//! 0.0.0.0, `::1`) is a martian destination there and is dropped. The choice:
//!
//! 1. the first IPv4 nameserver of `/etc/resolv.conf` that is not loopback or unspecified;
//! 2. if it names only loopback ones and one of them is systemd-resolved's stub (127.0.0.53,
//!    or 127.0.0.54 in proxy mode), the first usable one of
//!    `/run/systemd/resolve/resolv.conf`, where systemd-resolved writes the upstreams it
//!    uses itself (slirp4netns does the same; passt takes the first non-loopback entry);
//! 3. otherwise none: [`DnsChoice::upstream`] is `None`, the gateway answers the guest's DNS
//!    queries with REFUSED at once (as dnsmasq does with no servers; TCP: a RST), and
//!    [`DnsChoice::log`] warns.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, SocketAddrV4};
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
/// (127.0.0.0/8, a martian destination for the host kernel on a non-loopback device) and not
/// unspecified (0.0.0.0, which resolvers read as "this host").
#[must_use]
pub fn is_usable_upstream(addr: Ipv4Addr) -> bool {
    !addr.is_loopback() && !addr.is_unspecified()
}

/// The host's DNS upstream, port 53, chosen from the default [`ResolverPaths`] (see the
/// module docs); `None` if none is usable.
pub fn host_dns_upstream() -> Option<SocketAddrV4> {
    ResolverPaths::default().choose_upstream().upstream
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
    /// The upstream (port 53 unless given); `None`: no usable one, the gateway refuses DNS.
    pub upstream: Option<SocketAddrV4>,
    /// Where the upstream came from, or why none is usable (one line, for the log).
    pub reason: String,
}

impl DnsChoice {
    /// An upstream given on the command line (`--dns-upstream`). A loopback or unspecified
    /// address is not usable through the TUN: it gives no upstream, and says why.
    #[must_use]
    pub fn explicit(addr: SocketAddrV4) -> Self {
        if is_usable_upstream(*addr.ip()) {
            Self {
                upstream: Some(addr),
                reason: "--dns-upstream".to_owned(),
            }
        } else {
            Self::none(format!(
                "--dns-upstream {addr} is a loopback address, which the host kernel drops \
                 when it comes from the TUN"
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
                 REFUSED; pass --dns-upstream <IPv4>",
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
    let found = |ip: Ipv4Addr, reason: String| DnsChoice {
        upstream: Some(SocketAddrV4::new(ip, 53)),
        reason,
    };
    if let Some(ip) = parse_resolv_conf(text) {
        return found(ip, path.display().to_string());
    }
    let all: Vec<IpAddr> = nameserver_entries(text).collect();
    let stub = all.iter().find_map(|a| match a {
        IpAddr::V4(v4) if SYSTEMD_STUBS.contains(v4) => Some(*v4),
        _ => None,
    });
    let Some(stub) = stub else {
        let why = if all.is_empty() {
            "names no nameserver".to_owned()
        } else if all.iter().all(IpAddr::is_ipv6) {
            "names only IPv6 nameservers (the NAT is IPv4-only)".to_owned()
        } else {
            format!(
                "names only loopback nameservers ({}), not reachable through the TUN",
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
    match stext {
        Ok(t) => match parse_resolv_conf(&t) {
            Some(ip) => found(ip, format!("{}, because {head}", spath.display())),
            None => DnsChoice::none(format!(
                "{head} and {} names no usable IPv4 nameserver",
                spath.display()
            )),
        },
        Err(e) => DnsChoice::none(format!("{head} and {}: {e}", spath.display())),
    }
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

    fn up(a: [u8; 4]) -> Option<SocketAddrV4> {
        Some(SocketAddrV4::new(Ipv4Addr::from(a), 53))
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
            c.reason.contains("only loopback nameservers (127.0.0.1)"),
            "{c}"
        );
        let c = pick(
            "nameserver ::1\nnameserver 2001:db8::53\n",
            Ok(REAL.to_owned()),
        );
        assert!(c.reason.contains("only IPv6"), "{c}");
        let c = pick("search x\n", Ok(REAL.to_owned()));
        assert!(c.reason.contains("names no nameserver"), "{c}");
    }

    #[test]
    fn explicit_loopback_is_not_usable() {
        let a: SocketAddrV4 = "127.0.0.53:53".parse().unwrap();
        assert_eq!(DnsChoice::explicit(a).upstream, None);
        let a: SocketAddrV4 = "198.18.0.2:5353".parse().unwrap();
        assert_eq!(DnsChoice::explicit(a).upstream, Some(a));
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
