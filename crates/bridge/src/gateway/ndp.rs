//! Neighbor Discovery at the gateway (RFC 4861): Neighbor Advertisements for the gateway's
//! addresses (also to a duplicate-address probe for them), Router Advertisements (to a Router
//! Solicitation, and unsolicited ones, [`Gateway::unsolicited`]) with the prefix for SLAAC
//! (RFC 4862), the MTU and the DNS server (RDNSS, RFC 8106); the guest's own advertisements
//! teach the gateway its addresses. A guest's tentative address is never claimed.

use core::net::Ipv6Addr;

use nat::Instant;
use wire::ndp::{self, NdpOptions, field};
use wire::{Icmpv6Packet, icmpv6, ip_proto};

use super::ipv6::{Ipv6Header, Packet, in64, multicast_mac};
use super::{Gateway, TxAction};
use crate::stats::DropCause;
use crate::wire::MacAddr;

/// Whether ICMPv6 type `t` is a Neighbor Discovery message.
pub(super) fn is_nd(t: u8) -> bool {
    (icmpv6::ROUTER_SOLICITATION..=REDIRECT).contains(&t)
}

impl Gateway {
    /// On a network of several guests: answers a Neighbor Solicitation from the guest for
    /// another guest's address (`mac_of` gives that guest's MAC) with a Neighbor Advertisement
    /// naming that MAC, as a proxy (RFC 4861 7.2.8): to the asker, solicited; to a duplicate
    /// address probe from `::`, to all nodes, so the other guest's address is defended.
    /// `frame` passed the gateway's checks (it answered [`DropCause::Ipv6Ignored`] or
    /// consumed a probe). Returns the reply's length.
    pub(crate) fn ns_for_neighbor(
        &self,
        frame: &[u8],
        reply: &mut [u8],
        mac_of: impl Fn(Ipv6Addr) -> Option<MacAddr>,
    ) -> Option<usize> {
        let eth = wire::EthernetFrame::new_checked(frame).ok()?;
        let ip = wire::Ipv6Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != ip_proto::ICMPV6 || ip.hop_limit() != ND_HOP_LIMIT {
            return None;
        }
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let msg = ip.payload();
        let icmp = Icmpv6Packet::new_checked(msg).ok()?;
        if icmp.msg_type() != icmpv6::NEIGHBOR_SOLICITATION
            || icmp.msg_code() != 0
            || msg.len() < ndp::NEIGHBOR_MESSAGE_LEN
            || !icmp.verify_checksum(src, dst)
        {
            return None;
        }
        let target = target(msg);
        let mac = mac_of(target)?;
        let (to, to_mac, solicited) = if src.is_unspecified() {
            (ALL_NODES, multicast_mac(ALL_NODES), 0)
        } else {
            (src, eth.src_addr(), ndp::NA_SOLICITED)
        };
        let flags = ndp::NA_OVERRIDE | solicited;
        match self.neighbor_advertisement(reply, (target, mac), to, to_mac, flags) {
            TxAction::Reply { len } => Some(len),
            _ => None,
        }
    }

    /// A Neighbor Discovery message from the guest (`msg`: the ICMPv6 message).
    pub(super) fn neighbor_discovery(
        &mut self,
        pkt: Packet,
        msg: &[u8],
        reply: &mut [u8],
        now: Instant,
    ) -> TxAction {
        const INVALID: TxAction = TxAction::Drop(DropCause::NdpInvalid);
        let Ok(icmp) = Icmpv6Packet::new_checked(msg) else {
            return INVALID;
        };
        let t = icmp.msg_type();
        let fixed = match t {
            icmpv6::ROUTER_SOLICITATION => ndp::ROUTER_SOLICITATION_LEN,
            icmpv6::ROUTER_ADVERTISEMENT => ndp::ROUTER_ADVERTISEMENT_LEN,
            icmpv6::NEIGHBOR_SOLICITATION | icmpv6::NEIGHBOR_ADVERTISEMENT => {
                ndp::NEIGHBOR_MESSAGE_LEN
            }
            _ => REDIRECT_LEN,
        };
        // RFC 4861 6.1.1, 7.1.1, 7.1.2, 8.2.1: hop limit 255 (not forwarded by a router),
        // valid checksum, code 0, long enough, options of non-zero length within the
        // message.
        let Some(options) = msg.get(fixed..) else {
            return INVALID;
        };
        if pkt.hop_limit != ND_HOP_LIMIT
            || icmp.msg_code() != 0
            || !icmp.verify_checksum(pkt.src, pkt.dst)
            || !NdpOptions::valid(options)
        {
            return INVALID;
        }
        let has_source_ll = NdpOptions::new(options)
            .flatten()
            .any(|o| o.kind() == ndp::SOURCE_LINK_LAYER_ADDRESS);
        let v6 = self.v6.as_ref().map(|v| v.cfg);
        let Some(cfg) = v6 else {
            return TxAction::Drop(DropCause::Ipv6NoRoute);
        };
        match t {
            icmpv6::ROUTER_SOLICITATION => {
                // 6.1.1: no source link-layer option from `::`.
                if pkt.src.is_unspecified() && has_source_ll {
                    return INVALID;
                }
                let (dst, dst_mac) = if pkt.src.is_unspecified() {
                    (ALL_NODES, multicast_mac(ALL_NODES))
                } else {
                    (pkt.src, pkt.src_mac)
                };
                self.router_advertisement(reply, dst, dst_mac, now)
            }
            icmpv6::NEIGHBOR_SOLICITATION => {
                let target = target(msg);
                let dad = pkt.src.is_unspecified();
                // 7.1.1: a unicast target; a probe from `::` goes to a solicited-node group
                // and carries no source link-layer option.
                if target.is_multicast() || (dad && (!is_solicited_node(pkt.dst) || has_source_ll))
                {
                    return INVALID;
                }
                if target != cfg.router && target != cfg.gateway {
                    // A probe for the guest's own tentative address (never claimed) or a
                    // question about a neighbor that is not there.
                    return if dad {
                        TxAction::Consumed
                    } else {
                        TxAction::Drop(DropCause::Ipv6Ignored)
                    };
                }
                // 7.2.4: to a probe, all-nodes without S; else to the asker, solicited.
                let (dst, dst_mac, solicited) = if dad {
                    (ALL_NODES, multicast_mac(ALL_NODES), 0)
                } else {
                    (pkt.src, pkt.src_mac, ndp::NA_SOLICITED)
                };
                let flags = ndp::NA_ROUTER | ndp::NA_OVERRIDE | solicited;
                let mac = self.cfg.gateway_mac;
                self.neighbor_advertisement(reply, (target, mac), dst, dst_mac, flags)
            }
            icmpv6::NEIGHBOR_ADVERTISEMENT => {
                let target = target(msg);
                let solicited = msg.get(field::NA_FLAGS).copied().unwrap_or(0) & ndp::NA_SOLICITED;
                // 7.1.2: a unicast target; S clear towards a multicast group.
                if target.is_multicast() || (pkt.dst.is_multicast() && solicited != 0) {
                    return INVALID;
                }
                let Some(v6) = self.v6.as_mut() else {
                    return TxAction::Drop(DropCause::Ipv6NoRoute);
                };
                if v6.may_use(target) {
                    v6.learn(target);
                    TxAction::Consumed
                } else {
                    // Claims one of the gateway's addresses, or one off the link.
                    TxAction::Drop(DropCause::Ipv6Ignored)
                }
            }
            // A guest is no router: its advertisements and redirects are not followed.
            _ => TxAction::Drop(DropCause::Ipv6Ignored),
        }
    }

    /// An unsolicited Router Advertisement to all nodes, if one is due at `now`: once the
    /// guest has used IPv6 (an address was learned), every [`UNSOLICITED_RA_INTERVAL_MS`]
    /// after the last advertisement; written into `reply`. The caller offers a reply buffer
    /// a guest frame left unused, and the drivers' tick offers one too
    /// ([`crate::DeviceCore::on_tick`], the threaded driver's TX thread once a second), so an
    /// idle guest keeps its default route; a guest that never spoke IPv6 gets none.
    pub fn unsolicited(&mut self, reply: &mut [u8], now: Instant) -> Option<usize> {
        let v6 = self.v6.as_ref()?;
        if v6.learned().is_empty() || now.as_millis() < v6.next_ra {
            return None;
        }
        match self.router_advertisement(reply, ALL_NODES, multicast_mac(ALL_NODES), now) {
            TxAction::Reply { len } => Some(len),
            _ => None,
        }
    }

    /// A Router Advertisement from the router address to `dst`: M=0 O=1 (stateless DHCPv6),
    /// router lifetime [`ROUTER_LIFETIME_S`], the source link-layer address, the MTU, the
    /// prefix with L and A, and the DNS server when DNS is served. Resets the unsolicited
    /// timer.
    fn router_advertisement(
        &mut self,
        reply: &mut [u8],
        dst: Ipv6Addr,
        dst_mac: MacAddr,
        now: Instant,
    ) -> TxAction {
        let Some(v6) = self.v6.as_mut() else {
            return TxAction::Drop(DropCause::Ipv6NoRoute);
        };
        v6.next_ra = now.as_millis().saturating_add(UNSOLICITED_RA_INTERVAL_MS);
        let cfg = v6.cfg;
        let dns = self.cfg.dns6 != super::Dns6::Refused;
        let len = ndp::ROUTER_ADVERTISEMENT_LEN
            + ndp::LINK_LAYER_OPTION_LEN
            + ndp::MTU_OPTION_LEN
            + ndp::PREFIX_OPTION_LEN
            + if dns { ndp::RDNSS_OPTION_LEN } else { 0 };
        let hdr = Ipv6Header {
            dst_mac,
            src: cfg.router,
            dst,
            next_header: ip_proto::ICMPV6,
            hop_limit: ND_HOP_LIMIT,
        };
        let Some((out, frame_len)) = self.ipv6_reply(reply, hdr, len) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        out.fill(0);
        out[field::RA_CUR_HOP_LIMIT] = CUR_HOP_LIMIT;
        out[field::RA_FLAGS] = ndp::RA_OTHER;
        out[field::RA_ROUTER_LIFETIME].copy_from_slice(&ROUTER_LIFETIME_S.to_be_bytes());
        let mut at = ndp::ROUTER_ADVERTISEMENT_LEN;
        at += link_layer_option(
            &mut out[at..],
            ndp::SOURCE_LINK_LAYER_ADDRESS,
            self.cfg.gateway_mac,
        );
        let mtu = &mut out[at..at + ndp::MTU_OPTION_LEN];
        option_header(mtu, ndp::MTU);
        mtu[field::MTU_VALUE].copy_from_slice(&u32::from(self.cfg.mtu).to_be_bytes());
        at += ndp::MTU_OPTION_LEN;
        let p = &mut out[at..at + ndp::PREFIX_OPTION_LEN];
        option_header(p, ndp::PREFIX_INFORMATION);
        p[field::PREFIX_LENGTH] = PREFIX_LEN;
        p[field::PREFIX_FLAGS] = ndp::PREFIX_ON_LINK | ndp::PREFIX_AUTONOMOUS;
        p[field::PREFIX_VALID_LIFETIME].copy_from_slice(&PREFIX_VALID_S.to_be_bytes());
        p[field::PREFIX_PREFERRED_LIFETIME].copy_from_slice(&PREFIX_PREFERRED_S.to_be_bytes());
        p[field::PREFIX_ADDR].copy_from_slice(&cfg.prefix.octets());
        at += ndp::PREFIX_OPTION_LEN;
        if dns {
            let r = &mut out[at..at + ndp::RDNSS_OPTION_LEN];
            option_header(r, ndp::RECURSIVE_DNS_SERVER);
            r[field::RDNSS_LIFETIME].copy_from_slice(&RDNSS_LIFETIME_S.to_be_bytes());
            r[field::RDNSS_ADDR].copy_from_slice(&cfg.gateway.octets());
        }
        let mut icmp = Icmpv6Packet::new_unchecked(out);
        icmp.set_msg_type(icmpv6::ROUTER_ADVERTISEMENT);
        icmp.set_msg_code(0);
        icmp.fill_checksum(cfg.router, dst);
        TxAction::Reply { len: frame_len }
    }

    /// A Neighbor Advertisement for `target` (one of the gateway's addresses) with `flags`
    /// and the target link-layer address, from `target` to `dst`.
    fn neighbor_advertisement(
        &self,
        reply: &mut [u8],
        (target, target_mac): (Ipv6Addr, MacAddr),
        dst: Ipv6Addr,
        dst_mac: MacAddr,
        flags: u8,
    ) -> TxAction {
        let len = ndp::NEIGHBOR_MESSAGE_LEN + ndp::LINK_LAYER_OPTION_LEN;
        let hdr = Ipv6Header {
            dst_mac,
            src: target,
            dst,
            next_header: ip_proto::ICMPV6,
            hop_limit: ND_HOP_LIMIT,
        };
        let Some((out, frame_len)) = self.ipv6_reply(reply, hdr, len) else {
            return TxAction::Drop(DropCause::TooBig);
        };
        out.fill(0);
        out[field::NA_FLAGS] = flags;
        out[field::NEIGHBOR_TARGET].copy_from_slice(&target.octets());
        link_layer_option(
            &mut out[ndp::NEIGHBOR_MESSAGE_LEN..],
            ndp::TARGET_LINK_LAYER_ADDRESS,
            target_mac,
        );
        let mut icmp = Icmpv6Packet::new_unchecked(out);
        icmp.set_msg_type(icmpv6::NEIGHBOR_ADVERTISEMENT);
        icmp.set_msg_code(0);
        icmp.fill_checksum(target, dst);
        TxAction::Reply { len: frame_len }
    }
}

/// The target address of a Neighbor Solicitation or Advertisement (`msg` is at least
/// [`ndp::NEIGHBOR_MESSAGE_LEN`] long, checked by the caller).
fn target(msg: &[u8]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    if let Some(t) = msg.get(field::NEIGHBOR_TARGET) {
        a.copy_from_slice(t);
    }
    Ipv6Addr::from(a)
}

/// Writes an option's type and length (its buffer's length in 8-byte units).
fn option_header(opt: &mut [u8], kind: u8) {
    opt[field::OPTION_TYPE] = kind;
    opt[field::OPTION_LENGTH] = (opt.len() / ndp::OPTION_UNIT) as u8;
}

/// Writes a link-layer address option at the start of `out`; returns its length.
fn link_layer_option(out: &mut [u8], kind: u8, mac: MacAddr) -> usize {
    let o = &mut out[..ndp::LINK_LAYER_OPTION_LEN];
    option_header(o, kind);
    o[field::OPTION_LINK_LAYER_ADDR].copy_from_slice(&mac.0);
    ndp::LINK_LAYER_OPTION_LEN
}

/// Whether `a` is a solicited-node multicast address (`ff02::1:ff00:0/104`).
fn is_solicited_node(a: Ipv6Addr) -> bool {
    in64(a, SOLICITED_NODE) && {
        let s = a.segments();
        s[4] == 0 && s[5] == 1 && s[6] >> 8 == 0xff
    }
}

/// All-nodes multicast.
pub(super) const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// The /64 of the solicited-node groups.
const SOLICITED_NODE: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00, 0);
/// ICMPv6 Redirect (RFC 4861 4.5).
const REDIRECT: u8 = 137;
/// A Redirect before its options.
const REDIRECT_LEN: usize = 40;
/// The hop limit of every Neighbor Discovery message.
const ND_HOP_LIMIT: u8 = 255;
/// The hop limit the gateway advertises for the guest's packets.
const CUR_HOP_LIMIT: u8 = 64;
/// The advertised prefix length (SLAAC needs /64).
const PREFIX_LEN: u8 = 64;
/// Router lifetime in Router Advertisements (seconds; 3 × the unsolicited interval, as
/// RFC 4861 6.2.1's AdvDefaultLifetime).
pub const ROUTER_LIFETIME_S: u16 = 1800;
/// Valid lifetime of the advertised prefix (seconds; one day).
pub const PREFIX_VALID_S: u32 = 86_400;
/// Preferred lifetime of the advertised prefix (seconds; four hours).
pub const PREFIX_PREFERRED_S: u32 = 14_400;
/// Lifetime of the advertised DNS server (seconds; RFC 8106 5.1: at least 3 ×
/// MaxRtrAdvInterval by default).
pub const RDNSS_LIFETIME_S: u32 = ROUTER_LIFETIME_S as u32;
/// How often unsolicited Router Advertisements go out at most (milliseconds; RFC 4861
/// MaxRtrAdvInterval's default, 600 s).
pub const UNSOLICITED_RA_INTERVAL_MS: u64 = 600_000;
