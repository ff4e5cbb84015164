//! End-to-end: IPv6 port forwards (issue 13), `--forward tcp6:8080:7000 --forward
//! udp6:8053:7000` with the guest namespace's kernel on SLAAC from the gateway.
//!
//! - Before the guest has an IPv6 address the gateway learned, a connect to
//!   `[fd64:ffff::2]:8080` from the server is not delivered (no target yet).
//! - Once the guest used its SLAAC address (a ping to the server), a TCP client and a UDP
//!   client in the server namespace reach the `hostnet-e2e peer-serve` on `[::]:7000` in the
//!   guest through `[fd64:ffff::2]:8080` / `:8053`, and the guest sees the client's real
//!   address in `2001:db8::/64` (the answer comes back through NAT66).
//! - An IPv4 forward of the same external port (`tcp:8080:7001`) works beside it.
//!
//! Needs root: `cargo test -p testbed --test ipv6_forward_e2e -- --ignored`. Programs:
//! iproute2 (ip), procps (sysctl), iputils-ping, busybox (udhcpc).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use common::{Lab, Ns, helper, require};

const SERVER6: &str = "2001:db8::2";
const EXTERNAL6: &str = "fd64:ffff::2";

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_tcp6_and_udp6_forward_reach_the_slaac_guest_which_sees_the_real_client() {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("ping", "iputils-ping"),
        ("busybox", "busybox"),
    ]);
    let (mut lab, lease) = Lab::with_lease(
        "e2e-fwd6",
        &[
            "--forward",
            "tcp6:8080:7000",
            "--forward",
            "udp6:8053:7000",
            "--forward",
            "tcp:8080:7001",
        ],
    );
    lab.spawn(
        Ns::G,
        &[helper(), "peer-serve", "[::]:7000"],
        Some("listening"),
    );
    lab.spawn(
        Ns::G,
        &[helper(), "peer-serve", "0.0.0.0:7001"],
        Some("listening"),
    );
    // The IPv4 forward on the same external port, beside it (before `slaac`, whose link down/up
    // drops the guest's IPv4 default route).
    let ext4 = lab.attach().external;
    let tcp4 = lab.ok(
        Ns::S,
        15,
        &[helper(), "peer-ask", "tcp", &format!("{ext4}:8080"), "5"],
    );
    assert!(tcp4.trim().starts_with("peer="), "tcp forward: {tcp4}");
    let ext6_tcp = format!("[{EXTERNAL6}]:8080");
    // No learned guest address yet: nothing to forward to.
    let early = lab.run(Ns::S, 10, &[helper(), "tcp-try", &ext6_tcp, "2000"]);
    let early = String::from_utf8_lossy(&early.stdout);
    assert!(early.starts_with("failed"), "{early}");

    let guest = lab.slaac();
    eprintln!("guest address {guest}");
    // The guest uses its address: the gateway learns it and the forwards go to it.
    let o = lab.run(
        Ns::G,
        15,
        &[
            "ping", "-6", "-n", "-c", "2", "-i", "0.2", "-W", "2", SERVER6,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));

    // The client's own source (the server namespace holds 2001:db8::2 and ::3; its kernel
    // picks one), not an address of H or NAT66.
    let want = "peer=[2001:db8::";
    let tcp = lab.ok(Ns::S, 15, &[helper(), "peer-ask", "tcp", &ext6_tcp, "5"]);
    assert!(tcp.trim().starts_with(want), "tcp6 forward: {tcp}");
    let udp = lab.ok(
        Ns::S,
        15,
        &[
            helper(),
            "peer-ask",
            "udp",
            &format!("[{EXTERNAL6}]:8053"),
            "5",
        ],
    );
    assert!(udp.trim().starts_with(want), "udp6 forward: {udp}");

    let _ = lease;
}
