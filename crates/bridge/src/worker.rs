//! [`PairWorker`]: one queue pair of a [`Network`] port served by a thread of its own, with
//! the network shared behind a lock ([`NetworkLock`]) that each event takes only around what
//! ports share.
//!
//! A worker holds its pair's TX and RX halves (batches, the virtqueue state the device keeps)
//! and its counters outside the lock. Per batch it takes the lock once for the shared part —
//! the gateway, the switch, the NAT and the port's inbox — and does the rest outside it: the
//! chains copied out of guest memory, the writes to and reads from the host link (its queue
//! of a multi-queue TUN) and the copies into the guest's RX buffers. The port's inbox (frames
//! switched from other guests, gateway replies) is pair 0's: its worker exchanges it under
//! the lock for an empty batch of the same room and copies it into the guest outside it (the
//! other pairs' workers deliver their host-link queue's packets only, and a driver wakes pair
//! 0's when another pair's event left frames there: [`Network::wake_after`]); frames the guest has no
//! buffers for go back to the port's inbox when nothing newer waits there (else they wait
//! in the worker and go first at its next event). So two pairs' workers, and two guests'
//! workers, overlap everything but the translation and the switch (which moves a frame to
//! another port's inbox by buffer, without a copy). Each event also takes the lock once
//! before (the pair in use, the halves built for the negotiated features) and once after
//! (the counters added to the port's, the guest's MAC and IPv6 addresses followed).
//!
//! ```
//! use std::sync::Mutex;
//! use bridge::{BridgeConfig, MacAddr, MemoryLink, Network, PairWorker};
//!
//! let (host, _peer) = MemoryLink::pair(64)?;
//! let mut net = Network::new(BridgeConfig::default(), 8)?;
//! let port = net.attach(MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]))?;
//! net.ack_features(port, net.device_features(port).unwrap_or(0), &host);
//! let net = Mutex::new(net);
//! // One per thread; its events take `&net`.
//! let worker = PairWorker::new(port, 0);
//! assert_eq!((worker.port(), worker.pair()), (port, 0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::sync::Mutex;

use virtio_queue::QueueT;
use vm_memory::GuestMemory;

use crate::core::{
    Counters, Notify, PairStats, QueuePair, RxAccess, RxLocked, TxAccess, TxLocked, delivers_inbox,
    lock,
};
use crate::stats::Stats;
use crate::switch::PortId;
use crate::{Error, HostLink, Network};

/// How a [`PairWorker`] reaches the [`Network`] it shares with other threads.
pub trait NetworkLock {
    /// Runs `f` with the network locked.
    fn with_network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R;
}

impl NetworkLock for Mutex<Network> {
    fn with_network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R {
        f(&mut lock(self))
    }
}

/// Queue pair `pair` of port `port` served from one thread; see the module docs.
#[derive(Debug)]
pub struct PairWorker {
    port: PortId,
    pair: usize,
    /// The pair's halves (taken from the port, or built, at the first event).
    halves: Option<QueuePair>,
    /// The port's generation the halves were built for.
    generation: u64,
    /// What this worker counted since its last event's end (then added to the port's).
    stats: Stats,
    moved: PairStats,
    /// The host link failed (logged once by this worker).
    failed: bool,
    /// The host link became readable while the RX queue was not usable.
    readable: bool,
    /// The pair may read the host link (see [`PairWorker::set_host_reads`]).
    host_reads: bool,
}

impl PairWorker {
    /// A worker for pair `pair` of `port`. It takes the pair's halves from the network at its
    /// first event (the network's own [`Network::on_pair_tx_kick`] and
    /// [`Network::on_pair_rx_ready`] for this pair would then start from fresh ones: serve a
    /// pair one way or the other).
    pub fn new(port: PortId, pair: usize) -> Self {
        PairWorker {
            port,
            pair,
            halves: None,
            generation: 0,
            stats: Stats::default(),
            moved: PairStats::default(),
            failed: false,
            readable: false,
            host_reads: true,
        }
    }

    /// Whether the pair reads the host link at its events (default `true`). A driver whose
    /// ports' workers share a host-link queue lets one of them read it at a time: two
    /// workers reading one queue at once put a flow's packets on two paths (one port's own
    /// reads straight into its ring, the other's through its inbox), and its guest got
    /// them out of order. With reads off the pair delivers what it read before and its
    /// inbox, and remembers that the link is readable ([`PairWorker::host_pending`]).
    pub fn set_host_reads(&mut self, on: bool) {
        self.host_reads = on;
    }

    /// Whether the host link may hold packets this pair has not read: it became readable and
    /// was not read to the end (reads off, the guest short of buffers, or the budget).
    pub fn host_pending(&self) -> bool {
        self.readable || self.halves.as_ref().is_some_and(|h| h.rx.host_pending)
    }

    /// The port.
    pub fn port(&self) -> PortId {
        self.port
    }

    /// The queue pair.
    pub fn pair(&self) -> usize {
        self.pair
    }

    /// As [`Network::on_pair_tx_kick`], with the network behind `net`.
    ///
    /// # Errors
    ///
    /// As [`Network::on_pair_tx_kick`].
    pub fn on_tx_kick<L: NetworkLock + ?Sized, M: GuestMemory, Q: QueueT>(
        &mut self,
        net: &L,
        mem: &M,
        txq: &mut Q,
        rxq: Option<&mut Q>,
        host: &impl HostLink,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        let budget = net.with_network(|n| n.worker_begin(self, host))?;
        let mut access = Shared {
            net,
            port: self.port,
            inbox: delivers_inbox(self.pair),
        };
        let r = match self.halves.as_mut() {
            Some(h) => {
                h.rx.host_reads = self.host_reads;
                let c = Counters {
                    stats: &mut self.stats,
                    moved: &mut self.moved,
                    failed: &mut self.failed,
                };
                h.on_tx_kick(&mut access, c, mem, txq, rxq, host, now, budget)
            }
            None => Err(Error::Config("a pair worker without halves".into())),
        };
        net.with_network(|n| n.worker_end(self, true));
        r
    }

    /// As [`Network::on_pair_rx_ready`], with the network behind `net`.
    ///
    /// # Errors
    ///
    /// As [`Network::on_pair_rx_ready`].
    pub fn on_rx_ready<L: NetworkLock + ?Sized, M: GuestMemory, Q: QueueT>(
        &mut self,
        net: &L,
        mem: &M,
        rxq: &mut Q,
        host: &impl HostLink,
        host_readable: bool,
        now: nat::Instant,
    ) -> Result<Notify, Error> {
        net.with_network(|n| n.worker_begin(self, host))?;
        let mut access = Shared {
            net,
            port: self.port,
            inbox: delivers_inbox(self.pair),
        };
        let r = match self.halves.as_mut() {
            Some(h) => {
                h.rx.host_pending |= host_readable || core::mem::take(&mut self.readable);
                h.rx.host_reads = self.host_reads;
                let c = Counters {
                    stats: &mut self.stats,
                    moved: &mut self.moved,
                    failed: &mut self.failed,
                };
                h.deliver(&mut access, c, mem, rxq, host, now)
            }
            None => Err(Error::Config("a pair worker without halves".into())),
        };
        net.with_network(|n| n.worker_end(self, false));
        r
    }

    /// The host link (this pair's queue of it) became readable while the RX queue is not
    /// usable: read it at the next [`PairWorker::on_rx_ready`].
    pub fn on_rx_unavailable(&mut self) {
        self.readable = true;
    }

    /// Before an event, under the lock: the pair must be in use, and the halves built for
    /// the port's negotiated features (taken from the port the first time).
    pub(crate) fn prepare(
        &mut self,
        generation: u64,
        take: impl FnOnce() -> Option<QueuePair>,
        build: impl FnOnce() -> QueuePair,
    ) {
        if self.halves.is_none() || self.generation != generation {
            self.halves = Some(take().unwrap_or_else(build));
            self.generation = generation;
        }
    }

    /// After an event, under the lock: what the worker counted, for the port.
    pub(crate) fn take_counts(&mut self) -> (Stats, PairStats, bool) {
        (
            core::mem::take(&mut self.stats),
            core::mem::take(&mut self.moved),
            self.failed,
        )
    }
}

/// A worker's access: the network's lock, taken per call.
struct Shared<'l, L: ?Sized> {
    net: &'l L,
    port: PortId,
    /// The pair delivers the port's inbox (pair 0; see [`delivers_inbox`]).
    inbox: bool,
}

impl<L: NetworkLock + ?Sized> TxAccess for Shared<'_, L> {
    fn with_tx<R>(&mut self, f: impl FnOnce(TxLocked<'_, '_>) -> R) -> Result<R, Error> {
        self.net.with_network(|n| {
            n.with_port(self.port, |p, nat, others| {
                f(TxLocked {
                    nat,
                    guest: &mut p.guest,
                    replies: &mut p.replies,
                    others: Some(others),
                })
            })
        })
    }
}

impl<L: NetworkLock + ?Sized> RxAccess for Shared<'_, L> {
    fn with_rx<R>(&mut self, f: impl FnOnce(RxLocked<'_, '_>) -> R) -> Result<R, Error> {
        self.net.with_network(|n| {
            n.with_port(self.port, |p, nat, others| {
                f(RxLocked {
                    nat,
                    guest_mac: p.guest.gateway().guest_mac(),
                    replies: self.inbox.then_some(&mut p.replies),
                    others: Some(others),
                })
            })
        })
    }

    fn replies_may_wait(&self) -> bool {
        self.inbox
    }

    fn takes_inbox(&self) -> bool {
        self.inbox
    }
}
