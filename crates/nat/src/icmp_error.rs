//! ICMP errors (RFC 5508): the packet an error quotes is found in the table
//! like a packet of the other direction, and the error is rewritten both
//! outside (addresses) and inside (the quoted IPv4 and transport headers),
//! each checksum fixed incrementally.

use crate::family::{Addr, Family};
use crate::packet::{IpHeader, Transport, get8, get16, put16};
use crate::table::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, remote_of, state};
use crate::translator::Engine;
use crate::tuple::{Endpoint, FiveTuple, FourTuple};
use crate::{DropReason, Verdict};
use wire::checksum::Delta;
use wire::{icmpv4, ip_proto, ipv4, tcp, udp};

/// An ICMP error's embedded packet (the part the NAT translates).
#[derive(Clone, Copy, Debug)]
struct Embedded<A> {
    /// Offset of the embedded IPv4 header in the outer packet.
    ip_at: usize,
    /// Offset of the embedded transport header.
    transport_at: usize,
    /// Protocol index.
    protocol: u8,
    /// Which transport header it has.
    transport: Transport,
    /// Its addresses and ports.
    tuple: FourTuple<A>,
}

impl<A: Addr> Embedded<A> {
    /// The packet quoted in the ICMP error `p` (whose outer header is `h`).
    fn parse<F: Family<Addr = A>>(p: &[u8], h: &IpHeader<A>) -> Option<Embedded<A>> {
        let ip_at = h.header_len + icmpv4::field::DATA;
        let q = F::parse_quoted(p, ip_at, h.total_len)?;
        let l4 = ip_at + q.header_len;
        let (src_addr, dst_addr) = (q.src_addr, q.dst_addr);
        let ports = || {
            (
                get16(p, l4 + udp::field::SRC_PORT.start),
                get16(p, l4 + udp::field::DST_PORT.start),
            )
        };
        let id = || get16(p, l4 + icmpv4::field::ECHO_IDENT.start);
        let (protocol, transport, (src_port, dst_port)) = match q.protocol {
            ip_proto::TCP => (PROTO_TCP, Transport::Tcp, ports()),
            ip_proto::UDP => (PROTO_UDP, Transport::Udp, ports()),
            proto if proto == F::ICMP => match get8(p, l4 + icmpv4::field::TYPE) {
                // Our echo request went out: the identifier is the source "port".
                t if t == F::ECHO_REQUEST => (PROTO_ICMP, Transport::EchoSourceId, (id(), 0)),
                // An echo reply came in: the identifier is the destination "port".
                t if t == F::ECHO_REPLY => (PROTO_ICMP, Transport::EchoDestinationId, (0, id())),
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
/// checksum are valid (RFC 5508 REQ-3, REQ-3a; ICMPv6: its checksum with
/// the pseudo-header, RFC 4443 section 2.3). The embedded transport
/// checksum is not checked (REQ-3c): the quote is often truncated.
fn checksums_ok<F: Family>(p: &[u8], h: &IpHeader<F::Addr>, e: &Embedded<F::Addr>) -> bool {
    F::icmp_error_checksums_ok(p, h, e.ip_at, e.transport_at)
}

/// Rewrites an ICMP error: outer addresses to `outer_src`/`outer_dst`, the
/// embedded packet's addresses and ports to `new`, fixing the outer IPv4,
/// embedded IPv4, embedded transport and outer ICMP checksums incrementally
/// (ICMPv6: the outer address change feeds the ICMP checksum too).
fn rewrite_error<F: Family>(
    p: &mut [u8],
    h: &IpHeader<F::Addr>,
    outer_src: F::Addr,
    outer_dst: F::Addr,
    e: &Embedded<F::Addr>,
    new: FourTuple<F::Addr>,
) {
    let mut ipd = Delta::default();
    F::Addr::delta(&mut ipd, h.src_addr, outer_src);
    F::Addr::delta(&mut ipd, h.dst_addr, outer_dst);
    F::write_addrs(p, h.header_len, outer_src, outer_dst, ipd);

    let old = e.tuple;
    // Every word below sits at an even offset from the ICMP header, so each
    // change feeds the outer ICMP checksum as one 16-bit word.
    let mut icmp_delta = if F::ICMP_PSEUDO {
        ipd
    } else {
        Delta::default()
    };
    let (ed, quoted_delta) = F::rewrite_quoted(
        p,
        e.ip_at,
        (old.src_addr, old.dst_addr),
        (new.src_addr, new.dst_addr),
    );
    icmp_delta = icmp_delta.add(quoted_delta);
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
                    crate::packet::udp_checksum::<F>(ed.add(pd), c)
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
            // A quoted ICMPv6 echo's checksum covers its pseudo-header, which is not part
            // of the outer message: the outer checksum follows the identifier's bytes only
            // (the quoted addresses' bytes are in `quoted_delta` already).
            let mut d = if F::ICMP_PSEUDO { ed } else { Delta::default() };
            d.word(o, n);
            put16(p, l4 + icmpv4::field::ECHO_IDENT.start, n);
            icmp_delta.word(o, n);
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

impl<F: Family> Engine<F> {
    /// An ICMP error from inside, about a packet that came in (RFC 5508).
    pub(crate) fn outbound_icmp_error(
        &mut self,
        p: &mut [u8],
        h: IpHeader<F::Addr>,
        now: u64,
    ) -> Verdict {
        let h = &h;
        let Some(e) = Embedded::parse::<F>(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !checksums_ok::<F>(p, h, &e) {
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
        let original = Endpoint {
            addr: f.original_addr(),
            port: f.original_port,
        };
        let remote = remote_of(f, original, &self.ports.redirected);
        let new = FourTuple {
            src_addr: remote.addr,
            src_port: remote.port,
            dst_addr: external_addr,
            dst_port: f.external_port,
        };
        // `h.dst_addr` is the quoted source, the flow's original destination.
        let outer_dst = remote.addr;
        if outer_dst != external_addr {
            rewrite_error::<F>(p, h, external_addr, outer_dst, &e, new);
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
        rewrite_error::<F>(p, h, external_addr, outer_dst, &e, new);
        let v = match F::parse(p) {
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
    pub(crate) fn inbound_icmp_error(
        &mut self,
        p: &mut [u8],
        h: &IpHeader<F::Addr>,
        now: u64,
    ) -> Verdict {
        let Some(e) = Embedded::parse::<F>(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !checksums_ok::<F>(p, h, &e) {
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
            src_addr: f.internal_addr(),
            src_port: f.internal_port,
            dst_addr: f.original_addr(),
            dst_port: f.original_port,
        };
        let outer_src = if f.state & state::REDIRECTED != 0
            && h.src_addr
                == remote_of(
                    &f,
                    Endpoint {
                        addr: new.dst_addr,
                        port: new.dst_port,
                    },
                    &self.ports.redirected,
                )
                .addr
        {
            f.original_addr()
        } else {
            h.src_addr
        };
        rewrite_error::<F>(p, h, outer_src, f.internal_addr(), &e, new);
        Verdict::Forward
    }
}
