//! Checksum and TSO offloads through the threaded runner: mock guest queues ↔ bridge threads
//! ↔ an in-memory host link that carries virtio-net headers (as a TUN with IFF_VNET_HDR).
#![cfg(target_os = "linux")]

use core::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use bridge::testing::{
    EXTERNAL, GATEWAY_MAC, GUEST_IP, GUEST_MAC, MockNet, SERVER, activate, guest_memory, wait_for,
};
use bridge::{
    Bridge, BridgeConfig, BridgeHandle, DropCause, Error, LinkOffloads, MemoryLink,
    OFFERED_FEATURES, OFFLOAD_FEATURES, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use wire::checksum as inet;
use wire::{EthernetFrame, Icmpv4Packet, Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ip_proto};

const HDR: usize = VIRTIO_NET_HDR_LEN;
const ALL: u64 = OFFERED_FEATURES | OFFLOAD_FEATURES;
const MSS: u16 = 1448;

fn config() -> BridgeConfig {
    BridgeConfig {
        offloads: true,
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    }
}

fn start(
    mem: &Arc<GuestMemoryMmap>,
    net: &MockNet<'_>,
    features: u64,
    vnet: bool,
) -> Result<(BridgeHandle, MemoryLink), Error> {
    let (inside, outside) = if vnet {
        MemoryLink::pair_with_vnet_hdr(1024).unwrap()
    } else {
        MemoryLink::pair(1024).unwrap()
    };
    Ok((activate(mem, net, config(), features, inside)?, outside))
}

/// Posts a TX chain: `hdr`, then `frame` split in two descriptors.
fn send(net: &mut MockNet<'_>, mem: &GuestMemoryMmap, hdr: VirtioNetHdr, frame: &[u8]) {
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(frame);
    let a = net.alloc(bytes.len());
    mem.write_slice(&bytes, GuestAddress(a)).unwrap();
    net.post_tx(&[(a, HDR as u32, 0), (a + HDR as u64, frame.len() as u32, 0)]);
}

fn host_recv(host: &MemoryLink) -> Vec<u8> {
    let mut out = None;
    wait_for("a packet on the host link", || {
        out = host.recv();
        out.is_some()
    });
    out.unwrap()
}

fn guest_recv(
    net: &mut MockNet<'_>,
    pending: &mut Vec<bridge::testing::Used>,
) -> (VirtioNetHdr, Vec<u8>) {
    let mut got = None;
    wait_for("a frame in the RX queue", || {
        got = net.rx_frame(HDR, pending);
        got.is_some()
    });
    got.unwrap()
}

/// The folded pseudo-header sum of an IPv4 TCP/UDP packet (what a partial checksum holds).
fn pseudo_sum(ip: &[u8]) -> u16 {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    let len = p.total_len() - p.header_len() as u16;
    inet::fold(inet::pseudo_header_v4(
        p.src_addr(),
        p.dst_addr(),
        p.protocol(),
        len,
    ))
}

/// An IPv4 TCP or UDP packet from `src:sp` to `dst:dp` with `payload_len` bytes; its
/// transport checksum holds the pseudo-header sum only (partial) if `partial`, else complete.
fn l4_packet(
    proto: u8,
    src: Ipv4Addr,
    sp: u16,
    dst: Ipv4Addr,
    dp: u16,
    payload_len: usize,
    partial: bool,
) -> Vec<u8> {
    let l4h = if proto == ip_proto::TCP {
        wire::tcp::HEADER_LEN
    } else {
        wire::udp::HEADER_LEN
    };
    let total = wire::ipv4::HEADER_LEN + l4h + payload_len;
    let mut p = vec![0u8; total];
    let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
    ip.set_version(4);
    ip.set_header_len(wire::ipv4::HEADER_LEN);
    ip.set_total_len(total as u16);
    ip.set_ident(0x1234);
    ip.set_dont_frag(true);
    ip.set_ttl(64);
    ip.set_protocol(proto);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
    let l4 = ip.payload_mut();
    if proto == ip_proto::TCP {
        let mut t = TcpPacket::new_unchecked(&mut *l4);
        t.set_src_port(sp);
        t.set_dst_port(dp);
        t.set_seq_number(1000);
        t.set_header_len(wire::tcp::HEADER_LEN);
        t.set_flags(wire::tcp::PSH | wire::tcp::ACK);
        t.set_window_len(65535);
    } else {
        let mut u = UdpPacket::new_unchecked(&mut *l4);
        u.set_src_port(sp);
        u.set_dst_port(dp);
        u.set_len((l4h + payload_len) as u16);
    }
    for (i, b) in l4[l4h..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let ps = pseudo_sum(&p);
    let c = if partial {
        ps
    } else {
        let l4 = Ipv4Packet::new_checked(&p[..]).unwrap().into_payload();
        inet::finish(inet::sum(l4, u64::from(ps)))
    };
    set_l4_checksum(&mut p, c);
    p
}

/// Writes the TCP or UDP checksum field of an IPv4 packet.
fn set_l4_checksum(ip: &mut [u8], c: u16) {
    let mut p = Ipv4Packet::new_checked(ip).unwrap();
    if p.protocol() == ip_proto::TCP {
        TcpPacket::new_checked(p.payload_mut())
            .unwrap()
            .set_checksum(c);
    } else {
        UdpPacket::new_checked(p.payload_mut())
            .unwrap()
            .set_checksum(c);
    }
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; wire::ethernet::HEADER_LEN + ip.len()];
    let mut e = EthernetFrame::new_unchecked(&mut f[..]);
    e.set_dst_addr(GATEWAY_MAC);
    e.set_src_addr(GUEST_MAC);
    e.set_ethertype(wire::ethertype::IPV4);
    e.payload_mut().copy_from_slice(ip);
    f
}

/// Completes a partial transport checksum the way a NIC (or the host kernel) would.
fn complete(ip: &mut [u8], csum_start: usize, csum_offset: usize) {
    let total = usize::from(Ipv4Packet::new_checked(&*ip).unwrap().total_len());
    let c = inet::checksum(&ip[csum_start..total]);
    ip[csum_start + csum_offset..csum_start + csum_offset + 2].copy_from_slice(&c.to_be_bytes());
}

/// Whether the IPv4 header checksum and the TCP/UDP checksum of `ip` are complete and right.
fn l4_valid(ip: &[u8]) -> bool {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    let (src, dst) = (p.src_addr(), p.dst_addr());
    p.verify_checksum()
        && if p.protocol() == ip_proto::TCP {
            TcpPacket::new_checked(p.payload())
                .unwrap()
                .verify_checksum_v4(src, dst)
        } else {
            UdpPacket::new_checked(p.payload())
                .unwrap()
                .verify_checksum_v4(src, dst)
        }
}

/// The IP packet of an Ethernet frame.
fn ip_of(frame: &[u8]) -> &[u8] {
    EthernetFrame::new_checked(frame).unwrap().into_payload()
}

/// The TCP payload of an IPv4 packet.
fn tcp_payload(ip: &[u8]) -> &[u8] {
    let p = Ipv4Packet::new_checked(ip).unwrap().into_payload();
    TcpPacket::new_checked(p).unwrap().into_payload()
}

/// Source address and port, destination address and port of an IPv4 TCP/UDP packet.
fn addrs(ip: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = Ipv4Packet::new_checked(ip).unwrap();
    // TCP and UDP share the port fields.
    let u = UdpPacket::new_unchecked(p.payload());
    (p.src_addr(), u.src_port(), p.dst_addr(), u.dst_port())
}

fn tso_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len: 54,
        gso_size: MSS,
        csum_start: 34,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// The guest's SLAAC address (EUI-64 of `GUEST_MAC` in `fd64::/64`).
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2);
/// A TCPv6 segment size: MTU 1500 - 40 - 20.
const MSS6: u16 = 1440;

/// An IPv6 TCP packet from `src:sp` to `dst:dp` with `payload_len` bytes; its checksum holds
/// the pseudo-header sum only (partial) if `partial`, else complete.
fn tcp6_packet(
    src: Ipv6Addr,
    sp: u16,
    dst: Ipv6Addr,
    dp: u16,
    payload_len: usize,
    partial: bool,
) -> Vec<u8> {
    let l4_len = wire::tcp::HEADER_LEN + payload_len;
    let mut p = vec![0u8; wire::ipv6::HEADER_LEN + l4_len];
    let mut ip = Ipv6Packet::new_unchecked(&mut p[..]);
    ip.set_version(6);
    ip.set_traffic_class(0);
    ip.set_flow_label(0);
    ip.set_payload_len(l4_len as u16);
    ip.set_next_header(ip_proto::TCP);
    ip.set_hop_limit(64);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    let l4 = &mut p[wire::ipv6::HEADER_LEN..];
    let mut t = TcpPacket::new_unchecked(&mut *l4);
    t.set_src_port(sp);
    t.set_dst_port(dp);
    t.set_seq_number(1000);
    t.set_header_len(wire::tcp::HEADER_LEN);
    t.set_flags(wire::tcp::PSH | wire::tcp::ACK);
    t.set_window_len(65535);
    for (i, b) in l4[wire::tcp::HEADER_LEN..].iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let pseudo = inet::pseudo_header_v6(src, dst, ip_proto::TCP, l4_len as u32);
    let c = if partial {
        inet::fold(pseudo)
    } else {
        inet::finish(inet::sum(l4, pseudo))
    };
    TcpPacket::new_unchecked(&mut *l4).set_checksum(c);
    p
}

fn eth6(ip: &[u8]) -> Vec<u8> {
    let mut f = eth(ip);
    EthernetFrame::new_unchecked(&mut f[..]).set_ethertype(wire::ethertype::IPV6);
    f
}

/// Completes the partial TCP checksum of an IPv6 packet (TCP right after the fixed header)
/// the way a NIC would, and says whether it then equals a full recompute.
fn complete6_and_verify(ip: &mut [u8]) -> bool {
    let start = wire::ipv6::HEADER_LEN;
    let c = inet::checksum(&ip[start..]);
    ip[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
    let p = Ipv6Packet::new_checked(&*ip).unwrap();
    TcpPacket::new_checked(p.payload())
        .unwrap()
        .verify_checksum_v6(p.src_addr(), p.dst_addr())
}

/// Source address and port, destination address and port of an IPv6 TCP packet.
fn addrs6(ip: &[u8]) -> (Ipv6Addr, u16, Ipv6Addr, u16) {
    let p = Ipv6Packet::new_checked(ip).unwrap();
    let t = TcpPacket::new_unchecked(p.payload());
    (p.src_addr(), t.src_port(), p.dst_addr(), t.dst_port())
}

/// The next IPv6 TCP frame the guest receives (the gateway's Router Advertisements, which
/// come once the guest speaks IPv6, skipped).
fn guest_recv_tcp6(
    net: &mut MockNet<'_>,
    pending: &mut Vec<bridge::testing::Used>,
) -> (VirtioNetHdr, Vec<u8>) {
    for _ in 0..8 {
        let (h, f) = guest_recv(net, pending);
        let ip = ip_of(&f);
        if Ipv6Packet::new_checked(ip).is_ok_and(|p| p.next_header() == ip_proto::TCP) {
            return (h, f);
        }
    }
    panic!("no TCPv6 frame among the first 8");
}

fn tso6_hdr() -> VirtioNetHdr {
    VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
        hdr_len: 74,
        gso_size: MSS6,
        csum_start: 54,
        csum_offset: 16,
        num_buffers: 0,
    }
}

/// A guest TCPv6 super-frame (HOST_TSO6) goes through NAT66 with its partial checksum and
/// reaches the host link whole, with a TCPV6 header whose offsets are relative to the IP
/// packet; completing the checksum there gives what a full recompute gives.
#[test]
fn a_tso6_super_frame_goes_to_the_host_through_nat66_with_its_header() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    let (h, host) = start(&mem, &net, ALL, true).unwrap();
    let ip = tcp6_packet(GUEST6, 40000, SERVER6, 80, 60_000, true);
    send(&mut net, &mem, tso6_hdr(), &eth6(&ip));
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let hdr = VirtioNetHdr::parse(&out).unwrap();
    assert_eq!(
        (
            hdr.flags,
            hdr.gso_type,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
            hdr.hdr_len
        ),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV6,
            MSS6,
            40,
            16,
            60
        ),
        "offsets relative to the IP packet"
    );
    let mut pkt = out[HDR..].to_vec();
    assert_eq!(pkt.len(), ip.len());
    let (src, _, dst, dp) = addrs6(&pkt);
    assert_eq!((src, dst, dp), (EXTERNAL6, SERVER6, 80));
    assert_eq!(pkt[60..], ip[60..], "payload untouched");
    assert!(
        complete6_and_verify(&mut pkt),
        "the partial checksum was adjusted for the new address and port"
    );
    let s = h.shutdown().unwrap();
    assert_eq!((s.bridge.tx_gso, s.bridge.tx_gso6), (1, 1));
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

/// A TCPv6 GSO super-packet from the host (TUN_F_TSO6) goes through NAT66 inbound with its
/// partial checksum and reaches a guest that took GUEST_TSO6 as one TCPV6 frame.
#[test]
fn a_tcpv6_gso_super_packet_from_the_host_reaches_the_guest() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..64 {
        net.post_rx(&[4096]);
    }
    let (h, host) = start(&mem, &net, ALL, true).unwrap();
    let mut pending = Vec::new();
    send(
        &mut net,
        &mem,
        VirtioNetHdr::default(),
        &eth6(&tcp6_packet(GUEST6, 40001, SERVER6, 80, 10, false)),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let (_, mapped, _, _) = addrs6(&out[HDR..]);
    let ip = tcp6_packet(SERVER6, 80, EXTERNAL6, mapped, 50_000, true);
    let hdr = VirtioNetHdr {
        csum_start: 40,
        hdr_len: 60,
        ..tso6_hdr()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&ip);
    assert!(host.send(&bytes));
    let (g, frame) = guest_recv_tcp6(&mut net, &mut pending);
    assert_eq!(
        (
            g.flags,
            g.gso_type,
            g.gso_size,
            g.csum_start,
            g.csum_offset,
            g.hdr_len
        ),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV6,
            MSS6,
            54,
            16,
            74
        ),
        "offsets relative to the Ethernet frame"
    );
    assert!(g.num_buffers > 1, "merged buffers");
    let mut pkt = ip_of(&frame).to_vec();
    assert_eq!(addrs6(&pkt), (SERVER6, 80, GUEST6, 40001));
    assert!(complete6_and_verify(&mut pkt));
    let s = h.shutdown().unwrap();
    assert_eq!((s.bridge.rx_gso, s.bridge.rx_gso6), (1, 1));
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

/// A TCPv6 super-packet from the host to a guest without GUEST_TSO6 (the link was not asked
/// for it, so it should not come) is a counted drop, and a TCPv4 one still arrives.
#[test]
fn a_tcpv6_super_packet_for_a_guest_without_guest_tso6_is_a_counted_drop() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..64 {
        net.post_rx(&[4096]);
    }
    let (h, host) = start(&mem, &net, ALL & !(1 << VIRTIO_NET_F_GUEST_TSO6), true).unwrap();
    let mut pending = Vec::new();
    send(
        &mut net,
        &mem,
        VirtioNetHdr::default(),
        &eth6(&tcp6_packet(GUEST6, 40002, SERVER6, 80, 10, false)),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let (_, mapped, _, _) = addrs6(&out[HDR..]);
    let ip = tcp6_packet(SERVER6, 80, EXTERNAL6, mapped, 50_000, true);
    let hdr = VirtioNetHdr {
        csum_start: 40,
        hdr_len: 60,
        ..tso6_hdr()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&ip);
    assert!(host.send(&bytes));
    // Then a small one with a partial checksum: it arrives, so the drop came first.
    let small = tcp6_packet(SERVER6, 80, EXTERNAL6, mapped, 100, true);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 40,
        csum_offset: 16,
        ..VirtioNetHdr::default()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&small);
    assert!(host.send(&bytes));
    let (g, frame) = guest_recv_tcp6(&mut net, &mut pending);
    assert_eq!(g.gso_type, 0);
    assert_eq!(ip_of(&frame).len(), small.len());
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.drops_of(DropCause::Offload), 1);
    assert_eq!(s.bridge.rx_gso, 0);
}

#[test]
fn offloads_are_offered_only_when_configured_and_need_their_checksum_bit() {
    let plain = Bridge::new(BridgeConfig::default()).unwrap();
    assert_eq!(plain.device_features() & OFFLOAD_FEATURES, 0);
    let mut b = Bridge::new(config()).unwrap();
    assert_eq!(b.device_features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
    // TSO without its checksum bit is not negotiated (virtio 1.x 5.1.3.1).
    let acked = b.ack_features(
        OFFERED_FEATURES | 1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO4,
    );
    assert_eq!(acked & OFFLOAD_FEATURES, 0);
    let acked = b.ack_features(ALL);
    assert_eq!(acked & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
}

#[test]
fn activation_refuses_offloads_over_a_link_without_virtio_net_headers() {
    let mem = Arc::new(guest_memory());
    let net = MockNet::new(&mem, 64);
    let err = start(&mem, &net, ALL, false).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("vnet_hdr")),
        "{err}"
    );
    // Without offloads negotiated the same link is fine.
    let (h, _host) = start(&mem, &net, OFFERED_FEATURES, false).unwrap();
    h.shutdown().unwrap();
}

#[test]
fn the_link_gets_the_offloads_the_guest_accepted() {
    let mem = Arc::new(guest_memory());
    let net = MockNet::new(&mem, 64);
    let (h, _host) = start(&mem, &net, ALL, true).unwrap();
    // The bridge holds the inside end; what it set is visible through the pair's own state
    // only there, so check through a second activation with GUEST_CSUM only.
    h.shutdown().unwrap();
    let (inside, _outside) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
    let inside = Arc::new(inside);
    let features = OFFERED_FEATURES | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_CSUM;
    let net2 = MockNet::new(&mem, 64);
    let h = activate(&mem, &net2, config(), features, inside.clone()).unwrap();
    assert_eq!(
        inside.offloads(),
        LinkOffloads {
            csum: true,
            ..LinkOffloads::NONE
        }
    );
    h.shutdown().unwrap();
}

#[test]
fn a_tso_super_frame_goes_to_the_host_translated_with_its_header() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    let (h, host) = start(&mem, &net, ALL, true).unwrap();
    let ip = l4_packet(6, GUEST_IP, 40000, SERVER, 80, 60_000, true);
    send(&mut net, &mem, tso_hdr(), &eth(&ip));
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let hdr = VirtioNetHdr::parse(&out).unwrap();
    assert_eq!(
        (
            hdr.flags,
            hdr.gso_type,
            hdr.gso_size,
            hdr.csum_start,
            hdr.csum_offset,
            hdr.hdr_len
        ),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV4,
            MSS,
            20,
            16,
            40
        ),
        "offsets relative to the IP packet"
    );
    let mut pkt = out[HDR..].to_vec();
    assert_eq!(pkt.len(), ip.len());
    let (src, _, dst, dp) = addrs(&pkt);
    assert_eq!((src, dst, dp), (EXTERNAL, SERVER, 80));
    complete(&mut pkt, 20, 16);
    assert!(
        l4_valid(&pkt),
        "the partial checksum was adjusted for the new address and port"
    );
    assert_eq!(tcp_payload(&pkt), tcp_payload(&ip), "payload untouched");
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.tx_gso, 1);
    assert_eq!(
        s.bridge.tx_gathered, 1,
        "the pipeline's TX thread gathers it"
    );
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

#[test]
fn a_gso_super_packet_from_the_host_reaches_the_guest_in_merged_buffers() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..64 {
        net.post_rx(&[4096]);
    }
    let (h, host) = start(&mem, &net, ALL, true).unwrap();
    let mut pending = Vec::new();
    // Open the mapping with a plain packet.
    send(
        &mut net,
        &mem,
        VirtioNetHdr::default(),
        &eth(&l4_packet(6, GUEST_IP, 40001, SERVER, 80, 10, false)),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let (_, mapped, _, _) = addrs(&out[HDR..]);
    // 50 000 bytes back, as the host kernel hands a GRO'd super-packet to a TUN.
    let ip = l4_packet(6, SERVER, 80, EXTERNAL, mapped, 50_000, true);
    let hdr = VirtioNetHdr {
        csum_start: 20,
        hdr_len: 40,
        ..tso_hdr()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&ip);
    assert!(host.send(&bytes));
    let (g, frame) = guest_recv(&mut net, &mut pending);
    assert_eq!(
        (
            g.flags,
            g.gso_type,
            g.gso_size,
            g.csum_start,
            g.csum_offset,
            g.hdr_len
        ),
        (
            VIRTIO_NET_HDR_F_NEEDS_CSUM,
            VIRTIO_NET_HDR_GSO_TCPV4,
            MSS,
            34,
            16,
            54
        ),
        "offsets relative to the Ethernet frame"
    );
    assert!(g.num_buffers > 1, "merged buffers");
    let mut pkt = ip_of(&frame).to_vec();
    let (src, sp, dst, dp) = addrs(&pkt);
    assert_eq!((src, sp, dst, dp), (SERVER, 80, GUEST_IP, 40001));
    complete(&mut pkt, 20, 16);
    assert!(l4_valid(&pkt));
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.rx_gso, 1);
    assert_eq!(s.bridge.drops_of(DropCause::TooBig), 0);
}

#[test]
fn a_partial_udp_checksum_is_passed_on_and_data_valid_reaches_a_guest_that_accepts_it() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let (h, host) = start(&mem, &net, ALL, true).unwrap();
    let mut pending = Vec::new();
    let ip = l4_packet(17, GUEST_IP, 5353, SERVER, 53, 100, true);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: 34,
        csum_offset: 6,
        ..Default::default()
    };
    send(&mut net, &mem, hdr, &eth(&ip));
    h.kick(1).unwrap();
    let out = host_recv(&host);
    let hh = VirtioNetHdr::parse(&out).unwrap();
    assert_eq!(
        (hh.flags, hh.gso_type, hh.csum_start, hh.csum_offset),
        (VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 20, 6)
    );
    let mut pkt = out[HDR..].to_vec();
    let (_, mapped, _, _) = addrs(&pkt);
    complete(&mut pkt, 20, 6);
    assert!(l4_valid(&pkt));
    // The reply comes back with DATA_VALID and a complete checksum.
    let back = l4_packet(17, SERVER, 53, EXTERNAL, mapped, 40, false);
    let mut bytes = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_DATA_VALID,
        ..Default::default()
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&back);
    assert!(host.send(&bytes));
    let (g, frame) = guest_recv(&mut net, &mut pending);
    assert_eq!((g.flags, g.gso_type), (VIRTIO_NET_HDR_F_DATA_VALID, 0));
    assert!(
        l4_valid(ip_of(&frame)),
        "a valid checksum stays valid through the NAT"
    );
    h.shutdown().unwrap();
}

#[test]
fn without_guest_csum_partial_checksums_from_the_host_are_completed() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let features = OFFERED_FEATURES | 1 << VIRTIO_NET_F_CSUM;
    let (h, host) = start(&mem, &net, features, true).unwrap();
    let mut pending = Vec::new();
    send(
        &mut net,
        &mem,
        VirtioNetHdr::default(),
        &eth(&l4_packet(17, GUEST_IP, 6000, SERVER, 53, 10, false)),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    assert_eq!(
        VirtioNetHdr::parse(&out),
        Some(VirtioNetHdr::default()),
        "zero header for a plain packet"
    );
    let (_, mapped, _, _) = addrs(&out[HDR..]);
    let back = l4_packet(17, SERVER, 53, EXTERNAL, mapped, 40, true);
    let hdr = VirtioNetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID,
        csum_start: 20,
        csum_offset: 6,
        ..Default::default()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&back);
    assert!(host.send(&bytes));
    let (g, frame) = guest_recv(&mut net, &mut pending);
    assert_eq!(
        (g.flags, g.gso_type),
        (0, 0),
        "nothing the guest did not accept"
    );
    assert!(l4_valid(ip_of(&frame)), "completed in software");
    h.shutdown().unwrap();
}

#[test]
fn offload_requests_not_negotiated_or_out_of_bounds_are_counted_drops() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    // CSUM but not HOST_TSO4.
    let features = OFFERED_FEATURES | 1 << VIRTIO_NET_F_CSUM | 1 << VIRTIO_NET_F_GUEST_CSUM;
    let (h, host) = start(&mem, &net, features, true).unwrap();
    let big = eth(&l4_packet(6, GUEST_IP, 40000, SERVER, 80, 1000, true));
    send(&mut net, &mem, tso_hdr(), &big);
    // GSO on UDP, a checksum field past the end, ECN without negotiation, gso_size 0.
    let small = eth(&l4_packet(17, GUEST_IP, 5000, SERVER, 53, 30, true));
    send(
        &mut net,
        &mem,
        VirtioNetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 6,
            gso_type: 3,
            gso_size: 100,
            hdr_len: 42,
            num_buffers: 0,
        },
        &small,
    );
    send(
        &mut net,
        &mem,
        VirtioNetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 60,
            ..Default::default()
        },
        &small,
    );
    send(
        &mut net,
        &mem,
        VirtioNetHdr {
            flags: 1,
            csum_start: 4000,
            csum_offset: 6,
            ..Default::default()
        },
        &small,
    );
    h.kick(1).unwrap();
    wait_for("the drops", || {
        h.stats().bridge.drops_of(DropCause::Offload) == 4
    });
    // A partial checksum in an unusual place (ICMP) is completed in software and sent plain.
    let mut icmp = vec![0u8; wire::ipv4::HEADER_LEN + wire::icmpv4::HEADER_LEN];
    let mut ip = Ipv4Packet::new_unchecked(&mut icmp[..]);
    ip.set_version(4);
    ip.set_header_len(wire::ipv4::HEADER_LEN);
    ip.set_total_len(28);
    ip.set_ident(1);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::ICMP);
    ip.set_src_addr(GUEST_IP);
    ip.set_dst_addr(SERVER);
    ip.fill_checksum();
    let mut echo = Icmpv4Packet::new_unchecked(ip.payload_mut());
    echo.set_msg_type(wire::icmpv4::ECHO_REQUEST);
    echo.set_echo_ident(0x1234);
    echo.set_echo_seq_no(1);
    send(
        &mut net,
        &mem,
        VirtioNetHdr {
            flags: 1,
            csum_start: 34,
            csum_offset: 2,
            ..Default::default()
        },
        &eth(&icmp),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    assert_eq!(VirtioNetHdr::parse(&out), Some(VirtioNetHdr::default()));
    let ip = Ipv4Packet::new_checked(&out[HDR..]).unwrap();
    assert!(
        Icmpv4Packet::new_checked(ip.payload())
            .unwrap()
            .verify_checksum(),
        "ICMP checksum completed"
    );
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.to_host, 1);
    assert_eq!(s.bridge.tx_gso, 0);
}

#[test]
fn without_offloads_the_link_header_is_zero_and_oversized_frames_are_too_big() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    let (h, host) = start(&mem, &net, OFFERED_FEATURES, true).unwrap();
    // The guest did not negotiate CSUM: its header is ignored, the frame goes out as is.
    let ip = l4_packet(17, GUEST_IP, 5000, SERVER, 53, 30, false);
    send(
        &mut net,
        &mem,
        VirtioNetHdr {
            flags: 1,
            csum_start: 4000,
            ..Default::default()
        },
        &eth(&ip),
    );
    send(
        &mut net,
        &mem,
        tso_hdr(),
        &eth(&l4_packet(6, GUEST_IP, 40000, SERVER, 80, 5000, true)),
    );
    h.kick(1).unwrap();
    let out = host_recv(&host);
    assert_eq!(VirtioNetHdr::parse(&out), Some(VirtioNetHdr::default()));
    assert!(l4_valid(&out[HDR..]));
    wait_for("the oversized frame's drop", || {
        h.stats().bridge.drops_of(DropCause::TooBig) == 1
    });
    h.shutdown().unwrap();
}
