//! A frontend whose rings the caller writes itself, for what a driver does not do: chains
//! written straight into guest memory, a TX ring kept full as fast as the backend takes it
//! ([`RawRing::keep_full`]), single frames sent and received by hand ([`RawQueuePair`]).
//!
//! The connection negotiates as [`VhostUserDevice::connect`] does;
//! [`VhostUserDevice::activate_raw`] then acknowledges the virtio features the caller names
//! (`VERSION_1` alone: 12-byte headers, an RX buffer per frame, no `EVENT_IDX`, so the device
//! takes every kick and interrupts after every batch), shares a guest memory of the caller's
//! size ([`RawMemory`]) and starts the rings the caller lays out ([`RawRingLayout`], any size
//! the backend takes), each with a call and a kick eventfd of its own. Nothing runs behind the
//! caller's back: no driver threads, the call eventfds are never read, and a ring moves only
//! when the caller writes it and kicks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use vhost::VhostBackend;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::{FRONTEND_VA, VhostUserDevice, memory_region, shared_memory_file};
use crate::guest::{NET_HDR_LEN, RX_QUEUE, TX_QUEUE, features};

/// `VIRTQ_DESC_F_WRITE`: the device writes the descriptor's buffer (an RX buffer).
pub const DESC_F_WRITE: u16 = 2;
/// The largest split ring (virtio 1.x 2.7: a queue size is a power of two up to 32768).
pub const MAX_RAW_RING_SIZE: u16 = 32768;

/// Guest memory for [`VhostUserDevice::activate_raw`]: one region from guest address 0, in a
/// fresh file ([`shared_memory_file`]) mapped shared here and by the backend. Clones share the
/// mapping (a flood thread takes one).
#[derive(Clone, Debug)]
pub struct RawMemory {
    mem: GuestMemoryMmap,
    size: u64,
}

impl RawMemory {
    /// `size` bytes of zeroed guest memory.
    ///
    /// # Errors
    /// The file can't be made or sized, or the memory can't be mapped (a size of 0).
    pub fn new(size: u64) -> anyhow::Result<Self> {
        let file = shared_memory_file()?;
        file.set_len(size).context("sizing the guest memory file")?;
        let len = usize::try_from(size).context("guest memory size")?;
        let mem = GuestMemoryMmap::from_ranges_with_files([(
            GuestAddress(0),
            len,
            Some(FileOffset::new(file, 0)),
        )])
        .with_context(|| format!("mapping {size} bytes of guest memory"))?;
        Ok(Self { mem, size })
    }

    /// The memory's size in bytes.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes `bytes` at guest address `at`.
    ///
    /// # Errors
    /// `[at, at + bytes.len())` is not inside the memory.
    pub fn write(&self, at: u64, bytes: &[u8]) -> anyhow::Result<()> {
        self.mem
            .write_slice(bytes, GuestAddress(at))
            .with_context(|| format!("writing {} bytes of guest memory at {at:#x}", bytes.len()))
    }

    /// Reads `len` bytes at guest address `at`.
    ///
    /// # Errors
    /// `[at, at + len)` is not inside the memory.
    pub fn read(&self, at: u64, len: usize) -> anyhow::Result<Vec<u8>> {
        let mut bytes = vec![0u8; len];
        self.mem
            .read_slice(&mut bytes, GuestAddress(at))
            .with_context(|| format!("reading {len} bytes of guest memory at {at:#x}"))?;
        Ok(bytes)
    }

    /// The mapping, for the memory table.
    fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// The little-endian `u16` at `at`, read with acquire ordering (an index the device wrote).
    fn load_u16(&self, at: u64) -> anyhow::Result<u16> {
        let v: u16 = self
            .mem
            .load(GuestAddress(at), Ordering::Acquire)
            .with_context(|| format!("reading guest memory at {at:#x}"))?;
        Ok(u16::from_le(v))
    }

    /// Stores `v` little-endian at `at` with release ordering, after a release fence: what was
    /// written before (descriptors, ring entries) is visible to the device first.
    fn store_u16(&self, at: u64, v: u16) -> anyhow::Result<()> {
        fence(Ordering::Release);
        self.mem
            .store(v.to_le(), GuestAddress(at), Ordering::Release)
            .with_context(|| format!("writing guest memory at {at:#x}"))
    }
}

/// Where one split ring sits in a [`RawMemory`], and its size (a power of two up to
/// [`MAX_RAW_RING_SIZE`]; hostnetd takes up to 1024).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRingLayout {
    /// The descriptor table (16 bytes per entry).
    pub desc: u64,
    /// The avail ring (flags, index, `size` entries of 2 bytes).
    pub avail: u64,
    /// The used ring (flags, index, `size` entries of 8 bytes).
    pub used: u64,
    /// Entries.
    pub size: u16,
}

impl RawRingLayout {
    /// A ring of `size` entries from `base` on: the descriptor table at `base`, the avail
    /// ring right after it, the used ring at the next 4 KiB boundary after that.
    #[must_use]
    pub const fn at(base: u64, size: u16) -> Self {
        let entries = size as u64;
        let avail = base + 16 * entries;
        let used = (avail + 6 + 2 * entries).next_multiple_of(4096);
        Self {
            desc: base,
            avail,
            used,
            size,
        }
    }

    /// The first byte past the used ring (its `avail_event` included).
    #[must_use]
    pub const fn end(&self) -> u64 {
        self.used + 6 + 8 * self.size as u64
    }

    /// Whether the three parts lie inside the first `memory` bytes and the size is a power
    /// of two up to [`MAX_RAW_RING_SIZE`].
    fn fits(&self, memory: u64) -> bool {
        let n = u64::from(self.size);
        self.size.is_power_of_two()
            && self.size <= MAX_RAW_RING_SIZE
            && self.desc + 16 * n <= memory
            && self.avail + 6 + 2 * n <= memory
            && self.end() <= memory
    }
}

/// One started ring of a raw frontend ([`VhostUserDevice::activate_raw`]): its layout in
/// guest memory, its kick and its call eventfd. Every write goes straight into guest memory;
/// nothing keeps track of what is in flight (a [`RawQueuePair`] does, for frames). Clones
/// share the memory and the eventfds, so one can be moved to a thread.
#[derive(Clone, Debug)]
pub struct RawRing {
    queue: u16,
    layout: RawRingLayout,
    mem: RawMemory,
    kick: Arc<EventFd>,
    call: Arc<EventFd>,
}

impl RawRing {
    /// The queue index (0 is the RX queue of pair 0, 1 its TX queue).
    #[must_use]
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Where the ring sits.
    #[must_use]
    pub fn layout(&self) -> RawRingLayout {
        self.layout
    }

    /// The guest memory the ring is in.
    #[must_use]
    pub fn memory(&self) -> &RawMemory {
        &self.mem
    }

    /// The ring's call eventfd (the device's interrupt; nothing reads it).
    #[must_use]
    pub fn call(&self) -> &EventFd {
        &self.call
    }

    /// Writes descriptor `index`: `len` bytes at `addr`, `flags` (no chaining: `next` 0).
    ///
    /// # Errors
    /// `index` is not below the ring's size; guest memory errors.
    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16) -> anyhow::Result<()> {
        ensure!(
            index < self.layout.size,
            "descriptor {index} of a ring of {}",
            self.layout.size
        );
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        self.mem
            .write(self.layout.desc + u64::from(index) * 16, &d)
            .with_context(|| format!("writing descriptor {index} of queue {}", self.queue))
    }

    /// Writes `frame` behind a zeroed 12-byte virtio-net header at `at` and points descriptor
    /// `index` at the two (device-readable); returns their length.
    ///
    /// # Errors
    /// As [`RawRing::set_desc`]; the header and frame don't fit the memory at `at`.
    pub fn put_frame(&self, index: u16, at: u64, frame: &[u8]) -> anyhow::Result<u32> {
        let mut bytes = vec![0u8; NET_HDR_LEN];
        bytes.extend_from_slice(frame);
        let len = u32::try_from(bytes.len()).context("a frame of 4 GiB")?;
        self.mem.write(at, &bytes)?;
        self.set_desc(index, at, len, 0)?;
        Ok(len)
    }

    /// Points descriptor `index` at `len` device-writable bytes at `at` (an RX buffer).
    ///
    /// # Errors
    /// As [`RawRing::set_desc`].
    pub fn post_buffer(&self, index: u16, at: u64, len: u32) -> anyhow::Result<()> {
        self.set_desc(index, at, len, DESC_F_WRITE)
    }

    /// Writes avail ring entry `slot` (taken modulo the ring's size): it names `head`.
    /// [`RawRing::publish`] makes it available.
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn set_avail(&self, slot: u16, head: u16) -> anyhow::Result<()> {
        let at = self.layout.avail + 4 + 2 * u64::from(slot % self.layout.size);
        self.mem
            .write(at, &head.to_le_bytes())
            .with_context(|| format!("writing avail entry {slot} of queue {}", self.queue))
    }

    /// Every avail ring entry `i` names descriptor `i`: as the device takes chains in order,
    /// publishing `used index + size` then makes the whole ring available again (what
    /// [`RawRing::keep_full`] does).
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn set_avail_in_order(&self) -> anyhow::Result<()> {
        (0..self.layout.size).try_for_each(|i| self.set_avail(i, i))
    }

    /// Publishes avail index `idx` (release-ordered after what was written before).
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn publish(&self, idx: u16) -> anyhow::Result<()> {
        self.mem.store_u16(self.layout.avail + 2, idx)
    }

    /// The used index: how many chains the device returned (wrapping at 2^16).
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn used_idx(&self) -> anyhow::Result<u16> {
        self.mem.load_u16(self.layout.used + 2)
    }

    /// The `n`-th used entry the device wrote (slot `n` modulo the ring's size): the head it
    /// returned and the bytes it wrote.
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn used(&self, n: u16) -> anyhow::Result<(u32, u32)> {
        let at = self.layout.used + 4 + 8 * u64::from(n % self.layout.size);
        let e = self.mem.read(at, 8)?;
        let word = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        Ok((word(0), word(4)))
    }

    /// Kicks the device (an eventfd write).
    ///
    /// # Errors
    /// The eventfd write fails.
    pub fn kick(&self) -> anyhow::Result<()> {
        self.kick
            .write(1)
            .with_context(|| format!("kicking queue {}", self.queue))
    }

    /// Waits until the used index has reached `idx` (counting with wrap-around), looking
    /// every 10 ms; whether it did within `within`.
    ///
    /// # Errors
    /// Guest memory errors.
    pub fn wait_for_used(&self, idx: u16, within: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if self.used_idx()?.wrapping_sub(idx) < 0x8000 {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Keeps the ring full until `stop` or `until`: publishes `used index + size` (the whole
    /// ring) and kicks, then whenever the device took chains (the used index moved) publishes
    /// the whole ring again and kicks, adding what was taken to `taken`. The caller has
    /// written every descriptor and [`RawRing::set_avail_in_order`].
    ///
    /// Polls the used index with 20 µs sleeps, not a spin: a `SCHED_FIFO` thread that never
    /// sleeps is throttled by the kernel (`sched_rt_runtime_us`) for 50 ms a second, and the
    /// ring would run empty then.
    ///
    /// # Errors
    /// Guest memory errors (a failed kick is ignored: the next refill kicks again).
    pub fn keep_full(
        &self,
        stop: &AtomicBool,
        taken: &AtomicU64,
        until: Instant,
    ) -> anyhow::Result<KeptFull> {
        let size = self.layout.size;
        let mut last = self.used_idx()?;
        let mut published = last.wrapping_add(size);
        self.publish(published)?;
        let _ = self.kick.write(1);
        let mut kept = KeptFull::default();
        while !stop.load(Ordering::Relaxed) && Instant::now() < until {
            let used = self.used_idx()?;
            if used == last {
                std::thread::sleep(Duration::from_micros(20));
                continue;
            }
            taken.fetch_add(u64::from(used.wrapping_sub(last)), Ordering::Relaxed);
            last = used;
            kept.refills += 1;
            kept.ran_empty += u64::from(used == published);
            published = used.wrapping_add(size);
            self.publish(published)?;
            let _ = self.kick.write(1);
        }
        Ok(kept)
    }
}

/// What [`RawRing::keep_full`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeptFull {
    /// How many times the ring was made whole again.
    pub refills: u64,
    /// Before how many of those refills the device had taken every chain (the ring ran empty).
    pub ran_empty: u64,
}

impl VhostUserDevice {
    /// Acknowledges `features` (virtio bits the backend offers; `PROTOCOL_FEATURES` is added
    /// when offered, as [`VhostUserDevice::activate`] does), shares `mem` as the memory table's
    /// one region and starts each of `rings`, given as (queue index, layout), in a VMM's order
    /// (`SET_VRING_NUM`/`ADDR`/`BASE` 0/`CALL`/`KICK`, `SET_VRING_ENABLE` with protocol
    /// features). The rings are returned in the order given; no kick is sent. Call once.
    ///
    /// # Errors
    /// The device is already active; a feature is not offered; a queue index repeats; a ring
    /// does not fit `mem` or its size is not a power of two; the backend refuses a step.
    pub fn activate_raw(
        &mut self,
        mem: &RawMemory,
        features: u64,
        rings: &[(u16, RawRingLayout)],
    ) -> anyhow::Result<Vec<RawRing>> {
        ensure!(!self.is_active(), "the device is already active");
        ensure!(!rings.is_empty(), "no ring to start");
        let offered = self.device_features();
        ensure!(
            features & !offered == 0,
            "features {:#x} are not offered (offered {offered:#x})",
            features & !offered
        );
        for (i, &(queue, layout)) in rings.iter().enumerate() {
            ensure!(
                layout.fits(mem.size()),
                "queue {queue}: {layout:?} does not fit {} bytes of memory or its size is \
                 not a power of two up to {MAX_RAW_RING_SIZE}",
                mem.size()
            );
            ensure!(
                rings[..i].iter().all(|&(q, _)| q != queue),
                "queue {queue} given twice"
            );
        }
        self.ack_features(features)?;
        let region = memory_region(mem.memory())?;
        self.frontend
            .set_mem_table(&[region])
            .context("SET_MEM_TABLE")?;
        let mut started = Vec::with_capacity(rings.len());
        for &(queue, layout) in rings {
            let i = usize::from(queue);
            let step = |what: &'static str| format!("{what} for queue {queue}");
            let call = EventFd::new(EFD_NONBLOCK).context("creating a call eventfd")?;
            let kick = EventFd::new(EFD_NONBLOCK).context("creating a kick eventfd")?;
            self.frontend
                .set_vring_num(i, layout.size)
                .with_context(|| step("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &raw_vring_config(layout))
                .with_context(|| step("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .with_context(|| step("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(i, &call)
                .with_context(|| step("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &kick)
                .with_context(|| step("SET_VRING_KICK"))?;
            self.enable_ring(i)?;
            started.push(RawRing {
                queue,
                layout,
                mem: mem.clone(),
                kick: Arc::new(kick),
                call: Arc::new(call),
            });
        }
        self.raw_rings = u16::try_from(started.len()).unwrap_or(u16::MAX);
        Ok(started)
    }

    /// Asks for the backend's features again (`GET_FEATURES`; the bits as
    /// [`VhostUserDevice::device_features`] gives them): an answer says the connection is
    /// still served.
    ///
    /// # Errors
    /// The connection is closed or the backend answers out of protocol.
    pub fn probe(&mut self) -> anyhow::Result<u64> {
        let offered = self.frontend.get_features().context("GET_FEATURES")?;
        Ok(offered & !super::PROTOCOL_FEATURES)
    }
}

/// A raw frontend for whole frames, one at a time: 1 MiB of guest memory, an RX (queue 0) and
/// a TX ring (queue 1) of [`RawQueuePair::RING_SIZE`] entries, `VERSION_1` only (12-byte
/// headers, no offloads, no merged RX buffers), [`RawQueuePair::RX_POSTED`] RX buffers of
/// [`RawQueuePair::BUFFER_LEN`] bytes kept posted. Each frame is one descriptor.
#[derive(Debug)]
pub struct RawQueuePair {
    device: VhostUserDevice,
    rx: RawRing,
    tx: RawRing,
    /// Frames sent: the next TX avail slot (and descriptor, modulo the ring's size).
    tx_next: u16,
    /// RX used entries taken.
    rx_seen: u16,
    /// RX buffers made available.
    rx_avail: u16,
}

impl RawQueuePair {
    /// Entries of each ring.
    pub const RING_SIZE: u16 = 256;
    /// RX buffers posted.
    pub const RX_POSTED: u16 = 64;
    /// Bytes of each RX buffer and TX slot (header and frame).
    pub const BUFFER_LEN: u32 = 2048;

    /// Connects to the backend on `socket` ([`VhostUserDevice::connect`]), starts both rings
    /// with `VERSION_1` ([`VhostUserDevice::activate_raw`]), posts the RX buffers and kicks
    /// the RX ring.
    ///
    /// # Errors
    /// Any step of the connection; guest memory errors.
    pub fn attach(socket: &Path) -> anyhow::Result<Self> {
        let mut device = VhostUserDevice::connect(socket)?;
        let mem = RawMemory::new(PAIR_MEMORY)?;
        let mut rings = device
            .activate_raw(
                &mem,
                features::VERSION_1,
                &[(RX_QUEUE, PAIR_RX_RING), (TX_QUEUE, PAIR_TX_RING)],
            )?
            .into_iter();
        let (Some(rx), Some(tx)) = (rings.next(), rings.next()) else {
            bail!("activate_raw started fewer rings than asked");
        };
        for i in 0..Self::RX_POSTED {
            rx.post_buffer(i, rx_buffer(i), Self::BUFFER_LEN)?;
            rx.set_avail(i, i)?;
        }
        rx.publish(Self::RX_POSTED)?;
        rx.kick()?;
        Ok(Self {
            device,
            rx,
            tx,
            tx_next: 0,
            rx_seen: 0,
            rx_avail: Self::RX_POSTED,
        })
    }

    /// Puts `frame` behind a zeroed virtio-net header on the TX ring and kicks.
    ///
    /// # Errors
    /// The frame does not fit a slot; every slot is in flight (the device took none back);
    /// guest memory errors; the kick fails.
    pub fn send_frame(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let max = Self::BUFFER_LEN as usize - NET_HDR_LEN;
        ensure!(
            frame.len() <= max,
            "a frame of {} bytes (at most {max})",
            frame.len()
        );
        let size = self.tx.layout.size;
        let in_flight = self.tx_next.wrapping_sub(self.tx.used_idx()?);
        ensure!(
            in_flight < size,
            "the TX ring is full ({in_flight} frames in flight)"
        );
        let slot = self.tx_next % size;
        self.tx.put_frame(slot, tx_slot(slot), frame)?;
        self.tx.set_avail(self.tx_next, slot)?;
        self.tx_next = self.tx_next.wrapping_add(1);
        self.tx.publish(self.tx_next)?;
        self.tx.kick()
    }

    /// The next frame the device put in an RX buffer (its virtio-net header stripped), or
    /// `None` when none came within `within`; the buffer goes back on the ring (kicked).
    ///
    /// # Errors
    /// The device returned a buffer that was not posted or a length that does not fit it;
    /// guest memory errors; the kick fails.
    pub fn recv_frame(&mut self, within: Duration) -> anyhow::Result<Option<Vec<u8>>> {
        let next = self.rx_seen.wrapping_add(1);
        if !self.rx.wait_for_used(next, within)? {
            return Ok(None);
        }
        let (id, len) = self.rx.used(self.rx_seen)?;
        self.rx_seen = next;
        let head = u16::try_from(id)
            .ok()
            .filter(|h| *h < Self::RX_POSTED)
            .with_context(|| format!("the device returned RX buffer {id}, which was not posted"))?;
        ensure!(
            len as usize > NET_HDR_LEN && len <= Self::BUFFER_LEN,
            "the device used {len} bytes of RX buffer {id}"
        );
        let mut frame = self.rx.mem.read(rx_buffer(head), len as usize)?;
        self.rx.set_avail(self.rx_avail, head)?;
        self.rx_avail = self.rx_avail.wrapping_add(1);
        self.rx.publish(self.rx_avail)?;
        self.rx.kick()?;
        Ok(Some(frame.split_off(NET_HDR_LEN)))
    }

    /// Kicks both rings (as a driver that posts more work does).
    ///
    /// # Errors
    /// An eventfd write fails.
    pub fn kick_all(&self) -> anyhow::Result<()> {
        self.rx.kick()?;
        self.tx.kick()
    }

    /// The RX ring (queue 0).
    #[must_use]
    pub fn rx(&self) -> &RawRing {
        &self.rx
    }

    /// The TX ring (queue 1).
    #[must_use]
    pub fn tx(&self) -> &RawRing {
        &self.tx
    }

    /// The connection (e.g. [`VhostUserDevice::probe`], [`VhostUserDevice::stop_ring`]).
    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.device
    }
}

/// Queue `layout`'s addresses in the frontend's address space.
fn raw_vring_config(layout: RawRingLayout) -> vhost::VringConfigData {
    vhost::VringConfigData {
        queue_max_size: layout.size,
        queue_size: layout.size,
        flags: 0,
        desc_table_addr: FRONTEND_VA + layout.desc,
        used_ring_addr: FRONTEND_VA + layout.used,
        avail_ring_addr: FRONTEND_VA + layout.avail,
        log_addr: None,
    }
}

/// RX buffer `i` of a [`RawQueuePair`].
fn rx_buffer(i: u16) -> u64 {
    PAIR_RX_BUFFERS + u64::from(i) * u64::from(RawQueuePair::BUFFER_LEN)
}

/// TX slot `i` of a [`RawQueuePair`].
fn tx_slot(i: u16) -> u64 {
    PAIR_TX_SLOTS + u64::from(i) * u64::from(RawQueuePair::BUFFER_LEN)
}

/// A [`RawQueuePair`]'s guest memory: its rings, then its RX buffers, then its TX slots.
const PAIR_MEMORY: u64 = 1 << 20;
const PAIR_RX_RING: RawRingLayout = RawRingLayout::at(0, RawQueuePair::RING_SIZE);
const PAIR_TX_RING: RawRingLayout = RawRingLayout::at(0x4000, RawQueuePair::RING_SIZE);
const PAIR_RX_BUFFERS: u64 = 0x1_0000;
const PAIR_TX_SLOTS: u64 = 0x8_0000;
const _: () = {
    assert!(PAIR_RX_RING.end() <= PAIR_TX_RING.desc);
    assert!(PAIR_TX_RING.end() <= PAIR_RX_BUFFERS);
    assert!(
        PAIR_RX_BUFFERS + RawQueuePair::RX_POSTED as u64 * RawQueuePair::BUFFER_LEN as u64
            <= PAIR_TX_SLOTS
    );
    assert!(
        PAIR_TX_SLOTS + RawQueuePair::RING_SIZE as u64 * RawQueuePair::BUFFER_LEN as u64
            <= PAIR_MEMORY
    );
};

#[cfg(test)]
mod tests {
    use super::{RawMemory, RawRingLayout};

    #[test]
    fn ring_layouts_at_a_base_are_the_usual_pages() {
        let small = RawRingLayout::at(0, 256);
        assert_eq!((small.desc, small.avail, small.used), (0, 0x1000, 0x2000));
        assert_eq!(small.end(), 0x2000 + 6 + 8 * 256);
        let big = RawRingLayout::at(0x4_0000, 1024);
        assert_eq!(
            (big.desc, big.avail, big.used),
            (0x4_0000, 0x4_4000, 0x4_5000)
        );
        assert!(big.fits(1 << 20));
        assert!(!big.fits(0x4_5000));
        assert!(
            !RawRingLayout::at(0, 100).fits(1 << 20),
            "not a power of two"
        );
    }

    #[test]
    fn a_ring_written_by_hand_reads_back_as_a_device_sees_it() {
        let mem = RawMemory::new(1 << 20).expect("memory");
        let ring = super::RawRing {
            queue: 1,
            layout: RawRingLayout::at(0, 4),
            mem: mem.clone(),
            kick: std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(0).expect("an eventfd")),
            call: std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(0).expect("an eventfd")),
        };
        let len = ring.put_frame(3, 0x8000, b"frame").expect("a frame");
        assert_eq!(len, 12 + 5);
        let d = mem.read(3 * 16, 16).expect("descriptor 3");
        assert_eq!(d[0..8], 0x8000u64.to_le_bytes());
        assert_eq!(d[8..12], 17u32.to_le_bytes());
        assert_eq!(d[12..14], [0u8, 0]);
        assert_eq!(mem.read(0x8000 + 12, 5).expect("the frame"), b"frame");
        ring.set_avail_in_order().expect("avail entries");
        ring.set_avail(6, 1).expect("slot 6 is slot 2");
        ring.publish(7).expect("avail index");
        let avail = mem.read(ring.layout().avail, 12).expect("avail ring");
        assert_eq!(avail, [0u8, 0, 7, 0, 0, 0, 1, 0, 1, 0, 3, 0]);
        assert!(ring.set_desc(4, 0, 0, 0).is_err(), "descriptor 4 of 4");
        // The device returned chains: used index 2, entry 1 (slot 1) says head 3, 17 bytes.
        let used = ring.layout().used;
        mem.write(used + 2, &2u16.to_le_bytes())
            .expect("used index");
        mem.write(used + 4 + 8, &[3, 0, 0, 0, 17, 0, 0, 0])
            .expect("used entry");
        assert_eq!(ring.used_idx().expect("used index"), 2);
        assert_eq!(ring.used(5).expect("entry 5 is slot 1"), (3, 17));
        let soon = std::time::Duration::from_millis(1);
        assert!(ring.wait_for_used(2, soon).expect("reached"));
        assert!(ring.wait_for_used(0xFFF0, soon).expect("passed long ago"));
        assert!(!ring.wait_for_used(3, soon).expect("not yet"));
    }
}
