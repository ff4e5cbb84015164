//! The split-virtqueue layout the queue-driving targets (`bridge_chains`, `network_ports`)
//! share: two 16-entry queues at fixed guest addresses, and a ready `Queue` over one.

#![allow(dead_code)] // each target uses part of it

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Entries per queue.
pub const QSIZE: u16 = 16;
pub const TX_DESC: u64 = 0x0;
pub const TX_AVAIL: u64 = 0x1000;
pub const TX_USED: u64 = 0x2000;
pub const RX_DESC: u64 = 0x3000;
pub const RX_AVAIL: u64 = 0x4000;
pub const RX_USED: u64 = 0x5000;

/// Guest memory of the queue-chain targets (`bridge_chains`, `ctrl_queue`).
pub const MEM: usize = 0x1_0000;
/// Where the rest of their input goes in guest memory.
pub const DATA: u64 = 0x8000;
/// A descriptor table's bytes.
pub const TABLE: usize = 16 * QSIZE as usize;
/// An available ring's bytes (idx and entries).
pub const RING: usize = 2 + 2 * QSIZE as usize;

/// [`MEM`] bytes of guest memory holding, for each `(desc, avail)` of `queues` in turn, a
/// descriptor table ([`TABLE`] bytes of `input`, addresses folded into `0..2 * MEM`, so that
/// about half point outside) and an available ring ([`RING`] bytes), then the rest of `input`
/// at [`DATA`]; the memory and that rest.
pub fn hostile_memory<'a>(
    input: &'a [u8],
    queues: &[(u64, u64)],
) -> Option<(GuestMemoryMmap, &'a [u8])> {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]).ok()?;
    let mut rest = input;
    for &(desc, avail) in queues {
        let (table, r) = take(rest, TABLE);
        let (ring, r) = take(r, RING);
        write_table(&mem, desc, &table, 2 * MEM as u64);
        write_ring(&mem, avail, &ring);
        rest = r;
    }
    let n = rest.len().min(MEM - DATA as usize);
    let _ = mem.write_slice(&rest[..n], GuestAddress(DATA));
    Some((mem, rest))
}

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

/// The first `n` bytes of `b` (zero-padded) and the rest.
pub fn take(b: &[u8], n: usize) -> (Vec<u8>, &[u8]) {
    let k = n.min(b.len());
    let mut v = b[..k].to_vec();
    v.resize(n, 0);
    (v, &b[k..])
}

/// Writes descriptors from `raw` (16 bytes each) at `at`, their addresses folded into
/// `0..fold` (so that a part of them point outside guest memory).
pub fn write_table(mem: &GuestMemoryMmap, at: u64, raw: &[u8], fold: u64) {
    for (i, d) in raw.chunks_exact(16).enumerate() {
        let mut d = <[u8; 16]>::try_from(d).unwrap_or([0; 16]);
        let addr = u64::from_le_bytes(d[..8].try_into().unwrap_or([0; 8])) % fold.max(1);
        d[..8].copy_from_slice(&addr.to_le_bytes());
        let _ = mem.write_slice(&d, GuestAddress(at + 16 * i as u64));
    }
}

/// Writes an available ring: flags 0, idx and ring from `raw`.
pub fn write_ring(mem: &GuestMemoryMmap, at: u64, raw: &[u8]) {
    let _ = mem.write_slice(&[0, 0], GuestAddress(at));
    let _ = mem.write_slice(raw, GuestAddress(at + 2));
}
