//! [`TxQueue`]: the device side of the guest's TX virtqueue (queue 1), drained into a [`FrameBatch`].

use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::Error;
use crate::device::VIRTIO_NET_HDR_LEN;
use crate::frame::FrameBatch;
use crate::stats::{DropCause, Stats};
use crate::tx_split::{HEAD_BYTES, SplitState, TxSplit};
use crate::wire::ETH_HLEN;
use crate::{gmem, ring};

/// What one [`TxQueue::process`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxOutcome {
    /// Chains taken from the available ring (and returned to the used ring).
    pub chains: usize,
    /// Frames appended to the batch.
    pub frames: usize,
    /// Whether the driver must be notified (EVENT_IDX honoured): call the TX interrupt.
    pub notify: bool,
    /// Whether the batch filled up, so more chains may be waiting.
    pub more: bool,
}

/// Device side of the TX queue. Thread-free: the [`crate::DeviceCore`] (or an embedder's own glue)
/// calls [`TxQueue::process`] on each kick.
///
/// Every chain taken is returned to the used ring (length 0) at once, after its bytes were
/// copied into the batch, so no chain is ever held. Hostile chains are counted
/// ([`DropCause::ChainInvalid`], [`DropCause::ChainOutOfBounds`],
/// [`DropCause::ChainWrongDirection`], [`DropCause::ShortHeader`], [`DropCause::Runt`],
/// [`DropCause::TooBig`]) and skipped.
#[derive(Debug)]
pub struct TxQueue {
    hdr_len: usize,
    max_frame: usize,
    used: ring::UsedBatch,
}

impl TxQueue {
    /// A TX queue for a virtio-net header of `hdr_len` bytes (see
    /// [`crate::Device::header_len`]) and frames of at most `max_frame` bytes (MTU + 14).
    pub fn new(hdr_len: usize, max_frame: usize) -> Self {
        TxQueue {
            hdr_len: hdr_len.min(VIRTIO_NET_HDR_LEN),
            max_frame,
            used: ring::UsedBatch::default(),
        }
    }

    /// Length of the virtio-net header in front of each frame in the batch.
    pub fn header_len(&self) -> usize {
        self.hdr_len
    }

    /// Takes chains from `queue` until the batch is full or the available ring is empty,
    /// copying each frame into `batch` (its buffers must hold `max_frame` plus the header:
    /// the header is read in front of the frame, which starts at offset `hdr_len`).
    ///
    /// The caller handles notification suppression: `disable_notification`, call this while
    /// [`TxOutcome::more`], then `enable_notification` and repeat if it returns `true`.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] when the queue cannot be used (not ready, or the driver's available
    /// index is more than a queue size ahead: the device needs a reset), [`Error::Queue`] /
    /// [`Error::GuestMemory`] when the used ring cannot be written.
    pub fn process<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        batch: &mut FrameBatch,
        stats: &mut Stats,
    ) -> Result<TxOutcome, Error> {
        self.process_split(mem, queue, batch, stats, None)
    }

    /// As [`TxQueue::process`]; with `split`, a frame its rule lets go head-only is copied
    /// only as far as its head, and its chain is held back (not in the used ring) in `split`
    /// until the caller has sent it (see [`crate::tx_split`]).
    pub(crate) fn process_split<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        batch: &mut FrameBatch,
        stats: &mut Stats,
        mut split: Option<&mut TxSplit>,
    ) -> Result<TxOutcome, Error> {
        let mut out = TxOutcome::default();
        let room = batch.capacity() - batch.len();
        if room == 0 {
            out.more = true;
            return Ok(out);
        }
        let avail = ring::available(mem, queue)?;
        let n = usize::from(avail).min(room);
        let next_avail = queue.next_avail();
        self.used.clear();
        let mut heads = [0u16; ring::HEAD_CHUNK];
        let mut k = 0usize;
        while k < n {
            let m = (n - k).min(ring::HEAD_CHUNK);
            ring::avail_heads(
                mem,
                queue,
                next_avail.wrapping_add(k as u16),
                &mut heads[..m],
            )?;
            for &head in &heads[..m] {
                let Some(buf) = batch.next_buf() else { break };
                let limit = (self.max_frame + self.hdr_len).min(buf.len());
                let buf = &mut buf[..limit];
                let (read, from) = match split.as_deref_mut() {
                    None => (read_chain(mem, queue, head, buf), None),
                    Some(sp) => {
                        let from = sp.mark();
                        (
                            read_chain_split(mem, queue, head, buf, self.hdr_len, sp),
                            Some(from),
                        )
                    }
                };
                let mut held = false;
                match read {
                    Ok(total) if total < self.hdr_len => stats.drop(DropCause::ShortHeader),
                    Ok(total) if total - self.hdr_len < ETH_HLEN => stats.drop(DropCause::Runt),
                    Ok(total) => {
                        let len = total - self.hdr_len;
                        batch.commit(self.hdr_len, len);
                        if let (Some(sp), Some(from)) = (split.as_deref_mut(), from) {
                            held = sp.mark() > from && head < queue.size();
                            sp.commit(from, len.min(HEAD_BYTES), held, head);
                        }
                        stats.tx_frames += 1;
                        stats.tx_bytes += len as u64;
                        out.frames += 1;
                    }
                    Err(cause) => stats.drop(cause),
                }
                if let (Some(sp), Some(from), false) = (split.as_deref_mut(), from, held) {
                    sp.forget_since(from);
                }
                if held {
                    // Held in `split` until its packet is sent (`TxEngine::push_gathered`).
                } else if head < queue.size() {
                    self.used.push(head, 0);
                } else {
                    // Cannot be returned: the used ring only holds heads inside the table.
                    stats.drop(DropCause::ChainInvalid);
                }
            }
            k += m;
        }
        out.chains = n;
        queue.set_next_avail(next_avail.wrapping_add(n as u16));
        let (old, new) = self.used.flush(mem, queue)?;
        out.notify = ring::needs_notification(mem, queue, old, new)?;
        out.more = n == room && n > 0;
        Ok(out)
    }
}

/// As [`read_chain`], the bytes past the head of a frame `split`'s rule lets go head-only
/// left in guest memory and recorded in `split` (see [`TxSplit::read_desc`]).
fn read_chain_split<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    head: u16,
    buf: &mut [u8],
    hdr_len: usize,
    split: &mut TxSplit,
) -> Result<usize, DropCause> {
    let mut state = SplitState::Head { from: split.mark() };
    walk_chain(mem, queue, head, buf.len(), |desc, total| {
        split.read_desc(
            mem,
            &mut state,
            (desc.addr, desc.len as usize),
            buf,
            total,
            hdr_len,
        )
    })
}

/// Copies the bytes of a TX chain (virtio-net header, then frame) into `buf`, one guest
/// memory read per descriptor; returns how many. The header is not interpreted yet: no
/// offloads are negotiated.
fn read_chain<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    head: u16,
    buf: &mut [u8],
) -> Result<usize, DropCause> {
    walk_chain(mem, queue, head, buf.len(), |desc, total| {
        let end = total + desc.len as usize;
        gmem::read(mem, desc.addr, &mut buf[total..end]).map_err(|()| DropCause::ChainOutOfBounds)
    })
}

/// Walks a TX chain of at most `limit` bytes, handing `read` each descriptor and the bytes
/// before it (the descriptor's bytes end within `limit`); returns the chain's length.
fn walk_chain<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    head: u16,
    limit: usize,
    mut read: impl FnMut(&ring::Desc, usize) -> Result<(), DropCause>,
) -> Result<usize, DropCause> {
    let mut total = 0usize;
    ring::walk(mem, queue, head, |desc| {
        if desc.is_write_only() {
            return Err(DropCause::ChainWrongDirection);
        }
        let end = total.checked_add(desc.len as usize).filter(|&e| e <= limit);
        let Some(end) = end else {
            return Err(DropCause::TooBig);
        };
        read(desc, total)?;
        total = end;
        Ok(true)
    })?;
    Ok(total)
}
