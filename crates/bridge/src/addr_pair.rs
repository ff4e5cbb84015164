//! The TUN's address pair: the host end and the NAT's external address (its point-to-point
//! peer). Two instances in one network namespace must not share it: the second peer route
//! would send the first guest's replies to the second TUN (or the reverse).
//!
//! [`choose_pair`] picks the pair from what the namespace already uses ([`AddrUse`]): the
//! default 100.64.0.1/100.64.0.2, else the next free pair of 100.64.0.0/24 (.3/.4, .5/.6, …,
//! .253/.254). An address is used if an interface has it (its own address or its
//! point-to-point peer) or a /32 route names it, in any routing table. An address given
//! explicitly (`--tun-addr`, `--external-addr`) is kept, and if it is used that is an error
//! ([`PairError::InUse`]; the binaries exit with status 2).
//!
//! On Linux (feature `utun`), [`reserve_pair`] does it for the calling thread's namespace:
//! it takes an exclusive lock on `/run/hostnet/netns-<inode>.lock` (one per namespace),
//! reads the addresses and routes over rtnetlink and chooses. The caller creates its TUN
//! with the pair while holding the returned [`PairLock`] and drops it afterwards, so two
//! instances starting at once take turns and the second sees the first's TUN.

use core::fmt;
use core::net::{Ipv4Addr, Ipv6Addr};
use std::io;

/// The TUN's host address and the NAT's external address (the TUN's peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrPair {
    /// The host end of the TUN.
    pub tun: Ipv4Addr,
    /// The NAT's external address: the TUN's point-to-point peer.
    pub external: Ipv4Addr,
}

impl AddrPair {
    /// 100.64.0.1 / 100.64.0.2 ([`crate::defaults`]).
    pub const DEFAULT: AddrPair = AddrPair {
        tun: crate::defaults::TUN_HOST_ADDR,
        external: crate::defaults::NAT_EXTERNAL_ADDR,
    };

    /// The pairs tried without explicit addresses, in order: 100.64.0.1/.2, .3/.4, …,
    /// .253/.254.
    pub fn candidates() -> impl Iterator<Item = AddrPair> {
        let base = u32::from(Self::DEFAULT.tun);
        (0..PAIRS).map(move |k| AddrPair {
            tun: Ipv4Addr::from(base + 2 * k),
            external: Ipv4Addr::from(base + 2 * k + 1),
        })
    }
}

impl fmt::Display for AddrPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tun {} peer {}", self.tun, self.external)
    }
}

/// An IPv4 address the namespace already uses, and by what (for the messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddrUse {
    /// The address.
    pub addr: Ipv4Addr,
    /// What holds it: `address of eth0`, `peer of hostnet0`, `route 100.64.0.2/32 dev tun1`.
    pub holder: String,
}

/// Why no pair was chosen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    /// An explicitly given address is already in use in the namespace.
    #[error("{flag} {addr} is already in use in this network namespace ({holder})")]
    InUse {
        /// `--tun-addr` or `--external-addr`.
        flag: &'static str,
        /// The address.
        addr: Ipv4Addr,
        /// What holds it.
        holder: String,
    },
    /// Every candidate pair of 100.64.0.0/24 is in use.
    #[error(
        "every address pair of 100.64.0.0/24 is in use in this network namespace: \
         pass --tun-addr and --external-addr"
    )]
    Exhausted,
    /// An explicit address that cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// Reading the namespace's addresses and routes failed.
    #[error("reading the namespace's addresses and routes")]
    Probe(#[source] io::Error),
}

impl PairError {
    /// Whether this is the caller's to fix (a used or invalid explicit address, no free pair):
    /// the binaries exit with status 2 for these.
    #[must_use]
    pub fn is_usage(&self) -> bool {
        !matches!(self, PairError::Probe(_))
    }
}

/// Chooses the pair: explicit addresses are kept (an error if used, invalid, or equal); a
/// missing one comes from the first candidate ([`AddrPair::candidates`]) whose other member
/// is free and differs from the explicit one.
///
/// # Errors
/// [`PairError::InUse`], [`PairError::Invalid`], [`PairError::Exhausted`].
pub fn choose_pair(
    tun: Option<Ipv4Addr>,
    external: Option<Ipv4Addr>,
    used: &[AddrUse],
) -> Result<AddrPair, PairError> {
    let holder = |a: Ipv4Addr| used.iter().find(|u| u.addr == a).map(|u| u.holder.clone());
    for (flag, a) in [("--tun-addr", tun), ("--external-addr", external)] {
        let Some(a) = a else { continue };
        check_explicit(flag, a)?;
        if let Some(holder) = holder(a) {
            return Err(PairError::InUse {
                flag,
                addr: a,
                holder,
            });
        }
    }
    if let (Some(t), Some(e)) = (tun, external) {
        if t == e {
            return Err(PairError::Invalid(format!(
                "--tun-addr and --external-addr are both {t}"
            )));
        }
        return Ok(AddrPair {
            tun: t,
            external: e,
        });
    }
    AddrPair::candidates()
        .map(|c| AddrPair {
            tun: tun.unwrap_or(c.tun),
            external: external.unwrap_or(c.external),
        })
        .find(|p| p.tun != p.external && holder(p.tun).is_none() && holder(p.external).is_none())
        .ok_or(PairError::Exhausted)
}

/// Why [`choose_pair`] skipped the default pair (for the start-up log), if it did.
#[must_use]
pub fn default_pair_taken(used: &[AddrUse]) -> Option<&AddrUse> {
    used.iter()
        .find(|u| u.addr == AddrPair::DEFAULT.tun || u.addr == AddrPair::DEFAULT.external)
}

/// Logs the chosen pair at INFO (`address pair tun=… external=…`), with what holds the
/// default pair when another was chosen.
pub fn log_pair(pair: &AddrPair, used: &[AddrUse]) {
    match default_pair_taken(used).filter(|_| *pair != AddrPair::DEFAULT) {
        Some(u) => tracing::info!(
            tun = %pair.tun,
            external = %pair.external,
            default_taken = %format_args!("{} ({})", u.addr, u.holder),
            "address pair"
        ),
        None => tracing::info!(tun = %pair.tun, external = %pair.external, "address pair"),
    }
}

fn check_explicit(flag: &str, a: Ipv4Addr) -> Result<(), PairError> {
    let guest_net = u32::from(crate::defaults::SUBNET);
    let mask = u32::MAX << (32 - crate::defaults::PREFIX_LEN);
    let bad = if a.is_unspecified() || a.is_loopback() {
        Some("not a host address")
    } else if a.is_multicast() || a.is_broadcast() {
        Some("a multicast or broadcast address")
    } else if u32::from(a) & mask == guest_net {
        Some("inside the guest network 192.168.64.0/24")
    } else {
        None
    };
    match bad {
        Some(why) => Err(PairError::Invalid(format!("bad {flag} {a}: {why}"))),
        None => Ok(()),
    }
}

/// Number of candidate pairs in 100.64.0.0/24.
const PAIRS: u32 = 127;

/// The TUN's IPv6 host address, its prefix length and NAT66's external address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrPair6 {
    /// The host end of the TUN.
    pub tun: Ipv6Addr,
    /// The TUN address's prefix length (the route to `external` through the TUN).
    pub prefix_len: u8,
    /// NAT66's external address.
    pub external: Ipv6Addr,
}

impl AddrPair6 {
    /// `fd64:ffff::1/64`, external `fd64:ffff::2` ([`crate::defaults`]).
    pub const DEFAULT: AddrPair6 = AddrPair6 {
        tun: crate::defaults::TUN_HOST_ADDR6,
        prefix_len: 64,
        external: crate::defaults::NAT_EXTERNAL_ADDR6,
    };

    /// The pairs tried, in order: the default, then `fd64:ffff::k:1/112` with external
    /// `fd64:ffff::k:2` for k = 1..=15 (a /112 is more specific than the first instance's
    /// /64, so each external address is routed to its own TUN).
    pub fn candidates() -> impl Iterator<Item = AddrPair6> {
        let base = crate::defaults::TUN_HOST_ADDR6.to_bits() & !0xffff_ffff;
        core::iter::once(Self::DEFAULT).chain((1..PAIRS6).map(move |k| AddrPair6 {
            tun: Ipv6Addr::from_bits(base | (k << 16) | 1),
            prefix_len: 112,
            external: Ipv6Addr::from_bits(base | (k << 16) | 2),
        }))
    }
}

/// Chooses the first [`AddrPair6::candidates`] whose addresses are not in `used` (the
/// namespace's IPv6 interface addresses).
///
/// # Errors
/// [`PairError::Exhausted`] if every candidate is taken.
pub fn choose_pair6(used: &[Ipv6Addr]) -> Result<AddrPair6, PairError> {
    AddrPair6::candidates()
        .find(|p| !used.contains(&p.tun) && !used.contains(&p.external))
        .ok_or_else(|| {
            PairError::Invalid(
                "every IPv6 address pair of fd64:ffff::/64 is in use in this network namespace: \
                 pass --no-ipv6"
                    .to_owned(),
            )
        })
}

/// Number of candidate IPv6 pairs.
const PAIRS6: u128 = 16;

#[cfg(all(target_os = "linux", feature = "utun"))]
pub use probe::{PairLock, addresses_in_use, addresses_in_use6, reserve_pair, reserve_pair6};

#[cfg(all(target_os = "linux", feature = "utun"))]
mod probe {
    //! rtnetlink dumps (links, IPv4 addresses, IPv4 routes) over a rustix socket, and the
    //! per-namespace lock file.

    use std::collections::HashMap;
    use std::fs::File;
    use std::io;
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;

    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketType};

    use super::{AddrPair, AddrUse, PairError, choose_pair, parse};

    /// The exclusive lock of a namespace's address choice (see the module docs); released on
    /// drop. Without `/run/hostnet` (not writable) there is no lock, and a warning was logged.
    #[derive(Debug)]
    pub struct PairLock {
        held: Option<(File, PathBuf)>,
    }

    impl Drop for PairLock {
        fn drop(&mut self) {
            // Unlinked while still locked: a waiter that opened this file finds it gone
            // after its lock and opens the path again (see `lock_file`), so no file is left
            // behind in /run/hostnet.
            if let Some((file, path)) = self.held.take() {
                let _ = std::fs::remove_file(&path);
                drop(file);
            }
        }
    }

    /// Locks the calling thread's network namespace, reads what it uses and chooses the pair
    /// ([`choose_pair`]). Create the TUN before dropping the lock.
    ///
    /// # Errors
    /// [`PairError`]; a lock file that cannot be created is only a warning.
    pub fn reserve_pair(
        tun: Option<core::net::Ipv4Addr>,
        external: Option<core::net::Ipv4Addr>,
    ) -> Result<(AddrPair, Vec<AddrUse>, PairLock), PairError> {
        let lock = PairLock { held: lock_file() };
        let used = addresses_in_use().map_err(PairError::Probe)?;
        let pair = choose_pair(tun, external, &used)?;
        Ok((pair, used, lock))
    }

    /// Chooses the IPv6 pair ([`super::choose_pair6`]) from the calling thread's namespace;
    /// call it while holding the [`PairLock`] of [`reserve_pair`] (the TUN gets both pairs
    /// before the lock is dropped).
    ///
    /// # Errors
    /// [`PairError`].
    pub fn reserve_pair6() -> Result<super::AddrPair6, PairError> {
        let used = addresses_in_use6().map_err(PairError::Probe)?;
        super::choose_pair6(&used)
    }

    /// Every IPv6 interface address of the calling thread's network namespace (from
    /// `/proc/thread-self/net/if_inet6`; none if IPv6 is off there).
    ///
    /// # Errors
    /// The file exists but cannot be read.
    pub fn addresses_in_use6() -> io::Result<Vec<core::net::Ipv6Addr>> {
        let text = match std::fs::read_to_string("/proc/thread-self/net/if_inet6") {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|hex| u128::from_str_radix(hex, 16).ok())
            .map(core::net::Ipv6Addr::from_bits)
            .collect())
    }

    /// Every IPv4 address of the calling thread's network namespace: interface addresses,
    /// point-to-point peers and /32 routes (all tables).
    ///
    /// # Errors
    /// The netlink socket or a dump fails.
    pub fn addresses_in_use() -> io::Result<Vec<AddrUse>> {
        let fd = rustix::net::socket(AddressFamily::NETLINK, SocketType::RAW, None)?;
        let mut names = HashMap::new();
        dump(&fd, RTM_GETLINK, 1, &[0u8; 16], |t, body| {
            if let Some((index, name)) = parse::link(t, body) {
                names.insert(index, name);
            }
        })?;
        let name = |i: u32| names.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
        let mut used = Vec::new();
        let family = [AF_INET, 0, 0, 0, 0, 0, 0, 0];
        dump(&fd, RTM_GETADDR, 2, &family, |t, body| {
            if let Some((index, local, peer)) = parse::addr(t, body) {
                let dev = name(index);
                if let Some(l) = local {
                    used.push(AddrUse {
                        addr: l,
                        holder: format!("address of {dev}"),
                    });
                }
                if let Some(p) = peer.filter(|&p| Some(p) != local) {
                    used.push(AddrUse {
                        addr: p,
                        holder: format!("peer of {dev}"),
                    });
                }
            }
        })?;
        let rt = [AF_INET, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        dump(&fd, RTM_GETROUTE, 3, &rt, |t, body| {
            if let Some((dst, oif)) = parse::host_route(t, body) {
                let dev = oif.map(name).unwrap_or_else(|| "-".to_owned());
                used.push(AddrUse {
                    addr: dst,
                    holder: format!("route {dst}/32 dev {dev}"),
                });
            }
        })?;
        Ok(used)
    }

    /// Sends one dump request and feeds every answer message (type, body) to `each`.
    fn dump(
        fd: &std::os::fd::OwnedFd,
        kind: u16,
        seq: u32,
        header: &[u8],
        mut each: impl FnMut(u16, &[u8]),
    ) -> io::Result<()> {
        let len = 16 + header.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&kind.to_ne_bytes());
        req.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req.extend_from_slice(&seq.to_ne_bytes());
        req.extend_from_slice(&0u32.to_ne_bytes());
        req.extend_from_slice(header);
        rustix::net::send(fd, &req, SendFlags::empty())?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let (n, _) = rustix::net::recv(fd, &mut buf[..], RecvFlags::empty())?;
            let mut done = false;
            for m in parse::messages(&buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => done = true,
                    NLMSG_ERROR => {
                        let code = m
                            .body
                            .get(..4)
                            .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        done = true;
                    }
                    t => each(t, m.body),
                }
            }
            if done || n == 0 {
                return Ok(());
            }
        }
    }

    /// Opens and locks `/run/hostnet/netns-<inode of this thread's netns>.lock`; the file
    /// locked is the one the path names (not one a previous holder unlinked meanwhile).
    fn lock_file() -> Option<(File, PathBuf)> {
        let attempt = || -> io::Result<(File, PathBuf)> {
            let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
            std::fs::create_dir_all(LOCK_DIR)?;
            let path = PathBuf::from(format!("{LOCK_DIR}/netns-{ino}.lock"));
            loop {
                let f = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                f.lock()?;
                let same = std::fs::metadata(&path)
                    .is_ok_and(|m| f.metadata().is_ok_and(|o| o.ino() == m.ino()));
                if same {
                    return Ok((f, path));
                }
            }
        };
        match attempt() {
            Ok(held) => Some(held),
            Err(e) => {
                tracing::warn!(
                    "no lock for the address choice ({LOCK_DIR}: {e}): two instances starting \
                     at once in this namespace could choose the same pair"
                );
                None
            }
        }
    }

    const LOCK_DIR: &str = "/run/hostnet";
    const AF_INET: u8 = 2;
    const RTM_GETLINK: u16 = 18;
    const RTM_GETADDR: u16 = 22;
    const RTM_GETROUTE: u16 = 26;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
}

/// rtnetlink message parsing (platform-free, so it is tested everywhere). Every read is
/// bounds-checked: a short or garbled message yields nothing.
#[cfg_attr(not(all(target_os = "linux", feature = "utun")), allow(dead_code))]
mod parse {
    use core::net::Ipv4Addr;

    /// One netlink message.
    pub(super) struct Message<'a> {
        pub(super) kind: u16,
        pub(super) seq: u32,
        pub(super) body: &'a [u8],
    }

    /// The messages of one datagram.
    pub(super) fn messages(mut b: &[u8]) -> impl Iterator<Item = Message<'_>> {
        core::iter::from_fn(move || {
            let len = usize::try_from(u32_at(b, 0)?).ok()?;
            let kind = u16_at(b, 4)?;
            let seq = u32_at(b, 8)?;
            let body = b.get(16..len)?;
            b = b.get(align(len)..).unwrap_or(&[]);
            Some(Message { kind, seq, body })
        })
    }

    /// RTM_NEWLINK: (index, name).
    pub(super) fn link(kind: u16, body: &[u8]) -> Option<(u32, String)> {
        if kind != RTM_NEWLINK {
            return None;
        }
        let index = u32_at(body, 4)?;
        let name = attrs(body.get(16..)?).find(|&(t, _)| t == IFLA_IFNAME)?.1;
        let name = name.split(|&c| c == 0).next().unwrap_or(name);
        Some((index, String::from_utf8_lossy(name).into_owned()))
    }

    /// RTM_NEWADDR (IPv4): (index, IFA_LOCAL, IFA_ADDRESS).
    pub(super) fn addr(
        kind: u16,
        body: &[u8],
    ) -> Option<(u32, Option<Ipv4Addr>, Option<Ipv4Addr>)> {
        if kind != RTM_NEWADDR || *body.first()? != AF_INET {
            return None;
        }
        let index = u32_at(body, 4)?;
        let (mut local, mut address) = (None, None);
        for (t, v) in attrs(body.get(8..)?) {
            match t {
                IFA_LOCAL => local = ipv4(v),
                IFA_ADDRESS => address = ipv4(v),
                _ => {}
            }
        }
        // Without IFA_LOCAL (not point-to-point), IFA_ADDRESS is the interface's address.
        Some((index, local.or(address), address))
    }

    /// RTM_NEWROUTE (IPv4) to a /32: (destination, output interface).
    pub(super) fn host_route(kind: u16, body: &[u8]) -> Option<(Ipv4Addr, Option<u32>)> {
        if kind != RTM_NEWROUTE || *body.first()? != AF_INET || *body.get(1)? != 32 {
            return None;
        }
        let (mut dst, mut oif) = (None, None);
        for (t, v) in attrs(body.get(12..)?) {
            match t {
                RTA_DST => dst = ipv4(v),
                RTA_OIF => oif = u32_at(v, 0),
                _ => {}
            }
        }
        Some((dst?, oif))
    }

    fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
        core::iter::from_fn(move || {
            let len = usize::from(u16_at(b, 0)?);
            let kind = u16_at(b, 2)? & 0x3fff;
            let value = b.get(4..len)?;
            b = b.get(align(len)..).unwrap_or(&[]);
            Some((kind, value))
        })
    }

    fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
        let b: [u8; 4] = v.get(..4)?.try_into().ok()?;
        Some(Ipv4Addr::from(b))
    }

    fn u16_at(b: &[u8], at: usize) -> Option<u16> {
        Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    fn align(len: usize) -> usize {
        len.max(4).saturating_add(3) & !3
    }

    const AF_INET: u8 = 2;
    const RTM_NEWLINK: u16 = 16;
    const RTM_NEWADDR: u16 = 20;
    const RTM_NEWROUTE: u16 = 24;
    const IFLA_IFNAME: u16 = 3;
    const IFA_ADDRESS: u16 = 1;
    const IFA_LOCAL: u16 = 2;
    const RTA_DST: u16 = 1;
    const RTA_OIF: u16 = 4;

    #[cfg(test)]
    mod tests {
        use super::*;

        fn attr(t: u16, v: &[u8]) -> Vec<u8> {
            let mut a = Vec::new();
            a.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            a.extend_from_slice(&t.to_ne_bytes());
            a.extend_from_slice(v);
            a.resize(align(a.len()), 0);
            a
        }

        fn msg(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
            let mut m = Vec::new();
            m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
            m.extend_from_slice(&kind.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes());
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(body);
            m
        }

        #[test]
        fn messages_and_attributes_are_walked_with_bounds() {
            let mut link = vec![0u8; 16];
            link[4..8].copy_from_slice(&7u32.to_ne_bytes());
            link.extend(attr(IFLA_IFNAME, b"hostnet0\0"));
            let mut addr = vec![AF_INET, 32, 0, 0];
            addr.extend_from_slice(&7u32.to_ne_bytes());
            addr.extend(attr(IFA_ADDRESS, &[100, 64, 0, 2]));
            addr.extend(attr(IFA_LOCAL, &[100, 64, 0, 1]));
            let mut route = vec![AF_INET, 32, 0, 0, 254, 3, 253, 1, 0, 0, 0, 0];
            route.extend(attr(RTA_DST, &[100, 64, 0, 9]));
            route.extend(attr(RTA_OIF, &7u32.to_ne_bytes()));
            let mut net_route = route.clone();
            net_route[1] = 24;
            let mut dgram = msg(RTM_NEWLINK, 1, &link);
            dgram.extend(msg(RTM_NEWADDR, 1, &addr));
            dgram.extend(msg(RTM_NEWROUTE, 1, &route));
            dgram.extend(msg(RTM_NEWROUTE, 1, &net_route));
            let ms: Vec<Message<'_>> = messages(&dgram).collect();
            assert_eq!(ms.len(), 4);
            assert_eq!(link_of(&ms[0]), Some((7, "hostnet0".to_owned())));
            assert_eq!(
                addr_of(&ms[1]),
                Some((
                    7,
                    Some(Ipv4Addr::new(100, 64, 0, 1)),
                    Some(Ipv4Addr::new(100, 64, 0, 2))
                ))
            );
            assert_eq!(
                host_route(ms[2].kind, ms[2].body),
                Some((Ipv4Addr::new(100, 64, 0, 9), Some(7)))
            );
            assert_eq!(host_route(ms[3].kind, ms[3].body), None, "a /24 route");
            // Every truncation parses to something or nothing, never panics.
            for cut in 0..dgram.len() {
                for m in messages(&dgram[..cut]) {
                    let _ = (super::link(m.kind, m.body), super::addr(m.kind, m.body));
                    let _ = host_route(m.kind, m.body);
                }
            }
            // A zero length does not loop forever.
            assert!(messages(&[0u8; 20]).count() <= 5);
        }

        fn link_of(m: &Message<'_>) -> Option<(u32, String)> {
            link(m.kind, m.body)
        }

        fn addr_of(m: &Message<'_>) -> Option<(u32, Option<Ipv4Addr>, Option<Ipv4Addr>)> {
            addr(m.kind, m.body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_pairs_skip_used_addresses_and_end() {
        assert_eq!(choose_pair6(&[]).unwrap(), AddrPair6::DEFAULT);
        let first = AddrPair6::DEFAULT.tun;
        let p = choose_pair6(&[first]).unwrap();
        assert_eq!(
            (p.tun, p.prefix_len, p.external),
            (
                "fd64:ffff::1:1".parse().unwrap(),
                112,
                "fd64:ffff::1:2".parse().unwrap()
            )
        );
        let all: Vec<_> = AddrPair6::candidates().map(|p| p.external).collect();
        assert_eq!(all.len(), 16);
        assert!(matches!(choose_pair6(&all), Err(PairError::Invalid(_))));
    }

    fn used(a: [u8; 4], holder: &str) -> AddrUse {
        AddrUse {
            addr: Ipv4Addr::from(a),
            holder: holder.to_owned(),
        }
    }

    fn ip(a: [u8; 4]) -> Ipv4Addr {
        Ipv4Addr::from(a)
    }

    #[test]
    fn the_default_pair_when_free() {
        let u = [used([10, 0, 0, 1], "address of eth0")];
        assert_eq!(choose_pair(None, None, &u).unwrap(), AddrPair::DEFAULT);
        assert_eq!(default_pair_taken(&u), None);
        let all: Vec<AddrPair> = AddrPair::candidates().collect();
        assert_eq!(all.len(), 127);
        assert_eq!(all[1].tun, ip([100, 64, 0, 3]));
        assert_eq!(all[126].external, ip([100, 64, 0, 254]));
    }

    #[test]
    fn the_next_free_pair_when_either_address_is_used() {
        let first = [
            used([100, 64, 0, 1], "address of hostnet0"),
            used([100, 64, 0, 2], "peer of hostnet0"),
        ];
        let p = choose_pair(None, None, &first).unwrap();
        assert_eq!(
            p,
            AddrPair {
                tun: ip([100, 64, 0, 3]),
                external: ip([100, 64, 0, 4])
            }
        );
        assert_eq!(default_pair_taken(&first), Some(&first[0]));
        // Only the peer, as a host route: still taken.
        let route = [used([100, 64, 0, 2], "route 100.64.0.2/32 dev eth1")];
        assert_eq!(
            choose_pair(None, None, &route).unwrap().tun,
            ip([100, 64, 0, 3])
        );
        // Only .4 of the second pair: the third.
        let mut more = first.to_vec();
        more.push(used([100, 64, 0, 4], "peer of x"));
        assert_eq!(
            choose_pair(None, None, &more).unwrap().external,
            ip([100, 64, 0, 6])
        );
        // All of them.
        let full: Vec<AddrUse> = (1..=254).map(|i| used([100, 64, 0, i], "x")).collect();
        assert!(matches!(
            choose_pair(None, None, &full),
            Err(PairError::Exhausted)
        ));
    }

    #[test]
    fn explicit_addresses_are_kept_and_a_collision_is_an_error() {
        let first = [
            used([100, 64, 0, 1], "address of hostnet0"),
            used([100, 64, 0, 2], "peer of hostnet0"),
        ];
        let e = choose_pair(None, Some(ip([100, 64, 0, 2])), &first).unwrap_err();
        assert!(e.is_usage());
        let msg = e.to_string();
        assert!(
            msg.contains("--external-addr 100.64.0.2") && msg.contains("peer of hostnet0"),
            "{msg}"
        );
        let e = choose_pair(Some(ip([100, 64, 0, 1])), None, &first).unwrap_err();
        assert!(e.to_string().contains("--tun-addr 100.64.0.1"), "{e}");
        // Both given and free.
        let p = choose_pair(Some(ip([10, 99, 0, 1])), Some(ip([10, 99, 0, 2])), &first).unwrap();
        assert_eq!(
            (p.tun, p.external),
            (ip([10, 99, 0, 1]), ip([10, 99, 0, 2]))
        );
        // One given: the other from the first candidate whose member is free.
        let p = choose_pair(None, Some(ip([100, 64, 0, 9])), &first).unwrap();
        assert_eq!(
            (p.tun, p.external),
            (ip([100, 64, 0, 3]), ip([100, 64, 0, 9]))
        );
        let p = choose_pair(Some(ip([100, 64, 0, 4])), None, &first).unwrap();
        assert_eq!(
            (p.tun, p.external),
            (ip([100, 64, 0, 4]), ip([100, 64, 0, 6]))
        );
    }

    #[test]
    fn unusable_explicit_addresses_are_refused() {
        for (t, e) in [
            (Some(ip([127, 0, 0, 1])), None),
            (None, Some(ip([0, 0, 0, 0]))),
            (None, Some(ip([224, 0, 0, 1]))),
            (None, Some(ip([192, 168, 64, 9]))),
            (Some(ip([10, 0, 0, 1])), Some(ip([10, 0, 0, 1]))),
        ] {
            let err = choose_pair(t, e, &[]).unwrap_err();
            assert!(matches!(err, PairError::Invalid(_)), "{t:?} {e:?}: {err}");
            assert!(err.is_usage());
        }
    }
}
