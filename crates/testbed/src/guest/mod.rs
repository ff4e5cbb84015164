//! A simulated virtio-net guest: the DRIVER side of the split virtqueues, written here
//! independently of `bridge`, over real guest memory (`vm-memory` `GuestMemoryMmap`).
//!
//! [`SimGuest::new`] allocates guest memory, lays out two split queues (RX = 0, TX = 1) and
//! negotiates features against what the device offers ([`features`]).
//! [`SimGuest::device_queue`] builds the device-side [`Queue`]s (addresses, size, ready,
//! EVENT_IDX) to hand to the device. The driver has two steps, bound to a frame source/sink
//! ([`FrameIo`], in practice a TAP device inside the guest namespace):
//!
//! - TX ([`Driver::pump_tx`]): read Ethernet frames from the TAP, prepend a zeroed 12-byte
//!   `virtio_net_hdr_v1`, post them on queue 1 (header and frame in two chained descriptors by
//!   default), kick the device (honouring `VIRTIO_RING_F_EVENT_IDX` / `VRING_USED_F_NO_NOTIFY`),
//!   reclaim used buffers.
//! - RX ([`Driver::service_rx`]): keep queue 0 filled with device-writable buffers, collect
//!   used buffers, reassemble `MRG_RXBUF` frames from `num_buffers`, strip the header and
//!   write the frame to the TAP.
//!
//! Two ways to drive them, one implementation: [`SimGuest::into_driver`] hands the [`Driver`]
//! to the caller's event loop (`hostnet-lab attach --threads one` runs it and the device core
//! on one thread); [`SimGuest::start`] runs each step on its own thread, woken by the device's
//! interrupts (an `EventFd` per queue, see [`Interrupts`]) or the TAP. Both threads block in
//! `epoll` with a bounded timeout (no busy loops) and stop within about 100 ms of
//! [`Running::stop`].
//!
//! With offloads ([`GuestConfig::offloads`], negotiated when the device offers them: CSUM,
//! GUEST_CSUM, HOST_TSO4, GUEST_TSO4, HOST_TSO6, GUEST_TSO6) the frame source/sink carries the
//! 12-byte header itself in front of every frame (a TAP opened with `IFF_VNET_HDR`, see
//! [`SimGuest::vnet_hdr`] and [`SimGuest::tap_offload_flags`]): TX reads `[header][frame]` from the
//! TAP straight into the TX slot in guest memory (TSO super-frames up to 64 KiB with partial
//! checksums), and RX writes `[header of the first buffer][frame]` to the TAP, straight from guest
//! memory when the frame's buffers are adjacent (GSO super-frames, `NEEDS_CSUM` / `DATA_VALID`).
//! The TAP ignores `num_buffers`.
//!
//! Nothing the device returns can make the driver panic: bad used entries (unknown id, bad
//! length) are counted in [`GuestStats`] and skipped.
//!
//! With several queue pairs ([`GuestConfig::queue_pairs`], `VIRTIO_NET_F_MQ` and
//! `VIRTIO_NET_F_CTRL_VQ` negotiated) pair `i` works queues `2i` (RX) and `2i + 1` (TX)
//! ([`SimGuest::into_pair_drivers`]), and the control queue at `2 ×` the pairs
//! ([`SimGuest::control_queue_index`]) carries the driver's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`
//! ([`SimGuest::control_driver`], [`ControlDriver`]): the device uses one pair until the
//! driver sets more.
//!
//! Files: `features` (bits, negotiation), `ring` (memory layout, the driver's side of a split
//! ring), `tx` and `rx` (the two steps), `ctrl` (the control queue), `threads` (the threaded
//! mode).

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, ensure};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile, VolatileMemoryError,
    WriteVolatile,
};

pub use ctrl::ControlDriver;
pub use ring::{CONTROL_QUEUE_SIZE, MAX_QUEUE_PAIRS};
use ring::{MAX_FRAME_BUF, MAX_QUEUE_SIZE, RingLayout, layout_end};
use rx::RxDriver;
pub use threads::{Interrupts, Running};
use tx::TxDriver;
pub use tx::TxPump;

mod ctrl;
pub mod features;
mod gro;
mod gso;
mod ring;
mod rx;
mod threads;
mod tx;

/// Index of the receive queue.
pub const RX_QUEUE: u16 = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: u16 = 1;
/// Length of `virtio_net_hdr_v1` (VERSION_1 always uses it).
pub const NET_HDR_LEN: usize = 12;

/// `virtio_net_hdr_v1` flag and GSO type values the RX and TX paths read and write (one
/// place for `gro`, `gso` and `rx`).
mod net_hdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
    pub(super) const F_NEEDS_CSUM: u8 = 1;
    /// `VIRTIO_NET_HDR_F_DATA_VALID`.
    pub(super) const F_DATA_VALID: u8 = 2;
    /// `VIRTIO_NET_HDR_GSO_NONE`.
    pub(super) const GSO_NONE: u8 = 0;
    /// `VIRTIO_NET_HDR_GSO_TCPV4`.
    pub(super) const GSO_TCPV4: u8 = 1;
    /// `VIRTIO_NET_HDR_GSO_TCPV6`.
    pub(super) const GSO_TCPV6: u8 = 4;
}
/// Smallest guest memory accepted.
pub const MIN_MEM_SIZE: usize = 1 << 20;

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
    /// Size of each RX buffer when `MRG_RXBUF` and `GUEST_TSO4` or `GUEST_TSO6` are negotiated
    /// (64 KiB super-frames then take a few buffers, not 33 of [`Self::rx_buffer_size`]). 64
    /// bytes to 64 KiB + 90.
    pub rx_gso_buffer_size: u32,
    /// Queue pairs (1 to [`MAX_QUEUE_PAIRS`]): more than one asks for `VIRTIO_NET_F_MQ` and
    /// `VIRTIO_NET_F_CTRL_VQ` when the device offers them, and lays out a pair of queues and
    /// their buffers per pair ([`SimGuest::into_pair_drivers`]).
    pub queue_pairs: u16,
    /// Put the TX header in its own descriptor, chained to the frame (exercises the device's
    /// ANY_LAYOUT handling); otherwise header and frame share one descriptor.
    pub split_tx_header: bool,
    /// Ask for the checksum and TCPv4/TCPv6 segmentation offloads ([`features::OFFLOADS`]) when the
    /// device offers them. When any is negotiated the [`FrameIo`] carries a 12-byte
    /// virtio-net header in front of every frame ([`SimGuest::vnet_hdr`]).
    pub offloads: bool,
    /// Service the RX ring right in the device's interrupt callback, on the device's thread,
    /// when the RX driver thread is not busy (as a guest's interrupt handler runs on the CPU
    /// the interrupt lands on): one thread wake-up less per received burst. The RX driver
    /// thread still handles whatever the callback could not.
    pub inline_rx_interrupt: bool,
    /// With a virtio-net header on the TAP ([`SimGuest::vnet_hdr`]), take every TX offload
    /// from it (partial checksums, TCPv4 and TCPv6 super-frames: one TAP read per
    /// super-frame) and complete the checksums and cut the super-frames the device did not
    /// negotiate in the driver, as a guest's stack does in software for a device without
    /// CSUM or HOST_TSO (the `gso` module). Otherwise the TAP hands over only what the
    /// device takes, and the guest namespace's kernel segments the rest before the TAP.
    pub soft_offloads: bool,
}

impl Default for GuestConfig {
    fn default() -> Self {
        Self {
            mem_size: 64 << 20,
            queue_size: 256,
            rx_buffer_size: 2048,
            rx_gso_buffer_size: 16 << 10,
            queue_pairs: 1,
            split_tx_header: true,
            offloads: true,
            inline_rx_interrupt: true,
            soft_offloads: true,
        }
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
    /// Whether [`SimGuest::control_driver`] handed out the control queue's driver.
    control_taken: AtomicBool,
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
        Self::with_memory(cfg, device_features, None)
    }

    /// As [`SimGuest::new`], with the guest memory in `file` (sized here to
    /// [`GuestConfig::mem_size`] and mapped shared): memory another process can map, as a
    /// vhost-user backend does (a file on a tmpfs such as `/dev/shm`, or a memfd).
    ///
    /// # Errors
    /// As [`SimGuest::new`]; the file can't be sized.
    pub fn new_in_file(
        cfg: GuestConfig,
        device_features: u64,
        file: std::fs::File,
    ) -> anyhow::Result<Self> {
        file.set_len(cfg.mem_size as u64)
            .context("sizing the guest memory file")?;
        Self::with_memory(cfg, device_features, Some(file))
    }

    fn with_memory(
        cfg: GuestConfig,
        device_features: u64,
        file: Option<std::fs::File>,
    ) -> anyhow::Result<Self> {
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
        ensure!(
            (1..=MAX_QUEUE_PAIRS).contains(&cfg.queue_pairs),
            "{} queue pairs is outside 1..={MAX_QUEUE_PAIRS}",
            cfg.queue_pairs
        );
        let features = features::negotiate(device_features, cfg.offloads, cfg.queue_pairs);
        let needed = layout_end(&cfg, features);
        ensure!(
            cfg.mem_size as u64 >= needed && cfg.mem_size >= MIN_MEM_SIZE,
            "guest memory {} bytes is too small (need {needed})",
            cfg.mem_size
        );
        let file = file.map(|f| vm_memory::FileOffset::new(f, 0));
        let mem = GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), cfg.mem_size, file)])
            .context("mapping guest memory")?;
        let pairs = if features & features::MQ != 0 {
            cfg.queue_pairs
        } else {
            1
        };
        let irq = Arc::new(Interrupts::new(pairs)?);
        Ok(Self {
            mem,
            features,
            cfg,
            irq,
            control_taken: AtomicBool::new(false),
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

    /// The `TUN_F_*` offloads the TAP may hand to this guest (`TUNSETOFFLOAD`): all three
    /// with a virtio-net header and [`GuestConfig::soft_offloads`]; otherwise `TUN_F_CSUM`
    /// with CSUM, `TUN_F_TSO4` with HOST_TSO4, `TUN_F_TSO6` with HOST_TSO6; 0 without
    /// offloads.
    #[must_use]
    pub fn tap_offload_flags(&self) -> u32 {
        if self.vnet_hdr() && self.cfg.soft_offloads {
            return utun::linux::TUN_F_CSUM | utun::linux::TUN_F_TSO4 | utun::linux::TUN_F_TSO6;
        }
        let mut flags = 0;
        if self.features & features::CSUM != 0 {
            flags |= utun::linux::TUN_F_CSUM;
            if self.features & features::HOST_TSO4 != 0 {
                flags |= utun::linux::TUN_F_TSO4;
            }
            if self.features & features::HOST_TSO6 != 0 {
                flags |= utun::linux::TUN_F_TSO6;
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

    /// Builds the device-side queue `index` (queue pair `index / 2`'s RX for an even index,
    /// its TX for an odd one, or the control queue at
    /// [`SimGuest::control_queue_index`], [`CONTROL_QUEUE_SIZE`] entries): addresses, size,
    /// EVENT_IDX per the negotiated features, ready.
    ///
    /// # Errors
    /// Unknown queue index, or virtio-queue refuses the layout.
    pub fn device_queue(&self, index: u16) -> anyhow::Result<Queue> {
        let (l, size) = if self.control_queue_index() == Some(index) {
            (RingLayout::control(), CONTROL_QUEUE_SIZE)
        } else {
            (RingLayout::of(index)?, self.cfg.queue_size)
        };
        let mut q = Queue::new(size).context("creating device queue")?;
        q.try_set_size(size).context("setting queue size")?;
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

    /// Starts the TX and RX driver threads on `io`, notifying the device through `kick`:
    /// the [`Driver`] of [`SimGuest::into_driver`], each half stepped by its own thread that
    /// blocks in `epoll` between steps (see [`Running`]).
    ///
    /// # Errors
    /// The epoll/eventfd set-up fails, or the RX ring can't be filled.
    pub fn start<F: FrameIo + 'static>(self, io: Arc<F>, kick: Kick) -> anyhow::Result<Running> {
        threads::start(self, vec![io], kick)
    }

    /// As [`SimGuest::start`] for every queue pair: pair `i` reads and writes `ios[i]` (a
    /// multi-queue TAP's queue `i`), works queues `2i` and `2i + 1` with two threads of its
    /// own, woken by those queues' interrupt lines, and notifies the device through `kick`
    /// with the queue's index. The device must use as many pairs: tell it with
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` ([`SimGuest::control_driver`], taken before this).
    ///
    /// # Errors
    /// `ios` is not one per [`SimGuest::queue_pairs`]; as [`SimGuest::start`].
    pub fn start_pairs<F: FrameIo + 'static>(
        self,
        ios: Vec<Arc<F>>,
        kick: Kick,
    ) -> anyhow::Result<Running> {
        ensure!(
            ios.len() == usize::from(self.queue_pairs()),
            "{} frame I/Os for {} queue pairs",
            ios.len(),
            self.queue_pairs()
        );
        threads::start(self, ios, kick)
    }

    /// Takes over the driver for an event loop the caller runs on one thread (see
    /// [`Driver`]): no driver threads, no interrupts (the caller services the RX ring after
    /// each device call) and no kicks (the caller runs the device after [`Driver::pump_tx`]
    /// and [`Driver::service_rx`]). The RX ring is filled.
    ///
    /// # Errors
    /// The RX ring can't be filled.
    pub fn into_driver<F: FrameIo + 'static>(self, io: Arc<F>) -> anyhow::Result<Driver<F>> {
        self.driver(io, Arc::new(|_| {}))
    }

    /// The driver both modes run: a filled RX ring, an empty TX ring, shared counters.
    fn driver<F: FrameIo>(&self, io: Arc<F>, kick: Kick) -> anyhow::Result<Driver<F>> {
        self.pair_driver(0, io, kick)
    }

    /// Queue pair `pair`'s driver: its RX ring filled, its TX ring empty, counters of its own.
    fn pair_driver<F: FrameIo>(
        &self,
        pair: u16,
        io: Arc<F>,
        kick: Kick,
    ) -> anyhow::Result<Driver<F>> {
        let stats = Arc::new(GuestStats::default());
        let rx = RxDriver::new(self, pair, Arc::clone(&io), Arc::clone(&kick), &stats)?;
        let tx = TxDriver::new(self, pair, io, kick, &stats)?;
        Ok(Driver { tx, rx, stats })
    }

    /// The queue pairs laid out ([`GuestConfig::queue_pairs`]); more than one only with
    /// `VIRTIO_NET_F_MQ` negotiated ([`features::MQ`]).
    #[must_use]
    pub fn queue_pairs(&self) -> u16 {
        if self.features & features::MQ != 0 {
            self.cfg.queue_pairs
        } else {
            1
        }
    }

    /// The control queue's index (virtio 1.x 5.1.6.5: `2 × max_virtqueue_pairs`, here
    /// `2 ×` [`SimGuest::queue_pairs`]) when `VIRTIO_NET_F_CTRL_VQ` was negotiated
    /// ([`features::CTRL_VQ`]), else `None`.
    #[must_use]
    pub fn control_queue_index(&self) -> Option<u16> {
        (self.features & features::CTRL_VQ != 0).then(|| 2 * self.queue_pairs())
    }

    /// The driver of the control queue ([`SimGuest::control_queue_index`]; the device side is
    /// [`SimGuest::device_queue`] of that index). It holds its own handle on the guest memory,
    /// so it outlives [`SimGuest::into_pair_drivers`]. One per guest.
    ///
    /// # Errors
    /// `VIRTIO_NET_F_CTRL_VQ` was not negotiated; the driver was already taken.
    pub fn control_driver(&self) -> anyhow::Result<ControlDriver> {
        let index = self
            .control_queue_index()
            .context("VIRTIO_NET_F_CTRL_VQ was not negotiated: no control queue")?;
        ensure!(
            !self.control_taken.swap(true, Ordering::Relaxed),
            "the control queue's driver was already taken"
        );
        ControlDriver::new(self.mem.clone(), index, self.features)
    }

    /// As [`SimGuest::into_driver`] for every queue pair: pair `i` reads and writes `ios[i]`
    /// (a multi-queue TAP's queue `i`) and works queues `2i` (RX) and `2i + 1` (TX), built
    /// with [`SimGuest::device_queue`]. The device must use as many pairs: the driver tells
    /// it with `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` on the control queue
    /// ([`SimGuest::control_driver`], [`ControlDriver::post_queue_pairs`]; the device starts
    /// with one pair).
    ///
    /// # Errors
    /// `ios` is not one per [`SimGuest::queue_pairs`]; an RX ring can't be filled.
    pub fn into_pair_drivers<F: FrameIo + 'static>(
        self,
        ios: Vec<Arc<F>>,
    ) -> anyhow::Result<Vec<Driver<F>>> {
        ensure!(
            ios.len() == usize::from(self.queue_pairs()),
            "{} frame I/Os for {} queue pairs",
            ios.len(),
            self.queue_pairs()
        );
        (0u16..)
            .zip(ios)
            .map(|(pair, io)| self.pair_driver(pair, io, Arc::new(|_| {})))
            .collect()
    }
}

/// The simulated guest's driver, stepped by the caller's event loop on one thread
/// ([`SimGuest::into_driver`]): TAP frames go onto the TX ring with [`Driver::pump_tx`], the
/// device runs, [`Driver::reclaim_tx`] takes the TX slots back, and [`Driver::service_rx`]
/// writes received frames to the TAP and refills the RX ring. [`SimGuest::start`]'s threads
/// run the same two steps.
pub struct Driver<F> {
    tx: TxDriver<F>,
    rx: RxDriver<F>,
    stats: Arc<GuestStats>,
}

impl<F> std::fmt::Debug for Driver<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<F: FrameIo> Driver<F> {
    /// The TX step: takes back the TX slots the device used, then reads up to a batch of
    /// frames from the TAP onto the TX ring and publishes them. Run the device's TX path
    /// when [`TxPump::posted`] is not 0.
    ///
    /// # Errors
    /// Guest memory errors, or the TAP is gone.
    pub fn pump_tx(&mut self) -> anyhow::Result<TxPump> {
        self.tx.pump()
    }

    /// Takes back the TX slots the device used.
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn reclaim_tx(&mut self) -> anyhow::Result<()> {
        self.tx.reclaim()
    }

    /// Whether every TX slot is in flight (the device must run before more can be posted).
    #[must_use]
    pub fn tx_ring_full(&self) -> bool {
        self.tx.ring_full()
    }

    /// The RX step: takes every used RX buffer, writes the finished frames to the TAP and
    /// gives the buffers back.
    ///
    /// # Errors
    /// Guest memory errors, or the TAP is gone.
    pub fn service_rx(&mut self) -> anyhow::Result<()> {
        self.rx.service()
    }

    /// The TAP's descriptor (for the caller's epoll).
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.tx.fd()
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
    /// TCP super-frames from the TAP the driver cut into segments itself (the device took
    /// no TSO for them, [`GuestConfig::soft_offloads`]); their segments count as TX frames.
    pub tx_segmented: AtomicU64,
    /// TX frames whose partial checksum the driver completed itself (the device took no
    /// CSUM; segments of a cut super-frame not counted).
    pub tx_checksummed: AtomicU64,
    /// TX buffers the device returned.
    pub tx_completed: AtomicU64,
    /// TX steps that ended with every slot in flight (the device had to run first).
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
    /// RX frames the device marked `DATA_VALID` (checksum checked, none written: passt does
    /// so with GUEST_CSUM) that the driver handed to the TAP as `NEEDS_CSUM` instead (the TAP
    /// honours only that flag; see the `rx` module).
    pub rx_data_valid: AtomicU64,
    /// RX frames written to the TAP as part of an earlier one: TCP segments of one flow
    /// coalesced into a GSO frame (the `gro` module, as a guest's GRO does).
    pub rx_coalesced: AtomicU64,
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
            "guest tx {} frames/{} B (gso {}, segmented {}, checksummed {}, completed {}, ring \
             full {}), rx {} frames/{} B \
             (gso {}, merged {}, direct {}, data_valid {}, coalesced {}, tap drops {}), kicks {} \
             (suppressed \
             {}), device errors {}, tap read errors {}",
            g(&self.tx_frames),
            g(&self.tx_bytes),
            g(&self.tx_gso),
            g(&self.tx_segmented),
            g(&self.tx_checksummed),
            g(&self.tx_completed),
            g(&self.tx_ring_full),
            g(&self.rx_frames),
            g(&self.rx_bytes),
            g(&self.rx_gso),
            g(&self.rx_merged),
            g(&self.rx_direct),
            g(&self.rx_data_valid),
            g(&self.rx_coalesced),
            g(&self.rx_tap_drops),
            g(&self.kicks),
            g(&self.kicks_suppressed),
            g(&self.device_errors),
            g(&self.tap_read_errors),
        )
    }
}

/// Converts a failed volatile read/write into the OS error it carries.
fn volatile_io(e: VolatileMemoryError) -> io::Error {
    match e {
        VolatileMemoryError::IOError(e) => e,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests;
