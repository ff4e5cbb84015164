//! The threaded driver of [`DeviceCore`]: [`Bridge`] (a configured core, before activation),
//! [`Activation`], [`Threads`], [`BridgeHandle`].
//!
//! [`Bridge::activate`] negotiates through the core ([`DeviceCore::ack_features`]), checks the
//! queues through it ([`DeviceCore::prepare_queue`]), splits it into its TX and RX halves and
//! runs each on a thread (`bridge-tx`, `bridge-rx`, see `threads.rs`), or both on one
//! (`bridge`, [`Threads::One`]). The threads only move
//! events: what each batch does is the halves' own code, the same the single-thread core runs.
//! Polling is mio's (epoll on Linux, kqueue on macOS); kicks and internal wake-ups are
//! `sys::Event`s (an eventfd on Linux, a pipe elsewhere).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nat::{Nat, PortForward, Protocol};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

use crate::config::BridgeConfig;
use crate::core::{DeviceCore, lock};
use crate::device::{CONFIG_SPACE_SIZE, Device, RX_QUEUE, TX_QUEUE};
use crate::gateway::Gateway;
use crate::stats::{AtomicStats, BridgeStats};
use crate::sys::Event;
use crate::wire::MacAddr;
use crate::{Error, HostLink};

mod threads;

/// The interrupt callback: called with the queue index (0 RX, 1 TX) when the driver must be
/// notified, or [`crate::CONFIG_INTERRUPT`] when the device needs a reset.
pub type Interrupt = Arc<dyn Fn(u16) + Send + Sync>;

/// What the embedder hands over when the driver sets DRIVER_OK. `Q` is the embedder's queue
/// type (rust-vmm's [`Queue`] by default; anything implementing [`QueueT`]).
pub struct Activation<A, Q = Queue> {
    /// Guest memory (`GuestMemoryAtomic<GuestMemoryMmap>`, `Arc<GuestMemoryMmap>`, ...).
    pub mem: A,
    /// Queue 0, configured (size, addresses, ready) by the transport.
    pub rx: Q,
    /// Queue 1.
    pub tx: Q,
    /// The features the driver accepted.
    pub acked_features: u64,
    /// Signals the guest.
    pub interrupt: Interrupt,
}

impl<A, Q: core::fmt::Debug> core::fmt::Debug for Activation<A, Q> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Activation")
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .field("acked_features", &self.acked_features)
            .finish_non_exhaustive()
    }
}

/// How many threads run an activated device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Threads {
    /// One thread (`bridge`) serves both queues and the host link: fewest thread wake-ups
    /// per round trip, one core's worth of throughput.
    One,
    /// The pipeline: `bridge-tx` and `bridge-rx`, joined by bounded channels of batches.
    #[default]
    Two,
}

/// A configured, not yet running pipeline: a [`DeviceCore`] (device model, NAT, gateway)
/// waiting for [`Bridge::activate`].
#[derive(Debug)]
pub struct Bridge {
    core: DeviceCore,
}

impl Bridge {
    /// Validates `config` ([`DeviceCore::new`]).
    ///
    /// # Errors
    ///
    /// As [`DeviceCore::new`].
    pub fn new(config: BridgeConfig) -> Result<Bridge, Error> {
        Ok(Bridge {
            core: DeviceCore::new(config)?,
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &BridgeConfig {
        self.core.config()
    }

    /// The NAT as configured (forwards and the DNS redirect installed).
    pub fn nat(&self) -> &Nat {
        self.core.nat()
    }

    /// The gateway services.
    pub fn gateway(&self) -> &Gateway {
        self.core.gateway()
    }

    /// The device model.
    pub fn device(&self) -> &Device {
        self.core.device()
    }

    /// The offered features.
    pub fn device_features(&self) -> u64 {
        self.core.device_features()
    }

    /// Records the driver's features (the device model only; the host link's offloads are
    /// negotiated at [`Bridge::activate`]); returns the negotiated set.
    pub fn ack_features(&mut self, features: u64) -> u64 {
        self.core.ack_device_features(features)
    }

    /// The config space.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        self.core.config_space()
    }

    /// Reads config space bytes.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.core.read_config(offset, data)
    }

    /// The device core, for an embedder that drives it from its own event loop on one
    /// thread instead of [`Bridge::activate`].
    #[must_use]
    pub fn into_core(self) -> DeviceCore {
        self.core
    }

    /// Starts the pipeline: a TX thread (guest TX queue → gateway services → NAT → host
    /// link) and an RX thread (host link → NAT → guest RX queue, plus gateway replies). The
    /// features are negotiated with the host link ([`DeviceCore::ack_features`]: offloads the
    /// link refuses are turned off) and the queues checked and given EVENT_IDX
    /// ([`DeviceCore::prepare_queue`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if a queue is not ready or larger than `max_queue_size`, or the host
    /// link has no readiness descriptor or lacks the framing the configuration needs
    /// ([`DeviceCore::check_host_link`]); [`Error::Io`] if the poller, events or threads
    /// cannot be created or the host link refuses `prepare`.
    pub fn activate<A, H, Q>(
        self,
        activation: Activation<A, Q>,
        host: H,
    ) -> Result<BridgeHandle, Error>
    where
        A: GuestAddressSpace + Send + 'static,
        H: HostLink + 'static,
        Q: QueueT + Send + 'static,
    {
        self.activate_with(activation, host, Threads::Two)
    }

    /// As [`Bridge::activate`], on `threads` threads: [`Threads::One`] runs both halves on
    /// one thread (`bridge`), with the same code and the same handle.
    ///
    /// # Errors
    ///
    /// As [`Bridge::activate`].
    pub fn activate_with<A, H, Q>(
        self,
        activation: Activation<A, Q>,
        host: H,
        threads: Threads,
    ) -> Result<BridgeHandle, Error>
    where
        A: GuestAddressSpace + Send + 'static,
        H: HostLink + 'static,
        Q: QueueT + Send + 'static,
    {
        // The threads poll the link's readiness descriptor: a batch shorter than asked means
        // the link is drained until it says otherwise (no read that must fail per burst).
        let mut core = self.core.with_short_batch_drains(true);
        let Activation {
            mem,
            mut rx,
            mut tx,
            acked_features,
            interrupt,
        } = activation;
        host.prepare()?;
        if host.readiness_fd().is_none() {
            return Err(Error::Config(
                "the host link has no readiness descriptor".to_owned(),
            ));
        }
        core.check_host_link(acked_features, &host)?;
        core.ack_features(acked_features, &host);
        core.prepare_queue(&mut rx, RX_QUEUE)?;
        core.prepare_queue(&mut tx, TX_QUEUE)?;
        let guest_mac = core.gateway().guest_mac();
        let parts = core.into_parts();
        let shared = Arc::new(Shared {
            stats: AtomicStats::default(),
            nat: Mutex::new(parts.nat),
            lease: AtomicU32::new(0),
            guest_mac: AtomicU64::new(guest_mac.to_u64()),
            needs_reset: AtomicBool::new(false),
            error: Mutex::new(None),
            stop: AtomicBool::new(false),
            tx_stop: AtomicBool::new(false),
        });
        let events = Arc::new(Events {
            rx_kick: Event::new()?,
            tx_kick: Event::new()?,
            shutdown: Event::new()?,
            local: Event::new()?,
            pool: Event::new()?,
        });
        threads::start(
            threads::Start {
                mem,
                rx,
                tx,
                guest: parts.guest,
                tx_half: parts.tx,
                rx_half: parts.rx,
                pool_batches: parts.config.pool_batches,
                batch_size: parts.config.batch_size,
                reply_size: parts.reply_size,
                interrupt,
            },
            threads,
            Arc::new(host),
            shared,
            events,
        )
    }
}

/// The events the handle and the threads share.
#[derive(Debug)]
struct Events {
    rx_kick: Event,
    tx_kick: Event,
    shutdown: Event,
    /// Gateway replies are waiting for the RX thread.
    local: Event,
    /// A reply batch went back to the pool (the TX thread may go on).
    pool: Event,
}

/// A running bridge. Dropping it without [`BridgeHandle::shutdown`] also stops and joins
/// the threads.
#[derive(Debug)]
pub struct BridgeHandle {
    shared: Arc<Shared>,
    events: Arc<Events>,
    threads: Vec<(&'static str, JoinHandle<()>)>,
    /// The TX work, for [`BridgeHandle::kick_inline`] on the caller's thread.
    tx_work: Arc<dyn threads::InlineTx>,
}

impl BridgeHandle {
    /// Tells the bridge that the driver notified queue `queue` (0 RX: buffers added, 1 TX:
    /// frames to send).
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchQueue`], or the event's write error.
    pub fn kick(&self, queue: u16) -> Result<(), Error> {
        let ev = match queue {
            RX_QUEUE => &self.events.rx_kick,
            TX_QUEUE => &self.events.tx_kick,
            q => return Err(Error::NoSuchQueue(q)),
        };
        ev.notify()?;
        Ok(())
    }

    /// As [`BridgeHandle::kick`], but a TX kick with a few chains waiting (at most 8) drains
    /// the TX queue right here, on the calling thread, when the TX thread is not busy with it;
    /// otherwise it kicks that thread (a long queue is better drained there while the caller
    /// goes on producing). One thread wake-up less per kick for latency-bound traffic, for an
    /// embedder whose own thread takes the driver's notification (a vCPU exit, a doorbell
    /// handler). The TX work then runs under the same per-batch lock the TX thread takes; a
    /// failure is recorded as the TX thread's would be ([`BridgeHandle::error`]) and stops the
    /// pipeline.
    ///
    /// # Errors
    ///
    /// As [`BridgeHandle::kick`].
    pub fn kick_inline(&self, queue: u16) -> Result<(), Error> {
        if queue != TX_QUEUE || self.shared.stop.load(Ordering::Acquire) {
            return self.kick(queue);
        }
        match self.tx_work.try_drain() {
            Some(threads::Drained::Done) => Ok(()),
            // The budget ran out: the TX thread takes the rest.
            Some(threads::Drained::More) => self.kick(queue),
            // Failed as the TX thread would have: recorded; stop the pipeline.
            Some(threads::Drained::Failed) => {
                self.shared.stop.store(true, Ordering::SeqCst);
                let _ = self.events.shutdown.notify();
                Ok(())
            }
            None => self.kick(queue),
        }
    }

    /// The descriptor behind [`BridgeHandle::kick`] for `queue`, for registering as an
    /// ioeventfd (an eventfd on Linux; the read end of a pipe elsewhere); `None` for another
    /// index. It stays open as long as the handle.
    pub fn kick_fd(&self, queue: u16) -> Option<RawFd> {
        match queue {
            RX_QUEUE => Some(self.events.rx_kick.as_fd().as_raw_fd()),
            TX_QUEUE => Some(self.events.tx_kick.as_fd().as_raw_fd()),
            _ => None,
        }
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
        lock(&self.shared.nat)
            .add_forward(forward)
            .map_err(Error::NatRule)
    }

    /// Removes a port forward; returns whether it existed.
    pub fn remove_forward(&self, protocol: Protocol, external_port: u16) -> bool {
        lock(&self.shared.nat).remove_forward(protocol, external_port)
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
    pub fn lease(&self) -> Option<core::net::Ipv4Addr> {
        match self.shared.lease.load(Ordering::Relaxed) {
            0 => None,
            v => Some(core::net::Ipv4Addr::from(v)),
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

    /// Stops and joins the TX thread first, then the rest: a TX batch in flight may still hand
    /// gateway replies to the RX thread, which must be there to take them (with the RX thread
    /// gone first, they were counted as [`crate::DropCause::LocalQueueFull`]).
    fn stop_and_join(&mut self) -> Result<(), Error> {
        let mut res = Ok(());
        self.shared.tx_stop.store(true, Ordering::SeqCst);
        let _ = self.events.shutdown.notify();
        for (name, t) in self
            .threads
            .extract_if(.., |(name, _)| *name == "bridge-tx")
        {
            if t.join().is_err() {
                res = Err(Error::ThreadPanicked(name));
            }
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.events.shutdown.notify();
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
    /// Stops the TX thread only: shutdown stops and joins it before the RX thread, which
    /// takes the TX side's last reply batch ([`BridgeHandle::shutdown`]).
    tx_stop: AtomicBool,
}

impl core::fmt::Debug for Shared {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Shared")
            .field("stop", &self.stop)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn snapshot(&self) -> BridgeStats {
        let nat = lock(&self.nat);
        BridgeStats {
            bridge: self.stats.snapshot(),
            nat_flows: nat.len(),
            nat: nat.stats().clone(),
            needs_reset: self.needs_reset.load(Ordering::Relaxed),
        }
    }

    /// Records the first fatal error and stops everything.
    fn fail(&self, e: Error) {
        let mut g = lock(&self.error);
        if g.is_none() {
            tracing::warn!(error = %e, "bridge pipeline stopped");
            *g = Some(Arc::new(e));
        }
        self.stop.store(true, Ordering::SeqCst);
    }
}
