//! The public [`Nat`] type: its state, grouped by idea, and its public
//! methods. The packet paths are in `outbound`, `inbound`, `icmp_error`,
//! `hairpin`, `fragments` and `batch`; expiry in `sweep`.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::flows::Table;
use crate::fragments::{Fragments, first_fragment};
use crate::hairpin::EchoRequesters;
use crate::ports::Ports;
use crate::settings::Settings;
use crate::sweep::Sweep;
use crate::table::{Keys, PROTO_ICMP, PROTO_TCP, PROTO_UDP, SeededState};
use crate::tuple::{DatagramId, EndpointKey};
use crate::{
    ConfigError, Direction, DropReason, Instant, L4Checksum, MappingInfo, NatConfig, NatStats,
    PortForward, Protocol, Redirect, Released, RuleError, Verdict,
};

/// The NAT: a connection table plus the rules (port forwards, redirects).
///
/// Memory: flows live inline in an open-addressing table keyed by the
/// internal 5-tuple (32-byte slots) at a load factor between 3/8 and 3/4:
/// 43–85.3 bytes per flow depending on where the table is in its doubling
/// cycle (65–67 measured at 1 000, 64 000 and 1 000 000 flows). The
/// external side needs no index of its own (see `Nat::find_inbound`). Port
/// tables add 776 KiB per protocol in use, allocated on first use.
/// [`Nat::memory_bytes`] reports the total.
#[derive(Debug)]
pub struct Nat {
    /// The validated configuration.
    pub(crate) settings: Settings,
    /// Counters.
    pub(crate) stats: NatStats,
    /// The flows, their hash keys and per-host counts.
    pub(crate) table: Table,
    /// External ports and forwards.
    pub(crate) ports: Ports,
    /// Redirect rules: (protocol, address, port) the guest sends to -> where
    /// it really goes.
    pub(crate) redirects: HashMap<EndpointKey, SocketAddrV4, SeededState>,
    /// Where hairpinned echo replies go.
    pub(crate) echo_requesters: EchoRequesters,
    /// Fragment state and held fragments.
    pub(crate) fragments: Fragments,
    /// The expiry sweep.
    pub(crate) sweep: Sweep,
}

impl Nat {
    /// Validates `config` and builds an empty table. The hash key is drawn
    /// from std's per-process random state; use [`Nat::with_seed`] for a
    /// reproducible one.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] names the first field out of range.
    pub fn new(config: NatConfig) -> Result<Self, ConfigError> {
        let seed = std::collections::hash_map::RandomState::new().hash_one(0x006e_6174_u64);
        Nat::with_seed(config, seed)
    }

    /// Like [`Nat::new`] with an explicit hash seed (tests, benches).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] names the first field out of range.
    pub fn with_seed(config: NatConfig, seed: u64) -> Result<Self, ConfigError> {
        let settings = Settings::new(config)?;
        let c = &settings.config;
        let keys = Keys::from_seed(seed);
        let hasher = keys.build();
        Ok(Nat {
            stats: NatStats::default(),
            table: Table::new(keys, c.max_flows.min(64)),
            ports: Ports::new(hasher),
            redirects: HashMap::with_hasher(hasher),
            echo_requesters: EchoRequesters::new(hasher),
            fragments: Fragments::new(
                hasher,
                c.max_fragments,
                c.max_held_fragments,
                c.max_held_bytes,
            ),
            sweep: Sweep::new(),
            settings,
        })
    }

    /// Translates a packet from the internal side, in place. Never panics;
    /// no allocation on the established-flow path.
    ///
    /// Returns [`Verdict::Forward`] (send it out), [`Verdict::Hairpin`]
    /// (deliver it back inside: it was addressed to the external address) or
    /// [`Verdict::Drop`] (counted). A forwarded packet has a valid IPv4 header
    /// checksum; transport checksums are updated incrementally, so a valid
    /// one stays valid.
    pub fn outbound(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        self.outbound_and_count(packet, now, false)
    }

    /// [`Nat::outbound`] for a packet whose TCP/UDP checksum field is of
    /// the kind `l4` says ([`L4Checksum::Partial`]: only the pseudo-header
    /// sum, to be completed later, e.g. with [`crate::complete_l4_checksum`]).
    pub fn outbound_with(&mut self, packet: &mut [u8], now: Instant, l4: L4Checksum) -> Verdict {
        self.outbound_and_count(packet, now, l4 == L4Checksum::Partial)
    }

    /// Translates a packet from the external side, in place. Never panics;
    /// no allocation on the established-flow path. Only packets matching a
    /// mapping (per the filtering mode) or a port forward are translated.
    pub fn inbound(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        self.inbound_and_count(packet, now, false)
    }

    /// [`Nat::inbound`] for a packet whose TCP/UDP checksum field is of the
    /// kind `l4` says (see [`Nat::outbound_with`]).
    pub fn inbound_with(&mut self, packet: &mut [u8], now: Instant, l4: L4Checksum) -> Verdict {
        self.inbound_and_count(packet, now, l4 == L4Checksum::Partial)
    }

    /// Translates a batch of packets from the internal side: the same as
    /// calling [`Nat::outbound`] on each in order, writing `verdicts[i]` for
    /// `packets[i]` (up to the shorter length), but faster on large tables:
    /// it reads ahead the table slots of the next packets so that their cache
    /// misses overlap.
    pub fn outbound_batch<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        now: Instant,
        verdicts: &mut [Verdict],
    ) {
        self.batch(packets, &[], now, verdicts, Direction::Outbound);
    }

    /// Translates a batch of packets from the external side: the same as
    /// calling [`Nat::inbound`] on each in order (see [`Nat::outbound_batch`]).
    pub fn inbound_batch<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        now: Instant,
        verdicts: &mut [Verdict],
    ) {
        self.batch(packets, &[], now, verdicts, Direction::Inbound);
    }

    /// [`Nat::outbound_batch`] with `l4[i]` the checksum kind of
    /// `packets[i]`; missing entries are [`L4Checksum::Complete`].
    pub fn outbound_batch_with<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        l4: &[L4Checksum],
        now: Instant,
        verdicts: &mut [Verdict],
    ) {
        self.batch(packets, l4, now, verdicts, Direction::Outbound);
    }

    /// [`Nat::inbound_batch`] with `l4[i]` the checksum kind of
    /// `packets[i]`; missing entries are [`L4Checksum::Complete`].
    pub fn inbound_batch_with<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        l4: &[L4Checksum],
        now: Instant,
        verdicts: &mut [Verdict],
    ) {
        self.batch(packets, l4, now, verdicts, Direction::Inbound);
    }

    /// Hands out the next held fragment of `direction` that the NAT has
    /// translated since its first fragment came through: copies it to the
    /// start of `buf` and says how long it is and where it goes
    /// ([`Verdict::Forward`] or [`Verdict::Hairpin`], as [`Nat::outbound`] /
    /// [`Nat::inbound`] would have said). `None` when nothing is ready. Call
    /// it after a batch until `None`; a packet longer than `buf` is dropped
    /// and counted ([`DropReason::ReleaseBufferTooShort`]) and the next one is
    /// tried. Ready packets not drained within [`crate::Timeouts::fragment`] of
    /// their arrival are dropped by [`Nat::expire`].
    pub fn poll_released(&mut self, direction: Direction, buf: &mut [u8]) -> Option<Released> {
        self.next_released(direction, buf)
    }

    /// Number of held fragments (waiting for their first fragment, or ready
    /// for [`Nat::poll_released`]) and their bytes, both directions.
    pub fn held_fragments(&self) -> (usize, usize) {
        let held = &self.fragments.held;
        (held.count(), held.bytes())
    }

    /// [`Nat::held_fragments`] of one direction (what
    /// [`NatConfig::max_held_fragments`] and [`NatConfig::max_held_bytes`]
    /// cap).
    pub fn held_fragments_of(&self, direction: Direction) -> (usize, usize) {
        self.fragments.held.of(direction)
    }

    /// Removes expired flows and fragment state. Examines at most `budget`
    /// flows (so removes at most `budget`) and `8 × budget + 64` table slots and returns how many it removed;
    /// call again while [`Nat::next_deadline`] is due. Fragment state (at
    /// most `max_fragments` entries) and held fragments (at most
    /// `max_held_fragments`; each expired one is dropped and counted as
    /// [`DropReason::Fragment`]) are purged when due, outside the budget.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let now = now.as_millis();
        self.expire_fragments(now);
        self.echo_requesters.expire(now);
        self.expire_flows(now, budget)
    }

    /// When [`Nat::expire`] next has work, if ever. A time in the past means
    /// "now" (a sweep is under way). It may be early (a flow was refreshed
    /// since), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.sweep.next_deadline(self.table.flows.is_empty()),
            self.fragments.next_deadline(),
            self.echo_requesters.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(Instant::from_millis)
    }

    /// Adds a port forward: inbound packets to (`protocol`, external address,
    /// `external_port`) go to `internal`, which sees the real client address.
    ///
    /// # Errors
    /// [`RuleError::PortInUse`] if the external port is forwarded or mapped;
    /// [`RuleError::Invalid`] for ICMP, port 0 or a target outside the
    /// internal network.
    pub fn add_forward(&mut self, forward: PortForward) -> Result<(), RuleError> {
        if forward.protocol == Protocol::Icmp {
            return Err(RuleError::Invalid("port forwards are for TCP or UDP"));
        }
        if !self.settings.is_internal(u32::from(*forward.internal.ip())) {
            return Err(RuleError::Invalid(
                "forward target is outside the internal network",
            ));
        }
        if forward.external_port == 0 || forward.internal.port() == 0 {
            return Err(RuleError::Invalid("port 0"));
        }
        self.ports.add_forward(
            protocol_index(forward.protocol),
            forward.external_port,
            forward.internal,
        )
    }

    /// Removes a port forward; returns whether it existed. Sessions already
    /// set up through it live on until they expire.
    pub fn remove_forward(&mut self, protocol: Protocol, external_port: u16) -> bool {
        self.ports
            .remove_forward(protocol_index(protocol), external_port)
    }

    /// Adds an outbound redirect: new internal flows to `from` go to `to`
    /// (each with its own external port) and replies appear to come from
    /// `from`.
    ///
    /// # Errors
    /// [`RuleError::PortInUse`] if `from` is already redirected;
    /// [`RuleError::Invalid`] for ICMP or a `to` inside the internal network.
    pub fn add_redirect(&mut self, redirect: Redirect) -> Result<(), RuleError> {
        if redirect.protocol == Protocol::Icmp {
            return Err(RuleError::Invalid("redirects are for TCP or UDP"));
        }
        let to = u32::from(*redirect.to.ip());
        if self.settings.is_internal(to) || to == self.settings.external_addr {
            return Err(RuleError::Invalid(
                "redirect target is inside the internal network or the external address",
            ));
        }
        let key = endpoint_key(redirect.protocol, redirect.from);
        if self.redirects.contains_key(&key) {
            return Err(RuleError::PortInUse(redirect.from.port()));
        }
        self.redirects.insert(key, redirect.to);
        Ok(())
    }

    /// Removes a redirect; returns whether it existed. Flows already
    /// redirected live on until they expire.
    pub fn remove_redirect(&mut self, protocol: Protocol, from: SocketAddrV4) -> bool {
        self.redirects
            .remove(&endpoint_key(protocol, from))
            .is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Number of flows in the table.
    pub fn len(&self) -> usize {
        self.table.flows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.flows.is_empty()
    }

    /// The configuration in force.
    pub fn config(&self) -> &NatConfig {
        &self.settings.config
    }

    /// All flows, for debugging (allocates; not for the hot path).
    pub fn mappings(&self) -> Vec<MappingInfo> {
        let external = Ipv4Addr::from(self.settings.external_addr);
        self.table
            .flows
            .iter()
            .map(|f| MappingInfo {
                protocol: protocol_of(f.protocol),
                internal: SocketAddrV4::new(Ipv4Addr::from(f.internal_addr), f.internal_port),
                external: SocketAddrV4::new(external, f.external_port),
                expires: Instant::from_millis(f.expires),
            })
            .collect()
    }

    /// Number of flows one internal host created (what
    /// [`NatConfig::max_flows_per_host`] caps; flows created from outside
    /// through a port forward are not counted here).
    pub fn host_flows(&self, host: Ipv4Addr) -> usize {
        self.table
            .per_host
            .get(&u32::from(host))
            .map_or(0, |&n| n as usize)
    }

    /// Number of flows created from outside through port forwards, in
    /// total and through the forward of (`protocol`, `external_port`) (what
    /// [`NatConfig::max_inbound_flows`] and
    /// [`NatConfig::max_inbound_flows_per_forward`] cap).
    pub fn inbound_flows(&self, protocol: Protocol, external_port: u16) -> (usize, usize) {
        let port = crate::tuple::PortKey {
            protocol: protocol_index(protocol),
            port: external_port,
        };
        (
            self.table.inbound.total,
            self.table.inbound.of_forward(port),
        )
    }

    /// Number of tracked fragmented datagrams.
    pub fn fragments(&self) -> usize {
        self.fragments.len()
    }

    /// Bytes of heap held by the flow table, its indexes, port tables and
    /// the queues of unconfirmed flows from outside.
    pub fn memory_bytes(&self) -> usize {
        self.table.flows.memory() + self.ports.memory() + self.table.inbound.memory()
    }

    /// Bytes of the flow table and its inbound index only, divided by the number
    /// of flows (the per-flow cost; 0 when empty).
    pub fn table_bytes_per_flow(&self) -> usize {
        let t = self.table.flows.memory();
        t.checked_div(self.table.flows.len()).unwrap_or(0)
    }

    // -----------------------------------------------------------------------
    // Counting around the packet paths.

    /// [`Nat::outbound`] with the checksum kind as a flag: translates,
    /// counts the verdict and handles a first fragment.
    #[inline(always)]
    pub(crate) fn outbound_and_count(
        &mut self,
        packet: &mut [u8],
        now: Instant,
        partial: bool,
    ) -> Verdict {
        if let Some(datagram) = first_fragment(packet) {
            return self.first_fragment_and_count(
                datagram,
                Direction::Outbound,
                packet,
                now,
                partial,
            );
        }
        let v = self.translate_outbound(packet, now.as_millis(), partial);
        self.count_verdict(Direction::Outbound, v);
        v
    }

    /// [`Nat::inbound`] with the checksum kind as a flag (see
    /// [`Nat::outbound_and_count`]).
    #[inline(always)]
    pub(crate) fn inbound_and_count(
        &mut self,
        packet: &mut [u8],
        now: Instant,
        partial: bool,
    ) -> Verdict {
        if let Some(datagram) = first_fragment(packet) {
            return self.first_fragment_and_count(
                datagram,
                Direction::Inbound,
                packet,
                now,
                partial,
            );
        }
        let v = self.translate_inbound(packet, now.as_millis(), partial, true);
        self.count_verdict(Direction::Inbound, v);
        v
    }

    /// A first fragment of `datagram` through the path of `direction`:
    /// translates, counts, then records the translation for the later
    /// fragments. Apart from the packet paths (and not inlined into them)
    /// so that they need not keep the packet and the time in registers up
    /// to their end.
    #[inline(never)]
    fn first_fragment_and_count(
        &mut self,
        datagram: DatagramId,
        direction: Direction,
        packet: &mut [u8],
        now: Instant,
        partial: bool,
    ) -> Verdict {
        let v = match direction {
            Direction::Outbound => self.translate_outbound(packet, now.as_millis(), partial),
            Direction::Inbound => self.translate_inbound(packet, now.as_millis(), partial, true),
        };
        self.count_verdict(direction, v);
        self.after_first_fragment(datagram, direction, packet, v, now.as_millis());
        v
    }

    /// Counts the verdict of a packet of `direction`.
    #[inline(always)]
    fn count_verdict(&mut self, direction: Direction, v: Verdict) {
        match (v, direction) {
            (Verdict::Forward, Direction::Outbound) => self.stats.outbound_forwarded += 1,
            (Verdict::Hairpin, Direction::Outbound) => self.stats.hairpinned += 1,
            (Verdict::Forward | Verdict::Hairpin, Direction::Inbound) => {
                self.stats.inbound_forwarded += 1;
            }
            (Verdict::Drop(r), _) => self.count_drop(r),
            (Verdict::Held, _) => self.stats.fragments_held += 1,
        }
    }

    /// Counts a drop.
    #[inline]
    pub(crate) fn count_drop(&mut self, r: DropReason) {
        self.count_drops(r, 1);
    }

    /// Counts `n` drops.
    #[inline]
    pub(crate) fn count_drops(&mut self, r: DropReason, n: usize) {
        if let Some(c) = self.stats.drops.get_mut(r.index()) {
            *c += n as u64;
        }
    }
}

/// The protocol index of `p`.
fn protocol_index(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => PROTO_ICMP,
    }
}

/// The protocol of index `p`.
fn protocol_of(p: u8) -> Protocol {
    match p {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => Protocol::Icmp,
    }
}

/// The key of a redirect from `from`.
fn endpoint_key(protocol: Protocol, from: SocketAddrV4) -> EndpointKey {
    EndpointKey {
        protocol: protocol_index(protocol),
        addr: u32::from(*from.ip()),
        port: from.port(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn redirect_state_goes_with_its_last_flow() {
        let mut nat = testing::nat();
        let from = SocketAddrV4::new(testing::GATEWAY, 53);
        let to = SocketAddrV4::new(testing::SERVER, 53);
        let r = Redirect {
            protocol: Protocol::Udp,
            from,
            to,
        };
        assert_eq!(nat.add_redirect(r), Ok(()));
        for port in [5000, 5001] {
            let guest = SocketAddrV4::new(testing::GUEST, port);
            let mut p = testing::udp(guest, from, b"q");
            assert_eq!(nat.outbound(&mut p, Instant::ZERO), Verdict::Forward);
        }
        assert_eq!(nat.ports.redirected.len(), 2);
        let late = Instant::from_secs(100_000);
        while nat.next_deadline().is_some_and(|t| t <= late) {
            let _ = nat.expire(late, 16);
        }
        assert!(nat.is_empty());
        assert!(nat.ports.redirected.is_empty());
        assert!(
            nat.ports
                .tables
                .iter()
                .all(|t| (0..=u16::MAX).all(|p| t.refs(p) == 0))
        );
    }
}
