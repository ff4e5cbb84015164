//! The vhost-user message path into hostnetd: a hostile frontend's byte stream, with file
//! descriptors attached, through the relay that sits between the frontend and the daemon
//! (`hostnetd::fuzzing::relay_frontend_messages`). Records build messages: raw bytes (broken
//! headers, truncated bodies), memory tables (`SET_MEM_TABLE`, `ADD_MEM_REG`) whose regions
//! and memfds (size, seals, count) come from the input, early and late `SET_VRING_ENABLE`,
//! `SET_FEATURES`, `SET_VRING_KICK` with or without an eventfd, any other request with any
//! size. Never a panic or a hang; and what the relay forwards to the daemon is a well-framed
//! message stream in which every memory region fits the file sent with it (the daemon maps
//! what passes: a region past its file's end would SIGBUS it).
//!
//! Input: a sequence of `[kind, bytes...]` records (each consumes what it needs).
#![no_main]

use std::io::{IoSlice, IoSliceMut, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

const SET_FEATURES: u32 = 2;
const SET_MEM_TABLE: u32 = 5;
const SET_VRING_KICK: u32 = 12;
const SET_VRING_ENABLE: u32 = 18;
const ADD_MEM_REG: u32 = 37;
const VERSION: u32 = 1;
const NEED_REPLY: u32 = 8;
const HDR_LEN: usize = 12;
const REGION_LEN: usize = 32;
const PAGE: u64 = 4096;

fuzz_target!(|input: &[u8]| {
    let Ok((front_ours, front_relay)) = UnixStream::pair() else {
        return;
    };
    let Ok((back_relay, back_daemon)) = UnixStream::pair() else {
        return;
    };
    // Whatever is sent is sent before the relay runs: stop where the socket buffer is full
    // rather than block.
    if front_ours.set_nonblocking(true).is_err() {
        return;
    }
    let mut rest = input;
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let (msg, fds) = build(kind, &mut rest);
        if send_with_fds(&front_ours, &msg, &fds).is_err() {
            break;
        }
    }
    let _ = front_ours.shutdown(Shutdown::Write);
    let Ok(replies) = front_relay.try_clone() else {
        return;
    };
    // The daemon's side and the frontend's replies are read while the relay runs, so it never
    // waits on a full socket.
    let checker = std::thread::spawn(move || check_forwarded(&back_daemon));
    let drain = std::thread::spawn(move || {
        let _ = std::io::copy(&mut &front_ours, &mut std::io::sink());
    });
    let _ = hostnetd::fuzzing::relay_frontend_messages(&front_relay, &back_relay, replies);
    let _ = back_relay.shutdown(Shutdown::Both);
    let _ = front_relay.shutdown(Shutdown::Both);
    if let Err(panic) = checker.join() {
        std::panic::resume_unwind(panic);
    }
    let _ = drain.join();
});

/// One message (header and body) and the descriptors sent with it.
fn build(kind: u8, rest: &mut &[u8]) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut fds = Vec::new();
    let msg = match kind % 8 {
        // Raw bytes: broken headers, truncated bodies, anything.
        0 => {
            let n = usize::from(take_u8(rest));
            take(rest, n).to_vec()
        }
        1 => {
            // A memory table: a forged count, regions and memfds from the input.
            let count = u32::from(take_u8(rest) % 10);
            let regions = (take_u8(rest) % 4) as usize;
            let mut body = count.to_le_bytes().to_vec();
            body.extend_from_slice(&[0; 4]);
            for _ in 0..regions {
                body.extend_from_slice(&region(rest, &mut fds));
            }
            if take_u8(rest) % 8 == 0 {
                fds.pop(); // one descriptor fewer than regions
            }
            message(SET_MEM_TABLE, take_u8(rest) as u32 & NEED_REPLY, &body)
        }
        2 => {
            let mut body = vec![0u8; 8];
            body.extend_from_slice(&region(rest, &mut fds));
            message(ADD_MEM_REG, take_u8(rest) as u32 & NEED_REPLY, &body)
        }
        3 => {
            let mut body = u32::from(take_u8(rest) % 10).to_le_bytes().to_vec();
            body.extend_from_slice(&u32::from(take_u8(rest) & 1).to_le_bytes());
            let size = body.len() - usize::from(take_u8(rest) % 9); // sometimes short
            message(
                SET_VRING_ENABLE,
                take_u8(rest) as u32 & NEED_REPLY,
                &body[..size],
            )
        }
        4 => message(SET_FEATURES, 0, take(rest, 8)),
        5 => {
            let b = take_u8(rest);
            if b & 1 == 0
                && let Ok(fd) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            {
                fds.push(fd);
            }
            let mut body = u64::from(b % 4).to_le_bytes();
            if b & 2 != 0 {
                body[1] = 1; // VHOST_USER_VRING_NOFD_MASK
            }
            message(SET_VRING_KICK, 0, &body)
        }
        // Any other request, any announced size (oversized ones end the relay).
        _ => {
            let request = u32::from(take_u8(rest));
            let size = u32::from(take_u8(rest)) << (take_u8(rest) % 8);
            let body = take(rest, size.min(512) as usize).to_vec();
            let mut m = header(request, VERSION, size).to_vec();
            m.extend_from_slice(&body);
            m
        }
    };
    (msg, fds)
}

/// One `VhostUserMemoryRegion` (guest address, size, frontend address, file offset) and its
/// memfd (size and seals from the input).
fn region(rest: &mut &[u8], fds: &mut Vec<OwnedFd>) -> [u8; REGION_LEN] {
    let pages = u64::from(take_u8(rest) % 65);
    let file_pages = u64::from(take_u8(rest) % 65);
    let offset = match take_u8(rest) % 4 {
        0 => 0,
        1 => PAGE,
        2 => u64::MAX - PAGE, // offset + size overflows
        _ => u64::from(take_u8(rest)) * PAGE,
    };
    let seal = take_u8(rest) & 1 != 0;
    let mut r = [0u8; REGION_LEN];
    r[0..8].copy_from_slice(&(u64::from(take_u8(rest)) << 20).to_le_bytes());
    r[8..16].copy_from_slice(&(pages * PAGE).to_le_bytes());
    r[16..24].copy_from_slice(&0x7f00_0000_0000u64.to_le_bytes());
    r[24..32].copy_from_slice(&offset.to_le_bytes());
    if let Some(fd) = memfd(file_pages * PAGE, seal) {
        fds.push(fd);
    }
    r
}

fn memfd(size: u64, seal: bool) -> Option<OwnedFd> {
    let fd = rustix::fs::memfd_create(
        "hostnet-fuzz",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )
    .ok()?;
    rustix::fs::ftruncate(&fd, size).ok()?;
    if seal {
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW).ok()?;
    }
    Some(fd)
}

fn header(request: u32, flags: u32, size: u32) -> [u8; HDR_LEN] {
    let mut h = [0u8; HDR_LEN];
    h[0..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&size.to_le_bytes());
    h
}

fn message(request: u32, flags: u32, body: &[u8]) -> Vec<u8> {
    let size = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut m = header(request, VERSION | flags, size).to_vec();
    m.extend_from_slice(body);
    m
}

fn send_with_fds(sock: &UnixStream, msg: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
    if fds.is_empty() || msg.is_empty() {
        let mut s = sock;
        return s.write_all(msg);
    }
    let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(std::io::Error::other("too many descriptors"));
    }
    let n = rustix::net::sendmsg(sock, &[IoSlice::new(msg)], &mut control, SendFlags::empty())?;
    let mut s = sock;
    // On a full buffer (WouldBlock) the rest never goes: a truncated message, which the relay
    // must survive too.
    s.write_all(&msg[n..])
}

/// Reads everything the relay forwarded: it must parse as whole messages, and every memory
/// region in it must fit the file sent with it.
fn check_forwarded(sock: &UnixStream) {
    loop {
        // A message's descriptors come with its header (the relay sends each message with one
        // sendmsg), so read headers on their own.
        let mut fds: Vec<OwnedFd> = Vec::new();
        let mut hdr = [0u8; HDR_LEN];
        let got = recv_exact(sock, &mut hdr, &mut fds);
        if got == 0 {
            return;
        }
        assert_eq!(got, HDR_LEN, "a truncated header was forwarded");
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (request, size) = (word(0), word(8) as usize);
        let mut body = vec![0u8; size];
        assert_eq!(
            recv_exact(sock, &mut body, &mut fds),
            size,
            "a truncated body was forwarded"
        );
        let regions: Vec<&[u8]> = match request {
            SET_MEM_TABLE => {
                let count = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
                (0..count)
                    .map(|i| &body[8 + i * REGION_LEN..8 + (i + 1) * REGION_LEN])
                    .collect()
            }
            ADD_MEM_REG => vec![&body[8..8 + REGION_LEN]],
            _ => continue,
        };
        assert_eq!(regions.len(), fds.len(), "regions and descriptors differ");
        for (r, fd) in regions.iter().zip(&fds) {
            let q = |i: usize| u64::from_le_bytes(r[i..i + 8].try_into().unwrap());
            let (size, offset) = (q(8), q(24));
            let file = rustix::fs::fstat(fd).expect("fstat").st_size as u64;
            let end = offset
                .checked_add(size)
                .expect("forwarded an overflowing region");
            assert!(
                end <= file,
                "forwarded a region past its file: {end} > {file}"
            );
        }
    }
}

/// Reads `buf.len()` bytes (fewer only at the end of the stream), collecting descriptors.
fn recv_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(32))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = match rustix::net::recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m.bytes,
            Err(e) => panic!("reading what the relay forwarded: {e}"),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if n == 0 {
            break;
        }
        got += n;
    }
    got
}

fn take_u8(rest: &mut &[u8]) -> u8 {
    take(rest, 1).first().copied().unwrap_or(0)
}

fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = rest.split_at(n.min(rest.len()));
    *rest = b;
    a
}
