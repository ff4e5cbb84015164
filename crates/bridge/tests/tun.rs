//! The runner over a real TUN device (`impl HostLink for utun::Tun`), inside a network
//! namespace this test creates: the namespace's kernel answers the guest's ping and reports
//! a closed UDP port, through the NAT. Needs CAP_NET_ADMIN.
#![cfg(all(target_os = "linux", feature = "utun"))]

use core::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge::testing::{
    GUEST_IP, GUEST_MAC, MockNet, Used, activate, guest_memory, icmp_echo, udp_frame,
};
use bridge::{BridgeConfig, Error, OFFERED_FEATURES, VIRTIO_NET_HDR_LEN};

const HDR: usize = VIRTIO_NET_HDR_LEN;
const HOST: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const EXTERNAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

fn wait_frame(net: &mut MockNet<'_>, pending: &mut Vec<Used>) -> Vec<u8> {
    let start = Instant::now();
    loop {
        if let Some((_, f)) = net.rx_frame(HDR, pending) {
            return f;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no frame from the TUN side"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ping_and_port_unreachable_through_a_real_tun() {
    // `hostnet-bridge-<pid>-<n>`, deleted on drop (also when the test fails).
    let ns = netns::Netns::new("bridge").expect("creating a network namespace");
    let tun = utun::Tun::builder()
        .netns(ns.fd())
        .mtu(1500)
        .ipv4(HOST, utun::Ipv4Dest::Peer(EXTERNAL))
        .open()
        .expect("open the TUN inside the namespace");
    let tun_name = tun.name().to_owned();

    let mem = Arc::new(guest_memory());
    let mut net = MockNet::new(&mem, 64);
    for _ in 0..16 {
        net.post_rx(&[2048]);
    }
    let config = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let h = activate(&mem, &net, config, OFFERED_FEATURES, tun).unwrap();
    let mut pending = Vec::new();

    // Ping the namespace's end of the TUN.
    net.send_frame(
        HDR,
        &icmp_echo(GUEST_MAC, GUEST_IP, HOST, 0x4242, 1, b"hostnet!"),
        &[],
    );
    h.kick(1).unwrap();
    let f = wait_frame(&mut net, &mut pending);
    let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    assert_eq!(
        (ip.header().source_addr(), ip.header().destination_addr()),
        (HOST, GUEST_IP)
    );
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not icmp")
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 0x4242, seq: 1 }),
        "the guest's own echo id comes back"
    );
    assert_eq!(icmp.payload(), b"hostnet!");

    // A closed UDP port: the kernel's port-unreachable comes back translated.
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 40001, HOST, 9, b"x"),
        &[],
    );
    h.kick(1).unwrap();
    let f = wait_frame(&mut net, &mut pending);
    let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!("not icmp")
    };
    assert!(
        matches!(
            icmp.icmp_type(),
            etherparse::Icmpv4Type::DestinationUnreachable(_)
        ),
        "{:?}",
        icmp.icmp_type()
    );
    let s = h.stats();
    assert_eq!(s.bridge.to_host, 2);
    // The kernel may also send IPv6 (router solicitations) into the TUN: dropped by the NAT.
    assert!(s.bridge.from_host >= 2);

    // Deleting the interface surfaces as an error through the handle, without spinning.
    ns.ip(&["link", "del", &tun_name]).expect("ip link del");
    let start = Instant::now();
    while h.error().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no error after the TUN was deleted"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(matches!(*h.error().unwrap(), Error::HostLink(_)));
    assert!(matches!(h.shutdown(), Err(Error::Failed(_))));
}
