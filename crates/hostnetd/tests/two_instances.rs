//! Two hostnetd in one network namespace (issue 12, item 4): the second picks the next free
//! address pair and says so on its ready line (`external=`); an explicit `--external-addr`
//! that the namespace already uses is refused with exit status 2. No frontend; needs root (a
//! network namespace and TUNs).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use testbed::netns::{Netns, Process};

/// A hostnetd started in `ns` with `extra` arguments, and its stdout lines.
fn spawn(ns: &Netns, tag: &str, extra: &[&str]) -> (Process, mpsc::Receiver<String>) {
    let sock = std::env::temp_dir().join(format!("hostnetd-two-{}-{tag}.sock", std::process::id()));
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_hostnetd"));
    cmd.arg("--socket")
        .arg(&sock)
        .args(["--dns-upstream", "198.18.0.2"])
        .args(extra)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Process::spawn(&mut cmd).expect("starting hostnetd");
    let stdout = process.take_stdout().expect("stdout");
    let stderr = process.take_stderr().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[hostnetd] {line}");
            let _ = tx2.send(format!("stderr: {line}"));
        }
    });
    (process, rx)
}

/// The ready line's fields, in order.
fn ready(rx: &mpsc::Receiver<String>) -> Vec<(String, String)> {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hostnetd printed no ready line within 10 s");
        if let Some(rest) = line.strip_prefix("ready ") {
            return rest
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    (k.to_owned(), v.to_owned())
                })
                .collect();
        }
    }
}

fn field(fields: &[(String, String)], key: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key}= in {fields:?}"))
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn two_hostnetd_in_one_namespace_take_different_pairs() {
    let ns = Netns::new("hnd-two").expect("namespace");
    let (_a, rx_a) = spawn(&ns, "a", &[]);
    let a = ready(&rx_a);
    let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["socket", "tun", "gateway", "external"], "{a:?}");
    assert_eq!(field(&a, "external"), "100.64.0.2");
    let (_b, rx_b) = spawn(&ns, "b", &[]);
    let b = ready(&rx_b);
    assert_eq!(field(&b, "external"), "100.64.0.4", "{b:?}");
    assert_ne!(field(&a, "tun"), field(&b, "tun"));
    // The kernel routes each external address into its own TUN.
    for (fields, tun_addr) in [(&a, "100.64.0.1"), (&b, "100.64.0.3")] {
        let ext = field(fields, "external");
        let route = ns.ip(&["-4", "route", "get", &ext]).expect("ip route get");
        assert!(
            route.contains(&format!("dev {} ", field(fields, "tun"))),
            "{ext}: {route}"
        );
        let addrs = ns
            .ip(&["-4", "addr", "show", "dev", &field(fields, "tun")])
            .expect("ip addr");
        assert!(
            addrs.contains(&format!("{tun_addr} peer {ext}/32")),
            "{addrs}"
        );
    }
    // Started at the same time, two more still get two different pairs (the lock).
    let (_c, rx_c) = spawn(&ns, "c", &[]);
    let (_d, rx_d) = spawn(&ns, "d", &[]);
    let (c, d) = (ready(&rx_c), ready(&rx_d));
    let mut ext: Vec<Ipv4Addr> = [&a, &b, &c, &d]
        .iter()
        .map(|f| field(f, "external").parse().expect("IPv4"))
        .collect();
    ext.sort();
    ext.dedup();
    assert_eq!(ext.len(), 4, "{ext:?}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn an_explicit_external_address_in_use_exits_2() {
    let ns = Netns::new("hnd-clash").expect("namespace");
    let (_a, rx_a) = spawn(&ns, "x", &[]);
    assert_eq!(field(&ready(&rx_a), "external"), "100.64.0.2");
    let (mut b, rx_b) = spawn(&ns, "y", &["--external-addr", "100.64.0.2"]);
    let status = b
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("hostnetd with a used --external-addr still runs");
    assert_eq!(status.code(), Some(2), "{status}");
    let out: Vec<String> = rx_b.try_iter().collect();
    let err = out.join("\n");
    assert!(
        err.contains("--external-addr 100.64.0.2 is already in use") && err.contains("hostnetd"),
        "{err}"
    );
    assert!(!out.iter().any(|l| l.starts_with("ready ")), "{err}");
    // Explicit and free: taken as given.
    let (_c, rx_c) = spawn(
        &ns,
        "z",
        &["--tun-addr", "10.200.0.1", "--external-addr", "10.200.0.2"],
    );
    assert_eq!(field(&ready(&rx_c), "external"), "10.200.0.2");
}
