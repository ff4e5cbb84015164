//! Header-split translation ([`Nat::outbound_head_with`]): a TCP packet whose payload lies
//! elsewhere (a virtio chain's buffers in guest memory, written to the host link by a
//! gathered write) translated from its headers alone.

use wire::checksum::Delta;
use wire::{ip_proto, ipv4, ipv6, tcp};

use crate::packet::{get16, ipv4_header_len, put16};
use crate::{Instant, L4Checksum, Nat, Verdict};

impl Nat {
    /// [`Nat::outbound_with`] for a TCP packet of `total_len` bytes of which `head` holds the
    /// first: at least the IP header and the TCP header's fixed 20 bytes. The rest (TCP
    /// options past the head, the payload) stays where it is. Outbound TCP translation
    /// changes only the IP header and the TCP ports and checksum, the checksums
    /// incrementally, so `head` followed by the rest is the packet [`Nat::outbound_with`]
    /// would have made of the whole one, with the same verdict and the same flow; only an
    /// IPv4 header checksum may come out as 0x0000 where that one has 0xffff, or the other
    /// way round (one's complement's two zeros, the same checksum: the length's two
    /// incremental updates may end on the other one).
    ///
    /// Returns `None`, having changed and counted nothing, for a packet it does not take:
    /// not TCP, an IPv4 fragment, IPv6 with extension headers, a `head` shorter than the
    /// headers, an IP length other than `total_len`; the caller translates the whole packet
    /// then. A `head` that holds the whole packet is translated as [`Nat::outbound_with`]
    /// translates it, whatever it is. A [`Verdict::Hairpin`] packet goes back inside: the
    /// caller needs its whole bytes for that.
    pub fn outbound_head_with(
        &mut self,
        head: &mut [u8],
        total_len: usize,
        now: Instant,
        l4: L4Checksum,
    ) -> Option<Verdict> {
        if total_len <= head.len() {
            let whole = head.get_mut(..total_len)?;
            return Some(self.outbound_with(whole, now, l4));
        }
        let short = u16::try_from(head.len()).ok()?;
        let length = Length::of(head, total_len)?;
        length.set(head, short);
        let verdict = self.outbound_with(head, now, l4);
        length.restore(head, short);
        Some(verdict)
    }
}

/// Where a head-only packet's IP length lives and what it says.
#[derive(Clone, Copy)]
enum Length {
    /// IPv4's total length (covered by the header checksum).
    V4(u16),
    /// IPv6's payload length (no header checksum).
    V6(u16),
}

impl Length {
    /// The length field of a TCP packet of `total_len` bytes whose headers `head` holds, if
    /// it is one [`Nat::outbound_head_with`] takes.
    fn of(head: &[u8], total_len: usize) -> Option<Length> {
        match head.first()? >> 4 {
            4 => {
                let ihl = ipv4_header_len(head[ipv4::field::VERSION_IHL]);
                let fragment = get16(head, ipv4::field::FLAGS_FRAGMENT.start)
                    & (ipv4::MORE_FRAGMENTS | ipv4::FRAGMENT_OFFSET);
                let total = get16(head, ipv4::field::LENGTH.start);
                (ihl >= ipv4::HEADER_LEN
                    && head.len() >= ihl + tcp::HEADER_LEN
                    && fragment == 0
                    && *head.get(ipv4::field::PROTOCOL)? == ip_proto::TCP
                    && usize::from(total) == total_len)
                    .then_some(Length::V4(total))
            }
            6 => {
                let payload = get16(head, ipv6::field::PAYLOAD_LENGTH.start);
                (head.len() >= ipv6::HEADER_LEN + tcp::HEADER_LEN
                    && *head.get(ipv6::field::NEXT_HEADER)? == ip_proto::TCP
                    && usize::from(payload) + ipv6::HEADER_LEN == total_len)
                    .then_some(Length::V6(payload))
            }
            _ => None,
        }
    }

    /// Makes the packet's IP length say `head_len` (the head alone is then a whole packet).
    fn set(self, head: &mut [u8], head_len: u16) {
        match self {
            Length::V4(total) => rewrite_v4(head, total, head_len),
            Length::V6(_) => put16(
                head,
                ipv6::field::PAYLOAD_LENGTH.start,
                head_len.saturating_sub(ipv6::HEADER_LEN as u16),
            ),
        }
    }

    /// Gives the packet its own IP length back.
    fn restore(self, head: &mut [u8], head_len: u16) {
        match self {
            Length::V4(total) => rewrite_v4(head, head_len, total),
            Length::V6(payload) => put16(head, ipv6::field::PAYLOAD_LENGTH.start, payload),
        }
    }
}

/// IPv4's total length `old` → `new`, the header checksum updated incrementally.
fn rewrite_v4(head: &mut [u8], old: u16, new: u16) {
    let mut d = Delta::new();
    d.word(old, new);
    put16(head, ipv4::field::LENGTH.start, new);
    let c = get16(head, ipv4::field::CHECKSUM.start);
    put16(head, ipv4::field::CHECKSUM.start, d.apply(c));
}

#[cfg(test)]
mod tests {
    use core::net::SocketAddrV4;

    use super::*;
    use crate::testing::{self, TcpFlags};

    fn endpoints() -> (SocketAddrV4, SocketAddrV4) {
        (
            "192.168.64.2:40000".parse().unwrap(),
            "198.18.0.7:80".parse().unwrap(),
        )
    }

    /// What the call does not take comes back `None` with nothing changed and nothing
    /// counted: UDP, an IPv4 fragment, IPv6 with an extension header, a head shorter than
    /// the headers, an IP length other than the one given.
    #[test]
    fn packets_it_does_not_take_are_left_alone() {
        let mut nat = testing::nat();
        let (src, dst) = endpoints();
        let payload = [7u8; 200];
        let tcp = testing::tcp(src, dst, TcpFlags::SYN, &payload);
        let mut fragment = tcp.clone();
        fragment[ipv4::field::FLAGS_FRAGMENT.start] |= 0x20; // more fragments
        testing::fix_ipv4_checksum(&mut fragment);
        let mut hop_by_hop = testing::tcp6(
            testing::sa6(testing::GUEST6, 40000),
            testing::sa6("2001:db8::7".parse().unwrap(), 80),
            TcpFlags::SYN,
            &payload,
        );
        hop_by_hop[ipv6::field::NEXT_HEADER] = ip_proto::HOP_BY_HOP;
        let cases: [(&str, Vec<u8>, usize, usize); 5] = [
            ("udp", testing::udp(src, dst, &payload), 60, 228),
            ("fragment", fragment, 60, tcp.len()),
            ("ipv6 extension header", hop_by_hop, 80, 260),
            ("head too short", tcp.clone(), 39, tcp.len()),
            ("another length", tcp.clone(), 60, tcp.len() + 1),
        ];
        for (what, packet, head_len, total) in cases {
            let mut p = packet.clone();
            let before = nat.stats();
            let got = nat.outbound_head_with(
                &mut p[..head_len],
                total,
                Instant::ZERO,
                L4Checksum::Complete,
            );
            assert_eq!(got, None, "{what}");
            assert_eq!(p, packet, "{what}: unchanged");
            assert_eq!(nat.stats(), before, "{what}: nothing counted");
        }
        assert_eq!(nat.len(), 0, "no flow");
        // A head holding the whole packet: translated like any other.
        let mut p = testing::udp(src, dst, &payload);
        let total = p.len();
        let got = nat.outbound_head_with(&mut p, total, Instant::ZERO, L4Checksum::Complete);
        assert_eq!(got, Some(Verdict::Forward));
        assert_eq!(*testing::src(&p).ip(), testing::EXTERNAL);
    }
}
