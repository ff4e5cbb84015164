//! hostnetd and its TUN deleted underneath (`ip link del`): it must not go on serving on a dead
//! link. It logs an error naming the TUN and exits with status 1, both while no frontend is
//! connected and while one is (a vhost-user frontend written here: memory table, an RX ring with
//! buffers posted, enabled). On the way, the served case checks that SIGUSR1 logs the NAT's drop
//! reasons by name. No QEMU; needs root (a network namespace, a TUN, bash for `/dev/udp`).
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::Daemon;
use testbed::netns::Netns;

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
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;

    use vhost::vhost_user::Frontend;
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    use vmm_sys_util::eventfd::EventFd;

    const MEM: u64 = 1 << 20;
    const VA: u64 = 0x7000_0000;
    const DESC: u64 = 0;
    const AVAIL: u64 = 0x1000;
    const USED: u64 = 0x2000;
    const BUFS: u64 = 0x1_0000;
    const BUF_LEN: u32 = 2048;
    const SIZE: u16 = 256;
    const POSTED: u16 = 64;

    let ns = Netns::new("hnd-tun2").expect("namespace");
    let daemon = Daemon::start(&ns, "served");

    // Guest memory: a file the daemon maps; the RX ring (queue 0) with POSTED device-writable
    // buffers in its avail ring.
    let path = std::env::temp_dir().join(format!("hostnetd-tungone-{}.mem", std::process::id()));
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("memory file");
    let _ = std::fs::remove_file(&path);
    mem.set_len(MEM).expect("sizing the memory file");
    for i in 0..u64::from(POSTED) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&(BUFS + i * u64::from(BUF_LEN)).to_le_bytes());
        d[8..12].copy_from_slice(&BUF_LEN.to_le_bytes());
        d[12..14].copy_from_slice(&2u16.to_le_bytes()); // VIRTQ_DESC_F_WRITE
        mem.write_at(&d, DESC + i * 16).expect("descriptor");
        let head = u16::try_from(i).expect("small index");
        mem.write_at(&head.to_le_bytes(), AVAIL + 4 + i * 2)
            .expect("avail ring entry");
    }
    mem.write_at(&POSTED.to_le_bytes(), AVAIL + 2)
        .expect("avail idx");

    let frontend = Frontend::connect(&daemon.sock, 2).expect("connecting the frontend");
    frontend.set_owner().expect("set_owner");
    let features = frontend.get_features().expect("get_features");
    // VERSION_1 only: without PROTOCOL_FEATURES a ring is enabled once it has its kick fd.
    frontend
        .set_features(features & (1 << 32))
        .expect("set_features");
    frontend
        .set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: MEM,
            userspace_addr: VA,
            mmap_offset: 0,
            mmap_handle: mem.as_raw_fd(),
        }])
        .expect("set_mem_table");
    let call = EventFd::new(0).expect("eventfd");
    let kick = EventFd::new(0).expect("eventfd");
    frontend.set_vring_num(0, SIZE).expect("set_vring_num");
    frontend
        .set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: SIZE,
                queue_size: SIZE,
                flags: 0,
                desc_table_addr: VA + DESC,
                used_ring_addr: VA + USED,
                avail_ring_addr: VA + AVAIL,
                log_addr: None,
            },
        )
        .expect("set_vring_addr");
    frontend.set_vring_base(0, 0).expect("set_vring_base");
    frontend.set_vring_call(0, &call).expect("set_vring_call");
    frontend.set_vring_kick(0, &kick).expect("set_vring_kick");
    kick.write(1).expect("kick");
    // The connection is served: the daemon answers and is alive.
    assert_eq!(frontend.get_features().expect("get_features"), features);

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
