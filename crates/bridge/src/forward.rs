//! [`ForwardSpec`]: a port forward as command lines write it
//! (`tcp|udp|tcp6|udp6:<external port>:[<guest IPv4>:]<guest port>`), shared by hostnetd and
//! `hostnet-lab attach`.

use core::fmt;
use core::net::{Ipv4Addr, SocketAddrV4};
use core::str::FromStr;

use nat::{PortForward, Protocol};

/// A port forward as written on a command line: `tcp|udp:<external port>:<guest port>` or
/// `tcp|udp:<external port>:<guest IPv4>:<guest port>` for IPv4 (the NAT's external
/// address), `tcp6|udp6:<external port>:[<guest IPv4>:]<guest port>` for IPv6 (NAT66's
/// external address); the protocol in any case, ports 1..=65535.
///
/// The family is explicit: `tcp:` stays IPv4 only, as it was before IPv6, so a forward never
/// opens a guest port on a family its user did not name (a guest service reachable over IPv4
/// is not silently exposed over IPv6 as well), and one spec names one NAT rule. A `tcp6:`
/// forward names no guest IPv6 address: the guest picks its IPv6 addresses itself (SLAAC,
/// privacy addresses), so the bridge aims the rule at the address the gateway learned
/// ([`crate::Gateway::guest_ipv6_forward_target`]: the EUI-64 SLAAC address if the guest
/// uses it, else the first global one) and moves it when that changes. With several guests
/// on one [`crate::Network`] it names the guest by its IPv4 address
/// (`tcp6:8080:192.168.64.3:80`: the guest holding 192.168.64.3's IPv6 address); without one
/// every guest's port aims the rule at its own address and the one learned last has it.
///
/// ```
/// use bridge::ForwardSpec;
/// use std::net::Ipv4Addr;
///
/// let f: ForwardSpec = "tcp:8022:22".parse()?;
/// let rule = f.to_port_forward(Ipv4Addr::new(192, 168, 64, 2));
/// assert_eq!(rule.internal.to_string(), "192.168.64.2:22");
/// assert!("sctp:1:2".parse::<ForwardSpec>().is_err());
/// let f6: ForwardSpec = "tcp6:8022:22".parse()?;
/// assert!(f6.ipv6);
/// assert_eq!(f6.to_port_forward6().guest_port, 22);
/// # Ok::<(), bridge::ForwardSpecError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ForwardSpec {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on the NAT's external address.
    pub external_port: u16,
    /// The guest address; `None`: the caller's default (the first DHCP address).
    pub guest_addr: Option<Ipv4Addr>,
    /// Port in the guest.
    pub guest_port: u16,
    /// `tcp6`/`udp6`: an IPv6 forward ([`ForwardSpec::to_port_forward6`]; `guest_addr`
    /// then names the guest by its IPv4 address).
    pub ipv6: bool,
}

/// An IPv6 port forward: NAT66's external address, `external_port` → the guest's learned
/// address ([`crate::Gateway::guest_ipv6_forward_target`]), `guest_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortForward6 {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Port on NAT66's external address.
    pub external_port: u16,
    /// Port in the guest.
    pub guest_port: u16,
    /// The guest, by its IPv4 address (several guests on one [`crate::Network`]); `None`:
    /// the device's one guest, or on a network every port's guest (the one learned last).
    pub guest: Option<Ipv4Addr>,
}

impl ForwardSpec {
    /// The NAT rule, with `default_guest` where the spec names no guest address.
    #[must_use]
    pub fn to_port_forward(&self, default_guest: Ipv4Addr) -> PortForward {
        PortForward {
            protocol: self.protocol,
            external_port: self.external_port,
            internal: SocketAddrV4::new(self.guest_addr.unwrap_or(default_guest), self.guest_port),
        }
    }

    /// The IPv6 rule (meant for a spec with `ipv6` set).
    #[must_use]
    pub fn to_port_forward6(&self) -> PortForward6 {
        PortForward6 {
            protocol: self.protocol,
            external_port: self.external_port,
            guest_port: self.guest_port,
            guest: self.guest_addr,
        }
    }
}

/// Why a [`ForwardSpec`] did not parse (the message names what was expected; callers add the
/// bad value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ForwardSpecError {
    /// Not three or four `:`-separated fields.
    Shape,
    /// The protocol is none of tcp, udp, tcp6, udp6.
    Protocol,
    /// The external port is not 1..=65535.
    ExternalPort,
    /// The guest port is not 1..=65535.
    GuestPort,
    /// The guest address is not an IPv4 address.
    GuestAddress,
}

impl fmt::Display for ForwardSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ForwardSpecError::Shape => {
                "expected tcp|udp|tcp6|udp6:<external port>:[<guest IPv4>:]<guest port>"
            }
            ForwardSpecError::Protocol => "protocol must be tcp, udp, tcp6 or udp6",
            ForwardSpecError::ExternalPort => "external port must be 1..=65535",
            ForwardSpecError::GuestPort => "guest port must be 1..=65535",
            ForwardSpecError::GuestAddress => {
                "guest address is not IPv4 (tcp6/udp6 forwards name the guest by it too)"
            }
        })
    }
}

impl std::error::Error for ForwardSpecError {}

impl FromStr for ForwardSpec {
    type Err = ForwardSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let fields = [parts.next(), parts.next(), parts.next(), parts.next()];
        if parts.next().is_some() {
            return Err(ForwardSpecError::Shape);
        }
        let (proto, ext, addr, gport) = match fields {
            [Some(p), Some(e), Some(g), None] => (p, e, None, g),
            [Some(p), Some(e), Some(a), Some(g)] => (p, e, Some(a), g),
            _ => return Err(ForwardSpecError::Shape),
        };
        let (protocol, ipv6) = if proto.eq_ignore_ascii_case("tcp") {
            (Protocol::Tcp, false)
        } else if proto.eq_ignore_ascii_case("udp") {
            (Protocol::Udp, false)
        } else if proto.eq_ignore_ascii_case("tcp6") {
            (Protocol::Tcp, true)
        } else if proto.eq_ignore_ascii_case("udp6") {
            (Protocol::Udp, true)
        } else {
            return Err(ForwardSpecError::Protocol);
        };
        let port = |p: &str, err| match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(err),
            Ok(n) => Ok(n),
        };
        let guest_addr = match addr {
            None => None,
            Some(a) => Some(
                a.parse::<Ipv4Addr>()
                    .map_err(|_| ForwardSpecError::GuestAddress)?,
            ),
        };
        Ok(ForwardSpec {
            protocol,
            external_port: port(ext, ForwardSpecError::ExternalPort)?,
            guest_addr,
            guest_port: port(gport, ForwardSpecError::GuestPort)?,
            ipv6,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let f: ForwardSpec = "UDP:5353:192.168.64.9:53".parse().unwrap();
        assert_eq!(
            f,
            ForwardSpec {
                protocol: Protocol::Udp,
                external_port: 5353,
                guest_addr: Some(Ipv4Addr::new(192, 168, 64, 9)),
                guest_port: 53,
                ipv6: false,
            }
        );
        let f6: ForwardSpec = "TCP6:8080:80".parse().unwrap();
        assert!(f6.ipv6 && f6.guest_addr.is_none());
        assert_eq!(
            f6.to_port_forward6(),
            PortForward6 {
                protocol: Protocol::Tcp,
                external_port: 8080,
                guest_port: 80,
                guest: None,
            }
        );
        let named: ForwardSpec = "tcp6:8080:192.168.64.3:80".parse().unwrap();
        assert_eq!(
            named.to_port_forward6().guest,
            Some(Ipv4Addr::new(192, 168, 64, 3))
        );
        assert!("udp6:53:5353".parse::<ForwardSpec>().unwrap().ipv6);
        assert!(!"tcp:1:2".parse::<ForwardSpec>().unwrap().ipv6);
        let d = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(
            "tcp:80:8080"
                .parse::<ForwardSpec>()
                .unwrap()
                .to_port_forward(d)
                .internal,
            SocketAddrV4::new(d, 8080)
        );
        for (bad, why) in [
            ("tcp:80", ForwardSpecError::Shape),
            ("tcp:1:2:3:4:5", ForwardSpecError::Shape),
            ("", ForwardSpecError::Shape),
            ("icmp:1:2", ForwardSpecError::Protocol),
            ("tcp:0:2", ForwardSpecError::ExternalPort),
            ("tcp:70000:2", ForwardSpecError::ExternalPort),
            ("tcp:1:x", ForwardSpecError::GuestPort),
            ("tcp:1:notanip:2", ForwardSpecError::GuestAddress),
            ("tcp:1:fe80::1:2", ForwardSpecError::Shape),
            ("tcp6:1:fd64::2:2", ForwardSpecError::Shape),
            ("tcp6:0:2", ForwardSpecError::ExternalPort),
            ("tcp4:1:2", ForwardSpecError::Protocol),
            ("icmp6:1:2", ForwardSpecError::Protocol),
        ] {
            assert_eq!(bad.parse::<ForwardSpec>(), Err(why), "{bad:?}");
        }
    }
}
