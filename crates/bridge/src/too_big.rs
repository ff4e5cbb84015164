//! The bridge's own Path MTU answers: a packet from the host link that is larger than the
//! guest MTU (and not a GSO super-packet the guest takes) cannot be delivered, and IPv6 routers
//! do not fragment. The bridge is the router between the host link and the guest's link, so
//! it answers the sender as a router does: ICMPv6 Packet Too Big (RFC 4443 3.2, MTU = the
//! guest MTU) for IPv6, ICMP destination unreachable, fragmentation needed (RFC 792, RFC 1191,
//! next-hop MTU = the guest MTU) for IPv4 with DF set.
//!
//! The offending packet has already been translated by the NAT (inbound: its destination is
//! the guest), so the answer is built as the gateway's error about that packet — from the
//! gateway address, to the packet's source — and run through the NAT outbound, which
//! translates an ICMP error from inside with its quoted packet (RFC 5508) back to what the
//! sender sent; then it goes to the host link. Answers are rate-limited by a token bucket
//! driven by the `now` of each batch ([`TOO_BIG_ANSWERS_PER_SEC`], [`TOO_BIG_ANSWER_BURST`]); what is over
//! the limit is counted ([`crate::Stats::too_big_limited`]). No allocation per packet: the
//! answers of one batch live in a small preallocated [`FrameBatch`].

use core::net::{Ipv4Addr, Ipv6Addr};
use std::io;

use nat::{Instant, Nat, Verdict};
use wire::{
    Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, icmpv4, icmpv6, ip_proto, ipv4, ipv6,
};

use crate::Error;
use crate::device::VIRTIO_NET_HDR_LEN;
use crate::frame::FrameBatch;
use crate::host::HostLink;
use crate::stats::{DropCause, Stats};
use crate::wire::{HOP_LIMIT, IPV6_MIN_MTU};

/// Answers to packets too big for the guest, for one RX engine.
#[derive(Debug)]
pub(crate) struct TooBigAnswers {
    /// The gateway's IPv4 address (source of fragmentation needed).
    gateway4: Ipv4Addr,
    /// The gateway's IPv6 address in the guest prefix (source of Packet Too Big); `None`
    /// without IPv6.
    gateway6: Option<Ipv6Addr>,
    /// The guest MTU (the largest IP packet it takes).
    mtu: u16,
    /// Answers that may still go now.
    tokens: u64,
    /// When `tokens` was last refilled (milliseconds of the caller's clock).
    refilled: u64,
    /// Room for the virtio-net header the host link wants in front (0 or
    /// [`VIRTIO_NET_HDR_LEN`]).
    host_hdr_len: usize,
    /// This batch's answers, each as the host link takes it.
    out: FrameBatch,
}

impl TooBigAnswers {
    /// Answers from `gateway4`/`gateway6` for a guest MTU of `mtu`.
    pub(crate) fn new(gateway4: Ipv4Addr, gateway6: Option<Ipv6Addr>, mtu: u16) -> Self {
        TooBigAnswers {
            gateway4,
            gateway6,
            mtu,
            tokens: TOO_BIG_ANSWER_BURST,
            refilled: 0,
            host_hdr_len: 0,
            out: FrameBatch::new(MAX_ANSWERS, VIRTIO_NET_HDR_LEN + IPV6_MIN_MTU),
        }
    }

    /// The host link wants a virtio-net header of `len` bytes in front of each packet.
    pub(crate) fn set_host_hdr_len(&mut self, len: usize) {
        self.host_hdr_len = len.min(VIRTIO_NET_HDR_LEN);
    }

    /// Answers `packet` (translated inbound, larger than the guest MTU) if it is due one and
    /// the rate limit allows: builds the error, translates it through `nat` outbound, and
    /// keeps it for [`TooBigAnswers::send`].
    pub(crate) fn answer(&mut self, packet: &[u8], nat: &mut Nat, now: Instant, stats: &mut Stats) {
        if !due_an_answer(packet) {
            return;
        }
        if !self.take_token(now) {
            stats.too_big_limited += 1;
            return;
        }
        let (hl, mtu, gw4, gw6) = (self.host_hdr_len, self.mtu, self.gateway4, self.gateway6);
        let Some(buf) = self.out.next_buf() else {
            // More answers in one batch than the batch holds: over the limit as well.
            stats.too_big_limited += 1;
            return;
        };
        let Some(room) = buf.get_mut(VIRTIO_NET_HDR_LEN..) else {
            return;
        };
        let len = match packet.first().map(|b| b >> 4) {
            Some(6) => gw6.and_then(|from| packet_too_big6(packet, u32::from(mtu), from, room)),
            Some(4) => frag_needed4(packet, mtu, gw4, room),
            _ => None,
        };
        let Some(len) = len else { return };
        let Some(ip) = room.get_mut(..len) else {
            return;
        };
        if nat.outbound(ip, now) != Verdict::Forward {
            // The NAT counted why (no flow of the guest's behind the quote, ...).
            return;
        }
        let start = VIRTIO_NET_HDR_LEN - hl;
        // A plain packet: no checksum or segmentation request.
        buf[start..VIRTIO_NET_HDR_LEN].fill(0);
        self.out.commit(start, hl + len);
    }

    /// Sends this batch's answers to the host link and forgets them. Counted as
    /// [`Stats::to_host`] and [`Stats::too_big_answers`]; what the link refuses as
    /// [`DropCause::HostFull`].
    ///
    /// # Errors
    ///
    /// [`Error::HostLink`] when the link failed.
    pub(crate) fn send(&mut self, host: &dyn HostLink, stats: &mut Stats) -> Result<(), Error> {
        let n = self.out.len();
        if n == 0 {
            return Ok(());
        }
        let mut list: [&[u8]; MAX_ANSWERS] = [&[]; MAX_ANSWERS];
        for (slot, f) in list.iter_mut().zip(self.out.iter()) {
            *slot = f;
        }
        let res = host.send_batch(&list[..n.min(MAX_ANSWERS)]);
        self.out.clear();
        match res {
            Ok(sent) => {
                let sent = sent.min(n);
                stats.to_host += sent as u64;
                stats.too_big_answers += sent as u64;
                for _ in sent..n {
                    stats.drop(DropCause::HostFull);
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                for _ in 0..n {
                    stats.drop(DropCause::HostFull);
                }
                Ok(())
            }
            Err(e) => Err(Error::HostLink(e)),
        }
    }

    /// Takes one token, refilling [`TOO_BIG_ANSWERS_PER_SEC`] per second up to [`TOO_BIG_ANSWER_BURST`].
    fn take_token(&mut self, now: Instant) -> bool {
        let ms = now.as_millis();
        let refill = ms
            .saturating_sub(self.refilled)
            .saturating_mul(TOO_BIG_ANSWERS_PER_SEC)
            / 1000;
        if refill > 0 {
            self.tokens = self.tokens.saturating_add(refill).min(TOO_BIG_ANSWER_BURST);
            self.refilled = ms;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Writes into `out` an IPv6 packet from `from` to `packet`'s source carrying ICMPv6 Packet
/// Too Big with `mtu` and as much of `packet` as fits in 1280 bytes (RFC 4443 2.4 (c), 3.2);
/// returns its length. `None` when `out` is too small or `packet` is not IPv6.
pub(crate) fn packet_too_big6(
    packet: &[u8],
    mtu: u32,
    from: Ipv6Addr,
    out: &mut [u8],
) -> Option<usize> {
    let p = Ipv6Packet::new_checked(packet).ok()?;
    let quote_len = packet
        .len()
        .min(IPV6_MIN_MTU - ipv6::HEADER_LEN - icmpv6::HEADER_LEN);
    let icmp_len = icmpv6::HEADER_LEN + quote_len;
    let len = ipv6::HEADER_LEN + icmp_len;
    let out = out.get_mut(..len)?;
    let to = p.src_addr();
    let mut ip = Ipv6Packet::new_unchecked(&mut *out);
    ip.set_version(6);
    ip.set_traffic_class(0);
    ip.set_flow_label(0);
    ip.set_payload_len(u16::try_from(icmp_len).ok()?);
    ip.set_next_header(ip_proto::ICMPV6);
    ip.set_hop_limit(HOP_LIMIT);
    ip.set_src_addr(from);
    ip.set_dst_addr(to);
    let icmp = ip.payload_mut();
    icmp.get_mut(icmpv6::HEADER_LEN..)?
        .copy_from_slice(packet.get(..quote_len)?);
    let mut m = Icmpv6Packet::new_unchecked(icmp);
    m.set_msg_type(icmpv6::PACKET_TOO_BIG);
    m.set_msg_code(0);
    m.set_mtu(mtu);
    m.fill_checksum(from, to);
    Some(len)
}

/// Writes into `out` an IPv4 packet from `from` to `packet`'s source carrying ICMP destination
/// unreachable, fragmentation needed and DF set, with next-hop MTU `mtu` (RFC 1191 4), quoting
/// `packet`'s IPv4 header and the first 8 bytes after it (RFC 792); returns its length.
pub(crate) fn frag_needed4(
    packet: &[u8],
    mtu: u16,
    from: Ipv4Addr,
    out: &mut [u8],
) -> Option<usize> {
    let p = Ipv4Packet::new_checked(packet).ok()?;
    let quote_len = (p.header_len() + icmpv4::ERROR_QUOTED_DATA_LEN)
        .min(usize::from(p.total_len()))
        .min(packet.len());
    let len = ipv4::HEADER_LEN + icmpv4::HEADER_LEN + quote_len;
    let out = out.get_mut(..len)?;
    let to = p.src_addr();
    let mut ip = Ipv4Packet::new_unchecked(&mut *out);
    ip.set_version(4);
    ip.set_header_len(ipv4::HEADER_LEN);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(u16::try_from(len).ok()?);
    ip.set_ident(0);
    ip.set_dont_frag(false);
    ip.set_more_frags(false);
    ip.set_frag_offset(0);
    ip.set_ttl(HOP_LIMIT);
    ip.set_protocol(ip_proto::ICMP);
    ip.set_src_addr(from);
    ip.set_dst_addr(to);
    ip.fill_checksum();
    let icmp = ip.payload_mut();
    icmp.get_mut(icmpv4::HEADER_LEN..)?
        .copy_from_slice(packet.get(..quote_len)?);
    let mut m = Icmpv4Packet::new_unchecked(icmp);
    m.set_msg_type(icmpv4::DESTINATION_UNREACHABLE);
    m.set_msg_code(icmpv4::CODE_FRAGMENTATION_NEEDED);
    m.set_echo_ident(0);
    m.set_next_hop_mtu(mtu);
    m.fill_checksum();
    Some(len)
}

/// Whether `packet` may be answered with an error at all: IPv6 from a unicast source and
/// not an ICMPv6 error (RFC 4443 2.4 (e)); IPv4 with DF set, not a later fragment, from a
/// unicast source and not an ICMP error (RFC 1812 4.3.2.7). IPv4 without DF gets no answer
/// (it could be fragmented; the bridge does not, and counts it).
fn due_an_answer(packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(6) => {
            let Ok(p) = Ipv6Packet::new_checked(packet) else {
                return false;
            };
            let src = p.src_addr();
            if src.is_unspecified() || src.is_multicast() {
                return false;
            }
            match p.upper_layer() {
                Ok(u) if u.protocol == ip_proto::ICMPV6 => packet
                    .get(u.offset)
                    .is_some_and(|t| *t >= icmpv6::ECHO_REQUEST),
                Ok(_) => true,
                Err(_) => false,
            }
        }
        Some(4) => {
            let Ok(p) = Ipv4Packet::new_checked(packet) else {
                return false;
            };
            let src = p.src_addr();
            if !p.dont_frag()
                || p.frag_offset() != 0
                || src.is_broadcast()
                || src.is_multicast()
                || src.is_unspecified()
            {
                return false;
            }
            if p.protocol() == ip_proto::ICMP {
                // Only queries (echo and the like) are answered, never an error.
                return p.payload().first().is_some_and(|t| {
                    !matches!(
                        *t,
                        icmpv4::DESTINATION_UNREACHABLE
                            | icmpv4::TIME_EXCEEDED
                            | icmpv4::PARAMETER_PROBLEM
                            | ICMP_SOURCE_QUENCH
                            | ICMP_REDIRECT
                    )
                });
            }
            true
        }
        _ => false,
    }
}

/// Answers per second, refilled continuously.
pub const TOO_BIG_ANSWERS_PER_SEC: u64 = 10;
/// Answers at once.
pub const TOO_BIG_ANSWER_BURST: u64 = 10;
/// Most answers kept for one batch (more in one batch are over the limit anyway).
const MAX_ANSWERS: usize = TOO_BIG_ANSWER_BURST as usize;
/// ICMP source quench (an error, RFC 792).
const ICMP_SOURCE_QUENCH: u8 = 4;
/// ICMP redirect (an error, RFC 792).
const ICMP_REDIRECT: u8 = 5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryLink;
    use wire::checksum;

    const GW6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);
    const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
    const REMOTE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);

    fn udp6(len: usize) -> Vec<u8> {
        let b =
            etherparse::PacketBuilder::ipv6(REMOTE6.octets(), GUEST6.octets(), 64).udp(7000, 5000);
        let payload = vec![0xa5u8; len - ipv6::HEADER_LEN - 8];
        let mut v = Vec::with_capacity(len);
        b.write(&mut v, &payload).unwrap();
        v
    }

    /// The ICMPv6 checksum of `p` recomputed over the pseudo-header from its own bytes.
    fn icmp6_recompute_ok(p: &[u8]) -> bool {
        let ip = Ipv6Packet::new_checked(p).unwrap();
        let pseudo = checksum::pseudo_header_v6(
            ip.src_addr(),
            ip.dst_addr(),
            ip_proto::ICMPV6,
            ip.payload().len() as u32,
        );
        checksum::fold(checksum::sum(ip.payload(), pseudo)) == 0xffff
    }

    #[test]
    fn packet_too_big_is_capped_at_1280_bytes_and_its_checksum_equals_a_recompute() {
        let mut out = [0u8; 2048];
        for size in [1501usize, 1600, 9000] {
            let p = udp6(size);
            let n = packet_too_big6(&p, 1500, GW6, &mut out).unwrap();
            assert_eq!(n, 1280, "{size}");
            let ip = Ipv6Packet::new_checked(&out[..n]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, REMOTE6));
            assert_eq!(usize::from(ip.payload_len()), n - ipv6::HEADER_LEN);
            let m = Icmpv6Packet::new_checked(ip.payload()).unwrap();
            assert_eq!((m.msg_type(), m.msg_code(), m.mtu()), (2, 0, 1500));
            assert!(m.verify_checksum(GW6, REMOTE6));
            assert!(icmp6_recompute_ok(&out[..n]));
            assert_eq!(
                m.payload(),
                &p[..1280 - 48],
                "the quote is the packet's head"
            );
            // etherparse agrees.
            let parsed = etherparse::SlicedPacket::from_ip(&out[..n]).unwrap();
            assert!(parsed.transport.is_some());
        }
        // A short packet is quoted whole.
        let p = udp6(200);
        let n = packet_too_big6(&p, 150, GW6, &mut out).unwrap();
        assert_eq!(n, 48 + 200);
        assert!(icmp6_recompute_ok(&out[..n]));
        // No room: no answer, no panic.
        assert_eq!(
            packet_too_big6(&udp6(1600), 1500, GW6, &mut out[..100]),
            None
        );
        assert_eq!(packet_too_big6(&[0x60; 10], 1500, GW6, &mut out), None);
    }

    #[test]
    fn fragmentation_needed_quotes_the_header_and_8_bytes_with_valid_checksums() {
        let (remote, guest, gw) = (
            Ipv4Addr::new(198, 18, 0, 2),
            Ipv4Addr::new(192, 168, 64, 2),
            Ipv4Addr::new(192, 168, 64, 1),
        );
        let b =
            etherparse::PacketBuilder::ipv4(remote.octets(), guest.octets(), 64).udp(7000, 5000);
        let mut p = Vec::new();
        b.write(&mut p, &[1u8; 3000]).unwrap();
        Ipv4Packet::new_unchecked(&mut p[..]).set_dont_frag(true);
        Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
        assert!(due_an_answer(&p));
        let mut out = [0u8; 600];
        let n = frag_needed4(&p, 1500, gw, &mut out).unwrap();
        assert_eq!(n, 20 + 8 + 28);
        let ip = Ipv4Packet::new_checked(&out[..n]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw, remote));
        let m = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((m.msg_type(), m.msg_code(), m.next_hop_mtu()), (3, 4, 1500));
        assert!(m.verify_checksum());
        assert_eq!(m.payload(), &p[..28]);
        // Without DF: no answer.
        Ipv4Packet::new_unchecked(&mut p[..]).set_dont_frag(false);
        assert!(!due_an_answer(&p));
    }

    #[test]
    fn errors_and_odd_sources_get_no_answer() {
        assert!(due_an_answer(&udp6(1600)));
        let mut quoted = [0u8; 1280];
        let n = packet_too_big6(&udp6(1600), 1400, REMOTE6, &mut quoted).unwrap();
        assert!(!due_an_answer(&quoted[..n]), "never about an ICMPv6 error");
        let mut p = udp6(1600);
        Ipv6Packet::new_unchecked(&mut p[..]).set_src_addr(Ipv6Addr::UNSPECIFIED);
        assert!(!due_an_answer(&p));
        assert!(!due_an_answer(&[]));
        assert!(!due_an_answer(&[0x45; 10]));
    }

    /// The token bucket: [`TOO_BIG_ANSWER_BURST`] at once, then [`TOO_BIG_ANSWERS_PER_SEC`]; over it counted.
    #[test]
    fn the_rate_limit_holds_and_what_is_over_it_is_counted() {
        let mut a = TooBigAnswers::new(Ipv4Addr::new(192, 168, 64, 1), Some(GW6), 1500);
        let t0 = Instant::from_millis(1_000_000);
        let taken = (0..100).filter(|_| a.take_token(t0)).count();
        assert_eq!(taken as u64, TOO_BIG_ANSWER_BURST);
        // 100 ms later: one more.
        let t1 = Instant::from_millis(1_000_100);
        assert!(a.take_token(t1));
        assert!(!a.take_token(t1));
        // A long pause refills to the burst, no more.
        let t2 = Instant::from_millis(2_000_000);
        let taken = (0..100).filter(|_| a.take_token(t2)).count();
        assert_eq!(taken as u64, TOO_BIG_ANSWER_BURST);
        // Over a simulated second of 1000 packets: at most the refill gets through.
        let mut stats = Stats::default();
        let mut nat = Nat::new(nat::NatConfig::default()).unwrap();
        let p = udp6(1600);
        for ms in 0..1000u64 {
            a.answer(
                &p,
                &mut nat,
                Instant::from_millis(2_000_000 + ms),
                &mut stats,
            );
            a.out.clear();
        }
        assert!(
            stats.too_big_limited >= 1000 - TOO_BIG_ANSWERS_PER_SEC,
            "{stats:?}"
        );
    }

    /// End to end within the bridge: a guest flow's packet that comes back too big is answered
    /// through the NAT to the sender, from the external address, quoting what the sender
    /// sent (its destination the external address and port).
    #[test]
    fn an_answer_goes_through_the_nat_to_the_sender() {
        let mut nat = Nat::new(nat::NatConfig::default()).unwrap();
        let now = Instant::from_millis(5_000);
        let ext: Ipv6Addr = nat::NatConfig::default().external_addr6;
        // The guest's flow out.
        let b =
            etherparse::PacketBuilder::ipv6(GUEST6.octets(), REMOTE6.octets(), 64).udp(5000, 7000);
        let mut out6 = Vec::new();
        b.write(&mut out6, b"hello").unwrap();
        assert_eq!(nat.outbound(&mut out6, now), Verdict::Forward);
        let ext_port = u16::from_be_bytes([out6[40], out6[41]]);
        // The big answer in, translated to the guest.
        let b =
            etherparse::PacketBuilder::ipv6(REMOTE6.octets(), ext.octets(), 64).udp(7000, ext_port);
        let mut big = Vec::new();
        b.write(&mut big, &[3u8; 3000]).unwrap();
        let sent = big.clone();
        assert_eq!(nat.inbound(&mut big, now), Verdict::Forward);
        assert_eq!(
            Ipv6Packet::new_checked(&big[..]).unwrap().dst_addr(),
            GUEST6
        );
        let mut a = TooBigAnswers::new(Ipv4Addr::new(192, 168, 64, 1), Some(GW6), 1500);
        a.set_host_hdr_len(VIRTIO_NET_HDR_LEN);
        let mut stats = Stats::default();
        a.answer(&big, &mut nat, now, &mut stats);
        let (host, peer) = MemoryLink::pair(8).unwrap();
        a.send(&host, &mut stats).unwrap();
        assert_eq!((stats.too_big_answers, stats.to_host), (1, 1));
        let got = peer.recv().expect("the Packet Too Big");
        assert_eq!(&got[..VIRTIO_NET_HDR_LEN], &[0u8; VIRTIO_NET_HDR_LEN]);
        let p = &got[VIRTIO_NET_HDR_LEN..];
        assert_eq!(p.len(), 1280);
        let ip = Ipv6Packet::new_checked(p).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (ext, REMOTE6));
        assert!(icmp6_recompute_ok(p));
        let m = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((m.msg_type(), m.mtu()), (icmpv6::PACKET_TOO_BIG, 1500));
        // The quote's addresses and ports are the sender's own again.
        assert_eq!(&m.payload()[8..48], &sent[8..48]);
        assert_eq!(&m.payload()[40..44], &sent[40..44]);
    }
}
