//! The RX half of the driver: queue 0 kept full of device-writable buffers, used buffers
//! collected, `MRG_RXBUF` frames reassembled from `num_buffers`, and each frame written to the
//! [`FrameIo`] (straight from guest memory when it can).
//!
//! `DATA_VALID`: with GUEST_CSUM a device may hand over a TCP or UDP frame flagged
//! `VIRTIO_NET_HDR_F_DATA_VALID` and leave its checksum unwritten (passt's vhost-user mode
//! does). A guest's virtio-net driver then skips the check (`CHECKSUM_UNNECESSARY`), but a TAP
//! ignores that flag and the kernel drops the segment (`TcpInCsumErrors`). The driver turns
//! such a frame into the equivalent the TAP does take: `NEEDS_CSUM` with `csum_start` and
//! `csum_offset` of the TCP/UDP checksum field, which gets the pseudo-header sum — a partial
//! checksum, as the kernel itself hands one over. Local delivery checks nothing (as with
//! `DATA_VALID`), and a forward would complete it correctly.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use wire::{
    EthernetFrame, Ipv4Packet, Ipv6Packet, checksum, ethernet, ethertype, ip_proto, ipv4, ipv6,
};

use super::gro::{self, Gro};
use super::net_hdr::{F_DATA_VALID as HDR_F_DATA_VALID, F_NEEDS_CSUM as HDR_F_NEEDS_CSUM};
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
    /// Whether that frame has a partial checksum (`NEEDS_CSUM`, or `DATA_VALID` rewritten).
    partial: bool,
    /// Receive coalescing of TCP segments with partial checksums (with the TAP's virtio-net
    /// header only: it carries the GSO type).
    gro: Option<Gro>,
}

impl<F: FrameIo> RxDriver<F> {
    /// The RX ring for `guest`, filled: every descriptor written once (buffer `i` is
    /// descriptor `i`), all of them available and published (kicking the device if it asks).
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
        let mut rx = Self {
            ring: DriverRing::new(2 * pair + RX_QUEUE, size, guest.features)?,
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
            partial: false,
            gro: guest.vnet_hdr().then(Gro::new),
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
                    self.partial = hdr[0] & HDR_F_NEEDS_CSUM != 0;
                    if self.vnet
                        && hdr[0] & (HDR_F_NEEDS_CSUM | HDR_F_DATA_VALID) == HDR_F_DATA_VALID
                        && self.data_valid_to_partial(id, len)?
                    {
                        self.stats.rx_data_valid.fetch_add(1, Ordering::Relaxed);
                        self.partial = true;
                    }
                }
                self.pending.push((id, len));
                if self.pending.len() == self.expected {
                    let mut frame = std::mem::take(&mut self.frame);
                    let done = match self.pending[..] {
                        [(id, len)] if self.partial && !self.gso && self.gro.is_some() => {
                            match self.coalesce(id, len, &mut frame) {
                                // Not a segment GRO takes (UDP, a pure ACK): what GRO holds
                                // goes first, then the frame as any other, from guest memory.
                                Ok(false) => {
                                    self.flush_gro();
                                    self.deliver(&self.pending, &mut frame, false)
                                }
                                done => done.map(|_| ()),
                            }
                        }
                        _ => {
                            self.flush_gro();
                            self.deliver(&self.pending, &mut frame, self.gso)
                        }
                    };
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
            // The end of a pass, as the end of a guest's NAPI poll: what GRO holds goes out.
            self.flush_gro();
            if recycled > 0 {
                self.ring.notify(&self.mem, &self.kick, &self.stats)?;
            }
            if !self.ring.arm_interrupt(&self.mem)? {
                return Ok(());
            }
        }
    }

    /// The one-buffer frame in buffer `id` (`len` bytes used, a partial checksum) through
    /// GRO: merged into the frame it holds, or held. Returns `false`, having read only its
    /// headers, when it is not a segment GRO takes.
    fn coalesce(&mut self, id: u16, len: u32, frame: &mut Vec<u8>) -> anyhow::Result<bool> {
        let mut head = [0u8; gro::HEAD_LEN];
        let n = (len as usize).min(head.len());
        let head = &mut head[..n];
        self.mem
            .read_slice(head, GuestAddress(self.buf_addr(id)))
            .context("reading rx headers")?;
        if !gro::takes(head, len as usize) {
            return Ok(false);
        }
        frame.clear();
        frame.resize(len as usize, 0);
        self.mem
            .read_slice(frame, GuestAddress(self.buf_addr(id)))
            .context("reading rx buffer")?;
        let (io, stats) = (&*self.io, &*self.stats);
        let Some(gro) = self.gro.as_mut() else {
            return Ok(false);
        };
        let mut write = |f: &[u8], segments: usize| write_coalesced(io, stats, f, segments);
        if !gro.offer(frame, &mut write) {
            // Cannot be (`takes` said it does); written as it came all the same.
            write(frame, 1);
        }
        Ok(true)
    }

    /// Writes what GRO holds.
    fn flush_gro(&mut self) {
        let (io, stats) = (&*self.io, &*self.stats);
        if let Some(gro) = self.gro.as_mut() {
            gro.flush(&mut |f: &[u8], segments: usize| write_coalesced(io, stats, f, segments));
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

    /// Rewrites the `DATA_VALID` frame starting in buffer `id` (`len` bytes used) as a
    /// `NEEDS_CSUM` one (see the module docs) when it is TCP or UDP over IPv4 (not a
    /// fragment) or IPv6 (no extension header) and its headers lie in this buffer; returns
    /// whether it did.
    fn data_valid_to_partial(&self, id: u16, len: u32) -> anyhow::Result<bool> {
        let base = self.buf_addr(id);
        let mut b = [0u8; NET_HDR_LEN + 14 + 40];
        let n = (len as usize).min(b.len());
        let Some(head) = b.get_mut(..n) else {
            return Ok(false);
        };
        self.mem
            .read_slice(head, GuestAddress(base))
            .context("reading rx headers")?;
        let Some(p) = pseudo_header(&b[NET_HDR_LEN..n]) else {
            return Ok(false);
        };
        let field = NET_HDR_LEN + usize::from(p.csum_start) + usize::from(p.csum_offset);
        if field + 2 > len as usize {
            return Ok(false);
        }
        let mut hdr = [0u8; 6];
        hdr[0] = HDR_F_NEEDS_CSUM;
        // gso_type and hdr_len stay as they are (bytes 1..4); csum_start, csum_offset.
        self.mem
            .write_slice(&hdr[..1], GuestAddress(base))
            .context("writing rx header")?;
        hdr[2..4].copy_from_slice(&p.csum_start.to_le_bytes());
        hdr[4..6].copy_from_slice(&p.csum_offset.to_le_bytes());
        self.mem
            .write_slice(&hdr[2..6], GuestAddress(base + 6))
            .context("writing rx header")?;
        self.mem
            .write_slice(&p.sum.to_be_bytes(), GuestAddress(base + field as u64))
            .context("writing the partial checksum")?;
        Ok(true)
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

/// Writes `frame` (with its virtio-net header), `segments` segments of the device coalesced,
/// to the TAP and counts it.
fn write_coalesced<F: FrameIo>(io: &F, stats: &GuestStats, frame: &[u8], segments: usize) {
    let n = segments as u64;
    match io.send_frame(frame) {
        Ok(_) => {
            stats.rx_frames.fetch_add(n, Ordering::Relaxed);
            stats.rx_coalesced.fetch_add(n - 1, Ordering::Relaxed);
            // Without the virtio-net header and the headers of all but the first segment, as
            // the device wrote them.
            let headers = u64::from(u16::from_le_bytes([frame[2], frame[3]]));
            let bytes = (frame.len() - NET_HDR_LEN) as u64;
            let bytes = if segments > 1 {
                bytes + (n - 1) * headers
            } else {
                bytes
            };
            stats.rx_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        Err(e) => {
            stats.rx_tap_drops.fetch_add(n, Ordering::Relaxed);
            tracing::debug!("tap write of {} coalesced bytes: {e}", frame.len());
        }
    }
}

/// Where a frame's TCP/UDP checksum goes and its pseudo-header sum.
#[derive(Debug, PartialEq, Eq)]
struct Partial {
    /// Offset of the TCP/UDP header in the Ethernet frame.
    csum_start: u16,
    /// Offset of its checksum field in that header (16 TCP, 6 UDP).
    csum_offset: u16,
    /// The pseudo-header sum, folded to 16 bits, not complemented (what a partial checksum
    /// field holds).
    sum: u16,
}

/// The [`Partial`] of an Ethernet `frame`'s TCP or UDP segment over IPv4 (not a fragment) or
/// IPv6 (no extension header); `None` for anything else or when the headers are cut.
fn pseudo_header(frame: &[u8]) -> Option<Partial> {
    // Only the headers are at hand: the views are made unchecked, past a length check each.
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let ip = eth.payload();
    let (l3_len, proto, sum) = match eth.ethertype() {
        ethertype::IPV4 if ip.len() >= ipv4::HEADER_LEN => {
            let p = Ipv4Packet::new_unchecked(ip);
            let l3_len = p.header_len();
            if p.version() != 4 || l3_len < ipv4::HEADER_LEN || p.is_fragment() {
                return None;
            }
            let l4_len = usize::from(p.total_len()).checked_sub(l3_len)?;
            let sum = checksum::pseudo_header_v4(
                p.src_addr(),
                p.dst_addr(),
                p.protocol(),
                u16::try_from(l4_len).ok()?,
            );
            (l3_len, p.protocol(), sum)
        }
        ethertype::IPV6 if ip.len() >= ipv6::HEADER_LEN => {
            let p = Ipv6Packet::new_unchecked(ip);
            if p.version() != 6 {
                return None;
            }
            let sum = checksum::pseudo_header_v6(
                p.src_addr(),
                p.dst_addr(),
                p.next_header(),
                u32::from(p.payload_len()),
            );
            (ipv6::HEADER_LEN, p.next_header(), sum)
        }
        _ => return None,
    };
    let csum_offset = match proto {
        ip_proto::TCP => 16,
        ip_proto::UDP => 6,
        _ => return None,
    };
    Some(Partial {
        csum_start: u16::try_from(ethernet::HEADER_LEN + l3_len).ok()?,
        csum_offset,
        sum: checksum::fold(sum),
    })
}

/// Buffers recycled before the RX driver republishes mid-batch.
const RX_REFILL_BATCH: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_header_of_tcp_over_ipv4_and_udp_over_ipv6() {
        // Ethernet, IPv4 (IHL 5, total 40, TCP), 198.18.0.2 -> 192.168.64.2.
        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&40u16.to_be_bytes());
        f[23] = 6;
        f[26..30].copy_from_slice(&[198, 18, 0, 2]);
        f[30..34].copy_from_slice(&[192, 168, 64, 2]);
        // 0xc612 + 0x0002 + 0xc0a8 + 0x4002 + 6 + 20 = 0x1c6d8 -> 0xc6d9
        assert_eq!(
            pseudo_header(&f),
            Some(Partial {
                csum_start: 34,
                csum_offset: 16,
                sum: 0xc6d9
            })
        );
        // A fragment, or ICMP: left alone.
        f[20] = 0x20;
        assert_eq!(pseudo_header(&f), None);
        f[20] = 0;
        f[23] = 1;
        assert_eq!(pseudo_header(&f), None);

        let mut f = vec![0u8; 14 + 40];
        f[12..14].copy_from_slice(&[0x86, 0xdd]);
        f[14] = 0x60;
        f[18..20].copy_from_slice(&8u16.to_be_bytes());
        f[20] = 17;
        f[22..24].copy_from_slice(&[0x20, 0x01]); // 2001::
        f[52..54].copy_from_slice(&[0x00, 0x01]); // ...::1
        assert_eq!(
            pseudo_header(&f),
            Some(Partial {
                csum_start: 54,
                csum_offset: 6,
                sum: 0x2001 + 1 + 17 + 8
            })
        );
        assert_eq!(pseudo_header(&f[..30]), None);
    }
}
