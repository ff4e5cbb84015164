//! Fragments (RFC 4787 REQ-14): the translation of each first fragment is
//! remembered so that later fragments of its datagram get the same
//! addresses; later fragments that arrive first are held (see `held`) and
//! released, translated, when their first fragment comes through.

use std::collections::HashMap;

use crate::family::{Addr, Family};
use crate::held::{HeldPool, Refused};
use crate::packet::{self, IpHeader, Transport};
use crate::table::SeededState;
use crate::translator::Engine;
use crate::tuple::{DatagramId, FourTuple};
use crate::{Direction, DropReason, Released, Verdict};

/// Fragment state: first-fragment translations and held later fragments.
#[derive(Debug)]
pub(crate) struct Fragments<A> {
    /// How the first fragment of each datagram was translated.
    firsts: HashMap<FragmentKey<A>, FirstFragment<A>, SeededState>,
    /// Later fragments that came before their first fragment, and those
    /// translated since, waiting for `Nat::poll_released`.
    pub(crate) held: HeldPool<FragmentKey<A>>,
    /// Lower bound of the deadlines in `firsts`.
    earliest: u64,
}

/// A datagram in one direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FragmentKey<A> {
    direction: Direction,
    datagram: DatagramId<A>,
}

/// The addresses a datagram's first fragment was given.
#[derive(Clone, Copy, Debug)]
struct FirstFragment<A> {
    src_addr: A,
    dst_addr: A,
    hairpin: bool,
    expires: u64,
}

impl<A: Copy + Eq + core::hash::Hash> Fragments<A> {
    /// No state; room for `max_fragments` first fragments (up to 4096
    /// allocated ahead) and the held-fragment caps.
    pub(crate) fn new(
        hasher: SeededState,
        max_fragments: usize,
        max_held_fragments: usize,
        max_held_bytes: usize,
    ) -> Fragments<A> {
        Fragments {
            firsts: HashMap::with_capacity_and_hasher(max_fragments.min(4096), hasher),
            held: HeldPool::new(max_held_fragments, max_held_bytes),
            earliest: u64::MAX,
        }
    }

    /// Number of datagrams whose first fragment is remembered.
    pub(crate) fn len(&self) -> usize {
        self.firsts.len()
    }

    /// When [`Nat::expire_fragments`] next has work, if ever (may be early).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        let firsts = (!self.firsts.is_empty()).then_some(self.earliest);
        match (firsts, self.held.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Rewrites a later fragment's addresses as its first fragment's were.
fn rewrite_like_first<F: Family>(
    p: &mut [u8],
    h: &IpHeader<F::Addr>,
    first: &FirstFragment<F::Addr>,
) -> Verdict {
    let old = FourTuple {
        src_addr: h.src_addr,
        src_port: 0,
        dst_addr: h.dst_addr,
        dst_port: 0,
    };
    let new = FourTuple {
        src_addr: first.src_addr,
        src_port: 0,
        dst_addr: first.dst_addr,
        dst_port: 0,
    };
    packet::rewrite::<F>(p, h, Transport::AddressesOnly, old, new);
    if first.hairpin {
        Verdict::Hairpin
    } else {
        Verdict::Forward
    }
}

impl<F: Family> Engine<F> {
    /// Translates a later fragment from its first fragment's translation,
    /// or holds a copy if that has not come yet.
    pub(crate) fn translate_later_fragment(
        &mut self,
        p: &mut [u8],
        h: &IpHeader<F::Addr>,
        direction: Direction,
        now: u64,
    ) -> Verdict {
        let key = FragmentKey {
            direction,
            datagram: DatagramId {
                ip_protocol: h.protocol,
                ident: h.ident,
                src_addr: h.src_addr,
                dst_addr: h.dst_addr,
            },
        };
        match self.fragments.firsts.get(&key) {
            Some(s) if s.expires > now => rewrite_like_first::<F>(p, h, s),
            _ if self.settings.config.max_held_fragments == 0 => {
                Verdict::Drop(DropReason::Fragment)
            }
            _ => {
                // Early: hold a copy until the first fragment comes through.
                let Some(bytes) = p.get(..h.total_len) else {
                    return Verdict::Drop(DropReason::Malformed);
                };
                let source = h.src_addr.wide();
                let held = &mut self.fragments.held;
                if held.fits(direction, source, bytes.len()).is_err() {
                    let lost = held.purge(now);
                    self.count_drops(DropReason::Fragment, lost);
                    match self.fragments.held.fits(direction, source, bytes.len()) {
                        Ok(()) => {}
                        Err(Refused::Full) => return Verdict::Drop(DropReason::FragmentsHeldFull),
                        Err(Refused::SourceShare) => {
                            return Verdict::Drop(DropReason::FragmentsHeldPerSource);
                        }
                    }
                }
                let expires = now.saturating_add(self.settings.timeouts.fragment);
                self.fragments
                    .held
                    .hold(key, direction, source, bytes, expires);
                Verdict::Held
            }
        }
    }

    /// After the first fragment of `datagram` went through with verdict `v`:
    /// remember its translation and release the held later fragments of its
    /// datagram, or drop those (counted) if it was dropped.
    #[inline(always)]
    pub(crate) fn after_first_fragment(
        &mut self,
        datagram: DatagramId<F::Addr>,
        direction: Direction,
        p: &[u8],
        v: Verdict,
        now: u64,
    ) {
        let key = FragmentKey {
            direction,
            datagram,
        };
        match v {
            Verdict::Forward | Verdict::Hairpin => {
                self.record_first_fragment(key, p, v == Verdict::Hairpin, now);
            }
            Verdict::Drop(_) | Verdict::Held => {
                if !self.fragments.held.none_waiting() {
                    let lost = self.fragments.held.discard(key);
                    self.count_drops(DropReason::Fragment, lost);
                }
            }
        }
    }

    /// Remembers how the first fragment of a datagram was translated.
    fn record_first_fragment(
        &mut self,
        key: FragmentKey<F::Addr>,
        p: &[u8],
        hairpin: bool,
        now: u64,
    ) {
        let expires = now.saturating_add(self.settings.timeouts.fragment);
        let first = FirstFragment {
            src_addr: F::read_addr(p, F::SRC_AT),
            dst_addr: F::read_addr(p, F::DST_AT),
            hairpin,
            expires,
        };
        if !self.fragments.held.none_waiting() {
            self.release_held(key, &first);
        }
        let max = self.settings.config.max_fragments;
        let firsts = &mut self.fragments.firsts;
        if firsts.len() >= max && !firsts.contains_key(&key) {
            firsts.retain(|_, s| s.expires > now);
            if firsts.len() >= max {
                // Later fragments of this datagram will be dropped (counted).
                return;
            }
        }
        firsts.insert(key, first);
        self.fragments.earliest = self.fragments.earliest.min(expires);
    }

    /// Translates the held fragments of datagram `key` as its first
    /// fragment was and queues them for [`Nat::poll_released`].
    #[cold]
    fn release_held(&mut self, key: FragmentKey<F::Addr>, first: &FirstFragment<F::Addr>) {
        for (mut bytes, expires) in self.fragments.held.take_all(key) {
            // Validated when it was held; parse again for its header fields.
            match F::parse(&bytes) {
                Ok(h) => {
                    let v = rewrite_like_first::<F>(&mut bytes, &h, first);
                    self.fragments
                        .held
                        .push_ready(key.direction, bytes, v, expires);
                }
                Err(r) => self.count_drop(r),
            }
        }
    }

    /// The next released fragment of `direction`, copied to `buf` (see
    /// [`Nat::poll_released`]).
    pub(crate) fn next_released(
        &mut self,
        direction: Direction,
        buf: &mut [u8],
    ) -> Option<Released> {
        loop {
            let r = self.fragments.held.pop_ready(direction)?;
            let len = r.bytes.len();
            let Some(dst) = buf.get_mut(..len) else {
                self.count_drop(DropReason::ReleaseBufferTooShort);
                continue;
            };
            dst.copy_from_slice(&r.bytes);
            self.stats.fragments_released += 1;
            match (direction, r.verdict) {
                (Direction::Outbound, Verdict::Hairpin) => self.stats.hairpinned += 1,
                (Direction::Outbound, _) => self.stats.outbound_forwarded += 1,
                (Direction::Inbound, _) => self.stats.inbound_forwarded += 1,
            }
            return Some(Released {
                len,
                verdict: r.verdict,
            });
        }
    }

    /// Drops expired first-fragment state and held fragments (each held
    /// one counted as [`DropReason::Fragment`]).
    pub(crate) fn expire_fragments(&mut self, now: u64) {
        let f = &mut self.fragments;
        if now >= f.earliest {
            let mut min = u64::MAX;
            f.firsts.retain(|_, s| {
                let keep = s.expires > now;
                if keep {
                    min = min.min(s.expires);
                }
                keep
            });
            f.earliest = min;
        }
        let lost = f.held.purge(now);
        self.count_drops(DropReason::Fragment, lost);
    }
}
