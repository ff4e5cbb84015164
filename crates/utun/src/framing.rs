//! Platform-independent packet framing: the 4-byte protocol-family header of macOS utun,
//! the IP version check on send, and truncation detection on receive.
//!
//! No syscalls here, so every function is unit-tested on every host.

use std::io;

use crate::error::{NotIp, Truncated};

/// The IP version of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IpVersion {
    V4,
    V6,
}

/// Length of the utun protocol-family header.
pub(crate) const AF_HEADER_LEN: usize = 4;

/// The IP version of `packet` from its first nibble.
///
/// # Errors
/// [`NotIp`] (as `InvalidInput`) if the packet is empty or its version is neither 4 nor 6.
pub(crate) fn ip_version(packet: &[u8]) -> io::Result<IpVersion> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => Ok(IpVersion::V4),
        Some(6) => Ok(IpVersion::V6),
        _ => Err(NotIp {
            first_byte: packet.first().copied(),
        }
        .into()),
    }
}

/// The utun header for a packet of version `v`: the Darwin protocol family, big-endian.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn af_header(v: IpVersion) -> [u8; AF_HEADER_LEN] {
    let af = match v {
        IpVersion::V4 => DARWIN_AF_INET,
        IpVersion::V6 => DARWIN_AF_INET6,
    };
    af.to_be_bytes()
}

/// The IP version that a utun header announces.
///
/// # Errors
/// `InvalidData` for any other protocol family.
#[cfg_attr(not(target_os = "macos"), allow(dead_code))]
pub(crate) fn parse_af_header(h: [u8; AF_HEADER_LEN]) -> io::Result<IpVersion> {
    match u32::from_be_bytes(h) {
        DARWIN_AF_INET => Ok(IpVersion::V4),
        DARWIN_AF_INET6 => Ok(IpVersion::V6),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("utun packet with unknown protocol family {other}"),
        )),
    }
}

/// Checks that the `got` bytes the OS reported for a read into a `buf_len`-byte buffer hold
/// the whole IP packet whose first bytes are in `head` (`head` = the start of the buffer,
/// at most `min(got, buf_len)` bytes).
///
/// Linux's tun silently cuts a packet to the buffer and may report the full length, so this
/// compares the IP header's length field (IPv4 total length, IPv6 40 + payload length) with
/// what arrived.
///
/// # Errors
/// [`Truncated`] (as `InvalidData`) if the packet is longer than what arrived.
pub(crate) fn check_ip_complete(head: &[u8], got: usize, buf_len: usize) -> io::Result<()> {
    let truncated = |packet_len| {
        Err(Truncated {
            packet_len,
            buf_len,
        }
        .into())
    };
    if got > buf_len {
        return truncated(Some(got));
    }
    // A read that did not fill the buffer holds the whole packet, whatever its (possibly
    // hostile) length field says: only a full buffer can hide a cut.
    if got < buf_len {
        return Ok(());
    }
    match ip_total_len(head) {
        Some(len) if len > got => truncated(Some(len)),
        Some(_) => Ok(()),
        // Too short to hold the length field: cut if it filled the buffer, else a runt
        // that the kernel delivered whole.
        None if got == buf_len && got < IPV6_HEADER_LEN => truncated(None),
        None => Ok(()),
    }
}

/// Like [`check_ip_complete`] for an Ethernet frame (TAP): checks the IP packet inside an
/// IPv4 or IPv6 frame; other frames are checked only against the buffer length.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn check_frame_complete(frame: &[u8], got: usize, buf_len: usize) -> io::Result<()> {
    if got > buf_len {
        return Err(Truncated {
            packet_len: Some(got),
            buf_len,
        }
        .into());
    }
    if got < buf_len {
        return Ok(());
    }
    let ethertype = frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]));
    match (ethertype, frame.get(ETH_HEADER_LEN..)) {
        (Some(0x0800 | 0x86dd), Some(ip)) => check_ip_complete(
            ip,
            got.saturating_sub(ETH_HEADER_LEN),
            buf_len.saturating_sub(ETH_HEADER_LEN),
        )
        .map_err(|_| {
            let inner = ip_total_len(ip).map(|l| l + ETH_HEADER_LEN);
            Truncated {
                packet_len: inner,
                buf_len,
            }
            .into()
        }),
        _ => Ok(()),
    }
}

/// The length an IP packet announces in its header, if `head` holds that field.
pub(crate) fn ip_total_len(head: &[u8]) -> Option<usize> {
    match head.first().map(|b| b >> 4) {
        Some(4) => head
            .get(2..4)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
        Some(6) => {
            let payload = head
                .get(4..6)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))?;
            // A zero payload length is a jumbogram (hop-by-hop option): length unknown here.
            (payload != 0 || head.len() >= IPV6_HEADER_LEN).then_some(IPV6_HEADER_LEN + payload)
        }
        _ => None,
    }
}

const DARWIN_AF_INET: u32 = 2;
const DARWIN_AF_INET6: u32 = 30;
pub(crate) const IPV6_HEADER_LEN: usize = 40;
pub(crate) const ETH_HEADER_LEN: usize = 14;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Truncated;

    fn v4(total: u16) -> Vec<u8> {
        let mut p = vec![0u8; usize::from(total)];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p
    }

    fn truncated(e: &io::Error) -> Option<Truncated> {
        e.get_ref()
            .and_then(|e| e.downcast_ref::<Truncated>())
            .copied()
    }

    #[test]
    fn af_header_round_trips_and_uses_darwin_numbers() {
        assert_eq!(af_header(IpVersion::V4), [0, 0, 0, 2]);
        assert_eq!(af_header(IpVersion::V6), [0, 0, 0, 30]);
        for v in [IpVersion::V4, IpVersion::V6] {
            assert_eq!(parse_af_header(af_header(v)).ok(), Some(v));
        }
        let e = parse_af_header([0, 0, 0, 10]).err().map(|e| e.kind());
        assert_eq!(e, Some(io::ErrorKind::InvalidData));
    }

    #[test]
    #[cfg(target_os = "macos")]
    fn darwin_af_numbers_match_libc() {
        assert_eq!(DARWIN_AF_INET, libc::AF_INET as u32);
        assert_eq!(DARWIN_AF_INET6, libc::AF_INET6 as u32);
    }

    #[test]
    fn ip_version_rejects_non_ip() {
        assert_eq!(ip_version(&[0x45]).ok(), Some(IpVersion::V4));
        assert_eq!(ip_version(&[0x60, 0]).ok(), Some(IpVersion::V6));
        let e = ip_version(&[0x12, 0x34]).err();
        assert_eq!(
            e.as_ref().map(io::Error::kind),
            Some(io::ErrorKind::InvalidInput)
        );
        assert!(ip_version(&[]).is_err());
        // An Ethernet frame (dst MAC ff:ff:...) is not IP.
        assert!(ip_version(&[0xff; 14]).is_err());
    }

    #[test]
    fn whole_packets_pass_and_cut_ones_are_reported() {
        let p = v4(100);
        assert!(check_ip_complete(&p, 100, 1500).is_ok());
        // The kernel cut it to a 60-byte buffer and said 60.
        let e = check_ip_complete(&p[..60], 60, 60).err();
        let t = e.as_ref().and_then(truncated);
        assert_eq!(
            t,
            Some(Truncated {
                packet_len: Some(100),
                buf_len: 60
            })
        );
        // The kernel cut it and reported the full length.
        let e = check_ip_complete(&p[..60], 100, 60).err();
        assert_eq!(
            e.as_ref().and_then(truncated).and_then(|t| t.packet_len),
            Some(100)
        );
        // Buffer smaller than an IP header and filled: truncated, length unknown.
        let e = check_ip_complete(&p[..2], 2, 2).err();
        assert_eq!(
            e.as_ref().and_then(truncated).map(|t| t.packet_len),
            Some(None)
        );
    }

    #[test]
    fn ipv6_length_is_header_plus_payload() {
        let mut p = vec![0u8; 48];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&8u16.to_be_bytes());
        assert_eq!(ip_total_len(&p), Some(48));
        assert!(check_ip_complete(&p, 48, 48).is_ok());
        assert!(check_ip_complete(&p[..44], 44, 44).is_err());
    }

    #[test]
    fn frames_are_checked_through_their_ip_packet() {
        let mut f = vec![0u8; 14];
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f.extend_from_slice(&v4(100));
        assert!(check_frame_complete(&f, 114, 1514).is_ok());
        let e = check_frame_complete(&f[..64], 64, 64).err();
        assert_eq!(
            e.as_ref().and_then(truncated).and_then(|t| t.packet_len),
            Some(114)
        );
        // ARP: nothing to check beyond the buffer.
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(check_frame_complete(&f[..42], 42, 64).is_ok());
        assert!(check_frame_complete(&f[..42], 80, 64).is_err());
    }
}
