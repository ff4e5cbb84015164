//! The command line (platform-free, so it is tested on every host).
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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
    /// `--print-config`: print this effective configuration (TOML) and exit.
    PrintConfig(String),
    /// Internal: the privileged helper of `--host-setup` (started by the daemon itself, before it
    /// drops privileges; not for users).
    HostSetupHelper(HelperArgs),
    /// `hostnetd ctl ...`: the control client (its arguments).
    Ctl(Vec<String>),
}

/// What the daemon tells its `--host-setup` helper
/// (`--host-setup-helper PID EXTERNAL TUN [EXTERNAL6]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HelperArgs {
    /// The daemon's process id (names the nftables table).
    pub(crate) pid: u32,
    /// The NAT's external address (the masqueraded source).
    pub(crate) external: Ipv4Addr,
    /// The daemon's TUN (never masqueraded towards).
    pub(crate) tun: String,
    /// NAT66's external address, with IPv6 on (without it nothing IPv6 is touched).
    pub(crate) external6: Option<Ipv6Addr>,
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
    /// IPv6 port forwards (`tcp6:`/`udp6:`) from NAT66's external address into the guest.
    pub(crate) forwards6: Vec<bridge::PortForward6>,
    /// Upstream of the gateway's DNS forwarder; `None`: chosen from the host's resolver
    /// configuration ([`bridge::ResolverPaths::choose_upstream`]).
    pub(crate) dns_upstream: Option<SocketAddr>,
    /// Name (pattern) of the TUN device.
    pub(crate) tun_name: String,
    /// Offer checksum and TCP (v4 and v6) segmentation offloads to the guest (TUN with virtio-net
    /// headers).
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
    /// `--host-setup`: enable forwarding and masquerade the external address(es) in this
    /// namespace for the daemon's lifetime (IPv6 too unless `--no-ipv6`).
    pub(crate) host_setup: bool,
    /// `--guest-multicast`: broadcast and multicast between guests
    /// (`bridge::Network::set_guest_multicast`).
    pub(crate) guest_multicast: bool,
    /// The control socket (`--control`; default: the socket's path plus `.ctl`).
    pub(crate) control: PathBuf,
    /// `control` was not given: a control socket that cannot be made is a warning, not an
    /// error (a socket path near the 107-byte limit has no room for `.ctl`).
    pub(crate) control_default: bool,
    /// Serve the Prometheus metrics over HTTP on this TCP address in the namespace
    /// (`--metrics`).
    pub(crate) metrics: Option<std::net::SocketAddr>,
    /// Logs as JSON lines (`--log-format json`) instead of text.
    pub(crate) log_json: bool,
    /// Frontends served at once (`--max-guests`), each a port of the one network; more are
    /// refused.
    pub(crate) max_guests: usize,
    /// Queue pairs each guest's device offers (`--queues`, 1 to [`MAX_QUEUES`]): with more
    /// than one, virtio-net multiqueue with its control queue, the vhost-user `MQ` protocol
    /// feature and a TUN with as many queues.
    pub(crate) queues: u16,
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

/// The control socket's path for a vhost-user socket path when `--control` is not given:
/// `<socket>.ctl`.
pub(crate) fn default_control_path(socket: &std::path::Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".ctl");
    PathBuf::from(s)
}

/// Parses the arguments after the program name (reading `--config FILE` if given).
pub(crate) fn parse_args<S: AsRef<str>>(args: &[S]) -> Result<Invocation, ArgError> {
    if args.first().map(AsRef::as_ref) == Some(HELPER_FLAG) {
        return parse_helper(&args[1..]).map(Invocation::HostSetupHelper);
    }
    if args.first().map(AsRef::as_ref) == Some("ctl") {
        return Ok(Invocation::Ctl(
            args[1..].iter().map(|a| a.as_ref().to_owned()).collect(),
        ));
    }
    let Some(cl) = parse_flags(args)? else {
        return Ok(Invocation::Help);
    };
    let file = match &cl.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| ArgError(format!("--config {}: {e}", path.display())))?;
            parse_config(&text)
                .map_err(|e| ArgError(format!("--config {}: {e}", path.display())))?
        }
        None => Settings::default(),
    };
    let settings = cl.settings.over(file);
    if cl.print_config {
        return Ok(Invocation::PrintConfig(settings.effective()?));
    }
    settings.finish().map(|a| Invocation::Serve(Box::new(a)))
}

/// Parses a configuration file's text (TOML; the keys are the long options without `--`).
///
/// # Errors
/// Bad TOML, a value of the wrong type, or an unknown key (named in the message).
pub(crate) fn parse_config(text: &str) -> Result<Settings, ArgError> {
    toml::from_str::<Settings>(text).map_err(|e| {
        // One line: "line N (<its text>): <what>", so a bad value's key is named too.
        let at = e.span().map(|s| s.start.min(text.len()));
        match at {
            Some(at) => {
                let n = text[..at].matches('\n').count() + 1;
                let src = text.lines().nth(n - 1).unwrap_or("").trim();
                ArgError(format!("line {n} ({src}): {}", e.message()))
            }
            None => ArgError(e.message().to_owned()),
        }
    })
}

/// What the command line says besides the settings.
#[derive(Debug, Default)]
struct CommandLine {
    settings: Settings,
    config: Option<PathBuf>,
    print_config: bool,
}

/// Every setting, each optional: from the command line or a `--config` file (TOML, the long
/// options' names as keys; `--no-offload` is `offload = false`, `--no-ipv6` is `ipv6 = false`, `--no-sandbox` is
/// `sandbox = false`; `forward`, `deny`, `allow` are lists). Values are checked by
/// [`Settings::finish`], the same way for both sources.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    socket: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtu: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    forward: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns_upstream: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tun_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offload: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv6: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deny: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tun_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socket_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sandbox_selftest: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    host_setup: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    control: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_guests: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    guest_multicast: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queues: Option<u32>,
}

/// `socket-mode` in a file: `"0660"` (as on the command line) or a TOML integer (`0o660`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
enum Mode {
    Number(u32),
    Text(String),
}

impl Settings {
    /// These settings, each falling back to `file`'s where not set (a list given on the command
    /// line replaces the file's list).
    fn over(self, file: Settings) -> Settings {
        Settings {
            socket: self.socket.or(file.socket),
            mtu: self.mtu.or(file.mtu),
            mac: self.mac.or(file.mac),
            forward: self.forward.or(file.forward),
            dns_upstream: self.dns_upstream.or(file.dns_upstream),
            tun_name: self.tun_name.or(file.tun_name),
            offload: self.offload.or(file.offload),
            ipv6: self.ipv6.or(file.ipv6),
            deny: self.deny.or(file.deny),
            allow: self.allow.or(file.allow),
            tun_addr: self.tun_addr.or(file.tun_addr),
            external_addr: self.external_addr.or(file.external_addr),
            user: self.user.or(file.user),
            group: self.group.or(file.group),
            socket_mode: self.socket_mode.or(file.socket_mode),
            socket_group: self.socket_group.or(file.socket_group),
            sandbox: self.sandbox.or(file.sandbox),
            sandbox_selftest: self.sandbox_selftest.or(file.sandbox_selftest),
            host_setup: self.host_setup.or(file.host_setup),
            control: self.control.or(file.control),
            metrics: self.metrics.or(file.metrics),
            log_format: self.log_format.or(file.log_format),
            max_guests: self.max_guests.or(file.max_guests),
            guest_multicast: self.guest_multicast.or(file.guest_multicast),
            queues: self.queues.or(file.queues),
        }
    }

    /// Checks every value and fills in the defaults.
    ///
    /// # Errors
    /// The first bad value, named by its option.
    fn finish(self) -> Result<Args, ArgError> {
        let mtu = match self.mtu {
            Some(m) => parse_mtu(&m.to_string())?,
            None => DEFAULT_MTU,
        };
        let mac = match &self.mac {
            Some(v) => parse_mac(v)?,
            None => DEFAULT_MAC,
        };
        let mut forwards: Vec<PortForward> = Vec::new();
        let mut forwards6: Vec<bridge::PortForward6> = Vec::new();
        for v in self.forward.iter().flatten() {
            let spec = parse_forward_spec(v)?;
            if spec.ipv6 {
                let f = spec.to_port_forward6();
                if self.ipv6 == Some(false) {
                    return Err(ArgError(format!(
                        "--forward {v:?} is IPv6 but --no-ipv6 is given"
                    )));
                }
                if forwards6
                    .iter()
                    .any(|o| o.protocol == f.protocol && o.external_port == f.external_port)
                {
                    return Err(ArgError(format!(
                        "--forward external port {} ({:?}, IPv6) given twice",
                        f.external_port, f.protocol
                    )));
                }
                forwards6.push(f);
                continue;
            }
            let f = spec.to_port_forward(FIRST_GUEST_ADDR);
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
        let dns_upstream = self
            .dns_upstream
            .as_deref()
            .map(parse_upstream)
            .transpose()?;
        let tun_name = match self.tun_name {
            Some(v) => {
                if v.is_empty() || v.len() > MAX_IFNAME || v.contains(['/', ' ', '\0']) {
                    return Err(ArgError(format!("bad --tun-name {v:?}")));
                }
                v
            }
            None => DEFAULT_TUN_NAME.to_owned(),
        };
        let mut egress = EgressPolicy::default();
        for v in self.deny.iter().flatten() {
            add_rule(&mut egress, "--deny", v, EgressAction::Deny)?;
        }
        for v in self.allow.iter().flatten() {
            add_rule(&mut egress, "--allow", v, EgressAction::Allow)?;
        }
        let addr =
            |key: &str, v: &Option<String>| v.as_deref().map(|v| parse_ipv4(key, v)).transpose();
        let principal =
            |key: &str, v: Option<String>| v.map(|v| parse_principal(key, &v)).transpose();
        let user = principal("--user", self.user)?;
        let group = principal("--group", self.group)?;
        if group.is_some() && user.is_none() {
            return Err(ArgError("--group needs --user".into()));
        }
        let socket_mode = match self.socket_mode {
            Some(Mode::Text(t)) => parse_mode(&t)?,
            Some(Mode::Number(n)) if n <= 0o777 => n,
            Some(Mode::Number(n)) => {
                return Err(ArgError(format!(
                    "bad --socket-mode {n:#o}: expected octal permission bits, at most 0777"
                )));
            }
            None => DEFAULT_SOCKET_MODE,
        };
        let socket = self
            .socket
            .ok_or_else(|| ArgError("--socket <path> is required".into()))?;
        let control_default = self.control.is_none();
        let control = match self.control {
            Some(c) if c.as_os_str().is_empty() => {
                return Err(ArgError("bad --control \"\": expected a path".into()));
            }
            Some(c) => c,
            None => default_control_path(&socket),
        };
        if control == socket {
            return Err(ArgError(format!(
                "--control {} is the vhost-user socket",
                control.display()
            )));
        }
        let metrics = self
            .metrics
            .as_deref()
            .map(|v| {
                v.parse::<std::net::SocketAddr>()
                    .map_err(|_| ArgError(format!("bad --metrics {v:?}: expected <ip>:<port>")))
            })
            .transpose()?;
        let log_json = match self.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(v) => {
                return Err(ArgError(format!(
                    "bad --log-format {v:?}: expected text or json"
                )));
            }
        };
        let max_guests = match self.max_guests {
            None => DEFAULT_MAX_GUESTS,
            Some(n) if (1..=MAX_GUESTS_LIMIT).contains(&n) => n as usize,
            Some(n) => {
                return Err(ArgError(format!(
                    "bad --max-guests {n}: expected 1 to {MAX_GUESTS_LIMIT}"
                )));
            }
        };
        let queues = match self.queues {
            None => 1,
            Some(n) if (1..=u32::from(MAX_QUEUES)).contains(&n) => n as u16,
            Some(n) => {
                return Err(ArgError(format!(
                    "bad --queues {n}: expected 1 to {MAX_QUEUES}"
                )));
            }
        };
        Ok(Args {
            socket,
            mtu,
            mac,
            forwards,
            forwards6,
            dns_upstream,
            tun_name,
            offload: self.offload.unwrap_or(true),
            egress,
            ipv6: self.ipv6.unwrap_or(true),
            tun_addr: addr("--tun-addr", &self.tun_addr)?,
            external_addr: addr("--external-addr", &self.external_addr)?,
            user,
            group,
            socket_mode,
            socket_group: principal("--socket-group", self.socket_group)?,
            sandbox: self.sandbox.unwrap_or(true),
            sandbox_selftest: self.sandbox_selftest.unwrap_or(false),
            host_setup: self.host_setup.unwrap_or(false),
            control,
            control_default,
            metrics,
            log_json,
            max_guests,
            guest_multicast: self.guest_multicast.unwrap_or(false),
            queues,
        })
    }

    /// The effective configuration as a file would say it: every setting, defaults filled in,
    /// values checked (`--print-config`).
    ///
    /// # Errors
    /// As [`Settings::finish`].
    fn effective(self) -> Result<String, ArgError> {
        let a = self.clone().finish()?;
        let full = Settings {
            socket: Some(a.socket),
            mtu: Some(u32::from(a.mtu)),
            mac: Some(a.mac.to_string()),
            forward: Some(self.forward.unwrap_or_default()),
            dns_upstream: a.dns_upstream.map(|d| d.to_string()),
            tun_name: Some(a.tun_name),
            offload: Some(a.offload),
            ipv6: Some(a.ipv6),
            deny: Some(self.deny.unwrap_or_default()),
            allow: Some(self.allow.unwrap_or_default()),
            tun_addr: a.tun_addr.map(|x| x.to_string()),
            external_addr: a.external_addr.map(|x| x.to_string()),
            user: a.user,
            group: a.group,
            socket_mode: Some(Mode::Text(format!("{:04o}", a.socket_mode))),
            socket_group: a.socket_group,
            sandbox: Some(a.sandbox),
            sandbox_selftest: Some(a.sandbox_selftest),
            host_setup: Some(a.host_setup),
            // The default (the socket's path plus `.ctl`) is left out: named, a control socket
            // that cannot be made is an error instead of a warning.
            control: (!a.control_default).then_some(a.control),
            metrics: a.metrics.map(|m| m.to_string()),
            log_format: Some(if a.log_json { "json" } else { "text" }.to_owned()),
            max_guests: u32::try_from(a.max_guests).ok(),
            guest_multicast: Some(a.guest_multicast),
            queues: Some(u32::from(a.queues)),
        };
        toml::to_string(&full).map_err(|e| ArgError(format!("printing the configuration: {e}")))
    }
}

/// Collects the command line's settings (values unchecked: [`Settings::finish`] checks them);
/// `None` for `--help`.
fn parse_flags<S: AsRef<str>>(args: &[S]) -> Result<Option<CommandLine>, ArgError> {
    let mut cl = CommandLine::default();
    let s = &mut cl.settings;
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
            "-h" | "--help" => return Ok(None),
            "--no-offload" | "--no-ipv6" | "--no-sandbox" | "--sandbox-selftest"
            | "--host-setup" | "--guest-multicast" | "--print-config" => {
                if inline.is_some() {
                    return Err(ArgError(format!("{key} takes no value")));
                }
                match key {
                    "--no-offload" => set_once(&mut s.offload, key, false)?,
                    "--no-ipv6" => set_once(&mut s.ipv6, key, false)?,
                    "--no-sandbox" => set_once(&mut s.sandbox, key, false)?,
                    "--host-setup" => set_once(&mut s.host_setup, key, true)?,
                    "--guest-multicast" => set_once(&mut s.guest_multicast, key, true)?,
                    "--sandbox-selftest" => set_once(&mut s.sandbox_selftest, key, true)?,
                    _ if cl.print_config => return Err(ArgError(format!("{key} given twice"))),
                    _ => cl.print_config = true,
                }
            }
            "--config" => set_once(&mut cl.config, key, PathBuf::from(value()?))?,
            "--user" => set_once(&mut s.user, key, value()?)?,
            "--group" => set_once(&mut s.group, key, value()?)?,
            "--socket-group" => set_once(&mut s.socket_group, key, value()?)?,
            "--socket-mode" => set_once(&mut s.socket_mode, key, Mode::Text(value()?))?,
            "--socket" => set_once(&mut s.socket, key, PathBuf::from(value()?))?,
            "--mtu" => {
                let v = value()?;
                // Out of range or not a number: the same message as a bad value in range.
                let m = v.parse::<u32>().map_err(|_| bad_mtu(&v))?;
                set_once(&mut s.mtu, key, m)?;
                parse_mtu(&v)?;
            }
            "--mac" => set_once(&mut s.mac, key, value()?)?,
            "--forward" => s.forward.get_or_insert_with(Vec::new).push(value()?),
            "--dns-upstream" => set_once(&mut s.dns_upstream, key, value()?)?,
            "--deny" => s.deny.get_or_insert_with(Vec::new).push(value()?),
            "--allow" => s.allow.get_or_insert_with(Vec::new).push(value()?),
            "--tun-addr" => set_once(&mut s.tun_addr, key, value()?)?,
            "--external-addr" => set_once(&mut s.external_addr, key, value()?)?,
            "--tun-name" => set_once(&mut s.tun_name, key, value()?)?,
            "--control" => set_once(&mut s.control, key, PathBuf::from(value()?))?,
            "--metrics" => set_once(&mut s.metrics, key, value()?)?,
            "--log-format" => set_once(&mut s.log_format, key, value()?)?,
            "--max-guests" => {
                let v = value()?;
                let n = v.parse::<u32>().map_err(|_| {
                    ArgError(format!(
                        "bad --max-guests {v:?}: expected 1 to {MAX_GUESTS_LIMIT}"
                    ))
                })?;
                set_once(&mut s.max_guests, key, n)?;
            }
            "--queues" => {
                let v = value()?;
                let n = v.parse::<u32>().map_err(|_| {
                    ArgError(format!("bad --queues {v:?}: expected 1 to {MAX_QUEUES}"))
                })?;
                set_once(&mut s.queues, key, n)?;
            }
            other => return Err(ArgError(format!("unknown argument {other:?} (try --help)"))),
        }
    }
    Ok(Some(cl))
}

/// The helper's arguments: `PID EXTERNAL TUN`.
fn parse_helper<S: AsRef<str>>(args: &[S]) -> Result<HelperArgs, ArgError> {
    let bad = || {
        ArgError(format!(
            "{HELPER_FLAG} is internal: it takes PID EXTERNAL TUN [EXTERNAL6]"
        ))
    };
    let (pid, external, tun, external6) = match args {
        [pid, external, tun] => (pid, external, tun, None),
        [pid, external, tun, external6] => (pid, external, tun, Some(external6)),
        _ => return Err(bad()),
    };
    Ok(HelperArgs {
        pid: pid.as_ref().parse().map_err(|_| bad())?,
        external: external.as_ref().parse().map_err(|_| bad())?,
        tun: tun.as_ref().to_owned(),
        external6: external6
            .map(|a| a.as_ref().parse())
            .transpose()
            .map_err(|_| bad())?,
    })
}

fn parse_mac(v: &str) -> Result<MacAddr, ArgError> {
    let m: MacAddr = v
        .parse()
        .map_err(|_| ArgError(format!("bad --mac {v:?}: expected xx:xx:xx:xx:xx:xx")))?;
    if m.is_multicast() {
        return Err(ArgError(format!("bad --mac {v:?}: multicast address")));
    }
    Ok(m)
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

/// Parses `tcp|udp:<external port>:<guest port>`, `tcp|udp:<external port>:<guest ip>:<guest port>`
/// or `tcp6|udp6:<external port>:[<guest ip>:]<guest port>` ([`bridge::ForwardSpec`]); without
/// a guest address an IPv4 rule targets the first DHCP address, an IPv6 one every guest's learned
/// address (the last learned has it); with one, the guest holding that IPv4 address.
fn parse_forward_spec(s: &str) -> Result<ForwardSpec, ArgError> {
    s.parse::<ForwardSpec>()
        .map_err(|e| ArgError(format!("bad --forward {s:?}: {e}")))
}

/// Parses `A[:port]`, `V6` or `[V6]:port` (port default 53): [`bridge::parse_dns_upstream`].
pub(crate) fn parse_upstream(s: &str) -> Result<SocketAddr, ArgError> {
    bridge::parse_dns_upstream(s).map_err(ArgError)
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
        _ => Err(bad_mtu(v)),
    }
}

fn bad_mtu(v: &str) -> ArgError {
    ArgError(format!("bad --mtu {v:?}: must be {MIN_MTU}..={MAX_MTU}"))
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
    hostnetd --socket <path> [--mtu N] [--mac M] [--forward tcp|udp|tcp6|udp6:<ext>:<guest>]...
             [--dns-upstream addr[:port]] [--tun-name NAME] [--no-offload]
             [--deny CIDR]... [--allow CIDR]...
             [--tun-addr A] [--external-addr B] [--no-ipv6]
             [--user U [--group G]] [--socket-mode MODE] [--socket-group G] [--no-sandbox]
             [--host-setup] [--control PATH] [--metrics ADDR] [--log-format text|json]
             [--max-guests N] [--guest-multicast] [--queues N] [--config FILE] [--print-config]
    hostnetd ctl [--control PATH | --socket PATH] [--json] COMMAND   (hostnetd ctl --help)

Listens on the unix socket <path> for a vhost-user frontend (QEMU: -chardev socket,path=<path>
-netdev vhost-user; Cloud Hypervisor: --net vhost_user=true,socket=<path>), creates a TUN in the
network namespace it runs in (host 100.64.0.1 peer 100.64.0.2, the NAT's external address; if
the namespace already uses either, the next free pair 100.64.0.3/.4, ... of 100.64.0.0/24), and
gives the TUN fd64:ffff::1/64 too (NAT66's external address fd64:ffff::2; if taken, the next
free fd64:ffff::k:1/112 and ::k:2; none with --no-ipv6), and prints
`ready socket=<path> tun=<name> gateway=192.168.64.1 external=<IPv4> external6=<IPv6> gateway6=fd64::1`
(without the last two fields with --no-ipv6) on stdout once listening. It serves up to --max-guests frontends
at once, each a port of one network (one gateway, NAT and TUN; guest to guest switched
directly): the first gets the MAC --mac and 192.168.64.2, the next free port --mac plus its
index (52:54:00:12:34:57) and the next free address (a MAC seen before gets its address again);
a frontend beyond the limit is refused (logged). When a frontend disconnects its port is free
for the next one. SIGTERM or SIGINT stops it (exit status 0); SIGUSR1
logs the connection's counters, drop causes and NAT drop reasons by name (also logged when a
frontend disconnects). If its TUN fails (deleted underneath with `ip link del`), with or without
a frontend, it logs an error naming the TUN, closes the connection and exits with status 1
(bad arguments, or a --tun-addr/--external-addr already in use: 2). Logs go to stderr (RUST_LOG
filters them, default info). Without --host-setup it does not enable IP forwarding or touch the
firewall: the namespace's administrator does that. With --host-setup it does both itself for as
long as it runs (see the option), so the guest reaches whatever the namespace's default route leads
to.

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
                             of the first guest, 192.168.64.2 (P:E:IP:G for another guest's
                             address, tcp:8080:192.168.64.3:80; repeatable). tcp6|udp6:E:G
                             forwards port E on NAT66's external address (fd64:ffff::2) to the
                             guest's global IPv6 address the gateway learned (its EUI-64 SLAAC
                             address if it uses it, else its first); tcp/udp stay IPv4 only, so
                             a port opens on a family only where named (both: give both)
    --dns-upstream <A[:p]>   upstream of the gateway's DNS forwarder, IPv4 (A or A:port) or
                             IPv6 (V6 or [V6]:port), for queries to 192.168.64.1 and fd64::1
                             (default: the first non-loopback IPv4 nameserver of
                             /etc/resolv.conf; if that names only systemd-resolved's stub
                             127.0.0.53, of /run/systemd/resolve/resolv.conf; then the same
                             for IPv6 (not link-local); with none usable a warning, and the
                             gateway answers DNS with REFUSED)
    --tun-name <NAME>        TUN device name, %d picks a free number (default hostnetd%d)
    --tun-addr <A>           the TUN's host address (default: chosen, see above)
    --external-addr <B>      the NAT's external address, the TUN's peer (default: chosen); an
                             explicit address the namespace already uses is an error (exit 2)
    --no-offload             offer no checksum/TSO offloads to the guest: every frame is at most
                             the MTU and fully checksummed, the TUN carries plain IP packets
                             (default: offer CSUM, GUEST_CSUM, HOST_TSO4, GUEST_TSO4, HOST_TSO6,
                             GUEST_TSO6 and open the TUN with virtio-net headers so the host
                             kernel segments and checksums)
    --deny <CIDR>            drop the guest's packets to CIDR (a.b.c.d/n or x:y::/n) and answer
                             them with ICMP(v6) administratively prohibited (repeatable)
    --allow <CIDR>           let the guest reach CIDR (repeatable); the longest matching prefix
                             of all rules wins, as in a routing table; no match: allowed.
                             169.254.0.0/16, fd00:ec2::254 and fd20:ce::254 (cloud metadata)
                             are denied unless a rule for it or a
                             longer prefix (--allow 169.254.169.254/32) says otherwise; the
                             gateway and the NAT's external address are never subject to rules
    --no-ipv6                the gateway does not serve IPv6 (default: Router Advertisements for
                             SLAAC in fd64::/64, router fe80::1, DNS fd64::1 by RA and stateless
                             DHCPv6, Neighbor Discovery and ping for fe80::1 and fd64::1; NAT66
                             beyond the gateway to fd64:ffff::2, the TUN fd64:ffff::1/64)
    --user <U>               user (name or uid) to run as after set-up (default: nobody when
                             started as root, unless --no-sandbox; `--user root` stays root)
    --group <G>              group to run as after set-up (default: the user's primary group)
    --socket-mode <MODE>     socket file permission bits, octal (default 0600)
    --socket-group <G>       the socket file's group (default: the group run as), e.g. with
                             --socket-mode 0660 for a frontend in that group
    --no-sandbox             no no_new_privs, no seccomp filter, no switch to nobody unless
                             --user is given (debugging only)
    --host-setup             in the network namespace hostnetd runs in: enable IPv4 forwarding
                             (net.ipv4.ip_forward) and masquerade the NAT's external address on
                             every interface but its TUN (towards the default route), in an
                             nftables table of its own (ip hostnetd-<pid>); with IPv6 also
                             net.ipv6.conf.all.forwarding (interfaces with accept_ra=1 then stop
                             accepting RAs) and the NAT66 external address (ip6 hostnetd-<pid>);
                             a helper process started before the privilege drop removes the
                             tables and restores forwarding when hostnetd exits, also when it is
                             killed. Needs
                             CAP_NET_ADMIN, nf_tables and the nft program (Debian: nftables);
                             without them it exits with status 2
    --control <PATH>         the control socket (unix, mode 0600, owned like the vhost-user
                             socket; default: <socket>.ctl): JSON requests for stats, guests,
                             flows, port forwards added and removed at runtime, the log filter
                             and metrics (docs/control.md; client: hostnetd ctl)
    --metrics <ADDR>         also serve the Prometheus metrics over HTTP on this TCP address
                             (ip:port) in the network namespace hostnetd runs in
    --log-format <F>         text (default) or json: one JSON object per log line
    --max-guests <N>         frontends served at once, 1..=253 (default 8); more are refused
    --guest-multicast        guests' broadcast and multicast that the gateway does not serve
                             (mDNS, SSDP, subnet broadcasts, IPv6 UDP to a group) go to every
                             other guest (default: dropped and counted)
    --queues <N>             queue pairs each guest's device offers, 1..=4 (default 1). With
                             more, virtio-net multiqueue (MQ and the control queue,
                             max_virtqueue_pairs N) and the vhost-user MQ protocol feature
                             (QEMU: -netdev vhost-user,...,queues=N and -device
                             virtio-net-pci,mq=on,...); the TUN gets N queues, pair i writes
                             and reads queue i (the kernel answers a flow on the queue that
                             wrote it), each pair on a worker thread of its own (the pairs
                             still take the one network lock in turn)
    --config <FILE>          read settings from a TOML file: the long options' names are its keys
                             (socket = \"/run/hn.sock\", mtu = 1500, forward = [\"tcp:8022:22\"],
                             deny = [...], allow = [...], offload = false for --no-offload,
                             ipv6 = false for --no-ipv6,
                             sandbox = false for --no-sandbox, host-setup = true, ...); an
                             option given on the command line wins over the file (a list given
                             there replaces the file's list); an unknown key is an error naming it
    --print-config           print the effective configuration (file and options, defaults filled
                             in) in the --config format and exit
    --sandbox-selftest       test only: after installing the filter, make one forbidden call
                             (socket(AF_INET)); the process must die of SIGSYS
    -h, --help               this text
";

/// Default guest MTU.
pub(crate) const DEFAULT_MTU: u16 = bridge::defaults::MTU;
const MIN_MTU: u16 = 68;
const MAX_MTU: u16 = 65_520;
/// Frontends served at once unless `--max-guests` says otherwise.
pub(crate) const DEFAULT_MAX_GUESTS: usize = 8;
/// The most `--max-guests` can be: the DHCP pool's addresses (.2 to .254).
const MAX_GUESTS_LIMIT: u32 = 253;
/// The most `--queues` can be.
pub(crate) const MAX_QUEUES: u16 = 4;
/// Default guest MAC (QEMU's customary first NIC address).
pub(crate) const DEFAULT_MAC: MacAddr = bridge::defaults::GUEST_MAC;
/// Default permission bits of the socket file: the owner only.
pub(crate) const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// Default TUN name pattern.
pub(crate) const DEFAULT_TUN_NAME: &str = "hostnetd%d";
/// The address the first guest leases (start of the DHCP pool); the default target of `--forward`.
pub(crate) const FIRST_GUEST_ADDR: Ipv4Addr = bridge::defaults::DHCP_POOL_FIRST;
const MAX_IFNAME: usize = 15;
/// The first argument that makes the binary the `--host-setup` helper.
pub(crate) const HELPER_FLAG: &str = "--host-setup-helper";

#[cfg(test)]
mod tests {
    use super::*;
    use nat::Protocol;
    use std::net::SocketAddrV4;

    fn serve(args: &[&str]) -> Result<Args, ArgError> {
        match parse_args(args)? {
            Invocation::Serve(a) => Ok(*a),
            other => Err(ArgError(format!("not serve: {other:?}"))),
        }
    }

    #[test]
    fn max_guests_defaults_to_8_and_is_checked_from_both_sources() {
        assert_eq!(serve(&["--socket", "s"]).unwrap().max_guests, 8);
        assert_eq!(
            serve(&["--socket", "s", "--max-guests", "3"])
                .unwrap()
                .max_guests,
            3
        );
        for bad in ["0", "254", "x", "-1"] {
            let e = serve(&["--socket", "s", "--max-guests", bad]).unwrap_err();
            assert!(e.0.contains("--max-guests"), "{e}");
        }
        assert!(serve(&["--socket", "s", "--max-guests", "2", "--max-guests", "2"]).is_err());
        assert_eq!(
            from_file("socket = \"s\"\nmax-guests = 2\n")
                .unwrap()
                .max_guests,
            2
        );
        assert!(from_file("socket = \"s\"\nmax-guests = 0\n").is_err());
        let printed = parse_config("socket = \"s\"\n")
            .unwrap()
            .effective()
            .unwrap();
        assert!(printed.contains("max-guests = 8"), "{printed}");
    }

    #[test]
    fn queues_default_to_1_and_are_checked_from_both_sources() {
        assert_eq!(serve(&["--socket", "s"]).unwrap().queues, 1);
        assert_eq!(
            serve(&["--socket", "s", "--queues", "4"]).unwrap().queues,
            4
        );
        for bad in ["0", "5", "x", "-1"] {
            let e = serve(&["--socket", "s", "--queues", bad]).unwrap_err();
            assert!(e.0.contains("--queues"), "{e}");
        }
        assert!(serve(&["--socket", "s", "--queues", "2", "--queues", "2"]).is_err());
        assert_eq!(from_file("socket = \"s\"\nqueues = 2\n").unwrap().queues, 2);
        assert!(from_file("socket = \"s\"\nqueues = 9\n").is_err());
        let printed = parse_config("socket = \"s\"\n")
            .unwrap()
            .effective()
            .unwrap();
        assert!(printed.contains("queues = 1"), "{printed}");
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
            "--host-setup",
        ])
        .unwrap();
        assert!(a.host_setup);
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
        for (v, want) in [
            ("2001:db8::2", "[2001:db8::2]:53"),
            ("[2001:db8::2]:5353", "[2001:db8::2]:5353"),
        ] {
            let a = serve(&["--socket", "s", "--dns-upstream", v]).unwrap();
            assert_eq!(a.dns_upstream, Some(want.parse().unwrap()), "{v}");
            let file = format!("socket = \"s\"\ndns-upstream = \"{v}\"\n");
            let a = from_file(&file).unwrap();
            assert_eq!(a.dns_upstream, Some(want.parse().unwrap()), "{v}");
        }
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
                "bad --allow \"1.2.3.4/8x\": prefix length must be 0..=32 (IPv4) or 0..=128 (IPv6)",
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
                "bad --allow \"1.0.0.0/8\": both --allow and --deny for 1.0.0.0/8",
            ),
        ] {
            assert_eq!(serve(bad).unwrap_err().to_string(), msg);
        }
    }

    #[test]
    fn ipv6_forwards_are_their_own_family() {
        let a = serve(&[
            "--socket",
            "s",
            "--forward",
            "tcp:8080:80",
            "--forward",
            "tcp6:8080:80",
        ])
        .unwrap();
        assert_eq!(a.forwards.len(), 1);
        assert_eq!(
            a.forwards6,
            [bridge::PortForward6 {
                protocol: Protocol::Tcp,
                external_port: 8080,
                guest_port: 80,
                guest: None,
            }]
        );
        for bad in [
            &["--socket", "s", "--forward", "tcp6:1:2", "--no-ipv6"][..],
            &[
                "--socket",
                "s",
                "--forward",
                "udp6:1:2",
                "--forward",
                "udp6:1:3",
            ],
            &["--socket", "s", "--forward", "tcp6:1:fd64::2:3"],
        ] {
            assert!(serve(bad).is_err(), "{bad:?}");
        }
        let named = serve(&["--socket", "s", "--forward", "tcp6:1:192.168.64.3:3"]).unwrap();
        assert_eq!(
            named.forwards6[0].guest,
            Some(std::net::Ipv4Addr::new(192, 168, 64, 3))
        );
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
            &["--socket", "a", "--dns-upstream", "[2001:db8::2]:0"],
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

    #[test]
    fn guest_multicast_is_off_by_default_and_set_by_flag_or_file() {
        assert!(!serve(&["--socket", "/s"]).unwrap().guest_multicast);
        assert!(
            serve(&["--socket", "/s", "--guest-multicast"])
                .unwrap()
                .guest_multicast
        );
        assert!(serve(&["--socket", "/s", "--guest-multicast=1"]).is_err());
        let dir = std::env::temp_dir().join(format!("hostnetd-gm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "socket = \"/s\"\nguest-multicast = true\n").unwrap();
        let a = serve(&["--config", file.to_str().unwrap()]).unwrap();
        assert!(a.guest_multicast);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn host_setup_is_off_by_default_takes_no_value_and_the_helper_is_internal() {
        assert!(!serve(&["--socket", "/s"]).unwrap().host_setup);
        assert!(serve(&["--socket", "/s", "--host-setup=1"]).is_err());
        assert!(serve(&["--socket", "/s", "--host-setup", "--host-setup"]).is_err());
        assert_eq!(
            parse_args(&[HELPER_FLAG, "42", "100.64.0.2", "hostnetd0"]).unwrap(),
            Invocation::HostSetupHelper(HelperArgs {
                pid: 42,
                external: Ipv4Addr::new(100, 64, 0, 2),
                tun: "hostnetd0".into(),
                external6: None,
            })
        );
        assert_eq!(
            parse_args(&[HELPER_FLAG, "42", "100.64.0.2", "hostnetd0", "fd64:ffff::2"]).unwrap(),
            Invocation::HostSetupHelper(HelperArgs {
                pid: 42,
                external: Ipv4Addr::new(100, 64, 0, 2),
                tun: "hostnetd0".into(),
                external6: Some("fd64:ffff::2".parse().unwrap()),
            })
        );
        assert!(parse_args(&[HELPER_FLAG, "42", "100.64.0.2", "hostnetd0", "x"]).is_err());
        assert!(parse_args(&[HELPER_FLAG, "42"]).is_err());
        // Only as the first argument.
        assert!(serve(&["--socket", "/s", HELPER_FLAG]).is_err());
    }

    /// A file naming every setting, and the command line that says the same.
    const EVERY_KEY: &str = r#"
socket = "/run/hn.sock"
mtu = 9000
mac = "52:54:00:aa:bb:cc"
forward = ["tcp:8080:80", "udp:5353:192.168.64.9:53"]
dns-upstream = "198.18.0.2:5353"
tun-name = "vu%d"
offload = false
deny = ["198.18.0.0/24"]
allow = ["169.254.169.254/32"]
tun-addr = "10.1.0.1"
external-addr = "10.1.0.2"
user = "nobody"
group = "65534"
socket-mode = "0660"
socket-group = "kvm"
sandbox = false
sandbox-selftest = true
host-setup = true
"#;
    const EVERY_FLAG: &[&str] = &[
        "--socket=/run/hn.sock",
        "--mtu=9000",
        "--mac=52:54:00:aa:bb:cc",
        "--forward=tcp:8080:80",
        "--forward=udp:5353:192.168.64.9:53",
        "--dns-upstream=198.18.0.2:5353",
        "--tun-name=vu%d",
        "--no-offload",
        "--deny=198.18.0.0/24",
        "--allow=169.254.169.254/32",
        "--tun-addr=10.1.0.1",
        "--external-addr=10.1.0.2",
        "--user=nobody",
        "--group=65534",
        "--socket-mode=0660",
        "--socket-group=kvm",
        "--no-sandbox",
        "--sandbox-selftest",
        "--host-setup",
    ];

    fn from_file(text: &str) -> Result<Args, ArgError> {
        parse_config(text)?.finish()
    }

    /// A config file in the temp folder, removed on drop.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(tag: &str, text: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("hostnetd-args-{}-{tag}.toml", std::process::id()));
            std::fs::write(&p, text).unwrap();
            Self(p)
        }

        fn arg(&self) -> String {
            format!("--config={}", self.0.display())
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn every_flag_has_a_config_key_with_the_same_meaning() {
        assert_eq!(from_file(EVERY_KEY).unwrap(), serve(EVERY_FLAG).unwrap());
        // Flags each change something from the defaults: the comparison is not vacuous.
        assert_ne!(
            from_file(EVERY_KEY).unwrap(),
            from_file("socket = \"/run/hn.sock\"").unwrap()
        );
        // socket-mode also as a TOML octal integer.
        let a = from_file("socket = \"s\"\nsocket-mode = 0o640").unwrap();
        assert_eq!(a.socket_mode, 0o640);
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let e = parse_config("socket = \"s\"\nmtuu = 1500\n").unwrap_err();
        assert!(e.0.contains("mtuu"), "{e}");
        // A value of the wrong type names the key too.
        let e = parse_config("mtu = \"big\"").unwrap_err();
        assert!(e.0.contains("mtu"), "{e}");
        // Bad values are checked as on the command line.
        let e = from_file("socket = \"s\"\nmtu = 67").unwrap_err();
        assert!(e.0.contains("--mtu \"67\""), "{e}");
        let f = TempConfig::new("unknown", "socket = \"s\"\n[extra]\nkey = 1\n");
        let e = parse_args(&[f.arg()]).unwrap_err();
        assert!(
            e.0.contains("extra") && e.0.contains(&f.0.display().to_string()),
            "{e}"
        );
        assert!(parse_args(&["--config", "/nonexistent/hostnetd.toml"]).is_err());
    }

    #[test]
    fn flags_override_the_file() {
        let f = TempConfig::new(
            "override",
            "socket = \"/from/file\"\nmtu = 9000\nforward = [\"tcp:1:2\", \"tcp:3:4\"]\n\
             deny = [\"198.18.0.0/24\"]\nhost-setup = true\noffload = false\n",
        );
        let a = serve(&[
            f.arg().as_str(),
            "--mtu",
            "1400",
            "--forward",
            "udp:5:6",
            "--allow",
            "169.254.169.254/32",
        ])
        .unwrap();
        assert_eq!(a.socket, PathBuf::from("/from/file"));
        assert_eq!(a.mtu, 1400);
        // A list on the command line replaces the file's list.
        assert_eq!(a.forwards.len(), 1);
        assert_eq!(a.forwards[0].external_port, 5);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(a.egress.action(ip("198.18.0.1")), EgressAction::Deny);
        assert_eq!(a.egress.action(ip("169.254.169.254")), EgressAction::Allow);
        assert!(a.host_setup && !a.offload);
        // The file alone.
        let b = serve(&[f.arg().as_str()]).unwrap();
        assert_eq!((b.mtu, b.forwards.len()), (9000, 2));
    }

    #[test]
    fn print_config_shows_the_effective_configuration_which_reads_back_the_same() {
        let f = TempConfig::new("print", "socket = \"/run/hn.sock\"\nmtu = 4000\n");
        let Invocation::PrintConfig(text) =
            parse_args(&[f.arg().as_str(), "--host-setup", "--print-config"]).unwrap()
        else {
            panic!("not PrintConfig");
        };
        for line in [
            "socket = \"/run/hn.sock\"",
            "mtu = 4000",
            "host-setup = true",
            "offload = true",
            "sandbox = true",
            "socket-mode = \"0600\"",
            "tun-name = \"hostnetd%d\"",
            "mac = \"52:54:00:12:34:56\"",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
        }
        let again = parse_config(&text).unwrap().finish().unwrap();
        let direct = serve(&[f.arg().as_str(), "--host-setup"]).unwrap();
        assert_eq!(again, direct);
        // Every key printed, and the full configuration reads back the same.
        let Invocation::PrintConfig(full) =
            parse_args(&[EVERY_FLAG, &["--print-config"]].concat()).unwrap()
        else {
            panic!("not PrintConfig");
        };
        assert_eq!(from_file(&full).unwrap(), serve(EVERY_FLAG).unwrap());
        // A bad effective configuration is refused, not printed.
        assert!(parse_args(&["--print-config"]).is_err());
    }
}
