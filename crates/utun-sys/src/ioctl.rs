//! Header: `asm-generic/ioctl.h` (Linux) and `sys/ioccom.h` (macOS)
//!
//! <https://github.com/torvalds/linux/blob/master/include/uapi/asm-generic/ioctl.h>
//! <https://github.com/apple-oss-distributions/xnu/blob/main/bsd/sys/ioccom.h>
//!
//! `const fn`s that build ioctl request numbers from a group, a number and the size of the
//! argument type, as the C macros `_IO`, `_IOR`, `_IOW` and `_IOWR` do.

use core::mem::size_of;

/// The type of an ioctl request number as `libc::ioctl` takes it: `c_int` on musl and
/// Android, `c_ulong` elsewhere (glibc, macOS).
#[cfg(any(target_env = "musl", target_os = "android"))]
pub type Ioctl = libc::c_int;
/// The type of an ioctl request number as `libc::ioctl` takes it: `c_int` on musl and
/// Android, `c_ulong` elsewhere (glibc, macOS).
#[cfg(not(any(target_env = "musl", target_os = "android")))]
pub type Ioctl = libc::c_ulong;

/// Direction bits: no data.
pub const IOC_NONE: u32 = DIR_NONE;
/// Direction bits: the kernel writes to user space (`_IOR`).
pub const IOC_READ: u32 = DIR_READ;
/// Direction bits: user space writes to the kernel (`_IOW`).
pub const IOC_WRITE: u32 = DIR_WRITE;

/// Builds a request number from direction bits, a group (type) byte, a number and a size,
/// like the C `_IOC` macro of the target OS.
///
/// # Panics
/// At compile time (in const context) if `size` does not fit the size field.
#[must_use]
pub const fn ioc(dir: u32, group: u8, nr: u8, size: usize) -> Ioctl {
    assert!(
        size <= SIZE_MAX,
        "ioctl argument too large for the size field"
    );
    let v = dir | ((size as u32) << SIZE_SHIFT) | ((group as u32) << 8) | (nr as u32);
    v as Ioctl
}

/// `_IO(group, nr)`: no argument.
#[must_use]
pub const fn io(group: u8, nr: u8) -> Ioctl {
    ioc(IOC_NONE, group, nr, 0)
}

/// `_IOR(group, nr, T)`: the kernel fills a `T`.
#[must_use]
pub const fn ior<T>(group: u8, nr: u8) -> Ioctl {
    ioc(IOC_READ, group, nr, size_of::<T>())
}

/// `_IOW(group, nr, T)`: the kernel reads a `T`.
#[must_use]
pub const fn iow<T>(group: u8, nr: u8) -> Ioctl {
    ioc(IOC_WRITE, group, nr, size_of::<T>())
}

/// `_IOWR(group, nr, T)`: the kernel reads and writes a `T`.
#[must_use]
pub const fn iowr<T>(group: u8, nr: u8) -> Ioctl {
    ioc(IOC_READ | IOC_WRITE, group, nr, size_of::<T>())
}

// Linux (asm-generic; x86, arm, aarch64, riscv): dir in bits 30..31, size in 16..29.
#[cfg(not(target_vendor = "apple"))]
const DIR_NONE: u32 = 0;
#[cfg(not(target_vendor = "apple"))]
const DIR_WRITE: u32 = 1 << 30;
#[cfg(not(target_vendor = "apple"))]
const DIR_READ: u32 = 2 << 30;
#[cfg(not(target_vendor = "apple"))]
const SIZE_MAX: usize = (1 << 14) - 1;

// BSD / XNU: IOC_VOID 0x2000_0000, IOC_OUT 0x4000_0000, IOC_IN 0x8000_0000, 13-bit size.
#[cfg(target_vendor = "apple")]
const DIR_NONE: u32 = 0x2000_0000;
#[cfg(target_vendor = "apple")]
const DIR_WRITE: u32 = 0x8000_0000;
#[cfg(target_vendor = "apple")]
const DIR_READ: u32 = 0x4000_0000;
#[cfg(target_vendor = "apple")]
const SIZE_MAX: usize = 0x1fff;

const SIZE_SHIFT: u32 = 16;

#[cfg(test)]
#[allow(clippy::unnecessary_cast)] // `Ioctl` is c_int or c_ulong depending on the libc
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn linux_encoding_matches_the_c_macros() {
        // _IOW('T', 202, int) from linux/if_tun.h
        assert_eq!(iow::<libc::c_int>(b'T', 202) as u64, 0x4004_54ca);
        // _IOR('T', 207, unsigned int)
        assert_eq!(ior::<libc::c_uint>(b'T', 207) as u64, 0x8004_54cf);
        assert_eq!(io(b'T', 1) as u64, 0x5401);
        assert_eq!(iowr::<u64>(b'x', 3) as u64, 0xc008_7803);
    }

    #[test]
    #[cfg(target_vendor = "apple")]
    fn bsd_encoding_matches_the_c_macros() {
        // CTLIOCGINFO = _IOWR('N', 3, struct ctl_info), sizeof = 100
        assert_eq!(iowr::<libc::ctl_info>(b'N', 3) as u64, 0xc064_4e03);
        assert_eq!(io(b'i', 1) as u64, 0x2000_6901);
    }
}
