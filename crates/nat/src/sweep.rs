//! Expiry of flows: a resumable sweep over the flow table, bounded per call,
//! and the lower bound of every flow deadline that tells when it is due.

use crate::family::Family;
use crate::translator::Engine;

/// Where the expiry sweep is, and what it knows about flow deadlines.
#[derive(Debug)]
pub(crate) struct Sweep {
    /// Lower bound of every flow deadline.
    earliest: u64,
    /// Lower bound of deadlines written since the current sweep started.
    since_start: u64,
    /// Minimum deadline of the flows the current sweep kept.
    kept_min: u64,
    /// Next table slot the sweep examines.
    hand: usize,
    /// A sweep is under way.
    running: bool,
    /// The time the last `Nat::expire` call was given.
    now: u64,
}

impl Sweep {
    /// No sweep under way, no deadline.
    pub(crate) fn new() -> Sweep {
        Sweep {
            earliest: u64::MAX,
            since_start: u64::MAX,
            kept_min: u64::MAX,
            hand: 0,
            running: false,
            now: 0,
        }
    }

    /// Records a flow deadline just written.
    #[inline(always)]
    pub(crate) fn note_deadline(&mut self, expires: u64) {
        self.earliest = self.earliest.min(expires);
        self.since_start = self.since_start.min(expires);
    }

    /// The table grew and every position changed: a sweep under way starts
    /// over.
    pub(crate) fn restart(&mut self) {
        if self.running {
            self.hand = 0;
        }
    }

    /// When the flow sweep next has work, if ever (see `Nat::next_deadline`).
    pub(crate) fn next_deadline(&self, no_flows: bool) -> Option<u64> {
        if self.running {
            Some(self.now)
        } else if no_flows {
            None
        } else {
            Some(self.earliest)
        }
    }
}

impl<F: Family> Engine<F> {
    /// Removes expired flows: examines at most `budget` flows and
    /// `8 × budget + 64` table slots, from where the last call stopped;
    /// returns how many it removed.
    pub(crate) fn expire_flows(&mut self, now: u64, budget: usize) -> usize {
        self.sweep.now = now;
        if !self.sweep.running {
            if self.table.flows.is_empty() || now < self.sweep.earliest {
                return 0;
            }
            self.sweep.running = true;
            self.sweep.hand = 0;
            self.sweep.kept_min = u64::MAX;
            self.sweep.since_start = u64::MAX;
        }
        let mut removed = 0;
        let mut examined = 0;
        // Empty slots cost little but are bounded too.
        let mut visits = budget.saturating_mul(8).saturating_add(64);
        while examined < budget && visits > 0 && self.sweep.hand < self.table.flows.slots() {
            visits -= 1;
            let hand = self.sweep.hand;
            match self.table.flows.get(hand) {
                None => self.sweep.hand += 1,
                Some(f) if f.expires <= now => {
                    examined += 1;
                    self.remove_flow(hand);
                    removed += 1;
                }
                Some(f) => {
                    examined += 1;
                    self.sweep.kept_min = self.sweep.kept_min.min(f.expires);
                    self.sweep.hand += 1;
                }
            }
        }
        if self.sweep.hand >= self.table.flows.slots() {
            self.sweep.running = false;
            self.sweep.hand = 0;
            self.sweep.earliest = self.sweep.kept_min.min(self.sweep.since_start);
        }
        removed
    }
}
