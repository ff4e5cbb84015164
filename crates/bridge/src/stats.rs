//! Counters: packets, bytes and drops by cause.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use nat::DropReason;

/// Why the bridge dropped a frame, a packet or a descriptor chain. Each cause has a counter
/// ([`Stats::drops`], indexed by [`DropCause::index`]). NAT drops are further split by
/// [`nat::DropReason`] in [`nat::NatStats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropCause {
    /// A descriptor chain with an invalid head, a loop, more descriptors than the queue size,
    /// or a broken indirect table.
    ChainInvalid,
    /// A descriptor pointing outside guest memory.
    ChainOutOfBounds,
    /// A device-writable descriptor in a TX chain, or a device-readable one in an RX chain.
    ChainWrongDirection,
    /// A TX chain shorter than the virtio-net header.
    ShortHeader,
    /// A frame shorter than an Ethernet header.
    Runt,
    /// A frame longer than the MTU allows (TX), or a packet from the host longer than the
    /// guest MTU (RX; answered with ICMPv6 Packet Too Big, or ICMP fragmentation needed when
    /// it is IPv4 with DF, rate-limited: [`Stats::too_big_answers`], see the crate docs).
    TooBig,
    /// A malformed ARP, IPv4, IPv6, DHCP or DHCPv6 message (a bad length, a bad ICMPv6 or UDP
    /// checksum on a message to the gateway, options the DHCP decoder must not see).
    Malformed,
    /// IPv6 beyond the gateway that cannot leave the link (a link-local source; a
    /// link-local, loopback or on-link destination; NAT66 takes the rest); answered with
    /// ICMPv6 destination unreachable, no route (rate-limited, never to an ICMPv6 error). With IPv6
    /// turned off ([`crate::BridgeConfig::ipv6`] `None`, or an MTU under 1280), every IPv6
    /// frame, unanswered.
    Ipv6NoRoute,
    /// Another EtherType.
    EtherType,
    /// Source MAC is not the guest's.
    SpoofedMac,
    /// Source IPv4 address is not the guest's lease or static address.
    SpoofedIp,
    /// Addressed to the gateway but not a service it offers (ARP, DHCP, ICMP echo, DNS).
    GatewayUnsupported,
    /// Broadcast, multicast or another address in the guest subnet (nothing is there).
    NotRoutable,
    /// ARP that the gateway does not answer (probes, requests for other addresses, replies).
    ArpIgnored,
    /// The NAT refused an outbound packet (see `NatStats::drops`).
    NatOutbound,
    /// The NAT refused an inbound packet (see `NatStats::drops`).
    NatInbound,
    /// The host link did not accept the packet (its queue was full).
    HostFull,
    /// No RX buffer can ever hold the frame (without MRG_RXBUF: the guest's buffers are too
    /// small), or an RX chain was broken.
    RxNoFit,
    /// A gateway reply or hairpinned packet was dropped because the queue towards the RX side
    /// was full.
    LocalQueueFull,
    /// DHCP pool exhausted, or a DHCP message the server ignores.
    Dhcp,
    /// A virtio-net header asking for an offload that was not negotiated, or whose checksum
    /// or segmentation request does not fit the frame (TX or RX).
    Offload,
    /// A guest TCP super-frame (GSO) whose segmentation request the host must not carry out:
    /// a segment size of 0, under [`crate::MIN_GSO_SIZE`] (one super-frame would
    /// become hundreds of tiny packets on the host), or larger than the MTU leaves room for
    /// after the frame's IPv4 and TCP headers; a malformed TCP header; or a `hdr_len` beyond
    /// the frame.
    GsoInvalid,
    /// A packet to a destination the egress policy denies ([`crate::EgressPolicy`]; by
    /// default link-local 169.254.0.0/16); the gateway answers it with ICMP destination
    /// unreachable, administratively prohibited (rate-limited).
    EgressDenied,
    /// IPv6 from a source the guest may not use: not its link-local (`fe80::/64`) or an
    /// address in the guest prefix (`fd64::/64`), one of the gateway's own addresses, or the
    /// unspecified address `::` outside Neighbor Discovery and MLD.
    SpoofedIpv6,
    /// A Neighbor Discovery message that fails RFC 4861's checks (hop limit not 255, code not
    /// 0, bad ICMPv6 checksum, too short, an option of length 0 or past the end, a multicast
    /// target, a source link-layer option from `::`).
    NdpInvalid,
    /// Valid IPv6 on the link that the gateway does not answer (as [`DropCause::ArpIgnored`]):
    /// neighbor solicitations for other addresses, router advertisements and redirects from
    /// the guest, MLD reports, multicast it does not serve (mDNS, LLMNR, echo to a group);
    /// also IPv6 multicast from the host link (the host's own stack on the TUN: MLD reports,
    /// solicitations), which the NAT could not map.
    Ipv6Ignored,
    /// A DNS message the gateway's DNS relay ([`crate::DnsRelay`]: queries to an upstream of
    /// the other IP version) cannot carry: its table of relayed queries is full
    /// ([`crate::DNS_RELAY_SLOTS`], none idle long enough to reuse), an answer for a slot
    /// that expired or belongs to another protocol or family, a packet that does not fit the
    /// guest's MTU or its buffer once 20 bytes longer (IPv4 → IPv6), a TCP super-frame (GSO)
    /// or a fragment on a relayed flow, IPv6 extension headers, or a UDP length that
    /// disagrees with the packet.
    DnsRelay,
}

impl DropCause {
    /// Number of causes.
    pub const COUNT: usize = 27;
    /// Every cause, in index order.
    pub const ALL: [DropCause; DropCause::COUNT] = [
        DropCause::ChainInvalid,
        DropCause::ChainOutOfBounds,
        DropCause::ChainWrongDirection,
        DropCause::ShortHeader,
        DropCause::Runt,
        DropCause::TooBig,
        DropCause::Malformed,
        DropCause::Ipv6NoRoute,
        DropCause::EtherType,
        DropCause::SpoofedMac,
        DropCause::SpoofedIp,
        DropCause::GatewayUnsupported,
        DropCause::NotRoutable,
        DropCause::ArpIgnored,
        DropCause::NatOutbound,
        DropCause::NatInbound,
        DropCause::HostFull,
        DropCause::RxNoFit,
        DropCause::LocalQueueFull,
        DropCause::Dhcp,
        DropCause::Offload,
        DropCause::GsoInvalid,
        DropCause::EgressDenied,
        DropCause::SpoofedIpv6,
        DropCause::NdpInvalid,
        DropCause::Ipv6Ignored,
        DropCause::DnsRelay,
    ];
    /// Index into [`Stats::drops`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Plain counters, kept by each data path and added to the shared atomics once per batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Frames the guest sent (TX chains that carried a frame).
    pub tx_frames: u64,
    /// Bytes of those frames (without the virtio-net header).
    pub tx_bytes: u64,
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// IP packets sent to the host link.
    pub to_host: u64,
    /// IP packets received from the host link.
    pub from_host: u64,
    /// Frames the gateway answered itself (ARP, DHCP, ICMP echo).
    pub local_replies: u64,
    /// TCP super-frames (GSO) the guest sent (offloads).
    pub tx_gso: u64,
    /// TCP super-frames (GSO) delivered to the guest (offloads).
    pub rx_gso: u64,
    /// Packets from the host too big for the guest answered with ICMPv6 Packet Too Big or
    /// ICMP fragmentation needed (sent to the host link; also in `to_host`).
    pub too_big_answers: u64,
    /// Packets from the host too big for the guest that were due such an answer but over its
    /// rate limit (still counted as [`DropCause::TooBig`]).
    pub too_big_limited: u64,
    /// Of [`Stats::tx_gso`], the TCPv6 ones (HOST_TSO6).
    pub tx_gso6: u64,
    /// Of [`Stats::rx_gso`], the TCPv6 ones (GUEST_TSO6).
    pub rx_gso6: u64,
    /// Frames switched from this port's guest to another guest of its network
    /// ([`crate::Network`]).
    pub switched: u64,
    /// Of [`Stats::to_host`], the packets the host link gathered from their head and guest
    /// memory (large TCP frames whose payload the bridge did not copy; see
    /// [`crate::HostLink::send_gather`]).
    pub tx_gathered: u64,
    /// Of [`Stats::rx_frames`], the frames whose payload the host link read straight into
    /// the guest's RX buffers (large TCP packets the bridge did not copy; see
    /// [`crate::HostLink::recv_scatter`]).
    pub rx_scattered: u64,
    /// Times this port's sending waited for another port's delivery
    /// ([`crate::Network::park`]).
    pub parked: u64,
    /// Of [`Stats::parked`], the waits its driver ended before a delivery released them
    /// ([`crate::Network::unpark`]).
    pub park_timeouts: u64,
    /// Drops by cause, indexed by [`DropCause::index`].
    pub drops: [u64; DropCause::COUNT],
}

impl Stats {
    /// Adds `other`'s counters to these (a network's ports added up).
    pub fn add(&mut self, other: &Stats) {
        let Stats {
            tx_frames,
            tx_bytes,
            rx_frames,
            rx_bytes,
            to_host,
            from_host,
            local_replies,
            tx_gso,
            rx_gso,
            too_big_answers,
            too_big_limited,
            tx_gso6,
            rx_gso6,
            switched,
            tx_gathered,
            rx_scattered,
            parked,
            park_timeouts,
            drops,
        } = other;
        self.tx_frames += tx_frames;
        self.tx_bytes += tx_bytes;
        self.rx_frames += rx_frames;
        self.rx_bytes += rx_bytes;
        self.to_host += to_host;
        self.from_host += from_host;
        self.local_replies += local_replies;
        self.tx_gso += tx_gso;
        self.rx_gso += rx_gso;
        self.too_big_answers += too_big_answers;
        self.too_big_limited += too_big_limited;
        self.tx_gso6 += tx_gso6;
        self.rx_gso6 += rx_gso6;
        self.switched += switched;
        self.tx_gathered += tx_gathered;
        self.rx_scattered += rx_scattered;
        self.parked += parked;
        self.park_timeouts += park_timeouts;
        for (a, b) in self.drops.iter_mut().zip(drops) {
            *a += b;
        }
    }

    /// Counts one drop.
    pub fn drop(&mut self, cause: DropCause) {
        if let Some(c) = self.drops.get_mut(cause.index()) {
            *c += 1;
        }
    }

    /// The counter for `cause`.
    pub fn drops_of(&self, cause: DropCause) -> u64 {
        self.drops.get(cause.index()).copied().unwrap_or(0)
    }

    /// The sum of all drop counters.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }
}

/// A snapshot of the whole bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BridgeStats {
    /// Bridge counters.
    pub bridge: Stats,
    /// Number of flows in the NAT table.
    pub nat_flows: usize,
    /// NAT counters.
    pub nat: nat::NatStats,
    /// Whether a queue is broken and the device needs a reset.
    pub needs_reset: bool,
}

impl BridgeStats {
    /// The drop counters that are not zero, by name, separated by spaces: first the bridge's
    /// causes (`NatInbound=476`, [`DropCause`]), then the NAT's own reasons with the prefix
    /// `nat.` (`nat.NoMapping=470 nat.Filtered=6`, [`nat::DropReason`]). A NAT reason counts
    /// packets the NAT refused in either direction; the bridge counts the same packets under
    /// `NatOutbound` or `NatInbound`. Last, `nat.InboundEvicted=N`: flows from outside (not
    /// packets) the NAT evicted to make room when its inbound budget was full
    /// ([`nat::NatStats::inbound_evicted`]). Empty when nothing was dropped.
    pub fn drops_by_name(&self) -> DropsByName<'_> {
        DropsByName(self)
    }
}

/// The non-zero drop counters of a [`BridgeStats`] by name ([`BridgeStats::drops_by_name`]).
#[derive(Clone, Copy, Debug)]
pub struct DropsByName<'a>(&'a BridgeStats);

impl fmt::Display for DropsByName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = "";
        for cause in DropCause::ALL {
            let n = self.0.bridge.drops_of(cause);
            if n > 0 {
                write!(f, "{sep}{cause:?}={n}")?;
                sep = " ";
            }
        }
        for (i, &n) in self.0.nat.drops.iter().enumerate() {
            if n == 0 {
                continue;
            }
            match DropReason::ALL.get(i) {
                Some(reason) => write!(f, "{sep}nat.{reason:?}={n}")?,
                // Cannot happen (`NatStats::drops` has one counter per reason); still counted.
                None => write!(f, "{sep}nat.reason{i}={n}")?,
            }
            sep = " ";
        }
        // Not a packet drop: unconfirmed flows from outside evicted to make room.
        let evicted = self.0.nat.inbound_evicted;
        if evicted > 0 {
            write!(f, "{sep}nat.InboundEvicted={evicted}")?;
        }
        Ok(())
    }
}

/// One line: `tx 12 frames/1400 B, rx 10 frames/1200 B, tx_gso 0, rx_gso 0, tx_gso6 0,
/// rx_gso6 0, tx_gathered 0, rx_scattered 0, to host 11, from host 9, local replies 3, nat flows 2, nat out 11 in 9, drops
/// 476 NatInbound=476 nat.NoMapping=476` (the drop counters as
/// [`BridgeStats::drops_by_name`] gives them; `needs reset` at the end when a queue is
/// broken).
impl fmt::Display for BridgeStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.bridge;
        write!(
            f,
            "tx {} frames/{} B, rx {} frames/{} B, tx_gso {}, rx_gso {}, tx_gso6 {}, rx_gso6 {}, \
             tx_gathered {}, rx_scattered {}, to host {}, from host {}, local replies {}, switched {}, parked {}, park timeouts {}, \
             nat flows {}, nat out {} in {}, \
             drops {}",
            b.tx_frames,
            b.tx_bytes,
            b.rx_frames,
            b.rx_bytes,
            b.tx_gso,
            b.rx_gso,
            b.tx_gso6,
            b.rx_gso6,
            b.tx_gathered,
            b.rx_scattered,
            b.to_host,
            b.from_host,
            b.local_replies,
            b.switched,
            b.parked,
            b.park_timeouts,
            self.nat_flows,
            self.nat.outbound_forwarded,
            self.nat.inbound_forwarded,
            b.total_drops(),
        )?;
        let drops = self.drops_by_name().to_string();
        if !drops.is_empty() {
            write!(f, " {drops}")?;
        }
        if self.needs_reset {
            f.write_str(", needs reset")?;
        }
        Ok(())
    }
}

/// Shared atomic counters: the data paths add their per-batch [`Stats`] with
/// [`AtomicStats::absorb`]; readers take [`AtomicStats::snapshot`] at any time.
#[derive(Debug, Default)]
pub struct AtomicStats {
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    to_host: AtomicU64,
    from_host: AtomicU64,
    local_replies: AtomicU64,
    tx_gso: AtomicU64,
    rx_gso: AtomicU64,
    too_big_answers: AtomicU64,
    too_big_limited: AtomicU64,
    tx_gso6: AtomicU64,
    rx_gso6: AtomicU64,
    switched: AtomicU64,
    tx_gathered: AtomicU64,
    rx_scattered: AtomicU64,
    parked: AtomicU64,
    park_timeouts: AtomicU64,
    drops: [AtomicU64; DropCause::COUNT],
}

impl AtomicStats {
    /// Adds `local` to the shared counters and zeroes it.
    pub fn absorb(&self, local: &mut Stats) {
        let add = |a: &AtomicU64, v: &mut u64| {
            if *v != 0 {
                a.fetch_add(*v, Ordering::Relaxed);
                *v = 0;
            }
        };
        add(&self.tx_frames, &mut local.tx_frames);
        add(&self.tx_bytes, &mut local.tx_bytes);
        add(&self.rx_frames, &mut local.rx_frames);
        add(&self.rx_bytes, &mut local.rx_bytes);
        add(&self.to_host, &mut local.to_host);
        add(&self.from_host, &mut local.from_host);
        add(&self.local_replies, &mut local.local_replies);
        add(&self.tx_gso, &mut local.tx_gso);
        add(&self.rx_gso, &mut local.rx_gso);
        add(&self.too_big_answers, &mut local.too_big_answers);
        add(&self.too_big_limited, &mut local.too_big_limited);
        add(&self.tx_gso6, &mut local.tx_gso6);
        add(&self.rx_gso6, &mut local.rx_gso6);
        add(&self.switched, &mut local.switched);
        add(&self.tx_gathered, &mut local.tx_gathered);
        add(&self.rx_scattered, &mut local.rx_scattered);
        add(&self.parked, &mut local.parked);
        add(&self.park_timeouts, &mut local.park_timeouts);
        for (a, v) in self.drops.iter().zip(local.drops.iter_mut()) {
            add(a, v);
        }
    }

    /// The current values.
    pub fn snapshot(&self) -> Stats {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut drops = [0u64; DropCause::COUNT];
        for (d, a) in drops.iter_mut().zip(self.drops.iter()) {
            *d = get(a);
        }
        Stats {
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            to_host: get(&self.to_host),
            from_host: get(&self.from_host),
            local_replies: get(&self.local_replies),
            tx_gso: get(&self.tx_gso),
            rx_gso: get(&self.rx_gso),
            too_big_answers: get(&self.too_big_answers),
            too_big_limited: get(&self.too_big_limited),
            tx_gso6: get(&self.tx_gso6),
            rx_gso6: get(&self.rx_gso6),
            switched: get(&self.switched),
            tx_gathered: get(&self.tx_gathered),
            rx_scattered: get(&self.rx_scattered),
            parked: get(&self.parked),
            park_timeouts: get(&self.park_timeouts),
            drops,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_indexed_in_order_and_absorbed() {
        for (i, c) in DropCause::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        let shared = AtomicStats::default();
        let mut s = Stats::default();
        s.drop(DropCause::SpoofedIp);
        s.drop(DropCause::SpoofedIp);
        s.tx_frames = 3;
        shared.absorb(&mut s);
        assert_eq!(s, Stats::default(), "absorb zeroes the local counters");
        s.tx_frames = 1;
        shared.absorb(&mut s);
        let snap = shared.snapshot();
        assert_eq!(snap.tx_frames, 4);
        assert_eq!(snap.drops_of(DropCause::SpoofedIp), 2);
        assert_eq!(snap.total_drops(), 2);
    }

    #[test]
    fn the_stats_line_names_bridge_causes_and_nat_reasons() {
        let mut s = BridgeStats::default();
        assert_eq!(s.drops_by_name().to_string(), "");
        assert!(s.to_string().ends_with(", drops 0"), "{s}");
        s.bridge.tx_gso = 7;
        s.bridge.drops[DropCause::NatInbound.index()] = 476;
        s.bridge.drops[DropCause::SpoofedIp.index()] = 2;
        s.nat.drops[DropReason::NoMapping.index()] = 470;
        s.nat.drops[DropReason::Filtered.index()] = 4;
        s.nat.drops[DropReason::HostLimit.index()] = 2;
        s.nat.inbound_forwarded = 9;
        s.nat_flows = 3;
        assert_eq!(
            s.drops_by_name().to_string(),
            "SpoofedIp=2 NatInbound=476 nat.NoMapping=470 nat.Filtered=4 nat.HostLimit=2"
        );
        let line = s.to_string();
        assert!(
            line.starts_with("tx 0 frames/0 B, rx 0 frames/0 B, tx_gso 7, rx_gso 0,"),
            "{line}"
        );
        assert!(line.contains(", nat flows 3, nat out 0 in 9, "), "{line}");
        assert!(
            line.ends_with(
                ", drops 478 SpoofedIp=2 NatInbound=476 nat.NoMapping=470 nat.Filtered=4 \
                 nat.HostLimit=2"
            ),
            "{line}"
        );
        s.nat.drops[DropReason::InboundLimit.index()] = 1;
        s.nat.inbound_evicted = 62_000;
        assert!(
            s.to_string()
                .ends_with("nat.HostLimit=2 nat.InboundLimit=1 nat.InboundEvicted=62000"),
            "{s}"
        );
        s.needs_reset = true;
        assert!(
            s.to_string()
                .ends_with("nat.InboundEvicted=62000, needs reset"),
            "{s}"
        );
    }
}
