//! The threaded mode ([`SimGuest::start`]): the interrupt lines from the device
//! ([`Interrupts`]), and two threads that drive the [`Driver`]'s two halves, blocking in
//! `epoll` between steps ([`Waiter`]). The threads hold no driver logic of their own: they
//! call the same TX and RX steps an event loop calls through [`Driver`].

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

/// Interrupt lines from the device to the driver: one [`EventFd`] per queue. Hand
/// [`Interrupts::signal`] to the device as its interrupt callback.
pub struct Interrupts {
    rx: EventFd,
    tx: EventFd,
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
    /// Two fresh lines, nothing raised.
    ///
    /// # Errors
    /// An eventfd can't be created.
    pub(super) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            rx: EventFd::new(EFD_NONBLOCK).context("creating rx interrupt eventfd")?,
            tx: EventFd::new(EFD_NONBLOCK).context("creating tx interrupt eventfd")?,
            count: AtomicU64::new(0),
            inline_rx: OnceLock::new(),
        })
    }

    /// Raises the interrupt for `queue` ([`RX_QUEUE`] or [`TX_QUEUE`]; anything else raises
    /// both, like a shared config/legacy interrupt line).
    pub fn signal(&self, queue: u16) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let fire = |fd: &EventFd| {
            if let Err(e) = fd.write(1) {
                tracing::warn!("interrupt eventfd write failed: {e}");
            }
        };
        match queue {
            RX_QUEUE => {
                if !self.inline_rx.get().is_some_and(|h| h()) {
                    fire(&self.rx);
                }
            }
            TX_QUEUE => fire(&self.tx),
            _ => {
                fire(&self.rx);
                fire(&self.tx);
            }
        }
    }

    /// The eventfd of `queue`'s interrupt line ([`RX_QUEUE`] or [`TX_QUEUE`]), for a device
    /// in another process that signals it directly (a vhost-user backend's "call" fd; such
    /// interrupts are not counted by [`Interrupts::count`] and never run inline).
    #[must_use]
    pub fn line(&self, queue: u16) -> Option<&EventFd> {
        match queue {
            RX_QUEUE => Some(&self.rx),
            TX_QUEUE => Some(&self.tx),
            _ => None,
        }
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
    stats: Arc<GuestStats>,
    irq: Arc<Interrupts>,
}

impl Running {
    /// The driver's counters.
    #[must_use]
    pub fn stats(&self) -> &GuestStats {
        &self.stats
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

/// [`SimGuest::start`]: builds the [`Driver`], arms the RX interrupt and runs one thread per
/// half.
pub(super) fn start<F: FrameIo + 'static>(
    guest: SimGuest,
    io: Arc<F>,
    kick: Kick,
) -> anyhow::Result<Running> {
    let Driver { tx, rx, stats } = guest.driver(io, kick)?;
    // Interrupts for the first buffers.
    rx.arm_interrupt()?;
    let stop = Arc::new(EventFd::new(EFD_NONBLOCK).context("creating stop eventfd")?);
    let stopping = Arc::new(AtomicBool::new(false));
    let rx = Arc::new(Mutex::new(rx));
    let rx_waiter = Waiter::new(&guest.irq, RX_QUEUE, &stop)?;
    let tx_waiter = Waiter::new(&guest.irq, TX_QUEUE, &stop)?;
    if guest.cfg.inline_rx_interrupt {
        let _ = guest.irq.inline_rx.set(inline_rx(&rx, &stopping));
    }
    let rx_stopping = Arc::clone(&stopping);
    let rx_thread = std::thread::Builder::new()
        .name("guest-rx".into())
        .spawn(move || rx_thread(&rx, &rx_waiter, &rx_stopping))
        .context("spawning guest rx thread")?;
    let tx_stopping = Arc::clone(&stopping);
    let tx_thread = match std::thread::Builder::new()
        .name("guest-tx".into())
        .spawn(move || tx_thread(tx, tx_waiter, &tx_stopping))
    {
        Ok(t) => t,
        Err(e) => {
            stopping.store(true, Ordering::SeqCst);
            let _ = stop.write(1);
            let _ = rx_thread.join();
            return Err(e).context("spawning guest tx thread");
        }
    };
    Ok(Running {
        stop,
        stopping,
        threads: vec![rx_thread, tx_thread],
        stats,
        irq: guest.irq,
    })
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
        let irq = match queue {
            RX_QUEUE => irq.rx.try_clone(),
            _ => irq.tx.try_clone(),
        }
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
