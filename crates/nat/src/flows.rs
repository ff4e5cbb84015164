//! Adding and removing flows: the caps, table growth, and what a flow holds
//! apart from its slot (a reference on its external port, a count on its
//! internal host, or, for a flow created from outside, a place in the
//! inbound budget).
//!
//! # Two budgets
//!
//! Flows the guest creates count in `max_flows` and `max_flows_per_host`.
//! Flows created from outside (an inbound packet matched a port forward)
//! count only in the inbound budget: `max_inbound_flows` in total and
//! `max_inbound_flows_per_forward` per forward. Whatever outsiders send, the
//! guest's own flows keep their whole capacity.
//!
//! A flow from outside starts unconfirmed (`state::UNCONFIRMED`, conntrack's
//! "not ASSURED") and keeps the short `Timeouts::inbound_unconfirmed` until
//! the remote answers the guest (see `inbound`: `confirms_tcp`,
//! `Nat::confirm_udp`). When the budget is full, a new flow from outside
//! evicts the oldest unconfirmed one (conntrack's `early_drop`): a SYN flood
//! with spoofed sources then only churns unconfirmed flows, and a real client
//! still gets in.

use std::collections::{HashMap, VecDeque};

use crate::DropReason;
use crate::family::{Addr, Family};
use crate::table::{Flow, FlowTable, Keys, SeededState, state};
use crate::translator::Engine;
use crate::tuple::{FiveTuple, PortKey};

/// The flow table, its hash keys and the per-host flow counts.
#[derive(Debug)]
pub(crate) struct Table<A: Addr> {
    /// Hash keys of the table (and seed of the cold-path maps).
    pub(crate) keys: Keys,
    /// The flows.
    pub(crate) flows: FlowTable<A>,
    /// Flows per internal host (those the host created).
    pub(crate) per_host: HashMap<A, u32, SeededState>,
    /// Flows created from outside.
    pub(crate) inbound: InboundBudget<A>,
}

/// The flows created from outside: their count, per forward and in total,
/// and the unconfirmed ones of each forward in creation order.
#[derive(Debug)]
pub(crate) struct InboundBudget<A> {
    /// Flows created from outside, confirmed or not.
    pub(crate) total: usize,
    /// Per port forward (protocol, external port).
    forwards: HashMap<PortKey, ForwardFlows<A>, SeededState>,
}

/// The flows created from outside through one forward.
#[derive(Debug)]
struct ForwardFlows<A> {
    /// How many (confirmed or not).
    count: usize,
    /// Internal-side keys of flows created unconfirmed, oldest first, with
    /// their creation time. Entries of flows since confirmed or removed are
    /// skipped when met and compacted away when they outnumber the flows.
    unconfirmed: VecDeque<(u64, FiveTuple<A>)>,
}

impl<A> Default for ForwardFlows<A> {
    fn default() -> Self {
        ForwardFlows {
            count: 0,
            unconfirmed: VecDeque::new(),
        }
    }
}

impl<A: Addr> InboundBudget<A> {
    fn new(hasher: SeededState) -> InboundBudget<A> {
        InboundBudget {
            total: 0,
            forwards: HashMap::with_hasher(hasher),
        }
    }

    /// Flows from outside through forward `port` (a gauge).
    pub(crate) fn of_forward(&self, port: PortKey) -> usize {
        self.forwards.get(&port).map_or(0, |f| f.count)
    }

    /// Bytes of the queues of unconfirmed flows (compacted beyond twice the
    /// forward's flows and 16: about 2 × `max_inbound_flows_per_forward`
    /// entries of 24 bytes per forward in use at most).
    pub(crate) fn memory(&self) -> usize {
        self.forwards
            .values()
            .map(|f| f.unconfirmed.capacity() * core::mem::size_of::<(u64, FiveTuple<A>)>())
            .sum()
    }
}

impl<A: Addr> Table<A> {
    /// An empty table with room for `capacity` flows before it grows.
    pub(crate) fn new(keys: Keys, capacity: usize) -> Table<A> {
        Table {
            keys,
            flows: FlowTable::with_capacity(capacity),
            per_host: HashMap::with_hasher(keys.build()),
            inbound: InboundBudget::new(keys.build()),
        }
    }

    /// Whether the flow with internal-side `key` on `port` is still one from
    /// outside and unconfirmed; its position if so.
    fn unconfirmed_at(&self, port: PortKey, key: &FiveTuple<A>) -> Option<usize> {
        let hash = self.keys.hash(key);
        let want = state::INBOUND | state::UNCONFIRMED;
        self.flows
            .find(hash, |f| {
                f.has_key(key) && f.external_port == port.port && f.state & want == want
            })
            .map(|i| i as usize)
    }

    /// The oldest live unconfirmed flow of forward `port`: its creation time
    /// and position. Drops stale entries from the front.
    fn oldest_unconfirmed(&mut self, port: PortKey) -> Option<(u64, usize)> {
        loop {
            let &(created, key) = self.inbound.forwards.get(&port)?.unconfirmed.front()?;
            if let Some(i) = self.unconfirmed_at(port, &key) {
                return Some((created, i));
            }
            if let Some(f) = self.inbound.forwards.get_mut(&port) {
                f.unconfirmed.pop_front();
            }
        }
    }
}

impl<F: Family> Engine<F> {
    /// Whether a new flow created by internal `host` fits under `max_flows`
    /// and `max_flows_per_host` (flows from outside do not count).
    #[inline]
    pub(crate) fn check_caps(&self, host: F::Addr) -> Result<(), DropReason> {
        let config = &self.settings.config;
        let own = self
            .table
            .flows
            .len()
            .saturating_sub(self.table.inbound.total);
        if own >= config.max_flows {
            #[cfg(feature = "tracing")]
            tracing::debug!(max = config.max_flows, "nat table full, new flow refused");
            return Err(DropReason::TableFull);
        }
        if self
            .table
            .per_host
            .get(&host)
            .is_some_and(|&n| n as usize >= config.max_flows_per_host)
        {
            return Err(DropReason::HostLimit);
        }
        Ok(())
    }

    /// Inserts `f` (whose internal-side key hashes to `hash` and is absent);
    /// returns its position.
    pub(crate) fn insert_flow(&mut self, f: Flow<F::Addr>, hash: u32) -> usize {
        if self.table.flows.full() {
            self.grow();
        }
        if let Some(r) = self
            .ports
            .table_mut(f.protocol)
            .and_then(|t| t.refs_mut(f.external_port))
        {
            *r += 1;
        }
        if f.state & state::INBOUND == 0 {
            *self.table.per_host.entry(f.internal_addr()).or_insert(0) += 1;
        } else {
            // A new flow's deadline is its creation time until the packet
            // path that created it sets it.
            self.count_inbound_flow(&f, f.expires);
        }
        let idx = self.table.flows.insert(hash, f);
        self.stats.mappings_created += 1;
        self.stats.flows = self.table.flows.len() as u64;
        idx
    }

    /// Doubles the flow table; every position changes, so a sweep under way
    /// starts over.
    #[cold]
    fn grow(&mut self) {
        self.table.flows.grow(&self.table.keys);
        self.sweep.restart();
    }

    /// Removes the flow at position `idx`, releasing its external port and
    /// its host count.
    pub(crate) fn remove_flow(&mut self, idx: usize) {
        let Some(f) = self.table.flows.get(idx).copied() else {
            return;
        };
        self.ports.release(f.protocol, f.external_port);
        if f.state & state::INBOUND != 0 {
            self.uncount_inbound_flow(&f);
        } else if let Some(n) = self.table.per_host.get_mut(&f.internal_addr()) {
            *n -= 1;
            if *n == 0 {
                self.table.per_host.remove(&f.internal_addr());
            }
        }
        self.table.flows.remove(idx, &self.table.keys, |_, _, _| {});
        self.stats.mappings_expired += 1;
        self.stats.flows = self.table.flows.len() as u64;
    }
}

impl<F: Family> Engine<F> {
    /// Removes the flows created from outside on external `port` of `protocol` (the sessions
    /// of a port forward); returns how many. One pass over the table: a removal shifts later
    /// flows back into the hole, so the same position is looked at again.
    #[cold]
    pub(crate) fn remove_inbound_sessions(&mut self, protocol: u8, port: u16) -> usize {
        let mut removed = 0;
        let mut pos = 0;
        while pos < self.table.flows.slots() {
            match self.table.flows.get(pos) {
                Some(f)
                    if f.protocol == protocol
                        && f.external_port == port
                        && f.state & state::INBOUND != 0 =>
                {
                    self.remove_flow(pos);
                    removed += 1;
                }
                _ => pos += 1,
            }
        }
        removed
    }

    /// Makes room for a new flow from outside through forward `port`: if
    /// the forward or the whole inbound budget is full, evicts the oldest
    /// unconfirmed flow (of this forward, or of any forward when the total
    /// is full); refuses when there is none.
    #[cold]
    pub(crate) fn admit_inbound(&mut self, port: PortKey) -> Result<(), DropReason> {
        let config = &self.settings.config;
        let (max_total, max_forward) = (
            config.max_inbound_flows,
            config.max_inbound_flows_per_forward,
        );
        if self.table.inbound.of_forward(port) >= max_forward {
            let (_, i) = self
                .table
                .oldest_unconfirmed(port)
                .ok_or(DropReason::InboundLimit)?;
            self.evict(i);
        }
        if self.table.inbound.total >= max_total {
            let ports: Vec<PortKey> = self.table.inbound.forwards.keys().copied().collect();
            let oldest = ports
                .into_iter()
                .filter_map(|p| self.table.oldest_unconfirmed(p))
                .min_by_key(|&(created, _)| created);
            let (_, i) = oldest.ok_or(DropReason::InboundLimit)?;
            self.evict(i);
        }
        Ok(())
    }

    /// Removes the unconfirmed flow from outside at `i` to make room.
    fn evict(&mut self, i: usize) {
        self.remove_flow(i);
        self.stats.inbound_evicted += 1;
    }

    /// Counts flow `f` (from outside, being inserted) in the inbound budget,
    /// created at `created`.
    fn count_inbound_flow(&mut self, f: &Flow<F::Addr>, created: u64) {
        let port = PortKey {
            protocol: f.protocol,
            port: f.external_port,
        };
        self.table.inbound.total += 1;
        let forward = self.table.inbound.forwards.entry(port).or_default();
        forward.count += 1;
        if f.state & state::UNCONFIRMED != 0 {
            forward.unconfirmed.push_back((created, f.key()));
            // Entries of flows since confirmed or removed: compact when they
            // outnumber the live flows (amortised O(1) per flow).
            if forward.unconfirmed.len() > 2 * forward.count + 16 {
                self.compact_unconfirmed(port);
            }
        }
    }

    /// Keeps only the entries of live unconfirmed flows of forward `port`.
    #[cold]
    fn compact_unconfirmed(&mut self, port: PortKey) {
        let Some(mut q) = self
            .table
            .inbound
            .forwards
            .get_mut(&port)
            .map(|f| core::mem::take(&mut f.unconfirmed))
        else {
            return;
        };
        q.retain(|(_, key)| self.table.unconfirmed_at(port, key).is_some());
        if let Some(f) = self.table.inbound.forwards.get_mut(&port) {
            f.unconfirmed = q;
        }
    }

    /// A flow from outside that was unconfirmed at creation started over
    /// (revived after expiry): it gets a new place in its forward's queue.
    pub(crate) fn requeue_unconfirmed(&mut self, f: &Flow<F::Addr>, now: u64) {
        let port = PortKey {
            protocol: f.protocol,
            port: f.external_port,
        };
        if let Some(forward) = self.table.inbound.forwards.get_mut(&port) {
            forward.unconfirmed.push_back((now, f.key()));
            if forward.unconfirmed.len() > 2 * forward.count + 16 {
                self.compact_unconfirmed(port);
            }
        }
    }

    /// Takes flow `f` (from outside, being removed) out of the inbound budget.
    fn uncount_inbound_flow(&mut self, f: &Flow<F::Addr>) {
        let port = PortKey {
            protocol: f.protocol,
            port: f.external_port,
        };
        self.table.inbound.total = self.table.inbound.total.saturating_sub(1);
        if let Some(forward) = self.table.inbound.forwards.get_mut(&port) {
            forward.count = forward.count.saturating_sub(1);
            if forward.count == 0 {
                self.table.inbound.forwards.remove(&port);
            }
        }
    }
}
