//! Later fragments held until the first fragment of their datagram is
//! translated (RFC 4787 REQ-14: out-of-order fragments), then kept ready,
//! translated, until the caller drains them with `Nat::poll_released`.
//!
//! Bounded per direction in count and bytes (`NatConfig::max_held_fragments`,
//! `NatConfig::max_held_bytes`, each direction its own pool counting its
//! waiting and ready packets), so fragments from outside can't starve the
//! guest's own; per source address (one source may have at most half of its
//! direction's pool waiting, rounded up); and in time (`Timeouts::fragment`).
//! This is the only path of the NAT that allocates per packet: one
//! exactly-sized buffer per held fragment, freed when it is released or
//! dropped.

use std::collections::VecDeque;

use crate::{Direction, Verdict};

/// Waiting and ready fragments, keyed by `K` (the datagram).
#[derive(Debug)]
pub(crate) struct HeldPool<K> {
    waiting: Vec<Waiting<K>>,
    /// Per direction (see [`index`]), in release order.
    ready: [VecDeque<Ready>; 2],
    /// Packets held per direction (waiting and ready).
    counts: [usize; 2],
    /// Bytes held per direction (waiting and ready).
    bytes: [usize; 2],
    max_count: usize,
    max_bytes: usize,
    /// Lower bound of every entry's expiry.
    earliest: u64,
}

/// Why a fragment can't be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its direction's pool is at its count or byte cap.
    Full,
    /// Its source has half of its direction's pool waiting.
    SourceShare,
}

/// A translated fragment waiting for `Nat::poll_released`.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) bytes: Vec<u8>,
    pub(crate) verdict: Verdict,
    expires: u64,
}

impl<K: Copy + PartialEq> HeldPool<K> {
    /// An empty pool; each direction may hold `max_count` packets and
    /// `max_bytes` bytes.
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        HeldPool {
            waiting: Vec::new(),
            ready: [VecDeque::new(), VecDeque::new()],
            counts: [0; 2],
            bytes: [0; 2],
            max_count,
            max_bytes,
            earliest: u64::MAX,
        }
    }

    /// Packets held (waiting or ready), both directions.
    pub(crate) fn count(&self) -> usize {
        self.counts[0] + self.counts[1]
    }

    /// Bytes held (waiting or ready), both directions.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes[0] + self.bytes[1]
    }

    /// Packets and bytes held (waiting or ready) in `direction`.
    pub(crate) fn of(&self, direction: Direction) -> (usize, usize) {
        let d = index(direction);
        (self.counts[d], self.bytes[d])
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether nothing waits for a first fragment.
    pub(crate) fn none_waiting(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether one more packet of `len` bytes from `source` fits under the
    /// caps of `direction` and the source's share.
    pub(crate) fn fits(
        &self,
        direction: Direction,
        source: u128,
        len: usize,
    ) -> Result<(), Refused> {
        let d = index(direction);
        if self.counts[d] >= self.max_count || self.bytes[d].saturating_add(len) > self.max_bytes {
            return Err(Refused::Full);
        }
        let (mut count, mut bytes) = (0usize, 0usize);
        for w in &self.waiting {
            if w.direction == d && w.source == source {
                count += 1;
                bytes += w.bytes.len();
            }
        }
        if count >= self.max_count.div_ceil(2)
            || bytes.saturating_add(len) > self.max_bytes.div_ceil(2)
        {
            return Err(Refused::SourceShare);
        }
        Ok(())
    }

    /// Keeps a copy of `packet` from `source` for the datagram `key` of
    /// `direction` (the caller checked [`HeldPool::fits`]).
    pub(crate) fn hold(
        &mut self,
        key: K,
        direction: Direction,
        source: u128,
        packet: &[u8],
        expires: u64,
    ) {
        let d = index(direction);
        self.counts[d] += 1;
        self.bytes[d] += packet.len();
        self.earliest = self.earliest.min(expires);
        self.waiting.push(Waiting {
            key,
            direction: d,
            source,
            expires,
            bytes: packet.to_vec(),
        });
    }

    /// Takes out every waiting fragment of `key`, in arrival order, with
    /// its expiry (one pass over the pool).
    pub(crate) fn take_all(&mut self, key: K) -> Vec<(Vec<u8>, u64)> {
        let taken: Vec<Waiting<K>> = self.waiting.extract_if(.., |w| w.key == key).collect();
        for w in &taken {
            self.uncount(w.direction, w.bytes.len());
        }
        taken.into_iter().map(|w| (w.bytes, w.expires)).collect()
    }

    /// Queues a translated fragment for release in `direction`.
    pub(crate) fn push_ready(
        &mut self,
        direction: Direction,
        bytes: Vec<u8>,
        verdict: Verdict,
        expires: u64,
    ) {
        let d = index(direction);
        if let Some(q) = self.ready.get_mut(d) {
            self.counts[d] += 1;
            self.bytes[d] += bytes.len();
            self.earliest = self.earliest.min(expires);
            q.push_back(Ready {
                bytes,
                verdict,
                expires,
            });
        }
    }

    /// The next ready fragment of `direction`.
    pub(crate) fn pop_ready(&mut self, direction: Direction) -> Option<Ready> {
        let d = index(direction);
        let r = self.ready.get_mut(d)?.pop_front()?;
        self.uncount(d, r.bytes.len());
        Some(r)
    }

    /// One packet of `len` bytes of direction index `d` left the pool.
    fn uncount(&mut self, d: usize, len: usize) {
        if let (Some(c), Some(b)) = (self.counts.get_mut(d), self.bytes.get_mut(d)) {
            *c -= 1;
            *b -= len;
        }
    }

    /// Drops every entry expired at `now`; returns how many.
    pub(crate) fn purge(&mut self, now: u64) -> usize {
        if now < self.earliest {
            return 0;
        }
        let before = self.count();
        let mut counts = [0usize; 2];
        let mut bytes = [0usize; 2];
        let mut min = u64::MAX;
        self.waiting.retain(|w| {
            let keep = w.expires > now;
            if keep
                && let (Some(c), Some(b)) =
                    (counts.get_mut(w.direction), bytes.get_mut(w.direction))
            {
                *c += 1;
                *b += w.bytes.len();
                min = min.min(w.expires);
            }
            keep
        });
        for (d, q) in self.ready.iter_mut().enumerate() {
            q.retain(|r| {
                let keep = r.expires > now;
                if keep && let (Some(c), Some(b)) = (counts.get_mut(d), bytes.get_mut(d)) {
                    *c += 1;
                    *b += r.bytes.len();
                    min = min.min(r.expires);
                }
                keep
            });
        }
        self.counts = counts;
        self.bytes = bytes;
        self.earliest = min;
        before - self.count()
    }

    /// Drops every waiting fragment of `key`; returns how many.
    pub(crate) fn discard(&mut self, key: K) -> usize {
        let gone: Vec<Waiting<K>> = self.waiting.extract_if(.., |w| w.key == key).collect();
        for w in &gone {
            self.uncount(w.direction, w.bytes.len());
        }
        gone.len()
    }

    /// When [`HeldPool::purge`] next has work, if ever (may be early).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.earliest)
    }
}

/// The index of `direction` in the per-direction arrays.
fn index(direction: Direction) -> usize {
    match direction {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

#[derive(Debug)]
struct Waiting<K> {
    key: K,
    /// [`index`] of its direction.
    direction: usize,
    /// Its source address.
    source: u128,
    expires: u64,
    bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: Direction = Direction::Outbound;
    const IN: Direction = Direction::Inbound;

    #[test]
    fn caps_count_waiting_and_ready_packets_and_bytes_per_direction() {
        let mut pool = HeldPool::new(2, 100);
        assert_eq!(pool.fits(OUT, 1, 100), Err(Refused::SourceShare));
        assert_eq!(pool.fits(OUT, 1, 50), Ok(()));
        pool.hold(1u8, OUT, 1, &[0; 50], 10);
        assert_eq!(pool.fits(OUT, 2, 51), Err(Refused::Full));
        assert_eq!(pool.fits(OUT, 2, 50), Ok(()));
        assert_eq!(pool.fits(OUT, 1, 1), Err(Refused::SourceShare));
        let (b, exp) = pool.take_all(1).pop().unwrap();
        assert_eq!((b.len(), exp, pool.bytes()), (50, 10, 0));
        pool.push_ready(OUT, b, Verdict::Forward, exp);
        pool.hold(2, OUT, 2, &[0; 50], 20);
        assert_eq!((pool.count(), pool.bytes()), (2, 100));
        assert_eq!(pool.fits(OUT, 3, 0), Err(Refused::Full));
        // The other direction has a pool of its own.
        assert_eq!(pool.fits(IN, 3, 50), Ok(()));
        pool.hold(3, IN, 3, &[0; 50], 20);
        assert_eq!((pool.of(OUT), pool.of(IN)), ((2, 100), (1, 50)));
        assert!(pool.take_all(1).is_empty());
        assert_eq!(pool.pop_ready(IN).map(|r| r.bytes.len()), None);
        assert_eq!(pool.pop_ready(OUT).map(|r| r.bytes.len()), Some(50));
        assert_eq!(pool.of(OUT), (1, 50));
    }

    #[test]
    fn purge_and_discard_free_what_they_remove() {
        let mut pool = HeldPool::new(8, 1000);
        pool.hold(1u8, OUT, 1, &[0; 10], 10);
        pool.hold(1, OUT, 1, &[0; 10], 30);
        pool.hold(2, IN, 2, &[0; 10], 20);
        pool.push_ready(IN, vec![0; 10], Verdict::Forward, 15);
        assert_eq!(pool.next_deadline(), Some(10));
        assert_eq!(pool.purge(9), 0);
        assert_eq!(pool.purge(15), 2);
        assert_eq!((pool.count(), pool.bytes()), (2, 20));
        assert_eq!((pool.of(OUT), pool.of(IN)), ((1, 10), (1, 10)));
        assert_eq!(pool.next_deadline(), Some(20));
        assert_eq!(pool.discard(1), 1);
        assert_eq!(pool.discard(1), 0);
        assert_eq!((pool.count(), pool.bytes()), (1, 10));
        assert_eq!(pool.purge(100), 1);
        assert!(pool.is_empty());
        assert_eq!(pool.next_deadline(), None);
    }
}
