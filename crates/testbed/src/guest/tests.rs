//! The driver against a device built on virtio-queue's own device side, in both modes.

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::ring::{
    CTRL_BUF_SIZE, MAX_FRAME_BUF, MAX_QUEUE_SIZE, RX_BUF_BASE, RingLayout, layout_end,
    rx_buffer_size,
};
use super::*;

/// A minimal device built on virtio-queue's own device side: echoes every TX frame back on
/// RX with its header (flags, GSO fields) passed through (MRG_RXBUF when negotiated),
/// raising interrupts as virtio-queue says.
fn echo_device(
    mem: GuestMemoryMmap,
    mut rxq: Queue,
    mut txq: Queue,
    irq: Arc<Interrupts>,
    mrg: bool,
    kicks: mpsc::Receiver<u16>,
) -> u64 {
    let mut echoed = 0;
    loop {
        match kicks.recv_timeout(Duration::from_millis(20)) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return echoed,
        }
        echoed += echo_pass(&mem, &mut rxq, &mut txq, mrg);
        if txq.needs_notification(&mem).unwrap() {
            irq.signal(TX_QUEUE);
        }
        if rxq.needs_notification(&mem).unwrap() {
            irq.signal(RX_QUEUE);
        }
    }
}

/// One pass of the echo device: every TX chain back on RX (dropped when RX has no room);
/// returns how many were echoed. Panics if a TX header's `num_buffers` is not 0.
fn echo_pass(mem: &GuestMemoryMmap, rxq: &mut Queue, txq: &mut Queue, mrg: bool) -> u64 {
    let mut echoed = 0;
    let mut buf = Vec::new();
    loop {
        let _ = txq.disable_notification(mem);
        while let Some(chain) = txq.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            buf.clear();
            for d in chain {
                let start = buf.len();
                buf.resize(start + d.len() as usize, 0);
                mem.read_slice(&mut buf[start..], d.addr()).unwrap();
            }
            txq.add_used(mem, head, 0).unwrap();
            assert_eq!(buf[10..12], [0, 0], "tx num_buffers");
            if echo_into_rx(mem, rxq, &buf, mrg) {
                echoed += 1;
            }
        }
        if !txq.enable_notification(mem).unwrap() {
            return echoed;
        }
    }
}

/// Writes `tx` (the TX header, then the frame) into RX buffers, setting `num_buffers`.
fn echo_into_rx(mem: &GuestMemoryMmap, rxq: &mut Queue, tx: &[u8], mrg: bool) -> bool {
    let mut data: Vec<u8> = Vec::new();
    let mut chains = Vec::new();
    let total = tx.len();
    let mut cap = 0;
    while cap < total {
        let Some(chain) = rxq.pop_descriptor_chain(mem) else {
            let back = u16::try_from(chains.len()).unwrap();
            rxq.set_next_avail(rxq.next_avail().wrapping_sub(back));
            return false;
        };
        let head = chain.head_index();
        let descs: Vec<_> = chain.collect();
        let len: usize = descs.iter().map(|d| d.len() as usize).sum();
        cap += len;
        chains.push((head, descs));
        if !mrg {
            break;
        }
    }
    assert!(cap >= total, "rx buffers too small");
    let n = u16::try_from(chains.len()).unwrap();
    data.extend_from_slice(tx);
    data[10..12].copy_from_slice(&n.to_le_bytes());
    let mut off = 0;
    for (head, descs) in chains {
        let mut written = 0u32;
        for d in descs {
            assert!(d.is_write_only());
            let take = (d.len() as usize).min(data.len() - off);
            mem.write_slice(&data[off..off + take], d.addr()).unwrap();
            off += take;
            written += u32::try_from(take).unwrap();
        }
        rxq.add_used(mem, head, written).unwrap();
    }
    true
}

/// A started guest bound to one end of a datagram pair, an echo device on its queues.
struct Echo {
    running: Running,
    peer: UnixDatagram,
    device: std::thread::JoinHandle<u64>,
}

fn start_echo(guest: SimGuest) -> Echo {
    let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
    let rxq = guest.device_queue(RX_QUEUE).unwrap();
    let txq = guest.device_queue(TX_QUEUE).unwrap();
    assert_eq!(
        rxq.event_idx_enabled(),
        guest.acked_features() & features::EVENT_IDX != 0
    );
    let (kick_tx, kick_rx) = mpsc::channel();
    let kick_tx = std::sync::Mutex::new(kick_tx);
    let mem = guest.memory().clone();
    let irq = guest.interrupts();
    let device = std::thread::spawn(move || echo_device(mem, rxq, txq, irq, mrg, kick_rx));
    let (tap, peer) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let kick: Kick = Arc::new(move |q| {
        let _ = kick_tx.lock().unwrap().send(q);
    });
    let running = guest.start(Arc::new(tap), kick).unwrap();
    Echo {
        running,
        peer,
        device,
    }
}

fn round_trip(device_features: u64, split: bool) {
    let cfg = GuestConfig {
        split_tx_header: split,
        offloads: false,
        ..GuestConfig::default()
    };
    let guest = SimGuest::new(cfg, device_features).unwrap();
    assert_eq!(guest.acked_features(), device_features & features::WANTED);
    assert!(!guest.vnet_hdr());
    let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
    let Echo {
        running,
        peer,
        device,
    } = start_echo(guest);

    let sizes = [60usize, 1514, 2100, 9014, 65_000];
    let mut got = vec![0u8; 70_000];
    let started = Instant::now();
    for round in 0..3u8 {
        for (i, &size) in sizes.iter().enumerate() {
            let frame: Vec<u8> = (0..size).map(|b| (b as u8) ^ round ^ i as u8).collect();
            peer.send(&frame).unwrap();
            let n = peer.recv(&mut got).unwrap();
            assert_eq!(&got[..n], &frame[..], "size {size} round {round}");
        }
    }
    // More frames than the TX ring holds, sent before reading any back.
    for i in 0..300u32 {
        peer.send(&i.to_le_bytes().repeat(20)).unwrap();
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &i.to_le_bytes().repeat(20)[..]);
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let stats = running.stats();
    // The counters are bumped just after the TAP write the peer already saw.
    let settle = Instant::now();
    while stats.rx_frames.load(Ordering::Relaxed) < 315 && settle.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), 315);
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 315);
    assert_eq!(stats.device_errors.load(Ordering::Relaxed), 0);
    if mrg {
        assert!(stats.rx_merged.load(Ordering::Relaxed) >= 9);
    }
    let stop_at = Instant::now();
    running.stop().unwrap();
    assert!(stop_at.elapsed() < Duration::from_millis(500));
    assert_eq!(device.join().unwrap(), 315);
}

#[test]
fn echoes_through_virtio_queue_device_with_all_features() {
    round_trip(features::WANTED | features::OFFLOADS, true);
}

/// A TSO-style header (NEEDS_CSUM, TCPV4) with the frame after it.
fn gso_frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; NET_HDR_LEN];
    f[0] = 1; // NEEDS_CSUM
    f[1] = 1; // GSO_TCPV4
    f[2..4].copy_from_slice(&54u16.to_le_bytes()); // hdr_len
    f[4..6].copy_from_slice(&1448u16.to_le_bytes()); // gso_size
    f[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start
    f[8..10].copy_from_slice(&16u16.to_le_bytes()); // csum_offset
    f[10..12].copy_from_slice(&0xabcdu16.to_le_bytes()); // junk the driver must clear
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed));
    f
}

fn gso_round_trip(split: bool) {
    let cfg = GuestConfig {
        split_tx_header: split,
        ..GuestConfig::default()
    };
    let guest = SimGuest::new(cfg, features::WANTED | features::OFFLOADS).unwrap();
    assert!(guest.vnet_hdr());
    let Echo {
        running,
        peer,
        device,
    } = start_echo(guest);
    let mut got = vec![0u8; 70_000];
    let mut sent = 0;
    // 40 rounds of 11 buffers: the ring of 256 wraps, so some frames are gathered.
    for round in 0..40u8 {
        for len in [60_000usize, 60, 1514, 65_535 + 14] {
            let mut f = gso_frame(len, round);
            if len < 1000 {
                f[..NET_HDR_LEN].fill(0);
            }
            peer.send(&f).unwrap();
            sent += 1;
            let n = peer.recv(&mut got).unwrap();
            assert_eq!(n, f.len(), "len {len} round {round}");
            // The header comes back as sent but for num_buffers (the device's).
            assert_eq!(&got[..10], &f[..10], "header, len {len}");
            assert_eq!(&got[NET_HDR_LEN..n], &f[NET_HDR_LEN..], "frame, len {len}");
            let bufs = u16::from_le_bytes([got[10], got[11]]);
            assert_eq!(usize::from(bufs), f.len().div_ceil(16 << 10), "len {len}");
        }
    }
    let stats = running.stats();
    let settle = Instant::now();
    while stats.rx_frames.load(Ordering::Relaxed) < sent
        && settle.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(g(&stats.tx_frames), sent);
    assert_eq!(g(&stats.rx_frames), sent);
    assert_eq!(g(&stats.tx_gso), 120);
    assert_eq!(g(&stats.rx_gso), 120);
    assert_eq!(g(&stats.rx_merged), 80);
    // Buffers are handed out in ring order, so most frames go out without a copy; the
    // ones across the ring's end are gathered.
    let direct = g(&stats.rx_direct);
    assert!(direct > sent / 2 && direct < sent, "{}", stats.summary());
    assert_eq!(g(&stats.tx_bytes), 40 * (60_000 + 60 + 1514 + 65_535 + 14));
    assert_eq!(g(&stats.device_errors), 0);
    assert_eq!(g(&stats.tap_read_errors), 0);
    running.stop().unwrap();
    assert_eq!(device.join().unwrap(), sent);
}

#[test]
fn gso_frames_round_trip_with_their_headers() {
    gso_round_trip(true);
}

#[test]
fn gso_frames_round_trip_with_one_descriptor_per_tx_frame() {
    gso_round_trip(false);
}

/// A device without CSUM or TSO (as passt's vhost-user mode): a TCP super-frame from the TAP
/// reaches the TX ring as segments of its `gso_size` with full checksums and zeroed headers,
/// across a ring that fills up mid-frame; a frame with a partial checksum reaches it
/// completed.
#[test]
fn a_super_frame_for_a_device_without_tso_is_cut_into_checksummed_segments() {
    use super::gso::testing::{gso_hdr, tcp_frame};
    use core::net::Ipv4Addr;
    use wire::{Ipv4Packet, TcpPacket, checksum, ip_proto, tcp};
    let cfg = GuestConfig {
        queue_size: 4,
        ..GuestConfig::default()
    };
    let guest = SimGuest::new(cfg, features::WANTED | features::GUEST_CSUM).unwrap();
    assert!(guest.vnet_hdr());
    let mem = guest.memory().clone();
    let mut txq = guest.device_queue(TX_QUEUE).unwrap();
    let (tap, peer) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    let mut driver = guest.into_driver(Arc::new(tap)).unwrap();
    let payload: Vec<u8> = (0..3000u32).map(|i| (i * 13) as u8).collect();
    let mut sent = gso_hdr(false, 1400, 66, 34).to_vec();
    sent.extend(tcp_frame(false, &payload, tcp::ACK | tcp::PSH));
    peer.send(&sent).unwrap();
    // One frame with a partial checksum: the field holds the pseudo-header sum.
    let (src, dst) = (Ipv4Addr::new(192, 168, 64, 2), Ipv4Addr::new(198, 18, 0, 2));
    let mut small = tcp_frame(false, &[7; 100], tcp::ACK);
    let pseudo = checksum::pseudo_header_v4(src, dst, ip_proto::TCP, (small.len() - 34) as u16);
    small[34 + 16..34 + 18].copy_from_slice(&checksum::fold(pseudo).to_be_bytes());
    let mut hdr = gso_hdr(false, 0, 0, 34);
    hdr[1] = 0;
    let mut sent = hdr.to_vec();
    sent.extend(&small);
    peer.send(&sent).unwrap();

    let mut out: Vec<Vec<u8>> = Vec::new();
    let take = |txq: &mut Queue, out: &mut Vec<Vec<u8>>| {
        while let Some(chain) = txq.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            let mut buf = Vec::new();
            for d in chain {
                let start = buf.len();
                buf.resize(start + d.len() as usize, 0);
                mem.read_slice(&mut buf[start..], d.addr()).unwrap();
            }
            txq.add_used(&mem, head, 0).unwrap();
            out.push(buf);
        }
    };
    // Two slots (queue of 4, header and frame apart): the cut stops at a full ring.
    assert_eq!(driver.pump_tx().unwrap().posted, 2);
    assert!(driver.tx_ring_full());
    take(&mut txq, &mut out);
    assert_eq!(driver.pump_tx().unwrap().posted, 2);
    take(&mut txq, &mut out);
    assert_eq!(driver.pump_tx().unwrap().posted, 0);
    assert_eq!(out.len(), 4);
    let mut got = Vec::new();
    for (i, f) in out.iter().enumerate() {
        assert_eq!(
            f[..NET_HDR_LEN],
            [0; NET_HDR_LEN],
            "frame {i}: no offload asked"
        );
        let ip = Ipv4Packet::new_checked(&f[NET_HDR_LEN + 14..]).unwrap();
        assert!(ip.verify_checksum(), "frame {i}");
        let t = TcpPacket::new_checked(ip.payload()).unwrap();
        assert!(t.verify_checksum_v4(src, dst), "frame {i}");
        if i < 3 {
            assert_eq!(t.payload().len(), if i < 2 { 1400 } else { 200 });
            assert_eq!(t.psh(), i == 2);
            got.extend_from_slice(t.payload());
        } else {
            assert_eq!(t.payload(), &[7; 100]);
        }
    }
    assert_eq!(got, payload);
    let s = driver.stats();
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    assert_eq!(
        (
            g(&s.tx_frames),
            g(&s.tx_segmented),
            g(&s.tx_checksummed),
            g(&s.tx_gso)
        ),
        (4, 1, 1, 0)
    );
    assert_eq!(g(&s.tap_read_errors), 0);
}

#[test]
fn offloads_are_negotiated_only_when_offered_and_wanted() {
    let all = features::WANTED | features::OFFLOADS;
    let g = SimGuest::new(GuestConfig::default(), all).unwrap();
    assert_eq!(g.acked_features(), all);
    assert!(g.vnet_hdr());
    assert_eq!(
        g.tap_offload_flags(),
        utun::linux::TUN_F_CSUM | utun::linux::TUN_F_TSO4 | utun::linux::TUN_F_TSO6
    );
    assert_eq!(
        features::offload_names(g.acked_features()),
        "CSUM GUEST_CSUM HOST_TSO4 GUEST_TSO4 HOST_TSO6 GUEST_TSO6"
    );
    assert_eq!(rx_buffer_size(&GuestConfig::default(), all), 16 << 10);

    let off = GuestConfig {
        offloads: false,
        ..GuestConfig::default()
    };
    let g = SimGuest::new(off, all).unwrap();
    assert_eq!(g.acked_features(), features::WANTED);
    assert!(!g.vnet_hdr());
    assert_eq!(g.tap_offload_flags(), 0);
    assert_eq!(features::offload_names(g.acked_features()), "none");

    let g = SimGuest::new(GuestConfig::default(), features::WANTED).unwrap();
    assert_eq!(g.acked_features(), features::WANTED);
    assert!(!g.vnet_hdr());
    assert_eq!(
        rx_buffer_size(&GuestConfig::default(), features::WANTED),
        2048
    );

    // A TSO bit without its checksum bit is not taken. The TAP hands over what the device
    // took (software offloads off), or everything (on, the default: the driver does the rest).
    let hard = GuestConfig {
        soft_offloads: false,
        ..GuestConfig::default()
    };
    let every = utun::linux::TUN_F_CSUM | utun::linux::TUN_F_TSO4 | utun::linux::TUN_F_TSO6;
    let partial = features::WANTED | features::HOST_TSO4 | features::GUEST_CSUM;
    let g = SimGuest::new(hard.clone(), partial).unwrap();
    assert_eq!(g.acked_features(), features::WANTED | features::GUEST_CSUM);
    assert!(g.vnet_hdr());
    assert_eq!(g.tap_offload_flags(), 0);
    let g = SimGuest::new(GuestConfig::default(), partial).unwrap();
    assert_eq!(g.tap_offload_flags(), every);
    let g = SimGuest::new(
        hard.clone(),
        features::WANTED | features::GUEST_TSO4 | features::GUEST_TSO6 | features::CSUM,
    )
    .unwrap();
    assert_eq!(g.acked_features(), features::WANTED | features::CSUM);
    assert_eq!(g.tap_offload_flags(), utun::linux::TUN_F_CSUM);
    let g = SimGuest::new(
        GuestConfig::default(),
        features::WANTED | features::HOST_TSO6 | features::GUEST_CSUM,
    )
    .unwrap();
    assert_eq!(g.acked_features(), features::WANTED | features::GUEST_CSUM);

    // A device with TSO4 only: no TUN_F_TSO6 for the TAP; GUEST_TSO6 alone sizes RX buffers
    // for super-frames.
    let tso4 = features::WANTED
        | features::CSUM
        | features::GUEST_CSUM
        | features::HOST_TSO4
        | features::GUEST_TSO4;
    let g = SimGuest::new(hard, tso4).unwrap();
    assert_eq!(
        g.tap_offload_flags(),
        utun::linux::TUN_F_CSUM | utun::linux::TUN_F_TSO4
    );
    let g = SimGuest::new(GuestConfig::default(), tso4).unwrap();
    assert_eq!(g.tap_offload_flags(), every);
    let tso6 = features::WANTED | features::GUEST_CSUM | features::GUEST_TSO6;
    assert_eq!(rx_buffer_size(&GuestConfig::default(), tso6), 16 << 10);
}

#[test]
fn gso_buffer_size_is_validated_and_fits_the_layout() {
    let bad = GuestConfig {
        rx_gso_buffer_size: MAX_FRAME_BUF + 1,
        ..GuestConfig::default()
    };
    assert!(SimGuest::new(bad, features::WANTED | features::OFFLOADS).is_err());
    let big = GuestConfig {
        rx_gso_buffer_size: MAX_FRAME_BUF,
        ..GuestConfig::default()
    };
    let all = features::WANTED | features::OFFLOADS;
    assert!(layout_end(&big, all) <= big.mem_size as u64);
    assert!(SimGuest::new(big, all).is_ok());
}

#[test]
fn echoes_with_one_descriptor_per_tx_frame() {
    round_trip(features::WANTED, false);
}

#[test]
fn echoes_without_event_idx_or_mrg_rxbuf() {
    round_trip(features::VERSION_1 | features::MAC, true);
}

#[test]
fn refuses_a_device_without_version_1() {
    assert!(SimGuest::new(GuestConfig::default(), features::MAC).is_err());
}

/// The [`Driver`] stepped by hand (as `hostnet-lab attach --threads one` steps it) against
/// the echo device run in between: the same frames come back as with the threads.
fn step_round_trip(device_features: u64, split: bool) {
    let cfg = GuestConfig {
        split_tx_header: split,
        offloads: false,
        ..GuestConfig::default()
    };
    let guest = SimGuest::new(cfg, device_features).unwrap();
    let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
    let mem = guest.memory().clone();
    let mut rxq = guest.device_queue(RX_QUEUE).unwrap();
    let mut txq = guest.device_queue(TX_QUEUE).unwrap();
    let (tap, peer) = UnixDatagram::pair().unwrap();
    tap.set_nonblocking(true).unwrap();
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut driver = guest.into_driver(Arc::new(tap)).unwrap();
    let mut got = vec![0u8; 70_000];
    let mut sent = 0u64;
    // A burst of more frames than the TX ring holds, then single frames of every size.
    let burst: Vec<Vec<u8>> = (0..300u32).map(|i| i.to_le_bytes().repeat(20)).collect();
    let singles: Vec<Vec<u8>> = [60usize, 1514, 2100, 9014, 65_000]
        .iter()
        .map(|&n| (0..n).map(|b| b as u8).collect())
        .collect();
    for frames in [&burst[..64], &burst[64..], &singles[..]] {
        for chunk in frames.chunks(32) {
            for f in chunk {
                peer.send(f).unwrap();
            }
            let mut echoed = 0;
            while echoed < chunk.len() as u64 {
                let p = driver.pump_tx().unwrap();
                echoed += echo_pass(&mem, &mut rxq, &mut txq, mrg);
                driver.reclaim_tx().unwrap();
                driver.service_rx().unwrap();
                assert!(p.posted > 0 || echoed == chunk.len() as u64);
            }
            assert!(!driver.tx_ring_full());
            for f in chunk {
                let n = peer.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &f[..]);
            }
            sent += chunk.len() as u64;
        }
    }
    let stats = driver.stats();
    assert_eq!(stats.tx_frames.load(Ordering::Relaxed), sent);
    assert_eq!(stats.tx_completed.load(Ordering::Relaxed), sent);
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), sent);
    assert_eq!(stats.device_errors.load(Ordering::Relaxed), 0);
}

#[test]
fn the_stepped_driver_echoes_with_event_idx_and_mrg_rxbuf() {
    step_round_trip(features::WANTED, true);
}

#[test]
fn the_stepped_driver_echoes_without_event_idx_or_mrg_rxbuf() {
    step_round_trip(features::VERSION_1 | features::MAC, false);
}

/// A started guest whose TAP is one end of a datagram pair (`peer`, the other end, gets what
/// the driver writes), for tests that write the RX used ring by hand.
struct HandRx {
    running: Running,
    peer: UnixDatagram,
    mem: GuestMemoryMmap,
    irq: Arc<Interrupts>,
    /// The RX queue's used ring.
    used: GuestAddress,
    /// Bytes per RX buffer (buffer `i` is at `RX_BUF_BASE + i * size`).
    size: u32,
    /// Whether the TAP takes the virtio-net header.
    vnet: bool,
}

impl HandRx {
    fn start(device_features: u64) -> Self {
        let guest = SimGuest::new(GuestConfig::default(), device_features).unwrap();
        let vnet = guest.vnet_hdr();
        let size = rx_buffer_size(&GuestConfig::default(), guest.acked_features());
        let mem = guest.memory().clone();
        let irq = guest.interrupts();
        let (tap, peer) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let running = guest.start(Arc::new(tap), Arc::new(|_| {})).unwrap();
        let used = RingLayout::of(RX_QUEUE).unwrap().used;
        Self {
            running,
            peer,
            mem,
            irq,
            used,
            size,
            vnet,
        }
    }
}

/// Hand-written used entries: four bad ones (counted, skipped), a good one-buffer frame,
/// a two-buffer frame in non-adjacent buffers (gathered) and one in adjacent full buffers
/// (written straight from guest memory with offloads).
fn hostile_used_entries(device_features: u64) {
    let HandRx {
        running,
        peer,
        mem,
        irq,
        used,
        size,
        vnet,
    } = HandRx::start(device_features);
    let buf = |i: u64| GuestAddress(RX_BUF_BASE + i * u64::from(size));
    let put = |slot: u64, id: u32, len: u32| {
        mem.write_obj(id, used.unchecked_add(4 + 8 * slot)).unwrap();
        mem.write_obj(len, used.unchecked_add(8 + 8 * slot))
            .unwrap();
    };
    // What the TAP must see for a frame whose header says `bufs` buffers.
    let expect = |bufs: u8, data: &[u8]| -> Vec<u8> {
        let mut v = Vec::new();
        if vnet {
            v.extend_from_slice(&[0; 10]);
            v.extend_from_slice(&[bufs, 0]);
        }
        v.extend_from_slice(data);
        v
    };
    // Buffer 3: a header claiming 0 buffers. Buffer 2: a good 60-byte frame.
    let mut hdr = [0u8; NET_HDR_LEN];
    mem.write_slice(&hdr, buf(3)).unwrap();
    hdr[10] = 1;
    mem.write_slice(&hdr, buf(2)).unwrap();
    let frame: Vec<u8> = (0..60u8).collect();
    mem.write_slice(&frame, buf(2).unchecked_add(NET_HDR_LEN as u64))
        .unwrap();
    // Two-buffer frames: buffers 7 then 5 (not adjacent), buffers 8 then 9 (adjacent).
    hdr[10] = 2;
    let full = size as usize - NET_HDR_LEN;
    let mut two = Vec::new();
    for (first, second, tail, seed) in [(7, 5, 100, 1u8), (8, 9, 50, 2)] {
        let data: Vec<u8> = (0..full + tail).map(|i| (i as u8) ^ seed).collect();
        mem.write_slice(&hdr, buf(first)).unwrap();
        mem.write_slice(&data[..full], buf(first).unchecked_add(NET_HDR_LEN as u64))
            .unwrap();
        mem.write_slice(&data[full..], buf(second)).unwrap();
        two.push(expect(2, &data));
    }
    put(0, 999, 10); // unknown id
    put(1, 0, 1_000_000); // longer than the buffer
    put(2, 1, 5); // shorter than the header
    put(3, 3, 72); // num_buffers = 0
    put(4, 2, 72); // good
    put(5, 7, size);
    put(6, 5, 100);
    put(7, 8, size);
    put(8, 9, 50);
    mem.store(9u16, used.unchecked_add(2), Ordering::Release)
        .unwrap();
    irq.signal(RX_QUEUE);
    let mut got = vec![0u8; 70_000];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &expect(1, &frame)[..]);
    for want in &two {
        let n = peer.recv(&mut got).unwrap();
        assert_eq!(n, want.len());
        assert_eq!(&got[..n], &want[..]);
    }
    let stats = running.stats();
    let t = Instant::now();
    while (stats.device_errors.load(Ordering::Relaxed) < 4
        || stats.rx_frames.load(Ordering::Relaxed) < 3)
        && t.elapsed() < Duration::from_secs(1)
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.device_errors.load(Ordering::Relaxed), 4);
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 3);
    assert_eq!(stats.rx_merged.load(Ordering::Relaxed), 2);
    let direct = if vnet { 2 } else { 0 };
    assert_eq!(stats.rx_direct.load(Ordering::Relaxed), direct);
    assert!(!running.has_failed());
    running.stop().unwrap();
}

/// Hand-written used entries with offloads: three consecutive TCP segments of one flow with
/// partial checksums (the third shorter) reach the TAP as one GSO frame, a fourth of another
/// flow after them as it came, a fifth GRO does not take (a SYN) last, straight from guest
/// memory, and the counters say so.
#[test]
fn tcp_segments_with_partial_checksums_reach_the_tap_coalesced() {
    use super::gro::test_segment;
    use wire::tcp::{ACK as TCP_ACK, PSH as TCP_PSH, SYN};
    let HandRx {
        running,
        peer,
        mem,
        irq,
        used,
        size,
        vnet,
    } = HandRx::start(features::WANTED | features::OFFLOADS);
    assert!(vnet);
    let buf = |i: u64| GuestAddress(RX_BUF_BASE + i * u64::from(size));
    let mut frames = vec![
        test_segment(false, 1000, &[1; 1400], TCP_ACK),
        test_segment(false, 2400, &[2; 1400], TCP_ACK),
        test_segment(false, 3800, &[3; 700], TCP_ACK | TCP_PSH),
    ];
    let mut other = test_segment(false, 9000, &[4; 100], TCP_ACK);
    other[NET_HDR_LEN + 14 + 20 + 1] ^= 1; // another port
    frames.push(other);
    frames.push(test_segment(false, 50_000, &[5; 10], TCP_ACK | SYN));
    for (i, f) in (0u64..).zip(&frames) {
        let mut f = f.clone();
        f[10] = 1; // num_buffers
        mem.write_slice(&f, buf(i)).unwrap();
        mem.write_obj(i as u32, used.unchecked_add(4 + 8 * i))
            .unwrap();
        mem.write_obj(f.len() as u32, used.unchecked_add(8 + 8 * i))
            .unwrap();
    }
    mem.store(5u16, used.unchecked_add(2), Ordering::Release)
        .unwrap();
    irq.signal(RX_QUEUE);
    let mut got = vec![0u8; 70_000];
    let n = peer.recv(&mut got).unwrap();
    let headers = 14 + 20 + 32;
    assert_eq!(n, NET_HDR_LEN + headers + 3500);
    assert_eq!(got[1], 1, "gso_type TCPV4");
    assert_eq!(u16::from_le_bytes([got[4], got[5]]), 1400, "gso_size");
    let mut want = vec![1u8; 1400];
    want.extend([2; 1400]);
    want.extend([3; 700]);
    assert_eq!(&got[NET_HDR_LEN + headers..n], &want[..]);
    for f in &frames[3..] {
        let n = peer.recv(&mut got).unwrap();
        let mut want = f.clone();
        want[10] = 1;
        assert_eq!(&got[..n], &want[..]);
    }
    let stats = running.stats();
    let t = Instant::now();
    while stats.rx_frames.load(Ordering::Relaxed) < 5 && t.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(stats.rx_frames.load(Ordering::Relaxed), 5);
    assert_eq!(stats.rx_coalesced.load(Ordering::Relaxed), 2);
    assert_eq!(
        stats.rx_direct.load(Ordering::Relaxed),
        1,
        "the SYN, read by GRO only as far as its headers"
    );
    assert_eq!(
        stats.rx_bytes.load(Ordering::Relaxed),
        frames
            .iter()
            .map(|f| (f.len() - NET_HDR_LEN) as u64)
            .sum::<u64>()
    );
    assert_eq!(stats.device_errors.load(Ordering::Relaxed), 0);
    assert!(!running.has_failed());
    running.stop().unwrap();
}

#[test]
fn hostile_used_entries_are_counted_and_the_driver_keeps_going() {
    hostile_used_entries(features::WANTED);
}

#[test]
fn hostile_used_entries_with_offloads() {
    hostile_used_entries(features::WANTED | features::OFFLOADS);
}

#[test]
fn config_space_is_parsed_little_endian() {
    let space = [0x52, 0x54, 0, 0x12, 0x34, 0x56, 1, 0, 1, 0, 0x28, 0x23];
    let c = NetConfig::parse(&space).unwrap();
    assert_eq!(c.mac_string(), "52:54:00:12:34:56");
    assert!(c.link_up());
    assert_eq!(c.mtu, 9000);
    assert_eq!(NetConfig::parse(&space[..11]), None);
}

/// Two queue pairs (MQ and CTRL_VQ offered): each pair's rings and buffers lie apart, and a
/// frame written to pair i's frame I/O comes back through pair i's queues only (the echo
/// device run on each pair's queues in turn).
#[test]
fn each_queue_pair_moves_its_own_frames() {
    let cfg = GuestConfig {
        queue_pairs: 2,
        offloads: false,
        ..GuestConfig::default()
    };
    let offered = features::WANTED | features::MQ | features::CTRL_VQ;
    let guest = SimGuest::new(cfg.clone(), offered).unwrap();
    assert_eq!(guest.queue_pairs(), 2);
    assert_eq!(
        guest.acked_features() & (features::MQ | features::CTRL_VQ),
        features::MQ | features::CTRL_VQ
    );
    let mrg = guest.acked_features() & features::MRG_RXBUF != 0;
    let mem = guest.memory().clone();
    let layouts: Vec<RingLayout> = (0..4).map(|q| RingLayout::of(q).unwrap()).collect();
    for (i, a) in layouts.iter().enumerate() {
        for b in &layouts[i + 1..] {
            assert_ne!(a.desc, b.desc);
            assert_ne!(a.buffers, b.buffers);
        }
    }
    assert!(RingLayout::of(2 * MAX_QUEUE_PAIRS).is_err());
    let mut queues: Vec<(Queue, Queue)> = (0..2)
        .map(|p| {
            (
                guest.device_queue(2 * p + RX_QUEUE).unwrap(),
                guest.device_queue(2 * p + TX_QUEUE).unwrap(),
            )
        })
        .collect();
    let mut peers = Vec::new();
    let mut taps = Vec::new();
    for _ in 0..2 {
        let (tap, peer) = UnixDatagram::pair().unwrap();
        tap.set_nonblocking(true).unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        taps.push(Arc::new(tap));
        peers.push(peer);
    }
    assert!(
        SimGuest::new(cfg, offered)
            .unwrap()
            .into_pair_drivers(vec![Arc::clone(&taps[0])])
            .is_err(),
        "one frame I/O for two pairs"
    );
    let mut drivers = guest.into_pair_drivers(taps).unwrap();
    let frames: Vec<Vec<u8>> = (0..2u8).map(|p| vec![0xa0 + p; 600]).collect();
    for (peer, f) in peers.iter().zip(&frames) {
        peer.send(f).unwrap();
    }
    let mut got = vec![0u8; 2048];
    for p in 0..2 {
        let d = &mut drivers[p];
        assert_eq!(d.pump_tx().unwrap().posted, 1, "pair {p}");
        let (rxq, txq) = &mut queues[p];
        assert_eq!(echo_pass(&mem, rxq, txq, mrg), 1, "pair {p}");
        d.reclaim_tx().unwrap();
        d.service_rx().unwrap();
        let n = peers[p].recv(&mut got).unwrap();
        assert_eq!(&got[..n], &frames[p][..], "pair {p}");
    }
    for (p, d) in drivers.iter().enumerate() {
        let s = d.stats();
        assert_eq!(s.tx_frames.load(Ordering::Relaxed), 1, "pair {p}");
        assert_eq!(s.rx_frames.load(Ordering::Relaxed), 1, "pair {p}");
    }
}

#[test]
fn queue_pairs_need_mq_offered_and_stay_within_the_layout() {
    let two = GuestConfig {
        queue_pairs: 2,
        ..GuestConfig::default()
    };
    let guest = SimGuest::new(two, features::WANTED).unwrap();
    assert_eq!(guest.queue_pairs(), 1, "no MQ offered: one pair");
    assert_eq!(guest.acked_features() & features::MQ, 0);
    for pairs in [0, MAX_QUEUE_PAIRS + 1] {
        let cfg = GuestConfig {
            queue_pairs: pairs,
            ..GuestConfig::default()
        };
        assert!(
            SimGuest::new(cfg, features::WANTED).is_err(),
            "{pairs} pairs"
        );
    }
}

/// A guest of `pairs` queue pairs (no offloads) against `bridge::Device`'s offer for
/// `device_pairs`.
fn guest_against_bridge(pairs: u16, device_pairs: u16) -> SimGuest {
    let mac: bridge::MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let offered = bridge::Device::new(mac, 1500)
        .with_queue_pairs(device_pairs)
        .device_features();
    let cfg = GuestConfig {
        queue_pairs: pairs,
        offloads: false,
        ..GuestConfig::default()
    };
    SimGuest::new(cfg, offered).unwrap()
}

/// Runs bridge's control queue on `q`, returning the commands it handed over.
fn run_control(
    ctrl: &mut bridge::ControlQueue,
    mem: &GuestMemoryMmap,
    q: &mut Queue,
) -> Vec<bridge::ControlCommand> {
    let mut seen = Vec::new();
    ctrl.process(mem, q, |c| {
        seen.push(c);
        true
    })
    .unwrap();
    seen
}

/// Two pairs against bridge's device: the control queue is queue 4, the driver's
/// `VQ_PAIRS_SET 2` reaches `bridge::ControlQueue` and is acked OK, 3 (over the maximum)
/// ERR; one command at a time; the driver outlives the `SimGuest`.
#[test]
fn the_control_queue_sets_queue_pairs_through_bridges_control_queue() {
    let guest = guest_against_bridge(2, 2);
    assert_eq!(guest.queue_pairs(), 2);
    assert_eq!(guest.control_queue_index(), Some(4));
    let mem = guest.memory().clone();
    let mut q = guest.device_queue(4).unwrap();
    assert_eq!(q.size(), CONTROL_QUEUE_SIZE);
    assert_eq!(
        q.event_idx_enabled(),
        guest.acked_features() & features::EVENT_IDX != 0
    );
    let mut ctrl = bridge::ControlQueue::new(2);
    ctrl.set_features(guest.acked_features());
    let mut driver = guest.control_driver().unwrap();
    assert_eq!(driver.queue_index(), 4);
    assert!(guest.control_driver().is_err(), "one control driver");
    // The pair drivers consume the guest; the control driver keeps working.
    let (taps, _peers): (Vec<_>, Vec<_>) = (0..2)
        .map(|_| {
            let (tap, peer) = UnixDatagram::pair().unwrap();
            (Arc::new(tap), peer)
        })
        .unzip();
    let _drivers = guest.into_pair_drivers(taps).unwrap();

    assert!(!driver.in_flight());
    assert_eq!(driver.take_ack().unwrap(), None, "nothing posted");
    driver.post_queue_pairs(2).unwrap();
    assert!(driver.in_flight());
    assert!(
        driver.post_queue_pairs(1).is_err(),
        "a command is in flight"
    );
    assert_eq!(driver.take_ack().unwrap(), None, "the device has not run");
    assert_eq!(
        run_control(&mut ctrl, &mem, &mut q),
        [bridge::ControlCommand::QueuePairs(2)]
    );
    assert_eq!(driver.take_ack().unwrap(), Some(bridge::VIRTIO_NET_OK));
    assert!(!driver.in_flight());
    assert_eq!(ctrl.pairs(), 2);

    driver.post_queue_pairs(3).unwrap();
    assert_eq!(run_control(&mut ctrl, &mem, &mut q), []);
    assert_eq!(driver.take_ack().unwrap(), Some(bridge::VIRTIO_NET_ERR));
    assert_eq!(ctrl.pairs(), 2);

    // Many more than the ring's size: the indexes wrap.
    for i in 0..2 * CONTROL_QUEUE_SIZE {
        let n = 1 + i % 2;
        driver.post_queue_pairs(n).unwrap();
        assert_eq!(
            run_control(&mut ctrl, &mem, &mut q),
            [bridge::ControlCommand::QueuePairs(n)]
        );
        assert_eq!(driver.take_ack().unwrap(), Some(bridge::VIRTIO_NET_OK));
    }
    let s = ctrl.stats();
    assert_eq!((s.accepted, s.refused, s.malformed), (129, 1, 0));
}

/// A chain the device returns without an answer (used length 0) is an error, and frees the
/// slot for the next command.
#[test]
fn a_control_command_returned_unanswered_is_an_error() {
    let guest = guest_against_bridge(2, 2);
    let mem = guest.memory().clone();
    let index = guest.control_queue_index().unwrap();
    let mut q = guest.device_queue(index).unwrap();
    let mut driver = guest.control_driver().unwrap();
    driver.post_queue_pairs(2).unwrap();
    let chain = q.pop_descriptor_chain(&mem).unwrap();
    let descs: Vec<_> = chain.clone().collect();
    assert_eq!(descs.len(), 2);
    assert!(!descs[0].is_write_only() && descs[1].is_write_only());
    let mut cmd = [0u8; 4];
    mem.read_slice(&mut cmd, descs[0].addr()).unwrap();
    assert_eq!(cmd, [4, 0, 2, 0]);
    assert_eq!(mem.read_obj::<u8>(descs[1].addr()).unwrap(), 0xFF);
    q.add_used(&mem, chain.head_index(), 0).unwrap();
    let err = driver.take_ack().unwrap_err().to_string();
    assert!(err.contains("unanswered"), "{err}");
    assert!(!driver.in_flight());
    driver.post_queue_pairs(1).unwrap();
}

/// One pair, two against a one-pair device, or two with CTRL_VQ offered without MQ: no
/// control queue.
#[test]
fn without_ctrl_vq_there_is_no_control_queue() {
    for guest in [
        guest_against_bridge(1, 2),
        guest_against_bridge(2, 1),
        SimGuest::new(
            GuestConfig {
                queue_pairs: 2,
                ..GuestConfig::default()
            },
            features::WANTED | features::CTRL_VQ,
        )
        .unwrap(),
    ] {
        assert_eq!(guest.acked_features() & features::CTRL_VQ, 0);
        assert_eq!(guest.control_queue_index(), None);
        assert!(guest.control_driver().is_err());
    }
}

/// The control queue's rings and command buffers lie in pair 0's span, apart from pair 0's
/// rings and before its buffers.
#[test]
fn the_control_queue_lies_apart_from_pair_0() {
    let ring = |l: RingLayout, size: u16| {
        let n = u64::from(size);
        [
            (l.desc.0, l.desc.0 + 16 * n),
            (l.avail.0, l.avail.0 + 6 + 2 * n),
            (l.used.0, l.used.0 + 6 + 8 * n),
        ]
    };
    let c = RingLayout::control();
    let mut control = ring(c, CONTROL_QUEUE_SIZE).to_vec();
    control.push((c.buffers, c.buffers + CTRL_BUF_SIZE));
    let rx = RingLayout::of(RX_QUEUE).unwrap();
    let tx = RingLayout::of(TX_QUEUE).unwrap();
    let pair0: Vec<(u64, u64)> = ring(rx, MAX_QUEUE_SIZE)
        .into_iter()
        .chain(ring(tx, MAX_QUEUE_SIZE))
        .collect();
    let first_buffer = rx.buffers.min(tx.buffers);
    for &(a, b) in &control {
        assert!(b <= first_buffer, "{a:#x}..{b:#x} reaches pair 0's buffers");
        for &(x, y) in &pair0 {
            assert!(b <= x || y <= a, "{a:#x}..{b:#x} overlaps {x:#x}..{y:#x}");
        }
    }
    for (i, &(a, b)) in control.iter().enumerate() {
        for &(x, y) in &control[i + 1..] {
            assert!(b <= x || y <= a, "{a:#x}..{b:#x} overlaps {x:#x}..{y:#x}");
        }
    }
}
