//! Linux-only extras: network namespaces, virtio-net offloads.
//!
//! TAP mode, multi-queue, `IFF_VNET_HDR` and creation inside another namespace are options
//! of [`TunBuilder`](crate::TunBuilder) (`tap`, `open_queues`, `vnet_hdr`/`offload`,
//! `netns`).

use std::io;

use crate::Tun;

pub use utun_sys::linux::{
    TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO, TUN_F_USO4, TUN_F_USO6,
};

/// Linux-only methods of [`Tun`].
impl Tun {
    /// The length of the virtio-net header in front of every packet: 12 with
    /// [`vnet_hdr`](crate::TunBuilder::vnet_hdr), else 0.
    pub fn vnet_hdr_len(&self) -> usize {
        self.device().vnet_hdr_len()
    }

    /// Whether this is a TAP device (Ethernet frames).
    pub fn is_tap(&self) -> bool {
        self.device().is_tap()
    }

    /// Changes the offloads (`TUNSETOFFLOAD`, `TUN_F_*` flags) of a `vnet_hdr` device.
    ///
    /// # Errors
    /// The ioctl's error (`EINVAL` without `vnet_hdr` or for unknown flags).
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        crate::sys::set_offload(std::os::fd::AsFd::as_fd(self), flags)
    }

    /// Takes this queue of a multi-queue device out of the kernel's steering (`false`) or
    /// puts it back (`true`), keeping the descriptor open: `TUNSETQUEUE` with
    /// `IFF_DETACH_QUEUE` / `IFF_ATTACH_QUEUE`. This is what a virtio-net device needs when
    /// the guest lowers and raises its queue pairs (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`).
    ///
    /// What the kernel does (read in `drivers/net/tun.c`, `tun_set_queue` and
    /// `__tun_detach`; tested on Linux 6.18 in `tests/linux.rs`, `multi_queue_*`, unless
    /// marked "read"):
    /// - **Detaching drops the packets queued on this queue** (`tun_queue_purge`): they are
    ///   lost, not moved to another queue. Read the queue empty first if they matter (what
    ///   arrives between that read and the detach is still lost).
    /// - **Detaching renumbers as closing does**: the kernel's last queue moves into this
    ///   queue's index (see [`TunBuilder::open_queues`](crate::TunBuilder::open_queues)) and
    ///   the kernel sends nothing more to this queue. Attaching appends it as the new last
    ///   queue (index = the number of attached queues): detaching and re-attaching queue 1
    ///   of 4 swaps the indices of queues 1 and 3. Detaching and re-attaching the last queue
    ///   restores every index: flows steered by hash land where they did before, and a
    ///   flow written on this queue before the detach (its steering entry is kept, until it
    ///   ages out 3 s after its last write) comes back here.
    /// - A detached queue can still be written: the packet enters the kernel (tested); its
    ///   flow is not recorded for steering (read). Reading it finds nothing (`WouldBlock` when
    ///   non-blocking).
    /// - Detaching the only attached queue is allowed: the interface stays, and the kernel
    ///   drops (counted in `tx_dropped`) what it sends to it until a queue is attached again.
    /// - Detaching a detached queue, attaching an attached one, and either call on a device
    ///   opened without multi-queue fail with `EINVAL`.
    ///
    /// # Errors
    /// The ioctl's error, as an `io::Error` carrying the OS error (`EINVAL` as above).
    pub fn set_queue_enabled(&self, enabled: bool) -> io::Result<()> {
        crate::sys::set_queue(std::os::fd::AsFd::as_fd(self), enabled)
    }
}

/// Network namespaces, so tests and tools can work inside one without `unsafe` of their own.
pub mod netns {
    use std::{
        fs::File,
        io,
        os::fd::{BorrowedFd, OwnedFd},
    };

    /// Opens the named network namespace `/run/netns/NAME` (as made by `ip netns add NAME`),
    /// falling back to `/var/run/netns/NAME`.
    ///
    /// # Errors
    /// `InvalidInput` for a name that is empty, `.`/`..` or contains `/`; the open error
    /// (usually `NotFound`) otherwise.
    pub fn open(name: &str) -> io::Result<OwnedFd> {
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains('/')
            || name.contains('\0')
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid network namespace name {name:?}"),
            ));
        }
        let first = File::open(format!("/run/netns/{name}"));
        match first {
            Ok(f) => Ok(f.into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                File::open(format!("/var/run/netns/{name}")).map(OwnedFd::from)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `f` on a scoped thread that first moves into the network namespace `ns`, and
    /// returns its result. Sockets made there stay in that namespace; files opened under
    /// `/proc/sys/net` there are that namespace's.
    ///
    /// # Errors
    /// The `setns` error (`EPERM` without `CAP_SYS_ADMIN`, `EINVAL` if `ns` is no network
    /// namespace). A panic in `f` is resumed on the caller's thread.
    pub fn run_in<R: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        crate::sys::enter_netns(ns, f)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bad_names_are_refused_and_missing_ones_not_found() {
            for bad in ["", ".", "..", "a/b", "../x"] {
                let e = open(bad).err().map(|e| e.kind());
                assert_eq!(e, Some(io::ErrorKind::InvalidInput), "{bad:?}");
            }
            let e = open("hostnet-surely-missing-namespace")
                .err()
                .map(|e| e.kind());
            assert_eq!(e, Some(io::ErrorKind::NotFound));
        }

        #[test]
        fn run_in_refuses_a_descriptor_that_is_no_namespace() -> io::Result<()> {
            let f = File::open("/dev/null")?;
            let r = run_in(std::os::fd::AsFd::as_fd(&f), || 1);
            assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EINVAL));
            Ok(())
        }
    }
}
