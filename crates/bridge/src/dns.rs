//! The DNS upstream: the gateway forwards DNS (udp and tcp port 53) to it through a NAT
//! redirect. Helpers to take it from the host's resolver configuration.

use core::net::{Ipv4Addr, SocketAddrV4};

/// Every IPv4 `nameserver` in resolv.conf text, in file order: the one resolv.conf parser of
/// the workspace. Comments (from `#` or `;`) are ignored, IPv6 and malformed addresses
/// skipped; loopback addresses are kept (see [`parse_resolv_conf`] for the usable one).
pub fn resolv_conf_nameservers(text: &str) -> impl Iterator<Item = Ipv4Addr> + '_ {
    text.lines()
        .map(|l| l.split(['#', ';']).next().unwrap_or(""))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        .filter_map(|a| a.parse::<Ipv4Addr>().ok())
}

/// The first usable IPv4 `nameserver` in resolv.conf text. Loopback and unspecified
/// addresses are skipped: a packet the NAT sends to the host's 127.0.0.53 would not reach a
/// local stub resolver through the TUN device.
pub fn parse_resolv_conf(text: &str) -> Option<Ipv4Addr> {
    resolv_conf_nameservers(text).find(|a| !a.is_loopback() && !a.is_unspecified())
}

/// Reads the host's resolver configuration: `/etc/resolv.conf`, then (for
/// systemd-resolved's 127.0.0.53 stub) `/run/systemd/resolve/resolv.conf`; the first usable
/// IPv4 nameserver, port 53.
pub fn host_dns_upstream() -> Option<SocketAddrV4> {
    ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .find_map(|t| parse_resolv_conf(&t))
        .map(|ip| SocketAddrV4::new(ip, 53))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_usable_ipv4_nameserver() {
        let t = "# generated\nsearch example.com\nnameserver 127.0.0.53\nnameserver ::1\n  nameserver\t198.18.0.53 # comment\nnameserver 9.9.9.9\n";
        assert_eq!(parse_resolv_conf(t), Some(Ipv4Addr::new(198, 18, 0, 53)));
        assert_eq!(
            parse_resolv_conf("nameserver 127.0.0.1\noptions edns0\n"),
            None
        );
        assert_eq!(
            parse_resolv_conf("; nameserver 1.2.3.4\nnameserverx 5.6.7.8\n"),
            None
        );
        assert_eq!(parse_resolv_conf(""), None);
    }

    #[test]
    fn every_ipv4_nameserver_in_order_loopback_included() {
        let t = "nameserver 127.0.0.53\nnameserver fe80::1\n#nameserver 1.1.1.1\nnameserver 9.9.9.9 # x\n";
        let all: Vec<Ipv4Addr> = resolv_conf_nameservers(t).collect();
        assert_eq!(
            all,
            [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(9, 9, 9, 9)]
        );
    }
}
