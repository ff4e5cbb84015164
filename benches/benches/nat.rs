//! Criterion benches of the NAT: established-flow translation (packets in a
//! random order across the flows, both directions) at 1 000, 64 000 and
//! 1 000 000 flows (and outbound with partial, i.e. offloaded, checksums),
//! IPv4 (`nat/established`) and IPv6 (`nat/established6`, NAT66);
//! new-flow setup; `expire` cost.
//!
//! Run: `cargo bench -p hostnet-benches --bench nat`.
// criterion 0.7's `criterion_group!` defines undocumented public functions.
#![allow(missing_docs)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use nat::testing::{self, SERVER};
use nat::{Instant, L4Checksum, Nat, Verdict};

#[path = "../common/naive.rs"]
mod naive;
use naive::{BATCH, Naive, fill, run};

/// Packets translated per measured iteration.
fn established(c: &mut Criterion) {
    for flows in [1_000usize, 64_000, 1_000_000] {
        let mut w = testing::warmed(flows);
        eprintln!(
            "nat: {flows} flows, {} table bytes/flow, {} bytes total",
            w.nat.table_bytes_per_flow(),
            w.nat.memory_bytes()
        );
        let mut g = c.benchmark_group("nat/established");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.measurement_time(Duration::from_secs(if flows >= 1_000_000 { 4 } else { 3 }));
        g.warm_up_time(Duration::from_secs(1));
        g.sample_size(if flows >= 1_000_000 { 10 } else { 30 });
        let now = w.now;
        let mut naive = Naive::new(&w.outbound);
        let mut cursor = 0;
        g.bench_function(format!("naive_baseline_outbound/{flows}"), |b| {
            b.iter(|| naive.round(&w.outbound, &mut cursor))
        });
        drop(naive);
        let mut cursor = 0;
        g.bench_function(format!("outbound/{flows}"), |b| {
            b.iter(|| run(&mut w.nat, &w.outbound, &mut cursor, now, Nat::outbound))
        });
        let partial = w.outbound.map(|p| {
            assert!(testing::make_partial(p));
        });
        let mut cursor = 0;
        g.bench_function(format!("outbound_partial/{flows}"), |b| {
            b.iter(|| {
                run(&mut w.nat, &partial, &mut cursor, now, |n, p, t| {
                    n.outbound_with(p, t, L4Checksum::Partial)
                })
            })
        });
        let mut cursor = 0;
        g.bench_function(format!("inbound/{flows}"), |b| {
            b.iter(|| run(&mut w.nat, &w.inbound, &mut cursor, now, Nat::inbound))
        });
        let mut bufs = vec![vec![0u8; w.outbound.packet_len()]; BATCH];
        let mut verdicts = vec![Verdict::Forward; BATCH];
        let mut cursor = 0;
        g.bench_function(format!("outbound_batch/{flows}"), |b| {
            b.iter(|| {
                fill(&mut bufs, &w.outbound, &mut cursor);
                w.nat.outbound_batch(&mut bufs, now, &mut verdicts);
                assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
            })
        });
        let mut cursor = 0;
        g.bench_function(format!("inbound_batch/{flows}"), |b| {
            b.iter(|| {
                fill(&mut bufs, &w.inbound, &mut cursor);
                w.nat.inbound_batch(&mut bufs, now, &mut verdicts);
                assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
            })
        });
        g.finish();
    }
}

/// NAT66: the IPv4 rows on IPv6 packets (`testing::warmed6`: the same
/// endpoints and flow counts, UDP with an 18-byte payload, 20 header bytes
/// more), for NAT66/NAT44 ratios in one run.
fn established6(c: &mut Criterion) {
    for flows in [1_000usize, 64_000, 1_000_000] {
        let mut w = testing::warmed6(flows);
        eprintln!(
            "nat66: {flows} flows, {} table bytes/flow, {} bytes total",
            w.nat.table_bytes_per_flow6(),
            w.nat.memory_bytes()
        );
        let mut g = c.benchmark_group("nat/established6");
        g.throughput(Throughput::Elements(BATCH as u64));
        g.measurement_time(Duration::from_secs(if flows >= 1_000_000 { 4 } else { 3 }));
        g.warm_up_time(Duration::from_secs(1));
        g.sample_size(if flows >= 1_000_000 { 10 } else { 30 });
        let now = w.now;
        let mut cursor = 0;
        g.bench_function(format!("outbound/{flows}"), |b| {
            b.iter(|| run(&mut w.nat, &w.outbound, &mut cursor, now, Nat::outbound))
        });
        let partial = w.outbound.map(|p| {
            assert!(testing::make_partial6(p));
        });
        let mut cursor = 0;
        g.bench_function(format!("outbound_partial/{flows}"), |b| {
            b.iter(|| {
                run(&mut w.nat, &partial, &mut cursor, now, |n, p, t| {
                    n.outbound_with(p, t, L4Checksum::Partial)
                })
            })
        });
        let mut cursor = 0;
        g.bench_function(format!("inbound/{flows}"), |b| {
            b.iter(|| run(&mut w.nat, &w.inbound, &mut cursor, now, Nat::inbound))
        });
        let mut bufs = vec![vec![0u8; w.outbound.packet_len()]; BATCH];
        let mut verdicts = vec![Verdict::Forward; BATCH];
        let mut cursor = 0;
        g.bench_function(format!("outbound_batch/{flows}"), |b| {
            b.iter(|| {
                fill(&mut bufs, &w.outbound, &mut cursor);
                w.nat.outbound_batch(&mut bufs, now, &mut verdicts);
                assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
            })
        });
        let mut cursor = 0;
        g.bench_function(format!("inbound_batch/{flows}"), |b| {
            b.iter(|| {
                fill(&mut bufs, &w.inbound, &mut cursor);
                w.nat.inbound_batch(&mut bufs, now, &mut verdicts);
                assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
            })
        });
        g.finish();
    }
}

/// Translates the next `BATCH` packets (copied into a scratch buffer first,
/// so every iteration sees the original bytes).
/// `n` packets of distinct internal endpoints (250 guests × n/250 ports).
fn new_flow_packets(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let guest = SocketAddrV4::new(
                Ipv4Addr::new(192, 168, 64, 2 + (i % 250) as u8),
                20_000 + (i / 250) as u16,
            );
            testing::udp(guest, SocketAddrV4::new(SERVER, 443), &[0u8; 18])
        })
        .collect()
}

fn fresh_nat() -> Nat {
    testing::nat()
}

fn new_flows(c: &mut Criterion) {
    const N: usize = 20_000;
    let pkts = new_flow_packets(N);
    let mut g = c.benchmark_group("nat/new_flow");
    g.throughput(Throughput::Elements(N as u64));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    g.bench_function("udp_each_with_own_port", |b| {
        b.iter_batched(
            || (fresh_nat(), pkts.clone()),
            |(mut nat, mut pkts)| {
                for p in &mut pkts {
                    assert_eq!(nat.outbound(p, Instant::ZERO), Verdict::Forward);
                }
                nat
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn expire(c: &mut Criterion) {
    const N: usize = 20_000;
    let pkts = new_flow_packets(N);
    let mut g = c.benchmark_group("nat/expire");
    g.throughput(Throughput::Elements(N as u64));
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    let filled = || {
        let mut nat = fresh_nat();
        for p in &mut pkts.clone() {
            assert_eq!(nat.outbound(p, Instant::ZERO), Verdict::Forward);
        }
        nat
    };
    g.bench_function("remove_all_expired", |b| {
        b.iter_batched(
            filled,
            |mut nat| {
                let late = Instant::from_secs(100_000);
                let mut removed = 0;
                while removed < N {
                    removed += nat.expire(late, 1024);
                }
                nat
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("sweep_nothing_due", |b| {
        b.iter_batched(
            filled,
            |mut nat| {
                // Every flow is refreshed past the first deadline: a full sweep
                // that finds nothing to remove.
                let at = Instant::from_secs(300);
                for p in &mut pkts.clone() {
                    let _ = nat.outbound(p, Instant::from_secs(1));
                }
                let mut removed = 0;
                while nat.next_deadline().is_some_and(|d| d <= at) {
                    removed += nat.expire(at, 1024);
                }
                assert_eq!(removed, 0);
                nat
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, established, established6, new_flows, expire);
criterion_main!(benches);
