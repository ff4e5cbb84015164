//! The gateway's parsers (ARP, DHCP, the DNS redirect, ICMP echo, IPv4 classification, and
//! the IPv6 side: Neighbor and Router Solicitations and Advertisements, DHCPv6, ICMPv6 echo)
//! on hostile frames: a sequence of frames, each either raw bytes or a template (ARP, a DHCP
//! message with a valid BOOTP header and cookie, ICMP echo to the gateway, a DNS query to the
//! gateway, a packet to elsewhere, denied or allowed by the egress policy; an ICMPv6 message
//! of an ND type or echo, a DHCPv6 message) whose fields and payload come from the input,
//! with valid checksums so the parsers get past them; DNS over UDP or TCP to `[fd64::1]:53`
//! or `192.168.64.1:53` goes through the DNS relay ([`bridge::DnsRelay`]) into the other IP
//! version and an answer back, checksums checked. Never a panic; every reply fits the
//! reply buffer and is a well-formed frame with valid checksums; every frame passed to the
//! NAT is an IPv4 or IPv6 packet inside the frame, of the length given. Unsolicited Router Advertisements are asked for
//! after every frame and checked the same way.
//!
//! Input: a sequence of `[kind, time_step, len_hi, len_lo, bytes[len]...]` records.
#![no_main]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::time::Duration;

use bridge::{
    DnsRelay, EgressAction, EgressPolicy, Gateway, GatewayConfig, Ipv6Config, MacAddr, TxAction,
};
use libfuzzer_sys::fuzz_target;
use nat::Instant;
use wire::{
    ArpPacket, EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket, ethertype, ip_proto,
};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);
const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);
const GUEST_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 2]);
const GATEWAY_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
const MTU: u16 = 1500;
/// The largest frame one record builds (a GSO super-frame may exceed the MTU).
const MAX_FRAME: usize = 9000;

fuzz_target!(|input: &[u8]| {
    let mut gw = gateway();
    let mut relay = DnsRelay::new(GATEWAY, GATEWAY6);
    let mut reply = vec![0u8; MTU as usize + 14];
    let mut frame = Vec::with_capacity(MAX_FRAME);
    let mut now = Instant::ZERO;
    let mut rest = input;
    while let [kind, step, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo))
            .min(tail.len())
            .min(MAX_FRAME);
        let (bytes, next) = tail.split_at(len);
        rest = next;
        // Time moves forward, sometimes past the lease.
        now = Instant::from_millis(now.as_millis() + u64::from(*step) * 50_000);
        build(*kind, bytes, &mut frame);
        let gso = kind & 0x80 != 0;
        match gw.handle_with(&frame, &mut reply, now, gso) {
            TxAction::Reply { len } | TxAction::DropWithReply { len, .. } => {
                check_reply(&reply, len)
            }
            TxAction::Nat { len } => {
                assert!(14 + len <= frame.len(), "nat len {len} past the frame");
                // IPv4, or IPv6 from the guest's prefix beyond the link (NAT66).
                let packet = &frame[14..14 + len];
                if packet.first().is_some_and(|b| b >> 4 == 6) {
                    let ip = Ipv6Packet::new_checked(packet).expect("nat gets IPv6");
                    assert_eq!(40 + usize::from(ip.payload_len()), len);
                } else {
                    let ip = Ipv4Packet::new_checked(packet).expect("nat gets IPv4");
                    assert_eq!(usize::from(ip.total_len()), len);
                }
            }
            TxAction::DnsRelay { len } => {
                assert!(14 + len <= frame.len(), "relay len {len} past the frame");
                let packet = &frame[14..14 + len];
                if packet.first().is_some_and(|b| b >> 4 == 6) {
                    let ip = Ipv6Packet::new_checked(packet).expect("relay gets IPv6");
                    assert_eq!(40 + usize::from(ip.payload_len()), len);
                } else {
                    let ip = Ipv4Packet::new_checked(packet).expect("relay gets IPv4");
                    assert_eq!(usize::from(ip.total_len()), len);
                }
                relay_round_trip(&mut relay, &frame, len, now.as_millis());
            }
            TxAction::Consumed | TxAction::Drop(_) => {}
        }
        if let Some(len) = gw.unsolicited(&mut reply, now) {
            check_reply(&reply, len);
        }
        let _ = gw.lease(now);
        assert!(gw.guest_ipv6_addrs().len() <= bridge::MAX_GUEST_IPV6_ADDRS);
    }
});

fn gateway() -> Gateway {
    let cfg = GatewayConfig {
        gateway: GATEWAY,
        gateway_mac: GATEWAY_MAC,
        prefix_len: 24,
        guest_mac: GUEST_MAC,
        dhcp_pool: Ipv4Addr::new(192, 168, 64, 2)..=Ipv4Addr::new(192, 168, 64, 4),
        lease: Duration::from_secs(3600),
        mtu: MTU,
        dns: true,
        // Both ways through the relay (a real configuration has one upstream family).
        dns4_relay: true,
        dns6: bridge::Dns6::Relay,
        static_guest_ip: None,
        ipv6: Some(Ipv6Config::default()),
    };
    let mut policy = EgressPolicy::default();
    for (cidr, action) in [
        ("198.18.0.0/24", EgressAction::Deny),
        ("198.18.0.128/25", EgressAction::Allow),
        ("2001:db8::/33", EgressAction::Deny),
    ] {
        let cidr = cidr.parse().unwrap_or_else(|e| panic!("static cidr: {e}"));
        policy
            .add(cidr, action)
            .unwrap_or_else(|e| panic!("static policy: {e}"));
    }
    match Gateway::new(cfg) {
        Ok(g) => g.with_egress(policy, Some(Ipv4Addr::new(100, 64, 0, 2))),
        Err(e) => panic!("static config: {e}"),
    }
}

/// Builds the frame of one record into `frame`.
fn build(kind: u8, bytes: &[u8], frame: &mut Vec<u8>) {
    frame.clear();
    match kind & 0xf {
        1 => arp(bytes, frame),
        2 => dhcp(bytes, frame),
        3 => icmp_echo(bytes, frame),
        4 => udp_to(bytes, frame, GATEWAY, 53),
        // Denied (ICMP admin prohibited), allowed by the longer prefix, or outside the rules.
        5 => {
            let dst = Ipv4Addr::new(198, 18, byte(bytes, 1) & 1, byte(bytes, 2));
            udp_to(bytes, frame, dst, 4000);
        }
        // ND (133..=137), echo (128), MLD or anything, to the gateway or a group.
        6 => {
            let t = match byte(bytes, 0) % 4 {
                0 => 133 + byte(bytes, 1) % 5,
                1 => 128,
                _ => byte(bytes, 1),
            };
            icmpv6_msg(bytes, frame, t);
        }
        7 => dhcpv6(bytes, frame),
        // DNS over UDP or TCP to the gateway's port 53 (the relay's), of any length.
        8 => dns6(bytes, frame),
        _ => frame.extend_from_slice(bytes),
    }
}

fn eth(frame: &mut Vec<u8>, dst: MacAddr, ty: u16) {
    frame.extend_from_slice(&dst.0);
    frame.extend_from_slice(&GUEST_MAC.0);
    frame.extend_from_slice(&ty.to_be_bytes());
}

fn arp(bytes: &[u8], frame: &mut Vec<u8>) {
    eth(frame, MacAddr([0xff; 6]), ethertype::ARP);
    let start = frame.len();
    frame.resize(start + 28, 0);
    let mut a = ArpPacket::new_unchecked(&mut frame[start..]);
    a.set_ethernet_ipv4();
    a.set_operation(u16::from(byte(bytes, 0) & 3));
    a.set_sender_hardware_addr(if byte(bytes, 1) & 1 == 0 {
        GUEST_MAC
    } else {
        MacAddr([2, 0, 0, 0, 9, byte(bytes, 2)])
    });
    a.set_sender_protocol_addr(Ipv4Addr::new(192, 168, 64, byte(bytes, 3)));
    a.set_target_protocol_addr(Ipv4Addr::new(192, 168, 64, byte(bytes, 4)));
    frame.extend_from_slice(bytes.get(5..).unwrap_or_default());
}

/// IPv4 + UDP header (checksums filled) around `payload`.
fn ipv4_udp(frame: &mut Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr, ports: (u16, u16), payload: &[u8]) {
    let ip_start = frame.len();
    let total = 28 + payload.len();
    frame.resize(ip_start + 28, 0);
    frame.extend_from_slice(payload);
    ipv4_header(&mut frame[ip_start..], src, dst, ip_proto::UDP, total);
    let mut udp = UdpPacket::new_unchecked(&mut frame[ip_start + 20..]);
    udp.set_src_port(ports.0);
    udp.set_dst_port(ports.1);
    udp.set_len((total - 20) as u16);
    udp.fill_checksum_v4(src, dst);
}

fn ipv4_header(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, proto: u8, total: usize) {
    let mut ip = Ipv4Packet::new_unchecked(buf);
    ip.set_version(4);
    ip.set_header_len(20);
    ip.set_total_len(total.min(usize::from(u16::MAX)) as u16);
    ip.set_ttl(64);
    ip.set_protocol(proto);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.fill_checksum();
}

fn dhcp(bytes: &[u8], frame: &mut Vec<u8>) {
    eth(frame, MacAddr([0xff; 6]), ethertype::IPV4);
    let mut msg = [0u8; 240];
    msg[0] = 1 + (byte(bytes, 0) & 1); // op: request, sometimes reply
    msg[1] = 1; // htype Ethernet
    msg[2] = if byte(bytes, 0) & 2 == 0 {
        6
    } else {
        byte(bytes, 1)
    }; // hlen
    msg[4..8].copy_from_slice(&[byte(bytes, 2), byte(bytes, 3), 0, 1]); // xid
    msg[12..16].copy_from_slice(&[192, 168, 64, byte(bytes, 4)]); // ciaddr
    msg[28..34].copy_from_slice(&GUEST_MAC.0); // chaddr
    msg[236..240].copy_from_slice(&[99, 130, 83, 99]); // magic cookie
    let mut payload = msg.to_vec();
    payload.extend_from_slice(bytes.get(5..).unwrap_or_default());
    let src = if byte(bytes, 0) & 4 == 0 {
        Ipv4Addr::UNSPECIFIED
    } else {
        Ipv4Addr::new(192, 168, 64, byte(bytes, 4))
    };
    ipv4_udp(frame, src, Ipv4Addr::BROADCAST, (68, 67), &payload);
}

fn icmp_echo(bytes: &[u8], frame: &mut Vec<u8>) {
    eth(frame, GATEWAY_MAC, ethertype::IPV4);
    let ip_start = frame.len();
    let total = 28 + bytes.len();
    frame.resize(ip_start + 28, 0);
    frame.extend_from_slice(bytes);
    ipv4_header(
        &mut frame[ip_start..],
        guest_ip(bytes),
        GATEWAY,
        ip_proto::ICMP,
        total,
    );
    let mut icmp = Icmpv4Packet::new_unchecked(&mut frame[ip_start + 20..]);
    icmp.set_msg_type(8);
    icmp.set_msg_code(0);
    icmp.fill_checksum();
}

fn udp_to(bytes: &[u8], frame: &mut Vec<u8>, dst: Ipv4Addr, port: u16) {
    eth(frame, GATEWAY_MAC, ethertype::IPV4);
    ipv4_udp(frame, guest_ip(bytes), dst, (40000, port), bytes);
}

/// The guest's source: usually the first leased address, sometimes another.
fn guest_ip(bytes: &[u8]) -> Ipv4Addr {
    match byte(bytes, 0) & 3 {
        0 => Ipv4Addr::new(192, 168, 64, 77),
        _ => Ipv4Addr::new(192, 168, 64, 2),
    }
}

/// A source for the guest's IPv6: link-local, in the prefix, `::`, or from elsewhere.
fn guest_ip6(bytes: &[u8]) -> Ipv6Addr {
    let low = u16::from(byte(bytes, 3));
    match byte(bytes, 2) & 3 {
        0 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, low),
        1 => Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, low),
        2 => Ipv6Addr::UNSPECIFIED,
        _ => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, low),
    }
}

/// A destination: the gateway's two addresses, all-nodes, all-routers, the solicited-node
/// group of a gateway address, All_DHCP_Relay_Agents_and_Servers, or beyond.
fn gateway_ip6(bytes: &[u8]) -> Ipv6Addr {
    match byte(bytes, 4) % 7 {
        0 => Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1),
        1 => Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1),
        2 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1),
        3 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2),
        4 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 1),
        5 => Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2),
        _ => Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2),
    }
}

/// Ethernet + IPv6 (hop limit 255, sometimes another) around `payload` whose checksum the
/// caller fills; returns where the payload starts.
fn ipv6(
    bytes: &[u8],
    frame: &mut Vec<u8>,
    next: u8,
    payload: &[u8],
) -> (usize, Ipv6Addr, Ipv6Addr) {
    let (src, dst) = (guest_ip6(bytes), gateway_ip6(bytes));
    eth(frame, GATEWAY_MAC, ethertype::IPV6);
    let start = frame.len();
    frame.resize(start + 40, 0);
    frame.extend_from_slice(payload);
    let mut ip = Ipv6Packet::new_unchecked(&mut frame[start..]);
    ip.set_version(6);
    ip.set_payload_len(payload.len().min(usize::from(u16::MAX)) as u16);
    ip.set_next_header(next);
    ip.set_hop_limit(if byte(bytes, 5) & 7 == 0 {
        byte(bytes, 6)
    } else {
        255
    });
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    (start + 40, src, dst)
}

/// An ICMPv6 message of type `t`, code usually 0, the rest from the input (an ND target or
/// options, echo data), with a valid checksum.
fn icmpv6_msg(bytes: &[u8], frame: &mut Vec<u8>, t: u8) {
    let mut msg = vec![t, if byte(bytes, 5) & 8 == 0 { 0 } else { 1 }, 0, 0];
    msg.extend_from_slice(bytes.get(7..).unwrap_or_default());
    if msg.len() < 8 {
        msg.resize(8, 0);
    }
    let (at, src, dst) = ipv6(bytes, frame, ip_proto::ICMPV6, &msg);
    Icmpv6Packet::new_unchecked(&mut frame[at..]).fill_checksum(src, dst);
}

/// A DHCPv6 message (type and transaction id, then options from the input) from the client
/// port, with a valid UDP checksum.
fn dhcpv6(bytes: &[u8], frame: &mut Vec<u8>) {
    let mut udp = vec![0u8; 8];
    udp.push(if byte(bytes, 0) & 1 == 0 {
        11
    } else {
        byte(bytes, 1)
    }); // Information-request
    udp.extend_from_slice(&[1, 2, 3]);
    udp.extend_from_slice(bytes.get(7..).unwrap_or_default());
    let len = udp.len().min(usize::from(u16::MAX)) as u16;
    let (at, src, dst) = ipv6(bytes, frame, ip_proto::UDP, &udp);
    let mut u = UdpPacket::new_unchecked(&mut frame[at..]);
    u.set_src_port(546);
    u.set_dst_port(547);
    u.set_len(len);
    u.fill_checksum_v6(src, dst);
}

/// A UDP datagram or TCP segment (flags and header length from the input) to port 53,
/// with a valid checksum.
fn dns6(bytes: &[u8], frame: &mut Vec<u8>) {
    let tcp = byte(bytes, 0) & 1 == 1;
    let hdr = if tcp { 20 } else { 8 };
    let mut l4 = vec![0u8; hdr];
    l4.extend_from_slice(bytes.get(7..).unwrap_or_default());
    let len = l4.len().min(usize::from(u16::MAX)) as u16;
    let next = if tcp { ip_proto::TCP } else { ip_proto::UDP };
    let (at, src, dst) = ipv6(bytes, frame, next, &l4);
    let sport = u16::from_be_bytes([byte(bytes, 1), byte(bytes, 5)]);
    if tcp {
        let mut t = TcpPacket::new_unchecked(&mut frame[at..]);
        t.set_src_port(sport);
        t.set_dst_port(53);
        t.set_header_len(20 + 4 * usize::from(byte(bytes, 6) >> 6));
        t.set_flags(byte(bytes, 6));
        t.fill_checksum_v6(src, dst);
    } else {
        let mut u = UdpPacket::new_unchecked(&mut frame[at..]);
        u.set_src_port(sport);
        u.set_dst_port(53);
        // Usually the true length, sometimes another.
        u.set_len(if byte(bytes, 6) & 0xf0 == 0 {
            u16::from(byte(bytes, 6))
        } else {
            len
        });
        u.fill_checksum_v6(src, dst);
    }
}

/// The relay's translation of a query (`frame[14..14 + len]`, either IP version) into the
/// other version and back of an answer to it: never a panic; what passes carries valid
/// checksums.
fn relay_round_trip(relay: &mut DnsRelay, frame: &[u8], len: usize, now: u64) {
    let mut f = frame.to_vec();
    // Room for an IPv4 query to grow into IPv6.
    f.resize(frame.len() + 40, 0);
    let Ok(n) = relay.outbound(&mut f, len, now) else {
        return;
    };
    let out = &f[14..14 + n];
    let (proto, at) = match out[0] >> 4 {
        4 => {
            let v4 = Ipv4Packet::new_checked(out).expect("relay gives IPv4");
            assert!(v4.verify_checksum(), "relayed IPv4 header checksum");
            assert_eq!(usize::from(v4.total_len()), n);
            let g = IpAddr::V4(GATEWAY);
            check_l4(v4.protocol(), v4.payload(), g, g);
            (v4.protocol(), 20)
        }
        _ => {
            let v6 = Ipv6Packet::new_checked(out).expect("relay gives IPv4 or IPv6");
            assert_eq!(40 + usize::from(v6.payload_len()), n);
            let g = IpAddr::V6(GATEWAY6);
            check_l4(v6.next_header(), v6.payload(), g, g);
            (v6.next_header(), 40)
        }
    };
    // The answer the NAT would hand over: the same addresses, the ports swapped.
    let mut answer = out.to_vec();
    let ports: [u8; 4] = answer[at..at + 4].try_into().expect("a transport header");
    answer[at..at + 2].copy_from_slice(&ports[2..]);
    answer[at + 2..at + 4].copy_from_slice(&ports[..2]);
    assert!(relay.is_for_relay(&answer));
    let mut buf = vec![0u8; 14 + answer.len() + 20];
    buf[14..14 + answer.len()].copy_from_slice(&answer);
    let Ok(m) = relay.inbound(&mut buf, (14, answer.len()), usize::from(MTU), now) else {
        return;
    };
    let back = &buf[14..14 + m];
    let (sport, _) = match back[0] >> 4 {
        6 => {
            let v6 = Ipv6Packet::new_checked(back).expect("answer IPv6");
            assert_eq!((v6.src_addr(), v6.next_header()), (GATEWAY6, proto));
            let (s, d) = (IpAddr::V6(v6.src_addr()), IpAddr::V6(v6.dst_addr()));
            check_l4(proto, v6.payload(), s, d)
        }
        _ => {
            let v4 = Ipv4Packet::new_checked(back).expect("answer IPv4");
            assert!(v4.verify_checksum(), "answer IPv4 header checksum");
            assert_eq!((v4.src_addr(), v4.protocol()), (GATEWAY, proto));
            let (s, d) = (IpAddr::V4(v4.src_addr()), IpAddr::V4(v4.dst_addr()));
            check_l4(proto, v4.payload(), s, d)
        }
    };
    assert_eq!(sport, 53, "answers come from port 53");
}

/// Checks the TCP or UDP checksum of `l4` over `src` and `dst`; returns its ports.
fn check_l4(proto: u8, l4: &[u8], src: IpAddr, dst: IpAddr) -> (u16, u16) {
    if proto == ip_proto::UDP {
        let u = UdpPacket::new_checked(l4).expect("relayed UDP");
        let ok = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => u.verify_checksum_v4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => u.verify_checksum_v6(s, d),
            _ => false,
        };
        assert!(ok, "relayed UDP checksum");
        (u.src_port(), u.dst_port())
    } else {
        let t = TcpPacket::new_checked(l4).expect("relayed TCP");
        let ok = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => t.verify_checksum_v4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => t.verify_checksum_v6(s, d),
            _ => false,
        };
        assert!(ok, "relayed TCP checksum");
        (t.src_port(), t.dst_port())
    }
}

fn byte(bytes: &[u8], i: usize) -> u8 {
    bytes.get(i).copied().unwrap_or(0)
}

/// A reply is a frame to the guest that fits the buffer; IPv4 replies carry valid checksums.
fn check_reply(reply: &[u8], len: usize) {
    assert!(len <= reply.len(), "reply len {len} past the buffer");
    let eth = EthernetFrame::new_checked(&reply[..len]).expect("reply is a frame");
    assert_eq!(eth.src_addr(), GATEWAY_MAC);
    match eth.ethertype() {
        ethertype::ARP => {
            let arp = ArpPacket::new_checked(eth.payload()).expect("reply is ARP");
            assert_eq!(arp.operation(), 2);
            assert_eq!(arp.sender_protocol_addr(), GATEWAY);
        }
        ethertype::IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("reply is IPv4");
            assert!(ip.verify_checksum(), "reply IPv4 checksum");
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            match ip.protocol() {
                ip_proto::ICMP => {
                    let icmp = Icmpv4Packet::new_checked(ip.payload()).expect("reply ICMP");
                    assert!(icmp.verify_checksum(), "reply ICMP checksum");
                }
                ip_proto::UDP => {
                    let udp = UdpPacket::new_checked(ip.payload()).expect("reply UDP");
                    assert!(
                        udp.checksum() == 0 || udp.verify_checksum_v4(src, dst),
                        "reply UDP checksum"
                    );
                }
                p => panic!("unexpected reply protocol {p}"),
            }
        }
        ethertype::IPV6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).expect("reply is IPv6");
            assert_eq!(
                40 + usize::from(ip.payload_len()),
                len - 14,
                "reply IPv6 length"
            );
            let (src, dst) = (ip.src_addr(), ip.dst_addr());
            match ip.next_header() {
                ip_proto::ICMPV6 => {
                    let icmp = Icmpv6Packet::new_checked(ip.payload()).expect("reply ICMPv6");
                    assert!(icmp.verify_checksum(src, dst), "reply ICMPv6 checksum");
                    assert!(
                        matches!(icmp.msg_type(), 1 | 129 | 134 | 136),
                        "reply ICMPv6 type"
                    );
                }
                ip_proto::UDP => {
                    let udp = UdpPacket::new_checked(ip.payload()).expect("reply UDP");
                    assert!(udp.verify_checksum_v6(src, dst), "reply UDPv6 checksum");
                }
                p => panic!("unexpected IPv6 reply protocol {p}"),
            }
        }
        t => panic!("unexpected reply ethertype {t:#x}"),
    }
}
