//! The control virtqueue (virtio 1.x 5.1.6.5): the driver's commands to the device, each a
//! descriptor chain of a device-readable `{class: u8, command: u8, data...}` and a
//! device-writable `ack: u8` (`VIRTIO_NET_OK` or `VIRTIO_NET_ERR`).
//!
//! The device offers the control queue with multiqueue ([`crate::Device::with_queue_pairs`]:
//! `VIRTIO_NET_F_CTRL_VQ` and `VIRTIO_NET_F_MQ`), and the one command it acts on is
//! `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: how many queue pairs the driver uses from now on. Every
//! other class (RX mode, MAC filter, VLAN, announce, RSS, guest offloads) belongs to a feature
//! the device does not offer and is answered `VIRTIO_NET_ERR`, as the specification asks.
//! The guest is untrusted: a chain with no writable byte for the ack, readable bytes after a
//! writable one, or a command shorter than its data is returned unanswered (length 0) and
//! counted; nothing here panics or reads more than [`MAX_COMMAND`] bytes of a chain.

use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::Error;
use crate::device::{VIRTIO_NET_F_MQ, has_bit};

/// Class `VIRTIO_NET_CTRL_MQ`.
pub const VIRTIO_NET_CTRL_MQ: u8 = 4;
/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`: data `le16 virtqueue_pairs`, 1 to the device's
/// `max_virtqueue_pairs`.
pub const VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET: u8 = 0;
/// The ack of a command the device carried out.
pub const VIRTIO_NET_OK: u8 = 0;
/// The ack of a command the device refused.
pub const VIRTIO_NET_ERR: u8 = 1;
/// The most readable bytes of one command the device looks at (header and data).
pub const MAX_COMMAND: usize = 64;

/// A command the driver sent that the device accepted; the embedder carries it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlCommand {
    /// Use queue pairs `0..n` from now on (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`).
    QueuePairs(u16),
}

/// What the control queue saw (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ControlStats {
    /// Commands answered `VIRTIO_NET_OK`.
    pub accepted: u64,
    /// Commands answered `VIRTIO_NET_ERR`: a class or command the device does not offer, or
    /// a value out of range, or one the embedder refused.
    pub refused: u64,
    /// Chains returned unanswered: no writable byte for the ack, readable after writable
    /// descriptors, or a descriptor outside guest memory.
    pub malformed: u64,
}

/// The device side of the control virtqueue of one virtio-net device.
#[derive(Clone, Debug)]
pub struct ControlQueue {
    max_pairs: u16,
    pairs: u16,
    features: u64,
    stats: ControlStats,
}

impl ControlQueue {
    /// A control queue for a device of at most `max_pairs` queue pairs (at least 1); the
    /// driver starts with one pair (virtio 1.x 5.1.6.5.5).
    #[must_use]
    pub fn new(max_pairs: u16) -> Self {
        ControlQueue {
            max_pairs: max_pairs.max(1),
            pairs: 1,
            features: 0,
            stats: ControlStats::default(),
        }
    }

    /// The negotiated features (which command classes the driver may use); a new negotiation
    /// (a driver reset) starts again with one queue pair.
    pub fn set_features(&mut self, acked: u64) {
        self.features = acked;
        self.pairs = 1;
    }

    /// The queue pairs the driver uses now.
    #[must_use]
    pub const fn pairs(&self) -> u16 {
        self.pairs
    }

    /// The counters.
    #[must_use]
    pub const fn stats(&self) -> ControlStats {
        self.stats
    }

    /// Answers every chain the driver made available (at most the queue's size per call).
    /// `apply` carries out each accepted command and may refuse it (`false`: acked
    /// `VIRTIO_NET_ERR`, nothing changes). Returns whether the driver must be interrupted.
    ///
    /// # Errors
    ///
    /// [`Error::Queue`] when the available ring is broken (the device needs a reset), guest
    /// memory errors on the rings.
    pub fn process<M: GuestMemory, Q: QueueT>(
        &mut self,
        mem: &M,
        queue: &mut Q,
        mut apply: impl FnMut(ControlCommand) -> bool,
    ) -> Result<bool, Error> {
        let n = crate::ring::available(mem, queue)?;
        let mut used = false;
        for _ in 0..n {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let ack = self.answer(mem, chain, &mut apply);
            // A head outside the descriptor table cannot go back: the device needs a reset.
            queue.add_used(mem, head, u32::from(ack.is_some()))?;
            match ack {
                Some(VIRTIO_NET_OK) => self.stats.accepted += 1,
                Some(_) => self.stats.refused += 1,
                None => self.stats.malformed += 1,
            }
            used = true;
        }
        Ok(used && queue.needs_notification(mem)?)
    }

    /// Reads one command, carries it out if it may, writes the ack; `None` for a chain with
    /// nowhere to write it (then nothing was carried out).
    fn answer<M: GuestMemory>(
        &mut self,
        mem: &M,
        chain: impl Iterator<Item = virtio_queue::desc::split::Descriptor>,
        apply: &mut impl FnMut(ControlCommand) -> bool,
    ) -> Option<u8> {
        let mut cmd = [0u8; MAX_COMMAND];
        let mut read = 0usize;
        let mut ack_at: Option<GuestAddress> = None;
        for d in chain {
            if d.is_write_only() {
                if d.len() > 0 && ack_at.is_none() {
                    ack_at = Some(d.addr());
                }
                continue;
            }
            if ack_at.is_some() {
                // Device-readable after device-writable (virtio 1.x 2.7.4.2).
                return None;
            }
            let take = (d.len() as usize).min(MAX_COMMAND - read);
            if take > 0 {
                mem.read_slice(&mut cmd[read..read + take], d.addr()).ok()?;
                read += take;
            }
        }
        // Nowhere to write the ack (none, or outside guest memory): nothing is carried out.
        let at = ack_at?;
        mem.read_slice(&mut [0u8], at).ok()?;
        let ack = self.decide(&cmd[..read], apply);
        mem.write_slice(&[ack], at).ok()?;
        Some(ack)
    }

    fn decide(&mut self, cmd: &[u8], apply: &mut impl FnMut(ControlCommand) -> bool) -> u8 {
        let (class, command, data) = match cmd {
            [class, command, data @ ..] => (*class, *command, data),
            _ => return VIRTIO_NET_ERR,
        };
        let command = match (class, command, data) {
            (VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, [lo, hi, ..])
                if has_bit(self.features, VIRTIO_NET_F_MQ) =>
            {
                let n = u16::from_le_bytes([*lo, *hi]);
                if !(1..=self.max_pairs).contains(&n) {
                    return VIRTIO_NET_ERR;
                }
                ControlCommand::QueuePairs(n)
            }
            _ => return VIRTIO_NET_ERR,
        };
        if !apply(command) {
            return VIRTIO_NET_ERR;
        }
        match command {
            ControlCommand::QueuePairs(n) => self.pairs = n,
        }
        VIRTIO_NET_OK
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::Queue;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::device::VIRTIO_NET_F_CTRL_VQ;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;
    const MQ: u64 = 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    /// One command chain at descriptor `at`: header+data in one readable descriptor, the ack
    /// in a writable one; returns the ack's address.
    fn command(
        mem: &GuestMemoryMmap,
        q: &MockSplitQueue<'_, GuestMemoryMmap>,
        at: u16,
        bytes: &[u8],
    ) -> u64 {
        let data = 0x10_0000 + u64::from(at) * 0x100;
        mem.write_slice(bytes, GuestAddress(data)).unwrap();
        let ack = data + 0x80;
        mem.write_slice(&[0xee], GuestAddress(ack)).unwrap();
        q.add_desc_chains(
            &[
                desc(data, bytes.len() as u32, F_NEXT, at + 1),
                desc(ack, 1, F_WRITE, 0),
            ],
            at,
        )
        .unwrap();
        ack
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap()
    }

    /// A control queue of `max` pairs with MQ negotiated.
    fn with_mq(max: u16) -> ControlQueue {
        let mut c = ControlQueue::new(max);
        c.set_features(MQ);
        c
    }

    fn ack(mem: &GuestMemoryMmap, at: u64) -> u8 {
        mem.read_obj::<u8>(GuestAddress(at)).unwrap()
    }

    #[test]
    fn queue_pairs_are_set_within_the_maximum_and_everything_else_is_refused() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().unwrap();
        let mut ctrl = with_mq(4);
        let set = |n: u16| {
            let b = n.to_le_bytes();
            [
                VIRTIO_NET_CTRL_MQ,
                VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET,
                b[0],
                b[1],
            ]
        };
        let acks = [
            command(&mem, &mq, 0, &set(2)),
            command(&mem, &mq, 2, &set(5)),
            command(&mem, &mq, 4, &set(0)),
            command(&mem, &mq, 6, &[0, 0, 1]), // RX PROMISC on: CTRL_RX not offered
            command(&mem, &mq, 8, &[VIRTIO_NET_CTRL_MQ]), // too short
            command(&mem, &mq, 10, &set(4)),
        ];
        let mut seen = Vec::new();
        ctrl.process(&mem, &mut q, |c| {
            seen.push(c);
            true
        })
        .unwrap();
        let got: Vec<u8> = acks.iter().map(|&a| ack(&mem, a)).collect();
        assert_eq!(
            got,
            [
                VIRTIO_NET_OK,
                VIRTIO_NET_ERR,
                VIRTIO_NET_ERR,
                VIRTIO_NET_ERR,
                VIRTIO_NET_ERR,
                VIRTIO_NET_OK
            ]
        );
        assert_eq!(
            seen,
            [ControlCommand::QueuePairs(2), ControlCommand::QueuePairs(4)]
        );
        assert_eq!(ctrl.pairs(), 4);
        assert_eq!(
            ctrl.stats(),
            ControlStats {
                accepted: 2,
                refused: 4,
                malformed: 0
            }
        );
        // The embedder refuses: the pairs stay.
        let a = command(&mem, &mq, 12, &set(1));
        ctrl.process(&mem, &mut q, |_| false).unwrap();
        assert_eq!((ack(&mem, a), ctrl.pairs()), (VIRTIO_NET_ERR, 4));
        // Without MQ negotiated the class is refused; a new negotiation starts at one pair.
        ctrl.set_features(1 << VIRTIO_NET_F_CTRL_VQ);
        assert_eq!(ctrl.pairs(), 1);
        let a = command(&mem, &mq, 14, &set(2));
        ctrl.process(&mem, &mut q, |_| true).unwrap();
        assert_eq!((ack(&mem, a), ctrl.pairs()), (VIRTIO_NET_ERR, 1));
    }

    #[test]
    fn chains_with_nowhere_to_ack_or_readable_after_writable_are_returned_unanswered() {
        let mem = memory();
        let mq = MockSplitQueue::new(&mem, 16);
        let mut q: Queue = mq.create_queue().unwrap();
        let mut ctrl = with_mq(2);
        let cmd = [VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, 2, 0];
        mem.write_slice(&cmd, GuestAddress(0x10_0000)).unwrap();
        mq.add_desc_chains(
            &[
                // Readable only.
                desc(0x10_0000, 4, 0, 0),
                // Writable, then readable.
                desc(0x10_0100, 1, F_WRITE | F_NEXT, 2),
                desc(0x10_0000, 4, 0, 0),
                // A readable descriptor outside guest memory, then the ack.
                desc(0x40_0000, 4, F_NEXT, 4),
                desc(0x10_0200, 1, F_WRITE, 0),
                // A good command whose ack lies outside guest memory: not carried out.
                desc(0x10_0000, 4, F_NEXT, 6),
                desc(0x40_0000, 1, F_WRITE, 0),
            ],
            0,
        )
        .unwrap();
        let mut applied = 0;
        ctrl.process(&mem, &mut q, |_| {
            applied += 1;
            true
        })
        .unwrap();
        assert_eq!(applied, 0);
        assert_eq!(ctrl.pairs(), 1);
        assert_eq!(ctrl.stats().malformed, 4);
        // Every chain went back (length 0).
        let used = mem
            .read_obj::<u16>(GuestAddress(mq.used_addr().0 + 2))
            .unwrap();
        assert_eq!(used, 4);
    }
}
