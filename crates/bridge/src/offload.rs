//! Checksum and TCP segmentation offloads ([`crate::BridgeConfig::offloads`]): what the
//! driver negotiated, and the per-frame checks that keep a guest's virtio-net header honest.
//!
//! With offloads, the guest may send TCPv4 and TCPv6 super-frames of up to 64 KiB
//! (HOST_TSO4, HOST_TSO6) and TCP/UDP packets whose checksum field holds only the
//! pseudo-header sum (CSUM, `NEEDS_CSUM`); the host link (a Linux TUN with `IFF_VNET_HDR`)
//! takes the same header and lets the host kernel segment and checksum. The other way, the
//! host kernel hands over GSO super-packets and partial checksums only if the guest accepts
//! them (GUEST_TSO4, GUEST_TSO6, GUEST_CSUM: the bridge sets the link's offloads from those
//! bits; a super-packet of a type the guest did not take is a counted drop all the same). A
//! header that asks for something not negotiated, or points outside the frame, is a counted
//! drop ([`DropCause::Offload`]). A partial checksum that cannot travel on (a reply looped back to
//! a guest that did not negotiate GUEST_CSUM, a protocol the NAT does not adjust) is
//! completed in software.
//!
//! # A guest's segmentation request
//!
//! The host kernel cuts a guest super-frame into `gso_size` segments, so the header decides
//! how many packets one frame becomes on the host. [`check_tx`] accepts a TCPv4 or TCPv6
//! super-frame only when the host kernel's `virtio_net_hdr_to_skb` and `tcp_gso_segment` would
//! (NEEDS_CSUM at the TCP checksum field, `gso_size` > 0, a TCP header of 20..=60 bytes
//! inside the packet), and is stricter where that protects the host; each refusal is a
//! [`DropCause::GsoInvalid`]:
//!
//! - The segmentation type matches the packet: `VIRTIO_NET_HDR_GSO_TCPV4` on IPv4,
//!   `VIRTIO_NET_HDR_GSO_TCPV6` on IPv6 (the kernel refuses the mismatch when it segments).
//!   A TCPv6 super-frame has TCP right after the fixed IPv6 header: with extension headers in
//!   between its checksum request does not point at the TCP field this check knows, and it
//!   is refused as [`DropCause::Offload`] (a Linux guest sends its TCP without them).
//! - `gso_size` at least [`MIN_GSO_SIZE`] (88, the kernel's `TCP_MIN_MSS`): at most
//!   ⌈65 495 / 88⌉ = 745 segments per frame (a `gso_size` of 1 made ~65 000). The kernel
//!   itself only refuses 0; a guest whose TCP peer advertises an MSS under 88 plus its
//!   option bytes (only an odd or hostile peer does: RFC 9293 requires every host to take
//!   536) has its super-frames to that peer dropped.
//! - `gso_size` plus the frame's IP and TCP header lengths at most the MTU: every segment
//!   the host makes fits the link the guest was told about.
//! - A frame whose TCP payload fits in one segment is not a super-frame (the kernel says the
//!   same: "too small packets are not really GSO ones"): it is passed on as a plain partial
//!   checksum, under the MTU limit of every other frame.
//! - `hdr_len` is only a hint unless VIRTIO_NET_F_GUEST_HDRLEN was negotiated (virtio 1.2
//!   5.1.6.2; it is not offered), and Linux guests send the length of their linear buffer
//!   there, often past the TCP header. It is refused beyond the frame (as the kernel's TUN
//!   refuses it beyond the packet) and otherwise replaced by the exact header length
//!   (Ethernet + IPv4 or IPv6 + TCP), which the host kernel and a guest the frame is looped
//!   back to then get.
//!
//! The host link takes whatever type of super-frame it is given: a TUN with `IFF_VNET_HDR`
//! segments TCPv4 and TCPv6 alike (its `TUNSETOFFLOAD` flags govern only what it hands the
//! other way), so the bridge never segments in software.

use nat::L4Checksum;

use crate::Error;
use crate::device::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr, sanitize_features,
};
use crate::host::LinkOffloads;
use crate::stats::DropCause;
use crate::wire::ETH_HLEN;
use ::wire::checksum as inet;
use ::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, ethertype, ip_proto, ipv6};

/// The largest IP packet taken (a GSO super-packet at most): an IPv4 packet's largest total
/// length. An IPv6 super-packet is held to the same size (a Linux stack builds none larger:
/// its GSO limit counts the IPv6 header too).
pub const MAX_IP_PACKET: usize = 65535;

/// The smallest `gso_size` accepted in a guest's TCP super-frame: Linux's `TCP_MIN_MSS`
/// ("minimal accepted MSS", also the smallest `TCP_MAXSEG` a socket may set). It bounds one
/// 64 KiB frame to 745 segments on the host (see the module documentation).
pub const MIN_GSO_SIZE: u16 = 88;

/// The offloads in force for one activated device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Offloads {
    /// CSUM: the guest may send partial checksums.
    pub tx_csum: bool,
    /// HOST_TSO4: the guest may send TCPv4 super-frames.
    pub tx_tso4: bool,
    /// HOST_TSO6: the guest may send TCPv6 super-frames.
    pub tx_tso6: bool,
    /// GUEST_CSUM: the guest takes partial checksums and DATA_VALID.
    pub rx_csum: bool,
    /// GUEST_TSO4: the guest takes TCPv4 super-frames.
    pub rx_tso4: bool,
    /// GUEST_TSO6: the guest takes TCPv6 super-frames.
    pub rx_tso6: bool,
    /// The host link carries a 12-byte virtio-net header in front of every packet.
    pub host_hdr: bool,
}

impl Offloads {
    /// The offloads for the driver's `acked` features and a host link whose packets carry a
    /// virtio-net header of `host_vnet_hdr_len` bytes (0 or 12).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the link's header length is neither 0 nor 12, or offloads were
    /// negotiated over a link without a header (it could not pass them on).
    pub fn negotiate(acked: u64, host_vnet_hdr_len: usize) -> Result<Offloads, Error> {
        let f = sanitize_features(acked);
        let has = |bit: u32| f & (1 << bit) != 0;
        if host_vnet_hdr_len != 0 && host_vnet_hdr_len != VIRTIO_NET_HDR_LEN {
            return Err(Error::Config(format!(
                "the host link's virtio-net header is {host_vnet_hdr_len} bytes; only {VIRTIO_NET_HDR_LEN} is supported"
            )));
        }
        let o = Offloads {
            tx_csum: has(VIRTIO_NET_F_CSUM),
            tx_tso4: has(VIRTIO_NET_F_HOST_TSO4),
            tx_tso6: has(VIRTIO_NET_F_HOST_TSO6),
            rx_csum: has(VIRTIO_NET_F_GUEST_CSUM),
            rx_tso4: has(VIRTIO_NET_F_GUEST_TSO4),
            rx_tso6: has(VIRTIO_NET_F_GUEST_TSO6),
            host_hdr: host_vnet_hdr_len == VIRTIO_NET_HDR_LEN,
        };
        if o.any() && !o.host_hdr {
            return Err(Error::Config(
                "checksum/TSO offloads were negotiated but the host link carries no virtio-net \
                 header (open the TUN with vnet_hdr)"
                    .to_owned(),
            ));
        }
        Ok(o)
    }

    /// Whether any offload was negotiated.
    pub fn any(&self) -> bool {
        self.tx_csum || self.tx_tso() || self.rx_csum || self.rx_tso()
    }

    /// Whether the guest may send super-frames of either family (HOST_TSO4 or HOST_TSO6).
    pub fn tx_tso(&self) -> bool {
        self.tx_tso4 || self.tx_tso6
    }

    /// Whether the guest takes super-frames of either family (GUEST_TSO4 or GUEST_TSO6).
    pub fn rx_tso(&self) -> bool {
        self.rx_tso4 || self.rx_tso6
    }

    /// What the host link may hand the guest: what the guest takes.
    pub fn towards_guest(&self) -> LinkOffloads {
        LinkOffloads {
            csum: self.rx_csum,
            tso4: self.rx_tso4,
            tso6: self.rx_tso6,
        }
    }

    /// Whether the guest may send super-frames of `gso_type` (HOST_TSO4, HOST_TSO6).
    fn tx_takes(&self, gso_type: u8) -> bool {
        match gso_type {
            VIRTIO_NET_HDR_GSO_TCPV4 => self.tx_tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.tx_tso6,
            _ => false,
        }
    }

    /// Whether the guest takes super-frames of `gso_type` (GUEST_TSO4, GUEST_TSO6).
    pub(crate) fn rx_takes(&self, gso_type: u8) -> bool {
        match gso_type {
            VIRTIO_NET_HDR_GSO_TCPV4 => self.rx_tso4,
            VIRTIO_NET_HDR_GSO_TCPV6 => self.rx_tso6,
            _ => false,
        }
    }

    /// The largest Ethernet frame the guest may send: MTU + 14, or 64 KiB + 14 with HOST_TSO4
    /// or HOST_TSO6.
    pub fn max_tx_frame(&self, mtu: u16) -> usize {
        if self.tx_tso() {
            ETH_HLEN + MAX_IP_PACKET
        } else {
            ETH_HLEN + usize::from(mtu)
        }
    }

    /// The header length of the host link's packets (0 or 12).
    pub fn host_hdr_len(&self) -> usize {
        if self.host_hdr { VIRTIO_NET_HDR_LEN } else { 0 }
    }
}

/// What a checked frame carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum FrameOffload {
    /// Complete checksums; no header to pass on.
    #[default]
    Plain,
    /// A TCP/UDP packet with a partial checksum in the standard place.
    Partial,
    /// A TCPv4 or TCPv6 super-frame (partial checksum too).
    Gso,
}

impl FrameOffload {
    /// How the NAT must read the transport checksum.
    pub(crate) fn l4(self) -> L4Checksum {
        match self {
            FrameOffload::Plain => L4Checksum::Complete,
            FrameOffload::Partial | FrameOffload::Gso => L4Checksum::Partial,
        }
    }
}

/// Checks the header of a guest frame (`frame` is the Ethernet frame; `mtu` the guest's MTU).
/// Partial checksums in an unusual place are completed here; anything not negotiated or out
/// of bounds is refused. For a super-frame `hdr` is fixed up: `hdr_len` becomes the exact
/// header length, and a frame that fits in one segment loses its segmentation request (see
/// the module documentation).
pub(crate) fn check_tx(
    o: &Offloads,
    hdr: &mut VirtioNetHdr,
    frame: &mut [u8],
    mtu: u16,
) -> Result<FrameOffload, DropCause> {
    if !o.tx_csum {
        // Nothing negotiated: the header carries no requests (virtio 1.x 5.1.6.2).
        return Ok(FrameOffload::Plain);
    }
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
        let tcp = std_layout(frame, hdr.csum_start, hdr.csum_offset) == Some(ip_proto::TCP);
        if !(o.tx_takes(hdr.gso_type) && needs_csum && tcp) {
            return Err(DropCause::Offload);
        }
        return check_gso(hdr, frame, mtu);
    }
    if !needs_csum {
        return Ok(FrameOffload::Plain);
    }
    if std_layout(frame, hdr.csum_start, hdr.csum_offset).is_some() {
        return Ok(FrameOffload::Partial);
    }
    complete(frame, ETH_HLEN, hdr.csum_start, hdr.csum_offset)?;
    Ok(FrameOffload::Plain)
}

/// The segmentation checks of [`check_tx`] for a TCP super-frame whose checksum request is
/// already known to point at the TCP checksum field of an IPv4 packet that is no fragment or
/// of an IPv6 packet with TCP right after its fixed header.
fn check_gso(hdr: &mut VirtioNetHdr, frame: &[u8], mtu: u16) -> Result<FrameOffload, DropCause> {
    let packet = frame.get(ETH_HLEN..).ok_or(DropCause::Offload)?;
    // The header's family and the packet's must agree (the kernel would find no TCP header
    // where the type says one is, or segment with the other family's rules).
    let (ip_hlen, l4) = match (hdr.gso_type, packet.first().map(|b| b >> 4)) {
        (VIRTIO_NET_HDR_GSO_TCPV4, Some(4)) => {
            let ip = Ipv4Packet::new_checked(packet).map_err(|_| DropCause::Offload)?;
            let (hlen, end) = (ip.header_len(), usize::from(ip.total_len()));
            (hlen, packet.get(hlen..end).ok_or(DropCause::GsoInvalid)?)
        }
        (VIRTIO_NET_HDR_GSO_TCPV6, Some(6)) => {
            let ip = Ipv6Packet::new_checked(packet).map_err(|_| DropCause::Offload)?;
            let end = ipv6::HEADER_LEN + usize::from(ip.payload_len());
            let l4 = packet
                .get(ipv6::HEADER_LEN..end)
                .ok_or(DropCause::GsoInvalid)?;
            (ipv6::HEADER_LEN, l4)
        }
        _ => return Err(DropCause::GsoInvalid),
    };
    // The payload is the packet by its length field: a TCP header that does not fit there,
    // or is shorter than 20 bytes, is refused (as `tcp_gso_segment` refuses it).
    let tcp_hlen = TcpPacket::new_checked(l4)
        .map_err(|_| DropCause::GsoInvalid)?
        .header_len();
    let gso_size = usize::from(hdr.gso_size);
    if gso_size == 0 || usize::from(hdr.hdr_len) > frame.len() {
        return Err(DropCause::GsoInvalid);
    }
    if l4.len().saturating_sub(tcp_hlen) <= gso_size {
        // One segment: not a super-frame. Sent on as a partial checksum (the MTU applies).
        hdr.gso_type = VIRTIO_NET_HDR_GSO_NONE;
        hdr.gso_size = 0;
        hdr.hdr_len = 0;
        return Ok(FrameOffload::Partial);
    }
    if hdr.gso_size < MIN_GSO_SIZE || gso_size + ip_hlen + tcp_hlen > usize::from(mtu) {
        return Err(DropCause::GsoInvalid);
    }
    // At most 14 + 60 + 60: fits.
    hdr.hdr_len = (ETH_HLEN + ip_hlen + tcp_hlen) as u16;
    Ok(FrameOffload::Gso)
}

/// Checks the header of a packet from the host link (`packet` is the IP packet, the header's
/// offsets are relative to it) and returns the header to give the guest (offsets relative to
/// the Ethernet frame, flags the guest negotiated only).
pub(crate) fn check_rx(
    o: &Offloads,
    hdr: &VirtioNetHdr,
    packet: &mut [u8],
) -> Result<(FrameOffload, VirtioNetHdr), DropCause> {
    let mut out = VirtioNetHdr::default();
    let needs_csum = hdr.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    let layout = || std_layout_l3(packet, hdr.csum_start, hdr.csum_offset);
    let kind = if hdr.gso_type != VIRTIO_NET_HDR_GSO_NONE {
        let version = match hdr.gso_type {
            VIRTIO_NET_HDR_GSO_TCPV4 => 4,
            _ => 6,
        };
        if !(o.rx_takes(hdr.gso_type)
            && needs_csum
            && hdr.gso_size > 0
            && packet.first().is_some_and(|b| b >> 4 == version)
            && layout() == Some(ip_proto::TCP))
        {
            return Err(DropCause::Offload);
        }
        out.gso_type = hdr.gso_type;
        out.gso_size = hdr.gso_size;
        out.hdr_len = hdr.hdr_len.saturating_add(ETH_HLEN as u16);
        FrameOffload::Gso
    } else if needs_csum {
        if o.rx_csum && layout().is_some() {
            FrameOffload::Partial
        } else {
            complete(packet, 0, hdr.csum_start, hdr.csum_offset)?;
            FrameOffload::Plain
        }
    } else {
        FrameOffload::Plain
    };
    if kind != FrameOffload::Plain {
        out.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        out.csum_start = hdr.csum_start.saturating_add(ETH_HLEN as u16);
        out.csum_offset = hdr.csum_offset;
    } else if o.rx_csum && hdr.flags & VIRTIO_NET_HDR_F_DATA_VALID != 0 {
        out.flags = VIRTIO_NET_HDR_F_DATA_VALID;
    }
    Ok((kind, out))
}

/// The header a frame of `kind` with guest header `hdr` takes to the host link (offsets
/// relative to the IP packet).
pub(crate) fn host_header(kind: FrameOffload, hdr: &VirtioNetHdr) -> [u8; VIRTIO_NET_HDR_LEN] {
    let h = match kind {
        FrameOffload::Plain => VirtioNetHdr::default(),
        FrameOffload::Partial | FrameOffload::Gso => VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: if kind == FrameOffload::Gso {
                hdr.gso_type
            } else {
                VIRTIO_NET_HDR_GSO_NONE
            },
            hdr_len: if kind == FrameOffload::Gso {
                hdr.hdr_len.saturating_sub(ETH_HLEN as u16)
            } else {
                0
            },
            gso_size: if kind == FrameOffload::Gso {
                hdr.gso_size
            } else {
                0
            },
            csum_start: hdr.csum_start.saturating_sub(ETH_HLEN as u16),
            csum_offset: hdr.csum_offset,
            num_buffers: 0,
        },
    };
    h.to_bytes()
}

/// The header a guest frame of `kind` gets when it is looped back to the guest (hairpin), or
/// `Err` when the guest can't take it. A partial checksum the guest can't take is completed.
pub(crate) fn hairpin_header(
    o: &Offloads,
    kind: FrameOffload,
    hdr: &VirtioNetHdr,
    frame: &mut [u8],
) -> Result<VirtioNetHdr, DropCause> {
    match kind {
        FrameOffload::Plain => Ok(VirtioNetHdr::default()),
        FrameOffload::Gso if !o.rx_takes(hdr.gso_type) => Err(DropCause::Offload),
        FrameOffload::Partial if !o.rx_csum => {
            complete(frame, ETH_HLEN, hdr.csum_start, hdr.csum_offset)?;
            Ok(VirtioNetHdr::default())
        }
        FrameOffload::Partial | FrameOffload::Gso => Ok(VirtioNetHdr {
            num_buffers: 0,
            hdr_len: if kind == FrameOffload::Gso {
                hdr.hdr_len
            } else {
                0
            },
            gso_size: if kind == FrameOffload::Gso {
                hdr.gso_size
            } else {
                0
            },
            gso_type: if kind == FrameOffload::Gso {
                hdr.gso_type
            } else {
                VIRTIO_NET_HDR_GSO_NONE
            },
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: hdr.csum_start,
            csum_offset: hdr.csum_offset,
        }),
    }
}

/// Completes a partial checksum in software: the one's-complement sum of
/// `data[csum_start..end]` (the field holds the pseudo-header sum) stored, complemented, at
/// `csum_start + csum_offset`. `end` is the end (by its length field) of the IPv4 or IPv6
/// packet that starts at `l3`, or the end of `data` when no valid IP header starts there. A result of 0
/// is stored as 0xffff (as Linux does).
pub(crate) fn complete(
    data: &mut [u8],
    l3: usize,
    csum_start: u16,
    csum_offset: u16,
) -> Result<(), DropCause> {
    let start = usize::from(csum_start);
    let field = start + usize::from(csum_offset);
    let end = ip_end(data, l3).unwrap_or(data.len());
    if start < l3 || field + CSUM_FIELD_LEN > end {
        return Err(DropCause::Offload);
    }
    let c = match inet::checksum(&data[start..end]) {
        0 => 0xffff,
        c => c,
    };
    data[field..field + CSUM_FIELD_LEN].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The length of a checksum field (TCP's and UDP's alike: two bytes).
const CSUM_FIELD_LEN: usize = ::wire::tcp::field::CHECKSUM.end - ::wire::tcp::field::CHECKSUM.start;
const _: () = assert!(
    ::wire::udp::field::CHECKSUM.end - ::wire::udp::field::CHECKSUM.start == CSUM_FIELD_LEN
);
/// `csum_offset` of the TCP checksum field (`wire::tcp::field::CHECKSUM`: 16, fits a `u16`).
const TCP_CSUM_OFFSET: u16 = ::wire::tcp::field::CHECKSUM.start as u16;
/// `csum_offset` of the UDP checksum field (`wire::udp::field::CHECKSUM`: 6, fits a `u16`).
const UDP_CSUM_OFFSET: u16 = ::wire::udp::field::CHECKSUM.start as u16;

/// If `frame` is Ethernet + IPv4 TCP/UDP (not a fragment) or Ethernet + IPv6 TCP/UDP (no
/// extension header) whose checksum request points at the transport checksum field, the
/// protocol. The offsets are relative to the frame.
fn std_layout(frame: &[u8], csum_start: u16, csum_offset: u16) -> Option<u8> {
    let eth = EthernetFrame::new_checked(frame).ok()?;
    let v6 = frame.get(ETH_HLEN).is_some_and(|b| b >> 4 == 6);
    match eth.ethertype() {
        ethertype::IPV4 if !v6 => layout_at(frame, ETH_HLEN, csum_start, csum_offset),
        ethertype::IPV6 if v6 => layout_at(frame, ETH_HLEN, csum_start, csum_offset),
        _ => None,
    }
}

/// As [`std_layout`] for a bare IP packet.
pub(crate) fn std_layout_l3(packet: &[u8], csum_start: u16, csum_offset: u16) -> Option<u8> {
    layout_at(packet, 0, csum_start, csum_offset)
}

/// As [`std_layout`] for an IP packet at `l3` in `data` (offsets relative to `data`). IPv6
/// only with TCP or UDP right after the fixed header (no extension headers: the NAT and the
/// host kernel both take that layout as it is).
fn layout_at(data: &[u8], l3: usize, csum_start: u16, csum_offset: u16) -> Option<u8> {
    if data.get(l3).is_some_and(|b| b >> 4 == 6) {
        return layout6_at(data, l3, csum_start, csum_offset);
    }
    let ip = Ipv4Packet::new_checked(data.get(l3..)?).ok()?;
    let proto = ip.protocol();
    let want = match proto {
        ip_proto::TCP => TCP_CSUM_OFFSET,
        ip_proto::UDP => UDP_CSUM_OFFSET,
        _ => return None,
    };
    let hlen = ip.header_len();
    let ok = !ip.is_fragment()
        && usize::from(csum_start) == l3 + hlen
        && csum_offset == want
        && hlen + usize::from(want) + CSUM_FIELD_LEN <= usize::from(ip.total_len());
    ok.then_some(proto)
}

/// The IPv6 part of [`layout_at`].
fn layout6_at(data: &[u8], l3: usize, csum_start: u16, csum_offset: u16) -> Option<u8> {
    let ip = Ipv6Packet::new_checked(data.get(l3..)?).ok()?;
    let proto = ip.next_header();
    let want = match proto {
        ip_proto::TCP => TCP_CSUM_OFFSET,
        ip_proto::UDP => UDP_CSUM_OFFSET,
        _ => return None,
    };
    let ok = usize::from(csum_start) == l3 + ipv6::HEADER_LEN
        && csum_offset == want
        && usize::from(want) + CSUM_FIELD_LEN <= usize::from(ip.payload_len());
    ok.then_some(proto)
}

/// End of the IP packet starting at `l3` (by its IPv4 total length or IPv6 payload length),
/// if a valid header starts there and the packet fits in `data`.
fn ip_end(data: &[u8], l3: usize) -> Option<usize> {
    if data.get(l3).is_some_and(|b| b >> 4 == 6) {
        let ip = Ipv6Packet::new_checked(data.get(l3..)?).ok()?;
        return Some(l3 + ipv6::HEADER_LEN + usize::from(ip.payload_len()));
    }
    let ip = Ipv4Packet::new_checked(data.get(l3..)?).ok()?;
    Some(l3 + usize::from(ip.total_len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::wire::tcp;

    const MTU: u16 = 1500;

    fn tso() -> Offloads {
        Offloads {
            tx_csum: true,
            tx_tso4: true,
            host_hdr: true,
            ..Offloads::default()
        }
    }

    /// Ethernet + IPv4 (20 bytes) + TCP (`tcp_hlen` bytes, the data offset says so) +
    /// `payload` bytes.
    fn tcp_frame(tcp_hlen: usize, payload: usize) -> Vec<u8> {
        let total = 20 + tcp_hlen + payload;
        let mut f = vec![0u8; ETH_HLEN + total];
        let mut e = EthernetFrame::new_unchecked(&mut f[..]);
        e.set_ethertype(ethertype::IPV4);
        let mut ip = Ipv4Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(total as u16);
        ip.set_ttl(64);
        ip.set_protocol(ip_proto::TCP);
        // The data offset in 32-bit words, whatever `set_header_len` would accept.
        f[ETH_HLEN + 20 + 12] = ((tcp_hlen / 4) as u8) << 4;
        f
    }

    fn gso_hdr(gso_size: u16, hdr_len: u16) -> VirtioNetHdr {
        VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len,
            gso_size,
            csum_start: (ETH_HLEN + 20) as u16,
            csum_offset: TCP_CSUM_OFFSET,
            num_buffers: 0,
        }
    }

    /// `check_tx` on a frame with `payload` bytes after a `tcp_hlen`-byte TCP header.
    fn check(
        tcp_hlen: usize,
        payload: usize,
        hdr: VirtioNetHdr,
    ) -> Result<VirtioNetHdr, DropCause> {
        let mut h = hdr;
        let mut f = tcp_frame(tcp_hlen, payload);
        let k = check_tx(&tso(), &mut h, &mut f, MTU)?;
        assert_eq!(
            k == FrameOffload::Gso,
            h.gso_type == VIRTIO_NET_HDR_GSO_TCPV4
        );
        Ok(h)
    }

    /// Ethernet + IPv6 + TCP (20 bytes) + `payload` bytes of 0x5a, the checksum field
    /// holding the pseudo-header sum only (NEEDS_CSUM), and that header.
    fn partial_tcp6_frame(payload: usize) -> (Vec<u8>, VirtioNetHdr) {
        let (src, dst) = ("fd64::2".parse().unwrap(), "2001:db8::2".parse().unwrap());
        let l4 = 20 + payload;
        let mut f = vec![0x5au8; ETH_HLEN + 40 + l4];
        EthernetFrame::new_unchecked(&mut f[..]).set_ethertype(ethertype::IPV6);
        let mut ip = Ipv6Packet::new_unchecked(&mut f[ETH_HLEN..]);
        ip.set_version(6);
        ip.set_traffic_class(0);
        ip.set_flow_label(0);
        ip.set_payload_len(l4 as u16);
        ip.set_next_header(ip_proto::TCP);
        ip.set_hop_limit(64);
        ip.set_src_addr(src);
        ip.set_dst_addr(dst);
        let t = ETH_HLEN + 40;
        f[t + 12] = 5 << 4;
        let pseudo = inet::fold(inet::pseudo_header_v6(src, dst, ip_proto::TCP, l4 as u32));
        f[t + 16..t + 18].copy_from_slice(&pseudo.to_be_bytes());
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: t as u16,
            csum_offset: TCP_CSUM_OFFSET,
            ..VirtioNetHdr::default()
        };
        (f, hdr)
    }

    fn tcp6_checksum_ok(f: &[u8]) -> bool {
        let ip = Ipv6Packet::new_checked(&f[ETH_HLEN..]).unwrap();
        TcpPacket::new_checked(ip.payload())
            .unwrap()
            .verify_checksum_v6(ip.src_addr(), ip.dst_addr())
    }

    /// A partial checksum in an IPv6 TCP frame passes on as it is (to a vnet-hdr TUN, with
    /// its offsets), and is completed right when it cannot.
    #[test]
    fn ipv6_partial_checksums_pass_on_or_are_completed() {
        let o = Offloads {
            tx_csum: true,
            host_hdr: true,
            ..Offloads::default()
        };
        let (mut f, mut h) = partial_tcp6_frame(1000);
        let before = h;
        assert_eq!(check_tx(&o, &mut h, &mut f, MTU), Ok(FrameOffload::Partial));
        assert_eq!(h, before);
        let host = VirtioNetHdr::parse(&host_header(FrameOffload::Partial, &h)).unwrap();
        assert_eq!((host.csum_start, host.csum_offset), (40, TCP_CSUM_OFFSET));
        assert!(!tcp6_checksum_ok(&f));
        // Looped back to a guest without GUEST_CSUM: completed (Ethernet padding ignored).
        f.extend_from_slice(&[0xff; 7]);
        let plain = hairpin_header(&o, FrameOffload::Partial, &h, &mut f).unwrap();
        assert_eq!(plain, VirtioNetHdr::default());
        assert!(tcp6_checksum_ok(&f));
        // A TCPv4 segmentation request on an IPv6 frame is refused: the types do not match.
        let (mut f, mut h) = partial_tcp6_frame(3000);
        h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
        h.gso_size = 1400;
        assert_eq!(
            check_tx(&tso(), &mut h, &mut f, MTU),
            Err(DropCause::GsoInvalid)
        );
    }

    fn tso6() -> Offloads {
        Offloads {
            tx_tso6: true,
            ..tso()
        }
    }

    /// A TCPv6 super-frame of `payload` bytes after a `tcp_hlen`-byte TCP header, with a
    /// TCPV6 segmentation request of `gso_size` (hdr_len as a Linux guest gives it).
    fn tcp6_gso(tcp_hlen: usize, payload: usize, gso_size: u16) -> (Vec<u8>, VirtioNetHdr) {
        let (mut f, mut h) = partial_tcp6_frame(payload + tcp_hlen - 20);
        f[ETH_HLEN + 40 + 12] = ((tcp_hlen / 4) as u8) << 4;
        h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6;
        h.gso_size = gso_size;
        h.hdr_len = 128;
        (f, h)
    }

    fn check6(tcp_hlen: usize, payload: usize, gso_size: u16) -> Result<VirtioNetHdr, DropCause> {
        let (mut f, mut h) = tcp6_gso(tcp_hlen, payload, gso_size);
        let k = check_tx(&tso6(), &mut h, &mut f, MTU)?;
        assert_eq!(
            k == FrameOffload::Gso,
            h.gso_type == VIRTIO_NET_HDR_GSO_TCPV6
        );
        Ok(h)
    }

    /// The hardening checks of TCPv4 super-frames hold for TCPv6 ones, with IPv6's 40-byte
    /// header in the MTU sum.
    #[test]
    fn tcpv6_super_frames_are_checked_like_tcpv4_ones() {
        let h = check6(20, 30_000, MTU - 60).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len),
            (VIRTIO_NET_HDR_GSO_TCPV6, MTU - 60, 74),
            "hdr_len made exact: 14 + 40 + 20"
        );
        assert_eq!(check6(32, 30_000, MTU - 72).unwrap().hdr_len, 86);
        // Segments over the MTU.
        assert_eq!(check6(20, 30_000, MTU - 59), Err(DropCause::GsoInvalid));
        assert_eq!(check6(32, 30_000, MTU - 71), Err(DropCause::GsoInvalid));
        // gso_size 0, 1, under the floor; the floor itself.
        for g in [0, 1, MIN_GSO_SIZE - 1] {
            assert_eq!(check6(20, 3000, g), Err(DropCause::GsoInvalid), "{g}");
        }
        assert!(check6(20, 3000, MIN_GSO_SIZE).is_ok());
        assert_eq!(
            check6(20, MAX_IP_PACKET - 60, 1),
            Err(DropCause::GsoInvalid)
        );
        // One segment: not a super-frame.
        let h = check6(20, 1000, 1000).unwrap();
        assert_eq!((h.gso_type, h.gso_size, h.hdr_len), (0, 0, 0));
        // A TCP header shorter than 20 bytes, or past the payload length.
        assert_eq!(check6(16, 3000, 1400), Err(DropCause::GsoInvalid));
        let (mut f, mut h) = tcp6_gso(20, 4, MIN_GSO_SIZE);
        f[ETH_HLEN + 40 + 12] = 15 << 4;
        assert_eq!(
            check_tx(&tso6(), &mut h, &mut f, MTU),
            Err(DropCause::GsoInvalid)
        );
        // hdr_len past the frame.
        let (mut f, mut h) = tcp6_gso(20, 3000, 1400);
        h.hdr_len = f.len() as u16 + 1;
        assert_eq!(
            check_tx(&tso6(), &mut h, &mut f, MTU),
            Err(DropCause::GsoInvalid)
        );
        h.hdr_len = f.len() as u16;
        assert_eq!(
            check_tx(&tso6(), &mut h, &mut f, MTU),
            Ok(FrameOffload::Gso)
        );
    }

    #[test]
    fn a_tcpv6_request_on_ipv4_or_without_host_tso6_is_refused() {
        // TCPV6 on an IPv4 packet: a type mismatch.
        let mut f = tcp_frame(20, 3000);
        let mut h = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            ..gso_hdr(1448, 54)
        };
        assert_eq!(
            check_tx(&tso6(), &mut h, &mut f, MTU),
            Err(DropCause::GsoInvalid)
        );
        // HOST_TSO6 not negotiated.
        let (mut f, mut h) = tcp6_gso(20, 3000, 1400);
        assert_eq!(
            check_tx(&tso(), &mut h, &mut f, MTU),
            Err(DropCause::Offload)
        );
        // ECN bit, which is not negotiated.
        let (mut f, mut h) = tcp6_gso(20, 3000, 1400);
        h.gso_type |= 0x80;
        assert_eq!(
            check_tx(&tso6(), &mut h, &mut f, MTU),
            Err(DropCause::Offload)
        );
    }

    /// An extension header (hop-by-hop options, 8 bytes) between the IPv6 header and TCP:
    /// the checksum request cannot point at the field this check knows, so the frame is a
    /// counted drop.
    #[test]
    fn a_tcpv6_super_frame_with_an_extension_header_is_a_counted_drop() {
        let (f, mut h) = tcp6_gso(20, 3000, 1400);
        let mut g = f[..ETH_HLEN + 40].to_vec();
        g.extend_from_slice(&[ip_proto::TCP, 0, 1, 4, 0, 0, 0, 0]);
        g.extend_from_slice(&f[ETH_HLEN + 40..]);
        let mut ip = Ipv6Packet::new_unchecked(&mut g[ETH_HLEN..]);
        let len = ip.payload_len() + 8;
        ip.set_payload_len(len);
        ip.set_next_header(ip_proto::HOP_BY_HOP);
        for start in [h.csum_start, h.csum_start + 8] {
            h.csum_start = start;
            assert_eq!(
                check_tx(&tso6(), &mut h, &mut g, MTU),
                Err(DropCause::Offload)
            );
        }
    }

    /// From the host: a TCPV6 super-packet reaches only a guest that took GUEST_TSO6, with
    /// offsets moved by the Ethernet header; of the other type or family it is a drop.
    #[test]
    fn tcpv6_super_packets_from_the_host_follow_guest_tso6() {
        let rx6 = Offloads {
            rx_csum: true,
            rx_tso6: true,
            host_hdr: true,
            ..Offloads::default()
        };
        let (f, _) = tcp6_gso(20, 3000, 1400);
        let mut p = f[ETH_HLEN..].to_vec();
        let hdr = VirtioNetHdr {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type: VIRTIO_NET_HDR_GSO_TCPV6,
            hdr_len: 60,
            gso_size: 1400,
            csum_start: 40,
            csum_offset: TCP_CSUM_OFFSET,
            num_buffers: 0,
        };
        let (kind, out) = check_rx(&rx6, &hdr, &mut p).unwrap();
        assert_eq!(kind, FrameOffload::Gso);
        assert_eq!(
            (out.gso_type, out.gso_size, out.hdr_len, out.csum_start),
            (VIRTIO_NET_HDR_GSO_TCPV6, 1400, 74, 54)
        );
        let rx4 = Offloads {
            rx_tso4: true,
            rx_tso6: false,
            ..rx6
        };
        assert_eq!(check_rx(&rx4, &hdr, &mut p), Err(DropCause::Offload));
        let v4_type = VirtioNetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            ..hdr
        };
        assert_eq!(check_rx(&rx6, &v4_type, &mut p), Err(DropCause::Offload));
        assert_eq!(check_rx(&rx4, &v4_type, &mut p), Err(DropCause::Offload));
        // A hairpinned TCPv6 super-frame needs GUEST_TSO6 too.
        let mut f = f;
        assert_eq!(
            hairpin_header(&rx4, FrameOffload::Gso, &hdr, &mut f),
            Err(DropCause::Offload)
        );
        assert!(hairpin_header(&rx6, FrameOffload::Gso, &hdr, &mut f).is_ok());
    }

    #[test]
    fn a_gso_size_of_one_on_a_64k_frame_is_refused() {
        let payload = MAX_IP_PACKET - 40;
        assert_eq!(
            check(20, payload, gso_hdr(1, 54)),
            Err(DropCause::GsoInvalid)
        );
        assert!(check(20, payload, gso_hdr(1448, 54)).is_ok());
    }

    #[test]
    fn gso_size_zero_is_refused() {
        assert_eq!(check(20, 3000, gso_hdr(0, 54)), Err(DropCause::GsoInvalid));
    }

    #[test]
    fn gso_size_has_a_floor() {
        assert_eq!(
            check(20, 3000, gso_hdr(MIN_GSO_SIZE - 1, 54)),
            Err(DropCause::GsoInvalid)
        );
        let h = check(20, 3000, gso_hdr(MIN_GSO_SIZE, 54)).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size),
            (VIRTIO_NET_HDR_GSO_TCPV4, MIN_GSO_SIZE)
        );
    }

    #[test]
    fn every_segment_fits_the_mtu_with_the_frames_own_headers() {
        // 20-byte TCP header: MTU - 40.
        assert!(check(20, 30_000, gso_hdr(MTU - 40, 54)).is_ok());
        assert_eq!(
            check(20, 30_000, gso_hdr(MTU - 39, 54)),
            Err(DropCause::GsoInvalid)
        );
        // With 12 bytes of TCP options (timestamps): MTU - 52, as Linux computes its MSS.
        let h = check(32, 30_000, gso_hdr(MTU - 52, 66)).unwrap();
        assert_eq!(h.gso_size, MTU - 52);
        assert_eq!(
            check(32, 30_000, gso_hdr(MTU - 51, 66)),
            Err(DropCause::GsoInvalid)
        );
    }

    #[test]
    fn a_frame_of_one_segment_is_not_a_super_frame() {
        // Payload == gso_size: passed on as a partial checksum, the request dropped.
        let h = check(20, 1000, gso_hdr(1000, 54)).unwrap();
        assert_eq!(
            (h.gso_type, h.gso_size, h.hdr_len),
            (VIRTIO_NET_HDR_GSO_NONE, 0, 0)
        );
        let mut f = tcp_frame(20, 1000);
        let mut hdr = gso_hdr(1000, 54);
        assert_eq!(
            check_tx(&tso(), &mut hdr, &mut f, MTU),
            Ok(FrameOffload::Partial)
        );
        // One byte more is two segments.
        let h = check(20, 1001, gso_hdr(1000, 54)).unwrap();
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_TCPV4);
        // Even a tiny gso_size does nothing to a frame it does not cut.
        let h = check(20, 1, gso_hdr(1, 54)).unwrap();
        assert_eq!(h.gso_type, VIRTIO_NET_HDR_GSO_NONE);
    }

    #[test]
    fn hdr_len_is_refused_past_the_frame_and_otherwise_made_exact() {
        let frame_len = (ETH_HLEN + 20 + 20 + 3000) as u16;
        for given in [0, 20, 54, 100, frame_len] {
            let h = check(20, 3000, gso_hdr(1448, given)).unwrap();
            assert_eq!(h.hdr_len, 54, "hdr_len {given} made exact");
        }
        assert_eq!(
            check(20, 3000, gso_hdr(1448, frame_len + 1)),
            Err(DropCause::GsoInvalid)
        );
        let h = check(40, 3000, gso_hdr(1400, 0)).unwrap();
        assert_eq!(h.hdr_len, 74, "TCP options count");
    }

    #[test]
    fn a_tcp_header_too_short_or_past_the_packet_is_refused() {
        assert_eq!(
            check(16, 3000, gso_hdr(1448, 54)),
            Err(DropCause::GsoInvalid)
        );
        assert!(check(tcp::HEADER_LEN, 3000, gso_hdr(1448, 54)).is_ok());
        // A 60-byte header in a packet with 24 bytes after the IPv4 header.
        let mut f = tcp_frame(20, 4);
        f[ETH_HLEN + 20 + 12] = 15 << 4;
        let mut h = gso_hdr(MIN_GSO_SIZE, 0);
        assert_eq!(
            check_tx(&tso(), &mut h, &mut f, MTU),
            Err(DropCause::GsoInvalid)
        );
    }

    #[test]
    fn the_checksum_request_must_be_the_tcp_field() {
        for (start, offset) in [(33, 16), (35, 16), (34, 17), (34, 6), (4000, 16)] {
            let h = VirtioNetHdr {
                csum_start: start,
                csum_offset: offset,
                ..gso_hdr(1448, 54)
            };
            assert_eq!(
                check(20, 3000, h),
                Err(DropCause::Offload),
                "{start}+{offset}"
            );
        }
        let no_csum = VirtioNetHdr {
            flags: 0,
            ..gso_hdr(1448, 54)
        };
        assert_eq!(check(20, 3000, no_csum), Err(DropCause::Offload));
    }

    #[test]
    fn gso_without_host_tso4_or_of_another_kind_is_refused() {
        let csum_only = Offloads {
            tx_tso4: false,
            ..tso()
        };
        let mut f = tcp_frame(20, 3000);
        let mut h = gso_hdr(1448, 54);
        assert_eq!(
            check_tx(&csum_only, &mut h, &mut f, MTU),
            Err(DropCause::Offload)
        );
        for gso_type in [3, 4, 5, VIRTIO_NET_HDR_GSO_TCPV4 | 0x80] {
            let h = VirtioNetHdr {
                gso_type,
                ..gso_hdr(1448, 54)
            };
            assert_eq!(
                check(20, 3000, h),
                Err(DropCause::Offload),
                "type {gso_type}"
            );
        }
    }
}
