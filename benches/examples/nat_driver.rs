//! A standalone driver of the NAT's established-flow paths for valgrind
//! (cachegrind/callgrind): warms N flows, then runs R rounds of 1 024
//! packets of one path, as the criterion bench's `run` and `fill` do.
//!
//! `nat_driver PATH FLOWS ROUNDS [6]` with PATH one of `out`, `in`,
//! `out_batch`, `in_batch`; instructions per packet are the difference of
//! two runs (R and 0 rounds) divided by R × 1 024.
//!
//! `nat_driver PATH FLOWS ROUNDS 46` warms N flows of each family in two
//! NATs and times one round of NAT44 and one of NAT66 in turn, R times:
//! NAT66/NAT44 at the fastest tenth and at the median, from one process.
//! `nat_driver PATH FLOWS ROUNDS 6 vs` (or without `6`) does the same
//! against the naive baseline.
#![allow(missing_docs)]

use std::hint::black_box;

use nat::testing::{self, Packets};
use nat::{Instant, Nat, Verdict};

#[path = "../common/naive.rs"]
mod naive;
use naive::{BATCH, Naive, fill, run};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args.get(1).map_or("out", String::as_str).to_owned();
    let flows: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rounds: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(100);
    if args.get(4).is_some_and(|s| s == "46") {
        families(&path, flows, rounds);
        return;
    }
    let v6 = args.get(4).is_some_and(|s| s == "6");
    let mut w = if v6 {
        testing::warmed6(flows)
    } else {
        testing::warmed(flows)
    };
    let now = w.now;
    let mut cursor = 0;
    let empty = Packets::default();
    let mut bufs = vec![vec![0u8; w.outbound.packet_len()]; BATCH];
    let mut verdicts = vec![Verdict::Forward; BATCH];
    let vs = args.get(5).is_some_and(|s| s == "vs");
    let mut naive = Naive::new(if path == "naive" || vs {
        &w.outbound
    } else {
        &empty
    });
    if vs {
        // One naive batch and one batch of `path` in turn; the ratio of
        // the fastest tenth and of the medians.
        let (mut tn, mut tp) = (Vec::new(), Vec::new());
        let mut ncursor = 0;
        for _ in 0..rounds {
            let b = std::time::Instant::now();
            naive.round(&w.outbound, &mut ncursor);
            tn.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
            let b = std::time::Instant::now();
            ours(&path, &mut w, &mut cursor, &mut bufs, &mut verdicts, now);
            tp.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
        }
        compare(&format!("{path} {flows}"), ("naive", tn), ("ours", tp));
        return;
    }
    let t = std::time::Instant::now();
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let b = std::time::Instant::now();
        match path.as_str() {
            "out" | "in" | "out_batch" | "in_batch" => {
                ours(&path, &mut w, &mut cursor, &mut bufs, &mut verdicts, now);
            }
            "naive" => naive.round(&w.outbound, &mut cursor),
            _ => panic!("unknown path {path}"),
        }
        times.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    times.sort_by(f64::total_cmp);
    let e = t.elapsed();
    if rounds > 0 {
        eprintln!(
            "{path} {flows}: {:.1} ns/packet mean, {:.1} p10, {:.1} median",
            e.as_nanos() as f64 / (rounds * BATCH) as f64,
            times[rounds / 10],
            times[rounds / 2]
        );
    }
    black_box(&w.nat);
}

/// One round of our `path` (`out`, `in`, `out_batch`, `in_batch`) on `w`'s warmed flows.
fn ours(
    path: &str,
    w: &mut testing::Warmed,
    cursor: &mut usize,
    bufs: &mut [Vec<u8>],
    verdicts: &mut [Verdict],
    now: Instant,
) {
    match path {
        "out" => {
            run(&mut w.nat, &w.outbound, cursor, now, Nat::outbound);
        }
        "in" => {
            run(&mut w.nat, &w.inbound, cursor, now, Nat::inbound);
        }
        "out_batch" => {
            fill(bufs, &w.outbound, cursor);
            w.nat.outbound_batch(bufs, now, verdicts);
            assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
        }
        "in_batch" => {
            fill(bufs, &w.inbound, cursor);
            w.nat.inbound_batch(bufs, now, verdicts);
            assert!(verdicts.iter().all(|v| *v == Verdict::Forward));
        }
        _ => panic!("unknown path {path}"),
    }
}

/// NAT66 against NAT44 on `path`, one round of each in turn.
fn families(path: &str, flows: usize, rounds: usize) {
    let mut w4 = testing::warmed(flows);
    let mut w6 = testing::warmed6(flows);
    let (now4, now6) = (w4.now, w6.now);
    let (mut c4, mut c6) = (0, 0);
    let mut bufs4 = vec![vec![0u8; w4.outbound.packet_len()]; BATCH];
    let mut bufs6 = vec![vec![0u8; w6.outbound.packet_len()]; BATCH];
    let mut verdicts = vec![Verdict::Forward; BATCH];
    let (mut t4, mut t6) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let b = std::time::Instant::now();
        ours(path, &mut w4, &mut c4, &mut bufs4, &mut verdicts, now4);
        t4.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
        let b = std::time::Instant::now();
        ours(path, &mut w6, &mut c6, &mut bufs6, &mut verdicts, now6);
        t6.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    compare(&format!("{path} {flows}"), ("nat66", t6), ("nat44", t4));
    black_box((&w4.nat, &w6.nat));
}

/// Prints `a`/`b` at the fastest tenth and at the median of two runs' ns per packet, and
/// both runs' figures.
fn compare(what: &str, (na, mut a): (&str, Vec<f64>), (nb, mut b): (&str, Vec<f64>)) {
    if a.is_empty() || b.is_empty() {
        return;
    }
    a.sort_by(f64::total_cmp);
    b.sort_by(f64::total_cmp);
    let (p10, med) = (a.len() / 10, a.len() / 2);
    println!(
        "{what}: {na}/{nb} p10 {:.3} median {:.3} (ns/packet {na} {:.1} {:.1}, {nb} {:.1} {:.1})",
        a[p10] / b[p10],
        a[med] / b[med],
        a[p10],
        a[med],
        b[p10],
        b[med]
    );
}
