//! Entry points for the fuzz targets in `fuzz/`: not an API (hidden from the docs, no
//! stability promise).

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// The frontend side of the relay between a vhost-user frontend and the daemon
/// (`linux::proxy`), run on the calling thread: reads the frontend's messages (with their file
/// descriptors) from `front` until it closes or breaks the protocol, checks memory tables,
/// absorbs early `SET_VRING_ENABLE`s (answering on `replies`) and forwards the rest to `back`.
///
/// # Errors
///
/// What ended the relay: a malformed or oversized message, an unusable memory table, a socket
/// error. `Ok` when `front` closed between messages.
pub fn relay_frontend_messages(
    front: &UnixStream,
    back: &UnixStream,
    replies: UnixStream,
) -> io::Result<()> {
    crate::linux::proxy::frontend_to_backend(front, back, &Mutex::new(replies))
}

/// Answers control-socket request lines (`docs/control.md`) the way the daemon does without a
/// connected guest (stats, flows, forwards added and removed in the configuration the next
/// connection starts from, the log filter refused): one reply line per request line.
#[derive(Debug)]
pub struct ControlSocket(crate::linux::control::Control);

impl Default for ControlSocket {
    fn default() -> Self {
        let config = crate::linux::device::DeviceConfig {
            mac: bridge::defaults::GUEST_MAC,
            mtu: 1500,
            gateway: crate::linux::GATEWAY,
            external: bridge::defaults::NAT_EXTERNAL_ADDR,
            forwards: Vec::new(),
            forwards6: Vec::new(),
            dns_upstream: None,
            offload: true,
            egress: bridge::EgressPolicy::default(),
            ipv6: true,
            external6: bridge::defaults::NAT_EXTERNAL_ADDR6,
        };
        let net = crate::linux::network::Shared::new(&config, 1)
            .expect("the default configuration makes a network");
        ControlSocket(crate::linux::control::Control::new(
            config,
            std::sync::Arc::new(parking_lot::Mutex::new(net)),
            crate::args::FIRST_GUEST_ADDR,
            None,
        ))
    }
}

impl ControlSocket {
    /// The reply line (no newline) to one request line.
    pub fn handle(&self, line: &str) -> String {
        self.0.handle(line)
    }

    /// The port forwards in the configuration now, as `--forward` spells them.
    pub fn forwards(&self) -> Vec<String> {
        self.0.forward_list()
    }
}

/// hostnetd's whole connection path for one frontend: the relay, vhost-user-backend's request
/// handler and hostnetd's backend (the device core over a TUN), as the daemon serves a
/// connection, without the sandbox.
pub struct Backend {
    net: crate::linux::network::SharedNet,
    tun: std::sync::Arc<[utun::Tun]>,
    stop: crate::linux::Stop,
    control: crate::linux::control::Control,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("tun", &self.tun[0].name())
            .finish_non_exhaustive()
    }
}

impl Backend {
    /// Moves the calling thread into a network namespace of its own (threads it starts later
    /// follow it) and creates the TUN there (100.64.0.1, peer 100.64.0.2, offloads when the
    /// kernel has them). Needs CAP_SYS_ADMIN and CAP_NET_ADMIN: run as root.
    ///
    /// # Errors
    ///
    /// The namespace or the TUN could not be made.
    pub fn new() -> anyhow::Result<Self> {
        Self::with_queues(1)
    }

    /// As [`Backend::new`] with `queues` queue pairs (`hostnetd --queues`, 1 to 4): with more
    /// than one, multiqueue with the control queue, a worker per pair and a TUN with as many
    /// queues.
    ///
    /// # Errors
    ///
    /// As [`Backend::new`]; `queues` out of range.
    pub fn with_queues(queues: u16) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=crate::args::MAX_QUEUES).contains(&queues),
            "{queues} queue pairs: 1 to {} are possible",
            crate::args::MAX_QUEUES
        );
        use anyhow::Context;
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .context("a network namespace of its own (unshare: needs root)")?;
        let pair = bridge::AddrPair {
            tun: std::net::Ipv4Addr::new(100, 64, 0, 1),
            external: std::net::Ipv4Addr::new(100, 64, 0, 2),
        };
        let builder = || {
            utun::TunBuilder::new()
                .name("hnfuzz%d")
                .ipv4(pair.tun, utun::Ipv4Dest::Peer(pair.external))
                .nonblocking(true)
        };
        let n = usize::from(queues);
        let open = |b: utun::TunBuilder| {
            if n > 1 {
                b.open_queues(n)
            } else {
                b.open().map(|t| vec![t])
            }
        };
        let tuns = open(builder().vnet_hdr(true))
            .or_else(|_| open(builder()))
            .context("creating the TUN")?;
        let tun = &tuns[0];
        let config = crate::linux::device::DeviceConfig {
            mac: bridge::defaults::GUEST_MAC,
            mtu: 1500,
            gateway: crate::linux::GATEWAY,
            external: pair.external,
            forwards: Vec::new(),
            forwards6: Vec::new(),
            dns_upstream: None,
            offload: tun.vnet_hdr_len() == bridge::VIRTIO_NET_HDR_LEN,
            egress: bridge::EgressPolicy::default(),
            ipv6: true,
            external6: bridge::defaults::NAT_EXTERNAL_ADDR6,
        };
        let mut shared = crate::linux::network::Shared::new(&config, 1)?;
        shared.net.set_max_queue_pairs(queues);
        shared.set_tun_queues(tuns.len());
        crate::linux::follow_tun_queues(&mut shared, &tuns);
        let net = std::sync::Arc::new(parking_lot::Mutex::new(shared));
        Ok(Self {
            control: crate::linux::control::Control::new(
                config,
                net.clone(),
                crate::args::FIRST_GUEST_ADDR,
                None,
            ),
            net,
            tun: std::sync::Arc::from(tuns),
            stop: crate::linux::Stop::new()?,
        })
    }

    /// Serves `frontend` until it closes or breaks the protocol, as hostnetd serves a connection.
    ///
    /// # Errors
    ///
    /// What ended the connection, if it was not the frontend closing.
    pub fn serve(&self, frontend: UnixStream) -> anyhow::Result<()> {
        crate::linux::serve_one(&self.tun, &self.net, frontend, &self.stop, &self.control)
    }
}
