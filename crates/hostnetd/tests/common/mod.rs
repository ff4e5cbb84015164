//! What the hostnetd integration tests share: a daemon started in a namespace, its ready
//! line read and its log lines collected, and a small world around it (H and S, a web server,
//! random blobs fetched whole). No QEMU; the tests' vhost-user frontends are testbed's
//! (`testbed::vhost_user`).
#![allow(dead_code)] // Each test crate uses a part.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testbed::netns::{Netns, Process};
use testbed::strip_ansi;

/// A running hostnetd in its own namespace, its ready line read; stderr lines without ANSI colours.
pub(crate) struct Daemon {
    pub(crate) process: Process,
    pub(crate) tun: String,
    pub(crate) stderr: mpsc::Receiver<String>,
    pub(crate) sock: std::path::PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Politely (it removes its sockets), then the Process guard kills it by PID.
        if self
            .process
            .child_mut()
            .try_wait()
            .is_ok_and(|s| s.is_none())
        {
            let _ = self.process.signal("TERM");
            let _ = self.process.wait_timeout(Duration::from_secs(5));
        }
        // A daemon that died (a failing test) left both sockets behind.
        let _ = std::fs::remove_file(&self.sock);
        let mut ctl = self.sock.clone().into_os_string();
        ctl.push(".ctl");
        let _ = std::fs::remove_file(ctl);
    }
}

impl Daemon {
    /// Starts hostnetd in `ns` on a socket named after the test's PID and `tag`.
    pub(crate) fn start(ns: &Netns, tag: &str) -> Self {
        Self::start_with(ns, tag, &[])
    }

    /// [`Daemon::start`] with `extra` arguments.
    pub(crate) fn start_with(ns: &Netns, tag: &str, extra: &[&str]) -> Self {
        let sock = std::env::temp_dir().join(format!("hostnetd-{}-{tag}.sock", std::process::id()));
        let Spawned {
            process,
            stderr: err_rx,
            stdout: rx,
        } = spawn(ns, &sock, extra);
        let ready = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("hostnetd printed no ready line within 10 s");
        let tun = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("tun="))
            .unwrap_or_else(|| panic!("no tun= in {ready:?}"))
            .to_owned();
        Self {
            process,
            tun,
            stderr: err_rx,
            sock,
        }
    }

    /// `hostnetd ctl COMMAND...` against this daemon's control socket: its stdout.
    pub(crate) fn ctl(&self, command: &str) -> std::io::Result<String> {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_hostnetd"))
            .args(["ctl", "--socket"])
            .arg(&self.sock)
            .args(command.split_whitespace())
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(format!(
                "hostnetd ctl {command}: {out:?}"
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The first log line containing `needle` within `within`.
    pub(crate) fn wait_for_line(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// A hostnetd process started by [`spawn`]: its stderr lines (ANSI colours stripped, echoed
/// to the test's stderr) and stdout lines, each read by a thread.
pub(crate) struct Spawned {
    pub(crate) process: Process,
    pub(crate) stderr: mpsc::Receiver<String>,
    pub(crate) stdout: mpsc::Receiver<String>,
}

/// Starts hostnetd in `ns` on `sock` with `--dns-upstream 198.18.0.2` and `extra` arguments;
/// `RUST_LOG` from `HND_LOG` (default `info`).
pub(crate) fn spawn(ns: &Netns, sock: &std::path::Path, extra: &[&str]) -> Spawned {
    spawn_env(ns, sock, extra, &[])
}

/// [`spawn`] with `env` variables set for hostnetd.
pub(crate) fn spawn_env(
    ns: &Netns,
    sock: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Spawned {
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_hostnetd"));
    cmd.envs(env.iter().copied());
    cmd.arg("--socket")
        .arg(sock)
        .args(["--dns-upstream", "198.18.0.2"])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("HND_LOG").unwrap_or_else(|_| "info".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut process = Process::spawn(&mut cmd).expect("starting hostnetd");
    let stderr = process.take_stderr().expect("stderr");
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let line = strip_ansi(&line);
            eprintln!("[hostnetd] {line}");
            let _ = err_tx.send(line);
        }
    });
    let stdout = process.take_stdout().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Spawned {
        process,
        stderr: err_rx,
        stdout: rx,
    }
}

/// `size` random bytes written to `dir/name`; their SHA-256 in hex (as `sha256sum` prints it).
pub(crate) fn random_blob(
    dir: &std::path::Path,
    name: &str,
    size: usize,
) -> std::io::Result<String> {
    use std::io::Read;
    let mut blob = vec![0u8; size];
    File::open("/dev/urandom")?.read_exact(&mut blob)?;
    std::fs::write(dir.join(name), &blob)?;
    let out = std::process::Command::new("sha256sum")
        .arg(dir.join(name))
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| std::io::Error::other("sha256sum printed nothing"))
}

/// curl of `url` in `ns`; an error unless what came has the SHA-256 `want` (hex).
pub(crate) fn fetch_whole(ns: &Netns, url: &str, want: &str) -> Result<(), String> {
    let got = ns
        .exec(&[
            "sh",
            "-c",
            &format!("curl -sS --max-time 60 {url} | sha256sum"),
        ])
        .map_err(|e| format!("curl {url}: {e:#}"))?;
    if got.split_whitespace().next() == Some(want) {
        Ok(())
    } else {
        Err(format!("download sha256 {got:?}, want {want}"))
    }
}

/// H's address on its veth to S (the simulated internet, 198.18.0.0/15).
pub(crate) const HOST_SERVER_ADDR: &str = "198.18.0.1";
/// S's address.
pub(crate) const SERVER_ADDR: &str = "198.18.0.2";

/// Namespaces `<tag>-h` (H) and `<tag>-s` (S) joined by a veth (H `srv0` HOST_SERVER_ADDR/15,
/// S `eth0` SERVER_ADDR/15, S's default route via H), IPv4 forwarding in H, and busybox httpd
/// serving `dir` on SERVER_ADDR:80 in S.
pub(crate) fn host_and_server(
    tag: &str,
    dir: &std::path::Path,
) -> std::io::Result<(Netns, Netns, Process)> {
    let host = Netns::new(&format!("{tag}-h"))?;
    let server = Netns::new(&format!("{tag}-s"))?;
    testbed::netns::veth(&host, "srv0", &server, "eth0")?;
    host.add_addr("srv0", &format!("{HOST_SERVER_ADDR}/15"))?;
    server.add_addr("eth0", &format!("{SERVER_ADDR}/15"))?;
    let via: std::net::Ipv4Addr = HOST_SERVER_ADDR
        .parse()
        .map_err(|e| std::io::Error::other(format!("{e}")))?;
    server.add_route("default", via)?;
    host.sysctl("net.ipv4.ip_forward", "1")?;
    let httpd = busybox_httpd(&server, &format!("{SERVER_ADDR}:80"), dir)?;
    Ok((host, server, httpd))
}

/// busybox httpd in `ns`, listening on `listen` (`ADDR:PORT` or a port), serving `dir`;
/// returns once the port listens (within 5 s), so that a fetch right after is not refused
/// (a CI run's guest-to-guest fetch was, when it came first).
pub(crate) fn busybox_httpd(
    ns: &Netns,
    listen: &str,
    dir: &std::path::Path,
) -> std::io::Result<Process> {
    let dir = dir
        .to_str()
        .ok_or_else(|| std::io::Error::other("temp dir is not UTF-8"))?;
    let httpd = ns.spawn(&["busybox", "httpd", "-f", "-p", listen, "-h", dir])?;
    let port = listen.rsplit(':').next().unwrap_or(listen);
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while ns
        .exec(&["ss", "-Hltn", &filter])
        .map_or(true, |out| out.trim().is_empty())
    {
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "busybox httpd does not listen on {listen} after 5 s"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(httpd)
}

/// A scratch folder of its own (the tests of one binary run in parallel: the PID and a
/// counter name it), removed on drop.
#[derive(Debug)]
pub(crate) struct Folder(std::path::PathBuf);

impl Folder {
    /// `$TMPDIR/<prefix>-<pid>-<n>`, created.
    pub(crate) fn new(prefix: &str) -> std::io::Result<Self> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl std::ops::Deref for Folder {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `ctl --json guests`: each guest's object, in port order.
pub(crate) fn guests_json(daemon: &Daemon) -> anyhow::Result<Vec<serde_json::Value>> {
    use anyhow::Context;
    let mut reply: serde_json::Value = serde_json::from_str(daemon.ctl("--json guests")?.trim())?;
    match reply["guests"].take() {
        serde_json::Value::Array(guests) => Ok(guests),
        other => Err(anyhow::anyhow!("no guests in the reply: {other}")).context("ctl guests"),
    }
}

/// One guest's queue pairs in use and each pair's (tx, rx) frames.
pub(crate) type PairCounters = (u64, Vec<(u64, u64)>);

/// [`PairCounters`] per guest, in port order.
pub(crate) fn pair_counters(daemon: &Daemon) -> anyhow::Result<Vec<PairCounters>> {
    use anyhow::Context;
    guests_json(daemon)?
        .iter()
        .map(|g| {
            let in_use = g["queue_pairs"].as_u64().context("no queue_pairs")?;
            let pairs = g["pairs"]
                .as_array()
                .context("no pairs")?
                .iter()
                .map(|p| {
                    (
                        p["tx_frames"].as_u64().unwrap_or(0),
                        p["rx_frames"].as_u64().unwrap_or(0),
                    )
                })
                .collect();
            Ok((in_use, pairs))
        })
        .collect()
}

/// `n` fetches of `url` one after another by curl in `ns`, each body thrown away: short
/// connections, each with a fresh source port (over several queue pairs, each lands on a
/// queue by its hash).
pub(crate) fn short_fetches(ns: &Netns, url: &str, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        ns.exec(&[
            "curl",
            "-sS",
            "-f",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            url,
        ])?;
    }
    Ok(())
}
