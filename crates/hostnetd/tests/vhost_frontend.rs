//! hostnetd driven by testbed's simulated guest as a vhost-user frontend
//! (`testbed::vhost_user`): the driver side of the rings written independently of `bridge`,
//! guest memory in a shared file, kicks and interrupts over eventfds, as a VMM does, with
//! no QEMU. Real programs in the guest namespace are the traffic: udhcpc, ping, dig, curl
//! (16 MiB, SHA-256 checked) and a 16 MiB upload.
//!
//! The hostile-frontend cases of the hardening issue run here too, through testbed's frontend
//! misbehaving on purpose (`testbed::vhost_user::Hostile`): each test connects one hostile
//! frontend, checks what hostnetd answered, that it ended that connection and still runs,
//! and that a well-behaved guest after it gets its lease, pings and downloads the blob whole.
//!
//! Needs root (namespaces, a TAP, a TUN), busybox, curl, dig, dnsmasq, python3.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::Daemon;
use testbed::guest::{GuestConfig, SimGuest};
use testbed::netns::{Netns, Process};
use testbed::vhost_user::{Attached, Hostile, VhostUserDevice, shared_memory_file};

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn simulated_guest_over_vhost_user_gets_dhcp_ping_dns_and_transfers() -> Result<()> {
    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, "vu");
    let attached = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let net = attached.net_config();
    ensure!(net.mtu == 1500 && net.link_up(), "config space {net:?}");

    world.leases_and_pings(3)?;
    let answer = world.guest.exec(&[
        "dig",
        "+short",
        "+time=3",
        "+tries=2",
        &format!("@{GATEWAY}"),
        DNS_NAME,
    ])?;
    ensure!(answer.trim() == SERVER_ADDR, "dig answered {answer:?}");
    world.downloads_the_blob()?;

    let sink = world.upload_sink()?;
    let sent = world.guest.exec(&["python3", "-c", &upload_program()])?;
    let received = sink.result()?;
    ensure!(
        sent.trim() == received.trim(),
        "upload: the guest sent {sent:?}, the server got {received:?}"
    );

    ensure!(!attached.has_failed(), "a driver thread stopped");
    let summary = attached.stop()?;
    eprintln!("guest: {summary}");
    // The upload's TCP super-frames left the TUN gathered from guest memory (head-only TX).
    let stats = daemon
        .wait_for_line("connection stats", Duration::from_secs(5))
        .context("no connection stats line within 5 s")?;
    let counter = |name: &str| {
        stats
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    ensure!(
        counter("tx_gathered").is_some_and(|n| n > 0),
        "nothing gathered from guest memory: {stats}"
    );
    // The download's were read into the guest's buffers (scattered RX).
    ensure!(
        counter("rx_scattered").is_some_and(|n| n > 0),
        "nothing scattered into guest memory: {stats}"
    );
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    // A polite stop removes the socket file.
    daemon.process.signal("TERM")?;
    daemon.process.wait_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// `hostnetd --queues 2` serving a frontend that does not negotiate multiqueue (testbed's
/// simulated guest with one pair, which starts rings 0 and 1 only): the port uses pair 0
/// alone (the TUN queue of pair 1, which no port uses, is read into pair 0 and detached).
/// The guest leases, pings, and downloads the blob whole over six connections; `ctl guests`
/// says one pair is in use and pair 0 moved the frames.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_one_pair_guest_of_a_two_queue_hostnetd_is_served_on_pair_0() -> Result<()> {
    let world = World::new()?;
    let daemon = Daemon::start_with(&world.host, "vu-mq1", &["--queues", "2"]);
    let attached = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    world.leases_and_pings(3)?;
    for _ in 0..6 {
        world.downloads_the_blob()?;
    }
    let guests = daemon.ctl("--json guests")?;
    let reply: serde_json::Value = serde_json::from_str(guests.trim())?;
    let g = &reply["guests"][0];
    ensure!(g["queue_pairs"].as_u64() == Some(1), "{guests}");
    let rx0 = g["pairs"][0]["rx_frames"].as_u64().unwrap_or(0);
    ensure!(
        rx0 > 1000,
        "pair 0 moved {rx0} frames to the guest: {guests}"
    );
    ensure!(!attached.has_failed(), "a driver thread stopped");
    attached.stop()?;
    Ok(())
}

/// `hostnetd --queues 2` with testbed's frontend at two queue pairs, the control queue handed
/// to hostnetd (unlike QEMU, which answers it itself): the guest's `VQ_PAIRS_SET 2` is acked
/// (`Attached::start` fails otherwise) and `ctl guests` says two pairs; four parallel
/// downloads and four parallel uploads keep their bytes (SHA-256) and both pairs move frames
/// each way (hostnetd's per-pair counters). Then, under four downloads, `VQ_PAIRS_SET 1`: only
/// hostnetd's answer to the control queue can say one pair (every ring stays enabled, so
/// without it hostnetd counts two), pair 1 moves nothing while out of use; `VQ_PAIRS_SET 2`
/// again, and every download is whole.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_queue_pairs_set_on_hostnetds_control_queue_carry_four_streams_each_way_whole() -> Result<()>
{
    let world = World::new()?;
    let daemon = Daemon::start_with(&world.host, "vu-mq2", &["--queues", "2"]);
    let mut cfg = GuestConfig::default();
    cfg.queue_pairs = 2;
    let mut attached = Attached::start(&daemon.sock, world.guest.name(), cfg)?;
    ensure!(attached.queue_pairs() == 2, "the guest set no two pairs");
    ensure!(
        attached.device().queue_num() == Some(5),
        "GET_QUEUE_NUM said {:?}",
        attached.device().queue_num()
    );
    world.leases_and_pings(3)?;
    let (in_use, _) = pair_counters(&daemon)?;
    ensure!(
        in_use == 2,
        "hostnetd uses {in_use} pairs after VQ_PAIRS_SET 2"
    );

    // Four downloads at once, then four uploads at once.
    world.downloads_in_parallel(4)?;
    world.uploads_in_parallel(4)?;
    // Sixteen short fetches more: each picks a queue by its hash, so (but with a chance of
    // 2^-15 for a fair hash) both pairs carry some of them whatever the streams did.
    common::short_fetches(&world.guest, &format!("http://{SERVER_ADDR}/small"), 16)?;
    let (in_use, pairs) = pair_counters(&daemon)?;
    eprintln!("pairs in use {in_use}, frames (tx, rx) per pair {pairs:?}");
    ensure!(in_use == 2 && pairs.len() == 2, "{pairs:?}");
    for (p, (tx, rx)) in pairs.iter().enumerate() {
        ensure!(
            *tx >= 20 && *rx >= 20,
            "pair {p} carried almost nothing: {pairs:?}"
        );
    }

    // VQ_PAIRS_SET 1, then 2, under four downloads (S sends at 96 Mbit/s at most: a token
    // bucket on its link, in S only; four 16 MiB downloads take about 6 s).
    world.server.exec(&[
        "tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", "96mbit", "burst", "128kb",
        "latency", "500ms",
    ])?;
    std::thread::scope(|scope| -> Result<()> {
        let downloads: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| world.downloads_the_blob()))
            .collect();
        std::thread::sleep(Duration::from_millis(1500));
        attached.set_queue_pairs(1)?;
        let (in_use, _) = pair_counters(&daemon)?;
        ensure!(
            in_use == 1,
            "hostnetd uses {in_use} pairs after VQ_PAIRS_SET 1"
        );
        std::thread::sleep(Duration::from_millis(500));
        let (_, a) = pair_counters(&daemon)?;
        std::thread::sleep(Duration::from_secs(1));
        let (_, b) = pair_counters(&daemon)?;
        ensure!(
            a[1] == b[1],
            "pair 1 moved frames while out of use: {a:?} -> {b:?}"
        );
        ensure!(b[0].1 > a[0].1, "pair 0 carried nothing: {a:?} -> {b:?}");
        attached.set_queue_pairs(2)?;
        let (in_use, _) = pair_counters(&daemon)?;
        ensure!(
            in_use == 2,
            "hostnetd uses {in_use} pairs after VQ_PAIRS_SET 2"
        );
        for d in downloads {
            d.join()
                .map_err(|_| anyhow::anyhow!("a download thread panicked"))??;
        }
        Ok(())
    })?;
    ensure!(!attached.has_failed(), "a driver thread stopped");
    eprintln!("guest: {}", attached.stop()?);
    Ok(())
}

/// `ctl guests`' first guest: the queue pairs in use and each pair's (tx, rx) frames.
fn pair_counters(daemon: &Daemon) -> Result<common::PairCounters> {
    common::pair_counters(daemon)?
        .into_iter()
        .next()
        .context("ctl guests lists no guest")
}

/// A frontend gone in the middle of a download (a hostile-frontend case of the hardening
/// issue, driven by testbed's frontend as issue 17 asks): the guest downloads the blob at
/// 2 MB/s and the frontend disconnects after a second, its rings mid-use. hostnetd logs the
/// connection's end and keeps running, `ctl guests` lists no guest, and the next frontend in
/// the same namespace gets the same lease (the same MAC) and downloads the blob whole.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_frontend_gone_mid_download_leaves_hostnetd_serving_the_next() -> Result<()> {
    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, "vu-gone");
    let first = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let lease = world.lease()?;
    let url = format!("http://{SERVER_ADDR}/{BLOB_NAME}");
    let download = world.guest.spawn(&[
        "curl",
        "-sS",
        "--limit-rate",
        "2M",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        &url,
    ])?;
    std::thread::sleep(Duration::from_millis(1000));
    let guests = daemon.ctl("guests")?;
    ensure!(
        guests.contains("ipv4=192.168.64.2"),
        "ctl guests said {guests:?}"
    );
    drop(first);
    drop(download);
    ensure!(
        daemon
            .wait_for_line("connection stats", Duration::from_secs(5))
            .is_some(),
        "hostnetd logged no end of the connection"
    );
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    let guests = daemon.ctl("guests")?;
    ensure!(
        !guests.contains("192.168.64."),
        "a guest is still listed: {guests}"
    );
    let second = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let again = world.lease()?;
    ensure!(again.ip == lease.ip, "lease {again:?} after {lease:?}");
    world.downloads_the_blob()?;
    ensure!(!second.has_failed(), "a driver thread stopped");
    second.stop()?;
    Ok(())
}

/// What hostnetd must do with a hostile sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// End the connection itself (a failure reply, or the connection closed while the hostile
    /// frontend still holds it). With `error`: first log an ERROR line holding it and
    /// `closing the connection`, and the hostile frontend's next request finds the connection
    /// closed.
    Refused { error: Option<&'static str> },
    /// Take every message and keep the connection (the sequence is odd but within what a
    /// backend may take); when the frontend goes, its `connection stats` line holds `counted`
    /// (a named drop) if given.
    Taken { counted: Option<&'static str> },
    /// Either, by timing: the sequence is refused if a worker meets its kicks before the
    /// memory table and ring addresses come, and is a valid one if it meets them after.
    Either,
}

/// One hostile frontend, then a well-behaved one. The hostile frontend (testbed's, breaking
/// the protocol as `how`) must get `want`; hostnetd logs the end of that connection and is
/// still running; the next frontend in the same namespace gets the lease 192.168.64.2, pings
/// the gateway and S and downloads the blob whole (SHA-256).
fn hostnetd_survives(how: Hostile, tag: &str, want: Want) -> Result<()> {
    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, tag);
    let mut device = VhostUserDevice::connect(&daemon.sock)?;
    let mut cfg = GuestConfig::default();
    cfg.inline_rx_interrupt = false;
    let guest = SimGuest::new_in_file(cfg, device.device_features(), shared_memory_file()?)?;
    let answer = device.activate_hostile(&guest, how)?;
    eprintln!("hostile frontend {how:?}: {answer}");
    match want {
        Want::Refused { error } => {
            // The hostile frontend holds its end: hostnetd must close the connection itself.
            // Some refusals come from a worker after the reply to the last message, so the
            // answer alone does not tell.
            if let Some(error) = error {
                let Some(refused) = daemon.wait_for_line(error, Duration::from_secs(5)) else {
                    let status = daemon.process.wait_timeout(Duration::from_secs(1))?;
                    anyhow::bail!(
                        "{how:?}: no error about {error:?} within 5 s ({answer}; hostnetd's \
                         exit status: {status:?})"
                    );
                };
                ensure!(
                    refused.contains("ERROR") && refused.contains("closing the connection"),
                    "{how:?}: {refused}"
                );
            }
            if connection_end(&daemon).is_none() {
                let status = daemon.process.wait_timeout(Duration::from_secs(1))?;
                anyhow::bail!(
                    "{how:?}: hostnetd did not end the hostile connection within 5 s \
                     ({answer}; hostnetd's exit status: {status:?})"
                );
            }
            if error.is_some() {
                ensure!(
                    device.probe().is_err(),
                    "{how:?}: the hostile connection still answers"
                );
            }
            drop(device);
        }
        Want::Taken { counted } => {
            ensure!(
                !answer.is_refused(),
                "{how:?}: hostnetd refused what it should take: {answer}"
            );
            if let Some(reason) = counted {
                // The worker handles the kicks on its own thread: wait until it counted the
                // drop, while the hostile frontend is still connected.
                let drops = counted_drops(&daemon, reason)?;
                ensure!(
                    drops.contains(reason),
                    "{how:?}: `ctl stats` does not count {reason} within 5 s: {drops}"
                );
            }
            drop(device);
            let stats = daemon
                .wait_for_line("connection stats", Duration::from_secs(5))
                .with_context(|| format!("{how:?}: no connection stats line within 5 s"))?;
            if let Some(reason) = counted {
                ensure!(
                    stats.contains(reason),
                    "{how:?}: the connection stats do not count {reason}: {stats}"
                );
            }
            ensure!(
                connection_end(&daemon).is_some(),
                "{how:?}: hostnetd logged no end of the hostile connection within 5 s"
            );
        }
        Want::Either => {
            // Ended by hostnetd, or (taken) by the frontend going: either way, logged.
            drop(device);
            ensure!(
                connection_end(&daemon).is_some(),
                "{how:?}: hostnetd logged no end of the hostile connection within 5 s ({answer})"
            );
        }
    }
    drop(guest);
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "{how:?}: hostnetd exited"
    );

    let next = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    world.next_guest_is_served(&mut daemon, next)
}

/// The `drops` line of `hostnetd ctl stats` once it names `reason`, or the last one read
/// within 5 s.
fn counted_drops(daemon: &Daemon, reason: &str) -> Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let stats = daemon.ctl("stats")?;
        let drops = stats
            .lines()
            .find(|l| l.starts_with("drops"))
            .unwrap_or_default()
            .to_owned();
        if drops.contains(reason) || std::time::Instant::now() > deadline {
            return Ok(drops);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// hostnetd's line about a connection's end (`connection closed: …` when it ended it,
/// `frontend disconnected; …` when the frontend went), within 5 s; `None` also when hostnetd
/// is gone (its stderr closed).
fn connection_end(daemon: &Daemon) -> Option<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        let line = daemon.stderr.recv_timeout(left).ok()?;
        if line.contains("connection closed") || line.contains("frontend disconnected") {
            return Some(line);
        }
    }
}

/// A region past the end of its file (item 7 of the hardening issue): before the relay's check
/// hostnetd mapped it and died of SIGBUS at the first ring access. Now the relay logs the
/// error and closes that connection, and the next guest is served. (The only test of this
/// case: `hostile_frontend.rs` had a hand-written one until issue 17 folded it here.)
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_memory_region_past_its_file_is_refused_and_the_next_guest_is_served() -> Result<()> {
    hostnetd_survives(
        Hostile::RegionPastItsFile,
        "vu-past",
        Want::Refused {
            error: Some("reaches past the end"),
        },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn overlapping_memory_regions_are_refused_and_the_next_guest_is_served() -> Result<()> {
    hostnetd_survives(
        Hostile::OverlappingRegions,
        "vu-overlap",
        Want::Refused { error: None },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn rings_outside_memory_are_refused_and_the_next_guest_is_served() -> Result<()> {
    hostnetd_survives(
        Hostile::RingsOutsideMemory,
        "vu-outside",
        Want::Refused { error: None },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_ring_across_the_end_of_memory_leaves_the_next_guest_served() -> Result<()> {
    hostnetd_survives(
        Hostile::RingAcrossTheEnd,
        "vu-across",
        Want::Taken {
            counted: Some("ChainInvalid="),
        },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ring_addresses_before_the_memory_table_leave_the_next_guest_served() -> Result<()> {
    hostnetd_survives(
        Hostile::RingAddressBeforeMemTable,
        "vu-addr-first",
        Want::Refused { error: None },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_kick_before_the_memory_table_leaves_the_next_guest_served() -> Result<()> {
    // Refused in most runs; taken when the worker sees the kicks only after the memory table
    // and the ring addresses came (seen with the machine loaded by a CI run).
    hostnetd_survives(Hostile::KickBeforeMemTable, "vu-kick-first", Want::Either)
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_memory_table_swapped_under_running_rings_leaves_the_next_guest_served() -> Result<()> {
    hostnetd_survives(
        Hostile::MemTableSwappedWhileRunning,
        "vu-swap",
        Want::Refused { error: None },
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn features_changed_under_running_rings_leave_the_next_guest_served() -> Result<()> {
    hostnetd_survives(
        Hostile::FeaturesChangedWhileRunning,
        "vu-features",
        Want::Taken { counted: None },
    )
}

/// Bytes that are no vhost-user message on a fresh connection (an unknown request with an
/// absurd size): hostnetd hangs up and keeps running. The next frontend is offered what any
/// is (VERSION_1, EVENT_IDX, MRG_RXBUF, PROTOCOL_FEATURES and, offloads being on by default,
/// CSUM, GUEST_CSUM, HOST_TSO4/6, GUEST_TSO4/6), and its guest leases, pings and downloads
/// the blob whole. (Ring addresses outside the memory table:
/// `rings_outside_memory_are_refused_and_the_next_guest_is_served`.)
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn garbage_on_the_socket_is_hung_up_on_and_the_next_guest_is_served() -> Result<()> {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, "vu-garbage");
    let mut raw = UnixStream::connect(&daemon.sock)?;
    raw.set_read_timeout(Some(Duration::from_secs(5)))?;
    raw.write_all(&[
        0xad, 0xde, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3, 4,
    ])?;
    let mut buf = [0u8; 64];
    match raw.read(&mut buf) {
        Ok(0) => {}
        // Closed with our unread bytes still queued: a reset, also a hang-up.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(n) => anyhow::bail!("garbage got an answer: {:?}", &buf[..n]),
        Err(e) => return Err(e).context("hostnetd neither answered nor closed"),
    }
    drop(raw);
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    // The relay hangs up before the daemon has let the connection's port go: a frontend
    // that came now would get a second port (192.168.64.3; a CI run saw it). Wait for it.
    ensure!(
        daemon
            .wait_for_line(
                "frontend disconnected; waiting for the next one connection=1",
                Duration::from_secs(10)
            )
            .is_some(),
        "hostnetd did not let the garbage connection go"
    );

    let mut next = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    // The device's virtio features (PROTOCOL_FEATURES is vhost-user's: negotiated apart).
    let features = next.device().device_features();
    for bit in [32, 29, 15, 0, 1, 7, 11, 8, 12] {
        ensure!(
            features & (1 << bit) != 0,
            "feature bit {bit} not offered in {features:#x}"
        );
    }
    let protocol = next.device().protocol_features();
    ensure!(!protocol.is_empty(), "no vhost-user protocol features");
    world.next_guest_is_served(&mut daemon, next)
}

/// G (the simulated guest's TAP), H (hostnetd, its TUN), S (198.18.0.2: busybox httpd, dnsmasq).
struct World {
    // Processes first: they are killed before their namespaces go.
    _httpd: Process,
    _dnsmasq: Process,
    guest: Netns,
    host: Netns,
    server: Netns,
    dir: common::Folder,
    blob_sha256: String,
}

impl World {
    fn new() -> Result<Self> {
        let dir = common::Folder::new("hostnet-vu-www")?;
        let blob_sha256 = common::random_blob(&dir, BLOB_NAME, BLOB_SIZE)?;
        common::random_blob(&dir, "small", 4096)?;
        let guest = Netns::new("vu-g")?;
        let (host, server, httpd) = common::host_and_server("vu", &dir)?;
        let dnsmasq = server.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={SERVER_ADDR}"),
            &format!("--address=/{DNS_NAME}/{SERVER_ADDR}"),
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--user=root",
        ])?;
        Ok(Self {
            _httpd: httpd,
            _dnsmasq: dnsmasq,
            guest,
            host,
            server,
            dir,
            blob_sha256,
        })
    }

    /// udhcpc in G on the TAP.
    fn lease(&self) -> Result<testbed::netns::lease::Lease> {
        let script = self.dir.join("udhcpc.sh");
        let out = self.dir.join("lease");
        testbed::netns::lease::write_udhcpc_script(&script, &out)?;
        let script = script.to_str().context("path is not UTF-8")?;
        self.guest.exec(&[
            "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s", script,
        ])?;
        Ok(testbed::netns::lease::Lease::read(&out)?)
    }

    /// After a hostile frontend: `next` (connected) gets its lease, pings the gateway and S,
    /// downloads the blob whole and stops cleanly, and hostnetd still runs.
    fn next_guest_is_served(&self, daemon: &mut Daemon, next: Attached) -> Result<()> {
        self.leases_and_pings(2)?;
        self.downloads_the_blob()?;
        ensure!(!next.has_failed(), "a driver thread stopped");
        next.stop()?;
        ensure!(
            daemon.process.child_mut().try_wait()?.is_none(),
            "hostnetd exited"
        );
        Ok(())
    }

    /// The guest leases 192.168.64.2 and pings the gateway and S `count` times each.
    fn leases_and_pings(&self, count: u32) -> Result<()> {
        let lease = self.lease()?;
        ensure!(
            lease.ip == "192.168.64.2".parse::<std::net::Ipv4Addr>()?,
            "{lease:?}"
        );
        let count = count.to_string();
        for target in [GATEWAY, SERVER_ADDR] {
            self.guest
                .exec(&["ping", "-c", &count, "-i", "0.2", "-W", "3", target])
                .with_context(|| format!("ping {target}"))?;
        }
        Ok(())
    }

    /// The guest downloads the blob from S whole (its SHA-256).
    fn downloads_the_blob(&self) -> Result<()> {
        let url = format!("http://{SERVER_ADDR}/{BLOB_NAME}");
        common::fetch_whole(&self.guest, &url, &self.blob_sha256).map_err(anyhow::Error::msg)
    }

    /// `n` downloads of the blob from S at once, each whole (its SHA-256).
    fn downloads_in_parallel(&self, n: usize) -> Result<()> {
        std::thread::scope(|scope| {
            let downloads: Vec<_> = (0..n)
                .map(|_| scope.spawn(|| self.downloads_the_blob()))
                .collect();
            downloads.into_iter().try_for_each(|d| {
                d.join()
                    .map_err(|_| anyhow::anyhow!("a download thread panicked"))?
            })
        })
    }

    /// `n` uploads of [`BLOB_SIZE`] random bytes from G to S at once, over `n` connections to
    /// one sink; what the sink got equals what each sender sent (length and SHA-256).
    fn uploads_in_parallel(&self, n: usize) -> Result<()> {
        let sink = self.upload_sink_for(n)?;
        let mut sent: Vec<String> = std::thread::scope(|scope| {
            let senders: Vec<_> = (0..n)
                .map(|_| scope.spawn(|| self.guest.exec(&["python3", "-c", &upload_program()])))
                .collect();
            senders
                .into_iter()
                .map(|s| {
                    s.join()
                        .map_err(|_| anyhow::anyhow!("an upload thread panicked"))?
                        .map(|out| out.trim().to_owned())
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<_>>()
        })?;
        let mut received = (0..n)
            .map(|_| sink.result().map(|l| l.trim().to_owned()))
            .collect::<Result<Vec<_>>>()?;
        sent.sort();
        received.sort();
        ensure!(
            sent == received,
            "uploads: the guest sent {sent:?}, the server got {received:?}"
        );
        Ok(())
    }

    /// A TCP sink in S that prints `<bytes> <sha256>` of what one connection sent.
    fn upload_sink(&self) -> Result<Sink> {
        self.upload_sink_for(1)
    }

    /// A TCP sink in S that takes `n` connections at once and prints `<bytes> <sha256>` of
    /// what each sent, as each ends.
    fn upload_sink_for(&self, n: usize) -> Result<Sink> {
        let mut cmd = self.server.command("python3");
        cmd.args([
            "-c",
            &format!(
                "import hashlib,socket,threading\n\
                 s=socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('{SERVER_ADDR}',{UPLOAD_PORT}))\n\
                 s.listen({n})\n\
                 print('listening',flush=True)\n\
                 s.settimeout(60)\n\
                 out=threading.Lock()\n\
                 def take(c):\n\
                 \x20c.settimeout(60)\n\
                 \x20h=hashlib.sha256()\n\
                 \x20n=0\n\
                 \x20while True:\n\
                 \x20\x20d=c.recv(65536)\n\
                 \x20\x20if not d: break\n\
                 \x20\x20h.update(d)\n\
                 \x20\x20n+=len(d)\n\
                 \x20with out: print(n,h.hexdigest(),flush=True)\n\
                 ts=[]\n\
                 for _ in range({n}):\n\
                 \x20c,_=s.accept()\n\
                 \x20t=threading.Thread(target=take,args=(c,))\n\
                 \x20t.start()\n\
                 \x20ts.append(t)\n\
                 for t in ts: t.join()"
            ),
        ])
        .stdout(Stdio::piped());
        let mut process = Process::spawn(&mut cmd)?;
        let stdout = process.take_stdout().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10))?;
        ensure!(first == "listening", "sink said {first:?}");
        Ok(Sink {
            _process: process,
            lines: rx,
        })
    }
}

struct Sink {
    _process: Process,
    lines: mpsc::Receiver<String>,
}

impl Sink {
    fn result(&self) -> Result<String> {
        Ok(self.lines.recv_timeout(Duration::from_secs(60))?)
    }
}

const GATEWAY: &str = "192.168.64.1";
use common::SERVER_ADDR;
const DNS_NAME: &str = "www.hostnet.test";
const BLOB_NAME: &str = "blob";
const BLOB_SIZE: usize = 16 << 20;
const UPLOAD_PORT: u16 = 9000;

/// Python that sends [`BLOB_SIZE`] random bytes to the sink and prints `<bytes> <sha256>`.
fn upload_program() -> String {
    format!(
        "import hashlib,os,socket\n\
         d=os.urandom({BLOB_SIZE})\n\
         s=socket.create_connection(('{SERVER_ADDR}',{UPLOAD_PORT}),timeout=60)\n\
         s.sendall(d)\n\
         s.close()\n\
         print(len(d),hashlib.sha256(d).hexdigest())"
    )
}
