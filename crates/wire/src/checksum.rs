//! The Internet checksum (RFC 1071), pseudo-header sums, and incremental update (RFC 1624).
//!
//! A checksum is computed in three steps: [`sum`] adds the data as big-endian 16-bit words into
//! a wide accumulator (several calls chain through `initial`), [`fold`] reduces the sum to 16
//! bits with end-around carry, and [`finish`] complements it. [`checksum`] does all three.
//! Data is verified by summing it *with* its checksum field: the folded sum is `0xffff`.
//!
//! ```
//! use core::net::Ipv4Addr;
//! use wire::checksum;
//!
//! // RFC 1071 section 3's example.
//! assert_eq!(checksum::checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0x220d);
//! // A TCP/UDP checksum starts from the pseudo-header.
//! let pseudo = checksum::pseudo_header_v4(
//!     Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 17, 8);
//! let segment = [0x13, 0x88, 0x00, 0x35, 0x00, 0x08, 0x00, 0x00];
//! let c = checksum::finish(checksum::sum(&segment, pseudo));
//! // Rewriting a port needs no pass over the data (RFC 1624).
//! let mut moved = segment;
//! moved[0..2].copy_from_slice(&6000u16.to_be_bytes());
//! assert_eq!(
//!     checksum::update_u16(c, 5000, 6000),
//!     checksum::finish(checksum::sum(&moved, pseudo)),
//! );
//! ```
//!
//! Sums are `u64`. [`sum`] folds `initial` before it starts and each gibibyte of data to 16
//! bits, so any slice and any `initial` are safe; callers that add sums themselves may add up
//! to 2³¹ sums and pseudo-header values before folding.

use core::net::{Ipv4Addr, Ipv6Addr};

/// Adds `data`, taken as big-endian 16-bit words (an odd last byte padded with a zero byte),
/// to the one's-complement sum `initial`. The result is not folded nor complemented.
///
/// When chaining calls, only the last piece may have an odd length (a word cannot straddle
/// two calls).
#[inline]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    // Each block adds at most 0xffff.
    let mut acc = fold32(initial);
    for block in data.chunks(BLOCK) {
        acc += sum_block(block);
    }
    acc
}

/// Folds a wide one's-complement sum to 16 bits (end-around carry), not complemented.
#[inline(always)]
pub const fn fold(sum: u64) -> u16 {
    // Halves added with an end-around carry (2³² ≡ 2¹⁶ ≡ 1): an add and an
    // add-with-carry per step, where shifts and masks took three steps more.
    // Adding the carry back cannot carry again (a sum that carried is at
    // most 2ⁿ − 2), and the result is 0 only for a zero sum, as before.
    let (s, c) = (sum as u32).overflowing_add((sum >> 32) as u32);
    let s = s + c as u32;
    let (t, c) = (s as u16).overflowing_add((s >> 16) as u16);
    t + c as u16
}

/// The checksum field value for a wide sum: `!fold(sum)`.
#[inline(always)]
pub const fn finish(sum: u64) -> u16 {
    !fold(sum)
}

/// The Internet checksum of `data` (RFC 1071): `finish(sum(data, 0))`.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    finish(sum(data, 0))
}

/// The sum of the IPv4 pseudo-header (RFC 768, RFC 9293): source and destination address,
/// protocol, and the transport length (header and payload). Start [`sum`] of the segment from it.
#[inline(always)]
pub const fn pseudo_header_v4(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, length: u16) -> u64 {
    src.to_bits() as u64 + dst.to_bits() as u64 + protocol as u64 + length as u64
}

/// The sum of the IPv6 pseudo-header (RFC 8200 section 8.1): source and destination address,
/// the upper-layer packet length and the next header value.
#[inline(always)]
pub const fn pseudo_header_v6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u64 {
    sum_u128(src.to_bits()) + sum_u128(dst.to_bits()) + next_header as u64 + length as u64
}

/// A checksum after one 16-bit word it covers changed from `old` to `new` (RFC 1624 eqn. 3).
#[inline(always)]
pub fn update_u16(checksum: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::new();
    d.word(old, new);
    d.apply(checksum)
}

/// A checksum after an aligned 32-bit value it covers (two words, e.g. an IPv4 address or a
/// TCP sequence number) changed from `old` to `new`.
#[inline(always)]
pub fn update_u32(checksum: u16, old: u32, new: u32) -> u16 {
    let mut d = Delta::new();
    d.dword(old, new);
    d.apply(checksum)
}

/// A checksum after an IPv6 address it covers (directly or through the pseudo-header)
/// changed from `old` to `new`.
#[inline(always)]
pub fn update_addr(checksum: u16, old: Ipv6Addr, new: Ipv6Addr) -> u16 {
    let mut d = Delta::new();
    d.addr(old, new);
    d.apply(checksum)
}

/// A running one's-complement difference, for several rewrites applied to one checksum at
/// once (RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`): the sum of `~old + new` over the changed
/// 16-bit words. A checksum that was valid stays valid; one that was wrong stays wrong.
///
/// Holds up to 2³¹ recorded changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    #[inline(always)]
    pub const fn new() -> Self {
        Delta(0)
    }

    /// Records a changed 16-bit word.
    #[inline(always)]
    pub fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records a changed aligned 32-bit value (two words).
    #[inline(always)]
    pub fn dword(&mut self, old: u32, new: u32) {
        // `!old` complements both halves; a 32-bit sum folds to the sum of its halves.
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records a changed IPv6 address (eight words).
    #[inline(always)]
    pub fn addr(&mut self, old: Ipv6Addr, new: Ipv6Addr) {
        self.0 += sum_u128(!old.to_bits()) + sum_u128(new.to_bits());
    }

    /// Both deltas.
    #[inline(always)]
    #[must_use]
    pub const fn add(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// Applies the delta to a checksum field value.
    #[inline(always)]
    #[must_use]
    pub const fn apply(self, checksum: u16) -> u16 {
        !fold((!checksum) as u64 + self.0)
    }

    /// Applies the delta to a partial checksum (the folded pseudo-header sum, not
    /// complemented, as virtio `NEEDS_CSUM` and Linux `CHECKSUM_PARTIAL` carry it):
    /// `P' = P - old + new`. A partial value has no zero rule.
    #[inline(always)]
    #[must_use]
    pub const fn apply_partial(self, partial: u16) -> u16 {
        fold(partial as u64 + self.0)
    }

    /// Applies the delta to a UDP-over-IPv4 checksum: zero ("no checksum") stays zero and a
    /// computed zero is sent as `0xffff` (RFC 768).
    #[inline(always)]
    #[must_use]
    pub const fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// The sum of a block of at most [`BLOCK`] bytes, folded to 16 bits.
///
/// The block is summed as native-endian words in four independent accumulators (no byte swap
/// per word, no carry chain: the compiler vectorizes the loop), the last 0–3 bytes as
/// native-endian 16-bit words padded with zero, and the folded result is byte-swapped once:
/// the one's-complement sum is independent of byte order up to that swap (RFC 1071
/// section 2 (B)).
#[inline(always)]
fn sum_block(data: &[u8]) -> u64 {
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    let mut chunks = data.chunks_exact(16);
    for w in &mut chunks {
        a += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
        b += u64::from(u32::from_ne_bytes([w[4], w[5], w[6], w[7]]));
        c += u64::from(u32::from_ne_bytes([w[8], w[9], w[10], w[11]]));
        d += u64::from(u32::from_ne_bytes([w[12], w[13], w[14], w[15]]));
    }
    let mut words = chunks.remainder().chunks_exact(4);
    for w in &mut words {
        b += u64::from(u32::from_ne_bytes([w[0], w[1], w[2], w[3]]));
    }
    c += match *words.remainder() {
        [x] => u64::from(u16::from_ne_bytes([x, 0])),
        [x, y] => u64::from(u16::from_ne_bytes([x, y])),
        [x, y, z] => u64::from(u16::from_ne_bytes([x, y])) + u64::from(u16::from_ne_bytes([z, 0])),
        _ => 0,
    };
    let native = fold(a + b + c + d);
    u64::from(if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    })
}

/// Reduces a sum to at most 33 bits without changing its folded value.
#[inline(always)]
const fn fold32(sum: u64) -> u64 {
    (sum & 0xffff_ffff) + (sum >> 32)
}

/// The sum of the four 32-bit words of `v`.
#[inline(always)]
const fn sum_u128(v: u128) -> u64 {
    // The halves added with an end-around carry (2⁶⁴ ≡ 1), then the
    // 32-bit halves of that: at most 2³³ − 2, as the sum of four words'
    // pairs would be at most 2³⁴.
    let (s, carry) = (v as u64).overflowing_add((v >> 64) as u64);
    let s = s + carry as u64;
    (s & 0xffff_ffff) + (s >> 32)
}

/// Bytes summed per block: 2²⁸ words of at most 2³² − 1 each stay far below 2⁶⁴.
const BLOCK: usize = 1 << 30;

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    /// RFC 1071 word by word, folding after every add: the reference for the fast sum.
    fn naive(data: &[u8]) -> u16 {
        let mut s: u32 = 0;
        for c in data.chunks(2) {
            s += u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]));
            s = (s & 0xffff) + (s >> 16);
        }
        !(s as u16)
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: 0001 f203 f4f5 f6f7 sums to ddf2, complement 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(checksum(&data), 0x220d);
    }

    #[test]
    fn odd_lengths_pad_with_zero() {
        assert_eq!(checksum(&[0xab]), !0xab00);
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
        assert_eq!(fold(sum(&[], 0)), 0);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285, HC' = 0x0000.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn udp_zero_stays_zero_and_computed_zero_is_ffff() {
        let mut d = Delta::new();
        d.word(0x1234, 0x4321);
        assert_eq!(d.apply_udp(0), 0);
        let mut z = Delta::new();
        z.word(0x5555, 0x3285);
        assert_eq!(z.apply_udp(0xdd2f), 0xffff);
    }

    #[test]
    fn huge_initial_does_not_overflow() {
        assert_eq!(
            fold(sum(&[0xff; 64], u64::MAX)),
            fold(sum(&[0xff; 64], 0xffff))
        );
    }

    #[test]
    fn pseudo_headers_equal_the_sum_of_their_bytes() {
        let (s4, d4) = (Ipv4Addr::new(192, 168, 64, 2), Ipv4Addr::new(198, 18, 0, 1));
        let mut b = Vec::new();
        b.extend_from_slice(&s4.octets());
        b.extend_from_slice(&d4.octets());
        b.extend_from_slice(&[0, 17, 0x05, 0xdc]);
        assert_eq!(fold(pseudo_header_v4(s4, d4, 17, 1500)), fold(sum(&b, 0)));

        let s6: Ipv6Addr = "fd00::2".parse().unwrap();
        let d6: Ipv6Addr = "2001:db8::ffff:1".parse().unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(&s6.octets());
        b.extend_from_slice(&d6.octets());
        b.extend_from_slice(&70_000u32.to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, 58]);
        assert_eq!(fold(pseudo_header_v6(s6, d6, 58, 70_000)), fold(sum(&b, 0)));
    }

    /// Folding by shifts and masks, one 16-bit step at a time: the reference
    /// for [`fold`].
    fn fold_by_masks(sum: u64) -> u16 {
        let mut s = (sum & 0xffff_ffff) + (sum >> 32);
        for _ in 0..3 {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn fold_equals_the_mask_fold_at_the_edges() {
        for v in [
            0,
            1,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            0xffff_fffe_ffff_ffff,
            u64::MAX,
            u64::MAX - 1,
            0x8000_0000_8000_0000,
            0x0001_0000_ffff_0000,
        ] {
            assert_eq!(fold(v), fold_by_masks(v), "{v:#x}");
        }
    }

    proptest! {
        #[test]
        fn fold_equals_the_mask_fold(v in any::<u64>(), small in any::<u32>()) {
            prop_assert_eq!(fold(v), fold_by_masks(v));
            prop_assert_eq!(fold(u64::from(small)), fold_by_masks(u64::from(small)));
        }

        #[test]
        fn checksum_equals_naive(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            skip in 0usize..16,
        ) {
            // Any length and any alignment of the start.
            let data = data.get(skip..).unwrap_or(&[]);
            prop_assert_eq!(checksum(data), naive(data));
        }

        #[test]
        fn chained_sums_equal_one_sum(
            data in proptest::collection::vec(any::<u8>(), 0..600),
            cut in 0usize..300,
        ) {
            let cut = (cut * 2).min(data.len() & !1);
            let (a, b) = data.split_at(cut);
            prop_assert_eq!(fold(sum(b, sum(a, 0))), fold(sum(&data, 0)));
        }

        #[test]
        fn incremental_update_equals_recompute(
            data in proptest::collection::vec(any::<u8>(), 16..200),
            at in 0usize..100,
            new16 in any::<u16>(),
            new32 in any::<u32>(),
            new128 in any::<u128>(),
        ) {
            let mut data = data;
            let before = checksum(&data);
            // A 16-bit word.
            let i = (at * 2) % (data.len() & !1);
            let i = i.min(data.len() - 2) & !1;
            let old = u16::from_be_bytes([data[i], data[i + 1]]);
            data[i..i + 2].copy_from_slice(&new16.to_be_bytes());
            let c = update_u16(before, old, new16);
            prop_assert!(ones_eq(c, checksum(&data)), "{:#x} vs {:#x}", c, checksum(&data));
            // A 32-bit value.
            let before = checksum(&data);
            let j = ((at * 2) % (data.len() - 3)) & !1;
            let old = u32::from_be_bytes([data[j], data[j + 1], data[j + 2], data[j + 3]]);
            data[j..j + 4].copy_from_slice(&new32.to_be_bytes());
            let c = update_u32(before, old, new32);
            prop_assert!(ones_eq(c, checksum(&data)));
            // A 16-byte address.
            let before = checksum(&data);
            let k = ((at * 2) % (data.len() - 15)) & !1;
            let mut o = [0u8; 16];
            o.copy_from_slice(&data[k..k + 16]);
            let new = Ipv6Addr::from_bits(new128);
            data[k..k + 16].copy_from_slice(&new.octets());
            let c = update_addr(before, Ipv6Addr::from(o), new);
            prop_assert!(ones_eq(c, checksum(&data)));
        }

        #[test]
        fn partial_update_equals_recomputed_pseudo_header(
            a in any::<u32>(), b in any::<u32>(), c in any::<u32>(), len in any::<u16>(),
        ) {
            let (a, b, c) = (Ipv4Addr::from_bits(a), Ipv4Addr::from_bits(b), Ipv4Addr::from_bits(c));
            let before = fold(pseudo_header_v4(a, b, 6, len));
            let mut d = Delta::new();
            d.dword(a.to_bits(), c.to_bits());
            let after = fold(pseudo_header_v4(c, b, 6, len));
            prop_assert!(ones_eq(d.apply_partial(before), after));
        }
    }

    /// Equal in one's complement (0x0000 and 0xffff are both zero).
    fn ones_eq(a: u16, b: u16) -> bool {
        a == b || (a == 0 && b == 0xffff) || (a == 0xffff && b == 0)
    }
}
