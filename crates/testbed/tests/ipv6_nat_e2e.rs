//! End-to-end: IPv6 through NAT66 (issue 13), with the guest namespace's own kernel as the
//! IPv6 host (SLAAC from the gateway, as in `ipv6_gateway_e2e`) and real programs.
//!
//! - attach's ready line ends with `external6=fd64:ffff::2 gateway6=fd64::1`.
//! - `ping -6` to the server `2001:db8::2` is answered.
//! - TCP over IPv6: `curl -6` downloads and uploads 100 MiB from/to the `hostnet-e2e` HTTP
//!   server on `[2001:db8::2]:8080`, sha256 checked. With attach's default offloads the guest
//!   negotiates HOST_TSO6 and GUEST_TSO6: TCPv6 super-frames go both ways through NAT66 with
//!   partial checksums, and the bridge's shutdown stats line counts them (`tx_gso6`,
//!   `rx_gso6` > 0); with `--no-offload` there are none.
//! - `iperf3 -6` (3 s each way) guest -> server and server -> guest (`-R`) through NAT66
//!   moves bytes, with TCPv6 super-frames both ways.
//! - The servers see the source `fd64:ffff::2` (NAT66), and one guest UDP port is mapped to
//!   the same external port towards `2001:db8::2` and `2001:db8::3` (endpoint-independent
//!   mapping, RFC 4787 REQ-1).
//! - Unsolicited inbound IPv6 to `fd64:ffff::2` (a TCP connect from the server to a port the
//!   guest listens on) is not delivered.
//!
//! Needs root: `cargo test -p testbed --test ipv6_nat_e2e -- --ignored`. Programs: iproute2
//! (ip), procps (sysctl), iputils-ping, curl, coreutils (sha256sum), iperf3.

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use common::{Lab, Ns, helper, require, sha256};

const SERVER6: &str = "2001:db8::2";
const SERVER6_2: &str = "2001:db8::3";
const EXTERNAL6: &str = "fd64:ffff::2";

/// `curl -6` in the guest with a bounded time; panics on failure; says how long it took.
fn curl6(lab: &Lab, args: &[&str]) -> f64 {
    let mut argv = vec!["curl", "-6", "-g", "-sS", "--fail", "--max-time", "120"];
    argv.extend_from_slice(args);
    let t = std::time::Instant::now();
    lab.ok(Ns::G, 130, &argv);
    t.elapsed().as_secs_f64()
}

/// The port in a `peer=[addr]:port` answer, checking the address.
fn peer_port(answer: &str, want_addr: &str) -> u16 {
    let rest = answer
        .trim()
        .strip_prefix("peer=")
        .unwrap_or_else(|| panic!("not a peer answer: {answer:?}"));
    let sa: std::net::SocketAddr = rest.parse().expect("peer=<socket address>");
    assert_eq!(sa.ip().to_string(), want_addr, "the source the server saw");
    sa.port()
}

/// A counter of attach's shutdown stats line.
fn field(line: &str, name: &str) -> u64 {
    line.split(", ")
        .find_map(|f| f.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

/// The GSO counters of attach's shutdown stats line: (tx_gso, rx_gso, tx_gso6, rx_gso6).
fn gso_counters(line: &str) -> (u64, u64, u64, u64) {
    (
        field(line, "tx_gso"),
        field(line, "rx_gso"),
        field(line, "tx_gso6"),
        field(line, "rx_gso6"),
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_slaac_guest_pings_and_moves_tcp_through_nat66_with_eim_and_no_unsolicited_inbound() {
    let (line, stderr) = nat66_round(&[]);
    assert!(
        stderr.contains("offloads=CSUM GUEST_CSUM HOST_TSO4 GUEST_TSO4 HOST_TSO6 GUEST_TSO6"),
        "TSO6 not negotiated:\n{stderr}"
    );
    let (_, _, tx6, rx6) = gso_counters(&line);
    assert!(
        tx6 > 0 && rx6 > 0,
        "no TCPv6 super-frames (tx_gso6 {tx6}, rx_gso6 {rx6}): {line}"
    );
    // The upload's TCPv6 super-frames left the TUN gathered from guest memory.
    assert!(field(&line, "tx_gathered") > 0, "nothing gathered: {line}");
    // And the download's were read into the guest's buffers.
    assert!(
        field(&line, "rx_scattered") > 0,
        "nothing scattered: {line}"
    );
}

/// The same without offloads: complete checksums all the way.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn the_same_through_nat66_without_offloads() {
    let (line, stderr) = nat66_round(&["--no-offload"]);
    assert!(stderr.contains("offloads=none"), "{stderr}");
    assert_eq!(gso_counters(&line), (0, 0, 0, 0), "{line}");
}

/// `iperf3 -6` through NAT66 both ways (3 s each), offloads on: bytes move, and both ways
/// in TCPv6 super-frames.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn iperf3_over_ipv6_moves_bytes_both_ways_through_nat66() {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("iperf3", "iperf3"),
    ]);
    let mut lab = Lab::start("e2e-v6iperf", &[]);
    lab.slaac();
    lab.spawn(
        Ns::S,
        &["iperf3", "-s", "-B", SERVER6, "-f", "m", "--forceflush"],
        Some("Server listening"),
    );
    let iperf = |reverse: bool| -> f64 {
        let mut argv = vec!["iperf3", "-6", "-c", SERVER6, "-t", "3", "-f", "m"];
        if reverse {
            argv.push("-R");
        }
        let out = lab.ok(Ns::G, 20, &argv);
        out.lines()
            .filter(|l| l.trim_end().ends_with("receiver"))
            .find_map(|l| {
                // `2.29 GBytes`, `829 MBytes`, `512 KBytes`.
                let words: Vec<&str> = l.split_whitespace().collect();
                let at = words.iter().position(|w| w.ends_with("Bytes"))?;
                let scale = match words[at] {
                    "GBytes" => 1024.0,
                    "MBytes" => 1.0,
                    "KBytes" => 1.0 / 1024.0,
                    _ => 1.0 / (1024.0 * 1024.0),
                };
                let n: f64 = words.get(at.checked_sub(1)?)?.parse().ok()?;
                Some(n * scale)
            })
            .unwrap_or_else(|| panic!("no receiver transfer in iperf3 output:\n{out}"))
    };
    let up = iperf(false);
    let down = iperf(true);
    eprintln!("iperf3 -6, 3 s: guest->server {up:.0} MBytes, server->guest {down:.0} MBytes");
    assert!(
        up > 1.0 && down > 1.0,
        "iperf3 -6 moved too little: {up} / {down} MBytes"
    );
    let (line, _) = lab.take_attach().stop_for_stats_line();
    let (_, _, tx6, rx6) = gso_counters(&line);
    assert!(
        tx6 > 0 && rx6 > 0,
        "no TCPv6 super-frames (tx_gso6 {tx6}, rx_gso6 {rx6}): {line}"
    );
}

/// The whole round; returns attach's shutdown stats line and its stderr.
fn nat66_round(extra: &[&str]) -> (String, String) {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ping", "iputils-ping"),
        ("curl", "curl"),
        ("sha256sum", "coreutils"),
    ]);
    let mut lab = Lab::start("e2e-v6nat", extra);
    let ready = lab
        .attach()
        .stdout_lines()
        .into_iter()
        .find(|l| l.starts_with("ready "))
        .expect("the ready line");
    assert!(
        ready.ends_with(" external6=fd64:ffff::2 gateway6=fd64::1"),
        "{ready}"
    );
    let guest = lab.slaac();
    eprintln!("guest address {guest}");

    // ICMPv6 echo through NAT66.
    let o = lab.run(
        Ns::G,
        15,
        &[
            "ping", "-6", "-n", "-c", "3", "-i", "0.2", "-W", "2", SERVER6,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("3 received"), "{out}");

    // The source the servers see, and endpoint-independent mapping.
    for server in [SERVER6, SERVER6_2] {
        lab.spawn(
            Ns::S,
            &[helper(), "peer-serve", &format!("[{server}]:7000")],
            Some("listening"),
        );
    }
    let tcp = lab.ok(
        Ns::G,
        15,
        &[
            helper(),
            "peer-ask",
            "tcp",
            &format!("[{SERVER6}]:7000"),
            "5",
        ],
    );
    peer_port(&tcp, EXTERNAL6);
    let ask_udp = |server: &str| {
        let a = lab.ok(
            Ns::G,
            15,
            &[
                helper(),
                "peer-ask",
                "udp",
                &format!("[{server}]:7000"),
                "5",
                "40123",
            ],
        );
        peer_port(&a, EXTERNAL6)
    };
    let (p1, p2) = (ask_udp(SERVER6), ask_udp(SERVER6_2));
    assert_eq!(
        p1, p2,
        "one guest port, one external port towards both servers"
    );

    // TCP over IPv6 both ways, 100 MiB, sha256 checked.
    lab.serve_dir(&format!("[{SERVER6}]:8080"));
    let src = lab.random_file("blob6", 100 * 1024 * 1024);
    let want = sha256(&src);
    let down = lab.dir.join("down6.bin");
    let get = curl6(
        &lab,
        &[
            "-o",
            down.to_str().expect("utf-8"),
            &format!("http://[{SERVER6}]:8080/blob6"),
        ],
    );
    assert_eq!(sha256(&down), want, "downloaded bytes differ");
    let put = curl6(
        &lab,
        &[
            "-T",
            src.to_str().expect("utf-8"),
            &format!("http://[{SERVER6}]:8080/up6.bin"),
        ],
    );
    assert_eq!(
        sha256(&lab.dir.join("up6.bin")),
        want,
        "uploaded bytes differ"
    );
    eprintln!(
        "{extra:?}: curl -6 GET 100 MiB {get:.2} s, PUT 100 MiB {put:.2} s (a shared machine)"
    );

    // Unsolicited inbound to the external address: the guest listens, the server's connect
    // gets nowhere.
    lab.spawn(
        Ns::G,
        &[helper(), "peer-serve", "[::]:7100"],
        Some("listening"),
    );
    let local = lab.ok(
        Ns::G,
        10,
        &[helper(), "tcp-try", &format!("[{guest}]:7100"), "2000"],
    );
    assert!(
        local.contains("connected"),
        "the guest's listener works: {local}"
    );
    let inbound = lab.ok(
        Ns::S,
        10,
        &[helper(), "tcp-try", &format!("[{EXTERNAL6}]:7100"), "2000"],
    );
    assert!(
        inbound.contains("failed"),
        "unsolicited inbound IPv6 reached the guest: {inbound}"
    );
    lab.take_attach().stop_for_stats_line()
}
