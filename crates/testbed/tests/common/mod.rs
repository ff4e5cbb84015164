//! Shared harness for the end-to-end tests: a [`Lab`] is the three-namespace world of
//! [`testbed::netns::Topology`] plus a running `hostnet-lab attach` (driven only through its CLI
//! contract) and the processes a test starts in the namespaces. Dropping a `Lab` (also while a
//! test panics) kills every process by PID, then deletes the namespaces and the scratch folder.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use testbed::netns::{Netns, Process, Topology};

/// The server namespace's address (the simulated internet).
pub(crate) const SERVER: Ipv4Addr = testbed::netns::SERVER_ADDR;
/// The server namespace's IPv6 address.
pub(crate) const SERVER6: std::net::Ipv6Addr = testbed::netns::SERVER_ADDR6;
/// The AAAA record [`Lab::start_dnsmasq`] gives every `*.e2e.test` name.
#[allow(dead_code)] // dns6_e2e uses it; not every test binary does
pub(crate) const E2E_TEST_AAAA: &str = "2001:db8::7:7";
/// The host namespace's address towards the server.
pub(crate) const HOST_SERVER: Ipv4Addr = testbed::netns::HOST_SERVER_ADDR;
/// The gateway the bridge plays for the guest (contract default).
pub(crate) const GATEWAY: Ipv4Addr = bridge::defaults::GATEWAY;
/// The host end of the TUN (contract default).
pub(crate) const HOST_TUN: Ipv4Addr = bridge::defaults::TUN_HOST_ADDR;
/// The NAT's external address (contract default).
pub(crate) const EXTERNAL: Ipv4Addr = bridge::defaults::NAT_EXTERNAL_ADDR;
/// The TAP `attach` creates in the guest namespace.
pub(crate) const GUEST_DEV: &str = "eth0";

/// Which namespace of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ns {
    /// The guest (the TAP `eth0`, DHCP clients, curl).
    G,
    /// The host (attach, the TUN).
    H,
    /// The server on 198.18.0.0/15.
    S,
}

/// The running world of one test.
#[derive(Debug)]
pub(crate) struct Lab {
    // Fields drop in declaration order: processes first, then `attach`, then the namespaces.
    procs: Vec<Process>,
    attach: Option<Attach>,
    /// `/etc/netns/<H>` when this lab made it (removed on drop).
    etc_netns: Option<PathBuf>,
    topo: Topology,
    /// Scratch folder of this lab (removed on drop).
    pub(crate) dir: PathBuf,
}

/// What `hostnet-lab attach` announced on its `ready` line.
#[derive(Debug)]
pub(crate) struct Attach {
    proc: Process,
    /// The NAT external address.
    pub(crate) external: Ipv4Addr,
    /// The TUN's name in the host namespace.
    pub(crate) tun: String,
    /// The guest's gateway.
    pub(crate) gateway: Ipv4Addr,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr_path: PathBuf,
}

/// A DHCP lease as the client's hook script recorded it (the busybox udhcpc hook of
/// [`testbed::netns::lease`], or the dhclient hook below, which writes the same record).
pub(crate) use testbed::netns::lease::Lease;

/// Summary of a `ping -q` run.
#[derive(Debug)]
pub(crate) struct PingStats {
    pub(crate) transmitted: u32,
    pub(crate) received: u32,
    pub(crate) avg_ms: f64,
}

impl Lab {
    /// Builds the topology and starts `attach` with `extra` args and `--dns-upstream <server>`,
    /// waiting for its `ready` line.
    pub(crate) fn start(tag: &str, extra: &[&str]) -> Self {
        Self::start_with(tag, extra, None)
    }

    /// Like [`Lab::start`], but with `Some(text)` writes `text` as
    /// `/etc/netns/<host namespace>/resolv.conf` (what `ip netns exec H` shows as
    /// /etc/resolv.conf; removed on drop) and does not pass `--dns-upstream`.
    pub(crate) fn start_with(tag: &str, extra: &[&str], resolv_conf: Option<&str>) -> Self {
        let mut lab = Self::start_without_attach(tag);
        let mut args: Vec<String> = extra.iter().map(|a| (*a).to_owned()).collect();
        match resolv_conf {
            Some(text) => {
                let etc = Path::new("/etc/netns").join(lab.topo.host.name());
                lab.etc_netns = Some(etc.clone());
                fs::create_dir_all(&etc).expect("creating /etc/netns/<H>");
                fs::write(etc.join("resolv.conf"), text).expect("writing resolv.conf");
            }
            None => args.extend(["--dns-upstream".to_owned(), SERVER.to_string()]),
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let attach = lab.spawn_attach(&[], &args);
        lab.attach = Some(attach);
        lab
    }

    /// Builds the topology and starts `attach` with `extra` args (no `--dns-upstream` added)
    /// as `ip netns exec H <prefix...> hostnet-lab attach ...`: `prefix` wraps it (e.g.
    /// `unshare --mount` with a set-up script that ends in `exec "$@"`).
    #[allow(dead_code)] // dns_e2e uses it; not every test binary does
    pub(crate) fn start_via(tag: &str, prefix: &[&str], extra: &[&str]) -> Self {
        let mut lab = Self::start_without_attach(tag);
        let attach = lab.spawn_attach(prefix, extra);
        lab.attach = Some(attach);
        lab
    }

    /// Builds the topology without starting `attach` (see [`Lab::spawn_attach`]).
    pub(crate) fn start_without_attach(tag: &str) -> Self {
        let topo = Topology::new(tag).unwrap_or_else(|e| panic!("topology {tag}: {e:#}"));
        let n = NEXT_DIR.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hostnet-e2e-{}-{n}-{tag}", std::process::id()));
        fs::create_dir_all(&dir).expect("scratch dir");
        Self {
            procs: Vec::new(),
            attach: None,
            etc_netns: None,
            topo,
            dir,
        }
    }

    /// Builds the lab and gets a lease with busybox udhcpc.
    pub(crate) fn with_lease(tag: &str, extra: &[&str]) -> (Self, Lease) {
        let mut lab = Self::start(tag, extra);
        let lease = lab.udhcpc();
        (lab, lease)
    }

    /// The namespace `which`.
    pub(crate) fn ns(&self, which: Ns) -> &Netns {
        match which {
            Ns::G => &self.topo.guest,
            Ns::H => &self.topo.host,
            Ns::S => &self.topo.server,
        }
    }

    /// The running attach (panics if it was already stopped).
    pub(crate) fn attach(&self) -> &Attach {
        self.attach.as_ref().expect("attach is running")
    }

    /// Makes `attach` (from [`Lab::spawn_attach`]) the lab's running attach.
    #[allow(dead_code)] // several_guests_e2e uses it; not every test binary does
    pub(crate) fn set_attach(&mut self, attach: Attach) {
        self.attach = Some(attach);
    }

    /// Takes the attach process out of the lab (to signal and wait for it).
    pub(crate) fn take_attach(&mut self) -> Attach {
        self.attach.take().expect("attach is running")
    }

    /// Whether attach is still running.
    pub(crate) fn attach_alive(&mut self) -> bool {
        self.attach
            .as_mut()
            .is_some_and(|a| matches!(a.proc.child_mut().try_wait(), Ok(None)))
    }

    /// Runs `argv` in `ns` under `timeout <secs>`; returns the raw output.
    pub(crate) fn run(&self, which: Ns, secs: u32, argv: &[&str]) -> Output {
        let ns = self.ns(which);
        let mut cmd = ns.command("timeout");
        cmd.args(["-k", "2", &secs.to_string()])
            .args(argv)
            .stdin(Stdio::null());
        cmd.output()
            .unwrap_or_else(|e| panic!("starting {argv:?} in {}: {e}", ns.name()))
    }

    /// Runs `argv` in `ns` under a timeout and returns stdout; panics (with stderr) on failure.
    pub(crate) fn ok(&self, which: Ns, secs: u32, argv: &[&str]) -> String {
        let ns = self.ns(which);
        let out = self.run(which, secs, argv);
        assert!(
            out.status.success(),
            "{argv:?} in {} failed ({}):\nstdout: {}\nstderr: {}",
            ns.name(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts a long-running `argv` in `ns`; it is killed when the lab drops. If `ready` is
    /// given, waits (up to 10 s) for a stdout line starting with it and returns the process
    /// index; later stdout lines are collected and readable with [`Lab::lines`].
    pub(crate) fn spawn(&mut self, which: Ns, argv: &[&str], ready: Option<&str>) -> usize {
        let mut proc = self
            .ns(which)
            .spawn(argv)
            .unwrap_or_else(|e| panic!("spawning {argv:?}: {e:#}"));
        if let Some(prefix) = ready {
            let stdout = proc.take_stdout().expect("piped stdout");
            let (tx, rx) = mpsc::channel();
            // Keeps draining after `ready` so a chatty process never blocks or gets SIGPIPE.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) if line.starts_with(prefix) => break,
                    Ok(_) => {}
                    Err(e) => panic!("{argv:?} never printed {prefix:?}: {e}"),
                }
            }
        } else {
            // Nobody reads its pipes: send them nowhere.
            drop(proc.take_stdout());
        }
        drop(proc.take_stderr());
        self.procs.push(proc);
        self.procs.len() - 1
    }

    /// Serves the lab's directory over HTTP from S at `addr` (`helper http-serve`), listening
    /// when this returns.
    pub(crate) fn serve_dir(&mut self, addr: &str) -> usize {
        let dir = self.dir.to_str().expect("utf-8").to_owned();
        self.spawn(
            Ns::S,
            &[helper(), "http-serve", addr, &dir],
            Some("listening"),
        )
    }

    /// Starts `argv` in `ns` and keeps it as a guard; its stdout/stderr go to files in the
    /// scratch folder named `<name>.out` / `<name>.err`.
    pub(crate) fn spawn_logged(&mut self, which: Ns, name: &str, argv: &[&str]) -> usize {
        let out = fs::File::create(self.dir.join(format!("{name}.out"))).expect("log file");
        let err = fs::File::create(self.dir.join(format!("{name}.err"))).expect("log file");
        let (program, args) = argv.split_first().expect("non-empty argv");
        let mut cmd = self.ns(which).command(program);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let proc = Process::spawn(&mut cmd).unwrap_or_else(|e| panic!("spawning {argv:?}: {e}"));
        self.procs.push(proc);
        self.procs.len() - 1
    }

    /// The process started with [`Lab::spawn`] / [`Lab::spawn_logged`] at `index`.
    pub(crate) fn proc(&mut self, index: usize) -> &mut Process {
        &mut self.procs[index]
    }

    /// Gets a lease on the guest's TAP with busybox udhcpc (a hook script configures it).
    pub(crate) fn udhcpc(&mut self) -> Lease {
        let out = self.dir.join("lease-udhcpc");
        let script = self.dir.join("udhcpc.sh");
        testbed::netns::lease::write_udhcpc_script(&script, &out).expect("writing the udhcpc hook");
        let started = Instant::now();
        let script_s = script.to_str().expect("utf-8 path");
        let o = self.run(
            Ns::G,
            40,
            &[
                "busybox", "udhcpc", "-i", GUEST_DEV, "-f", "-q", "-n", "-t", "6", "-T", "2", "-A",
                "1", "-O", "mtu", "-s", script_s,
            ],
        );
        assert!(
            o.status.success(),
            "udhcpc failed ({}): {}{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            link_report(self.ns(Ns::G))
        );
        let lease = Lease::read(&out)
            .unwrap_or_else(|e| panic!("udhcpc got a lease but the hook wrote none: {e}"));
        eprintln!("udhcpc lease in {:?}: {lease:?}", started.elapsed());
        lease
    }

    /// A lease in another guest namespace `ns` (its TAP `eth0`: a second attach's, or another
    /// guest of the same attach) with busybox udhcpc, as [`Lab::udhcpc`] does for G.
    #[allow(dead_code)] // the several-guest tests use it; not every test binary does
    pub(crate) fn udhcpc_in(&self, ns: &Netns) -> Lease {
        let out = self.dir.join(format!("lease-{}", ns.name()));
        let script = self.dir.join(format!("udhcpc-{}.sh", ns.name()));
        testbed::netns::lease::write_udhcpc_script(&script, &out).expect("udhcpc hook");
        let o = ns
            .command("timeout")
            .args([
                "-k", "2", "40", "busybox", "udhcpc", "-i", GUEST_DEV, "-f", "-q", "-n",
            ])
            .args(["-t", "6", "-T", "2", "-A", "1", "-O", "mtu", "-s"])
            .arg(&script)
            .stdin(Stdio::null())
            .output()
            .expect("udhcpc");
        assert!(
            o.status.success(),
            "udhcpc in {}: {o:?}\n{}",
            ns.name(),
            link_report(ns)
        );
        Lease::read(&out).expect("the hook wrote the lease")
    }

    /// Gets a lease with ISC dhclient (`-d -1`, own config, lease file and hook script in the
    /// scratch folder); dhclient keeps running (as a lab process) until the lab drops.
    pub(crate) fn dhclient(&mut self) -> Lease {
        let out = self.dir.join("lease-dhclient");
        let script = self.dir.join("dhclient.sh");
        let conf = self.dir.join("dhclient.conf");
        write_script(&script, &dhclient_script(&out));
        fs::write(
            &conf,
            "timeout 30;\nretry 2;\nrequest subnet-mask, broadcast-address, routers, \
             domain-name-servers, interface-mtu;\n",
        )
        .expect("dhclient.conf");
        let s = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
        let (conf, leases, pid, script_s) = (
            s(&conf),
            s(&self.dir.join("dhclient.leases")),
            s(&self.dir.join("dhclient.pid")),
            s(&script),
        );
        let started = Instant::now();
        let guest = self.topo.guest.name().to_owned();
        let argv = [
            "dhclient", "-4", "-d", "-1", "-v", "-cf", &conf, "-lf", &leases, "-pf", &pid, "-sf",
            &script_s, GUEST_DEV,
        ];
        let idx = self.spawn_logged(Ns::G, "dhclient", &argv);
        let deadline = Instant::now() + Duration::from_secs(35);
        loop {
            if let Ok(lease) = Lease::read(&out) {
                eprintln!("dhclient lease in {:?}: {lease:?}", started.elapsed());
                return lease;
            }
            if let Ok(Some(status)) = self.proc(idx).child_mut().try_wait() {
                panic!(
                    "dhclient in {guest} exited ({status}) without a lease: {}",
                    fs::read_to_string(self.dir.join("dhclient.err")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no dhclient lease within 35 s: {}",
                fs::read_to_string(self.dir.join("dhclient.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ping -q -c <count>` from `ns` to `addr`; does not assert success.
    pub(crate) fn ping(&self, ns: Ns, addr: Ipv4Addr, count: u32) -> PingStats {
        let o = self.run(
            ns,
            count * 2 + 5,
            &[
                "ping",
                "-q",
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "2",
                &addr.to_string(),
            ],
        );
        parse_ping(&String::from_utf8_lossy(&o.stdout))
    }

    /// A file of `len` random bytes in the scratch folder (made with `head -c` from urandom).
    pub(crate) fn random_file(&self, name: &str, len: u64) -> PathBuf {
        let path = self.dir.join(name);
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "head -c {len} /dev/urandom > '{}'",
                path.to_str().expect("utf-8 path")
            ))
            .status()
            .expect("sh");
        assert!(status.success(), "making {name}");
        path
    }

    /// The stderr attach wrote so far.
    pub(crate) fn attach_stderr(&self) -> String {
        self.attach
            .as_ref()
            .map(|a| fs::read_to_string(&a.stderr_path).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Asks the running attach for its stats (SIGUSR1; it goes on) and returns the newest
    /// stderr line starting with `prefix` (`"stats: bridge"`, `"stats: queue pairs:"`) that
    /// it printed for it; waits up to 10 s.
    #[allow(dead_code)] // not every test binary asks
    pub(crate) fn stats_line_now(&self, prefix: &str) -> String {
        let lines = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        };
        let seen = lines(&self.attach_stderr()).len();
        self.attach().signal("USR1");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stderr = self.attach_stderr();
            let mut now = lines(&stderr);
            if now.len() > seen {
                return now.pop().unwrap_or_default();
            }
            assert!(
                Instant::now() < deadline,
                "no {prefix:?} line within 10 s of SIGUSR1:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `ip netns exec H <prefix...> hostnet-lab attach --guest-netns G --host-netns H
    /// <extra...>` and waits for its `ready` line.
    pub(crate) fn spawn_attach(&self, prefix: &[&str], extra: &[&str]) -> Attach {
        self.spawn_attach_for(self.topo.guest.name(), "attach.err", prefix, extra)
    }

    /// Like [`Lab::spawn_attach`] for another guest namespace `guest`, stderr to
    /// `<scratch>/<stderr_name>`.
    pub(crate) fn spawn_attach_for(
        &self,
        guest: &str,
        stderr_name: &str,
        prefix: &[&str],
        extra: &[&str],
    ) -> Attach {
        let stderr_path = self.dir.join(stderr_name);
        let err = fs::File::create(&stderr_path).expect("attach stderr file");
        let mut cmd = match prefix.split_first() {
            None => self.topo.host.command(hostnet_lab()),
            Some((first, rest)) => {
                let mut c = self.topo.host.command(first);
                c.args(rest).arg(hostnet_lab());
                c
            }
        };
        cmd.args([
            "attach",
            "--guest-netns",
            guest,
            "--host-netns",
            self.topo.host.name(),
        ])
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(err);
        let mut proc = Process::spawn(&mut cmd).expect("spawning hostnet-lab attach");
        let stdout = proc.take_stdout().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let store = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut v) = store.lock() {
                    v.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let started = Instant::now();
        let deadline = started + Duration::from_secs(30);
        let ready = loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(line) if line.starts_with("ready ") => break line,
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.wait_timeout(Duration::from_secs(2));
                    panic!(
                        "attach closed stdout without `ready` ({status:?}); stderr:\n{}",
                        fs::read_to_string(&stderr_path).unwrap_or_default()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "attach not ready within 30 s; stderr:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k))
                .unwrap_or_else(|| panic!("ready line {ready:?} has no {k}"))
                .to_owned()
        };
        let attach = Attach {
            external: field("external=").parse().expect("external= is IPv4"),
            tun: field("tun="),
            gateway: field("gateway=").parse().expect("gateway= is IPv4"),
            proc,
            stdout: lines,
            stderr_path,
        };
        eprintln!("attach ready in {:?}: {ready}", started.elapsed());
        attach
    }
}

impl Lab {
    /// Polls `argv` in the guest namespace until `pred` holds, up to `secs` seconds; returns the
    /// output that matched.
    #[allow(dead_code)] // the IPv6 tests use it; not every test binary does
    pub(crate) fn wait_guest(
        &self,
        secs: u64,
        argv: &[&str],
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let out = self.ok(Ns::G, 5, argv);
            if pred(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{argv:?} in the guest never matched within {secs} s:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// IPv6 for the guest namespace's kernel by SLAAC from the gateway, with its own RA
    /// handling (sysctls of that namespace only; the link is set down and up so that it
    /// solicits a router at once). Returns the guest's address in `fd64::/64` once it is no
    /// longer tentative and the default route via `fe80::1` is there.
    #[allow(dead_code)] // the IPv6 tests use it; not every test binary does
    pub(crate) fn slaac(&self) -> String {
        let dev = GUEST_DEV;
        for (key, value) in [
            ("disable_ipv6", "0"),
            ("accept_ra", "2"),
            ("autoconf", "1"),
            ("accept_dad", "1"),
        ] {
            self.ok(
                Ns::G,
                5,
                &[
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("net.ipv6.conf.{dev}.{key}={value}"),
                ],
            );
        }
        self.ok(Ns::G, 5, &["ip", "link", "set", dev, "down"]);
        self.ok(Ns::G, 5, &["ip", "link", "set", dev, "up"]);
        let addrs = self.wait_guest(
            20,
            &[
                "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "global",
            ],
            |o| o.contains("inet6 fd64::") && !o.contains("tentative"),
        );
        self.wait_guest(10, &["ip", "-6", "route", "show"], |o| {
            o.contains("default via fe80::1")
        });
        addrs
            .split_whitespace()
            .skip_while(|w| *w != "inet6")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .expect("an inet6 address")
            .to_owned()
    }

    /// Starts dnsmasq on the server, listening on [`SERVER`] and [`SERVER6`] (answers
    /// `*.e2e.test` with A 198.18.7.7 and AAAA [`E2E_TEST_AAAA`], logs queries) and waits
    /// until it answers locally; returns its log file.
    pub(crate) fn start_dnsmasq(&mut self) -> PathBuf {
        let log = self.dir.join("dnsmasq.err");
        self.spawn_logged(
            Ns::S,
            "dnsmasq",
            &[
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--log-queries",
                "--log-facility=-",
                "--pid-file=",
                "--user=nobody",
                "--group=nogroup",
                "--bind-interfaces",
                &format!("--listen-address={SERVER}"),
                &format!("--listen-address={SERVER6}"),
                "--address=/e2e.test/198.18.7.7",
                &format!("--address=/e2e.test/{E2E_TEST_AAAA}"),
            ],
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.run(
                Ns::S,
                5,
                &[
                    "dig",
                    &format!("@{SERVER}"),
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "probe.e2e.test",
                ],
            );
            if String::from_utf8_lossy(&o.stdout).contains("198.18.7.7") {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not come up: {:?}",
                std::fs::read_to_string(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Stop attach first so its shutdown stats are part of what we print.
            let stopped = self
                .attach
                .as_mut()
                .map(|a| a.terminate(Duration::from_secs(3)));
            let err = self.attach_stderr();
            let tail: Vec<&str> = err.lines().rev().take(60).collect();
            eprintln!(
                "--- attach stderr (last {} lines; SIGTERM -> {stopped:?}) ---",
                tail.len()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        self.procs.clear();
        if let Some(a) = self.attach.take() {
            let _ = a.proc.signal("TERM");
            let mut a = a;
            let _ = a.proc.wait_timeout(Duration::from_secs(3));
        }
        if let Some(etc) = self.etc_netns.take() {
            let _ = fs::remove_dir_all(etc);
        }
        if std::env::var_os("HOSTNET_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

impl Attach {
    /// Sends SIGTERM and waits up to `limit`; returns the exit status (None: still running)
    /// and how long it took.
    pub(crate) fn terminate(
        &mut self,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration) {
        self.signal_and_wait("TERM", limit)
    }

    /// Sends `signal` (`"TERM"`, `"INT"`) and waits up to `limit`; returns the exit status
    /// (None: still running) and how long it took.
    pub(crate) fn signal_and_wait(
        &mut self,
        signal: &str,
        limit: Duration,
    ) -> (Option<std::process::ExitStatus>, Duration) {
        // Never panics (it also runs from `Drop` during a panic): an attach that is already
        // gone shows up as its exit status, a failed wait as `None`.
        let t = Instant::now();
        if let Err(e) = self.proc.signal(signal) {
            eprintln!("kill -{signal} attach: {e:#}");
        }
        let status = self.proc.wait_timeout(limit).ok().flatten();
        (status, t.elapsed())
    }

    /// Sends `signal` (`"USR1"`) without waiting.
    pub(crate) fn signal(&self, signal: &str) {
        if let Err(e) = self.proc.signal(signal) {
            panic!("kill -{signal} attach: {e:#}");
        }
    }

    /// Waits up to `limit` for attach to exit on its own; its exit status (None: still running).
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.proc.wait_timeout(limit).ok().flatten()
    }

    /// Everything attach printed to stdout so far (the `ready` line included).
    pub(crate) fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Everything attach printed to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Stops attach with SIGTERM, asserts that it exited 0 within 5 s, and returns the bridge
    /// stats line it printed (`stats: bridge ...`; the last one, which is the shutdown's) and
    /// all of its stderr.
    pub(crate) fn stop_for_stats_line(&mut self) -> (String, String) {
        let (status, _) = self.terminate(Duration::from_secs(5));
        let stderr = self.stderr();
        assert!(
            status.is_some_and(|s| s.success()),
            "attach exit {status:?}\n{stderr}"
        );
        let line = stderr
            .lines()
            .rfind(|l| l.starts_with("stats: bridge"))
            .unwrap_or_else(|| panic!("no bridge stats line:\n{stderr}"))
            .to_owned();
        eprintln!("{line}");
        (line, stderr)
    }
}

/// Path of the `hostnet-lab` binary under test: `$HOSTNET_LAB` if set (e.g. a release build
/// for measurements), else the one cargo built for this test run.
pub(crate) fn hostnet_lab() -> PathBuf {
    if let Some(p) = std::env::var_os("HOSTNET_LAB") {
        return PathBuf::from(p);
    }
    match option_env!("CARGO_BIN_EXE_hostnet-lab") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/hostnet-lab"),
    }
}

/// Path of the `hostnet-e2e` helper binary.
pub(crate) fn helper() -> &'static str {
    env!("CARGO_BIN_EXE_hostnet-e2e")
}

/// Panics with the Debian package to install if one of `programs` is missing.
pub(crate) fn require(programs: &[(&str, &str)]) {
    for (program, package) in programs {
        let found = std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        });
        assert!(
            found,
            "`{program}` is missing: `apt-get install {package}` (tests install nothing themselves)"
        );
    }
}

/// Waits up to `secs` for the file at `path` to contain `needle`; returns its text.
pub(crate) fn wait_file_contains(path: &Path, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{path:?} does not contain {needle:?} after {secs} s: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// sha256 of a file, with sha256sum(1).
pub(crate) fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "sha256sum {path:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Parses `ping -q` output.
pub(crate) fn parse_ping(out: &str) -> PingStats {
    let mut stats = PingStats {
        transmitted: 0,
        received: 0,
        avg_ms: f64::NAN,
    };
    for line in out.lines() {
        if line.contains("packets transmitted") {
            let nums: Vec<u32> = line
                .split(',')
                .filter_map(|p| p.split_whitespace().next()?.parse().ok())
                .collect();
            stats.transmitted = nums.first().copied().unwrap_or(0);
            stats.received = nums.get(1).copied().unwrap_or(0);
        }
        if let Some(rest) = line.split(" = ").nth(1)
            && line.starts_with("rtt")
        {
            stats.avg_ms = rest
                .split('/')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
        }
    }
    stats
}

/// RX packet counter of `dev` in `ns`.
pub(crate) fn rx_packets(ns: &Netns, dev: &str) -> u64 {
    let out = ns
        .exec(&[
            "cat",
            &format!("/sys/class/net/{dev}/statistics/rx_packets"),
        ])
        .expect("reading rx_packets");
    out.trim().parse().expect("rx_packets is a number")
}

fn write_script(path: &Path, text: &str) {
    fs::write(path, text).expect("writing hook script");
    let status = Command::new("chmod")
        .arg("0755")
        .arg(path)
        .status()
        .expect("chmod");
    assert!(status.success());
}

fn dhclient_script(out: &Path) -> String {
    let out = out.to_str().expect("utf-8 path");
    format!(
        r#"#!/bin/sh
# dhclient hook for the hostnet e2e tests: configures $interface and records the lease.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
OUT='{out}'
case "$reason" in
  PREINIT)
    ip link set dev "$interface" up
    ;;
  BOUND|RENEW|REBIND|REBOOT)
    ip -4 addr flush dev "$interface"
    ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
    [ -n "$new_interface_mtu" ] && ip link set dev "$interface" mtu "$new_interface_mtu"
    for r in $new_routers; do ip route replace default via "$r" dev "$interface"; break; done
    {{ echo "ip=$new_ip_address"; echo "mask=$new_subnet_mask"; echo "router=$new_routers"
      echo "dns=$new_domain_name_servers"; echo "mtu=$new_interface_mtu"
      echo "lease=$new_dhcp_lease_time"; echo "serverid=$new_dhcp_server_identifier"; }} > "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    ;;
esac
exit 0
"#
    )
}

static NEXT_DIR: AtomicU32 = AtomicU32::new(0);

/// The guest device of `ns` as the kernel sees it (state, MAC, addresses, packet and drop
/// counters), for a failed DHCP exchange: whether the gateway's answers reached the kernel.
#[allow(dead_code)] // only the DHCP helpers use it
fn link_report(ns: &Netns) -> String {
    ["-s -d link", "addr"]
        .iter()
        .map(|what| {
            let mut args: Vec<&str> = what.split(' ').collect();
            args.extend(["show", "dev", GUEST_DEV]);
            ns.ip(&args)
                .unwrap_or_else(|e| format!("ip {what} show dev {GUEST_DEV}: {e}"))
        })
        .collect::<Vec<_>>()
        .join("")
}
