//! `hostnet-lab attach --vhost-user SOCKET`: the simulated guest as a vhost-user frontend
//! ([`crate::vhost_user::Attached`]) of a backend in another process; no bridge, NAT or TUN
//! here. With `--queues N` the guest drives N queue pairs from G's TAP with N queues (pair i
//! from queue i), hands the control queue to the backend and sets N pairs on it before the
//! ready line; SIGUSR2 switches between N pairs and 1.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::Context;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::AttachArgs;
use super::linux::open_netns;
use crate::guest::{GuestConfig, features};
use crate::vhost_user::Attached;

/// Runs until `stop` is set; `stats_requested` (SIGUSR1) prints the guest's counters,
/// `pairs_switch` (SIGUSR2, with several queue pairs) switches between N pairs and 1.
pub(super) fn run(
    args: &AttachArgs,
    socket: &Path,
    stop: &AtomicBool,
    stats_requested: &AtomicBool,
    pairs_switch: &AtomicBool,
) -> anyhow::Result<()> {
    // G must exist (Attached opens it again to create the TAP); H only has to exist: nothing
    // of ours lives there with a vhost-user backend.
    drop(open_netns(&args.guest_netns, "--guest-netns")?);
    if let Some(h) = &args.host_netns {
        drop(open_netns(h, "--host-netns")?);
    }
    let cfg = GuestConfig {
        offloads: args.offloads,
        queue_pairs: args.queues,
        ..GuestConfig::default()
    };
    let mut attached = Attached::start_with_mtu(socket, &args.guest_netns, cfg, args.mtu)
        .with_context(|| {
            format!(
                "attaching to the vhost-user backend at {}",
                socket.display()
            )
        })?;
    let device = attached.device();
    let (offered, acked) = (device.device_features(), device.acked_features());
    let protocol = device.protocol_features();
    let (fd, rings) = (device.socket_fd(), device.rings());
    tracing::info!(
        socket = %socket.display(),
        offered = format_args!("{offered:#x}"),
        features = format_args!("{acked:#x}"),
        names = %features::names(acked),
        offloads = %features::offload_names(acked),
        protocol = ?protocol,
        rings,
        queue_pairs = attached.queue_pairs(),
        "vhost-user backend negotiated"
    );

    // The backend hanging up (it exited, or dropped us) ends attach with an error.
    let epoll = Epoll::new().context("creating an epoll set")?;
    epoll
        .ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::READ_HANG_UP | EventSet::HANG_UP, 0),
        )
        .context("watching the vhost-user socket")?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "ready external=- tun=- gateway=-")
        .and_then(|()| out.flush())
        .context("writing the ready line")?;
    drop(out);
    let net = attached.net_config();
    tracing::info!(
        guest_netns = %args.guest_netns,
        mac = %net.mac_string(),
        mtu = net.mtu,
        queue_pairs = attached.max_queue_pairs(),
        "attached over vhost-user (driver threads guest-tx, guest-rx, per further pair \
         guest-tx<i>, guest-rx<i>)"
    );

    let mut failure = None;
    let mut events = [EpollEvent::default(); 1];
    while !stop.load(Ordering::Relaxed) {
        if stats_requested.swap(false, Ordering::Relaxed) {
            eprintln!("stats: {}", attached.stats_line());
        }
        if pairs_switch.swap(false, Ordering::Relaxed) && attached.max_queue_pairs() > 1 {
            let to = if attached.queue_pairs() > 1 {
                1
            } else {
                attached.max_queue_pairs()
            };
            if let Err(e) = attached.set_queue_pairs(to) {
                failure = Some(format!("switching to {to} queue pairs: {e:#}"));
                break;
            }
        }
        if attached.has_failed() {
            failure = Some("the simulated guest's driver stopped".to_owned());
            break;
        }
        match epoll.wait(POLL_MS, &mut events) {
            Ok(0) => {}
            Ok(_) => {
                failure = Some(format!(
                    "the vhost-user backend at {} closed the connection",
                    socket.display()
                ));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("waiting on the vhost-user socket"),
        }
    }
    let t = Instant::now();
    tracing::info!("shutting down");
    if failure.is_none() {
        // As a VMM stops the device: GET_VRING_BASE for each ring.
        for q in 0..attached.device().rings() {
            match attached.device().stop_ring(q) {
                Ok(base) => tracing::debug!(queue = q, base, "ring stopped"),
                Err(e) => tracing::warn!("{e:#}"),
            }
        }
    }
    let result = attached.stop();
    match &result {
        Ok(summary) => eprintln!("stats: {summary}"),
        Err(e) => eprintln!("stats: guest: {e:#}"),
    }
    tracing::info!(elapsed = ?t.elapsed(), "stopped");
    if let Some(f) = failure {
        return Err(match result {
            Err(e) => e.context(f),
            Ok(_) => anyhow::anyhow!(f),
        });
    }
    result.map(drop).context("simulated guest")
}

/// How often the main thread looks at the stop and stats flags (ms).
const POLL_MS: i32 = 50;
