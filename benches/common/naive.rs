//! What `benches/nat.rs` and `examples/nat_driver.rs` share: the batch of packets a round
//! runs, its per-packet and batch loops, and the naive NAT baseline measured against ours in
//! the same run.

use std::collections::HashMap;

use etherparse::{Ipv4Header, NetSlice, SlicedPacket, TransportSlice, UdpHeader};
use std::hint::black_box;

use nat::testing::{self, Packets};
use nat::{Instant, Nat, Verdict};

/// Packets per round.
pub(crate) const BATCH: usize = 1024;

/// Runs `f` on the next `BATCH` packets of `set` (each copied into a scratch buffer first);
/// every one must translate.
pub(crate) fn run(
    nat: &mut Nat,
    set: &Packets,
    cursor: &mut usize,
    now: Instant,
    f: fn(&mut Nat, &mut [u8], Instant) -> Verdict,
) -> usize {
    let n = set.count();
    let len = set.packet_len();
    let mut buf = [0u8; 128];
    let mut ok = 0;
    for _ in 0..BATCH {
        let scratch = &mut buf[..len];
        scratch.copy_from_slice(set.get(*cursor));
        *cursor += 1;
        if *cursor == n {
            *cursor = 0;
        }
        ok += usize::from(f(nat, black_box(scratch), now) == Verdict::Forward);
    }
    assert_eq!(ok, BATCH, "every packet of an established flow translates");
    ok
}

/// Copies the next packets of `set` into `bufs`.
pub(crate) fn fill(bufs: &mut [Vec<u8>], set: &Packets, cursor: &mut usize) {
    let n = set.count();
    for b in bufs {
        b.copy_from_slice(set.get(*cursor));
        *cursor += 1;
        if *cursor == n {
            *cursor = 0;
        }
    }
}

/// A straightforward engine, as a baseline measured in the same run: a full
/// etherparse parse, a std `HashMap` (SipHash) keyed by the 5-tuple, a full
/// checksum recompute. UDP only, outbound only.
pub(crate) struct Naive {
    map: HashMap<([u8; 4], u16, [u8; 4], u16), u16>,
    ext: [u8; 4],
}

impl Naive {
    pub(crate) fn new(set: &Packets) -> Naive {
        let mut map = HashMap::new();
        for i in 0..set.count() {
            if let Some(k) = Naive::key(set.get(i)) {
                let port = 1024 + (i % 60_000) as u16;
                map.insert(k, port);
            }
        }
        Naive {
            map,
            ext: testing::EXTERNAL.octets(),
        }
    }

    fn key(p: &[u8]) -> Option<([u8; 4], u16, [u8; 4], u16)> {
        let s = SlicedPacket::from_ip(p).ok()?;
        match (s.net, s.transport) {
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
                let h = ip.header();
                Some((
                    h.source(),
                    u.source_port(),
                    h.destination(),
                    u.destination_port(),
                ))
            }
            _ => None,
        }
    }

    /// One round: the next [`BATCH`] packets of `set` (each copied into a scratch buffer
    /// first) through [`Naive::outbound`]; every one must translate.
    pub(crate) fn round(&mut self, set: &Packets, cursor: &mut usize) {
        let (n, len) = (set.count(), set.packet_len());
        let mut buf = [0u8; 64];
        let mut ok = 0;
        for _ in 0..BATCH {
            let scratch = &mut buf[..len];
            scratch.copy_from_slice(set.get(*cursor));
            *cursor = (*cursor + 1) % n;
            ok += usize::from(self.outbound(black_box(scratch)));
        }
        assert_eq!(ok, BATCH);
    }

    pub(crate) fn outbound(&mut self, p: &mut [u8]) -> bool {
        let Some(port) = Naive::key(p).and_then(|k| self.map.get(&k).copied()) else {
            return false;
        };
        p[12..16].copy_from_slice(&self.ext);
        p[20..22].copy_from_slice(&port.to_be_bytes());
        let Ok((ip, rest)) = Ipv4Header::from_slice(p) else {
            return false;
        };
        let Ok((udp, payload)) = UdpHeader::from_slice(rest) else {
            return false;
        };
        let (ic, uc) = (
            ip.calc_header_checksum(),
            udp.calc_checksum_ipv4(&ip, payload).unwrap_or(0),
        );
        p[10..12].copy_from_slice(&ic.to_be_bytes());
        p[26..28].copy_from_slice(&uc.to_be_bytes());
        true
    }
}
