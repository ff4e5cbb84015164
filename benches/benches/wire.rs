//! Criterion benches of the `wire` crate's Internet checksum, beside the checksums it
//! replaces, on 64-byte and 1500-byte buffers:
//!
//! - `wire/checksum/wire/N`: `wire::checksum::checksum` over N bytes (the bridge's own
//!   16-bit loop it replaced measured 6x slower at 64 B and 21x at 1500 B, same run,
//!   2026-12-04).
//! - `wire/complete/{nat,wire}/N`: completing the UDP checksum of an N-byte IPv4 packet,
//!   with `nat::complete_l4_checksum` (nat's own `checksum::sum`, until nat moves onto
//!   `wire`) and with the same steps through `wire`'s views.
//!
//! Run: `cargo bench -p hostnet-benches --bench wire`.
// criterion 0.7's `criterion_group!` defines undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use wire::{Ipv4Packet, UdpPacket, checksum, ip_proto};

const SIZES: [usize; 2] = [64, 1500];
/// Packets cycled through by the completion benches.
const COPIES: usize = 64;
const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + 3) as u8).collect()
}

/// An IPv4 UDP packet of `size` bytes in all, with a valid header checksum.
fn udp_packet(size: usize) -> Vec<u8> {
    let mut p = bytes(size);
    let mut ip = Ipv4Packet::new_unchecked(&mut p[..]);
    ip.set_version(4);
    ip.set_header_len(wire::ipv4::HEADER_LEN);
    ip.set_dscp(0);
    ip.set_ecn(0);
    ip.set_total_len(size as u16);
    ip.set_ident(1);
    ip.set_dont_frag(true);
    ip.set_more_frags(false);
    ip.set_frag_offset(0);
    ip.set_ttl(64);
    ip.set_protocol(ip_proto::UDP);
    ip.set_src_addr(SRC);
    ip.set_dst_addr(DST);
    ip.fill_checksum();
    let mut udp = UdpPacket::new_unchecked(ip.payload_mut());
    udp.set_src_port(5000);
    udp.set_dst_port(53);
    udp.set_len((size - wire::ipv4::HEADER_LEN) as u16);
    udp.fill_checksum_v4(SRC, DST);
    p
}

/// What `nat::complete_l4_checksum` does for UDP, through `wire`: the checksum field holds
/// the pseudo-header sum; sum the IP payload and write the complement.
fn wire_complete(p: &mut [u8]) -> bool {
    let Ok(ip) = Ipv4Packet::new_checked(&mut *p) else {
        return false;
    };
    if ip.is_fragment() || ip.protocol() != ip_proto::UDP {
        return false;
    }
    let l4 = ip.into_payload_mut();
    if UdpPacket::new_checked(&*l4).is_err() {
        return false;
    }
    let c = match checksum::checksum(l4) {
        0 => 0xffff,
        c => c,
    };
    UdpPacket::new_unchecked(l4).set_checksum(c);
    true
}

fn sums(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire/checksum");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for size in SIZES {
        let data = bytes(size);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("wire/{size}"), |b| {
            b.iter(|| checksum::checksum(black_box(&data)))
        });
    }
}

fn complete(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire/complete");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    for size in SIZES {
        // Cycle through copies, so that a checksum field written in one iteration is not
        // read back by the next (a store-forwarding stall no real packet sees).
        let mut pkts = vec![udp_packet(size); COPIES];
        let mut i = 0;
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("nat/{size}"), |b| {
            b.iter(|| {
                i = (i + 1) % COPIES;
                nat::complete_l4_checksum(black_box(&mut pkts[i]))
            })
        });
        g.bench_function(format!("wire/{size}"), |b| {
            b.iter(|| {
                i = (i + 1) % COPIES;
                wire_complete(black_box(&mut pkts[i]))
            })
        });
    }
}

criterion_group!(benches, sums, complete);
criterion_main!(benches);
