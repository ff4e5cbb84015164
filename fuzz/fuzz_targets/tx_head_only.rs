//! Head-only TX against the copy. Large frames built from the input (IPv4 or IPv6; TCP or
//! UDP; to a server, another guest, the gateway, the NAT's external address, a group or
//! elsewhere; a fragment or not; a declared length shorter than the frame; a segmentation
//! request, a checksum request in TCP's place or elsewhere, or none; another destination MAC)
//! in TX chains the input cuts into pieces (some write-only, some outside guest memory) go
//! through two device cores with offloads at MTU 9000: one whose host link gathers from guest
//! memory, one whose link does not. Never a panic; both links get the same packets, byte for
//! byte but the translated source port and the transport checksum (each NAT draws its own
//! ports); the counters agree but `tx_gathered`; every chain goes back to the used ring once.
//!
//! Input: up to 8 records `[flags, dst, len_hi, len_lo, pieces, (len_hi, len_lo, how) ×
//! pieces]`. Flags: 1 IPv6, 2 UDP, 4 a fragment, 8 a declared length shorter than the frame
//! (by `dst >> 4` × 16), 16 a segmentation request, 32 a checksum request (at the offset
//! `len_lo` gives unless 64), 128 another destination MAC. A piece's `how`: 1 write-only,
//! 2 outside guest memory.
#![no_main]

use core::net::{Ipv4Addr, Ipv6Addr};

use bridge::{
    BridgeConfig, DeviceCore, MacAddr, MemoryLink, OFFERED_FEATURES, OFFLOAD_FEATURES,
    Stats, VirtioNetHdr,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const TX_DESC: u64 = 0x0;
const TX_AVAIL: u64 = 0x1000;
const TX_USED: u64 = 0x2000;
const DATA: u64 = 0x1_0000;
const MEM: usize = 0x10_0000;
const HDR: usize = 12;
const MTU: u16 = 9000;
const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
const GUEST6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const NOW: nat::Instant = nat::Instant::from_secs(1);

fuzz_target!(|input: &[u8]| {
    let chains = chains(input);
    if chains.is_empty() {
        return;
    }
    let (a, mut sa) = run(&chains, true);
    let (b, sb) = run(&chains, false);
    assert_eq!(sb.tx_gathered, 0, "a link that does not gather took a gathered packet");
    sa.tx_gathered = 0;
    assert_eq!(sa, sb, "the counters differ");
    assert_eq!(a.len(), b.len(), "packet counts differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len(), "packet {i}: lengths differ");
        let mask = masked(x);
        for (k, (p, q)) in x.iter().zip(y).enumerate() {
            assert!(p == q || mask.contains(&k), "packet {i} differs at byte {k}");
        }
    }
});

/// One chain: its bytes (virtio-net header and frame) and its pieces (length, how).
struct Chain {
    bytes: Vec<u8>,
    pieces: Vec<(usize, u8)>,
}

/// The chains the input describes.
fn chains(mut input: &[u8]) -> Vec<Chain> {
    let mut out = Vec::new();
    while out.len() < 8 {
        let [flags, dst, hi, lo, n, rest @ ..] = input else {
            break;
        };
        let n = usize::from(*n % 48);
        let (pieces, rest) = rest.split_at((3 * n).min(rest.len()));
        input = rest;
        let pieces = pieces
            .chunks_exact(3)
            .map(|p| (usize::from(u16::from_be_bytes([p[0], p[1]])), p[2]))
            .collect();
        let payload = usize::from(u16::from_be_bytes([*hi, *lo])) % 64_000;
        out.push(Chain {
            bytes: frame(*flags, *dst, payload, *lo),
            pieces,
        });
    }
    out
}

/// A virtio-net header and frame as the flags say (see the module documentation).
fn frame(flags: u8, dst: u8, payload: usize, odd: u8) -> Vec<u8> {
    let v6 = flags & 1 != 0;
    let proto = if flags & 2 != 0 { 17 } else { 6 };
    let l4 = if proto == 6 { 20 } else { 8 };
    let l3 = if v6 { 40 } else { 20 };
    let gso = flags & 16 != 0 && proto == 6;
    let payload = if gso { payload } else { payload.min(usize::from(MTU) - l3 - l4) };
    let mut f = vec![0u8; 14 + l3 + l4 + payload];
    let mac = if flags & 128 != 0 {
        [2, 0, 0, 0, 0, 9]
    } else {
        bridge::defaults::GATEWAY_MAC.0
    };
    f[..6].copy_from_slice(&mac);
    f[6..12].copy_from_slice(&GUEST_MAC.0);
    let short = if flags & 8 != 0 { usize::from(dst >> 4) * 16 } else { 0 };
    if v6 {
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        let to: Ipv6Addr = match dst % 6 {
            0 => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
            1 => Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 7),
            2 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
            3 => Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2),
            4 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
            _ => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3),
        };
        let ip = &mut f[14..54];
        ip[0] = 0x60;
        let len = (l4 + payload).saturating_sub(short).min(0xffff) as u16;
        ip[4..6].copy_from_slice(&len.to_be_bytes());
        ip[6] = if flags & 4 != 0 { 44 } else { proto };
        ip[7] = 64;
        ip[8..24].copy_from_slice(&GUEST6.octets());
        ip[24..40].copy_from_slice(&to.octets());
    } else {
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let to = match dst % 6 {
            0 => Ipv4Addr::new(198, 18, 0, 2),
            1 => Ipv4Addr::new(192, 168, 64, 3),
            2 => Ipv4Addr::new(192, 168, 64, 1),
            3 => Ipv4Addr::new(100, 64, 0, 2),
            4 => Ipv4Addr::new(224, 0, 0, 5),
            _ => Ipv4Addr::new(198, 18, 0, 3),
        };
        let ip = &mut f[14..34];
        ip[0] = 0x45;
        let len = (l3 + l4 + payload).saturating_sub(short).clamp(l3, 0xffff) as u16;
        ip[2..4].copy_from_slice(&len.to_be_bytes());
        ip[6] = if flags & 4 != 0 { 0x20 } else { 0x40 };
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&GUEST.octets());
        ip[16..20].copy_from_slice(&to.octets());
        let sum = wire::checksum::checksum(ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    let t = 14 + l3;
    f[t..t + 2].copy_from_slice(&40000u16.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&80u16.to_be_bytes());
    if proto == 6 {
        f[t + 12] = 5 << 4;
        f[t + 13] = 0x10;
    } else {
        let len = (l4 + payload).min(0xffff) as u16;
        f[t + 4..t + 6].copy_from_slice(&len.to_be_bytes());
    }
    for (i, b) in f[t + l4..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let csum_offset = if proto == 6 { 16 } else { 6 };
    let hdr = if gso {
        VirtioNetHdr {
            flags: 1,
            gso_type: if v6 { 4 } else { 1 },
            hdr_len: t as u16 + 20,
            gso_size: 1448,
            csum_start: t as u16,
            csum_offset,
            num_buffers: 0,
        }
    } else if flags & 32 != 0 {
        VirtioNetHdr {
            flags: 1,
            csum_start: if flags & 64 != 0 { t as u16 } else { u16::from(odd) },
            csum_offset,
            ..VirtioNetHdr::default()
        }
    } else {
        VirtioNetHdr::default()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&f);
    bytes
}

/// Runs `chains` through a device core whose link gathers or not; the packets its link got
/// and its counters. Checks every chain went back.
fn run(chains: &[Chain], gather: bool) -> (Vec<Vec<u8>>, Stats) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let mut txq = Queue::new(QSIZE).expect("queue");
    txq.set_size(QSIZE);
    txq.try_set_desc_table_address(GuestAddress(TX_DESC))
        .expect("table");
    txq.try_set_avail_ring_address(GuestAddress(TX_AVAIL))
        .expect("avail");
    txq.try_set_used_ring_address(GuestAddress(TX_USED))
        .expect("used");
    txq.set_ready(true);
    let (host, peer) = MemoryLink::pair_with_vnet_hdr(64).expect("link");
    let host = host.with_gather(gather);
    let mut dp = DeviceCore::new(BridgeConfig {
        mtu: MTU,
        offloads: true,
        static_guest_ip: Some(GUEST),
        ..BridgeConfig::default()
    })
    .expect("core");
    dp.ack_features(OFFERED_FEATURES | OFFLOAD_FEATURES, &host);
    let mut desc = 0u16;
    let mut at = DATA;
    let mut posted = 0;
    for (i, c) in chains.iter().enumerate() {
        let mut pieces = vec![(HDR, 0u8)];
        pieces.extend(c.pieces.iter().copied());
        if usize::from(desc) + pieces.len() > usize::from(QSIZE)
            || at as usize + c.bytes.len() > MEM
        {
            break;
        }
        let _ = mem.write_slice(&c.bytes, GuestAddress(at));
        let head = desc;
        let mut off = 0;
        for (k, &(len, how)) in pieces.iter().enumerate() {
            let last = k + 1 == pieces.len();
            let len = if last { c.bytes.len() - off } else { len.min(c.bytes.len() - off) };
            let addr = if how & 2 != 0 { 1 << 40 } else { at + off as u64 };
            let flags = if last { 0 } else { 1 } | if how & 1 != 0 { 2 } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            d[12..14].copy_from_slice(&(flags as u16).to_le_bytes());
            d[14..16].copy_from_slice(&(desc + 1).to_le_bytes());
            let _ = mem.write_slice(&d, GuestAddress(TX_DESC + 16 * u64::from(desc)));
            desc += 1;
            off += len;
            if last {
                break;
            }
        }
        let _ = mem.write_slice(
            &head.to_le_bytes(),
            GuestAddress(TX_AVAIL + 4 + 2 * i as u64),
        );
        at += (c.bytes.len() as u64 + 4095) & !4095;
        posted += 1;
    }
    let _ = mem.write_slice(&(posted as u16).to_le_bytes(), GuestAddress(TX_AVAIL + 2));
    for _ in 0..8 {
        match dp.on_tx_kick(&mem, &mut txq, None::<&mut Queue>, &host, NOW) {
            Ok(n) if n.tx_more => continue,
            _ => break,
        }
    }
    let used: u16 = mem.read_obj(GuestAddress(TX_USED + 2)).unwrap_or(0);
    assert_eq!(usize::from(used), posted, "a TX chain was not returned");
    let mut got = Vec::new();
    while let Some(p) = peer.recv() {
        got.push(p);
    }
    (got, dp.stats().clone())
}

/// The bytes of a packet from the link that each NAT makes its own: the transport source
/// port and checksum.
fn masked(p: &[u8]) -> Vec<usize> {
    let Some(&v) = p.get(HDR) else {
        return Vec::new();
    };
    let (l3, proto) = match v >> 4 {
        4 => (usize::from(v & 15) * 4, p.get(HDR + 9).copied()),
        6 => (40, p.get(HDR + 6).copied()),
        _ => return Vec::new(),
    };
    let t = HDR + l3;
    let sum = if proto == Some(17) { t + 6 } else { t + 16 };
    vec![t, t + 1, sum, sum + 1]
}
