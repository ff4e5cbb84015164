//! `hostnet-lab attach`: a simulated guest in one namespace, the bridge with its TUN in another.
//!
//! The command line is a contract (see `docs/hostnet-lab.md`):
//!
//! ```text
//! hostnet-lab attach --guest-netns <G> --host-netns <H> [--mtu N]
//!                    [--forward tcp|udp|tcp6|udp6:<external port>:[<guest IPv4>:]<guest port>]... [--dns-upstream <addr[:port]|[v6]:port>]
//!                    [--no-offload] [--threads one|pipeline|pairs] [--deny CIDR]... [--allow CIDR]...
//!                    [--no-ipv6] [--vhost-user SOCKET] [--queues N]
//! ```
//!
//! [`parse_args`] turns the arguments into an [`Invocation`]; [`run`] (Linux) does the work.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

#[cfg(target_os = "linux")]
mod lab_bridge;
#[cfg(target_os = "linux")]
mod lab_loop;
#[cfg(target_os = "linux")]
mod lab_network;
#[cfg(target_os = "linux")]
pub(crate) mod linux;
#[cfg(target_os = "linux")]
mod vhost;

/// What the command line asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
// Parsed once per run: the size of the arguments does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Invocation {
    /// `--help`, `-h`, `help`, or `attach --help`: print [`USAGE`] and exit 0.
    Help,
    /// `attach ...`.
    Attach(AttachArgs),
}

/// The options of `hostnet-lab attach`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttachArgs {
    /// The guest namespace: the simulated guest's TAP `eth0` is created there.
    pub guest_netns: String,
    /// More guest namespaces (`--guest-netns` given again): each gets its own simulated
    /// guest and TAP `eth0`, a port of the same network (MACs 52:54:00:12:34:57, :58, …,
    /// leases .3, .4, … in order), all on one thread. Empty: one guest.
    pub more_guest_netns: Vec<String>,
    /// The host namespace for the TUN and `ip_forward`; `None`: the namespace the process runs
    /// in (refused if that is the root namespace).
    pub host_netns: Option<String>,
    /// Guest MTU (TAP in G, the device's config space, the TUN).
    pub mtu: u16,
    /// Port forwards from the NAT's external address into the guest.
    pub forwards: Vec<Forward>,
    /// Upstream DNS server for the gateway's forwarder; `None`: chosen from
    /// `/etc/netns/<H>/resolv.conf` when present, else `/etc/resolv.conf`, and behind
    /// systemd-resolved's stub from `/run/systemd/resolve/resolv.conf`
    /// ([`bridge::ResolverPaths::choose_upstream`]).
    pub dns_upstream: Option<SocketAddr>,
    /// Name of the TUN in H (default [`DEFAULT_TUN_NAME`], a `%d` picks a free number).
    pub tun_name: String,
    /// The TUN's host address (`--tun-addr`); `None`: chosen with the external address
    /// ([`bridge::choose_pair`]: 100.64.0.1, or the next free pair of 100.64.0.0/24).
    pub tun_addr: Option<Ipv4Addr>,
    /// The NAT's external address, the TUN's peer (`--external-addr`); `None`: chosen.
    pub external_addr: Option<Ipv4Addr>,
    /// A static guest address the bridge accepts as a source besides the DHCP lease
    /// (`--static-guest-ip`, for guests configured without DHCP).
    pub static_guest_ip: Option<Ipv4Addr>,
    /// Checksum and TCPv4/TCPv6 segmentation offloads between the guest's TAP, the device and the
    /// host TUN (default on; `--no-offload` turns them off).
    pub offloads: bool,
    /// The guest side of IPv6 at the gateway (Neighbor Discovery, Router Advertisements,
    /// stateless DHCPv6, echo; default on, `--no-ipv6` turns it off).
    pub ipv6: bool,
    /// How the guest's driver and the device are threaded (`--threads`, default
    /// [`Threads::DEFAULT`]).
    pub threads: Threads,
    /// Destinations the guest may reach (`--deny CIDR`, `--allow CIDR`, repeatable; longest
    /// prefix wins, default allow, 169.254.0.0/16 denied unless a rule says otherwise).
    pub egress: bridge::EgressPolicy,
    /// `--vhost-user SOCKET`: connect the simulated guest to the vhost-user-net backend
    /// listening on SOCKET (hostnetd, passt's vhost-user mode) instead of running the bridge
    /// in this process; the NAT, TUN and gateway are then the backend's. `None`: the bridge.
    pub vhost_user: Option<PathBuf>,
    /// `--queues N`: virtio-net queue pairs (multiqueue) per guest, 1 to [`MAX_QUEUES`]
    /// (default 1). With more than one the simulated guest negotiates `VIRTIO_NET_F_MQ`
    /// and the control queue and sets N pairs with `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`, its
    /// TAP in G and the TUN in H have N queues (`IFF_MULTI_QUEUE`), and pair i reads and
    /// writes queue i of each.
    pub queues: u16,
}

/// `--threads`: how `attach` runs the simulated guest's driver and the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Threads {
    /// `one`: one thread (`lab-loop`) polls the TAP and the TUN and runs the guest's driver
    /// and the device core ([`bridge::DeviceCore`]) with plain function calls.
    One,
    /// `pipeline`: the guest's TX and RX driver threads and the bridge's threaded driver (two threads)
    /// (`bridge-tx`, `bridge-rx`; TX kicks and RX interrupts served inline when idle).
    Pipeline,
    /// `pairs` (with `--queues N` above 1 or several `--guest-netns`): a thread per queue pair
    /// of each guest (`lab-network` for the first guest's pair 0, `lab-pair-<port>-<pair>`),
    /// each running its pair's driver and device side with a [`bridge::PairWorker`]; the
    /// network is shared behind a lock taken per batch only around the gateway, the switch,
    /// the NAT and the inbox. The pairs stay as set at start.
    Pairs,
}

impl Threads {
    /// The mode without `--threads`.
    pub const DEFAULT: Threads = Threads::One;
}

/// One `--forward proto:external:guest` rule ([`bridge::ForwardSpec`]; without a guest
/// address it targets [`FIRST_GUEST_ADDR`], which the only guest gets).
pub type Forward = bridge::ForwardSpec;

/// Parses a `--forward` value.
fn parse_forward(s: &str) -> Result<Forward, ArgError> {
    s.parse::<Forward>()
        .map_err(|e| ArgError(format!("bad --forward {s:?}: {e}")))
}

/// A bad command line (printed as one line; exit status 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ArgError {}

/// Parses the arguments after the program name.
///
/// # Errors
/// Unknown subcommand or option, a missing or bad value, a repeated single option.
pub fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Invocation, ArgError> {
    let mut it = args.iter().map(AsRef::as_ref);
    match it.next() {
        None => return Err(ArgError("missing subcommand (try --help)".into())),
        Some("-h" | "--help" | "help") => return Ok(Invocation::Help),
        Some("attach") => {}
        Some(other) => {
            return Err(ArgError(format!(
                "unknown subcommand {other:?} (try --help)"
            )));
        }
    }
    let mut guest = None;
    let mut more_guests: Vec<String> = Vec::new();
    let mut host = None;
    let mut mtu = None;
    let mut dns = None;
    let mut tun_name = None;
    let mut static_ip = None;
    let (mut tun_addr, mut external_addr) = (None, None);
    let mut no_offload = None;
    let mut no_ipv6 = None;
    let mut threads = None;
    let mut forwards = Vec::new();
    let mut egress = bridge::EgressPolicy::default();
    let mut egress_given = None;
    let mut vhost_user = None;
    let mut queues = None;
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) if k.starts_with("--") => (k, Some(v.to_owned())),
            _ => (arg, None),
        };
        if matches!(key, "-h" | "--help") {
            return Ok(Invocation::Help);
        }
        if key == "--no-offload" || key == "--no-ipv6" {
            if inline.is_some() {
                return Err(ArgError(format!("{key} takes no value")));
            }
            let flag = if key == "--no-offload" {
                &mut no_offload
            } else {
                &mut no_ipv6
            };
            once(key, flag)?;
            *flag = Some(());
            continue;
        }
        let mut value = || match inline.clone() {
            Some(v) => Ok(v),
            None => it
                .next()
                .map(str::to_owned)
                .ok_or_else(|| ArgError(format!("{key} needs a value"))),
        };
        match key {
            "--guest-netns" => {
                let name = netns_name(key, value()?)?;
                if guest.as_ref() == Some(&name) || more_guests.contains(&name) {
                    return Err(ArgError(format!("--guest-netns {name} given twice")));
                }
                if guest.is_none() {
                    guest = Some(name);
                } else if more_guests.len() + 1 >= MAX_GUESTS {
                    return Err(ArgError(format!(
                        "at most {MAX_GUESTS} guest namespaces (--guest-netns)"
                    )));
                } else {
                    more_guests.push(name);
                }
            }
            "--host-netns" => {
                once(key, &host)?;
                host = Some(netns_name(key, value()?)?);
            }
            "--mtu" => {
                once(key, &mtu)?;
                let v = value()?;
                let n = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (MIN_MTU..=MAX_MTU).contains(n))
                    .ok_or_else(|| {
                        ArgError(format!("bad --mtu {v:?}: must be {MIN_MTU}..={MAX_MTU}"))
                    })?;
                mtu = Some(n);
            }
            "--dns-upstream" => {
                once(key, &dns)?;
                dns = Some(parse_upstream(&value()?)?);
            }
            "--tun-name" => {
                once(key, &tun_name)?;
                let v = value()?;
                if v.is_empty() || v.len() > 15 || v.contains(['/', ':', ' ']) {
                    return Err(ArgError(format!("bad --tun-name {v:?}")));
                }
                tun_name = Some(v);
            }
            "--static-guest-ip" => {
                once(key, &static_ip)?;
                let v = value()?;
                static_ip = Some(v.parse::<Ipv4Addr>().map_err(|_| {
                    ArgError(format!("bad --static-guest-ip {v:?}: not an IPv4 address"))
                })?);
            }
            "--tun-addr" | "--external-addr" => {
                let slot = if key == "--tun-addr" {
                    &mut tun_addr
                } else {
                    &mut external_addr
                };
                once(key, slot)?;
                let v = value()?;
                *slot = Some(
                    v.parse::<Ipv4Addr>()
                        .map_err(|_| ArgError(format!("bad {key} {v:?}: not an IPv4 address")))?,
                );
            }
            "--threads" => {
                once(key, &threads)?;
                let v = value()?;
                threads = Some(match v.as_str() {
                    "one" => Threads::One,
                    "pipeline" => Threads::Pipeline,
                    "pairs" => Threads::Pairs,
                    _ => {
                        return Err(ArgError(format!(
                            "bad --threads {v:?}: one, pipeline or pairs"
                        )));
                    }
                });
            }
            "--forward" => forwards.push(parse_forward(&value()?)?),
            "--deny" => {
                add_rule(&mut egress, key, &value()?, bridge::EgressAction::Deny)?;
                egress_given = Some(key);
            }
            "--allow" => {
                add_rule(&mut egress, key, &value()?, bridge::EgressAction::Allow)?;
                egress_given = Some(key);
            }
            "--vhost-user" => {
                once(key, &vhost_user)?;
                let v = value()?;
                if v.is_empty() || v.contains('\0') {
                    return Err(ArgError(format!(
                        "bad --vhost-user {v:?}: not a socket path"
                    )));
                }
                vhost_user = Some(PathBuf::from(v));
            }
            "--queues" => {
                once(key, &queues)?;
                let v = value()?;
                queues = Some(
                    v.parse::<u16>()
                        .ok()
                        .filter(|n| (1..=MAX_QUEUES).contains(n))
                        .ok_or_else(|| {
                            ArgError(format!("bad --queues {v:?}: must be 1..={MAX_QUEUES}"))
                        })?,
                );
            }
            other => return Err(ArgError(format!("unknown option {other:?} (try --help)"))),
        }
    }
    for (i, f) in forwards.iter().enumerate() {
        if forwards.iter().skip(i + 1).any(|g| {
            g.protocol == f.protocol && g.external_port == f.external_port && g.ipv6 == f.ipv6
        }) {
            return Err(ArgError(format!(
                "--forward {:?} external port {} given twice",
                f.protocol, f.external_port
            )));
        }
        if f.ipv6 && no_ipv6.is_some() {
            return Err(ArgError(format!(
                "--forward {:?} external port {} is IPv6 but --no-ipv6 is given",
                f.protocol, f.external_port
            )));
        }
    }
    if vhost_user.is_some() {
        // These configure the bridge, NAT and TUN of this process; a vhost-user backend has
        // its own (hostnetd's options, passt's).
        let own = [
            ("--forward", !forwards.is_empty()),
            ("--dns-upstream", dns.is_some()),
            ("--tun-name", tun_name.is_some()),
            ("--static-guest-ip", static_ip.is_some()),
            ("--tun-addr", tun_addr.is_some()),
            ("--external-addr", external_addr.is_some()),
            ("--threads", threads.is_some()),
            ("--no-ipv6", no_ipv6.is_some()),
            (egress_given.unwrap_or("--deny"), egress_given.is_some()),
        ];
        if let Some((key, _)) = own.iter().find(|(_, given)| *given) {
            return Err(ArgError(format!(
                "{key} configures hostnet-lab's own bridge and cannot be used with \
                 --vhost-user (give it to the backend)"
            )));
        }
    }
    // Several guests (one network of ports, one lease each: no static address to share) and
    // several queue pairs are driven by the network loop (`lab-network`), which has no
    // pipeline threads; the vhost-user frontend drives several pairs of one guest.
    for (used, what, vhost_user_too) in [
        (
            !more_guests.is_empty(),
            "more than one --guest-netns",
            false,
        ),
        (queues.is_some_and(|n| n > 1), "--queues more than 1", true),
    ] {
        let refused = [
            ("--vhost-user", vhost_user.is_some() && !vhost_user_too),
            ("--threads pipeline", threads == Some(Threads::Pipeline)),
            ("--static-guest-ip", static_ip.is_some()),
        ];
        if let Some((key, _)) = refused.iter().find(|(_, given)| used && *given) {
            return Err(ArgError(format!("{key} cannot be used with {what}")));
        }
    }
    if threads == Some(Threads::Pairs) && queues.is_none_or(|n| n < 2) && more_guests.is_empty() {
        return Err(ArgError(
            "--threads pairs needs --queues 2 or more, or more than one --guest-netns".into(),
        ));
    }
    Ok(Invocation::Attach(AttachArgs {
        guest_netns: guest.ok_or_else(|| ArgError("--guest-netns is required".into()))?,
        more_guest_netns: more_guests,
        host_netns: host,
        mtu: mtu.unwrap_or(DEFAULT_MTU),
        forwards,
        dns_upstream: dns,
        tun_name: tun_name.unwrap_or_else(|| DEFAULT_TUN_NAME.to_owned()),
        static_guest_ip: static_ip,
        tun_addr,
        external_addr,
        offloads: no_offload.is_none(),
        ipv6: no_ipv6.is_none(),
        threads: threads.unwrap_or(Threads::DEFAULT),
        egress,
        vhost_user,
        queues: queues.unwrap_or(1),
    }))
}

/// Adds a `--deny`/`--allow` rule (`key`) of value `v` to `policy`.
fn add_rule(
    policy: &mut bridge::EgressPolicy,
    key: &str,
    v: &str,
    action: bridge::EgressAction,
) -> Result<(), ArgError> {
    let cidr: bridge::Cidr = v
        .parse()
        .map_err(|e| ArgError(format!("bad {key} {v:?}: {e}")))?;
    policy
        .add(cidr, action)
        .map_err(|e| ArgError(format!("bad {key} {v:?}: {e}")))
}

/// Parses `A[:port]`, `V6`, `[V6]` or `[V6]:port` (port default 53):
/// [`bridge::parse_dns_upstream`].
///
/// # Errors
/// Not an IPv4 or IPv6 address with an optional non-zero port.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, ArgError> {
    bridge::parse_dns_upstream(s).map_err(ArgError)
}

/// Runs `attach` until SIGINT/SIGTERM (Linux only).
///
/// # Errors
/// A missing namespace, a device or bridge set-up failure, or a failure while running; the
/// caller prints it as one line and exits with status 2.
pub fn run(args: &AttachArgs) -> anyhow::Result<()> {
    #[cfg(target_os = "linux")]
    {
        linux::run(args)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = args;
        anyhow::bail!("hostnet-lab attach needs Linux network namespaces")
    }
}

/// Usage text for `--help`.
pub const USAGE: &str = "\
hostnet-lab: run hostnet's bridge for a simulated virtio-net guest between network namespaces

USAGE:
    hostnet-lab attach --guest-netns <G> [--guest-netns <G2>]... [--host-netns <H>] [--mtu N]
                       [--forward tcp|udp|tcp6|udp6:<external port>:[<guest IPv4>:]<guest port>]...
                       [--dns-upstream <addr[:port]>] [--tun-name NAME]
                       [--static-guest-ip <addr>] [--no-offload]
                       [--threads one|pipeline|pairs] [--deny CIDR]... [--allow CIDR]...
                       [--tun-addr <addr>] [--external-addr <addr>] [--no-ipv6]
                       [--vhost-user <SOCKET>] [--queues N]
    hostnet-lab --help

attach creates in G a TAP `eth0` (down, no address: run a DHCP client there) driven by a
simulated virtio-net guest, and in H a TUN 100.64.0.1 peer 100.64.0.2 (the NAT's external
address; if H already uses either, the next free pair 100.64.0.3/.4, ... of 100.64.0.0/24),
and fd64:ffff::1/64 (NAT66's external address fd64:ffff::2; if H uses either, the next free
fd64:ffff::k:1/112 and ::k:2), turns on IPv4 and IPv6 forwarding in H only, prints one line
    ready external=<IPv4> tun=<name> gateway=<IPv4> external6=<IPv6> gateway6=<IPv6>
(without the last two fields and the IPv6 address with --no-ipv6) to stdout once traffic can flow, logs to stderr (RUST_LOG), and runs until SIGINT/SIGTERM,
then removes TUN and TAP, prints stats to stderr and exits 0. Errors: one line, exit 2.

OPTIONS:
    --guest-netns <G>        namespace for the guest's TAP eth0 (required); given again, one
                             more guest each (at most 8), all on one network: MACs
                             52:54:00:12:34:56, :57, ..., leases .2, .3, ... in order, frames
                             between guests switched by the bridge (IPv4; not with
                             --threads pipeline, --static-guest-ip or --vhost-user)
    --host-netns <H>         namespace for the TUN (default: the current one; never the root)
    --mtu <N>                guest MTU, 68..=65520 (default 1500)
    --forward <P:E:G>        forward external port E (tcp|udp) to guest port G (repeatable);
                             the guest is 192.168.64.2 (its first lease) unless P:E:<addr>:G;
                             tcp6|udp6:E:G forwards E on NAT66's external address to the
                             guest's global IPv6 address the gateway learned (its EUI-64 SLAAC
                             address if it uses it, else its first; with several guests
                             tcp6:E:<addr>:G names the guest by its IPv4 address); tcp/udp
                             are IPv4 only
    --dns-upstream <A[:p]>   upstream of the gateway's DNS forwarder, IPv4 (A or A:port) or
                             IPv6 (V6 or [V6]:port), for queries to 192.168.64.1 and fd64::1
                             (default: the first non-loopback IPv4 nameserver of
                             /etc/netns/<H>/resolv.conf or /etc/resolv.conf; if that names
                             only systemd-resolved's stub 127.0.0.53, of
                             /run/systemd/resolve/resolv.conf; then the same for IPv6 (not
                             link-local); with none usable a warning, and the gateway
                             answers DNS with REFUSED)
    --tun-name <NAME>        TUN name in H (default hostnet%d)
    --static-guest-ip <A>    also accept A as the guest's source address (no DHCP needed)
    --no-offload             no checksum/TSO offloads (default: the TAP, the device and the
                             TUN pass 64 KiB TCP super-frames with virtio-net headers)
    --tun-addr <A>           the TUN's host address (default: chosen, see above)
    --external-addr <B>      the NAT's external address, the TUN's peer (default: chosen);
                             an explicit address H already uses is an error (exit 2)
    --threads <one|pipeline|pairs>
                             one (default): one thread runs the guest's driver and the device
                             (TAP and TUN in one epoll loop); pipeline: guest TX/RX driver
                             threads and the bridge's threaded driver (two threads); pairs
                             (with --queues 2 or more or several guests): a thread per queue
                             pair of each guest
    --deny <CIDR>            drop the guest's packets to CIDR (a.b.c.d/n or x:y::/n) and answer
                             them with ICMP(v6) administratively prohibited (repeatable)
    --allow <CIDR>           let the guest reach CIDR (repeatable); the longest matching
                             prefix of all rules wins, as in a routing table; no match: allowed.
                             169.254.0.0/16, fd00:ec2::254 and fd20:ce::254 (cloud metadata)
                             are denied unless a rule for it or
                             a longer prefix (--allow 169.254.169.254/32) says otherwise; the
                             gateway and the NAT's external address are never subject to rules
    --no-ipv6                the gateway does not serve IPv6 (default: Router Advertisements for
                             SLAAC in fd64::/64, router fe80::1, DNS fd64::1 by RA and stateless
                             DHCPv6, Neighbor Discovery and ping for fe80::1 and fd64::1; NAT66
                             beyond the gateway to fd64:ffff::2)
    --vhost-user <SOCKET>    no bridge here: connect the simulated guest, as a vhost-user
                             frontend, to the vhost-user-net backend listening on SOCKET
                             (hostnetd, passt --vhost-user); the NAT, TUN, gateway and DHCP
                             are the backend's, the ready line reads
                                 ready external=- tun=- gateway=-
                             and the options that configure the bridge (--forward,
                             --dns-upstream, --tun-name, --static-guest-ip, --tun-addr,
                             --external-addr, --threads, --no-ipv6, --deny, --allow) are
                             refused; --mtu must match the MTU the backend reports, if it does
    --queues <N>             virtio-net queue pairs per guest, 1..=4 (default 1): with N > 1
                             the simulated guest negotiates multiqueue and sets N pairs on the
                             control queue, G's TAP eth0 and H's TUN get N queues
                             (IFF_MULTI_QUEUE), and pair i reads and writes queue i of both
                             (not with --threads pipeline or --static-guest-ip); with
                             --vhost-user the backend must serve N pairs (MQ protocol
                             feature) and answer VQ_PAIRS_SET, which the guest sends on the
                             control queue it hands over; G's TAP gets N queues;
                             SIGUSR2 makes the guest switch between N pairs and 1 (a test
                             of VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET at runtime)

Guest subnet 192.168.64.0/24, gateway 192.168.64.1, DHCP pool .2-.254.
Guest IPv6 prefix fd64::/64, router fe80::1, gateway and DNS fd64::1.
";

fn once<T>(key: &str, slot: &Option<T>) -> Result<(), ArgError> {
    if slot.is_some() {
        Err(ArgError(format!("{key} given twice")))
    } else {
        Ok(())
    }
}

fn netns_name(key: &str, v: String) -> Result<String, ArgError> {
    if v.is_empty() || v.contains(['/', '\0']) || v == "." || v == ".." {
        return Err(ArgError(format!("bad {key} {v:?}: not a namespace name")));
    }
    Ok(v)
}

/// Default guest MTU.
pub const DEFAULT_MTU: u16 = bridge::defaults::MTU;
/// Smallest accepted MTU (IPv4 minimum).
pub const MIN_MTU: u16 = 68;
/// Largest accepted MTU.
pub const MAX_MTU: u16 = 65_520;
/// Default TUN name pattern.
pub const DEFAULT_TUN_NAME: &str = "hostnet%d";
/// Queue pairs per guest at most (`--queues`): what the simulated guest lays out.
pub const MAX_QUEUES: u16 = 4;
#[cfg(target_os = "linux")]
const _: () = assert!(MAX_QUEUES == crate::guest::MAX_QUEUE_PAIRS);
/// Guest namespaces one `attach` serves at most.
pub const MAX_GUESTS: usize = 8;
/// The address the first guest leases (start of the DHCP pool).
pub const FIRST_GUEST_ADDR: Ipv4Addr = bridge::defaults::DHCP_POOL_FIRST;
/// The TUN's host-side address in H by default (see [`bridge::choose_pair`]).
pub const HOST_TUN_ADDR: Ipv4Addr = bridge::defaults::TUN_HOST_ADDR;
/// The NAT's external address by default (the TUN's peer, routed into the TUN by H; the
/// ready line names the one chosen).
pub const NAT_EXTERNAL_ADDR: Ipv4Addr = bridge::defaults::NAT_EXTERNAL_ADDR;
/// The guest's gateway.
pub const GATEWAY_ADDR: Ipv4Addr = bridge::defaults::GATEWAY;

#[cfg(test)]
mod tests {
    use super::*;
    use nat::Protocol;

    fn attach(args: &[&str]) -> Result<AttachArgs, ArgError> {
        let mut v = vec!["attach"];
        v.extend_from_slice(args);
        match parse_args(&v)? {
            Invocation::Attach(a) => Ok(a),
            Invocation::Help => Err(ArgError("help".into())),
        }
    }

    #[test]
    fn parses_the_contract_form() {
        let a = attach(&[
            "--guest-netns",
            "g",
            "--host-netns",
            "h",
            "--mtu",
            "9000",
            "--forward",
            "tcp:8080:80",
            "--forward=udp:5353:53",
            "--dns-upstream",
            "198.18.0.2:5300",
        ])
        .unwrap();
        assert_eq!(a.guest_netns, "g");
        assert_eq!(a.host_netns.as_deref(), Some("h"));
        assert_eq!(a.mtu, 9000);
        assert_eq!(a.dns_upstream, Some("198.18.0.2:5300".parse().unwrap()));
        let v6 = attach(&["--guest-netns", "g", "--dns-upstream", "2001:db8::2"]).unwrap();
        assert_eq!(v6.dns_upstream, Some("[2001:db8::2]:53".parse().unwrap()));
        assert_eq!(a.forwards.len(), 2);
        assert_eq!(
            a.forwards[0].to_port_forward(FIRST_GUEST_ADDR),
            nat::PortForward {
                protocol: Protocol::Tcp,
                external_port: 8080,
                internal: "192.168.64.2:80".parse().unwrap(),
            }
        );
        assert_eq!(a.forwards[1].protocol, Protocol::Udp);
        assert_eq!(a.tun_name, DEFAULT_TUN_NAME);
        assert!(a.offloads);
    }

    #[test]
    fn no_ipv6_turns_the_gateways_ipv6_off() {
        assert!(attach(&["--guest-netns", "g"]).unwrap().ipv6);
        let a = attach(&["--guest-netns", "g", "--no-ipv6", "--no-offload"]).unwrap();
        assert!(!a.ipv6 && !a.offloads);
        for bad in [
            &["--guest-netns", "g", "--no-ipv6=1"][..],
            &["--guest-netns", "g", "--no-ipv6", "--no-ipv6"],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn no_offload_turns_offloads_off() {
        let a = attach(&["--guest-netns", "g", "--no-offload"]).unwrap();
        assert!(!a.offloads);
        let a = attach(&["--no-offload", "--guest-netns", "g", "--mtu", "9000"]).unwrap();
        assert!(!a.offloads);
        assert_eq!(a.mtu, 9000);
        for bad in [
            &["--guest-netns", "g", "--no-offload=1"][..],
            &["--guest-netns", "g", "--no-offload", "--no-offload"],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn egress_rules_are_parsed_and_bad_ones_refused() {
        use bridge::EgressAction;
        let a = attach(&["--guest-netns", "g"]).unwrap();
        assert_eq!(a.egress, bridge::EgressPolicy::default());
        let a = attach(&[
            "--guest-netns",
            "g",
            "--deny",
            "198.18.0.0/24",
            "--allow=169.254.169.254/32",
            "--deny",
            "10.0.0.1",
            "--deny",
            "2001:db8::/32",
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(a.egress.action(ip("198.18.0.10")), EgressAction::Deny);
        assert_eq!(a.egress.action(ip("198.18.1.10")), EgressAction::Allow);
        assert_eq!(a.egress.action(ip("169.254.169.254")), EgressAction::Allow);
        assert_eq!(a.egress.action(ip("169.254.1.1")), EgressAction::Deny);
        assert_eq!(a.egress.action(ip("10.0.0.1")), EgressAction::Deny);
        assert_eq!(
            a.egress.action6("2001:db8::2".parse().unwrap()),
            EgressAction::Deny
        );
        assert_eq!(a.egress.rules().len(), 7);
        for (bad, msg) in [
            (
                &["--guest-netns", "g", "--deny", "10.0.0.1/8"][..],
                "bad --deny \"10.0.0.1/8\": address has bits set beyond the prefix length",
            ),
            (
                &["--guest-netns", "g", "--allow", "example.com"],
                "bad --allow \"example.com\": expected an IP address, as a.b.c.d/n or x:y::/n",
            ),
            (
                &["--guest-netns", "g", "--deny", "10.0.0.0/33"],
                "bad --deny \"10.0.0.0/33\": prefix length must be 0..=32 (IPv4) or 0..=128 (IPv6)",
            ),
            (
                &[
                    "--guest-netns",
                    "g",
                    "--deny",
                    "10.0.0.0/8",
                    "--allow",
                    "10.0.0.0/8",
                ],
                "bad --allow \"10.0.0.0/8\": both --allow and --deny for 10.0.0.0/8",
            ),
            (&["--guest-netns", "g", "--deny"], "--deny needs a value"),
        ] {
            assert_eq!(attach(bad).unwrap_err().to_string(), msg, "{bad:?}");
        }
    }

    #[test]
    fn threads_are_parsed() {
        let a = attach(&["--guest-netns", "g", "--threads", "one"]).unwrap();
        assert_eq!(a.threads, Threads::One);
        let a = attach(&["--guest-netns", "g", "--threads=pipeline"]).unwrap();
        assert_eq!(a.threads, Threads::Pipeline);
        assert_eq!(
            attach(&["--guest-netns", "g"]).unwrap().threads,
            Threads::DEFAULT
        );
        let a = attach(&["--guest-netns", "g", "--queues", "2", "--threads", "pairs"]).unwrap();
        assert_eq!(a.threads, Threads::Pairs);
        let a = attach(&[
            "--guest-netns",
            "g",
            "--guest-netns",
            "g2",
            "--threads=pairs",
        ])
        .unwrap();
        assert_eq!(a.threads, Threads::Pairs);
        for bad in [
            &["--guest-netns", "g", "--threads", "pairs"][..],
            &["--guest-netns", "g", "--threads", "two"],
            &["--guest-netns", "g", "--threads"],
            &["--guest-netns", "g", "--threads", "one", "--threads", "one"],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn queues_are_parsed_and_refused_where_no_loop_drives_pairs_but_taken_over_vhost_user() {
        assert_eq!(attach(&["--guest-netns", "g"]).unwrap().queues, 1);
        let a = attach(&["--guest-netns", "g", "--queues", "2"]).unwrap();
        assert_eq!(a.queues, 2);
        let a = attach(&["--guest-netns", "g", "--queues=4", "--guest-netns", "g2"]).unwrap();
        assert_eq!((a.queues, a.more_guest_netns.len()), (4, 1));
        // One pair is what every mode runs.
        let a = attach(&[
            "--guest-netns",
            "g",
            "--queues",
            "1",
            "--threads",
            "pipeline",
        ]);
        assert_eq!(a.unwrap().queues, 1);
        for bad in [
            &["--guest-netns", "g", "--queues", "0"][..],
            &["--guest-netns", "g", "--queues", "5"],
            &["--guest-netns", "g", "--queues", "two"],
            &["--guest-netns", "g", "--queues"],
            &["--guest-netns", "g", "--queues", "2", "--queues", "2"],
            &[
                "--guest-netns",
                "g",
                "--queues",
                "2",
                "--threads",
                "pipeline",
            ],
            &[
                "--guest-netns",
                "g",
                "--queues",
                "2",
                "--static-guest-ip",
                "192.168.64.9",
            ],
            &[
                "--guest-netns",
                "g",
                "--guest-netns",
                "g2",
                "--vhost-user",
                "/tmp/s",
            ],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
        // The vhost-user frontend drives several pairs of its one guest.
        let a = attach(&[
            "--guest-netns",
            "g",
            "--queues",
            "2",
            "--vhost-user",
            "/tmp/s",
        ])
        .unwrap();
        assert_eq!((a.queues, a.vhost_user.is_some()), (2, true));
    }

    #[test]
    fn address_pair_flags_are_parsed() {
        let a = attach(&[
            "--guest-netns",
            "g",
            "--tun-addr",
            "10.1.0.1",
            "--external-addr=10.1.0.2",
        ])
        .unwrap();
        assert_eq!(a.tun_addr, Some(Ipv4Addr::new(10, 1, 0, 1)));
        assert_eq!(a.external_addr, Some(Ipv4Addr::new(10, 1, 0, 2)));
        let a = attach(&["--guest-netns", "g"]).unwrap();
        assert_eq!((a.tun_addr, a.external_addr), (None, None));
        for bad in [
            &["--guest-netns", "g", "--tun-addr", "x"][..],
            &["--guest-netns", "g", "--external-addr"],
            &[
                "--guest-netns",
                "g",
                "--external-addr",
                "10.1.0.2",
                "--external-addr",
                "10.1.0.3",
            ],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vhost_user_is_parsed_and_bridge_options_refused() {
        let a = attach(&[
            "--guest-netns",
            "g",
            "--host-netns",
            "h",
            "--mtu",
            "1500",
            "--no-offload",
            "--vhost-user",
            "/run/x.sock",
        ])
        .unwrap();
        assert_eq!(a.vhost_user, Some(PathBuf::from("/run/x.sock")));
        assert!(!a.offloads);
        assert_eq!(attach(&["--guest-netns", "g"]).unwrap().vhost_user, None);
        for (extra, key) in [
            (&["--forward", "tcp:80:80"][..], "--forward"),
            (&["--dns-upstream", "198.18.0.2"], "--dns-upstream"),
            (&["--tun-name", "x"], "--tun-name"),
            (&["--static-guest-ip", "192.168.64.9"], "--static-guest-ip"),
            (&["--tun-addr", "10.0.0.1"], "--tun-addr"),
            (&["--external-addr", "10.0.0.2"], "--external-addr"),
            (&["--threads", "one"], "--threads"),
            (&["--no-ipv6"], "--no-ipv6"),
            (&["--allow", "169.254.0.0/16"], "--allow"),
            (&["--deny", "10.0.0.0/8"], "--deny"),
        ] {
            let mut args = vec!["--guest-netns", "g", "--vhost-user", "s"];
            args.extend_from_slice(extra);
            let e = attach(&args).expect_err(&format!("{args:?} accepted"));
            assert!(e.0.starts_with(key) && e.0.contains("--vhost-user"), "{e}");
        }
        for bad in [
            &["--guest-netns", "g", "--vhost-user"][..],
            &["--guest-netns", "g", "--vhost-user", ""],
            &[
                "--guest-netns",
                "g",
                "--vhost-user",
                "a",
                "--vhost-user",
                "b",
            ],
        ] {
            assert!(attach(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ipv6_forwards_are_their_own_family() {
        let a = attach(&[
            "--guest-netns",
            "g",
            "--forward",
            "tcp:8080:80",
            "--forward",
            "tcp6:8080:80",
        ])
        .unwrap();
        assert_eq!(
            a.forwards.iter().map(|f| f.ipv6).collect::<Vec<_>>(),
            [false, true]
        );
        for bad in [
            &["--guest-netns", "g", "--forward", "tcp6:1:2", "--no-ipv6"][..],
            &[
                "--guest-netns",
                "g",
                "--forward",
                "udp6:1:2",
                "--forward",
                "udp6:1:3",
            ],
            &["--guest-netns", "g", "--forward", "tcp6:1:fd64::2:3"],
        ] {
            assert!(attach(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn defaults_apply() {
        let a = attach(&["--guest-netns", "g"]).unwrap();
        assert_eq!(a.mtu, 1500);
        assert_eq!(a.host_netns, None);
        assert!(a.forwards.is_empty());
        assert_eq!(a.dns_upstream, None);
    }

    #[test]
    fn guest_netns_given_again_adds_guests_of_one_network() {
        let a = attach(&[
            "--guest-netns",
            "g1",
            "--guest-netns",
            "g2",
            "--guest-netns=g3",
        ])
        .unwrap();
        assert_eq!(a.guest_netns, "g1");
        assert_eq!(a.more_guest_netns, ["g2", "g3"]);
        assert!(
            attach(&["--guest-netns", "g"])
                .unwrap()
                .more_guest_netns
                .is_empty()
        );
        let nine: Vec<String> = (0..=MAX_GUESTS)
            .flat_map(|i| ["--guest-netns".to_owned(), format!("g{i}")])
            .collect();
        let e = attach(&nine.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_err();
        assert!(e.0.contains("at most 8"), "{e}");
        for (extra, key) in [
            (&["--threads", "pipeline"][..], "--threads pipeline"),
            (&["--static-guest-ip", "192.168.64.9"], "--static-guest-ip"),
            (&["--vhost-user", "/tmp/s"], "--vhost-user"),
        ] {
            let mut args = vec!["--guest-netns", "g1", "--guest-netns", "g2"];
            args.extend_from_slice(extra);
            let e = attach(&args).unwrap_err();
            assert!(e.0.contains(key) && e.0.contains("more than one"), "{e}");
        }
        // One guest keeps every option.
        assert!(attach(&["--guest-netns", "g", "--threads", "pipeline"]).is_ok());
    }

    #[test]
    fn bad_arguments_are_refused_with_the_value() {
        for bad in [
            &["--host-netns", "h"][..],
            &["--guest-netns"],
            &["--guest-netns", "g", "--mtu", "67"],
            &["--guest-netns", "g", "--mtu", "65521"],
            &["--guest-netns", "g", "--mtu", "x"],
            &["--guest-netns", "g", "--forward", "icmp:1:2"],
            &["--guest-netns", "g", "--forward", "tcp:0:2"],
            &["--guest-netns", "g", "--forward", "tcp:80"],
            &["--guest-netns", "g", "--forward", "tcp:80:99999"],
            &[
                "--guest-netns",
                "g",
                "--forward",
                "tcp:80:1",
                "--forward",
                "tcp:80:2",
            ],
            &["--guest-netns", "g", "--dns-upstream", "dns.example"],
            &["--guest-netns", "g", "--dns-upstream", "[2001:db8::2]:0"],
            &["--guest-netns", "g", "--bogus"],
            &["--guest-netns", "g", "--guest-netns", "g"],
            &["--guest-netns", "a/b"],
            &["--guest-netns", "g", "--offload"],
        ] {
            let e = attach(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(!e.0.contains('\n'), "{e}");
        }
        assert!(parse_args::<&str>(&[]).is_err());
        assert!(parse_args(&["detach"]).is_err());
    }

    #[test]
    fn help_is_recognised() {
        assert_eq!(parse_args(&["--help"]), Ok(Invocation::Help));
        assert_eq!(
            parse_args(&["attach", "--guest-netns", "g", "-h"]),
            Ok(Invocation::Help)
        );
    }

    #[test]
    fn upstream_defaults_to_port_53() {
        assert_eq!(
            parse_upstream("198.18.0.2"),
            Ok("198.18.0.2:53".parse().unwrap())
        );
        assert!(parse_upstream("198.18.0.2:0").is_err());
    }
}
