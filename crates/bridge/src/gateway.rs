//! The gateway's L2/L3 services: ARP, DHCP, ICMP echo, the DNS redirect, MAC learning and
//! anti-spoofing. Classifies every frame the guest sends.

use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use core::time::Duration;

use dhcproto::{Decodable, Encodable};
use nat::Instant;

use crate::Error;
use crate::dhcp::{DhcpConfig, DhcpServer, prefix_mask};
use crate::stats::DropCause;
use crate::wire::{
    ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, MacAddr, build_udp_frame, checksum, write_eth,
};

/// Configuration of the gateway services.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// The gateway's address.
    pub gateway: Ipv4Addr,
    /// The gateway's MAC address.
    pub gateway_mac: MacAddr,
    /// Prefix length of the guest subnet.
    pub prefix_len: u8,
    /// The guest's MAC until another is learned (from ARP or DHCP).
    pub guest_mac: MacAddr,
    /// DHCP pool.
    pub dhcp_pool: RangeInclusive<Ipv4Addr>,
    /// DHCP lease time.
    pub lease: Duration,
    /// The guest MTU.
    pub mtu: u16,
    /// Whether DNS to the gateway is forwarded (advertised in DHCP, passed to the NAT's
    /// redirect).
    pub dns: bool,
    /// The guest's static address, accepted as a source besides its DHCP lease.
    pub static_guest_ip: Option<Ipv4Addr>,
}

/// What to do with a frame from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxAction {
    /// Pass the IPv4 packet `frame[14..14 + len]` to the NAT.
    Nat {
        /// The IP packet's length (Ethernet padding removed).
        len: usize,
    },
    /// Send the `len`-byte frame written to the reply buffer back to the guest.
    Reply {
        /// Length of the reply frame.
        len: usize,
    },
    /// Handled; nothing to send (DHCP RELEASE/DECLINE).
    Consumed,
    /// Drop and count.
    Drop(DropCause),
}

/// The gateway's services for one guest.
#[derive(Debug)]
pub struct Gateway {
    cfg: GatewayConfig,
    guest_mac: MacAddr,
    net: u32,
    mask: u32,
    dhcp: DhcpServer,
}

impl Gateway {
    /// Validates `cfg`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the prefix is not 8..=30, the gateway is not a host address of its
    /// subnet, the pool is empty or leaves the subnet, the MTU is outside 68..=65520, or a
    /// MAC is multicast.
    pub fn new(cfg: GatewayConfig) -> Result<Self, Error> {
        if !(8..=30).contains(&cfg.prefix_len) {
            return Err(Error::Config(format!(
                "prefix_len {} is not in 8..=30",
                cfg.prefix_len
            )));
        }
        let mask = prefix_mask(cfg.prefix_len);
        let net = u32::from(cfg.gateway) & mask;
        let in_hosts = |ip: Ipv4Addr| {
            let v = u32::from(ip);
            v & mask == net && v != net && v != net | !mask
        };
        if !in_hosts(cfg.gateway) {
            return Err(Error::Config(format!(
                "gateway {} is not a host address",
                cfg.gateway
            )));
        }
        let (lo, hi) = (*cfg.dhcp_pool.start(), *cfg.dhcp_pool.end());
        if lo > hi || !in_hosts(lo) || !in_hosts(hi) {
            return Err(Error::Config(format!(
                "dhcp pool {lo}..={hi} is empty or not in the subnet"
            )));
        }
        if let Some(ip) = cfg
            .static_guest_ip
            .filter(|&ip| !in_hosts(ip) || ip == cfg.gateway)
        {
            return Err(Error::Config(format!(
                "static guest address {ip} is not a host address"
            )));
        }
        if !(68..=65520).contains(&cfg.mtu) {
            return Err(Error::Config(format!(
                "mtu {} is not in 68..=65520",
                cfg.mtu
            )));
        }
        if cfg.gateway_mac.is_multicast() || cfg.guest_mac.is_multicast() {
            return Err(Error::Config("a mac address is multicast".to_owned()));
        }
        let dhcp = DhcpServer::new(DhcpConfig {
            server: cfg.gateway,
            prefix_len: cfg.prefix_len,
            pool: cfg.dhcp_pool.clone(),
            lease: cfg.lease,
            mtu: cfg.mtu,
            dns: cfg.dns.then_some(cfg.gateway),
            reserved: cfg.static_guest_ip,
        });
        Ok(Gateway {
            guest_mac: cfg.guest_mac,
            net,
            mask,
            dhcp,
            cfg,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The guest's MAC (learned from ARP and DHCP; initially the configured one).
    pub fn guest_mac(&self) -> MacAddr {
        self.guest_mac
    }

    /// The guest's DHCP lease, if bound and unexpired.
    pub fn lease(&self, now: Instant) -> Option<Ipv4Addr> {
        self.dhcp.lease_of(self.guest_mac, now)
    }

    /// The DHCP server.
    pub fn dhcp(&self) -> &DhcpServer {
        &self.dhcp
    }

    /// Whether `ip` may be the source of the guest's packets: its lease or static address.
    pub fn is_guest_ip(&self, ip: Ipv4Addr, now: Instant) -> bool {
        Some(ip) == self.cfg.static_guest_ip || Some(ip) == self.lease(now)
    }

    /// The Ethernet header of frames towards the guest (gateway → guest, IPv4).
    pub fn eth_header_to_guest(&self) -> [u8; ETH_HLEN] {
        let mut h = [0u8; ETH_HLEN];
        let _ = write_eth(&mut h, self.guest_mac, self.cfg.gateway_mac, ETHERTYPE_IPV4);
        h
    }

    /// Classifies one frame from the guest. Replies (ARP, DHCP, ICMP echo) are written to
    /// `reply` (at least MTU + 14 bytes, and 342 for DHCP). Never panics on any input.
    pub fn handle(&mut self, frame: &[u8], reply: &mut [u8], now: Instant) -> TxAction {
        self.handle_with(frame, reply, now, false)
    }

    /// As [`Gateway::handle`]; `gso` says the frame is a TCP super-frame (HOST_TSO4), which
    /// may exceed the MTU and goes to the NAT or nowhere.
    pub fn handle_with(
        &mut self,
        frame: &[u8],
        reply: &mut [u8],
        now: Instant,
        gso: bool,
    ) -> TxAction {
        let Some(eth) = frame.get(..ETH_HLEN) else {
            return TxAction::Drop(DropCause::Runt);
        };
        let src_mac = mac_at(eth, 6);
        if src_mac.is_multicast() {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        match u16::from_be_bytes([eth[12], eth[13]]) {
            ETHERTYPE_IPV4 if gso => match self.ipv4(frame, src_mac, reply, now, true) {
                a @ (TxAction::Nat { .. } | TxAction::Drop(_)) => a,
                // A super-frame the gateway would answer itself: not something a TCP stack
                // segments.
                _ => TxAction::Drop(DropCause::Offload),
            },
            _ if gso => TxAction::Drop(DropCause::Offload),
            ETHERTYPE_IPV4 => self.ipv4(frame, src_mac, reply, now, false),
            ETHERTYPE_ARP => self.arp(frame, src_mac, reply),
            ETHERTYPE_IPV6 => TxAction::Drop(DropCause::Ipv6),
            _ => TxAction::Drop(DropCause::EtherType),
        }
    }

    fn arp(&mut self, frame: &[u8], src_mac: MacAddr, reply: &mut [u8]) -> TxAction {
        let Some(a) = frame.get(ETH_HLEN..ETH_HLEN + ARP_LEN) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        if a[0..6] != [0, 1, 8, 0, 6, 4] {
            return TxAction::Drop(DropCause::Malformed);
        }
        let op = u16::from_be_bytes([a[6], a[7]]);
        let sha = mac_at(a, 8);
        let spa = ip_at(a, 14);
        let tpa = ip_at(a, 24);
        if sha != src_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        if op != 1 || tpa != self.cfg.gateway {
            return TxAction::Drop(DropCause::ArpIgnored);
        }
        self.guest_mac = src_mac;
        let Some(out) = reply.get_mut(..ETH_HLEN + ARP_LEN) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let _ = write_eth(out, sha, self.cfg.gateway_mac, ETHERTYPE_ARP);
        let r = &mut out[ETH_HLEN..];
        r[0..6].copy_from_slice(&[0, 1, 8, 0, 6, 4]);
        r[6..8].copy_from_slice(&2u16.to_be_bytes());
        r[8..14].copy_from_slice(&self.cfg.gateway_mac.0);
        r[14..18].copy_from_slice(&self.cfg.gateway.octets());
        r[18..24].copy_from_slice(&sha.0);
        r[24..28].copy_from_slice(&spa.octets());
        TxAction::Reply {
            len: ETH_HLEN + ARP_LEN,
        }
    }

    fn ipv4(
        &mut self,
        frame: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
        gso: bool,
    ) -> TxAction {
        let ip = frame.get(ETH_HLEN..).unwrap_or(&[]);
        let Some(&vihl) = ip.first() else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let ihl = usize::from(vihl & 0x0f) * 4;
        if vihl >> 4 != 4 || ihl < 20 || ip.len() < ihl {
            return TxAction::Drop(DropCause::Malformed);
        }
        let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
        if total < ihl || total > ip.len() {
            return TxAction::Drop(DropCause::Malformed);
        }
        if total > usize::from(self.cfg.mtu) && !gso {
            return TxAction::Drop(DropCause::TooBig);
        }
        let ip = &ip[..total];
        let proto = ip[9];
        let src = ip_at(ip, 12);
        let dst = ip_at(ip, 16);
        let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
        let l4 = &ip[ihl..];
        let ports = (frag == 0 && l4.len() >= 4).then(|| {
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        });
        if proto == IPPROTO_UDP && ports == Some((68, 67)) {
            return self.dhcp_message(ip, ihl, src_mac, reply, now);
        }
        if src_mac != self.guest_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        if !self.is_guest_ip(src, now) {
            return TxAction::Drop(DropCause::SpoofedIp);
        }
        if dst == self.cfg.gateway {
            if proto == IPPROTO_ICMP && frag == 0 && l4.first() == Some(&8) {
                return self.echo_reply(frame, ETH_HLEN + total, ihl, reply);
            }
            let dns_port = match ports {
                Some((_, dport)) => dport == 53,
                None => frag != 0, // a fragment: the NAT matches it to its first fragment
            };
            if self.cfg.dns && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) && dns_port {
                return TxAction::Nat { len: total };
            }
            return TxAction::Drop(DropCause::GatewayUnsupported);
        }
        let d = u32::from(dst);
        if d & self.mask == self.net
            || dst.is_broadcast()
            || dst.is_multicast()
            || dst.is_loopback()
            || dst.octets()[0] == 0
        {
            return TxAction::Drop(DropCause::NotRoutable);
        }
        TxAction::Nat { len: total }
    }

    fn dhcp_message(
        &mut self,
        ip: &[u8],
        ihl: usize,
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
    ) -> TxAction {
        let udp = &ip[ihl..];
        let Some(ulen) = udp
            .get(4..6)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Some(payload) = udp.get(8..ulen.min(udp.len())) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Ok(msg) = dhcproto::v4::Message::from_bytes(payload) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        if msg.htype() != dhcproto::v4::HType::Eth || msg.hlen() != 6 {
            return TxAction::Drop(DropCause::Dhcp);
        }
        let chaddr = mac_at(msg.chaddr(), 0);
        if chaddr != src_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        self.guest_mac = src_mac;
        let Some(r) = self.dhcp.handle(&msg, chaddr, now) else {
            return TxAction::Consumed;
        };
        let Ok(mut bytes) = r.message.to_vec() else {
            return TxAction::Drop(DropCause::Dhcp);
        };
        if bytes.len() < BOOTP_MIN_LEN {
            bytes.resize(BOOTP_MIN_LEN, 0);
        }
        match build_udp_frame(
            reply,
            r.dst_mac,
            self.cfg.gateway_mac,
            self.cfg.gateway,
            67,
            r.dst_ip,
            68,
            &bytes,
        ) {
            Some(len) => TxAction::Reply { len },
            None => TxAction::Drop(DropCause::TooBig),
        }
    }

    fn echo_reply(&self, frame: &[u8], len: usize, ihl: usize, reply: &mut [u8]) -> TxAction {
        let (Some(src), Some(out)) = (frame.get(..len), reply.get_mut(..len)) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let icmp_start = ETH_HLEN + ihl;
        if len < icmp_start + 8 || checksum(&src[icmp_start..], 0) != 0 {
            return TxAction::Drop(DropCause::Malformed);
        }
        out.copy_from_slice(src);
        let _ = write_eth(out, mac_at(src, 6), self.cfg.gateway_mac, ETHERTYPE_IPV4);
        let (hdr, icmp) = out[ETH_HLEN..].split_at_mut(ihl);
        hdr[12..16].copy_from_slice(&src[ETH_HLEN + 16..ETH_HLEN + 20]);
        hdr[16..20].copy_from_slice(&src[ETH_HLEN + 12..ETH_HLEN + 16]);
        hdr[8] = 64;
        hdr[10..12].copy_from_slice(&[0, 0]);
        let c = checksum(hdr, 0);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        icmp[0] = 0;
        icmp[2..4].copy_from_slice(&[0, 0]);
        let c = checksum(icmp, 0);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        TxAction::Reply { len }
    }
}

fn mac_at(b: &[u8], off: usize) -> MacAddr {
    let mut m = [0u8; 6];
    if let Some(s) = b.get(off..off + 6) {
        m.copy_from_slice(s);
    }
    MacAddr(m)
}

fn ip_at(b: &[u8], off: usize) -> Ipv4Addr {
    match b.get(off..off + 4) {
        Some(s) => Ipv4Addr::new(s[0], s[1], s[2], s[3]),
        None => Ipv4Addr::UNSPECIFIED,
    }
}

/// Length of an Ethernet/IPv4 ARP message.
const ARP_LEN: usize = 28;
/// BOOTP messages are at least 300 bytes; some clients ignore shorter ones.
const BOOTP_MIN_LEN: usize = 300;
