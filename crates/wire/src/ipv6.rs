//! IPv6 headers (RFC 8200): the fixed 40-byte header and a bounded walk over extension headers.

use core::net::Ipv6Addr;

use crate::{Error, clamp, ip_proto, read_u16, read_u32, write_u16, write_u32};

/// A view of an IPv6 packet: the fixed header and the payload up to the payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// Where the upper-layer header of an IPv6 packet starts, after the extension headers that
/// [`Ipv6Packet::upper_layer`] skips.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct UpperLayer {
    /// The protocol of the first header that is not Hop-by-Hop, Routing, Destination Options
    /// or Fragment ([`crate::ip_proto`]; `IPV6_NO_NEXT` for none).
    pub protocol: u8,
    /// Its offset from the start of the IPv6 header.
    pub offset: usize,
    /// The fragment offset in bytes and the More Fragments flag, if a Fragment header was
    /// crossed. With a non-zero offset the bytes at `offset` are not an upper-layer header.
    pub fragment: Option<(u16, bool)>,
}

/// IPv6 field offsets: byte ranges (or, for one-byte fields, single offsets) from the start of
/// the fixed header, or, for the `EXT_*` and `FRAGMENT_*` ones, of an extension header.
pub mod field {
    use crate::Field;

    /// Version (4 bits), traffic class (8 bits) and flow label (20 bits).
    pub const VERSION_CLASS_FLOW: Field = 0..4;
    /// Payload length (extension headers included) in bytes.
    pub const PAYLOAD_LENGTH: Field = 4..6;
    /// Next header ([`ip_proto`](crate::ip_proto)).
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
    /// Within an extension header: the next header.
    pub const EXT_NEXT_HEADER: usize = 0;
    /// Within a Hop-by-Hop, Routing or Destination Options header: its length in 8-byte units
    /// after the first eight bytes.
    pub const EXT_LENGTH: usize = 1;
    /// Within a Fragment header: the fragment offset (high 13 bits, 8-byte units) and the M flag
    /// (low bit).
    pub const FRAGMENT_OFFSET_MORE: Field = 2..4;
}

/// The length of the fixed IPv6 header.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// The most extension headers [`Ipv6Packet::upper_layer`] walks before giving up.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// The length of a Fragment header, and the unit of the other extension headers' length.
const EXT_UNIT: usize = 8;

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `payload` and `upper_layer` never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps `buffer` after [`Ipv6Packet::check_len`] and a version check.
    ///
    /// # Errors
    ///
    /// As [`Ipv6Packet::check_len`], and [`Error::BadVersion`] if the version is not 6.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        if p.version() != 6 {
            return Err(Error::BadVersion);
        }
        Ok(p)
    }

    /// Checks that the buffer holds the fixed header and the payload length. The buffer may be
    /// longer (link-layer padding). A jumbogram (payload length 0 with a Jumbo option) is seen
    /// as an empty payload.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it does not.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN || len < HEADER_LEN + usize::from(self.payload_len()) {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (6).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_CLASS_FLOW.start] >> 4
    }

    /// The traffic class.
    pub fn traffic_class(&self) -> u8 {
        (read_u32(self.buffer.as_ref(), field::VERSION_CLASS_FLOW) >> 20) as u8
    }

    /// The flow label (20 bits).
    pub fn flow_label(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::VERSION_CLASS_FLOW) & 0x000f_ffff
    }

    /// The payload length (extension headers included).
    pub fn payload_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PAYLOAD_LENGTH)
    }

    /// The next header ([`crate::ip_proto`]).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    /// The hop limit.
    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC_ADDR])
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST_ADDR])
    }

    /// The payload: after the fixed header, up to the payload length (clamped to the buffer).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let end = HEADER_LEN + usize::from(self.payload_len());
        clamp(self.buffer.as_ref().len(), HEADER_LEN, end)
    }

    /// Finds the upper-layer header by skipping Hop-by-Hop, Routing, Destination Options and
    /// Fragment headers, at most [`MAX_EXTENSION_HEADERS`] of them.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if an extension header runs past the payload;
    /// [`Error::Unsupported`] after more than [`MAX_EXTENSION_HEADERS`].
    pub fn upper_layer(&self) -> Result<UpperLayer, Error> {
        let payload = self.payload();
        let mut next = self.next_header();
        let mut at = 0usize;
        let mut fragment = None;
        for _ in 0..=MAX_EXTENSION_HEADERS {
            let len = match next {
                ip_proto::HOP_BY_HOP | ip_proto::IPV6_ROUTE | ip_proto::IPV6_OPTS => {
                    let units = payload
                        .get(at + field::EXT_LENGTH)
                        .ok_or(Error::Truncated)?;
                    (usize::from(*units) + 1) * EXT_UNIT
                }
                ip_proto::IPV6_FRAG => {
                    let h = payload.get(at..at + EXT_UNIT).ok_or(Error::Truncated)?;
                    let v = read_u16(h, field::FRAGMENT_OFFSET_MORE);
                    fragment = Some((v & !0x7, v & 1 == 1));
                    EXT_UNIT
                }
                protocol => {
                    return Ok(UpperLayer {
                        protocol,
                        offset: HEADER_LEN + at,
                        fragment,
                    });
                }
            };
            if at + len > payload.len() {
                return Err(Error::Truncated);
            }
            next = payload[at + field::EXT_NEXT_HEADER];
            at += len;
        }
        Err(Error::Unsupported)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// Sets the version field.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VERSION_CLASS_FLOW.start];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the traffic class.
    pub fn set_traffic_class(&mut self, class: u8) {
        let d = self.buffer.as_mut();
        let v = read_u32(d, field::VERSION_CLASS_FLOW);
        write_u32(
            d,
            field::VERSION_CLASS_FLOW,
            (v & 0xf00f_ffff) | (u32::from(class) << 20),
        );
    }

    /// Sets the flow label (the low 20 bits of `label`).
    pub fn set_flow_label(&mut self, label: u32) {
        let d = self.buffer.as_mut();
        let v = read_u32(d, field::VERSION_CLASS_FLOW);
        write_u32(
            d,
            field::VERSION_CLASS_FLOW,
            (v & 0xfff0_0000) | (label & 0x000f_ffff),
        );
    }

    /// Sets the payload length.
    pub fn set_payload_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::PAYLOAD_LENGTH, len);
    }

    /// Sets the next header.
    pub fn set_next_header(&mut self, next: u8) {
        self.buffer.as_mut()[field::NEXT_HEADER] = next;
    }

    /// Sets the hop limit.
    pub fn set_hop_limit(&mut self, limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = limit;
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv6Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&addr.octets());
    }

    /// The payload, writable: after the fixed header, up to the payload length (clamped to
    /// the buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(b);
    Ipv6Addr::from(o)
}

crate::borrowed_payload!(Ipv6Packet);

#[cfg(test)]
mod tests {
    use super::*;

    // fd00::2 -> 2001:db8::1, traffic class 0x12, flow 0x34567, hop limit 64, ICMPv6 echo
    // request ident 0x4242 seq 7 "ping".
    const ICMP: [u8; 52] = [
        0x61, 0x23, 0x45, 0x67, 0x00, 0x0c, 0x3a, 0x40, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x80, 0x00, 0x33, 0xe2, 0x42,
        0x42, 0x00, 0x07, 0x70, 0x69, 0x6e, 0x67,
    ];
    // fd00::2 -> 2001:db8::1, Hop-by-Hop (PadN) -> Fragment (offset 0, M clear) -> UDP.
    const EXT: [u8; 67] = [
        0x60, 0x00, 0x00, 0x00, 0x00, 0x1b, 0x00, 0xff, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x20, 0x01, 0x0d, 0xb8, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x2c, 0x00, 0x01, 0x04, 0x00,
        0x00, 0x00, 0x00, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x99, 0x13, 0x88, 0x00, 0x35,
        0x00, 0x0b, 0x37, 0xf5, 0x68, 0x69, 0x21,
    ];
    const SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    #[test]
    fn parse() {
        let p = Ipv6Packet::new_checked(&ICMP[..]).unwrap();
        assert_eq!(p.version(), 6);
        assert_eq!(p.traffic_class(), 0x12);
        assert_eq!(p.flow_label(), 0x34567);
        assert_eq!(p.payload_len(), 12);
        assert_eq!(p.next_header(), ip_proto::ICMPV6);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.src_addr(), SRC);
        assert_eq!(p.dst_addr(), DST);
        assert_eq!(p.payload(), &ICMP[HEADER_LEN..]);
        let u = p.upper_layer().unwrap();
        assert_eq!(
            (u.protocol, u.offset, u.fragment),
            (ip_proto::ICMPV6, HEADER_LEN, None)
        );
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 52];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version(6);
        p.set_traffic_class(0x12);
        p.set_flow_label(0x34567);
        p.set_payload_len(12);
        p.set_next_header(ip_proto::ICMPV6);
        p.set_hop_limit(64);
        p.set_src_addr(SRC);
        p.set_dst_addr(DST);
        p.payload_mut().copy_from_slice(&ICMP[HEADER_LEN..]);
        assert_eq!(b, ICMP);
    }

    #[test]
    fn upper_layer_skips_extension_headers() {
        let p = Ipv6Packet::new_checked(&EXT[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!(u.protocol, ip_proto::UDP);
        assert_eq!(u.offset, HEADER_LEN + 2 * EXT_UNIT);
        assert_eq!(u.fragment, Some((0, false)));
        assert_eq!(&EXT[u.offset..], &EXT[HEADER_LEN + 2 * EXT_UNIT..]);
    }

    #[test]
    fn upper_layer_is_bounded_and_checked() {
        // A Hop-by-Hop header that claims more than the payload.
        let mut b = EXT;
        b[HEADER_LEN + field::EXT_LENGTH] = 9;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));
        // A Fragment header cut short by the payload length.
        let mut b = EXT;
        Ipv6Packet::new_unchecked(&mut b[..]).set_payload_len(12);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Truncated));
        // Nine Destination Options headers in a row.
        let mut b = [0u8; HEADER_LEN + 9 * EXT_UNIT];
        let mut p = Ipv6Packet::new_unchecked(&mut b[..]);
        p.set_version(6);
        p.set_payload_len(9 * EXT_UNIT as u16);
        p.set_next_header(ip_proto::IPV6_OPTS);
        for h in p.payload_mut().chunks_mut(EXT_UNIT) {
            h[field::EXT_NEXT_HEADER] = ip_proto::IPV6_OPTS;
        }
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.upper_layer(), Err(Error::Unsupported));
        // Eight are fine.
        b[HEADER_LEN + 7 * EXT_UNIT + field::EXT_NEXT_HEADER] = ip_proto::IPV6_NO_NEXT;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        let u = p.upper_layer().unwrap();
        assert_eq!(
            (u.protocol, u.offset),
            (ip_proto::IPV6_NO_NEXT, HEADER_LEN + 8 * EXT_UNIT)
        );
    }

    #[test]
    fn bad_input_is_rejected() {
        for n in 0..ICMP.len() {
            assert_eq!(
                Ipv6Packet::new_checked(&ICMP[..n]),
                Err(Error::Truncated),
                "{n}"
            );
        }
        let mut b = ICMP;
        Ipv6Packet::new_unchecked(&mut b[..]).set_version(4);
        assert_eq!(Ipv6Packet::new_checked(&b[..]), Err(Error::BadVersion));
    }
}
