//! The pipeline threads (Linux: eventfd + epoll).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crossbeam_channel::{Receiver, Sender};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{Activation, Bridge, BridgeHandle, Interrupt, Shared, lock};
use crate::device::{
    CONFIG_INTERRUPT, RX_QUEUE, TX_QUEUE, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_RING_F_EVENT_IDX,
    header_len_for, sanitize_features,
};
use crate::engine::{RxEngine, TxEngine};
use crate::frame::FrameBatch;
use crate::offload::Offloads;
use crate::rx::RxPath;
use crate::stats::{AtomicStats, DropCause, Stats};
use crate::tx::TxPath;
use crate::wire::MacAddr;
use crate::{Error, HostLink};

/// The eventfds the handle owns.
#[derive(Debug)]
pub(super) struct Fds {
    rx_kick: Arc<EventFd>,
    tx_kick: Arc<EventFd>,
    shutdown: Arc<EventFd>,
    /// The TX work, for [`kick_inline`] on the caller's thread.
    tx_work: Arc<dyn InlineTx>,
}

impl core::fmt::Debug for dyn InlineTx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InlineTx")
    }
}

/// TX work that a kicker may run on its own thread when the TX thread is idle.
pub(super) trait InlineTx: Send + Sync {
    /// Drains the TX queue if nobody else is; `None` if the TX thread is busy with it,
    /// `Some(false)` if the queue or host link failed (recorded as the TX thread would).
    fn try_drain(&self) -> Option<bool>;
}

/// The most chains a kicker drains on its own thread ([`kick_inline`]); more go to the TX
/// thread.
const INLINE_MAX_CHAINS: usize = 8;

impl<A: GuestAddressSpace + Send> InlineTx for std::sync::Mutex<TxState<A>> {
    fn try_drain(&self) -> Option<bool> {
        let mut st = match self.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        // A long queue goes to the TX thread, so that the kicker can go on producing while it
        // is drained (a pipeline across two threads); a short one is drained right here.
        let waiting = {
            let guard = st.mem.memory();
            crate::ring::available(&*guard, &st.queue).unwrap_or(0)
        };
        if usize::from(waiting) > INLINE_MAX_CHAINS {
            return None;
        }
        match st.drain() {
            Ok(()) => Some(true),
            Err(e) => {
                fail(&st.shared, &st.interrupt, e, TX_QUEUE);
                Some(false)
            }
        }
    }
}

pub(super) fn activate<A, H>(
    bridge: Bridge,
    act: Activation<A>,
    host: H,
) -> Result<BridgeHandle, Error>
where
    A: GuestAddressSpace + Send + 'static,
    H: HostLink + 'static,
{
    let Bridge {
        config,
        nat,
        l2,
        device,
    } = bridge;
    let Activation {
        mem,
        mut rx,
        mut tx,
        acked_features,
        interrupt,
    } = act;
    for (q, name) in [(&rx, "rx"), (&tx, "tx")] {
        if !q.ready() {
            return Err(Error::Config(format!("{name} queue is not ready")));
        }
        if q.size() > config.max_queue_size {
            return Err(Error::Config(format!(
                "{name} queue size {} is over {}",
                q.size(),
                config.max_queue_size
            )));
        }
    }
    let event_idx = acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
    rx.set_event_idx(event_idx);
    tx.set_event_idx(event_idx);
    host.prepare()?;
    if host.readiness_fd().is_none() {
        return Err(Error::Config(
            "the host link has no readiness descriptor".to_owned(),
        ));
    }
    let acked_features = sanitize_features(acked_features & device.device_features());
    let offloads = Offloads::negotiate(acked_features, host.vnet_hdr_len())?;
    host.set_offloads(offloads.rx_csum, offloads.rx_tso4)?;
    let hdr_len = header_len_for(acked_features);
    let mrg = acked_features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    let max_frame = offloads.max_tx_frame(config.mtu);
    let rx_kick = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let tx_kick = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let shutdown = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let local_evt = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let pool_evt = Arc::new(EventFd::new(EFD_NONBLOCK)?);
    let shared = Arc::new(Shared {
        stats: AtomicStats::default(),
        nat: std::sync::Mutex::new(nat),
        lease: std::sync::atomic::AtomicU32::new(0),
        guest_mac: std::sync::atomic::AtomicU64::new(l2.guest_mac().to_u64()),
        needs_reset: std::sync::atomic::AtomicBool::new(false),
        error: std::sync::Mutex::new(None),
        stop: std::sync::atomic::AtomicBool::new(false),
    });
    let (free_tx, free_rx) = crossbeam_channel::bounded(config.pool_batches);
    let (local_tx, local_rx) = crossbeam_channel::bounded(config.pool_batches);
    let reply_buf = max_frame.max(MIN_REPLY_BUF);
    for _ in 0..config.pool_batches {
        let _ = free_tx.send(FrameBatch::new(config.batch_size, reply_buf));
    }
    let host = Arc::new(host);
    let clock = std::time::Instant::now();

    let tx_state = Arc::new(std::sync::Mutex::new(TxState {
        mem: mem.clone(),
        queue: tx,
        engine: TxEngine::new(
            TxPath::new(hdr_len, max_frame),
            l2,
            config.batch_size,
            max_frame,
        )
        .with_offloads(offloads, config.mtu),
        reply: None,
        free: free_rx,
        local: local_tx,
        local_evt: local_evt.clone(),
        host: host.clone(),
        shared: shared.clone(),
        clock,
        stats: Stats::default(),
        interrupt: interrupt.clone(),
    }));
    let fds = Fds {
        rx_kick,
        tx_kick,
        shutdown,
        tx_work: tx_state.clone(),
    };
    let tx_thread = TxThread {
        state: tx_state,
        kick: fds.tx_kick.clone(),
        pool_evt: pool_evt.clone(),
        shutdown: fds.shutdown.clone(),
        shared: shared.clone(),
        interrupt: interrupt.clone(),
    };
    let rx_thread = RxThread {
        mem,
        queue: rx,
        engine: RxEngine::new(
            RxPath::new(hdr_len, mrg),
            config.batch_size,
            config.max_host_packet,
            usize::from(config.mtu),
            config.gateway_mac,
        )
        .with_offloads(offloads),
        local: None,
        local_rx,
        free: free_tx,
        local_evt,
        pool_evt,
        kick: fds.rx_kick.clone(),
        shutdown: fds.shutdown.clone(),
        host,
        shared: shared.clone(),
        interrupt,
        clock,
        stats: Stats::default(),
        expired: usize::MAX,
        host_drained: false,
    };
    let mut threads = Vec::new();
    let spawn_tx = std::thread::Builder::new()
        .name("bridge-tx".into())
        .spawn(move || tx_thread.run())?;
    threads.push(("bridge-tx", spawn_tx));
    let mut handle = BridgeHandle {
        shared,
        threads,
        fds,
    };
    match std::thread::Builder::new()
        .name("bridge-rx".into())
        .spawn(move || rx_thread.run())
    {
        Ok(t) => handle.threads.push(("bridge-rx", t)),
        Err(e) => {
            let _ = handle.stop_and_join();
            return Err(e.into());
        }
    }
    Ok(handle)
}

pub(super) fn kick(h: &BridgeHandle, queue: u16) -> Result<(), Error> {
    let fd = match queue {
        RX_QUEUE => &h.fds.rx_kick,
        TX_QUEUE => &h.fds.tx_kick,
        q => return Err(Error::NoSuchQueue(q)),
    };
    fd.write(1)?;
    Ok(())
}

pub(super) fn kick_inline(h: &BridgeHandle, queue: u16) -> Result<(), Error> {
    if queue != TX_QUEUE || h.shared.stop.load(Ordering::Acquire) {
        return kick(h, queue);
    }
    match h.fds.tx_work.try_drain() {
        Some(true) => Ok(()),
        // Failed as the TX thread would have: recorded; stop the pipeline.
        Some(false) => {
            h.shared.stop.store(true, Ordering::SeqCst);
            let _ = h.fds.shutdown.write(1);
            Ok(())
        }
        None => kick(h, queue),
    }
}

pub(super) fn kick_fd(h: &BridgeHandle, queue: u16) -> Option<RawFd> {
    match queue {
        RX_QUEUE => Some(h.fds.rx_kick.as_raw_fd()),
        TX_QUEUE => Some(h.fds.tx_kick.as_raw_fd()),
        _ => None,
    }
}

pub(super) fn wake_all(h: &BridgeHandle) {
    let _ = h.fds.shutdown.write(1);
}

struct TxThread<A> {
    state: Arc<std::sync::Mutex<TxState<A>>>,
    kick: Arc<EventFd>,
    pool_evt: Arc<EventFd>,
    shutdown: Arc<EventFd>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
}

/// What the TX side owns: taken by the TX thread, or by a kicker's thread
/// ([`kick_inline`]), one batch loop at a time.
pub(super) struct TxState<A> {
    mem: A,
    queue: Queue,
    engine: TxEngine,
    reply: Option<FrameBatch>,
    free: Receiver<FrameBatch>,
    local: Sender<FrameBatch>,
    local_evt: Arc<EventFd>,
    host: Arc<dyn HostLink>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
    clock: std::time::Instant,
    stats: Stats,
}

impl<A: GuestAddressSpace> TxThread<A> {
    fn run(self) {
        if let Err(e) = self.run_inner() {
            fail(&self.shared, &self.interrupt, e, TX_QUEUE);
        }
        let _ = self.shutdown.write(1);
    }

    fn run_inner(&self) -> Result<(), Error> {
        let epoll = Epoll::new()?;
        add(&epoll, self.kick.as_raw_fd(), TOKEN_KICK)?;
        add(&epoll, self.shutdown.as_raw_fd(), TOKEN_SHUTDOWN)?;
        add(&epoll, self.pool_evt.as_raw_fd(), TOKEN_POOL)?;
        let mut events = [EpollEvent::default(); 8];
        // The driver may have queued frames before activation.
        let mut work = true;
        while !self.shared.stop.load(Ordering::Acquire) {
            if work {
                lock(&self.state).drain()?;
            }
            work = false;
            let n = epoll.wait(-1, &mut events).or_else(interrupted)?;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                        work = true;
                    }
                    TOKEN_POOL => {
                        let _ = self.pool_evt.read();
                        work = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl<A: GuestAddressSpace> TxState<A> {
    /// Drains the TX queue batch by batch until it is empty (notifications re-enabled) or no
    /// reply batch is free (backpressure: the TX thread resumes on the pool event).
    fn drain(&mut self) -> Result<(), Error> {
        loop {
            if self.reply.is_none() {
                self.reply = self.free.try_recv().ok();
            }
            // Without a free reply batch the TX queue is not drained: backpressure.
            if self.reply.is_none() || !self.batch()? {
                return Ok(());
            }
        }
    }

    /// Processes one batch; returns whether more work is already waiting.
    fn batch(&mut self) -> Result<bool, Error> {
        let guard = self.mem.memory();
        let mem = &*guard;
        let Some(reply) = self.reply.as_mut() else {
            return Ok(true);
        };
        self.queue.disable_notification(mem)?;
        let now = nat::Instant::from_millis(millis(self.clock));
        let out = self
            .engine
            .pull(mem, &mut self.queue, reply, now, &mut self.stats)?;
        if out.notify {
            (self.interrupt)(TX_QUEUE);
        }
        if out.frames > 0 {
            // One NAT lock for the whole batch.
            self.engine
                .translate(&mut lock(&self.shared.nat), reply, now, &mut self.stats);
            self.engine.push(&*self.host, &mut self.stats)?;
        }
        let full = if reply.is_empty() {
            None
        } else {
            self.reply.take()
        };
        if let Some(b) = full {
            match self.local.try_send(b) {
                Ok(()) => {
                    let _ = self.local_evt.write(1);
                }
                Err(e) => {
                    // Cannot happen: the channel holds every batch there is. Keep the batch.
                    let mut b = e.into_inner();
                    self.stats.drop(DropCause::LocalQueueFull);
                    b.clear();
                    self.reply = Some(b);
                }
            }
        }
        let l2 = self.engine.l2();
        let lease = l2.lease(now).map_or(0, u32::from);
        self.shared.lease.store(lease, Ordering::Relaxed);
        self.shared
            .guest_mac
            .store(l2.guest_mac().to_u64(), Ordering::Relaxed);
        self.shared.stats.absorb(&mut self.stats);
        if out.more {
            return Ok(true);
        }
        Ok(self.queue.enable_notification(mem)?)
    }
}

struct RxThread<A> {
    mem: A,
    queue: Queue,
    engine: RxEngine,
    local: Option<FrameBatch>,
    local_rx: Receiver<FrameBatch>,
    free: Sender<FrameBatch>,
    local_evt: Arc<EventFd>,
    pool_evt: Arc<EventFd>,
    kick: Arc<EventFd>,
    shutdown: Arc<EventFd>,
    host: Arc<dyn HostLink>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
    clock: std::time::Instant,
    stats: Stats,
    /// What the last `expire` removed (`usize::MAX`: it was not due).
    expired: usize,
    /// The last receive got less than a batch: the link had nothing more. Reading again
    /// waits for the readiness fd (saves a read that would fail with `WouldBlock` per burst).
    host_drained: bool,
}

impl<A: GuestAddressSpace> RxThread<A> {
    fn run(mut self) {
        if let Err(e) = self.run_inner() {
            fail(&self.shared, &self.interrupt, e, RX_QUEUE);
        }
        let _ = self.shutdown.write(1);
    }

    fn run_inner(&mut self) -> Result<(), Error> {
        let epoll = Epoll::new()?;
        add(&epoll, self.kick.as_raw_fd(), TOKEN_KICK)?;
        add(&epoll, self.shutdown.as_raw_fd(), TOKEN_SHUTDOWN)?;
        add(&epoll, self.local_evt.as_raw_fd(), TOKEN_LOCAL)?;
        let host_fd = self
            .host
            .readiness_fd()
            .map(|f| f.as_raw_fd())
            .ok_or(Error::Unsupported)?;
        add(&epoll, host_fd, TOKEN_HOST)?;
        let mut host_armed = true;
        // The last wait ended by the starved re-check timer; how often that found buffers
        // no kick announced (a driver or transport bug: worth a log line, not an error).
        let mut timed_out = false;
        let mut missed_kicks = 0u64;
        let mut events = [EpollEvent::default(); 8];
        while !self.shared.stop.load(Ordering::Acquire) {
            let (progress, starved) = self.step()?;
            self.shared.stats.absorb(&mut self.stats);
            if timed_out && !starved {
                missed_kicks += 1;
                tracing::debug!(
                    missed_kicks,
                    "RX buffers found by the re-check timer, no kick"
                );
            }
            timed_out = false;
            if progress && !starved {
                continue;
            }
            // Starved: stop polling the host (its packets wait in the kernel queue) until the
            // guest adds RX buffers.
            if starved == host_armed {
                let op = if starved {
                    ControlOperation::Delete
                } else {
                    ControlOperation::Add
                };
                epoll.ctl(op, host_fd, EpollEvent::new(EventSet::IN, TOKEN_HOST))?;
                host_armed = !starved;
            }
            let mut timeout = self.timeout();
            if starved {
                // Safety net: while starved, re-check the RX ring at a bounded interval even
                // if no kick comes. `RxPath::arm` closes the EVENT_IDX race, but a driver that
                // misses a kick (or a transport that loses one) would otherwise stop the whole
                // host→guest path until the next NAT deadline, up to a minute away. This is
                // not a busy loop: it only runs while frames wait for RX buffers and the host
                // fd is out of the interest list, at most 1000 / STARVED_RECHECK_MS times a
                // second, and each wakeup is one `fill` (a few guest memory reads).
                let cap = i32::try_from(STARVED_RECHECK_MS).unwrap_or(i32::MAX);
                timeout = if timeout < 0 { cap } else { timeout.min(cap) };
            }
            let n = epoll.wait(timeout, &mut events).or_else(interrupted)?;
            timed_out = starved && n == 0;
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_KICK => {
                        let _ = self.kick.read();
                    }
                    TOKEN_LOCAL => {
                        let _ = self.local_evt.read();
                    }
                    TOKEN_HOST => self.host_drained = false,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Delivers what is pending and reads one host batch. Returns (progress, starved).
    fn step(&mut self) -> Result<(bool, bool), Error> {
        let guard = self.mem.memory();
        let mem = &*guard;
        let now = nat::Instant::from_millis(millis(self.clock));
        let mut progress = false;
        // Gateway replies and hairpinned packets first.
        if self.local.is_none() {
            self.local = self.local_rx.try_recv().ok();
        }
        if let Some(b) = self.local.as_mut() {
            let out = self
                .engine
                .path()
                .fill(mem, &mut self.queue, b, &mut self.stats)?;
            if out.notify {
                (self.interrupt)(RX_QUEUE);
            }
            if b.pending() > 0 {
                return self.starve(mem);
            }
            if let Some(mut b) = self.local.take() {
                b.clear();
                let _ = self.free.try_send(b);
                let _ = self.pool_evt.write(1);
            }
            progress = true;
        }
        let received = if self.engine.pending() == 0 && !self.host_drained {
            let n = self.engine.receive(&*self.host, &mut self.stats)?;
            self.host_drained = n < self.engine.capacity();
            n
        } else {
            0
        };
        if received > 0 {
            progress = true;
            let mac = MacAddr::from_u64(self.shared.guest_mac.load(Ordering::Relaxed));
            // One NAT lock for the whole batch.
            let mut nat = lock(&self.shared.nat);
            self.engine.translate(&mut nat, now, mac, &mut self.stats);
            self.expired = expire(&mut nat, now);
        }
        if self.engine.pending() > 0 {
            let out = self.engine.deliver(mem, &mut self.queue, &mut self.stats)?;
            if out.notify {
                (self.interrupt)(RX_QUEUE);
            }
            if self.engine.pending() > 0 {
                return self.starve(mem);
            }
        }
        if !progress {
            // A timer wakeup with no traffic.
            self.expired = expire(&mut lock(&self.shared.nat), now);
        }
        Ok((progress, false))
    }

    fn starve(&mut self, mem: &A::M) -> Result<(bool, bool), Error> {
        if self.engine.path().arm(mem, &mut self.queue)? {
            return Ok((true, false));
        }
        Ok((false, true))
    }

    fn timeout(&self) -> i32 {
        let now = millis(self.clock);
        let wait = match lock(&self.shared.nat).next_deadline() {
            None => return -1,
            // Due, but the last `expire` removed nothing: do not spin on it.
            Some(d) if d.as_millis() <= now && self.expired == 0 => IDLE_EXPIRE_MS,
            Some(d) => d.as_millis().saturating_sub(now).clamp(1, MAX_WAIT_MS),
        };
        i32::try_from(wait).unwrap_or(-1)
    }
}

fn fail(shared: &Shared, interrupt: &Interrupt, e: Error, queue: u16) {
    let e = match e {
        Error::Queue(_) | Error::GuestMemory(_) => {
            shared.needs_reset.store(true, Ordering::SeqCst);
            interrupt(CONFIG_INTERRUPT);
            tracing::warn!(queue, error = %e, "virtqueue broken; device needs reset");
            Error::NeedsReset { queue }
        }
        e => e,
    };
    shared.fail(e);
}

/// Bounded expiry work when the NAT's deadline has passed; returns how many entries went.
fn expire(nat: &mut nat::Nat, now: nat::Instant) -> usize {
    if nat.next_deadline().is_some_and(|d| d <= now) {
        nat.expire(now, EXPIRE_BUDGET)
    } else {
        usize::MAX
    }
}

fn add(epoll: &Epoll, fd: i32, token: u64) -> io::Result<()> {
    epoll.ctl(
        ControlOperation::Add,
        fd,
        EpollEvent::new(EventSet::IN, token),
    )
}

fn interrupted(e: io::Error) -> io::Result<usize> {
    if e.kind() == io::ErrorKind::Interrupted {
        Ok(0)
    } else {
        Err(e)
    }
}

fn millis(clock: std::time::Instant) -> u64 {
    u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX)
}

const TOKEN_KICK: u64 = 1;
const TOKEN_SHUTDOWN: u64 = 2;
const TOKEN_POOL: u64 = 3;
const TOKEN_LOCAL: u64 = 4;
const TOKEN_HOST: u64 = 5;
/// Reply buffers hold at least a DHCP reply.
const MIN_REPLY_BUF: usize = 1024;
/// NAT entries expired per batch at most.
const EXPIRE_BUDGET: usize = 256;
/// Longest epoll wait while the NAT has a deadline.
const MAX_WAIT_MS: u64 = 60_000;
/// Wait when the NAT reports a passed deadline but has nothing to expire.
const IDLE_EXPIRE_MS: u64 = 1_000;
/// Longest wait for an RX kick while frames wait for guest RX buffers (then the ring is
/// looked at again anyway; see `RxThread::run_inner`).
const STARVED_RECHECK_MS: u64 = 100;
