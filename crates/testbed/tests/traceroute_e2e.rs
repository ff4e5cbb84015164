//! End-to-end: `traceroute -6` from the guest to `2001:db8::2` (issue 13, "Tests"), with the
//! guest namespace's own kernel as the IPv6 host (SLAAC from the gateway). Every hop answers:
//! H's time exceeded (hop 1: the hop limit runs out in H, which forwards from the TUN) and S's
//! answer at the destination (port unreachable in UDP mode, echo reply in ICMP mode `-I`, a
//! SYN-ACK or reset in TCP mode `-T`) come back through NAT66, which translates the errors
//! with their quoted packets to the guest.
//!
//! Needs root: `cargo test -p testbed --test traceroute_e2e -- --ignored --test-threads=1`.
//! Programs: iproute2 (ip), procps (sysctl), traceroute (Debian's modern traceroute).

#![cfg(target_os = "linux")]

#[allow(dead_code)]
mod common;

use common::{Lab, Ns, require};

const SERVER6: &str = "2001:db8::2";
/// H's address on the TUN: the source of its time exceeded towards NAT66's external address.
const HOST_TUN6: &str = "fd64:ffff::1";

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn traceroute6_from_the_guest_hears_every_hop_in_udp_icmp_and_tcp_mode() {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("traceroute", "traceroute"),
    ]);
    let lab = Lab::start("traceroute6", &[]);
    let guest = lab.slaac();
    eprintln!("guest address {guest}");
    // TCP to a closed port: S's reset ends the trace.
    for mode in [&[][..], &["-I"][..], &["-T", "-p", "8080"][..]] {
        let mut argv = vec!["traceroute", "-6", "-n", "-q", "1", "-w", "2", "-m", "5"];
        argv.extend_from_slice(mode);
        argv.push(SERVER6);
        let out = lab.ok(Ns::G, 60, &argv);
        eprintln!("{argv:?}:\n{out}");
        let hops: Vec<&str> = out.lines().skip(1).collect();
        assert_eq!(hops.len(), 2, "two hops (H, then S) {mode:?}: {out}");
        assert!(
            hops[0].split_whitespace().nth(1) == Some(HOST_TUN6),
            "hop 1 is H's time exceeded {mode:?}: {out}"
        );
        assert!(
            hops[1].split_whitespace().nth(1) == Some(SERVER6),
            "hop 2 is the server {mode:?}: {out}"
        );
        assert!(!out.contains(" * "), "a hop did not answer {mode:?}: {out}");
    }
}
