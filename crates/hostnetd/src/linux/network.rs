//! The network every connection is a port of: one [`bridge::Network`] (one gateway, NAT and
//! TUN; guest-to-guest frames switched by the bridge) behind one mutex, shared by the
//! connections' vhost-user workers, the control socket and the metrics listener.
//!
//! Why one mutex: a worker takes it once per batch of frames (never per frame), through its
//! `bridge::PairWorker` ([`NetLock`]), only for what the ports share (the gateway, the switch,
//! the NAT, the inboxes: the copies in and out of guest memory and the TUN's system calls run
//! outside it), plus briefly before and after each event, and hands it over fairly each time
//! ([`unlock_fair`]: a waiting worker gets it before this one can take it again), so with one
//! guest of one pair it is never contended;
//! with several, the NAT, the switch and the inboxes stay single-owner (the bridge's network
//! has no locking of its own) and a guest's batch is switched into another guest's inbox
//! under the same lock. After each event the worker wakes the pair 0 worker of each port
//! `bridge::Network::wake_after` names (an eventfd per port, in that worker's epoll:
//! `super::backend::Events::pending`): every other port whose inbox filled, its own port
//! after another pair's event (a port's inbox is its pair 0's), and, once its own inbox is
//! delivered, every port parked because its sending filled that inbox
//! (`bridge::Network::park`: it sends again at the wake-up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge::{Clock, MacAddr, Network, PortId};
use parking_lot::{Mutex, MutexGuard};
use tracing::warn;
use vmm_sys_util::eventfd::EventFd;

use super::device::DeviceConfig;

/// The network and what its workers share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The ports, the NAT, the switch.
    pub(crate) net: Network,
    /// The time every port's events are given (one clock for the one NAT).
    pub(crate) clock: Clock,
    /// Each attached port's wake-up eventfd (its pair 0 worker's `Events::pending`), by port index.
    wakers: Vec<Option<Arc<EventFd>>>,
    /// When the network (NAT expiry, every port's gateway) was last ticked.
    last_tick: Option<Instant>,
    /// The first port's MAC; port `i` gets this plus `i`.
    base_mac: MacAddr,
    max_ports: usize,
    /// Which of the TUN's queues are attached (in the kernel's steering), by index; queue 0
    /// always is.
    tun_attached: Vec<bool>,
    /// Per TUN queue, the port whose worker reads it now ([`Shared::claim_tun`]).
    tun_readers: Vec<Option<TunReader>>,
    /// Per TUN queue, its reader's port detached, perhaps with packets left in it: the next
    /// worker that looks reads it ([`Shared::detach`]).
    tun_left: Vec<bool>,
}

/// The network as the connections share it.
pub(crate) type SharedNet = Arc<Mutex<Shared>>;

/// Locks the network (a worker that panicked left it as it was: parking_lot's mutex has no
/// poisoning).
pub(crate) fn lock(net: &SharedNet) -> MutexGuard<'_, Shared> {
    net.lock()
}

/// Unlocks the network at the end of a worker's event, handing it to a thread that waits for
/// it (if any) before this one can take it again. A plain unlock lets the worker that just
/// let go take the lock back at once: a port whose TX ring never runs empty (a line-rate
/// flood) then kept another port's worker out for seconds (its guest's TCP at 0.00-0.22 of
/// its figure alone; `several_guests::a_frontend_keeping_its_tx_ring_full_leaves_another_a_third_of_its_tcp`).
/// The hand-off costs a wake-up only when another thread waits.
pub(crate) fn unlock_fair(guard: MutexGuard<'_, Shared>) {
    MutexGuard::unlock_fair(guard);
}

/// The network as a connection's [`bridge::PairWorker`]s reach it: locked for each batch's
/// shared part and handed over fairly at its end (see [`unlock_fair`]).
pub(crate) struct NetLock<'a>(pub(crate) &'a SharedNet);

impl bridge::NetworkLock for NetLock<'_> {
    fn with_network<R>(&self, f: impl FnOnce(&mut Network) -> R) -> R {
        let mut guard = self.0.lock();
        let r = f(&mut guard.net);
        unlock_fair(guard);
        r
    }
}

impl Shared {
    /// The network for `config` with room for `max_ports` guests.
    pub(crate) fn new(config: &DeviceConfig, max_ports: usize) -> Result<Self> {
        // Each worker's TUN queue is registered edge-triggered: a read returning fewer packets
        // than asked found the queue empty, and the next packet brings the next event.
        let net = Network::new(config.to_bridge(), max_ports)
            .context("creating the network")?
            .with_short_batch_drains(true);
        Ok(Self {
            net,
            clock: Clock::new(),
            wakers: vec![None; max_ports],
            last_tick: None,
            base_mac: config.mac,
            max_ports,
            tun_attached: vec![true],
            tun_readers: vec![None],
            tun_left: vec![false],
        })
    }

    /// Attaches a port for a new frontend: the lowest free index `i`, the MAC `--mac` plus
    /// `i` (its IPv4 address: the one that MAC had before, else the first free one), or when
    /// another port's guest uses that MAC (a port follows its guest's MAC) the next one past
    /// `--mac` plus `--max-guests` that none uses. `wake` is signalled when other ports leave
    /// frames in its inbox.
    ///
    /// # Errors
    /// Every port is in use.
    pub(crate) fn attach(&mut self, wake: Arc<EventFd>) -> Result<(PortId, MacAddr)> {
        let index = (0..self.max_ports)
            .find(|&i| self.wakers[i].is_none())
            .context("every guest port is in use")?;
        let mac = std::iter::once(index)
            .chain(self.max_ports..self.max_ports * 2 + 1)
            .map(|i| mac_plus(self.base_mac, i))
            .find(|&m| self.net.switch().port_by_mac(m).is_none())
            .context("no free MAC for a guest port")?;
        let port = self.net.attach(mac)?;
        self.set_waker(port, Some(wake));
        Ok((port, mac))
    }

    /// Detaches `port` (its frontend is gone or reset the device).
    pub(crate) fn detach(&mut self, port: PortId) {
        self.net.detach(port);
        // A queue it was reading may hold packets: every other port's worker is woken, and
        // the first that looks reads it.
        let mut left = false;
        for q in 0..self.tun_readers.len() {
            if self.tun_readers[q].is_some_and(|r| r.port == port) {
                self.tun_readers[q] = None;
                self.tun_left[q] = true;
                left = true;
            }
        }
        self.set_waker(port, None);
        if left {
            for (p, _) in self.net.ports() {
                wake(&self.wakers, p);
            }
        }
    }

    /// A device reset: the port starts over (the MAC its guest used, else `mac`, so the same
    /// address; possibly another index).
    pub(crate) fn reattach(&mut self, port: PortId, mac: MacAddr) -> Result<PortId> {
        let wake = self.wakers.get(usize::from(port.0)).cloned().flatten();
        let mac = self.net.switch().mac_of(port).unwrap_or(mac);
        self.detach(port);
        let new = self.net.attach(mac)?;
        self.set_waker(new, wake);
        Ok(new)
    }

    /// With several ports attached a worker's TX event takes one batch (each event holds the
    /// lock); alone, the bridge's full budget (no other worker waits for the lock).
    fn set_tx_budget(&mut self) {
        let several = self.net.ports().nth(1).is_some();
        self.net.set_tx_batch_budget(if several {
            SHARED_TX_BATCHES
        } else {
            bridge::TX_BATCH_BUDGET
        });
    }

    fn set_waker(&mut self, port: PortId, wake: Option<Arc<EventFd>>) {
        let i = usize::from(port.0);
        if let Some(w) = self.wakers.get_mut(i) {
            *w = wake;
        }
        self.set_tx_budget();
    }

    /// The TUN has `queues` queues, all attached (as opened).
    pub(crate) fn set_tun_queues(&mut self, queues: usize) {
        self.tun_attached = vec![true; queues.max(1)];
        self.tun_readers = vec![None; queues.max(1)];
        self.tun_left = vec![false; queues.max(1)];
    }

    /// Whether `port`'s worker may read TUN queue `q` now (then `port` reads it until
    /// [`Shared::release_tun`]). One port's worker reads a queue at a time, and the port that
    /// read it last (or the one most of its last batch was for) keeps it while it stops for
    /// less than [`TUN_STEAL`]: another port's worker takes it only when it has not been
    /// read for that long (the reader's guest has no RX buffers, its VM is stopped, or its
    /// worker is busy). A guest that stops taking its frames holds the others' host packets
    /// back by that much once; what another port reads for it then waits in its inbox,
    /// behind what it read itself (the bridge delivers a port's own reads first). Every
    /// port's worker watches the queue of its pair: two of them reading it at once put a
    /// flow's packets on two ways to its guest (straight into its ring, and through its inbox
    /// when the other port read them), and the guest got them out of order (a download with
    /// a second guest attached had a quarter of its segments sent twice: docs/PERFORMANCE.md
    /// "hostnetd: every port's worker reads the TUN").
    pub(crate) fn claim_tun(&mut self, q: usize, port: PortId, now: Instant) -> bool {
        let Some(reader) = self.tun_readers.get_mut(q) else {
            return true;
        };
        match reader {
            Some(r) if r.port == port => {
                r.reading = true;
                // A guest that adds a few RX buffers at a time keeps its first stop's time.
                if !r.starved {
                    r.stopped_since = None;
                }
                true
            }
            Some(r)
                if self.net.stats(r.port).is_some()
                    && (r.reading
                        || r.stopped_since
                            .is_none_or(|t| now.saturating_duration_since(t) < TUN_STEAL)) =>
            {
                false
            }
            _ => {
                *reader = Some(TunReader {
                    port,
                    reading: true,
                    starved: false,
                    stopped_since: None,
                });
                if let Some(left) = self.tun_left.get_mut(q) {
                    *left = false;
                }
                true
            }
        }
    }

    /// `port`'s worker read TUN queue `q` (if it is its reader) and stopped (see
    /// [`TunStop`]). `Drained`: the port most of the last host batch was for
    /// (`bridge::Network::host_reader`; with one busy guest, that guest's: its packets go
    /// straight into its ring, none through its inbox, which another port's reads could
    /// overflow) reads it next. `Budget`: it comes back for the rest. `Starved`: it keeps the
    /// queue (the packets wait in the TUN, the kernel's queue absorbing a short stop).
    pub(crate) fn release_tun(&mut self, q: usize, port: PortId, stop: TunStop, now: Instant) {
        let next = self.net.host_reader().unwrap_or(port);
        let Some(slot) = self.tun_readers.get_mut(q) else {
            return;
        };
        let Some(r) = slot.as_mut().filter(|r| r.port == port) else {
            return;
        };
        r.reading = false;
        match stop {
            TunStop::Drained => {
                *r = TunReader {
                    port: next,
                    reading: false,
                    starved: false,
                    stopped_since: Some(now),
                };
            }
            TunStop::Budget => {
                r.starved = false;
                r.stopped_since = Some(now);
            }
            TunStop::Starved => {
                r.starved = true;
                r.stopped_since.get_or_insert(now);
            }
        }
    }

    /// Whether the reader of TUN queue `q` detached, perhaps with packets left in it.
    pub(crate) fn tun_left(&self, q: usize) -> bool {
        self.tun_left.get(q).copied().unwrap_or(false)
    }

    /// Whether TUN queue `q` is attached (a detached queue is never read).
    pub(crate) fn tun_queue_attached(&self, q: usize) -> bool {
        self.tun_attached.get(q).copied().unwrap_or(false)
    }

    /// Records that TUN queue `q` was attached or detached.
    pub(crate) fn set_tun_queue_attached(&mut self, q: usize, attached: bool) {
        if let Some(a) = self.tun_attached.get_mut(q) {
            *a = attached;
        }
    }

    /// Whether no port but `port` is attached (the TUN's offloads are then its alone).
    pub(crate) fn alone(&self, port: PortId) -> bool {
        self.net.ports().all(|(p, _)| p == port)
    }

    /// After an event of pair `pair` of `me`: writes the wake-up of each port
    /// `bridge::Network::wake_after` names (its pair 0 worker takes it with
    /// `bridge::Network::took_wakeup`).
    pub(crate) fn wake_after(&mut self, me: PortId, pair: usize) {
        let wakers = &self.wakers;
        self.net.wake_after(me, pair, |p| wake(wakers, p));
    }

    /// Ticks the network (NAT expiry, each port's gateway) if a tick is due: every worker's
    /// timer calls this, the network is ticked once per [`TICK`].
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        if self
            .last_tick
            .is_some_and(|t| now.duration_since(t) < TICK - TICK_SLACK)
        {
            return;
        }
        self.last_tick = Some(now);
        self.net.on_tick(self.clock.now());
    }
}

/// `mac` plus `n` (as a 48-bit number).
pub(crate) fn mac_plus(mac: MacAddr, n: usize) -> MacAddr {
    let mut b = [0u8; 8];
    b[2..].copy_from_slice(&mac.0);
    let v = u64::from_be_bytes(b).wrapping_add(n as u64);
    let mut out = [0u8; 6];
    out.copy_from_slice(&v.to_be_bytes()[2..]);
    MacAddr(out)
}

/// TX batches per worker event (per hold of the network's lock) while several ports are
/// attached: a port whose TX ring never runs empty, eight batches per hold (the bridge's
/// budget) and the fair hand-off left another guest's TCP 0.19-0.28 of its figure alone, one
/// batch 0.17-1.03 per round, median 0.39 (`several_guests::a_frontend_keeping_its_tx_ring_full_leaves_another_a_third_of_its_tcp`).
const SHARED_TX_BATCHES: usize = 1;
/// Why a TUN queue's reader stopped reading it ([`Shared::release_tun`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TunStop {
    /// The queue is empty.
    Drained,
    /// Its delivery budget ran out (it comes back for the rest).
    Budget,
    /// Its guest has no RX buffers for what it read.
    Starved,
}

/// The port reading a TUN queue ([`Shared::claim_tun`]).
#[derive(Clone, Copy, Debug)]
struct TunReader {
    port: PortId,
    /// Its worker is in a call that reads it (never taken from it then).
    reading: bool,
    /// It stopped last for its guest's RX buffers (with packets left).
    starved: bool,
    /// Since then it has not read the queue (for a starved reader: since its first stop).
    stopped_since: Option<Instant>,
}

/// How long a TUN queue's reader keeps it without reading it before another port's worker
/// reads it (see [`Shared::claim_tun`]).
pub(crate) const TUN_STEAL: Duration = Duration::from_millis(5);

/// Writes `port`'s wake-up.
fn wake(wakers: &[Option<Arc<EventFd>>], port: PortId) {
    if let Some(Some(w)) = wakers.get(usize::from(port.0))
        && let Err(e) = w.write(1)
    {
        warn!(port = port.0, "waking a port's worker failed: {e}");
    }
}

/// How often the network is ticked.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// Timers of several workers fire a little apart: a tick due within this is done now.
const TICK_SLACK: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    /// A port whose kick stopped for another port's inbox parks only while that inbox waits,
    /// and the other port's worker releases it (and writes its wake-up) once it delivered.
    #[test]
    fn a_parked_port_is_released_by_the_worker_that_delivered_its_inbox() {
        use bridge::MemoryLink;
        use bridge::testing::{self, GATEWAY, MockNet};
        const HDR: usize = 12;
        let mut sh = Shared::new(&config(), 2).unwrap();
        let nonblock = vmm_sys_util::eventfd::EFD_NONBLOCK;
        let wakes = [(); 2].map(|()| Arc::new(EventFd::new(nonblock).unwrap()));
        let (a, ma) = sh.attach(Arc::clone(&wakes[0])).unwrap();
        let (b, mb) = sh.attach(Arc::clone(&wakes[1])).unwrap();
        let (host, _peer) = MemoryLink::pair(64).unwrap();
        for p in [a, b] {
            let all = sh.net.device_features(p).unwrap();
            sh.net.ack_features(p, all & (1 << 32 | 1 << 15), &host);
        }
        let (ia, ib) = (sh.net.address_of(a).unwrap(), sh.net.address_of(b).unwrap());
        let (mem_a, mem_b) = (testing::guest_memory(), testing::guest_memory());
        let (mut qa, mut qb) = (MockNet::new(&mem_a, 256), MockNet::new(&mem_b, 256));
        let (mut rxa, mut txa) = qa.queues(false);
        let (mut rxb, _txb) = qb.queues(false);
        let now = sh.clock.now();

        // a takes its lease (it may send only from it).
        {
            use dhcproto::v4::{DhcpOption, Message, MessageType};
            let u = std::net::Ipv4Addr::UNSPECIFIED;
            for (kind, opts) in [
                (MessageType::Discover, vec![]),
                (
                    MessageType::Request,
                    vec![
                        DhcpOption::ServerIdentifier(GATEWAY),
                        DhcpOption::RequestedIpAddress(ia),
                    ],
                ),
            ] {
                let mut m = Message::new_with_id(7, u, u, u, u, &ma.0);
                m.opts_mut().insert(DhcpOption::MessageType(kind));
                for o in opts {
                    m.opts_mut().insert(o);
                }
                qa.send_frame(HDR, &testing::dhcp_frame(ma, &m), &[]);
            }
            for _ in 0..2 {
                qa.post_rx(&[2048]);
            }
        }
        sh.net
            .on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, now)
            .unwrap();
        assert!(!sh.net.pending(a), "a's DHCP answers delivered");
        assert!(!sh.net.park(a), "nothing waits: no wait");
        let mut frame = testing::udp_frame(ma, ia, 5000, ib, 6000, b"to b");
        frame[..6].copy_from_slice(&mb.0);
        let batch = sh.net.config().batch_size;
        for _ in 0..batch {
            qa.send_frame(HDR, &frame, &[]);
        }
        let n = sh
            .net
            .on_tx_kick(a, &mem_a, &mut txa, Some(&mut rxa), &host, now)
            .unwrap();
        assert!(n.tx_waits && sh.net.pending(b), "{n:?}");
        assert!(
            sh.net.park(a) && sh.net.parked(a),
            "b's inbox waits: a parks"
        );
        // a's own event ends: a is not released by itself.
        sh.wake_after(a, 0);
        assert!(sh.net.parked(a));
        let _ = wakes[1].read();
        sh.net.took_wakeup(b);
        // b's worker ends an event with the inbox still waiting (no RX buffers): a stays.
        sh.net
            .on_rx_ready(b, &mem_b, &mut rxb, &host, false, now)
            .unwrap();
        sh.wake_after(b, 0);
        assert!(sh.net.parked(a), "b has not delivered");
        assert!(wakes[0].read().is_err(), "a not woken");
        // b delivers: a is released and woken.
        for _ in 0..batch {
            qb.post_rx(&[2048]);
        }
        sh.net
            .on_rx_ready(b, &mem_b, &mut rxb, &host, false, now)
            .unwrap();
        assert!(!sh.net.pending(b));
        sh.wake_after(b, 0);
        assert!(!sh.net.parked(a), "released");
        assert_eq!(wakes[0].read().unwrap(), 1, "a woken");
    }

    /// A one-pair, IPv4-only configuration without offloads.
    fn config() -> DeviceConfig {
        DeviceConfig {
            mac: bridge::testing::GUEST_MAC,
            mtu: 1500,
            gateway: bridge::testing::GATEWAY,
            external: bridge::testing::EXTERNAL,
            forwards: Vec::new(),
            forwards6: Vec::new(),
            dns_upstream: None,
            offload: false,
            egress: bridge::EgressPolicy::default(),
            ipv6: false,
            external6: bridge::defaults::NAT_EXTERNAL_ADDR6,
        }
    }

    /// One port's worker reads a TUN queue at a time: another port's waits until the reader
    /// drained it, or until the reader has been stopped for its guest's RX buffers for
    /// `TUN_STEAL`; a reader that detaches leaves the queue to the next one, marked as left.
    #[test]
    fn one_port_reads_a_tun_queue_at_a_time() {
        let mut sh = Shared::new(&config(), 2).unwrap();
        sh.set_tun_queues(2);
        let nonblock = vmm_sys_util::eventfd::EFD_NONBLOCK;
        let wakes = [(); 2].map(|()| Arc::new(EventFd::new(nonblock).unwrap()));
        let (a, _) = sh.attach(Arc::clone(&wakes[0])).unwrap();
        let (b, _) = sh.attach(Arc::clone(&wakes[1])).unwrap();
        let t0 = Instant::now();
        assert!(
            sh.claim_tun(0, a, t0) && sh.claim_tun(0, a, t0),
            "a reads queue 0"
        );
        assert!(!sh.claim_tun(0, b, t0), "not while a reads it");
        assert!(sh.claim_tun(1, b, t0), "queue 1 is another's");
        // a drained it: the port the last host batch was for reads next (none yet: the
        // first, a), b only once a stopped for too long.
        sh.release_tun(0, a, TunStop::Drained, t0);
        assert!(!sh.claim_tun(0, b, t0), "a reads next");
        assert!(sh.claim_tun(0, a, t0));
        sh.release_tun(0, a, TunStop::Starved, t0);
        assert!(sh.claim_tun(0, b, t0 + TUN_STEAL));
        // b stopped for its guest's buffers: it keeps the queue for TUN_STEAL.
        sh.release_tun(0, b, TunStop::Starved, t0);
        assert!(!sh.claim_tun(0, a, t0 + TUN_STEAL / 2));
        // b takes it again (never taken from it while it reads) and stops again: its first
        // stop counts.
        assert!(sh.claim_tun(0, b, t0 + TUN_STEAL / 2));
        assert!(!sh.claim_tun(0, a, t0 + TUN_STEAL * 2), "b is reading");
        sh.release_tun(0, b, TunStop::Starved, t0 + TUN_STEAL / 2);
        assert!(!sh.claim_tun(0, a, t0 + TUN_STEAL - Duration::from_micros(1)));
        assert!(
            sh.claim_tun(0, a, t0 + TUN_STEAL),
            "b stopped for too long: a reads"
        );
        assert!(!sh.claim_tun(0, b, t0 + TUN_STEAL), "and b waits for a now");
        // A full budget is progress: a's first stop is forgotten, and it comes back for the
        // rest (b takes the queue only if it does not, for TUN_STEAL).
        sh.release_tun(0, a, TunStop::Starved, t0);
        assert!(sh.claim_tun(0, a, t0 + TUN_STEAL * 2));
        sh.release_tun(0, a, TunStop::Budget, t0 + TUN_STEAL * 2);
        assert!(!sh.claim_tun(0, b, t0 + TUN_STEAL * 2), "a comes back");
        assert!(
            sh.claim_tun(0, b, t0 + TUN_STEAL * 3),
            "a did not come back"
        );
        sh.release_tun(0, b, TunStop::Budget, t0 + TUN_STEAL * 3);
        // b comes back to its own stopped queue 1 at once; then it detaches.
        sh.release_tun(1, b, TunStop::Starved, t0);
        assert!(sh.claim_tun(1, b, t0 + TUN_STEAL * 2), "its own");
        assert!(!sh.tun_left(1));
        let _ = wakes[0].read();
        sh.detach(b);
        assert!(sh.tun_left(1), "b left queue 1 perhaps with packets");
        assert_eq!(wakes[0].read().unwrap(), 1, "a woken to read it");
        assert!(sh.claim_tun(1, a, t0) && !sh.tun_left(1));
    }

    #[test]
    fn port_macs_count_up_from_the_configured_one() {
        let base = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert_eq!(mac_plus(base, 0), base);
        assert_eq!(mac_plus(base, 1).to_string(), "52:54:00:12:34:57");
        let edge = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0xff]);
        assert_eq!(mac_plus(edge, 1).to_string(), "52:54:00:12:35:00");
    }
}
