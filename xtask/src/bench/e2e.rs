//! One end-to-end world per (backend, MTU): a guest namespace G that gets its network from the
//! backend, a host namespace H where the backend lives (its sockets or its TUN), and a server
//! namespace S on 198.18.0.0/15 running iperf3 and the echo server.
//!
//! ```text
//!  G eth0 ──backend── H srv0 198.18.0.1/15 ══veth (MTU 65520)══ S eth0 198.18.0.2/15
//! ```
//!
//! S's default route points at H, so replies to 100.64.0.0/10 (hostnet's NAT external address)
//! go back via H. H masquerades nothing on its own: the only NAT on each path is the backend's
//! (nftables masquerade for `kernel`, pasta's and slirp4netns's sockets, hostnet's NAT).
//!
//! IPv6 (issue 13) runs in the same world next to IPv4: H srv0 `2001:db8::1/64`, S eth0
//! `2001:db8::2/64`, S's default route via H (which covers NAT66's `fd64:ffff::2`), forwarding
//! on in H. The guest's IPv6: `kernel` `fd64::2/64` via `fd64::1` on the veth and an `ip6`
//! nftables masquerade in H; `pasta` the same addresses by its own `-a`/`-g`; `slirp4netns`
//! `--enable-ipv6` (SLAAC in `fd00::/64`); `hostnet` and `hostnetd` SLAAC from the bridge's
//! router advertisements (`fd64::/64`, default route via `fe80::1`). `passt-vhost-user` stays
//! IPv4-only (`-4`): its IPv6 figures are skipped with that reason.
//!
//! The vhost-user backends (`hostnetd`, `passt-vhost-user`) run two processes in H: the daemon
//! (the backend measured: its CPU, its threads) and `hostnet-lab attach --vhost-user`, the
//! same simulated guest for both, as the daemon's vhost-user frontend with the TAP in G.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bridge::defaults::{
    DHCP_POOL_FIRST, GATEWAY, IPV6_GATEWAY, IPV6_PREFIX, PREFIX_LEN, SUBNET,
    TEST_INTERNET_PREFIX_LEN,
};
use netns::Netns;
use serde_json::Value;

use super::sys::{CMD_LIMIT, Proc, cpu_seconds, machine_cpu, run_limited, run_ok, thread_cpu};

/// A network backend under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Backend {
    Kernel,
    Pasta,
    Slirp,
    Hostnet,
    /// `hostnet-lab attach --queues 2`: two virtio-net queue pairs on one thread (issue 15).
    HostnetMq,
    /// hostnetd over vhost-user, driven by `hostnet-lab attach --vhost-user`.
    Hostnetd,
    /// `hostnetd --queues 2` driven by `hostnet-lab attach --vhost-user --queues 2`: two
    /// queue pairs, a worker each, the control queue answered by hostnetd (issue 15).
    HostnetdMq,
    /// passt's vhost-user mode (`passt --vhost-user`), driven by the same frontend.
    PasstVu,
}

impl Backend {
    /// Every backend, in table order.
    pub(super) const ALL: [Self; 8] = [
        Self::Kernel,
        Self::Pasta,
        Self::Slirp,
        Self::Hostnet,
        Self::HostnetMq,
        Self::Hostnetd,
        Self::HostnetdMq,
        Self::PasstVu,
    ];
    /// The backends of `--quick` (CI) without `--backends`: the vhost-user pair and the
    /// second queue pair are left out (two more processes per world and a passt build; one
    /// more world).
    pub(super) const QUICK: [Self; 4] = [Self::Kernel, Self::Pasta, Self::Slirp, Self::Hostnet];

    /// Its name in tables, JSON and on the command line.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Kernel => "kernel",
            Self::Pasta => "pasta",
            Self::Slirp => "slirp4netns",
            Self::Hostnet => "hostnet",
            Self::HostnetMq => "hostnet-mq2",
            Self::Hostnetd => "hostnetd",
            Self::HostnetdMq => "hostnetd-mq2",
            Self::PasstVu => "passt-vhost-user",
        }
    }

    /// Parses a name given on the command line.
    pub(super) fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == name || (name == "slirp" && *b == Self::Slirp))
    }

    /// The programs it needs besides the common ones.
    pub(super) fn needs(self) -> &'static [&'static str] {
        match self {
            Self::Kernel => &["nft"],
            Self::Pasta => &["pasta"],
            Self::Slirp => &["slirp4netns"],
            Self::Hostnet | Self::HostnetMq | Self::Hostnetd | Self::HostnetdMq | Self::PasstVu => {
                &["busybox"]
            }
        }
    }

    /// Whether it is a vhost-user daemon driven by `hostnet-lab attach --vhost-user`.
    pub(super) fn vhost_user(self) -> bool {
        matches!(self, Self::Hostnetd | Self::HostnetdMq | Self::PasstVu)
    }

    /// Whether the bench gives this backend's guest IPv6, or why not (printed as the reason
    /// its IPv6 figures are skipped).
    pub(super) fn ipv6(self) -> Result<(), &'static str> {
        match self {
            Self::PasstVu => Err("the bench runs passt's vhost-user mode IPv4-only (-4)"),
            _ => Ok(()),
        }
    }

    /// Whether the bench builds a guest-to-guest world (two guests on one network) for it, or
    /// why not (issue 14: a Linux bridge for `kernel`, one `hostnet-lab attach` with two
    /// guest namespaces for `hostnet`).
    pub(super) fn pairs(self) -> Result<(), &'static str> {
        match self {
            Self::Kernel | Self::Hostnet => Ok(()),
            _ => Err("the bench builds guest-to-guest worlds for kernel and hostnet only"),
        }
    }

    /// Whether the guest side is a TAP device served by a userspace process (tuned alike).
    fn tap_based(self) -> bool {
        !matches!(self, Self::Kernel)
    }
}

/// What every world needs to know about the run.
#[derive(Debug)]
pub(super) struct Env {
    /// This xtask binary (runs the echo server and the rr/crr clients).
    pub(super) exe: PathBuf,
    /// The `hostnet-lab` binary, or why there is none.
    pub(super) lab: Result<PathBuf, String>,
    /// The `hostnetd` binary, or why there is none.
    pub(super) hostnetd: Result<PathBuf, String>,
    /// passt with a vhost-user mode (built from the peer snapshot), or why there is none.
    pub(super) passt: Result<PathBuf, String>,
    /// Where backend logs go.
    pub(super) logs: PathBuf,
    /// The CPU the latency figures are pinned to (`None`: not pinned).
    pub(super) pin_cpu: Option<u32>,
    /// TCP congestion control of every iperf3 TCP flow (`-C`; `None`: the namespaces').
    pub(super) tcp_cc: Option<String>,
}

/// A running topology with one backend. Dropping it kills every process (by PID) and then
/// deletes the namespaces.
#[derive(Debug)]
pub(super) struct World {
    // Field order is drop order: processes first, then the namespaces they live in.
    /// The vhost-user frontend (`hostnet-lab attach --vhost-user`) of a daemon backend.
    frontend: Option<Proc>,
    backend_proc: Option<Proc>,
    iperf: Option<Proc>,
    echo: Option<Proc>,
    /// The guest-to-guest world's servers in the second guest G2 (iperf3, echo server).
    iperf2: Option<Proc>,
    echo2: Option<Proc>,
    g: Netns,
    /// The second guest namespace G2 of a guest-to-guest world (issue 14).
    g2: Option<Netns>,
    h: Netns,
    s: Netns,
    pub(super) backend: Backend,
    pub(super) mtu: u32,
    log: PathBuf,
    pinned: bool,
    /// The daemon's vhost-user socket (removed on drop).
    socket: Option<PathBuf>,
    /// Whether the guest's IPv6 path to S works (a TCP round trip), or why not.
    v6: Result<(), String>,
    /// G2's IPv4 address in a guest-to-guest world (its lease with hostnet).
    g2_addr: Option<Ipv4Addr>,
    /// [`Env::tcp_cc`].
    tcp_cc: Option<String>,
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(s) = &self.socket {
            let _ = std::fs::remove_file(s);
            let _ = std::fs::remove_file(s.with_extension("sock.repair"));
        }
    }
}

impl World {
    /// Builds the namespaces, starts the servers and the backend, and checks that a TCP round
    /// trip from G to S works. With `pair`, the guest-to-guest world (issue 14): a second guest
    /// namespace G2 on the same network as G (`kernel`: a Linux bridge in H; `hostnet`: one
    /// `hostnet-lab attach` with both guest namespaces), iperf3 and the echo server also in
    /// G2, and the check is a TCP round trip from G to G2 (and to S with `hostnet`).
    pub(super) fn up(backend: Backend, mtu: u32, env: &Env, pair: bool) -> Result<Self> {
        let log = env.logs.join(log_name(backend, mtu, pair));
        let _ = std::fs::remove_file(&log);
        let mut w = Self {
            frontend: None,
            backend_proc: None,
            iperf: None,
            echo: None,
            iperf2: None,
            echo2: None,
            g: Netns::new("bench-g")?,
            g2: if pair {
                Some(Netns::new("bench-g2")?)
            } else {
                None
            },
            h: Netns::new("bench-h")?,
            s: Netns::new("bench-s")?,
            backend,
            mtu,
            log,
            pinned: false,
            socket: None,
            v6: Err("not set up".to_owned()),
            g2_addr: None,
            tcp_cc: env.tcp_cc.clone(),
        };
        if let Err(e) = w.start(env) {
            // Stop the backend gracefully so that its statistics land in the log.
            let _ = w.stop();
            return Err(anyhow::anyhow!("{e:#} (log: {})", w.log.display()));
        }
        Ok(w)
    }

    fn start(&mut self, env: &Env) -> Result<()> {
        self.common()?;
        self.start_servers(env)?;
        if self.g2.is_some() {
            return self.start_pair(env);
        }
        match self.backend {
            Backend::Kernel => self.kernel()?,
            Backend::Pasta => self.pasta()?,
            Backend::Slirp => self.slirp()?,
            Backend::Hostnet | Backend::HostnetMq => self.hostnet(env)?,
            Backend::Hostnetd | Backend::HostnetdMq | Backend::PasstVu => self.vhost_user(env)?,
        }
        self.tune_taps()?;
        self.check(env)?;
        if self.v6.is_ok() {
            self.v6 = self.check6(env).map_err(|e| format!("{e:#}"));
        }
        Ok(())
    }

    /// Runs an IPv6 set-up step: a failure does not fail the world (its IPv4 figures are
    /// measured as before) but becomes the reason its IPv6 figures are not.
    fn step6(&mut self, what: &str, f: impl FnOnce(&Self) -> Result<()>) {
        if self.v6.is_ok()
            && let Err(e) = f(self)
        {
            self.v6 = Err(format!("{what}: {e:#}"));
        }
    }

    /// Whether the guest's IPv6 path works, or why not (`skipped: ...` when the bench does
    /// not give this backend IPv6; anything else is a failure).
    pub(super) fn ipv6(&self) -> Result<(), &str> {
        self.v6.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// How the guest's eth0 is set up, as measured: the TAP's `tun_flags` (whether it carries
    /// a virtio-net header, IFF_VNET_HDR) and its TSO state from `ethtool -k` if available.
    /// `None` for the kernel backend (a veth).
    pub(super) fn guest_tap(&self) -> Option<String> {
        if !self.backend.tap_based() {
            return None;
        }
        let mut cmd = self.g.command("cat");
        cmd.arg("/sys/class/net/eth0/tun_flags");
        let flags = run_ok(&mut cmd, CMD_LIMIT)
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())?;
        let vnet = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
            .is_ok_and(|f| f & IFF_VNET_HDR != 0);
        let mut cmd = self.g.command("ethtool");
        cmd.args(["-k", "eth0"]);
        let text = run_ok(&mut cmd, CMD_LIMIT)
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
        let feature = |name: &str| {
            text.as_deref()
                .and_then(|t| ethtool_feature(t, name))
                .unwrap_or_else(|| "unknown (no ethtool)".to_owned())
        };
        Some(format!(
            "tun_flags {flags} (IFF_VNET_HDR {}), TSO {} (IPv4 {}, IPv6 {})",
            if vnet { "yes" } else { "no" },
            feature("tcp-segmentation-offload"),
            feature("tx-tcp-segmentation"),
            feature("tx-tcp6-segmentation"),
        ))
    }

    /// Whether the backend process (if any) and its vhost-user frontend are still running.
    pub(super) fn backend_alive(&mut self) -> bool {
        self.backend_proc.as_mut().is_none_or(Proc::alive)
            && self.frontend.as_mut().is_none_or(Proc::alive)
    }

    /// What the vhost-user frontend logged about the negotiation with the daemon: the
    /// acknowledged feature bits by name and the protocol features.
    pub(super) fn negotiated(&self) -> Option<String> {
        if !self.backend.vhost_user() {
            return None;
        }
        let log = std::fs::read_to_string(&self.log).ok()?;
        let line = log
            .lines()
            .find(|l| l.contains("vhost-user backend negotiated"))?;
        let field = |k: &str| {
            line.split_once(k)
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or("").to_owned())
        };
        let protocol = line
            .split_once("protocol=")
            .map_or(String::new(), |(_, p)| p.trim().to_owned());
        Some(format!(
            "{} (offered {}), protocol {protocol}",
            field("names=")?,
            field("offered=").unwrap_or_default()
        ))
    }

    /// The backend's CPU time so far (`None` for the kernel).
    pub(super) fn backend_cpu(&self) -> Option<f64> {
        self.backend_proc
            .as_ref()
            .and_then(|p| cpu_seconds(p.pid()))
    }

    /// What [`World::busy_since`] compares against: the backend threads' CPU seconds so far
    /// and the machine's CPU time.
    pub(super) fn busy_start(&self) -> Busy {
        Busy {
            threads: self.backend_threads(),
            machine: machine_cpu(),
        }
    }

    /// CPU seconds so far of each backend thread: (tid, name, seconds); the threads of a
    /// vhost-user daemon's frontend follow, their names prefixed `frontend:`.
    pub(super) fn backend_threads(&self) -> Vec<(u32, String, f64)> {
        let mut v = self
            .backend_proc
            .as_ref()
            .map(|p| thread_cpu(p.pid()))
            .unwrap_or_default();
        if let Some(f) = &self.frontend {
            v.extend(
                thread_cpu(f.pid())
                    .into_iter()
                    .map(|(tid, name, secs)| (tid, format!("frontend:{name}"), secs)),
            );
        }
        v
    }

    /// iperf3 TCP from G to S (`reverse`: S to G) with `streams` streams, over IPv6 with
    /// `v6`: (Gbit/s, bytes).
    pub(super) fn tcp(
        &mut self,
        reverse: bool,
        streams: u32,
        secs: u32,
        v6: bool,
    ) -> Result<(f64, f64)> {
        let server: IpAddr = if v6 { SERVER6.into() } else { SERVER.into() };
        self.tcp_to(server, reverse, streams, secs, None, false)
    }

    /// iperf3 TCP from G to S, one stream, paced by iperf3 at `gbps` Gbit/s (`-b`): (Gbit/s,
    /// bytes). Every backend carries the same bytes at the same rate, so their CPU per GB
    /// compares like for like even where one of them cannot keep up an unpaced upload.
    pub(super) fn tcp_paced(&mut self, gbps: f64, secs: u32) -> Result<(f64, f64)> {
        self.tcp_to(SERVER.into(), false, 1, secs, Some(gbps), false)
    }

    /// iperf3 TCP from G to G2 (`reverse`: G2 to G) in the guest-to-guest world:
    /// (Gbit/s, bytes).
    pub(super) fn g2g_tcp(&mut self, reverse: bool, streams: u32, secs: u32) -> Result<(f64, f64)> {
        let peer = self.g2_addr.context("the second guest has no address")?;
        self.tcp_to(peer.into(), reverse, streams, secs, None, true)
    }

    /// iperf3 TCP from G to `server`'s iperf3 (G2's with `in_g2`, else S's), paced at
    /// `rate` Gbit/s if given.
    fn tcp_to(
        &mut self,
        server: IpAddr,
        reverse: bool,
        streams: u32,
        secs: u32,
        rate: Option<f64>,
        in_g2: bool,
    ) -> Result<(f64, f64)> {
        let mut args = vec![
            "-c".to_owned(),
            server.to_string(),
            "-t".to_owned(),
            secs.to_string(),
            "-P".to_owned(),
            streams.to_string(),
        ];
        if reverse {
            args.push("-R".to_owned());
        }
        if let Some(gbps) = rate {
            args.push("-b".to_owned());
            args.push(format!("{:.0}", gbps * 1e9));
        }
        if let Some(cc) = &self.tcp_cc {
            // iperf3 sets it on the server's data sockets too.
            args.push("-C".to_owned());
            args.push(cc.clone());
        }
        let v = self.iperf3(&args, secs, in_g2)?;
        let sum = &v["end"]["sum_received"];
        let bps = sum["bits_per_second"]
            .as_f64()
            .context("iperf3: no end.sum_received.bits_per_second")?;
        let bytes = sum["bytes"].as_f64().unwrap_or(0.0);
        Ok((bps / 1e9, bytes))
    }

    /// iperf3 UDP, 64-byte payloads, offered as fast as iperf3 can send, G to S:
    /// (thousand packets per second received, loss %).
    pub(super) fn udp64(&mut self, secs: u32) -> Result<(f64, f64)> {
        let server = SERVER.to_string();
        let args: Vec<String> = [
            "-c",
            &server,
            "-u",
            "-l",
            "64",
            "-b",
            "0",
            "-t",
            &secs.to_string(),
        ]
        .map(str::to_owned)
        .to_vec();
        let v = self.iperf3(&args, secs, false)?;
        let sum = &v["end"]["sum"];
        let packets = sum["packets"]
            .as_f64()
            .context("iperf3: no end.sum.packets")?;
        let lost = sum["lost_packets"].as_f64().unwrap_or(0.0);
        let seconds = sum["seconds"]
            .as_f64()
            .filter(|s| *s > 0.0)
            .unwrap_or(f64::from(secs));
        let received = (packets - lost).max(0.0);
        let loss = if packets > 0.0 {
            100.0 * lost / packets
        } else {
            100.0
        };
        Ok((received / seconds / 1e3, loss))
    }

    /// Pins the backend process (all its threads) to the latency CPU; the latency clients and
    /// the echo server run there too.
    pub(super) fn pin(&mut self, env: &Env) -> Result<()> {
        let Some(cpu) = env.pin_cpu else {
            return Ok(());
        };
        for p in self.backend_proc.iter().chain(&self.frontend) {
            run_ok(
                Command::new("taskset").args([
                    "-a",
                    "-p",
                    "-c",
                    &cpu.to_string(),
                    &p.pid().to_string(),
                ]),
                CMD_LIMIT,
            )
            .with_context(|| format!("pin {}", p.what))?;
        }
        self.pinned = true;
        Ok(())
    }

    /// Mean ping RTT from G to S in µs (ICMP echo every 2 ms for `secs`).
    pub(super) fn ping(&mut self, env: &Env, secs: f64) -> Result<f64> {
        let count = ((secs / 0.002) as u32).clamp(10, 5000).to_string();
        let mut cmd = self.in_guest(env, "ping");
        cmd.args(["-q", "-n", "-c", &count, "-i", "0.002", "-W", "2"])
            .arg(SERVER.to_string());
        let out = run_ok(&mut cmd, Duration::from_secs_f64(secs * 3.0 + 15.0))?;
        let text = String::from_utf8_lossy(&out.stdout);
        // rtt min/avg/max/mdev = 0.173/0.446/0.720/0.273 ms
        let line = text
            .lines()
            .find(|l| l.starts_with("rtt") || l.starts_with("round-trip"))
            .context("ping printed no rtt line (every reply lost?)")?;
        let avg = line
            .split('=')
            .nth(1)
            .and_then(|v| v.trim().split('/').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("cannot parse {line:?}"))?;
        Ok(avg * 1e3)
    }

    /// The rr/crr client in G against the echo server in S (its IPv6 port with `v6`):
    /// transactions per second.
    pub(super) fn transactions(
        &mut self,
        env: &Env,
        mode: &str,
        secs: f64,
        v6: bool,
    ) -> Result<f64> {
        self.transactions_to(env, mode, secs, &echo_addr(v6))
    }

    /// The rr client in G against G2's echo server (guest-to-guest world): round trips per
    /// second.
    pub(super) fn g2g_transactions(&mut self, env: &Env, secs: f64) -> Result<f64> {
        let peer = self.peer_echo()?;
        self.transactions_to(env, "rr", secs, &peer)
    }

    fn transactions_to(&mut self, env: &Env, mode: &str, secs: f64, addr: &str) -> Result<f64> {
        let exe = env.exe.clone();
        let mut cmd = self.in_guest(env, &exe.to_string_lossy());
        cmd.args(["bench", "--client", mode, addr, &format!("{secs}")]);
        let out = run_ok(&mut cmd, Duration::from_secs_f64(secs + 15.0))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let field = |name: &str| -> Option<f64> {
            text.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name))
                .and_then(|v| v.parse().ok())
        };
        let (Some(count), Some(took)) = (field("count="), field("secs=")) else {
            bail!("client printed {text:?}");
        };
        if count == 0.0 || took <= 0.0 {
            bail!("no transaction completed");
        }
        Ok(count / took)
    }

    /// Whether a TCP round trip G → S works again within [`STALL_PATIENCE`] (pasta and
    /// slirp4netns recover from upload stalls of several seconds; a backend that does not
    /// recover within this time is treated as stuck).
    pub(super) fn healthy(&mut self, env: &Env) -> bool {
        let deadline = Instant::now() + STALL_PATIENCE;
        while Instant::now() < deadline {
            if !self.backend_alive() {
                return false;
            }
            let mut cmd = self.g.command(&env.exe);
            cmd.args(["bench", "--client", "rr", &self.probe(), "0.05"]);
            if run_ok(&mut cmd, Duration::from_secs(5)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        false
    }

    /// Stops the backend (SIGTERM, 3 s grace; a vhost-user frontend first) and returns the end
    /// of its log (hostnet's stats).
    pub(super) fn stop(&mut self) -> Option<String> {
        let frontend_clean = self
            .frontend
            .take()
            .is_none_or(|mut f| f.terminate(Duration::from_secs(3)));
        let mut p = self.backend_proc.take()?;
        let clean = p.terminate(Duration::from_secs(3));
        drop(p);
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let mut tail: Vec<&str> = tail.into_iter().rev().collect();
        if !clean
            && matches!(
                self.backend,
                Backend::Hostnet | Backend::HostnetMq | Backend::Hostnetd | Backend::HostnetdMq
            )
        {
            tail.push("(the backend did not exit with status 0 within 3 s of SIGTERM)");
        }
        if !frontend_clean {
            tail.push("(hostnet-lab attach --vhost-user did not exit with status 0 within 3 s)");
        }
        Some(tail.join("\n"))
    }

    /// Restarts the iperf3 server in S, or in G2 with `in_g2` (after a failed client, which
    /// may leave it busy).
    fn restart_iperf_of(&mut self, in_g2: bool) -> Result<()> {
        if !in_g2 {
            self.iperf = None;
            return self.start_iperf();
        }
        self.iperf2 = None;
        let g2 = self.g2.as_ref().context("no second guest")?;
        let mut cmd = g2.command("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        self.iperf2 = Some(Proc::spawn("iperf3 server in G2", &mut cmd, &self.log)?);
        wait_listening(g2, IPERF_PORT)
    }

    fn common(&mut self) -> Result<()> {
        let (h, s) = (&self.h, &self.s);
        netns::veth_mtu(h, "srv0", s, "eth0", LINK_MTU)?;
        h.add_addr("srv0", &format!("{HOST_SERVER}/{TEST_INTERNET_PREFIX_LEN}"))?;
        s.add_addr("eth0", &format!("{SERVER}/{TEST_INTERNET_PREFIX_LEN}"))?;
        // Also the way back to 100.64.0.0/10 (hostnet's NAT external address) via H.
        s.add_route("default", HOST_SERVER)?;
        // pasta picks its outbound interface from the default route.
        h.add_route("default", SERVER)?;
        h.sysctl("net.ipv4.ip_forward", "1")?;
        // ping through pasta and slirp4netns uses ICMP datagram sockets in H.
        h.sysctl("net.ipv4.ping_group_range", "0 2147483647")?;
        // The socket backends' TCP sockets (pasta, slirp4netns, passt in H) start with a
        // 4 MiB send buffer instead of 16 KiB: a guest's first burst overran passt's, passt
        // dropped what its socket did not take and the guest recovered by timeouts only
        // (docs/PERFORMANCE.md "passt's upload stall"). hostnet, hostnetd and the kernel
        // forward in H without a socket of their own.
        h.sysctl("net.ipv4.tcp_wmem", "4096 4194304 4194304")?;
        self.v6 = if self.g2.is_some() {
            Err("skipped: the guest-to-guest world is IPv4 only".to_owned())
        } else {
            self.backend.ipv6().map_err(|why| format!("skipped: {why}"))
        };
        self.step6("IPv6 between H and S", Self::common6);
        Ok(())
    }

    /// IPv6 on the H–S link (addresses without duplicate address detection, usable at once),
    /// S's way back (also to NAT66's fd64:ffff::2) via H, H's default via S (pasta), forwarding
    /// in H.
    fn common6(&self) -> Result<()> {
        let (h, s) = (&self.h, &self.s);
        h.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_SERVER6}/64"),
            "dev",
            "srv0",
            "nodad",
        ])?;
        s.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{SERVER6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        s.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &HOST_SERVER6.to_string(),
        ])?;
        h.ip(&["-6", "route", "add", "default", "via", &SERVER6.to_string()])?;
        h.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // The guest's eth0 (made later by the backend) solicits a router at once rather than
        // after up to 1 s: shorter set-up with SLAAC, nothing measured changes.
        self.g
            .sysctl("net.ipv6.conf.default.router_solicitation_delay", "0")?;
        Ok(())
    }

    fn start_servers(&mut self, env: &Env) -> Result<()> {
        self.start_iperf()?;
        let mut cmd = match env.pin_cpu {
            Some(cpu) => {
                let mut c = self.s.command("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&env.exe);
                c
            }
            None => self.s.command(&env.exe),
        };
        cmd.args(["bench", "--serve", &ECHO_PORT.to_string()]);
        self.echo = Some(Proc::spawn("echo server", &mut cmd, &self.log)?);
        wait_listening(&self.s, ECHO_PORT)?;
        self.step6("the echo server's IPv6 listener", |w| {
            wait_listening(&w.s, ECHO_PORT6)
        });
        Ok(())
    }

    /// iperf3 and the echo server in G2 too (guest-to-guest world), the echo server pinned
    /// like S's.
    fn start_g2_servers(&mut self, env: &Env) -> Result<()> {
        let g2 = self.g2.as_ref().context("no second guest")?;
        let mut cmd = g2.command("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        self.iperf2 = Some(Proc::spawn("iperf3 server in G2", &mut cmd, &self.log)?);
        wait_listening(g2, IPERF_PORT)?;
        let mut cmd = match env.pin_cpu {
            Some(cpu) => {
                let mut c = g2.command("taskset");
                c.args(["-c", &cpu.to_string()]).arg(&env.exe);
                c
            }
            None => g2.command(&env.exe),
        };
        cmd.args(["bench", "--serve", &ECHO_PORT.to_string()]);
        self.echo2 = Some(Proc::spawn("echo server in G2", &mut cmd, &self.log)?);
        wait_listening(g2, ECHO_PORT)
    }

    /// The guest-to-guest world's backend: `kernel` a Linux bridge in H, `hostnet` one
    /// `hostnet-lab attach` with both guests (a lease in each); then a TCP round trip G → G2
    /// (and G → S with hostnet, for the second-guest figure).
    fn start_pair(&mut self, env: &Env) -> Result<()> {
        self.start_g2_servers(env)?;
        match self.backend {
            Backend::Kernel => self.kernel_bridge()?,
            Backend::Hostnet => {
                self.attach(env, true)?;
                self.lease()?;
                self.lease_g2()?;
            }
            other => bail!(
                "{}: the bench builds guest-to-guest worlds for kernel and hostnet only",
                other.name()
            ),
        }
        self.tune_taps()?;
        if self.backend == Backend::Hostnet {
            self.check(env)?;
        }
        let peer = self.peer_echo()?;
        self.check_to(env, &peer)
            .context("guest to guest (G to G2)")
    }

    /// `kernel` for the guest-to-guest world: G `eth0` ↔ H `g1p` and G2 `eth0` ↔ H `g2p`,
    /// both enslaved to the bridge `br0` in H (made in the namespaces directly); G
    /// 192.168.64.2/24, G2 192.168.64.3/24.
    fn kernel_bridge(&mut self) -> Result<()> {
        let g2 = self.g2.as_ref().context("no second guest")?;
        let (g, h) = (&self.g, &self.h);
        h.ip(&["link", "add", "br0", "type", "bridge"])?;
        netns::veth_mtu(g, "eth0", h, "g1p", self.mtu)?;
        netns::veth_mtu(g2, "eth0", h, "g2p", self.mtu)?;
        for port in ["g1p", "g2p"] {
            h.ip(&["link", "set", port, "master", "br0"])?;
        }
        h.link_up("br0")?;
        g.add_addr("eth0", &format!("{GUEST}/{PREFIX_LEN}"))?;
        g2.add_addr("eth0", &format!("{PEER}/{PREFIX_LEN}"))?;
        self.g2_addr = Some(PEER);
        Ok(())
    }

    /// The TAP tuning of every TAP-based backend, on each guest's `eth0` that exists.
    fn tune_taps(&self) -> Result<()> {
        if !self.backend.tap_based() {
            return Ok(());
        }
        let qlen = TAP_TXQUEUELEN.to_string();
        self.g.ip(&["link", "set", "eth0", "txqueuelen", &qlen])?;
        if let Some(g2) = &self.g2
            && g2.has_link("eth0")?
        {
            g2.ip(&["link", "set", "eth0", "txqueuelen", &qlen])?;
        }
        Ok(())
    }

    /// G2's echo server, as the rr client takes it.
    fn peer_echo(&self) -> Result<String> {
        let addr = self.g2_addr.context("the second guest has no address")?;
        Ok(format!("{addr}:{ECHO_PORT}"))
    }

    /// Where [`Self::healthy`] checks a round trip: G2's echo server in the guest-to-guest
    /// world, S's otherwise.
    fn probe(&self) -> String {
        match (&self.g2, self.peer_echo()) {
            (Some(_), Ok(peer)) => peer,
            _ => echo_addr(false),
        }
    }

    /// A lease in G2 by DHCP (busybox udhcpc), its address read from the lease.
    fn lease_g2(&mut self) -> Result<()> {
        let g2 = self.g2.as_ref().context("no second guest")?;
        g2.link_up("eth0")?;
        let script = self.log.with_extension("g2.udhcpc.sh");
        let lease = self.log.with_extension("g2.lease");
        let _ = std::fs::remove_file(&lease);
        netns::lease::write_udhcpc_script(&script, &lease).context("write the udhcpc script")?;
        let mut cmd = g2.command("busybox");
        cmd.args([
            "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script);
        run_ok(&mut cmd, Duration::from_secs(20)).context("busybox udhcpc in G2")?;
        let ip = netns::lease::Lease::read(&lease).context("G2's lease")?.ip;
        self.g2_addr = Some(ip);
        Ok(())
    }

    /// `hostnet` restarted with one guest (`both` false: G only, G2's TAP goes away with the
    /// old process) or both, leased, tuned and checked (G → S).
    fn reattach(&mut self, env: &Env, both: bool) -> Result<()> {
        if let Some(mut p) = self.backend_proc.take() {
            p.terminate(Duration::from_secs(3));
        }
        self.attach(env, both)?;
        self.lease()?;
        if both {
            self.lease_g2()?;
        }
        self.tune_taps()?;
        self.check(env)
    }

    /// The second-guest figure (hostnet): TCP G → S, 1 stream, first with G alone on a
    /// fresh attach, then with G2 attached too (leased, idle): (alone, with G2) in Gbit/s,
    /// and the busy threads of both runs.
    pub(super) fn second_guest(
        &mut self,
        env: &Env,
        secs: u32,
    ) -> Result<(f64, f64, Option<String>)> {
        if self.backend != Backend::Hostnet || self.g2.is_none() {
            bail!("the second-guest figure is measured with hostnet's guest-to-guest world only");
        }
        let mut notes = Vec::new();
        let mut run = |w: &mut Self, both: bool| -> Result<f64> {
            let what = if both { "both guests" } else { "one guest" };
            w.reattach(env, both)
                .with_context(|| format!("attach with {what}"))?;
            let before = w.busy_start();
            let t0 = Instant::now();
            let gbps = w.tcp(false, 1, secs, false)?.0;
            if let Some(busy) = w.busy_since(&before, t0.elapsed().as_secs_f64()) {
                notes.push(format!("{what}: {busy}"));
            }
            Ok(gbps)
        };
        let alone = match run(self, false) {
            Ok(v) => v,
            Err(e) => {
                // Leave the world as the later figures expect it: both guests attached.
                let _ = self.reattach(env, true);
                return Err(e);
            }
        };
        let pair = run(self, true)?;
        Ok((alone, pair, (!notes.is_empty()).then(|| notes.join("; "))))
    }

    /// The backend threads busy since `before` (CPU seconds per second over `wall` seconds,
    /// at least 0.02), busiest first, as the table prints them, and the share of the
    /// machine's CPU time that was idle meanwhile (all CPUs: whether anything was left).
    pub(super) fn busy_since(&self, before: &Busy, wall: f64) -> Option<String> {
        let mut busy: Vec<(String, f64)> = self
            .backend_threads()
            .into_iter()
            .filter_map(|(tid, name, after)| {
                let was = before
                    .threads
                    .iter()
                    .find(|t| t.0 == tid)
                    .map_or(0.0, |t| t.2);
                let load = (after - was) / wall;
                (load >= 0.02).then(|| (format!("{name}[{tid}]"), load))
            })
            .collect();
        busy.sort_by(|a, b| b.1.total_cmp(&a.1));
        let mut parts: Vec<String> = busy.iter().map(|(n, l)| format!("{n} {l:.2}")).collect();
        if let (Some((idle0, total0)), Some((idle1, total1))) = (before.machine, machine_cpu())
            && total1 > total0
        {
            let idle = idle1.saturating_sub(idle0) as f64 / (total1 - total0) as f64;
            parts.push(format!("machine idle {idle:.2}"));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }

    fn start_iperf(&mut self) -> Result<()> {
        let mut cmd = self.s.command("iperf3");
        cmd.args(["-s", "-p", &IPERF_PORT.to_string()]);
        self.iperf = Some(Proc::spawn("iperf3 server", &mut cmd, &self.log)?);
        wait_listening(&self.s, IPERF_PORT)
    }

    fn kernel(&mut self) -> Result<()> {
        let (g, h) = (&self.g, &self.h);
        let mtu = self.mtu;
        netns::veth_mtu(g, "eth0", h, "gw0", mtu)?;
        h.add_addr("gw0", &format!("{GATEWAY}/{PREFIX_LEN}"))?;
        guest_static(g)?;
        let rules = self.log.with_extension("nft");
        std::fs::write(&rules, nft_rules()).context("write the nftables rules")?;
        run_ok(h.command("nft").arg("-f").arg(&rules), CMD_LIMIT)
            .context("nft -f (masquerade in H)")?;
        self.step6("the kernel's NAT66", Self::kernel6);
        Ok(())
    }

    /// NAT66 by the kernel: the guest's ULA masqueraded to H's 2001:db8::1 out of srv0.
    fn kernel6(&self) -> Result<()> {
        let (g, h) = (&self.g, &self.h);
        let rules = self.log.with_extension("nft6");
        std::fs::write(&rules, nft6_rules()).context("write the nftables rules")?;
        run_ok(h.command("nft").arg("-f").arg(&rules), CMD_LIMIT).context("nft -f (NAT66 in H)")?;
        h.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{IPV6_GATEWAY}/64"),
            "dev",
            "gw0",
            "nodad",
        ])?;
        g.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{GUEST6}/64"),
            "dev",
            "eth0",
            "nodad",
        ])?;
        g.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &IPV6_GATEWAY.to_string(),
        ])?;
        Ok(())
    }

    fn pasta(&mut self) -> Result<()> {
        let mut cmd = self.h.command("pasta");
        cmd.args([
            "-f",
            "-q",
            "--runas",
            "0",
            "--config-net",
            "-I",
            "eth0",
            "-a",
            &GUEST.to_string(),
            "-n",
            &PREFIX_LEN.to_string(),
            "-g",
            &GATEWAY.to_string(),
            "-m",
            &self.mtu.to_string(),
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
        ]);
        if self.v6.is_ok() {
            cmd.args(["-a", &GUEST6.to_string(), "-g", &IPV6_GATEWAY.to_string()]);
        } else {
            cmd.arg("-4");
        }
        cmd.arg("--netns").arg(self.g.path());
        self.backend_proc = Some(Proc::spawn("pasta", &mut cmd, &self.log)?);
        self.wait_guest_addr(GUEST)?;
        self.g
            .ip(&["link", "set", "eth0", "mtu", &self.mtu.to_string()])?;
        Ok(())
    }

    fn slirp(&mut self) -> Result<()> {
        let mut cmd = self.h.command("slirp4netns");
        cmd.args([
            "--configure",
            &format!("--mtu={}", self.mtu.min(65521)),
            &format!("--cidr={SUBNET}/{PREFIX_LEN}"),
            "--disable-host-loopback",
            "--netns-type=path",
        ]);
        if self.v6.is_ok() {
            cmd.arg("--enable-ipv6");
        }
        cmd.arg(self.g.path()).arg("eth0");
        self.backend_proc = Some(Proc::spawn("slirp4netns", &mut cmd, &self.log)?);
        // slirp4netns always gives the guest .100 of its CIDR.
        self.wait_guest_addr(Ipv4Addr::from_bits(SUBNET.to_bits() + 100))
    }

    fn hostnet(&mut self, env: &Env) -> Result<()> {
        self.attach(env, false)?;
        self.lease()
    }

    /// `hostnet-lab attach` for G (and, with `both`, G2 as a second `--guest-netns`) with the
    /// TUN in H, up to its ready line.
    fn attach(&mut self, env: &Env, both: bool) -> Result<()> {
        let lab = env.lab.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cmd = self.h.command(lab);
        cmd.args(["attach", "--guest-netns", self.g.name()]);
        if both {
            let g2 = self.g2.as_ref().context("no second guest")?;
            // A thread per guest, as a VMM runs one per VM (`bridge::PairWorker`s sharing the
            // network behind a lock taken per batch).
            cmd.args(["--guest-netns", g2.name(), "--threads", "pairs"]);
        }
        cmd.args([
            "--host-netns",
            self.h.name(),
            "--mtu",
            &self.mtu.to_string(),
        ]);
        if self.backend == Backend::HostnetMq {
            // Each pair on a thread of its own (`bridge::PairWorker`).
            cmd.args(["--queues", "2", "--threads", "pairs"]);
        }
        let mut p = Proc::spawn_lines("hostnet-lab attach", &mut cmd, &self.log)?;
        let ready = p.wait_line("ready", Duration::from_secs(30));
        self.backend_proc = Some(p);
        let ready = ready.with_context(|| format!("see {}", self.log.display()))?;
        if !ready.contains("external=") {
            bail!("unexpected ready line {ready:?}");
        }
        Ok(())
    }

    /// A vhost-user daemon in H (hostnetd, or passt's vhost-user mode) and
    /// `hostnet-lab attach --vhost-user` as its frontend, the TAP in G; a lease by DHCP.
    fn vhost_user(&mut self, env: &Env) -> Result<()> {
        let lab = env.lab.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
        let socket = std::env::temp_dir().join(format!(
            "hostnet-bench-{}-{}-{}.sock",
            std::process::id(),
            self.backend.name(),
            self.mtu
        ));
        let _ = std::fs::remove_file(&socket);
        self.socket = Some(socket.clone());
        let mtu = self.mtu.to_string();
        let mut cmd = match self.backend {
            Backend::Hostnetd | Backend::HostnetdMq => {
                let bin = env.hostnetd.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut c = self.h.command(bin);
                c.arg("--socket").arg(&socket).args([
                    "--mtu",
                    &mtu,
                    "--dns-upstream",
                    &SERVER.to_string(),
                ]);
                if self.backend == Backend::HostnetdMq {
                    c.args(["--queues", "2"]);
                }
                c
            }
            _ => {
                let bin = env.passt.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
                let mut c = self.h.command(bin);
                c.args(["-f", "--vhost-user", "--socket"])
                    .arg(&socket)
                    .args([
                        "--runas",
                        "0",
                        "-a",
                        &GUEST.to_string(),
                        "-n",
                        &PREFIX_LEN.to_string(),
                        "-g",
                        &GATEWAY.to_string(),
                        "-m",
                        &mtu,
                        "-4",
                        "-t",
                        "none",
                        "-u",
                        "none",
                    ]);
                c
            }
        };
        cmd.env("RUST_LOG", "info");
        self.backend_proc = Some(Proc::spawn(self.backend.name(), &mut cmd, &self.log)?);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !socket.exists() {
            if !self.backend_alive() {
                bail!("{} exited during set-up", self.backend.name());
            }
            if Instant::now() > deadline {
                bail!("{} made no socket within 15 s", self.backend.name());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut cmd = self.h.command(lab);
        cmd.args([
            "attach",
            "--guest-netns",
            self.g.name(),
            "--host-netns",
            self.h.name(),
            "--mtu",
            &mtu,
            "--vhost-user",
        ])
        .arg(&socket)
        .env("RUST_LOG", "info");
        if self.backend == Backend::HostnetdMq {
            cmd.args(["--queues", "2"]);
        }
        let mut p = Proc::spawn_lines("hostnet-lab attach --vhost-user", &mut cmd, &self.log)?;
        let ready = p.wait_line("ready", Duration::from_secs(30));
        self.frontend = Some(p);
        ready.with_context(|| format!("see {}", self.log.display()))?;
        self.lease()
    }

    /// A lease on the guest's TAP by DHCP (busybox udhcpc): hostnet's bridge forwards only
    /// from a leased address, and the vhost-user daemons hand out 192.168.64.2 the same way.
    /// With IPv6 (not `passt-vhost-user`), the guest kernel's own SLAAC is started first: its
    /// RA handling on, the link set down and up so that it solicits a router at once (as
    /// testbed's `Lab::slaac`, but before the lease, so that the bounce keeps the IPv4
    /// default route); [`Self::check6`] waits for the address.
    fn lease(&mut self) -> Result<()> {
        self.step6("SLAAC in the guest", |w| {
            for (key, value) in [
                ("disable_ipv6", "0"),
                ("accept_ra", "2"),
                ("autoconf", "1"),
                ("router_solicitation_delay", "0"),
            ] {
                w.g.sysctl(&format!("net.ipv6.conf.eth0.{key}"), value)?;
            }
            w.g.ip(&["link", "set", "eth0", "down"])?;
            Ok(())
        });
        self.g.link_up("eth0")?;
        let script = self.log.with_extension("udhcpc.sh");
        netns::lease::write_udhcpc_script(&script, &self.log.with_extension("lease"))
            .context("write the udhcpc script")?;
        let mut cmd = self.g.command("busybox");
        cmd.args([
            "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script);
        run_ok(&mut cmd, Duration::from_secs(20)).context("busybox udhcpc in the guest")?;
        self.wait_guest_addr(GUEST)
    }

    fn wait_guest_addr(&mut self, addr: Ipv4Addr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !self.backend_alive() {
                bail!(
                    "{} exited during set-up (see {})",
                    self.backend.name(),
                    self.log.display()
                );
            }
            let out = run_limited(
                Command::new("ip").args(["-n", self.g.name(), "-4", "addr", "show", "dev", "eth0"]),
                CMD_LIMIT,
            )?;
            if String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the guest's eth0 did not get {addr} within 10 s")
    }

    /// A TCP round trip G → S must work within 10 s.
    fn check(&mut self, env: &Env) -> Result<()> {
        self.check_to(env, &echo_addr(false))
    }

    /// A TCP round trip from G to the echo server at `addr` must work within 10 s.
    fn check_to(&mut self, env: &Env, addr: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        while Instant::now() < deadline {
            if !self.backend_alive() {
                bail!(
                    "{} exited during set-up (see {})",
                    self.backend.name(),
                    self.log.display()
                );
            }
            let mut cmd = self.g.command(&env.exe);
            cmd.args(["bench", "--client", "rr", addr, "0.05"]);
            match run_ok(&mut cmd, Duration::from_secs(8)) {
                Ok(_) => return Ok(()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no TCP round trip from the guest to {addr} within 10 s: {last}")
    }

    /// The guest's IPv6: a global address that is no longer tentative, then a TCP round trip
    /// G → S over IPv6, within 15 s.
    fn check6(&self, env: &Env) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut last = String::new();
        let mut addressed = false;
        while Instant::now() < deadline {
            if !addressed {
                let out = run_limited(
                    Command::new("ip").args([
                        "-n",
                        self.g.name(),
                        "-6",
                        "-o",
                        "addr",
                        "show",
                        "dev",
                        "eth0",
                        "scope",
                        "global",
                    ]),
                    CMD_LIMIT,
                )?;
                let text = String::from_utf8_lossy(&out.stdout);
                addressed = text.contains("inet6") && !text.contains("tentative");
                last = format!("no usable global IPv6 address on eth0: {:?}", text.trim());
            }
            if addressed {
                let mut cmd = self.g.command(&env.exe);
                cmd.args(["bench", "--client", "rr", &echo_addr(true), "0.05"]);
                match run_ok(&mut cmd, Duration::from_secs(8)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last = format!("{e:#}"),
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("no TCP round trip over IPv6 from the guest to the server within 15 s: {last}")
    }

    /// Runs the iperf3 client in G; after a failure restarts the server it used (G2's with
    /// `in_g2`, else S's), which a failed client may leave busy.
    fn iperf3(&mut self, args: &[String], secs: u32, in_g2: bool) -> Result<Value> {
        let mut cmd = self.g.command("iperf3");
        cmd.args([
            "-J",
            "--connect-timeout",
            "3000",
            "-p",
            &IPERF_PORT.to_string(),
        ])
        .args(args);
        let limit = Duration::from_secs(2 * u64::from(secs) + 15);
        let out = match run_limited(&mut cmd, limit) {
            Ok(out) => out,
            Err(e) => {
                let _ = self.restart_iperf_of(in_g2);
                return Err(e);
            }
        };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let error = v["error"].as_str().map(str::to_owned);
        if !out.status.success() || error.is_some() {
            let _ = self.restart_iperf_of(in_g2);
            bail!(
                "iperf3 {}: {}",
                args.join(" "),
                error.unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_owned())
            );
        }
        Ok(v)
    }

    fn in_guest(&self, env: &Env, program: &str) -> Command {
        match (self.pinned, env.pin_cpu) {
            (true, Some(cpu)) => {
                let mut c = self.g.command("taskset");
                c.args(["-c", &cpu.to_string(), program]);
                c
            }
            _ => self.g.command(program),
        }
    }
}

/// The TCP congestion control new namespaces start with (the root namespace's; read only).
pub(super) fn default_cc() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned())
}

/// The TCP congestion controls the kernel has (a socket of a process with CAP_NET_ADMIN may
/// choose any of them).
pub(super) fn available_cc() -> Vec<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Waits up to 10 s for a TCP listener on `port` in `ns`.
fn wait_listening(ns: &Netns, port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = run_limited(
            ns.command("ss")
                .args(["-H", "-l", "-t", "-n", &format!("sport = :{port}")]),
            CMD_LIMIT,
        )?;
        if !String::from_utf8_lossy(&out.stdout).trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listens on port {port} in {} after 10 s", ns.name())
}

/// A world's log file name: `BACKEND-MTU.log`, `BACKEND-MTU-g2g.log` for the guest-to-guest
/// world.
pub(super) fn log_name(backend: Backend, mtu: u32, pair: bool) -> String {
    format!(
        "{}-{mtu}{}.log",
        backend.name(),
        if pair { "-g2g" } else { "" }
    )
}

/// The guest side of `kernel` and `hostnet`: 192.168.64.2/24 via 192.168.64.1 on eth0.
fn guest_static(g: &Netns) -> Result<()> {
    g.link_up("eth0")?;
    g.add_addr("eth0", &format!("{GUEST}/{PREFIX_LEN}"))?;
    g.add_route("default", GATEWAY)?;
    Ok(())
}

/// How every TAP-based backend is tuned (printed with the results).
pub(super) const TUNING: &str = "guest TAP of pasta, slirp4netns, hostnet and the vhost-user \
     frontend: txqueuelen 20000 (the default 1000 overflows under pasta); offloads as each \
     backend sets up its TAP (measured per backend below: \"guest TAP\"; hostnet: virtio-net \
     CSUM + TSO4 + TSO6 both ways, its guest TAP and host TUN opened with \
     IFF_VNET_HDR, attach's default; hostnetd and passt-vhost-user: what the frontend negotiated, below); kernel: \
     plain veth with its default offloads; H<->S veth MTU 65520 for every backend; H's \
     net.ipv4.tcp_wmem 4096 4194304 4194304 (the socket backends' sockets in H start with a \
     4 MiB send buffer: passt's upload stalled when a guest's burst overran the default \
     16 KiB); vhost-user daemons: CPU per GB is the daemon's process only, the frontend \
     (hostnet-lab attach --vhost-user, pinned with the daemon for the latency figures) is not \
     counted; its threads appear apart in busy threads (frontend:...); the simulated guest \
     (hostnet's and the frontend's) coalesces received TCP segments that have partial \
     checksums into GSO frames before its TAP (GRO, as a guest's stack does; passt's \
     segments without GUEST_TSO are so: one TAP write per 1514-byte frame bounded its \
     download before), and with a virtio-net header on its TAP takes every TX offload from \
     it, completing checksums and cutting TCP super-frames in software for a device that \
     did not negotiate CSUM or HOST_TSO (as a guest's stack does; passt: one TAP read per \
     1514-byte frame held its upload down before)";

/// How the server gets its replies back (printed with the results).
pub(super) const ROUTING: &str = "S routes everything (incl. 100.64.0.0/10) back via H; \
     H adds no NAT of its own: the kernel backend's nftables masquerade, pasta's and \
     slirp4netns's sockets and hostnet's NAT are each the only NAT on their path; IPv6 \
     alike: S's default route via H covers NAT66's fd64:ffff::2, and the kernel's ip6 \
     masquerade, pasta's and slirp4netns's sockets and hostnet's NAT66 are each the only \
     NAT66 on their path";

/// How long a backend may stop carrying traffic before the rest of its figures are skipped.
const STALL_PATIENCE: Duration = Duration::from_secs(30);
/// The server namespace's address (S eth0) and H's address towards it (srv0), as in testbed's
/// topology.
const SERVER: Ipv4Addr = testbed::netns::SERVER_ADDR;
const HOST_SERVER: Ipv4Addr = testbed::netns::HOST_SERVER_ADDR;
/// The server's and H's IPv6 addresses on that link (testbed's topology).
const SERVER6: Ipv6Addr = testbed::netns::SERVER_ADDR6;
const HOST_SERVER6: Ipv6Addr = testbed::netns::HOST_SERVER_ADDR6;
/// The guest's IPv6 address with `kernel` and `pasta` (the others take theirs by SLAAC).
const GUEST6: Ipv6Addr = Ipv6Addr::from_bits(IPV6_PREFIX.to_bits() + 2);
/// The guest's address with every backend that lets us choose it (slirp4netns takes .100).
const GUEST: Ipv4Addr = DHCP_POOL_FIRST;
/// The second guest's address in the kernel's guest-to-guest world (hostnet's G2 leases its
/// own, .3 as well when G leased first).
const PEER: Ipv4Addr = Ipv4Addr::from_bits(DHCP_POOL_FIRST.to_bits() + 1);
const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7777;
/// The echo server's IPv6 listener (`--serve PORT` also listens on `[::]:PORT+1`).
const ECHO_PORT6: u16 = ECHO_PORT + 1;
const LINK_MTU: u32 = 65520;
const TAP_TXQUEUELEN: u32 = 20000;
/// `IFF_VNET_HDR` in `/sys/class/net/*/tun_flags`.
const IFF_VNET_HDR: u32 = 0x4000;
/// A feature's state in `ethtool -k` output (`on`, `off`, `off [fixed]`), top level or
/// indented.
fn ethtool_feature(text: &str, name: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.trim_start()
            .strip_prefix(name)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

/// The echo server's address in S for either family, as the rr/crr client takes it.
fn echo_addr(v6: bool) -> String {
    if v6 {
        format!("[{SERVER6}]:{ECHO_PORT6}")
    } else {
        format!("{SERVER}:{ECHO_PORT}")
    }
}

/// The kernel backend's masquerade for the guest subnet.
fn nft_rules() -> String {
    format!(
        "table ip hostnet_bench {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr {SUBNET}/{PREFIX_LEN} oifname \"srv0\" masquerade
    }}
}}
"
    )
}

/// The kernel backend's NAT66 for the guest's ULA prefix.
fn nft6_rules() -> String {
    format!(
        "table ip6 hostnet_bench6 {{
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ip6 saddr {IPV6_PREFIX}/64 oifname \"srv0\" masquerade
    }}
}}
"
    )
}

/// A snapshot for [`World::busy_since`].
pub(super) struct Busy {
    threads: Vec<(u32, String, f64)>,
    machine: Option<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethtool_features_by_name_top_level_or_indented() {
        let text = "Features for eth0:\ntcp-segmentation-offload: on\n\ttx-tcp-segmentation: on\n\
                    \ttx-tcp-ecn-segmentation: off\n\ttx-tcp6-segmentation: off [fixed]\n";
        let f = |n| ethtool_feature(text, n);
        assert_eq!(f("tcp-segmentation-offload").as_deref(), Some("on"));
        assert_eq!(f("tx-tcp-segmentation").as_deref(), Some("on"));
        assert_eq!(f("tx-tcp6-segmentation").as_deref(), Some("off [fixed]"));
        assert_eq!(f("tx-tcp"), None);
        assert_eq!(f("rx-gro-list"), None);
    }

    #[test]
    fn echo_addresses_parse_as_the_client_takes_them() {
        for v6 in [false, true] {
            let a: std::net::SocketAddr = echo_addr(v6).parse().unwrap();
            assert_eq!(a.is_ipv6(), v6);
        }
        assert_eq!(echo_addr(true), "[2001:db8::2]:7778");
        assert!(nft6_rules().contains("ip6 saddr fd64::/64 oifname \"srv0\" masquerade"));
        assert_eq!(GUEST6.to_string(), "fd64::2");
    }
}
