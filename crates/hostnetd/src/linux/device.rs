//! hostnetd's configuration of a connection's device core ([`bridge::DeviceCore`]: TX queue →
//! gateway services → NAT → TUN and back, on the vhost-user worker thread) and its stats log.
//!
//! With `offload` the device also offers checksum and TCPv4/TCPv6 segmentation offloads (CSUM,
//! GUEST_CSUM, HOST_TSO4, GUEST_TSO4, HOST_TSO6, GUEST_TSO6): the guest's 64 KiB TCP
//! super-frames and partial checksums go to the TUN (opened with virtio-net headers) for the host
//! kernel to segment and checksum, and the TUN hands over GSO packets of the families the guest
//! accepted.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bridge::{BridgeConfig, DeviceCore, EgressPolicy, Error, MacAddr, Network, PortId, Stats};
use nat::PortForward;
use tracing::info;

/// What a connection's device core is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeviceConfig {
    /// The guest's MAC (until the guest's own is learned from ARP/DHCP).
    pub(crate) mac: MacAddr,
    /// The guest MTU.
    pub(crate) mtu: u16,
    /// The gateway address.
    pub(crate) gateway: Ipv4Addr,
    /// The NAT's external address.
    pub(crate) external: Ipv4Addr,
    /// Port forwards into the guest.
    pub(crate) forwards: Vec<PortForward>,
    /// IPv6 port forwards into the guest (to the address the gateway learned).
    pub(crate) forwards6: Vec<bridge::PortForward6>,
    /// Upstream of the gateway's DNS forwarder (none: no DNS service).
    pub(crate) dns_upstream: Option<SocketAddr>,
    /// Offer checksum/TSO offloads. `true` also means that the host link carries a virtio-net
    /// header in front of every packet (a TUN opened with `vnet_hdr`); `false`, plain packets.
    pub(crate) offload: bool,
    /// The egress policy (`--deny`, `--allow`).
    pub(crate) egress: EgressPolicy,
    /// The guest side of IPv6 at the gateway (default addresses; `--no-ipv6`: off).
    pub(crate) ipv6: bool,
    /// NAT66's external address (used when `ipv6`).
    pub(crate) external6: Ipv6Addr,
}

impl DeviceConfig {
    /// The bridge's configuration: a /24 around the gateway, DHCP pool .2–.254, the bridge's
    /// defaults for the rest.
    pub(crate) fn to_bridge(&self) -> BridgeConfig {
        let net = u32::from(self.gateway) & PREFIX_MASK;
        let mut c = BridgeConfig {
            guest_mac: self.mac,
            gateway: self.gateway,
            prefix_len: PREFIX_LEN,
            dhcp_pool: Ipv4Addr::from(net | 2)..=Ipv4Addr::from(net | 254),
            dns_upstream: self.dns_upstream,
            mtu: self.mtu,
            forwards: self.forwards.clone(),
            forwards6: self.forwards6.clone(),
            offloads: self.offload,
            egress: self.egress.clone(),
            ipv6: self.ipv6.then(bridge::Ipv6Config::default),
            ..BridgeConfig::default()
        };
        c.nat.external_addr = self.external;
        c.nat.external_addr6 = self.external6;
        c
    }

    /// Validates the configuration and builds a fresh device.
    pub(crate) fn device_core(&self) -> Result<DeviceCore, Error> {
        DeviceCore::new(self.to_bridge())
    }
}

/// Logs a port's counters when its connection ends: one `connection stats` line whose
/// `drops` field names the bridge's drop causes, and the network's NAT counters with the NAT's
/// drop reasons ([`bridge::BridgeStats::drops_by_name`]).
pub(crate) fn log_stats(port: PortId, mac: MacAddr, s: &Stats, net: &Network) {
    let mut all = net.bridge_stats();
    all.bridge = s.clone();
    log_counters("connection stats", Some((port, mac)), None, &all);
}

/// Logs the network's counters (every port's added up; SIGUSR1): one `network stats` line
/// and a `connection stats` line per port.
pub(crate) fn log_network_stats(net: &Network) {
    log_counters(
        "network stats",
        None,
        Some(net.ports().count()),
        &net.bridge_stats(),
    );
    for (port, mac) in net.ports() {
        if let Some(s) = net.stats(port) {
            log_stats(port, mac, s, net);
        }
    }
}

/// One counters line: `all.bridge`'s frames and offloads, the NAT's flows and every drop by
/// name, for one port (`who`) or the network of `ports` ports.
fn log_counters(
    what: &'static str,
    who: Option<(PortId, MacAddr)>,
    ports: Option<usize>,
    all: &bridge::BridgeStats,
) {
    let s = &all.bridge;
    info!(
        port = who.map(|(p, _)| p.0),
        mac = who.map(|(_, m)| tracing::field::display(m)),
        ports,
        tx_frames = s.tx_frames,
        rx_frames = s.rx_frames,
        to_host = s.to_host,
        from_host = s.from_host,
        local_replies = s.local_replies,
        tx_gso = s.tx_gso,
        rx_gso = s.rx_gso,
        tx_gso6 = s.tx_gso6,
        rx_gso6 = s.rx_gso6,
        tx_gathered = s.tx_gathered,
        rx_scattered = s.rx_scattered,
        parked = s.parked,
        park_timeouts = s.park_timeouts,
        nat_flows = all.nat_flows,
        drops = %all.drops_by_name(),
        "{what}"
    );
}

const PREFIX_LEN: u8 = 24;
const PREFIX_MASK: u32 = 0xffff_ff00;

#[cfg(test)]
mod tests {
    use bridge::testing::{EXTERNAL, GATEWAY, GUEST_IP, GUEST_MAC};
    use nat::Protocol;

    use super::*;
    use std::net::SocketAddrV4;

    fn config(forwards: Vec<PortForward>) -> DeviceConfig {
        DeviceConfig {
            mac: GUEST_MAC,
            mtu: 1500,
            gateway: GATEWAY,
            external: EXTERNAL,
            forwards,
            forwards6: Vec::new(),
            dns_upstream: None,
            offload: false,
            egress: EgressPolicy::default(),
            ipv6: true,
            external6: bridge::defaults::NAT_EXTERNAL_ADDR6,
        }
    }

    #[test]
    fn the_bridge_config_follows_the_daemon_config() {
        let up: SocketAddr = "[2001:db8::53]:53".parse().unwrap();
        let c = DeviceConfig {
            mtu: 9000,
            gateway: Ipv4Addr::new(10, 9, 8, 1),
            dns_upstream: Some(up),
            offload: true,
            ..config(Vec::new())
        }
        .to_bridge();
        assert_eq!(c.guest_mac, GUEST_MAC);
        assert_eq!(c.mtu, 9000);
        assert_eq!(c.prefix_len, 24);
        assert_eq!(
            c.dhcp_pool,
            Ipv4Addr::new(10, 9, 8, 2)..=Ipv4Addr::new(10, 9, 8, 254)
        );
        assert_eq!(c.nat.external_addr, EXTERNAL);
        assert_eq!(c.nat.max_flows_per_host, 65_536);
        assert_eq!(c.dns_upstream, Some(up));
        assert!(c.offloads);
        assert_eq!(c.batch_size, 64);
        assert_eq!(c.egress, EgressPolicy::default());
        let mut egress = EgressPolicy::default();
        egress
            .add("198.18.0.0/24".parse().unwrap(), bridge::EgressAction::Deny)
            .unwrap();
        let c = DeviceConfig {
            egress: egress.clone(),
            ..config(Vec::new())
        }
        .to_bridge();
        assert_eq!(c.egress, egress);
        assert_eq!(
            config(Vec::new()).to_bridge().ipv6,
            Some(bridge::Ipv6Config::default())
        );
        let off = DeviceConfig {
            ipv6: false,
            ..config(Vec::new())
        };
        assert_eq!(off.to_bridge().ipv6, None);
        let core = DeviceConfig {
            mtu: 9000,
            ..config(Vec::new())
        }
        .device_core()
        .unwrap();
        let mut mtu = [0u8; 2];
        core.read_config(10, &mut mtu);
        assert_eq!(u16::from_le_bytes(mtu), 9000);
    }

    #[test]
    fn a_bad_forward_is_refused() {
        let f = PortForward {
            protocol: Protocol::Tcp,
            external_port: 80,
            internal: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 80),
        };
        assert!(config(vec![f]).device_core().is_err());
        let ok = PortForward {
            internal: SocketAddrV4::new(GUEST_IP, 80),
            ..f
        };
        assert!(config(vec![ok]).device_core().is_ok());
    }
}
