//! The threaded runner: [`Bridge`], [`BridgeConfig`], [`Activation`], [`BridgeHandle`].

use core::net::{Ipv4Addr, SocketAddrV4};
use core::ops::RangeInclusive;
use core::time::Duration;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nat::{Nat, NatConfig, PortForward, Protocol, Redirect};
use virtio_queue::Queue;
use vm_memory::GuestAddressSpace;

use crate::device::{CONFIG_SPACE_SIZE, Device};
use crate::l2::{L2Config, L2Services};
use crate::stats::{AtomicStats, BridgeStats};
use crate::wire::MacAddr;
use crate::{Error, HostLink};

/// Everything the bridge needs; `Default` gives the documented defaults (subnet
/// 192.168.64.0/24, gateway .1, pool .2–.254, lease 1 h, MTU 1500, NAT external 100.64.0.2,
/// no DNS upstream: set one, e.g. with [`BridgeConfig::with_host_dns`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The MAC in the device's config space (the guest's).
    pub guest_mac: MacAddr,
    /// The gateway's MAC.
    pub gateway_mac: MacAddr,
    /// The gateway's address.
    pub gateway: Ipv4Addr,
    /// Prefix length of the guest subnet (8..=30).
    pub prefix_len: u8,
    /// DHCP pool.
    pub dhcp_pool: RangeInclusive<Ipv4Addr>,
    /// DHCP lease time.
    pub lease: Duration,
    /// Where DNS to the gateway goes; `None`: no DNS service (not advertised in DHCP).
    pub dns_upstream: Option<SocketAddrV4>,
    /// Guest MTU (68..=65520), reported in the config space and by DHCP.
    pub mtu: u16,
    /// The NAT. `internal_net`/`internal_prefix_len` are overwritten from `gateway` and
    /// `prefix_len`.
    pub nat: NatConfig,
    /// Port forwards installed at activation.
    pub forwards: Vec<PortForward>,
    /// A static guest address, accepted as a source besides the DHCP lease.
    pub static_guest_ip: Option<Ipv4Addr>,
    /// Largest queue size the device accepts (a power of two, at most 32768).
    pub max_queue_size: u16,
    /// Frames per batch (1..=256).
    pub batch_size: usize,
    /// Batches in the pool that carries gateway replies from the TX to the RX thread.
    pub pool_batches: usize,
    /// Packets per direction the host link is read/written in one batch is `batch_size`;
    /// this is the largest packet accepted from the host (bigger ones are counted as
    /// [`crate::DropCause::TooBig`]).
    pub max_host_packet: usize,
    /// Offer checksum and TCPv4 segmentation offloads both ways ([`OFFLOAD_FEATURES`]):
    /// the guest sends and receives 64 KiB TCP super-frames, and the host kernel segments and
    /// checksums. Needs a host link carrying virtio-net headers ([`HostLink::vnet_hdr_len`]
    /// = 12: a Linux TUN opened with `vnet_hdr(true)`); [`Bridge::activate`] refuses others
    /// if the guest accepted an offload. Default `false`.
    ///
    /// [`OFFLOAD_FEATURES`]: crate::OFFLOAD_FEATURES
    pub offloads: bool,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        let nat = NatConfig {
            internal_net: Ipv4Addr::new(192, 168, 64, 0),
            internal_prefix_len: 24,
            external_addr: Ipv4Addr::new(100, 64, 0, 2),
            // Closed TCP flows keep their mapping for 4 minutes: a busy guest needs tens of
            // thousands.
            max_flows_per_host: 65_536,
            ..NatConfig::default()
        };
        BridgeConfig {
            guest_mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
            gateway_mac: MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]),
            gateway: Ipv4Addr::new(192, 168, 64, 1),
            prefix_len: 24,
            dhcp_pool: Ipv4Addr::new(192, 168, 64, 2)..=Ipv4Addr::new(192, 168, 64, 254),
            lease: Duration::from_secs(3600),
            dns_upstream: None,
            mtu: 1500,
            nat,
            forwards: Vec::new(),
            static_guest_ip: None,
            max_queue_size: 256,
            batch_size: 64,
            pool_batches: 4,
            max_host_packet: 65535,
            offloads: false,
        }
    }
}

impl BridgeConfig {
    /// The gateway services' part of the configuration.
    pub(crate) fn l2_config(&self) -> L2Config {
        L2Config {
            gateway: self.gateway,
            gateway_mac: self.gateway_mac,
            prefix_len: self.prefix_len,
            guest_mac: self.guest_mac,
            dhcp_pool: self.dhcp_pool.clone(),
            lease: self.lease,
            mtu: self.mtu,
            dns: self.dns_upstream.is_some(),
            static_guest_ip: self.static_guest_ip,
        }
    }

    /// Sets `dns_upstream` from the host's resolver configuration
    /// ([`crate::host_dns_upstream`]); leaves it as it is if none is usable.
    pub fn with_host_dns(mut self) -> Self {
        if let Some(up) = crate::dns::host_dns_upstream() {
            self.dns_upstream = Some(up);
        }
        self
    }
}

/// The interrupt callback: called with the queue index (0 RX, 1 TX) when the driver must be
/// notified, or [`crate::CONFIG_INTERRUPT`] when the device needs a reset.
pub type Interrupt = Arc<dyn Fn(u16) + Send + Sync>;

/// What the embedder hands over when the driver sets DRIVER_OK.
pub struct Activation<A> {
    /// Guest memory (`GuestMemoryAtomic<GuestMemoryMmap>`, `Arc<GuestMemoryMmap>`, ...).
    pub mem: A,
    /// Queue 0, configured (size, addresses, ready) by the transport.
    pub rx: Queue,
    /// Queue 1.
    pub tx: Queue,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// Signals the guest.
    pub interrupt: Interrupt,
}

impl<A> core::fmt::Debug for Activation<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Activation")
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

/// A configured, not yet running bridge: the device model (features, config space) plus the
/// validated NAT and gateway services.
#[derive(Debug)]
pub struct Bridge {
    config: BridgeConfig,
    device: Device,
    nat: Nat,
    l2: L2Services,
}

impl Bridge {
    /// Validates `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`], [`Error::NatConfig`] or [`Error::NatRule`] (forwards, DNS redirect).
    pub fn new(mut config: BridgeConfig) -> Result<Bridge, Error> {
        if !(1..=MAX_BATCH).contains(&config.batch_size) {
            return Err(Error::Config(format!(
                "batch_size {} is not in 1..={MAX_BATCH}",
                config.batch_size
            )));
        }
        if config.pool_batches == 0 {
            return Err(Error::Config("pool_batches is 0".to_owned()));
        }
        if !config.max_queue_size.is_power_of_two() || config.max_queue_size > 32768 {
            return Err(Error::Config(format!(
                "max_queue_size {} is not a power of two <= 32768",
                config.max_queue_size
            )));
        }
        if config.max_host_packet < usize::from(config.mtu) {
            return Err(Error::Config(
                "max_host_packet is smaller than the mtu".to_owned(),
            ));
        }
        let l2 = L2Services::new(config.l2_config())?;
        let mask = crate::dhcp::prefix_mask(config.prefix_len);
        config.nat.internal_net = Ipv4Addr::from(u32::from(config.gateway) & mask);
        config.nat.internal_prefix_len = config.prefix_len;
        let mut nat = Nat::new(config.nat.clone()).map_err(Error::NatConfig)?;
        for f in &config.forwards {
            nat.add_forward(*f).map_err(Error::NatRule)?;
        }
        if let Some(up) = config.dns_upstream {
            for protocol in [Protocol::Udp, Protocol::Tcp] {
                let from = SocketAddrV4::new(config.gateway, 53);
                nat.add_redirect(Redirect {
                    protocol,
                    from,
                    to: up,
                })
                .map_err(Error::NatRule)?;
            }
        }
        let device = Device::new(config.guest_mac, config.mtu).with_offloads(config.offloads);
        Ok(Bridge {
            config,
            device,
            nat,
            l2,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &BridgeConfig {
        &self.config
    }

    /// The NAT as configured (forwards and the DNS redirect installed).
    pub fn nat(&self) -> &Nat {
        &self.nat
    }

    /// The gateway services.
    pub fn l2(&self) -> &L2Services {
        &self.l2
    }

    /// The device model.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The offered features.
    pub fn device_features(&self) -> u64 {
        self.device.device_features()
    }

    /// Records the driver's features; returns the negotiated set.
    pub fn ack_features(&mut self, features: u64) -> u64 {
        self.device.ack_features(features)
    }

    /// The config space.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        self.device.config_space()
    }

    /// Reads config space bytes.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data)
    }

    /// The validated parts, for an embedder that drives the thread-free core itself (its own
    /// event loop over [`crate::TxEngine`] and [`crate::RxEngine`]) instead of
    /// [`Bridge::activate`]: the configuration, the device model (with the features acked so
    /// far), the NAT (forwards and the DNS redirect installed) and the gateway services.
    #[must_use]
    pub fn into_parts(self) -> (BridgeConfig, Device, Nat, L2Services) {
        (self.config, self.device, self.nat, self.l2)
    }

    /// Starts the pipeline: a TX thread (guest TX queue → gateway services → NAT → host
    /// link) and an RX thread (host link → NAT → guest RX queue, plus gateway replies). The
    /// queues get EVENT_IDX set from `acked_features`.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] off Linux; [`Error::Config`] if a queue is not ready or larger
    /// than `max_queue_size`; [`Error::Io`] if eventfds, epoll or threads cannot be created
    /// or the host link refuses `prepare`.
    pub fn activate<A, H>(self, activation: Activation<A>, host: H) -> Result<BridgeHandle, Error>
    where
        A: GuestAddressSpace + Send + 'static,
        H: HostLink + 'static,
    {
        imp::activate(self, activation, host)
    }
}

/// A running bridge. Dropping it without [`BridgeHandle::shutdown`] also stops and joins
/// the threads.
#[derive(Debug)]
pub struct BridgeHandle {
    shared: Arc<Shared>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    #[cfg(target_os = "linux")]
    fds: imp::Fds,
}

impl BridgeHandle {
    /// Tells the bridge that the driver notified queue `queue` (0 RX: buffers added, 1 TX:
    /// frames to send).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchQueue`], or the eventfd write error.
    pub fn kick(&self, queue: u16) -> Result<(), Error> {
        imp::kick(self, queue)
    }

    /// As [`BridgeHandle::kick`], but a TX kick with a few chains waiting (at most 8) drains
    /// the TX queue right here, on the calling thread, when the TX thread is not busy with it;
    /// otherwise it kicks that thread (a long queue is better drained there while the caller
    /// goes on producing). One thread wake-up less per kick for latency-bound traffic, for an
    /// embedder whose own thread takes the driver's notification (a vCPU exit, a doorbell
    /// handler). The TX work then runs under
    /// the same per-batch lock the TX thread takes; a failure is recorded as the TX thread's
    /// would be ([`BridgeHandle::error`]) and stops the pipeline.
    ///
    /// # Errors
    ///
    /// As [`BridgeHandle::kick`].
    pub fn kick_inline(&self, queue: u16) -> Result<(), Error> {
        imp::kick_inline(self, queue)
    }

    /// The eventfd behind [`BridgeHandle::kick`] for `queue`, for registering as an
    /// ioeventfd (Linux; `None` elsewhere or for another index). It stays open as long as
    /// the handle.
    pub fn kick_fd(&self, queue: u16) -> Option<RawFd> {
        imp::kick_fd(self, queue)
    }

    /// Counters, NAT table size and NAT counters (takes the NAT lock briefly).
    pub fn stats(&self) -> BridgeStats {
        self.shared.snapshot()
    }

    /// Adds a port forward at runtime.
    ///
    /// # Errors
    ///
    /// [`Error::NatRule`].
    pub fn add_forward(&self, forward: PortForward) -> Result<(), Error> {
        self.shared
            .nat()
            .add_forward(forward)
            .map_err(Error::NatRule)
    }

    /// Removes a port forward; returns whether it existed.
    pub fn remove_forward(&self, protocol: Protocol, external_port: u16) -> bool {
        self.shared.nat().remove_forward(protocol, external_port)
    }

    /// The error that stopped the pipeline (host link gone, queue broken), if any.
    pub fn error(&self) -> Option<Arc<Error>> {
        lock(&self.shared.error).clone()
    }

    /// Whether a queue is broken and the embedder must set DEVICE_NEEDS_RESET.
    pub fn needs_reset(&self) -> bool {
        self.shared.needs_reset.load(Ordering::Relaxed)
    }

    /// The guest's current DHCP lease.
    pub fn lease(&self) -> Option<Ipv4Addr> {
        match self.shared.lease.load(Ordering::Relaxed) {
            0 => None,
            v => Some(Ipv4Addr::from(v)),
        }
    }

    /// The guest's MAC as learned so far.
    pub fn guest_mac(&self) -> MacAddr {
        MacAddr::from_u64(self.shared.guest_mac.load(Ordering::Relaxed))
    }

    /// Stops and joins the threads, closes the host link, and returns the final counters.
    /// No descriptor chain is held at that point: TX chains are returned as soon as they are
    /// read, and RX chains are only taken for a frame that fits.
    ///
    /// # Errors
    ///
    /// [`Error::Failed`] with the error that stopped the pipeline earlier, or
    /// [`Error::ThreadPanicked`].
    pub fn shutdown(mut self) -> Result<BridgeStats, Error> {
        self.stop_and_join()?;
        let stats = self.shared.snapshot();
        match self.error() {
            Some(e) => Err(Error::Failed(e)),
            None => Ok(stats),
        }
    }

    fn stop_and_join(&mut self) -> Result<(), Error> {
        self.shared.stop.store(true, Ordering::SeqCst);
        imp::wake_all(self);
        let mut res = Ok(());
        for (name, t) in self.threads.drain(..) {
            if t.join().is_err() {
                res = Err(Error::ThreadPanicked(name));
            }
        }
        res
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

/// State both threads and the handle share.
struct Shared {
    stats: AtomicStats,
    nat: Mutex<Nat>,
    lease: AtomicU32,
    guest_mac: AtomicU64,
    needs_reset: AtomicBool,
    error: Mutex<Option<Arc<Error>>>,
    stop: AtomicBool,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn nat(&self) -> MutexGuard<'_, Nat> {
        lock(&self.nat)
    }

    fn snapshot(&self) -> BridgeStats {
        let nat = self.nat();
        BridgeStats {
            bridge: self.stats.snapshot(),
            nat_flows: nat.len(),
            nat: nat.stats().clone(),
            needs_reset: self.needs_reset.load(Ordering::Relaxed),
        }
    }

    /// Records the first fatal error and stops everything.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    fn fail(&self, e: Error) {
        let mut g = lock(&self.error);
        if g.is_none() {
            tracing::warn!(error = %e, "bridge pipeline stopped");
            *g = Some(Arc::new(e));
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Locks, ignoring poisoning: every critical section leaves the data consistent, and a
/// panicking pipeline thread is reported through `ThreadPanicked`.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The largest batch.
pub const MAX_BATCH: usize = 256;

#[cfg(target_os = "linux")]
#[path = "runner_linux.rs"]
mod imp;

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::*;

    pub(super) fn activate<A, H>(
        _b: Bridge,
        _a: Activation<A>,
        _h: H,
    ) -> Result<BridgeHandle, Error> {
        Err(Error::Unsupported)
    }
    pub(super) fn kick(_h: &BridgeHandle, _q: u16) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    pub(super) fn kick_inline(_h: &BridgeHandle, _q: u16) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
    pub(super) fn kick_fd(_h: &BridgeHandle, _q: u16) -> Option<RawFd> {
        None
    }
    pub(super) fn wake_all(_h: &BridgeHandle) {}
}
