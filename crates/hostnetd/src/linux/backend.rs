//! The vhost-user side: [`NetBackend`] implements `vhost-user-backend`'s backend trait and drives
//! its port of the shared network from the worker threads' events (queue kicks, the TUN, a
//! timer).
//!
//! Queue pairs (`--queues N`, N > 1): the device offers multiqueue (`VIRTIO_NET_F_MQ` with the
//! control queue at index 2N) and the vhost-user `MQ` protocol feature; each pair runs on a
//! worker thread of its own (vhost-user-backend's `queues_per_thread`: pair i's RX and TX
//! queues on worker i, the control queue with pair 0) that watches TUN queue i. Pair i writes
//! TUN queue i, so the kernel sends a flow's packets back on the queue that wrote it
//! (docs/PLATFORMS.md "Multi-queue"), and reads it while its port uses pair i; a TUN queue the
//! reading port's pair does not serve is handed to that port's pair 0. Which pairs a port
//! uses: what its driver set on the control queue (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` through
//! [`bridge::ControlQueue`]), or, when the frontend keeps the control queue (QEMU, Cloud
//! Hypervisor: they answer it and enable or disable the pairs' rings with
//! `SET_VRING_ENABLE`), the pairs whose rings are enabled, counted from pair 0. A TUN queue
//! no port uses is read empty into pair 0 and detached (`TUNSETQUEUE`; from the top down, so
//! the kernel's queue indices stay the pair indices) and attached again (from the bottom up)
//! when a port uses its pair again.
//!
//! Locks: the backend is vhost-user-backend's `VhostUserBackend` (`&self`), so a connection's
//! workers run at once. Each pair's worker holds its own state (its `bridge::PairWorker`: the
//! pair's TX and RX halves and counters) and reaches the shared network through
//! [`NetLock`], which the bridge takes once per batch, only for the gateway, the switch, the
//! NAT and the port's inbox; the copies out of and into guest memory and the TUN's system
//! calls run outside it. The connection's own state (port, memory, control queue) is behind
//! a small mutex taken briefly. Lock order: a pair's state, then the connection's, then the
//! network's (a device reset takes every pair's, in order).
//!
//! Each event does bounded work: the device core stops after its budget
//! ([`bridge::TX_BATCH_BUDGET`], [`bridge::RX_PASS_BUDGET`]) and says what is left; the backend
//! then signals the pair's resume eventfd and returns, releasing the queue locks, so that the
//! frontend's control messages (`GET_VRING_BASE` when the VM stops) and the other events get
//! their turn before the worker goes on with the rest.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tracing::{debug, error, info, warn};
use utun::Tun;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{ShutdownHandle, VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use vmm_sys_util::timerfd::TimerFd;

use bridge::{Clock, ControlCommand, ControlQueue, MacAddr, Notify, PortId};

use super::device;
use super::network::{self, NetLock, Shared, SharedNet, TunStop};

/// The worker event ids of the descriptors hostnetd adds to a worker's epoll (above the ids
/// vhost-user-backend keeps for the queues and its exit event: `0..=num_queues`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Events {
    /// The worker's TUN queue is readable.
    pub(crate) host: u64,
    /// The worker's housekeeping timer (NAT expiry, the interrupt safety net).
    pub(crate) timer: u64,
    /// The worker's resume eventfd: an earlier event stopped on its budget with work left
    /// (or another worker handed pair 0 something).
    pub(crate) resume: u64,
    /// The port's wake-up eventfd (pair 0's worker): frames wait in its inbox (another port's
    /// or another pair's event left them), or a port it parked for delivered its inbox.
    pub(crate) pending: u64,
    /// The worker's wait timer: its parked pair's wait ran out.
    pub(crate) wait: u64,
}

impl Events {
    /// The ids for a backend of `num_queues` queues (with one pair: 3, 4, 5, 6 and 7).
    pub(crate) const fn new(num_queues: usize) -> Self {
        let base = num_queues as u64 + 1;
        Events {
            host: base,
            timer: base + 1,
            resume: base + 2,
            pending: base + 3,
            wait: base + 4,
        }
    }
}

/// One queue pair's worker: its resume eventfd and what its last event left (other workers
/// set these), and what only the worker's own thread touches.
#[derive(Debug)]
struct PairSlot {
    /// Signalled when an event stopped on its budget; the worker comes back for the rest.
    resume: EventFd,
    /// TX chains wait beyond the last call's budget.
    tx_more: AtomicBool,
    /// The last TX kick stopped for another port's half-full inbox (`Notify::tx_waits`).
    tx_waits: AtomicBool,
    /// The pair waits to send until another port's worker has delivered its inbox
    /// (`bridge::Network::park`, the port parked): the port's wake-up (pair 0's worker resumes
    /// every parked pair of the port) or the pair's timer, [`WAIT`] at most, sends again.
    tx_parked: AtomicBool,
    /// Frames or host packets wait beyond the last delivery's budget.
    rx_more: AtomicBool,
    /// The pair's RX and TX rings were started and enabled at the worker's last event.
    rings_up: AtomicBool,
    /// The worker's own state, locked for each of its events (never by another worker while
    /// it holds another pair's: only a device reset takes them all, in order).
    own: Mutex<PairOwn>,
}

/// What only a pair's worker thread uses.
#[derive(Debug)]
struct PairOwn {
    timer: TimerFd,
    /// Armed for [`WAIT`] when the pair parks (`PairSlot::tx_parked`).
    wait: TimerFd,
    /// Frames the pair moved (both ways) at the last tick: the tick re-signals the driver
    /// while they change.
    moved_at_tick: u64,
    /// The pair's last read of its TUN queue stopped for its guest's RX buffers, and the
    /// guest has not added any since: it does not take the queue to read (it could deliver
    /// none of it; a frontend that never posts RX buffers would hold the queue).
    rx_starved: bool,
    /// The pair's side of the device (its halves and counters, outside the network's lock).
    device: bridge::PairWorker,
}

impl PairSlot {
    fn new(port: PortId, pair: usize) -> io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(TICK, Some(TICK))?;
        Ok(Self {
            resume: EventFd::new(EFD_NONBLOCK)?,
            tx_more: AtomicBool::new(false),
            tx_waits: AtomicBool::new(false),
            tx_parked: AtomicBool::new(false),
            rx_more: AtomicBool::new(false),
            rings_up: AtomicBool::new(false),
            own: Mutex::new(PairOwn {
                timer,
                wait: TimerFd::new()?,
                moved_at_tick: 0,
                rx_starved: false,
                device: bridge::PairWorker::new(port, pair),
            }),
        })
    }

    fn resume_later(&self) {
        if let Err(e) = self.resume.write(1) {
            warn!("signalling the worker to resume failed: {e}");
        }
    }
}

/// What the workers of one connection share besides the network (each takes it briefly).
struct Conn {
    /// This connection's port (another after a device reset).
    port: PortId,
    /// Its MAC (the config space's).
    mac: MacAddr,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// The device side of the control queue (used with more than one pair).
    ctrl: ControlQueue,
    /// The frontend runs the control queue through this backend (its ring was started and
    /// enabled at pair 0's worker's last event): the driver's `VQ_PAIRS_SET` says which
    /// pairs are in use, not the rings' enable state.
    ctrl_up: bool,
    /// TUN queues (a bit per index) that pair 0 reads for pairs out of use.
    handoff: u32,
    shutdown: Option<ShutdownHandle>,
}

/// One frontend connection's device: a port of the shared network plus the vhost-user
/// bookkeeping. Its workers run at the same time: each pair's worker holds its own state
/// ([`PairSlot`]) and reaches the network through a [`bridge::PairWorker`], which takes the
/// network's lock per batch only around what the ports share (the copies in and out of guest
/// memory and the TUN's system calls run outside it).
pub(crate) struct NetBackend {
    net: SharedNet,
    /// The TUN's queues, queue i for pair i (one without multiqueue).
    tuns: Arc<[Tun]>,
    /// A worker per queue pair.
    pairs: Vec<PairSlot>,
    conn: Mutex<Conn>,
    /// The network's clock (one for the one NAT).
    clock: Clock,
    /// Signalled by other ports' workers when frames wait in this port's inbox.
    wake: Arc<EventFd>,
    /// Set by SIGUSR1: log the counters on the next tick.
    stats_requested: Arc<AtomicBool>,
    /// Set when the TUN failed (deleted underneath): the daemon stops with an error.
    host_lost: Arc<AtomicBool>,
    broken: AtomicBool,
    events: Events,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (port, mac) = self.port();
        f.debug_struct("NetBackend")
            .field("port", &port)
            .field("mac", &mac)
            .field("pairs", &self.pairs.len())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// Whether a vring was started and enabled by the frontend (work on it is allowed).
fn ring_up(vring: &VringRwLock) -> bool {
    let v = vring.get_ref();
    v.get_queue().ready() && v.is_enabled()
}

impl NetBackend {
    /// A new port of `net` for a new connection (its DHCP state fresh; its address the one
    /// its MAC had before, else the first free one), with a queue pair per TUN queue.
    pub(crate) fn new(
        net: SharedNet,
        tuns: Arc<[Tun]>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        stats_requested: Arc<AtomicBool>,
        host_lost: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let pairs = tuns.len().max(1);
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        let (port, mac, clock) = {
            let mut n = network::lock(&net);
            let (port, mac) = n.attach(wake.clone())?;
            // The TUN outlives connections: no GSO towards this device until its driver
            // accepts it (unless other guests use the TUN now).
            if n.alone(port) {
                clear_offloads(&tuns[0]);
            }
            (port, mac, n.clock)
        };
        let slots = (0..pairs)
            .map(|i| PairSlot::new(port, i))
            .collect::<io::Result<Vec<_>>>()?;
        let num_queues = num_queues(pairs);
        Ok(Self {
            net,
            tuns,
            pairs: slots,
            conn: Mutex::new(Conn {
                port,
                mac,
                mem,
                ctrl: ControlQueue::new(u16::try_from(pairs).unwrap_or(1)),
                ctrl_up: false,
                handoff: 0,
                shutdown: None,
            }),
            clock,
            wake,
            stats_requested,
            host_lost,
            broken: AtomicBool::new(false),
            events: Events::new(num_queues),
        })
    }

    /// The ids of the events hostnetd adds to the workers' epolls.
    pub(crate) fn events(&self) -> Events {
        self.events
    }

    /// Pair `pair`'s timer descriptor, for its worker's epoll.
    pub(crate) fn timer_fd(&self, pair: usize) -> Option<RawFd> {
        self.pairs.get(pair).map(|w| w.own.lock().timer.as_raw_fd())
    }

    /// Pair `pair`'s wait timer, for its worker's epoll.
    pub(crate) fn wait_fd(&self, pair: usize) -> Option<RawFd> {
        self.pairs.get(pair).map(|w| w.own.lock().wait.as_raw_fd())
    }

    /// Pair `pair`'s resume eventfd, for its worker's epoll.
    pub(crate) fn resume_fd(&self, pair: usize) -> Option<RawFd> {
        self.pairs.get(pair).map(|w| w.resume.as_raw_fd())
    }

    /// The wake-up eventfd's descriptor, for pair 0's worker's epoll.
    pub(crate) fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// The port and its MAC.
    pub(crate) fn port(&self) -> (PortId, MacAddr) {
        let c = self.conn.lock();
        (c.port, c.mac)
    }

    /// Lets the backend close the connection when the driver breaks the virtio protocol.
    pub(crate) fn set_shutdown_handle(&self, handle: Option<ShutdownHandle>) {
        self.conn.lock().shutdown = handle;
    }

    /// Logs the port's counters and detaches it (the connection ended); TUN queues no port
    /// uses any more are detached.
    pub(crate) fn detach(&self) {
        let (port, mac) = self.port();
        let mut n = network::lock(&self.net);
        if let Some(s) = n.net.stats(port) {
            // The MAC the port follows now (its guest's), else the one it was given.
            let mac = n.net.switch().mac_of(port).unwrap_or(mac);
            device::log_stats(port, mac, s, &n.net);
        }
        n.detach(port);
        follow_tun_queues(&mut n, &self.tuns);
    }

    /// The guest's memory as it is now.
    fn memory(&self) -> GuestMemoryAtomic<GuestMemoryMmap> {
        self.conn.lock().mem.clone()
    }

    /// Runs one event of pair `pair`'s worker (the network locked per step, never for the
    /// whole event); a queue the driver broke closes the connection (the daemon keeps
    /// running). Work left beyond the budget re-arms the pair's resume eventfd; other ports
    /// whose inboxes this event filled are woken.
    fn dispatch(
        &self,
        pair: usize,
        event: u64,
        vrings: &[VringRwLock],
    ) -> Result<(), bridge::Error> {
        let (rx, tx, ctrl) = match vrings {
            [rx, tx] => (rx, tx, None),
            [rx, tx, ctrl] => (rx, tx, Some(ctrl)),
            _ => return Ok(()),
        };
        let Some(slot) = self.pairs.get(pair) else {
            return Ok(());
        };
        let mut own = slot.own.lock();
        let port = self.conn.lock().port;
        if network::lock(&self.net).net.stats(port).is_none() {
            // Detached (the connection is closing).
            return Ok(());
        }
        let r = self
            .sync_pairs(&mut own, port, pair, rx, tx, ctrl)
            .and_then(|()| self.dispatch_event(&mut own, port, pair, event, rx, tx, ctrl));
        let waits = slot.tx_waits.swap(false, Ordering::Relaxed);
        let parked = {
            let mut guard = network::lock(&self.net);
            // The kick stopped for another port's inbox: while one still waits for its
            // worker, send nothing more until a worker that delivered wakes this port (a
            // call at once would fetch a batch that inbox has no room for).
            let parked = waits && guard.net.park(port);
            if parked {
                // Under the lock: a worker that finds the port released after this sees it
                // (and resumes the pair: `resume_parked`).
                slot.tx_more.store(false, Ordering::Relaxed);
                slot.tx_parked.store(true, Ordering::Relaxed);
            }
            guard.wake_after(port, pair);
            if guard.net.host_failed(port) {
                self.host_lost.store(true, Ordering::SeqCst);
            }
            // Another port's worker waiting for the network gets it first.
            network::unlock_fair(guard);
            parked
        };
        if parked {
            // The wait's bound.
            if let Err(e) = own.wait.reset(WAIT, None) {
                warn!("arming the worker's wait timer failed: {e}");
            }
        }
        drop(own);
        r?;
        if slot.tx_more.load(Ordering::Relaxed) || slot.rx_more.load(Ordering::Relaxed) {
            // Come back after the worker has looked at its other events (the queue locks are
            // free until then).
            slot.resume_later();
        }
        Ok(())
    }

    /// The pairs the port's driver uses now: what it set on the control queue when the
    /// frontend gives this backend the control queue, else the pairs whose rings are
    /// enabled, counted from pair 0 (at least 1).
    fn wanted_pairs(&self, conn: &Conn) -> usize {
        if conn.ctrl_up {
            usize::from(conn.ctrl.pairs()).clamp(1, self.pairs.len())
        } else {
            1 + self
                .pairs
                .iter()
                .skip(1)
                .take_while(|w| w.rings_up.load(Ordering::Relaxed))
                .count()
        }
    }

    /// Notes the state of `pair`'s rings (and pair 0's of the control queue's) and makes the
    /// network use the pairs the driver uses: more at once (their TUN queues attached), fewer
    /// on pair 0's worker (the TUN queues going are read into pair 0 first; another pair's
    /// worker hands it over).
    fn sync_pairs(
        &self,
        own: &mut PairOwn,
        port: PortId,
        pair: usize,
        rx: &VringRwLock,
        tx: &VringRwLock,
        ctrl: Option<&VringRwLock>,
    ) -> Result<(), bridge::Error> {
        if self.pairs.len() == 1 {
            return Ok(());
        }
        let up = ring_up(rx) && ring_up(tx);
        if up != self.pairs[pair].rings_up.swap(up, Ordering::Relaxed) {
            debug!(port = port.0, pair, up, "queue pair's rings");
        }
        // The control ring's state before the connection's lock (a ring's lock is never taken
        // under it).
        let ctrl_up = (pair == 0).then(|| ctrl.is_some_and(ring_up));
        let (have, want) = {
            let mut c = self.conn.lock();
            if let Some(up) = ctrl_up {
                c.ctrl_up = up;
            }
            let want = self.wanted_pairs(&c);
            let mut n = network::lock(&self.net);
            let have = n.net.queue_pairs(port).unwrap_or(1);
            if want == have {
                return Ok(());
            }
            if want < have && pair != 0 {
                self.pairs[0].resume_later();
                return Ok(());
            }
            n.net.set_queue_pairs(port, want)?;
            if pair != 0 {
                follow_tun_queues(&mut n, &self.tuns);
            }
            (have, want)
        };
        info!(port = port.0, from = have, to = want, "queue pairs in use");
        // Pairs coming into use look at their rings once (a kick that came while the pair
        // was out of use was left alone).
        for w in self.pairs.iter().take(want).skip(have) {
            w.tx_more.store(true, Ordering::Relaxed);
            w.rx_more.store(true, Ordering::Relaxed);
            w.resume_later();
        }
        if pair == 0 {
            self.drain_unused_tun_queues(own, port, rx)?;
            follow_tun_queues(&mut network::lock(&self.net), &self.tuns);
        }
        Ok(())
    }

    /// Before TUN queues that no port uses any more are detached: what they hold goes to pair
    /// 0 (`rx`, its RX ring; `own` is pair 0's) as far as it has room (a detached queue's
    /// packets are lost).
    fn drain_unused_tun_queues(
        &self,
        own: &mut PairOwn,
        port: PortId,
        rx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let used = used_pairs(&network::lock(&self.net));
        for q in (used..self.tuns.len()).rev() {
            if !network::lock(&self.net).tun_queue_attached(q) {
                continue;
            }
            for _ in 0..DRAIN_ROUNDS {
                let n = self.rx_ready(own, port, rx, q, true)?;
                if !n.rx_more {
                    break;
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch_event(
        &self,
        own: &mut PairOwn,
        port: PortId,
        pair: usize,
        event: u64,
        rx: &VringRwLock,
        tx: &VringRwLock,
        ctrl: Option<&VringRwLock>,
    ) -> Result<(), bridge::Error> {
        let ev = self.events;
        let slot = &self.pairs[pair];
        match event {
            TX_EVENT => self.tx_kick(own, port, rx, tx)?,
            RX_EVENT => {
                // The guest added RX buffers.
                own.rx_starved = false;
                self.rx_ready(own, port, rx, pair, false)?;
            }
            CTRL_EVENT if pair == 0 => {
                if let Some(c) = ctrl {
                    self.ctrl_kick(own, port, rx, tx, c)?;
                }
            }
            e if e == ev.host => self.host_readable(own, port, pair, rx)?,
            e if e == ev.pending => {
                let _ = self.wake.read();
                let released = {
                    let mut sh = network::lock(&self.net);
                    sh.net.took_wakeup(port);
                    !sh.net.parked(port)
                };
                self.rx_ready(own, port, rx, 0, false)?;
                if released {
                    // The port is released: each of its parked pairs sends again.
                    self.resume_parked(pair);
                    if slot.tx_parked.swap(false, Ordering::Relaxed) {
                        self.tx_kick(own, port, rx, tx)?;
                    }
                }
            }
            e if e == ev.resume => {
                let _ = slot.resume.read();
                if slot.tx_more.swap(false, Ordering::Relaxed) {
                    self.tx_kick(own, port, rx, tx)?;
                }
                if slot.rx_more.swap(false, Ordering::Relaxed) {
                    self.rx_ready(own, port, rx, pair, false)?;
                }
                if pair == 0 {
                    self.read_handed_over(own, port, rx)?;
                }
            }
            e if e == ev.wait => {
                // The wait ran out (a release can come too late or not at all: a guest that
                // stops taking its frames holds another back by WAIT once; its full inbox
                // then takes nothing and makes no one wait).
                let _ = own.wait.wait();
                if slot.tx_parked.swap(false, Ordering::Relaxed) {
                    network::lock(&self.net).net.unpark(port);
                    self.resume_parked(pair);
                    self.tx_kick(own, port, rx, tx)?;
                }
            }
            e if e == ev.timer => self.tick(own, port, pair, rx, tx)?,
            other => debug!(event = other, "unknown worker event"),
        }
        Ok(())
    }

    /// The port is not parked any more: every parked pair but `me` sends again, on its own
    /// worker (its resume eventfd).
    fn resume_parked(&self, me: usize) {
        for (p, w) in self.pairs.iter().enumerate() {
            if p != me && w.tx_parked.swap(false, Ordering::Relaxed) {
                w.tx_more.store(true, Ordering::Relaxed);
                w.resume_later();
            }
        }
    }

    /// Whether the port uses `pair` now (and its rings may be worked); `sh` locked.
    fn pair_in_use_locked(&self, sh: &Shared, port: PortId, pair: usize) -> bool {
        pair < sh.net.queue_pairs(port).unwrap_or(1)
            && (self.pairs.len() == 1 || self.pairs[pair].rings_up.load(Ordering::Relaxed))
    }

    /// TUN queue `pair` is readable: its pair reads it when the port uses the pair, else
    /// pair 0 (on its worker); a detached queue is never read (its descriptor answers
    /// `EBADFD`, which the bridge takes for a TUN deleted underneath).
    fn host_readable(
        &self,
        own: &mut PairOwn,
        port: PortId,
        pair: usize,
        rx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let (attached, in_use) = {
            let n = network::lock(&self.net);
            (
                n.tun_queue_attached(pair),
                pair == 0 || self.pair_in_use_locked(&n, port, pair),
            )
        };
        if !attached {
            return Ok(());
        }
        if in_use {
            self.rx_ready(own, port, rx, pair, true)?;
        } else {
            self.hand_over(pair);
        }
        Ok(())
    }

    /// TUN queue `q` is to be read by pair 0 (its worker resumes for it).
    fn hand_over(&self, q: usize) {
        self.conn.lock().handoff |= 1 << q;
        self.pairs[0].resume_later();
    }

    /// Pair 0 reads the TUN queues handed to it (one budget each; a queue with more stays
    /// handed over).
    fn read_handed_over(
        &self,
        own: &mut PairOwn,
        port: PortId,
        rx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let queues = std::mem::take(&mut self.conn.lock().handoff);
        for q in 1..self.tuns.len() {
            if queues & (1 << q) == 0 {
                continue;
            }
            let readable = {
                let n = network::lock(&self.net);
                n.tun_queue_attached(q) && !self.pair_in_use_locked(&n, port, q)
            };
            if !readable {
                continue;
            }
            let n = self.rx_ready(own, port, rx, q, true)?;
            if n.rx_more {
                self.hand_over(q);
            }
        }
        Ok(())
    }

    /// The driver kicked the control queue: its commands answered (`VQ_PAIRS_SET` within the
    /// pairs offered), then the network follows the pairs it set.
    fn ctrl_kick(
        &self,
        own: &mut PairOwn,
        port: PortId,
        rx: &VringRwLock,
        tx: &VringRwLock,
        ctrl: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let mem = self.memory();
        let mem = mem.memory();
        {
            let mut cg = ctrl.get_mut();
            if !(cg.get_queue().ready() && cg.is_enabled()) {
                return Ok(());
            }
            let max = self.pairs.len();
            let interrupt = self
                .conn
                .lock()
                .ctrl
                .process(&*mem, cg.get_queue_mut(), |cmd| match cmd {
                    ControlCommand::QueuePairs(n) => (1..=max).contains(&usize::from(n)),
                    _ => false,
                })?;
            if interrupt {
                signal(&cg, "ctrl");
            }
        }
        // The pairs the driver set (Network::set_queue_pairs, TUN queues followed).
        self.sync_pairs(own, port, 0, rx, tx, Some(ctrl))
    }

    /// The pair's timer: the network's tick (once per [`TICK`] whichever worker comes
    /// first) and the interrupt safety net.
    fn tick(
        &self,
        own: &mut PairOwn,
        port: PortId,
        pair: usize,
        rx: &VringRwLock,
        tx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let _ = own.timer.wait();
        let (moved, in_use) = {
            let mut sh = network::lock(&self.net);
            sh.tick();
            // Safety net, once a second while frames move: deliver what waits for the RX
            // queue and signal both queues. One run saw a guest never answer DHCP offers
            // that were in its used ring: an interrupt was lost, and an EVENT_IDX driver
            // asks for the next one only when it has seen this one. The cause is not proven
            // (suspected: the frontend wiring a queue's call fd or enabling it after the
            // used ring moved; docs/STATUS.md). A spurious interrupt costs the driver one
            // look at its ring.
            let moved = if self.pairs.len() == 1 {
                sh.net
                    .stats(port)
                    .map_or(0, |s| s.rx_frames + s.tx_frames + s.local_replies)
            } else {
                // `local_replies` also moves when the tick queued a Router Advertisement.
                let mine = sh
                    .net
                    .pair_stats(port, pair)
                    .map_or(0, |s| s.rx_frames + s.tx_frames);
                let local = if pair == 0 {
                    sh.net.stats(port).map_or(0, |s| s.local_replies)
                } else {
                    0
                };
                mine + local
            };
            if pair == 0 && self.stats_requested.swap(false, Ordering::Relaxed) {
                device::log_network_stats(&sh.net);
            }
            (moved, self.pair_in_use_locked(&sh, port, pair))
        };
        if moved != own.moved_at_tick && in_use {
            own.moved_at_tick = moved;
            if ring_up(rx) {
                // Also a look at the TUN for a pair that stopped for its guest's RX buffers
                // (in case the guest's kick for new ones was lost).
                own.rx_starved = false;
                let n = self.rx_ready(own, port, rx, pair, false)?;
                if !n.rx {
                    signal(&rx.get_ref(), "rx");
                }
            }
            let txg = tx.get_ref();
            if txg.get_queue().ready() && txg.is_enabled() {
                signal(&txg, "tx");
            }
        }
        Ok(())
    }

    /// The pair's TX queue was kicked (or a TX budget ran out before): one budget of TX
    /// work, written to TUN queue `pair`.
    fn tx_kick(
        &self,
        own: &mut PairOwn,
        port: PortId,
        rx: &VringRwLock,
        tx: &VringRwLock,
    ) -> Result<(), bridge::Error> {
        let pair = own.device.pair();
        let mem = self.memory();
        let mem = mem.memory();
        let mut txg = tx.get_mut();
        // Checked under the queue's lock the work is done under: the frontend's request
        // handler (GET_VRING_BASE when the VM stops) may have stopped the queue since the
        // event came, and working a stopped queue is an error that would close the connection.
        if !(txg.get_queue().ready() && txg.is_enabled()) {
            return Ok(());
        }
        let mut rxg = rx.get_mut();
        let rx_ok = rxg.get_queue().ready() && rxg.is_enabled();
        let now = self.clock.now();
        let tun = self.tun(pair);
        let q = self.tun_index(pair);
        // A pair the driver does not use (a kick before its VQ_PAIRS_SET): left alone.
        let Some((reads, _)) = self.begin_host_reads(own, port, q, false) else {
            return Ok(());
        };
        let n = match own.device.on_tx_kick(
            &NetLock(&self.net),
            &*mem,
            txg.get_queue_mut(),
            rx_ok.then(|| rxg.get_queue_mut()),
            tun,
            now,
        ) {
            // The driver set fewer pairs meanwhile.
            Err(bridge::Error::PairNotInUse(_)) => Ok(Notify::default()),
            r => r,
        };
        // Also after an error (the connection closes): the queue is not held for good.
        self.end_host_reads(own, port, q, reads, n.as_ref().copied().unwrap_or_default());
        let n = n?;
        self.more(pair, n);
        if n.tx {
            signal(&txg, "tx");
        }
        if n.rx {
            signal(&rxg, "rx");
        }
        Ok(())
    }

    /// RX buffers were added or (`host_readable`) TUN queue `queue` became readable, or a
    /// delivery budget ran out before: one budget of delivery into the RX queue of `own`'s
    /// pair.
    fn rx_ready(
        &self,
        own: &mut PairOwn,
        port: PortId,
        rx: &VringRwLock,
        queue: usize,
        host_readable: bool,
    ) -> Result<Notify, bridge::Error> {
        let pair = own.device.pair();
        let mem = self.memory();
        let mem = mem.memory();
        let mut rxg = rx.get_mut();
        let q = self.tun_index(queue);
        let begun = (rxg.get_queue().ready() && rxg.is_enabled())
            .then(|| self.begin_host_reads(own, port, q, host_readable))
            .flatten();
        if let Some((reads, left)) = begun {
            let now = self.clock.now();
            let tun = self.tun(queue);
            let n = match own.device.on_rx_ready(
                &NetLock(&self.net),
                &*mem,
                rxg.get_queue_mut(),
                tun,
                host_readable || left,
                now,
            ) {
                Err(bridge::Error::PairNotInUse(_)) => Ok(Notify::default()),
                r => r,
            };
            self.end_host_reads(own, port, q, reads, n.as_ref().copied().unwrap_or_default());
            let n = n?;
            self.more(pair, n);
            if n.rx {
                signal(&rxg, "rx");
            }
            Ok(n)
        } else {
            if host_readable {
                own.device.on_rx_unavailable();
            }
            Ok(Notify::default())
        }
    }

    /// TUN queue `q` (queue 0 for an index beyond them).
    fn tun(&self, q: usize) -> &Tun {
        &self.tuns[self.tun_index(q)]
    }

    /// The index of [`NetBackend::tun`]`(q)`.
    fn tun_index(&self, q: usize) -> usize {
        if q < self.tuns.len() { q } else { 0 }
    }

    /// Before a bridge call of `own`'s pair that may read TUN queue `q` (`readable`: it became
    /// readable; or the pair has packets left to read there; or that queue's reader
    /// detached): whether the pair reads it in this call (the queue claimed for its port:
    /// one port's worker reads a queue at a time, see `network::Shared::claim_tun`; the
    /// others leave it alone), and whether it reads for a reader that detached.
    /// `None`: the port does not use the pair now (checked under the same hold of the lock).
    fn begin_host_reads(
        &self,
        own: &mut PairOwn,
        port: PortId,
        q: usize,
        readable: bool,
    ) -> Option<(bool, bool)> {
        let mut sh = network::lock(&self.net);
        if !self.pair_in_use_locked(&sh, port, own.device.pair()) {
            return None;
        }
        let left = sh.tun_left(q);
        let wants = !own.rx_starved && (readable || left || own.device.host_pending());
        let reads = wants && sh.claim_tun(q, port, std::time::Instant::now());
        drop(sh);
        own.device.set_host_reads(reads);
        Some((reads, left && reads))
    }

    /// After a bridge call that read TUN queue `q` (`reads`, see
    /// [`NetBackend::begin_host_reads`]): drained, the pair lets the queue go; stopped for
    /// its budget, it comes back for the rest; stopped for its guest's RX buffers, it keeps
    /// the queue for a while (`network::Shared::release_tun`) and takes it again only after
    /// the guest added buffers.
    fn end_host_reads(&self, own: &mut PairOwn, port: PortId, q: usize, reads: bool, n: Notify) {
        if !reads {
            return;
        }
        let stop = match (own.device.host_pending(), n.rx_more) {
            (false, _) => TunStop::Drained,
            (true, true) => TunStop::Budget,
            (true, false) => TunStop::Starved,
        };
        own.rx_starved = stop == TunStop::Starved;
        network::lock(&self.net).release_tun(q, port, stop, std::time::Instant::now());
    }

    /// Records what an event left for the pair's resume eventfd.
    fn more(&self, pair: usize, n: Notify) {
        let w = &self.pairs[pair];
        if n.tx_more {
            w.tx_more.store(true, Ordering::Relaxed);
        }
        if n.tx_waits {
            w.tx_waits.store(true, Ordering::Relaxed);
        }
        if n.rx_more {
            w.rx_more.store(true, Ordering::Relaxed);
        }
    }

    /// Closes the connection (the driver broke the protocol, or the TUN is gone).
    fn close(&self) {
        self.broken.store(true, Ordering::SeqCst);
        if let Some(h) = &self.conn.lock().shutdown {
            h.shutdown();
        }
    }
}

/// The most pairs any port uses (at least 1).
fn used_pairs(sh: &Shared) -> usize {
    sh.net
        .ports()
        .filter_map(|(p, _)| sh.net.queue_pairs(p))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// TUN queue q stays attached while some port uses pair q (queue 0 always): queues no port
/// uses are detached from the top down, queues used again attached from the bottom up, so
/// the kernel's indices stay the pairs' (docs/PLATFORMS.md "Multi-queue"). A queue whose
/// call fails stays as it was (logged); the next change tries again.
pub(crate) fn follow_tun_queues(sh: &mut Shared, tuns: &[Tun]) {
    let used = used_pairs(sh);
    for q in (used..tuns.len()).rev() {
        if sh.tun_queue_attached(q) {
            match tuns[q].set_queue_enabled(false) {
                Ok(()) => {
                    sh.set_tun_queue_attached(q, false);
                    debug!(queue = q, "TUN queue detached");
                }
                Err(e) => warn!(queue = q, "detaching a TUN queue failed: {e}"),
            }
        }
    }
    for (q, tun) in tuns.iter().enumerate().take(used).skip(1) {
        if !sh.tun_queue_attached(q) {
            match tun.set_queue_enabled(true) {
                Ok(()) => {
                    sh.set_tun_queue_attached(q, true);
                    debug!(queue = q, "TUN queue attached");
                }
                Err(e) => {
                    warn!(queue = q, "attaching a TUN queue failed: {e}");
                    break;
                }
            }
        }
    }
}

/// The queues a backend of `pairs` queue pairs has: RX and TX per pair, and the control queue
/// (index 2 × `pairs`) with more than one.
pub(crate) const fn num_queues(pairs: usize) -> usize {
    if pairs > 1 { 2 * pairs + 1 } else { 2 }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        num_queues(self.pairs.len())
    }

    /// A worker per queue pair: pair i's RX and TX queues (2i, 2i + 1), the control queue
    /// with pair 0.
    fn queues_per_thread(&self) -> Vec<u64> {
        let pairs = self.pairs.len();
        (0..pairs)
            .map(|i| {
                let mask = 0b11u64 << (2 * i);
                if i == 0 && pairs > 1 {
                    mask | 1 << (2 * pairs)
                } else {
                    mask
                }
            })
            .collect()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    /// The device's virtio features plus `VHOST_USER_F_PROTOCOL_FEATURES` (QEMU needs it to enable
    /// the rings; see [`super::proxy`] for the early `SET_VRING_ENABLE` it then sends).
    fn features(&self) -> u64 {
        let port = self.conn.lock().port;
        network::lock(&self.net)
            .net
            .device_features(port)
            .unwrap_or(0)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn acked_features(&self, features: u64) {
        let mut c = self.conn.lock();
        let acked = network::lock(&self.net)
            .net
            .ack_features(c.port, features, &self.tuns[0]);
        // A new negotiation starts again with one queue pair.
        c.ctrl.set_features(acked);
        // One line per connection (and per renegotiation, e.g. a guest reboot).
        info!(
            port = c.port.0,
            features = %bridge::feature_names(acked),
            asked = format_args!("{features:#x}"),
            "guest negotiated"
        );
    }

    /// `CONFIG` and `REPLY_ACK`; with more than one queue pair also `MQ` (the frontend then
    /// asks `GET_QUEUE_NUM`: [`Self::num_queues`]).
    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        let f = VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
        if self.pairs.len() > 1 {
            f | VhostUserProtocolFeatures::MQ
        } else {
            f
        }
    }

    fn reset_device(&self) {
        // Every worker's state, in pair order, then the connection's, then the network's.
        let mut owns: Vec<_> = self.pairs.iter().map(|w| w.own.lock()).collect();
        let mut c = self.conn.lock();
        info!(port = c.port.0, "device reset by the frontend");
        {
            let mut n = network::lock(&self.net);
            match n.reattach(c.port, c.mac) {
                Ok(p) => c.port = p,
                Err(e) => warn!("re-attaching the port after a reset failed: {e:#}"),
            }
            if n.alone(c.port) {
                clear_offloads(&self.tuns[0]);
            }
            follow_tun_queues(&mut n, &self.tuns);
        }
        for (i, (w, own)) in self.pairs.iter().zip(owns.iter_mut()).enumerate() {
            w.tx_more.store(false, Ordering::Relaxed);
            w.rx_more.store(false, Ordering::Relaxed);
            w.rings_up.store(false, Ordering::Relaxed);
            own.device = bridge::PairWorker::new(c.port, i);
            own.moved_at_tick = 0;
        }
        c.ctrl = ControlQueue::new(u16::try_from(self.pairs.len()).unwrap_or(1));
        c.ctrl_up = false;
        c.handoff = 0;
        self.broken.store(false, Ordering::SeqCst);
    }

    fn set_event_idx(&self, enabled: bool) {
        debug!(enabled, "event idx");
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0).min(MAX_CONFIG_READ)];
        let port = self.conn.lock().port;
        let space = network::lock(&self.net).net.config_space(port);
        if let Some(space) = space {
            let from = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(space.len());
            let n = buf.len().min(space.len() - from);
            buf[..n].copy_from_slice(&space[from..from + n]);
        }
        buf
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        self.conn.lock().mem = mem;
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        thread_id: usize,
    ) -> io::Result<()> {
        tracing::trace!(event = device_event, pair = thread_id, "worker event");
        if self.broken.load(Ordering::SeqCst) {
            // The resume eventfd is level-triggered: empty it, or the worker spins on it.
            if u64::from(device_event) == self.events.resume
                && let Some(w) = self.pairs.get(thread_id)
            {
                let _ = w.resume.read();
            }
            return Ok(());
        }
        // Errors never leave this function: an error would end the worker thread for good.
        if let Err(e) = self.dispatch(thread_id, u64::from(device_event), vrings) {
            warn!("the driver broke the virtio protocol ({e}); closing the connection");
            self.close();
        } else if self.host_lost.load(Ordering::SeqCst) {
            // Never serve the guest on a dead link: close the connection, and the daemon stops.
            error!(
                tun = self.tuns[0].name(),
                "the TUN {} failed (deleted underneath?); closing the connection and stopping",
                self.tuns[0].name()
            );
            self.close();
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

const MAX_QUEUE_SIZE: usize = 1024;
/// A pair's worker's queue events: its RX and TX queues, and on pair 0's worker (with more
/// than one pair) the control queue.
const RX_EVENT: u64 = 0;
const TX_EVENT: u64 = 1;
const CTRL_EVENT: u64 = 2;
/// Rounds of pair 0's delivery that read a TUN queue going out of use.
const DRAIN_ROUNDS: usize = 8;
const MAX_CONFIG_READ: usize = 256;
const TICK: Duration = Duration::from_secs(1);
/// How long a parked pair waits for another port's worker at most (see `PairSlot::tx_parked`).
const WAIT: Duration = Duration::from_millis(5);
