//! Helpers for the privileged tests: (Linux) a network namespace per test, bounded reads,
//! and checksum checks (with the `wire` crate, which utun does not use).
#![allow(dead_code, unreachable_pub)]

use std::{
    io,
    time::{Duration, Instant},
};

use utun::Tun;
use wire::{Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ip_proto};

/// A fresh network namespace `hostnet-utun-<pid>-<n>` (crate `netns`), deleted on drop (also
/// when the test fails).
#[cfg(target_os = "linux")]
pub fn netns() -> netns::Netns {
    netns::Netns::new("utun").expect("creating a network namespace")
}

/// Reads packets (non-blocking, up to `within`) until one satisfies `want`; returns it.
pub fn recv_until(
    tun: &Tun,
    within: Duration,
    mut want: impl FnMut(&[u8]) -> bool,
) -> io::Result<Vec<u8>> {
    tun.set_nonblocking(true)?;
    let deadline = Instant::now() + within;
    let mut buf = vec![0u8; 65536];
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !tun.wait_readable(Some(left))? {
            break;
        }
        match tun.recv(&mut buf) {
            Ok(n) if want(&buf[..n]) => return Ok(buf[..n].to_vec()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "no matching packet",
    ))
}

/// Whether an IPv4 packet's header checksum and its ICMP/UDP/TCP checksum are valid (a zero
/// UDP checksum, none sent, counts as valid).
pub fn ipv4_checksums_ok(p: &[u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(p) else {
        return false;
    };
    let (src, dst, l4) = (ip.src_addr(), ip.dst_addr(), ip.payload());
    ip.verify_checksum()
        && match ip.protocol() {
            ip_proto::ICMP => Icmpv4Packet::new_checked(l4).is_ok_and(|m| m.verify_checksum()),
            ip_proto::TCP => {
                TcpPacket::new_checked(l4).is_ok_and(|t| t.verify_checksum_v4(src, dst))
            }
            ip_proto::UDP => {
                UdpPacket::new_checked(l4).is_ok_and(|u| u.verify_checksum_v4(src, dst))
            }
            _ => true,
        }
}

/// Whether an IPv6 packet's ICMPv6/UDP/TCP checksum (no extension headers) is valid.
pub fn ipv6_checksum_ok(p: &[u8]) -> bool {
    let Ok(ip) = Ipv6Packet::new_checked(p) else {
        return false;
    };
    let (src, dst, l4) = (ip.src_addr(), ip.dst_addr(), ip.payload());
    match ip.next_header() {
        ip_proto::ICMPV6 => {
            Icmpv6Packet::new_checked(l4).is_ok_and(|m| m.verify_checksum(src, dst))
        }
        ip_proto::UDP => UdpPacket::new_checked(l4).is_ok_and(|u| u.verify_checksum_v6(src, dst)),
        ip_proto::TCP => TcpPacket::new_checked(l4).is_ok_and(|t| t.verify_checksum_v6(src, dst)),
        _ => false,
    }
}
