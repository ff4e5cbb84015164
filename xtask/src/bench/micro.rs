//! The criterion benches (`hostnet-benches`: `nat`, `bridge` and `wire`) and their medians, read from
//! `target/criterion/**/new/{estimates,benchmark}.json`.

use std::path::Path;
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::report::Micro;

/// Runs both benches (short settings when `quick`) and collects what they wrote.
pub(super) fn run(quick: bool) -> Result<Vec<Micro>> {
    let started = SystemTime::now();
    eprintln!(
        "bench: micro: cargo bench -p hostnet-benches --bench nat --bench bridge --bench wire"
    );
    let mut cmd = crate::cargo();
    cmd.args(["bench", "-p", "hostnet-benches"]);
    for bench in BENCHES {
        cmd.args(["--bench", bench]);
    }
    cmd.arg("--");
    if quick {
        // Criterion's quick mode: no warm-up, doubles the iterations until two runs agree
        // within 5 % (at least 100 ms). Unlike --measurement-time it also shortens groups
        // that set their own measurement time.
        cmd.args(["--quick", "--nresamples", "10000"]);
    }
    cmd.stdout(std::process::Stdio::null());
    let status = cmd.status().context("cargo bench: could not start")?;
    let mut out = Vec::new();
    collect(&target_dir().join("criterion"), started, &mut out);
    out.sort_by(|a, b| a.id.cmp(&b.id));
    if !status.success() {
        bail!(
            "cargo bench -p hostnet-benches failed ({status}; {} result(s) collected)",
            out.len()
        );
    }
    Ok(out)
}

/// The cargo target directory.
pub(super) fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target"))
}

fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Micro>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            if let Ok(m) = read_one(&path, since) {
                out.push(m);
            }
        } else {
            collect(&path, since, out);
        }
    }
}

fn read_one(dir: &Path, since: SystemTime) -> Result<Micro> {
    let est_path = dir.join("estimates.json");
    let fresh = std::fs::metadata(&est_path)?.modified()? >= since;
    if !fresh {
        bail!("stale");
    }
    let est: Value = serde_json::from_slice(&std::fs::read(&est_path)?)?;
    let bench: Value = serde_json::from_slice(&std::fs::read(dir.join("benchmark.json"))?)?;
    let median = &est["median"];
    let id = bench["full_id"]
        .as_str()
        .context("benchmark.json: no full_id")?
        .to_owned();
    let tp = &bench["throughput"];
    let throughput = tp["Elements"]
        .as_f64()
        .map(|n| (n, "elem"))
        .or_else(|| tp["Bytes"].as_f64().map(|n| (n, "B")))
        .or_else(|| {
            tp["ElementsAndBytes"]["elements"]
                .as_f64()
                .map(|n| (n, "elem"))
        });
    Ok(Micro {
        id,
        median_ns: median["point_estimate"].as_f64().context("no median")?,
        lower_ns: median["confidence_interval"]["lower_bound"]
            .as_f64()
            .unwrap_or(f64::NAN),
        upper_ns: median["confidence_interval"]["upper_bound"]
            .as_f64()
            .unwrap_or(f64::NAN),
        throughput,
    })
}

const BENCHES: &[&str] = &["nat", "bridge", "wire"];
