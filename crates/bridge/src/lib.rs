//! The device side of virtio-net for hostnet: the NIC a hypervisor gives its guest.
//!
//! # Layer
//!
//! `bridge` sits between a VMM's virtio transport and the host. It implements the device
//! side of virtio-net over rust-vmm [`virtio_queue`] split queues in [`vm_memory`] guest
//! memory, answers the guest's L2 needs itself (ARP, DHCP, ping and DNS at the gateway), and
//! moves IPv4 packets between the guest and a [`HostLink`] (a TUN device, or the in-memory
//! [`MemoryLink`]) through the sans-IO [`nat`] crate.
//!
//! It has two layers:
//!
//! 1. A **thread-free device core** that any event loop can drive (a vhost-user backend
//!    calls it from its own worker thread): [`Device`] (features, config space),
//!    [`TxPath::process`] (TX queue → [`FrameBatch`]), [`RxPath::fill`] ([`FrameBatch`] →
//!    RX queue, MRG_RXBUF, EVENT_IDX), [`L2Services`] (classifies guest frames: replies,
//!    NAT, or counted drops), and the per-batch glue [`TxEngine`] (pull → translate → push)
//!    and [`RxEngine`] (receive → translate → deliver), which take the NAT for one step
//!    only. All generic over `M: GuestMemory`; they use the embedder's
//!    `virtio_queue::Queue` for its state (ring addresses, `next_avail`/`next_used`,
//!    EVENT_IDX, notification suppression) and walk descriptors and write used entries
//!    themselves, publishing the used index once per batch. [`Dataplane`] puts them
//!    together for one owner thread (TX kick, RX ready, timer; gateway replies first).
//! 2. The **threaded runner** for embedders: [`Bridge::new`] with a [`BridgeConfig`],
//!    [`Bridge::activate`] with guest memory, the two queues and an interrupt callback,
//!    giving a [`BridgeHandle`] (kicks, stats, port forwards, lease, shutdown).
//!
//! ```
//! use bridge::{Bridge, BridgeConfig, VIRTIO_F_VERSION_1};
//!
//! let mut bridge = Bridge::new(BridgeConfig::default().with_host_dns())?;
//! let acked = bridge.ack_features(bridge.device_features());
//! assert_ne!(acked & (1 << VIRTIO_F_VERSION_1), 0);
//! let mut mtu = [0u8; 2];
//! bridge.read_config(10, &mut mtu);
//! assert_eq!(u16::from_le_bytes(mtu), 1500);
//! # Ok::<(), bridge::Error>(())
//! ```
//!
//! # Guarantees
//!
//! - Safe Rust only (`#![deny(unsafe_code)]`): guest memory is reached through vm-memory's
//!   checked `Bytes` API only.
//! - A hostile guest cannot make the host panic, hang or grow memory: out-of-bounds, looping,
//!   over-long or wrong-direction descriptor chains, short headers, oversize and garbage
//!   frames are counted ([`DropCause`]) and skipped; an available index more than a queue
//!   size ahead marks the device as needing reset ([`Error::NeedsReset`],
//!   [`CONFIG_INTERRUPT`]).
//! - No allocation and no lock per packet on the data path: frames live in preallocated
//!   [`FrameBatch`]es; the NAT lock is taken once per batch per direction.
//! - Anti-spoofing: frames from a MAC other than the guest's, or IPv4 from an address other
//!   than its lease or static address, never reach the NAT (DHCP from 0.0.0.0 excepted).
//! - Packets from the host larger than the guest MTU are counted ([`DropCause::TooBig`]) and
//!   dropped (GSO super-packets excepted, with GUEST_TSO4); no ICMP fragmentation-needed is
//!   generated (the guest's TCP MSS normally keeps them from happening; the host's TUN MTU
//!   should equal the guest MTU so the host kernel fragments or signals PMTU itself). IP
//!   fragments are delivered each as its own frame; fragments that arrive before their first
//!   fragment are held by the NAT and sent on once it has come through.
//! - Gateway services: ARP answers for the gateway address only (a DHCP client's probe of
//!   its offered address gets no answer) and learns the guest's MAC; DHCP (RFC 2131: offer,
//!   request/ack/nak, renew/rebind, release, decline, inform; unicast or broadcast replies
//!   per the BROADCAST flag and `ciaddr`); ICMP echo to the gateway; DNS to the gateway
//!   forwarded through a NAT redirect to [`BridgeConfig::dns_upstream`]
//!   ([`host_dns_upstream`] reads the host's resolv.conf). IPv6 and other EtherTypes are
//!   counted and dropped.
//!
//! # Offloads
//!
//! With [`BridgeConfig::offloads`] (or [`Device::with_offloads`] for the thread-free core)
//! the device also offers CSUM, GUEST_CSUM, HOST_TSO4 and GUEST_TSO4 ([`OFFLOAD_FEATURES`]).
//! The guest then sends 64 KiB TCP super-frames and partial checksums; the bridge checks each
//! virtio-net header ([`Offloads`], counted [`DropCause::Offload`] drops for requests not
//! negotiated or out of bounds), translates the packet through the NAT with the checksum
//! read as partial (`nat::L4Checksum::Partial`), and hands it to a host link that takes the
//! same header ([`HostLink::vnet_hdr_len`] = 12: a Linux TUN opened with `vnet_hdr(true)`),
//! so the host kernel segments and checksums. The other way, the link is told with
//! [`HostLink::set_offloads`] what the guest accepts, and GSO super-packets and partial
//! checksums from the host reach the guest with their header (offsets moved by the 14-byte
//! Ethernet header). A partial checksum that can't travel on (hairpinned to a guest without
//! GUEST_CSUM, a protocol the NAT doesn't adjust) is completed in software.
//!
//! # Threads (runner)
//!
//! `bridge-tx` owns the TX queue (its state sits behind a per-batch lock so that
//! [`BridgeHandle::kick_inline`] can drain it on the kicker's own thread when `bridge-tx` is
//! idle, saving a thread wake-up per kick): on a kick it drains chains into a batch, runs the gateway
//! services, translates the batch through the NAT under one lock and writes it to the host
//! link. Gateway replies and hairpinned packets travel to `bridge-rx` in pooled batches over
//! a bounded crossbeam channel; when the pool is empty, the TX queue is not drained
//! (backpressure). `bridge-rx` owns the RX queue: it reads batches from the host link,
//! translates them under one NAT lock, and fills RX buffers; when the guest has none, it
//! stops reading the host link until the RX kick. Each thread blocks in one epoll set
//! (kick eventfd, shutdown eventfd, host readiness fd); there are no busy loops and no
//! sleeps. The NAT clock is read once per batch; `Nat::expire` runs with a bounded budget
//! when the NAT's deadline passes (epoll waits at most until then).
//!
//! # Features
//!
//! - `utun` (default): `impl HostLink for utun::Tun`.
//! - `test-utils`: `testing` helpers (frame builders, mock-queue drivers) for tests and
//!   benches of crates that embed the bridge.
//!
//! # Platforms and MSRV
//!
//! The device core builds everywhere; the threaded runner needs Linux (eventfd, epoll) and
//! returns [`Error::Unsupported`] elsewhere. MSRV 1.95.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod dataplane;
mod device;
mod dhcp;
mod dns;
mod engine;
mod error;
mod forward;
mod frame;
mod gmem;
mod host;
mod l2;
mod offload;
mod ring;
mod runner;
mod rx;
mod stats;
mod tx;
mod wire;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, MacAddr, ParseMacError, checksum};
pub use dataplane::{Dataplane, Notify};
pub use device::{
    CONFIG_INTERRUPT, CONFIG_SPACE_SIZE, Device, OFFERED_FEATURES, OFFLOAD_FEATURES, RX_QUEUE,
    TX_QUEUE, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_ANY_LAYOUT, VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_LEGACY_LEN, VIRTIO_NET_HDR_LEN, VIRTIO_NET_S_LINK_UP,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioNetHdr, header_len_for,
    sanitize_features,
};
pub use dhcp::{DhcpConfig, DhcpReply, DhcpServer};
pub use dns::{host_dns_upstream, parse_resolv_conf};
pub use engine::{RxEngine, TxEngine};
pub use error::Error;
pub use forward::{ForwardSpec, ForwardSpecError};
pub use frame::FrameBatch;
pub use host::{HostLink, MemoryLink};
pub use l2::{L2Config, L2Services, TxAction};
pub use offload::{MAX_IP_PACKET, Offloads};
pub use runner::{Activation, Bridge, BridgeConfig, BridgeHandle, Interrupt, MAX_BATCH};
pub use rx::{RxOutcome, RxPath};
pub use stats::{AtomicStats, BridgeStats, DropCause, Stats};
pub use tx::{TxOutcome, TxPath};
