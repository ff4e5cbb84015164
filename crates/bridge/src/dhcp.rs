//! The gateway's DHCP server (RFC 2131), on `dhcproto` messages.

use core::net::Ipv4Addr;
use core::ops::RangeInclusive;
use core::time::Duration;

use dhcproto::v4::{DhcpOption, HType, Message, MessageType, Opcode, OptionCode};
use nat::Instant;

use crate::wire::MacAddr;

/// What the DHCP server hands out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// The server's address (the gateway): server identifier, router, DNS.
    pub server: Ipv4Addr,
    /// Prefix length of the subnet.
    pub prefix_len: u8,
    /// Addresses handed out.
    pub pool: RangeInclusive<Ipv4Addr>,
    /// Lease time.
    pub lease: Duration,
    /// Interface MTU option.
    pub mtu: u16,
    /// DNS server option (the gateway when the DNS forwarder is on).
    pub dns: Option<Ipv4Addr>,
    /// An address never handed out (the guest's static address, if any).
    pub reserved: Option<Ipv4Addr>,
}

/// A reply and where to send it (RFC 2131 section 4.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpReply {
    /// The message (OFFER, ACK or NAK).
    pub message: Message,
    /// IP destination: 255.255.255.255, the client's `ciaddr` or its new `yiaddr`.
    pub dst_ip: Ipv4Addr,
    /// Ethernet destination: broadcast or the client's hardware address.
    pub dst_mac: MacAddr,
}

/// Leases per client hardware address from a pool. Its state is bounded by the pool size: a
/// client holds at most one entry, and every entry holds an address of the pool.
#[derive(Debug)]
pub struct DhcpServer {
    cfg: DhcpConfig,
    leases: Vec<Lease>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Lease {
    mac: MacAddr,
    ip: Ipv4Addr,
    expires: Instant,
    state: LeaseState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaseState {
    Offered,
    Bound,
    Declined,
}

impl DhcpServer {
    /// A server with no leases.
    pub fn new(cfg: DhcpConfig) -> Self {
        DhcpServer {
            cfg,
            leases: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DhcpConfig {
        &self.cfg
    }

    /// The address bound to `mac`, if its lease has not expired.
    pub fn lease_of(&self, mac: MacAddr, now: Instant) -> Option<Ipv4Addr> {
        self.leases
            .iter()
            .find(|l| l.mac == mac && l.state == LeaseState::Bound && l.expires > now)
            .map(|l| l.ip)
    }

    /// Number of lease entries (offered, bound and declined).
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// Whether there is no lease entry.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Handles a client message from hardware address `mac`; returns the reply to send, if
    /// any (RELEASE, DECLINE and messages for other servers get none).
    pub fn handle(&mut self, req: &Message, mac: MacAddr, now: Instant) -> Option<DhcpReply> {
        // `Message::chaddr` slices by `hlen`, which a client may set past 16.
        if req.opcode() != Opcode::BootRequest || req.hlen() > 16 {
            return None;
        }
        self.leases.retain(|l| l.expires > now);
        let requested = match req.opts().get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match req.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        match req.opts().msg_type()? {
            MessageType::Discover => {
                let ip = self.allocate(mac, requested)?;
                if self.lease_of(mac, now) != Some(ip) {
                    self.set(mac, ip, now + OFFER_HOLD, LeaseState::Offered);
                }
                Some(self.reply(req, MessageType::Offer, ip))
            }
            MessageType::Request => {
                if server_id.is_some_and(|sid| sid != self.cfg.server) {
                    // The client took another server's offer.
                    self.leases
                        .retain(|l| !(l.mac == mac && l.state == LeaseState::Offered));
                    return None;
                }
                let ip = match (server_id, requested) {
                    (Some(_), Some(ip)) | (None, Some(ip)) => ip,
                    (_, None) if !req.ciaddr().is_unspecified() => req.ciaddr(),
                    _ => return None,
                };
                if self.available_for(mac, ip) {
                    self.set(mac, ip, now + self.cfg.lease, LeaseState::Bound);
                    Some(self.reply(req, MessageType::Ack, ip))
                } else {
                    Some(self.reply(req, MessageType::Nak, Ipv4Addr::UNSPECIFIED))
                }
            }
            MessageType::Decline => {
                let ip = requested?;
                if self.leases.iter().any(|l| l.mac == mac && l.ip == ip) {
                    self.leases.retain(|l| l.mac != mac);
                    let hold = now + self.cfg.lease;
                    self.leases.push(Lease {
                        mac: MacAddr::default(),
                        ip,
                        expires: hold,
                        state: LeaseState::Declined,
                    });
                }
                None
            }
            MessageType::Release => {
                let ip = req.ciaddr();
                self.leases.retain(|l| !(l.mac == mac && l.ip == ip));
                None
            }
            MessageType::Inform => {
                if req.ciaddr().is_unspecified() {
                    return None;
                }
                Some(self.reply(req, MessageType::Ack, Ipv4Addr::UNSPECIFIED))
            }
            _ => None,
        }
    }

    /// The address to offer `mac`: its current one, else the requested one, else the first
    /// free one.
    fn allocate(&self, mac: MacAddr, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(l) = self
            .leases
            .iter()
            .find(|l| l.mac == mac && l.state != LeaseState::Declined)
        {
            return Some(l.ip);
        }
        if let Some(ip) = requested.filter(|&ip| self.available_for(mac, ip)) {
            return Some(ip);
        }
        let (lo, hi) = (
            u32::from(*self.cfg.pool.start()),
            u32::from(*self.cfg.pool.end()),
        );
        (lo..=hi)
            .map(Ipv4Addr::from)
            .find(|&ip| self.available_for(mac, ip))
    }

    /// Whether `ip` is in the pool and not held by anyone else.
    fn available_for(&self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        self.cfg.pool.contains(&ip)
            && ip != self.cfg.server
            && Some(ip) != self.cfg.reserved
            && !self
                .leases
                .iter()
                .any(|l| l.ip == ip && (l.mac != mac || l.state == LeaseState::Declined))
    }

    fn set(&mut self, mac: MacAddr, ip: Ipv4Addr, expires: Instant, state: LeaseState) {
        self.leases
            .retain(|l| l.mac != mac || l.state == LeaseState::Declined);
        self.leases.push(Lease {
            mac,
            ip,
            expires,
            state,
        });
    }

    fn reply(&self, req: &Message, kind: MessageType, yiaddr: Ipv4Addr) -> DhcpReply {
        let chaddr = req.chaddr();
        let mut mac = MacAddr::default();
        if let Some(c) = chaddr.get(..6) {
            mac.0.copy_from_slice(c);
        }
        let ciaddr = if kind == MessageType::Nak {
            Ipv4Addr::UNSPECIFIED
        } else {
            req.ciaddr()
        };
        let mut m = Message::new_with_id(
            req.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            req.giaddr(),
            chaddr,
        );
        m.set_opcode(Opcode::BootReply);
        m.set_htype(HType::Eth);
        m.set_flags(req.flags());
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(self.cfg.server));
        if kind != MessageType::Nak {
            let mask = prefix_mask(self.cfg.prefix_len);
            let net = u32::from(self.cfg.server) & mask;
            if req.opts().msg_type() != Some(MessageType::Inform) {
                let secs = u32::try_from(self.cfg.lease.as_secs()).unwrap_or(u32::MAX);
                o.insert(DhcpOption::AddressLeaseTime(secs));
                o.insert(DhcpOption::Renewal(secs / 2));
                o.insert(DhcpOption::Rebinding(secs / 8 * 7));
            }
            o.insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
            o.insert(DhcpOption::BroadcastAddr(Ipv4Addr::from(net | !mask)));
            o.insert(DhcpOption::Router(vec![self.cfg.server]));
            if let Some(dns) = self.cfg.dns {
                o.insert(DhcpOption::DomainNameServer(vec![dns]));
            }
            o.insert(DhcpOption::InterfaceMtu(self.cfg.mtu));
        }
        let (dst_ip, dst_mac) = if kind == MessageType::Nak {
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        } else if !req.ciaddr().is_unspecified() {
            (req.ciaddr(), mac)
        } else if req.flags().broadcast() {
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        } else {
            (yiaddr, mac)
        };
        DhcpReply {
            message: m,
            dst_ip,
            dst_mac,
        }
    }
}

/// The netmask of a prefix length (clamped to 32).
pub(crate) const fn prefix_mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else if prefix_len >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix_len)
    }
}

/// How long an offered address is held for the client.
const OFFER_HOLD: Duration = Duration::from_secs(60);

/// Whether the options of a DHCP message (`payload` is the UDP payload) have lengths that
/// dhcproto 0.15 decodes without a panic.
///
/// dhcproto's option decoder states some lengths with `debug_assert!` instead of checking
/// them (Rapid Commit 0, Client Network Interface 3, the Bulk Leasequery times 4, Client FQDN
/// at least 3), so a guest's malformed option panics a debug build (the fuzz target
/// `gateway_services` found it). Consecutive options of
/// one code are one option (RFC 3396), as dhcproto joins them. Other lengths are dhcproto's
/// to check.
pub(crate) fn options_decodable(payload: &[u8]) -> bool {
    let Some(mut opts) = payload.get(OPTIONS_AT..) else {
        return true; // too short: dhcproto refuses it
    };
    let mut run: Option<(u8, usize)> = None;
    loop {
        let code = opts.first().copied();
        // A run of one code ends at a different code, Pad, End or the end of the buffer.
        if let Some((c, len)) = run
            && code != Some(c)
        {
            if !fixed_length_ok(c, len) {
                return false;
            }
            run = None;
        }
        match code {
            None | Some(255) => return true,
            Some(0) => opts = &opts[1..],
            Some(c) => {
                let Some(&len) = opts.get(1) else {
                    return true; // truncated: dhcproto refuses it
                };
                let len = usize::from(len);
                run = Some((c, run.map_or(0, |(_, l)| l) + len));
                opts = opts.get(2 + len..).unwrap_or_default();
            }
        }
    }
}

/// The length rules dhcproto 0.15 asserts instead of checking.
fn fixed_length_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,
        94 => len == 3,
        152..=155 => len == 4,
        81 => len >= 3,
        _ => true,
    }
}

/// Where the options start: the fixed BOOTP header (236 bytes) and the magic cookie.
const OPTIONS_AT: usize = 240;

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::Decodable;
    use dhcproto::v4::Flags;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const MAC2: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);
    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 64, 1);

    fn server() -> DhcpServer {
        DhcpServer::new(DhcpConfig {
            server: GW,
            prefix_len: 24,
            pool: Ipv4Addr::new(192, 168, 64, 2)..=Ipv4Addr::new(192, 168, 64, 3),
            lease: Duration::from_secs(3600),
            mtu: 1500,
            dns: Some(GW),
            reserved: None,
        })
    }

    fn msg(mac: MacAddr, kind: MessageType, opts: &[DhcpOption]) -> Message {
        let mut m = Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac.0,
        );
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in opts {
            m.opts_mut().insert(o.clone());
        }
        m
    }

    fn kind(r: &DhcpReply) -> MessageType {
        r.message.opts().msg_type().unwrap()
    }

    #[test]
    fn discover_request_renew_release() {
        let mut s = server();
        let t0 = Instant::ZERO;
        let offer = s
            .handle(&msg(MAC, MessageType::Discover, &[]), MAC, t0)
            .unwrap();
        assert_eq!(kind(&offer), MessageType::Offer);
        let ip = offer.message.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(192, 168, 64, 2));
        assert_eq!(
            (offer.dst_ip, offer.dst_mac),
            (ip, MAC),
            "unicast without BROADCAST flag"
        );
        assert_eq!(s.lease_of(MAC, t0), None, "an offer is not a lease");
        let req = msg(
            MAC,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(GW),
                DhcpOption::RequestedIpAddress(ip),
            ],
        );
        let ack = s.handle(&req, MAC, t0).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.message.yiaddr(), ip);
        assert_eq!(
            ack.message.opts().get(OptionCode::AddressLeaseTime),
            Some(&DhcpOption::AddressLeaseTime(3600))
        );
        assert_eq!(s.lease_of(MAC, t0), Some(ip));
        // Renewal (RENEWING: ciaddr set, no server id, no requested ip): unicast to ciaddr.
        let mut renew = msg(MAC, MessageType::Request, &[]);
        renew.set_ciaddr(ip);
        let later = Instant::from_secs(1800);
        let ack = s.handle(&renew, MAC, later).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!((ack.dst_ip, ack.dst_mac), (ip, MAC));
        assert_eq!(
            s.lease_of(MAC, Instant::from_secs(3700)),
            Some(ip),
            "renewal extended the lease"
        );
        // Another client gets the other address; the pool is then exhausted for a third.
        let o2 = s
            .handle(&msg(MAC2, MessageType::Discover, &[]), MAC2, later)
            .unwrap();
        assert_eq!(o2.message.yiaddr(), Ipv4Addr::new(192, 168, 64, 3));
        let mac3 = MacAddr([2, 0, 0, 0, 0, 3]);
        assert!(
            s.handle(&msg(mac3, MessageType::Discover, &[]), mac3, later)
                .is_none()
        );
        // Release frees it.
        let mut rel = msg(MAC, MessageType::Release, &[]);
        rel.set_ciaddr(ip);
        assert!(s.handle(&rel, MAC, later).is_none());
        assert_eq!(s.lease_of(MAC, later), None);
        let o3 = s
            .handle(&msg(mac3, MessageType::Discover, &[]), mac3, later)
            .unwrap();
        assert_eq!(o3.message.yiaddr(), ip);
    }

    #[test]
    fn nak_wrong_address_and_broadcast_flag() {
        let mut s = server();
        let t0 = Instant::ZERO;
        // INIT-REBOOT for an address outside the pool: NAK, broadcast.
        let req = msg(
            MAC,
            MessageType::Request,
            &[DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 5))],
        );
        let nak = s.handle(&req, MAC, t0).unwrap();
        assert_eq!(kind(&nak), MessageType::Nak);
        assert_eq!(
            (nak.dst_ip, nak.dst_mac),
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        );
        // BROADCAST flag: the offer is broadcast.
        let mut d = msg(MAC, MessageType::Discover, &[]);
        d.set_flags(Flags::default().set_broadcast());
        let offer = s.handle(&d, MAC, t0).unwrap();
        assert_eq!(
            (offer.dst_ip, offer.dst_mac),
            (Ipv4Addr::BROADCAST, MacAddr::BROADCAST)
        );
        assert!(offer.message.flags().broadcast());
        // Request for another server's offer: silence, and the offer is withdrawn.
        let other = msg(
            MAC,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(Ipv4Addr::new(192, 168, 64, 99)),
                DhcpOption::RequestedIpAddress(offer.message.yiaddr()),
            ],
        );
        assert!(s.handle(&other, MAC, t0).is_none());
        assert!(s.is_empty());
        // Someone else's address: NAK.
        let o2 = s
            .handle(&msg(MAC2, MessageType::Discover, &[]), MAC2, t0)
            .unwrap();
        let steal = msg(
            MAC,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(GW),
                DhcpOption::RequestedIpAddress(o2.message.yiaddr()),
            ],
        );
        assert_eq!(kind(&s.handle(&steal, MAC, t0).unwrap()), MessageType::Nak);
    }

    #[test]
    fn decline_inform_and_expiry() {
        let mut s = server();
        let t0 = Instant::ZERO;
        let offer = s
            .handle(&msg(MAC, MessageType::Discover, &[]), MAC, t0)
            .unwrap();
        let ip = offer.message.yiaddr();
        let dec = msg(
            MAC,
            MessageType::Decline,
            &[DhcpOption::RequestedIpAddress(ip)],
        );
        assert!(s.handle(&dec, MAC, t0).is_none());
        let offer2 = s
            .handle(&msg(MAC, MessageType::Discover, &[]), MAC, t0)
            .unwrap();
        assert_ne!(
            offer2.message.yiaddr(),
            ip,
            "a declined address is not offered again"
        );
        // INFORM: ACK without lease time, unicast to ciaddr.
        let mut inf = msg(MAC, MessageType::Inform, &[]);
        inf.set_ciaddr(Ipv4Addr::new(192, 168, 64, 77));
        let ack = s.handle(&inf, MAC, t0).unwrap();
        assert_eq!(kind(&ack), MessageType::Ack);
        assert_eq!(ack.message.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(
            ack.message
                .opts()
                .get(OptionCode::AddressLeaseTime)
                .is_none()
        );
        assert!(ack.message.opts().get(OptionCode::Router).is_some());
        assert_eq!(ack.dst_ip, Ipv4Addr::new(192, 168, 64, 77));
        // Offers expire.
        let late = Instant::from_secs(61);
        let _ = s.handle(&msg(MAC2, MessageType::Inform, &[]), MAC2, late);
        assert_eq!(s.len(), 1, "only the declined entry is left");
    }

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut m = vec![0u8; OPTIONS_AT];
        m[..3].copy_from_slice(&[1, 1, 6]);
        m[236..240].copy_from_slice(&[99, 130, 83, 99]);
        m.extend_from_slice(opts);
        m
    }

    #[test]
    fn options_dhcproto_would_assert_on_are_refused() {
        // Each of these panics dhcproto 0.15's decoder in a debug build.
        for bad in [
            &[53, 1, 1, 152, 2, 0, 0, 255][..],
            &[80, 1, 0, 255],
            &[94, 2, 1, 2, 255],
            &[81, 2, 0, 0, 255],
            &[153, 2, 0, 0, 153, 1, 0],
        ] {
            let msg = with_options(bad);
            assert!(!options_decodable(&msg), "{bad:?}");
            if cfg!(debug_assertions) {
                let decoded = std::panic::catch_unwind(|| Message::from_bytes(&msg).is_ok());
                assert!(decoded.is_err(), "dhcproto no longer panics on {bad:?}");
            }
        }
    }

    #[test]
    fn well_formed_options_pass_and_decode() {
        // Rapid Commit (systemd-networkd sends it), an FQDN split in two (RFC 3396), a time
        // option of four bytes, padding, no End.
        for good in [
            &[53, 1, 1, 80, 0, 255][..],
            &[0, 0, 53, 1, 1, 81, 2, 0, 0, 81, 1, 0, 255],
            &[53, 1, 1, 152, 4, 0, 0, 0, 1],
            &[53, 1, 1, 12, 3, b'v', b'm', b'1'],
        ] {
            let msg = with_options(good);
            assert!(options_decodable(&msg), "{good:?}");
            assert!(Message::from_bytes(&msg).is_ok(), "{good:?}");
        }
        assert!(options_decodable(&[1, 2, 3]), "short: left to dhcproto");
    }
}
