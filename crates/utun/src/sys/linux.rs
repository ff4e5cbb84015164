//! Linux backend: `/dev/net/tun` with `IFF_TUN|IFF_NO_PI` (or `IFF_TAP`), optionally
//! `IFF_MULTI_QUEUE` and `IFF_VNET_HDR`; addresses, MTU and flags set with ioctls on an
//! `AF_INET`/`AF_INET6` datagram socket (no `ip` command, no netlink).

use std::{
    fs::OpenOptions,
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    sync::atomic::{AtomicBool, Ordering},
};

use libc::{c_int, c_short};
use utun_sys::linux as sys;

use crate::{
    Ipv4Dest,
    builder::Config,
    error::{InterfaceGone, OpenError, open_error},
    framing, name,
    sys::unix::{cvt, cvt_size, socket},
};

/// One open queue of a Linux TUN/TAP interface.
#[derive(Debug)]
pub(crate) struct Device {
    fd: OwnedFd,
    name: String,
    mtu: u32,
    tap: bool,
    vnet_hdr_len: usize,
    nonblocking: AtomicBool,
    /// `preadv2(RWF_NOWAIT)` was refused once: use `poll` + `read` for non-blocking reads.
    no_rwf_nowait: AtomicBool,
}

/// Creates the interface (in `cfg.linux.netns` if given) with `queues` descriptors.
pub(crate) fn open(mut cfg: Config, queues: usize) -> Result<Vec<Device>, OpenError> {
    if let Some(name) = &cfg.name {
        name::validate_linux(name)?;
    }
    match cfg.linux.netns.take() {
        None => open_here(&cfg, queues),
        Some(Err(e)) => Err(OpenError::Os {
            step: "duplicating the netns descriptor",
            source: e,
        }),
        Some(Ok(ns)) => {
            let cfg = &cfg;
            match enter_netns(ns.as_fd(), || open_here(cfg, queues)) {
                Ok(result) => result,
                Err(e) => Err(open_error(
                    "setns(CLONE_NEWNET)",
                    "entering another network namespace needs CAP_SYS_ADMIN",
                    e,
                )),
            }
        }
    }
}

/// Runs `f` on a scoped thread that first moves into the network namespace `ns`.
///
/// # Errors
/// The error of `setns`. A panic in `f` is resumed on the calling thread.
pub(crate) fn enter_netns<R: Send>(
    ns: BorrowedFd<'_>,
    f: impl FnOnce() -> R + Send,
) -> io::Result<R> {
    let ns = ns.as_raw_fd();
    std::thread::scope(|s| {
        let handle = s.spawn(move || {
            // SAFETY: setns takes an fd and a flag; it changes only this (scoped, soon
            // finished) thread's network namespace. `ns` stays open: the caller's BorrowedFd
            // outlives the scope.
            cvt(unsafe { libc::setns(ns, libc::CLONE_NEWNET) })?;
            Ok(f())
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// `TUNSETOFFLOAD` on an open queue.
pub(crate) fn set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned long of TUN_F_* flags);
    // no memory is passed. `fd` is an open tun descriptor.
    cvt(unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            sys::TUNSETOFFLOAD,
            libc::c_ulong::from(flags),
        )
    })?;
    Ok(())
}

/// `TUNSETQUEUE` on an open queue: `IFF_ATTACH_QUEUE` if `attach`, else `IFF_DETACH_QUEUE`.
pub(crate) fn set_queue(fd: BorrowedFd<'_>, attach: bool) -> io::Result<()> {
    let flag = if attach {
        sys::IFF_ATTACH_QUEUE
    } else {
        sys::IFF_DETACH_QUEUE
    };
    let mut req = sys::ifreq_with_name([0; sys::IFNAMSIZ]);
    req.ifr_ifru.ifru_flags = flag as c_short;
    // SAFETY: TUNSETQUEUE reads one `ifreq` (only its flags matter); `req` is fully
    // initialised and lives across the call. `fd` is an open tun descriptor.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), sys::TUNSETQUEUE, &req) })?;
    Ok(())
}

impl Device {
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the whole call; the fd
        // is an open tun descriptor we own.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        self.finish_read(ret, buf)
    }

    pub(crate) fn recv_nowait(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.nonblocking.load(Ordering::Relaxed) {
            return self.recv(buf);
        }
        if !self.no_rwf_nowait.load(Ordering::Relaxed) {
            let iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            // SAFETY: one iovec describing `buf`, valid for writes for the whole call;
            // offset -1 = current position (the tun fd is not seekable anyway).
            let ret = unsafe { libc::preadv2(self.fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
            match cvt_size(ret) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL)) => {
                    self.no_rwf_nowait.store(true, Ordering::Relaxed);
                }
                _ => return self.finish_read(ret, buf),
            }
        }
        if super::unix::poll_readable(self.fd.as_fd(), Some(std::time::Duration::ZERO))? {
            self.recv(buf)
        } else {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    pub(crate) fn send(&self, packet: &[u8]) -> io::Result<usize> {
        if !self.tap {
            framing::ip_version(packet.get(self.vnet_hdr_len..).unwrap_or_default())?;
        }
        // SAFETY: `packet` is valid for reads of `packet.len()` bytes for the whole call;
        // the fd is an open tun descriptor we own.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), packet.as_ptr().cast(), packet.len()) };
        cvt_size(ret).map_err(gone)
    }

    #[cfg(feature = "vm-memory")]
    pub(crate) fn send_gather<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &[u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        if !self.tap {
            framing::ip_version(head.get(self.vnet_hdr_len..).unwrap_or_default())?;
        }
        super::unix::writev_gather(self.fd.as_fd(), &[], head, tail).map_err(gone)
    }

    #[cfg(feature = "vm-memory")]
    pub(crate) fn recv_scatter<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &mut [u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let link = if self.tap { framing::ETH_HEADER_LEN } else { 0 };
        if head.len() < self.vnet_hdr_len + link + framing::IPV6_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the head must hold the virtio-net, Ethernet and IP headers",
            ));
        }
        let cap = head.len() + tail.iter().map(|s| s.len()).sum::<usize>();
        let fd = self.fd.as_raw_fd();
        let got = super::unix::readv_scatter(&mut [], head, tail, |iov| {
            let count = c_int::try_from(iov.len()).unwrap_or(c_int::MAX);
            // SAFETY: `readv_scatter` hands over iovecs valid for writes for the whole
            // call (`head`, and the guest-memory slices under their guards); `fd` is an
            // open tun descriptor we own.
            unsafe { libc::readv(fd, iov.as_ptr(), count) }
        })
        .map_err(gone)?;
        self.check_read(got, head, cap)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.mtu
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        super::unix::set_nonblocking(self.fd.as_fd(), on)?;
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn wait_readable(&self, timeout: Option<std::time::Duration>) -> io::Result<bool> {
        super::unix::poll_readable(self.fd.as_fd(), timeout)
    }

    pub(crate) fn vnet_hdr_len(&self) -> usize {
        self.vnet_hdr_len
    }

    pub(crate) fn is_tap(&self) -> bool {
        self.tap
    }

    /// Checks a read's result: errors, then truncation (the kernel cuts silently).
    fn finish_read(&self, ret: isize, buf: &[u8]) -> io::Result<usize> {
        let got = cvt_size(ret).map_err(gone)?;
        self.check_read(got, buf, buf.len())
    }

    /// Truncation of a read of `got` bytes into `cap` bytes of room that start with `buf`
    /// (the whole buffer, or the head of a scattered read).
    fn check_read(&self, got: usize, buf: &[u8], cap: usize) -> io::Result<usize> {
        let head = buf.get(..got.min(buf.len())).unwrap_or_default();
        let skip = self.vnet_hdr_len;
        let (head, got_l3, buf_l3) = (
            head.get(skip..).unwrap_or_default(),
            got.saturating_sub(skip),
            cap.saturating_sub(skip),
        );
        let checked = if self.tap {
            framing::check_frame_complete(head, got_l3, buf_l3)
        } else {
            framing::check_ip_complete(head, got_l3, buf_l3)
        };
        checked.map_err(|e| rebase_truncation(e, skip))?;
        Ok(got)
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Opens and configures in the current thread's namespace.
fn open_here(cfg: &Config, queues: usize) -> Result<Vec<Device>, OpenError> {
    let mut flags = if cfg.linux.tap {
        sys::IFF_TAP
    } else {
        sys::IFF_TUN
    } | sys::IFF_NO_PI;
    if cfg.linux.multi_queue {
        flags |= sys::IFF_MULTI_QUEUE;
    }
    if cfg.linux.vnet_hdr {
        flags |= sys::IFF_VNET_HDR;
    }
    let mut name = cfg.name.clone().unwrap_or_default();
    let mut fds = Vec::with_capacity(queues);
    for _ in 0..queues {
        let fd = open_queue(&name, flags, cfg.nonblocking)?;
        name = fd.1;
        if cfg.linux.vnet_hdr {
            let len: c_int = VNET_HDR_LEN as c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer; `len` lives across
            // the call. The fd is the tun descriptor just opened.
            cvt(unsafe { libc::ioctl(fd.0.as_raw_fd(), sys::TUNSETVNETHDRSZ, &len) })
                .map_err(|e| open_error("TUNSETVNETHDRSZ", NEEDS_NET_ADMIN, e))?;
        }
        if let Some(off) = cfg.linux.offload {
            set_offload(fd.0.as_fd(), off)
                .map_err(|e| open_error("TUNSETOFFLOAD", NEEDS_NET_ADMIN, e))?;
        }
        fds.push(fd.0);
    }
    let mtu = configure(&name, cfg)?;
    let nonblocking = cfg.nonblocking;
    Ok(fds
        .into_iter()
        .map(|fd| Device {
            fd,
            name: name.clone(),
            mtu,
            tap: cfg.linux.tap,
            vnet_hdr_len: if cfg.linux.vnet_hdr { VNET_HDR_LEN } else { 0 },
            nonblocking: AtomicBool::new(nonblocking),
            no_rwf_nowait: AtomicBool::new(false),
        })
        .collect())
}

/// Opens `/dev/net/tun` and attaches it to `name` (empty: the kernel picks one). Returns the
/// fd and the interface's actual name.
fn open_queue(name: &str, flags: c_int, nonblocking: bool) -> Result<(OwnedFd, String), OpenError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | if nonblocking { libc::O_NONBLOCK } else { 0 })
        .open(sys::TUN_DEVICE_PATH)
        .map_err(|e| {
            open_error(
                "open /dev/net/tun",
                "opening /dev/net/tun needs read-write access to it (root or its group)",
                e,
            )
        })?;
    let fd = OwnedFd::from(file);
    let mut req = sys::ifreq_with_name(name::pack(name)?);
    req.ifr_ifru.ifru_flags = flags as c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`; `req` is fully initialised and lives
    // across the call. The fd is the /dev/net/tun descriptor just opened.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), sys::TUNSETIFF, &mut req) }).map_err(|e| {
        open_error(
            "TUNSETIFF",
            "creating a TUN/TAP interface needs CAP_NET_ADMIN",
            e,
        )
    })?;
    Ok((fd, name::unpack(&req.ifr_name)))
}

/// Sets MTU, IPv4, flags and IPv6 on `name`; returns the interface's MTU.
fn configure(name: &str, cfg: &Config) -> Result<u32, OpenError> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| OpenError::Os {
        step: "socket(AF_INET)",
        source: e,
    })?;
    let ifname = name::pack(name)?;
    let ioctl = |step: &'static str, request: utun_sys::Ioctl, req: &mut libc::ifreq| {
        // SAFETY: every request used here (SIOC[GS]IF*) reads or writes exactly one `ifreq`;
        // `req` is fully initialised and lives across the call; `sock` is an open socket.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut libc::ifreq) })
            .map(drop)
            .map_err(|e| open_error(step, NEEDS_NET_ADMIN, e))
    };
    if let Some(mtu) = cfg.mtu {
        let mut req = sys::ifreq_with_name(ifname);
        req.ifr_ifru.ifru_mtu = mtu as c_int;
        ioctl("SIOCSIFMTU", sys::SIOCSIFMTU, &mut req)?;
    }
    if let Some((addr, dest)) = cfg.ipv4 {
        let mut req = sys::ifreq_with_name(ifname);
        req.ifr_ifru.ifru_addr = sockaddr_v4(addr);
        ioctl("SIOCSIFADDR", sys::SIOCSIFADDR, &mut req)?;
        let mask = match dest {
            Ipv4Dest::Peer(peer) => {
                let mut req = sys::ifreq_with_name(ifname);
                req.ifr_ifru.ifru_dstaddr = sockaddr_v4(peer);
                ioctl("SIOCSIFDSTADDR", sys::SIOCSIFDSTADDR, &mut req)?;
                32
            }
            Ipv4Dest::Prefix(len) => len,
        };
        let mut req = sys::ifreq_with_name(ifname);
        req.ifr_ifru.ifru_netmask = sockaddr_v4(prefix_mask_v4(mask));
        ioctl("SIOCSIFNETMASK", sys::SIOCSIFNETMASK, &mut req)?;
    }
    if cfg.up {
        let mut req = sys::ifreq_with_name(ifname);
        ioctl("SIOCGIFFLAGS", sys::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS just filled `ifru_flags` (and the union was zeroed before).
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as c_short;
        ioctl("SIOCSIFFLAGS", sys::SIOCSIFFLAGS, &mut req)?;
    }
    if let Some((addr, prefix_len)) = cfg.ipv6 {
        let mut req = sys::ifreq_with_name(ifname);
        ioctl("SIOCGIFINDEX", sys::SIOCGIFINDEX, &mut req)?;
        // SAFETY: SIOCGIFINDEX just filled `ifru_ifindex`.
        let index = unsafe { req.ifr_ifru.ifru_ifindex };
        add_ipv6(index, addr, prefix_len)?;
    }
    let mut req = sys::ifreq_with_name(ifname);
    ioctl("SIOCGIFMTU", sys::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU just filled `ifru_mtu`.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// Adds an IPv6 address with `SIOCSIFADDR` on an `AF_INET6` socket (`in6_ifreq`).
fn add_ipv6(ifindex: c_int, addr: Ipv6Addr, prefix_len: u8) -> Result<(), OpenError> {
    let sock = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).map_err(|e| OpenError::Os {
        step: "socket(AF_INET6)",
        source: e,
    })?;
    let req = sys::in6_ifreq {
        ifr6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        ifr6_prefixlen: u32::from(prefix_len),
        ifr6_ifindex: ifindex,
    };
    // SAFETY: SIOCSIFADDR on an AF_INET6 socket reads one `in6_ifreq`; `req` is fully
    // initialised and lives across the call; `sock` is an open socket.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), sys::SIOCSIFADDR, &req) })
        .map_err(|e| open_error("SIOCSIFADDR (IPv6)", NEEDS_NET_ADMIN, e))?;
    Ok(())
}

/// A `sockaddr` holding an `AF_INET` address (port 0).
fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as libc::c_char; 14];
    for (dst, src) in sa_data.iter_mut().skip(2).zip(addr.octets()) {
        *dst = src as libc::c_char;
    }
    libc::sockaddr {
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

/// The netmask of a prefix length (clamped to 32).
fn prefix_mask_v4(len: u8) -> Ipv4Addr {
    let len = u32::from(len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0))
}

/// `EBADFD` means the interface is gone.
fn gone(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::EBADFD) {
        InterfaceGone.into()
    } else {
        e
    }
}

/// Adds the virtio-net header length back to a truncation report.
fn rebase_truncation(e: io::Error, skip: usize) -> io::Error {
    match e
        .get_ref()
        .and_then(|i| i.downcast_ref::<crate::Truncated>())
    {
        Some(t) if skip > 0 => crate::Truncated {
            packet_len: t.packet_len.map(|l| l + skip),
            buf_len: t.buf_len + skip,
        }
        .into(),
        _ => e,
    }
}

const VNET_HDR_LEN: usize = 12;
const NEEDS_NET_ADMIN: &str = "configuring an interface needs CAP_NET_ADMIN";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_masks() {
        assert_eq!(prefix_mask_v4(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_mask_v4(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask_v4(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_mask_v4(40), Ipv4Addr::new(255, 255, 255, 255));
    }

    #[test]
    fn sockaddr_packing_puts_the_address_after_the_port() {
        let sa = sockaddr_v4(Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(sa.sa_family, libc::AF_INET as libc::sa_family_t);
        let data: Vec<u8> = sa.sa_data.iter().map(|&c| c as u8).collect();
        assert_eq!(data, [0, 0, 100, 64, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn ifreq_packing_carries_name_and_flags() -> Result<(), OpenError> {
        let mut req = sys::ifreq_with_name(name::pack("hn0")?);
        req.ifr_ifru.ifru_flags = (sys::IFF_TUN | sys::IFF_NO_PI) as c_short;
        assert_eq!(name::unpack(&req.ifr_name), "hn0");
        // SAFETY: `ifru_flags` was just written.
        assert_eq!(unsafe { req.ifr_ifru.ifru_flags }, 0x1001);
        Ok(())
    }

    #[test]
    fn ebadfd_becomes_interface_gone() {
        let e = gone(io::Error::from_raw_os_error(libc::EBADFD));
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(e.get_ref().is_some_and(|i| i.is::<InterfaceGone>()));
        assert_eq!(
            gone(io::Error::from_raw_os_error(libc::EIO)).raw_os_error(),
            Some(libc::EIO)
        );
    }
}
