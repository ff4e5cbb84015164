//! What the drivers need from the OS, one backend per OS (mio's way). Polling itself comes
//! from `mio` (epoll on Linux, kqueue on macOS): safe, kept, and the anchor the project
//! follows; this module only adds the wake-up primitive the drivers hand out as kicks.
//!
//! Every backend provides `Event`: `Event::new()`, `notify(&self)` (wakes whoever polls it;
//! idempotent until drained), `drain(&self)` (clears it; never blocks) and `AsFd` (register
//! it with a poller; on Linux it is an eventfd, so a VMM can use it as an ioeventfd).

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod imp;

#[cfg(all(unix, not(target_os = "linux")))]
#[path = "unix.rs"]
mod imp;

pub(crate) use imp::Event;
