//! The naive NAT baseline that `benches/nat.rs` and `examples/nat_driver.rs` measure ours
//! against in the same run.

use std::collections::HashMap;

use etherparse::{Ipv4Header, NetSlice, SlicedPacket, TransportSlice, UdpHeader};
use nat::testing::{self, Packets};

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
