//! Raw declarations for TUN devices: constants, `#[repr(C)]` structs and ioctl numbers.
//!
//! This is the lowest layer of hostnet's host link (`utun-sys` ← `utun` ← `bridge`). It holds
//! declarations only — no functions that touch the OS — one module per operating system, each
//! mirroring a set of C headers:
//!
//! - `linux`: `linux/if_tun.h`, `linux/sockios.h`, `linux/if.h` (`/dev/net/tun`).
//! - `macos`: `net/if_utun.h`, `sys/kern_control.h`, `sys/sockio.h`, `net/if.h`,
//!   `netinet6/in6_var.h` (the utun kernel control).
//!
//! What `libc` already declares is re-exported, and only what is missing is added.
//! Every ioctl number is computed by a `const fn` from the size of its argument type (as the C
//! `_IOW`/`_IOWR` macros do) and pinned by a unit test against the value from the header;
//! struct sizes are asserted at compile time.
//!
//! # Guarantees
//! No `unsafe` code, no functions with side effects, `no_std`.
//!
//! # Platforms
//! Linux (glibc, musl) and macOS. The macOS module is type-checked and linted on Linux
//! (`--target aarch64-apple-darwin` / `x86_64-apple-darwin`); its tests have never run on a Mac.
//!
//! # MSRV
//! Rust 1.95.
#![no_std]
#![allow(non_camel_case_types)]
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ioctl;

#[cfg(target_os = "linux")]
#[cfg_attr(docsrs, doc(cfg(target_os = "linux")))]
pub mod linux;

#[cfg(target_os = "macos")]
#[cfg_attr(docsrs, doc(cfg(target_os = "macos")))]
pub mod macos;

pub use ioctl::Ioctl;
