//! Internet checksums (RFC 1071) and their incremental update (RFC 1624).
//!
//! The NAT never recomputes a checksum over a payload: every rewrite adds the
//! difference of the changed 16-bit words to the checksum already in the
//! packet (RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`). A checksum that was
//! valid before stays valid after; one that was wrong stays wrong.

/// A running one's-complement difference: the sum of `~old + new` over every
/// 16-bit word that changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Delta(u64);

impl Delta {
    /// Records a changed 16-bit word.
    #[inline(always)]
    pub(crate) fn word(&mut self, old: u16, new: u16) {
        self.0 += u64::from(!old) + u64::from(new);
    }

    /// Records a changed 32-bit value (two words).
    #[inline(always)]
    pub(crate) fn dword(&mut self, old: u32, new: u32) {
        self.word((old >> 16) as u16, (new >> 16) as u16);
        self.word(old as u16, new as u16);
    }

    /// Adds another delta.
    #[inline(always)]
    pub(crate) fn add(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// Applies the delta to a checksum field value.
    #[inline(always)]
    pub(crate) fn apply(self, checksum: u16) -> u16 {
        !fold(u64::from(!checksum) + self.0)
    }

    /// Applies the delta to a partial checksum field (the folded
    /// pseudo-header sum, not complemented): `P' = P - old + new` in
    /// one's-complement arithmetic. No zero rule: 0 is a partial value.
    #[inline(always)]
    pub(crate) fn apply_partial(self, partial: u16) -> u16 {
        fold(u64::from(partial) + self.0)
    }

    /// Applies the delta to a UDP checksum: zero ("no checksum") stays zero
    /// and a computed zero is sent as `0xffff` (RFC 768).
    #[inline(always)]
    pub(crate) fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

/// Folds a wide one's-complement sum to 16 bits.
#[inline(always)]
pub(crate) fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The one's-complement sum of `bytes` taken as big-endian 16-bit words
/// (an odd last byte is padded with zero), not yet complemented.
pub(crate) fn sum(bytes: &[u8]) -> u64 {
    let mut acc = 0u64;
    let mut chunks = bytes.chunks_exact(4);
    for c in &mut chunks {
        acc += u64::from(u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
    }
    let mut rest = chunks.remainder().chunks_exact(2);
    for c in &mut rest {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [b] = rest.remainder() {
        acc += u64::from(u16::from_be_bytes([*b, 0]));
    }
    acc
}

/// Whether a 20-byte IPv4 header (no options) has a valid checksum.
#[inline(always)]
pub(crate) fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    let w = |i: usize| u64::from(u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    fold(w(0) + w(4) + w(8) + w(12) + w(16)) == 0xffff
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incremental_update_equals_recompute_rfc1624_example() {
        // RFC 1624 section 4: HC = 0xdd2f, m = 0x5555 -> m' = 0x3285, HC' = 0x0000.
        let mut d = Delta::default();
        d.word(0x5555, 0x3285);
        assert_eq!(d.apply(0xdd2f), 0x0000);
    }

    #[test]
    fn udp_zero_checksum_stays_zero_and_computed_zero_is_ffff() {
        let mut d = Delta::default();
        d.word(0x1234, 0x4321);
        assert_eq!(d.apply_udp(0), 0);
        let mut z = Delta::default();
        z.word(0x5555, 0x3285);
        assert_eq!(z.apply_udp(0xdd2f), 0xffff);
    }

    #[test]
    fn sum_handles_odd_lengths() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56])), 0x1234 + 0x5600);
        assert_eq!(fold(sum(&[])), 0);
    }
}
