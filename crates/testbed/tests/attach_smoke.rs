//! Smoke tests of `hostnet-lab attach` through its command line (the contract in
//! `docs/hostnet-lab.md`): it comes up, prints the ready line, makes TAP and TUN in the right
//! namespaces, and on SIGTERM removes them and exits 0 within 2 s. Bad arguments exit 2.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testbed::netns::{Netns, Process};

fn lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hostnet-lab"))
}

/// Runs `hostnet-lab args` to completion; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = lab()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running hostnet-lab");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_prints_the_synopsis_and_exits_0() {
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(
        out.contains("hostnet-lab attach --guest-netns <G>"),
        "{out}"
    );
    assert!(out.contains("--forward"), "{out}");
}

#[test]
fn bad_arguments_give_one_line_and_exit_2() {
    for args in [
        &["attach"][..],
        &["attach", "--guest-netns", "g", "--mtu", "12"],
        &["attach", "--guest-netns", "g", "--forward", "sctp:1:2"],
        &["attach", "--guest-netns", "g", "--what"],
        &["frobnicate"],
        &[],
    ] {
        let (code, out, err) = run(args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("hostnet-lab: error: "), "{err}");
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn missing_namespace_gives_one_line_and_exit_2() {
    let host = Netns::new("smoke-miss").expect("host namespace");
    let missing = format!("hostnet-smoke-missing-{}", std::process::id());
    for args in [
        vec![
            "attach",
            "--guest-netns",
            &missing,
            "--host-netns",
            host.name(),
        ],
        vec![
            "attach",
            "--guest-netns",
            host.name(),
            "--host-netns",
            &missing,
        ],
    ] {
        let mut cmd = host.command(env!("CARGO_BIN_EXE_hostnet-lab"));
        let out = cmd
            .args(&args)
            .args(["--dns-upstream", "198.18.0.2"])
            .output()
            .expect("running hostnet-lab");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(&missing), "{err}");
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_comes_up_and_goes_away_cleanly_on_sigterm() {
    let guest = Netns::new("smoke-g").expect("guest namespace");
    let host = Netns::new("smoke-h").expect("host namespace");
    let mut cmd = host.command(env!("CARGO_BIN_EXE_hostnet-lab"));
    cmd.args([
        "attach",
        "--guest-netns",
        guest.name(),
        "--host-netns",
        host.name(),
        "--mtu",
        "1400",
        "--dns-upstream",
        "198.18.0.2",
        "--forward",
        "tcp:8080:80",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut proc = Process::spawn(&mut cmd).expect("spawning attach");
    let stdout = proc.take_stdout().expect("stdout");
    let stderr = proc.take_stderr().expect("stderr");
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let text: Vec<String> = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect();
        let _ = err_tx.send(text.join("\n"));
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|e| {
            let _ = proc.signal("KILL");
            panic!(
                "no ready line ({e}); stderr:\n{}",
                err_rx
                    .recv_timeout(Duration::from_secs(2))
                    .unwrap_or_default()
            )
        });
    let fields: Vec<&str> = ready.split(' ').collect();
    assert_eq!(fields.len(), 6, "{ready}");
    assert_eq!(fields[0], "ready");
    assert_eq!(fields[1], "external=100.64.0.2");
    assert!(fields[2].starts_with("tun="), "{ready}");
    assert_eq!(fields[3], "gateway=192.168.64.1");
    // IPv6 (default on) adds its fields after the existing ones.
    assert_eq!(fields[4], "external6=fd64:ffff::2");
    assert_eq!(fields[5], "gateway6=fd64::1");
    let tun = fields[2].trim_start_matches("tun=").to_owned();

    // TAP eth0 in G: down, no address, MTU 1400. TUN in H: 100.64.0.1 peer 100.64.0.2.
    let eth0 = guest
        .ip(&["-o", "link", "show", "eth0"])
        .expect("eth0 in G");
    assert!(eth0.contains("mtu 1400"), "{eth0}");
    assert!(!eth0.contains(",UP"), "{eth0}");
    assert!(
        guest
            .ip(&["-o", "-4", "addr", "show", "eth0"])
            .expect("addr")
            .trim()
            .is_empty()
    );
    assert!(!host.has_link("eth0").expect("ip"));
    let addr = host
        .ip(&["-o", "-4", "addr", "show", &tun])
        .expect("tun in H");
    assert!(addr.contains("100.64.0.1 peer 100.64.0.2"), "{addr}");
    assert!(!guest.has_link(&tun).expect("ip"));
    let fwd = host
        .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("sysctl");
    assert_eq!(fwd.trim(), "1");
    let guest_fwd = guest
        .exec(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .expect("sysctl");
    assert_eq!(guest_fwd.trim(), "0", "ip_forward must be on in H only");
    let addr6 = host
        .ip(&["-o", "-6", "addr", "show", &tun])
        .expect("tun in H");
    assert!(addr6.contains("fd64:ffff::1/64"), "{addr6}");
    let fwd6 = "/proc/sys/net/ipv6/conf/all/forwarding";
    assert_eq!(host.exec(&["cat", fwd6]).expect("sysctl").trim(), "1");
    assert_eq!(
        guest.exec(&["cat", fwd6]).expect("sysctl").trim(),
        "0",
        "IPv6 forwarding must be on in H only"
    );
    // Nothing more on stdout than the ready line.
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());

    let t = Instant::now();
    proc.signal("TERM").expect("kill -TERM");
    let status = proc
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("attach still running 5 s after SIGTERM");
    let took = t.elapsed();
    let err = err_rx
        .recv_timeout(Duration::from_secs(2))
        .unwrap_or_default();
    assert!(status.success(), "{status}; stderr:\n{err}");
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    assert!(err.contains("stats:"), "no stats printed; stderr:\n{err}");
    assert!(!guest.has_link("eth0").expect("ip"), "eth0 survived");
    assert!(!host.has_link(&tun).expect("ip"), "{tun} survived");
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "more stdout"
    );
}

/// `--no-ipv6`: the ready line keeps its four fields, the TUN gets no IPv6 address and H's
/// IPv6 forwarding is left alone.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn no_ipv6_keeps_the_ready_line_and_the_tun_ipv4_only() {
    let topo = testbed::netns::Topology::new("smoke-no6").expect("topology");
    let (mut proc, ready) = start_attach(&topo.guest, &topo.host, &["--no-ipv6"]);
    let fields: Vec<&str> = ready.split(' ').collect();
    assert_eq!(fields.len(), 4, "{ready}");
    assert_eq!(fields[1], "external=100.64.0.2");
    let tun = fields[2].trim_start_matches("tun=");
    let addr6 = topo
        .host
        .ip(&["-o", "-6", "addr", "show", tun])
        .expect("tun in H");
    assert!(!addr6.contains("fd64:ffff"), "{addr6}");
    let fwd6 = topo
        .host
        .exec(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
        .expect("sysctl");
    assert_eq!(fwd6.trim(), "0");
    proc.signal("TERM").expect("kill -TERM");
    let status = proc.wait_timeout(Duration::from_secs(5)).expect("wait");
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Starts attach in `host` for `guest`; returns the process and its ready line.
fn start_attach(guest: &Netns, host: &Netns, extra: &[&str]) -> (Process, String) {
    let mut cmd = host.command(env!("CARGO_BIN_EXE_hostnet-lab"));
    cmd.args([
        "attach",
        "--guest-netns",
        guest.name(),
        "--host-netns",
        host.name(),
        "--dns-upstream",
        "198.18.0.2",
    ])
    .args(extra)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut proc = Process::spawn(&mut cmd).expect("spawning attach");
    let stdout = proc.take_stdout().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("no ready line from attach");
    (proc, ready)
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn static_guest_reaches_gateway_and_server_with_jumbo_frames() {
    let topo = testbed::netns::Topology::new("smoke-path").expect("topology");
    let (mut proc, ready) = start_attach(
        &topo.guest,
        &topo.host,
        &["--static-guest-ip", "192.168.64.2", "--mtu", "9000"],
    );
    assert!(ready.starts_with("ready "), "{ready}");
    let g = &topo.guest;
    g.link_up("eth0").expect("eth0 up");
    g.add_addr("eth0", "192.168.64.2/24").expect("addr");
    g.add_route("default", "192.168.64.1".parse().expect("ip"))
        .expect("route");
    // Gateway with a frame bigger than one 2 KiB RX buffer (MRG_RXBUF reassembly).
    let out = g
        .exec(&[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            "-s",
            "8000",
            "192.168.64.1",
        ])
        .expect("ping gateway");
    assert!(out.contains("3 received"), "{out}");
    // Through the NAT and the host namespace's routing to the server.
    let out = g
        .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "2", "198.18.0.2"])
        .expect("ping server");
    assert!(out.contains("3 received"), "{out}");
    proc.signal("TERM").expect("TERM");
    let status = proc
        .wait_timeout(Duration::from_secs(3))
        .expect("wait")
        .expect("attach did not exit");
    assert!(status.success(), "{status}");
}
