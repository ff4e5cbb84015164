//! The guest side of IPv6 at the gateway: which sources a guest may use (anti-spoofing),
//! the addresses it is seen to use (learned, bound to its MAC), ICMPv6 echo to the gateway,
//! and the dispatch to Neighbor Discovery ([`super::ndp`]) and stateless DHCPv6
//! ([`super::dhcpv6`]). IPv6 from an address in the prefix to a unicast destination off the
//! link goes to the NAT (NAT66, [`TxAction::Nat`]); what cannot leave the link (a link-local
//! source, a link-local or on-link destination) has no route ([`DropCause::Ipv6NoRoute`]).

use core::net::Ipv6Addr;

use nat::Instant;
use wire::{Icmpv6Packet, Ipv6Packet, TcpPacket, UdpPacket, icmpv6, ip_proto, ipv6};

use super::{Gateway, TxAction};
use crate::policy::EgressAction;
use crate::stats::DropCause;
use crate::wire::{
    ETH_HLEN, ETHERTYPE_IPV6, HOP_LIMIT, IPV6_DST, IPV6_MIN_MTU, MacAddr, write_eth,
};
use crate::{Error, defaults};

/// The gateway's IPv6 addresses and the guest prefix. `Default` gives [`crate::defaults`]:
/// prefix `fd64::/64`, router `fe80::1`, gateway and DNS `fd64::1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Config {
    /// The guest prefix (a /64: the low 64 bits are zero), advertised for SLAAC.
    pub prefix: Ipv6Addr,
    /// The gateway's link-local address: the source of its Router Advertisements and the
    /// guest's default router. In `fe80::/64`.
    pub router: Ipv6Addr,
    /// The gateway's address in the prefix (answers ND and echo; the DNS server advertised
    /// by RDNSS and DHCPv6).
    pub gateway: Ipv6Addr,
}

impl Default for Ipv6Config {
    fn default() -> Self {
        Ipv6Config {
            prefix: defaults::IPV6_PREFIX,
            router: defaults::IPV6_ROUTER,
            gateway: defaults::IPV6_GATEWAY,
        }
    }
}

impl Ipv6Config {
    /// Checks the prefix is a /64, the router link-local and the gateway a host of the
    /// prefix.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if low64(self.prefix) != 0 || self.prefix.is_multicast() {
            return Err(Error::Config(format!(
                "ipv6 prefix {} is not a /64 unicast prefix",
                self.prefix
            )));
        }
        if !in64(self.router, LINK_LOCAL) || low64(self.router) == 0 {
            return Err(Error::Config(format!(
                "ipv6 router {} is not a link-local host address",
                self.router
            )));
        }
        if !in64(self.gateway, self.prefix) || low64(self.gateway) == 0 {
            return Err(Error::Config(format!(
                "ipv6 gateway {} is not a host address of {}/64",
                self.gateway, self.prefix
            )));
        }
        Ok(())
    }
}

/// The IPv6 state of the gateway.
#[derive(Clone, Debug)]
pub(super) struct V6 {
    pub(super) cfg: Ipv6Config,
    /// Addresses the guest was seen to use (link-local and in the prefix), newest replaced
    /// last (round robin once full).
    learned: [Ipv6Addr; MAX_GUEST_IPV6_ADDRS],
    learned_len: usize,
    learned_next: usize,
    /// When the next unsolicited Router Advertisement is due (milliseconds of the caller's
    /// clock).
    pub(super) next_ra: u64,
}

impl V6 {
    pub(super) fn new(cfg: Ipv6Config) -> Self {
        V6 {
            cfg,
            learned: [Ipv6Addr::UNSPECIFIED; MAX_GUEST_IPV6_ADDRS],
            learned_len: 0,
            learned_next: 0,
            next_ra: 0,
        }
    }

    /// Whether `a` is one of the gateway's own unicast addresses.
    pub(super) fn is_own(&self, a: Ipv6Addr) -> bool {
        a == self.cfg.router || a == self.cfg.gateway
    }

    /// Whether the guest may use `a` as a source (besides `::` for ND): its link-local or an
    /// address in the prefix, not the gateway's own, not the prefix's subnet-router anycast.
    pub(super) fn may_use(&self, a: Ipv6Addr) -> bool {
        (in64(a, LINK_LOCAL) || in64(a, self.cfg.prefix)) && !self.is_own(a) && low64(a) != 0
    }

    /// Records `a` as one of the guest's addresses (the caller checked [`V6::may_use`]).
    pub(super) fn learn(&mut self, a: Ipv6Addr) {
        if self.learned[..self.learned_len].contains(&a) {
            return;
        }
        if self.learned_len < MAX_GUEST_IPV6_ADDRS {
            self.learned[self.learned_len] = a;
            self.learned_len += 1;
        } else {
            self.learned[self.learned_next] = a;
            self.learned_next = (self.learned_next + 1) % MAX_GUEST_IPV6_ADDRS;
        }
    }

    /// Whether a packet from `src` (a source the guest may use) to `dst` (not the
    /// gateway's, not multicast) goes beyond the gateway to the NAT: `src` in the prefix
    /// (a link-local source never leaves the link, RFC 4291 2.5.6) and `dst` a unicast
    /// address off the link (not link-local, loopback, unspecified, nor in the guest prefix,
    /// where no other host lives).
    pub(super) fn routable(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        in64(src, self.cfg.prefix)
            && !dst.is_unicast_link_local()
            && !dst.is_loopback()
            && !dst.is_unspecified()
            && !in64(dst, self.cfg.prefix)
    }

    pub(super) fn learned(&self) -> &[Ipv6Addr] {
        &self.learned[..self.learned_len]
    }
}

impl Gateway {
    /// The gateway's IPv6 configuration, if IPv6 is on.
    pub fn ipv6(&self) -> Option<&Ipv6Config> {
        self.v6.as_ref().map(|v| &v.cfg)
    }

    /// Whether the guest may send from `a` (its link-local or an address in the prefix; not
    /// the gateway's): the anti-spoofing rule, before the address is learned.
    pub(crate) fn may_use_ipv6(&self, a: Ipv6Addr) -> bool {
        self.v6.as_ref().is_some_and(|v| v.may_use(a))
    }

    /// Records `a` (which [`Gateway::may_use_ipv6`] allowed) as one of the guest's addresses.
    pub(crate) fn learn_ipv6(&mut self, a: Ipv6Addr) {
        if let Some(v) = self.v6.as_mut()
            && v.may_use(a)
        {
            v.learn(a);
        }
    }

    /// The IPv6 addresses the guest was seen to use from its MAC (from its traffic and its
    /// neighbor advertisements; never a tentative address it only probed for), at most
    /// [`MAX_GUEST_IPV6_ADDRS`], the oldest replaced first.
    pub fn guest_ipv6_addrs(&self) -> &[Ipv6Addr] {
        self.v6.as_ref().map_or(&[], V6::learned)
    }

    /// The guest address IPv6 port forwards go to: of the learned addresses in the prefix,
    /// the SLAAC address made from the guest's MAC (modified EUI-64, RFC 4291 appendix A)
    /// if the guest uses it, else the one learned first (a privacy address, RFC 8981, comes
    /// and goes; the EUI-64 one stays while the MAC does). `None` without IPv6 or before the
    /// guest used a global address.
    pub fn guest_ipv6_forward_target(&self) -> Option<Ipv6Addr> {
        let v6 = self.v6.as_ref()?;
        let m = self.guest_mac.0;
        let iid = u64::from_be_bytes([m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
        let eui = Ipv6Addr::from_bits((v6.cfg.prefix.to_bits() >> 64 << 64) | u128::from(iid));
        let mut global = v6
            .learned()
            .iter()
            .copied()
            .filter(|a| in64(*a, v6.cfg.prefix));
        if v6.learned().contains(&eui) {
            return Some(eui);
        }
        global.next()
    }

    /// Whether `frame` is IPv6 for the gateway itself or the link (its own addresses,
    /// multicast, link-local): what the gateway answers or drops and never passes to the
    /// NAT, so a partial checksum in it must be completed before the gateway reads it.
    pub(crate) fn ipv6_stays_on_link(&self, frame: &[u8]) -> bool {
        let Some(v6) = self.v6.as_ref() else {
            return false;
        };
        let is_v6 = frame
            .get(ETH_HLEN - 2..ETH_HLEN)
            .is_some_and(|t| t == ETHERTYPE_IPV6.to_be_bytes());
        let Some(dst) = frame.get(ETH_HLEN + IPV6_DST..ETH_HLEN + IPV6_DST + 16) else {
            return false;
        };
        let mut a = [0u8; 16];
        a.copy_from_slice(dst);
        let dst = Ipv6Addr::from(a);
        is_v6 && (v6.is_own(dst) || dst.is_multicast() || dst.is_unicast_link_local())
    }

    /// An IPv6 frame from the guest (`frame`'s Ethernet header checked, `src_mac` not
    /// multicast).
    pub(super) fn ipv6_frame(
        &mut self,
        frame: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
        gso: bool,
    ) -> TxAction {
        let mtu = usize::from(self.cfg.mtu);
        let guest_mac = self.guest_mac;
        let Some(v6) = self.v6.as_mut() else {
            return TxAction::Drop(DropCause::Ipv6NoRoute);
        };
        let Ok(ip) = Ipv6Packet::new_checked(frame.get(ETH_HLEN..).unwrap_or(&[])) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let total = ipv6::HEADER_LEN + usize::from(ip.payload_len());
        // A super-frame (checked by `offload::check_tx`) may exceed the MTU: the host cuts it.
        if total > mtu && !gso {
            return TxAction::Drop(DropCause::TooBig);
        }
        if src_mac != guest_mac {
            return TxAction::Drop(DropCause::SpoofedMac);
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let Ok(upper) = ip.upper_layer() else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let whole = upper.fragment.is_none();
        // The upper-layer message, up to the payload length (no Ethernet padding).
        let l4 = frame
            .get(ETH_HLEN + upper.offset..ETH_HLEN + total)
            .unwrap_or(&[]);
        let icmp_type = (upper.protocol == ip_proto::ICMPV6 && whole)
            .then(|| l4.first().copied())
            .flatten();
        if src.is_unspecified() {
            // RFC 4861 (DAD, 7.2.2; RS, 6.3.7) and RFC 3590 (MLD before an address is ready).
            if !icmp_type.is_some_and(|t| ND_FROM_UNSPECIFIED.contains(&t)) {
                return TxAction::Drop(DropCause::SpoofedIpv6);
            }
        } else if v6.may_use(src) {
            v6.learn(src);
        } else {
            return TxAction::Drop(DropCause::SpoofedIpv6);
        }
        let to_gateway = v6.is_own(dst);
        let dns_server = v6.cfg.gateway;
        if !to_gateway && !is_link_multicast(dst) {
            if dst.is_multicast() {
                return TxAction::Drop(DropCause::Ipv6Ignored);
            }
            let error = upper.protocol == ip_proto::ICMPV6
                && (!whole || icmp_type.is_none_or(|t| t < icmpv6::ECHO_REQUEST));
            if v6.routable(src, dst) {
                if self.egress.action6(dst) == EgressAction::Deny
                    && Some(dst) != self.egress_exempt6
                {
                    let why = (ADMIN_PROHIBITED_CODE, DropCause::EgressDenied);
                    return self.unreachable6(
                        (frame, total),
                        (src, src_mac),
                        error,
                        why,
                        reply,
                        now,
                    );
                }
                return TxAction::Nat { len: total };
            }
            let why = (NO_ROUTE_CODE, DropCause::Ipv6NoRoute);
            return self.unreachable6((frame, total), (src, src_mac), error, why, reply, now);
        }
        let unserved = if to_gateway {
            DropCause::GatewayUnsupported
        } else {
            DropCause::Ipv6Ignored
        };
        if !whole {
            return TxAction::Drop(unserved);
        }
        let hop_limit = ip.hop_limit();
        let pkt = Packet {
            src,
            dst,
            hop_limit,
            src_mac,
        };
        let transport = matches!(upper.protocol, ip_proto::UDP | ip_proto::TCP);
        if transport && dst == dns_server && dst_port(l4) == Some(DNS_PORT) {
            return self.dns6(pkt, upper.protocol, l4, total, reply);
        }
        match (upper.protocol, icmp_type) {
            (ip_proto::ICMPV6, Some(t)) if super::ndp::is_nd(t) => {
                self.neighbor_discovery(pkt, l4, reply, now)
            }
            (ip_proto::ICMPV6, Some(icmpv6::ECHO_REQUEST)) if to_gateway => {
                self.echo6_reply(pkt, l4, reply)
            }
            (ip_proto::UDP, _) if dhcpv6_ports(l4) => self.dhcpv6(pkt, l4, reply),
            _ => TxAction::Drop(unserved),
        }
    }

    /// Answers an IPv6 packet NAT66 refused a new session for (table or per-host cap, no
    /// free port) with ICMPv6 destination unreachable, code 1 (communication with destination
    /// administratively prohibited; RFC 4443 3.1), as [`Gateway::refused_by_nat`] does for
    /// IPv4 (RFC 5508 REQ-8), within the same rate limit and the rules of
    /// [`Gateway::unreachable6`]. `frame` is the guest's frame as it came; its length is what the
    /// reply frame has, `None` when no answer is due.
    pub(super) fn refused_by_nat6(
        &mut self,
        frame: &[u8],
        src_mac: MacAddr,
        reply: &mut [u8],
        now: Instant,
    ) -> Option<usize> {
        let ip = Ipv6Packet::new_checked(frame.get(ETH_HLEN..)?).ok()?;
        let total = (ipv6::HEADER_LEN + usize::from(ip.payload_len()))
            .min(frame.len().saturating_sub(ETH_HLEN));
        let upper = ip.upper_layer().ok()?;
        let icmp_type = frame.get(ETH_HLEN + upper.offset).copied();
        let error = upper.protocol == ip_proto::ICMPV6
            && (upper.fragment.is_some() || icmp_type.is_none_or(|t| t < icmpv6::ECHO_REQUEST));
        let why = (ADMIN_PROHIBITED_CODE, DropCause::NatOutbound);
        match self.unreachable6(
            (frame, total),
            (ip.src_addr(), src_mac),
            error,
            why,
            reply,
            now,
        ) {
            TxAction::DropWithReply { len, .. } => Some(len),
            _ => None,
        }
    }

    /// IPv6 beyond the gateway that is not passed on, counted `cause` and answered with
    /// ICMPv6 destination unreachable, `code` (RFC 4443 3.1): 0, no route to destination (see
    /// [`V6::routable`], [`DropCause::Ipv6NoRoute`]), or 1, communication administratively
    /// prohibited (the egress policy, [`DropCause::EgressDenied`]). The answer quotes as much
    /// of the packet as fits 1280 bytes, so the guest's connection fails at once (and a
    /// dual-stack client falls back to IPv4) instead of waiting out its timeouts. Not in
    /// answer to an ICMPv6 error (`error`), a fragment of unknown kind or from `::` (RFC 4443
    /// 2.4 (e)), and at most as often as the gateway's ICMP error rate limit allows.
    fn unreachable6(
        &mut self,
        (frame, total): (&[u8], usize),
        (src, src_mac): (Ipv6Addr, MacAddr),
        error: bool,
        (code, cause): (u8, DropCause),
        reply: &mut [u8],
        now: Instant,
    ) -> TxAction {
        let unanswered = TxAction::Drop(cause);
        if error || src.is_unspecified() || !self.take_icmp_token(now) {
            return unanswered;
        }
        let Some(cfg) = self.v6.as_ref().map(|v| v.cfg) else {
            return unanswered;
        };
        let from = if in64(src, LINK_LOCAL) {
            cfg.router
        } else {
            cfg.gateway
        };
        let quote_len = total.min(IPV6_MIN_MTU - ipv6::HEADER_LEN - icmpv6::HEADER_LEN);
        let Some(quote) = frame.get(ETH_HLEN..ETH_HLEN + quote_len) else {
            return unanswered;
        };
        let hdr = Ipv6Header {
            dst_mac: src_mac,
            src: from,
            dst: src,
            next_header: ip_proto::ICMPV6,
            hop_limit: HOP_LIMIT,
        };
        let Some((out, len)) = self.ipv6_reply(reply, hdr, icmpv6::HEADER_LEN + quote_len) else {
            return unanswered;
        };
        // Type, code, checksum and the unused word, then the quote.
        out[..icmpv6::HEADER_LEN].fill(0);
        out[icmpv6::HEADER_LEN..].copy_from_slice(quote);
        let mut icmp = Icmpv6Packet::new_unchecked(out);
        icmp.set_msg_type(icmpv6::DESTINATION_UNREACHABLE);
        icmp.set_msg_code(code);
        icmp.fill_checksum(from, src);
        TxAction::DropWithReply { cause, len }
    }

    /// DNS to the gateway's IPv6 address (`l4`: the UDP or TCP message to port 53 of the
    /// `total`-byte packet): to the NAT or the DNS relay, or without an upstream REFUSED
    /// (UDP) or a RST (TCP) at once, as for IPv4.
    fn dns6(
        &self,
        pkt: Packet,
        protocol: u8,
        l4: &[u8],
        total: usize,
        reply: &mut [u8],
    ) -> TxAction {
        match self.cfg.dns6 {
            super::Dns6::Nat => TxAction::Nat { len: total },
            super::Dns6::Relay => TxAction::DnsRelay { len: total },
            super::Dns6::Refused if protocol == ip_proto::UDP => self.dns6_refused(pkt, l4, reply),
            super::Dns6::Refused => self.tcp6_reset(pkt, l4, reply),
        }
    }

    /// A DNS REFUSED response (see [`super::dns_refused_message`]) to the UDP query in
    /// `udp`, from the address and port it was sent to.
    fn dns6_refused(&self, pkt: Packet, udp: &[u8], reply: &mut [u8]) -> TxAction {
        let Ok(query) = UdpPacket::new_checked(udp) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Some(answer) = super::dns_refused_message(query.payload()) else {
            return TxAction::Drop(DropCause::GatewayUnsupported);
        };
        let hdr = Ipv6Header {
            dst_mac: pkt.src_mac,
            src: pkt.dst,
            dst: pkt.src,
            next_header: ip_proto::UDP,
            hop_limit: HOP_LIMIT,
        };
        let udp_len = ::wire::udp::HEADER_LEN + answer.len();
        let (Ok(len16), Some((out, len))) =
            (u16::try_from(udp_len), self.ipv6_reply(reply, hdr, udp_len))
        else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let mut u = UdpPacket::new_unchecked(out);
        u.set_src_port(query.dst_port());
        u.set_dst_port(query.src_port());
        u.set_len(len16);
        u.payload_mut().copy_from_slice(&answer);
        u.fill_checksum_v6(pkt.dst, pkt.src);
        TxAction::Reply { len }
    }

    /// A RST answering the TCP segment `segment` (to a port nobody listens on).
    fn tcp6_reset(&self, pkt: Packet, segment: &[u8], reply: &mut [u8]) -> TxAction {
        let Some(answer) = crate::wire::TcpReset::answering(segment) else {
            return TxAction::Drop(DropCause::GatewayUnsupported);
        };
        let seg = TcpPacket::new_unchecked(segment);
        let hdr = Ipv6Header {
            dst_mac: pkt.src_mac,
            src: pkt.dst,
            dst: pkt.src,
            next_header: ip_proto::TCP,
            hop_limit: HOP_LIMIT,
        };
        let Some((out, len)) = self.ipv6_reply(reply, hdr, ::wire::tcp::HEADER_LEN) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let mut t = TcpPacket::new_unchecked(out);
        answer.write(&mut t, seg.dst_port(), seg.src_port());
        t.fill_checksum_v6(pkt.dst, pkt.src);
        TxAction::Reply { len }
    }

    /// An ICMPv6 echo reply from the address the request was sent to (a unicast address of
    /// the gateway), carrying the request's identifier, sequence number and data.
    fn echo6_reply(&self, pkt: Packet, msg: &[u8], reply: &mut [u8]) -> TxAction {
        let valid = Icmpv6Packet::new_checked(msg)
            .is_ok_and(|m| m.msg_code() == 0 && m.verify_checksum(pkt.src, pkt.dst));
        if !valid {
            return TxAction::Drop(DropCause::Malformed);
        }
        let hdr = Ipv6Header {
            dst_mac: pkt.src_mac,
            src: pkt.dst,
            dst: pkt.src,
            next_header: ip_proto::ICMPV6,
            hop_limit: HOP_LIMIT,
        };
        let Some((out, len)) = self.ipv6_reply(reply, hdr, msg.len()) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        out.copy_from_slice(msg);
        let mut icmp = Icmpv6Packet::new_unchecked(out);
        icmp.set_msg_type(icmpv6::ECHO_REPLY);
        icmp.fill_checksum(pkt.dst, pkt.src);
        TxAction::Reply { len }
    }

    /// Writes the Ethernet and IPv6 headers of a reply with `payload_len` bytes after them
    /// into `reply`; returns the payload's room and the frame's length.
    pub(super) fn ipv6_reply<'r>(
        &self,
        reply: &'r mut [u8],
        h: Ipv6Header,
        payload_len: usize,
    ) -> Option<(&'r mut [u8], usize)> {
        let len = ETH_HLEN + ipv6::HEADER_LEN + payload_len;
        let frame = reply.get_mut(..len)?;
        write_eth(frame, h.dst_mac, self.cfg.gateway_mac, ETHERTYPE_IPV6)?;
        let mut ip = Ipv6Packet::new_unchecked(&mut frame[ETH_HLEN..]);
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_len(u16::try_from(payload_len).ok()?);
        ip.set_next_header(h.next_header);
        ip.set_hop_limit(h.hop_limit);
        ip.set_src_addr(h.src);
        ip.set_dst_addr(h.dst);
        Some((&mut frame[ETH_HLEN + ipv6::HEADER_LEN..], len))
    }
}

/// What the handlers need of a checked IPv6 packet from the guest.
#[derive(Clone, Copy, Debug)]
pub(super) struct Packet {
    pub(super) src: Ipv6Addr,
    pub(super) dst: Ipv6Addr,
    pub(super) hop_limit: u8,
    pub(super) src_mac: MacAddr,
}

/// The Ethernet and IPv6 headers of a reply.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ipv6Header {
    pub(super) dst_mac: MacAddr,
    pub(super) src: Ipv6Addr,
    pub(super) dst: Ipv6Addr,
    pub(super) next_header: u8,
    pub(super) hop_limit: u8,
}

/// The destination port of the TCP or UDP header at the start of `l4`, if there is room.
fn dst_port(l4: &[u8]) -> Option<u16> {
    (l4.len() >= PORTS_LEN).then(|| UdpPacket::new_unchecked(l4).dst_port())
}

/// Whether `udp` is from the DHCPv6 client port to the server port.
fn dhcpv6_ports(udp: &[u8]) -> bool {
    udp.len() >= ::wire::udp::HEADER_LEN && {
        let u = UdpPacket::new_unchecked(udp);
        (u.src_port(), u.dst_port()) == (DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT)
    }
}

/// Whether `a` is in the /64 of `prefix`.
pub(super) fn in64(a: Ipv6Addr, prefix: Ipv6Addr) -> bool {
    a.to_bits() >> 64 == prefix.to_bits() >> 64
}

/// The interface identifier (low 64 bits) of `a`.
fn low64(a: Ipv6Addr) -> u64 {
    a.to_bits() as u64
}

/// Link-scope multicast (`ff02::/16`): all-nodes, all-routers, solicited-node, DHCP servers.
fn is_link_multicast(a: Ipv6Addr) -> bool {
    a.segments()[0] == 0xff02
}

/// The Ethernet address of IPv6 multicast group `a` (RFC 2464 7: 33:33 and its last 32
/// bits).
pub(super) fn multicast_mac(a: Ipv6Addr) -> MacAddr {
    let o = a.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// The most guest addresses the gateway remembers (a link-local, a stable and a few
/// temporary addresses).
pub const MAX_GUEST_IPV6_ADDRS: usize = 16;
/// `fe80::/64`.
const LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0);
/// ICMPv6 types a guest may send from `::`: Router and Neighbor Solicitation, MLD reports
/// (v1 report and done, v2 report).
const ND_FROM_UNSPECIFIED: [u8; 5] = [
    icmpv6::ROUTER_SOLICITATION,
    icmpv6::NEIGHBOR_SOLICITATION,
    MLD_REPORT,
    MLD_DONE,
    MLD_V2_REPORT,
];
/// MLDv1 report (RFC 2710).
const MLD_REPORT: u8 = 131;
/// MLDv1 done (RFC 2710).
const MLD_DONE: u8 = 132;
/// MLDv2 report (RFC 3810).
const MLD_V2_REPORT: u8 = 143;
/// Destination unreachable code 0: no route to destination.
const NO_ROUTE_CODE: u8 = 0;
/// ICMPv6 destination unreachable code 1: communication with destination administratively
/// prohibited (RFC 4443 3.1).
const ADMIN_PROHIBITED_CODE: u8 = 1;
/// The DNS port (RFC 1035).
const DNS_PORT: u16 = 53;
/// The source and destination ports at the start of a TCP or UDP header.
const PORTS_LEN: usize = 4;
/// The DHCPv6 client port (RFC 8415 7.2).
pub(super) const DHCPV6_CLIENT_PORT: u16 = 546;
/// The DHCPv6 server port.
pub(super) const DHCPV6_SERVER_PORT: u16 = 547;
