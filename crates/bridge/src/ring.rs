//! Split-ring access for the data paths: available heads, descriptor chains (direct and
//! indirect) and used entries, all through the fast guest-memory copies of [`crate::gmem`].
//!
//! The queue's own state (`next_avail`, `next_used`, ring addresses, EVENT_IDX) stays in the
//! embedder's `virtio_queue::Queue`; notification suppression (`enable_notification` /
//! `disable_notification`) is still the queue's. This module replaces only the per-chain
//! work, which in `virtio-queue` 0.18 goes through vm-memory's general multi-region path for
//! every descriptor and used entry, and publishes the used index once per batch instead of
//! once per chain.

use std::num::Wrapping;
use std::sync::atomic::{Ordering, fence};

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::Error;
use crate::stats::DropCause;

/// One descriptor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Desc {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u32,
    flags: u16,
    next: u16,
}

impl Desc {
    pub(crate) fn is_write_only(&self) -> bool {
        self.flags & F_WRITE != 0
    }
    fn has_next(&self) -> bool {
        self.flags & F_NEXT != 0
    }
    fn is_indirect(&self) -> bool {
        self.flags & F_INDIRECT != 0
    }
}

/// How many chains the driver has made available beyond `next_avail`.
///
/// # Errors
///
/// `InvalidAvailRingIndex` if that is more than the queue size (the device needs a reset),
/// or the ring cannot be read.
pub(crate) fn available<M: GuestMemory, Q: QueueT>(mem: &M, queue: &Q) -> Result<u16, Error> {
    if !queue.ready() {
        return Err(Error::Queue(virtio_queue::Error::QueueNotReady));
    }
    let idx = queue.avail_idx(mem, Ordering::Acquire)?;
    let n = (idx - Wrapping(queue.next_avail())).0;
    if n > queue.size() {
        return Err(Error::Queue(virtio_queue::Error::InvalidAvailRingIndex));
    }
    Ok(n)
}

/// How many chains are available from free-running position `from` on (`from` is at or
/// after the queue's `next_avail`).
///
/// # Errors
///
/// As [`available`].
pub(crate) fn available_from<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    from: u16,
) -> Result<u16, Error> {
    let total = available(mem, queue)?;
    let taken = from.wrapping_sub(queue.next_avail());
    Ok(total.saturating_sub(taken))
}

/// Reads available-ring entries from free-running position `from` into `out` (at most two
/// guest memory reads, split where the ring wraps).
pub(crate) fn avail_heads<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    from: u16,
    out: &mut [u16],
) -> Result<(), Error> {
    let size = queue.size().max(1);
    let mut done = 0usize;
    let mut raw = [0u8; 2 * HEAD_CHUNK];
    while done < out.len() {
        let pos = from.wrapping_add(done as u16) % size;
        let n = (out.len() - done)
            .min(usize::from(size - pos))
            .min(HEAD_CHUNK);
        let addr = GuestAddress(queue.avail_ring()).checked_add_u64(4 + 2 * u64::from(pos))?;
        crate::gmem::read(mem, addr, &mut raw[..2 * n]).map_err(|()| bad_address(addr))?;
        for (o, c) in out[done..done + n].iter_mut().zip(raw.chunks_exact(2)) {
            *o = u16::from_le_bytes([c[0], c[1]]);
        }
        done += n;
    }
    Ok(())
}

/// Used entries collected during one batch and written with at most two guest memory
/// writes (split where the ring wraps) by [`UsedBatch::flush`], which also publishes the used
/// index.
#[derive(Debug, Default)]
pub(crate) struct UsedBatch {
    bytes: Vec<u8>,
}

impl UsedBatch {
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
    }

    pub(crate) fn push(&mut self, head: u16, len: u32) {
        self.bytes.extend_from_slice(&u32::from(head).to_le_bytes());
        self.bytes.extend_from_slice(&len.to_le_bytes());
    }

    pub(crate) fn len(&self) -> u16 {
        (self.bytes.len() / 8) as u16
    }

    /// Writes the entries from the queue's `next_used` on and publishes the new used index.
    /// Returns `(old, new)` used indices.
    pub(crate) fn flush<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
    ) -> Result<(u16, u16), Error> {
        let old = queue.next_used();
        let count = self.len();
        if count == 0 {
            return Ok((old, old));
        }
        let size = queue.size().max(1);
        let mut done = 0u16;
        while done < count {
            let pos = old.wrapping_add(done) % size;
            let n = (count - done).min(size - pos);
            let addr = GuestAddress(queue.used_ring()).checked_add_u64(4 + 8 * u64::from(pos))?;
            let src = &self.bytes[8 * usize::from(done)..8 * usize::from(done + n)];
            crate::gmem::write(mem, addr, src).map_err(|()| bad_address(addr))?;
            done += n;
        }
        let new = old.wrapping_add(count);
        publish_used(mem, queue, new)?;
        self.bytes.clear();
        Ok((old, new))
    }
}

/// Walks chain `head`, calling `f` for each descriptor until it returns `Ok(false)` or the
/// chain ends. Returns the number of descriptors seen.
///
/// A chain holds at most the queue size of buffer descriptors, direct and indirect together
/// (virtio 1.2 2.7.5.3.1: "A driver MUST NOT create a descriptor chain longer than the Queue
/// Size of the device"), so one walk reads at most that many descriptors plus the one that
/// points at an indirect table, however long the table says it is.
///
/// # Errors
///
/// [`DropCause::ChainInvalid`] for a head or `next` outside its table, a chain longer than
/// the queue size (a loop included), a nested or malformed indirect table, or an unreadable
/// table; whatever `f` returns.
pub(crate) fn walk<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    head: u16,
    mut f: impl FnMut(&Desc) -> Result<bool, DropCause>,
) -> Result<usize, DropCause> {
    let mut table = GuestAddress(queue.desc_table());
    let mut size = queue.size();
    let mut idx = head;
    let mut indirect = false;
    let mut seen = 0usize;
    // Buffer descriptors left for the whole chain: never reset by an indirect table.
    let mut budget = queue.size();
    loop {
        if idx >= size {
            return Err(DropCause::ChainInvalid);
        }
        let d = read_desc(mem, table, idx)?;
        if d.is_indirect() {
            // One table per chain, never inside a table (virtio 1.2 2.7.5.3.1).
            if indirect || d.len == 0 || d.len % 16 != 0 || d.len / 16 > u32::from(u16::MAX) {
                return Err(DropCause::ChainInvalid);
            }
            table = d.addr;
            size = (d.len / 16) as u16;
            idx = 0;
            indirect = true;
            continue;
        }
        if budget == 0 {
            return Err(DropCause::ChainInvalid);
        }
        budget -= 1;
        seen += 1;
        if !f(&d)? || !d.has_next() {
            return Ok(seen);
        }
        idx = d.next;
    }
}

/// Makes used entries up to `new` (free-running) visible and records it in the queue.
fn publish_used<M: GuestMemory, Q: QueueT>(mem: &M, queue: &mut Q, new: u16) -> Result<(), Error> {
    let addr = GuestAddress(queue.used_ring()).checked_add_u64(2)?;
    mem.store(new.to_le(), addr, Ordering::Release)?;
    queue.set_next_used(new);
    Ok(())
}

/// Whether the driver wants an interrupt for used entries `old..new` (EVENT_IDX `used_event`,
/// or the available ring's NO_INTERRUPT flag without it).
pub(crate) fn needs_notification<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    old: u16,
    new: u16,
) -> Result<bool, Error> {
    if old == new {
        return Ok(false);
    }
    fence(Ordering::SeqCst);
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        let addr = avail.checked_add_u64(4 + 2 * u64::from(queue.size()))?;
        let event = u16::from_le(mem.load::<u16>(addr, Ordering::Relaxed)?);
        Ok(new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old))
    } else {
        let flags = u16::from_le(mem.load::<u16>(avail, Ordering::Relaxed)?);
        Ok(flags & AVAIL_F_NO_INTERRUPT == 0)
    }
}

fn read_desc<M: GuestMemory>(mem: &M, table: GuestAddress, idx: u16) -> Result<Desc, DropCause> {
    let addr = table
        .0
        .checked_add(16 * u64::from(idx))
        .ok_or(DropCause::ChainInvalid)?;
    let mut b = [0u8; 16];
    crate::gmem::read(mem, GuestAddress(addr), &mut b).map_err(|()| DropCause::ChainInvalid)?;
    Ok(Desc {
        addr: GuestAddress(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ])),
        len: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
        flags: u16::from_le_bytes([b[12], b[13]]),
        next: u16::from_le_bytes([b[14], b[15]]),
    })
}

fn bad_address(addr: GuestAddress) -> Error {
    Error::GuestMemory(vm_memory::GuestMemoryError::InvalidGuestAddress(addr))
}

trait CheckedAdd {
    fn checked_add_u64(self, v: u64) -> Result<GuestAddress, Error>;
}

impl CheckedAdd for GuestAddress {
    fn checked_add_u64(self, v: u64) -> Result<GuestAddress, Error> {
        self.0
            .checked_add(v)
            .map(GuestAddress)
            .ok_or(Error::Queue(virtio_queue::Error::AddressOverflow))
    }
}

/// Available-ring entries read per guest memory access.
pub(crate) const HEAD_CHUNK: usize = 64;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// VRING_AVAIL_F_NO_INTERRUPT.
const AVAIL_F_NO_INTERRUPT: u16 = 1;
