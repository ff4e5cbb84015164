//! [`EgressPolicy`]: which destinations the guest may reach through the NAT, as `--allow` /
//! `--deny` CIDR rules (IPv4 and IPv6), checked by the gateway before the NAT on every packet
//! from the guest.
//!
//! Semantics are a routing table's, per address family: the rule with the **longest matching
//! prefix** of the destination's family wins, and with no matching rule the destination is
//! allowed. Denied by default, because cloud metadata services answer there: link-local
//! 169.254.0.0/16 (169.254.169.254), and the IPv6 metadata addresses `fd00:ec2::254` (AWS)
//! and `fd20:ce::254` (Google Cloud). A rule for exactly a default's prefix replaces it, and a
//! longer one (`--allow 169.254.169.254/32`) opens a hole in it. The gateway's own addresses
//! (DHCP, DNS, echo) and the NAT's external addresses (hairpinning) are never subject to the
//! policy.

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

/// An IPv4 or IPv6 prefix, `a.b.c.d/n` or `x:y::/n` (a bare address is a host prefix, `/32`
/// or `/128`). Host bits must be zero, as `ip route` requires.
///
/// ```
/// use bridge::Cidr;
/// use std::net::{Ipv4Addr, Ipv6Addr};
/// let c: Cidr = "198.18.0.0/24".parse()?;
/// assert!(c.contains("198.18.0.7".parse::<Ipv4Addr>()?));
/// assert!(!c.contains("198.18.1.7".parse::<Ipv4Addr>()?));
/// assert!("198.18.0.1/24".parse::<Cidr>().is_err()); // host bits set
/// let v6: Cidr = "2001:db8::/32".parse()?;
/// assert!(v6.contains("2001:db8:1::7".parse::<Ipv6Addr>()?));
/// assert!(!v6.contains("198.18.0.7".parse::<Ipv4Addr>()?)); // another family
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// The prefix `addr/prefix_len`.
    ///
    /// # Errors
    ///
    /// [`CidrError::PrefixLen`] if `prefix_len` is beyond the address's bits (32 or 128),
    /// [`CidrError::HostBits`] if `addr` has bits set beyond the prefix.
    pub fn new(addr: impl Into<IpAddr>, prefix_len: u8) -> Result<Self, CidrError> {
        let addr = addr.into();
        let (bits, width) = as_bits(addr);
        if prefix_len > width {
            return Err(CidrError::PrefixLen);
        }
        if bits & !mask(prefix_len, width) != 0 {
            return Err(CidrError::HostBits);
        }
        Ok(Cidr { addr, prefix_len })
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` is inside the prefix (never for an address of the other family).
    #[inline]
    pub fn contains(&self, ip: impl Into<IpAddr>) -> bool {
        match ip.into() {
            IpAddr::V4(a) => self.contains_v4(a),
            IpAddr::V6(a) => self.contains_v6(a),
        }
    }

    #[inline]
    fn contains_v4(&self, ip: Ipv4Addr) -> bool {
        match self.addr {
            IpAddr::V4(net) => {
                u128::from(ip.to_bits()) & mask(self.prefix_len, 32) == u128::from(net.to_bits())
            }
            IpAddr::V6(_) => false,
        }
    }

    #[inline]
    fn contains_v6(&self, ip: Ipv6Addr) -> bool {
        match self.addr {
            IpAddr::V6(net) => ip.to_bits() & mask(self.prefix_len, 128) == net.to_bits(),
            IpAddr::V4(_) => false,
        }
    }
}

/// An address as the low bits of a `u128` and its width (32 or 128).
const fn as_bits(a: IpAddr) -> (u128, u8) {
    match a {
        IpAddr::V4(a) => (a.to_bits() as u128, 32),
        IpAddr::V6(a) => (a.to_bits(), 128),
    }
}

/// The netmask of a prefix length (0..=`width`) for an address `width` bits wide, in the low
/// bits of a `u128`.
const fn mask(prefix_len: u8, width: u8) -> u128 {
    if prefix_len == 0 {
        0
    } else {
        let all = if width >= 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        all & (u128::MAX << (width - prefix_len))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Why a [`Cidr`] did not parse (callers add the bad value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CidrError {
    /// The address part is not an IPv4 or IPv6 address.
    Address,
    /// The prefix length is not a number in 0..=32 (IPv4) or 0..=128 (IPv6).
    PrefixLen,
    /// The address has bits set beyond the prefix length.
    HostBits,
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CidrError::Address => "expected an IP address, as a.b.c.d/n or x:y::/n",
            CidrError::PrefixLen => "prefix length must be 0..=32 (IPv4) or 0..=128 (IPv6)",
            CidrError::HostBits => "address has bits set beyond the prefix length",
        })
    }
}

impl std::error::Error for CidrError {}

impl FromStr for Cidr {
    type Err = CidrError;
    fn from_str(s: &str) -> Result<Self, CidrError> {
        let (a, n) = match s.split_once('/') {
            Some((a, n)) => (a, Some(n)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| CidrError::Address)?;
        let prefix_len = match n {
            Some(n) => n.trim().parse::<u8>().map_err(|_| CidrError::PrefixLen)?,
            None => as_bits(addr).1,
        };
        Cidr::new(addr, prefix_len)
    }
}

/// What a rule does with a matching destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EgressAction {
    /// Pass to the NAT.
    Allow,
    /// Drop ([`crate::DropCause::EgressDenied`]) and answer with ICMP destination
    /// unreachable, communication administratively prohibited (type 3, code 13; ICMPv6 type
    /// 1, code 1).
    Deny,
}

impl fmt::Display for EgressAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EgressAction::Allow => "allow",
            EgressAction::Deny => "deny",
        })
    }
}

/// One rule of an [`EgressPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EgressRule {
    /// The destinations it matches.
    pub cidr: Cidr,
    /// What it does with them.
    pub action: EgressAction,
    /// A built-in rule ([`EgressPolicy::DEFAULT_DENY`], [`EgressPolicy::DEFAULT_DENY6`]), not
    /// one the caller added.
    pub default: bool,
}

/// Destination rules for packets from the guest; see the module docs for the semantics.
/// `Default` holds the built-in rules, deny [`EgressPolicy::DEFAULT_DENY`] and
/// [`EgressPolicy::DEFAULT_DENY6`].
///
/// ```
/// use bridge::{EgressAction, EgressPolicy};
/// use std::net::Ipv4Addr;
///
/// let mut p = EgressPolicy::default();
/// assert_eq!(p.action(Ipv4Addr::new(169, 254, 169, 254)), EgressAction::Deny);
/// p.add("169.254.169.254/32".parse()?, EgressAction::Allow)?;
/// p.add("198.18.0.0/15".parse()?, EgressAction::Deny)?;
/// p.add("198.18.0.0/24".parse()?, EgressAction::Allow)?;
/// assert_eq!(p.action(Ipv4Addr::new(169, 254, 169, 254)), EgressAction::Allow);
/// assert_eq!(p.action(Ipv4Addr::new(169, 254, 1, 1)), EgressAction::Deny);
/// assert_eq!(p.action(Ipv4Addr::new(198, 18, 0, 9)), EgressAction::Allow); // longest prefix
/// assert_eq!(p.action(Ipv4Addr::new(198, 19, 0, 9)), EgressAction::Deny);
/// assert_eq!(p.action(Ipv4Addr::new(1, 1, 1, 1)), EgressAction::Allow); // default allow
/// assert_eq!(p.action6("fd00:ec2::254".parse()?), EgressAction::Deny); // IPv6 metadata
/// p.add("2001:db8::/32".parse()?, EgressAction::Deny)?;
/// assert_eq!(p.action6("2001:db8::1".parse()?), EgressAction::Deny);
/// assert_eq!(p.action6("2001:db9::1".parse()?), EgressAction::Allow);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Sorted by prefix length, longest first: the first match is the longest prefix.
    rules: Vec<EgressRule>,
}

impl EgressPolicy {
    /// Link-local addresses, denied unless a rule for this exact prefix or a longer one says
    /// otherwise: cloud metadata services (169.254.169.254) live there.
    pub const DEFAULT_DENY: Cidr = Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)),
        prefix_len: 16,
    };

    /// The IPv6 addresses of cloud metadata services, denied unless a rule for the same
    /// address says otherwise: AWS's instance metadata service (`fd00:ec2::254`) and Google
    /// Cloud's metadata server (`fd20:ce::254`). Guest IPv6 to them would otherwise leave
    /// through NAT66 from the host.
    pub const DEFAULT_DENY6: [Cidr; 2] = [
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
            prefix_len: 128,
        },
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)),
            prefix_len: 128,
        },
    ];

    /// Most rules a policy holds (each packet from the guest may scan all of them).
    pub const MAX_RULES: usize = 256;

    /// A policy without any rule, not even the default deny: everything is allowed.
    pub fn allow_all() -> Self {
        EgressPolicy { rules: Vec::new() }
    }

    /// Adds a rule. A rule for the same prefix as a built-in rule replaces it; the same rule
    /// twice is one rule.
    ///
    /// # Errors
    ///
    /// [`PolicyError::Conflict`] if a rule the caller added for the same prefix has the other
    /// action; [`PolicyError::TooMany`] beyond [`EgressPolicy::MAX_RULES`].
    pub fn add(&mut self, cidr: Cidr, action: EgressAction) -> Result<(), PolicyError> {
        let rule = EgressRule {
            cidr,
            action,
            default: false,
        };
        if let Some(r) = self.rules.iter_mut().find(|r| r.cidr == cidr) {
            if !r.default && r.action != action {
                return Err(PolicyError::Conflict(cidr));
            }
            *r = rule;
            return Ok(());
        }
        if self.rules.len() >= Self::MAX_RULES {
            return Err(PolicyError::TooMany);
        }
        let at = self
            .rules
            .iter()
            .position(|r| r.cidr.prefix_len < cidr.prefix_len)
            .unwrap_or(self.rules.len());
        self.rules.insert(at, rule);
        Ok(())
    }

    /// The rules, longest prefix first (the order they are tried in).
    pub fn rules(&self) -> &[EgressRule] {
        &self.rules
    }

    /// What the policy does with IPv4 destination `dst`: the action of the longest matching
    /// IPv4 prefix, or [`EgressAction::Allow`].
    #[inline]
    pub fn action(&self, dst: Ipv4Addr) -> EgressAction {
        self.rules
            .iter()
            .find(|r| r.cidr.contains_v4(dst))
            .map_or(EgressAction::Allow, |r| r.action)
    }

    /// What the policy does with IPv6 destination `dst`: the action of the longest matching
    /// IPv6 prefix, or [`EgressAction::Allow`].
    #[inline]
    pub fn action6(&self, dst: Ipv6Addr) -> EgressAction {
        self.rules
            .iter()
            .find(|r| r.cidr.contains_v6(dst))
            .map_or(EgressAction::Allow, |r| r.action)
    }
}

impl Default for EgressPolicy {
    fn default() -> Self {
        let deny = |cidr| EgressRule {
            cidr,
            action: EgressAction::Deny,
            default: true,
        };
        // Longest prefix first.
        let mut rules: Vec<EgressRule> = Self::DEFAULT_DENY6.into_iter().map(deny).collect();
        rules.push(deny(Self::DEFAULT_DENY));
        EgressPolicy { rules }
    }
}

/// The rules in lookup order, then the fallback: `deny fd00:ec2::254/128 (default), deny
/// fd20:ce::254/128 (default), deny 169.254.0.0/16 (default), allow everything else (longest
/// prefix wins)`.
impl fmt::Display for EgressPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            write!(f, "{} {}", r.action, r.cidr)?;
            if r.default {
                f.write_str(" (default)")?;
            }
            f.write_str(", ")?;
        }
        f.write_str("allow everything else (longest prefix wins)")
    }
}

/// Why a rule could not be added to an [`EgressPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// Both allow and deny for this prefix.
    Conflict(Cidr),
    /// More than [`EgressPolicy::MAX_RULES`] rules.
    TooMany,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Conflict(c) => write!(f, "both --allow and --deny for {c}"),
            PolicyError::TooMany => write!(f, "more than {} egress rules", EgressPolicy::MAX_RULES),
        }
    }
}

impl std::error::Error for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_refuse_what_a_routing_table_refuses() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert_eq!((c.addr(), c.prefix_len()), (IpAddr::V4(ip("10.0.0.0")), 8));
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert_eq!("1.2.3.4".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert_eq!("0.0.0.0/0".parse::<Cidr>().unwrap().prefix_len(), 0);
        assert!(
            "0.0.0.0/0"
                .parse::<Cidr>()
                .unwrap()
                .contains(ip("255.1.2.3"))
        );
        assert_eq!("10.0.0.1/8".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!("10.0.0.0/33".parse::<Cidr>(), Err(CidrError::PrefixLen));
        assert_eq!("10.0.0.0/x".parse::<Cidr>(), Err(CidrError::PrefixLen));
        assert_eq!("10.0.0/8".parse::<Cidr>(), Err(CidrError::Address));
        assert_eq!("".parse::<Cidr>(), Err(CidrError::Address));
        assert_eq!("1.2.3.4/".parse::<Cidr>(), Err(CidrError::PrefixLen));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains(ip6("2001:db8:ffff::1")));
        assert!(!v6.contains(ip6("2001:db9::1")));
        assert!(
            !v6.contains(ip("32.1.13.184")),
            "another family never matches"
        );
        assert_eq!("::1".parse::<Cidr>().unwrap().prefix_len(), 128);
        assert!("::/0".parse::<Cidr>().unwrap().contains(ip6("fd64::1")));
        assert!(!"::/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("1.2.3.4")));
        assert!(!"0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip6("::1")));
        assert_eq!("2001:db8::1/64".parse::<Cidr>(), Err(CidrError::HostBits));
        assert_eq!("2001:db8::/129".parse::<Cidr>(), Err(CidrError::PrefixLen));
        assert_eq!(
            "2001:db8::/33".parse::<Cidr>().map(|c| c.prefix_len()),
            Ok(33)
        );
        assert_eq!(
            "2001:db8:8000::/33".parse::<Cidr>().unwrap().prefix_len(),
            33
        );
        assert_eq!(
            "2001:db8:4000::/33".parse::<Cidr>(),
            Err(CidrError::HostBits)
        );
        assert_eq!("[::1]/128".parse::<Cidr>(), Err(CidrError::Address));
    }

    #[test]
    fn the_longest_prefix_wins_whatever_the_order_rules_were_given_in() {
        let rules = [
            ("10.0.0.0/8", EgressAction::Deny),
            ("10.1.0.0/16", EgressAction::Allow),
            ("10.1.2.0/24", EgressAction::Deny),
            ("10.1.2.3/32", EgressAction::Allow),
        ];
        let mut orders = vec![rules];
        let mut rev = rules;
        rev.reverse();
        orders.push(rev);
        for order in orders {
            let mut p = EgressPolicy::allow_all();
            for (c, a) in order {
                p.add(c.parse().unwrap(), a).unwrap();
            }
            assert_eq!(p.action(ip("10.9.9.9")), EgressAction::Deny);
            assert_eq!(p.action(ip("10.1.9.9")), EgressAction::Allow);
            assert_eq!(p.action(ip("10.1.2.9")), EgressAction::Deny);
            assert_eq!(p.action(ip("10.1.2.3")), EgressAction::Allow);
            assert_eq!(p.action(ip("11.0.0.1")), EgressAction::Allow);
            let lens: Vec<u8> = p.rules().iter().map(|r| r.cidr.prefix_len()).collect();
            assert_eq!(lens, [32, 24, 16, 8]);
        }
    }

    #[test]
    fn ipv6_rules_are_their_own_routing_table() {
        let mut p = EgressPolicy::default();
        for a in ["fd00:ec2::254", "fd20:ce::254"] {
            assert_eq!(p.action6(ip6(a)), EgressAction::Deny, "{a}");
        }
        assert_eq!(p.action6(ip6("fd00:ec2::253")), EgressAction::Allow);
        assert_eq!(p.action6(ip6("2001:db8::2")), EgressAction::Allow);
        p.add("2001:db8::/32".parse().unwrap(), EgressAction::Deny)
            .unwrap();
        p.add("2001:db8::3/128".parse().unwrap(), EgressAction::Allow)
            .unwrap();
        // A /0 of one family leaves the other alone.
        p.add("0.0.0.0/0".parse().unwrap(), EgressAction::Deny)
            .unwrap();
        assert_eq!(p.action6(ip6("2001:db8::2")), EgressAction::Deny);
        assert_eq!(p.action6(ip6("2001:db8::3")), EgressAction::Allow);
        assert_eq!(p.action6(ip6("2001:db9::3")), EgressAction::Allow);
        assert_eq!(p.action(ip("198.18.0.1")), EgressAction::Deny);
        // The IPv6 defaults are replaced like the IPv4 one.
        p.add("fd00:ec2::254/128".parse().unwrap(), EgressAction::Allow)
            .unwrap();
        assert_eq!(p.action6(ip6("fd00:ec2::254")), EgressAction::Allow);
        assert_eq!(p.action6(ip6("fd20:ce::254")), EgressAction::Deny);
    }

    #[test]
    fn link_local_is_denied_by_default_and_can_be_opened() {
        let p = EgressPolicy::default();
        assert_eq!(p.action(ip("169.254.169.254")), EgressAction::Deny);
        assert_eq!(p.action(ip("169.254.0.1")), EgressAction::Deny);
        assert_eq!(p.action(ip("169.255.0.1")), EgressAction::Allow);
        assert_eq!(
            p.to_string(),
            "deny fd00:ec2::254/128 (default), deny fd20:ce::254/128 (default), deny 169.254.0.0/16 \
             (default), allow everything else (longest prefix wins)"
        );
        let mut hole = p.clone();
        hole.add("169.254.169.254/32".parse().unwrap(), EgressAction::Allow)
            .unwrap();
        assert_eq!(hole.action(ip("169.254.169.254")), EgressAction::Allow);
        assert_eq!(hole.action(ip("169.254.169.253")), EgressAction::Deny);
        assert_eq!(
            hole.to_string(),
            "deny fd00:ec2::254/128 (default), deny fd20:ce::254/128 (default), allow \
             169.254.169.254/32, deny 169.254.0.0/16 (default), allow everything else (longest \
             prefix wins)"
        );
        let mut open = p;
        open.add(EgressPolicy::DEFAULT_DENY, EgressAction::Allow)
            .unwrap();
        assert_eq!(open.action(ip("169.254.169.254")), EgressAction::Allow);
        assert_eq!(open.rules().len(), 3);
        assert!(!open.rules()[2].default);
    }

    #[test]
    fn conflicting_and_too_many_rules_are_refused() {
        let mut p = EgressPolicy::default();
        let c: Cidr = "198.18.0.0/24".parse().unwrap();
        p.add(c, EgressAction::Deny).unwrap();
        p.add(c, EgressAction::Deny).unwrap();
        assert_eq!(p.add(c, EgressAction::Allow), Err(PolicyError::Conflict(c)));
        assert_eq!(
            PolicyError::Conflict(c).to_string(),
            "both --allow and --deny for 198.18.0.0/24"
        );
        let mut p = EgressPolicy::allow_all();
        for i in 0..EgressPolicy::MAX_RULES as u32 {
            p.add(
                Cidr::new(Ipv4Addr::from(i), 32).unwrap(),
                EgressAction::Deny,
            )
            .unwrap();
        }
        assert_eq!(
            p.add("10.0.0.0/8".parse().unwrap(), EgressAction::Deny),
            Err(PolicyError::TooMany)
        );
    }
}
