//! The flow table: compact [`Flow`] entries stored inline in an
//! open-addressing table keyed by the internal 5-tuple ([`FlowTable`]), and
//! the keyed multiply-fold hash it uses. There is no second index for the
//! external side: the inbound path turns an external key into the internal
//! one through the external port's binding (see `Nat::find_inbound`). The
//! table doubles when 3/4 full, so its load stays between 3/8 and 3/4.

use core::hash::{BuildHasher, Hasher};

use crate::family::Addr;
use std::collections::HashMap;

use crate::ports::Redirected;
use crate::tuple::{Endpoint, FiveTuple, PortKey};

/// One tracked session (a 5-tuple and its translation). 32 bytes for IPv4
/// (`A = u32`), 48 for IPv6: addresses stored as two `u64` (see
/// [`Addr::Stored`]; as `u128` they would be 16-byte aligned), and no remote
/// endpoint in the slot (see [`Addr::Remote`], [`remote_of`]).
///
/// `repr(C)`, the internal-side key first: its two addresses are one 8-byte
/// word, its two ports the next 4 bytes and the protocol the byte after, so
/// that [`Flow::has_key`] is three loads and compares (an outbound lookup's
/// key then also stays in three registers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Flow<A: Addr> {
    /// Deadline in milliseconds of the caller's clock.
    pub(crate) expires: u64,
    /// Internal (guest) address ([`Flow::internal_addr`]).
    pub(crate) internal: A::Stored,
    /// Destination address as the guest wrote it (differs from the remote
    /// address only for redirected flows; [`Flow::original_addr`]).
    pub(crate) original: A::Stored,
    /// Internal port or ICMP identifier.
    pub(crate) internal_port: u16,
    /// Destination port as the guest wrote it.
    pub(crate) original_port: u16,
    /// Protocol index (see `PROTO_*`).
    pub(crate) protocol: u8,
    /// TCP tracking bits and flags (see [`state`]).
    pub(crate) state: u8,
    /// External port or ICMP identifier.
    pub(crate) external_port: u16,
    /// The real remote endpoint (port 0 for ICMP), if the family keeps it
    /// in the slot (see [`remote_of`]).
    pub(crate) remote: A::Remote,
}

/// The real remote endpoint of flow `f`, whose destination as the guest
/// wrote it is `original` (the caller's copy, often still in registers):
/// the slot's (IPv4); else `original`, unless `f` was redirected: then its
/// entry in `redirected` (`Ports::redirected`, one per redirected flow,
/// keyed by its own external port).
#[inline(always)]
pub(crate) fn remote_of<A: Addr>(
    f: &Flow<A>,
    original: Endpoint<A>,
    redirected: &HashMap<PortKey, Redirected<A>, SeededState>,
) -> Endpoint<A> {
    if let Some(e) = A::remote_in_slot(f.remote) {
        return e;
    }
    if f.state & state::REDIRECTED == 0 {
        return original;
    }
    redirect_target(f, original, redirected)
}

/// [`remote_of`] of a redirected flow whose slot holds no remote.
#[cold]
#[inline(never)]
fn redirect_target<A: Addr>(
    f: &Flow<A>,
    original: Endpoint<A>,
    redirected: &HashMap<PortKey, Redirected<A>, SeededState>,
) -> Endpoint<A> {
    let port = PortKey {
        protocol: f.protocol,
        port: f.external_port,
    };
    redirected.get(&port).map_or(original, |r| r.remote)
}

/// Protocol index of TCP.
pub(crate) const PROTO_TCP: u8 = 0;
/// Protocol index of UDP.
pub(crate) const PROTO_UDP: u8 = 1;
/// Protocol index of ICMP queries.
pub(crate) const PROTO_ICMP: u8 = 2;

/// TCP tracking bits of [`Flow::state`].
pub(crate) mod state {
    /// A packet was seen from the internal side.
    pub(crate) const SEEN_OUTBOUND: u8 = 1;
    /// A packet was seen from the external side.
    pub(crate) const SEEN_INBOUND: u8 = 2;
    /// FIN seen from the internal side.
    pub(crate) const FIN_OUTBOUND: u8 = 4;
    /// FIN seen from the external side.
    pub(crate) const FIN_INBOUND: u8 = 8;
    /// RST seen in either direction.
    pub(crate) const RST: u8 = 16;
    /// The flow was created through a redirect (it owns its external port).
    pub(crate) const REDIRECTED: u8 = 32;
    /// The flow was created from outside (through a port forward): it counts
    /// in the inbound budget, not in the internal host's.
    pub(crate) const INBOUND: u8 = 64;
    /// A flow from outside that its remote has not confirmed yet (conntrack's
    /// not ASSURED): it keeps the short `inbound_unconfirmed` timeout and may
    /// be evicted for a new flow from outside.
    pub(crate) const UNCONFIRMED: u8 = 128;
    /// The bits a flow keeps when its session starts over.
    pub(crate) const KEPT: u8 = REDIRECTED | INBOUND;
}

impl<A: Addr> Flow<A> {
    /// Internal (guest) address.
    #[inline(always)]
    pub(crate) fn internal_addr(&self) -> A {
        A::load(self.internal)
    }
    /// Destination address as the guest wrote it.
    #[inline(always)]
    pub(crate) fn original_addr(&self) -> A {
        A::load(self.original)
    }
    /// The internal-side key.
    #[inline(always)]
    pub(crate) fn key(&self) -> FiveTuple<A> {
        FiveTuple {
            protocol: self.protocol,
            src_addr: self.internal_addr(),
            src_port: self.internal_port,
            dst_addr: self.original_addr(),
            dst_port: self.original_port,
        }
    }
    /// Hash of the internal-side key.
    #[inline(always)]
    pub(crate) fn key_hash(&self, k: &Keys) -> u32 {
        k.hash(&self.key())
    }
    /// Whether this flow has the internal-side key `key`.
    #[inline(always)]
    pub(crate) fn has_key(&self, key: &FiveTuple<A>) -> bool {
        let mine = self.key();
        A::pair_eq(mine.src_addr, mine.dst_addr, key.src_addr, key.dst_addr)
            && mine.ports() == key.ports()
            && self.protocol == key.protocol
    }
}

/// Marks an unused slot of a [`FlowTable`] (in `Flow::protocol`).
const FREE_SLOT: u8 = 0xff;

impl<A: Addr> Flow<A> {
    /// An unused slot.
    pub(crate) const VACANT: Flow<A> = Flow {
        expires: 0,
        internal: A::STORED_ZERO,
        original: A::STORED_ZERO,
        remote: A::NO_REMOTE,
        internal_port: 0,
        external_port: 0,
        original_port: 0,
        protocol: FREE_SLOT,
        state: 0,
    };
}

/// The flows themselves, stored inline in an open-addressing table keyed by
/// the internal-side 5-tuple (linear probing, backward-shift deletion, load
/// factor ≤ 3/4): an outbound lookup touches one slot, usually one cache
/// line. A flow's position is its handle; it changes only when a removal
/// shifts it back (reported to the caller) or the table grows.
///
/// Beside the slots, each flow's creation time in whole seconds of the
/// caller's clock (`born`, same index): read only to list flows by age,
/// written only when a flow is inserted or moves, so the packet paths never
/// touch it.
#[derive(Clone, Debug)]
pub(crate) struct FlowTable<A: Addr> {
    slots: Vec<Flow<A>>,
    born: Vec<u32>,
    mask: usize,
    len: usize,
}

impl<A: Addr> FlowTable<A> {
    /// An empty table with room for `cap` flows before it grows.
    pub(crate) fn with_capacity(cap: usize) -> FlowTable<A> {
        let n = (cap.saturating_mul(4) / 3 + 1).next_power_of_two().max(16);
        FlowTable {
            slots: vec![Flow::VACANT; n],
            born: vec![0; n],
            mask: n - 1,
            len: 0,
        }
    }

    /// Number of flows.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no flows.
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of slots.
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The flow at `pos`, if that slot is in use.
    #[inline(always)]
    pub(crate) fn get(&self, pos: usize) -> Option<&Flow<A>> {
        self.slots.get(pos).filter(|f| f.protocol != FREE_SLOT)
    }

    /// The flow at `pos`, if that slot is in use.
    #[inline(always)]
    pub(crate) fn get_mut(&mut self, pos: usize) -> Option<&mut Flow<A>> {
        self.slots.get_mut(pos).filter(|f| f.protocol != FREE_SLOT)
    }

    /// The flows in use, each with its creation time in milliseconds
    /// (whole seconds: see [`FlowTable::insert`]).
    pub(crate) fn iter_born(&self) -> impl Iterator<Item = (&Flow<A>, u64)> {
        self.slots
            .iter()
            .zip(&self.born)
            .filter(|(f, _)| f.protocol != FREE_SLOT)
            .map(|(f, &b)| (f, u64::from(b) * 1000))
    }

    /// Finds the position of the flow with internal-side `hash` for which
    /// `eq` holds.
    #[inline(always)]
    pub(crate) fn find(&self, hash: u32, mut eq: impl FnMut(&Flow<A>) -> bool) -> Option<u32> {
        let mut pos = hash as usize & self.mask;
        loop {
            let f = self.slots.get(pos)?;
            if f.protocol == FREE_SLOT {
                return None;
            }
            if eq(f) {
                return Some(pos as u32);
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The position and a copy of the flow with internal-side `key` (hashing
    /// to `hash`) on `external_port`: the inbound path's test, written out
    /// rather than a closure given to [`FlowTable::find`], which for IPv6
    /// (two 128-bit compares) stayed a call per probe.
    #[inline(always)]
    pub(crate) fn lookup_on_port(
        &self,
        hash: u32,
        key: &FiveTuple<A>,
        external_port: u16,
    ) -> Option<(usize, Flow<A>)> {
        let mut pos = hash as usize & self.mask;
        loop {
            let f = self.slots.get(pos)?;
            if f.protocol == FREE_SLOT {
                return None;
            }
            if f.has_key(key) && f.external_port == external_port {
                return Some((pos, *f));
            }
            pos = (pos + 1) & self.mask;
        }
    }

    /// The first and the last field of the home slot of `hash`: cheap reads
    /// that pull its lines into the cache ahead of [`FlowTable::find`] (a
    /// 48-byte IPv6 slot spans two lines every other time). Two reads, not
    /// one: at 1 000 000 flows the batches ran 11–18 % faster with both, for
    /// IPv4's 32-byte slots too, whose one line either read pulls; either
    /// read alone measured the same as the other (docs/PERFORMANCE.md).
    #[inline(always)]
    pub(crate) fn peek(&self, hash: u32) -> u64 {
        self.slots
            .get(hash as usize & self.mask)
            .map_or(0, |f| f.expires ^ u64::from(f.external_port))
    }

    /// Whether one more insert would first need [`FlowTable::grow`].
    pub(crate) fn full(&self) -> bool {
        (self.len + 1) * 4 > self.slots.len() * 3
    }

    /// Doubles the table (every position changes).
    pub(crate) fn grow(&mut self, keys: &Keys) {
        let n = self.slots.len() * 2;
        let old = core::mem::replace(&mut self.slots, vec![Flow::VACANT; n]);
        let born = core::mem::replace(&mut self.born, vec![0; n]);
        self.mask = n - 1;
        self.len = 0;
        for (f, b) in old.into_iter().zip(born) {
            if f.protocol != FREE_SLOT {
                self.place(f.key_hash(keys), f, b);
            }
        }
    }

    /// Inserts a new flow (the caller checked its key is absent and the
    /// table is not [`FlowTable::full`]); returns its position. A new flow's
    /// `expires` is its creation time (the packet path that creates it sets
    /// the deadline after): kept, in whole seconds, as the flow's birth.
    pub(crate) fn insert(&mut self, hash: u32, f: Flow<A>) -> usize {
        let born = u32::try_from(f.expires / 1000).unwrap_or(u32::MAX);
        self.place(hash, f, born)
    }

    /// Puts `f`, born at `born`, in the first free slot of its probe run.
    fn place(&mut self, hash: u32, f: Flow<A>, born: u32) -> usize {
        let mut pos = hash as usize & self.mask;
        for _ in 0..self.slots.len() {
            match self.slots.get_mut(pos) {
                Some(s) if s.protocol == FREE_SLOT => {
                    *s = f;
                    if let Some(b) = self.born.get_mut(pos) {
                        *b = born;
                    }
                    self.len += 1;
                    return pos;
                }
                _ => pos = (pos + 1) & self.mask,
            }
        }
        pos
    }

    /// Removes the flow at `pos`, shifting later flows of its probe run
    /// back; `moved(from, to, flow)` is called for each flow that moves.
    pub(crate) fn remove(
        &mut self,
        pos: usize,
        keys: &Keys,
        mut moved: impl FnMut(usize, usize, &Flow<A>),
    ) {
        if self.get(pos).is_none() {
            return;
        }
        self.len -= 1;
        let mut hole = pos;
        let mut next = pos;
        loop {
            next = (next + 1) & self.mask;
            let Some(f) = self.slots.get(next).copied() else {
                break;
            };
            if f.protocol == FREE_SLOT {
                break;
            }
            let home = f.key_hash(keys) as usize & self.mask;
            let dist_hole = hole.wrapping_sub(home) & self.mask;
            let dist_next = next.wrapping_sub(home) & self.mask;
            if dist_hole <= dist_next {
                if let Some(s) = self.slots.get_mut(hole) {
                    *s = f;
                }
                let born = self.born.get(next).copied().unwrap_or(0);
                if let Some(b) = self.born.get_mut(hole) {
                    *b = born;
                }
                moved(next, hole, &f);
                hole = next;
            }
        }
        if let Some(s) = self.slots.get_mut(hole) {
            *s = Flow::VACANT;
        }
    }

    /// Bytes held.
    pub(crate) fn memory(&self) -> usize {
        self.slots.capacity() * core::mem::size_of::<Flow<A>>()
            + self.born.capacity() * core::mem::size_of::<u32>()
    }
}

/// Hash keys, secret per table so that remote hosts can't steer flows into
/// one probe chain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Keys([u64; 4]);

impl Keys {
    /// Keys derived from one 64-bit seed.
    pub(crate) fn from_seed(seed: u64) -> Keys {
        let mut s = seed ^ 0x243f_6a88_85a3_08d3;
        let mut next = || {
            // splitmix64
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Keys([next(), next(), next(), next() | 1])
    }

    #[inline(always)]
    pub(crate) fn mix(&self, a: u64, b: u64) -> u32 {
        let h = fold_mul(a ^ self.0[0], b ^ self.0[1]);
        let h = fold_mul(h ^ self.0[2], self.0[3]);
        (h ^ (h >> 32)) as u32
    }

    /// Two IPv6 addresses and `b` mixed: each address is folded by a
    /// keyed multiply of its halves (no fixed xor of halves an outsider
    /// could keep constant), then mixed with `b` as an IPv4 key is.
    #[inline(always)]
    pub(crate) fn mix128(&self, src: u128, dst: u128, b: u64) -> u32 {
        let s = fold_mul((src as u64) ^ self.0[0], ((src >> 64) as u64) ^ self.0[1]);
        let d = fold_mul((dst as u64) ^ self.0[2], ((dst >> 64) as u64) ^ self.0[3]);
        self.mix(s ^ d.rotate_left(29), b)
    }

    /// Hash of an internal-side key.
    #[inline(always)]
    pub(crate) fn hash<A: Addr>(&self, key: &FiveTuple<A>) -> u32 {
        let b = u64::from(key.ports()) | (u64::from(key.protocol) << 32);
        <A as Addr>::hash(self, key.src_addr, key.dst_addr, b)
    }

    /// A `BuildHasher` for the cold-path std maps, keyed from these keys.
    pub(crate) fn build(&self) -> SeededState {
        SeededState {
            k0: self.0[1] ^ self.0[2],
            k1: self.0[3],
        }
    }
}

/// `BuildHasher` for the std maps on cold paths (bindings, rules, fragments).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededState {
    k0: u64,
    k1: u64,
}

/// The hasher built by [`SeededState`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct SeededHasher {
    h: u64,
    k: u64,
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher {
            h: self.k0,
            k: self.k1,
        }
    }
}

impl Hasher for SeededHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            for (d, s) in w.iter_mut().zip(c) {
                *d = *s;
            }
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }
    fn write_u64(&mut self, x: u64) {
        self.h = fold_mul(self.h ^ x, self.k).rotate_left(23);
    }
    fn finish(&self) -> u64 {
        fold_mul(self.h, self.k ^ 0x9e37_79b9_7f4a_7c15)
    }
}

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_table_keeps_positions_right_through_growth_and_backward_shifts() {
        use std::collections::HashMap;
        let keys = Keys::from_seed(3);
        let flow = |i: u32| Flow::<u32> {
            internal: i % 7,
            original: i / 7,
            internal_port: (i % 5) as u16,
            protocol: 1,
            ..Flow::VACANT
        };
        let mut t = FlowTable::with_capacity(4);
        let mut pos: HashMap<u32, usize> = HashMap::new();
        for i in 0..3000u32 {
            if t.full() {
                t.grow(&keys);
                pos.clear();
                for j in 0..i {
                    let f = flow(j);
                    let p = t.find(f.key_hash(&keys), |g| *g == f).map(|p| p as usize);
                    pos.insert(j, p.unwrap_or(usize::MAX));
                }
            }
            let f = flow(i);
            pos.insert(i, t.insert(f.key_hash(&keys), f));
        }
        assert_eq!(t.len(), 3000);
        // Remove every third flow, following the moves.
        for i in (0..3000u32).step_by(3) {
            let p = pos.remove(&i).unwrap_or(usize::MAX);
            let mut moves = Vec::new();
            t.remove(p, &keys, |from, to, f| moves.push((from, to, *f)));
            for (from, to, f) in moves {
                let (&k, _) = pos
                    .iter()
                    .find(|&(&k, &v)| v == from && flow(k) == f)
                    .unwrap();
                pos.insert(k, to);
            }
        }
        assert_eq!(t.len(), 2000);
        for i in 0..3000u32 {
            let f = flow(i);
            let found = t.find(f.key_hash(&keys), |g| *g == f).map(|p| p as usize);
            assert_eq!(found, pos.get(&i).copied(), "flow {i}");
        }
        assert_eq!(t.iter_born().count(), 2000);
    }

    #[test]
    fn a_flow_is_32_bytes() {
        assert_eq!(core::mem::size_of::<Flow<u32>>(), 32);
        assert_eq!(core::mem::size_of::<Flow<u128>>(), 48);
    }

    #[test]
    fn keyed_hashes_differ_per_seed_and_per_key() {
        let (a, b) = (Keys::from_seed(1), Keys::from_seed(2));
        let key = |protocol, dst_port| FiveTuple::<u32> {
            protocol,
            src_addr: 10,
            src_port: 20,
            dst_addr: 30,
            dst_port,
        };
        assert_ne!(a.hash(&key(1, 40)), b.hash(&key(1, 40)));
        assert_ne!(a.hash(&key(1, 40)), a.hash(&key(1, 41)));
        assert_ne!(a.hash(&key(1, 40)), a.hash(&key(0, 40)));
    }
}
