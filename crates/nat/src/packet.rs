//! Hand-written, bounds-checked IPv4 header parsing and in-place rewriting.
//!
//! `parse` validates the IPv4 header once (length, version, header length,
//! total length, header checksum); afterwards every read and write goes
//! through [`get16`]/[`put16`]/[`get32`]/[`put32`], which do nothing (or
//! return 0) out of bounds, so no input can make them panic.

use crate::DropReason;
use crate::checksum::{self, Delta};

/// The fields of a validated IPv4 header.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Hdr {
    /// Header length in bytes (20..=60).
    pub(crate) ihl: usize,
    /// Total length (≤ the buffer length); bytes past it are ignored.
    pub(crate) total: usize,
    /// IP protocol number.
    pub(crate) proto: u8,
    /// Source address.
    pub(crate) src: u32,
    /// Destination address.
    pub(crate) dst: u32,
    /// Flags and fragment offset.
    pub(crate) frag: u16,
    /// Identification.
    pub(crate) id: u16,
}

impl Hdr {
    /// A fragment other than the first (carries no transport header).
    #[inline(always)]
    pub(crate) fn is_later_fragment(&self) -> bool {
        self.frag & 0x1fff != 0
    }
    /// Bytes of transport header and payload in this packet.
    #[inline(always)]
    pub(crate) fn l4_len(&self) -> usize {
        self.total - self.ihl
    }
}

/// What the transport part of a packet is, as far as rewriting goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// TCP: ports at 0 and 2, checksum (with pseudo-header) at 16.
    Tcp,
    /// UDP: ports at 0 and 2, checksum at 6 (zero means none).
    Udp,
    /// TCP whose checksum field holds only the pseudo-header sum
    /// ([`crate::L4Checksum::Partial`]): addresses change it, ports don't.
    TcpPartial,
    /// UDP with a partial checksum (see [`Kind::TcpPartial`]).
    UdpPartial,
    /// ICMP echo; the identifier (at 4) is the internal-side "port" when
    /// `out`, the external-side one otherwise. Checksum at 2, no pseudo-header.
    Echo {
        /// The identifier travels as the source "port" (request from inside).
        out: bool,
    },
    /// No transport header (a later fragment): addresses only.
    Bare,
}

impl Kind {
    /// The partial-checksum variant of a TCP/UDP kind when `partial`.
    #[inline(always)]
    pub(crate) fn with_partial(self, partial: bool) -> Kind {
        match (self, partial) {
            (Kind::Tcp, true) => Kind::TcpPartial,
            (Kind::Udp, true) => Kind::UdpPartial,
            (k, _) => k,
        }
    }
}

/// Addresses and ports of a packet (ICMP: see [`Kind::Echo`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) src: u32,
    pub(crate) sport: u16,
    pub(crate) dst: u32,
    pub(crate) dport: u16,
}

/// Validates the IPv4 header of `p`.
#[inline(always)]
pub(crate) fn parse(p: &[u8]) -> Result<Hdr, DropReason> {
    let h: &[u8; 20] = p.first_chunk::<20>().ok_or(DropReason::Malformed)?;
    if h[0] >> 4 != 4 {
        return Err(DropReason::Malformed);
    }
    let ihl = usize::from(h[0] & 0xf) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < 20 || total < ihl || total > p.len() {
        return Err(DropReason::Malformed);
    }
    let ok = if ihl == 20 {
        checksum::ipv4_header_ok(h)
    } else {
        p.get(..ihl)
            .is_some_and(|b| checksum::fold(checksum::sum(b)) == 0xffff)
    };
    if !ok {
        return Err(DropReason::Malformed);
    }
    Ok(Hdr {
        ihl,
        total,
        proto: h[9],
        src: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
        dst: u32::from_be_bytes([h[16], h[17], h[18], h[19]]),
        frag: u16::from_be_bytes([h[6], h[7]]),
        id: u16::from_be_bytes([h[4], h[5]]),
    })
}

/// Rewrites addresses and ports from `old` to `new`, fixing the IPv4 header
/// checksum and the transport checksum incrementally. The caller checked that
/// the transport header of `kind` is present. Works on fixed-size views of
/// the headers, so each is bounds-checked once.
#[inline(always)]
pub(crate) fn rewrite(p: &mut [u8], h: &Hdr, kind: Kind, old: Tuple, new: Tuple) {
    let mut ipd = Delta::default();
    ipd.dword(old.src, new.src);
    ipd.dword(old.dst, new.dst);
    let Some((ip, rest)) = p.split_first_chunk_mut::<20>() else {
        return;
    };
    ip[12..16].copy_from_slice(&new.src.to_be_bytes());
    ip[16..20].copy_from_slice(&new.dst.to_be_bytes());
    let c = ipd.apply(u16::from_be_bytes([ip[10], ip[11]]));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let Some(l4) = rest.get_mut(h.ihl.saturating_sub(20)..) else {
        return;
    };
    match kind {
        Kind::Tcp => {
            let Some(t) = l4.first_chunk_mut::<18>() else {
                return;
            };
            let mut pd = ipd;
            pd.word(old.sport, new.sport);
            pd.word(old.dport, new.dport);
            t[0..2].copy_from_slice(&new.sport.to_be_bytes());
            t[2..4].copy_from_slice(&new.dport.to_be_bytes());
            let c = pd.apply(u16::from_be_bytes([t[16], t[17]]));
            t[16..18].copy_from_slice(&c.to_be_bytes());
        }
        Kind::Udp => {
            let Some(u) = l4.first_chunk_mut::<8>() else {
                return;
            };
            let mut pd = ipd;
            pd.word(old.sport, new.sport);
            pd.word(old.dport, new.dport);
            u[0..2].copy_from_slice(&new.sport.to_be_bytes());
            u[2..4].copy_from_slice(&new.dport.to_be_bytes());
            let c = pd.apply_udp(u16::from_be_bytes([u[6], u[7]]));
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        // Partial checksums: the ports are summed later by whoever completes
        // the checksum; only the pseudo-header (the addresses) is in the field.
        Kind::TcpPartial => {
            let Some(t) = l4.first_chunk_mut::<18>() else {
                return;
            };
            t[0..2].copy_from_slice(&new.sport.to_be_bytes());
            t[2..4].copy_from_slice(&new.dport.to_be_bytes());
            let c = ipd.apply_partial(u16::from_be_bytes([t[16], t[17]]));
            t[16..18].copy_from_slice(&c.to_be_bytes());
        }
        Kind::UdpPartial => {
            let Some(u) = l4.first_chunk_mut::<8>() else {
                return;
            };
            u[0..2].copy_from_slice(&new.sport.to_be_bytes());
            u[2..4].copy_from_slice(&new.dport.to_be_bytes());
            let c = ipd.apply_partial(u16::from_be_bytes([u[6], u[7]]));
            u[6..8].copy_from_slice(&c.to_be_bytes());
        }
        Kind::Echo { out } => {
            let Some(e) = l4.first_chunk_mut::<8>() else {
                return;
            };
            let (o, n) = if out {
                (old.sport, new.sport)
            } else {
                (old.dport, new.dport)
            };
            let mut d = Delta::default();
            d.word(o, n);
            e[4..6].copy_from_slice(&n.to_be_bytes());
            let c = d.apply(u16::from_be_bytes([e[2], e[3]]));
            e[2..4].copy_from_slice(&c.to_be_bytes());
        }
        Kind::Bare => {}
    }
}

/// Finishes a partial ([`crate::L4Checksum::Partial`]) TCP or UDP checksum
/// in software, as the sending device would: sums the transport header and
/// payload (up to the IPv4 total length) starting from the field's value and
/// writes the complement there (a UDP result of 0 is sent as `0xffff`).
///
/// Returns `false`, leaving the packet as it was, for anything it cannot
/// do: not a valid IPv4 header, a fragment, not TCP/UDP, or a transport
/// header shorter than its fixed part.
pub fn complete_l4_checksum(packet: &mut [u8]) -> bool {
    let Ok(h) = parse(packet) else {
        return false;
    };
    if h.frag & 0x3fff != 0 {
        return false;
    }
    let off = match (h.proto, h.l4_len()) {
        (6, n) if n >= 20 => 16,
        (17, n) if n >= 8 => 6,
        _ => return false,
    };
    let Some(l4) = packet.get(h.ihl..h.total) else {
        return false;
    };
    let mut c = !checksum::fold(checksum::sum(l4));
    if h.proto == 17 && c == 0 {
        c = 0xffff;
    }
    put16(packet, h.ihl + off, c);
    true
}

/// Reads a big-endian u16 at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get16(p: &[u8], off: usize) -> u16 {
    match p.get(off..off.wrapping_add(2)) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// Writes a big-endian u16 at `off`; nothing if out of bounds.
#[inline(always)]
pub(crate) fn put16(p: &mut [u8], off: usize, v: u16) {
    if let Some(s) = p.get_mut(off..off.wrapping_add(2)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Reads a big-endian u32 at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get32(p: &[u8], off: usize) -> u32 {
    match p.get(off..off.wrapping_add(4)) {
        Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
        _ => 0,
    }
}

/// Writes a big-endian u32 at `off`; nothing if out of bounds.
#[inline(always)]
pub(crate) fn put32(p: &mut [u8], off: usize, v: u32) {
    if let Some(s) = p.get_mut(off..off.wrapping_add(4)) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Reads the byte at `off`, 0 if out of bounds.
#[inline(always)]
pub(crate) fn get8(p: &[u8], off: usize) -> u8 {
    p.get(off).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_rejects_short_wrong_version_bad_ihl_and_bad_checksum() {
        assert_eq!(parse(&[0x45; 19]).unwrap_err(), DropReason::Malformed);
        let mut ok = [0u8; 20];
        ok[0] = 0x45;
        ok[3] = 20;
        let c = !checksum::fold(checksum::sum(&ok));
        ok[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(parse(&ok).is_ok());
        let mut v6 = ok;
        v6[0] = 0x65;
        assert!(parse(&v6).is_err());
        let mut bad = ok;
        bad[11] ^= 1;
        assert!(parse(&bad).is_err());
        let mut long = ok;
        long[3] = 21;
        assert!(parse(&long).is_err());
    }

    #[test]
    fn accessors_are_silent_out_of_bounds() {
        let mut p = [1u8, 2, 3];
        assert_eq!(get16(&p, 2), 0);
        assert_eq!(get32(&p, usize::MAX), 0);
        put16(&mut p, 2, 0xffff);
        put32(&mut p, usize::MAX - 1, 7);
        assert_eq!(p, [1, 2, 3]);
        assert_eq!(get16(&p, 1), 0x0203);
    }
}
