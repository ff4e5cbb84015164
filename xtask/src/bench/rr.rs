//! The TCP request/response and connect/request/response/close routines, run by the bench inside
//! the guest (client) and server namespaces as the hidden subcommands
//! `xtask bench --serve PORT` and `xtask bench --client rr|crr ADDR SECONDS`.
//!
//! Protocol: the client sends one byte and the server echoes it. A `b'r'` keeps the connection
//! open for the next round trip; a `b'c'` makes the server close right after its reply, so that
//! TIME_WAIT lands on the server and the guest's ephemeral ports are never exhausted.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// `--serve PORT`: a serial echo server on `0.0.0.0:PORT` and another on `[::]:PORT+1` for the
/// IPv6 figures (one connection at a time each, which is all the client ever opens; two ports,
/// so that the IPv4 listener stays what it was whatever `bindv6only` says). Runs until killed.
pub(super) fn serve(port: &str) -> Result<()> {
    let port: u16 = port.parse().context("--serve PORT")?;
    let port6 = port
        .checked_add(1)
        .context("--serve PORT: PORT+1 must be a port too")?;
    let listener = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("bind :{port}"))?;
    // Without IPv6 on the machine the IPv4 server still serves (the bench then reports the
    // IPv6 figures as not measured, with this reason in its log).
    match TcpListener::bind(("::", port6)) {
        Ok(listener6) => {
            std::thread::spawn(move || serve_on(&listener6));
        }
        Err(e) => eprintln!("echo server: no IPv6 listener on [::]:{port6}: {e}"),
    }
    serve_on(&listener);
    Ok(())
}

/// `--client rr|crr ADDR SECONDS`: runs for SECONDS and prints `count=N secs=S`.
pub(super) fn client(args: &[String]) -> Result<()> {
    let [mode, addr, secs] = args else {
        bail!("usage: xtask bench --client rr|crr ADDR SECONDS");
    };
    let addr: SocketAddr = addr.parse().context("ADDR")?;
    let secs: f64 = secs.parse().context("SECONDS")?;
    let limit = Duration::from_secs_f64(secs.clamp(0.01, 600.0));
    let (count, took) = transactions(mode, addr, limit)?;
    println!("count={count} secs={took:.6}");
    Ok(())
}

fn serve_on(listener: &TcpListener) {
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let _ = conn.set_nodelay(true);
        let _ = conn.set_read_timeout(Some(IDLE));
        let mut byte = [0u8; 1];
        while let Ok(1) = conn.read(&mut byte) {
            if conn.write_all(&byte).is_err() || byte[0] == CLOSE {
                break;
            }
        }
    }
}

/// Runs `mode` transactions against `addr` for `limit`: (count, seconds taken).
fn transactions(mode: &str, addr: SocketAddr, limit: Duration) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut count: u64 = 0;
    match mode {
        "rr" => {
            let mut conn = connect(addr)?;
            while started.elapsed() < limit && count < MAX_ROUNDS {
                round_trip(&mut conn, KEEP)?;
                count += 1;
            }
        }
        "crr" => {
            let mut buf = [0u8; 1];
            while started.elapsed() < limit && count < MAX_ROUNDS {
                let mut conn = connect(addr)?;
                round_trip(&mut conn, CLOSE)?;
                // Wait for the server's FIN so that the close is part of each transaction.
                match conn.read(&mut buf) {
                    Ok(0) => {}
                    Ok(_) => bail!("crr: server sent more than one byte"),
                    Err(e) => return Err(e).context("crr: waiting for the server's close"),
                }
                count += 1;
            }
        }
        other => bail!("unknown client mode {other:?} (rr or crr)"),
    }
    Ok((count, started.elapsed().as_secs_f64()))
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let conn =
        TcpStream::connect_timeout(&addr, IDLE).with_context(|| format!("connect {addr}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(IDLE))?;
    Ok(conn)
}

fn round_trip(conn: &mut TcpStream, byte: u8) -> Result<()> {
    conn.write_all(&[byte]).context("send")?;
    let mut reply = [0u8; 1];
    match conn.read_exact(&mut reply) {
        Ok(()) if reply[0] == byte => Ok(()),
        Ok(()) => bail!("the echo server answered {} to {byte}", reply[0]),
        Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
            bail!("no reply within {IDLE:?}")
        }
        Err(e) => Err(e).context("receive"),
    }
}

const KEEP: u8 = b'r';
const CLOSE: u8 = b'c';
/// A round trip that takes longer than this is a failure (a stalled backend), not a sample.
const IDLE: Duration = Duration::from_secs(3);
/// Bound on the loop count besides the time limit.
const MAX_ROUNDS: u64 = 100_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_on(&listener));
        addr
    }

    #[test]
    fn rr_and_crr_complete_transactions_on_loopback() {
        let addr = server();
        let (rr, took) = transactions("rr", addr, Duration::from_millis(100)).unwrap();
        assert!(rr > 10, "only {rr} round trips in {took} s");
        assert!(took >= 0.1);
        let (crr, _) = transactions("crr", addr, Duration::from_millis(100)).unwrap();
        assert!(crr > 5, "only {crr} connections");
    }

    #[test]
    fn rr_over_ipv6_loopback() {
        // The IPv6 figures' path: a client on an IPv6 address; skipped (printed) where the
        // machine has no IPv6 loopback.
        let Ok(listener) = TcpListener::bind("[::1]:0") else {
            eprintln!("SKIPPED: no IPv6 loopback here");
            return;
        };
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || serve_on(&listener));
        let (rr, _) = transactions("rr", addr, Duration::from_millis(50)).unwrap();
        assert!(rr > 5, "only {rr} round trips");
    }

    #[test]
    fn unknown_mode_is_an_error() {
        let addr = server();
        assert!(transactions("x", addr, Duration::from_millis(10)).is_err());
    }
}
