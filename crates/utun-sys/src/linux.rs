//! Header: `linux/if_tun.h`, `linux/sockios.h`, `linux/if.h`, `linux/virtio_net.h`
//!
//! <https://github.com/torvalds/linux/blob/master/include/uapi/linux/if_tun.h>
//! <https://github.com/torvalds/linux/blob/master/include/uapi/linux/sockios.h>
//! <https://github.com/torvalds/linux/blob/master/include/uapi/linux/virtio_net.h>
//!
//! The TUN/TAP character device `/dev/net/tun`: open it, then `TUNSETIFF` with an [`ifreq`]
//! whose `ifru_flags` hold [`IFF_TUN`] or [`IFF_TAP`] plus [`IFF_NO_PI`], optionally
//! [`IFF_VNET_HDR`] and [`IFF_MULTI_QUEUE`].

use core::mem::size_of;

use libc::{c_char, c_int, c_uint};

use crate::ioctl::{Ioctl, ior, iow};

// Flags and structs that libc already declares.
pub use libc::{
    IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE, IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_TUN, IFF_TUN_EXCL,
    IFF_VNET_HDR, IFNAMSIZ, TUN_F_CSUM, TUN_F_TSO_ECN, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO,
    TUN_F_USO4, TUN_F_USO6, ifreq, in6_ifreq,
};

/// The path of the TUN/TAP clone device.
pub const TUN_DEVICE_PATH: &str = "/dev/net/tun";

/// `TUNSETIFF`: `_IOW('T', 202, int)`; attach the fd to an interface (argument: `ifreq`).
pub const TUNSETIFF: Ioctl = iow::<c_int>(T_TYPE, 202);
/// `TUNGETFEATURES`: `_IOR('T', 207, unsigned int)`; the `IFF_*` flags the kernel supports.
pub const TUNGETFEATURES: Ioctl = ior::<c_uint>(T_TYPE, 207);
/// `TUNSETOFFLOAD`: `_IOW('T', 208, unsigned int)`; argument: `TUN_F_*` flags by value.
pub const TUNSETOFFLOAD: Ioctl = iow::<c_uint>(T_TYPE, 208);
/// `TUNGETIFF`: `_IOR('T', 210, unsigned int)`; fills an `ifreq` with the name and flags.
pub const TUNGETIFF: Ioctl = ior::<c_uint>(T_TYPE, 210);
/// `TUNGETVNETHDRSZ`: `_IOR('T', 215, int)`.
pub const TUNGETVNETHDRSZ: Ioctl = ior::<c_int>(T_TYPE, 215);
/// `TUNSETVNETHDRSZ`: `_IOW('T', 216, int)`; argument: pointer to an `int` (10 or 12 ...).
pub const TUNSETVNETHDRSZ: Ioctl = iow::<c_int>(T_TYPE, 216);
/// `TUNSETQUEUE`: `_IOW('T', 217, int)`; attach/detach a multi-queue fd (argument: `ifreq`).
pub const TUNSETQUEUE: Ioctl = iow::<c_int>(T_TYPE, 217);

/// `SIOCGIFFLAGS` (sockios.h): get `ifru_flags`.
pub const SIOCGIFFLAGS: Ioctl = 0x8913;
/// `SIOCSIFFLAGS` (sockios.h): set `ifru_flags`.
pub const SIOCSIFFLAGS: Ioctl = 0x8914;
/// `SIOCSIFADDR` (sockios.h): set the IPv4 address (`ifru_addr`), or on an `AF_INET6`
/// socket add an IPv6 address (argument: [`in6_ifreq`]).
pub const SIOCSIFADDR: Ioctl = 0x8916;
/// `SIOCSIFDSTADDR` (sockios.h): set the point-to-point peer address.
pub const SIOCSIFDSTADDR: Ioctl = 0x8918;
/// `SIOCSIFNETMASK` (sockios.h): set the IPv4 netmask.
pub const SIOCSIFNETMASK: Ioctl = 0x891c;
/// `SIOCGIFMTU` (sockios.h): get `ifru_mtu`.
pub const SIOCGIFMTU: Ioctl = 0x8921;
/// `SIOCSIFMTU` (sockios.h): set `ifru_mtu`.
pub const SIOCSIFMTU: Ioctl = 0x8922;
/// `SIOCGIFINDEX` (sockios.h): get `ifru_ifindex`.
pub const SIOCGIFINDEX: Ioctl = 0x8933;

/// `struct virtio_net_hdr` (10 bytes): the legacy per-packet header of `IFF_VNET_HDR`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct virtio_net_hdr {
    /// `VIRTIO_NET_HDR_F_*`.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`.
    pub gso_type: u8,
    /// Ethernet + IP + TCP/UDP header length.
    pub hdr_len: u16,
    /// Bytes to append to `hdr_len` per frame.
    pub gso_size: u16,
    /// Position to start checksumming from.
    pub csum_start: u16,
    /// Offset after that to place the checksum.
    pub csum_offset: u16,
}

/// `struct virtio_net_hdr_v1` (12 bytes, also `virtio_net_hdr_mrg_rxbuf`): the header with
/// `num_buffers`, selected with `TUNSETVNETHDRSZ` = 12.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct virtio_net_hdr_v1 {
    /// The legacy fields.
    pub hdr: virtio_net_hdr,
    /// Number of merged rx buffers (0 or 1 from a TUN).
    pub num_buffers: u16,
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: `csum_start`/`csum_offset` are valid.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was verified.
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_UDP`.
pub const VIRTIO_NET_HDR_GSO_UDP: u8 = 3;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4` (USO).
pub const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
/// `VIRTIO_NET_HDR_GSO_ECN`.
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// An all-zero [`ifreq`] whose name is `name` (which must already be NUL-padded).
///
/// The union is initialised through its largest member, so every byte the kernel reads is
/// defined.
#[must_use]
pub const fn ifreq_with_name(name: [c_char; IFNAMSIZ]) -> ifreq {
    ifreq {
        ifr_name: name,
        ifr_ifru: libc::__c_anonymous_ifr_ifru {
            ifru_map: libc::__c_anonymous_ifru_map {
                mem_start: 0,
                mem_end: 0,
                base_addr: 0,
                irq: 0,
                dma: 0,
                port: 0,
            },
        },
    }
}

const T_TYPE: u8 = b'T';

const _: () = assert!(size_of::<ifreq>() == IFNAMSIZ + 16 + 8 * (size_of::<usize>() / 8));
const _: () = assert!(size_of::<in6_ifreq>() == 24);
const _: () = assert!(size_of::<virtio_net_hdr>() == 10);
const _: () = assert!(size_of::<virtio_net_hdr_v1>() == 12);
const _: () = assert!(IFNAMSIZ == 16);

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // `Ioctl` is c_int or c_ulong depending on the libc
mod tests {
    use super::*;

    #[test]
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn ioctl_numbers_match_if_tun_h() {
        assert_eq!(TUNSETIFF as u64, 0x4004_54ca);
        assert_eq!(TUNGETFEATURES as u64, 0x8004_54cf);
        assert_eq!(TUNSETOFFLOAD as u64, 0x4004_54d0);
        assert_eq!(TUNGETIFF as u64, 0x8004_54d2);
        assert_eq!(TUNGETVNETHDRSZ as u64, 0x8004_54d7);
        assert_eq!(TUNSETVNETHDRSZ as u64, 0x4004_54d8);
        assert_eq!(TUNSETQUEUE as u64, 0x4004_54d9);
    }

    #[test]
    fn ioctl_numbers_match_libc() {
        assert_eq!(TUNSETIFF as u64, libc::TUNSETIFF as u64);
        assert_eq!(TUNSETOFFLOAD as u64, libc::TUNSETOFFLOAD as u64);
        assert_eq!(TUNSETVNETHDRSZ as u64, libc::TUNSETVNETHDRSZ as u64);
        assert_eq!(TUNSETQUEUE as u64, libc::TUNSETQUEUE as u64);
        assert_eq!(SIOCSIFMTU as u64, libc::SIOCSIFMTU as u64);
        assert_eq!(SIOCGIFFLAGS as u64, libc::SIOCGIFFLAGS as u64);
        assert_eq!(SIOCSIFFLAGS as u64, libc::SIOCSIFFLAGS as u64);
        assert_eq!(SIOCSIFADDR as u64, libc::SIOCSIFADDR as u64);
        assert_eq!(SIOCSIFDSTADDR as u64, libc::SIOCSIFDSTADDR as u64);
        assert_eq!(SIOCSIFNETMASK as u64, libc::SIOCSIFNETMASK as u64);
        assert_eq!(SIOCGIFINDEX as u64, libc::SIOCGIFINDEX as u64);
    }

    #[test]
    #[cfg(target_pointer_width = "64")]
    fn struct_sizes_match_the_headers() {
        assert_eq!(size_of::<ifreq>(), 40);
        assert_eq!(size_of::<in6_ifreq>(), 24);
    }

    #[test]
    fn flags_match_the_header() {
        assert_eq!(IFF_TUN, 0x0001);
        assert_eq!(IFF_TAP, 0x0002);
        assert_eq!(IFF_NO_PI, 0x1000);
        assert_eq!(IFF_VNET_HDR, 0x4000);
        assert_eq!(IFF_MULTI_QUEUE, 0x0100);
        assert_eq!(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, 0x7);
    }

    #[test]
    fn ifreq_with_name_keeps_the_name_and_zeroes_the_rest() {
        let mut name = [0 as c_char; IFNAMSIZ];
        name[0] = b't' as c_char;
        let req = ifreq_with_name(name);
        assert_eq!(req.ifr_name, name);
    }
}
