//! Head-only TX: a large TCP frame that goes through the NAT to the host link is copied out of
//! guest memory only as far as its headers (the first [`HEAD_BYTES`] bytes of the frame); its
//! payload stays in the guest's buffers, and its TX chain stays the device's (not in the used
//! ring) until the host link has sent the packet gathered from the copied head and guest
//! memory ([`crate::HostLink::send_gather`]: one `writev` on a TUN device).
//!
//! Only frames whose way reads nothing past their headers qualify ([`SplitRule`]): TCP to the
//! gateway's MAC, bound for an address beyond the guest's network (not another guest, not the
//! gateway's services, not the NAT's external address, which hairpins back to a guest), no
//! fragment, no IPv6 extension header, and a checksum request (if any) in the standard place
//! (one elsewhere is completed in software, which reads the payload). The NAT's outbound
//! translation of such a packet touches the IP header and the TCP ports and checksum only,
//! incrementally; the gateway's checks read headers; an ICMP error it answers with quotes at
//! most 1 280 bytes, within the head. The frame keeps its whole length in the batch: the
//! buffer's bytes past the head are not the frame's, and nothing on its way reads them.

use std::net::{Ipv4Addr, Ipv6Addr};

use vm_memory::{Address, GuestAddress, GuestMemory, Permissions};

use crate::config::BridgeConfig;
use crate::device::VIRTIO_NET_HDR_F_NEEDS_CSUM;
use crate::host::GuestSegment;
use crate::ring::UsedBatch;
use crate::stats::DropCause;
use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, MacAddr};
use ::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet, TcpPacket, ip_proto};

/// Bytes of a frame (after its virtio-net header) copied out of guest memory when it goes
/// head-only: every header the bridge and the NAT read, and any ICMP error's quote.
pub(crate) const HEAD_BYTES: usize = 2048;

/// Guest-memory pieces a head-only frame may have beyond its head; a chain of more is copied
/// whole.
pub(crate) const MAX_TAIL: usize = 32;

/// Which frames may go head-only (see the module documentation).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SplitRule {
    gateway_mac: MacAddr,
    net: u32,
    mask: u32,
    external: Ipv4Addr,
    /// The guest's IPv6 prefix (/64), and NAT66's external address.
    prefix6: Option<[u8; 8]>,
    external6: Ipv6Addr,
}

impl SplitRule {
    /// The rule for a device of `config`.
    pub(crate) fn new(config: &BridgeConfig) -> Self {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(config.prefix_len.min(32)))
            .unwrap_or(0);
        let prefix6 = config.ipv6.as_ref().map(|v| {
            let o = v.prefix.octets();
            [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]]
        });
        SplitRule {
            gateway_mac: config.gateway_mac,
            net: u32::from(config.gateway) & mask,
            mask,
            external: config.nat.external_addr,
            prefix6,
            external6: config.nat.external_addr6,
        }
    }

    /// Whether the frame whose virtio-net header is `hdr` (empty without one) and whose first
    /// bytes are `head` may go head-only.
    pub(crate) fn qualifies(&self, hdr: &[u8], head: &[u8]) -> bool {
        let Ok(eth) = EthernetFrame::new_checked(head) else {
            return false;
        };
        if eth.dst_addr() != self.gateway_mac {
            return false;
        }
        let l3 = eth.payload();
        let ip_hlen = match eth.ethertype() {
            ETHERTYPE_IPV4 => match self.ipv4_hlen(l3) {
                Some(h) => h,
                None => return false,
            },
            ETHERTYPE_IPV6 => match self.ipv6_hlen(l3) {
                Some(h) => h,
                None => return false,
            },
            _ => return false,
        };
        let tcp_ok = l3
            .get(ip_hlen..)
            .and_then(|t| TcpPacket::new_checked(t).ok())
            .is_some_and(|t| ip_hlen + t.header_len() <= l3.len());
        if !tcp_ok {
            return false;
        }
        // A checksum request elsewhere than the TCP checksum is completed in software.
        match hdr {
            [flags, _, _, _, _, _, s0, s1, o0, o1, ..]
                if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 =>
            {
                let start = usize::from(u16::from_le_bytes([*s0, *s1]));
                let offset = usize::from(u16::from_le_bytes([*o0, *o1]));
                start == ETH_HLEN + ip_hlen && offset == ::wire::tcp::field::CHECKSUM.start
            }
            _ => true,
        }
    }

    /// The header length of an IPv4 TCP packet to beyond the guest's network that is no
    /// fragment.
    fn ipv4_hlen(&self, l3: &[u8]) -> Option<usize> {
        if l3.len() < ::wire::ipv4::HEADER_LEN {
            return None;
        }
        let ip = Ipv4Packet::new_unchecked(l3);
        let hlen = ip.header_len();
        let dst = ip.dst_addr();
        let ok = ip.version() == 4
            && hlen >= ::wire::ipv4::HEADER_LEN
            && ip.protocol() == ip_proto::TCP
            && !ip.is_fragment()
            && u32::from(dst) & self.mask != self.net
            && dst != self.external
            && !dst.is_multicast()
            && !dst.is_broadcast();
        ok.then_some(hlen)
    }

    /// 40 for an IPv6 packet with TCP right after its fixed header, to a unicast address
    /// beyond the guest's link and prefix.
    fn ipv6_hlen(&self, l3: &[u8]) -> Option<usize> {
        if l3.len() < ::wire::ipv6::HEADER_LEN {
            return None;
        }
        let ip = Ipv6Packet::new_unchecked(l3);
        let dst = ip.dst_addr();
        let o = dst.octets();
        let ok = ip.version() == 6
            && ip.next_header() == ip_proto::TCP
            && !dst.is_multicast()
            && !dst.is_unicast_link_local()
            && self.prefix6.is_none_or(|p| o[..8] != p)
            && dst != self.external6;
        ok.then_some(::wire::ipv6::HEADER_LEN)
    }
}

/// The head-only state of one TX batch: each frame's guest-memory tail and the chains held
/// back from the used ring.
#[derive(Debug)]
pub(crate) struct TxSplit {
    rule: Option<SplitRule>,
    /// The tails' pieces, frame after frame.
    segs: Vec<GuestSegment>,
    /// Per frame of the batch (by index).
    tails: Vec<Tail>,
}

/// What [`TxSplit`] knows of one frame of the batch.
#[derive(Clone, Copy, Debug)]
struct Tail {
    /// Its pieces in `segs` (none for a whole frame).
    from: u32,
    to: u32,
    /// How many bytes of the frame the buffer holds.
    head: u32,
    /// Its chain, and whether that is still held back from the used ring.
    chain: u16,
    held: bool,
}

impl TxSplit {
    /// No frame goes head-only until [`TxSplit::set_rule`].
    pub(crate) fn new(batch_size: usize) -> Self {
        TxSplit {
            rule: None,
            segs: Vec::with_capacity(batch_size * MAX_TAIL),
            tails: Vec::with_capacity(batch_size),
        }
    }

    pub(crate) fn set_rule(&mut self, rule: Option<SplitRule>) {
        self.rule = rule;
    }

    /// Forgets the last batch's tails (its chains must have been released).
    pub(crate) fn clear(&mut self) {
        self.segs.clear();
        self.tails.clear();
    }

    /// Frame `i`'s guest-memory tail and the bytes of it the buffer holds, if it went
    /// head-only.
    pub(crate) fn tail(&self, i: usize) -> Option<(&[GuestSegment], usize)> {
        let t = self.tails.get(i)?;
        (t.from < t.to).then(|| {
            let segs = self
                .segs
                .get(t.from as usize..t.to as usize)
                .unwrap_or_default();
            (segs, t.head as usize)
        })
    }

    /// Whether frame `i` went head-only.
    pub(crate) fn is_head_only(&self, i: usize) -> bool {
        self.tail(i).is_some()
    }

    /// Frame `i`'s chain if it is still held back; it is not any more.
    pub(crate) fn release_one(&mut self, i: usize) -> Option<u16> {
        let t = self.tails.get_mut(i)?;
        let chain = t.held.then_some(t.chain);
        t.held = false;
        chain
    }

    /// Adds the chains still held back to `used`; none is any more.
    pub(crate) fn release_all(&mut self, used: &mut UsedBatch) {
        for t in &mut self.tails {
            if t.held {
                used.push(t.chain, 0);
                t.held = false;
            }
        }
    }

    /// Records the frame just committed to the batch: whole (`head_only` false), or with the
    /// pieces [`TxSplit::read_desc`] recorded since `from` and `head` bytes copied; its chain
    /// `chain` is then held back.
    pub(crate) fn commit(&mut self, from: usize, head: usize, head_only: bool, chain: u16) {
        let to = if head_only { self.segs.len() } else { from };
        self.tails.push(Tail {
            from: from as u32,
            to: to as u32,
            head: head as u32,
            chain,
            held: head_only,
        });
    }

    /// Forgets the pieces recorded since `from` (a chain refused, or copied whole).
    pub(crate) fn forget_since(&mut self, from: usize) {
        self.segs.truncate(from);
    }

    /// Pieces recorded so far (where the next chain's start).
    pub(crate) fn mark(&self) -> usize {
        self.segs.len()
    }

    /// One descriptor's bytes (`addr`, `len`) of a chain being read into `buf` (`total` bytes read so far;
    /// `hdr_len`, the virtio-net header's length, in front): copied up to the head, then, for
    /// a frame the rule lets go head-only, recorded as a piece. `state` says which.
    pub(crate) fn read_desc<M: GuestMemory>(
        &mut self,
        mem: &M,
        state: &mut SplitState,
        (addr, len): (GuestAddress, usize),
        buf: &mut [u8],
        total: usize,
        hdr_len: usize,
    ) -> Result<(), DropCause> {
        let end = total + len;
        let mut at = total;
        let mut addr = addr;
        if let SplitState::Head { from } = *state {
            let head_end = hdr_len + HEAD_BYTES;
            let n = (head_end - at).min(len);
            read(mem, addr, buf.get_mut(at..at + n))?;
            at += n;
            addr = addr
                .checked_add(n as u64)
                .ok_or(DropCause::ChainOutOfBounds)?;
            if at == head_end {
                let (hdr, frame) = buf.split_at(hdr_len);
                let ok = self
                    .rule
                    .is_some_and(|r| r.qualifies(hdr, frame.get(..HEAD_BYTES).unwrap_or_default()));
                *state = if ok {
                    SplitState::Tail { from }
                } else {
                    SplitState::Whole
                };
            }
        }
        if at == end {
            return Ok(());
        }
        let rest = end - at;
        if let SplitState::Tail { from } = *state {
            if !mem.check_range(addr, rest, Permissions::Read) {
                return Err(DropCause::ChainOutOfBounds);
            }
            let len = u32::try_from(rest).map_err(|_| DropCause::TooBig)?;
            if self.segs.len() - from < MAX_TAIL {
                self.segs.push(GuestSegment { addr, len });
                return Ok(());
            }
            // Too many pieces: copy what was left behind, and the rest as it comes.
            let mut off = hdr_len + HEAD_BYTES;
            for s in self.segs.drain(from..) {
                let n = s.len as usize;
                read(mem, s.addr, buf.get_mut(off..off + n))?;
                off += n;
            }
            *state = SplitState::Whole;
        }
        read(mem, addr, buf.get_mut(at..end))
    }
}

/// Where reading a chain stands (see [`TxSplit::read_desc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SplitState {
    /// Copying the head; the chain's pieces start at `from` in the recorded pieces.
    Head { from: usize },
    /// The head qualified: the rest is recorded from `from` on.
    Tail { from: usize },
    /// Copied whole.
    Whole,
}

fn read<M: GuestMemory>(
    mem: &M,
    addr: GuestAddress,
    buf: Option<&mut [u8]>,
) -> Result<(), DropCause> {
    let buf = buf.ok_or(DropCause::TooBig)?;
    crate::gmem::read(mem, addr, buf).map_err(|()| DropCause::ChainOutOfBounds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::VirtioNetHdr;
    use crate::gateway::Ipv6Config;

    fn rule() -> SplitRule {
        SplitRule::new(&BridgeConfig {
            ipv6: Some(Ipv6Config::default()),
            ..BridgeConfig::default()
        })
    }

    /// The first [`HEAD_BYTES`] of a frame to `mac` carrying `l3` then a TCP header.
    fn head(mac: MacAddr, ethertype: u16, l3: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; HEAD_BYTES];
        let mut eth = ::wire::EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(mac);
        eth.set_ethertype(ethertype);
        f[ETH_HLEN..ETH_HLEN + l3.len()].copy_from_slice(l3);
        // TCP data offset 5 right after the IP header.
        f[ETH_HLEN + l3.len() + ::wire::tcp::field::DATA_OFFSET] = 5 << 4;
        f
    }

    fn v4(dst: [u8; 4], proto: u8, frag: u16) -> Vec<u8> {
        let mut b = vec![0u8; 20];
        let mut ip = Ipv4Packet::new_unchecked(&mut b[..]);
        ip.set_version(4);
        ip.set_header_len(20);
        ip.set_total_len(60_000);
        ip.set_protocol(proto);
        ip.set_dst_addr(Ipv4Addr::from(dst));
        b[::wire::ipv4::field::FLAGS_FRAGMENT].copy_from_slice(&frag.to_be_bytes());
        b
    }

    fn v6(dst: Ipv6Addr, next: u8) -> Vec<u8> {
        let mut b = vec![0u8; 40];
        b[0] = 6 << 4;
        b[::wire::ipv6::field::NEXT_HEADER] = next;
        b[::wire::ipv6::field::DST_ADDR].copy_from_slice(&dst.octets());
        b
    }

    fn csum(start: u16, offset: u16) -> [u8; 12] {
        VirtioNetHdr {
            flags: crate::device::VIRTIO_NET_HDR_F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VirtioNetHdr::default()
        }
        .to_bytes()
    }

    /// TCP to beyond the guest's network goes head-only; another guest, the gateway's
    /// services, the NAT's external addresses (a hairpin), fragments, other protocols, IPv6
    /// extension headers, link-local and multicast, another MAC and a checksum request
    /// elsewhere than TCP's do not.
    #[test]
    fn only_tcp_beyond_the_guests_network_goes_head_only() {
        let r = rule();
        let gw = crate::defaults::GATEWAY_MAC;
        let server = [198, 18, 0, 2];
        let tcp = ::wire::ip_proto::TCP;
        let ok4 = head(gw, ETHERTYPE_IPV4, &v4(server, tcp, 0));
        assert!(r.qualifies(&[], &ok4));
        assert!(
            r.qualifies(&csum(34, 16), &ok4),
            "the standard checksum request"
        );
        assert!(
            !r.qualifies(&csum(34, 6), &ok4),
            "a request elsewhere is completed"
        );
        let server6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
        let ok6 = head(gw, ETHERTYPE_IPV6, &v6(server6, tcp));
        assert!(r.qualifies(&csum(54, 16), &ok6));
        let no = [
            (
                "another guest",
                head(gw, ETHERTYPE_IPV4, &v4([192, 168, 64, 3], tcp, 0)),
            ),
            (
                "the gateway",
                head(gw, ETHERTYPE_IPV4, &v4([192, 168, 64, 1], tcp, 0)),
            ),
            (
                "the NAT",
                head(gw, ETHERTYPE_IPV4, &v4([100, 64, 0, 2], tcp, 0)),
            ),
            (
                "multicast",
                head(gw, ETHERTYPE_IPV4, &v4([224, 0, 0, 1], tcp, 0)),
            ),
            (
                "UDP",
                head(gw, ETHERTYPE_IPV4, &v4(server, ::wire::ip_proto::UDP, 0)),
            ),
            (
                "a fragment",
                head(gw, ETHERTYPE_IPV4, &v4(server, tcp, 0x2000)),
            ),
            (
                "a later fragment",
                head(gw, ETHERTYPE_IPV4, &v4(server, tcp, 3)),
            ),
            (
                "another MAC",
                head(
                    MacAddr([2, 0, 0, 0, 0, 9]),
                    ETHERTYPE_IPV4,
                    &v4(server, tcp, 0),
                ),
            ),
            ("ARP", head(gw, 0x0806, &v4(server, tcp, 0))),
            (
                "an IPv6 guest",
                head(gw, ETHERTYPE_IPV6, &v6("fd64::5".parse().unwrap(), tcp)),
            ),
            (
                "link-local",
                head(gw, ETHERTYPE_IPV6, &v6("fe80::5".parse().unwrap(), tcp)),
            ),
            (
                "multicast6",
                head(gw, ETHERTYPE_IPV6, &v6("ff02::1".parse().unwrap(), tcp)),
            ),
            (
                "NAT66",
                head(
                    gw,
                    ETHERTYPE_IPV6,
                    &v6("fd64:ffff::2".parse().unwrap(), tcp),
                ),
            ),
            (
                "an extension header",
                head(gw, ETHERTYPE_IPV6, &v6(server6, 0)),
            ),
        ];
        for (what, h) in no {
            assert!(!r.qualifies(&[], &h), "{what}");
        }
        assert!(
            !r.qualifies(&[], &ok4[..ETH_HLEN + 30]),
            "a head too short for TCP"
        );
    }
}
