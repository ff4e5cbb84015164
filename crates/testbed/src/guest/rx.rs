//! The RX half of the driver: queue 0 kept full of device-writable buffers, used buffers
//! collected, `MRG_RXBUF` frames reassembled from `num_buffers`, and each frame written to the
//! [`FrameIo`] (straight from guest memory when it can).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::ring::{DriverRing, MAX_FRAME_BUF, VRING_DESC_F_WRITE, rx_buffer_size};
use super::{FrameIo, GuestStats, Kick, NET_HDR_LEN, RX_QUEUE, SimGuest, features};

/// The RX driver: its ring, the frame being reassembled, the frame sink and the doorbell.
pub(super) struct RxDriver<F> {
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
    /// The RX ring for `guest`, filled: every descriptor written once (buffer `i` is
    /// descriptor `i`), all of them available and published (kicking the device if it asks).
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn new(
        guest: &SimGuest,
        io: Arc<F>,
        kick: Kick,
        stats: &Arc<GuestStats>,
    ) -> anyhow::Result<Self> {
        let size = guest.cfg.queue_size;
        let mut rx = Self {
            ring: DriverRing::new(RX_QUEUE, size, guest.features)?,
            mem: guest.mem.clone(),
            buf_size: rx_buffer_size(&guest.cfg, guest.features),
            mrg: guest.features & features::MRG_RXBUF != 0,
            vnet: guest.vnet_hdr(),
            io,
            kick,
            stats: Arc::clone(stats),
            frame: Vec::with_capacity(MAX_FRAME_BUF as usize + 4096),
            pending: Vec::with_capacity(usize::from(size)),
            expected: 0,
            gso: false,
        };
        for i in 0..size {
            let addr = rx.buf_addr(i);
            rx.ring
                .write_desc(&rx.mem, i, addr, rx.buf_size, VRING_DESC_F_WRITE, 0)?;
            rx.ring.push_avail(&rx.mem, i)?;
        }
        rx.ring.notify(&rx.mem, &rx.kick, &rx.stats)?;
        Ok(rx)
    }

    /// Asks the device for an interrupt at its next used entry; returns whether entries are
    /// already pending.
    ///
    /// # Errors
    /// Guest memory errors.
    pub(super) fn arm_interrupt(&self) -> anyhow::Result<bool> {
        self.ring.arm_interrupt(&self.mem)
    }

    /// Takes every used buffer, writes the finished frames to the TAP, gives the buffers
    /// back (kicking the device when it asks) and re-arms the interrupt; returns once the
    /// ring is empty with the interrupt armed.
    pub(super) fn service(&mut self) -> anyhow::Result<()> {
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
                    self.ring.notify(&self.mem, &self.kick, &self.stats)?;
                    recycled = 0;
                }
            }
            if recycled > 0 {
                self.ring.notify(&self.mem, &self.kick, &self.stats)?;
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

    fn buf_addr(&self, i: u16) -> u64 {
        self.ring.l.buffers + u64::from(i) * u64::from(self.buf_size)
    }
}

/// Buffers recycled before the RX driver republishes mid-batch.
const RX_REFILL_BATCH: usize = 32;
