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
//! With offloads ([`GuestConfig::offloads`], negotiated when the device offers them: CSUM,
//! GUEST_CSUM, HOST_TSO4, GUEST_TSO4) the frame source/sink carries the 12-byte header itself
//! in front of every frame (a TAP opened with `IFF_VNET_HDR`, see [`SimGuest::vnet_hdr`] and
//! [`SimGuest::tap_offload_flags`]): TX reads `[header][frame]` from the TAP straight into the
//! TX slot in guest memory (TSO super-frames up to 64 KiB with partial checksums), and RX writes
//! `[header of the first buffer][frame]` to the TAP, straight from guest memory when the
//! frame's buffers are adjacent (GSO super-frames, `NEEDS_CSUM` / `DATA_VALID`). The TAP
//! ignores `num_buffers`.
//!
//! [`SimGuest::into_driver`] gives the same driver without threads, as a [`Driver`] that the
//! caller's event loop steps (`pump_tx`, `reclaim_tx`, `service_rx`): `hostnet-lab attach
//! --threads one` runs it and the device core on one thread.
//!
//! Both threads block in `epoll` with a bounded timeout (no busy loops) and stop within about
//! 100 ms of [`Running::stop`]. Nothing the device returns can make the driver panic: bad used
//! entries (unknown id, bad length) are counted in [`GuestStats`] and skipped.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;

use anyhow::{Context, bail, ensure};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile,
    VolatileMemoryError, WriteVolatile,
};
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
    /// `VIRTIO_NET_F_CSUM`: the device takes frames with a partial checksum (`NEEDS_CSUM`).
    pub const CSUM: u64 = 1 << 0;
    /// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes frames with a partial checksum.
    pub const GUEST_CSUM: u64 = 1 << 1;
    /// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCPv4 GSO super-frames (needs GUEST_CSUM).
    pub const GUEST_TSO4: u64 = 1 << 7;
    /// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCPv4 GSO super-frames (needs CSUM).
    pub const HOST_TSO4: u64 = 1 << 11;
    /// Everything the simulated guest asks for.
    pub const WANTED: u64 = VERSION_1 | MAC | MTU | STATUS | MRG_RXBUF | EVENT_IDX;
    /// The offloads the guest asks for on top of [`WANTED`] with
    /// [`GuestConfig::offloads`](super::GuestConfig::offloads).
    pub const OFFLOADS: u64 = CSUM | GUEST_CSUM | GUEST_TSO4 | HOST_TSO4;

    /// The names of the offload bits set in `features` (`"CSUM GUEST_CSUM …"`, `"none"`).
    #[must_use]
    pub fn offload_names(features: u64) -> String {
        let names: Vec<&str> = [
            (CSUM, "CSUM"),
            (GUEST_CSUM, "GUEST_CSUM"),
            (HOST_TSO4, "HOST_TSO4"),
            (GUEST_TSO4, "GUEST_TSO4"),
        ]
        .iter()
        .filter(|(bit, _)| features & bit != 0)
        .map(|(_, name)| *name)
        .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(" ")
        }
    }
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

    /// Reads one whole frame straight into guest memory at `addr`, at most `max` bytes,
    /// returning its length (a result of `max` or more means the frame may have been cut: the
    /// caller drops it). Used with offloads. The default is one `read(2)` on [`FrameIo::fd`]
    /// (right for a TAP and for a datagram socket).
    ///
    /// # Errors
    /// As [`FrameIo::recv_frame`]; `[addr, addr + max)` outside guest memory.
    fn recv_frame_into(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        max: usize,
    ) -> io::Result<usize> {
        let mut slice = mem.get_slice(addr, max).map_err(io::Error::other)?;
        self.fd().read_volatile(&mut slice).map_err(volatile_io)
    }

    /// Writes `len` bytes of guest memory at `addr` as one whole frame. Used with offloads.
    /// The default is one `write(2)` on [`FrameIo::fd`].
    ///
    /// # Errors
    /// As [`FrameIo::send_frame`]; `[addr, addr + len)` outside guest memory.
    fn send_frame_from(
        &self,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> io::Result<usize> {
        let slice = mem.get_slice(addr, len).map_err(io::Error::other)?;
        self.fd().write_volatile(&slice).map_err(volatile_io)
    }
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
    /// Size of each RX buffer when `MRG_RXBUF` and `GUEST_TSO4` are both negotiated (64 KiB
    /// super-frames then take a few buffers, not 33 of [`Self::rx_buffer_size`]). 64 bytes
    /// to 64 KiB + 90.
    pub rx_gso_buffer_size: u32,
    /// Put the TX header in its own descriptor, chained to the frame (exercises the device's
    /// ANY_LAYOUT handling); otherwise header and frame share one descriptor.
    pub split_tx_header: bool,
    /// Ask for the checksum and TCPv4 segmentation offloads ([`features::OFFLOADS`]) when the
    /// device offers them. When any is negotiated the [`FrameIo`] carries a 12-byte
    /// virtio-net header in front of every frame ([`SimGuest::vnet_hdr`]).
    pub offloads: bool,
    /// Service the RX ring right in the device's interrupt callback, on the device's thread,
    /// when the RX driver thread is not busy (as a guest's interrupt handler runs on the CPU
    /// the interrupt lands on): one thread wake-up less per received burst. The RX driver
    /// thread still handles whatever the callback could not.
    pub inline_rx_interrupt: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            mem_size: 64 << 20,
            queue_size: 256,
            rx_buffer_size: 2048,
            rx_gso_buffer_size: 16 << 10,
            split_tx_header: true,
            offloads: true,
            inline_rx_interrupt: true,
        }
    }
}

/// Interrupt lines from the device to the driver: one [`EventFd`] per queue. Hand
/// [`Interrupts::signal`] to the device as its interrupt callback.
pub struct Interrupts {
    rx: EventFd,
    tx: EventFd,
    count: AtomicU64,
    /// Services the RX ring on the signalling thread (see [`GuestConfig::inline_rx_interrupt`]).
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
    /// Allocates guest memory and negotiates `features::WANTED & device_features`, plus the
    /// offered [`features::OFFLOADS`] with [`GuestConfig::offloads`] (a TSO bit only with its
    /// checksum bit).
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
        for (what, size) in [
            ("rx buffer size", cfg.rx_buffer_size),
            ("rx gso buffer size", cfg.rx_gso_buffer_size),
        ] {
            ensure!(
                (64..=MAX_FRAME_BUF).contains(&size),
                "{what} {size} is outside 64..={MAX_FRAME_BUF}"
            );
        }
        let features = negotiate(device_features, cfg.offloads);
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
            inline_rx: OnceLock::new(),
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

    /// Whether the [`FrameIo`] given to [`SimGuest::start`] must carry a 12-byte
    /// `virtio_net_hdr_v1` in front of every frame: true when an offload was negotiated (open
    /// the TAP with `vnet_hdr(true)` and [`SimGuest::tap_offload_flags`]).
    #[must_use]
    pub fn vnet_hdr(&self) -> bool {
        self.features & features::OFFLOADS != 0
    }

    /// The `TUN_F_*` offloads the TAP may hand to this guest (`TUNSETOFFLOAD`): `TUN_F_CSUM`
    /// with CSUM, `TUN_F_TSO4` with HOST_TSO4; 0 without offloads.
    #[must_use]
    pub fn tap_offload_flags(&self) -> u32 {
        let mut flags = 0;
        if self.features & features::CSUM != 0 {
            flags |= utun::linux::TUN_F_CSUM;
            if self.features & features::HOST_TSO4 != 0 {
                flags |= utun::linux::TUN_F_TSO4;
            }
        }
        flags
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
        let mut rx = self.rx_driver(&io, &kick, &stats)?;
        rx.fill()?;
        // Interrupts for the first buffers.
        rx.ring.arm_interrupt(&rx.mem)?;
        let rx = Arc::new(Mutex::new(rx));
        let rx_waiter = Waiter::new(&self.irq, RX_QUEUE, &stop)?;
        if self.cfg.inline_rx_interrupt {
            // Weak: the driver (and the kick it holds) goes away with the RX thread, even
            // though the device keeps the interrupt lines.
            let driver = Arc::downgrade(&rx);
            let stopping = Arc::clone(&stopping);
            let handler: InlineIrq = Box::new(move || {
                if stopping.load(Ordering::Relaxed) {
                    return false;
                }
                let Some(driver) = driver.upgrade() else {
                    return false;
                };
                let mut d = match driver.try_lock() {
                    Ok(d) => d,
                    Err(std::sync::TryLockError::Poisoned(_)) => return false,
                    Err(std::sync::TryLockError::WouldBlock) => return false,
                };
                match d.service() {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!("inline rx interrupt: {e:#}");
                        false
                    }
                }
            });
            let _ = self.irq.inline_rx.set(handler);
        }
        let tx = self.tx_driver(
            io,
            kick,
            Waiter::new(&self.irq, TX_QUEUE, &stop)?,
            &stats,
            &stopping,
        )?;
        let rx_stopping = Arc::clone(&stopping);
        let rx_thread = std::thread::Builder::new()
            .name("guest-rx".into())
            .spawn(move || RxDriver::run(&rx, &rx_waiter, &rx_stopping))
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
    /// Takes over the driver for an event loop the caller runs on one thread (see
    /// [`Driver`]): no driver threads, no interrupts (the caller services the RX ring after
    /// each device call) and no kicks (the caller runs the device after [`Driver::pump_tx`]
    /// and [`Driver::service_rx`]). The RX ring is filled.
    ///
    /// # Errors
    /// The RX ring can't be filled.
    pub fn into_driver<F: FrameIo + 'static>(self, io: Arc<F>) -> anyhow::Result<Driver<F>> {
        let stats = Arc::new(GuestStats::default());
        let kick: Kick = Arc::new(|_| {});
        let mut rx = self.rx_driver(&io, &kick, &stats)?;
        rx.fill()?;
        let stop = EventFd::new(EFD_NONBLOCK).context("creating stop eventfd")?;
        let waiter = Waiter::new(&self.irq, TX_QUEUE, &stop)?;
        let tx = self.tx_driver(io, kick, waiter, &stats, &Arc::new(AtomicBool::new(false)))?;
        // Completions are reclaimed by polling.
        tx.ring.disarm_interrupt(&tx.mem)?;
        let slots = tx.slots();
        Ok(Driver {
            tx,
            slots,
            rx,
            stats,
        })
    }

    fn rx_driver<F: FrameIo>(
        &self,
        io: &Arc<F>,
        kick: &Kick,
        stats: &Arc<GuestStats>,
    ) -> anyhow::Result<RxDriver<F>> {
        let size = self.cfg.queue_size;
        Ok(RxDriver {
            ring: DriverRing::new(
                RingLayout::of(RX_QUEUE)?,
                size,
                self.features & features::EVENT_IDX != 0,
            ),
            mem: self.mem.clone(),
            buf_size: rx_buffer_size(&self.cfg, self.features),
            mrg: self.features & features::MRG_RXBUF != 0,
            vnet: self.vnet_hdr(),
            io: Arc::clone(io),
            kick: Arc::clone(kick),
            stats: Arc::clone(stats),
            frame: Vec::with_capacity(MAX_FRAME_BUF as usize + 4096),
            pending: Vec::with_capacity(usize::from(size)),
            expected: 0,
            gso: false,
        })
    }

    fn tx_driver<F: FrameIo>(
        &self,
        io: Arc<F>,
        kick: Kick,
        waiter: Waiter,
        stats: &Arc<GuestStats>,
        stopping: &Arc<AtomicBool>,
    ) -> anyhow::Result<TxDriver<F>> {
        Ok(TxDriver {
            ring: DriverRing::new(
                RingLayout::of(TX_QUEUE)?,
                self.cfg.queue_size,
                self.features & features::EVENT_IDX != 0,
            ),
            mem: self.mem.clone(),
            split: self.cfg.split_tx_header,
            vnet: self.vnet_hdr(),
            io,
            kick,
            waiter,
            stats: Arc::clone(stats),
            stopping: Arc::clone(stopping),
        })
    }
}

/// The simulated guest's driver, stepped by the caller's event loop on one thread
/// ([`SimGuest::into_driver`]): TAP frames go onto the TX ring with [`Driver::pump_tx`], the
/// device runs, [`Driver::reclaim_tx`] takes the TX slots back, and [`Driver::service_rx`]
/// writes received frames to the TAP and refills the RX ring.
pub struct Driver<F> {
    tx: TxDriver<F>,
    slots: TxSlots,
    rx: RxDriver<F>,
    stats: Arc<GuestStats>,
}

impl<F> std::fmt::Debug for Driver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("tx_free", &self.slots.free.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: FrameIo> Driver<F> {
    /// Takes back the TX slots the device used, then reads up to a batch of frames from the
    /// TAP onto the TX ring and publishes them. Run the device's TX path when
    /// [`TxPump::posted`] is not 0.
    ///
    /// # Errors
    /// Guest memory errors, or the TAP is gone.
    pub fn pump_tx(&mut self) -> anyhow::Result<TxPump> {
        self.reclaim_tx()?;
        let p = self.tx.pump(&mut self.slots)?;
        if p.posted > 0 {
            self.tx.notify()?;
        }
        if self.slots.free.is_empty() {
            self.stats.tx_ring_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(p)
    }

    /// Takes back the TX slots the device used.
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn reclaim_tx(&mut self) -> anyhow::Result<()> {
        self.tx
            .reclaim(&mut self.slots.free, &mut self.slots.in_flight)
    }

    /// Whether every TX slot is in flight (the device must run before more can be posted).
    #[must_use]
    pub fn tx_ring_full(&self) -> bool {
        self.slots.free.is_empty()
    }

    /// Takes every used RX buffer, writes the finished frames to the TAP and gives the
    /// buffers back.
    ///
    /// # Errors
    /// Guest memory errors, or the TAP is gone.
    pub fn service_rx(&mut self) -> anyhow::Result<()> {
        self.rx.service()
    }

    /// The TAP's descriptor (for the caller's epoll).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tx.io.fd()
    }

    /// The driver's counters.
    #[must_use]
    pub fn stats(&self) -> &GuestStats {
        &self.stats
    }
}

/// Counters of the simulated guest driver (all monotonic).
#[derive(Debug, Default)]
pub struct GuestStats {
    /// Frames posted on the TX queue.
    pub tx_frames: AtomicU64,
    /// Bytes of those frames (without the virtio header).
    pub tx_bytes: AtomicU64,
    /// TX frames with a GSO type (TSO super-frames from the TAP; offloads only).
    pub tx_gso: AtomicU64,
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
    /// RX frames with a GSO type (offloads only).
    pub rx_gso: AtomicU64,
    /// RX frames written to the TAP straight from guest memory (offloads, adjacent buffers).
    pub rx_direct: AtomicU64,
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
            "guest tx {} frames/{} B (gso {}, completed {}, ring full {}), rx {} frames/{} B \
             (gso {}, merged {}, direct {}, tap drops {}), kicks {} (suppressed {}), device \
             errors {}, tap read errors {}",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_gso),
            g(&self.tx_completed),
            g(&self.tx_ring_full),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_gso),
            g(&self.rx_merged),
            g(&self.rx_direct),
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
    /// The TAP carries the virtio-net header (offloads): read it with the frame.
    vnet: bool,
    io: Arc<F>,
    kick: Kick,
    waiter: Waiter,
    stats: Arc<GuestStats>,
    stopping: Arc<AtomicBool>,
}

/// The TX driver's slot bookkeeping.
struct TxSlots {
    free: Vec<u16>,
    in_flight: Vec<bool>,
    /// Staging buffer for a frame read without offloads.
    frame: Vec<u8>,
}

/// What one [`Driver::pump_tx`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPump {
    /// Frames put on the TX ring.
    pub posted: usize,
    /// The TAP had no more frames (a read would block).
    pub drained: bool,
}

impl<F: FrameIo> TxDriver<F> {
    /// The free TX slots (all of them) for a fresh ring.
    fn slots(&self) -> TxSlots {
        let size = self.ring.size;
        let slots = if self.split { size / 2 } else { size };
        TxSlots {
            free: (0..slots).rev().collect(),
            in_flight: vec![false; usize::from(slots)],
            frame: vec![0u8; TX_SLOT_SIZE as usize - NET_HDR_LEN],
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        let mut st = self.slots();
        // TX completions are reclaimed by polling; interrupts only while the ring is full.
        self.ring.disarm_interrupt(&self.mem)?;
        while !self.stopping.load(Ordering::Relaxed) {
            self.reclaim(&mut st.free, &mut st.in_flight)?;
            let p = self.pump(&mut st)?;
            if p.posted > 0 {
                self.notify()?;
            }
            if st.free.is_empty() {
                self.stats.tx_ring_full.fetch_add(1, Ordering::Relaxed);
                self.waiter.watch(self.io.fd(), false)?;
                if !self.ring.arm_interrupt(&self.mem)? {
                    self.waiter.wait()?;
                }
                self.ring.disarm_interrupt(&self.mem)?;
            } else if p.drained {
                self.waiter.watch(self.io.fd(), true)?;
                self.waiter.wait()?;
            }
        }
        Ok(())
    }

    /// Reads up to [`TX_BATCH`] frames from the TAP into free slots and puts them on the
    /// avail ring (not yet published).
    fn pump(&mut self, st: &mut TxSlots) -> anyhow::Result<TxPump> {
        let mut posted = 0;
        let mut drained = false;
        while posted < TX_BATCH {
            let Some(&slot) = st.free.last() else { break };
            let got = if self.vnet {
                let base = self.slot_addr(slot);
                self.io
                    .recv_frame_into(&self.mem, GuestAddress(base), TX_SLOT_SIZE as usize)
            } else {
                self.io.recv_frame(&mut st.frame)
            };
            let n = match got {
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
            let len = if self.vnet {
                if n >= TX_SLOT_SIZE as usize {
                    // Cut by the read: never post part of a frame.
                    self.stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("tap read of {n} bytes filled the tx slot");
                    continue;
                }
                let Some(len) = n.checked_sub(NET_HDR_LEN).filter(|l| *l > 0) else {
                    continue;
                };
                self.take_header(slot)?;
                len
            } else {
                let Some(data) = st.frame.get(..n) else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                let base = self.slot_addr(slot);
                write_tx_frame(&self.mem, base, data)?;
                n
            };
            st.free.pop();
            self.post(slot, len)?;
            if let Some(f) = st.in_flight.get_mut(usize::from(slot)) {
                *f = true;
            }
            posted += 1;
            self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
            self.stats.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(TxPump { posted, drained })
    }

    fn slot_addr(&self, slot: u16) -> u64 {
        self.ring.l.buffers + u64::from(slot) * TX_SLOT_SIZE
    }

    /// With offloads the TAP wrote the header into `slot`: counts a GSO frame and zeroes
    /// `num_buffers` (the TAP leaves those two bytes as they were; the driver sends 0).
    fn take_header(&mut self, slot: u16) -> anyhow::Result<()> {
        let base = self.slot_addr(slot);
        let gso_type: u8 = self
            .mem
            .read_obj(GuestAddress(base + HDR_GSO_TYPE))
            .context("reading tx header")?;
        if gso_type != 0 {
            self.stats.tx_gso.fetch_add(1, Ordering::Relaxed);
        }
        self.mem
            .write_obj(0u16, GuestAddress(base + HDR_NUM_BUFFERS))
            .context("writing tx num_buffers")
    }

    /// Puts the descriptor(s) of `slot` (header + `len` bytes of frame) on the avail ring.
    fn post(&mut self, slot: u16, len: usize) -> anyhow::Result<()> {
        let base = self.slot_addr(slot);
        let len = u32::try_from(len).context("frame too long")?;
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
    /// The TAP takes the virtio-net header (offloads): keep it in front of the frame.
    vnet: bool,
    io: Arc<F>,
    kick: Kick,
    stats: Arc<GuestStats>,
    /// The frame being gathered (when the TAP can't take it straight from guest memory).
    frame: Vec<u8>,
    /// The buffers `(id, used length)` of the frame being assembled.
    pending: Vec<(u16, u32)>,
    /// How many buffers that frame has (`num_buffers`).
    expected: usize,
    /// Whether that frame is a GSO super-frame.
    gso: bool,
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

    /// The RX driver thread: services the ring on every interrupt (unless the interrupt
    /// was serviced inline, see [`Interrupts::signal`]).
    fn run(driver: &Mutex<Self>, waiter: &Waiter, stopping: &AtomicBool) -> anyhow::Result<()> {
        while !stopping.load(Ordering::Relaxed) {
            lock(driver).service()?;
            waiter.wait()?;
        }
        Ok(())
    }

    /// Takes every used buffer, writes the finished frames to the TAP, gives the buffers
    /// back (kicking the device when it asks) and re-arms the interrupt; returns once the
    /// ring is empty with the interrupt armed.
    fn service(&mut self) -> anyhow::Result<()> {
        loop {
            let mut recycled = 0usize;
            while let Some((id, len)) = self.ring.next_used(&self.mem)? {
                let Some(id) = u16::try_from(id).ok().filter(|i| *i < self.ring.size) else {
                    self.stats.device_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(id, "device returned an unknown rx head");
                    continue;
                };
                if self.pending.iter().any(|(p, _)| *p == id) || len > self.buf_size {
                    self.device_error(id, "bad rx used entry")?;
                    recycled += 1;
                    continue;
                }
                if self.pending.is_empty() {
                    if (len as usize) < NET_HDR_LEN {
                        self.device_error(id, "short rx header")?;
                        recycled += 1;
                        continue;
                    }
                    let mut hdr = [0u8; NET_HDR_LEN];
                    self.mem
                        .read_slice(&mut hdr, GuestAddress(self.buf_addr(id)))
                        .context("reading rx header")?;
                    let [_, gso_type, .., lo, hi] = hdr;
                    self.expected = if self.mrg {
                        usize::from(u16::from_le_bytes([lo, hi]))
                    } else {
                        1
                    };
                    if self.expected == 0 || self.expected > usize::from(self.ring.size) {
                        self.device_error(id, "bad num_buffers")?;
                        recycled += 1;
                        continue;
                    }
                    self.gso = gso_type != 0;
                }
                self.pending.push((id, len));
                if self.pending.len() == self.expected {
                    let mut frame = std::mem::take(&mut self.frame);
                    let done = self.deliver(&self.pending, &mut frame, self.gso);
                    self.frame = frame;
                    done?;
                    for k in 0..self.pending.len() {
                        let (id, _) = self.pending[k];
                        self.ring.push_avail(&self.mem, id)?;
                        recycled += 1;
                    }
                    self.pending.clear();
                }
                if recycled >= RX_REFILL_BATCH {
                    self.notify()?;
                    recycled = 0;
                }
            }
            if recycled > 0 {
                self.notify()?;
            }
            if !self.ring.arm_interrupt(&self.mem)? {
                return Ok(());
            }
        }
    }

    /// Writes the frame in `pending`'s buffers to the TAP: straight from guest memory when
    /// the TAP takes the header and the buffers are adjacent and full, else gathered in
    /// `frame` first.
    fn deliver(
        &self,
        pending: &[(u16, u32)],
        frame: &mut Vec<u8>,
        gso: bool,
    ) -> anyhow::Result<()> {
        let total: usize = pending.iter().map(|(_, len)| *len as usize).sum();
        let direct = self.vnet && self.adjacent(pending);
        let sent = match pending.first() {
            Some(&(first, _)) if direct => {
                self.io
                    .send_frame_from(&self.mem, GuestAddress(self.buf_addr(first)), total)
            }
            _ => {
                frame.clear();
                for (i, &(id, len)) in pending.iter().enumerate() {
                    let skip = if i == 0 && !self.vnet { NET_HDR_LEN } else { 0 };
                    let take = (len as usize).saturating_sub(skip);
                    let start = frame.len();
                    frame.resize(start + take, 0);
                    if let Some(dst) = frame.get_mut(start..) {
                        self.mem
                            .read_slice(dst, GuestAddress(self.buf_addr(id) + skip as u64))
                            .context("reading rx buffer")?;
                    }
                }
                self.io.send_frame(frame)
            }
        };
        let bytes = total.saturating_sub(NET_HDR_LEN);
        match sent {
            Ok(_) => {
                let count = |c: &AtomicU64, on: bool| {
                    if on {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                };
                count(&self.stats.rx_frames, true);
                count(&self.stats.rx_merged, pending.len() > 1);
                count(&self.stats.rx_gso, gso);
                count(&self.stats.rx_direct, direct);
                self.stats
                    .rx_bytes
                    .fetch_add(bytes as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.rx_tap_drops.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("tap write of {bytes} bytes: {e}");
            }
        }
        Ok(())
    }

    /// Whether the buffers follow each other in guest memory with all but the last full, so
    /// that `[header][frame]` is one contiguous range.
    fn adjacent(&self, pending: &[(u16, u32)]) -> bool {
        pending
            .windows(2)
            .all(|w| matches!(w, [(a, len), (b, _)] if *len == self.buf_size && u32::from(*a) + 1 == u32::from(*b)))
    }

    /// Drops the frame being assembled and gives its buffers (and `id`) back to the device.
    fn device_error(&mut self, id: u16, what: &str) -> anyhow::Result<()> {
        self.stats.device_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(id, "{what}");
        for k in 0..self.pending.len() {
            let (p, _) = self.pending[k];
            self.ring.push_avail(&self.mem, p)?;
        }
        self.pending.clear();
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

/// Without offloads: a zeroed header and the frame into the TX slot at `base`.
fn write_tx_frame(mem: &GuestMemoryMmap, base: u64, data: &[u8]) -> anyhow::Result<()> {
    let hdr = [0u8; NET_HDR_LEN];
    mem.write_slice(&hdr, GuestAddress(base))
        .context("writing tx header")?;
    mem.write_slice(data, GuestAddress(base + NET_HDR_LEN as u64))
        .context("writing tx frame")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `vring_need_event`: whether moving the index from `old` to `new` passed `event`.
fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    (new - event - Wrapping(1)) < (new - old)
}

/// The negotiated features for `device` features: [`features::WANTED`], plus with `offloads`
/// the offered [`features::OFFLOADS`] (a TSO bit only with its checksum bit, virtio 1.x
/// 5.1.3.1).
fn negotiate(device: u64, offloads: bool) -> u64 {
    let mut f = features::WANTED & device;
    if offloads {
        let mut o = features::OFFLOADS & device;
        if o & features::CSUM == 0 {
            o &= !features::HOST_TSO4;
        }
        if o & features::GUEST_CSUM == 0 {
            o &= !features::GUEST_TSO4;
        }
        f |= o;
    }
    f
}

/// Size of each RX buffer: a whole frame without MRG_RXBUF, else the configured size (the
/// GSO one when super-frames come).
fn rx_buffer_size(cfg: &GuestConfig, features: u64) -> u32 {
    if features & features::MRG_RXBUF == 0 {
        MAX_FRAME_BUF
    } else if features & features::GUEST_TSO4 != 0 {
        cfg.rx_gso_buffer_size
    } else {
        cfg.rx_buffer_size
    }
}

/// Converts a failed volatile read/write into the OS error it carries.
fn volatile_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

/// Memory end of the layout for `cfg` and `features`.
fn layout_end(cfg: &GuestConfig, features: u64) -> u64 {
    let rx_buf = u64::from(rx_buffer_size(cfg, features));
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
/// Offset of `gso_type` in `virtio_net_hdr_v1`.
const HDR_GSO_TYPE: u64 = 1;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const HDR_NUM_BUFFERS: u64 = 10;
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
    /// RX with its header (flags, GSO fields) passed through (MRG_RXBUF when negotiated),
    /// raising interrupts as virtio-queue says. Panics if a TX header's `num_buffers` is not 0.
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
                    assert_eq!(buf[10..12], [0, 0], "tx num_buffers");
                    if echo_into_rx(&mem, &mut rxq, &buf, mrg) {
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

    /// Writes `tx` (the TX header, then the frame) into RX buffers, setting `num_buffers`.
    fn echo_into_rx(mem: &GuestMemoryMmap, rxq: &mut Queue, tx: &[u8], mrg: bool) -> bool {
        let mut data: Vec<u8> = Vec::new();
        let mut chains = Vec::new();
        let total = tx.len();
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
        data.extend_from_slice(tx);
        data[10..12].copy_from_slice(&n.to_le_bytes());
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

    /// A started guest bound to one end of a datagram pair, an echo device on its queues.
    struct Echo {
        running: Running,
        peer: UnixDatagram,
        device: std::thread::JoinHandle<u64>,
    }

    fn start_echo(guest: SimGuest) -> Echo {
        let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
        let rxq = guest.device_queue(RX_QUEUE).unwrap();
        let txq = guest.device_queue(TX_QUEUE).unwrap();
        assert_eq!(
            rxq.event_idx_enabled(),
            guest.acked_features() & features::EVENT_IDX != 0
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
        Echo {
            running,
            peer,
            device,
        }
    }

    fn round_trip(device_features: u64, split: bool) {
        let cfg = GuestConfig {
            split_tx_header: split,
            offloads: false,
            ..GuestConfig::default()
        };
        let guest = SimGuest::new(cfg, device_features).unwrap();
        assert_eq!(guest.acked_features(), device_features & features::WANTED);
        assert!(!guest.vnet_hdr());
        let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
        let Echo {
            running,
            peer,
            device,
        } = start_echo(guest);

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
        round_trip(features::WANTED | features::OFFLOADS, true);
    }

    /// A TSO-style header (NEEDS_CSUM, TCPV4) with the frame after it.
    fn gso_frame(len: usize, seed: u8) -> Vec<u8> {
        let mut f = vec![0u8; NET_HDR_LEN];
        f[0] = 1; // NEEDS_CSUM
        f[1] = 1; // GSO_TCPV4
        f[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
        f[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
        f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
        f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
        f[10..12].copy_from_slice(&0xabcdu16.to_le_bytes()); // junk the driver must clear
        f.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
        f
    }

    fn gso_round_trip(split: bool) {
        let cfg = GuestConfig {
            split_tx_header: split,
            ..GuestConfig::default()
        };
        let guest = SimGuest::new(cfg, features::WANTED | features::OFFLOADS).unwrap();
        assert!(guest.vnet_hdr());
        let Echo {
            running,
            peer,
            device,
        } = start_echo(guest);
        let mut got = vec![0u8; 70_000];
        let mut sent = 0;
        // 40 rounds of 11 buffers: the ring of 256 wraps, so some frames are gathered.
        for round in 0..40u8 {
            for len in [60_000usize, 60, 1514, 65_535 + 14] {
                let mut f = gso_frame(len, round);
                if len < 1000 {
                    f[..NET_HDR_LEN].fill(0);
                }
                peer.send(&f).unwrap();
                sent += 1;
                let n = peer.recv(&mut got).unwrap();
                assert_eq!(n, f.len(), "len {len} round {round}");
                // The header comes back as sent but for num_buffers (the device's).
                assert_eq!(&got[..10], &f[..10], "header, len {len}");
                assert_eq!(&got[NET_HDR_LEN..n], &f[NET_HDR_LEN..], "frame, len {len}");
                let bufs = u16::from_le_bytes([got[10], got[11]]);
                assert_eq!(usize::from(bufs), f.len().div_ceil(16 << 10), "len {len}");
            }
        }
        let stats = running.stats();
        let settle = Instant::now();
        while stats.rx_frames.load(Ordering::Relaxed) < sent
            && settle.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(g(&stats.tx_frames), sent);
        assert_eq!(g(&stats.rx_frames), sent);
        assert_eq!(g(&stats.tx_gso), 120);
        assert_eq!(g(&stats.rx_gso), 120);
        assert_eq!(g(&stats.rx_merged), 80);
        // Buffers are handed out in ring order, so most frames go out without a copy; the
        // ones across the ring's end are gathered.
        let direct = g(&stats.rx_direct);
        assert!(direct > sent / 2 && direct < sent, "{}", stats.summary());
        assert_eq!(g(&stats.tx_bytes), 40 * (60_000 + 60 + 1514 + 65_535 + 14));
        assert_eq!(g(&stats.device_errors), 0);
        assert_eq!(g(&stats.tap_read_errors), 0);
        running.stop().unwrap();
        assert_eq!(device.join().unwrap(), sent);
    }

    #[test]
    fn gso_frames_round_trip_with_their_headers() {
        gso_round_trip(true);
    }

    #[test]
    fn gso_frames_round_trip_with_one_descriptor_per_tx_frame() {
        gso_round_trip(false);
    }

    #[test]
    fn offloads_are_negotiated_only_when_offered_and_wanted() {
        let all = features::WANTED | features::OFFLOADS;
        let g = SimGuest::new(GuestConfig::default(), all).unwrap();
        assert_eq!(g.acked_features(), all);
        assert!(g.vnet_hdr());
        assert_eq!(
            g.tap_offload_flags(),
            utun::linux::TUN_F_CSUM | utun::linux::TUN_F_TSO4
        );
        assert_eq!(
            features::offload_names(g.acked_features()),
            "CSUM GUEST_CSUM HOST_TSO4 GUEST_TSO4"
        );
        assert_eq!(rx_buffer_size(&GuestConfig::default(), all), 16 << 10);

        let off = GuestConfig {
            offloads: false,
            ..GuestConfig::default()
        };
        let g = SimGuest::new(off, all).unwrap();
        assert_eq!(g.acked_features(), features::WANTED);
        assert!(!g.vnet_hdr());
        assert_eq!(g.tap_offload_flags(), 0);
        assert_eq!(features::offload_names(g.acked_features()), "none");

        let g = SimGuest::new(GuestConfig::default(), features::WANTED).unwrap();
        assert_eq!(g.acked_features(), features::WANTED);
        assert!(!g.vnet_hdr());
        assert_eq!(
            rx_buffer_size(&GuestConfig::default(), features::WANTED),
            2048
        );

        // A TSO bit without its checksum bit is not taken.
        let partial = features::WANTED | features::HOST_TSO4 | features::GUEST_CSUM;
        let g = SimGuest::new(GuestConfig::default(), partial).unwrap();
        assert_eq!(g.acked_features(), features::WANTED | features::GUEST_CSUM);
        assert!(g.vnet_hdr());
        assert_eq!(g.tap_offload_flags(), 0);
        let g = SimGuest::new(
            GuestConfig::default(),
            features::WANTED | features::GUEST_TSO4 | features::CSUM,
        )
        .unwrap();
        assert_eq!(g.acked_features(), features::WANTED | features::CSUM);
        assert_eq!(g.tap_offload_flags(), utun::linux::TUN_F_CSUM);
    }

    #[test]
    fn gso_buffer_size_is_validated_and_fits_the_layout() {
        let bad = GuestConfig {
            rx_gso_buffer_size: MAX_FRAME_BUF + 1,
            ..GuestConfig::default()
        };
        assert!(SimGuest::new(bad, features::WANTED | features::OFFLOADS).is_err());
        let big = GuestConfig {
            rx_gso_buffer_size: MAX_FRAME_BUF,
            ..GuestConfig::default()
        };
        let all = features::WANTED | features::OFFLOADS;
        assert!(layout_end(&big, all) <= big.mem_size as u64);
        assert!(SimGuest::new(big, all).is_ok());
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

    /// Hand-written used entries: four bad ones (counted, skipped), a good one-buffer frame,
    /// a two-buffer frame in non-adjacent buffers (gathered) and one in adjacent full buffers
    /// (written straight from guest memory with offloads).
    fn hostile_used_entries(device_features: u64) {
        let guest = SimGuest::new(GuestConfig::default(), device_features).unwrap();
        let vnet = guest.vnet_hdr();
        let size = rx_buffer_size(&GuestConfig::default(), guest.acked_features());
        let mem = guest.memory().clone();
        let irq = guest.interrupts();
        let (tap, peer) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let running = guest.start(Arc::new(tap), Arc::new(|_| {})).unwrap();
        let used = RingLayout::of(RX_QUEUE).unwrap().used;
        let buf = |i: u64| GuestAddress(RX_BUF_BASE + i * u64::from(size));
        let put = |slot: u64, id: u32, len: u32| {
            mem.write_obj(id, used.unchecked_add(4 + 8 * slot)).unwrap();
            mem.write_obj(len, used.unchecked_add(8 + 8 * slot))
                .unwrap();
        };
        // What the TAP must see for a frame whose header says `bufs` buffers.
        let expect = |bufs: u8, data: &[u8]| -> Vec<u8> {
            let mut v = Vec::new();
            if vnet {
                v.extend_from_slice(&[0; 10]);
                v.extend_from_slice(&[bufs, 0]);
            }
            v.extend_from_slice(data);
            v
        };
        // Buffer 3: a header claiming 0 buffers. Buffer 2: a good 60-byte frame.
        let mut hdr = [0u8; NET_HDR_LEN];
        mem.write_slice(&hdr, buf(3)).unwrap();
        hdr[10] = 1;
        mem.write_slice(&hdr, buf(2)).unwrap();
        let frame: Vec<u8> = (0..60u8).collect();
        mem.write_slice(&frame, buf(2).unchecked_add(NET_HDR_LEN as u64))
            .unwrap();
        // Two-buffer frames: buffers 7 then 5 (not adjacent), buffers 8 then 9 (adjacent).
        hdr[10] = 2;
        let full = size as usize - NET_HDR_LEN;
        let mut two = Vec::new();
        for (first, second, tail, seed) in [(7, 5, 100, 1u8), (8, 9, 50, 2)] {
            let data: Vec<u8> = (0..full + tail).map(|i| (i as u8) ^ seed).collect();
            mem.write_slice(&hdr, buf(first)).unwrap();
            mem.write_slice(&data[..full], buf(first).unchecked_add(NET_HDR_LEN as u64))
                .unwrap();
            mem.write_slice(&data[full..], buf(second)).unwrap();
            two.push(expect(2, &data));
        }
        put(0, 999, 10); // unknown id
        put(1, 0, 1_000_000); // longer than the buffer
        put(2, 1, 5); // shorter than the header
        put(3, 3, 72); // num_buffers = 0
        put(4, 2, 72); // good
        put(5, 7, size);
        put(6, 5, 100);
        put(7, 8, size);
        put(8, 9, 50);
        mem.store(9u16, used.unchecked_add(2), Ordering::Release)
            .unwrap();
        irq.signal(RX_QUEUE);
        let mut got = vec![0u8; 70_000];
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &expect(1, &frame)[..]);
        for want in &two {
            let n = peer.recv(&mut got).unwrap();
            assert_eq!(n, want.len());
            assert_eq!(&got[..n], &want[..]);
        }
        let stats = running.stats();
        let t = Instant::now();
        while (stats.device_errors.load(Ordering::Relaxed) < 4
            || stats.rx_frames.load(Ordering::Relaxed) < 3)
            && t.elapsed() < Duration::from_secs(1)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(stats.device_errors.load(Ordering::Relaxed), 4);
        assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 3);
        assert_eq!(stats.rx_merged.load(Ordering::Relaxed), 2);
        let direct = if vnet { 2 } else { 0 };
        assert_eq!(stats.rx_direct.load(Ordering::Relaxed), direct);
        assert!(!running.has_failed());
        running.stop().unwrap();
    }

    #[test]
    fn hostile_used_entries_are_counted_and_the_driver_keeps_going() {
        hostile_used_entries(features::WANTED);
    }

    #[test]
    fn hostile_used_entries_with_offloads() {
        hostile_used_entries(features::WANTED | features::OFFLOADS);
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
