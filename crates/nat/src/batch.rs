//! The batch calls: the table slots of a chunk of packets are read ahead
//! of translating them, so that the cache misses of large tables overlap.
//! The reads take the packet as it is, without validation: a wrong guess
//! only costs a useless read.

use crate::engine::Nat;
use crate::headers::{icmp, ip_protocol, ipv4, udp};
use crate::packet::{get8, get16, get32};
use crate::ports::Ports;
use crate::table::{Keys, PROTO_ICMP, PROTO_TCP, PROTO_UDP};
use crate::tuple::FiveTuple;
use crate::{Direction, Instant, L4Checksum, Verdict};

/// Packets whose table reads are started together by the batch calls.
const PREFETCH: usize = 16;

/// Flow-table size below which the batch calls read nothing ahead.
const PREFETCH_MIN_BYTES: usize = 512 * 1024;

/// Protocol index, source and destination port (ICMP: the echo identifier
/// in both) of a packet, unvalidated. TCP and UDP ports sit at the same
/// offsets.
#[inline(always)]
fn peek_ports(p: &[u8]) -> (u8, u16, u16) {
    let l4 = ipv4::header_len(get8(p, ipv4::field::VERSION_IHL));
    let protocol = match get8(p, ipv4::field::PROTOCOL) {
        ip_protocol::TCP => PROTO_TCP,
        ip_protocol::UDP => PROTO_UDP,
        _ => PROTO_ICMP,
    };
    if protocol == PROTO_ICMP {
        let id = get16(p, l4 + icmp::field::ECHO_IDENT.start);
        (protocol, id, id)
    } else {
        let src = get16(p, l4 + udp::field::SRC_PORT.start);
        let dst = get16(p, l4 + udp::field::DST_PORT.start);
        (protocol, src, dst)
    }
}

/// The internal-side hash of the flow a packet belongs to. Inbound, the
/// internal side comes from the external port's binding.
#[inline(always)]
fn peek_hash(keys: &Keys, ports: &Ports, p: &[u8], direction: Direction) -> u32 {
    let (protocol, src_port, dst_port) = peek_ports(p);
    let src_addr = get32(p, ipv4::field::SRC_ADDR.start);
    match direction {
        Direction::Outbound => {
            let dst_addr = get32(p, ipv4::field::DST_ADDR.start);
            let dst_port = if protocol == PROTO_ICMP { 0 } else { dst_port };
            keys.hash(&FiveTuple {
                protocol,
                src_addr,
                src_port,
                dst_addr,
                dst_port,
            })
        }
        Direction::Inbound => {
            let src_port = if protocol == PROTO_ICMP { 0 } else { src_port };
            let b = ports.binding(protocol, dst_port);
            keys.hash(&FiveTuple {
                protocol,
                src_addr: b.internal_addr,
                src_port: b.internal_port,
                dst_addr: src_addr,
                dst_port: src_port,
            })
        }
    }
}

/// The internal address in the binding of a packet's destination port.
#[inline(always)]
pub(crate) fn peek_binding(ports: &Ports, p: &[u8]) -> u32 {
    let (protocol, _, dst_port) = peek_ports(p);
    ports.binding(protocol, dst_port).internal_addr
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
