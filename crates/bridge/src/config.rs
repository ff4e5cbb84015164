//! [`BridgeConfig`]: everything the device core needs, validated once by
//! [`crate::DeviceCore::new`].

use core::net::{Ipv4Addr, SocketAddr};
use core::ops::RangeInclusive;
use core::time::Duration;

use nat::{NatConfig, PortForward};

use crate::gateway::{Dns6, GatewayConfig, Ipv6Config};
use crate::policy::EgressPolicy;
use crate::wire::MacAddr;
use crate::{Error, defaults};

/// Everything the bridge needs; `Default` gives the documented defaults (subnet
/// 192.168.64.0/24, gateway .1, pool .2–.254, lease 1 h, MTU 1500, NAT external 100.64.0.2,
/// no DNS upstream: set one, e.g. with [`BridgeConfig::with_host_dns`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeConfig {
    /// The MAC in the device's config space (the guest's).
    pub guest_mac: MacAddr,
    /// The gateway's MAC.
    pub gateway_mac: MacAddr,
    /// The gateway's address.
    pub gateway: Ipv4Addr,
    /// Prefix length of the guest subnet (8..=30).
    pub prefix_len: u8,
    /// DHCP pool.
    pub dhcp_pool: RangeInclusive<Ipv4Addr>,
    /// DHCP lease time.
    pub lease: Duration,
    /// Where DNS to the gateway goes (UDP and TCP port 53 of `gateway`, and of the IPv6
    /// gateway `fd64::1` with `ipv6`), IPv4 or IPv6. An upstream of the query's own family
    /// is reached through a NAT redirect; a query to an upstream of the other family through
    /// the gateway's DNS relay ([`crate::DnsRelay`]: translated from the gateway's own address
    /// of the upstream's family; needs `ipv6`, so without it an IPv6 upstream serves no one).
    /// `None`: no DNS service (not advertised in DHCP, RA or DHCPv6; queries answered
    /// REFUSED, TCP a RST).
    pub dns_upstream: Option<SocketAddr>,
    /// Guest MTU (68..=65520), reported in the config space and by DHCP.
    pub mtu: u16,
    /// The NAT. `internal_net`/`internal_prefix_len` are overwritten from `gateway` and
    /// `prefix_len`, and with IPv6 on `internal_net6`/`internal_prefix_len6` from the IPv6
    /// prefix (a /64); `external_addr6` is NAT66's external address (default
    /// `fd64:ffff::2`).
    pub nat: NatConfig,
    /// Port forwards installed at activation.
    pub forwards: Vec<PortForward>,
    /// IPv6 port forwards (needs `ipv6`): installed in NAT66 once the gateway learned the
    /// guest's global address and moved when that changes
    /// ([`crate::Gateway::guest_ipv6_forward_target`]).
    pub forwards6: Vec<crate::PortForward6>,
    /// A static guest address, accepted as a source besides the DHCP lease.
    pub static_guest_ip: Option<Ipv4Addr>,
    /// Largest queue size the device accepts (a power of two, at most 32768).
    pub max_queue_size: u16,
    /// Frames per batch (1..=256).
    pub batch_size: usize,
    /// Batches in the pool that carries gateway replies from the TX to the RX thread.
    pub pool_batches: usize,
    /// Packets per direction the host link is read/written in one batch is `batch_size`;
    /// this is the largest packet accepted from the host (bigger ones are counted as
    /// [`crate::DropCause::TooBig`]).
    pub max_host_packet: usize,
    /// Offer checksum and TCP segmentation offloads (TSO4 and TSO6) both ways
    /// ([`OFFLOAD_FEATURES`]): the guest sends and receives 64 KiB TCP super-frames, and the host
    /// kernel segments and checksums. Needs a host link carrying virtio-net headers
    /// ([`HostLink::vnet_hdr_len`] = 12: a Linux TUN opened with `vnet_hdr(true)`); over another
    /// link the device core turns the negotiated offloads off
    /// ([`crate::DeviceCore::ack_features`]). Default `false`.
    ///
    /// [`OFFLOAD_FEATURES`]: crate::OFFLOAD_FEATURES
    /// [`HostLink::vnet_hdr_len`]: crate::HostLink::vnet_hdr_len
    pub offloads: bool,
    /// Which destinations the guest may reach (checked before the NAT; the gateway and the
    /// NAT's external address are exempt). Default: link-local 169.254.0.0/16 denied, the
    /// rest allowed.
    pub egress: EgressPolicy,
    /// The guest side of IPv6 at the gateway (Neighbor Discovery, Router Advertisements for
    /// SLAAC, stateless DHCPv6, echo); default on with [`Ipv6Config::default`] (prefix
    /// `fd64::/64`, router `fe80::1`, gateway and DNS `fd64::1`). `None` turns IPv6 off
    /// (`--no-ipv6`): IPv6 frames are counted and dropped. IPv6 from the guest's addresses
    /// in the prefix to unicast destinations off the link goes through NAT66 to
    /// `nat.external_addr6`.
    pub ipv6: Option<Ipv6Config>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        let nat = NatConfig {
            internal_net: defaults::SUBNET,
            internal_prefix_len: defaults::PREFIX_LEN,
            external_addr: defaults::NAT_EXTERNAL_ADDR,
            external_addr6: defaults::NAT_EXTERNAL_ADDR6,
            // Closed TCP flows keep their mapping for 4 minutes: a busy guest needs tens of
            // thousands.
            max_flows_per_host: 65_536,
            ..NatConfig::default()
        };
        BridgeConfig {
            guest_mac: defaults::GUEST_MAC,
            gateway_mac: defaults::GATEWAY_MAC,
            gateway: defaults::GATEWAY,
            prefix_len: defaults::PREFIX_LEN,
            dhcp_pool: defaults::DHCP_POOL_FIRST..=defaults::DHCP_POOL_LAST,
            lease: defaults::LEASE_TIME,
            dns_upstream: None,
            mtu: defaults::MTU,
            nat,
            forwards: Vec::new(),
            forwards6: Vec::new(),
            static_guest_ip: None,
            max_queue_size: 256,
            batch_size: 64,
            pool_batches: 4,
            max_host_packet: 65535,
            offloads: false,
            egress: EgressPolicy::default(),
            ipv6: Some(Ipv6Config::default()),
        }
    }
}

impl BridgeConfig {
    /// The gateway services' part of the configuration.
    pub(crate) fn gateway_config(&self) -> GatewayConfig {
        GatewayConfig {
            gateway: self.gateway,
            gateway_mac: self.gateway_mac,
            prefix_len: self.prefix_len,
            guest_mac: self.guest_mac,
            dhcp_pool: self.dhcp_pool.clone(),
            lease: self.lease,
            mtu: self.mtu,
            // An IPv6 upstream serves IPv4 queries through the relay, which needs IPv6.
            dns: match self.dns_upstream {
                Some(SocketAddr::V4(_)) => true,
                Some(SocketAddr::V6(_)) => self.ipv6.is_some(),
                None => false,
            },
            dns4_relay: self.ipv6.is_some() && self.dns_upstream.is_some_and(|u| u.is_ipv6()),
            dns6: match self.dns_upstream {
                Some(SocketAddr::V6(_)) => Dns6::Nat,
                Some(SocketAddr::V4(_)) => Dns6::Relay,
                None => Dns6::Refused,
            },
            static_guest_ip: self.static_guest_ip,
            ipv6: self.ipv6,
        }
    }

    /// Sets `dns_upstream` from the host's resolver configuration
    /// ([`crate::host_dns_upstream`]); leaves it as it is if none is usable.
    pub fn with_host_dns(mut self) -> Self {
        if let Some(up) = crate::dns::host_dns_upstream() {
            self.dns_upstream = Some(up);
        }
        self
    }

    /// Checks the device's own limits (the gateway and the NAT check theirs when the core is
    /// built).
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(1..=MAX_BATCH).contains(&self.batch_size) {
            return Err(Error::Config(format!(
                "batch_size {} is not in 1..={MAX_BATCH}",
                self.batch_size
            )));
        }
        if self.pool_batches == 0 {
            return Err(Error::Config("pool_batches is 0".to_owned()));
        }
        if !self.forwards6.is_empty() && self.ipv6.is_none() {
            return Err(Error::Config("IPv6 port forwards without IPv6".to_owned()));
        }
        for (i, f) in self.forwards6.iter().enumerate() {
            if let Some(g) = f.guest
                && !self.dhcp_pool.contains(&g)
                && self.static_guest_ip != Some(g)
            {
                return Err(Error::Config(format!(
                    "IPv6 port forward {:?} {} names {g}, no guest's address",
                    f.protocol, f.external_port
                )));
            }
            if self.forwards6[..i]
                .iter()
                .any(|o| o.protocol == f.protocol && o.external_port == f.external_port)
            {
                return Err(Error::Config(format!(
                    "IPv6 port forward {:?} {} given twice",
                    f.protocol, f.external_port
                )));
            }
        }
        if !self.max_queue_size.is_power_of_two() || self.max_queue_size > MAX_QUEUE_SIZE {
            return Err(Error::Config(format!(
                "max_queue_size {} is not a power of two <= {MAX_QUEUE_SIZE}",
                self.max_queue_size
            )));
        }
        if self.egress.rules().len() > EgressPolicy::MAX_RULES {
            return Err(Error::Config(format!(
                "{} egress rules, more than {}",
                self.egress.rules().len(),
                EgressPolicy::MAX_RULES
            )));
        }
        if self.max_host_packet < usize::from(self.mtu) {
            return Err(Error::Config(format!(
                "max_host_packet {} is smaller than the mtu {}",
                self.max_host_packet, self.mtu
            )));
        }
        Ok(())
    }
}

/// The largest batch.
pub const MAX_BATCH: usize = 256;

/// The largest split virtqueue (virtio 1.2, 2.7).
const MAX_QUEUE_SIZE: u16 = 32768;
