//! The control socket's server and the `--metrics` HTTP listener: threads started before the
//! sandbox, serving [`crate::control`]'s protocol against the daemon's state ([`Control`]).
//!
//! The network (every connection's port, the NAT) is reached through the same mutex the
//! vhost-user workers take once per event, so a request waits at most for one event's bounded
//! work and adds no lock to the packet path. Port forwards added or removed here change the
//! network's NAT and the configuration shown by `forwards`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bridge::ForwardSpec;
use tracing::{info, warn};

use super::device::DeviceConfig;
use super::network::{self, SharedNet};
use crate::control::{
    self, Counters, Flow, FlowOrder, Guest, MAX_FLOWS, MAX_REQUEST, NatSnapshot, Request, Snapshot,
};

/// Most control or metrics clients served at once (each has a thread; more are refused).
const MAX_CLIENTS: usize = 8;
/// The longest HTTP request head the metrics listener reads.
const MAX_HTTP_HEAD: usize = 8192;

/// Changes the log filter at runtime (`log-level`).
pub(crate) type LogReload = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the control socket sees and changes: the network (its ports, its NAT), the
/// configuration with the forwards changed at runtime, counters of the daemon itself.
pub(crate) struct Control {
    net: SharedNet,
    config: Mutex<DeviceConfig>,
    connections: AtomicU64,
    log: Option<LogReload>,
    clients: AtomicUsize,
    /// The first guest address (IPv4 forwards without an address go there).
    first_guest: Ipv4Addr,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl Control {
    pub(crate) fn new(
        config: DeviceConfig,
        net: SharedNet,
        first_guest: Ipv4Addr,
        log: Option<LogReload>,
    ) -> Self {
        Self {
            net,
            config: Mutex::new(config),
            connections: AtomicU64::new(0),
            log,
            clients: AtomicUsize::new(0),
            first_guest,
        }
    }

    /// A connection starts.
    pub(crate) fn connection_started(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// The daemon's state now: every port's counters added up, the NAT, each guest.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot {
            connections: self.connections.load(Ordering::Relaxed),
            ..Snapshot::default()
        };
        let sh = network::lock(&self.net);
        let net = &sh.net;
        let now = sh.clock.now();
        let all = net.bridge_stats();
        let st = &all.bridge;
        s.connected = net.ports().next().is_some();
        s.counters = counters(st);
        for cause in bridge::DropCause::ALL {
            s.drops.insert(format!("{cause:?}"), st.drops_of(cause));
        }
        let nat = net.nat();
        for (family, ipv6) in [("ipv4", false), ("ipv6", true)] {
            let n = nat.stats_of(ipv6);
            let mut snap = NatSnapshot {
                flows: n.flows,
                ports_in_use: nat.ports_in_use(ipv6) as u64,
                mappings_created: n.mappings_created,
                mappings_expired: n.mappings_expired,
                outbound: n.outbound_forwarded,
                inbound: n.inbound_forwarded,
                hairpinned: n.hairpinned,
                inbound_evicted: n.inbound_evicted,
                ..NatSnapshot::default()
            };
            for (i, reason) in nat::DropReason::ALL.iter().enumerate() {
                snap.drops
                    .insert(format!("{reason:?}"), n.drops.get(i).copied().unwrap_or(0));
            }
            s.nat.insert(family.into(), snap);
        }
        let (held, bytes) = nat.held_fragments();
        s.held_fragments = held as u64;
        s.held_bytes = bytes as u64;
        for (port, _) in net.ports() {
            let (Some(gw), Some(neg)) = (net.gateway(port), net.negotiated(port)) else {
                continue;
            };
            // Every negotiated feature bit by name (none before the driver negotiated).
            let features = match neg.features {
                0 => Vec::new(),
                f => bridge::feature_names(f)
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
            };
            s.guests.push(Guest {
                mac: gw.guest_mac().to_string(),
                ipv4: gw.lease(now).map(|a| a.to_string()),
                ipv6: gw
                    .guest_ipv6_addrs()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                features,
                counters: net.stats(port).map(counters).unwrap_or_default(),
                drops: net.stats(port).map_or(0, bridge::Stats::total_drops),
                drops_by_cause: net
                    .stats(port)
                    .map(|st| {
                        bridge::DropCause::ALL
                            .iter()
                            .map(|&c| (format!("{c:?}"), st.drops_of(c)))
                            .filter(|&(_, n)| n > 0)
                            .collect()
                    })
                    .unwrap_or_default(),
                queue_pairs: net.queue_pairs(port).unwrap_or(1) as u64,
                pairs: (0..usize::from(bridge::MAX_QUEUE_PAIRS))
                    .map_while(|i| net.pair_stats(port, i))
                    .map(|p| control::PairCounters {
                        tx_frames: p.tx_frames,
                        rx_frames: p.rx_frames,
                    })
                    .collect(),
            });
        }
        s.guest = s.guests.first().cloned();
        s
    }

    /// Answers one request line with one reply line.
    pub(crate) fn handle(&self, line: &str) -> String {
        let request = match control::parse_request(line) {
            Ok(r) => r,
            Err(e) => return control::error_reply(&e),
        };
        match self.answer(&request) {
            Ok(v) => control::ok_reply(v),
            Err(e) => control::error_reply(&e),
        }
    }

    fn answer(&self, request: &Request) -> Result<serde_json::Value, String> {
        use serde_json::json;
        match request {
            Request::Stats => Ok(json!({ "stats": self.snapshot() })),
            Request::Guests => {
                let s = self.snapshot();
                Ok(json!({ "guests": s.guests }))
            }
            Request::Metrics => Ok(json!({ "metrics": self.snapshot().metrics() })),
            Request::Flows { top, by } => {
                Ok(json!({ "flows": self.flows((*top).min(MAX_FLOWS), *by) }))
            }
            Request::Forwards => Ok(json!({ "forwards": self.forwards() })),
            Request::ForwardAdd { spec } => self.forward_add(spec).map(|()| json!({})),
            Request::ForwardRemove { spec } => self.forward_remove(spec).map(|()| json!({})),
            Request::LogLevel { level } => {
                let reload = self
                    .log
                    .as_ref()
                    .ok_or("the log filter cannot be changed")?;
                reload(level)?;
                info!(filter = %level, "log filter changed by the control socket");
                Ok(json!({}))
            }
        }
    }

    /// The NAT's flows of both families in `by`'s order, at most `top`: the latest expiry (the
    /// most recently active) first, or the oldest first.
    fn flows(&self, top: usize, by: FlowOrder) -> Vec<Flow> {
        let sh = network::lock(&self.net);
        let now = sh.clock.now().as_millis();
        let nat = sh.net.nat();
        let name = |p: nat::Protocol| format!("{p:?}").to_lowercase();
        let flow = |p,
                    internal: String,
                    external: String,
                    expires: nat::Instant,
                    created: nat::Instant| {
            let f = Flow {
                protocol: name(p),
                internal,
                external,
                expires_in_s: expires.as_millis().saturating_sub(now) / 1000,
                age_s: now.saturating_sub(created.as_millis()) / 1000,
            };
            (expires, created, f)
        };
        let mut flows: Vec<(nat::Instant, nat::Instant, Flow)> = nat
            .mappings()
            .into_iter()
            .map(|m| {
                flow(
                    m.protocol,
                    m.internal.to_string(),
                    m.external.to_string(),
                    m.expires,
                    m.created,
                )
            })
            .chain(
                nat.mappings6()
                    .into_iter()
                    .map(|(p, i, e, expires, created)| {
                        flow(p, i.to_string(), e.to_string(), expires, created)
                    }),
            )
            .collect();
        match by {
            FlowOrder::Expiry => flows.sort_by_key(|f| std::cmp::Reverse(f.0)),
            FlowOrder::Age => flows.sort_by_key(|f| f.1),
        }
        flows.truncate(top);
        flows.into_iter().map(|(_, _, f)| f).collect()
    }

    /// The port forwards in the configuration now, as `--forward` spells them.
    pub(crate) fn forward_list(&self) -> Vec<String> {
        self.forwards()
    }

    fn forwards(&self) -> Vec<String> {
        let c = lock(&self.config);
        let proto = |p: nat::Protocol, v6: bool| {
            let p = format!("{p:?}").to_lowercase();
            if v6 { p + "6" } else { p }
        };
        c.forwards
            .iter()
            .map(|f| {
                format!(
                    "{}:{}:{}:{}",
                    proto(f.protocol, false),
                    f.external_port,
                    f.internal.ip(),
                    f.internal.port()
                )
            })
            .chain(c.forwards6.iter().map(|f| {
                let guest = f.guest.map(|g| format!("{g}:")).unwrap_or_default();
                format!(
                    "{}:{}:{guest}{}",
                    proto(f.protocol, true),
                    f.external_port,
                    f.guest_port
                )
            }))
            .collect()
    }

    fn forward_add(&self, text: &str) -> Result<(), String> {
        let spec: ForwardSpec = text
            .parse()
            .map_err(|e| format!("bad forward {text:?}: {e}"))?;
        let mut config = lock(&self.config);
        let taken = if spec.ipv6 {
            if !config.ipv6 {
                return Err(format!("{text}: IPv6 is off (--no-ipv6)"));
            }
            config
                .forwards6
                .iter()
                .any(|f| f.protocol == spec.protocol && f.external_port == spec.external_port)
        } else {
            config
                .forwards
                .iter()
                .any(|f| f.protocol == spec.protocol && f.external_port == spec.external_port)
        };
        if taken {
            return Err(format!("{text}: the external port is already forwarded"));
        }
        network::lock(&self.net)
            .net
            .add_forward(spec, self.first_guest)
            .map_err(|e| format!("{text}: {e}"))?;
        if spec.ipv6 {
            config.forwards6.push(spec.to_port_forward6());
        } else {
            config.forwards.push(spec.to_port_forward(self.first_guest));
        }
        info!(forward = %control::forward_spec_text(&spec), "port forward added by the control socket");
        Ok(())
    }

    fn forward_remove(&self, text: &str) -> Result<(), String> {
        let (protocol, port, ipv6) = control::parse_remove_spec(text)?;
        let mut config = lock(&self.config);
        let same = |p: nat::Protocol, e: u16| p == protocol && e == port;
        let before = config.forwards.len() + config.forwards6.len();
        if ipv6 {
            config
                .forwards6
                .retain(|f| !same(f.protocol, f.external_port));
        } else {
            config
                .forwards
                .retain(|f| !same(f.protocol, f.external_port));
        }
        let removed = before != config.forwards.len() + config.forwards6.len();
        network::lock(&self.net)
            .net
            .remove_forward(protocol, port, ipv6);
        if !removed {
            return Err(format!("{text}: no such forward"));
        }
        info!(forward = %text, "port forward removed by the control socket");
        Ok(())
    }
}

/// A port's (or the ports' sum of) bridge counters as the protocol reports them.
fn counters(st: &bridge::Stats) -> Counters {
    Counters {
        tx_frames: st.tx_frames,
        tx_bytes: st.tx_bytes,
        rx_frames: st.rx_frames,
        rx_bytes: st.rx_bytes,
        to_host: st.to_host,
        from_host: st.from_host,
        local_replies: st.local_replies,
        tx_gso: st.tx_gso,
        rx_gso: st.rx_gso,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Serves the control socket on its own thread (one more thread per client, at most
/// [`MAX_CLIENTS`]).
pub(crate) fn spawn_control(
    listener: std::os::unix::net::UnixListener,
    control: Arc<Control>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("control".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => client(&control, s, serve_control_client),
                    Err(e) => {
                        warn!("accepting a control client failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
}

/// Serves `--metrics` over HTTP on its own thread (a thread per client, at most
/// [`MAX_CLIENTS`]): `GET /metrics` (or `/`) answers the text exposition, anything else 404.
pub(crate) fn spawn_metrics(listener: TcpListener, control: Arc<Control>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("metrics".to_owned())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(s) => client(&control, s, serve_metrics_client),
                    Err(e) => {
                        warn!("accepting a metrics client failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        })
        .map(drop)
}

/// Runs `serve` for `stream` on a thread of its own, unless [`MAX_CLIENTS`] are served already
/// (then the client is dropped at once).
fn client<S: Send + 'static>(control: &Arc<Control>, stream: S, serve: fn(&Control, S)) {
    if control.clients.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
        control.clients.fetch_sub(1, Ordering::SeqCst);
        warn!("too many control/metrics clients at once; one refused");
        return;
    }
    let c = control.clone();
    let spawned = std::thread::Builder::new()
        .name("control-client".to_owned())
        .spawn(move || {
            serve(&c, stream);
            c.clients.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        control.clients.fetch_sub(1, Ordering::SeqCst);
        warn!("starting a control client thread failed: {e}");
    }
}

/// One request line after the other until the client closes or sends a line too long.
fn serve_control_client(control: &Control, stream: UnixStream) {
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match (&mut reader)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST {
            let _ = writeln!(
                out,
                "{}",
                control::error_reply(&format!("request longer than {MAX_REQUEST} bytes"))
            );
            return;
        }
        let reply = control.handle(&String::from_utf8_lossy(&line));
        if writeln!(out, "{reply}").is_err() {
            return;
        }
    }
}

fn serve_metrics_client(control: &Control, mut stream: std::net::TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HTTP_HEAD {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    let mut words = first.split_whitespace();
    let (method, path) = (words.next(), words.next());
    let (status, body) = match (method, path) {
        (Some("GET"), Some("/metrics" | "/")) => ("200 OK", control.snapshot().metrics()),
        _ => ("404 Not Found", "not found: GET /metrics\n".to_owned()),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
