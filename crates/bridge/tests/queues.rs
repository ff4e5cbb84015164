//! TX and RX paths against real descriptor chains built with `MockSplitQueue`.

use bridge::testing::{
    DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, GUEST_IP, GUEST_MAC, MockNet, SERVER, guest_memory,
    udp_frame,
};
use bridge::{DropCause, Error, FrameBatch, RxQueue, Stats, TxQueue, VIRTIO_NET_HDR_LEN};
use virtio_queue::QueueT;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress};

const MTU: usize = 1500;
const MAX_FRAME: usize = MTU + 14;
const HDR: usize = VIRTIO_NET_HDR_LEN;

fn frame(len: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..len.saturating_sub(42)).map(|i| i as u8).collect();
    let f = udp_frame(GUEST_MAC, GUEST_IP, 5000, SERVER, 53, &payload);
    assert_eq!(f.len(), len.max(42));
    f
}

#[test]
fn tx_reads_header_and_frame_in_any_layout() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 32);
    let (_, mut txq) = net.queues(false);
    let f = frame(300);
    let splits: [&[usize]; 5] = [
        &[],
        &[HDR],
        &[5, 7, 3],
        &[HDR + 8],
        &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ];
    for s in splits {
        net.send_frame(HDR, &f, s);
    }
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.chains, out.frames, out.more), (5, 5, false));
    assert!(out.notify, "no EVENT_IDX: always notify");
    for i in 0..5 {
        assert_eq!(batch.frame(i).unwrap(), &f[..], "layout {i}");
    }
    let used = net.tx_used();
    assert_eq!(used.len(), 5);
    assert!(used.iter().all(|u| u.len == 0));
    assert_eq!(stats.tx_frames, 5);
    assert_eq!(stats.tx_bytes, 5 * 300);
    assert_eq!(stats.total_drops(), 0);
}

#[test]
fn tx_batch_limit_sets_more_and_resumes() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (_, mut txq) = net.queues(false);
    for _ in 0..5 {
        net.send_frame(HDR, &frame(60), &[]);
    }
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(3, MAX_FRAME);
    let mut stats = Stats::default();
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.frames, out.more), (3, true));
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!(
        (out.chains, out.more),
        (0, true),
        "a full batch takes nothing"
    );
    batch.clear();
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.frames, out.more), (2, false));
    assert_eq!(net.tx_used().len(), 5);
}

#[test]
fn tx_hostile_chains_are_counted_returned_and_skipped() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (_, mut txq) = net.queues(false);
    let good = frame(100);
    let data = net.alloc(4096);
    mem.write_slice(&[0u8; 4096], GuestAddress(data)).unwrap();
    // Wrong direction.
    net.post_tx(&[(data, 200, DESC_F_WRITE)]);
    // Out of guest memory.
    net.post_tx(&[(0x2_0000_0000, 200, 0)]);
    // Straddling the end of memory.
    net.post_tx(&[((64 << 20) - 10, 200, 0)]);
    // Short header.
    net.post_tx(&[(data, 8, 0)]);
    // Runt frame.
    net.post_tx(&[(data, (HDR + 10) as u32, 0)]);
    // Over the MTU.
    net.post_tx(&[(data, (HDR + MAX_FRAME + 1) as u32, 0)]);
    // A 4 GiB descriptor (no allocation follows it).
    net.post_tx(&[(data, u32::MAX, 0)]);
    net.send_frame(HDR, &good, &[]);
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.chains, out.frames), (8, 1));
    assert_eq!(batch.frame(0).unwrap(), &good[..]);
    assert_eq!(stats.drops_of(DropCause::ChainWrongDirection), 1);
    assert_eq!(stats.drops_of(DropCause::ChainOutOfBounds), 2);
    assert_eq!(stats.drops_of(DropCause::ShortHeader), 1);
    assert_eq!(stats.drops_of(DropCause::Runt), 1);
    assert_eq!(stats.drops_of(DropCause::TooBig), 2);
    assert_eq!(net.tx_used().len(), 8, "every chain is returned");
}

#[test]
fn tx_loops_bad_next_bad_head_and_bad_indirect_tables() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (_, mut txq) = net.queues(false);
    let data = net.alloc(64);
    // A two-descriptor loop at 0,1.
    net.post_raw_tx(
        0,
        &[
            Descriptor::new(data, 20, DESC_F_NEXT, 1),
            Descriptor::new(data, 20, DESC_F_NEXT, 0),
        ],
        0,
    );
    // A `next` outside the table at 2.
    net.post_raw_tx(2, &[Descriptor::new(data, 20, DESC_F_NEXT, 999)], 2);
    // A head outside the table.
    net.post_raw_tx(3, &[], 999);
    // An indirect table whose length is not a multiple of 16.
    net.post_raw_tx(
        3,
        &[Descriptor::new(0x3000_0000, 17, DESC_F_INDIRECT, 0)],
        3,
    );
    // An indirect table that loops on itself.
    mem.write_obj(
        Descriptor::new(data, 20, DESC_F_NEXT, 0),
        GuestAddress(0x3000_0000),
    )
    .unwrap();
    net.post_raw_tx(
        4,
        &[Descriptor::new(0x3000_0000, 16, DESC_F_INDIRECT, 0)],
        4,
    );
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.chains, out.frames), (5, 0));
    // The bad head is counted twice: as a chain with no descriptor and when it cannot be
    // returned to the used ring.
    assert_eq!(stats.drops_of(DropCause::ChainInvalid), 6);
    assert_eq!(
        net.tx_used().len(),
        4,
        "a head outside the table cannot be returned"
    );
    // A good indirect chain still works.
    let f = frame(80);
    let buf = net.alloc(HDR + f.len());
    let mut bytes = vec![0u8; HDR];
    bytes.extend_from_slice(&f);
    mem.write_slice(&bytes, GuestAddress(buf)).unwrap();
    mem.write_obj(
        Descriptor::new(buf, HDR as u32, DESC_F_NEXT, 1),
        GuestAddress(0x3000_1000),
    )
    .unwrap();
    mem.write_obj(
        Descriptor::new(buf + HDR as u64, f.len() as u32, 0, 0),
        GuestAddress(0x3000_1010),
    )
    .unwrap();
    net.post_raw_tx(
        5,
        &[Descriptor::new(0x3000_1000, 32, DESC_F_INDIRECT, 0)],
        5,
    );
    let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
    assert_eq!(out.frames, 1);
    assert_eq!(batch.frame(0).unwrap(), &f[..]);
}

/// Writes an indirect table of `n` linked 8-byte read-only descriptors at `table`, all
/// pointing into `data` (which holds 8 * n bytes: a virtio-net header, then a frame).
fn write_linear_table(mem: &vm_memory::GuestMemoryMmap, table: u64, data: u64, n: u16) {
    for i in 0..n {
        let last = i + 1 == n;
        let d = Descriptor::new(
            data + 8 * u64::from(i),
            8,
            if last { 0 } else { DESC_F_NEXT },
            if last { 0 } else { i + 1 },
        );
        mem.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
}

/// A chain holds at most the queue size of descriptors, direct and indirect together
/// (virtio 1.2 2.7.5.3.1): an indirect table does not start a new count.
#[test]
fn tx_chain_length_is_capped_at_the_queue_size_across_an_indirect_table() {
    const SIZE: u16 = 16;
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, SIZE);
    let (_, mut txq) = net.queues(false);
    let data = net.alloc(8 * 70_000);
    let tables: Vec<u64> = (0..7).map(|_| net.alloc(16 * 65_536)).collect();
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let mut run = |net: &mut MockNet<'_>, at: u16, descs: &[Descriptor]| {
        batch.clear();
        net.post_raw_tx(at, descs, at);
        let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
        assert_eq!(out.chains, 1);
        (out.frames, stats.drops_of(DropCause::ChainInvalid))
    };

    // An indirect table of exactly the queue size: accepted.
    write_linear_table(&mem, tables[0], data, SIZE);
    let ind = |table: u64, n: u32| Descriptor::new(table, 16 * n, DESC_F_INDIRECT, 0);
    assert_eq!(run(&mut net, 0, &[ind(tables[0], u32::from(SIZE))]), (1, 0));
    // One more: refused (the walk limit used to restart at the table's own length).
    write_linear_table(&mem, tables[1], data, SIZE + 1);
    assert_eq!(
        run(&mut net, 1, &[ind(tables[1], u32::from(SIZE) + 1)]),
        (0, 1)
    );
    // The longest table a descriptor can describe (65 535 entries, linked): refused after
    // the queue size, not after 65 535 reads.
    write_linear_table(&mem, tables[2], data, u16::MAX);
    assert_eq!(
        run(&mut net, 2, &[ind(tables[2], u32::from(u16::MAX))]),
        (0, 2)
    );
    // A table that loops on itself beyond its first entry.
    write_linear_table(&mem, tables[3], data, 4);
    mem.write_obj(
        Descriptor::new(data, 8, DESC_F_NEXT, 1),
        GuestAddress(tables[3] + 16 * 3),
    )
    .unwrap();
    assert_eq!(run(&mut net, 3, &[ind(tables[3], 4)]), (0, 3));

    // Direct descriptors count too: 10 direct + a 6-entry table = 16 buffers, accepted...
    let direct = |n: u16, at: u16, table: u64, len: u32| {
        let mut v: Vec<Descriptor> = (0..n)
            .map(|i| Descriptor::new(data + 8 * u64::from(i), 8, DESC_F_NEXT, at + i + 1))
            .collect();
        v.push(ind(table, len));
        v
    };
    write_linear_table(&mem, tables[4], data + 80, 6);
    assert_eq!(run(&mut net, 4, &direct(10, 4, tables[4], 6)), (1, 3));
    // ...10 direct + 7 in the table = 17: refused.
    write_linear_table(&mem, tables[5], data + 80, 7);
    assert_eq!(run(&mut net, 0, &direct(10, 0, tables[5], 7)), (0, 4));

    // A table inside a table: refused.
    write_linear_table(&mem, tables[6], data, 2);
    mem.write_obj(
        Descriptor::new(tables[0], 16 * 4, DESC_F_INDIRECT, 0),
        GuestAddress(tables[6] + 16),
    )
    .unwrap();
    mem.write_obj(
        Descriptor::new(data, 12, DESC_F_NEXT, 1),
        GuestAddress(tables[6]),
    )
    .unwrap();
    assert_eq!(run(&mut net, 11, &[ind(tables[6], 2)]), (0, 5));

    // A direct loop over the whole table: refused after the queue size.
    let ring: Vec<Descriptor> = (0..SIZE)
        .map(|i| Descriptor::new(data, 8, DESC_F_NEXT, (i + 1) % SIZE))
        .collect();
    assert_eq!(run(&mut net, 0, &ring), (0, 6));
}

#[test]
fn tx_avail_index_beyond_queue_size_needs_reset() {
    let mem = guest_memory();
    let net = MockNet::new(&mem, 16);
    let (_, mut txq) = net.queues(false);
    net.set_tx_avail_idx(17);
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let e = tx
        .process(&mem, &mut txq, &mut batch, &mut stats)
        .unwrap_err();
    assert!(
        matches!(e, Error::Queue(virtio_queue::Error::InvalidAvailRingIndex)),
        "{e:?}"
    );
}

#[test]
fn tx_event_idx_suppresses_notifications() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (_, mut txq) = net.queues(true);
    net.set_tx_used_event(2);
    let mut tx = TxQueue::new(HDR, MAX_FRAME);
    let mut batch = FrameBatch::new(64, MAX_FRAME);
    let mut stats = Stats::default();
    let mut notified = Vec::new();
    for _ in 0..4 {
        net.send_frame(HDR, &frame(60), &[]);
        let out = tx.process(&mem, &mut txq, &mut batch, &mut stats).unwrap();
        batch.clear();
        notified.push(out.notify);
    }
    // used idx goes 1, 2, 3, 4: the driver asked for an interrupt once it passes 2.
    assert_eq!(notified, [false, false, true, false]);
}

#[test]
fn rx_single_buffer_without_mrg() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    net.post_rx(&[(HDR + MAX_FRAME) as u32]);
    let mut rx = RxQueue::new(HDR, false);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    let f = frame(1000);
    assert!(batch.push(&f));
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.starved, out.notify), (1, false, true));
    let used = net.rx_used();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].len as usize, HDR + f.len());
    let bytes = net.rx_bytes(used[0]);
    assert_eq!(
        &bytes[..HDR],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        "num_buffers = 1"
    );
    assert_eq!(&bytes[HDR..], &f[..]);
    assert_eq!((stats.rx_frames, stats.rx_bytes), (1, 1000));
}

#[test]
fn rx_legacy_header_is_ten_bytes() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    net.post_rx(&[2048]);
    let mut rx = RxQueue::new(10, false);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    let f = frame(100);
    assert!(batch.push(&f));
    rx.fill(&mem, &mut rxq, &mut batch, &mut Stats::default())
        .unwrap();
    let used = net.rx_used();
    assert_eq!(used[0].len, 110);
    assert_eq!(&net.rx_bytes(used[0])[10..], &f[..]);
}

#[test]
fn rx_merges_buffers_and_sets_num_buffers_even_when_the_header_is_split() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    // The header straddles three descriptors; num_buffers lands in the 7-byte one.
    net.post_rx(&[5, 7, 200]);
    net.post_rx(&[512]);
    net.post_rx(&[512]);
    net.post_rx(&[512]);
    let mut rx = RxQueue::new(HDR, true);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    let f = frame(1000);
    assert!(batch.push(&f));
    let small = frame(60);
    assert!(batch.push(&small));
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!(out.delivered, 2);
    let mut pending = Vec::new();
    let (h, got) = net.rx_frame(HDR, &mut pending).unwrap();
    assert_eq!(h.num_buffers, 3);
    assert_eq!(got, f);
    let (h, got) = net.rx_frame(HDR, &mut pending).unwrap();
    assert_eq!(h.num_buffers, 1);
    assert_eq!(got, small);
}

#[test]
fn rx_starves_rewinds_and_resumes() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(true);
    let mut rx = RxQueue::new(HDR, true);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    let f = frame(1400);
    assert!(batch.push(&f));
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert!(out.starved && out.delivered == 0);
    // One small buffer: not enough for the frame; it is given back.
    net.post_rx(&[600]);
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert!(out.starved);
    assert_eq!(rxq.next_avail(), 0, "rewound");
    assert!(net.rx_used().is_empty());
    assert!(!rx.arm(&mem, &mut rxq).unwrap(), "nothing new arrived");
    // EVENT_IDX: avail_event is the driver's current index (1), so its next add kicks.
    assert_eq!(net.rx_avail_event(), 1);
    net.post_rx(&[1000]);
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.starved), (1, false));
    let mut pending = Vec::new();
    let (h, got) = net.rx_frame(HDR, &mut pending).unwrap();
    assert_eq!(h.num_buffers, 2);
    assert_eq!(got, f);
    assert_eq!(batch.pending(), 0);
}

#[test]
fn rx_without_mrg_drops_frames_no_buffer_can_hold() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    net.post_rx(&[200]);
    let mut rx = RxQueue::new(HDR, false);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    assert!(batch.push(&frame(1000)));
    assert!(batch.push(&frame(100)));
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.dropped), (1, 1));
    assert_eq!(stats.drops_of(DropCause::RxNoFit), 1);
    let used = net.rx_used();
    assert_eq!(
        used[0].len as usize,
        HDR + 100,
        "the buffer went to the frame that fits"
    );
}

/// With MRG_RXBUF, frames larger than all the ring's buffers together are dropped after one
/// walk of the ring, not one walk per frame; a frame that fits still gets the buffers.
#[test]
fn rx_frames_too_large_for_the_whole_ring_walk_it_once() {
    const SIZE: u16 = 16;
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, SIZE);
    let (mut rxq, _) = net.queues(false);
    for _ in 0..SIZE {
        net.post_rx(&[64]);
    }
    let mut rx = RxQueue::new(HDR, true);
    let mut batch = FrameBatch::new(16, MAX_FRAME);
    for _ in 0..8 {
        assert!(batch.push(&frame(1400)));
    }
    let small = frame(100);
    assert!(batch.push(&small));
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.dropped, out.starved), (1, 8, false));
    assert_eq!(stats.drops_of(DropCause::RxNoFit), 8);
    // One walk of the ring (16 chains) for the first large frame, none for the other seven,
    // two chains for the small frame (12 + 100 bytes in 64-byte buffers).
    assert_eq!(out.walked, usize::from(SIZE) + 2);
    let (h, got) = net.rx_frame(HDR, &mut Vec::new()).unwrap();
    assert_eq!((h.num_buffers, got), (2, small));
    assert_eq!(batch.pending(), 0);
    // Buffers added later are tried again (the knowledge does not outlive the call).
    net.post_rx(&[2048]);
    assert!(batch.push(&frame(1400)));
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.dropped), (1, 0));
}

#[test]
fn rx_hostile_chains_are_returned_empty() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    let a = net.alloc(2048);
    net.post_rx_raw(&[(a, 2048, 0)]); // device-readable
    net.post_rx_raw(&[(0x2_0000_0000, 2048, DESC_F_WRITE)]); // outside memory
    net.post_rx(&[2048]);
    let mut rx = RxQueue::new(HDR, false);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    for _ in 0..3 {
        assert!(batch.push(&frame(100)));
    }
    let mut stats = Stats::default();
    let out = rx.fill(&mem, &mut rxq, &mut batch, &mut stats).unwrap();
    assert_eq!((out.delivered, out.dropped), (1, 2));
    assert_eq!(stats.drops_of(DropCause::ChainWrongDirection), 1);
    assert_eq!(stats.drops_of(DropCause::ChainOutOfBounds), 1);
    let lens: Vec<u32> = net.rx_used().iter().map(|u| u.len).collect();
    assert_eq!(lens, [0, 0, (HDR + 100) as u32]);
}

#[test]
fn rx_skips_holes() {
    let mem = guest_memory();
    let mut net = MockNet::new(&mem, 16);
    let (mut rxq, _) = net.queues(false);
    net.post_rx(&[2048]);
    let mut rx = RxQueue::new(HDR, false);
    let mut batch = FrameBatch::new(4, MAX_FRAME);
    assert!(batch.push(&frame(100)));
    assert!(batch.push(&frame(200)));
    batch.drop_frame(0);
    let out = rx
        .fill(&mem, &mut rxq, &mut batch, &mut Stats::default())
        .unwrap();
    assert_eq!(out.delivered, 1);
    assert_eq!(net.rx_used()[0].len as usize, HDR + 200);
}
