//! Real-packet tests of the macOS backend (utun kernel control).
//!
//! NEVER RUN: written on Linux, where they are only type-checked and linted for
//! `aarch64-apple-darwin` and `x86_64-apple-darwin`. macOS has no network namespaces, so
//! these create a real utun interface on the Mac (removed again when the test ends) with
//! addresses from the benchmarking range 198.18.0.0/15, and send only to those addresses.
//!
//! Run on a Mac with: `sudo cargo test -p utun -- --include-ignored`
#![cfg(target_os = "macos")]

mod common;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use common::{ipv4_checksums_ok, ipv6_checksum_ok, recv_until};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use utun::{Ipv4Dest, NotIp, OpenError, Truncated, Tun, TunBuilder};

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(198, 18, 250, 2);
const WAIT: Duration = Duration::from_secs(3);

fn p2p_utun(local: Ipv4Addr, peer: Ipv4Addr) -> Tun {
    TunBuilder::new()
        .mtu(1400)
        .ipv4(local, Ipv4Dest::Peer(peer))
        .open()
        .expect("open utun (run as root)")
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_request(id, 1);
    let mut p = Vec::new();
    b.write(&mut p, payload).expect("build");
    p
}

fn is_echo_reply_v4(p: &[u8], id: u16) -> bool {
    let Ok(s) = SlicedPacket::from_ip(p) else {
        return false;
    };
    matches!(s.transport, Some(TransportSlice::Icmpv4(icmp))
        if icmp.type_u8() == 0 && icmp.bytes5to8()[..2] == id.to_be_bytes())
}

#[test]
#[ignore = "needs root"]
fn utun_answers_ping_with_valid_checksums_and_keeps_its_mtu() -> io::Result<()> {
    let tun = p2p_utun(LOCAL, PEER);
    assert!(tun.name().starts_with("utun"), "{}", tun.name());
    assert_eq!(tun.mtu(), 1400);
    tun.send(&echo_request(PEER, LOCAL, 0x4242, b"mac ping"))?;
    let reply = recv_until(&tun, WAIT, |p| is_echo_reply_v4(p, 0x4242))?;
    assert_eq!(&reply[12..16], &LOCAL.octets());
    assert_eq!(&reply[16..20], &PEER.octets());
    assert!(ipv4_checksums_ok(&reply));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn udp_goes_out_of_and_into_the_utun() -> io::Result<()> {
    let (local, peer) = (
        Ipv4Addr::new(198, 18, 251, 1),
        Ipv4Addr::new(198, 18, 251, 2),
    );
    let tun = p2p_utun(local, peer);
    let sock = UdpSocket::bind((local, 0))?;
    sock.set_read_timeout(Some(WAIT))?;
    let port = sock.local_addr()?.port();
    sock.send_to(b"out", (peer, 9))?;
    let p = recv_until(&tun, WAIT, |p| {
        p.get(9) == Some(&17) && p.get(16..20) == Some(&peer.octets())
    })?;
    assert_eq!(&p[28..], b"out");
    assert!(ipv4_checksums_ok(&p));
    let b = PacketBuilder::ipv4(peer.octets(), local.octets(), 64).udp(5555, port);
    let mut inbound = Vec::new();
    b.write(&mut inbound, b"in").expect("build");
    tun.send(&inbound)?;
    let mut buf = [0u8; 16];
    let (n, from) = sock.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"in");
    assert_eq!(from, SocketAddr::from((peer, 5555)));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn ipv6_address_answers_ping6() -> io::Result<()> {
    let local: Ipv6Addr = "fd00:6865:7374::1".parse().expect("addr");
    let peer: Ipv6Addr = "fd00:6865:7374::2".parse().expect("addr");
    let tun = TunBuilder::new().ipv6(local, 64).open().expect("open utun");
    let b = PacketBuilder::ipv6(peer.octets(), local.octets(), 64).icmpv6_echo_request(9, 1);
    let mut p = Vec::new();
    b.write(&mut p, b"six").expect("build");
    let is_reply = |p: &[u8]| p.first().is_some_and(|b| b >> 4 == 6) && p.get(40) == Some(&129);
    let mut reply = None;
    for _ in 0..15 {
        tun.send(&p)?;
        if let Ok(r) = recv_until(&tun, Duration::from_millis(200), is_reply) {
            reply = Some(r);
            break;
        }
    }
    let reply = reply.expect("no echo reply within 3 s");
    assert!(ipv6_checksum_ok(&reply));
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn names_truncation_and_non_ip_are_errors() -> io::Result<()> {
    for (name, too_long) in [
        ("tun0", false),
        ("utun01", false),
        ("utunx", false),
        ("utun1234567890123", true),
    ] {
        let e = TunBuilder::new().name(name).open().err();
        match e {
            Some(OpenError::NameTooLong(_)) => assert!(too_long, "{name}"),
            Some(OpenError::InvalidName { .. }) => assert!(!too_long, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    let (local, peer) = (
        Ipv4Addr::new(198, 18, 252, 1),
        Ipv4Addr::new(198, 18, 252, 2),
    );
    let tun = p2p_utun(local, peer);
    let e = tun.send(&[0xff; 40]).expect_err("not IP");
    assert!(e.get_ref().is_some_and(|i| i.is::<NotIp>()));
    tun.send(&echo_request(peer, local, 0x99, &[0xab; 1000]))?;
    tun.set_nonblocking(true)?;
    let mut small = [0u8; 200];
    let mut seen = false;
    for _ in 0..50 {
        if !tun.wait_readable(Some(WAIT))? {
            break;
        }
        match tun.recv(&mut small) {
            Err(e) if e.get_ref().is_some_and(|i| i.is::<Truncated>()) => {
                seen = true;
                break;
            }
            _ => {}
        }
    }
    assert!(
        seen,
        "a 1028-byte reply into 200 bytes must be reported as truncated"
    );
    Ok(())
}

#[test]
#[ignore = "needs root"]
fn a_named_unit_is_created_under_that_name() {
    let tun = TunBuilder::new()
        .name("utun231")
        .up(false)
        .open()
        .expect("open utun231");
    assert_eq!(tun.name(), "utun231");
}

/// Runs unprivileged (not ignored): without root, creating a utun is refused with a
/// `PermissionDenied` that says root is needed. Does nothing when run as root.
#[test]
fn without_root_open_says_root_is_needed() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    match TunBuilder::new().open() {
        Err(OpenError::PermissionDenied { what, .. }) => assert!(what.contains("root"), "{what}"),
        other => panic!("expected PermissionDenied, got {other:?}"),
    }
}
