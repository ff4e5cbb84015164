//! Where the fields the NAT reads and writes sit in each header: one
//! `field` module of byte ranges per header (offsets from the start of that
//! header, smoltcp style), plus the protocol numbers, ICMP types and flag
//! bits the packet paths test.

/// A field: its byte range from the start of its header.
pub(crate) type Field = core::ops::Range<usize>;

/// IP protocol numbers (the IPv4 protocol field).
pub(crate) mod ip_protocol {
    /// ICMP.
    pub(crate) const ICMP: u8 = 1;
    /// TCP.
    pub(crate) const TCP: u8 = 6;
    /// UDP.
    pub(crate) const UDP: u8 = 17;
}

/// The IPv4 header (RFC 791).
pub(crate) mod ipv4 {
    /// Length of a header without options.
    pub(crate) const MIN_HEADER_LEN: usize = 20;
    /// Length of a header with the most options.
    pub(crate) const MAX_HEADER_LEN: usize = 60;
    /// More-fragments flag in [`field::FLAGS_FRAGMENT`].
    pub(crate) const MORE_FRAGMENTS: u16 = 0x2000;
    /// Fragment-offset bits in [`field::FLAGS_FRAGMENT`].
    pub(crate) const FRAGMENT_OFFSET: u16 = 0x1fff;

    /// The header length in bytes that a [`field::VERSION_IHL`] byte says.
    #[inline(always)]
    pub(crate) fn header_len(version_ihl: u8) -> usize {
        usize::from(version_ihl & 0xf) * 4
    }

    /// Field offsets.
    pub(crate) mod field {
        use crate::headers::Field;
        /// Version (high nibble) and header length in 32-bit words (low nibble).
        pub(crate) const VERSION_IHL: usize = 0;
        /// Total length.
        pub(crate) const LENGTH: Field = 2..4;
        /// Identification.
        pub(crate) const IDENT: Field = 4..6;
        /// Flags and fragment offset.
        pub(crate) const FLAGS_FRAGMENT: Field = 6..8;
        /// Protocol.
        pub(crate) const PROTOCOL: usize = 9;
        /// Header checksum.
        pub(crate) const CHECKSUM: Field = 10..12;
        /// Source address.
        pub(crate) const SRC_ADDR: Field = 12..16;
        /// Destination address.
        pub(crate) const DST_ADDR: Field = 16..20;
    }
}

/// The TCP header (RFC 9293).
pub(crate) mod tcp {
    /// Length of a header without options.
    pub(crate) const MIN_HEADER_LEN: usize = 20;
    /// FIN flag.
    pub(crate) const FIN: u8 = 0x01;
    /// SYN flag.
    pub(crate) const SYN: u8 = 0x02;
    /// RST flag.
    pub(crate) const RST: u8 = 0x04;
    /// ACK flag.
    pub(crate) const ACK: u8 = 0x10;

    /// Field offsets.
    pub(crate) mod field {
        use crate::headers::Field;
        /// Source port.
        pub(crate) const SRC_PORT: Field = 0..2;
        /// Destination port.
        pub(crate) const DST_PORT: Field = 2..4;
        /// Flags (the low byte of the offset/flags word).
        pub(crate) const FLAGS: usize = 13;
        /// Checksum.
        pub(crate) const CHECKSUM: Field = 16..18;
    }
}

/// The UDP header (RFC 768).
pub(crate) mod udp {
    /// Header length.
    pub(crate) const HEADER_LEN: usize = 8;

    /// Field offsets.
    pub(crate) mod field {
        use crate::headers::Field;
        /// Source port.
        pub(crate) const SRC_PORT: Field = 0..2;
        /// Destination port.
        pub(crate) const DST_PORT: Field = 2..4;
        /// Checksum (zero: none).
        pub(crate) const CHECKSUM: Field = 6..8;
    }
}

/// The ICMP header (RFC 792).
pub(crate) mod icmp {
    /// Header length (type, code, checksum and 4 bytes that depend on the type).
    pub(crate) const HEADER_LEN: usize = 8;
    /// Echo reply.
    pub(crate) const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (an error).
    pub(crate) const DESTINATION_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub(crate) const ECHO_REQUEST: u8 = 8;
    /// Time exceeded (an error).
    pub(crate) const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem (an error).
    pub(crate) const PARAMETER_PROBLEM: u8 = 12;
    /// Bytes of the offending packet's transport header an error quotes at
    /// least (RFC 792: its first 64 bits).
    pub(crate) const ERROR_QUOTED_TRANSPORT_LEN: usize = 8;

    /// Field offsets.
    pub(crate) mod field {
        use crate::headers::Field;
        /// Type.
        pub(crate) const TYPE: usize = 0;
        /// Checksum (over the ICMP message, no pseudo-header).
        pub(crate) const CHECKSUM: Field = 2..4;
        /// Echo request/reply identifier.
        pub(crate) const ECHO_IDENT: Field = 4..6;
        /// An error's quote of the offending packet (its IPv4 header first).
        pub(crate) const ERROR_QUOTE: usize = 8;
    }
}
