//! Two hostnetd in one network namespace (issue 12, item 4): the second picks the next free
//! address pair (and IPv6 pair) and says so on its ready line (`external=`, `external6=`); an explicit `--external-addr`
//! that the namespace already uses is refused with exit status 2. No frontend; needs root (a
//! network namespace and TUNs).
#![cfg(target_os = "linux")]

mod common;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use testbed::netns::Netns;

/// A hostnetd started in `ns`, stopped politely (its socket removed) when dropped.
struct Hostnetd {
    spawned: common::Spawned,
    sock: PathBuf,
}

impl Drop for Hostnetd {
    fn drop(&mut self) {
        let p = &mut self.spawned.process;
        if p.child_mut().try_wait().is_ok_and(|s| s.is_none()) {
            let _ = p.signal("TERM");
            let _ = p.wait_timeout(Duration::from_secs(5));
        }
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// A hostnetd started in `ns` with `extra` arguments, and its stdout lines.
fn spawn(ns: &Netns, tag: &str, extra: &[&str]) -> Hostnetd {
    let sock = std::env::temp_dir().join(format!("hostnetd-two-{}-{tag}.sock", std::process::id()));
    Hostnetd {
        spawned: common::spawn(ns, &sock, extra),
        sock,
    }
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
    let a_ = spawn(&ns, "a", &[]);
    let a = ready(&a_.spawned.stdout);
    let keys: Vec<&str> = a.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "socket",
            "tun",
            "gateway",
            "external",
            "external6",
            "gateway6"
        ],
        "{a:?}"
    );
    assert_eq!(field(&a, "external"), "100.64.0.2");
    assert_eq!(field(&a, "external6"), "fd64:ffff::2");
    assert_eq!(field(&a, "gateway6"), "fd64::1");
    let b_ = spawn(&ns, "b", &[]);
    let b = ready(&b_.spawned.stdout);
    assert_eq!(field(&b, "external"), "100.64.0.4", "{b:?}");
    assert_eq!(field(&b, "external6"), "fd64:ffff::1:2", "{b:?}");
    // And each IPv6 external address into its own TUN (the second's /112 is more specific).
    for fields in [&a, &b] {
        let ext6 = field(fields, "external6");
        let route = ns.ip(&["-6", "route", "get", &ext6]).expect("ip route get");
        assert!(
            route.contains(&format!("dev {} ", field(fields, "tun"))),
            "{ext6}: {route}"
        );
    }
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
    let c_ = spawn(&ns, "c", &[]);
    let d_ = spawn(&ns, "d", &[]);
    let (c, d) = (ready(&c_.spawned.stdout), ready(&d_.spawned.stdout));
    let mut ext: Vec<Ipv4Addr> = [&a, &b, &c, &d]
        .iter()
        .map(|f| field(f, "external").parse().expect("IPv4"))
        .collect();
    ext.sort();
    ext.dedup();
    assert_eq!(ext.len(), 4, "{ext:?}");
    let mut ext6: Vec<String> = [&a, &b, &c, &d]
        .iter()
        .map(|f| field(f, "external6"))
        .collect();
    ext6.sort();
    ext6.dedup();
    assert_eq!(ext6.len(), 4, "{ext6:?}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn an_explicit_external_address_in_use_exits_2() {
    let ns = Netns::new("hnd-clash").expect("namespace");
    let a = spawn(&ns, "x", &[]);
    assert_eq!(field(&ready(&a.spawned.stdout), "external"), "100.64.0.2");
    let mut b = spawn(&ns, "y", &["--external-addr", "100.64.0.2"]);
    let status = b
        .spawned
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("hostnetd with a used --external-addr still runs");
    assert_eq!(status.code(), Some(2), "{status}");
    // The error goes to stderr; give its reader thread a moment.
    std::thread::sleep(Duration::from_millis(100));
    let out: Vec<String> = b
        .spawned
        .stdout
        .try_iter()
        .chain(b.spawned.stderr.try_iter())
        .collect();
    let err = out.join("\n");
    assert!(
        err.contains("--external-addr 100.64.0.2 is already in use") && err.contains("hostnetd"),
        "{err}"
    );
    assert!(!out.iter().any(|l| l.starts_with("ready ")), "{err}");
    // Explicit and free: taken as given.
    let c = spawn(
        &ns,
        "z",
        &["--tun-addr", "10.200.0.1", "--external-addr", "10.200.0.2"],
    );
    assert_eq!(field(&ready(&c.spawned.stdout), "external"), "10.200.0.2");
}
