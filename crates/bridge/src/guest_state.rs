//! What a port keeps about its guest, whichever queue pair a frame comes on: the gateway
//! services ([`Gateway`]: the lease, the learned MAC and IPv6 addresses, the ARP, NDP, DHCP
//! and DNS answers, the Router Advertisement timer) and the IPv6 port forwards, aimed at the
//! guest's current global address. A [`crate::TxEngine`] is per queue pair and takes it by
//! `&mut` for each batch ([`crate::TxEngine::pull`], [`crate::TxEngine::translate`]), so that
//! several pairs of one guest share one lease and one set of learned addresses.

use core::net::{Ipv6Addr, SocketAddrV6};

use nat::Nat;

use crate::PortForward6;
use crate::gateway::Gateway;

/// One guest's state on its port (see the module docs).
#[derive(Debug)]
pub struct GuestState {
    gateway: Gateway,
    /// IPv6 port forwards and the guest address they are installed for in NAT66.
    forwards6: Vec<PortForward6>,
    forwards6_to: Option<Ipv6Addr>,
}

impl GuestState {
    /// The state of a guest served by `gateway`, with no IPv6 port forwards.
    pub fn new(gateway: Gateway) -> Self {
        GuestState {
            gateway,
            forwards6: Vec::new(),
            forwards6_to: None,
        }
    }

    /// Installs `forwards6` in NAT66 once the gateway learned the guest's global IPv6
    /// address, and moves them when it changes (checked at each [`crate::TxEngine::translate`]).
    pub fn with_forwards6(mut self, forwards6: Vec<PortForward6>) -> Self {
        self.forwards6 = forwards6;
        self
    }

    /// The gateway services (lease, learned MAC).
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The gateway services, to change (its timers: [`Gateway::unsolicited`]).
    pub fn gateway_mut(&mut self) -> &mut Gateway {
        &mut self.gateway
    }

    /// Adds an IPv6 port forward at runtime: installed at once if the guest's address is
    /// known, else once it is ([`GuestState::with_forwards6`]). `false` if the external port
    /// is taken for the protocol.
    pub fn add_forward6(&mut self, f: PortForward6, nat: &mut Nat) -> bool {
        let taken =
            |g: &PortForward6| g.protocol == f.protocol && g.external_port == f.external_port;
        if self.forwards6.iter().any(taken) {
            return false;
        }
        if let Some(a) = self.forwards6_to {
            let internal = SocketAddrV6::new(a, f.guest_port, 0, 0);
            if nat
                .add_forward6(f.protocol, f.external_port, internal)
                .is_err()
            {
                return false;
            }
        }
        self.forwards6.push(f);
        true
    }

    /// Removes the IPv6 port forward on (`protocol`, `external_port`) and ends its sessions
    /// ([`Nat::close_forward6`]); `false` if there was none.
    pub fn remove_forward6(
        &mut self,
        protocol: nat::Protocol,
        external_port: u16,
        nat: &mut Nat,
    ) -> bool {
        let before = self.forwards6.len();
        self.forwards6
            .retain(|g| !(g.protocol == protocol && g.external_port == external_port));
        if self.forwards6.len() == before {
            return false;
        }
        nat.close_forward6(protocol, external_port);
        true
    }

    /// The IPv6 port forwards.
    pub fn forwards6(&self) -> &[PortForward6] {
        &self.forwards6
    }

    /// Aims the IPv6 port forwards at the gateway's current forward target (no allocation:
    /// a scan of at most `MAX_GUEST_IPV6_ADDRS` addresses, and NAT rules only on a change).
    pub(crate) fn refresh_forwards6(&mut self, nat: &mut Nat) {
        if self.forwards6.is_empty() {
            return;
        }
        let target = self.gateway.guest_ipv6_forward_target();
        if target == self.forwards6_to {
            return;
        }
        for f in &self.forwards6 {
            nat.remove_forward6(f.protocol, f.external_port);
            if let Some(a) = target {
                let internal = SocketAddrV6::new(a, f.guest_port, 0, 0);
                if let Err(e) = nat.add_forward6(f.protocol, f.external_port, internal) {
                    tracing::warn!(
                        "IPv6 port forward {:?} {} -> {internal}: {e:?}",
                        f.protocol,
                        f.external_port
                    );
                }
            }
        }
        if let Some(a) = target {
            tracing::info!("IPv6 port forwards go to {a}");
        }
        self.forwards6_to = target;
    }
}
