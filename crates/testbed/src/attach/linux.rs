//! The Linux runtime of `hostnet-lab attach`.

use std::io::{IsTerminal, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bridge::{DnsChoice, ResolverPaths};
use utun::linux::netns;
use utun::{Ipv4Dest, Tun};

use super::lab_bridge::{LabHandle, format_stats};
use super::lab_loop::{LabLoop, LoopThread};
use super::lab_network::LabNetwork;
use super::{AttachArgs, GATEWAY_ADDR, Threads};
use crate::guest::{GuestConfig, Kick, SimGuest, features};

pub(super) fn run(args: &AttachArgs) -> anyhow::Result<()> {
    init_tracing();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .with_context(|| format!("installing the handler for signal {sig}"))?;
    }
    // SIGUSR1: print the bridge's stats line now (as at shutdown) and go on.
    let stats_requested = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, Arc::clone(&stats_requested))
        .context("installing the handler for SIGUSR1")?;
    // SIGUSR2 (with --queues N): the guests switch between N queue pairs and one.
    let pairs_switch = Arc::new(AtomicBool::new(false));
    if args.queues > 1 {
        signal_hook::flag::register(signal_hook::consts::SIGUSR2, Arc::clone(&pairs_switch))
            .context("installing the handler for SIGUSR2")?;
    }
    if let Some(socket) = &args.vhost_user {
        return super::vhost::run(args, socket, &stop, &stats_requested, &pairs_switch);
    }
    let guest_ns = open_netns(&args.guest_netns, "--guest-netns")?;
    let host_ns = match &args.host_netns {
        Some(h) => Some(open_netns(h, "--host-netns")?),
        None => {
            refuse_root_namespace()?;
            None
        }
    };
    // The gateway's DNS upstream (bridge::dns: resolv.conf, systemd-resolved's upstreams
    // behind its stub); none usable: a warning, and the gateway answers REFUSED.
    let dns = match args.dns_upstream {
        Some(d) => DnsChoice::explicit(d),
        None => match &args.host_netns {
            Some(h) => ResolverPaths::for_netns(h),
            None => ResolverPaths::default(),
        }
        .choose_upstream(),
    };
    dns.log();
    tracing::info!(policy = %args.egress, "egress policy");

    // The address pair, chosen under the host namespace's lock (bridge::reserve_pair) and
    // held until the TUN has it, so a second instance starting at once sees it.
    // With IPv6, its pair too (fd64:ffff::1/64 and ::2, else the next free one), under the
    // same lock.
    let reserve = || {
        let (pair, used, lock) = bridge::reserve_pair(args.tun_addr, args.external_addr)?;
        let pair6 = if args.ipv6 {
            Some(bridge::reserve_pair6()?)
        } else {
            None
        };
        Ok::<_, bridge::PairError>((pair, used, lock, pair6))
    };
    let (pair, used, pair_lock, pair6) = match &host_ns {
        Some(h) => netns::run_in(h.as_fd(), reserve).context("entering the host namespace")?,
        None => reserve(),
    }?;
    bridge::log_pair(&pair, &used);
    if let Some(p6) = &pair6 {
        tracing::info!(tun6 = %p6.tun, prefix_len = p6.prefix_len, external6 = %p6.external, "IPv6 address pair");
    }

    let cfg = super::lab_bridge::LabBridge::config(
        args,
        dns.upstream,
        pair.external,
        pair6.map(|p| p.external),
    );
    let mut guest_cfg = GuestConfig {
        offloads: args.offloads,
        queue_pairs: args.queues,
        ..GuestConfig::default()
    };
    // Room for every pair's rings and buffers (SimGuest::new says when it is short).
    guest_cfg.mem_size = guest_cfg
        .mem_size
        .max(usize::from(args.queues) * PAIR_MEMORY);
    let prepared = if args.more_guest_netns.is_empty() && args.queues == 1 {
        let bridge = super::lab_bridge::LabBridge::new(cfg)?;
        // What the driver reads from the device's config space (MAC, MTU, STATUS negotiated).
        let net = bridge.net_config()?;
        check_config_space(&net, args.mtu)?;
        let guest = SimGuest::new(guest_cfg, bridge.device_features())?;
        log_guest(&guest);
        Prepared::One(bridge, net, guest)
    } else {
        Prepared::Network(prepare_network(args, cfg, guest_cfg)?)
    };

    // The host side: TUN in H (with virtio-net headers when offloading; the bridge sets its
    // TUNSETOFFLOAD), IPv4 forwarding in H only.
    let mut tb = Tun::builder()
        .name(args.tun_name.clone())
        .mtu(u32::from(args.mtu))
        .ipv4(pair.tun, Ipv4Dest::Peer(pair.external))
        .up(true)
        .nonblocking(true)
        .vnet_hdr(args.offloads);
    if let Some(p6) = &pair6 {
        tb = tb.ipv6(p6.tun, p6.prefix_len);
    }
    if let Some(h) = &host_ns {
        tb = tb.netns(h);
    }
    // A queue per queue pair (IFF_MULTI_QUEUE); pair i reads and writes queue i.
    let mut tuns = if args.queues > 1 {
        tb.open_queues(usize::from(args.queues))
    } else {
        tb.open().map(|t| vec![t])
    }
    .context("creating the TUN in the host namespace")?;
    let tun_name = tuns[0].name().to_owned();
    drop(pair_lock);
    enable_forwarding(host_ns.as_ref(), IP_FORWARD)?;
    if pair6.is_some() {
        enable_forwarding(host_ns.as_ref(), IPV6_FORWARDING)?;
    }

    let (mode, taps) = match prepared {
        Prepared::One(bridge, net, guest) => {
            let tun = tuns.remove(0);
            let tap = Arc::new(
                open_guest_tap(&guest_ns, &args.guest_netns, args.mtu, &guest, &net, 1)?.remove(0),
            );
            let mode = match args.threads {
                Threads::Pipeline => {
                    let handle = bridge.activate(&guest, tun)?;
                    let kick: Kick = handle.kicker();
                    let running = guest.start(Arc::clone(&tap), kick)?;
                    Mode::Pipeline(running, handle)
                }
                Threads::One | Threads::Pairs => {
                    let dp = bridge.into_core();
                    Mode::Loop(LabLoop::start(dp, guest, Arc::clone(&tap), tun)?)
                }
            };
            (mode, vec![tap])
        }
        Prepared::Network(p) => {
            let mut guests = Vec::with_capacity(p.guests.len());
            let mut taps = Vec::with_capacity(p.guests.len());
            let names = std::iter::once(&args.guest_netns).chain(&args.more_guest_netns);
            for ((port, net, guest), name) in p.guests.into_iter().zip(names) {
                let ns = if *name == args.guest_netns {
                    guest_ns
                        .try_clone()
                        .context("duplicating the namespace fd")?
                } else {
                    open_netns(name, "--guest-netns")?
                };
                let queues = usize::from(guest.queue_pairs());
                let tap: Vec<Arc<Tun>> = open_guest_tap(&ns, name, args.mtu, &guest, &net, queues)?
                    .into_iter()
                    .map(Arc::new)
                    .collect();
                taps.extend(tap.iter().map(Arc::clone));
                guests.push((port, guest, tap));
            }
            (
                Mode::Loop(LabNetwork::start(
                    p.network,
                    guests,
                    tuns,
                    args.threads == Threads::Pairs,
                )?),
                taps,
            )
        }
    };

    let mut out = std::io::stdout().lock();
    // IPv6 adds its two fields after the existing ones.
    let v6_fields = pair6
        .map(|p| {
            format!(
                " external6={} gateway6={}",
                p.external,
                bridge::defaults::IPV6_GATEWAY
            )
        })
        .unwrap_or_default();
    writeln!(
        out,
        "ready external={} tun={tun_name} gateway={GATEWAY_ADDR}{v6_fields}",
        pair.external
    )
    .and_then(|()| out.flush())
    .context("writing the ready line")?;
    drop(out);
    tracing::info!(tun = %tun_name, guest_netns = %args.guest_netns, threads = ?args.threads, "attached");

    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        let stats_now = stats_requested.swap(false, Ordering::Relaxed);
        match &mode {
            Mode::Pipeline(running, handle) => {
                if stats_now {
                    eprintln!("stats: {}", format_stats(&handle.stats()));
                }
                if running.has_failed() {
                    failure = Some("the simulated guest's driver stopped".to_owned());
                    break;
                }
                if let Some(e) = handle.failure() {
                    failure = Some(e);
                    break;
                }
            }
            Mode::Loop(lab) => {
                if stats_now {
                    lab.request_stats();
                }
                if pairs_switch.swap(false, Ordering::Relaxed) {
                    lab.request_pairs_switch();
                }
                if lab.has_failed() {
                    let which = if args.more_guest_netns.is_empty() && args.queues == 1 {
                        "lab-loop"
                    } else {
                        "lab-network"
                    };
                    failure = Some(format!("the {which} thread stopped"));
                    break;
                }
            }
        }
        std::thread::sleep(POLL);
    }
    let t = Instant::now();
    tracing::info!("shutting down");
    let (guest_result, bridge_stats) = match mode {
        Mode::Pipeline(running, handle) => {
            let guest_stats = running.stats().summary();
            let guest_result = running.stop();
            let bridge_stats = handle.shutdown();
            eprintln!("stats: {guest_stats}");
            (guest_result, bridge_stats)
        }
        Mode::Loop(lab) => finished(lab.stop()),
    };
    drop(taps);
    match &bridge_stats {
        Ok(s) => eprintln!("stats: {s}"),
        Err(e) => eprintln!("stats: bridge: {e:#}"),
    }
    tracing::info!(elapsed = ?t.elapsed(), "stopped");
    if let Some(f) = failure {
        return Err(match guest_result {
            Err(e) => e.context(f),
            Ok(()) => anyhow::anyhow!(f),
        });
    }
    guest_result.context("simulated guest")?;
    bridge_stats.map(drop)
}

/// The running attachment, per `--threads` and the number of guests.
enum Mode {
    Pipeline(crate::guest::Running, LabHandle),
    /// `lab-loop` (one guest, `--threads one`) or `lab-network` (several guests).
    Loop(LoopThread),
}

/// What a loop thread handed back: how it ended, and the bridge's stats line.
fn finished(
    f: anyhow::Result<super::lab_loop::Finished>,
) -> (anyhow::Result<()>, anyhow::Result<String>) {
    match f {
        Ok(f) => {
            eprintln!("stats: {}", f.guest);
            (f.result, Ok(format_stats(&f.bridge)))
        }
        Err(e) => {
            let msg = format!("{e:#}");
            (Err(e), Err(anyhow::anyhow!("{msg}")))
        }
    }
}

/// The bridge and its guest(s) before the TUN exists (made once per run).
#[allow(clippy::large_enum_variant)]
enum Prepared {
    One(
        super::lab_bridge::LabBridge,
        crate::guest::NetConfig,
        SimGuest,
    ),
    Network(NetworkGuests),
}

/// A network with a port per guest namespace, each with its simulated guest.
struct NetworkGuests {
    network: bridge::Network,
    guests: Vec<(bridge::PortId, crate::guest::NetConfig, SimGuest)>,
}

/// One network for every `--guest-netns`: ports with MACs 52:54:00:12:34:56, :57, … in the
/// order given (leases .2, .3, …), a simulated guest each.
fn prepare_network(
    args: &AttachArgs,
    cfg: bridge::BridgeConfig,
    guest_cfg: GuestConfig,
) -> anyhow::Result<NetworkGuests> {
    let count = 1 + args.more_guest_netns.len();
    let first = cfg.guest_mac.to_u64();
    let mut network =
        bridge::Network::new(cfg, super::MAX_GUESTS).context("configuring the network")?;
    // Ports offer multiqueue (MQ and the control queue) with --queues.
    network.set_max_queue_pairs(args.queues);
    let mut guests = Vec::with_capacity(count);
    for i in 0..count {
        let mac = bridge::MacAddr::from_u64(first + i as u64);
        let port = network
            .attach(mac)
            .with_context(|| format!("attaching guest port {i}"))?;
        let space = network
            .config_space(port)
            .context("the port's config space")?;
        let net = crate::guest::NetConfig::parse(&space).context("short config space")?;
        check_config_space(&net, args.mtu)?;
        let features = network
            .device_features(port)
            .context("the port's features")?;
        let guest = SimGuest::new(guest_cfg.clone(), features)?;
        log_guest(&guest);
        anyhow::ensure!(
            guest.queue_pairs() == args.queues,
            "the simulated guest laid out {} queue pairs, asked for {}",
            guest.queue_pairs(),
            args.queues
        );
        guests.push((port, net, guest));
    }
    Ok(NetworkGuests { network, guests })
}

fn check_config_space(net: &crate::guest::NetConfig, mtu: u16) -> anyhow::Result<()> {
    if net.mtu != mtu {
        bail!("the device reports MTU {}, asked for {mtu}", net.mtu);
    }
    if !net.link_up() {
        bail!("the device reports its link down");
    }
    Ok(())
}

fn log_guest(guest: &SimGuest) {
    tracing::info!(
        features = format_args!("{:#x}", guest.acked_features()),
        offloads = %features::offload_names(guest.acked_features()),
        "simulated guest negotiated"
    );
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

pub(crate) fn open_netns(name: &str, flag: &str) -> anyhow::Result<OwnedFd> {
    netns::open(name).with_context(|| format!("{flag} {name:?}: no such network namespace"))
}

/// Without `--host-netns` the current namespace is H: make sure it is not the root one. It is
/// accepted if it is a named namespace (`ip netns add`), or differs from PID 1's.
fn refuse_root_namespace() -> anyhow::Result<()> {
    let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
    let same = |m: &std::fs::Metadata| m.ino() == ours.ino() && m.dev() == ours.dev();
    for dir in ["/run/netns", "/var/run/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if std::fs::metadata(e.path()).is_ok_and(|m| same(&m)) {
                return Ok(());
            }
        }
    }
    match std::fs::metadata("/proc/1/ns/net") {
        Ok(init) if !same(&init) => Ok(()),
        _ => bail!(
            "refusing to use this (root or unnamed) network namespace as the host namespace: \
             pass --host-netns or start with `ip netns exec <H>`"
        ),
    }
}

/// Writes 1 to the forwarding sysctl `path` in H (a per-namespace sysctl).
fn enable_forwarding(host_ns: Option<&OwnedFd>, path: &str) -> anyhow::Result<()> {
    let write = || std::fs::write(path, "1");
    match host_ns {
        Some(h) => netns::run_in(h.as_fd(), write)
            .context("entering the host namespace")?
            .with_context(|| format!("enabling {path} in the host namespace")),
        None => write().with_context(|| format!("enabling {path} in the host namespace")),
    }
}

/// The guest side: TAP eth0 in G, down, no address, the device's MAC, the guest MTU; with
/// offloads it carries the virtio-net header and may hand over TSO super-frames. With
/// `queues` > 1 it has that many queues (`IFF_MULTI_QUEUE`, in queue order): G's kernel
/// spreads its flows over them as a guest's multiqueue driver spreads them over its TX
/// queues.
pub(crate) fn open_guest_tap(
    guest_ns: &OwnedFd,
    guest_netns: &str,
    mtu: u16,
    guest: &SimGuest,
    net: &crate::guest::NetConfig,
    queues: usize,
) -> anyhow::Result<Vec<Tun>> {
    let mut tap_builder = Tun::builder()
        .tap(true)
        .name(TAP_NAME)
        .mtu(u32::from(mtu))
        .up(false)
        .nonblocking(true)
        .netns(guest_ns);
    if guest.vnet_hdr() {
        tap_builder = tap_builder
            .vnet_hdr(true)
            .offload(guest.tap_offload_flags());
    }
    let taps = if queues > 1 {
        tap_builder.open_queues(queues)
    } else {
        tap_builder.open().map(|t| vec![t])
    }
    .context("creating the TAP eth0 in the guest namespace")?;
    // The driver's TX thread needs O_NONBLOCK on the TAP (say it again: cheap, and it does not
    // depend on how the builder applies its option).
    for tap in &taps {
        tap.set_nonblocking(true)
            .context("making the TAP non-blocking")?;
    }
    set_tap_mac(guest_netns, &net.mac_string())?;
    Ok(taps)
}

fn set_tap_mac(guest_netns: &str, mac: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args([
            "-n",
            guest_netns,
            "link",
            "set",
            "dev",
            TAP_NAME,
            "address",
            mac,
        ])
        .output()
        .context("running ip to set the TAP's MAC")?;
    if !out.status.success() {
        bail!(
            "setting the TAP's MAC to {mac}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

const TAP_NAME: &str = "eth0";
/// Guest memory per queue pair (its rings, TX slots and the largest RX buffers take 33 MiB).
pub(crate) const PAIR_MEMORY: usize = 34 << 20;
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// `net.ipv6.conf.all.forwarding` (per namespace).
const IPV6_FORWARDING: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const POLL: Duration = Duration::from_millis(50);
