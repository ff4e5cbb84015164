//! A message-level relay between the frontend's connection and the vhost-user-backend daemon.
//!
//! Why: QEMU (7.2) sends `SET_VRING_ENABLE` when it resets the device, long before it sends
//! `SET_FEATURES`. The `vhost` crate's request handler (0.18) refuses that message until
//! `VHOST_USER_F_PROTOCOL_FEATURES` has been acked by `SET_FEATURES` and drops the connection, and
//! without that feature QEMU cannot start the device at all ("unable to start vhost net: 22").
//! The relay answers such an early `SET_VRING_ENABLE` itself (the rings stay disabled, which is
//! their state anyway; QEMU enables them again after `SET_FEATURES`) and passes every other message,
//! with its file descriptors, through unchanged.
//!
//! The relay also checks guest memory before the daemon maps it ([`check_memory`]): the
//! `vm-memory` crate maps a `SET_MEM_TABLE` (or `ADD_MEM_REG`) region without looking at its
//! file, and a region that reaches past the end of its file makes every later access to that
//! part raise SIGBUS, which kills the whole daemon. A region must be a regular file (a memfd,
//! a tmpfs or hugetlbfs file) that holds `mmap_offset + memory_size` bytes; otherwise the relay
//! logs an error, answers a failure if the frontend asked for an ack, and closes that
//! connection only (the daemon serves the next frontend).
//!
//! What this does not cover: a frontend that truncates an unsealed file *after* the check.
//! A memfd sealed with `F_SEAL_SHRINK` cannot shrink, so its size checked once holds for good;
//! QEMU's `memory-backend-memfd` seals its memfds so by default (`seal=on`: grow, shrink and
//! seal) and Cloud Hypervisor seals its guest RAM memfds the same way. A `memory-backend-file`
//! (tmpfs, hugetlbfs) cannot be sealed: the daemon logs that the region is not sealed, and a
//! frontend that truncates such a file later can still crash the daemon.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustix::fs::{FileType, SealFlags};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use tracing::{debug, error, info, warn};

/// The two relay threads of one connection.
#[derive(Debug)]
pub(crate) struct Relay {
    threads: [JoinHandle<()>; 2],
}

impl Relay {
    /// Relays between `frontend` (the VMM) and `backend` (our end of the daemon's connection)
    /// until either side closes; then both are shut down.
    pub(crate) fn spawn(frontend: UnixStream, backend: UnixStream) -> io::Result<Self> {
        let to_frontend = Arc::new(Mutex::new(frontend.try_clone()?));
        let f_read = frontend;
        let b_write = backend.try_clone()?;
        let b_read = backend;
        let replies = to_frontend.clone();
        let shut_b = b_write.try_clone()?;
        let a = std::thread::Builder::new()
            .name("vu-relay-in".to_owned())
            .spawn(move || {
                if let Err(e) = frontend_to_backend(&f_read, &b_write, &replies) {
                    debug!("frontend side of the relay ended: {e}");
                }
                let _ = b_write.shutdown(Shutdown::Both);
                let _ = f_read.shutdown(Shutdown::Both);
            })?;
        let b = std::thread::Builder::new()
            .name("vu-relay-out".to_owned())
            .spawn(move || {
                if let Err(e) = backend_to_frontend(&b_read, &to_frontend) {
                    debug!("backend side of the relay ended: {e}");
                }
                let _ = shut_b.shutdown(Shutdown::Both);
                if let Ok(f) = to_frontend.lock() {
                    let _ = f.shutdown(Shutdown::Both);
                }
            })?;
        Ok(Self { threads: [a, b] })
    }

    /// Waits for both relay threads.
    pub(crate) fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Header of a vhost-user message (little-endian `request`, `flags`, `size`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Header {
    request: u32,
    flags: u32,
    size: u32,
}

impl Header {
    fn parse(b: &[u8; HDR_LEN]) -> Self {
        let word = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            request: word(0),
            flags: word(4),
            size: word(8),
        }
    }

    fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut o = [0u8; HDR_LEN];
        o[0..4].copy_from_slice(&self.request.to_le_bytes());
        o[4..8].copy_from_slice(&self.flags.to_le_bytes());
        o[8..12].copy_from_slice(&self.size.to_le_bytes());
        o
    }
}

/// What the relay does with a request from the frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Forward,
    /// Answer locally (an ack of 0 if the frontend asked for one), don't forward.
    Absorb,
}

/// Tracks the protocol state the relay needs: whether `SET_FEATURES` was seen, and the ring
/// enable states it absorbed before that (replayed to the daemon right after `SET_FEATURES`, since
/// QEMU considers them sent and does not repeat them).
#[derive(Debug, Default)]
struct Filter {
    features_set: bool,
    absorbed: [Option<u32>; MAX_RINGS],
}

impl Filter {
    fn on_request(&mut self, h: Header, body: &[u8]) -> Action {
        match h.request {
            SET_FEATURES => {
                self.features_set = true;
                Action::Forward
            }
            SET_VRING_ENABLE if !self.features_set => {
                if let Some((index, num)) = vring_state(body)
                    && let Some(slot) = usize::try_from(index)
                        .ok()
                        .and_then(|i| self.absorbed.get_mut(i))
                {
                    *slot = Some(num);
                }
                Action::Absorb
            }
            _ => Action::Forward,
        }
    }

    /// The `SET_VRING_ENABLE` bodies to send after forwarding `h` (after `SET_FEATURES`: the
    /// absorbed states, once).
    fn replay_after(&mut self, h: Header) -> impl Iterator<Item = [u8; 8]> + '_ {
        let replay = h.request == SET_FEATURES;
        self.absorbed
            .iter_mut()
            .enumerate()
            .filter(move |_| replay)
            .filter_map(|(i, slot)| {
                let num = slot.take()?;
                let mut b = [0u8; 8];
                b[..4].copy_from_slice(&u32::try_from(i).ok()?.to_le_bytes());
                b[4..].copy_from_slice(&num.to_le_bytes());
                Some(b)
            })
    }
}

/// `(index, num)` of a `VhostUserVringState` body.
fn vring_state(body: &[u8]) -> Option<(u32, u32)> {
    let b: &[u8; 8] = body.get(..8)?.try_into().ok()?;
    Some((
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
    ))
}

/// The frontend-to-backend half of the relay: reads the frontend's messages until it closes
/// (`Ok`) or breaks the protocol (`Err`), checks memory tables, absorbs early
/// `SET_VRING_ENABLE`s (answering on `replies` when asked to) and forwards the rest.
pub(crate) fn frontend_to_backend(
    front: &UnixStream,
    back: &UnixStream,
    replies: &Mutex<UnixStream>,
) -> io::Result<()> {
    let mut filter = Filter::default();
    let mut payload = vec![0u8; MAX_PAYLOAD];
    let mut fds: Vec<OwnedFd> = Vec::with_capacity(MAX_FDS);
    loop {
        fds.clear();
        let Some(hdr_bytes) = recv_header(front, &mut fds)? else {
            return Ok(());
        };
        let h = Header::parse(&hdr_bytes);
        let size = usize::try_from(h.size).unwrap_or(usize::MAX);
        let Some(body) = payload.get_mut(..size) else {
            warn!(
                request = h.request,
                size = h.size,
                "frontend sent an oversized message; closing the connection"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "oversized message",
            ));
        };
        read_exact(front, body)?;
        tracing::trace!(
            request = h.request,
            flags = h.flags,
            size = h.size,
            fds = fds.len(),
            "request"
        );
        if let Err(e) = check_memory(h, body, &fds) {
            error!(
                request = h.request,
                "the frontend's guest memory is unusable ({e}); closing the connection"
            );
            ack(replies, h, 1)?;
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        match filter.on_request(h, body) {
            Action::Forward => {
                let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
                let mut space =
                    [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed))
                {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "too many descriptors",
                    ));
                }
                send_all(back, &hdr_bytes, body, &mut control)?;
                if h.request == SET_VRING_KICK
                    && let [kick] = &mut fds[..]
                {
                    prime_kick(kick);
                }
                for state in filter.replay_after(h) {
                    debug!(?state, "replaying an absorbed SET_VRING_ENABLE");
                    let enable = Header {
                        request: SET_VRING_ENABLE,
                        flags: VERSION,
                        size: 8,
                    };
                    let mut none: [MaybeUninit<u8>; 0] = [];
                    send_all(
                        back,
                        &enable.to_bytes(),
                        &state,
                        &mut SendAncillaryBuffer::new(&mut none),
                    )?;
                }
            }
            Action::Absorb => {
                debug!(
                    request = h.request,
                    "absorbed SET_VRING_ENABLE sent before SET_FEATURES"
                );
                ack(replies, h, 0)?;
            }
        }
    }
}

/// Answers request `h` with `status` (0: done) on the frontend's socket, if it asked for a
/// reply (`NEED_REPLY`, the REPLY_ACK protocol feature).
fn ack(replies: &Mutex<UnixStream>, h: Header, status: u64) -> io::Result<()> {
    if h.flags & NEED_REPLY == 0 {
        return Ok(());
    }
    let reply = Header {
        request: h.request,
        flags: VERSION | REPLY,
        size: 8,
    };
    let mut f = replies.lock().unwrap_or_else(PoisonError::into_inner);
    f.write_all(&reply.to_bytes())?;
    f.write_all(&status.to_le_bytes())
}

/// Signals a ring's new kick eventfd once, so the backend looks at the ring as soon as it is
/// started. vhost-user-backend only waits for kicks, but after a daemon restart (QEMU's
/// `reconnect=`) a ring may hold descriptors the guest made available before the new kick fd
/// existed, and with EVENT_IDX the guest kicks again only when it passes the `avail_event` the
/// previous backend published. One spurious look at a ring costs nothing.
fn prime_kick(kick: &mut OwnedFd) {
    let Ok(fd) = kick.try_clone() else {
        return;
    };
    if let Err(e) = std::fs::File::from(fd).write_all(&1u64.to_ne_bytes()) {
        debug!(error = %e, "could not signal a new kick eventfd");
    }
}

/// One guest memory region of a `SET_MEM_TABLE` or `ADD_MEM_REG` message
/// (`VhostUserMemoryRegion`: four little-endian u64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    guest_phys_addr: u64,
    memory_size: u64,
    mmap_offset: u64,
}

impl Region {
    fn parse(b: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            let w: [u8; 8] = b.get(i..i + 8)?.try_into().ok()?;
            Some(u64::from_le_bytes(w))
        };
        Some(Self {
            guest_phys_addr: word(0)?,
            memory_size: word(8)?,
            // word(16) is the frontend's own address of the region: not ours to check.
            mmap_offset: word(24)?,
        })
    }
}

/// The regions a message asks the daemon to map: those of `SET_MEM_TABLE` (a count, padding,
/// then the regions) or the one of `ADD_MEM_REG` (padding, then the region); `None` for any
/// other message. A body too short for what it announces is an error.
fn memory_regions(h: Header, body: &[u8]) -> Option<Result<Vec<Region>, String>> {
    let regions = match h.request {
        SET_MEM_TABLE => {
            let count: [u8; 4] = match body.get(..4).and_then(|b| b.try_into().ok()) {
                Some(c) => c,
                None => return Some(Err("a memory table without a region count".to_owned())),
            };
            let count = u32::from_le_bytes(count);
            if count > MAX_MEM_REGIONS {
                return Some(Err(format!(
                    "{count} memory regions (at most {MAX_MEM_REGIONS})"
                )));
            }
            (0..count as usize)
                .map(|i| body.get(8 + i * REGION_LEN..8 + (i + 1) * REGION_LEN))
                .map(|b| b.and_then(Region::parse))
                .collect::<Option<Vec<_>>>()
        }
        ADD_MEM_REG => body
            .get(8..8 + REGION_LEN)
            .and_then(Region::parse)
            .map(|r| vec![r]),
        _ => return None,
    };
    Some(regions.ok_or_else(|| "a memory table shorter than its regions".to_owned()))
}

/// Checks each memory region a message brings against the file descriptor sent with it: a
/// regular file (memfd, tmpfs or hugetlbfs file; QEMU and Cloud Hypervisor send nothing
/// else) whose size covers `mmap_offset + memory_size`. Regions whose file is not sealed
/// against shrinking are logged (a later truncation would still raise SIGBUS). Other
/// messages pass. System calls: `fstat` and `fcntl(F_GET_SEALS)` per region.
fn check_memory(h: Header, body: &[u8], fds: &[OwnedFd]) -> Result<(), String> {
    let Some(regions) = memory_regions(h, body) else {
        return Ok(());
    };
    let regions = regions?;
    if fds.len() != regions.len() {
        return Err(format!(
            "{} memory regions with {} file descriptors",
            regions.len(),
            fds.len()
        ));
    }
    for (i, (r, fd)) in regions.iter().zip(fds).enumerate() {
        let st = rustix::fs::fstat(fd).map_err(|e| format!("region {i}: fstat: {e}"))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(format!(
                "region {i} is backed by a {kind:?}, not a regular file or memfd"
            ));
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let end = r
            .mmap_offset
            .checked_add(r.memory_size)
            .ok_or_else(|| format!("region {i}: offset + size overflows"))?;
        if end > size {
            return Err(format!(
                "region {i} (guest {:#x}, {} bytes at file offset {:#x}) reaches past the end of its {size}-byte file",
                r.guest_phys_addr, r.memory_size, r.mmap_offset
            ));
        }
        // EINVAL: a file that cannot carry seals (hugetlbfs, tmpfs opened by path).
        let sealed = rustix::fs::fcntl_get_seals(fd).is_ok_and(|s| s.contains(SealFlags::SHRINK));
        if sealed {
            debug!(
                region = i,
                "guest memory region checked; sealed against shrinking"
            );
        } else {
            info!(
                region = i,
                "guest memory region checked; its file is not sealed against shrinking (a \
                 frontend that truncates it later can still crash the daemon)"
            );
        }
    }
    Ok(())
}

fn backend_to_frontend(back: &UnixStream, front: &Mutex<UnixStream>) -> io::Result<()> {
    let mut payload = vec![0u8; MAX_PAYLOAD];
    let mut r = back;
    loop {
        let mut hdr = [0u8; HDR_LEN];
        match r.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let h = Header::parse(&hdr);
        let size = usize::try_from(h.size).unwrap_or(usize::MAX);
        let body = payload
            .get_mut(..size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "oversized reply"))?;
        r.read_exact(body)?;
        let mut f = front.lock().unwrap_or_else(PoisonError::into_inner);
        f.write_all(&hdr)?;
        f.write_all(body)?;
    }
}

/// Receives a 12-byte header and the descriptors sent with it; `None` at end of stream.
fn recv_header(sock: &UnixStream, fds: &mut Vec<OwnedFd>) -> io::Result<Option<[u8; HDR_LEN]>> {
    let mut hdr = [0u8; HDR_LEN];
    let mut got = 0;
    while got < HDR_LEN {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = {
            let mut iov = [IoSliceMut::new(&mut hdr[got..])];
            match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => m.bytes,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if n == 0 {
            if got == 0 {
                return Ok(None);
            }
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "truncated header",
            ));
        }
        got += n;
    }
    if fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors",
        ));
    }
    Ok(Some(hdr))
}

fn read_exact(mut sock: &UnixStream, buf: &mut [u8]) -> io::Result<()> {
    sock.read_exact(buf)
}

/// Sends header + body (+ descriptors with the first bytes).
fn send_all(
    sock: &UnixStream,
    hdr: &[u8],
    body: &[u8],
    control: &mut SendAncillaryBuffer<'_, '_, '_>,
) -> io::Result<()> {
    let total = hdr.len() + body.len();
    let mut sent = loop {
        let iov = [IoSlice::new(hdr), IoSlice::new(body)];
        match rustix::net::sendmsg(sock, &iov, control, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    // Whatever is left goes without descriptors.
    let mut w = sock;
    while sent < total {
        let rest = if sent < hdr.len() {
            w.write(&hdr[sent..])?
        } else {
            w.write(&body[sent - hdr.len()..])?
        };
        if rest == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "backend closed"));
        }
        sent += rest;
    }
    Ok(())
}

const HDR_LEN: usize = 12;
/// Largest payload accepted (the vhost crate's own limit is 4096 plus a memory table).
const MAX_PAYLOAD: usize = 0x1000 + 8 * 32 + 8;
/// The most descriptors one message may carry (SET_MEM_TABLE: one per region, at most 8; we
/// allow the vhost crate's limit of 32 so it can refuse them itself).
const MAX_FDS: usize = 32;
/// Rings whose early enable state is remembered (two per queue pair, up to `--queues 4`; the
/// control queue's is never enabled by a frontend that answers it itself).
const MAX_RINGS: usize = 8;
const SET_FEATURES: u32 = 2;
const SET_VRING_KICK: u32 = 12;
const SET_MEM_TABLE: u32 = 5;
const ADD_MEM_REG: u32 = 37;
/// Bytes of one `VhostUserMemoryRegion`.
const REGION_LEN: usize = 32;
/// Regions a `SET_MEM_TABLE` may hold (the vhost-user limit; the `vhost` crate's too).
const MAX_MEM_REGIONS: u32 = 8;
const SET_VRING_ENABLE: u32 = 18;
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
const NEED_REPLY: u32 = 0x8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_vring_enable_is_absorbed_later_ones_pass() {
        let mut f = Filter::default();
        let h = |request| Header {
            request,
            flags: VERSION,
            size: 8,
        };
        let enable = |index: u32, num: u32| {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&index.to_le_bytes());
            b[4..].copy_from_slice(&num.to_le_bytes());
            b
        };
        assert_eq!(
            f.on_request(h(SET_VRING_ENABLE), &enable(0, 1)),
            Action::Absorb
        );
        assert_eq!(
            f.on_request(h(SET_VRING_ENABLE), &enable(1, 0)),
            Action::Absorb
        );
        assert_eq!(
            f.on_request(h(SET_VRING_ENABLE), &enable(1, 1)),
            Action::Absorb
        );
        assert_eq!(
            f.on_request(h(SET_VRING_ENABLE), &enable(99, 1)),
            Action::Absorb
        );
        assert_eq!(f.on_request(h(SET_VRING_ENABLE), &[1]), Action::Absorb);
        assert_eq!(f.on_request(h(1), &[]), Action::Forward);
        assert_eq!(f.replay_after(h(1)).count(), 0);
        assert_eq!(f.on_request(h(SET_FEATURES), &[0; 8]), Action::Forward);
        let replayed: Vec<_> = f.replay_after(h(SET_FEATURES)).collect();
        assert_eq!(
            replayed,
            [enable(0, 1), enable(1, 1)],
            "latest state per ring, in order"
        );
        assert_eq!(f.replay_after(h(SET_FEATURES)).count(), 0, "replayed once");
        assert_eq!(
            f.on_request(h(SET_VRING_ENABLE), &enable(0, 0)),
            Action::Forward
        );
    }

    /// A `SET_MEM_TABLE` body with `regions` as (size, offset).
    fn mem_table(regions: &[(u64, u64)]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&u32::try_from(regions.len()).unwrap().to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        for (i, (size, offset)) in regions.iter().enumerate() {
            b.extend_from_slice(&(i as u64 * 0x1000_0000).to_le_bytes());
            b.extend_from_slice(&size.to_le_bytes());
            b.extend_from_slice(&0x7000_0000u64.to_le_bytes());
            b.extend_from_slice(&offset.to_le_bytes());
        }
        b
    }

    fn memfd(len: u64, seals: SealFlags) -> OwnedFd {
        use rustix::fs::{MemfdFlags, fcntl_add_seals, ftruncate, memfd_create};
        let fd = memfd_create(
            "proxy-test",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )
        .unwrap();
        ftruncate(&fd, len).unwrap();
        fcntl_add_seals(&fd, seals).unwrap();
        fd
    }

    #[test]
    fn memory_regions_must_fit_their_files() {
        let h = Header {
            request: SET_MEM_TABLE,
            flags: VERSION,
            size: 0,
        };
        let big = memfd(1 << 20, SealFlags::SHRINK | SealFlags::GROW);
        let small = memfd(4096, SealFlags::empty());
        // Fits (sealed or not), at an offset too.
        assert_eq!(check_memory(h, &mem_table(&[(1 << 20, 0)]), &[big]), Ok(()));
        let big = memfd(1 << 20, SealFlags::empty());
        assert_eq!(
            check_memory(h, &mem_table(&[(1 << 19, 1 << 19)]), &[big]),
            Ok(())
        );
        // One byte past the end of the file.
        let big = memfd(1 << 20, SealFlags::empty());
        let e = check_memory(h, &mem_table(&[(1 << 19, (1 << 19) + 1)]), &[big]).unwrap_err();
        assert!(e.contains("past the end of its 1048576-byte file"), "{e}");
        // The second of two regions is short.
        let big = memfd(1 << 20, SealFlags::empty());
        let e =
            check_memory(h, &mem_table(&[(1 << 20, 0), (1 << 20, 0)]), &[big, small]).unwrap_err();
        assert!(e.starts_with("region 1 "), "{e}");
        // Offset + size wraps.
        let big = memfd(1 << 20, SealFlags::empty());
        assert!(check_memory(h, &mem_table(&[(u64::MAX, 2)]), &[big]).is_err());
        // Not a regular file.
        let (pipe_r, _w) = std::io::pipe().unwrap();
        let e = check_memory(h, &mem_table(&[(4096, 0)]), &[pipe_r.into()]).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        // Descriptors and regions must pair up; the table must hold what it announces.
        assert!(check_memory(h, &mem_table(&[(4096, 0)]), &[]).is_err());
        let mut short = mem_table(&[(4096, 0)]);
        short.truncate(20);
        assert!(check_memory(h, &short, &[memfd(4096, SealFlags::empty())]).is_err());
        assert!(check_memory(h, &[], &[]).is_err());
        let mut many = mem_table(&[]);
        many[..4].copy_from_slice(&9u32.to_le_bytes());
        assert!(check_memory(h, &many, &[]).is_err());
        // ADD_MEM_REG: padding, then one region.
        let add = Header {
            request: ADD_MEM_REG,
            ..h
        };
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&mem_table(&[(8192, 0)])[8..]);
        let e = check_memory(add, &body, &[memfd(4096, SealFlags::empty())]).unwrap_err();
        assert!(e.contains("past the end"), "{e}");
        assert_eq!(
            check_memory(add, &body, &[memfd(8192, SealFlags::empty())]),
            Ok(())
        );
        // Other messages pass untouched.
        let other = Header { request: 1, ..h };
        assert_eq!(check_memory(other, &[], &[]), Ok(()));
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            request: 18,
            flags: VERSION | NEED_REPLY,
            size: 8,
        };
        assert_eq!(Header::parse(&h.to_bytes()), h);
        assert_eq!(h.to_bytes()[..4], [18, 0, 0, 0]);
    }

    #[test]
    fn relays_messages_with_descriptors_and_answers_early_enable() {
        let (vmm, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = Relay::spawn(front, back).unwrap();
        let mut vmm_w = vmm.try_clone().unwrap();
        // Early SET_VRING_ENABLE with NEED_REPLY: answered by the relay with 0.
        let early = Header {
            request: SET_VRING_ENABLE,
            flags: VERSION | NEED_REPLY,
            size: 8,
        };
        vmm_w.write_all(&early.to_bytes()).unwrap();
        vmm_w.write_all(&[0, 0, 0, 0, 1, 0, 0, 0]).unwrap();
        let mut reply = [0u8; HDR_LEN + 8];
        (&vmm).read_exact(&mut reply).unwrap();
        let rh = Header::parse(reply[..HDR_LEN].try_into().unwrap());
        assert_eq!(
            (rh.request, rh.flags, rh.size),
            (SET_VRING_ENABLE, VERSION | REPLY, 8)
        );
        assert_eq!(reply[HDR_LEN..], [0; 8]);
        // A message with a descriptor reaches the daemon side with its descriptor.
        let (pipe_r, _pipe_w) = std::io::pipe().unwrap();
        let msg = Header {
            request: 12, // SET_VRING_KICK
            flags: VERSION,
            size: 4,
        };
        let borrowed = [pipe_r.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        send_all(&vmm, &msg.to_bytes(), &[1, 2, 3, 4], &mut control).unwrap();
        let mut fds = Vec::new();
        let got = recv_header(&daemon, &mut fds).unwrap().unwrap();
        assert_eq!(Header::parse(&got), msg);
        assert_eq!(fds.len(), 1);
        let mut body = [0u8; 4];
        (&daemon).read_exact(&mut body).unwrap();
        assert_eq!(body, [1, 2, 3, 4]);
        // A reply from the daemon side reaches the VMM.
        let r = Header {
            request: 1,
            flags: VERSION | REPLY,
            size: 8,
        };
        (&daemon).write_all(&r.to_bytes()).unwrap();
        (&daemon).write_all(&7u64.to_le_bytes()).unwrap();
        let mut back_reply = [0u8; HDR_LEN + 8];
        (&vmm).read_exact(&mut back_reply).unwrap();
        assert_eq!(back_reply[HDR_LEN..], 7u64.to_le_bytes());
        // The VMM hangs up: both relay threads end.
        drop(vmm_w);
        vmm.shutdown(Shutdown::Both).unwrap();
        relay.join();
    }

    /// A memory table whose region is larger than its memfd never reaches the daemon side:
    /// the frontend gets a failure ack and the connection closes.
    #[test]
    fn a_short_memory_region_closes_the_relay() {
        let (vmm, front) = UnixStream::pair().unwrap();
        let (back, daemon) = UnixStream::pair().unwrap();
        let relay = Relay::spawn(front, back).unwrap();
        let body = mem_table(&[(1 << 20, 0)]);
        let msg = Header {
            request: SET_MEM_TABLE,
            flags: VERSION | NEED_REPLY,
            size: u32::try_from(body.len()).unwrap(),
        };
        let fd = memfd(4096, SealFlags::empty());
        let borrowed = [fd.as_fd()];
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        assert!(control.push(SendAncillaryMessage::ScmRights(&borrowed)));
        send_all(&vmm, &msg.to_bytes(), &body, &mut control).unwrap();
        let mut reply = [0u8; HDR_LEN + 8];
        (&vmm).read_exact(&mut reply).unwrap();
        assert_eq!(reply[HDR_LEN..], 1u64.to_le_bytes(), "a failure ack");
        let mut rest = Vec::new();
        (&vmm).read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "then the connection closes");
        let mut fds = Vec::new();
        assert_eq!(
            recv_header(&daemon, &mut fds).unwrap(),
            None,
            "nothing reached the daemon"
        );
        relay.join();
    }
}
