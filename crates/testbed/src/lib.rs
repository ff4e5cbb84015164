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

/// The receiver's rate in iperf3's text output with `-f m` (its `... Mbits/sec ... receiver`
/// summary line), for tests and benches that run iperf3.
#[must_use]
pub fn iperf3_receiver_mbits(text: &str) -> Option<f64> {
    text.lines()
        .filter(|l| l.trim_end().ends_with("receiver"))
        .find_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let at = words.iter().position(|w| *w == "Mbits/sec")?;
            words.get(at.checked_sub(1)?)?.parse().ok()
        })
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn iperf3_receiver_rate_is_read_from_the_summary_line() {
        let text = "[  5]   0.00-2.00   sec  3.51 GBytes  15079 Mbits/sec  12             sender\n\
                    [  5]   0.00-2.00   sec  3.51 GBytes  15071 Mbits/sec                  receiver\n";
        assert_eq!(super::iperf3_receiver_mbits(text), Some(15071.0));
        assert_eq!(
            super::iperf3_receiver_mbits("iperf3: error - unable to connect"),
            None
        );
    }
}
