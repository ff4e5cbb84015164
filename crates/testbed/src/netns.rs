//! Network-namespace topologies for privileged tests, the demo and benches: the namespace
//! helper itself is the `netns` crate, re-exported here, plus the standard
//! three-namespace world ([`Topology`]).
//!
//! Nothing here touches the root namespace: namespaces are created under unique names
//! (`hostnet-<what>-<pid>-<n>`), links are created directly inside them (a veth pair is made
//! inside one namespace with its peer put straight into the other), and [`Drop`] deletes them
//! again, also while a test panics (unwinding runs `Drop`). Processes started with
//! [`Netns::spawn`] are killed (by PID) and reaped when their [`Process`] guard drops.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use testbed::netns::Topology;
//! let topo = Topology::new("demo")?; // guest, host and server namespaces
//! let out = topo.server.exec(&["ip", "-4", "addr", "show", "eth0"])?;
//! assert!(out.contains("198.18.0.2"));
//! # Ok(()) }
//! ```

use std::io;
use std::net::Ipv4Addr;

use bridge::defaults::{TEST_INTERNET, TEST_INTERNET_PREFIX_LEN};

pub use ::netns::*;

/// The standard three-namespace world: a guest, a host (the TUN goes here) and a server on the
/// simulated internet (198.18.0.0/15).
///
/// Built by [`Topology::new`]: `guest` is empty (`hostnet-lab attach` makes its `eth0` TAP);
/// `host` has `srv0` = [`HOST_SERVER_ADDR`]/15; `server` has `eth0` = [`SERVER_ADDR`]/15 and a
/// default route via [`HOST_SERVER_ADDR`]. IPv4 forwarding in `host` is left to `attach`.
/// Fields drop (namespaces are deleted) in declaration order.
#[derive(Debug)]
pub struct Topology {
    /// The guest namespace (the simulated guest's TAP `eth0` lives here).
    pub guest: Netns,
    /// The host namespace (runs `hostnet-lab attach`, holds the TUN, routes to the server).
    pub host: Netns,
    /// The server namespace on the simulated internet.
    pub server: Netns,
}

impl Topology {
    /// Creates the three namespaces, tagged `<tag>-g`, `<tag>-h`, `<tag>-s`, and the host–server
    /// link.
    ///
    /// # Errors
    /// Any `ip` step fails (what was already created is removed again).
    pub fn new(tag: &str) -> io::Result<Self> {
        let guest = Netns::new(&format!("{tag}-g"))?;
        let host = Netns::new(&format!("{tag}-h"))?;
        let server = Netns::new(&format!("{tag}-s"))?;
        veth(&host, HOST_SERVER_DEV, &server, SERVER_DEV)?;
        host.add_addr(
            HOST_SERVER_DEV,
            &format!("{HOST_SERVER_ADDR}/{TEST_INTERNET_PREFIX_LEN}"),
        )?;
        server.add_addr(
            SERVER_DEV,
            &format!("{SERVER_ADDR}/{TEST_INTERNET_PREFIX_LEN}"),
        )?;
        server.add_route("default", HOST_SERVER_ADDR)?;
        Ok(Self {
            guest,
            host,
            server,
        })
    }
}

/// The host namespace's address on the simulated internet (the server's default gateway).
pub const HOST_SERVER_ADDR: Ipv4Addr = Ipv4Addr::from_bits(TEST_INTERNET.to_bits() + 1);
/// The server namespace's address.
pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::from_bits(TEST_INTERNET.to_bits() + 2);
/// The host namespace's link to the server namespace.
pub const HOST_SERVER_DEV: &str = "srv0";
/// The server namespace's link to the host namespace.
pub const SERVER_DEV: &str = "eth0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "needs CAP_NET_ADMIN"]
    fn topology_routes_between_host_and_server_and_cleans_up() -> anyhow::Result<()> {
        let topo = Topology::new("t-topo")?;
        let names = [
            topo.guest.name().to_owned(),
            topo.host.name().to_owned(),
            topo.server.name().to_owned(),
        ];
        for n in &names {
            assert!(exists(n)?);
        }
        assert!(topo.host.has_link(HOST_SERVER_DEV)?);
        assert!(!topo.guest.has_link(HOST_SERVER_DEV)?);
        topo.host
            .exec(&["ping", "-c", "1", "-W", "2", &SERVER_ADDR.to_string()])?;
        let routes = topo.server.ip(&["route", "show", "default"])?;
        assert!(routes.contains(&HOST_SERVER_ADDR.to_string()), "{routes}");
        drop(topo);
        for n in &names {
            assert!(!exists(n)?, "{n} still exists");
        }
        Ok(())
    }
}
