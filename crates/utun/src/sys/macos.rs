//! macOS backend: the utun kernel control. A `PF_SYSTEM` datagram socket connected to
//! `com.apple.net.utun_control` is the interface; every packet on it carries a 4-byte
//! protocol-family header (added and stripped here, see `framing`). Addresses are set with
//! one `SIOCAIFADDR` (`ifaliasreq`), IPv6 with `SIOCAIFADDR_IN6` (`in6_aliasreq`, infinite
//! lifetimes), the MTU with `SIOCSIFMTU`, `IFF_UP` with `SIOCGIFFLAGS`/`SIOCSIFFLAGS`.
//!
//! Never run: type-checked and linted on Linux only (see docs/PLATFORMS.md).

use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd},
    time::Duration,
};

use libc::{c_char, c_int, c_short, c_void, socklen_t};
use utun_sys::macos as sys;

use crate::{
    Ipv4Dest,
    builder::Config,
    error::{OpenError, Truncated, open_error},
    framing::{self, AF_HEADER_LEN},
    name,
    sys::unix::{cvt, cvt_size, poll_readable, set_nonblocking, socket},
};

/// An open utun interface (its control socket).
#[derive(Debug)]
pub(crate) struct Device {
    fd: OwnedFd,
    name: String,
    mtu: u32,
}

/// Creates `utunN` (or the first free utun), configures it and returns it. macOS has no
/// multi-queue utun, so `queues` is always 1 here.
pub(crate) fn open(cfg: Config, _queues: usize) -> Result<Vec<Device>, OpenError> {
    let unit = match &cfg.name {
        Some(name) => name::parse_utun_unit(name)?,
        None => 0,
    };
    let fd = socket(libc::PF_SYSTEM, libc::SOCK_DGRAM, libc::SYSPROTO_CONTROL).map_err(|e| {
        OpenError::Os {
            step: "socket(PF_SYSTEM, SYSPROTO_CONTROL)",
            source: e,
        }
    })?;
    let mut info = sys::ctl_info::default();
    for (dst, src) in info.ctl_name.iter_mut().zip(sys::UTUN_CONTROL_NAME.bytes()) {
        *dst = src as c_char;
    }
    // SAFETY: CTLIOCGINFO reads and writes one `ctl_info`; `info` is initialised and lives
    // across the call; `fd` is an open PF_SYSTEM socket.
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), sys::CTLIOCGINFO, &mut info) }).map_err(|e| {
        OpenError::Os {
            step: "CTLIOCGINFO(com.apple.net.utun_control)",
            source: e,
        }
    })?;
    let addr = sys::sockaddr_ctl {
        sc_len: size_of::<sys::sockaddr_ctl>() as u8,
        sc_family: libc::AF_SYSTEM as u8,
        ss_sysaddr: libc::AF_SYS_CONTROL as u16,
        sc_id: info.ctl_id,
        sc_unit: unit,
        sc_reserved: [0; 5],
    };
    // SAFETY: `addr` is a fully initialised sockaddr_ctl that lives across the call, and the
    // length passed is its size; `fd` is an open PF_SYSTEM socket.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&raw const addr).cast::<libc::sockaddr>(),
            size_of::<sys::sockaddr_ctl>() as socklen_t,
        )
    })
    .map_err(|e| {
        open_error(
            "connect to the utun control (is the name in use?)",
            "creating a utun interface needs root (the utun kernel control is privileged)",
            e,
        )
    })?;
    let name = utun_name(fd.as_fd())?;
    raise_max_pending(fd.as_fd());
    if cfg.nonblocking {
        set_nonblocking(fd.as_fd(), true).map_err(|e| OpenError::Os {
            step: "fcntl(O_NONBLOCK)",
            source: e,
        })?;
    }
    let mtu = configure(&name, &cfg)?;
    Ok(vec![Device { fd, name, mtu }])
}

impl Device {
    pub(crate) fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, 0)
    }

    pub(crate) fn recv_nowait(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_flags(buf, libc::MSG_DONTWAIT)
    }

    pub(crate) fn send(&self, packet: &[u8]) -> io::Result<usize> {
        let header = framing::af_header(framing::ip_version(packet)?);
        let iov = [
            libc::iovec {
                iov_base: header.as_ptr() as *mut c_void,
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: packet.as_ptr() as *mut c_void,
                iov_len: packet.len(),
            },
        ];
        // SAFETY: two iovecs describing `header` and `packet`, both valid for reads for the
        // whole call (writev only reads through them); `fd` is our open utun socket.
        let n = cvt_size(unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), 2) })?;
        Ok(n.saturating_sub(AF_HEADER_LEN))
    }

    #[cfg(feature = "vm-memory")]
    pub(crate) fn send_gather<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &[u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        let header = framing::af_header(framing::ip_version(head)?);
        let n = super::unix::writev_gather(self.fd.as_fd(), &header, head, tail)?;
        Ok(n.saturating_sub(AF_HEADER_LEN))
    }

    #[cfg(feature = "vm-memory")]
    pub(crate) fn recv_scatter<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &mut [u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        if head.len() < framing::IPV6_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the head must hold the IP header",
            ));
        }
        let cap = head.len() + tail.iter().map(|s| s.len()).sum::<usize>();
        let mut header = [0u8; AF_HEADER_LEN];
        let mut flags = 0;
        let fd = self.fd.as_raw_fd();
        let n = super::unix::readv_scatter(&mut header, head, tail, |iov| {
            let mut msg = libc::msghdr {
                msg_name: std::ptr::null_mut(),
                msg_namelen: 0,
                msg_iov: iov.as_ptr().cast_mut(),
                msg_iovlen: c_int::try_from(iov.len()).unwrap_or(c_int::MAX),
                msg_control: std::ptr::null_mut(),
                msg_controllen: 0,
                msg_flags: 0,
            };
            // `msg` points at the iovecs `readv_scatter` hands over (the AF header, `head`,
            // the guest-memory slices under their guards); no name or control buffer.
            // SAFETY: those iovecs are valid for writes for the whole call and recvmsg only
            // writes through them; `fd` is our utun socket.
            let r = unsafe { libc::recvmsg(fd, &mut msg, 0) };
            flags = msg.msg_flags;
            r
        })?;
        finish_recv(n, flags, header, head, cap)
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn mtu(&self) -> u32 {
        self.mtu
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_fd(), on)
    }

    pub(crate) fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        poll_readable(self.fd.as_fd(), timeout)
    }

    /// One `recvmsg` into [header, buf]; `MSG_TRUNC` and the IP length detect truncation.
    fn recv_flags(&self, buf: &mut [u8], flags: c_int) -> io::Result<usize> {
        let mut header = [0u8; AF_HEADER_LEN];
        let mut iov = [
            libc::iovec {
                iov_base: header.as_mut_ptr().cast(),
                iov_len: header.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
        ];
        let mut msg = libc::msghdr {
            msg_name: std::ptr::null_mut(),
            msg_namelen: 0,
            msg_iov: iov.as_mut_ptr(),
            msg_iovlen: 2,
            msg_control: std::ptr::null_mut(),
            msg_controllen: 0,
            msg_flags: 0,
        };
        // SAFETY: `msg` points at two iovecs describing `header` and `buf`, both valid for
        // writes for the whole call; no name or control buffer; `fd` is our utun socket.
        let n = cvt_size(unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, flags) })?;
        finish_recv(n, msg.msg_flags, header, buf, buf.len())
    }
}

/// Checks one `recvmsg` of `n` bytes (`flags`: its `msg_flags`) into the AF `header` and
/// `cap` bytes of room that start with `buf`: `MSG_TRUNC` and the IP length detect
/// truncation. Returns the packet's length.
fn finish_recv(
    n: usize,
    flags: c_int,
    header: [u8; AF_HEADER_LEN],
    buf: &[u8],
    cap: usize,
) -> io::Result<usize> {
    let got = n.saturating_sub(AF_HEADER_LEN);
    let seen = buf.get(..got.min(buf.len())).unwrap_or_default();
    if flags & libc::MSG_TRUNC != 0 {
        return Err(Truncated {
            packet_len: framing::ip_total_len(seen),
            buf_len: cap,
        }
        .into());
    }
    if n < AF_HEADER_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "utun packet shorter than its header",
        ));
    }
    framing::parse_af_header(header)?;
    framing::check_ip_complete(seen, got, cap)?;
    Ok(got)
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Reads the assigned interface name (`UTUN_OPT_IFNAME`).
fn utun_name(fd: BorrowedFd<'_>) -> Result<String, OpenError> {
    let mut buf = [0 as c_char; sys::IFNAMSIZ];
    let mut len = buf.len() as socklen_t;
    // SAFETY: `buf` is valid for writes of `len` bytes and `len` is a valid socklen_t, both
    // living across the call; `fd` is a connected utun control socket.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SYSPROTO_CONTROL,
            sys::UTUN_OPT_IFNAME,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    })
    .map_err(|e| OpenError::Os {
        step: "getsockopt(UTUN_OPT_IFNAME)",
        source: e,
    })?;
    Ok(name::unpack(&buf))
}

/// Raises `UTUN_OPT_MAX_PENDING_PACKETS` so batches find packets queued; best effort (older
/// systems refuse it, which only costs throughput).
fn raise_max_pending(fd: BorrowedFd<'_>) {
    let value: u32 = MAX_PENDING_PACKETS;
    // SAFETY: the option value is one u32 that lives across the call, and its size is
    // passed; `fd` is a connected utun control socket.
    let r = cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SYSPROTO_CONTROL,
            sys::UTUN_OPT_MAX_PENDING_PACKETS,
            (&raw const value).cast(),
            size_of::<u32>() as socklen_t,
        )
    });
    if let Err(e) = r {
        tracing::debug!("UTUN_OPT_MAX_PENDING_PACKETS not raised: {e}");
    }
}

/// MTU, one `SIOCAIFADDR`, `IFF_UP`, `SIOCAIFADDR_IN6`; returns the MTU.
fn configure(name: &str, cfg: &Config) -> Result<u32, OpenError> {
    let sock = socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(|e| OpenError::Os {
        step: "socket(AF_INET)",
        source: e,
    })?;
    let ifname = name::pack(name)?;
    let ifreq = || sys::ifreq {
        ifr_name: ifname,
        ..Default::default()
    };
    let ioctl = |step: &'static str, request: utun_sys::Ioctl, req: &mut sys::ifreq| {
        // SAFETY: SIOCSIFMTU, SIOCGIFMTU, SIOCGIFFLAGS and SIOCSIFFLAGS read or write exactly
        // one `ifreq`; `req` is initialised and lives across the call; `sock` is open.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request, req as *mut sys::ifreq) })
            .map(drop)
            .map_err(|e| open_error(step, NEEDS_ROOT, e))
    };
    if let Some(mtu) = cfg.mtu {
        let mut req = ifreq();
        req.ifr_ifru.ifru_mtu = mtu as c_int;
        ioctl("SIOCSIFMTU", sys::SIOCSIFMTU, &mut req)?;
    }
    if let Some((addr, dest)) = cfg.ipv4 {
        // A utun is point to point: with a prefix, the local address is its own destination.
        let (peer, prefix) = match dest {
            Ipv4Dest::Peer(peer) => (peer, 32),
            Ipv4Dest::Prefix(len) => (addr, len),
        };
        let mut req = sys::ifaliasreq::default();
        req.ifra_name = ifname;
        req.ifra_addr = sockaddr_v4(addr);
        req.ifra_broadaddr = sockaddr_v4(peer);
        req.ifra_mask = sockaddr_v4(prefix_mask_v4(prefix));
        // SAFETY: SIOCAIFADDR reads one `ifaliasreq`; `req` is initialised and lives across
        // the call; `sock` is an open AF_INET socket.
        cvt(unsafe { libc::ioctl(sock.as_raw_fd(), sys::SIOCAIFADDR, &req) })
            .map_err(|e| open_error("SIOCAIFADDR", NEEDS_ROOT, e))?;
    }
    if cfg.up {
        let mut req = ifreq();
        ioctl("SIOCGIFFLAGS", sys::SIOCGIFFLAGS, &mut req)?;
        // SAFETY: SIOCGIFFLAGS just filled `ifru_flags` (the union was zeroed before).
        let flags = unsafe { req.ifr_ifru.ifru_flags };
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as c_short;
        ioctl("SIOCSIFFLAGS", sys::SIOCSIFFLAGS, &mut req)?;
    }
    if let Some((addr, prefix_len)) = cfg.ipv6 {
        add_ipv6(ifname, addr, prefix_len)?;
    }
    let mut req = ifreq();
    ioctl("SIOCGIFMTU", sys::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU just filled `ifru_mtu`.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    Ok(u32::try_from(mtu).unwrap_or(0))
}

/// `SIOCAIFADDR_IN6` with an `in6_aliasreq` whose lifetimes are infinite.
fn add_ipv6(
    ifname: [c_char; sys::IFNAMSIZ],
    addr: Ipv6Addr,
    prefix_len: u8,
) -> Result<(), OpenError> {
    let sock = socket(libc::AF_INET6, libc::SOCK_DGRAM, 0).map_err(|e| OpenError::Os {
        step: "socket(AF_INET6)",
        source: e,
    })?;
    let mut req = sys::in6_aliasreq::default();
    req.ifra_name = ifname;
    req.ifra_addr = sockaddr_v6(addr);
    req.ifra_prefixmask = sockaddr_v6(prefix_mask_v6(prefix_len));
    req.ifra_lifetime.ia6t_vltime = sys::ND6_INFINITE_LIFETIME;
    req.ifra_lifetime.ia6t_pltime = sys::ND6_INFINITE_LIFETIME;
    // SAFETY: SIOCAIFADDR_IN6 reads one `in6_aliasreq`; `req` is initialised and lives
    // across the call; `sock` is an open AF_INET6 socket.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), sys::SIOCAIFADDR_IN6, &req) })
        .map_err(|e| open_error("SIOCAIFADDR_IN6", NEEDS_ROOT, e))?;
    Ok(())
}

fn sockaddr_v4(addr: Ipv4Addr) -> libc::sockaddr {
    let mut sa_data = [0 as c_char; 14];
    for (dst, src) in sa_data.iter_mut().skip(2).zip(addr.octets()) {
        *dst = src as c_char;
    }
    libc::sockaddr {
        sa_len: size_of::<libc::sockaddr_in>() as u8,
        sa_family: libc::AF_INET as libc::sa_family_t,
        sa_data,
    }
}

fn sockaddr_v6(addr: Ipv6Addr) -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_len: size_of::<libc::sockaddr_in6>() as u8,
        sin6_family: libc::AF_INET6 as libc::sa_family_t,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr {
            s6_addr: addr.octets(),
        },
        sin6_scope_id: 0,
    }
}

fn prefix_mask_v4(len: u8) -> Ipv4Addr {
    let len = u32::from(len.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - len).unwrap_or(0))
}

fn prefix_mask_v6(len: u8) -> Ipv6Addr {
    let len = u32::from(len.min(128));
    Ipv6Addr::from(u128::MAX.checked_shl(128 - len).unwrap_or(0))
}

const MAX_PENDING_PACKETS: u32 = 256;
const NEEDS_ROOT: &str = "configuring a utun interface needs root";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_sockaddrs() {
        assert_eq!(prefix_mask_v4(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            prefix_mask_v6(64).segments(),
            [0xffff, 0xffff, 0xffff, 0xffff, 0, 0, 0, 0]
        );
        assert_eq!(prefix_mask_v6(0), Ipv6Addr::UNSPECIFIED);
        let sa = sockaddr_v4(Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(sa.sa_len, 16);
        assert_eq!(sa.sa_data[2..6], [100, 64, 0, 1]);
        assert_eq!(sockaddr_v6(Ipv6Addr::LOCALHOST).sin6_len, 28);
    }
}
