//! [`RxEngine`]: one batch host → guest. The [`HostLink`] is read into a batch, the packets go
//! through `Nat::inbound_batch_with`, get an Ethernet header, and [`RxQueue`] writes them into
//! the guest's RX chains. The NAT is passed in for one step only.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use nat::{Direction, Instant, L4Checksum, Nat, Verdict};
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::Error;
use crate::config::MAX_BATCH;
use crate::core::lock;
use crate::device::{VIRTIO_NET_HDR_LEN, VirtioNetHdr};
use crate::dns_relay::SharedRelay;
use crate::frame::FrameBatch;
use crate::host::{Gather, HostLink};
use crate::offload::{self, Offloads};
use crate::ring;
use crate::rx_queue::{RxOutcome, RxQueue, Scattered};
use crate::rx_split::{self, RX_HEAD, RxSplit};
use crate::stats::{DropCause, Stats};
use crate::too_big::TooBigAnswers;
use crate::tx_engine::NAT_CHUNK;
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, MacAddr, set_ethertype_for_ip};

/// The RX side for one device: [`RxEngine::receive`], [`RxEngine::translate`] (under the NAT
/// lock), then [`RxEngine::deliver`] until [`RxEngine::pending`] is 0.
#[derive(Debug)]
pub struct RxEngine {
    rx_queue: RxQueue,
    batch: FrameBatch,
    mtu: usize,
    gateway_mac: MacAddr,
    offloads: Offloads,
    /// Per received packet (from the batch cursor on): checksum mode for the NAT.
    nat_l4: Vec<L4Checksum>,
    verdicts: Vec<Verdict>,
    /// The DNS relay (answers from an IPv4 upstream to IPv6 queries), shared with the TX side.
    dns_relay: Option<SharedRelay>,
    /// Packet Too Big / fragmentation needed for packets over `mtu` (see
    /// [`RxEngine::with_too_big_answers`]); `None`: counted only.
    too_big: Option<TooBigAnswers>,
    /// The largest IP packet read from the host link.
    max_packet: usize,
    /// The batch's frames whose tail is in the guest's RX buffers (see [`crate::rx_split`]).
    split: RxSplit,
    /// See [`RxEngine::set_shared_reads`].
    shared_reads: bool,
}

impl RxEngine {
    /// An engine reading up to `batch_size` (at most [`MAX_BATCH`]) packets of at most
    /// `max_packet` bytes from the host, delivering those within `mtu` with Ethernet source
    /// `gateway_mac`.
    pub fn new(
        rx_queue: RxQueue,
        batch_size: usize,
        max_packet: usize,
        mtu: usize,
        gateway_mac: MacAddr,
    ) -> Self {
        let batch_size = batch_size.clamp(1, MAX_BATCH);
        RxEngine {
            rx_queue,
            // The virtio-net header's room on top: the size of a port's inbox buffers, so
            // that a packet for another guest on a network moves by buffer (no copy).
            batch: FrameBatch::new(batch_size, max_packet + ETH_HLEN + VIRTIO_NET_HDR_LEN),
            mtu,
            gateway_mac,
            offloads: Offloads::default(),
            nat_l4: Vec::with_capacity(batch_size),
            verdicts: vec![Verdict::Forward; batch_size],
            dns_relay: None,
            too_big: None,
            max_packet,
            split: RxSplit::default(),
            shared_reads: false,
        }
    }

    /// Answers a packet from the host that is larger than the MTU (and not a GSO super-packet
    /// the guest takes) as the router in front of the guest's link: ICMPv6 Packet Too Big
    /// from `gateway6` (RFC 4443 3.2; `None`: IPv6 off, no answer), ICMP fragmentation needed
    /// from `gateway4` for IPv4 with DF (RFC 1191), MTU = the guest MTU, translated by the NAT
    /// outbound and sent to the host link by [`RxEngine::send_answers`], at most
    /// [`crate::TOO_BIG_ANSWERS_PER_SEC`] per second (burst [`crate::TOO_BIG_ANSWER_BURST`]).
    /// Without this, such packets are only counted ([`DropCause::TooBig`]; they still are).
    pub fn with_too_big_answers(mut self, gateway4: Ipv4Addr, gateway6: Option<Ipv6Addr>) -> Self {
        let mtu = u16::try_from(self.mtu).unwrap_or(u16::MAX);
        let mut a = TooBigAnswers::new(gateway4, gateway6, mtu);
        a.set_host_hdr_len(self.offloads.host_hdr_len());
        self.too_big = Some(a);
        self
    }

    /// Sends the answers [`RxEngine::translate`] built (see
    /// [`RxEngine::with_too_big_answers`]) to the host link.
    ///
    /// # Errors
    ///
    /// [`Error::HostLink`] when the link failed.
    pub fn send_answers(&mut self, host: &dyn HostLink, stats: &mut Stats) -> Result<(), Error> {
        match self.too_big.as_mut() {
            Some(a) => a.send(host, stats),
            None => Ok(()),
        }
    }

    /// Translates NAT44's answers to the DNS relay back to IPv6 through `relay` (shared with
    /// the TX side).
    pub(crate) fn with_dns_relay(mut self, relay: Option<SharedRelay>) -> Self {
        self.dns_relay = relay;
        self
    }

    /// Uses the negotiated `offloads` (see [`Offloads::negotiate`]): packets from the host
    /// link then carry a virtio-net header if [`Offloads::host_hdr`], and GSO super-packets
    /// pass to a guest that accepted them.
    pub fn with_offloads(mut self, offloads: Offloads) -> Self {
        self.offloads = offloads;
        if let Some(a) = self.too_big.as_mut() {
            a.set_host_hdr_len(offloads.host_hdr_len());
        }
        self
    }

    /// The most packets one [`RxEngine::receive`] reads.
    pub fn capacity(&self) -> usize {
        self.batch.capacity()
    }

    /// Frames received but not yet delivered to the guest.
    pub fn pending(&self) -> usize {
        self.batch.pending()
    }

    /// The received batch (a network's dispatch moves frames for other ports out of it).
    pub(crate) fn batch_mut(&mut self) -> &mut FrameBatch {
        &mut self.batch
    }

    /// The RX queue (for [`RxQueue::arm`] and [`RxQueue::fill`] with other batches).
    pub fn rx_queue(&mut self) -> &mut RxQueue {
        &mut self.rx_queue
    }

    /// Reads a batch from the host link, if the previous one was delivered. Returns how many
    /// packets arrived.
    ///
    /// # Errors
    ///
    /// [`Error::HostLink`] when the link failed (`WouldBlock` is 0 packets; a packet too big
    /// for the buffer is counted as [`DropCause::TooBig`]).
    pub fn receive(&mut self, host: &dyn HostLink, stats: &mut Stats) -> Result<usize, Error> {
        if self.batch.pending() > 0 {
            return Ok(0);
        }
        self.batch.clear();
        let res = match self.batch.capacity() {
            0..=1 => self.recv_n::<1>(host),
            2..=8 => self.recv_n::<8>(host),
            9..=64 => self.recv_n::<64>(host),
            _ => self.recv_n::<MAX_BATCH>(host),
        };
        match res {
            Ok(n) => {
                stats.from_host += n as u64;
                Ok(n)
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(0),
                io::ErrorKind::InvalidData => {
                    stats.drop(DropCause::TooBig);
                    Ok(0)
                }
                _ => Err(Error::HostLink(e)),
            },
        }
    }

    fn recv_n<const N: usize>(&mut self, host: &dyn HostLink) -> io::Result<usize> {
        let cap = self.batch.capacity().min(N);
        let mut lens = [0usize; N];
        let mut bufs: [&mut [u8]; N] = std::array::from_fn(|_| Default::default());
        // With a header, it lands in the last 12 bytes of the Ethernet header's room.
        let room = ETH_HLEN - self.offloads.host_hdr_len();
        for (slot, buf) in bufs.iter_mut().zip(self.batch.free_bufs(room)) {
            *slot = buf;
        }
        let n = host
            .recv_batch(&mut bufs[..cap], &mut lens[..cap])?
            .min(cap);
        self.batch.commit_received(room, &lens[..n]);
        Ok(n)
    }

    /// Whether a read may put a packet's tail into the guest's RX buffers: packets longer
    /// than the head arrive (a guest taking super-packets, or a large MTU), and the last
    /// batch carried none for other guests of a network.
    pub(crate) fn scatters(&self) -> bool {
        self.max_packet > rx_split::BULK && !self.shared_reads
    }

    /// Whether the last batch read carried packets for other guests of a network: then the
    /// next ones are read into the engine's own buffers (a packet for another guest moves
    /// on by buffer; read into this guest's memory it would be copied back out).
    pub(crate) fn set_shared_reads(&mut self, on: bool) {
        self.shared_reads = on;
    }

    /// Whether frames of the batch wait whose tail is in the guest's RX buffers: those
    /// buffers must not take anything else first (deliver this batch before any other).
    #[cfg(test)]
    pub(crate) fn scattered_pending(&self) -> bool {
        self.split.any() && self.batch.pending() > 0
    }

    /// As [`RxEngine::receive`], but a packet longer than [`RX_HEAD`] that follows one longer
    /// than [`rx_split::BULK`] (a bulk transfer) is read with its tail straight into the
    /// guest's RX buffers through `io` ([`crate::HostLink::recv_scatter`]): the chains its
    /// delivery will take are reserved first (from the queue's next available position,
    /// after those the frames read before it take). Anything but unfragmented TCP is made
    /// whole at once ([`rx_split::splittable`]). One read per packet.
    ///
    /// # Errors
    ///
    /// As [`RxEngine::receive`].
    pub(crate) fn receive_scattered<M: GuestMemory, Q: QueueT>(
        &mut self,
        host: &dyn HostLink,
        io: &dyn Gather,
        mem: &M,
        queue: &Q,
        stats: &mut Stats,
    ) -> Result<usize, Error> {
        if self.batch.pending() > 0 {
            return Ok(0);
        }
        self.batch.clear();
        self.split.clear();
        self.split.prepare(self.batch.capacity());
        let hl = self.offloads.host_hdr_len();
        let room = ETH_HLEN - hl;
        let ghl = self.rx_queue.hdr_len();
        let mrg = self.rx_queue.mrg();
        let guest_len = |len: usize| ghl + ETH_HLEN + len.saturating_sub(hl);
        let head_len = ghl + ETH_HLEN + RX_HEAD;
        let need = guest_len(hl + self.max_packet);
        let next = queue.next_avail();
        // Chains available from `next` on (read once, when first needed).
        let mut avail: Option<u16> = None;
        // Chains the frames before `tracked` take when delivered; `None`: not known (no
        // more reservations in this batch).
        let mut taken: Option<u16> = Some(0);
        let mut tracked = 0usize;
        let mut got = 0usize;
        for _ in 0..self.batch.capacity() {
            let i = self.batch.len();
            let mut reserved = false;
            if self.split.hint
                && let Some(mut t) = taken
            {
                let left = *avail
                    .get_or_insert_with(|| ring::available_from(mem, queue, next).unwrap_or(0));
                while tracked < i {
                    let len = self.batch.frame(tracked).map_or(0, <[u8]>::len);
                    let c = if len == 0 {
                        Some(0)
                    } else {
                        rx_split::chains_for(
                            mem,
                            queue,
                            next.wrapping_add(t),
                            left.saturating_sub(t),
                            guest_len(len),
                            mrg,
                        )
                    };
                    match c {
                        Some(c) => t += c,
                        None => break,
                    }
                    tracked += 1;
                }
                if tracked < i {
                    taken = None;
                } else {
                    taken = Some(t);
                    reserved = self.split.slot_mut(i).is_some_and(|r| {
                        r.reserve(
                            mem,
                            queue,
                            next.wrapping_add(t),
                            left.saturating_sub(t),
                            need,
                            head_len,
                            mrg,
                        )
                    });
                }
            }
            let Some(buf) = self.batch.next_buf() else {
                break;
            };
            let mut res = Err(io::Error::from(io::ErrorKind::InvalidInput));
            if reserved
                && let Some(t) = self.split.slot_mut(i)
                && let Some(head) = buf.get_mut(room..room + hl + RX_HEAD)
            {
                res = io.scatter(head, t.tail());
            }
            if res
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::InvalidInput)
            {
                // Not reserved, or the reservation is not guest memory: read it here.
                reserved = false;
                let mut lens = [0usize];
                res = match buf.get_mut(room..) {
                    Some(b) => match host.recv_batch(&mut [b], &mut lens) {
                        Ok(0) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                        Ok(_) => Ok(lens[0]),
                        Err(e) => Err(e),
                    },
                    None => Err(io::Error::from(io::ErrorKind::WouldBlock)),
                };
            }
            let len = match res {
                Ok(len) => len,
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => break,
                    io::ErrorKind::InvalidData => {
                        stats.drop(DropCause::TooBig);
                        continue;
                    }
                    _ if got == 0 => return Err(Error::HostLink(e)),
                    // The next call reports it.
                    _ => break,
                },
            };
            got += 1;
            stats.from_host += 1;
            self.batch.commit(room, len);
            let spilled = len > hl + RX_HEAD;
            // Reserve for the next read after a bulk-sized packet only: a reservation walks
            // the chains a largest packet would take.
            self.split.hint = len > hl + rx_split::BULK;
            if !(reserved && spilled) {
                continue;
            }
            let Some(t) = self.split.slot_mut(i) else {
                continue;
            };
            let tail = len - hl - RX_HEAD;
            t.trim(guest_len(len), tail);
            (t.at, t.len) = (room + hl + RX_HEAD, tail);
            let chains = t.chain_count() as u16;
            self.split.set(i);
            let Some((buf, start, flen)) = self.batch.slot_mut(i) else {
                continue;
            };
            let hdr = if hl > 0 {
                buf.get(start..start + hl).and_then(VirtioNetHdr::parse)
            } else {
                None
            };
            let ip = buf.get(start + hl..start + flen).unwrap_or_default();
            let keep = (hl == 0 || hdr.is_some())
                && rx_split::splittable(&self.offloads, hdr.as_ref(), ip);
            if !keep && !self.split.make_whole(i, buf, io) {
                // Its tail is not in guest memory after all: lost.
                stats.drop(DropCause::ChainOutOfBounds);
                self.batch.drop_frame(i);
                continue;
            }
            // Whole or not, its delivery takes the chains it was read into.
            if let Some(t) = taken.as_mut() {
                *t = t.wrapping_add(chains);
                tracked = i + 1;
            }
        }
        Ok(got)
    }

    /// Runs the received packets through the NAT (one batch call) and puts an Ethernet header
    /// (gateway → `guest_mac`, EtherType by the packet's IP version) in front of those that
    /// pass.
    pub fn translate(
        &mut self,
        nat: &mut Nat,
        now: Instant,
        guest_mac: MacAddr,
        stats: &mut Stats,
    ) {
        self.translate_with(nat, now, guest_mac, None, stats);
    }

    /// As [`RxEngine::translate`]; `io` makes a scattered frame whole where its payload is
    /// read (an answer to the DNS relay).
    pub(crate) fn translate_with(
        &mut self,
        nat: &mut Nat,
        now: Instant,
        guest_mac: MacAddr,
        io: Option<&dyn Gather>,
        stats: &mut Stats,
    ) {
        let mut eth = [0u8; ETH_HLEN];
        eth[..6].copy_from_slice(&guest_mac.0);
        eth[6..12].copy_from_slice(&self.gateway_mac.0);
        eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let first = self.batch.cursor();
        let count = self.batch.len() - first;
        self.check_headers(first, stats);
        let mut done = 0;
        while done < count {
            let end = (done + NAT_CHUNK).min(count);
            // Only the packets still there (a dropped one would count as malformed in the
            // NAT's own counters); `at[k]` is packet k's place in the chunk.
            let mut pkts: [&mut [u8]; NAT_CHUNK] = Default::default();
            let mut l4 = [L4Checksum::Complete; NAT_CHUNK];
            let mut at = [0usize; NAT_CHUNK];
            let mut k = 0;
            for (j, (buf, start, len)) in self
                .batch
                .slots_mut()
                .skip(first + done)
                .take(end - done)
                .enumerate()
            {
                if len > 0
                    && start >= ETH_HLEN
                    && let Some(p) = buf.get_mut(start..start + len)
                    && let Some(slot) = pkts.get_mut(k)
                {
                    *slot = p;
                    l4[k] = self
                        .nat_l4
                        .get(done + j)
                        .copied()
                        .unwrap_or(L4Checksum::Complete);
                    at[k] = j;
                    k += 1;
                }
            }
            let mut verdicts = [Verdict::Forward; NAT_CHUNK];
            nat.inbound_batch_with(&mut pkts[..k], &l4[..k], now, &mut verdicts[..k]);
            for (v, &j) in verdicts[..k].iter().zip(&at[..k]) {
                if let Some(out) = self.verdicts.get_mut(done + j) {
                    *out = *v;
                }
            }
            done = end;
        }
        for j in 0..count {
            let i = first + j;
            let gso = self.batch.header(i).gso_type != 0;
            let Some((buf, start, mut len)) = self.batch.slot_mut(i) else {
                continue;
            };
            if len == 0 || start < ETH_HLEN {
                continue;
            }
            // An answer to the DNS relay: back to IPv6, its checksum complete.
            let mut relayed = false;
            if let Some(relay) = &self.dns_relay
                && matches!(self.verdicts[j], Verdict::Forward)
                && relay.is_for_relay(buf.get(start..start + len).unwrap_or(&[]))
            {
                // The relay rewrites the whole packet (DNS over TCP may be scattered).
                if self.split.get(i).is_some()
                    && !io.is_some_and(|io| self.split.make_whole(i, buf, io))
                {
                    self.split.unset(i);
                    stats.drop(DropCause::ChainOutOfBounds);
                    self.batch.drop_frame(i);
                    continue;
                }
                let r = if gso {
                    Err(DropCause::DnsRelay)
                } else {
                    let ms = now.as_millis();
                    lock(&relay.table).inbound(buf, (start, len), self.mtu, ms)
                };
                match r {
                    Ok(n) => (len, relayed) = (n, true),
                    Err(c) => {
                        stats.drop(c);
                        self.batch.drop_frame(i);
                        continue;
                    }
                }
            }
            if relayed {
                self.batch.set_header(i, VirtioNetHdr::default());
            }
            let Some((buf, start, _)) = self.batch.slot_mut(i) else {
                continue;
            };
            match self.verdicts[j] {
                Verdict::Forward | Verdict::Hairpin if len <= self.mtu || gso => {
                    buf[start - ETH_HLEN..start].copy_from_slice(&eth);
                    if buf.get(start).is_some_and(|b| b >> 4 == 6) {
                        buf[start - 2..start].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
                    }
                    self.batch.set_bounds(i, start - ETH_HLEN, len + ETH_HLEN);
                }
                Verdict::Forward | Verdict::Hairpin => {
                    stats.drop(DropCause::TooBig);
                    // The answer quotes more than the head holds: the tail first.
                    let whole = self.split.get(i).is_none()
                        || io.is_some_and(|io| self.split.make_whole(i, buf, io));
                    if whole
                        && let Some(a) = self.too_big.as_mut()
                        && let Some(p) = buf.get(start..start + len)
                    {
                        a.answer(p, nat, now, stats);
                    }
                    self.split.unset(i);
                    self.batch.drop_frame(i);
                }
                // The NAT kept a copy (a fragment before its first fragment).
                Verdict::Held => self.batch.drop_frame(i),
                _ => {
                    stats.drop(DropCause::NatInbound);
                    self.batch.drop_frame(i);
                }
            }
        }
        // Fragments the NAT held and has now translated go into the free slots; what does not
        // fit stays with the NAT for the next batch.
        while let Some(buf) = self.batch.next_buf() {
            let Some(room) = buf.get_mut(ETH_HLEN..) else {
                break;
            };
            let Some(r) = nat.poll_released(Direction::Inbound, room) else {
                break;
            };
            let ok = matches!(r.verdict, Verdict::Forward | Verdict::Hairpin);
            let relayed = self.dns_relay.as_ref().is_some_and(|d| {
                d.is_for_relay(buf.get(ETH_HLEN..ETH_HLEN + r.len).unwrap_or(&[]))
            });
            if relayed {
                // A fragment of an answer to the DNS relay: not translated.
                stats.drop(DropCause::DnsRelay);
            } else if ok && r.len <= self.mtu {
                buf[..ETH_HLEN].copy_from_slice(&eth);
                set_ethertype_for_ip(buf);
                self.batch.commit(0, ETH_HLEN + r.len);
            } else {
                stats.drop(if ok {
                    DropCause::TooBig
                } else {
                    DropCause::NatInbound
                });
            }
        }
    }

    /// Reads the virtio-net header in front of each received packet (if the link has one),
    /// re-frames the slot to the IP packet, and records the header the guest gets and how
    /// the NAT must read the checksum. Bad headers are counted and the packet dropped.
    fn check_headers(&mut self, first: usize, stats: &mut Stats) {
        self.nat_l4.clear();
        let hl = self.offloads.host_hdr_len();
        for i in first..self.batch.len() {
            let mut l4 = L4Checksum::Complete;
            let mut guest_hdr = None;
            if let Some((buf, start, len)) = self.batch.slot_mut(i)
                && hl > 0
                && len > 0
            {
                let res = match (
                    buf.get(start..start + hl).and_then(VirtioNetHdr::parse),
                    len.checked_sub(hl),
                ) {
                    (Some(h), Some(plen)) => {
                        let pkt = &mut buf[start + hl..start + hl + plen];
                        offload::check_rx(&self.offloads, &h, pkt).map(|r| (r, plen))
                    }
                    _ => Err(DropCause::Malformed),
                };
                match res {
                    Ok(((kind, h), plen)) => {
                        l4 = kind.l4();
                        guest_hdr = Some((h, start + hl, plen));
                    }
                    Err(c) => {
                        stats.drop(c);
                        self.batch.drop_frame(i);
                    }
                }
            }
            if let Some((h, start, plen)) = guest_hdr {
                self.batch.set_bounds(i, start, plen);
                self.batch.set_header(i, h);
            }
            // IPv6 multicast from the host link (the host's own stack announcing itself on
            // the TUN): nothing the NAT could map.
            if let Some((buf, start, len)) = self.batch.slot_mut(i)
                && len > 0
                && is_ipv6_multicast(buf.get(start..start + len).unwrap_or(&[]))
            {
                stats.drop(DropCause::Ipv6Ignored);
                self.batch.drop_frame(i);
            }
            self.nat_l4.push(l4);
        }
    }

    /// Delivers pending frames to the RX queue (see [`RxQueue::fill`]).
    ///
    /// # Errors
    ///
    /// As [`RxQueue::fill`].
    pub fn deliver<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        stats: &mut Stats,
    ) -> Result<RxOutcome, Error> {
        self.deliver_with(mem, queue, None, stats)
    }

    /// As [`RxEngine::deliver`], for a batch [`RxEngine::receive_scattered`] read through
    /// `io` (without it, scattered frames are dropped).
    pub(crate) fn deliver_with<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        io: Option<&dyn Gather>,
        stats: &mut Stats,
    ) -> Result<RxOutcome, Error> {
        if io.is_none() && self.split.any() {
            // Cannot be: scattered frames come with their link's I/O.
            for i in self.batch.cursor()..self.batch.len() {
                if self.split.get(i).is_some() {
                    self.split.unset(i);
                    stats.drop(DropCause::ChainOutOfBounds);
                    self.batch.drop_frame(i);
                }
            }
        }
        let split = match io {
            Some(io) if self.split.any() => Some(Scattered {
                split: &mut self.split,
                io,
            }),
            _ => None,
        };
        self.rx_queue
            .fill_with(mem, queue, &mut self.batch, split, stats)
    }

    /// Makes every scattered frame still waiting whole: at the end of a driver's event,
    /// since the reserved chains are only known to be the guest's while the driver holds the
    /// queue (a frontend may stop and restart the ring between events).
    pub(crate) fn make_all_whole(&mut self, io: Option<&dyn Gather>, stats: &mut Stats) {
        if !self.split.any() {
            return;
        }
        for i in self.batch.cursor()..self.batch.len() {
            if !self.make_whole(i, io) {
                stats.drop(DropCause::ChainOutOfBounds);
                self.batch.drop_frame(i);
            }
        }
    }

    /// Makes scattered frame `i` whole (before it moves to another port's inbox); `false`
    /// (the caller drops it) if its tail is not in guest memory.
    pub(crate) fn make_whole(&mut self, i: usize, io: Option<&dyn Gather>) -> bool {
        if self.split.get(i).is_none() {
            return true;
        }
        let ok = match (io, self.batch.slot_mut(i)) {
            (Some(io), Some((buf, _, _))) => self.split.make_whole(i, buf, io),
            _ => false,
        };
        self.split.unset(i);
        ok
    }
}

/// Whether `packet` is IPv6 to a multicast address (`ff00::/8`).
fn is_ipv6_multicast(packet: &[u8]) -> bool {
    packet.len() >= ::wire::ipv6::HEADER_LEN
        && packet[0] >> 4 == 6
        && packet[crate::wire::IPV6_DST] == 0xff
}
