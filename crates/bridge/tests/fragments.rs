//! IPv4 fragments through the threaded runner, in order and out of order (a later fragment
//! before the first): the NAT holds early fragments and the bridge sends them on once the
//! first fragment has been translated (RFC 4787 REQ-14).
#![cfg(target_os = "linux")]

use core::net::Ipv4Addr;
use std::sync::Arc;

use bridge::testing::{
    EXTERNAL, GATEWAY_MAC, GUEST_IP, GUEST_MAC, MockNet, SERVER, activate, guest_memory, wait_for,
};
use bridge::{
    BridgeConfig, BridgeHandle, MemoryLink, OFFERED_FEATURES, VIRTIO_NET_HDR_LEN, checksum,
};
use vm_memory::GuestMemoryMmap;

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
    let mut udp = vec![0u8; 8 + len];
    udp[0..2].copy_from_slice(&sp.to_be_bytes());
    udp[2..4].copy_from_slice(&dp.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + len) as u16).to_be_bytes());
    for (i, b) in udp[8..].iter_mut().enumerate() {
        *b = (i * 13 + 1) as u8;
    }
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&((8 + len) as u16).to_be_bytes());
    let sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let c = checksum(&udp, sum);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    udp.chunks(frag)
        .enumerate()
        .map(|(k, piece)| {
            let last = (k + 1) * frag >= udp.len();
            let mut p = vec![0u8; 20];
            p[0] = 0x45;
            p[2..4].copy_from_slice(&((20 + piece.len()) as u16).to_be_bytes());
            p[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
            let off = (k * frag / 8) as u16 | if last { 0 } else { 0x2000 };
            p[6..8].copy_from_slice(&off.to_be_bytes());
            p[8] = 64;
            p[9] = 17;
            p[12..16].copy_from_slice(&src.octets());
            p[16..20].copy_from_slice(&dst.octets());
            let c = checksum(&p, 0);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            p.extend_from_slice(piece);
            p
        })
        .collect()
}

fn eth(ip: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GATEWAY_MAC.0);
    f.extend_from_slice(&GUEST_MAC.0);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(ip);
    f
}

/// Reassembles fragments (any order) into the UDP datagram; checks every IPv4 header.
fn reassemble(frags: &[Vec<u8>]) -> (Ipv4Addr, Ipv4Addr, Vec<u8>) {
    let mut parts: Vec<(usize, &[u8])> = frags
        .iter()
        .map(|p| {
            assert_eq!(checksum(&p[..20], 0), 0, "IPv4 header checksum");
            let off = usize::from(u16::from_be_bytes([p[6], p[7]]) & 0x1fff) * 8;
            (off, &p[20..])
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    let mut udp = Vec::new();
    for (off, data) in parts {
        assert_eq!(off, udp.len(), "contiguous fragments");
        udp.extend_from_slice(data);
    }
    let p = &frags[0];
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    (src, dst, udp)
}

fn udp_valid(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> bool {
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp.len() as u16).to_be_bytes());
    let sum: u32 = pseudo
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    checksum(udp, sum) == 0
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
    let (src, dst, udp) = reassemble(&got);
    assert_eq!((src, dst), (EXTERNAL, SERVER));
    assert!(
        udp_valid(src, dst, &udp),
        "the UDP checksum covers the translated port"
    );
    let mapped = u16::from_be_bytes([udp[0], udp[1]]);

    // Server → guest: the reply's fragments, first fragment last.
    let back = fragments(SERVER, 9000, EXTERNAL, mapped, 2500, 1000);
    for p in back.iter().rev() {
        assert!(host.send(p));
    }
    let mut pending = Vec::new();
    let mut frames = Vec::new();
    wait_for("the reply's fragments in the guest", || {
        while let Some((_, f)) = net.rx_frame(HDR, &mut pending) {
            frames.push(f[14..].to_vec());
        }
        frames.len() == back.len()
    });
    let (src, dst, udp) = reassemble(&frames);
    assert_eq!((src, dst), (SERVER, GUEST_IP));
    assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 41000);
    assert!(udp_valid(src, dst, &udp));
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.total_drops(), 0, "{:?}", s.bridge);
    assert_eq!(s.nat.fragments_released, 4);
}
