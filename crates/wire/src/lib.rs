//! Typed, checked views over the headers hostnet reads and writes, and the one Internet
//! checksum every crate uses.
//!
//! This crate is the lowest layer of hostnet: it depends on nothing (not even `alloc`), does no
//! I/O and is `#![forbid(unsafe_code)]`. `nat`, `bridge` and the tests
//! parse and build packets through it instead of computing offsets by hand.
//!
//! # Views
//!
//! Each header has a view `XxxPacket<T: AsRef<[u8]>>` over a byte buffer, after smoltcp's
//! `wire` module:
//!
//! - `new_unchecked(buffer)` wraps without looking; accessors may then panic on a short buffer.
//! - `new_checked(buffer)` checks the length (and for IP the version and length fields) once.
//!   **After `new_checked` succeeds no getter panics**, and `payload`/`payload_mut` never panic
//!   even after a setter changed a length field (they clamp to the buffer).
//! - getters read big-endian fields; with `T: AsMut<[u8]>` the `set_*` setters write them.
//! - `into_inner` gives the buffer back.
//!
//! | view | header |
//! |---|---|
//! | [`EthernetFrame`] | Ethernet II (no VLAN tag) |
//! | [`ArpPacket`] | ARP for Ethernet/IPv4 (RFC 826) |
//! | [`Ipv4Packet`] | IPv4 with options (RFC 791) |
//! | [`Ipv6Packet`] | IPv6 fixed header (RFC 8200), [`Ipv6Packet::upper_layer`] skips extension headers |
//! | [`UdpPacket`] | UDP (RFC 768) |
//! | [`TcpPacket`] | TCP (RFC 9293) |
//! | [`Icmpv4Packet`] | ICMP (RFC 792) |
//! | [`Icmpv6Packet`] | ICMPv6 (RFC 4443) |
//! | [`ndp::NdpOptions`] | Neighbor Discovery options (RFC 4861), [`ndp::field`] for the messages |
//!
//! Field offsets live in one public `field` module per header ([`ipv4::field`],
//! [`tcp::field`], ...: a [`Field`] byte range, or a `usize` offset for one-byte fields); no
//! offset is written as a literal anywhere else, and the other crates index raw packets with
//! these rather than with their own copies.
//!
//! # Checksums
//!
//! [`checksum`] holds the Internet checksum (RFC 1071), the IPv4/IPv6 pseudo-header sums and
//! the incremental update of RFC 1624. The views use it for `verify_checksum*` and
//! `fill_checksum*`.
//!
//! # Example
//!
//! ```
//! use core::net::Ipv4Addr;
//! use wire::{Ipv4Packet, UdpPacket, ip_proto};
//!
//! let mut buf = [0u8; 28];
//! let mut ip = Ipv4Packet::new_unchecked(&mut buf[..]);
//! ip.set_version(4);
//! ip.set_header_len(20);
//! ip.set_total_len(28);
//! ip.set_ttl(64);
//! ip.set_protocol(ip_proto::UDP);
//! ip.set_src_addr(Ipv4Addr::new(192, 168, 64, 2));
//! ip.set_dst_addr(Ipv4Addr::new(198, 18, 0, 1));
//! ip.fill_checksum();
//! let (src, dst) = (ip.src_addr(), ip.dst_addr());
//! let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
//! udp.set_src_port(5000);
//! udp.set_dst_port(53);
//! udp.set_len(8);
//! udp.fill_checksum_v4(src, dst);
//!
//! let ip = Ipv4Packet::new_checked(&buf[..]).unwrap();
//! assert!(ip.verify_checksum());
//! let udp = UdpPacket::new_checked(ip.payload()).unwrap();
//! assert_eq!(udp.dst_port(), 53);
//! assert!(udp.verify_checksum_v4(ip.src_addr(), ip.dst_addr()));
//! ```
//!
//! # Platforms and MSRV
//!
//! `no_std`, every target; no features. MSRV: the workspace's `rust-version` (1.95).
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

/// `into_payload`/`into_payload_mut` for views over borrowed slices, from the view's private
/// `payload_range`.
macro_rules! borrowed_payload {
    ($view:ident) => {
        impl<'a> $view<&'a [u8]> {
            /// The payload, as [`Self::payload`], borrowed for the buffer's lifetime rather
            /// than the view's.
            pub fn into_payload(self) -> &'a [u8] {
                let r = self.payload_range();
                &self.buffer[r]
            }
        }

        impl<'a> $view<&'a mut [u8]> {
            /// The payload, as `payload_mut`, borrowed for the buffer's lifetime rather than
            /// the view's.
            pub fn into_payload_mut(self) -> &'a mut [u8] {
                let r = self.payload_range();
                &mut self.buffer[r]
            }
        }
    };
}
pub(crate) use borrowed_payload;

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmpv4;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
mod mac;
pub mod ndp;
pub mod tcp;
pub mod udp;

use core::fmt;

pub use arp::ArpPacket;
pub use ethernet::EthernetFrame;
pub use icmpv4::Icmpv4Packet;
pub use icmpv6::Icmpv6Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::{Ipv6Packet, UpperLayer};
pub use mac::{MacAddr, ParseMacError};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

/// Why a buffer is not a valid header of the kind asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Error {
    /// The buffer is shorter than the header, or than a length field says.
    Truncated,
    /// The IP version field is not the one of the view.
    BadVersion,
    /// A length or offset field contradicts itself (an IPv4 header length under 20 bytes, a
    /// total length under the header length, a UDP length under 8, a TCP data offset under 5).
    Malformed,
    /// A valid header this crate does not handle (ARP for other than Ethernet/IPv4, more
    /// IPv6 extension headers than [`ipv6::MAX_EXTENSION_HEADERS`]).
    Unsupported,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::Truncated => "buffer shorter than the header or its length field",
            Error::BadVersion => "wrong ip version",
            Error::Malformed => "inconsistent length or offset field",
            Error::Unsupported => "unsupported header variant",
        })
    }
}

impl core::error::Error for Error {}

/// EtherType values (IEEE 802.3) of the protocols this crate knows.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
}

/// IP protocol numbers (IPv4 protocol, IPv6 next header) of the protocols this crate knows.
pub mod ip_proto {
    /// IPv6 Hop-by-Hop Options.
    pub const HOP_BY_HOP: u8 = 0;
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// IGMP.
    pub const IGMP: u8 = 2;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// IPv6 Routing header.
    pub const IPV6_ROUTE: u8 = 43;
    /// IPv6 Fragment header.
    pub const IPV6_FRAG: u8 = 44;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 No Next Header.
    pub const IPV6_NO_NEXT: u8 = 59;
    /// IPv6 Destination Options.
    pub const IPV6_OPTS: u8 = 60;
}

/// A header field: its byte range from the start of its header (each header module's `field`
/// module holds them).
pub type Field = core::ops::Range<usize>;

/// Reads the big-endian `u16` at `field` (two bytes).
#[inline(always)]
pub(crate) fn read_u16(data: &[u8], field: Field) -> u16 {
    let b = &data[field];
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads the big-endian `u32` at `field` (four bytes).
#[inline(always)]
pub(crate) fn read_u32(data: &[u8], field: Field) -> u32 {
    let b = &data[field];
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Writes `value` big-endian at `field` (two bytes).
#[inline(always)]
pub(crate) fn write_u16(data: &mut [u8], field: Field, value: u16) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// Writes `value` big-endian at `field` (four bytes).
#[inline(always)]
pub(crate) fn write_u32(data: &mut [u8], field: Field, value: u32) {
    data[field].copy_from_slice(&value.to_be_bytes());
}

/// `start..end` with both ends clamped to `len` (indexing with it never panics).
#[inline(always)]
pub(crate) fn clamp(len: usize, start: usize, end: usize) -> core::ops::Range<usize> {
    let end = end.min(len);
    start.min(end)..end
}

/// `data[start..end]` with both ends clamped to the buffer (never panics).
#[inline(always)]
pub(crate) fn clamped(data: &[u8], start: usize, end: usize) -> &[u8] {
    &data[clamp(data.len(), start, end)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_display_lowercase_messages() {
        extern crate std;
        use std::string::ToString;
        for e in [
            Error::Truncated,
            Error::BadVersion,
            Error::Malformed,
            Error::Unsupported,
        ] {
            let s = e.to_string();
            assert!(s.chars().next().is_some_and(char::is_lowercase), "{s}");
        }
    }

    #[test]
    fn clamped_never_panics() {
        assert_eq!(clamp(3, 5, 9), 3..3);
        let d = [1u8, 2, 3];
        assert_eq!(clamped(&d, 1, 2), &[2]);
        assert_eq!(clamped(&d, 2, 9), &[3]);
        assert_eq!(clamped(&d, 5, 9), &[] as &[u8]);
        assert_eq!(clamped(&d, 2, 1), &[] as &[u8]);
    }
}
