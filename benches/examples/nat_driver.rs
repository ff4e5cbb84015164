//! A standalone driver of the NAT's established-flow paths for valgrind
//! (cachegrind/callgrind): warms N flows, then runs R rounds of 1 024
//! packets of one path, as the criterion bench's `run` and `fill` do.
//!
//! `nat_driver PATH FLOWS ROUNDS [6]` with PATH one of `out`, `in`,
//! `out_batch`, `in_batch`; instructions per packet are the difference of
//! two runs (R and 0 rounds) divided by R × 1 024.
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
            let (n, len) = (w.outbound.count(), w.outbound.packet_len());
            let mut buf = [0u8; 64];
            let mut ok = 0;
            for _ in 0..BATCH {
                let scratch = &mut buf[..len];
                scratch.copy_from_slice(w.outbound.get(ncursor));
                ncursor = (ncursor + 1) % n;
                ok += usize::from(naive.outbound(black_box(scratch)));
            }
            assert_eq!(ok, BATCH);
            tn.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
            let b = std::time::Instant::now();
            ours(&path, &mut w, &mut cursor, &mut bufs, &mut verdicts, now);
            tp.push(b.elapsed().as_nanos() as f64 / BATCH as f64);
        }
        tn.sort_by(f64::total_cmp);
        tp.sort_by(f64::total_cmp);
        let (p10, med) = (rounds / 10, rounds / 2);
        println!(
            "{path} {flows}: naive/ours p10 {:.2} median {:.2} (ns/packet naive {:.1} {:.1}, ours {:.1} {:.1})",
            tn[p10] / tp[p10],
            tn[med] / tp[med],
            tn[p10],
            tn[med],
            tp[p10],
            tp[med]
        );
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
            "naive" => {
                let (n, len) = (w.outbound.count(), w.outbound.packet_len());
                let mut buf = [0u8; 64];
                let mut ok = 0;
                for _ in 0..BATCH {
                    let scratch = &mut buf[..len];
                    scratch.copy_from_slice(w.outbound.get(cursor));
                    cursor = (cursor + 1) % n;
                    ok += usize::from(naive.outbound(black_box(scratch)));
                }
                assert_eq!(ok, BATCH);
            }
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
