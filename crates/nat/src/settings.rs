//! The configuration, validated once and kept in the units the packet paths
//! use: addresses of the family's type, timeouts in milliseconds.

use crate::family::{Addr, Family};
use crate::table::{PROTO_TCP, PROTO_UDP, state};
use crate::{ConfigError, NatConfig};

/// A validated [`NatConfig`] and what the packet paths of family `F`
/// derive from it.
#[derive(Debug)]
pub(crate) struct Settings<F: Family> {
    /// The configuration as given (for `Nat::config` and the caps).
    pub(crate) config: NatConfig,
    /// The internal network address (masked).
    pub(crate) internal_net: F::Addr,
    /// The internal network mask.
    pub(crate) internal_mask: F::Addr,
    /// The external address.
    pub(crate) external_addr: F::Addr,
    /// Lowest and highest port of `NatConfig::port_range`.
    pub(crate) port_range: (u16, u16),
    /// Idle timeouts in milliseconds.
    pub(crate) timeouts: TimeoutsMillis,
}

/// `crate::Timeouts` in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimeoutsMillis {
    pub(crate) udp: u64,
    pub(crate) tcp_established: u64,
    pub(crate) tcp_transitory: u64,
    pub(crate) icmp: u64,
    pub(crate) fragment: u64,
    /// TCP flows from outside not yet confirmed: the shorter of
    /// `inbound_unconfirmed` and `tcp_transitory`.
    pub(crate) tcp_unconfirmed: u64,
    /// UDP flows from outside not yet confirmed: the shorter of
    /// `inbound_unconfirmed` and `udp`.
    pub(crate) udp_unconfirmed: u64,
}

impl TimeoutsMillis {
    /// Whether a TCP flow in [`state`] `flow_state` is established: packets
    /// seen both ways, no FIN or RST, and (if it came from outside)
    /// confirmed by its remote.
    #[inline(always)]
    pub(crate) fn tcp_established(flow_state: u8) -> bool {
        let both = state::SEEN_INBOUND | state::SEEN_OUTBOUND;
        let not = state::FIN_INBOUND | state::FIN_OUTBOUND | state::RST | state::UNCONFIRMED;
        flow_state & (both | not) == both
    }

    /// The idle timeout of a flow of protocol index `protocol` (`PROTO_*`)
    /// in [`state`] `flow_state`. (The packet paths pass the protocol of the
    /// packet in hand, a value the compiler already branched on, rather than
    /// the flow's copy in the table: that keeps one branch per packet.)
    #[inline(always)]
    pub(crate) fn of(&self, protocol: u8, flow_state: u8) -> u64 {
        match protocol {
            PROTO_TCP => {
                if Self::tcp_established(flow_state) {
                    self.tcp_established
                } else if flow_state & state::UNCONFIRMED != 0 {
                    core::hint::cold_path();
                    self.tcp_unconfirmed
                } else {
                    self.tcp_transitory
                }
            }
            PROTO_UDP if flow_state & state::UNCONFIRMED != 0 => {
                core::hint::cold_path();
                self.udp_unconfirmed
            }
            PROTO_UDP => self.udp,
            _ => self.icmp,
        }
    }
}

impl<F: Family> Settings<F> {
    /// Validates `config`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] names the first field out of range.
    pub(crate) fn new(config: NatConfig) -> Result<Settings<F>, ConfigError> {
        let c = &config;
        let (net, prefix_len, external_addr) = F::config_addrs(c);
        let v6 = F::BITS == 128;
        if prefix_len > F::BITS {
            return Err(ConfigError::Invalid(if v6 {
                "internal_prefix_len6 must be at most 128"
            } else {
                "internal_prefix_len must be at most 32"
            }));
        }
        let internal_mask = F::mask(prefix_len);
        let internal_net = F::Addr::and(net, internal_mask);
        if external_addr.in_prefix(internal_net, internal_mask) {
            return Err(ConfigError::Invalid(if v6 {
                "external_addr6 is inside the internal network"
            } else {
                "external_addr is inside the internal network"
            }));
        }
        let (lo, hi) = (*c.port_range.start(), *c.port_range.end());
        if lo < 1024 || lo > hi {
            return Err(ConfigError::Invalid(
                "port_range must be a non-empty range within 1024..=65535",
            ));
        }
        let ms = |d: core::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let t = &c.timeouts;
        if [
            t.udp,
            t.tcp_established,
            t.tcp_transitory,
            t.icmp,
            t.fragment,
            t.inbound_unconfirmed,
        ]
        .iter()
        .any(|d| d.is_zero())
        {
            return Err(ConfigError::Invalid("timeouts must be non-zero"));
        }
        if c.max_flows == 0 || c.max_flows >= u32::MAX as usize {
            return Err(ConfigError::Invalid("max_flows must be in 1..u32::MAX"));
        }
        if c.max_held_fragments > 65_536
            || c.max_held_bytes > 64 << 20
            || (c.max_held_fragments == 0) != (c.max_held_bytes == 0)
        {
            return Err(ConfigError::Invalid(
                "max_held_fragments (at most 65536) and max_held_bytes (at most 64 MiB) must be both 0 or both non-zero",
            ));
        }
        if c.max_inbound_flows == 0
            || c.max_inbound_flows_per_forward == 0
            || c.max_flows.saturating_add(c.max_inbound_flows) >= u32::MAX as usize
        {
            return Err(ConfigError::Invalid(
                "max_inbound_flows and max_inbound_flows_per_forward must be at least 1, and max_flows + max_inbound_flows below u32::MAX",
            ));
        }
        if c.max_flows_per_host == 0 {
            return Err(ConfigError::Invalid(
                "max_flows_per_host must be at least 1",
            ));
        }
        let timeouts = TimeoutsMillis {
            udp: ms(t.udp),
            tcp_established: ms(t.tcp_established),
            tcp_transitory: ms(t.tcp_transitory),
            icmp: ms(t.icmp),
            fragment: ms(t.fragment),
            tcp_unconfirmed: ms(t.inbound_unconfirmed).min(ms(t.tcp_transitory)),
            udp_unconfirmed: ms(t.inbound_unconfirmed).min(ms(t.udp)),
        };
        Ok(Settings {
            internal_net,
            internal_mask,
            external_addr,
            port_range: (lo, hi),
            timeouts,
            config,
        })
    }

    /// Whether `addr` may not be the source of a packet from outside: the
    /// internal network (which holds the gateway), the external address,
    /// and what [`Family::is_martian`] says (IPv4: 0/8, 127/8, or 224/4 and
    /// 240/4 (multicast, reserved and the limited broadcast), one table load
    /// by the first octet; IPv6: ::, ::1, ff00::/8, fe80::/10).
    #[inline(always)]
    pub(crate) fn is_martian_source(&self, addr: F::Addr) -> bool {
        F::is_martian(addr) | self.is_internal(addr) | (addr == self.external_addr)
    }

    /// Whether `addr` is in the internal network.
    #[inline(always)]
    pub(crate) fn is_internal(&self, addr: F::Addr) -> bool {
        addr.in_prefix(self.internal_net, self.internal_mask)
    }
}

/// First octets no outside source can have: 0 ("this network"), 127
/// (loopback), 224–239 (multicast) and 240–255 (reserved, and the limited
/// broadcast), RFC 1812 section 5.3.7 and RFC 6890.
pub(crate) static MARTIAN_FIRST_OCTET: [bool; 256] = {
    let mut t = [false; 256];
    t[0] = true;
    t[127] = true;
    let mut i = 224;
    while i < 256 {
        t[i] = true;
        i += 1;
    }
    t
};
