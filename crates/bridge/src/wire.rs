//! Wire-format helpers of the gateway: the names the rest of the crate uses for header
//! lengths, EtherTypes and protocol numbers (all from the `wire` crate), and builders for the
//! frames the gateway sends itself, written through `wire`'s checked views.

use core::net::{Ipv4Addr, SocketAddrV4};

use ::wire::{EthernetFrame, Ipv4Packet, TcpPacket, UdpPacket};
pub use ::wire::{MacAddr, ParseMacError};

/// Writes an Ethernet header into `out[..14]`.
pub(crate) fn write_eth(out: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) -> Option<()> {
    let mut eth = EthernetFrame::new_checked(out).ok()?;
    eth.set_dst_addr(dst);
    eth.set_src_addr(src);
    eth.set_ethertype(ethertype);
    Some(())
}

/// Sets the EtherType of `frame` (an Ethernet header and an IP packet) from the packet's
/// version: IPv6 for version 6, IPv4 otherwise (the NAT passes nothing else on).
pub(crate) fn set_ethertype_for_ip(frame: &mut [u8]) {
    let v6 = frame.get(ETH_HLEN).is_some_and(|b| b >> 4 == 6);
    let t = if v6 { ETHERTYPE_IPV6 } else { ETHERTYPE_IPV4 };
    if let Some(f) = frame.get_mut(ETH_HLEN - 2..ETH_HLEN) {
        f.copy_from_slice(&t.to_be_bytes());
    }
}

/// Builds Ethernet + IPv4 + UDP + `payload` into `out`; returns the frame length.
pub(crate) fn build_udp_frame(
    out: &mut [u8],
    (dst_mac, src_mac): (MacAddr, MacAddr),
    from: SocketAddrV4,
    to: SocketAddrV4,
    payload: &[u8],
) -> Option<usize> {
    let (src, src_port) = (*from.ip(), from.port());
    let (dst, dst_port) = (*to.ip(), to.port());
    let udp_len = UDP_HLEN.checked_add(payload.len())?;
    let ip_len = IPV4_HLEN.checked_add(udp_len)?;
    let total = ETH_HLEN.checked_add(ip_len)?;
    let ip_len16 = u16::try_from(ip_len).ok()?;
    let frame = out.get_mut(..total)?;
    write_eth(frame, dst_mac, src_mac, ETHERTYPE_IPV4)?;
    let ip = &mut frame[ETH_HLEN..];
    write_ipv4_header(ip, ip_len16, IPPROTO_UDP, src, dst);
    let mut udp = UdpPacket::new_unchecked(&mut ip[IPV4_HLEN..]);
    udp.set_src_port(src_port);
    udp.set_dst_port(dst_port);
    udp.set_len(ip_len16 - IPV4_HLEN as u16);
    udp.payload_mut().copy_from_slice(payload);
    udp.fill_checksum_v4(src, dst);
    Some(total)
}

/// Builds Ethernet + IPv4 + a 20-byte TCP RST answering `segment` (a TCP header and
/// payload, RFC 9293 3.10.7.1: a segment to a closed port) into `out`; `None` if `segment`
/// is itself a RST, is shorter than its header, or `out` is too small. Returns the frame
/// length.
pub(crate) fn build_tcp_reset_frame(
    out: &mut [u8],
    (dst_mac, src_mac): (MacAddr, MacAddr),
    from: SocketAddrV4,
    to: SocketAddrV4,
    segment: &[u8],
) -> Option<usize> {
    let answer = TcpReset::answering(segment)?;
    let ip_len = IPV4_HLEN + TCP_HLEN;
    let total = ETH_HLEN + ip_len;
    let frame = out.get_mut(..total)?;
    write_eth(frame, dst_mac, src_mac, ETHERTYPE_IPV4)?;
    let ip = &mut frame[ETH_HLEN..];
    write_ipv4_header(ip, ip_len as u16, IPPROTO_TCP, *from.ip(), *to.ip());
    let mut tcp = TcpPacket::new_unchecked(&mut ip[IPV4_HLEN..]);
    answer.write(&mut tcp, from.port(), to.port());
    tcp.fill_checksum_v4(*from.ip(), *to.ip());
    Some(total)
}

/// The RST answering a TCP segment to a closed port (RFC 9293 3.10.7.1): its sequence and
/// acknowledgment numbers and flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TcpReset {
    seq: u32,
    ack: u32,
    flags: u8,
}

impl TcpReset {
    /// The answer to `segment` (a TCP header and payload); `None` if it is itself a RST or
    /// shorter than its header.
    pub(crate) fn answering(segment: &[u8]) -> Option<Self> {
        let seg = TcpPacket::new_checked(segment).ok()?;
        // `new_checked`: the header fits `segment` and is at least 20 bytes.
        if seg.rst() {
            return None;
        }
        Some(if seg.ack() {
            TcpReset {
                seq: seg.ack_number(),
                ack: 0,
                flags: ::wire::tcp::RST,
            }
        } else {
            let len = u32::try_from(segment.len() - seg.header_len()).ok()?
                + u32::from(seg.syn())
                + u32::from(seg.fin());
            TcpReset {
                seq: 0,
                ack: seg.seq_number().wrapping_add(len),
                flags: ::wire::tcp::RST | ::wire::tcp::ACK,
            }
        })
    }

    /// Writes the 20-byte RST header (ports, numbers, flags; window 0; checksum left to the
    /// caller) into `tcp`.
    pub(crate) fn write<T: AsRef<[u8]> + AsMut<[u8]>>(
        &self,
        tcp: &mut TcpPacket<T>,
        src_port: u16,
        dst_port: u16,
    ) {
        tcp.set_src_port(src_port);
        tcp.set_dst_port(dst_port);
        tcp.set_seq_number(self.seq);
        tcp.set_ack_number(self.ack);
        tcp.set_header_len(TCP_HLEN);
        tcp.set_flags(self.flags);
        tcp.set_window_len(0);
        tcp.set_urgent_at(0);
    }
}

/// Writes a 20-byte IPv4 header (DF clear, TTL 64) with a valid checksum into `ip[..20]`.
pub(crate) fn write_ipv4_header(
    ip: &mut [u8],
    total_len: u16,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    let Some(header) = ip.get_mut(..IPV4_HLEN) else {
        return;
    };
    let mut ip = Ipv4Packet::new_unchecked(header);
    ip.set_version(4);
    ip.set_header_len(IPV4_HLEN);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(total_len);
    ip.set_ident(0);
    ip.set_dont_frag(false);
    ip.set_more_frags(false);
    ip.set_frag_offset(0);
    ip.set_ttl(64);
    ip.set_protocol(proto);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
}

/// Ethernet header length.
pub const ETH_HLEN: usize = ::wire::ethernet::HEADER_LEN;
/// Minimum IPv4 header length.
pub(crate) const IPV4_HLEN: usize = ::wire::ipv4::HEADER_LEN;
/// UDP header length.
pub(crate) const UDP_HLEN: usize = ::wire::udp::HEADER_LEN;
/// TCP header length without options.
pub(crate) const TCP_HLEN: usize = ::wire::tcp::HEADER_LEN;
/// EtherType IPv4.
pub const ETHERTYPE_IPV4: u16 = ::wire::ethertype::IPV4;
/// EtherType ARP.
pub(crate) const ETHERTYPE_ARP: u16 = ::wire::ethertype::ARP;
/// EtherType IPv6.
pub(crate) const ETHERTYPE_IPV6: u16 = ::wire::ethertype::IPV6;
/// IP protocol number of ICMP.
pub(crate) const IPPROTO_ICMP: u8 = ::wire::ip_proto::ICMP;
/// IP protocol number of TCP.
pub(crate) const IPPROTO_TCP: u8 = ::wire::ip_proto::TCP;
/// IP protocol number of UDP.
pub(crate) const IPPROTO_UDP: u8 = ::wire::ip_proto::UDP;
/// The offset of the destination address in the IPv4 header.
pub(crate) const IPV4_DST: usize = ::wire::ipv4::field::DST_ADDR.start;
/// The offset of the destination address in the IPv6 header.
pub(crate) const IPV6_DST: usize = ::wire::ipv6::field::DST_ADDR.start;
/// IPv6's minimum link MTU: the most an ICMPv6 error may fill (RFC 4443 2.4 (c)).
pub(crate) const IPV6_MIN_MTU: usize = 1280;
/// The TTL / hop limit of the packets the bridge writes itself (replies, errors, relayed DNS).
pub(crate) const HOP_LIMIT: u8 = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addr_is_wires() {
        let m: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(m, ::wire::MacAddr([0x52, 0x54, 0, 0xab, 0xcd, 0xef]));
        let e: ParseMacError = "nope".parse::<MacAddr>().unwrap_err();
        assert_eq!(e.to_string(), "invalid mac address \"nope\"");
    }

    #[test]
    fn built_udp_frame_parses_with_valid_checksums() {
        let mut out = [0u8; 128];
        let n = build_udp_frame(
            &mut out,
            (MacAddr::BROADCAST, MacAddr([2, 0, 0, 0, 0, 1])),
            SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 1), 67),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68),
            b"hello",
        )
        .unwrap();
        assert_eq!(n, 14 + 20 + 8 + 5);
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(192, 168, 64, 1));
        let hdr = ip.header().to_header();
        assert_eq!(hdr.calc_header_checksum(), hdr.header_checksum);
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not udp")
        };
        assert_eq!(udp.payload(), b"hello");
        let calc = udp
            .to_header()
            .calc_checksum_ipv4(&hdr, udp.payload())
            .unwrap();
        assert_eq!(calc, udp.checksum());
    }
}
