//! Names for the tuples the NAT keys its tables by and rewrites packets with.
//!
//! Addresses are of the family's type `A` (`u32` for IPv4, `u128` for
//! IPv6) and ports `u16`, in host order. `protocol` is the
//! protocol index of the flow table (`PROTO_*` in `table`) except in
//! [`DatagramId`], which keeps the IP protocol number.

/// Addresses and ports of a packet, as read or as to be written (ICMP echo:
/// the identifier stands in one of the ports, see `packet::Transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FourTuple<A> {
    pub(crate) src_addr: A,
    pub(crate) src_port: u16,
    pub(crate) dst_addr: A,
    pub(crate) dst_port: u16,
}

/// A flow's key on the internal side: protocol, the guest's address and
/// port, and the destination as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FiveTuple<A> {
    pub(crate) protocol: u8,
    pub(crate) src_addr: A,
    pub(crate) src_port: u16,
    pub(crate) dst_addr: A,
    pub(crate) dst_port: u16,
}

impl<A: Copy> FiveTuple<A> {
    /// The key of `protocol` with the addresses and ports of `t`.
    #[inline(always)]
    pub(crate) fn new(protocol: u8, t: FourTuple<A>) -> FiveTuple<A> {
        FiveTuple {
            protocol,
            src_addr: t.src_addr,
            src_port: t.src_port,
            dst_addr: t.dst_addr,
            dst_port: t.dst_port,
        }
    }

    /// The ports as one word: source in the low half, destination in the
    /// high half.
    #[inline(always)]
    pub(crate) fn ports(&self) -> u32 {
        u32::from(self.src_port) | (u32::from(self.dst_port) << 16)
    }
}

/// An address and a port (or ICMP identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint<A> {
    pub(crate) addr: A,
    pub(crate) port: u16,
}

/// A protocol and an endpoint: an internal endpoint's mapping, or a
/// redirect's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EndpointKey<A> {
    pub(crate) protocol: u8,
    pub(crate) addr: A,
    pub(crate) port: u16,
}

/// A protocol and an external port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PortKey {
    pub(crate) protocol: u8,
    pub(crate) port: u16,
}

/// What names the fragments of one datagram (RFC 791, RFC 8200 section 4.5): IP protocol
/// number, addresses and identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DatagramId<A> {
    pub(crate) ip_protocol: u8,
    pub(crate) ident: u32,
    pub(crate) src_addr: A,
    pub(crate) dst_addr: A,
}
