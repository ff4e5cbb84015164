//! Hostile control-virtqueue chains (`bridge::ControlQueue`): an arbitrary descriptor table,
//! available ring and guest memory, answered by a device of 4 queue pairs with MQ negotiated
//! or not, the embedder accepting or refusing. Never a panic; every chain taken goes back;
//! the queue pairs stay within 1..=4 and change only through an accepted command.
//!
//! Input: `[flags, table[16 × 16], avail_idx[2], ring[16 × 2], data...]`; descriptor
//! addresses are folded into twice the guest memory size. Flags: 1 EVENT_IDX, 2 MQ
//! negotiated, 4 the embedder refuses.
#![no_main]

use bridge::{ControlCommand, ControlQueue, MQ_FEATURES, VIRTIO_NET_F_CTRL_VQ};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[path = "common/rings.rs"]
mod rings;
use rings::{QSIZE, TX_AVAIL, TX_DESC, TX_USED, queue, take, write_ring, write_table};

const MEM: usize = 0x1_0000;
const DATA: u64 = 0x8000;
const TABLE: usize = 16 * QSIZE as usize;
const RING: usize = 2 + 2 * QSIZE as usize;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let (table, rest) = take(rest, TABLE);
    let (avail, data) = take(rest, RING);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else {
        return;
    };
    write_table(&mem, TX_DESC, &table, 2 * MEM as u64);
    write_ring(&mem, TX_AVAIL, &avail);
    let n = data.len().min(MEM - DATA as usize);
    let _ = mem.write_slice(&data[..n], GuestAddress(DATA));
    let Some(mut q) = queue(TX_DESC, TX_AVAIL, TX_USED, flags & 1 != 0) else {
        return;
    };
    let mut ctrl = ControlQueue::new(4);
    ctrl.set_features(if flags & 2 != 0 {
        MQ_FEATURES
    } else {
        1 << VIRTIO_NET_F_CTRL_VQ
    });
    let refuse = flags & 4 != 0;
    let mut accepted = 0u64;
    for _ in 0..3 {
        let before = ctrl.pairs();
        let r = ctrl.process(&mem, &mut q, |c| {
            let ControlCommand::QueuePairs(n) = c else {
                return false;
            };
            assert!((1..=4).contains(&n), "pairs {n} offered to the embedder");
            !refuse
        });
        let stats = ctrl.stats();
        assert!((1..=4).contains(&ctrl.pairs()));
        if refuse || flags & 2 == 0 {
            assert_eq!(ctrl.pairs(), before, "pairs changed without an accepted command");
            assert_eq!(stats.accepted, 0);
        }
        accepted = stats.accepted;
        if r.is_err() {
            break;
        }
    }
    let s = ctrl.stats();
    assert_eq!(s.accepted, accepted);
    // Every chain taken went back to the used ring (the queue's own count: an ack the guest
    // pointed at its rings may have overwritten the ring's index in memory).
    let taken = s.accepted + s.refused + s.malformed;
    assert_eq!(u64::from(q.next_used()), taken % 65536);
});
