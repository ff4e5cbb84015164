//! Header: `net/if_utun.h`, `sys/kern_control.h`, `sys/sockio.h`, `net/if.h`,
//! `netinet6/in6_var.h`, `netinet6/nd6.h`
//!
//! <https://github.com/apple-oss-distributions/xnu/blob/main/bsd/net/if_utun.h>
//! <https://github.com/apple-oss-distributions/xnu/blob/main/bsd/sys/kern_control.h>
//! <https://github.com/apple-oss-distributions/xnu/blob/main/bsd/sys/sockio.h>
//! <https://github.com/apple-oss-distributions/xnu/blob/main/bsd/netinet6/in6_var.h>
//!
//! A utun interface is created by connecting a `PF_SYSTEM`/`SOCK_DGRAM`/`SYSPROTO_CONTROL`
//! socket to the kernel control [`UTUN_CONTROL_NAME`] (its id found with [`CTLIOCGINFO`]),
//! with `sc_unit = N + 1` for `utunN` or 0 for the first free one. Every packet on that socket
//! starts with a 4-byte protocol family in network byte order (`AF_INET` or `AF_INET6`).

use core::mem::size_of;

use crate::ioctl::{Ioctl, iow, iowr};

// What libc already declares.
pub use libc::{
    AF_SYS_CONTROL, AF_SYSTEM, IFNAMSIZ, IN6_IFF_NODAD, MAX_KCTL_NAME, PF_SYSTEM, SYSPROTO_CONTROL,
    UTUN_OPT_FLAGS, UTUN_OPT_IFNAME, ctl_info, ifaliasreq, ifreq, in6_addrlifetime, in6_aliasreq,
    in6_ifreq, sockaddr_ctl,
};

/// The name of the utun kernel control (`UTUN_CONTROL_NAME`).
pub const UTUN_CONTROL_NAME: &str = "com.apple.net.utun_control";
/// `UTUN_OPT_MAX_PENDING_PACKETS`: socket option (level `SYSPROTO_CONTROL`), `u32`, how many
/// packets the kernel queues towards the reader before dropping.
pub const UTUN_OPT_MAX_PENDING_PACKETS: libc::c_int = 16;
/// `ND6_INFINITE_LIFETIME` (netinet6/nd6.h): a lifetime that never expires.
pub const ND6_INFINITE_LIFETIME: u32 = 0xffff_ffff;
/// The length of the protocol-family header in front of every utun packet.
pub const UTUN_AF_HEADER_LEN: usize = 4;

/// `CTLIOCGINFO`: `_IOWR('N', 3, struct ctl_info)`; look up a kernel control id by name.
pub const CTLIOCGINFO: Ioctl = iowr::<ctl_info>(b'N', 3);
/// `SIOCSIFFLAGS`: `_IOW('i', 16, struct ifreq)`.
pub const SIOCSIFFLAGS: Ioctl = iow::<ifreq>(b'i', 16);
/// `SIOCGIFFLAGS`: `_IOWR('i', 17, struct ifreq)`.
pub const SIOCGIFFLAGS: Ioctl = iowr::<ifreq>(b'i', 17);
/// `SIOCAIFADDR`: `_IOW('i', 26, struct ifaliasreq)`; add an IPv4 address with its
/// destination (point to point) or broadcast address and mask, in one call.
pub const SIOCAIFADDR: Ioctl = iow::<ifaliasreq>(b'i', 26);
/// `SIOCGIFMTU`: `_IOWR('i', 51, struct ifreq)`.
pub const SIOCGIFMTU: Ioctl = iowr::<ifreq>(b'i', 51);
/// `SIOCSIFMTU`: `_IOW('i', 52, struct ifreq)`.
pub const SIOCSIFMTU: Ioctl = iow::<ifreq>(b'i', 52);
/// `SIOCDIFADDR_IN6`: `_IOW('i', 25, struct in6_ifreq)`.
pub const SIOCDIFADDR_IN6: Ioctl = iow::<in6_ifreq>(b'i', 25);
/// `SIOCAIFADDR_IN6`: `_IOW('i', 26, struct in6_aliasreq)`; add an IPv6 address.
pub const SIOCAIFADDR_IN6: Ioctl = iow::<in6_aliasreq>(b'i', 26);

const _: () = assert!(size_of::<ctl_info>() == 100);
const _: () = assert!(size_of::<sockaddr_ctl>() == 32);
const _: () = assert!(size_of::<ifreq>() == 32);
const _: () = assert!(size_of::<ifaliasreq>() == 64);
const _: () = assert!(size_of::<in6_addrlifetime>() == 24);
const _: () = assert!(size_of::<in6_aliasreq>() == 128);
const _: () = assert!(size_of::<in6_ifreq>() == 288);
const _: () = assert!(IFNAMSIZ == 16);
const _: () = assert!(MAX_KCTL_NAME == 96);

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // `Ioctl` is c_int or c_ulong depending on the libc
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_headers() {
        assert_eq!(CTLIOCGINFO as u64, 0xc064_4e03);
        assert_eq!(SIOCSIFFLAGS as u64, 0x8020_6910);
        assert_eq!(SIOCGIFFLAGS as u64, 0xc020_6911);
        assert_eq!(SIOCAIFADDR as u64, 0x8040_691a);
        assert_eq!(SIOCGIFMTU as u64, 0xc020_6933);
        assert_eq!(SIOCSIFMTU as u64, 0x8020_6934);
        assert_eq!(SIOCDIFADDR_IN6 as u64, 0x8120_6919);
        assert_eq!(SIOCAIFADDR_IN6 as u64, 0x8080_691a);
    }

    #[test]
    fn ioctl_numbers_match_libc() {
        assert_eq!(CTLIOCGINFO as u64, libc::CTLIOCGINFO as u64);
        assert_eq!(SIOCAIFADDR as u64, libc::SIOCAIFADDR as u64);
        assert_eq!(SIOCAIFADDR_IN6 as u64, libc::SIOCAIFADDR_IN6 as u64);
        assert_eq!(SIOCSIFMTU as u64, libc::SIOCSIFMTU as u64);
        assert_eq!(SIOCGIFFLAGS as u64, libc::SIOCGIFFLAGS as u64);
        assert_eq!(SIOCSIFFLAGS as u64, libc::SIOCSIFFLAGS as u64);
    }

    #[test]
    fn utun_constants_match_if_utun_h() {
        assert_eq!(UTUN_OPT_IFNAME, 2);
        assert_eq!(UTUN_OPT_MAX_PENDING_PACKETS, 16);
        assert_eq!(SYSPROTO_CONTROL, 2);
        assert_eq!(AF_SYS_CONTROL, 2);
        assert_eq!(PF_SYSTEM, 32);
    }
}
