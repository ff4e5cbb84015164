//! UDP headers (RFC 768).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::{Error, checksum, clamp, clamped, ip_proto, read_u16, write_u16};

/// A view of a UDP datagram: header and payload up to the length field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// UDP header field offsets: byte ranges from the start of the header.
pub mod field {
    use crate::Field;

    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length (header and payload) in bytes.
    pub const LENGTH: Field = 4..6;
    /// Checksum (zero over IPv4: none).
    pub const CHECKSUM: Field = 6..8;
}

/// The length of a UDP header.
pub const HEADER_LEN: usize = field::CHECKSUM.end;

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `payload` never panics.
    pub const fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Wraps `buffer` after [`UdpPacket::check_len`].
    ///
    /// # Errors
    ///
    /// As [`UdpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the length field against the header and the buffer (which may be longer).
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`] or the length field;
    /// [`Error::Malformed`] if the length field is under [`HEADER_LEN`].
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let field = usize::from(self.len());
        if field < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < field {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The source port.
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// The destination port.
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field (header and payload).
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    /// Whether the length field says there is no payload.
    pub fn is_empty(&self) -> bool {
        usize::from(self.len()) <= HEADER_LEN
    }

    /// The checksum field (0: none, IPv4 only).
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The payload: after the header, up to the length field (clamped to the buffer).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        clamp(
            self.buffer.as_ref().len(),
            HEADER_LEN,
            usize::from(self.len()),
        )
    }

    /// Whether the checksum is valid over an IPv4 pseudo-header with these addresses. A zero
    /// checksum (none sent) counts as valid.
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        if self.checksum() == 0 {
            return true;
        }
        self.sum_ok(checksum::pseudo_header_v4(
            src,
            dst,
            ip_proto::UDP,
            self.len(),
        ))
    }

    /// Whether the checksum is valid over an IPv6 pseudo-header with these addresses (a zero
    /// checksum is invalid in IPv6, RFC 8200 section 8.1).
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let len = u32::from(self.len());
        self.checksum() != 0
            && self.sum_ok(checksum::pseudo_header_v6(src, dst, ip_proto::UDP, len))
    }

    fn sum_ok(&self, pseudo: u64) -> bool {
        let d = clamped(self.buffer.as_ref(), 0, usize::from(self.len()));
        checksum::fold(checksum::sum(d, pseudo)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the length field.
    pub fn set_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, len);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Computes the checksum over an IPv4 pseudo-header with these addresses and writes it (a
    /// computed zero is sent as `0xffff`).
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let pseudo = checksum::pseudo_header_v4(src, dst, ip_proto::UDP, self.len());
        self.fill(pseudo);
    }

    /// Computes the checksum over an IPv6 pseudo-header with these addresses and writes it (a
    /// computed zero is sent as `0xffff`).
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let len = u32::from(self.len());
        self.fill(checksum::pseudo_header_v6(src, dst, ip_proto::UDP, len));
    }

    /// The payload, writable: after the header, up to the length field (clamped to the
    /// buffer).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }

    fn fill(&mut self, pseudo: u64) {
        self.set_checksum(0);
        let d = clamped(self.buffer.as_ref(), 0, usize::from(self.len()));
        let c = match checksum::finish(checksum::sum(d, pseudo)) {
            0 => 0xffff,
            c => c,
        };
        self.set_checksum(c);
    }
}

crate::borrowed_payload!(UdpPacket);

#[cfg(test)]
mod tests {
    use super::*;

    // 5000 -> 53 "hi!", checksummed for 192.168.64.2 -> 198.18.0.1.
    const DGRAM: [u8; 11] = [
        0x13, 0x88, 0x00, 0x35, 0x00, 0x0b, 0x9b, 0xf3, 0x68, 0x69, 0x21,
    ];
    // The same for fd00::2 -> 2001:db8::1.
    const DGRAM6: [u8; 11] = [
        0x13, 0x88, 0x00, 0x35, 0x00, 0x0b, 0x37, 0xf5, 0x68, 0x69, 0x21,
    ];
    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    #[test]
    fn parse() {
        let p = UdpPacket::new_checked(&DGRAM[..]).unwrap();
        assert_eq!(p.src_port(), 5000);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 11);
        assert!(!p.is_empty());
        assert_eq!(p.checksum(), 0x9bf3);
        assert_eq!(p.payload(), b"hi!");
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(DST, DST));
        let p = UdpPacket::new_checked(&DGRAM6[..]).unwrap();
        assert!(p.verify_checksum_v6(SRC6, DST6));
        assert!(!p.verify_checksum_v6(DST6, DST6));
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 11];
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(5000);
        p.set_dst_port(53);
        p.set_len(11);
        p.payload_mut().copy_from_slice(b"hi!");
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(b, DGRAM);
        UdpPacket::new_unchecked(&mut b[..]).fill_checksum_v6(SRC6, DST6);
        assert_eq!(b, DGRAM6);
    }

    #[test]
    fn zero_checksum_means_none_in_ipv4_only() {
        let mut b = DGRAM;
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_checksum(0);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v6(SRC6, DST6));
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Pick the payload word so that the sum is 0xffff, the complement 0.
        let mut b = [0u8; 10];
        let mut p = UdpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(1);
        p.set_dst_port(2);
        p.set_len(10);
        let pseudo = checksum::pseudo_header_v4(SRC, DST, ip_proto::UDP, 10);
        let partial = checksum::fold(checksum::sum(&p.buffer[..HEADER_LEN], pseudo));
        p.payload_mut()
            .copy_from_slice(&(0xffff - partial).to_be_bytes());
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(p.checksum(), 0xffff);
        assert!(p.verify_checksum_v4(SRC, DST));
    }

    #[test]
    fn bad_input_is_rejected() {
        for n in 0..DGRAM.len() {
            assert_eq!(
                UdpPacket::new_checked(&DGRAM[..n]),
                Err(Error::Truncated),
                "{n}"
            );
        }
        let mut b = DGRAM;
        UdpPacket::new_unchecked(&mut b[..]).set_len(7);
        assert_eq!(UdpPacket::new_checked(&b[..]), Err(Error::Malformed));
        UdpPacket::new_unchecked(&mut b[..]).set_len(12);
        assert_eq!(UdpPacket::new_checked(&b[..]), Err(Error::Truncated));
    }
}
