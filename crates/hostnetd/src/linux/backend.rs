//! The vhost-user side: [`NetBackend`] implements `vhost-user-backend`'s backend trait and drives the
//! [`DeviceCore`] from the worker thread's events (queue kicks, the TUN, a timer).
//!
//! Each event does bounded work: the device core stops after its budget
//! ([`bridge::TX_BATCH_BUDGET`], [`bridge::RX_PASS_BUDGET`]) and says what is left; the backend
//! then signals its own resume eventfd ([`RESUME_EVENT`]) and returns, releasing the queue
//! locks, so that the frontend's control messages (`GET_VRING_BASE` when the VM stops) and
//! the other events get their turn before the worker goes on with the rest.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, error, info, warn};
use utun::Tun;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{ShutdownHandle, VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use bridge::{MacAddr, Notify, PortId};

use super::device;
use super::network::{self, Shared, SharedNet};

/// Worker event id of the TUN's readiness (ids 0..=2 are the two queues and the exit event).
pub(crate) const HOST_EVENT: u64 = 3;
/// Worker event id of the housekeeping timer (NAT expiry).
pub(crate) const TIMER_EVENT: u64 = 4;
/// Worker event id of the resume eventfd: an earlier event stopped on its budget with work
/// left.
pub(crate) const RESUME_EVENT: u64 = 5;
/// Worker event id of the port's wake-up eventfd: another port left frames in its inbox.
pub(crate) const PENDING_EVENT: u64 = 6;

/// One frontend connection's device: a port of the shared network plus the vhost-user
/// bookkeeping.
pub(crate) struct NetBackend {
    net: SharedNet,
    /// This connection's port (another after a device reset).
    port: PortId,
    /// Its MAC (the config space's).
    mac: MacAddr,
    tun: Arc<Tun>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    timer: TimerFd,
    /// Signalled when an event stopped on its budget; the worker comes back for the rest.
    resume: EventFd,
    /// Signalled by other ports' workers when frames wait in this port's inbox.
    wake: Arc<EventFd>,
    /// TX chains wait beyond the last call's budget.
    tx_more: bool,
    /// Frames or host packets wait beyond the last delivery's budget.
    rx_more: bool,
    /// Set by SIGUSR1: log the counters on the next tick.
    stats_requested: Arc<AtomicBool>,
    /// Set when the TUN failed (deleted underneath): the daemon stops with an error.
    host_lost: Arc<AtomicBool>,
    shutdown: Option<ShutdownHandle>,
    broken: bool,
    /// Frames moved (both ways) at the last tick: the tick re-signals the driver while they
    /// change.
    moved_at_tick: u64,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("port", &self.port)
            .field("mac", &self.mac)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl NetBackend {
    /// A new port of `net` for a new connection (its DHCP state fresh; its address the one
    /// its MAC had before, else the first free one).
    pub(crate) fn new(
        net: SharedNet,
        tun: Arc<Tun>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        stats_requested: Arc<AtomicBool>,
        host_lost: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(TICK, Some(TICK))?;
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let (port, mac) = {
            let mut n = network::lock(&net);
            let (port, mac) = n.attach(wake.clone())?;
            // The TUN outlives connections: no GSO towards this device until its driver
            // accepts it (unless other guests use the TUN now).
            if n.alone(port) {
                clear_offloads(&tun);
            }
            (port, mac)
        };
        Ok(Self {
            net,
            port,
            mac,
            tun,
            mem,
            timer,
            resume: EventFd::new(EFD_NONBLOCK)?,
            wake,
            tx_more: false,
            rx_more: false,
            stats_requested,
            host_lost,
            shutdown: None,
            broken: false,
            moved_at_tick: 0,
        })
    }

    /// The timer's descriptor, for the worker's epoll.
    pub(crate) fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The resume eventfd's descriptor, for the worker's epoll ([`RESUME_EVENT`]).
    pub(crate) fn resume_fd(&self) -> RawFd {
        self.resume.as_raw_fd()
    }

    /// The wake-up eventfd's descriptor, for the worker's epoll ([`PENDING_EVENT`]).
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The port and its MAC.
    pub(crate) fn port(&self) -> (PortId, MacAddr) {
        (self.port, self.mac)
    }

    /// Lets the backend close the connection when the driver breaks the virtio protocol.
    pub(crate) fn set_shutdown_handle(&mut self, handle: Option<ShutdownHandle>) {
        self.shutdown = handle;
    }

    /// Logs the port's counters and detaches it (the connection ended).
    pub(crate) fn detach(&self) {
        let mut n = network::lock(&self.net);
        if let Some(s) = n.net.stats(self.port) {
            // The MAC the port follows now (its guest's), else the one it was given.
            let mac = n.net.switch().mac_of(self.port).unwrap_or(self.mac);
            device::log_stats(self.port, mac, s, &n.net);
        }
        n.detach(self.port);
    }

    /// Runs one event under the network's lock; a queue the driver broke closes the
    /// connection (the daemon keeps running). Work left beyond the budget re-arms the resume
    /// eventfd; other ports whose inboxes this event filled are woken.
    fn dispatch(&mut self, event: u64, vrings: &[VringRwLock]) -> Result<(), bridge::Error> {
        let [rx, tx] = vrings else {
            return Ok(());
        };
        let net = self.net.clone();
        let mut guard = network::lock(&net);
        let sh = &mut *guard;
        if sh.net.stats(self.port).is_none() {
            // Detached (the connection is closing).
            return Ok(());
        }
        let r = self.dispatch_locked(sh, event, rx, tx);
        sh.wake_others(self.port);
        if sh.net.host_failed(self.port) {
            self.host_lost.store(true, Ordering::SeqCst);
        }
        // Another port's worker waiting for the network gets it before this one's next event.
        network::unlock_fair(guard);
        r?;
        if self.tx_more || self.rx_more {
            // Come back after the worker has looked at its other events (the queue locks are
            // free until then).
            if let Err(e) = self.resume.write(1) {
                warn!("signalling the worker to resume failed: {e}");
            }
        }
        Ok(())
    }

    fn dispatch_locked(
        &mut self,
        sh: &mut Shared,
        event: u64,
        rx: &VringRwLock,
        tx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        match event {
            TX_EVENT => self.tx_kick(sh, rx, tx)?,
            RX_EVENT | HOST_EVENT => self.rx_ready(sh, rx, event == HOST_EVENT)?,
            PENDING_EVENT => {
                let _ = self.wake.read();
                sh.took_wakeup(self.port);
                self.rx_ready(sh, rx, false)?;
            }
            RESUME_EVENT => {
                let _ = self.resume.read();
                if std::mem::take(&mut self.tx_more) {
                    self.tx_kick(sh, rx, tx)?;
                }
                if std::mem::take(&mut self.rx_more) {
                    self.rx_ready(sh, rx, false)?;
                }
            }
            TIMER_EVENT => {
                let _ = self.timer.wait();
                sh.tick();
                // Safety net, once a second while frames move: deliver what waits for the RX
                // queue and signal both queues. One run saw a guest never answer DHCP offers
                // that were in its used ring: an interrupt was lost, and an EVENT_IDX driver
                // asks for the next one only when it has seen this one. The cause is not proven
                // (suspected: the frontend wiring a queue's call fd or enabling it after the
                // used ring moved; docs/STATUS.md). A spurious interrupt costs the driver one
                // look at its ring.
                let moved = sh
                    .net
                    .stats(self.port)
                    .map_or(0, |s| s.rx_frames + s.tx_frames + s.local_replies);
                // `local_replies` also moves when the tick queued a Router Advertisement.
                if moved != self.moved_at_tick {
                    self.moved_at_tick = moved;
                    let mem = self.mem.memory();
                    let mut rxg = rx.get_mut();
                    if rxg.get_queue().ready() && rxg.is_enabled() {
                        let now = sh.clock.now();
                        let n = sh.net.on_rx_ready(
                            self.port,
                            &*mem,
                            rxg.get_queue_mut(),
                            &*self.tun,
                            false,
                            now,
                        )?;
                        self.more(n);
                        signal(&rxg, "rx");
                    }
                    let txg = tx.get_mut();
                    if txg.get_queue().ready() && txg.is_enabled() {
                        signal(&txg, "tx");
                    }
                }
                if self.stats_requested.swap(false, Ordering::Relaxed) {
                    device::log_network_stats(&sh.net);
                }
            }
            other => debug!(event = other, "unknown worker event"),
        }
        Ok(())
    }

    /// The TX queue was kicked (or a TX budget ran out before): one budget of TX work.
    fn tx_kick(
        &mut self,
        sh: &mut Shared,
        rx: &VringRwLock,
        tx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let mem = self.mem.memory();
        let mut txg = tx.get_mut();
        // Checked under the lock the work is done under: the frontend's request handler
        // (GET_VRING_BASE when the VM stops) may have stopped the queue since the event came,
        // and working a stopped queue is an error that would close the connection.
        if !(txg.get_queue().ready() && txg.is_enabled()) {
            return Ok(());
        }
        let mut rxg = rx.get_mut();
        let rx_ok = rxg.get_queue().ready() && rxg.is_enabled();
        let now = sh.clock.now();
        let n = sh.net.on_tx_kick(
            self.port,
            &*mem,
            txg.get_queue_mut(),
            rx_ok.then(|| rxg.get_queue_mut()),
            &*self.tun,
            now,
        )?;
        self.more(n);
        if n.tx {
            signal(&txg, "tx");
        }
        if n.rx {
            signal(&rxg, "rx");
        }
        Ok(())
    }

    /// RX buffers were added or (`host_readable`) the TUN became readable, or a delivery
    /// budget ran out before: one budget of delivery.
    fn rx_ready(
        &mut self,
        sh: &mut Shared,
        rx: &VringRwLock,
        host_readable: bool,
    ) -> Result<(), bridge::Error> {
        let mem = self.mem.memory();
        let mut rxg = rx.get_mut();
        if rxg.get_queue().ready() && rxg.is_enabled() {
            let now = sh.clock.now();
            let n = sh.net.on_rx_ready(
                self.port,
                &*mem,
                rxg.get_queue_mut(),
                &*self.tun,
                host_readable,
                now,
            )?;
            self.more(n);
            if n.rx {
                signal(&rxg, "rx");
            }
        } else {
            sh.net.on_rx_unavailable(self.port);
        }
        Ok(())
    }

    /// Records what an event left for the resume eventfd.
    fn more(&mut self, n: Notify) {
        self.tx_more |= n.tx_more;
        self.rx_more |= n.rx_more;
    }
}

impl VhostUserBackendMut for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// The device's virtio features plus `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU needs it to enable
    /// the rings; see [`super::proxy`] for the early `SET_VRING_ENABLE` it then sends).
    fn features(&self) -> u64 {
        network::lock(&self.net)
            .net
            .device_features(self.port)
            .unwrap_or(0)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&mut self, features: u64) {
        let acked = network::lock(&self.net)
            .net
            .ack_features(self.port, features, &*self.tun);
        // One line per connection (and per renegotiation, e.g. a guest reboot).
        info!(
            port = self.port.0,
            features = %bridge::feature_names(acked),
            asked = format_args!("{features:#x}"),
            "guest negotiated"
        );
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK
    }

    fn reset_device(&mut self) {
        info!(port = self.port.0, "device reset by the frontend");
        {
            let mut n = network::lock(&self.net);
            match n.reattach(self.port, self.mac) {
                Ok(p) => self.port = p,
                Err(e) => warn!("re-attaching the port after a reset failed: {e:#}"),
            }
            if n.alone(self.port) {
                clear_offloads(&self.tun);
            }
        }
        self.tx_more = false;
        self.rx_more = false;
        self.broken = false;
    }

    fn set_event_idx(&mut self, enabled: bool) {
        debug!(enabled, "event idx");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0).min(MAX_CONFIG_READ)];
        let space = network::lock(&self.net).net.config_space(self.port);
        if let Some(space) = space {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(space.len());
            let n = buf.len().min(space.len() - from);
            buf[..n].copy_from_slice(&space[from..from + n]);
        }
        buf
    }

    fn update_memory(&mut self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!(event = device_event, "worker event");
        if self.broken {
            // The resume eventfd is level-triggered: empty it, or the worker spins on it.
            if u64::from(device_event) == RESUME_EVENT {
                let _ = self.resume.read();
            }
            return Ok(());
        }
        // Errors never leave this function: an error would end the worker thread for good.
        if let Err(e) = self.dispatch(u64::from(device_event), vrings) {
            warn!("the driver broke the virtio protocol ({e}); closing the connection");
            self.broken = true;
            if let Some(h) = &self.shutdown {
                h.shutdown();
            }
        } else if self.host_lost.load(Ordering::SeqCst) {
            // Never serve the guest on a dead link: close the connection, and the daemon stops.
            error!(
                tun = self.tun.name(),
                "the TUN {} failed (deleted underneath?); closing the connection and stopping",
                self.tun.name()
            );
            self.host_lost.store(true, Ordering::SeqCst);
            self.broken = true;
            if let Some(h) = &self.shutdown {
                h.shutdown();
            }
        }
        Ok(())
    }
}

/// Tells the TUN to hand over no partial checksums and no GSO packets (until the next
/// negotiation sets what the guest accepts).
fn clear_offloads(tun: &Tun) {
    if let Err(e) = bridge::HostLink::set_offloads(tun, bridge::LinkOffloads::NONE) {
        warn!("turning the TUN's offloads off failed: {e}");
    }
}

fn signal(vring: &vhost_user_backend::VringState<GuestMemoryAtomic<GuestMemoryMmap>>, which: &str) {
    if let Err(e) = vring.signal_used_queue() {
        debug!(queue = which, "signalling the driver failed: {e}");
    }
}

const NUM_QUEUES: usize = 2;
const MAX_QUEUE_SIZE: usize = 1024;
const RX_EVENT: u64 = 0;
const TX_EVENT: u64 = 1;
const MAX_CONFIG_READ: usize = 256;
const TICK: Duration = Duration::from_secs(1);
