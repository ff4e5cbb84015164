//! ICMP for IPv6 (RFC 4443) and the Neighbor Discovery message types (RFC 4861).

use core::net::Ipv6Addr;

use crate::{Error, checksum, ip_proto, read_u16, read_u32, write_u16, write_u32};

/// Destination unreachable.
pub const DESTINATION_UNREACHABLE: u8 = 1;
/// Packet too big.
pub const PACKET_TOO_BIG: u8 = 2;
/// Time exceeded.
pub const TIME_EXCEEDED: u8 = 3;
/// Parameter problem.
pub const PARAMETER_PROBLEM: u8 = 4;
/// Echo request.
pub const ECHO_REQUEST: u8 = 128;
/// Echo reply.
pub const ECHO_REPLY: u8 = 129;
/// Router solicitation (RFC 4861).
pub const ROUTER_SOLICITATION: u8 = 133;
/// Router advertisement (RFC 4861).
pub const ROUTER_ADVERTISEMENT: u8 = 134;
/// Neighbor solicitation (RFC 4861).
pub const NEIGHBOR_SOLICITATION: u8 = 135;
/// Neighbor advertisement (RFC 4861).
pub const NEIGHBOR_ADVERTISEMENT: u8 = 136;

/// A view of an ICMPv6 message: type, code, checksum, the four-byte rest of the header (echo
/// identifier and sequence number, the MTU of "packet too big", the pointer of "parameter
/// problem"), and the data after it. The checksum covers an IPv6 pseudo-header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// ICMPv6 field offsets: byte ranges (or, for one-byte fields and ends, single offsets) from
/// the start of the message.
pub mod field {
    use crate::Field;

    /// Type ([`ECHO_REQUEST`](super::ECHO_REQUEST), ...).
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum (with the IPv6 pseudo-header).
    pub const CHECKSUM: Field = 2..4;
    /// Echo request/reply identifier.
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo request/reply sequence number.
    pub const ECHO_SEQUENCE: Field = 6..8;
    /// MTU of "packet too big".
    pub const MTU: Field = 4..8;
    /// Start of the data (the end of the header).
    pub const DATA: usize = 8;
}

/// The length of an ICMPv6 header (with the rest-of-header word).
pub const HEADER_LEN: usize = field::DATA;

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `payload` never panics.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv6Packet { buffer }
    }

    /// Wraps `buffer` after checking that it holds a whole header.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the buffer holds a whole header.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`HEADER_LEN`].
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The message type ([`ECHO_REQUEST`], …).
    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    /// The code.
    pub fn msg_code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The identifier of an echo request or reply.
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// The sequence number of an echo request or reply.
    pub fn echo_seq_no(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQUENCE)
    }

    /// The MTU of a "packet too big" message (or the pointer of a "parameter problem").
    pub fn mtu(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::MTU)
    }

    /// The data after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        crate::clamp(len, HEADER_LEN, len)
    }

    /// Whether the checksum is valid over an IPv6 pseudo-header with these addresses (the
    /// message is the whole buffer).
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.pseudo(src, dst)
            .is_some_and(|p| checksum::fold(checksum::sum(self.buffer.as_ref(), p)) == 0xffff)
    }

    fn pseudo(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Option<u64> {
        let len = u32::try_from(self.buffer.as_ref().len()).ok()?;
        Some(checksum::pseudo_header_v6(src, dst, ip_proto::ICMPV6, len))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Sets the message type.
    pub fn set_msg_type(&mut self, value: u8) {
        self.buffer.as_mut()[field::TYPE] = value;
    }

    /// Sets the code.
    pub fn set_msg_code(&mut self, value: u8) {
        self.buffer.as_mut()[field::CODE] = value;
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the echo identifier.
    pub fn set_echo_ident(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, value);
    }

    /// Sets the echo sequence number.
    pub fn set_echo_seq_no(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQUENCE, value);
    }

    /// Sets the MTU (or pointer).
    pub fn set_mtu(&mut self, value: u32) {
        write_u32(self.buffer.as_mut(), field::MTU, value);
    }

    /// Computes the checksum over an IPv6 pseudo-header with these addresses and writes it.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        self.set_checksum(0);
        if let Some(p) = self.pseudo(src, dst) {
            let c = checksum::finish(checksum::sum(self.buffer.as_ref(), p));
            self.set_checksum(c);
        }
    }

    /// The data after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }
}

crate::borrowed_payload!(Icmpv6Packet);

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, identifier 0x4242, sequence 7, "ping", checksummed for
    // fd00::2 -> 2001:db8::1.
    const ECHO: [u8; 12] = [
        0x80, 0x00, 0x33, 0xe2, 0x42, 0x42, 0x00, 0x07, 0x70, 0x69, 0x6e, 0x67,
    ];
    const SRC: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const DST: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);

    #[test]
    fn parse() {
        let p = Icmpv6Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (ECHO_REQUEST, 0));
        assert_eq!(p.checksum(), 0x33e2);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0x4242, 7));
        assert_eq!(p.payload(), b"ping");
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, SRC));
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 12];
        let mut p = Icmpv6Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(ECHO_REQUEST);
        p.set_msg_code(0);
        p.set_echo_ident(0x4242);
        p.set_echo_seq_no(7);
        p.payload_mut().copy_from_slice(b"ping");
        p.fill_checksum(SRC, DST);
        assert_eq!(b, ECHO);
    }

    #[test]
    fn packet_too_big_carries_the_mtu() {
        let mut b = [0u8; 8];
        let mut p = Icmpv6Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(PACKET_TOO_BIG);
        p.set_mtu(1280);
        p.fill_checksum(SRC, DST);
        assert_eq!(p.mtu(), 1280);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn truncated_is_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(Icmpv6Packet::new_checked(&ECHO[..n]), Err(Error::Truncated));
        }
    }
}
