//! Fallback backend for operating systems without a TUN implementation here: `open` fails
//! with [`OpenError::Unsupported`], so no `Device` ever exists.

use std::io;

use crate::{builder::Config, error::OpenError};

/// No device can exist on this OS.
#[derive(Debug)]
pub(crate) enum Device {}

pub(crate) fn open(_cfg: Config, _queues: usize) -> Result<Vec<Device>, OpenError> {
    Err(OpenError::Unsupported)
}

impl Device {
    pub(crate) fn recv(&self, _buf: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn recv_nowait(&self, _buf: &mut [u8]) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn send(&self, _packet: &[u8]) -> io::Result<usize> {
        match *self {}
    }
    #[cfg(feature = "vm-memory")]
    pub(crate) fn send_gather<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        _head: &[u8],
        _tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        match *self {}
    }
    #[cfg(feature = "vm-memory")]
    pub(crate) fn recv_scatter<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        _head: &mut [u8],
        _tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        match *self {}
    }
    pub(crate) fn name(&self) -> &str {
        match *self {}
    }
    pub(crate) fn mtu(&self) -> u32 {
        match *self {}
    }
    pub(crate) fn wait_readable(&self, _timeout: Option<std::time::Duration>) -> io::Result<bool> {
        match *self {}
    }
    pub(crate) fn set_nonblocking(&self, _on: bool) -> io::Result<()> {
        match *self {}
    }
}

#[cfg(unix)]
impl std::os::fd::AsFd for Device {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match *self {}
    }
}
