//! virtio-net feature negotiation, configuration space and the `virtio_net_hdr`.

use crate::wire::MacAddr;

/// VIRTIO_NET_F_CSUM: the device handles packets with partial checksum (offered with
/// [`crate::BridgeConfig::offloads`]).
pub const VIRTIO_NET_F_CSUM: u32 = 0;
/// VIRTIO_NET_F_GUEST_CSUM: the driver handles packets with partial checksum (offered with
/// [`crate::BridgeConfig::offloads`]).
pub const VIRTIO_NET_F_GUEST_CSUM: u32 = 1;
/// VIRTIO_NET_F_GUEST_TSO4: the driver takes TCPv4 GSO super-frames (needs GUEST_CSUM).
pub const VIRTIO_NET_F_GUEST_TSO4: u32 = 7;
/// VIRTIO_NET_F_HOST_TSO4: the device takes TCPv4 GSO super-frames (needs CSUM).
pub const VIRTIO_NET_F_HOST_TSO4: u32 = 11;
/// VIRTIO_NET_F_GUEST_TSO6: the driver takes TCPv6 GSO super-frames (needs GUEST_CSUM).
pub const VIRTIO_NET_F_GUEST_TSO6: u32 = 8;
/// VIRTIO_NET_F_HOST_TSO6: the device takes TCPv6 GSO super-frames (needs CSUM).
pub const VIRTIO_NET_F_HOST_TSO6: u32 = 12;
/// VIRTIO_NET_F_MTU: the device reports a maximum MTU in the config space.
pub const VIRTIO_NET_F_MTU: u32 = 3;
/// VIRTIO_NET_F_MAC: the device has a MAC address in the config space.
pub const VIRTIO_NET_F_MAC: u32 = 5;
/// VIRTIO_NET_F_MRG_RXBUF: the driver can merge receive buffers.
pub const VIRTIO_NET_F_MRG_RXBUF: u32 = 15;
/// VIRTIO_NET_F_STATUS: the config space has a link status field.
pub const VIRTIO_NET_F_STATUS: u32 = 16;
/// VIRTIO_NET_F_CTRL_VQ: a control virtqueue ([`crate::ControlQueue`]) after the queue pairs.
pub const VIRTIO_NET_F_CTRL_VQ: u32 = 17;
/// VIRTIO_NET_F_MQ: several queue pairs, chosen by the driver on the control queue (needs
/// CTRL_VQ).
pub const VIRTIO_NET_F_MQ: u32 = 22;
/// VIRTIO_F_ANY_LAYOUT: header and frame may be split across descriptors in any way.
pub const VIRTIO_F_ANY_LAYOUT: u32 = 27;
/// VIRTIO_RING_F_INDIRECT_DESC: indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
/// VIRTIO_RING_F_EVENT_IDX: used/avail event index notification suppression.
pub const VIRTIO_RING_F_EVENT_IDX: u32 = 29;
/// VIRTIO_F_VERSION_1: virtio 1.x (little-endian, 12-byte header).
pub const VIRTIO_F_VERSION_1: u32 = 32;

/// VIRTIO_NET_S_LINK_UP in the config space `status` field.
pub const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// DEVICE_NEEDS_RESET in the device status register (the transport's register, set by the
/// embedder when the bridge reports [`crate::Error::NeedsReset`]).
pub const VIRTIO_CONFIG_S_NEEDS_RESET: u8 = 0x40;

/// The RX queue index.
pub const RX_QUEUE: u16 = 0;
/// The TX queue index.
pub const TX_QUEUE: u16 = 1;
/// The value passed to the interrupt callback for a configuration-change interrupt (the
/// device needs a reset).
pub const CONFIG_INTERRUPT: u16 = u16::MAX;

/// Size of the config space the device exposes: mac (6), status (2), max_virtqueue_pairs (2),
/// mtu (2).
pub const CONFIG_SPACE_SIZE: usize = 12;

/// Length of `virtio_net_hdr_v1` (VERSION_1 or MRG_RXBUF negotiated).
pub const VIRTIO_NET_HDR_LEN: usize = 12;
/// Length of the legacy `virtio_net_hdr` (neither VERSION_1 nor MRG_RXBUF).
pub const VIRTIO_NET_HDR_LEGACY_LEN: usize = 10;

/// VIRTIO_NET_HDR_F_NEEDS_CSUM: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum; whoever sends the packet on completes it.
pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
/// VIRTIO_NET_HDR_F_DATA_VALID: the checksum was verified (RX, with GUEST_CSUM).
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
/// VIRTIO_NET_HDR_GSO_NONE.
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
/// VIRTIO_NET_HDR_GSO_TCPV4: a TCPv4 super-frame to be cut into `gso_size` segments.
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
/// VIRTIO_NET_HDR_GSO_TCPV6: a TCPv6 super-frame to be cut into `gso_size` segments.
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;

/// `virtio_net_hdr_v1`. Without offloads the bridge writes flags 0 and gso_type NONE; with
/// them ([`crate::BridgeConfig::offloads`]) it carries checksum and GSO requests between
/// the guest and a host link that speaks the same header (a Linux TUN with `IFF_VNET_HDR`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VirtioNetHdr {
    /// VIRTIO_NET_HDR_F_NEEDS_CSUM (1), DATA_VALID (2).
    pub flags: u8,
    /// VIRTIO_NET_HDR_GSO_*.
    pub gso_type: u8,
    /// Ethernet + IP + transport header length (GSO).
    pub hdr_len: u16,
    /// Segment size (GSO).
    pub gso_size: u16,
    /// Where checksumming starts (NEEDS_CSUM).
    pub csum_start: u16,
    /// Offset of the checksum field from `csum_start`.
    pub csum_offset: u16,
    /// Number of merged RX buffers (MRG_RXBUF; 1 otherwise).
    pub num_buffers: u16,
}

impl VirtioNetHdr {
    /// Parses the first 10 or 12 bytes (little-endian). `None` if `b` is shorter than 10.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b10 = b.get(..VIRTIO_NET_HDR_LEGACY_LEN)?;
        let le = |i: usize| u16::from_le_bytes([b10[i], b10[i + 1]]);
        let num_buffers = b
            .get(10..12)
            .map_or(0, |n| u16::from_le_bytes([n[0], n[1]]));
        Some(VirtioNetHdr {
            flags: b10[0],
            gso_type: b10[1],
            hdr_len: le(2),
            gso_size: le(4),
            csum_start: le(6),
            csum_offset: le(8),
            num_buffers,
        })
    }

    /// The 12-byte little-endian encoding (use the first 10 bytes for the legacy header).
    pub fn to_bytes(&self) -> [u8; VIRTIO_NET_HDR_LEN] {
        let mut o = [0u8; VIRTIO_NET_HDR_LEN];
        o[0] = self.flags;
        o[1] = self.gso_type;
        o[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        o[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        o[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        o[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        o[10..12].copy_from_slice(&self.num_buffers.to_le_bytes());
        o
    }
}

/// Feature negotiation and the config space of one virtio-net device.
///
/// The embedder's transport (PCI or MMIO, or vhost-user) calls [`Device::device_features`],
/// [`Device::ack_features`] and [`Device::read_config`]; the data paths then use
/// [`Device::header_len`] and [`Device::mrg_rxbuf`].
#[derive(Clone, Debug)]
pub struct Device {
    mac: MacAddr,
    mtu: u16,
    offered: u64,
    acked: u64,
    max_pairs: u16,
}

impl Device {
    /// A device with MAC `mac` and MTU `mtu` (reported in the config space).
    pub fn new(mac: MacAddr, mtu: u16) -> Self {
        Device {
            mac,
            mtu,
            offered: OFFERED_FEATURES,
            acked: 0,
            max_pairs: 1,
        }
    }

    /// A device of `pairs` queue pairs (1 to [`MAX_QUEUE_PAIRS`]; 1, the default, offers
    /// neither MQ nor the control queue): with more, it also offers [`VIRTIO_NET_F_MQ`] and
    /// [`VIRTIO_NET_F_CTRL_VQ`] and reports `max_virtqueue_pairs` in its config space. Queue
    /// `2i` is pair `i`'s RX, `2i + 1` its TX, and the control queue is `2 * pairs`
    /// ([`ctrl_queue_index`]).
    #[must_use]
    pub const fn with_queue_pairs(mut self, pairs: u16) -> Self {
        let pairs = if pairs == 0 {
            1
        } else if pairs > MAX_QUEUE_PAIRS {
            MAX_QUEUE_PAIRS
        } else {
            pairs
        };
        self.max_pairs = pairs;
        if pairs > 1 {
            self.offered |= MQ_FEATURES;
        } else {
            self.offered &= !MQ_FEATURES;
        }
        self
    }

    /// The most queue pairs the driver may use.
    pub const fn max_queue_pairs(&self) -> u16 {
        self.max_pairs
    }

    /// Also offers [`OFFLOAD_FEATURES`] (checksum and TCPv4/TCPv6 segmentation offloads both ways)
    /// when `on`. Only for a host link that carries virtio-net headers
    /// ([`crate::HostLink::vnet_hdr_len`] = 12).
    pub const fn with_offloads(mut self, on: bool) -> Self {
        let mq = self.offered & MQ_FEATURES;
        self.offered = if on {
            OFFERED_FEATURES | OFFLOAD_FEATURES
        } else {
            OFFERED_FEATURES
        } | mq;
        self
    }

    /// The features the device offers: VERSION_1, MAC, MTU, STATUS, MRG_RXBUF, EVENT_IDX,
    /// INDIRECT_DESC and ANY_LAYOUT, plus [`OFFLOAD_FEATURES`] if enabled.
    pub const fn device_features(&self) -> u64 {
        self.offered
    }

    /// Records the driver's accepted features; bits the device did not offer are ignored, and
    /// so are TSO bits without their checksum bit (virtio 1.x 5.1.3.1). Returns the
    /// negotiated set.
    pub fn ack_features(&mut self, features: u64) -> u64 {
        self.acked = sanitize_features(features & self.offered);
        self.acked
    }

    /// The negotiated features.
    pub const fn acked_features(&self) -> u64 {
        self.acked
    }

    /// Whether feature bit `bit` was negotiated.
    pub const fn has(&self, bit: u32) -> bool {
        bit < 64 && self.acked & (1 << bit) != 0
    }

    /// Length of the virtio-net header for the negotiated features (12 or 10).
    pub const fn header_len(&self) -> usize {
        header_len_for(self.acked)
    }

    /// Whether MRG_RXBUF was negotiated.
    pub const fn mrg_rxbuf(&self) -> bool {
        self.has(VIRTIO_NET_F_MRG_RXBUF)
    }

    /// Whether EVENT_IDX was negotiated.
    pub const fn event_idx(&self) -> bool {
        self.has(VIRTIO_RING_F_EVENT_IDX)
    }

    /// The MAC address.
    pub const fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The MTU.
    pub const fn mtu(&self) -> u16 {
        self.mtu
    }

    /// The whole config space (little-endian): mac, status = LINK_UP, max_virtqueue_pairs
    /// ([`Device::with_queue_pairs`], 1 by default), mtu.
    pub fn config_space(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut c = [0u8; CONFIG_SPACE_SIZE];
        c[..6].copy_from_slice(&self.mac.0);
        c[6..8].copy_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&self.max_pairs.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    /// Reads `data.len()` bytes of config space at `offset`; bytes past the end read as zero.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.config_space();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| cfg.get(o).copied())
                .unwrap_or(0);
        }
    }
}

/// Header length for a feature set: 12 with VERSION_1 or MRG_RXBUF, else 10.
pub const fn header_len_for(features: u64) -> usize {
    if features & (1 << VIRTIO_F_VERSION_1) != 0 || features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0 {
        VIRTIO_NET_HDR_LEN
    } else {
        VIRTIO_NET_HDR_LEGACY_LEN
    }
}

/// Whether feature bit `bit` is set in `features`.
pub const fn has_bit(features: u64, bit: u32) -> bool {
    bit < 64 && features & (1 << bit) != 0
}

/// The index of the control queue of a device of `pairs` queue pairs (after every pair's RX
/// and TX queue).
pub const fn ctrl_queue_index(pairs: u16) -> u16 {
    pairs.saturating_mul(2)
}

/// The most queue pairs a device offers (virtio allows 0x8000; a host link queue each).
pub const MAX_QUEUE_PAIRS: u16 = 16;

/// The multiqueue bits: MQ and the control queue it needs.
pub const MQ_FEATURES: u64 = 1 << VIRTIO_NET_F_MQ | 1 << VIRTIO_NET_F_CTRL_VQ;

/// Drops feature bits whose prerequisites are missing: HOST_TSO4 and HOST_TSO6 need CSUM,
/// GUEST_TSO4 and GUEST_TSO6 need GUEST_CSUM, MQ needs CTRL_VQ (virtio 1.x 5.1.3.1).
pub const fn sanitize_features(mut f: u64) -> u64 {
    if f & (1 << VIRTIO_NET_F_CTRL_VQ) == 0 {
        f &= !(1 << VIRTIO_NET_F_MQ);
    }
    if f & (1 << VIRTIO_NET_F_CSUM) == 0 {
        f &= !(1 << VIRTIO_NET_F_HOST_TSO4 | 1 << VIRTIO_NET_F_HOST_TSO6);
    }
    if f & (1 << VIRTIO_NET_F_GUEST_CSUM) == 0 {
        f &= !(1 << VIRTIO_NET_F_GUEST_TSO4 | 1 << VIRTIO_NET_F_GUEST_TSO6);
    }
    f
}

/// The offload bits offered with [`crate::BridgeConfig::offloads`]: CSUM, GUEST_CSUM,
/// HOST_TSO4, GUEST_TSO4, HOST_TSO6, GUEST_TSO6.
pub const OFFLOAD_FEATURES: u64 = 1 << VIRTIO_NET_F_CSUM
    | 1 << VIRTIO_NET_F_GUEST_CSUM
    | 1 << VIRTIO_NET_F_HOST_TSO4
    | 1 << VIRTIO_NET_F_GUEST_TSO4
    | 1 << VIRTIO_NET_F_HOST_TSO6
    | 1 << VIRTIO_NET_F_GUEST_TSO6;

/// Every feature bit the device offers without offloads.
pub const OFFERED_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_NET_F_MAC
    | 1 << VIRTIO_NET_F_MTU
    | 1 << VIRTIO_NET_F_STATUS
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_F_ANY_LAYOUT;

/// The names of every virtio-net, ring and vhost-user feature bit set in `features`, joined
/// with `,` (`"CSUM,GUEST_CSUM,MRG_RXBUF,VERSION_1"`); bits without a name here as `bit<N>`;
/// `"none"` for 0. For logs and reports.
#[must_use]
pub fn feature_names(features: u64) -> String {
    const NAMES: [(u32, &str); 24] = [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (2, "CTRL_GUEST_OFFLOADS"),
        (3, "MTU"),
        (5, "MAC"),
        (7, "GUEST_TSO4"),
        (8, "GUEST_TSO6"),
        (9, "GUEST_ECN"),
        (10, "GUEST_UFO"),
        (11, "HOST_TSO4"),
        (12, "HOST_TSO6"),
        (13, "HOST_ECN"),
        (14, "HOST_UFO"),
        (15, "MRG_RXBUF"),
        (16, "STATUS"),
        (17, "CTRL_VQ"),
        (22, "MQ"),
        (26, "LOG_ALL"),
        (27, "ANY_LAYOUT"),
        (28, "INDIRECT_DESC"),
        (29, "EVENT_IDX"),
        (30, "PROTOCOL_FEATURES"),
        (32, "VERSION_1"),
        (33, "ACCESS_PLATFORM"),
    ];
    if features == 0 {
        return "none".to_owned();
    }
    (0..64)
        .filter(|bit| features & (1u64 << bit) != 0)
        .map(|bit| {
            NAMES
                .iter()
                .find(|(b, _)| *b == bit)
                .map_or_else(|| format!("bit{bit}"), |(_, n)| (*n).to_owned())
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_pairs_offer_mq_with_the_control_queue_and_report_the_maximum() {
        let one = Device::new(MacAddr([0x52, 0x54, 0, 1, 2, 3]), 1500);
        assert_eq!(one.device_features() & MQ_FEATURES, 0);
        assert_eq!(one.config_space()[8..10], 1u16.to_le_bytes());
        let mut four = one.clone().with_queue_pairs(4).with_offloads(true);
        assert_eq!(four.device_features() & MQ_FEATURES, MQ_FEATURES);
        assert_eq!(four.device_features() & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(four.config_space()[8..10], 4u16.to_le_bytes());
        assert_eq!(four.max_queue_pairs(), 4);
        // MQ without the control queue is not negotiated.
        assert_eq!(four.ack_features(1 << VIRTIO_NET_F_MQ) & MQ_FEATURES, 0);
        assert_eq!(four.ack_features(MQ_FEATURES), MQ_FEATURES);
        assert_eq!(ctrl_queue_index(four.max_queue_pairs()), 8);
        let big = one.clone().with_queue_pairs(u16::MAX);
        assert_eq!(big.max_queue_pairs(), MAX_QUEUE_PAIRS);
        assert_eq!(one.with_queue_pairs(0).device_features() & MQ_FEATURES, 0);
    }

    #[test]
    fn features_and_config_space() {
        let mut d = Device::new(MacAddr([0x52, 0x54, 0, 1, 2, 3]), 1500);
        let f = d.device_features();
        for bit in [32, 5, 3, 16, 15, 29] {
            assert_ne!(f & (1 << bit), 0, "bit {bit} offered");
        }
        assert_eq!(f & 1, 0, "CSUM not offered yet");
        assert_eq!(d.header_len(), 10);
        let acked = d.ack_features(f | 1 | (1 << 40));
        assert_eq!(acked, f, "unoffered bits are ignored");
        assert!(d.mrg_rxbuf() && d.event_idx());
        assert_eq!(d.header_len(), 12);
        let c = d.config_space();
        assert_eq!(c, [0x52, 0x54, 0, 1, 2, 3, 1, 0, 1, 0, 0xdc, 0x05]);
        let mut part = [0xaau8; 4];
        d.read_config(10, &mut part);
        assert_eq!(part, [0xdc, 0x05, 0, 0]);
        d.read_config(u64::MAX, &mut part);
        assert_eq!(part, [0; 4]);
    }

    #[test]
    fn header_roundtrip() {
        let h = VirtioNetHdr {
            flags: 1,
            gso_type: 3,
            hdr_len: 54,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
            num_buffers: 2,
        };
        let b = h.to_bytes();
        assert_eq!(VirtioNetHdr::parse(&b), Some(h));
        assert_eq!(VirtioNetHdr::parse(&b[..9]), None);
        assert_eq!(
            VirtioNetHdr::parse(&b[..10]).map(|h| h.num_buffers),
            Some(0)
        );
    }
}
