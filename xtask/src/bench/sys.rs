//! Processes and commands with time limits: everything the bench starts is owned by a guard
//! that kills it (by PID) on drop, also when a step fails (namespaces: crate `netns`).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A child process, killed by PID and reaped on drop.
#[derive(Debug)]
pub(super) struct Proc {
    pub(super) what: String,
    child: Child,
    /// Lines of its stdout, when it was spawned with [`Proc::spawn_lines`].
    lines: Option<mpsc::Receiver<String>>,
}

impl Proc {
    /// Spawns `cmd` with stdin closed, stdout discarded and stderr appended to `log`.
    pub(super) fn spawn(what: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(log)?)
            .spawn()
            .with_context(|| format!("{what}: could not start"))?;
        Ok(Self {
            what: what.to_owned(),
            child,
            lines: None,
        })
    }

    /// Like [`Proc::spawn`], but its stdout lines can be awaited with [`Proc::wait_line`].
    pub(super) fn spawn_lines(what: &str, cmd: &mut Command, log: &Path) -> Result<Self> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file(log)?)
            .spawn()
            .with_context(|| format!("{what}: could not start"))?;
        let lines = child.stdout.take().map(line_reader);
        Ok(Self {
            what: what.to_owned(),
            child,
            lines,
        })
    }

    /// The process id.
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub(super) fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `limit` for a stdout line starting with `prefix`; fails if the process
    /// exits or the time runs out first.
    pub(super) fn wait_line(&mut self, prefix: &str, limit: Duration) -> Result<String> {
        let Some(lines) = &self.lines else {
            bail!("{}: stdout is not captured", self.what);
        };
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("{}: no {prefix:?} line within {limit:?}", self.what);
            }
            match lines.recv_timeout(left.min(POLL)) {
                Ok(line) if line.starts_with(prefix) => return Ok(line),
                Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    bail!(
                        "{}: exited before printing {prefix:?} ({})",
                        self.what,
                        status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string())
                    );
                }
            }
        }
    }

    /// Sends SIGTERM, waits up to `grace`, then SIGKILL. Returns whether it exited by itself
    /// within the grace period with status 0.
    pub(super) fn terminate(&mut self, grace: Duration) -> bool {
        if !self.alive() {
            return self
                .child
                .try_wait()
                .ok()
                .flatten()
                .is_some_and(|s| s.success());
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion within `limit` (killed by PID after that) and returns its output.
pub(super) fn run_limited(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start {cmd:?}"))?;
    let out = child.stdout.take().map(reader);
    let err = child.stderr.take().map(reader);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} timed out after {limit:?}", describe(cmd));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

/// Like [`run_limited`], but a non-zero exit status is an error carrying the end of stderr.
pub(super) fn run_ok(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let out = run_limited(cmd, limit)?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            tail.join(" / ")
        );
    }
    Ok(out)
}

/// Finds a program in PATH (and the sbin directories, which a non-login root shell may lack).
pub(super) fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// User + system CPU time of process `pid` (all its threads) in seconds.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// The machine's CPU time from `/proc/stat` (all CPUs, in clock ticks): (idle and iowait,
/// total).
pub(super) fn machine_cpu() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_cpu(stat.lines().next()?)
}

/// The `cpu` line of `/proc/stat`: (idle + iowait, the sum of its first eight fields).
fn parse_machine_cpu(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let v: Vec<u64> = fields
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 8).then(|| (v[3] + v[4], v.iter().sum()))
}

/// CPU seconds of each thread of process `pid`: (thread id, thread name, seconds).
pub(super) fn thread_cpu(pid: u32) -> Vec<(u32, String, f64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(stat) = std::fs::read_to_string(format!("{base}/stat")) else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("{base}/comm")).unwrap_or_default();
        if let Some(secs) = parse_stat_cpu(&stat) {
            out.push((tid, comm.trim().to_owned(), secs));
        }
    }
    out
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may hold spaces: count fields after its closing parenthesis.
    let after = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')': state is field 3, so utime (14) and stime (15) are at 11 and 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn line_reader(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn log_file(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("open {}", path.display()))
}

/// Limit for set-up commands (ip, sysctl, nft).
pub(super) const CMD_LIMIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(20);

#[cfg(test)]
mod tests {
    #[test]
    fn machine_cpu_sums_the_first_eight_fields_and_takes_idle_and_iowait() {
        let line = "cpu  100 5 50 800 20 1 4 10 0 0";
        assert_eq!(parse_machine_cpu(line), Some((820, 990)));
        assert_eq!(parse_machine_cpu("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(parse_machine_cpu("cpu 1 2 3"), None);
    }

    use super::*;

    #[test]
    fn cpu_time_of_this_process_grows() {
        let before = cpu_seconds(std::process::id()).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_seconds(std::process::id()).unwrap();
        assert!(after > before, "{before} -> {after}");
    }

    #[test]
    fn time_limit_kills_a_slow_command() {
        let started = Instant::now();
        let r = run_limited(Command::new("sleep").arg("5"), Duration::from_millis(200));
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(3));
        let out = run_ok(Command::new("echo").arg("hi"), CMD_LIMIT).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hi");
        assert!(run_ok(&mut Command::new("false"), CMD_LIMIT).is_err());
    }
}
