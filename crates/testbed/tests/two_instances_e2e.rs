//! Two `hostnet-lab attach` in one host namespace (issue 12, item 4): the second picks the
//! next free address pair (100.64.0.3/100.64.0.4) and names it on its ready line; both guests
//! get leases and reach the server, each with its own external address and its own replies.
//! An explicit `--external-addr` the namespace already uses exits 2 with a clear message.
//!
//! Needs root: `cargo test -p testbed --test two_instances_e2e -- --include-ignored`.
//! Programs: iproute2, busybox (udhcpc), iputils-ping.

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{EXTERNAL, GUEST_DEV, Lab, Ns, SERVER, helper, hostnet_lab, require};
use testbed::netns::Netns;

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_attach_in_one_host_namespace_take_different_pairs_and_both_work() {
    require(&[("busybox", "busybox"), ("ping", "iputils-ping")]);
    let mut lab = Lab::start("two-att", &[]);
    assert_eq!(lab.attach().external, EXTERNAL);
    let g2 = Netns::new("two-att-g2").expect("second guest namespace");
    let dns = ["--dns-upstream", &SERVER.to_string()].map(str::to_owned);
    let dns: Vec<&str> = dns.iter().map(String::as_str).collect();
    let second = lab.spawn_attach_for(g2.name(), "attach2.err", &[], &dns);
    assert_eq!(
        second.external,
        Ipv4Addr::new(100, 64, 0, 4),
        "the second attach did not take the next pair"
    );
    assert_ne!(second.tun, lab.attach().tun);
    let log = second.stderr();
    assert!(
        log.lines().any(|l| l.contains("address pair")
            && l.contains("external=100.64.0.4")
            && l.contains("default_taken=100.64.0.1")),
        "{log}"
    );

    let lease1 = lab.udhcpc();
    let lease2 = lab.udhcpc_in(&g2);
    eprintln!("leases: {lease1:?} {lease2:?}");
    lab.spawn(
        Ns::S,
        &[helper(), "peer-serve", "0.0.0.0:8000"],
        Some("listening"),
    );
    let target = format!("{SERVER}:8000");
    // Each guest's connection reaches the server from its own external address, and the
    // answer comes back to that guest.
    let ask = |ns: &Netns| {
        let out = ns
            .command("timeout")
            .args(["-k", "2", "15", helper(), "peer-ask", "tcp", &target, "10"])
            .stdin(Stdio::null())
            .output()
            .expect("peer-ask");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for _ in 0..3 {
        let one = ask(lab.ns(Ns::G));
        let two = ask(&g2);
        assert!(one.contains(&format!("peer={EXTERNAL}:")), "guest 1: {one}");
        assert!(two.contains("peer=100.64.0.4:"), "guest 2: {two}");
    }
    for ns in [lab.ns(Ns::G), &g2] {
        let out = ns
            .command("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "2", &SERVER.to_string()])
            .stdin(Stdio::null())
            .output()
            .expect("ping");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("3 received"), "{}: {text}", ns.name());
    }
    drop(second);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn an_explicit_external_address_in_use_exits_2() {
    let lab = Lab::start("two-clash", &[]);
    let g2 = Netns::new("two-clash-g2").expect("second guest namespace");
    let host = lab.ns(Ns::H).name().to_owned();
    let t = Instant::now();
    let out = lab
        .ns(Ns::H)
        .command("timeout")
        .args(["-k", "2", "20"])
        .arg(hostnet_lab())
        .args([
            "attach",
            "--guest-netns",
            g2.name(),
            "--host-netns",
            &host,
            "--dns-upstream",
            &SERVER.to_string(),
            "--external-addr",
            &EXTERNAL.to_string(),
        ])
        .stdin(Stdio::null())
        .output()
        .expect("attach");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(out.stdout.is_empty(), "printed {:?}", out.stdout);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("--external-addr 100.64.0.2 is already in use")
            && last.contains(&format!("peer of {}", lab.attach().tun)),
        "{stderr}"
    );
    // The first attach is untouched.
    let routes = lab
        .ns(Ns::H)
        .ip(&["-4", "route", "get", &EXTERNAL.to_string()]);
    assert!(
        routes
            .as_deref()
            .is_ok_and(|r| r.contains(&format!("dev {} ", lab.attach().tun))),
        "{routes:?}"
    );
    assert!(
        !g2.has_link(GUEST_DEV).expect("ip link"),
        "a TAP was left in G2"
    );
}
