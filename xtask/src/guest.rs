//! `cargo xtask guest-image`: a real Linux guest (kernel, virtio modules, busybox initramfs) for QEMU tests.
//!
//! The image lives in `target/guest/`:
//! - `vmlinux`: the uncompressed kernel taken out of Debian's bzImage (it carries a PVH note, so QEMU boots it
//!   directly with `-kernel vmlinux`, about twice as fast under TCG as the XZ-compressed bzImage);
//! - `initramfs.cpio`: busybox-static, the virtio modules and an `/init` driven by the kernel command line;
//! - `stamp`: what the image was built from; a matching stamp means the image is reused.
//!
//! The kernel and busybox-static packages come from apt (`apt-get download`, unpacked with `dpkg -x` into
//! `target/guest/work/`; nothing is installed). Host tools: `apt-get`, `apt-cache`, `dpkg`, `xz` (xz-utils).
//!
//! The guest's `/init` reads `hostnet.test=STEP,STEP,...` from the kernel command line and prints one
//! `HOSTNET-RESULT <step> ok|fail ...` line per step on the serial console, then `HOSTNET-RESULT done` and powers
//! off. Steps:
//! - `dhcp`: lease on eth0 (`HOSTNET-RESULT dhcp ok <ip> router=<ip> dns=<ip> mtu=<n>`);
//! - `slaac`: waits up to 10 s for the kernel's SLAAC on eth0: a global IPv6 address past DAD and a default route
//!   (`HOSTNET-RESULT slaac ok <address> router=<router>`);
//! - `ping:IP`: three echo requests, IPv4 or IPv6 (`ping ok <ip> ...`);
//! - `http:URL:SHA256`: downloads URL (an IPv6 host in brackets), checks its SHA-256 (`http ok rate_kbit=<n> bytes=<n> csecs=<n>`);
//! - `dns:NAME:IP`: resolves NAME through the leased DNS server, expects IP (`dns ok <name> <ip>`);
//! - `listen:PORT`: prints `HOSTNET-READY listen <port>`, accepts one TCP connection, answers its first line
//!   with `ack <line>` and prints what it received (`listen ok <first line>`);
//! - `sink:PORT`: prints `HOSTNET-READY sink <port>`, accepts one TCP connection and keeps what comes until the
//!   peer closes (`sink ok bytes=<n> sha256=<hex>`; `sink fail` when nothing came);
//! - `upload:IP:PORT:BYTES`: sends (IPv4 or IPv6) BYTES random bytes (a multiple of 64 KiB) to IP:PORT with `nc`
//!   (`upload ok rate_kbit=<n> bytes=<n> csecs=<n> sha256=<hex>`); what the peer answers is discarded (written to
//!   the serial console, random bytes echoed back by a `listen` peer reset the machine: measured, 2026-12-06);
//! - `sleep:SECS`: waits (`sleep ok`), e.g. while a test restarts the daemon;
//! - `reboot`: prints `reboot ok` and reboots; QEMU started without `-no-reboot` boots the same
//!   kernel command line again, so the steps run again (and again) until the test stops QEMU.
//!
//! Before the steps it always prints `HOSTNET-RESULT link ok mac=<mac> mtu=<mtu>` for eth0.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

/// Builds (or reuses) the guest image under `target/guest/`. `--force` rebuilds it.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut force = false;
    for a in args {
        match a.as_str() {
            "--force" => force = true,
            "-h" | "--help" => {
                println!(
                    "usage: cargo xtask guest-image [--force]\n  builds target/guest/vmlinux and target/guest/initramfs.cpio"
                );
                return Ok(());
            }
            other => bail!("guest-image: unknown argument {other:?}"),
        }
    }
    let image = ensure_image(force)?;
    println!("kernel    {}", image.kernel.display());
    println!("initramfs {}", image.initramfs.display());
    Ok(())
}

/// Where the built guest image lives.
#[derive(Debug, Clone)]
pub(crate) struct GuestImage {
    /// The uncompressed kernel (ELF with a PVH note).
    pub(crate) kernel: PathBuf,
    /// The initramfs (cpio newc, uncompressed).
    pub(crate) initramfs: PathBuf,
}

/// Makes sure `target/guest/` holds a current image and returns its paths (for `cargo xtask test` to call
/// before the QEMU tests). `force` rebuilds even when the stamp matches.
pub(crate) fn ensure_image(force: bool) -> Result<GuestImage> {
    let dir = guest_dir();
    let image = GuestImage {
        kernel: dir.join("vmlinux"),
        initramfs: dir.join("initramfs.cpio"),
    };
    let package = kernel_package()?;
    let stamp = format!(
        "{package}\n{BUSYBOX_PACKAGE}\n{ETHTOOL_PACKAGES:?}\n{INIT}\n{DHCP_SCRIPT}\n{LISTEN_HANDLER}\n{SINK_HANDLER}\n"
    );
    let stamp_path = dir.join("stamp");
    if !force
        && image.kernel.is_file()
        && image.initramfs.is_file()
        && fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp)
    {
        eprintln!("guest-image: up to date ({package})");
        return Ok(image);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let work = dir.join("work");
    if work.exists() {
        fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    }
    fs::create_dir_all(&work)?;

    let root = download_and_unpack(&package, &work, "kernel")?;
    let busybox_root = download_and_unpack(BUSYBOX_PACKAGE, &work, "busybox")?;
    let ethtool_roots = ETHTOOL_PACKAGES
        .iter()
        .map(|p| download_and_unpack(p, &work, p))
        .collect::<Result<Vec<_>>>()?;

    let bzimage = find_file(&root.join("boot"), |n| n.starts_with("vmlinuz-"))?
        .context("no boot/vmlinuz-* in the kernel package")?;
    eprintln!("guest-image: extracting vmlinux from {}", bzimage.display());
    let vmlinux = extract_vmlinux(&bzimage, &work)?;
    fs::write(&image.kernel, vmlinux)
        .with_context(|| format!("writing {}", image.kernel.display()))?;

    eprintln!("guest-image: building initramfs");
    let cpio = build_initramfs(&root, &busybox_root, &ethtool_roots)?;
    fs::write(&image.initramfs, cpio)
        .with_context(|| format!("writing {}", image.initramfs.display()))?;
    fs::write(&stamp_path, stamp)?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    eprintln!("guest-image: done ({package})");
    Ok(image)
}

/// `apt-get download PACKAGE` into `work`, then `dpkg -x` it into `work/<dir>` (nothing is
/// installed). Returns the unpacked tree.
fn download_and_unpack(package: &str, work: &Path, dir: &str) -> Result<PathBuf> {
    eprintln!("guest-image: downloading {package}");
    let status = Command::new("apt-get")
        .args(["download", package])
        .current_dir(work)
        .status()
        .context("running apt-get download (is apt available?)")?;
    ensure!(
        status.success(),
        "apt-get download {package} failed ({status})"
    );
    let prefix = format!("{package}_");
    let deb =
        find_file(work, |n| n.starts_with(&prefix) && n.ends_with(".deb"))?.with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                work.display()
            )
        })?;
    let root = work.join(dir);
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .context("running dpkg -x")?;
    ensure!(
        status.success(),
        "dpkg -x {} failed ({status})",
        deb.display()
    );
    Ok(root)
}

fn guest_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    target.join("guest")
}

/// `linux-image-6.1.0-NN-amd64`, resolved through the `linux-image-amd64` metapackage.
fn kernel_package() -> Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .stderr(Stdio::inherit())
        .output()
        .context("running apt-cache depends (is apt available?)")?;
    ensure!(
        out.status.success(),
        "apt-cache depends linux-image-amd64 failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    parse_kernel_package(&text).context(
        "apt-cache depends linux-image-amd64 names no linux-image-* package (run apt-get update)",
    )
}

fn parse_kernel_package(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let dep = line.trim().strip_prefix("Depends:")?.trim();
        (dep.starts_with("linux-image-") && dep.ends_with("-amd64") && dep != "linux-image-amd64")
            .then(|| dep.to_owned())
    })
}

fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() && entry.file_name().to_str().is_some_and(&pred) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Like the kernel's `scripts/extract-vmlinux`: try each XZ (then gzip) stream start in the bzImage until one
/// decompresses to an ELF file.
fn extract_vmlinux(bzimage: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let data = fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let candidates = [
        (&XZ_MAGIC[..], ["xz", "-dc", "--single-stream"]),
        (&GZIP_MAGIC[..], ["gzip", "-dc", "-q"]),
    ];
    for (magic, cmd) in candidates {
        for offset in find_all(&data, magic).take(MAX_CANDIDATES) {
            let payload = scratch.join("payload");
            fs::write(&payload, &data[offset..])?;
            let out = Command::new(cmd[0])
                .args(&cmd[1..])
                .stdin(fs::File::open(&payload)?)
                .stderr(Stdio::null())
                .output()
                .with_context(|| format!("running {} (install xz-utils)", cmd[0]))?;
            if out.stdout.starts_with(ELF_MAGIC) {
                eprintln!(
                    "guest-image: {} stream at offset {offset}: {} bytes of ELF",
                    cmd[0],
                    out.stdout.len()
                );
                return Ok(out.stdout);
            }
        }
    }
    bail!(
        "no XZ or gzip stream in {} decompresses to an ELF vmlinux",
        bzimage.display()
    )
}

fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    hay.windows(needle.len())
        .enumerate()
        .filter(move |(_, w)| *w == needle)
        .map(|(i, _)| i)
}

fn build_initramfs(
    pkg_root: &Path,
    busybox_root: &Path,
    ethtool_roots: &[PathBuf],
) -> Result<Vec<u8>> {
    let path = busybox_root.join("bin").join("busybox");
    let busybox = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    ensure!(
        is_static_elf(&busybox),
        "{} is not a static ELF binary",
        path.display()
    );
    let modules = pkg_root.join("lib").join("modules");
    let mut cpio = CpioWriter::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "etc",
        "lib",
        "lib/modules",
        "lib/x86_64-linux-gnu",
        "lib64",
        "var",
        "var/run",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 0o600, 5, 1);
    cpio.char_dev("dev/null", 0o666, 1, 3);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file("bin/dhcp-script", 0o755, DHCP_SCRIPT.as_bytes());
    cpio.file("bin/listen-handler", 0o755, LISTEN_HANDLER.as_bytes());
    cpio.file("bin/sink-handler", 0o755, SINK_HANDLER.as_bytes());
    for name in MODULES {
        let bytes = module(&modules, name)?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &bytes);
    }
    // ethtool (dynamically linked) and the libraries it loads: the guest sets its queue pairs
    // with `ethtool -L`.
    for (name, exact, to) in ETHTOOL_FILES {
        let pred = |n: &str| {
            if exact {
                n == name
            } else {
                n.starts_with(name)
            }
        };
        // The program itself, not its bash completion of the same name.
        let program = ethtool_roots.iter().find_map(|r| {
            ["sbin", "usr/sbin"]
                .iter()
                .map(|d| r.join(d).join(name))
                .find(|p| fs::read(p).is_ok_and(|b| b.starts_with(ELF_MAGIC)))
        });
        let path = match program {
            Some(p) => p,
            None => ethtool_roots
                .iter()
                .find_map(|r| find_recursive(r, &pred).transpose())
                .transpose()?
                .with_context(|| format!("{name} not found in {ETHTOOL_PACKAGES:?}"))?,
        };
        let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        cpio.file(to, 0o755, &bytes);
    }
    Ok(cpio.finish())
}

/// Reads module `name` (`name.ko`, or `name.ko.xz` decompressed) from anywhere under `modules`.
fn module(modules: &Path, name: &str) -> Result<Vec<u8>> {
    let plain = format!("{name}.ko");
    let xz = format!("{name}.ko.xz");
    let path = find_recursive(modules, &|n| n == plain || n == xz)?
        .with_context(|| format!("module {name} not found under {}", modules.display()))?;
    if path.extension().is_some_and(|e| e == "xz") {
        let out = Command::new("xz")
            .arg("-dc")
            .arg(&path)
            .output()
            .context("running xz (install xz-utils)")?;
        ensure!(
            out.status.success(),
            "xz -dc {} failed ({})",
            path.display(),
            out.status
        );
        Ok(out.stdout)
    } else {
        Ok(fs::read(&path)?)
    }
}

fn find_recursive(dir: &Path, pred: &dyn Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if let Some(found) = find_recursive(&entry.path(), pred)? {
                return Ok(Some(found));
            }
        } else if ty.is_file() && entry.file_name().to_str().is_some_and(pred) {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// A 64-bit little-endian ELF without a `PT_INTERP` program header.
fn is_static_elf(elf: &[u8]) -> bool {
    let rd16 = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let rd64 = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(ELF_MAGIC) || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    let Ok(phoff) = usize::try_from(phoff) else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = phoff + i * usize::from(phentsize);
        elf.get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) != PT_INTERP)
    })
}

/// A minimal writer of the cpio "newc" format the kernel unpacks as initramfs.
#[derive(Debug, Default)]
struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
}

impl CpioWriter {
    fn dir(&mut self, path: &str) {
        self.entry(path, 0o040_755, 0, 0, &[]);
    }

    fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, 0o100_000 | perm, 0, 0, data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, 0o120_777, 0, 0, target.as_bytes());
    }

    fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, 0o020_000 | perm, major, minor, &[]);
    }

    fn entry(&mut self, name: &str, mode: u32, rdev_major: u32, rdev_minor: u32, data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
        let name_size = u32::try_from(name.len() + 1).unwrap_or(u32::MAX);
        let fields = [
            self.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 0, 0, &[]);
        self.out
    }
}

/// Debian's statically linked busybox (unpacked, not installed: it conflicts with `busybox`).
const BUSYBOX_PACKAGE: &str = "busybox-static";
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];
const ELF_MAGIC: &[u8] = b"\x7fELF";
const PT_INTERP: u32 = 3;
const MAX_CANDIDATES: usize = 8;
/// ethtool and the packages of the shared libraries it loads.
const ETHTOOL_PACKAGES: [&str; 3] = ["ethtool", "libmnl0", "libc6"];
/// What of them goes into the initramfs: a regular file named so (`true`) or starting so, and
/// where it goes (the dynamic loader's default directories).
const ETHTOOL_FILES: [(&str, bool, &str); 5] = [
    ("ethtool", true, "bin/ethtool"),
    ("libmnl.so.0.", false, "lib/x86_64-linux-gnu/libmnl.so.0"),
    ("libc.so.6", true, "lib/x86_64-linux-gnu/libc.so.6"),
    ("libm.so.6", true, "lib/x86_64-linux-gnu/libm.so.6"),
    ("ld-linux-x86-64.so.2", true, "lib64/ld-linux-x86-64.so.2"),
];
/// The virtio-net stack of Debian's kernel, in insmod order.
const MODULES: [&str; 8] = [
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The guest's `/init` (busybox sh).
const INIT: &str = r#"#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
r() { echo "HOSTNET-RESULT $*"; }
cs() { awk '{ printf "%d\n", $1 * 100 }' /proc/uptime; }
# The parallel download steps' arguments N:URL:SHA into $n, $url, $sha; $cpus, $t0 set.
pargs() {
    n="${1%%:*}"
    rest="${1#*:}"
    sha="${rest##*:}"
    url="${rest%:*}"
    cpus=$(nproc 2>/dev/null || echo 1)
    t0=$(cs)
}
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci failover net_failover virtio_net; do
    insmod /lib/modules/$m.ko || r module fail $m
done
tests=""
for a in $(cat /proc/cmdline); do
    case "$a" in hostnet.test=*) tests="${a#hostnet.test=}" ;; esac
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if [ -e /sys/class/net/eth0 ]; then
    r link ok mac=$(cat /sys/class/net/eth0/address) mtu=$(cat /sys/class/net/eth0/mtu)
    ip link set eth0 up
else
    r link fail no-eth0
fi
for step in $(echo "$tests" | tr , ' '); do
    case "$step" in
    dhcp)
        rm -f /tmp/lease
        udhcpc -i eth0 -n -q -t 5 -T 2 -O mtu -s /bin/dhcp-script >/dev/null 2>&1
        if [ -s /tmp/lease ]; then r dhcp ok $(cat /tmp/lease); else r dhcp fail; fi
        ;;
    slaac)
        # The kernel's own SLAAC (accept_ra): a global address that passed DAD and a default route.
        a=""; gw=""; i=0
        while [ $i -lt 100 ]; do
            a=$(ip -6 addr show dev eth0 | awk '/inet6/ && /scope global/ && !/tentative/ { print $2; exit }')
            gw=$(ip -6 route | awk '/^default/ && /via/ { for (k = 1; k < NF; k++) if ($k == "via") print $(k + 1); exit }')
            [ -n "$a" ] && [ -n "$gw" ] && break
            sleep 0.1; i=$((i + 1))
        done
        if [ -n "$a" ] && [ -n "$gw" ]; then r slaac ok "${a%/*}" router=$gw; else r slaac fail "addr=$a" "router=$gw"; fi
        ;;
    ping:*)
        ip="${step#ping:}"
        if out=$(ping -c 3 -i 0.2 -W 3 "$ip" 2>&1); then
            r ping ok "$ip" $(echo "$out" | tail -n 1 | tr -d ' ')
        else
            r ping fail "$ip"
        fi
        ;;
    http:*)
        rest="${step#http:}"
        sha="${rest##*:}"
        url="${rest%:*}"
        t0=$(cs)
        timeout 120 wget -q -O /tmp/dl "$url"
        t1=$(cs)
        dt=$((t1 - t0)); [ $dt -gt 0 ] || dt=1
        size=$(wc -c < /tmp/dl 2>/dev/null || echo 0)
        sum=$(sha256sum /tmp/dl 2>/dev/null | cut -d' ' -f1)
        rm -f /tmp/dl
        if [ "$sum" = "$sha" ]; then
            r http ok rate_kbit=$((size * 8 * 100 / dt / 1000)) bytes=$size csecs=$dt
        else
            r http fail bytes=$size sha256=$sum
        fi
        ;;
    dns:*)
        rest="${step#dns:}"
        name="${rest%%:*}"
        want="${rest#*:}"
        if nslookup "$name" 2>/dev/null | tail -n +3 | grep -q "Address:* *$want\$"; then
            r dns ok "$name" "$want"
        else
            r dns fail "$name" $(nslookup "$name" 2>&1 | tr '\n' ' ')
        fi
        ;;
    listen:*)
        port="${step#listen:}"
        rm -f /tmp/listen
        timeout 60 nc -l -p "$port" -e /bin/listen-handler &
        pid=$!
        sleep 0.3
        echo "HOSTNET-READY listen $port"
        wait $pid
        got=$(head -n 1 /tmp/listen 2>/dev/null | tr -cd 'A-Za-z0-9._-')
        if [ -n "$got" ]; then r listen ok "$got"; else r listen fail "$port"; fi
        ;;
    sink:*)
        port="${step#sink:}"
        rm -f /tmp/sink
        timeout 60 nc -l -p "$port" -e /bin/sink-handler &
        pid=$!
        sleep 0.3
        echo "HOSTNET-READY sink $port"
        wait $pid
        size=$(wc -c < /tmp/sink 2>/dev/null || echo 0)
        sum=$(sha256sum /tmp/sink 2>/dev/null | cut -d' ' -f1)
        rm -f /tmp/sink
        if [ "$size" -gt 0 ]; then r sink ok bytes=$size sha256=$sum; else r sink fail "$port"; fi
        ;;
    upload:*)
        rest="${step#upload:}"
        n="${rest##*:}"
        dest="${rest%:*}"
        ip="${dest%:*}"
        port="${dest##*:}"
        dd if=/dev/urandom of=/tmp/up bs=65536 count=$((n / 65536)) 2>/dev/null
        size=$(wc -c < /tmp/up)
        sum=$(sha256sum /tmp/up | cut -d' ' -f1)
        t0=$(cs)
        if timeout 120 nc "$ip" "$port" < /tmp/up > /dev/null; then
            t1=$(cs)
            dt=$((t1 - t0)); [ $dt -gt 0 ] || dt=1
            r upload ok rate_kbit=$((size * 8 * 100 / dt / 1000)) bytes=$size csecs=$dt sha256=$sum
        else
            r upload fail "$ip:$port"
        fi
        rm -f /tmp/up
        ;;
    queues)
        # The queues the driver set up (virtio_net: min(max pairs, CPUs) pairs at probe).
        r queues ok $(ls /sys/class/net/eth0/queues | tr '\n' ' ')
        ;;
    phttp:*)
        # N downloads at once, the k-th pinned to CPU k mod CPUs (so a multiqueue driver sends
        # them on different TX queues), each hash checked.
        pargs "${step#phttp:}"
        k=0
        pids=""
        while [ $k -lt $n ]; do
            taskset $((1 << (k % cpus))) timeout 120 wget -q -O /tmp/pdl$k "$url" &
            pids="$pids $!"
            k=$((k + 1))
        done
        for p in $pids; do wait $p; done
        t1=$(cs)
        dt=$((t1 - t0)); [ $dt -gt 0 ] || dt=1
        ok=0
        k=0
        while [ $k -lt $n ]; do
            s=$(sha256sum /tmp/pdl$k 2>/dev/null | cut -d' ' -f1)
            [ "$s" = "$sha" ] && ok=$((ok + 1))
            rm -f /tmp/pdl$k
            k=$((k + 1))
        done
        if [ $ok -eq $n ]; then r phttp ok streams=$n cpus=$cpus csecs=$dt; else r phttp fail ok=$ok of=$n; fi
        ;;
    channels:*)
        # The queue pairs the driver uses (VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET).
        n="${step#channels:}"
        if ethtool -L eth0 combined "$n" >/tmp/err 2>&1; then
            cat /tmp/err
            r channels ok $(ethtool -l eth0 2>/dev/null | awk '/^Combined:/ { print $2 }' | tr '\n' ' ')
        else
            r channels fail $(head -c 200 /tmp/err)
        fi
        ;;
    pswitch:*)
        # N downloads at once (pinned as in phttp, hashed as they stream in) while the pairs
        # go from 2 to 1 after 0.5 s and back to 2 after 3 s more; how many still ran at
        # each switch.
        pargs "${step#pswitch:}"
        k=0
        pids=""
        while [ $k -lt $n ]; do
            rm -f /tmp/psum$k
            taskset $((1 << (k % cpus))) sh -c "timeout 120 wget -q -O - '$url' | sha256sum > /tmp/psum$k" &
            pids="$pids $!"
            k=$((k + 1))
        done
        running() { c=0; for p in $pids; do kill -0 $p 2>/dev/null && c=$((c + 1)); done; echo $c; }
        sleep 0.5
        down_at=$(running)
        ethtool -L eth0 combined 1 2>/dev/null && down=ok || down=fail
        q_down=$(ls /sys/class/net/eth0/queues | tr '\n' ,)
        sleep 3
        up_at=$(running)
        ethtool -L eth0 combined 2 2>/dev/null && up=ok || up=fail
        for p in $pids; do wait $p; done
        t1=$(cs)
        dt=$((t1 - t0)); [ $dt -gt 0 ] || dt=1
        ok=0
        k=0
        while [ $k -lt $n ]; do
            s=$(cut -d' ' -f1 /tmp/psum$k 2>/dev/null)
            [ "$s" = "$sha" ] && ok=$((ok + 1))
            k=$((k + 1))
        done
        if [ $ok -eq $n ] && [ $down = ok ] && [ $up = ok ]; then
            r pswitch ok streams=$n running_at_down=$down_at running_at_up=$up_at queues_down=$q_down csecs=$dt
        else
            r pswitch fail ok=$ok of=$n down=$down up=$up running_at_down=$down_at running_at_up=$up_at
        fi
        ;;
    sleep:*)
        sleep "${step#sleep:}"
        r sleep ok
        ;;
    reboot)
        # QEMU without -no-reboot resets the machine and boots /init again with the same
        # steps (so the guest reboots until the test stops it).
        r reboot ok
        sync
        reboot -f
        sleep 60
        ;;
    *)
        r "$step" fail unknown-step
        ;;
    esac
done
r done
poweroff -f
"#;

/// udhcpc's event script: configures eth0 and records the lease in /tmp/lease.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    [ -n "$mtu" ] && ip link set "$interface" mtu "$mtu"
    [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
    : > /etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >> /etc/resolv.conf; done
    echo "$ip router=${router%% *} dns=${dns%% *} mtu=${mtu:-none}" > /tmp/lease
    ;;
esac
exit 0
"#;

/// Serves the one connection of a `listen:PORT` step: records the first line, answers `ack <line>`, closes.
const LISTEN_HANDLER: &str = r#"#!/bin/sh
read -r line
echo "$line" > /tmp/listen
echo "ack $line"
"#;

/// `nc -l -e` runs this on the connection of a `sink` step: everything until the peer closes.
const SINK_HANDLER: &str = r#"#!/bin/sh
cat > /tmp/sink
"#;

#[cfg(test)]
mod tests {
    use std::io::{self, Read, Seek, SeekFrom};

    use super::*;

    fn read_cpio_names(mut r: impl Read + Seek) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        loop {
            let mut hdr = [0u8; 110];
            r.read_exact(&mut hdr)?;
            let field = |i: usize| {
                std::str::from_utf8(&hdr[6 + 8 * i..14 + 8 * i])
                    .ok()
                    .and_then(|s| u32::from_str_radix(s, 16).ok())
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad cpio header"))
            };
            let (size, name_size) = (field(6)? as usize, field(11)? as usize);
            let mut name = vec![0u8; name_size];
            r.read_exact(&mut name)?;
            name.pop();
            let name = String::from_utf8_lossy(&name).into_owned();
            let pos = r.stream_position()?;
            let data_at = pos.next_multiple_of(4);
            let next = (data_at + size as u64).next_multiple_of(4);
            r.seek(SeekFrom::Start(next))?;
            if name == "TRAILER!!!" {
                return Ok(names);
            }
            names.push(name);
        }
    }

    fn elf_with_program_header(p_type: u32) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(ELF_MAGIC);
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&p_type.to_le_bytes());
        elf
    }

    #[test]
    fn kernel_package_is_parsed_from_apt_cache_depends() {
        let text = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(
            parse_kernel_package(text).as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_kernel_package("linux-image-amd64\n"), None);
    }

    #[test]
    fn cpio_round_trips_names_and_alignment() {
        let mut w = CpioWriter::default();
        w.dir("bin");
        w.file("bin/a", 0o755, b"hello");
        w.symlink("bin/sh", "busybox");
        w.char_dev("dev/console", 0o600, 5, 1);
        let bytes = w.finish();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let names = read_cpio_names(io::Cursor::new(bytes)).unwrap();
        assert_eq!(names, ["bin", "bin/a", "bin/sh", "dev/console"]);
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        assert!(!is_static_elf(b"\x7fELF\x02\x01"));
        assert!(is_static_elf(&elf_with_program_header(1)));
        assert!(!is_static_elf(&elf_with_program_header(PT_INTERP)));
        let mut truncated = elf_with_program_header(1);
        truncated.truncate(66);
        assert!(!is_static_elf(&truncated));
    }

    #[test]
    fn find_all_finds_overlapping_starts() {
        assert_eq!(find_all(b"aaa", b"aa").collect::<Vec<_>>(), [0, 1]);
        assert_eq!(find_all(b"xyz", b"q").count(), 0);
    }
}
