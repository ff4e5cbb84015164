//! The pipeline's two threads. Each blocks in one mio poller (epoll on Linux, kqueue on
//! macOS) over its kick, the shutdown event and its side's internal event (and, for RX, the
//! host link's readiness descriptor); there are no busy loops and no sleeps. The work of each
//! wake-up is the device core's half ([`TxHalf::batch`], [`RxHalf::deliver`]) with the NAT
//! taken under its lock once per batch.

use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events as MioEvents, Interest, Poll, Token};
use nat::Nat;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use super::{BridgeHandle, Events, Interrupt, Shared, Threads};
use crate::core::{
    Clock, Expiry, RxAccess, RxHalf, RxLocked, Step, TX_BATCH_BUDGET, TxAccess, TxHalf, TxLocked,
    lock,
};
use crate::device::{CONFIG_INTERRUPT, RX_QUEUE, TX_QUEUE};
use crate::frame::FrameBatch;
use crate::guest_state::GuestState;
use crate::host::{Gather, GatherLink, Gathering};
use crate::stats::{DropCause, Stats};
use crate::wire::MacAddr;
use crate::{Error, HostLink};

/// What [`start`] needs besides the shared state.
pub(super) struct Start<A, Q> {
    pub(super) mem: A,
    pub(super) rx: Q,
    pub(super) tx: Q,
    pub(super) guest: GuestState,
    pub(super) tx_half: TxHalf,
    pub(super) rx_half: RxHalf,
    pub(super) pool_batches: usize,
    pub(super) batch_size: usize,
    pub(super) reply_size: usize,
    pub(super) interrupt: Interrupt,
}

/// How a bounded drain of the TX queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Drained {
    /// The queue is empty (notifications on again), or no reply batch is free (the pool
    /// event resumes it).
    Done,
    /// [`TX_BATCH_BUDGET`] batches were taken and chains wait: drain again after looking at
    /// the other events.
    More,
    /// The queue or the host link failed (recorded as the TX thread would).
    Failed,
}

/// TX work that a kicker may run on its own thread when the TX thread is idle.
pub(super) trait InlineTx: Send + Sync {
    /// Drains the TX queue (one budget) if nobody else is; `None` if the TX thread is busy
    /// with it.
    fn try_drain(&self) -> Option<Drained>;

    /// Drains the TX queue (one budget), waiting for the lock.
    fn drain(&self) -> Drained;

    /// The gateway's timer (unsolicited Router Advertisements), waiting for the lock.
    fn gateway_tick(&self);
}

impl core::fmt::Debug for dyn InlineTx {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("InlineTx")
    }
}

/// Spawns both threads; returns the handle.
pub(super) fn start<A, Q, H>(
    s: Start<A, Q>,
    threads: Threads,
    host: Arc<H>,
    shared: Arc<Shared>,
    events: Arc<Events>,
) -> Result<BridgeHandle, Error>
where
    A: GuestAddressSpace + Send + 'static,
    Q: QueueT + Send + 'static,
    H: HostLink + 'static,
{
    let (free_tx, free_rx) = crossbeam_channel::bounded(s.pool_batches);
    let (local_tx, local_rx) = crossbeam_channel::bounded(s.pool_batches);
    for _ in 0..s.pool_batches {
        let _ = free_tx.send(FrameBatch::new(s.batch_size, s.reply_size));
    }
    let clock = Clock::new();
    // The link's type is known here only: its gathering (head-only TX) and scattering
    // (scattered RX) go to the threads as trait objects for the guest memory's type.
    // (`H`'s own answer: `Arc<H>`'s is `false`, since `Arc` cannot forward the generic call.)
    let gather = H::gathers(&host).then(|| host.clone() as Arc<dyn GatherLink<A::M>>);
    let scatter = H::scatters(&host).then(|| host.clone() as Arc<dyn GatherLink<A::M>>);
    let host: Arc<dyn HostLink> = host;
    let tx_state = Arc::new(Mutex::new(TxState {
        mem: s.mem.clone(),
        queue: s.tx,
        guest: s.guest,
        half: s.tx_half,
        reply: None,
        free: free_rx,
        local: local_tx,
        events: events.clone(),
        host: host.clone(),
        gather,
        shared: shared.clone(),
        interrupt: s.interrupt.clone(),
        clock,
        stats: Stats::default(),
    }));
    let tx_thread = TxThread {
        state: tx_state.clone(),
        events: events.clone(),
        shared: shared.clone(),
        interrupt: s.interrupt.clone(),
    };
    let rx_thread = RxThread {
        mem: s.mem,
        queue: s.rx,
        half: s.rx_half,
        local: None,
        local_rx,
        free: free_tx,
        events: events.clone(),
        host,
        scatter,
        shared: shared.clone(),
        interrupt: s.interrupt,
        clock,
        expiry: Expiry::default(),
        stats: Stats::default(),
    };
    let mut handle = BridgeHandle {
        shared,
        events,
        threads: Vec::new(),
        tx_work: tx_state,
    };
    if threads == Threads::One {
        let tx_state = Arc::clone(&handle.tx_work);
        let mut rx_thread = rx_thread;
        let t = std::thread::Builder::new()
            .name("bridge".into())
            .spawn(move || {
                if let Err(e) = rx_thread.run_inner(Some(&*tx_state)) {
                    fail(&rx_thread.shared, &rx_thread.interrupt, e, RX_QUEUE);
                }
                let _ = rx_thread.events.shutdown.notify();
            })?;
        handle.threads.push(("bridge", t));
        return Ok(handle);
    }
    let t = std::thread::Builder::new()
        .name("bridge-tx".into())
        .spawn(move || tx_thread.run())?;
    handle.threads.push(("bridge-tx", t));
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

/// The most chains a kicker drains on its own thread ([`BridgeHandle::kick_inline`]); more go
/// to the TX thread.
const INLINE_MAX_CHAINS: usize = 8;

impl<A: GuestAddressSpace + Send, Q: QueueT + Send> InlineTx for Mutex<TxState<A, Q>> {
    fn gateway_tick(&self) {
        lock(self).unsolicited();
    }

    fn drain(&self) -> Drained {
        let mut st = lock(self);
        match st.drain() {
            Ok(true) => Drained::More,
            Ok(false) => Drained::Done,
            Err(e) => {
                fail(&st.shared, &st.interrupt, e, TX_QUEUE);
                Drained::Failed
            }
        }
    }

    fn try_drain(&self) -> Option<Drained> {
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
            Ok(true) => Some(Drained::More),
            Ok(false) => Some(Drained::Done),
            Err(e) => {
                fail(&st.shared, &st.interrupt, e, TX_QUEUE);
                Some(Drained::Failed)
            }
        }
    }
}

struct TxThread<A: GuestAddressSpace, Q> {
    state: Arc<Mutex<TxState<A, Q>>>,
    events: Arc<Events>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
}

/// What the TX side owns: taken by the TX thread, or by a kicker's thread
/// ([`BridgeHandle::kick_inline`]), one batch loop at a time.
struct TxState<A: GuestAddressSpace, Q> {
    mem: A,
    queue: Q,
    /// The guest's gateway services and IPv6 forwards (the TX thread's alone: the RX thread
    /// reads the guest's MAC from `Shared`).
    guest: GuestState,
    half: TxHalf,
    reply: Option<FrameBatch>,
    free: Receiver<FrameBatch>,
    local: Sender<FrameBatch>,
    events: Arc<Events>,
    host: Arc<dyn HostLink>,
    /// The same link when it gathers from guest memory (head-only TX).
    gather: Option<Arc<dyn GatherLink<A::M>>>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
    clock: Clock,
    stats: Stats,
}

impl<A: GuestAddressSpace, Q: QueueT> TxThread<A, Q> {
    fn run(self) {
        if let Err(e) = self.run_inner() {
            fail(&self.shared, &self.interrupt, e, TX_QUEUE);
        }
        let _ = self.events.shutdown.notify();
    }

    fn run_inner(&self) -> Result<(), Error> {
        let mut poll = Poll::new()?;
        register(&poll, &self.events.tx_kick, TOKEN_KICK)?;
        register(&poll, &self.events.shutdown, TOKEN_SHUTDOWN)?;
        register(&poll, &self.events.pool, TOKEN_POOL)?;
        let mut events = MioEvents::with_capacity(8);
        // The driver may have queued frames before activation.
        let mut work = true;
        while !self.shared.stop.load(Ordering::Acquire)
            && !self.shared.tx_stop.load(Ordering::Acquire)
        {
            // One budget per pass; with chains left, look at the events (shutdown) without
            // waiting and go on.
            let more = work && lock(&self.state).drain()?;
            work = more;
            // The gateway's timer (unsolicited Router Advertisements for an idle guest): looked
            // at on every wake-up, and the thread wakes at least once a second.
            lock(&self.state).unsolicited();
            let timeout = Some(if more { Duration::ZERO } else { GATEWAY_TICK });
            wait(&mut poll, &mut events, timeout)?;
            for ev in &events {
                match ev.token() {
                    TOKEN_KICK => {
                        self.events.tx_kick.drain();
                        work = true;
                    }
                    TOKEN_POOL => {
                        self.events.pool.drain();
                        work = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

impl<A: GuestAddressSpace, Q: QueueT> TxState<A, Q> {
    /// Sends the gateway's unsolicited Router Advertisement to the RX thread when one is due
    /// ([`crate::Gateway::unsolicited`]), in a reply batch of its own (none free: next time).
    fn unsolicited(&mut self) {
        let now = self.clock.now();
        if self.reply.is_none() {
            self.reply = self.free.try_recv().ok();
        }
        let Some(reply) = self.reply.as_mut() else {
            return;
        };
        let Some(len) = reply
            .next_buf()
            .and_then(|buf| self.guest.gateway_mut().unsolicited(buf, now))
        else {
            return;
        };
        reply.commit(0, len);
        self.stats.local_replies += 1;
        self.send_reply();
        self.shared.stats.absorb(&mut self.stats);
    }

    /// Hands the reply batch (not empty) to the RX thread and wakes it.
    fn send_reply(&mut self) {
        let Some(b) = self.reply.take() else {
            return;
        };
        match self.local.try_send(b) {
            Ok(()) => {
                let _ = self.events.local.notify();
            }
            Err(e) => {
                // Cannot happen: the channel holds every batch there is, and the RX thread
                // stops after this one (unless it failed, which stops the device). Keep the
                // batch.
                let mut b = e.into_inner();
                self.stats.drop(DropCause::LocalQueueFull);
                b.clear();
                self.reply = Some(b);
            }
        }
    }

    /// Drains the TX queue batch by batch until it is empty (notifications re-enabled), no
    /// reply batch is free (backpressure: the TX thread resumes on the pool event), or
    /// [`TX_BATCH_BUDGET`] batches were taken. Returns whether work is left (the budget ran
    /// out).
    fn drain(&mut self) -> Result<bool, Error> {
        for _ in 0..TX_BATCH_BUDGET {
            if self.reply.is_none() {
                self.reply = self.free.try_recv().ok();
            }
            // Without a free reply batch the TX queue is not drained: backpressure.
            if self.reply.is_none() || !self.batch()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Processes one batch; returns whether more work is already waiting.
    fn batch(&mut self) -> Result<bool, Error> {
        let guard = self.mem.memory();
        let mem = &*guard;
        let Some(reply) = self.reply.as_mut() else {
            return Ok(true);
        };
        self.queue.disable_notification(mem)?;
        let now = self.clock.now();
        let step = Step {
            host: &*self.host,
            now,
            stats: &mut self.stats,
        };
        let mut access = PipeTx {
            nat: &self.shared.nat,
            guest: &mut self.guest,
            replies: reply,
        };
        let link = self.gather.as_deref().map(|link| Gathering { mem, link });
        let (out, _) = self.half.batch(
            mem,
            &mut self.queue,
            &mut access,
            step,
            link.as_ref().map(|l| l as &dyn Gather),
        )?;
        if out.notify {
            (self.interrupt)(TX_QUEUE);
        }
        if !reply.is_empty() {
            self.send_reply();
        }
        let gw = self.guest.gateway();
        let lease = gw.lease(now).map_or(0, u32::from);
        self.shared.lease.store(lease, Ordering::Relaxed);
        self.shared
            .guest_mac
            .store(gw.guest_mac().to_u64(), Ordering::Relaxed);
        self.shared.stats.absorb(&mut self.stats);
        if out.more {
            return Ok(true);
        }
        Ok(self.queue.enable_notification(mem)?)
    }
}

struct RxThread<A: GuestAddressSpace, Q> {
    mem: A,
    queue: Q,
    half: RxHalf,
    /// The reply batch being delivered.
    local: Option<FrameBatch>,
    local_rx: Receiver<FrameBatch>,
    free: Sender<FrameBatch>,
    events: Arc<Events>,
    host: Arc<dyn HostLink>,
    /// The same link when it reads into guest memory (scattered RX).
    scatter: Option<Arc<dyn GatherLink<A::M>>>,
    shared: Arc<Shared>,
    interrupt: Interrupt,
    clock: Clock,
    expiry: Expiry,
    stats: Stats,
}

impl<A: GuestAddressSpace, Q: QueueT> RxThread<A, Q> {
    fn run(mut self) {
        if let Err(e) = self.run_inner::<dyn InlineTx>(None) {
            fail(&self.shared, &self.interrupt, e, RX_QUEUE);
        }
        let _ = self.events.shutdown.notify();
    }

    /// The RX loop; with `tx` (one thread for the whole device) the same loop also serves
    /// the TX kicks, handing each wake-up to both halves in turn.
    fn run_inner<T: InlineTx + ?Sized>(&mut self, tx: Option<&T>) -> Result<(), Error> {
        let mut poll = Poll::new()?;
        register(&poll, &self.events.rx_kick, TOKEN_KICK)?;
        register(&poll, &self.events.shutdown, TOKEN_SHUTDOWN)?;
        register(&poll, &self.events.local, TOKEN_LOCAL)?;
        if tx.is_some() {
            register(&poll, &self.events.tx_kick, TOKEN_TX_KICK)?;
            register(&poll, &self.events.pool, TOKEN_POOL)?;
        }
        let host = Arc::clone(&self.host);
        let host_fd = host
            .readiness_fd()
            .map(|f| f.as_raw_fd())
            .ok_or(Error::Unsupported)?;
        poll.registry()
            .register(&mut SourceFd(&host_fd), TOKEN_HOST, Interest::READABLE)?;
        let mut host_registered = true;
        // The last wait ended by the starved re-check timer; how often that found buffers
        // no kick announced (a driver or transport bug: worth a log line, not an error).
        let mut timed_out = false;
        let mut missed_kicks = 0u64;
        // The driver may have queued frames before activation.
        let mut tx_work = true;
        let mut events = MioEvents::with_capacity(8);
        while !self.shared.stop.load(Ordering::Acquire) {
            let mut tx_more = false;
            if let Some(tx) = tx
                && std::mem::take(&mut tx_work)
            {
                match tx.drain() {
                    Drained::Done => {}
                    Drained::More => {
                        tx_more = true;
                        tx_work = true;
                    }
                    // Recorded by the TX side as its own thread would have.
                    Drained::Failed => return Ok(()),
                }
            }
            if let Some(tx) = tx {
                tx.gateway_tick();
            }
            let now = self.clock.now();
            let (more, starved) = self.step(now)?;
            // One NAT lock per wake-up for the expiry policy: tick if due, then the timer.
            let nat_timeout = {
                let mut nat = lock(&self.shared.nat);
                self.expiry.tick(&mut nat, now);
                self.expiry.timeout(&nat, now)
            };
            self.shared.stats.absorb(&mut self.stats);
            if timed_out && !starved {
                missed_kicks += 1;
                tracing::debug!(
                    missed_kicks,
                    "RX buffers found by the re-check timer, no kick"
                );
            }
            timed_out = false;
            if more && !starved && tx.is_none() {
                continue;
            }
            // Starved: stop polling the host (its packets wait in the kernel queue) until the
            // guest adds RX buffers. Registering again reports a link that is readable already.
            if starved == host_registered {
                let mut src = SourceFd(&host_fd);
                if starved {
                    poll.registry().deregister(&mut src)?;
                } else {
                    poll.registry()
                        .register(&mut src, TOKEN_HOST, Interest::READABLE)?;
                }
                host_registered = !starved;
            }
            let mut timeout = nat_timeout;
            if starved {
                // Safety net: while starved, re-check the RX ring at a bounded interval even
                // if no kick comes. `RxQueue::arm` closes the EVENT_IDX race, but a driver that
                // misses a kick (or a transport that loses one) would otherwise stop the whole
                // host→guest path until the next NAT deadline, up to a minute away. This is
                // not a busy loop: it only runs while frames wait for RX buffers and the host
                // fd is out of the interest list, at most 10 times a second.
                timeout = Some(timeout.map_or(STARVED_RECHECK, |t| t.min(STARVED_RECHECK)));
            }
            if tx.is_some() {
                // One thread: it also keeps the gateway's timer.
                timeout = Some(timeout.map_or(GATEWAY_TICK, |t| t.min(GATEWAY_TICK)));
            }
            if (more && !starved) || tx_more {
                // One thread: look at the other side's events, then go on with the rest.
                timeout = Some(Duration::ZERO);
            }
            let n = wait(&mut poll, &mut events, timeout)?;
            timed_out = starved && n == 0;
            for ev in &events {
                match ev.token() {
                    TOKEN_KICK => self.events.rx_kick.drain(),
                    TOKEN_LOCAL => self.events.local.drain(),
                    TOKEN_HOST => self.half.host_pending = true,
                    TOKEN_TX_KICK => {
                        self.events.tx_kick.drain();
                        tx_work = true;
                    }
                    TOKEN_POOL => {
                        self.events.pool.drain();
                        tx_work = true;
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Delivers gateway replies, then host packets (one budget of batches). Returns (more
    /// work waiting, starved).
    fn step(&mut self, now: nat::Instant) -> Result<(bool, bool), Error> {
        let guard = self.mem.memory();
        let mem = &*guard;
        if self.local.is_none() {
            self.local = self.local_rx.try_recv().ok();
        }
        let mac = MacAddr::from_u64(self.shared.guest_mac.load(Ordering::Relaxed));
        let step = Step {
            host: &*self.host,
            now,
            stats: &mut self.stats,
        };
        let mut access = PipeRx {
            nat: &self.shared.nat,
            mac,
            replies: self.local.as_mut(),
        };
        let link = self.scatter.as_deref().map(|link| Gathering { mem, link });
        let io = link.as_ref().map(|l| l as &dyn Gather);
        let p = self
            .half
            .deliver(mem, &mut self.queue, &mut access, step, io)?;
        if p.notify {
            (self.interrupt)(RX_QUEUE);
        }
        let mut more = p.more;
        if self.local.as_ref().is_some_and(|b| b.pending() == 0)
            && let Some(mut b) = self.local.take()
        {
            b.clear();
            let _ = self.free.try_send(b);
            let _ = self.events.pool.notify();
            // Another batch of replies may be queued already.
            more |= !self.local_rx.is_empty();
        }
        Ok((more, p.starved))
    }
}

/// The TX thread's access: its guest state and reply batch at hand, the NAT under the lock it
/// shares with the RX thread.
struct PipeTx<'a> {
    nat: &'a Mutex<Nat>,
    guest: &'a mut GuestState,
    replies: &'a mut FrameBatch,
}

impl TxAccess for PipeTx<'_> {
    fn with_tx<R>(&mut self, f: impl FnOnce(TxLocked<'_, '_>) -> R) -> Result<R, Error> {
        let mut nat = lock(self.nat);
        Ok(f(TxLocked {
            nat: &mut nat,
            guest: self.guest,
            replies: self.replies,
            others: None,
        }))
    }
}

/// The RX thread's access: the reply batch it is delivering (if any) and the guest's MAC at
/// hand, the NAT under the lock.
struct PipeRx<'a> {
    nat: &'a Mutex<Nat>,
    mac: MacAddr,
    replies: Option<&'a mut FrameBatch>,
}

impl RxAccess for PipeRx<'_> {
    fn with_rx<R>(&mut self, f: impl FnOnce(RxLocked<'_, '_>) -> R) -> Result<R, Error> {
        let mut nat = lock(self.nat);
        Ok(f(RxLocked {
            nat: &mut nat,
            guest_mac: self.mac,
            replies: self.replies.as_deref_mut(),
            others: None,
        }))
    }

    fn replies_may_wait(&self) -> bool {
        self.replies.as_ref().is_some_and(|r| r.pending() > 0)
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

fn register(poll: &Poll, ev: &impl AsFd, token: Token) -> io::Result<()> {
    let fd = ev.as_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), token, Interest::READABLE)
}

/// Waits for events; an interrupted wait is an empty one. Returns how many arrived.
fn wait(poll: &mut Poll, events: &mut MioEvents, timeout: Option<Duration>) -> io::Result<usize> {
    match poll.poll(events, timeout) {
        Ok(()) => Ok(events.iter().count()),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {
            events.clear();
            Ok(0)
        }
        Err(e) => Err(e),
    }
}

const TOKEN_KICK: Token = Token(1);
const TOKEN_SHUTDOWN: Token = Token(2);
const TOKEN_POOL: Token = Token(3);
const TOKEN_LOCAL: Token = Token(4);
const TOKEN_HOST: Token = Token(5);
const TOKEN_TX_KICK: Token = Token(6);
/// Longest wait for an RX kick while frames wait for guest RX buffers (then the ring is
/// looked at again anyway; see `RxThread::run_inner`).
const STARVED_RECHECK: Duration = Duration::from_millis(100);
/// The longest a TX thread sleeps: the gateway's timer (unsolicited Router Advertisements)
/// is looked at on every wake-up.
const GATEWAY_TICK: Duration = Duration::from_secs(1);
