//! Network-namespace topologies for privileged tests, the demo and benches.
//!
//! Everything here shells out to `ip` (iproute2) and never touches the root namespace: a
//! [`Netns`] is created under a unique name (`hostnet-<what>-<pid>-<n>`), links are created
//! directly inside namespaces (a veth pair is made inside one namespace with its peer put
//! straight into the other), and [`Drop`] deletes the namespace again, also while a test
//! panics (unwinding runs `Drop`). Processes started with [`Netns::spawn`] are killed (by
//! PID) and reaped when their [`Process`] guard drops.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use testbed::netns::Topology;
//! let topo = Topology::new("demo")?; // guest, host and server namespaces
//! let out = topo.server.exec(&["ip", "-4", "addr", "show", "eth0"])?;
//! assert!(out.contains("198.18.0.2"));
//! # Ok(()) }
//! ```

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// A named network namespace that is deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `hostnet-<what>-<pid>-<n>` (unique per process and call) and
    /// brings its loopback up.
    ///
    /// # Errors
    /// `what` is empty or not `[a-z0-9-]`, the name would be too long, or `ip netns add` fails
    /// (no CAP_SYS_ADMIN, iproute2 missing).
    pub fn new(what: &str) -> anyhow::Result<Self> {
        if what.is_empty()
            || !what
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            bail!("namespace tag {what:?} must be non-empty [a-z0-9-]");
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("hostnet-{what}-{}-{n}", std::process::id());
        if name.len() > MAX_NAME_LEN {
            bail!("namespace name {name:?} is longer than {MAX_NAME_LEN} bytes");
        }
        run_ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as listed by `ip netns list`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A [`Command`] that runs `program` inside the namespace (`ip netns exec <name> program`).
    /// Add arguments, environment and stdio to it as usual.
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `argv` inside the namespace to completion and returns its stdout.
    ///
    /// # Errors
    /// `argv` is empty, the program can't be started, or it exits unsuccessfully (the error
    /// carries its stderr).
    pub fn exec(&self, argv: &[&str]) -> anyhow::Result<String> {
        let (program, args) = argv.split_first().context("exec: empty command line")?;
        let mut cmd = self.command(program);
        cmd.args(args);
        output_of(&mut cmd, &format!("{argv:?} in {}", self.name))
    }

    /// Runs `ip <args>` against this namespace (`ip -n <name> <args>`).
    ///
    /// # Errors
    /// `ip` fails; the error carries its stderr.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Adds an address in CIDR form (`"198.18.0.1/15"`) to `dev`.
    ///
    /// # Errors
    /// `ip addr add` fails.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> anyhow::Result<()> {
        self.ip(&["addr", "add", cidr, "dev", dev]).map(drop)
    }

    /// Sets `dev` up.
    ///
    /// # Errors
    /// `ip link set up` fails.
    pub fn link_up(&self, dev: &str) -> anyhow::Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    /// Adds a route to `dest` (`"default"` or a CIDR) via the gateway `via`.
    ///
    /// # Errors
    /// `ip route add` fails.
    pub fn add_route(&self, dest: &str, via: Ipv4Addr) -> anyhow::Result<()> {
        self.ip(&["route", "add", dest, "via", &via.to_string()])
            .map(drop)
    }

    /// Adds a route to `dest` (`"default"` or a CIDR) straight out of `dev`.
    ///
    /// # Errors
    /// `ip route add` fails.
    pub fn add_route_dev(&self, dest: &str, dev: &str) -> anyhow::Result<()> {
        self.ip(&["route", "add", dest, "dev", dev]).map(drop)
    }

    /// Writes a sysctl inside the namespace (`sysctl -w key=value` via `ip netns exec`).
    /// Network sysctls (`net.*`) are per namespace, so this never changes the root namespace's.
    ///
    /// # Errors
    /// `key` does not start with `net.`, or the write fails.
    pub fn sysctl(&self, key: &str, value: &str) -> anyhow::Result<()> {
        if !key.starts_with("net.") {
            bail!("sysctl {key:?} is not per-namespace (only net.* is allowed)");
        }
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Whether a link named `dev` exists in the namespace.
    ///
    /// # Errors
    /// `ip link show` can't be run at all.
    pub fn has_link(&self, dev: &str) -> anyhow::Result<bool> {
        let status = Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running ip link show")?;
        Ok(status.success())
    }

    /// Spawns `argv` inside the namespace with stdin null and stdout/stderr piped; the returned
    /// guard kills it (by PID) and reaps it when dropped.
    ///
    /// # Errors
    /// `argv` is empty or the program can't be started.
    pub fn spawn(&self, argv: &[&str]) -> anyhow::Result<Process> {
        let (program, args) = argv.split_first().context("spawn: empty command line")?;
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Process::spawn(&mut cmd).with_context(|| format!("spawning {argv:?} in {}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            tracing::warn!(netns = %self.name, "deleting namespace failed: {e:#}");
        }
    }
}

/// Whether a namespace of this name is currently listed by `ip netns list`.
///
/// # Errors
/// `ip netns list` fails.
pub fn exists(name: &str) -> anyhow::Result<bool> {
    let list = run_ip(&["netns", "list"])?;
    Ok(list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

/// Creates a veth pair: `a_dev` inside `a` and `b_dev` inside `b` (made inside `a`, the peer
/// put straight into `b`; nothing passes through the root namespace), both set up.
///
/// # Errors
/// `ip link add` or `ip link set up` fails.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> anyhow::Result<()> {
    a.ip(&[
        "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
    ])?;
    a.link_up(a_dev)?;
    b.link_up(b_dev)
}

/// A child process that is killed (SIGKILL by PID) and reaped when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawns `cmd` (configure its stdio first).
    ///
    /// # Errors
    /// The program can't be started.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        cmd.spawn().map(|child| Self { child })
    }

    /// The child's PID.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's piped stdout, once (`None` if already taken or not piped).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The child's piped stderr, once (`None` if already taken or not piped).
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// The underlying [`Child`].
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `signal` (a name such as `"TERM"`, `"INT"`) to the child by PID, with `kill(1)`.
    ///
    /// # Errors
    /// `kill` fails (e.g. the process is gone).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("kill");
        cmd.args(["-s", signal, &self.pid().to_string()]);
        output_of(&mut cmd, "kill").map(drop)
    }

    /// Waits up to `timeout` for the child to exit (polling every 10 ms).
    ///
    /// # Errors
    /// Waiting fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // `Child::kill` signals this child's own PID (never a name or a group).
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The standard three-namespace world: a guest, a host (the TUN goes here) and a server on the
/// simulated internet (198.18.0.0/15).
///
/// Built by [`Topology::new`]: `guest` is empty (`hostnet-lab attach` makes its `eth0` TAP);
/// `host` has `srv0` = [`HOST_SERVER_ADDR`]/15; `server` has `eth0` = [`SERVER_ADDR`]/15 and a
/// default route via [`HOST_SERVER_ADDR`]. IPv4 forwarding in `host` is left to `attach`.
/// Fields drop (namespaces are deleted) in declaration order.
#[derive(Debug)]
pub struct Topology {
    /// The guest namespace (the simulated guest's TAP `eth0` lives here).
    pub guest: Netns,
    /// The host namespace (runs `hostnet-lab attach`, holds the TUN, routes to the server).
    pub host: Netns,
    /// The server namespace on the simulated internet.
    pub server: Netns,
}

impl Topology {
    /// Creates the three namespaces, tagged `<tag>-g`, `<tag>-h`, `<tag>-s`, and the host–server
    /// link.
    ///
    /// # Errors
    /// Any `ip` step fails (what was already created is removed again).
    pub fn new(tag: &str) -> anyhow::Result<Self> {
        let guest = Netns::new(&format!("{tag}-g"))?;
        let host = Netns::new(&format!("{tag}-h"))?;
        let server = Netns::new(&format!("{tag}-s"))?;
        veth(&host, HOST_SERVER_DEV, &server, SERVER_DEV)?;
        host.add_addr(HOST_SERVER_DEV, &format!("{HOST_SERVER_ADDR}/15"))?;
        server.add_addr(SERVER_DEV, &format!("{SERVER_ADDR}/15"))?;
        server.add_route("default", HOST_SERVER_ADDR)?;
        Ok(Self {
            guest,
            host,
            server,
        })
    }
}

/// The host namespace's address on the simulated internet (the server's default gateway).
pub const HOST_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The server namespace's address.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The host namespace's link to the server namespace.
pub const HOST_SERVER_DEV: &str = "srv0";
/// The server namespace's link to the host namespace.
pub const SERVER_DEV: &str = "eth0";

fn run_ip(args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    output_of(&mut cmd, &format!("ip {}", args.join(" ")))
}

fn output_of(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Longest namespace name we create (a file name under /run/netns; keep it readable).
const MAX_NAME_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tags_are_refused_before_anything_runs() {
        assert!(Netns::new("").is_err());
        assert!(Netns::new("Bad Tag").is_err());
        assert!(Netns::new(&"x".repeat(80)).is_err());
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn namespace_exists_until_dropped() -> anyhow::Result<()> {
        let ns = Netns::new("t-life")?;
        let name = ns.name().to_owned();
        assert!(name.starts_with(&format!("hostnet-t-life-{}-", std::process::id())));
        assert!(exists(&name)?);
        assert!(ns.exec(&["ip", "link", "show", "lo"])?.contains("UP"));
        drop(ns);
        assert!(!exists(&name)?);
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn namespace_is_deleted_when_a_test_panics() -> anyhow::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let joined = std::thread::spawn(move || {
            let ns = Netns::new("t-panic").map_err(|e| e.to_string());
            let name: Result<String, String> = match &ns {
                Ok(n) => Ok(n.name().to_owned()),
                Err(e) => Err(e.clone()),
            };
            let _ = tx.send(name);
            panic!("deliberate panic with a live namespace");
        })
        .join();
        assert!(joined.is_err(), "the thread should have panicked");
        let name = rx.recv()?.map_err(anyhow::Error::msg)?;
        assert!(!exists(&name)?, "{name} survived the panic");
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn topology_routes_between_host_and_server_and_cleans_up() -> anyhow::Result<()> {
        let topo = Topology::new("t-topo")?;
        let names = [
            topo.guest.name().to_owned(),
            topo.host.name().to_owned(),
            topo.server.name().to_owned(),
        ];
        for n in &names {
            assert!(exists(n)?);
        }
        assert!(topo.host.has_link(HOST_SERVER_DEV)?);
        assert!(!topo.guest.has_link(HOST_SERVER_DEV)?);
        topo.host
            .exec(&["ping", "-c", "1", "-W", "2", &SERVER_ADDR.to_string()])?;
        let routes = topo.server.ip(&["route", "show", "default"])?;
        assert!(routes.contains(&HOST_SERVER_ADDR.to_string()), "{routes}");
        drop(topo);
        for n in &names {
            assert!(!exists(n)?, "{n} still exists");
        }
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn spawned_process_is_killed_on_drop() -> anyhow::Result<()> {
        let ns = Netns::new("t-proc")?;
        let proc = ns.spawn(&["sleep", "30"])?;
        let pid = proc.pid();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        drop(proc);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
        Ok(())
    }
}
