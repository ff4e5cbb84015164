//! hostnetd driven by testbed's simulated guest as a vhost-user frontend
//! (`testbed::vhost_user`): the driver side of the rings written independently of `bridge`,
//! guest memory in a shared file, kicks and interrupts over eventfds, as a VMM does, with
//! no QEMU. Real programs in the guest namespace are the traffic: udhcpc, ping, dig, curl
//! (16 MiB, SHA-256 checked) and a 16 MiB upload.
//!
//! Needs root (namespaces, a TAP, a TUN), busybox, curl, dig, dnsmasq, python3.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use common::Daemon;
use testbed::guest::GuestConfig;
use testbed::netns::{Netns, Process};
use testbed::vhost_user::Attached;

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn simulated_guest_over_vhost_user_gets_dhcp_ping_dns_and_transfers() -> Result<()> {
    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, "vu");
    let attached = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let net = attached.net_config();
    ensure!(net.mtu == 1500 && net.link_up(), "config space {net:?}");

    let lease = world.lease()?;
    ensure!(
        lease.ip == "192.168.64.2".parse::<std::net::Ipv4Addr>()?,
        "{lease:?}"
    );
    for target in [GATEWAY, SERVER_ADDR] {
        world
            .guest
            .exec(&["ping", "-c", "3", "-i", "0.2", "-W", "3", target])
            .with_context(|| format!("ping {target}"))?;
    }
    let answer = world.guest.exec(&[
        "dig",
        "+short",
        "+time=3",
        "+tries=2",
        &format!("@{GATEWAY}"),
        DNS_NAME,
    ])?;
    ensure!(answer.trim() == SERVER_ADDR, "dig answered {answer:?}");

    let got = world.guest.exec(&[
        "sh",
        "-c",
        &format!("curl -sS --max-time 60 http://{SERVER_ADDR}/{BLOB_NAME} | sha256sum"),
    ])?;
    ensure!(
        got.split_whitespace().next() == Some(world.blob_sha256.as_str()),
        "download sha256 {got:?}, want {}",
        world.blob_sha256
    );

    let sink = world.upload_sink()?;
    let sent = world.guest.exec(&[
        "python3",
        "-c",
        &format!(
            "import hashlib,os,socket\n\
             d=os.urandom({BLOB_SIZE})\n\
             s=socket.create_connection(('{SERVER_ADDR}',{UPLOAD_PORT}),timeout=60)\n\
             s.sendall(d)\n\
             s.close()\n\
             print(len(d),hashlib.sha256(d).hexdigest())"
        ),
    ])?;
    let received = sink.result()?;
    ensure!(
        sent.trim() == received.trim(),
        "upload: the guest sent {sent:?}, the server got {received:?}"
    );

    ensure!(!attached.has_failed(), "a driver thread stopped");
    let summary = attached.stop()?;
    eprintln!("guest: {summary}");
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    // A polite stop removes the socket file.
    daemon.process.signal("TERM")?;
    daemon.process.wait_timeout(Duration::from_secs(5))?;
    Ok(())
}

/// A frontend gone in the middle of a download (a hostile-frontend case of the hardening
/// issue, driven by testbed's frontend as issue 17 asks): the guest downloads the blob at
/// 2 MB/s and the frontend disconnects after a second, its rings mid-use. hostnetd logs the
/// connection's end and keeps running, `ctl guests` lists no guest, and the next frontend in
/// the same namespace gets the same lease (the same MAC) and downloads the blob whole.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_frontend_gone_mid_download_leaves_hostnetd_serving_the_next() -> Result<()> {
    let world = World::new()?;
    let mut daemon = Daemon::start(&world.host, "vu-gone");
    let first = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let lease = world.lease()?;
    let url = format!("http://{SERVER_ADDR}/{BLOB_NAME}");
    let download = world.guest.spawn(&[
        "curl",
        "-sS",
        "--limit-rate",
        "2M",
        "--max-time",
        "30",
        "-o",
        "/dev/null",
        &url,
    ])?;
    std::thread::sleep(Duration::from_millis(1000));
    let guests = daemon.ctl("guests")?;
    ensure!(
        guests.contains("ipv4=192.168.64.2"),
        "ctl guests said {guests:?}"
    );
    drop(first);
    drop(download);
    ensure!(
        daemon
            .wait_for_line("connection stats", Duration::from_secs(5))
            .is_some(),
        "hostnetd logged no end of the connection"
    );
    ensure!(
        daemon.process.child_mut().try_wait()?.is_none(),
        "hostnetd exited"
    );
    let guests = daemon.ctl("guests")?;
    ensure!(
        !guests.contains("192.168.64."),
        "a guest is still listed: {guests}"
    );
    let second = Attached::start(&daemon.sock, world.guest.name(), GuestConfig::default())?;
    let again = world.lease()?;
    ensure!(again.ip == lease.ip, "lease {again:?} after {lease:?}");
    let got = world.guest.exec(&[
        "sh",
        "-c",
        &format!("curl -sS --max-time 60 {url} | sha256sum"),
    ])?;
    ensure!(
        got.split_whitespace().next() == Some(world.blob_sha256.as_str()),
        "download sha256 {got:?}, want {}",
        world.blob_sha256
    );
    ensure!(!second.has_failed(), "a driver thread stopped");
    second.stop()?;
    Ok(())
}

/// G (the simulated guest's TAP), H (hostnetd, its TUN), S (198.18.0.2: busybox httpd, dnsmasq).
struct World {
    // Processes first: they are killed before their namespaces go.
    _httpd: Process,
    _dnsmasq: Process,
    guest: Netns,
    host: Netns,
    server: Netns,
    dir: common::Folder,
    blob_sha256: String,
}

impl World {
    fn new() -> Result<Self> {
        let dir = common::Folder::new("hostnet-vu-www")?;
        let blob_sha256 = common::random_blob(&dir, BLOB_NAME, BLOB_SIZE)?;
        let guest = Netns::new("vu-g")?;
        let (host, server, httpd) = common::host_and_server("vu", &dir)?;
        let dnsmasq = server.spawn(&[
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &format!("--listen-address={SERVER_ADDR}"),
            &format!("--address=/{DNS_NAME}/{SERVER_ADDR}"),
            &format!("--pid-file={}", dir.join("dnsmasq.pid").display()),
            "--user=root",
        ])?;
        Ok(Self {
            _httpd: httpd,
            _dnsmasq: dnsmasq,
            guest,
            host,
            server,
            dir,
            blob_sha256,
        })
    }

    /// udhcpc in G on the TAP.
    fn lease(&self) -> Result<testbed::netns::lease::Lease> {
        let script = self.dir.join("udhcpc.sh");
        let out = self.dir.join("lease");
        testbed::netns::lease::write_udhcpc_script(&script, &out)?;
        let script = script.to_str().context("path is not UTF-8")?;
        self.guest.exec(&[
            "busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "2", "-s", script,
        ])?;
        Ok(testbed::netns::lease::Lease::read(&out)?)
    }

    /// A TCP sink in S that prints `<bytes> <sha256>` of what one connection sent.
    fn upload_sink(&self) -> Result<Sink> {
        let mut cmd = self.server.command("python3");
        cmd.args([
            "-c",
            &format!(
                "import hashlib,socket\n\
                 s=socket.socket()\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('{SERVER_ADDR}',{UPLOAD_PORT}))\n\
                 s.listen(1)\n\
                 print('listening',flush=True)\n\
                 s.settimeout(60)\n\
                 c,_=s.accept()\n\
                 c.settimeout(60)\n\
                 h=hashlib.sha256()\n\
                 n=0\n\
                 while True:\n\
                 \x20d=c.recv(65536)\n\
                 \x20if not d: break\n\
                 \x20h.update(d)\n\
                 \x20n+=len(d)\n\
                 print(n,h.hexdigest(),flush=True)"
            ),
        ])
        .stdout(Stdio::piped());
        let mut process = Process::spawn(&mut cmd)?;
        let stdout = process.take_stdout().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let first = rx.recv_timeout(Duration::from_secs(10))?;
        ensure!(first == "listening", "sink said {first:?}");
        Ok(Sink {
            _process: process,
            lines: rx,
        })
    }
}

struct Sink {
    _process: Process,
    lines: mpsc::Receiver<String>,
}

impl Sink {
    fn result(&self) -> Result<String> {
        Ok(self.lines.recv_timeout(Duration::from_secs(60))?)
    }
}

const GATEWAY: &str = "192.168.64.1";
use common::SERVER_ADDR;
const DNS_NAME: &str = "www.hostnet.test";
const BLOB_NAME: &str = "blob";
const BLOB_SIZE: usize = 16 << 20;
const UPLOAD_PORT: u16 = 9000;
