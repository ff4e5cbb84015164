//! The runner's safety net for a lost RX kick: while frames wait for guest RX buffers, the
//! RX thread re-checks the ring on a bounded timer, so buffers the driver adds without
//! notifying are found within about `STARVED_RECHECK_MS` (100 ms), not at the next NAT
//! deadline (up to a minute) or never.
#![cfg(target_os = "linux")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::testing::{
    EXTERNAL, GUEST_IP, GUEST_MAC, MockNet, SERVER, activate, guest_memory, udp_frame,
};
use bridge::{BridgeConfig, MemoryLink, OFFERED_FEATURES, VIRTIO_NET_HDR_LEN, testing::udp_packet};

const HDR: usize = VIRTIO_NET_HDR_LEN;

#[test]
fn buffers_added_without_a_kick_are_found_by_the_recheck_timer() {
    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 64);
    let (inside, host) = MemoryLink::pair(1024).unwrap();
    let config = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let h = activate(&mem, &net, config, OFFERED_FEATURES, inside).unwrap();
    // Open a mapping: guest → server.
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 5000, SERVER, 9, b"hi"),
        &[],
    );
    h.kick(1).unwrap();
    let out = wait("the outbound packet", || host.recv());
    let p = etherparse::SlicedPacket::from_ip(&out).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not udp")
    };
    let port = u.source_port();
    // Replies while the guest has no RX buffer: the RX thread starves and arms.
    for i in 0..5u8 {
        assert!(host.send(&udp_packet(SERVER, 9, EXTERNAL, port, &[i])));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.stats().bridge.rx_frames, 0);
    // Buffers arrive, but the kick is lost (never sent).
    for _ in 0..5 {
        net.post_rx(&[2048]);
    }
    let start = Instant::now();
    let mut pending = Vec::new();
    for i in 0..5u8 {
        let (_, f) = wait("a frame without a kick", || net.rx_frame(HDR, &mut pending));
        assert_eq!(f.last(), Some(&i), "in order");
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "found after {took:?}: the re-check timer is 100 ms"
    );
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.rx_frames, 5);
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}
