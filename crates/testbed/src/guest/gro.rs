//! Receive coalescing in the simulated guest's RX driver, as a Linux guest's GRO does after
//! its virtio-net NAPI poll: within one service pass, consecutive TCP segments of one flow
//! that the device handed over with a partial checksum (`NEEDS_CSUM`, or `DATA_VALID`
//! rewritten as one, see the `rx` module) are written to the TAP as one GSO frame
//! (`gso_type` TCPV4/TCPV6, `gso_size` the first segment's payload), so the guest namespace's
//! TCP takes a burst of MTU-sized segments in one write, not one write each.
//!
//! The rules are the kernel's own (`tcp_gro_receive`, `inet_gro_receive`,
//! `ipv6_gro_receive`), narrowed to what is simple to hold linear: IPv4 without options or
//! fragmentation and IPv6 without extension headers; the same Ethernet header, addresses,
//! TOS/traffic class, TTL/hop limit, ports, acknowledgment number and TCP options; flags ACK
//! (and PSH, which the merged frame keeps), never SYN, FIN, RST, URG, ECE or CWR; each
//! segment's sequence number where the held one ends; no segment longer than the first, and
//! a shorter one ends the frame; at most 64 KiB of IP packet. The merged frame keeps the
//! first segment's headers with the last one's window. A device that writes a full checksum
//! is not coalesced: that checksum stays for the guest's stack to check.

use wire::checksum::{checksum, fold, sum};
use wire::tcp::{ACK as TCP_ACK, PSH as TCP_PSH, field as tcp};

/// Bytes of the virtio-net header in front of each frame.
use super::NET_HDR_LEN as HDR;
use super::net_hdr::{F_NEEDS_CSUM as NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6};
/// Ethernet header.
const ETH: usize = 14;
/// The largest IP packet a merged frame carries.
const MAX_IP: usize = 65_535;

/// One TCP segment's layout, from its headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    v6: bool,
    /// Offset of the TCP header in the frame (after the virtio-net header).
    l4: usize,
    /// Ethernet, IP and TCP headers.
    headers: usize,
    payload: usize,
    seq: u32,
}

/// The frame being coalesced (its bytes in [`Gro::buf`]).
#[derive(Clone, Copy, Debug)]
struct Held {
    seg: Segment,
    /// The first segment's payload: the `gso_size` of the merged frame.
    mss: usize,
    next_seq: u32,
    segments: usize,
}

/// The coalescing state of one RX driver.
#[derive(Debug, Default)]
pub(super) struct Gro {
    /// `[virtio-net header][Ethernet frame]` of the held frame.
    buf: Vec<u8>,
    held: Option<Held>,
}

impl Gro {
    pub(super) fn new() -> Self {
        Self {
            buf: Vec::with_capacity(HDR + ETH + MAX_IP),
            held: None,
        }
    }

    /// Offers `frame` (`[virtio-net header][Ethernet frame]`, as the device wrote it). Returns
    /// whether it was taken (merged into the held frame, or held as the start of one); when it
    /// was not, the held frame has gone out through `write` first and the caller writes
    /// `frame` itself. `write` gets a frame and the number of segments in it.
    pub(super) fn offer(&mut self, frame: &[u8], write: &mut dyn FnMut(&[u8], usize)) -> bool {
        let Some(seg) = segment(frame) else {
            self.flush(write);
            return false;
        };
        if let Some(h) = self.held
            && self.joins(&h, frame, &seg)
        {
            let start = HDR + seg.headers;
            self.buf
                .extend_from_slice(&frame[start..start + seg.payload]);
            // The newest window and PSH (the kernel ORs the flags it lets through).
            let l4 = HDR + h.seg.l4;
            let new = HDR + seg.l4;
            self.buf[l4 + tcp::FLAGS] |= frame[new + tcp::FLAGS] & TCP_PSH;
            let window = tcp::WINDOW;
            self.buf[l4 + window.start..l4 + window.end]
                .copy_from_slice(&frame[new + window.start..new + window.end]);
            let next = Held {
                next_seq: seg.seq.wrapping_add(seg.payload as u32),
                segments: h.segments + 1,
                ..h
            };
            self.held = Some(next);
            if seg.payload < h.mss {
                self.flush(write);
            }
            return true;
        }
        self.flush(write);
        self.buf.clear();
        self.buf.extend_from_slice(frame);
        self.held = Some(Held {
            seg,
            mss: seg.payload,
            next_seq: seg.seq.wrapping_add(seg.payload as u32),
            segments: 1,
        });
        true
    }

    /// Writes the held frame, if any: as it came when it is one segment, else as a GSO frame
    /// with its IP length, IPv4 header checksum and TCP pseudo-header sum rewritten.
    pub(super) fn flush(&mut self, write: &mut dyn FnMut(&[u8], usize)) {
        let Some(h) = self.held.take() else {
            return;
        };
        if h.segments > 1 {
            self.seal(&h);
        }
        write(&self.buf, h.segments);
        self.buf.clear();
    }

    /// Whether the segment `seg` of `frame` continues the held one.
    fn joins(&self, h: &Held, frame: &[u8], seg: &Segment) -> bool {
        let held = &self.buf[HDR..];
        let new = &frame[HDR..];
        let (a, b) = (h.seg.l4, seg.l4);
        seg.v6 == h.seg.v6
            && seg.headers == h.seg.headers
            && seg.seq == h.next_seq
            && seg.payload <= h.mss
            && self.buf.len() - HDR - ETH + seg.payload <= MAX_IP
            // Ethernet header.
            && held[..ETH] == new[..ETH]
            && if seg.v6 {
                // Version, traffic class and flow label; next header and hop limit;
                // addresses (the payload length differs).
                held[ETH..ETH + 4] == new[ETH..ETH + 4] && held[ETH + 6..a] == new[ETH + 6..b]
            } else {
                // TOS, DF, TTL, protocol and addresses (not the length, ID or checksum).
                held[ETH + 1] == new[ETH + 1]
                    && held[ETH + 6] == new[ETH + 6]
                    && held[ETH + 8..ETH + 10] == new[ETH + 8..ETH + 10]
                    && held[ETH + 12..a] == new[ETH + 12..b]
            }
            // Ports; acknowledgment number and data offset; options.
            && held[a..a + tcp::DST_PORT.end] == new[b..b + tcp::DST_PORT.end]
            && held[a + tcp::ACKNOWLEDGMENT_NUMBER.start..=a + tcp::DATA_OFFSET]
                == new[b + tcp::ACKNOWLEDGMENT_NUMBER.start..=b + tcp::DATA_OFFSET]
            && held[a + wire::tcp::HEADER_LEN..seg.headers]
                == new[b + wire::tcp::HEADER_LEN..seg.headers]
    }

    /// Turns the held segments into one GSO frame (see [`Gro::flush`]).
    fn seal(&mut self, h: &Held) {
        let ip_len = self.buf.len() - HDR - ETH;
        let l4 = HDR + h.seg.l4;
        let hdr = &mut self.buf[..HDR];
        hdr[0] = NEEDS_CSUM;
        hdr[1] = if h.seg.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        hdr[2..4].copy_from_slice(&(h.seg.headers as u16).to_le_bytes());
        hdr[4..6].copy_from_slice(&(h.mss as u16).to_le_bytes());
        hdr[6..8].copy_from_slice(&((l4 - HDR) as u16).to_le_bytes());
        hdr[8..10].copy_from_slice(&16u16.to_le_bytes());
        let ip = HDR + ETH;
        if h.seg.v6 {
            let payload = (ip_len - 40) as u16;
            self.buf[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
        } else {
            self.buf[ip + 2..ip + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            self.buf[ip + 10..ip + 12].fill(0);
            let c = checksum(&self.buf[ip..ip + 20]);
            self.buf[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        let tcp_len = (self.buf.len() - l4) as u64;
        let addrs = if h.seg.v6 {
            &self.buf[ip + 8..ip + 40]
        } else {
            &self.buf[ip + 12..ip + 20]
        };
        let pseudo = fold(sum(addrs, 0) + 6 + tcp_len);
        self.buf[l4 + 16..l4 + 18].copy_from_slice(&pseudo.to_be_bytes());
    }
}

/// Whether a frame of `len` bytes (`[virtio-net header][Ethernet frame]`) that starts with
/// `head` (at least its first [`HEAD_LEN`] bytes, or all of it) is one [`Gro::offer`] takes:
/// the caller reads the rest of a frame only if so.
pub(super) fn takes(head: &[u8], len: usize) -> bool {
    segment_in(head, len).is_some()
}

/// The bytes of a frame [`takes`] looks at: the virtio-net, Ethernet and IPv6 headers and the
/// TCP header up to its flags.
pub(super) const HEAD_LEN: usize = HDR + ETH + 40 + 14;

/// The layout of `frame` if it is a TCP segment GRO may take: a partial checksum, no GSO,
/// flags ACK (and PSH) only, a payload, and lengths that agree with the frame's.
fn segment(frame: &[u8]) -> Option<Segment> {
    segment_in(frame, frame.len())
}

/// [`segment`] of a frame of `len` bytes from its first bytes, `head`.
fn segment_in(head: &[u8], len: usize) -> Option<Segment> {
    let frame = head;
    let (flags, gso_type) = (*frame.first()?, *frame.get(1)?);
    if flags != NEEDS_CSUM || gso_type != 0 {
        return None;
    }
    let eth = frame.get(HDR..)?;
    let ip = eth.get(ETH..)?;
    let be16 = |b: &[u8], i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    };
    let (v6, l3, ip_len) = match (eth.get(12..14)?, ip.first()? >> 4) {
        ([0x08, 0x00], 4) => {
            // No options, TCP, not a fragment (DF alone may be set).
            if *ip.first()? != 0x45 || *ip.get(9)? != 6 || be16(ip, 6)? & 0xbfff != 0 {
                return None;
            }
            (false, 20, be16(ip, 2)?)
        }
        ([0x86, 0xdd], 6) => {
            if *ip.get(6)? != 6 {
                return None;
            }
            (true, 40, 40 + be16(ip, 4)?)
        }
        _ => return None,
    };
    if Some(ip_len) != len.checked_sub(HDR + ETH) {
        return None;
    }
    let th = ip.get(l3..)?;
    let (offset, flags) = (*th.get(tcp::DATA_OFFSET)?, *th.get(tcp::FLAGS)?);
    let doff = usize::from(offset >> 4) * 4;
    if doff < wire::tcp::HEADER_LEN || offset & 0x0f != 0 || flags & !TCP_PSH != TCP_ACK {
        return None;
    }
    let payload = ip_len.checked_sub(l3 + doff).filter(|p| *p > 0)?;
    Some(Segment {
        v6,
        l4: ETH + l3,
        headers: ETH + l3 + doff,
        payload,
        seq: u32::from_be_bytes(th.get(tcp::SEQUENCE_NUMBER)?.try_into().ok()?),
    })
}

#[cfg(test)]
/// `[virtio-net header][Ethernet][IPv4 or IPv6][TCP with a 12-byte timestamp option]`
/// carrying `payload` at sequence number `seq`, flagged `NEEDS_CSUM`.
pub(super) fn test_segment(v6: bool, seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
    let l3 = if v6 { 40 } else { 20 };
    let mut f = vec![0u8; HDR + ETH + l3 + 32];
    f[0] = NEEDS_CSUM;
    f[HDR..HDR + 6].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    f[HDR + 6..HDR + 12].copy_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x01]);
    let ip = HDR + ETH;
    let ip_len = l3 + 32 + payload.len();
    if v6 {
        f[HDR + 12..HDR + 14].copy_from_slice(&[0x86, 0xdd]);
        f[ip] = 0x60;
        f[ip + 4..ip + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
        f[ip + 6] = 6;
        f[ip + 7] = 63;
        f[ip + 8..ip + 10].copy_from_slice(&[0x20, 0x01]);
        f[ip + 23] = 2;
        f[ip + 24..ip + 26].copy_from_slice(&[0xfd, 0x64]);
        f[ip + 39] = 0x10;
    } else {
        f[HDR + 12..HDR + 14].copy_from_slice(&[0x08, 0x00]);
        f[ip] = 0x45;
        f[ip + 2..ip + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&(seq as u16).to_be_bytes()); // IDs differ
        f[ip + 6] = 0x40; // DF
        f[ip + 8] = 63;
        f[ip + 9] = 6;
        f[ip + 12..ip + 16].copy_from_slice(&[198, 18, 0, 2]);
        f[ip + 16..ip + 20].copy_from_slice(&[192, 168, 64, 2]);
    }
    let t = ip + l3;
    f[t..t + 2].copy_from_slice(&80u16.to_be_bytes());
    f[t + 2..t + 4].copy_from_slice(&40_000u16.to_be_bytes());
    f[t + 4..t + 8].copy_from_slice(&seq.to_be_bytes());
    f[t + 8..t + 12].copy_from_slice(&7u32.to_be_bytes());
    f[t + 12] = 8 << 4;
    f[t + 13] = flags;
    f[t + 14..t + 16].copy_from_slice(&(seq as u16 | 1).to_be_bytes()); // windows differ
    f[t + 20..t + 32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 9, 0, 0, 0, 5]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(v6: bool, seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        test_segment(v6, seq, payload, flags)
    }

    fn run(frames: &[Vec<u8>]) -> Vec<(Vec<u8>, usize)> {
        let mut gro = Gro::new();
        let mut out = Vec::new();
        for f in frames {
            let mut write = |b: &[u8], n: usize| out.push((b.to_vec(), n));
            if !gro.offer(f, &mut write) {
                write(f, 1);
            }
        }
        gro.flush(&mut |b: &[u8], n: usize| out.push((b.to_vec(), n)));
        out
    }

    /// Completes the partial checksum of a TCP frame as a device would and checks it
    /// against the one's-complement sum over pseudo-header and segment.
    fn tcp_checksum_completes(frame: &[u8], v6: bool) -> bool {
        let ip = HDR + ETH;
        let l4 = ip + if v6 { 40 } else { 20 };
        let mut f = frame.to_vec();
        // The field holds the pseudo-header sum: the segment's sum with it is the checksum.
        let c = checksum(&f[l4..]);
        f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        let addrs = if v6 {
            &f[ip + 8..ip + 40]
        } else {
            &f[ip + 12..ip + 20]
        };
        let whole = sum(addrs, 0) + 6 + (f.len() - l4) as u64 + sum(&f[l4..], 0);
        fold(whole) == 0xffff
    }

    #[test]
    fn takes_judges_a_segment_by_its_head_and_its_length() {
        for v6 in [false, true] {
            let f = seg(v6, 7, &[9; 1400], TCP_ACK);
            let head = &f[..HEAD_LEN];
            assert!(takes(head, f.len()));
            assert_eq!(takes(head, f.len()), segment(&f).is_some());
            assert!(
                !takes(head, f.len() - 1),
                "a length the IP header disagrees with"
            );
            assert!(!takes(&f[..HDR + ETH + 10], f.len()), "headers cut");
            let syn = seg(v6, 7, &[9; 1400], TCP_ACK | wire::tcp::SYN);
            assert!(!takes(&syn[..HEAD_LEN], syn.len()));
        }
    }

    #[test]
    fn consecutive_segments_of_a_flow_become_one_gso_frame_ending_at_a_short_one() {
        for v6 in [false, true] {
            let a = [0xaa; 1000];
            let frames = [
                seg(v6, 100, &a, TCP_ACK),
                seg(v6, 1100, &[0xbb; 1000], TCP_ACK),
                seg(v6, 2100, &[0xcc; 400], TCP_ACK | TCP_PSH),
                seg(v6, 2500, &[0xdd; 1000], TCP_ACK),
            ];
            let out = run(&frames);
            assert_eq!(out.len(), 2, "v6 {v6}");
            let (m, n) = &out[0];
            assert_eq!(*n, 3);
            let l3 = if v6 { 40 } else { 20 };
            let headers = ETH + l3 + 32;
            assert_eq!(m.len(), HDR + headers + 2400);
            assert_eq!(m[0], NEEDS_CSUM);
            assert_eq!(m[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
            assert_eq!(u16::from_le_bytes([m[2], m[3]]) as usize, headers);
            assert_eq!(u16::from_le_bytes([m[4], m[5]]), 1000);
            assert_eq!(u16::from_le_bytes([m[6], m[7]]) as usize, ETH + l3);
            assert_eq!(u16::from_le_bytes([m[8], m[9]]), 16);
            let ip = HDR + ETH;
            if v6 {
                assert_eq!(
                    u16::from_be_bytes([m[ip + 4], m[ip + 5]]) as usize,
                    32 + 2400
                );
            } else {
                assert_eq!(
                    u16::from_be_bytes([m[ip + 2], m[ip + 3]]) as usize,
                    20 + 32 + 2400
                );
                assert_eq!(
                    fold(sum(&m[ip..ip + 20], 0)),
                    0xffff,
                    "IPv4 header checksum"
                );
            }
            let t = ip + l3;
            // The first one's sequence number, the last one's window, PSH kept.
            assert_eq!(&m[t + 4..t + 8], &100u32.to_be_bytes());
            assert_eq!(&m[t + 14..t + 16], &(2100u16 | 1).to_be_bytes());
            assert_eq!(m[t + 13], TCP_ACK | TCP_PSH);
            let mut want = vec![0xaa; 1000];
            want.extend([0xbb; 1000]);
            want.extend([0xcc; 400]);
            assert_eq!(&m[HDR + headers..], &want[..]);
            assert!(tcp_checksum_completes(m, v6));
            // The one after the short segment starts anew; alone, it goes out as it came.
            assert_eq!(out[1], (frames[3].clone(), 1));
        }
    }

    #[test]
    fn what_breaks_the_rules_is_written_as_it_came_in_order() {
        let p = [0x11; 500];
        let base = seg(false, 0, &p, TCP_ACK);
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        cases.push(("a gap in the sequence", seg(false, 501, &p, TCP_ACK)));
        cases.push(("a longer segment", seg(false, 500, &[0x11; 501], TCP_ACK)));
        for (name, flag) in [("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("URG", 0x20)] {
            cases.push((name, seg(false, 500, &p, TCP_ACK | flag)));
        }
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + ETH + 20 + 8] ^= 1;
        cases.push(("another ack", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + ETH + 20 + 31] ^= 1;
        cases.push(("other options", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + ETH + 20 + 1] ^= 1;
        cases.push(("another port", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + ETH + 19] ^= 1;
        cases.push(("another address", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + ETH + 8] ^= 1;
        cases.push(("another TTL", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[HDR + 5] ^= 1;
        cases.push(("another MAC", f));
        let mut f = seg(false, 500, &p, TCP_ACK);
        f[0] = 0;
        cases.push(("a full checksum", f));
        cases.push(("IPv6 after IPv4", seg(true, 500, &p, TCP_ACK)));
        for (name, second) in cases {
            let out = run(&[base.clone(), second.clone()]);
            assert_eq!(out, vec![(base.clone(), 1), (second, 1)], "{name}");
        }
        // Not TCP segments GRO takes at all: written at once, in order.
        let ack_only = seg(false, 0, &[], TCP_ACK);
        let mut frag = seg(false, 0, &p, TCP_ACK);
        frag[HDR + ETH + 6] = 0x20; // MF
        let mut padded = seg(false, 0, &p, TCP_ACK);
        padded.push(0);
        let gso = {
            let mut f = seg(false, 0, &p, TCP_ACK);
            f[1] = GSO_TCPV4;
            f
        };
        for f in [ack_only, frag, padded, gso] {
            assert_eq!(run(std::slice::from_ref(&f)), vec![(f, 1)]);
        }
    }

    #[test]
    fn a_merged_frame_stays_within_64_kib_of_ip_packet() {
        let p = [0x22; 1448];
        let frames: Vec<_> = (0..50u32)
            .map(|i| seg(false, i * 1448, &p, TCP_ACK))
            .collect();
        let out = run(&frames);
        assert!(out.len() > 1);
        let mut total = 0;
        for (m, n) in &out {
            assert!(m.len() - HDR - ETH <= MAX_IP);
            total += n;
        }
        assert_eq!(total, 50);
        // 65 535 - 52 bytes of headers hold 45 segments of 1 448.
        assert_eq!(out[0].1, 45);
    }
}
