//! Small helpers shared by the Unix backends: errno conversion, fd flags, poll.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    time::Duration,
};

/// Turns a `-1` return into the current `errno`.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Turns a negative `ssize_t` return into the current `errno`.
pub(crate) fn cvt_size(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

/// Writes `prefix`, `head` and the guest-memory slices of `tail` as one packet: one `writev`
/// (see [`crate::Tun::send_gather`]). Returns the bytes written, `prefix` included.
#[cfg(feature = "vm-memory")]
pub(crate) fn writev_gather<B: vm_memory::bitmap::BitmapSlice>(
    fd: BorrowedFd<'_>,
    prefix: &[u8],
    head: &[u8],
    tail: &[vm_memory::VolatileSlice<'_, B>],
) -> io::Result<usize> {
    check_gather(tail.len())?;
    // The guards keep each slice's memory mapped (and readable) across the call.
    let guards: [Option<vm_memory::volatile_memory::PtrGuard>; crate::MAX_GATHER] =
        std::array::from_fn(|i| tail.get(i).map(|s| s.ptr_guard()));
    let (iov, n) = iovecs(
        [
            (prefix.as_ptr().cast_mut(), prefix.len()),
            (head.as_ptr().cast_mut(), head.len()),
        ],
        guards
            .iter()
            .flatten()
            .map(|g| (g.as_ptr().cast_mut(), g.len())),
    );
    let count = libc::c_int::try_from(n).unwrap_or(libc::c_int::MAX);
    // The first `n` iovecs describe `prefix`, `head` (borrowed for the whole call) and the
    // guest-memory slices of `tail` (the `VolatileSlice` invariant, while `guards` lives).
    // SAFETY: each is valid for reads of its length across the call, which only reads
    // through them; `fd` is an open descriptor the caller borrows to us.
    let ret = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), count) };
    cvt_size(ret)
}

/// Runs `read` (one `readv`-like call, given iovecs describing `prefix`, `head` and the
/// guest-memory slices of `tail`, in that order, each valid for writes for the whole call)
/// and marks in each slice's dirty bitmap the bytes the call stored there (every byte if it
/// failed: a partial read cannot be ruled out), as vm-memory's own reads do. Returns the
/// bytes read, `prefix` included (see [`crate::Tun::recv_scatter`]).
#[cfg(feature = "vm-memory")]
pub(crate) fn readv_scatter<B: vm_memory::bitmap::BitmapSlice>(
    prefix: &mut [u8],
    head: &mut [u8],
    tail: &[vm_memory::VolatileSlice<'_, B>],
    read: impl FnOnce(&[libc::iovec]) -> isize,
) -> io::Result<usize> {
    check_gather(tail.len())?;
    let before = prefix.len() + head.len();
    let guards: [Option<vm_memory::volatile_memory::PtrGuardMut>; crate::MAX_GATHER] =
        std::array::from_fn(|i| tail.get(i).map(|s| s.ptr_guard_mut()));
    let (iov, n) = iovecs(
        [
            (prefix.as_mut_ptr(), prefix.len()),
            (head.as_mut_ptr(), head.len()),
        ],
        guards.iter().flatten().map(|g| (g.as_ptr(), g.len())),
    );
    let got = cvt_size(read(&iov[..n]));
    let mut left = match &got {
        Ok(got) => got.saturating_sub(before),
        Err(_) => usize::MAX,
    };
    for s in tail {
        let k = left.min(s.len());
        if k > 0 {
            s.bitmap().mark_dirty(0, k);
        }
        left -= k;
    }
    got
}

/// At most [`crate::MAX_GATHER`] guest-memory slices per packet.
#[cfg(feature = "vm-memory")]
fn check_gather(slices: usize) -> io::Result<()> {
    if slices > crate::MAX_GATHER {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "more guest-memory slices than MAX_GATHER",
        ));
    }
    Ok(())
}

/// The iovecs of one packet: the two buffers in `first` that are not empty, then `rest`
/// (at most [`crate::MAX_GATHER`]); and how many there are.
#[cfg(feature = "vm-memory")]
fn iovecs(
    first: [(*mut u8, usize); 2],
    rest: impl Iterator<Item = (*mut u8, usize)>,
) -> ([libc::iovec; crate::MAX_GATHER + 2], usize) {
    let none = libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    };
    let mut iov = [none; crate::MAX_GATHER + 2];
    let mut n = 0;
    let parts = first.into_iter().filter(|&(_, len)| len > 0).chain(rest);
    for (slot, (base, len)) in iov.iter_mut().zip(parts) {
        *slot = libc::iovec {
            iov_base: base.cast(),
            iov_len: len,
        };
        n += 1;
    }
    (iov, n)
}

/// A new socket, close-on-exec, owned.
pub(crate) fn socket(
    domain: libc::c_int,
    ty: libc::c_int,
    proto: libc::c_int,
) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; no memory is passed.
    let fd = cvt(unsafe { libc::socket(domain, ty, proto) })?;
    // SAFETY: `fd` was just returned by socket(2), is open and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    set_cloexec(fd.as_fd())?;
    Ok(fd)
}

/// Sets or clears `O_NONBLOCK`.
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no pointer argument; `fd` is a valid open descriptor.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: F_SETFL takes an integer argument; `fd` is a valid open descriptor.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(())
}

/// Waits until `fd` is readable or `timeout` passes (`None`: forever). Returns whether it
/// is readable (or has an error/hang-up pending, which the next read reports).
pub(crate) fn poll_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = match timeout {
        None => -1,
        Some(t) => libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX),
    };
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `pfd` is one initialised pollfd that lives across the call; nfds = 1.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, ms) })?;
    Ok(n > 0 && pfd.revents != 0)
}

fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: F_SETFD takes an integer argument; `fd` is a valid open descriptor.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonblocking_flag_toggles_and_poll_times_out() -> io::Result<()> {
        let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        set_nonblocking(s.as_fd(), true)?;
        // SAFETY: F_GETFL takes no pointer argument; `s` is open.
        let flags = cvt(unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) })?;
        assert_ne!(flags & libc::O_NONBLOCK, 0);
        set_nonblocking(s.as_fd(), false)?;
        // SAFETY: as above.
        let flags = cvt(unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) })?;
        assert_eq!(flags & libc::O_NONBLOCK, 0);
        assert!(!poll_readable(s.as_fd(), Some(Duration::from_millis(1)))?);
        Ok(())
    }

    #[test]
    fn cvt_maps_minus_one_to_errno() {
        assert_eq!(cvt(3).ok(), Some(3));
        assert_eq!(cvt_size(7).ok(), Some(7));
        // SAFETY: closing an invalid descriptor only sets errno.
        let r = cvt(unsafe { libc::close(-1) });
        assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EBADF));
    }
}
