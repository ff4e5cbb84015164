//! A simulated virtio-net guest: the DRIVER side of the split virtqueues, written here
//! independently of `bridge`, over real guest memory (`vm-memory` `GuestMemoryMmap`).
//!
//! [`SimGuest::new`] allocates guest memory, lays out two split queues (RX = 0, TX = 1) and
//! negotiates features against what the device offers. [`SimGuest::device_queue`] builds the
//! device-side [`Queue`]s (addresses, size, ready, EVENT_IDX) to hand to the device, and
//! [`SimGuest::start`] runs two driver threads bound to a frame source/sink ([`FrameIo`], in
//! practice a TAP device inside the guest namespace):
//!
//! - TX: read Ethernet frames from the TAP, prepend a zeroed 12-byte `virtio_net_hdr_v1`, post
//!   them on queue 1 (header and frame in two chained descriptors by default), kick the device
//!   (honouring `VIRTIO_RING_F_EVENT_IDX` / `VRING_USED_F_NO_NOTIFY`), reclaim used buffers.
//! - RX: keep queue 0 filled with device-writable buffers, wait for the device's interrupt
//!   (an [`EventFd`] per queue, see [`Interrupts`]), collect used buffers, reassemble
//!   `MRG_RXBUF` frames from `num_buffers`, strip the header and write the frame to the TAP.
//!
//! Both threads block in `epoll` with a bounded timeout (no busy loops) and stop within about
//! 100 ms of [`Running::stop`]. Nothing the device returns can make the driver panic: bad used
//! entries (unknown id, bad length) are counted in [`GuestStats`] and skipped.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::thread::JoinHandle;

use anyhow::{Context, bail, ensure};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// virtio-net and ring feature bits the simulated guest knows.
pub mod features {
    /// `VIRTIO_NET_F_MTU`: the device reports its MTU in config space.
    pub const MTU: u64 = 1 << 3;
    /// `VIRTIO_NET_F_MAC`: the device has a MAC address.
    pub const MAC: u64 = 1 << 5;
    /// `VIRTIO_NET_F_MRG_RXBUF`: RX frames may span several buffers (`num_buffers`).
    pub const MRG_RXBUF: u64 = 1 << 15;
    /// `VIRTIO_NET_F_STATUS`: link status in config space.
    pub const STATUS: u64 = 1 << 16;
    /// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// `VIRTIO_F_VERSION_1`.
    pub const VERSION_1: u64 = 1 << 32;
    /// Everything the simulated guest asks for.
    pub const WANTED: u64 = VERSION_1 | MAC | MTU | STATUS | MRG_RXBUF | EVENT_IDX;
}

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Length of `virtio_net_hdr_v1` (VERSION_1 always uses it).
pub const NET_HDR_LEN: usize = 12;

/// The virtio-net config space fields the driver reads (`struct virtio_net_config`: mac at 0,
/// status at 6, max_virtqueue_pairs at 8, mtu at 10; little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// The device's MAC (valid with `VIRTIO_NET_F_MAC`).
    pub mac: [u8; 6],
    /// Link status (`VIRTIO_NET_S_LINK_UP` = 1; valid with `VIRTIO_NET_F_STATUS`).
    pub status: u16,
    /// The device's MTU (valid with `VIRTIO_NET_F_MTU`).
    pub mtu: u16,
}

impl NetConfig {
    /// Parses the first 12 bytes of the config space; `None` if shorter.
    #[must_use]
    pub fn parse(space: &[u8]) -> Option<Self> {
        let b = space.get(..12)?;
        let mut mac = [0u8; 6];
        mac.copy_from_slice(b.get(..6)?);
        let le = |i: usize| b.get(i..i + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
        Some(Self {
            mac,
            status: le(6)?,
            mtu: le(10)?,
        })
    }

    /// Whether the link is up.
    #[must_use]
    pub fn link_up(&self) -> bool {
        self.status & 1 != 0
    }

    /// The MAC as `aa:bb:cc:dd:ee:ff`.
    #[must_use]
    pub fn mac_string(&self) -> String {
        let [a, b, c, d, e, f] = self.mac;
        format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
    }
}

/// Where frames come from and go to: a TAP device in practice, a datagram socket in tests.
///
/// `recv_frame` must not block (return [`io::ErrorKind::WouldBlock`] when empty); `fd` must
/// poll readable when a frame is waiting.
pub trait FrameIo: Send + Sync {
    /// Reads one whole Ethernet frame into `buf`, returning its length.
    ///
    /// # Errors
    /// `WouldBlock` when nothing is waiting; any other I/O error.
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one whole Ethernet frame.
    ///
    /// # Errors
    /// Any I/O error (the frame is counted as dropped).
    fn send_frame(&self, frame: &[u8]) -> io::Result<usize>;
    /// The descriptor to wait on for readability.
    fn fd(&self) -> BorrowedFd<'_>;
}

impl FrameIo for UnixDatagram {
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
    fn send_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.send(frame)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

impl FrameIo for utun::Tun {
    fn recv_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv(buf)
    }
    fn send_frame(&self, frame: &[u8]) -> io::Result<usize> {
        self.send(frame)
    }
    fn fd(&self) -> BorrowedFd<'_> {
        self.as_fd()
    }
}

/// How the simulated guest lays out memory and buffers.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GuestConfig {
    /// Guest memory size in bytes (at least [`MIN_MEM_SIZE`]).
    pub mem_size: usize,
    /// Queue size for both queues (power of two, 2..=256).
    pub queue_size: u16,
    /// Size of each RX buffer when `MRG_RXBUF` is negotiated (without it every buffer holds a
    /// whole 64 KiB frame). At least 64 bytes.
    pub rx_buffer_size: u32,
    /// Put the TX header in its own descriptor, chained to the frame (exercises the device's
    /// ANY_LAYOUT handling); otherwise header and frame share one descriptor.
    pub split_tx_header: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            mem_size: 64 << 20,
            queue_size: 256,
            rx_buffer_size: 2048,
            split_tx_header: true,
        }
    }
}

/// Interrupt lines from the device to the driver: one [`EventFd`] per queue. Hand
/// [`Interrupts::signal`] to the device as its interrupt callback.
#[derive(Debug)]
pub struct Interrupts {
    rx: EventFd,
    tx: EventFd,
    count: AtomicU64,
}

impl Interrupts {
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
            RX_QUEUE => fire(&self.rx),
            TX_QUEUE => fire(&self.tx),
            _ => {
                fire(&self.rx);
                fire(&self.tx);
            }
        }
    }

    /// How many interrupts the device raised so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The device's doorbell: called with the queue index when the driver notifies ("kicks").
pub type Kick = Arc<dyn Fn(u16) + Send + Sync>;

/// The simulated guest before its driver threads run: memory, queue layout, features.
#[derive(Debug)]
pub struct SimGuest {
    mem: GuestMemoryMmap,
    features: u64,
    cfg: GuestConfig,
    irq: Arc<Interrupts>,
}

impl SimGuest {
    /// Allocates guest memory and negotiates `features::WANTED & device_features`.
    ///
    /// # Errors
    /// The device does not offer `VERSION_1`, the configuration is invalid, or the memory
    /// can't be mapped.
    pub fn new(cfg: GuestConfig, device_features: u64) -> anyhow::Result<Self> {
        ensure!(
            device_features & features::VERSION_1 != 0,
            "device does not offer VIRTIO_F_VERSION_1 (offered {device_features:#x})"
        );
        ensure!(
            cfg.queue_size.is_power_of_two() && (2..=MAX_QUEUE_SIZE).contains(&cfg.queue_size),
            "queue size {} is not a power of two in 2..={MAX_QUEUE_SIZE}",
            cfg.queue_size
        );
        ensure!(
            cfg.rx_buffer_size >= 64 && cfg.rx_buffer_size <= MAX_FRAME_BUF,
            "rx buffer size {} is outside 64..={MAX_FRAME_BUF}",
            cfg.rx_buffer_size
        );
        let features = features::WANTED & device_features;
        let needed = layout_end(&cfg, features);
        ensure!(
            cfg.mem_size as u64 >= needed && cfg.mem_size >= MIN_MEM_SIZE,
            "guest memory {} bytes is too small (need {needed})",
            cfg.mem_size
        );
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), cfg.mem_size)])
            .context("mapping guest memory")?;
        let irq = Arc::new(Interrupts {
            rx: EventFd::new(EFD_NONBLOCK).context("creating rx interrupt eventfd")?,
            tx: EventFd::new(EFD_NONBLOCK).context("creating tx interrupt eventfd")?,
            count: AtomicU64::new(0),
        });
        Ok(Self {
            mem,
            features,
            cfg,
            irq,
        })
    }

    /// The negotiated (driver-acknowledged) feature bits.
    #[must_use]
    pub fn acked_features(&self) -> u64 {
        self.features
    }

    /// The guest memory (clones share the same mapping).
    #[must_use]
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The interrupt lines; give `move |q| irq.signal(q)` to the device.
    #[must_use]
    pub fn interrupts(&self) -> Arc<Interrupts> {
        Arc::clone(&self.irq)
    }

    /// Builds the device-side queue `index` ([`RX_QUEUE`] or [`TX_QUEUE`]): addresses, size,
    /// EVENT_IDX per the negotiated features, ready.
    ///
    /// # Errors
    /// Unknown queue index, or virtio-queue refuses the layout.
    pub fn device_queue(&self, index: u16) -> anyhow::Result<Queue> {
        let l = RingLayout::of(index)?;
        let mut q = Queue::new(self.cfg.queue_size).context("creating device queue")?;
        q.try_set_size(self.cfg.queue_size)
            .context("setting queue size")?;
        q.try_set_desc_table_address(l.desc)
            .context("setting descriptor table address")?;
        q.try_set_avail_ring_address(l.avail)
            .context("setting avail ring address")?;
        q.try_set_used_ring_address(l.used)
            .context("setting used ring address")?;
        q.set_event_idx(self.features & features::EVENT_IDX != 0);
        q.set_ready(true);
        ensure!(q.is_valid(&self.mem), "queue {index} layout is not valid");
        Ok(q)
    }

    /// Starts the TX and RX driver threads on `io`, notifying the device through `kick`.
    ///
    /// # Errors
    /// The epoll/eventfd set-up fails, or the RX ring can't be filled.
    pub fn start<F: FrameIo + 'static>(self, io: Arc<F>, kick: Kick) -> anyhow::Result<Running> {
        let stop = Arc::new(EventFd::new(EFD_NONBLOCK).context("creating stop eventfd")?);
        let stopping = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(GuestStats::default());
        let event_idx = self.features & features::EVENT_IDX != 0;
        let mrg = self.features & features::MRG_RXBUF != 0;
        let size = self.cfg.queue_size;
        let rx_buf = if mrg {
            self.cfg.rx_buffer_size
        } else {
            MAX_FRAME_BUF
        };

        let mut rx = RxDriver {
            ring: DriverRing::new(RingLayout::of(RX_QUEUE)?, size, event_idx),
            mem: self.mem.clone(),
            buf_size: rx_buf,
            mrg,
            io: Arc::clone(&io),
            kick: Arc::clone(&kick),
            waiter: Waiter::new(&self.irq, RX_QUEUE, &stop)?,
            stats: Arc::clone(&stats),
            stopping: Arc::clone(&stopping),
        };
        rx.fill()?;
        let tx = TxDriver {
            ring: DriverRing::new(RingLayout::of(TX_QUEUE)?, size, event_idx),
            mem: self.mem.clone(),
            split: self.cfg.split_tx_header,
            io,
            kick,
            waiter: Waiter::new(&self.irq, TX_QUEUE, &stop)?,
            stats: Arc::clone(&stats),
            stopping: Arc::clone(&stopping),
        };
        let rx_thread = std::thread::Builder::new()
            .name("guest-rx".into())
            .spawn(move || rx.run())
            .context("spawning guest rx thread")?;
        let tx_thread = match std::thread::Builder::new()
            .name("guest-tx".into())
            .spawn(move || tx.run())
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
            irq: self.irq,
        })
    }
}

/// Counters of the simulated guest driver (all monotonic).
#[derive(Debug, Default)]
pub struct GuestStats {
    /// Frames posted on the TX queue.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames (without the virtio header).
    pub tx_bytes: AtomicU64,
    /// TX buffers the device returned.
    pub tx_completed: AtomicU64,
    /// Times the TX thread had no free buffer and waited for the device.
    pub tx_ring_full: AtomicU64,
    /// Frames received on the RX queue and written to the TAP.
    pub rx_frames: AtomicU64,
    /// Bytes of those frames (without the virtio header).
    pub rx_bytes: AtomicU64,
    /// RX frames that spanned more than one buffer (`num_buffers > 1`).
    pub rx_merged: AtomicU64,
    /// RX frames the TAP refused (write error).
    pub rx_tap_drops: AtomicU64,
    /// Notifications sent to the device.
    pub kicks: AtomicU64,
    /// Notifications suppressed (EVENT_IDX / NO_NOTIFY said the device didn't need one).
    pub kicks_suppressed: AtomicU64,
    /// Bad used-ring entries from the device (unknown id, bad length, bad `num_buffers`).
    pub device_errors: AtomicU64,
    /// TAP read errors other than `WouldBlock`.
    pub tap_read_errors: AtomicU64,
}

impl GuestStats {
    /// A one-line human-readable summary.
    #[must_use]
    pub fn summary(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "guest tx {} frames/{} B (completed {}, ring full {}), rx {} frames/{} B (merged {}, \
             tap drops {}), kicks {} (suppressed {}), device errors {}, tap read errors {}",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_completed),
            g(&self.tx_ring_full),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_merged),
            g(&self.rx_tap_drops),
            g(&self.kicks),
            g(&self.kicks_suppressed),
            g(&self.device_errors),
            g(&self.tap_read_errors),
        )
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

/// Addresses of one split queue in guest memory.
#[derive(Clone, Copy, Debug)]
struct RingLayout {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    /// First byte of this queue's buffer area.
    buffers: u64,
}

impl RingLayout {
    fn of(index: u16) -> anyhow::Result<Self> {
        let base = match index {
            RX_QUEUE => RX_RING_BASE,
            TX_QUEUE => TX_RING_BASE,
            _ => bail!("no queue {index} (rx = {RX_QUEUE}, tx = {TX_QUEUE})"),
        };
        Ok(Self {
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x1000),
            used: GuestAddress(base + 0x2000),
            buffers: if index == RX_QUEUE {
                RX_BUF_BASE
            } else {
                TX_BUF_BASE
            },
        })
    }
}

/// The driver's view of one split ring.
struct DriverRing {
    l: RingLayout,
    size: u16,
    event_idx: bool,
    /// Next free slot in the avail ring (not yet published).
    next_avail: Wrapping<u16>,
    /// The avail index last published to the device.
    published: Wrapping<u16>,
    /// The next used-ring entry to consume.
    last_used: Wrapping<u16>,
}

impl DriverRing {
    fn new(l: RingLayout, size: u16, event_idx: bool) -> Self {
        Self {
            l,
            size,
            event_idx,
            next_avail: Wrapping(0),
            published: Wrapping(0),
            last_used: Wrapping(0),
        }
    }

    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        index: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> anyhow::Result<()> {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        let at = self.l.desc.0 + u64::from(index) * 16;
        mem.write_slice(&d, GuestAddress(at))
            .context("writing descriptor")
    }

    /// Puts `head` in the next avail slot (published later by [`Self::publish`]).
    fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> anyhow::Result<()> {
        let slot = u64::from(self.next_avail.0 % self.size);
        mem.write_obj(head.to_le(), self.l.avail.unchecked_add(4 + 2 * slot))
            .context("writing avail ring")?;
        self.next_avail += 1;
        Ok(())
    }

    /// Publishes pushed heads; returns whether the device wants a notification.
    fn publish(&mut self, mem: &GuestMemoryMmap) -> anyhow::Result<bool> {
        let old = self.published;
        let new = self.next_avail;
        if old == new {
            return Ok(false);
        }
        // Descriptors and ring entries are visible before the index.
        fence(Ordering::Release);
        mem.store(
            new.0.to_le(),
            self.l.avail.unchecked_add(2),
            Ordering::Release,
        )
        .context("writing avail idx")?;
        self.published = new;
        // The index store is ordered before reading the device's suppression state.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let at = self.l.used.unchecked_add(4 + 8 * u64::from(self.size));
            let event = Wrapping(u16::from_le(
                mem.load(at, Ordering::Acquire)
                    .context("reading avail_event")?,
            ));
            Ok(need_event(event, new, old))
        } else {
            let flags = u16::from_le(
                mem.load(self.l.used, Ordering::Acquire)
                    .context("reading used flags")?,
            );
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    fn used_idx(&self, mem: &GuestMemoryMmap) -> anyhow::Result<Wrapping<u16>> {
        let idx: u16 = mem
            .load(self.l.used.unchecked_add(2), Ordering::Acquire)
            .context("reading used idx")?;
        Ok(Wrapping(u16::from_le(idx)))
    }

    /// The next used entry `(id, len)`, if the device returned one.
    fn next_used(&mut self, mem: &GuestMemoryMmap) -> anyhow::Result<Option<(u32, u32)>> {
        if self.used_idx(mem)? == self.last_used {
            return Ok(None);
        }
        let slot = u64::from(self.last_used.0 % self.size);
        let mut e = [0u8; 8];
        mem.read_slice(&mut e, self.l.used.unchecked_add(4 + 8 * slot))
            .context("reading used element")?;
        self.last_used += 1;
        let [a, b, c, d, w, x, y, z] = e;
        Ok(Some((
            u32::from_le_bytes([a, b, c, d]),
            u32::from_le_bytes([w, x, y, z]),
        )))
    }

    /// Asks for an interrupt at the next used entry; returns whether entries are already
    /// pending (then the caller must process them instead of waiting).
    fn arm_interrupt(&self, mem: &GuestMemoryMmap) -> anyhow::Result<bool> {
        if self.event_idx {
            let at = self.l.avail.unchecked_add(4 + 2 * u64::from(self.size));
            mem.store(self.last_used.0.to_le(), at, Ordering::Release)
                .context("writing used_event")?;
        } else {
            mem.store(0u16, self.l.avail, Ordering::Release)
                .context("writing avail flags")?;
        }
        fence(Ordering::SeqCst);
        Ok(self.used_idx(mem)? != self.last_used)
    }

    /// Without EVENT_IDX: tells the device not to interrupt (a hint). With EVENT_IDX the stale
    /// `used_event` already suppresses interrupts until the device passes it again.
    fn disarm_interrupt(&self, mem: &GuestMemoryMmap) -> anyhow::Result<()> {
        if !self.event_idx {
            mem.store(
                VRING_AVAIL_F_NO_INTERRUPT.to_le(),
                self.l.avail,
                Ordering::Relaxed,
            )
            .context("writing avail flags")?;
        }
        Ok(())
    }
}

/// Blocks a driver thread until its interrupt, its other fd, or stop.
struct Waiter {
    epoll: Epoll,
    irq: EventFd,
    stop: EventFd,
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
            stop,
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
        let _ = &self.stop;
        Ok(())
    }
}

struct TxDriver<F> {
    ring: DriverRing,
    mem: GuestMemoryMmap,
    split: bool,
    io: Arc<F>,
    kick: Kick,
    waiter: Waiter,
    stats: Arc<GuestStats>,
    stopping: Arc<AtomicBool>,
}

impl<F: FrameIo> TxDriver<F> {
    fn run(mut self) -> anyhow::Result<()> {
        let size = self.ring.size;
        let slots = if self.split { size / 2 } else { size };
        let mut free: Vec<u16> = (0..slots).rev().collect();
        let mut in_flight = vec![false; usize::from(slots)];
        let mut frame = vec![0u8; TX_SLOT_SIZE as usize - NET_HDR_LEN];
        // TX completions are reclaimed by polling; interrupts only while the ring is full.
        self.ring.disarm_interrupt(&self.mem)?;
        while !self.stopping.load(Ordering::Relaxed) {
            self.reclaim(&mut free, &mut in_flight)?;
            let mut posted = 0;
            let mut drained = false;
            while posted < TX_BATCH {
                let Some(&slot) = free.last() else { break };
                let n = match self.io.recv_frame(&mut frame) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                        return Err(e).context("the TAP device is gone");
                    }
                    Err(e) => {
                        self.stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!("tap read: {e}");
                        drained = true;
                        break;
                    }
                };
                let Some(data) = frame.get(..n) else { continue };
                if data.is_empty() {
                    continue;
                }
                free.pop();
                self.post(slot, data)?;
                if let Some(f) = in_flight.get_mut(usize::from(slot)) {
                    *f = true;
                }
                posted += 1;
                self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats.tx_bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
            if posted > 0 {
                self.notify()?;
            }
            if free.is_empty() {
                self.stats.tx_ring_full.fetch_add(1, Ordering::Relaxed);
                self.waiter.watch(self.io.fd(), false)?;
                if !self.ring.arm_interrupt(&self.mem)? {
                    self.waiter.wait()?;
                }
                self.ring.disarm_interrupt(&self.mem)?;
            } else if drained {
                self.waiter.watch(self.io.fd(), true)?;
                self.waiter.wait()?;
            }
        }
        Ok(())
    }

    fn post(&mut self, slot: u16, data: &[u8]) -> anyhow::Result<()> {
        let base = self.ring.l.buffers + u64::from(slot) * TX_SLOT_SIZE;
        let hdr = [0u8; NET_HDR_LEN];
        self.mem
            .write_slice(&hdr, GuestAddress(base))
            .context("writing tx header")?;
        self.mem
            .write_slice(data, GuestAddress(base + NET_HDR_LEN as u64))
            .context("writing tx frame")?;
        let len = u32::try_from(data.len()).context("frame too long")?;
        let head = if self.split {
            let head = slot * 2;
            self.ring.write_desc(
                &self.mem,
                head,
                base,
                NET_HDR_LEN as u32,
                VRING_DESC_F_NEXT,
                head + 1,
            )?;
            self.ring
                .write_desc(&self.mem, head + 1, base + NET_HDR_LEN as u64, len, 0, 0)?;
            head
        } else {
            self.ring
                .write_desc(&self.mem, slot, base, len + NET_HDR_LEN as u32, 0, 0)?;
            slot
        };
        self.ring.push_avail(&self.mem, head)
    }

    fn reclaim(&mut self, free: &mut Vec<u16>, in_flight: &mut [bool]) -> anyhow::Result<()> {
        while let Some((id, _len)) = self.ring.next_used(&self.mem)? {
            let slot = if self.split {
                (id % 2 == 0).then_some(id / 2)
            } else {
                Some(id)
            };
            match slot
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| in_flight.get_mut(usize::from(s)).map(|f| (s, f)))
            {
                Some((s, f)) if *f => {
                    *f = false;
                    free.push(s);
                    self.stats.tx_completed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    self.stats.device_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, "device returned an unknown tx head");
                }
            }
        }
        Ok(())
    }

    fn notify(&mut self) -> anyhow::Result<()> {
        if self.ring.publish(&self.mem)? {
            self.stats.kicks.fetch_add(1, Ordering::Relaxed);
            (self.kick)(TX_QUEUE);
        } else {
            self.stats.kicks_suppressed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

struct RxDriver<F> {
    ring: DriverRing,
    mem: GuestMemoryMmap,
    buf_size: u32,
    mrg: bool,
    io: Arc<F>,
    kick: Kick,
    waiter: Waiter,
    stats: Arc<GuestStats>,
    stopping: Arc<AtomicBool>,
}

impl<F: FrameIo> RxDriver<F> {
    /// Writes every descriptor once (buffer `i` is descriptor `i`) and makes them all available.
    fn fill(&mut self) -> anyhow::Result<()> {
        for i in 0..self.ring.size {
            let addr = self.buf_addr(i);
            self.ring
                .write_desc(&self.mem, i, addr, self.buf_size, VRING_DESC_F_WRITE, 0)?;
            self.ring.push_avail(&self.mem, i)?;
        }
        self.notify()
    }

    fn buf_addr(&self, i: u16) -> u64 {
        self.ring.l.buffers + u64::from(i) * u64::from(self.buf_size)
    }

    fn run(mut self) -> anyhow::Result<()> {
        let mut frame: Vec<u8> = Vec::with_capacity(MAX_FRAME_BUF as usize + 4096);
        let mut pending: Vec<u16> = Vec::with_capacity(usize::from(self.ring.size));
        let mut expected: usize = 0;
        // Interrupts for the first buffers.
        self.ring.arm_interrupt(&self.mem)?;
        while !self.stopping.load(Ordering::Relaxed) {
            let mut recycled = 0usize;
            while let Some((id, len)) = self.ring.next_used(&self.mem)? {
                let Some(id) = u16::try_from(id).ok().filter(|i| *i < self.ring.size) else {
                    self.stats.device_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, "device returned an unknown rx head");
                    continue;
                };
                if pending.contains(&id) || len > self.buf_size {
                    self.device_error(&mut pending, &mut frame, id, "bad rx used entry")?;
                    recycled += 1;
                    continue;
                }
                let addr = self.buf_addr(id);
                let skip = if pending.is_empty() {
                    if (len as usize) < NET_HDR_LEN {
                        self.device_error(&mut pending, &mut frame, id, "short rx header")?;
                        recycled += 1;
                        continue;
                    }
                    let mut hdr = [0u8; NET_HDR_LEN];
                    self.mem
                        .read_slice(&mut hdr, GuestAddress(addr))
                        .context("reading rx header")?;
                    let [.., lo, hi] = hdr;
                    expected = if self.mrg {
                        usize::from(u16::from_le_bytes([lo, hi]))
                    } else {
                        1
                    };
                    if expected == 0 || expected > usize::from(self.ring.size) {
                        self.device_error(&mut pending, &mut frame, id, "bad num_buffers")?;
                        recycled += 1;
                        continue;
                    }
                    frame.clear();
                    NET_HDR_LEN
                } else {
                    0
                };
                let take = len as usize - skip;
                let start = frame.len();
                frame.resize(start + take, 0);
                if let Some(dst) = frame.get_mut(start..) {
                    self.mem
                        .read_slice(dst, GuestAddress(addr + skip as u64))
                        .context("reading rx buffer")?;
                }
                pending.push(id);
                if pending.len() == expected {
                    self.deliver(&frame, expected);
                    for id in pending.drain(..) {
                        self.ring.push_avail(&self.mem, id)?;
                        recycled += 1;
                    }
                    frame.clear();
                }
                if recycled >= RX_REFILL_BATCH {
                    self.notify()?;
                    recycled = 0;
                }
            }
            if recycled > 0 {
                self.notify()?;
            }
            if self.ring.arm_interrupt(&self.mem)? {
                continue;
            }
            self.waiter.wait()?;
        }
        Ok(())
    }

    fn deliver(&self, frame: &[u8], buffers: usize) {
        match self.io.send_frame(frame) {
            Ok(_) => {
                self.stats.rx_frames.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .rx_bytes
                    .fetch_add(frame.len() as u64, Ordering::Relaxed);
                if buffers > 1 {
                    self.stats.rx_merged.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.stats.rx_tap_drops.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("tap write of {} bytes: {e}", frame.len());
            }
        }
    }

    /// Drops the frame being assembled and gives its buffers (and `id`) back to the device.
    fn device_error(
        &mut self,
        pending: &mut Vec<u16>,
        frame: &mut Vec<u8>,
        id: u16,
        what: &str,
    ) -> anyhow::Result<()> {
        self.stats.device_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(id, "{what}");
        frame.clear();
        for p in pending.drain(..) {
            self.ring.push_avail(&self.mem, p)?;
        }
        self.ring.push_avail(&self.mem, id)
    }

    fn notify(&mut self) -> anyhow::Result<()> {
        if self.ring.publish(&self.mem)? {
            self.stats.kicks.fetch_add(1, Ordering::Relaxed);
            (self.kick)(RX_QUEUE);
        } else {
            self.stats.kicks_suppressed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// `vring_need_event`: whether moving the index from `old` to `new` passed `event`.
fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    (new - event - Wrapping(1)) < (new - old)
}

/// Memory end of the layout for `cfg` and `features`.
fn layout_end(cfg: &GuestConfig, features: u64) -> u64 {
    let rx_buf = if features & features::MRG_RXBUF != 0 {
        u64::from(cfg.rx_buffer_size)
    } else {
        u64::from(MAX_FRAME_BUF)
    };
    let rx_end = RX_BUF_BASE + u64::from(cfg.queue_size) * rx_buf;
    let tx_end = TX_BUF_BASE + u64::from(cfg.queue_size) * TX_SLOT_SIZE;
    rx_end.max(tx_end).max(TX_BUF_BASE)
}

/// Largest queue size the guest lays out room for.
const MAX_QUEUE_SIZE: u16 = 256;
/// Smallest guest memory accepted.
pub const MIN_MEM_SIZE: usize = 1 << 20;
/// Bytes per RX buffer without MRG_RXBUF, and the biggest frame plus header we handle.
const MAX_FRAME_BUF: u32 = 65_562 + 64;
/// Bytes per TX slot (header + the largest frame).
const TX_SLOT_SIZE: u64 = 0x1_0100;
const RX_RING_BASE: u64 = 0x0;
const TX_RING_BASE: u64 = 0x4000;
/// TX buffers first (fixed size), RX buffers after them.
const TX_BUF_BASE: u64 = 0x1_0000;
const RX_BUF_BASE: u64 = TX_BUF_BASE + MAX_QUEUE_SIZE as u64 * TX_SLOT_SIZE;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
const TOKEN_IRQ: u64 = 1;
const TOKEN_STOP: u64 = 2;
const TOKEN_EXTRA: u64 = 3;
/// Longest wait in one epoll call, so a stop is seen even if the eventfd write were lost.
const WAIT_MS: i32 = 100;
/// Frames posted per TX batch before notifying.
const TX_BATCH: usize = 64;
/// Buffers recycled before the RX thread republishes mid-batch.
const RX_REFILL_BATCH: usize = 32;

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    /// A minimal device built on virtio-queue's own device side: echoes every TX frame back on
    /// RX (MRG_RXBUF when negotiated), raising interrupts as virtio-queue says.
    fn echo_device(
        mem: GuestMemoryMmap,
        mut rxq: Queue,
        mut txq: Queue,
        irq: Arc<Interrupts>,
        mrg: bool,
        kicks: mpsc::Receiver<u16>,
    ) -> u64 {
        let mut echoed = 0;
        let mut buf = Vec::new();
        loop {
            match kicks.recv_timeout(Duration::from_millis(20)) {
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return echoed,
            }
            loop {
                let _ = txq.disable_notification(&mem);
                while let Some(chain) = txq.pop_descriptor_chain(&mem) {
                    let head = chain.head_index();
                    buf.clear();
                    for d in chain {
                        let start = buf.len();
                        buf.resize(start + d.len() as usize, 0);
                        mem.read_slice(&mut buf[start..], d.addr()).unwrap();
                    }
                    txq.add_used(&mem, head, 0).unwrap();
                    if echo_into_rx(&mem, &mut rxq, &buf[NET_HDR_LEN..], mrg) {
                        echoed += 1;
                    }
                }
                if !txq.enable_notification(&mem).unwrap() {
                    break;
                }
            }
            if txq.needs_notification(&mem).unwrap() {
                irq.signal(TX_QUEUE);
            }
            if rxq.needs_notification(&mem).unwrap() {
                irq.signal(RX_QUEUE);
            }
        }
    }

    fn echo_into_rx(mem: &GuestMemoryMmap, rxq: &mut Queue, frame: &[u8], mrg: bool) -> bool {
        let mut hdr = [0u8; NET_HDR_LEN];
        let mut data: Vec<u8> = Vec::new();
        let mut chains = Vec::new();
        let total = NET_HDR_LEN + frame.len();
        let mut cap = 0;
        while cap < total {
            let Some(chain) = rxq.pop_descriptor_chain(mem) else {
                let back = u16::try_from(chains.len()).unwrap();
                rxq.set_next_avail(rxq.next_avail().wrapping_sub(back));
                return false;
            };
            let head = chain.head_index();
            let descs: Vec<_> = chain.collect();
            let len: usize = descs.iter().map(|d| d.len() as usize).sum();
            cap += len;
            chains.push((head, descs));
            if !mrg {
                break;
            }
        }
        assert!(cap >= total, "rx buffers too small");
        let n = u16::try_from(chains.len()).unwrap();
        hdr[10..12].copy_from_slice(&n.to_le_bytes());
        data.extend_from_slice(&hdr);
        data.extend_from_slice(frame);
        let mut off = 0;
        for (head, descs) in chains {
            let mut written = 0u32;
            for d in descs {
                assert!(d.is_write_only());
                let take = (d.len() as usize).min(data.len() - off);
                mem.write_slice(&data[off..off + take], d.addr()).unwrap();
                off += take;
                written += u32::try_from(take).unwrap();
            }
            rxq.add_used(mem, head, written).unwrap();
        }
        true
    }

    fn round_trip(device_features: u64, split: bool) {
        let cfg = GuestConfig {
            split_tx_header: split,
            ..GuestConfig::default()
        };
        let guest = SimGuest::new(cfg, device_features).unwrap();
        assert_eq!(guest.acked_features(), device_features & features::WANTED);
        let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
        let rxq = guest.device_queue(RX_QUEUE).unwrap();
        let txq = guest.device_queue(TX_QUEUE).unwrap();
        assert_eq!(
            rxq.event_idx_enabled(),
            device_features & features::EVENT_IDX != 0
        );
        let (kick_tx, kick_rx) = mpsc::channel();
        let kick_tx = std::sync::Mutex::new(kick_tx);
        let mem = guest.memory().clone();
        let irq = guest.interrupts();
        let device = std::thread::spawn(move || echo_device(mem, rxq, txq, irq, mrg, kick_rx));
        let (tap, peer) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let kick: Kick = Arc::new(move |q| {
            let _ = kick_tx.lock().unwrap().send(q);
        });
        let running = guest.start(Arc::new(tap), kick).unwrap();

        let sizes = [60usize, 1514, 2100, 9014, 65_000];
        let mut got = vec![0u8; 70_000];
        let started = Instant::now();
        for round in 0..3u8 {
            for (i, &size) in sizes.iter().enumerate() {
                let frame: Vec<u8> = (0..size).map(|b| (b as u8) ^ round ^ i as u8).collect();
                peer.send(&frame).unwrap();
                let n = peer.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &frame[..], "size {size} round {round}");
            }
        }
        // More frames than the TX ring holds, sent before reading any back.
        for i in 0..300u32 {
            peer.send(&i.to_le_bytes().repeat(20)).unwrap();
            let n = peer.recv(&mut got).unwrap();
            assert_eq!(&got[..n], &i.to_le_bytes().repeat(20)[..]);
        }
        assert!(started.elapsed() < Duration::from_secs(10));
        let stats = running.stats();
        // The counters are bumped just after the TAP write the peer already saw.
        let settle = Instant::now();
        while stats.rx_frames.load(Ordering::Relaxed) < 315
            && settle.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 315);
        assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 315);
        assert_eq!(stats.device_errors.load(Ordering::Relaxed), 0);
        if mrg {
            assert!(stats.rx_merged.load(Ordering::Relaxed) >= 9);
        }
        let stop_at = Instant::now();
        running.stop().unwrap();
        assert!(stop_at.elapsed() < Duration::from_millis(500));
        assert_eq!(device.join().unwrap(), 315);
    }

    #[test]
    fn echoes_through_virtio_queue_device_with_all_features() {
        round_trip(features::WANTED | (1 << 0), true);
    }

    #[test]
    fn echoes_with_one_descriptor_per_tx_frame() {
        round_trip(features::WANTED, false);
    }

    #[test]
    fn echoes_without_event_idx_or_mrg_rxbuf() {
        round_trip(features::VERSION_1 | features::MAC, true);
    }

    #[test]
    fn refuses_a_device_without_version_1() {
        assert!(SimGuest::new(GuestConfig::default(), features::MAC).is_err());
    }

    #[test]
    fn hostile_used_entries_are_counted_and_the_driver_keeps_going() {
        let guest = SimGuest::new(GuestConfig::default(), features::WANTED).unwrap();
        let mem = guest.memory().clone();
        let irq = guest.interrupts();
        let (tap, peer) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let running = guest.start(Arc::new(tap), Arc::new(|_| {})).unwrap();
        let used = RingLayout::of(RX_QUEUE).unwrap().used;
        let buf = |i: u64| GuestAddress(RX_BUF_BASE + i * 2048);
        let put = |slot: u64, id: u32, len: u32| {
            mem.write_obj(id, used.unchecked_add(4 + 8 * slot)).unwrap();
            mem.write_obj(len, used.unchecked_add(8 + 8 * slot))
                .unwrap();
        };
        // Buffer 3: a header claiming 0 buffers. Buffer 2: a good 60-byte frame.
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.write_slice(&hdr, buf(3)).unwrap();
        hdr[10] = 1;
        mem.write_slice(&hdr, buf(2)).unwrap();
        let frame: Vec<u8> = (0..60u8).collect();
        mem.write_slice(&frame, buf(2).unchecked_add(NET_HDR_LEN as u64))
            .unwrap();
        put(0, 999, 10); // unknown id
        put(1, 0, 1_000_000); // longer than the buffer
        put(2, 1, 5); // shorter than the header
        put(3, 3, 72); // num_buffers = 0
        put(4, 2, 72); // good
        mem.store(5u16, used.unchecked_add(2), Ordering::Release)
            .unwrap();
        irq.signal(RX_QUEUE);
        let mut got = [0u8; 128];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &frame[..]);
        let stats = running.stats();
        let t = Instant::now();
        while stats.device_errors.load(Ordering::Relaxed) < 4
            && t.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stats.device_errors.load(Ordering::Relaxed), 4);
        assert!(!running.has_failed());
        running.stop().unwrap();
    }

    #[test]
    fn config_space_is_parsed_little_endian() {
        let space = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0x28, 0x23];
        let c = NetConfig::parse(&space).unwrap();
        assert_eq!(c.mac_string(), "52:54:00:12:34:56");
        assert!(c.link_up());
        assert_eq!(c.mtu, 9000);
        assert_eq!(NetConfig::parse(&space[..11]), None);
    }

    #[test]
    fn need_event_matches_the_spec_formula() {
        let w = Wrapping;
        assert!(need_event(w(0), w(1), w(0)));
        assert!(!need_event(w(5), w(3), w(0)));
        assert!(need_event(w(65535), w(2), w(65534)));
        assert!(!need_event(w(3), w(3), w(2)));
    }
}
