//! Scattered RX against the copy. Packets from the host link built from the input (IPv4 or
//! IPv6; TCP or UDP; to a forwarded port or not, so that the NAT refuses some; a super-packet
//! or not; a checksum request in TCP's place or none; an IPv4 fragment or not; up to 64 KiB,
//! plain ones up to 16 000 B) go to a guest whose RX chains the input lays out (buffer sizes, two descriptors or one,
//! some device-readable, some outside guest memory; MRG_RXBUF or not) through two device
//! cores with offloads at MTU 9000: one whose host link reads into guest memory, one whose
//! link does not. Never a panic; the guest gets the same used entries (chain, length) in the
//! same order, and the same bytes in each; the host link gets the same answers (to plain
//! packets over the MTU); the counters agree but `rx_scattered`.
//!
//! Input: `[config, count, (flags, len_hi, len_lo) × count, chain × …]`. Config: 1 no
//! MRG_RXBUF. Flags: 1 IPv6, 2 UDP, 4 to a port nobody forwards, 8 a super-packet, 16 a
//! checksum request, 32 an IPv4 fragment. A chain byte: its buffer size (`& 7` picks 64,
//! 1 526, 4 096, 4 096, 8 192, 16 384, 65 562 or 300), 8 two descriptors, 16 one of them
//! device-readable, 32 one outside guest memory; the ring is filled up with 4 KiB chains.
#![no_main]

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};

use bridge::{
    BridgeConfig, DeviceCore, MemoryLink, OFFERED_FEATURES, OFFLOAD_FEATURES, Stats,
    VirtioNetHdr,
};
use libfuzzer_sys::fuzz_target;
use nat::{PortForward, Protocol};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const QSIZE: u16 = 256;
const RX_DESC: u64 = 0x0;
const RX_AVAIL: u64 = 0x1000;
const RX_USED: u64 = 0x2000;
const DATA: u64 = 0x1_0000;
const MEM: usize = 0x100_0000;
const MTU: u16 = 9000;
const GUEST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const EXTERNAL6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2);
const NOW: nat::Instant = nat::Instant::from_secs(1);
const MRG_RXBUF: u64 = 1 << 15;
const SIZES: [u32; 8] = [64, 1526, 4096, 4096, 8192, 16384, 65562, 300];

fuzz_target!(|input: &[u8]| {
    let [config, count, rest @ ..] = input else {
        return;
    };
    let n = usize::from(*count % 12) + 1;
    let (records, chains) = rest.split_at((3 * n).min(rest.len()));
    let packets: Vec<Vec<u8>> = records
        .chunks_exact(3)
        .map(|r| packet(r[0], usize::from(u16::from_be_bytes([r[1], r[2]]))))
        .collect();
    if packets.is_empty() {
        return;
    }
    let mrg = config & 1 == 0;
    let (a, ha, mut sa) = run(&packets, chains, mrg, true);
    let (b, hb, sb) = run(&packets, chains, mrg, false);
    assert!(ha == hb, "the host link got different packets (answers)");
    assert_eq!(sb.rx_scattered, 0, "a link that does not scatter scattered");
    sa.rx_scattered = 0;
    assert_eq!(sa, sb, "the counters differ");
    assert_eq!(a.len(), b.len(), "used entry counts differ");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!((x.0, x.1), (y.0, y.1), "used entry {i}: chain or length differ");
        assert!(x.2 == y.2, "used entry {i}: the bytes differ");
    }
});

/// A virtio-net header and IP packet from the host as the flags say.
fn packet(flags: u8, len: usize) -> Vec<u8> {
    let v6 = flags & 1 != 0;
    let udp = flags & 2 != 0;
    let port: u16 = if flags & 4 != 0 { 9999 } else { 8080 };
    let gso = flags & 8 != 0 && !udp;
    let l3 = if v6 { 40 } else { 20 };
    let l4 = if udp { 8 } else { 20 };
    // Plain ones beyond the MTU too: answered with Packet Too Big / fragmentation needed.
    let max = if gso { 65_535 - l3 } else { 16_000 };
    let payload = (len % 65_536).min(max - l4);
    let mut p = vec![0u8; l3 + l4 + payload];
    let proto = if udp { 17 } else { 6 };
    if v6 {
        p[0] = 0x60;
        p[4..6].copy_from_slice(&((l4 + payload) as u16).to_be_bytes());
        p[6] = proto;
        p[7] = 64;
        p[8..24].copy_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).octets());
        p[24..40].copy_from_slice(&EXTERNAL6.octets());
    } else {
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((l3 + l4 + payload) as u16).to_be_bytes());
        p[6] = if flags & 32 != 0 { 0x20 } else { 0x40 };
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&Ipv4Addr::new(198, 18, 0, 2).octets());
        p[16..20].copy_from_slice(&EXTERNAL.octets());
        let sum = wire::checksum::checksum(&p[..20]);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    p[l3..l3 + 2].copy_from_slice(&40000u16.to_be_bytes());
    p[l3 + 2..l3 + 4].copy_from_slice(&port.to_be_bytes());
    if udp {
        p[l3 + 4..l3 + 6].copy_from_slice(&((l4 + payload) as u16).to_be_bytes());
    } else {
        p[l3 + 12] = 5 << 4;
        p[l3 + 13] = 0x10;
    }
    for (i, b) in p[l3 + l4..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let hdr = if gso {
        VirtioNetHdr {
            flags: 1,
            gso_type: if v6 { 4 } else { 1 },
            hdr_len: (l3 + l4) as u16,
            gso_size: 1448,
            csum_start: l3 as u16,
            csum_offset: 16,
            num_buffers: 0,
        }
    } else if flags & 16 != 0 {
        VirtioNetHdr {
            flags: 1,
            csum_start: l3 as u16,
            csum_offset: if udp { 6 } else { 16 },
            ..VirtioNetHdr::default()
        }
    } else {
        VirtioNetHdr::default()
    };
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&p);
    bytes
}

/// The used entries the guest got (chain, length, the bytes written), what the host link
/// got back and the core's counters, for `packets` from a link that scatters or not into RX
/// chains laid out by `chains`.
fn run(packets: &[Vec<u8>], chains: &[u8], mrg: bool, scatter: bool) -> Outcome {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).expect("memory");
    let mut rxq = Queue::new(QSIZE).expect("queue");
    rxq.set_size(QSIZE);
    rxq.try_set_desc_table_address(GuestAddress(RX_DESC))
        .expect("table");
    rxq.try_set_avail_ring_address(GuestAddress(RX_AVAIL))
        .expect("avail");
    rxq.try_set_used_ring_address(GuestAddress(RX_USED))
        .expect("used");
    rxq.set_ready(true);
    let (host, peer) = MemoryLink::pair_with_vnet_hdr(64).expect("link");
    let host = host.with_gather(scatter);
    let forward = |protocol| PortForward {
        protocol,
        external_port: 8080,
        internal: SocketAddrV4::new(GUEST, 80),
    };
    let mut dp = DeviceCore::new(BridgeConfig {
        mtu: MTU,
        offloads: true,
        static_guest_ip: Some(GUEST),
        forwards: vec![forward(Protocol::Tcp), forward(Protocol::Udp)],
        ..BridgeConfig::default()
    })
    .expect("core");
    let mut features = OFFERED_FEATURES | OFFLOAD_FEATURES;
    if !mrg {
        features &= !MRG_RXBUF;
    }
    dp.ack_features(features, &host);
    // The RX chains: as the input says, then 4 KiB ones, while room lasts.
    let mut desc = 0u16;
    let mut at = DATA;
    let mut posted = 0u16;
    let layout = chains.iter().copied().chain(core::iter::repeat(2));
    for c in layout.take(usize::from(QSIZE)) {
        let size = SIZES[usize::from(c & 7)];
        let two = c & 8 != 0 && size >= 2;
        let n = if two { 2 } else { 1 };
        if desc + n > QSIZE || at + u64::from(size) > MEM as u64 {
            break;
        }
        let head = desc;
        let halves = if two { [size / 2, size - size / 2] } else { [size, 0] };
        for k in 0..n {
            let len = halves[usize::from(k)];
            let addr = if c & 32 != 0 && k + 1 == n { 1 << 40 } else { at };
            let write = if c & 16 != 0 && k == 0 { 0 } else { 2 };
            let next = if k + 1 < n { 1 } else { 0 };
            let mut d = [0u8; 16];
            d[..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&len.to_le_bytes());
            d[12..14].copy_from_slice(&((write | next) as u16).to_le_bytes());
            d[14..16].copy_from_slice(&(desc + 1).to_le_bytes());
            let _ = mem.write_slice(&d, GuestAddress(RX_DESC + 16 * u64::from(desc)));
            desc += 1;
            at += u64::from(len);
        }
        let _ = mem.write_slice(
            &head.to_le_bytes(),
            GuestAddress(RX_AVAIL + 4 + 2 * u64::from(posted)),
        );
        posted += 1;
    }
    let _ = mem.write_slice(&posted.to_le_bytes(), GuestAddress(RX_AVAIL + 2));
    for p in packets {
        assert!(peer.send(p), "the link took the packet");
    }
    for _ in 0..8 {
        match dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW) {
            Ok(n) if n.rx_more => continue,
            _ => break,
        }
    }
    let used: u16 = mem.read_obj(GuestAddress(RX_USED + 2)).unwrap_or(0);
    let mut out = Vec::new();
    for i in 0..used.min(QSIZE) {
        let e = RX_USED + 4 + 8 * u64::from(i);
        let id: u32 = mem.read_obj(GuestAddress(e)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap_or(0);
        out.push((id as u16, len, chain_bytes(&mem, id as u16, len)));
    }
    let mut back = Vec::new();
    while let Some(p) = peer.recv() {
        back.push(p);
    }
    (out, back, dp.stats().clone())
}

/// Used entries (chain, length, bytes), packets back to the host, counters.
type Outcome = (Vec<(u16, u32, Vec<u8>)>, Vec<Vec<u8>>, Stats);

/// The first `len` bytes of RX chain `head` (as far as its descriptors reach into memory).
fn chain_bytes(mem: &GuestMemoryMmap<()>, head: u16, len: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut idx = head;
    let mut left = len as usize;
    for _ in 0..4 {
        let d = RX_DESC + 16 * u64::from(idx % QSIZE);
        let addr: u64 = mem.read_obj(GuestAddress(d)).unwrap_or(0);
        let dlen: u32 = mem.read_obj(GuestAddress(d + 8)).unwrap_or(0);
        let flags: u16 = mem.read_obj(GuestAddress(d + 12)).unwrap_or(0);
        let next: u16 = mem.read_obj(GuestAddress(d + 14)).unwrap_or(0);
        let n = (dlen as usize).min(left);
        let mut buf = vec![0u8; n];
        let _ = mem.read_slice(&mut buf, GuestAddress(addr));
        out.extend_from_slice(&buf);
        left -= n;
        if left == 0 || flags & 1 == 0 {
            break;
        }
        idx = next;
    }
    out
}
