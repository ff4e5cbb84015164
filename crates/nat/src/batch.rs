//! The batch calls: the table slots of a chunk of packets are read ahead
//! of translating them, so that the cache misses of large tables overlap.
//! The reads take the packet as it is, without validation: a wrong guess
//! only costs a useless read.

use crate::family::Family;
use crate::packet::{get8, get16};
use crate::ports::Ports;
use crate::table::{Keys, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::translator::{Engine, Nat, is_v6};
use crate::tuple::FiveTuple;
use crate::{Direction, Instant, L4Checksum, Verdict};
use wire::{icmpv4, ip_proto, udp};

/// Packets whose table reads are started together by the batch calls.
const PREFETCH: usize = 32;

/// Flow-table size below which the batch calls read nothing ahead.
const PREFETCH_MIN_BYTES: usize = 512 * 1024;

/// The internal-side hash of the flow a packet belongs to. Inbound, the
/// internal side comes from the external port's binding.
#[inline(always)]
fn peek_hash<F: Family>(
    keys: &Keys,
    ports: &Ports<F::Addr>,
    p: &[u8],
    direction: Direction,
) -> u32 {
    let l4 = F::peek_l4(p);
    let src_addr = F::read_addr(p, F::SRC_AT);
    let dst_addr = F::read_addr(p, F::DST_AT);
    let outbound = direction == Direction::Outbound;
    // TCP and UDP ports sit at the same offsets.
    let (protocol, a, b) = match get8(p, F::PROTOCOL_AT) {
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
pub(crate) fn peek_binding<F: Family>(ports: &Ports<F::Addr>, p: &[u8]) -> F::Addr {
    let l4 = F::peek_l4(p);
    let (protocol, port) = match get8(p, F::PROTOCOL_AT) {
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
        // While a table is in the L2 cache the reads would only add work.
        let ahead4 = self.v4.table.flows.memory() >= PREFETCH_MIN_BYTES;
        let ahead6 = self.v6.table.flows.memory() >= PREFETCH_MIN_BYTES;
        for (c, (ps, vs)) in packets
            .chunks_mut(PREFETCH)
            .zip(verdicts.chunks_mut(PREFETCH))
            .enumerate()
        {
            if ahead4 && !ahead6 {
                // IPv4 only (an IPv6 packet read as IPv4 costs a useless read).
                // The hashes first, then the slot reads back to back: a read that
                // misses holds the reorder buffer until its line comes, so reads
                // with a hash computation between them (~30 instructions each)
                // started only about ten at a time.
                let mut hashes = [0u32; PREFETCH];
                for (h, p) in hashes.iter_mut().zip(ps.iter_mut()) {
                    *h = self.v4.peek_hash(p.as_mut(), direction);
                }
                let mut acc = 0u64;
                for &h in hashes.iter().take(ps.len()) {
                    acc ^= self.v4.table.flows.peek(h);
                }
                core::hint::black_box(acc);
            } else if ahead6 {
                // Per packet the family's hash, then the reads as above; a
                // packet of a family whose table is small reads nothing.
                let mut hashes = [None; PREFETCH];
                for (h, p) in hashes.iter_mut().zip(ps.iter_mut()) {
                    let p = p.as_mut();
                    *h = if is_v6(p) {
                        Some((true, self.v6.peek_hash(p, direction)))
                    } else if ahead4 {
                        Some((false, self.v4.peek_hash(p, direction)))
                    } else {
                        None
                    };
                }
                let mut acc = 0u64;
                for h in hashes.iter().take(ps.len()) {
                    acc ^= match *h {
                        Some((true, h)) => self.v6.table.flows.peek(h),
                        Some((false, h)) => self.v4.table.flows.peek(h),
                        None => 0,
                    };
                }
                core::hint::black_box(acc);
            }
            let l4 = l4.get(c * PREFETCH..).unwrap_or(&[]);
            for (i, (p, v)) in ps.iter_mut().zip(vs.iter_mut()).enumerate() {
                let partial = l4.get(i) == Some(&L4Checksum::Partial);
                let p = p.as_mut();
                // The version decides once here (this loop's prefetch read the byte): an IPv6
                // packet goes straight to NAT66 instead of failing NAT44's parse first.
                *v = match (direction, is_v6(p)) {
                    (Direction::Outbound, false) => self.outbound_and_count(p, now, partial),
                    (Direction::Inbound, false) => self.inbound_and_count(p, now, partial),
                    (Direction::Outbound, true) => self.v6.outbound_and_count(p, now, partial),
                    (Direction::Inbound, true) => self.v6.inbound_and_count(p, now, partial),
                };
            }
        }
    }
}

impl<F: Family> Engine<F> {
    /// The hash of a packet's lookup (inbound: after reading its port
    /// binding), whose home slot the batch reads ahead
    /// ([`crate::table::FlowTable::peek`]) for a few packets at once: the
    /// reads are independent and back to back in the instruction stream, so
    /// the CPU overlaps their misses; [`Nat::outbound`] and [`Nat::inbound`]
    /// then find the lines in the cache.
    #[inline(always)]
    fn peek_hash(&self, p: &[u8], direction: Direction) -> u32 {
        peek_hash::<F>(&self.table.keys, &self.ports, p, direction)
    }
}
