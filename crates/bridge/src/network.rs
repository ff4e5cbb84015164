//! [`Network`]: several guests on one network (issue 14's "network with ports"): one NAT, one
//! host link, one DNS relay, the [`Switch`], and a port per guest ([`PortId`]), each a virtio-net
//! device with its own MAC, lease, gateway state and queues.
//!
//! One owner drives it (a single-threaded event loop: `hostnet-lab attach` with several guest
//! namespaces): every event names its port. What a port's guest sends to another guest is
//! switched on the sender's event straight into the other port's inbox (no NAT, no host
//! link); what the host link brings goes through the NAT on whichever port's event reads it
//! ([`Network::host_reader`] says which port to ask first) and is moved to its owner's inbox
//! when it is for another guest. A driver delivers inboxes with [`Network::on_rx_ready`] for
//! each port [`Network::pending`] names.
//!
//! Addresses: a port's IPv4 address is fixed when it is attached (DHCP hands out exactly that
//! one): the first free address of the pool, and the same again for a MAC seen before
//! ([`Network::attach`]), so the switch knows every guest's address before its first frame.
//! IPv6 addresses are learned from each guest's own traffic (after the gateway's anti-spoofing
//! checks): a guest reaches another's IPv6 address once that guest has used it (to the
//! gateway, the outside or another guest); Neighbor Solicitations for it are answered with
//! its MAC, and an address one port holds is refused as another's source.
//!
//! Queue pairs (virtio-net MQ): a port has pair 0 and, after [`Network::set_queue_pairs`] (the
//! driver's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, see [`crate::ControlQueue`]), more; an event
//! names its pair with [`Network::on_pair_tx_kick`] and [`Network::on_pair_rx_ready`]
//! (pair i's virtqueues, and pair i's queue of a multi-queue host link or the one link all
//! pairs read). The pairs of a port share its guest state ([`crate::GuestState`]: one lease,
//! one set of learned addresses) and its counters; [`Network::pair_stats`] counts what each
//! pair moved. Its inbox is pair 0's: the other pairs deliver what their host-link queue
//! brings, so a flow switched from another guest (or moved from another port's host batch)
//! reaches the guest on one RX queue, in order.
//!
//! Drivers with a thread per port or per pair call [`Network::wake_after`] after each event:
//! it names the ports whose pair 0 has frames waiting (or is released from
//! [`Network::park`]), each once until the driver calls [`Network::took_wakeup`].

use core::net::Ipv4Addr;
use core::time::Duration;

use nat::Nat;
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::config::BridgeConfig;
use crate::core::{
    Expiry, Notify, PortCore, dns_relay, install_forward, negotiate_offloads, network_nat,
};
use crate::device::CONFIG_SPACE_SIZE;
use crate::dns_relay::SharedRelay;
use crate::frame::FrameBatch;
use crate::host::Gather;
use crate::rx_engine::RxEngine;
use crate::stats::{BridgeStats, DropCause, Stats};
use crate::switch::{Claim, PortId, Switch, SwitchError};
use crate::tx_engine::{SwitchView, TxEngine};
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, IPV4_DST, IPV6_DST, MacAddr};
use crate::{Error, HostLink, LinkOffloads, offload};

/// Several guests on one network; see the module docs.
///
/// ```
/// use bridge::{BridgeConfig, MacAddr, MemoryLink, Network};
///
/// let (host, _peer) = MemoryLink::pair(64)?;
/// let mut net = Network::new(BridgeConfig::default(), 8)?;
/// let a = net.attach(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]))?;
/// let b = net.attach(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]))?;
/// assert_eq!(net.address_of(a), Some("192.168.64.2".parse()?));
/// assert_eq!(net.address_of(b), Some("192.168.64.3".parse()?));
/// net.ack_features(a, net.device_features(a).unwrap_or(0), &host);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Network {
    config: BridgeConfig,
    nat: Nat,
    expiry: Expiry,
    switch: Switch,
    relay: Option<SharedRelay>,
    ports: Vec<Option<PortCore>>,
    /// Per port, [`Network::wake_after`] handed it to its driver, which has not taken the
    /// wake-up yet ([`Network::took_wakeup`]).
    woken: Vec<bool>,
    /// The last port event that put a frame in the port's inbox (see `events`).
    filled: Vec<u64>,
    /// Port events so far (each [`Network::with_port`] call is one).
    events: u64,
    /// Per port, the port whose half-full inbox ended its last TX kick early
    /// ([`crate::Notify::tx_waits`]), until [`Network::park`] takes it.
    waits_on: Vec<Option<PortId>>,
    /// Per port, the port whose delivery it is parked for ([`Network::park`]).
    parked_on: Vec<Option<PortId>>,
    /// Ports parked now (`parked_on`'s `Some`s): releasing costs nothing while none is.
    parked: usize,
    /// The IPv4 address each MAC had, most recent last (bounded by the pool's size).
    leases: Vec<(MacAddr, Ipv4Addr)>,
    /// The port to read the next host batch with (see [`Network::host_reader`]).
    reader: Option<PortId>,
    short_batch_drains: bool,
    /// The queue pairs a port attached from now on offers (`VIRTIO_NET_F_MQ` above 1).
    max_queue_pairs: u16,
    /// A negotiated port left: the host link's offloads are set again ([`Network::relink`]).
    relink: bool,
    /// See [`Network::set_guest_multicast`].
    guest_multicast: bool,
    /// TX batches one [`Network::on_tx_kick`] takes at most ([`Network::set_tx_batch_budget`]).
    tx_batch_budget: usize,
}

impl Network {
    /// Validates `config` (as [`crate::DeviceCore::new`]; its `guest_mac` and `static_guest_ip`
    /// are not used: each port has its own) and builds a network of at most `max_ports`
    /// ports (at most the DHCP pool's size) with the NAT, its forwards and DNS redirects.
    ///
    /// # Errors
    ///
    /// As [`crate::DeviceCore::new`]; [`Error::Config`] for `max_ports` 0.
    pub fn new(mut config: BridgeConfig, max_ports: usize) -> Result<Self, Error> {
        config.validate()?;
        if max_ports == 0 {
            return Err(Error::Config("a network needs at least one port".into()));
        }
        config.static_guest_ip = None;
        let nat = network_nat(&mut config)?;
        let relay = dns_relay(&config);
        let pool = pool_size(&config);
        let max_ports = max_ports.min(pool).min(usize::from(u16::MAX));
        Ok(Network {
            switch: Switch::new(config.gateway_mac, max_ports),
            nat,
            relay,
            expiry: Expiry::default(),
            ports: (0..max_ports).map(|_| None).collect(),
            woken: vec![false; max_ports],
            filled: vec![0; max_ports],
            events: 0,
            waits_on: vec![None; max_ports],
            parked_on: vec![None; max_ports],
            parked: 0,
            leases: Vec::new(),
            reader: None,
            short_batch_drains: false,
            max_queue_pairs: 1,
            relink: false,
            guest_multicast: false,
            tx_batch_budget: crate::TX_BATCH_BUDGET,
            config,
        })
    }

    /// Sets the TX batches ([`BridgeConfig::batch_size`] chains each) one
    /// [`Network::on_tx_kick`] takes at most: `batches` within 1 and
    /// [`crate::TX_BATCH_BUDGET`] (the default). An embedder whose ports' threads share the
    /// network behind one lock lowers it while several ports are attached, so that a port
    /// whose TX ring never runs empty holds the lock for one batch at a time (hostnetd: with
    /// eight batches per hold such a port left another guest's TCP 0.19-0.28 of its figure
    /// alone, with one 0.17-1.03 per round, median 0.39).
    pub fn set_tx_batch_budget(&mut self, batches: usize) {
        self.tx_batch_budget = batches.clamp(1, crate::TX_BATCH_BUDGET);
    }

    /// As [`crate::DeviceCore::with_short_batch_drains`], for every port.
    #[must_use]
    pub fn with_short_batch_drains(mut self, on: bool) -> Self {
        self.short_batch_drains = on;
        for p in self.ports.iter_mut().flatten() {
            p.set_short_batch_drains(on);
        }
        self
    }

    /// With `true`, IPv4 broadcast and multicast and IPv6 multicast from a guest that the
    /// gateway does not serve (mDNS, SSDP, a subnet broadcast, an echo to a group) go to every
    /// other guest, with their group MAC, after the sender's anti-spoofing checks; IGMP, MLD
    /// and Neighbor Discovery stay the gateway's. Default `false`: dropped and counted
    /// (`NotRoutable`, `Ipv6Ignored`), as a cloud network does. Takes effect with the next
    /// event.
    pub fn set_guest_multicast(&mut self, on: bool) {
        self.guest_multicast = on;
    }

    /// Ports attached from now on offer `pairs` queue pairs (1, the default, to
    /// [`crate::MAX_QUEUE_PAIRS`]): with more than one their device offers `VIRTIO_NET_F_MQ`
    /// and `VIRTIO_NET_F_CTRL_VQ` and reports `max_virtqueue_pairs`. The driver picks how many
    /// it uses on the control queue: run [`crate::ControlQueue`] on it and hand its
    /// `QueuePairs` to [`Network::set_queue_pairs`].
    pub fn set_max_queue_pairs(&mut self, pairs: u16) {
        self.max_queue_pairs = pairs.clamp(1, crate::MAX_QUEUE_PAIRS);
    }

    /// Attaches a guest with `mac` as a new port (the lowest free index) and gives it its
    /// IPv4 address: the one this MAC had before, else the first pool address no attached
    /// port holds and no other MAC had (the longest-unused one when every address had an
    /// owner). The port is a fresh device: nothing negotiated.
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: every port in use, the MAC in use or multicast, no address free.
    pub fn attach(&mut self, mac: MacAddr) -> Result<PortId, Error> {
        let id = self.switch.attach(mac).map_err(switch_error)?;
        let addr = match self.address_for(mac) {
            Ok(a) => a,
            Err(e) => {
                self.switch.detach(id);
                return Err(e);
            }
        };
        let mut config = self.config.clone();
        config.guest_mac = mac;
        config.dhcp_pool = addr..=addr;
        config
            .forwards6
            .retain(|f| f.guest.is_none_or(|g| g == addr));
        let port = match PortCore::new(config, self.relay.clone()) {
            Ok(p) => p,
            Err(e) => {
                self.switch.detach(id);
                return Err(e);
            }
        };
        self.switch.set_ipv4(id, Some(addr));
        self.leases.retain(|&(m, _)| m != mac);
        self.leases.push((mac, addr));
        let i = usize::from(id.0);
        let mut port = port;
        port.set_short_batch_drains(self.short_batch_drains);
        port.device = port.device.clone().with_queue_pairs(self.max_queue_pairs);
        self.ports[i] = Some(port);
        self.forget_waits(id);
        tracing::info!(port = id.0, %mac, %addr, "guest port attached");
        Ok(id)
    }

    /// Detaches `port` (its guest is gone): its device, its inbox and its place in the
    /// switch go; its NAT flows expire as usual. `false` if it was not attached.
    pub fn detach(&mut self, port: PortId) -> bool {
        let i = usize::from(port.0);
        let Some(p) = self.ports.get_mut(i).and_then(Option::take) else {
            return false;
        };
        self.switch.detach(port);
        self.forget_waits(port);
        self.relink |= p.negotiated.features != 0;
        if self.reader == Some(port) {
            self.reader = None;
        }
        tracing::info!(port = port.0, mac = %p.config.guest_mac, "guest port detached");
        true
    }

    /// The ports attached now, with their MACs.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, MacAddr)> + '_ {
        self.switch.ports()
    }

    /// The IPv4 address of `port` (what its guest gets by DHCP).
    pub fn address_of(&self, port: PortId) -> Option<Ipv4Addr> {
        self.switch.ipv4_of(port)
    }

    /// The features `port`'s device offers.
    pub fn device_features(&self, port: PortId) -> Option<u64> {
        Some(self.port(port)?.device.device_features())
    }

    /// `port`'s config space (its MAC, status, MTU).
    pub fn config_space(&self, port: PortId) -> Option<[u8; CONFIG_SPACE_SIZE]> {
        Some(self.port(port)?.device.config_space())
    }

    /// As [`crate::DeviceCore::ack_features`] for `port` (0 for a port not attached). The
    /// host link is one for every port, so its offloads towards the guests are what every
    /// negotiated port takes (the intersection): a guest that took no TSO gets no super-packet
    /// because another took it. A port's own flags say what the link accepted when it
    /// negotiated; the link may then hand it less (plain packets, which every guest takes).
    pub fn ack_features(&mut self, port: PortId, features: u64, host: &impl HostLink) -> u64 {
        let Some(p) = self.port_mut(port) else {
            return 0;
        };
        let acked = p.device.ack_features(features);
        let offloads = negotiate_offloads(acked, host);
        p.use_features(acked, offloads);
        let common = self.common_offloads().unwrap_or(LinkOffloads::NONE);
        if common != offloads.towards_guest()
            && let Err(e) = host.set_offloads(common)
        {
            tracing::warn!("the host link refused the ports' common offloads: {e}");
        }
        self.relink = false;
        acked
    }

    /// What every negotiated port takes from the host link (`None`: no port negotiated).
    fn common_offloads(&self) -> Option<LinkOffloads> {
        self.ports
            .iter()
            .flatten()
            .filter(|p| p.negotiated.features != 0)
            .map(|p| p.negotiated.offloads.towards_guest())
            .reduce(|a, b| LinkOffloads {
                csum: a.csum && b.csum,
                tso4: a.tso4 && b.tso4,
                tso6: a.tso6 && b.tso6,
            })
    }

    /// After a port left, the host link gets what the remaining ports take (more, when the
    /// one that took least is gone). Runs on the next event that has the link at hand.
    fn relink(&mut self, host: &impl HostLink) {
        if !core::mem::take(&mut self.relink) {
            return;
        }
        if let Some(common) = self.common_offloads()
            && let Err(e) = host.set_offloads(common)
        {
            tracing::warn!("the host link refused the ports' common offloads: {e}");
        }
    }

    /// As [`crate::DeviceCore::prepare_queue`] for `port`.
    ///
    /// # Errors
    ///
    /// As [`crate::DeviceCore::prepare_queue`]; [`Error::Config`] for a port not attached.
    pub fn prepare_queue<Q: QueueT>(
        &self,
        port: PortId,
        queue: &mut Q,
        index: u16,
    ) -> Result<(), Error> {
        self.port(port)
            .ok_or_else(|| not_attached(port))?
            .prepare_queue(queue, index)
    }

    /// As [`crate::DeviceCore::on_tx_kick`] for `port`; frames for other guests go to their
    /// inboxes ([`Network::pending`]).
    ///
    /// # Errors
    ///
    /// As [`crate::DeviceCore::on_tx_kick`]; [`Error::Config`] for a port not attached.
    pub fn on_tx_kick<M: GuestMemory, Q: QueueT>(
        &mut self,
        port: PortId,
        mem: &M,
        txq: &mut Q,
        rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.on_pair_tx_kick(port, 0, mem, txq, rxq, host, now)
    }

    /// As [`Network::on_tx_kick`] for queue pair `pair` of `port` (its TX queue, its RX queue
    /// and, on a multi-queue host link, its queue of it as `host`). Every pair shares the
    /// port's guest state (lease, learned addresses), inbox and counters.
    ///
    /// # Errors
    ///
    /// As [`Network::on_tx_kick`]; [`Error::Config`] for a pair not in use
    /// ([`Network::set_queue_pairs`]).
    #[allow(clippy::too_many_arguments)]
    pub fn on_pair_tx_kick<M: GuestMemory, Q: QueueT>(
        &mut self,
        port: PortId,
        pair: usize,
        mem: &M,
        txq: &mut Q,
        rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.relink(host);
        let budget = self.tx_batch_budget;
        let r = self.with_port(port, |p, nat, others| {
            p.on_tx_kick(pair, nat, mem, txq, rxq, host, now, Some(others), budget)
        })?;
        self.after_tx(port);
        r
    }

    /// After a TX event of `port`: the port follows its guest's MAC, and the switch delivers
    /// to the IPv6 addresses the guest was seen to use (its own traffic, past the gateway's
    /// anti-spoofing checks) from now on.
    fn after_tx(&mut self, port: PortId) {
        self.follow_guest_mac(port);
        if let Some(Some(p)) = self.ports.get(usize::from(port.0)) {
            for &a in p.guest.gateway().guest_ipv6_addrs() {
                if let Claim::Conflict(holder) = self.switch.learn_ipv6(port, a) {
                    tracing::debug!(port = port.0, holder = holder.0, %a, "IPv6 address held by another port");
                }
            }
        }
    }

    /// Before an event of a [`crate::PairWorker`]: the host link's offloads after a port
    /// left, the worker's pair in use and its halves built; returns the TX batch budget.
    pub(crate) fn worker_begin(
        &mut self,
        w: &mut crate::PairWorker,
        host: &impl HostLink,
    ) -> Result<usize, Error> {
        self.relink(host);
        let budget = self.tx_batch_budget;
        let p = self
            .port_mut(w.port())
            .ok_or_else(|| not_attached(w.port()))?;
        p.check_pair(w.pair())?;
        let pair = w.pair();
        let slot = p.pairs.get_mut(pair);
        let (config, negotiated, relay, short) = (&p.config, &p.negotiated, &p.relay, p.short);
        w.prepare(
            p.generation,
            || slot.and_then(Option::take),
            || crate::core::queue_pair(config, negotiated, relay.clone(), short),
        );
        Ok(budget)
    }

    /// After an event of a [`crate::PairWorker`]: its counters go to the port's; after TX,
    /// as [`Network::on_pair_tx_kick`] does.
    pub(crate) fn worker_end(&mut self, w: &mut crate::PairWorker, tx: bool) {
        let port = w.port();
        let (stats, moved, failed) = w.take_counts();
        if let Some(p) = self.port_mut(port) {
            p.stats.add(&stats);
            if let Some(m) = p.moved.get_mut(w.pair()) {
                m.tx_frames += moved.tx_frames;
                m.rx_frames += moved.rx_frames;
            }
            p.host_failed |= failed;
        }
        if tx {
            self.after_tx(port);
        }
    }

    /// As [`crate::DeviceCore::on_rx_ready`] for `port`: its inbox, then (`host_readable`, or
    /// packets left from before) the host link, whose packets for other guests go to their
    /// inboxes.
    ///
    /// # Errors
    ///
    /// As [`crate::DeviceCore::on_rx_ready`]; [`Error::Config`] for a port not attached.
    pub fn on_rx_ready<M: GuestMemory, Q: QueueT>(
        &mut self,
        port: PortId,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        host_readable: bool,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.on_pair_rx_ready(port, 0, mem, rxq, host, host_readable, now)
    }

    /// As [`Network::on_rx_ready`] for queue pair `pair` of `port`: the port's inbox is pair
    /// 0's (the other pairs deliver their host-link queue's packets: a flow's frames reach the
    /// guest on one RX queue; see [`Network::wake_after`]); `host` is the pair's queue of a
    /// multi-queue host link (or the one link every pair reads).
    ///
    /// # Errors
    ///
    /// As [`Network::on_rx_ready`]; [`Error::Config`] for a pair not in use.
    #[allow(clippy::too_many_arguments)]
    pub fn on_pair_rx_ready<M: GuestMemory, Q: QueueT>(
        &mut self,
        port: PortId,
        pair: usize,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        host_readable: bool,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        self.relink(host);
        self.with_port(port, |p, nat, others| {
            p.host_readable(pair, host_readable);
            p.deliver(pair, nat, mem, rxq, host, now, Some(others))
        })?
    }

    /// Sets the queue pairs `port` uses to `pairs` (the driver's
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, see [`crate::ControlQueue`]); pair 0 is always in
    /// use. The batches of a pair are allocated the first time it is used.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a port not attached or `pairs` outside
    /// `1..=`[`crate::MAX_QUEUE_PAIRS`].
    pub fn set_queue_pairs(&mut self, port: PortId, pairs: usize) -> Result<(), Error> {
        self.port_mut(port)
            .ok_or_else(|| not_attached(port))?
            .set_queue_pairs(pairs)
    }

    /// The queue pairs `port` uses (1 unless [`Network::set_queue_pairs`] said otherwise).
    pub fn queue_pairs(&self, port: PortId) -> Option<usize> {
        self.port(port).map(PortCore::queue_pairs)
    }

    /// The frames queue pair `pair` of `port` moved each way (counted also while the pair is
    /// out of use; `None` for a pair never set up).
    pub fn pair_stats(&self, port: PortId, pair: usize) -> Option<crate::PairStats> {
        self.port(port)?.pair_stats(pair)
    }

    /// Whether frames wait in `port`'s inbox (switched from another guest, moved from a host
    /// batch, a gateway reply or advertisement): call [`Network::on_rx_ready`] for it.
    pub fn pending(&self, port: PortId) -> bool {
        self.port(port).is_some_and(PortCore::replies_pending)
    }

    /// Parks `port` after an event whose TX kick said [`crate::Notify::tx_waits`]: its driver
    /// takes none of its guest's frames until the port whose half-full inbox ended that kick
    /// has had it delivered ([`Network::wake_after`] releases `port` then), or until the
    /// driver's own bound on the wait runs out ([`Network::unpark`]; a guest that stopped
    /// taking its frames must not hold another back for longer). `false`: not parked (no
    /// kick ended so since the last call, or that inbox was delivered already): send again.
    ///
    /// For drivers with a thread per port, which wake each other; a driver that serves every
    /// port from one thread treats `tx_waits` as `tx_more` and never parks.
    pub fn park(&mut self, port: PortId) -> bool {
        let i = usize::from(port.0);
        let Some(on) = self.waits_on.get_mut(i).map(Option::take) else {
            return false;
        };
        if self.parked(port) {
            return true;
        }
        let Some(on) = on.filter(|&p| self.pending(p)) else {
            return false;
        };
        self.parked_on[i] = Some(on);
        self.parked += 1;
        if let Some(p) = self.port_mut(port) {
            p.stats.parked += 1;
        }
        true
    }

    /// `port` is no longer parked: its driver's bound on the wait ran out (counted,
    /// [`Stats::park_timeouts`]).
    pub fn unpark(&mut self, port: PortId) {
        if self.forget_park(port)
            && let Some(p) = self.port_mut(port)
        {
            p.stats.park_timeouts += 1;
        }
    }

    /// `port` is not parked (now); whether it was.
    fn forget_park(&mut self, port: PortId) -> bool {
        let was = self
            .parked_on
            .get_mut(usize::from(port.0))
            .and_then(Option::take)
            .is_some();
        self.parked -= usize::from(was);
        was
    }

    /// Whether `port` is parked (see [`Network::park`]; no port's delivery released it yet).
    pub fn parked(&self, port: PortId) -> bool {
        self.parked_on
            .get(usize::from(port.0))
            .is_some_and(Option::is_some)
    }

    /// After an event of queue pair `pair` of `port`, in the same hold of the network: hands
    /// `wake` each port whose pair 0 has work from elsewhere that its driver was not told of
    /// yet, each once until the driver calls [`Network::took_wakeup`]:
    /// - every other port whose inbox has frames;
    /// - `port` itself when `pair` is not 0 and its inbox has frames (a port's inbox is its
    ///   pair 0's: the frames of a flow reach the guest on one RX queue, in order);
    /// - once `port`'s inbox is delivered, every port parked for it ([`Network::park`]),
    ///   released: its driver takes its guest's frames again.
    ///
    /// The drivers with a thread per port (or per pair) call this after each event and write
    /// the eventfd of the pair 0 thread of each port handed over.
    pub fn wake_after(&mut self, port: PortId, pair: usize, mut wake: impl FnMut(PortId)) {
        if self.parked > 0 && !self.pending(port) {
            for (i, on) in self.parked_on.iter_mut().enumerate() {
                if *on == Some(port) {
                    *on = None;
                    self.parked -= 1;
                    wake_once(&mut self.woken, i, &mut wake);
                }
            }
        }
        for i in 0..self.ports.len() {
            let p = PortId(u16::try_from(i).unwrap_or(u16::MAX));
            if (p != port || pair != 0) && self.pending(p) {
                wake_once(&mut self.woken, i, &mut wake);
            }
        }
    }

    /// `port`'s driver took its wake-up (read its eventfd): the next work for it wakes it
    /// again. Call it before looking at the port's inbox and whether it is parked.
    pub fn took_wakeup(&mut self, port: PortId) {
        if let Some(w) = self.woken.get_mut(usize::from(port.0)) {
            *w = false;
        }
    }

    /// Unparks every port parked for `port` (which left; each sends at its driver's bound).
    fn unpark_waiting_for(&mut self, port: PortId) {
        for on in &mut self.parked_on {
            if *on == Some(port) {
                *on = None;
                self.parked -= 1;
            }
        }
    }

    /// A port slot taken or freed: it waits for none, and none waits for it (a port parked
    /// for it sends at its driver's bound, as if released).
    fn forget_waits(&mut self, port: PortId) {
        let i = usize::from(port.0);
        self.waits_on[i] = None;
        self.woken[i] = false;
        self.forget_park(port);
        self.unpark_waiting_for(port);
    }

    /// The port to read the host link with ([`Network::on_rx_ready`] with `host_readable`):
    /// the one that read the last batch, or the one most of it was moved to (with one busy
    /// guest, that guest's port: nothing is copied), else the first.
    pub fn host_reader(&self) -> Option<PortId> {
        self.reader
            .filter(|p| self.port(*p).is_some())
            .or_else(|| self.switch.ports().next().map(|(p, _)| p))
    }

    /// As [`crate::DeviceCore::on_tick`], for the NAT and every port.
    pub fn on_tick(&mut self, now: nat::Instant) -> usize {
        let expired = self.expiry.tick(&mut self.nat, now);
        for p in self.ports.iter_mut().flatten() {
            p.on_tick(now);
        }
        expired
    }

    /// As [`crate::DeviceCore::next_timeout`].
    pub fn next_timeout(&self, now: nat::Instant) -> Option<Duration> {
        self.expiry.timeout(&self.nat, now)
    }

    /// `port`'s counters.
    pub fn stats(&self, port: PortId) -> Option<&Stats> {
        Some(&self.port(port)?.stats)
    }

    /// Every port's counters added up, with the NAT's.
    pub fn bridge_stats(&self) -> BridgeStats {
        let mut bridge = Stats::default();
        for p in self.ports.iter().flatten() {
            bridge.add(&p.stats);
        }
        BridgeStats {
            bridge,
            nat_flows: self.nat.len(),
            nat: self.nat.stats().clone(),
            needs_reset: false,
        }
    }

    /// Whether `port`'s host link failed (see [`crate::DeviceCore::host_failed`]).
    pub fn host_failed(&self, port: PortId) -> bool {
        self.port(port).is_some_and(|p| p.host_failed)
    }

    /// `port`'s gateway services (its guest's MAC, lease, IPv6 addresses).
    pub fn gateway(&self, port: PortId) -> Option<&crate::Gateway> {
        Some(self.port(port)?.guest.gateway())
    }

    /// What `port`'s [`Network::ack_features`] agreed on.
    pub fn negotiated(&self, port: PortId) -> Option<crate::Negotiated> {
        Some(self.port(port)?.negotiated)
    }

    /// As [`crate::DeviceCore::on_rx_unavailable`] for `port`.
    pub fn on_rx_unavailable(&mut self, port: PortId) {
        if let Some(p) = self.port_mut(port) {
            p.host_readable(0, true);
        }
    }

    /// Adds a port forward at runtime (a control request). IPv4: to the spec's guest
    /// address, else `default_guest`; it must be in the guest subnet. IPv6: to the global
    /// address the gateway learned of the guest the spec names by its IPv4 address
    /// (`tcp6:8080:192.168.64.3:80`), now or once a port with that address attaches; a spec
    /// naming no guest is every port's (NAT66 sends to the guest learned last).
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: the external port is forwarded already, IPv6 is off, the named
    /// guest address is not in the DHCP pool;
    /// [`Error::NatRule`]: the NAT refused the rule.
    pub fn add_forward(
        &mut self,
        spec: crate::ForwardSpec,
        default_guest: Ipv4Addr,
    ) -> Result<(), Error> {
        if spec.ipv6 {
            if self.config.ipv6.is_none() {
                return Err(Error::Config(
                    "an IPv6 port forward needs IPv6 (it is off)".into(),
                ));
            }
            let f = spec.to_port_forward6();
            if self
                .config
                .forwards6
                .iter()
                .any(|g| g.protocol == f.protocol && g.external_port == f.external_port)
            {
                return Err(Error::Config(format!(
                    "{:?} port {} is already forwarded (IPv6)",
                    f.protocol, f.external_port
                )));
            }
            if let Some(g) = f.guest
                && !self.config.dhcp_pool.contains(&g)
            {
                return Err(Error::Config(format!(
                    "the IPv6 port forward names {g}, no guest's address"
                )));
            }
            for (id, _) in self.switch.ports() {
                let Some(to) = self.switch.ipv4_of(id) else {
                    continue;
                };
                if f.guest.is_some_and(|g| g != to) {
                    continue;
                }
                if let Some(Some(p)) = self.ports.get_mut(usize::from(id.0)) {
                    p.add_forward(spec, to, &mut self.nat)?;
                }
            }
            self.config.forwards6.push(f);
            return Ok(());
        }
        let f = spec.to_port_forward(default_guest);
        install_forward(&mut self.config.forwards, &mut self.nat, f)
    }

    /// Removes the port forward on (`protocol`, `external_port`) of one family and ends the
    /// sessions set up through it; `false` if there was none.
    pub fn remove_forward(
        &mut self,
        protocol: nat::Protocol,
        external_port: u16,
        ipv6: bool,
    ) -> bool {
        let same = |p: nat::Protocol, port: u16| p == protocol && port == external_port;
        if ipv6 {
            let before = self.config.forwards6.len();
            self.config
                .forwards6
                .retain(|g| !same(g.protocol, g.external_port));
            for p in self.ports.iter_mut().flatten() {
                p.remove_forward(protocol, external_port, true, &mut self.nat);
            }
            return self.config.forwards6.len() != before;
        }
        let before = self.config.forwards.len();
        self.config
            .forwards
            .retain(|g| !same(g.protocol, g.external_port));
        self.nat.close_forward(protocol, external_port);
        self.config.forwards.len() != before
    }

    /// The shared NAT.
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// Who is where.
    pub fn switch(&self) -> &Switch {
        &self.switch
    }

    /// The network's configuration (as validated).
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// A guest may use another MAC than its port's: QEMU's virtio-net takes its MAC from its
    /// command line, not from the backend's config space. The port's gateway takes the MAC of
    /// the guest's DHCP messages and ARP for the gateway (as one guest's does), and the port
    /// follows: the switch delivers to that MAC and answers ARP and NS with it, and the MAC
    /// keeps the port's address for the next time ([`Network::attach`]). Another port's MAC
    /// is never taken: the gateway keeps the port's own, and the attempt is counted
    /// `SpoofedMac`.
    fn follow_guest_mac(&mut self, port: PortId) {
        let Some(Some(p)) = self.ports.get_mut(usize::from(port.0)) else {
            return;
        };
        let seen = p.guest.gateway().guest_mac();
        let old = p.config.guest_mac;
        if seen == old {
            return;
        }
        match self.switch.set_mac(port, seen) {
            Ok(_) => {
                p.config.guest_mac = seen;
                if let Some(addr) = self.switch.ipv4_of(port) {
                    self.leases.retain(|&(m, a)| m != seen && a != addr);
                    self.leases.push((seen, addr));
                }
                tracing::info!(port = port.0, %old, mac = %seen, "the port follows its guest's MAC");
            }
            Err(e) => {
                p.guest.gateway_mut().set_guest_mac(old);
                p.stats.drop(DropCause::SpoofedMac);
                tracing::debug!(port = port.0, mac = %seen, "guest MAC refused: {e}");
            }
        }
    }

    /// Runs one event of `port`: its slot is taken out of the network for it, so the event
    /// has the port, the NAT and the rest of the network ([`Others`]) at once.
    pub(crate) fn with_port<R>(
        &mut self,
        port: PortId,
        event: impl FnOnce(&mut PortCore, &mut Nat, &mut Others<'_>) -> R,
    ) -> Result<R, Error> {
        let i = usize::from(port.0);
        let mut p = self
            .ports
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| not_attached(port))?;
        let mut others = Others {
            switch: &self.switch,
            flood: self.guest_multicast,
            me: port,
            ports: &mut self.ports,
            filled: &mut self.filled,
            event: {
                self.events += 1;
                self.events
            },
            reader: &mut self.reader,
            busy: None,
        };
        let r = event(&mut p, &mut self.nat, &mut others);
        if let Some(b) = others.busy {
            self.waits_on[i] = Some(b);
        }
        self.ports[i] = Some(p);
        Ok(r)
    }

    fn port(&self, port: PortId) -> Option<&PortCore> {
        self.ports.get(usize::from(port.0))?.as_ref()
    }

    fn port_mut(&mut self, port: PortId) -> Option<&mut PortCore> {
        self.ports.get_mut(usize::from(port.0))?.as_mut()
    }

    /// The address `mac` gets (see [`Network::attach`]).
    fn address_for(&self, mac: MacAddr) -> Result<Ipv4Addr, Error> {
        if let Some(&(_, a)) = self.leases.iter().find(|(m, _)| *m == mac)
            && self.switch.port_by_ipv4(a).is_none()
        {
            return Ok(a);
        }
        let (first, last) = (
            u32::from(*self.config.dhcp_pool.start()),
            u32::from(*self.config.dhcp_pool.end()),
        );
        let free = |a: &Ipv4Addr| self.switch.port_by_ipv4(*a).is_none();
        if let Some(a) = (first..=last)
            .map(Ipv4Addr::from)
            .find(|a| free(a) && !self.leases.iter().any(|(_, b)| b == a))
        {
            return Ok(a);
        }
        self.leases
            .iter()
            .map(|&(_, a)| a)
            .find(free)
            .ok_or_else(|| Error::Config("no free address in the DHCP pool".into()))
    }
}

/// What a port's event sees of the rest of its network: the switch, the other ports (its
/// own slot is empty while it runs) and when their inboxes were filled.
#[derive(Debug)]
pub(crate) struct Others<'a> {
    switch: &'a Switch,
    /// Broadcast and multicast between guests ([`Network::set_guest_multicast`]).
    flood: bool,
    me: PortId,
    ports: &'a mut [Option<PortCore>],
    /// Per port, the last event that put a frame in its inbox.
    filled: &'a mut [u64],
    /// This event's number.
    event: u64,
    reader: &'a mut Option<PortId>,
    /// The port whose inbox [`Others::inbox_busy`] found half full.
    busy: Option<PortId>,
}

impl<'a> Others<'a> {
    /// The sending port's view of the switch for a TX batch.
    pub(crate) fn view(&self) -> SwitchView<'a> {
        SwitchView {
            switch: self.switch,
            port: self.me,
            flood: self.flood,
        }
    }

    /// Whether an inbox this event put frames in is half full or more (the sender pauses).
    /// An inbox that was full already and took nothing of this event does not count: a
    /// guest that stopped taking its frames holds back no other guest's traffic (what is for
    /// it is dropped and counted at the sender).
    /// The first such port is remembered for [`Network::park`].
    pub(crate) fn inbox_busy(&mut self) -> bool {
        let busy = self
            .filled
            .iter()
            .zip(self.ports.iter())
            .position(|(&e, port)| {
                e == self.event
                    && port
                        .as_ref()
                        .is_some_and(|q| q.replies.len() * 2 >= q.replies.capacity())
            })
            .and_then(|i| u16::try_from(i).ok())
            .map(PortId);
        self.busy = busy.or(self.busy);
        busy.is_some()
    }

    /// Moves the frames of the sender's last TX batch that the switch sent to other ports
    /// into their inboxes (see [`Others::move_in`]; a flooded frame that goes to more ports
    /// after this one is copied).
    pub(crate) fn take_tx(&mut self, engine: &mut TxEngine, stats: &mut Stats) {
        let gateway_mac = self.switch.gateway_mac();
        for k in 0..engine.switched().len() {
            let Some(&(i, q)) = engine.switched().get(k) else {
                break;
            };
            let Some((frame, kind, hdr)) = engine.switched_frame(i) else {
                continue;
            };
            let routed = frame.get(..6) == Some(&gateway_mac.0[..]);
            let src = routed.then_some(gateway_mac);
            let header =
                |o: &crate::Offloads, f: &mut [u8]| offload::hairpin_header(o, kind, &hdr, f);
            // A flooded frame's ports follow each other in the list: it moves to the last.
            let r = if engine.switched().get(k + 1).is_some_and(|&(j, _)| j == i) {
                self.push(q, frame, src, header)
            } else {
                self.move_in(q, engine.batch_mut(), i, src, header)
            };
            match r {
                Ok(()) => stats.switched += 1,
                Err(c) => stats.drop(c),
            }
        }
    }

    /// Moves the frames of the reader's host batch (translated, from the batch's cursor on)
    /// that are for other guests into their inboxes.
    /// A frame read into this port's guest memory ([`crate::rx_split`]) is made whole
    /// through `io` first (a copy: the engine does not read into guest memory again while
    /// its batches carry frames for others, [`RxEngine::set_shared_reads`]).
    pub(crate) fn take_rx(
        &mut self,
        engine: &mut RxEngine,
        io: Option<&dyn Gather>,
        stats: &mut Stats,
    ) {
        let (mut mine, mut moved) = (0usize, 0usize);
        let mut last = None;
        let (from, to) = (engine.batch_mut().cursor(), engine.batch_mut().len());
        for i in from..to {
            let batch = engine.batch_mut();
            let hdr = batch.header(i);
            let Some(frame) = batch.frame(i) else {
                continue;
            };
            if frame.is_empty() {
                continue;
            }
            let Some(q) = owner_of_dst(self.switch, frame).filter(|&q| q != self.me) else {
                mine += 1;
                continue;
            };
            if !engine.make_whole(i, io) {
                stats.drop(DropCause::ChainOutOfBounds);
                engine.batch_mut().drop_frame(i);
                continue;
            }
            let batch = engine.batch_mut();
            if let Err(c) = self.move_in(q, batch, i, None, |_, _| Ok(hdr)) {
                stats.drop(c);
            }
            batch.drop_frame(i);
            moved += 1;
            last = Some(q);
        }
        // Most of this batch was for others: read the next one with the port the last of
        // them went to (with one busy guest, its own port; nothing copied then).
        *self.reader = match last {
            Some(q) if moved > mine => Some(q),
            _ => Some(self.me),
        };
        // While packets for other guests come in this port's reads, read them into its own
        // buffers (they move on without a copy) rather than into its guest's memory.
        engine.set_shared_reads(moved > 0);
    }

    /// Moves frame `i` of `batch` into port `q`'s inbox with `q`'s MAC as destination (and
    /// `src` as source, if given; `header` gives the virtio-net header for `q`'s offloads and
    /// may complete a checksum): rewritten in place, then moved by buffer (no copy: the
    /// frame's buffer is exchanged for a free one of the inbox), or copied when the two
    /// batches' buffers differ in size (`FrameBatch::move_frame`).
    fn move_in(
        &mut self,
        q: PortId,
        batch: &mut FrameBatch,
        i: usize,
        src: Option<MacAddr>,
        header: impl Header,
    ) -> Result<(), DropCause> {
        self.put_in(q, |port| {
            if port.replies.is_full() {
                return Err(DropCause::LocalQueueFull);
            }
            let frame = batch.frame_mut(i).ok_or(DropCause::Runt)?;
            readdress(frame, port.config.guest_mac, src)?;
            let hdr = header(&port.negotiated.offloads, frame)?;
            if !batch.move_frame(i, &mut port.replies, hdr) {
                let frame = batch.frame(i).ok_or(DropCause::Runt)?;
                if !port.replies.push_with_header(frame, hdr) {
                    return Err(DropCause::TooBig);
                }
            }
            Ok(())
        })
    }

    /// Copies `frame` into port `q`'s inbox with `q`'s MAC as destination (and `src` as
    /// source, if given); `header` gives the virtio-net header for `q`'s offloads (and may
    /// complete a checksum in the copy).
    fn push(
        &mut self,
        q: PortId,
        frame: &[u8],
        src: Option<MacAddr>,
        header: impl Header,
    ) -> Result<(), DropCause> {
        self.put_in(q, |port| {
            let inbox = &mut port.replies;
            let buf = inbox.next_buf().ok_or(DropCause::LocalQueueFull)?;
            let copy = buf.get_mut(..frame.len()).ok_or(DropCause::TooBig)?;
            copy.copy_from_slice(frame);
            readdress(copy, port.config.guest_mac, src)?;
            let hdr = header(&port.negotiated.offloads, copy)?;
            inbox.commit(0, frame.len());
            let n = inbox.len();
            inbox.set_header(n - 1, hdr);
            Ok(())
        })
    }

    /// Runs `put` on port `q` (its inbox cleared first if everything in it was delivered)
    /// and, when `put` put a frame in the inbox, flags the inbox as filled this event.
    fn put_in(
        &mut self,
        q: PortId,
        put: impl FnOnce(&mut PortCore) -> Result<(), DropCause>,
    ) -> Result<(), DropCause> {
        let i = usize::from(q.0);
        let port = self
            .ports
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or(DropCause::NotRoutable)?;
        if port.replies.pending() == 0 {
            port.replies.clear();
        }
        put(port)?;
        if let Some(e) = self.filled.get_mut(i) {
            *e = self.event;
        }
        Ok(())
    }
}

/// Gives a frame switched to a port the virtio-net header for that port's offloads (and may
/// complete a partial checksum in the frame).
trait Header:
    FnOnce(&crate::Offloads, &mut [u8]) -> Result<crate::device::VirtioNetHdr, DropCause>
{
}

impl<F> Header for F where
    F: FnOnce(&crate::Offloads, &mut [u8]) -> Result<crate::device::VirtioNetHdr, DropCause>
{
}

/// Gives Ethernet `frame` the destination `mac` (a group destination, a flooded broadcast or
/// multicast, stays as it is) and the source `src`, if given.
fn readdress(frame: &mut [u8], mac: MacAddr, src: Option<MacAddr>) -> Result<(), DropCause> {
    let (dst, rest) = frame.get_mut(..12).ok_or(DropCause::Runt)?.split_at_mut(6);
    if dst[0] & 1 == 0 {
        dst.copy_from_slice(&mac.0);
    }
    if let Some(s) = src {
        rest.copy_from_slice(&s.0);
    }
    Ok(())
}

/// The port holding the destination address of the IP packet in Ethernet `frame` (by its
/// EtherType), if any.
pub(crate) fn owner_of_dst(switch: &Switch, frame: &[u8]) -> Option<PortId> {
    match frame.get(12..14) {
        Some(t) if t == ETHERTYPE_IPV4.to_be_bytes() => frame
            .get(ETH_HLEN + IPV4_DST..ETH_HLEN + IPV4_DST + 4)
            .and_then(|d| <[u8; 4]>::try_from(d).ok())
            .and_then(|d| switch.port_by_ipv4(Ipv4Addr::from(d))),
        Some(t) if t == ETHERTYPE_IPV6.to_be_bytes() => frame
            .get(ETH_HLEN + IPV6_DST..ETH_HLEN + IPV6_DST + 16)
            .and_then(|d| <[u8; 16]>::try_from(d).ok())
            .and_then(|d| switch.port_by_ipv6(d.into())),
        _ => None,
    }
}

/// Addresses in the DHCP pool.
fn pool_size(config: &BridgeConfig) -> usize {
    let (a, b) = (
        u32::from(*config.dhcp_pool.start()),
        u32::from(*config.dhcp_pool.end()),
    );
    usize::try_from(b.saturating_sub(a)).map_or(usize::MAX, |n| n.saturating_add(1))
}

/// Hands port `i` to `wake` unless it was handed over and its driver has not taken the
/// wake-up (`woken`, see [`Network::wake_after`]).
fn wake_once(woken: &mut [bool], i: usize, wake: &mut impl FnMut(PortId)) {
    let (Some(w), Ok(p)) = (woken.get_mut(i), u16::try_from(i)) else {
        return;
    };
    if !*w {
        *w = true;
        wake(PortId(p));
    }
}

fn switch_error(e: SwitchError) -> Error {
    Error::Config(format!("attaching a guest port: {e}"))
}

fn not_attached(port: PortId) -> Error {
    Error::Config(format!("port {} is not attached", port.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryLink;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0x12, 0x34, last])
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ports_get_addresses_in_order_and_a_returning_mac_its_own() {
        let mut net = Network::new(BridgeConfig::default(), 8).unwrap();
        let a = net.attach(mac(0x56)).unwrap();
        let b = net.attach(mac(0x57)).unwrap();
        let c = net.attach(mac(0x58)).unwrap();
        assert_eq!((a.0, b.0, c.0), (0, 1, 2));
        assert_eq!(net.address_of(a), Some(ip("192.168.64.2")));
        assert_eq!(net.address_of(b), Some(ip("192.168.64.3")));
        assert_eq!(net.address_of(c), Some(ip("192.168.64.4")));
        // The device of each port carries its MAC.
        assert_eq!(net.config_space(b).unwrap()[..6], mac(0x57).0);
        // b goes; a new MAC does not take b's address while it may come back.
        assert!(net.detach(b));
        assert!(!net.detach(b));
        assert_eq!(net.address_of(b), None);
        let d = net.attach(mac(0x59)).unwrap();
        assert_eq!(d, b, "the lowest free port index");
        assert_eq!(net.address_of(d), Some(ip("192.168.64.5")));
        net.detach(d);
        let b2 = net.attach(mac(0x57)).unwrap();
        assert_eq!(
            net.address_of(b2),
            Some(ip("192.168.64.3")),
            "b's address again"
        );
        assert_eq!(net.ports().count(), 3);
    }

    #[test]
    fn a_full_pool_reuses_the_longest_unused_address_and_refusals_are_errors() {
        let config = BridgeConfig {
            dhcp_pool: ip("192.168.64.2")..=ip("192.168.64.3"),
            ..BridgeConfig::default()
        };
        let mut net = Network::new(config, 8).unwrap();
        let a = net.attach(mac(1)).unwrap();
        let b = net.attach(mac(2)).unwrap();
        // Two addresses, two ports at most.
        assert!(matches!(net.attach(mac(3)), Err(Error::Config(_))));
        assert!(
            matches!(net.attach(mac(2)), Err(Error::Config(e)) if e.contains("MAC")),
            "a MAC in use"
        );
        net.detach(a);
        net.detach(b);
        // Both addresses had owners: the one unused longest goes to the new MAC.
        let c = net.attach(mac(3)).unwrap();
        assert_eq!(net.address_of(c), Some(ip("192.168.64.2")));
        assert!(matches!(
            net.attach(MacAddr([0x01, 0, 0, 0, 0, 1])),
            Err(Error::Config(_))
        ));
        assert!(Network::new(BridgeConfig::default(), 0).is_err());
    }

    const HDR: usize = 12;
    const FEATURES: u64 = 1 << 32 | 1 << 15; // VERSION_1 | MRG_RXBUF
    const NOW: nat::Instant = nat::Instant::ZERO;

    /// A DHCP DISCOVER and a REQUEST for `ip` from `mac`.
    #[test]
    fn pair_workers_on_two_threads_share_the_lease_and_their_counts_reach_the_port() {
        use crate::testing::{self, EXTERNAL, MockNet, SERVER};
        use crate::{NetworkLock, PairWorker};
        use ::wire::{Ipv4Packet, UdpPacket};
        use std::sync::Mutex;
        const N: u16 = 40;
        let (host, peer) = MemoryLink::pair(1024).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 2).unwrap();
        let ma = mac(0x56);
        let a = net.attach(ma).unwrap();
        let ia = net.address_of(a).unwrap();
        assert_eq!(net.ack_features(a, FEATURES, &host), FEATURES);
        net.set_queue_pairs(a, 2).unwrap();
        let net = Mutex::new(net);
        let (mem0, mem1) = (testing::guest_memory(), testing::guest_memory());
        let mut w0 = PairWorker::new(a, 0);
        let mut w1 = PairWorker::new(a, 1);
        {
            // The lease, on pair 0.
            let mut q0 = MockNet::new(&mem0, 256);
            let (mut rx0, mut tx0) = q0.queues(false);
            for _ in 0..4 {
                q0.post_rx(&[2048]);
            }
            for f in dhcp(ma, ia) {
                q0.send_frame(HDR, &f, &[]);
            }
            w0.on_tx_kick(&net, &mem0, &mut tx0, Some(&mut rx0), &host, NOW)
                .unwrap();
            let mut scratch = Vec::new();
            assert!(q0.rx_frame(HDR, &mut scratch).is_some(), "offer");
            assert!(q0.rx_frame(HDR, &mut scratch).is_some(), "ack");
        }
        // Both pairs send at once from their own threads, N datagrams each, a kick each.
        std::thread::scope(|s| {
            for (w, mem, base) in [(&mut w0, &mem0, 10_000u16), (&mut w1, &mem1, 20_000)] {
                let (net, host) = (&net, &host);
                s.spawn(move || {
                    let mut q = MockNet::new(mem, 256);
                    let (mut rx, mut tx) = q.queues(false);
                    for k in 0..N {
                        let f = testing::udp_frame(ma, ia, base + k, SERVER, 7, b"pair");
                        q.send_frame(HDR, &f, &[]);
                        w.on_tx_kick(net, mem, &mut tx, Some(&mut rx), host, NOW)
                            .unwrap();
                    }
                });
            }
        });
        let mut seen = 0;
        let mut port = 0;
        while let Some(out) = peer.recv() {
            let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
            assert_eq!((ip.src_addr(), ip.dst_addr()), (EXTERNAL, SERVER));
            port = UdpPacket::new_checked(ip.payload()).unwrap().src_port();
            seen += 1;
        }
        assert_eq!(
            seen,
            2 * N,
            "every datagram of both pairs left, none spoofed"
        );
        // An answer read on pair 1's worker reaches pair 1's RX queue.
        let mut q1 = MockNet::new(&mem1, 256);
        let (mut rx1, _) = q1.queues(false);
        q1.post_rx(&[2048]);
        assert!(peer.send(&testing::udp_packet(SERVER, 7, EXTERNAL, port, b"back")));
        w1.on_rx_ready(&net, &mem1, &mut rx1, &host, true, NOW)
            .unwrap();
        let mut scratch = Vec::new();
        let (_, got) = q1.rx_frame(HDR, &mut scratch).expect("the answer");
        assert_eq!(&got[..6], &ma.0[..]);
        assert_eq!(&got[got.len() - 4..], b"back");
        net.with_network(|n| {
            let stats = n.stats(a).unwrap();
            assert_eq!(stats.tx_frames, 2 + 2 * u64::from(N), "{stats:?}");
            assert_eq!(stats.rx_frames, 3, "{stats:?}");
            let pair = |p| n.pair_stats(a, p).map(|s| (s.tx_frames, s.rx_frames));
            assert_eq!(
                (pair(0), pair(1)),
                (Some((2 + u64::from(N), 2)), Some((u64::from(N), 1)))
            );
        });
        // Back to one pair: pair 1's worker is refused.
        net.with_network(|n| n.set_queue_pairs(a, 1)).unwrap();
        let e = w1.on_rx_ready(&net, &mem1, &mut rx1, &host, true, NOW);
        assert!(matches!(e, Err(Error::PairNotInUse(1))), "{e:?}");
    }

    fn dhcp(mac: MacAddr, ip: Ipv4Addr) -> [Vec<u8>; 2] {
        use dhcproto::v4::{DhcpOption, Message, MessageType};
        let u = Ipv4Addr::UNSPECIFIED;
        let msg = |kind, opts: &[DhcpOption]| {
            let mut m = Message::new_with_id(7, u, u, u, u, &mac.0);
            m.opts_mut().insert(DhcpOption::MessageType(kind));
            for o in opts {
                m.opts_mut().insert(o.clone());
            }
            crate::testing::dhcp_frame(mac, &m)
        };
        [
            msg(MessageType::Discover, &[]),
            msg(
                MessageType::Request,
                &[
                    DhcpOption::ServerIdentifier(crate::testing::GATEWAY),
                    DhcpOption::RequestedIpAddress(ip),
                ],
            ),
        ]
    }

    /// Switched frames move by buffer between ports whose batches have buffers of one size
    /// and are copied between ports that negotiated differently (one takes 64 KiB
    /// super-frames, the other not): every frame reaches its port intact either way, and
    /// each port's batches keep buffers of their own size.
    #[test]
    fn frames_reach_ports_that_negotiated_differently_moved_or_copied() {
        use crate::testing::{self, MockNet};
        use crate::{OFFERED_FEATURES, OFFLOAD_FEATURES};
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(256).unwrap();
        let config = BridgeConfig {
            offloads: true,
            ..BridgeConfig::default()
        };
        let mut net = Network::new(config, 4).unwrap();
        let macs = [mac(0x56), mac(0x57), mac(0x58)];
        let ports = macs.map(|m| net.attach(m).unwrap());
        let ips = ports.map(|p| net.address_of(p).unwrap());
        let mems = [(); 3].map(|()| testing::guest_memory());
        let mut qs: Vec<_> = mems.iter().map(|m| MockNet::new(m, 256)).collect();
        let mut queues: Vec<_> = qs.iter().map(|q| q.queues(false)).collect();
        // Ports 0 and 2 take super-frames, port 1 nothing beyond the basics.
        let features = [
            OFFERED_FEATURES | OFFLOAD_FEATURES,
            OFFERED_FEATURES,
            OFFERED_FEATURES | OFFLOAD_FEATURES,
        ];
        for k in 0..3 {
            net.ack_features(ports[k], features[k], &host);
        }
        let sizes = ports.map(|p| net.port(p).unwrap().replies.buf_size());
        assert!(sizes[0] == sizes[2] && sizes[1] < sizes[0], "{sizes:?}");
        let mut scratch = Vec::new();
        for k in 0..3 {
            for f in dhcp(macs[k], ips[k]) {
                qs[k].send_frame(HDR, &f, &[]);
            }
            for _ in 0..4 {
                qs[k].post_rx(&[65600]);
            }
            let (rx, tx) = &mut queues[k];
            net.on_tx_kick(ports[k], &mems[k], tx, Some(rx), &host, NOW)
                .unwrap();
            while qs[k].rx_frame(HDR, &mut scratch).is_some() {}
        }
        // 0 → 2 (alike: moved), 0 → 1 and 1 → 0 (different: copied), 2 → 0, several
        // rounds so that buffers that moved are used again.
        for round in 0..3u8 {
            for (from, to) in [(0usize, 2usize), (0, 1), (1, 0), (2, 0)] {
                let payload = [b'a' + round, from as u8, to as u8, 0x5a];
                let mut f =
                    testing::udp_frame(macs[from], ips[from], 5000, ips[to], 6000, &payload);
                f[..6].copy_from_slice(&macs[to].0);
                qs[from].send_frame(HDR, &f, &[]);
                let (rx, tx) = &mut queues[from];
                net.on_tx_kick(ports[from], &mems[from], tx, Some(rx), &host, NOW)
                    .unwrap();
                assert!(net.pending(ports[to]), "{from} → {to}");
                qs[to].post_rx(&[65600]);
                let (rx, _) = &mut queues[to];
                net.on_rx_ready(ports[to], &mems[to], rx, &host, false, NOW)
                    .unwrap();
                let (_, got) = qs[to].rx_frame(HDR, &mut scratch).expect("the frame");
                assert_eq!(
                    (&got[..6], &got[6..12]),
                    (&macs[to].0[..], &macs[from].0[..])
                );
                assert_eq!(&got[got.len() - 4..], &payload, "{from} → {to}");
            }
        }
        assert!(peer.recv().is_none(), "nothing reached the host");
        assert_eq!(net.stats(ports[0]).unwrap().switched, 6);
        for (k, &p) in ports.iter().enumerate() {
            let inbox = &mut net.port_mut(p).unwrap().replies;
            inbox.clear();
            assert!(
                inbox.free_bufs(0).all(|b| b.len() >= sizes[k]),
                "port {k}'s inbox kept buffers of its size"
            );
        }
    }

    /// Two guests on mock queues, leased (.2 and .3), then: ARP for the other answered with
    /// its MAC; a frame to it (its MAC, or the gateway's) switched to its RX queue and never
    /// to the host; a spoofed source dropped; a guest with no RX buffers: its inbox holds a
    /// batch and the rest is counted at the sender.
    #[test]
    fn guests_reach_each_other_through_the_switch_and_overflow_is_counted() {
        use crate::testing::{self, GATEWAY_MAC, MockNet};
        use ::wire::{ArpPacket, EthernetFrame, arp};
        let (host, peer) = MemoryLink::pair(256).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
        let (ma, mb) = (mac(0x56), mac(0x57));
        let (a, b) = (net.attach(ma).unwrap(), net.attach(mb).unwrap());
        let (ia, ib) = (net.address_of(a).unwrap(), net.address_of(b).unwrap());
        let (mem_a, mem_b) = (testing::guest_memory(), testing::guest_memory());
        let (mut qa, mut qb) = (MockNet::new(&mem_a, 256), MockNet::new(&mem_b, 256));
        let (mut rxa, mut txa) = qa.queues(false);
        let (mut rxb, mut txb) = qb.queues(false);
        assert_eq!(net.ack_features(a, FEATURES, &host), FEATURES);
        assert_eq!(net.ack_features(b, FEATURES, &host), FEATURES);
        for _ in 0..8 {
            qa.post_rx(&[2048]);
        }
        for (m, q, ip) in [(ma, &mut qa, ia), (mb, &mut qb, ib)] {
            for f in dhcp(m, ip) {
                q.send_frame(HDR, &f, &[]);
            }
        }
        net.on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        net.on_tx_kick(b, &mem_b, &mut txb, Some(&mut rxb), &host, NOW)
            .unwrap();
        let mut scratch = Vec::new();
        while qa.rx_frame(HDR, &mut scratch).is_some() {}
        assert!(net.pending(b), "b's DHCP answers wait for RX buffers");
        for _ in 0..2 {
            qb.post_rx(&[2048]);
        }
        net.on_rx_ready(b, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        while qb.rx_frame(HDR, &mut scratch).is_some() {}
        assert!(!net.pending(b));

        // ARP for b: answered with b's MAC.
        qa.send_frame(HDR, &testing::arp_request(ma, ia, ib), &[]);
        net.on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        let (_, reply) = qa.rx_frame(HDR, &mut scratch).expect("an ARP reply");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.operation(), arp::REPLY);
        assert_eq!(
            (arp.sender_hardware_addr(), arp.sender_protocol_addr()),
            (mb, ib)
        );

        // To b's MAC, and routed through the gateway's: both reach b, never the host.
        let mut direct = testing::udp_frame(ma, ia, 5000, ib, 6000, b"to b");
        let mut routed = testing::udp_frame(ma, ia, 5000, ib, 6000, b"via gw");
        direct[..6].copy_from_slice(&mb.0);
        routed[..6].copy_from_slice(&GATEWAY_MAC.0);
        qa.send_frame(HDR, &direct, &[]);
        qa.send_frame(HDR, &routed, &[]);
        net.on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        assert!(net.pending(b));
        for _ in 0..2 {
            qb.post_rx(&[2048]);
        }
        net.on_rx_ready(b, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        let (_, got) = qb.rx_frame(HDR, &mut scratch).expect("the direct frame");
        assert_eq!((&got[..6], &got[6..12]), (&mb.0[..], &ma.0[..]));
        assert_eq!(&got[got.len() - 4..], b"to b");
        let (_, got) = qb.rx_frame(HDR, &mut scratch).expect("the routed frame");
        assert_eq!((&got[..6], &got[6..12]), (&mb.0[..], &GATEWAY_MAC.0[..]));
        assert_eq!(net.stats(a).unwrap().switched, 2);
        assert!(peer.recv().is_none(), "nothing reached the host");

        // a with b's address: dropped at a.
        let spoofed = {
            let mut f = testing::udp_frame(ma, ib, 5000, ib, 6000, b"spoof");
            f[..6].copy_from_slice(&mb.0);
            f
        };
        qa.send_frame(HDR, &spoofed, &[]);
        net.on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        assert!(!net.pending(b));
        assert_eq!(net.stats(a).unwrap().drops_of(DropCause::SpoofedIp), 1);

        // b posts no buffers: its inbox (two batches) takes a batch, half full, and a's kick
        // stops there (tx_more: the driver delivers b's inbox first); a's next kick, a batch
        // more, fills it, still without a drop; b still takes nothing: the rest is counted
        // at a, and a goes on.
        let batch = net.config().batch_size;
        for _ in 0..2 * batch + 10 {
            qa.send_frame(HDR, &direct, &[]);
        }
        for kick in 1..=2 {
            let n = net
                .on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
                .unwrap();
            assert!(n.tx_more && n.tx_waits, "kick {kick}: {n:?}");
            let sa = net.stats(a).unwrap();
            assert_eq!(sa.switched, 2 + (kick * batch) as u64);
            assert_eq!(sa.drops_of(DropCause::LocalQueueFull), 0);
        }
        let n = net
            .on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        assert!(!n.tx_more && !n.tx_waits, "{n:?}");
        let sa = net.stats(a).unwrap();
        assert_eq!(sa.drops_of(DropCause::LocalQueueFull), 10);
        assert_eq!(
            qa.tx_used().len(),
            6 + 2 * batch + 10,
            "every chain went back"
        );
        // b's full inbox holds back none of a's traffic to anyone else: a frame for the host
        // goes out, and the kick does not say to wait.
        let out = testing::udp_frame(ma, ia, 5000, crate::testing::SERVER, 9, b"out");
        while peer.recv().is_some() {}
        qa.send_frame(HDR, &out, &[]);
        let n = net
            .on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        assert!(!n.tx_more && !n.tx_waits, "{n:?}");
        assert!(peer.recv().is_some(), "a's frame reached the host");
        assert!(net.pending(b));
    }

    /// The ports [`Network::wake_after`] hands over after an event of `port`'s pair `pair`,
    /// each driver taking its wake-up at once.
    fn woke(net: &mut Network, port: PortId, pair: usize) -> Vec<PortId> {
        let mut v = Vec::new();
        net.wake_after(port, pair, |p| v.push(p));
        for &p in &v {
            net.took_wakeup(p);
        }
        v
    }

    /// A kick that ended for b's half-full inbox parks a on b (not on c, whose inbox waits
    /// too): c's delivery and a's own events leave it parked, b's releases it once, and a
    /// port that leaves releases whoever waits for it. The wake-ups: every other port whose
    /// inbox waits, the port itself after another pair's event, each once until taken.
    #[test]
    fn a_parked_port_is_released_by_the_delivery_of_the_inbox_it_filled() {
        use crate::testing::{self, MockNet};
        let (host, _peer) = MemoryLink::pair(256).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
        let (ma, mb, mc) = (mac(0x56), mac(0x57), mac(0x58));
        let (a, b, c) = (
            net.attach(ma).unwrap(),
            net.attach(mb).unwrap(),
            net.attach(mc).unwrap(),
        );
        let (ia, ib, ic) = (
            net.address_of(a).unwrap(),
            net.address_of(b).unwrap(),
            net.address_of(c).unwrap(),
        );
        let mems = [(); 3].map(|()| testing::guest_memory());
        let mut qa = MockNet::new(&mems[0], 256);
        let mut qb = MockNet::new(&mems[1], 256);
        let mut qc = MockNet::new(&mems[2], 256);
        let (mut rxa, mut txa) = qa.queues(false);
        let (mut rxb, mut txb) = qb.queues(false);
        let (mut rxc, mut txc) = qc.queues(false);
        for p in [a, b, c] {
            assert_eq!(net.ack_features(p, FEATURES, &host), FEATURES);
        }
        for _ in 0..8 {
            qa.post_rx(&[2048]);
        }
        for (m, q, ip) in [(ma, &mut qa, ia), (mb, &mut qb, ib), (mc, &mut qc, ic)] {
            for f in dhcp(m, ip) {
                q.send_frame(HDR, &f, &[]);
            }
        }
        net.on_tx_kick(a, &mems[0], &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        net.on_tx_kick(b, &mems[1], &mut txb, Some(&mut rxb), &host, NOW)
            .unwrap();
        net.on_tx_kick(c, &mems[2], &mut txc, Some(&mut rxc), &host, NOW)
            .unwrap();
        assert!(!net.park(a), "no kick ended early: nothing to wait for");
        for _ in 0..2 {
            qb.post_rx(&[2048]);
        }
        net.on_rx_ready(b, &mems[1], &mut rxb, &host, false, NOW)
            .unwrap();
        assert!(!net.pending(b) && !net.pending(a) && net.pending(c));

        // a fills b's inbox half: its kick ends early, and a parks on b.
        let mut direct = testing::udp_frame(ma, ia, 5000, ib, 6000, b"to b");
        direct[..6].copy_from_slice(&mb.0);
        for _ in 0..net.config().batch_size {
            qa.send_frame(HDR, &direct, &[]);
        }
        let n = net
            .on_tx_kick(a, &mems[0], &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        assert!(n.tx_waits, "{n:?}");
        // b and c have frames waiting (c its DHCP answers); handed over once until taken.
        let mut twice = Vec::new();
        net.wake_after(a, 0, |p| twice.push(p));
        net.wake_after(a, 0, |p| twice.push(p));
        assert_eq!(twice, [b, c]);
        net.took_wakeup(b);
        assert_eq!(woke(&mut net, a, 0), [b]);
        net.took_wakeup(c);
        // An event of another pair of c: its own inbox is pair 0's, so c is handed over too.
        assert_eq!(woke(&mut net, c, 1), [b, c]);
        assert_eq!(woke(&mut net, c, 0), [b]);
        assert!(net.park(a) && net.parked(a), "b's inbox waits: a parks");
        assert!(net.park(a) && net.parked(a), "a second call: still parked");
        assert_eq!(net.stats(a).unwrap().parked, 1);
        // a's own event, and c delivering its inbox, release nobody.
        net.on_rx_ready(a, &mems[0], &mut rxa, &host, false, NOW)
            .unwrap();
        let mut released = woke(&mut net, a, 0);
        for _ in 0..2 {
            qc.post_rx(&[2048]);
        }
        net.on_rx_ready(c, &mems[2], &mut rxc, &host, false, NOW)
            .unwrap();
        assert!(!net.pending(c));
        released.extend(woke(&mut net, c, 0));
        // b's event that leaves its inbox waiting (no buffers) releases nobody either.
        net.on_rx_ready(b, &mems[1], &mut rxb, &host, false, NOW)
            .unwrap();
        released.extend(woke(&mut net, b, 0));
        assert!(!released.contains(&a) && net.parked(a), "{released:?}");
        // b delivers: a is released, once.
        for _ in 0..net.config().batch_size {
            qb.post_rx(&[2048]);
        }
        net.on_rx_ready(b, &mems[1], &mut rxb, &host, false, NOW)
            .unwrap();
        assert!(!net.pending(b));
        let mut released = woke(&mut net, b, 0);
        released.extend(woke(&mut net, b, 0));
        assert_eq!(released, [a]);
        assert!(!net.parked(a));

        // Parked again on b; the wait runs out (unpark); parked again, then b leaves.
        for _ in 0..net.config().batch_size {
            qa.send_frame(HDR, &direct, &[]);
        }
        let mut fill = |net: &mut Network| {
            let n = net
                .on_tx_kick(a, &mems[0], &mut txa, Some(&mut rxa), &host, NOW)
                .unwrap();
            assert!(n.tx_waits, "{n:?}");
            assert!(net.park(a));
        };
        fill(&mut net);
        net.unpark(a);
        assert!(!net.parked(a));
        let sa = net.stats(a).unwrap();
        assert_eq!((sa.parked, sa.park_timeouts), (2, 1));
        for _ in 0..net.config().batch_size {
            qb.post_rx(&[2048]);
        }
        net.on_rx_ready(b, &mems[1], &mut rxb, &host, false, NOW)
            .unwrap();
        assert!(!net.pending(b));
        for _ in 0..net.config().batch_size {
            qa.send_frame(HDR, &direct, &[]);
        }
        fill(&mut net);
        assert!(net.detach(b));
        assert!(!net.parked(a), "b left: a waits for nobody");
        assert_eq!(woke(&mut net, c, 0), []);
        let sa = net.stats(a).unwrap();
        assert_eq!(
            (sa.parked, sa.park_timeouts),
            (3, 1),
            "a release is no time-out"
        );
    }

    /// Two guests served by `PairWorker`s, b with two queue pairs: b's pair-0 worker takes the
    /// inbox out of the lock; what b's ring has no room for goes back to the port, and pair 0
    /// then delivers it first, in order, before frames switched later; b's pair 1 delivers
    /// none of them (the inbox is pair 0's: a flow's frames on one RX queue); nothing dropped.
    #[test]
    fn a_workers_inbox_taken_out_of_the_lock_keeps_its_order_when_the_guest_is_short_of_buffers() {
        use crate::testing::{self, MockNet};
        use crate::{NetworkLock, PairWorker};
        use std::sync::Mutex;
        let (host, _peer) = MemoryLink::pair(256).unwrap();
        let (mut net, [(a, ma, ia), (b, mb, ib)]) = two_negotiated_ports(&host);
        net.set_queue_pairs(b, 2).unwrap();
        let net = Mutex::new(net);
        let (mem_a, mem_b, mem_b1) = (
            testing::guest_memory(),
            testing::guest_memory(),
            testing::guest_memory(),
        );
        let (mut qa, mut qb) = (MockNet::new(&mem_a, 256), MockNet::new(&mem_b, 256));
        let mut qb1 = MockNet::new(&mem_b1, 256);
        let (mut rxa, mut txa) = qa.queues(false);
        let (mut rxb, mut txb) = qb.queues(false);
        let (mut rxb1, _) = qb1.queues(false);
        let (mut wa, mut wb) = (PairWorker::new(a, 0), PairWorker::new(b, 0));
        let mut wb1 = PairWorker::new(b, 1);
        let mut scratch = Vec::new();
        lease_through_workers(
            &net,
            &host,
            [
                (&mut wa, &mem_a, &mut qa, &mut rxa, &mut txa, ma, ia),
                (&mut wb, &mem_b, &mut qb, &mut rxb, &mut txb, mb, ib),
            ],
        );

        let frame = |k: usize| {
            let mut f = testing::udp_frame(ma, ia, 5000, ib, 6000, format!("{k:04}").as_bytes());
            f[..6].copy_from_slice(&mb.0);
            f
        };
        let mut send = |range: std::ops::Range<usize>| {
            for k in range {
                qa.send_frame(HDR, &frame(k), &[]);
            }
            wa.on_tx_kick(&net, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
                .unwrap()
        };
        let mut received = |q: &mut MockNet| {
            let mut got = Vec::new();
            while let Some((_, f)) = q.rx_frame(HDR, &mut scratch) {
                got.push(String::from_utf8_lossy(&f[f.len() - 4..]).into_owned());
            }
            got
        };
        let names = |r: std::ops::Range<usize>| r.map(|k| format!("{k:04}")).collect::<Vec<_>>();
        // 12 frames for b; pair 0 has room for 3: it takes 3 and gives the rest back.
        send(0..12);
        for _ in 0..3 {
            qb.post_rx(&[2048]);
        }
        wb.on_rx_ready(&net, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        assert_eq!(received(&mut qb), names(0..3));
        assert!(
            net.with_network(|n| n.pending(b)),
            "the 9 left went back to the port's inbox"
        );
        // 8 more; pair 1, with room, delivers none: its event hands b's pair 0 the wake-up.
        send(12..20);
        for _ in 0..40 {
            qb1.post_rx(&[2048]);
        }
        wb1.on_rx_ready(&net, &mem_b1, &mut rxb1, &host, false, NOW)
            .unwrap();
        assert_eq!(received(&mut qb1), names(0..0), "the inbox is pair 0's");
        net.with_network(|n| assert_eq!(woke(n, b, 1), [b]));
        // Pair 0, with room, delivers the 9 first, then the 8, in order.
        for _ in 0..17 {
            qb.post_rx(&[2048]);
        }
        wb.on_rx_ready(&net, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        assert_eq!(received(&mut qb), names(3..20), "in order");
        // Pair 0 short again while nothing newer waits: the rest goes back, pair 0 delivers it
        // when it has room.
        send(20..30);
        qb.post_rx(&[2048]);
        wb.on_rx_ready(&net, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        for _ in 0..20 {
            qb.post_rx(&[2048]);
        }
        wb.on_rx_ready(&net, &mem_b, &mut rxb, &host, false, NOW)
            .unwrap();
        assert_eq!(received(&mut qb), names(20..30));
        net.with_network(|n| {
            assert!(!n.pending(b));
            let sa = n.stats(a).unwrap();
            assert_eq!(sa.switched, 30);
            assert_eq!(sa.drops_of(DropCause::LocalQueueFull), 0, "{sa:?}");
            assert_eq!(n.stats(b).unwrap().rx_frames, 2 + 30);
        });
    }

    /// Ports attached after `set_max_queue_pairs(2)` offer MQ and the control queue (and say
    /// 2 in their config space), earlier ones not; the driver's `VQ_PAIRS_SET 2` through a
    /// `ControlQueue` sets the port's pairs, `VQ_PAIRS_SET 3` is refused and changes nothing.
    #[test]
    fn ports_offer_queue_pairs_that_the_control_queue_sets() {
        use crate::ctrl::{VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_OK};
        use crate::{ControlCommand, ControlQueue, MQ_FEATURES};
        use virtio_queue::Queue;
        use virtio_queue::desc::RawDescriptor;
        use virtio_queue::desc::split::Descriptor;
        use virtio_queue::mock::MockSplitQueue;
        use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
        let (host, _peer) = MemoryLink::pair(16).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 2).unwrap();
        let before = net.attach(mac(0x56)).unwrap();
        net.set_max_queue_pairs(2);
        let a = net.attach(mac(0x57)).unwrap();
        assert_eq!(net.device_features(before).unwrap() & MQ_FEATURES, 0);
        assert_eq!(net.device_features(a).unwrap() & MQ_FEATURES, MQ_FEATURES);
        let space = net.config_space(a).unwrap();
        assert_eq!(
            u16::from_le_bytes([space[8], space[9]]),
            2,
            "max_virtqueue_pairs"
        );
        let acked = net.ack_features(a, FEATURES | MQ_FEATURES, &host);
        assert_eq!(acked & MQ_FEATURES, MQ_FEATURES);

        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().unwrap();
        let set = |at: u16, n: u16| {
            let data = 0x10_0000 + u64::from(at) * 0x100;
            let [lo, hi] = n.to_le_bytes();
            let cmd = [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, lo, hi];
            mem.write_slice(&cmd, GuestAddress(data)).unwrap();
            let desc = |addr, len, flags, next| {
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            };
            mq.add_desc_chains(&[desc(data, 4, 1, at + 1), desc(data + 0x80, 1, 2, 0)], at)
                .unwrap();
            data + 0x80
        };
        let acks = [set(0, 2), set(2, 3)];
        let mut ctrl = ControlQueue::new(2);
        ctrl.set_features(acked);
        ctrl.process(&mem, &mut q, |ControlCommand::QueuePairs(n)| {
            net.set_queue_pairs(a, usize::from(n)).is_ok()
        })
        .unwrap();
        let got: Vec<u8> = acks
            .iter()
            .map(|&at| mem.read_obj::<u8>(GuestAddress(at)).unwrap())
            .collect();
        assert_eq!(got, [VIRTIO_NET_OK, crate::ctrl::VIRTIO_NET_ERR]);
        assert_eq!(net.queue_pairs(a), Some(2));
        assert_eq!(net.queue_pairs(before), Some(1));
    }

    /// A port with two queue pairs (each on queues of its own): the lease taken on pair 0
    /// holds on pair 1 (one gateway per port, not per pair: pair 1's frame from the leased
    /// address goes out through the NAT, not `SpoofedIp`), and the answer read from the host
    /// link by pair 1 reaches pair 1's RX queue. Pairs not in use are errors.
    #[test]
    fn queue_pairs_share_the_guests_lease_and_each_reads_the_host_link() {
        use crate::testing::{self, EXTERNAL, MockNet, SERVER};
        use ::wire::{Ipv4Packet, UdpPacket};
        let (host, peer) = MemoryLink::pair(256).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 2).unwrap();
        let ma = mac(0x56);
        let a = net.attach(ma).unwrap();
        let ia = net.address_of(a).unwrap();
        assert_eq!(net.ack_features(a, FEATURES, &host), FEATURES);
        assert_eq!(net.queue_pairs(a), Some(1));
        assert!(net.set_queue_pairs(a, 0).is_err());
        assert!(net.set_queue_pairs(a, 17).is_err());
        net.set_queue_pairs(a, 2).unwrap();
        assert_eq!(net.queue_pairs(a), Some(2));
        // One guest memory per pair here: each MockNet lays its rings out from the start.
        let (mem0, mem1) = (testing::guest_memory(), testing::guest_memory());
        let (mut q0, mut q1) = (MockNet::new(&mem0, 256), MockNet::new(&mem1, 256));
        let (mut rx0, mut tx0) = q0.queues(false);
        let (mut rx1, mut tx1) = q1.queues(false);
        for q in [&mut q0, &mut q1] {
            for _ in 0..8 {
                q.post_rx(&[2048]);
            }
        }
        for f in dhcp(ma, ia) {
            q0.send_frame(HDR, &f, &[]);
        }
        net.on_pair_tx_kick(a, 0, &mem0, &mut tx0, Some(&mut rx0), &host, NOW)
            .unwrap();
        let mut scratch = Vec::new();
        let mut answers = 0;
        while q0.rx_frame(HDR, &mut scratch).is_some() {
            answers += 1;
        }
        assert_eq!(answers, 2, "offer and ack on pair 0");

        q1.send_frame(
            HDR,
            &testing::udp_frame(ma, ia, 5000, SERVER, 7, b"pair 1"),
            &[],
        );
        net.on_pair_tx_kick(a, 1, &mem1, &mut tx1, Some(&mut rx1), &host, NOW)
            .unwrap();
        let stats = net.stats(a).unwrap();
        assert_eq!(stats.drops_of(DropCause::SpoofedIp), 0, "{stats:?}");
        let out = peer.recv().expect("pair 1's datagram on the host link");
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        assert_eq!((ip.src_addr(), ip.dst_addr()), (EXTERNAL, SERVER));
        let port = UdpPacket::new_checked(ip.payload()).unwrap().src_port();

        assert!(peer.send(&testing::udp_packet(SERVER, 7, EXTERNAL, port, b"back")));
        net.on_pair_rx_ready(a, 1, &mem1, &mut rx1, &host, true, NOW)
            .unwrap();
        let (_, got) = q1
            .rx_frame(HDR, &mut scratch)
            .expect("the answer on pair 1");
        assert_eq!(&got[..6], &ma.0[..]);
        assert_eq!(&got[got.len() - 4..], b"back");
        assert!(
            q0.rx_frame(HDR, &mut scratch).is_none(),
            "nothing on pair 0"
        );
        // DHCP's two frames in and two answers out on pair 0, one each way on pair 1.
        let pair = |p| net.pair_stats(a, p).map(|s| (s.tx_frames, s.rx_frames));
        assert_eq!(
            (pair(0), pair(1), pair(2)),
            (Some((2, 2)), Some((1, 1)), None)
        );

        // Back to one pair: pair 1 is not in use.
        net.set_queue_pairs(a, 1).unwrap();
        let e = net.on_pair_tx_kick(a, 1, &mem1, &mut tx1, Some(&mut rx1), &host, NOW);
        assert!(matches!(e, Err(Error::PairNotInUse(1))), "{e:?}");
    }

    /// Two ports served by `PairWorker`s read one host link. A worker with host reads off
    /// leaves the link alone and remembers it is readable; a port's own reads waiting for RX
    /// buffers go before what another port read for it later (through its inbox), so a flow
    /// keeps its order when the link changes hands.
    #[test]
    fn a_ports_own_host_reads_go_before_what_another_port_read_for_it_later() {
        use crate::testing::{self, EXTERNAL, MockNet, SERVER};
        use crate::{NetworkLock, PairWorker};
        use ::wire::{Ipv4Packet, UdpPacket};
        use std::sync::Mutex;
        let (host, peer) = MemoryLink::pair(256).unwrap();
        let (net, [(a, ma, ia), (b, mb, ib)]) = two_negotiated_ports(&host);
        let net = Mutex::new(net);
        let (mem_a, mem_b) = (testing::guest_memory(), testing::guest_memory());
        let (mut qa, mut qb) = (MockNet::new(&mem_a, 256), MockNet::new(&mem_b, 256));
        let (mut rxa, mut txa) = qa.queues(false);
        let (mut rxb, mut txb) = qb.queues(false);
        let (mut wa, mut wb) = (PairWorker::new(a, 0), PairWorker::new(b, 0));
        let mut scratch = Vec::new();
        lease_through_workers(
            &net,
            &host,
            [
                (&mut wa, &mem_a, &mut qa, &mut rxa, &mut txa, ma, ia),
                (&mut wb, &mem_b, &mut qb, &mut rxb, &mut txb, mb, ib),
            ],
        );
        // a's flow to the server, for the answers to come back through the NAT.
        qa.send_frame(
            HDR,
            &testing::udp_frame(ma, ia, 5000, SERVER, 7, b"out"),
            &[],
        );
        wa.on_tx_kick(&net, &mem_a, &mut txa, Some(&mut rxa), &host, NOW)
            .unwrap();
        let out = peer.recv().expect("a's datagram on the host link");
        let ip = Ipv4Packet::new_checked(&out[..]).unwrap();
        let port = UdpPacket::new_checked(ip.payload()).unwrap().src_port();
        let answer = |k: u8| testing::udp_packet(SERVER, 7, EXTERNAL, port, &[b'k', b'0' + k]);
        let got = |q: &mut MockNet, scratch: &mut Vec<_>| {
            let mut v = Vec::new();
            while let Some((_, f)) = q.rx_frame(HDR, scratch) {
                v.push(f[f.len() - 2..].to_vec());
            }
            v
        };

        // Reads off: a leaves the link alone and remembers it is readable.
        for k in 1..=3 {
            assert!(peer.send(&answer(k)));
        }
        qa.post_rx(&[2048]);
        wa.set_host_reads(false);
        wa.on_rx_ready(&net, &mem_a, &mut rxa, &host, true, NOW)
            .unwrap();
        assert_eq!(host.pending(), 3, "not read");
        assert!(wa.host_pending());
        assert!(got(&mut qa, &mut scratch).is_empty());
        // Reads on: a reads all three and has room for one.
        wa.set_host_reads(true);
        wa.on_rx_ready(&net, &mem_a, &mut rxa, &host, false, NOW)
            .unwrap();
        assert_eq!(host.pending(), 0);
        assert_eq!(got(&mut qa, &mut scratch), [b"k1"]);
        // b reads the fourth answer (a's): it waits in a's inbox.
        assert!(peer.send(&answer(4)));
        wb.on_rx_ready(&net, &mem_b, &mut rxb, &host, true, NOW)
            .unwrap();
        assert!(net.with_network(|n| n.pending(a)), "k4 in a's inbox");
        // a has room: its own reads first, then its inbox.
        for _ in 0..8 {
            qa.post_rx(&[2048]);
        }
        wa.on_rx_ready(&net, &mem_a, &mut rxa, &host, false, NOW)
            .unwrap();
        assert_eq!(got(&mut qa, &mut scratch), [b"k2", b"k3", b"k4"]);
        assert!(got(&mut qb, &mut scratch).is_empty());
    }

    /// A network with the ports of MACs :56 and :57 (port, MAC, address), both negotiated
    /// with [`FEATURES`] on `host`.
    fn two_negotiated_ports(host: &MemoryLink) -> (Network, [(PortId, MacAddr, Ipv4Addr); 2]) {
        let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
        let ports = [0x56, 0x57].map(|m| {
            let p = net.attach(mac(m)).unwrap();
            assert_eq!(net.ack_features(p, FEATURES, host), FEATURES);
            (p, mac(m), net.address_of(p).unwrap())
        });
        (net, ports)
    }

    /// A guest served by a `PairWorker` (pair 0) in a test: its worker, memory, mock driver,
    /// RX and TX queues, MAC and address.
    type WorkerGuest<'a, 'm> = (
        &'a mut crate::PairWorker,
        &'a vm_memory::GuestMemoryMmap,
        &'a mut crate::testing::MockNet<'m>,
        &'a mut virtio_queue::Queue,
        &'a mut virtio_queue::Queue,
        MacAddr,
        Ipv4Addr,
    );

    /// Each guest posts two RX buffers and takes its lease through its worker; the answers
    /// are read off its queue.
    fn lease_through_workers(
        net: &std::sync::Mutex<Network>,
        host: &MemoryLink,
        mut guests: [WorkerGuest<'_, '_>; 2],
    ) {
        let mut scratch = Vec::new();
        for (_, _, q, _, _, m, ip) in &mut guests {
            for _ in 0..2 {
                q.post_rx(&[2048]);
            }
            for f in dhcp(*m, *ip) {
                q.send_frame(HDR, &f, &[]);
            }
        }
        for (w, mem, _, rx, tx, _, _) in &mut guests {
            w.on_tx_kick(net, *mem, &mut **tx, Some(&mut **rx), host, NOW)
                .unwrap();
        }
        for (_, _, q, _, _, _, _) in &mut guests {
            while q.rx_frame(HDR, &mut scratch).is_some() {}
        }
    }

    /// Ports for the MACs :56, :57, :58.
    fn three_ports(net: &mut Network) -> [PortId; 3] {
        [0x56, 0x57, 0x58].map(|m| net.attach(mac(m)).unwrap())
    }

    /// Negotiates `ports` (port i's guest on `qs[i]`) and posts 8 RX buffers each.
    fn negotiate(
        net: &mut Network,
        host: &MemoryLink,
        ports: &[PortId],
        qs: &mut [crate::testing::MockNet<'_>],
    ) {
        for (&port, q) in ports.iter().zip(qs) {
            assert_eq!(net.ack_features(port, FEATURES, host), FEATURES);
            for _ in 0..8 {
                q.post_rx(&[2048]);
            }
        }
    }

    /// A guest using another MAC than its port's (a QEMU guest's own): the port follows it
    /// once its DHCP comes from that MAC, the other guests reach it there (ARP, switched
    /// frames), the MAC keeps the address; a guest taking another port's MAC is refused.
    #[test]
    fn a_port_follows_its_guests_mac_but_never_takes_another_ports() {
        use crate::testing::{self, MockNet};
        use ::wire::{ArpPacket, EthernetFrame};
        let (host, _peer) = MemoryLink::pair(256).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
        let own = mac(0x99);
        let [a, b, c] = three_ports(&mut net);
        let (ia, ib) = (net.address_of(a).unwrap(), net.address_of(b).unwrap());
        let mems = [(); 3].map(|()| testing::guest_memory());
        let mut qs: Vec<MockNet<'_>> = mems.iter().map(|m| MockNet::new(m, 256)).collect();
        let mut queues: Vec<_> = qs.iter_mut().map(|q| q.queues(false)).collect();
        negotiate(&mut net, &host, &[a, b, c], &mut qs);
        let kick =
            |net: &mut Network, qs: &mut [MockNet<'_>], queues: &mut [_], i: usize, f: &[u8]| {
                let port = [a, b, c][i];
                qs[i].send_frame(HDR, f, &[]);
                let (rx, tx) = &mut queues[i];
                net.on_tx_kick(port, &mems[i], tx, Some(rx), &host, NOW)
                    .unwrap();
                net.on_rx_ready(port, &mems[i], rx, &host, false, NOW)
                    .unwrap();
            };
        let mut scratch = Vec::new();
        for f in dhcp(own, ia) {
            kick(&mut net, &mut qs, &mut queues, 0, &f);
        }
        assert_eq!(net.switch().mac_of(a), Some(own));
        assert_eq!(net.gateway(a).map(crate::Gateway::guest_mac), Some(own));
        while qs[0].rx_frame(HDR, &mut scratch).is_some() {}
        for f in dhcp(mac(0x57), ib) {
            kick(&mut net, &mut qs, &mut queues, 1, &f);
        }
        while qs[1].rx_frame(HDR, &mut scratch).is_some() {}
        // b asks for a: answered with the MAC a's guest uses; b's frame reaches a there.
        kick(
            &mut net,
            &mut qs,
            &mut queues,
            1,
            &testing::arp_request(mac(0x57), ib, ia),
        );
        let (_, reply) = qs[1].rx_frame(HDR, &mut scratch).expect("an ARP reply");
        let eth = EthernetFrame::new_checked(&reply[..]).unwrap();
        let arp = ArpPacket::new_checked(eth.payload()).unwrap();
        assert_eq!(arp.sender_hardware_addr(), own);
        let mut f = testing::udp_frame(mac(0x57), ib, 5000, ia, 6000, b"to a");
        f[..6].copy_from_slice(&own.0);
        kick(&mut net, &mut qs, &mut queues, 1, &f);
        let (rx, _) = &mut queues[0];
        net.on_rx_ready(a, &mems[0], rx, &host, false, NOW).unwrap();
        let (_, got) = qs[0].rx_frame(HDR, &mut scratch).expect("b's frame at a");
        assert_eq!(&got[..6], &own.0[..]);
        assert_eq!(&got[got.len() - 4..], b"to a");
        // c's guest claims b's MAC: refused, c keeps its own, counted.
        let ic = net.address_of(c).unwrap();
        for f in dhcp(mac(0x57), ic) {
            kick(&mut net, &mut qs, &mut queues, 2, &f);
        }
        assert_eq!(net.switch().mac_of(c), Some(mac(0x58)));
        assert_eq!(net.switch().mac_of(b), Some(mac(0x57)));
        assert_eq!(
            net.gateway(c).map(crate::Gateway::guest_mac),
            Some(mac(0x58))
        );
        assert!(net.stats(c).unwrap().drops_of(DropCause::SpoofedMac) >= 1);
        // The guest's MAC keeps its address: a port attached with it later gets a's.
        assert!(net.detach(a));
        let again = net.attach(own).unwrap();
        assert_eq!(net.address_of(again), Some(ia));
    }

    /// Broadcast and multicast between guests: dropped and counted by default; with
    /// `set_guest_multicast`, copied to every other guest with the group MAC, IGMP not.
    #[test]
    fn group_frames_reach_the_other_guests_only_when_the_network_floods() {
        use crate::testing::{self, MockNet};
        for flood in [false, true] {
            let (host, peer) = MemoryLink::pair(256).unwrap();
            let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
            net.set_guest_multicast(flood);
            let ports = three_ports(&mut net);
            let ia = net.address_of(ports[0]).unwrap();
            let mems = [(); 3].map(|()| testing::guest_memory());
            let mut qs: Vec<MockNet<'_>> = mems.iter().map(|m| MockNet::new(m, 256)).collect();
            let mut queues: Vec<_> = qs.iter_mut().map(|q| q.queues(false)).collect();
            negotiate(&mut net, &host, &ports, &mut qs);
            let mut scratch = Vec::new();
            for f in dhcp(mac(0x56), ia) {
                qs[0].send_frame(HDR, &f, &[]);
            }
            let group = MacAddr([0x01, 0, 0x5e, 0, 0, 0xfb]);
            let mut mdns =
                testing::udp_frame(mac(0x56), ia, 5353, ip("224.0.0.251"), 5353, b"mdns");
            mdns[..6].copy_from_slice(&group.0);
            let mut bcast = testing::udp_frame(mac(0x56), ia, 9, ip("192.168.64.255"), 9, b"bcast");
            bcast[..6].copy_from_slice(&[0xff; 6]);
            // The same datagram as IGMP (protocol 2, header checksum fixed): never flooded.
            let mut igmp = mdns.clone();
            igmp[ETH_HLEN + 9] = 2;
            let mut h = ::wire::Ipv4Packet::new_unchecked(&mut igmp[ETH_HLEN..]);
            h.fill_checksum();
            // mDNS over IPv6 from the guest's link-local address.
            let ll: core::net::Ipv6Addr = "fe80::5054:ff:fe12:3456".parse().unwrap();
            let group6 = MacAddr([0x33, 0x33, 0, 0, 0, 0xfb]);
            let mdns6 = testing::udp6_frame(
                (mac(0x56), group6),
                (ll, 5353),
                ("ff02::fb".parse().unwrap(), 5353),
                b"mdn6",
            );
            for f in [&mdns, &bcast, &igmp, &mdns6] {
                qs[0].send_frame(HDR, f, &[]);
            }
            let (rx, tx) = &mut queues[0];
            net.on_tx_kick(ports[0], &mems[0], tx, Some(rx), &host, NOW)
                .unwrap();
            for (i, &port) in ports.iter().enumerate().skip(1) {
                let (rx, _) = &mut queues[i];
                net.on_rx_ready(port, &mems[i], rx, &host, false, NOW)
                    .unwrap();
                let mut got = Vec::new();
                while let Some((_, f)) = qs[i].rx_frame(HDR, &mut scratch) {
                    got.push(f);
                }
                if flood {
                    assert_eq!(got.len(), 3, "port {i}");
                    assert_eq!(&got[0][..6], &group.0[..]);
                    assert_eq!(&got[0][got[0].len() - 4..], b"mdns");
                    assert_eq!(&got[1][..6], &[0xff; 6][..]);
                    assert_eq!(&got[2][..6], &group6.0[..]);
                    assert_eq!(&got[2][got[2].len() - 4..], b"mdn6");
                } else {
                    assert!(got.is_empty(), "port {i}: {} frames", got.len());
                }
            }
            let sa = net.stats(ports[0]).unwrap();
            assert_eq!(sa.switched, if flood { 6 } else { 0 });
            let dropped = sa.drops_of(DropCause::NotRoutable);
            assert_eq!(dropped, if flood { 1 } else { 3 }, "flood {flood}");
            let ignored = sa.drops_of(DropCause::Ipv6Ignored);
            assert_eq!(ignored, if flood { 0 } else { 1 }, "flood {flood}");
            assert!(peer.recv().is_none(), "nothing reached the host");
        }
    }

    /// A lowered TX budget: one kick takes one batch of a full ring and says more waits; the
    /// budget stays within 1 and `TX_BATCH_BUDGET`.
    #[test]
    fn a_lowered_tx_budget_takes_one_batch_per_kick() {
        use crate::testing::{self, MockNet};
        let (host, _peer) = MemoryLink::pair(4096).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 2).unwrap();
        let ma = mac(0x56);
        let a = net.attach(ma).unwrap();
        let ia = net.address_of(a).unwrap();
        let mem = testing::guest_memory();
        let mut q = MockNet::new(&mem, 1024);
        let (mut rxq, mut txq) = q.queues(false);
        assert_eq!(net.ack_features(a, FEATURES, &host), FEATURES);
        let batch = net.config().batch_size;
        let frame = testing::udp_frame(ma, ia, 5000, crate::testing::SERVER, 9, b"x");
        for _ in 0..3 * batch {
            q.send_frame(HDR, &frame, &[]);
        }
        net.set_tx_batch_budget(1);
        let n = net
            .on_tx_kick(a, &mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(n.tx_more && !n.tx_waits, "the budget, no inbox: {n:?}");
        assert_eq!(q.tx_used().len(), batch, "one batch");
        net.set_tx_batch_budget(0);
        assert_eq!(net.tx_batch_budget, 1);
        net.set_tx_batch_budget(usize::MAX);
        assert_eq!(net.tx_batch_budget, crate::TX_BATCH_BUDGET);
        let n = net
            .on_tx_kick(a, &mem, &mut txq, Some(&mut rxq), &host, NOW)
            .unwrap();
        assert!(!n.tx_more, "{n:?}");
        assert_eq!(q.tx_used().len(), 2 * batch, "the rest");
    }

    /// The host link carries what every port takes: a guest without offloads next to one
    /// with them turns the link's off; alone, the one with them gets them.
    #[test]
    fn the_host_link_gets_the_offloads_every_port_takes() {
        use crate::{OFFERED_FEATURES, OFFLOAD_FEATURES};
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(64).unwrap();
        let config = BridgeConfig {
            offloads: true,
            ..BridgeConfig::default()
        };
        let mut net = Network::new(config, 4).unwrap();
        let (a, b) = (net.attach(mac(1)).unwrap(), net.attach(mac(2)).unwrap());
        net.ack_features(a, OFFERED_FEATURES | OFFLOAD_FEATURES, &host);
        let all = host.offloads();
        assert!(all.csum && all.tso4 && all.tso6, "{all:?}");
        net.ack_features(b, OFFERED_FEATURES, &host);
        assert_eq!(host.offloads(), LinkOffloads::NONE);
        // a negotiates again (a driver reset): still what b takes.
        net.ack_features(a, OFFERED_FEATURES | OFFLOAD_FEATURES, &host);
        assert_eq!(host.offloads(), LinkOffloads::NONE);
        // b leaves: with the next event the link carries what a takes again.
        assert!(net.detach(b));
        let mem = crate::testing::guest_memory();
        let q = crate::testing::MockNet::new(&mem, 16);
        let (mut rx, _) = q.queues(false);
        net.on_rx_ready(a, &mem, &mut rx, &host, false, NOW)
            .unwrap();
        assert_eq!(host.offloads(), all);
    }

    #[test]
    fn events_for_a_port_not_attached_are_errors_and_features_are_per_port() {
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut net = Network::new(BridgeConfig::default(), 2).unwrap();
        let a = net.attach(mac(1)).unwrap();
        let ghost = PortId(1);
        assert_eq!(net.ack_features(ghost, u64::MAX, &host), 0);
        assert!(net.device_features(ghost).is_none());
        assert!(!net.pending(ghost));
        let features = net.device_features(a).unwrap();
        assert_ne!(net.ack_features(a, features, &host), 0);
        assert_eq!(net.host_reader(), Some(a));
        assert!(net.stats(a).is_some());
        assert_eq!(net.bridge_stats().bridge.tx_frames, 0);
    }

    #[test]
    fn forwards_at_runtime_go_to_the_named_guest_once_and_ports_report_their_guest() {
        let mut net = Network::new(BridgeConfig::default(), 4).unwrap();
        let a = net
            .attach(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]))
            .unwrap();
        let b = net
            .attach(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]))
            .unwrap();
        assert_eq!(
            net.gateway(b).map(crate::Gateway::guest_mac),
            Some(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]))
        );
        assert_eq!(net.negotiated(a).map(|n| n.features), Some(0));
        let first = net.address_of(a).unwrap();
        let spec: crate::ForwardSpec = "tcp:8080:192.168.64.3:80".parse().unwrap();
        net.add_forward(spec, first).unwrap();
        assert_eq!(
            net.config().forwards[0].internal,
            "192.168.64.3:80".parse().unwrap()
        );
        assert!(net.add_forward(spec, first).is_err(), "the port is taken");
        let outside: crate::ForwardSpec = "tcp:8081:10.0.0.1:80".parse().unwrap();
        assert!(
            net.add_forward(outside, first).is_err(),
            "not a guest address"
        );
        assert!(net.remove_forward(nat::Protocol::Tcp, 8080, false));
        assert!(!net.remove_forward(nat::Protocol::Tcp, 8080, false));
        net.add_forward("tcp:8080:80".parse().unwrap(), first)
            .unwrap();
        assert_eq!(net.config().forwards[0].internal.ip(), &first);
        assert!(net.detach(a));
        assert_eq!(net.gateway(a).map(crate::Gateway::guest_mac), None);
    }
}
