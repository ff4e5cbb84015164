//! A [`bridge::Network`] of two guest ports on hostile frames: each record is a frame one of
//! the guests sends (raw bytes, or a template: an Ethernet header to the other guest's MAC,
//! the gateway's or broadcast, IPv4 or IPv6 from the sender's own address or the other's, to
//! the other's or elsewhere, ARP for the other guest, a Neighbor Solicitation for it), a
//! packet from the host link, a delivery to both guests, or the second guest leaving and
//! coming back. The first guest has a second queue pair (its own queues, served by a
//! `bridge::PairWorker` as an embedder's thread would; records send on it and turn it off and
//! on, as `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` 2 -> 1 -> 2 would). Both guests
//! lease their address first (DHCP); with the first record's top bit the network floods
//! broadcast and multicast between them. Never a panic; every TX chain is returned; no frame
//! for one guest's MAC is ever delivered to the other (on any of its pairs).
//!
//! Input: a sequence of `[kind, len_hi, len_lo, bytes[len]...]` records.
#![no_main]

use core::net::{Ipv4Addr, Ipv6Addr};

use core::cell::RefCell;

use bridge::{
    BridgeConfig, HostLink, MacAddr, MemoryLink, Network, NetworkLock, OFFERED_FEATURES,
    PairWorker, PortId,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[path = "common/rings.rs"]
mod rings;
use rings::{QSIZE, RX_AVAIL, RX_DESC, RX_USED, TX_AVAIL, TX_DESC, TX_USED};

const MEM: usize = 0x10_0000;
const TX_DATA: u64 = 0x1_0000;
const RX_DATA: u64 = 0x8_0000;
const SLOT: u64 = 0x4000;
const RX_BUF: u32 = 0x4000;
const HDR: usize = 12;
const MACS: [MacAddr; 2] = [
    MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
    MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]),
];
const GATEWAY_MAC: MacAddr = bridge::defaults::GATEWAY_MAC;
const NOW: nat::Instant = nat::Instant::ZERO;

/// One guest's side of one queue pair's two queues.
struct Guest {
    port: PortId,
    pair: usize,
    mem: GuestMemoryMmap,
    txq: Queue,
    rxq: Queue,
    tx_next: u16,
    rx_next: u16,
    rx_seen: u16,
    tx_posted: u64,
    /// Served through a pair worker (the network reached through [`Borrowed`]).
    worker: Option<PairWorker>,
}

/// The network as a pair worker reaches it here: one thread, so a `RefCell` is the lock.
struct Borrowed<'a>(RefCell<&'a mut Network>);

impl NetworkLock for Borrowed<'_> {
    fn with_network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }
}

fuzz_target!(|input: &[u8]| {
    let Ok((host, peer)) = MemoryLink::pair(64) else {
        return;
    };
    let Ok(mut net) = Network::new(BridgeConfig::default(), 2) else {
        return;
    };
    // The first record's top bit: broadcast and multicast go to the other guest too.
    net.set_guest_multicast(input.first().is_some_and(|k| k & 0x80 != 0));
    let mut guests = Vec::new();
    for mac in MACS {
        let Some(g) = attach(&mut net, mac, &host) else {
            return;
        };
        guests.push(g);
    }
    let addrs: Vec<Ipv4Addr> = guests
        .iter()
        .map(|g| net.address_of(g.port).unwrap_or(Ipv4Addr::UNSPECIFIED))
        .collect();
    for (i, g) in guests.iter_mut().enumerate() {
        send(&mut net, g, &dhcp_request(MACS[i], addrs[i]), &host);
        deliver(&mut net, g, i, &host);
    }
    // The first guest's second pair: lane 2, guest 0.
    let port0 = guests[0].port;
    if net.set_queue_pairs(port0, 2).is_err() {
        return;
    }
    let Some(g) = second_pair(&mut net, port0) else {
        return;
    };
    guests.push(g);
    let mut two_pairs = true;
    let mut rest = input;
    while let [kind, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo))
            .min(tail.len())
            .min(9000);
        let (bytes, next) = tail.split_at(len);
        rest = next;
        let who = usize::from(kind & 1);
        match kind >> 1 & 7 {
            0 => send(&mut net, &mut guests[who], bytes, &host),
            1 | 2 | 3 => {
                let f = template(*kind, who, bytes, &addrs);
                send(&mut net, &mut guests[who], &f, &host);
            }
            4 => {
                let _ = peer.send_batch(&[bytes]);
            }
            5 => {
                // The second guest leaves and comes back (a new device, the same MAC).
                net.detach(guests[1].port);
                let Some(g) = attach(&mut net, MACS[1], &host) else {
                    return;
                };
                guests[1] = g;
                send(
                    &mut net,
                    &mut guests[1],
                    &dhcp_request(MACS[1], addrs[1]),
                    &host,
                );
            }
            6 if two_pairs => {
                // The first guest on its second pair: raw bytes or a template.
                let f = if kind & 1 == 0 {
                    bytes.to_vec()
                } else {
                    let k = (bytes.first().copied().unwrap_or(0) % 3 + 1) << 1;
                    template(k, 0, bytes, &addrs)
                };
                send(&mut net, &mut guests[2], &f, &host);
            }
            7 => {
                two_pairs = !two_pairs;
                let n = if two_pairs { 2 } else { 1 };
                assert!(net.set_queue_pairs(port0, n).is_ok());
                assert_eq!(net.queue_pairs(port0), Some(n));
            }
            _ => {}
        }
        for (i, g) in guests.iter_mut().enumerate() {
            if i < 2 || two_pairs {
                deliver(&mut net, g, i % 2, &host);
            }
        }
        while peer.recv().is_some() {}
    }
    for g in &mut guests {
        let used = used_idx(&g.mem, TX_USED);
        assert_eq!(
            u64::from(used),
            g.tx_posted % 65536,
            "a TX chain was not returned"
        );
    }
});

fn attach(net: &mut Network, mac: MacAddr, host: &MemoryLink) -> Option<Guest> {
    let port = net.attach(mac).ok()?;
    net.ack_features(port, OFFERED_FEATURES, host);
    lane(net, port, 0)
}

/// The second queue pair of `port` (in use).
fn second_pair(net: &mut Network, port: PortId) -> Option<Guest> {
    let mut g = lane(net, port, 1)?;
    g.worker = Some(PairWorker::new(port, 1));
    Some(g)
}

/// Queue pair `pair` of `port` on a guest memory of its own, its RX ring filled.
fn lane(net: &mut Network, port: PortId, pair: usize) -> Option<Guest> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).ok()?;
    let mut txq = queue(TX_DESC, TX_AVAIL, TX_USED)?;
    let mut rxq = queue(RX_DESC, RX_AVAIL, RX_USED)?;
    net.prepare_queue(port, &mut txq, 1).ok()?;
    net.prepare_queue(port, &mut rxq, 0).ok()?;
    let mut g = Guest {
        port,
        pair,
        mem,
        txq,
        rxq,
        tx_next: 0,
        rx_next: 0,
        rx_seen: 0,
        tx_posted: 0,
        worker: None,
    };
    for _ in 0..QSIZE {
        post_rx(&mut g);
    }
    Some(g)
}

/// Posts `frame` (with a zero virtio-net header) on the TX queue and kicks.
fn send(net: &mut Network, g: &mut Guest, frame: &[u8], host: &MemoryLink) {
    let slot = u64::from(g.tx_next % QSIZE);
    let addr = TX_DATA + slot * SLOT;
    let mut bytes = vec![0u8; HDR];
    bytes.extend_from_slice(&frame[..frame.len().min(SLOT as usize - HDR)]);
    let _ = g.mem.write_slice(&bytes, GuestAddress(addr));
    write_desc(&g.mem, TX_DESC, slot, addr, bytes.len() as u32, 0);
    publish(&g.mem, TX_AVAIL, g.tx_next, slot as u16);
    g.tx_next = g.tx_next.wrapping_add(1);
    g.tx_posted += 1;
    for _ in 0..8 {
        let r = match g.worker.as_mut() {
            Some(w) => w.on_tx_kick(
                &Borrowed(RefCell::new(&mut *net)),
                &g.mem,
                &mut g.txq,
                Some(&mut g.rxq),
                host,
                NOW,
            ),
            None => net.on_pair_tx_kick(
                g.port,
                g.pair,
                &g.mem,
                &mut g.txq,
                Some(&mut g.rxq),
                host,
                NOW,
            ),
        };
        match r {
            Ok(n) if n.tx_more => continue,
            _ => break,
        }
    }
}

/// Delivers what waits for guest `me` and checks each frame's destination MAC.
fn deliver(net: &mut Network, g: &mut Guest, me: usize, host: &MemoryLink) {
    for _ in 0..8 {
        let r = match g.worker.as_mut() {
            Some(w) => w.on_rx_ready(
                &Borrowed(RefCell::new(&mut *net)),
                &g.mem,
                &mut g.rxq,
                host,
                true,
                NOW,
            ),
            None => net.on_pair_rx_ready(g.port, g.pair, &g.mem, &mut g.rxq, host, true, NOW),
        };
        let used = used_idx(&g.mem, RX_USED);
        while g.rx_seen != used {
            let at = RX_USED + 4 + 8 * u64::from(g.rx_seen % QSIZE);
            let mut e = [0u8; 8];
            let _ = g.mem.read_slice(&mut e, GuestAddress(at));
            let id = u64::from(u32::from_le_bytes([e[0], e[1], e[2], e[3]]));
            let mut dst = [0u8; 6];
            let _ = g
                .mem
                .read_slice(&mut dst, GuestAddress(RX_DATA + id * SLOT + HDR as u64));
            let dst = MacAddr(dst);
            assert!(
                dst != MACS[1 - me] || dst.is_multicast(),
                "guest {me} got a frame for the other guest's MAC"
            );
            g.rx_seen = g.rx_seen.wrapping_add(1);
            post_rx(g);
        }
        if !r.is_ok_and(|n| n.rx_more) {
            break;
        }
    }
}

/// A frame from guest `who` to the other one, the gateway or elsewhere (by `kind`).
fn template(kind: u8, who: usize, bytes: &[u8], addrs: &[Ipv4Addr]) -> Vec<u8> {
    let other = 1 - who;
    let b = |i: usize| bytes.get(i).copied().unwrap_or(0);
    let dst_mac = match b(0) % 3 {
        0 => MACS[other],
        1 => GATEWAY_MAC,
        _ => MacAddr([0xff; 6]),
    };
    let mut f = Vec::with_capacity(bytes.len() + 64);
    f.extend_from_slice(&dst_mac.0);
    f.extend_from_slice(&MACS[who].0);
    let src4 = if b(1) & 1 == 0 {
        addrs[who]
    } else {
        addrs[other]
    };
    let dst4 = if b(1) & 2 == 0 {
        addrs[other]
    } else {
        Ipv4Addr::new(198, 18, 0, 9)
    };
    let eui = |m: MacAddr| {
        let m = m.0;
        Ipv6Addr::new(
            0xfd64,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 2, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    };
    let (src6, dst6) = (
        eui(MACS[if b(1) & 1 == 0 { who } else { other }]),
        eui(MACS[other]),
    );
    let payload = bytes.get(2..).unwrap_or(&[]);
    match kind >> 1 & 7 {
        1 => {
            // IPv4 (UDP, ICMP or raw protocol from the input), checksum valid.
            f.extend_from_slice(&0x0800u16.to_be_bytes());
            let total = (20 + payload.len()).min(1500);
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            ip[8] = 64;
            ip[9] = [17, 1, 6][usize::from(b(1) >> 2) % 3];
            ip[12..16].copy_from_slice(&src4.octets());
            ip[16..20].copy_from_slice(&dst4.octets());
            let sum = wire::checksum::checksum(&ip);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&payload[..total - 20]);
        }
        2 => {
            // ARP request for the other guest's address (or one from the input).
            f.extend_from_slice(&0x0806u16.to_be_bytes());
            f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            f.extend_from_slice(&MACS[who].0);
            f.extend_from_slice(&src4.octets());
            f.extend_from_slice(&[0; 6]);
            let tpa = if b(1) & 4 == 0 {
                addrs[other].octets()
            } else {
                [b(2), b(3), b(4), b(5)]
            };
            f.extend_from_slice(&tpa);
        }
        _ => {
            // IPv6: ICMPv6 (a Neighbor Solicitation for the other guest when asked) or UDP.
            f.extend_from_slice(&0x86ddu16.to_be_bytes());
            let ns = b(1) & 4 != 0;
            let mut l4 = if ns {
                let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
                m.extend_from_slice(&dst6.octets());
                m
            } else {
                let mut m = vec![0x13, 0x88, 0x17, 0x70, 0, 0, 0, 0];
                m.extend_from_slice(payload);
                m.truncate(1400);
                let len = m.len() as u16;
                m[4..6].copy_from_slice(&len.to_be_bytes());
                m
            };
            let next = if ns { 58 } else { 17 };
            let to = if ns {
                Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0)
            } else {
                dst6
            };
            let sum = wire::checksum::pseudo_header_v6(src6, to, next, l4.len() as u32);
            let c = wire::checksum::finish(wire::checksum::sum(&l4, sum));
            let at = if ns { 2 } else { 6 };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&(l4.len() as u16).to_be_bytes());
            ip[6] = next;
            ip[7] = 255;
            ip[8..24].copy_from_slice(&src6.octets());
            ip[24..40].copy_from_slice(&to.octets());
            f.extend_from_slice(&ip);
            f.extend_from_slice(&l4);
        }
    }
    f
}

fn dhcp_request(mac: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    // BOOTREQUEST with the magic cookie, DHCPREQUEST for `ip` (INIT-REBOOT: no server id).
    let mut bootp = vec![0u8; 240];
    bootp[0] = 1;
    bootp[1] = 1;
    bootp[2] = 6;
    bootp[4..8].copy_from_slice(&7u32.to_be_bytes());
    bootp[28..34].copy_from_slice(&mac.0);
    bootp[236..240].copy_from_slice(&[99, 130, 83, 99]);
    bootp.extend_from_slice(&[53, 1, 3, 50, 4]);
    bootp.extend_from_slice(&ip.octets());
    bootp.push(255);
    let udp_len = 8 + bootp.len();
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac.0);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip_h = [0u8; 20];
    ip_h[0] = 0x45;
    ip_h[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip_h[8] = 64;
    ip_h[9] = 17;
    ip_h[16..20].copy_from_slice(&[255; 4]);
    let sum = wire::checksum::checksum(&ip_h);
    ip_h[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip_h);
    f.extend_from_slice(&68u16.to_be_bytes());
    f.extend_from_slice(&67u16.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&bootp);
    f
}

fn post_rx(g: &mut Guest) {
    let slot = u64::from(g.rx_next % QSIZE);
    write_desc(&g.mem, RX_DESC, slot, RX_DATA + slot * SLOT, RX_BUF, 2);
    publish(&g.mem, RX_AVAIL, g.rx_next, slot as u16);
    g.rx_next = g.rx_next.wrapping_add(1);
}

fn write_desc(mem: &GuestMemoryMmap, table: u64, i: u64, addr: u64, len: u32, flags: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    let _ = mem.write_slice(&d, GuestAddress(table + 16 * i));
}

/// Puts `head` at available-ring position `idx` and publishes `idx + 1`.
fn publish(mem: &GuestMemoryMmap, ring: u64, idx: u16, head: u16) {
    let at = ring + 4 + 2 * u64::from(idx % QSIZE);
    let _ = mem.write_slice(&head.to_le_bytes(), GuestAddress(at));
    let _ = mem.write_slice(&idx.wrapping_add(1).to_le_bytes(), GuestAddress(ring + 2));
}

fn used_idx(mem: &GuestMemoryMmap, ring: u64) -> u16 {
    let mut b = [0u8; 2];
    let _ = mem.read_slice(&mut b, GuestAddress(ring + 2));
    u16::from_le_bytes(b)
}

fn queue(desc: u64, avail: u64, used: u64) -> Option<Queue> {
    rings::queue(desc, avail, used, false)
}
