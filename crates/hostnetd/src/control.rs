//! The control protocol of hostnetd's control socket, its snapshot of the daemon's state, the
//! Prometheus text exposition, and the `hostnetd ctl` client (docs/control.md).
//!
//! The protocol is one JSON object per line each way over a unix stream socket (created 0600):
//! a request `{"command":"stats"}`, then the reply `{"ok":true,...}` or
//! `{"ok":false,"error":"..."}`; the client may send further requests on the same connection.
//! Commands: `stats`, `guests`, `flows` (`top`, default 20), `forwards`, `forward-add` and
//! `forward-remove` (`spec`), `log-level` (`level`), `metrics`. Unknown commands and unknown
//! fields are errors naming them. A request line is at most [`MAX_REQUEST`] bytes.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// The longest request line the daemon reads, its newline included (longer: an error, and the
/// connection closes).
pub(crate) const MAX_REQUEST: usize = 4096;
/// Most flows one `flows` reply lists.
pub(crate) const MAX_FLOWS: usize = 10_000;

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub(crate) enum Request {
    /// Counters: frames, bytes, every drop reason, the NAT's per family.
    Stats,
    /// The guest connected now: MAC, IPv4 lease, IPv6 addresses, negotiated offloads.
    Guests,
    /// The NAT's flows in the order `by` asks for, at most `top`.
    Flows {
        /// How many (default 20, at most [`MAX_FLOWS`]).
        #[serde(default = "default_top")]
        top: usize,
        /// The order (default: the most recently active first).
        #[serde(default)]
        by: FlowOrder,
    },
    /// The port forwards in force (and for the next connections).
    Forwards,
    /// Adds a port forward, as `--forward` takes it (`tcp:8080:80`, `udp6:5353:53`).
    ForwardAdd {
        /// The forward.
        spec: String,
    },
    /// Removes the port forward on `tcp|udp|tcp6|udp6:<external port>`.
    ForwardRemove {
        /// The forward's protocol and external port (a full `--forward` spec also does).
        spec: String,
    },
    /// Sets the log filter (`RUST_LOG` syntax: `debug`, `info,bridge=trace`).
    LogLevel {
        /// The filter.
        level: String,
    },
    /// The Prometheus text exposition (also served by `--metrics ADDR`).
    Metrics,
}

fn default_top() -> usize {
    20
}

/// The order of a `flows` answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum FlowOrder {
    /// The latest expiry first: the most recently active (a flow's deadline moves with
    /// each packet).
    #[default]
    Expiry,
    /// The oldest first (created longest ago; whole seconds).
    Age,
}

/// A point-in-time view of the daemon (what `stats`, `guests` and `metrics` report).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Snapshot {
    /// A frontend is connected now.
    pub(crate) connected: bool,
    /// Frontend connections served since start (the current one included).
    pub(crate) connections: u64,
    /// The connection's counters (zero without a connection; they start over with each).
    pub(crate) counters: Counters,
    /// Bridge drops by cause (every cause, zeros included).
    pub(crate) drops: BTreeMap<String, u64>,
    /// The NAT, per address family (`ipv4`, `ipv6`).
    pub(crate) nat: BTreeMap<String, NatSnapshot>,
    /// Held fragments now (both families) and their bytes.
    pub(crate) held_fragments: u64,
    /// Bytes of the held fragments.
    pub(crate) held_bytes: u64,
    /// The first guest (the lowest port), if one is connected.
    pub(crate) guest: Option<Guest>,
    /// Every connected guest, by port.
    pub(crate) guests: Vec<Guest>,
}

/// The bridge's frame counters of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Counters {
    /// Frames the guest sent.
    pub(crate) tx_frames: u64,
    /// Their bytes.
    pub(crate) tx_bytes: u64,
    /// Frames delivered to the guest.
    pub(crate) rx_frames: u64,
    /// Their bytes.
    pub(crate) rx_bytes: u64,
    /// Packets written to the TUN.
    pub(crate) to_host: u64,
    /// Packets read from the TUN.
    pub(crate) from_host: u64,
    /// Frames the gateway answered itself (ARP, DHCP, DNS refusals, ICMP).
    pub(crate) local_replies: u64,
    /// TSO super-frames the guest sent.
    pub(crate) tx_gso: u64,
    /// GSO super-packets delivered to the guest.
    pub(crate) rx_gso: u64,
}

/// One address family of the NAT.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct NatSnapshot {
    /// Flows in the table now.
    pub(crate) flows: u64,
    /// External ports (and ICMP identifiers) held by mappings and forwards now.
    pub(crate) ports_in_use: u64,
    /// Mappings created.
    pub(crate) mappings_created: u64,
    /// Mappings expired.
    pub(crate) mappings_expired: u64,
    /// Packets translated outbound.
    pub(crate) outbound: u64,
    /// Packets translated inbound.
    pub(crate) inbound: u64,
    /// Packets hairpinned.
    pub(crate) hairpinned: u64,
    /// Unconfirmed flows from outside evicted for room.
    pub(crate) inbound_evicted: u64,
    /// Drops by reason (every reason, zeros included).
    pub(crate) drops: BTreeMap<String, u64>,
}

/// The connected guest.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Guest {
    /// Its MAC (learned from its frames, else the configured one).
    pub(crate) mac: String,
    /// Its DHCP lease, if any.
    pub(crate) ipv4: Option<String>,
    /// The IPv6 addresses it was seen to use.
    pub(crate) ipv6: Vec<String>,
    /// The negotiated virtio-net features, by name.
    pub(crate) features: Vec<String>,
    /// This guest's port's counters (since its frontend connected).
    pub(crate) counters: Counters,
    /// Frames and packets of this port the bridge dropped, every cause added up.
    pub(crate) drops: u64,
    /// The same by cause: only the causes that occurred.
    pub(crate) drops_by_cause: BTreeMap<String, u64>,
    /// The queue pairs the driver uses now (`--queues`; 1 without multiqueue).
    pub(crate) queue_pairs: u64,
    /// The frames each queue pair moved, pair 0 first (every pair set up, also one out of
    /// use now).
    pub(crate) pairs: Vec<PairCounters>,
}

/// The frames one queue pair of a guest moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PairCounters {
    /// Frames taken from the pair's TX queue.
    pub(crate) tx_frames: u64,
    /// Frames delivered into the pair's RX queue.
    pub(crate) rx_frames: u64,
}

/// One NAT flow (`flows`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct Flow {
    /// `tcp`, `udp` or `icmp`.
    pub(crate) protocol: String,
    /// The guest side.
    pub(crate) internal: String,
    /// The NAT's external side.
    pub(crate) external: String,
    /// Seconds until it expires if idle.
    pub(crate) expires_in_s: u64,
    /// Seconds since it was created (whole seconds of the daemon's clock).
    pub(crate) age_s: u64,
}

impl Snapshot {
    /// The Prometheus text exposition (format 0.0.4, the `# EOF` line of OpenMetrics left out).
    pub(crate) fn metrics(&self) -> String {
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Direction {
            direction: &'static str,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct Cause {
            cause: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct FamilyLabel {
            family: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct FamilyDirection {
            family: String,
            direction: &'static str,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct FamilyReason {
            family: String,
            reason: String,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct GuestDirection {
            guest: String,
            direction: &'static str,
        }
        #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
        struct GuestLabel {
            guest: String,
        }
        let mut r = Registry::with_prefix("hostnet");
        let c = &self.counters;
        let by_dir = |pairs: [(&'static str, u64); 2]| {
            let f = Family::<Direction, Counter>::default();
            for (direction, v) in pairs {
                f.get_or_create(&Direction { direction }).inc_by(v);
            }
            f
        };
        r.register(
            "frames",
            "Frames from the guest (tx) and to the guest (rx)",
            by_dir([("tx", c.tx_frames), ("rx", c.rx_frames)]),
        );
        r.register(
            "bytes",
            "Bytes of the frames from the guest (tx) and to the guest (rx)",
            by_dir([("tx", c.tx_bytes), ("rx", c.rx_bytes)]),
        );
        r.register(
            "host_packets",
            "Packets written to the TUN (to_host) and read from it (from_host)",
            by_dir([("to_host", c.to_host), ("from_host", c.from_host)]),
        );
        r.register(
            "gso_frames",
            "Segmentation-offload super-frames from the guest (tx) and to it (rx)",
            by_dir([("tx", c.tx_gso), ("rx", c.rx_gso)]),
        );
        let replies = Counter::<u64>::default();
        replies.inc_by(c.local_replies);
        r.register(
            "gateway_replies",
            "Frames the gateway answered itself",
            replies,
        );
        let drops = Family::<Cause, Counter>::default();
        for (cause, &n) in &self.drops {
            drops
                .get_or_create(&Cause {
                    cause: cause.clone(),
                })
                .inc_by(n);
        }
        r.register(
            "drops",
            "Frames and packets the bridge dropped, by cause",
            drops,
        );
        let flows = Family::<FamilyLabel, Gauge>::default();
        let ports = Family::<FamilyLabel, Gauge>::default();
        let created = Family::<FamilyLabel, Counter>::default();
        let expired = Family::<FamilyLabel, Counter>::default();
        let translated = Family::<FamilyDirection, Counter>::default();
        let nat_drops = Family::<FamilyReason, Counter>::default();
        for (family, n) in &self.nat {
            let fam = FamilyLabel {
                family: family.clone(),
            };
            flows
                .get_or_create(&fam)
                .set(i64::try_from(n.flows).unwrap_or(i64::MAX));
            ports
                .get_or_create(&fam)
                .set(i64::try_from(n.ports_in_use).unwrap_or(i64::MAX));
            created.get_or_create(&fam).inc_by(n.mappings_created);
            expired.get_or_create(&fam).inc_by(n.mappings_expired);
            for (direction, v) in [
                ("outbound", n.outbound),
                ("inbound", n.inbound),
                ("hairpin", n.hairpinned),
            ] {
                translated
                    .get_or_create(&FamilyDirection {
                        family: family.clone(),
                        direction,
                    })
                    .inc_by(v);
            }
            for (reason, &v) in &n.drops {
                nat_drops
                    .get_or_create(&FamilyReason {
                        family: family.clone(),
                        reason: reason.clone(),
                    })
                    .inc_by(v);
            }
        }
        r.register("nat_flows", "Flows (mappings) in the NAT's table", flows);
        r.register(
            "nat_ports_in_use",
            "External ports and ICMP identifiers held by mappings and forwards",
            ports,
        );
        r.register("nat_mappings_created", "NAT mappings created", created);
        r.register("nat_mappings_expired", "NAT mappings expired", expired);
        r.register(
            "nat_translated_packets",
            "Packets the NAT translated, by direction",
            translated,
        );
        r.register("nat_drops", "Packets the NAT refused, by reason", nat_drops);
        let gauge = |v: u64| {
            let g = Gauge::<i64>::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        r.register(
            "nat_held_fragments",
            "IP fragments the NAT holds (arrived before their first fragment)",
            gauge(self.held_fragments),
        );
        r.register(
            "nat_held_fragment_bytes",
            "Bytes of the held fragments",
            gauge(self.held_bytes),
        );
        r.register(
            "guest_connected",
            "1 while a frontend is connected",
            gauge(u64::from(self.connected)),
        );
        r.register(
            "leases",
            "IPv4 DHCP leases held",
            gauge(self.guests.iter().filter(|g| g.ipv4.is_some()).count() as u64),
        );
        r.register(
            "guest_ipv6_addresses",
            "IPv6 addresses the guests were seen to use",
            gauge(self.guests.iter().map(|g| g.ipv6.len() as u64).sum()),
        );
        // Per guest, labelled with its MAC (always known, unlike its lease).
        let guest_frames = Family::<GuestDirection, Counter>::default();
        let guest_bytes = Family::<GuestDirection, Counter>::default();
        let guest_drops = Family::<GuestLabel, Counter>::default();
        for g in &self.guests {
            let c = &g.counters;
            for (direction, frames, bytes) in [
                ("tx", c.tx_frames, c.tx_bytes),
                ("rx", c.rx_frames, c.rx_bytes),
            ] {
                let label = GuestDirection {
                    guest: g.mac.clone(),
                    direction,
                };
                guest_frames.get_or_create(&label).inc_by(frames);
                guest_bytes.get_or_create(&label).inc_by(bytes);
            }
            guest_drops
                .get_or_create(&GuestLabel {
                    guest: g.mac.clone(),
                })
                .inc_by(g.drops);
        }
        r.register(
            "guest_frames",
            "Frames from (tx) and to (rx) each guest, by its MAC",
            guest_frames,
        );
        r.register(
            "guest_bytes",
            "Bytes of the frames from (tx) and to (rx) each guest, by its MAC",
            guest_bytes,
        );
        r.register(
            "guest_drops",
            "Frames and packets of each guest's port the bridge dropped, every cause",
            guest_drops,
        );
        let connections = Counter::<u64>::default();
        connections.inc_by(self.connections);
        r.register(
            "connections",
            "Frontend connections served since start",
            connections,
        );
        let mut out = String::new();
        if prometheus_client::encoding::text::encode_registry(&mut out, &r).is_err() {
            out.clear();
        }
        out
    }
}

/// The reply to a request: `{"ok":true, ...fields}`.
pub(crate) fn ok_reply(fields: serde_json::Value) -> String {
    let mut v = serde_json::json!({ "ok": true });
    if let (Some(obj), serde_json::Value::Object(more)) = (v.as_object_mut(), fields) {
        obj.extend(more);
    }
    v.to_string()
}

/// The reply to a failed request: `{"ok":false,"error":"..."}`.
pub(crate) fn error_reply(error: &str) -> String {
    serde_json::json!({ "ok": false, "error": error }).to_string()
}

/// Parses a request line (its error message names the bad command or field).
pub(crate) fn parse_request(line: &str) -> Result<Request, String> {
    let value: serde_json::Value =
        serde_json::from_str(line.trim()).map_err(|e| format!("bad request: {e}"))?;
    let request: Request =
        serde_json::from_value(value.clone()).map_err(|e| format!("bad request: {e}"))?;
    // serde's `deny_unknown_fields` does not reach the fields-less commands of a tagged enum.
    let known: &[&str] = match request {
        Request::Flows { .. } => &["top", "by"],
        Request::ForwardAdd { .. } | Request::ForwardRemove { .. } => &["spec"],
        Request::LogLevel { .. } => &["level"],
        _ => &[],
    };
    if let Some(k) = value
        .as_object()
        .into_iter()
        .flat_map(|o| o.keys())
        .find(|k| *k != "command" && !known.contains(&k.as_str()))
    {
        return Err(format!("bad request: unknown field `{k}`"));
    }
    Ok(request)
}

/// `hostnetd ctl`: its usage text.
pub(crate) const CTL_USAGE: &str = "\
usage: hostnetd ctl [--control PATH | --socket PATH] [--json] COMMAND

Talks to a running hostnetd over its control socket (default: the vhost-user socket's path
plus .ctl; docs/control.md has the protocol).

commands:
    stats                    counters: frames, bytes, every drop reason, the NAT per family
    guests                   the connected guest: MAC, lease, IPv6 addresses, features
    flows [N] [--by age]     the NAT's N most recently active flows (default 20); with
                             --by age the N oldest
    forwards                 the port forwards in force
    forward add SPEC         adds a forward (as --forward: tcp:8080:80, udp6:5353:53)
    forward remove SPEC      removes the forward on tcp|udp|tcp6|udp6:<external port>
    log-level FILTER         sets the log filter (RUST_LOG syntax: debug, info,bridge=trace)
    metrics                  the Prometheus text exposition

options:
    --json                   print the daemon's JSON reply as it is
";

/// `hostnetd ctl ARGS`: sends one request and prints the reply. Exit status: 0 on success,
/// 1 when the daemon refused the request or could not be reached, 2 on bad arguments.
pub(crate) fn ctl_main(args: &[String]) -> std::process::ExitCode {
    use std::process::ExitCode;
    let parsed = match parse_ctl(args) {
        Ok(Some(p)) => p,
        Ok(None) => {
            print!("{CTL_USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("hostnetd ctl: {e}");
            return ExitCode::from(2);
        }
    };
    match call(&parsed.path, &parsed.request) {
        Ok(reply) => {
            let ok = reply.get("ok").and_then(serde_json::Value::as_bool) == Some(true);
            if parsed.json {
                println!("{reply}");
            } else if ok {
                print!("{}", human(&parsed.request, &reply));
            } else {
                eprintln!(
                    "hostnetd ctl: {}",
                    reply
                        .get("error")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("the daemon refused the request")
                );
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hostnetd ctl: {}: {e}", parsed.path.display());
            ExitCode::FAILURE
        }
    }
}

/// A parsed `hostnetd ctl` command line.
#[derive(Debug, PartialEq, Eq)]
struct CtlArgs {
    path: PathBuf,
    json: bool,
    request: Request,
}

/// Parses `hostnetd ctl`'s arguments; `None` for `--help`.
fn parse_ctl(args: &[String]) -> Result<Option<CtlArgs>, String> {
    let mut path = None;
    let mut json = false;
    let mut rest: Vec<&str> = Vec::new();
    let mut it = args.iter().map(String::as_str);
    while let Some(a) = it.next() {
        match a {
            "-h" | "--help" => return Ok(None),
            "--json" => json = true,
            // `flows`' option: kept with the command's words.
            "--by" => {
                let v = it.next().ok_or("--by needs a value")?;
                rest.extend([a, v]);
            }
            "--control" | "--socket" => {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                if path.is_some() {
                    return Err("--control/--socket given twice".into());
                }
                path = Some(if a == "--socket" {
                    crate::args::default_control_path(Path::new(v))
                } else {
                    PathBuf::from(v)
                });
            }
            _ if a.starts_with("--") => return Err(format!("unknown option {a:?} (try --help)")),
            _ => rest.push(a),
        }
    }
    let path = path.ok_or("--control PATH or --socket PATH is required")?;
    let request = match rest.as_slice() {
        ["stats"] => Request::Stats,
        ["guests"] => Request::Guests,
        ["flows", more @ ..] => {
            let mut top = default_top();
            let mut by = FlowOrder::Expiry;
            let mut it = more.iter();
            while let Some(a) = it.next() {
                match *a {
                    "--by" => {
                        by = match it.next().copied() {
                            Some("age") => FlowOrder::Age,
                            Some("expiry") => FlowOrder::Expiry,
                            other => {
                                return Err(format!("bad flows --by {other:?}: age or expiry"));
                            }
                        }
                    }
                    n => top = n.parse().map_err(|_| format!("bad flows count {n:?}"))?,
                }
            }
            Request::Flows { top, by }
        }
        ["forwards"] => Request::Forwards,
        ["forward", "add", spec] => Request::ForwardAdd {
            spec: (*spec).to_owned(),
        },
        ["forward", "remove", spec] => Request::ForwardRemove {
            spec: (*spec).to_owned(),
        },
        ["log-level", level] => Request::LogLevel {
            level: (*level).to_owned(),
        },
        ["metrics"] => Request::Metrics,
        [] => return Err("a command is required (try --help)".into()),
        other => {
            return Err(format!(
                "unknown command {:?} (try --help)",
                other.join(" ")
            ));
        }
    };
    Ok(Some(CtlArgs {
        path,
        json,
        request,
    }))
}

/// Sends `request` over the control socket at `path` and reads the one-line reply.
pub(crate) fn call(path: &Path, request: &Request) -> std::io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(path)?;
    let mut line = serde_json::to_string(request).map_err(std::io::Error::other)?;
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    serde_json::from_str(&reply).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("bad reply {reply:?}: {e}"),
        )
    })
}

/// A reply for people (the `--json` output is the reply itself).
fn human(request: &Request, reply: &serde_json::Value) -> String {
    use serde_json::Value;
    let mut out = String::new();
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    match request {
        Request::Stats => {
            let s = &reply["stats"];
            let c = &s["counters"];
            let _ = writeln!(
                out,
                "connected {} (connections served: {})",
                s["connected"].as_bool().unwrap_or(false),
                num(s, "connections")
            );
            for k in [
                "tx_frames",
                "tx_bytes",
                "rx_frames",
                "rx_bytes",
                "to_host",
                "from_host",
                "local_replies",
                "tx_gso",
                "rx_gso",
            ] {
                let _ = writeln!(out, "{k:<16} {}", num(c, k));
            }
            let nonzero = |m: &Value| -> String {
                m.as_object()
                    .map(|o| {
                        o.iter()
                            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default()
            };
            let _ = writeln!(out, "drops            {}", nonzero(&s["drops"]));
            if let Some(nat) = s["nat"].as_object() {
                for (family, n) in nat {
                    let _ = writeln!(
                        out,
                        "nat {family:<12} flows={} created={} expired={} out={} in={} hairpin={} drops: {}",
                        num(n, "flows"),
                        num(n, "mappings_created"),
                        num(n, "mappings_expired"),
                        num(n, "outbound"),
                        num(n, "inbound"),
                        num(n, "hairpinned"),
                        nonzero(&n["drops"])
                    );
                }
            }
        }
        Request::Guests => match reply["guests"].as_array() {
            Some(gs) if !gs.is_empty() => {
                for g in gs {
                    let list = |k: &str| {
                        g[k].as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(Value::as_str)
                                    .collect::<Vec<_>>()
                                    .join(",")
                            })
                            .unwrap_or_default()
                    };
                    let c = &g["counters"];
                    let _ = writeln!(
                        out,
                        "{} ipv4={} ipv6={} features={} tx={}/{}B rx={}/{}B drops={}",
                        g["mac"].as_str().unwrap_or("-"),
                        g["ipv4"].as_str().unwrap_or("-"),
                        list("ipv6"),
                        list("features"),
                        num(c, "tx_frames"),
                        num(c, "tx_bytes"),
                        num(c, "rx_frames"),
                        num(c, "rx_bytes"),
                        num(g, "drops")
                    );
                    let pairs = g["pairs"].as_array().map_or(&[][..], Vec::as_slice);
                    if pairs.len() > 1 {
                        let each = pairs
                            .iter()
                            .map(|p| format!("{}/{}", num(p, "tx_frames"), num(p, "rx_frames")))
                            .collect::<Vec<_>>()
                            .join(",");
                        let _ = writeln!(
                            out,
                            "  queue pairs {} in use, frames tx/rx per pair {each}",
                            num(g, "queue_pairs")
                        );
                    }
                }
            }
            _ => out.push_str("no guest connected\n"),
        },
        Request::Flows { .. } => {
            for f in reply["flows"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "{:<5} {} -> {} age {} s, expires in {} s",
                    f["protocol"].as_str().unwrap_or("?"),
                    f["internal"].as_str().unwrap_or("?"),
                    f["external"].as_str().unwrap_or("?"),
                    num(f, "age_s"),
                    num(f, "expires_in_s")
                );
            }
        }
        Request::Forwards => {
            for f in reply["forwards"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{}", f.as_str().unwrap_or("?"));
            }
        }
        Request::ForwardAdd { spec } => {
            let _ = writeln!(out, "added {spec}");
        }
        Request::ForwardRemove { spec } => {
            let _ = writeln!(out, "removed {spec}");
        }
        Request::LogLevel { level } => {
            let _ = writeln!(out, "log filter {level}");
        }
        Request::Metrics => {
            out.push_str(reply["metrics"].as_str().unwrap_or_default());
        }
    }
    out
}

/// Parses `forward-remove`'s spec: `tcp|udp|tcp6|udp6:<external port>`, or a whole
/// `--forward` spec (its guest part ignored). Returns (protocol, external port, IPv6).
pub(crate) fn parse_remove_spec(spec: &str) -> Result<(nat::Protocol, u16, bool), String> {
    let bad = || format!("bad forward {spec:?}: expected tcp|udp|tcp6|udp6:<external port>");
    let mut parts = spec.split(':');
    let (proto, port) = (parts.next().ok_or_else(bad)?, parts.next().ok_or_else(bad)?);
    let (protocol, ipv6) = match proto {
        "tcp" => (nat::Protocol::Tcp, false),
        "udp" => (nat::Protocol::Udp, false),
        "tcp6" => (nat::Protocol::Tcp, true),
        "udp6" => (nat::Protocol::Udp, true),
        _ => return Err(bad()),
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((protocol, port, ipv6))
}

/// A forward as `--forward` spells it (for `forwards` and the next connections).
pub(crate) fn forward_spec_text(spec: &bridge::ForwardSpec) -> String {
    let proto = match (spec.protocol, spec.ipv6) {
        (nat::Protocol::Tcp, false) => "tcp",
        (nat::Protocol::Udp, false) => "udp",
        (nat::Protocol::Tcp, true) => "tcp6",
        (nat::Protocol::Udp, true) => "udp6",
        (_, false) => "ip",
        (_, true) => "ip6",
    };
    match spec.guest_addr {
        Some(a) => format!("{proto}:{}:{a}:{}", spec.external_port, spec.guest_port),
        None => format!("{proto}:{}:{}", spec.external_port, spec.guest_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn requests_round_trip_and_unknown_ones_are_named() {
        for (line, want) in [
            (r#"{"command":"stats"}"#, Request::Stats),
            (
                r#"{"command":"flows"}"#,
                Request::Flows {
                    top: 20,
                    by: FlowOrder::Expiry,
                },
            ),
            (
                r#"{"command":"flows","top":3}"#,
                Request::Flows {
                    top: 3,
                    by: FlowOrder::Expiry,
                },
            ),
            (
                r#"{"command":"flows","top":3,"by":"age"}"#,
                Request::Flows {
                    top: 3,
                    by: FlowOrder::Age,
                },
            ),
            (
                r#"{"command":"forward-add","spec":"tcp:8080:80"}"#,
                Request::ForwardAdd {
                    spec: "tcp:8080:80".into(),
                },
            ),
            (
                r#"{"command":"log-level","level":"debug"}"#,
                Request::LogLevel {
                    level: "debug".into(),
                },
            ),
        ] {
            let r = parse_request(line).unwrap();
            assert_eq!(r, want);
            assert_eq!(parse_request(&serde_json::to_string(&r).unwrap()), Ok(r));
        }
        let e = parse_request(r#"{"command":"reboot"}"#).unwrap_err();
        assert!(e.contains("reboot"), "{e}");
        let e = parse_request(r#"{"command":"stats","x":1}"#).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        assert!(parse_request("not json").is_err());
        assert!(
            parse_request(r#"{"command":"forward-add"}"#)
                .unwrap_err()
                .contains("spec")
        );
    }

    #[test]
    fn ctl_command_lines() {
        let p = parse_ctl(&strings(&[
            "--socket",
            "/run/h.sock",
            "forward",
            "add",
            "tcp:1:2",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(p.path, PathBuf::from("/run/h.sock.ctl"));
        assert_eq!(
            p.request,
            Request::ForwardAdd {
                spec: "tcp:1:2".into()
            }
        );
        let p = parse_ctl(&strings(&["--json", "--control", "/c", "flows", "5"]))
            .unwrap()
            .unwrap();
        assert!(p.json);
        assert_eq!(
            (p.path, p.request),
            (
                PathBuf::from("/c"),
                Request::Flows {
                    top: 5,
                    by: FlowOrder::Expiry
                }
            )
        );
        let p = parse_ctl(&strings(&["--control", "/c", "flows", "--by", "age", "3"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            p.request,
            Request::Flows {
                top: 3,
                by: FlowOrder::Age
            }
        );
        assert_eq!(parse_ctl(&strings(&["--help"])), Ok(None));
        for bad in [
            &["--control", "/c", "flows", "--by", "bytes"][..],
            &["--control", "/c", "flows", "--by"],
            &["stats"],
            &["--control", "/c"],
            &["--control", "/c", "frobnicate"],
            &["--control", "/c", "flows", "x"],
            &["--control", "/c", "--socket", "/s", "stats"],
            &["--bogus", "stats"],
        ] {
            assert!(parse_ctl(&strings(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn remove_specs() {
        assert_eq!(
            parse_remove_spec("tcp:8080"),
            Ok((nat::Protocol::Tcp, 8080, false))
        );
        assert_eq!(
            parse_remove_spec("udp6:53:53"),
            Ok((nat::Protocol::Udp, 53, true))
        );
        for bad in ["tcp", "sctp:1", "tcp:0", "tcp:x", ""] {
            assert!(parse_remove_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metrics_are_prometheus_text_with_every_family() {
        let mut s = Snapshot {
            connected: true,
            connections: 2,
            ..Snapshot::default()
        };
        s.counters.tx_frames = 7;
        s.counters.rx_bytes = 1500;
        s.drops.insert("SpoofedIp".into(), 3);
        let mut n = NatSnapshot {
            flows: 4,
            ports_in_use: 3,
            ..NatSnapshot::default()
        };
        n.drops.insert("NoMapping".into(), 9);
        s.nat.insert("ipv4".into(), n);
        for (mac, tx) in [("52:54:00:12:34:56", 5), ("52:54:00:12:34:57", 2)] {
            let mut g = Guest {
                mac: mac.into(),
                drops: 1,
                ..Guest::default()
            };
            g.counters.tx_frames = tx;
            g.counters.rx_bytes = 100 * tx;
            s.guests.push(g);
        }
        let text = s.metrics();
        for line in [
            "# TYPE hostnet_frames counter",
            "hostnet_frames_total{direction=\"tx\"} 7",
            "hostnet_bytes_total{direction=\"rx\"} 1500",
            "hostnet_drops_total{cause=\"SpoofedIp\"} 3",
            "hostnet_nat_flows{family=\"ipv4\"} 4",
            "hostnet_nat_ports_in_use{family=\"ipv4\"} 3",
            "hostnet_nat_drops_total{family=\"ipv4\",reason=\"NoMapping\"} 9",
            "hostnet_guest_connected 1",
            "hostnet_connections_total 2",
            "hostnet_guest_frames_total{guest=\"52:54:00:12:34:56\",direction=\"tx\"} 5",
            "hostnet_guest_frames_total{guest=\"52:54:00:12:34:57\",direction=\"tx\"} 2",
            "hostnet_guest_bytes_total{guest=\"52:54:00:12:34:57\",direction=\"rx\"} 200",
            "hostnet_guest_frames_total{guest=\"52:54:00:12:34:57\",direction=\"rx\"} 0",
            "hostnet_guest_drops_total{guest=\"52:54:00:12:34:56\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("# EOF"), "text format, not OpenMetrics");
    }

    #[test]
    fn replies_are_one_json_line() {
        let r = ok_reply(serde_json::json!({"forwards": ["tcp:1:2"]}));
        assert_eq!(r, r#"{"forwards":["tcp:1:2"],"ok":true}"#);
        assert_eq!(error_reply("no"), r#"{"error":"no","ok":false}"#);
        assert!(!r.contains('\n'));
        assert_eq!(
            forward_spec_text(&"udp6:5353:53".parse().unwrap()),
            "udp6:5353:53"
        );
        assert_eq!(
            forward_spec_text(&"tcp:1:192.168.64.3:2".parse().unwrap()),
            "tcp:1:192.168.64.3:2"
        );
    }
}
