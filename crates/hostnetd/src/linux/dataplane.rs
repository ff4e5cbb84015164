//! The device core for one connection, built from `bridge`'s thread-free parts: its TX engine
//! (TX queue → gateway services → NAT → host link) and RX engine (host link → NAT → RX queue),
//! the NAT, and a batch of gateway replies on its way to the RX queue.
//!
//! Everything runs on the vhost-user worker thread; no allocation per packet (the batches are
//! preallocated), no lock per packet.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use bridge::{
    Device, DropCause, Error, FrameBatch, HostLink, L2Config, L2Services, MacAddr, RxEngine,
    RxPath, Stats, TxEngine, TxPath,
};
use nat::{Nat, NatConfig, PortForward, Protocol, Redirect};
use tracing::{info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

/// What a connection's dataplane is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DataplaneConfig {
    /// The guest's MAC (until the guest's own is learned from ARP/DHCP).
    pub(crate) mac: MacAddr,
    /// The guest MTU.
    pub(crate) mtu: u16,
    /// The gateway address.
    pub(crate) gateway: Ipv4Addr,
    /// The NAT's external address.
    pub(crate) external: Ipv4Addr,
    /// Port forwards into the guest.
    pub(crate) forwards: Vec<PortForward>,
    /// Upstream of the gateway's DNS forwarder (none: no DNS service).
    pub(crate) dns_upstream: Option<SocketAddrV4>,
}

/// Which queues need an interrupt after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Notify {
    /// The TX queue's used ring advanced and the driver wants to know.
    pub(crate) tx: bool,
    /// The RX queue's used ring advanced and the driver wants to know.
    pub(crate) rx: bool,
}

/// One guest's device core.
#[derive(Debug)]
pub(crate) struct Dataplane {
    config: DataplaneConfig,
    device: Device,
    tx: TxEngine,
    rx: RxEngine,
    nat: Nat,
    /// Gateway replies and hairpinned packets waiting for RX buffers.
    replies: FrameBatch,
    stats: Stats,
    /// The TUN may hold packets not read yet (it is registered edge-triggered).
    host_pending: bool,
    /// The host link failed once (logged once; the TUN was probably deleted).
    host_failed: bool,
    epoch: std::time::Instant,
}

impl Dataplane {
    /// Validates `config` and builds a fresh device (empty NAT table, no leases).
    pub(crate) fn new(config: &DataplaneConfig) -> Result<Self, Error> {
        let device = Device::new(config.mac, config.mtu);
        let mut nat = Nat::new(NatConfig {
            internal_net: Ipv4Addr::from(u32::from(config.gateway) & PREFIX_MASK),
            internal_prefix_len: PREFIX_LEN,
            external_addr: config.external,
            max_flows_per_host: MAX_FLOWS_PER_GUEST,
            ..NatConfig::default()
        })
        .map_err(Error::NatConfig)?;
        for f in &config.forwards {
            nat.add_forward(*f).map_err(Error::NatRule)?;
        }
        if let Some(up) = config.dns_upstream {
            let from = SocketAddrV4::new(config.gateway, DNS_PORT);
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                nat.add_redirect(Redirect {
                    protocol,
                    from,
                    to: up,
                })
                .map_err(Error::NatRule)?;
            }
        }
        let frame_size = ETH_HLEN + usize::from(config.mtu);
        let (tx, rx) = engines(config, &device)?;
        Ok(Self {
            config: config.clone(),
            device,
            tx,
            rx,
            nat,
            replies: FrameBatch::new(BATCH, frame_size.max(MIN_REPLY)),
            stats: Stats::default(),
            host_pending: true,
            host_failed: false,
            epoch: std::time::Instant::now(),
        })
    }

    /// The features the device offers.
    pub(crate) fn device_features(&self) -> u64 {
        self.device.device_features()
    }

    /// Records the driver's features and rebuilds the engines for their virtio-net header. The
    /// gateway state (leases) starts over: the driver negotiates before it sends anything.
    pub(crate) fn ack_features(&mut self, features: u64) -> u64 {
        let acked = self.device.ack_features(features);
        match engines(&self.config, &self.device) {
            Ok((tx, rx)) => (self.tx, self.rx) = (tx, rx),
            // `new` accepted this configuration before.
            Err(e) => warn!("rebuilding the engines failed: {e}"),
        }
        acked
    }

    /// Reads the config space (MAC, status, queue pairs, MTU).
    pub(crate) fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// Forgets all state (a device reset by the frontend): new NAT table, no leases, no frames.
    pub(crate) fn reset(&mut self) {
        match Self::new(&self.config) {
            Ok(fresh) => *self = fresh,
            // `new` accepted this configuration before; keep the old state if it ever refuses.
            Err(e) => warn!("resetting the device failed: {e}"),
        }
    }

    /// The driver kicked the TX queue: drain it through the gateway services and the NAT, then
    /// deliver what is waiting for the guest if the RX queue is usable.
    pub(crate) fn on_tx_kick<M: GuestMemory>(
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

    /// The driver added RX buffers, or the TUN became readable: deliver what is waiting. Returns
    /// whether the driver must be interrupted.
    pub(crate) fn on_rx_ready<M: GuestMemory>(
        &mut self,
        mem: &M,
        rxq: &mut Queue,
        host: &impl HostLink,
        host_readable: bool,
    ) -> Result<bool, Error> {
        self.host_pending |= host_readable;
        self.deliver(mem, rxq, host)
    }

    /// The TUN became readable while the RX queue is not usable yet: read it later.
    pub(crate) fn on_rx_unavailable(&mut self) {
        self.host_pending = true;
    }

    /// Housekeeping once a second: expire idle NAT mappings.
    pub(crate) fn on_tick(&mut self) {
        let now = self.now();
        let _ = self.nat.expire(now, EXPIRE_BUDGET);
    }

    /// Logs the counters.
    pub(crate) fn log_stats(&self) {
        let s = &self.stats;
        let drops: Vec<String> = DropCause::ALL
            .iter()
            .filter(|c| s.drops_of(**c) > 0)
            .map(|c| format!("{c:?}={}", s.drops_of(*c)))
            .collect();
        info!(
            tx_frames = s.tx_frames,
            rx_frames = s.rx_frames,
            to_host = s.to_host,
            from_host = s.from_host,
            local_replies = s.local_replies,
            nat_flows = self.nat.len(),
            drops = %drops.join(" "),
            "connection stats"
        );
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
                Ok(_) => {
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
            warn!("the TUN failed: {e}");
            self.host_failed = true;
        }
    }

    fn now(&self) -> nat::Instant {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        nat::Instant::from_millis(ms)
    }
}

/// The TX and RX engines for the negotiated virtio-net header (fresh gateway services).
fn engines(config: &DataplaneConfig, device: &Device) -> Result<(TxEngine, RxEngine), Error> {
    let l2 = L2Services::new(L2Config {
        gateway: config.gateway,
        gateway_mac: GATEWAY_MAC,
        prefix_len: PREFIX_LEN,
        guest_mac: config.mac,
        dhcp_pool: pool_start(config.gateway)..=pool_end(config.gateway),
        lease: LEASE,
        mtu: config.mtu,
        dns: config.dns_upstream.is_some(),
        static_guest_ip: None,
    })?;
    let mtu = usize::from(config.mtu);
    let tx = TxEngine::new(
        TxPath::new(device.header_len(), ETH_HLEN + mtu),
        l2,
        BATCH,
        ETH_HLEN + mtu,
    );
    let rx = RxEngine::new(
        RxPath::new(device.header_len(), device.mrg_rxbuf()),
        BATCH,
        mtu,
        mtu,
        GATEWAY_MAC,
    );
    Ok((tx, rx))
}

fn pool_start(gateway: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(gateway) & PREFIX_MASK) | 2)
}

fn pool_end(gateway: Ipv4Addr) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(gateway) & PREFIX_MASK) | 254)
}

/// Frames per batch (TX drain, RX fill, TUN read).
const BATCH: usize = 64;
const ETH_HLEN: usize = bridge::ETH_HLEN;
/// A DHCP reply is at most this long.
const MIN_REPLY: usize = 576;
const PREFIX_LEN: u8 = 24;
const PREFIX_MASK: u32 = 0xffff_ff00;
const DNS_PORT: u16 = 53;
const LEASE: Duration = Duration::from_secs(3600);
const EXPIRE_BUDGET: usize = 4096;
/// Closed TCP flows keep their mapping for 4 minutes (as `bridge::BridgeConfig::default()`).
const MAX_FLOWS_PER_GUEST: usize = 65_536;
/// The gateway's MAC (as `bridge::BridgeConfig::default()`).
const GATEWAY_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]);

#[cfg(test)]
mod tests {
    use bridge::MemoryLink;
    use bridge::testing::{self, EXTERNAL, GATEWAY, GUEST_IP, GUEST_MAC, MockNet};

    use super::*;

    const HDR: usize = 12;
    const FEATURES: u64 = 1 << 32 | 1 << 15; // VERSION_1 | MRG_RXBUF

    fn config(forwards: Vec<PortForward>) -> DataplaneConfig {
        DataplaneConfig {
            mac: GUEST_MAC,
            mtu: 1500,
            gateway: GATEWAY,
            external: EXTERNAL,
            forwards,
            dns_upstream: None,
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
        let mut dp = Dataplane::new(&config(Vec::new())).unwrap();
        dp.ack_features(FEATURES);
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
        let mut dp = Dataplane::new(&config(Vec::new())).unwrap();
        dp.ack_features(FEATURES);
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
        let mut dp = Dataplane::new(&config(vec![forward])).unwrap();
        dp.ack_features(FEATURES);
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
        let dp = Dataplane::new(&config(Vec::new())).unwrap();
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
    fn a_bad_forward_is_refused() {
        let f = PortForward {
            protocol: Protocol::Tcp,
            external_port: 80,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
        };
        assert!(Dataplane::new(&config(vec![f])).is_err());
    }
}
