//! The threaded driver end to end: mock guest queues ↔ bridge threads ↔ in-memory host link.
//! Every test runs with the pipeline's two threads; those in `one_thread` run again with the
//! whole device on one thread ([`Threads::One`]).
#![cfg(target_os = "linux")]

use core::net::{Ipv4Addr, SocketAddrV4};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bridge::testing::{
    EXTERNAL, GATEWAY, GATEWAY_MAC, GUEST_IP, GUEST_MAC, MockNet, SERVER, arp_request, dhcp_frame,
    guest_memory, udp_frame, udp_packet, udp6_frame, wait_for,
};
use bridge::{
    Activation, Bridge, BridgeConfig, BridgeHandle, CONFIG_INTERRUPT, DropCause, Error, HostLink,
    MemoryLink, OFFERED_FEATURES, Threads, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use vm_memory::GuestMemoryMmap;
use wire::{EthernetFrame, Ipv4Packet, UdpPacket, ethertype};

const HDR: usize = VIRTIO_NET_HDR_LEN;

thread_local! {
    /// How many threads the rigs of this test activate (each test runs on its own thread).
    static THREADS: std::cell::Cell<Threads> = const { std::cell::Cell::new(Threads::Two) };
}

/// The same tests with the device on one thread.
mod one_thread {
    macro_rules! again {
        ($($name:ident),* $(,)?) => {$(
            #[test]
            fn $name() {
                super::THREADS.with(|t| t.set(bridge::Threads::One));
                super::$name();
            }
        )*};
    }
    again!(
        arp_dhcp_and_udp_round_trip_through_the_nat,
        ipv6_round_trips_through_nat66,
        spoofed_and_unsupported_frames_never_reach_the_host,
        host_packets_wait_for_rx_buffers_then_flow,
        port_forwards_are_added_and_removed_at_runtime,
        host_link_failure_surfaces_through_the_handle,
        a_broken_avail_index_flags_needs_reset,
        kicks_and_config_are_checked,
        dns_is_redirected_and_large_fragmented_answers_arrive_as_fragments,
        dhcp_with_a_hostile_hardware_length_is_dropped,
        gateway_replies_push_back_on_the_tx_queue_when_the_guest_reads_nothing,
        sustained_traffic_both_ways_loses_nothing,
        inline_kicks_send_on_the_calling_thread_in_order,
        a_tx_ring_beyond_the_budget_is_drained_after_one_kick,
    );
}

struct Rig {
    mem: Arc<GuestMemoryMmap>,
    irqs: Arc<[AtomicU32; 3]>,
}

impl Rig {
    fn new() -> Self {
        Rig {
            mem: Arc::new(guest_memory()),
            irqs: Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]),
        }
    }

    fn start(&self, net: &MockNet<'_>, config: BridgeConfig) -> (BridgeHandle, MemoryLink) {
        let (inside, outside) = MemoryLink::pair(1024).unwrap();
        (self.start_on(net, config, inside), outside)
    }

    /// As [`Rig::start`] on a host link of the test's own.
    fn start_on(
        &self,
        net: &MockNet<'_>,
        config: BridgeConfig,
        link: impl HostLink + 'static,
    ) -> BridgeHandle {
        let mut bridge = Bridge::new(config).unwrap();
        let acked = bridge.ack_features(OFFERED_FEATURES);
        let (rx, tx) = net.queues(true);
        let irqs = self.irqs.clone();
        let interrupt: bridge::Interrupt = Arc::new(move |q| {
            let i = if q == CONFIG_INTERRUPT {
                2
            } else {
                usize::from(q).min(1)
            };
            irqs[i].fetch_add(1, Ordering::SeqCst);
        });
        let act = Activation {
            mem: self.mem.clone(),
            rx,
            tx,
            acked_features: acked,
            interrupt,
        };
        let threads = THREADS.with(std::cell::Cell::get);
        bridge.activate_with(act, link, threads).unwrap()
    }
}

/// A host link whose sends wait while the test holds its gate shut.
struct GatedLink {
    inner: MemoryLink,
    /// (a send is waiting, the gate is open)
    gate: Arc<(Mutex<(bool, bool)>, Condvar)>,
}

impl HostLink for GatedLink {
    fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize> {
        let (state, cv) = &*self.gate;
        let mut g = state.lock().unwrap();
        g.0 = true;
        cv.notify_all();
        while !g.1 {
            g = cv.wait(g).unwrap();
        }
        drop(g);
        self.inner.send_batch(packets)
    }

    fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        self.inner.recv_batch(bufs, lens)
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        self.inner.readiness_fd()
    }

    fn prepare(&self) -> io::Result<()> {
        self.inner.prepare()
    }
}

/// Shutdown while a TX batch is on its way to the host: the gateway reply the same batch
/// made still goes to the RX side (the TX thread is stopped and joined first), so nothing is
/// counted as dropped. With both threads stopped at once, the RX thread was gone by then and
/// the reply counted as `LocalQueueFull` (1 shutdown in 400 in a loop; this test every time).
#[test]
fn a_shutdown_during_a_tx_batch_drops_none_of_its_replies() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    net.send_frame(HDR, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY), &[]);
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 40000, SERVER, 7, b"x"),
        &[],
    );
    let (inside, _outside) = MemoryLink::pair(1024).unwrap();
    let gate = Arc::new((Mutex::new((false, false)), Condvar::new()));
    let link = GatedLink {
        inner: inside,
        gate: gate.clone(),
    };
    let h = rig.start_on(&net, cfg, link);
    h.kick(1).unwrap();
    wait_for("the TX thread's send", || gate.0.lock().unwrap().0);
    let stopping = std::thread::spawn(move || h.shutdown());
    // Long enough for a thread that was told to stop to end.
    std::thread::sleep(Duration::from_millis(100));
    gate.0.lock().unwrap().1 = true;
    gate.1.notify_all();
    let s = stopping.join().unwrap().unwrap();
    assert_eq!(
        (s.bridge.tx_frames, s.bridge.local_replies, s.bridge.to_host),
        (2, 1, 1)
    );
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

fn recv_frame(
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

fn dhcp_lease(
    net: &mut MockNet<'_>,
    h: &BridgeHandle,
    pending: &mut Vec<bridge::testing::Used>,
) -> Ipv4Addr {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut d = Message::new_with_id(1, u, u, u, u, &GUEST_MAC.0);
    d.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    net.send_frame(HDR, &dhcp_frame(GUEST_MAC, &d), &[]);
    h.kick(1).unwrap();
    let (_, offer) = recv_frame(net, pending);
    let offer = udp_payload(&offer);
    let offer = <Message as dhcproto::Decodable>::from_bytes(&offer).unwrap();
    let ip = offer.yiaddr();
    let mut r = Message::new_with_id(1, u, u, u, u, &GUEST_MAC.0);
    r.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(GATEWAY));
    r.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    net.send_frame(HDR, &dhcp_frame(GUEST_MAC, &r), &[]);
    h.kick(1).unwrap();
    let (_, ack) = recv_frame(net, pending);
    let ack = <Message as dhcproto::Decodable>::from_bytes(&udp_payload(&ack)).unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    wait_for("the lease in the handle", || h.lease() == Some(ip));
    ip
}

fn udp_payload(frame: &[u8]) -> Vec<u8> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not udp")
    };
    u.payload().to_vec()
}

fn ipv4_src_dst_ports(pkt: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let p = etherparse::SlicedPacket::from_ip(pkt).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not udp")
    };
    (
        ip.header().source_addr(),
        u.source_port(),
        ip.header().destination_addr(),
        u.destination_port(),
    )
}

#[test]
fn arp_dhcp_and_udp_round_trip_through_the_nat() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 256);
    for _ in 0..32 {
        net.post_rx(&[2048]);
    }
    let (h, host) = rig.start(&net, BridgeConfig::default());
    let mut pending = Vec::new();

    net.send_frame(
        HDR,
        &arp_request(GUEST_MAC, Ipv4Addr::UNSPECIFIED, GATEWAY),
        &[],
    );
    h.kick(1).unwrap();
    let (hdr, reply) = recv_frame(&mut net, &mut pending);
    assert_eq!(hdr.num_buffers, 1);
    let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    assert_eq!(eth.ethertype(), ethertype::ARP);
    assert!(rig.irqs[0].load(Ordering::SeqCst) > 0, "RX interrupt");

    let ip = dhcp_lease(&mut net, &h, &mut pending);
    assert_eq!(ip, GUEST_IP);

    // Guest → internet.
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, ip, 40000, SERVER, 7, b"ping"),
        &[HDR],
    );
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("the packet on the host link", || {
        out = host.recv();
        out.is_some()
    });
    let out = out.unwrap();
    let (src, sport, dst, dport) = ipv4_src_dst_ports(&out);
    assert_eq!((src, dst, dport), (EXTERNAL, SERVER, 7));
    assert!(rig.irqs[1].load(Ordering::SeqCst) > 0, "TX interrupt");

    // Internet → guest.
    assert!(host.send(&udp_packet(SERVER, 7, EXTERNAL, sport, b"pong")));
    let (_, f) = recv_frame(&mut net, &mut pending);
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC, "to the guest's MAC");
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    let (src, sp, dst, dp) = ipv4_src_dst_ports(eth.payload());
    assert_eq!((src, sp, dst, dp), (SERVER, 7, ip, 40000));
    assert_eq!(udp_payload(&f), b"pong");

    let s = h.stats();
    assert_eq!(s.bridge.to_host, 1);
    assert_eq!(s.bridge.from_host, 1);
    assert!(s.nat_flows >= 1);
    assert_eq!(s.bridge.local_replies, 3, "ARP, OFFER, ACK");
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.tx_frames, 4);
}

/// IPv6 through NAT66: the guest's packet leaves with the external IPv6 address, the answer
/// comes back to the guest's address and MAC with EtherType IPv6 (0x86DD).
#[test]
fn ipv6_round_trips_through_nat66() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 256);
    for _ in 0..32 {
        net.post_rx(&[2048]);
    }
    let (h, host) = rig.start(&net, BridgeConfig::default());
    let mut pending = Vec::new();
    let guest: core::net::Ipv6Addr = "fd64::5054:ff:fe12:3456".parse().unwrap();
    let server: core::net::Ipv6Addr = "2001:db8::2".parse().unwrap();
    let external = BridgeConfig::default().nat.external_addr6;
    net.send_frame(
        HDR,
        &udp6_frame(
            (GUEST_MAC, GATEWAY_MAC),
            (guest, 40000),
            (server, 7),
            b"ping",
        ),
        &[HDR],
    );
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("the packet on the host link", || {
        out = host.recv();
        out.is_some()
    });
    let out = out.unwrap();
    let p = etherparse::SlicedPacket::from_ip(&out).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().source_addr(), external);
    assert_eq!(ip.header().destination_addr(), server);
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not udp")
    };
    let sport = u.source_port();
    // IPv6 multicast from the host link (the host's own MLD report, say): not for the NAT.
    let mld = udp6_frame(
        (GATEWAY_MAC, GUEST_MAC),
        (external, 5000),
        ("ff02::16".parse().unwrap(), 5000),
        b"x",
    );
    assert!(host.send(&mld[14..]));
    let back = udp6_frame(
        (GATEWAY_MAC, GUEST_MAC),
        (server, 7),
        (external, sport),
        b"pong",
    );
    assert!(host.send(&back[14..]));
    // The first frame may be an unsolicited Router Advertisement.
    let f = loop {
        let (_, f) = recv_frame(&mut net, &mut pending);
        if udp_payload6(&f).is_some() {
            break f;
        }
    };
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.ethertype(), ethertype::IPV6);
    assert_eq!((eth.dst_addr(), eth.src_addr()), (GUEST_MAC, GATEWAY_MAC));
    let p = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else {
        panic!("not ipv6")
    };
    assert_eq!(ip.header().destination_addr(), guest);
    assert_eq!(udp_payload6(&f).unwrap(), b"pong");
    wait_for("the multicast counted", || {
        h.stats().bridge.drops_of(DropCause::Ipv6Ignored) == 1
    });
    let s = h.shutdown().unwrap();
    assert_eq!((s.bridge.to_host, s.bridge.from_host), (1, 2));
    let names = s.drops_by_name().to_string();
    assert!(
        !names.contains("nat."),
        "the NAT never saw the dropped one: {names}"
    );
}

/// The UDP payload of an Ethernet/IPv6 frame, if it is one.
fn udp_payload6(frame: &[u8]) -> Option<Vec<u8>> {
    let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    match p.transport {
        Some(etherparse::TransportSlice::Udp(u)) => Some(u.payload().to_vec()),
        _ => None,
    }
}

#[test]
fn spoofed_and_unsupported_frames_never_reach_the_host() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    let (h, host) = rig.start(&net, BridgeConfig::default());
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 1, SERVER, 2, b"x"),
        &[],
    );
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, Ipv4Addr::new(10, 0, 0, 1), 1, SERVER, 2, b"x"),
        &[],
    );
    // IPv6 from a link-local source beyond the gateway: no route (it never leaves the link).
    let v6 = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        ("fe80::2".parse().unwrap(), 1),
        ("2001:db8::2".parse().unwrap(), 2),
        b"x",
    );
    net.send_frame(HDR, &v6, &[]);
    h.kick(1).unwrap();
    wait_for("three TX chains back", || {
        net.tx_used().len() == 3 || h.stats().bridge.tx_frames == 3
    });
    wait_for("drop counters", || {
        let s = h.stats().bridge;
        s.drops_of(DropCause::SpoofedIp) == 2 && s.drops_of(DropCause::Ipv6NoRoute) == 1
    });
    assert_eq!(host.pending(), 0);
    h.shutdown().unwrap();
}

#[test]
fn host_packets_wait_for_rx_buffers_then_flow() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    // Open a mapping: guest → server.
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 5000, SERVER, 9, b"hi"),
        &[],
    );
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("outbound packet", || {
        out = host.recv();
        out.is_some()
    });
    let (_, port, _, _) = ipv4_src_dst_ports(&out.unwrap());
    // 20 replies while the guest has no RX buffer: nothing is lost, nothing spins.
    for i in 0..20u8 {
        assert!(host.send(&udp_packet(SERVER, 9, EXTERNAL, port, &[i])));
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(h.stats().bridge.rx_frames, 0);
    for _ in 0..20 {
        net.post_rx(&[2048]);
    }
    h.kick(0).unwrap();
    let mut pending = Vec::new();
    for i in 0..20u8 {
        let (_, f) = recv_frame(&mut net, &mut pending);
        assert_eq!(udp_payload(&f), [i], "in order");
    }
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.rx_frames, 20);
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

#[test]
fn port_forwards_are_added_and_removed_at_runtime() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    let fwd = nat::PortForward {
        protocol: nat::Protocol::Udp,
        external_port: 8053,
        internal: SocketAddrV4::new(GUEST_IP, 53),
    };
    h.add_forward(fwd).unwrap();
    assert!(host.send(&udp_packet(SERVER, 3333, EXTERNAL, 8053, b"fwd")));
    let mut pending = Vec::new();
    let (_, f) = recv_frame(&mut net, &mut pending);
    let (src, sp, dst, dp) = ipv4_src_dst_ports(ip_of(&f));
    assert_eq!(
        (src, sp, dst, dp),
        (SERVER, 3333, GUEST_IP, 53),
        "the guest sees the real client"
    );
    assert!(h.remove_forward(nat::Protocol::Udp, 8053));
    assert!(host.send(&udp_packet(SERVER, 3333, EXTERNAL, 8053, b"fwd")));
    wait_for("the inbound drop", || {
        h.stats().bridge.drops_of(DropCause::NatInbound) == 1
    });
    h.shutdown().unwrap();
}

#[test]
fn host_link_failure_surfaces_through_the_handle() {
    let rig = Rig::new();
    let net = MockNet::new(&rig.mem, 16);
    let (h, host) = rig.start(&net, BridgeConfig::default());
    assert!(h.error().is_none());
    host.close();
    wait_for("the error", || h.error().is_some());
    assert!(matches!(*h.error().unwrap(), Error::HostLink(_)));
    match h.shutdown() {
        Err(Error::Failed(e)) => assert!(matches!(*e, Error::HostLink(_))),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_broken_avail_index_flags_needs_reset() {
    let rig = Rig::new();
    let net = MockNet::new(&rig.mem, 16);
    let (h, _host) = rig.start(&net, BridgeConfig::default());
    net.set_tx_avail_idx(100);
    h.kick(1).unwrap();
    wait_for("needs reset", || h.needs_reset());
    assert_eq!(rig.irqs[2].load(Ordering::SeqCst), 1, "config interrupt");
    assert!(matches!(
        *h.error().unwrap(),
        Error::NeedsReset { queue: 1 }
    ));
    assert!(h.stats().needs_reset);
    assert!(h.shutdown().is_err());
}

#[test]
fn kicks_and_config_are_checked() {
    let rig = Rig::new();
    let net = MockNet::new(&rig.mem, 16);
    let (h, _host) = rig.start(&net, BridgeConfig::default());
    assert!(matches!(h.kick(2), Err(Error::NoSuchQueue(2))));
    assert!(h.kick_fd(0).is_some() && h.kick_fd(1).is_some() && h.kick_fd(2).is_none());
    drop(h); // Drop joins the threads too.
    let bad = BridgeConfig {
        batch_size: 0,
        ..BridgeConfig::default()
    };
    assert!(matches!(Bridge::new(bad), Err(Error::Config(_))));
    let bad = BridgeConfig {
        mtu: 9000,
        max_host_packet: 1500,
        ..BridgeConfig::default()
    };
    assert!(matches!(Bridge::new(bad), Err(Error::Config(_))));
    // DNS upstream installs the redirect; an upstream inside the subnet is refused by the NAT.
    let up = BridgeConfig {
        dns_upstream: Some(SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 7), 53).into()),
        ..BridgeConfig::default()
    };
    assert!(matches!(Bridge::new(up), Err(Error::NatRule(_))));
    let b = Bridge::new(BridgeConfig::default()).unwrap();
    let mut cs = [0u8; 2];
    b.read_config(10, &mut cs);
    assert_eq!(u16::from_le_bytes(cs), 1500);
    let _ = HostLink::readiness_fd(&MemoryLink::pair(1).unwrap().0).unwrap();
}

/// Splits an IPv4 packet into fragments carrying at most `chunk` payload bytes (a multiple
/// of 8).
fn fragment(pkt: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    let ip = Ipv4Packet::new_checked(pkt).unwrap();
    let hdr = &pkt[..ip.header_len()];
    let payload = ip.payload();
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let mut f = hdr.to_vec();
        f.extend_from_slice(&payload[off..end]);
        let total = f.len() as u16;
        let mut frag = Ipv4Packet::new_unchecked(&mut f[..]);
        frag.set_total_len(total);
        frag.set_more_frags(end < payload.len());
        frag.set_frag_offset(off as u16);
        frag.fill_checksum();
        out.push(f);
        off = end;
    }
    out
}

/// The IP packet of an Ethernet frame.
fn ip_of(frame: &[u8]) -> &[u8] {
    EthernetFrame::new_checked(frame).unwrap().into_payload()
}

#[test]
fn dns_is_redirected_and_large_fragmented_answers_arrive_as_fragments() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let upstream = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 53), 53);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        dns_upstream: Some(upstream.into()),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 33333, GATEWAY, 53, b"query"),
        &[],
    );
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("the query upstream", || {
        out = host.recv();
        out.is_some()
    });
    let (src, sport, dst, dport) = ipv4_src_dst_ports(&out.unwrap());
    assert_eq!((src, dst, dport), (EXTERNAL, *upstream.ip(), 53));
    // A 3000-byte EDNS answer, fragmented by the host to the 1500-byte MTU.
    let answer: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
    let full = udp_packet(*upstream.ip(), 53, EXTERNAL, sport, &answer);
    let frags = fragment(&full, 1480);
    assert_eq!(frags.len(), 3);
    for f in &frags {
        assert!(host.send(f));
    }
    let mut pending = Vec::new();
    let mut got = Vec::new();
    for _ in 0..3 {
        let (_, f) = recv_frame(&mut net, &mut pending);
        assert!(f.len() <= 1514);
        got.push(f);
    }
    // The first fragment carries the UDP header, translated back to the gateway's address.
    let first = Ipv4Packet::new_checked(ip_of(&got[0])).unwrap();
    assert_eq!(first.src_addr(), GATEWAY, "answers come from the gateway");
    assert_eq!(first.dst_addr(), GUEST_IP);
    // Only the first fragment's header is a UDP header (its length field covers all fragments).
    let udp = UdpPacket::new_unchecked(first.payload());
    assert_eq!(udp.src_port(), 53);
    assert_eq!(udp.dst_port(), 33333);
    let mut data = Vec::new();
    for f in &got {
        let ip = Ipv4Packet::new_checked(ip_of(f)).unwrap();
        assert_eq!(ip.src_addr(), GATEWAY);
        data.extend_from_slice(ip.payload());
    }
    assert_eq!(
        &data[wire::udp::HEADER_LEN..],
        &answer[..],
        "payload intact across the fragments"
    );
    h.shutdown().unwrap();
}

#[test]
fn dhcp_with_a_hostile_hardware_length_is_dropped() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 16);
    let (h, _host) = rig.start(&net, BridgeConfig::default());
    let u = Ipv4Addr::UNSPECIFIED;
    let mut d = Message::new_with_id(1, u, u, u, u, &GUEST_MAC.0);
    d.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    let mut f = dhcp_frame(GUEST_MAC, &d);
    // The BOOTP `hlen` byte (RFC 2131 section 2: op, htype, hlen).
    bootp_of(&mut f)[2] = 200;
    net.send_frame(HDR, &f, &[]);
    h.kick(1).unwrap();
    wait_for("the drop", || {
        h.stats().bridge.drops_of(DropCause::Dhcp) == 1
    });
    h.shutdown().unwrap();
}

#[test]
fn gateway_replies_push_back_on_the_tx_queue_when_the_guest_reads_nothing() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    let cfg = BridgeConfig {
        pool_batches: 1,
        batch_size: 4,
        ..BridgeConfig::default()
    };
    // No RX buffers: the first reply batch cannot be delivered, so the pool runs dry. The
    // frames are posted before the runner starts so that its first pass sees all four (a
    // pass over a partly posted ring would send a partial batch and block on the pool).
    for _ in 0..4 {
        net.send_frame(HDR, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY), &[]);
    }
    let (h, _host) = rig.start(&net, cfg);
    h.kick(1).unwrap();
    wait_for("the first batch", || h.stats().bridge.tx_frames == 4);
    for _ in 0..4 {
        net.send_frame(HDR, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY), &[]);
    }
    h.kick(1).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        h.stats().bridge.tx_frames,
        4,
        "backpressure: the TX queue is not drained"
    );
    assert_eq!(net.tx_used().len(), 4);
    // The guest posts buffers: replies flow, the pool refills, the TX queue drains.
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    h.kick(0).unwrap();
    let mut pending = Vec::new();
    for _ in 0..8 {
        let (_, f) = recv_frame(&mut net, &mut pending);
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().ethertype(),
            ethertype::ARP
        );
    }
    let s = h.shutdown().unwrap();
    assert_eq!((s.bridge.tx_frames, s.bridge.local_replies), (8, 8));
    assert_eq!(s.bridge.total_drops(), 0, "nothing lost");
}

#[test]
fn sustained_traffic_both_ways_loses_nothing() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 256);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    const ROUNDS: usize = 20;
    const PER: usize = 100;
    // TX: the guest sends in bursts; the host side drains concurrently with the bridge.
    let mut port = 0;
    let mut got = 0;
    for r in 0..ROUNDS {
        for i in 0..PER {
            let payload = [(r % 256) as u8, (i % 256) as u8];
            net.send_frame(
                HDR,
                &udp_frame(GUEST_MAC, GUEST_IP, 41000, SERVER, 7, &payload),
                &[],
            );
        }
        h.kick(1).unwrap();
        wait_for("a TX burst on the host link", || {
            while let Some(p) = host.recv() {
                port = ipv4_src_dst_ports(&p).1;
                got += 1;
            }
            got == (r + 1) * PER
        });
    }
    // RX: the host sends in bursts; the guest refills its ring as it reads.
    let mut pending = Vec::new();
    let mut seen = 0usize;
    for r in 0..ROUNDS {
        for i in 0..PER {
            assert!(host.send(&udp_packet(
                SERVER,
                7,
                EXTERNAL,
                port,
                &[(r % 256) as u8, (i % 256) as u8]
            )));
        }
        for _ in 0..PER {
            net.post_rx(&[2048]);
        }
        h.kick(0).unwrap();
        for i in 0..PER {
            let (_, f) = recv_frame(&mut net, &mut pending);
            assert_eq!(
                udp_payload(&f),
                [(r % 256) as u8, (i % 256) as u8],
                "in order"
            );
            seen += 1;
        }
    }
    assert_eq!(seen, ROUNDS * PER);
    let s = h.shutdown().unwrap();
    assert_eq!(
        (s.bridge.to_host, s.bridge.rx_frames),
        ((ROUNDS * PER) as u64, (ROUNDS * PER) as u64)
    );
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

#[test]
fn inline_kicks_send_on_the_calling_thread_in_order() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 256);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    const ROUNDS: usize = 10;
    // At most 8 chains are drained inline; more go to the TX thread.
    const PER: usize = 6;
    let mut got = Vec::new();
    let mut inline_rounds = 0;
    for r in 0..ROUNDS {
        // Let the TX thread settle (it may hold the TX state from an earlier kick).
        std::thread::sleep(Duration::from_millis(5));
        for i in 0..PER {
            net.send_frame(
                HDR,
                &udp_frame(GUEST_MAC, GUEST_IP, 41000, SERVER, 7, &[r as u8, i as u8]),
                &[],
            );
        }
        h.kick_inline(1).unwrap();
        // Unless the TX thread was still finishing the previous burst, this one went out
        // before kick_inline returned.
        if host.pending() == PER {
            inline_rounds += 1;
        }
        wait_for("the burst on the host link", || {
            while let Some(p) = host.recv() {
                got.push(udp_payload_of_packet(&p));
            }
            got.len() == (r + 1) * PER
        });
    }
    for (k, p) in got.iter().enumerate() {
        assert_eq!(p, &[(k / PER) as u8, (k % PER) as u8], "in order");
    }
    assert!(inline_rounds > 0, "no burst was sent on the calling thread");
    assert_eq!(net.tx_used().len(), ROUNDS * PER, "every chain returned");
    let s = h.shutdown().unwrap();
    assert_eq!(s.bridge.to_host, (ROUNDS * PER) as u64);
    assert_eq!(s.bridge.total_drops(), 0, "{}", s.drops_by_name());
}

#[test]
fn an_inline_kick_under_backpressure_leaves_the_rest_to_the_tx_thread() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    let cfg = BridgeConfig {
        pool_batches: 1,
        batch_size: 4,
        ..BridgeConfig::default()
    };
    for _ in 0..4 {
        net.send_frame(HDR, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY), &[]);
    }
    let (h, _host) = rig.start(&net, cfg);
    h.kick_inline(1).unwrap();
    wait_for("the first batch", || h.stats().bridge.tx_frames == 4);
    for _ in 0..4 {
        net.send_frame(HDR, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY), &[]);
    }
    h.kick_inline(1).unwrap();
    assert_eq!(
        h.stats().bridge.tx_frames,
        4,
        "no reply batch free: not drained"
    );
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    h.kick_inline(0).unwrap();
    let mut pending = Vec::new();
    for _ in 0..8 {
        let (_, f) = recv_frame(&mut net, &mut pending);
        assert_eq!(
            EthernetFrame::new_checked(&f[..]).unwrap().ethertype(),
            ethertype::ARP
        );
    }
    let s = h.shutdown().unwrap();
    assert_eq!((s.bridge.tx_frames, s.bridge.local_replies), (8, 8));
    assert_eq!(s.bridge.total_drops(), 0, "nothing lost");
}

fn udp_payload_of_packet(pkt: &[u8]) -> Vec<u8> {
    let p = etherparse::SlicedPacket::from_ip(pkt).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("not udp")
    };
    u.payload().to_vec()
}

/// The UDP payload (a BOOTP message) of a DHCP frame, writable.
fn bootp_of(frame: &mut [u8]) -> &mut [u8] {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(eth.into_payload_mut()).unwrap();
    UdpPacket::new_checked(ip.into_payload_mut())
        .unwrap()
        .into_payload_mut()
}

/// A full ring of 1024 chains is more than one wake-up's budget (`TX_BATCH_BUDGET` batches):
/// the TX side comes back for the rest on its own (no second kick), and every frame reaches
/// the host link once, in order.
#[test]
fn a_tx_ring_beyond_the_budget_is_drained_after_one_kick() {
    const SIZE: u16 = 1024;
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, SIZE);
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        max_queue_size: SIZE,
        ..BridgeConfig::default()
    };
    assert!(usize::from(SIZE) > bridge::TX_BATCH_BUDGET * cfg.batch_size);
    let (h, host) = rig.start(&net, cfg);
    for i in 0..SIZE {
        net.send_frame(
            HDR,
            &udp_frame(GUEST_MAC, GUEST_IP, 41000, SERVER, 7, &i.to_be_bytes()),
            &[],
        );
    }
    h.kick(1).unwrap();
    let mut got = Vec::new();
    wait_for("the whole ring on the host link", || {
        while let Some(p) = host.recv() {
            let ip = Ipv4Packet::new_checked(&p[..]).unwrap();
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            got.push(u16::from_be_bytes(udp.payload().try_into().unwrap()));
        }
        got.len() == usize::from(SIZE)
    });
    assert!(got.iter().copied().eq(0..SIZE), "each frame once, in order");
    assert_eq!(net.tx_used().len(), usize::from(SIZE));
    h.shutdown().unwrap();
}

/// The guest's SLAAC address (EUI-64 of the default guest MAC) and the gateway's IPv6
/// address.
const GUEST6: core::net::Ipv6Addr =
    core::net::Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GW6: core::net::Ipv6Addr = core::net::Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);

/// Sends an IPv6 DNS query to `[fd64::1]:53` and returns what reaches the host link.
fn ipv6_query(net: &mut MockNet<'_>, h: &BridgeHandle, host: &MemoryLink) -> Vec<u8> {
    let q = bridge::testing::udp6_frame(
        (GUEST_MAC, bridge::defaults::GATEWAY_MAC),
        (GUEST6, 40000),
        (GW6, 53),
        b"query",
    );
    net.send_frame(HDR, &q, &[]);
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("the query upstream", || {
        out = host.recv();
        out.is_some()
    });
    out.unwrap()
}

/// The answer the guest got: an IPv6 UDP datagram from `[fd64::1]:53` to the querying
/// port, with a valid checksum; returns its payload.
fn ipv6_answer(net: &mut MockNet<'_>) -> Vec<u8> {
    let mut pending = Vec::new();
    let mut f = recv_frame(net, &mut pending).1;
    // The guest's first IPv6 frame also brought an unsolicited Router Advertisement.
    for _ in 0..4 {
        let next = wire::Ipv6Packet::new_checked(&f[14..])
            .unwrap()
            .next_header();
        if next != wire::ip_proto::ICMPV6 {
            break;
        }
        f = recv_frame(net, &mut pending).1;
    }
    let eth = EthernetFrame::new_checked(&f[..]).unwrap();
    assert_eq!(eth.ethertype(), ethertype::IPV6);
    let ip = wire::Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, GUEST6));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (53, 40000));
    assert!(u.verify_checksum_v6(GW6, GUEST6));
    u.payload().to_vec()
}

#[test]
fn ipv6_dns_reaches_an_ipv4_upstream_through_the_relay_and_back() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let upstream = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 53), 53);
    let cfg = BridgeConfig {
        dns_upstream: Some(upstream.into()),
        ..BridgeConfig::default()
    };
    let (h, host) = rig.start(&net, cfg);
    let out = ipv6_query(&mut net, &h, &host);
    let (src, sport, dst, dport) = ipv4_src_dst_ports(&out);
    assert_eq!((src, dst, dport), (EXTERNAL, *upstream.ip(), 53));
    let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
    assert!(
        UdpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum_v4(EXTERNAL, *upstream.ip())
    );
    assert!(host.send(&udp_packet(*upstream.ip(), 53, EXTERNAL, sport, b"answer")));
    assert_eq!(ipv6_answer(&mut net), b"answer");
    assert_eq!(h.stats().bridge.drops_of(DropCause::DnsRelay), 0);
    h.shutdown().unwrap();
}

#[test]
fn ipv6_dns_reaches_an_ipv6_upstream_through_nat66_and_back() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let upstream: core::net::SocketAddrV6 = "[2001:db8::53]:53".parse().unwrap();
    let cfg = BridgeConfig {
        dns_upstream: Some(upstream.into()),
        ..BridgeConfig::default()
    };
    let external6 = cfg.nat.external_addr6;
    let (h, host) = rig.start(&net, cfg);
    let out = ipv6_query(&mut net, &h, &host);
    let ip = wire::Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (external6, *upstream.ip()));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!(u.dst_port(), 53);
    assert!(u.verify_checksum_v6(external6, *upstream.ip()));
    let sport = u.src_port();
    let mut a = vec![0u8; 8 + 6];
    let mut au = UdpPacket::new_unchecked(&mut a[..]);
    au.set_src_port(53);
    au.set_dst_port(sport);
    au.set_len(14);
    au.payload_mut().copy_from_slice(b"answer");
    au.fill_checksum_v6(*upstream.ip(), external6);
    let mut p = vec![0u8; 40];
    let mut ip = wire::Ipv6Packet::new_unchecked(&mut p[..]);
    ip.set_version(6);
    ip.set_payload_len(14);
    ip.set_next_header(wire::ip_proto::UDP);
    ip.set_hop_limit(64);
    ip.set_src_addr(*upstream.ip());
    ip.set_dst_addr(external6);
    p.extend_from_slice(&a);
    assert!(host.send(&p));
    assert_eq!(ipv6_answer(&mut net), b"answer");
    h.shutdown().unwrap();
}

#[test]
fn ipv4_dns_reaches_an_ipv6_upstream_through_the_relay_and_back() {
    let rig = Rig::new();
    let mut net = MockNet::new(&rig.mem, 64);
    for _ in 0..8 {
        net.post_rx(&[2048]);
    }
    let upstream: core::net::SocketAddrV6 = "[2001:db8::53]:53".parse().unwrap();
    let cfg = BridgeConfig {
        static_guest_ip: Some(GUEST_IP),
        dns_upstream: Some(upstream.into()),
        ..BridgeConfig::default()
    };
    let external6 = cfg.nat.external_addr6;
    let (h, host) = rig.start(&net, cfg);
    net.send_frame(
        HDR,
        &udp_frame(GUEST_MAC, GUEST_IP, 33333, GATEWAY, 53, b"query"),
        &[],
    );
    h.kick(1).unwrap();
    let mut out = None;
    wait_for("the query upstream", || {
        out = host.recv();
        out.is_some()
    });
    let out = out.unwrap();
    let ip = wire::Ipv6Packet::new_checked(&out[..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (external6, *upstream.ip()));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((u.dst_port(), u.payload()), (53, &b"query"[..]));
    assert!(u.verify_checksum_v6(external6, *upstream.ip()));
    let sport = u.src_port();
    let a = bridge::testing::udp6_frame(
        (GUEST_MAC, GUEST_MAC),
        (*upstream.ip(), 53),
        (external6, sport),
        b"answer",
    );
    assert!(host.send(&a[14..]));
    let (_, f) = recv_frame(&mut net, &mut Vec::new());
    let ip = Ipv4Packet::new_checked(ip_of(&f)).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, GUEST_IP));
    let u = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (53, 33333));
    assert_eq!(u.payload(), b"answer");
    assert!(u.verify_checksum_v4(GATEWAY, GUEST_IP));
    h.shutdown().unwrap();
}
