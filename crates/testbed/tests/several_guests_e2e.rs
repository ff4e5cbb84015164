//! Several guests on one network (issue 14): `hostnet-lab attach` with `--guest-netns` three
//! times: one NAT, one TUN, a port per guest namespace. Each guest gets its own lease (.2, .3,
//! .4 for MACs :56, :57, :58, in the order given); guests ping each other both ways and move
//! 100 MiB over TCP to each other (sha256), switched by the bridge (never through the NAT or
//! the TUN: the TUN's counters do not move); all three fetch from the server at once with
//! integrity; a guest spoofing another's address reaches no one. Over IPv6 (SLAAC in
//! fd64::/64) the guests reach each other and the server, Neighbor Solicitations for another
//! guest are answered with its MAC, and another guest's address is refused as a source.
//!
//! Needs root: `cargo test -p testbed --test several_guests_e2e -- --include-ignored`.
//! Programs: iproute2, busybox (udhcpc), iputils-ping, curl.

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{GUEST_DEV, Lab, Lease, Ns, SERVER, SERVER6, helper, require, rx_packets, sha256};
use testbed::netns::Netns;

/// A lab with three guest namespaces on one attach; their leases in order.
fn three_guests(tag: &str) -> (Lab, Netns, Netns, [Lease; 3]) {
    three_guests_with(tag, &[])
}

/// As [`three_guests`], with more `attach` arguments.
fn three_guests_with(tag: &str, extra: &[&str]) -> (Lab, Netns, Netns, [Lease; 3]) {
    let mut lab = Lab::start_without_attach(tag);
    let g2 = Netns::new(&format!("{tag}-g2")).expect("second guest namespace");
    let g3 = Netns::new(&format!("{tag}-g3")).expect("third guest namespace");
    let server = SERVER.to_string();
    let attach = lab.spawn_attach(
        &[],
        &[
            "--guest-netns",
            g2.name(),
            "--guest-netns",
            g3.name(),
            "--dns-upstream",
            &server,
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect::<Vec<_>>(),
    );
    lab.set_attach(attach);
    let l1 = lab.udhcpc();
    let l2 = lab.udhcpc_in(&g2);
    let l3 = lab.udhcpc_in(&g3);
    (lab, g2, g3, [l1, l2, l3])
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn three_guests_get_their_own_leases_and_reach_each_other_and_the_server() {
    three_guests_reach_each_other("sev", &[]);
}

/// The same with a thread per guest (`--threads pairs`: each port's `bridge::PairWorker` on a
/// thread of its own, the network behind a lock taken per batch).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn three_guests_on_threads_of_their_own_reach_each_other_and_the_server() {
    three_guests_reach_each_other("sevt", &["--threads", "pairs"]);
}

/// The same with two queue pairs per guest, each pair on a thread of its own: a port's inbox
/// is its pair 0's, so guest-to-guest TCP keeps its order (delivered by whichever pair came
/// first, a flow's segments took both RX queues: with two guests the sender saw 23-59
/// reorderings per 4 s of iperf3 with 4 streams by hand; this test's one-stream transfers
/// did not show them, hostnetd's `several_guests` test with 4 streams does).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn three_guests_of_two_queue_pairs_on_threads_of_their_own_reach_each_other_in_order() {
    three_guests_reach_each_other("sevq", &["--threads", "pairs", "--queues", "2"]);
}

/// Distinct leases and MACs, pings between every two, 100 MiB each way between two guests
/// with sha256 (not through the TUN, none of its segments reordered), all three fetching from
/// the server at once.
fn three_guests_reach_each_other(tag: &str, extra: &[&str]) {
    require(&[
        ("busybox", "busybox"),
        ("ping", "iputils-ping"),
        ("curl", "curl"),
    ]);
    let (mut lab, g2, g3, leases) = three_guests_with(tag, extra);
    let addrs: Vec<Ipv4Addr> = leases.iter().map(|l| l.ip).collect();
    assert_eq!(
        addrs,
        ["192.168.64.2", "192.168.64.3", "192.168.64.4"]
            .map(|a| a.parse::<Ipv4Addr>().expect("addr")),
        "leases in the order the namespaces were given"
    );
    let macs: Vec<String> = [lab.ns(Ns::G), &g2, &g3]
        .iter()
        .map(|ns| mac_of(ns))
        .collect();
    assert_eq!(
        macs,
        [
            "52:54:00:12:34:56",
            "52:54:00:12:34:57",
            "52:54:00:12:34:58"
        ]
    );

    // Guest to guest, every pair both ways; nothing of it crosses the TUN.
    let tun = lab.attach().tun.clone();
    let tun_before = rx_packets(lab.ns(Ns::H), &tun);
    let spaces = [lab.ns(Ns::G), &g2, &g3];
    for (i, from) in spaces.iter().enumerate() {
        for (j, to) in addrs.iter().enumerate() {
            if i != j {
                let out = ping(from, *to, 3);
                assert!(out.contains("3 received"), "{} -> {to}: {out}", from.name());
            }
        }
    }
    // ARP for another guest was answered with that guest's MAC.
    let neigh = g2
        .ip(&["neigh", "show", "dev", GUEST_DEV, &addrs[2].to_string()])
        .expect("ip neigh");
    assert!(neigh.contains("52:54:00:12:34:58"), "{neigh}");
    let tun_after = rx_packets(lab.ns(Ns::H), &tun);
    assert!(
        tun_after - tun_before < 6,
        "guest-to-guest pings went through the TUN ({tun_before} -> {tun_after} packets)"
    );

    // 100 MiB from guest 1's HTTP server to guest 3 and from guest 3 up to guest 1.
    let reordered_before = reordered(lab.ns(Ns::G)) + reordered(&g3);
    let src = lab.random_file("blob", HUNDRED_MB);
    let dir = lab.dir.to_str().expect("utf-8").to_owned();
    lab.spawn(
        Ns::G,
        &[helper(), "http-serve", &format!("{}:8080", addrs[0]), &dir],
        Some("listening"),
    );
    let want = sha256(&src);
    let down = lab.dir.join("g3-down.bin");
    curl(
        &g3,
        &[
            "-o",
            down.to_str().expect("utf-8"),
            &format!("http://{}:8080/blob", addrs[0]),
        ],
    );
    assert_eq!(sha256(&down), want, "guest 1 -> guest 3: bytes differ");
    std::fs::remove_file(&down).expect("rm");
    curl(
        &g3,
        &[
            "-T",
            src.to_str().expect("utf-8"),
            &format!("http://{}:8080/g3-up.bin", addrs[0]),
        ],
    );
    let up = lab.dir.join("g3-up.bin");
    assert_eq!(sha256(&up), want, "guest 3 -> guest 1: bytes differ");
    std::fs::remove_file(&up).expect("rm");
    let reordered = reordered(lab.ns(Ns::G)) + reordered(&g3) - reordered_before;
    assert_eq!(reordered, 0, "segments reordered between the guests");
    let tun_after = rx_packets(lab.ns(Ns::H), &tun);
    assert!(
        tun_after - tun_before < 1000,
        "guest-to-guest TCP went through the TUN ({tun_before} -> {tun_after} packets)"
    );

    // All three fetch from the server at once.
    lab.serve_dir(&format!("{SERVER}:8081"));
    let url = format!("http://{SERVER}:8081/blob");
    let outs: Vec<_> = [lab.ns(Ns::G), &g2, &g3]
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let path = lab.dir.join(format!("fetch-{i}.bin"));
            let child = ns
                .command("timeout")
                .args(["-k", "2", "120", "curl", "-sS", "-f", "-o"])
                .arg(&path)
                .arg(&url)
                .stdin(Stdio::null())
                .spawn()
                .expect("curl");
            (path, child)
        })
        .collect();
    for (path, mut child) in outs {
        let status = child.wait().expect("curl");
        assert!(status.success(), "{}: {status}", path.display());
        assert_eq!(sha256(&path), want, "{}: bytes differ", path.display());
    }
    assert!(lab.attach_alive(), "attach died");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_guest_spoofing_another_guests_address_or_mac_reaches_no_one() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let (lab, g2, g3, leases) = three_guests("sevspf");
    let (a2, a3) = (leases[1].ip, leases[2].ip);
    // Guest 1 takes guest 2's address: its pings to guest 3 and to the server go nowhere.
    let g = lab.ns(Ns::G);
    g.ip(&["addr", "flush", "dev", GUEST_DEV]).expect("flush");
    g.ip(&["addr", "add", &format!("{a2}/24"), "dev", GUEST_DEV])
        .expect("addr add");
    g.ip(&["route", "replace", "default", "via", "192.168.64.1"])
        .expect("route");
    let out = ping(g, a3, 3);
    assert!(
        out.contains(" 0 received"),
        "spoofed source reached guest 3: {out}"
    );
    let out = ping(g, SERVER, 2);
    assert!(
        out.contains(" 0 received"),
        "spoofed source reached the server: {out}"
    );
    // Guest 1 takes guest 2's MAC as well: still nothing, and guest 2 is not disturbed.
    g.ip(&[
        "link",
        "set",
        "dev",
        GUEST_DEV,
        "address",
        "52:54:00:12:34:57",
    ])
    .expect("mac");
    let out = ping(g, a3, 3);
    assert!(
        out.contains(" 0 received"),
        "spoofed MAC reached guest 3: {out}"
    );
    let out = ping(&g2, a3, 3);
    assert!(out.contains("3 received"), "guest 2 lost its path: {out}");
    let out = ping(&g3, a2, 3);
    assert!(
        out.contains("3 received"),
        "guest 3 reached the spoofer: {out}"
    );
    drop(g3);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn three_guests_reach_each_other_and_the_server_over_ipv6() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let (lab, g2, g3, _) = three_guests("sev6");
    let spaces = [lab.ns(Ns::G), &g2, &g3];
    let addrs: Vec<Ipv6Addr> = spaces.iter().map(|ns| slaac(ns)).collect();
    // Each guest has used its address once (to the gateway): the switch has learned it.
    for (ns, a) in spaces.iter().zip(&addrs) {
        let out = ping(ns, "fd64::1".parse::<Ipv6Addr>().expect("addr"), 1);
        assert!(
            out.contains("1 received"),
            "{} ({a}) -> fd64::1: {out}",
            ns.name()
        );
    }
    for (i, from) in spaces.iter().enumerate() {
        for (j, to) in addrs.iter().enumerate() {
            if i != j {
                let out = ping(from, *to, 3);
                assert!(out.contains("3 received"), "{} -> {to}: {out}", from.name());
            }
        }
        let out = ping(from, SERVER6, 2);
        assert!(
            out.contains("2 received"),
            "{} -> {SERVER6}: {out}",
            from.name()
        );
    }
    // Neighbor Discovery for another guest was answered with that guest's MAC.
    let neigh = g2
        .ip(&[
            "-6",
            "neigh",
            "show",
            "dev",
            GUEST_DEV,
            &addrs[2].to_string(),
        ])
        .expect("ip neigh");
    assert!(neigh.contains("52:54:00:12:34:58"), "{neigh}");
    // Guest 1 takes guest 2's address (next to its own): from it, it reaches no one.
    let g = lab.ns(Ns::G);
    g.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", addrs[1]),
        "dev",
        GUEST_DEV,
        "nodad",
    ])
    .expect("addr add");
    let from = addrs[1].to_string();
    for to in [addrs[2], SERVER6] {
        let out = g
            .command("ping")
            .args([
                "-6",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "1",
                "-I",
                &from,
                &to.to_string(),
            ])
            .stdin(Stdio::null())
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(" 0 received"),
            "spoofed {from} reached {to}: {text}"
        );
    }
    let out = ping(&g2, addrs[2], 2);
    assert!(out.contains("2 received"), "guest 2 lost its path: {out}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_flooding_guest_leaves_the_others_their_throughput_and_new_connections() {
    flood_leaves_a_share("sevfld", &[]);
}

/// The same with a thread per guest (`--threads pairs`): the flooder's thread takes the
/// network's lock once per batch, the others' threads in between.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_flooding_guest_on_its_own_thread_leaves_the_others_their_throughput() {
    flood_leaves_a_share("sevfldt", &["--threads", "pairs"]);
}

/// Guest 1 floods UDP with a new flow per datagram; guest 2 keeps a third of its TCP alone
/// and guest 3's new connections work.
fn flood_leaves_a_share(tag: &str, extra: &[&str]) {
    require(&[("busybox", "busybox"), ("iperf3", "iperf3")]);
    let (mut lab, g2, g3, _) = three_guests_with(tag, extra);
    let server = SERVER.to_string();
    lab.spawn(
        Ns::S,
        &["iperf3", "-s", "-B", &server, "-f", "m", "--forceflush"],
        Some("Server listening"),
    );
    lab.spawn(
        Ns::S,
        &[helper(), "echo-serve", &format!("{server}:7000")],
        Some("listening"),
    );
    // Guest 2 alone, then while guest 1 floods: UDP as fast as it can, a new flow per
    // datagram (on a quiet machine the NAT's per-guest cap is reached within a second, and
    // it refuses the rest, each refusal answered at a bounded rate). Up to three rounds (the
    // machine may be busy): one that keeps a third passes. What is tested is the bridge's
    // share: bounded work per port per wake-up, the NAT's per-guest cap, and attach's thread
    // visiting each guest's driver in turn (at most one TX batch per visit; before that
    // bound the flooding guest's driver kept the thread and the other guest's TCP fell from
    // 15-16 Gbit/s to 0.5-2.8). The flooder runs at nice 19: a VM floods from its own
    // vCPUs, while here it shares two CPUs with the other guest's iperf3 (at nice 0 guest 2
    // kept 0.32-0.35 on an idle machine, at nice 19 0.37-0.64).
    let mut rounds = Vec::new();
    for _ in 0..3 {
        let alone = iperf(&g2, &server);
        let flood = lab
            .ns(Ns::G)
            .command("timeout")
            .args([
                "-k",
                "2",
                "20",
                "nice",
                "-n",
                "19",
                helper(),
                "udp-flows",
                &format!("{server}:9"),
                "6",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("udp-flows");
        std::thread::sleep(Duration::from_secs(1));
        let flooded = iperf(&g2, &server);
        // Guest 3's new connections work during the flood.
        let conns = g3
            .command("timeout")
            .args([
                "-k",
                "2",
                "15",
                helper(),
                "conns",
                &format!("{server}:7000"),
                "20",
                "10",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("conns");
        let out = flood.wait_with_output().expect("udp-flows");
        let sent = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "guest 2 alone {alone:.0} Mbit/s, while guest 1 floods ({}) {flooded:.0} Mbit/s",
            sent.trim()
        );
        assert!(
            conns.status.success(),
            "guest 3's connections failed: {conns:?}"
        );
        rounds.push((alone, flooded));
        if flooded * 3.0 >= alone {
            break;
        }
    }
    assert!(lab.attach_alive(), "attach died");
    // On a busy machine the nice-19 flooder may not have reached the cap (65 536 flows) in
    // its rounds (seen once: 40 091 flows while a build took both CPUs): flood on, at nice 0
    // and bounded, until the NAT refused some.
    for _ in 0..4 {
        if lab
            .stats_line_now("stats: bridge")
            .contains("nat.HostLimit=")
        {
            break;
        }
        let out = lab
            .ns(Ns::G)
            .command("timeout")
            .args(["-k", "2", "20", helper(), "udp-flows"])
            .arg(format!("{server}:9"))
            .arg("6")
            .stdin(Stdio::null())
            .output()
            .expect("udp-flows");
        eprintln!(
            "topped up the flood: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    let (stats, _) = lab.take_attach().stop_for_stats_line();
    assert!(
        stats.contains("nat.HostLimit="),
        "the flood never reached the per-guest cap: {stats}"
    );
    assert!(
        rounds.iter().any(|&(a, f)| f * 3.0 >= a),
        "guest 2 kept less than a third of its throughput: {rounds:?}; {stats}"
    );
}

/// iperf3 TCP from `ns` to `server` for 2 s: the receiver's Mbit/s.
fn iperf(ns: &Netns, server: &str) -> f64 {
    let out = ns
        .command("timeout")
        .args([
            "-k", "2", "12", "iperf3", "-c", server, "-t", "2", "-f", "m",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("iperf3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    testbed::iperf3_receiver_mbits(&text).unwrap_or_else(|| {
        panic!(
            "no receiver rate in iperf3 output in {}:\n{text}",
            ns.name()
        )
    })
}

/// SLAAC in `ns` (as `Lab::slaac` does for G): its address in fd64::/64 once it is usable.
fn slaac(ns: &Netns) -> Ipv6Addr {
    for (key, value) in [
        ("disable_ipv6", "0"),
        ("accept_ra", "2"),
        ("autoconf", "1"),
        ("accept_dad", "1"),
    ] {
        let k = format!("net.ipv6.conf.{GUEST_DEV}.{key}={value}");
        let o = ns
            .command("sysctl")
            .args(["-q", "-w", &k])
            .output()
            .expect("sysctl");
        assert!(o.status.success(), "{k}: {o:?}");
    }
    ns.ip(&["link", "set", GUEST_DEV, "down"]).expect("down");
    ns.ip(&["link", "set", GUEST_DEV, "up"]).expect("up");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = ns
            .ip(&[
                "-6", "-o", "addr", "show", "dev", GUEST_DEV, "scope", "global",
            ])
            .unwrap_or_default();
        let route = ns.ip(&["-6", "route", "show"]).unwrap_or_default();
        if out.contains("inet6 fd64::")
            && !out.contains("tentative")
            && route.contains("default via fe80::1")
        {
            return out
                .split_whitespace()
                .skip_while(|w| *w != "inet6")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .expect("an inet6 address");
        }
        assert!(
            Instant::now() < deadline,
            "no SLAAC in {}: {out} {route}",
            ns.name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn port_forwards_name_their_guest_and_hairpin_between_guests() {
    require(&[("busybox", "busybox")]);
    let (mut lab, g2, g3, leases) = three_guests_with(
        "sevfwd",
        &[
            "--forward",
            "tcp:8080:192.168.64.3:80",
            "--forward",
            "udp:8081:192.168.64.4:81",
            "--forward",
            "tcp6:8082:192.168.64.3:82",
        ],
    );
    let external = lab.attach().external;
    let peer_serve = |ns: &Netns, addr: String| {
        let mut cmd = ns.command(helper());
        cmd.args(["peer-serve", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut p = testbed::netns::Process::spawn(&mut cmd).expect("peer-serve");
        let out = p.take_stdout().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).expect("line");
        assert!(line.starts_with("listening"), "{line}");
        p
    };
    let _s2 = peer_serve(&g2, format!("{}:80", leases[1].ip));
    let _s3 = peer_serve(&g3, format!("{}:81", leases[2].ip));
    // From the server: each forward reaches its own guest, which sees the real client.
    // Port 0: the IPv6 forward, on NAT66's external address.
    let ask = |ns: &Netns, proto: &str, port: u16| {
        let to = if port == 0 {
            "[fd64:ffff::2]:8082".to_owned()
        } else {
            format!("{external}:{port}")
        };
        let out = ns
            .command("timeout")
            .args(["-k", "2", "15", helper(), "peer-ask", proto])
            .arg(to)
            .arg("5")
            .stdin(Stdio::null())
            .output()
            .expect("peer-ask");
        assert!(
            out.status.success(),
            "{proto} {port} from {}: {out:?}",
            ns.name()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = ask(lab.ns(Ns::S), "tcp", 8080);
    assert!(out.contains(&format!("peer={SERVER}:")), "{out}");
    let out = ask(lab.ns(Ns::S), "udp", 8081);
    assert!(out.contains(&format!("peer={SERVER}:")), "{out}");
    // From guest 1 through the external address (hairpin): to guests 2 and 3.
    let out = ask(lab.ns(Ns::G), "tcp", 8080);
    assert!(out.contains(&format!("peer={external}:")), "{out}");
    let out = ask(lab.ns(Ns::G), "udp", 8081);
    assert!(out.contains(&format!("peer={external}:")), "{out}");
    // IPv6: the forward names guest 2 by its IPv4 address and goes to guest 2's IPv6
    // address, although guest 1's was learned after it (unnamed, the last learned has it).
    let _s6 = peer_serve(&g2, "[::]:82".to_owned());
    for ns in [&g2, lab.ns(Ns::G)] {
        let a = slaac(ns);
        let out = ping(ns, "fd64::1".parse::<Ipv6Addr>().expect("addr"), 1);
        assert!(out.contains("1 received"), "{} ({a}): {out}", ns.name());
    }
    let out = ask(lab.ns(Ns::S), "tcp", 0);
    assert!(out.contains("peer=[2001:db8::"), "{out}");
    assert!(lab.attach_alive(), "attach died");
    drop(lab.take_attach());
}

/// `ping` (IPv4 or IPv6 by `to`) from `ns`: its output.
fn ping(ns: &Netns, to: impl Into<IpAddr>, count: u32) -> String {
    let to: IpAddr = to.into();
    let family = if to.is_ipv6() { "-6" } else { "-4" };
    let out = ns
        .command("ping")
        .args([family, "-c", &count.to_string(), "-i", "0.2", "-W", "1"])
        .arg(to.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("ping");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl(ns: &Netns, args: &[&str]) {
    let out = ns
        .command("timeout")
        .args(["-k", "2", "120", "curl", "-sS", "-f"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl in {}: {out:?}", ns.name());
}

/// How often `ns`'s TCP saw a segment it sent (and did not resend) acknowledged after a later
/// one, so far: reordering on the way (a lost segment is resent first, a tail-loss probe is
/// not counted here).
fn reordered(ns: &Netns) -> u64 {
    let out = ns
        .exec(&["nstat", "-asz", "TcpExtTCPSACKReorder"])
        .expect("nstat");
    out.lines()
        .find_map(|l| l.strip_prefix("TcpExtTCPSACKReorder"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no TcpExtTCPSACKReorder in nstat's {out:?}"))
}

fn mac_of(ns: &Netns) -> String {
    let out = ns.ip(&["link", "show", "dev", GUEST_DEV]).expect("ip link");
    out.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;
