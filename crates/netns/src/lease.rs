//! The busybox `udhcpc` hook script that configures a guest interface from its DHCP lease,
//! and the lease record it leaves.
//!
//! busybox udhcpc has no default script on Debian, so every user of a DHCP guest (the e2e
//! tests, `cargo xtask demo`, `cargo xtask bench`) runs this one: on `deconfig` it sets the
//! interface up without IPv4 addresses; on `bound`/`renew` it sets the leased address, the MTU
//! (when the server sent one), a default route via the first router, and writes the lease as
//! `key=value` lines (read back with [`Lease::read`]).
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! # let ns = netns::Netns::new("doc")?;
//! use std::path::Path;
//! let (script, out) = (Path::new("/tmp/udhcpc.sh"), Path::new("/tmp/lease"));
//! netns::lease::write_udhcpc_script(script, out)?;
//! ns.exec(&["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-s", "/tmp/udhcpc.sh"])?;
//! let lease = netns::lease::Lease::read(out)?;
//! println!("{}/{}", lease.ip, lease.mask);
//! # Ok(()) }
//! ```

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

/// A DHCP lease as the hook script recorded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The leased address.
    pub ip: Ipv4Addr,
    /// The subnet mask.
    pub mask: Ipv4Addr,
    /// The routers (option 3), in order.
    pub routers: Vec<Ipv4Addr>,
    /// The DNS servers (option 6), in order.
    pub dns: Vec<Ipv4Addr>,
    /// The interface MTU (option 26), if sent.
    pub mtu: Option<u32>,
    /// The lease time in seconds (option 51), if sent.
    pub lease_secs: Option<u32>,
    /// The server identifier (option 54), if sent.
    pub server_id: Option<Ipv4Addr>,
}

impl Lease {
    /// Parses the hook's record (`ip=`, `mask=`, `router=`, `dns=`, `mtu=`, `lease=`,
    /// `serverid=` lines); `None` without a valid `ip` and `mask`.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        let get = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or("")
                .trim()
        };
        let addrs = |k: &str| -> Vec<Ipv4Addr> {
            get(k)
                .split_whitespace()
                .filter_map(|a| a.parse().ok())
                .collect()
        };
        Some(Self {
            ip: get("ip").parse().ok()?,
            mask: get("mask").parse().ok()?,
            routers: addrs("router"),
            dns: addrs("dns"),
            mtu: get("mtu").parse().ok(),
            lease_secs: get("lease").parse().ok(),
            server_id: get("serverid").parse().ok(),
        })
    }

    /// Reads and parses the record the hook wrote to `path`.
    ///
    /// # Errors
    /// The file can't be read (the hook never ran `bound`), or it holds no valid lease
    /// (`InvalidData`).
    pub fn read(path: &Path) -> io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        Self::parse(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no lease in {}: {text:?}", path.display()),
            )
        })
    }
}

/// The hook script, recording the lease to `lease_file` (written whole: a `.tmp` file renamed).
/// A path that is not UTF-8 is written lossily, so keep such paths out.
#[must_use]
pub fn udhcpc_script(lease_file: &Path) -> String {
    let out = lease_file.to_string_lossy();
    format!(
        r#"#!/bin/sh
# udhcpc hook (hostnet netns::lease): configures $interface and records the lease.
OUT='{out}'
case "$1" in
  deconfig)
    ip link set dev "$interface" up
    ip -4 addr flush dev "$interface"
    ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$subnet" dev "$interface"
    [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev "$interface"; break; done
    {{ echo "ip=$ip"; echo "mask=$subnet"; echo "router=$router"; echo "dns=$dns"
      echo "mtu=$mtu"; echo "lease=$lease"; echo "serverid=$serverid"; }} > "$OUT.tmp"
    mv "$OUT.tmp" "$OUT"
    ;;
esac
exit 0
"#
    )
}

/// Writes [`udhcpc_script`] for `lease_file` to `script`, executable (mode 0755); pass
/// `-s <script>` to udhcpc.
///
/// # Errors
/// Writing the file or setting its mode fails.
pub fn write_udhcpc_script(script: &Path, lease_file: &Path) -> io::Result<()> {
    std::fs::write(script, udhcpc_script(lease_file))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(script, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_lease_parses() {
        let text = "ip=192.168.64.2\nmask=255.255.255.0\nrouter=192.168.64.1\n\
                    dns=192.168.64.1 9.9.9.9\nmtu=1500\nlease=3600\nserverid=192.168.64.1\n";
        let l = Lease::parse(text).unwrap();
        assert_eq!(l.ip, Ipv4Addr::new(192, 168, 64, 2));
        assert_eq!(l.mask, Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(l.routers, [Ipv4Addr::new(192, 168, 64, 1)]);
        assert_eq!(l.dns.len(), 2);
        assert_eq!((l.mtu, l.lease_secs), (Some(1500), Some(3600)));
        assert_eq!(l.server_id, Some(Ipv4Addr::new(192, 168, 64, 1)));
        let bare = Lease::parse("ip=10.0.0.2\nmask=255.0.0.0\nmtu=\n").unwrap();
        assert_eq!((bare.mtu, bare.routers.len()), (None, 0));
        assert_eq!(Lease::parse("mask=255.0.0.0\n"), None);
    }

    #[test]
    fn the_script_records_to_its_file_and_is_executable() {
        let dir = std::env::temp_dir().join(format!("netns-lease-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("udhcpc.sh");
        write_udhcpc_script(&script, &dir.join("lease")).unwrap();
        let text = std::fs::read_to_string(&script).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"));
        assert!(text.contains(&format!("OUT='{}'", dir.join("lease").display())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&script).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
