//! One test per behaviour of the issue, through the public API only.

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

use nat::testing::{self, EXTERNAL, GATEWAY, GUEST, GUEST2, SERVER, SERVER2, TcpFlags};
use nat::{
    ConfigError, Direction, DropReason, Filtering, Instant, L4Checksum, Nat, NatConfig,
    PortForward, Protocol, Redirect, RuleError, Verdict,
};
use wire::{Icmpv4Packet, Ipv4Packet, UdpPacket, ip_proto, ipv4, udp};

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

const T0: Instant = Instant::ZERO;

fn secs(s: u64) -> Instant {
    Instant::from_secs(s)
}

/// Sends a UDP packet out and returns the translated packet.
fn out_udp(nat: &mut Nat, from: SocketAddrV4, to: SocketAddrV4, now: Instant) -> Vec<u8> {
    let mut p = testing::udp(from, to, b"hello");
    assert_eq!(nat.outbound(&mut p, now), Verdict::Forward);
    assert!(testing::checksums_match_full_recompute(&p));
    p
}

fn drops(nat: &Nat, r: DropReason) -> u64 {
    nat.stats().drops[r.index()]
}

fn expire_all(nat: &mut Nat, now: Instant) -> usize {
    let mut n = 0;
    for _ in 0..1000 {
        n += nat.expire(now, 64);
        if nat.next_deadline().is_none_or(|d| d > now) {
            break;
        }
    }
    n
}

#[test]
fn outbound_udp_gets_external_source_and_valid_checksums() {
    let mut nat = testing::nat();
    let p = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    assert_eq!(testing::src(&p), sa(EXTERNAL, 5000));
    assert_eq!(testing::dst(&p), sa(SERVER, 53));
    assert_eq!(nat.stats().outbound_forwarded, 1);
    assert_eq!(nat.len(), 1);
}

#[test]
fn inbound_reply_is_translated_back_to_the_guest() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&o), b"answer");
    assert_eq!(nat.inbound(&mut r, secs(1)), Verdict::Forward);
    assert_eq!(testing::dst(&r), sa(GUEST, 5000));
    assert_eq!(testing::src(&r), sa(SERVER, 53));
    assert!(testing::checksums_match_full_recompute(&r));
    assert_eq!(nat.stats().inbound_forwarded, 1);
}

#[test]
fn inbound_without_mapping_is_a_counted_drop() {
    let mut nat = testing::nat();
    let mut r = testing::udp(sa(SERVER, 53), sa(EXTERNAL, 40000), b"x");
    assert_eq!(
        nat.inbound(&mut r, T0),
        Verdict::Drop(DropReason::NoMapping)
    );
    let mut other = testing::udp(
        sa(SERVER, 53),
        sa(Ipv4Addr::new(100, 64, 0, 9), 40000),
        b"x",
    );
    assert_eq!(
        nat.inbound(&mut other, T0),
        Verdict::Drop(DropReason::NoMapping)
    );
    assert_eq!(drops(&nat, DropReason::NoMapping), 2);
}

#[test]
fn endpoint_independent_mapping_udp_rfc4787_req1() {
    let mut nat = testing::nat();
    let a = out_udp(&mut nat, sa(GUEST, 40001), sa(SERVER, 53), T0);
    let b = out_udp(&mut nat, sa(GUEST, 40001), sa(SERVER2, 3478), T0);
    assert_eq!(testing::src(&a), testing::src(&b));
    assert_eq!(nat.len(), 2);
}

#[test]
fn endpoint_independent_mapping_tcp_rfc5382_req1() {
    let mut nat = testing::nat();
    let mut a = testing::tcp(sa(GUEST, 40002), sa(SERVER, 80), TcpFlags::SYN, b"");
    let mut b = testing::tcp(sa(GUEST, 40002), sa(SERVER2, 443), TcpFlags::SYN, b"");
    assert_eq!(nat.outbound(&mut a, T0), Verdict::Forward);
    assert_eq!(nat.outbound(&mut b, T0), Verdict::Forward);
    assert_eq!(testing::src(&a), testing::src(&b));
    assert!(testing::checksums_match_full_recompute(&a));
}

#[test]
fn filtering_endpoint_independent_admits_any_remote_by_default() {
    let mut nat = testing::nat();
    assert_eq!(nat.config().filtering, Filtering::EndpointIndependent);
    let o = out_udp(&mut nat, sa(GUEST, 40003), sa(SERVER, 3478), T0);
    let mut r = testing::udp(sa(SERVER2, 9999), testing::src(&o), b"hi");
    assert_eq!(nat.inbound(&mut r, T0), Verdict::Forward);
    assert_eq!(testing::dst(&r), sa(GUEST, 40003));
    assert!(testing::checksums_match_full_recompute(&r));
}

#[test]
fn filtering_address_and_port_dependent_rejects_other_remotes() {
    let mut cfg = testing::config();
    cfg.filtering = Filtering::AddressAndPortDependent;
    let mut nat = testing::nat_with(cfg);
    let o = out_udp(&mut nat, sa(GUEST, 40004), sa(SERVER, 3478), T0);
    let ext = testing::src(&o);
    let mut other_addr = testing::udp(sa(SERVER2, 3478), ext, b"hi");
    assert_eq!(
        nat.inbound(&mut other_addr, T0),
        Verdict::Drop(DropReason::Filtered)
    );
    let mut other_port = testing::udp(sa(SERVER, 3479), ext, b"hi");
    assert_eq!(
        nat.inbound(&mut other_port, T0),
        Verdict::Drop(DropReason::Filtered)
    );
    let mut same = testing::udp(sa(SERVER, 3478), ext, b"hi");
    assert_eq!(nat.inbound(&mut same, T0), Verdict::Forward);
    assert_eq!(drops(&nat, DropReason::Filtered), 2);
}

#[test]
fn port_assignment_keeps_the_guest_port_when_free() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 33333), sa(SERVER, 53), T0);
    assert_eq!(testing::src(&o).port(), 33333);
}

#[test]
fn port_assignment_never_hands_out_a_port_in_use() {
    let mut nat = testing::nat();
    let a = out_udp(&mut nat, sa(GUEST, 33333), sa(SERVER, 53), T0);
    let b = out_udp(&mut nat, sa(GUEST2, 33333), sa(SERVER, 53), T0);
    assert_eq!(testing::src(&a).port(), 33333);
    let pb = testing::src(&b).port();
    assert_ne!(pb, 33333);
    assert!(pb >= 1024);
    // Each reply reaches its own guest.
    let mut ra = testing::udp(sa(SERVER, 53), testing::src(&a), b"a");
    let mut rb = testing::udp(sa(SERVER, 53), testing::src(&b), b"b");
    assert_eq!(nat.inbound(&mut ra, T0), Verdict::Forward);
    assert_eq!(nat.inbound(&mut rb, T0), Verdict::Forward);
    assert_eq!(testing::dst(&ra), sa(GUEST, 33333));
    assert_eq!(testing::dst(&rb), sa(GUEST2, 33333));
}

#[test]
fn port_assignment_keeps_well_known_ports_well_known_rfc4787_req3() {
    let mut nat = testing::nat();
    let a = out_udp(&mut nat, sa(GUEST, 123), sa(SERVER, 123), T0);
    let b = out_udp(&mut nat, sa(GUEST2, 123), sa(SERVER, 123), T0);
    assert_eq!(testing::src(&a).port(), 123);
    let pb = testing::src(&b).port();
    assert!((1..1024).contains(&pb) && pb != 123, "{pb}");
}

#[test]
fn port_assignment_uses_the_configured_range() {
    let mut cfg = testing::config();
    cfg.port_range = 50000..=50009;
    let mut nat = testing::nat_with(cfg);
    for i in 0..10 {
        let o = out_udp(&mut nat, sa(GUEST, 2000 + i), sa(SERVER, 53), T0);
        assert!((50000..=50009).contains(&testing::src(&o).port()));
    }
}

#[test]
fn port_exhaustion_is_a_counted_drop_never_a_wraparound() {
    let mut cfg = testing::config();
    cfg.port_range = 50000..=50001;
    let mut nat = testing::nat_with(cfg);
    let a = out_udp(&mut nat, sa(GUEST, 2000), sa(SERVER, 53), T0);
    let b = out_udp(&mut nat, sa(GUEST, 2001), sa(SERVER, 53), T0);
    let mut c = testing::udp(sa(GUEST, 2002), sa(SERVER, 53), b"x");
    assert_eq!(
        nat.outbound(&mut c, T0),
        Verdict::Drop(DropReason::PortsExhausted)
    );
    assert_eq!(drops(&nat, DropReason::PortsExhausted), 1);
    // Existing mappings are untouched and still work.
    assert_ne!(testing::src(&a).port(), testing::src(&b).port());
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&a), b"r");
    assert_eq!(nat.inbound(&mut r, T0), Verdict::Forward);
    assert_eq!(testing::dst(&r), sa(GUEST, 2000));
    // Once a mapping expires its port is free again.
    expire_all(&mut nat, secs(301));
    let mut c = testing::udp(sa(GUEST, 2002), sa(SERVER, 53), b"x");
    assert_eq!(nat.outbound(&mut c, secs(301)), Verdict::Forward);
}

#[test]
fn udp_timeout_is_five_minutes_by_default_and_at_least_two() {
    let mut nat = testing::nat();
    assert!(nat.config().timeouts.udp >= Duration::from_secs(120));
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    expire_all(&mut nat, secs(299));
    assert_eq!(nat.len(), 1);
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&o), b"r");
    assert_eq!(nat.inbound(&mut r, secs(299)), Verdict::Forward);
    assert_eq!(expire_all(&mut nat, secs(300)), 1);
    assert!(nat.is_empty());
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&o), b"r");
    assert_eq!(
        nat.inbound(&mut r, secs(300)),
        Verdict::Drop(DropReason::NoMapping)
    );
    assert_eq!(nat.stats().mappings_expired, 1);
}

#[test]
fn udp_mapping_is_refreshed_by_outbound_traffic_only() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    // Inbound traffic at 200 s does not refresh...
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&o), b"r");
    assert_eq!(nat.inbound(&mut r, secs(200)), Verdict::Forward);
    assert_eq!(nat.mappings()[0].expires, secs(300));
    // ...outbound traffic does.
    out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), secs(200));
    assert_eq!(nat.mappings()[0].expires, secs(500));
    expire_all(&mut nat, secs(400));
    assert_eq!(nat.len(), 1);
}

fn tcp_pair(nat: &mut Nat, flags_out: TcpFlags, now: Instant) -> SocketAddrV4 {
    let mut p = testing::tcp(sa(GUEST, 41000), sa(SERVER, 80), flags_out, b"");
    assert_eq!(nat.outbound(&mut p, now), Verdict::Forward);
    testing::src(&p)
}

fn tcp_in(nat: &mut Nat, ext: SocketAddrV4, flags: TcpFlags, now: Instant) -> Verdict {
    let mut p = testing::tcp(sa(SERVER, 80), ext, flags, b"");
    let v = nat.inbound(&mut p, now);
    if v == Verdict::Forward {
        assert!(testing::checksums_match_full_recompute(&p));
        assert_eq!(testing::dst(&p), sa(GUEST, 41000));
    }
    v
}

#[test]
fn tcp_partially_open_uses_the_transitory_timeout() {
    let mut nat = testing::nat();
    tcp_pair(&mut nat, TcpFlags::SYN, T0);
    assert_eq!(nat.mappings()[0].expires, secs(240));
    expire_all(&mut nat, secs(240));
    assert!(nat.is_empty());
}

#[test]
fn tcp_established_idle_timeout_is_2h4m_rfc5382_req5() {
    let mut nat = testing::nat();
    let ext = tcp_pair(&mut nat, TcpFlags::SYN, T0);
    assert_eq!(
        tcp_in(&mut nat, ext, TcpFlags::SYN_ACK, secs(1)),
        Verdict::Forward
    );
    tcp_pair(&mut nat, TcpFlags::ACK, secs(2));
    assert_eq!(nat.mappings()[0].expires, secs(2 + 7440));
    expire_all(&mut nat, secs(7441));
    assert_eq!(nat.len(), 1);
    assert_eq!(
        tcp_in(&mut nat, ext, TcpFlags::ACK, secs(7441)),
        Verdict::Forward
    );
    expire_all(&mut nat, secs(7441 + 7440));
    assert!(nat.is_empty());
}

#[test]
fn tcp_fin_and_rst_move_to_the_transitory_timeout() {
    for (out_flags, in_flags) in [
        (TcpFlags::FIN_ACK, TcpFlags::FIN_ACK),
        (TcpFlags::RST, TcpFlags::ACK),
    ] {
        let mut nat = testing::nat();
        let ext = tcp_pair(&mut nat, TcpFlags::SYN, T0);
        assert_eq!(
            tcp_in(&mut nat, ext, TcpFlags::SYN_ACK, T0),
            Verdict::Forward
        );
        tcp_pair(&mut nat, out_flags, secs(10));
        assert_eq!(nat.mappings()[0].expires, secs(10 + 240));
        if in_flags == TcpFlags::FIN_ACK {
            assert_eq!(tcp_in(&mut nat, ext, in_flags, secs(11)), Verdict::Forward);
            assert_eq!(nat.mappings()[0].expires, secs(11 + 240));
        }
        expire_all(&mut nat, secs(300));
        assert!(nat.is_empty());
    }
}

#[test]
fn tcp_simultaneous_open_is_established() {
    let mut cfg = testing::config();
    cfg.filtering = Filtering::AddressAndPortDependent;
    let mut nat = testing::nat_with(cfg);
    let ext = tcp_pair(&mut nat, TcpFlags::SYN, T0);
    // The peer's own SYN (no ACK) crosses ours.
    assert_eq!(
        tcp_in(&mut nat, ext, TcpFlags::SYN, secs(1)),
        Verdict::Forward
    );
    tcp_pair(&mut nat, TcpFlags::SYN_ACK, secs(2));
    assert_eq!(nat.mappings()[0].expires, secs(2 + 7440));
}

#[test]
fn tcp_unsolicited_syn_is_filtered_under_address_and_port_dependent_filtering() {
    let mut cfg = testing::config();
    cfg.filtering = Filtering::AddressAndPortDependent;
    let mut nat = testing::nat_with(cfg);
    let ext = tcp_pair(&mut nat, TcpFlags::SYN, T0);
    let mut p = testing::tcp(sa(SERVER2, 80), ext, TcpFlags::SYN, b"");
    assert_eq!(nat.inbound(&mut p, T0), Verdict::Drop(DropReason::Filtered));
}

#[test]
fn icmp_echo_identifier_is_mapped_like_a_port() {
    let mut nat = testing::nat();
    let mut a = testing::echo_request(GUEST, SERVER, 77, 1, b"ping");
    let mut b = testing::echo_request(GUEST2, SERVER, 77, 1, b"ping");
    assert_eq!(nat.outbound(&mut a, T0), Verdict::Forward);
    assert_eq!(nat.outbound(&mut b, T0), Verdict::Forward);
    assert!(
        testing::checksums_match_full_recompute(&a) && testing::checksums_match_full_recompute(&b)
    );
    let (ia, ib) = (testing::src(&a).port(), testing::src(&b).port());
    assert_eq!(ia, 77);
    assert_ne!(ib, 77);
    assert_eq!(*testing::src(&b).ip(), EXTERNAL);
    let mut rb = testing::echo_reply(SERVER, EXTERNAL, ib, 1, b"ping");
    assert_eq!(nat.inbound(&mut rb, T0), Verdict::Forward);
    assert_eq!(testing::dst(&rb), sa(GUEST2, 77));
    assert!(testing::checksums_match_full_recompute(&rb));
    // Unsolicited echo requests to the external address are not translated.
    let mut req = testing::echo_request(SERVER, EXTERNAL, ib, 1, b"x");
    assert_eq!(
        nat.inbound(&mut req, T0),
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn icmp_query_timeout_is_60_seconds() {
    let mut nat = testing::nat();
    let mut a = testing::echo_request(GUEST, SERVER, 77, 1, b"ping");
    assert_eq!(nat.outbound(&mut a, T0), Verdict::Forward);
    assert_eq!(nat.mappings()[0].expires, secs(60));
    let mut r = testing::echo_reply(SERVER, EXTERNAL, 77, 1, b"ping");
    assert_eq!(
        nat.inbound(&mut r, secs(61)),
        Verdict::Drop(DropReason::NoMapping)
    );
    expire_all(&mut nat, secs(60));
    assert!(nat.is_empty());
}

fn assert_error_translated_inbound(
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    quote_full: bool,
    tcp: bool,
) {
    let mut nat = testing::nat();
    let mut o = if tcp {
        testing::tcp(sa(GUEST, 41000), sa(SERVER, 80), TcpFlags::SYN, b"")
    } else {
        testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"query")
    };
    assert_eq!(nat.outbound(&mut o, T0), Verdict::Forward);
    let quoted = if quote_full {
        o.clone()
    } else {
        testing::truncate_for_error(&o)
    };
    let router = Ipv4Addr::new(198, 18, 1, 1);
    let mut e = testing::icmp_error(router, EXTERNAL, icmp_type, code, rest, &quoted);
    assert_eq!(
        nat.inbound(&mut e, secs(1)),
        Verdict::Forward,
        "type {icmp_type} code {code}"
    );
    assert!(
        testing::checksums_match_full_recompute(&e),
        "type {icmp_type} code {code}"
    );
    assert_eq!(testing::dst(&e).ip(), &GUEST);
    assert_eq!(testing::src(&e).ip(), &router);
    let local = if tcp {
        sa(GUEST, 41000)
    } else {
        sa(GUEST, 5000)
    };
    assert_eq!(testing::embedded_src(&e), local);
    assert_eq!(
        testing::embedded_dst(&e),
        if tcp { sa(SERVER, 80) } else { sa(SERVER, 53) }
    );
    // The ICMP type, code and rest of header (e.g. the next-hop MTU) are kept.
    let ip = Ipv4Packet::new_checked(&e[..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmp_type, code));
    let (ident, seq) = (
        icmp.echo_ident().to_be_bytes(),
        icmp.echo_seq_no().to_be_bytes(),
    );
    assert_eq!([ident[0], ident[1], seq[0], seq[1]], rest);
    // Errors don't refresh the mapping.
    assert!(nat.mappings()[0].expires < secs(7000));
}

#[test]
fn icmp_errors_inbound_are_translated_with_embedded_headers_rfc5508() {
    // Port unreachable quoting the whole UDP datagram.
    assert_error_translated_inbound(3, 3, [0; 4], true, false);
    // Fragmentation needed with a next-hop MTU, truncated quote.
    assert_error_translated_inbound(3, 4, [0, 0, 0x05, 0x00], false, false);
    // Time exceeded quoting a TCP SYN truncated to 8 bytes (no TCP checksum).
    assert_error_translated_inbound(11, 0, [0; 4], false, true);
    // Parameter problem with a pointer.
    assert_error_translated_inbound(12, 0, [8, 0, 0, 0], true, true);
}

#[test]
fn icmp_error_about_an_echo_request_is_translated() {
    let mut nat = testing::nat();
    let mut a = testing::echo_request(GUEST2, SERVER, 9, 1, b"tr");
    let mut b = testing::echo_request(GUEST, SERVER, 9, 1, b"tr");
    assert_eq!(nat.outbound(&mut a, T0), Verdict::Forward);
    assert_eq!(nat.outbound(&mut b, T0), Verdict::Forward);
    let router = Ipv4Addr::new(198, 18, 1, 1);
    let mut e = testing::icmp_error(router, EXTERNAL, 11, 0, [0; 4], &b);
    assert_eq!(nat.inbound(&mut e, T0), Verdict::Forward);
    assert!(testing::checksums_match_full_recompute(&e));
    assert_eq!(testing::embedded_src(&e), sa(GUEST, 9));
    assert_eq!(testing::dst(&e).ip(), &GUEST);
}

#[test]
fn icmp_error_outbound_from_the_guest_is_translated() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 5353,
        internal: sa(GUEST, 53),
    })
    .unwrap();
    let mut q = testing::udp(sa(SERVER, 4444), sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.inbound(&mut q, T0), Verdict::Forward);
    assert_eq!(testing::dst(&q), sa(GUEST, 53));
    // The guest answers port unreachable about the packet it received.
    let mut e = testing::icmp_error(GUEST, SERVER, 3, 3, [0; 4], &q);
    assert_eq!(nat.outbound(&mut e, T0), Verdict::Forward);
    assert!(testing::checksums_match_full_recompute(&e));
    assert_eq!(testing::src(&e).ip(), &EXTERNAL);
    assert_eq!(testing::dst(&e).ip(), &SERVER);
    assert_eq!(testing::embedded_src(&e), sa(SERVER, 4444));
    assert_eq!(testing::embedded_dst(&e), sa(EXTERNAL, 5353));
}

#[test]
fn icmp_error_matching_no_mapping_is_dropped() {
    let mut nat = testing::nat();
    let stray = testing::udp(sa(EXTERNAL, 6000), sa(SERVER, 53), b"q");
    let mut e = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &stray);
    assert_eq!(
        nat.inbound(&mut e, T0),
        Verdict::Drop(DropReason::IcmpNoMapping)
    );
    let stray_in = testing::udp(sa(SERVER, 53), sa(GUEST, 6000), b"q");
    let mut e = testing::icmp_error(GUEST, SERVER, 3, 3, [0; 4], &stray_in);
    assert_eq!(
        nat.outbound(&mut e, T0),
        Verdict::Drop(DropReason::IcmpForgedQuote)
    );
    // Truncated beyond the embedded ports.
    let mut short = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &stray[..24]);
    assert_eq!(
        nat.inbound(&mut short, T0),
        Verdict::Drop(DropReason::IcmpNoMapping)
    );
    assert_eq!(drops(&nat, DropReason::IcmpNoMapping), 2);
    assert_eq!(drops(&nat, DropReason::IcmpForgedQuote), 1);
}

#[test]
fn inbound_packets_from_impossible_sources_are_dropped_and_counted() {
    let mut nat = testing::nat();
    let ext = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let ext_port = testing::src(&ext).port();
    let to_mapping = sa(EXTERNAL, ext_port);
    // Endpoint-independent filtering: any outside host reaches the mapping.
    let mut fine = testing::udp(sa(SERVER2, 53), to_mapping, b"ok");
    assert_eq!(nat.inbound(&mut fine, T0), Verdict::Forward);
    let spoofed = [
        GATEWAY,                         // the gateway's DNS
        Ipv4Addr::new(192, 168, 64, 77), // another address of the guest network
        GUEST,                           // the guest itself
        EXTERNAL,                        // the NAT's own address
        Ipv4Addr::new(127, 0, 0, 1),
        Ipv4Addr::new(0, 1, 2, 3),
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(239, 255, 255, 250),
        Ipv4Addr::new(240, 0, 0, 1),
        Ipv4Addr::BROADCAST,
    ];
    for (i, &src) in spoofed.iter().enumerate() {
        let mut p = testing::udp(sa(src, 53), to_mapping, b"evil");
        let before = p.clone();
        assert_eq!(
            nat.inbound(&mut p, T0),
            Verdict::Drop(DropReason::InboundSpoofedSource),
            "{src}"
        );
        assert_eq!(p, before, "a dropped packet is left as it came");
        assert_eq!(drops(&nat, DropReason::InboundSpoofedSource), i as u64 + 1);
    }
    // Neighbours of the ranges pass.
    for src in [
        Ipv4Addr::new(1, 0, 0, 1),
        Ipv4Addr::new(126, 255, 255, 255),
        Ipv4Addr::new(128, 0, 0, 1),
        Ipv4Addr::new(223, 255, 255, 254),
        Ipv4Addr::new(192, 168, 65, 1),
        Ipv4Addr::new(100, 64, 0, 1),
    ] {
        let mut p = testing::udp(sa(src, 53), to_mapping, b"ok");
        assert_eq!(nat.inbound(&mut p, T0), Verdict::Forward, "{src}");
    }
    // The batch path and ICMP errors (the outer source) are checked too.
    let mut batch = [testing::udp(sa(GATEWAY, 53), to_mapping, b"x")];
    let mut v = [Verdict::Forward];
    nat.inbound_batch(&mut batch, T0, &mut v);
    assert_eq!(v[0], Verdict::Drop(DropReason::InboundSpoofedSource));
    let mut e = testing::icmp_error(GATEWAY, EXTERNAL, 3, 3, [0; 4], &ext);
    assert_eq!(
        nat.inbound(&mut e, T0),
        Verdict::Drop(DropReason::InboundSpoofedSource)
    );
    let mut e = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &ext);
    assert_eq!(nat.inbound(&mut e, T0), Verdict::Forward);
}

#[test]
fn hairpinning_still_works_with_the_inbound_source_check() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 5353,
        internal: sa(GUEST2, 53),
    })
    .unwrap();
    let mut q = testing::udp(sa(GUEST, 40000), sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Hairpin);
    assert_eq!(*testing::src(&q).ip(), EXTERNAL);
    assert_eq!(drops(&nat, DropReason::InboundSpoofedSource), 0);
}

#[test]
fn guest_icmp_errors_must_quote_a_flow_it_has() {
    let mut nat = testing::nat();
    // The guest has a mapping (GUEST:5000) and one flow, with SERVER:53.
    let ext = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let ext_port = testing::src(&ext).port();
    let mut reply = testing::udp(sa(SERVER, 53), sa(EXTERNAL, ext_port), b"r");
    assert_eq!(nat.inbound(&mut reply, T0), Verdict::Forward);
    // An error about the packet it really received goes back to SERVER.
    let mut e = testing::icmp_error(GUEST, SERVER, 3, 3, [0; 4], &reply);
    assert_eq!(nat.outbound(&mut e, T0), Verdict::Forward);
    assert_eq!(*testing::dst(&e).ip(), SERVER);
    assert_eq!(testing::embedded_dst(&e), sa(EXTERNAL, ext_port));
    // A forged remote flow on the same mapping: SERVER2 never sent anything.
    let forged = testing::udp(sa(SERVER2, 4444), sa(GUEST, 5000), b"f");
    let mut e = testing::icmp_error(GUEST, SERVER2, 3, 3, [0; 4], &forged);
    let before = e.clone();
    assert_eq!(
        nat.outbound(&mut e, T0),
        Verdict::Drop(DropReason::IcmpForgedQuote)
    );
    assert_eq!(e, before);
    // A real quote sent to someone else than the quoted source.
    let mut e = testing::icmp_error(GUEST, SERVER2, 3, 3, [0; 4], &reply);
    assert_eq!(
        nat.outbound(&mut e, T0),
        Verdict::Drop(DropReason::IcmpForgedQuote)
    );
    // A forged quote on a port the guest never mapped.
    let forged = testing::udp(sa(SERVER, 53), sa(GUEST, 6000), b"f");
    let mut e = testing::icmp_error(GUEST, SERVER, 3, 3, [0; 4], &forged);
    assert_eq!(
        nat.outbound(&mut e, T0),
        Verdict::Drop(DropReason::IcmpForgedQuote)
    );
    assert_eq!(drops(&nat, DropReason::IcmpForgedQuote), 3);
    // Once the flow is swept, its errors are refused too.
    let later = secs(3600);
    let _ = nat.expire(later, 1024);
    let mut e = testing::icmp_error(GUEST, SERVER, 3, 3, [0; 4], &reply);
    assert_eq!(
        nat.outbound(&mut e, later),
        Verdict::Drop(DropReason::IcmpForgedQuote)
    );
}

#[test]
fn fragments_outbound_are_all_translated() {
    let mut nat = testing::nat();
    let whole = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), &[7u8; 3000]);
    let frags = testing::fragment(&whole, 1400);
    assert_eq!(frags.len(), 3);
    for mut f in frags {
        assert_eq!(nat.outbound(&mut f, T0), Verdict::Forward);
        assert!(testing::checksums_match_full_recompute(&f));
        assert_eq!(testing::src(&f).ip(), &EXTERNAL);
        assert_eq!(testing::dst(&f).ip(), &SERVER);
    }
    assert_eq!(nat.fragments(), 1);
}

/// Reassembles fragments (in offset order) and returns the whole datagram.
fn reassemble(frags: &[Vec<u8>]) -> Vec<u8> {
    let first = Ipv4Packet::new_checked(&frags[0][..]).unwrap();
    let mut v = frags[0][..first.header_len()].to_vec();
    for f in frags {
        v.extend_from_slice(Ipv4Packet::new_checked(&f[..]).unwrap().payload());
    }
    let total = v.len() as u16;
    let mut ip = Ipv4Packet::new_unchecked(&mut v[..]);
    ip.set_total_len(total);
    ip.set_dont_frag(false);
    ip.set_more_frags(false);
    ip.set_frag_offset(0);
    ip.fill_checksum();
    v
}

#[test]
fn fragments_inbound_are_all_translated_and_reassemble_to_a_valid_datagram() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let answer = testing::udp(sa(SERVER, 53), testing::src(&o), &[9u8; 4000]);
    let mut frags = testing::fragment(&answer, 1480);
    for f in &mut frags {
        assert_eq!(nat.inbound(f, secs(1)), Verdict::Forward);
        assert_eq!(testing::dst(f).ip(), &GUEST);
        assert!(testing::checksums_match_full_recompute(f));
    }
    let whole = reassemble(&frags);
    assert_eq!(testing::dst(&whole), sa(GUEST, 5000));
    assert!(testing::checksums_match_full_recompute(&whole));
}

#[test]
fn fragments_arriving_before_the_first_are_held_and_released_translated_rfc4787_req14() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let answer = testing::udp(sa(SERVER, 53), testing::src(&o), &[9u8; 4000]);
    let frags = testing::fragment(&answer, 1480);
    assert_eq!(frags.len(), 3);
    // Last, middle, then first.
    let (mut f0, mut f1, mut f2) = (frags[0].clone(), frags[1].clone(), frags[2].clone());
    assert_eq!(nat.inbound(&mut f2, T0), Verdict::Held);
    assert_eq!(f2, frags[2], "a held packet's buffer is left alone");
    assert_eq!(nat.inbound(&mut f1, T0), Verdict::Held);
    assert_eq!(nat.held_fragments(), (2, frags[1].len() + frags[2].len()));
    let mut buf = vec![0u8; 2000];
    assert_eq!(nat.poll_released(Direction::Inbound, &mut buf), None);
    assert_eq!(nat.inbound(&mut f0, T0), Verdict::Forward);
    assert_eq!(nat.poll_released(Direction::Outbound, &mut buf), None);
    let mut out = vec![f0];
    while let Some(r) = nat.poll_released(Direction::Inbound, &mut buf) {
        assert_eq!(r.verdict, Verdict::Forward);
        let p = buf[..r.len].to_vec();
        assert_eq!(testing::dst(&p).ip(), &GUEST);
        assert!(testing::checksums_match_full_recompute(&p));
        out.push(p);
    }
    assert_eq!(out.len(), 3);
    // Released in arrival order (last, then middle): reassemble by offset.
    out.swap(1, 2);
    let whole = reassemble(&out);
    assert_eq!(testing::dst(&whole), sa(GUEST, 5000));
    assert!(testing::checksums_match_full_recompute(&whole));
    assert_eq!(nat.held_fragments(), (0, 0));
    assert_eq!(nat.stats().fragments_held, 2);
    assert_eq!(nat.stats().fragments_released, 2);
    assert_eq!(nat.stats().inbound_forwarded, 3);
}

#[test]
fn outbound_fragments_out_of_order_are_held_and_released_translated() {
    let mut nat = testing::nat();
    let whole = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), &[7u8; 3000]);
    let mut frags = testing::fragment(&whole, 1400);
    assert_eq!(nat.outbound(&mut frags[1], T0), Verdict::Held);
    assert_eq!(nat.outbound(&mut frags[0], T0), Verdict::Forward);
    // In-order fragments after the first are translated directly.
    assert_eq!(nat.outbound(&mut frags[2], T0), Verdict::Forward);
    let mut buf = [0u8; 1500];
    let r = nat.poll_released(Direction::Outbound, &mut buf).unwrap();
    assert_eq!(r.verdict, Verdict::Forward);
    frags[1] = buf[..r.len].to_vec();
    assert_eq!(nat.poll_released(Direction::Outbound, &mut buf), None);
    for f in &frags {
        assert_eq!(testing::src(f).ip(), &EXTERNAL);
        assert!(testing::checksums_match_full_recompute(f));
    }
    let w = reassemble(&frags);
    assert_eq!(testing::src(&w), testing::src(&frags[0]));
    assert!(testing::checksums_match_full_recompute(&w));
}

#[test]
fn held_fragments_of_a_hairpinned_datagram_are_released_as_hairpin() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 8080,
        internal: sa(GUEST2, 80),
    })
    .unwrap();
    let whole = testing::udp(sa(GUEST, 5000), sa(EXTERNAL, 8080), &[3u8; 2000]);
    let mut frags = testing::fragment(&whole, 1400);
    assert_eq!(nat.outbound(&mut frags[1], T0), Verdict::Held);
    assert_eq!(nat.outbound(&mut frags[0], T0), Verdict::Hairpin);
    let mut buf = [0u8; 1500];
    let r = nat.poll_released(Direction::Outbound, &mut buf).unwrap();
    assert_eq!(r.verdict, Verdict::Hairpin);
    frags[1] = buf[..r.len].to_vec();
    let w = reassemble(&frags);
    assert_eq!(testing::dst(&w), sa(GUEST2, 80));
    assert!(testing::checksums_match_full_recompute(&w));
    assert_eq!(nat.stats().hairpinned, 2);
}

#[test]
fn held_fragments_are_bounded_in_count_and_bytes() {
    let mut cfg = testing::config();
    cfg.max_held_fragments = 2;
    cfg.max_held_bytes = 3000;
    let mut nat = testing::nat_with(cfg);
    let later_from = |from: Ipv4Addr, id: u16, len: usize| {
        let mut w = testing::udp(sa(from, 5000), sa(SERVER, 53), &vec![1u8; len]);
        testing::set_ip_id(&mut w, id);
        testing::fragment(&w, 1000).pop().unwrap()
    };
    let later = |id: u16, len: usize| later_from(GUEST, id, len);
    // Two sources: one source may have only half of the pool waiting.
    let mut a = later(1, 1500);
    let mut b = later_from(GUEST2, 2, 1500);
    let mut c = later(3, 1500);
    assert_eq!(nat.outbound(&mut a, T0), Verdict::Held);
    assert_eq!(nat.outbound(&mut b, T0), Verdict::Held);
    assert_eq!(
        nat.outbound(&mut c, T0),
        Verdict::Drop(DropReason::FragmentsHeldFull)
    );
    assert_eq!(drops(&nat, DropReason::FragmentsHeldFull), 1);
    // Bytes: one fragment bigger than what is left.
    let mut nat = testing::nat_with(NatConfig {
        max_held_fragments: 10,
        max_held_bytes: 1000,
        ..testing::config()
    });
    let mut small = later(4, 1200); // 20 + 8 + 1200 - 1000 = 228 bytes on the wire
    let mut big = later(5, 1900); // 928 bytes
    assert_eq!(nat.outbound(&mut small, T0), Verdict::Held);
    assert_eq!(
        nat.outbound(&mut big, T0),
        Verdict::Drop(DropReason::FragmentsHeldFull)
    );
    assert!(nat.held_fragments().1 <= 1000);
}

#[test]
fn held_fragments_expire_with_the_fragment_timeout_and_are_counted() {
    let mut nat = testing::nat();
    let mut w = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), &[1u8; 2000]);
    testing::set_ip_id(&mut w, 77);
    let mut frags = testing::fragment(&w, 1400);
    assert_eq!(nat.outbound(&mut frags[1], T0), Verdict::Held);
    assert_eq!(nat.next_deadline(), Some(secs(30)));
    assert_eq!(nat.expire(secs(29), 16), 0);
    assert_eq!(nat.held_fragments().0, 1);
    let _ = nat.expire(secs(30), 16);
    assert_eq!(nat.held_fragments(), (0, 0));
    assert_eq!(drops(&nat, DropReason::Fragment), 1);
    assert_eq!(nat.next_deadline(), None);
    // The first fragment now comes alone; nothing is released.
    assert_eq!(nat.outbound(&mut frags[0], secs(31)), Verdict::Forward);
    let mut buf = [0u8; 1500];
    assert_eq!(nat.poll_released(Direction::Outbound, &mut buf), None);
    // Released but never drained: dropped (counted) after the timeout too.
    let mut w2 = w.clone();
    testing::set_ip_id(&mut w2, 78);
    let mut g = testing::fragment(&w2, 1400);
    assert_eq!(nat.outbound(&mut g[1], secs(40)), Verdict::Held);
    assert_eq!(nat.outbound(&mut g[0], secs(41)), Verdict::Forward);
    assert_eq!(nat.held_fragments().0, 1);
    let _ = nat.expire(secs(70), 16);
    assert_eq!(nat.held_fragments(), (0, 0));
    assert_eq!(drops(&nat, DropReason::Fragment), 2);
}

#[test]
fn held_fragments_are_dropped_and_counted_when_their_first_fragment_is_dropped() {
    let mut nat = testing::nat();
    // No mapping for this port: the first fragment will be dropped.
    let answer = testing::udp(sa(SERVER, 53), sa(EXTERNAL, 40000), &[9u8; 3000]);
    let mut frags = testing::fragment(&answer, 1480);
    assert_eq!(nat.inbound(&mut frags[2], T0), Verdict::Held);
    assert_eq!(nat.inbound(&mut frags[1], T0), Verdict::Held);
    assert_eq!(
        nat.inbound(&mut frags[0], T0),
        Verdict::Drop(DropReason::NoMapping)
    );
    assert_eq!(nat.held_fragments(), (0, 0));
    assert_eq!(drops(&nat, DropReason::Fragment), 2);
    let mut buf = [0u8; 1500];
    assert_eq!(nat.poll_released(Direction::Inbound, &mut buf), None);
}

#[test]
fn released_fragment_longer_than_the_buffer_is_dropped_and_counted() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let answer = testing::udp(sa(SERVER, 53), testing::src(&o), &[9u8; 4000]);
    let mut frags = testing::fragment(&answer, 1480);
    let last_len = frags[2].len();
    assert!(last_len < 1500);
    assert_eq!(nat.inbound(&mut frags[1], T0), Verdict::Held); // 1500 bytes
    assert_eq!(nat.inbound(&mut frags[2], T0), Verdict::Held);
    assert_eq!(nat.inbound(&mut frags[0], T0), Verdict::Forward);
    let mut buf = vec![0u8; last_len];
    let r = nat.poll_released(Direction::Inbound, &mut buf).unwrap();
    assert_eq!(r.len, last_len);
    assert_eq!(drops(&nat, DropReason::ReleaseBufferTooShort), 1);
    assert_eq!(nat.poll_released(Direction::Inbound, &mut buf), None);
    assert_eq!(nat.held_fragments(), (0, 0));
}

#[test]
fn holding_can_be_switched_off_and_its_caps_are_validated() {
    let bad = |f: usize, b: usize| {
        Nat::new(NatConfig {
            max_held_fragments: f,
            max_held_bytes: b,
            ..NatConfig::default()
        })
        .err()
    };
    assert!(matches!(bad(0, 1000), Some(ConfigError::Invalid(_))));
    assert!(matches!(bad(4, 0), Some(ConfigError::Invalid(_))));
    assert!(matches!(bad(65_537, 1000), Some(ConfigError::Invalid(_))));
    assert!(matches!(
        bad(4, (64 << 20) + 1),
        Some(ConfigError::Invalid(_))
    ));
    assert_eq!(bad(65_536, 64 << 20), None);
    let mut nat = testing::nat_with(NatConfig {
        max_held_fragments: 0,
        max_held_bytes: 0,
        ..testing::config()
    });
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let answer = testing::udp(sa(SERVER, 53), testing::src(&o), &[9u8; 4000]);
    let mut last = testing::fragment(&answer, 1480).pop().unwrap();
    assert_eq!(
        nat.inbound(&mut last, T0),
        Verdict::Drop(DropReason::Fragment)
    );
    assert_eq!(drops(&nat, DropReason::Fragment), 1);
}

#[test]
fn fragment_state_is_bounded_in_count_and_time() {
    let mut cfg = testing::config();
    cfg.max_fragments = 2;
    let mut nat = testing::nat_with(cfg);
    let mut lasts = Vec::new();
    for port in [5000, 5001, 5002] {
        let mut whole = testing::udp(sa(GUEST, port), sa(SERVER, 53), &[1u8; 2000]);
        testing::set_ip_id(&mut whole, port);
        let mut frags = testing::fragment(&whole, 1400);
        assert_eq!(nat.outbound(&mut frags[0], T0), Verdict::Forward);
        lasts.push(frags.pop().unwrap());
    }
    assert_eq!(nat.fragments(), 2);
    // The third datagram's state was refused: its later fragment waits for a
    // first fragment that has gone, and is dropped when that wait expires.
    assert_eq!(nat.outbound(&mut lasts[2], T0), Verdict::Held);
    assert_eq!(nat.outbound(&mut lasts[0], T0), Verdict::Forward);
    // State lives for the fragment timeout only.
    assert_eq!(nat.next_deadline(), Some(Instant::from_secs(30)));
    nat.expire(secs(30), 16);
    assert_eq!(nat.fragments(), 0);
    assert_eq!(nat.held_fragments(), (0, 0));
    assert_eq!(drops(&nat, DropReason::Fragment), 1);
    assert_eq!(nat.outbound(&mut lasts[1], secs(30)), Verdict::Held);
    nat.expire(secs(60), 16);
    assert_eq!(drops(&nat, DropReason::Fragment), 2);
}

#[test]
fn hairpinning_to_a_mapped_port_loops_back_rfc4787_req9() {
    let mut nat = testing::nat();
    // GUEST2 has a mapping (e.g. learnt through STUN).
    let o = out_udp(&mut nat, sa(GUEST2, 6000), sa(SERVER, 3478), T0);
    let ext2 = testing::src(&o);
    let mut p = testing::udp(sa(GUEST, 7000), ext2, b"hairpin");
    assert_eq!(nat.outbound(&mut p, T0), Verdict::Hairpin);
    assert!(testing::checksums_match_full_recompute(&p));
    assert_eq!(testing::dst(&p), sa(GUEST2, 6000));
    // The receiver sees the sender's external address and port.
    let ext1 = testing::src(&p);
    assert_eq!(*ext1.ip(), EXTERNAL);
    // And the answer loops back too.
    let mut r = testing::udp(sa(GUEST2, 6000), ext1, b"back");
    assert_eq!(nat.outbound(&mut r, T0), Verdict::Hairpin);
    assert_eq!(testing::dst(&r), sa(GUEST, 7000));
    assert_eq!(testing::src(&r), ext2);
    assert_eq!(nat.stats().hairpinned, 2);
}

#[test]
fn hairpinning_to_a_forwarded_port_loops_back() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Tcp,
        external_port: 8080,
        internal: sa(GUEST2, 80),
    })
    .unwrap();
    let mut syn = testing::tcp(sa(GUEST, 40000), sa(EXTERNAL, 8080), TcpFlags::SYN, b"");
    assert_eq!(nat.outbound(&mut syn, T0), Verdict::Hairpin);
    assert_eq!(testing::dst(&syn), sa(GUEST2, 80));
    assert!(testing::checksums_match_full_recompute(&syn));
    let client = testing::src(&syn);
    let mut synack = testing::tcp(sa(GUEST2, 80), client, TcpFlags::SYN_ACK, b"");
    assert_eq!(nat.outbound(&mut synack, T0), Verdict::Hairpin);
    assert_eq!(testing::src(&synack), sa(EXTERNAL, 8080));
    assert_eq!(testing::dst(&synack), sa(GUEST, 40000));
    assert!(testing::checksums_match_full_recompute(&synack));
}

#[test]
fn port_forward_shows_the_real_client_and_replies_go_back() {
    let mut nat = testing::nat();
    let fwd = PortForward {
        protocol: Protocol::Tcp,
        external_port: 2222,
        internal: sa(GUEST, 22),
    };
    nat.add_forward(fwd).unwrap();
    let client = sa(SERVER, 51000);
    let mut syn = testing::tcp(client, sa(EXTERNAL, 2222), TcpFlags::SYN, b"");
    assert_eq!(nat.inbound(&mut syn, T0), Verdict::Forward);
    assert_eq!(testing::src(&syn), client);
    assert_eq!(testing::dst(&syn), sa(GUEST, 22));
    assert!(testing::checksums_match_full_recompute(&syn));
    let mut synack = testing::tcp(sa(GUEST, 22), client, TcpFlags::SYN_ACK, b"");
    assert_eq!(nat.outbound(&mut synack, T0), Verdict::Forward);
    assert_eq!(testing::src(&synack), sa(EXTERNAL, 2222));
    assert_eq!(testing::dst(&synack), client);
    // Removed at runtime: new clients are refused; the port is free again.
    assert!(nat.remove_forward(Protocol::Tcp, 2222));
    assert!(!nat.remove_forward(Protocol::Tcp, 2222));
    let mut other = testing::tcp(sa(SERVER2, 51000), sa(EXTERNAL, 2222), TcpFlags::SYN, b"");
    let mut cfg_nat = testing::nat_with(NatConfig {
        filtering: Filtering::AddressAndPortDependent,
        ..testing::config()
    });
    cfg_nat.add_forward(fwd).unwrap();
    assert!(cfg_nat.remove_forward(Protocol::Tcp, 2222));
    assert_eq!(
        cfg_nat.inbound(&mut other, T0),
        Verdict::Drop(DropReason::NoMapping)
    );
    // UDP forward with the same port number is independent of TCP.
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 2222,
        internal: sa(GUEST, 22),
    })
    .unwrap();
}

/// `remove_forward` leaves the sessions set up through a forward, and with
/// endpoint-independent filtering their mapping still lets new clients in; `close_forward`
/// ends them, so the port stops answering at once (the control socket's `forward remove`).
#[test]
fn closing_a_forward_ends_its_sessions_and_refuses_new_clients() {
    let fwd = PortForward {
        protocol: Protocol::Tcp,
        external_port: 2222,
        internal: sa(GUEST, 22),
    };
    let session = |nat: &mut Nat, client: SocketAddrV4| {
        let mut syn = testing::tcp(client, sa(EXTERNAL, 2222), TcpFlags::SYN, b"");
        nat.inbound(&mut syn, T0)
    };
    for close in [false, true] {
        let mut nat = testing::nat();
        nat.add_forward(fwd).unwrap();
        // The guest's own outbound flow from another port stays in either case.
        let _ = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
        for port in 51000..51010 {
            assert_eq!(session(&mut nat, sa(SERVER, port)), Verdict::Forward);
        }
        assert_eq!(nat.len(), 11);
        // The forward's port and the guest's own mapping.
        assert_eq!(nat.ports_in_use(false), 2);
        assert_eq!(nat.ports_in_use(true), 0);
        let removed = if close {
            nat.close_forward(Protocol::Tcp, 2222)
        } else {
            nat.remove_forward(Protocol::Tcp, 2222)
        };
        assert!(removed);
        let next = session(&mut nat, sa(SERVER2, 40000));
        if close {
            assert_eq!(nat.len(), 1, "the forward's sessions are gone");
            assert_eq!(next, Verdict::Drop(DropReason::NoMapping));
            assert_eq!(nat.ports_in_use(false), 1, "the forward's port is free");
            assert!(!nat.close_forward(Protocol::Tcp, 2222));
            // The port is free for a new forward.
            nat.add_forward(fwd).unwrap();
        } else {
            assert_eq!(nat.len(), 11, "sessions live on");
            assert_eq!(
                next,
                Verdict::Forward,
                "the sessions' mapping admits a new client"
            );
        }
    }
}

#[test]
fn port_forward_rules_are_validated() {
    let mut nat = testing::nat();
    let ok = PortForward {
        protocol: Protocol::Udp,
        external_port: 4000,
        internal: sa(GUEST, 4000),
    };
    nat.add_forward(ok).unwrap();
    assert_eq!(nat.add_forward(ok), Err(RuleError::PortInUse(4000)));
    let icmp = PortForward {
        protocol: Protocol::Icmp,
        ..ok
    };
    assert!(matches!(nat.add_forward(icmp), Err(RuleError::Invalid(_))));
    let outside = PortForward {
        internal: sa(SERVER, 1),
        external_port: 4001,
        ..ok
    };
    assert!(matches!(
        nat.add_forward(outside),
        Err(RuleError::Invalid(_))
    ));
    // A port held by a live dynamic mapping can't be forwarded.
    let o = out_udp(&mut nat, sa(GUEST2, 45000), sa(SERVER, 53), T0);
    let busy = PortForward {
        external_port: testing::src(&o).port(),
        ..ok
    };
    assert_eq!(nat.add_forward(busy), Err(RuleError::PortInUse(45000)));
    // And dynamic mappings never take a forwarded port.
    let mut p = testing::udp(sa(GUEST2, 4000), sa(SERVER, 53), b"x");
    assert_eq!(nat.outbound(&mut p, T0), Verdict::Forward);
    assert_ne!(testing::src(&p).port(), 4000);
}

#[test]
fn redirect_sends_gateway_dns_upstream_and_replies_look_local() {
    let mut nat = testing::nat();
    let from = sa(GATEWAY, 53);
    let to = sa(Ipv4Addr::new(198, 18, 0, 53), 53);
    nat.add_redirect(Redirect {
        protocol: Protocol::Udp,
        from,
        to,
    })
    .unwrap();
    let mut q = testing::udp(sa(GUEST, 5353), from, b"query");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Forward);
    assert_eq!(testing::dst(&q), to);
    assert_eq!(*testing::src(&q).ip(), EXTERNAL);
    assert!(testing::checksums_match_full_recompute(&q));
    let mut a = testing::udp(to, testing::src(&q), b"answer");
    assert_eq!(nat.inbound(&mut a, T0), Verdict::Forward);
    assert_eq!(testing::src(&a), from);
    assert_eq!(testing::dst(&a), sa(GUEST, 5353));
    assert!(testing::checksums_match_full_recompute(&a));
    // The same guest port talking to the upstream directly is a separate flow.
    let mut direct = testing::udp(sa(GUEST, 5353), to, b"query");
    assert_eq!(nat.outbound(&mut direct, T0), Verdict::Forward);
    assert_ne!(testing::src(&direct), testing::src(&q));
    // ICMP port unreachable from the upstream reaches the guest as from `from`.
    let mut q2 = testing::udp(sa(GUEST, 5353), from, b"again");
    assert_eq!(nat.outbound(&mut q2, T0), Verdict::Forward);
    let mut e = testing::icmp_error(*to.ip(), EXTERNAL, 3, 3, [0; 4], &q2);
    assert_eq!(nat.inbound(&mut e, T0), Verdict::Forward);
    assert_eq!(testing::src(&e).ip(), &GATEWAY);
    assert_eq!(testing::embedded_dst(&e), from);
    assert!(testing::checksums_match_full_recompute(&e));
    // Rules: inside target invalid; duplicates refused; removal.
    let bad = Redirect {
        protocol: Protocol::Udp,
        from: sa(GATEWAY, 54),
        to: sa(GUEST2, 53),
    };
    assert!(matches!(nat.add_redirect(bad), Err(RuleError::Invalid(_))));
    assert!(
        nat.add_redirect(Redirect {
            protocol: Protocol::Udp,
            from,
            to
        })
        .is_err()
    );
    assert!(nat.remove_redirect(Protocol::Udp, from));
    assert!(!nat.remove_redirect(Protocol::Udp, from));
}

#[test]
fn inbound_lookup_tells_a_redirected_flow_from_a_direct_one_of_the_same_guest_endpoint() {
    // Inbound packets are matched through the external port's binding: a
    // redirected flow and a direct flow of one guest endpoint must each
    // answer only on their own port and only to their own remote.
    let mut cfg = testing::config();
    cfg.filtering = Filtering::AddressAndPortDependent;
    let mut nat = testing::nat_with(cfg);
    let from = sa(SERVER2, 53);
    let to = sa(SERVER, 53);
    nat.add_redirect(Redirect {
        protocol: Protocol::Udp,
        from,
        to,
    })
    .unwrap();
    let guest = sa(GUEST, 6000);
    let mut r = testing::udp(guest, from, b"redirected");
    assert_eq!(nat.outbound(&mut r, T0), Verdict::Forward);
    let q = testing::src(&r);
    // The guest also talks directly to the redirect's original destination.
    let mut d = testing::udp(guest, from, b"x");
    assert_eq!(nat.outbound(&mut d, T0), Verdict::Forward);
    assert_eq!(testing::src(&d), q, "same flow: the redirect applies again");
    let mut d2 = testing::udp(guest, to, b"direct");
    assert_eq!(nat.outbound(&mut d2, T0), Verdict::Forward);
    let p = testing::src(&d2);
    assert_ne!(p, q);
    // Replies on each port reach the guest, the redirected one from `from`.
    let mut a = testing::udp(to, q, b"a");
    assert_eq!(nat.inbound(&mut a, T0), Verdict::Forward);
    assert_eq!((testing::src(&a), testing::dst(&a)), (from, guest));
    let mut b = testing::udp(to, p, b"b");
    assert_eq!(nat.inbound(&mut b, T0), Verdict::Forward);
    assert_eq!((testing::src(&b), testing::dst(&b)), (to, guest));
    // `from` itself never sent anything on either port: filtered, although
    // (guest, from) is the internal-side key of the redirected flow.
    for port in [p, q] {
        let mut x = testing::udp(from, port, b"x");
        assert_eq!(
            nat.inbound(&mut x, T0),
            Verdict::Drop(DropReason::Filtered),
            "port {port}"
        );
    }
    // Once the flows expire, their ports and the redirect state are freed.
    let late = Instant::from_secs(100_000);
    while nat.next_deadline().is_some_and(|t| t <= late) {
        let _ = nat.expire(late, 64);
    }
    assert!(nat.is_empty());
    let mut stale = testing::udp(to, q, b"late");
    assert_eq!(
        nat.inbound(&mut stale, late),
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn zero_udp_checksum_stays_zero() {
    let mut nat = testing::nat();
    let mut p = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"nocsum");
    set_udp_checksum(&mut p, 0);
    assert_eq!(nat.outbound(&mut p, T0), Verdict::Forward);
    assert_eq!(udp_checksum(&p), 0);
    assert!(testing::checksums_match_full_recompute(&p));
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&p), b"nocsum");
    set_udp_checksum(&mut r, 0);
    assert_eq!(nat.inbound(&mut r, T0), Verdict::Forward);
    assert_eq!(udp_checksum(&r), 0);
}

#[test]
fn table_cap_refuses_new_flows_while_existing_ones_keep_working() {
    let mut cfg = testing::config();
    cfg.max_flows = 3;
    let mut nat = testing::nat_with(cfg);
    let a = out_udp(&mut nat, sa(GUEST, 1000 + 5000), sa(SERVER, 53), T0);
    out_udp(&mut nat, sa(GUEST, 6001), sa(SERVER, 53), T0);
    out_udp(&mut nat, sa(GUEST2, 6002), sa(SERVER, 53), T0);
    let mut p = testing::udp(sa(GUEST2, 6003), sa(SERVER, 53), b"x");
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::TableFull)
    );
    assert_eq!(nat.len(), 3);
    assert_eq!(drops(&nat, DropReason::TableFull), 1);
    out_udp(&mut nat, sa(GUEST, 6000), sa(SERVER, 53), T0);
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&a), b"r");
    assert_eq!(nat.inbound(&mut r, T0), Verdict::Forward);
}

#[test]
fn per_host_cap_refuses_new_flows_of_that_host_only() {
    let mut cfg = testing::config();
    cfg.max_flows_per_host = 2;
    let mut nat = testing::nat_with(cfg);
    out_udp(&mut nat, sa(GUEST, 6000), sa(SERVER, 53), T0);
    out_udp(&mut nat, sa(GUEST, 6001), sa(SERVER, 53), T0);
    let mut p = testing::udp(sa(GUEST, 6002), sa(SERVER, 53), b"x");
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::HostLimit)
    );
    assert_eq!(nat.host_flows(GUEST), 2);
    out_udp(&mut nat, sa(GUEST2, 6002), sa(SERVER, 53), T0);
    out_udp(&mut nat, sa(GUEST, 6000), sa(SERVER, 53), T0);
    assert_eq!(drops(&nat, DropReason::HostLimit), 1);
}

#[test]
fn spoofed_sources_are_dropped_and_counted() {
    let mut nat = testing::nat();
    let mut p = testing::udp(sa(Ipv4Addr::new(10, 0, 0, 1), 5000), sa(SERVER, 53), b"x");
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::SpoofedSource)
    );
    let mut p = testing::udp(sa(EXTERNAL, 5000), sa(SERVER, 53), b"x");
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::SpoofedSource)
    );
    assert_eq!(drops(&nat, DropReason::SpoofedSource), 2);
    assert!(nat.is_empty());
}

#[test]
fn malformed_and_unsupported_packets_are_counted_drops() {
    let mut nat = testing::nat();
    let good = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"x");
    for bad in [&good[..10], &good[..good.len() - 1]] {
        let mut b = bad.to_vec();
        assert_eq!(
            nat.outbound(&mut b, T0),
            Verdict::Drop(DropReason::Malformed)
        );
    }
    let mut badsum = good.clone();
    let mut ip = Ipv4Packet::new_unchecked(&mut badsum[..]);
    ip.set_checksum(ip.checksum() ^ 0xff00);
    assert_eq!(
        nat.outbound(&mut badsum, T0),
        Verdict::Drop(DropReason::Malformed)
    );
    // An IPv4 packet whose 4-byte payload is too short for a UDP header.
    let mut short_udp = good[..ipv4::HEADER_LEN + 4].to_vec();
    let mut ip = Ipv4Packet::new_unchecked(&mut short_udp[..]);
    ip.set_total_len((ipv4::HEADER_LEN + 4) as u16);
    ip.fill_checksum();
    assert_eq!(
        nat.outbound(&mut short_udp, T0),
        Verdict::Drop(DropReason::Malformed)
    );
    let mut gre = good.clone();
    let mut ip = Ipv4Packet::new_unchecked(&mut gre[..]);
    ip.set_protocol(47); // GRE
    ip.fill_checksum();
    assert_eq!(
        nat.outbound(&mut gre, T0),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    assert_eq!(drops(&nat, DropReason::Malformed), 4);
    // Trailing bytes past the IPv4 total length (link padding) are ignored.
    let mut padded = good.clone();
    padded.extend_from_slice(&[0xaa; 6]);
    assert_eq!(nat.outbound(&mut padded, T0), Verdict::Forward);
    assert_eq!(&padded[good.len()..], &[0xaa; 6]);
}

#[test]
fn expire_does_bounded_work_and_next_deadline_is_never_late() {
    let mut nat = testing::nat();
    assert_eq!(nat.next_deadline(), None);
    for port in 0..100u16 {
        out_udp(&mut nat, sa(GUEST, 20000 + port), sa(SERVER, 53), T0);
    }
    assert_eq!(nat.next_deadline(), Some(secs(300)));
    assert_eq!(nat.expire(secs(299), 1000), 0);
    assert_eq!(nat.len(), 100);
    let removed = nat.expire(secs(300), 10);
    assert!(removed > 0 && removed <= 10, "{removed}");
    assert_eq!(nat.len(), 100 - removed);
    // A sweep is under way: the deadline is due now.
    assert!(nat.next_deadline().unwrap() <= secs(300));
    assert_eq!(expire_all(&mut nat, secs(300)), 100 - removed);
    assert_eq!(nat.next_deadline(), None);
    assert_eq!(nat.stats().mappings_expired, 100);
}

#[test]
fn stats_count_verdicts_and_mappings_are_listable() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let mut r = testing::udp(sa(SERVER, 53), testing::src(&o), b"r");
    assert_eq!(nat.inbound(&mut r, T0), Verdict::Forward);
    let mut junk = vec![0u8; 3];
    assert_eq!(
        nat.inbound(&mut junk, T0),
        Verdict::Drop(DropReason::Malformed)
    );
    let s = nat.stats();
    assert_eq!(
        (
            s.outbound_forwarded,
            s.inbound_forwarded,
            s.mappings_created
        ),
        (1, 1, 1)
    );
    assert_eq!(s.drops.iter().sum::<u64>(), 1);
    assert_eq!(s.flows, 1);
    let m = nat.mappings();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].protocol, Protocol::Udp);
    assert_eq!(m[0].internal, sa(GUEST, 5000));
    assert_eq!(m[0].external, testing::src(&o));
}

#[test]
fn config_is_validated() {
    let bad = |f: fn(&mut NatConfig)| {
        let mut c = testing::config();
        f(&mut c);
        matches!(Nat::new(c), Err(ConfigError::Invalid(_)))
    };
    assert!(bad(|c| c.internal_prefix_len = 33));
    assert!(bad(|c| c.external_addr = Ipv4Addr::new(192, 168, 64, 9)));
    assert!(bad(|c| c.port_range = 1000..=2000));
    #[allow(clippy::reversed_empty_ranges)]
    let empty = 3000..=2000;
    assert!(!bad(|c| c.port_range = 2000..=2000));
    let mut c = testing::config();
    c.port_range = empty;
    assert!(matches!(Nat::new(c), Err(ConfigError::Invalid(_))));
    assert!(bad(|c| c.max_flows = 0));
    assert!(bad(|c| c.timeouts.udp = Duration::ZERO));
    assert!(Nat::new(testing::config()).is_ok());
}

#[test]
fn memory_per_flow_is_at_most_96_bytes() {
    let w = testing::warmed(64_000);
    assert_eq!(w.nat.len(), 64_000);
    let per_flow = w.nat.table_bytes_per_flow();
    assert!(per_flow <= 96, "{per_flow} bytes per flow");
}

#[test]
fn memory_per_ipv6_flow_is_at_most_a_48_byte_slot_over_the_load_factor() {
    // IPv6 addresses are stored as two u64 (not a 16-byte aligned u128) and
    // the slot holds no remote endpoint: a 48-byte slot (96 before), plus the
    // 4-byte creation time beside it (for listing flows by age), so at 64 000
    // flows (131 072 slots, load 0.49) 106 bytes per flow (196 before).
    let w = testing::warmed6(64_000);
    assert_eq!(w.nat.len(), 64_000);
    let per_flow = w.nat.table_bytes_per_flow6();
    assert!(
        per_flow <= (48 + 4) * 131_072 / 64_000,
        "{per_flow} bytes per flow"
    );
}

#[test]
fn memory_per_flow_stays_at_96_bytes_through_whole_doubling_cycles() {
    // One 32-byte slot per flow and its 4-byte creation time (for listing
    // flows by age) at a load factor between 3/8 and 3/4, and no second
    // index: at most 36 / (3/8) = 96 bytes per flow from 48 flows on (below
    // that the initial 128-slot table dominates).
    let mut cfg = testing::config();
    cfg.max_flows_per_host = 1 << 20;
    let mut nat = testing::nat_with(cfg);
    let mut worst = 0;
    for i in 0..20_000u32 {
        let guest = sa(GUEST, 1024 + (i % 60_000) as u16);
        let server = sa(Ipv4Addr::from(u32::from(SERVER) + i / 1000), 443);
        let mut p = testing::udp(guest, server, b"m");
        assert_eq!(nat.outbound(&mut p, T0), Verdict::Forward);
        if nat.len() >= 48 {
            worst = worst.max(nat.table_bytes_per_flow());
        }
    }
    assert_eq!(nat.len(), 20_000);
    assert!(worst <= 96, "worst {worst} bytes per flow");
    assert!(worst >= 90, "the cycle's low point was reached: {worst}");
}

#[test]
fn ip_options_are_carried_through() {
    let mut nat = testing::nat();
    let base = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"opt");
    let mut p = with_ip_options(&base);
    assert!(testing::checksums_match_full_recompute(&p));
    assert_eq!(nat.outbound(&mut p, T0), Verdict::Forward);
    assert!(testing::checksums_match_full_recompute(&p));
    assert_eq!(testing::src(&p), sa(EXTERNAL, 5000));
}

#[test]
fn port_parity_is_preserved_when_the_port_is_reassigned_rfc4787_req4() {
    let mut nat = testing::nat();
    for (i, port) in [40000u16, 40001, 40002, 40003].into_iter().enumerate() {
        out_udp(&mut nat, sa(GUEST, port), sa(SERVER, 53), T0);
        let g2 = Ipv4Addr::new(192, 168, 64, 10 + i as u8);
        let o = out_udp(&mut nat, sa(g2, port), sa(SERVER, 53), T0);
        let p = testing::src(&o).port();
        assert_ne!(p, port);
        assert_eq!(p % 2, port % 2, "{port} -> {p}");
    }
}

#[test]
fn icmp_errors_with_bad_checksums_are_dropped_rfc5508_req3() {
    let mut nat = testing::nat();
    let o = out_udp(&mut nat, sa(GUEST, 5000), sa(SERVER, 53), T0);
    let mut bad_icmp = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &o);
    let l4 = Ipv4Packet::new_checked(&mut bad_icmp[..])
        .unwrap()
        .into_payload_mut();
    let mut icmp = Icmpv4Packet::new_checked(l4).unwrap();
    icmp.set_checksum(icmp.checksum() ^ 0x5500);
    assert_eq!(
        nat.inbound(&mut bad_icmp, T0),
        Verdict::Drop(DropReason::Malformed)
    );
    let mut quoted = o.clone();
    // The embedded IPv4 header checksum.
    let mut ip = Ipv4Packet::new_checked(&mut quoted[..]).unwrap();
    ip.set_checksum(ip.checksum() ^ 0x5500);
    let mut bad_embedded = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &quoted);
    assert_eq!(
        nat.inbound(&mut bad_embedded, T0),
        Verdict::Drop(DropReason::Malformed)
    );
    let mut good = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &o);
    assert_eq!(nat.inbound(&mut good, T0), Verdict::Forward);
}

#[test]
fn hairpinned_icmp_errors_are_translated_rfc5508_req7() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 5353,
        internal: sa(GUEST2, 53),
    })
    .unwrap();
    // GUEST sends to the forwarded port through the external address.
    let mut q = testing::udp(sa(GUEST, 40000), sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Hairpin);
    let client = testing::src(&q);
    // GUEST2 rejects it with port unreachable, sent to the apparent source.
    let mut e = testing::icmp_error(GUEST2, *client.ip(), 3, 3, [0; 4], &q);
    assert_eq!(nat.outbound(&mut e, T0), Verdict::Hairpin);
    assert!(testing::checksums_match_full_recompute(&e));
    assert_eq!(*testing::dst(&e).ip(), GUEST);
    assert_eq!(*testing::src(&e).ip(), EXTERNAL);
    // The quoted packet is GUEST's original.
    assert_eq!(testing::embedded_src(&e), sa(GUEST, 40000));
    assert_eq!(testing::embedded_dst(&e), sa(EXTERNAL, 5353));
}

#[test]
fn outbound_rst_does_not_extend_the_flow_rfc7857() {
    let mut nat = testing::nat();
    let ext = tcp_pair(&mut nat, TcpFlags::SYN, T0);
    assert_eq!(nat.mappings()[0].expires, secs(240));
    // An inbound SYN is answered by the guest's RST 100 s later.
    assert_eq!(
        tcp_in(&mut nat, ext, TcpFlags::SYN, secs(100)),
        Verdict::Forward
    );
    let before = nat.mappings()[0].expires;
    tcp_pair(&mut nat, TcpFlags::RST, secs(150));
    assert!(nat.mappings()[0].expires <= before);
    assert!(nat.mappings()[0].expires <= secs(150 + 240));
}

/// `base` (an IPv4 packet without options) with 4 bytes of IPv4 options (NOP NOP NOP EOL)
/// inserted, lengths and header checksum fixed.
fn with_ip_options(base: &[u8]) -> Vec<u8> {
    const OPTIONS: [u8; 4] = [1, 1, 1, 0];
    let (header, rest) = base.split_at(ipv4::HEADER_LEN);
    let p = [header, &OPTIONS[..], rest].concat();
    let total = p.len() as u16;
    let mut ip = Ipv4Packet::new_unchecked(p);
    ip.set_header_len(ipv4::HEADER_LEN + OPTIONS.len());
    ip.set_total_len(total);
    ip.fill_checksum();
    ip.into_inner()
}

#[test]
fn icmp_error_quoting_a_packet_with_ip_options_is_translated() {
    let mut nat = testing::nat();
    let mut o = with_ip_options(&testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"opt"));
    assert_eq!(nat.outbound(&mut o, T0), Verdict::Forward);
    // Quote the options header plus 8 bytes.
    let quoted_len = Ipv4Packet::new_checked(&o[..]).unwrap().header_len() + udp::HEADER_LEN;
    let mut e = testing::icmp_error(SERVER, EXTERNAL, 3, 3, [0; 4], &o[..quoted_len]);
    assert_eq!(nat.inbound(&mut e, T0), Verdict::Forward);
    assert!(testing::checksums_match_full_recompute(&e));
    let ip = Ipv4Packet::new_checked(&e[..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    // The quote is cut short of its total length: the views clamp to the buffer.
    let quote = Ipv4Packet::new_unchecked(icmp.payload());
    assert_eq!(quote.header_len(), quoted_len - udp::HEADER_LEN);
    assert_eq!(quote.src_addr(), GUEST);
    assert_eq!(UdpPacket::new_unchecked(quote.payload()).src_port(), 5000);
}

#[test]
fn other_icmp_messages_are_dropped_as_unsupported() {
    let mut nat = testing::nat();
    // Timestamp request (13) and redirect (5): not translated.
    for (t, c) in [(13u8, 0u8), (5, 1)] {
        let mut p = testing::icmp_error(GUEST, SERVER, t, c, [0; 4], &[0u8; 28]);
        assert_eq!(
            nat.outbound(&mut p, T0),
            Verdict::Drop(DropReason::UnsupportedProtocol)
        );
    }
    assert_eq!(drops(&nat, DropReason::UnsupportedProtocol), 2);
}

#[test]
fn batch_calls_equal_one_call_per_packet() {
    let (mut a, mut b) = (testing::nat(), testing::nat());
    let mut outs: Vec<Vec<u8>> = (0..45u16)
        .map(|i| match i % 5 {
            0 => testing::tcp(sa(GUEST, 3000 + i), sa(SERVER, 80), TcpFlags::SYN, b""),
            1 => testing::echo_request(GUEST2, SERVER, i, 1, b"p"),
            2 => vec![0x45; 7],
            _ => testing::udp(sa(GUEST, 3000 + i), sa(SERVER2, 53), b"q"),
        })
        .collect();
    let mut outs_b = outs.clone();
    let single: Vec<Verdict> = outs.iter_mut().map(|p| a.outbound(p, T0)).collect();
    let mut batch = vec![Verdict::Forward; outs_b.len()];
    b.outbound_batch(&mut outs_b, T0, &mut batch);
    assert_eq!(single, batch);
    assert_eq!(outs, outs_b);
    let mut ins: Vec<Vec<u8>> = outs
        .iter()
        .filter(|p| Ipv4Packet::new_checked(&p[..]).is_ok_and(|ip| ip.protocol() != ip_proto::ICMP))
        .map(|p| testing::udp(testing::dst(p), testing::src(p), b"r"))
        .collect();
    let mut ins_b = ins.clone();
    let single: Vec<Verdict> = ins.iter_mut().map(|p| a.inbound(p, T0)).collect();
    let mut batch = vec![Verdict::Forward; ins_b.len()];
    b.inbound_batch(&mut ins_b, T0, &mut batch);
    assert_eq!(single, batch);
    assert_eq!(ins, ins_b);
    assert!(
        batch.contains(&Verdict::Forward) && batch.contains(&Verdict::Drop(DropReason::NoMapping))
    );
    assert_eq!(a.stats(), b.stats());
}

// ---------------------------------------------------------------------------
// Partial (offloaded) transport checksums

/// A TCP or UDP packet whose checksum field holds the partial value.
fn partial(tcp: bool, from: SocketAddrV4, to: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let mut p = if tcp {
        testing::tcp(from, to, TcpFlags::SYN_ACK, payload)
    } else {
        testing::udp(from, to, payload)
    };
    assert!(testing::make_partial(&mut p));
    p
}

/// The translated partial packet carries the pseudo-header sum of its new
/// addresses; completing it in software gives what a full recompute of the
/// translated packet gives.
fn assert_partial_completes(p: &[u8]) {
    let field = testing::l4_checksum(p).unwrap();
    assert!(
        testing::ones_complement_eq(field, testing::pseudo_sum(p).unwrap()),
        "partial field {field:#06x} is not the pseudo-header sum"
    );
    let mut done = p.to_vec();
    assert!(nat::complete_l4_checksum(&mut done));
    let want = testing::recompute_l4_checksum(&done).unwrap();
    assert!(testing::ones_complement_eq(
        testing::l4_checksum(&done).unwrap(),
        want
    ));
    assert!(testing::checksums_match_full_recompute(&done));
}

#[test]
fn partial_checksums_outbound_tcp_and_udp_with_port_remap_complete_to_a_full_recompute() {
    for tcp in [false, true] {
        let mut nat = testing::nat();
        // GUEST holds external port 5000, so GUEST2's 5000 is remapped.
        let mut first = partial(tcp, sa(GUEST, 5000), sa(SERVER, 443), b"one");
        assert_eq!(
            nat.outbound_with(&mut first, T0, L4Checksum::Partial),
            Verdict::Forward
        );
        assert_partial_completes(&first);
        let mut p = partial(tcp, sa(GUEST2, 5000), sa(SERVER, 443), b"payload!");
        assert_eq!(
            nat.outbound_with(&mut p, T0, L4Checksum::Partial),
            Verdict::Forward
        );
        assert_ne!(testing::src(&p).port(), 5000, "port remapped");
        assert_eq!(*testing::src(&p).ip(), EXTERNAL);
        assert_partial_completes(&p);
    }
}

#[test]
fn partial_checksums_inbound_tcp_and_udp_complete_to_a_full_recompute() {
    for tcp in [false, true] {
        let mut nat = testing::nat();
        let mk = |g| {
            if tcp {
                testing::tcp(sa(g, 5000), sa(SERVER, 443), TcpFlags::SYN, b"")
            } else {
                testing::udp(sa(g, 5000), sa(SERVER, 443), b"")
            }
        };
        let mut first = mk(GUEST);
        assert_eq!(nat.outbound(&mut first, T0), Verdict::Forward);
        let mut o = mk(GUEST2);
        assert_eq!(nat.outbound(&mut o, T0), Verdict::Forward);
        let ext = testing::src(&o);
        assert_ne!(ext.port(), 5000);
        let mut r = partial(tcp, sa(SERVER, 443), ext, b"the reply");
        assert_eq!(
            nat.inbound_with(&mut r, T0, L4Checksum::Partial),
            Verdict::Forward
        );
        assert_eq!(testing::dst(&r), sa(GUEST2, 5000));
        assert_partial_completes(&r);
    }
}

#[test]
fn partial_checksums_through_a_dnat_forward_and_a_hairpin_complete_to_a_full_recompute() {
    for (tcp, protocol) in [(false, Protocol::Udp), (true, Protocol::Tcp)] {
        let mut nat = testing::nat();
        nat.add_forward(PortForward {
            protocol,
            external_port: 8080,
            internal: sa(GUEST2, 80),
        })
        .unwrap();
        // DNAT forward: the port changes too.
        let mut f = partial(tcp, sa(SERVER, 51000), sa(EXTERNAL, 8080), b"request");
        assert_eq!(
            nat.inbound_with(&mut f, T0, L4Checksum::Partial),
            Verdict::Forward
        );
        assert_eq!(testing::dst(&f), sa(GUEST2, 80));
        assert_partial_completes(&f);
        // Its reply, outbound.
        let mut r = partial(tcp, sa(GUEST2, 80), sa(SERVER, 51000), b"response");
        assert_eq!(
            nat.outbound_with(&mut r, T0, L4Checksum::Partial),
            Verdict::Forward
        );
        assert_eq!(testing::src(&r), sa(EXTERNAL, 8080));
        assert_partial_completes(&r);
        // Hairpin: both addresses change.
        let mut h = partial(tcp, sa(GUEST, 40000), sa(EXTERNAL, 8080), b"hairpin");
        assert_eq!(
            nat.outbound_with(&mut h, T0, L4Checksum::Partial),
            Verdict::Hairpin
        );
        assert_eq!(testing::dst(&h), sa(GUEST2, 80));
        assert_eq!(*testing::src(&h).ip(), EXTERNAL);
        assert_partial_completes(&h);
    }
}

#[test]
fn partial_udp_checksum_zero_is_updated_not_kept() {
    let mut nat = testing::nat();
    let mut p = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), b"q");
    let before = testing::pseudo_sum(&p).unwrap();
    set_udp_checksum(&mut p, 0);
    assert_eq!(
        nat.outbound_with(&mut p, T0, L4Checksum::Partial),
        Verdict::Forward
    );
    // P' = 0 - pseudo(before) + pseudo(after), not 0.
    let after = testing::pseudo_sum(&p).unwrap();
    let want = wire::checksum::fold(u64::from(!before) + u64::from(after));
    let got = testing::l4_checksum(&p).unwrap();
    assert_ne!(got, 0);
    assert!(
        testing::ones_complement_eq(got, want),
        "{got:#x} vs {want:#x}"
    );
    // The same packet as Complete keeps its zero checksum.
    let mut c = testing::udp(sa(GUEST, 5001), sa(SERVER, 53), b"q");
    set_udp_checksum(&mut c, 0);
    assert_eq!(
        nat.outbound_with(&mut c, T0, L4Checksum::Complete),
        Verdict::Forward
    );
    assert_eq!(testing::l4_checksum(&c), Some(0));
}

/// Writes the UDP checksum field of an IPv4 UDP packet.
fn set_udp_checksum(p: &mut [u8], value: u16) {
    let l4 = Ipv4Packet::new_checked(p).unwrap().into_payload_mut();
    UdpPacket::new_checked(l4).unwrap().set_checksum(value);
}

/// The UDP checksum field of an IPv4 UDP packet.
fn udp_checksum(p: &[u8]) -> u16 {
    let l4 = Ipv4Packet::new_checked(p).unwrap().into_payload();
    UdpPacket::new_checked(l4).unwrap().checksum()
}

#[test]
fn partial_checksum_of_a_60000_byte_tcp_super_packet_completes_to_a_full_recompute() {
    let mut nat = testing::nat();
    let mut hold = testing::tcp(sa(GUEST, 6000), sa(SERVER, 1), TcpFlags::SYN, b"");
    assert_eq!(nat.outbound(&mut hold, T0), Verdict::Forward);
    let payload: Vec<u8> = (0..60_000 - 40).map(|i| (i * 7 % 251) as u8).collect();
    let mut p = partial(true, sa(GUEST2, 6000), sa(SERVER, 443), &payload);
    assert_eq!(p.len(), 60_000);
    assert_eq!(
        nat.outbound_with(&mut p, T0, L4Checksum::Partial),
        Verdict::Forward
    );
    assert_ne!(testing::src(&p).port(), 6000);
    assert_partial_completes(&p);
    // Inbound too.
    let ext = testing::src(&p);
    let mut r = partial(true, sa(SERVER, 443), ext, &payload);
    assert_eq!(
        nat.inbound_with(&mut r, T0, L4Checksum::Partial),
        Verdict::Forward
    );
    assert_partial_completes(&r);
}

#[test]
fn partial_batch_calls_take_a_kind_per_packet_and_missing_ones_are_complete() {
    let mut nat = testing::nat();
    let mut pkts: Vec<Vec<u8>> = (0..20)
        .map(|i| partial(i % 2 == 0, sa(GUEST, 7000 + i), sa(SERVER, 443), b"x"))
        .collect();
    // A complete one at the end, past the kinds given.
    pkts.push(testing::udp(sa(GUEST, 9000), sa(SERVER, 443), b"x"));
    let kinds = vec![L4Checksum::Partial; 20];
    let mut v = vec![Verdict::Forward; pkts.len()];
    nat.outbound_batch_with(&mut pkts, &kinds, T0, &mut v);
    assert!(v.iter().all(|v| *v == Verdict::Forward));
    for p in &pkts[..20] {
        assert_partial_completes(p);
    }
    assert!(testing::checksums_match_full_recompute(&pkts[20]));
    let mut replies: Vec<Vec<u8>> = pkts[..20]
        .iter()
        .enumerate()
        .map(|(i, o)| partial(i % 2 == 0, sa(SERVER, 443), testing::src(o), b"y"))
        .collect();
    let mut v = vec![Verdict::Forward; replies.len()];
    nat.inbound_batch_with(&mut replies, &kinds, T0, &mut v);
    assert!(v.iter().all(|v| *v == Verdict::Forward));
    replies.iter().for_each(|r| assert_partial_completes(r));
}

#[test]
fn complete_l4_checksum_refuses_what_it_cannot_do() {
    let mut short = vec![0x45u8; 10];
    assert!(!nat::complete_l4_checksum(&mut short));
    let mut echo = testing::echo_request(GUEST, SERVER, 1, 1, b"x");
    let before = echo.clone();
    assert!(!nat::complete_l4_checksum(&mut echo));
    assert_eq!(echo, before);
    let mut whole = testing::udp(sa(GUEST, 1), sa(SERVER, 2), &[0u8; 100]);
    testing::set_ip_id(&mut whole, 9);
    let mut frag = testing::fragment(&whole, 40).remove(0);
    assert!(!nat::complete_l4_checksum(&mut frag));
    // A complete packet made partial and completed again is unchanged.
    let good = testing::tcp(sa(GUEST, 1), sa(SERVER, 2), TcpFlags::ACK, b"data");
    let mut p = good.clone();
    assert!(testing::make_partial(&mut p));
    assert!(nat::complete_l4_checksum(&mut p));
    assert_eq!(p, good);
}

// ---------------------------------------------------------------------------
// ICMP echo hairpinning

#[test]
fn icmp_echo_request_to_the_external_address_hairpins_to_the_mapping_owner_rfc7857_13() {
    let mut nat = testing::nat();
    // GUEST2 pings a server: its identifier 77 maps to external 77.
    let mut q = testing::echo_request(GUEST2, SERVER, 77, 1, b"ping");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Forward);
    let ext_id = testing::src(&q).port();
    let flows = nat.len();
    // GUEST pings the external address with that identifier.
    let mut p = testing::echo_request(GUEST, EXTERNAL, ext_id, 9, b"hello");
    assert_eq!(nat.outbound(&mut p, secs(1)), Verdict::Hairpin);
    assert_eq!(testing::src(&p), sa(EXTERNAL, 77));
    assert_eq!(testing::dst(&p), sa(GUEST2, 77));
    assert!(testing::checksums_match_full_recompute(&p));
    assert_eq!(nat.stats().hairpinned, 1);
    assert_eq!(nat.len(), flows, "no flow for the sender");
    // GUEST2 answers (to the external address, with its identifier 77):
    // the reply loops back to GUEST with the identifier GUEST used.
    let mut r = testing::echo_reply(GUEST2, EXTERNAL, 77, 9, b"hello");
    assert_eq!(nat.outbound(&mut r, secs(2)), Verdict::Hairpin);
    assert_eq!(testing::src(&r), sa(EXTERNAL, ext_id));
    assert_eq!(testing::dst(&r), sa(GUEST, ext_id));
    assert!(testing::checksums_match_full_recompute(&r));
    assert_eq!(nat.stats().hairpinned, 2);
    // Once the ICMP query timeout has passed, a late reply is dropped.
    let mut late = testing::echo_reply(GUEST2, EXTERNAL, 77, 9, b"hello");
    assert_eq!(
        nat.outbound(&mut late, secs(62)),
        Verdict::Drop(DropReason::NoMapping)
    );
    // Echo replies from inside to anyone else stay unsupported.
    let mut other = testing::echo_reply(GUEST2, SERVER, 77, 9, b"x");
    assert_eq!(
        nat.outbound(&mut other, secs(2)),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    // With a remapped identifier: GUEST's 77 is taken, so it maps elsewhere;
    // a request naming that external identifier reaches GUEST with 77.
    let mut q2 = testing::echo_request(GUEST, SERVER, 77, 1, b"ping");
    assert_eq!(nat.outbound(&mut q2, T0), Verdict::Forward);
    let ext2 = testing::src(&q2).port();
    assert_ne!(ext2, 77);
    let mut p2 = testing::echo_request(GUEST2, EXTERNAL, ext2, 1, b"x");
    assert_eq!(nat.outbound(&mut p2, secs(1)), Verdict::Hairpin);
    assert_eq!(testing::dst(&p2), sa(GUEST, 77));
    assert!(testing::checksums_match_full_recompute(&p2));
}

#[test]
fn icmp_echo_request_to_the_external_address_without_a_live_mapping_is_dropped() {
    let mut nat = testing::nat();
    let mut p = testing::echo_request(GUEST, EXTERNAL, 4242, 1, b"x");
    let before = p.clone();
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::NoMapping)
    );
    assert_eq!(p, before);
    assert!(nat.is_empty());
    // A mapping that expired (and was swept) no longer matches.
    let mut q = testing::echo_request(GUEST2, SERVER, 4242, 1, b"ping");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Forward);
    expire_all(&mut nat, secs(61));
    let mut p = testing::echo_request(GUEST, EXTERNAL, 4242, 1, b"x");
    assert_eq!(
        nat.outbound(&mut p, secs(61)),
        Verdict::Drop(DropReason::NoMapping)
    );
    // Under address-and-port-dependent filtering the target never sent to
    // the external address: filtered.
    let mut nat = testing::nat_with(NatConfig {
        filtering: Filtering::AddressAndPortDependent,
        ..testing::config()
    });
    let mut q = testing::echo_request(GUEST2, SERVER, 4242, 1, b"ping");
    assert_eq!(nat.outbound(&mut q, T0), Verdict::Forward);
    let mut p = testing::echo_request(GUEST, EXTERNAL, 4242, 1, b"x");
    assert_eq!(
        nat.outbound(&mut p, T0),
        Verdict::Drop(DropReason::Filtered)
    );
}

// ---- Flows from outside: their own budget (issue #12 item 1) ----

/// A spoofed remote number `i` (distinct addresses in 198.18.0.0/15).
fn spoofed(i: u32) -> SocketAddrV4 {
    let addr = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + i;
    sa(Ipv4Addr::from(addr), 1024 + (i % 60_000) as u16)
}

fn ssh_forward(nat: &mut Nat, external_port: u16) {
    nat.add_forward(PortForward {
        protocol: Protocol::Tcp,
        external_port,
        internal: sa(GUEST, 22),
    })
    .unwrap();
}

/// A SYN from `remote` to the forward on `port`, and the guest's SYN-ACK.
fn syn_and_synack(nat: &mut Nat, remote: SocketAddrV4, port: u16, now: Instant) -> Verdict {
    let mut syn = testing::tcp(remote, sa(EXTERNAL, port), TcpFlags::SYN, b"");
    let v = nat.inbound(&mut syn, now);
    if v == Verdict::Forward {
        let mut synack = testing::tcp(sa(GUEST, 22), remote, TcpFlags::SYN_ACK, b"");
        assert_eq!(nat.outbound(&mut synack, now), Verdict::Forward);
    }
    v
}

/// The remote's ACK (or data) after the guest's SYN-ACK.
fn remote_ack(nat: &mut Nat, remote: SocketAddrV4, port: u16, now: Instant) -> Verdict {
    let mut ack = testing::tcp(remote, sa(EXTERNAL, port), TcpFlags::ACK, b"hi");
    nat.inbound(&mut ack, now)
}

/// When the one flow of the guest's port 22 expires, if it exists.
fn ssh_flow_expiry(nat: &Nat) -> Option<Instant> {
    let mut v: Vec<_> = nat
        .mappings()
        .into_iter()
        .filter(|m| m.internal == sa(GUEST, 22))
        .map(|m| m.expires)
        .collect();
    assert!(v.len() <= 1, "{v:?}");
    v.pop()
}

#[test]
fn a_spoofed_syn_flood_through_a_forward_leaves_the_guest_its_own_flows() {
    // The issue's reproduction: 66 000 SYNs with distinct spoofed sources
    // through `tcp:8022:22`, each answered by the guest's SYN-ACK, with the
    // default caps (65 536 flows per host).
    let mut nat = testing::nat_with(NatConfig {
        max_flows_per_host: 65_536,
        ..testing::config()
    });
    ssh_forward(&mut nat, 8022);
    let flood = 66_000u32;
    for i in 0..flood {
        let now = Instant::from_millis(u64::from(i) / 10);
        assert_eq!(
            syn_and_synack(&mut nat, spoofed(i), 8022, now),
            Verdict::Forward
        );
    }
    let budget = NatConfig::default().max_inbound_flows_per_forward;
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8022), (budget, budget));
    assert_eq!(
        nat.stats().inbound_evicted,
        u64::from(flood) - budget as u64
    );
    assert_eq!(drops(&nat, DropReason::InboundLimit), 0);
    assert_eq!(nat.host_flows(GUEST), 0, "flows from outside count apart");
    // The guest's own new flows all get through: TCP, UDP, ping.
    let now = secs(7);
    for port in 0..20u16 {
        let mut syn = testing::tcp(
            sa(GUEST, 40_000 + port),
            sa(SERVER, 443),
            TcpFlags::SYN,
            b"",
        );
        assert_eq!(nat.outbound(&mut syn, now), Verdict::Forward);
    }
    out_udp(&mut nat, sa(GUEST, 5353), sa(SERVER, 53), now);
    let mut ping = testing::echo_request(GUEST, SERVER, 7, 1, b"ping");
    assert_eq!(nat.outbound(&mut ping, now), Verdict::Forward);
    assert_eq!(nat.host_flows(GUEST), 22);
    // A real client still gets in during the flood and, once it confirms,
    // is not evicted by more spoofed SYNs.
    let client = sa(SERVER2, 50_000);
    assert_eq!(
        syn_and_synack(&mut nat, client, 8022, now),
        Verdict::Forward
    );
    assert_eq!(remote_ack(&mut nat, client, 8022, now), Verdict::Forward);
    for i in flood..flood + 2 * budget as u32 {
        assert_eq!(
            syn_and_synack(&mut nat, spoofed(i), 8022, now),
            Verdict::Forward
        );
    }
    let mut data = testing::tcp(client, sa(EXTERNAL, 8022), TcpFlags::ACK, b"more");
    assert_eq!(nat.inbound(&mut data, now), Verdict::Forward);
    assert_eq!(testing::dst(&data), sa(GUEST, 22));
    // Unconfirmed flows do not outlive `inbound_unconfirmed` (60 s), even
    // though the guest answered each with a SYN-ACK; the confirmed one and
    // the guest's own flows stay.
    expire_all(&mut nat, secs(7 + 61));
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8022), (1, 1));
    assert_eq!(
        nat.host_flows(GUEST),
        21,
        "20 half-open TCP (4 min) and UDP (5 min)"
    );
}

#[test]
fn a_flow_from_outside_gets_the_established_timeout_only_once_the_remote_confirms() {
    let mut nat = testing::nat();
    ssh_forward(&mut nat, 8022);
    let client = sa(SERVER, 50_000);
    let unconfirmed = NatConfig::default().timeouts.inbound_unconfirmed;
    let established = NatConfig::default().timeouts.tcp_established;
    // SYN and SYN-ACK: both directions seen, still unconfirmed (60 s).
    assert_eq!(syn_and_synack(&mut nat, client, 8022, T0), Verdict::Forward);
    assert_eq!(ssh_flow_expiry(&nat), Some(T0 + unconfirmed));
    // A retransmitted SYN does not confirm.
    let mut syn = testing::tcp(client, sa(EXTERNAL, 8022), TcpFlags::SYN, b"");
    assert_eq!(nat.inbound(&mut syn, secs(1)), Verdict::Forward);
    assert_eq!(ssh_flow_expiry(&nat), Some(secs(1) + unconfirmed));
    // The guest retransmits its SYN-ACK: still 60 s.
    let mut synack = testing::tcp(sa(GUEST, 22), client, TcpFlags::SYN_ACK, b"");
    assert_eq!(nat.outbound(&mut synack, secs(2)), Verdict::Forward);
    assert_eq!(ssh_flow_expiry(&nat), Some(secs(2) + unconfirmed));
    // The remote's ACK confirms: 2 h 4 min.
    assert_eq!(
        remote_ack(&mut nat, client, 8022, secs(3)),
        Verdict::Forward
    );
    assert_eq!(ssh_flow_expiry(&nat), Some(secs(3) + established));
    let mut reply = testing::tcp(sa(GUEST, 22), client, TcpFlags::ACK, b"ok");
    assert_eq!(nat.outbound(&mut reply, secs(4)), Verdict::Forward);
    assert_eq!(ssh_flow_expiry(&nat), Some(secs(4) + established));
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8022), (1, 1));
}

#[test]
fn an_ack_before_the_guest_answered_does_not_confirm() {
    let mut nat = testing::nat();
    ssh_forward(&mut nat, 8022);
    let client = sa(SERVER, 50_000);
    let unconfirmed = NatConfig::default().timeouts.inbound_unconfirmed;
    let mut syn = testing::tcp(client, sa(EXTERNAL, 8022), TcpFlags::SYN, b"");
    assert_eq!(nat.inbound(&mut syn, T0), Verdict::Forward);
    assert_eq!(
        remote_ack(&mut nat, client, 8022, secs(1)),
        Verdict::Forward
    );
    let mut synack = testing::tcp(sa(GUEST, 22), client, TcpFlags::SYN_ACK, b"");
    assert_eq!(nat.outbound(&mut synack, secs(2)), Verdict::Forward);
    assert_eq!(ssh_flow_expiry(&nat), Some(secs(2) + unconfirmed));
    assert_eq!(expire_all(&mut nat, secs(63)), 1);
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8022), (0, 0));
}

#[test]
fn a_full_forward_evicts_its_oldest_unconfirmed_flow_and_refuses_when_all_are_confirmed() {
    let mut nat = testing::nat_with(NatConfig {
        max_inbound_flows_per_forward: 3,
        ..testing::config()
    });
    ssh_forward(&mut nat, 8022);
    let c = |i: u16| sa(SERVER, 50_000 + i);
    for i in 1..=3 {
        assert_eq!(
            syn_and_synack(&mut nat, c(i), 8022, secs(u64::from(i))),
            Verdict::Forward
        );
    }
    assert_eq!(remote_ack(&mut nat, c(2), 8022, secs(3)), Verdict::Forward);
    // c4 evicts c1 (oldest unconfirmed), c5 evicts c3 (c2 is confirmed).
    assert_eq!(
        syn_and_synack(&mut nat, c(4), 8022, secs(4)),
        Verdict::Forward
    );
    assert_eq!(
        syn_and_synack(&mut nat, c(5), 8022, secs(5)),
        Verdict::Forward
    );
    assert_eq!(nat.stats().inbound_evicted, 2);
    let live = |nat: &mut Nat, i: u16| {
        let mut probe = testing::tcp(sa(GUEST, 22), c(i), TcpFlags::ACK, b"");
        // The guest's packet finds its flow only if it still exists (a new
        // outbound flow would count in the guest's own budget).
        let before = nat.host_flows(GUEST);
        let _ = nat.outbound(&mut probe, secs(5));
        nat.host_flows(GUEST) == before
    };
    assert!(!live(&mut nat, 1));
    assert!(live(&mut nat, 2));
    assert!(!live(&mut nat, 3));
    assert!(live(&mut nat, 4));
    assert!(live(&mut nat, 5));
    // Confirm c4 and c5: nothing left to evict, c6 is refused and counted.
    assert_eq!(remote_ack(&mut nat, c(4), 8022, secs(6)), Verdict::Forward);
    assert_eq!(remote_ack(&mut nat, c(5), 8022, secs(6)), Verdict::Forward);
    let mut syn = testing::tcp(c(6), sa(EXTERNAL, 8022), TcpFlags::SYN, b"");
    assert_eq!(
        nat.inbound(&mut syn, secs(7)),
        Verdict::Drop(DropReason::InboundLimit)
    );
    assert_eq!(drops(&nat, DropReason::InboundLimit), 1);
    assert_eq!(nat.stats().inbound_evicted, 2);
}

#[test]
fn a_full_inbound_total_evicts_the_oldest_unconfirmed_flow_of_any_forward() {
    let mut nat = testing::nat_with(NatConfig {
        max_inbound_flows: 2,
        ..testing::config()
    });
    ssh_forward(&mut nat, 8022);
    ssh_forward(&mut nat, 8023);
    let (a, b, c) = (sa(SERVER, 1), sa(SERVER, 2), sa(SERVER, 3));
    assert_eq!(syn_and_synack(&mut nat, a, 8022, secs(1)), Verdict::Forward);
    assert_eq!(syn_and_synack(&mut nat, b, 8023, secs(2)), Verdict::Forward);
    assert_eq!(syn_and_synack(&mut nat, c, 8023, secs(3)), Verdict::Forward);
    assert_eq!(nat.stats().inbound_evicted, 1);
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8022), (2, 0));
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8023), (2, 2));
}

#[test]
fn a_udp_flow_from_outside_is_confirmed_when_the_remote_sends_after_the_guest_answered() {
    let mut nat = testing::nat();
    nat.add_forward(PortForward {
        protocol: Protocol::Udp,
        external_port: 5353,
        internal: sa(GUEST, 53),
    })
    .unwrap();
    let remote = sa(SERVER, 40_000);
    let t = NatConfig::default().timeouts;
    let expiry = |nat: &Nat| {
        nat.mappings()
            .into_iter()
            .find(|m| m.internal == sa(GUEST, 53))
            .map(|m| m.expires)
    };
    let mut q = testing::udp(remote, sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.inbound(&mut q, T0), Verdict::Forward);
    let mut q2 = testing::udp(remote, sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.inbound(&mut q2, secs(1)), Verdict::Forward);
    out_udp(&mut nat, sa(GUEST, 53), remote, secs(2));
    assert_eq!(expiry(&nat), Some(secs(2) + t.inbound_unconfirmed));
    let mut q3 = testing::udp(remote, sa(EXTERNAL, 5353), b"q");
    assert_eq!(nat.inbound(&mut q3, secs(3)), Verdict::Forward);
    assert_eq!(expiry(&nat), Some(secs(3) + t.udp));
    out_udp(&mut nat, sa(GUEST, 53), remote, secs(4));
    assert_eq!(expiry(&nat), Some(secs(4) + t.udp));
}

#[test]
fn inbound_budget_settings_are_validated() {
    for (total, per) in [(0, 1), (1, 0)] {
        assert_eq!(
            Nat::new(NatConfig {
                max_inbound_flows: total,
                max_inbound_flows_per_forward: per,
                ..NatConfig::default()
            })
            .err()
            .map(|_| ()),
            Some(())
        );
    }
}

// ---- Held fragments: a pool per direction, a share per source (issue #12 item 11) ----

/// A later fragment (the second of two) of a UDP datagram `from` → `to` with IP ident `id`.
fn later_fragment(from: SocketAddrV4, to: SocketAddrV4, id: u16) -> Vec<u8> {
    let mut w = testing::udp(from, to, &[7u8; 1500]);
    testing::set_ip_id(&mut w, id);
    testing::fragment(&w, 1000).pop().unwrap()
}

#[test]
fn fragments_from_outside_cannot_starve_the_guests_held_fragments() {
    let mut nat = testing::nat_with(NatConfig {
        max_held_fragments: 4,
        max_held_bytes: 64 * 1024,
        ..testing::config()
    });
    // Outsiders fill the inbound pool with fragments to the external
    // address whose first fragment never comes (and that match nothing).
    for i in 0..4u32 {
        let mut f = later_fragment(spoofed(i), sa(EXTERNAL, 9999), 1);
        assert_eq!(nat.inbound(&mut f, T0), Verdict::Held);
    }
    let mut f = later_fragment(spoofed(4), sa(EXTERNAL, 9999), 1);
    assert_eq!(
        nat.inbound(&mut f, T0),
        Verdict::Drop(DropReason::FragmentsHeldFull)
    );
    assert_eq!(nat.held_fragments_of(Direction::Inbound).0, 4);
    // The guest's own out-of-order datagram is still held and released.
    let mut w = testing::udp(sa(GUEST, 5000), sa(SERVER, 53), &[7u8; 1500]);
    testing::set_ip_id(&mut w, 42);
    let mut frags = testing::fragment(&w, 1000);
    assert_eq!(nat.outbound(&mut frags[1], T0), Verdict::Held);
    assert_eq!(nat.outbound(&mut frags[0], T0), Verdict::Forward);
    let mut buf = [0u8; 2048];
    let r = nat.poll_released(Direction::Outbound, &mut buf).unwrap();
    assert_eq!(r.verdict, Verdict::Forward);
    assert_eq!(nat.held_fragments_of(Direction::Outbound), (0, 0));
    assert_eq!(drops(&nat, DropReason::FragmentsHeldFull), 1);
}

#[test]
fn one_source_may_hold_at_most_half_of_its_directions_pool() {
    let mut nat = testing::nat_with(NatConfig {
        max_held_fragments: 4,
        max_held_bytes: 64 * 1024,
        ..testing::config()
    });
    let (noisy, other) = (sa(SERVER, 4000), sa(SERVER2, 4000));
    for id in 1..=2 {
        let mut f = later_fragment(noisy, sa(EXTERNAL, 9999), id);
        assert_eq!(nat.inbound(&mut f, T0), Verdict::Held);
    }
    let mut f = later_fragment(noisy, sa(EXTERNAL, 9999), 3);
    assert_eq!(
        nat.inbound(&mut f, T0),
        Verdict::Drop(DropReason::FragmentsHeldPerSource)
    );
    assert_eq!(drops(&nat, DropReason::FragmentsHeldPerSource), 1);
    for id in 1..=2 {
        let mut f = later_fragment(other, sa(EXTERNAL, 9999), id);
        assert_eq!(nat.inbound(&mut f, T0), Verdict::Held);
    }
    assert_eq!(nat.held_fragments_of(Direction::Inbound).0, 4);
    // Bytes too: half of 1 200 bytes is 600; one fragment fits, two do not.
    let mut nat = testing::nat_with(NatConfig {
        max_held_fragments: 64,
        max_held_bytes: 1200,
        ..testing::config()
    });
    let mut a = later_fragment(noisy, sa(EXTERNAL, 9999), 1);
    let len = a.len();
    assert!(len <= 600 && 2 * len > 600, "{len}");
    assert_eq!(nat.inbound(&mut a, T0), Verdict::Held);
    let mut b = later_fragment(noisy, sa(EXTERNAL, 9999), 2);
    assert_eq!(
        nat.inbound(&mut b, T0),
        Verdict::Drop(DropReason::FragmentsHeldPerSource)
    );
    let mut c = later_fragment(other, sa(EXTERNAL, 9999), 2);
    assert_eq!(nat.inbound(&mut c, T0), Verdict::Held);
}

#[test]
fn the_queue_of_unconfirmed_flows_stays_bounded_through_churn() {
    let mut nat = testing::nat();
    ssh_forward(&mut nat, 8022);
    // One long-lived client keeps the forward's bookkeeping alive.
    let anchor = sa(SERVER2, 1);
    assert_eq!(syn_and_synack(&mut nat, anchor, 8022, T0), Verdict::Forward);
    assert_eq!(remote_ack(&mut nat, anchor, 8022, T0), Verdict::Forward);
    let mut base = 0;
    for round in 0..300u32 {
        let now = secs(u64::from(round) * 300);
        assert_eq!(remote_ack(&mut nat, anchor, 8022, now), Verdict::Forward);
        for i in 0..20u32 {
            let c = spoofed(round * 20 + i);
            assert_eq!(syn_and_synack(&mut nat, c, 8022, now), Verdict::Forward);
            if i % 2 == 0 {
                // Half confirm, then close; the rest stay unconfirmed.
                assert_eq!(remote_ack(&mut nat, c, 8022, now), Verdict::Forward);
                let mut rst = testing::tcp(c, sa(EXTERNAL, 8022), TcpFlags::RST, b"");
                assert_eq!(nat.inbound(&mut rst, now), Verdict::Forward);
            }
        }
        expire_all(&mut nat, now + Duration::from_secs(299));
        assert_eq!(
            nat.inbound_flows(Protocol::Tcp, 8022),
            (1, 1),
            "round {round}"
        );
        if round == 1 {
            base = nat.memory_bytes();
        }
    }
    assert!(
        nat.memory_bytes() <= base + 4096,
        "{} > {base} + 4096",
        nat.memory_bytes()
    );
}

/// A flow's creation time (for listing flows by age) stays with the flow: refreshed by
/// traffic, moved by the table's growth and by removals that shift the flows after it.
#[test]
fn a_flows_creation_time_stays_with_it_through_refresh_growth_and_removals() {
    let mut nat = testing::nat();
    // 600 flows, flow k created at second k (the table grows several times on the way).
    for k in 0..600u16 {
        out_udp(
            &mut nat,
            sa(GUEST, 1000 + k),
            sa(SERVER, 53),
            secs(u64::from(k)),
        );
    }
    // Refresh flow 7 much later: its age does not change.
    out_udp(&mut nat, sa(GUEST, 1007), sa(SERVER, 53), secs(650));
    // Flows 0..=150 (but 7) expire at 300..=450 s; sweeping at 450.5 s removes them and
    // shifts the flows after them in their probe runs back.
    expire_all(&mut nat, Instant::from_millis(450_500));
    let maps = nat.mappings();
    assert_eq!(maps.len(), 449 + 1, "flows 151..600 and flow 7 are left");
    for m in &maps {
        let k = u64::from(m.internal.port() - 1000);
        assert_eq!(m.created, secs(k), "flow {k}");
        let last = if k == 7 { 650 } else { k };
        assert_eq!(m.expires, secs(last + 300), "flow {k}");
    }
}
