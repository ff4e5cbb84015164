//! Small wire-format helpers: MAC addresses, Ethernet/IPv4/UDP header offsets, the Internet
//! checksum, and builders for the frames the gateway sends itself.

use core::fmt;
use core::net::Ipv4Addr;
use core::str::FromStr;

/// An Ethernet (EUI-48) address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// The six octets.
    pub const fn octets(self) -> [u8; 6] {
        self.0
    }

    /// Whether the group (multicast/broadcast) bit is set.
    pub const fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }

    /// Packs the address into the low 48 bits of a `u64` (for atomics).
    pub const fn to_u64(self) -> u64 {
        let o = self.0;
        (o[0] as u64) << 40
            | (o[1] as u64) << 32
            | (o[2] as u64) << 24
            | (o[3] as u64) << 16
            | (o[4] as u64) << 8
            | o[5] as u64
    }

    /// The inverse of [`MacAddr::to_u64`] (the high 16 bits are ignored).
    pub const fn from_u64(v: u64) -> Self {
        MacAddr([
            (v >> 40) as u8,
            (v >> 32) as u8,
            (v >> 24) as u8,
            (v >> 16) as u8,
            (v >> 8) as u8,
            v as u8,
        ])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            o[0], o[1], o[2], o[3], o[4], o[5]
        )
    }
}

/// The text is not six colon-separated hex octets.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid mac address {0:?}")]
pub struct ParseMacError(pub String);

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for o in &mut out {
            let p = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if p.is_empty() || p.len() > 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *o = u8::from_str_radix(p, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

/// The Internet checksum (RFC 1071) of `data`, folded, starting from a partial `sum`.
pub fn checksum(data: &[u8], sum: u32) -> u16 {
    !fold(sum_words(data, sum))
}

pub(crate) fn sum_words(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        if sum > 0xffff_0000 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

pub(crate) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Writes an Ethernet header into `out[..14]`.
pub(crate) fn write_eth(out: &mut [u8], dst: MacAddr, src: MacAddr, ethertype: u16) -> Option<()> {
    let h = out.get_mut(..ETH_HLEN)?;
    h[..6].copy_from_slice(&dst.0);
    h[6..12].copy_from_slice(&src.0);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    Some(())
}

/// Builds Ethernet + IPv4 + UDP + `payload` into `out`; returns the frame length.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_udp_frame(
    out: &mut [u8],
    dst_mac: MacAddr,
    src_mac: MacAddr,
    src: Ipv4Addr,
    src_port: u16,
    dst: Ipv4Addr,
    dst_port: u16,
    payload: &[u8],
) -> Option<usize> {
    let udp_len = UDP_HLEN.checked_add(payload.len())?;
    let ip_len = IPV4_HLEN.checked_add(udp_len)?;
    let total = ETH_HLEN.checked_add(ip_len)?;
    let ip_len16 = u16::try_from(ip_len).ok()?;
    let frame = out.get_mut(..total)?;
    write_eth(frame, dst_mac, src_mac, ETHERTYPE_IPV4)?;
    let (_, rest) = frame.split_at_mut(ETH_HLEN);
    let (ip, udp) = rest.split_at_mut(IPV4_HLEN);
    write_ipv4_header(ip, ip_len16, IPPROTO_UDP, src, dst);
    udp[0..2].copy_from_slice(&src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len16 - IPV4_HLEN as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[8..].copy_from_slice(payload);
    let csum = transport_checksum(src, dst, IPPROTO_UDP, udp);
    let csum = if csum == 0 { 0xffff } else { csum };
    udp[6..8].copy_from_slice(&csum.to_be_bytes());
    Some(total)
}

/// Writes a 20-byte IPv4 header (DF clear, TTL 64) with a valid checksum into `ip[..20]`.
pub(crate) fn write_ipv4_header(
    ip: &mut [u8],
    total_len: u16,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) {
    if ip.len() < IPV4_HLEN {
        return;
    }
    ip[0] = 0x45;
    ip[1] = 0;
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[4..6].copy_from_slice(&[0, 0]);
    ip[6..8].copy_from_slice(&[0, 0]);
    ip[8] = 64;
    ip[9] = proto;
    ip[10..12].copy_from_slice(&[0, 0]);
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&ip[..IPV4_HLEN], 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// The TCP/UDP checksum over the pseudo header and `segment` (its checksum field must be zero).
pub(crate) fn transport_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut sum = sum_words(&src.octets(), 0);
    sum = sum_words(&dst.octets(), sum);
    sum = sum.wrapping_add(u32::from(proto));
    sum = sum.wrapping_add(segment.len() as u32 & 0xffff);
    sum = sum.wrapping_add((segment.len() >> 16) as u32);
    checksum(segment, sum)
}

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Minimum IPv4 header length.
pub(crate) const IPV4_HLEN: usize = 20;
/// UDP header length.
pub(crate) const UDP_HLEN: usize = 8;
/// EtherType IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType ARP.
pub(crate) const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType IPv6.
pub(crate) const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol number of ICMP.
pub(crate) const IPPROTO_ICMP: u8 = 1;
/// IP protocol number of TCP.
pub(crate) const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const IPPROTO_UDP: u8 = 17;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_parses_prints_and_packs() {
        let m: MacAddr = "52:54:00:ab:cd:ef".parse().unwrap();
        assert_eq!(m.0, [0x52, 0x54, 0, 0xab, 0xcd, 0xef]);
        assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:ef:01".parse::<MacAddr>().is_err());
        assert!("52:54:00:ab:cd:zz".parse::<MacAddr>().is_err());
        assert!(MacAddr::BROADCAST.is_multicast());
        assert!(!m.is_multicast());
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example: 0001 f203 f4f5 f6f7 sums to ddf2, complement 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data, 0), 0x220d);
        // Odd length pads with a zero byte.
        assert_eq!(checksum(&[0xab], 0), !0xab00);
    }

    #[test]
    fn built_udp_frame_parses_with_valid_checksums() {
        let mut out = [0u8; 128];
        let n = build_udp_frame(
            &mut out,
            MacAddr::BROADCAST,
            MacAddr([2, 0, 0, 0, 0, 1]),
            Ipv4Addr::new(192, 168, 64, 1),
            67,
            Ipv4Addr::BROADCAST,
            68,
            b"hello",
        )
        .unwrap();
        assert_eq!(n, 14 + 20 + 8 + 5);
        let p = etherparse::SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(192, 168, 64, 1));
        let hdr = ip.header().to_header();
        assert_eq!(hdr.calc_header_checksum(), hdr.header_checksum);
        let Some(etherparse::TransportSlice::Udp(udp)) = p.transport else {
            panic!("not udp")
        };
        assert_eq!(udp.payload(), b"hello");
        let calc = udp
            .to_header()
            .calc_checksum_ipv4(&hdr, udp.payload())
            .unwrap();
        assert_eq!(calc, udp.checksum());
    }
}
