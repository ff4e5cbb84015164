//! [`TunBuilder`]: the options of a TUN device, validated once in `open`.

use std::net::{Ipv4Addr, Ipv6Addr};
#[cfg(target_os = "linux")]
use std::{
    io,
    os::fd::{AsFd, OwnedFd},
};

use crate::{Tun, error::OpenError, sys};

/// The other side of the IPv4 address given to [`TunBuilder::ipv4`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ipv4Dest {
    /// Point to point: the address of the peer (the host routes it into the TUN); the local
    /// address gets a /32 mask.
    Peer(Ipv4Addr),
    /// A subnet: the prefix length (0..=32) of the local address.
    Prefix(u8),
}

/// Options for opening a [`Tun`], ending in [`open`](Self::open).
///
/// Defaults: a name chosen by the OS, the OS's MTU, no addresses, interface **up**, blocking
/// descriptor; Linux: TUN (not TAP), one queue, no virtio-net header, current namespace.
///
/// ```no_run
/// use std::net::Ipv4Addr;
/// use utun::{Ipv4Dest, TunBuilder};
///
/// let tun = TunBuilder::new()
///     .mtu(1500)
///     .ipv4(Ipv4Addr::new(100, 64, 0, 1), Ipv4Dest::Peer(Ipv4Addr::new(100, 64, 0, 2)))
///     .open()?;
/// println!("opened {}", tun.name());
/// # Ok::<(), utun::OpenError>(())
/// ```
#[derive(Debug)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct TunBuilder {
    pub(crate) cfg: Config,
}

impl TunBuilder {
    /// A builder with the defaults above.
    pub fn new() -> Self {
        Self {
            cfg: Config {
                name: None,
                mtu: None,
                ipv4: None,
                ipv6: None,
                up: true,
                nonblocking: false,
                #[cfg(target_os = "linux")]
                linux: LinuxConfig::default(),
            },
        }
    }

    /// The interface name. Linux: up to 15 bytes, no `/`, `:` or whitespace (a `%d` is
    /// filled in by the kernel). macOS: `utunN`. Without it the OS picks a free name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.cfg.name = Some(name.into());
        self
    }

    /// The MTU (bytes of IP packet) to set on the interface.
    pub fn mtu(mut self, mtu: u32) -> Self {
        self.cfg.mtu = Some(mtu);
        self
    }

    /// The local IPv4 address with its peer (point to point) or prefix length.
    pub fn ipv4(mut self, addr: Ipv4Addr, dest: Ipv4Dest) -> Self {
        self.cfg.ipv4 = Some((addr, dest));
        self
    }

    /// A local IPv6 address with its prefix length (0..=128). Lifetimes are infinite.
    pub fn ipv6(mut self, addr: Ipv6Addr, prefix_len: u8) -> Self {
        self.cfg.ipv6 = Some((addr, prefix_len));
        self
    }

    /// Whether to bring the interface up (default `true`).
    pub fn up(mut self, up: bool) -> Self {
        self.cfg.up = up;
        self
    }

    /// Whether the descriptor is non-blocking (default `false`); see also
    /// [`Tun::set_nonblocking`].
    pub fn nonblocking(mut self, nonblocking: bool) -> Self {
        self.cfg.nonblocking = nonblocking;
        self
    }

    /// Creates the interface, configures it and returns the device.
    ///
    /// # Errors
    /// [`OpenError::NameTooLong`]/[`OpenError::InvalidName`] for a bad name,
    /// [`OpenError::InvalidConfig`] for out-of-range options,
    /// [`OpenError::PermissionDenied`] without the privilege (Linux: `CAP_NET_ADMIN`;
    /// macOS: root), [`OpenError::Os`] naming the failed step otherwise. Nothing is left
    /// behind on error: the interface goes away with its descriptor.
    pub fn open(self) -> Result<Tun, OpenError> {
        self.cfg.validate()?;
        let mut devices = sys::open(self.cfg, 1)?;
        match devices.pop() {
            Some(inner) => Ok(Tun::from_device(inner)),
            None => Err(OpenError::InvalidConfig("no queue was opened")),
        }
    }
}

#[cfg(target_os = "linux")]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
impl TunBuilder {
    /// TAP mode: an `IFF_TAP` device carrying Ethernet frames instead of IP packets. Send does
    /// no IP-version check; receive checks truncation only for IPv4/IPv6 frames.
    pub fn tap(mut self, tap: bool) -> Self {
        self.cfg.linux.tap = tap;
        self
    }

    /// Opens the interface with `IFF_MULTI_QUEUE` (implied by [`open_queues`](Self::open_queues)).
    pub fn multi_queue(mut self, multi_queue: bool) -> Self {
        self.cfg.linux.multi_queue = multi_queue;
        self
    }

    /// `IFF_VNET_HDR`: every packet read or written starts with a 12-byte
    /// `virtio_net_hdr_v1` (`TUNSETVNETHDRSZ` = 12). Needed for [`offload`](Self::offload).
    pub fn vnet_hdr(mut self, vnet_hdr: bool) -> Self {
        self.cfg.linux.vnet_hdr = vnet_hdr;
        self
    }

    /// `TUNSETOFFLOAD` with these `TUN_F_*` flags (e.g. `TUN_F_CSUM | TUN_F_TSO4`), so the
    /// kernel may hand over packets with partial checksums and GSO super-packets. Requires
    /// [`vnet_hdr`](Self::vnet_hdr).
    pub fn offload(mut self, flags: u32) -> Self {
        self.cfg.linux.offload = Some(flags);
        self
    }

    /// Creates and configures the device inside the network namespace `ns` (an fd of
    /// `/run/netns/NAME` or `/proc/PID/ns/net`, see [`linux::netns::open`](crate::linux::netns::open)).
    /// The work runs on a short-lived thread that enters `ns`; the returned descriptor works
    /// from any namespace. The fd is duplicated here; a failure to do so is reported by `open`.
    pub fn netns(mut self, ns: impl AsFd) -> Self {
        self.cfg.linux.netns = Some(ns.as_fd().try_clone_to_owned());
        self
    }

    /// Opens `queues` descriptors of one multi-queue interface (`IFF_MULTI_QUEUE`). The
    /// interface goes away when the last one is dropped.
    ///
    /// The `Vec` index is the kernel's queue index while all the descriptors are open.
    /// Dropping one moves the kernel's last queue into its index (the kernel has no call that
    /// reports a descriptor's index). [`Tun::set_queue_enabled`] takes a queue out of the
    /// kernel's steering and puts it back without closing it (it renumbers the same way).
    ///
    /// Which queue the kernel sends a packet to (verified on Linux 6.18, see
    /// `docs/PLATFORMS.md`): a flow written on queue i gets the kernel's packets of that flow
    /// on queue i, until it is written on another queue or goes 3 s without a write. A flow
    /// never written, or aged out, goes to a queue picked by its hash. An answer the kernel's
    /// own stack sends *during* a write (a SYN-ACK, RST or ICMP echo reply) is steered as
    /// before that write: for a new flow's first packet, by hash. ICMP between two addresses
    /// is one flow whatever its id. So every queue's reader must take whatever flow arrives.
    ///
    /// # Errors
    /// As [`open`](Self::open); [`OpenError::InvalidConfig`] if `queues` is 0.
    pub fn open_queues(mut self, queues: usize) -> Result<Vec<Tun>, OpenError> {
        if queues == 0 {
            return Err(OpenError::InvalidConfig(
                "open_queues needs at least one queue",
            ));
        }
        self.cfg.linux.multi_queue = true;
        self.cfg.validate()?;
        Ok(sys::open(self.cfg, queues)?
            .into_iter()
            .map(Tun::from_device)
            .collect())
    }
}

impl Default for TunBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The validated options, handed to the backend.
#[derive(Debug)]
pub(crate) struct Config {
    pub(crate) name: Option<String>,
    pub(crate) mtu: Option<u32>,
    pub(crate) ipv4: Option<(Ipv4Addr, Ipv4Dest)>,
    pub(crate) ipv6: Option<(Ipv6Addr, u8)>,
    pub(crate) up: bool,
    pub(crate) nonblocking: bool,
    #[cfg(target_os = "linux")]
    pub(crate) linux: LinuxConfig,
}

/// Linux-only options.
#[cfg(target_os = "linux")]
#[derive(Debug, Default)]
pub(crate) struct LinuxConfig {
    pub(crate) tap: bool,
    pub(crate) multi_queue: bool,
    pub(crate) vnet_hdr: bool,
    pub(crate) offload: Option<u32>,
    pub(crate) netns: Option<io::Result<OwnedFd>>,
}

impl Config {
    /// Checks the options that need no OS call.
    pub(crate) fn validate(&self) -> Result<(), OpenError> {
        if let Some((_, Ipv4Dest::Prefix(len))) = self.ipv4
            && len > 32
        {
            return Err(OpenError::InvalidConfig(
                "IPv4 prefix length is more than 32",
            ));
        }
        if let Some((_, len)) = self.ipv6
            && len > 128
        {
            return Err(OpenError::InvalidConfig(
                "IPv6 prefix length is more than 128",
            ));
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(OpenError::InvalidConfig("MTU must be within 68..=65535"));
        }
        if let Some((_, _)) = self.ipv6
            && self.mtu.is_some_and(|m| m < 1280)
        {
            return Err(OpenError::InvalidConfig(
                "IPv6 needs an MTU of at least 1280",
            ));
        }
        #[cfg(target_os = "linux")]
        if self.linux.offload.is_some() && !self.linux.vnet_hdr {
            return Err(OpenError::InvalidConfig("offload needs vnet_hdr(true)"));
        }
        Ok(())
    }
}

const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65535;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_up_and_blocking() {
        let b = TunBuilder::new();
        assert!(b.cfg.up);
        assert!(!b.cfg.nonblocking);
        assert!(b.cfg.validate().is_ok());
    }

    #[test]
    fn out_of_range_options_are_config_errors() {
        let bad = [
            TunBuilder::new().ipv4(Ipv4Addr::LOCALHOST, Ipv4Dest::Prefix(33)),
            TunBuilder::new().ipv6(Ipv6Addr::LOCALHOST, 129),
            TunBuilder::new().mtu(67),
            TunBuilder::new().mtu(65536),
            TunBuilder::new().mtu(1000).ipv6(Ipv6Addr::LOCALHOST, 64),
        ];
        for b in bad {
            assert!(
                matches!(b.cfg.validate(), Err(OpenError::InvalidConfig(_))),
                "{b:?}"
            );
        }
        let ok = TunBuilder::new()
            .mtu(1500)
            .ipv4(Ipv4Addr::new(10, 0, 0, 1), Ipv4Dest::Prefix(24))
            .ipv6(Ipv6Addr::LOCALHOST, 64);
        assert!(ok.cfg.validate().is_ok());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn offload_without_vnet_hdr_is_refused() {
        let b = TunBuilder::new().offload(1);
        assert!(matches!(b.cfg.validate(), Err(OpenError::InvalidConfig(_))));
        assert!(
            TunBuilder::new()
                .vnet_hdr(true)
                .offload(1)
                .cfg
                .validate()
                .is_ok()
        );
        assert!(matches!(
            TunBuilder::new().open_queues(0),
            Err(OpenError::InvalidConfig(_))
        ));
    }
}
