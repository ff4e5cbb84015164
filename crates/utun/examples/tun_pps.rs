//! Packets per second through one TUN queue: written into the TUN, forwarded by the kernel
//! of a private network namespace, and read back out of the same TUN. Compares the
//! one-packet API (`send`/`recv`) with the batch API (`send_batch`/`recv_batch`) for 64- and
//! 1500-byte packets, in one run.
//!
//! Linux only, needs root (CAP_NET_ADMIN + CAP_SYS_ADMIN). It creates its own namespace
//! `hostnet-utun-pps-<pid>-<n>` (crate `netns`), runs for a bounded time (7 rounds of 150 ms per case, about 5 s in all) and deletes the
//! namespace on exit, also on error.
//!
//! ```text
//! sudo cargo run --release -p utun --example tun_pps
//! ```

#[cfg(target_os = "linux")]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    linux::run()
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("tun_pps runs on Linux only (it needs network namespaces)");
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        io,
        net::Ipv4Addr,
        time::{Duration, Instant},
    };

    use netns::Netns;

    use utun::{Ipv4Dest, Tun, TunBuilder};

    const LOCAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
    /// Inside the namespace only: the simulated internet, routed back into the TUN.
    const FAR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
    const BATCH: usize = 32;
    const ROUNDS: usize = 7;
    const ROUND: Duration = Duration::from_millis(150);
    const WARM_UP: Duration = Duration::from_millis(200);

    pub(crate) fn run() -> Result<(), Box<dyn std::error::Error>> {
        let ns = Netns::new("utun-pps")?;
        utun::linux::netns::run_in(ns.fd(), || -> io::Result<()> {
            for (key, value) in [
                ("net/ipv4/ip_forward", "1"),
                ("net/ipv4/conf/all/send_redirects", "0"),
                ("net/ipv4/conf/default/send_redirects", "0"),
                ("net/ipv6/conf/default/disable_ipv6", "1"),
            ] {
                std::fs::write(format!("/proc/sys/{key}"), value)?;
            }
            Ok(())
        })??;
        let tun = TunBuilder::new()
            .mtu(1500)
            .ipv4(LOCAL, Ipv4Dest::Peer(PEER))
            .nonblocking(true)
            .netns(ns.fd())
            .open()?;
        ns.add_route_dev("198.18.0.0/15", tun.name())?;
        println!(
            "tun {} in namespace {}, batch size {BATCH}, {ROUNDS} rounds of {ROUND:?} per case",
            tun.name(),
            ns.name()
        );
        println!(
            "{:>6} {:>8} {:>14} {:>14} {:>16}",
            "bytes", "api", "median pkt/s", "best pkt/s", "median vs single"
        );
        for size in [64usize, 1500] {
            let packets: Vec<Vec<u8>> = (0..BATCH).map(|i| udp(size, 1000 + i as u16)).collect();
            measure(&tun, &packets, false, WARM_UP)?;
            // Interleaved short rounds, so load from other processes hits both APIs alike.
            let (mut single, mut batch) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                single.push(measure(&tun, &packets, false, ROUND)?);
                batch.push(measure(&tun, &packets, true, ROUND)?);
            }
            let (s_med, s_best) = stats(&mut single);
            let (b_med, b_best) = stats(&mut batch);
            println!(
                "{size:>6} {:>8} {s_med:>14.0} {s_best:>14.0} {:>16.2}",
                "single", 1.0
            );
            println!(
                "{size:>6} {:>8} {b_med:>14.0} {b_best:>14.0} {:>16.2}",
                "batch",
                b_med / s_med
            );
        }
        Ok(())
    }

    /// Rounds of BATCH packets written and read back until `run_for` has passed; returns
    /// packets per second (a packet counts once it has been written and read).
    fn measure(
        tun: &Tun,
        packets: &[Vec<u8>],
        batched: bool,
        run_for: Duration,
    ) -> io::Result<f64> {
        let refs: Vec<&[u8]> = packets.iter().map(Vec::as_slice).collect();
        let mut storage = vec![[0u8; 2048]; BATCH];
        let mut lens = [0usize; BATCH];
        let (start, mut done) = (Instant::now(), 0u64);
        while start.elapsed() < run_for {
            if batched {
                let mut sent = 0;
                while sent < refs.len() {
                    sent += tun.send_batch(&refs[sent..])?;
                }
            } else {
                for p in &refs {
                    tun.send(p)?;
                }
            }
            let mut got = 0;
            while got < BATCH {
                // Read until the queue is empty; only then wait (one poll per empty queue).
                let r = if batched {
                    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
                    tun.recv_batch(&mut bufs[..BATCH - got], &mut lens)
                        .map(|n| (0..n).filter(|&i| is_ours(&storage[i][..lens[i]])).count())
                } else {
                    tun.recv(&mut storage[0])
                        .map(|n| usize::from(is_ours(&storage[0][..n])))
                };
                match r {
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if !tun.wait_readable(Some(Duration::from_secs(1)))? {
                            return Err(io::Error::new(io::ErrorKind::TimedOut, "packets lost"));
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            done += BATCH as u64;
        }
        Ok(done as f64 / start.elapsed().as_secs_f64())
    }

    /// Median and best of the rounds.
    fn stats(v: &mut [f64]) -> (f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    }

    /// A UDP packet of `size` bytes in total from the peer to FAR.
    fn udp(size: usize, port: u16) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ipv4(PEER.octets(), FAR.octets(), 64).udp(port, 9);
        let mut p = Vec::with_capacity(size);
        let payload = vec![0x5a; size.saturating_sub(28)];
        let _ = b.write(&mut p, &payload);
        p
    }

    /// The forwarded copy of one of our packets (TTL decremented, same destination).
    fn is_ours(p: &[u8]) -> bool {
        p.len() >= 20 && p[9] == 17 && p[16..20] == FAR.octets()
    }
}
