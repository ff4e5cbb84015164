//! End-to-end: IPv6 Path MTU discovery through NAT66 (issue 13, "Path MTU"), with the guest
//! namespace's own kernel as the IPv6 host (SLAAC from the gateway) and real programs.
//!
//! The lab's host–server link (`srv0` in H, `eth0` in S) is narrowed to MTU 1400 on both ends;
//! the guest's MTU stays 1500. IPv6 routers don't fragment, so H's kernel answers a guest
//! packet of more than 1400 bytes with ICMPv6 Packet Too Big (to NAT66's external address),
//! which NAT66 must translate back to the guest (RFC 4443 3.2, RFC 8201).
//!
//! - `ping -6 -M do -s 1452` (1500 bytes on the wire) to `2001:db8::2`: ICMP has no MSS, so the
//!   only way the guest learns 1400 is the translated PTB: ping reports it, and the guest
//!   kernel's route to the server carries `mtu 1400` afterwards.
//! - An 8 MiB upload with `curl -6 -T` to the `hostnet-e2e` HTTP server in S, sha256 checked on
//!   the file the server wrote, with and without offloads. The server's route advertises MSS
//!   1440 (`advmss`), as a server behind a wider link would, so the guest's first full segments
//!   (1500 bytes; TSO super-packets with offloads on) do not fit the hop: the upload completes
//!   only through the translated PTBs, and the guest's route shows `mtu 1400` afterwards.
//!
//!
//! The other way, the bridge's own answers: H's TUN and the H–S link are raised to MTU 9000
//! while the guest stays at 1500, so S sends the guest packets the guest link cannot carry.
//! The bridge answers them as a router: ICMPv6 Packet Too Big (IPv6) or ICMP fragmentation
//! needed (IPv4 with DF), MTU 1500, from the gateway through the NAT, so S learns the path
//! MTU of NAT's external address.
//!
//! - `ping -6 -s 3000` from the guest: S's 3048-byte echo replies are too big for the guest;
//!   S learns `mtu 1500` towards `fd64:ffff::2` and fragments its later replies, which arrive.
//! - A 4 MiB `curl` download over IPv4 with the guest's route advertising MSS 8960
//!   (`advmss`): S's first segments are 9000 bytes with DF; S learns `mtu 1500` towards
//!   `100.64.0.2` and the download completes (sha256).
//!
//! - UDP: six 1452-byte datagrams from the guest; the first dies at the hop, the rest are
//!   fragmented by the guest kernel at 1400 and answered.
//!
//! Needs root: `cargo test -p testbed --test pmtu_e2e -- --ignored --test-threads=1`.
//! Programs: iproute2 (ip), procps (sysctl), iputils-ping, curl, coreutils (sha256sum).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use common::{EXTERNAL, GATEWAY, Lab, Ns, helper, require, sha256};
use testbed::netns::{HOST_SERVER_ADDR6, HOST_SERVER_DEV, SERVER_DEV};

const SERVER6: &str = "2001:db8::2";
/// The narrow hop between H and S.
const HOP_MTU: &str = "1400";

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ping_over_a_1400_hop_gets_the_translated_packet_too_big() {
    let lab = pmtu_lab("pmtu-ping", &[]);
    assert_guest_route_mtu(&lab, None);
    // One 1500-byte echo request with DF (IPv6 never fragments in routers anyway).
    let o = lab.run(
        Ns::G,
        15,
        &[
            "ping", "-6", "-n", "-M", "do", "-s", "1452", "-c", "2", "-i", "0.5", "-W", "2",
            SERVER6,
        ],
    );
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!("{out}");
    assert!(
        out.contains("mtu=1400") || out.contains("mtu: 1400") || out.contains("mtu 1400"),
        "ping never heard of the 1400 hop: {out}"
    );
    assert_guest_route_mtu(&lab, Some(HOP_MTU));
    // A ping that fits the hop still goes through.
    let o = lab.run(
        Ns::G,
        15,
        &[
            "ping", "-6", "-n", "-M", "do", "-s", "1352", "-c", "1", "-W", "2", SERVER6,
        ],
    );
    let small = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && small.contains("1 received"),
        "{small}"
    );
}

/// UDP: 1452-byte datagrams (1500 bytes on the wire) to S's peer-address server; the first
/// dies at the hop, the guest kernel learns 1400 from the translated PTB and fragments the
/// rest, which S answers.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn udp_over_a_1400_hop_gets_through_once_the_guest_learned_the_path_mtu() {
    require(&[("python3", "python3")]);
    let mut lab = pmtu_lab("pmtu-udp", &[]);
    lab.spawn(
        Ns::S,
        &[helper(), "peer-serve", &format!("[{SERVER6}]:7000")],
        Some("listening"),
    );
    assert_guest_route_mtu(&lab, None);
    let out = lab.ok(Ns::G, 20, &["python3", "-c", UDP_PROBE, SERVER6]);
    eprintln!("{out}");
    let answered: u32 = out
        .trim()
        .strip_prefix("answered=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not an answer count: {out:?}"));
    assert!(
        (1..6).contains(&answered),
        "answers to 6 datagrams (the first is lost at the hop): {out}"
    );
    assert_guest_route_mtu(&lab, Some(HOP_MTU));
}

/// Sends six 1452-byte UDP datagrams 300 ms apart to `[argv[1]]:7000`, then counts the
/// answers that arrive within 2 s.
const UDP_PROBE: &str = r#"
import socket, sys, time
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
for _ in range(6):
    s.sendto(b"x" * 1452, (sys.argv[1], 7000))
    time.sleep(0.3)
s.settimeout(2)
n = 0
try:
    while True:
        s.recvfrom(2048)
        n += 1
except socket.timeout:
    pass
print(f"answered={n}")
"#;

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn an_upload_over_a_1400_hop_completes() {
    upload_round("pmtu-up", &[]);
}

/// The same without offloads: the guest's own 1500-byte segments.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn an_upload_over_a_1400_hop_completes_without_offloads() {
    upload_round("pmtu-up-nooff", &["--no-offload"]);
}

fn upload_round(tag: &str, extra: &[&str]) {
    let mut lab = pmtu_lab(tag, extra);
    // The server advertises MSS 1440 (a wider link's), so only PTBs can shrink the guest's
    // segments.
    lab.ok(
        Ns::S,
        5,
        &[
            "ip",
            "-6",
            "route",
            "change",
            "default",
            "via",
            &HOST_SERVER_ADDR6.to_string(),
            "advmss",
            "1440",
        ],
    );
    assert_guest_route_mtu(&lab, None);
    lab.serve_dir(&format!("[{SERVER6}]:8080"));
    let src = lab.random_file("blob", 8 * 1024 * 1024);
    lab.ok(
        Ns::G,
        130,
        &[
            "curl",
            "-6",
            "-g",
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-T",
            src.to_str().expect("utf-8"),
            &format!("http://[{SERVER6}]:8080/up.bin"),
        ],
    );
    assert_eq!(
        sha256(&lab.dir.join("up.bin")),
        sha256(&src),
        "uploaded bytes differ"
    );
    assert_guest_route_mtu(&lab, Some(HOP_MTU));
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_reply_too_big_for_the_guest_gets_the_bridges_packet_too_big() {
    reply_too_big_round("pmtu-ptb6", &["--no-offload"]);
}

/// The same with attach's default offloads (the answers carry a virtio-net header to the
/// TUN).
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_reply_too_big_for_the_guest_gets_the_bridges_packet_too_big_with_offloads() {
    reply_too_big_round("pmtu-ptb6-off", &[]);
}

fn reply_too_big_round(tag: &str, extra: &[&str]) {
    let lab = wide_host_lab(tag, extra);
    let guest = lab.slaac();
    eprintln!("guest address {guest}");
    assert_server_route_mtu(&lab, "fd64:ffff::2", None);
    let o = lab.run(
        Ns::G,
        20,
        &[
            "ping", "-6", "-n", "-s", "3000", "-c", "4", "-i", "0.5", "-W", "2", SERVER6,
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    eprintln!("{out}");
    assert_server_route_mtu(&lab, "fd64:ffff::2", Some("1500"));
    let stats = common::parse_ping(&out);
    assert!(
        stats.received >= 1,
        "no reply came through after S learned the path MTU: {out}"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_download_with_segments_too_big_for_the_guest_completes_through_fragmentation_needed() {
    // Without offloads: with them, H's TUN hands the segments over as GSO super-packets the
    // guest takes whole, so nothing is too big (measured: rx_gso 72, no answer needed).
    let mut lab = wide_host_lab("pmtu-fn4", &["--no-offload"]);
    let lease = lab.udhcpc();
    eprintln!("lease {lease:?}");
    // The guest claims a 9000-byte path: S's segments come with DF at 9000 bytes.
    lab.ok(
        Ns::G,
        5,
        &[
            "ip",
            "route",
            "replace",
            "default",
            "via",
            &GATEWAY.to_string(),
            "dev",
            "eth0",
            "advmss",
            "8960",
        ],
    );
    let external = EXTERNAL.to_string();
    assert_server_route_mtu(&lab, &external, None);
    let server = common::SERVER;
    lab.serve_dir(&format!("{server}:8080"));
    let src = lab.random_file("blob4", 4 * 1024 * 1024);
    let down = lab.dir.join("down4.bin");
    lab.ok(
        Ns::G,
        130,
        &[
            "curl",
            "-4",
            "-sS",
            "--fail",
            "--max-time",
            "120",
            "-o",
            down.to_str().expect("utf-8"),
            &format!("http://{server}:8080/blob4"),
        ],
    );
    assert_eq!(sha256(&down), sha256(&src), "downloaded bytes differ");
    assert_server_route_mtu(&lab, &external, Some("1500"));
}

/// The lab with `extra` attach arguments and MTU 9000 on H's TUN and on the H–S link; the
/// guest keeps 1500.
fn wide_host_lab(tag: &str, extra: &[&str]) -> Lab {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ping", "iputils-ping"),
        ("curl", "curl"),
        ("sha256sum", "coreutils"),
    ]);
    let lab = Lab::start(tag, extra);
    let tun = lab.attach().tun.clone();
    for (ns, dev) in [
        (Ns::H, tun.as_str()),
        (Ns::H, HOST_SERVER_DEV),
        (Ns::S, SERVER_DEV),
    ] {
        lab.ok(ns, 5, &["ip", "link", "set", dev, "mtu", "9000"]);
    }
    lab
}

/// Asserts the server's route to `dst` has `mtu <want>` (a learned path MTU), or none.
fn assert_server_route_mtu(lab: &Lab, dst: &str, want: Option<&str>) {
    let route = lab.ok(Ns::S, 5, &["ip", "route", "get", dst]);
    match want {
        Some(mtu) => assert!(
            route.contains(&format!(" mtu {mtu}")),
            "S did not learn the path MTU {mtu} towards {dst}: {route}"
        ),
        None => assert!(!route.contains(" mtu "), "a path MTU already: {route}"),
    }
}

/// The lab with a SLAAC guest and the H–S link at MTU 1400 on both ends.
fn pmtu_lab(tag: &str, extra: &[&str]) -> Lab {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ping", "iputils-ping"),
        ("curl", "curl"),
        ("sha256sum", "coreutils"),
    ]);
    let lab = Lab::start(tag, extra);
    for (ns, dev) in [(Ns::H, HOST_SERVER_DEV), (Ns::S, SERVER_DEV)] {
        lab.ok(ns, 5, &["ip", "link", "set", dev, "mtu", HOP_MTU]);
    }
    let guest = lab.slaac();
    eprintln!("guest address {guest}");
    let link = lab.ok(Ns::G, 5, &["ip", "-o", "link", "show", "eth0"]);
    assert!(link.contains("mtu 1500"), "guest MTU: {link}");
    lab
}

/// Asserts the guest kernel's route to the server has `mtu <want>` (a learned path MTU), or
/// none when `want` is `None`.
fn assert_guest_route_mtu(lab: &Lab, want: Option<&str>) {
    let route = lab.ok(Ns::G, 5, &["ip", "-6", "route", "get", SERVER6]);
    match want {
        Some(mtu) => assert!(
            route.contains(&format!(" mtu {mtu}")),
            "the guest did not learn the path MTU {mtu}: {route}"
        ),
        None => assert!(!route.contains(" mtu "), "a path MTU already: {route}"),
    }
}
