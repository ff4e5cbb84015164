//! Helpers for tests and benches (feature `test-utils`): guest memory, a driver-side view of
//! the two queues over `virtio_queue::mock::MockSplitQueue`, and frame builders.

use core::net::{Ipv4Addr, SocketAddrV4};

use virtio_queue::desc::RawDescriptor;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device::VIRTIO_NET_HDR_LEN;
use crate::wire::{
    ETH_HLEN, ETHERTYPE_ARP, ETHERTYPE_IPV4, IPPROTO_ICMP, IPV4_HLEN, MacAddr, UDP_HLEN,
    build_udp_frame, write_eth, write_ipv4_header,
};
use ::wire::{ArpPacket, EthernetFrame, Icmpv4Packet, arp, icmpv4};

/// The default guest MAC ([`crate::BridgeConfig`]'s).
pub const GUEST_MAC: MacAddr = crate::defaults::GUEST_MAC;
/// The default gateway MAC.
pub const GATEWAY_MAC: MacAddr = crate::defaults::GATEWAY_MAC;
/// The default gateway.
pub const GATEWAY: Ipv4Addr = crate::defaults::GATEWAY;
/// A guest address (the first of the default pool).
pub const GUEST_IP: Ipv4Addr = crate::defaults::DHCP_POOL_FIRST;
/// A server on the simulated internet (198.18.0.0/15).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
/// The default NAT external address.
pub const EXTERNAL: Ipv4Addr = crate::defaults::NAT_EXTERNAL_ADDR;

/// VRING_DESC_F_NEXT.
pub const DESC_F_NEXT: u16 = 1;
/// VRING_DESC_F_WRITE.
pub const DESC_F_WRITE: u16 = 2;
/// VRING_DESC_F_INDIRECT.
pub const DESC_F_INDIRECT: u16 = 4;

/// Where [`guest_memory`] places the TX queue rings.
pub const TX_RING: GuestAddress = GuestAddress(0x0);
/// Where [`guest_memory`] places the RX queue rings.
pub const RX_RING: GuestAddress = GuestAddress(0x8_0000);
/// Start of the data area that [`MockNet`] hands out for buffers.
pub const DATA_START: u64 = 0x10_0000;
/// Size of the guest memory from [`guest_memory`].
pub const MEM_SIZE: usize = 64 << 20;

/// Guest memory for the mock queues: 64 MiB at 0, plus 1 MiB at 0x3000_0000 where
/// `MockSplitQueue` puts indirect tables.
pub fn guest_memory() -> GuestMemoryMmap {
    // Test helper: a fixed, valid layout; failing here is a broken test environment.
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), MEM_SIZE),
        (GuestAddress(0x3000_0000), 1 << 20),
    ])
    .expect("guest memory")
}

/// The driver side of a virtio-net device's two queues, for tests: builds TX and RX chains
/// in guest memory and reads the used rings back.
///
/// The descriptor tables and available rings are `MockSplitQueue`'s; the used rings are
/// placed here, page-aligned after them, because `MockSplitQueue` 0.18 puts its used ring
/// over the available ring's `used_event` field (its `SplitQueueRing::end` adds the element
/// count, not the byte size), which breaks EVENT_IDX.
pub struct MockNet<'a> {
    /// Guest memory.
    pub mem: &'a GuestMemoryMmap,
    /// Queue 0 (driver view).
    pub rx: MockSplitQueue<'a, GuestMemoryMmap>,
    /// Queue 1 (driver view).
    pub tx: MockSplitQueue<'a, GuestMemoryMmap>,
    size: u16,
    rx_used_addr: GuestAddress,
    tx_used_addr: GuestAddress,
    next_data: u64,
    rx_desc: u16,
    tx_desc: u16,
    rx_used_seen: u16,
    tx_used_seen: u16,
}

impl core::fmt::Debug for MockNet<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("MockNet")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A used-ring entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub id: u32,
    /// Bytes written by the device.
    pub len: u32,
}

impl<'a> MockNet<'a> {
    /// Both queues of `size` entries at [`RX_RING`] and [`TX_RING`].
    pub fn new(mem: &'a GuestMemoryMmap, size: u16) -> Self {
        MockNet {
            mem,
            rx: MockSplitQueue::create(mem, RX_RING, size),
            tx: MockSplitQueue::create(mem, TX_RING, size),
            size,
            rx_used_addr: used_ring_addr(RX_RING, size),
            tx_used_addr: used_ring_addr(TX_RING, size),
            next_data: DATA_START,
            rx_desc: 0,
            tx_desc: 0,
            rx_used_seen: 0,
            tx_used_seen: 0,
        }
    }

    /// The device-side queues `(rx, tx)`, ready, with EVENT_IDX as given.
    pub fn queues(&self, event_idx: bool) -> (Queue, Queue) {
        let make = |m: &MockSplitQueue<'_, GuestMemoryMmap>, used: GuestAddress| {
            // Test helper: the layout is valid by construction.
            let mut q = Queue::new(self.size).expect("queue");
            q.set_size(self.size);
            q.try_set_desc_table_address(m.desc_table_addr())
                .expect("desc table");
            q.try_set_avail_ring_address(m.avail_addr())
                .expect("avail ring");
            q.try_set_used_ring_address(used).expect("used ring");
            q.set_ready(true);
            q.set_event_idx(event_idx);
            q
        };
        (
            make(&self.rx, self.rx_used_addr),
            make(&self.tx, self.tx_used_addr),
        )
    }

    /// The used ring addresses `(rx, tx)`.
    pub fn used_addrs(&self) -> (GuestAddress, GuestAddress) {
        (self.rx_used_addr, self.tx_used_addr)
    }

    /// Reserves `len` bytes of data area.
    pub fn alloc(&mut self, len: usize) -> u64 {
        let a = self.next_data;
        self.next_data += (len as u64 + 15) & !15;
        if self.next_data > MEM_SIZE as u64 - 0x10000 {
            self.next_data = DATA_START;
        }
        a
    }

    /// Posts a TX chain carrying a zeroed `hdr_len`-byte header and `frame`, split into
    /// descriptors of the given sizes (the last one takes the rest).
    pub fn send_frame(&mut self, hdr_len: usize, frame: &[u8], split: &[usize]) {
        let mut bytes = vec![0u8; hdr_len];
        bytes.extend_from_slice(frame);
        let addr = self.alloc(bytes.len());
        self.mem
            .write_slice(&bytes, GuestAddress(addr))
            .expect("write tx data");
        let mut pieces = Vec::new();
        let mut off = 0usize;
        for &s in split {
            if off + s >= bytes.len() {
                break;
            }
            pieces.push((addr + off as u64, s as u32));
            off += s;
        }
        pieces.push((addr + off as u64, (bytes.len() - off) as u32));
        let descs: Vec<(u64, u32, u16)> = pieces.into_iter().map(|(a, l)| (a, l, 0)).collect();
        self.post_tx(&descs);
    }

    /// Posts a TX chain of raw `(addr, len, flags)` descriptors (NEXT is managed here; pass
    /// WRITE or INDIRECT to build hostile chains).
    pub fn post_tx(&mut self, descs: &[(u64, u32, u16)]) {
        let mut start = self.tx_desc;
        if usize::from(start) + descs.len() > usize::from(self.size) {
            start = 0;
        }
        let raw = chain(descs, start, self.size);
        self.tx.add_desc_chains(&raw, start).expect("post tx chain");
        self.tx_desc = (start + descs.len() as u16) % self.size;
    }

    /// Posts raw TX descriptors at table index `at` exactly as given (flags and next
    /// included) and publishes `head` in the available ring.
    pub fn post_raw_tx(&mut self, at: u16, descs: &[Descriptor], head: u16) {
        for (i, d) in descs.iter().enumerate() {
            self.tx
                .desc_table()
                .store(at + i as u16, RawDescriptor::from(*d))
                .expect("store desc");
        }
        publish(self.mem, &self.tx, self.size, head);
    }

    /// Publishes TX chain `head` (already in the descriptor table) in the available ring.
    pub fn publish_tx(&self, head: u16) {
        publish(self.mem, &self.tx, self.size, head);
    }

    /// Publishes RX chain `head` (already in the descriptor table) in the available ring.
    pub fn publish_rx(&self, head: u16) {
        publish(self.mem, &self.rx, self.size, head);
    }

    /// Stores one descriptor in the TX table without publishing anything.
    pub fn store_tx_desc(&self, index: u16, desc: Descriptor) {
        self.tx
            .desc_table()
            .store(index, RawDescriptor::from(desc))
            .expect("store desc");
    }

    /// Stores one descriptor in the RX table without publishing anything.
    pub fn store_rx_desc(&self, index: u16, desc: Descriptor) {
        self.rx
            .desc_table()
            .store(index, RawDescriptor::from(desc))
            .expect("store desc");
    }

    /// Posts an RX chain of writable buffers with the given sizes.
    pub fn post_rx(&mut self, sizes: &[u32]) {
        let descs: Vec<(u64, u32, u16)> = sizes
            .iter()
            .map(|&s| (self.alloc(s as usize), s, DESC_F_WRITE))
            .collect();
        self.post_rx_raw(&descs);
    }

    /// Posts an RX chain of raw `(addr, len, flags)` descriptors.
    pub fn post_rx_raw(&mut self, descs: &[(u64, u32, u16)]) {
        let mut start = self.rx_desc;
        if usize::from(start) + descs.len() > usize::from(self.size) {
            start = 0;
        }
        let raw = chain(descs, start, self.size);
        self.rx.add_desc_chains(&raw, start).expect("post rx chain");
        self.rx_desc = (start + descs.len() as u16) % self.size;
    }

    /// New TX used entries since the last call.
    pub fn tx_used(&mut self) -> Vec<Used> {
        let (v, seen) = used_since(self.mem, self.tx_used_addr, self.size, self.tx_used_seen);
        self.tx_used_seen = seen;
        v
    }

    /// New RX used entries since the last call.
    pub fn rx_used(&mut self) -> Vec<Used> {
        let (v, seen) = used_since(self.mem, self.rx_used_addr, self.size, self.rx_used_seen);
        self.rx_used_seen = seen;
        v
    }

    /// The RX queue's `avail_event` (written by the device under EVENT_IDX).
    pub fn rx_avail_event(&self) -> u16 {
        let a = self
            .rx_used_addr
            .unchecked_add_u64(4 + 8 * u64::from(self.size));
        self.mem.read_obj(a).expect("avail_event")
    }

    /// Reads the bytes the device wrote into RX chain `head` (following its descriptors up
    /// to `len` bytes): the virtio-net header and the frame.
    pub fn rx_bytes(&self, used: Used) -> Vec<u8> {
        let mut out = Vec::new();
        let mut idx = used.id as u16;
        let mut left = used.len as usize;
        for _ in 0..self.size {
            let d = Descriptor::from(self.rx.desc_table().load(idx).expect("desc"));
            let n = (d.len() as usize).min(left);
            let mut buf = vec![0u8; n];
            self.mem.read_slice(&mut buf, d.addr()).expect("read rx");
            out.extend_from_slice(&buf);
            left -= n;
            if left == 0 || d.flags() & DESC_F_NEXT == 0 {
                break;
            }
            idx = d.next();
        }
        out
    }

    /// Receives one whole frame: concatenates `num_buffers` used RX entries and strips the
    /// header. Returns `(header, frame)`.
    pub fn rx_frame(
        &mut self,
        hdr_len: usize,
        pending: &mut Vec<Used>,
    ) -> Option<(crate::VirtioNetHdr, Vec<u8>)> {
        if pending.is_empty() {
            pending.extend(self.rx_used());
        }
        let first = pending.first().copied()?;
        let bytes = self.rx_bytes(first);
        let hdr = crate::VirtioNetHdr::parse(&bytes)?;
        let n = usize::from(hdr.num_buffers.max(1));
        if hdr_len < VIRTIO_NET_HDR_LEN || n == 1 {
            pending.remove(0);
            return Some((hdr, bytes.get(hdr_len..)?.to_vec()));
        }
        if pending.len() < n {
            return None;
        }
        let mut all = bytes;
        for u in pending.drain(..n).skip(1) {
            all.extend(self.rx_bytes(u));
        }
        Some((hdr, all.get(hdr_len..)?.to_vec()))
    }

    /// Sets `used_event` of the TX queue (EVENT_IDX: the driver wants an interrupt when the
    /// used index passes it).
    pub fn set_tx_used_event(&self, v: u16) {
        set_used_event(self.mem, &self.tx, self.size, v);
    }

    /// Sets `used_event` of the RX queue.
    pub fn set_rx_used_event(&self, v: u16) {
        set_used_event(self.mem, &self.rx, self.size, v);
    }

    /// Overwrites the TX available index (to model a driver publishing garbage).
    pub fn set_tx_avail_idx(&self, v: u16) {
        self.mem
            .write_obj(v, self.tx.avail_addr().unchecked_add_u64(2))
            .expect("avail idx");
    }
}

trait AddU64 {
    fn unchecked_add_u64(self, v: u64) -> GuestAddress;
}
impl AddU64 for GuestAddress {
    fn unchecked_add_u64(self, v: u64) -> GuestAddress {
        GuestAddress(self.0 + v)
    }
}

fn chain(descs: &[(u64, u32, u16)], start: u16, size: u16) -> Vec<RawDescriptor> {
    descs
        .iter()
        .enumerate()
        .map(|(i, &(a, l, f))| {
            let last = i + 1 == descs.len();
            let next = (start + i as u16 + 1) % size;
            let flags = if last {
                f & !DESC_F_NEXT
            } else {
                f | DESC_F_NEXT
            };
            RawDescriptor::from(Descriptor::new(a, l, flags, if last { 0 } else { next }))
        })
        .collect()
}

fn publish(mem: &GuestMemoryMmap, q: &MockSplitQueue<'_, GuestMemoryMmap>, size: u16, head: u16) {
    let idx_addr = q.avail_addr().unchecked_add_u64(2);
    let idx: u16 = mem.read_obj(idx_addr).expect("avail idx");
    let slot = q
        .avail_addr()
        .unchecked_add_u64(4 + 2 * u64::from(idx % size));
    mem.write_obj(head, slot).expect("avail ring");
    mem.write_obj(idx.wrapping_add(1), idx_addr)
        .expect("avail idx");
}

fn set_used_event(
    mem: &GuestMemoryMmap,
    q: &MockSplitQueue<'_, GuestMemoryMmap>,
    size: u16,
    v: u16,
) {
    let a = q.avail_addr().unchecked_add_u64(4 + 2 * u64::from(size));
    mem.write_obj(v, a).expect("used_event");
}

fn used_ring_addr(ring: GuestAddress, size: u16) -> GuestAddress {
    let after_avail = 16 * u64::from(size) + 6 + 2 * u64::from(size);
    GuestAddress(ring.0 + ((after_avail + 4095) & !4095))
}

fn used_since(mem: &GuestMemoryMmap, used: GuestAddress, size: u16, seen: u16) -> (Vec<Used>, u16) {
    let idx: u16 = mem.read_obj(used.unchecked_add_u64(2)).expect("used idx");
    let mut v = Vec::new();
    let mut i = seen;
    while i != idx {
        let at = used.unchecked_add_u64(4 + 8 * u64::from(i % size));
        let id: u32 = mem.read_obj(at).expect("used id");
        let len: u32 = mem.read_obj(at.unchecked_add_u64(4)).expect("used len");
        v.push(Used { id, len });
        i = i.wrapping_add(1);
    }
    (v, idx)
}

/// An Ethernet + IPv4 + UDP frame.
pub fn udp_frame(
    src_mac: MacAddr,
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; ETH_HLEN + IPV4_HLEN + UDP_HLEN + payload.len()];
    let n = build_udp_frame(
        &mut out,
        (GATEWAY_MAC, src_mac),
        SocketAddrV4::new(src, sport),
        SocketAddrV4::new(dst, dport),
        payload,
    )
    .unwrap_or(0);
    out.truncate(n);
    out
}

/// The IPv4 + UDP packet inside [`udp_frame`] (what the host link carries).
pub fn udp_packet(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Vec<u8> {
    udp_frame(GUEST_MAC, src, sport, dst, dport, payload).split_off(ETH_HLEN)
}

/// An ARP request from `sha`/`spa` for `tpa`.
pub fn arp_request(sha: MacAddr, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HLEN + arp::PACKET_LEN];
    let _ = write_eth(&mut f, MacAddr::BROADCAST, sha, ETHERTYPE_ARP);
    let mut a = ArpPacket::new_unchecked(&mut f[ETH_HLEN..]);
    a.set_ethernet_ipv4();
    a.set_operation(arp::REQUEST);
    a.set_sender_hardware_addr(sha);
    a.set_sender_protocol_addr(spa);
    a.set_target_hardware_addr(MacAddr::default());
    a.set_target_protocol_addr(tpa);
    f
}

/// An ICMP echo request frame.
pub fn icmp_echo(
    src_mac: MacAddr,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    seq: u16,
    payload: &[u8],
) -> Vec<u8> {
    let total = IPV4_HLEN + icmpv4::HEADER_LEN + payload.len();
    let mut f = vec![0u8; ETH_HLEN + total];
    let _ = write_eth(&mut f, GATEWAY_MAC, src_mac, ETHERTYPE_IPV4);
    write_ipv4_header(&mut f[ETH_HLEN..], total as u16, IPPROTO_ICMP, src, dst);
    let mut icmp = Icmpv4Packet::new_unchecked(&mut f[ETH_HLEN + IPV4_HLEN..]);
    icmp.set_msg_type(icmpv4::ECHO_REQUEST);
    icmp.set_msg_code(0);
    icmp.set_echo_ident(id);
    icmp.set_echo_seq_no(seq);
    icmp.payload_mut().copy_from_slice(payload);
    icmp.fill_checksum();
    f
}

/// A DHCP client message (`dhcproto`) in a broadcast UDP frame from `mac` (0.0.0.0:68 →
/// 255.255.255.255:67, or from `ciaddr` when set).
pub fn dhcp_frame(mac: MacAddr, msg: &dhcproto::v4::Message) -> Vec<u8> {
    use dhcproto::Encodable;
    let payload = msg.to_vec().unwrap_or_default();
    let src = msg.ciaddr();
    let mut f = udp_frame(mac, src, 68, Ipv4Addr::BROADCAST, 67, &payload);
    if let Ok(mut eth) = EthernetFrame::new_checked(&mut f[..]) {
        eth.set_dst_addr(MacAddr::BROADCAST);
    }
    f
}

/// Polls `cond` every millisecond until it holds; panics naming `what` after 10 s (a bound for
/// tests waiting on the driver's threads, not a timing assertion).
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Activates the bridge of `config` on `net`'s queues (EVENT_IDX) over `link`, the driver
/// accepting `features`, with an interrupt callback that does nothing (tests poll the rings).
///
/// # Errors
///
/// As [`crate::Bridge::new`] and [`crate::Bridge::activate`].
#[cfg(feature = "driver")]
pub fn activate<H: crate::HostLink + 'static>(
    mem: &std::sync::Arc<GuestMemoryMmap>,
    net: &MockNet<'_>,
    config: crate::BridgeConfig,
    features: u64,
    link: H,
) -> Result<crate::BridgeHandle, crate::Error> {
    let mut bridge = crate::Bridge::new(config)?;
    let acked = bridge.ack_features(features);
    let (rx, tx) = net.queues(true);
    let act = crate::Activation {
        mem: std::sync::Arc::clone(mem),
        rx,
        tx,
        acked_features: acked,
        interrupt: std::sync::Arc::new(|_| {}),
    };
    bridge.activate(act, link)
}

/// An Ethernet + IPv6 frame from `src_mac` to `dst_mac` with `payload` after the fixed
/// header (no extension headers), hop limit `hop_limit`. Checksums inside `payload` are the
/// caller's (see [`icmpv6_frame`], [`udp6_frame`]).
pub fn ipv6_frame(
    (src_mac, dst_mac): (MacAddr, MacAddr),
    (src, dst): (core::net::Ipv6Addr, core::net::Ipv6Addr),
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; ETH_HLEN + ::wire::ipv6::HEADER_LEN + payload.len()];
    let _ = write_eth(&mut f, dst_mac, src_mac, crate::wire::ETHERTYPE_IPV6);
    let mut ip = ::wire::Ipv6Packet::new_unchecked(&mut f[ETH_HLEN..]);
    ip.set_version(6);
    ip.set_payload_len(u16::try_from(payload.len()).unwrap_or(u16::MAX));
    ip.set_next_header(next_header);
    ip.set_hop_limit(hop_limit);
    ip.set_src_addr(src);
    ip.set_dst_addr(dst);
    ip.payload_mut().copy_from_slice(payload);
    f
}

/// An ICMPv6 message `msg` (type, code, anything in the checksum field, the rest) in an
/// IPv6 frame; the checksum is filled in.
pub fn icmpv6_frame(
    macs: (MacAddr, MacAddr),
    (src, dst): (core::net::Ipv6Addr, core::net::Ipv6Addr),
    hop_limit: u8,
    msg: &[u8],
) -> Vec<u8> {
    let mut m = msg.to_vec();
    if m.len() >= ::wire::icmpv6::HEADER_LEN {
        ::wire::Icmpv6Packet::new_unchecked(&mut m[..]).fill_checksum(src, dst);
    }
    ipv6_frame(macs, (src, dst), ::wire::ip_proto::ICMPV6, hop_limit, &m)
}

/// A UDP datagram in an IPv6 frame (hop limit 64) with a valid checksum.
pub fn udp6_frame(
    macs: (MacAddr, MacAddr),
    (src, sport): (core::net::Ipv6Addr, u16),
    (dst, dport): (core::net::Ipv6Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut u = vec![0u8; UDP_HLEN + payload.len()];
    let mut p = ::wire::UdpPacket::new_unchecked(&mut u[..]);
    p.set_src_port(sport);
    p.set_dst_port(dport);
    p.set_len(u16::try_from(UDP_HLEN + payload.len()).unwrap_or(u16::MAX));
    p.payload_mut().copy_from_slice(payload);
    p.fill_checksum_v6(src, dst);
    ipv6_frame(macs, (src, dst), ::wire::ip_proto::UDP, 64, &u)
}
