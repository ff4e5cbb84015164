//! The threaded mode ([`SimGuest::start`], [`SimGuest::start_pairs`]): the interrupt lines
//! from the device ([`Interrupts`], one per queue), and two threads per queue pair that drive
//! the pair [`Driver`]'s two halves, blocking in `epoll` between steps ([`Waiter`]). The
//! threads hold no driver logic of their own: they call the same TX and RX steps an event
//! loop calls through [`Driver`].

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use anyhow::Context;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::rx::RxDriver;
use super::tx::TxDriver;
use super::{Driver, FrameIo, GuestStats, Kick, RX_QUEUE, SimGuest, TX_QUEUE};

/// Interrupt lines from the device to the driver: one [`EventFd`] per queue of the queue
/// pairs laid out (queue `2i` is pair i's RX, `2i + 1` its TX). Hand [`Interrupts::signal`]
/// to the device as its interrupt callback.
pub struct Interrupts {
    /// Indexed by queue.
    lines: Vec<EventFd>,
    count: AtomicU64,
    /// Services the RX ring on the signalling thread (see
    /// [`GuestConfig::inline_rx_interrupt`](super::GuestConfig::inline_rx_interrupt)).
    inline_rx: OnceLock<InlineIrq>,
}

/// An interrupt handler run on the device's thread; `false`: not serviced (busy, stopping or
/// failed), raise the interrupt line instead.
type InlineIrq = Box<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts")
            .field("count", &self.count)
            .field("inline_rx", &self.inline_rx.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Interrupts {
    /// Fresh lines for `pairs` queue pairs (two per pair), nothing raised.
    ///
    /// # Errors
    /// An eventfd can't be created.
    pub(super) fn new(pairs: u16) -> anyhow::Result<Self> {
        let lines = (0..2 * pairs.max(1))
            .map(|q| {
                EventFd::new(EFD_NONBLOCK)
                    .with_context(|| format!("creating the interrupt eventfd of queue {q}"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            lines,
            count: AtomicU64::new(0),
            inline_rx: OnceLock::new(),
        })
    }

    /// Raises the interrupt for `queue` (a queue of a pair laid out, e.g. [`RX_QUEUE`] or
    /// [`TX_QUEUE`]; anything else raises every line, like a shared config/legacy interrupt
    /// line).
    pub fn signal(&self, queue: u16) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let fire = |fd: &EventFd| {
            if let Err(e) = fd.write(1) {
                tracing::warn!("interrupt eventfd write failed: {e}");
            }
        };
        match self.lines.get(usize::from(queue)) {
            Some(line) if queue == RX_QUEUE => {
                if !self.inline_rx.get().is_some_and(|h| h()) {
                    fire(line);
                }
            }
            Some(line) => fire(line),
            None => self.lines.iter().for_each(fire),
        }
    }

    /// The eventfd of `queue`'s interrupt line (a queue of a pair laid out, e.g.
    /// [`RX_QUEUE`] or [`TX_QUEUE`]), for a device in another process that signals it
    /// directly (a vhost-user backend's "call" fd; such interrupts are not counted by
    /// [`Interrupts::count`] and never run inline).
    #[must_use]
    pub fn line(&self, queue: u16) -> Option<&EventFd> {
        self.lines.get(usize::from(queue))
    }

    /// How many interrupts the device raised so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The running driver threads. Dropping it stops them too.
#[derive(Debug)]
pub struct Running {
    stop: Arc<EventFd>,
    stopping: Arc<AtomicBool>,
    threads: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Per queue pair, pair 0 first.
    stats: Vec<Arc<GuestStats>>,
    irq: Arc<Interrupts>,
}

impl Running {
    /// The driver's counters (pair 0's with several queue pairs, see
    /// [`Running::pair_stats`]).
    #[must_use]
    pub fn stats(&self) -> &GuestStats {
        &self.stats[0]
    }

    /// Each queue pair's counters, pair 0 first.
    #[must_use]
    pub fn pair_stats(&self) -> &[Arc<GuestStats>] {
        &self.stats
    }

    /// The counters as one line: [`GuestStats::summary`] with one queue pair, `pair 0: …;
    /// pair 1: …` with several.
    #[must_use]
    pub fn summary(&self) -> String {
        match self.stats.as_slice() {
            [one] => one.summary(),
            pairs => pairs
                .iter()
                .enumerate()
                .map(|(i, s)| format!("pair {i}: {}", s.summary()))
                .collect::<Vec<_>>()
                .join("; "),
        }
    }

    /// Interrupts received from the device so far.
    #[must_use]
    pub fn interrupts(&self) -> u64 {
        self.irq.count()
    }

    /// Whether a driver thread has ended (by error) on its own.
    #[must_use]
    pub fn has_failed(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops both threads and waits for them (within about 100 ms).
    ///
    /// # Errors
    /// A driver thread failed (the first error) or panicked.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> anyhow::Result<()> {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.stop.write(1);
        let mut first = Ok(());
        for t in self.threads.drain(..) {
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("guest driver thread panicked")),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("guest driver: {e:#}");
        }
    }
}

/// [`SimGuest::start_pairs`]: builds each pair's [`Driver`], arms its RX interrupt and runs
/// one thread per half (pair 0's `guest-rx` and `guest-tx`, pair i's `guest-rx<i>` and
/// `guest-tx<i>`).
pub(super) fn start<F: FrameIo + 'static>(
    guest: SimGuest,
    ios: Vec<Arc<F>>,
    kick: Kick,
) -> anyhow::Result<Running> {
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).context("creating stop eventfd")?);
    let stopping = Arc::new(AtomicBool::new(false));
    let mut running = Running {
        stop: Arc::clone(&stop),
        stopping: Arc::clone(&stopping),
        threads: Vec::with_capacity(2 * ios.len()),
        stats: Vec::with_capacity(ios.len()),
        irq: Arc::clone(&guest.irq),
    };
    // On an error, dropping `running` stops the threads already started.
    for (pair, io) in (0u16..).zip(ios) {
        let Driver { tx, rx, stats } = guest.pair_driver(pair, io, Arc::clone(&kick))?;
        running.stats.push(stats);
        // Interrupts for the first buffers.
        rx.arm_interrupt()?;
        let rx = Arc::new(Mutex::new(rx));
        let rx_waiter = Waiter::new(&guest.irq, 2 * pair + RX_QUEUE, &stop)?;
        let tx_waiter = Waiter::new(&guest.irq, 2 * pair + TX_QUEUE, &stop)?;
        if pair == 0 && guest.cfg.inline_rx_interrupt {
            let _ = guest.irq.inline_rx.set(inline_rx(&rx, &stopping));
        }
        let suffix = if pair == 0 {
            String::new()
        } else {
            pair.to_string()
        };
        let rx_stopping = Arc::clone(&stopping);
        running.threads.push(
            std::thread::Builder::new()
                .name(format!("guest-rx{suffix}"))
                .spawn(move || rx_thread(&rx, &rx_waiter, &rx_stopping))
                .context("spawning guest rx thread")?,
        );
        let tx_stopping = Arc::clone(&stopping);
        running.threads.push(
            std::thread::Builder::new()
                .name(format!("guest-tx{suffix}"))
                .spawn(move || tx_thread(tx, tx_waiter, &tx_stopping))
                .context("spawning guest tx thread")?,
        );
    }
    Ok(running)
}

/// The TX thread: TX steps while the TAP has frames; waits for the TAP when it is drained,
/// and for the TX interrupt when every slot is in flight.
fn tx_thread<F: FrameIo>(
    mut tx: TxDriver<F>,
    mut waiter: Waiter,
    stopping: &AtomicBool,
) -> anyhow::Result<()> {
    while !stopping.load(Ordering::Relaxed) {
        let p = tx.pump()?;
        if tx.ring_full() {
            waiter.watch(tx.fd(), false)?;
            if !tx.arm_interrupt()? {
                waiter.wait()?;
            }
            tx.disarm_interrupt()?;
        } else if p.drained {
            waiter.watch(tx.fd(), true)?;
            waiter.wait()?;
        }
    }
    Ok(())
}

/// The RX thread: an RX step on every interrupt (unless the interrupt was serviced inline,
/// see [`Interrupts::signal`]).
fn rx_thread<F: FrameIo>(
    rx: &Mutex<RxDriver<F>>,
    waiter: &Waiter,
    stopping: &AtomicBool,
) -> anyhow::Result<()> {
    while !stopping.load(Ordering::Relaxed) {
        lock(rx).service()?;
        waiter.wait()?;
    }
    Ok(())
}

/// The RX step as an interrupt handler on the device's thread, when the RX thread is not in
/// it. Weak: the driver (and the kick it holds) goes away with the RX thread, even though the
/// device keeps the interrupt lines.
fn inline_rx<F: FrameIo + 'static>(
    rx: &Arc<Mutex<RxDriver<F>>>,
    stopping: &Arc<AtomicBool>,
) -> InlineIrq {
    let driver = Arc::downgrade(rx);
    let stopping = Arc::clone(stopping);
    Box::new(move || {
        if stopping.load(Ordering::Relaxed) {
            return false;
        }
        let Some(driver) = driver.upgrade() else {
            return false;
        };
        let Ok(mut d) = driver.try_lock() else {
            // Busy (the RX thread has it) or poisoned: raise the line instead.
            return false;
        };
        match d.service() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("inline rx interrupt: {e:#}");
                false
            }
        }
    })
}

/// Blocks a driver thread until its interrupt, its other fd, or stop.
struct Waiter {
    epoll: Epoll,
    irq: EventFd,
    /// Kept open for the epoll set; a write wakes the wait.
    _stop: EventFd,
    /// Whether the extra fd (the TAP, for TX) is currently in the interest list.
    extra_armed: bool,
}

impl Waiter {
    fn new(irq: &Interrupts, queue: u16, stop: &EventFd) -> anyhow::Result<Self> {
        let epoll = Epoll::new().context("creating epoll")?;
        let irq = irq
            .line(queue)
            .with_context(|| format!("no interrupt line for queue {queue}"))?
            .try_clone()
            .context("cloning interrupt eventfd")?;
        let stop = stop.try_clone().context("cloning stop eventfd")?;
        epoll
            .ctl(
                ControlOperation::Add,
                irq.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_IRQ),
            )
            .context("epoll add irq")?;
        epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, TOKEN_STOP),
            )
            .context("epoll add stop")?;
        Ok(Self {
            epoll,
            irq,
            _stop: stop,
            extra_armed: false,
        })
    }

    /// Adds (`want`) or removes the extra fd from the interest list.
    fn watch(&mut self, fd: BorrowedFd<'_>, want: bool) -> anyhow::Result<()> {
        if want != self.extra_armed {
            let op = if want {
                ControlOperation::Add
            } else {
                ControlOperation::Delete
            };
            self.epoll
                .ctl(
                    op,
                    fd.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, TOKEN_EXTRA),
                )
                .context("epoll ctl tap")?;
            self.extra_armed = want;
        }
        Ok(())
    }

    /// Waits up to [`WAIT_MS`]; drains the interrupt eventfd if it fired.
    fn wait(&self) -> anyhow::Result<()> {
        let mut events = [EpollEvent::default(); 4];
        let n = match self.epoll.wait(WAIT_MS, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e).context("epoll wait"),
        };
        for ev in events.iter().take(n) {
            if ev.data() == TOKEN_IRQ {
                let _ = self.irq.read();
            }
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const TOKEN_IRQ: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_EXTRA: u64 = 3;
/// Longest wait in one epoll call, so a stop is seen even if the eventfd write were lost.
const WAIT_MS: i32 = 100;
