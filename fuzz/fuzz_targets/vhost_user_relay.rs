//! The vhost-user message path into hostnetd: a hostile frontend's byte stream, with file
//! descriptors attached, through the relay that sits between the frontend and the daemon
//! (`hostnetd::fuzzing::relay_frontend_messages`). Records build messages: raw bytes (broken
//! headers, truncated bodies), memory tables (`SET_MEM_TABLE`, `ADD_MEM_REG`) whose regions
//! and memfds (size, seals, count) come from the input, early and late `SET_VRING_ENABLE`,
//! `SET_FEATURES`, `SET_VRING_KICK`/`_CALL`/`_ERR` with or without an eventfd, known requests
//! with well-sized bodies, any other request with any size (`common/frontend.rs`). Never a
//! panic or a hang; and what the relay forwards to the daemon is a well-framed message stream
//! in which every memory region fits the file sent with it (the daemon maps what passes: a
//! region past its file's end would SIGBUS it).
//!
//! Input: a sequence of `[kind, bytes...]` records (each consumes what it needs).
#![no_main]

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

#[path = "common/frontend.rs"]
mod frontend;

use frontend::{ADD_MEM_REG, HDR_LEN, REGION_LEN, SET_MEM_TABLE, build, send_with_fds};

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
