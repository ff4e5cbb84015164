//! `cargo xtask demo`: the main job, end to end, in under a minute.
//!
//! Checks the machine (Linux, root, the programs the demo runs: as root on Debian it installs
//! what is missing with apt-get, otherwise it says what to install), builds `hostnet-lab`
//! (`cargo build -p testbed --bin hostnet-lab`) and runs [`testbed::demo`]: on testbed's
//! three-namespace topology a simulated guest gets a lease with busybox udhcpc, pings the
//! gateway and the server and downloads a file with curl through hostnet's NAT. Prints a short
//! summary and removes everything again. Never touches the root network namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Runs the demo.
pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        if a == "-h" || a == "--help" {
            println!("usage: cargo xtask demo\n\n{}", HELP);
            return Ok(());
        }
        bail!("cargo xtask demo takes no arguments (got {a:?}); see --help");
    }
    if !cfg!(target_os = "linux") {
        bail!("the demo needs Linux network namespaces");
    }
    let root = is_root();
    ensure_tools(root)?;
    if !root {
        bail!(
            "the demo creates network namespaces and TUN/TAP devices: run it as root, e.g. \
             `sudo -E env PATH=\"$PATH\" cargo xtask demo`"
        );
    }
    let lab_bin = build_hostnet_lab()?;
    testbed::demo::run(&lab_bin)
}

/// Whether the effective user is root (from /proc/self/status).
fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Makes sure the programs the demo runs exist; as root, installs what is missing.
fn ensure_tools(root: bool) -> anyhow::Result<()> {
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(program, _)| which(program).is_none())
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if !root || which("apt-get").is_none() {
        bail!("missing programs; install them first (Debian/Ubuntu): `apt-get install -y {list}`");
    }
    step("setup", &format!("installing {list} with apt-get"));
    let update = Command::new("apt-get")
        .arg("update")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("apt-get update failed ({update}); install by hand: `apt-get install -y {list}`");
    }
    let install = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !install.success() {
        bail!("apt-get install {list} failed ({install})");
    }
    if let Some((program, package)) = TOOLS.iter().find(|(p, _)| which(p).is_none()) {
        bail!("{program} is still missing after installing {package}");
    }
    Ok(())
}

/// Builds `hostnet-lab` and returns its path.
fn build_hostnet_lab() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent folder")?
        .to_path_buf();
    step("build", "cargo build -p testbed --bin hostnet-lab");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "testbed", "--bin", "hostnet-lab"])
        .current_dir(&root)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("cargo build -p testbed --bin hostnet-lab failed ({status})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let bin = target.join("debug").join("hostnet-lab");
    if !bin.is_file() {
        bail!("built hostnet-lab but it is not at {}", bin.display());
    }
    Ok(bin)
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn step(what: &str, detail: &str) {
    eprintln!("==> {what:<8} {detail}");
}

const HELP: &str = "Builds hostnet-lab, makes guest/host/server network namespaces (server: busybox \
httpd on 198.18.0.2), runs `hostnet-lab attach`, and as the guest gets a DHCP lease (busybox \
udhcpc), pings the gateway and the server, and downloads a file with curl. Prints a summary and \
removes everything. Needs root; installs iproute2 iputils-ping curl busybox procps with apt-get if missing.";

/// Programs the demo runs and the Debian packages that have them.
const TOOLS: [(&str, &str); 5] = [
    ("ip", "iproute2"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("busybox", "busybox"),
    ("kill", "procps"),
];
