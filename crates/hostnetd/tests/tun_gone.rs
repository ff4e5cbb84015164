//! hostnetd and its TUN deleted underneath (`ip link del`): it must not go on serving on a dead
//! link. It logs an error naming the TUN and exits with status 1, both while no frontend is
//! connected and while one is (testbed's raw vhost-user frontend,
//! `testbed::vhost_user::RawQueuePair`: memory table, an RX ring with buffers posted and a TX
//! ring, enabled). On the way, the served case checks that SIGUSR1 logs the NAT's drop
//! reasons by name. No QEMU; needs root (a network namespace, a TUN, bash for `/dev/udp`).
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use testbed::netns::Netns;
use testbed::vhost_user::RawQueuePair;

impl Daemon {
    /// Deletes the TUN and expects hostnetd to exit within 5 s with status 1 and an error line
    /// naming the TUN.
    fn delete_tun_and_expect_exit(mut self, ns: &Netns) {
        ns.ip(&["link", "del", &self.tun])
            .unwrap_or_else(|e| panic!("ip link del {}: {e}", self.tun));
        let t = Instant::now();
        let status = self
            .process
            .wait_timeout(Duration::from_secs(5))
            .expect("wait");
        let took = t.elapsed();
        let status = status.unwrap_or_else(|| {
            panic!(
                "hostnetd still runs 5 s after its TUN {} was deleted",
                self.tun
            )
        });
        eprintln!("hostnetd exited {status} {took:?} after the TUN went");
        assert_eq!(status.code(), Some(1), "{status}");
        let mut lines = Vec::new();
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(1)) {
            lines.push(l);
        }
        let log = lines.join("\n");
        let last = lines.last().map(String::as_str).unwrap_or_default();
        assert!(
            last.starts_with("hostnetd: error: ") && last.contains(&format!("TUN {} ", self.tun)),
            "the last line is not the error naming the TUN:\n{log}"
        );
        assert!(
            !self.sock.exists(),
            "the socket file {} was left behind",
            self.sock.display()
        );
    }
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn hostnetd_without_a_frontend_exits_when_its_tun_is_deleted() {
    let ns = Netns::new("hnd-tun1").expect("namespace");
    let daemon = Daemon::start(&ns, "idle");
    // On the way: the start-up log names the egress policy and its default deny.
    let policy = daemon
        .wait_for_line("egress policy", Duration::from_secs(5))
        .expect("no egress policy line at start");
    assert!(policy.contains("deny 169.254.0.0/16 (default)"), "{policy}");
    daemon.delete_tun_and_expect_exit(&ns);
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn hostnetd_serving_a_frontend_exits_when_its_tun_is_deleted() {
    let ns = Netns::new("hnd-tun2").expect("namespace");
    let daemon = Daemon::start(&ns, "served");

    // The frontend: guest memory the daemon maps, the RX ring with device-writable buffers
    // posted (kicked) and the TX ring, enabled.
    let mut frontend = RawQueuePair::attach(&daemon.sock).expect("connecting the frontend");
    // The connection is served: the daemon answers and is alive.
    let offered = frontend.device().device_features();
    assert_eq!(frontend.device().probe().expect("GET_FEATURES"), offered);

    // Item 6 on the way: 20 datagrams to the NAT's external address on a port nobody mapped are
    // NAT drops of reason NoMapping, and SIGUSR1 logs them by name.
    ns.exec(&[
        "bash",
        "-c",
        "for i in $(seq 20); do echo x > /dev/udp/100.64.0.2/9999; done",
    ])
    .expect("sending UDP to the external address");
    std::thread::sleep(Duration::from_millis(200));
    daemon.process.signal("USR1").expect("kill -USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    let stats = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = daemon
            .stderr
            .recv_timeout(left)
            .expect("no connection stats within 5 s of SIGUSR1");
        if line.contains("connection stats") {
            break line;
        }
    };
    // H's own IPv6 multicast on the TUN (it has an IPv6 address) is `Ipv6Ignored`, not these.
    assert!(stats.contains("nat.NoMapping=20"), "{stats}");
    assert!(stats.contains("NatInbound="), "{stats}");

    daemon.delete_tun_and_expect_exit(&ns);
    drop(frontend);
}
