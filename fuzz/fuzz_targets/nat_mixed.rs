//! Arbitrary bytes into `Nat::outbound_with` / `Nat::inbound_with` (and
//! `expire`, `poll_released`): never a panic, and every forwarded or
//! released packet still parses as IPv4 with a correct header checksum (or,
//! through NAT66, as IPv6: a packet whose version nibble is 6); a
//! transport checksum valid before stays valid; a partial checksum (the
//! pseudo-header sum) stays the pseudo-header sum of the new addresses; a
//! held packet's buffer is left alone; held fragments stay within their caps.
//!
//! Input: a sequence of records `[ctl, len, bytes[len]]`. `ctl` bit 0 picks
//! the direction, bit 1 asks for an `expire` first, bit 2 turns a TCP/UDP
//! packet into a partial-checksum one (`L4Checksum::Partial`), bit 3 drains
//! released fragments into a short (64-byte) buffer instead of a 1500-byte
//! one, the rest advances time.
#![no_main]

use std::net::{Ipv6Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use nat::testing::{self, GUEST, GUEST2, GUEST6, SERVER, SERVER6, TcpFlags, sa6};
use nat::{
    Direction, Filtering, Instant, L4Checksum, Nat, NatConfig, PortForward, Protocol, Redirect,
    Verdict,
};

fuzz_target!(|data: &[u8]| {
    let mut nat = setup(data.first().is_some_and(|b| b & 0x80 != 0));
    let mut now = 0u64;
    let mut rest = data.get(1..).unwrap_or(&[]);
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        now += u64::from(ctl >> 4) * 1000;
        let t = Instant::from_millis(now);
        if ctl & 2 != 0 {
            nat.expire(t, 8);
        }
        let mut p = pkt.to_vec();
        let v6 = p.first().is_some_and(|b| b >> 4 == 6);
        let whole_before = p
            .get(6..8)
            .is_some_and(|b| u16::from_be_bytes([b[0], b[1]]) & 0x3fff == 0);
        // Bytes past the IPv4 total length (IPv6: header and payload length)
        // are padding, not part of the packet.
        let declared = if v6 {
            testing::declared_len6(&p)
        } else {
            p.get(2..4)
                .map_or(p.len(), |b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        };
        let partial = ctl & 4 != 0
            && if v6 {
                declared == p.len() && testing::make_partial6(&mut p)
            } else {
                whole_before && testing::make_partial(&mut p)
            };
        let original = p.clone();
        let transport_ok = !partial
            && if v6 {
                declared == p.len() && testing::checksums6_ok(&p)
            } else {
                testing::transport_checksum_ok(&p[..declared.min(p.len())])
            };
        let l4 = if partial {
            L4Checksum::Partial
        } else {
            L4Checksum::Complete
        };
        let v = if ctl & 1 == 0 {
            nat.outbound_with(&mut p, t, l4)
        } else {
            nat.inbound_with(&mut p, t, l4)
        };
        match v {
            Verdict::Forward | Verdict::Hairpin if v6 => {
                assert!(
                    testing::parses6(&p),
                    "forwarded packet does not parse: {p:02x?}"
                );
                if transport_ok {
                    assert!(testing::checksums6_ok(&p), "checksum broken: {p:02x?}");
                }
                if partial {
                    // Completed in software, it is right: the field held the
                    // pseudo-header sum of the new addresses.
                    let mut done = p.clone();
                    assert!(nat::complete_l4_checksum(&mut done));
                    assert!(
                        testing::checksums6_ok(&done),
                        "partial checksum wrong: {p:02x?}"
                    );
                }
            }
            Verdict::Forward | Verdict::Hairpin => {
                check_forwarded(&p, transport_ok);
                if partial {
                    let field = testing::l4_checksum(&p);
                    let want = testing::pseudo_sum(&p);
                    assert!(
                        matches!((field, want), (Some(f), Some(w)) if testing::ones_complement_eq(f, w)),
                        "partial checksum is not the new pseudo-header sum: {p:02x?}"
                    );
                }
            }
            Verdict::Drop(_) | Verdict::Held => {
                assert_eq!(p, original, "a dropped or held packet must be left alone")
            }
        }
        // Drain what the NAT released (translated held fragments).
        let mut buf = vec![0u8; if ctl & 8 != 0 { 64 } else { 1500 }];
        for dir in [Direction::Outbound, Direction::Inbound] {
            while let Some(r) = nat.poll_released(dir, &mut buf) {
                assert!(matches!(r.verdict, Verdict::Forward | Verdict::Hairpin));
                assert!(r.len <= buf.len());
                check_forwarded(&buf[..r.len], false);
            }
        }
        // Each family has its own table and caps.
        assert!(nat.len() <= 2 * nat.config().max_flows);
        let (held, bytes) = nat.held_fragments();
        // Per direction and per address family.
        assert!(held <= 4 * nat.config().max_held_fragments);
        assert!(bytes <= 4 * nat.config().max_held_bytes);
        for d in [Direction::Outbound, Direction::Inbound] {
            let (held, bytes) = nat.held_fragments_of(d);
            assert!(held <= 2 * nat.config().max_held_fragments);
            assert!(bytes <= 2 * nat.config().max_held_bytes);
        }
    }
});

/// A forwarded packet parses; a transport checksum valid before stays valid.
fn check_forwarded(p: &[u8], transport_ok: bool) {
    assert!(
        testing::parses(p),
        "forwarded packet does not parse: {p:02x?}"
    );
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let whole = u16::from_be_bytes([p[6], p[7]]) & 0x3fff == 0;
    if transport_ok && whole {
        assert!(
            testing::transport_checksum_ok(&p[..total]),
            "transport checksum broken: {p:02x?}"
        );
    }
}

/// A small NAT with flows, a forward and a redirect for inputs to hit.
fn setup(apdf: bool) -> Nat {
    let cfg = NatConfig {
        max_flows: 64,
        max_flows_per_host: 16,
        max_fragments: 4,
        max_held_fragments: 4,
        max_held_bytes: 1024,
        filtering: if apdf {
            Filtering::AddressAndPortDependent
        } else {
            Filtering::EndpointIndependent
        },
        ..testing::config()
    };
    let mut nat = testing::nat_with(cfg);
    let (g, s) = (
        SocketAddrV4::new(GUEST, 5000),
        SocketAddrV4::new(SERVER, 53),
    );
    for mut p in [
        testing::udp(g, s, b"q"),
        testing::tcp(g, s, TcpFlags::SYN, b""),
        testing::echo_request(GUEST, SERVER, 5000, 1, b""),
        testing::udp6(sa6(GUEST6, 5000), sa6(SERVER6, 53), b"q"),
        testing::tcp6(sa6(GUEST6, 5000), sa6(SERVER6, 53), TcpFlags::SYN, b""),
        testing::echo_request6(GUEST6, SERVER6, 5000, 1, b""),
    ] {
        let _ = nat.outbound(&mut p, Instant::ZERO);
    }
    let _ = nat.add_forward6(
        Protocol::Tcp,
        80,
        sa6(Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0x11), 80),
    );
    let _ = nat.add_forward(PortForward {
        protocol: Protocol::Tcp,
        external_port: 80,
        internal: SocketAddrV4::new(GUEST2, 80),
    });
    let _ = nat.add_redirect(Redirect {
        protocol: Protocol::Udp,
        from: SocketAddrV4::new(testing::GATEWAY, 53),
        to: SocketAddrV4::new(SERVER, 53),
    });
    nat
}
