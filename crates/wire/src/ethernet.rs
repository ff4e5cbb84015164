//! Ethernet II frames (no VLAN tag).

use crate::{Error, MacAddr, read_u16, write_u16};

/// A view of an Ethernet II frame: destination, source, EtherType, payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

/// Ethernet header field offsets: byte ranges (or, for one-byte fields and ends, single
/// offsets) from the start of the frame.
pub mod field {
    use crate::Field;

    /// Destination MAC address.
    pub const DESTINATION: Field = 0..6;
    /// Source MAC address.
    pub const SOURCE: Field = 6..12;
    /// EtherType of the payload.
    pub const ETHERTYPE: Field = 12..14;
    /// Start of the payload (the end of the header).
    pub const PAYLOAD: usize = 14;
}

/// The length of an Ethernet header.
pub const HEADER_LEN: usize = field::PAYLOAD;

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters panic if the buffer is shorter than [`HEADER_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking that it holds a whole header.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
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

    /// The destination address.
    pub fn dst_addr(&self) -> MacAddr {
        mac(&self.buffer.as_ref()[field::DESTINATION])
    }

    /// The source address.
    pub fn src_addr(&self) -> MacAddr {
        mac(&self.buffer.as_ref()[field::SOURCE])
    }

    /// The EtherType ([`crate::ethertype`]).
    pub fn ethertype(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ETHERTYPE)
    }

    /// The bytes after the header.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.payload_range()]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        crate::clamp(len, HEADER_LEN, len)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::DESTINATION].copy_from_slice(&addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SOURCE].copy_from_slice(&addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: u16) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype);
    }

    /// The bytes after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }
}

fn mac(b: &[u8]) -> MacAddr {
    MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
}

crate::borrowed_payload!(EthernetFrame);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ethertype;

    // Broadcast from 52:54:00:12:34:56, IPv4, payload aa bb.
    const FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x08, 0x00, 0xaa,
        0xbb,
    ];
    const SRC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn parse() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), MacAddr::BROADCAST);
        assert_eq!(f.src_addr(), SRC);
        assert_eq!(f.ethertype(), ethertype::IPV4);
        assert_eq!(f.payload(), &[0xaa, 0xbb]);
        assert_eq!(f.into_inner(), &FRAME[..]);
    }

    #[test]
    fn emit() {
        let mut b = [0u8; 16];
        let mut f = EthernetFrame::new_unchecked(&mut b[..]);
        f.set_dst_addr(MacAddr::BROADCAST);
        f.set_src_addr(SRC);
        f.set_ethertype(ethertype::IPV4);
        f.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(b, FRAME);
    }

    #[test]
    fn truncated_is_rejected() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..n]),
                Err(Error::Truncated)
            );
        }
        assert!(EthernetFrame::new_checked(&FRAME[..HEADER_LEN]).is_ok());
    }
}
