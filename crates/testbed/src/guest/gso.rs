//! Checksums and segmentation in software on the TX path, as a guest's stack does for a
//! device that did not negotiate them: with a virtio-net header on the TAP, the TAP hands the
//! driver partial checksums and TCP super-frames whatever the device took
//! ([`GuestConfig::soft_offloads`](super::GuestConfig::soft_offloads)), one read per super-frame;
//! what the device did not take the driver does here before the frame goes on the ring:
//! a partial checksum completed (no CSUM), a TCPv4 or TCPv6 super-frame cut into segments of
//! `gso_size` with full checksums (no HOST_TSO4 or HOST_TSO6). The segments follow the
//! kernel's GSO (`tcp_gso_segment`, `inet_gso_segment`): the IPv4 identification counts up
//! from the super-frame's, the sequence number advances by the segment size, FIN and PSH
//! only on the last segment, CWR only on the first.

use core::ops::Range;

use wire::{
    EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, checksum, ethernet, ethertype, ip_proto,
    ipv6, tcp,
};

use super::net_hdr::{F_NEEDS_CSUM as NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6};

/// Offset of the UDP checksum in its header: a computed 0 is sent as `0xffff`.
const UDP_CHECKSUM_OFFSET: usize = 6;

/// The TX offloads the device negotiated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DeviceOffloads {
    /// CSUM: frames may carry a partial checksum.
    pub csum: bool,
    /// HOST_TSO4: TCPv4 super-frames.
    pub tso4: bool,
    /// HOST_TSO6: TCPv6 super-frames.
    pub tso6: bool,
}

/// What a frame from the TAP needs before the device may have it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Work {
    /// Nothing: the device takes it as it is.
    None,
    /// Its partial checksum completed: the sum from `start` to the end into the two bytes at
    /// `start + offset` (offsets in the Ethernet frame).
    Checksum { start: usize, offset: usize },
    /// Cut into segments.
    Segment(Split),
}

/// How a TCP super-frame is cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Split {
    v6: bool,
    /// Offset of the TCP header in the Ethernet frame.
    l4: usize,
    /// Ethernet, IP and TCP headers: every segment starts with them.
    headers: usize,
    /// Payload bytes per segment (the last may have fewer).
    mss: usize,
    /// Segments.
    pub count: usize,
}

/// What the frame (the Ethernet `frame` after the virtio-net header `hdr` the TAP wrote)
/// needs for a device with `device` offloads; `None` for a request the driver cannot carry
/// out (a GSO type other than TCP, a segment size of 0, headers that disagree with it).
pub(super) fn work(hdr: &[u8], frame: &[u8], device: DeviceOffloads) -> Option<Work> {
    let (flags, gso_type) = (*hdr.first()?, *hdr.get(1)?);
    let field = |i: usize| {
        Some(usize::from(u16::from_le_bytes([
            *hdr.get(i)?,
            *hdr.get(i + 1)?,
        ])))
    };
    match gso_type {
        GSO_NONE if flags & NEEDS_CSUM != 0 && !device.csum => {
            let (start, offset) = (field(6)?, field(8)?);
            (start + offset + 2 <= frame.len()).then_some(Work::Checksum { start, offset })
        }
        GSO_NONE => Some(Work::None),
        GSO_TCPV4 if device.tso4 => Some(Work::None),
        GSO_TCPV6 if device.tso6 => Some(Work::None),
        GSO_TCPV4 | GSO_TCPV6 => split(frame, gso_type == GSO_TCPV6, field(4)?).map(Work::Segment),
        _ => None,
    }
}

/// The [`Split`] of a TCP super-frame over IPv4 (any options) or IPv6 (no extension header).
fn split(frame: &[u8], v6: bool, mss: usize) -> Option<Split> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let l4 = match (eth.ethertype(), v6) {
        (ethertype::IPV4, false) => {
            let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
            if ip.protocol() != ip_proto::TCP || ip.is_fragment() {
                return None;
            }
            ethernet::HEADER_LEN + ip.header_len()
        }
        (ethertype::IPV6, true) => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            if ip.next_header() != ip_proto::TCP {
                return None;
            }
            ethernet::HEADER_LEN + ipv6::HEADER_LEN
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(frame.get(l4..)?).ok()?;
    let headers = l4 + tcp.header_len();
    let payload = frame.len().checked_sub(headers)?;
    if mss == 0 {
        return None;
    }
    Some(Split {
        v6,
        l4,
        headers,
        mss,
        count: payload.div_ceil(mss).max(1),
    })
}

/// Writes the headers of segment `i` (below [`Split::count`]) of the super-frame `frame`
/// into `out`: its IP lengths, IPv4 identification and header checksum, sequence number,
/// flags and a TCP checksum over these headers and its payload, which stays in `frame` at
/// the range returned (the segment is `out` followed by that range).
pub(super) fn segment_headers(
    frame: &[u8],
    s: &Split,
    i: usize,
    out: &mut Vec<u8>,
) -> Range<usize> {
    let start = (s.headers + i * s.mss).min(frame.len());
    let end = (start + s.mss).min(frame.len());
    let payload = &frame[start..end];
    out.clear();
    out.extend_from_slice(&frame[..s.headers]);
    let ip_len = s.headers - ethernet::HEADER_LEN + payload.len();
    let tcp_len = s.headers - s.l4 + payload.len();
    let (first, last) = (i == 0, i + 1 >= s.count);
    let (ip, l4) = out.split_at_mut(s.l4);
    let ip = &mut ip[ethernet::HEADER_LEN..];
    let mut tcp = TcpPacket::new_unchecked(l4);
    let seq = tcp.seq_number().wrapping_add((i * s.mss) as u32);
    tcp.set_seq_number(seq);
    let mut flags = tcp.flags();
    if !last {
        flags &= !(tcp::FIN | tcp::PSH);
    }
    if !first {
        flags &= !tcp::CWR;
    }
    tcp.set_flags(flags);
    tcp.set_checksum(0);
    let pseudo = if s.v6 {
        let mut ip = Ipv6Packet::new_unchecked(ip);
        ip.set_payload_len((ip_len - ipv6::HEADER_LEN) as u16);
        checksum::pseudo_header_v6(ip.src_addr(), ip.dst_addr(), ip_proto::TCP, tcp_len as u32)
    } else {
        let mut ip = Ipv4Packet::new_unchecked(ip);
        ip.set_total_len(ip_len as u16);
        ip.set_ident(ip.ident().wrapping_add(i as u16));
        ip.fill_checksum();
        checksum::pseudo_header_v4(ip.src_addr(), ip.dst_addr(), ip_proto::TCP, tcp_len as u16)
    };
    // The header's length is a multiple of 4: the payload's sum chains on.
    let sum = checksum::sum(payload, checksum::sum(tcp.into_inner(), pseudo));
    out[s.l4 + 16..s.l4 + 18].copy_from_slice(&checksum::finish(sum).to_be_bytes());
    start..end
}

/// Completes the partial checksum of `frame` (see [`Work::Checksum`]): the field holds the
/// pseudo-header sum, so the checksum is the complemented sum from `start` to the end.
pub(super) fn complete_checksum(frame: &mut [u8], start: usize, offset: usize) {
    let at = start + offset;
    let mut c = checksum::checksum(&frame[start..]);
    if c == 0 && offset == UDP_CHECKSUM_OFFSET {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Frames for the tests of this module and the driver's.
#[cfg(test)]
pub(super) mod testing {
    use super::*;
    use core::net::{Ipv4Addr, Ipv6Addr};
    use wire::ipv4;

    /// An Ethernet frame carrying a TCP segment over IPv4 or IPv6 (192.168.64.2 or fd64::2 to
    /// 198.18.0.2 or 2001:db8::2): 12 bytes of options, `payload`, the given flags, a TCP
    /// checksum field of junk (the driver must overwrite it).
    pub(in crate::guest) fn tcp_frame(v6: bool, payload: &[u8], flags: u8) -> Vec<u8> {
        let l3 = if v6 {
            ipv6::HEADER_LEN
        } else {
            ipv4::HEADER_LEN
        };
        let l4 = ethernet::HEADER_LEN + l3;
        let mut f = vec![0u8; l4 + 32 + payload.len()];
        f[12..14]
            .copy_from_slice(&if v6 { ethertype::IPV6 } else { ethertype::IPV4 }.to_be_bytes());
        let ip_len = l3 + 32 + payload.len();
        if v6 {
            let mut ip = Ipv6Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
            ip.set_version(6);
            ip.set_payload_len((ip_len - l3) as u16);
            ip.set_next_header(ip_proto::TCP);
            ip.set_hop_limit(64);
            ip.set_src_addr(Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 2));
            ip.set_dst_addr(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2));
        } else {
            let mut ip = Ipv4Packet::new_unchecked(&mut f[ethernet::HEADER_LEN..]);
            ip.set_version(4);
            ip.set_header_len(ipv4::HEADER_LEN);
            ip.set_total_len(ip_len as u16);
            ip.set_ident(0xfffe);
            ip.set_dont_frag(true);
            ip.set_ttl(64);
            ip.set_protocol(ip_proto::TCP);
            ip.set_src_addr(Ipv4Addr::new(192, 168, 64, 2));
            ip.set_dst_addr(Ipv4Addr::new(198, 18, 0, 2));
            ip.fill_checksum();
        }
        let mut t = TcpPacket::new_unchecked(&mut f[l4..]);
        t.set_src_port(40000);
        t.set_dst_port(5201);
        t.set_seq_number(0xffff_ff00);
        t.set_ack_number(77);
        t.set_header_len(32);
        t.set_flags(flags);
        t.set_window_len(500);
        t.options_mut()
            .copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        t.payload_mut().copy_from_slice(payload);
        f
    }

    /// The virtio-net header the TAP writes for a TCP super-frame.
    pub(in crate::guest) fn gso_hdr(v6: bool, mss: u16, headers: u16, l4: u16) -> [u8; 12] {
        let mut h = [0u8; 12];
        h[0] = NEEDS_CSUM;
        h[1] = if v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        h[2..4].copy_from_slice(&headers.to_le_bytes());
        h[4..6].copy_from_slice(&mss.to_le_bytes());
        h[6..8].copy_from_slice(&l4.to_le_bytes());
        h[8..10].copy_from_slice(&16u16.to_le_bytes());
        h
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{gso_hdr, tcp_frame};
    use super::*;
    use core::net::Ipv4Addr;
    use wire::ipv4;

    /// The end of the IPv4 header in a frame without options.
    const IPV4_END: usize = ethernet::HEADER_LEN + ipv4::HEADER_LEN;

    const NONE: DeviceOffloads = DeviceOffloads {
        csum: false,
        tso4: false,
        tso6: false,
    };

    #[test]
    fn a_super_frame_becomes_segments_with_their_own_headers_and_checksums() {
        for v6 in [false, true] {
            let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
            let f = tcp_frame(v6, &payload, tcp::ACK | tcp::PSH | tcp::FIN | tcp::CWR);
            let l4 = if v6 { 54 } else { IPV4_END };
            let hdr = gso_hdr(v6, 1400, (l4 + 32) as u16, l4 as u16);
            let w = work(&hdr, &f, NONE).unwrap();
            let Work::Segment(s) = w else { panic!("{w:?}") };
            assert_eq!(s.count, 3);
            let mut got = Vec::new();
            let mut out = Vec::new();
            for i in 0..s.count {
                let payload = segment_headers(&f, &s, i, &mut out);
                out.extend_from_slice(&f[payload]);
                let eth = EthernetFrame::new_checked(&out[..]).unwrap();
                let (t, pseudo_ok) = if v6 {
                    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
                    assert_eq!(usize::from(ip.payload_len()), out.len() - 54);
                    let t = TcpPacket::new_checked(ip.payload()).unwrap();
                    let ok = t.verify_checksum_v6(ip.src_addr(), ip.dst_addr());
                    (t.seq_number(), ok)
                } else {
                    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
                    assert!(ip.verify_checksum(), "segment {i}");
                    assert_eq!(usize::from(ip.total_len()), out.len() - 14);
                    assert_eq!(ip.ident(), 0xfffe_u16.wrapping_add(i as u16));
                    let t = TcpPacket::new_checked(ip.payload()).unwrap();
                    let ok = t.verify_checksum_v4(ip.src_addr(), ip.dst_addr());
                    (t.seq_number(), ok)
                };
                assert!(pseudo_ok, "TCP checksum of segment {i}, v6 {v6}");
                assert_eq!(t, 0xffff_ff00_u32.wrapping_add(1400 * i as u32));
                let tcp = TcpPacket::new_unchecked(&out[l4..]);
                let flags = tcp.flags();
                assert_eq!(flags & tcp::ACK, tcp::ACK);
                assert_eq!(flags & (tcp::FIN | tcp::PSH) != 0, i == 2, "segment {i}");
                assert_eq!(flags & tcp::CWR != 0, i == 0, "segment {i}");
                assert_eq!(tcp.options(), &f[l4 + 20..l4 + 32]);
                got.extend_from_slice(tcp.payload());
            }
            assert_eq!(got, payload);
        }
    }

    #[test]
    fn only_what_the_device_did_not_take_is_done() {
        let f = tcp_frame(false, &[5; 3000], tcp::ACK);
        let hdr = gso_hdr(false, 1400, 66, 34);
        let tso4 = DeviceOffloads {
            csum: true,
            tso4: true,
            tso6: false,
        };
        assert_eq!(work(&hdr, &f, tso4), Some(Work::None));
        let f6 = tcp_frame(true, &[5; 3000], tcp::ACK);
        assert!(matches!(
            work(&gso_hdr(true, 1400, 86, 54), &f6, tso4),
            Some(Work::Segment(_))
        ));
        // A partial checksum alone: completed without CSUM, passed with it.
        let mut one = gso_hdr(false, 0, 0, 34);
        one[1] = GSO_NONE;
        assert_eq!(
            work(&one, &f, NONE),
            Some(Work::Checksum {
                start: 34,
                offset: 16
            })
        );
        assert_eq!(work(&one, &f, tso4), Some(Work::None));
        one[0] = 0;
        assert_eq!(work(&one, &f, NONE), Some(Work::None));
        // Requests the driver cannot carry out.
        assert_eq!(
            work(&gso_hdr(false, 0, 66, 34), &f, NONE),
            None,
            "gso_size 0"
        );
        assert_eq!(
            work(&gso_hdr(true, 1400, 86, 54), &f, NONE),
            None,
            "v6 type, v4 frame"
        );
        let mut udp = gso_hdr(false, 1400, 42, 34);
        udp[1] = 5; // GSO_UDP_L4
        assert_eq!(work(&udp, &f, NONE), None);
        let mut far = gso_hdr(false, 0, 0, 34);
        far[1] = GSO_NONE;
        far[8..10].copy_from_slice(&5000u16.to_le_bytes());
        assert_eq!(work(&far, &f, NONE), None, "checksum field past the end");
        assert_eq!(work(&hdr, &f[..40], NONE), None, "cut headers");
    }

    #[test]
    fn a_completed_checksum_verifies_and_a_udp_zero_is_sent_as_ffff() {
        let mut f = tcp_frame(false, &[9; 100], tcp::ACK);
        let (src, dst) = (Ipv4Addr::new(192, 168, 64, 2), Ipv4Addr::new(198, 18, 0, 2));
        let tcp_len = (f.len() - IPV4_END) as u16;
        let pseudo = checksum::fold(checksum::pseudo_header_v4(src, dst, ip_proto::TCP, tcp_len));
        f[IPV4_END + 16..IPV4_END + 18].copy_from_slice(&pseudo.to_be_bytes());
        complete_checksum(&mut f, IPV4_END, 16);
        assert!(
            TcpPacket::new_checked(&f[IPV4_END..])
                .unwrap()
                .verify_checksum_v4(src, dst)
        );
        // A segment whose sum comes to 0: the field holds 0xffff for UDP, 0 for TCP.
        let mut z = vec![0u8; 20];
        z[6..8].copy_from_slice(&0xffffu16.to_be_bytes());
        complete_checksum(&mut z, 0, UDP_CHECKSUM_OFFSET);
        assert_eq!(z[6..8], [0xff, 0xff]);
        let mut z = vec![0u8; 20];
        z[16..18].copy_from_slice(&0xffffu16.to_be_bytes());
        complete_checksum(&mut z, 0, 16);
        assert_eq!(z[16..18], [0, 0]);
    }
}
