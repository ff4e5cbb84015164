//! Entry points for the fuzz targets in `fuzz/`: not an API (hidden from the docs, no
//! stability promise).

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::Mutex;

/// The frontend side of the relay between a vhost-user frontend and the daemon
/// (`linux::proxy`), run on the calling thread: reads the frontend's messages (with their file
/// descriptors) from `front` until it closes or breaks the protocol, checks memory tables,
/// absorbs early `SET_VRING_ENABLE`s (answering on `replies`) and forwards the rest to `back`.
///
/// # Errors
///
/// What ended the relay: a malformed or oversized message, an unusable memory table, a socket
/// error. `Ok` when `front` closed between messages.
pub fn relay_frontend_messages(
    front: &UnixStream,
    back: &UnixStream,
    replies: UnixStream,
) -> io::Result<()> {
    crate::linux::proxy::frontend_to_backend(front, back, &Mutex::new(replies))
}
