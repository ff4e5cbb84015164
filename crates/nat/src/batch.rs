//! The batch calls: the table slots of a chunk of packets are read ahead
//! of translating them, so that the cache misses of large tables overlap.
//! The reads take the packet as it is, without validation: a wrong guess
//! only costs a useless read.

use crate::packet::{self, get8, get16, get32};
use crate::ports::Ports;
use crate::table::{Keys, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::translator::Nat;
use crate::tuple::FiveTuple;
use crate::{Direction, Instant, L4Checksum, Verdict};
use wire::{icmpv4, ip_proto, ipv4, udp};

/// Packets whose table reads are started together by the batch calls.
const PREFETCH: usize = 16;

/// Flow-table size below which the batch calls read nothing ahead.
const PREFETCH_MIN_BYTES: usize = 512 * 1024;

/// The internal-side hash of the flow a packet belongs to. Inbound, the
/// internal side comes from the external port's binding.
#[inline(always)]
fn peek_hash(keys: &Keys, ports: &Ports, p: &[u8], direction: Direction) -> u32 {
    let l4 = packet::ipv4_header_len(get8(p, ipv4::field::VERSION_IHL));
    let src_addr = get32(p, ipv4::field::SRC_ADDR.start);
    let dst_addr = get32(p, ipv4::field::DST_ADDR.start);
    let outbound = direction == Direction::Outbound;
    // TCP and UDP ports sit at the same offsets.
    let (protocol, a, b) = match get8(p, ipv4::field::PROTOCOL) {
        ip_proto::TCP => (PROTO_TCP, src_port(p, l4), dst_port(p, l4)),
        ip_proto::UDP => (PROTO_UDP, src_port(p, l4), dst_port(p, l4)),
        _ if outbound => (PROTO_ICMP, echo_id(p, l4), 0),
        _ => (PROTO_ICMP, 0, echo_id(p, l4)),
    };
    if outbound {
        keys.hash(&FiveTuple {
            protocol,
            src_addr,
            src_port: a,
            dst_addr,
            dst_port: b,
        })
    } else {
        let binding = ports.binding(protocol, b);
        keys.hash(&FiveTuple {
            protocol,
            src_addr: binding.internal_addr,
            src_port: binding.internal_port,
            dst_addr: src_addr,
            dst_port: a,
        })
    }
}

/// The internal address in the binding of a packet's destination port.
#[inline(always)]
pub(crate) fn peek_binding(ports: &Ports, p: &[u8]) -> u32 {
    let l4 = packet::ipv4_header_len(get8(p, ipv4::field::VERSION_IHL));
    let (protocol, port) = match get8(p, ipv4::field::PROTOCOL) {
        ip_proto::TCP => (PROTO_TCP, dst_port(p, l4)),
        ip_proto::UDP => (PROTO_UDP, dst_port(p, l4)),
        _ => (PROTO_ICMP, echo_id(p, l4)),
    };
    ports.binding(protocol, port).internal_addr
}

#[inline(always)]
fn src_port(p: &[u8], l4: usize) -> u16 {
    get16(p, l4 + udp::field::SRC_PORT.start)
}

#[inline(always)]
fn dst_port(p: &[u8], l4: usize) -> u16 {
    get16(p, l4 + udp::field::DST_PORT.start)
}

#[inline(always)]
fn echo_id(p: &[u8], l4: usize) -> u16 {
    get16(p, l4 + icmpv4::field::ECHO_IDENT.start)
}

impl Nat {
    /// The batch calls: the table slots of each chunk of packets are read
    /// (their misses start together and overlap) before the chunk is
    /// translated. (Reading chunk k + 1 ahead of translating chunk k measured
    /// slower: the pending reads stall the translation behind them.)
    #[inline(always)]
    pub(crate) fn batch<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        l4: &[L4Checksum],
        now: Instant,
        verdicts: &mut [Verdict],
        direction: Direction,
    ) {
        // While the table is in the L2 cache the reads would only add work.
        let ahead = self.table.flows.memory() >= PREFETCH_MIN_BYTES;
        for (c, (ps, vs)) in packets
            .chunks_mut(PREFETCH)
            .zip(verdicts.chunks_mut(PREFETCH))
            .enumerate()
        {
            if ahead {
                self.prefetch(ps, direction);
            }
            let l4 = l4.get(c * PREFETCH..).unwrap_or(&[]);
            if l4.is_empty() {
                for (p, v) in ps.iter_mut().zip(vs.iter_mut()) {
                    *v = match direction {
                        Direction::Outbound => self.outbound(p.as_mut(), now),
                        Direction::Inbound => self.inbound(p.as_mut(), now),
                    };
                }
                continue;
            }
            for (i, (p, v)) in ps.iter_mut().zip(vs.iter_mut()).enumerate() {
                let partial = l4.get(i) == Some(&L4Checksum::Partial);
                *v = match direction {
                    Direction::Outbound => self.outbound_and_count(p.as_mut(), now, partial),
                    Direction::Inbound => self.inbound_and_count(p.as_mut(), now, partial),
                };
            }
        }
    }

    /// Starts the cache misses of a few packets' lookups at once: reads each
    /// packet's home slot (inbound: after its port binding). The reads are
    /// independent and close together in the instruction stream, so the CPU
    /// overlaps their misses; [`Nat::outbound`] and [`Nat::inbound`] then
    /// find the lines in the cache.
    #[inline(always)]
    fn prefetch<P: AsMut<[u8]>>(&mut self, ps: &mut [P], direction: Direction) {
        let mut acc = 0u64;
        for p in ps.iter_mut() {
            let hash = peek_hash(&self.table.keys, &self.ports, p.as_mut(), direction);
            acc ^= self.table.flows.peek(hash);
        }
        core::hint::black_box(acc);
    }
}
