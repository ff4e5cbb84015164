//! TCP headers (RFC 9293).

use core::net::{Ipv4Addr, Ipv6Addr};

use crate::{Error, checksum, clamp, clamped, ip_proto, read_u16, read_u32, write_u16, write_u32};

/// FIN: no more data from the sender.
pub const FIN: u8 = 0x01;
/// SYN: synchronize sequence numbers.
pub const SYN: u8 = 0x02;
/// RST: reset the connection.
pub const RST: u8 = 0x04;
/// PSH: push.
pub const PSH: u8 = 0x08;
/// ACK: the acknowledgment number is valid.
pub const ACK: u8 = 0x10;
/// URG: the urgent pointer is valid.
pub const URG: u8 = 0x20;
/// ECE: ECN echo.
pub const ECE: u8 = 0x40;
/// CWR: congestion window reduced.
pub const CWR: u8 = 0x80;

/// A view of a TCP segment. TCP has no length field: the segment is the whole buffer, so
/// give the view exactly the IP payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// TCP header field offsets: byte ranges (or, for one-byte fields, single offsets) from the
/// start of the header.
pub mod field {
    use crate::Field;

    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQUENCE_NUMBER: Field = 4..8;
    /// Acknowledgment number.
    pub const ACKNOWLEDGMENT_NUMBER: Field = 8..12;
    /// Data offset in 32-bit words (high nibble).
    pub const DATA_OFFSET: usize = 12;
    /// Flags ([`FIN`](super::FIN), [`SYN`](super::SYN), [`RST`](super::RST), ...).
    pub const FLAGS: usize = 13;
    /// Window.
    pub const WINDOW: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Urgent pointer.
    pub const URGENT_POINTER: Field = 18..20;
}

/// The length of a TCP header without options.
pub const HEADER_LEN: usize = field::URGENT_POINTER.end;

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters of header fields panic if the buffer is shorter than
    /// [`HEADER_LEN`]; `options` and `payload` never panic.
    pub const fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Wraps `buffer` after [`TcpPacket::check_len`].
    ///
    /// # Errors
    ///
    /// As [`TcpPacket::check_len`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks the data offset against the header and the buffer.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if the buffer is shorter than [`HEADER_LEN`] or the header length;
    /// [`Error::Malformed`] if the data offset is under 5 words.
    pub fn check_len(&self) -> Result<(), Error> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        let hlen = self.header_len();
        if hlen < HEADER_LEN {
            return Err(Error::Malformed);
        }
        if len < hlen {
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

    /// The sequence number.
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQUENCE_NUMBER)
    }

    /// The acknowledgment number.
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACKNOWLEDGMENT_NUMBER)
    }

    /// The header length in bytes (the data offset × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    /// The eight flag bits ([`FIN`] … [`CWR`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// Whether FIN is set.
    pub fn fin(&self) -> bool {
        self.flags() & FIN != 0
    }

    /// Whether SYN is set.
    pub fn syn(&self) -> bool {
        self.flags() & SYN != 0
    }

    /// Whether RST is set.
    pub fn rst(&self) -> bool {
        self.flags() & RST != 0
    }

    /// Whether PSH is set.
    pub fn psh(&self) -> bool {
        self.flags() & PSH != 0
    }

    /// Whether ACK is set.
    pub fn ack(&self) -> bool {
        self.flags() & ACK != 0
    }

    /// The window size.
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// The checksum field.
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// The urgent pointer.
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT_POINTER)
    }

    /// The options (the header after its first 20 bytes; clamped to the buffer).
    pub fn options(&self) -> &[u8] {
        clamped(self.buffer.as_ref(), HEADER_LEN, self.header_len())
    }

    /// The payload: the buffer after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        clamp(len, self.header_len(), len)
    }

    /// Whether the checksum is valid over an IPv4 pseudo-header with these addresses (the
    /// segment length is the buffer length).
    pub fn verify_checksum_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.pseudo_v4(src, dst)
            .is_some_and(|p| checksum::fold(checksum::sum(self.buffer.as_ref(), p)) == 0xffff)
    }

    /// Whether the checksum is valid over an IPv6 pseudo-header with these addresses (the
    /// segment length is the buffer length).
    pub fn verify_checksum_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        self.pseudo_v6(src, dst)
            .is_some_and(|p| checksum::fold(checksum::sum(self.buffer.as_ref(), p)) == 0xffff)
    }

    /// The IPv4 pseudo-header sum, if the segment fits its 16-bit length.
    fn pseudo_v4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Option<u64> {
        let len = u16::try_from(self.buffer.as_ref().len()).ok()?;
        Some(checksum::pseudo_header_v4(src, dst, ip_proto::TCP, len))
    }

    /// The IPv6 pseudo-header sum, if the segment fits its 32-bit length.
    fn pseudo_v6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Option<u64> {
        let len = u32::try_from(self.buffer.as_ref().len()).ok()?;
        Some(checksum::pseudo_header_v6(src, dst, ip_proto::TCP, len))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQUENCE_NUMBER, seq);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACKNOWLEDGMENT_NUMBER, ack);
    }

    /// Sets the header length in bytes (rounded down to a multiple of 4; at most 60); the
    /// reserved bits are cleared.
    pub fn set_header_len(&mut self, len: usize) {
        let words = (len / 4).min(15) as u8; // at most 15
        self.buffer.as_mut()[field::DATA_OFFSET] = words << 4;
    }

    /// Sets the eight flag bits.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the window size.
    pub fn set_window_len(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    /// Sets the checksum field.
    pub fn set_checksum(&mut self, checksum: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, checksum);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, urgent: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT_POINTER, urgent);
    }

    /// Computes the checksum over an IPv4 pseudo-header with these addresses and writes it. A
    /// buffer longer than 65535 bytes gets a zero checksum.
    pub fn fill_checksum_v4(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        let pseudo = self.pseudo_v4(src, dst);
        self.fill(pseudo);
    }

    /// Computes the checksum over an IPv6 pseudo-header with these addresses and writes it.
    pub fn fill_checksum_v6(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let pseudo = self.pseudo_v6(src, dst);
        self.fill(pseudo);
    }

    /// The options, writable (clamped to the buffer).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let r = clamp(self.buffer.as_ref().len(), HEADER_LEN, self.header_len());
        &mut self.buffer.as_mut()[r]
    }

    /// The payload, writable: the buffer after the header.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }

    fn fill(&mut self, pseudo: Option<u64>) {
        self.set_checksum(0);
        if let Some(p) = pseudo {
            let c = checksum::finish(checksum::sum(self.buffer.as_ref(), p));
            self.set_checksum(c);
        }
    }
}

crate::borrowed_payload!(TcpPacket);

#[cfg(test)]
mod tests {
    use super::*;

    // SYN 40000 -> 443, seq 0x01020304, window 64240, MSS 1460, checksummed for
    // 192.168.64.2 -> 198.18.0.1.
    const SEGMENT: [u8; 24] = [
        0x9c, 0x40, 0x01, 0xbb, 0x01, 0x02, 0x03, 0x04, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0xfa,
        0xf0, 0x34, 0x76, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    const MSS: [u8; 4] = [0x02, 0x04, 0x05, 0xb4];
    const SRC: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    #[test]
    fn parse() {
        let p = TcpPacket::new_checked(&SEGMENT[..]).unwrap();
        assert_eq!((p.src_port(), p.dst_port()), (40000, 443));
        assert_eq!((p.seq_number(), p.ack_number()), (0x0102_0304, 0));
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), SYN);
        assert!(p.syn() && !p.ack() && !p.fin() && !p.rst() && !p.psh());
        assert_eq!(p.window_len(), 64240);
        assert_eq!(p.checksum(), 0x3476);
        assert_eq!(p.urgent_at(), 0);
        assert_eq!(p.options(), &MSS);
        assert_eq!(p.payload(), &[] as &[u8]);
        assert!(p.verify_checksum_v4(SRC, DST));
        assert!(!p.verify_checksum_v4(SRC, SRC));
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 24];
        let mut p = TcpPacket::new_unchecked(&mut b[..]);
        p.set_src_port(40000);
        p.set_dst_port(443);
        p.set_seq_number(0x0102_0304);
        p.set_ack_number(0);
        p.set_header_len(24);
        p.set_flags(SYN);
        p.set_window_len(64240);
        p.set_urgent_at(0);
        p.options_mut().copy_from_slice(&MSS);
        p.fill_checksum_v4(SRC, DST);
        assert_eq!(b, SEGMENT);
    }

    #[test]
    fn ipv6_checksum_round_trips() {
        let (s, d) = (
            Ipv6Addr::LOCALHOST,
            Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 9),
        );
        let mut b = [0u8; 27];
        b[..24].copy_from_slice(&SEGMENT);
        b[24..].copy_from_slice(b"abc");
        let mut p = TcpPacket::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.payload(), b"abc");
        p.payload_mut()[0] = b'x';
        p.fill_checksum_v6(s, d);
        assert!(p.verify_checksum_v6(s, d));
        assert!(!p.verify_checksum_v6(s, s));
    }

    #[test]
    fn bad_input_is_rejected() {
        for n in 0..SEGMENT.len() {
            assert_eq!(
                TcpPacket::new_checked(&SEGMENT[..n]),
                Err(Error::Truncated),
                "{n}"
            );
        }
        let mut b = SEGMENT;
        TcpPacket::new_unchecked(&mut b[..]).set_header_len(16);
        assert_eq!(TcpPacket::new_checked(&b[..]), Err(Error::Malformed));
        TcpPacket::new_unchecked(&mut b[..]).set_header_len(28);
        assert_eq!(TcpPacket::new_checked(&b[..]), Err(Error::Truncated));
    }
}
