//! Other Unix systems (macOS): a non-blocking pipe as the wake-up event. Type-checked and
//! linted on Linux for the Apple targets; never run on a Mac.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A non-blocking pipe: `notify` writes a byte, `drain` reads them all.
#[derive(Debug)]
pub(crate) struct Event {
    read: OwnedFd,
    write: OwnedFd,
}

impl Event {
    pub(crate) fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe()?;
        for fd in [&read, &write] {
            rustix::io::ioctl_fionbio(fd, true)?;
            rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::CLOEXEC)?;
        }
        Ok(Event { read, write })
    }

    pub(crate) fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.write, &[1]) {
            Ok(_) => Ok(()),
            // The pipe is full: it is notified already.
            Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = rustix::io::read(&self.read, &mut buf) {
            if n < buf.len() {
                break;
            }
        }
    }
}

impl AsFd for Event {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }
}
