//! Property tests of the NAT's invariants (proptest).

use core::net::{Ipv4Addr, SocketAddrV4};

use nat::testing::{self, EXTERNAL, TcpFlags};
use nat::{Instant, L4Checksum, Nat, NatConfig, PortForward, Protocol, Verdict};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug)]
enum Kind {
    Udp,
    Tcp,
    Echo,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![Just(Kind::Udp), Just(Kind::Tcp), Just(Kind::Echo)]
}

fn guest() -> impl Strategy<Value = Ipv4Addr> {
    (2u8..=254).prop_map(|h| Ipv4Addr::new(192, 168, 64, h))
}

fn remote() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(|x| Ipv4Addr::from(0xc612_0000 | (x & 0x1_ffff))) // 198.18.0.0/15
}

fn build(kind: Kind, src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8], reply: bool) -> Vec<u8> {
    match kind {
        Kind::Udp => testing::udp(src, dst, payload),
        Kind::Tcp => testing::tcp(
            src,
            dst,
            if reply {
                TcpFlags::SYN_ACK
            } else {
                TcpFlags::SYN
            },
            payload,
        ),
        Kind::Echo if reply => testing::echo_reply(*src.ip(), *dst.ip(), dst.port(), 1, payload),
        Kind::Echo => testing::echo_request(*src.ip(), *dst.ip(), src.port(), 1, payload),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Checksums after translation equal a full recompute, both ways, and
    /// inbound(reply to outbound(p)) restores the original addresses and ports.
    #[test]
    fn translation_round_trip_restores_the_tuple_and_keeps_checksums(
        kind in kind(),
        g in guest(), sport in 1u16.., r in remote(), dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        zero_udp_csum in any::<bool>(),
    ) {
        let mut nat = testing::nat();
        let (src, dst) = (SocketAddrV4::new(g, sport), SocketAddrV4::new(r, if matches!(kind, Kind::Echo) { 0 } else { dport }));
        let mut p = build(kind, src, dst, &payload, false);
        if zero_udp_csum && matches!(kind, Kind::Udp) {
            p[26] = 0;
            p[27] = 0;
        }
        prop_assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
        prop_assert!(testing::checksums_match_full_recompute(&p));
        if zero_udp_csum && matches!(kind, Kind::Udp) {
            prop_assert_eq!(&p[26..28], &[0, 0]);
        }
        let ext = testing::src(&p);
        prop_assert_eq!(*ext.ip(), EXTERNAL);
        prop_assert_eq!(*testing::dst(&p).ip(), *dst.ip());
        if !matches!(kind, Kind::Echo) {
            prop_assert_eq!(testing::dst(&p), dst);
        }
        let mut reply = build(kind, dst, ext, &payload, true);
        prop_assert_eq!(nat.inbound(&mut reply, Instant::from_secs(1)), Verdict::Forward);
        prop_assert!(testing::checksums_match_full_recompute(&reply));
        prop_assert_eq!(testing::dst(&reply), src);
        prop_assert_eq!(*testing::src(&reply).ip(), *dst.ip());
        if !matches!(kind, Kind::Echo) {
            prop_assert_eq!(testing::src(&reply), dst);
        }
    }

    /// A partial-checksum packet translated (outbound with or without a
    /// port remap, its reply inbound, a hairpin to a forwarded port) and
    /// then completed in software equals a full recompute of the translated
    /// packet.
    #[test]
    fn partial_checksums_translated_then_completed_equal_a_full_recompute(
        tcp in any::<bool>(),
        g in guest(), sport in 1u16.., r in remote(), dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        remap in any::<bool>(), raw in any::<u16>(),
    ) {
        let mut nat = testing::nat();
        let kind = if tcp { Kind::Tcp } else { Kind::Udp };
        let (src, dst) = (SocketAddrV4::new(g, sport), SocketAddrV4::new(r, dport));
        if remap {
            // Another guest holds the same port: ours is remapped.
            let other = Ipv4Addr::from(u32::from(g) ^ 1);
            let mut o = build(kind, SocketAddrV4::new(other, sport), dst, b"", false);
            prop_assert_eq!(nat.outbound(&mut o, Instant::ZERO), Verdict::Forward);
        }
        let mut p = build(kind, src, dst, &payload, false);
        prop_assert!(testing::make_partial(&mut p));
        prop_assert_eq!(nat.outbound_with(&mut p, Instant::ZERO, L4Checksum::Partial), Verdict::Forward);
        partial_completes(&p)?;
        let ext = testing::src(&p);
        let mut reply = build(kind, dst, ext, &payload, true);
        prop_assert!(testing::make_partial(&mut reply));
        prop_assert_eq!(nat.inbound_with(&mut reply, Instant::ZERO, L4Checksum::Partial), Verdict::Forward);
        prop_assert_eq!(testing::dst(&reply), src);
        partial_completes(&reply)?;
        // Hairpin to a forwarded port; the partial field may hold any value
        // (the property is about the difference the NAT applies).
        let fwd = 1 + raw % 1000;
        nat.add_forward(PortForward { protocol: if tcp { Protocol::Tcp } else { Protocol::Udp }, external_port: fwd, internal: SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 1), 8) }).unwrap();
        let mut h = build(kind, SocketAddrV4::new(g, sport ^ 0x8000), SocketAddrV4::new(EXTERNAL, fwd), &payload, false);
        prop_assert!(testing::make_partial(&mut h));
        prop_assert_eq!(nat.outbound_with(&mut h, Instant::ZERO, L4Checksum::Partial), Verdict::Hairpin);
        partial_completes(&h)?;
    }

    /// The table never exceeds its caps, whatever the traffic and timing.
    #[test]
    fn table_never_exceeds_its_caps(
        ops in proptest::collection::vec((0u8..5, 2u8..8, 1000u16..1040, 0u8..4, 0u64..400), 1..300),
    ) {
        let cfg = NatConfig { max_flows: 16, max_flows_per_host: 5, max_inbound_flows: 5, max_inbound_flows_per_forward: 3, max_fragments: 3, max_held_fragments: 3, max_held_bytes: 400, port_range: 1024..=1100, ..testing::config() };
        let mut nat = testing::nat_with(cfg);
        nat.add_forward(PortForward { protocol: Protocol::Udp, external_port: 7000, internal: SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 2), 7) }).unwrap();
        nat.add_forward(PortForward { protocol: Protocol::Udp, external_port: 7001, internal: SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 3), 7) }).unwrap();
        nat.add_forward(PortForward { protocol: Protocol::Udp, external_port: 7002, internal: SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 4), 7) }).unwrap();
        let mut now = 0u64;
        for (op, host, port, srv, dt) in ops {
            now += dt * 1000;
            let t = Instant::from_millis(now);
            let g = SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, host), port);
            let s = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, srv), 53);
            match op {
                0 => { let _ = nat.outbound(&mut testing::udp(g, s, b"x"), t); }
                1 => {
                    let mut whole = testing::udp(g, s, &[0u8; 100]);
                    testing::set_ip_id(&mut whole, port);
                    let _ = nat.outbound(&mut testing::fragment(&whole, 40)[0], t);
                }
                2 => {
                    // From outside, through a forward (7000..=7002) or not (7003).
                    let remote = SocketAddrV4::new(Ipv4Addr::new(198, 19, host, srv), port);
                    let _ = nat.inbound(&mut testing::udp(remote, SocketAddrV4::new(EXTERNAL, 7000 + u16::from(srv)), b"x"), t);
                    if srv == 1 {
                        // The guest answers, which the remote may then confirm.
                        let _ = nat.outbound(&mut testing::udp(SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 3), 7), remote, b"y"), t);
                    }
                }
                4 => {
                    // A later fragment, possibly before its first.
                    let mut whole = testing::udp(g, s, &[0u8; 100]);
                    testing::set_ip_id(&mut whole, port);
                    let _ = nat.outbound(&mut testing::fragment(&whole, 40)[2], t);
                    // And one from outside, from one of a few sources.
                    let mut from_outside = testing::udp(s, SocketAddrV4::new(EXTERNAL, port), &[0u8; 100]);
                    testing::set_ip_id(&mut from_outside, port);
                    let _ = nat.inbound(&mut testing::fragment(&from_outside, 40)[2], t);
                    let mut buf = [0u8; 64];
                    if srv == 0 {
                        while nat.poll_released(nat::Direction::Outbound, &mut buf).is_some() {}
                    }
                }
                _ => { nat.expire(t, usize::from(host)); }
            }
            let (inbound, _) = nat.inbound_flows(Protocol::Udp, 7000);
            prop_assert!(inbound <= 5);
            for fwd in 7000..=7002 {
                prop_assert!(nat.inbound_flows(Protocol::Udp, fwd).1 <= 3);
            }
            prop_assert!(nat.len() - inbound <= 16);
            prop_assert!(nat.fragments() <= 3);
            for d in [nat::Direction::Outbound, nat::Direction::Inbound] {
                prop_assert!(nat.held_fragments_of(d).0 <= 3 && nat.held_fragments_of(d).1 <= 400);
            }
            for h in 2..8 {
                prop_assert!(nat.host_flows(Ipv4Addr::new(192, 168, 64, h)) <= 5);
            }
            prop_assert_eq!(nat.mappings().len(), nat.len());
        }
    }

    /// Through random traffic, sweeps with random budgets and table growth,
    /// every flow that has not expired still translates both ways, and the
    /// table holds exactly the flows that were created and not expired.
    #[test]
    fn live_flows_survive_sweeps_and_growth(
        ops in proptest::collection::vec((any::<u16>(), 0u64..200, 1usize..40, any::<bool>()), 1..400),
    ) {
        let mut nat = testing::nat();
        let mut live: std::collections::HashMap<SocketAddrV4, (SocketAddrV4, u64)> = Default::default();
        let server = SocketAddrV4::new(testing::SERVER, 53);
        let mut now = 0u64;
        for (id, dt, budget, sweep) in ops {
            now += dt * 1000;
            let t = Instant::from_millis(now);
            let g = SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 2 + (id % 200) as u8), 1024 + id / 200);
            let mut p = testing::udp(g, server, b"x");
            prop_assert_eq!(nat.outbound(&mut p, t), Verdict::Forward);
            live.insert(g, (testing::src(&p), now + 300_000));
            if sweep {
                while nat.next_deadline().is_some_and(|d| d <= t) {
                    nat.expire(t, budget);
                }
                live.retain(|_, (_, exp)| *exp > now);
                prop_assert_eq!(nat.len(), live.len());
            }
            for (g, (ext, _)) in live.iter().filter(|(_, (_, exp))| *exp > now) {
                let mut r = testing::udp(server, *ext, b"r");
                prop_assert_eq!(nat.inbound(&mut r, t), Verdict::Forward);
                prop_assert_eq!(testing::dst(&r), *g);
            }
        }
    }

    /// Arbitrary bytes never panic; whatever is forwarded parses as IPv4 with
    /// a correct header checksum, and a valid transport checksum stays valid.
    #[test]
    fn arbitrary_bytes_never_panic_and_forwarded_packets_stay_valid(
        bytes in proptest::collection::vec(any::<u8>(), 0..120),
        inbound in any::<bool>(),
    ) {
        let mut nat = seeded();
        check_one(&mut nat, bytes, inbound)?;
    }

    /// A datagram to a live mapping is forwarded exactly when its source is
    /// one an outside host can have: not the internal network, not the
    /// external address, not 0/8, 127/8, 224/4 or 240/4 (RFC 1812 5.3.7).
    #[test]
    fn inbound_sources_outside_hosts_cannot_have_are_dropped(
        src in prop_oneof![
            any::<u32>(),
            any::<u8>().prop_map(|h| 0xc0a8_4000 | u32::from(h)), // 192.168.64.0/24
            any::<u32>().prop_map(|x| 0x7f00_0000 | (x & 0xff_ffff)), // 127/8
            any::<u32>().prop_map(|x| x & 0xff_ffff),               // 0/8
            any::<u32>().prop_map(|x| 0xe000_0000 | x),             // 224/3
            Just(u32::from(EXTERNAL)),
            any::<u16>().prop_map(|x| 0xc0a8_4100 | u32::from(x & 0xff)), // 192.168.65/24: fine
        ],
        sport in 1u16..,
    ) {
        let mut nat = seeded();
        let src = Ipv4Addr::from(src);
        let first = src.octets()[0];
        let martian = u32::from(src) & 0xffff_ff00 == 0xc0a8_4000
            || src == EXTERNAL
            || first == 0
            || first == 127
            || first >= 224;
        let mut p = testing::udp(SocketAddrV4::new(src, sport), SocketAddrV4::new(EXTERNAL, 5000), b"x");
        let v = nat.inbound(&mut p, Instant::ZERO);
        if martian {
            prop_assert_eq!(v, Verdict::Drop(nat::DropReason::InboundSpoofedSource));
        } else {
            prop_assert_eq!(v, Verdict::Forward);
        }
    }

    /// Valid packets with a few bytes changed (so they get past the header
    /// checks) never panic and stay valid when forwarded.
    #[test]
    fn mutated_packets_never_panic_and_forwarded_packets_stay_valid(
        kind in kind(), inbound in any::<bool>(),
        edits in proptest::collection::vec((0usize..80, any::<u8>()), 0..4),
        fix in any::<bool>(),
    ) {
        let mut nat = seeded();
        let (g, s) = (SocketAddrV4::new(testing::GUEST, 5000), SocketAddrV4::new(testing::SERVER, 53));
        let mut p = if inbound { build(kind, s, SocketAddrV4::new(EXTERNAL, 5000), b"payload", true) } else { build(kind, g, s, b"payload", false) };
        let n = p.len();
        for (at, v) in edits {
            p[at % n] = v;
        }
        if fix {
            testing::fix_ipv4_checksum(&mut p);
        }
        check_one(&mut nat, p, inbound)?;
    }
}

/// The partial field of a translated packet is its new pseudo-header sum,
/// and completing it gives a full recompute's checksum.
fn partial_completes(p: &[u8]) -> Result<(), TestCaseError> {
    let field = testing::l4_checksum(p).unwrap_or(0);
    prop_assert!(testing::ones_complement_eq(
        field,
        testing::pseudo_sum(p).unwrap_or(1)
    ));
    let mut done = p.to_vec();
    prop_assert!(nat::complete_l4_checksum(&mut done));
    let want = testing::recompute_l4_checksum(&done).unwrap_or(0);
    prop_assert!(testing::ones_complement_eq(
        testing::l4_checksum(&done).unwrap_or(1),
        want
    ));
    prop_assert!(testing::checksums_match_full_recompute(&done));
    Ok(())
}

/// A NAT with flows, a forward and a redirect, so inputs can hit them.
fn seeded() -> Nat {
    let mut nat = testing::nat();
    let (g, s) = (
        SocketAddrV4::new(testing::GUEST, 5000),
        SocketAddrV4::new(testing::SERVER, 53),
    );
    for mut p in [
        testing::udp(g, s, b"q"),
        testing::tcp(g, s, TcpFlags::SYN, b""),
        testing::echo_request(*g.ip(), *s.ip(), 5000, 1, b""),
    ] {
        let _ = nat.outbound(&mut p, Instant::ZERO);
    }
    nat.add_forward(PortForward {
        protocol: Protocol::Tcp,
        external_port: 80,
        internal: SocketAddrV4::new(testing::GUEST2, 80),
    })
    .unwrap();
    nat
}

fn check_one(nat: &mut Nat, mut p: Vec<u8>, inbound: bool) -> Result<(), TestCaseError> {
    let before = p.clone();
    // Bytes past the IPv4 total length are padding, not part of the packet.
    let declared = p
        .get(2..4)
        .map_or(p.len(), |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
    let transport_was_ok = testing::transport_checksum_ok(&p[..declared.min(p.len())]);
    let v = if inbound {
        nat.inbound(&mut p, Instant::ZERO)
    } else {
        nat.outbound(&mut p, Instant::ZERO)
    };
    if v == Verdict::Drop(nat::DropReason::Malformed) || matches!(v, Verdict::Drop(_)) {
        prop_assert_eq!(&p, &before, "a dropped packet is left alone");
    } else {
        prop_assert!(testing::parses(&p));
        let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
        let whole = u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0;
        if whole && transport_was_ok {
            prop_assert!(
                testing::transport_checksum_ok(&p[..total]),
                "transport checksum broken"
            );
        }
        prop_assert!(testing::checksums_match_full_recompute(&p) || !transport_was_ok || !whole);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// NAT66: the same properties on IPv6.

fn guest6() -> impl Strategy<Value = core::net::Ipv6Addr> {
    any::<u64>().prop_map(|x| {
        core::net::Ipv6Addr::from(
            u128::from(testing::GUEST6) & !0xffff_ffff_ffff_ffff | u128::from(x.max(2)),
        )
    })
}

fn remote6() -> impl Strategy<Value = core::net::Ipv6Addr> {
    any::<u128>().prop_map(|x| {
        core::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (x & ((1u128 << 96) - 1)))
    }) // 2001:db8::/32
}

fn build6(
    kind: Kind,
    src: core::net::SocketAddrV6,
    dst: core::net::SocketAddrV6,
    payload: &[u8],
    reply: bool,
) -> Vec<u8> {
    match kind {
        Kind::Udp => testing::udp6(src, dst, payload),
        Kind::Tcp => testing::tcp6(
            src,
            dst,
            if reply {
                TcpFlags::SYN_ACK
            } else {
                TcpFlags::SYN
            },
            payload,
        ),
        Kind::Echo if reply => testing::echo_reply6(*src.ip(), *dst.ip(), dst.port(), 1, payload),
        Kind::Echo => testing::echo_request6(*src.ip(), *dst.ip(), src.port(), 1, payload),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// NAT66: checksums after translation equal a full recompute, both ways
    /// (TCP, UDP and ICMPv6 over the pseudo-header), and inbound(reply to
    /// outbound(p)) restores the original addresses and ports, with or
    /// without a remapped port.
    #[test]
    fn nat66_round_trip_restores_the_tuple_and_keeps_checksums(
        kind in kind(),
        g in guest6(), sport in 1u16.., r in remote6(), dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        remap in any::<bool>(),
    ) {
        let mut nat = testing::nat();
        let (src, dst) = (testing::sa6(g, sport), testing::sa6(r, if matches!(kind, Kind::Echo) { 0 } else { dport }));
        if remap {
            let other = core::net::Ipv6Addr::from(u128::from(g) ^ 1);
            let mut o = build6(kind, testing::sa6(other, sport), dst, b"", false);
            prop_assert_eq!(nat.outbound(&mut o, Instant::ZERO), Verdict::Forward);
        }
        let mut p = build6(kind, src, dst, &payload, false);
        prop_assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
        prop_assert!(testing::checksums6_ok(&p));
        let ext = testing::src6(&p);
        prop_assert_eq!(*ext.ip(), testing::EXTERNAL6);
        prop_assert_eq!(*testing::dst6(&p).ip(), *dst.ip());
        let mut reply = build6(kind, dst, ext, &payload, true);
        prop_assert_eq!(nat.inbound(&mut reply, Instant::from_secs(1)), Verdict::Forward);
        prop_assert!(testing::checksums6_ok(&reply));
        prop_assert_eq!(testing::dst6(&reply), src);
        prop_assert_eq!(*testing::src6(&reply).ip(), *dst.ip());
    }

    /// NAT66 partial checksums: translated (with or without a port remap)
    /// then completed in software, they equal a full recompute.
    #[test]
    fn nat66_partial_checksums_translated_then_completed_equal_a_full_recompute(
        tcp in any::<bool>(),
        g in guest6(), sport in 1u16.., r in remote6(), dport in 1u16..,
        payload in proptest::collection::vec(any::<u8>(), 0..1500),
        remap in any::<bool>(),
    ) {
        let mut nat = testing::nat();
        let kind = if tcp { Kind::Tcp } else { Kind::Udp };
        let (src, dst) = (testing::sa6(g, sport), testing::sa6(r, dport));
        if remap {
            let other = core::net::Ipv6Addr::from(u128::from(g) ^ 1);
            let mut o = build6(kind, testing::sa6(other, sport), dst, b"", false);
            prop_assert_eq!(nat.outbound(&mut o, Instant::ZERO), Verdict::Forward);
        }
        for inbound in [false, true] {
            let mut p = if inbound {
                build6(kind, dst, testing::sa6(testing::EXTERNAL6, testing::src6(&{
                    let mut q = build6(kind, src, dst, b"", false);
                    let _ = nat.outbound(&mut q, Instant::ZERO);
                    q
                }).port()), &payload, true)
            } else {
                build6(kind, src, dst, &payload, false)
            };
            prop_assert!(testing::make_partial6(&mut p));
            let v = if inbound {
                nat.inbound_with(&mut p, Instant::ZERO, L4Checksum::Partial)
            } else {
                nat.outbound_with(&mut p, Instant::ZERO, L4Checksum::Partial)
            };
            prop_assert_eq!(v, Verdict::Forward);
            prop_assert!(nat::complete_l4_checksum(&mut p));
            prop_assert!(testing::checksums6_ok(&p));
        }
    }

    /// NAT66: the table never exceeds its caps (total, per host, per forward).
    #[test]
    fn nat66_table_never_exceeds_its_caps(
        ops in proptest::collection::vec((0u8..4, 2u8..8, 1000u16..1040, 0u8..4, 0u64..400), 1..300),
    ) {
        let cfg = NatConfig { max_flows: 16, max_flows_per_host: 5, max_inbound_flows: 5, max_inbound_flows_per_forward: 3, port_range: 1024..=1100, ..testing::config() };
        let mut nat = testing::nat_with(cfg);
        let host = |h: u8| core::net::Ipv6Addr::from(u128::from(testing::GUEST6) & !0xff | u128::from(h));
        for (i, fwd) in (7000u16..=7002).enumerate() {
            nat.add_forward6(Protocol::Udp, fwd, testing::sa6(host(2 + i as u8), 7)).unwrap();
        }
        let mut now = 0u64;
        for (op, h, port, srv, dt) in ops {
            now += dt * 1000;
            let t = Instant::from_millis(now);
            let g = testing::sa6(host(h), port);
            let s = testing::sa6(core::net::Ipv6Addr::from(u128::from(testing::SERVER6) + u128::from(srv)), 53);
            match op {
                0 => { let _ = nat.outbound(&mut testing::udp6(g, s, b"x"), t); }
                1 => {
                    let remote = testing::sa6(core::net::Ipv6Addr::from(u128::from(testing::SERVER6) + (u128::from(h) << 16) + u128::from(srv)), port);
                    let _ = nat.inbound(&mut testing::udp6(remote, testing::sa6(testing::EXTERNAL6, 7000 + u16::from(srv)), b"x"), t);
                    if srv == 1 {
                        let _ = nat.outbound(&mut testing::udp6(testing::sa6(host(3), 7), remote, b"y"), t);
                    }
                }
                2 => { let _ = nat.outbound(&mut testing::echo_request6(host(h), *s.ip(), port, 1, b""), t); }
                _ => { nat.expire(t, usize::from(h)); }
            }
            let (inbound, _) = nat.inbound_flows6(Protocol::Udp, 7000);
            prop_assert!(inbound <= 5);
            for fwd in 7000..=7002 {
                prop_assert!(nat.inbound_flows6(Protocol::Udp, fwd).1 <= 3);
            }
            prop_assert!(nat.len() - inbound <= 16);
            for h in 2..8 {
                prop_assert!(nat.host_flows6(host(h)) <= 5);
            }
            prop_assert_eq!(nat.mappings6().len(), nat.len());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Header-split (`Nat::outbound_head_with`): a TCP packet translated from a head of its
    /// first bytes, the rest left where it is, is byte for byte the packet the whole-packet
    /// translation makes, with the same verdict; IPv4 and IPv6, complete and partial
    /// checksums, the flow's first packet and a later one (the same external port).
    #[test]
    fn a_tcp_packet_translated_from_its_head_equals_the_whole_translation(
        v6 in any::<bool>(), partial in any::<bool>(),
        g in guest(), g6 in guest6(), sport in 1u16.., r in remote(), r6 in remote6(), dport in 1u16..,
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..2000), 2),
        cuts in proptest::collection::vec(any::<usize>(), 2),
    ) {
        let (mut whole_nat, mut head_nat) = (testing::nat(), testing::nat());
        for (k, (payload, cut)) in payloads.iter().zip(&cuts).enumerate() {
            let flags = if k == 0 { TcpFlags::SYN } else { TcpFlags::ACK };
            let mut p = if v6 {
                testing::tcp6(testing::sa6(g6, sport), testing::sa6(r6, dport), flags, payload)
            } else {
                testing::tcp(SocketAddrV4::new(g, sport), SocketAddrV4::new(r, dport), flags, payload)
            };
            if partial {
                let made = if v6 { testing::make_partial6(&mut p) } else { testing::make_partial(&mut p) };
                prop_assert!(made);
            }
            let l4 = if partial { L4Checksum::Partial } else { L4Checksum::Complete };
            let headers = if v6 { 40 } else { 20 } + 20;
            let head_len = headers + cut % (p.len() - headers);
            let now = Instant::from_secs(k as u64);
            let mut whole = p.clone();
            let v = whole_nat.outbound_with(&mut whole, now, l4);
            prop_assert_eq!(v, Verdict::Forward);
            let mut split = p.clone();
            let total = split.len();
            let got = head_nat.outbound_head_with(&mut split[..head_len], total, now, l4);
            prop_assert_eq!(got, Some(v));
            prop_assert!(testing::same_packet(&split, &whole), "head + rest equal the whole translation");
            prop_assert_eq!(&split[head_len..], &p[head_len..], "the rest untouched");
        }
    }
}
