//! Uniquely named Linux network namespaces for hostnet's privileged tests, the demo and the
//! benches (dev only, `publish = false`; never a normal dependency of a library crate).
//!
//! Everything shells out to `ip` (iproute2). The guarantees:
//!
//! - **The root namespace is never changed.** A [`Netns`] is a new namespace; links are made
//!   directly inside namespaces (a veth pair is created inside one namespace with its peer put
//!   straight into the other, [`veth`]); sysctls are written only under `net.*` inside the
//!   namespace ([`Netns::sysctl`]).
//! - **Names are unique per run:** `hostnet-<tag>-<pid>-<n>`, with this process's PID and a
//!   per-process counter, so parallel tests and parallel runs never collide, and
//!   [`remove_stale`] can tell leftovers of dead processes by their PID.
//! - **Cleanup on drop**, also when a test fails: [`Drop`] runs `ip netns del` (unwinding runs
//!   it while a test panics); a [`Process`] is killed by its PID and reaped when it drops.
//!
//! It also holds the one busybox `udhcpc` hook script that the e2e tests, the demo and the
//! bench use to configure a guest interface from its DHCP lease ([`lease`]).
//!
//! Std only. Linux at run time; it builds everywhere (on other systems `ip` is missing and
//! [`Netns::new`] fails).
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let (a, b) = (netns::Netns::new("doc-a")?, netns::Netns::new("doc-b")?);
//! netns::veth(&a, "veth0", &b, "veth1")?;
//! a.add_addr("veth0", "198.18.0.1/15")?;
//! b.add_addr("veth1", "198.18.0.2/15")?;
//! a.exec(&["ping", "-c", "1", "198.18.0.2"])?;
//! # Ok(()) } // both namespaces (and the veth pair) are gone here
//! ```
//!
//! MSRV: the workspace `rust-version` (1.95).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::OsStr;
use std::io;
use std::net::Ipv4Addr;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod lease;

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// The namespace, open (for `setns` users such as `utun`'s `TunBuilder::netns`).
    #[cfg(unix)]
    fd: OwnedFd,
}

impl Netns {
    /// Creates a namespace named `hostnet-<tag>-<pid>-<n>` (unique per process and call) and
    /// brings its loopback up.
    ///
    /// # Errors
    /// `InvalidInput` when `tag` is empty, not `[a-z0-9-]` or makes the name too long; the
    /// error of `ip netns add` (no CAP_SYS_ADMIN, iproute2 missing) or of opening the
    /// namespace.
    pub fn new(tag: &str) -> io::Result<Self> {
        if tag.is_empty()
            || !tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(format!(
                "namespace tag {tag:?} must be non-empty [a-z0-9-]"
            )));
        }
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{tag}-{}-{n}", std::process::id());
        if name.len() > MAX_NAME_LEN {
            return Err(invalid(format!(
                "namespace name {name:?} is longer than {MAX_NAME_LEN} bytes"
            )));
        }
        run_ip(&["netns", "add", &name])?;
        #[cfg(unix)]
        let fd = match std::fs::File::open(netns_path(&name)) {
            Ok(f) => OwnedFd::from(f),
            Err(e) => {
                let _ = run_ip(&["netns", "del", &name]);
                return Err(io::Error::new(
                    e.kind(),
                    format!("opening namespace {name}: {e}"),
                ));
            }
        };
        let ns = Self {
            name,
            #[cfg(unix)]
            fd,
        };
        ns.link_up("lo")?;
        Ok(ns)
    }

    /// The namespace's name (as listed by `ip netns list`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's bind mount, `/run/netns/<name>` (what pasta and slirp4netns take).
    #[must_use]
    pub fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// The open namespace (for `setns(2)`, e.g. `utun::TunBuilder::netns`).
    #[cfg(unix)]
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
    pub fn exec(&self, argv: &[&str]) -> io::Result<String> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| invalid("exec: empty command line".into()))?;
        let mut cmd = self.command(program);
        cmd.args(args);
        output_of(&mut cmd, &format!("{argv:?} in {}", self.name))
    }

    /// Runs `ip <args>` against this namespace (`ip -n <name> <args>`) and returns its stdout.
    ///
    /// # Errors
    /// `ip` fails; the error carries its stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Adds an address in CIDR form (`"198.18.0.1/15"`) to `dev`.
    ///
    /// # Errors
    /// `ip addr add` fails.
    pub fn add_addr(&self, dev: &str, cidr: &str) -> io::Result<()> {
        self.ip(&["addr", "add", cidr, "dev", dev]).map(drop)
    }

    /// Sets `dev` up.
    ///
    /// # Errors
    /// `ip link set up` fails.
    pub fn link_up(&self, dev: &str) -> io::Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    /// Adds a route to `dest` (`"default"` or a CIDR) via the gateway `via`.
    ///
    /// # Errors
    /// `ip route add` fails.
    pub fn add_route(&self, dest: &str, via: Ipv4Addr) -> io::Result<()> {
        self.ip(&["route", "add", dest, "via", &via.to_string()])
            .map(drop)
    }

    /// Adds a route to `dest` (`"default"` or a CIDR) straight out of `dev`.
    ///
    /// # Errors
    /// `ip route add` fails.
    pub fn add_route_dev(&self, dest: &str, dev: &str) -> io::Result<()> {
        self.ip(&["route", "add", dest, "dev", dev]).map(drop)
    }

    /// Writes a sysctl inside the namespace (`sysctl -w key=value` via `ip netns exec`).
    /// Network sysctls (`net.*`) are per namespace, so this never changes the root namespace's.
    ///
    /// # Errors
    /// `InvalidInput` when `key` does not start with `net.`; the write fails.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        if !key.starts_with("net.") {
            return Err(invalid(format!(
                "sysctl {key:?} is not per-namespace (only net.* is allowed)"
            )));
        }
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Whether a link named `dev` exists in the namespace.
    ///
    /// # Errors
    /// `ip link show` can't be run at all.
    pub fn has_link(&self, dev: &str) -> io::Result<bool> {
        let status = Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", dev])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        Ok(status.success())
    }

    /// Spawns `argv` inside the namespace with stdin null and stdout/stderr piped; the returned
    /// guard kills it (by PID) and reaps it when dropped.
    ///
    /// # Errors
    /// `argv` is empty or the program can't be started.
    pub fn spawn(&self, argv: &[&str]) -> io::Result<Process> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| invalid("spawn: empty command line".into()))?;
        let mut cmd = self.command(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Process::spawn(&mut cmd).map_err(|e| {
            io::Error::new(e.kind(), format!("spawning {argv:?} in {}: {e}", self.name))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("netns: deleting {} failed: {e}", self.name);
        }
    }
}

/// Creates a veth pair, `a_dev` inside `a` and `b_dev` inside `b` (made inside `a`, the peer put
/// straight into `b`: nothing passes through the root namespace), both set up.
///
/// # Errors
/// `ip link add` or `ip link set up` fails.
pub fn veth(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str) -> io::Result<()> {
    veth_inner(a, a_dev, b, b_dev, None)
}

/// Like [`veth`], with both ends' MTU set to `mtu`.
///
/// # Errors
/// `ip link add` or `ip link set up` fails (also for an MTU the kernel refuses).
pub fn veth_mtu(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str, mtu: u32) -> io::Result<()> {
    veth_inner(a, a_dev, b, b_dev, Some(mtu))
}

/// Whether a namespace of this name is currently listed by `ip netns list`.
///
/// # Errors
/// `ip netns list` fails.
pub fn exists(name: &str) -> io::Result<bool> {
    let list = run_ip(&["netns", "list"])?;
    Ok(list
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name)))
}

/// Whether this process may create network namespaces (root or CAP_SYS_ADMIN, and `ip`
/// installed): creates and deletes one.
#[must_use]
pub fn available() -> bool {
    Netns::new("probe").is_ok()
}

/// Deletes namespaces `hostnet-<tag>…-<pid>-<n>` left by an earlier run whose process `<pid>`
/// is gone (e.g. interrupted with Ctrl-C); returns their names. Only names of this crate's
/// scheme that start with `hostnet-<tag>` are touched.
#[must_use]
pub fn remove_stale(tag: &str) -> Vec<String> {
    let Ok(list) = run_ip(&["netns", "list"]) else {
        return Vec::new();
    };
    let prefix = format!("{PREFIX}{tag}");
    let mut removed = Vec::new();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        if !name.starts_with(&prefix) {
            continue;
        }
        if let Some(pid) = owner_pid(name)
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
            && run_ip(&["netns", "del", name]).is_ok()
        {
            removed.push(name.to_owned());
        }
    }
    removed
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
    pub fn signal(&self, signal: &str) -> io::Result<()> {
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

fn veth_inner(a: &Netns, a_dev: &str, b: &Netns, b_dev: &str, mtu: Option<u32>) -> io::Result<()> {
    let mtu = mtu.map(|m| m.to_string());
    let mut args = vec!["link", "add", a_dev];
    if let Some(m) = &mtu {
        args.extend(["mtu", m]);
    }
    args.extend(["type", "veth", "peer", "name", b_dev, "netns", &b.name]);
    if let Some(m) = &mtu {
        args.extend(["mtu", m]);
    }
    a.ip(&args)?;
    a.link_up(a_dev)?;
    b.link_up(b_dev)
}

/// The PID in a name `hostnet-<tag>-<pid>-<n>` (the tag may hold dashes).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let mut fields = rest.rsplit('-');
    fields.next()?.parse::<u32>().ok()?;
    fields.next()?.parse().ok()
}

fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

fn run_ip(args: &[&str]) -> io::Result<String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    output_of(&mut cmd, &format!("ip {}", args.join(" ")))
}

fn output_of(cmd: &mut Command, what: &str) -> io::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("starting {what}: {e}")))?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// Every namespace this crate makes starts with this.
const PREFIX: &str = "hostnet-";
/// Longest namespace name we create (a file name under /run/netns; keep it readable).
const MAX_NAME_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_tags_are_refused_before_anything_runs() {
        for bad in ["", "Bad Tag", "a/b", &"x".repeat(80)] {
            let e = Netns::new(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_owner_pid_is_read_from_the_end_of_the_name() {
        assert_eq!(owner_pid("hostnet-demo-g-4242-0"), Some(4242));
        assert_eq!(owner_pid("hostnet-bench-g-7-12"), Some(7));
        assert_eq!(owner_pid("hostnet-x-1"), None);
        assert_eq!(owner_pid("other-demo-1-2"), None);
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn namespace_exists_until_dropped() -> io::Result<()> {
        let ns = Netns::new("t-life")?;
        let name = ns.name().to_owned();
        assert!(name.starts_with(&format!("hostnet-t-life-{}-", std::process::id())));
        assert!(exists(&name)?);
        assert!(ns.path().exists());
        assert!(ns.exec(&["ip", "link", "show", "lo"])?.contains("UP"));
        drop(ns);
        assert!(!exists(&name)?);
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn namespace_is_deleted_when_a_test_panics() -> io::Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        let joined = std::thread::spawn(move || {
            let ns = Netns::new("t-panic");
            let name = match &ns {
                Ok(n) => Ok(n.name().to_owned()),
                Err(e) => Err(e.to_string()),
            };
            let alive = name.as_ref().is_ok_and(|n| exists(n).unwrap_or(false));
            let _ = tx.send((name, alive));
            panic!("deliberate panic with a live namespace");
        })
        .join();
        assert!(joined.is_err(), "the thread should have panicked");
        let (name, alive) = rx.recv().map_err(io::Error::other)?;
        let name = name.map_err(io::Error::other)?;
        assert!(alive, "{name} did not exist before the panic");
        assert!(!exists(&name)?, "{name} survived the panic");
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn veth_links_two_namespaces_and_only_them() -> io::Result<()> {
        let (a, b) = (Netns::new("t-veth-a")?, Netns::new("t-veth-b")?);
        veth_mtu(&a, "va", &b, "vb", 9000)?;
        assert!(a.has_link("va")? && !a.has_link("vb")?);
        assert!(b.has_link("vb")? && !b.has_link("va")?);
        assert!(b.ip(&["link", "show", "vb"])?.contains("mtu 9000"));
        a.add_addr("va", "198.18.0.1/15")?;
        b.add_addr("vb", "198.18.0.2/15")?;
        a.exec(&["ping", "-c", "1", "-W", "2", "198.18.0.2"])?;
        b.sysctl("net.ipv4.ip_forward", "1")?;
        assert!(b.sysctl("kernel.hostname", "x").is_err());
        Ok(())
    }

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn spawned_process_is_killed_on_drop() -> io::Result<()> {
        let ns = Netns::new("t-proc")?;
        let proc = ns.spawn(&["sleep", "30"])?;
        let pid = proc.pid();
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(proc);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        Ok(())
    }
}
