//! A safe TUN device: Linux `/dev/net/tun` and macOS utun, whole IP packets, batches.
//!
//! `utun` is the host-link layer of hostnet (`bridge` → `utun` → `utun-sys`): the bridge
//! hands the IP packets its NAT produced to a [`Tun`], and the host kernel routes them on.
//! It is usable on its own by any program that wants a TUN device.
//!
//! ```no_run
//! use std::net::Ipv4Addr;
//! use utun::{Ipv4Dest, Tun};
//!
//! let tun = Tun::builder()
//!     .mtu(1500)
//!     .ipv4(Ipv4Addr::new(100, 64, 0, 1), Ipv4Dest::Peer(Ipv4Addr::new(100, 64, 0, 2)))
//!     .nonblocking(true)
//!     .open()?;
//! let mut buf = vec![0u8; 65536];
//! if tun.wait_readable(None)? {
//!     let n = tun.recv(&mut buf)?;
//!     tun.send(&buf[..n])?; // echo it back
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//! - One [`Tun`] type, the same API on Linux and macOS; packets are whole IP packets on both
//!   (the macOS 4-byte protocol-family header is added and stripped inside).
//! - Bad input is an error, never a panic: a bad name ([`OpenError::NameTooLong`],
//!   [`OpenError::InvalidName`]), missing privilege ([`OpenError::PermissionDenied`] saying
//!   which), a non-IP packet on send ([`NotIp`]), a packet larger than the receive buffer
//!   ([`Truncated`] — never silently cut), an interface deleted underneath
//!   ([`InterfaceGone`] — an error, not a spin).
//! - No allocation and no lock on the data path. Dropping the `Tun` removes the interface.
//! - Every `unsafe` block sits under a `// SAFETY:` comment naming its preconditions; most
//!   are one FFI call, a few also build or read the C structure that call uses.
//!
//! # Platforms
//! - **Linux**: `/dev/net/tun` with `IFF_TUN|IFF_NO_PI`; addresses, MTU and flags set by
//!   ioctls (no `ip` command). Extras in `utun::linux`: TAP mode, multi-queue, `IFF_VNET_HDR`
//!   with `TUNSETOFFLOAD`, creating the device inside another network namespace, and
//!   `utun::linux::netns` helpers. Needs `CAP_NET_ADMIN`. Tested for real (in namespaces),
//!   including which queue of a multi-queue device the kernel puts a flow's packets on
//!   (`TunBuilder::open_queues`).
//! - **macOS**: no multi-queue (one descriptor per utun; `open_queues` is Linux-only). The
//!   utun kernel control (`com.apple.net.utun_control`), one `SIOCAIFADDR`,
//!   `SIOCAIFADDR_IN6`, `SIOCSIFMTU`, `IFF_UP`. Needs root. **This code has never run on a
//!   Mac**: it is type-checked and linted for `aarch64-apple-darwin` and
//!   `x86_64-apple-darwin` on Linux, and its platform-independent parts (framing, names) are
//!   unit-tested on Linux. See `docs/PLATFORMS.md` for the command that runs its privileged
//!   tests on a Mac.
//! - Elsewhere: compiles; `open` returns [`OpenError::Unsupported`].
//!
//! # Features
//! - `vm-memory` (off by default): `Tun::send_gather` and `Tun::recv_scatter`, one packet
//!   written from, or read into, a header buffer and guest memory
//!   (`vm_memory::VolatileSlice`s) in one `writev`/`readv`, for a virtio-net backend that
//!   hands a chain's payload to the kernel, or takes it from there, without a copy of its own.
//!
//! # MSRV
//! Rust 1.95.
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;
mod error;
mod framing;
mod name;
mod sys;
mod tun;

#[cfg(target_os = "linux")]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
pub mod linux;

pub use builder::{Ipv4Dest, TunBuilder};
pub use error::{InterfaceGone, NotIp, OpenError, Truncated};
pub use tun::Tun;

/// The most guest-memory slices one [`Tun::send_gather`] takes (a virtio chain's
/// descriptors past the header).
#[cfg(feature = "vm-memory")]
pub const MAX_GATHER: usize = 64;
