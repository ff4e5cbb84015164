//! The address families: what differs between NAT44 and NAT66, and nothing
//! else. The engine (`translator::Engine`) and its tables, tuples, ports,
//! timeouts, caps and filters are generic over a [`Family`]; [`V4`] and
//! [`V6`] supply the address type, the IP header (parse, rewrite with or
//! without a header checksum), the ICMP flavour (types, whether its checksum
//! covers the pseudo-header) and the sources no outside host can have.
//!
//! Both traits are sealed: only this crate implements them.

use core::fmt::Debug;
use core::hash::Hash;

use crate::DropReason;
use crate::packet::{IpHeader, get8, get16, get32, put32};
use crate::table::Keys;
use crate::tuple::{DatagramId, Endpoint};
use wire::checksum::{self, Delta};
use wire::{icmpv4, icmpv6, ip_proto, ipv4, ipv6};

mod sealed {
    pub(crate) trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u128 {}
    impl Sealed for super::V4 {}
    impl Sealed for super::V6 {}
}

/// An address as the tables hold it: `u32` (IPv4) or `u128` (IPv6), host order.
pub(crate) trait Addr:
    sealed::Sealed + Copy + Eq + Ord + Hash + Debug + Default + Send + Sync + 'static
{
    /// The unspecified address.
    const ZERO: Self;
    /// The address as a flow-table slot holds it: IPv4 as it is, IPv6 as
    /// two `u64` (8-byte aligned, where a `u128` is 16: the slot packs
    /// tighter).
    type Stored: Copy + Eq + Debug + Send + Sync + 'static;
    /// [`Addr::ZERO`] stored.
    const STORED_ZERO: Self::Stored;
    /// The address as a slot holds it.
    fn store(self) -> Self::Stored;
    /// An address a slot holds.
    fn load(s: Self::Stored) -> Self;
    /// A flow's real remote endpoint as its slot holds it: IPv4 in the
    /// slot (8 bytes that fit its 32), IPv6 not at all (`()`): it is the
    /// destination the guest wrote but for redirected flows, whose remote
    /// is kept in `Ports::redirected` (see [`crate::table::remote_of`]).
    type Remote: Copy + Eq + Debug + Send + Sync + 'static;
    /// [`Addr::Remote`] of an unused slot.
    const NO_REMOTE: Self::Remote;
    /// The remote endpoint `e` as a slot holds it.
    fn remote_slot(e: Endpoint<Self>) -> Self::Remote;
    /// The remote endpoint a slot holds, if the family keeps it there.
    fn remote_in_slot(r: Self::Remote) -> Option<Endpoint<Self>>;
    /// Whether the pairs (`a`, `b`) and (`c`, `d`) are equal (IPv4: one
    /// 64-bit compare).
    fn pair_eq(a: Self, b: Self, c: Self, d: Self) -> bool;
    /// The keyed hash of a key with these addresses and `rest` (ports and
    /// protocol in one word).
    fn hash(keys: &Keys, src: Self, dst: Self, rest: u64) -> u32;
    /// Records the change `old` → `new` in a checksum delta.
    fn delta(d: &mut Delta, old: Self, new: Self);
    /// The address widened to 128 bits (for family-neutral bookkeeping).
    fn wide(self) -> u128;
    /// Whether `self` is in the prefix `net`/`mask`.
    fn in_prefix(self, net: Self, mask: Self) -> bool;
    /// `a & b`.
    fn and(a: Self, b: Self) -> Self;
}

impl Addr for u32 {
    const ZERO: u32 = 0;
    type Stored = u32;
    const STORED_ZERO: u32 = 0;
    #[inline(always)]
    fn store(self) -> u32 {
        self
    }
    #[inline(always)]
    fn load(s: u32) -> u32 {
        s
    }
    type Remote = Endpoint<u32>;
    const NO_REMOTE: Endpoint<u32> = Endpoint { addr: 0, port: 0 };
    #[inline(always)]
    fn remote_slot(e: Endpoint<u32>) -> Endpoint<u32> {
        e
    }
    #[inline(always)]
    fn remote_in_slot(r: Endpoint<u32>) -> Option<Endpoint<u32>> {
        Some(r)
    }
    #[inline(always)]
    fn pair_eq(a: u32, b: u32, c: u32, d: u32) -> bool {
        (u64::from(a) | (u64::from(b) << 32)) == (u64::from(c) | (u64::from(d) << 32))
    }
    #[inline(always)]
    fn hash(keys: &Keys, src: u32, dst: u32, rest: u64) -> u32 {
        keys.mix(u64::from(src) | (u64::from(dst) << 32), rest)
    }
    #[inline(always)]
    fn delta(d: &mut Delta, old: u32, new: u32) {
        d.dword(old, new);
    }
    #[inline(always)]
    fn wide(self) -> u128 {
        u128::from(self)
    }
    #[inline(always)]
    fn in_prefix(self, net: u32, mask: u32) -> bool {
        self & mask == net
    }
    fn and(a: u32, b: u32) -> u32 {
        a & b
    }
}

impl Addr for u128 {
    const ZERO: u128 = 0;
    type Stored = [u64; 2];
    const STORED_ZERO: [u64; 2] = [0; 2];
    #[inline(always)]
    fn store(self) -> [u64; 2] {
        [self as u64, (self >> 64) as u64]
    }
    #[inline(always)]
    fn load(s: [u64; 2]) -> u128 {
        u128::from(s[0]) | (u128::from(s[1]) << 64)
    }
    type Remote = ();
    const NO_REMOTE: () = ();
    #[inline(always)]
    fn remote_slot(_: Endpoint<u128>) {}
    #[inline(always)]
    fn remote_in_slot((): ()) -> Option<Endpoint<u128>> {
        None
    }
    #[inline(always)]
    fn pair_eq(a: u128, b: u128, c: u128, d: u128) -> bool {
        a == c && b == d
    }
    #[inline(always)]
    fn hash(keys: &Keys, src: u128, dst: u128, rest: u64) -> u32 {
        keys.mix128(src, dst, rest)
    }
    #[inline(always)]
    fn delta(d: &mut Delta, old: u128, new: u128) {
        d.addr(old.into(), new.into());
    }
    #[inline(always)]
    fn wide(self) -> u128 {
        self
    }
    #[inline(always)]
    fn in_prefix(self, net: u128, mask: u128) -> bool {
        self & mask == net
    }
    fn and(a: u128, b: u128) -> u128 {
        a & b
    }
}

/// An address family: IPv4 ([`V4`]) or IPv6 ([`V6`]).
pub(crate) trait Family:
    sealed::Sealed + Copy + Debug + Default + Eq + Hash + Send + Sync + 'static
{
    /// The address type.
    type Addr: Addr;
    /// The IP protocol number of its ICMP.
    const ICMP: u8;
    /// ICMP echo request and reply types.
    const ECHO_REQUEST: u8;
    /// See [`Family::ECHO_REQUEST`].
    const ECHO_REPLY: u8;
    /// Whether the ICMP checksum covers the pseudo-header (ICMPv6, RFC 4443
    /// section 2.3), so address changes feed it.
    const ICMP_PSEUDO: bool;
    /// Whether a zero UDP checksum means "none" and stays zero (IPv4, RFC 768). IPv6 has no
    /// such value (RFC 8200 section 8.1): its zero field is updated like any other, so a
    /// checksum that was valid (one's complement's other zero) stays valid.
    const UDP_ZERO_IS_NONE: bool;
    /// Bytes of the quoted packet's transport header an ICMP error must carry.
    const ERROR_QUOTED_DATA_LEN: usize = icmpv4::ERROR_QUOTED_DATA_LEN;

    /// Validates the IP header at the start of `p`.
    fn parse(p: &[u8]) -> Result<IpHeader<Self::Addr>, DropReason>;
    /// [`Family::parse`] calling `read_ahead` as soon as the version
    /// nibble is this family's (a packet of the other family leaves first).
    fn parse_then(p: &[u8], read_ahead: impl FnOnce()) -> Result<IpHeader<Self::Addr>, DropReason>;
    /// Writes `src` and `dst` into the IP header of `p` (fixing an IPv4
    /// header checksum by `d`, the addresses' delta) and returns the
    /// bytes from offset `header_len` (the transport header), if present.
    fn write_addrs(
        p: &mut [u8],
        header_len: usize,
        src: Self::Addr,
        dst: Self::Addr,
        d: Delta,
    ) -> Option<&mut [u8]>;
    /// Whether ICMP type `t` is an error the NAT translates.
    fn is_icmp_error(t: u8) -> bool;
    /// Reads an address at `off` (0 out of bounds).
    fn read_addr(p: &[u8], off: usize) -> Self::Addr;
    /// Writes an address at `off` (nothing out of bounds).
    fn write_addr(p: &mut [u8], off: usize, a: Self::Addr);
    /// Offsets of the source and destination address in its IP header.
    const SRC_AT: usize;
    /// See [`Family::SRC_AT`].
    const DST_AT: usize;
    /// Offset of the protocol (IPv6: next header) byte.
    const PROTOCOL_AT: usize;
    /// The transport header's offset as the first byte of an unvalidated
    /// packet says (read-ahead only).
    fn peek_l4(p: &[u8]) -> usize;
    /// Parses the IP header of a packet quoted in an ICMP error at `at`
    /// (up to `end`): its header length, protocol, addresses. `None` if it
    /// is not one of this family, is truncated before its transport
    /// header's first `ERROR_QUOTED_DATA_LEN` bytes, is a later fragment
    /// or (IPv4) has a wrong header checksum.
    fn parse_quoted(p: &[u8], at: usize, end: usize) -> Option<IpHeader<Self::Addr>>;
    /// Writes the quoted header's addresses and fixes its header checksum
    /// (IPv4); returns the delta of the addresses (for the quoted transport
    /// checksum) and of every word changed (for the ICMP checksum around it).
    fn rewrite_quoted(
        p: &mut [u8],
        at: usize,
        old: (Self::Addr, Self::Addr),
        new: (Self::Addr, Self::Addr),
    ) -> (Delta, Delta);
    /// Whether an ICMP error `p` (outer header `h`) has a valid ICMP
    /// checksum (ICMPv6: with its pseudo-header) and its quoted header,
    /// from `at` to `l4`, a valid header checksum (IPv4 only).
    fn icmp_error_checksums_ok(p: &[u8], h: &IpHeader<Self::Addr>, at: usize, l4: usize) -> bool;
    /// Whether no outside host can have `a` as its source (apart from the
    /// internal network and the external address, checked by the caller).
    fn is_martian(a: Self::Addr) -> bool;
    /// A mask of `len` leading one bits (the caller checked `len` fits).
    fn mask(len: u8) -> Self::Addr;
    /// The datagram of a first fragment (more-fragments set, offset 0), read
    /// before validation: the path validates the header itself (IPv6: the
    /// extension headers walked, only for a packet that has some).
    fn first_fragment(p: &[u8]) -> Option<DatagramId<Self::Addr>>;
    /// Bits in an address.
    const BITS: u8;
    /// The internal network, its prefix length and the external address
    /// of this family in `c`.
    fn config_addrs(c: &crate::NatConfig) -> (Self::Addr, u8, Self::Addr);
}

/// IPv4: NAT44.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct V4;

/// IPv6: NAT66.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) struct V6;

impl Family for V4 {
    type Addr = u32;
    const ICMP: u8 = ip_proto::ICMP;
    const ECHO_REQUEST: u8 = icmpv4::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmpv4::ECHO_REPLY;
    const ICMP_PSEUDO: bool = false;
    const UDP_ZERO_IS_NONE: bool = true;
    const SRC_AT: usize = ipv4::field::SRC_ADDR.start;
    const DST_AT: usize = ipv4::field::DST_ADDR.start;
    const PROTOCOL_AT: usize = ipv4::field::PROTOCOL;

    #[inline(always)]
    fn parse(p: &[u8]) -> Result<IpHeader<u32>, DropReason> {
        crate::packet::parse(p)
    }

    #[inline(always)]
    fn parse_then(p: &[u8], read_ahead: impl FnOnce()) -> Result<IpHeader<u32>, DropReason> {
        crate::packet::parse_then(p, read_ahead)
    }

    #[inline(always)]
    fn write_addrs(
        p: &mut [u8],
        header_len: usize,
        src: u32,
        dst: u32,
        d: Delta,
    ) -> Option<&mut [u8]> {
        let (ip, rest) = p.split_first_chunk_mut::<{ ipv4::HEADER_LEN }>()?;
        ip[ipv4::field::SRC_ADDR].copy_from_slice(&src.to_be_bytes());
        ip[ipv4::field::DST_ADDR].copy_from_slice(&dst.to_be_bytes());
        let c = d.apply(get16(ip, ipv4::field::CHECKSUM.start));
        ip[ipv4::field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
        rest.get_mut(header_len.saturating_sub(ipv4::HEADER_LEN)..)
    }

    #[inline(always)]
    fn is_icmp_error(t: u8) -> bool {
        matches!(
            t,
            icmpv4::DESTINATION_UNREACHABLE | icmpv4::TIME_EXCEEDED | icmpv4::PARAMETER_PROBLEM
        )
    }

    #[inline(always)]
    fn read_addr(p: &[u8], off: usize) -> u32 {
        get32(p, off)
    }

    #[inline(always)]
    fn write_addr(p: &mut [u8], off: usize, a: u32) {
        put32(p, off, a);
    }

    #[inline(always)]
    fn peek_l4(p: &[u8]) -> usize {
        crate::packet::ipv4_header_len(get8(p, ipv4::field::VERSION_IHL))
    }

    fn parse_quoted(p: &[u8], at: usize, end: usize) -> Option<IpHeader<u32>> {
        use ipv4::field;
        let v = get8(p, at + field::VERSION_IHL);
        if end < at + ipv4::HEADER_LEN || v >> 4 != 4 {
            return None;
        }
        let header_len = crate::packet::ipv4_header_len(v);
        let l4 = at + header_len;
        if header_len < ipv4::HEADER_LEN
            || end < l4 + Self::ERROR_QUOTED_DATA_LEN
            || get16(p, at + field::FLAGS_FRAGMENT.start) & ipv4::FRAGMENT_OFFSET != 0
        {
            return None;
        }
        Some(IpHeader {
            header_len,
            total_len: end - at,
            protocol: get8(p, at + field::PROTOCOL),
            src_addr: get32(p, at + field::SRC_ADDR.start),
            dst_addr: get32(p, at + field::DST_ADDR.start),
            flags_fragment: 0,
            ident: 0,
        })
    }

    fn rewrite_quoted(p: &mut [u8], at: usize, old: (u32, u32), new: (u32, u32)) -> (Delta, Delta) {
        use ipv4::field;
        let mut ed = Delta::default();
        ed.dword(old.0, new.0);
        ed.dword(old.1, new.1);
        put32(p, at + field::SRC_ADDR.start, new.0);
        put32(p, at + field::DST_ADDR.start, new.1);
        let c = get16(p, at + field::CHECKSUM.start);
        let c2 = ed.apply(c);
        crate::packet::put16(p, at + field::CHECKSUM.start, c2);
        let mut icmp = ed;
        icmp.word(c, c2);
        (ed, icmp)
    }

    fn icmp_error_checksums_ok(p: &[u8], h: &IpHeader<u32>, at: usize, l4: usize) -> bool {
        let icmp = p
            .get(h.header_len..h.total_len)
            .map(|b| checksum::sum(b, 0));
        let quoted = p.get(at..l4).map(|b| checksum::sum(b, 0));
        matches!((icmp, quoted), (Some(a), Some(b)) if checksum::fold(a) == 0xffff && checksum::fold(b) == 0xffff)
    }

    #[inline(always)]
    fn is_martian(a: u32) -> bool {
        crate::settings::MARTIAN_FIRST_OCTET[usize::from((a >> 24) as u8)]
    }

    const BITS: u8 = 32;
    #[inline(always)]
    fn first_fragment(p: &[u8]) -> Option<DatagramId<u32>> {
        use ipv4::field;
        let flags = get16(p, field::FLAGS_FRAGMENT.start);
        (flags & (ipv4::MORE_FRAGMENTS | ipv4::FRAGMENT_OFFSET) == ipv4::MORE_FRAGMENTS).then(
            || DatagramId {
                ip_protocol: get8(p, field::PROTOCOL),
                src_addr: get32(p, field::SRC_ADDR.start),
                dst_addr: get32(p, field::DST_ADDR.start),
                ident: u32::from(get16(p, field::IDENT.start)),
            },
        )
    }
    fn config_addrs(c: &crate::NatConfig) -> (u32, u8, u32) {
        (
            u32::from(c.internal_net),
            c.internal_prefix_len,
            u32::from(c.external_addr),
        )
    }
    fn mask(len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len.min(32)))
        }
    }
}

impl Family for V6 {
    type Addr = u128;
    const ICMP: u8 = ip_proto::ICMPV6;
    const ECHO_REQUEST: u8 = icmpv6::ECHO_REQUEST;
    const ECHO_REPLY: u8 = icmpv6::ECHO_REPLY;
    const ICMP_PSEUDO: bool = true;
    const UDP_ZERO_IS_NONE: bool = false;
    const SRC_AT: usize = ipv6::field::SRC_ADDR.start;
    const DST_AT: usize = ipv6::field::DST_ADDR.start;
    const PROTOCOL_AT: usize = ipv6::field::NEXT_HEADER;

    #[inline(always)]
    fn parse(p: &[u8]) -> Result<IpHeader<u128>, DropReason> {
        crate::packet::parse6(p)
    }

    #[inline(always)]
    fn parse_then(p: &[u8], read_ahead: impl FnOnce()) -> Result<IpHeader<u128>, DropReason> {
        crate::packet::parse6_then(p, read_ahead)
    }

    #[inline(always)]
    fn write_addrs(
        p: &mut [u8],
        header_len: usize,
        src: u128,
        dst: u128,
        _d: Delta,
    ) -> Option<&mut [u8]> {
        let (ip, rest) = p.split_first_chunk_mut::<{ ipv6::HEADER_LEN }>()?;
        ip[ipv6::field::SRC_ADDR].copy_from_slice(&src.to_be_bytes());
        ip[ipv6::field::DST_ADDR].copy_from_slice(&dst.to_be_bytes());
        rest.get_mut(header_len.saturating_sub(ipv6::HEADER_LEN)..)
    }

    #[inline(always)]
    fn is_icmp_error(t: u8) -> bool {
        matches!(
            t,
            icmpv6::DESTINATION_UNREACHABLE
                | icmpv6::PACKET_TOO_BIG
                | icmpv6::TIME_EXCEEDED
                | icmpv6::PARAMETER_PROBLEM
        )
    }

    #[inline(always)]
    fn read_addr(p: &[u8], off: usize) -> u128 {
        match p.get(off..off.wrapping_add(16)) {
            Some(s) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(s);
                u128::from_be_bytes(b)
            }
            None => 0,
        }
    }

    #[inline(always)]
    fn write_addr(p: &mut [u8], off: usize, a: u128) {
        if let Some(s) = p.get_mut(off..off.wrapping_add(16)) {
            s.copy_from_slice(&a.to_be_bytes());
        }
    }

    #[inline(always)]
    fn peek_l4(_p: &[u8]) -> usize {
        ipv6::HEADER_LEN
    }

    fn parse_quoted(p: &[u8], at: usize, end: usize) -> Option<IpHeader<u128>> {
        use ipv6::field;
        let q = p.get(at..end)?;
        if q.len() < ipv6::HEADER_LEN || get8(q, 0) >> 4 != 6 {
            return None;
        }
        let mut h = IpHeader {
            header_len: ipv6::HEADER_LEN,
            total_len: q.len(),
            protocol: get8(q, field::NEXT_HEADER),
            src_addr: Self::read_addr(q, field::SRC_ADDR.start),
            dst_addr: Self::read_addr(q, field::DST_ADDR.start),
            flags_fragment: 0,
            ident: 0,
        };
        if crate::packet::is_extension(h.protocol) {
            let e = crate::packet::walk_extensions(q, h.protocol, h.total_len).ok()?;
            h.header_len = e.header_len;
            h.protocol = e.protocol;
            h.flags_fragment = e.flags_fragment;
            h.ident = e.ident;
        }
        if q.len() < h.header_len + Self::ERROR_QUOTED_DATA_LEN
            || h.flags_fragment & ipv4::FRAGMENT_OFFSET != 0
        {
            return None;
        }
        Some(h)
    }

    fn rewrite_quoted(
        p: &mut [u8],
        at: usize,
        old: (u128, u128),
        new: (u128, u128),
    ) -> (Delta, Delta) {
        let mut ed = Delta::default();
        u128::delta(&mut ed, old.0, new.0);
        u128::delta(&mut ed, old.1, new.1);
        Self::write_addr(p, at + Self::SRC_AT, new.0);
        Self::write_addr(p, at + Self::DST_AT, new.1);
        (ed, ed)
    }

    fn icmp_error_checksums_ok(p: &[u8], h: &IpHeader<u128>, _at: usize, _l4: usize) -> bool {
        let Some(icmp) = p.get(h.header_len..h.total_len) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_v6(
            h.src_addr.into(),
            h.dst_addr.into(),
            ip_proto::ICMPV6,
            icmp.len() as u32,
        );
        checksum::fold(checksum::sum(icmp, pseudo)) == 0xffff
    }

    #[inline(always)]
    fn is_martian(a: u128) -> bool {
        // Unspecified, loopback (and the rest of ::/127), multicast ff00::/8,
        // link-local fe80::/10 (RFC 4291, RFC 6890).
        a <= 1 || (a >> 120) == 0xff || (a >> 118) == (0xfe80 >> 6)
    }

    const BITS: u8 = 128;
    #[inline(always)]
    fn first_fragment(p: &[u8]) -> Option<DatagramId<u128>> {
        // Only a packet with extension headers can be a fragment.
        if !crate::packet::is_extension(get8(p, ipv6::field::NEXT_HEADER)) {
            return None;
        }
        first_fragment6(p)
    }
    fn config_addrs(c: &crate::NatConfig) -> (u128, u8, u128) {
        (
            u128::from(c.internal_net6),
            c.internal_prefix_len6,
            u128::from(c.external_addr6),
        )
    }
    fn mask(len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(len.min(128)))
        }
    }
}

/// [`V6::first_fragment`] of a packet with extension headers.
#[cold]
fn first_fragment6(p: &[u8]) -> Option<DatagramId<u128>> {
    let h = crate::packet::parse6(p).ok()?;
    (h.flags_fragment & (ipv4::MORE_FRAGMENTS | ipv4::FRAGMENT_OFFSET) == ipv4::MORE_FRAGMENTS)
        .then_some(DatagramId {
            ip_protocol: h.protocol,
            ident: h.ident,
            src_addr: h.src_addr,
            dst_addr: h.dst_addr,
        })
}
