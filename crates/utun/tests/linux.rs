//! Real-packet tests of the Linux backend. Each test makes its own network namespace
//! (`hostnet-utun-<pid>-<n>`, deleted on drop) and creates the TUN inside it with
//! `TunBuilder::netns`; nothing touches the root namespace.
//!
//! Run with `cargo test -p utun -- --include-ignored` as root (or with CAP_NET_ADMIN and
//! CAP_SYS_ADMIN).
#![cfg(target_os = "linux")]

mod common;

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    process::Command,
    time::{Duration, Instant},
};

use common::{ipv4_checksums_ok, ipv6_checksum_ok, recv_until};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use netns::Netns;
use utun::{InterfaceGone, Ipv4Dest, NotIp, OpenError, Truncated, Tun, TunBuilder};

const LOCAL: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const WAIT: Duration = Duration::from_secs(3);

fn p2p_tun(ns: &Netns) -> Tun {
    TunBuilder::new()
        .mtu(1500)
        .ipv4(LOCAL, Ipv4Dest::Peer(PEER))
        .netns(ns.fd())
        .open()
        .expect("open tun in the test namespace")
}

fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, id: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4(src.octets(), dst.octets(), 64).icmpv4_echo_request(id, 1);
    let mut p = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut p, payload).expect("build echo request");
    p
}

fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let b = PacketBuilder::ipv4(s.ip().octets(), d.ip().octets(), 64).udp(s.port(), d.port());
    let mut p = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut p, payload).expect("build udp");
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
#[ignore = "needs CAP_NET_ADMIN"]
fn icmp_echo_request_gets_the_kernels_reply_with_valid_checksums() -> io::Result<()> {
    let ns = common::netns();
    let tun = p2p_tun(&ns);
    assert!(tun.name().starts_with("tun"), "{}", tun.name());
    assert_eq!(tun.mtu(), 1500);
    let payload = b"hostnet utun ping";
    tun.send(&echo_request(PEER, LOCAL, 0x4242, payload))?;
    let reply = recv_until(&tun, WAIT, |p| is_echo_reply_v4(p, 0x4242))?;
    let s = SlicedPacket::from_ip(&reply).expect("reply parses");
    let Some(NetSlice::Ipv4(ip)) = &s.net else {
        panic!("not ipv4")
    };
    assert_eq!(ip.header().source_addr(), LOCAL);
    assert_eq!(ip.header().destination_addr(), PEER);
    let Some(TransportSlice::Icmpv4(icmp)) = &s.transport else {
        panic!("not icmp")
    };
    assert_eq!(icmp.payload(), payload);
    assert!(ipv4_checksums_ok(&reply), "bad checksum in {reply:02x?}");
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn ipv6_echo_request_gets_a_reply() -> io::Result<()> {
    let ns = common::netns();
    let local: Ipv6Addr = "fd00:64::1".parse().expect("addr");
    let peer: Ipv6Addr = "fd00:64::2".parse().expect("addr");
    let tun = TunBuilder::new()
        .ipv6(local, 64)
        .netns(ns.fd())
        .open()
        .expect("open");
    let b = PacketBuilder::ipv6(peer.octets(), local.octets(), 64).icmpv6_echo_request(7, 1);
    let mut p = Vec::new();
    b.write(&mut p, b"six").expect("build");
    // The kernel finishes adding the address on a work queue: retry until it answers.
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
    assert_eq!(&reply[8..24], &local.octets());
    assert_eq!(&reply[24..40], &peer.octets());
    assert!(ipv6_checksum_ok(&reply));
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn udp_from_the_namespace_comes_out_of_the_tun() -> io::Result<()> {
    let ns = common::netns();
    let tun = p2p_tun(&ns);
    let payload = b"out through the tun";
    utun::linux::netns::run_in(ns.fd(), || -> io::Result<()> {
        let s = UdpSocket::bind((LOCAL, 40000))?;
        s.send_to(payload, (PEER, 9))?;
        Ok(())
    })??;
    let p = recv_until(&tun, WAIT, |p| p.get(9) == Some(&17))?;
    let s = SlicedPacket::from_ip(&p).expect("parses");
    let Some(TransportSlice::Udp(udp)) = &s.transport else {
        panic!("not udp")
    };
    assert_eq!((udp.source_port(), udp.destination_port()), (40000, 9));
    assert_eq!(udp.payload(), payload);
    assert!(ipv4_checksums_ok(&p));
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn udp_written_into_the_tun_reaches_a_socket_in_the_namespace() -> io::Result<()> {
    let ns = common::netns();
    let tun = p2p_tun(&ns);
    let sock = utun::linux::netns::run_in(ns.fd(), || UdpSocket::bind((LOCAL, 40001)))??;
    sock.set_read_timeout(Some(WAIT))?;
    let payload = b"in through the tun";
    tun.send(&udp_packet(
        (PEER, 5555).into(),
        (LOCAL, 40001).into(),
        payload,
    ))?;
    let mut buf = [0u8; 100];
    let (n, from) = sock.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], payload);
    assert_eq!(from, SocketAddr::from((PEER, 5555)));
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn batches_send_and_receive_several_packets() -> io::Result<()> {
    let ns = common::netns();
    let tun = p2p_tun(&ns);
    let reqs: Vec<Vec<u8>> = (0..8u16)
        .map(|i| echo_request(PEER, LOCAL, 0x100 + i, b"batch"))
        .collect();
    let refs: Vec<&[u8]> = reqs.iter().map(Vec::as_slice).collect();
    assert_eq!(tun.send_batch(&refs)?, 8);
    let mut storage = vec![[0u8; 2048]; 8];
    let mut lens = [0usize; 8];
    let mut got = 0;
    let deadline = Instant::now() + WAIT;
    while got < 8 {
        // Blocking descriptor, but only read once readable: bounded, and the rest of each
        // batch goes through the non-blocking path (preadv2 RWF_NOWAIT).
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || !tun.wait_readable(Some(left))? {
            break;
        }
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
        let n = tun.recv_batch(&mut bufs, &mut lens)?;
        for (buf, len) in storage.iter().zip(&lens).take(n) {
            got += usize::from((0x100..0x108).any(|id| is_echo_reply_v4(&buf[..*len], id)));
        }
    }
    assert_eq!(got, 8);
    // Non-blocking and nothing queued: WouldBlock, not Ok(0).
    tun.set_nonblocking(true)?;
    let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
    let e = tun.recv_batch(&mut bufs, &mut lens).expect_err("empty");
    assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    // A bad packet in the middle: the ones before it are sent, then the error.
    let bad: &[u8] = &[0x12; 30];
    assert_eq!(tun.send_batch(&[refs[0], bad, refs[1]])?, 1);
    assert_eq!(
        tun.send_batch(&[bad]).expect_err("bad").kind(),
        io::ErrorKind::InvalidInput
    );
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn multi_queue_spreads_flows_over_the_queues() -> io::Result<()> {
    let ns = common::netns();
    let queues = TunBuilder::new()
        .ipv4(LOCAL, Ipv4Dest::Peer(PEER))
        .nonblocking(true)
        .netns(ns.fd())
        .open_queues(4)
        .expect("open 4 queues");
    assert_eq!(queues.len(), 4);
    assert!(queues.iter().all(|q| q.name() == queues[0].name()));
    const FLOWS: u16 = 64;
    utun::linux::netns::run_in(ns.fd(), || -> io::Result<()> {
        for port in 0..FLOWS {
            let s = UdpSocket::bind((LOCAL, 41000 + port))?;
            s.send_to(b"flow", (PEER, 9))?;
        }
        Ok(())
    })??;
    let mut per_queue = [0usize; 4];
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + WAIT;
    while per_queue.iter().sum::<usize>() < usize::from(FLOWS) && Instant::now() < deadline {
        for (q, count) in queues.iter().zip(per_queue.iter_mut()) {
            loop {
                match q.recv(&mut buf) {
                    Ok(n) => *count += usize::from(n > 28 && buf[9] == 17),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        per_queue.iter().sum::<usize>(),
        usize::from(FLOWS),
        "{per_queue:?}"
    );
    assert!(
        per_queue.iter().filter(|&&c| c > 0).count() >= 2,
        "all on one queue: {per_queue:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn vnet_hdr_mode_round_trips_a_packet_with_its_header() -> io::Result<()> {
    let ns = common::netns();
    let tun = TunBuilder::new()
        .ipv4(LOCAL, Ipv4Dest::Peer(PEER))
        .vnet_hdr(true)
        .offload(utun::linux::TUN_F_CSUM)
        .netns(ns.fd())
        .open()
        .expect("open vnet_hdr tun");
    assert_eq!(tun.vnet_hdr_len(), 12);
    let mut pkt = vec![0u8; 12]; // flags 0, GSO_NONE
    pkt.extend_from_slice(&echo_request(PEER, LOCAL, 0x77, b"vnet"));
    tun.send(&pkt)?;
    let reply = recv_until(&tun, WAIT, |p| {
        p.len() > 12 && is_echo_reply_v4(&p[12..], 0x77)
    })?;
    assert_eq!(reply[1], 0, "gso_type NONE");
    assert!(ipv4_checksums_ok(&reply[12..]));
    // Without its header the packet is not IP at offset 12: refused, not sent.
    let bare = echo_request(PEER, LOCAL, 1, b"x");
    assert!(tun.send(&bare[..12]).is_err());
    tun.set_offload(0)?;
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn tap_mode_carries_ethernet_frames() -> io::Result<()> {
    let ns = common::netns();
    let tap = TunBuilder::new()
        .tap(true)
        .ipv4(Ipv4Addr::new(10, 9, 0, 1), Ipv4Dest::Prefix(24))
        .netns(ns.fd())
        .open()
        .expect("open tap");
    assert!(tap.is_tap());
    assert!(tap.name().starts_with("tap"), "{}", tap.name());
    let mac = [0x02, 0, 0, 0, 0, 0x42];
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    arp.extend_from_slice(&mac);
    arp.extend_from_slice(&[10, 9, 0, 2]);
    arp.extend_from_slice(&[0; 6]);
    arp.extend_from_slice(&[10, 9, 0, 1]);
    tap.send(&arp)?; // an Ethernet frame: no IP check in TAP mode
    let reply = recv_until(&tap, WAIT, |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[21] == 2
    })?;
    assert_eq!(&reply[0..6], &mac, "reply is addressed to us");
    assert_eq!(&reply[28..32], &[10, 9, 0, 1], "sender is the tap address");
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn netns_creation_puts_the_interface_in_that_namespace_only() -> io::Result<()> {
    let ns = common::netns();
    let name = format!("hnu{}", std::process::id() % 100_000);
    let tun = TunBuilder::new()
        .name(&name)
        .netns(ns.fd())
        .up(false)
        .open()
        .expect("open");
    assert_eq!(tun.name(), name);
    assert!(
        ns.has_link(&name).expect("ip link show"),
        "not in the test namespace"
    );
    let in_root = Command::new("ip")
        .args(["link", "show", "dev", &name])
        .output()?;
    assert!(
        !in_root.status.success(),
        "{name} leaked into the root namespace"
    );
    drop(tun);
    assert!(
        !ns.has_link(&name).expect("ip link show"),
        "drop did not remove the interface"
    );
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn bad_names_and_non_ip_packets_are_errors() -> io::Result<()> {
    let ns = common::netns();
    let e = TunBuilder::new()
        .name("a-name-far-too-long")
        .netns(ns.fd())
        .open()
        .err();
    assert!(matches!(e, Some(OpenError::NameTooLong(_))), "{e:?}");
    let e = TunBuilder::new()
        .name("bad/name")
        .netns(ns.fd())
        .open()
        .err();
    assert!(matches!(e, Some(OpenError::InvalidName { .. })), "{e:?}");
    let tun = p2p_tun(&ns);
    for bad in [&[][..], &[0x00; 40][..], &[0xff; 60][..]] {
        let e = tun.send(bad).expect_err("not IP");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.get_ref().is_some_and(|i| i.is::<NotIp>()));
    }
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_packet_larger_than_the_buffer_is_reported_not_cut() -> io::Result<()> {
    let ns = common::netns();
    // No IPv6 router solicitations in between: the next packet must be our reply.
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        .expect("sysctl");
    let tun = p2p_tun(&ns);
    tun.send(&echo_request(PEER, LOCAL, 0x99, &[0xab; 1000]))?;
    tun.set_nonblocking(true)?;
    assert!(tun.wait_readable(Some(WAIT))?);
    let mut small = [0u8; 200];
    let e = tun.recv(&mut small).expect_err("must not fit");
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    let t = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<Truncated>())
        .copied();
    assert_eq!(
        t,
        Some(Truncated {
            packet_len: Some(1028),
            buf_len: 200
        })
    );
    // The device keeps working.
    tun.send(&echo_request(PEER, LOCAL, 0x9a, b"small"))?;
    recv_until(&tun, WAIT, |p| is_echo_reply_v4(p, 0x9a))?;
    // In a batch, the truncation after a good packet is reported by the next call.
    tun.send(&echo_request(PEER, LOCAL, 0x9b, b"fits"))?;
    tun.send(&echo_request(PEER, LOCAL, 0x9c, &[0xcd; 1000]))?;
    std::thread::sleep(Duration::from_millis(50));
    let (mut a, mut b) = ([0u8; 200], [0u8; 200]);
    let mut lens = [0; 2];
    let n = tun.recv_batch(&mut [&mut a[..], &mut b[..]], &mut lens)?;
    assert_eq!(n, 1);
    assert!(is_echo_reply_v4(&a[..lens[0]], 0x9b));
    let e = tun.recv(&mut a).expect_err("pending truncation");
    assert!(e.get_ref().is_some_and(|i| i.is::<Truncated>()));
    Ok(())
}

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn deleting_the_interface_underneath_gives_an_error_not_a_spin() -> io::Result<()> {
    let ns = common::netns();
    let tun = p2p_tun(&ns);
    let name = tun.name().to_owned();
    ns.ip(&["link", "del", "dev", &name]).expect("ip");
    let mut buf = [0u8; 2048];
    // Blocking descriptor: must return at once with the error, every time.
    let start = Instant::now();
    for _ in 0..100 {
        let e = tun.recv(&mut buf).expect_err("interface is gone");
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe, "{e}");
        assert!(e.get_ref().is_some_and(|i| i.is::<InterfaceGone>()));
    }
    assert!(start.elapsed() < Duration::from_secs(1));
    let e = tun
        .send(&echo_request(PEER, LOCAL, 1, b"x"))
        .expect_err("gone");
    assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
    let mut lens = [0];
    assert!(tun.recv_batch(&mut [&mut buf[..]], &mut lens).is_err());
    Ok(())
}

/// Re-runs itself under `setpriv` without CAP_NET_ADMIN (still uid 0, so `/dev/net/tun`
/// opens): TUNSETIFF must fail with `PermissionDenied` naming CAP_NET_ADMIN.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn missing_cap_net_admin_is_reported_as_permission_denied() -> io::Result<()> {
    const CHILD: &str = "HOSTNET_UTUN_UNPRIVILEGED_NS";
    if let Ok(ns_name) = std::env::var(CHILD) {
        let ns = utun::linux::netns::open(&ns_name)?;
        match TunBuilder::new().netns(&ns).open() {
            Err(OpenError::PermissionDenied { what, .. }) => {
                assert!(what.contains("CAP_NET_ADMIN"), "{what}")
            }
            other => panic!("expected PermissionDenied, got {other:?}"),
        }
        return Ok(());
    }
    let ns = common::netns();
    let out = Command::new("setpriv")
        .args(["--bounding-set=-net_admin", "--inh-caps=-net_admin", "--"])
        .arg(std::env::current_exe()?)
        .args([
            "--exact",
            "missing_cap_net_admin_is_reported_as_permission_denied",
            "--include-ignored",
        ])
        .env(CHILD, ns.name())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "child ran no test:\n{stdout}");
    Ok(())
}
