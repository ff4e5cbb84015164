//! virtio-net and ring feature bits the simulated guest knows, their names, and the
//! negotiation against what the device offers.

/// `VIRTIO_NET_F_MTU`: the device reports its MTU in config space.
pub const MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: the device has a MAC address.
pub const MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_MRG_RXBUF`: RX frames may span several buffers (`num_buffers`).
pub const MRG_RXBUF: u64 = 1 << 15;
/// `VIRTIO_NET_F_STATUS`: link status in config space.
pub const STATUS: u64 = 1 << 16;
/// `VIRTIO_RING_F_EVENT_IDX`: `used_event` / `avail_event` notification suppression.
pub const EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_F_VERSION_1`.
pub const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_NET_F_CSUM`: the device takes frames with a partial checksum (`NEEDS_CSUM`).
pub const CSUM: u64 = 1 << 0;
/// `VIRTIO_NET_F_GUEST_CSUM`: the driver takes frames with a partial checksum.
pub const GUEST_CSUM: u64 = 1 << 1;
/// `VIRTIO_NET_F_GUEST_TSO4`: the driver takes TCPv4 GSO super-frames (needs GUEST_CSUM).
pub const GUEST_TSO4: u64 = 1 << 7;
/// `VIRTIO_NET_F_HOST_TSO4`: the device takes TCPv4 GSO super-frames (needs CSUM).
pub const HOST_TSO4: u64 = 1 << 11;
/// `VIRTIO_NET_F_GUEST_TSO6`: the driver takes TCPv6 GSO super-frames (needs GUEST_CSUM).
pub const GUEST_TSO6: u64 = 1 << 8;
/// `VIRTIO_NET_F_HOST_TSO6`: the device takes TCPv6 GSO super-frames (needs CSUM).
pub const HOST_TSO6: u64 = 1 << 12;
/// `VIRTIO_NET_F_CTRL_VQ`: the control virtqueue.
pub const CTRL_VQ: u64 = 1 << 17;
/// `VIRTIO_NET_F_MQ`: several queue pairs (needs CTRL_VQ).
pub const MQ: u64 = 1 << 22;
/// Everything the simulated guest asks for.
pub const WANTED: u64 = VERSION_1 | MAC | MTU | STATUS | MRG_RXBUF | EVENT_IDX;
/// The offloads the guest asks for on top of [`WANTED`] with
/// [`GuestConfig::offloads`](super::GuestConfig::offloads).
pub const OFFLOADS: u64 = CSUM | GUEST_CSUM | GUEST_TSO4 | HOST_TSO4 | GUEST_TSO6 | HOST_TSO6;

/// The names of the offload bits set in `features` (`"CSUM GUEST_CSUM …"`, `"none"`).
#[must_use]
pub fn offload_names(features: u64) -> String {
    let names: Vec<&str> = [
        (CSUM, "CSUM"),
        (GUEST_CSUM, "GUEST_CSUM"),
        (HOST_TSO4, "HOST_TSO4"),
        (GUEST_TSO4, "GUEST_TSO4"),
        (HOST_TSO6, "HOST_TSO6"),
        (GUEST_TSO6, "GUEST_TSO6"),
    ]
    .iter()
    .filter(|(bit, _)| features & bit != 0)
    .map(|(_, name)| *name)
    .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(" ")
    }
}

/// The names of the feature bits set in `features` (bridge's [`bridge::feature_names`]:
/// one table for the device's and the guest's logs).
pub use bridge::feature_names as names;

/// The negotiated features for `device` features: [`WANTED`], plus with `offloads`
/// the offered [`OFFLOADS`] (a TSO bit only with its checksum bit, virtio 1.x
/// 5.1.3.1), plus [`MQ`] and [`CTRL_VQ`] for more than one of `queue_pairs` when both are
/// offered.
pub(super) fn negotiate(device: u64, offloads: bool, queue_pairs: u16) -> u64 {
    let mut f = WANTED & device;
    if queue_pairs > 1 && device & (MQ | CTRL_VQ) == MQ | CTRL_VQ {
        f |= MQ | CTRL_VQ;
    }
    if offloads {
        let mut o = OFFLOADS & device;
        if o & CSUM == 0 {
            o &= !(HOST_TSO4 | HOST_TSO6);
        }
        if o & GUEST_CSUM == 0 {
            o &= !(GUEST_TSO4 | GUEST_TSO6);
        }
        f |= o;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_list_every_bit() {
        assert_eq!(names(0), "none");
        assert_eq!(
            names(VERSION_1 | GUEST_CSUM | MRG_RXBUF | (1 << 30) | (1 << 26)),
            "GUEST_CSUM,MRG_RXBUF,LOG_ALL,PROTOCOL_FEATURES,VERSION_1"
        );
        assert_eq!(names(1 << 40 | CSUM), "CSUM,bit40");
    }
}
