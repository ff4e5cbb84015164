//! The command line (platform-free, so it is tested on every host).
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use bridge::{Cidr, EgressAction, EgressPolicy, ForwardSpec, MacAddr};
use nat::PortForward;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Invocation {
    /// Print the usage text.
    Help,
    /// Serve vhost-user on a socket.
    Serve(Box<Args>),
}

/// The daemon's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Args {
    /// The unix socket to listen on (created; an old socket file is replaced).
    pub(crate) socket: PathBuf,
    /// The guest MTU (config space and DHCP option).
    pub(crate) mtu: u16,
    /// The guest's MAC address (config space).
    pub(crate) mac: MacAddr,
    /// Port forwards from the NAT's external address into the guest.
    pub(crate) forwards: Vec<PortForward>,
    /// Upstream of the gateway's DNS forwarder; `None`: chosen from the host's resolver
    /// configuration ([`bridge::ResolverPaths::choose_upstream`]).
    pub(crate) dns_upstream: Option<SocketAddrV4>,
    /// Name (pattern) of the TUN device.
    pub(crate) tun_name: String,
    /// Offer checksum and TCPv4 segmentation offloads to the guest (TUN with virtio-net headers).
    pub(crate) offload: bool,
    /// Destinations the guest may reach (`--deny CIDR`, `--allow CIDR`).
    pub(crate) egress: EgressPolicy,
    /// The guest side of IPv6 at the gateway (`--no-ipv6`: off).
    pub(crate) ipv6: bool,
    /// The TUN's host address (`--tun-addr`); `None`: chosen ([`bridge::choose_pair`]).
    pub(crate) tun_addr: Option<Ipv4Addr>,
    /// The NAT's external address, the TUN's peer (`--external-addr`); `None`: chosen.
    pub(crate) external_addr: Option<Ipv4Addr>,
    /// The user (name or numeric uid) to run as after set-up; `None`: nobody when started as
    /// root with the sandbox on, else stay who we are.
    pub(crate) user: Option<String>,
    /// The group (name or numeric gid) to run as after set-up; `None`: the user's primary group.
    pub(crate) group: Option<String>,
    /// Permission bits of the socket file (default 0600).
    pub(crate) socket_mode: u32,
    /// The socket file's group (name or numeric gid); `None`: the group we run as.
    pub(crate) socket_group: Option<String>,
    /// Set no_new_privs and install the seccomp filter after set-up (`--no-sandbox`: off).
    pub(crate) sandbox: bool,
    /// Test only: make one forbidden system call right after the filter is installed.
    pub(crate) sandbox_selftest: bool,
}

/// A bad command line (printed as one line; exit status 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ArgError(pub(crate) String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

/// Parses the arguments after the program name.
pub(crate) fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Invocation, ArgError> {
    let mut socket = None;
    let mut mtu = None;
    let mut mac = None;
    let mut forwards: Vec<PortForward> = Vec::new();
    let mut dns_upstream = None;
    let mut tun_name = None;
    let mut no_offload = None;
    let mut no_ipv6 = None;
    let mut egress = EgressPolicy::default();
    let (mut tun_addr, mut external_addr) = (None, None);
    let mut user = None;
    let mut group = None;
    let mut socket_mode = None;
    let mut socket_group = None;
    let mut no_sandbox = None;
    let mut selftest = None;
    let mut it = args.iter().map(AsRef::as_ref);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_owned())),
            _ => (arg, None),
        };
        let mut value = || -> Result<String, ArgError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .map(str::to_owned)
                    .ok_or_else(|| ArgError(format!("{key} needs a value"))),
            }
        };
        match key {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--no-offload" | "--no-ipv6" | "--no-sandbox" | "--sandbox-selftest" => {
                if inline.is_some() {
                    return Err(ArgError(format!("{key} takes no value")));
                }
                let slot = match key {
                    "--no-offload" => &mut no_offload,
                    "--no-ipv6" => &mut no_ipv6,
                    "--no-sandbox" => &mut no_sandbox,
                    _ => &mut selftest,
                };
                set_once(slot, key, ())?;
            }
            "--user" => set_once(&mut user, key, parse_principal(key, &value()?)?)?,
            "--group" => set_once(&mut group, key, parse_principal(key, &value()?)?)?,
            "--socket-group" => {
                set_once(&mut socket_group, key, parse_principal(key, &value()?)?)?;
            }
            "--socket-mode" => set_once(&mut socket_mode, key, parse_mode(&value()?)?)?,
            "--socket" => set_once(&mut socket, key, PathBuf::from(value()?))?,
            "--mtu" => set_once(&mut mtu, key, parse_mtu(&value()?)?)?,
            "--mac" => {
                let v = value()?;
                let m: MacAddr = v.parse().map_err(|_| {
                    ArgError(format!("bad --mac {v:?}: expected xx:xx:xx:xx:xx:xx"))
                })?;
                if m.is_multicast() {
                    return Err(ArgError(format!("bad --mac {v:?}: multicast address")));
                }
                set_once(&mut mac, key, m)?;
            }
            "--forward" => {
                let f = parse_forward(&value()?)?;
                if forwards
                    .iter()
                    .any(|o| o.protocol == f.protocol && o.external_port == f.external_port)
                {
                    return Err(ArgError(format!(
                        "--forward external port {} ({:?}) given twice",
                        f.external_port, f.protocol
                    )));
                }
                forwards.push(f);
            }
            "--dns-upstream" => set_once(&mut dns_upstream, key, parse_upstream(&value()?)?)?,
            "--deny" => add_rule(&mut egress, key, &value()?, EgressAction::Deny)?,
            "--allow" => add_rule(&mut egress, key, &value()?, EgressAction::Allow)?,
            "--tun-addr" => set_once(&mut tun_addr, key, parse_ipv4(key, &value()?)?)?,
            "--external-addr" => set_once(&mut external_addr, key, parse_ipv4(key, &value()?)?)?,
            "--tun-name" => {
                let v = value()?;
                if v.is_empty() || v.len() > MAX_IFNAME || v.contains(['/', ' ', '\0']) {
                    return Err(ArgError(format!("bad --tun-name {v:?}")));
                }
                set_once(&mut tun_name, key, v)?;
            }
            other => return Err(ArgError(format!("unknown argument {other:?} (try --help)"))),
        }
    }
    if group.is_some() && user.is_none() {
        return Err(ArgError("--group needs --user".into()));
    }
    Ok(Invocation::Serve(Box::new(Args {
        socket: socket.ok_or_else(|| ArgError("--socket <path> is required".into()))?,
        mtu: mtu.unwrap_or(DEFAULT_MTU),
        mac: mac.unwrap_or(DEFAULT_MAC),
        forwards,
        dns_upstream,
        tun_name: tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned()),
        offload: no_offload.is_none(),
        egress,
        ipv6: no_ipv6.is_none(),
        tun_addr,
        external_addr,
        user,
        group,
        socket_mode: socket_mode.unwrap_or(DEFAULT_SOCKET_MODE),
        socket_group,
        sandbox: no_sandbox.is_none(),
        sandbox_selftest: selftest.is_some(),
    })))
}

/// Adds a `--deny`/`--allow` rule (`key`) of value `v` to `policy`.
fn add_rule(
    policy: &mut EgressPolicy,
    key: &str,
    v: &str,
    action: EgressAction,
) -> Result<(), ArgError> {
    let cidr: Cidr = v
        .parse()
        .map_err(|e| ArgError(format!("bad {key} {v:?}: {e}")))?;
    policy
        .add(cidr, action)
        .map_err(|e| ArgError(format!("bad {key} {v:?}: {e}")))
}

/// Parses `tcp|udp:<external port>:<guest port>` or `tcp|udp:<external port>:<guest ip>:<guest port>`
/// ([`bridge::ForwardSpec`]); without a guest address the rule targets the first DHCP address.
pub(crate) fn parse_forward(s: &str) -> Result<PortForward, ArgError> {
    s.parse::<ForwardSpec>()
        .map(|f| f.to_port_forward(FIRST_GUEST_ADDR))
        .map_err(|e| ArgError(format!("bad --forward {s:?}: {e}")))
}

/// Parses `addr` or `addr:port` (port default 53).
pub(crate) fn parse_upstream(s: &str) -> Result<SocketAddrV4, ArgError> {
    if let Ok(a) = s.parse::<Ipv4Addr>() {
        return Ok(SocketAddrV4::new(a, 53));
    }
    match s.parse::<SocketAddrV4>() {
        Ok(sa) if sa.port() != 0 => Ok(sa),
        _ => Err(ArgError(format!(
            "bad --dns-upstream {s:?}: expected <IPv4>[:port]"
        ))),
    }
}

fn parse_ipv4(key: &str, v: &str) -> Result<Ipv4Addr, ArgError> {
    v.parse()
        .map_err(|_| ArgError(format!("bad {key} {v:?}: not an IPv4 address")))
}

/// A user or group: a name (`[A-Za-z0-9._-]`, at most 32 bytes, not starting with `-`) or a
/// number. Whether it exists is checked when the daemon starts.
fn parse_principal(key: &str, v: &str) -> Result<String, ArgError> {
    let ok = !v.is_empty()
        && v.len() <= 32
        && !v.starts_with('-')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err(ArgError(format!(
            "bad {key} {v:?}: expected a name or a number"
        )))
    }
}

/// Octal permission bits (`600`, `0660`, `0o660`), at most 0777.
fn parse_mode(v: &str) -> Result<u32, ArgError> {
    let digits = v.strip_prefix("0o").unwrap_or(v);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(m),
        _ => Err(ArgError(format!(
            "bad --socket-mode {v:?}: expected octal permission bits, at most 0777"
        ))),
    }
}

fn parse_mtu(v: &str) -> Result<u16, ArgError> {
    match v.parse::<u16>() {
        Ok(m) if (MIN_MTU..=MAX_MTU).contains(&m) => Ok(m),
        _ => Err(ArgError(format!(
            "bad --mtu {v:?}: must be {MIN_MTU}..={MAX_MTU}"
        ))),
    }
}

fn set_once<T>(slot: &mut Option<T>, key: &str, v: T) -> Result<(), ArgError> {
    if slot.is_some() {
        return Err(ArgError(format!("{key} given twice")));
    }
    *slot = Some(v);
    Ok(())
}

/// Usage text for `--help`.
pub(crate) const USAGE: &str = "\
hostnetd: a vhost-user-net backend (hostnet's bridge, NAT and a TUN) for QEMU and Cloud Hypervisor

USAGE:
    hostnetd --socket <path> [--mtu N] [--mac M] [--forward tcp|udp:<ext>:<guest>]...
             [--dns-upstream addr[:port]] [--tun-name NAME] [--no-offload]
             [--deny CIDR]... [--allow CIDR]...
             [--tun-addr A] [--external-addr B] [--no-ipv6]
             [--user U [--group G]] [--socket-mode MODE] [--socket-group G] [--no-sandbox]

Listens on the unix socket <path> for a vhost-user frontend (QEMU: -chardev socket,path=<path>
-netdev vhost-user; Cloud Hypervisor: --net vhost_user=true,socket=<path>), creates a TUN in the
network namespace it runs in (host 100.64.0.1 peer 100.64.0.2, the NAT's external address; if
the namespace already uses either, the next free pair 100.64.0.3/.4, ... of 100.64.0.0/24), and
prints `ready socket=<path> tun=<name> gateway=192.168.64.1 external=<IPv4>` on stdout once
listening. When the
frontend disconnects it serves the next one. SIGTERM or SIGINT stops it (exit status 0); SIGUSR1
logs the connection's counters, drop causes and NAT drop reasons by name (also logged when a
frontend disconnects). If its TUN fails (deleted underneath with `ip link del`), with or without
a frontend, it logs an error naming the TUN, closes the connection and exits with status 1
(bad arguments, or a --tun-addr/--external-addr already in use: 2). Logs go to stderr (RUST_LOG filters them, default info). It does not enable IP forwarding or change routes: the
namespace's administrator does that (sysctl net.ipv4.ip_forward=1 to route the guest onwards).

Least privilege: once the TUN is open and the socket bound, hostnetd switches to --user/--group
(started as root: nobody by default), sets no_new_privs and installs a seccomp filter that allows
only the system calls it serves with; any other call kills the process (SIGSYS; the kernel's
audit log names the call). The socket file is created with mode 0600 (--socket-mode), owned by
the user it runs as and --socket-group.
Each frontend's peer credentials (pid, uid, gid) are logged when it connects. docs/SECURITY.md
has the threat model.

OPTIONS:
    --socket <path>          unix socket to listen on (required)
    --mtu <N>                guest MTU, 68..=65520 (default 1500)
    --mac <M>                guest MAC address (default 52:54:00:12:34:56)
    --forward <P:E:G>        forward external port E (tcp|udp) on 100.64.0.2 to guest port G
                             (P:E:IP:G for another guest address; repeatable)
    --dns-upstream <A[:p]>   upstream of the gateway's DNS forwarder (default: the first
                             non-loopback nameserver of /etc/resolv.conf; if that names only
                             systemd-resolved's stub 127.0.0.53, of
                             /run/systemd/resolve/resolv.conf; with none usable a warning,
                             and the gateway answers DNS with REFUSED)
    --tun-name <NAME>        TUN device name, %d picks a free number (default hostnetd%d)
    --tun-addr <A>           the TUN's host address (default: chosen, see above)
    --external-addr <B>      the NAT's external address, the TUN's peer (default: chosen); an
                             explicit address the namespace already uses is an error (exit 2)
    --no-offload             offer no checksum/TSO offloads to the guest: every frame is at most
                             the MTU and fully checksummed, the TUN carries plain IP packets
                             (default: offer CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4 and open the
                             TUN with virtio-net headers so the host kernel segments and checksums)
    --deny <CIDR>            drop the guest's packets to CIDR (a.b.c.d/n) and answer them with
                             ICMP administratively prohibited (repeatable)
    --allow <CIDR>           let the guest reach CIDR (repeatable); the longest matching prefix
                             of all rules wins, as in a routing table; no match: allowed.
                             169.254.0.0/16 (cloud metadata) is denied unless a rule for it or a
                             longer prefix (--allow 169.254.169.254/32) says otherwise; the
                             gateway and the NAT's external address are never subject to rules
    --no-ipv6                the gateway does not serve IPv6 (default: Router Advertisements for
                             SLAAC in fd64::/64, router fe80::1, DNS fd64::1 by RA and stateless
                             DHCPv6, Neighbor Discovery and ping for fe80::1 and fd64::1; IPv6
                             beyond the gateway is not routed yet and answered with no route)
    --user <U>               user (name or uid) to run as after set-up (default: nobody when
                             started as root, unless --no-sandbox; `--user root` stays root)
    --group <G>              group to run as after set-up (default: the user's primary group)
    --socket-mode <MODE>     socket file permission bits, octal (default 0600)
    --socket-group <G>       the socket file's group (default: the group run as), e.g. with
                             --socket-mode 0660 for a frontend in that group
    --no-sandbox             no no_new_privs, no seccomp filter, no switch to nobody unless
                             --user is given (debugging only)
    --sandbox-selftest       test only: after installing the filter, make one forbidden call
                             (socket(AF_INET)); the process must die of SIGSYS
    -h, --help               this text
";

/// Default guest MTU.
pub(crate) const DEFAULT_MTU: u16 = bridge::defaults::MTU;
const MIN_MTU: u16 = 68;
const MAX_MTU: u16 = 65_520;
/// Default guest MAC (QEMU's customary first NIC address).
pub(crate) const DEFAULT_MAC: MacAddr = bridge::defaults::GUEST_MAC;
/// Default permission bits of the socket file: the owner only.
pub(crate) const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default TUN name pattern.
pub(crate) const DEFAULT_TUN_NAME: &str = "hostnetd%d";
/// The address the first guest leases (start of the DHCP pool); the default target of `--forward`.
pub(crate) const FIRST_GUEST_ADDR: Ipv4Addr = bridge::defaults::DHCP_POOL_FIRST;
const MAX_IFNAME: usize = 15;

#[cfg(test)]
mod tests {
    use super::*;
    use nat::Protocol;

    fn serve(args: &[&str]) -> Result<Args, ArgError> {
        match parse_args(args)? {
            Invocation::Serve(a) => Ok(*a),
            Invocation::Help => Err(ArgError("help".into())),
        }
    }

    #[test]
    fn parses_every_option() {
        let a = serve(&[
            "--socket",
            "/tmp/s.sock",
            "--mtu=9000",
            "--mac",
            "52:54:00:aa:bb:cc",
            "--forward",
            "tcp:8080:80",
            "--forward=udp:5353:192.168.64.9:53",
            "--dns-upstream",
            "198.18.0.2:5353",
            "--tun-name",
            "vu%d",
            "--no-offload",
            "--user",
            "nobody",
            "--group=65534",
            "--socket-mode",
            "0660",
            "--socket-group",
            "kvm",
            "--no-sandbox",
            "--sandbox-selftest",
        ])
        .unwrap();
        assert_eq!(a.user.as_deref(), Some("nobody"));
        assert_eq!(a.group.as_deref(), Some("65534"));
        assert_eq!(a.socket_mode, 0o660);
        assert_eq!(a.socket_group.as_deref(), Some("kvm"));
        assert!(!a.sandbox);
        assert!(a.sandbox_selftest);
        assert_eq!(a.socket, PathBuf::from("/tmp/s.sock"));
        assert_eq!(a.mtu, 9000);
        assert_eq!(a.mac, MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(
            a.forwards,
            [
                PortForward {
                    protocol: Protocol::Tcp,
                    external_port: 8080,
                    internal: SocketAddrV4::new(FIRST_GUEST_ADDR, 80),
                },
                PortForward {
                    protocol: Protocol::Udp,
                    external_port: 5353,
                    internal: "192.168.64.9:53".parse().unwrap(),
                },
            ]
        );
        assert_eq!(a.dns_upstream, Some("198.18.0.2:5353".parse().unwrap()));
        assert_eq!(a.tun_name, "vu%d");
        assert!(!a.offload);
        let a = serve(&[
            "--socket",
            "s",
            "--tun-addr",
            "10.1.0.1",
            "--external-addr=10.1.0.2",
        ])
        .unwrap();
        assert_eq!(a.tun_addr, Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(a.external_addr, Some(Ipv4Addr::new(10, 1, 0, 2)));
    }

    #[test]
    fn defaults() {
        let a = serve(&["--socket", "s"]).unwrap();
        assert_eq!(
            (a.mtu, a.mac, a.dns_upstream),
            (DEFAULT_MTU, DEFAULT_MAC, None)
        );
        assert!(a.forwards.is_empty());
        assert_eq!(a.tun_name, DEFAULT_TUN_NAME);
        assert!(a.offload, "offloads are on by default");
        assert!(a.ipv6, "the gateway's IPv6 is on by default");
        let off = serve(&["--socket", "s", "--no-ipv6"]).unwrap();
        assert!(!off.ipv6);
        assert!(serve(&["--socket", "s", "--no-ipv6=1"]).is_err());
        assert!(serve(&["--socket", "s", "--no-ipv6", "--no-ipv6"]).is_err());
        assert_eq!(a.egress, EgressPolicy::default());
        assert_eq!((a.tun_addr, a.external_addr), (None, None));
        assert!(a.sandbox, "the sandbox is on by default");
        assert!(!a.sandbox_selftest);
        assert_eq!((a.user, a.group, a.socket_group), (None, None, None));
        assert_eq!(a.socket_mode, 0o600);
        assert_eq!(parse_args(&["--help"]), Ok(Invocation::Help));
    }

    #[test]
    fn egress_rules() {
        let a = serve(&[
            "--socket",
            "s",
            "--deny",
            "198.18.0.0/24",
            "--allow=169.254.169.254/32",
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(a.egress.action(ip("198.18.0.1")), EgressAction::Deny);
        assert_eq!(a.egress.action(ip("198.18.1.1")), EgressAction::Allow);
        assert_eq!(a.egress.action(ip("169.254.169.254")), EgressAction::Allow);
        assert_eq!(a.egress.action(ip("169.254.0.1")), EgressAction::Deny);
        for (bad, msg) in [
            (
                &["--socket", "s", "--deny", "198.18.0.1/24"][..],
                "bad --deny \"198.18.0.1/24\": address has bits set beyond the prefix length",
            ),
            (
                &["--socket", "s", "--allow", "1.2.3.4/8x"],
                "bad --allow \"1.2.3.4/8x\": prefix length must be 0..=32",
            ),
            (
                &[
                    "--socket",
                    "s",
                    "--allow",
                    "1.0.0.0/8",
                    "--deny",
                    "1.0.0.0/8",
                ],
                "bad --deny \"1.0.0.0/8\": both --allow and --deny for 1.0.0.0/8",
            ),
        ] {
            assert_eq!(serve(bad).unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn refuses_bad_lines_with_the_bad_value() {
        for bad in [
            &[][..],
            &["--socket"],
            &["--socket", "a", "--socket", "b"],
            &["--socket", "a", "--mtu", "67"],
            &["--socket", "a", "--mtu", "70000"],
            &["--socket", "a", "--mac", "01:00:5e:00:00:01"],
            &["--socket", "a", "--mac", "nope"],
            &["--socket", "a", "--forward", "icmp:1:2"],
            &["--socket", "a", "--forward", "tcp:0:2"],
            &["--socket", "a", "--forward", "tcp:80"],
            &[
                "--socket",
                "a",
                "--forward",
                "tcp:1:2",
                "--forward",
                "tcp:1:3",
            ],
            &["--socket", "a", "--dns-upstream", "example.com"],
            &["--socket", "a", "--dns-upstream", "1.2.3.4:0"],
            &["--socket", "a", "--tun-name", "much-too-long-name"],
            &["--socket", "a", "--bogus"],
            &["--socket", "a", "--no-offload=yes"],
            &["--socket", "a", "--no-offload", "--no-offload"],
            &["--socket", "a", "--tun-addr", "x"],
            &[
                "--socket",
                "a",
                "--external-addr",
                "1.2.3.4",
                "--external-addr",
                "1.2.3.5",
            ],
            &["--socket", "a", "--group", "nogroup"],
            &["--socket", "a", "--user", ""],
            &["--socket", "a", "--user", "-x"],
            &["--socket", "a", "--user", "a b"],
            &["--socket", "a", "--socket-mode", "888"],
            &["--socket", "a", "--socket-mode", "1777"],
            &["--socket", "a", "--socket-mode", ""],
            &["--socket", "a", "--no-sandbox=1"],
        ] {
            assert!(parse_args(bad).is_err(), "{bad:?} accepted");
        }
        let e = parse_args(&["--socket", "a", "--mtu", "12"]).unwrap_err();
        assert!(e.0.contains("\"12\""), "{e}");
    }

    #[test]
    fn upstream_port_defaults_to_53() {
        assert_eq!(parse_upstream("1.2.3.4"), Ok("1.2.3.4:53".parse().unwrap()));
    }
}
