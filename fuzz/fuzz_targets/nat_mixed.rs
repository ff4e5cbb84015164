//! Arbitrary bytes into `Nat::outbound` / `Nat::inbound` (and `expire`):
//! never a panic, and every forwarded packet still parses as IPv4 with a
//! correct header checksum; a transport checksum valid before stays valid.
//!
//! Input: a sequence of records `[ctl, len, bytes[len]]`. `ctl` bit 0 picks
//! the direction, bit 1 asks for an `expire` first, the rest advances time.
#![no_main]

use std::net::SocketAddrV4;

use libfuzzer_sys::fuzz_target;
use nat::testing::{self, GUEST, GUEST2, SERVER, TcpFlags};
use nat::{Filtering, Instant, Nat, NatConfig, PortForward, Protocol, Redirect, Verdict};

fuzz_target!(|data: &[u8]| {
    let mut nat = setup(data.first().is_some_and(|b| b & 0x80 != 0));
    let mut now = 0u64;
    let mut rest = data.get(1..).unwrap_or(&[]);
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (pkt, next) = tail.split_at(n);
        rest = next;
        now += u64::from(ctl >> 2) * 1000;
        let t = Instant::from_millis(now);
        if ctl & 2 != 0 {
            nat.expire(t, 8);
        }
        let mut p = pkt.to_vec();
        // Bytes past the IPv4 total length are padding, not part of the packet.
        let declared = p
            .get(2..4)
            .map_or(p.len(), |b| usize::from(u16::from_be_bytes([b[0], b[1]])));
        let transport_ok = testing::transport_checksum_ok(&p[..declared.min(p.len())]);
        let v = if ctl & 1 == 0 {
            nat.outbound(&mut p, t)
        } else {
            nat.inbound(&mut p, t)
        };
        match v {
            Verdict::Forward | Verdict::Hairpin => {
                assert!(
                    testing::parses(&p),
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
            Verdict::Drop(_) => assert_eq!(p, pkt, "a dropped packet must be left alone"),
        }
        assert!(nat.len() <= nat.config().max_flows);
    }
});

/// A small NAT with flows, a forward and a redirect for inputs to hit.
fn setup(apdf: bool) -> Nat {
    let cfg = NatConfig {
        max_flows: 64,
        max_flows_per_host: 16,
        max_fragments: 4,
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
    ] {
        let _ = nat.outbound(&mut p, Instant::ZERO);
    }
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
