//! Scattered RX: a large TCP packet from the host link read with its first [`RX_HEAD`] bytes
//! in the bridge's own buffer and the rest straight in the guest's RX buffers
//! ([`crate::HostLink::recv_scatter`]), so that its payload is copied once (by the kernel)
//! instead of twice.
//!
//! Before each such read the chains that the packet would take are reserved: their
//! available-ring position is the one the frames read before it take up to (their
//! delivery is predicted from their lengths and the chains' sizes), and their buffers give
//! the head's and the tail's guest memory. The NAT and the checks then see the head only
//! (the frame keeps its whole length in the batch; nothing on its way reads past its
//! headers, as [`splittable`] makes sure), and delivery writes the head into the chains and
//! hands them to the guest without touching the tail.
//!
//! Whenever that prediction does not hold at delivery (a frame before it was dropped, a
//! reply went first, the guest changed its descriptors), the frame is made whole: its tail
//! is copied back out of guest memory into its slot ([`RxTail::make_whole`]) before any
//! other frame is written into those chains ([`crate::RxQueue`] stops a frame that would
//! reach a reserved chain), and it is delivered like any other. A packet the NAT refuses is
//! never marked used: its chains stay the guest's, and the next frames overwrite them.

use virtio_queue::QueueT;
use vm_memory::{Address, GuestMemory};

use crate::device::{VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VirtioNetHdr};
use crate::host::{Gather, GuestSegment};
use crate::offload::{self, Offloads};
use crate::ring;
use ::wire::ip_proto;

/// Bytes of the IP packet read into the bridge's own buffer: the part the NAT and the
/// checks read (IP and TCP headers with options: at most 120 bytes); the rest of a larger
/// packet goes straight into guest memory. Where a frame's way reads more (a Packet Too Big
/// answer's quote, the DNS relay, a frame for another guest), it is made whole first.
pub(crate) const RX_HEAD: usize = 256;
/// A packet longer than this makes the next read reserve guest buffers (a bulk transfer:
/// the reservation's chain walk pays off).
pub(crate) const BULK: usize = 2048;
/// Chains one scattered packet takes at most (a 64 KiB packet in 4 KiB buffers takes 17).
pub(crate) const MAX_CHAINS: usize = 64;
/// Guest-memory pieces of a scattered packet's tail at most (a TUN read takes 64 slices
/// beside the head, and a piece across two memory regions is two).
pub(crate) const MAX_TAIL: usize = 32;
/// Guest-memory pieces of the head's place at most.
const MAX_HEAD: usize = 8;

/// One chain a scattered frame takes: its head index and the bytes the frame puts in it.
#[derive(Clone, Copy, Debug, Default)]
struct Taken {
    head: u16,
    len: u32,
}

/// Where one reserved (then scattered) frame lies in guest memory.
#[derive(Clone, Debug)]
pub(crate) struct RxTail {
    /// Available-ring position (free-running) of its first chain.
    pub(crate) pos: u16,
    chains: [Taken; MAX_CHAINS],
    n_chains: usize,
    /// The place of the virtio-net header, the Ethernet header and the IP head.
    head: [GuestSegment; MAX_HEAD],
    n_head: usize,
    /// Where the IP packet's bytes from [`RX_HEAD`] on are.
    tail: [GuestSegment; MAX_TAIL],
    n_tail: usize,
    /// Where the tail belongs in the frame's slot buffer, and its length.
    pub(crate) at: usize,
    pub(crate) len: usize,
}

impl RxTail {
    pub(crate) fn new() -> Self {
        RxTail {
            pos: 0,
            chains: [Taken::default(); MAX_CHAINS],
            n_chains: 0,
            head: [GuestSegment::default(); MAX_HEAD],
            n_head: 0,
            tail: [GuestSegment::default(); MAX_TAIL],
            n_tail: 0,
            at: 0,
            len: 0,
        }
    }

    /// The tail's guest memory (as reserved, or as trimmed to the packet).
    pub(crate) fn tail(&self) -> &[GuestSegment] {
        &self.tail[..self.n_tail]
    }

    /// The head's place in guest memory.
    pub(crate) fn head(&self) -> &[GuestSegment] {
        &self.head[..self.n_head]
    }

    /// The chains the frame takes: (head index, bytes in it).
    pub(crate) fn chains(&self) -> impl Iterator<Item = (u16, u32)> + '_ {
        self.chains[..self.n_chains].iter().map(|c| (c.head, c.len))
    }

    /// How many chains the frame takes.
    pub(crate) fn chain_count(&self) -> usize {
        self.n_chains
    }

    /// Reserves the chains from available position `pos` (`left` chains available there)
    /// for a frame of up to `need` bytes in guest memory (virtio-net header included), the
    /// first `head_len` of which are the head's: `false` (nothing reserved) when they cannot
    /// hold it (without `mrg` one chain must), a chain is not all device-writable or not
    /// readable, or it would take more chains or pieces than a frame holds.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn reserve<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &Q,
        pos: u16,
        left: u16,
        need: usize,
        head_len: usize,
        mrg: bool,
    ) -> bool {
        self.pos = pos;
        (self.n_chains, self.n_head, self.n_tail) = (0, 0, 0);
        let mut off = 0usize;
        let mut k = 0u16;
        while off < need {
            if k == left || self.n_chains == MAX_CHAINS || (!mrg && k == 1) {
                return false;
            }
            let mut h = [0u16; 1];
            if ring::avail_heads(mem, queue, pos.wrapping_add(k), &mut h).is_err() {
                return false;
            }
            k += 1;
            let before = off;
            let walked = ring::walk(mem, queue, h[0], |d| {
                if !d.is_write_only() {
                    return Err(crate::stats::DropCause::ChainWrongDirection);
                }
                let n = (d.len as usize).min(need - off);
                let mut addr = d.addr;
                let mut n_left = n;
                if off < head_len && n_left > 0 {
                    let k = n_left.min(head_len - off);
                    self.push_head(GuestSegment {
                        addr,
                        len: k as u32,
                    })?;
                    addr = addr
                        .checked_add(k as u64)
                        .ok_or(crate::stats::DropCause::ChainOutOfBounds)?;
                    n_left -= k;
                }
                if n_left > 0 {
                    self.push_tail(GuestSegment {
                        addr,
                        len: n_left as u32,
                    })?;
                }
                off += n;
                Ok(off < need)
            });
            if walked.is_err() {
                return false;
            }
            self.chains[self.n_chains] = Taken {
                head: h[0],
                len: (off - before) as u32,
            };
            self.n_chains += 1;
        }
        // The kernel writes the tail; the head is written at delivery: all of it must be
        // guest memory now.
        self.head()
            .iter()
            .chain(self.tail())
            .all(|s| mem.check_range(s.addr, s.len as usize, vm_memory::Permissions::Write))
    }

    fn push_head(&mut self, s: GuestSegment) -> Result<(), crate::stats::DropCause> {
        push(&mut self.head, &mut self.n_head, s)
    }

    fn push_tail(&mut self, s: GuestSegment) -> Result<(), crate::stats::DropCause> {
        push(&mut self.tail, &mut self.n_tail, s)
    }

    /// Cuts the reservation to a frame of `total` bytes in guest memory (virtio-net header
    /// included) whose tail is `tail_len` bytes: the chains it fills, the last one's length,
    /// the tail's pieces.
    pub(crate) fn trim(&mut self, total: usize, tail_len: usize) {
        self.n_chains = cut(
            self.chains[..self.n_chains].iter_mut().map(|c| &mut c.len),
            total,
        );
        self.n_tail = cut(
            self.tail[..self.n_tail].iter_mut().map(|s| &mut s.len),
            tail_len,
        );
    }

    /// Copies the tail out of guest memory into its place in `buf` (the frame's slot
    /// buffer); `false` if it is not all there.
    pub(crate) fn make_whole(&self, io: &dyn Gather, buf: &mut [u8]) -> bool {
        buf.get_mut(self.at..self.at + self.len)
            .is_some_and(|dst| io.copy_tail(self.tail(), dst))
    }
}

/// Cuts a run of lengths to `total` bytes: the last one kept shortened; returns how many
/// are kept.
fn cut<'a>(lens: impl Iterator<Item = &'a mut u32>, total: usize) -> usize {
    let mut sum = 0usize;
    let mut n = 0;
    for len in lens {
        if sum >= total {
            break;
        }
        let l = (*len as usize).min(total - sum);
        *len = l as u32;
        sum += l;
        n += 1;
    }
    n
}

/// Appends `s` to the first `n` of `segs`; a frame that needs more pieces is not reserved.
fn push(
    segs: &mut [GuestSegment],
    n: &mut usize,
    s: GuestSegment,
) -> Result<(), crate::stats::DropCause> {
    let slot = segs
        .get_mut(*n)
        .ok_or(crate::stats::DropCause::ChainInvalid)?;
    *slot = s;
    *n += 1;
    Ok(())
}

/// The scattered frames of an RX batch: per slot, its reservation and whether it is
/// scattered now.
#[derive(Debug, Default)]
pub(crate) struct RxSplit {
    /// One per batch slot (made at the first scattered read).
    tails: Vec<RxTail>,
    on: Vec<bool>,
    /// Scattered frames in the batch.
    count: usize,
    /// Whether the last packet read was longer than the head: the next read reserves.
    pub(crate) hint: bool,
}

impl RxSplit {
    /// Room for a batch of `slots` frames (once; no allocation after).
    pub(crate) fn prepare(&mut self, slots: usize) {
        if self.tails.len() < slots {
            self.tails.resize_with(slots, RxTail::new);
            self.on.resize(slots, false);
        }
    }

    /// Forgets every frame (a new batch).
    pub(crate) fn clear(&mut self) {
        if self.count > 0 {
            self.on.iter_mut().for_each(|o| *o = false);
            self.count = 0;
        }
    }

    /// Whether any frame of the batch is scattered.
    pub(crate) fn any(&self) -> bool {
        self.count > 0
    }

    /// Slot `i`'s reservation, to fill before a read (see [`RxSplit::prepare`]).
    pub(crate) fn slot_mut(&mut self, i: usize) -> Option<&mut RxTail> {
        self.tails.get_mut(i)
    }

    /// Marks frame `i` scattered (its slot's reservation holds it).
    pub(crate) fn set(&mut self, i: usize) {
        if let Some(o) = self.on.get_mut(i)
            && !*o
        {
            *o = true;
            self.count += 1;
        }
    }

    /// Frame `i`'s place in guest memory, if it is scattered.
    pub(crate) fn get(&self, i: usize) -> Option<&RxTail> {
        if self.on.get(i).copied().unwrap_or(false) {
            self.tails.get(i)
        } else {
            None
        }
    }

    /// Frame `i` is no longer scattered (delivered, dropped or made whole).
    pub(crate) fn unset(&mut self, i: usize) {
        if let Some(o) = self.on.get_mut(i)
            && *o
        {
            *o = false;
            self.count -= 1;
        }
    }

    /// The first scattered frame after `i` (its index and first chain's position).
    pub(crate) fn next_after(&self, i: usize) -> Option<(usize, u16)> {
        if self.count == 0 {
            return None;
        }
        let from = i + 1;
        let k = self.on.get(from..)?.iter().position(|&o| o)? + from;
        Some((k, self.tails.get(k)?.pos))
    }

    /// Makes frame `i` whole: its tail copied into its slot (`buf`). `false` if that failed
    /// (the tail is not all in guest memory): the caller drops the frame.
    pub(crate) fn make_whole(&mut self, i: usize, buf: &mut [u8], io: &dyn Gather) -> bool {
        let ok = self.get(i).is_none_or(|t| t.make_whole(io, buf));
        self.unset(i);
        ok
    }
}

/// How many chains from available position `pos` (`left` available) a frame of `total`
/// bytes (virtio-net header included) takes when [`crate::RxQueue`] delivers it there, as
/// its chain walk does; `None` when that cannot be told (it would not fit, or a chain is
/// bad: such a frame is not delivered there, or not whole).
pub(crate) fn chains_for<M: GuestMemory, Q: QueueT>(
    mem: &M,
    queue: &Q,
    pos: u16,
    left: u16,
    total: usize,
    mrg: bool,
) -> Option<u16> {
    let mut off = 0usize;
    let mut k = 0u16;
    while off < total {
        if k == left || (!mrg && k == 1) || usize::from(k) >= usize::from(queue.size()) {
            return None;
        }
        let mut h = [0u16; 1];
        ring::avail_heads(mem, queue, pos.wrapping_add(k), &mut h).ok()?;
        k += 1;
        ring::walk(mem, queue, h[0], |d| {
            if !d.is_write_only() {
                return Err(crate::stats::DropCause::ChainWrongDirection);
            }
            off += (d.len as usize).min(total - off);
            Ok(off < total)
        })
        .ok()?;
    }
    Some(k)
}

/// Whether a packet from the host link may stay scattered: TCP, unfragmented, without
/// IPv6 extension headers, whose way to the guest reads nothing past its headers (a
/// checksum request the guest takes as it is, at TCP's place; a super-packet the guest
/// takes). `ip`: the IP packet (its head is what is read), `hdr`: the link's virtio-net
/// header, if it has one.
pub(crate) fn splittable(o: &Offloads, hdr: Option<&VirtioNetHdr>, ip: &[u8]) -> bool {
    if let Some(h) = hdr {
        let needs_csum = h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
        if h.gso_type != VIRTIO_NET_HDR_GSO_NONE && !(needs_csum && o.rx_takes(h.gso_type)) {
            return false;
        }
        if needs_csum {
            // Otherwise the bridge completes the checksum over the whole packet.
            return o.rx_csum
                && offload::std_layout_l3(ip, h.csum_start, h.csum_offset) == Some(ip_proto::TCP);
        }
    }
    match ip.first().map(|b| b >> 4) {
        Some(4) => ::wire::ipv4::Ipv4Packet::new_checked(ip)
            .is_ok_and(|p| !p.is_fragment() && p.protocol() == ip_proto::TCP),
        Some(6) => ::wire::ipv6::Ipv6Packet::new_checked(ip)
            .is_ok_and(|p| p.next_header() == ip_proto::TCP),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(frag: bool) -> Vec<u8> {
        let mut p = vec![0u8; 3000];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&3000u16.to_be_bytes());
        p[6] = if frag { 0x20 } else { 0x40 };
        p[8] = 64;
        p[9] = ip_proto::TCP;
        p[32] = 0x50;
        p
    }

    #[test]
    fn only_unfragmented_tcp_the_guest_takes_as_it_is_stays_scattered() {
        let o = Offloads::default();
        assert!(splittable(&o, None, &tcp4(false)));
        assert!(!splittable(&o, None, &tcp4(true)));
        let mut udp = tcp4(false);
        udp[9] = ip_proto::UDP;
        assert!(!splittable(&o, None, &udp));
        // A checksum request the guest does not take: the bridge completes it.
        let h = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 16,
            ..VirtioNetHdr::default()
        };
        assert!(!splittable(&o, Some(&h), &tcp4(false)));
        let o = Offloads {
            rx_csum: true,
            ..Offloads::default()
        };
        assert!(splittable(&o, Some(&h), &tcp4(false)));
        // Not at TCP's place.
        let off = VirtioNetHdr {
            csum_offset: 6,
            ..h
        };
        assert!(!splittable(&o, Some(&off), &tcp4(false)));
        // IPv6: TCP right after the fixed header only.
        let mut p6 = vec![0u8; 3000];
        p6[0] = 0x60;
        p6[4..6].copy_from_slice(&2960u16.to_be_bytes());
        p6[6] = ip_proto::TCP;
        assert!(splittable(&o, None, &p6));
        p6[6] = 0; // hop-by-hop options first
        assert!(!splittable(&o, None, &p6));
    }
}
