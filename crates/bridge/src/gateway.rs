//! The gateway's L2/L3 services: ARP, DHCP, ICMP echo, the DNS redirect, MAC learning and
//! anti-spoofing. Classifies every frame the guest sends. The IPv6 side lives beside this
//! file: [`ipv6`] (anti-spoofing, learned addresses, echo, dispatch), [`ndp`] (Neighbor
//! Discovery and Router Advertisements), [`dhcpv6`] (stateless DHCPv6).

mod dhcpv6;
mod ipv6;
mod ndp;

use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::RangeInclusive;
use core::time::Duration;

use dhcproto::{Decodable, Encodable};
use nat::Instant;

pub use self::ipv6::{Ipv6Config, MAX_GUEST_IPV6_ADDRS};
pub use self::ndp::{
    PREFIX_PREFERRED_S, PREFIX_VALID_S, RDNSS_LIFETIME_S, ROUTER_LIFETIME_S,
    UNSOLICITED_RA_INTERVAL_MS,
};
use crate::Error;
use crate::dhcp::{DhcpConfig, DhcpServer, prefix_mask};
use crate::policy::{EgressAction, EgressPolicy};
use crate::stats::DropCause;
use crate::wire::{
    ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, IPV4_HLEN, MacAddr, build_tcp_reset_frame, build_udp_frame, write_eth,
    write_ipv4_header,
};
use ::wire::{ArpPacket, EthernetFrame, Icmpv4Packet, Ipv4Packet, UdpPacket, arp, icmpv4};

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
    /// Whether DNS to the gateway's IPv4 address is forwarded (advertised in DHCP, passed
    /// to the NAT's redirect). Without it, UDP queries to the gateway are answered REFUSED
    /// and TCP segments to its port 53 with a RST.
    pub dns: bool,
    /// With `dns`: IPv4 queries to the gateway go to the DNS relay ([`TxAction::DnsRelay`],
    /// translated to IPv6 from the gateway's IPv6 address for NAT66's redirect to an IPv6
    /// upstream; needs `ipv6`) instead of NAT44's redirect.
    pub dns4_relay: bool,
    /// How DNS to the gateway's IPv6 address (`fd64::1`) is served; anything but
    /// [`Dns6::Refused`] is advertised by RDNSS and DHCPv6.
    pub dns6: Dns6,
    /// The guest's static address, accepted as a source besides its DHCP lease.
    pub static_guest_ip: Option<Ipv4Addr>,
    /// The IPv6 side (Neighbor Discovery, Router Advertisements, stateless DHCPv6, echo);
    /// `None`: IPv6 off, every IPv6 frame is [`DropCause::Ipv6NoRoute`]. Also off when `mtu`
    /// is under 1280 (IPv6's minimum link MTU, RFC 8200 5).
    pub ipv6: Option<Ipv6Config>,
}

/// How the gateway serves DNS (UDP and TCP port 53) to its IPv6 address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Dns6 {
    /// No upstream: UDP queries are answered REFUSED, TCP segments with a RST.
    #[default]
    Refused,
    /// To the NAT (NAT66 redirects `[gateway]:53` to an IPv6 upstream).
    Nat,
    /// To the gateway's DNS relay ([`TxAction::DnsRelay`]), which translates the query to
    /// IPv4 from the gateway's IPv4 address for NAT44's redirect to an IPv4 upstream.
    Relay,
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
    /// DNS to the gateway for the DNS relay: the IP packet `frame[14..14 + len]` is
    /// translated to the other IP version and then goes to the NAT (see [`Dns6::Relay`],
    /// [`GatewayConfig::dns4_relay`]).
    DnsRelay {
        /// The IPv6 packet's length (Ethernet padding removed).
        len: usize,
    },
    /// Handled; nothing to send (DHCP RELEASE/DECLINE).
    Consumed,
    /// Drop and count.
    Drop(DropCause),
    /// Drop and count `cause`, and send the `len`-byte frame written to the reply buffer (an
    /// ICMP error) back to the guest.
    DropWithReply {
        /// Why the frame was dropped.
        cause: DropCause,
        /// Length of the reply frame.
        len: usize,
    },
}

/// The gateway's services for one guest.
#[derive(Debug)]
pub struct Gateway {
    cfg: GatewayConfig,
    guest_mac: MacAddr,
    net: u32,
    mask: u32,
    dhcp: DhcpServer,
    egress: EgressPolicy,
    /// An address besides the gateway's that the egress policy never applies to (the NAT's
    /// external address: hairpinning).
    egress_exempt: Option<Ipv4Addr>,
    /// Likewise for IPv6 (NAT66's external address).
    egress_exempt6: Option<core::net::Ipv6Addr>,
    /// ICMP errors the gateway may still send now (token bucket, [`ICMP_ERROR_BURST`]).
    icmp_tokens: u64,
    /// When `icmp_tokens` was last refilled (milliseconds of the caller's clock).
    icmp_refilled: u64,
    /// The IPv6 side, if on.
    v6: Option<ipv6::V6>,
}

impl Gateway {
    /// Validates `cfg`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the prefix is not 8..=30, the gateway is not a host address of its
    /// subnet, the pool is empty or leaves the subnet, the MTU is outside 68..=65520, a
    /// MAC is multicast, or the IPv6 prefix is not a /64, the IPv6 router not link-local or
    /// the IPv6 gateway not in the prefix.
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
        if let Some(v6) = &cfg.ipv6 {
            v6.validate()?;
        }
        let v6 = cfg
            .ipv6
            .filter(|_| usize::from(cfg.mtu) >= crate::wire::IPV6_MIN_MTU)
            .map(ipv6::V6::new);
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
            egress: EgressPolicy::default(),
            egress_exempt: None,
            egress_exempt6: None,
            icmp_tokens: ICMP_ERROR_BURST,
            icmp_refilled: 0,
            v6,
        })
    }

    /// Checks the guest's destinations against `policy` (by default: [`EgressPolicy`]'s
    /// `Default`, link-local denied), except the gateway's own address and `exempt` (the
    /// NAT's external address). A denied destination is [`DropCause::EgressDenied`], answered
    /// with ICMP destination unreachable, code 13 (communication administratively
    /// prohibited) from the gateway, at most [`ICMP_ERROR_BURST`] at once and
    /// [`ICMP_ERRORS_PER_SEC`] per second. IPv6 destinations are checked against the
    /// policy's IPv6 rules ([`EgressPolicy::action6`]) and answered with ICMPv6 destination
    /// unreachable, code 1, under the same limit; see [`Gateway::with_egress_exempt6`].
    #[must_use]
    pub fn with_egress(mut self, policy: EgressPolicy, exempt: Option<Ipv4Addr>) -> Self {
        self.egress = policy;
        self.egress_exempt = exempt;
        self
    }

    /// An IPv6 address the egress policy never applies to (NAT66's external address:
    /// hairpinning).
    #[must_use]
    pub fn with_egress_exempt6(mut self, exempt: Option<core::net::Ipv6Addr>) -> Self {
        self.egress_exempt6 = exempt;
        self
    }

    /// The egress policy in force.
    pub fn egress(&self) -> &EgressPolicy {
        &self.egress
    }

    /// The configuration.
    pub fn config(&self) -> &GatewayConfig {
        &self.cfg
    }

    /// The guest's MAC (learned from ARP and DHCP; initially the configured one).
    pub fn guest_mac(&self) -> MacAddr {
        self.guest_mac
    }

    /// Sets the guest's MAC (the network refused the one its last DHCP or ARP message came
    /// from: another port's).
    pub(crate) fn set_guest_mac(&mut self, mac: MacAddr) {
        self.guest_mac = mac;
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

    /// The Ethernet header of frames towards the guest (gateway → guest, IPv4; the bridge
    /// sets the EtherType of an IPv6 packet after copying it).
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

    /// As [`Gateway::handle`]; `gso` says the frame is a TCP super-frame (HOST_TSO4/6), which
    /// may exceed the MTU and goes to the NAT or nowhere.
    pub fn handle_with(
        &mut self,
        frame: &[u8],
        reply: &mut [u8],
        now: Instant,
        gso: bool,
    ) -> TxAction {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return TxAction::Drop(DropCause::Runt);
        };
        let src_mac = eth.src_addr();
        if src_mac.is_multicast() {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        match eth.ethertype() {
            ETHERTYPE_IPV4 if gso => match self.ipv4(frame, src_mac, reply, now, true) {
                a @ (TxAction::Nat { .. } | TxAction::Drop(_) | TxAction::DropWithReply { .. }) => {
                    a
                }
                // A super-frame the gateway would answer itself: not something a TCP stack
                // segments.
                _ => TxAction::Drop(DropCause::Offload),
            },
            ETHERTYPE_IPV6 if gso => match self.ipv6_frame(frame, src_mac, reply, now, true) {
                a @ (TxAction::Nat { .. } | TxAction::Drop(_) | TxAction::DropWithReply { .. }) => {
                    a
                }
                _ => TxAction::Drop(DropCause::Offload),
            },
            _ if gso => TxAction::Drop(DropCause::Offload),
            ETHERTYPE_IPV4 => self.ipv4(frame, src_mac, reply, now, false),
            ETHERTYPE_ARP => self.arp(frame, src_mac, reply),
            ETHERTYPE_IPV6 => self.ipv6_frame(frame, src_mac, reply, now, false),
            _ => TxAction::Drop(DropCause::EtherType),
        }
    }

    fn arp(&mut self, frame: &[u8], src_mac: MacAddr, reply: &mut [u8]) -> TxAction {
        // Truncated, or not Ethernet/IPv4 ARP.
        let Ok(a) = ArpPacket::new_checked(frame.get(ETH_HLEN..).unwrap_or(&[])) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let sha = a.sender_hardware_addr();
        let spa = a.sender_protocol_addr();
        if sha != src_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        if a.operation() != arp::REQUEST || a.target_protocol_addr() != self.cfg.gateway {
            return TxAction::Drop(DropCause::ArpIgnored);
        }
        self.guest_mac = src_mac;
        let Some(out) = reply.get_mut(..ETH_HLEN + ARP_LEN) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let _ = write_eth(out, sha, self.cfg.gateway_mac, ETHERTYPE_ARP);
        let mut r = ArpPacket::new_unchecked(&mut out[ETH_HLEN..]);
        r.set_ethernet_ipv4();
        r.set_operation(arp::REPLY);
        r.set_sender_hardware_addr(self.cfg.gateway_mac);
        r.set_sender_protocol_addr(self.cfg.gateway);
        r.set_target_hardware_addr(sha);
        r.set_target_protocol_addr(spa);
        TxAction::Reply {
            len: ETH_HLEN + ARP_LEN,
        }
    }

    /// On a network of several guests: answers an ARP request from the guest for another
    /// guest's address (`mac_of` gives that guest's MAC) with that MAC, as a proxy, so that
    /// guests reach each other directly and no request is flooded. Probes (sender address
    /// 0.0.0.0, a DHCP client checking its new address) and requests from an address that is
    /// not the guest's are not answered. Returns the reply's length.
    pub(crate) fn arp_for_neighbor(
        &self,
        frame: &[u8],
        reply: &mut [u8],
        now: Instant,
        mac_of: impl Fn(Ipv4Addr) -> Option<MacAddr>,
    ) -> Option<usize> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let a = ArpPacket::new_checked(eth.payload()).ok()?;
        let (sha, spa, tpa) = (
            a.sender_hardware_addr(),
            a.sender_protocol_addr(),
            a.target_protocol_addr(),
        );
        if a.operation() != arp::REQUEST || sha != eth.src_addr() || !self.is_guest_ip(spa, now) {
            return None;
        }
        let mac = mac_of(tpa)?;
        let out = reply.get_mut(..ETH_HLEN + ARP_LEN)?;
        let _ = write_eth(out, sha, mac, ETHERTYPE_ARP);
        let mut r = ArpPacket::new_unchecked(&mut out[ETH_HLEN..]);
        r.set_ethernet_ipv4();
        r.set_operation(arp::REPLY);
        r.set_sender_hardware_addr(mac);
        r.set_sender_protocol_addr(tpa);
        r.set_target_hardware_addr(sha);
        r.set_target_protocol_addr(spa);
        Some(ETH_HLEN + ARP_LEN)
    }

    fn ipv4(
        &mut self,
        frame: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
        gso: bool,
    ) -> TxAction {
        // Version, header length and total length checked against each other and the frame.
        let Ok(ip) = Ipv4Packet::new_checked(frame.get(ETH_HLEN..).unwrap_or(&[])) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let total = usize::from(ip.total_len());
        if total > usize::from(self.cfg.mtu) && !gso {
            return TxAction::Drop(DropCause::TooBig);
        }
        let (proto, src, dst) = (ip.protocol(), ip.src_addr(), ip.dst_addr());
        let frag = ip.is_fragment();
        let l4 = ip.into_payload();
        // TCP and UDP both start with the two ports.
        let ports = (!frag && l4.len() >= PORTS_LEN).then(|| {
            let p = UdpPacket::new_unchecked(l4);
            (p.src_port(), p.dst_port())
        });
        if proto == IPPROTO_UDP && ports == Some((68, 67)) {
            return self.dhcp_message(l4, src_mac, reply, now);
        }
        if src_mac != self.guest_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        if !self.is_guest_ip(src, now) {
            return TxAction::Drop(DropCause::SpoofedIp);
        }
        if dst == self.cfg.gateway {
            // A short echo request is the echo reply's to refuse (as malformed).
            let echo = !l4.is_empty()
                && Icmpv4Packet::new_unchecked(l4).msg_type() == icmpv4::ECHO_REQUEST;
            if proto == IPPROTO_ICMP && !frag && echo {
                return self.echo_reply(frame, ETH_HLEN + total, reply);
            }
            let dns_port = match ports {
                Some((_, dport)) => dport == 53,
                None => frag, // a fragment: the NAT matches it to its first fragment
            };
            if self.cfg.dns && (proto == IPPROTO_UDP || proto == IPPROTO_TCP) && dns_port {
                return match (self.cfg.dns4_relay, frag) {
                    (false, _) => TxAction::Nat { len: total },
                    (true, false) => TxAction::DnsRelay { len: total },
                    (true, true) => TxAction::Drop(DropCause::DnsRelay),
                };
            }
            // No upstream: answer at once so the guest's resolver fails fast instead of
            // waiting out its timeouts (dnsmasq answers REFUSED without servers too); over
            // TCP the port is closed (RST).
            match (self.cfg.dns, proto, ports) {
                (false, IPPROTO_UDP, Some((sport, 53))) => {
                    let to = SocketAddrV4::new(src, sport);
                    return self.dns_refused(l4, src_mac, to, reply);
                }
                (false, IPPROTO_TCP, Some((sport, 53))) => {
                    let from = SocketAddrV4::new(self.cfg.gateway, 53);
                    let to = SocketAddrV4::new(src, sport);
                    let macs = (src_mac, self.cfg.gateway_mac);
                    return match build_tcp_reset_frame(reply, macs, from, to, l4) {
                        Some(len) => TxAction::Reply { len },
                        None => TxAction::Drop(DropCause::GatewayUnsupported),
                    };
                }
                _ => {}
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
        if self.egress.action(dst) == EgressAction::Deny && Some(dst) != self.egress_exempt {
            return self.deny(frame, src_mac, reply, now);
        }
        TxAction::Nat { len: total }
    }

    /// A packet to a destination the egress policy denies: counted, and answered with ICMP
    /// destination unreachable, communication administratively prohibited.
    fn deny(&mut self, frame: &[u8], src_mac: MacAddr, reply: &mut [u8], now: Instant) -> TxAction {
        self.admin_prohibited(frame, src_mac, reply, now, DropCause::EgressDenied)
    }

    /// Answers a packet the NAT refused a new session for (table or per-host cap, no free
    /// port: RFC 5508 REQ-8) as a denied destination is answered (IPv6: ICMPv6 destination
    /// unreachable, administratively prohibited, see `refused_by_nat6`), so that the guest's program fails at once instead of timing out. `frame` is
    /// the guest's frame as it came (the NAT leaves a refused packet unchanged); `None` when
    /// no answer is due (see [`Gateway::admin_prohibited`]).
    pub(crate) fn refused_by_nat(
        &mut self,
        frame: &[u8],
        reply: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let src_mac = eth.src_addr();
        if eth.ethertype() == ETHERTYPE_IPV6 {
            return self.refused_by_nat6(frame, src_mac, reply, now);
        }
        if eth.ethertype() != ETHERTYPE_IPV4 {
            return None;
        }
        match self.admin_prohibited(frame, src_mac, reply, now, DropCause::NatOutbound) {
            TxAction::DropWithReply { len, .. } => Some(len),
            _ => None,
        }
    }

    /// Drops a packet as `cause` and answers it with ICMP destination unreachable,
    /// communication administratively prohibited (RFC 1812 section 5.2.7.1, RFC 5508 REQ-8),
    /// quoting its IPv4 header and the first 8 bytes after it. No answer to a later fragment
    /// or an ICMP error (RFC 1812 section 4.3.2.7), nor beyond the rate limit. `frame`'s
    /// Ethernet and IPv4 headers were checked by the caller.
    fn admin_prohibited(
        &mut self,
        frame: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
        cause: DropCause,
    ) -> TxAction {
        let denied = TxAction::Drop(cause);
        let ip = Ipv4Packet::new_unchecked(frame.get(ETH_HLEN..).unwrap_or(&[]));
        if ip.frag_offset() != 0 {
            return denied;
        }
        let quote_len = ip.header_len() + ICMP_QUOTED_DATA;
        let quote_len = quote_len.min(usize::from(ip.total_len()));
        let payload = ip.payload();
        if ip.protocol() == IPPROTO_ICMP {
            let t = payload.first().copied();
            let error = matches!(
                t,
                Some(
                    icmpv4::DESTINATION_UNREACHABLE
                        | icmpv4::TIME_EXCEEDED
                        | icmpv4::PARAMETER_PROBLEM
                        | ICMP_SOURCE_QUENCH
                        | ICMP_REDIRECT
                )
            );
            if error || t.is_none() {
                return denied;
            }
        }
        if !self.take_icmp_token(now) {
            return denied;
        }
        let (Some(quote), Some(out)) = (
            frame.get(ETH_HLEN..ETH_HLEN + quote_len),
            reply.get_mut(..ETH_HLEN + IPV4_HLEN + ::wire::icmpv4::HEADER_LEN + quote_len),
        ) else {
            return denied;
        };
        let ip_len = IPV4_HLEN + ::wire::icmpv4::HEADER_LEN + quote_len;
        let (Ok(total), Some(())) = (
            u16::try_from(ip_len),
            write_eth(out, src_mac, self.cfg.gateway_mac, ETHERTYPE_IPV4),
        ) else {
            return denied;
        };
        let guest = ip.src_addr();
        let ip_out = &mut out[ETH_HLEN..];
        write_ipv4_header(ip_out, total, IPPROTO_ICMP, self.cfg.gateway, guest);
        let icmp = &mut ip_out[IPV4_HLEN..];
        // Type, code, checksum and the 4 unused bytes, then the quote.
        icmp[..::wire::icmpv4::HEADER_LEN].fill(0);
        icmp[::wire::icmpv4::HEADER_LEN..].copy_from_slice(quote);
        let mut m = Icmpv4Packet::new_unchecked(icmp);
        m.set_msg_type(icmpv4::DESTINATION_UNREACHABLE);
        m.set_msg_code(ICMP_CODE_ADMIN_PROHIBITED);
        m.fill_checksum();
        TxAction::DropWithReply {
            cause,
            len: ETH_HLEN + ip_len,
        }
    }

    /// Takes one token of the ICMP error rate limit, refilling [`ICMP_ERRORS_PER_SEC`] per
    /// second up to [`ICMP_ERROR_BURST`].
    fn take_icmp_token(&mut self, now: Instant) -> bool {
        let ms = now.as_millis();
        let elapsed = ms.saturating_sub(self.icmp_refilled);
        let refill = elapsed.saturating_mul(ICMP_ERRORS_PER_SEC) / 1000;
        if refill > 0 {
            self.icmp_tokens = self
                .icmp_tokens
                .saturating_add(refill)
                .min(ICMP_ERROR_BURST);
            self.icmp_refilled = ms;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    /// A DHCP message in `udp` (the IP payload; a UDP length beyond it is cut to it).
    fn dhcp_message(
        &mut self,
        udp: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
    ) -> TxAction {
        if udp.len() < ::wire::udp::HEADER_LEN {
            return TxAction::Drop(DropCause::Malformed);
        }
        let udp = UdpPacket::new_unchecked(udp);
        if usize::from(udp.len()) < ::wire::udp::HEADER_LEN {
            return TxAction::Drop(DropCause::Malformed);
        }
        let payload = udp.payload();
        if !crate::dhcp::options_decodable(payload) {
            return TxAction::Drop(DropCause::Malformed);
        }
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
            (r.dst_mac, self.cfg.gateway_mac),
            SocketAddrV4::new(self.cfg.gateway, 67),
            SocketAddrV4::new(r.dst_ip, 68),
            &bytes,
        ) {
            Some(len) => TxAction::Reply { len },
            None => TxAction::Drop(DropCause::TooBig),
        }
    }

    /// A DNS REFUSED response to the query in `udp` (the IP payload): the query's header and
    /// question, QR set, RA clear, no records. A response or a header shorter than 12 bytes is
    /// dropped (`GatewayUnsupported`); a question that cannot be walked is left out.
    fn dns_refused(
        &self,
        udp: &[u8],
        dst_mac: MacAddr,
        to: SocketAddrV4,
        reply: &mut [u8],
    ) -> TxAction {
        let Some(len) = udp
            .get(..::wire::udp::HEADER_LEN)
            .map(|h| usize::from(UdpPacket::new_unchecked(h).len()))
        else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Some(query) = udp.get(::wire::udp::HEADER_LEN..len.min(udp.len())) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Some(answer) = dns_refused_message(query) else {
            return TxAction::Drop(DropCause::GatewayUnsupported);
        };
        let from = SocketAddrV4::new(self.cfg.gateway, 53);
        match build_udp_frame(reply, (dst_mac, self.cfg.gateway_mac), from, to, &answer) {
            Some(len) => TxAction::Reply { len },
            None => TxAction::Drop(DropCause::TooBig),
        }
    }

    fn echo_reply(&self, frame: &[u8], len: usize, reply: &mut [u8]) -> TxAction {
        let (Some(src), Some(out)) = (frame.get(..len), reply.get_mut(..len)) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        // `handle_with` checked the Ethernet and IPv4 headers of `frame`; `len` ends at the
        // IPv4 total length.
        let request = EthernetFrame::new_unchecked(src);
        let ip = Ipv4Packet::new_unchecked(request.payload());
        let valid = Icmpv4Packet::new_checked(ip.payload()).is_ok_and(|m| m.verify_checksum());
        if !valid {
            return TxAction::Drop(DropCause::Malformed);
        }
        out.copy_from_slice(src);
        let _ = write_eth(
            out,
            request.src_addr(),
            self.cfg.gateway_mac,
            ETHERTYPE_IPV4,
        );
        let mut hdr = Ipv4Packet::new_unchecked(&mut out[ETH_HLEN..]);
        hdr.set_src_addr(ip.dst_addr());
        hdr.set_dst_addr(ip.src_addr());
        hdr.set_ttl(64);
        hdr.fill_checksum();
        let mut icmp = Icmpv4Packet::new_unchecked(hdr.payload_mut());
        icmp.set_msg_type(icmpv4::ECHO_REPLY);
        icmp.fill_checksum();
        TxAction::Reply { len }
    }
}

/// The REFUSED response to a DNS query message, or `None` if `query` is not a query (QR set)
/// or shorter than the 12-byte header. Keeps the ID, opcode and RD; copies the question if
/// there is exactly one and its name is a plain label sequence.
fn dns_refused_message(query: &[u8]) -> Option<Vec<u8>> {
    let header = query.get(..DNS_HEADER_LEN)?;
    if header[2] & 0x80 != 0 {
        return None;
    }
    let question = (u16::from_be_bytes([header[4], header[5]]) == 1)
        .then(|| dns_question(&query[DNS_HEADER_LEN..]))
        .flatten()
        .unwrap_or(&[]);
    let mut out = Vec::with_capacity(DNS_HEADER_LEN + question.len());
    out.extend_from_slice(&header[..2]);
    // QR, the query's opcode and RD; AA, TC, RA, Z clear; RCODE 5 (REFUSED).
    out.push(0x80 | (header[2] & 0x79));
    out.push(DNS_RCODE_REFUSED);
    out.extend_from_slice(&[0, u8::from(!question.is_empty()), 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(question);
    Some(out)
}

/// The question at the start of `b` (labels, then type and class), if it is well formed.
fn dns_question(b: &[u8]) -> Option<&[u8]> {
    let mut at = 0;
    loop {
        let n = usize::from(*b.get(at)?);
        if n == 0 {
            break;
        }
        // Compression pointers and the reserved label types have no place in a question.
        if n > 63 {
            return None;
        }
        at += 1 + n;
    }
    b.get(..at + 1 + 4)
}

fn mac_at(b: &[u8], off: usize) -> MacAddr {
    let mut m = [0u8; 6];
    if let Some(s) = b.get(off..off + 6) {
        m.copy_from_slice(s);
    }
    MacAddr(m)
}

/// ICMP errors the gateway sends at most at once (as Linux's `icmp_ratelimit` burst).
pub const ICMP_ERROR_BURST: u64 = 50;
/// ICMP errors the gateway sends at most per second on average (Linux's `icmp_msgs_per_sec`).
pub const ICMP_ERRORS_PER_SEC: u64 = 1000;
/// Bytes after the quoted IPv4 header in an ICMP error (RFC 792).
const ICMP_QUOTED_DATA: usize = ::wire::icmpv4::ERROR_QUOTED_DATA_LEN;
/// Destination unreachable code 13: communication administratively prohibited (RFC 1812).
const ICMP_CODE_ADMIN_PROHIBITED: u8 = 13;
/// ICMP source quench (an error message; deprecated by RFC 6633).
const ICMP_SOURCE_QUENCH: u8 = 4;
/// ICMP redirect (an error message).
const ICMP_REDIRECT: u8 = 5;

/// Length of an Ethernet/IPv4 ARP message.
const ARP_LEN: usize = ::wire::arp::PACKET_LEN;
/// The source and destination ports at the start of a TCP or UDP header.
const PORTS_LEN: usize = 4;
/// A DNS message's fixed header.
const DNS_HEADER_LEN: usize = 12;
/// RCODE 5: the server refuses (RFC 1035 4.1.1).
const DNS_RCODE_REFUSED: u8 = 5;
/// BOOTP messages are at least 300 bytes; some clients ignore shorter ones.
const BOOTP_MIN_LEN: usize = 300;
