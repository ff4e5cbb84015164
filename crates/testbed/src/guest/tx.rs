//! The TX half of the driver: frames from the [`FrameIo`] into TX slots in guest memory, onto
//! queue 1, a kick when the device asks for one, and the slots back once the device used them.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ring::{DriverRing, TX_SLOT_SIZE, VRING_DESC_F_NEXT};
use super::{FrameIo, GuestStats, Kick, NET_HDR_LEN, SimGuest, TX_QUEUE};

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
            let got = if self.vnet {
                let base = self.slot_addr(slot);
                self.io
                    .recv_frame_into(&self.mem, GuestAddress(base), TX_SLOT_SIZE as usize)
            } else {
                self.io.recv_frame(&mut self.frame)
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
                let Some(data) = self.frame.get(..n) else {
                    continue;
                };
                if data.is_empty() {
                    continue;
                }
                write_tx_frame(&self.mem, self.slot_addr(slot), data)?;
                n
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
