//! The OS backends. Every backend provides:
//!
//! - `open(Config, queues) -> Result<Vec<Device>, OpenError>`: create, configure, return.
//! - `Device::recv(&self, &mut [u8]) -> io::Result<usize>`: one whole packet (blocking or
//!   not as the descriptor is), truncation reported as [`Truncated`](crate::Truncated).
//! - `Device::recv_nowait(&self, &mut [u8])`: the same, but never blocks (`WouldBlock`).
//! - `Device::send(&self, &[u8]) -> io::Result<usize>`: one whole packet.
//! - `Device::name`, `Device::mtu`, `Device::set_nonblocking`, and `AsFd`.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;
#[cfg(target_os = "macos")]
#[path = "macos.rs"]
mod imp;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
#[path = "unsupported.rs"]
mod imp;

#[cfg(any(target_os = "linux", target_os = "macos"))]
pub(crate) mod unix;

pub(crate) use imp::{Device, open};
#[cfg(target_os = "linux")]
pub(crate) use imp::{enter_netns, set_offload, set_queue};
