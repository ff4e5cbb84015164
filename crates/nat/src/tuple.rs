//! Names for the tuples the NAT keys its tables by and rewrites packets with.
//!
//! Addresses are `u32` and ports `u16` in host order. `protocol` is the
//! protocol index of the flow table (`PROTO_*` in `table`) except in
//! [`DatagramId`], which keeps the IP protocol number.

/// Addresses and ports of a packet, as read or as to be written (ICMP echo:
/// the identifier stands in one of the ports, see `packet::Transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FourTuple {
    pub(crate) src_addr: u32,
    pub(crate) src_port: u16,
    pub(crate) dst_addr: u32,
    pub(crate) dst_port: u16,
}

/// A flow's key on the internal side: protocol, the guest's address and
/// port, and the destination as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FiveTuple {
    pub(crate) protocol: u8,
    pub(crate) src_addr: u32,
    pub(crate) src_port: u16,
    pub(crate) dst_addr: u32,
    pub(crate) dst_port: u16,
}

impl FiveTuple {
    /// The key of `protocol` with the addresses and ports of `t`.
    #[inline(always)]
    pub(crate) fn new(protocol: u8, t: FourTuple) -> FiveTuple {
        FiveTuple {
            protocol,
            src_addr: t.src_addr,
            src_port: t.src_port,
            dst_addr: t.dst_addr,
            dst_port: t.dst_port,
        }
    }

    /// The addresses as one word: source in the low half, destination in
    /// the high half (the order of `Flow`'s fields, so a flow's are one
    /// load).
    #[inline(always)]
    pub(crate) fn addrs(&self) -> u64 {
        u64::from(self.src_addr) | (u64::from(self.dst_addr) << 32)
    }

    /// The ports as one word: source in the low half, destination in the
    /// high half (as [`FiveTuple::addrs`]).
    #[inline(always)]
    pub(crate) fn ports(&self) -> u32 {
        u32::from(self.src_port) | (u32::from(self.dst_port) << 16)
    }
}

/// An address and a port (or ICMP identifier).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Endpoint {
    pub(crate) addr: u32,
    pub(crate) port: u16,
}

/// A protocol and an endpoint: an internal endpoint's mapping, or a
/// redirect's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct EndpointKey {
    pub(crate) protocol: u8,
    pub(crate) addr: u32,
    pub(crate) port: u16,
}

/// A protocol and an external port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PortKey {
    pub(crate) protocol: u8,
    pub(crate) port: u16,
}

/// What names the fragments of one IPv4 datagram (RFC 791): IP protocol
/// number, addresses and identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct DatagramId {
    pub(crate) ip_protocol: u8,
    pub(crate) ident: u16,
    pub(crate) src_addr: u32,
    pub(crate) dst_addr: u32,
}
