//! `cargo xtask bench`: our stack against the kernel, pasta and slirp4netns, in one run (issue 6).
//!
//! 1. Micro: `cargo bench -p hostnet-benches --bench nat` and `--bench bridge`, medians collected
//!    from criterion's `target/criterion/**/new/estimates.json`.
//! 2. End to end: for each guest MTU and each backend (`kernel`, `pasta`, `slirp4netns`,
//!    `hostnet`, `hostnet-mq2` (hostnet with two queue pairs, issue 15), and the vhost-user daemons `hostnetd`, `hostnetd-mq2` (`hostnetd --queues 2`) and `passt-vhost-user` behind the same
//!    simulated guest, `hostnet-lab attach --vhost-user`), a fresh guest/host/server namespace trio (see `e2e.rs`), then iperf3 TCP
//!    (1 and 4 streams, both directions), iperf3 UDP 64-byte packets, and, pinned to one CPU,
//!    ping, a TCP 1-byte request/response and connect/request/response/close. The TCP and
//!    request/response figures also over IPv6 (issue 13), each right after its IPv4 twin in the
//!    same world. Every figure is the median of `--reps` runs with its spread, and is shown as
//!    a ratio to `kernel` and to `pasta` of the same run; IPv6 figures also to their IPv4 twin.
//!    The guest-to-guest world (issue 14, `--only g2g`, not in `--quick`): two guest
//!    namespaces on one network (`kernel`: a Linux bridge with two veths; `hostnet`: one
//!    `hostnet-lab attach` with both, `--threads pairs`: a thread per guest), iperf3 TCP G → G2 and back with 1 and 4 streams, the
//!    pinned round trip G → G2, and hostnet's TCP G → S with G alone against G with a second
//!    idle guest attached, alternated.
//! 3. Output: a table on the terminal (also `target/bench/bench.txt`), `target/bench/bench.json`
//!    and `target/bench/bench.svg`. Backend logs are in `target/bench/logs/`.
//!
//! Hidden subcommands used by the bench itself inside the namespaces:
//! `xtask bench --serve PORT` and `xtask bench --client rr|crr ADDR SECONDS`.

mod e2e;
mod micro;
mod report;
mod rr;
mod sys;
mod tools;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

use e2e::{Backend, Busy, Env, World};
use report::Results;

/// Runs the bench (or one of its hidden helper roles).
pub(crate) fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("--serve") => return rr::serve(args.get(1).map_or("", String::as_str)),
        Some("--client") => return rr::client(&args[1..]),
        _ => {}
    }
    let opts = Options::parse(args)?;
    if opts.help {
        println!("{HELP}");
        return Ok(());
    }
    let started = Instant::now();
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| micro::target_dir().join("bench"));
    std::fs::create_dir_all(out_dir.join("logs"))
        .with_context(|| format!("create {}", out_dir.display()))?;
    let mut e2e = opts.e2e && !opts.backends.is_empty();
    if e2e && !(cfg!(target_os = "linux") && tools::is_root()) {
        eprintln!("############################################################################");
        eprintln!("##  NOT RUN: the end-to-end part of the bench. It needs Linux and root (it");
        eprintln!("##  creates network namespaces and TAP/TUN devices): run");
        eprintln!("##  `sudo -E env PATH=\"$PATH\" cargo xtask bench`. Micro benches only.");
        eprintln!("############################################################################");
        e2e = false;
    }
    let mut results = Results {
        mtus: if e2e { opts.mtus.clone() } else { Vec::new() },
        backends: if e2e {
            opts.backends.clone()
        } else {
            Vec::new()
        },
        ..Results::default()
    };
    eprintln!(
        "bench: {} — {} × {} s per throughput figure, {} s per latency figure, MTUs {:?}, backends {}",
        if opts.quick { "quick" } else { "full" },
        opts.reps,
        opts.secs,
        opts.lat_secs,
        opts.mtus,
        opts.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(", ")
    );

    if opts.micro {
        match micro::run(opts.quick) {
            Ok(m) => results.micro = m,
            Err(e) => {
                eprintln!("bench: micro: FAILED: {e:#}");
                results.micro_error = Some(format!("{e:#}"));
            }
        }
    }

    let mut tuning = String::new();
    if e2e {
        let env = prepare(&opts, &out_dir, &mut results)?;
        tuning = format!(
            "{}; {}; latency figures pinned to CPU {}; TCP congestion control of the iperf3 \
             flows: {}",
            e2e::TUNING,
            e2e::ROUTING,
            env.pin_cpu
                .map_or_else(|| "none (one CPU)".to_owned(), |c| c.to_string()),
            env.tcp_cc.as_deref().map_or_else(
                || format!("the namespaces' default ({})", e2e::default_cc()),
                |c| format!("{c} (iperf3 -C, both ends)")
            )
        );
        end_to_end(&opts, &env, &mut results, started);
    }

    let table = results.table();
    let targets = results.targets();
    let mut text = table.clone();
    if !targets.is_empty() {
        text.push_str("\ntargets (ratios from this run)\n");
        for (what, ok, detail) in &targets {
            let mark = match ok {
                Some(true) => "met    ",
                Some(false) => "MISSED ",
                None => "n/a    ",
            };
            text.push_str(&format!("  {mark} {what}: {detail}\n"));
        }
    }
    if !tuning.is_empty() {
        text.push_str(&format!("\ntuning and topology: {tuning}\n"));
    }
    let meta = json!({
        "mode": if opts.quick { "quick" } else { "full" },
        "reps": opts.reps,
        "throughput_seconds": opts.secs,
        "latency_seconds": opts.lat_secs,
        "mtus": opts.mtus,
        "tuning": tuning,
        "cpus": std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "finished_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "duration_seconds": started.elapsed().as_secs_f64(),
    });
    let json_path = out_dir.join("bench.json");
    let svg_path = out_dir.join("bench.svg");
    let txt_path = out_dir.join("bench.txt");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&results.json(meta))?,
    )?;
    std::fs::write(
        &svg_path,
        results.svg(&format!(
            "{} run, medians of {} x {} s; whiskers: min..max",
            if opts.quick { "quick" } else { "full" },
            opts.reps,
            opts.secs
        )),
    )?;
    std::fs::write(&txt_path, &text)?;
    println!("{text}");
    eprintln!(
        "bench: done in {:.0} s; wrote {}, {}, {}",
        started.elapsed().as_secs_f64(),
        txt_path.display(),
        json_path.display(),
        svg_path.display()
    );

    // The harness itself must work: the kernel reference and the micro benches.
    if let Some(e) = &results.micro_error {
        bail!("micro benches failed: {e}");
    }
    let kernel_failed: Vec<u32> = opts
        .mtus
        .iter()
        .copied()
        .filter(|&m| results.failed.contains_key(&(m, Backend::Kernel)))
        .collect();
    if e2e && opts.backends.contains(&Backend::Kernel) && !kernel_failed.is_empty() {
        bail!("the kernel reference failed at MTU {kernel_failed:?}: the harness is broken");
    }
    if let Some(((mtu, _), why)) = results
        .pair_failed
        .iter()
        .find(|((_, b), _)| *b == Backend::Kernel)
    {
        bail!("the kernel's guest-to-guest reference failed at MTU {mtu}: {why}");
    }
    Ok(())
}

/// Tools, the hostnet-lab binary, and stale namespaces.
fn prepare(opts: &Options, out_dir: &std::path::Path, results: &mut Results) -> Result<Env> {
    let missing = tools::ensure();
    for &b in &opts.backends {
        let lacking: Vec<&str> = ["ip", "iperf3"]
            .iter()
            .chain(b.needs())
            .copied()
            .filter(|t| missing.contains(t))
            .collect();
        if !lacking.is_empty() {
            for &mtu in &opts.mtus {
                results
                    .failed
                    .insert((mtu, b), format!("missing {}", lacking.join(", ")));
            }
        }
    }
    for name in netns::remove_stale("bench-") {
        eprintln!("bench: removed stale namespace {name}");
    }
    let wants = |b: Backend| opts.backends.contains(&b);
    let need_lab = wants(Backend::Hostnet)
        || wants(Backend::HostnetMq)
        || wants(Backend::Hostnetd)
        || wants(Backend::HostnetdMq)
        || wants(Backend::PasstVu);
    let wants_hostnetd = wants(Backend::Hostnetd) || wants(Backend::HostnetdMq);
    let need_hostnetd = wants_hostnetd && opts.hostnetd.is_none();
    let built = if (need_lab && opts.lab.is_none()) || need_hostnetd {
        build_ours(need_lab && opts.lab.is_none(), need_hostnetd)
    } else {
        Ok(())
    };
    let ours = |given: &Option<PathBuf>, wanted: bool, bin: &str| -> Result<PathBuf, String> {
        if !wanted {
            return Err("not selected".to_owned());
        }
        if let Some(p) = given {
            return Ok(p.clone());
        }
        built.clone()?;
        let path = micro::target_dir().join("release").join(bin);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!("{} missing after the build", path.display()))
        }
    };
    let lab = ours(&opts.lab, need_lab, "hostnet-lab");
    let hostnetd = ours(&opts.hostnetd, wants_hostnetd, "hostnetd");
    if let (true, Err(e)) = (need_lab, &lab) {
        eprintln!("bench: hostnet-lab: {e}");
    }
    if let (true, Err(e)) = (wants_hostnetd, &hostnetd) {
        eprintln!("bench: hostnetd: {e}");
    }
    let passt = if !wants(Backend::PasstVu) {
        Err("not selected".to_owned())
    } else if let Some(p) = &opts.passt {
        if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!("--passt {}: no such file", p.display()))
        }
    } else {
        tools::build_passt(&micro::target_dir().join("bench-peers"))
    };
    for (b, r) in [
        (Backend::Hostnet, &lab),
        (Backend::HostnetMq, &lab),
        (Backend::Hostnetd, &lab),
        (Backend::Hostnetd, &hostnetd),
        (Backend::HostnetdMq, &lab),
        (Backend::HostnetdMq, &hostnetd),
        (Backend::PasstVu, &lab),
        (Backend::PasstVu, &passt),
    ] {
        if let (true, Err(e)) = (wants(b), r) {
            for &mtu in &opts.mtus {
                results
                    .failed
                    .entry((mtu, b))
                    .or_insert_with(|| format!("skipped: {e}"));
            }
        }
    }
    if let Err(e) = &passt
        && wants(Backend::PasstVu)
    {
        eprintln!("bench: passt-vhost-user: SKIPPED: {e}");
    }
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let pin_cpu = (cpus >= 2 && !missing.contains("taskset")).then(|| (cpus - 1) as u32);
    Ok(Env {
        exe: std::env::current_exe().context("the xtask binary's path")?,
        lab,
        hostnetd,
        passt,
        logs: out_dir.join("logs"),
        pin_cpu,
        tcp_cc: opts.cc.clone().filter(|cc| {
            let ok = e2e::available_cc().iter().any(|a| a == cc);
            if !ok {
                eprintln!(
                    "bench: TCP congestion control {cc:?} is not available here ({}): the \
                     iperf3 flows use the namespaces' default ({})",
                    e2e::available_cc().join(" "),
                    e2e::default_cc()
                );
            }
            ok
        }),
    })
}

/// Builds (release) `hostnet-lab` and/or `hostnetd`.
fn build_ours(lab: bool, hostnetd: bool) -> Result<(), String> {
    let mut args = vec!["build", "--release"];
    if lab {
        args.extend(["-p", "testbed", "--bin", "hostnet-lab"]);
    }
    if hostnetd {
        args.extend(["-p", "hostnetd", "--bin", "hostnetd"]);
    }
    let what = format!("cargo {}", args.join(" "));
    eprintln!("bench: {what}");
    let out = crate::cargo()
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
        .map_err(|e| format!("cargo build: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first_error = err
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or("see the build's output");
        return Err(format!("{what} failed: {first_error}"));
    }
    Ok(())
}

fn end_to_end(opts: &Options, env: &Env, results: &mut Results, started: Instant) {
    let mut tests = Vec::new();
    for test in Test::list() {
        match test.selected(opts) {
            Ok(()) => tests.push(test),
            Err(why) => {
                eprintln!("bench: not run: {} ({why})", test.name());
                for k in test.keys() {
                    results.not_run.insert(k, why.to_owned());
                }
            }
        }
    }
    // Backends that cannot run at all (missing tools, not built) before any world is made.
    let unusable: BTreeSet<(u32, Backend)> = results.failed.keys().copied().collect();
    for &mtu in &opts.mtus {
        for pair in [false, true] {
            let tests: Vec<Test> = tests.iter().copied().filter(|t| t.pair() == pair).collect();
            if tests.is_empty() {
                continue;
            }
            for &b in &opts.backends {
                if unusable.contains(&(mtu, b)) || (!pair && results.failed.contains_key(&(mtu, b)))
                {
                    continue;
                }
                if pair && let Err(why) = b.pairs() {
                    for k in tests.iter().flat_map(|t| t.keys()) {
                        results.fail(mtu, b, k, format!("skipped: {why}"));
                    }
                    continue;
                }
                run_world(opts, env, results, started, (mtu, b, pair), &tests);
            }
        }
    }
}

/// One world (`pair`: the guest-to-guest world) of backend `b` at `mtu`, and `tests` in it.
fn run_world(
    opts: &Options,
    env: &Env,
    results: &mut Results,
    started: Instant,
    (mtu, b, pair): (u32, Backend, bool),
    tests: &[Test],
) {
    let say = |what: &str| {
        eprintln!(
            "[{:6.1} s] MTU {mtu:>5} {:<15} {what}",
            started.elapsed().as_secs_f64(),
            format!("{}{}", b.name(), if pair { " g2g" } else { "" })
        );
    };
    say("setting up");
    let mut world = match World::up(b, mtu, env, pair) {
        Ok(w) => w,
        Err(e) => {
            let why = format!("{e:#}");
            say(&format!("FAILED: {why}"));
            let log = env.logs.join(e2e::log_name(b, mtu, pair));
            if pair {
                let why = format!("the guest-to-guest world failed: {why}");
                for k in tests.iter().flat_map(|t| t.keys()) {
                    results.fail(mtu, b, k, why.clone());
                }
                results.pair_failed.insert((mtu, b), why);
            } else {
                results.failed.insert((mtu, b), why);
                if let Ok(text) = std::fs::read_to_string(log) {
                    results.logs.insert((mtu, b), tail(&text, 40));
                }
            }
            return;
        }
    };
    if let (false, Some(tap)) = (pair, world.guest_tap()) {
        results.guest_tap.insert((mtu, b), tap);
    }
    if let Some(n) = world.negotiated() {
        say(&format!("negotiated {n}"));
        results.negotiated.insert((mtu, b), n);
    }
    match world.ipv6() {
        Ok(()) => say("IPv6 path checked"),
        Err(why) => say(&format!("IPv6 figures not measured: {why}")),
    }
    let mut stalled: Option<String> = None;
    for test in tests {
        if let Some(why) = &stalled {
            for k in test.keys() {
                results.fail(mtu, b, k, why.clone());
            }
            continue;
        }
        if let Err(why) = test.applies(b) {
            for k in test.keys() {
                results.fail(mtu, b, k, format!("skipped: {why}"));
            }
            continue;
        }
        if test.v6()
            && let Err(why) = world.ipv6()
        {
            for k in test.keys() {
                results.fail(mtu, b, k, why.to_owned());
            }
            continue;
        }
        if test.pinned()
            && let Err(e) = world.pin(env)
        {
            say(&format!("pinning failed: {e:#}"));
        }
        for rep in 1..=opts.reps {
            if !world.backend_alive() {
                let why = format!("{} died during the run", b.name());
                for k in test.keys() {
                    results.fail(mtu, b, k, why.clone());
                }
                break;
            }
            match test.measure(&mut world, env, opts) {
                Ok((values, note)) => {
                    if let Some(note) = note {
                        results.threads.insert((mtu, b, test.name()), note);
                    }
                    let shown: Vec<String> = values
                        .iter()
                        .map(|(k, v)| {
                            results.push(mtu, b, k, *v);
                            format!("{k} {v:.3}")
                        })
                        .collect();
                    say(&format!(
                        "{} {rep}/{}: {}",
                        test.name(),
                        opts.reps,
                        shown.join(", ")
                    ));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    say(&format!(
                        "{} {rep}/{}: FAILED: {why}",
                        test.name(),
                        opts.reps
                    ));
                    for k in test.keys() {
                        results.fail(mtu, b, k, why.clone());
                    }
                    // A stalled backend would make every later run wait for its time
                    // limit: check once and skip the rest when it no longer carries
                    // a TCP round trip.
                    if !world.healthy(env) {
                        let why = format!(
                            "skipped: {} stopped carrying traffic during {}",
                            b.name(),
                            test.name()
                        );
                        say(&why);
                        stalled = Some(why);
                        break;
                    }
                }
            }
        }
    }
    if let Some(tail) = world.stop() {
        if pair {
            results.pair_logs.insert((mtu, b), tail);
        } else {
            results.logs.insert((mtu, b), tail);
        }
    }
    drop(world);
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Figures of one run, and an optional note (busy threads).
type Measured = (Vec<(&'static str, f64)>, Option<String>);

/// One kind of measurement; each gives one or more figures. `v6`: over IPv6 (issue 13).
/// The `G2g*` ones and `SecondGuest` run in the guest-to-guest world (issue 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Test {
    Tcp {
        reverse: bool,
        streams: u32,
        v6: bool,
    },
    /// iperf3 TCP from G to S, 1 stream, paced at [`report::PACED_GBPS`]: the backends' CPU
    /// per GB at the same offered rate (issue 17: passt's unpaced upload stalls).
    TcpPaced,
    Udp64,
    Ping,
    Rr {
        v6: bool,
    },
    Crr,
    /// iperf3 TCP from G to G2 (`reverse`: G2 to G).
    G2gTcp {
        reverse: bool,
        streams: u32,
    },
    /// TCP 1-byte round trip G to G2, pinned.
    G2gRr,
    /// hostnet: TCP G to S, 1 stream, on an attach with G alone and then with G2 attached
    /// too (leased, idle), alternated.
    SecondGuest,
}

impl Test {
    /// Every measurement in run order: each IPv6 one right after its IPv4 twin, so that the
    /// pair sees the same machine load.
    fn list() -> Vec<Self> {
        let mut v = Vec::new();
        for streams in [1, 4] {
            for reverse in [false, true] {
                for v6 in [false, true] {
                    v.push(Self::Tcp {
                        reverse,
                        streams,
                        v6,
                    });
                }
            }
        }
        v.extend([
            Self::TcpPaced,
            Self::Udp64,
            Self::Ping,
            Self::Rr { v6: false },
            Self::Rr { v6: true },
            Self::Crr,
        ]);
        // The guest-to-guest world: throughput first (unpinned), the second-guest figure
        // (it restarts hostnet's attach, unpinned), the pinned round trip last.
        for streams in [1, 4] {
            for reverse in [false, true] {
                v.push(Self::G2gTcp { reverse, streams });
            }
        }
        v.extend([Self::SecondGuest, Self::G2gRr]);
        v
    }

    /// Whether it runs in the guest-to-guest world (two guests on one network).
    fn pair(self) -> bool {
        matches!(self, Self::G2gTcp { .. } | Self::G2gRr | Self::SecondGuest)
    }

    /// Whether it is measured with backend `b`, or why not.
    fn applies(self, b: Backend) -> Result<(), &'static str> {
        match self {
            Self::SecondGuest if b != Backend::Hostnet => {
                Err("the second-guest figure is hostnet's (a Linux bridge has no attach)")
            }
            _ if self.pair() => b.pairs(),
            _ => Ok(()),
        }
    }

    /// Whether this run measures it, or why not (printed): `--only ipv6` keeps the IPv6
    /// figures and their IPv4 twins; `--quick` keeps one IPv6 throughput and the IPv6 round
    /// trip.
    fn selected(self, opts: &Options) -> Result<(), &'static str> {
        match opts.only {
            Some(Only::Ipv6) => {
                return match self {
                    Self::Tcp { .. } | Self::Rr { .. } => Ok(()),
                    Self::TcpPaced => Err("--only ipv6: the paced upload is IPv4's"),
                    _ => Err("--only ipv6: only the IPv6 figures and their IPv4 twins"),
                };
            }
            Some(Only::G2g) => {
                return if self.pair() {
                    Ok(())
                } else {
                    Err("--only g2g: only the guest-to-guest figures")
                };
            }
            Some(Only::Tcp) => {
                return match self {
                    Self::Tcp { v6: false, .. } | Self::TcpPaced => Ok(()),
                    _ => Err("--only tcp: only the IPv4 TCP throughput figures"),
                };
            }
            Some(Only::Rr) => {
                return match self {
                    Self::Rr { v6: false } => Ok(()),
                    _ => Err("--only rr: only the IPv4 TCP round trip"),
                };
            }
            None => {}
        }
        if self.pair() && opts.quick {
            return Err("--quick: the guest-to-guest figures are left out (--only g2g runs them)");
        }
        match self {
            Self::Tcp {
                v6: true,
                reverse: false,
                streams: 1,
            }
            | Self::Rr { v6: true } => Ok(()),
            Self::Tcp { v6: true, .. } if opts.quick => Err(
                "--quick: of IPv6 only TCP guest->server 1 stream and the round trip; \
                 --only ipv6 for all",
            ),
            _ => Ok(()),
        }
    }

    /// Whether it runs over IPv6.
    fn v6(self) -> bool {
        matches!(self, Self::Tcp { v6: true, .. } | Self::Rr { v6: true })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tcp {
                reverse,
                streams,
                v6,
            } => match (v6, reverse, streams) {
                (false, false, 1) => "tcp up",
                (false, true, 1) => "tcp down",
                (false, false, _) => "tcp up x4",
                (false, true, _) => "tcp down x4",
                (true, false, 1) => "tcp6 up",
                (true, true, 1) => "tcp6 down",
                (true, false, _) => "tcp6 up x4",
                (true, true, _) => "tcp6 down x4",
            },
            Self::TcpPaced => "tcp up paced",
            Self::Udp64 => "udp 64 B",
            Self::Ping => "ping",
            Self::Rr { v6: false } => "tcp rr",
            Self::Rr { v6: true } => "tcp6 rr",
            Self::Crr => "tcp crr",
            Self::G2gTcp { reverse, streams } => match (reverse, streams) {
                (false, 1) => "g2g tcp",
                (true, 1) => "g2g tcp back",
                (false, _) => "g2g tcp x4",
                (true, _) => "g2g tcp back x4",
            },
            Self::G2gRr => "g2g rr",
            Self::SecondGuest => "second guest",
        }
    }

    fn pinned(self) -> bool {
        matches!(self, Self::Ping | Self::Rr { .. } | Self::Crr | Self::G2gRr)
    }

    fn keys(self) -> Vec<&'static str> {
        match self {
            Self::Tcp {
                reverse,
                streams,
                v6,
            } => match (v6, reverse, streams) {
                (false, false, 1) => vec!["tcp_up", "cpu_up"],
                (false, true, 1) => vec!["tcp_down", "cpu_down"],
                (false, false, _) => vec!["tcp_up4"],
                (false, true, _) => vec!["tcp_down4"],
                (true, false, 1) => vec!["tcp6_up"],
                (true, true, 1) => vec!["tcp6_down"],
                (true, false, _) => vec!["tcp6_up4"],
                (true, true, _) => vec!["tcp6_down4"],
            },
            Self::TcpPaced => vec!["tcp_up_paced", "cpu_up_paced"],
            Self::Udp64 => vec!["udp64_kpps", "udp64_loss"],
            Self::Ping => vec!["ping_us"],
            Self::Rr { v6: false } => vec!["rr_us"],
            Self::Rr { v6: true } => vec!["rr6_us"],
            Self::Crr => vec!["crr_per_s"],
            Self::G2gTcp { reverse, streams } => match (reverse, streams) {
                (false, 1) => vec!["g2g_tcp"],
                (true, 1) => vec!["g2g_tcp_back"],
                (false, _) => vec!["g2g_tcp4"],
                (true, _) => vec!["g2g_tcp4_back"],
            },
            Self::G2gRr => vec!["g2g_rr_us"],
            Self::SecondGuest => vec!["tcp_up_alone", "tcp_up_second"],
        }
    }

    /// The figures, and for TCP runs the busy backend threads (CPU seconds per second).
    fn measure(self, w: &mut World, env: &Env, opts: &Options) -> Result<Measured> {
        let keys = self.keys();
        match self {
            Self::G2gTcp { reverse, streams } => {
                let threads0 = w.busy_start();
                let t0 = Instant::now();
                let (gbps, _) = w.g2g_tcp(reverse, streams, opts.secs)?;
                let note = w.busy_since(&threads0, t0.elapsed().as_secs_f64());
                Ok((vec![(keys[0], gbps)], note))
            }
            Self::G2gRr => {
                let rate = w.g2g_transactions(env, opts.lat_secs)?;
                Ok((vec![(keys[0], 1e6 / rate)], None))
            }
            Self::SecondGuest => {
                let (alone, second, note) = w.second_guest(env, opts.secs)?;
                Ok((vec![(keys[0], alone), (keys[1], second)], note))
            }
            Self::Tcp {
                reverse,
                streams,
                v6,
            } => {
                let cpu0 = w.backend_cpu();
                let threads0 = w.busy_start();
                let t0 = Instant::now();
                let (gbps, bytes) = w.tcp(reverse, streams, opts.secs, v6)?;
                Ok(with_cpu_per_gb(w, &keys, cpu0, gbps, bytes, &threads0, t0))
            }
            Self::TcpPaced => {
                let cpu0 = w.backend_cpu();
                let threads0 = w.busy_start();
                let t0 = Instant::now();
                let (gbps, bytes) = w.tcp_paced(report::PACED_GBPS, opts.secs)?;
                Ok(with_cpu_per_gb(w, &keys, cpu0, gbps, bytes, &threads0, t0))
            }
            Self::Udp64 => {
                let (kpps, loss) = w.udp64(opts.secs)?;
                Ok((vec![(keys[0], kpps), (keys[1], loss)], None))
            }
            Self::Ping => Ok((vec![(keys[0], w.ping(env, opts.lat_secs)?)], None)),
            Self::Rr { v6 } => {
                let rate = w.transactions(env, "rr", opts.lat_secs, v6)?;
                Ok((vec![(keys[0], 1e6 / rate)], None))
            }
            Self::Crr => Ok((
                vec![(keys[0], w.transactions(env, "crr", opts.lat_secs, false)?)],
                None,
            )),
        }
    }
}

/// A TCP run's figures: its throughput under `keys[0]` and, if the backend's CPU time is
/// known, its CPU seconds per GB carried under `keys[1]` (`cpu0`: the CPU time before the
/// run), with the busy threads since `threads0` as the note.
fn with_cpu_per_gb(
    w: &mut World,
    keys: &[&'static str],
    cpu0: Option<f64>,
    gbps: f64,
    bytes: f64,
    threads0: &Busy,
    t0: Instant,
) -> Measured {
    let wall = t0.elapsed().as_secs_f64();
    let mut v = vec![(keys[0], gbps)];
    if let (Some(a), Some(b), Some(&k)) = (cpu0, w.backend_cpu(), keys.get(1))
        && bytes > 0.0
    {
        v.push((k, (b - a) / (bytes / 1e9)));
    }
    (v, w.busy_since(threads0, wall))
}

/// A selection of figures (`--only`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    /// The IPv6 figures and their IPv4 twins (issue 13).
    Ipv6,
    /// The guest-to-guest world's figures (issue 14).
    G2g,
    /// The IPv4 TCP throughput figures with CPU per GB (1 and 4 streams, both ways): quick
    /// A/B rounds of a change to the data path.
    Tcp,
    /// The IPv4 TCP round trip: quick A/B rounds of a change to latency.
    Rr,
}

#[derive(Debug)]
struct Options {
    help: bool,
    quick: bool,
    /// `--only ipv6|g2g|tcp|rr`.
    only: Option<Only>,
    reps: u32,
    secs: u32,
    lat_secs: f64,
    mtus: Vec<u32>,
    backends: Vec<Backend>,
    micro: bool,
    e2e: bool,
    /// TCP congestion control of every iperf3 TCP flow (`None`: the namespaces' default).
    cc: Option<String>,
    lab: Option<PathBuf>,
    hostnetd: Option<PathBuf>,
    passt: Option<PathBuf>,
    out: Option<PathBuf>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self> {
        let mut o = Self {
            help: false,
            quick: false,
            only: None,
            reps: 3,
            secs: 5,
            lat_secs: 2.0,
            mtus: vec![1500, 65520],
            backends: Backend::ALL.to_vec(),
            micro: true,
            e2e: true,
            cc: None,
            lab: None,
            hostnetd: None,
            passt: None,
            out: None,
        };
        let (mut reps, mut secs, mut lat) = (None, None, None);
        let mut backends_given = false;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "-h" | "--help" => o.help = true,
                "--quick" => o.quick = true,
                "--reps" => reps = Some(value("--reps")?.parse().context("--reps")?),
                "--secs" => secs = Some(value("--secs")?.parse().context("--secs")?),
                "--latency-secs" => {
                    lat = Some(value("--latency-secs")?.parse().context("--latency-secs")?);
                }
                "--mtu" => {
                    o.mtus = value("--mtu")?
                        .split(',')
                        .map(|m| m.trim().parse::<u32>().context("--mtu"))
                        .collect::<Result<_>>()?;
                    if o.mtus.iter().any(|m| !(68..=65520).contains(m)) {
                        bail!("--mtu: each MTU must be in 68..=65520");
                    }
                }
                "--backends" => {
                    let list = value("--backends")?;
                    let mut set = BTreeSet::new();
                    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                        set.insert(Backend::parse(name).with_context(|| {
                            format!(
                                "unknown backend {name:?} (kernel, pasta, slirp4netns, hostnet, \
                                 hostnet-mq2, hostnetd, hostnetd-mq2, passt-vhost-user)"
                            )
                        })?);
                    }
                    o.backends = set.into_iter().collect();
                    backends_given = true;
                }
                "--only" => {
                    o.only = Some(match value("--only")?.as_str() {
                        "ipv6" => Only::Ipv6,
                        "g2g" => Only::G2g,
                        "tcp" => Only::Tcp,
                        "rr" => Only::Rr,
                        other => bail!(
                            "--only {other:?}: the selections are `ipv6`, `g2g`, `tcp` and `rr`"
                        ),
                    });
                }
                "--no-micro" => o.micro = false,
                "--no-e2e" => o.e2e = false,
                "--lab" => o.lab = Some(PathBuf::from(value("--lab")?)),
                "--cc" => {
                    let cc = value("--cc")?;
                    if cc.is_empty() || !cc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                    {
                        bail!(
                            "--cc {cc:?}: a congestion control name (cubic, bbr, reno) or `default`"
                        );
                    }
                    o.cc = (cc != "default").then_some(cc);
                }
                "--hostnetd" => o.hostnetd = Some(PathBuf::from(value("--hostnetd")?)),
                "--passt" => o.passt = Some(PathBuf::from(value("--passt")?)),
                "--out" => o.out = Some(PathBuf::from(value("--out")?)),
                other => bail!("unknown bench option {other:?}\n{HELP}"),
            }
        }
        if o.only == Some(Only::G2g) && !backends_given {
            o.backends = Backend::ALL
                .into_iter()
                .filter(|b| b.pairs().is_ok())
                .collect();
        }
        if o.quick {
            if !backends_given && o.only != Some(Only::G2g) {
                o.backends = Backend::QUICK.to_vec();
            }
            o.reps = 1;
            o.secs = 1;
            o.lat_secs = 0.5;
        }
        o.reps = reps.unwrap_or(o.reps).clamp(1, 20);
        o.secs = secs.unwrap_or(o.secs).clamp(1, 120);
        o.lat_secs = lat.unwrap_or(o.lat_secs).clamp(0.1, 60.0);
        Ok(o)
    }
}

const HELP: &str =
    "usage: cargo xtask bench [--quick] [options]   (needs root for the end-to-end part)

Runs the criterion micro benches, then each backend (kernel, pasta, slirp4netns, hostnet,
hostnet-mq2, hostnetd, hostnetd-mq2, passt-vhost-user) between a guest and a server namespace at each guest MTU, and prints
every figure as the median of the repeats with its spread and as ratios to kernel and pasta (and,
with hostnetd, to passt-vhost-user and hostnet) from the same run; the IPv6 figures also as
ratios to their IPv4 twins (IPv6/IPv4, same backend, same world). Writes
target/bench/bench.{txt,json,svg}; backend logs go to target/bench/logs/.

  --quick              1 repeat of 1 s per figure, 0.5 s latency runs, short criterion runs (CI);
                       without --backends: kernel, pasta, slirp4netns, hostnet only; of the
                       IPv6 figures only TCP guest->server (1 stream) and the round trip; no
                       guest-to-guest figures
  --only ipv6          only the IPv6 figures (TCP up/down, 1 and 4 streams, round trip) and
                       their IPv4 twins, for the IPv6/IPv4 ratios
  --only g2g           only the guest-to-guest figures (issue 14; left out of --quick): two
                       guest namespaces on one network, kernel = a Linux bridge with two veths,
                       hostnet = one attach with both; TCP guest->guest and back (1 and 4
                       streams), round trip; hostnet's TCP guest->server with G alone against
                       G plus a second idle guest, alternated (default backends kernel,hostnet)
  --only tcp           only the IPv4 TCP throughput figures (1 and 4 streams, both ways, and
                       one stream up paced at 2 Gbit/s) with the backends' CPU per GB: quick A/B
                       rounds of a data-path change; the paced upload's CPU per GB compares
                       the daemons at the same bytes and rate (passt's unpaced upload stalls)
  --only rr            only the IPv4 TCP 1-byte round trip (pinned): quick A/B rounds of a
                       change to latency
  --reps N             repeats per figure (default 3)
  --secs N             seconds per throughput run (default 5)
  --latency-secs S     seconds per ping / rr / crr run (default 2)
  --mtu LIST           guest MTUs, comma-separated (default 1500,65520)
  --backends LIST      subset of kernel,pasta,slirp4netns,hostnet,hostnet-mq2,hostnetd,
                       hostnetd-mq2,passt-vhost-user (default all); hostnet-mq2 is hostnet with
                       two queue pairs (`attach --queues 2`; its 4-stream figures also as a
                       ratio to hostnet's, the scaling); hostnetd and passt-vhost-user are
                       vhost-user daemons driven by `hostnet-lab attach --vhost-user` (the same
                       simulated guest); hostnetd-mq2 is `hostnetd --queues 2` driven by
                       `attach --vhost-user --queues 2` (scaling against hostnetd)
  --no-micro           skip the criterion benches
  --no-e2e             skip the end-to-end part
  --cc NAME            TCP congestion control of every iperf3 TCP flow, both ends (iperf3 -C),
                       e.g. cubic (Linux's own default, a Linux guest's); default: the
                       namespaces' own, which they inherit from the machine's root namespace
                       (bbr on these machines in 2026-12; the report names it). The choice
                       moves every TCP figure and not alike for all backends; a speed target
                       counts as met only under both the default and cubic (docs/PERFORMANCE.md
                       \"Which TCP congestion control\"). The round-trip and connection figures
                       (rr, crr: the bench's own client and echo server) keep the namespaces' own
  --lab PATH           use this hostnet-lab binary instead of building it (release)
  --hostnetd PATH      use this hostnetd binary instead of building it (release)
  --passt PATH         use this passt (with --vhost-user) instead of building the peer snapshot
                       ../shared/peers/passt (skipped, never downloaded, when neither works)
  --out DIR            output directory (default target/bench)";

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(args: &[&str]) -> Options {
        Options::parse(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>()).unwrap()
    }

    fn selected(o: &Options) -> Vec<&'static str> {
        Test::list()
            .into_iter()
            .filter(|t| t.selected(o).is_ok())
            .map(Test::name)
            .collect()
    }

    #[test]
    fn every_ipv6_test_runs_right_after_its_ipv4_twin_and_has_figures() {
        let list = Test::list();
        for (i, t) in list.iter().enumerate() {
            for k in t.keys() {
                assert!(
                    report::FIGURES.iter().any(|f| f.key == k),
                    "{k} has no figure"
                );
            }
            if !t.v6() {
                continue;
            }
            let before = list[i - 1];
            assert!(!before.v6());
            let twin = report::FIGURES
                .iter()
                .find(|f| f.key == t.keys()[0])
                .and_then(|f| f.ipv4)
                .unwrap();
            assert_eq!(before.keys()[0], twin, "{}", t.name());
            assert_eq!(t.pinned(), before.pinned());
        }
        assert_eq!(list.iter().filter(|t| t.v6()).count(), 5);
        // Every figure comes from some test.
        for f in report::FIGURES {
            assert!(list.iter().any(|t| t.keys().contains(&f.key)), "{}", f.key);
        }
    }

    #[test]
    fn quick_keeps_one_ipv6_throughput_and_the_ipv6_round_trip() {
        let full = selected(&opts(&[]));
        assert_eq!(full.len(), Test::list().len());
        let quick = selected(&opts(&["--quick"]));
        assert!(quick.contains(&"tcp6 up") && quick.contains(&"tcp6 rr"));
        for gone in ["tcp6 down", "tcp6 up x4", "tcp6 down x4"] {
            assert!(!quick.contains(&gone), "{gone}");
        }
        // Every IPv4 figure of the guest/host/server world stays in --quick.
        for t in Test::list().into_iter().filter(|t| !t.v6() && !t.pair()) {
            assert!(quick.contains(&t.name()), "{}", t.name());
        }
        // The guest-to-guest world is left out of --quick, with the way to get it.
        for t in Test::list().into_iter().filter(|t| t.pair()) {
            assert!(!quick.contains(&t.name()), "{}", t.name());
            let why = t.selected(&opts(&["--quick"])).unwrap_err();
            assert!(why.contains("--only g2g"), "{why}");
        }
        assert_eq!(opts(&["--quick"]).backends, Backend::QUICK);
    }

    #[test]
    fn only_ipv6_keeps_the_ipv6_figures_and_their_ipv4_twins() {
        for args in [&["--only", "ipv6"][..], &["--quick", "--only", "ipv6"]] {
            let o = opts(args);
            assert_eq!(o.only, Some(Only::Ipv6));
            let only = selected(&o);
            assert_eq!(
                only,
                [
                    "tcp up",
                    "tcp6 up",
                    "tcp down",
                    "tcp6 down",
                    "tcp up x4",
                    "tcp6 up x4",
                    "tcp down x4",
                    "tcp6 down x4",
                    "tcp rr",
                    "tcp6 rr"
                ]
            );
            let why = Test::Udp64.selected(&o).unwrap_err();
            assert!(why.contains("--only ipv6"), "{why}");
        }
        let o = opts(&["--only", "tcp"]);
        assert_eq!(o.only, Some(Only::Tcp));
        assert_eq!(
            selected(&o),
            [
                "tcp up",
                "tcp down",
                "tcp up x4",
                "tcp down x4",
                "tcp up paced"
            ]
        );
        let o = opts(&["--only", "rr"]);
        assert_eq!(selected(&o), ["tcp rr"]);
        let args = ["--only".to_owned(), "udp".to_owned()];
        assert!(Options::parse(&args).is_err());
        assert!(Options::parse(&args[..1]).is_err());
    }

    #[test]
    fn the_iperf3_flows_run_the_namespaces_congestion_control_unless_cc_names_one() {
        assert_eq!(opts(&[]).cc, None);
        assert_eq!(opts(&["--cc", "cubic"]).cc.as_deref(), Some("cubic"));
        assert_eq!(opts(&["--cc", "default"]).cc, None);
        for bad in ["", "cubic -R", "../x"] {
            let args = ["--cc".to_owned(), bad.to_owned()];
            assert!(Options::parse(&args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_g2g_keeps_the_guest_to_guest_figures_with_kernel_and_hostnet() {
        for args in [&["--only", "g2g"][..], &["--quick", "--only", "g2g"]] {
            let o = opts(args);
            assert_eq!(o.only, Some(Only::G2g));
            assert_eq!(o.backends, [Backend::Kernel, Backend::Hostnet]);
            assert_eq!(
                selected(&o),
                [
                    "g2g tcp",
                    "g2g tcp back",
                    "g2g tcp x4",
                    "g2g tcp back x4",
                    "second guest",
                    "g2g rr"
                ]
            );
            let why = Test::Rr { v6: false }.selected(&o).unwrap_err();
            assert!(why.contains("--only g2g"), "{why}");
        }
        let o = opts(&[
            "--only",
            "g2g",
            "--backends",
            "hostnet,pasta",
            "--mtu",
            "1500",
        ]);
        assert_eq!(o.backends, [Backend::Pasta, Backend::Hostnet]);
        assert_eq!(o.mtus, [1500]);
        // The full run has them too; --only ipv6 has none of them.
        assert!(selected(&opts(&[])).contains(&"g2g tcp"));
        assert!(!selected(&opts(&["--only", "ipv6"])).contains(&"g2g tcp"));
    }

    #[test]
    fn guest_to_guest_tests_run_in_the_pair_world_with_the_backends_that_have_one() {
        for t in Test::list() {
            for b in Backend::ALL {
                let applies = t.applies(b).is_ok();
                match t {
                    Test::SecondGuest => assert_eq!(applies, b == Backend::Hostnet, "{b:?}"),
                    _ if t.pair() => assert_eq!(
                        applies,
                        matches!(b, Backend::Kernel | Backend::Hostnet),
                        "{t:?} {b:?}"
                    ),
                    _ => assert!(applies, "{t:?} {b:?}"),
                }
            }
        }
        // Unpinned throughput first, the pinned round trip last: pinning is not undone
        // within a world.
        let pair: Vec<Test> = Test::list().into_iter().filter(|t| t.pair()).collect();
        let first_pinned = pair.iter().position(|t| t.pinned()).unwrap();
        assert!(pair[first_pinned..].iter().all(|t| t.pinned()));
        // Names and keys are distinct over the whole list.
        let list = Test::list();
        let names: BTreeSet<&str> = list.iter().map(|t| t.name()).collect();
        assert_eq!(names.len(), list.len());
        let keys: Vec<&str> = list.iter().flat_map(|t| t.keys()).collect();
        assert_eq!(keys.iter().collect::<BTreeSet<_>>().len(), keys.len());
    }
}
