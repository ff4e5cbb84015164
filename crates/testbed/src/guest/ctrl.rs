//! The driver's side of the control virtqueue (virtio 1.x 5.1.6.5), negotiated with
//! `VIRTIO_NET_F_CTRL_VQ`: queue `2 × max_virtqueue_pairs` (here the pairs the guest laid out,
//! [`SimGuest::queue_pairs`](super::SimGuest::queue_pairs)), [`CONTROL_QUEUE_SIZE`] entries in
//! pair 0's span ([`RingLayout::control`]).
//!
//! The one command the guest sends is `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` (class 4, command 0,
//! `le16 virtqueue_pairs`): a chain of the readable command and a writable ack byte, one at
//! a time. The caller runs the device (there is no kick), then takes the ack.

use anyhow::{Context, ensure};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::features;
use super::ring::{
    CONTROL_QUEUE_SIZE, CTRL_BUF_SIZE, DriverRing, RingLayout, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};

/// Class `VIRTIO_NET_CTRL_MQ`.
const CTRL_MQ: u8 = 4;
/// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`.
const MQ_VQ_PAIRS_SET: u8 = 0;
/// The ack byte before the device writes it: an unanswered chain keeps it.
const ACK_UNANSWERED: u8 = 0xFF;
/// The command's head descriptor; the ack is the next one (one command in flight).
const HEAD: u16 = 0;
/// Where the ack byte sits after the start of the command buffers.
const ACK_OFFSET: u64 = 0x40;
const _: () = assert!(ACK_OFFSET < CTRL_BUF_SIZE);

/// The driver's side of the control queue ([`SimGuest::control_driver`](super::SimGuest::control_driver)):
/// [`ControlDriver::post_queue_pairs`] puts a `VQ_PAIRS_SET` command on the ring, the caller
/// runs the device's control queue, [`ControlDriver::take_ack`] reads its answer. It holds
/// its own handle on the guest memory, so it outlives the [`SimGuest`](super::SimGuest).
#[derive(Debug)]
pub struct ControlDriver {
    mem: GuestMemoryMmap,
    ring: DriverRing,
    index: u16,
    in_flight: bool,
}

impl ControlDriver {
    /// The driver of control queue `index` in `mem`, EVENT_IDX as in `acked`.
    pub(super) fn new(mem: GuestMemoryMmap, index: u16, acked: u64) -> anyhow::Result<Self> {
        ensure!(
            acked & features::CTRL_VQ != 0,
            "VIRTIO_NET_F_CTRL_VQ was not negotiated: no control queue"
        );
        let ring = DriverRing::with_layout(index, RingLayout::control(), CONTROL_QUEUE_SIZE, acked);
        Ok(Self {
            mem,
            ring,
            index,
            in_flight: false,
        })
    }

    /// The control queue's index.
    #[must_use]
    pub fn queue_index(&self) -> u16 {
        self.index
    }

    /// Posts `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET pairs` (not checked here: the device refuses a
    /// value outside 1 to its maximum) and publishes it; run the device's control queue, then
    /// [`ControlDriver::take_ack`].
    ///
    /// # Errors
    /// A command is in flight (its ack not taken yet); guest memory errors.
    pub fn post_queue_pairs(&mut self, pairs: u16) -> anyhow::Result<()> {
        ensure!(
            !self.in_flight,
            "control queue {}: a command is in flight (take its ack first)",
            self.index
        );
        let [lo, hi] = pairs.to_le_bytes();
        let cmd = [CTRL_MQ, MQ_VQ_PAIRS_SET, lo, hi];
        let (cmd_at, ack_at) = self.buffers();
        self.mem
            .write_slice(&cmd, cmd_at)
            .context("writing the control command")?;
        self.mem
            .write_obj(ACK_UNANSWERED, ack_at)
            .context("writing the control ack byte")?;
        self.ring.write_desc(
            &self.mem,
            HEAD,
            cmd_at.0,
            cmd.len() as u32,
            VRING_DESC_F_NEXT,
            HEAD + 1,
        )?;
        self.ring
            .write_desc(&self.mem, HEAD + 1, ack_at.0, 1, VRING_DESC_F_WRITE, 0)?;
        self.ring.push_avail(&self.mem, HEAD)?;
        // The caller runs the device: whether it asked for a notification does not matter.
        self.ring.publish(&self.mem)?;
        self.in_flight = true;
        Ok(())
    }

    /// The ack of the command in flight: `None` while the device has not used its chain (or
    /// none is in flight), else the byte the device wrote (`VIRTIO_NET_OK` 0,
    /// `VIRTIO_NET_ERR` 1), and the next command may be posted.
    ///
    /// # Errors
    /// The device returned the chain unanswered (used length 0; the next command may be
    /// posted), or used a descriptor that is not the command's head (the command stays in
    /// flight); guest memory errors.
    pub fn take_ack(&mut self) -> anyhow::Result<Option<u8>> {
        if !self.in_flight {
            return Ok(None);
        }
        let Some((id, len)) = self.ring.next_used(&self.mem)? else {
            return Ok(None);
        };
        ensure!(
            id == u32::from(HEAD),
            "control queue {}: the device used descriptor {id}, not the command's head {HEAD}",
            self.index
        );
        self.in_flight = false;
        ensure!(
            len != 0,
            "control queue {}: the device returned the command unanswered (used length 0)",
            self.index
        );
        let (_, ack_at) = self.buffers();
        let ack: u8 = self
            .mem
            .read_obj(ack_at)
            .context("reading the control ack byte")?;
        Ok(Some(ack))
    }

    /// Whether a command waits for its ack.
    #[must_use]
    pub fn in_flight(&self) -> bool {
        self.in_flight
    }

    /// Where the command and its ack byte sit.
    fn buffers(&self) -> (GuestAddress, GuestAddress) {
        let base = self.ring.l.buffers;
        (GuestAddress(base), GuestAddress(base + ACK_OFFSET))
    }
}
