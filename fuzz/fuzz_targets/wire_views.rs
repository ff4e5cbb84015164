//! Arbitrary bytes into every `wire` view: `new_checked` never panics, and once it accepts a
//! buffer no getter, `payload`, checksum check or fill panics; a filled checksum verifies;
//! `Ipv6Packet::upper_layer` stays within the packet. Setters that change length fields
//! leave `payload` panic-free.
#![no_main]

use core::net::{Ipv4Addr, Ipv6Addr};
use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use wire::{
    ArpPacket, EthernetFrame, Icmpv4Packet, Icmpv6Packet, Ipv4Packet, Ipv6Packet, TcpPacket,
    UdpPacket, checksum,
};

const V4: (Ipv4Addr, Ipv4Addr) = (Ipv4Addr::new(192, 168, 64, 2), Ipv4Addr::new(198, 18, 0, 1));
const V6: (Ipv6Addr, Ipv6Addr) = (
    Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
    Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
);

fuzz_target!(|data: &[u8]| {
    black_box(checksum::checksum(data));
    let mut buf = data.to_vec();

    if let Ok(f) = EthernetFrame::new_checked(data) {
        black_box((f.dst_addr(), f.src_addr(), f.ethertype(), f.payload()));
    }
    if let Ok(a) = ArpPacket::new_checked(data) {
        black_box((
            a.operation(),
            a.sender_hardware_addr(),
            a.sender_protocol_addr(),
            a.target_hardware_addr(),
            a.target_protocol_addr(),
        ));
    }
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut buf[..]) {
        black_box((
            p.version(),
            p.header_len(),
            p.dscp(),
            p.ecn(),
            p.total_len(),
            p.ident(),
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
            p.options(),
            p.payload(),
        ));
        p.fill_checksum();
        assert!(p.verify_checksum());
        let (hl, tl) = (data[0] as usize, u16::from_be_bytes([data[0], data[1]]));
        p.set_header_len(hl);
        p.set_total_len(tl);
        black_box((p.payload(), p.options(), p.verify_checksum()));
        black_box(p.payload_mut());
    }
    buf.copy_from_slice(data);
    if let Ok(p) = Ipv6Packet::new_checked(&buf[..]) {
        black_box((
            p.version(),
            p.traffic_class(),
            p.flow_label(),
            p.payload_len(),
            p.next_header(),
            p.hop_limit(),
            p.src_addr(),
            p.dst_addr(),
            p.payload(),
        ));
        if let Ok(u) = p.upper_layer() {
            assert!(u.offset <= wire::ipv6::HEADER_LEN + usize::from(p.payload_len()));
        }
    }
    if let Ok(mut u) = UdpPacket::new_checked(&mut buf[..]) {
        black_box((
            u.src_port(),
            u.dst_port(),
            u.len(),
            u.checksum(),
            u.payload(),
        ));
        u.fill_checksum_v4(V4.0, V4.1);
        assert!(u.verify_checksum_v4(V4.0, V4.1));
        u.fill_checksum_v6(V6.0, V6.1);
        assert!(u.verify_checksum_v6(V6.0, V6.1));
        u.set_len(u16::from_be_bytes([data[0], data[1]]));
        black_box(u.payload_mut());
    }
    buf.copy_from_slice(data);
    if let Ok(mut t) = TcpPacket::new_checked(&mut buf[..]) {
        black_box((
            t.src_port(),
            t.dst_port(),
            t.seq_number(),
            t.ack_number(),
            t.header_len(),
            t.flags(),
            t.window_len(),
            t.checksum(),
            t.urgent_at(),
            t.options(),
            t.payload(),
        ));
        t.fill_checksum_v6(V6.0, V6.1);
        assert!(t.verify_checksum_v6(V6.0, V6.1));
        if data.len() <= usize::from(u16::MAX) {
            t.fill_checksum_v4(V4.0, V4.1);
            assert!(t.verify_checksum_v4(V4.0, V4.1));
        }
        t.set_header_len(usize::from(data[0]));
        black_box((t.options_mut().len(), t.payload_mut().len()));
    }
    buf.copy_from_slice(data);
    if let Ok(mut m) = Icmpv4Packet::new_checked(&mut buf[..]) {
        black_box((
            m.msg_type(),
            m.msg_code(),
            m.checksum(),
            m.echo_ident(),
            m.echo_seq_no(),
            m.next_hop_mtu(),
            m.payload(),
        ));
        m.fill_checksum();
        assert!(m.verify_checksum());
    }
    buf.copy_from_slice(data);
    if let Ok(mut m) = Icmpv6Packet::new_checked(&mut buf[..]) {
        black_box((
            m.msg_type(),
            m.msg_code(),
            m.checksum(),
            m.echo_ident(),
            m.echo_seq_no(),
            m.mtu(),
            m.payload(),
        ));
        m.fill_checksum(V6.0, V6.1);
        assert!(m.verify_checksum(V6.0, V6.1));
    }
});
