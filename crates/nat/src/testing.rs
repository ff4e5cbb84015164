//! Helpers for tests and benches (feature `test-utils`): packet builders on
//! `etherparse::PacketBuilder`, field readers, an independent full checksum
//! verifier, and a pre-warmed table for benches.

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use etherparse::PacketBuilder;
use wire::checksum as inet;
use wire::ipv4::field as ip;
use wire::{Field, Ipv4Packet, TcpPacket, UdpPacket, icmpv4, ip_proto, ipv4, ipv6, udp};

use crate::packet::ipv4_header_len;
use crate::{Instant, Nat, NatConfig, Verdict};

/// A guest address inside the default internal network.
pub const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
/// A second guest.
pub const GUEST2: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 3);
/// The gateway address inside the default internal network.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);
/// A server on the simulated internet (198.18.0.0/15).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// A second server.
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
/// The default external address.
pub const EXTERNAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

/// TCP flags for [`tcp`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpFlags {
    /// SYN.
    pub syn: bool,
    /// ACK.
    pub ack: bool,
    /// FIN.
    pub fin: bool,
    /// RST.
    pub rst: bool,
}

impl TcpFlags {
    /// SYN only.
    pub const SYN: TcpFlags = TcpFlags {
        syn: true,
        ack: false,
        fin: false,
        rst: false,
    };
    /// SYN+ACK.
    pub const SYN_ACK: TcpFlags = TcpFlags {
        syn: true,
        ack: true,
        fin: false,
        rst: false,
    };
    /// ACK only.
    pub const ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: false,
        rst: false,
    };
    /// FIN+ACK.
    pub const FIN_ACK: TcpFlags = TcpFlags {
        syn: false,
        ack: true,
        fin: true,
        rst: false,
    };
    /// RST.
    pub const RST: TcpFlags = TcpFlags {
        syn: false,
        ack: false,
        fin: false,
        rst: true,
    };
}

/// The default configuration.
pub fn config() -> NatConfig {
    NatConfig::default()
}

/// A NAT with the default configuration and a fixed hash seed.
pub fn nat() -> Nat {
    nat_with(config())
}

/// A NAT with `config` and a fixed hash seed.
///
/// # Panics
/// If `config` is invalid (test helper).
pub fn nat_with(config: NatConfig) -> Nat {
    match Nat::with_seed(config, 0x5eed) {
        Ok(n) => n,
        Err(e) => panic!("invalid test config: {e:?}"),
    }
}

/// A UDP/IPv4 packet.
pub fn udp(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let b =
        PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64).udp(src.port(), dst.port());
    let mut v = Vec::with_capacity(b.size(payload.len()));
    // Writing to a Vec only fails for oversized payloads (a test bug).
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("udp builder: {e}"));
    v
}

/// A TCP/IPv4 packet.
pub fn tcp(src: SocketAddrV4, dst: SocketAddrV4, flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64).tcp(
        src.port(),
        dst.port(),
        1000,
        64240,
    );
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("tcp builder: {e}"));
    v
}

/// An ICMP echo request.
pub fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_request(id, seq);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("icmp builder: {e}"));
    v
}

/// An ICMP echo reply.
pub fn echo_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_reply(id, seq);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("icmp builder: {e}"));
    v
}

/// An ICMP error (`icmp_type` 3, 11 or 12) carrying `embedded` (usually the
/// offending packet truncated with [`truncate_for_error`]).
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    embedded: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_raw(icmp_type, code, rest);
    let mut v = Vec::with_capacity(b.size(embedded.len()));
    b.write(&mut v, embedded)
        .unwrap_or_else(|e| panic!("icmp builder: {e}"));
    v
}

/// The first `header + 8` bytes of `packet`, as routers quote it in errors.
pub fn truncate_for_error(packet: &[u8]) -> Vec<u8> {
    packet
        .iter()
        .copied()
        .take(ihl(packet) + icmpv4::ERROR_QUOTED_DATA_LEN)
        .collect()
}

/// Splits an IPv4 packet into fragments of at most `chunk` payload bytes
/// (rounded down to a multiple of 8), fixing lengths, flags and checksums.
pub fn fragment(packet: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let ihl = ihl(packet);
    let chunk = (chunk / 8).max(1) * 8;
    let (hdr, payload) = packet.split_at(ihl.min(packet.len()));
    let n = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut f = hdr.to_vec();
            f.extend_from_slice(part);
            let total = f.len() as u16;
            let mut ip = Ipv4Packet::new_unchecked(&mut f[..]);
            ip.set_total_len(total);
            ip.set_dont_frag(false);
            ip.set_more_frags(i + 1 < n);
            ip.set_frag_offset((i * chunk) as u16);
            ip.fill_checksum();
            f
        })
        .collect()
}

/// Recomputes the IPv4 header checksum of `packet` (after a test edited it).
pub fn fix_ipv4_checksum(packet: &mut [u8]) {
    if packet.len() < ipv4::HEADER_LEN || ihl(packet) < ipv4::HEADER_LEN {
        return;
    }
    // The header is summed as far as the buffer goes.
    Ipv4Packet::new_unchecked(packet).fill_checksum();
}

/// Sets the IPv4 identification field and fixes the header checksum.
pub fn set_ip_id(packet: &mut [u8], id: u16) {
    if packet.len() >= ipv4::HEADER_LEN {
        Ipv4Packet::new_unchecked(&mut *packet).set_ident(id);
    }
    fix_ipv4_checksum(packet);
}

/// Source address and port (ICMP echo: the identifier) of a packet.
pub fn src(packet: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        addr(packet, ip::SRC_ADDR),
        port(packet, udp::field::SRC_PORT),
    )
}

/// Destination address and port (ICMP echo: the identifier) of a packet.
pub fn dst(packet: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        addr(packet, ip::DST_ADDR),
        port(packet, udp::field::DST_PORT),
    )
}

/// The source address of the packet embedded in an ICMP error, with port.
pub fn embedded_src(packet: &[u8]) -> SocketAddrV4 {
    src(packet
        .get(ihl(packet) + icmpv4::field::DATA..)
        .unwrap_or(&[]))
}

/// The destination address of the packet embedded in an ICMP error, with port.
pub fn embedded_dst(packet: &[u8]) -> SocketAddrV4 {
    dst(packet
        .get(ihl(packet) + icmpv4::field::DATA..)
        .unwrap_or(&[]))
}

/// Whether `packet` parses as IPv4 with etherparse: a valid header whose
/// total length covers it and fits in `packet`. As `Ipv4Slice` checks, but
/// for the authentication header (protocol 51) that `Ipv4Slice` also parses
/// at the payload's start: a later fragment does not carry it there.
pub fn parses(packet: &[u8]) -> bool {
    etherparse::Ipv4HeaderSlice::from_slice(packet).is_ok_and(|h| {
        let total = usize::from(h.total_len());
        total >= h.slice().len() && total <= packet.len()
    })
}

/// Whether every checksum in `packet` equals a full recompute (0x0000 and
/// 0xffff count as equal, as in one's complement): the IPv4 header; for a
/// whole (unfragmented) packet the TCP/UDP (zero UDP checksum allowed) or
/// ICMP checksum; for an ICMP error also the embedded IPv4 header and, when
/// the embedded packet is complete, its transport checksum.
pub fn checksums_match_full_recompute(packet: &[u8]) -> bool {
    check(packet, true)
}

/// Whether the transport checksum of a whole packet is valid (no check of
/// the IPv4 header; a zero UDP checksum counts as valid).
pub fn transport_checksum_ok(packet: &[u8]) -> bool {
    transport_ok(packet)
}

/// Whether two packets are the same, taking an IPv4 header checksum of 0x0000 and one of
/// 0xffff as the same value (one's complement's two zeros; incremental updates in a
/// different order may end on either, e.g. `Nat::outbound_head_with` against
/// `Nat::outbound_with`). Every other byte must be equal.
pub fn same_packet(a: &[u8], b: &[u8]) -> bool {
    if a == b {
        return true;
    }
    let zero = |c: &[u8]| c == [0, 0] || c == [0xff, 0xff];
    a.len() == b.len()
        && a.len() >= 20
        && a[0] >> 4 == 4
        && a[..10] == b[..10]
        && a[12..] == b[12..]
        && zero(&a[10..12])
        && zero(&b[10..12])
}

/// Turns a whole TCP or UDP packet into a partial-checksum one
/// ([`crate::L4Checksum::Partial`]): writes into its checksum field the
/// folded pseudo-header sum, not complemented, as Linux does for
/// CHECKSUM_PARTIAL. Returns `false` (packet unchanged) if it is not one.
pub fn make_partial(packet: &mut [u8]) -> bool {
    let (Some(proto), Some(ps)) = (whole_transport(packet), pseudo_sum(packet)) else {
        return false;
    };
    set_l4_field(packet, proto, ps);
    true
}

/// The folded one's-complement sum of the TCP/UDP pseudo-header of a whole
/// packet (addresses, protocol, transport length), not complemented: what
/// the checksum field of a partial packet must hold (up to 0 ≡ 0xffff).
pub fn pseudo_sum(packet: &[u8]) -> Option<u16> {
    if packet.len() < ipv4::HEADER_LEN {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(packet);
    let (h, total, proto) = (ip.header_len(), ip.total_len(), ip.protocol());
    if !matches!(proto, ip_proto::TCP | ip_proto::UDP)
        || usize::from(total) < h
        || usize::from(total) > packet.len()
    {
        return None;
    }
    let len = total - h as u16; // h <= total
    Some(inet::fold(inet::pseudo_header_v4(
        ip.src_addr(),
        ip.dst_addr(),
        proto,
        len,
    )))
}

/// The TCP/UDP checksum of a whole packet recomputed from scratch (the
/// field's current value ignored); a UDP result of 0 is given as `0xffff`.
pub fn recompute_l4_checksum(packet: &[u8]) -> Option<u16> {
    let proto = whole_transport(packet)?;
    let pseudo = u64::from(pseudo_sum(packet)?);
    let mut p = packet.to_vec();
    set_l4_field(&mut p, proto, 0);
    let l4 = Ipv4Packet::new_unchecked(&p[..]).into_payload();
    let c = inet::finish(inet::sum(l4, pseudo));
    Some(if c == 0 && proto == ip_proto::UDP {
        0xffff
    } else {
        c
    })
}

/// The TCP/UDP checksum field of a packet.
pub fn l4_checksum(packet: &[u8]) -> Option<u16> {
    let proto = whole_transport(packet)?;
    let l4 = Ipv4Packet::new_unchecked(packet).into_payload();
    Some(if proto == ip_proto::TCP {
        TcpPacket::new_unchecked(l4).checksum()
    } else {
        UdpPacket::new_unchecked(l4).checksum()
    })
}

/// Whether two checksum values are equal in one's complement (0 ≡ 0xffff).
pub fn ones_complement_eq(a: u16, b: u16) -> bool {
    a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
}

/// A table warmed with `flows` UDP flows, for benches: packets of each flow
/// in both directions, in a random order.
#[derive(Debug)]
pub struct Warmed {
    /// The NAT holding the flows.
    pub nat: Nat,
    /// One outbound packet per flow (guest → server), shuffled.
    pub outbound: Packets,
    /// One inbound packet per flow (server → external address), shuffled.
    pub inbound: Packets,
    /// The time to translate at (no flow expires before it).
    pub now: Instant,
}

/// Equal-length packets stored back to back.
#[derive(Clone, Debug, Default)]
pub struct Packets {
    bytes: Vec<u8>,
    len: usize,
}

impl Packets {
    /// Packet `i`, or an empty slice.
    pub fn get(&self, i: usize) -> &[u8] {
        self.bytes
            .get(i * self.len..(i + 1) * self.len)
            .unwrap_or(&[])
    }
    /// Number of packets.
    pub fn count(&self) -> usize {
        self.bytes.len().checked_div(self.len).unwrap_or(0)
    }
    /// The length of each packet.
    pub fn packet_len(&self) -> usize {
        self.len
    }
    /// A copy with `f` applied to each packet (e.g. [`make_partial`]).
    pub fn map(&self, mut f: impl FnMut(&mut [u8])) -> Packets {
        let mut out = self.clone();
        if out.len > 0 {
            out.bytes.chunks_exact_mut(out.len).for_each(&mut f);
        }
        out
    }
    fn push(&mut self, p: &[u8]) {
        self.len = p.len();
        self.bytes.extend_from_slice(p);
    }
}

/// Builds a [`Warmed`] table of `flows` UDP flows: up to 50 000 internal
/// endpoints on 250 guests, each talking to `flows / 50 000` servers.
///
/// # Panics
/// If the NAT refuses one of the flows (a bug).
pub fn warmed(flows: usize) -> Warmed {
    let mut cfg = config();
    cfg.max_flows = cfg.max_flows.max(flows);
    cfg.max_flows_per_host = cfg.max_flows_per_host.max(flows);
    let mut nat = nat_with(cfg);
    let now = Instant::from_secs(1);
    let endpoints = flows.clamp(1, 50_000);
    let mut out = Vec::with_capacity(flows);
    let mut inb = Vec::with_capacity(flows);
    for i in 0..flows {
        let (e, r) = (i % endpoints, i / endpoints);
        let guest = SocketAddrV4::new(
            Ipv4Addr::from(u32::from(GUEST) + (e % 250) as u32),
            10_000 + (e / 250) as u16,
        );
        let server = SocketAddrV4::new(Ipv4Addr::from(u32::from(SERVER) + r as u32), 443);
        let p = udp(guest, server, &[0u8; 18]);
        let mut t = p.clone();
        assert_eq!(
            nat.outbound(&mut t, now),
            Verdict::Forward,
            "warming flow {i}"
        );
        inb.push(udp(server, src(&t), &[0u8; 18]));
        out.push(p);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    shuffle(&mut out, &mut rng);
    shuffle(&mut inb, &mut rng);
    let (mut outbound, mut inbound) = (Packets::default(), Packets::default());
    out.iter().for_each(|p| outbound.push(p));
    inb.iter().for_each(|p| inbound.push(p));
    Warmed {
        nat,
        outbound,
        inbound,
        now,
    }
}

/// A deterministic Fisher–Yates shuffle (xorshift64).
pub fn shuffle<T>(v: &mut [T], state: &mut u64) {
    for i in (1..v.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        v.swap(i, (*state % (i as u64 + 1)) as usize);
    }
}

/// The protocol of a whole (unfragmented or not: only lengths are checked) TCP or UDP packet
/// whose transport header fits in its total length.
fn whole_transport(p: &[u8]) -> Option<u8> {
    if p.len() < ipv4::HEADER_LEN {
        return None;
    }
    let ip = Ipv4Packet::new_unchecked(p);
    let (h, total) = (ip.header_len(), usize::from(ip.total_len()));
    let min = match ip.protocol() {
        ip_proto::TCP => wire::tcp::HEADER_LEN,
        ip_proto::UDP => wire::udp::HEADER_LEN,
        _ => return None,
    };
    (h >= ipv4::HEADER_LEN && total <= p.len() && total >= h + min).then_some(ip.protocol())
}

/// Writes the TCP or UDP checksum field of a packet [`whole_transport`] accepted.
fn set_l4_field(p: &mut [u8], proto: u8, value: u16) {
    let l4 = Ipv4Packet::new_unchecked(p).into_payload_mut();
    if proto == ip_proto::TCP {
        TcpPacket::new_unchecked(l4).set_checksum(value);
    } else {
        UdpPacket::new_unchecked(l4).set_checksum(value);
    }
}

/// The IPv4 header length of `p` (20 if `p` is empty).
fn ihl(p: &[u8]) -> usize {
    p.get(ip::VERSION_IHL)
        .map_or(ipv4::HEADER_LEN, |&b| ipv4_header_len(b))
}

/// A big-endian u16 (0 unless `b` is 2 bytes).
fn be16(b: &[u8]) -> u16 {
    match b {
        &[x, y] => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

fn addr(p: &[u8], field: Field) -> Ipv4Addr {
    match p.get(field) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => Ipv4Addr::UNSPECIFIED,
    }
}

/// The TCP/UDP port at `field`, or for ICMP the echo identifier.
fn port(p: &[u8], field: Field) -> u16 {
    let l4 = ihl(p);
    let field = match p.get(ip::PROTOCOL) {
        Some(&ip_proto::ICMP) => icmpv4::field::ECHO_IDENT,
        _ => field,
    };
    p.get(l4 + field.start..l4 + field.end).map_or(0, be16)
}

fn check(p: &[u8], outer: bool) -> bool {
    if p.len() < ipv4::HEADER_LEN {
        return false;
    }
    let ip = Ipv4Packet::new_unchecked(p);
    let h = ip.header_len();
    if h < ipv4::HEADER_LEN || p.len() < h || !ip.verify_checksum() {
        return false;
    }
    let total = usize::from(ip.total_len()).min(p.len());
    if ip.is_fragment() || total < h {
        // A fragment: only the header checksum can be checked alone.
        return true;
    }
    let p = &p[..total];
    if !outer {
        return true;
    }
    if !transport_ok(p) {
        return false;
    }
    let error = ip.protocol() == ip_proto::ICMP
        && matches!(
            p.get(h),
            Some(
                &(icmpv4::DESTINATION_UNREACHABLE
                    | icmpv4::TIME_EXCEEDED
                    | icmpv4::PARAMETER_PROBLEM)
            )
        );
    if error {
        let e = p.get(h + icmpv4::HEADER_LEN..).unwrap_or(&[]);
        if e.len() >= ipv4::HEADER_LEN {
            let inner = Ipv4Packet::new_unchecked(e);
            if e.len() < inner.header_len() || !inner.verify_checksum() {
                return false;
            }
            if usize::from(inner.total_len()) == e.len() && !inner.is_fragment() {
                return transport_ok(e);
            }
        }
    }
    true
}

fn transport_ok(p: &[u8]) -> bool {
    if p.len() < ipv4::HEADER_LEN {
        return false;
    }
    let ip = Ipv4Packet::new_unchecked(p);
    let h = ip.header_len();
    if h < ipv4::HEADER_LEN {
        return false;
    }
    let Some(l4) = p.get(h..) else { return false };
    // The transport length is what follows the header (not the UDP length field).
    let Ok(len) = u16::try_from(l4.len()) else {
        return false;
    };
    let pseudo = |proto| inet::pseudo_header_v4(ip.src_addr(), ip.dst_addr(), proto, len);
    let ok = |start| inet::fold(inet::sum(l4, start)) == 0xffff;
    match ip.protocol() {
        ip_proto::TCP => ok(pseudo(ip_proto::TCP)),
        ip_proto::UDP => {
            let none =
                l4.len() >= wire::udp::HEADER_LEN && UdpPacket::new_unchecked(l4).checksum() == 0;
            none || ok(pseudo(ip_proto::UDP))
        }
        ip_proto::ICMP => ok(0),
        _ => true,
    }
}

// ---------------------------------------------------------------------------
// IPv6 (NAT66).

/// A guest address inside the default internal IPv6 network (`fd64::/64`).
pub const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0x10);
/// A second guest.
pub const GUEST6_2: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0x11);
/// A server on the test internet (`2001:db8::/32`).
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// A second server.
pub const SERVER6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
/// The default external IPv6 address.
pub const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2);

/// Socket address shorthand.
pub fn sa6(ip: Ipv6Addr, port: u16) -> SocketAddrV6 {
    SocketAddrV6::new(ip, port, 0, 0)
}

/// A UDP/IPv6 packet.
pub fn udp6(src: SocketAddrV6, dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let b =
        PacketBuilder::ipv6(src.ip().octets(), dst.ip().octets(), 64).udp(src.port(), dst.port());
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("udp6 builder: {e}"));
    v
}

/// A TCP/IPv6 packet.
pub fn tcp6(src: SocketAddrV6, dst: SocketAddrV6, flags: TcpFlags, payload: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ipv6(src.ip().octets(), dst.ip().octets(), 64).tcp(
        src.port(),
        dst.port(),
        1000,
        64240,
    );
    if flags.syn {
        b = b.syn();
    }
    if flags.ack {
        b = b.ack(1);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("tcp6 builder: {e}"));
    v
}

/// An ICMPv6 echo request.
pub fn echo_request6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).icmpv6_echo_request(id, seq);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("icmpv6 builder: {e}"));
    v
}

/// An ICMPv6 echo reply.
pub fn echo_reply6(src: Ipv6Addr, dst: Ipv6Addr, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).icmpv6_echo_reply(id, seq);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, payload)
        .unwrap_or_else(|e| panic!("icmpv6 builder: {e}"));
    v
}

/// An ICMPv6 error (`icmp_type` 1–4) carrying `embedded` (usually the
/// offending packet truncated with [`truncate_for_error6`]).
pub fn icmp_error6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    embedded: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ipv6(src.octets(), dst.octets(), 64).icmpv6_raw(icmp_type, code, rest);
    let mut v = Vec::with_capacity(b.size(embedded.len()));
    b.write(&mut v, embedded)
        .unwrap_or_else(|e| panic!("icmpv6 builder: {e}"));
    v
}

/// The first `40 + 8` bytes of an IPv6 `packet` (a short quote).
pub fn truncate_for_error6(packet: &[u8]) -> Vec<u8> {
    packet.iter().copied().take(ipv6::HEADER_LEN + 8).collect()
}

fn addr6(packet: &[u8], at: usize) -> Ipv6Addr {
    let mut b = [0u8; 16];
    if let Some(s) = packet.get(at..at + 16) {
        b.copy_from_slice(s);
    }
    Ipv6Addr::from(b)
}

fn port6(packet: &[u8], at: usize) -> u16 {
    let at = match packet.get(ipv6::field::NEXT_HEADER) {
        Some(&ip_proto::ICMPV6) => icmpv4::field::ECHO_IDENT.start,
        _ => at,
    };
    match packet.get(ipv6::HEADER_LEN + at..ipv6::HEADER_LEN + at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Source address and port (ICMPv6 echo: the identifier) of an IPv6 packet
/// without extension headers.
pub fn src6(packet: &[u8]) -> SocketAddrV6 {
    sa6(
        addr6(packet, ipv6::field::SRC_ADDR.start),
        port6(packet, udp::field::SRC_PORT.start),
    )
}

/// Destination address and port (ICMPv6 echo: the identifier).
pub fn dst6(packet: &[u8]) -> SocketAddrV6 {
    sa6(
        addr6(packet, ipv6::field::DST_ADDR.start),
        port6(packet, udp::field::DST_PORT.start),
    )
}

/// The source of the packet quoted in an ICMPv6 error, with port.
pub fn embedded_src6(packet: &[u8]) -> SocketAddrV6 {
    src6(packet.get(ipv6::HEADER_LEN + 8..).unwrap_or(&[]))
}

/// The destination of the packet quoted in an ICMPv6 error, with port.
pub fn embedded_dst6(packet: &[u8]) -> SocketAddrV6 {
    dst6(packet.get(ipv6::HEADER_LEN + 8..).unwrap_or(&[]))
}

/// The pseudo-header sum of an IPv6 packet without extension headers.
fn pseudo6(packet: &[u8]) -> Option<u64> {
    let next = *packet.get(ipv6::field::NEXT_HEADER)?;
    let len = packet.len().checked_sub(ipv6::HEADER_LEN)?;
    Some(inet::pseudo_header_v6(
        addr6(packet, ipv6::field::SRC_ADDR.start),
        addr6(packet, ipv6::field::DST_ADDR.start),
        next,
        len as u32,
    ))
}

/// Whether the TCP, UDP or ICMPv6 checksum of an IPv6 packet (no extension
/// headers, payload length = the rest of the buffer) equals a full
/// recompute, and, for an ICMPv6 error whose quoted packet is complete, the
/// quoted TCP/UDP checksum too (when it has no extension headers).
pub fn checksums6_ok(packet: &[u8]) -> bool {
    let Some(pseudo) = pseudo6(packet) else {
        return false;
    };
    let Some(l4) = packet.get(ipv6::HEADER_LEN..) else {
        return false;
    };
    if inet::fold(inet::sum(l4, pseudo)) != 0xffff {
        return false;
    }
    // A quoted packet that is whole: check its transport checksum too.
    let is_error = packet.get(ipv6::field::NEXT_HEADER) == Some(&ip_proto::ICMPV6)
        && l4.first().is_some_and(|t| *t < 128);
    if is_error
        && let Some(q) = l4.get(8..)
        && q.len() >= ipv6::HEADER_LEN
        && usize::from(u16::from_be_bytes([q[4], q[5]])) + ipv6::HEADER_LEN == q.len()
        && matches!(
            q.get(ipv6::field::NEXT_HEADER),
            Some(&(ip_proto::TCP | ip_proto::UDP))
        )
    {
        return checksums6_ok(q);
    }
    true
}

/// Whether `packet` parses as IPv6 with etherparse (extension headers
/// walked, payload length within the buffer).
pub fn parses6(packet: &[u8]) -> bool {
    etherparse::Ipv6Slice::from_slice(packet).is_ok()
}

/// The length an IPv6 packet declares (header and payload length).
pub fn declared_len6(packet: &[u8]) -> usize {
    match packet.get(ipv6::field::PAYLOAD_LENGTH) {
        Some(&[a, b]) => ipv6::HEADER_LEN + usize::from(u16::from_be_bytes([a, b])),
        _ => packet.len(),
    }
}

/// Turns a whole TCP or UDP IPv6 packet into a partial-checksum one (the
/// folded pseudo-header sum in its checksum field, as Linux's
/// CHECKSUM_PARTIAL). Returns `false` (unchanged) if it is not one.
pub fn make_partial6(packet: &mut [u8]) -> bool {
    let at = match packet.get(ipv6::field::NEXT_HEADER) {
        Some(&ip_proto::TCP) => ipv6::HEADER_LEN + 16,
        Some(&ip_proto::UDP) => ipv6::HEADER_LEN + 6,
        _ => return false,
    };
    let Some(ps) = pseudo6(packet) else {
        return false;
    };
    match packet.get_mut(at..at + 2) {
        Some(s) => {
            s.copy_from_slice(&inet::fold(ps).to_be_bytes());
            true
        }
        None => false,
    }
}

/// Builds a [`Warmed`] table of `flows` UDP/IPv6 flows, as [`warmed`] does
/// for IPv4 (same endpoint and server counts, same packet sizes apart from
/// the 20 more header bytes).
///
/// # Panics
/// If the NAT refuses one of the flows (a bug).
pub fn warmed6(flows: usize) -> Warmed {
    let mut cfg = config();
    cfg.max_flows = cfg.max_flows.max(flows);
    cfg.max_flows_per_host = cfg.max_flows_per_host.max(flows);
    let mut nat = nat_with(cfg);
    let now = Instant::from_secs(1);
    let endpoints = flows.clamp(1, 50_000);
    let mut out = Vec::with_capacity(flows);
    let mut inb = Vec::with_capacity(flows);
    for i in 0..flows {
        let (e, r) = (i % endpoints, i / endpoints);
        let guest = sa6(
            Ipv6Addr::from(u128::from(GUEST6) + (e % 250) as u128),
            10_000 + (e / 250) as u16,
        );
        let server = sa6(Ipv6Addr::from(u128::from(SERVER6) + r as u128), 443);
        let p = udp6(guest, server, &[0u8; 18]);
        let mut t = p.clone();
        assert_eq!(
            nat.outbound(&mut t, now),
            Verdict::Forward,
            "warming flow {i}"
        );
        inb.push(udp6(server, src6(&t), &[0u8; 18]));
        out.push(p);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    shuffle(&mut out, &mut rng);
    shuffle(&mut inb, &mut rng);
    let (mut outbound, mut inbound) = (Packets::default(), Packets::default());
    out.iter().for_each(|p| outbound.push(p));
    inb.iter().for_each(|p| inbound.push(p));
    Warmed {
        nat,
        outbound,
        inbound,
        now,
    }
}

/// `packet` (IPv6, no extension headers) with an 8-byte extension header
/// of type `ext` (hop-by-hop 0 or destination options 60: a PadN option;
/// routing 43: type 0 with no segments left) before its transport header.
pub fn with_extension6(packet: &[u8], ext: u8) -> Vec<u8> {
    let mut v = packet.to_vec();
    if v.len() < ipv6::HEADER_LEN {
        return v;
    }
    let next = v[ipv6::field::NEXT_HEADER];
    let hdr = if ext == ip_proto::IPV6_ROUTE {
        [next, 0, 0, 0, 0, 0, 0, 0]
    } else {
        [next, 0, 1, 4, 0, 0, 0, 0]
    };
    v.splice(ipv6::HEADER_LEN..ipv6::HEADER_LEN, hdr);
    v[ipv6::field::NEXT_HEADER] = ext;
    let len = (v.len() - ipv6::HEADER_LEN) as u16;
    v[ipv6::field::PAYLOAD_LENGTH].copy_from_slice(&len.to_be_bytes());
    v
}

/// `packet` (IPv6) without its extension headers (hop-by-hop, routing,
/// destination options, fragment): what the transport checksum is checked
/// on with [`checksums6_ok`] (which counts all bytes after the fixed header
/// as the transport message).
pub fn strip_extensions6(packet: &[u8]) -> Vec<u8> {
    let mut v = packet.to_vec();
    while v.len() >= ipv6::HEADER_LEN + 8 && matches!(v[ipv6::field::NEXT_HEADER], 0 | 43 | 44 | 60)
    {
        let ext = v[ipv6::field::NEXT_HEADER];
        let at = ipv6::HEADER_LEN;
        let len = if ext == ip_proto::IPV6_FRAG {
            8
        } else {
            (usize::from(v[at + 1]) + 1) * 8
        };
        v[ipv6::field::NEXT_HEADER] = v[at];
        v.drain(at..(at + len).min(v.len()));
        let l = (v.len() - ipv6::HEADER_LEN) as u16;
        v[ipv6::field::PAYLOAD_LENGTH].copy_from_slice(&l.to_be_bytes());
    }
    v
}

/// Splits an IPv6 packet (no extension headers) into fragments of at most
/// `chunk` payload bytes (rounded down to a multiple of 8), each with a
/// fragment header of identification `ident` (RFC 8200 section 4.5).
pub fn fragment6(packet: &[u8], chunk: usize, ident: u32) -> Vec<Vec<u8>> {
    let chunk = (chunk / 8).max(1) * 8;
    let (hdr, payload) = packet.split_at(ipv6::HEADER_LEN.min(packet.len()));
    let next = hdr.get(ipv6::field::NEXT_HEADER).copied().unwrap_or(0);
    let n = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            let mut f = hdr.to_vec();
            f[ipv6::field::NEXT_HEADER] = ip_proto::IPV6_FRAG;
            let off_m = (((i * chunk) / 8) as u16) << 3 | u16::from(i + 1 < n);
            f.extend_from_slice(&[next, 0]);
            f.extend_from_slice(&off_m.to_be_bytes());
            f.extend_from_slice(&ident.to_be_bytes());
            f.extend_from_slice(part);
            let l = (f.len() - ipv6::HEADER_LEN) as u16;
            f[ipv6::field::PAYLOAD_LENGTH].copy_from_slice(&l.to_be_bytes());
            f
        })
        .collect()
}

/// Reassembles IPv6 fragments made by [`fragment6`] (in offset order) into
/// a whole packet.
pub fn reassemble6(fragments: &[Vec<u8>]) -> Vec<u8> {
    let Some(first) = fragments.first() else {
        return Vec::new();
    };
    let mut v = first.get(..ipv6::HEADER_LEN).unwrap_or(&[]).to_vec();
    if let Some(n) = first.get(ipv6::HEADER_LEN) {
        v[ipv6::field::NEXT_HEADER] = *n;
    }
    for f in fragments {
        v.extend_from_slice(f.get(ipv6::HEADER_LEN + 8..).unwrap_or(&[]));
    }
    let l = (v.len() - ipv6::HEADER_LEN) as u16;
    v[ipv6::field::PAYLOAD_LENGTH].copy_from_slice(&l.to_be_bytes());
    v
}
