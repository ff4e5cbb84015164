//! Test harness for hostnet (dev only, `publish = false`): Linux network-namespace topologies
//! ([`netns`]), a simulated virtio-net guest driver over real guest memory bound to a TAP
//! device ([`guest`]), the `hostnet-lab attach` runner ([`attach`]) and the demo built on
//! them ([`demo`], run by `cargo xtask demo`).
//!
//! Nothing here touches the root network namespace: every link, address, route, sysctl, TUN
//! and TAP lives in namespaces this crate creates (or that the caller names). Linux only at run
//! time; the crate builds everywhere so the workspace checks for macOS stay green.
//!
//! MSRV: the workspace `rust-version` (1.95).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod attach;
pub mod demo;
#[cfg(target_os = "linux")]
pub mod guest;
pub mod netns;
