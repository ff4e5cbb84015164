//! [`TxEngine`]: one batch guest → host. [`TxQueue`] takes TX chains into a batch, the
//! [`Gateway`] answers what is for it, the rest goes through `Nat::outbound_batch_with` and on
//! to the [`HostLink`]. The NAT is passed in for one step only, so a caller that shares it
//! takes its lock once per batch.

use std::io;

use nat::{Direction, DropReason, Instant, L4Checksum, Nat, Verdict};
use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::config::MAX_BATCH;
use crate::core::lock;
use crate::device::{VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr};
use crate::dns_relay::SharedRelay;
use crate::frame::FrameBatch;
use crate::gateway::{Gateway, TxAction};
use crate::guest_state::GuestState;
use crate::host::{Gather, GuestSegment, HostLink};
use crate::offload::{self, FrameOffload, Offloads};
use crate::ring::UsedBatch;
use crate::stats::{DropCause, Stats};
use crate::switch::{Decision, PortId, Switch};
use crate::tx_queue::{TxOutcome, TxQueue};
use crate::tx_split::{MAX_TAIL, SplitRule, TxSplit};
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, set_ethertype_for_ip};
use crate::{Error, ring};
use ::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet, icmpv6, ip_proto};

/// The TX side for one device: [`TxEngine::pull`], then [`TxEngine::translate`] (under the
/// NAT lock), then [`TxEngine::push`].
#[derive(Debug)]
pub struct TxEngine {
    tx_queue: TxQueue,
    input: FrameBatch,
    actions: Vec<TxAction>,
    forward: Vec<bool>,
    offloads: Offloads,
    /// Largest frame without GSO: MTU + 14.
    max_plain: usize,
    /// Per input frame: what its virtio-net header asked for, and the header.
    kinds: Vec<(FrameOffload, VirtioNetHdr)>,
    /// Per NAT-bound frame (in order): its index in `input`, checksum mode and verdict.
    nat_idx: Vec<usize>,
    nat_l4: Vec<L4Checksum>,
    verdicts: Vec<Verdict>,
    /// Fragments the NAT held (they came before their first fragment) and has now released,
    /// translated, for the host link; the IP packet at offset 14 of each buffer.
    released: FrameBatch,
    /// The DNS relay (IPv6 queries to an IPv4 upstream), shared with the RX side.
    dns_relay: Option<SharedRelay>,
    /// On a network of several ports: the frames of the last [`TxEngine::pull`] the
    /// [`Switch`] sends to another port (their index in the batch, the port).
    switched: Vec<(usize, PortId)>,
    /// Head-only frames of the last fetch (their tails in guest memory, their chains held).
    split: TxSplit,
}

/// A port's view of its network's [`Switch`] for one TX batch (see [`TxEngine::pull`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SwitchView<'a> {
    /// Who is where.
    pub(crate) switch: &'a Switch,
    /// The sending port.
    pub(crate) port: PortId,
    /// Broadcast and multicast go to the other ports ([`crate::Network::set_guest_multicast`]).
    pub(crate) flood: bool,
}

impl SwitchView<'_> {
    /// The MAC of `owner` if it is another port than the sender.
    fn other_mac(&self, owner: Option<PortId>) -> Option<crate::wire::MacAddr> {
        owner
            .filter(|&q| q != self.port)
            .and_then(|q| self.switch.mac_of(q))
    }
}

impl TxEngine {
    /// An engine whose batches hold `batch_size` (at most [`MAX_BATCH`]) frames of at most
    /// `max_frame` bytes.
    pub fn new(tx_queue: TxQueue, batch_size: usize, max_frame: usize) -> Self {
        let batch_size = batch_size.clamp(1, MAX_BATCH);
        TxEngine {
            tx_queue,
            input: FrameBatch::new(batch_size, max_frame + VIRTIO_NET_HDR_LEN),
            actions: Vec::with_capacity(batch_size),
            forward: vec![false; batch_size],
            offloads: Offloads::default(),
            max_plain: max_frame,
            kinds: Vec::with_capacity(batch_size),
            nat_idx: Vec::with_capacity(batch_size),
            nat_l4: Vec::with_capacity(batch_size),
            verdicts: vec![Verdict::Forward; batch_size],
            released: FrameBatch::new(RELEASED_PER_BATCH, max_frame),
            dns_relay: None,
            switched: Vec::with_capacity(batch_size),
            split: TxSplit::new(batch_size),
        }
    }

    /// Lets large TCP frames bound beyond the guest's network go head-only by `rule` when
    /// fetched with a host link that gathers ([`crate::tx_split`]).
    pub(crate) fn with_split_rule(mut self, rule: SplitRule) -> Self {
        self.split.set_rule(Some(rule));
        self
    }

    /// Relays the gateway's [`TxAction::DnsRelay`] packets through `relay` (shared with the
    /// RX side's [`RxEngine::with_dns_relay`](crate::RxEngine)).
    pub(crate) fn with_dns_relay(mut self, relay: Option<SharedRelay>) -> Self {
        self.dns_relay = relay;
        self
    }

    /// Translates frame `i`'s DNS packet (`len` bytes) into the other IP version for the NAT
    /// (see [`crate::DnsRelay`]; an IPv4 packet grows into its buffer's room); the frame's
    /// checksum is then complete (a plain frame).
    fn relay_out(&mut self, i: usize, len: usize, now: Instant) -> Result<usize, DropCause> {
        let relay = self.dns_relay.as_ref().ok_or(DropCause::DnsRelay)?;
        let kind = self.kinds.get_mut(i).ok_or(DropCause::DnsRelay)?;
        if kind.0 == FrameOffload::Gso {
            return Err(DropCause::DnsRelay);
        }
        let (buf, start, frame_len) = self.input.slot_mut(i).ok_or(DropCause::DnsRelay)?;
        let frame = buf.get_mut(start..).ok_or(DropCause::DnsRelay)?;
        let n = lock(&relay.table).outbound(frame, len, now.as_millis())?;
        *kind = (FrameOffload::Plain, VirtioNetHdr::default());
        if ETH_HLEN + n > frame_len {
            self.input.set_bounds(i, start, ETH_HLEN + n);
        }
        Ok(n)
    }

    /// Uses the negotiated `offloads` (see [`Offloads::negotiate`]); `mtu` is the guest MTU,
    /// the limit for frames that are not GSO super-frames. The engine's `max_frame` must be
    /// [`Offloads::max_tx_frame`] and the host link must carry virtio-net headers if any
    /// offload is on.
    pub fn with_offloads(mut self, offloads: Offloads, mtu: u16) -> Self {
        self.offloads = offloads;
        self.max_plain = ETH_HLEN + usize::from(mtu);
        self
    }

    /// Drains up to a batch of TX chains and classifies the frames; `guest`'s gateway answers
    /// what it serves into `replies` (which must have room for a batch: every frame yields at
    /// most one reply).
    ///
    /// # Errors
    ///
    /// As [`TxQueue::process`].
    pub fn pull<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        replies: &mut FrameBatch,
        guest: &mut GuestState,
        now: Instant,
        stats: &mut Stats,
    ) -> Result<TxOutcome, Error> {
        self.pull_switched(mem, queue, replies, guest, now, stats, None)
    }

    /// As [`TxEngine::pull`], on a network of several ports (`view`): frames for another
    /// guest are left in the batch for [`TxEngine::switched`] (after the gateway's
    /// anti-spoofing checks), ARP requests for another guest's address are answered with its
    /// MAC, and frames to a MAC that is no one's are dropped ([`Switch::decide`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pull_switched<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        replies: &mut FrameBatch,
        guest: &mut GuestState,
        now: Instant,
        stats: &mut Stats,
        view: Option<SwitchView<'_>>,
    ) -> Result<TxOutcome, Error> {
        let out = self.fetch(mem, queue, stats)?;
        self.classify(replies, guest, now, stats, view);
        Ok(out)
    }

    /// The first part of [`TxEngine::pull`]: drains up to a batch of TX chains into the
    /// engine's batch (the copies out of guest memory; no shared state, so a caller that
    /// shares the network does this outside its lock).
    ///
    /// # Errors
    ///
    /// As [`TxQueue::process`].
    pub(crate) fn fetch<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        stats: &mut Stats,
    ) -> Result<TxOutcome, Error> {
        self.fetch_split(mem, queue, stats, false)
    }

    /// As [`TxEngine::fetch`]; with `split`, frames the engine's rule lets go head-only keep
    /// their payload in guest memory and their chains out of the used ring: the caller sends
    /// them with [`TxEngine::push_gathered`] and then returns the chains with
    /// [`TxEngine::release`], whatever happened in between.
    ///
    /// # Errors
    ///
    /// As [`TxQueue::process`] (nothing is held then).
    pub(crate) fn fetch_split<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        stats: &mut Stats,
        split: bool,
    ) -> Result<TxOutcome, Error> {
        self.input.clear();
        self.actions.clear();
        self.kinds.clear();
        self.switched.clear();
        self.split.clear();
        let sp = split.then_some(&mut self.split);
        let r = self
            .tx_queue
            .process_split(mem, queue, &mut self.input, stats, sp);
        if r.is_err() {
            self.split.clear();
        }
        r
    }

    /// Returns the chains of the head-only frames of the last fetch that are still held
    /// (their packets dropped, or the send stopped early) to the used ring, with `used` as the
    /// scratch; whether the driver must be notified.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] / [`Error::GuestMemory`] when the used ring cannot be written.
    pub(crate) fn release<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        used: &mut UsedBatch,
    ) -> Result<bool, Error> {
        used.clear();
        self.split.release_all(used);
        if used.len() == 0 {
            return Ok(false);
        }
        let (old, new) = used.flush(mem, queue)?;
        ring::needs_notification(mem, queue, old, new)
    }

    /// The second part of [`TxEngine::pull`]: checks and classifies the fetched frames (the
    /// gateway's answers into `replies`, frames for other ports into
    /// [`TxEngine::switched`]).
    pub(crate) fn classify(
        &mut self,
        replies: &mut FrameBatch,
        guest: &mut GuestState,
        now: Instant,
        stats: &mut Stats,
        view: Option<SwitchView<'_>>,
    ) {
        let hdr_len = self.tx_queue.header_len();
        let gateway = guest.gateway_mut();
        for i in 0..self.input.len() {
            let (kind, hdr) = match self.check(i, hdr_len, gateway) {
                Ok(k) => k,
                Err(c) => {
                    stats.drop(c);
                    self.kinds
                        .push((FrameOffload::Plain, VirtioNetHdr::default()));
                    self.actions.push(TxAction::Drop(c));
                    continue;
                }
            };
            self.kinds.push((kind, hdr));
            let gso = kind == FrameOffload::Gso;
            stats.tx_gso += u64::from(gso);
            stats.tx_gso6 += u64::from(gso && hdr.gso_type == VIRTIO_NET_HDR_GSO_TCPV6);
            let frame = self.input.frame(i).unwrap_or(&[]);
            let mut decision = view.map_or(Decision::Gateway, |v| v.switch.decide(v.port, frame));
            let head_only = self.split.is_head_only(i);
            if head_only && decision != Decision::Gateway {
                // Cannot be (the rule takes frames to the gateway's MAC only): a head-only
                // frame goes nowhere but to the host link.
                decision = Decision::Drop(DropCause::NotRoutable);
            }
            let mut action = match (decision, replies.next_buf(), view) {
                (Decision::Port(q), _, Some(v)) => match may_switch(gateway, frame, v, now) {
                    Ok(()) => {
                        self.switched.push((i, q));
                        TxAction::Consumed
                    }
                    Err(c) => TxAction::Drop(c),
                },
                (Decision::Port(_), _, None) => TxAction::Drop(DropCause::NotRoutable),
                (Decision::Drop(c), _, _) => TxAction::Drop(c),
                (Decision::Gateway, _, Some(v)) if ipv6_source_of_another(frame, v) => {
                    TxAction::Drop(DropCause::SpoofedIpv6)
                }
                (Decision::Gateway, Some(buf), view) => {
                    let a = gateway.handle_with(frame, buf, now, gso);
                    // ARP and Neighbor Solicitations for another guest: its MAC.
                    let answer = match (a, view) {
                        (TxAction::Drop(DropCause::ArpIgnored), Some(v)) => {
                            let mac = |ip| v.other_mac(v.switch.port_by_ipv4(ip));
                            gateway.arp_for_neighbor(frame, buf, now, mac)
                        }
                        (TxAction::Drop(DropCause::Ipv6Ignored) | TxAction::Consumed, Some(v)) => {
                            let mac = |ip| v.other_mac(v.switch.port_by_ipv6(ip));
                            gateway.ns_for_neighbor(frame, buf, mac)
                        }
                        _ => None,
                    };
                    match (answer, view) {
                        (Some(len), _) => TxAction::Reply { len },
                        // Broadcast or multicast the gateway does not serve: to every other
                        // guest, when the network floods (its source checks passed).
                        (None, Some(v))
                            if v.flood
                                && matches!(
                                    a,
                                    TxAction::Drop(DropCause::NotRoutable | DropCause::Ipv6Ignored)
                                )
                                && floodable(frame) =>
                        {
                            let me = v.port;
                            self.switched.extend(
                                v.switch
                                    .ports()
                                    .filter(|&(q, _)| q != me)
                                    .map(|(q, _)| (i, q)),
                            );
                            TxAction::Consumed
                        }
                        (None, _) => a,
                    }
                }
                (Decision::Gateway, None, _) => TxAction::Drop(DropCause::LocalQueueFull),
            };
            if head_only
                && !matches!(
                    action,
                    TxAction::Nat { .. } | TxAction::Drop(_) | TxAction::DropWithReply { .. }
                )
            {
                // Cannot be (the rule takes frames beyond the gateway's services only).
                action = TxAction::Drop(DropCause::NotRoutable);
            }
            if let TxAction::DnsRelay { len } = action {
                action = match self.relay_out(i, len, now) {
                    Ok(len) => TxAction::Nat { len },
                    Err(c) => TxAction::Drop(c),
                };
            }
            match action {
                TxAction::Reply { len } => {
                    replies.commit(0, len);
                    stats.local_replies += 1;
                }
                TxAction::Drop(c) => stats.drop(c),
                TxAction::DropWithReply { cause, len } => {
                    replies.commit(0, len);
                    stats.local_replies += 1;
                    stats.drop(cause);
                }
                TxAction::Nat { .. } | TxAction::DnsRelay { .. } | TxAction::Consumed => {}
            }
            // A reply slot this frame left unused carries an unsolicited Router
            // Advertisement when one is due (the drivers' tick offers it a slot too).
            if !matches!(
                action,
                TxAction::Reply { .. }
                    | TxAction::DropWithReply { .. }
                    | TxAction::Drop(DropCause::LocalQueueFull)
            ) && let Some(buf) = replies.next_buf()
                && let Some(len) = gateway.unsolicited(buf, now)
            {
                replies.commit(0, len);
                stats.local_replies += 1;
            }
            self.actions.push(action);
        }
    }

    /// The frames of the last pull that go to other ports: each one's index in the batch and
    /// port (see [`TxEngine::switched_frame`]).
    pub(crate) fn switched(&self) -> &[(usize, PortId)] {
        &self.switched
    }

    /// Frame `i` of the last pull with its offload kind and virtio-net header.
    pub(crate) fn switched_frame(&self, i: usize) -> Option<(&[u8], FrameOffload, VirtioNetHdr)> {
        let (kind, hdr) = self.kinds.get(i).copied()?;
        Some((self.input.frame(i)?, kind, hdr))
    }

    /// The fetched batch (a network's switch moves frames for other ports out of it).
    pub(crate) fn batch_mut(&mut self) -> &mut FrameBatch {
        &mut self.input
    }

    /// Checks frame `i`'s virtio-net header against the offloads and the MTU (a partial
    /// checksum the NAT can't carry is completed here, a super-frame's header is fixed up)
    /// and its size.
    fn check(
        &mut self,
        i: usize,
        hdr_len: usize,
        gateway: &Gateway,
    ) -> Result<(FrameOffload, VirtioNetHdr), DropCause> {
        let max_plain = self.max_plain;
        let o = self.offloads;
        let Some((buf, start, len)) = self.input.slot_mut(i) else {
            return Err(DropCause::Runt);
        };
        let (head, frame) = buf.split_at_mut(start);
        let frame = frame.get_mut(..len).ok_or(DropCause::Runt)?;
        let (kind, hdr) = if o.tx_csum {
            let mut hdr = head
                .get(start.saturating_sub(hdr_len)..)
                .and_then(VirtioNetHdr::parse)
                .unwrap_or_default();
            let mtu = u16::try_from(max_plain.saturating_sub(ETH_HLEN)).unwrap_or(u16::MAX);
            let kind = offload::check_tx(&o, &mut hdr, frame, mtu)?;
            if kind == FrameOffload::Partial && gateway.ipv6_stays_on_link(frame) {
                // For the gateway (DHCPv6 from a UDP socket): it verifies whole checksums.
                offload::complete(frame, ETH_HLEN, hdr.csum_start, hdr.csum_offset)?;
                (FrameOffload::Plain, VirtioNetHdr::default())
            } else {
                (kind, hdr)
            }
        } else {
            (FrameOffload::Plain, VirtioNetHdr::default())
        };
        if kind != FrameOffload::Gso && len > max_plain {
            return Err(DropCause::TooBig);
        }
        Ok((kind, hdr))
    }

    /// Runs the pulled packets through the NAT (one batch call, so that the table lookups of
    /// consecutive packets overlap). Hairpinned packets go to `replies`.
    pub fn translate(
        &mut self,
        nat: &mut Nat,
        replies: &mut FrameBatch,
        guest: &mut GuestState,
        now: Instant,
        stats: &mut Stats,
    ) {
        self.translate_switched(nat, replies, guest, now, stats, None);
    }

    /// As [`TxEngine::translate`], on a network of several ports (`view`): a packet the NAT
    /// hairpins to another guest (a port forward to it) goes to [`TxEngine::switched`].
    pub(crate) fn translate_switched(
        &mut self,
        nat: &mut Nat,
        replies: &mut FrameBatch,
        guest: &mut GuestState,
        now: Instant,
        stats: &mut Stats,
        view: Option<SwitchView<'_>>,
    ) {
        guest.refresh_forwards6(nat);
        let gateway = guest.gateway_mut();
        self.nat_idx.clear();
        self.nat_l4.clear();
        for (i, a) in self.actions.iter().enumerate() {
            if let Some(f) = self.forward.get_mut(i) {
                *f = false;
            }
            if let TxAction::Nat { .. } = a {
                self.nat_idx.push(i);
                let kind = self.kinds.get(i).map_or(FrameOffload::Plain, |k| k.0);
                self.nat_l4.push(kind.l4());
            }
        }
        let mut done = 0;
        while done < self.nat_idx.len() {
            let end = (done + NAT_CHUNK).min(self.nat_idx.len());
            let mut pkts: [&mut [u8]; NAT_CHUNK] = Default::default();
            let mut k = 0;
            let mut want = self.nat_idx[done..end].iter().copied().peekable();
            for (i, (buf, start, _)) in self.input.slots_mut().enumerate() {
                if want.peek() != Some(&i) {
                    continue;
                }
                want.next();
                let len = match self.actions.get(i) {
                    Some(TxAction::Nat { len }) => *len,
                    _ => 0,
                };
                let from = start + ETH_HLEN;
                if let (Some(slot), Some(p)) = (pkts.get_mut(k), buf.get_mut(from..from + len)) {
                    *slot = p;
                }
                k += 1;
                if want.peek().is_none() {
                    break;
                }
            }
            nat.outbound_batch_with(
                &mut pkts[..k],
                &self.nat_l4[done..end],
                now,
                &mut self.verdicts[done..end],
            );
            done = end;
        }
        let eth = gateway.eth_header_to_guest();
        for (j, &i) in self.nat_idx.iter().enumerate() {
            let TxAction::Nat { len } = self.actions[i] else {
                continue;
            };
            match self.verdicts[j] {
                Verdict::Forward => {
                    if let Some(f) = self.forward.get_mut(i) {
                        *f = true;
                    }
                }
                // Cannot be (the rule keeps the NAT's external address out): the payload is
                // in the guest's buffers, not here.
                Verdict::Hairpin if self.split.is_head_only(i) => {
                    stats.drop(DropCause::NatOutbound);
                }
                Verdict::Hairpin => {
                    let (kind, hdr) = self.kinds.get(i).copied().unwrap_or_default();
                    let Some(frame) = self.input.frame_mut(i) else {
                        continue;
                    };
                    let Some(frame) = frame.get_mut(..ETH_HLEN + len) else {
                        continue;
                    };
                    frame[..ETH_HLEN].copy_from_slice(&eth);
                    set_ethertype_for_ip(frame);
                    if let Some(v) = view
                        && let Some(q) = crate::network::owner_of_dst(v.switch, frame)
                        && q != v.port
                    {
                        self.switched.push((i, q));
                        continue;
                    }
                    match offload::hairpin_header(&self.offloads, kind, &hdr, frame) {
                        Ok(h) => {
                            if !replies.push_with_header(frame, h) {
                                stats.drop(DropCause::LocalQueueFull);
                            }
                        }
                        Err(c) => stats.drop(c),
                    }
                }
                // The NAT kept a copy of a fragment that came before its first fragment.
                Verdict::Held => {}
                // A new session refused for want of room: the guest hears of it at once
                // (ICMP administratively prohibited, rate-limited), as for a denied
                // destination.
                Verdict::Drop(
                    DropReason::TableFull | DropReason::HostLimit | DropReason::PortsExhausted,
                ) => {
                    stats.drop(DropCause::NatOutbound);
                    let (Some(frame), Some(buf)) = (self.input.frame(i), replies.next_buf()) else {
                        continue;
                    };
                    if let Some(n) = gateway.refused_by_nat(frame, buf, now) {
                        replies.commit(0, n);
                        stats.local_replies += 1;
                    }
                }
                _ => stats.drop(DropCause::NatOutbound),
            }
        }
        self.drain_released(nat, replies, &eth, stats);
    }

    /// Takes the fragments the NAT released (translated) for the host link or, hairpinned,
    /// for the guest. What does not fit this batch stays with the NAT for the next one.
    fn drain_released(
        &mut self,
        nat: &mut Nat,
        replies: &mut FrameBatch,
        eth: &[u8; ETH_HLEN],
        stats: &mut Stats,
    ) {
        self.released.clear();
        while let Some(buf) = self.released.next_buf() {
            let Some(room) = buf.get_mut(ETH_HLEN..) else {
                break;
            };
            let Some(r) = nat.poll_released(Direction::Outbound, room) else {
                break;
            };
            match r.verdict {
                Verdict::Forward => self.released.commit(0, ETH_HLEN + r.len),
                Verdict::Hairpin => {
                    buf[..ETH_HLEN].copy_from_slice(eth);
                    set_ethertype_for_ip(buf);
                    if !replies.push(&buf[..ETH_HLEN + r.len]) {
                        stats.drop(DropCause::LocalQueueFull);
                    }
                }
                _ => stats.drop(DropCause::NatOutbound),
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
        self.push_gathered(host, None, stats)
    }

    /// As [`TxEngine::push`]; the head-only frames of the last fetch (see
    /// [`TxEngine::fetch_split`]) go through `gather`, in their place in the batch.
    ///
    /// # Errors
    ///
    /// As [`TxEngine::push`].
    pub(crate) fn push_gathered(
        &mut self,
        host: &dyn HostLink,
        gather: Option<&mut GatherSend<'_>>,
        stats: &mut Stats,
    ) -> Result<(), Error> {
        // Stack arrays sized to the batch: no allocation, and no 4 KiB array to fill for a
        // batch of one.
        let r = match self.forward.len() {
            0..=1 => self.push_n::<1>(host, gather, stats),
            2..=8 => self.push_n::<8>(host, gather, stats),
            9..=64 => self.push_n::<64>(host, gather, stats),
            _ => self.push_n::<MAX_BATCH>(host, gather, stats),
        };
        self.actions.clear();
        r
    }

    fn push_n<const N: usize>(
        &mut self,
        host: &dyn HostLink,
        mut gather: Option<&mut GatherSend<'_>>,
        stats: &mut Stats,
    ) -> Result<(), Error> {
        let host_hdr = self.offloads.host_hdr;
        if host_hdr {
            // The link wants the virtio-net header right in front of the IP packet: it goes
            // over the tail of the Ethernet header, which is not needed any more.
            for (i, a) in self.actions.iter().enumerate() {
                if !matches!(a, TxAction::Nat { .. })
                    || !self.forward.get(i).copied().unwrap_or(false)
                {
                    continue;
                }
                let (kind, hdr) = self.kinds.get(i).copied().unwrap_or_default();
                let h = offload::host_header(kind, &hdr);
                if let Some(f) = self.input.frame_mut(i)
                    && let Some(dst) = f.get_mut(ETH_HLEN - VIRTIO_NET_HDR_LEN..ETH_HLEN)
                {
                    dst.copy_from_slice(&h);
                }
            }
        }
        let from = if host_hdr {
            ETH_HLEN - VIRTIO_NET_HDR_LEN
        } else {
            ETH_HLEN
        };
        // A run of whole packets (frame index, end) goes in one batch; a head-only frame
        // ends the run, so that packets leave in the guest's order.
        let mut run: [(usize, usize); N] = [(0, 0); N];
        let mut k = 0;
        for i in 0..self.actions.len() {
            let Some(&TxAction::Nat { len }) = self.actions.get(i) else {
                continue;
            };
            if !self.forward.get(i).copied().unwrap_or(false) {
                continue;
            }
            let end = ETH_HLEN + len;
            match self.split.tail(i) {
                Some((_, head)) if end > head => {
                    send_run::<N>(host, &self.input, &run[..k], from, stats)?;
                    k = 0;
                    let link = gather.as_ref().map(|g| g.link);
                    self.send_head_only(host, link, i, from, end, stats)?;
                    // Its chain goes back at once: the guest refills its ring while the
                    // batch's other packets are sent.
                    if let (Some(g), Some(chain)) = (gather.as_mut(), self.split.release_one(i)) {
                        (g.release)(chain)?;
                    }
                }
                _ => {
                    if let Some(slot) = run.get_mut(k) {
                        *slot = (i, end);
                        k += 1;
                    }
                }
            }
        }
        send_run::<N>(host, &self.input, &run[..k], from, stats)?;
        if self.released.is_empty() {
            return Ok(());
        }
        // Released fragments: plain packets (a zero header where the link wants one).
        let mut rel: [&[u8]; RELEASED_PER_BATCH] = [&[]; RELEASED_PER_BATCH];
        let mut k = 0;
        for (buf, _, len) in self.released.slots_mut() {
            if host_hdr && let Some(h) = buf.get_mut(from..ETH_HLEN) {
                h.fill(0);
            }
            if let (Some(slot), Some(p)) = (rel.get_mut(k), buf.get(from..len)) {
                *slot = p;
                k += 1;
            }
        }
        let r = send_all(host, &rel[..k], stats);
        self.released.clear();
        r
    }

    /// Sends head-only frame `i` (its packet from `from` to `end` of the frame) gathered
    /// from its head and guest memory; when the link cannot gather it, copies the tail in
    /// and sends it whole.
    fn send_head_only(
        &mut self,
        host: &dyn HostLink,
        gather: Option<&dyn Gather>,
        i: usize,
        from: usize,
        end: usize,
        stats: &mut Stats,
    ) -> Result<(), Error> {
        let Some((tail, head)) = self.split.tail(i) else {
            return Ok(());
        };
        // The tail as far as the packet goes (its IP length may end before the frame).
        let mut segs = [GuestSegment::default(); MAX_TAIL];
        let mut n = 0;
        let mut need = end - head;
        for (slot, s) in segs.iter_mut().zip(tail) {
            if need == 0 {
                break;
            }
            let len = (s.len as usize).min(need);
            *slot = GuestSegment {
                addr: s.addr,
                len: len as u32,
            };
            need -= len;
            n += 1;
        }
        let Some(frame) = self.input.frame_mut(i) else {
            return Ok(());
        };
        if need > 0 {
            stats.drop(DropCause::Malformed);
            return Ok(());
        }
        let Some(g) = gather else {
            stats.drop(DropCause::HostFull);
            return Ok(());
        };
        let Some(pkt_head) = frame.get(from..head) else {
            stats.drop(DropCause::Malformed);
            return Ok(());
        };
        let mut interrupted = 0;
        let e = loop {
            match g.gather(pkt_head, &segs[..n]) {
                Ok(_) => {
                    stats.to_host += 1;
                    stats.tx_gathered += 1;
                    return Ok(());
                }
                Err(e)
                    if e.kind() == io::ErrorKind::Interrupted && interrupted < MAX_INTERRUPTED =>
                {
                    interrupted += 1;
                }
                Err(e) => break e,
            }
        };
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {
                stats.drop(DropCause::HostFull)
            }
            io::ErrorKind::InvalidData => stats.drop(DropCause::Malformed),
            // More pieces than the link takes, or no gathering after all: copy and send.
            io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported => {
                let copied = frame
                    .get_mut(head..end)
                    .is_some_and(|dst| g.copy_tail(&segs[..n], dst));
                if !copied {
                    stats.drop(DropCause::ChainOutOfBounds);
                    return Ok(());
                }
                if let Some(p) = frame.get(from..end) {
                    send_all(host, &[p], stats)?;
                }
            }
            _ => return Err(Error::HostLink(e)),
        }
        Ok(())
    }
}

/// What sending head-only frames needs ([`TxEngine::push_gathered`]): the link that gathers,
/// and a way to return a frame's chain to the used ring as soon as its packet is sent.
pub(crate) struct GatherSend<'a> {
    pub(crate) link: &'a dyn Gather,
    pub(crate) release: &'a mut dyn FnMut(u16) -> Result<(), Error>,
}

/// Whether a frame the switch sends to another port may leave this one: its Ethernet source
/// is the port's MAC, and its IPv4 source the guest's lease, or its IPv6 source one the guest
/// may use (link-local or in the prefix) and no other port's; such an IPv6 source is learned
/// (the gateway's anti-spoofing rules, which frames for the gateway pass through instead).
fn may_switch(
    gateway: &mut Gateway,
    frame: &[u8],
    v: SwitchView<'_>,
    now: Instant,
) -> Result<(), DropCause> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| DropCause::Runt)?;
    if Some(eth.src_addr()) != v.switch.mac_of(v.port) {
        return Err(DropCause::SpoofedMac);
    }
    match eth.ethertype() {
        ETHERTYPE_IPV4 => {
            let ip = Ipv4Packet::new_checked(eth.payload()).map_err(|_| DropCause::Malformed)?;
            if gateway.is_guest_ip(ip.src_addr(), now) {
                Ok(())
            } else {
                Err(DropCause::SpoofedIp)
            }
        }
        ETHERTYPE_IPV6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).map_err(|_| DropCause::Malformed)?;
            let src = ip.src_addr();
            let owner = v.switch.port_by_ipv6(src);
            if gateway.may_use_ipv6(src) && owner.is_none_or(|p| p == v.port) {
                gateway.learn_ipv6(src);
                Ok(())
            } else {
                Err(DropCause::SpoofedIpv6)
            }
        }
        _ => Err(DropCause::NotRoutable),
    }
}

/// Whether a guest's `frame` to a group is one the switch may flood: its destination MAC
/// is a group's, and it is IPv4 other than IGMP, or IPv6 UDP or an ICMPv6 echo (Neighbor
/// Discovery and MLD are the gateway's; extension headers are not walked).
fn floodable(frame: &[u8]) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if !eth.dst_addr().is_multicast() {
        return false;
    }
    match eth.ethertype() {
        ETHERTYPE_IPV4 => {
            Ipv4Packet::new_checked(eth.payload()).is_ok_and(|ip| ip.protocol() != ip_proto::IGMP)
        }
        ETHERTYPE_IPV6 => {
            Ipv6Packet::new_checked(eth.payload()).is_ok_and(|ip| match ip.next_header() {
                ip_proto::UDP => true,
                ip_proto::ICMPV6 => ip
                    .payload()
                    .first()
                    .is_some_and(|&t| t == icmpv6::ECHO_REQUEST || t == icmpv6::ECHO_REPLY),
                _ => false,
            })
        }
        _ => false,
    }
}

/// Whether `frame` is IPv6 from an address another port holds (a guest may not use another
/// guest's address, not even towards the gateway and the NAT).
fn ipv6_source_of_another(frame: &[u8], v: SwitchView<'_>) -> bool {
    let Ok(eth) = EthernetFrame::new_checked(frame) else {
        return false;
    };
    if eth.ethertype() != ETHERTYPE_IPV6 {
        return false;
    }
    Ipv6Packet::new_checked(eth.payload())
        .ok()
        .and_then(|ip| v.switch.port_by_ipv6(ip.src_addr()))
        .is_some_and(|p| p != v.port)
}

/// Sends the packets of `run` (frame index in `input`, end), each from `from`.
fn send_run<const N: usize>(
    host: &dyn HostLink,
    input: &FrameBatch,
    run: &[(usize, usize)],
    from: usize,
    stats: &mut Stats,
) -> Result<(), Error> {
    if run.is_empty() {
        return Ok(());
    }
    let mut list: [&[u8]; N] = [&[]; N];
    let mut k = 0;
    for &(i, end) in run {
        let pkt = input.frame(i).and_then(|f| f.get(from..end));
        if let (Some(slot), Some(pkt)) = (list.get_mut(k), pkt) {
            *slot = pkt;
            k += 1;
        }
    }
    send_all(host, &list[..k], stats)
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

/// Released fragments taken from the NAT per batch (the rest wait for the next batch).
const RELEASED_PER_BATCH: usize = 8;

/// Packets per NAT batch call (a stack array of slices).
pub(crate) const NAT_CHUNK: usize = 32;

/// Retries of an interrupted send before the rest of the batch is dropped.
const MAX_INTERRUPTED: u32 = 16;
