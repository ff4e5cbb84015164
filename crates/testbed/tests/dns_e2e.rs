//! The gateway's DNS upstream on a systemd-resolved host (issue 12, item 3), end to end.
//!
//! `hostnet-lab attach` runs in a private mount namespace (`unshare --mount`) in which
//! `/etc/resolv.conf` is a bind mount of a test file naming only systemd-resolved's stub
//! 127.0.0.53 (Ubuntu's default) and `/run` is a fresh tmpfs holding
//! `/run/systemd/resolve/resolv.conf` (the real upstreams; `/run/netns` moved back in). The
//! machine's own `/etc/resolv.conf` and `/run` are never touched.
//!
//! Needs root: `cargo test -p testbed --test dns_e2e -- --include-ignored`. Programs: iproute2
//! (ip), util-linux (unshare, mount), busybox (udhcpc), dnsutils (dig), dnsmasq-base.

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{GATEWAY, Lab, Ns, SERVER, require, wait_file_contains};

/// With `/etc/resolv.conf` = `nameserver 127.0.0.53` only, attach takes systemd-resolved's
/// upstream (dnsmasq in the server namespace) from `/run/systemd/resolve/resolv.conf`, says so
/// at start, and the guest resolves through the gateway. (The old code forwarded to
/// 127.0.0.53, which H's kernel drops as a martian: dig timed out.)
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_stub_only_resolv_conf_uses_systemd_resolveds_upstream() {
    require(&[
        ("busybox", "busybox"),
        ("dnsmasq", "dnsmasq-base"),
        ("dig", "dnsutils"),
        ("unshare", "util-linux"),
    ]);
    let files = Files::new(
        "stub",
        "# systemd-resolved stub\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n",
        Some(&format!(
            "# systemd-resolved's upstreams\nnameserver ::1\nnameserver {SERVER}\n"
        )),
    );
    let mut lab = Lab::start_via("dns-stub", &files.prefix(), &[]);
    let _lease = lab.udhcpc();
    let log = lab.start_dnsmasq();
    let t = Instant::now();
    let out = dig(&lab, "stub.e2e.test");
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("198.18.7.7"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    let text = wait_file_contains(&log, "stub.e2e.test", 5);
    assert!(text.contains("from 100.64.0."), "{text}");
    let err = lab.attach().stderr();
    let line = err
        .lines()
        .find(|l| l.contains("dns upstream"))
        .unwrap_or_else(|| panic!("no `dns upstream` line:\n{err}"));
    assert!(line.contains("INFO"), "{line}");
    assert!(line.contains(&format!("{SERVER}:53")), "{line}");
    assert!(
        line.contains("/run/systemd/resolve/resolv.conf") && line.contains("127.0.0.53"),
        "the source is not named: {line}"
    );
}

/// With only loopback nameservers (the stub, and systemd-resolved's file naming 127.0.0.1),
/// attach warns at start, and a guest query to the gateway is answered REFUSED at once: dig
/// with its default timeouts (5 s × 3 tries) returns within 3 s; over TCP the connection is
/// refused (RST) as fast. (The old code black-holed the query: no answer, only timeouts.)
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn no_usable_upstream_warns_and_dns_fails_fast() {
    require(&[
        ("busybox", "busybox"),
        ("dig", "dnsutils"),
        ("unshare", "util-linux"),
    ]);
    let files = Files::new(
        "none",
        "nameserver 127.0.0.53\n",
        Some("nameserver 127.0.0.1\n"),
    );
    let mut lab = Lab::start_via("dns-none", &files.prefix(), &[]);
    let err = lab.attach().stderr();
    let line = err
        .lines()
        .find(|l| l.contains("no usable dns upstream"))
        .unwrap_or_else(|| panic!("no warning:\n{err}"));
    assert!(line.contains("WARN"), "{line}");
    let _lease = lab.udhcpc();
    let t = Instant::now();
    let out = lab.run(
        Ns::G,
        30,
        &[
            "dig",
            &format!("@{GATEWAY}"),
            "+notcp",
            "none.e2e.test",
            "A",
        ],
    );
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status: REFUSED"), "{text}");
    assert!(
        took < Duration::from_secs(3),
        "dig took {took:?} (timeouts, not an answer):\n{text}"
    );
    // Over TCP the gateway's port 53 is closed: the connection is refused at once.
    let t = Instant::now();
    let out = lab.run(
        Ns::G,
        30,
        &["dig", &format!("@{GATEWAY}"), "+tcp", "none.e2e.test", "A"],
    );
    let took = t.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("connection refused"), "{text}");
    assert!(
        took < Duration::from_secs(3),
        "dig +tcp took {took:?}:\n{text}"
    );
}

/// The test's resolv.conf files and the `unshare --mount` prefix that mounts them.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(tag: &str, resolv_conf: &str, systemd: Option<&str>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("hostnet-dns-e2e-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(dir.join("netns")).expect("scratch dir");
        std::fs::write(dir.join("resolv.conf"), resolv_conf).expect("resolv.conf");
        if let Some(s) = systemd {
            std::fs::write(dir.join("systemd-resolv.conf"), s).expect("systemd's resolv.conf");
        }
        Self { dir }
    }

    /// `unshare --mount --propagation private sh -c <script> sh`: the script bind-mounts
    /// `resolv.conf` over /etc/resolv.conf, puts a tmpfs on /run (with /run/netns moved back in,
    /// attach opens the guest namespace by name) holding systemd's file, then runs "$@".
    fn prefix(&self) -> Vec<&str> {
        vec![
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            SCRIPT,
            self.dir.to_str().expect("utf-8 temp dir"),
        ]
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `$0` is the scratch dir.
const SCRIPT: &str = r#"set -e
d="$0"
mount --rbind /run/netns "$d/netns"
mount -t tmpfs -o size=1m,mode=755 hostnet-dns-e2e /run
mkdir -p /run/netns /run/systemd/resolve
mount --move "$d/netns" /run/netns
if [ -f "$d/systemd-resolv.conf" ]; then
    cp "$d/systemd-resolv.conf" /run/systemd/resolve/resolv.conf
fi
mount --bind "$d/resolv.conf" /etc/resolv.conf
exec "$@""#;

/// dig (UDP) in the guest asks the gateway for `name`.
fn dig(lab: &Lab, name: &str) -> String {
    lab.ok(
        Ns::G,
        15,
        &[
            "dig",
            &format!("@{GATEWAY}"),
            "+notcp",
            "+time=2",
            "+tries=1",
            name,
            "A",
        ],
    )
}
