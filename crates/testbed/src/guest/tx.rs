//! The TX half of the driver: frames from the [`FrameIo`] into TX slots in guest memory, onto
//! queue 1, a kick when the device asks for one, and the slots back once the device used them.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::gso::{self, DeviceOffloads, Split, Work};
use super::ring::{DriverRing, TX_SLOT_SIZE, VRING_DESC_F_NEXT};
use super::{FrameIo, GuestStats, Kick, NET_HDR_LEN, SimGuest, TX_QUEUE, features};

/// What one [`Driver::pump_tx`](super::Driver::pump_tx) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxPump {
    /// Frames put on the TX ring.
    pub posted: usize,
    /// The TAP had no more frames (a read would block).
    pub drained: bool,
}

/// The TX driver: its ring, its slots, the frame source and the device's doorbell.
pub(super) struct TxDriver<F> {
    ring: DriverRing,
    mem: GuestMemoryMmap,
    /// Header and frame in two chained descriptors (a slot takes two descriptors).
    split: bool,
    /// The TAP carries the virtio-net header (offloads): read it with the frame.
    vnet: bool,
    io: Arc<F>,
    kick: Kick,
    stats: Arc<GuestStats>,
    /// Slots not on the ring, the last one taken first.
    free: Vec<u16>,
    /// Whether each slot is on the ring (the device may return it).
    in_flight: Vec<bool>,
    /// Staging buffer for a frame read without offloads.
    frame: Vec<u8>,
    /// Checksums and segmentation done here for a device that did not negotiate them
    /// ([`GuestConfig::soft_offloads`](super::GuestConfig::soft_offloads)); `None` when the
    /// device takes whatever the TAP hands over.
    soft: Option<Soft>,
}

/// The TX driver's software offloads (the `gso` module): each TAP frame is read into
/// `staged` and goes to the ring as it is, with its checksum completed, or cut into segments.
struct Soft {
    device: DeviceOffloads,
    /// `[virtio-net header][frame]` as the TAP wrote it (its first `len` bytes).
    staged: Vec<u8>,
    len: usize,
    /// The super-frame in `staged` being cut and its next segment: the ring filled up before
    /// its last segment.
    cutting: Option<(Split, usize)>,
    /// One segment, built.
    segment: Vec<u8>,
}

/// What one TX slot got.
enum Fill {
    /// A frame of this many bytes (without the virtio-net header).
    Frame(usize),
    /// Nothing this time (a bad read, counted): try again.
    Skip,
    /// Nothing: the TAP has no more frames.
    Drained,
}

impl<F: FrameIo> TxDriver<F> {
    /// A fresh TX ring for `guest`, every slot free. Completions are reclaimed by polling, so
    /// the ring starts with its interrupt disarmed.
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn new(
        guest: &SimGuest,
        pair: u16,
        io: Arc<F>,
        kick: Kick,
        stats: &Arc<GuestStats>,
    ) -> anyhow::Result<Self> {
        let size = guest.cfg.queue_size;
        let split = guest.cfg.split_tx_header;
        let slots = if split { size / 2 } else { size };
        let device = DeviceOffloads {
            csum: guest.features & features::CSUM != 0,
            tso4: guest.features & features::HOST_TSO4 != 0,
            tso6: guest.features & features::HOST_TSO6 != 0,
        };
        let soft = (guest.vnet_hdr()
            && guest.cfg.soft_offloads
            && !(device.csum && device.tso4 && device.tso6))
            .then(|| Soft {
                device,
                staged: vec![0u8; TX_SLOT_SIZE as usize],
                len: 0,
                cutting: None,
                segment: Vec::with_capacity(TX_SLOT_SIZE as usize),
            });
        let tx = Self {
            ring: DriverRing::new(2 * pair + TX_QUEUE, size, guest.features)?,
            mem: guest.mem.clone(),
            split,
            vnet: guest.vnet_hdr(),
            io,
            kick,
            stats: Arc::clone(stats),
            free: (0..slots).rev().collect(),
            in_flight: vec![false; usize::from(slots)],
            frame: vec![0u8; TX_SLOT_SIZE as usize - NET_HDR_LEN],
            soft,
        };
        tx.ring.disarm_interrupt(&tx.mem)?;
        Ok(tx)
    }

    /// One TX step: takes back the slots the device used, reads up to [`TX_BATCH`] frames
    /// from the TAP into free slots, publishes them (kicking the device when it asks) and
    /// counts a full ring.
    ///
    /// # Errors
    /// Guest memory errors, or the TAP is gone.
    pub(super) fn pump(&mut self) -> anyhow::Result<TxPump> {
        self.reclaim()?;
        let p = self.post_frames()?;
        if p.posted > 0 {
            self.ring.notify(&self.mem, &self.kick, &self.stats)?;
        }
        if self.ring_full() {
            self.stats.tx_ring_full.fetch_add(1, Ordering::Relaxed);
        }
        Ok(p)
    }

    /// Takes back the slots the device used; bad used entries are counted and skipped.
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn reclaim(&mut self) -> anyhow::Result<()> {
        while let Some((id, _len)) = self.ring.next_used(&self.mem)? {
            let slot = if self.split {
                (id % 2 == 0).then_some(id / 2)
            } else {
                Some(id)
            };
            match slot
                .and_then(|s| u16::try_from(s).ok())
                .and_then(|s| self.in_flight.get_mut(usize::from(s)).map(|f| (s, f)))
            {
                Some((s, f)) if *f => {
                    *f = false;
                    self.free.push(s);
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

    /// Whether every slot is in flight (the device must run before more can be posted).
    pub(super) fn ring_full(&self) -> bool {
        self.free.is_empty()
    }

    /// The frame source's descriptor.
    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        self.io.fd()
    }

    /// Asks the device for an interrupt at its next used entry; returns whether entries are
    /// already pending (then step instead of waiting).
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn arm_interrupt(&self) -> anyhow::Result<bool> {
        self.ring.arm_interrupt(&self.mem)
    }

    /// Back to reclaiming by polling (see [`DriverRing::disarm_interrupt`]).
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn disarm_interrupt(&self) -> anyhow::Result<()> {
        self.ring.disarm_interrupt(&self.mem)
    }

    /// Reads up to [`TX_BATCH`] frames from the TAP into free slots and puts them on the
    /// avail ring (not yet published).
    fn post_frames(&mut self) -> anyhow::Result<TxPump> {
        let mut posted = 0;
        let mut drained = false;
        while posted < TX_BATCH {
            let Some(&slot) = self.free.last() else { break };
            let fill = if self.soft.is_some() {
                self.fill_soft(slot)?
            } else {
                self.fill(slot)?
            };
            let len = match fill {
                Fill::Frame(len) => len,
                Fill::Skip => continue,
                Fill::Drained => {
                    drained = true;
                    break;
                }
            };
            self.free.pop();
            self.post(slot, len)?;
            if let Some(f) = self.in_flight.get_mut(usize::from(slot)) {
                *f = true;
            }
            posted += 1;
            self.stats.tx_frames.fetch_add(1, Ordering::Relaxed);
            self.stats.tx_bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(TxPump { posted, drained })
    }

    /// One TAP frame into `slot`: with offloads read straight into it, else staged and
    /// written after a zeroed header.
    fn fill(&mut self, slot: u16) -> anyhow::Result<Fill> {
        let got = if self.vnet {
            let base = self.slot_addr(slot);
            self.io
                .recv_frame_into(&self.mem, GuestAddress(base), TX_SLOT_SIZE as usize)
        } else {
            self.io.recv_frame(&mut self.frame)
        };
        let n = match read_result(&self.stats, got)? {
            Ok(n) => n,
            Err(fill) => return Ok(fill),
        };
        if self.vnet {
            if n >= TX_SLOT_SIZE as usize {
                // Cut by the read: never post part of a frame.
                self.stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("tap read of {n} bytes filled the tx slot");
                return Ok(Fill::Skip);
            }
            let Some(len) = n.checked_sub(NET_HDR_LEN).filter(|l| *l > 0) else {
                return Ok(Fill::Skip);
            };
            self.take_header(slot)?;
            Ok(Fill::Frame(len))
        } else {
            let Some(data) = self.frame.get(..n).filter(|d| !d.is_empty()) else {
                return Ok(Fill::Skip);
            };
            write_tx_frame(&self.mem, self.slot_addr(slot), data)?;
            Ok(Fill::Frame(n))
        }
    }

    /// [`TxDriver::fill`] with software offloads: the next segment of the super-frame being
    /// cut, or the next TAP frame as it is, with its checksum completed, or its first segment.
    fn fill_soft(&mut self, slot: u16) -> anyhow::Result<Fill> {
        let base = self.slot_addr(slot);
        let Some(soft) = self.soft.as_mut() else {
            return Ok(Fill::Skip);
        };
        if soft.cutting.is_none() {
            let got = self.io.recv_frame(&mut soft.staged);
            let n = match read_result(&self.stats, got)? {
                Ok(n) => n,
                Err(fill) => return Ok(fill),
            };
            if n >= soft.staged.len() || n <= NET_HDR_LEN {
                self.stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("tap read of {n} bytes: cut or empty");
                return Ok(Fill::Skip);
            }
            soft.len = n;
            let (hdr, frame) = soft.staged[..n].split_at_mut(NET_HDR_LEN);
            match gso::work(hdr, frame, soft.device) {
                None => {
                    self.stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?hdr, "an offload request the driver cannot carry out");
                    return Ok(Fill::Skip);
                }
                Some(Work::None) => {
                    // num_buffers: the driver sends 0.
                    hdr[10..12].fill(0);
                    if hdr[1] != 0 {
                        self.stats.tx_gso.fetch_add(1, Ordering::Relaxed);
                    }
                    self.mem
                        .write_slice(&soft.staged[..n], GuestAddress(base))
                        .context("writing tx frame")?;
                    return Ok(Fill::Frame(n - NET_HDR_LEN));
                }
                Some(Work::Checksum { start, offset }) => {
                    gso::complete_checksum(frame, start, offset);
                    self.stats.tx_checksummed.fetch_add(1, Ordering::Relaxed);
                    write_tx_frame(&self.mem, base, frame)?;
                    return Ok(Fill::Frame(frame.len()));
                }
                Some(Work::Segment(split)) => {
                    self.stats.tx_segmented.fetch_add(1, Ordering::Relaxed);
                    soft.cutting = Some((split, 0));
                }
            }
        }
        let Soft {
            staged,
            len,
            cutting,
            segment,
            ..
        } = soft;
        let Some((split, next)) = *cutting else {
            return Ok(Fill::Skip);
        };
        *cutting = (next + 1 < split.count).then_some((split, next + 1));
        // [zeroed virtio-net header][the segment's headers][its payload, from the staged frame]
        let frame = &staged[NET_HDR_LEN..*len];
        let payload = &frame[gso::segment_headers(frame, &split, next, segment)];
        write_tx_frame(&self.mem, base, segment)?;
        let at = base + (NET_HDR_LEN + segment.len()) as u64;
        self.mem
            .write_slice(payload, GuestAddress(at))
            .context("writing tx frame")?;
        Ok(Fill::Frame(segment.len() + payload.len()))
    }

    fn slot_addr(&self, slot: u16) -> u64 {
        self.ring.l.buffers + u64::from(slot) * TX_SLOT_SIZE
    }

    /// With offloads the TAP wrote the header into `slot`: counts a GSO frame and zeroes
    /// `num_buffers` (the TAP leaves those two bytes as they were; the driver sends 0).
    fn take_header(&self, slot: u16) -> anyhow::Result<()> {
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
}

/// A TAP read's result: its length, or what the slot gets instead (`WouldBlock`: the TAP is
/// drained; another error: counted in `stats`, and treated as drained).
///
/// # Errors
/// The TAP is gone.
fn read_result(stats: &GuestStats, got: io::Result<usize>) -> anyhow::Result<Result<usize, Fill>> {
    match got {
        Ok(n) => Ok(Ok(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Err(Fill::Drained)),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(Err(Fill::Skip)),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(e).context("the TAP device is gone"),
        Err(e) => {
            stats.tap_read_errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("tap read: {e}");
            Ok(Err(Fill::Drained))
        }
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

/// Frames posted per TX batch before notifying.
const TX_BATCH: usize = 64;
/// Offset of `gso_type` in `virtio_net_hdr_v1`.
const HDR_GSO_TYPE: u64 = 1;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const HDR_NUM_BUFFERS: u64 = 10;
