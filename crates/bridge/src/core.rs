//! [`DeviceCore`]: the one state machine of a guest's virtio-net device. Events in, `now`
//! passed in, no threads and no clock of its own; every driver (an embedder's own event loop,
//! the threaded [`crate::Bridge`] driver) drives this and builds nothing of its own.
//!
//! The core owns, in one place each: configuration checks ([`DeviceCore::new`]), feature and
//! offload negotiation ([`DeviceCore::ack_features`]), queue checks
//! ([`DeviceCore::prepare_queue`]), the construction and sizing of the TX and RX halves and
//! of the batch of gateway replies, the NAT expiry budget and the timer policy ([`Expiry`]).
//! The threaded driver splits a negotiated core into its halves (`DeviceCore::into_parts`) and
//! runs them on one or two threads; the halves' step functions are the ones the core itself
//! runs.

use core::time::Duration;
use std::sync::{Mutex, MutexGuard};

use nat::{Nat, Protocol, Redirect};
use tracing::{info, warn};
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::config::BridgeConfig;
use crate::device::{
    CONFIG_SPACE_SIZE, Device, RX_QUEUE, VIRTIO_NET_HDR_LEN, VIRTIO_RING_F_EVENT_IDX,
};
use crate::dns_relay::SharedRelay;
use crate::frame::FrameBatch;
use crate::gateway::Gateway;
use crate::guest_state::GuestState;
use crate::host::{Gather, Gathering};
use crate::network::Others;
use crate::offload::{MAX_IP_PACKET, Offloads};
use crate::ring::{self, UsedBatch};
use crate::rx_engine::RxEngine;
use crate::rx_queue::RxQueue;
use crate::stats::{BridgeStats, Stats};
use crate::tx_engine::GatherSend;
use crate::tx_engine::TxEngine;
use crate::tx_queue::{TxOutcome, TxQueue};
use crate::tx_split::SplitRule;
use crate::wire::{ETH_HLEN, MacAddr};
use crate::{Error, HostLink, OFFLOAD_FEATURES};

/// What an event left: which queues need an interrupt, and which work stopped on the event's
/// budget.
///
/// Each [`DeviceCore::on_tx_kick`] and [`DeviceCore::on_rx_ready`] call does bounded work
/// ([`TX_BATCH_BUDGET`] TX batches, [`RX_PASS_BUDGET`] delivery passes), so that a flood from
/// the guest or the host cannot keep one call (and the queue locks its driver holds for it)
/// going for ever. When a budget ran out, `tx_more` or `rx_more` is set: the driver serves its
/// other events (control messages, the other queue, timers) and then calls again, without
/// waiting for a kick or for the host link (neither may come: the TX queue's notifications
/// stay off while chains wait, and an edge-triggered link does not report packets again).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Notify {
    /// The TX queue's used ring advanced and the driver wants to know.
    pub tx: bool,
    /// The RX queue's used ring advanced and the driver wants to know.
    pub rx: bool,
    /// The TX budget ran out with chains waiting: call [`DeviceCore::on_tx_kick`] again soon.
    pub tx_more: bool,
    /// The delivery budget ran out with frames or host packets waiting: call
    /// [`DeviceCore::on_rx_ready`] again soon (with `host_readable` false: the core remembers
    /// that the link had more).
    pub rx_more: bool,
    /// The TX kick stopped early (with `tx_more`) because an inbox of another port on the
    /// network it filled is half full. A driver that another port's driver wakes once it has
    /// delivered (a thread per port) calls again then, not at once: a call before would take
    /// more chains than that inbox has room for. Any other driver treats it as `tx_more`.
    pub tx_waits: bool,
}

impl Notify {
    /// Whether a budget ran out ([`Notify::tx_more`] or [`Notify::rx_more`]).
    pub fn more(&self) -> bool {
        self.tx_more || self.rx_more
    }
}

/// A monotonic clock for drivers: the milliseconds the core's `now` arguments count. The
/// core never reads it itself; a driver makes one and passes [`Clock::now`] with each event.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    epoch: std::time::Instant,
}

impl Clock {
    /// A clock starting at zero now.
    pub fn new() -> Self {
        Clock {
            epoch: std::time::Instant::now(),
        }
    }

    /// Milliseconds since [`Clock::new`], as the NAT counts time.
    pub fn now(&self) -> nat::Instant {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        nat::Instant::from_millis(ms)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// What the driver and the host link agreed on in [`DeviceCore::ack_features`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Negotiated {
    /// The negotiated feature bits.
    pub features: u64,
    /// The offloads in force (reduced to what the host link accepted).
    pub offloads: Offloads,
    /// The virtio-net header in front of each frame: 12 bytes (VERSION_1 or MRG_RXBUF) or 10.
    pub header_len: usize,
    /// Merged RX buffers (MRG_RXBUF).
    pub mrg_rxbuf: bool,
    /// EVENT_IDX notification suppression.
    pub event_idx: bool,
}

/// One guest's device core: the device model (features, config space), the TX half (TX
/// queue → gateway services → NAT → host link), the RX half (host link → NAT → RX queue),
/// the NAT, and a batch of gateway replies and hairpinned frames on their way to the RX
/// queue.
///
/// Thread-free and lock-free: the owner calls [`DeviceCore::on_tx_kick`] when the driver
/// kicks the TX queue, [`DeviceCore::on_rx_ready`] when the driver adds RX buffers or the host
/// link becomes readable, and [`DeviceCore::on_tick`] when [`DeviceCore::next_timeout`]
/// passes, each with the current time, and interrupts the driver as the returned flags say.
/// The batches are preallocated: no allocation per packet.
///
/// A [`crate::Network`] of several guests holds one NAT and a port per guest; a
/// `DeviceCore` is the one-port network (a port and its own NAT, nothing shared).
///
/// ```
/// use bridge::{BridgeConfig, Clock, DeviceCore, MemoryLink};
///
/// let (host, _peer) = MemoryLink::pair(64)?;
/// let mut core = DeviceCore::new(BridgeConfig::default())?;
/// let acked = core.ack_features(core.device_features(), &host);
/// assert_eq!(acked, core.device().acked_features());
/// let clock = Clock::new();
/// core.on_tick(clock.now());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct DeviceCore {
    port: PortCore,
    nat: Nat,
    expiry: Expiry,
}

impl DeviceCore {
    /// Validates `config` and builds a fresh device: the NAT with the port forwards and the
    /// gateway's DNS redirect installed, no leases, nothing negotiated (a host link carrying
    /// virtio-net headers is expected if `config.offloads`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`], [`Error::NatConfig`] or [`Error::NatRule`] (forwards, DNS redirect).
    pub fn new(mut config: BridgeConfig) -> Result<Self, Error> {
        config.validate()?;
        let guest = device_guest(&config);
        if let Some(g) = config
            .forwards6
            .iter()
            .find_map(|f| f.guest.filter(|&g| g != guest))
        {
            return Err(Error::Config(format!(
                "an IPv6 port forward names {g}, not this device's guest ({guest})"
            )));
        }
        let nat = network_nat(&mut config)?;
        let relay = dns_relay(&config);
        Ok(Self {
            port: PortCore::new(config, relay)?,
            nat,
            expiry: Expiry::default(),
        })
    }

    /// With `true`, a read from the host link that returns fewer packets than asked counts
    /// as "drained": the next read waits for the next [`DeviceCore::on_rx_ready`] with
    /// `host_readable`. Right for a readiness source that reports new packets (level or edge
    /// triggered); saves the read that would fail per burst. Default `false`: read until a
    /// read returns nothing.
    #[must_use]
    pub fn with_short_batch_drains(mut self, on: bool) -> Self {
        self.port.set_short_batch_drains(on);
        self
    }

    /// The configuration in force (as validated: the NAT's internal network follows the
    /// gateway and prefix length).
    pub fn config(&self) -> &BridgeConfig {
        &self.port.config
    }

    /// The device model (features, config space).
    pub fn device(&self) -> &Device {
        &self.port.device
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.port.device.device_features()
    }

    /// Reads the config space (MAC, status, queue pairs, MTU).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.port.device.read_config(offset, data);
    }

    /// The whole config space.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        self.port.device.config_space()
    }

    /// Records the driver's features, tells the host link what the guest accepts and builds
    /// the halves for the negotiated header and offloads. The gateway state (leases) starts
    /// over: the driver negotiates before it sends anything. Returns the negotiated features.
    ///
    /// Never fails: offloads the host link cannot carry or refuses are logged and turned off
    /// step by step (TSO first, then checksums); frames that then cannot pass are counted
    /// drops.
    pub fn ack_features(&mut self, features: u64, host: &impl HostLink) -> u64 {
        let acked = self.port.device.ack_features(features);
        let offloads = negotiate_offloads(acked, host);
        self.port.use_features(acked, offloads);
        acked
    }

    /// Checks that `host` can carry what the driver's `features` ask for: offloads need a
    /// link with virtio-net headers. [`DeviceCore::ack_features`] would turn such offloads off
    /// (the guest's offloaded frames then become counted drops); a driver that is told the
    /// features up front (the pipeline's activation) refuses instead.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the link's header length.
    pub fn check_host_link(&self, features: u64, host: &impl HostLink) -> Result<(), Error> {
        self.port.check_host_link(features, host)
    }

    /// Records the driver's features in the device model only (no host link yet); returns the
    /// negotiated set. [`DeviceCore::ack_features`] does the whole negotiation.
    #[cfg(feature = "driver")]
    pub(crate) fn ack_device_features(&mut self, features: u64) -> u64 {
        self.port.device.ack_features(features)
    }

    /// What [`DeviceCore::ack_features`] agreed on.
    pub fn negotiated(&self) -> Negotiated {
        self.port.negotiated
    }

    /// Checks a queue the transport configured (`index` 0 RX, 1 TX: ready, size within
    /// [`BridgeConfig::max_queue_size`]) and sets its EVENT_IDX from the negotiated features.
    /// Call it when the driver sets DRIVER_OK, after [`DeviceCore::ack_features`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] naming the queue and the rule.
    pub fn prepare_queue<Q: QueueT>(&self, queue: &mut Q, index: u16) -> Result<(), Error> {
        self.port.prepare_queue(queue, index)
    }

    /// Adds a port forward at runtime (a control request), kept across [`DeviceCore::reset`]:
    /// IPv4 into the NAT at once, to the spec's guest address or the first DHCP address;
    /// IPv6 to the guest's learned global address, at once if known, else as soon as it is.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] without IPv6 for a `tcp6`/`udp6` spec, or when the external port is
    /// taken for the protocol and family; [`Error::NatRule`] when the NAT refuses the rule.
    pub fn add_forward(&mut self, spec: crate::ForwardSpec) -> Result<(), Error> {
        let to = *self.port.config.dhcp_pool.start();
        self.port.add_forward(spec, to, &mut self.nat)
    }

    /// Removes the port forward on (`protocol`, `external_port`) of one family (a control
    /// request) and ends the sessions set up through it ([`nat::Nat::close_forward`]), so the
    /// port stops answering at once; `false` if there was none.
    pub fn remove_forward(
        &mut self,
        protocol: nat::Protocol,
        external_port: u16,
        ipv6: bool,
    ) -> bool {
        self.port
            .remove_forward(protocol, external_port, ipv6, &mut self.nat)
    }

    /// Forgets all state (a device reset): new NAT table, no leases, no frames, nothing
    /// negotiated.
    pub fn reset(&mut self) {
        match Self::new(self.port.config.clone()) {
            Ok(fresh) => {
                let short = self.port.short_batch_drains();
                *self = fresh.with_short_batch_drains(short);
            }
            // `new` accepted this configuration before; keep the old state if it ever refuses.
            Err(e) => warn!("resetting the device failed: {e}"),
        }
    }

    /// The driver kicked the TX queue: drain it through the gateway services and the NAT
    /// (writes to `host`), then deliver what is waiting for the guest if the RX queue is
    /// usable (`rxq`). At most [`TX_BATCH_BUDGET`] batches: with chains left, returns with
    /// [`Notify::tx_more`] (the queue's notifications stay off until a call drains it); a
    /// delivery that stopped on its budget sets [`Notify::rx_more`].
    ///
    /// # Errors
    ///
    /// A queue the driver broke ([`Error::NeedsReset`] material: [`Error::Queue`], guest memory
    /// errors). Host link failures are logged once and counted, not returned.
    pub fn on_tx_kick<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        txq: &mut Q,
        rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.port.on_tx_kick(
            0,
            &mut self.nat,
            mem,
            txq,
            rxq,
            host,
            now,
            None,
            TX_BATCH_BUDGET,
        )
    }

    /// The driver added RX buffers, or (`host_readable`) the host link became readable:
    /// deliver what is waiting, at most [`RX_PASS_BUDGET`] passes. Returns whether the driver
    /// must be interrupted ([`Notify::rx`]) and whether work is left ([`Notify::rx_more`]).
    ///
    /// # Errors
    ///
    /// As [`DeviceCore::on_tx_kick`].
    pub fn on_rx_ready<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        host_readable: bool,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.port.host_readable(0, host_readable);
        self.port
            .deliver(0, &mut self.nat, mem, rxq, host, now, None)
    }

    /// The host link became readable while the RX queue is not usable yet: read it later.
    pub fn on_rx_unavailable(&mut self) {
        self.port.host_readable(0, true);
    }

    /// Housekeeping: expires idle NAT mappings (bounded work, [`Expiry`]) if a tick is due,
    /// and queues the gateway's unsolicited Router Advertisement when one is due (RFC 4861
    /// 6.2.4; [`Gateway::unsolicited`]: once the guest has used IPv6, so an idle guest keeps
    /// its default route) for the next delivery ([`DeviceCore::replies_pending`]). Returns how
    /// many mappings went. Call it when [`DeviceCore::next_timeout`] passes, and at least once
    /// a second (calling it more often costs a comparison).
    pub fn on_tick(&mut self, now: nat::Instant) -> usize {
        let expired = self.expiry.tick(&mut self.nat, now);
        self.port.on_tick(now);
        expired
    }

    /// Frames of the gateway's own (replies, advertisements) wait for the guest's RX buffers:
    /// the driver calls [`DeviceCore::on_rx_ready`] to deliver them (after
    /// [`DeviceCore::on_tick`] queued one with nothing else moving).
    pub fn replies_pending(&self) -> bool {
        self.port.replies_pending()
    }

    /// How long after `now` [`DeviceCore::on_tick`] has work (zero: now); `None`: nothing to
    /// expire. A tick that expired nothing pushes it a second on (no spinning on a deadline
    /// that passed early).
    pub fn next_timeout(&self, now: nat::Instant) -> Option<Duration> {
        self.expiry.timeout(&self.nat, now)
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.port.stats
    }

    /// The counters with the NAT's, as [`crate::BridgeHandle::stats`] gives them.
    pub fn bridge_stats(&self) -> BridgeStats {
        BridgeStats {
            bridge: self.port.stats.clone(),
            nat_flows: self.nat.len(),
            nat: self.nat.stats().clone(),
            needs_reset: false,
        }
    }

    /// The NAT (table size, forwards).
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// The NAT, to add or remove port forwards.
    pub fn nat_mut(&mut self) -> &mut Nat {
        &mut self.nat
    }

    /// The gateway services (the guest's MAC, its lease).
    pub fn gateway(&self) -> &Gateway {
        self.port.guest.gateway()
    }

    /// The offloads in force.
    pub fn offloads(&self) -> Offloads {
        self.port.negotiated.offloads
    }

    /// Whether the host link failed: a send or receive ended with an error that is not "full",
    /// "would block" or "interrupted" (a TUN deleted underneath answers `EBADFD`). The core
    /// logged it once and goes on without the link; a driver that must not serve on a dead link
    /// checks this after each event. A [`DeviceCore::reset`] clears it.
    pub fn host_failed(&self) -> bool {
        self.port.host_failed
    }

    /// Splits the core for a driver that runs its halves on different threads (the pipeline):
    /// the TX half, the RX half, the NAT they share, and what the pool of reply batches needs.
    #[cfg(feature = "driver")]
    pub(crate) fn into_parts(self) -> Parts {
        let reply_size = self.port.replies.buf_size();
        let mut pairs = self.port.pairs;
        // `PortCore` always has pair 0 (and a `DeviceCore` no other).
        let QueuePair { tx, rx } = pairs.swap_remove(0).unwrap_or_else(|| {
            queue_pair(
                &self.port.config,
                &self.port.negotiated,
                self.port.relay.clone(),
                self.port.short,
            )
        });
        Parts {
            reply_size,
            config: self.port.config,
            guest: self.port.guest,
            tx,
            rx,
            nat: self.nat,
        }
    }
}

/// One guest's device without a NAT of its own: the device model, the TX and RX halves, the
/// batch of frames waiting for the guest (gateway replies, hairpinned frames and, on a
/// [`crate::Network`], frames from other ports), the negotiation and the counters. Each event
/// takes the NAT it translates with: a [`DeviceCore`]'s own or a network's shared one.
#[derive(Debug)]
pub(crate) struct PortCore {
    pub(crate) config: BridgeConfig,
    pub(crate) device: Device,
    /// The guest's gateway services and IPv6 forwards, whichever queue its frames come on.
    pub(crate) guest: GuestState,
    /// The queue pairs' halves, pair 0 first (always there; more after
    /// [`PortCore::set_queue_pairs`]). Each pair's TX and RX half work on its own virtqueues
    /// (and, on a multi-queue host link, its own queue of it); the guest's state, the inbox
    /// and the counters are the port's.
    /// A pair's slot is empty while a [`crate::PairWorker`] holds its halves.
    pub(crate) pairs: Vec<Option<QueuePair>>,
    /// What each pair moved (as long as `pairs`).
    pub(crate) moved: Vec<PairStats>,
    /// Bumped whenever the halves are rebuilt (a negotiation): a worker holding halves of an
    /// older generation builds new ones.
    pub(crate) generation: u64,
    /// A short host batch counts as drained ([`DeviceCore::with_short_batch_drains`]).
    pub(crate) short: bool,
    /// Pairs in use (`1..=pairs.len()`): the driver's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
    active_pairs: usize,
    /// Frames waiting for RX buffers: gateway replies, hairpinned packets, frames switched
    /// from other ports.
    pub(crate) replies: FrameBatch,
    pub(crate) negotiated: Negotiated,
    pub(crate) stats: Stats,
    /// The DNS relay the halves share (one per network).
    pub(crate) relay: Option<SharedRelay>,
    /// The host link failed once (logged once; the TUN was probably deleted).
    pub(crate) host_failed: bool,
    /// The negotiated offloads were logged (once, and on a change).
    offloads_logged: bool,
}

impl PortCore {
    /// A fresh port for a validated `config` (its guest MAC, its lease pool), nothing
    /// negotiated; `relay` is the network's DNS relay.
    pub(crate) fn new(config: BridgeConfig, relay: Option<SharedRelay>) -> Result<Self, Error> {
        let gateway = build_gateway(&config)?;
        let device = Device::new(config.guest_mac, config.mtu).with_offloads(config.offloads);
        // Nothing negotiated yet, but the host link's framing is already fixed.
        let host_hdr = if config.offloads {
            VIRTIO_NET_HDR_LEN
        } else {
            0
        };
        let negotiated = Negotiated {
            offloads: Offloads::negotiate(0, host_hdr)?,
            header_len: device.header_len(),
            mrg_rxbuf: device.mrg_rxbuf(),
            ..Negotiated::default()
        };
        let pair = queue_pair(&config, &negotiated, relay.clone(), false);
        Ok(Self {
            guest: guest_state(&config, gateway),
            pairs: vec![Some(pair)],
            moved: vec![PairStats::default()],
            generation: 0,
            short: false,
            active_pairs: 1,
            replies: reply_batch(&config, &negotiated),
            config,
            device,
            negotiated,
            stats: Stats::default(),
            relay,
            host_failed: false,
            offloads_logged: false,
        })
    }

    /// Builds the halves for the driver's `acked` features and the `offloads` the host link
    /// agreed to (see [`DeviceCore::ack_features`]).
    pub(crate) fn use_features(&mut self, acked: u64, offloads: Offloads) {
        if offloads != self.negotiated.offloads || !self.offloads_logged {
            info!(
                tx_csum = offloads.tx_csum,
                tx_tso4 = offloads.tx_tso4,
                tx_tso6 = offloads.tx_tso6,
                rx_csum = offloads.rx_csum,
                rx_tso4 = offloads.rx_tso4,
                rx_tso6 = offloads.rx_tso6,
                host_vnet_hdr = offloads.host_hdr,
                "offloads negotiated"
            );
            self.offloads_logged = true;
        }
        let negotiated = Negotiated {
            features: acked,
            offloads,
            header_len: self.device.header_len(),
            mrg_rxbuf: self.device.mrg_rxbuf(),
            event_idx: acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0,
        };
        match build_gateway(&self.config) {
            Ok(gateway) => {
                let short = self.short;
                self.guest = guest_state(&self.config, gateway);
                for p in self.pairs.iter_mut().flatten() {
                    *p = queue_pair(&self.config, &negotiated, self.relay.clone(), short);
                }
                self.generation += 1;
                if reply_size(&self.config, &negotiated) != self.replies.buf_size() {
                    self.replies = reply_batch(&self.config, &negotiated);
                }
                self.negotiated = negotiated;
            }
            // `new` accepted this configuration before.
            Err(e) => warn!("rebuilding the gateway failed: {e}"),
        }
    }

    /// Sets the queue pairs in use to `n` (the driver's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`):
    /// pairs added are built for the negotiated features (their batches allocated here, once);
    /// pairs taken out of use keep their halves (and any host packets read but not delivered,
    /// delivered when they come back).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for `n` outside `1..=`[`crate::MAX_QUEUE_PAIRS`].
    pub(crate) fn set_queue_pairs(&mut self, n: usize) -> Result<(), Error> {
        if !u16::try_from(n).is_ok_and(|n| (1..=crate::MAX_QUEUE_PAIRS).contains(&n)) {
            return Err(Error::Config(format!(
                "{n} queue pairs: 1 to {} are possible",
                crate::MAX_QUEUE_PAIRS
            )));
        }
        while self.pairs.len() < n {
            let pair = queue_pair(
                &self.config,
                &self.negotiated,
                self.relay.clone(),
                self.short,
            );
            self.pairs.push(Some(pair));
            self.moved.push(PairStats::default());
        }
        self.active_pairs = n;
        Ok(())
    }

    /// The queue pairs in use.
    pub(crate) fn queue_pairs(&self) -> usize {
        self.active_pairs
    }

    /// What pair `pair` moved (also while out of use), if it was ever set up.
    pub(crate) fn pair_stats(&self, pair: usize) -> Option<PairStats> {
        self.moved.get(pair).copied()
    }

    /// Pair `pair` if it is in use.
    pub(crate) fn check_pair(&self, pair: usize) -> Result<(), Error> {
        if pair < self.active_pairs {
            Ok(())
        } else {
            Err(Error::PairNotInUse(pair))
        }
    }

    /// See [`DeviceCore::with_short_batch_drains`] (every pair).
    pub(crate) fn set_short_batch_drains(&mut self, on: bool) {
        self.short = on;
        for p in self.pairs.iter_mut().flatten() {
            p.rx.short_batch_drains = on;
        }
    }

    /// Whether a short host batch counts as drained.
    pub(crate) fn short_batch_drains(&self) -> bool {
        self.short
    }

    /// The host link (pair `pair`'s queue of it) became readable (`readable`) or may hold
    /// packets not read yet.
    pub(crate) fn host_readable(&mut self, pair: usize, readable: bool) {
        if let Some(Some(p)) = self.pairs.get_mut(pair) {
            p.rx.host_pending |= readable;
        }
    }

    /// See [`DeviceCore::check_host_link`].
    pub(crate) fn check_host_link(&self, features: u64, host: &impl HostLink) -> Result<(), Error> {
        let acked = crate::device::sanitize_features(features & self.device.device_features());
        let hdr = host.vnet_hdr_len();
        if acked & OFFLOAD_FEATURES != 0 && hdr != VIRTIO_NET_HDR_LEN {
            return Err(Error::Config(format!(
                "offloads need a host link with a {VIRTIO_NET_HDR_LEN}-byte vnet_hdr, this one has {hdr}"
            )));
        }
        Ok(())
    }

    /// See [`DeviceCore::prepare_queue`].
    pub(crate) fn prepare_queue<Q: QueueT>(&self, queue: &mut Q, index: u16) -> Result<(), Error> {
        let name = if index % 2 == RX_QUEUE { "rx" } else { "tx" };
        if !queue.ready() {
            return Err(Error::Config(format!("{name} queue is not ready")));
        }
        if queue.size() > self.config.max_queue_size {
            return Err(Error::Config(format!(
                "{name} queue size {} is over {}",
                queue.size(),
                self.config.max_queue_size
            )));
        }
        queue.set_event_idx(self.negotiated.event_idx);
        Ok(())
    }

    /// See [`DeviceCore::add_forward`]; an IPv4 spec without a guest address goes to `to`.
    pub(crate) fn add_forward(
        &mut self,
        spec: crate::ForwardSpec,
        to: core::net::Ipv4Addr,
        nat: &mut Nat,
    ) -> Result<(), Error> {
        if spec.ipv6 {
            if self.config.ipv6.is_none() {
                return Err(Error::Config(
                    "an IPv6 port forward needs IPv6 (it is off)".into(),
                ));
            }
            if let Some(g) = spec.guest_addr.filter(|&g| g != to) {
                return Err(Error::Config(format!(
                    "the IPv6 port forward names {g}, not this device's guest ({to})"
                )));
            }
            let f = spec.to_port_forward6();
            if !self.guest.add_forward6(f, nat) {
                return Err(Error::Config(format!(
                    "{:?} port {} is already forwarded (IPv6)",
                    f.protocol, f.external_port
                )));
            }
            self.config.forwards6.push(f);
            return Ok(());
        }
        install_forward(&mut self.config.forwards, nat, spec.to_port_forward(to))
    }

    /// See [`DeviceCore::remove_forward`].
    pub(crate) fn remove_forward(
        &mut self,
        protocol: nat::Protocol,
        external_port: u16,
        ipv6: bool,
        nat: &mut Nat,
    ) -> bool {
        let same = |p: nat::Protocol, port: u16| p == protocol && port == external_port;
        if ipv6 {
            self.config
                .forwards6
                .retain(|g| !same(g.protocol, g.external_port));
            return self.guest.remove_forward6(protocol, external_port, nat);
        }
        let before = self.config.forwards.len();
        self.config
            .forwards
            .retain(|g| !same(g.protocol, g.external_port));
        nat.close_forward(protocol, external_port);
        self.config.forwards.len() != before
    }

    /// See [`DeviceCore::on_tx_kick`], with at most `budget` batches; on a network, `others`
    /// takes each batch's frames for other ports (and the kick ends early, with
    /// [`Notify::tx_waits`], once one of their inboxes is half full: their driver delivers
    /// first).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_tx_kick<M: GuestMemory, Q: QueueT>(
        &mut self,
        pair: usize,
        nat: &mut Nat,
        mem: &M,
        txq: &mut Q,
        rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
        others: Option<&mut Others<'_>>,
        budget: usize,
    ) -> Result<Notify, Error> {
        let (halves, mut access, counters) = self.pair_parts(pair, nat, others)?;
        halves.on_tx_kick(&mut access, counters, mem, txq, rxq, host, now, budget)
    }

    /// Queues the gateway's unsolicited Router Advertisement when one is due (see
    /// [`DeviceCore::on_tick`]).
    pub(crate) fn on_tick(&mut self, now: nat::Instant) {
        if self.replies.pending() == 0 {
            self.replies.clear();
        }
        if let Some(buf) = self.replies.next_buf()
            && let Some(len) = self.guest.gateway_mut().unsolicited(buf, now)
        {
            self.replies.commit(0, len);
            self.stats.local_replies += 1;
        }
    }

    /// See [`DeviceCore::replies_pending`].
    pub(crate) fn replies_pending(&self) -> bool {
        self.replies.pending() > 0
    }

    /// Fills the guest's RX buffers, at most [`RX_PASS_BUDGET`] passes; returns whether to
    /// interrupt the driver (`rx`) and whether work is left (`rx_more`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn deliver<M: GuestMemory, Q: QueueT>(
        &mut self,
        pair: usize,
        nat: &mut Nat,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        now: nat::Instant,
        others: Option<&mut Others<'_>>,
    ) -> Result<Notify, Error> {
        let (halves, mut access, counters) = self.pair_parts(pair, nat, others)?;
        halves.deliver(&mut access, counters, mem, rxq, host, now)
    }
}

impl PortCore {
    /// For one event of pair `pair` (in use): its halves, the one owner's access to what they
    /// share (`nat`, the guest state, the inbox, `others`) and the port's counters.
    fn pair_parts<'a, 'o>(
        &'a mut self,
        pair: usize,
        nat: &'a mut Nat,
        others: Option<&'a mut Others<'o>>,
    ) -> Result<(&'a mut QueuePair, Direct<'a, 'o>, Counters<'a>), Error> {
        self.check_pair(pair)?;
        self.ensure_halves(pair);
        let PortCore {
            pairs,
            guest,
            replies,
            stats,
            moved,
            host_failed,
            ..
        } = self;
        let (Some(Some(halves)), Some(moved)) = (pairs.get_mut(pair), moved.get_mut(pair)) else {
            return Err(pair_held(pair));
        };
        let access = Direct {
            nat,
            guest,
            replies,
            others,
            inbox: delivers_inbox(pair),
        };
        let counters = Counters {
            stats,
            moved,
            failed: host_failed,
        };
        Ok((halves, access, counters))
    }

    /// Builds pair `pair`'s halves if a [`crate::PairWorker`] took them.
    fn ensure_halves(&mut self, pair: usize) {
        if matches!(self.pairs.get(pair), Some(None)) {
            self.pairs[pair] = Some(queue_pair(
                &self.config,
                &self.negotiated,
                self.relay.clone(),
                self.short,
            ));
        }
    }
}

/// A pair slot missing (cannot happen after [`PortCore::check_pair`]).
fn pair_held(pair: usize) -> Error {
    Error::Config(format!("queue pair {pair} has no halves"))
}

/// The counters an event adds to: the port's (or a [`crate::PairWorker`]'s, added to the
/// port's after the event) and whether the host link failed.
pub(crate) struct Counters<'a> {
    pub(crate) stats: &'a mut Stats,
    pub(crate) moved: &'a mut PairStats,
    /// The host link failed once (logged once; the TUN was probably deleted).
    pub(crate) failed: &'a mut bool,
}

impl Counters<'_> {
    fn host_failure(&mut self, e: &std::io::Error) {
        if !*self.failed {
            warn!("the host link failed: {e}");
            *self.failed = true;
        }
    }
}

impl QueuePair {
    /// The TX kick on this pair (see [`DeviceCore::on_tx_kick`]) with at most `budget`
    /// batches, each batch's shared part under one `access`; the kick ends early, with
    /// [`Notify::tx_more`] and [`Notify::tx_waits`], once an inbox of another port it filled
    /// is half full.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn on_tx_kick<A: TxAccess + RxAccess, M: GuestMemory, Q: QueueT>(
        &mut self,
        access: &mut A,
        mut c: Counters<'_>,
        mem: &M,
        txq: &mut Q,
        mut rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
        budget: usize,
    ) -> Result<Notify, Error> {
        let mut n = Notify::default();
        let mut batches = 0;
        loop {
            txq.disable_notification(mem)?;
            loop {
                if batches >= budget {
                    // Chains wait and notifications are off: the driver calls again.
                    n.tx_more = true;
                    return Ok(n);
                }
                batches += 1;
                let step = Step {
                    host,
                    now,
                    stats: &mut *c.stats,
                };
                let before = step.stats.tx_frames;
                let link = Gathering { mem, link: host };
                let gather = host.gathers().then_some(&link as &dyn Gather);
                let (out, busy) = match self.tx.batch(mem, txq, access, step, gather) {
                    Ok(out) => out,
                    Err(Error::HostLink(e)) => {
                        c.host_failure(&e);
                        (TxOutcome::default(), false)
                    }
                    Err(e) => return Err(e),
                };
                c.moved.tx_frames += c.stats.tx_frames - before;
                n.tx |= out.notify;
                if let Some(rxq) = rxq.as_deref_mut() {
                    let counters = Counters {
                        stats: &mut *c.stats,
                        moved: &mut *c.moved,
                        failed: &mut *c.failed,
                    };
                    let d = self.deliver(access, counters, mem, rxq, host, now)?;
                    n.rx |= d.rx;
                    n.rx_more = d.rx_more;
                }
                if busy {
                    // Another port's inbox fills: its driver delivers before more comes (the
                    // next call also turns the notifications back on when the ring is empty).
                    n.tx_more = true;
                    n.tx_waits = true;
                    return Ok(n);
                }
                if !out.more {
                    break;
                }
            }
            if !txq.enable_notification(mem)? {
                break;
            }
        }
        Ok(n)
    }

    /// Fills the guest's RX buffers of this pair, at most [`RX_PASS_BUDGET`] passes; returns
    /// whether to interrupt the driver (`rx`) and whether work is left (`rx_more`).
    pub(crate) fn deliver<A: RxAccess, M: GuestMemory, Q: QueueT>(
        &mut self,
        access: &mut A,
        mut c: Counters<'_>,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        let before = c.stats.rx_frames;
        let mut notify = Notify::default();
        let mut done = false;
        let link = Gathering { mem, link: host };
        let io = host.scatters().then_some(&link as &dyn Gather);
        for _ in 0..RX_PASS_BUDGET {
            let step = Step {
                host,
                now,
                stats: &mut *c.stats,
            };
            let p = match self.rx.deliver(mem, rxq, access, step, io) {
                Ok(p) => p,
                Err(Error::HostLink(e)) => {
                    c.host_failure(&e);
                    done = true;
                    break;
                }
                Err(e) => {
                    c.moved.rx_frames += c.stats.rx_frames - before;
                    return Err(e);
                }
            };
            notify.rx |= p.notify;
            // Work is left (the round budget, or a batch whose interrupt the half handed back
            // first): an owner on one thread gets no second event for it from an edge-triggered
            // link, so go on here, up to the budget; the interrupt flags add up.
            if !p.more {
                done = true;
                break;
            }
        }
        notify.rx_more = !done;
        c.moved.rx_frames += c.stats.rx_frames - before;
        Ok(notify)
    }
}

/// Installs the IPv4 port forward `f` in `nat` and records it in `forwards`; a protocol and
/// external port forwarded already is refused.
pub(crate) fn install_forward(
    forwards: &mut Vec<nat::PortForward>,
    nat: &mut Nat,
    f: nat::PortForward,
) -> Result<(), Error> {
    if forwards
        .iter()
        .any(|g| g.protocol == f.protocol && g.external_port == f.external_port)
    {
        return Err(Error::Config(format!(
            "{:?} port {} is already forwarded",
            f.protocol, f.external_port
        )));
    }
    nat.add_forward(f).map_err(Error::NatRule)?;
    forwards.push(f);
    Ok(())
}

/// The NAT of a network for a validated `config`: its internal networks set from the
/// gateway's subnet (and the IPv6 prefix), the port forwards and the DNS redirects installed.
pub(crate) fn network_nat(config: &mut BridgeConfig) -> Result<Nat, Error> {
    let mask = crate::dhcp::prefix_mask(config.prefix_len);
    config.nat.internal_net = core::net::Ipv4Addr::from(u32::from(config.gateway) & mask);
    config.nat.internal_prefix_len = config.prefix_len;
    if let Some(v6) = &config.ipv6 {
        config.nat.internal_net6 = v6.prefix;
        config.nat.internal_prefix_len6 = 64;
    }
    let mut nat = Nat::new(config.nat.clone()).map_err(Error::NatConfig)?;
    for f in &config.forwards {
        nat.add_forward(*f).map_err(Error::NatRule)?;
    }
    install_dns_redirects(&mut nat, config)?;
    Ok(nat)
}

/// The DNS relay of a network, when the upstream's family is not every query's (IPv6 on).
pub(crate) fn dns_relay(config: &BridgeConfig) -> Option<SharedRelay> {
    let gw = config.gateway_config();
    match &config.ipv6 {
        Some(v6) if gw.dns6 == crate::Dns6::Relay || gw.dns4_relay => {
            Some(SharedRelay::new(config.gateway, v6.gateway))
        }
        _ => None,
    }
}

/// A negotiated core taken apart for the pipeline.
#[cfg(feature = "driver")]
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) config: BridgeConfig,
    pub(crate) guest: GuestState,
    pub(crate) tx: TxHalf,
    pub(crate) rx: RxHalf,
    pub(crate) nat: Nat,
    /// Room per frame in a batch of gateway replies.
    pub(crate) reply_size: usize,
}

/// What a TX batch works with under the lock its caller shares it behind (taken once per
/// batch): the NAT, the guest's state and the frames waiting for the guest, and on a network
/// the rest of the network.
pub(crate) struct TxLocked<'a, 'o> {
    pub(crate) nat: &'a mut Nat,
    pub(crate) guest: &'a mut GuestState,
    /// Gateway replies and hairpinned frames (room for a batch when empty).
    pub(crate) replies: &'a mut FrameBatch,
    pub(crate) others: Option<&'a mut Others<'o>>,
}

/// What an RX step works with under its caller's lock: the NAT, the guest's MAC, the frames
/// waiting for the guest (if the caller shares them) and on a network the rest of it.
pub(crate) struct RxLocked<'a, 'o> {
    pub(crate) nat: &'a mut Nat,
    pub(crate) guest_mac: MacAddr,
    pub(crate) replies: Option<&'a mut FrameBatch>,
    pub(crate) others: Option<&'a mut Others<'o>>,
}

/// How a TX half reaches what it shares: directly (one owner), or under a lock taken once per
/// batch (the pipeline's NAT, a network shared by pair workers).
pub(crate) trait TxAccess {
    /// Runs `f` with the shared state.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the port is gone (a network's port detached meanwhile).
    fn with_tx<R>(&mut self, f: impl FnOnce(TxLocked<'_, '_>) -> R) -> Result<R, Error>;
}

/// How an RX half reaches what it shares (see [`TxAccess`]).
pub(crate) trait RxAccess {
    /// Runs `f` with the shared state.
    ///
    /// # Errors
    ///
    /// As [`TxAccess::with_tx`].
    fn with_rx<R>(&mut self, f: impl FnOnce(RxLocked<'_, '_>) -> R) -> Result<R, Error>;

    /// Whether frames may wait for the guest besides the host link's (`false` lets the RX
    /// half skip taking the lock to look).
    fn replies_may_wait(&self) -> bool {
        true
    }

    /// Whether the RX half takes the port's inbox out of the lock (the inbox exchanged, under
    /// it, for an empty batch of the same shape) and copies it into the guest's buffers
    /// outside it, rather than copying under the lock. A [`crate::PairWorker`] does: the lock
    /// is shared with other ports' threads, and an inbox of 64 KiB super-frames is a long
    /// copy.
    fn takes_inbox(&self) -> bool {
        false
    }
}

/// The one owner's access: everything at hand (a [`DeviceCore`], a [`crate::Network`] driven
/// by one thread).
pub(crate) struct Direct<'a, 'o> {
    pub(crate) nat: &'a mut Nat,
    pub(crate) guest: &'a mut GuestState,
    pub(crate) replies: &'a mut FrameBatch,
    pub(crate) others: Option<&'a mut Others<'o>>,
    /// The RX half delivers the frames waiting for the guest: pair 0's does, the port's other
    /// pairs' deliver only host packets (see [`delivers_inbox`]).
    pub(crate) inbox: bool,
}

impl TxAccess for Direct<'_, '_> {
    fn with_tx<R>(&mut self, f: impl FnOnce(TxLocked<'_, '_>) -> R) -> Result<R, Error> {
        Ok(f(TxLocked {
            nat: self.nat,
            guest: self.guest,
            replies: self.replies,
            others: self.others.as_deref_mut(),
        }))
    }
}

impl RxAccess for Direct<'_, '_> {
    fn with_rx<R>(&mut self, f: impl FnOnce(RxLocked<'_, '_>) -> R) -> Result<R, Error> {
        Ok(f(RxLocked {
            nat: self.nat,
            guest_mac: self.guest.gateway().guest_mac(),
            replies: self.inbox.then_some(&mut *self.replies),
            others: self.others.as_deref_mut(),
        }))
    }

    fn replies_may_wait(&self) -> bool {
        self.inbox && (self.replies.pending() > 0 || self.others.is_some())
    }
}

/// Whether queue pair `pair`'s RX half delivers its port's inbox (the gateway's replies,
/// frames switched from other guests or moved from another port's host batch): only pair 0's.
/// One RX queue for every frame that does not come from the pair's own host-link queue keeps
/// a flow's frames in order: two pairs' threads delivering the one inbox by turns put the
/// segments of one TCP flow on two RX queues, and the guest took them out of order (two
/// simulated guests of two pairs on one hostnetd, 4 streams: every retransmission a spurious
/// one, DSACKed).
pub(crate) const fn delivers_inbox(pair: usize) -> bool {
    pair == 0
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent, and a
/// panicking pipeline thread is reported through `ThreadPanicked`.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One queue pair's halves (see [`PortCore::pairs`]) and what moved on it.
#[derive(Debug)]
pub(crate) struct QueuePair {
    pub(crate) tx: TxHalf,
    pub(crate) rx: RxHalf,
}

/// Frames one queue pair moved (monotonic; the port's [`Stats`] count them all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PairStats {
    /// Frames taken from the pair's TX queue.
    pub tx_frames: u64,
    /// Frames delivered into the pair's RX queue.
    pub rx_frames: u64,
}

/// What a half's step works with besides the queue, the batches and the NAT.
pub(crate) struct Step<'a> {
    /// Where packets leave and arrive.
    pub(crate) host: &'a dyn HostLink,
    /// The time of this step.
    pub(crate) now: nat::Instant,
    /// The counters the step adds to.
    pub(crate) stats: &'a mut Stats,
}

/// The TX half: TX queue → gateway services → NAT → host link, one batch per call.
#[derive(Debug)]
pub(crate) struct TxHalf {
    pub(crate) engine: TxEngine,
    /// Scratch for returning head-only frames' chains.
    used: UsedBatch,
}

impl TxHalf {
    /// A TX half around `engine`.
    pub(crate) fn new(engine: TxEngine) -> Self {
        TxHalf {
            engine,
            used: UsedBatch::default(),
        }
    }

    /// Takes up to a batch of TX chains (the copies out of guest memory, outside any lock),
    /// then under one `access` answers what the gateway answers (into the replies), switches
    /// what is for other ports and translates the rest, and sends that to the host link
    /// (outside the lock). Returns the outcome and whether an inbox of another port the batch
    /// filled is half full.
    ///
    /// # Errors
    ///
    /// Queue and guest memory errors; [`Error::HostLink`] when the link failed (the frames
    /// were taken and counted).
    pub(crate) fn batch<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        access: &mut impl TxAccess,
        step: Step<'_>,
        gather: Option<&dyn Gather>,
    ) -> Result<(TxOutcome, bool), Error> {
        let Step { host, now, stats } = step;
        let TxHalf { engine, used } = self;
        let mut out = engine.fetch_split(mem, queue, stats, gather.is_some())?;
        let mut notify = false;
        let r = {
            // A head-only frame's chain goes back as soon as its packet is sent.
            let mut release = |chain: u16| -> Result<(), Error> {
                used.clear();
                used.push(chain, 0);
                let (old, new) = used.flush(mem, &mut *queue)?;
                notify |= ring::needs_notification(mem, &*queue, old, new)?;
                Ok(())
            };
            let mut send = gather.map(|link| GatherSend {
                link,
                release: &mut release,
            });
            translate_and_push(engine, out, access, host, send.as_mut(), now, stats)
        };
        // The rest of them (dropped, or the send stopped early) go back whatever happened.
        out.notify |= notify | engine.release(mem, queue, used)?;
        Ok((out, r?))
    }
}

/// The part of [`TxHalf::batch`] between the fetch and the release; whether an inbox of
/// another port the batch filled is half full.
fn translate_and_push(
    engine: &mut TxEngine,
    out: TxOutcome,
    access: &mut impl TxAccess,
    host: &dyn HostLink,
    gather: Option<&mut GatherSend<'_>>,
    now: nat::Instant,
    stats: &mut Stats,
) -> Result<bool, Error> {
    let mut busy = false;
    if out.frames > 0 {
        busy = access.with_tx(|l| {
            let TxLocked {
                nat,
                guest,
                replies,
                others,
            } = l;
            if replies.pending() == 0 {
                replies.clear();
            }
            let view = others.as_ref().map(|o| o.view());
            engine.classify(replies, guest, now, stats, view);
            engine.translate_switched(nat, replies, guest, now, stats, view);
            others.is_some_and(|o| {
                o.take_tx(engine, stats);
                o.inbox_busy()
            })
        })?;
        engine.push_gathered(host, gather, stats)?;
    }
    Ok(busy)
}

/// What one [`RxHalf::deliver`] did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RxProgress {
    /// The driver must be interrupted.
    pub(crate) notify: bool,
    /// Frames wait and the guest has no RX buffers (the kick is armed): wait for it.
    pub(crate) starved: bool,
    /// Work is left (the round budget ran out, or a delivered batch wants its interrupt
    /// first): interrupt if `notify`, then call again (after other events).
    pub(crate) more: bool,
}

/// The RX half: host link → NAT → RX queue; host packets read before first, then the frames
/// waiting for the guest (gateway replies, a network port's inbox), then new reads.
#[derive(Debug)]
pub(crate) struct RxHalf {
    pub(crate) engine: RxEngine,
    /// The host link may hold packets not read yet.
    pub(crate) host_pending: bool,
    /// The half may read the host link now (`false`: it delivers what it has and leaves the
    /// link to another port's reader, see [`crate::PairWorker::set_host_reads`]).
    pub(crate) host_reads: bool,
    /// A batch shorter than asked means the host link is drained.
    pub(crate) short_batch_drains: bool,
    /// The port's inbox as a [`crate::PairWorker`] took it out of the network's lock (by
    /// exchanging batches, see [`RxAccess::takes_inbox`]) to copy it into the guest's buffers
    /// outside the lock. What the guest had no room for goes back to the port if nothing
    /// newer waits there, else it waits here and goes first at the next event.
    pub(crate) held: Option<FrameBatch>,
}

impl RxHalf {
    /// Delivers the host packets read before first (what another port read for this one
    /// meanwhile waits in the inbox, behind them), then the frames waiting for the guest
    /// (gateway replies, a network port's inbox; under `access`), then packets from the host
    /// link while it has some, the half may read it and the guest has buffers, at most
    /// [`RX_ROUNDS`] host batches per call. The host link's reads and the
    /// copies into guest memory run outside the lock; its translation under it.
    ///
    /// # Errors
    ///
    /// Queue and guest memory errors; [`Error::HostLink`] when the link failed (no more reads
    /// until it is readable again).
    ///
    /// With `io` (the link reads into guest memory) a large packet's payload goes straight
    /// into the guest's RX buffers ([`crate::rx_split`]); while such frames wait, nothing
    /// else is delivered first, and those still waiting when the call returns are made whole.
    pub(crate) fn deliver<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        access: &mut impl RxAccess,
        step: Step<'_>,
        io: Option<&dyn Gather>,
    ) -> Result<RxProgress, Error> {
        let Step { host, now, stats } = step;
        let step = Step {
            host,
            now,
            stats: &mut *stats,
        };
        let res = self.deliver_inner(mem, queue, access, step, io);
        self.engine.make_all_whole(io, stats);
        res
    }

    fn deliver_inner<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        access: &mut impl RxAccess,
        step: Step<'_>,
        io: Option<&dyn Gather>,
    ) -> Result<RxProgress, Error> {
        let Step { host, now, stats } = step;
        let mut p = RxProgress::default();
        let mut rounds = 0;
        // A worker takes the port's inbox once per call (its held frames go first).
        let mut took = false;
        loop {
            let filled = if self.engine.pending() > 0 {
                // The host packets read before go first: frames that wait in the inbox are
                // either switched from other guests (other flows) or host packets another
                // port read later than these, while this port's reads were stopped (a
                // starved reader lets another read: `PairWorker::set_host_reads`); and
                // scattered frames' chains are reserved.
                None
            } else if access.takes_inbox() {
                if !took && self.held.as_ref().is_none_or(|h| h.pending() == 0) {
                    took = true;
                    let held = &mut self.held;
                    access.with_rx(|l| take_inbox(held, l.replies))?;
                }
                let rx_queue = self.engine.rx_queue();
                let filled = self.held.as_mut().filter(|h| h.pending() > 0).map(|h| {
                    let out = rx_queue.fill(mem, queue, h, stats);
                    if h.pending() == 0 {
                        h.clear();
                    }
                    out
                });
                if self.held.as_ref().is_some_and(|h| h.pending() > 0) {
                    // The guest is short of buffers: what is left goes back to the port while
                    // nothing newer waits there, so that the wake-ups (which look at the
                    // inbox) see it, in order.
                    let held = &mut self.held;
                    if access.with_rx(|l| give_back(held, l.replies))? {
                        took = false;
                    }
                }
                filled
            } else if access.replies_may_wait() {
                let rx_queue = self.engine.rx_queue();
                access.with_rx(|l| match l.replies {
                    Some(r) if r.pending() > 0 => {
                        let out = rx_queue.fill(mem, queue, r, stats);
                        if r.pending() == 0 {
                            r.clear();
                        }
                        Some(out)
                    }
                    _ => None,
                })?
            } else {
                None
            };
            if let Some(out) = filled {
                let out = out?;
                p.notify |= out.notify;
                if out.starved {
                    if self.engine.rx_queue().arm(mem, queue)? {
                        continue;
                    }
                    p.starved = true;
                    return Ok(p);
                }
                if !took && access.takes_inbox() {
                    // Held frames went first; now the inbox that filled meanwhile.
                    continue;
                }
            }
            if self.engine.pending() > 0 {
                let out = self.engine.deliver_with(mem, queue, io, stats)?;
                p.notify |= out.notify;
                if out.starved {
                    if self.engine.rx_queue().arm(mem, queue)? {
                        continue;
                    }
                    p.starved = true;
                    return Ok(p);
                }
                if out.notify && self.host_pending && self.host_reads {
                    // The guest wants to hear of this batch now (it refills its ring when it
                    // does): hand the interrupt to the driver before reading on.
                    p.more = true;
                    return Ok(p);
                }
                continue;
            }
            if !self.host_pending || !self.host_reads {
                return Ok(p);
            }
            if rounds == RX_ROUNDS {
                p.more = true;
                return Ok(p);
            }
            rounds += 1;
            let got = match io {
                Some(io) if self.engine.scatters() => {
                    self.engine.receive_scattered(host, io, mem, &*queue, stats)
                }
                _ => self.engine.receive(host, stats),
            };
            match got {
                Ok(0) => {
                    self.host_pending = false;
                    return Ok(p);
                }
                Ok(n) => {
                    if self.short_batch_drains && n < self.engine.capacity() {
                        self.host_pending = false;
                    }
                    let engine = &mut self.engine;
                    access.with_rx(|l| {
                        engine.translate_with(l.nat, now, l.guest_mac, io, stats);
                        if let Some(o) = l.others {
                            o.take_rx(engine, io, stats);
                        }
                    })?;
                    if let Err(e) = self.engine.send_answers(host, stats) {
                        self.host_pending = false;
                        return Err(e);
                    }
                }
                Err(e) => {
                    self.host_pending = false;
                    return Err(e);
                }
            }
        }
    }
}

/// Under the lock: exchanges a waiting `inbox` for the empty batch in `held` (made once, of
/// the inbox's shape, so that the port keeps an inbox of the same room).
fn take_inbox(held: &mut Option<FrameBatch>, inbox: Option<&mut FrameBatch>) {
    let Some(inbox) = inbox.filter(|r| r.pending() > 0) else {
        return;
    };
    let spare = match held {
        Some(h) if h.capacity() == inbox.capacity() && h.buf_size() == inbox.buf_size() => h,
        _ => held.insert(FrameBatch::new(inbox.capacity(), inbox.buf_size())),
    };
    spare.clear();
    core::mem::swap(spare, inbox);
}

/// Under the lock: frames `held` took out and the guest had no room for go back as the
/// port's inbox if it is empty (else they stay: newer frames are there). Whether they went.
fn give_back(held: &mut Option<FrameBatch>, inbox: Option<&mut FrameBatch>) -> bool {
    let (Some(h), Some(inbox)) = (held.as_mut(), inbox) else {
        return false;
    };
    if h.pending() == 0 || inbox.pending() > 0 {
        return false;
    }
    core::mem::swap(h, inbox);
    h.clear();
    true
}

/// The NAT expiry policy for every driver: at most [`EXPIRE_BUDGET`] mappings per tick, a
/// timer no later than the NAT's next deadline (capped at one minute), and no spinning on a
/// passed deadline that expired nothing (no tick for a second then).
#[derive(Clone, Copy, Debug, Default)]
pub struct Expiry {
    /// After a due tick that expired nothing: no tick before this (milliseconds).
    idle_until: Option<u64>,
}

impl Expiry {
    /// Whether a tick at `now` has work.
    pub fn due(&self, nat: &Nat, now: nat::Instant) -> bool {
        nat.next_deadline().is_some_and(|d| d <= now)
            && self.idle_until.is_none_or(|t| t <= now.as_millis())
    }

    /// Expires up to [`EXPIRE_BUDGET`] mappings if a tick is due; returns how many went.
    /// Cheap when none is due: call it as often as convenient.
    pub fn tick(&mut self, nat: &mut Nat, now: nat::Instant) -> usize {
        if !self.due(nat, now) {
            return 0;
        }
        let n = nat.expire(now, EXPIRE_BUDGET);
        self.idle_until = (n == 0).then(|| now.as_millis().saturating_add(IDLE_WAIT));
        n
    }

    /// How long after `now` the next tick is due (zero: now); `None`: nothing to expire.
    pub fn timeout(&self, nat: &Nat, now: nat::Instant) -> Option<Duration> {
        let at = nat
            .next_deadline()?
            .as_millis()
            .max(self.idle_until.unwrap_or(0));
        let ms = at.saturating_sub(now.as_millis()).min(MAX_WAIT);
        Some(Duration::from_millis(ms))
    }
}

/// The offloads for the driver's `acked` features over `host`, reduced to what the host link
/// accepts: [`HostLink::set_offloads`] is told what the guest takes (GUEST_CSUM, GUEST_TSO4,
/// GUEST_TSO6); if it refuses, TSO6, then TSO4, then checksum offloads towards the guest are
/// turned off ([`crate::LinkOffloads::fewer`]). Offloads negotiated over a link without
/// virtio-net headers (the device should not have offered them) are all turned off.
pub(crate) fn negotiate_offloads(acked: u64, host: &impl HostLink) -> Offloads {
    let hdr_len = host.vnet_hdr_len();
    let mut o = match Offloads::negotiate(acked, hdr_len) {
        Ok(o) => o,
        Err(e) => {
            warn!("offloads turned off: {e}");
            Offloads::negotiate(acked & !OFFLOAD_FEATURES, hdr_len).unwrap_or_default()
        }
    };
    let mut asked = o.towards_guest();
    loop {
        match host.set_offloads(asked) {
            Ok(()) => break,
            Err(e) if !asked.any() => {
                warn!("the host link refused to turn its offloads off: {e}");
                break;
            }
            Err(e) => {
                let fewer = asked.fewer();
                warn!(
                    csum = asked.csum,
                    tso4 = asked.tso4,
                    tso6 = asked.tso6,
                    "the host link refused these offloads ({e}); trying csum={} tso4={} tso6={}",
                    fewer.csum,
                    fewer.tso4,
                    fewer.tso6
                );
                asked = fewer;
            }
        }
    }
    o.rx_csum &= asked.csum;
    o.rx_tso4 &= asked.tso4;
    o.rx_tso6 &= asked.tso6;
    o
}

/// The gateway services of `config`, with its egress policy (the NAT's external address
/// exempt).
/// The NAT redirects of the gateway's DNS to the upstream of the same family: UDP and TCP
/// `gateway:53` to an IPv4 upstream, `[fd64::1]:53` to an IPv6 one (with IPv6 on).
fn install_dns_redirects(nat: &mut Nat, config: &BridgeConfig) -> Result<(), Error> {
    use core::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        match (config.dns_upstream, &config.ipv6) {
            (Some(SocketAddr::V4(to)), _) => nat.add_redirect(Redirect {
                protocol,
                from: SocketAddrV4::new(config.gateway, DNS_PORT),
                to,
            }),
            (Some(SocketAddr::V6(to)), Some(v6)) => {
                let from = SocketAddrV6::new(v6.gateway, DNS_PORT, 0, 0);
                nat.add_redirect6(protocol, from, to)
            }
            _ => Ok(()),
        }
        .map_err(Error::NatRule)?;
    }
    Ok(())
}

fn build_gateway(config: &BridgeConfig) -> Result<Gateway, Error> {
    Ok(Gateway::new(config.gateway_config())?
        .with_egress(config.egress.clone(), Some(config.nat.external_addr))
        .with_egress_exempt6(config.ipv6.map(|_| config.nat.external_addr6)))
}

/// The IPv4 address of a device's guest: its static address, else the pool's first (a
/// network's port has a pool of one).
fn device_guest(config: &BridgeConfig) -> core::net::Ipv4Addr {
    config.static_guest_ip.unwrap_or(*config.dhcp_pool.start())
}

/// The IPv6 forwards for this device's guest: those naming no guest or its IPv4 address.
fn forwards6_of_guest(config: &BridgeConfig) -> Vec<crate::PortForward6> {
    let guest = device_guest(config);
    config
        .forwards6
        .iter()
        .filter(|f| f.guest.is_none_or(|g| g == guest))
        .copied()
        .collect()
}

/// The guest's state on its port: `gateway` and the IPv6 forwards for it.
fn guest_state(config: &BridgeConfig, gateway: Gateway) -> GuestState {
    GuestState::new(gateway).with_forwards6(forwards6_of_guest(config))
}

/// A queue pair's TX and RX halves for the negotiated header and offloads, nothing moved yet
/// (`short_batch_drains`: see [`DeviceCore::with_short_batch_drains`]).
pub(crate) fn queue_pair(
    config: &BridgeConfig,
    n: &Negotiated,
    relay: Option<SharedRelay>,
    short_batch_drains: bool,
) -> QueuePair {
    let mtu = usize::from(config.mtu);
    let offloads = n.offloads;
    let max_frame = offloads.max_tx_frame(config.mtu);
    let tx = TxEngine::new(
        TxQueue::new(n.header_len, max_frame),
        config.batch_size,
        max_frame,
    )
    .with_offloads(offloads, config.mtu)
    .with_split_rule(SplitRule::new(config));
    let tx = tx.with_dns_relay(relay.clone());
    // The host link hands over GSO super-packets of up to 64 KiB only if the guest takes them
    // (the header it may put in front fits in the Ethernet header's room).
    let max_packet = if offloads.rx_tso() {
        MAX_IP_PACKET
    } else {
        config.max_host_packet.min(MAX_IP_PACKET)
    };
    let rx = RxEngine::new(
        RxQueue::new(n.header_len, n.mrg_rxbuf),
        config.batch_size,
        max_packet,
        mtu,
        config.gateway_mac,
    )
    .with_offloads(offloads)
    .with_dns_relay(relay)
    .with_too_big_answers(config.gateway, config.ipv6.as_ref().map(|v| v.gateway));
    QueuePair {
        tx: TxHalf::new(tx),
        rx: RxHalf {
            engine: rx,
            host_pending: true,
            host_reads: true,
            short_batch_drains,
            held: None,
        },
    }
}

/// Room per frame in a batch of gateway replies and hairpinned frames: a hairpinned
/// super-frame needs 64 KiB when the guest takes them (GUEST_TSO4, GUEST_TSO6), a DHCP reply
/// [`MIN_REPLY`]. The virtio-net header's room on top makes it the size of a TX batch's
/// buffers between guests that negotiated alike, so that a frame switched between them moves
/// by buffer (see `FrameBatch::move_frame`).
fn reply_size(config: &BridgeConfig, n: &Negotiated) -> usize {
    let frame = if n.offloads.rx_tso() {
        n.offloads.max_tx_frame(config.mtu)
    } else {
        ETH_HLEN + usize::from(config.mtu)
    };
    frame.max(MIN_REPLY) + VIRTIO_NET_HDR_LEN
}

fn reply_batch(config: &BridgeConfig, n: &Negotiated) -> FrameBatch {
    FrameBatch::new(INBOX_BATCHES * config.batch_size, reply_size(config, n))
}

/// A port's inbox holds this many batches. A sender's kick ends once an inbox it put frames
/// in is half full (`Notify::tx_waits`), so a batch that starts with the inbox below half
/// never overflows it: only a sender that goes on while the inbox is at half or more (its
/// driver's wait ran out, or a driver that does not wait) can lose frames there.
pub(crate) const INBOX_BATCHES: usize = 2;

/// The DNS port (RFC 1035).
const DNS_PORT: u16 = 53;
/// Room for the longest reply the gateway builds (a DHCP reply with every option).
const MIN_REPLY: usize = 1024;
/// NAT mappings expired per tick at most.
pub const EXPIRE_BUDGET: usize = 1024;
/// Host batches read per [`RxHalf::deliver`] call at most (then other events get a turn).
const RX_ROUNDS: usize = 16;
/// TX batches ([`BridgeConfig::batch_size`] chains each) per [`DeviceCore::on_tx_kick`] call
/// at most; then [`Notify::tx_more`] hands the rest to the driver's next pass. Eight batches
/// of the default 64 chains is half a ring of the largest queue size (1024).
pub const TX_BATCH_BUDGET: usize = 8;
/// Delivery passes per [`DeviceCore::on_rx_ready`] call (and per TX batch's delivery in
/// [`DeviceCore::on_tx_kick`]) at most; then [`Notify::rx_more`]. A pass delivers the pending
/// gateway replies and host packets until a batch wants its interrupt or 16 host batches
/// were read.
pub const RX_PASS_BUDGET: usize = 8;
/// Longest timer while the NAT has a deadline, in milliseconds.
const MAX_WAIT: u64 = 60_000;
/// Timer when the NAT reports a passed deadline but the last tick expired nothing.
const IDLE_WAIT: u64 = 1_000;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nat::{PortForward, Protocol};

    use ::wire::checksum as inet;
    use ::wire::{ArpPacket, EthernetFrame, Ipv4Packet, TcpPacket, UdpPacket, arp, ip_proto};

    use super::*;
    use crate::testing::{self, EXTERNAL, GATEWAY, GUEST_IP, GUEST_MAC, MockNet};
    use crate::{LinkOffloads, MemoryLink};

    const HDR: usize = 12;
    const FEATURES: u64 = 1 << 32 | 1 << 15; // VERSION_1 | MRG_RXBUF

    const BATCH: usize = 64;
    const NOW: nat::Instant = nat::Instant::ZERO;

    fn config(forwards: Vec<PortForward>) -> BridgeConfig {
        let mut c = BridgeConfig {
            guest_mac: GUEST_MAC,
            gateway: GATEWAY,
            forwards,
            ..BridgeConfig::default()
        };
        c.nat.external_addr = EXTERNAL;
        c
    }

    fn offload_config() -> BridgeConfig {
        BridgeConfig {
            offloads: true,
            ..config(Vec::new())
        }
    }

    /// A host link with virtio-net headers that refuses TSO6 towards the bridge, and TSO4
    /// too when `.1` (as a kernel without `TUN_F_TSO6` or `TUN_F_TSO4` would).
    struct NoTsoLink(MemoryLink, bool);

    impl HostLink for NoTsoLink {
        fn send_batch(&self, packets: &[&[u8]]) -> std::io::Result<usize> {
            self.0.send_batch(packets)
        }
        fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> std::io::Result<usize> {
            self.0.recv_batch(bufs, lens)
        }
        fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            self.0.readiness_fd()
        }
        fn vnet_hdr_len(&self) -> usize {
            self.0.vnet_hdr_len()
        }
        fn set_offloads(&self, o: LinkOffloads) -> std::io::Result<()> {
            if o.tso6 || (o.tso4 && self.1) {
                return Err(std::io::ErrorKind::Unsupported.into());
            }
            self.0.set_offloads(o)
        }
    }

    /// TX: csum, tso4, tso6; RX: csum, tso4, tso6; the link's header.
    fn offloads_of(o: Offloads) -> [bool; 7] {
        [
            o.tx_csum, o.tx_tso4, o.tx_tso6, o.rx_csum, o.rx_tso4, o.rx_tso6, o.host_hdr,
        ]
    }

    fn link(csum: bool, tso4: bool, tso6: bool) -> LinkOffloads {
        LinkOffloads { csum, tso4, tso6 }
    }

    /// UDP 5353 on the external address forwarded to the guest's port 53.
    fn dns_forward() -> PortForward {
        PortForward {
            protocol: Protocol::Udp,
            external_port: 5353,
            internal: SocketAddrV4::new(GUEST_IP, 53),
        }
    }

    fn post_rx(net: &mut MockNet<'_>, n: usize) {
        for _ in 0..n {
            net.post_rx(&[2048]);
        }
    }

    #[test]
    fn arp_for_the_gateway_is_answered_through_the_rx_queue() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(64).unwrap();
        let mut dp = DeviceCore::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 2);
        net.send_frame(
            HDR,
            &testing::arp_request(GUEST_MAC, GUEST_IP, GATEWAY),
            &[],
        );

        let n = dp
            .on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(n.tx && n.rx, "{n:?}");
        assert_eq!(net.tx_used().len(), 1, "the TX chain is returned");
        let (_, reply) = net.rx_frame(HDR, &mut Vec::new()).expect("a reply frame");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.ethertype(), ::wire::ethertype::ARP, "ARP");
        let a = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(a.operation(), arp::REPLY, "reply opcode");
        assert_eq!(a.sender_protocol_addr(), GATEWAY, "sender is the gateway");
        assert_eq!(eth.dst_addr(), GUEST_MAC, "to the guest");
        assert!(peer.recv().is_none(), "nothing reaches the host");
        assert_eq!(dp.port.stats.local_replies, 1);
    }

    /// Once the guest has spoken IPv6, an unsolicited Router Advertisement rides in the reply
    /// slot a later frame leaves unused (the gateway has no timer of its own), then not again
    /// before the interval.
    #[test]
    fn unsolicited_router_advertisements_ride_on_unused_reply_slots() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut dp = DeviceCore::new(BridgeConfig {
            static_guest_ip: Some(GUEST_IP),
            ..config(Vec::new())
        })
        .unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 8);
        let udp = || testing::udp_frame(GUEST_MAC, GUEST_IP, 5000, testing::SERVER, 80, b"x");
        // An IPv4-only guest gets none.
        net.send_frame(HDR, &udp(), &[]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(net.rx_frame(HDR, &mut Vec::new()).is_none());
        // An echo from the guest's link-local address to fe80::1, then IPv4 again.
        let (ll, router) = ("fe80::2".parse().unwrap(), crate::defaults::IPV6_ROUTER);
        let echo = testing::icmpv6_frame(
            (GUEST_MAC, crate::defaults::GATEWAY_MAC),
            (ll, router),
            64,
            &[128, 0, 0, 0, 0, 1, 0, 1],
        );
        net.send_frame(HDR, &echo, &[]);
        net.send_frame(HDR, &udp(), &[]);
        net.send_frame(HDR, &udp(), &[]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let mut pending = Vec::new();
        let mut types = Vec::new();
        while let Some((_, f)) = net.rx_frame(HDR, &mut pending) {
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            let ip = ::wire::Ipv6Packet::new_checked(eth.payload()).unwrap();
            types.push(ip.payload()[0]);
        }
        assert_eq!(types, [129, 134], "the echo reply, then one advertisement");
        let later = nat::Instant::from_millis(crate::UNSOLICITED_RA_INTERVAL_MS);
        net.send_frame(HDR, &udp(), &[]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, later)
            .unwrap();
        assert!(net.rx_frame(HDR, &mut pending).is_some(), "the next one");
        assert_eq!(dp.port.stats.local_replies, 3);
    }

    /// A full TX ring is more than one kick's budget: the first call takes
    /// [`TX_BATCH_BUDGET`] batches and says `tx_more`, later calls finish the ring; nothing is
    /// lost or taken twice.
    #[test]
    fn a_full_tx_ring_is_served_over_several_calls_within_the_budget() {
        const SIZE: u16 = 1024;
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, SIZE);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut dp = DeviceCore::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        // Frames of an ethertype nobody serves: counted drops, one per chain.
        let mut frame = testing::arp_request(GUEST_MAC, GUEST_IP, GATEWAY);
        frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
        for _ in 0..SIZE {
            net.send_frame(HDR, &frame, &[]);
        }
        let n = dp
            .on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(n.tx_more && n.more(), "{n:?}");
        assert!(!n.rx_more, "{n:?}");
        assert_eq!(net.tx_used().len(), TX_BATCH_BUDGET * BATCH, "one budget");
        let mut calls = 1;
        let mut taken = TX_BATCH_BUDGET * BATCH;
        loop {
            let n = dp
                .on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
                .unwrap();
            calls += 1;
            let used = net.tx_used().len();
            assert!(used <= TX_BATCH_BUDGET * BATCH, "{used} chains in one call");
            taken += used;
            if !n.tx_more {
                break;
            }
            assert!(calls < 10, "the ring never drains");
        }
        assert_eq!(taken, usize::from(SIZE), "every chain once");
        assert_eq!(
            dp.stats().drops_of(crate::DropCause::EtherType),
            u64::from(SIZE)
        );
        // Drained: a kick with nothing to do finishes at once.
        let n = dp
            .on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(!n.more(), "{n:?}");
    }

    /// Host packets beyond the delivery budget stay for the next call, which needs no new
    /// readiness event.
    #[test]
    fn a_host_flood_is_delivered_over_several_calls_within_the_budget() {
        const SIZE: u16 = 1024;
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, SIZE);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(usize::from(SIZE)).unwrap();
        let mut dp = DeviceCore::new(config(vec![dns_forward()])).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, usize::from(SIZE));
        let total = RX_PASS_BUDGET * BATCH + 100;
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for i in 0..total {
            let p = testing::udp_packet(client, 4000, EXTERNAL, 5353, &[i as u8; 8]);
            assert!(peer.send(&p));
        }
        let n = dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW).unwrap();
        assert!(n.rx && n.rx_more, "{n:?}");
        let first = dp.stats().rx_frames;
        assert!(
            first <= (RX_PASS_BUDGET * RX_ROUNDS * BATCH) as u64 && first < total as u64,
            "{first} frames in one call"
        );
        let n = dp.on_rx_ready(&mem, &mut rxq, &host, false, NOW).unwrap();
        assert!(!n.rx_more, "{n:?}");
        assert_eq!(
            dp.stats().rx_frames,
            total as u64,
            "the rest, no readiness needed"
        );
        assert_eq!(peer.pending(), 0);
        let mut pending = Vec::new();
        for i in 0..total {
            let (_, f) = net
                .rx_frame(HDR, &mut pending)
                .unwrap_or_else(|| panic!("frame {i}"));
            let ip =
                Ipv4Packet::new_checked(EthernetFrame::new_checked(&f[..]).unwrap().into_payload())
                    .unwrap();
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(udp.payload(), [i as u8; 8], "in order");
        }
    }

    #[test]
    fn without_an_rx_queue_replies_wait_for_it() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut dp = DeviceCore::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        net.send_frame(
            HDR,
            &testing::arp_request(GUEST_MAC, GUEST_IP, GATEWAY),
            &[],
        );
        let n = dp.on_tx_kick(&mem, &mut txq, None, &host, NOW).unwrap();
        assert!(!n.rx);
        post_rx(&mut net, 1);
        assert!(
            dp.on_rx_ready(&mem, &mut rxq, &host, false, NOW)
                .unwrap()
                .rx
        );
        assert!(net.rx_frame(HDR, &mut Vec::new()).is_some());
    }

    /// The TUN is registered edge-triggered: packets left in it while the guest had no RX
    /// buffers must be read on the next RX kick, without a new readiness event.
    #[test]
    fn port_forwarded_packets_wait_for_rx_buffers_and_are_all_delivered() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(256).unwrap();
        let forward = dns_forward();
        let mut dp = DeviceCore::new(config(vec![forward])).unwrap();
        dp.ack_features(FEATURES, &host);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let total = BATCH + 6;
        for i in 0..total {
            let p = testing::udp_packet(client, 4000, EXTERNAL, 5353, &[i as u8; 8]);
            assert!(peer.send(&p));
        }
        // Readable, but no RX buffers: nothing delivered, nothing lost.
        assert!(!dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW).unwrap().rx);
        assert!(net.rx_used().is_empty());
        // The guest adds buffers and kicks; no new readiness from the TUN.
        post_rx(&mut net, total);
        assert!(
            dp.on_rx_ready(&mem, &mut rxq, &host, false, NOW)
                .unwrap()
                .rx
        );
        let mut pending = Vec::new();
        for i in 0..total {
            let (_, f) = net
                .rx_frame(HDR, &mut pending)
                .unwrap_or_else(|| panic!("frame {i}"));
            let eth = EthernetFrame::new_checked(&f[..]).unwrap();
            assert_eq!(eth.dst_addr(), GUEST_MAC);
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert_eq!(ip.src_addr(), client, "the guest sees the real client");
            assert_eq!(ip.dst_addr(), GUEST_IP, "DNAT to the guest");
            let udp = UdpPacket::new_checked(ip.payload()).unwrap();
            assert_eq!(udp.dst_port(), 53, "guest port");
            assert_eq!(udp.payload(), [i as u8; 8], "in order");
        }
        assert!(net.rx_frame(HDR, &mut pending).is_none());
        assert_eq!(dp.port.stats.rx_frames, total as u64);
        assert_eq!(peer.pending(), 0);
    }

    #[test]
    fn config_space_and_features() {
        let dp = DeviceCore::new(config(Vec::new())).unwrap();
        let f = dp.device_features();
        for bit in [32, 15, 29, 5, 3, 16] {
            assert_ne!(f & (1 << bit), 0, "bit {bit}");
        }
        let mut mtu = [0u8; 2];
        dp.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 1500);
        let mut mac = [0u8; 6];
        dp.read_config(0, &mut mac);
        assert_eq!(mac, GUEST_MAC.0);
    }

    #[test]
    fn offloads_are_offered_only_with_offload() {
        let plain = DeviceCore::new(config(Vec::new())).unwrap();
        assert_eq!(plain.device_features() & OFFLOAD_FEATURES, 0);
        assert_eq!(offloads_of(plain.negotiated().offloads), [false; 7]);
        let dp = DeviceCore::new(offload_config()).unwrap();
        assert_eq!(dp.device_features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(
            dp.device_features() & !OFFLOAD_FEATURES,
            plain.device_features()
        );
        // Before negotiation nothing is offloaded, but the link's header is already expected.
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [false, false, false, false, false, false, true]
        );
    }

    #[test]
    fn a_driver_that_takes_every_offload_gets_them_and_the_link_is_told() {
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        let acked = dp.ack_features(u64::MAX, &host);
        assert_eq!(acked & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(offloads_of(dp.negotiated().offloads), [true; 7]);
        assert_eq!(
            host.offloads(),
            link(true, true, true),
            "GUEST_CSUM, GUEST_TSO4 and GUEST_TSO6"
        );
        assert!(
            dp.port.replies.buf_size() >= crate::ETH_HLEN + crate::MAX_IP_PACKET,
            "hairpinned super-frames fit the reply batch"
        );
        // Renegotiation without offloads (a driver reset) turns them off again.
        let acked = dp.ack_features(FEATURES, &host);
        assert_eq!(acked & OFFLOAD_FEATURES, 0);
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [false, false, false, false, false, false, true]
        );
        assert_eq!(host.offloads(), LinkOffloads::NONE);
    }

    #[test]
    fn a_driver_without_tso_gets_checksum_offloads_only() {
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        let csum = FEATURES | 1 << crate::VIRTIO_NET_F_CSUM | 1 << crate::VIRTIO_NET_F_GUEST_CSUM;
        // TSO bits without their checksum bits are not negotiated.
        let acked = dp.ack_features(
            FEATURES
                | 1 << crate::VIRTIO_NET_F_HOST_TSO4
                | 1 << crate::VIRTIO_NET_F_GUEST_TSO4
                | 1 << crate::VIRTIO_NET_F_HOST_TSO6
                | 1 << crate::VIRTIO_NET_F_GUEST_TSO6,
            &host,
        );
        assert_eq!(acked & OFFLOAD_FEATURES, 0);
        assert_eq!(dp.ack_features(csum, &host), csum);
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [true, false, false, true, false, false, true]
        );
        assert_eq!(host.offloads(), link(true, false, false));
    }

    #[test]
    fn a_driver_with_tso4_only_gets_no_tso6() {
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        let tso4 = FEATURES
            | 1 << crate::VIRTIO_NET_F_CSUM
            | 1 << crate::VIRTIO_NET_F_GUEST_CSUM
            | 1 << crate::VIRTIO_NET_F_HOST_TSO4
            | 1 << crate::VIRTIO_NET_F_GUEST_TSO4;
        assert_eq!(dp.ack_features(tso4, &host), tso4);
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [true, true, false, true, true, false, true]
        );
        assert_eq!(host.offloads(), link(true, true, false), "no TUN_F_TSO6");
    }

    #[test]
    fn a_link_that_refuses_tso_leaves_checksum_offloads() {
        let (inner, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let host = NoTsoLink(inner, true);
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [true, true, true, true, false, false, true],
            "the guest still sends super-frames; it gets none"
        );
        assert_eq!(host.0.offloads(), link(true, false, false));
    }

    #[test]
    fn a_link_that_refuses_tso6_leaves_tso4() {
        let (inner, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let host = NoTsoLink(inner, false);
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        assert_eq!(
            offloads_of(dp.negotiated().offloads),
            [true, true, true, true, true, false, true],
            "the guest still sends TCPv6 super-frames; it gets TCPv4 ones only"
        );
        assert_eq!(host.0.offloads(), link(true, true, false));
    }

    #[test]
    fn offloads_over_a_link_without_headers_are_turned_off() {
        let (host, _peer) = MemoryLink::pair(4).unwrap();
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        assert_eq!(offloads_of(dp.negotiated().offloads), [false; 7]);
        assert_eq!(host.offloads(), LinkOffloads::NONE);
    }

    /// An IPv4 TCP packet with `payload` bytes whose checksum field holds the pseudo-header sum
    /// only (a partial checksum, as the host kernel hands GSO packets over).
    fn partial_tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: usize) -> Vec<u8> {
        let segment = ::wire::tcp::HEADER_LEN + payload;
        let total = ::wire::ipv4::HEADER_LEN + segment;
        let mut p = vec![0u8; total];
        let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
        ip.set_version(4);
        ip.set_header_len(::wire::ipv4::HEADER_LEN);
        ip.set_total_len(u16::try_from(total).unwrap());
        ip.set_dont_frag(true);
        ip.set_ttl(64);
        ip.set_protocol(ip_proto::TCP);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        ip.fill_checksum();
        let mut tcp = TcpPacket::new_unchecked(ip.payload_mut());
        tcp.set_src_port(sp);
        tcp.set_dst_port(dp);
        tcp.set_header_len(::wire::tcp::HEADER_LEN);
        tcp.set_flags(::wire::tcp::ACK);
        for (i, b) in tcp.payload_mut().iter_mut().enumerate() {
            *b = i as u8;
        }
        let len = u16::try_from(segment).unwrap();
        tcp.set_checksum(inet::fold(inet::pseudo_header_v4(
            src,
            dst,
            ip_proto::TCP,
            len,
        )));
        p
    }

    /// Runs the core's RX event until it leaves no work (at most 8 times).
    fn rx_until_done(
        dp: &mut DeviceCore,
        mem: &vm_memory::GuestMemoryMmap,
        rxq: &mut virtio_queue::Queue,
        host: &MemoryLink,
    ) {
        for _ in 0..8 {
            if !dp.on_rx_ready(mem, rxq, host, true, NOW).unwrap().rx_more {
                break;
            }
        }
    }

    /// Every packet waiting at this end of a link.
    fn drain(link: &MemoryLink) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| link.recv()).collect()
    }

    /// IPv4 TCP packet `ip` (its checksum partial) as a TUN device hands it over: behind a
    /// virtio-net header asking for the checksum, and for segmentation (MSS 1448) if `gso`.
    fn from_tun(ip: &[u8], gso: bool) -> Vec<u8> {
        let hdr = crate::VirtioNetHdr {
            flags: crate::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if gso {
                crate::VIRTIO_NET_HDR_GSO_TCPV4
            } else {
                crate::VIRTIO_NET_HDR_GSO_NONE
            },
            hdr_len: if gso { 40 } else { 0 },
            gso_size: if gso { 1448 } else { 0 },
            csum_start: 20,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(ip);
        bytes
    }

    /// A config with offloads that forwards TCP port 8080 of the external address to the
    /// guest's port 80.
    fn forwarding_config() -> BridgeConfig {
        let forward = PortForward {
            protocol: Protocol::Tcp,
            external_port: 8080,
            internal: SocketAddrV4::new(GUEST_IP, 80),
        };
        BridgeConfig {
            offloads: true,
            ..config(vec![forward])
        }
    }

    /// A core with offloads (every feature taken, through `host`) that forwards TCP port
    /// 8080 of its external address to the guest's port 80.
    fn forwarding_core(host: &MemoryLink) -> DeviceCore {
        let mut dp = DeviceCore::new(forwarding_config()).unwrap();
        dp.ack_features(u64::MAX, host);
        dp
    }

    /// A GRO'd super-packet from the TUN reaches a guest that took GUEST_TSO4 as one GSO frame.
    #[test]
    fn a_gso_packet_from_the_host_reaches_a_guest_that_takes_them() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let mut dp = forwarding_core(&host);
        for _ in 0..32 {
            net.post_rx(&[4096]);
        }
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let ip = partial_tcp(client, 40000, EXTERNAL, 8080, 30_000);
        assert!(peer.send(&from_tun(&ip, true)));
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW).unwrap().rx);
        let (g, frame) = net.rx_frame(HDR, &mut Vec::new()).expect("a frame");
        assert_eq!(
            (g.gso_type, g.gso_size, g.csum_start, g.csum_offset),
            (crate::VIRTIO_NET_HDR_GSO_TCPV4, 1448, 34, 16),
            "the GSO header, offsets relative to the Ethernet frame"
        );
        assert_eq!(
            frame.len(),
            ::wire::ethernet::HEADER_LEN + ip.len(),
            "one frame, not segmented"
        );
        let got = Ipv4Packet::new_checked(
            EthernetFrame::new_checked(&frame[..])
                .unwrap()
                .into_payload(),
        )
        .unwrap();
        assert_eq!(got.dst_addr(), GUEST_IP, "DNAT to the guest");
        let sent = Ipv4Packet::new_checked(&ip[..]).unwrap();
        assert_eq!(
            TcpPacket::new_checked(got.payload()).unwrap().payload(),
            TcpPacket::new_checked(sent.payload()).unwrap().payload(),
            "payload untouched"
        );
        assert_eq!(dp.port.stats.rx_gso, 1);
        assert_eq!(dp.port.stats.total_drops(), 0);
    }

    /// Counts the reads of the link it wraps.
    struct CountingLink(MemoryLink, AtomicUsize);

    impl HostLink for CountingLink {
        fn send_batch(&self, packets: &[&[u8]]) -> std::io::Result<usize> {
            self.0.send_batch(packets)
        }
        fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> std::io::Result<usize> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.recv_batch(bufs, lens)
        }
        fn readiness_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
            self.0.readiness_fd()
        }
    }

    /// Reads of the link for `packets` forwarded packets on one readiness event.
    fn reads_for(short_batch_drains: bool, packets: usize) -> (usize, usize) {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (inner, peer) = MemoryLink::pair(256).unwrap();
        let host = CountingLink(inner, AtomicUsize::new(0));
        let forward = dns_forward();
        let mut dp = DeviceCore::new(config(vec![forward]))
            .unwrap()
            .with_short_batch_drains(short_batch_drains);
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 256);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for i in 0..packets {
            let p = testing::udp_packet(client, 4000, EXTERNAL, 5353, &[i as u8; 8]);
            assert!(peer.send(&p));
        }
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW).unwrap().rx);
        assert_eq!(dp.port.stats.rx_frames, packets as u64);
        assert_eq!(peer.pending(), 0);
        (
            host.1.load(Ordering::Relaxed),
            dp.port.stats.rx_frames as usize,
        )
    }

    #[test]
    fn a_short_batch_drains_the_link_only_when_asked() {
        assert_eq!(
            reads_for(false, 3),
            (2, 3),
            "reads until a read returns nothing"
        );
        assert_eq!(reads_for(true, 3), (1, 3), "the short batch said drained");
        // A full batch is not short: read on.
        assert_eq!(reads_for(true, BATCH), (2, BATCH));
        assert_eq!(reads_for(true, BATCH + 1), (2, BATCH + 1));
    }

    #[test]
    fn a_flow_arms_the_timeout_and_a_reset_forgets_it() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(16).unwrap();
        let forward = dns_forward();
        let mut dp = DeviceCore::new(config(vec![forward])).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 4);
        let p = testing::udp_packet(Ipv4Addr::new(198, 18, 0, 2), 4000, EXTERNAL, 5353, b"q");
        assert!(peer.send(&p));
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true, NOW).unwrap().rx);
        assert_eq!(dp.nat().len(), 1);
        assert!(dp.next_timeout(NOW).is_some(), "a flow has a deadline");
        dp.on_tick(NOW);
        assert_eq!(dp.nat().len(), 1, "not expired yet");
        assert_eq!(dp.bridge_stats().nat_flows, 1);
        assert_eq!(dp.bridge_stats().bridge.rx_frames, 1);
        dp.reset();
        assert_eq!(dp.nat().len(), 0);
        assert_eq!(dp.stats().rx_frames, 0);
    }

    #[test]
    fn a_bad_forward_is_refused() {
        let f = PortForward {
            protocol: Protocol::Tcp,
            external_port: 80,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
        };
        assert!(DeviceCore::new(config(vec![f])).is_err());
        let f6 = crate::PortForward6 {
            protocol: Protocol::Tcp,
            external_port: 80,
            guest_port: 80,
            guest: None,
        };
        let with6 = |ipv6, forwards6| BridgeConfig {
            ipv6,
            forwards6,
            ..config(Vec::new())
        };
        assert!(DeviceCore::new(with6(None, vec![f6])).is_err(), "no IPv6");
        let on = Some(crate::Ipv6Config::default());
        assert!(DeviceCore::new(with6(on, vec![f6, f6])).is_err());
        assert!(DeviceCore::new(with6(on, vec![f6])).is_ok());
        // Naming a guest: the device's own, else refused (another pool address, or none).
        let named = |a: [u8; 4]| crate::PortForward6 {
            guest: Some(Ipv4Addr::from(a)),
            ..f6
        };
        let own = *config(Vec::new()).dhcp_pool.start();
        assert!(DeviceCore::new(with6(on, vec![named(own.octets())])).is_ok());
        let other = Ipv4Addr::from(u32::from(own) + 1);
        assert!(DeviceCore::new(with6(on, vec![named(other.octets())])).is_err());
        assert!(DeviceCore::new(with6(on, vec![named([10, 9, 9, 9])])).is_err());
    }

    /// A guest TCP super-frame asking for 1-byte segments (~65 000 packets on the host) is a
    /// counted drop and never reaches the host link; the same frame with a sane segment size
    /// goes through with the exact header length.
    #[test]
    fn a_super_frame_with_tiny_segments_never_reaches_the_host() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (mut dp, host, peer) = offload_core(true);
        let ip = partial_tcp(
            GUEST_IP,
            40000,
            testing::SERVER,
            80,
            crate::MAX_IP_PACKET - 40,
        );
        let frame = eth_to_gateway(&ip);
        let send = |net: &mut MockNet<'_>, gso_size: u16| {
            let hdr = crate::VirtioNetHdr {
                hdr_len: 1000,
                gso_size,
                ..tso4_hdr()
            };
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(&frame);
            let a = net.alloc(bytes.len());
            vm_memory::Bytes::write_slice(&mem, &bytes, vm_memory::GuestAddress(a)).unwrap();
            net.post_tx(&[(a, HDR as u32, 0), (a + HDR as u64, frame.len() as u32, 0)]);
        };
        send(&mut net, 1);
        send(&mut net, crate::MIN_GSO_SIZE - 1);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert_eq!(net.tx_used().len(), 2, "both chains are returned");
        assert!(peer.recv().is_none(), "nothing reaches the host");
        assert_eq!(dp.stats().drops_of(crate::DropCause::GsoInvalid), 2);
        assert_eq!((dp.stats().to_host, dp.stats().tx_gso), (0, 0));

        send(&mut net, 1448);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let out = peer.recv().expect("the sane super-frame");
        let h = crate::VirtioNetHdr::parse(&out).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len),
            (crate::VIRTIO_NET_HDR_GSO_TCPV4, 1448, 40),
            "hdr_len made exact, relative to the IP packet"
        );
        assert_eq!(out.len() - HDR, ip.len(), "one packet, whole");
        assert_eq!((dp.stats().to_host, dp.stats().tx_gso), (1, 1));
        assert_eq!(dp.stats().total_drops(), 2);
    }

    /// A core with offloads whose guest is `GUEST_IP` without a lease, on a link with
    /// virtio-net headers that gathers or not; the link and its other end.
    fn offload_core(gather: bool) -> (DeviceCore, MemoryLink, MemoryLink) {
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let host = host.with_gather(gather);
        let mut dp = DeviceCore::new(BridgeConfig {
            static_guest_ip: Some(GUEST_IP),
            ..offload_config()
        })
        .unwrap();
        dp.ack_features(u64::MAX, &host);
        (dp, host, peer)
    }

    /// A TCPv4 super-frame's virtio-net header: MSS 1448, the partial checksum in place.
    fn tso4_hdr() -> crate::VirtioNetHdr {
        crate::VirtioNetHdr {
            flags: crate::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: crate::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 0,
        }
    }

    /// The guest's Ethernet frame to the gateway's MAC around IPv4 packet `ip`.
    fn eth_to_gateway(ip: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; ETH_HLEN];
        let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
        eth.set_dst_addr(testing::GATEWAY_MAC);
        eth.set_src_addr(GUEST_MAC);
        eth.set_ethertype(::wire::ethertype::IPV4);
        frame.extend_from_slice(ip);
        frame
    }

    /// What the host link gets from a batch of [small UDP, 64 KiB TCP super-frame in 8
    /// pieces, a 60 KiB one in 41 pieces, small UDP] through a core whose link gathers
    /// (`gather`) or not, and the core's counters.
    fn gathered_or_copied(gather: bool) -> (Vec<Vec<u8>>, Stats, usize) {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (mut dp, host, peer) = offload_core(gather);
        let frame_of = |payload: usize| {
            eth_to_gateway(&partial_tcp(GUEST_IP, 40000, testing::SERVER, 80, payload))
        };
        let hdr = tso4_hdr();
        let send = |net: &mut MockNet<'_>, frame: &[u8], pieces: &[usize]| {
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(frame);
            let a = net.alloc(bytes.len());
            vm_memory::Bytes::write_slice(&mem, &bytes, vm_memory::GuestAddress(a)).unwrap();
            let mut descs = vec![(a, HDR as u32, 0)];
            let mut at = HDR;
            for &n in pieces {
                let n = n.min(bytes.len() - at);
                descs.push((a + at as u64, n as u32, 0));
                at += n;
            }
            descs.push((a + at as u64, (bytes.len() - at) as u32, 0));
            net.post_tx(&descs);
        };
        let small =
            |n: u8| testing::udp_frame(GUEST_MAC, GUEST_IP, 5000, testing::SERVER, 53, &[n; 40]);
        let plain = |net: &mut MockNet<'_>, frame: &[u8]| net.send_frame(HDR, frame, &[]);
        plain(&mut net, &small(1));
        // The head ends inside the third piece.
        send(
            &mut net,
            &frame_of(65_000),
            &[100, 1000, 3000, 9000, 9000, 9000, 9000],
        );
        send(&mut net, &frame_of(60_000), &[1500; 40]);
        plain(&mut net, &small(2));
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let used = net.tx_used().len();
        let mut got = Vec::new();
        while let Some(p) = peer.recv() {
            got.push(p);
        }
        (got, dp.stats().clone(), used)
    }

    /// A large TCP frame to beyond the guest's network leaves through a gathering link from
    /// its copied head and guest memory (its payload never copied by the bridge), in its
    /// place among the batch's other packets, byte for byte the packet the copy makes; a
    /// frame of more pieces than a gather takes is copied; every chain goes back.
    #[test]
    fn a_large_tcp_frame_is_gathered_from_guest_memory_in_order_and_equals_the_copy() {
        let (copied, cs, cu) = gathered_or_copied(false);
        let (gathered, gs, gu) = gathered_or_copied(true);
        assert_eq!((cu, gu), (4, 4), "every chain returned");
        assert_eq!(copied.len(), 4);
        assert_eq!(gathered.len(), 4);
        let lens: Vec<usize> = gathered.iter().map(Vec::len).collect();
        assert!(
            lens[0] < 100 && lens[3] < 100,
            "small ones first and last: {lens:?}"
        );
        assert_eq!(
            lens[1],
            HDR + ::wire::ipv4::HEADER_LEN + ::wire::tcp::HEADER_LEN + 65_000
        );
        for (i, (g, c)) in gathered.iter().zip(&copied).enumerate() {
            assert!(g == c, "packet {i} differs from the copied one");
        }
        assert_eq!(
            (cs.tx_gathered, gs.tx_gathered),
            (0, 1),
            "only the 8-piece frame"
        );
        assert_eq!((cs.to_host, gs.to_host), (4, 4));
        assert_eq!((cs.total_drops(), gs.total_drops()), (0, 0));
    }

    /// A chain that would go head-only but whose tail lies outside guest memory, or has a
    /// descriptor the driver wrote-protected the wrong way, is a counted drop and goes back
    /// to the used ring like any bad chain; a good one after them is gathered.
    #[test]
    fn a_head_only_chain_with_a_bad_tail_is_a_counted_drop_and_goes_back() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (mut dp, host, peer) = offload_core(true);
        let ip = partial_tcp(GUEST_IP, 40000, testing::SERVER, 80, 20_000);
        let mut bytes = tso4_hdr().to_bytes().to_vec();
        bytes.extend_from_slice(&eth_to_gateway(&ip));
        let a = net.alloc(bytes.len());
        vm_memory::Bytes::write_slice(&mem, &bytes, vm_memory::GuestAddress(a)).unwrap();
        let head = (HDR + 4000) as u32;
        let rest = (bytes.len() - HDR - 4000) as u32;
        let far = 1 << 40;
        const WRITE: u16 = 2;
        net.post_tx(&[
            (a, HDR as u32, 0),
            (a + HDR as u64, 4000, 0),
            (far, rest, 0),
        ]);
        let tail = a + u64::from(head);
        net.post_tx(&[
            (a, HDR as u32, 0),
            (a + HDR as u64, 4000, 0),
            (tail, rest, WRITE),
        ]);
        net.post_tx(&[
            (a, HDR as u32, 0),
            (a + HDR as u64, 4000, 0),
            (tail, rest, 0),
        ]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert_eq!(net.tx_used().len(), 3, "every chain goes back");
        let s = dp.stats();
        assert_eq!(s.drops_of(crate::DropCause::ChainOutOfBounds), 1);
        assert_eq!(s.drops_of(crate::DropCause::ChainWrongDirection), 1);
        assert_eq!((s.to_host, s.tx_gathered, s.total_drops()), (1, 1, 2));
        let out = peer.recv().expect("the good one");
        assert_eq!(
            out.len(),
            bytes.len() - ETH_HLEN,
            "whole, with the link's header"
        );
        assert!(peer.recv().is_none());
    }

    /// A frame as the guest reads it: its virtio-net header and the Ethernet frame.
    type GuestFrame = (crate::VirtioNetHdr, Vec<u8>);

    /// What a core did with packets from the host link: the guest's frames, its RX used
    /// entries (id, length), what went back to the host link, the counters.
    type Delivered = (Vec<GuestFrame>, Vec<(u32, u32)>, Vec<Vec<u8>>, Stats);

    /// The guest's frames (header, frame), the RX used entries (id, length) and the core's
    /// counters after one RX pass over a batch from the host link of: TCP super-packets
    /// of 30 000 B (read whole: the first large one), 60 000 (scattered), a 1 400-byte
    /// segment (scattered too: after a large one), 20 000 (whole: after one no larger than
    /// 2 KiB), 40 000 (scattered), 30 000 to a port
    /// nobody forwards (scattered, refused by the NAT), 25 000 and 10 000 (read scattered,
    /// then made whole: their chains are not where the refused one left off) and a plain
    /// 12 000-byte one (over the MTU: answered from its copy made whole), through a core
    /// whose link reads into guest memory (`scatter`) or not; the guest's buffers are 4 KiB
    /// (MRG_RXBUF).
    fn scattered_or_copied(scatter: bool) -> Delivered {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let host = host.with_gather(scatter);
        let mut dp = forwarding_core(&host);
        for _ in 0..128 {
            net.post_rx(&[4096]);
        }
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let send = |payload: usize, port: u16, gso: bool| {
            let ip = partial_tcp(client, 40000, EXTERNAL, port, payload);
            assert!(peer.send(&from_tun(&ip, gso)));
        };
        send(30_000, 8080, true);
        send(60_000, 8080, true);
        send(1_400, 8080, false);
        send(20_000, 8080, true);
        send(40_000, 8080, true);
        send(30_000, 9999, true);
        send(25_000, 8080, true);
        send(10_000, 8080, true);
        send(12_000, 8080, false);
        rx_until_done(&mut dp, &mem, &mut rxq, &host);
        let used: Vec<(u32, u32)> = net.rx_used().iter().map(|u| (u.id, u.len)).collect();
        let mut pending: Vec<_> = used
            .iter()
            .map(|&(id, len)| testing::Used { id, len })
            .collect();
        let mut frames = Vec::new();
        while let Some(f) = net.rx_frame(HDR, &mut pending) {
            frames.push(f);
        }
        (frames, used, drain(&peer), dp.stats().clone())
    }

    /// A large TCP packet from the host link is read with its payload straight into the
    /// guest's RX buffers, and the guest gets byte for byte what the copying path gives it,
    /// in the same buffers, the same order; one whose buffers an earlier frame did not
    /// leave off at (a packet the NAT refused) is made whole and delivered all the same.
    #[test]
    fn a_large_tcp_packet_is_scattered_into_the_guests_buffers_and_equals_the_copy() {
        let (copied, cu, ca, cs) = scattered_or_copied(false);
        let (scattered, su, sa, ss) = scattered_or_copied(true);
        assert_eq!(copied.len(), 7, "all but the refused one");
        let lens: Vec<usize> = copied
            .iter()
            .map(|(_, f)| f.len() - ETH_HLEN - 40)
            .collect();
        assert_eq!(
            lens,
            [30_000, 60_000, 1_400, 20_000, 40_000, 25_000, 10_000]
        );
        assert_eq!(cu, su, "the same chains, the same lengths");
        for (i, (c, s)) in copied.iter().zip(&scattered).enumerate() {
            assert!(c == s, "frame {i} differs from the copied one");
        }
        assert_eq!(scattered.len(), copied.len());
        assert_eq!((cs.rx_scattered, ss.rx_scattered), (0, 3));
        assert_eq!((cs.rx_frames, ss.rx_frames), (7, 7));
        assert_eq!(cs.drops_of(crate::DropCause::NatInbound), 1);
        assert_eq!(ss.drops_of(crate::DropCause::NatInbound), 1);
        assert_eq!((cs.total_drops(), ss.total_drops()), (2, 2));
        assert_eq!((cs.too_big_answers, ss.too_big_answers), (1, 1));
        assert_eq!(ca.len(), 1, "the answer to the 12 000-byte packet");
        assert!(ca == sa, "the answer quotes the same bytes");
    }

    /// A guest that shrinks a buffer after a packet was scattered into the chains behind it
    /// makes the frame before that packet need one chain more: before it is written into the
    /// scattered packet's first chain, the scattered packet is made whole (its tail still
    /// intact), and both arrive byte for byte.
    #[test]
    fn a_frame_that_would_reach_a_scattered_frames_chains_makes_it_whole_first() {
        const WRITE: u16 = 2;
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let mut nat = network_nat(&mut forwarding_config()).unwrap();
        let mut rx = RxEngine::new(
            RxQueue::new(HDR, true),
            BATCH,
            MAX_IP_PACKET,
            1500,
            testing::GATEWAY_MAC,
        )
        .with_offloads(Offloads::negotiate(u64::MAX, HDR).unwrap());
        let bufs: Vec<u64> = (0..64)
            .map(|_| {
                let a = net.alloc(4096);
                net.post_rx_raw(&[(a, 4096, WRITE)]);
                a
            })
            .collect();
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let sent = [
            partial_tcp(client, 40000, EXTERNAL, 8080, 30_000),
            partial_tcp(client, 40000, EXTERNAL, 8080, 20_000),
        ];
        for ip in &sent {
            assert!(peer.send(&from_tun(ip, true)));
        }
        let io = Gathering {
            mem: &mem,
            link: &host,
        };
        let mut stats = Stats::default();
        // The first is read whole (8 chains), the second into chains 8.. behind it.
        let got = rx
            .receive_scattered(&host, &io, &mem, &rxq, &mut stats)
            .unwrap();
        assert_eq!((got, rx.scattered_pending()), (2, true));
        net.store_rx_desc(
            0,
            virtio_queue::desc::split::Descriptor::new(bufs[0], 100, WRITE, 0),
        );
        rx.translate_with(&mut nat, NOW, GUEST_MAC, Some(&io), &mut stats);
        let out = rx
            .deliver_with(&mem, &mut rxq, Some(&io), &mut stats)
            .unwrap();
        assert_eq!(out.delivered, 2);
        let mut pending = Vec::new();
        for ip in &sent {
            let (_, frame) = net.rx_frame(HDR, &mut pending).expect("a frame");
            let got = Ipv4Packet::new_checked(&frame[ETH_HLEN..]).unwrap();
            let want = Ipv4Packet::new_checked(&ip[..]).unwrap();
            assert_eq!(frame.len(), ETH_HLEN + ip.len());
            assert!(
                TcpPacket::new_checked(got.payload()).unwrap().payload()
                    == TcpPacket::new_checked(want.payload()).unwrap().payload(),
                "payload of the {}-byte packet differs",
                ip.len()
            );
        }
        assert_eq!((stats.rx_scattered, stats.total_drops()), (0, 0));
    }

    /// What the host link gets back when, after a TCPv6 super-packet, a plain 8 000-byte
    /// TCPv6 packet over the guest's MTU comes for the guest's NAT66 flow, through a core
    /// whose link reads into guest memory (`scatter`) or not; and the counters.
    fn ipv6_too_big_answer(scatter: bool) -> (Vec<Vec<u8>>, Stats) {
        use core::net::Ipv6Addr;
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let host = host.with_gather(scatter);
        let mut dp = DeviceCore::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        for _ in 0..64 {
            net.post_rx(&[4096]);
        }
        let guest: Ipv6Addr = "fd64::5054:ff:fe12:3456".parse().unwrap();
        let server: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let segment = |sport: u16, dport: u16, flags: u8, data: usize| {
            let mut t = vec![0u8; ::wire::tcp::HEADER_LEN + data];
            t[..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = flags;
            for (i, b) in t[::wire::tcp::HEADER_LEN..].iter_mut().enumerate() {
                *b = i as u8;
            }
            t
        };
        let macs = (GUEST_MAC, testing::GATEWAY_MAC);
        let syn = testing::ipv6_frame(macs, (guest, server), 6, 64, &segment(40000, 80, 2, 0));
        net.send_frame(HDR, &syn, &[]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let out = peer.recv().expect("the SYN");
        let port = u16::from_be_bytes([out[HDR + 40], out[HDR + 41]]);
        let ext6 = dp.nat().config().external_addr6;
        let from_server = |data: usize, gso: bool| {
            let tcp = segment(80, port, ::wire::tcp::ACK, data);
            let f = testing::ipv6_frame(macs, (server, ext6), 6, 64, &tcp);
            let hdr = crate::VirtioNetHdr {
                flags: crate::VIRTIO_NET_HDR_F_NEEDS_CSUM,
                gso_type: crate::VIRTIO_NET_HDR_GSO_TCPV6,
                hdr_len: 60,
                gso_size: 1440,
                csum_start: 40,
                csum_offset: 16,
                num_buffers: 0,
            };
            let hdr = if gso {
                hdr
            } else {
                crate::VirtioNetHdr::default()
            };
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.extend_from_slice(&f[ETH_HLEN..]);
            bytes
        };
        assert!(peer.send(&from_server(30_000, true)));
        assert!(peer.send(&from_server(8_000, false)));
        rx_until_done(&mut dp, &mem, &mut rxq, &host);
        (drain(&peer), dp.stats().clone())
    }

    /// A TCPv6 packet over the MTU read into guest memory is made whole before its Packet
    /// Too Big answer quotes it (1 232 bytes, far past the head): the answer is the copying
    /// path's, byte for byte.
    #[test]
    fn a_scattered_ipv6_packet_over_the_mtu_is_answered_from_its_whole_copy() {
        let (copied, cs) = ipv6_too_big_answer(false);
        let (scattered, ss) = ipv6_too_big_answer(true);
        assert_eq!(copied.len(), 1, "one answer");
        assert_eq!(
            copied[0].len(),
            HDR + 1280,
            "a full answer: 1 232 bytes quoted"
        );
        assert!(scattered == copied, "the answers differ");
        assert_eq!((cs.too_big_answers, ss.too_big_answers), (1, 1));
        assert_eq!(
            cs.rx_frames, ss.rx_frames,
            "the super-packet (and the gateway's RA)"
        );
        assert_eq!(
            (cs.rx_scattered, ss.rx_scattered),
            (0, 0),
            "the first is read whole"
        );
    }

    /// The egress policy lives in the config the core owns: a denied destination is a
    /// counted drop named in the stats line, answered through the RX queue with ICMP 3/13,
    /// and nothing reaches the host; an allowed one goes out.
    #[test]
    fn a_denied_destination_is_a_counted_drop_answered_through_the_rx_queue() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(64).unwrap();
        let mut cfg = BridgeConfig {
            static_guest_ip: Some(GUEST_IP),
            ..config(Vec::new())
        };
        cfg.egress
            .add("198.18.0.0/24".parse().unwrap(), crate::EgressAction::Deny)
            .unwrap();
        let mut dp = DeviceCore::new(cfg).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 4);
        let metadata = Ipv4Addr::new(169, 254, 169, 254);
        for dst in [testing::SERVER, metadata] {
            net.send_frame(
                HDR,
                &testing::udp_frame(GUEST_MAC, GUEST_IP, 5000, dst, 80, b"GET /"),
                &[],
            );
        }
        let allowed = Ipv4Addr::new(198, 18, 1, 10);
        net.send_frame(
            HDR,
            &testing::udp_frame(GUEST_MAC, GUEST_IP, 5000, allowed, 80, b"GET /"),
            &[],
        );
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let mut pending = Vec::new();
        for _ in 0..2 {
            let (_, reply) = net.rx_frame(HDR, &mut pending).expect("an ICMP error");
            let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, GUEST_IP));
            let icmp = ::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
            assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, 13));
            assert!(icmp.verify_checksum());
        }
        let out = peer.recv().expect("the allowed packet");
        assert_eq!(
            Ipv4Packet::new_checked(&out[..]).unwrap().dst_addr(),
            allowed
        );
        assert!(peer.recv().is_none(), "nothing denied reaches the host");
        assert_eq!(dp.stats().drops_of(crate::DropCause::EgressDenied), 2);
        assert_eq!(dp.stats().local_replies, 2);
        assert!(
            dp.bridge_stats().to_string().contains("EgressDenied=2"),
            "{}",
            dp.bridge_stats()
        );
    }

    /// A session the NAT refuses for want of room (here: the per-host cap of one flow) is
    /// answered with ICMP administratively prohibited quoting the guest's packet as sent
    /// (RFC 5508 REQ-8), and counted; the flow the guest has keeps working.
    #[test]
    fn a_session_the_nat_refuses_is_answered_with_admin_prohibited() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(64).unwrap();
        let mut cfg = BridgeConfig {
            static_guest_ip: Some(GUEST_IP),
            ..config(Vec::new())
        };
        cfg.nat.max_flows_per_host = 1;
        let mut dp = DeviceCore::new(cfg).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 4);
        let first = testing::udp_frame(GUEST_MAC, GUEST_IP, 5000, testing::SERVER, 80, b"a");
        let second = testing::udp_frame(GUEST_MAC, GUEST_IP, 5001, testing::SERVER, 80, b"b");
        for f in [&first, &second, &first] {
            net.send_frame(HDR, f, &[]);
        }
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let mut pending = Vec::new();
        let (_, reply) = net.rx_frame(HDR, &mut pending).expect("an ICMP error");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        assert_eq!(eth.dst_addr(), GUEST_MAC);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY, GUEST_IP));
        let icmp = ::wire::Icmpv4Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (3, 13));
        assert!(icmp.verify_checksum());
        // The quote is the refused packet's IPv4 header and UDP header, untranslated.
        assert_eq!(&icmp.payload()[..28], &second[14..14 + 28]);
        assert!(net.rx_frame(HDR, &mut pending).is_none(), "one answer");
        for _ in 0..2 {
            let out = peer.recv().expect("the first flow's packets");
            assert_eq!(
                Ipv4Packet::new_checked(&out[..]).unwrap().src_addr(),
                EXTERNAL
            );
        }
        assert!(
            peer.recv().is_none(),
            "the refused packet never reaches the host"
        );
        assert_eq!(dp.stats().drops_of(crate::DropCause::NatOutbound), 1);
        assert_eq!(dp.stats().local_replies, 1);
        assert!(
            dp.bridge_stats().to_string().contains("nat.HostLimit=1"),
            "{}",
            dp.bridge_stats()
        );
    }

    #[test]
    fn forwards_are_added_and_removed_at_runtime_and_kept_across_a_reset() {
        let mut core = DeviceCore::new(config(Vec::new())).unwrap();
        let tcp: crate::ForwardSpec = "tcp:8080:80".parse().unwrap();
        core.add_forward(tcp).unwrap();
        assert!(
            matches!(core.add_forward(tcp), Err(Error::Config(_))),
            "the same port twice"
        );
        // The same port for UDP and for IPv6 is another rule.
        core.add_forward("udp:8080:80".parse().unwrap()).unwrap();
        core.add_forward("tcp6:8080:80".parse().unwrap()).unwrap();
        assert_eq!(
            core.config().forwards,
            [
                tcp.to_port_forward(*core.config().dhcp_pool.start()),
                PortForward {
                    protocol: Protocol::Udp,
                    external_port: 8080,
                    internal: SocketAddrV4::new(Ipv4Addr::new(192, 168, 64, 2), 80),
                }
            ]
        );
        assert_eq!(core.config().forwards6.len(), 1);
        // A reset keeps them (the NAT is rebuilt from the configuration).
        core.reset();
        assert!(matches!(core.add_forward(tcp), Err(Error::Config(_))));
        assert!(core.remove_forward(Protocol::Tcp, 8080, false));
        assert!(!core.remove_forward(Protocol::Tcp, 8080, false));
        assert!(core.remove_forward(Protocol::Tcp, 8080, true));
        assert!(!core.remove_forward(Protocol::Tcp, 8080, true));
        core.add_forward(tcp).unwrap();
        let mut no_v6 = DeviceCore::new(BridgeConfig {
            ipv6: None,
            ..config(Vec::new())
        })
        .unwrap();
        assert!(matches!(
            no_v6.add_forward("tcp6:1:2".parse().unwrap()),
            Err(Error::Config(_))
        ));
    }

    /// The IPv6 twin: a session NAT66 refuses for want of room (the per-host cap of one flow)
    /// is answered with ICMPv6 destination unreachable, code 1 (administratively prohibited),
    /// from the gateway's `fd64::1`, quoting the guest's packet as sent; counted.
    #[test]
    fn a_session_nat66_refuses_is_answered_with_icmpv6_admin_prohibited() {
        use core::net::Ipv6Addr;
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair(64).unwrap();
        let mut cfg = config(Vec::new());
        cfg.nat.max_flows_per_host = 1;
        let gw6 = cfg.ipv6.as_ref().unwrap().gateway;
        let mut dp = DeviceCore::new(cfg).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 4);
        let guest: Ipv6Addr = "fd64::5054:ff:fe12:3456".parse().unwrap();
        let server: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let macs = (GUEST_MAC, testing::GATEWAY_MAC);
        let first = testing::udp6_frame(macs, (guest, 5000), (server, 80), b"a");
        let second = testing::udp6_frame(macs, (guest, 5001), (server, 80), b"b");
        for f in [&first, &second, &first] {
            net.send_frame(HDR, f, &[]);
        }
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        let mut pending = Vec::new();
        // The gateway's first unsolicited Router Advertisement (to all-nodes) rides along.
        let mut unicast = Vec::new();
        while let Some((_, f)) = net.rx_frame(HDR, &mut pending) {
            if EthernetFrame::new_checked(&f[..]).unwrap().dst_addr() == GUEST_MAC {
                unicast.push(f);
            }
        }
        assert_eq!(unicast.len(), 1, "one answer");
        let eth = EthernetFrame::new_checked(&unicast[0][..]).unwrap();
        let ip = ::wire::Ipv6Packet::new_checked(eth.payload()).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (gw6, guest));
        let icmp = ::wire::Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.msg_code()), (1, 1));
        assert!(icmp.verify_checksum(gw6, guest));
        assert_eq!(icmp.payload(), &second[14..], "the refused packet, whole");
        for _ in 0..2 {
            let out = peer.recv().expect("the first flow's packets");
            assert_eq!(
                ::wire::Ipv6Packet::new_checked(&out[..])
                    .unwrap()
                    .src_addr(),
                dp.nat().config().external_addr6
            );
        }
        assert!(
            peer.recv().is_none(),
            "the refused packet never reaches the host"
        );
        assert_eq!(dp.stats().drops_of(crate::DropCause::NatOutbound), 1);
        assert_eq!(
            dp.stats().local_replies,
            2,
            "the answer and the advertisement"
        );
        assert!(
            dp.bridge_stats().to_string().contains("nat.HostLimit=1"),
            "{}",
            dp.bridge_stats()
        );
    }

    /// An idle guest keeps its IPv6 default route: the tick queues the gateway's unsolicited
    /// Router Advertisement when it is due (RFC 4861 6.2.4), with no frame from the guest,
    /// and the next delivery hands it over; not before it is due, not to a guest that never
    /// used IPv6.
    #[test]
    fn the_tick_sends_an_idle_guest_its_router_advertisements() {
        use core::net::Ipv6Addr;
        let ra_count = |net: &mut MockNet| {
            let mut pending = Vec::new();
            let mut n = 0;
            while let Some((_, f)) = net.rx_frame(HDR, &mut pending) {
                let eth = EthernetFrame::new_checked(&f[..]).unwrap();
                let ip = ::wire::Ipv6Packet::new_checked(eth.payload()).unwrap();
                let icmp = ::wire::Icmpv6Packet::new_checked(ip.payload()).unwrap();
                n += usize::from(icmp.msg_type() == ::wire::icmpv6::ROUTER_ADVERTISEMENT);
            }
            n
        };
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut dp = DeviceCore::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 8);
        // No IPv6 from the guest yet: nothing, however late.
        let late = nat::Instant::from_millis(10 * crate::UNSOLICITED_RA_INTERVAL_MS);
        dp.on_tick(late);
        assert!(!dp.replies_pending());
        let guest: Ipv6Addr = "fd64::5054:ff:fe12:3456".parse().unwrap();
        let server: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let f = testing::udp6_frame(
            (GUEST_MAC, testing::GATEWAY_MAC),
            (guest, 5000),
            (server, 80),
            b"a",
        );
        net.send_frame(HDR, &f, &[]);
        dp.on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert_eq!(ra_count(&mut net), 1, "the first advertisement rides along");
        // Idle: not due yet, then due.
        let before = nat::Instant::from_millis(crate::UNSOLICITED_RA_INTERVAL_MS - 1);
        dp.on_tick(before);
        assert!(!dp.replies_pending());
        let due = nat::Instant::from_millis(crate::UNSOLICITED_RA_INTERVAL_MS);
        dp.on_tick(due);
        assert!(dp.replies_pending(), "queued by the tick alone");
        dp.on_rx_ready(&mem, &mut rxq, &host, false, due).unwrap();
        assert!(!dp.replies_pending());
        assert_eq!(ra_count(&mut net), 1, "delivered");
        dp.on_tick(due);
        assert!(!dp.replies_pending(), "one per interval");
    }
}
