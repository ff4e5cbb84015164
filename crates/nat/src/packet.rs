//! Hand-written, bounds-checked IPv4 header parsing, transport header
//! classification and in-place rewriting.
//!
//! [`parse`] validates the IPv4 header once (length, version, header length,
//! total length, header checksum); afterwards every read and write goes
//! through [`get16`]/[`put16`]/[`get32`]/[`put32`], which do nothing (or
//! return 0) out of bounds, so no input can make them panic.

use crate::DropReason;
use crate::family::{Addr, Family, V6};
use crate::table::{PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::tuple::FourTuple;
use wire::checksum::{self, Delta};
use wire::{icmpv4, ip_proto, ipv4, ipv6, tcp, udp};

/// The fields of a validated IP header (`A`: the family's address type).
#[derive(Clone, Copy, Debug)]
pub(crate) struct IpHeader<A> {
    /// Header length in bytes (IPv4: 20..=60; IPv6: 40 and the extension
    /// headers walked): the transport header's offset.
    pub(crate) header_len: usize,
    /// Total length (≤ the buffer length); bytes past it are ignored.
    pub(crate) total_len: usize,
    /// IP protocol number.
    pub(crate) protocol: u8,
    /// Source address.
    pub(crate) src_addr: A,
    /// Destination address.
    pub(crate) dst_addr: A,
    /// Flags and fragment offset, as IPv4 has them (`ipv4::MORE_FRAGMENTS`,
    /// `ipv4::FRAGMENT_OFFSET`).
    pub(crate) flags_fragment: u16,
    /// Identification.
    pub(crate) ident: u32,
}

/// The IPv4 header.
pub(crate) type Ipv4Header = IpHeader<u32>;

impl<A> IpHeader<A> {
    /// A fragment other than the first (carries no transport header).
    #[inline(always)]
    pub(crate) fn is_later_fragment(&self) -> bool {
        self.flags_fragment & ipv4::FRAGMENT_OFFSET != 0
    }
    /// Bytes of transport header and payload in this packet.
    #[inline(always)]
    pub(crate) fn payload_len(&self) -> usize {
        self.total_len - self.header_len
    }
}

/// Which transport header a rewrite updates, and how its checksum reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// TCP: ports and a checksum with pseudo-header.
    Tcp,
    /// UDP: ports and a checksum (zero means none).
    Udp,
    /// TCP whose checksum field holds only the pseudo-header sum
    /// ([`crate::L4Checksum::Partial`]): addresses change it, ports don't.
    TcpPartial,
    /// UDP with a partial checksum (see [`Transport::TcpPartial`]).
    UdpPartial,
    /// ICMP echo whose identifier is the source "port" (a request from
    /// inside, or what it became). Checksum without pseudo-header.
    EchoSourceId,
    /// ICMP echo whose identifier is the destination "port" (a reply from
    /// outside, or what it became). Checksum without pseudo-header.
    EchoDestinationId,
    /// No transport header (a later fragment): addresses only.
    AddressesOnly,
}

impl Transport {
    /// The partial-checksum variant of a TCP/UDP header when `partial`.
    #[inline(always)]
    pub(crate) fn with_partial(self, partial: bool) -> Transport {
        match (self, partial) {
            (Transport::Tcp, true) => Transport::TcpPartial,
            (Transport::Udp, true) => Transport::UdpPartial,
            (t, _) => t,
        }
    }
}

/// The transport header of a whole packet or first fragment, for a packet
/// that belongs to a flow. 8 bytes, `repr(C)`: the packet paths get it in
/// one register (a layout of Rust's choosing was built on the stack and
/// read back across its stores, a store-forwarding stall per packet).
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub(crate) struct FlowHeader {
    /// Source port (ICMP echo request: the identifier, else 0).
    pub(crate) src_port: u16,
    /// Destination port (ICMP echo reply: the identifier, else 0).
    pub(crate) dst_port: u16,
    /// Protocol index (`PROTO_*`).
    pub(crate) protocol: u8,
    /// TCP flags (0 for other protocols).
    pub(crate) tcp_flags: u8,
    /// How a rewrite updates it.
    pub(crate) transport: Transport,
}

impl FlowHeader {
    /// Addresses (from `h`) and ports of the packet.
    #[inline(always)]
    pub(crate) fn tuple<A: Copy>(&self, h: &IpHeader<A>) -> FourTuple<A> {
        FourTuple {
            src_addr: h.src_addr,
            src_port: self.src_port,
            dst_addr: h.dst_addr,
            dst_port: self.dst_port,
        }
    }
}

/// What the transport header of a whole packet or first fragment holds when
/// it is not a flow's packet ([`classify`]).
pub(crate) enum NotFlow {
    /// An ICMP error message.
    IcmpError,
    /// An echo reply from inside, with its identifier.
    EchoReplyFromInside(u16),
    /// A packet to drop.
    Drop(DropReason),
}

/// Reads the transport header of a packet that came from inside
/// (`outbound`) or from outside.
#[inline(always)]
pub(crate) fn classify<F: Family>(
    p: &[u8],
    h: &IpHeader<F::Addr>,
    outbound: bool,
) -> Result<FlowHeader, NotFlow> {
    let l4 = h.header_len;
    let n = h.payload_len();
    let flow = |protocol, transport, src_port, dst_port, tcp_flags| FlowHeader {
        src_port,
        dst_port,
        protocol,
        tcp_flags,
        transport,
    };
    Ok(match h.protocol {
        ip_proto::TCP => {
            if n < tcp::HEADER_LEN {
                return Err(NotFlow::Drop(DropReason::Malformed));
            }
            flow(
                PROTO_TCP,
                Transport::Tcp,
                get16(p, l4 + tcp::field::SRC_PORT.start),
                get16(p, l4 + tcp::field::DST_PORT.start),
                get8(p, l4 + tcp::field::FLAGS),
            )
        }
        ip_proto::UDP => {
            if n < udp::HEADER_LEN {
                return Err(NotFlow::Drop(DropReason::Malformed));
            }
            flow(
                PROTO_UDP,
                Transport::Udp,
                get16(p, l4 + udp::field::SRC_PORT.start),
                get16(p, l4 + udp::field::DST_PORT.start),
                0,
            )
        }
        proto if proto == F::ICMP => {
            if n < icmpv4::HEADER_LEN {
                return Err(NotFlow::Drop(DropReason::Malformed));
            }
            // ICMPv6 echo has the identifier where ICMPv4 has it.
            let id = || get16(p, l4 + icmpv4::field::ECHO_IDENT.start);
            match (get8(p, l4 + icmpv4::field::TYPE), outbound) {
                (t, true) if t == F::ECHO_REQUEST => {
                    flow(PROTO_ICMP, Transport::EchoSourceId, id(), 0, 0)
                }
                (t, false) if t == F::ECHO_REPLY => {
                    flow(PROTO_ICMP, Transport::EchoDestinationId, 0, id(), 0)
                }
                (t, _) if F::is_icmp_error(t) => {
                    return Err(NotFlow::IcmpError);
                }
                (t, true) if t == F::ECHO_REPLY => {
                    return Err(NotFlow::EchoReplyFromInside(id()));
                }
                (t, false) if t == F::ECHO_REQUEST => {
                    return Err(NotFlow::Drop(DropReason::NoMapping));
                }
                _ => return Err(NotFlow::Drop(DropReason::UnsupportedProtocol)),
            }
        }
        _ => return Err(NotFlow::Drop(DropReason::UnsupportedProtocol)),
    })
}

/// Validates the IPv4 header of `p`.
#[inline(always)]
pub(crate) fn parse(p: &[u8]) -> Result<Ipv4Header, DropReason> {
    parse_then(p, || ())
}

/// [`parse`] calling `read_ahead` once the version is known to be 4 (a
/// packet of the other family leaves before it).
#[inline(always)]
pub(crate) fn parse_then(p: &[u8], read_ahead: impl FnOnce()) -> Result<Ipv4Header, DropReason> {
    use ipv4::field;
    let h: &[u8; ipv4::HEADER_LEN] = p
        .first_chunk::<{ ipv4::HEADER_LEN }>()
        .ok_or(DropReason::Malformed)?;
    if h[field::VERSION_IHL] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    read_ahead();
    let header_len = ipv4_header_len(h[field::VERSION_IHL]);
    let total_len = usize::from(get16(h, field::LENGTH.start));
    if header_len < ipv4::HEADER_LEN || total_len < header_len || total_len > p.len() {
        return Err(DropReason::Malformed);
    }
    let ok = if header_len == ipv4::HEADER_LEN {
        ipv4_header_ok(h)
    } else {
        p.get(..header_len)
            .is_some_and(|b| checksum::fold(checksum::sum(b, 0)) == 0xffff)
    };
    if !ok {
        return Err(DropReason::Malformed);
    }
    // Read as `ipv4_header_ok` reads its words (one load each), so that the
    // addresses are the words the checksum summed: `get32`'s byte pattern
    // had them rebuilt from the bytes of those words, shift by shift.
    let (w32, w16) = (
        |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]),
        |i: usize| u16::from_be_bytes([h[i], h[i + 1]]),
    );
    Ok(Ipv4Header {
        header_len,
        total_len,
        protocol: h[field::PROTOCOL],
        src_addr: w32(field::SRC_ADDR.start),
        dst_addr: w32(field::DST_ADDR.start),
        flags_fragment: w16(field::FLAGS_FRAGMENT.start),
        ident: u32::from(w16(field::IDENT.start)),
    })
}

/// Validates the IPv6 header of `p`: version, a payload length within the
/// buffer (no jumbograms), and walks the extension headers (RFC 8200
/// section 4): hop-by-hop and destination options are stepped over, a
/// routing header too when no segments are left (else the pseudo-header's
/// destination is the last segment's, which the NAT does not translate:
/// [`DropReason::UnsupportedProtocol`]), and a fragment header is read
/// into the IPv4 fields (`flags_fragment` with IPv4's bits, the 32-bit
/// identification), so that fragments go the IPv4 way. `header_len` is
/// then the transport header's offset and `protocol` its protocol. After
/// `MAX_EXTENSION_HEADERS` headers, `protocol` stays an extension header
/// (classified as unsupported).
#[inline(always)]
pub(crate) fn parse6(p: &[u8]) -> Result<IpHeader<u128>, DropReason> {
    parse6_then(p, || ())
}

/// [`parse6`] calling `read_ahead` once the version is known to be 6.
#[inline(always)]
pub(crate) fn parse6_then(
    p: &[u8],
    read_ahead: impl FnOnce(),
) -> Result<IpHeader<u128>, DropReason> {
    use ipv6::field;
    let h: &[u8; ipv6::HEADER_LEN] = p
        .first_chunk::<{ ipv6::HEADER_LEN }>()
        .ok_or(DropReason::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(DropReason::Malformed);
    }
    read_ahead();
    let total_len = ipv6::HEADER_LEN + usize::from(get16(h, field::PAYLOAD_LENGTH.start));
    if total_len > p.len() {
        return Err(DropReason::Malformed);
    }
    let next = h[field::NEXT_HEADER];
    // The extension headers' walk gives back its few fields, not the
    // header: a header built in two places (or passed by `&mut`) lives in
    // memory on the common path too, and reading its 128-bit addresses
    // back from the narrower stores that wrote them stalls (store-to-load
    // forwarding fails): a fifth of NAT66's inbound time.
    let e = if is_extension(next) {
        walk_extensions(p, next, total_len)?
    } else {
        Extensions {
            header_len: ipv6::HEADER_LEN,
            protocol: next,
            flags_fragment: 0,
            ident: 0,
        }
    };
    Ok(IpHeader {
        header_len: e.header_len,
        total_len,
        protocol: e.protocol,
        src_addr: V6::read_addr(h, field::SRC_ADDR.start),
        dst_addr: V6::read_addr(h, field::DST_ADDR.start),
        flags_fragment: e.flags_fragment,
        ident: e.ident,
    })
}

/// Whether IPv6 next header `n` is an extension header the NAT walks.
#[inline(always)]
pub(crate) fn is_extension(n: u8) -> bool {
    matches!(
        n,
        ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTE | ip_proto::IPV6_OPTS | ip_proto::IPV6_FRAG
    )
}

/// Steps over the extension headers of `p` (see [`parse6`]).
#[cold]
#[inline(never)]
pub(crate) fn walk_extensions(
    p: &[u8],
    next: u8,
    total_len: usize,
) -> Result<Extensions, DropReason> {
    use ipv6::field;
    let mut h = Extensions {
        header_len: ipv6::HEADER_LEN,
        protocol: next,
        flags_fragment: 0,
        ident: 0,
    };
    let mut at = h.header_len;
    for _ in 0..ipv6::MAX_EXTENSION_HEADERS {
        let len = match h.protocol {
            ip_proto::HOP_BY_HOP | ip_proto::IPV6_OPTS => {
                (usize::from(get8(p, at + field::EXT_LENGTH)) + 1) * 8
            }
            ip_proto::IPV6_ROUTE => {
                // Segments left: the fourth byte of every routing header.
                if get8(p, at + 3) != 0 {
                    return Err(DropReason::UnsupportedProtocol);
                }
                (usize::from(get8(p, at + field::EXT_LENGTH)) + 1) * 8
            }
            ip_proto::IPV6_FRAG => {
                // Offset in 8-byte units in the top 13 bits, M in bit 0: as
                // IPv4's flags and offset once shifted.
                let v = get16(p, at + field::FRAGMENT_OFFSET_MORE.start);
                h.flags_fragment = (v >> 3) | if v & 1 != 0 { ipv4::MORE_FRAGMENTS } else { 0 };
                h.ident = get32(p, at + 4);
                8
            }
            _ => break,
        };
        if at + len > total_len {
            return Err(DropReason::Malformed);
        }
        h.protocol = get8(p, at + field::EXT_NEXT_HEADER);
        at += len;
        h.header_len = at;
    }
    Ok(h)
}

/// What [`walk_extensions`] finds: the [`IpHeader`] fields the extension
/// headers decide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Extensions {
    /// See [`IpHeader::header_len`].
    pub(crate) header_len: usize,
    /// See [`IpHeader::protocol`].
    pub(crate) protocol: u8,
    /// See [`IpHeader::flags_fragment`].
    pub(crate) flags_fragment: u16,
    /// See [`IpHeader::ident`].
    pub(crate) ident: u32,
}

/// A UDP checksum after the change `d`: IPv4's zero ("none") stays zero; else, as for any
/// UDP checksum, a computed zero is written `0xffff` (see [`Family::UDP_ZERO_IS_NONE`]).
#[inline(always)]
pub(crate) fn udp_checksum<F: Family>(d: Delta, checksum: u16) -> u16 {
    if F::UDP_ZERO_IS_NONE {
        d.apply_udp(checksum)
    } else {
        match d.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Rewrites addresses and ports from `old` to `new`, fixing the IPv4 header
/// checksum and the transport checksum incrementally. The caller checked that
/// the transport header is present. Works on fixed-size views of the
/// headers, so each is bounds-checked once.
#[inline(always)]
pub(crate) fn rewrite<F: Family>(
    p: &mut [u8],
    h: &IpHeader<F::Addr>,
    transport: Transport,
    old: FourTuple<F::Addr>,
    new: FourTuple<F::Addr>,
) {
    let mut ipd = Delta::default();
    F::Addr::delta(&mut ipd, old.src_addr, new.src_addr);
    F::Addr::delta(&mut ipd, old.dst_addr, new.dst_addr);
    let Some(l4) = F::write_addrs(p, h.header_len, new.src_addr, new.dst_addr, ipd) else {
        return;
    };
    match transport {
        Transport::Tcp => {
            use tcp::field;
            let Some(t) = l4.first_chunk_mut::<{ field::CHECKSUM.end }>() else {
                return;
            };
            let mut pd = ipd;
            pd.word(old.src_port, new.src_port);
            pd.word(old.dst_port, new.dst_port);
            t[field::SRC_PORT].copy_from_slice(&new.src_port.to_be_bytes());
            t[field::DST_PORT].copy_from_slice(&new.dst_port.to_be_bytes());
            let c = pd.apply(get16(t, field::CHECKSUM.start));
            t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
        Transport::Udp => {
            use udp::field;
            let Some(u) = l4.first_chunk_mut::<{ udp::HEADER_LEN }>() else {
                return;
            };
            let mut pd = ipd;
            pd.word(old.src_port, new.src_port);
            pd.word(old.dst_port, new.dst_port);
            u[field::SRC_PORT].copy_from_slice(&new.src_port.to_be_bytes());
            u[field::DST_PORT].copy_from_slice(&new.dst_port.to_be_bytes());
            let c = udp_checksum::<F>(pd, get16(u, field::CHECKSUM.start));
            u[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
        // Partial checksums: the ports are summed later by whoever completes
        // the checksum; only the pseudo-header (the addresses) is in the field.
        Transport::TcpPartial => {
            use tcp::field;
            let Some(t) = l4.first_chunk_mut::<{ field::CHECKSUM.end }>() else {
                return;
            };
            t[field::SRC_PORT].copy_from_slice(&new.src_port.to_be_bytes());
            t[field::DST_PORT].copy_from_slice(&new.dst_port.to_be_bytes());
            let c = ipd.apply_partial(get16(t, field::CHECKSUM.start));
            t[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
        Transport::UdpPartial => {
            use udp::field;
            let Some(u) = l4.first_chunk_mut::<{ udp::HEADER_LEN }>() else {
                return;
            };
            u[field::SRC_PORT].copy_from_slice(&new.src_port.to_be_bytes());
            u[field::DST_PORT].copy_from_slice(&new.dst_port.to_be_bytes());
            let c = ipd.apply_partial(get16(u, field::CHECKSUM.start));
            u[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
        t @ (Transport::EchoSourceId | Transport::EchoDestinationId) => {
            use icmpv4::field;
            let Some(e) = l4.first_chunk_mut::<{ icmpv4::HEADER_LEN }>() else {
                return;
            };
            let (o, n) = if t == Transport::EchoSourceId {
                (old.src_port, new.src_port)
            } else {
                (old.dst_port, new.dst_port)
            };
            // ICMPv6's checksum covers the pseudo-header, ICMPv4's does not.
            let mut d = if F::ICMP_PSEUDO {
                ipd
            } else {
                Delta::default()
            };
            d.word(o, n);
            e[field::ECHO_IDENT].copy_from_slice(&n.to_be_bytes());
            let c = d.apply(get16(e, field::CHECKSUM.start));
            e[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        }
        Transport::AddressesOnly => {}
    }
}

/// Finishes a partial ([`crate::L4Checksum::Partial`]) TCP or UDP checksum
/// in software, as the sending device would: sums the transport header and
/// payload (up to the IP total length) starting from the field's value and
/// writes the complement there (a UDP result of 0 is sent as `0xffff`).
///
/// Returns `false`, leaving the packet as it was, for anything it cannot
/// do: not a valid IPv4 or IPv6 header, a fragment, not TCP/UDP, or a transport
/// header shorter than its fixed part.
pub fn complete_l4_checksum(packet: &mut [u8]) -> bool {
    let h = match packet.first().map(|b| b >> 4) {
        Some(6) => match parse6(packet) {
            Ok(h) => IpHeader {
                header_len: h.header_len,
                total_len: h.total_len,
                protocol: h.protocol,
                src_addr: 0,
                dst_addr: 0,
                flags_fragment: h.flags_fragment,
                ident: h.ident,
            },
            Err(_) => return false,
        },
        _ => match parse(packet) {
            Ok(h) => h,
            Err(_) => return false,
        },
    };
    if h.flags_fragment & (ipv4::MORE_FRAGMENTS | ipv4::FRAGMENT_OFFSET) != 0 {
        return false;
    }
    let checksum_at = match (h.protocol, h.payload_len()) {
        (ip_proto::TCP, n) if n >= tcp::HEADER_LEN => tcp::field::CHECKSUM.start,
        (ip_proto::UDP, n) if n >= udp::HEADER_LEN => udp::field::CHECKSUM.start,
        _ => return false,
    };
    let Some(l4) = packet.get(h.header_len..h.total_len) else {
        return false;
    };
    let mut c = checksum::finish(checksum::sum(l4, 0));
    if h.protocol == ip_proto::UDP && c == 0 {
        c = 0xffff;
    }
    put16(packet, h.header_len + checksum_at, c);
    true
}

/// Whether a 20-byte IPv4 header (no options) has a valid checksum: its five
/// 32-bit words summed in registers.
#[inline(always)]
fn ipv4_header_ok(h: &[u8; ipv4::HEADER_LEN]) -> bool {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    checksum::fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

/// The header length in bytes that an IPv4 [`ipv4::field::VERSION_IHL`] byte says (its low
/// nibble, in 32-bit words).
#[inline(always)]
pub(crate) fn ipv4_header_len(version_ihl: u8) -> usize {
    usize::from(version_ihl & 0xf) * 4
}

/// Reads a big-endian u16 at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get16(p: &[u8], off: usize) -> u16 {
    match p.get(off..off.wrapping_add(2)) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Writes a big-endian u16 at `off`; nothing if out of bounds.
#[inline(always)]
pub(crate) fn put16(p: &mut [u8], off: usize, v: u16) {
    if let Some(s) = p.get_mut(off..off.wrapping_add(2)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Reads a big-endian u32 at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get32(p: &[u8], off: usize) -> u32 {
    match p.get(off..off.wrapping_add(4)) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Writes a big-endian u32 at `off`; nothing if out of bounds.
#[inline(always)]
pub(crate) fn put32(p: &mut [u8], off: usize, v: u32) {
    if let Some(s) = p.get_mut(off..off.wrapping_add(4)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Reads the byte at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get8(p: &[u8], off: usize) -> u8 {
    p.get(off).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::ipv4::field;

    #[test]
    fn parse_rejects_short_wrong_version_bad_ihl_and_bad_checksum() {
        assert_eq!(parse(&[0x45; 19]).unwrap_err(), DropReason::Malformed);
        let mut ok = [0u8; 20];
        ok[field::VERSION_IHL] = 0x45;
        ok[field::LENGTH.end - 1] = 20;
        let c = checksum::checksum(&ok);
        ok[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        assert!(parse(&ok).is_ok());
        let mut v6 = ok;
        v6[field::VERSION_IHL] = 0x65;
        assert!(parse(&v6).is_err());
        let mut bad = ok;
        bad[field::CHECKSUM.end - 1] ^= 1;
        assert!(parse(&bad).is_err());
        let mut long = ok;
        long[field::LENGTH.end - 1] = 21;
        assert!(parse(&long).is_err());
    }

    #[test]
    fn accessors_are_silent_out_of_bounds() {
        let mut p = [1u8, 2, 3];
        assert_eq!(get16(&p, 2), 0);
        assert_eq!(get32(&p, usize::MAX), 0);
        put16(&mut p, 2, 0xffff);
        put32(&mut p, usize::MAX - 1, 7);
        assert_eq!(p, [1, 2, 3]);
        assert_eq!(get16(&p, 1), 0x0203);
    }
}
