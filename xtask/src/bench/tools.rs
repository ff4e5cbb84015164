//! The peer tools the bench drives: installed with apt-get when missing and we are root on
//! Debian; otherwise the bench says exactly what is missing and runs what it can.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::sys::which;

/// One program the bench runs, its Debian package and what needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Tool {
    pub(super) bin: &'static str,
    pub(super) package: &'static str,
    pub(super) needed_by: &'static str,
}

/// Every program the bench may run.
pub(super) const TOOLS: &[Tool] = &[
    Tool {
        bin: "ip",
        package: "iproute2",
        needed_by: "everything end to end",
    },
    Tool {
        bin: "iperf3",
        package: "iperf3",
        needed_by: "TCP and UDP throughput",
    },
    Tool {
        bin: "ping",
        package: "iputils-ping",
        needed_by: "ping RTT",
    },
    Tool {
        bin: "taskset",
        package: "util-linux",
        needed_by: "pinned latency figures",
    },
    Tool {
        bin: "nft",
        package: "nftables",
        needed_by: "the kernel backend",
    },
    Tool {
        bin: "pasta",
        package: "passt",
        needed_by: "the pasta backend",
    },
    Tool {
        bin: "busybox",
        package: "busybox",
        needed_by: "the hostnet backend (udhcpc in the guest)",
    },
    Tool {
        bin: "slirp4netns",
        package: "slirp4netns",
        needed_by: "the slirp4netns backend",
    },
    Tool {
        bin: "ethtool",
        package: "ethtool",
        needed_by: "the guest TAP's TSO state in the report",
    },
];

/// Installs what is missing when possible and returns the binaries still missing.
pub(super) fn ensure() -> BTreeSet<&'static str> {
    let missing = |tools: &[Tool]| -> Vec<Tool> {
        tools
            .iter()
            .copied()
            .filter(|t| which(t.bin).is_none())
            .collect()
    };
    let first = missing(TOOLS);
    if first.is_empty() {
        return BTreeSet::new();
    }
    let packages: Vec<&str> = first.iter().map(|t| t.package).collect();
    if is_root() && Path::new("/etc/debian_version").exists() {
        eprintln!("bench: installing {}", packages.join(" "));
        let install = || {
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        if !install() {
            let _ = Command::new("apt-get")
                .args(["update", "-qq"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            let _ = install();
        }
    }
    let still = missing(TOOLS);
    for t in &still {
        eprintln!(
            "bench: MISSING `{}` (Debian package {}), needed by {}: those figures are skipped; \
             install with `apt-get install {}`",
            t.bin, t.package, t.needed_by, t.package
        );
    }
    still.iter().map(|t| t.bin).collect()
}

/// Whether this process runs as root.
pub(super) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Builds passt (with its vhost-user mode) from the peer source snapshot beside the workspace
/// (`../shared/peers/passt/build.sh`, which prints the binary's path on its last line) into
/// `out`. Never downloads anything: no snapshot or no compiler, and the backend is skipped.
pub(super) fn build_passt(out: &Path) -> Result<std::path::PathBuf, String> {
    let script = crate::root().join("../shared/peers/passt/build.sh");
    if !script.is_file() {
        return Err(format!(
            "no passt source snapshot ({} is missing)",
            script.display()
        ));
    }
    eprintln!(
        "bench: building passt: {} {}",
        script.display(),
        out.display()
    );
    let o = Command::new("bash")
        .arg(&script)
        .arg(out)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&o.stdout);
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "passt does not build ({}; needs cc and make): {last}",
            o.status
        ));
    }
    let path = std::path::PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!("{} printed no passt binary path", script.display()))
    }
}
