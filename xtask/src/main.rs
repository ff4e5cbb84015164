//! `cargo xtask`: project automation (replaces a `ci.sh`/Makefile).
//!
//! - `cargo xtask demo`  — the main job: a simulated guest gets a lease by DHCP and reaches a server through our NAT.
//! - `cargo xtask test`  — every test; privileged ones (`#[ignore = "needs CAP_NET_ADMIN"]`) whenever this process
//!   can create network namespaces, otherwise says loudly how many it did not run.
//! - `cargo xtask ci`    — fmt, clippy (host + both Apple targets), test, doc, dependency direction, fuzz smoke,
//!   bench build.
//! - `cargo xtask bench [--quick]` — our stack against the kernel, pasta and slirp4netns, and hostnetd
//!   against passt's vhost-user mode (the same simulated guest as their frontend).
//! - `cargo xtask deps`  — the dependency-direction check of docs/ARCHITECTURE.md.
//! - `cargo xtask fuzz [SECONDS]` — runs each fuzz target for SECONDS (default 30), one per core at a time.

mod bench;
mod demo;
mod guest;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("guest-image") => guest::run(&args[1..]),
        Some("ci") => ci(),
        Some("deps") => deps(),
        Some("features") => features(),
        Some("fuzz") => fuzz(args.get(1).map(String::as_str)),
        Some("bench") => bench::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown subcommand {other:?}\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}

const USAGE: &str = "usage: cargo xtask <command>
  demo           a simulated guest gets a DHCP lease and reaches a server through hostnet (needs root)
  test           run every test (privileged ones too when this process can create network namespaces)
  ci             fmt, clippy (host, aarch64-apple-darwin, x86_64-apple-darwin), deps, features, doc, benches (--quick), fuzz smoke, test
  guest-image    build (or reuse) the real Linux guest used by the QEMU tests, under target/guest/
  bench [--quick]  hostnet against the kernel, pasta and slirp4netns, hostnetd against passt --vhost-user (tables, JSON and SVG under target/bench/)
  deps           check the dependency direction of docs/ARCHITECTURE.md
  features       check each library crate alone with each of its features
  fuzz [SECS]    run each fuzz target for SECS seconds, one per core at a time (default 30; needs the nightly toolchain and cargo-fuzz)";

/// The Apple targets the macOS code is type-checked for.
const APPLE_TARGETS: [&str; 2] = ["aarch64-apple-darwin", "x86_64-apple-darwin"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(step: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("\n==> {step}");
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    eprintln!("==> {step}: ok ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn test(extra: &[String]) -> Result<()> {
    // The privileged tests drive real programs (ping, DHCP clients, curl, dig, iperf3): install the
    // Debian packages they need when they are missing (as root; otherwise it prints what to install).
    run(
        "install test tools (.ci/setup --packages-only)",
        Command::new(root().join(".ci/setup")).arg("--packages-only"),
    )?;
    // Whether this process may create network namespaces (root or CAP_NET_ADMIN, `ip` installed).
    let privileged = netns::available();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--locked"])
        .args(extra)
        .arg("--");
    if privileged {
        cmd.arg("--include-ignored");
        eprintln!(
            "xtask test: this process can create network namespaces: running privileged tests too"
        );
        return run("cargo test --workspace -- --include-ignored", &mut cmd);
    }
    // Unprivileged: run, capture the summary lines, and count what was not run.
    eprintln!(
        "xtask test: cannot create network namespaces (not root / no CAP_NET_ADMIN, or no `ip`)"
    );
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test: could not start")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let ignored: u64 = stdout
        .lines()
        .filter(|l| l.starts_with("test result:"))
        .filter_map(|l| {
            let i = l.find(" ignored")?;
            l[..i].rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    eprintln!();
    eprintln!("############################################################################");
    eprintln!("##  NOT RUN: {ignored} privileged test(s) (#[ignore = \"needs CAP_NET_ADMIN\"]).");
    eprintln!("##  They need root or CAP_NET_ADMIN to create network namespaces and TUN/TAP");
    eprintln!("##  devices. Run `sudo -E cargo xtask test` to run them. CI runs them as root.");
    eprintln!("############################################################################");
    if !output.status.success() {
        bail!("cargo test failed ({})", output.status);
    }
    Ok(())
}

fn ci() -> Result<()> {
    let started = Instant::now();
    run(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run(
        "clippy (host)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    for target in APPLE_TARGETS {
        run(
            &format!("clippy ({target})"),
            cargo().args([
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--locked",
                "--target",
                target,
                "--",
                "-D",
                "warnings",
            ]),
        )?;
    }
    deps()?;
    features()?;
    run(
        "cargo doc",
        cargo()
            .args([
                "doc",
                "--workspace",
                "--no-deps",
                "--all-features",
                "--locked",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // The benches are built and run once, short, so that they cannot rot: `bench --quick`
    // compiles every criterion bench of `hostnet-benches` (the workspace's only bench target;
    // library crates set `bench = false`) and runs the end-to-end part (needs root for
    // namespaces; without root it runs the micro benches only and says so). A separate
    // `cargo bench --workspace --no-run` would build the same benches a second time with
    // other features unified (minutes of CI).
    bench::run(&["--quick".to_owned()])?;
    fuzz(Some("20"))?;
    test(&[])?;
    eprintln!(
        "\nxtask ci: all steps passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Each library crate alone, with no default features and then with each feature on its own
/// (what `cargo hack check --each-feature --no-dev-deps` does): embedders take our crates one at
/// a time, so no crate may lean on another's features being unified in.
fn features() -> Result<()> {
    for (krate, features) in FEATURES {
        for feature in std::iter::once("").chain(features.iter().copied()) {
            let mut cmd = cargo();
            cmd.args(["check", "--locked", "-p", krate, "--no-default-features"]);
            if !feature.is_empty() {
                cmd.args(["--features", feature]);
            }
            run(
                &format!("check -p {krate} --features [{feature}]"),
                &mut cmd,
            )?;
        }
    }
    Ok(())
}

/// The library crates and their features (checked one at a time by `features`).
const FEATURES: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("utun-sys", &[]),
    ("utun", &["vm-memory"]),
    ("nat", &["tracing", "test-utils"]),
    ("bridge", &["utun", "driver", "test-utils"]),
];

/// docs/ARCHITECTURE.md's table: which crate must not depend on which.
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "wire",
        &[
            "utun-sys", "utun", "nat", "bridge", "testbed", "hostnetd", "libc",
        ],
    ),
    (
        "utun-sys",
        &["utun", "nat", "bridge", "testbed", "netns", "hostnetd"],
    ),
    ("utun", &["nat", "bridge", "testbed", "netns", "hostnetd"]),
    (
        "nat",
        &[
            "libc",
            "utun",
            "utun-sys",
            "bridge",
            "testbed",
            "netns",
            "crossbeam-channel",
            "crossbeam-utils",
            "hostnetd",
        ],
    ),
    // `netns` (dev only) may be a dev-dependency of the library crates, never a normal one.
    ("bridge", &["testbed", "netns", "hostnetd"]),
];

fn deps() -> Result<()> {
    eprintln!("\n==> dependency direction (docs/ARCHITECTURE.md)");
    for (krate, forbidden) in FORBIDDEN {
        let out = cargo()
            .args([
                "tree", "--locked", "-p", krate, "-e", "normal", "--prefix", "none", "--target",
                "all",
            ])
            .output()
            .with_context(|| format!("cargo tree -p {krate}"))?;
        if !out.status.success() {
            bail!(
                "cargo tree -p {krate} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let tree = String::from_utf8_lossy(&out.stdout);
        let names: Vec<&str> = tree
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let bad: Vec<&&str> = forbidden.iter().filter(|f| names.contains(f)).collect();
        if !bad.is_empty() {
            bail!("{krate} depends on {bad:?}, which docs/ARCHITECTURE.md forbids");
        }
        eprintln!("    {krate}: ok (none of {forbidden:?})");
    }
    Ok(())
}

/// Fuzz targets that create a network namespace and a TUN.
const PRIVILEGED_FUZZ_TARGETS: &[&str] = &["vhost_user_backend"];

fn fuzz(seconds: Option<&str>) -> Result<()> {
    let seconds: u64 = seconds
        .unwrap_or("30")
        .parse()
        .context("fuzz: SECONDS must be a number")?;
    let fuzz_dir = root().join("fuzz");
    if !fuzz_dir.join("Cargo.toml").exists() {
        eprintln!("\n==> fuzz: no fuzz/ crate yet; nothing to run");
        return Ok(());
    }
    let have_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !have_fuzz {
        bail!(
            "fuzz: needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`); .ci/run installs it"
        );
    }
    let list = Command::new("cargo")
        .args(["+nightly", "fuzz", "list"])
        .current_dir(&fuzz_dir)
        .output()
        .context("cargo fuzz list")?;
    let targets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    // Targets that serve a connection over a real TUN need a network namespace of their own.
    let privileged = netns::available();
    let mut runs = Vec::new();
    for t in &targets {
        if PRIVILEGED_FUZZ_TARGETS.contains(&t.as_str()) && !privileged {
            eprintln!(
                "\n##  NOT RUN: fuzz target {t} (it needs CAP_NET_ADMIN: a network namespace and a TUN)."
            );
            continue;
        }
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            // The detached fuzz workspace must not inherit our pinned stable toolchain.
            .env_remove("RUSTUP_TOOLCHAIN")
            // Our crates are safe Rust: AddressSanitizer would only slow the search (~60x).
            .args(["+nightly", "fuzz", "run", "--sanitizer", "none", t]);
        let corpus = fuzz_dir.join("corpus").join(t);
        std::fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
        cmd.arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(t);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-rss_limit_mb=2048",
            // A hang is a failure too: one input taking 10 s is one.
            "-timeout=10",
        ]);
        runs.push((format!("fuzz {t} ({seconds} s)"), cmd));
    }
    // Every target is built once, first (one `cargo fuzz build` for all of them); then a
    // libFuzzer process per core runs at a time (each is single-threaded), each one's output
    // printed whole when it ends.
    run(
        "fuzz build (all targets)",
        Command::new("cargo")
            .current_dir(&fuzz_dir)
            .env_remove("RUSTUP_TOOLCHAIN")
            .args(["+nightly", "fuzz", "build", "--sanitizer", "none"]),
    )?;
    let jobs = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let logs = fuzz_dir.join("target").join("xtask-fuzz-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    run_at_once(runs, jobs, &logs)
}

/// Runs `steps` with at most `jobs` at a time, each one's stdout and stderr into a file under
/// `logs` that is printed when it ends; stops starting new ones after the first failure and
/// fails once the running ones ended.
fn run_at_once(steps: Vec<(String, Command)>, jobs: usize, logs: &Path) -> Result<()> {
    struct Running {
        step: String,
        child: std::process::Child,
        log: PathBuf,
        started: Instant,
    }
    let mut pending = steps.into_iter().enumerate();
    let mut running: Vec<Running> = Vec::new();
    let mut failed: Option<String> = None;
    loop {
        while failed.is_none() && running.len() < jobs.max(1) {
            let Some((i, (step, mut cmd))) = pending.next() else {
                break;
            };
            let log = logs.join(format!("{i}.log"));
            let out =
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let err = out.try_clone().context("log file")?;
            eprintln!("\n==> {step}: started (output below when it ends)");
            let child = cmd
                .stdout(out)
                .stderr(err)
                .spawn()
                .with_context(|| format!("{step}: could not start"))?;
            running.push(Running {
                step,
                child,
                log,
                started: Instant::now(),
            });
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        let mut k = 0;
        while k < running.len() {
            let Some(status) = running[k].child.try_wait().context("waiting for a step")? else {
                k += 1;
                continue;
            };
            let r = running.swap_remove(k);
            eprintln!("\n==> {}", r.step);
            match std::fs::read(&r.log) {
                Ok(text) => eprint!("{}", String::from_utf8_lossy(&text)),
                Err(e) => eprintln!("(its output in {} is unreadable: {e})", r.log.display()),
            }
            if status.success() {
                eprintln!(
                    "==> {}: ok ({:.1} s)",
                    r.step,
                    r.started.elapsed().as_secs_f64()
                );
            } else {
                eprintln!("==> {} failed ({status})", r.step);
                failed.get_or_insert(format!("{} failed ({status})", r.step));
            }
        }
    }
    match failed {
        Some(f) => bail!(f),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn steps_run_two_at_a_time_and_a_failure_fails_the_run_once_the_others_ended() {
        let dir = std::env::temp_dir().join(format!("xtask-at-once-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("second-ran");
        let steps = vec![
            // Exits 3 once the second step has run (so both ran at once), else 4 after 5 s.
            (
                "fails".to_owned(),
                sh(&format!(
                    "for i in $(seq 100); do [ -e {m} ] && exit 3; sleep 0.05; done; exit 4",
                    m = marker.display()
                )),
            ),
            (
                "runs beside it".to_owned(),
                // Ends well after the first failed: its end starts nothing.
                sh(&format!("sleep 0.3; touch {}; sleep 2", marker.display())),
            ),
            ("never starts".to_owned(), sh("exit 0")),
        ];
        let err = run_at_once(steps, 2, &dir).unwrap_err().to_string();
        assert!(err.contains("fails failed (exit status: 3)"), "{err}");
        // After the failure nothing new started: its log file was never made.
        assert!(!dir.join("2.log").exists());
        run_at_once(vec![("ok".to_owned(), sh("exit 0"))], 2, &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
