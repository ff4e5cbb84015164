//! `cargo xtask demo`: the main job, end to end, in under a minute.
//!
//! Builds `hostnet-lab` (`cargo build -p testbed --bin hostnet-lab`), makes three network
//! namespaces (guest, host, server on 198.18.0.0/15 with busybox httpd), runs
//! `hostnet-lab attach`, and then, as the guest: gets a lease with busybox udhcpc, pings the
//! gateway and the server, downloads a file with curl and checks it. Prints a short summary
//! (lease, RTTs, bytes, throughput, the NAT/bridge stats `attach` prints on shutdown) and
//! removes everything again. Needs root on Linux; installs missing Debian packages with
//! apt-get when it is root (otherwise it says what to install). Never touches the root
//! network namespace.

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs the demo.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            println!("usage: cargo xtask demo\n\n{}", HELP);
            return Ok(());
        }
        bail!("cargo xtask demo takes no arguments (got {a:?}); see --help");
    }
    if !cfg!(target_os = "linux") {
        bail!("the demo needs Linux network namespaces");
    }
    let started = Instant::now();
    let root = is_root();
    ensure_tools(root)?;
    if !root {
        bail!(
            "the demo creates network namespaces and TUN/TAP devices: run it as root, e.g. \
             `sudo -E env PATH=\"$PATH\" cargo xtask demo`"
        );
    }
    let lab_bin = build_hostnet_lab()?;
    remove_stale_namespaces();

    let mut world = World::new()?;
    step(
        "topology",
        &format!("guest {}, host {}, server {}", world.g, world.h, world.s),
    );
    world.build_topology()?;
    let blob = world.make_blob()?;
    world.start_httpd()?;
    let baseline = world.fetch(&world.h.clone(), "host namespace, straight to the server")?;

    step(
        "attach",
        "starting hostnet-lab attach in the host namespace",
    );
    let ready = world.start_attach(&lab_bin)?;
    let lease = world.dhcp()?;
    let ping_gw = world.ping(GATEWAY)?;
    let ping_srv = world.ping(SERVER)?;
    let fetch = world.fetch(&world.g.clone(), "guest, through the bridge and the NAT")?;
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
    let l = &lease.lease;
    let _ = writeln!(
        s,
        "  lease    {}/{} router {} dns {} mtu {} lease {} s (busybox udhcpc, {} ms)",
        l.ip,
        l.mask,
        join(&l.routers),
        join(&l.dns),
        or_dash(l.mtu),
        or_dash(l.lease_secs),
        lease.took_ms
    );
    let _ = writeln!(s, "  ping     gateway {GATEWAY}: {ping_gw}");
    let _ = writeln!(s, "  ping     server  {SERVER}: {ping_srv}");
    let _ = writeln!(
        s,
        "  http     GET http://{SERVER}/{BLOB}: {} bytes in {:.3} s = {:.0} Mbit/s, content verified",
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
    g: String,
    h: String,
    s: String,
    dir: PathBuf,
    made: Vec<String>,
    procs: Vec<Child>,
    attach: Option<Child>,
    attach_log: PathBuf,
}

struct Lease {
    lease: netns::lease::Lease,
    took_ms: u128,
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
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("hostnet-demo-{pid}"));
        fs::create_dir_all(dir.join("www")).with_context(|| format!("creating {dir:?}"))?;
        Ok(Self {
            g: format!("hostnet-demo-g-{pid}-0"),
            h: format!("hostnet-demo-h-{pid}-0"),
            s: format!("hostnet-demo-s-{pid}-0"),
            attach_log: dir.join("attach.log"),
            dir,
            made: Vec::new(),
            procs: Vec::new(),
            attach: None,
        })
    }

    fn build_topology(&mut self) -> anyhow::Result<()> {
        for ns in [self.g.clone(), self.h.clone(), self.s.clone()] {
            run_ok("ip", &["netns", "add", &ns])?;
            self.made.push(ns.clone());
            run_ok("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (h, s) = (self.h.as_str(), self.s.as_str());
        // The veth pair is made inside H with its peer put straight into S.
        run_ok(
            "ip",
            &[
                "-n", h, "link", "add", "srv0", "type", "veth", "peer", "name", "eth0", "netns", s,
            ],
        )?;
        run_ok(
            "ip",
            &["-n", h, "addr", "add", "198.18.0.1/15", "dev", "srv0"],
        )?;
        run_ok(
            "ip",
            &["-n", s, "addr", "add", "198.18.0.2/15", "dev", "eth0"],
        )?;
        run_ok("ip", &["-n", h, "link", "set", "srv0", "up"])?;
        run_ok("ip", &["-n", s, "link", "set", "eth0", "up"])?;
        run_ok(
            "ip",
            &["-n", s, "route", "add", "default", "via", "198.18.0.1"],
        )?;
        Ok(())
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
        step(
            "server",
            &format!("busybox httpd on {SERVER}:80 in {}", self.s),
        );
        let child = ns_cmd(&self.s, "busybox")
            .args(["httpd", "-f", "-p", &format!("{SERVER}:80"), "-h", &www])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting busybox httpd")?;
        self.procs.push(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ok = ns_cmd(&self.s, "timeout")
                .args([
                    "2",
                    "curl",
                    "-sf",
                    "-o",
                    "/dev/null",
                    &format!("http://{SERVER}/index.html"),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("busybox httpd did not come up on {SERVER}:80");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_attach(&mut self, bin: &Path) -> anyhow::Result<String> {
        let log = fs::File::create(&self.attach_log).context("creating attach.log")?;
        let mut child = ns_cmd(&self.h, bin)
            .args([
                "attach",
                "--guest-netns",
                &self.g,
                "--host-netns",
                &self.h,
                "--dns-upstream",
                SERVER,
            ])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("attach stdout")?;
        self.attach = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready ") => return Ok(line),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                    "hostnet-lab attach did not print its ready line within 20 s; its log:\n{}",
                    tail(&self.attach_log, 30)
                ),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = match self.attach.as_mut() {
                        Some(c) => wait_timeout(c, Duration::from_secs(2))?,
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

    fn dhcp(&self) -> anyhow::Result<Lease> {
        let out = self.dir.join("lease");
        let script = self.dir.join("udhcpc.sh");
        netns::lease::write_udhcpc_script(&script, &out).context("writing udhcpc script")?;
        step("dhcp", "busybox udhcpc -i eth0 in the guest namespace");
        let t = Instant::now();
        let o = ns_cmd(&self.g, "timeout")
            .args([
                "30", "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5",
            ])
            .args(["-T", "2", "-A", "1", "-O", "mtu", "-s", &path_str(&script)?])
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
        let lease =
            netns::lease::Lease::read(&out).context("udhcpc ran but its hook wrote no lease")?;
        Ok(Lease { lease, took_ms })
    }

    /// Pings `addr` 5 times from the guest; returns "5/5 rtt min/avg/max = ... ms".
    fn ping(&self, addr: &str) -> anyhow::Result<String> {
        step("ping", &format!("guest -> {addr}"));
        let o = ns_cmd(&self.g, "timeout")
            .args([
                "15", "ping", "-q", "-n", "-c", "5", "-i", "0.2", "-W", "2", addr,
            ])
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
    fn fetch(&self, ns: &str, what: &str) -> anyhow::Result<Fetch> {
        step("http", &format!("curl http://{SERVER}/{BLOB} ({what})"));
        let got = path_str(&self.dir.join("got.bin"))?;
        let o = ns_cmd(ns, "timeout")
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
            .args([
                "-w",
                "%{size_download} %{time_total}",
                &format!("http://{SERVER}/{BLOB}"),
            ])
            .stdin(Stdio::null())
            .output()
            .context("running curl")?;
        if !o.status.success() {
            bail!(
                "curl from {ns} failed ({}): {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&o.stdout);
        let mut it = text.split_whitespace();
        let bytes = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        let secs = it.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        if bytes != BLOB_LEN as u64 {
            bail!("curl from {ns} got {bytes} bytes, want {BLOB_LEN}");
        }
        Ok(Fetch { bytes, secs })
    }

    /// SIGTERM to attach; returns how it ended and the lines it logged after the signal.
    fn stop_attach(&mut self) -> anyhow::Result<(String, Vec<String>)> {
        let mut child = self.attach.take().context("attach is not running")?;
        let before = fs::metadata(&self.attach_log).map(|m| m.len()).unwrap_or(0);
        let t = Instant::now();
        run_ok("kill", &["-s", "TERM", &child.id().to_string()])?;
        let status = wait_timeout(&mut child, Duration::from_secs(5))?;
        let took = t.elapsed();
        let how = match status {
            Some(s) if s.success() => format!("exit 0 after {} ms", took.as_millis()),
            Some(s) => format!("{s} after {} ms (expected exit 0)", took.as_millis()),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                format!("still running after {} ms: killed", took.as_millis())
            }
        };
        let mut log = String::new();
        if let Ok(mut f) = fs::File::open(&self.attach_log) {
            let _ = f.read_to_string(&mut log);
        }
        let after = log
            .get(usize::try_from(before).unwrap_or(0)..)
            .unwrap_or("");
        let lines: Vec<String> = after
            .lines()
            .map(strip_ansi)
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
        if let Some(mut a) = self.attach.take() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &a.id().to_string()])
                .status();
            if !matches!(wait_timeout(&mut a, Duration::from_secs(3)), Ok(Some(_))) {
                let _ = a.kill();
                let _ = a.wait();
            }
        }
        for mut p in self.procs.drain(..) {
            let _ = p.kill();
            let _ = p.wait();
        }
        for ns in self.made.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Whether the effective user is root (from /proc/self/status).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Makes sure the programs the demo runs exist; as root, installs what is missing.
fn ensure_tools(root: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root || which("apt-get").is_none() {
        bail!("missing programs; install them first (Debian/Ubuntu): `apt-get install -y {list}`");
    }
    step("setup", &format!("installing {list} with apt-get"));
    let update = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update}); install by hand: `apt-get install -y {list}`");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install {list} failed ({install})");
    }
    if let Some((program, package)) = TOOLS.iter().find(|(p, _)| which(p).is_none()) {
        bail!("{program} is still missing after installing {package}");
    }
    Ok(())
}

/// Builds `hostnet-lab` and returns its path.
fn build_hostnet_lab() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf();
    step("build", "cargo build -p testbed --bin hostnet-lab");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "testbed", "--bin", "hostnet-lab"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p testbed --bin hostnet-lab failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let bin = target.join("debug").join("hostnet-lab");
    if !bin.is_file() {
        bail!("built hostnet-lab but it is not at {}", bin.display());
    }
    Ok(bin)
}

/// Deletes `hostnet-demo-*` namespaces left by an earlier demo whose process is gone
/// (e.g. interrupted with Ctrl-C). Only names of our own scheme are touched.
fn remove_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(rest) = name.strip_prefix("hostnet-demo-") else {
            continue;
        };
        let pid = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            step("cleanup", &format!("removing stale namespace {name}"));
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn ns_cmd(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

fn run_ok(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let o = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {program}"))?;
    if !o.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

fn wait_timeout(child: &mut Child, limit: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip a CSI sequence: ESC '[' params final-byte.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn step(what: &str, detail: &str) {
    eprintln!("==> {what:<8} {detail}");
}

fn join(addrs: &[std::net::Ipv4Addr]) -> String {
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

const HELP: &str = "Builds hostnet-lab, makes guest/host/server network namespaces (server: busybox \
httpd on 198.18.0.2), runs `hostnet-lab attach`, and as the guest gets a DHCP lease (busybox \
udhcpc), pings the gateway and the server, and downloads a file with curl. Prints a summary and \
removes everything. Needs root; installs iproute2 iputils-ping curl busybox procps with apt-get if missing.";

/// Programs the demo runs and the Debian packages that have them.
const TOOLS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("busybox", "busybox"),
    ("kill", "procps"),
];
const GATEWAY: &str = "192.168.64.1";
const SERVER: &str = "198.18.0.2";
const BLOB: &str = "blob.bin";
const BLOB_LEN: usize = 32 * 1024 * 1024;
