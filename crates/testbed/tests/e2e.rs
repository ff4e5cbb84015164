//! End-to-end tests: real programs in network namespaces talk through `hostnet-lab attach`
//! (simulated guest → bridge → NAT → TUN → host namespace routing → server namespace).
//!
//! Every test builds its own uniquely named namespaces (`hostnet-e2e-…-<pid>-<n>`), drives
//! `attach` only through its CLI contract, and cleans everything up on drop, also on failure.
//! All of them need root (CAP_NET_ADMIN + CAP_SYS_ADMIN): run with
//! `cargo test -p testbed --test e2e -- --include-ignored` (or `cargo xtask test`).
//! Programs they need (Debian 12): iproute2 iputils-ping curl busybox isc-dhcp-client
//! dnsutils dnsmasq-base python3 procps coreutils. Set `HOSTNET_E2E_KEEP=1` to keep the
//! scratch folders (logs) of each lab.

#![cfg(target_os = "linux")]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bridge::defaults;

use common::{
    EXTERNAL, GATEWAY, GUEST_DEV, HOST_SERVER, HOST_TUN, Lab, Lease, Ns, SERVER, helper, require,
    rx_packets, sha256, wait_file_contains,
};

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn dhcp_lease_with_busybox_udhcpc() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let mut lab = Lab::start("e2e-udhcpc", &[]);
    assert_eq!(lab.attach().gateway, GATEWAY);
    assert_eq!(lab.attach().external, EXTERNAL);
    assert!(
        lab.ns(Ns::H).has_link(&lab.attach().tun).expect("ip link"),
        "the TUN {} is not in the host namespace",
        lab.attach().tun
    );
    let lease = lab.udhcpc();
    check_lease(&lease, 1500);
    let addrs = lab.ok(Ns::G, 5, &["ip", "-4", "addr", "show", "dev", GUEST_DEV]);
    assert!(addrs.contains(&format!("{}/24", lease.ip)), "{addrs}");
    let p = lab.ping(Ns::G, GATEWAY, 3);
    assert_eq!(
        (p.transmitted, p.received),
        (3, 3),
        "ping gateway after udhcpc"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn dhcp_lease_with_isc_dhclient_and_mtu_option() {
    require(&[("dhclient", "isc-dhcp-client"), ("ping", "iputils-ping")]);
    let mut lab = Lab::start("e2e-dhclient", &["--mtu", "4000"]);
    let lease = lab.dhclient();
    check_lease(&lease, 4000);
    let p = lab.ping(Ns::G, GATEWAY, 3);
    assert_eq!(
        (p.transmitted, p.received),
        (3, 3),
        "ping gateway after dhclient"
    );
    // A frame bigger than 1500 but within the leased MTU, with DF set, to the gateway.
    let out = lab.ok(
        Ns::G,
        10,
        &[
            "ping",
            "-n",
            "-c",
            "2",
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            "3000",
            &GATEWAY.to_string(),
        ],
    );
    assert!(out.contains("2 received"), "{out}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ping_gateway_host_and_server() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let (lab, _lease) = Lab::with_lease("e2e-ping", &[]);
    let baseline = lab.ping(Ns::H, SERVER, 10);
    for (what, addr) in [
        ("gateway", GATEWAY),
        ("host", HOST_SERVER),
        ("server", SERVER),
    ] {
        let p = lab.ping(Ns::G, addr, 10);
        eprintln!(
            "ping {what} {addr}: {}/{} avg {:.3} ms (host->server baseline {:.3} ms)",
            p.received, p.transmitted, p.avg_ms, baseline.avg_ms
        );
        assert_eq!((p.transmitted, p.received), (10, 10), "ping {what} {addr}");
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn http_download_100mb_sha256() {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-get", &[]);
    let src = lab.random_file("blob", HUNDRED_MB);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let url = format!("http://{SERVER}:8080/blob");
    let want = sha256(&src);
    // Baseline: the same download straight from the host namespace (veth only).
    let base = lab.dir.join("base.bin");
    let base_s = curl(&lab, Ns::H, &["-o", base.to_str().expect("utf-8"), &url]);
    assert_eq!(sha256(&base), want);
    let _ = std::fs::remove_file(&base);
    let down = lab.dir.join("down.bin");
    let t = curl(&lab, Ns::G, &["-o", down.to_str().expect("utf-8"), &url]);
    assert_eq!(
        std::fs::metadata(&down).expect("downloaded").len(),
        HUNDRED_MB
    );
    assert_eq!(sha256(&down), want, "downloaded bytes differ");
    eprintln!(
        "GET 100 MiB: guest {t:.2} s ({:.0} Mbit/s), host baseline {base_s:.2} s ({:.0} Mbit/s), \
         guest/baseline time ratio {:.1}",
        mbit(t),
        mbit(base_s),
        t / base_s
    );
    assert!(lab.attach_alive(), "attach died during the download");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn http_upload_100mb_sha256() {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-put", &[]);
    let src = lab.random_file("blob", HUNDRED_MB);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let want = sha256(&src);
    let src_s = src.to_str().expect("utf-8");
    let base_s = curl(
        &lab,
        Ns::H,
        &["-T", src_s, &format!("http://{SERVER}:8080/base-up.bin")],
    );
    assert_eq!(sha256(&lab.dir.join("base-up.bin")), want);
    let _ = std::fs::remove_file(lab.dir.join("base-up.bin"));
    let t = curl(
        &lab,
        Ns::G,
        &["-T", src_s, &format!("http://{SERVER}:8080/up.bin")],
    );
    assert_eq!(
        sha256(&lab.dir.join("up.bin")),
        want,
        "uploaded bytes differ"
    );
    eprintln!(
        "PUT 100 MiB: guest {t:.2} s ({:.0} Mbit/s), host baseline {base_s:.2} s ({:.0} Mbit/s), \
         guest/baseline time ratio {:.1}",
        mbit(t),
        mbit(base_s),
        t / base_s
    );
    assert!(lab.attach_alive(), "attach died during the upload");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn udp_dns_query_through_gateway_forwarder() {
    require(&[
        ("busybox", "busybox"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
    ]);
    let (mut lab, lease) = Lab::with_lease("e2e-dns", &[]);
    let log = lab.start_dnsmasq();
    assert!(lease.dns.contains(&GATEWAY), "lease DNS {:?}", lease.dns);
    let resolver = lease.dns.first().copied().unwrap_or(GATEWAY);
    for name in ["www.e2e.test", "other.e2e.test"] {
        resolve_through_gateway(&lab, resolver, name);
    }
    let text = wait_file_contains(&log, "www.e2e.test", 5);
    assert!(
        text.contains(&format!("query[A] www.e2e.test from {EXTERNAL}")),
        "the query did not reach the server from the NAT external address:\n{text}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn dns_upstream_defaults_to_the_host_namespace_resolv_conf() {
    require(&[
        ("busybox", "busybox"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
    ]);
    // No --dns-upstream: attach must take the first nameserver of /etc/netns/<H>/resolv.conf.
    let mut lab = Lab::start_with(
        "e2e-dnsdef",
        &[],
        Some(
            "# written by the hostnet e2e test\nsearch e2e.test\nnameserver 198.18.0.2\nnameserver 198.18.0.99\n",
        ),
    );
    let _lease = lab.udhcpc();
    let log = lab.start_dnsmasq();
    resolve_through_gateway(&lab, GATEWAY, "default.e2e.test");
    let text = wait_file_contains(&log, "default.e2e.test", 5);
    assert!(text.contains(&format!("from {EXTERNAL}")), "{text}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn port_forward_shows_the_real_client_address_to_the_guest() {
    require(&[("busybox", "busybox")]);
    let (mut lab, lease) = Lab::with_lease(
        "e2e-fwd",
        &["--forward", "tcp:8080:8000", "--forward", "udp:8053:8000"],
    );
    lab.spawn(
        Ns::G,
        &[helper(), "peer-serve", "0.0.0.0:8000"],
        Some("listening"),
    );
    for (proto, port) in [("tcp", 8080), ("udp", 8053)] {
        let out = lab.ok(
            Ns::S,
            15,
            &[
                helper(),
                "peer-ask",
                proto,
                &format!("{EXTERNAL}:{port}"),
                "5",
            ],
        );
        assert!(
            out.starts_with(&format!("peer={SERVER}:")),
            "{proto} forward to guest {}: the guest saw {out:?}, want peer={SERVER}:<port>",
            lease.ip
        );
    }
    // A port that is not forwarded does not connect.
    let out = lab.ok(
        Ns::S,
        10,
        &[helper(), "tcp-try", &format!("{EXTERNAL}:8081"), "1500"],
    );
    assert!(out.starts_with("failed"), "unforwarded port: {out}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ttl_expiring_at_host_router_returns_time_exceeded() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let (lab, _lease) = Lab::with_lease("e2e-ttl", &[]);
    let host_addrs = [HOST_TUN.to_string(), HOST_SERVER.to_string()];
    // ICMP echo with a small TTL: some hop in the host namespace must say "time exceeded".
    let mut outcomes = Vec::new();
    for ttl in 1..=3 {
        let o = lab.run(
            Ns::G,
            6,
            &[
                "ping",
                "-n",
                "-c",
                "1",
                "-W",
                "2",
                "-t",
                &ttl.to_string(),
                &SERVER.to_string(),
            ],
        );
        let text = String::from_utf8_lossy(&o.stdout).into_owned();
        let from = text.lines().find_map(|l| {
            let rest = l.strip_prefix("From ")?;
            l.contains("Time to live exceeded")
                .then(|| rest.split_whitespace().next().unwrap_or("").to_owned())
        });
        outcomes.push((ttl, from, text.contains("1 received")));
    }
    eprintln!("ttl outcomes (ttl, time-exceeded from, reached): {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|(_, from, _)| from.as_ref().is_some_and(|f| host_addrs.contains(f))),
        "no time-exceeded from the host namespace ({host_addrs:?}): {outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|o| o.2),
        "no TTL reached the server: {outcomes:?}"
    );
    // UDP traceroute: time-exceeded from the host, then port-unreachable from the server
    // (both ICMP errors carry an embedded UDP header the NAT must translate back).
    let out = lab.ok(
        Ns::G,
        30,
        &[
            "busybox",
            "traceroute",
            "-n",
            "-q",
            "1",
            "-w",
            "2",
            "-m",
            "4",
            &SERVER.to_string(),
        ],
    );
    eprintln!("traceroute:\n{out}");
    let hops: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(
        hops.iter().any(|h| host_addrs.iter().any(|a| a == h)),
        "traceroute never saw the host namespace: {out}"
    );
    assert_eq!(
        hops.last().copied(),
        Some(SERVER.to_string().as_str()),
        "{out}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn thousand_concurrent_tcp_connections() {
    require(&[("busybox", "busybox")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-1k", &[]);
    lab.spawn(
        Ns::S,
        &[helper(), "echo-serve", &format!("{SERVER}:9000")],
        Some("listening"),
    );
    let started = Instant::now();
    let out = lab.ok(
        Ns::G,
        120,
        &[
            "sh",
            "-c",
            &format!(
                "ulimit -n 8192 && exec {} conns {SERVER}:9000 1000 90",
                helper()
            ),
        ],
    );
    eprintln!(
        "1000 connections: {} in {:?}",
        out.trim(),
        started.elapsed()
    );
    assert!(out.starts_with("ok 1000 "), "{out}");
    assert!(lab.attach_alive(), "attach died");
    // The 1 000 connections close at once when the client exits (a burst of ~4 000 segments);
    // connectivity must stay, a ping lost inside that burst is reported, not fatal.
    let p = lab.ping(Ns::G, SERVER, 5);
    let tap = lab.ok(Ns::G, 5, &["ip", "-s", "link", "show", "dev", GUEST_DEV]);
    eprintln!("guest TAP counters after the burst:\n{tap}");
    let mut attach = lab.take_attach();
    let before = attach.stderr().len();
    let (status, _) = attach.terminate(Duration::from_secs(5));
    let stderr = attach.stderr();
    eprintln!(
        "after 1000 connections: ping {}/{}; attach {status:?}, stats:\n{}",
        p.received,
        p.transmitted,
        stderr.get(before..).unwrap_or("")
    );
    assert!(
        p.received >= 4,
        "guest lost connectivity after 1000 connections: {p:?}"
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "attach exit {status:?}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn unsolicited_inbound_packets_do_not_reach_the_guest() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    // One forward (external 7001 -> guest 7000) is the positive control: the listener and the
    // inbound path do work, so zero on the other ports means "dropped", not "never sent".
    let (mut lab, lease) = Lab::with_lease("e2e-unsol", &["--forward", "udp:7001:7000"]);
    // Let the host route the guest subnet into the TUN too, so the server can aim at the
    // guest's private address as well as at the NAT's external address.
    let tun = lab.attach().tun.clone();
    lab.ns(Ns::H)
        .add_route_dev(
            &format!("{}/{}", defaults::SUBNET, defaults::PREFIX_LEN),
            &tun,
        )
        .expect("route to guest subnet");
    let idx = lab.spawn_logged(Ns::G, "listen", &[helper(), "listen-count", "7000", "8"]);
    wait_file_contains(&lab.dir.join("listen.out"), "listening", 10);
    let rx_before = rx_packets(lab.ns(Ns::G), GUEST_DEV);
    let guest = lease.ip.to_string();
    for target in [EXTERNAL.to_string(), guest.clone()] {
        let out = lab.ok(
            Ns::S,
            10,
            &[helper(), "udp-spray", &format!("{target}:7000"), "50"],
        );
        assert!(out.contains("sent 50"), "{out}");
        let out = lab.ok(
            Ns::S,
            10,
            &[helper(), "tcp-try", &format!("{target}:7000"), "1000"],
        );
        assert!(
            out.starts_with("failed"),
            "unsolicited TCP to {target} connected: {out}"
        );
    }
    let _ = lab.run(
        Ns::S,
        6,
        &["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", &guest],
    );
    let rx_delta = rx_packets(lab.ns(Ns::G), GUEST_DEV) - rx_before;
    // The positive control: 50 datagrams to the forwarded port.
    let out = lab.ok(
        Ns::S,
        10,
        &[helper(), "udp-spray", &format!("{EXTERNAL}:7001"), "50"],
    );
    assert!(out.contains("sent 50"), "{out}");
    let status = lab
        .proc(idx)
        .wait_timeout(Duration::from_secs(15))
        .expect("wait listen-count");
    assert!(
        status.is_some_and(|s| s.success()),
        "listen-count: {status:?}"
    );
    let counts = std::fs::read_to_string(lab.dir.join("listen.out")).unwrap_or_default();
    eprintln!(
        "guest listener: {} guest eth0 rx delta during the unsolicited burst {rx_delta}",
        counts.trim()
    );
    let udp: u32 = counts
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("udp=")?.parse().ok())
        .unwrap_or(0);
    assert!(
        counts.contains("tcp=0 "),
        "unsolicited TCP reached the guest: {counts}"
    );
    assert!(
        (40..=50).contains(&udp),
        "want only the ~50 forwarded datagrams at the guest, got {udp}: {counts}"
    );
    // 100 UDP datagrams, 2 TCP connects (with retries) and 3 pings were sent; a few ARP or
    // DHCP frames from the gateway may arrive meanwhile, nothing more.
    assert!(
        rx_delta <= 4,
        "guest eth0 received {rx_delta} packets during the unsolicited burst"
    );
    // Outbound still works (and replies to it do reach the guest).
    let p = lab.ping(Ns::G, SERVER, 2);
    assert_eq!(p.received, 2);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn the_stats_line_names_the_nat_drop_reason() {
    nat_drop_reasons_by_name("e2e-natdrops1", "one");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn the_stats_line_names_the_nat_drop_reason_pipeline() {
    nat_drop_reasons_by_name("e2e-natdrops2", "pipeline");
}

/// 60 datagrams from the server to the NAT's external address on a port nobody mapped: the NAT
/// drops each as NoMapping, and the stats line (on SIGUSR1, then at shutdown) must say so by
/// name, beside the bridge's own NatInbound.
fn nat_drop_reasons_by_name(tag: &str, mode: &str) {
    let mut lab = Lab::start(tag, &["--threads", mode]);
    let out = lab.ok(
        Ns::S,
        10,
        &[helper(), "udp-spray", &format!("{EXTERNAL}:9999"), "60"],
    );
    assert!(out.contains("sent 60"), "{out}");
    // The datagrams cross H's routing and the TUN asynchronously: let them arrive.
    std::thread::sleep(Duration::from_millis(500));
    let mut attach = lab.take_attach();
    // SIGUSR1: the same line, now, and attach goes on.
    attach.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(3);
    while !attach.stderr().contains("nat.NoMapping=") {
        assert!(
            Instant::now() < deadline,
            "no stats line with nat.NoMapping within 3 s of SIGUSR1:\n{}",
            attach.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        attach.wait_exit(Duration::ZERO).is_none(),
        "SIGUSR1 stopped attach"
    );
    let (status, _) = attach.terminate(Duration::from_secs(5));
    let stderr = attach.stderr();
    assert!(
        status.is_some_and(|s| s.success()),
        "attach exit {status:?}\n{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("stats: bridge"))
        .collect();
    assert_eq!(
        lines.len(),
        2,
        "one line for SIGUSR1, one at shutdown:\n{stderr}"
    );
    let line = lines[1];
    eprintln!("{}\n{line}", lines[0]);
    assert!(lines[0].contains("nat.NoMapping=60"), "{}", lines[0]);
    let count = |name: &str| -> u64 {
        line.split([' ', ','])
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}=N in {line:?}"))
    };
    let no_mapping = count("nat.NoMapping");
    assert!(
        (60..=62).contains(&no_mapping),
        "want the 60 datagrams (and at most a stray one or two) as nat.NoMapping: {line}"
    );
    assert!(count("NatInbound") >= no_mapping, "{line}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_exits_with_an_error_when_its_tun_is_deleted() {
    tun_deleted_underneath("e2e-tungone1", "one");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn attach_exits_with_an_error_when_its_tun_is_deleted_pipeline() {
    tun_deleted_underneath("e2e-tungone2", "pipeline");
}

/// Starts attach with `--threads mode`, gets a lease, deletes the TUN in H and expects attach to
/// exit within 5 s with status 2 and an error line naming the TUN.
fn tun_deleted_underneath(tag: &str, mode: &str) {
    require(&[("busybox", "busybox")]);
    let (mut lab, _lease) = Lab::with_lease(tag, &["--threads", mode]);
    let tun = lab.attach().tun.clone();
    lab.ns(Ns::H)
        .ip(&["link", "del", &tun])
        .unwrap_or_else(|e| panic!("ip link del {tun}: {e}"));
    let t = Instant::now();
    let mut attach = lab.take_attach();
    let status = attach.wait_exit(Duration::from_secs(5));
    let took = t.elapsed();
    let stderr = attach.stderr();
    let Some(status) = status else {
        let _ = attach.terminate(Duration::from_secs(3));
        panic!(
            "attach --threads {mode} still runs 5 s after its TUN {tun} was deleted:\n{}",
            attach.stderr()
        );
    };
    eprintln!("attach --threads {mode} exited {status} {took:?} after the TUN went");
    assert_eq!(status.code(), Some(2), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.starts_with("hostnet-lab: error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    eprintln!("{error}");
    assert!(error.contains(&format!("TUN {tun} ")), "{error}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn guest_keeps_working_after_malformed_frames() {
    require(&[
        ("busybox", "busybox"),
        ("ping", "iputils-ping"),
        ("python3", "python3"),
    ]);
    let (mut lab, lease) = Lab::with_lease("e2e-junk", &[]);
    lab.spawn(
        Ns::S,
        &[helper(), "echo-serve", &format!("{SERVER}:9000")],
        Some("listening"),
    );
    let p = lab.ping(Ns::G, GATEWAY, 1);
    assert_eq!(p.received, 1);
    let neigh = lab.ok(Ns::G, 5, &["ip", "neigh", "show", &GATEWAY.to_string()]);
    let gw_mac = neigh
        .split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or_else(|| panic!("no gateway MAC in {neigh:?}"))
        .to_owned();
    let tap_tx_before = counter(&lab, Ns::G, "tx_packets");
    let out = lab.ok(
        Ns::G,
        60,
        &[
            "python3",
            MALFORMED_PY,
            "guest",
            GUEST_DEV,
            &gw_mac,
            "3000",
            &lease.ip.to_string(),
        ],
    );
    eprintln!("guest-side malformed frames: {}", out.trim());
    let sent: u32 = out
        .trim()
        .strip_prefix("sent=")
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    assert!(sent >= 2900, "too few frames left the guest: {out}");
    // The TAP handed them to the simulated guest (not dropped in the guest kernel's queue).
    let handed = counter(&lab, Ns::G, "tx_packets") - tap_tx_before;
    let tap_dropped = counter(&lab, Ns::G, "tx_dropped");
    eprintln!("guest TAP: {handed} frames handed to the simulated guest, {tap_dropped} dropped");
    assert!(
        handed >= u64::from(sent),
        "TAP passed on only {handed} of {sent} frames"
    );
    let out = lab.ok(
        Ns::S,
        60,
        &[
            "python3",
            MALFORMED_PY,
            "inbound",
            &EXTERNAL.to_string(),
            "2000",
        ],
    );
    eprintln!("inbound malformed packets: {}", out.trim());
    std::thread::sleep(Duration::from_millis(300));
    assert!(lab.attach_alive(), "attach died after malformed frames");
    for addr in [GATEWAY, SERVER] {
        let p = lab.ping(Ns::G, addr, 3);
        assert_eq!(p.received, 3, "ping {addr} after the burst");
    }
    let out = lab.ok(
        Ns::G,
        60,
        &[helper(), "conns", &format!("{SERVER}:9000"), "20", "30"],
    );
    assert!(out.starts_with("ok 20 "), "{out}");
    // And a fresh DHCP exchange still works.
    let again = lab.udhcpc();
    assert_eq!(again.ip, lease.ip, "the guest's lease changed");
    // What the bridge counted (informational: the stats format is not part of the contract).
    let mut attach = lab.take_attach();
    let before = attach.stderr().len();
    let (status, _) = attach.terminate(Duration::from_secs(5));
    eprintln!(
        "attach after the burst: {status:?}\n{}",
        attach.stderr().get(before..).unwrap_or("")
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "attach exit {status:?}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn sigterm_during_transfer_exits_cleanly() {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-term", &[]);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let curl_idx = lab.spawn_logged(
        Ns::G,
        "curl",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "--max-time",
            "60",
            "--limit-rate",
            "20M",
            &format!("http://{SERVER}:8080/gen/4000000000"),
        ],
    );
    let rx_before = rx_packets(lab.ns(Ns::G), GUEST_DEV);
    std::thread::sleep(Duration::from_millis(1500));
    let moving = rx_packets(lab.ns(Ns::G), GUEST_DEV) - rx_before;
    assert!(
        matches!(lab.proc(curl_idx).child_mut().try_wait(), Ok(None)),
        "curl ended early: {}",
        std::fs::read_to_string(lab.dir.join("curl.err")).unwrap_or_default()
    );
    assert!(
        moving > 100,
        "no transfer in flight ({moving} packets in 1.5 s)"
    );
    let tun = lab.attach().tun.clone();
    let mut attach = lab.take_attach();
    let stderr_before = attach.stderr().len();
    let (status, took) = attach.terminate(Duration::from_secs(5));
    let stdout = attach.stdout_lines();
    let stderr = attach.stderr();
    eprintln!(
        "SIGTERM mid-transfer: exit {status:?} after {took:?}; stdout after ready: {:?}; \
         stderr after SIGTERM:\n{}",
        &stdout[1.min(stdout.len())..],
        stderr.get(stderr_before..).unwrap_or("")
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "attach exit status {status:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "attach took {took:?} to exit (limit 2 s)"
    );
    assert!(
        !lab.ns(Ns::H).has_link(&tun).expect("ip"),
        "TUN {tun} survived shutdown"
    );
    assert!(
        !lab.ns(Ns::G).has_link(GUEST_DEV).expect("ip"),
        "TAP survived shutdown"
    );
    assert_eq!(
        stdout.len(),
        1,
        "stdout must hold exactly the ready line: {stdout:?}"
    );
    assert!(
        stderr.len() > stderr_before,
        "attach printed nothing (no stats) to stderr on shutdown"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn sigint_when_idle_exits_cleanly() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-int", &[]);
    let p = lab.ping(Ns::G, SERVER, 2);
    assert_eq!(p.received, 2);
    let tun = lab.attach().tun.clone();
    let mut attach = lab.take_attach();
    let (status, took) = attach.signal_and_wait("INT", Duration::from_secs(5));
    eprintln!("SIGINT: exit {status:?} after {took:?}");
    assert!(
        status.is_some_and(|s| s.success()),
        "attach exit status {status:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "attach took {took:?} to exit (limit 2 s)"
    );
    assert!(
        !lab.ns(Ns::H).has_link(&tun).expect("ip"),
        "TUN {tun} survived SIGINT"
    );
    assert!(
        !lab.ns(Ns::G).has_link(GUEST_DEV).expect("ip"),
        "TAP survived SIGINT"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn iperf3_tcp_throughput_both_directions() {
    require(&[("busybox", "busybox"), ("iperf3", "iperf3")]);
    let (mut lab, _lease) = Lab::with_lease("e2e-iperf", &[]);
    lab.spawn(
        Ns::S,
        &[
            "iperf3",
            "-s",
            "-B",
            &SERVER.to_string(),
            "-f",
            "m",
            "--forceflush",
        ],
        Some("Server listening"),
    );
    let iperf = |ns: Ns, reverse: bool| -> f64 {
        let server = SERVER.to_string();
        let mut argv = vec!["iperf3", "-c", &server, "-t", "2", "-f", "m"];
        if reverse {
            argv.push("-R");
        }
        let out = lab.ok(ns, 12, &argv);
        testbed::iperf3_receiver_mbits(&out)
            .unwrap_or_else(|| panic!("no receiver rate in iperf3 output:\n{out}"))
    };
    let base = iperf(Ns::H, false);
    let up = iperf(Ns::G, false);
    let down = iperf(Ns::G, true);
    eprintln!(
        "iperf3 TCP 2 s: guest->server {up:.0} Mbit/s, server->guest {down:.0} Mbit/s, \
         host->server baseline {base:.0} Mbit/s (ratios {:.3} / {:.3})",
        up / base,
        down / base
    );
    assert!(
        up > 10.0 && down > 10.0,
        "throughput collapsed: {up} / {down} Mbit/s"
    );
    assert!(lab.attach_alive(), "attach died under iperf3");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn offloads_carry_tso_super_frames_both_ways_100mb_sha256() {
    let (tx_gso, rx_gso, gathered, scattered, stderr) = transfer_100mb_both_ways("e2e-tso", &[]);
    assert!(
        stderr.contains("offloads=CSUM GUEST_CSUM HOST_TSO4 GUEST_TSO4"),
        "offloads not negotiated:\n{stderr}"
    );
    assert!(
        tx_gso > 0 && rx_gso > 0,
        "no TSO super-frames (tx_gso {tx_gso}, rx_gso {rx_gso}):\n{stderr}"
    );
    // The upload's super-frames left the TUN gathered from guest memory (head-only TX),
    // the download's were read into it (scattered RX).
    assert!(gathered > 0, "nothing gathered:\n{stderr}");
    assert!(scattered > 0, "nothing scattered:\n{stderr}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn no_offload_moves_100mb_both_ways_without_super_frames() {
    let (tx_gso, rx_gso, gathered, scattered, stderr) =
        transfer_100mb_both_ways("e2e-nooff", &["--no-offload"]);
    assert!(
        stderr.contains("offloads=none"),
        "offloads negotiated with --no-offload:\n{stderr}"
    );
    // Frames of MTU 1500 are all copied.
    assert_eq!(
        (tx_gso, rx_gso, gathered, scattered),
        (0, 0, 0, 0),
        "{stderr}"
    );
}

/// The `--threads` mode that is not the default: every other test runs the default.
const OTHER_THREADS: &str = "pipeline";

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn other_threads_mode_moves_100mb_both_ways_with_super_frames() {
    let (tx_gso, rx_gso, gathered, scattered, stderr) =
        transfer_100mb_both_ways("e2e-thr", &["--threads", OTHER_THREADS]);
    assert!(
        stderr.contains(&format!("threads={}", threads_debug(OTHER_THREADS))),
        "not started in the other mode:\n{stderr}"
    );
    assert!(
        tx_gso > 0 && rx_gso > 0,
        "no TSO super-frames (tx_gso {tx_gso}, rx_gso {rx_gso}):\n{stderr}"
    );
    // The pipeline's threads gather and scatter too (the link's I/O passed to them at
    // activation).
    assert!(gathered > 0, "nothing gathered:\n{stderr}");
    assert!(scattered > 0, "nothing scattered:\n{stderr}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn other_threads_mode_without_offloads_moves_100mb_both_ways() {
    let (tx_gso, rx_gso, _, _, stderr) = transfer_100mb_both_ways(
        "e2e-thrnooff",
        &["--threads", OTHER_THREADS, "--no-offload"],
    );
    assert!(stderr.contains("offloads=none"), "{stderr}");
    assert_eq!((tx_gso, rx_gso), (0, 0), "{stderr}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn other_threads_mode_pings_and_resolves() {
    require(&[
        ("busybox", "busybox"),
        ("ping", "iputils-ping"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
    ]);
    let (mut lab, lease) = Lab::with_lease("e2e-thrnet", &["--threads", OTHER_THREADS]);
    for (what, addr) in [
        ("gateway", GATEWAY),
        ("host", HOST_SERVER),
        ("server", SERVER),
    ] {
        let p = lab.ping(Ns::G, addr, 10);
        eprintln!(
            "--threads {OTHER_THREADS}: ping {what} {addr}: {}/{} avg {:.3} ms",
            p.received, p.transmitted, p.avg_ms
        );
        assert_eq!((p.transmitted, p.received), (10, 10), "ping {what} {addr}");
    }
    let log = lab.start_dnsmasq();
    let resolver = lease.dns.first().copied().unwrap_or(GATEWAY);
    resolve_through_gateway(&lab, resolver, "www.e2e.test");
    let text = wait_file_contains(&log, "www.e2e.test", 5);
    assert!(
        text.contains(&format!("query[A] www.e2e.test from {EXTERNAL}")),
        "{text}"
    );
}

/// How attach logs a `--threads` value (`threads=One`).
fn threads_debug(mode: &str) -> &'static str {
    match mode {
        "one" => "One",
        _ => "Pipeline",
    }
}

/// Uploads and downloads 100 MiB between guest and server through attach (started with
/// `extra`), checks both sha256, stops attach and returns the bridge's `tx_gso` and `rx_gso`
/// from its shutdown stats line, and attach's whole stderr.
fn transfer_100mb_both_ways(tag: &str, extra: &[&str]) -> (u64, u64, u64, u64, String) {
    require(&[("busybox", "busybox"), ("curl", "curl")]);
    let (mut lab, _lease) = Lab::with_lease(tag, extra);
    let src = lab.random_file("blob", HUNDRED_MB);
    lab.serve_dir(&format!("{SERVER}:8080"));
    let want = sha256(&src);
    let up = curl(
        &lab,
        Ns::G,
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
        Ns::G,
        &[
            "-o",
            down_path.to_str().expect("utf-8"),
            &format!("http://{SERVER}:8080/blob"),
        ],
    );
    assert_eq!(sha256(&down_path), want, "downloaded bytes differ");
    eprintln!(
        "{tag} {extra:?}: PUT 100 MiB {up:.2} s ({:.0} Mbit/s), GET {down:.2} s ({:.0} Mbit/s)",
        mbit(up),
        mbit(down)
    );
    let (line, stderr) = lab.take_attach().stop_for_stats_line();
    let field = |name: &str| -> u64 {
        line.split(", ")
            .find_map(|f| f.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {line:?}"))
    };
    (
        field("tx_gso"),
        field("rx_gso"),
        field("tx_gathered"),
        field("rx_scattered"),
        stderr,
    )
}

/// dig (UDP) in the guest asks `resolver` for `name` and must get dnsmasq's answer.
fn resolve_through_gateway(lab: &Lab, resolver: Ipv4Addr, name: &str) {
    let out = lab.ok(
        Ns::G,
        15,
        &[
            "dig",
            &format!("@{resolver}"),
            "+notcp",
            "+time=2",
            "+tries=2",
            name,
            "A",
        ],
    );
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(
        out.contains("198.18.7.7"),
        "answer for {name} missing: {out}"
    );
    assert!(
        out.contains(&format!("SERVER: {resolver}#53(")),
        "answered by whom? {out}"
    );
}

/// A counter of the guest TAP (`/sys/class/net/eth0/statistics/<name>`) in `ns`.
fn counter(lab: &Lab, ns: Ns, name: &str) -> u64 {
    let out = lab.ok(
        ns,
        5,
        &[
            "cat",
            &format!("/sys/class/net/{GUEST_DEV}/statistics/{name}"),
        ],
    );
    out.trim().parse().expect("a counter is a number")
}

fn check_lease(lease: &Lease, mtu: u32) {
    assert!(
        (defaults::DHCP_POOL_FIRST..=defaults::DHCP_POOL_LAST).contains(&lease.ip),
        "lease {} outside the pool {}-{}",
        lease.ip,
        defaults::DHCP_POOL_FIRST,
        defaults::DHCP_POOL_LAST
    );
    assert_eq!(lease.mask, Ipv4Addr::new(255, 255, 255, 0));
    assert_eq!(lease.routers, vec![GATEWAY]);
    assert!(lease.dns.contains(&GATEWAY), "DNS option {:?}", lease.dns);
    assert_eq!(
        lease.lease_secs.map(u64::from),
        Some(defaults::LEASE_TIME.as_secs())
    );
    assert_eq!(lease.server_id, Some(GATEWAY));
    assert_eq!(lease.mtu, Some(mtu), "MTU option");
}

/// Runs curl in `ns` (failing on HTTP errors) and returns the transfer time in seconds.
fn curl(lab: &Lab, ns: Ns, args: &[&str]) -> f64 {
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
    let out = lab.ok(ns, 130, &argv);
    out.lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no time_total in curl output {out:?}"))
}

fn mbit(secs: f64) -> f64 {
    HUNDRED_MB as f64 * 8.0 / secs / 1e6
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;
const MALFORMED_PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/malformed.py");
