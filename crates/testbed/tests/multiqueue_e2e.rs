//! Multiqueue (issue 15): `hostnet-lab attach --queues 2`. The simulated guest negotiates
//! `VIRTIO_NET_F_MQ` and the control queue and sets two queue pairs with
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`; G's TAP and H's TUN have two queues each and pair i
//! reads and writes queue i of both. Four parallel TCP streams each way keep their bytes
//! (sha256), flows land on both pairs (the device's per-pair counters, printed on SIGUSR1),
//! and the pairs switched 2 → 1 → 2 at runtime (SIGUSR2) under four running downloads lose no
//! connection; while one pair is in use the other moves nothing.
//!
//! Needs root: `cargo test -p testbed --test multiqueue_e2e -- --include-ignored`.
//! Programs: iproute2 (ip, tc), busybox (udhcpc), curl.

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{Lab, Ns, SERVER, require, sha256};
use testbed::netns::SERVER_DEV;

/// One pair's frames each way, as the stats line says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PairFrames {
    tx: u64,
    rx: u64,
}

/// Parses `stats: queue pairs: port 0: 2 in use, pair 0 tx A rx B, pair 1 tx C rx D`: the
/// pairs in use and each pair's frames.
fn parse_pairs(line: &str) -> (usize, Vec<PairFrames>) {
    let rest = line
        .split_once("port 0: ")
        .unwrap_or_else(|| panic!("no port 0 in {line:?}"))
        .1;
    let rest = rest.split(';').next().unwrap_or(rest);
    let (in_use, pairs) = rest
        .split_once(" in use, ")
        .unwrap_or_else(|| panic!("no pairs in {line:?}"));
    let frames = pairs
        .split(", ")
        .map(|p| {
            let w: Vec<&str> = p.split_whitespace().collect();
            assert!(
                w.len() == 6 && w[0] == "pair" && w[2] == "tx" && w[4] == "rx",
                "bad pair field {p:?} in {line:?}"
            );
            PairFrames {
                tx: w[3].parse().expect("tx frames"),
                rx: w[5].parse().expect("rx frames"),
            }
        })
        .collect();
    (in_use.parse().expect("pairs in use"), frames)
}

/// Asks attach for its stats (SIGUSR1) and returns the pairs line it printed.
fn pair_stats(lab: &Lab) -> (usize, Vec<PairFrames>) {
    parse_pairs(&lab.stats_line_now("stats: queue pairs:"))
}

/// Starts curl in G with `args` (under a 180 s timeout).
fn curl(lab: &Lab, args: &[String]) -> Child {
    lab.ns(Ns::G)
        .command("timeout")
        .args(["-k", "2", "180", "curl", "-sS", "-f"])
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("curl")
}

/// Four downloads of `url` at once into the scratch folder (`down-0.bin`, ...).
fn four_downloads(lab: &Lab, url: &str) -> Vec<(PathBuf, Child)> {
    (0..4)
        .map(|i| {
            let path = lab.dir.join(format!("down-{i}.bin"));
            let out = path.to_str().expect("utf-8").to_owned();
            (path, curl(lab, &["-o".into(), out, url.to_owned()]))
        })
        .collect()
}

/// Waits for [`four_downloads`]' curls and checks each file's sha256.
fn wait_downloads(downs: Vec<(PathBuf, Child)>, want: &str) {
    for (path, child) in downs {
        wait_ok(child, &format!("download to {}", path.display()));
        assert_eq!(sha256(&path), want, "{}: bytes differ", path.display());
    }
}

fn wait_ok(mut child: Child, what: &str) {
    let status = child.wait().expect("curl");
    assert!(status.success(), "{what}: {status}");
}

/// A lab with `--queues 2`, a lease, an HTTP server in S serving (and taking uploads into)
/// the scratch folder, and a random blob of `len` bytes there.
fn two_pairs(tag: &str, len: u64) -> (Lab, PathBuf) {
    two_pairs_with(tag, len, &[])
}

/// As [`two_pairs`], with `more` attach arguments.
fn two_pairs_with(tag: &str, len: u64, more: &[&str]) -> (Lab, PathBuf) {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let args: Vec<&str> = ["--queues", "2"].iter().chain(more).copied().collect();
    let (mut lab, lease) = Lab::with_lease(tag, &args);
    assert_eq!(lease.ip.to_string(), "192.168.64.2");
    let blob = lab.random_file("blob", len);
    lab.random_file("small", 4096);
    lab.serve_dir(&format!("{SERVER}:8080"));
    (lab, blob)
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn four_streams_over_two_queue_pairs_keep_their_bytes_both_ways_and_use_both_pairs() {
    four_streams("mq", &[]);
}

/// The same with `--threads pairs`: each pair on a thread of its own, the network shared
/// behind a lock taken per batch (`bridge::PairWorker`).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn four_streams_over_two_pair_threads_keep_their_bytes_both_ways_and_use_both_pairs() {
    four_streams("mqt", &["--threads", "pairs"]);
}

/// Four downloads and four uploads at once with sha256, then sixteen short fetches; both
/// pairs carried frames.
fn four_streams(tag: &str, more: &[&str]) {
    let (mut lab, blob) = two_pairs_with(tag, 24 << 20, more);
    let want = sha256(&blob);
    let (in_use, _) = pair_stats(&lab);
    assert_eq!(in_use, 2, "the guest set two queue pairs");

    // Four downloads at once, then four uploads at once.
    let url = format!("http://{SERVER}:8080");
    let downs = four_downloads(&lab, &format!("{url}/blob"));
    wait_downloads(downs, &want);
    let ups: Vec<Child> = (0..4)
        .map(|i| {
            curl(
                &lab,
                &[
                    "-T".into(),
                    blob.to_str().expect("utf-8").into(),
                    format!("{url}/up-{i}.bin"),
                ],
            )
        })
        .collect();
    for (i, child) in ups.into_iter().enumerate() {
        wait_ok(child, &format!("upload {i}"));
        let up = lab.dir.join(format!("up-{i}.bin"));
        assert_eq!(sha256(&up), want, "upload {i}: bytes differ");
    }

    // Sixteen short connections more: each picks a queue by its hash, so (but with a chance
    // of 2^-15 for a fair hash) both pairs carry some of them whatever the streams did.
    for i in 0..16 {
        wait_ok(
            curl(
                &lab,
                &["-o".into(), "/dev/null".into(), format!("{url}/small")],
            ),
            &format!("short fetch {i}"),
        );
    }
    let (in_use, pairs) = pair_stats(&lab);
    eprintln!("pairs in use {in_use}: {pairs:?}");
    assert_eq!(in_use, 2);
    assert_eq!(pairs.len(), 2, "{pairs:?}");
    for (p, f) in pairs.iter().enumerate() {
        assert!(
            f.tx >= 20 && f.rx >= 20,
            "pair {p} carried almost nothing: {pairs:?}"
        );
    }
    let (line, _) = lab.take_attach().stop_for_stats_line();
    assert!(line.contains("stats: bridge"), "{line}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn queue_pairs_switched_two_one_two_under_four_downloads_lose_no_connection() {
    let (lab, blob) = two_pairs("mqsw", 24 << 20);
    let want = sha256(&blob);
    let url = format!("http://{SERVER}:8080/blob");
    let small = format!("http://{SERVER}:8080/small");
    // S sends at 96 Mbit/s at most (a token bucket on its link, in S only): four downloads
    // of 24 MiB take about 8 s, across both switches.
    lab.ok(
        Ns::S,
        5,
        &[
            "tc", "qdisc", "add", "dev", SERVER_DEV, "root", "tbf", "rate", "96mbit", "burst",
            "128kb", "latency", "500ms",
        ],
    );
    let downs = four_downloads(&lab, &url);
    std::thread::sleep(Duration::from_secs(2));
    lab.attach().signal("USR2");
    wait_for_log(&lab, "to=1", 1);
    // One pair in use: the other moves nothing while the downloads go on over pair 0.
    std::thread::sleep(Duration::from_millis(500));
    let (in_use, a) = pair_stats(&lab);
    assert_eq!(in_use, 1, "after VQ_PAIRS_SET 1");
    std::thread::sleep(Duration::from_secs(1));
    let (_, b) = pair_stats(&lab);
    assert_eq!(a[1], b[1], "pair 1 moved frames while out of use");
    assert!(b[0].rx > a[0].rx, "pair 0 carried nothing: {a:?} -> {b:?}");
    lab.attach().signal("USR2");
    wait_for_log(&lab, "to=2", 1);
    let (in_use, _) = pair_stats(&lab);
    assert_eq!(in_use, 2, "after VQ_PAIRS_SET 2");
    wait_downloads(downs, &want);
    // New connections after the switches spread over both pairs again.
    let (_, before) = pair_stats(&lab);
    for i in 0..16 {
        wait_ok(
            curl(&lab, &["-o".into(), "/dev/null".into(), small.clone()]),
            &format!("short fetch {i}"),
        );
    }
    let (_, after) = pair_stats(&lab);
    for p in 0..2 {
        assert!(
            after[p].rx > before[p].rx && after[p].tx > before[p].tx,
            "pair {p} carried none of the new connections: {before:?} -> {after:?}"
        );
    }
}

/// Waits up to 10 s for the `count`th "queue pairs set" log line containing `needle`.
fn wait_for_log(lab: &Lab, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stderr = lab.attach_stderr();
        let n = stderr
            .lines()
            .filter(|l| l.contains("queue pairs set") && l.contains(needle))
            .count();
        if n >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no \"queue pairs set {needle}\" in attach's log:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two guest namespaces with two queue pairs each on one network: leases, pings both ways,
/// fetches from S with integrity, and both pairs of each port used (S's answers come back on
/// the TUN queue that wrote the flow, whichever guest it belongs to).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_guests_with_two_queue_pairs_each_reach_each_other_and_the_server() {
    require(&[
        ("busybox", "busybox"),
        ("curl", "curl"),
        ("ping", "iputils-ping"),
    ]);
    let mut lab = Lab::start_without_attach("mq2g");
    let g2 = testbed::netns::Netns::new("mq2g-g2").expect("second guest namespace");
    let server = SERVER.to_string();
    let attach = lab.spawn_attach(
        &[],
        &[
            "--guest-netns",
            g2.name(),
            "--queues",
            "2",
            "--dns-upstream",
            &server,
        ],
    );
    lab.set_attach(attach);
    let l1 = lab.udhcpc();
    let l2 = lab.udhcpc_in(&g2);
    assert_eq!(
        (l1.ip.to_string(), l2.ip.to_string()),
        ("192.168.64.2".into(), "192.168.64.3".into())
    );
    for (from, to) in [(lab.ns(Ns::G), l2.ip), (&g2, l1.ip)] {
        let out = from
            .command("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "2", &to.to_string()])
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("3 received"),
            "{} -> {to}: {text}",
            from.name()
        );
    }
    let blob = lab.random_file("blob", 8 << 20);
    lab.random_file("small", 4096);
    let want = sha256(&blob);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let url = format!("http://{SERVER}:8080");
    for (i, ns) in [lab.ns(Ns::G), &g2].into_iter().enumerate() {
        let path = lab.dir.join(format!("fetch-{i}.bin"));
        let fetch = |args: &[&str]| {
            let status = ns
                .command("timeout")
                .args(["-k", "2", "60", "curl", "-sS", "-f"])
                .args(args)
                .stdin(Stdio::null())
                .status()
                .expect("curl");
            assert!(status.success(), "{}: curl {args:?}: {status}", ns.name());
        };
        fetch(&["-o", path.to_str().expect("utf-8"), &format!("{url}/blob")]);
        assert_eq!(sha256(&path), want, "{}: bytes differ", ns.name());
        for _ in 0..16 {
            fetch(&["-o", "/dev/null", &format!("{url}/small")]);
        }
    }
    lab.attach().signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let stderr = lab.attach_stderr();
        if let Some(l) = stderr
            .lines()
            .find(|l| l.starts_with("stats: queue pairs:"))
        {
            break l.to_owned();
        }
        assert!(Instant::now() < deadline, "no queue pairs line:\n{stderr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both ports, two pairs in use each, every pair carried frames both ways.
    for port in ["port 0: 2 in use", "port 1: 2 in use"] {
        assert!(line.contains(port), "{port}: {line}");
    }
    for part in line.split("pair ").skip(1) {
        let w: Vec<&str> = part.split_whitespace().collect();
        let (tx, rx): (u64, u64) = (
            w[2].parse().expect("tx"),
            w[4].trim_end_matches([',', ';']).parse().expect("rx"),
        );
        assert!(tx >= 10 && rx >= 10, "pair {}: {line}", w[0]);
    }
    assert!(lab.attach_alive(), "attach died");
}
