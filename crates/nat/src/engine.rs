//! The translation engine: [`Nat`] and its packet paths.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;
use std::hash::BuildHasher;

use crate::checksum::{self, Delta};
use crate::held::HeldPool;
use crate::packet::{self, Hdr, Kind, Tuple, get8, get16, get32, put16, put32};
use crate::table::{
    Flow, FlowTable, Keys, PROTO_ICMP, PROTO_TCP, PROTO_UDP, ST_FIN_IN, ST_FIN_OUT, ST_IN, ST_OUT,
    ST_REDIRECT, ST_RST, SeededState,
};
use crate::{
    ConfigError, Direction, DropReason, Filtering, Instant, L4Checksum, MappingInfo, NatConfig,
    NatStats, PortForward, Protocol, Redirect, Released, RuleError, Verdict,
};

/// The NAT: a connection table plus the rules (port forwards, redirects).
///
/// Memory: flows live inline in an open-addressing table keyed by the
/// internal 5-tuple (32-byte slots) at a load factor between 3/8 and 3/4:
/// 43–85.3 bytes per flow depending on where the table is in its doubling
/// cycle (65–67 measured at 1 000, 64 000 and 1 000 000 flows). The
/// external side needs no index of its own (see `Nat::find_in`). Port
/// tables add 776 KiB per protocol in use, allocated on first use.
/// [`Nat::memory_bytes`] reports the total.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    stats: NatStats,
    keys: Keys,
    flows: FlowTable,
    ports: [PortTable; 3],
    /// (protocol, external port) of each redirected flow -> the destination
    /// the guest wrote (the flow's internal-side key part).
    redirected: HashMap<(u8, u16), (u32, u16), SeededState>,
    bind_by_int: HashMap<(u8, u32, u16), u16, SeededState>,
    hosts: HashMap<u32, u32, SeededState>,
    forwards: HashMap<(u8, u16), SocketAddrV4, SeededState>,
    redirects: HashMap<(u8, u32, u16), SocketAddrV4, SeededState>,
    frags: HashMap<FragKey, FragState, SeededState>,
    held: HeldPool<FragKey>,
    /// External ICMP identifier -> (sender of the last echo request
    /// hairpinned through it, expiry): where the target's reply goes.
    echo_requesters: HashMap<u16, (u32, u64), SeededState>,
    echo_earliest: u64,
    net: u32,
    mask: u32,
    ext: u32,
    range: (u16, u16),
    t_udp: u64,
    t_est: u64,
    t_trans: u64,
    t_icmp: u64,
    t_frag: u64,
    /// Lower bound of every flow deadline.
    earliest: u64,
    /// Lower bound of deadlines written since the current sweep started.
    since_sweep: u64,
    /// Minimum deadline of the flows the current sweep kept.
    sweep_min: u64,
    /// Next table slot the sweep examines.
    hand: usize,
    sweeping: bool,
    sweep_now: u64,
    frag_earliest: u64,
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
        let c = &config;
        if c.internal_prefix_len > 32 {
            return Err(ConfigError::Invalid(
                "internal_prefix_len must be at most 32",
            ));
        }
        let mask = if c.internal_prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(c.internal_prefix_len))
        };
        let net = u32::from(c.internal_net) & mask;
        let ext = u32::from(c.external_addr);
        if ext & mask == net {
            return Err(ConfigError::Invalid(
                "external_addr is inside the internal network",
            ));
        }
        let (lo, hi) = (*c.port_range.start(), *c.port_range.end());
        if lo < 1024 || lo > hi {
            return Err(ConfigError::Invalid(
                "port_range must be a non-empty range within 1024..=65535",
            ));
        }
        let ms = |d: core::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let t = &c.timeouts;
        if [
            t.udp,
            t.tcp_established,
            t.tcp_transitory,
            t.icmp,
            t.fragment,
        ]
        .iter()
        .any(|d| d.is_zero())
        {
            return Err(ConfigError::Invalid("timeouts must be non-zero"));
        }
        if c.max_flows == 0 || c.max_flows >= u32::MAX as usize {
            return Err(ConfigError::Invalid("max_flows must be in 1..u32::MAX"));
        }
        if c.max_held_fragments > 65_536
            || c.max_held_bytes > 64 << 20
            || (c.max_held_fragments == 0) != (c.max_held_bytes == 0)
        {
            return Err(ConfigError::Invalid(
                "max_held_fragments (at most 65536) and max_held_bytes (at most 64 MiB) must be both 0 or both non-zero",
            ));
        }
        if c.max_flows_per_host == 0 {
            return Err(ConfigError::Invalid(
                "max_flows_per_host must be at least 1",
            ));
        }
        let keys = Keys::from_seed(seed);
        let b = keys.build();
        let initial = c.max_flows.min(64);
        Ok(Nat {
            stats: NatStats::default(),
            keys,
            flows: FlowTable::with_capacity(initial),
            ports: [
                PortTable::default(),
                PortTable::default(),
                PortTable::default(),
            ],
            redirected: HashMap::with_hasher(b),
            bind_by_int: HashMap::with_hasher(b),
            hosts: HashMap::with_hasher(b),
            forwards: HashMap::with_hasher(b),
            redirects: HashMap::with_hasher(b),
            frags: HashMap::with_capacity_and_hasher(c.max_fragments.min(4096), b),
            held: HeldPool::new(c.max_held_fragments, c.max_held_bytes),
            echo_requesters: HashMap::with_hasher(b),
            echo_earliest: u64::MAX,
            net,
            mask,
            ext,
            range: (lo, hi),
            t_udp: ms(t.udp),
            t_est: ms(t.tcp_established),
            t_trans: ms(t.tcp_transitory),
            t_icmp: ms(t.icmp),
            t_frag: ms(t.fragment),
            earliest: u64::MAX,
            since_sweep: u64::MAX,
            sweep_min: u64::MAX,
            hand: 0,
            sweeping: false,
            sweep_now: 0,
            frag_earliest: u64::MAX,
            config,
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
        self.outbound_l4(packet, now, false)
    }

    /// [`Nat::outbound`] for a packet whose TCP/UDP checksum field is of
    /// the kind `l4` says ([`L4Checksum::Partial`]: only the pseudo-header
    /// sum, to be completed later, e.g. with [`crate::complete_l4_checksum`]).
    pub fn outbound_with(&mut self, packet: &mut [u8], now: Instant, l4: L4Checksum) -> Verdict {
        self.outbound_l4(packet, now, l4 == L4Checksum::Partial)
    }

    /// [`Nat::inbound`] for a packet whose TCP/UDP checksum field is of the
    /// kind `l4` says (see [`Nat::outbound_with`]).
    pub fn inbound_with(&mut self, packet: &mut [u8], now: Instant, l4: L4Checksum) -> Verdict {
        self.inbound_l4(packet, now, l4 == L4Checksum::Partial)
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
        self.batch(packets, l4, now, verdicts, true);
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
        self.batch(packets, l4, now, verdicts, false);
    }

    #[inline(always)]
    fn outbound_l4(&mut self, packet: &mut [u8], now: Instant, partial: bool) -> Verdict {
        let first = first_fragment(packet);
        let v = self.out(packet, now.as_millis(), partial);
        match v {
            Verdict::Forward => self.stats.outbound_forwarded += 1,
            Verdict::Hairpin => self.stats.hairpinned += 1,
            Verdict::Drop(r) => self.drop(r),
            Verdict::Held => self.stats.fragments_held += 1,
        }
        if let Some(k) = first {
            self.frag_first(k, DIR_OUT, packet, v, now.as_millis());
        }
        v
    }

    /// Translates a packet from the external side, in place. Never panics;
    /// no allocation on the established-flow path. Only packets matching a
    /// mapping (per the filtering mode) or a port forward are translated.
    pub fn inbound(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        self.inbound_l4(packet, now, false)
    }

    #[inline(always)]
    fn inbound_l4(&mut self, packet: &mut [u8], now: Instant, partial: bool) -> Verdict {
        let first = first_fragment(packet);
        let v = self.inb(packet, now.as_millis(), partial);
        match v {
            Verdict::Forward | Verdict::Hairpin => self.stats.inbound_forwarded += 1,
            Verdict::Drop(r) => self.drop(r),
            Verdict::Held => self.stats.fragments_held += 1,
        }
        if let Some(k) = first {
            self.frag_first(k, DIR_IN, packet, v, now.as_millis());
        }
        v
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
        self.batch(packets, &[], now, verdicts, true);
    }

    /// Translates a batch of packets from the external side: the same as
    /// calling [`Nat::inbound`] on each in order (see [`Nat::outbound_batch`]).
    pub fn inbound_batch<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        now: Instant,
        verdicts: &mut [Verdict],
    ) {
        self.batch(packets, &[], now, verdicts, false);
    }

    /// Hands out the next held fragment of direction `dir` that the NAT has
    /// translated since its first fragment came through: copies it to the
    /// start of `buf` and says how long it is and where it goes
    /// ([`Verdict::Forward`] or [`Verdict::Hairpin`], as [`Nat::outbound`] /
    /// [`Nat::inbound`] would have said). `None` when nothing is ready. Call
    /// it after a batch until `None`; a packet longer than `buf` is dropped
    /// and counted ([`DropReason::ReleaseBufferTooShort`]) and the next one is
    /// tried. Ready packets not drained within [`crate::Timeouts::fragment`] of
    /// their arrival are dropped by [`Nat::expire`].
    pub fn poll_released(&mut self, dir: Direction, buf: &mut [u8]) -> Option<Released> {
        let d = match dir {
            Direction::Outbound => usize::from(DIR_OUT),
            Direction::Inbound => usize::from(DIR_IN),
        };
        loop {
            let r = self.held.pop_ready(d)?;
            let len = r.bytes.len();
            let Some(dst) = buf.get_mut(..len) else {
                self.drop(DropReason::ReleaseBufferTooShort);
                continue;
            };
            dst.copy_from_slice(&r.bytes);
            self.stats.fragments_released += 1;
            match (dir, r.verdict) {
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

    /// Number of held fragments (waiting for their first fragment, or ready
    /// for [`Nat::poll_released`]) and their bytes.
    pub fn held_fragments(&self) -> (usize, usize) {
        (self.held.count(), self.held.bytes())
    }

    /// Removes expired flows and fragment state. Examines at most `budget`
    /// flows (so removes at most `budget`) and `8 × budget + 64` table slots and returns how many it removed;
    /// call again while [`Nat::next_deadline`] is due. Fragment state (at
    /// most `max_fragments` entries) and held fragments (at most
    /// `max_held_fragments`; each expired one is dropped and counted as
    /// [`DropReason::Fragment`]) are purged when due, outside the budget.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let now = now.as_millis();
        self.sweep_now = now;
        if now >= self.frag_earliest {
            let mut min = u64::MAX;
            self.frags.retain(|_, s| {
                let keep = s.expires > now;
                if keep {
                    min = min.min(s.expires);
                }
                keep
            });
            self.frag_earliest = min;
        }
        let lost = self.held.purge(now);
        if let Some(c) = self.stats.drops.get_mut(DropReason::Fragment.index()) {
            *c += lost as u64;
        }
        if now >= self.echo_earliest {
            let mut min = u64::MAX;
            self.echo_requesters.retain(|_, &mut (_, e)| {
                min = if e > now { min.min(e) } else { min };
                e > now
            });
            self.echo_earliest = min;
        }
        if !self.sweeping {
            if self.flows.is_empty() || now < self.earliest {
                return 0;
            }
            self.sweeping = true;
            self.hand = 0;
            self.sweep_min = u64::MAX;
            self.since_sweep = u64::MAX;
        }
        let mut removed = 0;
        let mut examined = 0;
        // Empty slots cost little but are bounded too.
        let mut visits = budget.saturating_mul(8).saturating_add(64);
        while examined < budget && visits > 0 && self.hand < self.flows.slots() {
            visits -= 1;
            match self.flows.get(self.hand) {
                None => self.hand += 1,
                Some(f) if f.expires <= now => {
                    examined += 1;
                    self.remove_flow(self.hand);
                    removed += 1;
                }
                Some(f) => {
                    examined += 1;
                    self.sweep_min = self.sweep_min.min(f.expires);
                    self.hand += 1;
                }
            }
        }
        if self.hand >= self.flows.slots() {
            self.sweeping = false;
            self.hand = 0;
            self.earliest = self.sweep_min.min(self.since_sweep);
        }
        removed
    }

    /// When [`Nat::expire`] next has work, if ever. A time in the past means
    /// "now" (a sweep is under way). It may be early (a flow was refreshed
    /// since), never late.
    pub fn next_deadline(&self) -> Option<Instant> {
        let flows = if self.sweeping {
            Some(self.sweep_now)
        } else if self.flows.is_empty() {
            None
        } else {
            Some(self.earliest)
        };
        let frags = [
            (!self.frags.is_empty()).then_some(self.frag_earliest),
            self.held.next_deadline(),
            (!self.echo_requesters.is_empty()).then_some(self.echo_earliest),
        ]
        .into_iter()
        .flatten()
        .min();
        match (flows, frags) {
            (Some(a), Some(b)) => Some(Instant::from_millis(a.min(b))),
            (a, b) => a.or(b).map(Instant::from_millis),
        }
    }

    /// Adds a port forward: inbound packets to (`protocol`, external address,
    /// `external_port`) go to `internal`, which sees the real client address.
    ///
    /// # Errors
    /// [`RuleError::PortInUse`] if the external port is forwarded or mapped;
    /// [`RuleError::Invalid`] for ICMP, port 0 or a target outside the
    /// internal network.
    pub fn add_forward(&mut self, forward: PortForward) -> Result<(), RuleError> {
        let proto = match forward.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Icmp => return Err(RuleError::Invalid("port forwards are for TCP or UDP")),
        };
        let target = u32::from(*forward.internal.ip());
        if target & self.mask != self.net {
            return Err(RuleError::Invalid(
                "forward target is outside the internal network",
            ));
        }
        if forward.external_port == 0 || forward.internal.port() == 0 {
            return Err(RuleError::Invalid("port 0"));
        }
        let pt = &mut self.ports[usize::from(proto)];
        pt.ensure();
        let port = forward.external_port;
        if pt.kind(port) != B_FREE {
            return Err(RuleError::PortInUse(port));
        }
        pt.set(
            port,
            Binding {
                int_addr: target,
                int_port: forward.internal.port(),
                kind: B_FWD,
                redirect: false,
            },
        );
        self.bind_by_int
            .entry((proto, target, forward.internal.port()))
            .or_insert(port);
        self.forwards.insert((proto, port), forward.internal);
        Ok(())
    }

    /// Removes a port forward; returns whether it existed. Sessions already
    /// set up through it live on until they expire.
    pub fn remove_forward(&mut self, protocol: Protocol, external_port: u16) -> bool {
        let proto = proto_index(protocol);
        let Some(target) = self.forwards.remove(&(proto, external_port)) else {
            return false;
        };
        let pt = &mut self.ports[usize::from(proto)];
        let refs = pt.refs(external_port);
        if refs > 0 {
            if let Some(b) = pt.get_mut(external_port) {
                b.kind = B_DYN;
            }
        } else {
            pt.free(external_port);
            let key = (proto, u32::from(*target.ip()), target.port());
            if self.bind_by_int.get(&key) == Some(&external_port) {
                self.bind_by_int.remove(&key);
            }
        }
        true
    }

    /// Adds an outbound redirect: new internal flows to `from` go to `to`
    /// (each with its own external port) and replies appear to come from
    /// `from`.
    ///
    /// # Errors
    /// [`RuleError::PortInUse`] if `from` is already redirected;
    /// [`RuleError::Invalid`] for ICMP or a `to` inside the internal network.
    pub fn add_redirect(&mut self, redirect: Redirect) -> Result<(), RuleError> {
        let proto = match redirect.protocol {
            Protocol::Tcp => PROTO_TCP,
            Protocol::Udp => PROTO_UDP,
            Protocol::Icmp => return Err(RuleError::Invalid("redirects are for TCP or UDP")),
        };
        let to = u32::from(*redirect.to.ip());
        if to & self.mask == self.net || to == self.ext {
            return Err(RuleError::Invalid(
                "redirect target is inside the internal network or the external address",
            ));
        }
        let key = (proto, u32::from(*redirect.from.ip()), redirect.from.port());
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
            .remove(&(proto_index(protocol), u32::from(*from.ip()), from.port()))
            .is_some()
    }

    /// Counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }

    /// Number of flows in the table.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The configuration in force.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// All flows, for debugging (allocates; not for the hot path).
    pub fn mappings(&self) -> Vec<MappingInfo> {
        let ext = Ipv4Addr::from(self.ext);
        self.flows
            .iter()
            .map(|f| MappingInfo {
                protocol: protocol_of(f.proto),
                internal: SocketAddrV4::new(Ipv4Addr::from(f.int_addr), f.int_port),
                external: SocketAddrV4::new(ext, f.ext_port),
                expires: Instant::from_millis(f.expires),
            })
            .collect()
    }

    /// Number of flows of one internal host.
    pub fn host_flows(&self, host: Ipv4Addr) -> usize {
        self.hosts.get(&u32::from(host)).map_or(0, |&n| n as usize)
    }

    /// Number of tracked fragmented datagrams.
    pub fn fragments(&self) -> usize {
        self.frags.len()
    }

    /// Bytes of heap held by the flow table, its indexes and port tables.
    pub fn memory_bytes(&self) -> usize {
        self.flows.memory() + self.ports.iter().map(PortTable::memory).sum::<usize>()
    }

    /// Bytes of the flow table and its inbound index only, divided by the number
    /// of flows (the per-flow cost; 0 when empty).
    pub fn table_bytes_per_flow(&self) -> usize {
        let t = self.flows.memory();
        t.checked_div(self.flows.len()).unwrap_or(0)
    }
}

// ---------------------------------------------------------------------------
// helpers

/// Direction tags of fragment state.
const DIR_OUT: u8 = 0;
const DIR_IN: u8 = 1;

/// Bits of the even ports in a 64-port bitmap word.
const EVEN: u64 = 0x5555_5555_5555_5555;

const B_FREE: u8 = 0;
const B_DYN: u8 = 1;
const B_FWD: u8 = 2;

/// The external port of a mapping and who owns it: 8 bytes, 8 to a cache
/// line (the inbound path reads one per packet).
#[derive(Clone, Copy, Debug, Default)]
struct Binding {
    int_addr: u32,
    int_port: u16,
    kind: u8,
    /// The port belongs to one redirected flow (see `Nat::redirected`).
    redirect: bool,
}

/// Per-protocol external ports: who holds each, and a bitmap of used ones.
#[derive(Clone, Debug, Default)]
struct PortTable {
    bind: Vec<Binding>,
    /// Flows using each port (apart from `bind`: the hot path never reads it).
    refs: Vec<u32>,
    used: Vec<u64>,
}

impl PortTable {
    fn ensure(&mut self) {
        if self.bind.is_empty() {
            self.bind = vec![Binding::default(); 65536];
            self.refs = vec![0; 65536];
            self.used = vec![0; 1024];
            // Port 0 is never handed out.
            self.mark(0, true);
        }
    }
    fn get(&self, port: u16) -> Option<&Binding> {
        self.bind.get(usize::from(port))
    }
    fn get_mut(&mut self, port: u16) -> Option<&mut Binding> {
        self.bind.get_mut(usize::from(port))
    }
    fn refs(&self, port: u16) -> u32 {
        self.refs.get(usize::from(port)).copied().unwrap_or(0)
    }
    fn refs_mut(&mut self, port: u16) -> Option<&mut u32> {
        self.refs.get_mut(usize::from(port))
    }
    fn kind(&self, port: u16) -> u8 {
        self.get(port).map_or(B_FREE, |b| b.kind)
    }
    fn set(&mut self, port: u16, b: Binding) {
        if let Some(s) = self.get_mut(port) {
            *s = b;
        }
        self.mark(port, true);
    }
    fn free(&mut self, port: u16) {
        if let Some(s) = self.get_mut(port) {
            *s = Binding::default();
        }
        if let Some(r) = self.refs_mut(port) {
            *r = 0;
        }
        self.mark(port, false);
    }
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
        self.bind.capacity() * core::mem::size_of::<Binding>()
            + self.refs.capacity() * 4
            + self.used.capacity() * 8
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FragKey {
    dir: u8,
    proto: u8,
    id: u16,
    src: u32,
    dst: u32,
}

#[derive(Clone, Copy, Debug)]
struct FragState {
    src: u32,
    dst: u32,
    hairpin: bool,
    expires: u64,
}

/// An ICMP error's embedded packet (the part the NAT translates).
#[derive(Clone, Copy, Debug)]
struct Embedded {
    /// Offset of the embedded IPv4 header in the outer packet.
    ip: usize,
    /// Offset of the embedded transport header.
    l4: usize,
    proto: u8,
    kind: Kind,
    tuple: Tuple,
}

fn frag_key(k: (u8, u32, u32, u16), dir: u8) -> FragKey {
    FragKey {
        dir,
        proto: k.0,
        src: k.1,
        dst: k.2,
        id: k.3,
    }
}

/// Rewrites a later fragment's addresses as its first fragment's were.
fn follow(p: &mut [u8], h: &Hdr, s: &FragState) -> Verdict {
    let old = Tuple {
        src: h.src,
        sport: 0,
        dst: h.dst,
        dport: 0,
    };
    let new = Tuple {
        src: s.src,
        sport: 0,
        dst: s.dst,
        dport: 0,
    };
    packet::rewrite(p, h, Kind::Bare, old, new);
    if s.hairpin {
        Verdict::Hairpin
    } else {
        Verdict::Forward
    }
}

fn first_fragment(p: &[u8]) -> Option<(u8, u32, u32, u16)> {
    // MF set and offset 0; the header is validated by the path itself.
    let frag = get16(p, 6);
    (frag & 0x3fff == 0x2000).then(|| (get8(p, 9), get32(p, 12), get32(p, 16), get16(p, 4)))
}

fn proto_index(p: Protocol) -> u8 {
    match p {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Icmp => PROTO_ICMP,
    }
}

fn protocol_of(p: u8) -> Protocol {
    match p {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        _ => Protocol::Icmp,
    }
}

/// What the transport header of a first fragment or whole packet holds.
enum L4 {
    /// A query/transport packet: protocol index, rewrite kind, ports, TCP flags.
    Flow(u8, Kind, u16, u16, u8),
    /// An ICMP error message.
    IcmpError,
    /// An echo reply from inside (its identifier).
    EchoReply(u16),
}

/// Reads the transport header. `out`: the packet comes from inside.
#[inline(always)]
fn l4_info(p: &[u8], h: &Hdr, out: bool) -> Result<L4, DropReason> {
    let l4 = h.ihl;
    let n = h.l4_len();
    match h.proto {
        6 => {
            if n < 20 {
                return Err(DropReason::Malformed);
            }
            Ok(L4::Flow(
                PROTO_TCP,
                Kind::Tcp,
                get16(p, l4),
                get16(p, l4 + 2),
                get8(p, l4 + 13),
            ))
        }
        17 => {
            if n < 8 {
                return Err(DropReason::Malformed);
            }
            Ok(L4::Flow(
                PROTO_UDP,
                Kind::Udp,
                get16(p, l4),
                get16(p, l4 + 2),
                0,
            ))
        }
        1 => {
            if n < 8 {
                return Err(DropReason::Malformed);
            }
            match (get8(p, l4), out) {
                (8, true) => Ok(L4::Flow(
                    PROTO_ICMP,
                    Kind::Echo { out: true },
                    get16(p, l4 + 4),
                    0,
                    0,
                )),
                (0, false) => Ok(L4::Flow(
                    PROTO_ICMP,
                    Kind::Echo { out: false },
                    0,
                    get16(p, l4 + 4),
                    0,
                )),
                (3 | 11 | 12, _) => Ok(L4::IcmpError),
                (0, true) => Ok(L4::EchoReply(get16(p, l4 + 4))),
                (8, false) => Err(DropReason::NoMapping),
                _ => Err(DropReason::UnsupportedProtocol),
            }
        }
        _ => Err(DropReason::UnsupportedProtocol),
    }
}

/// Parses the packet embedded in an ICMP error.
fn embedded(p: &[u8], h: &Hdr) -> Option<Embedded> {
    let ip = h.ihl + 8;
    let end = h.total;
    let v = get8(p, ip);
    if end < ip + 20 || v >> 4 != 4 {
        return None;
    }
    let eihl = usize::from(v & 0xf) * 4;
    let l4 = ip + eihl;
    if eihl < 20 || end < l4 + 8 || get16(p, ip + 6) & 0x1fff != 0 {
        return None;
    }
    let (src, dst) = (get32(p, ip + 12), get32(p, ip + 16));
    let (proto, kind, sport, dport) = match get8(p, ip + 9) {
        6 => (PROTO_TCP, Kind::Tcp, get16(p, l4), get16(p, l4 + 2)),
        17 => (PROTO_UDP, Kind::Udp, get16(p, l4), get16(p, l4 + 2)),
        1 => match get8(p, l4) {
            // Our echo request went out: the identifier is the source "port".
            8 => (PROTO_ICMP, Kind::Echo { out: true }, get16(p, l4 + 4), 0),
            // An echo reply came in: the identifier is the destination "port".
            0 => (PROTO_ICMP, Kind::Echo { out: false }, 0, get16(p, l4 + 4)),
            _ => return None,
        },
        _ => return None,
    };
    Some(Embedded {
        ip,
        l4,
        proto,
        kind,
        tuple: Tuple {
            src,
            sport,
            dst,
            dport,
        },
    })
}

/// Whether an ICMP error's own checksum and its embedded IPv4 header
/// checksum are valid (RFC 5508 REQ-3, REQ-3a). The embedded transport
/// checksum is not checked (REQ-3c): the quote is often truncated.
fn error_checksums_ok(p: &[u8], h: &Hdr, e: &Embedded) -> bool {
    let icmp = p.get(h.ihl..h.total).map(checksum::sum);
    let emb = p.get(e.ip..e.l4).map(checksum::sum);
    matches!((icmp, emb), (Some(a), Some(b)) if checksum::fold(a) == 0xffff && checksum::fold(b) == 0xffff)
}

/// Rewrites an ICMP error: outer addresses to `outer`, the embedded packet's
/// addresses and ports to `new`, fixing the outer IPv4, embedded IPv4,
/// embedded transport and outer ICMP checksums incrementally.
fn rewrite_error(p: &mut [u8], h: &Hdr, outer_src: u32, outer_dst: u32, e: &Embedded, new: Tuple) {
    let mut ipd = Delta::default();
    ipd.dword(h.src, outer_src);
    ipd.dword(h.dst, outer_dst);
    put32(p, 12, outer_src);
    put32(p, 16, outer_dst);
    put16(p, 10, ipd.apply(get16(p, 10)));

    let old = e.tuple;
    // Every word below sits at an even offset from the ICMP header, so each
    // change feeds the outer ICMP checksum as one 16-bit word.
    let mut icmp = Delta::default();
    let mut ed = Delta::default();
    ed.dword(old.src, new.src);
    ed.dword(old.dst, new.dst);
    put32(p, e.ip + 12, new.src);
    put32(p, e.ip + 16, new.dst);
    icmp = icmp.add(ed);
    let c = get16(p, e.ip + 10);
    let c2 = ed.apply(c);
    put16(p, e.ip + 10, c2);
    icmp.word(c, c2);
    match e.kind {
        Kind::Tcp | Kind::Udp => {
            let mut pd = Delta::default();
            pd.word(old.sport, new.sport);
            pd.word(old.dport, new.dport);
            put16(p, e.l4, new.sport);
            put16(p, e.l4 + 2, new.dport);
            icmp = icmp.add(pd);
            // The embedded packet may be truncated: fix its transport
            // checksum only when the field is present.
            let off = if e.kind == Kind::Tcp {
                e.l4 + 16
            } else {
                e.l4 + 6
            };
            if off + 2 <= h.total {
                let c = get16(p, off);
                let c2 = if e.kind == Kind::Tcp {
                    ed.add(pd).apply(c)
                } else {
                    ed.add(pd).apply_udp(c)
                };
                put16(p, off, c2);
                icmp.word(c, c2);
            }
        }
        Kind::Echo { out } => {
            let (o, n) = if out {
                (old.sport, new.sport)
            } else {
                (old.dport, new.dport)
            };
            let mut d = Delta::default();
            d.word(o, n);
            put16(p, e.l4 + 4, n);
            icmp = icmp.add(d);
            let c = get16(p, e.l4 + 2);
            let c2 = d.apply(c);
            put16(p, e.l4 + 2, c2);
            icmp.word(c, c2);
        }
        // Embedded packets are never partial; a bare one has no ports.
        Kind::Bare | Kind::TcpPartial | Kind::UdpPartial => {}
    }
    put16(p, h.ihl + 2, icmp.apply(get16(p, h.ihl + 2)));
}

/// Packets whose table reads are started together by the batch calls.
const PREFETCH: usize = 16;

/// Flow-table size below which the batch calls read nothing ahead.
const PREFETCH_MIN_BYTES: usize = 512 * 1024;

/// The internal-side hash of the flow a packet belongs to, read without
/// validation (a wrong guess only costs a useless read). Inbound, the
/// internal side comes from the external port's binding.
#[inline(always)]
fn peek_hash(keys: &Keys, ports: &[PortTable; 3], p: &[u8], out: bool) -> u32 {
    let l4 = usize::from(get8(p, 0) & 0xf) * 4;
    let (src, dst) = (get32(p, 12), get32(p, 16));
    let (proto, a, b) = match get8(p, 9) {
        6 => (PROTO_TCP, get16(p, l4), get16(p, l4 + 2)),
        17 => (PROTO_UDP, get16(p, l4), get16(p, l4 + 2)),
        _ if out => (PROTO_ICMP, get16(p, l4 + 4), 0),
        _ => (PROTO_ICMP, 0, get16(p, l4 + 4)),
    };
    if out {
        keys.out_hash(proto, src, a, dst, b)
    } else {
        let (int_addr, int_port) = ports
            .get(usize::from(proto))
            .and_then(|t| t.get(b))
            .map_or((0, 0), |b| (b.int_addr, b.int_port));
        keys.out_hash(proto, int_addr, int_port, src, a)
    }
}

/// The internal address in the binding of a packet's destination port, read
/// without validation (see [`peek_hash`]).
#[inline(always)]
fn peek_binding(ports: &[PortTable; 3], p: &[u8]) -> u32 {
    let l4 = usize::from(get8(p, 0) & 0xf) * 4;
    let (proto, port) = match get8(p, 9) {
        6 => (PROTO_TCP, get16(p, l4 + 2)),
        17 => (PROTO_UDP, get16(p, l4 + 2)),
        _ => (PROTO_ICMP, get16(p, l4 + 4)),
    };
    ports
        .get(usize::from(proto))
        .and_then(|t| t.get(port))
        .map_or(0, |b| b.int_addr)
}

impl Nat {
    /// The batch calls: the table slots of each chunk of packets are read
    /// (their misses start together and overlap) before the chunk is
    /// translated. (Reading chunk k + 1 ahead of translating chunk k measured
    /// slower: the pending reads stall the translation behind them.)
    #[inline(always)]
    fn batch<P: AsMut<[u8]>>(
        &mut self,
        packets: &mut [P],
        l4: &[L4Checksum],
        now: Instant,
        verdicts: &mut [Verdict],
        out: bool,
    ) {
        // While the table is in the L2 cache the reads would only add work.
        let ahead = self.flows.memory() >= PREFETCH_MIN_BYTES;
        for (c, (ps, vs)) in packets
            .chunks_mut(PREFETCH)
            .zip(verdicts.chunks_mut(PREFETCH))
            .enumerate()
        {
            if ahead {
                self.prefetch(ps, out);
            }
            let l4 = l4.get(c * PREFETCH..).unwrap_or(&[]);
            if l4.is_empty() {
                for (p, v) in ps.iter_mut().zip(vs.iter_mut()) {
                    *v = if out {
                        self.outbound(p.as_mut(), now)
                    } else {
                        self.inbound(p.as_mut(), now)
                    };
                }
                continue;
            }
            for (i, (p, v)) in ps.iter_mut().zip(vs.iter_mut()).enumerate() {
                let partial = l4.get(i) == Some(&L4Checksum::Partial);
                *v = if out {
                    self.outbound_l4(p.as_mut(), now, partial)
                } else {
                    self.inbound_l4(p.as_mut(), now, partial)
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
    fn prefetch<P: AsMut<[u8]>>(&mut self, ps: &mut [P], out: bool) {
        let mut acc = 0u64;
        for p in ps.iter_mut() {
            acc ^= self
                .flows
                .peek(peek_hash(&self.keys, &self.ports, p.as_mut(), out));
        }
        core::hint::black_box(acc);
    }

    /// Looks up the flow of an external-side key. Every flow on an external
    /// port has the internal endpoint of the port's binding, and (unless it
    /// was redirected) the remote as its internal-side destination, so the
    /// flow is found by its internal-side key: one table probe, no second
    /// index. Returns the port's binding and the flow's position and value.
    #[inline(always)]
    fn find_in(
        &self,
        proto: u8,
        ext_port: u16,
        rem_addr: u32,
        rem_port: u16,
    ) -> (Binding, Option<(usize, Flow)>) {
        let b = self
            .ports
            .get(usize::from(proto))
            .and_then(|t| t.get(ext_port))
            .copied()
            .unwrap_or_default();
        if b.kind == B_FREE {
            return (b, None);
        }
        let (dst, dport) = if b.redirect {
            match self.redirected.get(&(proto, ext_port)) {
                Some(&d) => d,
                None => return (b, None),
            }
        } else {
            (rem_addr, rem_port)
        };
        let hash = self
            .keys
            .out_hash(proto, b.int_addr, b.int_port, dst, dport);
        // A flow on a port that is not a redirect's has its remote as its
        // internal-side destination, so the internal key and the external
        // port identify it; a redirected flow's remote is checked apart.
        let found = self.flows.lookup(hash, |f| {
            f.out_eq(proto, b.int_addr, b.int_port, dst, dport)
                && f.ext_port == ext_port
                && (!b.redirect || (f.rem_addr == rem_addr && f.rem_port == rem_port))
        });
        (b, found)
    }

    fn drop(&mut self, r: DropReason) {
        if let Some(c) = self.stats.drops.get_mut(r.index()) {
            *c += 1;
        }
    }

    #[inline(always)]
    fn note(&mut self, expires: u64) {
        self.earliest = self.earliest.min(expires);
        self.since_sweep = self.since_sweep.min(expires);
    }

    #[inline(always)]
    fn timeout(&self, f: &Flow) -> u64 {
        match f.proto {
            PROTO_TCP => {
                let both = ST_IN | ST_OUT;
                if f.state & both == both && f.state & (ST_FIN_IN | ST_FIN_OUT | ST_RST) == 0 {
                    self.t_est
                } else {
                    self.t_trans
                }
            }
            PROTO_UDP => self.t_udp,
            _ => self.t_icmp,
        }
    }

    /// The outbound path without counting.
    #[inline(always)]
    fn out(&mut self, p: &mut [u8], now: u64, partial: bool) -> Verdict {
        let h = match packet::parse(p) {
            Ok(h) => h,
            Err(r) => return Verdict::Drop(r),
        };
        if h.src & self.mask != self.net {
            return Verdict::Drop(DropReason::SpoofedSource);
        }
        if h.is_later_fragment() {
            return self.frag_follow(p, &h, DIR_OUT, now);
        }
        let (proto, kind, sport, dport, flags) = match l4_info(p, &h, true) {
            Ok(L4::Flow(a, b, c, d, e)) => (a, b.with_partial(partial), c, d, e),
            Ok(L4::IcmpError) => return self.out_error(p, &h, now),
            Ok(L4::EchoReply(id)) => return self.echo_reply_hairpin(p, &h, id, now),
            Err(r) => return Verdict::Drop(r),
        };
        if proto == PROTO_ICMP && h.dst == self.ext {
            return self.echo_hairpin(p, &h, sport, now);
        }
        let hash = self.keys.out_hash(proto, h.src, sport, h.dst, dport);
        let found = self
            .flows
            .find(hash, |f| f.out_eq(proto, h.src, sport, h.dst, dport));
        let idx = match found {
            Some(i) => i as usize,
            None => match self.create_out(proto, h.src, sport, h.dst, dport, hash, now) {
                Ok(i) => i,
                Err(r) => return Verdict::Drop(r),
            },
        };
        let (t_est, t_trans, t_udp, t_icmp) = (self.t_est, self.t_trans, self.t_udp, self.t_icmp);
        let Some(f) = self.flows.get_mut(idx) else {
            return Verdict::Drop(DropReason::NoMapping);
        };
        if proto == PROTO_TCP {
            let expired = f.expires <= now;
            let reopen = flags & TCP_SYN != 0
                && flags & TCP_ACK == 0
                && f.state & (ST_FIN_IN | ST_FIN_OUT | ST_RST) != 0;
            if expired || reopen {
                f.state &= ST_REDIRECT;
            }
            f.state |= ST_OUT | tcp_bits(flags, ST_FIN_OUT);
        }
        let timeout = match proto {
            PROTO_TCP => {
                let both = ST_IN | ST_OUT;
                if f.state & both == both && f.state & (ST_FIN_IN | ST_FIN_OUT | ST_RST) == 0 {
                    t_est
                } else {
                    t_trans
                }
            }
            PROTO_UDP => t_udp,
            _ => t_icmp,
        };
        let fresh = now.saturating_add(timeout);
        // An outbound RST answers an inbound packet: it must not extend the
        // flow's life (RFC 7857 section 2.3), only shorten it.
        f.expires = if flags & TCP_RST != 0 && proto == PROTO_TCP && f.expires > now {
            f.expires.min(fresh)
        } else {
            fresh
        };
        let new = Tuple {
            src: self.ext,
            sport: f.ext_port,
            dst: f.rem_addr,
            dport: f.rem_port,
        };
        let exp = f.expires;
        self.note(exp);
        let old = Tuple {
            src: h.src,
            sport,
            dst: h.dst,
            dport,
        };
        if new.dst == self.ext {
            return self.hairpin(p, &h, kind, old, new, now, partial);
        }
        packet::rewrite(p, &h, kind, old, new);
        Verdict::Forward
    }

    /// Hairpinning: the guest reached our external address. Translates the
    /// source as for any outbound packet, then runs the inbound path on the
    /// result; a drop there restores the packet as it came.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn hairpin(
        &mut self,
        p: &mut [u8],
        h: &Hdr,
        kind: Kind,
        old: Tuple,
        new: Tuple,
        now: u64,
        partial: bool,
    ) -> Verdict {
        // rewrite() touches at most the IPv4 header and 20 transport bytes.
        let mut saved = [0u8; 80];
        let n = p.len().min(h.ihl + 20);
        if let (Some(d), Some(s)) = (saved.get_mut(..n), p.get(..n)) {
            d.copy_from_slice(s);
        }
        packet::rewrite(p, h, kind, old, new);
        match self.inb(p, now, partial) {
            Verdict::Forward => Verdict::Hairpin,
            v => {
                if let (Some(d), Some(s)) = (p.get_mut(..n), saved.get(..n)) {
                    d.copy_from_slice(s);
                }
                v
            }
        }
    }

    /// An echo request from inside to the external address (RFC 7857
    /// section 13): its identifier names an external ICMP query identifier
    /// as a port would. If a live echo mapping holds that identifier, the
    /// request loops back to the mapping's guest, from the external address,
    /// with the identifier that guest uses (its internal one); otherwise
    /// (or when address-and-port-dependent filtering applies, the guest
    /// never having sent to the external address) it is dropped. No flow is
    /// created for the sender; the sender's address is remembered per
    /// external identifier (the latest one, for the ICMP query timeout) so
    /// that the target's echo reply loops back (see
    /// [`Nat::echo_reply_hairpin`]).
    #[cold]
    fn echo_hairpin(&mut self, p: &mut [u8], h: &Hdr, id: u16, now: u64) -> Verdict {
        let pt = &self.ports[usize::from(PROTO_ICMP)];
        let b = pt.get(id).copied().unwrap_or_default();
        if b.kind != B_DYN || pt.refs(id) == 0 {
            return Verdict::Drop(DropReason::NoMapping);
        }
        if self.config.filtering == Filtering::AddressAndPortDependent {
            return Verdict::Drop(DropReason::Filtered);
        }
        let old = Tuple {
            src: h.src,
            sport: id,
            dst: h.dst,
            dport: 0,
        };
        let new = Tuple {
            src: self.ext,
            sport: b.int_port,
            dst: b.int_addr,
            dport: 0,
        };
        packet::rewrite(p, h, Kind::Echo { out: true }, old, new);
        // Remember the requester (one per external identifier: the latest)
        // so the target's reply can loop back to it.
        let expires = now.saturating_add(self.t_icmp);
        self.echo_requesters.insert(id, (h.src, expires));
        self.echo_earliest = self.echo_earliest.min(expires);
        Verdict::Hairpin
    }

    /// An echo reply from inside. Only the answer to a hairpinned echo
    /// request is translated: from a guest to the external address, with
    /// the guest's internal identifier of a mapping that a request was
    /// hairpinned through within the ICMP query timeout; it loops back to
    /// that request's sender, from the external address, with the mapping's
    /// external identifier (the one the sender used). Any other echo reply
    /// from inside is dropped as unsupported.
    #[cold]
    fn echo_reply_hairpin(&mut self, p: &mut [u8], h: &Hdr, id: u16, now: u64) -> Verdict {
        if h.dst != self.ext {
            return Verdict::Drop(DropReason::UnsupportedProtocol);
        }
        let Some(&ext_id) = self.bind_by_int.get(&(PROTO_ICMP, h.src, id)) else {
            return Verdict::Drop(DropReason::NoMapping);
        };
        let requester = match self.echo_requesters.get(&ext_id) {
            Some(&(addr, expires)) if expires > now => addr,
            _ => return Verdict::Drop(DropReason::NoMapping),
        };
        let old = Tuple {
            src: h.src,
            sport: 0,
            dst: h.dst,
            dport: id,
        };
        let new = Tuple {
            src: self.ext,
            sport: 0,
            dst: requester,
            dport: ext_id,
        };
        packet::rewrite(p, h, Kind::Echo { out: false }, old, new);
        Verdict::Hairpin
    }

    /// The inbound path without counting.
    #[inline(always)]
    fn inb(&mut self, p: &mut [u8], now: u64, partial: bool) -> Verdict {
        // Start reading the destination port's binding before validating
        // the packet: its cache miss then overlaps the parse.
        core::hint::black_box(peek_binding(&self.ports, p));
        let h = match packet::parse(p) {
            Ok(h) => h,
            Err(r) => return Verdict::Drop(r),
        };
        if h.dst != self.ext {
            return Verdict::Drop(DropReason::NoMapping);
        }
        if h.is_later_fragment() {
            return self.frag_follow(p, &h, DIR_IN, now);
        }
        let (proto, kind, sport, dport, flags) = match l4_info(p, &h, false) {
            Ok(L4::Flow(a, b, c, d, e)) => (a, b.with_partial(partial), c, d, e),
            Ok(L4::IcmpError) => return self.in_error(p, &h, now),
            Ok(L4::EchoReply(_)) => return Verdict::Drop(DropReason::UnsupportedProtocol),
            Err(r) => return Verdict::Drop(r),
        };
        let (binding, found) = self.find_in(proto, dport, h.src, sport);
        let old = Tuple {
            src: h.src,
            sport,
            dst: h.dst,
            dport,
        };
        if let Some((i, f)) = found
            && f.expires > now
        {
            self.inbound_via_flow(p, &h, kind, i, f, old, flags, now);
            return Verdict::Forward;
        }
        match binding.kind {
            B_FWD => {
                let idx = match found {
                    Some((i, _)) => Some(i),
                    None => match self.create_in(proto, h.src, sport, dport, &binding, now) {
                        Ok(i) => i,
                        Err(r) => return Verdict::Drop(r),
                    },
                };
                match idx {
                    Some(i) => {
                        if let Some(f) = self.flows.get_mut(i) {
                            // A revived session starts over.
                            f.state &= ST_REDIRECT;
                            let f = *f;
                            self.inbound_via_flow(p, &h, kind, i, f, old, flags, now);
                        }
                    }
                    None => {
                        let new = Tuple {
                            dst: binding.int_addr,
                            dport: binding.int_port,
                            ..old
                        };
                        packet::rewrite(p, &h, kind, old, new);
                    }
                }
                Verdict::Forward
            }
            B_DYN if found.is_none() && self.ports[usize::from(proto)].refs(dport) > 0 => {
                match self.config.filtering {
                    Filtering::EndpointIndependent => {
                        let new = Tuple {
                            dst: binding.int_addr,
                            dport: binding.int_port,
                            ..old
                        };
                        packet::rewrite(p, &h, kind, old, new);
                        Verdict::Forward
                    }
                    Filtering::AddressAndPortDependent => Verdict::Drop(DropReason::Filtered),
                }
            }
            _ => Verdict::Drop(DropReason::NoMapping),
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn inbound_via_flow(
        &mut self,
        p: &mut [u8],
        h: &Hdr,
        kind: Kind,
        i: usize,
        f: Flow,
        old: Tuple,
        flags: u8,
        now: u64,
    ) {
        let new = Tuple {
            src: f.orig_addr,
            sport: f.orig_port,
            dst: f.int_addr,
            dport: f.int_port,
        };
        packet::rewrite(p, h, kind, old, new);
        if f.proto == PROTO_TCP {
            // TCP: inbound packets advance the state and refresh the flow;
            // UDP and ICMP flows are refreshed by outbound traffic only.
            let mut g = f;
            g.state |= ST_IN | tcp_bits(flags, ST_FIN_IN);
            g.expires = now.saturating_add(self.timeout(&g));
            if let Some(s) = self.flows.get_mut(i) {
                *s = g;
            }
            self.note(g.expires);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn create_out(
        &mut self,
        proto: u8,
        src: u32,
        sport: u16,
        dst: u32,
        dport: u16,
        out_hash: u32,
        now: u64,
    ) -> Result<usize, DropReason> {
        self.check_caps(src)?;
        let redirect = if proto == PROTO_ICMP {
            None
        } else {
            self.redirects.get(&(proto, dst, dport)).copied()
        };
        let (rem_addr, rem_port) = match redirect {
            Some(to) => (u32::from(*to.ip()), to.port()),
            None => (dst, dport),
        };
        // Endpoint-independent mapping: reuse the internal endpoint's
        // external port, unless redirected (a redirect gets a port of its own
        // so its replies can't be confused with direct traffic).
        let existing = if redirect.is_none() {
            self.bind_by_int.get(&(proto, src, sport)).copied()
        } else {
            None
        };
        let (ext_port, fresh) = match existing {
            Some(port) => (port, false),
            None => (self.alloc_port(proto, src, sport)?, true),
        };
        if !fresh
            && self
                .find_in(proto, ext_port, rem_addr, rem_port)
                .1
                .is_some()
        {
            if fresh {
                self.ports[usize::from(proto)].free(ext_port);
            }
            return Err(DropReason::NoMapping);
        }
        if fresh {
            self.ports[usize::from(proto)].set(
                ext_port,
                Binding {
                    int_addr: src,
                    int_port: sport,
                    kind: B_DYN,
                    redirect: redirect.is_some(),
                },
            );
            if redirect.is_none() {
                self.bind_by_int.insert((proto, src, sport), ext_port);
            } else {
                self.redirected.insert((proto, ext_port), (dst, dport));
            }
        }
        let f = Flow {
            expires: now,
            int_addr: src,
            orig_addr: dst,
            rem_addr,
            int_port: sport,
            ext_port,
            orig_port: dport,
            rem_port,
            proto,
            state: if redirect.is_some() { ST_REDIRECT } else { 0 },
        };
        Ok(self.insert_flow(f, out_hash))
    }

    /// A session through a port forward. `Ok(None)`: translate without one
    /// (the internal 5-tuple is already taken by another flow).
    fn create_in(
        &mut self,
        proto: u8,
        src: u32,
        sport: u16,
        ext_port: u16,
        b: &Binding,
        now: u64,
    ) -> Result<Option<usize>, DropReason> {
        let out_hash = self
            .keys
            .out_hash(proto, b.int_addr, b.int_port, src, sport);
        if self
            .flows
            .find(out_hash, |f| {
                f.out_eq(proto, b.int_addr, b.int_port, src, sport)
            })
            .is_some()
        {
            return Ok(None);
        }
        self.check_caps(b.int_addr)?;
        let f = Flow {
            expires: now,
            int_addr: b.int_addr,
            orig_addr: src,
            rem_addr: src,
            int_port: b.int_port,
            ext_port,
            orig_port: sport,
            rem_port: sport,
            proto,
            state: 0,
        };
        Ok(Some(self.insert_flow(f, out_hash)))
    }

    fn check_caps(&mut self, host: u32) -> Result<(), DropReason> {
        if self.flows.len() >= self.config.max_flows {
            #[cfg(feature = "tracing")]
            tracing::debug!(
                max = self.config.max_flows,
                "nat table full, new flow refused"
            );
            return Err(DropReason::TableFull);
        }
        if self
            .hosts
            .get(&host)
            .is_some_and(|&n| n as usize >= self.config.max_flows_per_host)
        {
            return Err(DropReason::HostLimit);
        }
        Ok(())
    }

    fn insert_flow(&mut self, f: Flow, out_hash: u32) -> usize {
        if self.flows.full() {
            self.grow();
        }
        if let Some(r) = self.ports[usize::from(f.proto)].refs_mut(f.ext_port) {
            *r += 1;
        }
        *self.hosts.entry(f.int_addr).or_insert(0) += 1;
        let idx = self.flows.insert(out_hash, f);
        self.stats.mappings_created += 1;
        self.stats.flows = self.flows.len() as u64;
        idx
    }

    /// Doubles the flow table; every position changes, so a sweep under way
    /// starts over.
    #[cold]
    fn grow(&mut self) {
        self.flows.grow(&self.keys);
        if self.sweeping {
            self.hand = 0;
        }
    }

    fn remove_flow(&mut self, idx: usize) {
        let Some(f) = self.flows.get(idx).copied() else {
            return;
        };
        let pt = &mut self.ports[usize::from(f.proto)];
        let refs = pt.refs_mut(f.ext_port).map_or(0, |r| {
            *r = r.saturating_sub(1);
            *r
        });
        if let Some(b) = pt.get(f.ext_port).copied()
            && refs == 0
            && b.kind == B_DYN
        {
            let key = (f.proto, b.int_addr, b.int_port);
            if b.redirect {
                self.redirected.remove(&(f.proto, f.ext_port));
            }
            pt.free(f.ext_port);
            if self.bind_by_int.get(&key) == Some(&f.ext_port) {
                self.bind_by_int.remove(&key);
            }
        }
        if let Some(n) = self.hosts.get_mut(&f.int_addr) {
            *n -= 1;
            if *n == 0 {
                self.hosts.remove(&f.int_addr);
            }
        }
        self.flows.remove(idx, &self.keys, |_, _, _| {});
        self.stats.mappings_expired += 1;
        self.stats.flows = self.flows.len() as u64;
    }

    /// Picks an external port for a new mapping of (`proto`, `addr`, `port`).
    fn alloc_port(&mut self, proto: u8, addr: u32, port: u16) -> Result<u16, DropReason> {
        let (rlo, rhi) = self.range;
        let pt = &mut self.ports[usize::from(proto)];
        pt.ensure();
        // RFC 4787 REQ-3: well-known source ports map into 1..=1023, others
        // into the configured range; ICMP identifiers use the range.
        let (lo, hi) = if proto != PROTO_ICMP && port < 1024 {
            (1u16, 1023u16)
        } else {
            (rlo, rhi)
        };
        let keep = proto == PROTO_ICMP || (lo..=hi).contains(&port);
        if keep && port != 0 && pt.is_free(port) {
            return Ok(port);
        }
        // Otherwise start at a keyed-random point of the range and take the
        // next free port: unpredictable, never a port still in use.
        let n = u32::from(hi - lo) + 1;
        let start = u32::from(lo) + self.keys.out_hash(proto, addr, port, 0, 0) % n;
        // RFC 4787 REQ-4: prefer a port of the same parity.
        let parity = if port & 1 == 0 { EVEN } else { !EVEN };
        let scan = |mask: u64| {
            pt.first_free(start, u32::from(hi), mask)
                .or_else(|| pt.first_free(u32::from(lo), start.saturating_sub(1), mask))
        };
        scan(parity)
            .or_else(|| scan(u64::MAX))
            .ok_or(DropReason::PortsExhausted)
    }

    /// Translates a later fragment from recorded state.
    fn frag_follow(&mut self, p: &mut [u8], h: &Hdr, dir: u8, now: u64) -> Verdict {
        let key = FragKey {
            dir,
            proto: h.proto,
            id: h.id,
            src: h.src,
            dst: h.dst,
        };
        match self.frags.get(&key) {
            Some(s) if s.expires > now => follow(p, h, s),
            _ if self.config.max_held_fragments == 0 => Verdict::Drop(DropReason::Fragment),
            _ => {
                // Early: hold a copy until the first fragment comes through.
                let Some(bytes) = p.get(..h.total) else {
                    return Verdict::Drop(DropReason::Malformed);
                };
                if !self.held.fits(bytes.len()) {
                    let lost = self.held.purge(now);
                    if let Some(c) = self.stats.drops.get_mut(DropReason::Fragment.index()) {
                        *c += lost as u64;
                    }
                    if !self.held.fits(bytes.len()) {
                        return Verdict::Drop(DropReason::FragmentsHeldFull);
                    }
                }
                self.held.hold(key, bytes, now.saturating_add(self.t_frag));
                Verdict::Held
            }
        }
    }

    /// After a first fragment went through `outbound`/`inbound` with verdict
    /// `v`: remember its translation and release the held later fragments of
    /// its datagram, or drop those (counted) if it was dropped.
    #[inline(always)]
    fn frag_first(&mut self, k: (u8, u32, u32, u16), dir: u8, p: &[u8], v: Verdict, now: u64) {
        match v {
            Verdict::Forward | Verdict::Hairpin => {
                self.frag_record(k, dir, p, v == Verdict::Hairpin, now);
            }
            Verdict::Drop(_) | Verdict::Held => {
                if !self.held.none_waiting() {
                    let key = frag_key(k, dir);
                    let lost = self.held.discard(key);
                    if let Some(c) = self.stats.drops.get_mut(DropReason::Fragment.index()) {
                        *c += lost as u64;
                    }
                }
            }
        }
    }

    /// Remembers how the first fragment of a datagram was translated.
    fn frag_record(&mut self, k: (u8, u32, u32, u16), dir: u8, p: &[u8], hairpin: bool, now: u64) {
        let key = frag_key(k, dir);
        let expires = now.saturating_add(self.t_frag);
        let state = FragState {
            src: get32(p, 12),
            dst: get32(p, 16),
            hairpin,
            expires,
        };
        if !self.held.none_waiting() {
            self.release(key, dir, &state);
        }
        if self.frags.len() >= self.config.max_fragments && !self.frags.contains_key(&key) {
            self.frags.retain(|_, s| s.expires > now);
            if self.frags.len() >= self.config.max_fragments {
                // Later fragments of this datagram will be dropped (counted).
                return;
            }
        }
        self.frags.insert(key, state);
        self.frag_earliest = self.frag_earliest.min(expires);
    }

    /// Translates the held fragments of datagram `key` with `state` and
    /// queues them for [`Nat::poll_released`].
    #[cold]
    fn release(&mut self, key: FragKey, dir: u8, state: &FragState) {
        for (mut bytes, expires) in self.held.take_all(key) {
            // Validated when it was held; parse again for its header fields.
            match packet::parse(&bytes) {
                Ok(h) => {
                    let v = follow(&mut bytes, &h, state);
                    self.held.push_ready(usize::from(dir), bytes, v, expires);
                }
                Err(r) => self.drop(r),
            }
        }
    }

    /// An ICMP error from inside, about a packet that came in (RFC 5508).
    fn out_error(&mut self, p: &mut [u8], h: &Hdr, now: u64) -> Verdict {
        let Some(e) = embedded(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !error_checksums_ok(p, h, &e) {
            return Verdict::Drop(DropReason::Malformed);
        }
        // The embedded packet went remote -> guest: its destination is ours.
        let t = e.tuple;
        let hash = self.keys.out_hash(e.proto, t.dst, t.dport, t.src, t.sport);
        let found = self
            .flows
            .find(hash, |f| f.out_eq(e.proto, t.dst, t.dport, t.src, t.sport));
        let (new, outer_dst) = match found.and_then(|i| self.flows.get(i as usize)) {
            Some(f) => (
                Tuple {
                    src: f.rem_addr,
                    sport: f.rem_port,
                    dst: self.ext,
                    dport: f.ext_port,
                },
                if h.dst == f.orig_addr {
                    f.rem_addr
                } else {
                    h.dst
                },
            ),
            None => match self.bind_by_int.get(&(e.proto, t.dst, t.dport)) {
                Some(&port) => (
                    Tuple {
                        dst: self.ext,
                        dport: port,
                        ..t
                    },
                    h.dst,
                ),
                None => return Verdict::Drop(DropReason::IcmpNoMapping),
            },
        };
        if outer_dst != self.ext {
            rewrite_error(p, h, self.ext, outer_dst, &e, new);
            return Verdict::Forward;
        }
        // A hairpinned error (RFC 5508 REQ-7): the offending packet came from
        // another guest through the external address. Translate it as an
        // outbound error, then as an inbound one; restore it on a drop.
        let mut saved = [0u8; 160];
        let n = p.len().min(saved.len());
        if let (Some(d), Some(s)) = (saved.get_mut(..n), p.get(..n)) {
            d.copy_from_slice(s);
        }
        rewrite_error(p, h, self.ext, outer_dst, &e, new);
        let v = match packet::parse(p) {
            Ok(h2) => self.in_error(p, &h2, now),
            Err(r) => Verdict::Drop(r),
        };
        match v {
            Verdict::Forward => Verdict::Hairpin,
            v => {
                if let (Some(d), Some(s)) = (p.get_mut(..n), saved.get(..n)) {
                    d.copy_from_slice(s);
                }
                v
            }
        }
    }

    /// An ICMP error from outside, about a packet we sent (RFC 5508).
    fn in_error(&mut self, p: &mut [u8], h: &Hdr, now: u64) -> Verdict {
        let Some(e) = embedded(p, h) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        if !error_checksums_ok(p, h, &e) {
            return Verdict::Drop(DropReason::Malformed);
        }
        let t = e.tuple;
        if t.src != self.ext {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        }
        let found = self.find_in(e.proto, t.sport, t.dst, t.dport).1;
        let Some((_, f)) = found.filter(|(_, f)| f.expires > now) else {
            return Verdict::Drop(DropReason::IcmpNoMapping);
        };
        let new = Tuple {
            src: f.int_addr,
            sport: f.int_port,
            dst: f.orig_addr,
            dport: f.orig_port,
        };
        let outer_src = if f.state & ST_REDIRECT != 0 && h.src == f.rem_addr {
            f.orig_addr
        } else {
            h.src
        };
        rewrite_error(p, h, outer_src, f.int_addr, &e, new);
        Verdict::Forward
    }
}

#[inline(always)]
fn tcp_bits(flags: u8, fin_bit: u8) -> u8 {
    let mut s = 0;
    if flags & TCP_FIN != 0 {
        s |= fin_bit;
    }
    if flags & TCP_RST != 0 {
        s |= ST_RST;
    }
    s
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    #[test]
    fn a_binding_is_8_bytes() {
        assert_eq!(core::mem::size_of::<Binding>(), 8);
    }

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
        assert_eq!(nat.redirected.len(), 2);
        let late = Instant::from_secs(100_000);
        while nat.next_deadline().is_some_and(|t| t <= late) {
            let _ = nat.expire(late, 16);
        }
        assert!(nat.is_empty());
        assert!(nat.redirected.is_empty());
        assert!(nat.ports.iter().all(|t| t.refs.iter().all(|&r| r == 0)));
    }
}
