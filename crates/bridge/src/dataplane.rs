//! [`Dataplane`]: the whole device core for one guest on one thread, no locks.

use core::time::Duration;

use nat::Nat;
use tracing::{info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use crate::device::{Device, VIRTIO_NET_HDR_LEN};
use crate::engine::{RxEngine, TxEngine};
use crate::frame::FrameBatch;
use crate::l2::L2Services;
use crate::offload::{MAX_IP_PACKET, Offloads};
use crate::runner::{Bridge, BridgeConfig};
use crate::rx::RxPath;
use crate::stats::{BridgeStats, Stats};
use crate::tx::TxPath;
use crate::wire::ETH_HLEN;
use crate::{Error, HostLink, OFFLOAD_FEATURES};

/// Which queues need an interrupt after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notify {
    /// The TX queue's used ring advanced and the driver wants to know.
    pub tx: bool,
    /// The RX queue's used ring advanced and the driver wants to know.
    pub rx: bool,
}

/// One guest's device core for an embedder with its own event loop on one thread (a
/// vhost-user worker, a single-threaded VMM loop): the TX engine (TX queue → gateway
/// services → NAT → host link), the RX engine (host link → NAT → RX queue), the NAT, and a
/// batch of gateway replies and hairpinned frames on their way to the RX queue.
///
/// Thread-free and lock-free: the owner calls [`Dataplane::on_tx_kick`] when the driver
/// kicks the TX queue, [`Dataplane::on_rx_ready`] when the driver adds RX buffers or the host
/// link becomes readable, and [`Dataplane::on_tick`] when [`Dataplane::next_timeout`] passes,
/// and interrupts the driver as the returned flags say. The batches are preallocated: no
/// allocation per packet.
///
/// With [`BridgeConfig::offloads`] the device offers checksum and TCPv4 segmentation
/// offloads, and the host link is expected to carry virtio-net headers until
/// [`Dataplane::ack_features`] reads its real framing ([`HostLink::vnet_hdr_len`]).
///
/// ```
/// use bridge::{BridgeConfig, Dataplane, MemoryLink};
///
/// let (host, _peer) = MemoryLink::pair(64)?;
/// let mut dp = Dataplane::new(BridgeConfig::default())?;
/// let acked = dp.ack_features(dp.device_features(), &host);
/// assert_eq!(acked, dp.device().acked_features());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Dataplane {
    config: BridgeConfig,
    device: Device,
    tx: TxEngine,
    rx: RxEngine,
    nat: Nat,
    /// Gateway replies and hairpinned packets waiting for RX buffers.
    replies: FrameBatch,
    /// The offloads in force (all off until the driver acks features).
    offloads: Offloads,
    stats: Stats,
    /// The host link may hold packets not read yet.
    host_pending: bool,
    /// A batch shorter than asked means the host link is drained (no read that must fail).
    short_batch_drains: bool,
    /// The host link failed once (logged once; the TUN was probably deleted).
    host_failed: bool,
    /// The negotiated offloads were logged (once, and on a change).
    offloads_logged: bool,
    epoch: std::time::Instant,
}

impl Dataplane {
    /// Validates `config` and builds a fresh device (empty NAT table with the forwards and
    /// the DNS redirect installed, no leases).
    ///
    /// # Errors
    ///
    /// As [`Bridge::new`].
    pub fn new(config: BridgeConfig) -> Result<Self, Error> {
        let (config, device, nat, l2) = Bridge::new(config)?.into_parts();
        Self::from_parts(config, device, nat, l2)
    }

    /// Builds the device core from [`Bridge::into_parts`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the configuration's offloads don't fit its host link framing.
    pub fn from_parts(
        config: BridgeConfig,
        device: Device,
        nat: Nat,
        l2: L2Services,
    ) -> Result<Self, Error> {
        // Nothing negotiated yet, but the host link's framing is already fixed.
        let host_hdr = if config.offloads {
            VIRTIO_NET_HDR_LEN
        } else {
            0
        };
        let offloads = Offloads::negotiate(0, host_hdr)?;
        let (tx, rx) = engines_with(&config, &device, offloads, l2);
        Ok(Self {
            replies: reply_batch(&config, offloads),
            config,
            device,
            tx,
            rx,
            nat,
            offloads,
            stats: Stats::default(),
            host_pending: true,
            short_batch_drains: false,
            host_failed: false,
            offloads_logged: false,
            epoch: std::time::Instant::now(),
        })
    }

    /// With `true`, a read from the host link that returns fewer packets than asked counts
    /// as "drained": the next read waits for the next [`Dataplane::on_rx_ready`] with
    /// `host_readable`. Right for a level-triggered (or edge-triggered) readiness source;
    /// saves the read that would fail per burst. Default `false`: read until a read
    /// returns nothing.
    #[must_use]
    pub fn with_short_batch_drains(mut self, on: bool) -> Self {
        self.short_batch_drains = on;
        self
    }

    /// The configuration in force.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The device model (features, config space).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The features the device offers.
    pub fn device_features(&self) -> u64 {
        self.device.device_features()
    }

    /// Records the driver's features, sets the host link's offloads to what the guest accepts
    /// and rebuilds the engines for the negotiated header and offloads. The gateway state
    /// (leases) starts over: the driver negotiates before it sends anything. Returns the
    /// negotiated features.
    ///
    /// Never fails: offloads the host link refuses are logged and turned off (frames that then
    /// cannot pass are counted drops).
    pub fn ack_features(&mut self, features: u64, host: &impl HostLink) -> u64 {
        let acked = self.device.ack_features(features);
        let offloads = negotiate(acked, host);
        if offloads != self.offloads || !self.offloads_logged {
            info!(
                tx_csum = offloads.tx_csum,
                tx_tso4 = offloads.tx_tso4,
                rx_csum = offloads.rx_csum,
                rx_tso4 = offloads.rx_tso4,
                host_vnet_hdr = offloads.host_hdr,
                "offloads negotiated"
            );
            self.offloads_logged = true;
        }
        match engines(&self.config, &self.device, offloads) {
            Ok((tx, rx)) => {
                (self.tx, self.rx) = (tx, rx);
                if reply_size(&self.config, offloads) != reply_size(&self.config, self.offloads) {
                    self.replies = reply_batch(&self.config, offloads);
                }
                self.offloads = offloads;
            }
            // `new` accepted this configuration before.
            Err(e) => warn!("rebuilding the engines failed: {e}"),
        }
        acked
    }

    /// Reads the config space (MAC, status, queue pairs, MTU).
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// Forgets all state (a device reset): new NAT table, no leases, no frames.
    pub fn reset(&mut self) {
        match Self::new(self.config.clone()) {
            Ok(fresh) => {
                let short = self.short_batch_drains;
                *self = fresh.with_short_batch_drains(short);
            }
            // `new` accepted this configuration before; keep the old state if it ever refuses.
            Err(e) => warn!("resetting the device failed: {e}"),
        }
    }

    /// The driver kicked the TX queue: drain it through the gateway services and the NAT
    /// (writes to `host`), then deliver what is waiting for the guest if the RX queue is
    /// usable (`rxq`).
    ///
    /// # Errors
    ///
    /// A queue the driver broke ([`Error::NeedsReset`], guest memory errors). Host link
    /// failures are logged once and counted, not returned.
    pub fn on_tx_kick<M: GuestMemory>(
        &mut self,
        mem: &M,
        txq: &mut Queue,
        mut rxq: Option<&mut Queue>,
        host: &impl HostLink,
    ) -> Result<Notify, Error> {
        let mut n = Notify::default();
        loop {
            txq.disable_notification(mem)?;
            loop {
                if self.replies.pending() == 0 {
                    self.replies.clear();
                }
                let now = self.now();
                let out = self
                    .tx
                    .pull(mem, txq, &mut self.replies, now, &mut self.stats)?;
                self.tx
                    .translate(&mut self.nat, &mut self.replies, now, &mut self.stats);
                if let Err(e) = self.tx.push(host, &mut self.stats) {
                    self.host_failure(&e);
                }
                n.tx |= out.notify;
                if let Some(rxq) = rxq.as_deref_mut() {
                    n.rx |= self.deliver(mem, rxq, host)?;
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

    /// The driver added RX buffers, or (`host_readable`) the host link became readable:
    /// deliver what is waiting. Returns whether the driver must be interrupted.
    ///
    /// # Errors
    ///
    /// As [`Dataplane::on_tx_kick`].
    pub fn on_rx_ready<M: GuestMemory>(
        &mut self,
        mem: &M,
        rxq: &mut Queue,
        host: &impl HostLink,
        host_readable: bool,
    ) -> Result<bool, Error> {
        self.host_pending |= host_readable;
        self.deliver(mem, rxq, host)
    }

    /// The host link became readable while the RX queue is not usable yet: read it later.
    pub fn on_rx_unavailable(&mut self) {
        self.host_pending = true;
    }

    /// Housekeeping: expires idle NAT mappings (bounded work). Call it when
    /// [`Dataplane::next_timeout`] passes, or periodically.
    pub fn on_tick(&mut self) {
        let now = self.now();
        let _ = self.nat.expire(now, EXPIRE_BUDGET);
    }

    /// How long until [`Dataplane::on_tick`] has work (the NAT's next deadline, which may be
    /// early, never late, and very far away); `None`: nothing to expire. Zero means "now";
    /// if a tick then expires nothing, don't spin: tick periodically instead.
    pub fn next_timeout(&self) -> Option<Duration> {
        let deadline = self.nat.next_deadline()?;
        let now = self.now();
        Some(Duration::from_millis(
            deadline.as_millis().saturating_sub(now.as_millis()),
        ))
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The counters with the NAT's, as [`crate::BridgeHandle::stats`] gives them.
    pub fn bridge_stats(&self) -> BridgeStats {
        BridgeStats {
            bridge: self.stats.clone(),
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
    pub fn l2(&self) -> &L2Services {
        self.tx.l2()
    }

    /// The offloads in force.
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// The device's clock as the NAT sees it (milliseconds since the dataplane was built).
    pub fn now(&self) -> nat::Instant {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        nat::Instant::from_millis(ms)
    }

    /// Fills the guest's RX buffers: gateway replies first, then packets from the host link
    /// while it has some and the guest has buffers. Returns whether to interrupt the driver.
    fn deliver<M: GuestMemory>(
        &mut self,
        mem: &M,
        rxq: &mut Queue,
        host: &impl HostLink,
    ) -> Result<bool, Error> {
        let mut notify = false;
        loop {
            if self.replies.pending() > 0 {
                let out = self
                    .rx
                    .path()
                    .fill(mem, rxq, &mut self.replies, &mut self.stats)?;
                notify |= out.notify;
                if out.starved {
                    if self.rx.path().arm(mem, rxq)? {
                        continue;
                    }
                    return Ok(notify);
                }
                self.replies.clear();
            }
            if self.rx.pending() > 0 {
                let out = self.rx.deliver(mem, rxq, &mut self.stats)?;
                notify |= out.notify;
                if out.starved {
                    if self.rx.path().arm(mem, rxq)? {
                        continue;
                    }
                    return Ok(notify);
                }
                continue;
            }
            if !self.host_pending {
                return Ok(notify);
            }
            match self.rx.receive(host, &mut self.stats) {
                Ok(0) => {
                    self.host_pending = false;
                    return Ok(notify);
                }
                Ok(n) => {
                    if self.short_batch_drains && n < self.rx.capacity() {
                        self.host_pending = false;
                    }
                    let now = self.now();
                    let guest_mac = self.tx.l2().guest_mac();
                    self.rx
                        .translate(&mut self.nat, now, guest_mac, &mut self.stats);
                }
                Err(e) => {
                    self.host_pending = false;
                    self.host_failure(&e);
                    return Ok(notify);
                }
            }
        }
    }

    fn host_failure(&mut self, e: &Error) {
        if !self.host_failed {
            warn!("the host link failed: {e}");
            self.host_failed = true;
        }
    }
}

/// The offloads for the driver's `acked` features over `host`, reduced to what the host link
/// accepts: [`HostLink::set_offloads`] is told what the guest takes (GUEST_CSUM, GUEST_TSO4); if
/// it refuses, TSO and then checksum offloads towards the guest are turned off. Offloads
/// negotiated over a link without virtio-net headers (the device should not have offered them)
/// are all turned off.
fn negotiate(acked: u64, host: &impl HostLink) -> Offloads {
    let hdr_len = host.vnet_hdr_len();
    let mut o = match Offloads::negotiate(acked, hdr_len) {
        Ok(o) => o,
        Err(e) => {
            warn!("offloads turned off: {e}");
            Offloads::negotiate(acked & !OFFLOAD_FEATURES, hdr_len).unwrap_or_default()
        }
    };
    let mut asked = (o.rx_csum, o.rx_tso4);
    loop {
        match host.set_offloads(asked.0, asked.1) {
            Ok(()) => break,
            Err(e) if asked == (false, false) => {
                warn!("the host link refused to turn its offloads off: {e}");
                break;
            }
            Err(e) => {
                let fewer = if asked.1 {
                    (asked.0, false)
                } else {
                    (false, false)
                };
                warn!(
                    csum = asked.0,
                    tso4 = asked.1,
                    "the host link refused these offloads ({e}); trying csum={} tso4={}",
                    fewer.0,
                    fewer.1
                );
                asked = fewer;
            }
        }
    }
    (o.rx_csum, o.rx_tso4) = (o.rx_csum && asked.0, o.rx_tso4 && asked.1);
    o
}

/// The TX and RX engines for the negotiated virtio-net header and offloads, with fresh
/// gateway services.
fn engines(
    config: &BridgeConfig,
    device: &Device,
    offloads: Offloads,
) -> Result<(TxEngine, RxEngine), Error> {
    let l2 = L2Services::new(config.l2_config())?;
    Ok(engines_with(config, device, offloads, l2))
}

fn engines_with(
    config: &BridgeConfig,
    device: &Device,
    offloads: Offloads,
    l2: L2Services,
) -> (TxEngine, RxEngine) {
    let mtu = usize::from(config.mtu);
    let max_frame = offloads.max_tx_frame(config.mtu);
    let tx = TxEngine::new(
        TxPath::new(device.header_len(), max_frame),
        l2,
        config.batch_size,
        max_frame,
    )
    .with_offloads(offloads, config.mtu);
    // The host link hands over GSO super-packets of up to 64 KiB only if the guest takes them
    // (the header it may put in front fits in the Ethernet header's room).
    let max_packet = if offloads.rx_tso4 { MAX_IP_PACKET } else { mtu };
    let rx = RxEngine::new(
        RxPath::new(device.header_len(), device.mrg_rxbuf()),
        config.batch_size,
        max_packet,
        mtu,
        config.gateway_mac,
    )
    .with_offloads(offloads);
    (tx, rx)
}

/// Room per frame in the batch of gateway replies and hairpinned frames: a hairpinned
/// super-frame needs 64 KiB when the guest takes them (GUEST_TSO4).
fn reply_size(config: &BridgeConfig, offloads: Offloads) -> usize {
    let frame = if offloads.rx_tso4 {
        offloads.max_tx_frame(config.mtu)
    } else {
        ETH_HLEN + usize::from(config.mtu)
    };
    frame.max(MIN_REPLY)
}

fn reply_batch(config: &BridgeConfig, offloads: Offloads) -> FrameBatch {
    FrameBatch::new(config.batch_size, reply_size(config, offloads))
}

/// A DHCP reply is at most this long.
const MIN_REPLY: usize = 576;
/// NAT mappings expired per [`Dataplane::on_tick`] at most.
const EXPIRE_BUDGET: usize = 4096;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use nat::{PortForward, Protocol};

    use super::*;
    use crate::MemoryLink;
    use crate::testing::{self, EXTERNAL, GATEWAY, GUEST_IP, GUEST_MAC, MockNet};

    const HDR: usize = 12;
    const FEATURES: u64 = 1 << 32 | 1 << 15; // VERSION_1 | MRG_RXBUF

    const BATCH: usize = 64;

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

    /// A host link with virtio-net headers that refuses TSO towards the bridge (as a kernel
    /// without `TUN_F_TSO4` would).
    struct NoTsoLink(MemoryLink);

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
        fn set_offloads(&self, csum: bool, tso4: bool) -> std::io::Result<()> {
            if tso4 {
                return Err(std::io::ErrorKind::Unsupported.into());
            }
            self.0.set_offloads(csum, tso4)
        }
    }

    fn offloads_of(o: Offloads) -> [bool; 5] {
        [o.tx_csum, o.tx_tso4, o.rx_csum, o.rx_tso4, o.host_hdr]
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
        let mut dp = Dataplane::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 2);
        net.send_frame(
            HDR,
            &testing::arp_request(GUEST_MAC, GUEST_IP, GATEWAY),
            &[],
        );

        let n = dp
            .on_tx_kick(&mem, &mut txq, Some(&mut rxq), &host)
            .unwrap();
        assert!(n.tx && n.rx, "{n:?}");
        assert_eq!(net.tx_used().len(), 1, "the TX chain is returned");
        let (_, reply) = net.rx_frame(HDR, &mut Vec::new()).expect("a reply frame");
        assert_eq!(reply[12..14], [0x08, 0x06], "ARP");
        assert_eq!(reply[20..22], [0, 2], "reply opcode");
        assert_eq!(reply[28..32], GATEWAY.octets(), "sender is the gateway");
        assert_eq!(reply[..6], GUEST_MAC.0, "to the guest");
        assert!(peer.recv().is_none(), "nothing reaches the host");
        assert_eq!(dp.stats.local_replies, 1);
    }

    #[test]
    fn without_an_rx_queue_replies_wait_for_it() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, mut txq) = net.queues(false);
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        let mut dp = Dataplane::new(config(Vec::new())).unwrap();
        dp.ack_features(FEATURES, &host);
        net.send_frame(
            HDR,
            &testing::arp_request(GUEST_MAC, GUEST_IP, GATEWAY),
            &[],
        );
        let n = dp.on_tx_kick(&mem, &mut txq, None, &host).unwrap();
        assert!(!n.rx);
        post_rx(&mut net, 1);
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, false).unwrap());
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
        let forward = PortForward {
            protocol: Protocol::Udp,
            external_port: 5353,
            internal: SocketAddrV4::new(GUEST_IP, 53),
        };
        let mut dp = Dataplane::new(config(vec![forward])).unwrap();
        dp.ack_features(FEATURES, &host);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let total = BATCH + 6;
        for i in 0..total {
            let p = testing::udp_packet(client, 4000, EXTERNAL, 5353, &[i as u8; 8]);
            assert!(peer.send(&p));
        }
        // Readable, but no RX buffers: nothing delivered, nothing lost.
        assert!(!dp.on_rx_ready(&mem, &mut rxq, &host, true).unwrap());
        assert!(net.rx_used().is_empty());
        // The guest adds buffers and kicks; no new readiness from the TUN.
        post_rx(&mut net, total);
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, false).unwrap());
        let mut pending = Vec::new();
        for i in 0..total {
            let (_, f) = net
                .rx_frame(HDR, &mut pending)
                .unwrap_or_else(|| panic!("frame {i}"));
            assert_eq!(f[..6], GUEST_MAC.0);
            assert_eq!(f[26..30], client.octets(), "the guest sees the real client");
            assert_eq!(f[30..34], GUEST_IP.octets(), "DNAT to the guest");
            assert_eq!(f[36..38], 53u16.to_be_bytes(), "guest port");
            assert_eq!(f[42..50], [i as u8; 8], "in order");
        }
        assert!(net.rx_frame(HDR, &mut pending).is_none());
        assert_eq!(dp.stats.rx_frames, total as u64);
        assert_eq!(peer.pending(), 0);
    }

    #[test]
    fn config_space_and_features() {
        let dp = Dataplane::new(config(Vec::new())).unwrap();
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
        let plain = Dataplane::new(config(Vec::new())).unwrap();
        assert_eq!(plain.device_features() & OFFLOAD_FEATURES, 0);
        assert_eq!(offloads_of(plain.offloads), [false; 5]);
        let dp = Dataplane::new(offload_config()).unwrap();
        assert_eq!(dp.device_features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(
            dp.device_features() & !OFFLOAD_FEATURES,
            plain.device_features()
        );
        // Before negotiation nothing is offloaded, but the link's header is already expected.
        assert_eq!(offloads_of(dp.offloads), [false, false, false, false, true]);
    }

    #[test]
    fn a_driver_that_takes_every_offload_gets_them_and_the_link_is_told() {
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let mut dp = Dataplane::new(offload_config()).unwrap();
        let acked = dp.ack_features(u64::MAX, &host);
        assert_eq!(acked & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(offloads_of(dp.offloads), [true; 5]);
        assert_eq!(host.offloads(), (true, true), "GUEST_CSUM and GUEST_TSO4");
        assert!(
            dp.replies.buf_size() >= crate::ETH_HLEN + crate::MAX_IP_PACKET,
            "hairpinned super-frames fit the reply batch"
        );
        // Renegotiation without offloads (a driver reset) turns them off again.
        let acked = dp.ack_features(FEATURES, &host);
        assert_eq!(acked & OFFLOAD_FEATURES, 0);
        assert_eq!(offloads_of(dp.offloads), [false, false, false, false, true]);
        assert_eq!(host.offloads(), (false, false));
    }

    #[test]
    fn a_driver_without_tso_gets_checksum_offloads_only() {
        let (host, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let mut dp = Dataplane::new(offload_config()).unwrap();
        let csum = FEATURES | 1 << crate::VIRTIO_NET_F_CSUM | 1 << crate::VIRTIO_NET_F_GUEST_CSUM;
        // TSO bits without their checksum bits are not negotiated.
        let acked = dp.ack_features(
            FEATURES | 1 << crate::VIRTIO_NET_F_HOST_TSO4 | 1 << crate::VIRTIO_NET_F_GUEST_TSO4,
            &host,
        );
        assert_eq!(acked & OFFLOAD_FEATURES, 0);
        assert_eq!(dp.ack_features(csum, &host), csum);
        assert_eq!(offloads_of(dp.offloads), [true, false, true, false, true]);
        assert_eq!(host.offloads(), (true, false));
    }

    #[test]
    fn a_link_that_refuses_tso_leaves_checksum_offloads() {
        let (inner, _peer) = MemoryLink::pair_with_vnet_hdr(4).unwrap();
        let host = NoTsoLink(inner);
        let mut dp = Dataplane::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        assert_eq!(
            offloads_of(dp.offloads),
            [true, true, true, false, true],
            "the guest still sends super-frames; it gets none"
        );
        assert_eq!(host.0.offloads(), (true, false));
    }

    #[test]
    fn offloads_over_a_link_without_headers_are_turned_off() {
        let (host, _peer) = MemoryLink::pair(4).unwrap();
        let mut dp = Dataplane::new(offload_config()).unwrap();
        dp.ack_features(u64::MAX, &host);
        assert_eq!(offloads_of(dp.offloads), [false; 5]);
        assert_eq!(host.offloads(), (false, false));
    }

    /// An IPv4 TCP packet with `payload` bytes whose checksum field holds the pseudo-header sum
    /// only (a partial checksum, as the host kernel hands GSO packets over).
    fn partial_tcp(src: Ipv4Addr, sp: u16, dst: Ipv4Addr, dp: u16, payload: usize) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40;
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&src.octets());
        p[16..20].copy_from_slice(&dst.octets());
        let c = crate::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..22].copy_from_slice(&sp.to_be_bytes());
        p[22..24].copy_from_slice(&dp.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = 0x10; // ACK
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut sum = 6 + (total as u32 - 20);
        for i in (12..20).step_by(2) {
            sum += u32::from(u16::from_be_bytes([p[i], p[i + 1]]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        p[36..38].copy_from_slice(&(sum as u16).to_be_bytes());
        p
    }

    /// A GRO'd super-packet from the TUN reaches a guest that took GUEST_TSO4 as one GSO frame.
    #[test]
    fn a_gso_packet_from_the_host_reaches_a_guest_that_takes_them() {
        let mem = testing::guest_memory();
        let mut net = MockNet::new(&mem, 256);
        let (mut rxq, _txq) = net.queues(false);
        let (host, peer) = MemoryLink::pair_with_vnet_hdr(16).unwrap();
        let forward = PortForward {
            protocol: Protocol::Tcp,
            external_port: 8080,
            internal: SocketAddrV4::new(GUEST_IP, 80),
        };
        let mut dp = Dataplane::new(BridgeConfig {
            offloads: true,
            ..config(vec![forward])
        })
        .unwrap();
        dp.ack_features(u64::MAX, &host);
        for _ in 0..32 {
            net.post_rx(&[4096]);
        }
        let client = Ipv4Addr::new(198, 18, 0, 2);
        let ip = partial_tcp(client, 40000, EXTERNAL, 8080, 30_000);
        let hdr = crate::VirtioNetHdr {
            flags: crate::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: crate::VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len: 40,
            gso_size: 1448,
            csum_start: 20,
            csum_offset: 16,
            num_buffers: 0,
        };
        let mut bytes = hdr.to_bytes().to_vec();
        bytes.extend_from_slice(&ip);
        assert!(peer.send(&bytes));
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true).unwrap());
        let (g, frame) = net.rx_frame(HDR, &mut Vec::new()).expect("a frame");
        assert_eq!(
            (g.gso_type, g.gso_size, g.csum_start, g.csum_offset),
            (crate::VIRTIO_NET_HDR_GSO_TCPV4, 1448, 34, 16),
            "the GSO header, offsets relative to the Ethernet frame"
        );
        assert_eq!(frame.len(), 14 + ip.len(), "one frame, not segmented");
        assert_eq!(frame[30..34], GUEST_IP.octets(), "DNAT to the guest");
        assert_eq!(frame[54..], ip[40..], "payload untouched");
        assert_eq!(dp.stats.rx_gso, 1);
        assert_eq!(dp.stats.total_drops(), 0);
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
        let forward = PortForward {
            protocol: Protocol::Udp,
            external_port: 5353,
            internal: SocketAddrV4::new(GUEST_IP, 53),
        };
        let mut dp = Dataplane::new(config(vec![forward]))
            .unwrap()
            .with_short_batch_drains(short_batch_drains);
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 256);
        let client = Ipv4Addr::new(198, 18, 0, 2);
        for i in 0..packets {
            let p = testing::udp_packet(client, 4000, EXTERNAL, 5353, &[i as u8; 8]);
            assert!(peer.send(&p));
        }
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true).unwrap());
        assert_eq!(dp.stats.rx_frames, packets as u64);
        assert_eq!(peer.pending(), 0);
        (host.1.load(Ordering::Relaxed), dp.stats.rx_frames as usize)
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
        let forward = PortForward {
            protocol: Protocol::Udp,
            external_port: 5353,
            internal: SocketAddrV4::new(GUEST_IP, 53),
        };
        let mut dp = Dataplane::new(config(vec![forward])).unwrap();
        dp.ack_features(FEATURES, &host);
        post_rx(&mut net, 4);
        let p = testing::udp_packet(Ipv4Addr::new(198, 18, 0, 2), 4000, EXTERNAL, 5353, b"q");
        assert!(peer.send(&p));
        assert!(dp.on_rx_ready(&mem, &mut rxq, &host, true).unwrap());
        assert_eq!(dp.nat().len(), 1);
        assert!(dp.next_timeout().is_some(), "a flow has a deadline");
        dp.on_tick();
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
        assert!(Dataplane::new(config(vec![f])).is_err());
    }
}
