//! External ports: who holds each one ([`Binding`], per protocol in a
//! [`PortTable`]), how a new mapping gets one (RFC 4787 REQ-1, 3, 4), and
//! the port forwards that reserve one.

use std::collections::HashMap;

use crate::family::Addr;
use crate::table::{Keys, PROTO_ICMP, SeededState};
use crate::tuple::{Endpoint, EndpointKey, FiveTuple, PortKey};
use crate::{DropReason, RuleError};

/// Bits of the even ports in a 64-port bitmap word.
const EVEN_PORTS: u64 = 0x5555_5555_5555_5555;

/// What holds an external port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum PortUse {
    /// Nothing.
    #[default]
    Free,
    /// Mappings created by outbound traffic (or the sessions of a removed
    /// forward); freed with its last flow.
    Mapping,
    /// A port forward.
    Forward,
}

/// The external port of a mapping and who owns it: 8 bytes, 8 to a cache
/// line (the inbound path reads one per packet).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Binding<A> {
    /// The internal endpoint the port leads to.
    pub(crate) internal_addr: A,
    /// Its port or ICMP identifier.
    pub(crate) internal_port: u16,
    /// What holds the port.
    pub(crate) used_by: PortUse,
    /// The port belongs to one redirected flow (see [`Ports::redirected`]).
    pub(crate) redirect: bool,
}

/// Per-protocol external ports: who holds each, and a bitmap of used ones.
#[derive(Clone, Debug, Default)]
pub(crate) struct PortTable<A> {
    bindings: Vec<Binding<A>>,
    /// Flows using each port (apart from `bindings`: the hot path never reads it).
    refs: Vec<u32>,
    used: Vec<u64>,
}

impl<A: Addr> PortTable<A> {
    /// Allocates the table on first use.
    pub(crate) fn ensure(&mut self) {
        if self.bindings.is_empty() {
            self.bindings = vec![Binding::default(); 65536];
            self.refs = vec![0; 65536];
            self.used = vec![0; 1024];
            // Port 0 is never handed out.
            self.mark(0, true);
        }
    }
    #[inline(always)]
    pub(crate) fn get(&self, port: u16) -> Option<&Binding<A>> {
        self.bindings.get(usize::from(port))
    }
    #[inline]
    pub(crate) fn get_mut(&mut self, port: u16) -> Option<&mut Binding<A>> {
        self.bindings.get_mut(usize::from(port))
    }
    /// Number of ports held (by a mapping or a forward), port 0 not counted.
    pub(crate) fn in_use(&self) -> usize {
        let marked: u32 = self.used.iter().map(|w| w.count_ones()).sum();
        (marked as usize).saturating_sub(usize::from(!self.used.is_empty()))
    }

    /// Number of flows on `port`.
    #[inline]
    pub(crate) fn refs(&self, port: u16) -> u32 {
        self.refs.get(usize::from(port)).copied().unwrap_or(0)
    }
    #[inline]
    pub(crate) fn refs_mut(&mut self, port: u16) -> Option<&mut u32> {
        self.refs.get_mut(usize::from(port))
    }
    fn used_by(&self, port: u16) -> PortUse {
        self.get(port).map_or(PortUse::Free, |b| b.used_by)
    }
    #[inline]
    pub(crate) fn set(&mut self, port: u16, b: Binding<A>) {
        if let Some(s) = self.get_mut(port) {
            *s = b;
        }
        self.mark(port, true);
    }
    pub(crate) fn free(&mut self, port: u16) {
        if let Some(s) = self.get_mut(port) {
            *s = Binding::default();
        }
        if let Some(r) = self.refs_mut(port) {
            *r = 0;
        }
        self.mark(port, false);
    }
    #[inline]
    fn mark(&mut self, port: u16, used: bool) {
        if let Some(w) = self.used.get_mut(usize::from(port >> 6)) {
            let bit = 1u64 << (port & 63);
            if used { *w |= bit } else { *w &= !bit }
        }
    }
    fn is_free(&self, port: u16) -> bool {
        self.used
            .get(usize::from(port >> 6))
            .is_some_and(|w| w & (1u64 << (port & 63)) == 0)
    }
    /// First free port in `lo..=hi` among the bits set in `mask` (applied to
    /// each 64-port word).
    fn first_free(&self, lo: u32, hi: u32, mask: u64) -> Option<u16> {
        if lo > hi || hi > 65535 {
            return None;
        }
        let mut w = lo / 64;
        while w <= hi / 64 {
            let mut free = !self.used.get(w as usize).copied().unwrap_or(u64::MAX) & mask;
            if w == lo / 64 {
                free &= u64::MAX << (lo % 64);
            }
            if w == hi / 64 && hi % 64 < 63 {
                free &= (1u64 << (hi % 64 + 1)) - 1;
            }
            if free != 0 {
                return u16::try_from(w * 64 + free.trailing_zeros()).ok();
            }
            w += 1;
        }
        None
    }
    fn memory(&self) -> usize {
        self.bindings.capacity() * core::mem::size_of::<Binding<A>>()
            + self.refs.capacity() * 4
            + self.used.capacity() * 8
    }
}

/// A redirected flow's two destinations (see [`Ports::redirected`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Redirected<A> {
    /// The destination the guest wrote.
    pub(crate) written: Endpoint<A>,
    /// The redirect's target, the flow's real remote.
    pub(crate) remote: Endpoint<A>,
}

/// The external ports of all protocols and the indexes that lead to them.
#[derive(Debug)]
pub(crate) struct Ports<A> {
    /// One table per protocol index.
    pub(crate) tables: [PortTable<A>; 3],
    /// The external port of each internal endpoint's (non-redirected)
    /// mapping or forward.
    pub(crate) by_internal: HashMap<EndpointKey<A>, u16, SeededState>,
    /// External port of each redirected flow -> the destination the guest
    /// wrote (the flow's internal-side key part) and the redirect's target
    /// (its real remote, which an IPv6 slot does not hold). One entry per
    /// redirected flow: bounded by the flow caps, counted in `memory`.
    pub(crate) redirected: HashMap<PortKey, Redirected<A>, SeededState>,
    /// Port forwards by external port.
    forwards: HashMap<PortKey, Endpoint<A>, SeededState>,
}

impl<A: Addr> Ports<A> {
    /// No port in use.
    pub(crate) fn new(hasher: SeededState) -> Ports<A> {
        Ports {
            tables: [
                PortTable::default(),
                PortTable::default(),
                PortTable::default(),
            ],
            by_internal: HashMap::with_hasher(hasher),
            redirected: HashMap::with_hasher(hasher),
            forwards: HashMap::with_hasher(hasher),
        }
    }

    /// The port table of protocol index `protocol`.
    #[inline(always)]
    /// External ports held now, every protocol together.
    pub(crate) fn in_use(&self) -> usize {
        self.tables.iter().map(PortTable::in_use).sum()
    }

    pub(crate) fn table(&self, protocol: u8) -> Option<&PortTable<A>> {
        self.tables.get(usize::from(protocol))
    }

    /// The port table of protocol index `protocol`.
    #[inline(always)]
    pub(crate) fn table_mut(&mut self, protocol: u8) -> Option<&mut PortTable<A>> {
        self.tables.get_mut(usize::from(protocol))
    }

    /// The binding of `port` (a free one if the table is not allocated).
    #[inline(always)]
    pub(crate) fn binding(&self, protocol: u8, port: u16) -> Binding<A> {
        self.table(protocol)
            .and_then(|t| t.get(port))
            .copied()
            .unwrap_or_default()
    }

    /// Bytes of the port tables.
    pub(crate) fn memory(&self) -> usize {
        self.tables.iter().map(PortTable::memory).sum::<usize>()
            + self.redirected.capacity() * core::mem::size_of::<(PortKey, Redirected<A>)>()
    }

    /// Picks an external port for a new mapping of (`protocol`, `addr`,
    /// `port`) in `range` (for ports ≥ 1024 and ICMP identifiers).
    pub(crate) fn allocate(
        &mut self,
        keys: &Keys,
        range: (u16, u16),
        protocol: u8,
        addr: A,
        port: u16,
    ) -> Result<u16, DropReason> {
        let Some(pt) = self.table_mut(protocol) else {
            return Err(DropReason::PortsExhausted);
        };
        pt.ensure();
        // RFC 4787 REQ-3: well-known source ports map into 1..=1023, others
        // into the configured range; ICMP identifiers use the range.
        let (lo, hi) = if protocol != PROTO_ICMP && port < 1024 {
            (1u16, 1023u16)
        } else {
            range
        };
        let keep = protocol == PROTO_ICMP || (lo..=hi).contains(&port);
        if keep && port != 0 && pt.is_free(port) {
            return Ok(port);
        }
        // Otherwise start at a keyed-random point of the range and take the
        // next free port: unpredictable, never a port still in use.
        let n = u32::from(hi - lo) + 1;
        let seed = FiveTuple {
            protocol,
            src_addr: addr,
            src_port: port,
            dst_addr: A::ZERO,
            dst_port: 0,
        };
        let start = u32::from(lo) + keys.hash(&seed) % n;
        // RFC 4787 REQ-4: prefer a port of the same parity.
        let parity = if port & 1 == 0 {
            EVEN_PORTS
        } else {
            !EVEN_PORTS
        };
        let scan = |mask: u64| {
            pt.first_free(start, u32::from(hi), mask)
                .or_else(|| pt.first_free(u32::from(lo), start.saturating_sub(1), mask))
        };
        scan(parity)
            .or_else(|| scan(u64::MAX))
            .ok_or(DropReason::PortsExhausted)
    }

    /// Reserves external `port` of protocol index `protocol` for `target`.
    pub(crate) fn add_forward(
        &mut self,
        protocol: u8,
        port: u16,
        target: Endpoint<A>,
    ) -> Result<(), RuleError> {
        let Some(pt) = self.table_mut(protocol) else {
            return Err(RuleError::Invalid("port forwards are for TCP or UDP"));
        };
        pt.ensure();
        if pt.used_by(port) != PortUse::Free {
            return Err(RuleError::PortInUse(port));
        }
        let internal_addr = target.addr;
        pt.set(
            port,
            Binding {
                internal_addr,
                internal_port: target.port,
                used_by: PortUse::Forward,
                redirect: false,
            },
        );
        let key = EndpointKey {
            protocol,
            addr: internal_addr,
            port: target.port,
        };
        self.by_internal.entry(key).or_insert(port);
        self.forwards.insert(PortKey { protocol, port }, target);
        Ok(())
    }

    /// Removes the forward of `port`; sessions on it keep the port (now a
    /// mapping's) until they end. Returns whether it existed.
    pub(crate) fn remove_forward(&mut self, protocol: u8, port: u16) -> bool {
        let Some(target) = self.forwards.remove(&PortKey { protocol, port }) else {
            return false;
        };
        let Some(pt) = self.tables.get_mut(usize::from(protocol)) else {
            return true;
        };
        if pt.refs(port) > 0 {
            if let Some(b) = pt.get_mut(port) {
                b.used_by = PortUse::Mapping;
            }
        } else {
            pt.free(port);
            let key = EndpointKey {
                protocol,
                addr: target.addr,
                port: target.port,
            };
            if self.by_internal.get(&key) == Some(&port) {
                self.by_internal.remove(&key);
            }
        }
        true
    }

    /// One flow fewer on `port`: frees a mapping's port with its last flow.
    pub(crate) fn release(&mut self, protocol: u8, port: u16) {
        let Some(pt) = self.tables.get_mut(usize::from(protocol)) else {
            return;
        };
        let refs = pt.refs_mut(port).map_or(0, |r| {
            *r = r.saturating_sub(1);
            *r
        });
        if let Some(b) = pt.get(port).copied()
            && refs == 0
            && b.used_by == PortUse::Mapping
        {
            if b.redirect {
                self.redirected.remove(&PortKey { protocol, port });
            }
            pt.free(port);
            let key = EndpointKey {
                protocol,
                addr: b.internal_addr,
                port: b.internal_port,
            };
            if self.by_internal.get(&key) == Some(&port) {
                self.by_internal.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binding_is_8_bytes() {
        assert_eq!(core::mem::size_of::<Binding<u32>>(), 8);
    }
}
