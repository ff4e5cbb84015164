//! The gateway services: ARP, DHCP (byte-checked with dhcproto), ICMP echo, DNS redirect,
//! anti-spoofing and classification.

use core::net::Ipv4Addr;
use core::time::Duration;

use bridge::testing::{
    GATEWAY, GATEWAY_MAC, GUEST_IP, GUEST_MAC, SERVER, arp_request, dhcp_frame, icmp_echo,
    udp_frame,
};
use bridge::{
    Dns6, DropCause, EgressAction, EgressPolicy, Gateway, GatewayConfig, ICMP_ERROR_BURST, MacAddr,
    TxAction,
};
use dhcproto::Decodable;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nat::Instant;
use wire::{EthernetFrame, Icmpv4Packet, Ipv4Packet, ethertype};

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
        dns6: Dns6::Refused,
        static_guest_ip: None,
        ipv6: None,
    }
}

fn gateway() -> Gateway {
    Gateway::new(config()).unwrap()
}

fn handle(gw: &mut Gateway, frame: &[u8], now: Instant) -> (TxAction, Vec<u8>) {
    let mut out = vec![0u8; 2048];
    let a = gw.handle(frame, &mut out, now);
    let len = match a {
        TxAction::Reply { len } | TxAction::DropWithReply { len, .. } => len,
        _ => 0,
    };
    out.truncate(len);
    (a, out)
}

/// Parses a DHCP reply frame; returns (eth dst, ip src, ip dst, message) after checking the
/// IP and UDP checksums and ports.
fn parse_dhcp_reply(frame: &[u8]) -> (MacAddr, Ipv4Addr, Ipv4Addr, Message) {
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let eth = p.link.as_ref().unwrap().to_header().unwrap();
    let eth = eth.ethernet2().unwrap();
    assert_eq!(eth.source, GATEWAY_MAC.0);
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let iph = ip.header().to_header();
    assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not udp")
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (67, 68));
    assert_eq!(
        udp.to_header()
            .calc_checksum_ipv4(&iph, udp.payload())
            .unwrap(),
        udp.checksum()
    );
    assert!(udp.payload().len() >= 300, "BOOTP minimum size");
    let msg = Message::from_bytes(udp.payload()).unwrap();
    (
        MacAddr(eth.destination),
        iph.source.into(),
        iph.destination.into(),
        msg,
    )
}

fn client(kind: MessageType, xid: u32, opts: &[DhcpOption]) -> Message {
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(xid, u, u, u, u, &GUEST_MAC.0);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::InterfaceMtu,
    ]));
    for o in opts {
        m.opts_mut().insert(o.clone());
    }
    m
}

/// DISCOVER → OFFER → REQUEST → ACK; returns the leased address.
fn lease(gw: &mut Gateway, now: Instant) -> Ipv4Addr {
    let (a, offer) = handle(
        gw,
        &dhcp_frame(GUEST_MAC, &client(MessageType::Discover, 0x1234, &[])),
        now,
    );
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    let (_, _, _, offer) = parse_dhcp_reply(&offer);
    let ip = offer.yiaddr();
    let req = client(
        MessageType::Request,
        0x1234,
        &[
            DhcpOption::ServerIdentifier(GATEWAY),
            DhcpOption::RequestedIpAddress(ip),
        ],
    );
    let (_, ack) = handle(gw, &dhcp_frame(GUEST_MAC, &req), now);
    let (_, _, _, ack) = parse_dhcp_reply(&ack);
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    ip
}

#[test]
fn dhcp_exchange_is_byte_exact_per_dhcproto() {
    let mut gw = gateway();
    let now = Instant::from_secs(10);
    let (a, offer) = handle(
        &mut gw,
        &dhcp_frame(GUEST_MAC, &client(MessageType::Discover, 0xabcd, &[])),
        now,
    );
    assert!(matches!(a, TxAction::Reply { .. }));
    let (dst_mac, src, dst, m) = parse_dhcp_reply(&offer);
    // No BROADCAST flag, no ciaddr: unicast to the offered address and the client MAC.
    assert_eq!((dst_mac, src, dst), (GUEST_MAC, GATEWAY, GUEST_IP));
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.xid(), 0xabcd);
    assert_eq!(m.yiaddr(), GUEST_IP);
    assert_eq!(m.chaddr(), &GUEST_MAC.0);
    let o = m.opts();
    assert_eq!(o.msg_type(), Some(MessageType::Offer));
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(GATEWAY))
    );
    assert_eq!(
        o.get(OptionCode::SubnetMask),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        o.get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![GATEWAY]))
    );
    assert_eq!(
        o.get(OptionCode::DomainNameServer),
        Some(&DhcpOption::DomainNameServer(vec![GATEWAY]))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(1500))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(3600))
    );
    assert_eq!(o.get(OptionCode::Renewal), Some(&DhcpOption::Renewal(1800)));
    assert_eq!(
        o.get(OptionCode::Rebinding),
        Some(&DhcpOption::Rebinding(3150))
    );
    assert_eq!(gw.lease(now), None);
    let req = client(
        MessageType::Request,
        0xabcd,
        &[
            DhcpOption::ServerIdentifier(GATEWAY),
            DhcpOption::RequestedIpAddress(GUEST_IP),
        ],
    );
    let (_, ack) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &req), now);
    let (_, _, dst, m) = parse_dhcp_reply(&ack);
    assert_eq!(dst, GUEST_IP);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), GUEST_IP);
    assert_eq!(gw.lease(now), Some(GUEST_IP));
    assert_eq!(
        gw.lease(now + Duration::from_secs(3601)),
        None,
        "the lease runs out"
    );
    // Renewal from the leased address (ciaddr set): unicast ACK to ciaddr.
    let mut renew = client(MessageType::Request, 0x77, &[]);
    renew.set_ciaddr(GUEST_IP);
    let later = now + Duration::from_secs(1800);
    let (_, ack) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &renew), later);
    let (dst_mac, _, dst, m) = parse_dhcp_reply(&ack);
    assert_eq!((dst_mac, dst, m.ciaddr()), (GUEST_MAC, GUEST_IP, GUEST_IP));
    assert_eq!(
        gw.lease(now + Duration::from_secs(3601)),
        Some(GUEST_IP),
        "renewed"
    );
    // RELEASE: no reply, lease gone.
    let mut rel = client(MessageType::Release, 0x78, &[]);
    rel.set_ciaddr(GUEST_IP);
    let (a, _) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &rel), later);
    assert_eq!(a, TxAction::Consumed);
    assert_eq!(gw.lease(later), None);
}

#[test]
fn dhcp_broadcast_flag_nak_and_inform() {
    let mut gw = gateway();
    let now = Instant::ZERO;
    let mut d = client(MessageType::Discover, 1, &[]);
    d.set_flags(Flags::default().set_broadcast());
    let (_, offer) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &d), now);
    let (dst_mac, _, dst, m) = parse_dhcp_reply(&offer);
    assert_eq!((dst_mac, dst), (MacAddr::BROADCAST, Ipv4Addr::BROADCAST));
    assert!(m.flags().broadcast());
    // INIT-REBOOT with an address from another network: NAK, broadcast.
    let r = client(
        MessageType::Request,
        2,
        &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 1, 2, 3))],
    );
    let (_, nak) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &r), now);
    let (dst_mac, _, dst, m) = parse_dhcp_reply(&nak);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(
        (dst_mac, dst, m.yiaddr()),
        (
            MacAddr::BROADCAST,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::UNSPECIFIED
        )
    );
    // INFORM from a configured client: ACK to ciaddr, no lease time.
    let mut inf = client(MessageType::Inform, 3, &[]);
    inf.set_ciaddr(Ipv4Addr::new(192, 168, 64, 50));
    let (_, ack) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &inf), now);
    let (_, _, dst, m) = parse_dhcp_reply(&ack);
    assert_eq!(dst, Ipv4Addr::new(192, 168, 64, 50));
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert!(m.opts().get(OptionCode::AddressLeaseTime).is_none());
}

#[test]
fn dhcp_learns_a_new_guest_mac_and_rejects_mismatched_chaddr() {
    let mut gw = gateway();
    let other = MacAddr([0x02, 0, 0, 0, 0, 9]);
    let u = Ipv4Addr::UNSPECIFIED;
    let mut m = Message::new_with_id(9, u, u, u, u, &other.0);
    m.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    // chaddr differs from the Ethernet source: spoofed.
    let (a, _) = handle(&mut gw, &dhcp_frame(GUEST_MAC, &m), Instant::ZERO);
    assert_eq!(a, TxAction::Drop(DropCause::SpoofedMac));
    let (a, _) = handle(&mut gw, &dhcp_frame(other, &m), Instant::ZERO);
    assert!(matches!(a, TxAction::Reply { .. }));
    assert_eq!(gw.guest_mac(), other);
    // Garbage DHCP payload.
    let f = udp_frame(other, u, 68, Ipv4Addr::BROADCAST, 67, &[1, 2, 3]);
    assert_eq!(
        handle(&mut gw, &f, Instant::ZERO).0,
        TxAction::Drop(DropCause::Malformed)
    );
}

#[test]
fn arp_answers_for_the_gateway_only() {
    let mut gw = gateway();
    let (a, reply) = handle(
        &mut gw,
        &arp_request(GUEST_MAC, GUEST_IP, GATEWAY),
        Instant::ZERO,
    );
    assert_eq!(a, TxAction::Reply { len: 42 });
    let mut want = Vec::new();
    want.extend_from_slice(&GUEST_MAC.0);
    want.extend_from_slice(&GATEWAY_MAC.0);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 2]);
    want.extend_from_slice(&GATEWAY_MAC.0);
    want.extend_from_slice(&GATEWAY.octets());
    want.extend_from_slice(&GUEST_MAC.0);
    want.extend_from_slice(&GUEST_IP.octets());
    assert_eq!(reply, want);
    // A DHCP client's probe of its offered address gets no answer.
    let probe = arp_request(GUEST_MAC, Ipv4Addr::UNSPECIFIED, GUEST_IP);
    assert_eq!(
        handle(&mut gw, &probe, Instant::ZERO).0,
        TxAction::Drop(DropCause::ArpIgnored)
    );
    let other = arp_request(GUEST_MAC, GUEST_IP, Ipv4Addr::new(192, 168, 64, 9));
    assert_eq!(
        handle(&mut gw, &other, Instant::ZERO).0,
        TxAction::Drop(DropCause::ArpIgnored)
    );
    // The guest's MAC is learned from its ARP.
    let mac = MacAddr([0x02, 1, 2, 3, 4, 5]);
    let (a, reply) = handle(&mut gw, &arp_request(mac, GUEST_IP, GATEWAY), Instant::ZERO);
    assert!(matches!(a, TxAction::Reply { .. }));
    assert_eq!(
        EthernetFrame::new_checked(&reply[..]).unwrap().dst_addr(),
        mac
    );
    assert_eq!(gw.guest_mac(), mac);
    // Truncated ARP.
    assert_eq!(
        handle(
            &mut gw,
            &arp_request(mac, GUEST_IP, GATEWAY)[..30],
            Instant::ZERO
        )
        .0,
        TxAction::Drop(DropCause::Malformed)
    );
}

#[test]
fn ping_to_the_gateway_is_answered_locally() {
    let mut gw = gateway();
    let ip = lease(&mut gw, Instant::ZERO);
    let req = icmp_echo(GUEST_MAC, ip, GATEWAY, 0x42, 7, b"abcdefgh");
    let (a, reply) = handle(&mut gw, &req, Instant::ZERO);
    assert_eq!(a, TxAction::Reply { len: req.len() });
    let p = SlicedPacket::from_ethernet(&reply).unwrap();
    let Some(NetSlice::Ipv4(v4)) = p.net else {
        panic!()
    };
    let h = v4.header().to_header();
    assert_eq!((h.source, h.destination), (GATEWAY.octets(), ip.octets()));
    assert_eq!(h.calc_header_checksum(), h.header_checksum);
    let Some(TransportSlice::Icmpv4(icmp)) = p.transport else {
        panic!()
    };
    assert_eq!(
        icmp.icmp_type(),
        etherparse::Icmpv4Type::EchoReply(etherparse::IcmpEchoHeader { id: 0x42, seq: 7 })
    );
    assert_eq!(icmp.payload(), b"abcdefgh");
    assert!(
        Icmpv4Packet::new_checked(icmp.slice())
            .unwrap()
            .verify_checksum(),
        "valid ICMP checksum"
    );
    assert_eq!(
        EthernetFrame::new_checked(&reply[..]).unwrap().dst_addr(),
        GUEST_MAC
    );
    // A corrupt echo request is not answered.
    let mut bad = req.clone();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    assert_eq!(
        handle(&mut gw, &bad, Instant::ZERO).0,
        TxAction::Drop(DropCause::Malformed)
    );
}

#[test]
fn anti_spoofing_and_classification() {
    let mut gw = gateway();
    let now = Instant::ZERO;
    let out = udp_frame(GUEST_MAC, GUEST_IP, 5000, SERVER, 53, b"q");
    assert_eq!(
        handle(&mut gw, &out, now).0,
        TxAction::Drop(DropCause::SpoofedIp),
        "no lease yet"
    );
    let ip = lease(&mut gw, now);
    assert_eq!(ip, GUEST_IP);
    assert_eq!(
        handle(&mut gw, &out, now).0,
        TxAction::Nat {
            len: out.len() - 14
        }
    );
    let spoof_ip = udp_frame(
        GUEST_MAC,
        Ipv4Addr::new(192, 168, 64, 3),
        5000,
        SERVER,
        53,
        b"q",
    );
    assert_eq!(
        handle(&mut gw, &spoof_ip, now).0,
        TxAction::Drop(DropCause::SpoofedIp)
    );
    let spoof_mac = udp_frame(MacAddr([2, 9, 9, 9, 9, 9]), ip, 5000, SERVER, 53, b"q");
    assert_eq!(
        handle(&mut gw, &spoof_mac, now).0,
        TxAction::Drop(DropCause::SpoofedMac)
    );
    let multicast_src = udp_frame(MacAddr([1, 0, 0x5e, 0, 0, 1]), ip, 5000, SERVER, 53, b"q");
    assert_eq!(
        handle(&mut gw, &multicast_src, now).0,
        TxAction::Drop(DropCause::SpoofedMac)
    );
    // DNS to the gateway goes to the NAT (its redirect); other gateway ports do not.
    let dns = udp_frame(GUEST_MAC, ip, 5353, GATEWAY, 53, b"q");
    assert_eq!(
        handle(&mut gw, &dns, now).0,
        TxAction::Nat {
            len: dns.len() - 14
        }
    );
    let ssh = udp_frame(GUEST_MAC, ip, 5353, GATEWAY, 22, b"q");
    assert_eq!(
        handle(&mut gw, &ssh, now).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
    // Subnet broadcast, limited broadcast, multicast, another subnet host.
    for dst in [
        Ipv4Addr::new(192, 168, 64, 255),
        Ipv4Addr::BROADCAST,
        Ipv4Addr::new(224, 0, 0, 251),
        Ipv4Addr::new(192, 168, 64, 9),
    ] {
        let f = udp_frame(GUEST_MAC, ip, 5000, dst, 5353, b"q");
        assert_eq!(
            handle(&mut gw, &f, now).0,
            TxAction::Drop(DropCause::NotRoutable),
            "{dst}"
        );
    }
    // Ethernet padding is not part of the IP packet.
    let mut padded = udp_frame(GUEST_MAC, ip, 5000, SERVER, 53, b"q");
    let ip_len = padded.len() - 14;
    padded.resize(60, 0);
    assert_eq!(
        handle(&mut gw, &padded, now).0,
        TxAction::Nat { len: ip_len }
    );
    // Over the MTU.
    let big = udp_frame(GUEST_MAC, ip, 5000, SERVER, 53, &[0u8; 1500]);
    assert_eq!(
        handle(&mut gw, &big, now).0,
        TxAction::Drop(DropCause::TooBig)
    );
    // IPv6, other EtherTypes, runts, garbage.
    let mut v6 = out.clone();
    EthernetFrame::new_unchecked(&mut v6[..]).set_ethertype(ethertype::IPV6);
    assert_eq!(
        handle(&mut gw, &v6, now).0,
        TxAction::Drop(DropCause::Ipv6NoRoute)
    );
    let mut lldp = out.clone();
    EthernetFrame::new_unchecked(&mut lldp[..]).set_ethertype(0x88cc); // LLDP
    assert_eq!(
        handle(&mut gw, &lldp, now).0,
        TxAction::Drop(DropCause::EtherType)
    );
    assert_eq!(
        handle(&mut gw, &out[..10], now).0,
        TxAction::Drop(DropCause::Runt)
    );
    let mut bad_version = out.clone();
    ipv4_of(&mut bad_version).set_version(6);
    assert_eq!(
        handle(&mut gw, &bad_version, now).0,
        TxAction::Drop(DropCause::Malformed)
    );
    let mut long_total = out.clone();
    ipv4_of(&mut long_total).set_total_len(2000);
    assert_eq!(
        handle(&mut gw, &long_total, now).0,
        TxAction::Drop(DropCause::Malformed)
    );
    assert_eq!(
        handle(&mut gw, &out[..20], now).0,
        TxAction::Drop(DropCause::Malformed)
    );
}

#[test]
fn static_address_and_config_validation() {
    let mut cfg = config();
    cfg.static_guest_ip = Some(Ipv4Addr::new(192, 168, 64, 100));
    cfg.dns = false;
    let mut gw = Gateway::new(cfg.clone()).unwrap();
    let f = udp_frame(
        GUEST_MAC,
        Ipv4Addr::new(192, 168, 64, 100),
        1,
        SERVER,
        2,
        b"x",
    );
    assert!(matches!(
        handle(&mut gw, &f, Instant::ZERO).0,
        TxAction::Nat { .. }
    ));
    let dns = udp_frame(
        GUEST_MAC,
        Ipv4Addr::new(192, 168, 64, 100),
        1,
        GATEWAY,
        53,
        b"x",
    );
    assert_eq!(
        handle(&mut gw, &dns, Instant::ZERO).0,
        TxAction::Drop(DropCause::GatewayUnsupported),
        "no DNS upstream"
    );
    for bad in [
        GatewayConfig {
            prefix_len: 31,
            ..cfg.clone()
        },
        GatewayConfig {
            gateway: Ipv4Addr::new(192, 168, 64, 0),
            ..cfg.clone()
        },
        GatewayConfig {
            dhcp_pool: Ipv4Addr::new(192, 168, 64, 9)..=Ipv4Addr::new(192, 168, 64, 3),
            ..cfg.clone()
        },
        GatewayConfig {
            dhcp_pool: Ipv4Addr::new(192, 168, 64, 9)..=Ipv4Addr::new(192, 168, 65, 3),
            ..cfg.clone()
        },
        GatewayConfig {
            mtu: 67,
            ..cfg.clone()
        },
        GatewayConfig {
            mtu: 65521,
            ..cfg.clone()
        },
        GatewayConfig {
            guest_mac: MacAddr::BROADCAST,
            ..cfg.clone()
        },
        GatewayConfig {
            static_guest_ip: Some(GATEWAY),
            ..cfg.clone()
        },
    ] {
        assert!(Gateway::new(bad.clone()).is_err(), "{bad:?}");
    }
}

/// The IPv4 header of an Ethernet frame, writable.
fn ipv4_of(frame: &mut [u8]) -> Ipv4Packet<&mut [u8]> {
    Ipv4Packet::new_unchecked(
        EthernetFrame::new_checked(frame)
            .unwrap()
            .into_payload_mut(),
    )
}

/// Checks an admin-prohibited reply: Ethernet to the guest, IPv4 from the gateway with a
/// valid checksum, ICMP 3/13 with a valid checksum quoting `sent`'s IPv4 header and 8 bytes.
fn assert_admin_prohibited(reply: &[u8], guest: Ipv4Addr, sent: &[u8]) {
    let eth = EthernetFrame::new_checked(reply).unwrap();
    assert_eq!(eth.dst_addr(), GUEST_MAC);
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    assert_eq!(eth.ethertype(), ethertype::IPV4);
    let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
    assert!(ip.verify_checksum(), "valid IPv4 header checksum");
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, guest));
    assert_eq!(ip.protocol(), wire::ip_proto::ICMP);
    assert_eq!(ip.ttl(), 64);
    let sent_ip = Ipv4Packet::new_checked(&sent[14..]).unwrap();
    let quote_len = sent_ip.header_len() + 8;
    assert_eq!(usize::from(ip.total_len()), 20 + 8 + quote_len);
    assert_eq!(reply.len(), 14 + 20 + 8 + quote_len);
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(), "valid ICMP checksum");
    assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, 13));
    assert_eq!(&ip.payload()[4..8], &[0, 0, 0, 0], "unused word");
    assert_eq!(&ip.payload()[8..], &sent[14..14 + quote_len], "the quote");
    // etherparse agrees on every checksum and the message.
    let p = SlicedPacket::from_ethernet(reply).unwrap();
    let Some(NetSlice::Ipv4(v4)) = p.net else {
        panic!("not ipv4")
    };
    let h = v4.header().to_header();
    assert_eq!(h.calc_header_checksum(), h.header_checksum);
    let Some(TransportSlice::Icmpv4(m)) = p.transport else {
        panic!("not icmp")
    };
    assert_eq!(
        m.icmp_type(),
        etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FilterProhibited
        )
    );
}

#[test]
fn a_denied_destination_is_answered_with_admin_prohibited_and_counted() {
    let mut policy = EgressPolicy::default();
    policy
        .add("198.18.0.0/24".parse().unwrap(), EgressAction::Deny)
        .unwrap();
    policy
        .add("198.18.0.128/25".parse().unwrap(), EgressAction::Allow)
        .unwrap();
    let external = Ipv4Addr::new(100, 64, 0, 2);
    let mut gw = gateway().with_egress(policy, Some(external));
    let now = Instant::ZERO;
    let ip = lease(&mut gw, now);
    // UDP to a denied address: 3/13 quoting the header and the 8-byte UDP header.
    let denied = udp_frame(GUEST_MAC, ip, 5000, SERVER, 53, b"hello, world");
    let (a, reply) = handle(&mut gw, &denied, now);
    assert_eq!(
        a,
        TxAction::DropWithReply {
            cause: DropCause::EgressDenied,
            len: 14 + 20 + 8 + 28
        }
    );
    assert_admin_prohibited(&reply, ip, &denied);
    // A ping to the metadata address (denied by default).
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let ping = icmp_echo(GUEST_MAC, ip, metadata, 7, 1, b"abcdefghijklmnop");
    let (a, reply) = handle(&mut gw, &ping, now);
    assert!(matches!(a, TxAction::DropWithReply { .. }), "{a:?}");
    assert_admin_prohibited(&reply, ip, &ping);
    // The longest prefix wins: the /25 inside the denied /24 is allowed.
    let allowed = udp_frame(
        GUEST_MAC,
        ip,
        5000,
        Ipv4Addr::new(198, 18, 0, 200),
        53,
        b"q",
    );
    assert_eq!(
        handle(&mut gw, &allowed, now).0,
        TxAction::Nat {
            len: allowed.len() - 14
        }
    );
    // The gateway (DNS) and the external address are never subject to the policy, even
    // under a deny of everything.
    let mut all = EgressPolicy::default();
    all.add("0.0.0.0/0".parse().unwrap(), EgressAction::Deny)
        .unwrap();
    let mut gw = gateway().with_egress(all, Some(external));
    let ip = lease(&mut gw, now);
    let dns = udp_frame(GUEST_MAC, ip, 5353, GATEWAY, 53, b"q");
    assert!(matches!(handle(&mut gw, &dns, now).0, TxAction::Nat { .. }));
    let hairpin = udp_frame(GUEST_MAC, ip, 5353, external, 8080, b"q");
    assert!(matches!(
        handle(&mut gw, &hairpin, now).0,
        TxAction::Nat { .. }
    ));
    let gw_ping = icmp_echo(GUEST_MAC, ip, GATEWAY, 1, 1, b"x");
    assert!(matches!(
        handle(&mut gw, &gw_ping, now).0,
        TxAction::Reply { .. }
    ));
    let out = udp_frame(GUEST_MAC, ip, 5000, Ipv4Addr::new(1, 1, 1, 1), 53, b"q");
    assert!(matches!(
        handle(&mut gw, &out, now).0,
        TxAction::DropWithReply { .. }
    ));
}

#[test]
fn denied_packets_are_answered_within_the_rate_limit_and_never_about_errors_or_later_fragments() {
    let mut gw = gateway();
    let t0 = Instant::from_secs(10);
    let ip = lease(&mut gw, t0);
    let metadata = Ipv4Addr::new(169, 254, 169, 254);
    let denied = udp_frame(GUEST_MAC, ip, 5000, metadata, 80, b"GET /");
    let mut replies = 0;
    for _ in 0..1000 {
        match handle(&mut gw, &denied, t0).0 {
            TxAction::DropWithReply { .. } => replies += 1,
            TxAction::Drop(DropCause::EgressDenied) => {}
            a => panic!("{a:?}"),
        }
    }
    assert_eq!(replies, ICMP_ERROR_BURST, "a flood gets one burst at once");
    // 10 ms later: 10 more (1 000 per second).
    let t1 = Instant::from_millis(10_010);
    let n = (0..100)
        .filter(|_| {
            matches!(
                handle(&mut gw, &denied, t1).0,
                TxAction::DropWithReply { .. }
            )
        })
        .count();
    assert_eq!(n, 10);
    // No error about an ICMP error, nor about a later fragment (still counted drops).
    let t2 = Instant::from_secs(100);
    let mut unreachable = icmp_echo(GUEST_MAC, ip, metadata, 1, 1, b"abcdefgh");
    {
        let mut ipv4 = ipv4_of(&mut unreachable);
        let mut m = Icmpv4Packet::new_unchecked(ipv4.payload_mut());
        m.set_msg_type(3);
        m.set_msg_code(3);
        m.fill_checksum();
    }
    assert_eq!(
        handle(&mut gw, &unreachable, t2).0,
        TxAction::Drop(DropCause::EgressDenied)
    );
    let mut later = denied.clone();
    {
        let mut ipv4 = ipv4_of(&mut later);
        ipv4.set_frag_offset(1480);
        ipv4.fill_checksum();
    }
    assert_eq!(
        handle(&mut gw, &later, t2).0,
        TxAction::Drop(DropCause::EgressDenied)
    );
    assert!(matches!(
        handle(&mut gw, &denied, t2).0,
        TxAction::DropWithReply { .. }
    ));
}
/// Without a DNS upstream a query to the gateway is answered REFUSED at once (the guest's
/// resolver fails fast instead of waiting out its timeouts); the answer keeps the ID, RD and
/// the question.
#[test]
fn no_upstream_answers_dns_queries_with_refused() {
    let mut cfg = config();
    cfg.dns = false;
    cfg.static_guest_ip = Some(GUEST_IP);
    let mut gw = Gateway::new(cfg).unwrap();
    // id 0xbeef, RD, one question: example.com A IN.
    let mut query = vec![0xbe, 0xef, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    let question = b"\x07example\x03com\x00\x00\x01\x00\x01";
    query.extend_from_slice(question);
    // An EDNS OPT record (additional section) is not copied.
    query.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    let f = udp_frame(GUEST_MAC, GUEST_IP, 40000, GATEWAY, 53, &query);
    let (a, out) = handle(&mut gw, &f, Instant::ZERO);
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let iph = ip.header().to_header();
    assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
    assert_eq!(Ipv4Addr::from(iph.source), GATEWAY);
    assert_eq!(Ipv4Addr::from(iph.destination), GUEST_IP);
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not udp")
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (53, 40000));
    assert_eq!(
        udp.to_header()
            .calc_checksum_ipv4(&iph, udp.payload())
            .unwrap(),
        udp.checksum()
    );
    let mut expected = vec![0xbe, 0xef, 0x81, 0x05, 0, 1, 0, 0, 0, 0, 0, 0];
    expected.extend_from_slice(question);
    assert_eq!(udp.payload(), &expected[..]);
    // A response (QR set), a runt header: not answered.
    let mut response = query.clone();
    response[2] |= 0x80;
    for bad in [&response[..], &query[..11]] {
        let f = udp_frame(GUEST_MAC, GUEST_IP, 40000, GATEWAY, 53, bad);
        assert_eq!(
            handle(&mut gw, &f, Instant::ZERO).0,
            TxAction::Drop(DropCause::GatewayUnsupported)
        );
    }
    // A question with a compression pointer: REFUSED without the question.
    let mut odd = query[..12].to_vec();
    odd.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
    let f = udp_frame(GUEST_MAC, GUEST_IP, 40000, GATEWAY, 53, &odd);
    let (_, out) = handle(&mut gw, &f, Instant::ZERO);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(TransportSlice::Udp(udp)) = p.transport else {
        panic!("not udp")
    };
    assert_eq!(
        udp.payload(),
        &[0xbe, 0xef, 0x81, 0x05, 0, 0, 0, 0, 0, 0, 0, 0]
    );
}

/// Without a DNS upstream a TCP connection to the gateway's port 53 is reset at once (a closed
/// port, RFC 9293), so `dig +tcp` fails fast too; a RST is never answered.
#[test]
fn no_upstream_resets_tcp_to_the_gateways_dns_port() {
    let mut cfg = config();
    cfg.dns = false;
    cfg.static_guest_ip = Some(GUEST_IP);
    let mut gw = Gateway::new(cfg).unwrap();
    let tcp = |build: etherparse::PacketBuilderStep<etherparse::TcpHeader>, payload: &[u8]| {
        let mut f = Vec::new();
        build.write(&mut f, payload).unwrap();
        f
    };
    let base = || {
        etherparse::PacketBuilder::ethernet2(GUEST_MAC.0, GATEWAY_MAC.0).ipv4(
            GUEST_IP.octets(),
            GATEWAY.octets(),
            64,
        )
    };
    // A SYN (seq 1000): RST|ACK, seq 0, ack 1001.
    let syn = tcp(base().tcp(40001, 53, 1000, 64240).syn(), &[]);
    let (a, out) = handle(&mut gw, &syn, Instant::ZERO);
    assert!(matches!(a, TxAction::Reply { .. }), "{a:?}");
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(NetSlice::Ipv4(ip)) = p.net else {
        panic!("not ipv4")
    };
    let iph = ip.header().to_header();
    assert_eq!(iph.calc_header_checksum(), iph.header_checksum);
    assert_eq!(
        (Ipv4Addr::from(iph.source), Ipv4Addr::from(iph.destination)),
        (GATEWAY, GUEST_IP)
    );
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not tcp")
    };
    assert_eq!((t.source_port(), t.destination_port()), (53, 40001));
    assert!(t.rst() && t.ack() && !t.syn());
    assert_eq!((t.sequence_number(), t.acknowledgment_number()), (0, 1001));
    assert_eq!(
        t.to_header().calc_checksum_ipv4(&iph, t.payload()).unwrap(),
        t.checksum()
    );
    // A segment with ACK and 5 bytes of data: RST with seq = its ack, no ACK.
    let data = tcp(base().tcp(40001, 53, 5000, 64240).ack(777), b"hello");
    let (_, out) = handle(&mut gw, &data, Instant::ZERO);
    let p = SlicedPacket::from_ethernet(&out).unwrap();
    let Some(TransportSlice::Tcp(t)) = p.transport else {
        panic!("not tcp")
    };
    assert!(t.rst() && !t.ack());
    assert_eq!(t.sequence_number(), 777);
    // A RST is not answered.
    let rst = tcp(base().tcp(40001, 53, 5000, 0).rst(), &[]);
    assert_eq!(
        handle(&mut gw, &rst, Instant::ZERO).0,
        TxAction::Drop(DropCause::GatewayUnsupported)
    );
}

/// With an IPv6 upstream, IPv4 queries to the gateway go to the DNS relay (a fragment is
/// not relayed); with an IPv4 one, to the NAT.
#[test]
fn ipv4_dns_goes_to_the_relay_when_the_upstream_is_ipv6() {
    let mut cfg = config();
    cfg.static_guest_ip = Some(GUEST_IP);
    let f = udp_frame(GUEST_MAC, GUEST_IP, 40000, GATEWAY, 53, b"query");
    let mut gw = Gateway::new(cfg.clone()).unwrap();
    assert_eq!(
        handle(&mut gw, &f, Instant::ZERO).0,
        TxAction::Nat { len: f.len() - 14 }
    );
    cfg.dns4_relay = true;
    let mut gw = Gateway::new(cfg).unwrap();
    assert_eq!(
        handle(&mut gw, &f, Instant::ZERO).0,
        TxAction::DnsRelay { len: f.len() - 14 }
    );
    let mut frag = f.clone();
    wire::Ipv4Packet::new_unchecked(&mut frag[14..]).set_more_frags(true);
    wire::Ipv4Packet::new_unchecked(&mut frag[14..]).fill_checksum();
    assert_eq!(
        handle(&mut gw, &frag, Instant::ZERO).0,
        TxAction::Drop(DropCause::DnsRelay)
    );
}
