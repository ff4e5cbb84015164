//! Helpers for the privileged tests: (Linux) a network namespace per test, bounded reads,
//! and checksum checks written independently of the code under test.
#![allow(dead_code, unreachable_pub)]

use std::{
    io,
    time::{Duration, Instant},
};

use utun::Tun;

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

/// The one's-complement sum of `data` folded to 16 bits (RFC 1071), starting from `init`.
pub fn ones_sum(init: u32, data: &[u8]) -> u16 {
    let mut sum = init;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Whether an IPv4 packet's header checksum and its ICMP/UDP/TCP checksum are valid.
pub fn ipv4_checksums_ok(p: &[u8]) -> bool {
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if ones_sum(0, &p[..ihl]) != 0xffff {
        return false;
    }
    let l4 = &p[ihl..total];
    match p[9] {
        1 => ones_sum(0, l4) == 0xffff,
        6 | 17 => {
            if p[9] == 17 && l4[6] == 0 && l4[7] == 0 {
                return true; // no UDP checksum
            }
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&p[12..20]);
            pseudo.extend_from_slice(&[0, p[9]]);
            pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
            ones_sum(u32::from(ones_sum(0, &pseudo)), l4) == 0xffff
        }
        _ => true,
    }
}

/// Whether an IPv6 packet's ICMPv6/UDP checksum (no extension headers) is valid.
pub fn ipv6_checksum_ok(p: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([p[4], p[5]]));
    let l4 = &p[40..40 + len];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&p[8..40]);
    pseudo.extend_from_slice(&(len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, p[6]]);
    ones_sum(u32::from(ones_sum(0, &pseudo)), l4) == 0xffff
}
