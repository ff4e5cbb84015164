//! IPv4 fragments through the threaded runner, in order and out of order (a later fragment
//! before the first): the NAT holds early fragments and the bridge sends them on once the
//! first fragment has been translated (RFC 4787 REQ-14).
#![cfg(target_os = "linux")]

use core::net::Ipv4Addr;
use std::sync::Arc;

use bridge::testing::{
    EXTERNAL, GATEWAY_MAC, GUEST_IP, GUEST_MAC, MockNet, SERVER, activate, guest_memory, wait_for,
};
use bridge::{BridgeConfig, BridgeHandle, MemoryLink, OFFERED_FEATURES, VIRTIO_NET_HDR_LEN};
use vm_memory::GuestMemoryMmap;
use wire::{EthernetFrame, Ipv4Packet, UdpPacket, ethertype, ip_proto, ipv4, udp};

const HDR: usize = VIRTIO_NET_HDR_LEN;

fn start(mem: &Arc<GuestMemoryMmap>, net: &MockNet<'_>) -> (BridgeHandle, MemoryLink) {
    let (inside, outside) = MemoryLink::pair(1024).unwrap();
    let config = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let h = activate(mem, net, config, OFFERED_FEATURES, inside).unwrap();
    (h, outside)
}

/// A UDP datagram from `src:sp` to `dst:dp` with `len` bytes of payload, cut into IPv4
/// fragments whose payloads are at most `frag` bytes (a multiple of 8).
fn fragments(
    src: Ipv4Addr,
    sp: u16,
    dst: Ipv4Addr,
    dp: u16,
    len: usize,
    frag: usize,
) -> Vec<Vec<u8>> {
    let mut dgram = vec![0u8; udp::HEADER_LEN + len];
    let mut u = UdpPacket::new_unchecked(&mut dgram[..]);
    u.set_src_port(sp);
    u.set_dst_port(dp);
    u.set_len((udp::HEADER_LEN + len) as u16);
    for (i, b) in u.payload_mut().iter_mut().enumerate() {
        *b = (i * 13 + 1) as u8;
    }
    u.fill_checksum_v4(src, dst);
    dgram
        .chunks(frag)
        .enumerate()
        .map(|(k, piece)| {
            let last = (k + 1) * frag >= dgram.len();
            let mut p = vec![0u8; ipv4::HEADER_LEN + piece.len()];
            let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
            ip.set_version(4);
            ip.set_header_len(ipv4::HEADER_LEN);
            ip.set_total_len((ipv4::HEADER_LEN + piece.len()) as u16);
            ip.set_ident(0x4242);
            ip.set_more_frags(!last);
            ip.set_frag_offset((k * frag) as u16);
            ip.set_ttl(64);
            ip.set_protocol(ip_proto::UDP);
            ip.set_src_addr(src);
            ip.set_dst_addr(dst);
            ip.fill_checksum();
            ip.payload_mut().copy_from_slice(piece);
            p
        })
        .collect()
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; wire::ethernet::HEADER_LEN + ip.len()];
    let mut e = EthernetFrame::new_unchecked(&mut f[..]);
    e.set_dst_addr(GATEWAY_MAC);
    e.set_src_addr(GUEST_MAC);
    e.set_ethertype(ethertype::IPV4);
    e.payload_mut().copy_from_slice(ip);
    f
}

/// Reassembles fragments (any order) into the UDP datagram; checks every IPv4 header.
fn reassemble(frags: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let mut parts: Vec<(usize, &[u8])> = frags
        .iter()
        .map(|p| {
            let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
            assert!(ip.verify_checksum(), "IPv4 header checksum");
            (usize::from(ip.frag_offset()), ip.into_payload())
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut dgram = Vec::new();
    for (off, data) in parts {
        assert_eq!(off, dgram.len(), "contiguous fragments");
        dgram.extend_from_slice(data);
    }
    let ip = Ipv4Packet::new_checked(&frags[0][..]).unwrap();
    (ip.src_addr(), ip.dst_addr(), dgram)
}

/// Whether `dgram` is one whole UDP datagram with a (non-zero) checksum that is right for
/// `src` → `dst`.
fn udp_valid(src: Ipv4Addr, dst: Ipv4Addr, dgram: &[u8]) -> bool {
    UdpPacket::new_checked(dgram).is_ok_and(|u| {
        usize::from(u.len()) == dgram.len() && u.checksum() != 0 && u.verify_checksum_v4(src, dst)
    })
}

#[test]
fn fragments_arriving_before_their_first_fragment_are_held_and_sent_on_both_ways() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 256);
    for _ in 0..16 {
        net.post_rx(&[2048]);
    }
    let (h, host) = start(&mem, &net);

    // Guest → server: three fragments, the last two first.
    let out = fragments(GUEST_IP, 41000, SERVER, 9000, 3000, 1200);
    assert_eq!(out.len(), 3);
    for i in [2, 1, 0] {
        net.send_frame(HDR, &eth(&out[i]), &[]);
        h.kick(1).unwrap();
        if i != 0 {
            wait_for("the frame taken", || {
                h.stats().bridge.tx_frames == (3 - i) as u64
            });
        }
    }
    let mut got = Vec::new();
    wait_for("three fragments on the host link", || {
        while let Some(p) = host.recv() {
            got.push(p);
        }
        got.len() == 3
    });
    let (src, dst, dgram) = reassemble(&got);
    assert_eq!((src, dst), (EXTERNAL, SERVER));
    assert!(
        udp_valid(src, dst, &dgram),
        "the UDP checksum covers the translated port"
    );
    let mapped = UdpPacket::new_checked(&dgram[..]).unwrap().src_port();

    // Server → guest: the reply's fragments, first fragment last.
    let back = fragments(SERVER, 9000, EXTERNAL, mapped, 2500, 1000);
    for p in back.iter().rev() {
        assert!(host.send(p));
    }
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    wait_for("the reply's fragments in the guest", || {
        while let Some((_, f)) = net.rx_frame(HDR, &mut pending) {
            frames.push(
                EthernetFrame::new_checked(&f[..])
                    .unwrap()
                    .payload()
                    .to_vec(),
            );
        }
        frames.len() == back.len()
    });
    let (src, dst, dgram) = reassemble(&frames);
    assert_eq!((src, dst), (SERVER, GUEST_IP));
    assert_eq!(
        UdpPacket::new_checked(&dgram[..]).unwrap().dst_port(),
        41000
    );
    assert!(udp_valid(src, dst, &dgram));
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.total_drops(), 0, "{:?}", s.bridge);
    assert_eq!(s.nat.fragments_released, 4);
}
