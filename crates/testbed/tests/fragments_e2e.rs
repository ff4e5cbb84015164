//! End-to-end: outsiders cannot starve the guest of the NAT's held-fragment pool (issue 12
//! item 11).
//!
//! A later fragment that arrives before its first fragment is held by the NAT until the first
//! one names the flow. The server namespace sends 400 such fragments (each from its own forged
//! source in 198.19.0.0/16, to the NAT's external address, for no mapping at all) from a raw
//! `IP_HDRINCL` socket: the inbound pool fills (`nat.FragmentsHeldFull`). Then the guest sends
//! a 3 000-byte UDP datagram as three fragments, last one first, from a raw socket: the NAT
//! must hold its two early fragments, release them when the first arrives, and the server
//! must receive the whole datagram (same SHA-256). Before the pool was split per direction the
//! outsiders' fragments filled the one shared pool and the guest's datagram was lost.
//!
//! Needs root: `cargo test -p testbed --test fragments_e2e -- --include-ignored`.
//! Programs: busybox (udhcpc), python3.

#![cfg(target_os = "linux")]

// This test uses a few of the shared helpers only.
#[allow(dead_code)]
mod common;

use common::{Lab, Ns, SERVER, require, wait_file_contains};

/// Server: `receiver.py <out>`: one UDP datagram on port 9999; writes `<len> <sha256>`.
const RECEIVER_PY: &str = r#"
import hashlib, os, socket, sys
out = sys.argv[1]
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", 9999))
u.settimeout(20)
print("listening", flush=True)
try:
    data, _ = u.recvfrom(65535)
    text = "%d %s\n" % (len(data), hashlib.sha256(data).hexdigest())
except socket.timeout:
    text = "timeout\n"
with open(out + ".tmp", "w") as o:
    o.write(text)
os.rename(out + ".tmp", out)
"#;

/// Server: `flood.py <external> <count>`: `count` non-first UDP fragments (offset 800, more
/// fragments set, distinct IDs), each from its own forged source in 198.19.0.0/16.
const FLOOD_PY: &str = r#"
import socket, struct, sys
dst, n = sys.argv[1], int(sys.argv[2])
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
payload = b"x" * 512
for i in range(n):
    src = "198.19.%d.%d" % (i // 250, 1 + i % 250)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1000 + i, 0x2000 | 100, 64,
                     17, 0, socket.inet_aton(src), socket.inet_aton(dst))
    raw.sendto(ip + payload, (dst, 0))
print("sent", n, flush=True)
"#;

/// Guest: `send.py <me> <server>`: a UDP datagram of 2 992 payload bytes (checksum 0) to
/// <server>:9999 as three IPv4 fragments with a random ID, sent last first; prints
/// `<len> <sha256>`.
const SEND_PY: &str = r#"
import hashlib, os, socket, struct, sys
me, server = sys.argv[1], sys.argv[2]
data = os.urandom(2992)
udp = struct.pack("!HHHH", 40001, 9999, 8 + len(data), 0) + data
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
parts = [(0, udp[0:1480], 1), (1480, udp[1480:2960], 1), (2960, udp[2960:], 0)]
# A fresh IP ID: a datagram ID whose first fragment the NAT saw lately is translated at once.
ident = int.from_bytes(os.urandom(2), "big")
for off, chunk, more in reversed(parts):
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(chunk), ident,
                     (0x2000 if more else 0) | (off // 8), 64, 17, 0,
                     socket.inet_aton(me), socket.inet_aton(server))
    raw.sendto(ip + chunk, (server, 0))
print(len(data), hashlib.sha256(data).hexdigest(), flush=True)
"#;

/// The value of counter `name=` in a stats line (0 when absent).
fn counter(line: &str, name: &str) -> u64 {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(0)
}

/// One out-of-order fragmented datagram from the guest; whether the server got it whole.
fn send_fragmented(lab: &mut Lab, me: &str, round: &str) {
    let out = lab.dir.join(format!("received-{round}"));
    let out_s = out.to_str().expect("utf-8").to_owned();
    lab.spawn(
        Ns::S,
        &["python3", "-c", RECEIVER_PY, &out_s],
        Some("listening"),
    );
    let sent = lab.ok(
        Ns::G,
        10,
        &["python3", "-c", SEND_PY, me, &SERVER.to_string()],
    );
    let got = wait_file_contains(&out, "\n", 25);
    eprintln!(
        "{round}: guest sent {} server got {}",
        sent.trim(),
        got.trim()
    );
    assert_eq!(
        got.trim(),
        sent.trim(),
        "{round}: the guest's out-of-order fragmented datagram did not arrive whole"
    );
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn fragments_from_outside_leave_the_guest_its_held_fragments() {
    require(&[("busybox", "busybox"), ("python3", "python3")]);
    let (mut lab, lease) = Lab::with_lease("e2e-frag-pool", &[]);
    let me = lease.ip.to_string();
    // Works before the flood.
    send_fragmented(&mut lab, &me, "before");

    let external = lab
        .attach()
        .stdout_lines()
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("external="))
                .map(str::to_owned)
        })
        .expect("external= in attach's ready line");
    let flood = lab.ok(Ns::S, 30, &["python3", "-c", FLOOD_PY, &external, "400"]);
    assert!(flood.contains("sent 400"), "{flood}");

    // The inbound pool is full of the outsiders' fragments; the guest's still get held.
    send_fragmented(&mut lab, &me, "after the flood");

    let (line, _) = lab.take_attach().stop_for_stats_line();
    assert!(
        counter(&line, "nat.FragmentsHeldFull") > 0,
        "the flood did not fill the inbound pool (the test proved nothing): {line}"
    );
}
