//! The simulated guest as a vhost-user-net **frontend**: its driver ([`crate::guest`]) runs
//! here, and any vhost-user-net backend listening on a unix socket (hostnetd, passt's
//! vhost-user mode) is the device, in another process.
//!
//! What a VMM does, with the `vhost` crate's frontend side: `SET_OWNER`, feature and
//! protocol-feature negotiation (`CONFIG` for the MAC and MTU, `REPLY_ACK` when offered), the
//! guest memory as one file-backed region shared over the socket (`SET_MEM_TABLE`), then per
//! queue `SET_VRING_NUM`/`ADDR`/`BASE`, a call eventfd (the guest's interrupt line, see
//! [`Interrupts::line`](crate::guest::Interrupts::line)), a kick eventfd and
//! `SET_VRING_ENABLE`. Kicks are eventfd writes; interrupts wake the driver threads directly.
//!
//! With several queue pairs ([`GuestConfig::queue_pairs`], [`VhostUserDevice::connect_with_queue_pairs`])
//! the frontend also agrees on the `MQ` protocol feature, asks the backend's queue count
//! (`GET_QUEUE_NUM`), sets up every pair's rings and the control queue (`2N + 1` vrings, as
//! QEMU does with `queues=N`) and, unlike QEMU, hands the control queue to the backend: the
//! driver's `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` goes over the ring and the backend answers it
//! ([`VhostUserDevice::set_queue_pairs`]).
//!
//! [`VhostUserDevice::activate_hostile`] breaks the protocol on purpose instead (a [`Hostile`]
//! case: bad memory tables, rings outside memory, messages out of order), to check that a
//! backend refuses it and lives on.
//!
//! [`VhostUserDevice::activate_raw`] starts rings the caller writes itself in a guest memory
//! of its own ([`RawMemory`], [`RawRing`]): chains put straight into guest memory, a TX ring
//! kept full as fast as the backend takes it ([`RawRing::keep_full`]), single frames sent and
//! received by hand ([`RawQueuePair`]), with no driver threads.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use testbed::guest::{GuestConfig, SimGuest};
//! use testbed::vhost_user::{VhostUserDevice, shared_memory_file};
//! # let tap = Arc::new(std::os::unix::net::UnixDatagram::unbound()?);
//! let mut device = VhostUserDevice::connect("/tmp/hn.sock".as_ref())?;
//! let mut cfg = GuestConfig::default();
//! cfg.inline_rx_interrupt = false; // interrupts arrive on eventfds, from another process
//! let guest = SimGuest::new_in_file(cfg, device.device_features(), shared_memory_file()?)?;
//! let kick = device.activate(&guest)?;
//! let running = guest.start(tap, kick)?;
//! # Ok(()) }
//! ```

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, bail, ensure};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::guest::{ControlDriver, GuestConfig, Kick, NetConfig, Running, SimGuest, features};

mod hostile;
mod raw;
pub use hostile::{Answer, Hostile};
pub use raw::{
    DESC_F_WRITE, KeptFull, MAX_RAW_RING_SIZE, RawMemory, RawQueuePair, RawRing, RawRingLayout,
};

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the backend speaks protocol features (bit 30).
pub const PROTOCOL_FEATURES: u64 = 1 << 30;

/// A connection to a vhost-user-net backend, before and after its rings run.
pub struct VhostUserDevice {
    frontend: Frontend,
    device_features: u64,
    protocol: VhostUserProtocolFeatures,
    acked_features: u64,
    /// `GET_QUEUE_NUM`'s answer when the `MQ` protocol feature was agreed.
    queue_num: Option<u64>,
    /// Kick eventfds, indexed by queue (every ring started by [`Self::activate`]).
    kicks: Option<Arc<Vec<EventFd>>>,
    /// The control queue, handed to the backend (several queue pairs).
    control: Option<ControlRing>,
    /// The rings [`Self::activate_raw`] started (0 before, or after [`Self::activate`]).
    raw_rings: u16,
}

/// The control queue as the frontend drives it: the driver's side, the ring's interrupt line.
#[derive(Debug)]
struct ControlRing {
    driver: ControlDriver,
    call: EventFd,
}

impl std::fmt::Debug for VhostUserDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VhostUserDevice")
            .field(
                "device_features",
                &format_args!("{:#x}", self.device_features),
            )
            .field("protocol", &self.protocol)
            .field("queue_num", &self.queue_num)
            .field("active", &self.is_active())
            .finish_non_exhaustive()
    }
}

impl VhostUserDevice {
    /// Connects to the backend listening on `socket`, takes ownership (`SET_OWNER`), reads its
    /// features and, when it speaks them, agrees on protocol features (`CONFIG`, `REPLY_ACK`).
    ///
    /// # Errors
    /// The socket can't be reached or the backend answers out of protocol.
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        Self::connect_with_queue_pairs(socket, 1)
    }

    /// As [`VhostUserDevice::connect`] for a guest of `pairs` queue pairs: with more than
    /// one, also the `MQ` protocol feature (which the backend must offer) and the number of
    /// queues it serves (`GET_QUEUE_NUM`, at least `2 × pairs + 1`: the pairs and the control
    /// queue).
    ///
    /// # Errors
    /// As [`VhostUserDevice::connect`]; the backend offers no `MQ` protocol feature or too
    /// few queues.
    pub fn connect_with_queue_pairs(socket: &Path, pairs: u16) -> anyhow::Result<Self> {
        let mut frontend = Frontend::connect(socket, 2)
            .with_context(|| format!("connecting to the vhost-user socket {}", socket.display()))?;
        frontend.set_owner().context("SET_OWNER")?;
        let device_features = frontend.get_features().context("GET_FEATURES")?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if device_features & PROTOCOL_FEATURES != 0 {
            let offered = frontend
                .get_protocol_features()
                .context("GET_PROTOCOL_FEATURES")?;
            let mut wanted =
                VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::REPLY_ACK;
            if pairs > 1 {
                ensure!(
                    offered.contains(VhostUserProtocolFeatures::MQ),
                    "{pairs} queue pairs: the backend offers no MQ protocol feature \
                     (offered {offered:?})"
                );
                wanted |= VhostUserProtocolFeatures::MQ;
            }
            protocol = offered & wanted;
            frontend
                .set_protocol_features(protocol)
                .context("SET_PROTOCOL_FEATURES")?;
        } else {
            ensure!(
                pairs <= 1,
                "{pairs} queue pairs: the backend speaks no protocol features"
            );
        }
        let mut queue_num = None;
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let n = frontend.get_queue_num().context("GET_QUEUE_NUM")?;
            let need = 2 * u64::from(pairs) + 1;
            ensure!(
                n >= need,
                "the backend serves {n} queues: {pairs} queue pairs need {need}"
            );
            queue_num = Some(n);
        }
        Ok(Self {
            frontend,
            device_features,
            protocol,
            acked_features: 0,
            queue_num,
            kicks: None,
            control: None,
            raw_rings: 0,
        })
    }

    /// The queues the backend serves (`GET_QUEUE_NUM`) when the `MQ` protocol feature was
    /// agreed ([`VhostUserDevice::connect_with_queue_pairs`] with more than one pair).
    #[must_use]
    pub fn queue_num(&self) -> Option<u64> {
        self.queue_num
    }

    /// The virtio feature bits the backend offers (without `PROTOCOL_FEATURES`).
    #[must_use]
    pub fn device_features(&self) -> u64 {
        self.device_features & !PROTOCOL_FEATURES
    }

    /// The feature bits acknowledged with `SET_FEATURES` (0 before [`Self::activate`]),
    /// `PROTOCOL_FEATURES` included when the backend offered it.
    #[must_use]
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// The protocol features agreed with the backend (a subset of `CONFIG | REPLY_ACK`, and
    /// `MQ` with several queue pairs).
    #[must_use]
    pub fn protocol_features(&self) -> VhostUserProtocolFeatures {
        self.protocol
    }

    /// The connection's socket descriptor, to watch for the backend hanging up.
    #[must_use]
    pub fn socket_fd(&self) -> std::os::fd::RawFd {
        self.frontend.as_raw_fd()
    }

    /// The device's config space (MAC, status, MTU) when the backend serves `GET_CONFIG`.
    ///
    /// # Errors
    /// The backend refuses the request or answers out of protocol.
    pub fn net_config(&mut self) -> anyhow::Result<Option<NetConfig>> {
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(None);
        }
        let (_, space) = self
            .frontend
            .get_config(0, 12, VhostUserConfigFlags::WRITABLE, &[0u8; 12])
            .context("GET_CONFIG")?;
        Ok(NetConfig::parse(&space))
    }

    /// Acknowledges the guest's features, shares its memory and starts every ring of its
    /// queue pairs ([`SimGuest::queue_pairs`]: queues `2i` and `2i + 1`), and the control
    /// queue when it has one with several pairs; returns the doorbell to hand to
    /// [`SimGuest::start`] or [`SimGuest::start_pairs`]. Call once.
    ///
    /// # Errors
    /// The guest's memory is not one file-backed region (use [`SimGuest::new_in_file`]), the
    /// guest has several pairs without the `MQ` protocol feature agreed
    /// ([`VhostUserDevice::connect_with_queue_pairs`]), or the backend refuses a step.
    pub fn activate(&mut self, guest: &SimGuest) -> anyhow::Result<Kick> {
        ensure!(!self.is_active(), "the device is already active");
        let pairs = guest.queue_pairs();
        let control = guest.control_queue_index().filter(|_| pairs > 1);
        if pairs > 1 {
            ensure!(
                self.queue_num.is_some(),
                "{pairs} queue pairs without the MQ protocol feature (connect with the pairs)"
            );
            ensure!(
                control.is_some(),
                "{pairs} queue pairs without a control queue"
            );
        }
        self.ack_features(guest.acked_features())?;
        let region = memory_region(guest.memory())?;
        self.frontend
            .set_mem_table(&[region])
            .context("SET_MEM_TABLE")?;

        let rings = 2 * pairs + u16::from(control.is_some());
        let kicks = Arc::new(kick_eventfds(rings)?);
        let irq = guest.interrupts();
        let control_call = EventFd::new(EFD_NONBLOCK).context("creating an eventfd")?;
        for index in 0..rings {
            let q = guest.device_queue(index)?;
            let i = usize::from(index);
            let step = |what: &'static str| format!("{what} for queue {index}");
            self.frontend
                .set_vring_num(i, q.size())
                .with_context(|| step("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(i, &vring_config(&q, FRONTEND_VA))
                .with_context(|| step("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(i, 0)
                .with_context(|| step("SET_VRING_BASE"))?;
            let call = if Some(index) == control {
                &control_call
            } else {
                irq.line(index).context("no interrupt line")?
            };
            self.frontend
                .set_vring_call(i, call)
                .with_context(|| step("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(i, &kicks[i])
                .with_context(|| step("SET_VRING_KICK"))?;
            self.enable_ring(i)?;
        }
        if control.is_some() {
            self.control = Some(ControlRing {
                driver: guest.control_driver()?,
                call: control_call,
            });
        }
        self.kicks = Some(Arc::clone(&kicks));
        Ok(Arc::new(move |q: u16| {
            if let Some(k) = kicks.get(usize::from(q))
                && let Err(e) = k.write(1)
            {
                tracing::warn!(queue = q, "kick eventfd write failed: {e}");
            }
        }))
    }

    /// Sends `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET pairs` on the control queue (kicked), waits for
    /// the backend's answer (the control ring's interrupt, at most [`ACK_WAIT_MS`]) and
    /// returns the ack byte (`VIRTIO_NET_OK` 0, `VIRTIO_NET_ERR` 1). The caller changes
    /// which TAP queues carry the guest's flows (see [`Attached::set_queue_pairs`]).
    ///
    /// # Errors
    /// No control queue (one pair, or not active); the backend left the command unanswered
    /// within the wait, or returned it unanswered; guest memory errors.
    pub fn set_queue_pairs(&mut self, pairs: u16) -> anyhow::Result<u8> {
        let kicks = self.kicks.clone().context("the device is not active")?;
        let ctrl = self
            .control
            .as_mut()
            .context("no control queue (one queue pair)")?;
        ctrl.driver.post_queue_pairs(pairs)?;
        let index = ctrl.driver.queue_index();
        kicks
            .get(usize::from(index))
            .context("no kick eventfd for the control queue")?
            .write(1)
            .context("kicking the control queue")?;
        let epoll = Epoll::new().context("creating an epoll set")?;
        epoll
            .ctl(
                ControlOperation::Add,
                ctrl.call.as_raw_fd(),
                EpollEvent::new(EventSet::IN, 0),
            )
            .context("watching the control queue's interrupt")?;
        let mut events = [EpollEvent::default(); 1];
        for _ in 0..ACK_WAIT_MS / ACK_POLL_MS {
            if let Some(ack) = ctrl.driver.take_ack()? {
                return Ok(ack);
            }
            match epoll.wait(ACK_POLL_MS as i32, &mut events) {
                Ok(_) => {
                    let _ = ctrl.call.read();
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("waiting for the control queue"),
            }
        }
        if let Some(ack) = ctrl.driver.take_ack()? {
            return Ok(ack);
        }
        bail!("VQ_PAIRS_SET {pairs}: the backend did not answer within {ACK_WAIT_MS} ms")
    }

    /// The queues [`Self::activate`] started (0 before): every pair's and the control queue;
    /// or the rings [`Self::activate_raw`] started.
    #[must_use]
    pub fn rings(&self) -> u16 {
        self.kicks.as_ref().map_or(self.raw_rings, |k| {
            u16::try_from(k.len()).unwrap_or(u16::MAX)
        })
    }

    /// Whether [`Self::activate`] or [`Self::activate_raw`] ran.
    fn is_active(&self) -> bool {
        self.kicks.is_some() || self.raw_rings > 0
    }

    /// `SET_FEATURES` with `features` (the guest's) and `PROTOCOL_FEATURES` when offered.
    fn ack_features(&mut self, features: u64) -> anyhow::Result<()> {
        let acked = features | (self.device_features & PROTOCOL_FEATURES);
        self.frontend.set_features(acked).context("SET_FEATURES")?;
        self.acked_features = acked;
        Ok(())
    }

    /// `SET_VRING_ENABLE` for ring `i` when protocol features were agreed (without them a
    /// backend starts a ring once it has its kick eventfd).
    fn enable_ring(&mut self, i: usize) -> anyhow::Result<()> {
        if self.device_features & PROTOCOL_FEATURES != 0 {
            self.frontend
                .set_vring_enable(i, true)
                .with_context(|| format!("SET_VRING_ENABLE for queue {i}"))?;
        }
        Ok(())
    }

    /// Stops ring `index` as a VMM does before it tears the device down (`GET_VRING_BASE`),
    /// returning the backend's next available index.
    ///
    /// # Errors
    /// The backend does not answer.
    pub fn stop_ring(&mut self, index: u16) -> anyhow::Result<u32> {
        self.frontend
            .get_vring_base(usize::from(index))
            .with_context(|| format!("GET_VRING_BASE for queue {index}"))
    }
}

/// A fresh, unlinked file on `/dev/shm` for guest memory a backend maps (what QEMU's
/// `memory-backend-memfd` or `memory-backend-file,share=on` give).
///
/// # Errors
/// The file can't be created.
pub fn shared_memory_file() -> anyhow::Result<File> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "hostnet-guest-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let path = dir.join(name);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    Ok(file)
}

/// Guest memory `mem` as the one region of a memory table (the frontend's address
/// [`FRONTEND_VA`]).
fn memory_region(mem: &vm_memory::GuestMemoryMmap) -> anyhow::Result<VhostUserMemoryRegionInfo> {
    let mut regions = mem.iter();
    let (Some(region), None) = (regions.next(), regions.next()) else {
        bail!("guest memory must be one region");
    };
    let file = region
        .file_offset()
        .context("guest memory is not file-backed (use SimGuest::new_in_file)")?;
    Ok(VhostUserMemoryRegionInfo {
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: FRONTEND_VA,
        mmap_offset: file.start(),
        mmap_handle: file.file().as_raw_fd(),
    })
}

/// Queue `q`'s ring addresses in the frontend's address space, guest memory at `va`.
fn vring_config(q: &virtio_queue::Queue, va: u64) -> VringConfigData {
    VringConfigData {
        queue_max_size: q.size(),
        queue_size: q.size(),
        flags: 0,
        desc_table_addr: va + q.desc_table(),
        used_ring_addr: va + q.used_ring(),
        avail_ring_addr: va + q.avail_ring(),
        log_addr: None,
    }
}

/// One kick eventfd per queue.
fn kick_eventfds(rings: u16) -> anyhow::Result<Vec<EventFd>> {
    (0..rings)
        .map(|_| EventFd::new(EFD_NONBLOCK).context("creating a kick eventfd"))
        .collect()
}

/// The control queue's ack for a command carried out.
const VIRTIO_NET_OK: u8 = 0;
/// How long [`VhostUserDevice::set_queue_pairs`] waits for the backend's answer (ms).
pub const ACK_WAIT_MS: u32 = 5_000;
/// The wait's step: the ring is looked at after each (ms).
const ACK_POLL_MS: u32 = 20;

/// Where the frontend says guest memory sits in its address space. The backend only uses it
/// to translate the ring addresses, which are given in the same space; any value works.
const FRONTEND_VA: u64 = 0x7f00_0000_0000;

/// The simulated guest attached to a vhost-user-net backend: a TAP `eth0` in the guest
/// namespace (down, no address, the device's MAC and MTU), the driver threads, the connection.
/// Real programs in the guest namespace are its traffic, as with `hostnet-lab attach`.
///
/// With several queue pairs ([`GuestConfig::queue_pairs`]) the TAP has a queue per pair, pair
/// i drives TAP queue i with threads of its own, and the guest sets its pairs on the control
/// queue (`VQ_PAIRS_SET N`, answered by the backend) before [`Attached::start`] returns.
#[derive(Debug)]
pub struct Attached {
    running: Option<Running>,
    device: VhostUserDevice,
    net: NetConfig,
    /// The TAP's queues, pair i's at i.
    taps: Vec<Arc<utun::Tun>>,
    /// The pairs set on the control queue (1 without one).
    active: u16,
}

impl Attached {
    /// Connects to `socket`, negotiates, creates the TAP in `guest_netns` and starts the
    /// driver threads. The device must serve `GET_CONFIG` (its MAC and MTU name the TAP's).
    /// With several [`GuestConfig::queue_pairs`] the device must offer multiqueue (the
    /// `MQ` protocol feature, `VIRTIO_NET_F_MQ` and `VIRTIO_NET_F_CTRL_VQ`) and acknowledge
    /// `VQ_PAIRS_SET`; the guest memory grows to hold every pair.
    ///
    /// # Errors
    /// Any step of the connection, the TAP or the driver; the device refuses the pairs.
    pub fn start(socket: &Path, guest_netns: &str, cfg: GuestConfig) -> anyhow::Result<Self> {
        Self::start_inner(socket, guest_netns, cfg, None)
    }

    /// As [`Attached::start`] for any vhost-user-net backend, with the guest MTU `mtu`: a
    /// backend without a config space (passt's vhost-user mode serves no `GET_CONFIG`, as
    /// QEMU then picks the MAC itself) gets the TAP MAC [`bridge::defaults::GUEST_MAC`] and
    /// `mtu`; a backend that reports its MTU (`VIRTIO_NET_F_MTU`) must report `mtu`.
    ///
    /// # Errors
    /// As [`Attached::start`]; the backend reports another MTU.
    pub fn start_with_mtu(
        socket: &Path,
        guest_netns: &str,
        cfg: GuestConfig,
        mtu: u16,
    ) -> anyhow::Result<Self> {
        Self::start_inner(socket, guest_netns, cfg, Some(mtu))
    }

    fn start_inner(
        socket: &Path,
        guest_netns: &str,
        cfg: GuestConfig,
        mtu: Option<u16>,
    ) -> anyhow::Result<Self> {
        let ns = crate::attach::linux::open_netns(guest_netns, "guest namespace")?;
        let wanted = cfg.queue_pairs;
        let mut device = VhostUserDevice::connect_with_queue_pairs(socket, wanted)?;
        let offered = device.device_features();
        let net = match (device.net_config()?, mtu) {
            (None, None) => {
                bail!("the backend serves no config space (protocol feature CONFIG)")
            }
            (Some(net), None) => net,
            (config, Some(mtu)) => {
                let mut net = config.unwrap_or(NetConfig {
                    mac: bridge::defaults::GUEST_MAC.0,
                    status: 1,
                    mtu,
                });
                if offered & features::MAC == 0 {
                    net.mac = bridge::defaults::GUEST_MAC.0;
                }
                if offered & features::STATUS == 0 {
                    net.status = 1;
                }
                if offered & features::MTU == 0 {
                    net.mtu = mtu;
                }
                ensure!(
                    net.mtu == mtu,
                    "the backend reports MTU {}, asked for {mtu}",
                    net.mtu
                );
                net
            }
        };
        ensure!(net.link_up(), "the backend reports its link down");
        let mut cfg = GuestConfig {
            // The device is another process: its interrupts arrive on eventfds, never inline.
            inline_rx_interrupt: false,
            ..cfg
        };
        // Room for every pair's rings and buffers (SimGuest::new says when it is short).
        cfg.mem_size = cfg
            .mem_size
            .max(usize::from(wanted) * crate::attach::linux::PAIR_MEMORY);
        let guest = SimGuest::new_in_file(cfg, offered, shared_memory_file()?)?;
        let pairs = guest.queue_pairs();
        ensure!(
            pairs == wanted,
            "{wanted} queue pairs: the backend offers no VIRTIO_NET_F_MQ with \
             VIRTIO_NET_F_CTRL_VQ (offered {offered:#x})"
        );
        let taps: Vec<Arc<utun::Tun>> = crate::attach::linux::open_guest_tap(
            &ns,
            guest_netns,
            net.mtu,
            &guest,
            &net,
            usize::from(pairs),
        )?
        .into_iter()
        .map(Arc::new)
        .collect();
        let kick = device.activate(&guest)?;
        let running = guest.start_pairs(taps.clone(), kick)?;
        let mut attached = Self {
            running: Some(running),
            device,
            net,
            taps,
            active: 1,
        };
        if pairs > 1 {
            attached.send_queue_pairs(pairs)?;
        }
        Ok(attached)
    }

    /// The queue pairs in use: what the guest set on the control queue (1 without one).
    #[must_use]
    pub fn queue_pairs(&self) -> u16 {
        self.active
    }

    /// The queue pairs laid out ([`GuestConfig::queue_pairs`], as the TAP's queues).
    #[must_use]
    pub fn max_queue_pairs(&self) -> u16 {
        u16::try_from(self.taps.len()).unwrap_or(u16::MAX)
    }

    /// Sets `pairs` queue pairs in use (1 to [`Attached::max_queue_pairs`]) as a Linux guest
    /// does on `ethtool -L`: going down, the TAP queues of the pairs left are detached first
    /// (G's kernel sends every flow on the queues left; what they held is purged, as when a
    /// detached queue's packets go), then `VQ_PAIRS_SET`; going up, the queues are attached
    /// again first. The pairs' rings run on as they were.
    ///
    /// # Errors
    /// `pairs` is out of range; a TAP queue can't be detached or attached; the backend
    /// refuses the command or does not answer it.
    pub fn set_queue_pairs(&mut self, pairs: u16) -> anyhow::Result<()> {
        ensure!(
            (1..=self.max_queue_pairs()).contains(&pairs),
            "{pairs} queue pairs: 1 to {} are laid out",
            self.max_queue_pairs()
        );
        let from = self.active;
        // Detached from the top down, attached from the bottom up: the kernel gives a
        // detached queue's index to its last one (docs/PLATFORMS.md "Multi-queue").
        for p in (pairs..from).rev() {
            self.taps[usize::from(p)]
                .set_queue_enabled(false)
                .with_context(|| format!("detaching TAP queue {p}"))?;
        }
        for p in from..pairs {
            self.taps[usize::from(p)]
                .set_queue_enabled(true)
                .with_context(|| format!("attaching TAP queue {p}"))?;
        }
        self.send_queue_pairs(pairs)?;
        tracing::info!(from, to = pairs, "queue pairs set");
        Ok(())
    }

    /// `VQ_PAIRS_SET pairs` on the control queue; the backend must acknowledge it.
    fn send_queue_pairs(&mut self, pairs: u16) -> anyhow::Result<()> {
        let ack = self.device.set_queue_pairs(pairs)?;
        ensure!(
            ack == VIRTIO_NET_OK,
            "the backend refused VQ_PAIRS_SET {pairs} (ack {ack})"
        );
        self.active = pairs;
        Ok(())
    }

    /// What the device's config space said (MAC, status, MTU).
    #[must_use]
    pub fn net_config(&self) -> NetConfig {
        self.net
    }

    /// The connection, e.g. to send a VMM's stop messages.
    pub fn device(&mut self) -> &mut VhostUserDevice {
        &mut self.device
    }

    /// The driver's counters as one line (as [`Attached::stop`] returns them).
    #[must_use]
    pub fn stats_line(&self) -> String {
        self.running
            .as_ref()
            .map(Running::summary)
            .unwrap_or_default()
    }

    /// Whether a driver thread ended on its own (by error).
    #[must_use]
    pub fn has_failed(&self) -> bool {
        self.running.as_ref().is_some_and(Running::has_failed)
    }

    /// Stops the driver threads (the TAP goes with them), then closes the connection; returns
    /// the driver's counters as one line.
    ///
    /// # Errors
    /// A driver thread failed.
    pub fn stop(mut self) -> anyhow::Result<String> {
        let Some(running) = self.running.take() else {
            return Ok(String::new());
        };
        let summary = running.summary();
        running.stop()?;
        Ok(summary)
    }
}
