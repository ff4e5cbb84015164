//! Neighbor Discovery (RFC 4861): the fixed parts of its messages after the ICMPv6 header
//! ([`field`]), the option types, and a checked walk over the options ([`NdpOptions`]).
//!
//! The messages are ICMPv6 messages ([`crate::Icmpv6Packet`], types
//! [`crate::icmpv6::ROUTER_SOLICITATION`] .. [`crate::icmpv6::NEIGHBOR_ADVERTISEMENT`]); their
//! offsets here count from the start of the ICMPv6 header.
//!
//! ```
//! use wire::ndp::{self, NdpOptions};
//!
//! // A source link-layer address option, then one of length 0 (invalid, RFC 4861 4.6).
//! let opts = [1, 1, 2, 0, 0, 0, 0, 1, 3, 0];
//! let mut it = NdpOptions::new(&opts);
//! let o = it.next().unwrap().unwrap();
//! assert_eq!(o.kind(), ndp::SOURCE_LINK_LAYER_ADDRESS);
//! assert_eq!(o.link_layer_addr().unwrap().octets(), [2, 0, 0, 0, 0, 1]);
//! assert_eq!(it.next(), Some(Err(wire::Error::Malformed)));
//! assert_eq!(it.next(), None);
//! ```

use crate::{Error, MacAddr};

/// Option type: source link-layer address.
pub const SOURCE_LINK_LAYER_ADDRESS: u8 = 1;
/// Option type: target link-layer address.
pub const TARGET_LINK_LAYER_ADDRESS: u8 = 2;
/// Option type: prefix information.
pub const PREFIX_INFORMATION: u8 = 3;
/// Option type: MTU.
pub const MTU: u8 = 5;
/// Option type: recursive DNS server (RFC 8106).
pub const RECURSIVE_DNS_SERVER: u8 = 25;

/// The unit of an option's length field (bytes).
pub const OPTION_UNIT: usize = 8;

/// Router Advertisement flag: managed address configuration (M).
pub const RA_MANAGED: u8 = 0x80;
/// Router Advertisement flag: other configuration (O; stateless DHCPv6).
pub const RA_OTHER: u8 = 0x40;
/// Neighbor Advertisement flag: router (R).
pub const NA_ROUTER: u8 = 0x80;
/// Neighbor Advertisement flag: solicited (S).
pub const NA_SOLICITED: u8 = 0x40;
/// Neighbor Advertisement flag: override (O).
pub const NA_OVERRIDE: u8 = 0x20;
/// Prefix information flag: on-link (L).
pub const PREFIX_ON_LINK: u8 = 0x80;
/// Prefix information flag: autonomous address configuration (A; SLAAC, RFC 4862).
pub const PREFIX_AUTONOMOUS: u8 = 0x40;

/// The length of a Router Solicitation before its options.
pub const ROUTER_SOLICITATION_LEN: usize = 8;
/// The length of a Router Advertisement before its options.
pub const ROUTER_ADVERTISEMENT_LEN: usize = 16;
/// The length of a Neighbor Solicitation or Advertisement before its options.
pub const NEIGHBOR_MESSAGE_LEN: usize = 24;
/// The length of a link-layer address option for Ethernet.
pub const LINK_LAYER_OPTION_LEN: usize = 8;
/// The length of an MTU option.
pub const MTU_OPTION_LEN: usize = 8;
/// The length of a prefix information option.
pub const PREFIX_OPTION_LEN: usize = 32;
/// The length of a recursive DNS server option with one address.
pub const RDNSS_OPTION_LEN: usize = 24;

/// Neighbor Discovery field offsets from the start of the ICMPv6 header (`RA_*`, `NEIGHBOR_*`)
/// or of an option (`OPTION_*`, `PREFIX_*`, `RDNSS_*`).
pub mod field {
    use crate::Field;

    /// Router Advertisement: current hop limit.
    pub const RA_CUR_HOP_LIMIT: usize = 4;
    /// Router Advertisement: flags (M, O).
    pub const RA_FLAGS: usize = 5;
    /// Router Advertisement: router lifetime (seconds).
    pub const RA_ROUTER_LIFETIME: Field = 6..8;
    /// Router Advertisement: reachable time (milliseconds).
    pub const RA_REACHABLE_TIME: Field = 8..12;
    /// Router Advertisement: retransmission timer (milliseconds).
    pub const RA_RETRANS_TIMER: Field = 12..16;
    /// Neighbor Advertisement: flags (R, S, O) in the first byte after the ICMPv6 header's
    /// first word.
    pub const NA_FLAGS: usize = 4;
    /// Neighbor Solicitation and Advertisement: the target address.
    pub const NEIGHBOR_TARGET: Field = 8..24;
    /// An option's type.
    pub const OPTION_TYPE: usize = 0;
    /// An option's length in units of 8 bytes (never 0).
    pub const OPTION_LENGTH: usize = 1;
    /// A link-layer address option's address.
    pub const OPTION_LINK_LAYER_ADDR: Field = 2..8;
    /// An MTU option's MTU.
    pub const MTU_VALUE: Field = 4..8;
    /// Prefix information: prefix length.
    pub const PREFIX_LENGTH: usize = 2;
    /// Prefix information: flags (L, A).
    pub const PREFIX_FLAGS: usize = 3;
    /// Prefix information: valid lifetime (seconds).
    pub const PREFIX_VALID_LIFETIME: Field = 4..8;
    /// Prefix information: preferred lifetime (seconds).
    pub const PREFIX_PREFERRED_LIFETIME: Field = 8..12;
    /// Prefix information: the prefix.
    pub const PREFIX_ADDR: Field = 16..32;
    /// Recursive DNS server: lifetime (seconds).
    pub const RDNSS_LIFETIME: Field = 4..8;
    /// Recursive DNS server: the first address.
    pub const RDNSS_ADDR: Field = 8..24;
}

/// One option of a Neighbor Discovery message: its whole bytes, header included.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NdpOption<'a> {
    bytes: &'a [u8],
}

impl<'a> NdpOption<'a> {
    /// The option type ([`SOURCE_LINK_LAYER_ADDRESS`], ...).
    pub fn kind(&self) -> u8 {
        self.bytes[field::OPTION_TYPE]
    }

    /// The whole option, type and length included (a multiple of 8 bytes).
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The Ethernet address of a link-layer address option (either kind), if the option is
    /// one and is 8 bytes long.
    pub fn link_layer_addr(&self) -> Option<MacAddr> {
        let kind = self.kind();
        if (kind != SOURCE_LINK_LAYER_ADDRESS && kind != TARGET_LINK_LAYER_ADDRESS)
            || self.bytes.len() != LINK_LAYER_OPTION_LEN
        {
            return None;
        }
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.bytes[field::OPTION_LINK_LAYER_ADDR]);
        Some(MacAddr(m))
    }
}

/// The options of a Neighbor Discovery message (the bytes after its fixed part), walked with
/// the checks of RFC 4861 4.6: every option has a non-zero length and fits the message.
/// Yields `Err(Error::Malformed)` for a zero length and `Err(Error::Truncated)` for an
/// option that runs past the end, once, and then ends.
#[derive(Clone, Debug)]
pub struct NdpOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdpOptions<'a> {
    /// The options in `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Self {
        NdpOptions { rest: bytes }
    }

    /// Whether every option is well formed (the walk ends without an error).
    pub fn valid(bytes: &'a [u8]) -> bool {
        Self::new(bytes).all(|o| o.is_ok())
    }
}

impl<'a> Iterator for NdpOptions<'a> {
    type Item = Result<NdpOption<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let units = match self.rest.get(field::OPTION_LENGTH) {
            Some(&u) => usize::from(u),
            None => {
                self.rest = &[];
                return Some(Err(Error::Truncated));
            }
        };
        if units == 0 {
            self.rest = &[];
            return Some(Err(Error::Malformed));
        }
        let len = units * OPTION_UNIT;
        if len > self.rest.len() {
            self.rest = &[];
            return Some(Err(Error::Truncated));
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(Ok(NdpOption { bytes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_options_and_stops_at_the_first_bad_one() {
        let opts = [
            1, 1, 2, 0, 0, 0, 0, 1, // source link-layer address
            5, 1, 0, 0, 0, 0, 5, 220, // MTU 1500
        ];
        let kinds: [u8; 2] = {
            let mut it = NdpOptions::new(&opts).map(|o| o.unwrap().kind());
            [it.next().unwrap(), it.next().unwrap()]
        };
        assert_eq!(kinds, [SOURCE_LINK_LAYER_ADDRESS, MTU]);
        assert!(NdpOptions::valid(&opts));
        assert!(NdpOptions::valid(&[]));
        // Length 0, a lone type byte, a length past the end.
        assert!(!NdpOptions::valid(&[1, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!NdpOptions::valid(&[1]));
        assert!(!NdpOptions::valid(&[1, 2, 0, 0, 0, 0, 0, 0]));
        let mut it = NdpOptions::new(&[1, 2, 0, 0]);
        assert_eq!(it.next(), Some(Err(Error::Truncated)));
        assert_eq!(it.next(), None);
    }

    #[test]
    fn link_layer_addr_only_of_link_layer_options() {
        let sll = [1, 1, 2, 0, 0, 0, 0, 1];
        let o = NdpOptions::new(&sll).next().unwrap().unwrap();
        assert_eq!(o.link_layer_addr(), Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(o.bytes(), &sll);
        let mtu = [5, 1, 0, 0, 0, 0, 5, 220];
        let o = NdpOptions::new(&mtu).next().unwrap().unwrap();
        assert_eq!(o.link_layer_addr(), None);
        // A 16-byte link-layer option is not Ethernet's.
        let long = [2, 2, 2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0];
        let o = NdpOptions::new(&long).next().unwrap().unwrap();
        assert_eq!(o.link_layer_addr(), None);
    }
}
