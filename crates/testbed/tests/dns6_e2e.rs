//! DNS over IPv6 through the gateway (issue 13): a SLAAC guest asks `dig AAAA` of
//! `[fd64::1]:53` (the DNS server RDNSS and DHCPv6 advertise), over UDP and TCP, and gets
//! dnsmasq's AAAA record from the server namespace:
//!
//! - with an IPv6 upstream (`--dns-upstream 2001:db8::2`): NAT66 redirects `[fd64::1]:53` to
//!   it, and IPv4 queries to 192.168.64.1 reach it through the gateway's DNS relay;
//! - with an IPv4 upstream (`--dns-upstream 198.18.0.2`, the common case): the gateway's DNS
//!   relay translates the query to IPv4 from the gateway's own address, NAT44 redirects it;
//! - with no usable upstream: the query is answered REFUSED (UDP) or reset (TCP) at once.
//!
//! Privileged (ignored unless asked; run with `--ignored --test-threads=1`). Needs: iproute2 (ip),
//! procps (sysctl), dnsmasq, dig (bind9-dnsutils).

#[allow(dead_code)]
mod common;

use common::*;

/// Asks `dig` in the guest for the AAAA record of `name` at `server`, with `extra` options;
/// returns its whole output.
fn dig(lab: &Lab, server: &str, name: &str, extra: &[&str]) -> String {
    let at = format!("@{server}");
    let mut argv = vec!["dig", at.as_str(), "+time=3", "+tries=2", "AAAA", name];
    argv.extend_from_slice(extra);
    let out = lab.run(Ns::G, 20, &argv);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `dig AAAA` over UDP and over TCP through `[fd64::1]` returns dnsmasq's record.
fn aaaa_through_the_ipv6_gateway(lab: &Lab) {
    for (name, extra) in [("udp.e2e.test", &[][..]), ("tcp.e2e.test", &["+tcp"][..])] {
        let out = dig(lab, "fd64::1", name, extra);
        assert!(out.contains("status: NOERROR"), "dig {extra:?}:\n{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with(name) && l.contains("AAAA") && l.contains(E2E_TEST_AAAA)),
            "dig {extra:?} lacks the AAAA record:\n{out}"
        );
        assert!(out.contains("SERVER: fd64::1#53"), "{out}");
    }
}

fn prerequisites() {
    require(&[
        ("ip", "iproute2"),
        ("sysctl", "procps"),
        ("dnsmasq", "dnsmasq"),
        ("dig", "bind9-dnsutils"),
    ]);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn dig_aaaa_through_fd64_1_with_an_ipv6_upstream() {
    prerequisites();
    let mut lab = Lab::start_via("dns6v6", &[], &["--dns-upstream", &SERVER6.to_string()]);
    let log = lab.start_dnsmasq();
    lab.slaac();
    aaaa_through_the_ipv6_gateway(&lab);
    // dnsmasq heard the queries from NAT66's external address.
    let seen = wait_file_contains(&log, "tcp.e2e.test", 5);
    assert!(seen.contains("from fd64:ffff::2"), "{seen}");
    // IPv4 queries to 192.168.64.1 reach the IPv6 upstream through the DNS relay.
    lab.udhcpc();
    for extra in [&[][..], &["+tcp"][..]] {
        let mut argv = vec![
            "dig",
            "@192.168.64.1",
            "+short",
            "+time=3",
            "A",
            "v4.e2e.test",
        ];
        argv.extend_from_slice(extra);
        let out = lab.ok(Ns::G, 20, &argv);
        assert_eq!(out.trim(), "198.18.7.7", "dig {extra:?}");
    }
    let seen = wait_file_contains(&log, "query[A] v4.e2e.test", 5);
    assert!(seen.contains("v4.e2e.test from fd64:ffff::2"), "{seen}");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn dig_aaaa_through_fd64_1_with_an_ipv4_upstream_by_the_relay() {
    prerequisites();
    // `Lab::start` passes `--dns-upstream 198.18.0.2`.
    let mut lab = Lab::start("dns6v4", &[]);
    let log = lab.start_dnsmasq();
    lab.slaac();
    aaaa_through_the_ipv6_gateway(&lab);
    // dnsmasq heard the relayed queries over IPv4, from NAT44's external address.
    let seen = wait_file_contains(&log, "tcp.e2e.test", 5);
    assert!(seen.contains(&format!("from {EXTERNAL}")), "{seen}");
    // IPv4 queries still go the NAT44 way.
    lab.udhcpc();
    let out = lab.ok(
        Ns::G,
        20,
        &[
            "dig",
            &format!("@{GATEWAY}"),
            "+short",
            "+time=3",
            "a.e2e.test",
        ],
    );
    assert_eq!(out.trim(), "198.18.7.7");
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ipv6_dns_without_an_upstream_is_refused_at_once() {
    prerequisites();
    let lab = Lab::start_with("dns6none", &[], Some("nameserver 127.0.0.1\n"));
    lab.slaac();
    let out = dig(&lab, "fd64::1", "none.e2e.test", &["+tries=1"]);
    assert!(out.contains("status: REFUSED"), "{out}");
    let out = dig(&lab, "fd64::1", "none.e2e.test", &["+tcp", "+tries=1"]);
    assert!(
        out.to_lowercase().contains("connection refused"),
        "a RST expected:\n{out}"
    );
}
