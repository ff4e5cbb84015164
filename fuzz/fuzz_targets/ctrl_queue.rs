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

#[path = "common/rings.rs"]
mod rings;
use rings::{TX_AVAIL, TX_DESC, TX_USED, hostile_memory, queue};

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else {
        return;
    };
    let Some((mem, _)) = hostile_memory(rest, &[(TX_DESC, TX_AVAIL)]) else {
        return;
    };
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
