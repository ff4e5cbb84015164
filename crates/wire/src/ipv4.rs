//! IPv4 headers (RFC 791).

use core::net::Ipv4Addr;

use crate::{Error, checksum, clamp, clamped, read_u16, read_u32, write_u16, write_u32};

/// A view of an IPv4 packet: the header (options included) and the payload up to the total
/// length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// IPv4 header field offsets: byte ranges (or, for one-byte fields, single offsets) from the
/// start of the header.
pub mod field {
    use crate::Field;

    /// Version (high nibble) and header length in 32-bit words (low nibble).
    pub const VERSION_IHL: usize = 0;
    /// DSCP (high six bits) and ECN (low two bits).
    pub const DSCP_ECN: usize = 1;
    /// Total length (header and payload) in bytes.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags and fragment offset ([`DONT_FRAGMENT`](super::DONT_FRAGMENT),
    /// [`MORE_FRAGMENTS`](super::MORE_FRAGMENTS), [`FRAGMENT_OFFSET`](super::FRAGMENT_OFFSET)).
    pub const FLAGS_FRAGMENT: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol of the payload ([`ip_proto`](crate::ip_proto)).
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
}

/// The length of an IPv4 header without options.
pub const HEADER_LEN: usize = field::DST_ADDR.end;

/// The length of an IPv4 header with the most options (a header length field of 15 words).
pub const MAX_HEADER_LEN: usize = 60;

/// The Don't Fragment flag in the flags/offset word ([`field::FLAGS_FRAGMENT`]).
pub const DONT_FRAGMENT: u16 = 0x4000;
/// The More Fragments flag in the flags/offset word ([`field::FLAGS_FRAGMENT`]).
pub const MORE_FRAGMENTS: u16 = 0x2000;
/// The fragment offset bits (in 8-byte units) of the flags/offset word
/// ([`field::FLAGS_FRAGMENT`]).
pub const FRAGMENT_OFFSET: u16 = 0x1fff;

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `payload` and `options` never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps `buffer` after [`Ipv4Packet::check_len`] and a version check.
    ///
    /// # Errors
    ///
    /// As [`Ipv4Packet::check_len`], and [`Error::BadVersion`] if the version is not 4.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        if p.version() != 4 {
            return Err(Error::BadVersion);
        }
        Ok(p)
    }

    /// Checks the length fields against each other and the buffer. The buffer may be longer
    /// than the total length (link-layer padding).
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`], the header length or
    /// the total length; [`Error::Malformed`] if the header length is under 20 bytes or the
    /// total length under the header length.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let (hlen, total) = (self.header_len(), usize::from(self.total_len()));
        if hlen < HEADER_LEN || total < hlen {
            return Err(Error::Malformed);
        }
        if len < hlen || len < total {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The version field (4).
    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION_IHL] >> 4
    }

    /// The header length in bytes (the IHL field × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VERSION_IHL] & 0x0f) * 4
    }

    /// The DSCP (the upper six bits of the former type-of-service byte).
    pub fn dscp(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] >> 2
    }

    /// The ECN bits.
    pub fn ecn(&self) -> u8 {
        self.buffer.as_ref()[field::DSCP_ECN] & 0x03
    }

    /// The total length (header and payload) in bytes.
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// The identification.
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// The Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & DONT_FRAGMENT != 0
    }

    /// The More Fragments flag.
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & MORE_FRAGMENTS != 0
    }

    /// The fragment offset in bytes (the field × 8).
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & FRAGMENT_OFFSET) << 3
    }

    /// Whether this is a fragment (More Fragments set or a non-zero offset): only the first
    /// fragment carries the transport header, and no fragment alone its whole payload.
    pub fn is_fragment(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAGMENT) & (MORE_FRAGMENTS | FRAGMENT_OFFSET)
            != 0
    }

    /// The time to live.
    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    /// The protocol ([`crate::ip_proto`]).
    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    /// The header checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(read_u32(self.buffer.as_ref(), field::SRC_ADDR))
    }

    /// The destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(read_u32(self.buffer.as_ref(), field::DST_ADDR))
    }

    /// Whether the header checksum is valid (the header summed with its checksum folds to
    /// `0xffff`). A header cut short by the buffer is summed as far as it goes.
    pub fn verify_checksum(&self) -> bool {
        let d = self.buffer.as_ref();
        checksum::fold(checksum::sum(clamped(d, 0, self.header_len()), 0)) == 0xffff
    }

    /// The options (the header after its first 20 bytes).
    pub fn options(&self) -> &[u8] {
        clamped(self.buffer.as_ref(), HEADER_LEN, self.header_len())
    }

    /// The payload: after the header, up to the total length (clamped to the buffer).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        clamp(len, self.header_len(), usize::from(self.total_len()))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the version field.
    pub fn set_version(&mut self, version: u8) {
        let b = &mut self.buffer.as_mut()[field::VERSION_IHL];
        *b = (*b & 0x0f) | (version << 4);
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4; at most
    /// [`MAX_HEADER_LEN`]).
    pub fn set_header_len(&mut self, len: usize) {
        let ihl = (len / 4).min(15) as u8; // at most 15
        let b = &mut self.buffer.as_mut()[field::VERSION_IHL];
        *b = (*b & 0xf0) | ihl;
    }

    /// Sets the DSCP (six bits).
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0x03) | (dscp << 2);
    }

    /// Sets the ECN bits (two bits).
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = &mut self.buffer.as_mut()[field::DSCP_ECN];
        *b = (*b & 0xfc) | (ecn & 0x03);
    }

    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets the Don't Fragment flag.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(DONT_FRAGMENT, value);
    }

    /// Sets the More Fragments flag.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(MORE_FRAGMENTS, value);
    }

    /// Sets the fragment offset in bytes (rounded down to a multiple of 8).
    pub fn set_frag_offset(&mut self, offset: u16) {
        let d = self.buffer.as_mut();
        let v = read_u16(d, field::FLAGS_FRAGMENT);
        write_u16(
            d,
            field::FLAGS_FRAGMENT,
            (v & !FRAGMENT_OFFSET) | (offset >> 3),
        );
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }

    /// Sets the protocol.
    pub fn set_protocol(&mut self, protocol: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = protocol;
    }

    /// Sets the header checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::SRC_ADDR, addr.to_bits());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::DST_ADDR, addr.to_bits());
    }

    /// Computes the header checksum and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hlen = self.header_len();
        let c = checksum::checksum(clamped(self.buffer.as_ref(), 0, hlen));
        self.set_checksum(c);
    }

    /// The payload, writable: after the header, up to the total length (clamped to the
    /// buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }

    fn set_flag(&mut self, flag: u16, value: bool) {
        let d = self.buffer.as_mut();
        let v = read_u16(d, field::FLAGS_FRAGMENT);
        write_u16(
            d,
            field::FLAGS_FRAGMENT,
            if value { v | flag } else { v & !flag },
        );
    }
}

crate::borrowed_payload!(Ipv4Packet);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip_proto;

    // 192.168.64.2 -> 198.18.0.1, UDP 5000 -> 53 "hi!", ident 0x1234, DF, TTL 64.
    const PACKET: [u8; 31] = [
        0x45, 0x00, 0x00, 0x1f, 0x12, 0x34, 0x40, 0x00, 0x40, 0x11, 0x61, 0xdc, 0xc0, 0xa8, 0x40,
        0x02, 0xc6, 0x12, 0x00, 0x01, 0x13, 0x88, 0x00, 0x35, 0x00, 0x0b, 0x9b, 0xf3, 0x68, 0x69,
        0x21,
    ];
    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn parse() {
        let p = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!((p.dscp(), p.ecn()), (0, 0));
        assert_eq!(p.total_len(), 31);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag() && !p.more_frags() && !p.is_fragment());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), ip_proto::UDP);
        assert_eq!(p.checksum(), 0x61dc);
        assert_eq!(p.src_addr(), SRC);
        assert_eq!(p.dst_addr(), DST);
        assert!(p.verify_checksum());
        assert_eq!(p.options(), &[] as &[u8]);
        assert_eq!(p.payload(), &PACKET[HEADER_LEN..]);
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 31];
        b[HEADER_LEN..].copy_from_slice(&PACKET[HEADER_LEN..]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_version(4);
        p.set_header_len(20);
        p.set_dscp(0);
        p.set_ecn(0);
        p.set_total_len(31);
        p.set_ident(0x1234);
        p.set_dont_frag(true);
        p.set_more_frags(false);
        p.set_frag_offset(0);
        p.set_ttl(64);
        p.set_protocol(ip_proto::UDP);
        p.set_src_addr(SRC);
        p.set_dst_addr(DST);
        p.fill_checksum();
        assert_eq!(b, PACKET);
    }

    #[test]
    fn fragment_fields_round_trip() {
        let mut b = PACKET;
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.set_dont_frag(false);
        p.set_more_frags(true);
        p.set_frag_offset(1480);
        assert!(p.more_frags() && !p.dont_frag() && p.is_fragment());
        assert_eq!(p.frag_offset(), 1480);
        p.set_more_frags(false);
        assert!(p.is_fragment());
        p.set_dscp(46);
        p.set_ecn(3);
        assert_eq!((p.dscp(), p.ecn()), (46, 3));
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
    }

    #[test]
    fn borrowed_payload_outlives_the_view() {
        let udp = {
            let ip = Ipv4Packet::new_checked(&PACKET[..]).unwrap();
            crate::UdpPacket::new_checked(ip.into_payload()).unwrap()
        };
        assert_eq!(udp.dst_port(), 53);
        let mut b = PACKET;
        let l4 = Ipv4Packet::new_checked(&mut b[..])
            .unwrap()
            .into_payload_mut();
        crate::UdpPacket::new_checked(l4).unwrap().set_dst_port(54);
        let ip = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(
            crate::UdpPacket::new_checked(ip.into_payload())
                .unwrap()
                .dst_port(),
            54
        );
    }

    #[test]
    fn trailing_bytes_are_not_payload() {
        let mut b = [0u8; 40];
        b[..31].copy_from_slice(&PACKET);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &PACKET[HEADER_LEN..]);
    }

    #[test]
    fn bad_input_is_rejected() {
        for n in 0..PACKET.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&PACKET[..n]),
                Err(Error::Truncated),
                "{n}"
            );
        }
        let with = |f: &dyn Fn(&mut Ipv4Packet<&mut [u8]>)| {
            let mut b = PACKET;
            f(&mut Ipv4Packet::new_unchecked(&mut b[..]));
            Ipv4Packet::new_checked(&b[..]).map(|_| ())
        };
        assert_eq!(with(&|p| p.set_version(6)), Err(Error::BadVersion));
        assert_eq!(with(&|p| p.set_header_len(16)), Err(Error::Malformed));
        assert_eq!(with(&|p| p.set_header_len(24)), Ok(()));
        assert_eq!(with(&|p| p.set_header_len(36)), Err(Error::Malformed));
        assert_eq!(with(&|p| p.set_total_len(19)), Err(Error::Malformed));
        assert_eq!(with(&|p| p.set_total_len(32)), Err(Error::Truncated));
    }

    #[test]
    fn payload_never_panics_after_a_bad_set() {
        let mut b = PACKET;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_total_len(0xffff);
        p.set_header_len(60);
        assert_eq!(p.payload(), &[] as &[u8]);
        assert_eq!(p.payload_mut(), &mut [] as &mut [u8]);
        assert_eq!(p.options(), &PACKET[HEADER_LEN..]);
        assert!(!p.verify_checksum());
        p.set_total_len(10);
        assert_eq!(p.payload(), &[] as &[u8]);
    }
}
