//! ICMP errors (RFC 5508): the packet an error quotes is found in the table
//! like a packet of the other direction, and the error is rewritten both
//! outside (addresses) and inside (the quoted IPv4 and transport headers),
//! each checksum fixed incrementally.

use crate::packet::{self, Ipv4Header, Transport, get8, get16, get32, put16, put32};
use crate::table::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, state};
use crate::translator::Nat;
use crate::tuple::{Endpoint, FiveTuple, FourTuple};
use crate::{DropReason, Verdict};
use wire::checksum::{self, Delta};
use wire::{icmpv4, ip_proto, ipv4, tcp, udp};

/// An ICMP error's embedded packet (the part the NAT translates).
#[derive(Clone, Copy, Debug)]
struct Embedded {
    /// Offset of the embedded IPv4 header in the outer packet.
    ip_at: usize,
    /// Offset of the embedded transport header.
    transport_at: usize,
    /// Protocol index.
    protocol: u8,
    /// Which transport header it has.
    transport: Transport,
    /// Its addresses and ports.
    tuple: FourTuple,
}

impl Embedded {
    /// Parses the packet embedded in an ICMP error.
    fn parse(p: &[u8], h: &Ipv4Header) -> Option<Embedded> {
        use ipv4::field;
        let ip_at = h.header_len + icmpv4::field::DATA;
        let end = h.total_len;
        let v = get8(p, ip_at + field::VERSION_IHL);
        if end < ip_at + ipv4::HEADER_LEN || v >> 4 != 4 {
            return None;
        }
        let header_len = packet::ipv4_header_len(v);
        let l4 = ip_at + header_len;
        if header_len < ipv4::HEADER_LEN
            || end < l4 + icmpv4::ERROR_QUOTED_DATA_LEN
            || get16(p, ip_at + field::FLAGS_FRAGMENT.start) & ipv4::FRAGMENT_OFFSET != 0
        {
            return None;
        }
        let src_addr = get32(p, ip_at + field::SRC_ADDR.start);
        let dst_addr = get32(p, ip_at + field::DST_ADDR.start);
        let ports = || {
            (
                get16(p, l4 + udp::field::SRC_PORT.start),
                get16(p, l4 + udp::field::DST_PORT.start),
            )
        };
        let id = || get16(p, l4 + icmpv4::field::ECHO_IDENT.start);
        let (protocol, transport, (src_port, dst_port)) = match get8(p, ip_at + field::PROTOCOL) {
            ip_proto::TCP => (PROTO_TCP, Transport::Tcp, ports()),
            ip_proto::UDP => (PROTO_UDP, Transport::Udp, ports()),
            ip_proto::ICMP => match get8(p, l4 + icmpv4::field::TYPE) {
                // Our echo request went out: the identifier is the source "port".
                icmpv4::ECHO_REQUEST => (PROTO_ICMP, Transport::EchoSourceId, (id(), 0)),
                // An echo reply came in: the identifier is the destination "port".
                icmpv4::ECHO_REPLY => (PROTO_ICMP, Transport::EchoDestinationId, (0, id())),
                _ => return None,
            },
            _ => return None,
        };
        Some(Embedded {
            ip_at,
            transport_at: l4,
            protocol,
            transport,
            tuple: FourTuple {
                src_addr,
                src_port,
                dst_addr,
                dst_port,
            },
        })
    }
}

/// Whether an ICMP error's own checksum and its embedded IPv4 header
/// checksum are valid (RFC 5508 REQ-3, REQ-3a). The embedded transport
/// checksum is not checked (REQ-3c): the quote is often truncated.
fn checksums_ok(p: &[u8], h: &Ipv4Header, e: &Embedded) -> bool {
    let icmp = p
        .get(h.header_len..h.total_len)
        .map(|b| checksum::sum(b, 0));
    let embedded = p.get(e.ip_at..e.transport_at).map(|b| checksum::sum(b, 0));
    matches!((icmp, embedded), (Some(a), Some(b)) if checksum::fold(a) == 0xffff && checksum::fold(b) == 0xffff)
}

/// Rewrites an ICMP error: outer addresses to `outer_src`/`outer_dst`, the
/// embedded packet's addresses and ports to `new`, fixing the outer IPv4,
/// embedded IPv4, embedded transport and outer ICMP checksums incrementally.
fn rewrite_error(
    p: &mut [u8],
    h: &Ipv4Header,
    outer_src: u32,
    outer_dst: u32,
    e: &Embedded,
    new: FourTuple,
) {
    use ipv4::field;
    let mut ipd = Delta::default();
    ipd.dword(h.src_addr, outer_src);
    ipd.dword(h.dst_addr, outer_dst);
    put32(p, field::SRC_ADDR.start, outer_src);
    put32(p, field::DST_ADDR.start, outer_dst);
    put16(
        p,
        field::CHECKSUM.start,
        ipd.apply(get16(p, field::CHECKSUM.start)),
    );

    let old = e.tuple;
    // Every word below sits at an even offset from the ICMP header, so each
    // change feeds the outer ICMP checksum as one 16-bit word.
    let mut icmp_delta = Delta::default();
    let mut ed = Delta::default();
    ed.dword(old.src_addr, new.src_addr);
    ed.dword(old.dst_addr, new.dst_addr);
    put32(p, e.ip_at + field::SRC_ADDR.start, new.src_addr);
    put32(p, e.ip_at + field::DST_ADDR.start, new.dst_addr);
    icmp_delta = icmp_delta.add(ed);
    let c = get16(p, e.ip_at + field::CHECKSUM.start);
    let c2 = ed.apply(c);
    put16(p, e.ip_at + field::CHECKSUM.start, c2);
    icmp_delta.word(c, c2);
    let l4 = e.transport_at;
    match e.transport {
        Transport::Tcp | Transport::Udp => {
            let mut pd = Delta::default();
            pd.word(old.src_port, new.src_port);
            pd.word(old.dst_port, new.dst_port);
            put16(p, l4 + udp::field::SRC_PORT.start, new.src_port);
            put16(p, l4 + udp::field::DST_PORT.start, new.dst_port);
            icmp_delta = icmp_delta.add(pd);
            // The embedded packet may be truncated: fix its transport
            // checksum only when the field is present.
            let field = if e.transport == Transport::Tcp {
                tcp::field::CHECKSUM
            } else {
                udp::field::CHECKSUM
            };
            let at = l4 + field.start;
            if l4 + field.end <= h.total_len {
                let c = get16(p, at);
                let c2 = if e.transport == Transport::Tcp {
                    ed.add(pd).apply(c)
                } else {
                    ed.add(pd).apply_udp(c)
                };
                put16(p, at, c2);
                icmp_delta.word(c, c2);
            }
        }
        t @ (Transport::EchoSourceId | Transport::EchoDestinationId) => {
            let (o, n) = if t == Transport::EchoSourceId {
                (old.src_port, new.src_port)
            } else {
                (old.dst_port, new.dst_port)
            };
            let mut d = Delta::default();
            d.word(o, n);
            put16(p, l4 + icmpv4::field::ECHO_IDENT.start, n);
            icmp_delta = icmp_delta.add(d);
            let c = get16(p, l4 + icmpv4::field::CHECKSUM.start);
            let c2 = d.apply(c);
            put16(p, l4 + icmpv4::field::CHECKSUM.start, c2);
            icmp_delta.word(c, c2);
        }
        // Embedded packets are never partial; a bare one has no ports.
        Transport::AddressesOnly | Transport::TcpPartial | Transport::UdpPartial => {}
    }
    let at = h.header_len + icmpv4::field::CHECKSUM.start;
    put16(p, at, icmp_delta.apply(get16(p, at)));
}

impl Nat {
    /// An ICMP error from inside, about a packet that came in (RFC 5508).
    pub(crate) fn outbound_icmp_error(
        &mut self,
        p: &mut [u8],
        h: &Ipv4Header,
        now: u64,
    ) -> Verdict {
        let Some(e) = Embedded::parse(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !checksums_ok(p, h, &e) {
            return Verdict::Drop(DropReason::Malformed);
        }
        // The embedded packet went remote -> guest: its destination is ours.
        let t = e.tuple;
        let key = FiveTuple {
            protocol: e.protocol,
            src_addr: t.dst_addr,
            src_port: t.dst_port,
            dst_addr: t.src_addr,
            dst_port: t.src_port,
        };
        let external_addr = self.settings.external_addr;
        // The error must go back to the quoted packet's source (as every
        // ICMP error does, RFC 1812 section 4.3.2.3), and that packet must
        // belong to a flow of this guest: the flow keyed by the
        // quoted tuple turned around. An endpoint-independent mapping alone
        // is not enough: it would let the guest quote any remote.
        if h.dst_addr != t.src_addr {
            return Verdict::Drop(DropReason::IcmpForgedQuote);
        }
        let hash = self.table.keys.hash(&key);
        let found = self.table.flows.find(hash, |f| f.has_key(&key));
        // A flow still in the table counts even if idle past its timeout:
        // a flow a port forward created lives by the guest's answers.
        let Some(f) = found.and_then(|i| self.table.flows.get(i as usize)) else {
            return Verdict::Drop(DropReason::IcmpForgedQuote);
        };
        let new = FourTuple {
            src_addr: f.remote_addr,
            src_port: f.remote_port,
            dst_addr: external_addr,
            dst_port: f.external_port,
        };
        // `h.dst_addr` is the quoted source, the flow's original destination.
        let outer_dst = f.remote_addr;
        if outer_dst != external_addr {
            rewrite_error(p, h, external_addr, outer_dst, &e, new);
            return Verdict::Forward;
        }
        // A hairpinned error (RFC 5508 REQ-7): the offending packet came from
        // another guest through the external address. Translate it as an
        // outbound error, then as an inbound one; restore it on a drop.
        // rewrite_error() touches at most the outer IPv4 and ICMP headers,
        // the quoted IPv4 header and 20 quoted transport bytes.
        let mut saved = [0u8; 2 * ipv4::MAX_HEADER_LEN + icmpv4::HEADER_LEN + tcp::HEADER_LEN];
        let n = p.len().min(saved.len());
        if let (Some(d), Some(s)) = (saved.get_mut(..n), p.get(..n)) {
            d.copy_from_slice(s);
        }
        rewrite_error(p, h, external_addr, outer_dst, &e, new);
        let v = match packet::parse(p) {
            Ok(h2) => self.inbound_icmp_error(p, &h2, now),
            Err(r) => Verdict::Drop(r),
        };
        match v {
            Verdict::Forward => Verdict::Hairpin,
            v => {
                if let (Some(d), Some(s)) = (p.get_mut(..n), saved.get(..n)) {
                    d.copy_from_slice(s);
                }
                v
            }
        }
    }

    /// An ICMP error from outside, about a packet we sent (RFC 5508).
    pub(crate) fn inbound_icmp_error(&mut self, p: &mut [u8], h: &Ipv4Header, now: u64) -> Verdict {
        let Some(e) = Embedded::parse(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !checksums_ok(p, h, &e) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let t = e.tuple;
        if t.src_addr != self.settings.external_addr {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        }
        let remote = Endpoint {
            addr: t.dst_addr,
            port: t.dst_port,
        };
        let found = self.find_inbound(e.protocol, t.src_port, remote).1;
        let Some((_, f)) = found.filter(|(_, f)| f.expires > now) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        let new = FourTuple {
            src_addr: f.internal_addr,
            src_port: f.internal_port,
            dst_addr: f.original_addr,
            dst_port: f.original_port,
        };
        let outer_src = if f.state & state::REDIRECTED != 0 && h.src_addr == f.remote_addr {
            f.original_addr
        } else {
            h.src_addr
        };
        rewrite_error(p, h, outer_src, f.internal_addr, &e, new);
        Verdict::Forward
    }
}
