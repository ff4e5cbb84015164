//! The guest side of IPv6 at the gateway: Neighbor Discovery (RFC 4861), Router
//! Advertisements for SLAAC (RFC 4862) with RDNSS (RFC 8106), stateless DHCPv6 (RFC 8415,
//! checked with dhcproto and etherparse), ICMPv6 echo, anti-spoofing, learned addresses, and
//! hostile inputs.

use core::net::{Ipv4Addr, Ipv6Addr};
use core::time::Duration;

use bridge::testing::{GATEWAY, GATEWAY_MAC, GUEST_MAC, icmpv6_frame, ipv6_frame, udp6_frame};
use bridge::{
    Dns6, DropCause, EgressAction, EgressPolicy, Error, Gateway, GatewayConfig, ICMP_ERROR_BURST,
    Ipv6Config, MAX_GUEST_IPV6_ADDRS, MacAddr, ROUTER_LIFETIME_S, TxAction,
    UNSOLICITED_RA_INTERVAL_MS,
};
use dhcproto::v6::{DhcpOption, Message, MessageType, ORO, OptionCode};
use dhcproto::{Decodable, Encodable};
use nat::Instant;
use wire::ndp::{self, NdpOptions};
use wire::{EthernetFrame, Icmpv6Packet, Ipv6Packet, UdpPacket, ethertype, icmpv6, ip_proto};

const ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const GW6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);
const GUEST_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GUEST_GUA: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const DHCP_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const NOW: Instant = Instant::ZERO;

fn config() -> GatewayConfig {
    GatewayConfig {
        gateway: GATEWAY,
        gateway_mac: GATEWAY_MAC,
        prefix_len: 24,
        guest_mac: GUEST_MAC,
        dhcp_pool: Ipv4Addr::new(192, 168, 64, 2)..=Ipv4Addr::new(192, 168, 64, 254),
        lease: Duration::from_secs(3600),
        mtu: 1500,
        dns: true,
        dns4_relay: false,
        dns6: Dns6::Nat,
        static_guest_ip: None,
        ipv6: Some(Ipv6Config::default()),
    }
}

fn gateway() -> Gateway {
    Gateway::new(config()).unwrap()
}

fn handle(gw: &mut Gateway, frame: &[u8]) -> (TxAction, Vec<u8>) {
    let mut out = vec![0u8; 2048];
    let a = gw.handle(frame, &mut out, NOW);
    let len = match a {
        TxAction::Reply { len } | TxAction::DropWithReply { len, .. } => len,
        _ => 0,
    };
    out.truncate(len);
    (a, out)
}

/// The solicited-node group of `a`.
fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(o[13]),
        u16::from_be_bytes([o[14], o[15]]),
    )
}

fn multicast_mac(a: Ipv6Addr) -> MacAddr {
    let o = a.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// A Neighbor Solicitation for `target` (with a source link-layer option when `sll`).
fn ns(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, sll: bool) -> Vec<u8> {
    let mut m = vec![icmpv6::NEIGHBOR_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    if sll {
        m.extend_from_slice(&[ndp::SOURCE_LINK_LAYER_ADDRESS, 1]);
        m.extend_from_slice(&GUEST_MAC.0);
    }
    icmpv6_frame((GUEST_MAC, multicast_mac(dst)), (src, dst), 255, &m)
}

/// A Router Solicitation (with a source link-layer option when `sll`).
fn rs(src: Ipv6Addr, sll: bool) -> Vec<u8> {
    let mut m = vec![icmpv6::ROUTER_SOLICITATION, 0, 0, 0, 0, 0, 0, 0];
    if sll {
        m.extend_from_slice(&[ndp::SOURCE_LINK_LAYER_ADDRESS, 1]);
        m.extend_from_slice(&GUEST_MAC.0);
    }
    icmpv6_frame(
        (GUEST_MAC, multicast_mac(ALL_ROUTERS)),
        (src, ALL_ROUTERS),
        255,
        &m,
    )
}

/// A Neighbor Advertisement from the guest for `target` with `flags`.
fn na(src: Ipv6Addr, dst: Ipv6Addr, target: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut m = vec![icmpv6::NEIGHBOR_ADVERTISEMENT, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m.extend_from_slice(&[ndp::TARGET_LINK_LAYER_ADDRESS, 1]);
    m.extend_from_slice(&GUEST_MAC.0);
    icmpv6_frame((GUEST_MAC, multicast_mac(dst)), (src, dst), 255, &m)
}

fn echo(src: Ipv6Addr, dst: Ipv6Addr, data: &[u8]) -> Vec<u8> {
    let mut m = vec![icmpv6::ECHO_REQUEST, 0, 0, 0, 0x12, 0x34, 0, 7];
    m.extend_from_slice(data);
    icmpv6_frame((GUEST_MAC, GATEWAY_MAC), (src, dst), 64, &m)
}

/// Checks a reply frame's Ethernet and IPv6 headers and its ICMPv6 checksum; returns (eth
/// dst, ip src, ip dst, hop limit, the ICMPv6 message).
fn parse_icmpv6(frame: &[u8]) -> (MacAddr, Ipv6Addr, Ipv6Addr, u8, Vec<u8>) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    assert_eq!(eth.ethertype(), ethertype::IPV6);
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.next_header(), ip_proto::ICMPV6);
    assert_eq!(14 + 40 + usize::from(ip.payload_len()), frame.len());
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(
        icmp.verify_checksum(ip.src_addr(), ip.dst_addr()),
        "checksum"
    );
    // etherparse agrees on the checksum too.
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::TransportSlice::Icmpv6(i)) = p.transport else {
        panic!("etherparse: not icmpv6")
    };
    let Some(etherparse::NetSlice::Ipv6(ip6)) = p.net else {
        panic!("etherparse: not ipv6")
    };
    let h = ip6.header();
    let calc = i
        .header()
        .icmp_type
        .calc_checksum(h.source(), h.destination(), i.payload())
        .unwrap();
    assert_eq!(calc, i.checksum());
    (
        eth.dst_addr(),
        ip.src_addr(),
        ip.dst_addr(),
        ip.hop_limit(),
        ip.payload().to_vec(),
    )
}

#[test]
fn neighbor_solicitations_for_the_gateway_addresses_get_a_solicited_router_advertisement() {
    let mut gw = gateway();
    for target in [ROUTER, GW6] {
        let (a, out) = handle(&mut gw, &ns(GUEST_LL, solicited_node(target), target, true));
        assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
        let (mac, src, dst, hop, m) = parse_icmpv6(&out);
        assert_eq!((mac, src, dst, hop), (GUEST_MAC, target, GUEST_LL, 255));
        assert_eq!((m[0], m[1]), (icmpv6::NEIGHBOR_ADVERTISEMENT, 0));
        assert_eq!(
            m[4],
            ndp::NA_ROUTER | ndp::NA_SOLICITED | ndp::NA_OVERRIDE,
            "R, S and O"
        );
        assert_eq!(&m[8..24], &target.octets());
        let opts: Vec<_> = NdpOptions::new(&m[24..]).map(Result::unwrap).collect();
        assert_eq!(opts.len(), 1);
        assert_eq!(opts[0].kind(), ndp::TARGET_LINK_LAYER_ADDRESS);
        assert_eq!(opts[0].link_layer_addr(), Some(GATEWAY_MAC));
    }
    // Unicast NUD probes to the gateway (no source link-layer option) too.
    let (a, out) = handle(&mut gw, &ns(GUEST_GUA, GW6, GW6, false));
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    assert_eq!(parse_icmpv6(&out).2, GUEST_GUA);
    // A question about another neighbor: nobody else is on the link.
    let other = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 9);
    let (a, _) = handle(&mut gw, &ns(GUEST_LL, solicited_node(other), other, true));
    assert_eq!(a, TxAction::Drop(DropCause::Ipv6Ignored));
}

#[test]
fn duplicate_address_detection_for_a_gateway_address_is_answered_to_all_nodes() {
    let mut gw = gateway();
    for target in [ROUTER, GW6] {
        let frame = ns(Ipv6Addr::UNSPECIFIED, solicited_node(target), target, false);
        let (a, out) = handle(&mut gw, &frame);
        assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
        let (mac, src, dst, _, m) = parse_icmpv6(&out);
        assert_eq!(
            (mac, src, dst),
            (multicast_mac(ALL_NODES), target, ALL_NODES)
        );
        assert_eq!(
            m[4],
            ndp::NA_ROUTER | ndp::NA_OVERRIDE,
            "S clear (RFC 4861 7.2.4)"
        );
    }
}

#[test]
fn a_probe_for_the_guests_tentative_address_is_never_claimed_nor_learned() {
    let mut gw = gateway();
    let frame = ns(
        Ipv6Addr::UNSPECIFIED,
        solicited_node(GUEST_GUA),
        GUEST_GUA,
        false,
    );
    let (a, out) = handle(&mut gw, &frame);
    assert_eq!(a, TxAction::Consumed);
    assert!(out.is_empty());
    assert!(gw.guest_ipv6_addrs().is_empty());
}

#[test]
fn a_router_solicitation_gets_a_router_advertisement_for_slaac_with_mtu_and_rdnss() {
    let mut gw = gateway();
    for (src, want_dst, want_mac) in [
        (GUEST_LL, GUEST_LL, GUEST_MAC),
        (Ipv6Addr::UNSPECIFIED, ALL_NODES, multicast_mac(ALL_NODES)),
    ] {
        let (a, out) = handle(&mut gw, &rs(src, !src.is_unspecified()));
        assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
        let (mac, s, dst, hop, m) = parse_icmpv6(&out);
        assert_eq!((mac, s, dst, hop), (want_mac, ROUTER, want_dst, 255));
        assert_eq!((m[0], m[1]), (icmpv6::ROUTER_ADVERTISEMENT, 0));
        assert_eq!(m[4], 64, "current hop limit");
        assert_eq!(m[5], ndp::RA_OTHER, "M=0 O=1");
        assert_eq!(u16::from_be_bytes([m[6], m[7]]), ROUTER_LIFETIME_S);
        let opts: Vec<_> = NdpOptions::new(&m[16..]).map(Result::unwrap).collect();
        let kinds: Vec<u8> = opts.iter().map(|o| o.kind()).collect();
        assert_eq!(
            kinds,
            [
                ndp::SOURCE_LINK_LAYER_ADDRESS,
                ndp::MTU,
                ndp::PREFIX_INFORMATION,
                ndp::RECURSIVE_DNS_SERVER
            ]
        );
        assert_eq!(opts[0].link_layer_addr(), Some(GATEWAY_MAC));
        assert_eq!(&opts[1].bytes()[4..8], &1500u32.to_be_bytes());
        let p = opts[2].bytes();
        assert_eq!(p[2], 64, "prefix length");
        assert_eq!(p[3], ndp::PREFIX_ON_LINK | ndp::PREFIX_AUTONOMOUS);
        let valid = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let preferred = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        assert!(preferred <= valid && preferred > 0);
        assert_eq!(
            &p[16..32],
            &Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0).octets()
        );
        let r = opts[3].bytes();
        assert_eq!(r[1], 3, "one address");
        assert!(u32::from_be_bytes([r[4], r[5], r[6], r[7]]) >= 3 * 600);
        assert_eq!(&r[8..24], &GW6.octets());
    }
    // Without DNS service, no RDNSS.
    let mut gw = Gateway::new(GatewayConfig {
        dns: false,
        dns6: Dns6::Refused,
        ..config()
    })
    .unwrap();
    let (_, out) = handle(&mut gw, &rs(GUEST_LL, true));
    let m = parse_icmpv6(&out).4;
    assert!(NdpOptions::new(&m[16..]).all(|o| o.unwrap().kind() != ndp::RECURSIVE_DNS_SERVER));
}

#[test]
fn neighbor_discovery_that_fails_rfc_4861_checks_is_counted_invalid() {
    let mut gw = gateway();
    let good = ns(GUEST_LL, solicited_node(GW6), GW6, true);
    assert!(matches!(handle(&mut gw, &good).0, TxAction::Reply { .. }));
    let refill = |f: &mut Vec<u8>| {
        let (src, dst) = {
            let ip = Ipv6Packet::new_checked(&f[14..]).unwrap();
            (ip.src_addr(), ip.dst_addr())
        };
        Icmpv6Packet::new_unchecked(&mut f[54..]).fill_checksum(src, dst);
    };
    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut f = good.clone();
    Ipv6Packet::new_unchecked(&mut f[14..]).set_hop_limit(254);
    cases.push(("hop limit 254 (forwarded)", f));
    let mut f = good.clone();
    f[55] = 1;
    refill(&mut f);
    cases.push(("code 1", f));
    let mut f = good.clone();
    f[56] ^= 0xff;
    cases.push(("bad checksum", f));
    let mut f = good.clone();
    f[54 + 24 + 1] = 0;
    refill(&mut f);
    cases.push(("option length 0", f));
    let mut f = good.clone();
    f[54 + 24 + 1] = 2;
    refill(&mut f);
    cases.push(("option past the end", f));
    cases.push((
        "multicast target",
        ns(GUEST_LL, solicited_node(GW6), ALL_NODES, true),
    ));
    cases.push((
        "a probe with a source link-layer option",
        ns(Ipv6Addr::UNSPECIFIED, solicited_node(GW6), GW6, true),
    ));
    cases.push((
        "a probe not to a solicited-node group",
        ns(Ipv6Addr::UNSPECIFIED, ALL_NODES, GW6, false),
    ));
    cases.push((
        "a router solicitation from :: with a source link-layer option",
        rs(Ipv6Addr::UNSPECIFIED, true),
    ));
    cases.push((
        "a short neighbor solicitation",
        icmpv6_frame(
            (GUEST_MAC, GATEWAY_MAC),
            (GUEST_LL, GW6),
            255,
            &[
                icmpv6::NEIGHBOR_SOLICITATION,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0xfd,
                0x64,
            ],
        ),
    ));
    cases.push((
        "a solicited advertisement to a group",
        na(GUEST_LL, ALL_NODES, GUEST_LL, ndp::NA_SOLICITED),
    ));
    for (what, f) in cases {
        assert_eq!(
            handle(&mut gw, &f).0,
            TxAction::Drop(DropCause::NdpInvalid),
            "{what}"
        );
    }
}

#[test]
fn echo_to_both_gateway_addresses_is_answered_locally() {
    let mut gw = gateway();
    for dst in [ROUTER, GW6] {
        let src = if dst == ROUTER { GUEST_LL } else { GUEST_GUA };
        let (a, out) = handle(&mut gw, &echo(src, dst, b"ping6 data"));
        assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
        let (mac, s, d, _, m) = parse_icmpv6(&out);
        assert_eq!((mac, s, d), (GUEST_MAC, dst, src));
        let icmp = Icmpv6Packet::new_checked(&m[..]).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (icmpv6::ECHO_REPLY, 0));
        assert_eq!((icmp.echo_ident(), icmp.echo_seq_no()), (0x1234, 7));
        assert_eq!(icmp.payload(), b"ping6 data");
    }
    // A bad checksum.
    let mut f = echo(GUEST_GUA, GW6, b"x");
    f[56] ^= 1;
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::Malformed));
    // Echo to all-nodes, and other ICMPv6 to the gateway.
    let mut m = vec![icmpv6::ECHO_REQUEST, 0, 0, 0, 0, 1, 0, 1];
    let f = icmpv6_frame(
        (GUEST_MAC, multicast_mac(ALL_NODES)),
        (GUEST_LL, ALL_NODES),
        64,
        &m,
    );
    assert_eq!(
        handle(&mut gw, &f).0,
        TxAction::Drop(DropCause::Ipv6Ignored)
    );
    m[0] = icmpv6::DESTINATION_UNREACHABLE;
    let f = icmpv6_frame((GUEST_MAC, GATEWAY_MAC), (GUEST_GUA, GW6), 64, &m);
    assert_eq!(
        handle(&mut gw, &f).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
}

#[test]
fn a_guest_may_send_only_from_its_link_local_or_the_prefix() {
    let mut gw = gateway();
    // A privacy (temporary) address in the prefix is fine.
    let privacy = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x1c2a, 0x9b3d, 0x77e1, 0x4f20);
    assert!(matches!(
        handle(&mut gw, &echo(privacy, GW6, b"x")).0,
        TxAction::Reply { .. }
    ));
    for (what, src) in [
        (
            "documentation range",
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
        ),
        ("another ULA", Ipv6Addr::new(0xfd65, 0, 0, 0, 0, 0, 0, 2)),
        ("the gateway's own", GW6),
        ("the router's own", ROUTER),
        (
            "subnet-router anycast",
            Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0),
        ),
        ("loopback", Ipv6Addr::LOCALHOST),
        ("multicast", ALL_NODES),
        ("unspecified outside ND", Ipv6Addr::UNSPECIFIED),
    ] {
        assert_eq!(
            handle(&mut gw, &echo(src, GW6, b"x")).0,
            TxAction::Drop(DropCause::SpoofedIpv6),
            "{what}"
        );
    }
    // Anyone else's MAC.
    let mut f = echo(GUEST_GUA, GW6, b"x");
    EthernetFrame::new_unchecked(&mut f[..]).set_src_addr(MacAddr([2, 0, 0, 0, 0, 9]));
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::SpoofedMac));
    // Multicast it does not serve: ignored.
    let mdns: Ipv6Addr = "ff02::fb".parse().unwrap();
    let f = udp6_frame(
        (GUEST_MAC, multicast_mac(mdns)),
        (GUEST_LL, 5353),
        (mdns, 5353),
        b"q",
    );
    assert_eq!(
        handle(&mut gw, &f).0,
        TxAction::Drop(DropCause::Ipv6Ignored)
    );
    // MLDv2 report from :: (RFC 3590) is allowed and ignored.
    let mld: Ipv6Addr = "ff02::16".parse().unwrap();
    let f = icmpv6_frame(
        (GUEST_MAC, multicast_mac(mld)),
        (Ipv6Addr::UNSPECIFIED, mld),
        1,
        &[143, 0, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        handle(&mut gw, &f).0,
        TxAction::Drop(DropCause::Ipv6Ignored)
    );
    // Garbage: a version-4 header, a payload length past the frame.
    let mut f = echo(GUEST_GUA, GW6, b"x");
    f[14] = 0x45;
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::Malformed));
    let mut f = echo(GUEST_GUA, GW6, b"x");
    Ipv6Packet::new_unchecked(&mut f[14..]).set_payload_len(500);
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::Malformed));
    // Over the MTU.
    let f = echo(GUEST_GUA, GW6, &[0u8; 1500]);
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::TooBig));
}

/// IPv6 from the prefix to a unicast destination off the link goes to the NAT (NAT66), the
/// whole packet without Ethernet padding.
#[test]
fn ipv6_from_the_prefix_beyond_the_gateway_goes_to_the_nat() {
    let mut gw = gateway();
    let server: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let f = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 5000),
        (server, 80),
        b"GET /",
    );
    assert_eq!(handle(&mut gw, &f).0, TxAction::Nat { len: f.len() - 14 });
    // Ethernet padding is not the packet's.
    let mut padded = f.clone();
    padded.extend_from_slice(&[0u8; 20]);
    assert_eq!(
        handle(&mut gw, &padded).0,
        TxAction::Nat { len: f.len() - 14 }
    );
    // Echo and ICMPv6 errors too (the NAT translates them).
    let e = echo(GUEST_GUA, server, b"x");
    assert_eq!(handle(&mut gw, &e).0, TxAction::Nat { len: e.len() - 14 });
    let err = icmpv6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, server),
        64,
        &[icmpv6::DESTINATION_UNREACHABLE, 4, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        handle(&mut gw, &err).0,
        TxAction::Nat {
            len: err.len() - 14
        }
    );
    // Global multicast is not routed; a spoofed source still is refused.
    let mc = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 5000),
        ("ff0e::1".parse().unwrap(), 80),
        b"x",
    );
    assert_eq!(
        handle(&mut gw, &mc).0,
        TxAction::Drop(DropCause::Ipv6Ignored)
    );
    let spoofed = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        ("2001:db8::99".parse().unwrap(), 5000),
        (server, 80),
        b"x",
    );
    assert_eq!(
        handle(&mut gw, &spoofed).0,
        TxAction::Drop(DropCause::SpoofedIpv6)
    );
}

/// What cannot leave the link (a link-local source, a link-local or on-link destination) has
/// no route: counted, and answered with ICMPv6 destination unreachable, no route (RFC 4443
/// 3.1), so the guest fails fast.
#[test]
fn ipv6_that_cannot_leave_the_link_is_counted_and_answered_no_route() {
    let mut gw = gateway();
    let server: Ipv6Addr = "2001:db8::2".parse().unwrap();
    let on_link: Ipv6Addr = "fd64::99".parse().unwrap();
    let link_local: Ipv6Addr = "fe80::99".parse().unwrap();
    for (src, dst, from) in [
        (GUEST_LL, server, ROUTER),
        (GUEST_GUA, on_link, GW6),
        (GUEST_GUA, link_local, GW6),
        (GUEST_GUA, Ipv6Addr::LOCALHOST, GW6),
    ] {
        let f = udp6_frame((GUEST_MAC, GATEWAY_MAC), (src, 5000), (dst, 80), b"GET /");
        let (a, out) = handle(&mut gw, &f);
        assert_eq!(
            a,
            TxAction::DropWithReply {
                cause: DropCause::Ipv6NoRoute,
                len: out.len()
            },
            "{src} -> {dst}"
        );
        let (mac, s, d, _, m) = parse_icmpv6(&out);
        assert_eq!((mac, s, d), (GUEST_MAC, from, src));
        assert_eq!((m[0], m[1]), (icmpv6::DESTINATION_UNREACHABLE, 0));
        assert_eq!(&m[8..], &f[14..], "the whole packet quoted");
    }
    // Informational ICMPv6 is answered too; errors are not (RFC 4443 2.4 (e)).
    let (a, _) = handle(&mut gw, &echo(GUEST_LL, server, b"x"));
    assert!(matches!(a, TxAction::DropWithReply { .. }), "{a:?}");
    let err = icmpv6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_LL, server),
        64,
        &[icmpv6::DESTINATION_UNREACHABLE, 4, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        handle(&mut gw, &err).0,
        TxAction::Drop(DropCause::Ipv6NoRoute)
    );
    // A 1500-byte packet: the error stays within 1280 bytes.
    let big = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_LL, 5000),
        (server, 80),
        &[7u8; 1452],
    );
    let (_, out) = handle(&mut gw, &big);
    assert_eq!(out.len(), 14 + 1280);
    assert_eq!(&parse_icmpv6(&out).4[8..], &big[14..14 + 1232]);
    // Rate-limited with the gateway's other ICMP errors: a burst, then counted drops only.
    let mut gw = gateway();
    let f = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_LL, 5000),
        (server, 80),
        b"x",
    );
    let answered = (0..ICMP_ERROR_BURST + 10)
        .filter(|_| matches!(handle(&mut gw, &f).0, TxAction::DropWithReply { .. }))
        .count();
    assert_eq!(answered as u64, ICMP_ERROR_BURST);
    assert_eq!(
        handle(&mut gw, &f).0,
        TxAction::Drop(DropCause::Ipv6NoRoute)
    );
}

/// The egress policy's IPv6 rules: a denied destination (the default IPv6 metadata address,
/// a user's prefix) is counted `EgressDenied` and answered with ICMPv6 destination
/// unreachable, administratively prohibited (RFC 4443 3.1, code 1); NAT66's external address
/// (hairpinning) and allowed destinations go to the NAT; IPv4 rules never apply to IPv6.
#[test]
fn the_egress_policy_denies_ipv6_destinations_with_admin_prohibited() {
    let external6: Ipv6Addr = "fd64:ffff::2".parse().unwrap();
    let mut policy = EgressPolicy::default();
    policy
        .add("2001:db8::/32".parse().unwrap(), EgressAction::Deny)
        .unwrap();
    policy
        .add("2001:db8::3/128".parse().unwrap(), EgressAction::Allow)
        .unwrap();
    policy
        .add("0.0.0.0/0".parse().unwrap(), EgressAction::Deny)
        .unwrap();
    policy
        .add("fd64:ffff::/32".parse().unwrap(), EgressAction::Deny)
        .unwrap();
    let mut gw = gateway()
        .with_egress(policy, None)
        .with_egress_exempt6(Some(external6));
    for dst in [
        "2001:db8::2",
        "fd00:ec2::254",
        "fd20:ce::254",
        "fd64:fffe::1",
    ] {
        let dst: Ipv6Addr = dst.parse().unwrap();
        let f = udp6_frame((GUEST_MAC, GATEWAY_MAC), (GUEST_GUA, 5000), (dst, 80), b"x");
        let (a, out) = handle(&mut gw, &f);
        if dst == "fd64:fffe::1".parse::<Ipv6Addr>().unwrap() {
            // Inside fd64:ffff::/32's neighbour but not in it: allowed.
            assert_eq!(a, TxAction::Nat { len: f.len() - 14 }, "{dst}");
            continue;
        }
        assert_eq!(
            a,
            TxAction::DropWithReply {
                cause: DropCause::EgressDenied,
                len: out.len()
            },
            "{dst}"
        );
        let (mac, s, d, _, m) = parse_icmpv6(&out);
        assert_eq!((mac, s, d), (GUEST_MAC, GW6, GUEST_GUA));
        assert_eq!((m[0], m[1]), (icmpv6::DESTINATION_UNREACHABLE, 1), "{dst}");
        assert_eq!(&m[8..], &f[14..], "the whole packet quoted");
    }
    for dst in ["2001:db8::3", "fd64:ffff::2"] {
        let dst: Ipv6Addr = dst.parse().unwrap();
        let f = udp6_frame((GUEST_MAC, GATEWAY_MAC), (GUEST_GUA, 5000), (dst, 80), b"x");
        assert_eq!(
            handle(&mut gw, &f).0,
            TxAction::Nat { len: f.len() - 14 },
            "{dst}"
        );
    }
    // An ICMPv6 error to a denied destination is dropped unanswered (RFC 4443 2.4 (e)).
    let err = icmpv6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, "2001:db8::2".parse().unwrap()),
        64,
        &[icmpv6::DESTINATION_UNREACHABLE, 4, 0, 0, 0, 0, 0, 0],
    );
    assert_eq!(
        handle(&mut gw, &err).0,
        TxAction::Drop(DropCause::EgressDenied)
    );
}

#[test]
fn the_guests_addresses_are_learned_from_its_traffic_and_advertisements() {
    let mut gw = gateway();
    assert!(gw.guest_ipv6_addrs().is_empty());
    let _ = handle(&mut gw, &rs(GUEST_LL, true));
    assert_eq!(gw.guest_ipv6_addrs(), [GUEST_LL]);
    // An unsolicited advertisement after DAD.
    let a = handle(
        &mut gw,
        &na(GUEST_LL, ALL_NODES, GUEST_GUA, ndp::NA_OVERRIDE),
    )
    .0;
    assert_eq!(a, TxAction::Consumed);
    assert_eq!(gw.guest_ipv6_addrs(), [GUEST_LL, GUEST_GUA]);
    // Claiming the gateway's address teaches nothing.
    let a = handle(&mut gw, &na(GUEST_LL, ALL_NODES, GW6, ndp::NA_OVERRIDE)).0;
    assert_eq!(a, TxAction::Drop(DropCause::Ipv6Ignored));
    assert_eq!(gw.guest_ipv6_addrs().len(), 2);
    // Bounded: the oldest go first.
    for i in 0..40u16 {
        let a = Ipv6Addr::new(0xfd64, 0, 0, 0, 1, 2, 3, 100 + i);
        let _ = handle(&mut gw, &echo(a, GW6, b"x"));
    }
    let learned = gw.guest_ipv6_addrs();
    assert_eq!(learned.len(), MAX_GUEST_IPV6_ADDRS);
    assert!(learned.contains(&Ipv6Addr::new(0xfd64, 0, 0, 0, 1, 2, 3, 139)));
    assert!(!learned.contains(&GUEST_LL));
}

#[test]
fn port_forwards_aim_at_the_eui64_address_over_privacy_ones() {
    let mut gw = gateway();
    assert_eq!(gw.guest_ipv6_forward_target(), None);
    // A link-local address is no target.
    let _ = handle(&mut gw, &rs(GUEST_LL, true));
    assert_eq!(gw.guest_ipv6_forward_target(), None);
    // A privacy address first: the only global one, the target.
    let privacy = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x1234, 0x5678, 0x9abc, 0xdef0);
    let _ = handle(&mut gw, &echo(privacy, GW6, b"x"));
    assert_eq!(gw.guest_ipv6_forward_target(), Some(privacy));
    // The EUI-64 address of the guest's MAC wins once the guest uses it, also over a newer
    // privacy address.
    let _ = handle(&mut gw, &echo(GUEST_GUA, GW6, b"x"));
    let privacy2 = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x1111, 0x2222, 0x3333, 0x4444);
    let _ = handle(&mut gw, &echo(privacy2, GW6, b"x"));
    assert_eq!(gw.guest_ipv6_forward_target(), Some(GUEST_GUA));
}

#[test]
fn unsolicited_router_advertisements_start_once_the_guest_speaks_ipv6() {
    let mut gw = gateway();
    let mut buf = vec![0u8; 2048];
    assert_eq!(gw.unsolicited(&mut buf, NOW), None, "an IPv4-only guest");
    let _ = handle(&mut gw, &echo(GUEST_GUA, GW6, b"x"));
    let len = gw.unsolicited(&mut buf, NOW).expect("due at once");
    let (mac, src, dst, _, m) = parse_icmpv6(&buf[..len]);
    assert_eq!(
        (mac, src, dst),
        (multicast_mac(ALL_NODES), ROUTER, ALL_NODES)
    );
    assert_eq!(m[0], icmpv6::ROUTER_ADVERTISEMENT);
    assert_eq!(gw.unsolicited(&mut buf, NOW), None);
    let later = Instant::from_millis(UNSOLICITED_RA_INTERVAL_MS - 1);
    assert_eq!(gw.unsolicited(&mut buf, later), None);
    let due = Instant::from_millis(UNSOLICITED_RA_INTERVAL_MS);
    assert!(gw.unsolicited(&mut buf, due).is_some());
    // Too small a buffer: nothing written, no panic.
    let t = Instant::from_millis(10 * UNSOLICITED_RA_INTERVAL_MS);
    assert_eq!(gw.unsolicited(&mut [0u8; 60], t), None);
}

#[test]
fn ipv6_off_or_under_1280_mtu_drops_every_ipv6_frame_as_no_route() {
    for cfg in [
        GatewayConfig {
            ipv6: None,
            ..config()
        },
        GatewayConfig {
            mtu: 1279,
            ..config()
        },
    ] {
        let mut gw = Gateway::new(cfg).unwrap();
        assert!(gw.ipv6().is_none());
        let f = ns(GUEST_LL, solicited_node(GW6), GW6, true);
        assert_eq!(
            handle(&mut gw, &f).0,
            TxAction::Drop(DropCause::Ipv6NoRoute)
        );
        assert_eq!(gw.unsolicited(&mut [0u8; 2048], NOW), None);
    }
}

#[test]
fn ipv6_addresses_that_do_not_fit_together_are_refused() {
    for v6 in [
        Ipv6Config {
            prefix: "fd64::1".parse().unwrap(),
            ..Ipv6Config::default()
        },
        Ipv6Config {
            router: "fd64::1".parse().unwrap(),
            ..Ipv6Config::default()
        },
        Ipv6Config {
            gateway: "fd65::1".parse().unwrap(),
            ..Ipv6Config::default()
        },
        Ipv6Config {
            gateway: "fd64::".parse().unwrap(),
            ..Ipv6Config::default()
        },
    ] {
        let r = Gateway::new(GatewayConfig {
            ipv6: Some(v6),
            ..config()
        });
        assert!(matches!(r, Err(Error::Config(_))), "{v6:?}");
    }
}

/// A DHCPv6 client message from the guest's link-local address to
/// All_DHCP_Relay_Agents_and_Servers.
fn dhcpv6(msg: &[u8]) -> Vec<u8> {
    udp6_frame(
        (GUEST_MAC, multicast_mac(DHCP_SERVERS)),
        (GUEST_LL, 546),
        (DHCP_SERVERS, 547),
        msg,
    )
}

fn client_duid() -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1];
    d.extend_from_slice(&GUEST_MAC.0);
    d
}

fn info_request() -> Message {
    let mut m = Message::new_with_id(MessageType::InformationRequest, [1, 2, 3]);
    m.opts_mut().insert(DhcpOption::ClientId(client_duid()));
    m.opts_mut().insert(DhcpOption::ElapsedTime(0));
    m.opts_mut().insert(DhcpOption::ORO(ORO {
        opts: vec![OptionCode::DomainNameServers],
    }));
    m
}

/// Parses a DHCPv6 reply frame; checks its headers and UDP checksum.
fn parse_dhcpv6(frame: &[u8]) -> (MacAddr, Ipv6Addr, Ipv6Addr, Message) {
    let eth = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!(ip.next_header(), ip_proto::UDP);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (547, 546));
    assert!(udp.verify_checksum_v6(ip.src_addr(), ip.dst_addr()));
    let p = etherparse::SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::TransportSlice::Udp(u)) = p.transport else {
        panic!("etherparse: not udp")
    };
    let Some(etherparse::NetSlice::Ipv6(ip6)) = p.net else {
        panic!("etherparse: not ipv6")
    };
    let calc = u
        .to_header()
        .calc_checksum_ipv6(&ip6.header().to_header(), u.payload())
        .unwrap();
    assert_eq!(calc, u.checksum());
    let msg = Message::from_bytes(udp.payload()).unwrap();
    (eth.dst_addr(), ip.src_addr(), ip.dst_addr(), msg)
}

#[test]
fn an_information_request_gets_a_reply_with_the_dns_server_and_our_duid() {
    let mut gw = gateway();
    let (a, out) = handle(&mut gw, &dhcpv6(&info_request().to_vec().unwrap()));
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    let (mac, src, dst, r) = parse_dhcpv6(&out);
    assert_eq!((mac, src, dst), (GUEST_MAC, ROUTER, GUEST_LL));
    assert_eq!(r.msg_type(), MessageType::Reply);
    assert_eq!(r.xid(), [1, 2, 3]);
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(&GATEWAY_MAC.0);
    assert_eq!(
        r.opts().get(OptionCode::ServerId),
        Some(&DhcpOption::ServerId(duid.clone()))
    );
    assert_eq!(
        r.opts().get(OptionCode::ClientId),
        Some(&DhcpOption::ClientId(client_duid()))
    );
    assert_eq!(
        r.opts().get(OptionCode::DomainNameServers),
        Some(&DhcpOption::DomainNameServers(vec![GW6]))
    );
    // Our own server identifier is accepted; unicast to the gateway is answered from it.
    let mut m = info_request();
    m.opts_mut().insert(DhcpOption::ServerId(duid));
    let f = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 546),
        (GW6, 547),
        &m.to_vec().unwrap(),
    );
    let (a, out) = handle(&mut gw, &f);
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    let (_, src, dst, _) = parse_dhcpv6(&out);
    assert_eq!((src, dst), (GW6, GUEST_GUA));
    // Without DNS service, no DNS option.
    let mut gw = Gateway::new(GatewayConfig {
        dns: false,
        dns6: Dns6::Refused,
        ..config()
    })
    .unwrap();
    let (_, out) = handle(&mut gw, &dhcpv6(&info_request().to_vec().unwrap()));
    let r = parse_dhcpv6(&out).3;
    assert!(r.opts().get(OptionCode::DomainNameServers).is_none());
}

#[test]
fn solicit_and_other_messages_get_no_answer_as_from_a_stateless_dnsmasq() {
    let mut gw = gateway();
    let mut solicit = Message::new_with_id(MessageType::Solicit, [9, 9, 9]);
    solicit
        .opts_mut()
        .insert(DhcpOption::ClientId(client_duid()));
    solicit
        .opts_mut()
        .insert(DhcpOption::IANA(dhcproto::v6::IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: Default::default(),
        }));
    let mut with_ia = info_request();
    with_ia
        .opts_mut()
        .insert(DhcpOption::IANA(dhcproto::v6::IANA {
            id: 1,
            t1: 0,
            t2: 0,
            opts: Default::default(),
        }));
    let mut other_server = info_request();
    other_server
        .opts_mut()
        .insert(DhcpOption::ServerId(vec![0, 3, 0, 1, 2, 0, 0, 0, 0, 7]));
    for (what, m) in [
        ("solicit", solicit),
        ("request", Message::new(MessageType::Request)),
        ("information-request with an IA", with_ia),
        ("information-request to another server", other_server),
    ] {
        let (a, out) = handle(&mut gw, &dhcpv6(&m.to_vec().unwrap()));
        assert_eq!(a, TxAction::Drop(DropCause::Dhcp), "{what}");
        assert!(out.is_empty());
    }
}

/// Options `dhcproto` 0.15's decoder panics on (debug builds: a subtraction overflow on the
/// option length), as the guard finds them. The first checks the upstream quirk itself: if a
/// dhcproto update fixes it, the test says so.
#[test]
fn dhcpv6_options_the_decoder_would_panic_on_are_refused() {
    let header = [11u8, 1, 2, 3]; // Information-request, xid
    let status_len_0 = [0u8, 13, 0, 0, 0, 0];
    let mut raw = header.to_vec();
    raw.extend_from_slice(&status_len_0);
    let decoded = std::panic::catch_unwind(|| Message::from_bytes(&raw));
    assert!(
        decoded.is_err() || cfg!(not(debug_assertions)),
        "dhcproto no longer panics on a 0-length Status Code: {decoded:?}"
    );
    let ia_na_with = |inner: &[u8]| {
        let mut o = vec![0u8, 3];
        o.extend_from_slice(&u16::try_from(12 + inner.len()).unwrap().to_be_bytes());
        o.extend_from_slice(&[0; 12]);
        o.extend_from_slice(inner);
        o
    };
    let mut deep = status_len_0.to_vec();
    for _ in 0..6 {
        deep = ia_na_with(&deep);
    }
    let cases: [(&str, Vec<u8>); 8] = [
        ("status code, length 0", status_len_0.to_vec()),
        ("status code, length 1", vec![0, 13, 0, 1, 0, 0]),
        ("vendor class, length 2", vec![0, 16, 0, 2, 0, 0, 0, 0]),
        ("vendor opts, length 3", vec![0, 17, 0, 3, 0, 0, 0, 0]),
        ("status code inside IA_NA", ia_na_with(&status_len_0)),
        (
            "preference, length 3",
            vec![0, 7, 0, 3, 1, 0, 13, 0, 0, 0, 0],
        ),
        ("relay message", vec![0, 9, 0, 0]),
        ("nested too deep", deep),
    ];
    let mut gw = gateway();
    for (what, opts) in cases {
        let mut msg = header.to_vec();
        msg.extend_from_slice(&opts);
        assert_eq!(
            handle(&mut gw, &dhcpv6(&msg)).0,
            TxAction::Drop(DropCause::Malformed),
            "{what}"
        );
    }
    // Truncated messages and a bad UDP checksum.
    for msg in [&[][..], &[11, 1][..]] {
        assert_eq!(
            handle(&mut gw, &dhcpv6(msg)).0,
            TxAction::Drop(DropCause::Malformed)
        );
    }
    let mut f = dhcpv6(&info_request().to_vec().unwrap());
    let last = f.len() - 1;
    f[last] ^= 0x55;
    assert_eq!(handle(&mut gw, &f).0, TxAction::Drop(DropCause::Malformed));
}

#[test]
fn ipv6_frames_never_panic_on_any_length_or_byte() {
    let mut gw = gateway();
    let seeds = [
        ns(GUEST_LL, solicited_node(GW6), GW6, true),
        rs(Ipv6Addr::UNSPECIFIED, false),
        echo(GUEST_GUA, GW6, b"abc"),
        dhcpv6(&info_request().to_vec().unwrap()),
        ipv6_frame(
            (GUEST_MAC, GATEWAY_MAC),
            (GUEST_GUA, GW6),
            ip_proto::HOP_BY_HOP,
            255,
            &[58, 0, 0, 0, 0, 0, 0, 0, 135, 0],
        ),
    ];
    let mut out = vec![0u8; 2048];
    for seed in seeds {
        for cut in 0..=seed.len() {
            let _ = gw.handle(&seed[..cut], &mut out, NOW);
        }
        for i in 14..seed.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut f = seed.clone();
                f[i] = v;
                let _ = gw.handle(&f, &mut out, NOW);
                // A tiny reply buffer: refused, never a panic.
                let _ = gw.handle(&f, &mut [0u8; 20], NOW);
            }
        }
    }
}

/// A DNS query for `example.` type AAAA, ID 0x1234, RD set.
fn dns_query() -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(b"\x07example\x00\x00\x1c\x00\x01");
    q
}

/// A TCP SYN from the guest's global address, port 40000, to `[fd64::1]:53`.
fn tcp6_syn_to_dns() -> Vec<u8> {
    let mut t = vec![0u8; 20];
    let mut seg = wire::TcpPacket::new_unchecked(&mut t[..]);
    seg.set_src_port(40000);
    seg.set_dst_port(53);
    seg.set_seq_number(1000);
    seg.set_header_len(20);
    seg.set_flags(wire::tcp::SYN);
    seg.set_window_len(1000);
    seg.fill_checksum_v6(GUEST_GUA, GW6);
    ipv6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, GW6),
        ip_proto::TCP,
        64,
        &t,
    )
}

#[test]
fn dns_to_the_ipv6_gateway_goes_to_the_nat_with_an_ipv6_upstream() {
    let mut gw = gateway();
    let q = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 40000),
        (GW6, 53),
        &dns_query(),
    );
    let (a, _) = handle(&mut gw, &q);
    assert_eq!(a, TxAction::Nat { len: q.len() - 14 });
    let syn = tcp6_syn_to_dns();
    assert_eq!(
        handle(&mut gw, &syn).0,
        TxAction::Nat {
            len: syn.len() - 14
        }
    );
    // Another port of the gateway, or port 53 of its link-local address: not DNS.
    let other = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 40000),
        (GW6, 54),
        b"x",
    );
    assert_eq!(
        handle(&mut gw, &other).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
    let ll = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_LL, 40000),
        (ROUTER, 53),
        b"x",
    );
    assert_eq!(
        handle(&mut gw, &ll).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
}

#[test]
fn without_an_upstream_ipv6_dns_is_refused_at_once_udp_and_tcp() {
    let mut gw = Gateway::new(GatewayConfig {
        dns: false,
        dns6: Dns6::Refused,
        ..config()
    })
    .unwrap();
    let q = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 40000),
        (GW6, 53),
        &dns_query(),
    );
    let (a, out) = handle(&mut gw, &q);
    let TxAction::Reply { len } = a else {
        panic!("{a:?}")
    };
    let eth = EthernetFrame::new_checked(&out[..len]).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    assert_eq!(eth.ethertype(), ethertype::IPV6);
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, GUEST_GUA));
    assert_eq!(ip.next_header(), ip_proto::UDP);
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert_eq!((udp.src_port(), udp.dst_port()), (53, 40000));
    assert!(udp.verify_checksum_v6(GW6, GUEST_GUA));
    let m = udp.payload();
    assert_eq!(&m[..2], &[0x12, 0x34], "the query's ID");
    assert_eq!(m[2] & 0x80, 0x80, "a response");
    assert_eq!(m[3] & 0x0f, 5, "REFUSED");
    assert_eq!(&m[12..], &dns_query()[12..], "the question");

    let (a, out) = handle(&mut gw, &tcp6_syn_to_dns());
    let TxAction::Reply { len } = a else {
        panic!("{a:?}")
    };
    let eth = EthernetFrame::new_checked(&out[..len]).unwrap();
    let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GW6, GUEST_GUA));
    let tcp = wire::TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(tcp.rst() && tcp.ack());
    assert_eq!((tcp.src_port(), tcp.dst_port()), (53, 40000));
    assert_eq!(tcp.ack_number(), 1001, "the SYN's sequence number + 1");
    assert!(tcp.verify_checksum_v6(GW6, GUEST_GUA));
    // RDNSS and DHCPv6 advertise no DNS server then (checked above); a response is dropped.
    let mut resp = dns_query();
    resp[2] |= 0x80;
    let r = udp6_frame(
        (GUEST_MAC, GATEWAY_MAC),
        (GUEST_GUA, 40000),
        (GW6, 53),
        &resp,
    );
    assert_eq!(
        handle(&mut gw, &r).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
}
