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
//! IPv6 between guests is not switched yet (each guest reaches the others' IPv6 addresses
//! not at all; the NAT66 path to the host works as for one guest).

use core::net::Ipv4Addr;
use core::time::Duration;

use nat::Nat;
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::config::BridgeConfig;
use crate::core::{Expiry, Notify, PortCore, dns_relay, negotiate_offloads, network_nat};
use crate::device::CONFIG_SPACE_SIZE;
use crate::dns_relay::SharedRelay;
use crate::rx_engine::RxEngine;
use crate::stats::{BridgeStats, DropCause, Stats};
use crate::switch::{PortId, Switch, SwitchError};
use crate::tx_engine::{SwitchView, TxEngine};
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, MacAddr};
use crate::{Error, HostLink, offload};

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
    /// Frames wait in the port's inbox for [`Network::on_rx_ready`].
    pending: Vec<bool>,
    /// The IPv4 address each MAC had, most recent last (bounded by the pool's size).
    leases: Vec<(MacAddr, Ipv4Addr)>,
    /// The port that got most of the last host batch.
    reader: Option<PortId>,
    short_batch_drains: bool,
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
            pending: vec![false; max_ports],
            leases: Vec::new(),
            reader: None,
            short_batch_drains: false,
            config,
        })
    }

    /// As [`crate::DeviceCore::with_short_batch_drains`], for every port.
    #[must_use]
    pub fn with_short_batch_drains(mut self, on: bool) -> Self {
        self.short_batch_drains = on;
        for p in self.ports.iter_mut().flatten() {
            p.rx.short_batch_drains = on;
        }
        self
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
        let addr = self.address_for(mac)?;
        let id = self.switch.attach(mac).map_err(switch_error)?;
        let mut config = self.config.clone();
        config.guest_mac = mac;
        config.dhcp_pool = addr..=addr;
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
        port.rx.short_batch_drains = self.short_batch_drains;
        self.ports[i] = Some(port);
        self.pending[i] = false;
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
        self.pending[i] = false;
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
    /// host link's offloads are set by each port's negotiation: ports of one network are
    /// expected to negotiate the same receive offloads (a super-packet for a guest that took
    /// none is a counted drop).
    pub fn ack_features(&mut self, port: PortId, features: u64, host: &impl HostLink) -> u64 {
        let Some(p) = self.port_mut(port) else {
            return 0;
        };
        let acked = p.device.ack_features(features);
        let offloads = negotiate_offloads(acked, host);
        p.use_features(acked, offloads);
        acked
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
        let i = usize::from(port.0);
        let mut p = self
            .ports
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| not_attached(port))?;
        let mut others = Others {
            switch: &self.switch,
            me: port,
            ports: &mut self.ports,
            pending: &mut self.pending,
            reader: &mut self.reader,
        };
        let r = p.on_tx_kick(&mut self.nat, mem, txq, rxq, host, now, Some(&mut others));
        self.ports[i] = Some(p);
        self.pending[i] = false;
        r
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
        let i = usize::from(port.0);
        let mut p = self
            .ports
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| not_attached(port))?;
        p.rx.host_pending |= host_readable;
        let mut others = Others {
            switch: &self.switch,
            me: port,
            ports: &mut self.ports,
            pending: &mut self.pending,
            reader: &mut self.reader,
        };
        let r = p.deliver(&mut self.nat, mem, rxq, host, now, Some(&mut others));
        self.ports[i] = Some(p);
        self.pending[i] = false;
        r
    }

    /// Whether frames wait in `port`'s inbox (switched from another guest, moved from a host
    /// batch, a gateway reply or advertisement): call [`Network::on_rx_ready`] for it.
    pub fn pending(&self, port: PortId) -> bool {
        self.port(port).is_some_and(PortCore::replies_pending)
    }

    /// The port to read the host link with ([`Network::on_rx_ready`] with `host_readable`):
    /// the one that got most of the last batch (fewest frames moved), else the first.
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
        Some(self.port(port)?.tx.engine.gateway())
    }

    /// What `port`'s [`Network::ack_features`] agreed on.
    pub fn negotiated(&self, port: PortId) -> Option<crate::Negotiated> {
        Some(self.port(port)?.negotiated)
    }

    /// As [`crate::DeviceCore::on_rx_unavailable`] for `port`.
    pub fn on_rx_unavailable(&mut self, port: PortId) {
        if let Some(p) = self.port_mut(port) {
            p.rx.host_pending = true;
        }
    }

    /// Adds a port forward at runtime (a control request). IPv4: to the spec's guest
    /// address, else `default_guest`; it must be in the guest subnet. IPv6: as every port's
    /// IPv6 forwards (NAT66 sends it to the guest whose global address the gateway learned
    /// last), and ports attached later get it too.
    ///
    /// # Errors
    ///
    /// [`Error::Config`]: the external port is forwarded already, IPv6 is off;
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
            for p in self.ports.iter_mut().flatten() {
                p.add_forward(spec, default_guest, &mut self.nat)?;
            }
            self.config.forwards6.push(f);
            return Ok(());
        }
        let f = spec.to_port_forward(default_guest);
        if self
            .config
            .forwards
            .iter()
            .any(|g| g.protocol == f.protocol && g.external_port == f.external_port)
        {
            return Err(Error::Config(format!(
                "{:?} port {} is already forwarded",
                f.protocol, f.external_port
            )));
        }
        self.nat.add_forward(f).map_err(Error::NatRule)?;
        self.config.forwards.push(f);
        Ok(())
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
/// own slot is empty while it runs) and their inbox flags.
#[derive(Debug)]
pub(crate) struct Others<'a> {
    switch: &'a Switch,
    me: PortId,
    ports: &'a mut [Option<PortCore>],
    pending: &'a mut [bool],
    reader: &'a mut Option<PortId>,
}

impl<'a> Others<'a> {
    /// The sending port's view of the switch for a TX batch.
    pub(crate) fn view(&self) -> SwitchView<'a> {
        SwitchView {
            switch: self.switch,
            port: self.me,
        }
    }

    /// Whether an inbox this event filled is half full or more (the sender pauses).
    pub(crate) fn inbox_busy(&self) -> bool {
        self.pending
            .iter()
            .zip(self.ports.iter())
            .any(|(&p, port)| {
                p && port
                    .as_ref()
                    .is_some_and(|q| q.replies.len() * 2 >= q.replies.capacity())
            })
    }

    /// Moves the frames of the sender's last TX batch that the switch sent to other ports
    /// into their inboxes (a copy each; the MACs as the receiver expects them).
    pub(crate) fn take_tx(&mut self, engine: &TxEngine, stats: &mut Stats) {
        let gateway_mac = self.switch.gateway_mac();
        for &(i, q) in engine.switched() {
            let Some((frame, kind, hdr)) = engine.switched_frame(i) else {
                continue;
            };
            let routed = frame.get(..6) == Some(&gateway_mac.0[..]);
            let src = routed.then_some(gateway_mac);
            match self.push(q, frame, src, |o, f| {
                offload::hairpin_header(o, kind, &hdr, f)
            }) {
                Ok(()) => stats.switched += 1,
                Err(c) => stats.drop(c),
            }
        }
    }

    /// Moves the frames of the reader's host batch (translated, from the batch's cursor on)
    /// that are for other guests into their inboxes.
    pub(crate) fn take_rx(&mut self, engine: &mut RxEngine, stats: &mut Stats) {
        let batch = engine.batch_mut();
        let (mut mine, mut moved) = (0usize, [0usize; 4]);
        let mut most: Option<(PortId, usize)> = None;
        for i in batch.cursor()..batch.len() {
            let hdr = batch.header(i);
            let Some(frame) = batch.frame(i) else {
                continue;
            };
            if frame.is_empty() {
                continue;
            }
            let owner = match frame.get(12..14) {
                Some(t) if t == ETHERTYPE_IPV4.to_be_bytes() => frame
                    .get(ETH_HLEN + 16..ETH_HLEN + 20)
                    .and_then(|d| <[u8; 4]>::try_from(d).ok())
                    .and_then(|d| self.switch.port_by_ipv4(Ipv4Addr::from(d))),
                Some(t) if t == ETHERTYPE_IPV6.to_be_bytes() => frame
                    .get(ETH_HLEN + 24..ETH_HLEN + 40)
                    .and_then(|d| <[u8; 16]>::try_from(d).ok())
                    .and_then(|d| self.switch.port_by_ipv6(d.into())),
                _ => None,
            };
            let Some(q) = owner.filter(|&q| q != self.me) else {
                mine += 1;
                continue;
            };
            let r = self.push(q, frame, None, |_, _| Ok(hdr));
            if let Err(c) = r {
                stats.drop(c);
            }
            batch.drop_frame(i);
            let slot = usize::from(q.0) % moved.len();
            moved[slot] += 1;
            if most.is_none_or(|(_, n)| moved[slot] > n) {
                most = Some((q, moved[slot]));
            }
        }
        // Read the next batch with the port that took most of this one.
        *self.reader = match most {
            Some((q, n)) if n > mine => Some(q),
            _ => Some(self.me),
        };
    }

    /// Copies `frame` into port `q`'s inbox with `q`'s MAC as destination (and `src` as
    /// source, if given); `header` gives the virtio-net header for `q`'s offloads (and may
    /// complete a checksum in the copy).
    fn push(
        &mut self,
        q: PortId,
        frame: &[u8],
        src: Option<MacAddr>,
        header: impl FnOnce(
            &crate::Offloads,
            &mut [u8],
        ) -> Result<crate::device::VirtioNetHdr, DropCause>,
    ) -> Result<(), DropCause> {
        let i = usize::from(q.0);
        let port = self
            .ports
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or(DropCause::NotRoutable)?;
        let mac = port.config.guest_mac;
        let inbox = &mut port.replies;
        if inbox.pending() == 0 {
            inbox.clear();
        }
        let buf = inbox.next_buf().ok_or(DropCause::LocalQueueFull)?;
        let copy = buf.get_mut(..frame.len()).ok_or(DropCause::TooBig)?;
        copy.copy_from_slice(frame);
        copy[..6].copy_from_slice(&mac.0);
        if let Some(s) = src {
            copy[6..12].copy_from_slice(&s.0);
        }
        let hdr = header(&port.negotiated.offloads, copy)?;
        inbox.commit(0, frame.len());
        let n = inbox.len();
        inbox.set_header(n - 1, hdr);
        if let Some(p) = self.pending.get_mut(i) {
            *p = true;
        }
        Ok(())
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

fn switch_error(e: SwitchError) -> Error {
    Error::Config(format!("attaching a guest port: {e}"))
}

fn not_attached(port: PortId) -> Error {
    Error::Config(format!("port {} is not attached", port.0))
}

#[cfg(test)]
mod tests {
    use super::*;

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
