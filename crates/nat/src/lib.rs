//! A sans-IO NAT44. API SKELETON: the signatures below are the contract the
//! `bridge` crate codes against; the nat work fills in the bodies (and may add
//! items, but must not change these signatures without updating `bridge`).
#![forbid(unsafe_code)]

use core::net::{Ipv4Addr, SocketAddrV4};
use core::time::Duration;

/// Monotonic time chosen by the caller. The NAT never reads a clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The origin of the caller's clock.
    pub const ZERO: Instant = Instant { millis: 0 };
    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant { millis }
    }
    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Instant { millis: secs.saturating_mul(1000) }
    }
    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Instant { millis: self.millis.saturating_add(ms) }
    }
}

/// Transport protocols the NAT tracks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP (RFC 5382).
    Tcp,
    /// UDP (RFC 4787).
    Udp,
    /// ICMP queries (RFC 5508): the echo identifier plays the port.
    Icmp,
}

/// What to do with a packet after `outbound`/`inbound` returned.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The packet was rewritten in place; send it on in the direction it was going.
    Forward,
    /// The packet was rewritten in place for delivery back to the internal side
    /// (hairpinning: a guest reached the external address, or an outbound
    /// packet matched a redirect whose target is internal).
    Hairpin,
    /// Drop the packet; the reason has been counted.
    Drop(DropReason),
}

/// Why a packet was dropped. Every reason has a counter in [`NatStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed IPv4 packet (length, version, header length, checksum).
    Malformed,
    /// A protocol the NAT does not translate.
    UnsupportedProtocol,
    /// Outbound source address not in the internal network.
    SpoofedSource,
    /// Inbound packet that matches no mapping or forward, or is filtered.
    NoMapping,
    /// Inbound packet filtered by address-and-port-dependent filtering.
    Filtered,
    /// The table is at its total cap; the new flow was refused.
    TableFull,
    /// The internal host is at its per-host cap; the new flow was refused.
    HostLimit,
    /// No free external port/identifier for a new mapping.
    PortsExhausted,
    /// Fragment state is full or the first fragment was never seen.
    Fragment,
    /// An ICMP error whose embedded packet matches no mapping.
    IcmpNoMapping,
}

/// Inbound filtering behaviour (RFC 4787 section 5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Filtering {
    /// Any remote may send to a mapped port (REQ-8 recommended for transparency).
    #[default]
    EndpointIndependent,
    /// Only remotes the internal host sent to (address and port) may answer.
    AddressAndPortDependent,
}

/// Idle timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// UDP mapping idle timeout (RFC 4787 REQ-5: at least 2 min; default 5 min).
    pub udp: Duration,
    /// TCP established idle timeout (RFC 5382 REQ-5: at least 2 h 4 min).
    pub tcp_established: Duration,
    /// TCP transitory (SYN sent, FIN/RST seen) timeout (at least 4 min).
    pub tcp_transitory: Duration,
    /// ICMP query timeout (RFC 5508 REQ-1: 60 s).
    pub icmp: Duration,
    /// Fragment reassembly-state lifetime.
    pub fragment: Duration,
}

/// Configuration, validated once by [`Nat::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// The internal network (guest side).
    pub internal_net: Ipv4Addr,
    /// Prefix length of the internal network.
    pub internal_prefix_len: u8,
    /// The external address packets leave with.
    pub external_addr: Ipv4Addr,
    /// External ports handed out for mappings of non-well-known source ports.
    pub port_range: core::ops::RangeInclusive<u16>,
    /// Inbound filtering.
    pub filtering: Filtering,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Cap on the total number of flows.
    pub max_flows: usize,
    /// Cap on flows per internal host.
    pub max_flows_per_host: usize,
    /// Cap on concurrently tracked fragmented datagrams.
    pub max_fragments: usize,
}

/// A configuration the NAT refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field is out of its range.
    Invalid(&'static str),
}

/// A DNAT port forward: (protocol, external port) → internal address and port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortForward {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the external address.
    pub external_port: u16,
    /// Where it goes on the internal side.
    pub internal: SocketAddrV4,
}

/// An outbound destination rewrite: internal packets to `from` go to `to`
/// instead, and replies come back looking like they came from `from`. The
/// bridge uses it for the gateway's DNS forwarder (gateway:53 → upstream).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Redirect {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The address the internal host sends to.
    pub from: SocketAddrV4,
    /// The address the packet really goes to.
    pub to: SocketAddrV4,
}

/// Why a forward or redirect could not be added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RuleError {
    /// The external port is already forwarded.
    PortInUse(u16),
    /// The rule is not valid (protocol ICMP, address outside the internal net...).
    Invalid(&'static str),
}

/// Counters, readable at any time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatStats {
    /// Packets translated outbound.
    pub outbound_forwarded: u64,
    /// Packets translated inbound.
    pub inbound_forwarded: u64,
    /// Packets looped back (hairpinning).
    pub hairpinned: u64,
    /// Mappings created.
    pub mappings_created: u64,
    /// Mappings expired.
    pub mappings_expired: u64,
    /// Drops per reason, indexed by [`DropReason::index`].
    pub drops: [u64; DropReason::COUNT],
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 10;
    /// Index into [`NatStats::drops`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// One mapping, for debugging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappingInfo {
    /// Protocol.
    pub protocol: Protocol,
    /// Internal address and port (ICMP: identifier).
    pub internal: SocketAddrV4,
    /// External address and port.
    pub external: SocketAddrV4,
    /// When it expires if idle.
    pub expires: Instant,
}

/// The NAT.
#[derive(Debug)]
pub struct Nat {
    config: NatConfig,
    stats: NatStats,
}

impl Nat {
    /// Validates `config` and builds an empty table.
    pub fn new(config: NatConfig) -> Result<Self, ConfigError> {
        Ok(Nat { config, stats: NatStats::default() })
    }
    /// Translates a packet from the internal side. Never panics.
    pub fn outbound(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        let _ = (packet, now);
        Verdict::Drop(DropReason::Malformed)
    }
    /// Translates a packet from the external side. Never panics.
    pub fn inbound(&mut self, packet: &mut [u8], now: Instant) -> Verdict {
        let _ = (packet, now);
        Verdict::Drop(DropReason::Malformed)
    }
    /// Removes at most `budget` expired entries; returns how many it removed.
    pub fn expire(&mut self, now: Instant, budget: usize) -> usize {
        let _ = (now, budget);
        0
    }
    /// When `expire` next has work, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        None
    }
    /// Adds a port forward.
    pub fn add_forward(&mut self, forward: PortForward) -> Result<(), RuleError> {
        let _ = forward;
        Ok(())
    }
    /// Removes a port forward; returns whether it existed.
    pub fn remove_forward(&mut self, protocol: Protocol, external_port: u16) -> bool {
        let _ = (protocol, external_port);
        false
    }
    /// Adds an outbound redirect.
    pub fn add_redirect(&mut self, redirect: Redirect) -> Result<(), RuleError> {
        let _ = redirect;
        Ok(())
    }
    /// Removes a redirect; returns whether it existed.
    pub fn remove_redirect(&mut self, protocol: Protocol, from: SocketAddrV4) -> bool {
        let _ = (protocol, from);
        false
    }
    /// Counters.
    pub fn stats(&self) -> &NatStats {
        &self.stats
    }
    /// Number of flows in the table.
    pub fn len(&self) -> usize {
        0
    }
    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The configuration in force.
    pub fn config(&self) -> &NatConfig {
        &self.config
    }
    /// All mappings, for debugging (allocates; not for the hot path).
    pub fn mappings(&self) -> Vec<MappingInfo> {
        Vec::new()
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: Duration::from_secs(300),
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(240),
            icmp: Duration::from_secs(60),
            fragment: Duration::from_secs(30),
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            internal_net: Ipv4Addr::new(192, 168, 64, 0),
            internal_prefix_len: 24,
            external_addr: Ipv4Addr::new(100, 64, 0, 2),
            port_range: 1024..=65535,
            filtering: Filtering::default(),
            timeouts: Timeouts::default(),
            max_flows: 1 << 20,
            max_flows_per_host: 65_536,
            max_fragments: 1024,
        }
    }
}
