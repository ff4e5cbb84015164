//! A hostile vhost-user frontend's messages, built from fuzz input (shared by the
//! `vhost_user_relay` and `vhost_user_backend` targets): each record is `[kind, bytes...]` and
//! consumes what it needs.

use std::io::{IoSlice, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

pub const SET_FEATURES: u32 = 2;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_ENABLE: u32 = 18;
pub const ADD_MEM_REG: u32 = 37;
pub const VERSION: u32 = 1;
pub const NEED_REPLY: u32 = 8;
pub const HDR_LEN: usize = 12;
pub const REGION_LEN: usize = 32;
const PAGE: u64 = 4096;

/// Requests with their exact body sizes, so that well-formed sessions (features, memory,
/// rings, kicks) are easy to reach: `(request, body size)`.
const WELL_FORMED: [(u32, usize); 18] = [
    (1, 0),   // GET_FEATURES
    (2, 8),   // SET_FEATURES
    (3, 0),   // SET_OWNER
    (4, 0),   // RESET_OWNER
    (8, 8),   // SET_VRING_NUM
    (9, 40),  // SET_VRING_ADDR
    (10, 8),  // SET_VRING_BASE
    (11, 8),  // GET_VRING_BASE
    (15, 0),  // GET_PROTOCOL_FEATURES
    (16, 8),  // SET_PROTOCOL_FEATURES
    (17, 0),  // GET_QUEUE_NUM
    (18, 8),  // SET_VRING_ENABLE
    (24, 24), // GET_CONFIG (offset, size, flags, 12 bytes of payload)
    (25, 24), // SET_CONFIG
    (34, 0),  // RESET_DEVICE
    (36, 0),  // GET_MAX_MEM_SLOTS
    (38, 40), // REM_MEM_REG
    (40, 8),  // GET_STATUS / SET_STATUS
];

/// One message (header and body) and the descriptors sent with it.
pub fn build(kind: u8, rest: &mut &[u8]) -> (Vec<u8>, Vec<OwnedFd>) {
    let mut fds = Vec::new();
    let msg = match kind % 10 {
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
            // SET_VRING_KICK, _CALL or _ERR, with or without an eventfd.
            let request = SET_VRING_KICK + u32::from(take_u8(rest) % 3);
            let b = take_u8(rest);
            if b & 1 == 0
                && let Ok(fd) = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            {
                fds.push(fd);
            }
            // Rings 0 to 7: a pair's, the control queue of two pairs (4), beyond.
            let mut body = u64::from(b % 8).to_le_bytes();
            if b & 2 != 0 {
                body[1] = 1; // VHOST_USER_VRING_NOFD_MASK
            }
            message(request, 0, &body)
        }
        6 | 7 => {
            // A known request, its body the right size, bytes from the input.
            let (request, size) = WELL_FORMED[usize::from(take_u8(rest)) % WELL_FORMED.len()];
            let mut body = take(rest, size).to_vec();
            body.resize(size, 0);
            message(request, take_u8(rest) as u32 & NEED_REPLY, &body)
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
/// memfd (size, seals and some contents from the input).
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
    // Some contents (rings, descriptors, frames) at a page the input picks.
    let fill_len = usize::from(take_u8(rest));
    let fill = take(rest, fill_len);
    let at = u64::from(take_u8(rest)) % file_pages.max(1) * PAGE;
    if let Some(fd) = memfd(file_pages * PAGE, seal) {
        if !fill.is_empty() {
            let _ = rustix::io::pwrite(&fd, fill, at);
        }
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

pub fn send_with_fds(sock: &UnixStream, msg: &[u8], fds: &[OwnedFd]) -> std::io::Result<()> {
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

pub fn take_u8(rest: &mut &[u8]) -> u8 {
    take(rest, 1).first().copied().unwrap_or(0)
}

pub fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (a, b) = rest.split_at(n.min(rest.len()));
    *rest = b;
    a
}
