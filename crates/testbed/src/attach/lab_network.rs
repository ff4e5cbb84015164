//! Several guest namespaces (`--guest-netns` given more than once): one simulated guest per
//! namespace, each a port of one [`bridge::Network`] (one NAT, one TUN, guest-to-guest frames
//! switched by the bridge), all on one thread, `lab-network`, in one level-triggered epoll set
//! over the guests' TAPs, the TUN and a stop eventfd.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bridge::{Clock, HostLink, Network, PortId};
use utun::Tun;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EpollEvent;

use super::lab_loop::{
    Control, Finished, LoopThread, MAX_RX_ROUNDS, TICK, epoll_over, tun_fd, wait_ms,
};
use crate::guest::{Driver, RX_QUEUE, SimGuest, TX_QUEUE};

/// Several guests' loop (`lab-network`).
pub(super) struct LabNetwork;

/// One guest of the network as the loop drives it.
struct Guest {
    port: PortId,
    driver: Driver<Tun>,
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    tx_more: bool,
    rx_more: bool,
}

impl LabNetwork {
    /// Negotiates each guest's port (features acked as the guest negotiated them) and starts
    /// the thread.
    pub(super) fn start(
        net: Network,
        guests: Vec<(PortId, SimGuest, Arc<Tun>)>,
        tun: Tun,
    ) -> anyhow::Result<LoopThread> {
        tun.prepare().context("making the TUN non-blocking")?;
        let mut net = net.with_short_batch_drains(true);
        let mut driven = Vec::with_capacity(guests.len());
        for (port, guest, tap) in guests {
            let acked = net.ack_features(port, guest.acked_features(), &tun);
            anyhow::ensure!(
                acked == guest.acked_features(),
                "port {}: the bridge acknowledged {acked:#x}, the guest negotiated {:#x}",
                port.0,
                guest.acked_features()
            );
            let mem = guest.memory().clone();
            let mut rxq = guest.device_queue(RX_QUEUE)?;
            let mut txq = guest.device_queue(TX_QUEUE)?;
            net.prepare_queue(port, &mut rxq, RX_QUEUE)
                .context("the device refused the RX queue")?;
            net.prepare_queue(port, &mut txq, TX_QUEUE)
                .context("the device refused the TX queue")?;
            driven.push(Guest {
                port,
                driver: guest.into_driver(tap)?,
                mem,
                rxq,
                txq,
                tx_more: false,
                rx_more: false,
            });
        }
        LoopThread::spawn("lab-network", move |control| {
            let mut state = State {
                net,
                guests: driven,
                clock: Clock::new(),
                tun,
                control,
            };
            let result = state.run();
            let guest = state
                .guests
                .iter()
                .map(|g| format!("port {}: {}", g.port.0, g.driver.stats().summary()))
                .collect::<Vec<_>>()
                .join("; ");
            Finished {
                result,
                guest,
                bridge: state.net.bridge_stats(),
            }
        })
    }
}

struct State {
    net: Network,
    guests: Vec<Guest>,
    clock: Clock,
    tun: Tun,
    control: Control,
}

impl State {
    fn run(&mut self) -> anyhow::Result<()> {
        let mut fds = vec![
            (tun_fd(&self.tun)?, TOKEN_TUN),
            (self.control.stop.as_raw_fd(), TOKEN_STOP),
        ];
        for (i, g) in self.guests.iter().enumerate() {
            fds.push((g.driver.fd().as_raw_fd(), TOKEN_GUESTS + i as u64));
        }
        let epoll = epoll_over(fds)?;
        let mut events = vec![EpollEvent::default(); self.guests.len() + 2];
        self.host_rx()?;
        self.check_host_link()?;
        let mut next_tick = Instant::now() + TICK;
        let mut taps = vec![false; self.guests.len()];
        while !self.control.stopping() {
            let now = Instant::now();
            if now >= next_tick {
                self.net.on_tick(self.clock.now());
                next_tick = now + TICK;
                self.deliver_pending()?;
            }
            let timeout = self.net.next_timeout(self.clock.now());
            let more = self.guests.iter().any(|g| g.tx_more || g.rx_more);
            let ms = wait_ms(next_tick, now, timeout, more);
            let n = match epoll.wait(ms, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("epoll wait"),
            };
            taps.fill(false);
            let mut tun = false;
            for ev in events.iter().take(n) {
                match ev.data() {
                    TOKEN_TUN => tun = true,
                    TOKEN_STOP => {}
                    t => {
                        if let Some(s) = usize::try_from(t - TOKEN_GUESTS)
                            .ok()
                            .and_then(|i| taps.get_mut(i))
                        {
                            *s = true;
                        }
                    }
                }
            }
            for (i, &tap) in taps.iter().enumerate() {
                if tap || self.guests[i].tx_more {
                    self.tx(i)?;
                }
            }
            if tun {
                self.host_rx()?;
            }
            for i in 0..self.guests.len() {
                if self.guests[i].rx_more {
                    self.rx(i, false)?;
                }
            }
            self.deliver_pending()?;
            self.check_host_link()?;
            if self.control.take_stats_request() {
                eprintln!(
                    "stats: {}",
                    super::lab_bridge::format_stats(&self.net.bridge_stats())
                );
            }
        }
        Ok(())
    }

    /// Ends the loop once a port saw the TUN fail (see `lab_loop`).
    fn check_host_link(&self) -> anyhow::Result<()> {
        if self.guests.iter().any(|g| self.net.host_failed(g.port)) {
            anyhow::bail!(
                "the host link failed: TUN {} in the host namespace is gone or broken",
                self.tun.name()
            );
        }
        Ok(())
    }

    /// The TUN is readable: read it with the port that took most of the last batch (the
    /// others' packets move to their inboxes), then deliver those.
    fn host_rx(&mut self) -> anyhow::Result<()> {
        let Some(port) = self.net.host_reader() else {
            return Ok(());
        };
        if let Some(i) = self.guests.iter().position(|g| g.port == port) {
            self.rx(i, true)?;
        }
        self.deliver_pending()
    }

    /// Delivers every inbox that has frames (switched from another guest, moved from a host
    /// batch, gateway replies).
    fn deliver_pending(&mut self) -> anyhow::Result<()> {
        for _ in 0..MAX_PENDING_ROUNDS {
            let mut moved = false;
            for i in 0..self.guests.len() {
                let port = self.guests[i].port;
                if !self.net.pending(port) {
                    continue;
                }
                let before = self.net.stats(port).map(|s| s.rx_frames);
                self.rx(i, false)?;
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

    /// Guest `i`'s TAP is readable (or its last kick left chains): one batch of its driver
    /// (`MAX_TX_BATCHES`), then the other guests get their turn (the TAP's epoll registration
    /// is level-triggered: a guest with more comes back at once). Until nothing was left, a
    /// guest writing to its TAP as fast as it can kept the thread, and the other guests'
    /// drivers, which share it, starved (a flooding guest left another's TCP 0.03-0.17 of its
    /// figure alone; one batch per visit: 0.37-0.64, several_guests_e2e's flood test).
    fn tx(&mut self, i: usize) -> anyhow::Result<()> {
        for _ in 0..MAX_TX_BATCHES {
            let g = &mut self.guests[i];
            let p = g.driver.pump_tx()?;
            if p.posted > 0 || g.tx_more {
                let n = self
                    .net
                    .on_tx_kick(
                        g.port,
                        &g.mem,
                        &mut g.txq,
                        Some(&mut g.rxq),
                        &self.tun,
                        self.clock.now(),
                    )
                    .context("the device's TX path")?;
                g.tx_more = n.tx_more;
                g.rx_more |= n.rx_more;
                g.driver.reclaim_tx()?;
                self.rx(i, false)?;
                // Frames for the other guests: to them before more comes.
                self.deliver_pending()?;
                if self.guests[i].tx_more {
                    return Ok(());
                }
            }
            if p.drained || p.posted == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Guest `i`'s RX path (its inbox, and the TUN with `readable`), then its driver writes
    /// the frames to its TAP and refills; until nothing more moves.
    fn rx(&mut self, i: usize, readable: bool) -> anyhow::Result<()> {
        let mut readable = readable;
        for _ in 0..MAX_RX_ROUNDS {
            let g = &mut self.guests[i];
            let before = self.net.stats(g.port).map_or(0, |s| s.rx_frames);
            let n = self
                .net
                .on_rx_ready(
                    g.port,
                    &g.mem,
                    &mut g.rxq,
                    &self.tun,
                    readable,
                    self.clock.now(),
                )
                .context("the device's RX path")?;
            g.rx_more = n.rx_more;
            readable = false;
            g.driver.service_rx()?;
            if self.net.stats(g.port).map_or(0, |s| s.rx_frames) == before {
                return Ok(());
            }
        }
        Ok(())
    }
}

const TOKEN_TUN: u64 = 1;
const TOKEN_STOP: u64 = 2;
/// Guest `i`'s TAP is token `TOKEN_GUESTS + i`.
const TOKEN_GUESTS: u64 = 16;
/// A guest driver's TX batches per visit (see `State::tx`; 4 left the other guest 0.25-0.40).
const MAX_TX_BATCHES: usize = 1;
/// Inbox deliveries per pass at most.
const MAX_PENDING_ROUNDS: usize = 64;
