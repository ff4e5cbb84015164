//! Criterion benches of the bridge's device core on one core, no threads: frames per second
//! through TX (descriptor chain → gateway classification → NAT → in-memory host link) and RX
//! (in-memory host link → NAT → RX chain, with and without MRG_RXBUF), for 64-byte and
//! 1514-byte frames, batch sizes 1 and 64, on one established UDP flow. A baseline group
//! measures the NAT alone on the same packets and a plain copy of the same bytes, so the
//! bridge numbers can be read as ratios.
//!
//! Run: `cargo bench -p hostnet-benches --bench bridge`.
// criterion 0.7's `criterion_group!` defines undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use bridge::testing::{
    EXTERNAL, GATEWAY, GATEWAY_MAC, GUEST_IP, GUEST_MAC, MockNet, SERVER, guest_memory, udp_frame,
    udp_packet,
};
use bridge::{
    FrameBatch, Gateway, GatewayConfig, GuestState, HostLink, MemoryLink, RxEngine, RxQueue, Stats,
    TxEngine, TxQueue, VIRTIO_NET_HDR_LEN,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nat::{Instant, Nat, NatConfig, Verdict};
use virtio_queue::Queue;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const HDR: usize = VIRTIO_NET_HDR_LEN;
const QSIZE: u16 = 256;
const NOW: Instant = Instant::from_secs(1);
const SIZES: [usize; 2] = [64, 1514];
const BATCHES: [usize; 2] = [1, 64];

fn gateway() -> Gateway {
    Gateway::new(GatewayConfig {
        gateway: GATEWAY,
        gateway_mac: GATEWAY_MAC,
        prefix_len: 24,
        guest_mac: GUEST_MAC,
        dhcp_pool: std::net::Ipv4Addr::new(192, 168, 64, 2)
            ..=std::net::Ipv4Addr::new(192, 168, 64, 254),
        lease: Duration::from_secs(3600),
        mtu: 1500,
        dns: true,
        dns4_relay: false,
        dns6: bridge::Dns6::Nat,
        static_guest_ip: Some(GUEST_IP),
        ipv6: Some(bridge::Ipv6Config::default()),
    })
    .expect("gw")
}

fn guest_frame(size: usize) -> Vec<u8> {
    udp_frame(
        GUEST_MAC,
        GUEST_IP,
        40000,
        SERVER,
        53,
        &vec![0xab; size - 42],
    )
}

/// The external port of the established flow.
fn establish(nat: &mut Nat) -> u16 {
    let mut p = udp_packet(GUEST_IP, 40000, SERVER, 53, b"x");
    assert_eq!(nat.outbound(&mut p, NOW), Verdict::Forward);
    u16::from_be_bytes([p[20], p[21]])
}

struct TxRig<'a> {
    mem: &'a GuestMemoryMmap,
    net: MockNet<'a>,
    q: Queue,
    engine: TxEngine,
    guest: GuestState,
    replies: FrameBatch,
    nat: Nat,
    inside: MemoryLink,
    outside: MemoryLink,
    stats: Stats,
    scratch: Vec<Vec<u8>>,
}

impl<'a> TxRig<'a> {
    fn new(mem: &'a GuestMemoryMmap, size: usize, batch: usize) -> Self {
        let mut net = MockNet::new(mem, QSIZE);
        let mut bytes = vec![0u8; HDR];
        bytes.extend_from_slice(&guest_frame(size));
        for i in 0..QSIZE {
            let a = net.alloc(bytes.len());
            mem.write_slice(&bytes, GuestAddress(a)).expect("frame");
            net.store_tx_desc(i, Descriptor::new(a, bytes.len() as u32, 0, 0));
        }
        let (_, q) = net.queues(true);
        let mut nat = Nat::new(NatConfig::default()).expect("nat");
        establish(&mut nat);
        let (inside, outside) = MemoryLink::pair(4096).expect("link");
        TxRig {
            mem,
            net,
            q,
            engine: TxEngine::new(TxQueue::new(HDR, 1514), batch, 1514),
            guest: GuestState::new(gateway()),
            replies: FrameBatch::new(batch, 2048),
            nat,
            inside,
            outside,
            stats: Stats::default(),
            scratch: vec![vec![0u8; 2048]; 64],
        }
    }

    /// Publishes a whole ring of frames, processes them in batches (timed), drains the host.
    fn round(&mut self) -> Duration {
        for i in 0..QSIZE {
            self.net.publish_tx(i);
        }
        let t = StdInstant::now();
        let mut done = 0;
        while done < usize::from(QSIZE) {
            let out = self
                .engine
                .pull(
                    self.mem,
                    &mut self.q,
                    &mut self.replies,
                    &mut self.guest,
                    NOW,
                    &mut self.stats,
                )
                .expect("pull");
            self.engine.translate(
                &mut self.nat,
                &mut self.replies,
                &mut self.guest,
                NOW,
                &mut self.stats,
            );
            self.engine
                .push(&self.inside, &mut self.stats)
                .expect("push");
            done += out.chains.max(1);
        }
        let el = t.elapsed();
        self.drain();
        el
    }

    fn drain(&mut self) {
        let mut lens = [0usize; 64];
        loop {
            let mut bufs: Vec<&mut [u8]> = self.scratch.iter_mut().map(|b| &mut b[..]).collect();
            match self.outside.recv_batch(&mut bufs, &mut lens) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

struct RxRig<'a> {
    mem: &'a GuestMemoryMmap,
    net: MockNet<'a>,
    q: Queue,
    engine: RxEngine,
    nat: Nat,
    inside: MemoryLink,
    outside: MemoryLink,
    stats: Stats,
    packet: Vec<u8>,
    frames_per_round: usize,
}

impl<'a> RxRig<'a> {
    fn new(mem: &'a GuestMemoryMmap, size: usize, batch: usize, mrg: bool) -> Self {
        let net = MockNet::new(mem, QSIZE);
        let buf = if mrg { 1024u32 } else { 2048 };
        let mut alloc = net_alloc(mem);
        for i in 0..QSIZE {
            net.store_rx_desc(i, Descriptor::new(alloc(buf as usize), buf, 2, 0));
        }
        let (q, _) = net.queues(true);
        let mut nat = Nat::new(NatConfig::default()).expect("nat");
        let port = establish(&mut nat);
        let (inside, outside) = MemoryLink::pair(4096).expect("link");
        let packet = udp_packet(SERVER, 53, EXTERNAL, port, &vec![0xcd; size - 42]);
        let per_frame = (HDR + size).div_ceil(buf as usize);
        RxRig {
            mem,
            net,
            q,
            engine: RxEngine::new(RxQueue::new(HDR, mrg), batch, 65535, 1500, GATEWAY_MAC),
            nat,
            inside,
            outside,
            stats: Stats::default(),
            packet,
            frames_per_round: usize::from(QSIZE) / per_frame,
        }
    }

    fn round(&mut self) -> Duration {
        for i in 0..QSIZE {
            self.net.publish_rx(i);
        }
        for _ in 0..self.frames_per_round {
            assert!(self.outside.send(&self.packet));
        }
        let t = StdInstant::now();
        let mut done = 0;
        while done < self.frames_per_round {
            if self
                .engine
                .receive(&self.inside, &mut self.stats)
                .expect("receive")
                > 0
            {
                self.engine
                    .translate(&mut self.nat, NOW, GUEST_MAC, &mut self.stats);
            }
            let out = self
                .engine
                .deliver(self.mem, &mut self.q, &mut self.stats)
                .expect("deliver");
            assert!(!out.starved, "ring sized for the round");
            done += out.delivered;
        }
        t.elapsed()
    }
}

/// A bump allocator over the data area of guest memory (RX buffers).
fn net_alloc(_mem: &GuestMemoryMmap) -> impl FnMut(usize) -> u64 {
    let mut next = bridge::testing::DATA_START;
    move |len| {
        let a = next;
        next += (len as u64 + 63) & !63;
        a
    }
}

fn tx(c: &mut Criterion) {
    let mut g = c.benchmark_group("bridge/tx");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for size in SIZES {
        for batch in BATCHES {
            let mem = guest_memory();
            let mut rig = TxRig::new(&mem, size, batch);
            g.throughput(Throughput::Elements(u64::from(QSIZE)));
            g.bench_function(format!("{size}B/batch{batch}"), |b| {
                b.iter_custom(|iters| (0..iters).map(|_| rig.round()).sum())
            });
            assert_eq!(rig.stats.total_drops(), 0, "tx drops: {:?}", rig.stats);
        }
    }
}

fn rx(c: &mut Criterion) {
    let mut g = c.benchmark_group("bridge/rx");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for mrg in [false, true] {
        for size in SIZES {
            for batch in BATCHES {
                let mem = guest_memory();
                let mut rig = RxRig::new(&mem, size, batch, mrg);
                g.throughput(Throughput::Elements(rig.frames_per_round as u64));
                let name = format!("{}/{size}B/batch{batch}", if mrg { "mrg" } else { "nomrg" });
                g.bench_function(name, |b| {
                    b.iter_custom(|iters| (0..iters).map(|_| rig.round()).sum())
                });
                assert_eq!(rig.stats.total_drops(), 0, "rx drops: {:?}", rig.stats);
            }
        }
    }
}

/// The NAT alone on the same packets, and a copy of the frame bytes: what the bridge adds
/// on top of these is the device's own cost.
fn baseline(c: &mut Criterion) {
    let mut g = c.benchmark_group("bridge/baseline");
    g.measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    for size in SIZES {
        let mut nat = Nat::new(NatConfig::default()).expect("nat");
        let port = establish(&mut nat);
        let out = udp_packet(GUEST_IP, 40000, SERVER, 53, &vec![0xab; size - 42]);
        let inb = udp_packet(SERVER, 53, EXTERNAL, port, &vec![0xcd; size - 42]);
        let mut a = out.clone();
        g.bench_function(format!("nat-outbound/{size}B"), |b| {
            b.iter(|| {
                a.copy_from_slice(&out);
                black_box(nat.outbound(black_box(&mut a), NOW))
            })
        });
        let mut a = inb.clone();
        g.bench_function(format!("nat-inbound/{size}B"), |b| {
            b.iter(|| {
                a.copy_from_slice(&inb);
                black_box(nat.inbound(black_box(&mut a), NOW))
            })
        });
        let src = vec![0u8; size];
        let mut dst = vec![0u8; size];
        g.bench_function(format!("memcpy/{size}B"), |b| {
            b.iter(|| dst.copy_from_slice(black_box(&src)))
        });
    }
}

criterion_group!(benches, tx, rx, baseline);
criterion_main!(benches);
