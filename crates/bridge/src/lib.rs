//! The device side of virtio-net for hostnet: the NIC a hypervisor gives its guest.
//!
//! # Layer
//!
//! `bridge` sits between a VMM's virtio transport and the host. It implements the device
//! side of virtio-net over rust-vmm [`virtio_queue`] split queues (any [`virtio_queue::QueueT`])
//! in [`vm_memory`] guest memory, answers the guest's L2 needs itself (ARP, DHCP, ping and DNS
//! at the gateway), and moves IPv4 packets between the guest and a [`HostLink`] (a TUN
//! device, or the in-memory [`MemoryLink`]) through the sans-IO [`nat`] crate.
//!
//! # One core, drivers that drive it
//!
//! [`DeviceCore`] is the one state machine of a device: events in (TX kick, RX ready, tick),
//! `now` passed in, no threads, no clock. It validates the [`BridgeConfig`], negotiates
//! features and offloads with the driver and the host link, checks the queues, sizes every
//! batch and owns the NAT expiry policy ([`Expiry`]). Its drivers only move events:
//!
//! - an embedder's own single-thread event loop (a vhost-user worker, a VMM's loop) calls
//!   [`DeviceCore`] directly;
//! - the threaded driver (feature `driver`, default): [`Bridge::new`], then
//!   [`Bridge::activate`] with guest memory, the two queues and an interrupt callback splits
//!   the negotiated core into its TX and RX halves and runs each on a thread (the pipeline),
//!   or both on one thread ([`Bridge::activate_with`], [`Threads::One`]), giving a
//!   [`BridgeHandle`] (kicks, stats, port forwards, lease, shutdown).
//!
//! A frame's way, guest to host (tx, outbound): [`TxQueue`] takes TX chains into a
//! [`FrameBatch`] → [`Gateway`] answers what is for the gateway → `nat::Nat::outbound_batch`
//! → [`HostLink::send_batch`]. Host to guest (rx, inbound): [`HostLink::recv_batch`] →
//! `nat::Nat::inbound_batch` → Ethernet header → [`RxQueue`] fills RX chains. [`TxEngine`] and
//! [`RxEngine`] are the per-batch glue of each direction.
//!
//! ```
//! use bridge::{BridgeConfig, DeviceCore, VIRTIO_F_VERSION_1};
//!
//! let core = DeviceCore::new(BridgeConfig::default().with_host_dns())?;
//! assert_ne!(core.device_features() & (1 << VIRTIO_F_VERSION_1), 0);
//! let mut mtu = [0u8; 2];
//! core.read_config(10, &mut mtu);
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
//!   [`CONFIG_INTERRUPT`]). A chain is at most the queue size of descriptors, direct and
//!   indirect together, and one [`RxQueue::fill`] walks a bounded number of chains.
//! - No allocation and no lock per packet on the data path: frames live in preallocated
//!   [`FrameBatch`]es; the pipeline takes the NAT lock once per batch per direction.
//! - Anti-spoofing: frames from a MAC other than the guest's, or IPv4 from an address other
//!   than its lease or static address, never reach the NAT (DHCP from 0.0.0.0 excepted).
//! - Packets from the host larger than the guest MTU are counted ([`DropCause::TooBig`]) and
//!   dropped (GSO super-packets excepted, with GUEST_TSO4 or GUEST_TSO6), and answered as a router answers
//!   them: ICMPv6 Packet Too Big (RFC 4443 3.2) for IPv6, ICMP fragmentation needed (RFC 1191)
//!   for IPv4 with DF set, MTU = the guest MTU, from the gateway through the NAT to the sender,
//!   at most [`TOO_BIG_ANSWERS_PER_SEC`] per second ([`Stats::too_big_answers`],
//!   [`Stats::too_big_limited`]); IPv4 without DF is not fragmented and gets no answer. IP
//!   fragments are delivered each as its own frame; fragments that arrive before their first fragment are held by the NAT
//!   and sent on once it has come through.
//! - Gateway services: ARP for the gateway address (learns the guest's MAC); DHCP (RFC 2131);
//!   ICMP echo to the gateway; DNS to the gateway forwarded through a NAT redirect to
//!   [`BridgeConfig::dns_upstream`] ([`ResolverPaths::choose_upstream`] reads the host's
//!   resolv.conf, and systemd-resolved's upstreams behind its 127.0.0.53 stub; IPv4 first,
//!   then IPv6); without an upstream, UDP DNS queries to the gateway are answered with
//!   REFUSED, TCP with a RST. The same for `[fd64::1]:53` over IPv6. A query reaches an
//!   upstream of its own family by a NAT redirect (NAT44 or NAT66), one of the other family
//!   by the gateway's [`DnsRelay`] (the query translated into the upstream's IP version from
//!   the gateway's own address of that version and a relay port, the answer back; a bounded
//!   table, [`DropCause::DnsRelay`] when full; needs IPv6 on).
//!   Other EtherTypes are counted and dropped.
//! - IPv6 at the gateway ([`BridgeConfig::ipv6`], [`Ipv6Config`]; default prefix `fd64::/64`,
//!   router `fe80::1`, gateway and DNS `fd64::1`): Neighbor Discovery for both addresses
//!   (DAD answered for them, a guest's tentative address never claimed), Router
//!   Advertisements for SLAAC (to Router Solicitations, and unsolicited while the guest sends),
//!   stateless DHCPv6 (Information-request → DNS server), ICMPv6 echo; the guest may send only
//!   from its link-local address or the prefix ([`DropCause::SpoofedIpv6`]). IPv6 from the
//!   prefix to a unicast destination off the link goes through NAT66 (external address
//!   `fd64:ffff::2` by default, [`nat::NatConfig::external_addr6`]); what cannot leave the link
//!   (a link-local source, a link-local or on-link destination) has no route
//!   ([`DropCause::Ipv6NoRoute`], answered with ICMPv6 destination unreachable, no route,
//!   within the ICMP error rate limit). The egress policy is IPv4's only.
//! - Egress policy ([`BridgeConfig::egress`], [`EgressPolicy`]): `--allow`/`--deny` CIDR
//!   rules on the destination, checked by the gateway before the NAT, longest prefix wins,
//!   default allow, link-local 169.254.0.0/16 denied by default. A denied packet is counted
//!   ([`DropCause::EgressDenied`]) and answered by the gateway with ICMP destination
//!   unreachable, code 13 (administratively prohibited), at most [`ICMP_ERROR_BURST`] at
//!   once and [`ICMP_ERRORS_PER_SEC`] per second. The gateway's address and the NAT's
//!   external address are exempt.
//!
//! # Offloads
//!
//! With [`BridgeConfig::offloads`] the device also offers CSUM, GUEST_CSUM, HOST_TSO4,
//! GUEST_TSO4, HOST_TSO6 and GUEST_TSO6 ([`OFFLOAD_FEATURES`]): each virtio-net header is
//! checked ([`Offloads`], counted [`DropCause::Offload`] drops; a TCPv4 or TCPv6 super-frame's
//! segmentation type must match its IP version and its segment size must be at least
//! [`MIN_GSO_SIZE`] and fit the MTU with the frame's headers, else
//! [`DropCause::GsoInvalid`]), the packet is translated with its checksum read as
//! partial (`nat::L4Checksum::Partial`) and handed to a host link that takes the same header
//! ([`HostLink::vnet_hdr_len`] = 12: a Linux TUN opened with `vnet_hdr(true)`), so the host
//! kernel segments and checksums. The other way, the link is told with
//! [`HostLink::set_offloads`] what the guest accepts ([`LinkOffloads`]: TCPv4 and TCPv6
//! super-packets only to a guest that negotiated GUEST_TSO4 / GUEST_TSO6).
//!
//! # Features
//!
//! - `utun` (default): `impl HostLink for utun::Tun`.
//! - `driver` (default): the threaded driver ([`Bridge`]); pulls crossbeam-channel, mio and
//!   rustix. Without it the crate is the device core only.
//! - `test-utils`: `testing` helpers (frame builders, mock-queue drivers) for tests and
//!   benches of crates that embed the bridge.
//!
//! # Platforms and MSRV
//!
//! Everything builds for Linux and macOS: the driver polls with mio (epoll, kqueue) and
//! wakes its threads with an eventfd (Linux) or a pipe (elsewhere). The macOS build is
//! type-checked and linted on Linux; it has never run on a Mac. MSRV 1.95.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod addr_pair;
mod config;
mod core;
mod ctrl;
pub mod defaults;
mod device;
mod dhcp;
mod dns;
mod dns_relay;
#[cfg(feature = "driver")]
mod driver;
mod error;
mod forward;
mod frame;
mod gateway;
mod gmem;
mod guest_state;
mod host;
mod network;
mod offload;
mod policy;
mod ring;
mod rx_engine;
mod rx_queue;
mod rx_split;
mod stats;
mod switch;
#[cfg(feature = "driver")]
mod sys;
mod too_big;
mod tx_engine;
mod tx_queue;
mod tx_split;
mod wire;
mod worker;

#[cfg(any(test, feature = "test-utils"))]
pub mod testing;

pub use crate::config::{BridgeConfig, MAX_BATCH};
pub use crate::core::{
    Clock, DeviceCore, EXPIRE_BUDGET, Expiry, Negotiated, Notify, PairStats, RX_PASS_BUDGET,
    TX_BATCH_BUDGET,
};
pub use crate::wire::{ETH_HLEN, ETHERTYPE_IPV4, MacAddr, ParseMacError};
pub use addr_pair::{
    AddrPair, AddrPair6, AddrUse, PairError, choose_pair, choose_pair6, default_pair_taken,
    log_pair,
};
#[cfg(all(target_os = "linux", feature = "utun"))]
pub use addr_pair::{PairLock, addresses_in_use, addresses_in_use6, reserve_pair, reserve_pair6};
pub use ctrl::{
    ControlCommand, ControlQueue, ControlStats, MAX_COMMAND, VIRTIO_NET_CTRL_MQ,
    VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_OK,
};
pub use device::{
    CONFIG_INTERRUPT, CONFIG_SPACE_SIZE, Device, MAX_QUEUE_PAIRS, MQ_FEATURES, OFFERED_FEATURES,
    OFFLOAD_FEATURES, RX_QUEUE, TX_QUEUE, VIRTIO_CONFIG_S_NEEDS_RESET, VIRTIO_F_ANY_LAYOUT,
    VIRTIO_F_VERSION_1, VIRTIO_NET_F_CSUM, VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_HDR_F_DATA_VALID,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEGACY_LEN, VIRTIO_NET_HDR_LEN, VIRTIO_NET_S_LINK_UP,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioNetHdr, ctrl_queue_index,
    feature_names, has_bit, header_len_for, sanitize_features,
};
pub use dhcp::{DhcpConfig, DhcpReply, DhcpServer};
pub use dns::{
    DnsChoice, RESOLV_CONF, ResolverPaths, SYSTEMD_RESOLV_CONF, host_dns_upstream,
    is_usable_upstream, parse_dns_upstream, parse_resolv_conf, resolv_conf_nameservers,
};
pub use dns_relay::{
    DNS_RELAY_SLOTS, DNS_RELAY_TCP_CLOSING_MS, DNS_RELAY_TCP_IDLE_MS, DNS_RELAY_UDP_IDLE_MS,
    DnsRelay,
};
#[cfg(feature = "driver")]
pub use driver::{Activation, Bridge, BridgeHandle, Interrupt, Threads};
pub use error::Error;
pub use forward::{ForwardSpec, ForwardSpecError, PortForward6};
pub use frame::FrameBatch;
pub use gateway::{
    Dns6, Gateway, GatewayConfig, ICMP_ERROR_BURST, ICMP_ERRORS_PER_SEC, Ipv6Config,
    MAX_GUEST_IPV6_ADDRS, PREFIX_PREFERRED_S, PREFIX_VALID_S, RDNSS_LIFETIME_S, ROUTER_LIFETIME_S,
    TxAction, UNSOLICITED_RA_INTERVAL_MS,
};
pub use guest_state::GuestState;
pub use host::{GuestSegment, HostLink, LinkOffloads, MemoryLink};
pub use network::Network;
pub use offload::{MAX_IP_PACKET, MIN_GSO_SIZE, Offloads};
pub use policy::{Cidr, CidrError, EgressAction, EgressPolicy, EgressRule, PolicyError};
pub use rx_engine::RxEngine;
pub use rx_queue::{RxOutcome, RxQueue};
pub use stats::{AtomicStats, BridgeStats, DropCause, DropsByName, Stats};
pub use switch::{Claim, Decision, MAX_PORT_IPV6_ADDRS, PortId, Switch, SwitchError};
pub use too_big::{TOO_BIG_ANSWER_BURST, TOO_BIG_ANSWERS_PER_SEC};
pub use tx_engine::TxEngine;
pub use tx_queue::{TxOutcome, TxQueue};
pub use worker::{NetworkLock, PairWorker};
