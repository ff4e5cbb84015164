//! The example systemd unit (`docs/systemd/hostnetd@.service`): its `ExecStart` command line, run
//! as systemd would run it (root, `NOTIFY_SOCKET` set; `/run/hostnet/` moved to a scratch folder,
//! `%i` = `vm1`), in a network namespace made here. It must tell the service manager `READY=1`
//! once its ready line is out, log JSON lines, and say `STOPPING=1` on SIGTERM before exiting 0.
//!
//! Needs root (a namespace, a TUN, `--host-setup`'s nftables: Debian's nftables package).
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use testbed::netns::{Netns, Process};

#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn the_units_command_line_notifies_ready_and_stopping_and_logs_json() -> Result<()> {
    let unit_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/systemd/hostnetd@.service"
    );
    let unit = std::fs::read_to_string(unit_path).context(unit_path)?;
    ensure!(
        unit.contains("\nType=notify\n"),
        "the unit is not Type=notify"
    );
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .context("no ExecStart= in the unit")?;
    let dir = std::env::temp_dir().join(format!("hostnetd-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let scratch = format!("{}/", dir.display());
    let argv: Vec<String> = exec
        .split_whitespace()
        .map(|w| w.replace("/run/hostnet/", &scratch).replace("%i", "vm1"))
        .collect();
    ensure!(
        argv.first().map(String::as_str) == Some("/usr/local/bin/hostnetd"),
        "ExecStart runs {argv:?}"
    );
    // The daemon runs as nobody when it says STOPPING: the notify socket must take its datagrams.
    let notify_path = dir.join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o777))?;
    notify.set_read_timeout(Some(Duration::from_secs(15)))?;

    let ns = Netns::new("unit")?;
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_hostnetd"));
    cmd.args(&argv[1..])
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut daemon = Process::spawn(&mut cmd).context("starting hostnetd")?;
    let stderr = daemon.take_stderr().context("stderr")?;
    let log = std::thread::spawn(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(std::result::Result::ok)
            .inspect(|l| eprintln!("[hostnetd] {l}"))
            .collect::<Vec<_>>()
    });
    let ready = notify_message(&notify)?;
    ensure!(
        ready.lines().any(|l| l == "READY=1"),
        "first notification {ready:?}"
    );
    let mut line = String::new();
    BufReader::new(daemon.take_stdout().context("stdout")?).read_line(&mut line)?;
    ensure!(
        line.starts_with(&format!("ready socket={scratch}vm1.sock ")),
        "ready line {line:?}"
    );
    ensure!(
        dir.join("vm1.sock.ctl").exists(),
        "no control socket beside it"
    );
    daemon.signal("TERM")?;
    let stopping = notify_message(&notify)?;
    ensure!(
        stopping.lines().any(|l| l == "STOPPING=1"),
        "second notification {stopping:?}"
    );
    let status = daemon
        .wait_timeout(Duration::from_secs(10))?
        .context("hostnetd did not exit within 10 s of SIGTERM")?;
    ensure!(status.success(), "hostnetd exited with {status}");
    let lines = log
        .join()
        .map_err(|_| anyhow::anyhow!("the log reader panicked"))?;
    ensure!(!lines.is_empty(), "no log lines");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).with_context(|| format!("not a JSON log line: {l:?}"))?;
        ensure!(v.get("level").is_some() && v.get("fields").is_some(), "{l}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn notify_message(sock: &UnixDatagram) -> Result<String> {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) => bail!("no notification from hostnetd within 15 s: {e}"),
    }
}

/// A vhost-user socket path with no room left for `.ctl` (unix socket paths hold 107 bytes):
/// the daemon warns that it has no control socket and serves anyway; with `--control` named
/// and unusable it refuses to start.
#[test]
#[ignore = "needs CAP_NET_ADMIN"]
fn a_socket_path_with_no_room_for_ctl_serves_without_a_control_socket() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("hostnetd-long-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let prefix = format!("{}/", dir.display());
    let name = "s".repeat(106 - prefix.len());
    let sock = format!("{prefix}{name}");
    ensure!(sock.len() == 106, "{sock}");
    let ns = Netns::new("long")?;
    let run = |extra: &[&str]| -> Result<(Process, std::process::ChildStdout)> {
        let mut cmd = ns.command(env!("CARGO_BIN_EXE_hostnetd"));
        cmd.args(["--socket", &sock, "--no-sandbox"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut p = Process::spawn(&mut cmd).context("starting hostnetd")?;
        let out = p.take_stdout().context("stdout")?;
        Ok((p, out))
    };
    let (mut daemon, stdout) = run(&[])?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    ensure!(line.starts_with("ready socket="), "ready line {line:?}");
    daemon.signal("TERM")?;
    daemon.wait_timeout(Duration::from_secs(10))?;
    let mut err = String::new();
    std::io::Read::read_to_string(&mut daemon.take_stderr().context("stderr")?, &mut err)?;
    ensure!(err.contains("no control socket"), "{err}");
    let control = format!("{sock}.ctl");
    let (mut named, _) = run(&["--control", &control])?;
    let status = named
        .wait_timeout(Duration::from_secs(10))?
        .context("hostnetd with an unusable --control did not exit")?;
    ensure!(!status.success(), "it started with an unusable --control");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
