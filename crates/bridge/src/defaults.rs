//! The default network every hostnet program uses unless told otherwise, in one place: the
//! guest's subnet and gateway, the DHCP pool and lease, the MACs, the MTU, the TUN's addresses
//! and the simulated internet of the tests. `hostnet-lab attach`, hostnetd, the demo, the
//! benches and the tests take these values from here.
//!
//! ```text
//! guest 192.168.64.2 ── gateway 192.168.64.1 (the bridge) ── NAT 100.64.0.2 ══TUN══ host 100.64.0.1
//! guest fd64::/64 (SLAAC) ── router fe80::1, gateway and DNS fd64::1
//! ```

use core::net::{Ipv4Addr, Ipv6Addr};
use core::time::Duration;

use crate::MacAddr;

/// The guest subnet's network address (with [`PREFIX_LEN`]: 192.168.64.0/24).
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 0);
/// The guest subnet's prefix length.
pub const PREFIX_LEN: u8 = 24;
/// The gateway the bridge plays for the guest (ARP, ICMP, DHCP server, DNS forwarder).
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);
/// The first address of the DHCP pool: what the only guest leases first.
pub const DHCP_POOL_FIRST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 2);
/// The last address of the DHCP pool.
pub const DHCP_POOL_LAST: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 254);
/// The DHCP lease time (one hour).
pub const LEASE_TIME: Duration = Duration::from_secs(3600);
/// The guest's MAC (QEMU's default prefix 52:54:00).
pub const GUEST_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
/// The gateway's MAC.
pub const GATEWAY_MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x01]);
/// The guest's MTU (and the device's and the TUN's).
pub const MTU: u16 = 1500;
/// The host end of the TUN (point-to-point, peer [`NAT_EXTERNAL_ADDR`]).
pub const TUN_HOST_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
/// The NAT's external address: the TUN's peer, the source of the guest's packets on the host.
pub const NAT_EXTERNAL_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
/// The simulated internet of the tests, demo and benches (198.18.0.0/15, RFC 2544's
/// benchmarking range, never routed on the real internet); with [`TEST_INTERNET_PREFIX_LEN`].
pub const TEST_INTERNET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The prefix length of [`TEST_INTERNET`].
pub const TEST_INTERNET_PREFIX_LEN: u8 = 15;
/// The guest's IPv6 prefix (a /64 ULA), advertised for SLAAC.
pub const IPV6_PREFIX: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 0);
/// The gateway's link-local address: the guest's IPv6 default router.
pub const IPV6_ROUTER: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The gateway's address in [`IPV6_PREFIX`], and the guest's IPv6 DNS server (RDNSS and
/// DHCPv6).
pub const IPV6_GATEWAY: Ipv6Addr = Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 1);

/// The host end of the TUN on IPv6 (`fd64:ffff::1/64`).
pub const TUN_HOST_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 1);
/// NAT66's external address: the source of the guest's IPv6 packets on the host, reached
/// through the TUN's /64.
pub const NAT_EXTERNAL_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd64, 0xffff, 0, 0, 0, 0, 0, 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_addresses_fit_together() {
        let mask = u32::MAX << (32 - PREFIX_LEN);
        let net = |a: Ipv4Addr| u32::from(a) & mask;
        for a in [GATEWAY, DHCP_POOL_FIRST, DHCP_POOL_LAST] {
            assert_eq!(net(a), u32::from(SUBNET), "{a}");
        }
        assert!(DHCP_POOL_FIRST > GATEWAY && DHCP_POOL_FIRST <= DHCP_POOL_LAST);
        assert_eq!(GUEST_MAC.to_string(), "52:54:00:12:34:56");
        assert_ne!(GUEST_MAC, GATEWAY_MAC);
        let tmask = u32::MAX << (32 - TEST_INTERNET_PREFIX_LEN);
        assert_eq!(u32::from(TEST_INTERNET) & tmask, u32::from(TEST_INTERNET));
        assert_eq!(IPV6_PREFIX.to_bits() as u64, 0);
        assert_eq!(IPV6_GATEWAY.to_bits() >> 64, IPV6_PREFIX.to_bits() >> 64);
        assert!(IPV6_ROUTER.is_unicast_link_local());
    }
}
