//! The daemon on Linux: the TUN device, the listen loop (up to `--max-guests` frontends at
//! once, each on a thread of its own and a port of the one network), signals.

mod backend;
pub(crate) mod control;
pub(crate) mod device;
pub(crate) mod host_setup;
pub(crate) mod network;
pub(crate) mod proxy;
mod sandbox;

use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, anyhow};
use tracing::{error, info, warn};
use utun::{Ipv4Dest, Tun, TunBuilder};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::args::Args;
use backend::NetBackend;
pub(crate) use backend::follow_tun_queues;
use device::DeviceConfig;

/// Runs the daemon until SIGTERM/SIGINT (`Ok`), or until its TUN fails (deleted underneath:
/// an error; the current connection is closed first).
pub(crate) fn run(args: &Args) -> Result<()> {
    let log_reload = init_tracing(args.log_json);
    // The gateway's DNS upstream (bridge::dns: resolv.conf, systemd-resolved's upstreams
    // behind its stub); none usable: a warning, and the gateway answers REFUSED.
    let dns = match args.dns_upstream {
        Some(d) => bridge::DnsChoice::explicit(d),
        None => bridge::ResolverPaths::default().choose_upstream(),
    };
    dns.log();
    let dns_upstream = dns.upstream;
    // The address pair, chosen under this namespace's lock (bridge::reserve_pair) and held
    // until the TUN has it, so a second instance starting at once sees it.
    let (pair, used, pair_lock) = bridge::reserve_pair(args.tun_addr, args.external_addr)?;
    bridge::log_pair(&pair, &used);
    // With IPv6, its pair under the same lock (fd64:ffff::1/64 and ::2, else the next free).
    let pair6 = if args.ipv6 {
        let p = bridge::reserve_pair6()?;
        info!(tun6 = %p.tun, prefix_len = p.prefix_len, external6 = %p.external, "IPv6 address pair");
        Some(p)
    } else {
        None
    };
    let mut config = DeviceConfig {
        mac: args.mac,
        mtu: args.mtu,
        gateway: GATEWAY,
        external: pair.external,
        forwards: args.forwards.clone(),
        forwards6: args.forwards6.clone(),
        dns_upstream,
        offload: args.offload,
        egress: args.egress.clone(),
        ipv6: args.ipv6,
        external6: pair6.map_or(bridge::defaults::NAT_EXTERNAL_ADDR6, |p| p.external),
    };
    // Fail on a bad configuration before anything is created.
    config.device_core().context("invalid configuration")?;
    // Started as root with the sandbox on, it runs as nobody after set-up unless told otherwise
    // (passt does the same).
    let user = match &args.user {
        Some(u) => Some(u.as_str()),
        None if args.sandbox && nix::unistd::geteuid().is_root() => Some(sandbox::DEFAULT_USER),
        None => None,
    };
    let identity = user
        .map(|u| sandbox::resolve_identity(u, args.group.as_deref()))
        .transpose()
        .context("the user to run as after set-up (--user)")?;
    let socket_group = match &args.socket_group {
        Some(g) => Some(sandbox::resolve_group(g)?),
        None => identity.as_ref().map(|id| id.gid),
    };

    let tuns: Arc<[Tun]> = Arc::from(open_tun(args, pair, pair6)?);
    let tun = &tuns[0];
    // Under the pair lock, so a second instance starting at once sees this one's table.
    let host_setup = if args.host_setup {
        Some(host_setup::HostSetup::start(
            pair.external,
            pair6.map(|p| p.external),
            tun.name(),
            args.log_json,
        )?)
    } else {
        None
    };
    drop(pair_lock);
    // Offloads need the virtio-net header on the TUN; without it the device offers none.
    config.offload = tun.vnet_hdr_len() == bridge::VIRTIO_NET_HDR_LEN;
    // The TUN is opened non-blocking (`TunBuilder::nonblocking`); `prepare` is the host-link
    // contract's step and sets the same mode again. The worker must never block.
    for q in tuns.iter() {
        bridge::HostLink::prepare(q).context("making the TUN non-blocking")?;
    }
    let listener = SocketGuard::bind(&args.socket)?;
    sandbox::secure_socket(
        &args.socket,
        args.socket_mode,
        identity.as_ref().map(|id| id.uid),
        socket_group,
    )?;
    // The control socket: 0600, owned by the user the daemon runs as (root may always connect).
    // One the user did not name and that cannot be made (a path too long for `.ctl`) is a
    // warning: the daemon serves without it.
    let control_listener = match SocketGuard::bind(&args.control) {
        Ok(l) => Some(l),
        Err(e) if args.control_default => {
            warn!("no control socket: {e:#} (name one with --control)");
            None
        }
        Err(e) => return Err(e),
    };
    if control_listener.is_some() {
        sandbox::secure_socket(
            &args.control,
            0o600,
            identity.as_ref().map(|id| id.uid),
            identity.as_ref().map(|id| id.gid),
        )?;
    }
    let metrics_listener = args
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr)
                .with_context(|| format!("--metrics: listening on {addr}"))
        })
        .transpose()?;
    // One network for every connection: its NAT and leases outlive them.
    let mut shared = network::Shared::new(&config, args.max_guests)?;
    shared.net.set_guest_multicast(args.guest_multicast);
    shared.net.set_max_queue_pairs(args.queues);
    shared.set_tun_queues(tuns.len());
    // No port uses pairs beyond 0 yet: their TUN queues leave the kernel's steering.
    backend::follow_tun_queues(&mut shared, &tuns);
    let net: network::SharedNet = Arc::new(parking_lot::Mutex::new(shared));
    let control = Arc::new(control::Control::new(
        config.clone(),
        net.clone(),
        crate::args::FIRST_GUEST_ADDR,
        log_reload,
    ));
    if let Some(l) = &control_listener {
        control::spawn_control(
            l.listener.try_clone().context("the control socket")?,
            control.clone(),
        )
        .context("starting the control thread")?;
    }
    if let Some(l) = metrics_listener {
        info!(metrics = %l.local_addr()?, "serving Prometheus metrics over HTTP");
        control::spawn_metrics(l, control.clone()).context("starting the metrics thread")?;
    }
    let stop = Arc::new(Stop::new()?);
    let _signals = spawn_signal_thread(stop.clone())?;
    // Set-up is done: from here on the daemon only serves (see `sandbox`).
    if let Some(id) = &identity {
        sandbox::switch_user(id).with_context(|| format!("switching to user {}", id.user))?;
        info!(user = %id.user, uid = %id.uid, gid = %id.gid, "running as {}", id.user);
    }
    if nix::unistd::geteuid().is_root() {
        warn!("running as root after set-up: see --user and docs/SECURITY.md");
    }
    if args.sandbox {
        sandbox::lock_down(args.sandbox_selftest)?;
    } else {
        warn!("--no-sandbox: no no_new_privs, no seccomp filter");
        if args.sandbox_selftest {
            sandbox::selftest_without_sandbox();
        }
    }
    info!(
        offload = config.offload,
        "checksum/TSO offloads {}",
        if config.offload { "offered" } else { "off" }
    );

    info!(policy = %args.egress, "egress policy");
    info!(
        socket = %args.socket.display(),
        tun = tun.name(),
        mtu = args.mtu,
        queues = tuns.len(),
        dns_upstream = ?dns_upstream,
        forwards = args.forwards.len(),
        "listening"
    );
    let mut out = io::stdout().lock();
    // `external=` comes after the older fields, which keep their order for older parsers;
    // IPv6 adds `external6=` and `gateway6=` at the end.
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
        "ready socket={} tun={} gateway={GATEWAY} external={}{v6_fields}",
        args.socket.display(),
        tun.name(),
        pair.external
    )?;
    out.flush()?;
    drop(out);
    // Under systemd (Type=notify): ready once the socket accepts frontends.
    notify_service_manager(&sd_notify::NotifyState::Ready);

    let mut n = 0u64;
    // The connection threads (joined at the end) and how many of them still serve.
    let mut running: Vec<std::thread::JoinHandle<()>> = Vec::new();
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        running.retain(|t| !t.is_finished());
        let served = active.load(Ordering::SeqCst);
        let watch_tun = (served == 0).then_some(tun);
        let wake = stop.wait_for_connection(&listener.listener, watch_tun)?;
        running.retain(|t| !t.is_finished());
        if stop.host_lost.load(Ordering::SeqCst) {
            break;
        }
        match wake {
            Wake::Connection => {}
            Wake::Ended => continue,
            Wake::Stop => break,
            Wake::TunGone => {
                error!(
                    tun = tun.name(),
                    "the TUN {} failed (deleted underneath?)",
                    tun.name()
                );
                stop.host_lost.store(true, Ordering::SeqCst);
                break;
            }
        }
        n += 1;
        let frontend = match listener.listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("accepting a frontend failed: {e}");
                continue;
            }
        };
        let pid = match rustix::net::sockopt::socket_peercred(&frontend) {
            Ok(c) => {
                info!(
                    connection = n,
                    pid = c.pid.as_raw_nonzero().get(),
                    uid = c.uid.as_raw(),
                    gid = c.gid.as_raw(),
                    "frontend accepted"
                );
                Some(c.pid.as_raw_nonzero().get())
            }
            Err(e) => {
                warn!(connection = n, "frontend accepted; SO_PEERCRED failed: {e}");
                None
            }
        };
        let served = active.load(Ordering::SeqCst);
        if served >= args.max_guests {
            warn!(
                connection = n,
                pid,
                max_guests = args.max_guests,
                "frontend refused: {served} guests are served already (--max-guests {})",
                args.max_guests
            );
            drop(frontend);
            continue;
        }
        let (tuns, stop, control, net) = (tuns.clone(), stop.clone(), control.clone(), net.clone());
        active.fetch_add(1, Ordering::SeqCst);
        let done = active.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("conn-{n}"))
            .spawn(move || {
                let served = serve_one(&tuns, &net, frontend, &stop, &control);
                let host_lost = stop.host_lost.load(Ordering::SeqCst);
                match served {
                    Ok(()) if host_lost => info!(connection = n, "connection closed"),
                    Ok(()) => info!(
                        connection = n,
                        "frontend disconnected; waiting for the next one"
                    ),
                    Err(e) => warn!(connection = n, "connection closed: {e:#}"),
                }
                done.fetch_sub(1, Ordering::SeqCst);
                stop.connection_ended();
            });
        match spawned {
            Ok(t) => running.push(t),
            Err(e) => {
                active.fetch_sub(1, Ordering::SeqCst);
                warn!(connection = n, "starting a connection thread failed: {e}");
            }
        }
    }
    // Close every connection and wait for them.
    stop.close_all();
    for t in running {
        let _ = t.join();
    }
    info!("stopping");
    notify_service_manager(&sd_notify::NotifyState::Stopping);
    drop(listener); // unlinks the socket
    drop(control_listener);
    if let Some(h) = host_setup {
        h.finish();
    }
    if stop.host_lost.load(Ordering::SeqCst) {
        return Err(anyhow!(
            "the TUN {} failed (deleted underneath?): no frontend can be served without it",
            tun.name()
        ));
    }
    Ok(())
}

/// Serves one frontend connection until it disconnects, breaks the protocol, or the daemon stops.
///
/// The frontend talks to a [`proxy::Relay`], which talks to the vhost-user-backend daemon over a
/// private (abstract) unix socket.
pub(crate) fn serve_one(
    tuns: &Arc<[Tun]>,
    net: &network::SharedNet,
    frontend: UnixStream,
    stop: &Stop,
    control: &control::Control,
) -> Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let inner_name = format!(
        "hostnetd-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let inner_addr = SocketAddr::from_abstract_name(inner_name.as_bytes())?;
    let mut inner =
        Listener::from(UnixListener::bind_addr(&inner_addr).context("binding the inner socket")?);
    let to_daemon = UnixStream::connect_addr(&inner_addr).context("connecting the inner socket")?;
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let backend = Arc::new(NetBackend::new(
        net.clone(),
        tuns.clone(),
        mem.clone(),
        stop.stats_requested.clone(),
        stop.host_lost.clone(),
    )?);
    let mut daemon = VhostUserDaemon::new("hostnetd".to_owned(), backend.clone(), mem)
        .map_err(|e| anyhow!("creating the vhost-user daemon: {e}"))?;
    {
        // A worker per queue pair: pair i's watches TUN queue i, its timer, its resume eventfd
        // and its wait timer; pair 0's also the port's wake-up eventfd.
        let handlers = daemon.get_epoll_handlers();
        anyhow::ensure!(
            handlers.len() == tuns.len(),
            "the daemon has {} workers for {} queue pairs",
            handlers.len(),
            tuns.len()
        );
        let b = &backend;
        let ev = b.events();
        for (pair, (worker, tun)) in handlers.iter().zip(tuns.iter()).enumerate() {
            let (Some(timer), Some(resume)) = (b.timer_fd(pair), b.resume_fd(pair)) else {
                anyhow::bail!("no worker state for queue pair {pair}");
            };
            worker
                .register_listener(
                    tun.as_raw_fd(),
                    EventSet::IN | EventSet::EDGE_TRIGGERED,
                    ev.host,
                )
                .context("registering the TUN with the worker")?;
            worker
                .register_listener(timer, EventSet::IN, ev.timer)
                .context("registering the timer with the worker")?;
            worker
                .register_listener(resume, EventSet::IN, ev.resume)
                .context("registering the resume event with the worker")?;
            let wait = b
                .wait_fd(pair)
                .context("no worker state for the queue pair")?;
            worker
                .register_listener(wait, EventSet::IN, ev.wait)
                .context("registering the wait timer with the worker")?;
            if pair == 0 {
                worker
                    .register_listener(b.wake_fd(), EventSet::IN, ev.pending)
                    .context("registering the wake-up event with the worker")?;
            }
        }
    }
    daemon
        .start(&mut inner)
        .map_err(|e| anyhow!("accepting the relay: {e}"))?;
    drop(inner);
    let relay = proxy::Relay::spawn(frontend, to_daemon).context("starting the relay")?;
    let handle = daemon.shutdown_handle();
    backend.set_shutdown_handle(handle.clone());
    let slot = stop.add_connection(handle);
    control.connection_started();
    let (port, mac) = backend.port();
    info!(port = port.0, %mac, "frontend connected");
    let result = daemon.wait();
    stop.remove_connection(slot);
    relay.join();
    for worker in daemon.get_epoll_handlers() {
        worker.send_exit_event();
    }
    backend.detach();
    match result {
        Ok(())
        | Err(DaemonError::HandleRequest(
            VhostUserError::Disconnected | VhostUserError::PartialMessage,
        )) => Ok(()),
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// Opens the TUN, with `--queues` queues (`IFF_MULTI_QUEUE` when more than one): with
/// virtio-net headers for offloads (unless `--no-offload`); a kernel that refuses them gets a
/// plain TUN and no offloads.
fn open_tun(
    args: &Args,
    pair: bridge::AddrPair,
    pair6: Option<bridge::AddrPair6>,
) -> Result<Vec<Tun>> {
    let queues = usize::from(args.queues.max(1));
    let builder = || {
        let b = TunBuilder::new()
            .name(args.tun_name.clone())
            .mtu(u32::from(args.mtu))
            .ipv4(pair.tun, Ipv4Dest::Peer(pair.external))
            .nonblocking(true);
        match pair6 {
            Some(p) => b.ipv6(p.tun, p.prefix_len),
            None => b,
        }
    };
    let open = |b: TunBuilder| {
        if queues > 1 {
            b.open_queues(queues)
        } else {
            b.open().map(|t| vec![t])
        }
    };
    if args.offload {
        match open(builder().vnet_hdr(true)) {
            Ok(tuns) => return Ok(tuns),
            Err(e) => warn!(
                "a TUN with virtio-net headers could not be created ({e}); running without offloads"
            ),
        }
    }
    open(builder()).context("creating the TUN device")
}

/// The stop request (SIGTERM/SIGINT): wakes the listen loop and closes the current connection.
/// Also carries the stats request (SIGUSR1), which the connection's worker serves on its next tick,
/// and the news that the TUN failed, which stops the daemon with an error.
pub(crate) struct Stop {
    requested: AtomicBool,
    stats_requested: Arc<AtomicBool>,
    host_lost: Arc<AtomicBool>,
    /// Signalled on a stop request and when a connection ends.
    wake: EventFd,
    /// The connections being served, by slot.
    connections: Mutex<Vec<(u64, ShutdownHandle)>>,
    next_slot: AtomicU64,
}

impl std::fmt::Debug for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stop")
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

impl Stop {
    pub(crate) fn new() -> io::Result<Self> {
        Ok(Self {
            requested: AtomicBool::new(false),
            stats_requested: Arc::new(AtomicBool::new(false)),
            host_lost: Arc::new(AtomicBool::new(false)),
            wake: EventFd::new(EFD_NONBLOCK)?,
            connections: Mutex::new(Vec::new()),
            next_slot: AtomicU64::new(0),
        })
    }

    fn trigger(&self) {
        self.requested.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        self.close_all();
    }

    /// Closes every connection being served.
    fn close_all(&self) {
        for (_, h) in lock(&self.connections).iter() {
            h.shutdown();
        }
    }

    /// Whether a frontend is being served.
    fn has_connection(&self) -> bool {
        !lock(&self.connections).is_empty()
    }

    /// A connection is served (its handle closes it on a stop); returns its slot.
    fn add_connection(&self, handle: Option<ShutdownHandle>) -> u64 {
        let id = self.next_slot.fetch_add(1, Ordering::Relaxed);
        let Some(h) = handle else {
            return id;
        };
        // A stop requested while the connection was being set up.
        if self.requested.load(Ordering::SeqCst) {
            h.shutdown();
        }
        lock(&self.connections).push((id, h));
        id
    }

    fn remove_connection(&self, slot: u64) {
        lock(&self.connections).retain(|(id, _)| *id != slot);
    }

    /// A connection's thread ends: the listen loop looks (a free slot; a TUN that failed).
    fn connection_ended(&self) {
        let _ = self.wake.write(1);
    }

    /// Blocks until the listener has a connection, a stop was requested, or the TUN failed
    /// (deleted underneath: it polls as an error; its packets are not waited for here).
    fn wait_for_connection(&self, listener: &UnixListener, tun: Option<&Tun>) -> io::Result<Wake> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER_EVENT),
        )?;
        epoll.ctl(
            ControlOperation::Add,
            self.wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, WAKE_EVENT),
        )?;
        // A deleted TUN wakes its pollers as readable (the kernel's data-ready callback) and then
        // polls as an error. Edge-triggered: packets that arrive while no frontend is connected
        // cost one wake-up per burst and are left for the next connection. While frontends are
        // served (`tun` is `None`) its packets are the workers' and so is noticing its failure:
        // this thread would otherwise wake for every burst.
        if let Some(tun) = tun {
            epoll.ctl(
                ControlOperation::Add,
                tun.as_raw_fd(),
                EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, TUN_EVENT),
            )?;
        }
        let mut events = [EpollEvent::default(); 3];
        loop {
            if self.requested.load(Ordering::SeqCst) {
                return Ok(Wake::Stop);
            }
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if self.requested.load(Ordering::SeqCst) {
                return Ok(Wake::Stop);
            }
            if events.iter().take(n).any(|e| {
                e.data() == TUN_EVENT
                    && e.event_set()
                        .intersects(EventSet::ERROR | EventSet::HANG_UP)
            }) {
                return Ok(Wake::TunGone);
            }
            if events.iter().take(n).any(|e| e.data() == LISTENER_EVENT) {
                return Ok(Wake::Connection);
            }
            if events.iter().take(n).any(|e| e.data() == WAKE_EVENT) {
                let _ = self.wake.read();
                return Ok(Wake::Ended);
            }
        }
    }
}

/// Why [`Stop::wait_for_connection`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wake {
    /// A frontend is waiting to be accepted.
    Connection,
    /// SIGTERM or SIGINT.
    Stop,
    /// A connection ended.
    Ended,
    /// The TUN polls as an error (deleted underneath).
    TunGone,
}

/// The listening socket; its file is removed on drop.
#[derive(Debug)]
struct SocketGuard {
    listener: UnixListener,
    path: PathBuf,
}

impl SocketGuard {
    fn bind(path: &Path) -> Result<Self> {
        // A stale socket from an earlier run is replaced; any other file is not.
        if std::fs::symlink_metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) {
            let _ = std::fs::remove_file(path);
        }
        // Created 0600: nobody else can connect before `sandbox::secure_socket` sets its mode.
        let listener = sandbox::with_private_umask(|| UnixListener::bind(path))
            .with_context(|| format!("listening on {}", path.display()))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        // After a user switch the directory may not let us (then the next start replaces it).
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!("removing the socket file {}: {e}", self.path.display());
        }
    }
}

fn spawn_signal_thread(stop: Arc<Stop>) -> Result<std::thread::JoinHandle<()>> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])
        .context("installing signal handlers")?;
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGUSR1 {
                    if stop.has_connection() {
                        stop.stats_requested.store(true, Ordering::Relaxed);
                    } else {
                        info!("no frontend connected: no connection stats to log");
                    }
                    continue;
                }
                info!(signal = sig, "stop requested");
                stop.trigger();
                break;
            }
        })
        .context("spawning the signal thread")
}

/// Tells systemd (`$NOTIFY_SOCKET`, `Type=notify`) the daemon's state; nothing without it.
fn notify_service_manager(state: &sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(std::slice::from_ref(state)) {
        warn!("telling the service manager {state}: {e}");
    }
}

/// Logs to stderr, as text or (`json`) one JSON object per line, filtered by `RUST_LOG`
/// (default `info`); returns what changes the filter at runtime (the control socket's
/// `log-level`), `None` if a subscriber was installed already (tests).
pub(crate) fn init_tracing(json: bool) -> Option<control::LogReload> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, fmt, reload};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(fmt::layer().json().with_writer(io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(io::stderr))
            .try_init()
    };
    installed.ok()?;
    Some(Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("bad log filter {level:?}: {e}"))?;
        handle
            .reload(f)
            .map_err(|e| format!("changing the log filter: {e}"))
    }))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The guest's gateway (ARP, DHCP, ping and DNS are answered here).
pub(crate) const GATEWAY: Ipv4Addr = bridge::defaults::GATEWAY;
const LISTENER_EVENT: u64 = 0;
const WAKE_EVENT: u64 = 1;
const TUN_EVENT: u64 = 2;
