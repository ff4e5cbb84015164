//! The figures, their statistics, and the three outputs: the terminal table, the JSON file and
//! the SVG chart.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::e2e::Backend;

/// One end-to-end figure.
#[derive(Debug, Clone, Copy)]
pub(super) struct Figure {
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    pub(super) unit: &'static str,
    pub(super) higher_is_better: bool,
    /// For an IPv6 figure, the key of its IPv4 twin (the IPv6/IPv4 ratio's base).
    pub(super) ipv4: Option<&'static str>,
}

/// The rate (Gbit/s) iperf3 paces the `tcp_up_paced` upload at: one both vhost-user daemons
/// sustain (passt-vhost-user's unpaced upload stalls, docs/PERFORMANCE.md; slirp4netns
/// carries less), so that their CPU per GB compares at the same bytes and rate.
pub(super) const PACED_GBPS: f64 = 2.0;

/// Every end-to-end figure, in table order.
pub(super) const FIGURES: &[Figure] = &[
    fig("tcp_up", "TCP guest->server, 1 stream", "Gbit/s", true),
    fig6("tcp6_up", "tcp_up", "Gbit/s", true),
    fig("tcp_down", "TCP server->guest, 1 stream", "Gbit/s", true),
    fig6("tcp6_down", "tcp_down", "Gbit/s", true),
    fig("tcp_up4", "TCP guest->server, 4 streams", "Gbit/s", true),
    fig6("tcp6_up4", "tcp_up4", "Gbit/s", true),
    fig("tcp_down4", "TCP server->guest, 4 streams", "Gbit/s", true),
    fig6("tcp6_down4", "tcp_down4", "Gbit/s", true),
    fig(
        "udp64_kpps",
        "UDP 64 B guest->server, received",
        "kpps",
        true,
    ),
    fig("udp64_loss", "UDP 64 B loss (offered max)", "%", false),
    fig("ping_us", "ping RTT, pinned", "us", false),
    fig("rr_us", "TCP 1-byte round trip, pinned", "us", false),
    fig6("rr6_us", "rr_us", "us", false),
    fig("crr_per_s", "TCP connect+rr+close, pinned", "1/s", true),
    fig("cpu_up", "backend CPU per GB, TCP up", "s/GB", false),
    fig("cpu_down", "backend CPU per GB, TCP down", "s/GB", false),
    // The label names PACED_GBPS.
    fig(
        "tcp_up_paced",
        "TCP guest->server paced to 2, carried",
        "Gbit/s",
        true,
    ),
    fig(
        "cpu_up_paced",
        "backend CPU per GB, TCP up paced",
        "s/GB",
        false,
    ),
    fig("g2g_tcp", "TCP guest1->guest2, 1 stream", "Gbit/s", true),
    fig(
        "g2g_tcp_back",
        "TCP guest2->guest1, 1 stream",
        "Gbit/s",
        true,
    ),
    fig("g2g_tcp4", "TCP guest1->guest2, 4 streams", "Gbit/s", true),
    fig(
        "g2g_tcp4_back",
        "TCP guest2->guest1, 4 streams",
        "Gbit/s",
        true,
    ),
    fig(
        "g2g_rr_us",
        "TCP 1-byte round trip g2g, pinned",
        "us",
        false,
    ),
    fig("tcp_up_alone", "TCP up, one guest attached", "Gbit/s", true),
    fig(
        "tcp_up_second",
        "TCP up, + idle second guest",
        "Gbit/s",
        true,
    ),
];

/// The guest-to-guest throughput figures issue 14's target holds to ≥ 0.5× the kernel bridge.
const G2G_TCP: [&str; 4] = ["g2g_tcp", "g2g_tcp_back", "g2g_tcp4", "g2g_tcp4_back"];

/// The samples of one figure for one backend at one MTU, or why there are none.
#[derive(Debug, Default, Clone)]
pub(super) struct Cell {
    pub(super) samples: Vec<f64>,
    pub(super) error: Option<String>,
}

/// Median, min, max of a cell.
#[derive(Debug, Clone, Copy)]
pub(super) struct Stats {
    pub(super) median: f64,
    pub(super) min: f64,
    pub(super) max: f64,
}

impl Cell {
    /// The statistics, when there is at least one sample.
    pub(super) fn stats(&self) -> Option<Stats> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .copied()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }
}

/// Everything measured in one run.
#[derive(Debug, Default)]
pub(super) struct Results {
    pub(super) mtus: Vec<u32>,
    pub(super) backends: Vec<Backend>,
    pub(super) cells: BTreeMap<(u32, Backend, &'static str), Cell>,
    /// `None`: the backend came up; `Some(why)`: it did not.
    pub(super) failed: BTreeMap<(u32, Backend), String>,
    /// The end of each backend's log after it stopped (hostnet prints its stats there).
    pub(super) logs: BTreeMap<(u32, Backend), String>,
    /// Busy backend threads during a TCP run (CPU seconds per second, last repeat).
    pub(super) threads: BTreeMap<(u32, Backend, &'static str), String>,
    /// How each TAP-based backend set up the guest's eth0 (measured).
    pub(super) guest_tap: BTreeMap<(u32, Backend), String>,
    /// What each vhost-user daemon negotiated with the frontend (its log).
    pub(super) negotiated: BTreeMap<(u32, Backend), String>,
    pub(super) micro: Vec<Micro>,
    pub(super) micro_error: Option<String>,
    /// Figures this run does not measure at all (`--quick`, `--only`), and why.
    pub(super) not_run: BTreeMap<&'static str, String>,
    /// Guest-to-guest worlds that did not come up, and why.
    pub(super) pair_failed: BTreeMap<(u32, Backend), String>,
    /// The end of each guest-to-guest world's backend log.
    pub(super) pair_logs: BTreeMap<(u32, Backend), String>,
}

/// One criterion bench's median.
#[derive(Debug, Clone)]
pub(super) struct Micro {
    pub(super) id: String,
    pub(super) median_ns: f64,
    pub(super) lower_ns: f64,
    pub(super) upper_ns: f64,
    /// (elements or bytes per iteration, "elem" or "B").
    pub(super) throughput: Option<(f64, &'static str)>,
}

impl Results {
    /// Adds a sample.
    pub(super) fn push(&mut self, mtu: u32, b: Backend, key: &'static str, value: f64) {
        self.cells
            .entry((mtu, b, key))
            .or_default()
            .samples
            .push(value);
    }

    /// Records why a figure has (some) samples missing; the first reason is kept.
    pub(super) fn fail(&mut self, mtu: u32, b: Backend, key: &'static str, why: String) {
        let cell = self.cells.entry((mtu, b, key)).or_default();
        if cell.error.is_none() {
            cell.error = Some(why);
        }
    }

    fn stats(&self, mtu: u32, b: Backend, key: &str) -> Option<Stats> {
        self.cells
            .iter()
            .find(|((m, bb, k), _)| *m == mtu && *bb == b && *k == key)
            .and_then(|(_, c)| c.stats())
    }

    fn ratio(&self, mtu: u32, b: Backend, key: &str, base: Backend) -> Option<f64> {
        let x = self.stats(mtu, b, key)?.median;
        let y = self.stats(mtu, base, key)?.median;
        (y > 0.0).then(|| x / y)
    }

    /// An IPv6 figure's median over its IPv4 twin's, same backend, same MTU (`None` for an
    /// IPv4 figure or when either is missing).
    pub(super) fn ipv6_ratio(&self, mtu: u32, b: Backend, f: &Figure) -> Option<f64> {
        let x = self.stats(mtu, b, f.key)?.median;
        let y = self.stats(mtu, b, f.ipv4?)?.median;
        (y > 0.0).then(|| x / y)
    }

    /// A figure's full label ("TCP guest->server, 1 stream, IPv6" for an IPv6 figure).
    fn label(f: &Figure) -> String {
        match f.ipv4.and_then(|k| FIGURES.iter().find(|g| g.key == k)) {
            Some(twin) => format!("{}, IPv6", twin.label),
            None => f.label.to_owned(),
        }
    }

    /// The terminal table.
    pub(super) fn table(&self) -> String {
        let mut s = String::new();
        if !self.micro.is_empty() || self.micro_error.is_some() {
            let _ = writeln!(s, "\nmicro (criterion medians, no I/O)");
            if let Some(e) = &self.micro_error {
                let _ = writeln!(s, "  FAILED: {e}");
            }
            for m in &self.micro {
                let tp = m
                    .throughput
                    .map(|(n, unit)| format!("  {}", rate(n / (m.median_ns * 1e-9), unit)))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {:<48} {:>12}  [{} .. {}]{tp}",
                    m.id,
                    nanos(m.median_ns),
                    nanos(m.lower_ns),
                    nanos(m.upper_ns)
                );
            }
        }
        for &mtu in &self.mtus {
            let bases = self.bases();
            let _ = writeln!(
                s,
                "\nend to end, guest MTU {mtu}  (median ±half-range of the repeats; {})",
                bases
                    .iter()
                    .map(|b| format!("x {}", b.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = write!(s, "  {:<46}", "");
            for b in &self.backends {
                let _ = write!(s, "{:>18}", b.name());
            }
            s.push('\n');
            for f in FIGURES {
                if self.not_run.contains_key(f.key) {
                    continue;
                }
                let dir = if f.higher_is_better {
                    "higher"
                } else {
                    "lower"
                };
                let _ = write!(s, "  {:<46}", format!("{} {} ({dir})", f.label, f.unit));
                for &b in &self.backends {
                    let error = self
                        .cells
                        .get(&(mtu, b, f.key))
                        .and_then(|c| c.error.as_deref());
                    let cell = match (
                        self.stats(mtu, b, f.key),
                        self.failed.get(&(mtu, b)).map(String::as_str).or(error),
                    ) {
                        (Some(st), _) => {
                            format!("{} ±{}", num(st.median), num((st.max - st.min) / 2.0))
                        }
                        (None, Some(why)) if why.starts_with("skipped") => "skipped".to_owned(),
                        (None, Some(_)) => "FAILED".to_owned(),
                        (None, None) => "-".to_owned(),
                    };
                    let _ = write!(s, "{cell:>18}");
                }
                s.push('\n');
                if f.ipv4.is_some() {
                    let _ = write!(s, "  {:<46}", "    IPv6/IPv4 (same backend)");
                    for &b in &self.backends {
                        let r = self
                            .ipv6_ratio(mtu, b, f)
                            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
                        let _ = write!(s, "{r:>18}");
                    }
                    s.push('\n');
                }
                for &base in &bases {
                    let _ = write!(s, "  {:<46}", format!("    x {}", base.name()));
                    for &b in &self.backends {
                        let r = self
                            .ratio(mtu, b, f.key, base)
                            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}"));
                        let _ = write!(s, "{r:>18}");
                    }
                    s.push('\n');
                }
            }
            for &b in &self.backends {
                if let Some(why) = self.failed.get(&(mtu, b)) {
                    match why.strip_prefix("skipped: ") {
                        Some(why) => {
                            let _ = writeln!(s, "  {} SKIPPED: {why}", b.name());
                        }
                        None => {
                            let _ = writeln!(s, "  {} FAILED: {why}", b.name());
                        }
                    }
                }
                if let Some(tap) = self.guest_tap.get(&(mtu, b)) {
                    let _ = writeln!(s, "  {} guest TAP: {tap}", b.name());
                }
                if let Some(n) = self.negotiated.get(&(mtu, b)) {
                    let _ = writeln!(s, "  {} negotiated: {n}", b.name());
                }
                for ((m, bb, test), note) in &self.threads {
                    if *m == mtu && *bb == b {
                        let _ = writeln!(s, "  {} busy threads during {test}: {note}", b.name());
                    }
                }
                // One line per distinct error (or skip), naming the figures it hit.
                let mut errors: Vec<(&str, Vec<&str>)> = Vec::new();
                for f in FIGURES {
                    let Some(e) = self
                        .cells
                        .get(&(mtu, b, f.key))
                        .and_then(|c| c.error.as_deref())
                    else {
                        continue;
                    };
                    match errors.iter_mut().find(|(x, _)| *x == e) {
                        Some((_, keys)) => keys.push(f.key),
                        None => errors.push((e, vec![f.key])),
                    }
                }
                for (e, keys) in errors {
                    let _ = writeln!(s, "  {} {}: {e}", b.name(), keys.join(", "));
                }
            }
        }
        if !self.not_run.is_empty() {
            let mut why: Vec<(&str, Vec<&str>)> = Vec::new();
            for (k, w) in &self.not_run {
                match why.iter_mut().find(|(x, _)| x == w) {
                    Some((_, keys)) => keys.push(k),
                    None => why.push((w, vec![k])),
                }
            }
            let _ = writeln!(s, "\nfigures not run");
            for (w, keys) in why {
                let _ = writeln!(s, "  {}: {w}", keys.join(", "));
            }
        }
        s
    }

    /// The backends every figure is shown as a ratio to: kernel and pasta, and with hostnetd
    /// in the run also passt-vhost-user and hostnet (issue 17's comparisons), when present.
    fn bases(&self) -> Vec<Backend> {
        let mut v = vec![Backend::Kernel, Backend::Pasta];
        if self.backends.contains(&Backend::Hostnetd) {
            v.extend([Backend::PasstVu, Backend::Hostnet]);
        }
        v.retain(|b| self.backends.contains(b));
        v
    }

    /// The targets of issue 6 (hostnet) and, with hostnetd in the run, of issue 17,
    /// checked against this run.
    pub(super) fn targets(&self) -> Vec<(String, Option<bool>, String)> {
        let h = Backend::Hostnet;
        let mut out = Vec::new();
        let mut check = |what: String,
                         mtu: u32,
                         key: &str,
                         base: Backend,
                         min: Option<f64>,
                         max: Option<f64>| {
            if self.not_run.contains_key(key) {
                return;
            }
            let r = self.ratio(mtu, h, key, base);
            let ok = r.map(|r| min.is_none_or(|m| r >= m) && max.is_none_or(|m| r <= m));
            let detail = r.map_or_else(
                || "not measured".to_owned(),
                |r| format!("measured {r:.2}x {}", base.name()),
            );
            out.push((what, ok, detail));
        };
        if self.mtus.contains(&1500) {
            check(
                "TCP up @1500 >= 2x slirp4netns".into(),
                1500,
                "tcp_up",
                Backend::Slirp,
                Some(2.0),
                None,
            );
            check(
                "TCP up @1500 >= 0.25x kernel".into(),
                1500,
                "tcp_up",
                Backend::Kernel,
                Some(0.25),
                None,
            );
        }
        if self.mtus.contains(&65520) {
            check(
                "TCP up @65520 >= 0.5x kernel".into(),
                65520,
                "tcp_up",
                Backend::Kernel,
                Some(0.5),
                None,
            );
        }
        for &mtu in &self.mtus {
            check(
                format!("UDP 64 B pps @{mtu} >= 0.5x kernel"),
                mtu,
                "udp64_kpps",
                Backend::Kernel,
                Some(0.5),
                None,
            );
            check(
                format!("connections/s @{mtu} >= 0.5x kernel"),
                mtu,
                "crr_per_s",
                Backend::Kernel,
                Some(0.5),
                None,
            );
            check(
                format!("pinned round trip @{mtu} <= pasta"),
                mtu,
                "rr_us",
                Backend::Pasta,
                None,
                Some(1.0),
            );
        }
        // The guest-to-guest targets only when the run tried that world (it has cells).
        let tried = |keys: &[&str]| self.cells.keys().any(|(_, _, k)| keys.contains(k));
        if self.mtus.contains(&1500) && tried(&G2G_TCP) {
            for key in G2G_TCP {
                let label = FIGURES
                    .iter()
                    .find(|f| f.key == key)
                    .map_or(key, |f| f.label);
                check(
                    format!("{label} @1500 >= 0.5x kernel (bridge)"),
                    1500,
                    key,
                    Backend::Kernel,
                    Some(0.5),
                    None,
                );
            }
        }
        out.extend(self.ipv6_targets());
        if self.backends.contains(&Backend::HostnetMq) {
            out.extend(self.multiqueue_targets(Backend::HostnetMq, Backend::Hostnet));
        }
        if self.backends.contains(&Backend::HostnetdMq) {
            out.extend(self.multiqueue_targets(Backend::HostnetdMq, Backend::Hostnetd));
        }
        if self.backends.contains(&Backend::Hostnet)
            && !self.not_run.contains_key("tcp_up_alone")
            && tried(&["tcp_up_alone", "tcp_up_second"])
        {
            out.extend(self.mtus.iter().map(|&m| self.second_guest_target(m)));
        }
        if self.backends.contains(&Backend::Hostnetd) {
            let (vu, lab) = (Backend::PasstVu, Backend::Hostnet);
            let mut issue17 = Vec::new();
            if self.mtus.contains(&1500) {
                issue17.push(("TCP up @1500 >= 3x passt-vhost-user", 1500, "tcp_up", vu));
                issue17.push((
                    "TCP down @1500 >= 3x passt-vhost-user",
                    1500,
                    "tcp_down",
                    vu,
                ));
            }
            for (what, mtu, key, base) in issue17 {
                out.push(self.target(
                    format!("hostnetd: {what}"),
                    mtu,
                    key,
                    base,
                    (Some(3.0), None),
                ));
            }
            for &mtu in &self.mtus {
                for (what, key, base, bounds) in [
                    (
                        "pinned round trip <= passt-vhost-user",
                        "rr_us",
                        vu,
                        (None, Some(1.0)),
                    ),
                    (
                        "CPU per GB, TCP up <= passt-vhost-user",
                        "cpu_up",
                        vu,
                        (None, Some(1.0)),
                    ),
                    (
                        "CPU per GB, TCP up paced <= passt-vhost-user",
                        "cpu_up_paced",
                        vu,
                        (None, Some(1.0)),
                    ),
                    (
                        "CPU per GB, TCP down <= passt-vhost-user",
                        "cpu_down",
                        vu,
                        (None, Some(1.0)),
                    ),
                    (
                        "TCP up within 20 % of hostnet",
                        "tcp_up",
                        lab,
                        (Some(0.8), None),
                    ),
                    (
                        "TCP down within 20 % of hostnet",
                        "tcp_down",
                        lab,
                        (Some(0.8), None),
                    ),
                    (
                        "pinned round trip within 20 % of hostnet",
                        "rr_us",
                        lab,
                        (None, Some(1.2)),
                    ),
                ] {
                    out.push(self.target(
                        format!("hostnetd: {what} @{mtu}"),
                        mtu,
                        key,
                        base,
                        bounds,
                    ));
                }
            }
        }
        out
    }

    /// Issue 15's speed targets for two queue pairs (`mq`: `hostnet-mq2`, `hostnetd-mq2`),
    /// from this run: TCP with 4 streams at MTU 1500 at least 0.8x the kernel both ways,
    /// 1-stream figures not worse than with one pair (at least 0.9x those of `one`, the same
    /// backend with one pair; the spread of this machine's runs), and the 4-stream scaling
    /// (2 pairs / 1 pair) reported as measured (`n/a`: no target).
    fn multiqueue_targets(&self, mq: Backend, one: Backend) -> Vec<(String, Option<bool>, String)> {
        let (name, one_name) = (mq.name(), one.name());
        let mut out = Vec::new();
        let mut push = |what: String, mtu: u32, key: &str, base: Backend, min: Option<f64>| {
            if self.not_run.contains_key(key) {
                return;
            }
            let r = self.ratio(mtu, mq, key, base);
            let ok = min.and_then(|m| r.map(|r| r >= m));
            let detail = r.map_or_else(
                || "not measured".to_owned(),
                |r| format!("measured {r:.2}x {}", base.name()),
            );
            out.push((what, ok, detail));
        };
        if self.mtus.contains(&1500) {
            for (key, what) in [("tcp_up4", "up"), ("tcp_down4", "down")] {
                push(
                    format!("{name}: TCP 4 streams {what} @1500 >= 0.8x kernel"),
                    1500,
                    key,
                    Backend::Kernel,
                    Some(0.8),
                );
            }
        }
        for &mtu in &self.mtus {
            for (key, what) in [("tcp_up", "up"), ("tcp_down", "down")] {
                push(
                    format!("{name}: TCP 1 stream {what} @{mtu} >= 0.9x {one_name} (one pair)"),
                    mtu,
                    key,
                    one,
                    Some(0.9),
                );
            }
            for (key, what) in [("tcp_up4", "up"), ("tcp_down4", "down")] {
                push(
                    format!("{name}: scaling, TCP 4 streams {what} @{mtu}, 2 pairs / 1 pair"),
                    mtu,
                    key,
                    one,
                    None,
                );
            }
        }
        out
    }

    /// Issue 13's speed target: hostnet's (and hostnetd's, when in the run) IPv6 figures
    /// within 10 % of their IPv4 twins of the same run, per measured figure and MTU.
    fn ipv6_targets(&self) -> Vec<(String, Option<bool>, String)> {
        let mut out = Vec::new();
        for b in [Backend::Hostnet, Backend::Hostnetd] {
            if !self.backends.contains(&b) {
                continue;
            }
            for &mtu in &self.mtus {
                for f in FIGURES.iter().filter(|f| f.ipv4.is_some()) {
                    if self.not_run.contains_key(f.key) {
                        continue;
                    }
                    let r = self.ipv6_ratio(mtu, b, f);
                    let ok = r.map(|r| {
                        if f.higher_is_better {
                            r >= 0.9
                        } else {
                            r <= 1.1
                        }
                    });
                    let detail = r.map_or_else(
                        || "not measured".to_owned(),
                        |r| format!("measured IPv6/IPv4 {r:.3}"),
                    );
                    out.push((
                        format!(
                            "{}: IPv6 within 10 % of IPv4, {} @{mtu}",
                            b.name(),
                            Self::label(f).trim_start()
                        ),
                        ok,
                        detail,
                    ));
                }
            }
        }
        out
    }

    /// Issue 14: hostnet's TCP guest->server (1 stream) with a second idle guest attached
    /// unchanged within the run's spread: met when the two-guest median is at least the
    /// one-guest median less the larger half-range of the two (faster is never a miss).
    pub(super) fn second_guest_target(&self, mtu: u32) -> (String, Option<bool>, String) {
        let what = format!("TCP guest->server @{mtu} unchanged with a second idle guest");
        let h = Backend::Hostnet;
        let (Some(a), Some(p)) = (
            self.stats(mtu, h, "tcp_up_alone"),
            self.stats(mtu, h, "tcp_up_second"),
        ) else {
            return (what, None, "not measured".to_owned());
        };
        let spread = ((a.max - a.min) / 2.0).max((p.max - p.min) / 2.0);
        let ok = p.median >= a.median - spread;
        let samples = |k| {
            self.cells
                .get(&(mtu, h, k))
                .map(|c| c.samples.clone())
                .unwrap_or_default()
        };
        let (alone, second) = (samples("tcp_up_alone"), samples("tcp_up_second"));
        let pairs: Vec<f64> = alone
            .iter()
            .zip(&second)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, s)| s / a)
            .collect();
        let per_pair = match (
            pairs.iter().copied().reduce(f64::min),
            pairs.iter().copied().reduce(f64::max),
        ) {
            (Some(lo), Some(hi)) => format!("; per alternation {lo:.2}..{hi:.2}"),
            _ => String::new(),
        };
        let detail = format!(
            "measured 2 guests / 1 guest {:.3} ({} ±{} against {} ±{} Gbit/s; allowed drop {} \
             = the larger half-range{per_pair})",
            if a.median > 0.0 {
                p.median / a.median
            } else {
                f64::NAN
            },
            num(p.median),
            num((p.max - p.min) / 2.0),
            num(a.median),
            num((a.max - a.min) / 2.0),
            num(spread),
        );
        (what, Some(ok), detail)
    }

    /// hostnetd's ratio to `base` for `key` at `mtu` against the bounds (min, max).
    fn target(
        &self,
        what: String,
        mtu: u32,
        key: &str,
        base: Backend,
        (min, max): (Option<f64>, Option<f64>),
    ) -> (String, Option<bool>, String) {
        let (r, detail) = if base == Backend::PasstVu && matches!(key, "tcp_up" | "tcp_down") {
            self.against_best(mtu, key, base)
        } else {
            let r = self.ratio(mtu, Backend::Hostnetd, key, base);
            let detail = r.map_or_else(
                || "not measured".to_owned(),
                |r| format!("measured {r:.2}x {}", base.name()),
            );
            (r, detail)
        };
        let ok = r.map(|r| min.is_none_or(|m| r >= m) && max.is_none_or(|m| r <= m));
        if key == "cpu_up_paced"
            && let Some((b, gbps)) = [Backend::Hostnetd, base].into_iter().find_map(|b| {
                let gbps = self.stats(mtu, b, "tcp_up_paced")?.median;
                (gbps < 0.95 * PACED_GBPS).then_some((b, gbps))
            })
        {
            // A backend that fell behind the pace carried fewer bytes at another rate.
            let why = format!(
                "{detail}, not like for like: {} carried {gbps:.2} of {PACED_GBPS} Gbit/s",
                b.name()
            );
            return (what, None, why);
        }
        (what, ok, detail)
    }

    /// [`Results::target`]'s ratio for a throughput against `base`'s best sample, not its median:
    /// passt's unpaced transfers stall in some runs and not in others (docs/PERFORMANCE.md),
    /// and a stalled median would make any multiple of it "met". hostnetd's median over the
    /// peer's best is the ratio the peer would least like to lose.
    fn against_best(&self, mtu: u32, key: &str, base: Backend) -> (Option<f64>, String) {
        let (Some(ours), Some(theirs)) = (
            self.stats(mtu, Backend::Hostnetd, key),
            self.stats(mtu, base, key),
        ) else {
            return (None, "not measured".to_owned());
        };
        if theirs.max <= 0.0 {
            return (None, format!("{} carried nothing", base.name()));
        }
        let r = ours.median / theirs.max;
        let detail = format!(
            "measured {r:.2}x {}'s best sample ({:.2}; its median {:.2}, {:.2}x)",
            base.name(),
            theirs.max,
            theirs.median,
            ours.median / theirs.median.max(f64::MIN_POSITIVE),
        );
        (Some(r), detail)
    }

    /// The JSON document.
    pub(super) fn json(&self, meta: Value) -> Value {
        let mut e2e = serde_json::Map::new();
        for &mtu in &self.mtus {
            let mut per_backend = serde_json::Map::new();
            for &b in &self.backends {
                let mut figures = serde_json::Map::new();
                for f in FIGURES {
                    let cell = self
                        .cells
                        .get(&(mtu, b, f.key))
                        .cloned()
                        .unwrap_or_default();
                    let st = cell.stats();
                    figures.insert(
                        f.key.to_owned(),
                        json!({
                            "label": Self::label(f),
                            "ipv4_twin": f.ipv4,
                            "x_ipv4": self.ipv6_ratio(mtu, b, f),
                            "unit": f.unit,
                            "higher_is_better": f.higher_is_better,
                            "median": st.map(|s| s.median),
                            "min": st.map(|s| s.min),
                            "max": st.map(|s| s.max),
                            "spread": st.map(|s| (s.max - s.min) / 2.0),
                            "samples": cell.samples,
                            "error": cell.error,
                            "x_kernel": self.ratio(mtu, b, f.key, Backend::Kernel),
                            "x_pasta": self.ratio(mtu, b, f.key, Backend::Pasta),
                            "x_passt_vhost_user": self.ratio(mtu, b, f.key, Backend::PasstVu),
                            "x_hostnet": self.ratio(mtu, b, f.key, Backend::Hostnet),
                        }),
                    );
                }
                per_backend.insert(
                    b.name().to_owned(),
                    json!({
                        "status": self.failed.get(&(mtu, b)).map_or_else(|| "ok".to_owned(), |w| if w.starts_with("skipped") { w.clone() } else { format!("failed: {w}") }),
                        "figures": figures,
                        "log_tail": self.logs.get(&(mtu, b)),
                        // The guest-to-guest world (issue 14), when the run made one.
                        "g2g_status": self.pair_failed.get(&(mtu, b)).map_or_else(
                            || self.pair_logs.contains_key(&(mtu, b)).then(|| "ok".to_owned()),
                            |w| Some(format!("failed: {w}")),
                        ),
                        "g2g_log_tail": self.pair_logs.get(&(mtu, b)),
                        "guest_tap": self.guest_tap.get(&(mtu, b)),
                        "negotiated": self.negotiated.get(&(mtu, b)),
                        "busy_threads": self
                            .threads
                            .iter()
                            .filter(|((m, bb, _), _)| *m == mtu && *bb == b)
                            .map(|((_, _, t), n)| (t.to_string(), Value::from(n.clone())))
                            .collect::<serde_json::Map<String, Value>>(),
                    }),
                );
            }
            e2e.insert(mtu.to_string(), Value::Object(per_backend));
        }
        let micro: Vec<Value> = self
            .micro
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "median_ns": m.median_ns,
                    "ci_lower_ns": m.lower_ns,
                    "ci_upper_ns": m.upper_ns,
                    "throughput_per_s": m.throughput.map(|(n, _)| n / (m.median_ns * 1e-9)),
                    "throughput_unit": m.throughput.map(|(_, u)| u),
                })
            })
            .collect();
        let targets: Vec<Value> = self
            .targets()
            .into_iter()
            .map(|(what, ok, detail)| json!({"target": what, "met": ok, "detail": detail}))
            .collect();
        json!({
            "meta": meta,
            "micro": micro,
            "micro_error": self.micro_error,
            "not_run": self.not_run,
            "e2e": e2e,
            "targets": targets,
        })
    }

    /// The chart: one panel per figure and MTU, the backends side by side.
    pub(super) fn svg(&self, subtitle: &str) -> String {
        let cols = 6usize;
        let (pw, ph) = (230.0_f64, 170.0_f64);
        let rows_per_mtu = FIGURES.len().div_ceil(cols);
        let rows = rows_per_mtu * self.mtus.len().max(1);
        let width = pw * cols as f64 + 20.0;
        let top = 70.0;
        let height = top + (ph + 10.0) * rows as f64 + 30.0 * self.mtus.len() as f64;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="20" font-size="15" font-weight="bold">hostnet bench: backends side by side</text>"#
        );
        let _ = writeln!(s, r#"<text x="10" y="38">{}</text>"#, esc(subtitle));
        let mut lx = 10.0;
        for (i, b) in self.backends.iter().enumerate() {
            let _ = writeln!(
                s,
                r#"<rect x="{lx}" y="48" width="12" height="12" fill="{}"/><text x="{}" y="58">{}</text>"#,
                color(i),
                lx + 16.0,
                b.name()
            );
            lx += 110.0;
        }
        let mut y0 = top;
        for &mtu in &self.mtus {
            let _ = writeln!(
                s,
                r#"<text x="10" y="{}" font-size="13" font-weight="bold">guest MTU {mtu}</text>"#,
                y0 + 16.0
            );
            y0 += 26.0;
            for (fi, f) in FIGURES.iter().enumerate() {
                let x = 10.0 + pw * (fi % cols) as f64;
                let y = y0 + (ph + 10.0) * (fi / cols) as f64;
                let rect = Rect {
                    x,
                    y,
                    w: pw - 10.0,
                    h: ph,
                };
                self.panel(&mut s, mtu, f, rect);
            }
            y0 += (ph + 10.0) * rows_per_mtu as f64;
        }
        s.push_str("</svg>\n");
        s
    }

    fn panel(&self, s: &mut String, mtu: u32, f: &Figure, rect: Rect) {
        let Rect { x, y, w, h } = rect;
        let dir = if f.higher_is_better {
            "higher is better"
        } else {
            "lower is better"
        };
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="#f7f7f7" stroke="#ccc"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" font-weight="bold">{}</text><text x="{}" y="{}" fill="#555">{} ({dir})</text>"##,
            x + 4.0,
            y + 14.0,
            esc(f.label),
            x + 4.0,
            y + 27.0,
            esc(f.unit)
        );
        let stats: Vec<Option<Stats>> = self
            .backends
            .iter()
            .map(|&b| self.stats(mtu, b, f.key))
            .collect();
        let top = stats
            .iter()
            .flatten()
            .map(|s| s.max.max(s.median))
            .fold(0.0_f64, f64::max);
        let (base, area) = (y + h - 18.0, h - 58.0);
        let n = self.backends.len().max(1) as f64;
        let bw = (w - 16.0) / n;
        for (i, (b, st)) in self.backends.iter().zip(&stats).enumerate() {
            let bx = x + 8.0 + bw * i as f64;
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle" font-size="9">{}</text>"#,
                bx + bw / 2.0,
                base + 12.0,
                short(*b)
            );
            let Some(st) = st else {
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" text-anchor="middle" fill="#a00">n/a</text>"##,
                    bx + bw / 2.0,
                    base - 4.0
                );
                continue;
            };
            let scale = |v: f64| {
                let px = if top > 0.0 { area * v / top } else { 0.0 };
                (px * 10.0).round() / 10.0
            };
            let bh = scale(st.median);
            let _ = writeln!(
                s,
                r#"<rect x="{}" y="{}" width="{}" height="{bh}" fill="{}"/>"#,
                bx + 3.0,
                base - bh,
                bw - 6.0,
                color(i)
            );
            // The spread (min..max) as a whisker.
            let _ = writeln!(
                s,
                r#"<line x1="{cx}" x2="{cx}" y1="{}" y2="{}" stroke="black"/>"#,
                base - scale(st.min),
                base - scale(st.max),
                cx = bx + bw / 2.0
            );
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle" font-size="9">{}</text>"#,
                bx + bw / 2.0,
                base - scale(st.max).max(bh) - 3.0,
                num(st.median)
            );
        }
    }
}

const fn fig(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    higher_is_better: bool,
) -> Figure {
    Figure {
        key,
        label,
        unit,
        higher_is_better,
        ipv4: None,
    }
}

/// An IPv6 figure, shown right after its IPv4 twin `ipv4` (same unit and direction; a unit
/// test checks).
const fn fig6(
    key: &'static str,
    ipv4: &'static str,
    unit: &'static str,
    higher_is_better: bool,
) -> Figure {
    Figure {
        key,
        label: "  IPv6",
        unit,
        higher_is_better,
        ipv4: Some(ipv4),
    }
}

/// A number with 3 significant digits.
fn num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

fn nanos(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.2} us", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn rate(per_s: f64, unit: &str) -> String {
    if per_s >= 1e9 {
        format!("{:.2} G{unit}/s", per_s / 1e9)
    } else if per_s >= 1e6 {
        format!("{:.2} M{unit}/s", per_s / 1e6)
    } else {
        format!("{:.1} k{unit}/s", per_s / 1e3)
    }
}

fn short(b: Backend) -> &'static str {
    match b {
        Backend::Slirp => "slirp",
        Backend::PasstVu => "passt-vu",
        other => other.name(),
    }
}

fn color(i: usize) -> &'static str {
    [
        "#555555", "#e69f00", "#56b4e9", "#009e73", "#cc79a7", "#0072b2",
    ]
    .get(i)
    .copied()
    .unwrap_or("#999999")
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A panel's place in the SVG.
#[derive(Clone, Copy)]
struct Rect {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(samples: &[f64]) -> Cell {
        Cell {
            samples: samples.to_vec(),
            error: None,
        }
    }

    #[test]
    fn median_of_odd_and_even_counts_and_spread() {
        let s = cell(&[3.0, 1.0, 2.0]).stats().unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = cell(&[4.0, 1.0, 2.0, 3.0]).stats().unwrap();
        assert_eq!(s.median, 2.5);
        assert!(cell(&[]).stats().is_none());
        assert!(cell(&[f64::NAN]).stats().is_none());
    }

    fn run() -> Results {
        let mut r = Results {
            mtus: vec![1500],
            backends: Backend::ALL.to_vec(),
            ..Results::default()
        };
        for (b, up, rr) in [
            (Backend::Kernel, 10.0, 10.0),
            (Backend::Pasta, 3.0, 20.0),
            (Backend::Slirp, 1.0, 25.0),
            (Backend::Hostnet, 3.0, 15.0),
            (Backend::Hostnetd, 3.0, 16.0),
            (Backend::PasstVu, 1.0, 20.0),
        ] {
            r.push(1500, b, "tcp_up", up);
            r.push(1500, b, "rr_us", rr);
        }
        r.failed.insert((1500, Backend::Slirp), "test".into());
        r
    }

    #[test]
    fn ratios_and_targets_come_from_the_same_run() {
        let r = run();
        assert_eq!(
            r.ratio(1500, Backend::Hostnet, "tcp_up", Backend::Kernel),
            Some(0.3)
        );
        assert_eq!(
            r.ratio(1500, Backend::Hostnet, "tcp_up", Backend::Pasta),
            Some(1.0)
        );
        assert_eq!(
            r.ratio(1500, Backend::Hostnet, "udp64_kpps", Backend::Kernel),
            None
        );
        let t = r.targets();
        let find = |what: &str| t.iter().find(|(w, _, _)| w.contains(what)).unwrap().1;
        assert_eq!(find("2x slirp4netns"), Some(true));
        assert_eq!(find("0.25x kernel"), Some(true));
        assert_eq!(find("round trip @1500"), Some(true));
        assert_eq!(find("UDP 64 B pps @1500"), None);
        assert_eq!(find("hostnetd: TCP up @1500 >= 3x passt"), Some(true));
        assert_eq!(
            find("hostnetd: TCP up within 20 % of hostnet @1500"),
            Some(true)
        );
        assert_eq!(
            find("hostnetd: pinned round trip <= passt-vhost-user @1500"),
            Some(true)
        );
        assert_eq!(find("hostnetd: CPU per GB, TCP up"), None);
        assert_eq!(
            r.ratio(1500, Backend::Hostnetd, "tcp_up", Backend::PasstVu),
            Some(3.0)
        );
        assert!(r.table().contains("x passt-vhost-user"));
    }

    #[test]
    fn throughput_against_passt_is_judged_on_its_best_sample() {
        let mut r = run();
        // Hostnetd 3.0; passt 1.0, then two stalled samples and one at 1.2: the median
        // (1.0) would say 3x, its best sample (1.2) says 2.5x.
        for x in [0.1, 0.2, 1.2] {
            r.push(1500, Backend::PasstVu, "tcp_up", x);
        }
        let t = r.targets();
        let (_, ok, detail) = t
            .iter()
            .find(|(w, _, _)| w.contains("TCP up @1500 >= 3x passt"))
            .unwrap();
        assert_eq!(*ok, Some(false), "{detail}");
        assert!(
            detail.starts_with("measured 2.50x passt-vhost-user's best sample (1.20; its median"),
            "{detail}"
        );
        // Not measured, or nothing carried: no verdict.
        let (_, ok, _) = r
            .targets()
            .into_iter()
            .find(|(w, _, _)| w.contains("TCP down @1500 >= 3x passt"))
            .unwrap();
        assert_eq!(ok, None);
    }

    #[test]
    fn the_paced_cpu_per_gb_compares_only_when_both_daemons_kept_the_pace() {
        let mut r = run();
        for (b, carried, cpu) in [
            (Backend::Hostnetd, PACED_GBPS, 0.4),
            (Backend::PasstVu, 0.99 * PACED_GBPS, 0.5),
        ] {
            r.push(1500, b, "tcp_up_paced", carried);
            r.push(1500, b, "cpu_up_paced", cpu);
        }
        let find = |r: &Results| {
            r.targets()
                .into_iter()
                .find(|(w, _, _)| w.contains("TCP up paced <= passt-vhost-user @1500"))
                .unwrap()
        };
        let (_, ok, detail) = find(&r);
        assert_eq!(
            (ok, detail.as_str()),
            (Some(true), "measured 0.80x passt-vhost-user")
        );
        // passt falls behind in a second sample: the median is now below the pace.
        r.push(1500, Backend::PasstVu, "tcp_up_paced", 0.3);
        r.push(1500, Backend::PasstVu, "tcp_up_paced", 0.2);
        let (_, ok, detail) = find(&r);
        assert_eq!(ok, None);
        assert!(
            detail.contains("not like for like: passt-vhost-user carried 0.30"),
            "{detail}"
        );
    }

    /// A guest-to-guest run: kernel and hostnet, the second-guest samples in alternation order.
    fn pair_run(alone: &[f64], second: &[f64]) -> Results {
        let mut r = Results {
            mtus: vec![1500],
            backends: vec![Backend::Kernel, Backend::Hostnet],
            ..Results::default()
        };
        for (key, kernel, hostnet) in [
            ("g2g_tcp", 16.0, 8.0),
            ("g2g_tcp_back", 16.0, 7.9),
            ("g2g_tcp4", 20.0, 11.0),
            ("g2g_tcp4_back", 20.0, 10.0),
        ] {
            r.push(1500, Backend::Kernel, key, kernel);
            r.push(1500, Backend::Hostnet, key, hostnet);
        }
        for (&a, &s) in alone.iter().zip(second) {
            r.push(1500, Backend::Hostnet, "tcp_up_alone", a);
            r.push(1500, Backend::Hostnet, "tcp_up_second", s);
        }
        r
    }

    #[test]
    fn guest_to_guest_targets_half_the_kernel_bridge_and_a_second_guest_within_the_spread() {
        let r = pair_run(&[10.0, 12.0, 11.0], &[10.5, 9.5, 10.0]);
        let t = r.targets();
        let find = |what: &str| {
            t.iter()
                .find(|(w, _, _)| w.contains(what))
                .unwrap_or_else(|| panic!("{what} in {t:?}"))
        };
        assert_eq!(find("guest1->guest2, 1 stream @1500").1, Some(true));
        let back = find("guest2->guest1, 1 stream @1500");
        assert_eq!(
            (back.1, back.2.as_str()),
            (Some(false), "measured 0.49x kernel")
        );
        assert_eq!(find("guest1->guest2, 4 streams").1, Some(true));
        assert_eq!(find("guest2->guest1, 4 streams").1, Some(true));
        // 10.0 against 11.0: the drop (1.0) is within the larger half-range (1.0).
        let second = find("unchanged with a second idle guest");
        assert_eq!(second.1, Some(true));
        assert!(
            second.2.contains("2 guests / 1 guest 0.909"),
            "{}",
            second.2
        );
        assert!(
            second.2.contains("per alternation 0.79..1.05"),
            "{}",
            second.2
        );
        // A drop larger than either spread is a miss.
        let r = pair_run(&[11.0, 11.2, 11.1], &[9.0, 9.1, 9.2]);
        let t = r.targets();
        let second = t
            .iter()
            .find(|(w, _, _)| w.contains("second idle guest"))
            .unwrap();
        assert_eq!(second.1, Some(false));
        // Faster with the second guest is never a miss.
        let r = pair_run(&[9.0, 9.1, 9.2], &[11.0, 11.2, 11.1]);
        assert!(
            r.targets()
                .iter()
                .any(|(w, ok, _)| w.contains("second idle") && *ok == Some(true))
        );
        let mut r = pair_run(&[10.0], &[10.0]);
        r.pair_logs.insert((1500, Backend::Kernel), "bridge".into());
        r.pair_failed
            .insert((1500, Backend::Hostnet), "attach exited".into());
        let json = r.json(Value::Null);
        assert_eq!(json["e2e"]["1500"]["kernel"]["g2g_status"], "ok");
        assert_eq!(json["e2e"]["1500"]["kernel"]["g2g_log_tail"], "bridge");
        assert_eq!(
            json["e2e"]["1500"]["hostnet"]["g2g_status"],
            "failed: attach exited"
        );
        assert_eq!(
            json["e2e"]["1500"]["hostnet"]["figures"]["g2g_tcp"]["x_kernel"],
            0.5
        );
        assert!(run().json(Value::Null)["e2e"]["1500"]["kernel"]["g2g_status"].is_null());
        // A run without the guest-to-guest world has none of these lines; the table shows
        // the rows and the kernel's skip.
        assert!(!run().targets().iter().any(|(w, _, _)| w.contains("guest1")));
        let mut r = pair_run(&[10.0], &[10.0]);
        r.fail(
            1500,
            Backend::Kernel,
            "tcp_up_alone",
            "skipped: hostnet's".into(),
        );
        let table = r.table();
        assert!(table.contains("TCP guest1->guest2, 1 stream"), "{table}");
        assert!(table.contains("TCP up, + idle second guest"), "{table}");
        assert!(table.contains("skipped"), "{table}");
    }

    #[test]
    fn outputs_carry_every_backend() {
        let r = run();
        let table = r.table();
        for b in Backend::ALL {
            assert!(table.contains(b.name()), "{table}");
        }
        let svg = r.svg("test");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<svg").count(), 1);
        let json = r.json(serde_json::Value::Null);
        assert_eq!(
            json["e2e"]["1500"]["hostnet"]["figures"]["tcp_up"]["x_kernel"],
            0.3
        );
        assert_eq!(json["e2e"]["1500"]["slirp4netns"]["status"], "failed: test");
    }

    /// hostnet and hostnetd at twice the IPv4 figures' medians over IPv6 and round trips
    /// 1.05x: throughput misses the 10 % target, the round trip meets it.
    fn dual_stack() -> Results {
        let mut r = Results {
            mtus: vec![1500],
            backends: vec![Backend::Kernel, Backend::Hostnet, Backend::PasstVu],
            ..Results::default()
        };
        for (b, up, up6, rr, rr6) in [
            (Backend::Kernel, 10.0, 9.0, 20.0, 21.0),
            (Backend::Hostnet, 8.0, 4.0, 30.0, 31.5),
        ] {
            for v in [up, up * 0.9, up * 1.1] {
                r.push(1500, b, "tcp_up", v);
            }
            r.push(1500, b, "tcp6_up", up6);
            r.push(1500, b, "rr_us", rr);
            r.push(1500, b, "rr6_us", rr6);
        }
        r.push(1500, Backend::PasstVu, "tcp_up", 1.0);
        r.fail(
            1500,
            Backend::PasstVu,
            "tcp6_up",
            "skipped: IPv4-only here".into(),
        );
        for k in ["tcp6_down", "tcp6_up4", "tcp6_down4"] {
            r.not_run.insert(k, "--quick: not these".into());
        }
        r
    }

    #[test]
    fn ipv6_figures_follow_their_ipv4_twin_with_the_same_unit_and_direction() {
        for (i, f) in FIGURES.iter().enumerate() {
            let Some(twin) = f.ipv4 else { continue };
            let before = &FIGURES[i - 1];
            assert_eq!(before.key, twin);
            assert!(before.ipv4.is_none());
            assert_eq!(
                (f.unit, f.higher_is_better),
                (before.unit, before.higher_is_better)
            );
            assert_eq!(Results::label(f), format!("{}, IPv6", before.label));
        }
    }

    #[test]
    fn ipv6_over_ipv4_ratios_and_the_ten_percent_target() {
        let r = dual_stack();
        let fig = |k: &str| FIGURES.iter().find(|f| f.key == k).unwrap();
        assert_eq!(
            r.ipv6_ratio(1500, Backend::Hostnet, fig("tcp6_up")),
            Some(0.5)
        );
        assert_eq!(
            r.ipv6_ratio(1500, Backend::Kernel, fig("tcp6_up")),
            Some(0.9)
        );
        assert_eq!(
            r.ipv6_ratio(1500, Backend::Hostnet, fig("rr6_us")),
            Some(1.05)
        );
        assert_eq!(r.ipv6_ratio(1500, Backend::Hostnet, fig("tcp_up")), None);
        assert_eq!(r.ipv6_ratio(1500, Backend::PasstVu, fig("tcp6_up")), None);
        // Against the kernel's IPv6 figure, as for every figure.
        assert_eq!(
            r.ratio(1500, Backend::Hostnet, "tcp6_up", Backend::Kernel),
            Some(4.0 / 9.0)
        );
        let t = r.targets();
        let find = |what: &str| {
            t.iter()
                .find(|(w, _, _)| w.contains(what))
                .unwrap_or_else(|| panic!("{what} in {t:?}"))
        };
        let up = find("hostnet: IPv6 within 10 % of IPv4, TCP guest->server, 1 stream, IPv6 @1500");
        assert_eq!(up.1, Some(false));
        assert_eq!(up.2, "measured IPv6/IPv4 0.500");
        assert_eq!(
            find("IPv6 within 10 % of IPv4, TCP 1-byte round trip").1,
            Some(true)
        );
        // Figures this run did not measure get no target line; hostnetd is not in the run.
        assert!(!t.iter().any(|(w, _, _)| {
            w.contains("4 streams") || w.contains("server->guest") || w.contains("hostnetd")
        }));
        // Measured by the run but not by hostnet: not measured, neither met nor missed.
        let mut gap = dual_stack();
        gap.not_run.remove("tcp6_down");
        let t = gap.targets();
        let down = t
            .iter()
            .find(|(w, _, _)| w.contains("IPv6 within 10 % of IPv4, TCP server->guest, 1"))
            .unwrap();
        assert_eq!((down.1, down.2.as_str()), (None, "not measured"));
        let mut off = dual_stack();
        off.push(1500, Backend::Hostnet, "tcp6_up", 7.5);
        off.push(1500, Backend::Hostnet, "tcp6_up", 7.6);
        assert_eq!(
            off.targets()
                .iter()
                .find(|(w, _, _)| w.contains("hostnet: IPv6 within 10 % of IPv4, TCP guest"))
                .unwrap()
                .1,
            Some(true)
        );
    }

    #[test]
    fn the_table_shows_ipv6_rows_skips_and_figures_not_run() {
        let r = dual_stack();
        let table = r.table();
        let lines: Vec<&str> = table.lines().collect();
        let up = lines
            .iter()
            .position(|l| l.starts_with("  TCP guest->server, 1 stream"))
            .unwrap();
        assert!(
            lines[up + 2].trim_start().starts_with("IPv6 Gbit/s"),
            "{table}"
        );
        let ratio = lines[up + 3];
        assert!(ratio.contains("IPv6/IPv4") && ratio.contains("0.90") && ratio.contains("0.50"));
        assert!(lines[up + 2].contains("skipped"), "{table}");
        assert!(table.contains("passt-vhost-user tcp6_up: skipped: IPv4-only here"));
        // Not-run figures have no row but one line saying why.
        assert_eq!(table.matches("IPv6 Gbit/s").count(), 1, "{table}");
        assert_eq!(table.matches("IPv6 us").count(), 1, "{table}");
        assert!(table.contains("tcp6_down, tcp6_down4, tcp6_up4: --quick: not these"));
        let json = r.json(Value::Null);
        let up6 = &json["e2e"]["1500"]["hostnet"]["figures"]["tcp6_up"];
        assert_eq!(up6["x_ipv4"], 0.5);
        assert_eq!(up6["ipv4_twin"], "tcp_up");
        assert_eq!(json["not_run"]["tcp6_up4"], "--quick: not these");
    }
}
