//! The demo (`cargo xtask demo`) on testbed's [`Topology`]: a simulated virtio-net guest gets
//! a lease by DHCP and reaches a server through hostnet's NAT.
//!
//! [`run`] makes the three namespaces (guest, host, server on 198.18.0.0/15 with busybox httpd
//! serving a 32 MiB file), runs `hostnet-lab attach` in the host namespace, and as the guest:
//! gets a lease with busybox udhcpc ([`netns::lease`]), pings the gateway and the server and
//! downloads the file with curl (compared byte for byte). It prints its steps to stderr and a
//! summary to stdout (the lease, RTTs, bytes, throughput against a baseline download from the
//! host namespace, and the `stats:` lines attach prints on SIGTERM), then removes everything,
//! also on failure. Linux only; needs root and `ip`, `ping`, `curl`, `busybox`, `kill`.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::netns::{self, Netns, Process, SERVER_ADDR, Topology, lease};

/// Runs the demo with the `hostnet-lab` binary at `lab_bin`; prints the summary to stdout.
///
/// # Errors
/// Any step fails (a namespace can't be made, attach is not ready within 20 s, no lease, a
/// ping or the download fails, the file differs); the error says which, with the end of
/// attach's log where it helps.
pub fn run(lab_bin: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    for name in netns::remove_stale("demo-") {
        step("cleanup", &format!("removed stale namespace {name}"));
    }
    let mut world = World::new()?;
    step(
        "topology",
        &format!(
            "guest {}, host {}, server {}",
            world.topo.guest.name(),
            world.topo.host.name(),
            world.topo.server.name()
        ),
    );
    let blob = world.make_blob()?;
    world.start_httpd()?;
    let baseline = world.fetch(&world.topo.host, "host namespace, straight to the server")?;

    step(
        "attach",
        "starting hostnet-lab attach in the host namespace",
    );
    let ready = world.start_attach(lab_bin)?;
    let lease = world.dhcp()?;
    let ping_gw = world.ping(GATEWAY)?;
    let ping_srv = world.ping(SERVER_ADDR)?;
    let fetch = world.fetch(&world.topo.guest, "guest, through the bridge and the NAT")?;
    let same = fs::read(world.dir.join("got.bin"))
        .map(|got| got == blob)
        .unwrap_or(false);
    if !same {
        bail!("the file the guest downloaded differs from the one the server has");
    }
    let (stop, stats) = world.stop_attach()?;
    drop(world);

    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nhostnet demo: a simulated virtio-net guest on the simulated internet"
    );
    let _ = writeln!(s, "  attach   {ready}");
    let (l, took_ms) = &lease;
    let _ = writeln!(
        s,
        "  lease    {}/{} router {} dns {} mtu {} lease {} s (busybox udhcpc, {took_ms} ms)",
        l.ip,
        l.mask,
        join(&l.routers),
        join(&l.dns),
        or_dash(l.mtu),
        or_dash(l.lease_secs),
    );
    let _ = writeln!(s, "  ping     gateway {GATEWAY}: {ping_gw}");
    let _ = writeln!(s, "  ping     server  {SERVER_ADDR}: {ping_srv}");
    let _ = writeln!(
        s,
        "  http     GET http://{SERVER_ADDR}/{BLOB}: {} bytes in {:.3} s = {:.0} Mbit/s, content verified",
        fetch.bytes,
        fetch.secs,
        fetch.mbit()
    );
    let _ = writeln!(
        s,
        "           baseline from the host namespace: {:.0} Mbit/s (guest/baseline {:.2})",
        baseline.mbit(),
        fetch.mbit() / baseline.mbit()
    );
    let _ = writeln!(s, "  shutdown SIGTERM -> {stop}");
    if stats.is_empty() {
        let _ = writeln!(s, "  stats    (attach printed none)");
    } else {
        let _ = writeln!(s, "  stats (printed by attach on shutdown):");
        for l in &stats {
            let _ = writeln!(s, "           {l}");
        }
    }
    let _ = writeln!(
        s,
        "  cleaned up: namespaces, processes, scratch files; total {:.1} s",
        started.elapsed().as_secs_f64()
    );
    print!("{s}");
    Ok(())
}

/// The demo's namespaces, processes and scratch folder; dropping it removes all of them.
struct World {
    // Fields drop in declaration order: attach (SIGTERM first, see `Drop`), the server, then
    // the namespaces, then the scratch folder (removed in `Drop`).
    attach: Option<Process>,
    httpd: Option<Process>,
    topo: Topology,
    dir: PathBuf,
    attach_log: PathBuf,
}

struct Fetch {
    bytes: u64,
    secs: f64,
}

impl Fetch {
    fn mbit(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.secs.max(1e-6) / 1e6
    }
}

impl World {
    fn new() -> anyhow::Result<Self> {
        let topo = Topology::new("demo").context("making the namespaces")?;
        let dir = std::env::temp_dir().join(format!("hostnet-demo-{}", std::process::id()));
        fs::create_dir_all(dir.join("www")).with_context(|| format!("creating {dir:?}"))?;
        Ok(Self {
            attach: None,
            httpd: None,
            topo,
            attach_log: dir.join("attach.log"),
            dir,
        })
    }

    /// Writes the file the server serves (pseudo-random bytes) and returns its contents.
    fn make_blob(&self) -> anyhow::Result<Vec<u8>> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut data = Vec::with_capacity(BLOB_LEN);
        while data.len() < BLOB_LEN {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            data.extend_from_slice(&x.to_le_bytes());
        }
        fs::write(self.dir.join("www").join(BLOB), &data).context("writing the blob")?;
        fs::write(self.dir.join("www").join("index.html"), "hostnet demo\n")?;
        Ok(data)
    }

    fn start_httpd(&mut self) -> anyhow::Result<()> {
        let www = path_str(&self.dir.join("www"))?;
        let server = &self.topo.server;
        step(
            "server",
            &format!("busybox httpd on {SERVER_ADDR}:80 in {}", server.name()),
        );
        let mut cmd = server.command("busybox");
        cmd.args([
            "httpd",
            "-f",
            "-p",
            &format!("{SERVER_ADDR}:80"),
            "-h",
            &www,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.httpd = Some(Process::spawn(&mut cmd).context("starting busybox httpd")?);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ok = server
                .command("timeout")
                .args(["2", "curl", "-sf", "-o", "/dev/null"])
                .arg(format!("http://{SERVER_ADDR}/index.html"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("busybox httpd did not come up on {SERVER_ADDR}:80");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_attach(&mut self, bin: &Path) -> anyhow::Result<String> {
        let log = fs::File::create(&self.attach_log).context("creating attach.log")?;
        let mut cmd = self.topo.host.command(bin);
        cmd.args(["attach", "--guest-netns", self.topo.guest.name()])
            .args(["--host-netns", self.topo.host.name()])
            .args(["--dns-upstream", &SERVER_ADDR.to_string()])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut proc =
            Process::spawn(&mut cmd).with_context(|| format!("starting {}", bin.display()))?;
        let stdout = proc.take_stdout().context("attach stdout")?;
        self.attach = Some(proc);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready ") => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "hostnet-lab attach did not print its ready line within {READY_WITHIN:?}; \
                     its log:\n{}",
                    tail(&self.attach_log, 30)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = match self.attach.as_mut() {
                        Some(p) => p.wait_timeout(Duration::from_secs(2))?,
                        None => None,
                    };
                    let status = status.map_or_else(|| "?".to_owned(), |s| s.to_string());
                    bail!(
                        "hostnet-lab attach exited ({status}) before it was ready; its log:\n{}",
                        tail(&self.attach_log, 30)
                    )
                }
            }
        }
    }

    /// A lease with busybox udhcpc in the guest; returns it with how long it took (ms).
    fn dhcp(&self) -> anyhow::Result<(lease::Lease, u128)> {
        let out = self.dir.join("lease");
        let script = self.dir.join("udhcpc.sh");
        lease::write_udhcpc_script(&script, &out).context("writing udhcpc script")?;
        step("dhcp", "busybox udhcpc -i eth0 in the guest namespace");
        let t = Instant::now();
        let o = self
            .topo
            .guest
            .command("timeout")
            .args([
                "30", "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
            ])
            .args(["-T", "2", "-A", "1", "-O", "mtu", "-s"])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .context("running udhcpc")?;
        let took_ms = t.elapsed().as_millis();
        if !o.status.success() {
            bail!(
                "udhcpc got no lease ({}): {}{}\nattach log:\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                tail(&self.attach_log, 20)
            );
        }
        let lease = lease::Lease::read(&out).context("udhcpc ran but its hook wrote no lease")?;
        Ok((lease, took_ms))
    }

    /// Pings `addr` 5 times from the guest; returns "5/5 replies, rtt min/avg/max … ms".
    fn ping(&self, addr: Ipv4Addr) -> anyhow::Result<String> {
        step("ping", &format!("guest -> {addr}"));
        let o = self
            .topo
            .guest
            .command("timeout")
            .args(["15", "ping", "-q", "-n", "-c", "5", "-i", "0.2", "-W", "2"])
            .arg(addr.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running ping")?;
        let text = String::from_utf8_lossy(&o.stdout);
        let received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|p| p.split_whitespace().next())
            .unwrap_or("0")
            .to_owned();
        let rtt = text
            .lines()
            .find(|l| l.starts_with("rtt"))
            .and_then(|l| l.split(" = ").nth(1))
            .map(|v| {
                let v: Vec<&str> = v.trim_end_matches(" ms").split('/').collect();
                format!(
                    "min/avg/max {}/{}/{} ms",
                    v.first().unwrap_or(&"?"),
                    v.get(1).unwrap_or(&"?"),
                    v.get(2).unwrap_or(&"?")
                )
            });
        match rtt {
            Some(rtt) if o.status.success() => Ok(format!("{received}/5 replies, rtt {rtt}")),
            _ => bail!("ping {addr} from the guest failed:\n{text}"),
        }
    }

    /// Downloads the blob with curl from namespace `ns` into `got.bin`.
    fn fetch(&self, ns: &Netns, what: &str) -> anyhow::Result<Fetch> {
        step(
            "http",
            &format!("curl http://{SERVER_ADDR}/{BLOB} ({what})"),
        );
        let got = path_str(&self.dir.join("got.bin"))?;
        let o = ns
            .command("timeout")
            .args([
                "40",
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "35",
                "-o",
                &got,
            ])
            .args(["-w", "%{size_download} %{time_total}"])
            .arg(format!("http://{SERVER_ADDR}/{BLOB}"))
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !o.status.success() {
            bail!(
                "curl from {} failed ({}): {}",
                ns.name(),
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace();
        let bytes = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        if bytes != BLOB_LEN as u64 {
            bail!("curl from {} got {bytes} bytes, want {BLOB_LEN}", ns.name());
        }
        Ok(Fetch { bytes, secs })
    }

    /// SIGTERM to attach; returns how it ended and the lines it logged after the signal.
    fn stop_attach(&mut self) -> anyhow::Result<(String, Vec<String>)> {
        let mut proc = self.attach.take().context("attach is not running")?;
        let before = fs::metadata(&self.attach_log).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        proc.signal("TERM").context("kill -s TERM attach")?;
        let status = proc.wait_timeout(Duration::from_secs(5))?;
        let took = t.elapsed();
        let how = match status {
            Some(s) if s.success() => format!("exit 0 after {} ms", took.as_millis()),
            Some(s) => format!("{s} after {} ms (expected exit 0)", took.as_millis()),
            None => format!("still running after {} ms: killed", took.as_millis()),
        };
        drop(proc);
        let mut log = String::new();
        if let Ok(mut f) = fs::File::open(&self.attach_log) {
            let _ = f.read_to_string(&mut log);
        }
        let after = log
            .get(usize::try_from(before).unwrap_or(0)..)
            .unwrap_or("");
        let lines: Vec<String> = after
            .lines()
            .map(crate::strip_ansi)
            .filter(|l| !l.trim().is_empty())
            .take(40)
            .collect();
        // attach prints its counters as `stats: ...` lines; show those, or all if it changes.
        let stats: Vec<String> = lines
            .iter()
            .filter(|l| l.trim_start().starts_with("stats"))
            .cloned()
            .collect();
        Ok((how, if stats.is_empty() { lines } else { stats }))
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // attach gets SIGTERM first so that it removes its TUN and TAP itself; its `Process`
        // guard kills it (by PID) if it has not exited within 3 s.
        if let Some(mut a) = self.attach.take() {
            let _ = a.signal("TERM");
            let _ = a.wait_timeout(Duration::from_secs(3));
        }
        self.httpd = None;
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn join(addrs: &[Ipv4Addr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

fn or_dash(v: Option<u32>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {p:?} is not UTF-8"))
}

fn tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn step(what: &str, detail: &str) {
    eprintln!("==> {what:<8} {detail}");
}

const GATEWAY: Ipv4Addr = bridge::defaults::GATEWAY;
const BLOB: &str = "blob.bin";
const BLOB_LEN: usize = 32 * 1024 * 1024;
/// How long attach may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_sequences_are_stripped_and_missing_values_dashed() {
        assert_eq!(
            crate::strip_ansi("\u{1b}[2mstats:\u{1b}[0m guest tx 1"),
            "stats: guest tx 1"
        );
        assert_eq!(join(&[]), "-");
        assert_eq!(
            join(&[Ipv4Addr::new(192, 168, 64, 1), Ipv4Addr::new(9, 9, 9, 9)]),
            "192.168.64.1 9.9.9.9"
        );
        assert_eq!(or_dash(None), "-");
        assert_eq!(or_dash(Some(1500)), "1500");
    }
}
