//! ARP for Ethernet and IPv4 (RFC 826).

use core::net::Ipv4Addr;

use crate::{Error, MacAddr, ethertype, read_u16, read_u32, write_u16, write_u32};

/// Operation code of a request.
pub const REQUEST: u16 = 1;
/// Operation code of a reply.
pub const REPLY: u16 = 2;
/// Hardware type of Ethernet.
pub const HARDWARE_ETHERNET: u16 = 1;

/// A view of an ARP packet for Ethernet (hardware) and IPv4 (protocol) addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

/// ARP (Ethernet/IPv4) field offsets: byte ranges (or, for one-byte fields, single offsets)
/// from the start of the packet.
pub mod field {
    use crate::Field;

    /// Hardware type ([`HARDWARE_ETHERNET`](super::HARDWARE_ETHERNET)).
    pub const HARDWARE_TYPE: Field = 0..2;
    /// Protocol type (an EtherType).
    pub const PROTOCOL_TYPE: Field = 2..4;
    /// Hardware address length in bytes.
    pub const HARDWARE_LENGTH: usize = 4;
    /// Protocol address length in bytes.
    pub const PROTOCOL_LENGTH: usize = 5;
    /// Operation ([`REQUEST`](super::REQUEST) or [`REPLY`](super::REPLY)).
    pub const OPERATION: Field = 6..8;
    /// Sender hardware (MAC) address.
    pub const SENDER_HARDWARE_ADDR: Field = 8..14;
    /// Sender protocol (IPv4) address.
    pub const SENDER_PROTOCOL_ADDR: Field = 14..18;
    /// Target hardware (MAC) address.
    pub const TARGET_HARDWARE_ADDR: Field = 18..24;
    /// Target protocol (IPv4) address.
    pub const TARGET_PROTOCOL_ADDR: Field = 24..28;
}

/// The length of an Ethernet/IPv4 ARP packet.
pub const PACKET_LEN: usize = field::TARGET_PROTOCOL_ADDR.end;

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` without checks.
    ///
    /// # Panics
    ///
    /// Getters and setters panic if the buffer is shorter than [`PACKET_LEN`].
    pub const fn new_unchecked(buffer: T) -> Self {
        ArpPacket { buffer }
    }

    /// Wraps `buffer` after checking its length and that it is ARP for Ethernet/IPv4.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`PACKET_LEN`]; [`Error::Unsupported`] if the
    /// hardware or protocol type or address lengths are not Ethernet (6) and IPv4 (4).
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        if p.hardware_type() != HARDWARE_ETHERNET
            || p.protocol_type() != ethertype::IPV4
            || p.hardware_len() != 6
            || p.protocol_len() != 4
        {
            return Err(Error::Unsupported);
        }
        Ok(p)
    }

    /// Checks that the buffer holds a whole Ethernet/IPv4 ARP packet.
    ///
    /// # Errors
    ///
    /// [`Error::Truncated`] if it is shorter than [`PACKET_LEN`].
    pub fn check_len(&self) -> Result<(), Error> {
        if self.buffer.as_ref().len() < PACKET_LEN {
            return Err(Error::Truncated);
        }
        Ok(())
    }

    /// The buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The hardware type ([`HARDWARE_ETHERNET`]).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HARDWARE_TYPE)
    }

    /// The protocol type (an EtherType, [`ethertype::IPV4`]).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PROTOCOL_TYPE)
    }

    /// The hardware address length.
    pub fn hardware_len(&self) -> u8 {
        self.buffer.as_ref()[field::HARDWARE_LENGTH]
    }

    /// The protocol address length.
    pub fn protocol_len(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL_LENGTH]
    }

    /// The operation ([`REQUEST`], [`REPLY`]).
    pub fn operation(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::OPERATION)
    }

    /// The sender's hardware address.
    pub fn sender_hardware_addr(&self) -> MacAddr {
        mac(&self.buffer.as_ref()[field::SENDER_HARDWARE_ADDR])
    }

    /// The sender's protocol address.
    pub fn sender_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(read_u32(self.buffer.as_ref(), field::SENDER_PROTOCOL_ADDR))
    }

    /// The target's hardware address.
    pub fn target_hardware_addr(&self) -> MacAddr {
        mac(&self.buffer.as_ref()[field::TARGET_HARDWARE_ADDR])
    }

    /// The target's protocol address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from_bits(read_u32(self.buffer.as_ref(), field::TARGET_PROTOCOL_ADDR))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets hardware type, protocol type and both address lengths for Ethernet/IPv4.
    pub fn set_ethernet_ipv4(&mut self) {
        let d = self.buffer.as_mut();
        write_u16(d, field::HARDWARE_TYPE, HARDWARE_ETHERNET);
        write_u16(d, field::PROTOCOL_TYPE, ethertype::IPV4);
        d[field::HARDWARE_LENGTH] = 6;
        d[field::PROTOCOL_LENGTH] = 4;
    }

    /// Sets the operation.
    pub fn set_operation(&mut self, op: u16) {
        write_u16(self.buffer.as_mut(), field::OPERATION, op);
    }

    /// Sets the sender's hardware address.
    pub fn set_sender_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::SENDER_HARDWARE_ADDR].copy_from_slice(&addr.0);
    }

    /// Sets the sender's protocol address.
    pub fn set_sender_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_u32(
            self.buffer.as_mut(),
            field::SENDER_PROTOCOL_ADDR,
            addr.to_bits(),
        );
    }

    /// Sets the target's hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: MacAddr) {
        self.buffer.as_mut()[field::TARGET_HARDWARE_ADDR].copy_from_slice(&addr.0);
    }

    /// Sets the target's protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_u32(
            self.buffer.as_mut(),
            field::TARGET_PROTOCOL_ADDR,
            addr.to_bits(),
        );
    }
}

fn mac(b: &[u8]) -> MacAddr {
    MacAddr([b[0], b[1], b[2], b[3], b[4], b[5]])
}

#[cfg(test)]
mod tests {
    use super::*;

    // Who has 192.168.64.1? Tell 192.168.64.2 (52:54:00:12:34:56).
    const REQ: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0xc0,
        0xa8, 0x40, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xc0, 0xa8, 0x40, 0x01,
    ];
    const GUEST: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn parse() {
        let p = ArpPacket::new_checked(&REQ[..]).unwrap();
        assert_eq!(p.operation(), REQUEST);
        assert_eq!(p.sender_hardware_addr(), GUEST);
        assert_eq!(p.sender_protocol_addr(), Ipv4Addr::new(192, 168, 64, 2));
        assert_eq!(p.target_hardware_addr(), MacAddr::default());
        assert_eq!(p.target_protocol_addr(), Ipv4Addr::new(192, 168, 64, 1));
    }

    #[test]
    fn emit() {
        let mut b = [0xeeu8; 28];
        let mut p = ArpPacket::new_unchecked(&mut b[..]);
        p.set_ethernet_ipv4();
        p.set_operation(REQUEST);
        p.set_sender_hardware_addr(GUEST);
        p.set_sender_protocol_addr(Ipv4Addr::new(192, 168, 64, 2));
        p.set_target_hardware_addr(MacAddr::default());
        p.set_target_protocol_addr(Ipv4Addr::new(192, 168, 64, 1));
        assert_eq!(b, REQ);
    }

    #[test]
    fn truncated_and_other_types_are_rejected() {
        for n in 0..PACKET_LEN {
            assert_eq!(ArpPacket::new_checked(&REQ[..n]), Err(Error::Truncated));
        }
        let mut b = REQ;
        write_u16(&mut b, field::PROTOCOL_TYPE, ethertype::IPV6);
        assert_eq!(ArpPacket::new_checked(&b[..]), Err(Error::Unsupported));
        let mut b = REQ;
        b[field::HARDWARE_LENGTH] = 8;
        assert_eq!(ArpPacket::new_checked(&b[..]), Err(Error::Unsupported));
    }
}
