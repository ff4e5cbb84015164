//! Per-batch processing shared by the threaded runner, benches and foreign event loops: the
//! TX engine (queue → gateway services → NAT → host link) and the RX engine (host link →
//! NAT → queue). Each step works on a whole batch; the NAT is passed in for one step only, so
//! a caller that shares it takes its lock once per batch.

use std::io;

use nat::{Instant, Nat, Verdict};
use virtio_queue::Queue;
use vm_memory::GuestMemory;

use crate::Error;
use crate::device::VIRTIO_NET_HDR_LEN;
use crate::frame::FrameBatch;
use crate::host::HostLink;
use crate::l2::{L2Services, TxAction};
use crate::runner::MAX_BATCH;
use crate::rx::{RxOutcome, RxPath};
use crate::stats::{DropCause, Stats};
use crate::tx::{TxOutcome, TxPath};
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, MacAddr};

/// The TX side for one device: [`TxEngine::pull`], then [`TxEngine::translate`] (under the
/// NAT lock), then [`TxEngine::push`].
#[derive(Debug)]
pub struct TxEngine {
    path: TxPath,
    l2: L2Services,
    input: FrameBatch,
    actions: Vec<TxAction>,
    forward: Vec<bool>,
}

impl TxEngine {
    /// An engine whose batches hold `batch_size` (at most [`MAX_BATCH`]) frames of at most
    /// `max_frame` bytes.
    pub fn new(path: TxPath, l2: L2Services, batch_size: usize, max_frame: usize) -> Self {
        let batch_size = batch_size.clamp(1, MAX_BATCH);
        TxEngine {
            path,
            l2,
            input: FrameBatch::new(batch_size, max_frame + VIRTIO_NET_HDR_LEN),
            actions: Vec::with_capacity(batch_size),
            forward: vec![false; batch_size],
        }
    }

    /// The gateway services (lease, learned MAC).
    pub fn l2(&self) -> &L2Services {
        &self.l2
    }

    /// Drains up to a batch of TX chains and classifies the frames; gateway replies go to
    /// `replies` (which must have room for a batch: every frame yields at most one reply).
    ///
    /// # Errors
    ///
    /// As [`TxPath::process`].
    pub fn pull<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        replies: &mut FrameBatch,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<TxOutcome, Error> {
        self.input.clear();
        self.actions.clear();
        let out = self.path.process(mem, queue, &mut self.input, stats)?;
        for i in 0..self.input.len() {
            let frame = self.input.frame(i).unwrap_or(&[]);
            let action = match replies.next_buf() {
                Some(buf) => self.l2.handle(frame, buf, now),
                None => TxAction::Drop(DropCause::LocalQueueFull),
            };
            match action {
                TxAction::Reply { len } => {
                    replies.commit(0, len);
                    stats.local_replies += 1;
                }
                TxAction::Drop(c) => stats.drop(c),
                TxAction::Nat { .. } | TxAction::Consumed => {}
            }
            self.actions.push(action);
        }
        Ok(out)
    }

    /// Runs the pulled packets through the NAT. Hairpinned packets go to `replies`.
    pub fn translate(
        &mut self,
        nat: &mut Nat,
        replies: &mut FrameBatch,
        now: Instant,
        stats: &mut Stats,
    ) {
        let eth = self.l2.eth_header_to_guest();
        for (i, a) in self.actions.iter().enumerate() {
            let fwd = &mut self.forward[i];
            *fwd = false;
            let TxAction::Nat { len } = *a else { continue };
            let Some(frame) = self.input.frame_mut(i) else {
                continue;
            };
            let Some(pkt) = frame.get_mut(ETH_HLEN..ETH_HLEN + len) else {
                continue;
            };
            match nat.outbound(pkt, now) {
                Verdict::Forward => *fwd = true,
                Verdict::Hairpin => {
                    frame[..ETH_HLEN].copy_from_slice(&eth);
                    if !replies.push(&frame[..ETH_HLEN + len]) {
                        stats.drop(DropCause::LocalQueueFull);
                    }
                }
                Verdict::Drop(_) => stats.drop(DropCause::NatOutbound),
            }
        }
    }

    /// Sends the translated packets to the host link in one batch.
    ///
    /// # Errors
    ///
    /// [`Error::HostLink`] when the link failed (not when it was merely full: that is
    /// counted as [`DropCause::HostFull`]).
    pub fn push(&mut self, host: &dyn HostLink, stats: &mut Stats) -> Result<(), Error> {
        // Stack arrays sized to the batch: no allocation, and no 4 KiB array to fill for a
        // batch of one.
        let r = match self.forward.len() {
            0..=1 => self.push_n::<1>(host, stats),
            2..=8 => self.push_n::<8>(host, stats),
            9..=64 => self.push_n::<64>(host, stats),
            _ => self.push_n::<MAX_BATCH>(host, stats),
        };
        self.actions.clear();
        r
    }

    fn push_n<const N: usize>(
        &mut self,
        host: &dyn HostLink,
        stats: &mut Stats,
    ) -> Result<(), Error> {
        let mut list: [&[u8]; N] = [&[]; N];
        let mut k = 0;
        for (i, a) in self.actions.iter().enumerate() {
            let TxAction::Nat { len } = *a else { continue };
            if !self.forward.get(i).copied().unwrap_or(false) {
                continue;
            }
            let pkt = self
                .input
                .frame(i)
                .and_then(|f| f.get(ETH_HLEN..ETH_HLEN + len));
            if let (Some(slot), Some(pkt)) = (list.get_mut(k), pkt) {
                *slot = pkt;
                k += 1;
            }
        }
        send_all(host, &list[..k], stats)
    }
}

/// The RX side for one device: [`RxEngine::receive`], [`RxEngine::translate`] (under the NAT
/// lock), then [`RxEngine::deliver`] until [`RxEngine::pending`] is 0.
#[derive(Debug)]
pub struct RxEngine {
    path: RxPath,
    batch: FrameBatch,
    mtu: usize,
    gateway_mac: MacAddr,
}

impl RxEngine {
    /// An engine reading up to `batch_size` (at most [`MAX_BATCH`]) packets of at most
    /// `max_packet` bytes from the host, delivering those within `mtu` with Ethernet source
    /// `gateway_mac`.
    pub fn new(
        path: RxPath,
        batch_size: usize,
        max_packet: usize,
        mtu: usize,
        gateway_mac: MacAddr,
    ) -> Self {
        let batch_size = batch_size.clamp(1, MAX_BATCH);
        RxEngine {
            path,
            batch: FrameBatch::new(batch_size, max_packet + ETH_HLEN),
            mtu,
            gateway_mac,
        }
    }

    /// Frames received but not yet delivered to the guest.
    pub fn pending(&self) -> usize {
        self.batch.pending()
    }

    /// The RX path (for [`RxPath::arm`] and [`RxPath::fill`] with other batches).
    pub fn path(&mut self) -> &mut RxPath {
        &mut self.path
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
        for (slot, buf) in bufs.iter_mut().zip(self.batch.free_bufs(ETH_HLEN)) {
            *slot = buf;
        }
        let n = host
            .recv_batch(&mut bufs[..cap], &mut lens[..cap])?
            .min(cap);
        self.batch.commit_received(ETH_HLEN, &lens[..n]);
        Ok(n)
    }

    /// Runs the received packets through the NAT and puts an Ethernet header (gateway →
    /// `guest_mac`) in front of those that pass.
    pub fn translate(
        &mut self,
        nat: &mut Nat,
        now: Instant,
        guest_mac: MacAddr,
        stats: &mut Stats,
    ) {
        let mut eth = [0u8; ETH_HLEN];
        eth[..6].copy_from_slice(&guest_mac.0);
        eth[6..12].copy_from_slice(&self.gateway_mac.0);
        eth[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        for i in self.batch.cursor()..self.batch.len() {
            let Some((buf, start, len)) = self.batch.slot_mut(i) else {
                continue;
            };
            if len == 0 || start < ETH_HLEN {
                continue;
            }
            let Some(pkt) = buf.get_mut(start..start + len) else {
                continue;
            };
            match nat.inbound(pkt, now) {
                Verdict::Forward | Verdict::Hairpin if len <= self.mtu => {
                    buf[start - ETH_HLEN..start].copy_from_slice(&eth);
                    self.batch.set_bounds(i, start - ETH_HLEN, len + ETH_HLEN);
                }
                Verdict::Forward | Verdict::Hairpin => {
                    stats.drop(DropCause::TooBig);
                    self.batch.drop_frame(i);
                }
                Verdict::Drop(_) => {
                    stats.drop(DropCause::NatInbound);
                    self.batch.drop_frame(i);
                }
            }
        }
    }

    /// Delivers pending frames to the RX queue (see [`RxPath::fill`]).
    ///
    /// # Errors
    ///
    /// As [`RxPath::fill`].
    pub fn deliver<M: GuestMemory>(
        &mut self,
        mem: &M,
        queue: &mut Queue,
        stats: &mut Stats,
    ) -> Result<RxOutcome, Error> {
        self.path.fill(mem, queue, &mut self.batch, stats)
    }
}

/// Sends `list`, counting what the link does not take.
fn send_all(host: &dyn HostLink, list: &[&[u8]], stats: &mut Stats) -> Result<(), Error> {
    let mut start = 0;
    let mut interrupted = 0;
    while start < list.len() {
        match host.send_batch(&list[start..]) {
            Ok(0) => {
                stats.drops[DropCause::HostFull.index()] += (list.len() - start) as u64;
                break;
            }
            Ok(n) => {
                stats.to_host += n as u64;
                start += n;
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock => {
                    stats.drops[DropCause::HostFull.index()] += (list.len() - start) as u64;
                    break;
                }
                io::ErrorKind::Interrupted if interrupted < MAX_INTERRUPTED => interrupted += 1,
                io::ErrorKind::Interrupted => {
                    stats.drops[DropCause::HostFull.index()] += (list.len() - start) as u64;
                    break;
                }
                io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                    stats.drop(DropCause::Malformed);
                    start += 1;
                }
                _ => return Err(Error::HostLink(e)),
            },
        }
    }
    Ok(())
}

/// Retries of an interrupted send before the rest of the batch is dropped.
const MAX_INTERRUPTED: u32 = 16;
