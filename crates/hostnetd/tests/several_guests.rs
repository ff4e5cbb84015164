//! Several frontends on one hostnetd socket at once, each a port of one network: testbed's
//! simulated guest as a vhost-user frontend (`testbed::vhost_user`, no QEMU), one per guest
//! namespace. Real programs are the traffic: udhcpc, ping, curl (SHA-256 checked), and
//! `hostnetd ctl guests`.
//!
//! Needs root (namespaces, TAPs, a TUN), busybox, curl.
#![cfg(target_os = "linux")]

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::Daemon;
use testbed::guest::GuestConfig;
use testbed::netns::{Netns, Process};
use testbed::vhost_user::Attached;

/// Two frontends at once get distinct MACs and leases (.2, .3), reach each other both ways
/// and fetch from the server; a `--forward` naming the second guest's address brings S to
/// its web server; `ctl guests` lists both. Then one disconnects and a third
/// connects: it gets the free port (the first's MAC, so its address) and works, and so does
/// the one that stayed (ports added and removed at runtime).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_frontends_share_one_network_and_ports_come_and_go() -> Result<()> {
    let world = World::new(3)?;
    let mut daemon = Daemon::start_with(
        &world.host,
        "sg",
        &[
            "--forward",
            &format!("tcp:{FORWARD_PORT}:192.168.64.3:{GUEST_HTTP_PORT}"),
        ],
    );
    let a = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    let b = Attached::start(&daemon.sock, world.guests[1].name(), GuestConfig::default())?;
    ensure!(
        mac(&a) == "52:54:00:12:34:56" && mac(&b) == "52:54:00:12:34:57",
        "config space MACs {} and {}",
        mac(&a),
        mac(&b)
    );
    ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
    ensure!(world.lease(1)? == "192.168.64.3", "second guest's lease");
    world.ping(0, "192.168.64.3")?;
    world.ping(1, "192.168.64.2")?;
    // Per-guest counters (`guests`, metrics) move with one guest's traffic, not the other's.
    let before = guest_counters(&daemon)?;
    world.fetch(0)?;
    let after = guest_counters(&daemon)?;
    let grew = |i: usize, k: &str| after[i][k].saturating_sub(before[i][k]);
    ensure!(
        grew(0, "rx_bytes") >= BLOB_SIZE as u64 && grew(0, "tx_frames") > 0,
        "the first guest's counters did not move with its download: {before:?} -> {after:?}"
    );
    ensure!(
        grew(1, "rx_bytes") < (BLOB_SIZE as u64) / 16
            && grew(1, "tx_bytes") < (BLOB_SIZE as u64) / 16,
        "the idle guest's counters moved with the other's download: {before:?} -> {after:?}"
    );
    let metrics = daemon.ctl("metrics")?;
    for (i, mac) in ["52:54:00:12:34:56", "52:54:00:12:34:57"]
        .iter()
        .enumerate()
    {
        let line = format!("hostnet_guest_bytes_total{{guest=\"{mac}\",direction=\"rx\"}}");
        let value: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {line} in the metrics:\n{metrics}"))?;
        ensure!(
            value >= after[i]["rx_bytes"],
            "{line} {value} is behind `guests`' {}",
            after[i]["rx_bytes"]
        );
        ensure!(
            (i == 0) == (value >= BLOB_SIZE as u64),
            "{line} {value}: only the first guest downloaded"
        );
    }
    world.fetch(1)?;
    // The forward names the second guest by its address: S reaches its web server.
    let _web = common::busybox_httpd(
        &world.guests[1],
        &format!("0.0.0.0:{GUEST_HTTP_PORT}"),
        &world.dir,
    )?;
    let got = world.server.exec(&[
        "sh",
        "-c",
        &format!(
            "for i in 1 2 3 4 5; do curl -sS --max-time 20 \
             http://{NAT_EXTERNAL}:{FORWARD_PORT}/{BLOB_NAME} && break; sleep 0.5; done \
             | sha256sum"
        ),
    ])?;
    ensure!(
        got.split_whitespace().next() == Some(world.blob_sha256.as_str()),
        "through the forward to 192.168.64.3: sha256 {got:?}, want {}",
        world.blob_sha256
    );
    // Guest to guest over TCP: the first fetches the blob from the second's web server.
    let got = world.guests[0].exec(&[
        "sh",
        "-c",
        &format!(
            "curl -sS --max-time 60 http://192.168.64.3:{GUEST_HTTP_PORT}/{BLOB_NAME} | sha256sum"
        ),
    ])?;
    ensure!(
        got.split_whitespace().next() == Some(world.blob_sha256.as_str()),
        "guest to guest: sha256 {got:?}, want {}",
        world.blob_sha256
    );
    let guests = daemon.ctl("guests")?;
    ensure!(
        guests.contains("52:54:00:12:34:56 ipv4=192.168.64.2")
            && guests.contains("52:54:00:12:34:57 ipv4=192.168.64.3"),
        "ctl guests said {guests:?}"
    );

    // The first goes; the second keeps working; a third takes the free port.
    ensure!(!a.has_failed(), "the first guest's driver stopped");
    drop(a);
    daemon
        .wait_for_line("frontend disconnected", Duration::from_secs(10))
        .context("hostnetd logged no disconnect")?;
    world.fetch(1)?;
    let c = Attached::start(&daemon.sock, world.guests[2].name(), GuestConfig::default())?;
    ensure!(mac(&c) == "52:54:00:12:34:56", "third MAC {}", mac(&c));
    ensure!(world.lease(2)? == "192.168.64.2", "third guest's lease");
    world.ping(2, "192.168.64.3")?;
    world.ping(1, "192.168.64.2")?;
    world.fetch(2)?;
    let guests = daemon.ctl("guests")?;
    ensure!(guests.lines().count() == 2, "ctl guests said {guests:?}");

    ensure!(
        !b.has_failed() && !c.has_failed(),
        "a driver thread stopped"
    );
    drop((b, c));
    for _ in 0..2 {
        daemon
            .wait_for_line("frontend disconnected", Duration::from_secs(10))
            .context("hostnetd logged no disconnect")?;
    }
    // Every port free again: the daemon still serves (its threads ended under the sandbox).
    let d = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    ensure!(world.lease(0)? == "192.168.64.2", "a later guest's lease");
    world.fetch(0)?;
    drop(d);
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    Ok(())
}

/// Two guests of two queue pairs each on one `hostnetd --queues 2` (several guests and
/// several pairs at once): each sets two pairs on hostnetd's control queue, leases and pings
/// the other; they download four blobs each at the same time (eight streams over four pairs),
/// every one whole, then sixteen small files each, so that both TX rings of each guest carry
/// frames (`ctl guests`' per-pair counters); four parallel fetches from one guest's
/// web server by the other cross between the ports' pairs whole. Then the TUN is deleted
/// under them: hostnetd exits with status 1 and an error naming the TUN.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_guests_of_two_queue_pairs_share_the_network_until_the_tun_goes() -> Result<()> {
    let world = World::new(2)?;
    let mut daemon = Daemon::start_with(&world.host, "sg-mq", &["--queues", "2"]);
    let mut cfg = GuestConfig::default();
    cfg.queue_pairs = 2;
    let a = Attached::start(&daemon.sock, world.guests[0].name(), cfg.clone())?;
    let b = Attached::start(&daemon.sock, world.guests[1].name(), cfg)?;
    ensure!(
        a.queue_pairs() == 2 && b.queue_pairs() == 2,
        "pairs set: {} and {}",
        a.queue_pairs(),
        b.queue_pairs()
    );
    ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
    ensure!(world.lease(1)? == "192.168.64.3", "second guest's lease");
    world.ping(0, "192.168.64.3")?;
    world.ping(1, "192.168.64.2")?;

    // Four downloads per guest, all eight at once.
    std::thread::scope(|scope| {
        let downloads: Vec<_> = (0..8)
            .map(|k| {
                let world = &world;
                scope.spawn(move || world.fetch(k % 2))
            })
            .collect();
        downloads.into_iter().try_for_each(|d| {
            d.join()
                .map_err(|_| anyhow::anyhow!("a download thread panicked"))?
        })
    })?;
    // Sixteen short fetches per guest: each connection picks a queue by its hash, so both
    // pairs of a guest carry some (but with a chance of 2^-15 for a fair hash).
    for g in &world.guests {
        common::short_fetches(g, &format!("http://{SERVER_ADDR}/{SMALL_NAME}"), 16)?;
    }
    let pairs = common::pair_counters(&daemon)?;
    eprintln!("per guest: pairs in use, frames (tx, rx) per pair: {pairs:?}");
    ensure!(pairs.len() == 2, "ctl guests lists {} guests", pairs.len());
    // Each guest's TX rings: both carry frames (a new connection's first frames take a TAP
    // queue by hash). Its RX: not per pair. A TUN queue is read by that pair of whichever port
    // gets to it first, a frame for another port goes to that port's inbox, and a port's inbox
    // is its pair 0's; G's TAP then sends a flow on the queue it last received it on. So with
    // two guests one pair may deliver most of a guest's frames (seen: 535 and 12).
    for (g, (in_use, frames)) in pairs.iter().enumerate() {
        ensure!(
            *in_use == 2 && frames.len() == 2,
            "guest {g}: {in_use} pairs in use, counters {frames:?}"
        );
        for (p, (tx, _)) in frames.iter().enumerate() {
            ensure!(*tx > 0, "guest {g}'s pair {p} sent nothing: {pairs:?}");
        }
        let rx: u64 = frames.iter().map(|(_, rx)| rx).sum();
        ensure!(
            rx >= 100,
            "guest {g}'s pairs delivered {rx} frames for four downloads: {pairs:?}"
        );
    }

    // Guest to guest: four fetches at once from the second guest's web server.
    let _web = common::busybox_httpd(
        &world.guests[1],
        &format!("0.0.0.0:{GUEST_HTTP_PORT}"),
        &world.dir,
    )?;
    let url = format!("http://192.168.64.3:{GUEST_HTTP_PORT}/{BLOB_NAME}");
    std::thread::scope(|scope| {
        let fetches: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    common::fetch_whole(&world.guests[0], &url, &world.blob_sha256)
                        .map_err(|e| anyhow::anyhow!("guest to guest: {e}"))
                })
            })
            .collect();
        fetches.into_iter().try_for_each(|f| {
            f.join()
                .map_err(|_| anyhow::anyhow!("a fetch thread panicked"))?
        })
    })?;
    ensure!(
        !a.has_failed() && !b.has_failed(),
        "a driver thread stopped"
    );

    // Guest to guest in order: four TCP streams for 3 s from the first guest to the second.
    // A port's inbox is its pair 0's, so no segment overtakes another on the way. (Delivered
    // by whichever pair came first, a flow's segments took both RX queues: the sender saw
    // reorderings in every run, and all its retransmissions, 135-360 per 4 s by hand, were
    // DSACKed by the receiver as duplicates.)
    let g2g_port = IPERF_PORT.to_string();
    let _g2g_server =
        world.guests[1].spawn(&["iperf3", "-s", "-B", "192.168.64.3", "-p", &g2g_port])?;
    wait_for_listening(&world.guests[1], "192.168.64.3", &[IPERF_PORT])?;
    let before = reorderings(&world.guests[0])?;
    let out = world.guests[0]
        .command("timeout")
        .args([
            "-k",
            "2",
            "12",
            "iperf3",
            "-c",
            "192.168.64.3",
            "-p",
            &g2g_port,
        ])
        .args(["-P", "4", "-t", "3", "-f", "m"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mbits = testbed::iperf3_receiver_mbits(&text)
        .with_context(|| format!("no receiver rate from the guest-to-guest iperf3: {out:?}"))?;
    let reordered = reorderings(&world.guests[0])? - before;
    eprintln!("guest to guest over two pairs: {mbits:.0} Mbit/s, {reordered} reorderings");
    ensure!(
        reordered == 0,
        "the sender saw {reordered} reorderings between the guests (ports: {:?})",
        common::guests_json(&daemon)?
    );

    // The TUN goes from under both guests' four pairs.
    let tun = daemon.tun.clone();
    world.host.ip(&["link", "del", &tun])?;
    let status = daemon
        .process
        .wait_timeout(Duration::from_secs(5))?
        .with_context(|| format!("hostnetd still runs 5 s after its TUN {tun} was deleted"))?;
    ensure!(status.code() == Some(1), "hostnetd exited {status}");
    let mut last = String::new();
    while let Ok(l) = daemon.stderr.recv_timeout(Duration::from_secs(1)) {
        last = l;
    }
    ensure!(
        last.starts_with("hostnetd: error: ") && last.contains(&format!("TUN {tun} ")),
        "the last line is not the error naming the TUN: {last:?}"
    );
    Ok(())
}

/// A download with a second guest attached (and idle) keeps its order (issue 14). Every
/// port's worker watches the TUN, and one port's worker reads it at a time: when both read
/// it at once, what the idle guest's worker read for the busy one reached it through its
/// port's inbox while the busy one delivered its own reads straight away, and S saw 1 528 to
/// 2 670 reorderings per 4 s download by hand (a quarter of the segments sent twice). Four
/// iperf3 streams from S to the first guest for 3 s: S's `TcpExtTCPSACKReorder` may move by
/// a handful at most.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_download_with_a_second_guest_attached_keeps_its_order() -> Result<()> {
    let world = World::new(2)?;
    let daemon = Daemon::start(&world.host, "sg-ord");
    let a = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    let b = Attached::start(&daemon.sock, world.guests[1].name(), GuestConfig::default())?;
    ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
    ensure!(world.lease(1)? == "192.168.64.3", "second guest's lease");
    let port = IPERF_PORT.to_string();
    let _iperf_server = world
        .server
        .spawn(&["iperf3", "-s", "-B", SERVER_ADDR, "-p", &port])?;
    wait_for_listening(&world.server, SERVER_ADDR, &[IPERF_PORT])?;
    let before = reorderings(&world.server)?;
    let out = world.guests[0]
        .command("timeout")
        .args(["-k", "2", "15", "iperf3", "-c", SERVER_ADDR, "-p", &port])
        .args(["-R", "-P", "4", "-t", "3", "-f", "m"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mbits = testbed::iperf3_receiver_mbits(&text)
        .with_context(|| format!("no receiver rate from the download's iperf3: {out:?}"))?;
    let reordered = reorderings(&world.server)? - before;
    eprintln!("download with a second guest attached: {mbits:.0} Mbit/s, {reordered} reorderings");
    // Before, every run saw thousands (3 466-4 393 in this debug build); a CI run under load
    // saw 2, with 47 frames lost to full inboxes (`LocalQueueFull`): TCP's count may move
    // around losses too. A handful is tolerated, not thousands.
    ensure!(
        reordered <= MAX_STRAY_REORDERINGS,
        "S saw {reordered} reorderings on the way to the first guest (ports: {:?})",
        common::guests_json(&daemon)?
    );
    ensure!(
        !a.has_failed() && !b.has_failed(),
        "a driver thread stopped"
    );
    Ok(())
}

/// How often TCP in `ns` saw a segment it sent (and did not resend) acknowledged after a
/// later one, so far: reordering on the way (a lost segment is resent first, a tail-loss
/// probe is not counted here).
fn reorderings(ns: &Netns) -> Result<u64> {
    let out = ns.exec(&["nstat", "-asz", "TcpExtTCPSACKReorder"])?;
    out.lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSACKReorder"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no TcpExtTCPSACKReorder in nstat's {out:?}"))
}

/// `--max-guests 1`: a second frontend is refused (and logged) while the first keeps working.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn max_guests_refuses_a_frontend_beyond_the_limit() -> Result<()> {
    let world = World::new(2)?;
    let daemon = Daemon::start_with(&world.host, "sg1", &["--max-guests", "1"]);
    let a = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
    let refused = Attached::start(&daemon.sock, world.guests[1].name(), GuestConfig::default());
    ensure!(refused.is_err(), "a second frontend was served");
    daemon
        .wait_for_line("frontend refused", Duration::from_secs(10))
        .context("hostnetd logged no refusal")?;
    world.ping(0, SERVER_ADDR)?;
    world.fetch(0)?;
    ensure!(!a.has_failed(), "the first guest's driver stopped");
    Ok(())
}

/// Two busy guests on one hostnetd: guest A floods UDP (a new flow per datagram, as fast as
/// it can, at nice 19) while guest B runs iperf3 TCP to S; B keeps at least a third of its
/// figure alone in one of up to three rounds (the machine may be busy), and the NAT's
/// per-guest cap (`HostLimit`) refused A's flows. Before that, both guests run iperf3 at
/// once against one alone: printed (a measurement for docs/STATUS.md; asserted only > 0).
/// What is tested is hostnetd's share: each worker's bounded work per hold of the network's
/// lock and its hand-off to the other workers, and the NAT's per-guest cap. The flooder runs
/// at nice 19 as in testbed's `several_guests_e2e`: a VM floods from its own vCPUs, here it
/// shares two CPUs with B's iperf3 and both simulated guests' drivers.
/// `--guest-multicast` (issue 14): a broadcast ping from one guest reaches the other, which
/// answers (its kernel told to answer broadcasts); without the flag the broadcast is dropped
/// and counted and nobody answers.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn guest_multicast_carries_a_broadcast_ping_between_guests_only_when_asked() -> Result<()> {
    for on in [true, false] {
        let world = World::new(2)?;
        let extra: &[&str] = if on { &["--guest-multicast"] } else { &[] };
        let tag = if on { "sgm1" } else { "sgm0" };
        let daemon = Daemon::start_with(&world.host, tag, extra);
        let _a = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
        let _b = Attached::start(&daemon.sock, world.guests[1].name(), GuestConfig::default())?;
        ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
        ensure!(world.lease(1)? == "192.168.64.3", "second guest's lease");
        world.guests[1].sysctl("net.ipv4.icmp_echo_ignore_broadcasts", "0")?;
        let out = world.guests[0]
            .command("ping")
            .args(["-b", "-c", "3", "-i", "0.3", "-W", "2", "192.168.64.255"])
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if on {
            ensure!(
                text.contains("from 192.168.64.3") && !text.contains(" 0 received"),
                "with --guest-multicast: {text}"
            );
        } else {
            ensure!(
                text.contains(" 0 received") && !text.contains("from 192.168.64.3"),
                "without --guest-multicast: {text}"
            );
        }
    }
    Ok(())
}

/// The two flood tests measure throughput: they never overlap (this binary's tests run in
/// parallel, and one's flood would be the other's load).
static ONE_FLOOD_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_flooding_guest_leaves_another_a_third_of_its_tcp() -> Result<()> {
    let _alone = ONE_FLOOD_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let flooder = hostnet_e2e();
    let world = World::new(2)?;
    let daemon = Daemon::start_with(&world.host, "sgf", &[]);
    let a = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    let b = Attached::start(&daemon.sock, world.guests[1].name(), GuestConfig::default())?;
    ensure!(world.lease(0)? == "192.168.64.2", "first guest's lease");
    ensure!(world.lease(1)? == "192.168.64.3", "second guest's lease");
    let _iperf_servers = [IPERF_PORT, IPERF_PORT + 1]
        .map(|port| {
            world.server.spawn(&[
                "iperf3",
                "-s",
                "-B",
                SERVER_ADDR,
                "-p",
                &port.to_string(),
                "-f",
                "m",
            ])
        })
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    wait_for_listening(&world.server, SERVER_ADDR, &[IPERF_PORT, IPERF_PORT + 1])?;

    // Two busy guests, each against itself alone (a measurement).
    let alone_a = iperf(&world.guests[0], IPERF_PORT)?;
    let alone_b = iperf(&world.guests[1], IPERF_PORT + 1)?;
    let (both_a, both_b) = std::thread::scope(|s| {
        let ta = s.spawn(|| iperf(&world.guests[0], IPERF_PORT));
        let tb = s.spawn(|| iperf(&world.guests[1], IPERF_PORT + 1));
        (ta.join(), tb.join())
    });
    let both_a = both_a.map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
    let both_b = both_b.map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))??;
    eprintln!(
        "two busy guests: A {both_a:.0} Mbit/s ({:.2} of {alone_a:.0} alone), \
         B {both_b:.0} Mbit/s ({:.2} of {alone_b:.0} alone)",
        both_a / alone_a,
        both_b / alone_b
    );
    ensure!(
        both_a > 0.0 && both_b > 0.0,
        "a busy guest moved nothing: {both_a} {both_b}"
    );

    // B alone, then while A floods.
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let alone = iperf(&world.guests[1], IPERF_PORT)?;
        let flood = world.guests[0]
            .command("timeout")
            .args(["-k", "2", "20", "nice", "-n", "19"])
            .arg(&flooder)
            .args(["udp-flows", &format!("{SERVER_ADDR}:9"), "6"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        std::thread::sleep(Duration::from_secs(1));
        let flooded = iperf(&world.guests[1], IPERF_PORT);
        let out = flood.wait_with_output()?;
        let flooded = flooded?;
        eprintln!(
            "guest B alone {alone:.0} Mbit/s, while guest A floods ({}) {flooded:.0} Mbit/s \
             ({:.2})",
            String::from_utf8_lossy(&out.stdout).trim(),
            flooded / alone
        );
        rounds.push((alone, flooded));
        if flooded * 3.0 >= alone {
            break;
        }
    }
    let stats: serde_json::Value = serde_json::from_str(&daemon.ctl("--json stats")?)?;
    let host_limit = stats["stats"]["nat"]["ipv4"]["drops"]["HostLimit"]
        .as_u64()
        .unwrap_or(0);
    ensure!(
        host_limit > 0,
        "the flood never reached the per-guest cap: {stats}"
    );
    ensure!(
        !a.has_failed() && !b.has_failed(),
        "a driver thread stopped"
    );
    ensure!(
        rounds
            .iter()
            .any(|&(alone, flooded)| flooded * 3.0 >= alone),
        "guest B kept less than a third of its TCP while A flooded: {rounds:?}"
    );
    Ok(())
}

/// A frontend that keeps its TX ring full (a guest sending UDP at line rate from its own vCPU:
/// the ring never runs empty, so its worker always has work and takes the network's lock again
/// at once) next to a simulated guest running iperf3 TCP to S: the simulated guest keeps at
/// least a third of its figure alone in one of up to five rounds (its margin is thin on a busy
/// 2-core machine). The flood is 1024 UDP flows
/// to S (the same frames each refill: after the first pass every frame is an established
/// flow, translated and written to the TUN). What is tested is that a worker gives the lock up
/// after its budget and the other port's worker gets it.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_frontend_keeping_its_tx_ring_full_leaves_another_a_third_of_its_tcp() -> Result<()> {
    let _alone = ONE_FLOOD_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    use dhcproto::v4::{DhcpOption, MessageType};
    use std::net::Ipv4Addr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use testbed::guest::{TX_QUEUE, features};
    use testbed::vhost_user::{RawMemory, VhostUserDevice};

    let world = World::new(1)?;
    let daemon = Daemon::start_with(&world.host, "sgr", &[]);
    // The flooder first: port 0 (MAC :56, 192.168.64.2), the simulated guest port 1. Its TX
    // ring only, VERSION_1 (12-byte headers).
    let mem = RawMemory::new(FLOOD_MEM)?;
    let mut frontend = VhostUserDevice::connect(&daemon.sock)?;
    let tx = frontend
        .activate_raw(&mem, features::VERSION_1, &[(TX_QUEUE, FLOOD_RING)])?
        .remove(0);
    let flood_frame = |i: u16| -> Result<Vec<u8>> {
        Ok(bridge::testing::udp_frame(
            bridge::testing::GUEST_MAC,
            "192.168.64.2".parse()?,
            20_000 + i,
            SERVER_ADDR.parse()?,
            9,
            &[0x5a; 64],
        ))
    };
    for i in 0..FLOOD_RING.size {
        let len = tx.put_frame(i, FLOOD_BUFS + u64::from(i) * FLOOD_SLOT, &flood_frame(i)?)?;
        ensure!(u64::from(len) <= FLOOD_SLOT, "a flood frame of {len} bytes");
    }
    tx.set_avail_in_order()?;
    // Its lease first (the bridge refuses a source address the port was not given): a DHCP
    // REQUEST for 192.168.64.2 in descriptor 0, then descriptor 0 is a flood frame again.
    let mut request = dhcproto::v4::Message::new_with_id(
        7,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &bridge::testing::GUEST_MAC.0,
    );
    request
        .opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Request));
    request
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress("192.168.64.2".parse()?));
    let dhcp = bridge::testing::dhcp_frame(bridge::testing::GUEST_MAC, &request);
    let len = tx.put_frame(0, FLOOD_DHCP_BUF, &dhcp)?;
    ensure!(len <= 4096, "a DHCP frame of {len} bytes");
    tx.publish(1)?;
    tx.kick()?;
    ensure!(
        tx.wait_for_used(1, Duration::from_secs(2))?,
        "the DHCP request was not taken"
    );
    tx.put_frame(0, FLOOD_BUFS, &flood_frame(0)?)?;
    let guests = daemon.ctl("guests")?;
    ensure!(
        guests.contains("52:54:00:12:34:56 ipv4=192.168.64.2"),
        "the flooder has no lease: {guests}"
    );
    let b = Attached::start(&daemon.sock, world.guests[0].name(), GuestConfig::default())?;
    ensure!(
        world.lease(0)? == "192.168.64.3",
        "the simulated guest's lease"
    );
    let _iperf_server = world.server.spawn(&[
        "iperf3",
        "-s",
        "-B",
        SERVER_ADDR,
        "-p",
        &IPERF_PORT.to_string(),
        "-f",
        "m",
    ])?;
    wait_for_listening(&world.server, SERVER_ADDR, &[IPERF_PORT])?;

    let mut rounds = Vec::new();
    for _ in 0..5 {
        let alone = iperf(&world.guests[0], IPERF_PORT)?;
        // The flood: whenever the daemon took chains, publish the whole ring again and kick
        // (the avail slot i names descriptor i and chains are taken in order).
        let stop = Arc::new(AtomicBool::new(false));
        let taken = Arc::new(AtomicU64::new(0));
        let flood = {
            let (stop, taken) = (Arc::clone(&stop), Arc::clone(&taken));
            let tx = tx.clone();
            std::thread::spawn(move || {
                let end = std::time::Instant::now() + Duration::from_secs(15);
                tx.keep_full(&stop, &taken, end)
            })
        };
        std::thread::sleep(Duration::from_millis(500));
        let flooded = iperf(&world.guests[0], IPERF_PORT);
        stop.store(true, Ordering::Relaxed);
        let kept = flood
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        let (refills, ran_empty) = (kept.refills, kept.ran_empty);
        let flooded = flooded?;
        eprintln!(
            "simulated guest alone {alone:.0} Mbit/s, while the other keeps its TX ring full \
             ({} frames taken, {refills} refills, empty before {ran_empty}) {flooded:.0} \
             Mbit/s ({:.2})",
            taken.load(Ordering::Relaxed),
            flooded / alone
        );
        rounds.push((alone, flooded));
        if flooded * 3.0 >= alone {
            break;
        }
    }
    let counters = guest_counters(&daemon)?;
    eprintln!("per guest: {}", daemon.ctl("--json guests")?);
    ensure!(
        counters
            .first()
            .is_some_and(|c| c["to_host"] > u64::from(FLOOD_RING.size)),
        "the flooder's frames did not reach the TUN: {counters:?}"
    );
    ensure!(!b.has_failed(), "the simulated guest's driver stopped");
    ensure!(
        rounds
            .iter()
            .any(|&(alone, flooded)| flooded * 3.0 >= alone),
        "the simulated guest kept less than a third of its TCP: {rounds:?}"
    );
    drop(frontend);
    Ok(())
}

/// `ctl --json guests`: each guest's (in port order) counters by name, `drops` among them.
fn guest_counters(daemon: &Daemon) -> Result<Vec<std::collections::BTreeMap<String, u64>>> {
    common::guests_json(daemon)?
        .iter()
        .map(|g| {
            let mut m: std::collections::BTreeMap<String, u64> = g["counters"]
                .as_object()
                .context("a guest without counters")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect();
            m.insert("drops".into(), g["drops"].as_u64().context("no drops")?);
            Ok(m)
        })
        .collect()
}

/// iperf3 TCP from guest `ns` to S's server on `port` for 2 s: the receiver's Mbit/s.
fn iperf(ns: &Netns, port: u16) -> Result<f64> {
    let out = ns
        .command("timeout")
        .args(["-k", "2", "12", "iperf3", "-c", SERVER_ADDR, "-p"])
        .arg(port.to_string())
        .args(["-t", "2", "-f", "m"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    testbed::iperf3_receiver_mbits(&text)
        .with_context(|| format!("no receiver rate from iperf3 in {}: {out:?}", ns.name()))
}

/// Waits (bounded) until servers in `ns` listen on `addr` and each of `ports`.
fn wait_for_listening(ns: &Netns, addr: &str, ports: &[u16]) -> Result<()> {
    for _ in 0..50 {
        let listening = ns.exec(&["ss", "-ltnH"])?;
        if ports
            .iter()
            .all(|p| listening.contains(&format!("{addr}:{p}")))
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!(
        "no server listens on {addr} ports {ports:?} in {}",
        ns.name()
    )
}

/// testbed's helper program: `$HOSTNET_E2E`, else the one beside the `hostnetd` binary
/// (`cargo test --workspace` builds both; else `cargo build -p testbed --bin hostnet-e2e`).
fn hostnet_e2e() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTNET_E2E") {
        return PathBuf::from(p);
    }
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_hostnetd")).with_file_name("hostnet-e2e");
    assert!(
        p.is_file(),
        "{} is missing: build it (`cargo build -p testbed --bin hostnet-e2e`) or set HOSTNET_E2E",
        p.display()
    );
    p
}

fn mac(a: &Attached) -> String {
    bridge::MacAddr(a.net_config().mac).to_string()
}

/// Gi (each simulated guest's TAP), H (hostnetd, its TUN), S (198.18.0.2: busybox httpd).
struct World {
    // Processes first: they are killed before their namespaces go.
    _httpd: Process,
    guests: Vec<Netns>,
    host: Netns,
    server: Netns,
    dir: common::Folder,
    blob_sha256: String,
}

impl World {
    fn new(guests: usize) -> Result<Self> {
        let dir = common::Folder::new("hostnet-sg-www")?;
        let blob_sha256 = common::random_blob(&dir, BLOB_NAME, BLOB_SIZE)?;
        common::random_blob(&dir, SMALL_NAME, 4096)?;
        let guests = (0..guests)
            .map(|i| Netns::new(&format!("sg-g{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let (host, server, httpd) = common::host_and_server("sg", &dir)?;
        Ok(Self {
            _httpd: httpd,
            guests,
            host,
            server,
            dir,
            blob_sha256,
        })
    }

    /// udhcpc in guest `i`'s namespace; its address.
    fn lease(&self, i: usize) -> Result<String> {
        let script = self.dir.join(format!("udhcpc{i}.sh"));
        let out = self.dir.join(format!("lease{i}"));
        let _ = std::fs::remove_file(&out);
        testbed::netns::lease::write_udhcpc_script(&script, &out)?;
        let script = script.to_str().context("path is not UTF-8")?;
        self.guests[i].exec(&[
            "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s", script,
        ])?;
        Ok(testbed::netns::lease::Lease::read(&out)?.ip.to_string())
    }

    fn ping(&self, i: usize, target: &str) -> Result<()> {
        self.guests[i]
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "3", target])
            .with_context(|| format!("guest {i}: ping {target}"))?;
        Ok(())
    }

    /// curl of the blob from S in guest `i`, SHA-256 checked.
    fn fetch(&self, i: usize) -> Result<()> {
        let url = format!("http://{SERVER_ADDR}/{BLOB_NAME}");
        common::fetch_whole(&self.guests[i], &url, &self.blob_sha256)
            .map_err(|e| anyhow::anyhow!("guest {i}: {e}"))
    }
}

use common::SERVER_ADDR;
const BLOB_NAME: &str = "blob";
const BLOB_SIZE: usize = 4 << 20;
/// A file of 4 KiB in S's web directory, for many short fetches.
const SMALL_NAME: &str = "small";
/// The NAT's external address (the TUN's peer) in H.
const NAT_EXTERNAL: &str = "100.64.0.2";
const FORWARD_PORT: u16 = 8080;
const GUEST_HTTP_PORT: u16 = 8000;
/// S's iperf3 servers listen on this port and the next.
const IPERF_PORT: u16 = 5201;
/// Reorderings a download may see and pass (see
/// `a_download_with_a_second_guest_attached_keeps_its_order`).
const MAX_STRAY_REORDERINGS: u64 = 20;
/// The ring-full flooder's guest memory and TX ring (the largest ring the daemon accepts: the
/// longest a flood lasts between two refills).
const FLOOD_MEM: u64 = 1 << 20;
const FLOOD_RING: testbed::vhost_user::RawRingLayout =
    testbed::vhost_user::RawRingLayout::at(0x4_0000, 1024);
const FLOOD_BUFS: u64 = 0x8_0000;
const FLOOD_SLOT: u64 = 128;
/// Where the flooder's DHCP request is written (after the flood frames).
const FLOOD_DHCP_BUF: u64 = 0xC_0000;
