//! Several guest namespaces (`--guest-netns` given more than once) or several queue pairs
//! (`--queues N`): one simulated guest per namespace, each a port of one [`bridge::Network`]
//! (one NAT, one TUN, guest-to-guest frames switched by the bridge), all on one thread,
//! `lab-network`, in one level-triggered epoll set over the guests' TAP queues, the TUN's
//! queues and a stop eventfd.
//!
//! Queue pairs: a guest with N pairs has a TAP in G with N queues and drives pair i from TAP
//! queue i; the TUN in H has N queues and pair i writes queue i, so the kernel sends a flow's
//! packets back on the queue that wrote it (docs/PLATFORMS.md "Multi-queue"), which pair i
//! reads. A TUN queue no pair of the reading port uses (its guest went down to fewer pairs)
//! is read by pair 0. The guest sets its pairs on the control queue
//! (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, answered by [`ControlQueue`] into
//! [`Network::set_queue_pairs`]) at start, and switches between N and 1 on request (SIGUSR2):
//! as a VMM does for a guest that lowers its pairs, the queues of the pairs out of use are
//! detached from the TAP and the TUN (`TUNSETQUEUE`), so the kernels steer every flow to the
//! queues still read.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bridge::{
    Clock, ControlCommand, ControlQueue, HostLink, Network, NetworkLock, PairWorker, PortId,
};
use utun::Tun;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::lab_loop::{
    Control, Finished, LoopThread, MAX_RX_ROUNDS, TICK, epoll_over, tun_fd, wait_ms,
};
use crate::guest::{ControlDriver, Driver, SimGuest};

/// Several guests' loop (`lab-network`).
pub(super) struct LabNetwork;

/// One guest of the network as the loop drives it.
struct Guest {
    port: PortId,
    mem: GuestMemoryMmap,
    /// Its queue pairs, pair 0 first; `active` of them in use.
    pairs: Vec<Pair>,
    active: usize,
    /// The control queue (a guest with more than one pair).
    ctrl: Option<Ctrl>,
}

/// One queue pair: the driver on its TAP queue and the device's two virtqueues.
struct Pair {
    driver: Driver<Tun>,
    rxq: Queue,
    txq: Queue,
    /// The TAP queue the driver reads and writes (detached while the pair is out of use).
    tap: Arc<Tun>,
    tx_more: bool,
    /// The last TX kick stopped for another port's inbox (`Notify::tx_waits`).
    tx_waits: bool,
    rx_more: bool,
}

/// A guest's control virtqueue: the driver's side, the device's queue and its handler.
struct Ctrl {
    driver: ControlDriver,
    queue: Queue,
    device: ControlQueue,
}

impl LabNetwork {
    /// Negotiates each guest's port (features acked as the guest negotiated them), sets each
    /// guest's queue pairs through its control queue, and starts the thread. `guests` carry a
    /// TAP queue per pair, `tuns` the TUN's queues (one, or as many as a guest has pairs).
    ///
    /// With `thread_per_pair` (`--threads pairs`): each pair of each guest runs on a thread of
    /// its own (`lab-network` for guest 0's pair 0, `lab-pair-<port>-<pair>` for the others)
    /// with a [`bridge::PairWorker`], the network behind a mutex taken per batch only around
    /// what the pairs share (see [`run_pairs`]).
    pub(super) fn start(
        net: Network,
        guests: Vec<(PortId, SimGuest, Vec<Arc<Tun>>)>,
        tuns: Vec<Tun>,
        thread_per_pair: bool,
    ) -> anyhow::Result<LoopThread> {
        for tun in &tuns {
            tun.prepare().context("making the TUN non-blocking")?;
        }
        let host = tuns.first().context("no TUN queue")?;
        let mut net = net.with_short_batch_drains(true);
        let mut driven = Vec::with_capacity(guests.len());
        for (port, guest, taps) in guests {
            let acked = net.ack_features(port, guest.acked_features(), host);
            anyhow::ensure!(
                acked == guest.acked_features(),
                "port {}: the bridge acknowledged {acked:#x}, the guest negotiated {:#x}",
                port.0,
                guest.acked_features()
            );
            let n = usize::from(guest.queue_pairs());
            anyhow::ensure!(
                taps.len() == n && (n == 1 || tuns.len() >= n),
                "port {}: {n} queue pairs with {} TAP and {} TUN queues",
                port.0,
                taps.len(),
                tuns.len()
            );
            let mem = guest.memory().clone();
            let mut queues = Vec::with_capacity(n);
            for pair in 0..n {
                let (rx, tx) = (2 * pair as u16, 2 * pair as u16 + 1);
                let mut rxq = guest.device_queue(rx)?;
                let mut txq = guest.device_queue(tx)?;
                net.prepare_queue(port, &mut rxq, rx)
                    .context("the device refused an RX queue")?;
                net.prepare_queue(port, &mut txq, tx)
                    .context("the device refused a TX queue")?;
                queues.push((rxq, txq));
            }
            let ctrl = match guest.control_queue_index() {
                Some(index) if n > 1 => {
                    let mut device = ControlQueue::new(guest.queue_pairs());
                    device.set_features(acked);
                    Some(Ctrl {
                        driver: guest.control_driver()?,
                        queue: guest.device_queue(index)?,
                        device,
                    })
                }
                _ => None,
            };
            let drivers = guest.into_pair_drivers(taps.clone())?;
            let pairs = drivers
                .into_iter()
                .zip(queues)
                .zip(taps)
                .map(|((driver, (rxq, txq)), tap)| Pair {
                    driver,
                    rxq,
                    txq,
                    tap,
                    tx_more: false,
                    tx_waits: false,
                    rx_more: false,
                })
                .collect();
            let mut g = Guest {
                port,
                mem,
                pairs,
                active: 1,
                ctrl,
            };
            // The driver's first command: every pair it laid out.
            if g.ctrl.is_some() {
                set_pairs(&mut net, &mut g, n)?;
            }
            driven.push(g);
        }
        if thread_per_pair {
            return LoopThread::spawn("lab-network", move |control| {
                run_pairs(net, driven, tuns, &control)
            });
        }
        LoopThread::spawn("lab-network", move |control| {
            let mut state = State {
                net,
                guests: driven,
                clock: Clock::new(),
                tun_attached: vec![true; tuns.len()],
                tuns,
                control,
            };
            let result = state.run();
            let guest = driver_summary(&state.guests);
            let pairs = state.pair_summary();
            Finished {
                result,
                guest: format!("{guest}\nstats: {pairs}"),
                bridge: state.net.bridge_stats(),
            }
        })
    }
}

/// The guest's driver sends `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET n`, the device answers it (the
/// network then uses `n` pairs of the port) and the driver reads the ack.
fn set_pairs(net: &mut Network, g: &mut Guest, n: usize) -> anyhow::Result<()> {
    let port = g.port;
    let ctrl = g.ctrl.as_mut().context("no control queue")?;
    let pairs = u16::try_from(n).context("queue pairs")?;
    ctrl.driver.post_queue_pairs(pairs)?;
    ctrl.device
        .process(&g.mem, &mut ctrl.queue, |cmd| match cmd {
            ControlCommand::QueuePairs(n) => net.set_queue_pairs(port, usize::from(n)).is_ok(),
            _ => false,
        })
        .context("the device's control queue")?;
    match ctrl.driver.take_ack()? {
        Some(bridge::VIRTIO_NET_OK) => {
            g.active = n;
            Ok(())
        }
        Some(ack) => anyhow::bail!("the device refused {n} queue pairs (ack {ack})"),
        None => anyhow::bail!("the device left VQ_PAIRS_SET {n} unanswered"),
    }
}

struct State {
    net: Network,
    guests: Vec<Guest>,
    clock: Clock,
    /// The TUN's queues; pair i of every port writes queue i.
    tuns: Vec<Tun>,
    /// Which TUN queues are attached (in the kernel's steering and the epoll set).
    tun_attached: Vec<bool>,
    control: Control,
}

impl State {
    fn run(&mut self) -> anyhow::Result<()> {
        let mut fds = vec![(self.control.stop.as_raw_fd(), TOKEN_STOP)];
        for (q, tun) in self.tuns.iter().enumerate() {
            fds.push((tun_fd(tun)?, TOKEN_TUNS + q as u64));
        }
        for (i, g) in self.guests.iter().enumerate() {
            for (p, pair) in g.pairs.iter().enumerate().take(g.active) {
                fds.push((pair.driver.fd().as_raw_fd(), tap_token(i, p)));
            }
        }
        let epoll = epoll_over(fds)?;
        let pairs: usize = self.guests.iter().map(|g| g.pairs.len()).sum();
        let mut events = vec![EpollEvent::default(); pairs + self.tuns.len() + 1];
        for q in 0..self.tuns.len() {
            self.host_rx(q)?;
        }
        self.check_host_link()?;
        let mut next_tick = Instant::now() + TICK;
        let mut taps = Vec::new();
        let mut tuns = vec![false; self.tuns.len()];
        while !self.control.stopping() {
            let now = Instant::now();
            if now >= next_tick {
                self.net.on_tick(self.clock.now());
                next_tick = now + TICK;
                self.deliver_pending()?;
            }
            let timeout = self.net.next_timeout(self.clock.now());
            let more = self.guests.iter().any(|g| {
                g.pairs
                    .iter()
                    .take(g.active)
                    .any(|p| p.tx_more || p.rx_more)
            });
            let ms = wait_ms(next_tick, now, timeout, more);
            let n = match epoll.wait(ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll wait"),
            };
            taps.clear();
            tuns.fill(false);
            for ev in events.iter().take(n) {
                match ev.data() {
                    TOKEN_STOP => {}
                    t if t >= TOKEN_GUESTS => {
                        let t = t - TOKEN_GUESTS;
                        taps.push((
                            usize::try_from(t / PAIR_TOKENS).unwrap_or(usize::MAX),
                            (t % PAIR_TOKENS) as usize,
                        ));
                    }
                    t => {
                        if let Some(s) = usize::try_from(t - TOKEN_TUNS)
                            .ok()
                            .and_then(|q| tuns.get_mut(q))
                        {
                            *s = true;
                        }
                    }
                }
            }
            for i in 0..self.guests.len() {
                for p in 0..self.guests[i].active {
                    if taps.contains(&(i, p)) || self.guests[i].pairs[p].tx_more {
                        self.tx(i, p)?;
                    }
                }
            }
            for (q, &ready) in tuns.iter().enumerate() {
                if ready {
                    self.host_rx(q)?;
                }
            }
            for i in 0..self.guests.len() {
                for p in 0..self.guests[i].active {
                    if self.guests[i].pairs[p].rx_more {
                        self.rx(i, p, None)?;
                    }
                }
            }
            self.deliver_pending()?;
            self.check_host_link()?;
            if self.control.take_stats_request() {
                eprintln!(
                    "stats: {}",
                    super::lab_bridge::format_stats(&self.net.bridge_stats())
                );
                eprintln!("stats: {}", self.pair_summary());
            }
            if self.control.take_pairs_switch_request() {
                self.switch_pairs(&epoll)?;
            }
        }
        Ok(())
    }

    /// What each pair of each port moved: `queue pairs: port 0: 2 in use, pair 0 tx 10 rx 12,
    /// pair 1 tx 9 rx 11; port 1: ...` (the device's counters, [`Network::pair_stats`]).
    fn pair_summary(&self) -> String {
        let ports = self
            .guests
            .iter()
            .map(|g| pair_line(&self.net, g.port))
            .collect::<Vec<_>>()
            .join("; ");
        format!("queue pairs: {ports}")
    }

    /// SIGUSR2: every guest with a control queue goes from its N pairs to 1, or from 1 back
    /// to N. Down: the driver detaches the TAP queues of the pairs it leaves (G's kernel then
    /// sends every flow on the queues left), takes what they still held, and sends
    /// `VQ_PAIRS_SET 1`; the device then detaches the TUN queues no port uses any more. Up:
    /// the queues are attached again before the command, and the pairs' rings, kept as they
    /// were, go on.
    fn switch_pairs(&mut self, epoll: &Epoll) -> anyhow::Result<()> {
        for i in 0..self.guests.len() {
            let g = &self.guests[i];
            if g.ctrl.is_none() {
                continue;
            }
            let (from, to) = if g.active > 1 {
                (g.active, 1)
            } else {
                (1, g.pairs.len())
            };
            // The kernel gives a detached queue's index to its last one and appends a queue
            // attached again: detached from the top down and attached from the bottom up,
            // the queues keep their indices (docs/PLATFORMS.md "Multi-queue").
            if to < from {
                for p in (to..from).rev() {
                    // What the pair holds, each way, before its queue goes (detaching purges
                    // the packets queued on it).
                    self.tx(i, p)?;
                    self.rx(i, p, None)?;
                    let pair = &self.guests[i].pairs[p];
                    epoll_ctl(
                        epoll,
                        ControlOperation::Delete,
                        fd_of(pair),
                        tap_token(i, p),
                    )?;
                    pair.tap
                        .set_queue_enabled(false)
                        .context("detaching a TAP queue")?;
                }
                set_pairs(&mut self.net, &mut self.guests[i], to)?;
            } else {
                for p in from..to {
                    let pair = &self.guests[i].pairs[p];
                    pair.tap
                        .set_queue_enabled(true)
                        .context("attaching a TAP queue")?;
                    epoll_ctl(epoll, ControlOperation::Add, fd_of(pair), tap_token(i, p))?;
                }
                set_pairs(&mut self.net, &mut self.guests[i], to)?;
            }
            tracing::info!(port = self.guests[i].port.0, from, to, "queue pairs set");
        }
        self.follow_tun_queues(epoll)?;
        // Frames the pairs left behind in their inboxes or rings.
        self.deliver_pending()
    }

    /// TUN queue q stays attached while some port uses pair q (queue 0 always). A queue
    /// going is read first (by pair 0: no port uses pair q; detaching purges what is queued),
    /// then leaves the epoll set and is detached (the kernel sends nothing more to it).
    fn follow_tun_queues(&mut self, epoll: &Epoll) -> anyhow::Result<()> {
        let used = self.guests.iter().map(|g| g.active).max().unwrap_or(1);
        // Detached from the top down, attached from the bottom up (see `switch_pairs`).
        let attached = self.tun_attached.iter().filter(|a| **a).count();
        let order: Vec<usize> = if used < attached {
            (1..self.tuns.len()).rev().collect()
        } else {
            (1..self.tuns.len()).collect()
        };
        for q in order {
            let want = q < used;
            if want == self.tun_attached[q] {
                continue;
            }
            let fd = tun_fd(&self.tuns[q])?;
            if want {
                self.tuns[q]
                    .set_queue_enabled(true)
                    .context("attaching a TUN queue")?;
                epoll_ctl(epoll, ControlOperation::Add, fd, TOKEN_TUNS + q as u64)?;
            } else {
                self.host_rx(q)?;
                epoll_ctl(epoll, ControlOperation::Delete, fd, TOKEN_TUNS + q as u64)?;
                self.tuns[q]
                    .set_queue_enabled(false)
                    .context("detaching a TUN queue")?;
            }
            self.tun_attached[q] = want;
        }
        Ok(())
    }

    /// Ends the loop once a port saw the TUN fail (see `lab_loop`).
    fn check_host_link(&self) -> anyhow::Result<()> {
        if self.guests.iter().any(|g| self.net.host_failed(g.port)) {
            anyhow::bail!(
                "the host link failed: TUN {} in the host namespace is gone or broken",
                self.tuns.first().map_or("?", |t| t.name())
            );
        }
        Ok(())
    }

    /// TUN queue `q` is readable: read it with the port that took most of the last batch
    /// (the others' packets move to their inboxes), on its pair `q` (pair 0 when the port
    /// does not use pair `q`), then deliver those.
    fn host_rx(&mut self, q: usize) -> anyhow::Result<()> {
        let Some(port) = self.net.host_reader() else {
            return Ok(());
        };
        if let Some(i) = self.guests.iter().position(|g| g.port == port) {
            let pair = if q < self.guests[i].active { q } else { 0 };
            self.rx(i, pair, Some(q))?;
        }
        self.deliver_pending()
    }

    /// Delivers every inbox that has frames (switched from another guest, moved from a host
    /// batch, gateway replies), on pair 0.
    fn deliver_pending(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_PENDING_ROUNDS {
            let mut moved = false;
            for i in 0..self.guests.len() {
                let port = self.guests[i].port;
                if !self.net.pending(port) {
                    continue;
                }
                let before = self.net.stats(port).map(|s| s.rx_frames);
                self.rx(i, 0, None)?;
                // No RX buffers: its frames wait (or its inbox fills and drops); the others
                // go on.
                moved |= self.net.stats(port).map(|s| s.rx_frames) != before;
            }
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Pair `p` of guest `i` has a readable TAP queue (or its last kick left chains): one
    /// batch of its driver (`MAX_TX_BATCHES`), then the other pairs and guests get their turn
    /// (the TAP's epoll registration is level-triggered: a pair with more comes back at
    /// once). Until nothing was left, a guest writing to its TAP as fast as it can kept the
    /// thread, and the other guests' drivers, which share it, starved (a flooding guest left
    /// another's TCP 0.03-0.17 of its figure alone; one batch per visit: 0.37-0.64,
    /// several_guests_e2e's flood test).
    fn tx(&mut self, i: usize, p: usize) -> anyhow::Result<()> {
        for _ in 0..MAX_TX_BATCHES {
            // Pair p writes TUN queue p (queue 0 on a one-queue TUN).
            let tun = self.tuns.get(p).unwrap_or(&self.tuns[0]);
            let g = &mut self.guests[i];
            let pair = &mut g.pairs[p];
            let pump = pair.driver.pump_tx()?;
            if pump.posted > 0 || pair.tx_more {
                let n = self
                    .net
                    .on_pair_tx_kick(
                        g.port,
                        p,
                        &g.mem,
                        &mut pair.txq,
                        Some(&mut pair.rxq),
                        tun,
                        self.clock.now(),
                    )
                    .context("the device's TX path")?;
                pair.tx_more = n.tx_more;
                pair.rx_more |= n.rx_more;
                pair.driver.reclaim_tx()?;
                self.rx(i, p, None)?;
                // Frames for the other guests: to them before more comes.
                self.deliver_pending()?;
                if self.guests[i].pairs[p].tx_more {
                    return Ok(());
                }
            }
            if pump.drained || pump.posted == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Pair `p` of guest `i`: its RX path (the port's inbox, and TUN queue `read` when
    /// readable), then its driver writes the frames to its TAP queue and refills; until
    /// nothing more moves.
    fn rx(&mut self, i: usize, p: usize, read: Option<usize>) -> anyhow::Result<()> {
        let mut read = read;
        for _ in 0..MAX_RX_ROUNDS {
            // Pair p's TUN queue, or the queue it was asked to read (queue 0 on a one-queue
            // TUN).
            let tun = self.tuns.get(read.unwrap_or(p)).unwrap_or(&self.tuns[0]);
            let g = &mut self.guests[i];
            let pair = &mut g.pairs[p];
            let before = self.net.stats(g.port).map_or(0, |s| s.rx_frames);
            let n = self
                .net
                .on_pair_rx_ready(
                    g.port,
                    p,
                    &g.mem,
                    &mut pair.rxq,
                    tun,
                    read.is_some(),
                    self.clock.now(),
                )
                .context("the device's RX path")?;
            pair.rx_more = n.rx_more;
            read = None;
            pair.driver.service_rx()?;
            if self.net.stats(g.port).map_or(0, |s| s.rx_frames) == before {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// `--threads pairs`: each queue pair of each guest on a thread of its own (guest 0's pair 0
/// on the calling thread, which also ticks the network and prints the stats), each with a
/// [`PairWorker`] and its TAP queue, the network behind one mutex that a worker takes per
/// batch only for the gateway, the switch, the NAT and the inbox (the copies in and out of
/// guest memory and the TAP and TUN system calls run outside it). Pair i of every guest
/// writes TUN queue i; guest 0's pair i reads it (packets for another guest go to that
/// guest's inbox). A port's pair 0 thread is woken by an eventfd when another thread left
/// frames in the port's inbox (a port's inbox is its pair 0's: `Network::wake_after`), a
/// parked pair's thread by one of its own. The pairs stay as the guests set them (SIGUSR2 is
/// not served here).
fn run_pairs(net: Network, guests: Vec<Guest>, tuns: Vec<Tun>, control: &Control) -> Finished {
    let net = Mutex::new(net);
    let clock = Clock::new();
    let wakers: Vec<Waker> = guests
        .iter()
        .map(|g| {
            let fd = || EventFd::new(EFD_NONBLOCK).context("creating a wake-up eventfd");
            Ok(Waker {
                port: g.port,
                fd: fd()?,
                pairs: (1..g.pairs.len())
                    .map(|_| fd())
                    .collect::<anyhow::Result<_>>()?,
                waiting: g.pairs.iter().map(|_| AtomicBool::new(false)).collect(),
            })
        })
        .collect::<anyhow::Result<_>>()
        .unwrap_or_default();
    let mut guests = guests;
    let result = if wakers.len() == guests.len() {
        std::thread::scope(|s| {
            let mut jobs = Vec::new();
            for (g, guest) in guests.iter_mut().enumerate() {
                let (port, mem) = (guest.port, &guest.mem);
                for (p, pair) in guest.pairs.iter_mut().enumerate() {
                    jobs.push(PairJob {
                        port,
                        pair: p,
                        mem,
                        driver: pair,
                        // Guest 0's pairs read the TUN's queues.
                        reads: g == 0,
                        wake: &wakers[g],
                        first: g == 0 && p == 0,
                    });
                }
            }
            let mut jobs = jobs.into_iter();
            let Some(first) = jobs.next() else {
                return Err(anyhow::anyhow!("no guest"));
            };
            let mut handles = Vec::new();
            for job in jobs {
                let (net, tuns, wakers) = (&net, &tuns, &wakers[..]);
                let name = format!("lab-pair-{}-{}", job.port.0, job.pair);
                let h = std::thread::Builder::new()
                    .name(name)
                    .spawn_scoped(s, move || {
                        let r = pair_loop(net, job, tuns, wakers, control, clock);
                        if r.is_err() {
                            control.stopping.store(true, Ordering::SeqCst);
                            let _ = control.stop.write(1);
                        }
                        r
                    });
                match h {
                    Ok(h) => handles.push(h),
                    Err(e) => {
                        control.stopping.store(true, Ordering::SeqCst);
                        let _ = control.stop.write(1);
                        return Err(anyhow::Error::from(e).context("spawning a pair's thread"));
                    }
                }
            }
            let mut result = pair_loop(&net, first, &tuns, &wakers, control, clock);
            control.stopping.store(true, Ordering::SeqCst);
            let _ = control.stop.write(1);
            for h in handles {
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a pair's thread panicked")));
                if result.is_ok() {
                    result = r;
                }
            }
            result
        })
    } else {
        Err(anyhow::anyhow!(
            "creating the ports' wake-up eventfds failed"
        ))
    };
    let net = net.into_inner().unwrap_or_else(PoisonError::into_inner);
    let guest = driver_summary(&guests);
    let pairs = guests
        .iter()
        .map(|g| pair_line(&net, g.port))
        .collect::<Vec<_>>()
        .join("; ");
    Finished {
        result,
        guest: format!("{guest}\nstats: queue pairs: {pairs}"),
        bridge: net.bridge_stats(),
    }
}

/// The simulated drivers' counters: `port 0: <pair 0> | <pair 1>; port 1: ...`.
fn driver_summary(guests: &[Guest]) -> String {
    guests
        .iter()
        .map(|g| {
            let drivers = g
                .pairs
                .iter()
                .map(|p| p.driver.stats().summary())
                .collect::<Vec<_>>()
                .join(" | ");
            format!("port {}: {drivers}", g.port.0)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `port 0: 2 in use, pair 0 tx A rx B, pair 1 tx C rx D` (see `State::pair_summary`).
fn pair_line(net: &Network, port: PortId) -> String {
    let pairs = (0..MAX_PAIRS)
        .filter_map(|p| {
            net.pair_stats(port, p)
                .map(|s| format!("pair {p} tx {} rx {}", s.tx_frames, s.rx_frames))
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "port {}: {} in use, {pairs}",
        port.0,
        net.queue_pairs(port).unwrap_or(0)
    )
}

/// A port's wake-ups: the port's, written when `Network::wake_after` names the port, read by
/// its pair 0 thread; and each other pair's. A thread that finds the port released (pair 0's
/// at its wake-up) or whose wait ran out wakes the port's other pairs that wait.
struct Waker {
    port: PortId,
    fd: EventFd,
    /// Pairs 1 and up.
    pairs: Vec<EventFd>,
    /// Per pair, its thread waits for the port's release (see [`pair_loop`]).
    waiting: Vec<AtomicBool>,
}

impl Waker {
    /// The eventfd pair `pair`'s thread waits on.
    fn fd_of(&self, pair: usize) -> Option<&EventFd> {
        match pair {
            0 => Some(&self.fd),
            p => self.pairs.get(p - 1),
        }
    }

    /// The port is not parked any more: wakes each pair but `me` that waits.
    fn released(&self, me: usize) {
        for (p, w) in self.waiting.iter().enumerate() {
            if p != me
                && w.swap(false, Ordering::SeqCst)
                && let Some(fd) = self.fd_of(p)
            {
                let _ = fd.write(1);
            }
        }
    }
}

/// What one pair's thread serves.
struct PairJob<'a> {
    port: PortId,
    pair: usize,
    mem: &'a GuestMemoryMmap,
    driver: &'a mut Pair,
    /// The thread reads TUN queue `pair` (guest 0's).
    reads: bool,
    /// The port's wake-ups.
    wake: &'a Waker,
    /// Ticks the network and prints the stats (guest 0's pair 0).
    first: bool,
}

/// One pair's thread (see [`run_pairs`]).
fn pair_loop(
    net: &Mutex<Network>,
    job: PairJob<'_>,
    tuns: &[Tun],
    wakers: &[Waker],
    control: &Control,
    clock: Clock,
) -> anyhow::Result<()> {
    let PairJob {
        port,
        pair: i,
        mem,
        driver: pair,
        reads,
        wake,
        first,
    } = job;
    let tun = tuns.get(i).unwrap_or(&tuns[0]);
    let mut fds = vec![
        (control.stop.as_raw_fd(), TOKEN_STOP),
        (pair.driver.fd().as_raw_fd(), TOKEN_GUESTS),
    ];
    if reads {
        fds.push((tun_fd(tun)?, TOKEN_TUNS));
    }
    if let Some(fd) = wake.fd_of(i) {
        fds.push((fd.as_raw_fd(), TOKEN_WAKE));
    }
    let epoll = epoll_over(fds.iter().copied())?;
    // While the sender waits for another port's thread (`Notify::tx_waits`), the loop leaves
    // its TAP out: the guest's frames wait there (and in its TX ring) until that port has
    // delivered, instead of being fetched into an inbox with no room (dropped) or waking the
    // loop for nothing.
    let waiting_set = epoll_over(fds.iter().copied().filter(|&(_, t)| t != TOKEN_GUESTS))?;
    let mut waits: Option<Instant> = None;
    let mut events = vec![EpollEvent::default(); 4];
    let mut w = PairWorker::new(port, i);
    let mut worker = PairThread {
        net,
        mem,
        pair,
        tun,
        clock,
        w: &mut w,
    };
    worker.rx(reads)?;
    let mut next_tick = Instant::now() + TICK;
    while !control.stopping() {
        let now = Instant::now();
        if first && now >= next_tick {
            net.with_network(|n| n.on_tick(clock.now()));
            next_tick = now + TICK;
        }
        let more = (worker.pair.tx_more && waits.is_none()) || worker.pair.rx_more;
        let mut ms = wait_ms(next_tick, now, None, more);
        let set = if waits.is_some() {
            ms = ms.min(WAIT_MS);
            &waiting_set
        } else {
            &epoll
        };
        let n = match set.wait(ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll wait"),
        };
        let (mut tap, mut host, mut woken) = (false, false, false);
        for ev in events.iter().take(n) {
            match ev.data() {
                TOKEN_GUESTS => tap = true,
                TOKEN_TUNS => host = true,
                TOKEN_WAKE => woken = true,
                _ => {}
            }
        }
        if woken && let Some(fd) = wake.fd_of(i) {
            let _ = fd.read();
            if i == 0
                && !net.with_network(|n| {
                    n.took_wakeup(port);
                    n.parked(port)
                })
            {
                wake.released(i);
            }
        }
        if let Some(since) = waits {
            // Released by the thread that delivered the inbox this port's sending filled
            // (`Network::wake_after`: pair 0's thread is woken and wakes the port's other
            // pairs), or waited long enough: a guest that stopped taking its frames holds
            // another back by WAIT per batch at most.
            let out = since.elapsed() >= WAIT;
            let parked = net.with_network(|n| {
                if out {
                    n.unpark(port);
                }
                n.parked(port)
            });
            if !parked {
                waits = None;
                if let Some(w) = wake.waiting.get(i) {
                    w.store(false, Ordering::SeqCst);
                }
                // The port's other pairs that wait (their own bound may be later).
                wake.released(i);
            }
        }
        if tap || (worker.pair.tx_more && waits.is_none()) {
            worker.tx()?;
            if worker.pair.tx_waits {
                // Flagged before parking: a release by another thread in between sees it.
                let flag = wake.waiting.get(i);
                flag.inspect(|w| w.store(true, Ordering::SeqCst));
                if net.with_network(|n| n.park(port)) {
                    waits = Some(Instant::now());
                } else {
                    flag.inspect(|w| w.store(false, Ordering::SeqCst));
                }
            }
        }
        let (pending, failed) = net.with_network(|n| (n.pending(port), n.host_failed(port)));
        if host || worker.pair.rx_more || (i == 0 && (woken || pending)) {
            worker.rx(host)?;
        }
        wake_after(net, wakers, port, i);
        if failed {
            anyhow::bail!(
                "the host link failed: TUN {} in the host namespace is gone or broken",
                tun.name()
            );
        }
        if first && control.take_stats_request() {
            let (stats, pairs) = net.with_network(|n| {
                let pairs = wakers
                    .iter()
                    .map(|w| pair_line(n, w.port))
                    .collect::<Vec<_>>()
                    .join("; ");
                (n.bridge_stats(), pairs)
            });
            eprintln!("stats: {}", super::lab_bridge::format_stats(&stats));
            eprintln!("stats: queue pairs: {pairs}");
        }
        if first && control.take_pairs_switch_request() {
            tracing::warn!("switching queue pairs is not served with a thread per pair");
        }
    }
    Ok(())
}

/// After an event of pair `pair` of `me`: wakes the pair 0 thread of each port
/// `Network::wake_after` names (each once, until it reads its wake-up).
fn wake_after(net: &Mutex<Network>, wakers: &[Waker], me: PortId, pair: usize) {
    if wakers.len() < 2 && pair == 0 {
        // One guest: its pair 0 delivers its own inbox after its own events.
        return;
    }
    net.with_network(|n| {
        n.wake_after(me, pair, |p| {
            if let Some(w) = wakers.iter().find(|w| w.port == p) {
                let _ = w.fd.write(1);
            }
        });
    });
}

/// How long a sender waits for another port's thread at most (see [`pair_loop`]), and the
/// same in epoll's milliseconds.
const WAIT: Duration = Duration::from_millis(5);
const WAIT_MS: i32 = 5;

/// What one pair's thread drives.
struct PairThread<'a> {
    net: &'a Mutex<Network>,
    mem: &'a GuestMemoryMmap,
    pair: &'a mut Pair,
    tun: &'a Tun,
    clock: Clock,
    w: &'a mut PairWorker,
}

impl PairThread<'_> {
    /// One batch of the driver's frames through the pair's worker (see `State::tx`).
    fn tx(&mut self) -> anyhow::Result<()> {
        let pump = self.pair.driver.pump_tx()?;
        if pump.posted > 0 || self.pair.tx_more {
            let n = self
                .w
                .on_tx_kick(
                    self.net,
                    self.mem,
                    &mut self.pair.txq,
                    Some(&mut self.pair.rxq),
                    self.tun,
                    self.clock.now(),
                )
                .context("the device's TX path")?;
            self.pair.tx_more = n.tx_more;
            self.pair.tx_waits = n.tx_waits;
            self.pair.rx_more |= n.rx_more;
            self.pair.driver.reclaim_tx()?;
            self.rx(false)?;
        }
        Ok(())
    }

    /// The pair's RX path (the port's inbox, and its TUN queue when `read`), then the driver
    /// writes the frames to its TAP queue and refills; until nothing more moves.
    fn rx(&mut self, read: bool) -> anyhow::Result<()> {
        let mut read = read;
        for _ in 0..MAX_RX_ROUNDS {
            let before = self.pair.driver.stats().rx_frames.load(Ordering::Relaxed);
            let n = self
                .w
                .on_rx_ready(
                    self.net,
                    self.mem,
                    &mut self.pair.rxq,
                    self.tun,
                    read,
                    self.clock.now(),
                )
                .context("the device's RX path")?;
            self.pair.rx_more = n.rx_more;
            read = false;
            self.pair.driver.service_rx()?;
            if self.pair.driver.stats().rx_frames.load(Ordering::Relaxed) == before {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Queue pairs a port may have (stats lines).
const MAX_PAIRS: usize = 16;

/// Adds or removes `fd` (a TAP or TUN queue) in the loop's epoll set.
fn epoll_ctl(epoll: &Epoll, op: ControlOperation, fd: RawFd, token: u64) -> anyhow::Result<()> {
    epoll
        .ctl(op, fd, EpollEvent::new(EventSet::IN, token))
        .context("epoll ctl for a TAP or TUN queue")
}

/// `pair`'s TAP queue.
fn fd_of(pair: &Pair) -> RawFd {
    pair.driver.fd().as_raw_fd()
}

/// The epoll token of guest `i`'s pair `p`.
fn tap_token(i: usize, p: usize) -> u64 {
    TOKEN_GUESTS + i as u64 * PAIR_TOKENS + p as u64
}

const TOKEN_STOP: u64 = 1;
/// A port's wake-up eventfd (`--threads pairs`).
const TOKEN_WAKE: u64 = 2;
/// TUN queue `q` is token `TOKEN_TUNS + q`.
const TOKEN_TUNS: u64 = 16;
/// Guest `i`'s pair `p` is token `TOKEN_GUESTS + i * PAIR_TOKENS + p`.
const TOKEN_GUESTS: u64 = 64;
const PAIR_TOKENS: u64 = 16;
/// A guest driver's TX batches per visit (see `State::tx`; 4 left the other guest 0.25-0.40).
const MAX_TX_BATCHES: usize = 1;
/// Inbox deliveries per pass at most.
const MAX_PENDING_ROUNDS: usize = 64;
