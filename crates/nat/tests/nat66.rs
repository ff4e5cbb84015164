//! NAT66: the engine generic over the address family, on IPv6 packets.
//! The same behaviour contract as NAT44 (see `behaviour.rs`).

use core::net::Ipv6Addr;
use core::time::Duration;

use nat::testing::{self, EXTERNAL6, GUEST6, GUEST6_2, SERVER6, SERVER6_2, TcpFlags, sa6};
use nat::{
    DropReason, Filtering, Instant, L4Checksum, Nat, NatConfig, Protocol, Verdict,
    complete_l4_checksum,
};

fn drops(nat: &Nat, r: DropReason) -> u64 {
    nat.stats().drops[r.index()]
}

#[test]
fn udp6_goes_out_from_the_external_address_and_its_reply_comes_back() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 53));
    let mut p = testing::udp6(g, s, b"query");
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::src6(&p), sa6(EXTERNAL6, 5000));
    assert_eq!(testing::dst6(&p), s);
    assert!(testing::checksums6_ok(&p));
    let mut r = testing::udp6(s, sa6(EXTERNAL6, 5000), b"answer");
    assert_eq!(nat.inbound(&mut r, Instant::from_secs(1)), Verdict::Forward);
    assert_eq!(testing::dst6(&r), g);
    assert_eq!(testing::src6(&r), s);
    assert!(testing::checksums6_ok(&r));
    let st = nat.stats_of(true);
    assert_eq!((st.outbound_forwarded, st.inbound_forwarded), (1, 1));
    assert_eq!(nat.stats_of(false).outbound_forwarded, 0);
    assert_eq!(nat.len(), 1);
    assert_eq!(nat.host_flows6(GUEST6), 1);
}

/// `p` (UDP over IPv6, valid) with its checksum field zero and the first payload word raised
/// by the old checksum: it still sums right (one's complement's other zero).
fn with_zero_udp_checksum(mut p: Vec<u8>) -> Vec<u8> {
    let c = u32::from(u16::from_be_bytes([p[46], p[47]]));
    p[46..48].fill(0);
    let w = u32::from(u16::from_be_bytes([p[48], p[49]])) + c;
    let w = (w & 0xffff) + (w >> 16);
    p[48..50].copy_from_slice(&(w as u16).to_be_bytes());
    assert!(testing::checksums6_ok(&p));
    p
}

#[test]
fn a_zero_udp6_checksum_is_updated_like_any_other_both_ways() {
    // IPv6 has no "no checksum" for UDP (RFC 8200 section 8.1): a zero field that sums
    // right must still sum right after the rewrite (found by the `nat_mixed` fuzz target).
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 53));
    let mut p = with_zero_udp_checksum(testing::udp6(g, s, b"query!"));
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&p), "{p:02x?}");
    assert_ne!(p[46..48], [0, 0]);
    let mut r = with_zero_udp_checksum(testing::udp6(s, sa6(EXTERNAL6, 5000), b"answer"));
    assert_eq!(nat.inbound(&mut r, Instant::from_secs(1)), Verdict::Forward);
    assert_eq!(testing::dst6(&r), g);
    assert!(testing::checksums6_ok(&r), "{r:02x?}");
    assert_ne!(r[46..48], [0, 0]);
}

#[test]
fn tcp6_flows_get_the_rfc_timeouts() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 40000), sa6(SERVER6, 443));
    let mut syn = testing::tcp6(g, s, TcpFlags::SYN, b"");
    assert_eq!(nat.outbound(&mut syn, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&syn));
    assert_eq!(nat.mappings6()[0].3, Instant::from_secs(240));
    let ext = testing::src6(&syn);
    let mut syn_ack = testing::tcp6(s, ext, TcpFlags::SYN_ACK, b"");
    assert_eq!(
        nat.inbound(&mut syn_ack, Instant::from_secs(1)),
        Verdict::Forward
    );
    assert!(testing::checksums6_ok(&syn_ack));
    assert_eq!(testing::dst6(&syn_ack), g);
    // Seen both ways: established, 2 h 4 min (RFC 5382 REQ-5).
    assert_eq!(nat.mappings6()[0].3, Instant::from_secs(1 + 7440));
    let mut fin = testing::tcp6(g, s, TcpFlags::FIN_ACK, b"");
    assert_eq!(
        nat.outbound(&mut fin, Instant::from_secs(2)),
        Verdict::Forward
    );
    assert_eq!(nat.mappings6()[0].3, Instant::from_secs(2 + 240));
}

#[test]
fn icmpv6_echo_identifiers_are_mapped_like_ports_and_checksums_cover_the_pseudo_header() {
    let mut nat = testing::nat();
    let mut a = testing::echo_request6(GUEST6, SERVER6, 7, 1, b"ping");
    assert_eq!(nat.outbound(&mut a, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&a));
    assert_eq!(testing::src6(&a), sa6(EXTERNAL6, 7));
    // Another guest with the same identifier gets another one.
    let mut b = testing::echo_request6(GUEST6_2, SERVER6, 7, 1, b"ping");
    assert_eq!(nat.outbound(&mut b, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&b));
    let id_b = testing::src6(&b).port();
    assert_ne!(id_b, 7);
    let mut reply = testing::echo_reply6(SERVER6, EXTERNAL6, id_b, 1, b"ping");
    assert_eq!(nat.inbound(&mut reply, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&reply));
    assert_eq!(testing::dst6(&reply), sa6(GUEST6_2, 7));
    // ICMP query timeout: 60 s (RFC 5508 REQ-1).
    assert!(
        nat.mappings6()
            .iter()
            .all(|m| m.3 == Instant::from_secs(60))
    );
    // An echo request from outside matches no mapping.
    let mut req = testing::echo_request6(SERVER6, EXTERNAL6, 7, 1, b"");
    assert_eq!(
        nat.inbound(&mut req, Instant::ZERO),
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn nat66_mapping_is_endpoint_independent() {
    let mut nat = testing::nat();
    let g = sa6(GUEST6, 6000);
    let mut a = testing::udp6(g, sa6(SERVER6, 3478), b"");
    let mut b = testing::udp6(g, sa6(SERVER6_2, 3478), b"");
    assert_eq!(nat.outbound(&mut a, Instant::ZERO), Verdict::Forward);
    assert_eq!(nat.outbound(&mut b, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::src6(&a), testing::src6(&b));
}

#[test]
fn nat66_filtering_modes() {
    for (filtering, expect) in [
        (Filtering::EndpointIndependent, Verdict::Forward),
        (
            Filtering::AddressAndPortDependent,
            Verdict::Drop(DropReason::Filtered),
        ),
    ] {
        let mut nat = testing::nat_with(NatConfig {
            filtering,
            ..testing::config()
        });
        let mut p = testing::udp6(sa6(GUEST6, 6000), sa6(SERVER6, 3478), b"");
        assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
        // Another remote, never sent to.
        let mut q = testing::udp6(sa6(SERVER6_2, 9), sa6(EXTERNAL6, 6000), b"");
        assert_eq!(nat.inbound(&mut q, Instant::ZERO), expect, "{filtering:?}");
    }
    // Unsolicited: no mapping at all.
    let mut nat = testing::nat();
    let mut q = testing::udp6(sa6(SERVER6, 9), sa6(EXTERNAL6, 6000), b"");
    assert_eq!(
        nat.inbound(&mut q, Instant::ZERO),
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn nat66_udp_mapping_expires_after_five_minutes() {
    let mut nat = testing::nat();
    let mut p = testing::udp6(sa6(GUEST6, 5000), sa6(SERVER6, 53), b"");
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    assert_eq!(nat.next_deadline(), Some(Instant::from_secs(300)));
    assert_eq!(nat.expire(Instant::from_secs(299), 16), 0);
    assert_eq!(nat.expire(Instant::from_secs(300), 16), 1);
    assert!(nat.is_empty());
    let mut r = testing::udp6(sa6(SERVER6, 53), sa6(EXTERNAL6, 5000), b"");
    assert_eq!(
        nat.inbound(&mut r, Instant::from_secs(301)),
        Verdict::Drop(DropReason::NoMapping)
    );
}

#[test]
fn nat66_outbound_sources_outside_the_guest_prefix_are_dropped() {
    let mut nat = testing::nat();
    let other: Ipv6Addr = "fd65::1".parse().unwrap();
    let mut p = testing::udp6(sa6(other, 5000), sa6(SERVER6, 53), b"");
    let before = p.clone();
    assert_eq!(
        nat.outbound(&mut p, Instant::ZERO),
        Verdict::Drop(DropReason::SpoofedSource)
    );
    assert_eq!(p, before);
}

#[test]
fn nat66_inbound_sources_no_outside_host_can_have_are_dropped() {
    let mut nat = testing::nat();
    let mut p = testing::udp6(sa6(GUEST6, 5000), sa6(SERVER6, 53), b"");
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    for src in [
        "fd64::99",     // the guest prefix
        "fd64::1",      // the gateway
        "::1",          // loopback
        "::",           // unspecified
        "ff02::1",      // multicast
        "fe80::1",      // link-local
        "fd64:ffff::2", // the external address
    ] {
        let src: Ipv6Addr = src.parse().unwrap();
        let mut r = testing::udp6(sa6(src, 53), sa6(EXTERNAL6, 5000), b"");
        assert_eq!(
            nat.inbound(&mut r, Instant::ZERO),
            Verdict::Drop(DropReason::InboundSpoofedSource),
            "{src}"
        );
    }
    assert_eq!(drops(&nat, DropReason::InboundSpoofedSource), 7);
}

#[test]
fn nat66_caps_per_host_and_table_hold() {
    let mut nat = testing::nat_with(NatConfig {
        max_flows: 5,
        max_flows_per_host: 3,
        ..testing::config()
    });
    for port in 0..4u16 {
        let mut p = testing::udp6(sa6(GUEST6, 5000 + port), sa6(SERVER6, 53), b"");
        let v = nat.outbound(&mut p, Instant::ZERO);
        if port < 3 {
            assert_eq!(v, Verdict::Forward);
        } else {
            assert_eq!(v, Verdict::Drop(DropReason::HostLimit));
        }
    }
    for port in 0..3u16 {
        let mut p = testing::udp6(sa6(GUEST6_2, 5000 + port), sa6(SERVER6, 53), b"");
        let v = nat.outbound(&mut p, Instant::ZERO);
        if port < 2 {
            assert_eq!(v, Verdict::Forward);
        } else {
            assert_eq!(v, Verdict::Drop(DropReason::TableFull));
        }
    }
    assert_eq!(nat.host_flows6(GUEST6), 3);
    assert_eq!(nat.len(), 5);
}

#[test]
fn nat66_partial_checksums_translate_the_pseudo_header_only() {
    let mut nat = testing::nat();
    for tcp in [false, true] {
        let (g, s) = (sa6(GUEST6, 7000 + u16::from(tcp)), sa6(SERVER6, 80));
        let mut p = if tcp {
            testing::tcp6(g, s, TcpFlags::SYN, &[7u8; 100])
        } else {
            testing::udp6(g, s, &[7u8; 100])
        };
        assert!(testing::make_partial6(&mut p));
        assert_eq!(
            nat.outbound_with(&mut p, Instant::ZERO, L4Checksum::Partial),
            Verdict::Forward
        );
        assert!(complete_l4_checksum(&mut p));
        assert!(testing::checksums6_ok(&p), "tcp {tcp}");
    }
}

#[test]
fn nat66_port_forward_reaches_the_guest_and_its_answer_goes_out() {
    let mut nat = testing::nat();
    nat.add_forward6(Protocol::Tcp, 8080, sa6(GUEST6, 80))
        .unwrap();
    let client = sa6(SERVER6, 50000);
    let mut syn = testing::tcp6(client, sa6(EXTERNAL6, 8080), TcpFlags::SYN, b"");
    assert_eq!(nat.inbound(&mut syn, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::dst6(&syn), sa6(GUEST6, 80));
    assert_eq!(testing::src6(&syn), client);
    assert!(testing::checksums6_ok(&syn));
    let mut syn_ack = testing::tcp6(sa6(GUEST6, 80), client, TcpFlags::SYN_ACK, b"");
    assert_eq!(nat.outbound(&mut syn_ack, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::src6(&syn_ack), sa6(EXTERNAL6, 8080));
    assert!(testing::checksums6_ok(&syn_ack));
    assert_eq!(nat.inbound_flows6(Protocol::Tcp, 8080), (1, 1));
    // IPv4 and IPv6 forwards are apart.
    assert_eq!(nat.inbound_flows(Protocol::Tcp, 8080), (0, 0));
    assert!(nat.remove_forward6(Protocol::Tcp, 8080));
    assert!(
        nat.add_forward6(Protocol::Tcp, 8081, sa6(SERVER6, 80))
            .is_err()
    );
}

#[test]
fn nat66_hairpins_a_guest_to_another_guests_mapping() {
    let mut nat = testing::nat();
    let mut p = testing::udp6(sa6(GUEST6, 5000), sa6(SERVER6, 3478), b"");
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    let mut h = testing::udp6(sa6(GUEST6_2, 6000), sa6(EXTERNAL6, 5000), b"hi");
    assert_eq!(nat.outbound(&mut h, Instant::ZERO), Verdict::Hairpin);
    assert_eq!(testing::dst6(&h), sa6(GUEST6, 5000));
    assert_eq!(testing::src6(&h), sa6(EXTERNAL6, 6000));
    assert!(testing::checksums6_ok(&h));
}

#[test]
fn icmpv6_errors_are_translated_both_ways_with_their_quoted_headers() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 33434));
    let router: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let mut p = testing::udp6(g, s, &[1u8; 32]);
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    // Time exceeded, destination unreachable and Packet Too Big from a
    // router on the way, quoting the translated packet (whole, then cut).
    for (t, quote) in [
        (3u8, p.clone()),
        (1, p.clone()),
        (2, testing::truncate_for_error6(&p)),
    ] {
        let rest = if t == 2 {
            1280u32.to_be_bytes()
        } else {
            [0; 4]
        };
        let mut e = testing::icmp_error6(router, EXTERNAL6, t, 0, rest, &quote);
        assert_eq!(
            nat.inbound(&mut e, Instant::ZERO),
            Verdict::Forward,
            "type {t}"
        );
        assert_eq!(*testing::dst6(&e).ip(), GUEST6);
        assert_eq!(*testing::src6(&e).ip(), router);
        assert_eq!(testing::embedded_src6(&e), g);
        assert_eq!(testing::embedded_dst6(&e), s);
        assert!(testing::checksums6_ok(&e), "type {t}");
        if t == 2 {
            // The MTU is kept.
            assert_eq!(&e[44..48], &1280u32.to_be_bytes());
        }
    }
    // The guest reports an error about a packet it received (port
    // unreachable, parameter problem): translated out.
    let mut r = testing::udp6(s, sa6(EXTERNAL6, 5000), b"x");
    assert_eq!(nat.inbound(&mut r, Instant::ZERO), Verdict::Forward);
    for t in [1u8, 4] {
        let mut e = testing::icmp_error6(GUEST6, *s.ip(), t, 4, [0; 4], &r);
        assert_eq!(
            nat.outbound(&mut e, Instant::ZERO),
            Verdict::Forward,
            "type {t}"
        );
        assert_eq!(*testing::src6(&e).ip(), EXTERNAL6);
        assert_eq!(testing::embedded_dst6(&e), sa6(EXTERNAL6, 5000));
        assert!(testing::checksums6_ok(&e), "type {t}");
    }
    // An error quoting nothing of ours.
    let mut stray = testing::udp6(sa6(EXTERNAL6, 999), s, b"");
    stray.truncate(48);
    let mut e = testing::icmp_error6(router, EXTERNAL6, 1, 0, [0; 4], &stray);
    assert_eq!(
        nat.inbound(&mut e, Instant::ZERO),
        Verdict::Drop(DropReason::IcmpNoMapping)
    );
    // A wrong ICMPv6 checksum.
    let mut e = testing::icmp_error6(router, EXTERNAL6, 1, 0, [0; 4], &p);
    e[43] ^= 1;
    assert_eq!(
        nat.inbound(&mut e, Instant::ZERO),
        Verdict::Drop(DropReason::Malformed)
    );
}

/// A Packet Too Big about a guest's echo request (`ping -6 -M do` over a narrow hop): the
/// quoted echo's identifier and checksum change, and the outer ICMPv6 checksum must follow
/// exactly those bytes (the quoted echo's pseudo-header is not part of the outer message).
#[test]
fn icmpv6_packet_too_big_quoting_an_echo_request_keeps_both_checksums_valid() {
    let mut nat = testing::nat();
    let router: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut p = testing::echo_request6(GUEST6, SERVER6, 0x1234, 1, &[7u8; 1452]);
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    // The router quotes as much as fits in 1280 bytes (RFC 4443 2.4 (c)).
    let quote = &p[..1280 - 48];
    let mut e = testing::icmp_error6(router, EXTERNAL6, 2, 0, 1400u32.to_be_bytes(), quote);
    assert_eq!(nat.inbound(&mut e, Instant::ZERO), Verdict::Forward);
    assert_eq!(*testing::dst6(&e).ip(), GUEST6);
    assert_eq!(testing::embedded_src6(&e), sa6(GUEST6, 0x1234));
    assert!(testing::checksums6_ok(&e));
    // And the other way: the guest's error about an echo reply it got.
    let mut r = testing::echo_reply6(SERVER6, GUEST6, 0x1234, 1, &[7u8; 64]);
    let mut q = testing::echo_request6(GUEST6, SERVER6, 0x1234, 2, &[7u8; 64]);
    assert_eq!(nat.outbound(&mut q, Instant::ZERO), Verdict::Forward);
    let ext_id = testing::src6(&q).port();
    r = testing::echo_reply6(SERVER6, EXTERNAL6, ext_id, 2, &r[48..]);
    assert_eq!(nat.inbound(&mut r, Instant::ZERO), Verdict::Forward);
    let mut e = testing::icmp_error6(GUEST6, SERVER6, 4, 0, [0; 4], &r);
    assert_eq!(nat.outbound(&mut e, Instant::ZERO), Verdict::Forward);
    assert!(testing::checksums6_ok(&e));
}

#[test]
fn nat66_extension_headers_are_walked() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 53));
    for ext in [0u8, 60, 43] {
        let mut p = testing::with_extension6(&testing::udp6(g, s, b"12345678"), ext);
        assert_eq!(
            nat.outbound(&mut p, Instant::ZERO),
            Verdict::Forward,
            "{ext}"
        );
        let bare = testing::strip_extensions6(&p);
        assert_eq!(testing::src6(&bare), sa6(EXTERNAL6, 5000));
        assert!(testing::checksums6_ok(&bare), "{ext}");
        let mut r = testing::with_extension6(&testing::udp6(s, sa6(EXTERNAL6, 5000), b"x"), ext);
        assert_eq!(
            nat.inbound(&mut r, Instant::ZERO),
            Verdict::Forward,
            "{ext}"
        );
        let bare = testing::strip_extensions6(&r);
        assert_eq!(testing::dst6(&bare), g);
        assert!(testing::checksums6_ok(&bare), "{ext}");
    }
    // A routing header with segments left: the checksum's destination is
    // the last segment, which the NAT does not translate.
    let mut p = testing::with_extension6(&testing::udp6(g, s, b""), 43);
    p[40 + 3] = 1;
    let before = p.clone();
    assert_eq!(
        nat.outbound(&mut p, Instant::ZERO),
        Verdict::Drop(DropReason::UnsupportedProtocol)
    );
    assert_eq!(p, before);
    // An extension header running past the packet.
    let mut p = testing::with_extension6(&testing::udp6(g, s, b""), 0);
    p[41] = 9;
    assert_eq!(
        nat.outbound(&mut p, Instant::ZERO),
        Verdict::Drop(DropReason::Malformed)
    );
    // Other next headers (ESP, no next header) are unsupported.
    for next in [50u8, 59] {
        let mut p = testing::udp6(g, s, b"");
        p[6] = next;
        assert_eq!(
            nat.outbound(&mut p, Instant::ZERO),
            Verdict::Drop(DropReason::UnsupportedProtocol)
        );
    }
}

#[test]
fn nat66_fragments_are_translated_like_ipv4_fragments_in_and_out_of_order() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 53));
    let whole = testing::udp6(g, s, &[9u8; 100]);
    // In order, outbound.
    let mut frags = testing::fragment6(&whole, 40, 77);
    assert_eq!(frags.len(), 3);
    for f in &mut frags {
        assert_eq!(nat.outbound(f, Instant::ZERO), Verdict::Forward);
    }
    let out = testing::reassemble6(&frags);
    assert_eq!(testing::src6(&out), sa6(EXTERNAL6, 5000));
    assert!(testing::checksums6_ok(&out));
    assert!(frags.iter().all(|f| testing::src6(f).ip() == &EXTERNAL6));
    // Out of order, inbound: the later fragments are held until the first
    // comes, then released translated.
    let reply = testing::udp6(s, sa6(EXTERNAL6, 5000), &[5u8; 100]);
    let mut frags = testing::fragment6(&reply, 40, 78);
    assert_eq!(nat.inbound(&mut frags[2], Instant::ZERO), Verdict::Held);
    assert_eq!(nat.inbound(&mut frags[1], Instant::ZERO), Verdict::Held);
    assert_eq!(nat.held_fragments(), (2, frags[1].len() + frags[2].len()));
    assert_eq!(nat.inbound(&mut frags[0], Instant::ZERO), Verdict::Forward);
    let mut buf = [0u8; 1500];
    let mut released = Vec::new();
    while let Some(r) = nat.poll_released(nat::Direction::Inbound, &mut buf) {
        assert_eq!(r.verdict, Verdict::Forward);
        released.push(buf[..r.len].to_vec());
    }
    assert_eq!(released.len(), 2);
    // Released in the order they were held: 2, then 1.
    let back = testing::reassemble6(&[frags[0].clone(), released[1].clone(), released[0].clone()]);
    assert_eq!(testing::dst6(&back), g);
    assert!(testing::checksums6_ok(&back));
    // A later fragment whose first never comes expires and is counted.
    let mut lone = testing::fragment6(&reply, 40, 79);
    assert_eq!(nat.inbound(&mut lone[1], Instant::ZERO), Verdict::Held);
    let _ = nat.expire(Instant::from_secs(31), 16);
    assert_eq!(drops(&nat, DropReason::Fragment), 1);
}

#[test]
fn ipv4_and_ipv6_share_one_nat_and_a_malformed_packet_is_counted_once() {
    let mut nat = testing::nat();
    let mut v4 = testing::udp(
        core::net::SocketAddrV4::new(testing::GUEST, 5000),
        core::net::SocketAddrV4::new(testing::SERVER, 53),
        b"",
    );
    let mut v6 = testing::udp6(sa6(GUEST6, 5000), sa6(SERVER6, 53), b"");
    assert_eq!(nat.outbound(&mut v4, Instant::ZERO), Verdict::Forward);
    assert_eq!(nat.outbound(&mut v6, Instant::ZERO), Verdict::Forward);
    // The same guest port keeps its number in both families.
    assert_eq!(testing::src(&v4).port(), 5000);
    assert_eq!(testing::src6(&v6).port(), 5000);
    assert_eq!(nat.len(), 2);
    assert_eq!(nat.stats().outbound_forwarded, 2);
    assert_eq!(nat.stats().flows, 2);
    // A short IPv6 packet, a truncated one and a version-5 one: one drop each.
    for p in [
        &mut [0x60u8; 10][..],
        &mut v6.clone()[..45],
        &mut [0x50u8; 40][..],
    ] {
        assert_eq!(
            nat.outbound(p, Instant::ZERO),
            Verdict::Drop(DropReason::Malformed)
        );
    }
    assert_eq!(drops(&nat, DropReason::Malformed), 3);
    assert_eq!(nat.stats_of(true).drops[DropReason::Malformed.index()], 2);
}

#[test]
fn nat66_config_is_validated() {
    let bad = |c: NatConfig| Nat::new(c).is_err();
    assert!(bad(NatConfig {
        internal_prefix_len6: 129,
        ..NatConfig::default()
    }));
    assert!(bad(NatConfig {
        external_addr6: "fd64::2".parse().unwrap(),
        ..NatConfig::default()
    }));
    let c = NatConfig::default();
    assert_eq!(c.external_addr6, EXTERNAL6);
    assert_eq!(c.internal_prefix_len6, 64);
    let _ = Duration::ZERO;
}

#[test]
fn nat66_redirect_sends_to_the_target_and_replies_look_like_the_original() {
    let mut nat = testing::nat();
    let gateway: Ipv6Addr = "fd64::1".parse().unwrap();
    let upstream = sa6(SERVER6, 53);
    nat.add_redirect6(Protocol::Udp, sa6(gateway, 53), upstream)
        .unwrap();
    let g = sa6(GUEST6, 5353);
    let mut q = testing::udp6(g, sa6(gateway, 53), b"q");
    assert_eq!(nat.outbound(&mut q, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::dst6(&q), upstream);
    assert_eq!(*testing::src6(&q).ip(), EXTERNAL6);
    assert!(testing::checksums6_ok(&q));
    let mut a = testing::udp6(upstream, testing::src6(&q), b"a");
    assert_eq!(nat.inbound(&mut a, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::src6(&a), sa6(gateway, 53));
    assert_eq!(testing::dst6(&a), g);
    assert!(testing::checksums6_ok(&a));
    assert!(nat.remove_redirect6(Protocol::Udp, sa6(gateway, 53)));
    // A target inside the guest prefix is refused.
    assert!(
        nat.add_redirect6(Protocol::Udp, sa6(gateway, 53), sa6(GUEST6_2, 53))
            .is_err()
    );
}

#[test]
fn nat66_redirected_flow_keeps_its_target_outside_the_slot() {
    // An IPv6 slot holds no remote endpoint: a redirected flow's target
    // comes from the redirect's entry, for every packet and for errors.
    let mut nat = testing::nat();
    let gateway: Ipv6Addr = "fd64::1".parse().unwrap();
    let upstream = sa6(SERVER6, 53);
    nat.add_redirect6(Protocol::Udp, sa6(gateway, 53), upstream)
        .unwrap();
    let g = sa6(GUEST6, 5353);
    let mut q = testing::udp6(g, sa6(gateway, 53), b"q");
    assert_eq!(nat.outbound(&mut q, Instant::ZERO), Verdict::Forward);
    let ext = testing::src6(&q);
    // The rule goes; the live flow keeps its target.
    assert!(nat.remove_redirect6(Protocol::Udp, sa6(gateway, 53)));
    let mut q2 = testing::udp6(g, sa6(gateway, 53), b"q2");
    assert_eq!(nat.outbound(&mut q2, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::dst6(&q2), upstream);
    assert_eq!(testing::src6(&q2), ext);
    // Only the target answers through the flow (another remote is not
    // made to look like the gateway).
    let mut other = testing::udp6(sa6(SERVER6, 54), ext, b"x");
    let _ = nat.inbound(&mut other, Instant::ZERO);
    assert_eq!(testing::src6(&other), sa6(SERVER6, 54));
    let mut a = testing::udp6(upstream, ext, b"a");
    assert_eq!(nat.inbound(&mut a, Instant::ZERO), Verdict::Forward);
    assert_eq!(testing::src6(&a), sa6(gateway, 53));
    // An error from the target about the query looks like the gateway's.
    let mut e = testing::icmp_error6(*upstream.ip(), EXTERNAL6, 1, 4, [0; 4], &q2);
    assert_eq!(nat.inbound(&mut e, Instant::ZERO), Verdict::Forward);
    assert_eq!(*testing::src6(&e).ip(), gateway);
    assert_eq!(*testing::dst6(&e).ip(), GUEST6);
    assert!(testing::checksums6_ok(&e));
    // The guest's error about the answer goes back to the target.
    let mut ge = testing::icmp_error6(GUEST6, gateway, 1, 4, [0; 4], &a);
    assert_eq!(nat.outbound(&mut ge, Instant::ZERO), Verdict::Forward);
    assert_eq!(*testing::dst6(&ge).ip(), *upstream.ip());
    assert_eq!(*testing::src6(&ge).ip(), EXTERNAL6);
    assert!(testing::checksums6_ok(&ge));
}

#[test]
fn nat66_echo_to_the_external_address_hairpins_through_a_live_echo_mapping() {
    let mut nat = testing::nat();
    let mut a = testing::echo_request6(GUEST6, SERVER6, 7, 1, b"");
    assert_eq!(nat.outbound(&mut a, Instant::ZERO), Verdict::Forward);
    let ext_id = testing::src6(&a).port();
    // Another guest pings the external address with that identifier.
    let mut b = testing::echo_request6(GUEST6_2, EXTERNAL6, ext_id, 1, b"x");
    assert_eq!(nat.outbound(&mut b, Instant::ZERO), Verdict::Hairpin);
    assert_eq!(*testing::dst6(&b).ip(), GUEST6);
    assert_eq!(*testing::src6(&b).ip(), EXTERNAL6);
    assert!(testing::checksums6_ok(&b));
    // Its reply loops back to the sender with the sender's identifier.
    let mut r = testing::echo_reply6(GUEST6, EXTERNAL6, 7, 1, b"x");
    assert_eq!(nat.outbound(&mut r, Instant::ZERO), Verdict::Hairpin);
    assert_eq!(testing::dst6(&r), sa6(GUEST6_2, ext_id));
    assert!(testing::checksums6_ok(&r));
}

#[test]
fn icmpv6_errors_quoting_packets_with_extension_headers_are_translated() {
    let mut nat = testing::nat();
    let (g, s) = (sa6(GUEST6, 5000), sa6(SERVER6, 33434));
    let router: Ipv6Addr = "2001:db8:ffff::1".parse().unwrap();
    let mut p = testing::with_extension6(&testing::udp6(g, s, &[1u8; 16]), 60);
    assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
    let mut e = testing::icmp_error6(router, EXTERNAL6, 3, 0, [0; 4], &p);
    assert_eq!(nat.inbound(&mut e, Instant::ZERO), Verdict::Forward);
    assert_eq!(*testing::dst6(&e).ip(), GUEST6);
    assert!(testing::checksums6_ok(&e));
    // The quote, extension header stepped over, names the guest again.
    let quote = testing::strip_extensions6(&e[48..]);
    assert_eq!(testing::src6(&quote), g);
    assert_eq!(testing::dst6(&quote), s);
    assert!(testing::checksums6_ok(&quote));
}
