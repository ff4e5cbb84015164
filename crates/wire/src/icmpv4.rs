//! ICMP for IPv4 (RFC 792).

use crate::{Error, checksum, read_u16, write_u16};

/// Echo reply.
pub const ECHO_REPLY: u8 = 0;
/// Destination unreachable.
pub const DESTINATION_UNREACHABLE: u8 = 3;
/// Echo request.
pub const ECHO_REQUEST: u8 = 8;
/// Time exceeded.
pub const TIME_EXCEEDED: u8 = 11;
/// Parameter problem.
pub const PARAMETER_PROBLEM: u8 = 12;
/// Destination unreachable code: fragmentation needed and DF set (RFC 1191).
pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;

/// A view of an ICMP message: type, code, checksum, the four-byte rest of the header (echo
/// identifier and sequence number, or the next-hop MTU), and the data after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmpv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

/// ICMP field offsets: byte ranges (or, for one-byte fields and ends, single offsets) from the
/// start of the message.
pub mod field {
    use crate::Field;

    /// Type ([`ECHO_REQUEST`](super::ECHO_REQUEST), ...).
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Checksum (over the whole message, no pseudo-header).
    pub const CHECKSUM: Field = 2..4;
    /// Echo request/reply identifier.
    pub const ECHO_IDENT: Field = 4..6;
    /// Echo request/reply sequence number.
    pub const ECHO_SEQUENCE: Field = 6..8;
    /// Next-hop MTU of "fragmentation needed" (RFC 1191).
    pub const NEXT_HOP_MTU: Field = 6..8;
    /// Start of the data (the end of the header): an echo's data, or an error's quote of the
    /// offending packet, its IPv4 header first.
    pub const DATA: usize = 8;
}

/// The length of an ICMP header (with the rest-of-header word).
pub const HEADER_LEN: usize = field::DATA;

/// The least an error (destination unreachable, time exceeded, parameter problem) quotes of
/// the offending packet's data after its IPv4 header: its first 64 bits (RFC 792), which hold
/// the ports of TCP and UDP and the identifier of an echo.
pub const ERROR_QUOTED_DATA_LEN: usize = 8;

impl<T: AsRef<[u8]>> Icmpv4Packet<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `payload` never panics.
    pub const fn new_unchecked(buffer: T) -> Self {
        Icmpv4Packet { buffer }
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

    /// The next-hop MTU of a "fragmentation needed" message (RFC 1191).
    pub fn next_hop_mtu(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::NEXT_HOP_MTU)
    }

    /// The data after the header (echo data, or the datagram an error quotes).
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        crate::clamp(len, HEADER_LEN, len)
    }

    /// Whether the checksum over the whole buffer is valid.
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.buffer.as_ref(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv4Packet<T> {
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

    /// Sets the next-hop MTU.
    pub fn set_next_hop_mtu(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::NEXT_HOP_MTU, value);
    }

    /// Computes the checksum over the whole buffer and writes it.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// The data after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }
}

crate::borrowed_payload!(Icmpv4Packet);

#[cfg(test)]
mod tests {
    use super::*;

    // Echo request, identifier 0xbeef, sequence 1, "ping".
    const ECHO: [u8; 12] = [
        0x08, 0x00, 0x5a, 0x3e, 0xbe, 0xef, 0x00, 0x01, 0x70, 0x69, 0x6e, 0x67,
    ];

    #[test]
    fn parse() {
        let p = Icmpv4Packet::new_checked(&ECHO[..]).unwrap();
        assert_eq!((p.msg_type(), p.msg_code()), (ECHO_REQUEST, 0));
        assert_eq!(p.checksum(), 0x5a3e);
        assert_eq!((p.echo_ident(), p.echo_seq_no()), (0xbeef, 1));
        assert_eq!(p.payload(), b"ping");
        assert!(p.verify_checksum());
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 12];
        let mut p = Icmpv4Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(ECHO_REQUEST);
        p.set_msg_code(0);
        p.set_echo_ident(0xbeef);
        p.set_echo_seq_no(1);
        p.payload_mut().copy_from_slice(b"ping");
        p.fill_checksum();
        assert_eq!(b, ECHO);
    }

    #[test]
    fn frag_needed_carries_the_mtu() {
        let mut b = [0u8; 8];
        let mut p = Icmpv4Packet::new_unchecked(&mut b[..]);
        p.set_msg_type(DESTINATION_UNREACHABLE);
        p.set_msg_code(CODE_FRAGMENTATION_NEEDED);
        p.set_next_hop_mtu(1400);
        p.fill_checksum();
        assert_eq!(p.next_hop_mtu(), 1400);
        assert!(p.verify_checksum());
    }

    #[test]
    fn truncated_is_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(Icmpv4Packet::new_checked(&ECHO[..n]), Err(Error::Truncated));
        }
    }
}
