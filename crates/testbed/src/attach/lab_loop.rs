//! `--threads one`: the simulated guest's driver and the bridge's device core
//! ([`bridge::DeviceCore`]) on one thread, `lab-loop`, in one level-triggered epoll set over the
//! TAP, the TUN and a stop eventfd. Kicks and interrupts are plain function calls.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use bridge::{BridgeStats, Clock, DeviceCore, HostLink};
use utun::Tun;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::guest::{Driver, RX_QUEUE, SimGuest, TX_QUEUE};

/// A loop thread of `attach` (`lab-loop`, `lab-network`): its stop eventfd, its flags and its
/// join handle. Dropping it stops the thread.
pub(super) struct LoopThread {
    control: Control,
    thread: Option<JoinHandle<Finished>>,
}

/// What the loop hands back when it ends: how it ended and the counters of both sides.
pub(super) struct Finished {
    pub(super) result: anyhow::Result<()>,
    pub(super) guest: String,
    pub(super) bridge: BridgeStats,
}

/// What the loop thread watches: the stop eventfd (in its epoll set), the stop flag, the
/// stats request (SIGUSR1) and the queue-pair switch request (SIGUSR2, `lab-network`).
pub(super) struct Control {
    pub(super) stop: EventFd,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) stats_requested: Arc<AtomicBool>,
    pub(super) pairs_switch_requested: Arc<AtomicBool>,
}

impl Control {
    fn new() -> anyhow::Result<Self> {
        Ok(Control {
            stop: EventFd::new(EFD_NONBLOCK).context("creating the stop eventfd")?,
            stopping: Arc::new(AtomicBool::new(false)),
            stats_requested: Arc::new(AtomicBool::new(false)),
            pairs_switch_requested: Arc::new(AtomicBool::new(false)),
        })
    }

    fn try_clone(&self) -> anyhow::Result<Self> {
        Ok(Control {
            stop: self.stop.try_clone().context("cloning the stop eventfd")?,
            stopping: Arc::clone(&self.stopping),
            stats_requested: Arc::clone(&self.stats_requested),
            pairs_switch_requested: Arc::clone(&self.pairs_switch_requested),
        })
    }

    /// Whether the thread is asked to stop.
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Whether a stats line was asked for (and forgets the request).
    pub(super) fn take_stats_request(&self) -> bool {
        self.stats_requested.swap(false, Ordering::Relaxed)
    }

    /// Whether a switch of the guests' queue pairs was asked for (and forgets the request).
    pub(super) fn take_pairs_switch_request(&self) -> bool {
        self.pairs_switch_requested.swap(false, Ordering::Relaxed)
    }
}

impl LoopThread {
    /// Starts thread `name` running `body` with its [`Control`].
    pub(super) fn spawn(
        name: &str,
        body: impl FnOnce(Control) -> Finished + Send + 'static,
    ) -> anyhow::Result<Self> {
        let control = Control::new()?;
        let theirs = control.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(theirs))
            .with_context(|| format!("spawning the {name} thread"))?;
        Ok(Self {
            control,
            thread: Some(thread),
        })
    }

    /// Asks the thread to print the bridge's stats line to stderr (within its tick, 1 s).
    pub(super) fn request_stats(&self) {
        self.control.stats_requested.store(true, Ordering::Relaxed);
    }

    /// Asks the thread to switch each guest between its queue pairs and one
    /// (`lab-network`; others ignore it).
    pub(super) fn request_pairs_switch(&self) {
        self.control
            .pairs_switch_requested
            .store(true, Ordering::Relaxed);
    }

    /// Whether the thread ended on its own (an error).
    pub(super) fn has_failed(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and returns how it ended with both sides' counters.
    ///
    /// # Errors
    /// The thread panicked.
    pub(super) fn stop(mut self) -> anyhow::Result<Finished> {
        self.control.stopping.store(true, Ordering::SeqCst);
        let _ = self.control.stop.write(1);
        let t = self
            .thread
            .take()
            .context("the loop thread was already joined")?;
        t.join()
            .map_err(|_| anyhow::anyhow!("the loop thread panicked"))
    }
}

impl Drop for LoopThread {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.control.stopping.store(true, Ordering::SeqCst);
            let _ = self.control.stop.write(1);
            let _ = t.join();
        }
    }
}

/// `--threads one`: the one guest's loop.
pub(super) struct LabLoop;

impl LabLoop {
    /// Builds the device core for `guest` (features acked as the guest negotiated them) and
    /// starts the thread.
    pub(super) fn start(
        dp: DeviceCore,
        guest: SimGuest,
        tap: Arc<Tun>,
        tun: Tun,
    ) -> anyhow::Result<LoopThread> {
        tun.prepare().context("making the TUN non-blocking")?;
        // The TUN is polled level-triggered: a short batch means it is drained.
        let mut dp = dp.with_short_batch_drains(true);
        let acked = dp.ack_features(guest.acked_features(), &tun);
        anyhow::ensure!(
            acked == guest.acked_features(),
            "the bridge acknowledged {acked:#x}, the guest negotiated {:#x}",
            guest.acked_features()
        );
        let mem = guest.memory().clone();
        let mut rxq = guest.device_queue(RX_QUEUE)?;
        let mut txq = guest.device_queue(TX_QUEUE)?;
        dp.prepare_queue(&mut rxq, RX_QUEUE)
            .context("the device refused the RX queue")?;
        dp.prepare_queue(&mut txq, TX_QUEUE)
            .context("the device refused the TX queue")?;
        let driver = guest.into_driver(tap)?;
        LoopThread::spawn("lab-loop", move |control| {
            let mut state = State {
                dp,
                clock: Clock::new(),
                driver,
                mem,
                rxq,
                txq,
                tun,
                control,
                tx_more: false,
                rx_more: false,
            };
            let result = state.run();
            Finished {
                result,
                guest: state.driver.stats().summary(),
                bridge: state.dp.bridge_stats(),
            }
        })
    }
}

struct State {
    dp: DeviceCore,
    clock: Clock,
    driver: Driver<Tun>,
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    tun: Tun,
    control: Control,
    /// The last TX kick stopped on the device core's budget with chains left.
    tx_more: bool,
    /// The last delivery stopped on the device core's budget with frames left.
    rx_more: bool,
}

impl State {
    fn run(&mut self) -> anyhow::Result<()> {
        let epoll = epoll_over([
            (self.driver.fd().as_raw_fd(), TOKEN_TAP),
            (tun_fd(&self.tun)?, TOKEN_TUN),
            (self.control.stop.as_raw_fd(), TOKEN_STOP),
        ])?;
        let mut events = [EpollEvent::default(); 3];
        // Anything the TUN held before the loop started.
        self.rx(true)?;
        self.check_host_link()?;
        let mut next_tick = Instant::now() + TICK;
        while !self.control.stopping() {
            // NAT expiry when its deadline passes, at most once a TICK (a passed deadline with
            // nothing to expire must not make the loop spin).
            let now = Instant::now();
            if now >= next_tick {
                self.dp.on_tick(self.clock.now());
                next_tick = now + TICK;
                // A Router Advertisement the tick queued for an idle guest.
                if self.dp.replies_pending() {
                    self.rx(false)?;
                }
            }
            let timeout = self.dp.next_timeout(self.clock.now());
            let ms = wait_ms(next_tick, now, timeout, self.tx_more || self.rx_more);
            let n = match epoll.wait(ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll wait"),
            };
            let (mut tap, mut tun) = (false, false);
            for ev in events.iter().take(n) {
                match ev.data() {
                    TOKEN_TAP => tap = true,
                    TOKEN_TUN => tun = true,
                    _ => {}
                }
            }
            if tap || self.tx_more {
                self.tx()?;
            }
            if tun || self.rx_more {
                self.rx(tun)?;
            }
            self.check_host_link()?;
            if self.control.take_stats_request() {
                eprintln!(
                    "stats: {}",
                    super::lab_bridge::format_stats(&self.dp.bridge_stats())
                );
            }
        }
        Ok(())
    }

    /// Ends the loop with an error naming the TUN once the device core saw it fail (deleted
    /// underneath: reads and writes answer `EBADFD`, and the level-triggered epoll would report
    /// it without end).
    fn check_host_link(&self) -> anyhow::Result<()> {
        if self.dp.host_failed() {
            anyhow::bail!(
                "the host link failed: TUN {} in the host namespace is gone or broken",
                self.tun.name()
            );
        }
        Ok(())
    }

    /// The TAP is readable (or the last kick left chains): frames onto the TX ring, the
    /// device's TX path (TUN writes, gateway replies into the RX ring), slots back, received
    /// frames to the TAP; until the TAP is drained or the device core's budget ran out (the
    /// run loop comes back at once, after a look at the other events).
    fn tx(&mut self) -> anyhow::Result<()> {
        loop {
            let p = self.driver.pump_tx()?;
            if p.posted > 0 || self.tx_more {
                let n = self
                    .dp
                    .on_tx_kick(
                        &self.mem,
                        &mut self.txq,
                        Some(&mut self.rxq),
                        &self.tun,
                        self.clock.now(),
                    )
                    .context("the device's TX path")?;
                self.tx_more = n.tx_more;
                self.rx_more |= n.rx_more;
                self.driver.reclaim_tx()?;
                // Gateway replies (and host packets) went into the RX ring: to the TAP.
                self.rx(false)?;
                if self.tx_more {
                    return Ok(());
                }
            }
            if p.drained || p.posted == 0 {
                return Ok(());
            }
        }
    }

    /// The TUN is readable (or the guest added RX buffers): the device's RX path, then the
    /// driver writes the frames to the TAP and refills; until nothing more moves.
    fn rx(&mut self, readable: bool) -> anyhow::Result<()> {
        let mut readable = readable;
        for _ in 0..MAX_RX_ROUNDS {
            let before = self.dp.stats().rx_frames;
            let n = self
                .dp
                .on_rx_ready(
                    &self.mem,
                    &mut self.rxq,
                    &self.tun,
                    readable,
                    self.clock.now(),
                )
                .context("the device's RX path")?;
            // Left over after this round (the run loop comes back for it without waiting).
            self.rx_more = n.rx_more;
            readable = false;
            // Always: a ring without buffers must get them back, or the level-triggered TUN
            // would bring the loop straight back here. Memory only when nothing was used.
            self.driver.service_rx()?;
            if self.dp.stats().rx_frames == before {
                return Ok(());
            }
        }
        Ok(())
    }
}

const TOKEN_TAP: u64 = 1;
const TOKEN_TUN: u64 = 2;
const TOKEN_STOP: u64 = 3;
/// NAT expiry runs at most this often, and the stop flag is checked at least this often.
/// An epoll set watching `fds` for input, each with its token.
pub(super) fn epoll_over(fds: impl IntoIterator<Item = (RawFd, u64)>) -> anyhow::Result<Epoll> {
    let epoll = Epoll::new().context("creating epoll")?;
    for (fd, token) in fds {
        epoll
            .ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )
            .context("epoll add")?;
    }
    Ok(epoll)
}

/// The TUN's readiness fd.
pub(super) fn tun_fd(tun: &Tun) -> anyhow::Result<RawFd> {
    Ok(tun
        .readiness_fd()
        .context("the TUN has no readiness fd")?
        .as_raw_fd())
}

/// How long a loop waits for events at `now`: until the next tick or the NAT's `timeout`
/// (at most [`TICK`]), not at all with work left beyond a budget (`more`: look at the events,
/// then go on).
pub(super) fn wait_ms(
    next_tick: Instant,
    now: Instant,
    timeout: Option<Duration>,
    more: bool,
) -> i32 {
    if more {
        return 0;
    }
    let until_tick = next_tick.saturating_duration_since(now);
    let timeout = timeout.unwrap_or(TICK).clamp(until_tick, TICK);
    i32::try_from(timeout.as_millis().saturating_add(1)).unwrap_or(i32::MAX)
}

pub(super) const TICK: Duration = Duration::from_secs(1);
/// RX rounds per readiness event at most (the RX ring refilled in between); the level-
/// triggered TUN brings the loop back for the rest.
pub(super) const MAX_RX_ROUNDS: usize = 64;
