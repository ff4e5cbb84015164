//! Stateless DHCPv6 at the gateway (RFC 8415 6.1, 18.3.6): an Information-request is
//! answered with a Reply carrying the server's DUID (DUID-LL of the gateway's MAC), the
//! client's own identifier and the DNS server (when DNS is served). The message format is
//! `dhcproto`'s v6 module.
//!
//! Solicit (stateful address assignment) gets no answer, as dnsmasq does when every range
//! is `ra-stateless` (rfc3315.c: clients such as Windows retry for ever when told
//! NoAddrsAvail); counted as [`DropCause::Dhcp`], as every other message type.

use dhcproto::v6::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use wire::{UdpPacket, ip_proto};

use super::ipv6::{DHCPV6_CLIENT_PORT, DHCPV6_SERVER_PORT, Ipv6Header, Packet};
use super::{Gateway, TxAction};
use crate::stats::DropCause;
use crate::wire::MacAddr;

impl Gateway {
    /// A DHCPv6 message (`udp`: its UDP header and payload) from the guest's client port.
    pub(super) fn dhcpv6(&mut self, pkt: Packet, udp: &[u8], reply: &mut [u8]) -> TxAction {
        let Ok(u) = UdpPacket::new_checked(udp) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        if !u.verify_checksum_v6(pkt.src, pkt.dst) {
            return TxAction::Drop(DropCause::Malformed);
        }
        let payload = u.payload();
        if !decodable(payload) {
            return TxAction::Drop(DropCause::Malformed);
        }
        let Ok(msg) = Message::from_bytes(payload) else {
            return TxAction::Drop(DropCause::Malformed);
        };
        let Some(cfg) = self.v6.as_ref().map(|v| v.cfg) else {
            return TxAction::Drop(DropCause::Ipv6NoRoute);
        };
        if msg.msg_type() != MessageType::InformationRequest {
            return TxAction::Drop(DropCause::Dhcp);
        }
        let duid = duid_ll(self.cfg.gateway_mac);
        // RFC 8415 16.12: no IA options; a server identifier, if any, must be ours.
        let opts = msg.opts();
        let ia = [OptionCode::IANA, OptionCode::IATA, OptionCode::IAPD]
            .iter()
            .any(|&c| opts.get(c).is_some());
        let other_server = matches!(opts.get(OptionCode::ServerId), Some(DhcpOption::ServerId(id)) if id[..] != duid);
        if ia || other_server {
            return TxAction::Drop(DropCause::Dhcp);
        }
        let mut r = Message::new_with_id(MessageType::Reply, msg.xid());
        let ro = r.opts_mut();
        ro.insert(DhcpOption::ServerId(duid.to_vec()));
        if let Some(DhcpOption::ClientId(id)) = opts.get(OptionCode::ClientId) {
            ro.insert(DhcpOption::ClientId(id.clone()));
        }
        if self.cfg.dns6 != super::Dns6::Refused {
            ro.insert(DhcpOption::DomainNameServers(vec![cfg.gateway]));
        }
        let Ok(bytes) = r.to_vec() else {
            return TxAction::Drop(DropCause::Dhcp);
        };
        // From the address the client asked (the gateway's, or the router's link-local for
        // All_DHCP_Relay_Agents_and_Servers).
        let src = if pkt.dst.is_multicast() {
            cfg.router
        } else {
            pkt.dst
        };
        let udp_len = ::wire::udp::HEADER_LEN + bytes.len();
        let hdr = Ipv6Header {
            dst_mac: pkt.src_mac,
            src,
            dst: pkt.src,
            next_header: ip_proto::UDP,
            hop_limit: DHCPV6_HOP_LIMIT,
        };
        let (Ok(udp_len16), Some((out, len))) =
            (u16::try_from(udp_len), self.ipv6_reply(reply, hdr, udp_len))
        else {
            return TxAction::Drop(DropCause::TooBig);
        };
        let mut u = UdpPacket::new_unchecked(out);
        u.set_src_port(DHCPV6_SERVER_PORT);
        u.set_dst_port(DHCPV6_CLIENT_PORT);
        u.set_len(udp_len16);
        u.payload_mut().copy_from_slice(&bytes);
        u.fill_checksum_v6(src, pkt.src);
        TxAction::Reply { len }
    }
}

/// The gateway's DHCP unique identifier: DUID-LL (RFC 8415 11.4), hardware type 1
/// (Ethernet), its MAC. (dhcproto's `Duid::link_layer` takes an IPv6 address for the
/// link-layer address, so the ten bytes are laid out here.)
pub(super) fn duid_ll(mac: MacAddr) -> [u8; DUID_LL_LEN] {
    let mut d = [0u8; DUID_LL_LEN];
    d[..2].copy_from_slice(&DUID_TYPE_LL.to_be_bytes());
    d[2..4].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    d[4..].copy_from_slice(&mac.0);
    d
}

/// Whether `dhcproto` 0.15 may decode `msg` without panicking: its option decoder subtracts
/// from an option's length without checking it (Status Code under 2 bytes, Vendor Class and
/// Vendor-specific Information under 4: a debug assertion / overflow panic), and reads
/// fixed-size options at their fixed size whatever their length says (the rest of the walk
/// then differs from ours). So: every fixed-size option has exactly its size, the others
/// their minimum; encapsulated option lists (IA_NA, IA_TA, IA Address, IA_PD, IA Prefix,
/// Vendor-specific Information) are checked the same way, at most [`MAX_NESTING`] deep; a
/// Relay Message (never sent by a client) is refused.
pub(crate) fn decodable(msg: &[u8]) -> bool {
    msg.get(MESSAGE_HEADER_LEN..)
        .is_some_and(|opts| options_decodable(opts, 0))
}

fn options_decodable(mut opts: &[u8], depth: usize) -> bool {
    if depth > MAX_NESTING {
        return false;
    }
    // The decoder stops (without an error) at the first option that does not fit.
    while let [c0, c1, l0, l1, rest @ ..] = opts {
        let code = u16::from_be_bytes([*c0, *c1]);
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let Some(body) = rest.get(..len) else {
            // What the decoder reads of a truncated option: the fixed-size and the
            // length-checked ones fail on their read, so the sizes below still hold.
            return size_ok(code, len);
        };
        if !size_ok(code, len) {
            return false;
        }
        let nested = match code {
            OPTION_IA_NA | OPTION_IA_PD => Some(IA_HEADER_LEN),
            OPTION_IA_TA | OPTION_VENDOR_OPTS => Some(IA_TA_HEADER_LEN),
            OPTION_IAADDR => Some(IAADDR_HEADER_LEN),
            OPTION_IAPREFIX => Some(IAPREFIX_HEADER_LEN),
            _ => None,
        };
        if let Some(at) = nested
            && !body
                .get(at..)
                .is_none_or(|inner| options_decodable(inner, depth + 1))
        {
            return false;
        }
        opts = &rest[len..];
    }
    true
}

/// Whether an option of `code` may have length `len` for the decoder.
fn size_ok(code: u16, len: usize) -> bool {
    match code {
        OPTION_PREFERENCE | OPTION_RECONF_MSG => len == 1,
        OPTION_ELAPSED_TIME => len == 2,
        OPTION_UNICAST => len == 16,
        OPTION_RAPID_COMMIT | OPTION_RECONF_ACCEPT => len == 0,
        OPTION_STATUS_CODE => len >= 2,
        OPTION_VENDOR_CLASS | OPTION_VENDOR_OPTS => len >= 4,
        OPTION_RELAY_MSG => false,
        _ => true,
    }
}

/// Deepest encapsulation accepted (an IA_NA holding an IA Address holding a Status Code is
/// depth 2).
const MAX_NESTING: usize = 3;
/// Message type and transaction id.
const MESSAGE_HEADER_LEN: usize = 4;
/// IA_NA and IA_PD: IAID, T1, T2.
const IA_HEADER_LEN: usize = 12;
/// IA_TA: IAID; Vendor-specific Information: the enterprise number.
const IA_TA_HEADER_LEN: usize = 4;
/// IA Address: address, preferred and valid lifetimes.
const IAADDR_HEADER_LEN: usize = 24;
/// IA Prefix: lifetimes, prefix length, prefix.
const IAPREFIX_HEADER_LEN: usize = 25;
const OPTION_IA_NA: u16 = 3;
const OPTION_IA_TA: u16 = 4;
const OPTION_IAADDR: u16 = 5;
const OPTION_PREFERENCE: u16 = 7;
const OPTION_ELAPSED_TIME: u16 = 8;
const OPTION_RELAY_MSG: u16 = 9;
const OPTION_UNICAST: u16 = 12;
const OPTION_STATUS_CODE: u16 = 13;
const OPTION_RAPID_COMMIT: u16 = 14;
const OPTION_VENDOR_CLASS: u16 = 16;
const OPTION_VENDOR_OPTS: u16 = 17;
const OPTION_RECONF_MSG: u16 = 19;
const OPTION_RECONF_ACCEPT: u16 = 20;
const OPTION_IA_PD: u16 = 25;
const OPTION_IAPREFIX: u16 = 26;
/// DUID type 3: link-layer address.
const DUID_TYPE_LL: u16 = 3;
/// Hardware type 1: Ethernet.
const HTYPE_ETHERNET: u16 = 1;
/// Length of a DUID-LL for Ethernet.
pub(super) const DUID_LL_LEN: usize = 10;
/// Hop limit of the gateway's DHCPv6 replies.
const DHCPV6_HOP_LIMIT: u8 = 64;
