//! A sans-IO NAT44 and NAT66: a connection-tracking SNAT/DNAT table on raw
//! IPv4 and IPv6 packets.
//!
//! `nat` sits between the guest side and the host side of hostnet's
//! `bridge`, but is usable alone: give it IP packets and a time, it
//! rewrites them in place and returns a [`Verdict`].
//!
//! # Two address families, one engine
//!
//! [`Nat::outbound`] and [`Nat::inbound`] take IPv4 and IPv6 packets alike
//! and tell them apart by the version nibble. The engine is written once,
//! generic over the address family (a sealed `Family` trait in `family`,
//! implemented by `V4` and `V6`: the address type, the IP header, the ICMP
//! flavour, the sources no outside host can have), and `Nat` holds one
//! engine per family, each with its own flow table, ports, rules, fragment
//! state, caps and counters. NAT66 translates to
//! [`NatConfig::external_addr6`] from [`NatConfig::internal_net6`] with the
//! behaviour below; what differs: IPv6 has no header checksum, the ICMPv6
//! checksum covers the pseudo-header (RFC 4443), Packet Too Big is one of
//! the translated errors, extension headers are walked (hop-by-hop,
//! destination options, routing with no segments left; others are
//! [`DropReason::UnsupportedProtocol`]) and a fragment header is handled as
//! IPv4 fragments are. IPv6 rules: [`Nat::add_forward6`],
//! [`Nat::add_redirect6`].
//!
//! ```
//! use nat::{Instant, Nat, NatConfig, Verdict};
//!
//! let mut nat = Nat::new(NatConfig::default()).unwrap();
//! let mut packet = vec![0u8; 3]; // not IPv4: a counted drop, never a panic
//! assert!(matches!(nat.outbound(&mut packet, Instant::ZERO), Verdict::Drop(_)));
//! // The caller owns the clock and the timer:
//! if let Some(at) = nat.next_deadline() {
//!     let _removed = nat.expire(at, 1024);
//! }
//! ```
//!
//! # Guarantees
//!
//! - **No I/O, no clock, no threads, safe Rust only** (`#![forbid(unsafe_code)]`):
//!   time is an [`Instant`] the caller passes in. The only ambient input is
//!   the hash key [`Nat::new`] draws once from std's `RandomState`
//!   ([`Nat::with_seed`] takes an explicit one). No `cfg(target_os)`; builds
//!   for any target with `std`.
//! - **No panics on input**: any byte string of any length into
//!   [`Nat::outbound`]/[`Nat::inbound`] returns a verdict. Forwarded packets
//!   have a valid IPv4 header checksum (the input's is verified first);
//!   transport checksums are updated incrementally (RFC 1624), so a valid
//!   one stays valid and a zero UDP checksum stays zero over IPv4 (over IPv6,
//!   which has no "no checksum", it is updated like any other). A dropped or held
//!   packet is left as it came. Proven by a cargo-fuzz target and proptest properties.
//! - **Offloaded (partial) checksums**: [`Nat::outbound_with`],
//!   [`Nat::inbound_with`] and the `_batch_with` calls take
//!   [`L4Checksum::Partial`] for packets whose TCP/UDP checksum field holds
//!   only the pseudo-header sum (virtio `NEEDS_CSUM`, Linux
//!   CHECKSUM_PARTIAL, TSO super-packets up to 65 535 bytes): address changes
//!   are applied to it in that sense, port changes are left to whoever
//!   completes it, and [`complete_l4_checksum`] completes it in software.
//! - **Bounded memory**: `max_flows` flows created by the internal side,
//!   `max_flows_per_host` per internal host, and apart from them
//!   `max_inbound_flows` flows created from outside (through port forwards,
//!   `max_inbound_flows_per_forward` per forward); `max_fragments`
//!   fragmented datagrams; `max_held_fragments` and `max_held_bytes` held
//!   fragments per direction, each address family with its own table and
//!   pools under these caps. When full, new flows are refused and counted
//!   while existing ones keep working (a flow from outside may instead evict
//!   an unconfirmed one, see below).
//! - **No allocation per packet** on the established-flow path; new flows
//!   may grow the table (amortised doubling); held out-of-order fragments
//!   are copied (bounded).
//! - **Bounded work**: one hash lookup per packet; [`Nat::expire`] examines at
//!   most `budget` flows (and `8 × budget + 64` table slots) per call.
//!
//! # Behaviour (RFC 4787, 5382, 5508, 7857)
//!
//! - Endpoint-independent **mapping** for UDP, TCP and ICMP echo: one
//!   internal (address, port) keeps one external port whatever the remote.
//!   The guest's port is kept when free and in policy, else a free port is
//!   taken from a keyed-random point of [`NatConfig::port_range`]; well-known
//!   ports (< 1024) map to well-known ports. A port still in use is never
//!   handed out; exhaustion is [`DropReason::PortsExhausted`].
//! - **Filtering** defaults to [`Filtering::EndpointIndependent`]: the
//!   external address is normally reachable only through the host that
//!   runs the VM (a point-to-point TUN), so the exposure it adds is small,
//!   and it is what RFC 4787 REQ-8 recommends for application transparency
//!   (peer-to-peer, STUN, WebRTC, games). Choose
//!   [`Filtering::AddressAndPortDependent`] to admit only remotes the guest
//!   has sent to.
//! - **Timeouts** ([`Timeouts`]): UDP 5 min refreshed by outbound traffic;
//!   TCP 2 h 4 min once packets were seen both ways (SYN/SYN-ACK or a
//!   simultaneous open), 4 min while partially open or after FIN/RST; ICMP
//!   queries 60 s; a flow from outside not yet confirmed 60 s (below). Expiry is checked on lookup, and memory is reclaimed by
//!   [`Nat::expire`].
//! - **ICMP errors** (destination unreachable incl. fragmentation needed,
//!   time exceeded, parameter problem) are translated both ways with their
//!   embedded IP and transport headers; every checksum is fixed
//!   incrementally, and a truncated quote (IP header + 8 bytes) is fine.
//!   Errors from outside matching no mapping are [`DropReason::IcmpNoMapping`];
//!   an error from inside is translated only if its quoted packet belongs to
//!   a flow of that guest and it is addressed to the quoted source, else
//!   [`DropReason::IcmpForgedQuote`].
//! - **Inbound sources**: a packet from outside whose source is in the
//!   internal network, is the external address, or is in 0/8, 127/8, 224/4
//!   or 240/4 (IPv6: `::`, `::1`, `ff00::/8`, `fe80::/10`) is dropped before
//!   any lookup ([`DropReason::InboundSpoofedSource`]).
//! - **Fragments** (RFC 4787 REQ-14, in order and out of order): the first
//!   fragment is translated like a whole packet and its translation is
//!   remembered (bounded by `max_fragments` and [`Timeouts::fragment`]);
//!   later fragments get the same addresses. A later fragment that arrives
//!   before its first fragment gets [`Verdict::Held`]: the NAT keeps a copy
//!   (bounded per direction by [`NatConfig::max_held_fragments`] and
//!   [`NatConfig::max_held_bytes`], else [`DropReason::FragmentsHeldFull`],
//!   so fragments from outside can't starve the guest's; one source address
//!   may have at most half of its direction's pool waiting, else
//!   [`DropReason::FragmentsHeldPerSource`]);
//!   when the first fragment is translated, the held ones are translated
//!   too and the caller drains them with [`Nat::poll_released`]. Held
//!   fragments whose first fragment is dropped, or does not come within
//!   [`Timeouts::fragment`], are dropped and counted
//!   ([`DropReason::Fragment`]). Holding is the only path that allocates
//!   per packet (one exact-size buffer per held fragment, within the caps).
//! - **Hairpinning**: a guest sending to the external address and a mapped
//!   or forwarded port gets [`Verdict::Hairpin`]: the packet was translated
//!   (source: external address and the sender's mapped port) for delivery
//!   back inside. An ICMP echo request to the external address whose
//!   identifier is the external identifier of a live echo mapping is
//!   hairpinned to that mapping's guest (RFC 7857 section 13), with the
//!   guest's own identifier, and that guest's echo reply loops back to the
//!   sender with the identifier the sender used.
//! - **Port forwards** ([`PortForward`]) and **redirects** ([`Redirect`]) are
//!   added and removed at runtime.
//! - **Flows from outside have their own budget**, chosen as the kernel's
//!   conntrack does. A flow created by an inbound packet that matched a port
//!   forward counts in [`NatConfig::max_inbound_flows`] and
//!   [`NatConfig::max_inbound_flows_per_forward`] only, never in the guest's
//!   `max_flows` / `max_flows_per_host`: whatever outsiders send, the guest's
//!   own flows keep their whole capacity (before, 66 000 spoofed SYNs through
//!   one forward, each answered by the guest, filled its 65 536-flow cap for
//!   2 h 4 min). Such a flow is *unconfirmed* — conntrack's SYN_RECV, not
//!   ASSURED — until its remote answers the guest: for TCP a segment with ACK
//!   and without SYN or RST after the guest's SYN-ACK (the handshake's third
//!   step or data), for UDP a datagram while the guest's answer keeps the
//!   flow live. Until then it keeps [`Timeouts::inbound_unconfirmed`] (60 s,
//!   conntrack's `nf_conntrack_tcp_timeout_syn_recv`: long enough for a real
//!   client's ACK after SYN-ACK retransmissions, short enough that a flood's
//!   half-open flows leave within a minute), even after the guest's SYN-ACK.
//!   When the budget is full, a new flow from outside evicts the oldest
//!   unconfirmed one — of its forward, or of any forward when the total is
//!   full — as conntrack's `early_drop` does, so a real client still gets in
//!   during a flood ([`NatStats::inbound_evicted`]); only when every flow of
//!   the budget is confirmed is it refused ([`DropReason::InboundLimit`]).
//!   Unlike conntrack, TCP sequence numbers are not checked, so a blind ACK
//!   timed after the guest's SYN-ACK confirms a flow: that spends only the
//!   inbound budget.
//!
//! See `docs/nat-rfc-compliance.md` for a requirement-by-requirement table.
//!
//! # Memory and speed
//!
//! A flow costs 43–85.3 bytes of table depending on where the table is in
//! its doubling cycle (from 48 flows on; the initial table is 4 KiB), 65–67
//! measured at 1 000, 64 000 and 1 000 000 flows
//! ([`Nat::table_bytes_per_flow`]). An IPv6 flow's slot is 48 bytes
//! against IPv4's 32 (98 table bytes per flow at 64 000 flows,
//! [`Nat::table_bytes_per_flow6`]). Port tables add a fixed 776 KiB per
//! protocol in use. [`Nat::memory_bytes`] reports the total.
//!
//! A packet costs one keyed hash and one probe sequence of one table; the
//! IPv4 header is parsed by hand. On tables larger than the caches that
//! probe is a DRAM miss; [`Nat::outbound_batch`] and [`Nat::inbound_batch`]
//! start the misses of 16 packets at once so they overlap.
//!
//! # Module map
//!
//! The crate root holds the public types; [`Nat`] and its methods are in
//! `translator`. The rest is private, one question per module:
//!
//! | module | what it answers |
//! |---|---|
//! | `settings` | the validated configuration, in the units the paths use |
//! | `table` | the flow table (32-byte slots, open addressing) and its keyed hash |
//! | `flows` | adding and removing flows: caps, growth, port and host counts, the budget of flows from outside |
//! | `ports` | external ports: bindings, allocation (RFC 4787), port forwards |
//! | `outbound` | the guest → host path |
//! | `inbound` | the host → guest path, through a flow or a port's binding |
//! | `hairpin` | guest → external address → guest, incl. ICMP echo |
//! | `icmp_error` | ICMP errors and their embedded headers, both ways |
//! | `fragments`, `held` | first-fragment state; later fragments held until it comes |
//! | `batch` | the batch calls and their read-ahead |
//! | `sweep` | expiry of flows, bounded per call |
//! | `family` | what differs between IPv4 and IPv6 (`Family`, `V4`, `V6`); everything else is generic over it |
//! | `packet` | IPv4 and IPv6 parsing (with the field offsets of `wire`'s `field` modules), incremental checksums (`wire::checksum`) |
//! | `tuple` | the tuples tables are keyed by and packets rewritten with |
//!
//! # Features
//!
//! - `tracing`: log table refusals with `tracing`.
//! - `test-utils`: the `testing` module (packet builders, checksum checks,
//!   a pre-warmed table for benches).
//!
//! MSRV: Rust 1.95 (the workspace `rust-version`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use core::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4};
use core::time::Duration;

mod batch;
mod family;
mod flows;
mod fragments;
mod hairpin;
mod head;
mod held;
mod icmp_error;
mod inbound;
mod outbound;
mod packet;
mod ports;
mod settings;
mod sweep;
mod table;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
mod translator;
mod tuple;

pub use packet::complete_l4_checksum;
pub use translator::Nat;

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
        Instant {
            millis: secs.saturating_mul(1000),
        }
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
        Instant {
            millis: self.millis.saturating_add(ms),
        }
    }
}

/// How the TCP/UDP checksum field of a packet is to be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum L4Checksum {
    /// A complete checksum (or 0 for UDP without checksum).
    #[default]
    Complete,
    /// Only the folded pseudo-header sum, not complemented (Linux CHECKSUM_PARTIAL,
    /// virtio VIRTIO_NET_HDR_F_NEEDS_CSUM): the sender's device completes it later.
    ///
    /// The NAT applies address changes to the field in that sense
    /// (`P' = P - old + new`), leaves port changes to whoever completes it,
    /// and has no "zero UDP checksum stays zero" rule. ICMP and later
    /// fragments ignore it. [`complete_l4_checksum`] finishes such a
    /// packet in software.
    Partial,
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
    /// The NAT kept a copy (a later fragment that arrived before its first
    /// fragment); the caller's buffer is left as it came and may be reused.
    /// The copy comes back, translated, from [`Nat::poll_released`] once the
    /// first fragment is translated, or is dropped and counted
    /// ([`DropReason::Fragment`]) if that never happens in time.
    Held,
}

/// A packet the NAT released after holding it: its length in `buf` and where it goes.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Released {
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
    /// [`Verdict::Forward`] or [`Verdict::Hairpin`], as for a packet of the
    /// same direction translated directly.
    pub verdict: Verdict,
}

/// Which side's packets to release ([`Nat::poll_released`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Packets that were given to [`Nat::outbound`] (from the internal side).
    Outbound,
    /// Packets that were given to [`Nat::inbound`] (from the external side).
    Inbound,
}

/// Why a packet was dropped. Every reason has a counter in [`NatStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Not a well-formed IPv4 or IPv6 packet (length, version, header
    /// length, IPv4 header checksum, IPv6 extension headers past the packet).
    Malformed,
    /// A protocol the NAT does not translate (IPv6: also a routing header
    /// with segments left, and next headers other than TCP, UDP, ICMPv6 and
    /// the walked extension headers).
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
    /// Fragment state is full, or the first fragment was never seen in time
    /// (a held later fragment expired), or was dropped.
    Fragment,
    /// An ICMP error whose embedded packet matches no mapping.
    IcmpNoMapping,
    /// A later fragment arrived before its first fragment and the pool of
    /// held fragments is at `max_held_fragments` or `max_held_bytes`.
    FragmentsHeldFull,
    /// A released packet did not fit the buffer given to [`Nat::poll_released`].
    ReleaseBufferTooShort,
    /// An inbound packet whose source no outside host can have: an address
    /// of the internal network (the guests, the gateway), the external
    /// address, loopback 127/8, "this network" 0/8, multicast 224/4,
    /// reserved 240/4 or the limited broadcast (RFC 1812 section 5.3.7,
    /// RFC 6890). Checked on every packet from outside, before any lookup.
    InboundSpoofedSource,
    /// An ICMP error from inside whose quoted packet (remote → guest) does
    /// not belong to a flow of that guest, or that is not addressed to
    /// the quoted packet's source: a guest may only report errors about
    /// packets it really received (RFC 5508 section 4.2).
    IcmpForgedQuote,
    /// A new flow from outside (through a port forward) was refused: the
    /// inbound budget ([`NatConfig::max_inbound_flows`] or
    /// [`NatConfig::max_inbound_flows_per_forward`]) is full of confirmed
    /// flows, so there was no unconfirmed one to evict.
    InboundLimit,
    /// A later fragment arrived before its first fragment and its source
    /// already holds half of its direction's held-fragment pool.
    FragmentsHeldPerSource,
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
    /// Idle timeout of an unconfirmed flow from outside (default 60 s, the
    /// kernel's `nf_conntrack_tcp_timeout_syn_recv`): a flow created through
    /// a port forward keeps it (or the TCP transitory / UDP timeout if
    /// shorter) until the remote confirms it, whatever the guest answers.
    pub inbound_unconfirmed: Duration,
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
    /// The internal IPv6 network (guest side) of NAT66; default `fd64::`.
    pub internal_net6: Ipv6Addr,
    /// Prefix length of the internal IPv6 network; default 64.
    pub internal_prefix_len6: u8,
    /// The external IPv6 address NAT66 packets leave with; default
    /// `fd64:ffff::2`.
    pub external_addr6: Ipv6Addr,
    /// External ports handed out for mappings of non-well-known source ports.
    pub port_range: core::ops::RangeInclusive<u16>,
    /// Inbound filtering.
    pub filtering: Filtering,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Cap on the number of flows the internal side created (outbound
    /// flows). Flows created from outside do not count here: they have their
    /// own budget, [`NatConfig::max_inbound_flows`], so the table holds at
    /// most `max_flows + max_inbound_flows` flows.
    pub max_flows: usize,
    /// Cap on flows per internal host that the host created (flows created
    /// from outside through a port forward do not count here).
    pub max_flows_per_host: usize,
    /// Cap on flows created from outside (an inbound packet matched a port
    /// forward), confirmed or not; default 16 384. When full, a new one
    /// evicts the oldest unconfirmed one ([`NatStats::inbound_evicted`]), or
    /// is refused ([`DropReason::InboundLimit`]) if all are confirmed.
    pub max_inbound_flows: usize,
    /// Cap on flows created from outside through one port forward; default
    /// 4 096. Full: as for [`NatConfig::max_inbound_flows`], evicting only
    /// this forward's flows.
    pub max_inbound_flows_per_forward: usize,
    /// Cap on concurrently tracked fragmented datagrams.
    pub max_fragments: usize,
    /// Cap on later fragments held (waiting for their first fragment, or
    /// translated and waiting for [`Nat::poll_released`]) **per direction**:
    /// the outbound and the inbound pool each have this cap, and one source
    /// address may hold at most half of its direction's pool (rounded up).
    /// At most 65 536. 0 (with `max_held_bytes` 0) holds nothing: early
    /// fragments are dropped.
    pub max_held_fragments: usize,
    /// Cap on the bytes of held fragments per direction (one source: at
    /// most half, rounded up); at most 64 MiB, 0 only with
    /// `max_held_fragments` 0.
    pub max_held_bytes: usize,
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
    /// Flows in the table now (a gauge; the same as [`Nat::len`]).
    pub flows: u64,
    /// Later fragments held because they arrived before their first fragment.
    pub fragments_held: u64,
    /// Held fragments handed out by [`Nat::poll_released`] (also counted in
    /// `outbound_forwarded`, `inbound_forwarded` or `hairpinned`).
    pub fragments_released: u64,
    /// Unconfirmed flows from outside removed to make room for a new one
    /// when the inbound budget was full (conntrack's early drop; also
    /// counted in `mappings_expired`).
    pub inbound_evicted: u64,
}

impl DropReason {
    /// Every reason, in [`DropReason::index`] order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Malformed,
        DropReason::UnsupportedProtocol,
        DropReason::SpoofedSource,
        DropReason::NoMapping,
        DropReason::Filtered,
        DropReason::TableFull,
        DropReason::HostLimit,
        DropReason::PortsExhausted,
        DropReason::Fragment,
        DropReason::IcmpNoMapping,
        DropReason::FragmentsHeldFull,
        DropReason::ReleaseBufferTooShort,
        DropReason::InboundSpoofedSource,
        DropReason::IcmpForgedQuote,
        DropReason::InboundLimit,
        DropReason::FragmentsHeldPerSource,
    ];
    /// Number of reasons.
    pub const COUNT: usize = 16;
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
    /// When it was created, in whole seconds of the caller's clock (its age
    /// is `now` less this; kept beside the flow table, never read or written
    /// by the packet paths).
    pub created: Instant,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            udp: Duration::from_secs(300),
            tcp_established: Duration::from_secs(2 * 3600 + 4 * 60),
            tcp_transitory: Duration::from_secs(240),
            icmp: Duration::from_secs(60),
            fragment: Duration::from_secs(30),
            inbound_unconfirmed: Duration::from_secs(60),
        }
    }
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            internal_net: Ipv4Addr::new(192, 168, 64, 0),
            internal_prefix_len: 24,
            external_addr: Ipv4Addr::new(100, 64, 0, 2),
            internal_net6: Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0),
            internal_prefix_len6: 64,
            external_addr6: Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2),
            port_range: 1024..=65535,
            filtering: Filtering::default(),
            timeouts: Timeouts::default(),
            max_flows: 1 << 20,
            max_flows_per_host: 65_536,
            max_inbound_flows: 16_384,
            max_inbound_flows_per_forward: 4_096,
            max_fragments: 1024,
            max_held_fragments: 64,
            max_held_bytes: 256 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::DropReason;

    #[test]
    fn every_drop_reason_is_listed_in_index_order() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i, "{r:?}");
        }
        assert_eq!(DropReason::ALL.len(), DropReason::COUNT);
    }
}
