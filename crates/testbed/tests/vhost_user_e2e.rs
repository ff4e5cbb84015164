//! `hostnet-lab attach --vhost-user SOCKET` against hostnetd: the simulated guest as a
//! vhost-user frontend in another process than the device, on testbed's three namespaces
//! (hostnetd and its TUN in H). Real programs are the traffic: busybox udhcpc, ping, curl
//! (100 MiB each way, sha256 compared), dig through hostnetd's gateway to dnsmasq in S.
//!
//! Needs root, and the `hostnetd` binary beside `hostnet-lab` (`cargo test --workspace`, as
//! `cargo xtask test` runs it, builds both; else set `HOSTNETD=path`). Programs: busybox,
//! iputils-ping, curl, dnsmasq-base, dnsutils.

#![cfg(target_os = "linux")]

// This test uses a few of the shared helpers only.
#[allow(dead_code)]
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{GATEWAY, HOST_SERVER, Lab, Ns, SERVER, helper, hostnet_lab, require, sha256};

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_vhost_user_to_hostnetd_gets_dhcp_ping_dns_and_moves_100mb_both_ways() {
    require(&[
        ("busybox", "busybox"),
        ("ping", "iputils-ping"),
        ("curl", "curl"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
    ]);
    let mut lab = Lab::start_without_attach("vu");
    let (_daemon, socket) = start_hostnetd(&mut lab);
    let attach = start_attach(&mut lab, &socket, &[]);
    let err = attach_stderr(&lab);
    let negotiated = err
        .lines()
        .find(|l| l.contains("vhost-user backend negotiated"))
        .unwrap_or_else(|| panic!("no negotiation line:\n{err}"));
    for bit in [
        "VERSION_1",
        "MRG_RXBUF",
        "HOST_TSO4",
        "GUEST_TSO4",
        "HOST_TSO6",
        "GUEST_TSO6",
        "CONFIG",
    ] {
        assert!(
            negotiated.contains(bit),
            "{bit} not negotiated: {negotiated}"
        );
    }

    // DHCP from hostnetd's gateway, through the vhost-user rings.
    let lease = lab.udhcpc();
    assert_eq!(lease.ip, bridge::defaults::DHCP_POOL_FIRST, "{lease:?}");
    assert_eq!(lease.routers, vec![GATEWAY], "{lease:?}");
    assert!(lease.dns.contains(&GATEWAY), "{lease:?}");

    for addr in [GATEWAY, HOST_SERVER, SERVER] {
        let p = lab.ping(Ns::G, addr, 5);
        assert_eq!((p.transmitted, p.received), (5, 5), "ping {addr}");
    }

    // DNS: dig in G asks hostnetd's gateway, which forwards to dnsmasq in S.
    lab.start_dnsmasq();
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let o = lab.run(
            Ns::G,
            10,
            &[
                "dig",
                &format!("@{GATEWAY}"),
                "+notcp",
                "+time=2",
                "+tries=1",
                "www.e2e.test",
                "A",
            ],
        );
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        if out.contains("198.18.7.7") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200)); // dnsmasq still starting
    };
    assert!(
        answer.contains("status: NOERROR") && answer.contains("198.18.7.7"),
        "{answer}"
    );
    assert!(
        answer.contains(&format!("SERVER: {GATEWAY}#53(")),
        "{answer}"
    );

    // 100 MiB each way with curl, sha256 compared.
    let src = lab.random_file("blob", HUNDRED_MB);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let want = sha256(&src);
    let up = curl(
        &lab,
        &[
            "-T",
            src.to_str().expect("utf-8"),
            &format!("http://{SERVER}:8080/up.bin"),
        ],
    );
    assert_eq!(
        sha256(&lab.dir.join("up.bin")),
        want,
        "uploaded bytes differ"
    );
    let down_path = lab.dir.join("down.bin");
    let down = curl(
        &lab,
        &[
            "-o",
            down_path.to_str().expect("utf-8"),
            &format!("http://{SERVER}:8080/blob"),
        ],
    );
    assert_eq!(sha256(&down_path), want, "downloaded bytes differ");
    eprintln!("vhost-user: PUT 100 MiB {up:.2} s, GET {down:.2} s");

    // A polite stop: status 0 and the guest's stats line, with TSO super-frames both ways.
    let p = lab.proc(attach);
    p.signal("TERM").expect("SIGTERM to attach");
    let status = p
        .wait_timeout(Duration::from_secs(5))
        .expect("waiting for attach")
        .expect("attach exits within 5 s of SIGTERM");
    let err = attach_stderr(&lab);
    assert!(status.success(), "attach exited {status:?}:\n{err}");
    let stats = err
        .lines()
        .rfind(|l| l.starts_with("stats: guest tx"))
        .unwrap_or_else(|| panic!("no guest stats line:\n{err}"));
    let gso = |dir: &str| -> u64 {
        stats
            .split(dir)
            .nth(1)
            .and_then(|s| s.split("(gso ").nth(1))
            .and_then(|s| s.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {dir}gso in {stats:?}"))
    };
    assert!(gso("tx ") > 0 && gso("rx ") > 0, "no super-frames: {stats}");
}

/// `attach --vhost-user --queues 2` against `hostnetd --queues 2`: the frontend agrees on the
/// MQ protocol feature, starts five rings (two pairs and the control queue) and sets two
/// pairs on the control queue before its ready line; the guest fetches whole over both pairs;
/// SIGUSR2 sets one pair (hostnetd's `ctl guests` follows: only its answer to the control
/// queue can say so, every ring stays enabled) and two again, the fetches still whole.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_vhost_user_with_two_queue_pairs_sets_them_on_hostnetd_and_switches_on_sigusr2() {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let mut lab = Lab::start_without_attach("vu-mq");
    let (_daemon, socket) = start_hostnetd_with(&mut lab, &["--queues", "2"]);
    let attach = start_attach(&mut lab, &socket, &["--queues", "2"]);
    let err = attach_stderr(&lab);
    let negotiated = err
        .lines()
        .find(|l| l.contains("vhost-user backend negotiated"))
        .unwrap_or_else(|| panic!("no negotiation line:\n{err}"));
    for want in ["MQ", "CTRL_VQ", "rings=5", "queue_pairs=2"] {
        assert!(negotiated.contains(want), "no {want}: {negotiated}");
    }
    let _lease = lab.udhcpc();
    let blob = lab.random_file("blob", 8 << 20);
    let want = sha256(&blob);
    lab.serve_dir(&format!("{SERVER}:8080"));
    // `ctl guests`: `  queue pairs N in use, frames tx/rx per pair ...`.
    let in_use = |socket: &Path| -> u64 {
        let out = ctl(socket, &["guests"]);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("queue pairs ")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no queue pairs line in {text}"))
    };
    let fetch_whole = |lab: &Lab, i: usize| {
        let out = lab.dir.join(format!("down-{i}.bin"));
        curl(
            lab,
            &[
                "-o",
                out.to_str().expect("utf-8"),
                &format!("http://{SERVER}:8080/blob"),
            ],
        );
        assert_eq!(sha256(&out), want, "download {i}: bytes differ");
    };
    assert_eq!(in_use(&socket), 2, "hostnetd after VQ_PAIRS_SET 2");
    fetch_whole(&lab, 0);
    for (i, to) in [(1, 1), (2, 2)] {
        lab.proc(attach).signal("USR2").expect("SIGUSR2 to attach");
        common::wait_file_contains(
            &lab.dir.join("attach.err"),
            &format!("from={} to={to}", 3 - to),
            10,
        );
        assert_eq!(in_use(&socket), to, "hostnetd after VQ_PAIRS_SET {to}");
        fetch_whole(&lab, i);
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_vhost_user_exits_2_when_the_backend_goes_away() {
    require(&[("busybox", "busybox")]);
    let mut lab = Lab::start_without_attach("vu-gone");
    let (daemon, socket) = start_hostnetd(&mut lab);
    let attach = start_attach(&mut lab, &socket, &["--no-offload"]);
    assert!(
        attach_stderr(&lab).contains("offloads=none"),
        "{}",
        attach_stderr(&lab)
    );
    let _lease = lab.udhcpc();
    lab.proc(daemon).signal("KILL").expect("killing hostnetd");
    let status = lab
        .proc(attach)
        .wait_timeout(Duration::from_secs(5))
        .expect("waiting for attach")
        .expect("attach exits within 5 s of losing its backend");
    let err = attach_stderr(&lab);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("hostnet-lab: error: ")
            && l.contains("vhost-user backend")
            && l.contains("closed the connection")),
        "{err}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_vhost_user_refuses_an_mtu_the_backend_does_not_report() {
    let mut lab = Lab::start_without_attach("vu-mtu");
    let (_daemon, socket) = start_hostnetd(&mut lab);
    let sock = socket.to_str().expect("utf-8");
    let guest = lab.ns(Ns::G).name().to_owned();
    let o = lab.run(
        Ns::H,
        20,
        &[
            hostnet_lab().to_str().expect("utf-8"),
            "attach",
            "--guest-netns",
            &guest,
            "--mtu",
            "9000",
            "--vhost-user",
            sock,
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the backend reports MTU 1500, asked for 9000"),
        "{err}"
    );
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// hostnetd's control socket (issue 16): `hostnetd ctl forward add` opens a port forward to the
/// running guest (a client in S fetches a file from the guest through it), `forward remove`
/// closes it (the next connection fails, counted as an inbound NAT drop); `stats --json`,
/// `flows` and the Prometheus metrics scraped from S over `--metrics` move with the traffic.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn hostnetd_control_socket_forwards_at_runtime_and_metrics_move() {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let mut lab = Lab::start_without_attach("vu-ctl");
    let metrics_addr = format!("{HOST_SERVER}:9464");
    let (_daemon, socket) = start_hostnetd_with(&mut lab, &["--metrics", &metrics_addr]);
    let _attach = start_attach(&mut lab, &socket, &[]);
    let lease = lab.udhcpc();
    let guest_ip = lease.ip.to_string();
    let page = lab.dir.join("guest-www");
    std::fs::create_dir_all(&page).expect("guest www folder");
    std::fs::write(page.join("hello.txt"), "hello from the guest\n").expect("page");
    lab.spawn(
        Ns::G,
        &[
            helper(),
            "http-serve",
            &format!("{guest_ip}:8000"),
            page.to_str().expect("utf-8"),
        ],
        Some("listening"),
    );
    let scrape = |lab: &Lab| -> String {
        lab.ok(
            Ns::S,
            10,
            &[
                "curl",
                "-sS",
                "--fail",
                &format!("http://{metrics_addr}/metrics"),
            ],
        )
    };
    let metric = |text: &str, line_start: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
    };
    let before = scrape(&lab);
    assert_eq!(metric(&before, "hostnet_guest_connected "), 1, "{before}");
    let rx_before = metric(&before, "hostnet_frames_total{direction=\"rx\"} ");

    let url = format!("http://{}:8080/hello.txt", common::EXTERNAL);
    let fetch = |lab: &Lab| {
        lab.run(
            Ns::S,
            15,
            &[
                "curl",
                "-sS",
                "--fail",
                "--connect-timeout",
                "3",
                "--max-time",
                "10",
                &url,
            ],
        )
    };
    let o = fetch(&lab);
    assert!(
        !o.status.success(),
        "the forward is there before it was added"
    );
    let out = ctl(
        &socket,
        &["forward", "add", &format!("tcp:8080:{guest_ip}:8000")],
    );
    assert!(out.status.success(), "forward add: {out:?}");
    let listed = ctl(&socket, &["forwards"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains(&format!("tcp:8080:{guest_ip}:8000")),
        "{listed:?}"
    );
    let o = fetch(&lab);
    assert!(o.status.success(), "fetch through the new forward: {o:?}");
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hello from the guest\n");
    let flows = ctl(&socket, &["flows", "50"]);
    assert!(
        String::from_utf8_lossy(&flows.stdout).contains(&format!("{guest_ip}:8000")),
        "the forwarded connection's flow: {flows:?}"
    );
    let after = scrape(&lab);
    assert!(
        metric(&after, "hostnet_frames_total{direction=\"rx\"} ") > rx_before,
        "frames to the guest did not move:\n{after}"
    );
    assert!(
        metric(
            &after,
            "hostnet_nat_translated_packets_total{family=\"ipv4\",direction=\"inbound\"} "
        ) > 0,
        "{after}"
    );

    let out = ctl(&socket, &["forward", "remove", "tcp:8080"]);
    assert!(out.status.success(), "forward remove: {out:?}");
    let again = ctl(&socket, &["forward", "remove", "tcp:8080"]);
    assert_eq!(again.status.code(), Some(1), "removing it twice: {again:?}");
    let o = fetch(&lab);
    assert!(
        !o.status.success(),
        "the removed forward still answers: {o:?}"
    );
    let stats = ctl(&socket, &["--json", "stats"]);
    let stats = String::from_utf8_lossy(&stats.stdout).into_owned();
    assert!(
        stats.starts_with("{")
            && stats.contains("\"ok\":true")
            && stats.contains("\"connected\":true"),
        "{stats}"
    );
    let nat_inbound = stats
        .split("\"NatInbound\":")
        .nth(1)
        .and_then(|s| s.split([',', '}']).next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no NatInbound in {stats}"));
    assert!(
        nat_inbound > 0,
        "the refused connection is counted: {stats}"
    );
    let bad = ctl(&socket, &["forward", "add", "sctp:1:2"]);
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(ctl(&socket, &["log-level", "debug"]).status.success());
}

/// `hostnetd ctl flows --by age` lists the oldest flow first with its age, `flows` (by
/// expiry) the most recently active first (issue 16).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn hostnetd_lists_flows_by_age_and_by_activity() {
    require(&[
        ("busybox", "busybox"),
        ("curl", "curl"),
        ("ping", "iputils-ping"),
    ]);
    let mut lab = Lab::start_without_attach("vu-age");
    let (_daemon, socket) = start_hostnetd_with(&mut lab, &[]);
    let _attach = start_attach(&mut lab, &socket, &[]);
    let lease = lab.udhcpc();
    std::fs::write(lab.dir.join("page.txt"), "page\n").expect("page");
    lab.serve_dir(&format!("{SERVER}:8080"));
    // An ICMP flow (60 s timeout), then 3 s later a TCP one (closed: 240 s).
    lab.ok(
        Ns::G,
        10,
        &["ping", "-c", "1", "-W", "2", &SERVER.to_string()],
    );
    std::thread::sleep(Duration::from_secs(3));
    lab.ok(
        Ns::G,
        15,
        &[
            "curl",
            "-sS",
            "--fail",
            &format!("http://{SERVER}:8080/page.txt"),
        ],
    );
    let flows = |args: &[&str]| -> Vec<String> {
        let out = ctl(&socket, args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    };
    let guest = lease.ip.to_string();
    let by_age = flows(&["flows", "--by", "age"]);
    assert_eq!(by_age.len(), 2, "{by_age:?}");
    assert!(
        by_age[0].starts_with("icmp") && by_age[1].starts_with("tcp"),
        "the oldest first: {by_age:?}"
    );
    let age = |line: &str| -> u64 {
        line.split(" age ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no age in {line:?}"))
    };
    assert!(age(&by_age[0]) >= 3, "{by_age:?}");
    assert!(age(&by_age[1]) < age(&by_age[0]), "{by_age:?}");
    assert!(by_age.iter().all(|l| l.contains(&guest)), "{by_age:?}");
    let by_expiry = flows(&["flows"]);
    assert!(
        by_expiry.len() == 2 && by_expiry[0].starts_with("tcp"),
        "the latest expiry (TCP's 240 s after its close) first: {by_expiry:?}"
    );
    let json = ctl(&socket, &["--json", "flows", "1", "--by", "age"]);
    let json = String::from_utf8_lossy(&json.stdout).into_owned();
    assert!(
        json.contains("\"age_s\":")
            && json.contains("\"protocol\":\"icmp\"")
            && !json.contains("tcp"),
        "{json}"
    );
}

/// Runs `hostnetd ctl --socket SOCKET ARGS` (the control socket beside the vhost-user one).
fn ctl(socket: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(hostnetd())
        .arg("ctl")
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("running hostnetd ctl")
}

/// Starts hostnetd in H (`--dns-upstream` the server) on a socket in the scratch folder and
/// waits for its ready line; returns its process index and the socket.
fn start_hostnetd(lab: &mut Lab) -> (usize, PathBuf) {
    start_hostnetd_with(lab, &[])
}

/// [`start_hostnetd`] with `extra` arguments.
fn start_hostnetd_with(lab: &mut Lab, extra: &[&str]) -> (usize, PathBuf) {
    let socket = lab.dir.join("hostnetd.sock");
    // hostnetd routes nothing itself (attach in-process turns forwarding on in H).
    lab.ns(Ns::H)
        .sysctl("net.ipv4.ip_forward", "1")
        .expect("ip_forward in H");
    let bin = hostnetd();
    let idx = lab.spawn_logged(
        Ns::H,
        "hostnetd",
        &[
            bin.to_str().expect("utf-8"),
            "--socket",
            socket.to_str().expect("utf-8"),
            "--dns-upstream",
            &SERVER.to_string(),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    common::wait_file_contains(&lab.dir.join("hostnetd.out"), "ready ", 15);
    (idx, socket)
}

/// Starts `hostnet-lab attach --guest-netns G --host-netns H --vhost-user SOCKET <extra>` in
/// H, waits for its ready line (the vhost-user form) and returns its process index.
fn start_attach(lab: &mut Lab, socket: &Path, extra: &[&str]) -> usize {
    let lab_bin = hostnet_lab();
    let (g, h) = (
        lab.ns(Ns::G).name().to_owned(),
        lab.ns(Ns::H).name().to_owned(),
    );
    let mut argv = vec![
        lab_bin.to_str().expect("utf-8"),
        "attach",
        "--guest-netns",
        &g,
        "--host-netns",
        &h,
        "--vhost-user",
        socket.to_str().expect("utf-8"),
    ];
    argv.extend_from_slice(extra);
    let idx = lab.spawn_logged(Ns::H, "attach", &argv);
    let out = common::wait_file_contains(&lab.dir.join("attach.out"), "\n", 15);
    assert_eq!(
        out,
        "ready external=- tun=- gateway=-\n",
        "{}",
        attach_stderr(lab)
    );
    idx
}

fn attach_stderr(lab: &Lab) -> String {
    std::fs::read_to_string(lab.dir.join("attach.err")).unwrap_or_default()
}

/// The hostnetd binary: `$HOSTNETD`, else the one beside `hostnet-lab`.
fn hostnetd() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTNETD") {
        return PathBuf::from(p);
    }
    let p = hostnet_lab().with_file_name("hostnetd");
    assert!(
        p.is_file(),
        "{} is missing: build it (`cargo build -p hostnetd`, or run the workspace's tests) \
         or set HOSTNETD",
        p.display()
    );
    p
}

/// Runs curl in G (failing on HTTP errors) and returns the transfer time in seconds.
fn curl(lab: &Lab, args: &[&str]) -> f64 {
    let mut argv = vec![
        "curl",
        "-sS",
        "--fail",
        "--max-time",
        "120",
        "-w",
        "%{time_total}\n",
    ];
    argv.extend_from_slice(args);
    let out = lab.ok(Ns::G, 130, &argv);
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time_total in curl output {out:?}"))
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;
