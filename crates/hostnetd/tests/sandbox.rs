//! hostnetd's least privilege after set-up (docs/SECURITY.md): with `--user nobody` it runs as
//! nobody with no_new_privs and a seccomp filter (`/proc/PID/status`), its socket is 0600 and owned
//! by nobody (another user cannot connect), the frontend's peer credentials are logged, and it still
//! serves frames: an ARP exchange with the gateway and a UDP round trip through the NAT and the TUN
//! (testbed's raw vhost-user frontend, `testbed::vhost_user::RawQueuePair`; no QEMU). A forbidden
//! system call (`--sandbox-selftest`: `socket(AF_INET)` after the filter is installed) kills it
//! with SIGSYS; with `--no-sandbox` the same call succeeds. Needs root (a network namespace, a
//! TUN, a user switch).
#![cfg(target_os = "linux")]

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bridge::testing::{
    GATEWAY, GATEWAY_MAC, GUEST_IP, GUEST_MAC, arp_request, dhcp_frame, udp_frame,
};
use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Decoder};
use testbed::netns::{Netns, Process};
use testbed::vhost_user::RawQueuePair;

/// The TUN's host address (a socket bound here receives what the guest sends through the NAT).
const HOST_TUN_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const SIGSYS: i32 = 31;

/// A started hostnetd: its process, stderr lines (ANSI colours stripped), ready line (if any).
struct Daemon {
    process: Process,
    stderr: mpsc::Receiver<String>,
    sock: std::path::PathBuf,
}

impl Daemon {
    fn spawn(ns: &Netns, tag: &str, extra: &[&str]) -> (Self, mpsc::Receiver<String>) {
        let sock = std::env::temp_dir().join(format!(
            "hostnetd-sandbox-{}-{tag}.sock",
            std::process::id()
        ));
        let common::Spawned {
            process,
            stderr,
            stdout,
        } = common::spawn(ns, &sock, extra);
        (
            Self {
                process,
                stderr,
                sock,
            },
            stdout,
        )
    }

    /// The first stderr line containing every one of `needles`, within `timeout`.
    fn log_line(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(l) if needles.iter().all(|n| l.contains(n)) => return l,
                Ok(_) => {}
                Err(_) => panic!("no log line with {needles:?} within {timeout:?}"),
            }
        }
    }

    /// `Name:\tvalue` of /proc/PID/status.
    fn status_field(&self, name: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.pid()))
            .expect("reading /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/PID/status"))
            .trim()
            .to_owned()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
    }
}

/// nobody's uid and gid from the user database (`id`).
fn nobody() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "nobody"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("a numeric id")
    };
    (id("-u"), id("-g"))
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn sandboxed_hostnetd_runs_as_nobody_under_seccomp_and_still_serves_frames() {
    let ns = Netns::new("hnd-sbx1").expect("namespace");
    let (daemon, ready) = Daemon::spawn(&ns, "served", &["--user", "nobody"]);
    let ready = ready
        .recv_timeout(Duration::from_secs(10))
        .expect("hostnetd printed no ready line within 10 s");
    assert!(ready.starts_with("ready socket="), "{ready}");
    let (uid, gid) = nobody();

    // The sandbox, from the kernel's point of view.
    assert_eq!(daemon.status_field("Seccomp"), "2", "seccomp filter mode");
    assert_eq!(daemon.status_field("NoNewPrivs"), "1");
    assert_eq!(
        daemon.status_field("Uid"),
        format!("{uid}\t{uid}\t{uid}\t{uid}"),
        "real, effective, saved and fs uid are nobody's"
    );
    assert_eq!(
        daemon.status_field("Gid"),
        format!("{gid}\t{gid}\t{gid}\t{gid}")
    );
    assert_eq!(daemon.status_field("Groups"), gid.to_string());

    // The socket: 0600, owned by nobody; another user (uid 1) cannot connect.
    let meta = std::fs::metadata(&daemon.sock).expect("socket file");
    assert_eq!(meta.mode() & 0o7777, 0o600, "socket mode {:o}", meta.mode());
    assert_eq!((meta.uid(), meta.gid()), (uid, gid));
    let other = Command::new("curl")
        .args(["-v", "-sS", "--max-time", "3", "--unix-socket"])
        .arg(&daemon.sock)
        .arg("http://hostnetd/")
        .uid(1)
        .gid(1)
        .output()
        .expect("curl");
    let why = String::from_utf8_lossy(&other.stderr);
    assert_eq!(other.status.code(), Some(7), "uid 1 connected: {why}");
    assert!(why.contains("Permission denied"), "{why}");

    // A frontend (root: peer credentials logged) with RX (queue 0) and TX (queue 1) rings.
    let mut guest = connect(&daemon.sock);
    let me = std::process::id().to_string();
    daemon.log_line(
        &["frontend accepted", &format!("pid={me}"), "uid=0", "gid=0"],
        Duration::from_secs(5),
    );

    // DHCP: DISCOVER → OFFER, REQUEST → ACK of the first pool address.
    let offer = dhcp(
        &mut guest,
        &daemon,
        &dhcp_message(MessageType::Discover, &[]),
    );
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), GUEST_IP);
    let ack = dhcp(
        &mut guest,
        &daemon,
        &dhcp_message(
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(GATEWAY),
                DhcpOption::RequestedIpAddress(GUEST_IP),
            ],
        ),
    );
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), GUEST_IP);

    // An ARP request for the gateway is answered.
    send(&mut guest, &arp_request(GUEST_MAC, GUEST_IP, GATEWAY));
    let reply = recv(&mut guest, &daemon);
    assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame: {reply:02x?}");
    assert_eq!(&reply[20..22], &[0, 2], "an ARP reply: {reply:02x?}");
    assert_eq!(&reply[22..28], &GATEWAY_MAC.0, "from the gateway's MAC");
    assert_eq!(&reply[28..32], &GATEWAY.octets());

    // A UDP round trip through the NAT and the TUN: the guest's datagram reaches a socket on the
    // host side of the TUN, whose answer reaches the guest.
    let host = utun::linux::netns::run_in(ns.fd(), || UdpSocket::bind((HOST_TUN_ADDR, 0)))
        .expect("entering the namespace")
        .expect("binding on the TUN's address");
    host.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let port = host.local_addr().expect("local address").port();
    send(
        &mut guest,
        &udp_frame(
            GUEST_MAC,
            GUEST_IP,
            5000,
            HOST_TUN_ADDR,
            port,
            b"ping-from-guest",
        ),
    );
    let mut buf = [0u8; 64];
    let (n, from) = host
        .recv_from(&mut buf)
        .expect("the guest's datagram did not reach the host through the TUN");
    assert_eq!(&buf[..n], b"ping-from-guest");
    host.send_to(b"pong-from-host", from).expect("answering");
    let frame = recv(&mut guest, &daemon);
    assert_eq!(&frame[12..14], &[0x08, 0x00], "an IPv4 frame: {frame:02x?}");
    assert_eq!(&frame[30..34], &GUEST_IP.octets(), "to the guest");
    assert!(
        frame.ends_with(b"pong-from-host"),
        "the host's answer: {frame:02x?}"
    );

    // Still alive and still sandboxed after serving.
    assert_eq!(daemon.status_field("Seccomp"), "2");
    daemon.process.signal("TERM").expect("kill -TERM");
    let mut daemon = daemon;
    let status = daemon
        .process
        .wait_timeout(Duration::from_secs(5))
        .expect("wait")
        .expect("hostnetd did not stop within 5 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(
        !daemon.sock.exists(),
        "nobody could not remove its socket file in /tmp"
    );
    drop(guest);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_forbidden_system_call_after_set_up_kills_hostnetd_with_sigsys() {
    let ns = Netns::new("hnd-sbx2").expect("namespace");
    let (mut daemon, _ready) = Daemon::spawn(&ns, "selftest", &["--sandbox-selftest"]);
    let status = daemon
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("hostnetd still runs 10 s after its forbidden call");
    assert_eq!(
        status.signal(),
        Some(SIGSYS),
        "not killed by SIGSYS: {status}"
    );
    daemon.log_line(
        &["sandbox self-test: calling socket(AF_INET)"],
        Duration::from_secs(2),
    );
    // The kernel's audit record names the call (where the kernel log is readable).
    let pid = format!("pid={} ", daemon.process.pid());
    if let Ok(out) = Command::new("dmesg").output() {
        let log = String::from_utf8_lossy(&out.stdout);
        match log
            .lines()
            .rev()
            .find(|l| l.contains("type=1326") && l.contains(&pid))
        {
            Some(l) => eprintln!("kernel audit: {l}"),
            None => eprintln!("no audit record for {pid}in dmesg"),
        }
    }

    // The control: without the filter the same call succeeds (the self-test says so, exit 3).
    let (mut daemon, _ready) =
        Daemon::spawn(&ns, "nosandbox", &["--no-sandbox", "--sandbox-selftest"]);
    let status = daemon
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("wait")
        .expect("hostnetd --no-sandbox --sandbox-selftest did not exit");
    assert_eq!(status.code(), Some(3), "{status}");
    daemon.log_line(
        &["socket(AF_INET) succeeded: no filter"],
        Duration::from_secs(2),
    );
}

/// A DHCP client message of `kind` from [`GUEST_MAC`] with `opts`.
fn dhcp_message(kind: MessageType, opts: &[DhcpOption]) -> Message {
    let mut m = Message::new_with_id(
        0x5a4d,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &GUEST_MAC.0,
    );
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        m.opts_mut().insert(o.clone());
    }
    m
}

/// The frontend: testbed's raw queue pair (`VERSION_1` only: 12-byte virtio-net headers, no
/// merged buffers, no offloads; an RX ring with buffers posted and a TX ring). The connection
/// is served: the daemon answers a second `GET_FEATURES` alike.
fn connect(sock: &std::path::Path) -> RawQueuePair {
    let mut guest = RawQueuePair::attach(sock).expect("connecting the frontend");
    let offered = guest.device().device_features();
    assert_eq!(guest.device().probe().expect("GET_FEATURES"), offered);
    guest
}

/// Puts `frame` (behind a zeroed virtio-net header) on the TX ring and kicks.
fn send(guest: &mut RawQueuePair, frame: &[u8]) {
    guest.send_frame(frame).expect("TX ring");
}

/// Sends a DHCP client message and decodes the server's answer (Ethernet, IPv4 without
/// options, UDP: the message starts at byte 42).
fn dhcp(guest: &mut RawQueuePair, daemon: &Daemon, msg: &Message) -> Message {
    send(guest, &dhcp_frame(GUEST_MAC, msg));
    let frame = recv(guest, daemon);
    assert!(frame.len() > 42, "short DHCP answer {frame:02x?}");
    Message::decode(&mut Decoder::new(&frame[42..])).expect("a DHCP message")
}

/// The next frame the device put in an RX buffer (virtio-net header stripped), within 5 s;
/// else the daemon's counters (SIGUSR1) go into the panic message.
fn recv(guest: &mut RawQueuePair, daemon: &Daemon) -> Vec<u8> {
    if let Some(frame) = guest.recv_frame(Duration::from_secs(1)).expect("RX ring") {
        return frame;
    }
    // Rarely (about 1 run in 30 on 2 busy cores) the first frame never arrived: kicking both
    // rings again, as a driver that posts more work does, is logged so a lost kick shows;
    // what this test checks is the sandbox, not the kick race.
    eprintln!("RE-KICK: no frame 1 s after sending; kicking RX and TX again");
    guest.kick_all().expect("kick");
    if let Some(frame) = guest.recv_frame(Duration::from_secs(4)).expect("RX ring") {
        return frame;
    }
    daemon.process.signal("USR1").expect("kill -USR1");
    let stats = daemon.log_line(&["connection stats"], Duration::from_secs(5));
    panic!("no frame on the RX ring within 5 s; {stats}");
}
