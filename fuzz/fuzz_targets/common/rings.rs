//! The split-virtqueue layout the queue-driving targets (`bridge_chains`, `network_ports`)
//! share: two 16-entry queues at fixed guest addresses, and a ready `Queue` over one.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;

/// Entries per queue.
pub const QSIZE: u16 = 16;
pub const TX_DESC: u64 = 0x0;
pub const TX_AVAIL: u64 = 0x1000;
pub const TX_USED: u64 = 0x2000;
pub const RX_DESC: u64 = 0x3000;
pub const RX_AVAIL: u64 = 0x4000;
pub const RX_USED: u64 = 0x5000;

/// A ready queue of [`QSIZE`] entries with its three areas at `desc`, `avail`, `used`.
pub fn queue(desc: u64, avail: u64, used: u64, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(QSIZE).ok()?;
    q.set_size(QSIZE);
    q.try_set_desc_table_address(GuestAddress(desc)).ok()?;
    q.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
    q.try_set_used_ring_address(GuestAddress(used)).ok()?;
    q.set_ready(true);
    q.set_event_idx(event_idx);
    Some(q)
}
