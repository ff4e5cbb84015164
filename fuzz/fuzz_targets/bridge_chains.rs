//! Hostile descriptor chains: arbitrary descriptor tables, available rings and buffer
//! contents for both queues, then the bridge's TX engine (TX path, gateway services, NAT,
//! host link) and RX engine (host link, NAT, RX path) run on them, with or without checksum
//! and TSO offloads (TSO4 and TSO6: then every chain's virtio-net header and every host
//! packet's header is fuzzed too, `gso_type` TCPV4 and TCPV6 included). Never a panic, never a hang; every chain taken is accounted for.
//!
//! Input: `[flags, tx_table[16 × 16], tx_avail_idx[2], tx_ring[16 × 2], rx_table[16 × 16],
//! rx_avail_idx[2], rx_ring[16 × 2], data...]`. Descriptor addresses are folded into twice the
//! guest memory size, so about half point outside it. `data` fills guest memory from 0x8000
//! and is also cut into packets the host link delivers (a 12-byte virtio-net header first
//! when offloads are on). Flags: 1 EVENT_IDX, 2 MRG_RXBUF, 4 legacy 10-byte header,
//! 8 offloads.
#![no_main]

use std::net::Ipv4Addr;
use std::time::Duration;

use bridge::{
    DropCause, FrameBatch, Gateway, GatewayConfig, GuestState, HostLink, MacAddr, MemoryLink,
    OFFERED_FEATURES, OFFLOAD_FEATURES, Offloads, RxEngine, RxQueue, Stats, TxEngine, TxQueue,
};
use libfuzzer_sys::fuzz_target;
use nat::{Nat, NatConfig};

#[path = "common/rings.rs"]
mod rings;
use rings::{RX_AVAIL, RX_DESC, RX_USED, TX_AVAIL, TX_DESC, TX_USED, hostile_memory, queue};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((mem, data)) = hostile_memory(rest, &[(TX_DESC, TX_AVAIL), (RX_DESC, RX_AVAIL)])
    else {
        return;
    };

    let event_idx = flags & 1 != 0;
    let mrg = flags & 2 != 0;
    let hdr_len = if flags & 4 != 0 { 10 } else { 12 };
    let (Some(mut txq), Some(mut rxq)) = (
        queue(TX_DESC, TX_AVAIL, TX_USED, event_idx),
        queue(RX_DESC, RX_AVAIL, RX_USED, event_idx),
    ) else {
        return;
    };

    let offloads = flags & 8 != 0 && hdr_len == 12;
    let features = if offloads {
        OFFERED_FEATURES | OFFLOAD_FEATURES
    } else {
        OFFERED_FEATURES
    };
    let Ok((inside, outside)) = (if offloads {
        MemoryLink::pair_with_vnet_hdr(64)
    } else {
        MemoryLink::pair(64)
    }) else {
        return;
    };
    let Ok(o) = Offloads::negotiate(features, inside.vnet_hdr_len()) else {
        return;
    };
    let max = o.max_tx_frame(1500);
    let Ok(mut nat) = Nat::new(NatConfig {
        internal_net: Ipv4Addr::new(192, 168, 64, 0),
        internal_prefix_len: 24,
        ..NatConfig::default()
    }) else {
        return;
    };
    let mut stats = Stats::default();
    let mut tx = TxEngine::new(TxQueue::new(hdr_len, max), 8, max).with_offloads(o, 1500);
    let mut guest = GuestState::new(gateway());
    let mut replies = FrameBatch::new(8, max.max(2048));
    for round in 0..4u64 {
        let now = nat::Instant::from_secs(round);
        replies.clear();
        match tx.pull(&mem, &mut txq, &mut replies, &mut guest, now, &mut stats) {
            Ok(out) => {
                assert!(out.chains <= 8);
                tx.translate(&mut nat, &mut replies, &mut guest, now, &mut stats);
                let _ = tx.push(&inside, &mut stats);
            }
            Err(_) => break, // needs reset
        }
    }
    while outside.recv().is_some() {}

    let mut rx = RxEngine::new(
        RxQueue::new(hdr_len, mrg),
        8,
        65535,
        1500,
        MacAddr([2, 0, 0, 0, 0, 1]),
    )
    .with_offloads(o);
    for chunk in data.chunks(97).take(8) {
        let _ = outside.send(chunk);
    }
    for round in 0..4u64 {
        let now = nat::Instant::from_secs(round);
        if rx.receive(&inside, &mut stats).is_err() {
            break;
        }
        rx.translate(&mut nat, now, MacAddr([2, 0, 0, 0, 0, 2]), &mut stats);
        match rx.deliver(&mem, &mut rxq, &mut stats) {
            Ok(out) if out.starved => {
                let _ = rx.rx_queue().arm(&mem, &mut rxq);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    // Frames straight into the RX path (whatever the NAT made of the packets above), with
    // headers from the input: hostile RX chains get exercised whatever the NAT dropped.
    let mut frames = FrameBatch::new(8, 1514);
    for chunk in data.chunks(97).take(8) {
        let hdr = bridge::VirtioNetHdr::parse(chunk).unwrap_or_default();
        let _ = frames.push_with_header(chunk, hdr);
    }
    for _ in 0..4 {
        match rx.rx_queue().fill(&mem, &mut rxq, &mut frames, &mut stats) {
            Ok(out) if out.starved => {
                let _ = rx.rx_queue().arm(&mem, &mut rxq);
                break;
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(stats.drops_of(DropCause::ChainInvalid) <= 8 * 16 * 2 + 64);
});

fn gateway() -> Gateway {
    let cfg = GatewayConfig {
        gateway: Ipv4Addr::new(192, 168, 64, 1),
        gateway_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        prefix_len: 24,
        guest_mac: MacAddr([2, 0, 0, 0, 0, 2]),
        dhcp_pool: Ipv4Addr::new(192, 168, 64, 2)..=Ipv4Addr::new(192, 168, 64, 254),
        lease: Duration::from_secs(3600),
        mtu: 1500,
        dns: true,
        dns4_relay: false,
        dns6: bridge::Dns6::Nat,
        static_guest_ip: None,
        ipv6: Some(bridge::Ipv6Config::default()),
    };
    match Gateway::new(cfg) {
        Ok(l) => l,
        Err(e) => panic!("static config: {e}"),
    }
}
