//! Later fragments held until the first fragment of their datagram is
//! translated (RFC 4787 REQ-14: out-of-order fragments), then kept ready,
//! translated, until the caller drains them with `Nat::poll_released`.
//!
//! Bounded in count and bytes (`NatConfig::max_held_fragments`,
//! `NatConfig::max_held_bytes`, both counting waiting and ready packets) and
//! in time (`Timeouts::fragment`). This is the only path of the NAT that
//! allocates per packet: one exactly-sized buffer per held fragment, freed
//! when it is released or dropped.

use std::collections::VecDeque;

use crate::{Direction, Verdict};

/// Waiting and ready fragments, keyed by `K` (the datagram).
#[derive(Debug)]
pub(crate) struct HeldPool<K> {
    waiting: Vec<Waiting<K>>,
    /// Per direction (see [`ready_index`]), in release order.
    ready: [VecDeque<Ready>; 2],
    bytes: usize,
    max_count: usize,
    max_bytes: usize,
    /// Lower bound of every entry's expiry.
    earliest: u64,
}

/// A translated fragment waiting for `Nat::poll_released`.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) bytes: Vec<u8>,
    pub(crate) verdict: Verdict,
    expires: u64,
}

impl<K: Copy + PartialEq> HeldPool<K> {
    pub(crate) fn new(max_count: usize, max_bytes: usize) -> Self {
        HeldPool {
            waiting: Vec::new(),
            ready: [VecDeque::new(), VecDeque::new()],
            bytes: 0,
            max_count,
            max_bytes,
            earliest: u64::MAX,
        }
    }

    /// Packets held (waiting or ready).
    pub(crate) fn count(&self) -> usize {
        self.waiting.len() + self.ready[0].len() + self.ready[1].len()
    }

    /// Bytes held (waiting or ready).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Whether nothing waits for a first fragment.
    pub(crate) fn none_waiting(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether one more packet of `len` bytes fits under the caps.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.count() < self.max_count && self.bytes.saturating_add(len) <= self.max_bytes
    }

    /// Keeps a copy of `packet` for the datagram `key` (the caller checked
    /// [`HeldPool::fits`]).
    pub(crate) fn hold(&mut self, key: K, packet: &[u8], expires: u64) {
        self.bytes += packet.len();
        self.earliest = self.earliest.min(expires);
        self.waiting.push(Waiting {
            key,
            expires,
            bytes: packet.to_vec(),
        });
    }

    /// Takes out every waiting fragment of `key`, in arrival order, with
    /// its expiry (one pass over the pool).
    pub(crate) fn take_all(&mut self, key: K) -> Vec<(Vec<u8>, u64)> {
        let taken: Vec<(Vec<u8>, u64)> = self
            .waiting
            .extract_if(.., |w| w.key == key)
            .map(|w| (w.bytes, w.expires))
            .collect();
        self.bytes -= taken.iter().map(|(b, _)| b.len()).sum::<usize>();
        taken
    }

    /// Queues a translated fragment for release in `direction`.
    pub(crate) fn push_ready(
        &mut self,
        direction: Direction,
        bytes: Vec<u8>,
        verdict: Verdict,
        expires: u64,
    ) {
        if let Some(q) = self.ready.get_mut(ready_index(direction)) {
            self.bytes += bytes.len();
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
        let r = self.ready.get_mut(ready_index(direction))?.pop_front()?;
        self.bytes -= r.bytes.len();
        Some(r)
    }

    /// Drops every entry expired at `now`; returns how many.
    pub(crate) fn purge(&mut self, now: u64) -> usize {
        if now < self.earliest {
            return 0;
        }
        let before = self.count();
        let mut bytes = 0;
        let mut min = u64::MAX;
        self.waiting.retain(|w| {
            let keep = w.expires > now;
            if keep {
                bytes += w.bytes.len();
                min = min.min(w.expires);
            }
            keep
        });
        for q in &mut self.ready {
            q.retain(|r| {
                let keep = r.expires > now;
                if keep {
                    bytes += r.bytes.len();
                    min = min.min(r.expires);
                }
                keep
            });
        }
        self.bytes = bytes;
        self.earliest = min;
        before - self.count()
    }

    /// Drops every waiting fragment of `key`; returns how many.
    pub(crate) fn discard(&mut self, key: K) -> usize {
        let before = self.waiting.len();
        let mut freed = 0;
        self.waiting.retain(|w| {
            let keep = w.key != key;
            if !keep {
                freed += w.bytes.len();
            }
            keep
        });
        self.bytes -= freed;
        before - self.waiting.len()
    }

    /// When [`HeldPool::purge`] next has work, if ever (may be early).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (!self.is_empty()).then_some(self.earliest)
    }
}

/// The queue of [`HeldPool::ready`] that holds packets of `direction`.
fn ready_index(direction: Direction) -> usize {
    match direction {
        Direction::Outbound => 0,
        Direction::Inbound => 1,
    }
}

#[derive(Debug)]
struct Waiting<K> {
    key: K,
    expires: u64,
    bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_waiting_and_ready_packets_and_bytes() {
        let mut pool = HeldPool::new(2, 100);
        assert!(pool.fits(100));
        assert!(!pool.fits(101));
        pool.hold(1u8, &[0; 60], 10);
        assert!(!pool.fits(41));
        assert!(pool.fits(40));
        let (b, exp) = pool.take_all(1).pop().unwrap();
        assert_eq!((b.len(), exp, pool.bytes()), (60, 10, 0));
        pool.push_ready(Direction::Outbound, b, Verdict::Forward, exp);
        pool.hold(2, &[0; 40], 20);
        assert_eq!((pool.count(), pool.bytes()), (2, 100));
        assert!(!pool.fits(0));
        assert!(pool.take_all(1).is_empty());
        assert_eq!(
            pool.pop_ready(Direction::Inbound).map(|r| r.bytes.len()),
            None
        );
        assert_eq!(
            pool.pop_ready(Direction::Outbound).map(|r| r.bytes.len()),
            Some(60)
        );
        assert_eq!(pool.bytes(), 40);
    }

    #[test]
    fn purge_and_discard_free_what_they_remove() {
        let mut pool = HeldPool::new(8, 1000);
        pool.hold(1u8, &[0; 10], 10);
        pool.hold(1, &[0; 10], 30);
        pool.hold(2, &[0; 10], 20);
        pool.push_ready(Direction::Inbound, vec![0; 10], Verdict::Forward, 15);
        assert_eq!(pool.next_deadline(), Some(10));
        assert_eq!(pool.purge(9), 0);
        assert_eq!(pool.purge(15), 2);
        assert_eq!((pool.count(), pool.bytes()), (2, 20));
        assert_eq!(pool.next_deadline(), Some(20));
        assert_eq!(pool.discard(1), 1);
        assert_eq!(pool.discard(1), 0);
        assert_eq!((pool.count(), pool.bytes()), (1, 10));
        assert_eq!(pool.purge(100), 1);
        assert!(pool.is_empty());
        assert_eq!(pool.next_deadline(), None);
    }
}
