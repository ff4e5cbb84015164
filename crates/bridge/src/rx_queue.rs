//! [`RxQueue`]: the device side of the guest's RX virtqueue (queue 0): frames written into its chains.

use virtio_queue::QueueT;
use vm_memory::{Address, GuestAddress, GuestMemory};

use crate::Error;
use crate::device::{
    VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};
use crate::frame::FrameBatch;
use crate::host::Gather;
use crate::rx_split::{RX_HEAD, RxSplit, RxTail};
use crate::stats::{DropCause, Stats};
use crate::wire::ETH_HLEN;
use crate::{gmem, ring};

/// What one [`RxQueue::fill`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RxOutcome {
    /// Frames written into guest buffers and published in the used ring.
    pub delivered: usize,
    /// Frames dropped (holes are not counted).
    pub dropped: usize,
    /// Whether the driver must be notified (EVENT_IDX honoured): call the RX interrupt.
    pub notify: bool,
    /// Whether the guest ran out of RX buffers with frames still pending in the batch: call
    /// [`RxQueue::arm`] and wait for the RX kick.
    pub starved: bool,
    /// RX chains walked (written into), those given back to the ring for a later frame
    /// included: the work the call did (bounded, see [`RxQueue`]).
    pub walked: usize,
}

/// Device side of the RX queue. Thread-free, like [`crate::TxQueue`].
///
/// Each frame gets a virtio-net header (`num_buffers` set). Without MRG_RXBUF a frame goes
/// into one chain; with it, into as many chains as it needs. When the available ring runs
/// out in the middle of a frame, the chains taken for it are given back (the ring position
/// is rewound) and the frame stays first in the batch. Hostile RX chains (wrong direction,
/// out of bounds, loops) are returned with length 0, counted, and the frame is dropped.
///
/// The work of one [`RxQueue::fill`] is bounded whatever the guest does: a frame walks at
/// most the queue size of chains (each at most the queue size of descriptors); once the
/// whole ring was found too small for a frame, larger frames are dropped without walking it
/// again; and the available ring is re-read for buffers added during the call at most
/// twice.
#[derive(Debug)]
pub struct RxQueue {
    hdr_len: usize,
    mrg: bool,
    popped: Vec<(u16, u32)>,
    used: ring::UsedBatch,
    /// The driver's available index as [`RxQueue::fill`] last read it: what [`RxQueue::arm`]
    /// compares against, so that buffers the driver adds after `fill` looked are never missed.
    seen_avail: u16,
}

enum Delivery {
    Delivered,
    Starved,
    Dropped(DropCause),
    /// The frame would reach the first chain of a scattered frame after it: nothing taken.
    Blocked,
}

/// A batch's scattered frames ([`crate::rx_split`]) and the link's guest-memory I/O.
pub(crate) struct Scattered<'a> {
    pub(crate) split: &'a mut RxSplit,
    pub(crate) io: &'a dyn Gather,
}

/// The available-ring window one `fill` call works in.
struct Window {
    /// Next available position to take.
    next: u16,
    /// Chains available from `next` on.
    left: u16,
    /// Heads read ahead from the available ring, starting at position `cache_base`.
    cache: [u16; ring::HEAD_CHUNK],
    cache_base: u16,
    cache_len: u16,
    /// Bytes (header included) all the ring's chains from `next` on hold, once a frame
    /// walked every chain of a full ring without fitting (MRG_RXBUF only): a larger frame
    /// cannot fit either until the driver adds buffers.
    capacity: Option<usize>,
    /// Chains walked so far.
    walked: usize,
}

impl Window {
    /// The head at position `next` (which has `left > 0` chains behind it).
    fn head<M: GuestMemory, Q: QueueT>(&mut self, mem: &M, queue: &Q) -> Result<u16, Error> {
        let off = self.next.wrapping_sub(self.cache_base);
        if off < self.cache_len {
            return Ok(self.cache[usize::from(off)]);
        }
        let n = usize::from(self.left).clamp(1, ring::HEAD_CHUNK);
        ring::avail_heads(mem, queue, self.next, &mut self.cache[..n])?;
        self.cache_base = self.next;
        self.cache_len = n as u16;
        Ok(self.cache[0])
    }
}

impl RxQueue {
    /// An RX queue for a virtio-net header of `hdr_len` bytes, merging buffers if `mrg_rxbuf`.
    pub fn new(hdr_len: usize, mrg_rxbuf: bool) -> Self {
        RxQueue {
            hdr_len: hdr_len.min(VIRTIO_NET_HDR_LEN),
            mrg: mrg_rxbuf,
            popped: Vec::new(),
            used: ring::UsedBatch::default(),
            seen_avail: 0,
        }
    }

    /// The virtio-net header's length in the guest's buffers.
    pub(crate) fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    /// Whether a frame may take several chains (MRG_RXBUF).
    pub(crate) fn mrg(&self) -> bool {
        self.mrg
    }

    /// Delivers the batch's pending frames (from its cursor on) until it is drained or the
    /// guest has no more RX buffers. Consumed frames are marked with
    /// [`FrameBatch::consume`]. The used index is published once, at the end.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] when the queue cannot be used (the device needs a reset) or the used
    /// ring cannot be written.
    pub fn fill<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        frames: &mut FrameBatch,
        stats: &mut Stats,
    ) -> Result<RxOutcome, Error> {
        self.fill_with(mem, queue, frames, None, stats)
    }

    /// As [`RxQueue::fill`], for a batch some of whose frames were read into the guest's
    /// buffers ([`crate::rx_split`]): such a frame whose chains are next takes them (its
    /// head written, nothing copied); one whose are not is made whole first, and so are
    /// all when a frame before them would reach their chains.
    pub(crate) fn fill_with<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        frames: &mut FrameBatch,
        split: Option<Scattered<'_>>,
        stats: &mut Stats,
    ) -> Result<RxOutcome, Error> {
        let mut out = RxOutcome::default();
        let mut w = Window {
            next: queue.next_avail(),
            left: 0,
            cache: [0; ring::HEAD_CHUNK],
            cache_base: 0,
            cache_len: 0,
            capacity: None,
            walked: 0,
        };
        self.used.clear();
        let result = self.fill_window(mem, queue, frames, split, &mut w, &mut out, stats);
        out.walked = w.walked;
        // Whatever happened, publish what was written and keep the ring position.
        queue.set_next_avail(w.next);
        let (old, new) = self.used.flush(mem, queue)?;
        out.notify = ring::needs_notification(mem, queue, old, new)?;
        result.map(|()| out)
    }

    #[allow(clippy::too_many_arguments)]
    fn fill_window<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &Q,
        frames: &mut FrameBatch,
        mut split: Option<Scattered<'_>>,
        w: &mut Window,
        out: &mut RxOutcome,
        stats: &mut Stats,
    ) -> Result<(), Error> {
        w.left = self.look(mem, queue, w.next)?;
        let mut relooks = 0;
        while frames.pending() > 0 {
            let i = frames.cursor();
            let Some(frame) = frames.frame(i) else { break };
            if frame.is_empty() {
                if let Some(s) = split.as_mut() {
                    s.split.unset(i);
                }
                frames.consume(1);
                continue;
            }
            let len = frame.len();
            let hdr = frames.header(i);
            let mut stop_at = None;
            if let Some(s) = split.as_mut() {
                if let Some(t) = s.split.get(i) {
                    if w.next == t.pos
                        && usize::from(w.left) >= t.chain_count()
                        && len == ETH_HLEN + RX_HEAD + t.len
                    {
                        let d = self.deliver_split(
                            queue,
                            w,
                            &frame[..len - t.len],
                            hdr,
                            t,
                            s.io,
                            stats,
                        );
                        s.split.unset(i);
                        frames.consume(1);
                        match d {
                            Delivery::Delivered => {
                                delivered(out, stats, len, hdr);
                                stats.rx_scattered += 1;
                            }
                            _ => {
                                out.dropped += 1;
                                stats.drop(DropCause::ChainOutOfBounds);
                            }
                        }
                        continue;
                    }
                    // Not where it was read into (a frame before it was dropped, or the
                    // guest changed its buffers): whole, then like any other.
                    make_whole(s, frames, i, stats);
                    continue;
                }
                stop_at = s.split.next_after(i).map(|(_, pos)| pos);
            }
            match self.deliver(mem, queue, w, frame, hdr, stop_at, stats)? {
                Delivery::Blocked => {
                    // It would write into a scattered frame's chains: make them all whole
                    // first (their tails are still intact), then try it again.
                    if let Some(s) = split.as_mut() {
                        for k in i + 1..frames.len() {
                            if s.split.get(k).is_some() {
                                make_whole(s, frames, k, stats);
                            }
                        }
                    }
                }
                Delivery::Delivered => {
                    delivered(out, stats, len, hdr);
                    frames.consume(1);
                }
                Delivery::Dropped(cause) => {
                    out.dropped += 1;
                    stats.drop(cause);
                    frames.consume(1);
                }
                Delivery::Starved => {
                    // The driver may have added buffers since we looked. A driver adding
                    // them one by one could make us walk the ring again for each: a few
                    // looks per call, then the caller arms (and calls again if more came).
                    if relooks < MAX_RELOOKS {
                        relooks += 1;
                        let now = self.look(mem, queue, w.next)?;
                        if now > w.left {
                            w.left = now;
                            w.capacity = None;
                            continue;
                        }
                    }
                    out.starved = true;
                    break;
                }
            }
        }
        Ok(())
    }

    /// Asks the driver for a kick when it adds RX buffers (after [`RxOutcome::starved`]).
    /// With EVENT_IDX the avail event is set to the available index the last
    /// [`RxQueue::fill`] saw, so the driver's next publication past it kicks. Returns `true` if
    /// buffers arrived since that `fill` looked: call [`RxQueue::fill`] again instead of
    /// waiting (no kick may come for them).
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] when the rings cannot be accessed.
    pub fn arm<M: GuestMemory, Q: QueueT>(&self, mem: &M, queue: &mut Q) -> Result<bool, Error> {
        // The index compared against must be the one `fill` decided "starved" on, not a fresh
        // read: buffers the driver published in between (typically right after the RX
        // interrupt that `fill`'s used entries raised) were checked by the driver against the
        // old avail_event and did not kick. Re-reading the index here would count them as
        // seen and sleep with usable buffers in the ring and no kick coming.
        //
        // `enable_notification` stores avail_event (or clears NO_NOTIFY), issues a SeqCst
        // fence, then re-reads the available index (virtio 1.x 2.7.10): a driver publishing
        // concurrently either sees the new avail_event and kicks, or its index is seen here.
        // It still returns `false` when the ring holds buffers `fill` could not use (a frame
        // larger than all of them together): we wait for new ones rather than spin.
        let saved = queue.next_avail();
        queue.set_next_avail(self.seen_avail);
        let res = queue.enable_notification(mem);
        queue.set_next_avail(saved);
        Ok(res?)
    }

    /// Chains available from position `from` on; records the available index read.
    fn look<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &Q,
        from: u16,
    ) -> Result<u16, Error> {
        let left = ring::available_from(mem, queue, from)?;
        self.seen_avail = from.wrapping_add(left);
        Ok(left)
    }

    /// Delivers a scattered frame into the chains it was read into (at the window's next
    /// position): its virtio-net header (`num_buffers` set) and `head` (the Ethernet header
    /// and the IP packet's head) go into their place, the tail is there already.
    #[allow(clippy::too_many_arguments)]
    fn deliver_split<Q: QueueT>(
        &mut self,
        queue: &Q,
        w: &mut Window,
        head: &[u8],
        hdr: VirtioNetHdr,
        t: &RxTail,
        io: &dyn Gather,
        stats: &mut Stats,
    ) -> Delivery {
        let n = t.chain_count();
        let hb = VirtioNetHdr {
            num_buffers: u16::try_from(n).unwrap_or(u16::MAX),
            ..hdr
        }
        .to_bytes();
        let mut bytes = [0u8; VIRTIO_NET_HDR_LEN + ETH_HLEN + RX_HEAD];
        let total = self.hdr_len + head.len();
        let ok = match bytes.get_mut(..total) {
            Some(b) => {
                b[..self.hdr_len].copy_from_slice(&hb[..self.hdr_len]);
                b[self.hdr_len..].copy_from_slice(head);
                io.write_segments(t.head(), b)
            }
            None => false,
        };
        let k = u16::try_from(n).unwrap_or(u16::MAX);
        w.next = w.next.wrapping_add(k);
        w.left = w.left.saturating_sub(k);
        w.walked += n;
        for (h, l) in t.chains() {
            // A head that could not be written: the chains go back empty (the guest drops
            // short packets).
            self.put(queue, h, if ok { l } else { 0 }, stats);
        }
        if ok {
            Delivery::Delivered
        } else {
            Delivery::Dropped(DropCause::ChainOutOfBounds)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn deliver<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &Q,
        w: &mut Window,
        frame: &[u8],
        hdr: VirtioNetHdr,
        stop_at: Option<u16>,
        stats: &mut Stats,
    ) -> Result<Delivery, Error> {
        let start = w.next;
        let start_left = w.left;
        self.popped.clear();
        let hdr = VirtioNetHdr {
            num_buffers: 1,
            ..hdr
        }
        .to_bytes();
        let hdr = &hdr[..self.hdr_len];
        let total = self.hdr_len + frame.len();
        if w.capacity.is_some_and(|c| total > c) {
            // The whole ring was walked for a smaller frame and could not hold it.
            return Ok(Delivery::Dropped(DropCause::RxNoFit));
        }
        let mut written = 0usize;
        // Guest addresses of the two `num_buffers` bytes (header offsets 10 and 11).
        let mut nb_addr: [Option<GuestAddress>; 2] = [None, None];
        loop {
            if w.left == 0 {
                w.next = start;
                w.left = start_left;
                self.popped.clear();
                return Ok(Delivery::Starved);
            }
            if stop_at == Some(w.next) {
                // The first chain of a scattered frame after this one.
                w.next = start;
                w.left = start_left;
                self.popped.clear();
                return Ok(Delivery::Blocked);
            }
            let head = w.head(mem, queue)?;
            w.next = w.next.wrapping_add(1);
            w.left -= 1;
            w.walked += 1;
            let mut chain_written = 0u32;
            let walked = ring::walk(mem, queue, head, |desc| {
                if !desc.is_write_only() {
                    return Err(DropCause::ChainWrongDirection);
                }
                let n = (desc.len as usize).min(total - written);
                if n > 0 {
                    write_piece(mem, desc.addr, hdr, frame, written, n, &mut nb_addr)?;
                    written += n;
                    chain_written += n as u32;
                }
                Ok(written < total)
            });
            self.popped.push((head, chain_written));
            if let Err(cause) = walked {
                // Give every chain of this frame back empty: the guest sees short packets and
                // drops them. The bad chain is counted; the frame is lost.
                stats.drop(cause);
                for k in 0..self.popped.len() {
                    let (h, _) = self.popped[k];
                    self.put(queue, h, 0, stats);
                }
                return Ok(Delivery::Dropped(DropCause::RxNoFit));
            }
            if written == total {
                break;
            }
            if !self.mrg || self.popped.len() >= usize::from(queue.size()) {
                // The frame can never fit: one buffer is too small (no MRG_RXBUF), or all the
                // ring's buffers together are. Keep the chains for the next frame.
                if self.mrg {
                    w.capacity = Some(written);
                }
                w.next = start;
                w.left = start_left;
                self.popped.clear();
                return Ok(Delivery::Dropped(DropCause::RxNoFit));
            }
        }
        if self.popped.len() > 1 {
            let nb = u16::try_from(self.popped.len())
                .unwrap_or(u16::MAX)
                .to_le_bytes();
            for (addr, byte) in nb_addr.iter().zip(nb) {
                if let Some(a) = addr {
                    gmem::write(mem, *a, &[byte]).map_err(|()| {
                        Error::GuestMemory(vm_memory::GuestMemoryError::InvalidGuestAddress(*a))
                    })?;
                }
            }
        }
        for k in 0..self.popped.len() {
            let (h, l) = self.popped[k];
            self.put(queue, h, l, stats);
        }
        Ok(Delivery::Delivered)
    }

    /// Queues a used entry; a head outside the table is counted instead.
    fn put<Q: QueueT>(&mut self, queue: &Q, head: u16, len: u32, stats: &mut Stats) {
        if head >= queue.size() {
            stats.drop(DropCause::ChainInvalid);
        } else {
            self.used.push(head, len);
        }
    }
}

/// Counts a frame of `len` bytes with virtio-net header `hdr` delivered.
fn delivered(out: &mut RxOutcome, stats: &mut Stats, len: usize, hdr: VirtioNetHdr) {
    out.delivered += 1;
    stats.rx_frames += 1;
    stats.rx_bytes += len as u64;
    stats.rx_gso += u64::from(hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE);
    stats.rx_gso6 += u64::from(hdr.gso_type == VIRTIO_NET_HDR_GSO_TCPV6);
}

/// Makes scattered frame `k` whole ([`RxSplit::make_whole`]); a frame whose tail is not in
/// guest memory any more is dropped and counted.
fn make_whole(s: &mut Scattered<'_>, frames: &mut FrameBatch, k: usize, stats: &mut Stats) {
    let ok = frames
        .slot_mut(k)
        .is_some_and(|(buf, _, _)| s.split.make_whole(k, buf, s.io));
    if !ok {
        s.split.unset(k);
        stats.drop(DropCause::ChainOutOfBounds);
        frames.drop_frame(k);
    }
}

/// How often one [`RxQueue::fill`] re-reads the available ring for buffers the driver added
/// while it ran, when a frame ran out of them.
const MAX_RELOOKS: usize = 2;

/// Writes bytes `written..written + n` of (header ++ frame) at `addr`.
fn write_piece<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    hdr: &[u8],
    frame: &[u8],
    written: usize,
    n: usize,
    nb_addr: &mut [Option<GuestAddress>; 2],
) -> Result<(), DropCause> {
    let mut off = written;
    let end = written + n;
    let mut a = addr;
    if off < hdr.len() {
        let k = (hdr.len() - off).min(end - off);
        crate::gmem::write(mem, a, &hdr[off..off + k]).map_err(|()| DropCause::ChainOutOfBounds)?;
        for (slot, hoff) in nb_addr.iter_mut().zip([10usize, 11]) {
            if hoff >= off && hoff < off + k {
                *slot = a.checked_add((hoff - off) as u64);
            }
        }
        off += k;
        a = a.checked_add(k as u64).ok_or(DropCause::ChainOutOfBounds)?;
    }
    if off < end {
        let f0 = off - hdr.len();
        let f1 = end - hdr.len();
        let src = frame.get(f0..f1).ok_or(DropCause::ChainInvalid)?;
        crate::gmem::write(mem, a, src).map_err(|()| DropCause::ChainOutOfBounds)?;
    }
    Ok(())
}
