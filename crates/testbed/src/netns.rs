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
use std::net::{Ipv4Addr, Ipv6Addr};

use bridge::defaults::{TEST_INTERNET, TEST_INTERNET_PREFIX_LEN};

pub use ::netns::*;

/// The standard three-namespace world: a guest, a host (the TUN goes here) and a server on the
/// simulated internet (198.18.0.0/15).
///
/// Built by [`Topology::new`]: `guest` is empty (`hostnet-lab attach` makes its `eth0` TAP);
/// `host` has `srv0` = [`HOST_SERVER_ADDR`]/15 and [`HOST_SERVER_ADDR6`]/64; `server` has
/// `eth0` = [`SERVER_ADDR`]/15 and [`SERVER_ADDR6`]/64 (and [`SERVER_ADDR6_2`], a second
/// server address) with default routes via the host's. The IPv6 addresses skip duplicate
/// address detection, so they are usable at once. Forwarding in `host` is left to `attach`.
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
        host.ip(&[
            "-6",
            "addr",
            "add",
            &format!("{HOST_SERVER_ADDR6}/{TEST_LINK6_PREFIX_LEN}"),
            "dev",
            HOST_SERVER_DEV,
            "nodad",
        ])?;
        for a in [SERVER_ADDR6, SERVER_ADDR6_2] {
            server.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{a}/{TEST_LINK6_PREFIX_LEN}"),
                "dev",
                SERVER_DEV,
                "nodad",
            ])?;
        }
        server.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &HOST_SERVER_ADDR6.to_string(),
        ])?;
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
/// The host namespace's IPv6 address on the simulated internet (2001:db8::/32, the
/// documentation range; the server's default gateway).
pub const HOST_SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
/// The server namespace's IPv6 address.
pub const SERVER_ADDR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
/// A second IPv6 address of the server namespace (two "servers" see one NAT66 mapping).
pub const SERVER_ADDR6_2: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3);
/// The prefix length of the host–server link's IPv6 addresses.
pub const TEST_LINK6_PREFIX_LEN: u8 = 64;
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
        for a in [SERVER_ADDR6, SERVER_ADDR6_2] {
            topo.host
                .exec(&["ping", "-6", "-c", "1", "-W", "2", &a.to_string()])?;
        }
        let routes = topo.server.ip(&["-6", "route", "show", "default"])?;
        assert!(routes.contains(&HOST_SERVER_ADDR6.to_string()), "{routes}");
        drop(topo);
        for n in &names {
            assert!(!exists(n)?, "{n} still exists");
        }
        Ok(())
    }
}
