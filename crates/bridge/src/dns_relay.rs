//! The gateway's DNS relay: DNS to the gateway (UDP and TCP port 53) reaching an upstream of
//! the other IP version. The common case: IPv6 DNS to `[fd64::1]:53` and an IPv4 upstream.
//! The TX side translates the guest's IPv6 query into an IPv4 packet from the gateway's own
//! IPv4 address (a source the guest can never use, so no flow of the guest's can clash) and
//! a relay port naming a slot of a small table (the guest's address and port, the protocol,
//! the last use), to the gateway's `:53`, where NAT44's DNS redirect sends it on to the
//! upstream like any guest packet. The RX side takes what NAT44 lets through to the
//! gateway's IPv4 address and a relay port and translates it back to IPv6, from
//! `[fd64::1]:53` to the slot's guest address and port. With an IPv6 upstream the same the
//! other way: an IPv4 query to 192.168.64.1:53 becomes IPv6 from `fd64::1` for NAT66's
//! redirect (20 bytes longer, into the room after the frame), the answer IPv4 again.
//!
//! Header translation as RFC 7915 does it (IPv6 ↔ IPv4 header, TCP/UDP payload untouched),
//! but with the transport checksum recomputed in full (DNS messages are small; a partial
//! checksum is complete afterwards). No fragments, no extension headers, no GSO: counted
//! [`DropCause::DnsRelay`] drops, never a panic.
//!
//! Bounded: [`DNS_RELAY_SLOTS`] slots, reused when idle ([`DNS_RELAY_UDP_IDLE_MS`],
//! [`DNS_RELAY_TCP_IDLE_MS`], [`DNS_RELAY_TCP_CLOSING_MS`] after a FIN, at once after a RST);
//! a full table is a counted drop. The TX and RX halves may run on different threads: they
//! share the table behind a mutex that only relayed DNS packets take (the RX side checks the
//! destination address first, without the lock).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use ::wire::{Ipv4Packet, Ipv6Packet, TcpPacket, UdpPacket, ip_proto, ipv6, tcp};

use crate::stats::DropCause;
use crate::wire::{
    ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, HOP_LIMIT, IPV4_DST, IPV4_HLEN, IPV6_DST,
    write_ipv4_header,
};

/// The table both halves share (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct SharedRelay {
    /// The gateway's addresses: what the RX side checks before it takes the lock.
    gateway4: Ipv4Addr,
    gateway6: Ipv6Addr,
    pub(crate) table: Arc<Mutex<DnsRelay>>,
}

impl SharedRelay {
    pub(crate) fn new(gateway4: Ipv4Addr, gateway6: Ipv6Addr) -> Self {
        SharedRelay {
            gateway4,
            gateway6,
            table: Arc::new(Mutex::new(DnsRelay::new(gateway4, gateway6))),
        }
    }

    /// Whether `packet` (an IP packet the NAT let through towards the guest) is for the
    /// relay ([`DnsRelay::is_for_relay`]). No lock.
    pub(crate) fn is_for_relay(&self, packet: &[u8]) -> bool {
        is_to(self.gateway4, self.gateway6, packet)
    }
}

/// Whether `packet` is IPv4 to `addr4` or IPv6 to `addr6`.
fn is_to(addr4: Ipv4Addr, addr6: Ipv6Addr, packet: &[u8]) -> bool {
    match packet.first().map(|b| b >> 4) {
        Some(4) => packet.len() >= IPV4_HLEN && packet[IPV4_DST..IPV4_DST + 4] == addr4.octets(),
        Some(6) => {
            packet.len() >= ipv6::HEADER_LEN && packet[IPV6_DST..IPV6_DST + 16] == addr6.octets()
        }
        _ => false,
    }
}

/// The gateway's DNS relay: DNS to the gateway (UDP and TCP port 53) reaching an upstream
/// of the other IP version. [`DnsRelay::outbound`] translates the guest's query into the
/// upstream's version, from the gateway's own address of that version (which no guest may
/// use) and a relay port naming a slot of a bounded table ([`DNS_RELAY_SLOTS`]: guest
/// address and port, protocol, last use), to the gateway's port 53 of that version, where
/// the NAT's DNS redirect sends it on to the upstream; [`DnsRelay::inbound`] translates the
/// NAT's answer back, from the gateway's address and port 53 to the guest. Header
/// translation as RFC 7915 does it, the transport checksum recomputed in full. Slots are
/// reused after [`DNS_RELAY_UDP_IDLE_MS`] or [`DNS_RELAY_TCP_IDLE_MS`] idle,
/// [`DNS_RELAY_TCP_CLOSING_MS`] after a FIN, at once after a RST; what it cannot carry is a
/// [`DropCause::DnsRelay`] error, never a panic.
///
/// The device core builds one when IPv6 is on and there is an upstream; public for
/// embedders with their own data path and for the fuzz targets.
#[derive(Debug)]
pub struct DnsRelay {
    gateway4: Ipv4Addr,
    gateway6: Ipv6Addr,
    slots: Box<[Slot]>,
    /// Where the search for a free slot starts (round robin, so that a relay port is reused
    /// as late as possible).
    next: usize,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    guest: IpAddr,
    port: u16,
    protocol: u8,
    state: u8,
    /// Milliseconds of the caller's clock.
    last_use: u64,
}

impl Slot {
    const FREE: Slot = Slot {
        guest: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        port: 0,
        protocol: 0,
        state: FREE,
        last_use: 0,
    };

    fn live(&self, now: u64) -> bool {
        let idle = match (self.state, self.protocol) {
            (FREE, _) => return false,
            (CLOSING, _) => DNS_RELAY_TCP_CLOSING_MS,
            (_, ip_proto::TCP) => DNS_RELAY_TCP_IDLE_MS,
            _ => DNS_RELAY_UDP_IDLE_MS,
        };
        now < self.last_use.saturating_add(idle)
    }

    /// Notes a use at `now` by a segment with TCP `flags` (0 for UDP).
    fn touch(&mut self, now: u64, flags: u8) {
        self.last_use = now;
        if flags & tcp::RST != 0 {
            self.state = FREE;
        } else if flags & tcp::FIN != 0 {
            self.state = CLOSING;
        } else if flags & tcp::SYN != 0 {
            self.state = OPEN;
        }
    }
}

impl DnsRelay {
    /// An empty table for the gateway's IPv4 address `gateway4` (the source of relayed
    /// queries) and IPv6 address `gateway6` (the source of the answers).
    #[must_use]
    pub fn new(gateway4: Ipv4Addr, gateway6: Ipv6Addr) -> Self {
        DnsRelay {
            gateway4,
            gateway6,
            slots: vec![Slot::FREE; DNS_RELAY_SLOTS].into_boxed_slice(),
            next: 0,
        }
    }

    /// Whether `packet` (an IP packet the NAT let through towards the guest) is for the
    /// relay: IPv4 to the gateway's IPv4 address or IPv6 to its IPv6 address, which no guest
    /// flow uses.
    #[must_use]
    pub fn is_for_relay(&self, packet: &[u8]) -> bool {
        is_to(self.gateway4, self.gateway6, packet)
    }

    /// Translates the guest's DNS query `frame[14..14 + len]` (UDP or TCP to the gateway's
    /// port 53) in place into the other IP version, from the gateway's own address of that
    /// version and a relay port to the gateway's port 53 of that version (whose NAT redirect
    /// sends it on to the upstream); the frame's EtherType follows. IPv6 becomes 20 bytes
    /// shorter; IPv4 becomes 20 bytes longer, into the room `frame` has after the packet.
    /// Returns the new packet's length. `now`: milliseconds of the caller's monotonic clock.
    ///
    /// # Errors
    ///
    /// [`DropCause::Malformed`] for a packet shorter than its headers,
    /// [`DropCause::DnsRelay`] for what the relay does not carry (a full table, extension
    /// headers, a fragment, a UDP length that disagrees, no room to grow).
    pub fn outbound(&mut self, frame: &mut [u8], len: usize, now: u64) -> Result<usize, DropCause> {
        match frame.get(ETH_HLEN).map(|b| b >> 4) {
            Some(6) => self.out_6to4(frame, len, now),
            Some(4) => self.out_4to6(frame, len, now),
            _ => Err(DropCause::Malformed),
        }
    }

    /// Translates the packet `buf[start..start + len]` (the NAT's answer to a relayed query:
    /// to the gateway's address of its version and a relay port) in place back into the
    /// version of the query, from the gateway's address of that version and port 53 to the
    /// slot's guest address and port. Returns its new length (IPv4 → IPv6: 20 bytes more,
    /// into `buf`).
    ///
    /// # Errors
    ///
    /// [`DropCause::Malformed`] for a packet shorter than its headers,
    /// [`DropCause::DnsRelay`] for a fragment or extension headers, a port that names no live
    /// slot of the packet's protocol and family, or a packet longer than `max_len` or than
    /// `buf` holds.
    pub fn inbound(
        &mut self,
        buf: &mut [u8],
        (start, len): (usize, usize),
        max_len: usize,
        now: u64,
    ) -> Result<usize, DropCause> {
        match buf.get(start).map(|b| b >> 4) {
            Some(4) => self.in_4to6(buf, (start, len), max_len, now),
            Some(6) => self.in_6to4(buf, (start, len), max_len, now),
            _ => Err(DropCause::Malformed),
        }
    }

    /// Slots in use at `now`.
    #[cfg(test)]
    pub(crate) fn live(&self, now: u64) -> usize {
        self.slots.iter().filter(|s| s.live(now)).count()
    }

    /// An IPv6 query (no extension headers) to IPv4 from the gateway's IPv4 address.
    fn out_6to4(&mut self, frame: &mut [u8], len: usize, now: u64) -> Result<usize, DropCause> {
        let packet = frame
            .get(ETH_HLEN..ETH_HLEN + len)
            .ok_or(DropCause::Malformed)?;
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| DropCause::Malformed)?;
        let protocol = ip.next_header();
        let l4_len = usize::from(ip.payload_len());
        let (guest, hop_limit) = (ip.src_addr(), ip.hop_limit());
        if protocol != ip_proto::UDP && protocol != ip_proto::TCP {
            return Err(DropCause::DnsRelay);
        }
        let l4 = packet
            .get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + l4_len)
            .ok_or(DropCause::Malformed)?;
        let (port, flags) = transport(protocol, l4)?;
        let ip_len = IPV4_HLEN + l4_len;
        let total = u16::try_from(ip_len).map_err(|_| DropCause::DnsRelay)?;
        let index = self.slot_for(IpAddr::V6(guest), port, protocol, now)?;
        self.slots[index].touch(now, flags);
        let relay_port = relay_port(index);
        let from = ETH_HLEN + ipv6::HEADER_LEN;
        frame.copy_within(from..from + l4_len, ETH_HLEN + IPV4_HLEN);
        frame[ETH_HLEN - 2..ETH_HLEN].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let packet = &mut frame[ETH_HLEN..ETH_HLEN + ip_len];
        let g = self.gateway4;
        write_ipv4_header(packet, total, protocol, g, g);
        let mut v4 = Ipv4Packet::new_unchecked(&mut packet[..]);
        v4.set_ttl(hop_limit);
        v4.fill_checksum();
        let l4 = &mut packet[IPV4_HLEN..];
        if protocol == ip_proto::UDP {
            let mut u = UdpPacket::new_unchecked(l4);
            u.set_src_port(relay_port);
            u.fill_checksum_v4(g, g);
        } else {
            let mut t = TcpPacket::new_unchecked(l4);
            t.set_src_port(relay_port);
            t.fill_checksum_v4(g, g);
        }
        Ok(ip_len)
    }

    /// NAT44's answer to an IPv6 query back to IPv6.
    fn in_4to6(
        &mut self,
        buf: &mut [u8],
        (start, len): (usize, usize),
        max_len: usize,
        now: u64,
    ) -> Result<usize, DropCause> {
        let packet = buf.get(start..start + len).ok_or(DropCause::Malformed)?;
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| DropCause::Malformed)?;
        if ip.is_fragment() {
            return Err(DropCause::DnsRelay);
        }
        let protocol = ip.protocol();
        let hl = ip.header_len();
        let l4_len = usize::from(ip.total_len()) - hl;
        let l4 = ip.payload();
        let (_, flags) = transport(protocol, l4)?;
        let dst_port = UdpPacket::new_unchecked(l4).dst_port();
        let index = usize::from(dst_port.wrapping_sub(RELAY_PORT_BASE));
        let slot = self.slots.get_mut(index).ok_or(DropCause::DnsRelay)?;
        let IpAddr::V6(guest) = slot.guest else {
            return Err(DropCause::DnsRelay);
        };
        if !slot.live(now) || slot.protocol != protocol {
            return Err(DropCause::DnsRelay);
        }
        let new_len = ipv6::HEADER_LEN + l4_len;
        let payload_len = u16::try_from(l4_len).map_err(|_| DropCause::DnsRelay)?;
        if new_len > max_len || start + new_len > buf.len() {
            return Err(DropCause::DnsRelay);
        }
        let guest_port = slot.port;
        slot.touch(now, flags);
        buf.copy_within(start + hl..start + hl + l4_len, start + ipv6::HEADER_LEN);
        let packet = &mut buf[start..start + new_len];
        let mut v6 = Ipv6Packet::new_unchecked(&mut packet[..]);
        v6.set_version(6);
        v6.set_traffic_class(0);
        v6.set_flow_label(0);
        v6.set_payload_len(payload_len);
        v6.set_next_header(protocol);
        v6.set_hop_limit(HOP_LIMIT);
        v6.set_src_addr(self.gateway6);
        v6.set_dst_addr(guest);
        let l4 = &mut packet[ipv6::HEADER_LEN..];
        if protocol == ip_proto::UDP {
            let mut u = UdpPacket::new_unchecked(l4);
            u.set_src_port(DNS_PORT);
            u.set_dst_port(guest_port);
            u.fill_checksum_v6(self.gateway6, guest);
        } else {
            let mut t = TcpPacket::new_unchecked(l4);
            t.set_src_port(DNS_PORT);
            t.set_dst_port(guest_port);
            t.fill_checksum_v6(self.gateway6, guest);
        }
        Ok(new_len)
    }

    /// An IPv4 query to IPv6 from the gateway's IPv6 address, into the room after it.
    fn out_4to6(&mut self, frame: &mut [u8], len: usize, now: u64) -> Result<usize, DropCause> {
        let packet = frame
            .get(ETH_HLEN..ETH_HLEN + len)
            .ok_or(DropCause::Malformed)?;
        let ip = Ipv4Packet::new_checked(packet).map_err(|_| DropCause::Malformed)?;
        if ip.is_fragment() {
            return Err(DropCause::DnsRelay);
        }
        let protocol = ip.protocol();
        let hl = ip.header_len();
        let l4_len = usize::from(ip.total_len()) - hl;
        let (guest, ttl) = (ip.src_addr(), ip.ttl());
        let (port, flags) = transport(protocol, ip.payload())?;
        let new_len = ipv6::HEADER_LEN + l4_len;
        let payload_len = u16::try_from(l4_len).map_err(|_| DropCause::DnsRelay)?;
        if ETH_HLEN + new_len > frame.len() {
            return Err(DropCause::DnsRelay);
        }
        let index = self.slot_for(IpAddr::V4(guest), port, protocol, now)?;
        self.slots[index].touch(now, flags);
        let from = ETH_HLEN + hl;
        frame.copy_within(from..from + l4_len, ETH_HLEN + ipv6::HEADER_LEN);
        frame[ETH_HLEN - 2..ETH_HLEN].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        let packet = &mut frame[ETH_HLEN..ETH_HLEN + new_len];
        let g = self.gateway6;
        write_ipv6_header(packet, payload_len, protocol, ttl, (g, g));
        set_ports_and_checksum(
            &mut packet[ipv6::HEADER_LEN..],
            protocol,
            (Some(relay_port(index)), None),
            (IpAddr::V6(g), IpAddr::V6(g)),
        );
        Ok(new_len)
    }

    /// NAT66's answer to an IPv4 query back to IPv4.
    fn in_6to4(
        &mut self,
        buf: &mut [u8],
        (start, len): (usize, usize),
        max_len: usize,
        now: u64,
    ) -> Result<usize, DropCause> {
        let packet = buf.get(start..start + len).ok_or(DropCause::Malformed)?;
        let ip = Ipv6Packet::new_checked(packet).map_err(|_| DropCause::Malformed)?;
        let protocol = ip.next_header();
        if protocol != ip_proto::UDP && protocol != ip_proto::TCP {
            return Err(DropCause::DnsRelay);
        }
        let l4_len = usize::from(ip.payload_len());
        let l4 = packet
            .get(ipv6::HEADER_LEN..ipv6::HEADER_LEN + l4_len)
            .ok_or(DropCause::Malformed)?;
        let (_, flags) = transport(protocol, l4)?;
        let dst_port = UdpPacket::new_unchecked(l4).dst_port();
        let index = usize::from(dst_port.wrapping_sub(RELAY_PORT_BASE));
        let slot = self.slots.get_mut(index).ok_or(DropCause::DnsRelay)?;
        let IpAddr::V4(guest) = slot.guest else {
            return Err(DropCause::DnsRelay);
        };
        if !slot.live(now) || slot.protocol != protocol {
            return Err(DropCause::DnsRelay);
        }
        let new_len = IPV4_HLEN + l4_len;
        let total = u16::try_from(new_len).map_err(|_| DropCause::DnsRelay)?;
        if new_len > max_len {
            return Err(DropCause::DnsRelay);
        }
        let guest_port = slot.port;
        slot.touch(now, flags);
        let from = start + ipv6::HEADER_LEN;
        buf.copy_within(from..from + l4_len, start + IPV4_HLEN);
        let packet = &mut buf[start..start + new_len];
        let g = self.gateway4;
        write_ipv4_header(packet, total, protocol, g, guest);
        set_ports_and_checksum(
            &mut packet[IPV4_HLEN..],
            protocol,
            (Some(DNS_PORT), Some(guest_port)),
            (IpAddr::V4(g), IpAddr::V4(guest)),
        );
        Ok(new_len)
    }

    /// The live slot of (`guest`, `port`, `protocol`), or a free one (round robin).
    fn slot_for(
        &mut self,
        guest: IpAddr,
        port: u16,
        protocol: u8,
        now: u64,
    ) -> Result<usize, DropCause> {
        let same =
            |s: &Slot| s.live(now) && s.guest == guest && s.port == port && s.protocol == protocol;
        if let Some(i) = self.slots.iter().position(same) {
            return Ok(i);
        }
        let n = self.slots.len();
        let free = (0..n)
            .map(|k| (self.next + k) % n)
            .find(|&i| !self.slots[i].live(now))
            .ok_or(DropCause::DnsRelay)?;
        self.slots[free] = Slot {
            guest,
            port,
            protocol,
            state: OPEN,
            last_use: now,
        };
        self.next = (free + 1) % n;
        Ok(free)
    }
}

/// The source port of the TCP or UDP header at the start of `l4`, and the TCP flags (0 for
/// UDP), checking the header fits and a UDP length matches `l4`.
fn transport(protocol: u8, l4: &[u8]) -> Result<(u16, u8), DropCause> {
    if protocol == ip_proto::UDP {
        let u = UdpPacket::new_checked(l4).map_err(|_| DropCause::Malformed)?;
        if usize::from(u.len()) != l4.len() {
            return Err(DropCause::DnsRelay);
        }
        Ok((u.src_port(), 0))
    } else if protocol == ip_proto::TCP {
        let t = TcpPacket::new_checked(l4).map_err(|_| DropCause::Malformed)?;
        Ok((t.src_port(), t.flags()))
    } else {
        Err(DropCause::DnsRelay)
    }
}

/// Writes a 40-byte IPv6 header into `packet[..40]`.
fn write_ipv6_header(
    packet: &mut [u8],
    payload_len: u16,
    next_header: u8,
    hop_limit: u8,
    (src, dst): (Ipv6Addr, Ipv6Addr),
) {
    let mut v6 = Ipv6Packet::new_unchecked(packet);
    v6.set_version(6);
    v6.set_traffic_class(0);
    v6.set_flow_label(0);
    v6.set_payload_len(payload_len);
    v6.set_next_header(next_header);
    v6.set_hop_limit(hop_limit);
    v6.set_src_addr(src);
    v6.set_dst_addr(dst);
}

/// Sets the source and destination ports (where given) of the TCP or UDP header at the start
/// of `l4` and recomputes its checksum over `src` and `dst` (one family).
fn set_ports_and_checksum(
    l4: &mut [u8],
    protocol: u8,
    (sport, dport): (Option<u16>, Option<u16>),
    (src, dst): (IpAddr, IpAddr),
) {
    if protocol == ip_proto::UDP {
        let mut u = UdpPacket::new_unchecked(l4);
        if let Some(p) = sport {
            u.set_src_port(p);
        }
        if let Some(p) = dport {
            u.set_dst_port(p);
        }
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => u.fill_checksum_v4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => u.fill_checksum_v6(s, d),
            _ => {}
        }
    } else {
        let mut t = TcpPacket::new_unchecked(l4);
        if let Some(p) = sport {
            t.set_src_port(p);
        }
        if let Some(p) = dport {
            t.set_dst_port(p);
        }
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => t.fill_checksum_v4(s, d),
            (IpAddr::V6(s), IpAddr::V6(d)) => t.fill_checksum_v6(s, d),
            _ => {}
        }
    }
}

/// The relay port of slot `index`.
fn relay_port(index: usize) -> u16 {
    // `index` < DNS_RELAY_SLOTS, so the sum stays under 65536.
    RELAY_PORT_BASE.wrapping_add(index as u16)
}

/// Slots of the relay's table: queries (UDP source ports, TCP connections) relayed at once.
pub const DNS_RELAY_SLOTS: usize = 1024;
/// A UDP slot is free again after this long without a packet.
pub const DNS_RELAY_UDP_IDLE_MS: u64 = 30_000;
/// A TCP slot is free again after this long without a segment.
pub const DNS_RELAY_TCP_IDLE_MS: u64 = 240_000;
/// A TCP slot is free again this long after a FIN (at once after a RST).
pub const DNS_RELAY_TCP_CLOSING_MS: u64 = 10_000;
/// The first relay port (slot 0); slot `i` is `RELAY_PORT_BASE + i`.
const RELAY_PORT_BASE: u16 = 49_152;
const DNS_PORT: u16 = 53;
const FREE: u8 = 0;
const OPEN: u8 = 1;
const CLOSING: u8 = 2;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{GATEWAY, GATEWAY_MAC, GUEST_MAC, ipv6_frame, udp_packet, udp6_frame};

    const GW6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);
    const GUEST: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);

    fn relay() -> DnsRelay {
        DnsRelay::new(GATEWAY, GW6)
    }

    fn query(port: u16) -> Vec<u8> {
        udp6_frame(
            (GUEST_MAC, GATEWAY_MAC),
            (GUEST, port),
            (GW6, 53),
            b"query AAAA",
        )
    }

    /// A TCP segment from the guest's `port` to `[fd64::1]:53` with `flags` and `payload`.
    fn tcp6(port: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![0u8; 20 + payload.len()];
        let mut seg = TcpPacket::new_unchecked(&mut t[..]);
        seg.set_src_port(port);
        seg.set_dst_port(53);
        seg.set_seq_number(7);
        seg.set_header_len(20);
        seg.set_flags(flags);
        seg.set_window_len(512);
        seg.payload_mut().copy_from_slice(payload);
        seg.fill_checksum_v6(GUEST, GW6);
        ipv6_frame(
            (GUEST_MAC, GATEWAY_MAC),
            (GUEST, GW6),
            ip_proto::TCP,
            64,
            &t,
        )
    }

    /// Translates `frame` out; returns the IPv4 packet.
    fn out(r: &mut DnsRelay, mut frame: Vec<u8>, now: u64) -> Result<Vec<u8>, DropCause> {
        let len = frame.len() - ETH_HLEN;
        let n = r.outbound(&mut frame, len, now)?;
        assert_eq!(n, len - 20);
        assert_eq!(&frame[12..14], &ETHERTYPE_IPV4.to_be_bytes());
        Ok(frame[ETH_HLEN..ETH_HLEN + n].to_vec())
    }

    /// An answer to `v4` (a translated query) as NAT44 would hand it over: the addresses and
    /// ports swapped, `payload` instead of the query's, a valid checksum. Returns a buffer with
    /// 14 bytes of room in front and 64 after, and the packet's length.
    fn answer(v4: &[u8], payload: &[u8]) -> (Vec<u8>, usize) {
        let ip = Ipv4Packet::new_checked(v4).unwrap();
        let p = if ip.protocol() == ip_proto::UDP {
            let u = UdpPacket::new_checked(ip.payload()).unwrap();
            udp_packet(GATEWAY, u.dst_port(), GATEWAY, u.src_port(), payload)
        } else {
            let t = TcpPacket::new_checked(ip.payload()).unwrap();
            let mut seg = vec![0u8; 20 + payload.len()];
            let mut a = TcpPacket::new_unchecked(&mut seg[..]);
            a.set_src_port(t.dst_port());
            a.set_dst_port(t.src_port());
            a.set_header_len(20);
            a.set_flags(tcp::ACK | tcp::PSH);
            a.payload_mut().copy_from_slice(payload);
            a.fill_checksum_v4(GATEWAY, GATEWAY);
            let mut p = vec![0u8; 20];
            write_ipv4_header(
                &mut p,
                (40 + payload.len()) as u16,
                ip_proto::TCP,
                GATEWAY,
                GATEWAY,
            );
            p.extend_from_slice(&seg);
            p
        };
        let len = p.len();
        let mut buf = vec![0u8; ETH_HLEN + len + 64];
        buf[ETH_HLEN..ETH_HLEN + len].copy_from_slice(&p);
        (buf, len)
    }

    #[test]
    fn a_udp_query_and_its_answer_cross_families_with_checksums_equal_to_a_recompute() {
        let mut r = relay();
        let v4 = out(&mut r, query(40000), 1).unwrap();
        let ip = Ipv4Packet::new_checked(&v4[..]).unwrap();
        assert!(ip.verify_checksum());
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, GATEWAY));
        assert_eq!(ip.protocol(), ip_proto::UDP);
        let u = UdpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (RELAY_PORT_BASE, 53));
        assert_eq!(u.payload(), b"query AAAA", "the payload is untouched");
        assert!(u.verify_checksum_v4(GATEWAY, GATEWAY));
        assert_eq!(r.live(1), 1);

        let (mut buf, len) = answer(&v4, b"the answer, AAAA 2001:db8::7:7");
        assert!(SharedRelay::new(GATEWAY, GW6).is_for_relay(&buf[ETH_HLEN..ETH_HLEN + len]));
        let n = r.inbound(&mut buf, (ETH_HLEN, len), 1500, 2).unwrap();
        assert_eq!(n, len + 20);
        let v6 = Ipv6Packet::new_checked(&buf[ETH_HLEN..ETH_HLEN + n]).unwrap();
        assert_eq!((v6.src_addr(), v6.dst_addr()), (GW6, GUEST));
        assert_eq!(v6.next_header(), ip_proto::UDP);
        let u = UdpPacket::new_checked(v6.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (53, 40000));
        assert_eq!(u.payload(), b"the answer, AAAA 2001:db8::7:7");
        assert!(u.verify_checksum_v6(GW6, GUEST));
        // The same guest port keeps its slot; another gets the next one.
        let again = out(&mut r, query(40000), 3).unwrap();
        assert_eq!(
            UdpPacket::new_unchecked(&again[20..]).src_port(),
            RELAY_PORT_BASE
        );
        let other = out(&mut r, query(40001), 3).unwrap();
        assert_eq!(
            UdpPacket::new_unchecked(&other[20..]).src_port(),
            RELAY_PORT_BASE + 1
        );
    }

    #[test]
    fn a_partial_checksum_is_complete_after_the_translation() {
        let mut r = relay();
        let mut q = query(40000);
        // What a guest's partial checksum leaves there: the pseudo-header sum only.
        let at = ETH_HLEN + ipv6::HEADER_LEN + 6;
        q[at..at + 2].copy_from_slice(&[0x12, 0x34]);
        let v4 = out(&mut r, q, 1).unwrap();
        assert!(UdpPacket::new_unchecked(&v4[20..]).verify_checksum_v4(GATEWAY, GATEWAY));
        let (mut buf, len) = answer(&v4, b"a");
        buf[ETH_HLEN + 20 + 6..ETH_HLEN + 20 + 8].copy_from_slice(&[0xab, 0xcd]);
        let n = r.inbound(&mut buf, (ETH_HLEN, len), 1500, 2).unwrap();
        let v6 = &buf[ETH_HLEN..ETH_HLEN + n];
        assert!(UdpPacket::new_unchecked(&v6[40..]).verify_checksum_v6(GW6, GUEST));
    }

    #[test]
    fn tcp_crosses_too_and_its_slot_closes_on_fin_and_rst() {
        let mut r = relay();
        let syn = out(&mut r, tcp6(41000, tcp::SYN, b""), 0).unwrap();
        let t = TcpPacket::new_checked(&syn[20..]).unwrap();
        assert_eq!(
            (t.src_port(), t.dst_port(), t.seq_number()),
            (RELAY_PORT_BASE, 53, 7)
        );
        assert!(t.verify_checksum_v4(GATEWAY, GATEWAY));
        let (mut buf, len) = answer(&syn, b"\x00\x05hello");
        let n = r.inbound(&mut buf, (ETH_HLEN, len), 1500, 1).unwrap();
        let v6 = Ipv6Packet::new_checked(&buf[ETH_HLEN..ETH_HLEN + n]).unwrap();
        let t = TcpPacket::new_checked(v6.payload()).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (53, 41000));
        assert_eq!(t.payload(), b"\x00\x05hello");
        assert!(t.verify_checksum_v6(GW6, GUEST));
        // Idle for less than the TCP timeout: still there.
        assert_eq!(r.live(DNS_RELAY_TCP_IDLE_MS - 1), 1);
        assert_eq!(r.live(DNS_RELAY_TCP_IDLE_MS + 1), 0);
        // A FIN: closing, gone after DNS_RELAY_TCP_CLOSING_MS.
        out(&mut r, tcp6(41000, tcp::FIN | tcp::ACK, b""), 10).unwrap();
        assert_eq!(r.live(10 + DNS_RELAY_TCP_CLOSING_MS - 1), 1);
        assert_eq!(r.live(10 + DNS_RELAY_TCP_CLOSING_MS), 0);
        // A RST frees the slot at once; an answer after it is dropped.
        let t = 20 + DNS_RELAY_TCP_CLOSING_MS;
        let syn = out(&mut r, tcp6(41001, tcp::SYN, b""), t).unwrap();
        assert_eq!(r.live(t), 1);
        out(&mut r, tcp6(41001, tcp::RST, b""), t + 1).unwrap();
        assert_eq!(r.live(t + 1), 0);
        let (mut buf, len) = answer(&syn, b"late");
        assert_eq!(
            r.inbound(&mut buf, (ETH_HLEN, len), 1500, t + 2),
            Err(DropCause::DnsRelay)
        );
    }

    #[test]
    fn udp_slots_expire_when_idle_and_late_answers_are_dropped() {
        let mut r = relay();
        let v4 = out(&mut r, query(40000), 0).unwrap();
        let (buf, len) = answer(&v4, b"a");
        let at = |now: u64| r_inbound(&mut relay_clone(&r), &buf, len, now);
        assert!(at(DNS_RELAY_UDP_IDLE_MS - 1).is_ok());
        assert_eq!(at(DNS_RELAY_UDP_IDLE_MS), Err(DropCause::DnsRelay));
        assert_eq!(r.live(DNS_RELAY_UDP_IDLE_MS), 0);
    }

    fn relay_clone(r: &DnsRelay) -> DnsRelay {
        DnsRelay {
            gateway4: r.gateway4,
            gateway6: r.gateway6,
            slots: r.slots.clone(),
            next: r.next,
        }
    }

    fn r_inbound(r: &mut DnsRelay, buf: &[u8], len: usize, now: u64) -> Result<usize, DropCause> {
        let mut b = buf.to_vec();
        r.inbound(&mut b, (ETH_HLEN, len), 1500, now)
    }

    #[test]
    fn a_full_table_is_a_counted_drop_never_growth() {
        let mut r = relay();
        for i in 0..DNS_RELAY_SLOTS {
            out(&mut r, query(10_000 + i as u16), 0).unwrap();
        }
        assert_eq!(r.slots.len(), DNS_RELAY_SLOTS);
        assert_eq!(out(&mut r, query(9_999), 1), Err(DropCause::DnsRelay));
        // A query of a port already relayed still passes.
        assert!(out(&mut r, query(10_000), 1).is_ok());
        // Once idle, the slots are reused.
        assert!(out(&mut r, query(9_999), DNS_RELAY_UDP_IDLE_MS + 1).is_ok());
        assert_eq!(r.slots.len(), DNS_RELAY_SLOTS);
    }

    #[test]
    fn what_the_relay_does_not_carry_is_a_counted_drop() {
        let mut r = relay();
        let v4 = out(&mut r, query(40000), 0).unwrap();
        // Too long for the guest's MTU, or the buffer, once 20 bytes longer.
        let (mut buf, len) = answer(&v4, &[0u8; 100]);
        assert_eq!(
            r.inbound(&mut buf, (ETH_HLEN, len), len + 19, 1),
            Err(DropCause::DnsRelay)
        );
        let mut tight = buf[..ETH_HLEN + len + 19].to_vec();
        assert_eq!(
            r.inbound(&mut tight, (ETH_HLEN, len), 1500, 1),
            Err(DropCause::DnsRelay)
        );
        // A fragment.
        let mut frag = buf.clone();
        Ipv4Packet::new_unchecked(&mut frag[ETH_HLEN..]).set_more_frags(true);
        assert_eq!(
            r.inbound(&mut frag, (ETH_HLEN, len), 1500, 1),
            Err(DropCause::DnsRelay)
        );
        // A port naming no slot, and a TCP segment to a UDP slot.
        let mut unknown = buf.clone();
        UdpPacket::new_unchecked(&mut unknown[ETH_HLEN + 20..]).set_dst_port(RELAY_PORT_BASE + 5);
        assert_eq!(
            r.inbound(&mut unknown, (ETH_HLEN, len), 1500, 1),
            Err(DropCause::DnsRelay)
        );
        let mut low = buf.clone();
        UdpPacket::new_unchecked(&mut low[ETH_HLEN + 20..]).set_dst_port(53);
        assert_eq!(
            r.inbound(&mut low, (ETH_HLEN, len), 1500, 1),
            Err(DropCause::DnsRelay)
        );
        let tcp_syn = out(&mut r, tcp6(41000, tcp::SYN, b""), 0).unwrap();
        let (mut seg, slen) = answer(&tcp_syn, b"x");
        TcpPacket::new_unchecked(&mut seg[ETH_HLEN + 20..]).set_dst_port(RELAY_PORT_BASE);
        assert_eq!(
            r.inbound(&mut seg, (ETH_HLEN, slen), 1500, 1),
            Err(DropCause::DnsRelay)
        );
        // A query with an extension header (hop-by-hop), or a UDP length that disagrees.
        let mut ext = query(40000);
        Ipv6Packet::new_unchecked(&mut ext[ETH_HLEN..]).set_next_header(0);
        assert_eq!(out(&mut r, ext, 1), Err(DropCause::DnsRelay));
        let mut short = query(40000);
        UdpPacket::new_unchecked(&mut short[ETH_HLEN + 40..]).set_len(9);
        assert_eq!(out(&mut r, short, 1), Err(DropCause::DnsRelay));
        // Truncated headers, at any length: counted, never a panic.
        let q = query(40000);
        for cut in 0..q.len() {
            let mut f = q[..cut].to_vec();
            let len = cut.saturating_sub(ETH_HLEN);
            assert!(r.outbound(&mut f, len, 1).is_err() || cut == q.len());
        }
        for cut in 0..len {
            let mut b = buf.clone();
            let _ = r.inbound(&mut b, (ETH_HLEN, cut), 1500, 1);
        }
    }

    const GUEST4: Ipv4Addr = crate::testing::GUEST_IP;

    #[test]
    fn an_ipv4_query_reaches_an_ipv6_upstream_and_its_answer_comes_back_as_ipv4() {
        let mut r = relay();
        // A UDP query in a buffer with room after the frame.
        let q = crate::testing::udp_frame(GUEST_MAC, GUEST4, 33333, GATEWAY, 53, b"query A");
        let len = q.len() - ETH_HLEN;
        let mut frame = q.clone();
        frame.resize(q.len() + 64, 0);
        let n = r.outbound(&mut frame, len, 1).unwrap();
        assert_eq!(n, len + 20);
        assert_eq!(&frame[12..14], &crate::wire::ETHERTYPE_IPV6.to_be_bytes());
        let v6 = Ipv6Packet::new_checked(&frame[ETH_HLEN..ETH_HLEN + n]).unwrap();
        assert_eq!((v6.src_addr(), v6.dst_addr()), (GW6, GW6));
        let u = UdpPacket::new_checked(v6.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (RELAY_PORT_BASE, 53));
        assert_eq!(u.payload(), b"query A");
        assert!(u.verify_checksum_v6(GW6, GW6));
        // No room to grow: a counted drop, and no slot taken.
        let mut tight = q.clone();
        tight.resize(q.len() + 19, 0);
        assert_eq!(r.outbound(&mut tight, len, 1), Err(DropCause::DnsRelay));
        assert_eq!(r.live(1), 1);
        // The answer NAT66 hands over: to [fd64::1]:relay port from [fd64::1]:53.
        let a = udp6_frame(
            (GATEWAY_MAC, GUEST_MAC),
            (GW6, 53),
            (GW6, RELAY_PORT_BASE),
            b"A 198.18.7.7",
        );
        let alen = a.len() - ETH_HLEN;
        let mut buf = a.clone();
        assert!(r.is_for_relay(&buf[ETH_HLEN..]));
        let m = r.inbound(&mut buf, (ETH_HLEN, alen), 1500, 2).unwrap();
        assert_eq!(m, alen - 20);
        let v4 = Ipv4Packet::new_checked(&buf[ETH_HLEN..ETH_HLEN + m]).unwrap();
        assert!(v4.verify_checksum());
        assert_eq!((v4.src_addr(), v4.dst_addr()), (GATEWAY, GUEST4));
        let u = UdpPacket::new_checked(v4.payload()).unwrap();
        assert_eq!((u.src_port(), u.dst_port()), (53, 33333));
        assert_eq!(u.payload(), b"A 198.18.7.7");
        assert!(u.verify_checksum_v4(GATEWAY, GUEST4));
        // An IPv4 answer to this IPv4 guest's slot is not one (wrong family), nor is an IPv6
        // one with an extension header.
        let wrong = udp_packet(GATEWAY, 53, GATEWAY, RELAY_PORT_BASE, b"x");
        let mut b = vec![0u8; ETH_HLEN];
        b.extend_from_slice(&wrong);
        b.resize(b.len() + 64, 0);
        assert_eq!(
            r.inbound(&mut b, (ETH_HLEN, wrong.len()), 1500, 2),
            Err(DropCause::DnsRelay)
        );
        let mut ext = a.clone();
        Ipv6Packet::new_unchecked(&mut ext[ETH_HLEN..]).set_next_header(0);
        assert_eq!(
            r.inbound(&mut ext, (ETH_HLEN, alen), 1500, 2),
            Err(DropCause::DnsRelay)
        );
        // A fragment of a query is not relayed.
        let mut frag = q.clone();
        frag.resize(q.len() + 64, 0);
        Ipv4Packet::new_unchecked(&mut frag[ETH_HLEN..]).set_more_frags(true);
        assert_eq!(r.outbound(&mut frag, len, 1), Err(DropCause::DnsRelay));
    }
}
