//! End-to-end: the guest side of IPv6 at the bridge's gateway (issue 13, first step), with
//! the guest namespace's own kernel as the IPv6 host and real clients.
//!
//! - The guest kernel (`accept_ra=2`, `autoconf=1` on the TAP, set inside the guest
//!   namespace only) gets a SLAAC address in `fd64::/64`, a default route via `fe80::1`, the
//!   MTU and the RDNSS from the gateway's Router Advertisement (answering the kernel's Router
//!   Solicitation when the link comes up).
//! - `ping -6` to `fd64::1` and to `fe80::1%eth0` is answered by the gateway (Neighbor
//!   Discovery for both addresses first).
//! - ISC `dhclient -6 -S` (stateless, Information-request) receives the DNS server
//!   `fd64::1`.
//! - A spoofed IPv6 source (an address outside `fd64::/64` added to the TAP) gets no answer
//!   and is counted (`SpoofedIpv6` on attach's stats line).
//! - IPv6 beyond the gateway goes through NAT66: a ping to `2001:db8::2` is answered (the
//!   NAT66 data path itself is `ipv6_nat_e2e`).
//!
//! With offloads (attach's default), the guest's DHCPv6 Information-request comes with a
//! partial UDP checksum: the bridge completes it before the gateway reads it.
//!
//! Needs root: `cargo test -p testbed --test ipv6_gateway_e2e -- --ignored`. Programs:
//! iproute2 (ip), procps (sysctl), iputils-ping, isc-dhcp-client (dhclient).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::fs;

use common::{GUEST_DEV, Lab, Ns, require};

/// The counter `name=N` on attach's stats line (0 when absent).
fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

/// Runs `ping -6` in the guest; returns (success, stdout).
fn ping6(lab: &Lab, args: &[&str]) -> (bool, String) {
    let mut argv = vec!["ping", "-6", "-n", "-i", "0.2", "-W", "2"];
    argv.extend_from_slice(args);
    let o = lab.run(Ns::G, 15, &argv);
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_guest_kernel_gets_slaac_a_default_route_dhcpv6_dns_and_pings_the_gateway() {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ping", "iputils-ping"),
        ("dhclient", "isc-dhcp-client"),
    ]);
    let mut lab = Lab::start("e2e-v6gw", &[]);
    let dev = GUEST_DEV;
    // The guest namespace's kernel acts as the IPv6 host (this namespace only).
    lab.slaac();
    let addrs = lab.ok(
        Ns::G,
        5,
        &["ip", "-6", "addr", "show", "dev", dev, "scope", "global"],
    );
    eprintln!("guest addresses:\n{addrs}");
    assert!(addrs.contains("/64"), "{addrs}");
    let routes = lab.wait_guest(10, &["ip", "-6", "route", "show"], |o| {
        o.contains("default via fe80::1")
    });
    eprintln!("guest routes:\n{routes}");
    assert!(
        routes.contains("fd64::/64"),
        "the prefix is on-link: {routes}"
    );
    let mtu = lab.ok(
        Ns::G,
        5,
        &["sysctl", "-n", &format!("net.ipv6.conf.{dev}.mtu")],
    );
    assert_eq!(mtu.trim(), "1500", "the RA's MTU option");

    // Echo to both gateway addresses (after Neighbor Discovery for each).
    let (ok, out) = ping6(&lab, &["-c", "3", "fd64::1"]);
    assert!(ok && out.contains("3 received"), "{out}");
    let (ok, out) = ping6(&lab, &["-c", "3", &format!("fe80::1%{dev}")]);
    assert!(ok && out.contains("3 received"), "{out}");
    let neigh = lab.ok(Ns::G, 5, &["ip", "-6", "neigh", "show", "dev", dev]);
    let gw_mac = bridge::defaults::GATEWAY_MAC.to_string();
    assert!(
        neigh.contains("fd64::1") && neigh.contains(&gw_mac) && neigh.contains("router"),
        "Neighbor Advertisement with the gateway's MAC and the router flag: {neigh}"
    );

    // Stateless DHCPv6 with ISC dhclient: the DNS server.
    let out = lab.dir.join("dhcp6.env");
    let script = lab.dir.join("dhclient6.sh");
    fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"reason=$reason dns=$new_dhcp6_name_servers\" >> {}\nexit 0\n",
            out.display()
        ),
    )
    .expect("dhclient script");
    let s = |p: &std::path::Path| p.to_str().expect("utf-8 path").to_owned();
    std::process::Command::new("chmod")
        .args(["755", &s(&script)])
        .status()
        .expect("chmod");
    let conf = lab.dir.join("dhclient6.conf");
    fs::write(&conf, "request dhcp6.name-servers;\n").expect("dhclient6.conf");
    let (conf, leases, pid, script_s) = (
        s(&conf),
        s(&lab.dir.join("dhclient6.leases")),
        s(&lab.dir.join("dhclient6.pid")),
        s(&script),
    );
    let o = lab.run(
        Ns::G,
        30,
        &[
            "dhclient", "-6", "-S", "-1", "-v", "-cf", &conf, "-lf", &leases, "-pf", &pid, "-sf",
            &script_s, dev,
        ],
    );
    let dhclient_log = String::from_utf8_lossy(&o.stderr).into_owned();
    let env = fs::read_to_string(&out).unwrap_or_default();
    eprintln!(
        "dhclient -6 -S: {}\n{dhclient_log}\nscript: {env}",
        o.status
    );
    // dhclient 4.4 names the information-request's answer RENEW6 (INFORM6 in other
    // versions). It daemonizes after its answer; stop it by its pid file.
    if let Ok(p) = fs::read_to_string(lab.dir.join("dhclient6.pid")) {
        let _ = std::process::Command::new("kill").arg(p.trim()).status();
    }
    assert!(
        env.lines().any(|l| l.ends_with("dns=fd64::1")),
        "dhclient -6 -S got no DNS server fd64::1: {env}\n{dhclient_log}"
    );

    // Beyond the gateway: NAT66 (before the spoofed address exists: it would be the source
    // the kernel picks for 2001:db8::2).
    let (ok, out) = ping6(&lab, &["-c", "3", "2001:db8::2"]);
    assert!(ok && out.contains("3 received"), "{out}");

    // A source outside the guest's prefixes: no answer, counted.
    lab.ok(
        Ns::G,
        5,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "2001:db8:99::99/64",
            "dev",
            dev,
            "nodad",
        ],
    );
    let (ok, out) = ping6(&lab, &["-c", "2", "-I", "2001:db8:99::99", "fd64::1"]);
    assert!(
        !ok && !out.contains(" 2 received"),
        "spoofed ping answered: {out}"
    );
    let (line, _) = lab.take_attach().stop_for_stats_line();
    assert!(
        counter(&line, "SpoofedIpv6") >= 1,
        "the spoofed source counted: {line}"
    );
    assert_eq!(
        counter(&line, "Ipv6NoRoute"),
        0,
        "IPv6 beyond the gateway is routed now: {line}"
    );
}
