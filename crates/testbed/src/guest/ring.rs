//! Where the queues and buffers sit in guest memory ([`RingLayout`], the layout consts) and
//! the driver's side of one split ring ([`DriverRing`]: descriptors, avail, used, the
//! notification and interrupt suppression of virtio 1.x 2.7.7 and 2.7.10).

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use anyhow::{Context, bail};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{GuestConfig, GuestStats, Kick, RX_QUEUE, features};

/// Addresses of one split queue in guest memory.
#[derive(Clone, Copy, Debug)]
pub(super) struct RingLayout {
    pub(super) desc: GuestAddress,
    pub(super) avail: GuestAddress,
    pub(super) used: GuestAddress,
    /// First byte of this queue's buffer area.
    pub(super) buffers: u64,
}

impl RingLayout {
    /// The layout of queue `index`: queue pair `index / 2`'s RX ([`RX_QUEUE`] for pair 0) or
    /// TX ([`super::TX_QUEUE`]) queue, each pair in a [`PAIR_SPAN`] of its own.
    pub(super) fn of(index: u16) -> anyhow::Result<Self> {
        let pair = index / 2;
        if pair >= MAX_QUEUE_PAIRS {
            bail!("no queue {index} (at most {MAX_QUEUE_PAIRS} queue pairs)");
        }
        let from = u64::from(pair) * PAIR_SPAN;
        let rx = index % 2 == RX_QUEUE;
        let base = from + if rx { RX_RING_BASE } else { TX_RING_BASE };
        Ok(Self {
            desc: GuestAddress(base),
            avail: GuestAddress(base + 0x1000),
            used: GuestAddress(base + 0x2000),
            buffers: from + if rx { RX_BUF_BASE } else { TX_BUF_BASE },
        })
    }

    /// The layout of the control queue (virtio 1.x 5.1.6.5, [`CONTROL_QUEUE_SIZE`] entries):
    /// in pair 0's span, between its TX ring and its TX buffers; `buffers` is where its
    /// command buffers start ([`CTRL_BUF_SIZE`] bytes).
    pub(super) const fn control() -> Self {
        Self {
            desc: GuestAddress(CTRL_RING_BASE),
            avail: GuestAddress(CTRL_RING_BASE + 0x1000),
            used: GuestAddress(CTRL_RING_BASE + 0x2000),
            buffers: CTRL_BUF_BASE,
        }
    }
}

/// The driver's view of one split ring.
#[derive(Debug)]
pub(super) struct DriverRing {
    /// The queue index (a pair's RX or TX queue, or the control queue), given to the kick.
    index: u16,
    pub(super) l: RingLayout,
    pub(super) size: u16,
    event_idx: bool,
    /// Next free slot in the avail ring (not yet published).
    next_avail: Wrapping<u16>,
    /// The avail index last published to the device.
    published: Wrapping<u16>,
    /// The next used-ring entry to consume.
    last_used: Wrapping<u16>,
}

impl DriverRing {
    /// The ring of queue `index`, `size` entries, with EVENT_IDX as negotiated in `features`.
    pub(super) fn new(index: u16, size: u16, features: u64) -> anyhow::Result<Self> {
        Ok(Self::with_layout(
            index,
            RingLayout::of(index)?,
            size,
            features,
        ))
    }

    /// The ring of queue `index` at `l` (the control queue does not sit at
    /// [`RingLayout::of`] its index).
    pub(super) fn with_layout(index: u16, l: RingLayout, size: u16, features: u64) -> Self {
        Self {
            index,
            l,
            size,
            event_idx: features & features::EVENT_IDX != 0,
            next_avail: Wrapping(0),
            published: Wrapping(0),
            last_used: Wrapping(0),
        }
    }

    pub(super) fn write_desc(
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

    /// Puts `head` in the next avail slot (published later by [`Self::notify`]).
    pub(super) fn push_avail(&mut self, mem: &GuestMemoryMmap, head: u16) -> anyhow::Result<()> {
        let slot = u64::from(self.next_avail.0 % self.size);
        mem.write_obj(head.to_le(), self.l.avail.unchecked_add(4 + 2 * slot))
            .context("writing avail ring")?;
        self.next_avail += 1;
        Ok(())
    }

    /// Publishes the pushed heads and kicks the device when it asks for a notification
    /// (counting kicks and suppressed kicks in `stats`).
    pub(super) fn notify(
        &mut self,
        mem: &GuestMemoryMmap,
        kick: &Kick,
        stats: &GuestStats,
    ) -> anyhow::Result<()> {
        if self.publish(mem)? {
            stats.kicks.fetch_add(1, Ordering::Relaxed);
            kick(self.index);
        } else {
            stats.kicks_suppressed.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Publishes pushed heads; returns whether the device wants a notification.
    pub(super) fn publish(&mut self, mem: &GuestMemoryMmap) -> anyhow::Result<bool> {
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
    pub(super) fn next_used(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> anyhow::Result<Option<(u32, u32)>> {
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
    pub(super) fn arm_interrupt(&self, mem: &GuestMemoryMmap) -> anyhow::Result<bool> {
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
    pub(super) fn disarm_interrupt(&self, mem: &GuestMemoryMmap) -> anyhow::Result<()> {
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

/// `vring_need_event`: whether moving the index from `old` to `new` passed `event`.
pub(super) fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    (new - event - Wrapping(1)) < (new - old)
}

/// Size of each RX buffer: a whole frame without MRG_RXBUF, else the configured size (the
/// GSO one when super-frames come).
pub(super) fn rx_buffer_size(cfg: &GuestConfig, features: u64) -> u32 {
    if features & features::MRG_RXBUF == 0 {
        MAX_FRAME_BUF
    } else if features & (features::GUEST_TSO4 | features::GUEST_TSO6) != 0 {
        cfg.rx_gso_buffer_size
    } else {
        cfg.rx_buffer_size
    }
}

/// Memory end of the layout for `cfg` and `features` (the last queue pair's buffers).
pub(super) fn layout_end(cfg: &GuestConfig, features: u64) -> u64 {
    let rx_buf = u64::from(rx_buffer_size(cfg, features));
    let rx_end = RX_BUF_BASE + u64::from(cfg.queue_size) * rx_buf;
    let tx_end = TX_BUF_BASE + u64::from(cfg.queue_size) * TX_SLOT_SIZE;
    let pairs = if features & features::MQ != 0 {
        cfg.queue_pairs.max(1)
    } else {
        1
    };
    let last = u64::from(pairs - 1) * PAIR_SPAN;
    last + rx_end.max(tx_end).max(TX_BUF_BASE)
}

/// Largest queue size the guest lays out room for.
pub(super) const MAX_QUEUE_SIZE: u16 = 256;
/// Bytes per RX buffer without MRG_RXBUF, and the biggest frame plus header we handle.
pub(super) const MAX_FRAME_BUF: u32 = 65_562 + 64;
/// Bytes per TX slot (header + the largest frame).
pub(super) const TX_SLOT_SIZE: u64 = 0x1_0100;
const RX_RING_BASE: u64 = 0x0;
const TX_RING_BASE: u64 = 0x4000;
/// TX buffers first (fixed size), RX buffers after them.
const TX_BUF_BASE: u64 = 0x1_0000;
/// First byte of the RX buffers.
pub(super) const RX_BUF_BASE: u64 = TX_BUF_BASE + MAX_QUEUE_SIZE as u64 * TX_SLOT_SIZE;
/// Most queue pairs the guest lays out room for.
pub const MAX_QUEUE_PAIRS: u16 = 4;
/// Guest memory per queue pair: its rings, its TX slots and the largest RX buffers (32 MiB + ).
pub(super) const PAIR_SPAN: u64 =
    (RX_BUF_BASE + MAX_QUEUE_SIZE as u64 * MAX_FRAME_BUF as u64).next_multiple_of(1 << 20);
pub(super) const VRING_DESC_F_NEXT: u16 = 1;
pub(super) const VRING_DESC_F_WRITE: u16 = 2;
/// Entries of the control queue (as QEMU's).
pub const CONTROL_QUEUE_SIZE: u16 = 64;
/// The control queue's descriptor table; its avail ring 4 KiB on, its used ring 8 KiB on.
const CTRL_RING_BASE: u64 = 0x8000;
/// The control queue's command buffers (in pair 0's span, before its TX buffers).
const CTRL_BUF_BASE: u64 = 0xC000;
/// Bytes of the control queue's command buffers.
pub(super) const CTRL_BUF_SIZE: u64 = 0x1000;
// The rings fit their 4 KiB pages (a used ring is the largest of the three) and the control
// queue fits between pair 0's TX ring and its TX buffers.
const _: () = {
    assert!(16 * MAX_QUEUE_SIZE as u64 <= 0x1000);
    assert!(6 + 8 * MAX_QUEUE_SIZE as u64 <= 0x1000);
    assert!(RX_RING_BASE + 0x3000 <= TX_RING_BASE);
    assert!(TX_RING_BASE + 0x3000 <= CTRL_RING_BASE);
    assert!(16 * CONTROL_QUEUE_SIZE as u64 <= 0x1000);
    assert!(CTRL_RING_BASE + 0x2000 + 6 + 8 * CONTROL_QUEUE_SIZE as u64 <= CTRL_BUF_BASE);
    assert!(CTRL_BUF_BASE + CTRL_BUF_SIZE <= TX_BUF_BASE);
};
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn need_event_matches_the_spec_formula() {
        let w = Wrapping;
        assert!(need_event(w(0), w(1), w(0)));
        assert!(!need_event(w(5), w(3), w(0)));
        assert!(need_event(w(65535), w(2), w(65534)));
        assert!(!need_event(w(3), w(3), w(2)));
    }
}
