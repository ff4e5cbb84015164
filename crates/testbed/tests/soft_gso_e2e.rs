//! End-to-end: the simulated guest's software offloads (`GuestConfig::soft_offloads`) for a
//! device that takes no checksum or segmentation offload, only GUEST_CSUM (as passt's
//! vhost-user mode). The guest namespace G's kernel hands the guest's TAP TCP super-frames
//! and partial checksums (the TAP takes all three `TUN_F_*` offloads); the driver cuts and
//! completes them. The device is this test's thread: it moves every TX frame to a TAP in the
//! server namespace S (a wire) and every frame of that TAP into the RX ring. S's kernel
//! checks each checksum, so 8 MiB sent by G arrive whole (sha256) only if every segment and
//! every completed checksum is right; no TX frame asks the device for an offload, none is
//! longer than the MTU, and the driver counted the super-frames it cut. Needs root:
//! `cargo test -p testbed --test soft_gso_e2e -- --include-ignored`.

#![cfg(target_os = "linux")]

use std::num::Wrapping;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use netns::Netns;
use testbed::guest::{GuestConfig, RX_QUEUE, SimGuest, TX_QUEUE, features};
use utun::Tun;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemoryMmap};

/// `virtio_net_hdr_v1`.
const HDR: usize = 12;
const MTU: usize = 1500;
const SIZE: u64 = 8 << 20;

/// `recv.py <port> <out>`: takes one connection and writes what it carries to `out`.
const RECV_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(1)
print("listening", flush=True)
c, _ = s.accept()
with open(sys.argv[2], "wb") as f:
    while True:
        b = c.recv(1 << 20)
        if not b:
            break
        f.write(b)
"#;

/// `send.py <addr> <port> <file>`: sends the file over one connection.
const SEND_PY: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
c.sendall(open(sys.argv[3], "rb").read())
c.close()
"#;

/// The device's two directions, moved by the test's thread.
struct Wire {
    mem: GuestMemoryMmap,
    txq: Queue,
    rxq: Queue,
    tap: Tun,
    buf: Vec<u8>,
    /// TX frames that asked for an offload, or were longer than the MTU.
    bad: u64,
}

impl Wire {
    /// Every TX chain to S's TAP (its virtio-net header checked and dropped); returns how
    /// many.
    fn tx(&mut self) -> usize {
        let mut n = 0;
        while let Some(chain) = self.txq.pop_descriptor_chain(&self.mem) {
            let head = chain.head_index();
            self.buf.clear();
            for d in chain {
                let start = self.buf.len();
                self.buf.resize(start + d.len() as usize, 0);
                self.mem
                    .read_slice(&mut self.buf[start..], d.addr())
                    .unwrap();
            }
            self.txq.add_used(&self.mem, head, 0).unwrap();
            if self.buf[..HDR] != [0; HDR] || self.buf.len() - HDR > 14 + MTU {
                self.bad += 1;
            }
            let _ = self.tap.send(&self.buf[HDR..]);
            n += 1;
        }
        n
    }

    /// Frames of S's TAP into RX buffers (one each: 2 KiB buffers, MRG_RXBUF); returns how
    /// many. A frame with no buffer free waits in the TAP.
    fn rx(&mut self) -> usize {
        let mut n = 0;
        let mut frame = vec![0u8; 65_536];
        loop {
            let avail = self.rxq.avail_idx(&self.mem, Ordering::Acquire).unwrap();
            if avail == Wrapping(self.rxq.next_avail()) {
                return n;
            }
            let Ok(len) = self.tap.recv(&mut frame) else {
                return n;
            };
            let chain = self.rxq.pop_descriptor_chain(&self.mem).unwrap();
            let head = chain.head_index();
            let d = chain.into_iter().next().unwrap();
            let mut hdr = [0u8; HDR];
            hdr[10] = 1; // num_buffers
            assert!(HDR + len <= d.len() as usize, "{len}-byte frame");
            self.mem.write_slice(&hdr, d.addr()).unwrap();
            self.mem
                .write_slice(&frame[..len], d.addr().unchecked_add(HDR as u64))
                .unwrap();
            self.rxq
                .add_used(&self.mem, head, (HDR + len) as u32)
                .unwrap();
            n += 1;
        }
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_guest_on_a_device_without_tso_uploads_whole_in_segments_it_cut_itself() {
    let g = Netns::new("softgso-g").unwrap();
    let s = Netns::new("softgso-s").unwrap();
    let guest = SimGuest::new(
        GuestConfig::default(),
        features::WANTED | features::GUEST_CSUM,
    )
    .unwrap();
    assert!(guest.vnet_hdr());
    assert_eq!(
        guest.acked_features() & (features::CSUM | features::HOST_TSO4 | features::HOST_TSO6),
        0
    );
    let open = |ns: &Netns, vnet: bool| {
        let mut b = Tun::builder()
            .tap(true)
            .name("eth0")
            .mtu(MTU as u32)
            .nonblocking(true)
            .netns(ns.fd());
        if vnet {
            b = b.vnet_hdr(true).offload(guest.tap_offload_flags());
        }
        let t = b.open().unwrap();
        t.set_nonblocking(true).unwrap();
        t
    };
    let tap = open(&g, true);
    let wire_tap = open(&s, false);
    for (ns, addr) in [(&g, "10.77.0.1/24"), (&s, "10.77.0.2/24")] {
        ns.add_addr("eth0", addr).unwrap();
        ns.link_up("eth0").unwrap();
    }
    let mut wire = Wire {
        mem: guest.memory().clone(),
        txq: guest.device_queue(TX_QUEUE).unwrap(),
        rxq: guest.device_queue(RX_QUEUE).unwrap(),
        tap: wire_tap,
        buf: Vec::new(),
        bad: 0,
    };
    let mut driver = guest.into_driver(Arc::new(tap)).unwrap();

    let dir = std::env::temp_dir().join(format!("softgso-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sent, got) = (dir.join("sent"), dir.join("got"));
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&sent, &data).unwrap();
    let mut receiver = s
        .spawn(&["python3", "-c", RECV_PY, "9000", got.to_str().unwrap()])
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut sender = g
        .spawn(&[
            "python3",
            "-c",
            SEND_PY,
            "10.77.0.2",
            "9000",
            sent.to_str().unwrap(),
        ])
        .unwrap();
    let t = Instant::now();
    let mut done = false;
    while t.elapsed() < Duration::from_secs(60) {
        driver.pump_tx().unwrap();
        let moved = wire.tx();
        driver.reclaim_tx().unwrap();
        let received = wire.rx();
        driver.service_rx().unwrap();
        if matches!(receiver.wait_timeout(Duration::ZERO), Ok(Some(_))) {
            done = true;
            break;
        }
        if moved + received == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    let sender_status = sender.wait_timeout(Duration::from_secs(5));
    let stats = driver.stats();
    let summary = stats.summary();
    assert!(done, "the transfer did not end within 60 s: {summary}");
    assert!(
        matches!(sender_status, Ok(Some(s)) if s.success()),
        "{summary}"
    );
    assert_eq!(sha256(&got), sha256(&sent), "{summary}");
    assert_eq!(
        wire.bad, 0,
        "TX frames asking for an offload or over the MTU"
    );
    let g = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    assert!(g(&stats.tx_segmented) > 0, "{summary}");
    assert!(g(&stats.tx_checksummed) > 0, "{summary}");
    assert_eq!(g(&stats.tx_gso), 0, "{summary}");
    assert_eq!(g(&stats.tap_read_errors), 0, "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}
