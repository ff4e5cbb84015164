//! Adding and removing flows: the caps, table growth, and what a flow holds
//! apart from its slot (a reference on its external port, a count on its
//! internal host).

use std::collections::HashMap;

use crate::DropReason;
use crate::table::{Flow, FlowTable, Keys, SeededState};
use crate::translator::Nat;

/// The flow table, its hash keys and the per-host flow counts.
#[derive(Debug)]
pub(crate) struct Table {
    /// Hash keys of the table (and seed of the cold-path maps).
    pub(crate) keys: Keys,
    /// The flows.
    pub(crate) flows: FlowTable,
    /// Flows per internal host.
    pub(crate) per_host: HashMap<u32, u32, SeededState>,
}

impl Table {
    /// An empty table with room for `capacity` flows before it grows.
    pub(crate) fn new(keys: Keys, capacity: usize) -> Table {
        Table {
            keys,
            flows: FlowTable::with_capacity(capacity),
            per_host: HashMap::with_hasher(keys.build()),
        }
    }
}

impl Nat {
    /// Whether a new flow of internal `host` fits under `max_flows` and
    /// `max_flows_per_host`.
    #[inline]
    pub(crate) fn check_caps(&self, host: u32) -> Result<(), DropReason> {
        let config = &self.settings.config;
        if self.table.flows.len() >= config.max_flows {
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
    pub(crate) fn insert_flow(&mut self, f: Flow, hash: u32) -> usize {
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
        *self.table.per_host.entry(f.internal_addr).or_insert(0) += 1;
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
        if let Some(n) = self.table.per_host.get_mut(&f.internal_addr) {
            *n -= 1;
            if *n == 0 {
                self.table.per_host.remove(&f.internal_addr);
            }
        }
        self.table.flows.remove(idx, &self.table.keys, |_, _, _| {});
        self.stats.mappings_expired += 1;
        self.stats.flows = self.table.flows.len() as u64;
    }
}
