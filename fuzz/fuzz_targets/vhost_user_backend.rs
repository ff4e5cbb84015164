//! hostnetd's whole connection path under a hostile frontend: the relay, vhost-user-backend's
//! request handler (the `vhost` crate) and hostnetd's backend — the device core over a real TUN
//! (`hostnetd::fuzzing::Backend`, in a network namespace of the fuzz process's own). Each input
//! is one connection: the messages of `common/frontend.rs` (memory tables with memfds, ring
//! set-up, kicks, calls, enables, features, config, resets, anything), then the frontend
//! closes. Never a panic, a hang or a crash (a SIGBUS from a region past its file, say); the
//! connection ends and the next one is served. An input of odd length goes to a backend with two
//! queue pairs (`hostnetd --queues 2`: multiqueue, the control queue at ring 4, a worker per
//! pair, a TUN with two queues), an even one to the default single pair.
//!
//! Needs root (a network namespace and a TUN): otherwise it says so and exits with status 2.
#![no_main]

use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

#[path = "common/frontend.rs"]
mod frontend;

static BACKEND: LazyLock<hostnetd::fuzzing::Backend> = LazyLock::new(|| backend(1));
static MQ_BACKEND: LazyLock<hostnetd::fuzzing::Backend> = LazyLock::new(|| backend(2));

fn backend(queues: u16) -> hostnetd::fuzzing::Backend {
    match hostnetd::fuzzing::Backend::with_queues(queues) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("vhost_user_backend: {e:#}; this target needs root");
            std::process::exit(2);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let backend = if input.len() % 2 == 1 {
        &*MQ_BACKEND
    } else {
        &*BACKEND
    };
    let Ok((ours, theirs)) = UnixStream::pair() else {
        return;
    };
    if ours.set_nonblocking(true).is_err() {
        return;
    }
    let mut rest = input;
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let (msg, fds) = frontend::build(kind, &mut rest);
        if frontend::send_with_fds(&ours, &msg, &fds).is_err() {
            break;
        }
    }
    let _ = ours.shutdown(Shutdown::Write);
    // The daemon's replies are read while it serves, so it never waits on a full socket.
    let _ = ours.set_nonblocking(false);
    let drain = std::thread::spawn(move || {
        let _ = std::io::copy(&mut &ours, &mut std::io::sink());
    });
    let _ = backend.serve(theirs);
    let _ = drain.join();
});
