//! [`Switch`]: who is where on a network of several guest ports (issue 14's "network with
//! ports"): each port's MAC, its IPv4 lease and the IPv6 addresses it was seen to use, and the
//! forwarding decision for a guest's frame ([`Switch::decide`]). Sans-IO: no threads, no
//! clock, no allocation per frame (the maps change only when a port comes or goes, gets a
//! lease or uses a new IPv6 address).
//!
//! The rules (the bridge is the only router on the link; guests never see each other's frames
//! except what is addressed to them):
//! - A port's addresses come from its DHCP lease and from its own frames (after the gateway's
//!   anti-spoofing checks), never from what another port says: an address another port holds
//!   is a [`Claim::Conflict`], and the frame is dropped.
//! - Unicast to another guest goes to the one port that owns the destination IP, whether it is
//!   addressed to that port's MAC or to the gateway's (a guest that routes on-link traffic
//!   through its default router); a frame to a guest's MAC for an address that guest does not
//!   hold is dropped ([`DropCause::NotRoutable`]), so a poisoned ARP cache gains nothing.
//! - Unknown unicast is never flooded; broadcast and multicast go to the gateway only (ARP,
//!   DHCP, Neighbor Discovery, Router Solicitations; it drops and counts the rest).

use core::net::{Ipv4Addr, Ipv6Addr};
use std::collections::HashMap;

use ::wire::{EthernetFrame, Ipv4Packet, Ipv6Packet};

use crate::stats::DropCause;
use crate::wire::{ETHERTYPE_IPV4, ETHERTYPE_IPV6, MacAddr};

/// A port of the network (an index, reused after its port is detached).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

/// IPv6 addresses remembered per port (more: the oldest is forgotten, and unmapped).
pub const MAX_PORT_IPV6_ADDRS: usize = 16;

/// Why a port could not be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SwitchError {
    /// All [`Switch::new`]'s ports are in use.
    Full,
    /// Another port has this MAC.
    MacInUse(PortId),
    /// A multicast MAC (never a port's).
    MulticastMac,
}

impl core::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SwitchError::Full => f.write_str("every port of the network is in use"),
            SwitchError::MacInUse(p) => write!(f, "port {} has this MAC already", p.0),
            SwitchError::MulticastMac => f.write_str("a multicast MAC cannot be a port's"),
        }
    }
}

impl std::error::Error for SwitchError {}

/// The outcome of giving a port an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The port holds it now (it did not before).
    New,
    /// The port held it already.
    Known,
    /// Another port holds it: nothing changed.
    Conflict(PortId),
}

/// Where a guest's frame goes ([`Switch::decide`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// To the gateway's services and, beyond the link, the NAT (the single-guest path).
    Gateway,
    /// To this other port, unchanged but for the Ethernet source when it was addressed to
    /// the gateway ([`Decision::Port`] frames keep the sender's MAC as source otherwise).
    Port(PortId),
    /// Dropped and counted.
    Drop(DropCause),
}

#[derive(Clone, Debug)]
struct PortState {
    mac: MacAddr,
    ipv4: Option<Ipv4Addr>,
    ipv6: [Ipv6Addr; MAX_PORT_IPV6_ADDRS],
    ipv6_len: usize,
    ipv6_next: usize,
}

/// The network's forwarding table; see the module docs.
#[derive(Clone, Debug)]
pub struct Switch {
    gateway_mac: MacAddr,
    ports: Vec<Option<PortState>>,
    by_mac: HashMap<MacAddr, PortId>,
    by_ipv4: HashMap<Ipv4Addr, PortId>,
    by_ipv6: HashMap<Ipv6Addr, PortId>,
    generation: u64,
}

impl Switch {
    /// A network of at most `max_ports` ports (at most `u16::MAX`) behind the gateway
    /// `gateway_mac`.
    pub fn new(gateway_mac: MacAddr, max_ports: usize) -> Self {
        let max_ports = max_ports.min(usize::from(u16::MAX));
        Switch {
            gateway_mac,
            ports: vec![None; max_ports],
            by_mac: HashMap::with_capacity(max_ports),
            by_ipv4: HashMap::with_capacity(max_ports),
            by_ipv6: HashMap::with_capacity(max_ports * 2),
            generation: 0,
        }
    }

    /// A port for the guest with `mac` (the lowest free index).
    ///
    /// # Errors
    ///
    /// [`SwitchError`]: no free port, a MAC in use, a multicast MAC.
    pub fn attach(&mut self, mac: MacAddr) -> Result<PortId, SwitchError> {
        if mac.is_multicast() {
            return Err(SwitchError::MulticastMac);
        }
        if let Some(&p) = self.by_mac.get(&mac) {
            return Err(SwitchError::MacInUse(p));
        }
        let i = self
            .ports
            .iter()
            .position(Option::is_none)
            .ok_or(SwitchError::Full)?;
        let id = PortId(u16::try_from(i).map_err(|_| SwitchError::Full)?);
        self.ports[i] = Some(PortState {
            mac,
            ipv4: None,
            ipv6: [Ipv6Addr::UNSPECIFIED; MAX_PORT_IPV6_ADDRS],
            ipv6_len: 0,
            ipv6_next: 0,
        });
        self.by_mac.insert(mac, id);
        self.generation += 1;
        Ok(id)
    }

    /// Removes `port` and every address it held; `false` if it was not attached.
    pub fn detach(&mut self, port: PortId) -> bool {
        let Some(state) = self
            .ports
            .get_mut(usize::from(port.0))
            .and_then(Option::take)
        else {
            return false;
        };
        self.by_mac.remove(&state.mac);
        if let Some(a) = state.ipv4 {
            self.by_ipv4.remove(&a);
        }
        for a in &state.ipv6[..state.ipv6_len] {
            self.by_ipv6.remove(a);
        }
        self.generation += 1;
        true
    }

    /// The gateway's MAC.
    pub fn gateway_mac(&self) -> MacAddr {
        self.gateway_mac
    }

    /// Counts every change (attach, detach, addresses): a driver that caches lookups per
    /// batch compares it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The ports attached now.
    pub fn ports(&self) -> impl Iterator<Item = (PortId, MacAddr)> + '_ {
        self.ports.iter().enumerate().filter_map(|(i, p)| {
            let p = p.as_ref()?;
            Some((PortId(u16::try_from(i).ok()?), p.mac))
        })
    }

    /// Gives `port` the MAC `mac` (its guest uses another than the one it was attached
    /// with); `Ok(false)` if `port` is not attached.
    ///
    /// # Errors
    ///
    /// [`SwitchError::MacInUse`]: another port has `mac`; [`SwitchError::MulticastMac`].
    pub fn set_mac(&mut self, port: PortId, mac: MacAddr) -> Result<bool, SwitchError> {
        if mac.is_multicast() {
            return Err(SwitchError::MulticastMac);
        }
        match self.by_mac.get(&mac) {
            Some(&p) if p == port => return Ok(true),
            Some(&p) => return Err(SwitchError::MacInUse(p)),
            None => {}
        }
        let Some(state) = self
            .ports
            .get_mut(usize::from(port.0))
            .and_then(Option::as_mut)
        else {
            return Ok(false);
        };
        self.by_mac.remove(&state.mac);
        state.mac = mac;
        self.by_mac.insert(mac, port);
        self.generation += 1;
        Ok(true)
    }

    /// Sets (`Some`) or clears `port`'s IPv4 address (its DHCP lease or static address).
    pub fn set_ipv4(&mut self, port: PortId, addr: Option<Ipv4Addr>) -> Claim {
        if let Some(a) = addr
            && let Some(&holder) = self.by_ipv4.get(&a)
        {
            return held(holder, port);
        }
        let Some(state) = self
            .ports
            .get_mut(usize::from(port.0))
            .and_then(Option::as_mut)
        else {
            return Claim::Known;
        };
        if let Some(old) = state.ipv4.take() {
            self.by_ipv4.remove(&old);
        }
        state.ipv4 = addr;
        if let Some(a) = addr {
            self.by_ipv4.insert(a, port);
        }
        self.generation += 1;
        Claim::New
    }

    /// Records that `port` uses the IPv6 address `addr` (seen as the source of its own frames,
    /// the gateway's anti-spoofing passed). Beyond [`MAX_PORT_IPV6_ADDRS`] the oldest is
    /// forgotten.
    pub fn learn_ipv6(&mut self, port: PortId, addr: Ipv6Addr) -> Claim {
        if let Some(&holder) = self.by_ipv6.get(&addr) {
            return held(holder, port);
        }
        let Some(state) = self
            .ports
            .get_mut(usize::from(port.0))
            .and_then(Option::as_mut)
        else {
            return Claim::Known;
        };
        if state.ipv6_len < MAX_PORT_IPV6_ADDRS {
            state.ipv6[state.ipv6_len] = addr;
            state.ipv6_len += 1;
        } else {
            let old = core::mem::replace(&mut state.ipv6[state.ipv6_next], addr);
            state.ipv6_next = (state.ipv6_next + 1) % MAX_PORT_IPV6_ADDRS;
            self.by_ipv6.remove(&old);
        }
        self.by_ipv6.insert(addr, port);
        self.generation += 1;
        Claim::New
    }

    /// The MAC of `port`.
    pub fn mac_of(&self, port: PortId) -> Option<MacAddr> {
        self.ports.get(usize::from(port.0))?.as_ref().map(|p| p.mac)
    }

    /// The IPv4 address of `port`.
    pub fn ipv4_of(&self, port: PortId) -> Option<Ipv4Addr> {
        self.ports.get(usize::from(port.0))?.as_ref()?.ipv4
    }

    /// The port with `mac`.
    pub fn port_by_mac(&self, mac: MacAddr) -> Option<PortId> {
        self.by_mac.get(&mac).copied()
    }

    /// The port holding the IPv4 address `addr`.
    pub fn port_by_ipv4(&self, addr: Ipv4Addr) -> Option<PortId> {
        self.by_ipv4.get(&addr).copied()
    }

    /// The port holding the IPv6 address `addr`.
    pub fn port_by_ipv6(&self, addr: Ipv6Addr) -> Option<PortId> {
        self.by_ipv6.get(&addr).copied()
    }

    /// Where a frame from `from` goes. `frame` starts with its Ethernet header; its source was
    /// checked by the gateway's anti-spoofing rules for `from` (or is checked there, for
    /// [`Decision::Gateway`]). One map lookup for an IP frame, none for broadcast.
    pub fn decide(&self, from: PortId, frame: &[u8]) -> Decision {
        let Ok(eth) = EthernetFrame::new_checked(frame) else {
            return Decision::Drop(DropCause::Runt);
        };
        let dst_mac = eth.dst_addr();
        if dst_mac.is_multicast() {
            return Decision::Gateway;
        }
        let to_gateway = dst_mac == self.gateway_mac;
        let mac_owner = if to_gateway {
            None
        } else {
            match self.port_by_mac(dst_mac) {
                Some(p) if p != from => Some(p),
                // Its own MAC or nobody's: never flooded.
                _ => return Decision::Drop(DropCause::NotRoutable),
            }
        };
        let ip_owner = match eth.ethertype() {
            ETHERTYPE_IPV4 => Ipv4Packet::new_checked(eth.payload())
                .ok()
                .and_then(|ip| self.port_by_ipv4(ip.dst_addr())),
            ETHERTYPE_IPV6 => Ipv6Packet::new_checked(eth.payload())
                .ok()
                .and_then(|ip| self.port_by_ipv6(ip.dst_addr())),
            // ARP and the rest between guests: the gateway answers ARP for every guest.
            _ => None,
        };
        match (mac_owner, ip_owner) {
            // Routed through the gateway to another guest on the link.
            (None, Some(p)) if p != from => Decision::Port(p),
            (None, _) => Decision::Gateway,
            (Some(m), Some(p)) if m == p => Decision::Port(p),
            // To a guest's MAC for an address it does not hold (or ARP between guests).
            (Some(_), _) => Decision::Drop(DropCause::NotRoutable),
        }
    }
}

/// What asking `port` to hold an address `holder` holds already comes to.
fn held(holder: PortId, port: PortId) -> Claim {
    if holder == port {
        Claim::Known
    } else {
        Claim::Conflict(holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, GATEWAY_MAC};

    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    const B: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    const C: MacAddr = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x58]);

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn udp(dst_mac: MacAddr, src: (MacAddr, &str), dst: &str) -> Vec<u8> {
        let mut f = testing::udp_frame(src.0, ip(src.1), 5000, ip(dst), 5001, b"hello");
        f[..6].copy_from_slice(&dst_mac.0);
        f
    }

    fn three() -> (Switch, PortId, PortId, PortId) {
        let mut s = Switch::new(GATEWAY_MAC, 8);
        let (a, b, c) = (
            s.attach(A).unwrap(),
            s.attach(B).unwrap(),
            s.attach(C).unwrap(),
        );
        for (p, addr) in [
            (a, "192.168.64.2"),
            (b, "192.168.64.3"),
            (c, "192.168.64.4"),
        ] {
            assert_eq!(s.set_ipv4(p, Some(ip(addr))), Claim::New);
        }
        (s, a, b, c)
    }

    #[test]
    fn ports_come_and_go_and_macs_are_unique() {
        let mut s = Switch::new(GATEWAY_MAC, 2);
        let a = s.attach(A).unwrap();
        assert_eq!(s.attach(A), Err(SwitchError::MacInUse(a)));
        let b = s.attach(B).unwrap();
        assert_eq!(s.attach(C), Err(SwitchError::Full));
        assert_eq!(s.attach(MacAddr::BROADCAST), Err(SwitchError::MulticastMac));
        s.set_ipv4(a, Some(ip("192.168.64.2")));
        s.learn_ipv6(a, ip6("fd64::5054:ff:fe12:3456"));
        let g = s.generation();
        assert!(s.detach(a));
        assert!(!s.detach(a));
        assert!(s.generation() > g);
        assert_eq!(s.port_by_ipv4(ip("192.168.64.2")), None);
        assert_eq!(s.port_by_ipv6(ip6("fd64::5054:ff:fe12:3456")), None);
        // The freed index and the MAC are free again.
        assert_eq!(s.attach(A), Ok(a));
        assert_eq!(s.ports().map(|(p, _)| p).collect::<Vec<_>>(), [a, b]);
    }

    #[test]
    fn an_address_held_by_another_port_is_a_conflict() {
        let (mut s, a, b, _) = three();
        assert_eq!(s.set_ipv4(b, Some(ip("192.168.64.2"))), Claim::Conflict(a));
        assert_eq!(s.port_by_ipv4(ip("192.168.64.2")), Some(a));
        assert_eq!(s.set_ipv4(a, Some(ip("192.168.64.2"))), Claim::Known);
        let v6 = ip6("fd64::1234");
        assert_eq!(s.learn_ipv6(a, v6), Claim::New);
        assert_eq!(s.learn_ipv6(a, v6), Claim::Known);
        assert_eq!(s.learn_ipv6(b, v6), Claim::Conflict(a));
        // A new lease replaces the old address.
        assert_eq!(s.set_ipv4(a, Some(ip("192.168.64.9"))), Claim::New);
        assert_eq!(s.port_by_ipv4(ip("192.168.64.2")), None);
        assert_eq!(s.set_ipv4(b, Some(ip("192.168.64.2"))), Claim::New);
    }

    #[test]
    fn ipv6_addresses_per_port_are_bounded() {
        let mut s = Switch::new(GATEWAY_MAC, 1);
        let a = s.attach(A).unwrap();
        for i in 0..(MAX_PORT_IPV6_ADDRS as u16 + 3) {
            assert_eq!(
                s.learn_ipv6(a, Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 100 + i)),
                Claim::New
            );
        }
        assert_eq!(s.by_ipv6.len(), MAX_PORT_IPV6_ADDRS);
        // The three oldest were forgotten.
        for i in 0..3 {
            assert_eq!(
                s.port_by_ipv6(Ipv6Addr::new(0xfd64, 0, 0, 0, 0, 0, 0, 100 + i)),
                None
            );
        }
    }

    #[test]
    fn unicast_goes_to_the_owner_only_and_is_never_flooded() {
        let (s, a, b, c) = three();
        // To B's MAC and address: B.
        let f = udp(B, (A, "192.168.64.2"), "192.168.64.3");
        assert_eq!(s.decide(a, &f), Decision::Port(b));
        // Routed through the gateway's MAC to C's address: C.
        let f = udp(GATEWAY_MAC, (A, "192.168.64.2"), "192.168.64.4");
        assert_eq!(s.decide(a, &f), Decision::Port(c));
        // To B's MAC but C's address (a poisoned ARP cache): nobody.
        let f = udp(B, (A, "192.168.64.2"), "192.168.64.4");
        assert_eq!(s.decide(a, &f), Decision::Drop(DropCause::NotRoutable));
        // Unknown unicast MAC, or its own: dropped, never flooded.
        let f = udp(
            MacAddr([2, 0, 0, 0, 0, 9]),
            (A, "192.168.64.2"),
            "192.168.64.3",
        );
        assert_eq!(s.decide(a, &f), Decision::Drop(DropCause::NotRoutable));
        let f = udp(A, (A, "192.168.64.2"), "192.168.64.2");
        assert_eq!(s.decide(a, &f), Decision::Drop(DropCause::NotRoutable));
        // Beyond the link, to the gateway itself, an unheld address: the gateway's.
        for dst in [
            "198.18.0.2",
            "192.168.64.1",
            "192.168.64.77",
            "192.168.64.2",
        ] {
            let f = udp(GATEWAY_MAC, (A, "192.168.64.2"), dst);
            assert_eq!(s.decide(a, &f), Decision::Gateway, "{dst}");
        }
        // Broadcast (ARP, DHCP): the gateway only.
        let f = udp(MacAddr::BROADCAST, (A, "192.168.64.2"), "255.255.255.255");
        assert_eq!(s.decide(a, &f), Decision::Gateway);
        assert_eq!(s.decide(a, &f[..10]), Decision::Drop(DropCause::Runt));
    }

    #[test]
    fn ipv6_between_guests_follows_the_learned_addresses() {
        let (mut s, a, b, _) = three();
        let (va, vb) = (
            ip6("fd64::5054:ff:fe12:3456"),
            ip6("fd64::5054:ff:fe12:3457"),
        );
        s.learn_ipv6(a, va);
        s.learn_ipv6(b, vb);
        let f = testing::udp6_frame((A, B), (va, 5000), (vb, 5001), b"hi");
        assert_eq!(s.decide(a, &f), Decision::Port(b));
        let f = testing::udp6_frame((A, GATEWAY_MAC), (va, 5000), (vb, 5001), b"hi");
        assert_eq!(s.decide(a, &f), Decision::Port(b));
        let f = testing::udp6_frame((A, B), (va, 5000), (ip6("fd64::99"), 5001), b"hi");
        assert_eq!(s.decide(a, &f), Decision::Drop(DropCause::NotRoutable));
        let f = testing::udp6_frame((A, GATEWAY_MAC), (va, 5000), (ip6("2001:db8::2"), 53), b"");
        assert_eq!(s.decide(a, &f), Decision::Gateway);
    }
}
