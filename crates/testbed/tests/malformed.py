# Malformed-traffic generator for the hostnet e2e tests (run inside a test namespace only).
#
#   python3 malformed.py guest <iface> <gateway-mac> <count>
#       writes <count> broken Ethernet frames out of <iface> with an AF_PACKET socket
#       (in the guest namespace: they land on the bridge's TX queue);
#   python3 malformed.py inbound <dst-ipv4> <count>
#       sends <count> broken IPv4 packets to <dst-ipv4> with a raw IP_HDRINCL socket
#       (from the server namespace: they reach the NAT's inbound path).
#
# Prints "sent=<n> refused=<n>" (refused: the local kernel rejected the send).
import random
import socket
import struct
import sys
import time

rng = random.Random(5)  # fixed seed: the same burst every run


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, payload, ihl=5, tot=None, ver=4, frag=0, ttl=64, good_csum=True, opts=b""):
    tot = 20 + len(opts) + len(payload) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", (ver << 4) | (ihl & 15), 0, tot & 0xFFFF, rng.randrange(65536),
                      frag, ttl, proto, 0, socket.inet_aton(src), socket.inet_aton(dst)) + opts
    if good_csum:
        c = csum(hdr)
        hdr = hdr[:10] + struct.pack("!H", c) + hdr[12:]
    return hdr + payload


def rand_bytes(n):
    return bytes(rng.randrange(256) for _ in range(n))


def guest_frames(src_mac, gw_mac, me, gw, server):
    bcast = b"\xff" * 6
    eth = lambda dst, et: dst + src_mac + struct.pack("!H", et)
    out = []
    # runts and bare headers
    for n in range(0, 14):
        out.append(rand_bytes(n))
    for n in range(0, 20):
        out.append(eth(gw_mac, 0x0800) + rand_bytes(n))
    out.append(eth(bcast, 0x0806) + rand_bytes(7))
    # bad IPv4 headers
    for ihl in range(0, 5):
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), ihl=ihl))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), ver=6))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), tot=1400))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), tot=10))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), ihl=15))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(30), good_csum=False))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 6, rand_bytes(8), opts=b"\x07\x03" + b"\xff" * 38, ihl=15))
    # truncated transport headers (UDP, TCP, ICMP) to the server and to the gateway's services
    for proto, n in ((17, 0), (17, 4), (17, 7), (6, 0), (6, 10), (6, 19), (1, 0), (1, 3), (1, 7)):
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, proto, rand_bytes(n)))
        out.append(eth(gw_mac, 0x0800) + ipv4(me, gw, proto, rand_bytes(n)))
    # UDP with lying length fields; garbage DHCP and DNS to the gateway
    for ulen in (0, 7, 9, 4000):
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, struct.pack("!HHHH", 40000, 9, ulen, 0) + rand_bytes(20)))
    for n in (0, 1, 12, 200, 600):
        out.append(eth(bcast, 0x0800) + ipv4("0.0.0.0", "255.255.255.255", 17, struct.pack("!HHHH", 68, 67, 8 + n, 0) + rand_bytes(n)))
        out.append(eth(gw_mac, 0x0800) + ipv4(me, gw, 17, struct.pack("!HHHH", 40001, 53, 8 + n, 0) + rand_bytes(n)))
    # a DNS query whose name labels run past the end
    dns = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x3fabc"
    out.append(eth(gw_mac, 0x0800) + ipv4(me, gw, 17, struct.pack("!HHHH", 40002, 53, 8 + len(dns), 0) + dns))
    # TCP with impossible data offsets
    for off in (0, 1, 4, 15):
        tcp = struct.pack("!HHIIBBHHH", 40003, 80, 1, 0, off << 4, 0x02, 65535, 0, 0)
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 6, tcp))
    # ICMP errors from the guest with garbage embedded headers
    for t in (3, 11, 12):
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 1, struct.pack("!BBHI", t, 0, 0, 0) + rand_bytes(rng.randrange(0, 40))))
    # fragments: odd offsets, overlaps, the largest offset
    for frag in (0x2000, 0x2001, 0x0001, 0x1FFF, 0x3FFF, 0x2000 | 100):
        out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(64), frag=frag))
    # ARP: truncated, odd sizes, a spoofed gateway claim
    arp = lambda op, hlen, plen, tail: struct.pack("!HHBBH", 1, 0x0800, hlen, plen, op) + tail
    out.append(eth(bcast, 0x0806) + arp(1, 6, 4, rand_bytes(3)))
    out.append(eth(bcast, 0x0806) + arp(1, 255, 255, rand_bytes(20)))
    out.append(eth(bcast, 0x0806) + arp(9, 6, 4, rand_bytes(20)))
    out.append(eth(bcast, 0x0806) + arp(2, 6, 4, src_mac + socket.inet_aton(gw) + gw_mac + socket.inet_aton(gw)))
    # VLAN, IPv6 and unknown ethertypes
    out.append(eth(gw_mac, 0x8100) + rand_bytes(60))
    out.append(eth(gw_mac, 0x86DD) + rand_bytes(60))
    out.append(eth(gw_mac, 0x88B5) + rand_bytes(60))
    # TTL 0 and a broadcast destination
    out.append(eth(gw_mac, 0x0800) + ipv4(me, server, 17, rand_bytes(16), ttl=0))
    out.append(eth(gw_mac, 0x0800) + ipv4(me, "255.255.255.255", 17, rand_bytes(16)))
    # the rest: random junk with an IPv4 or ARP ethertype, random lengths up to a full frame
    while len(out) < COUNT:
        et = rng.choice((0x0800, 0x0806, 0x0800))
        out.append(eth(rng.choice((gw_mac, bcast)), et) + rand_bytes(rng.randrange(0, 1500)))
    return out


def inbound_packets(dst):
    out = []
    src = "198.18.0.2"
    for proto, n in ((6, 0), (6, 5), (6, 19), (17, 0), (17, 3), (17, 7), (1, 0), (1, 3), (1, 7)):
        out.append(ipv4(src, dst, proto, rand_bytes(n)))
    for t in (3, 11, 12):
        for n in (0, 8, 20, 27, 48):
            out.append(ipv4(src, dst, 1, struct.pack("!BBHI", t, rng.randrange(16), 0, 0) + rand_bytes(n)))
        # an embedded header that claims to come from the external address
        inner = ipv4(dst, src, 17, struct.pack("!HHHH", 1024, 53, 8, 0))
        out.append(ipv4(src, dst, 1, struct.pack("!BBHI", t, 0, 0, 0) + inner[:rng.randrange(0, len(inner))]))
    for off in (0, 4, 15):
        out.append(ipv4(src, dst, 6, struct.pack("!HHIIBBHHH", 80, 1024, 1, 0, off << 4, 0x12, 65535, 0, 0)))
    for frag in (0x2000, 0x0001, 0x1FFF, 0x2000 | 100):
        out.append(ipv4(src, dst, 17, rand_bytes(64), frag=frag))
    out.append(ipv4(src, dst, 6, rand_bytes(8), ihl=15, opts=b"\x44\x03" + b"\x00" * 38))
    while len(out) < COUNT:
        out.append(ipv4(src, dst, rng.choice((1, 6, 17, 47, 255)), rand_bytes(rng.randrange(0, 1400))))
    return out


mode = sys.argv[1]
sent = refused = 0
if mode == "guest":
    iface, gw_mac_s, COUNT = sys.argv[2], sys.argv[3], int(sys.argv[4])
    src_mac = bytes.fromhex(open("/sys/class/net/%s/address" % iface).read().strip().replace(":", ""))
    gw_mac = bytes.fromhex(gw_mac_s.replace(":", ""))
    me = socket.inet_ntoa(socket.inet_aton(sys.argv[5])) if len(sys.argv) > 5 else "192.168.64.2"
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    for i, f in enumerate(guest_frames(src_mac, gw_mac, me, "192.168.64.1", "198.18.0.2")[:COUNT]):
        if i % 64 == 63:
            time.sleep(0.005)  # a burst, but not one the TAP's own queue must drop
        try:
            s.send(f)
            sent += 1
        except OSError:
            refused += 1
elif mode == "inbound":
    dst, COUNT = sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    for p in inbound_packets(dst)[:COUNT]:
        try:
            s.sendto(p, (dst, 0))
            sent += 1
        except OSError:
            refused += 1
else:
    sys.exit("usage: malformed.py guest|inbound ...")
print("sent=%d refused=%d" % (sent, refused))
