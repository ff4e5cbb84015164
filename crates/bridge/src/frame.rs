//! [`FrameBatch`]: a fixed set of preallocated frame buffers, filled and drained as a unit.
//! Batches are what the pipeline's channels carry; they are reused, never reallocated.

use crate::device::VirtioNetHdr;

/// A batch of up to `capacity` frames, each in its own preallocated buffer of `buf_size`
/// bytes. Frames are appended at the back and consumed from the front (a cursor), so a
/// partly delivered batch keeps its remaining frames in order. A frame of length zero is a
/// hole (a dropped packet) that consumers skip.
#[derive(Debug)]
pub struct FrameBatch {
    slots: Vec<Slot>,
    len: usize,
    consumed: usize,
    buf_size: usize,
}

#[derive(Debug)]
struct Slot {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
    /// The virtio-net header the frame carries towards the guest (offloads); zero otherwise.
    hdr: VirtioNetHdr,
}

impl FrameBatch {
    /// Allocates `capacity` buffers of `buf_size` bytes each (the only allocation a batch
    /// ever makes).
    pub fn new(capacity: usize, buf_size: usize) -> Self {
        let slots = (0..capacity)
            .map(|_| Slot {
                buf: vec![0u8; buf_size].into_boxed_slice(),
                start: 0,
                len: 0,
                hdr: VirtioNetHdr::default(),
            })
            .collect();
        FrameBatch {
            slots,
            len: 0,
            consumed: 0,
            buf_size,
        }
    }

    /// How many frames the batch holds at most.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// The size of each buffer.
    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// Number of frames appended since the last [`FrameBatch::clear`] (consumed ones and
    /// holes included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no frame was appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether every buffer is in use.
    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// Number of frames not yet consumed (holes included).
    pub fn pending(&self) -> usize {
        self.len - self.consumed
    }

    /// Forgets every frame; the buffers stay allocated.
    pub fn clear(&mut self) {
        self.len = 0;
        self.consumed = 0;
    }

    /// Copies `frame` into the next buffer. Returns `false` if the batch is full, the frame is
    /// empty or longer than a buffer.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if frame.is_empty() {
            return false;
        }
        match self.next_buf() {
            Some(buf) if frame.len() <= buf.len() => {
                buf[..frame.len()].copy_from_slice(frame);
                self.commit(0, frame.len());
                true
            }
            _ => false,
        }
    }

    /// Copies `frame` into the next buffer with the virtio-net header `hdr` (see
    /// [`FrameBatch::push`]).
    pub fn push_with_header(&mut self, frame: &[u8], hdr: VirtioNetHdr) -> bool {
        if !self.push(frame) {
            return false;
        }
        self.set_header(self.len - 1, hdr);
        true
    }

    /// The virtio-net header of frame `i` (zero unless set with
    /// [`FrameBatch::set_header`]).
    pub fn header(&self, i: usize) -> VirtioNetHdr {
        self.slots
            .get(..self.len)
            .and_then(|s| s.get(i))
            .map(|s| s.hdr)
            .unwrap_or_default()
    }

    /// Sets the virtio-net header frame `i` carries to the guest (checksum and GSO fields;
    /// `num_buffers` is filled in on delivery).
    pub fn set_header(&mut self, i: usize, hdr: VirtioNetHdr) {
        if let Some(s) = self.slots.get_mut(..self.len).and_then(|s| s.get_mut(i)) {
            s.hdr = hdr;
        }
    }

    /// Frame `i` (empty for a hole).
    pub fn frame(&self, i: usize) -> Option<&[u8]> {
        let s = self.slots.get(..self.len)?.get(i)?;
        s.buf.get(s.start..s.start + s.len)
    }

    /// Frame `i`, mutable.
    pub fn frame_mut(&mut self, i: usize) -> Option<&mut [u8]> {
        let s = self.slots.get_mut(..self.len)?.get_mut(i)?;
        s.buf.get_mut(s.start..s.start + s.len)
    }

    /// Every appended frame, in order (holes are empty slices).
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.slots[..self.len]
            .iter()
            .map(|s| &s.buf[s.start..s.start + s.len])
    }

    /// Every appended slot as (whole buffer, frame start, frame length), mutable: for
    /// rewriting a batch in place.
    pub fn slots_mut(&mut self) -> impl Iterator<Item = (&mut [u8], usize, usize)> {
        self.slots[..self.len]
            .iter_mut()
            .map(|s| (&mut s.buf[..], s.start, s.len))
    }

    /// Turns frame `i` into a hole.
    pub fn drop_frame(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(..self.len).and_then(|s| s.get_mut(i)) {
            s.len = 0;
        }
    }

    /// The whole buffer of the next free slot, for writing a frame in place (then call
    /// [`FrameBatch::commit`]).
    pub fn next_buf(&mut self) -> Option<&mut [u8]> {
        self.slots.get_mut(self.len).map(|s| &mut s.buf[..])
    }

    /// Appends the frame written into [`FrameBatch::next_buf`] at `start..start + len`
    /// (clamped to the buffer).
    pub fn commit(&mut self, start: usize, len: usize) {
        if let Some(s) = self.slots.get_mut(self.len) {
            let start = start.min(s.buf.len());
            s.start = start;
            s.len = len.min(s.buf.len() - start);
            s.hdr = VirtioNetHdr::default();
            self.len += 1;
        }
    }

    /// Re-frames slot `i` as `start..start + len` of its buffer (for prepending a header in
    /// the headroom); clamped to the buffer.
    pub fn set_bounds(&mut self, i: usize, start: usize, len: usize) {
        if let Some(s) = self.slots.get_mut(..self.len).and_then(|s| s.get_mut(i)) {
            let start = start.min(s.buf.len());
            s.start = start;
            s.len = len.min(s.buf.len() - start);
        }
    }

    /// Moves frame `i` to the back of `to` with the virtio-net header `hdr`, without a copy:
    /// the two slots exchange buffers, and frame `i` becomes a hole. Returns `false` (nothing
    /// moved) when frame `i` is a hole or not appended, `to` is full, or a buffer would be
    /// smaller than the size of the batch it goes to (so each batch keeps buffers of at least
    /// its [`FrameBatch::buf_size`]: then the caller copies).
    pub fn move_frame(&mut self, i: usize, to: &mut FrameBatch, hdr: VirtioNetHdr) -> bool {
        let (to_size, from_size) = (to.buf_size, self.buf_size);
        let Some(s) = self.slots.get_mut(..self.len).and_then(|s| s.get_mut(i)) else {
            return false;
        };
        let Some(t) = to.slots.get_mut(to.len) else {
            return false;
        };
        if s.len == 0 || s.buf.len() < to_size || t.buf.len() < from_size {
            return false;
        }
        core::mem::swap(&mut s.buf, &mut t.buf);
        (t.start, t.len, t.hdr) = (s.start, s.len, hdr);
        s.len = 0;
        to.len += 1;
        true
    }

    /// The whole buffer of appended slot `i` and its frame bounds.
    pub fn slot_mut(&mut self, i: usize) -> Option<(&mut [u8], usize, usize)> {
        let s = self.slots.get_mut(..self.len)?.get_mut(i)?;
        Some((&mut s.buf[..], s.start, s.len))
    }

    /// The free buffers from offset `headroom` on, for a batched receive
    /// (`recv_batch(bufs, lens)`), then [`FrameBatch::commit_received`].
    pub fn free_bufs(&mut self, headroom: usize) -> impl Iterator<Item = &mut [u8]> {
        self.slots[self.len..].iter_mut().map(move |s| {
            let h = headroom.min(s.buf.len());
            &mut s.buf[h..]
        })
    }

    /// Appends `lens.len()` received frames that start at `headroom` in the next free slots.
    pub fn commit_received(&mut self, headroom: usize, lens: &[usize]) {
        for &l in lens {
            self.commit(headroom, l);
        }
    }

    /// Index of the first unconsumed frame.
    pub fn cursor(&self) -> usize {
        self.consumed
    }

    /// Marks `n` more frames as consumed.
    pub fn consume(&mut self, n: usize) {
        self.consumed = (self.consumed + n).min(self.len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_frame_consume_clear() {
        let mut b = FrameBatch::new(2, 8);
        assert!(b.push(b"abc"));
        assert!(!b.push(b"123456789"), "longer than a buffer");
        assert!(!b.push(b""), "empty");
        assert!(b.push(b"12345678"));
        assert!(b.is_full());
        assert!(!b.push(b"x"));
        assert_eq!(b.frame(0), Some(&b"abc"[..]));
        assert_eq!(b.frame(2), None);
        b.drop_frame(0);
        assert_eq!(b.frame(0), Some(&b""[..]));
        b.consume(1);
        assert_eq!((b.pending(), b.cursor()), (1, 1));
        b.consume(5);
        assert_eq!(b.pending(), 0);
        b.clear();
        assert!(b.is_empty());
    }

    #[test]
    fn a_frame_moves_by_buffer_only_between_batches_of_buffers_large_enough() {
        let mut from = FrameBatch::new(2, 32);
        let buf = from.next_buf().unwrap();
        buf[12..15].copy_from_slice(b"abc");
        from.commit(12, 3);
        assert!(from.push(b"xyz"));
        let mut to = FrameBatch::new(1, 32);
        let hdr = VirtioNetHdr {
            gso_size: 7,
            ..VirtioNetHdr::default()
        };
        assert!(from.move_frame(0, &mut to, hdr));
        assert_eq!(to.frame(0), Some(&b"abc"[..]));
        assert_eq!(to.header(0).gso_size, 7);
        assert_eq!(from.frame(0), Some(&b""[..]), "a hole where it was");
        assert!(!from.move_frame(0, &mut to, hdr), "a hole does not move");
        assert!(!from.move_frame(1, &mut to, hdr), "to is full");
        assert!(!from.move_frame(2, &mut to, hdr), "not appended");
        // The buffers went both ways: each batch still has buffers of its size.
        assert_eq!(from.next_buf().map(|b| b.len()), None);
        from.clear();
        assert!(from.free_bufs(0).all(|b| b.len() == 32));
        // A batch never takes a buffer smaller than its own size, either way.
        let mut small = FrameBatch::new(1, 16);
        let mut large = FrameBatch::new(1, 64);
        assert!(from.push(b"xyz"));
        assert!(
            !from.move_frame(0, &mut small, hdr),
            "small's buffer is too small for from"
        );
        assert!(
            !from.move_frame(0, &mut large, hdr),
            "from's buffer is too small for large"
        );
        assert!(small.is_empty() && large.is_empty());
        assert_eq!(from.frame(0), Some(&b"xyz"[..]), "not moved: still there");
    }

    #[test]
    fn in_place_writes_with_headroom() {
        let mut b = FrameBatch::new(3, 32);
        for (i, buf) in b.free_bufs(14).enumerate() {
            assert_eq!(buf.len(), 18);
            buf[0] = i as u8 + 1;
        }
        b.commit_received(14, &[4, 100]);
        assert_eq!(b.len(), 2);
        assert_eq!(b.frame(0).unwrap(), &[1, 0, 0, 0]);
        assert_eq!(b.frame(1).unwrap().len(), 18, "clamped to the buffer");
        b.set_bounds(0, 0, 18);
        assert_eq!(b.frame(0).unwrap()[14], 1);
    }
}
