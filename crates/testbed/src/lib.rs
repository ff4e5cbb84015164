//! Test harness for hostnet (dev only, `publish = false`): Linux network-namespace topologies
//! ([`netns`]), a simulated virtio-net guest driver over real guest memory bound to a TAP
//! device ([`guest`]), the same guest as a vhost-user-net frontend for a backend in another
//! process ([`vhost_user`]), the `hostnet-lab attach` runner ([`attach`]) and the demo built
//! on them ([`demo`], run by `cargo xtask demo`).
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
#[cfg(target_os = "linux")]
pub mod vhost_user;

/// `line` without ANSI colour sequences (`ESC [ ... final-byte`), as tracing's coloured logs
/// carry them: for tests and tools that read the log lines of the binaries they start.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip a CSI sequence: ESC '[' parameters, then the final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
