//! `--host-setup`: forwarding and a masquerade of the NAT's external address(es) in the network
//! namespace hostnetd runs in, for as long as it runs: IPv4 always, IPv6 too unless `--no-ipv6`.
//!
//! The daemon drops its privileges after set-up (user switch, no_new_privs, a seccomp filter that
//! allows no new processes and no netlink), so it cannot undo anything itself on exit. The set-up
//! and the undoing therefore live in a small **helper process**: the daemon starts it (its own
//! binary, `/proc/self/exe --host-setup-helper PID EXTERNAL TUN [EXTERNAL6]`) while still privileged, before
//! [`super::sandbox`] locks it down. The helper
//!
//! 1. installs the table `ip hostnetd-<pid>` (one base chain at the `postrouting` hook, priority
//!    `srcnat`, policy accept, one rule: `ip saddr <external> oifname != "<tun>" masquerade`) in
//!    one `nft -j` transaction, and sets `net.ipv4.ip_forward` to 1 if it was 0; with an
//!    EXTERNAL6 (IPv6 on) it does the same for IPv6 in a table of its own, `ip6 hostnetd-<pid>`
//!    (`ip6 saddr <external6> oifname != "<tun>" masquerade`), and `net.ipv6.conf.all.forwarding`.
//!    Each family is set up and undone on its own (its own table, its own mark, its own sysctl),
//!    so the undo of one never depends on the other; without EXTERNAL6 nothing IPv6 is touched;
//! 2. prints `ok table=… forwarding=… [table6=… forwarding6=…]` (or `refused …`) on its stdout,
//!    a pipe the daemon reads
//!    before it prints its ready line;
//! 3. waits for end-of-file on its stdin, a pipe whose only writer is the daemon. The kernel
//!    closes it however the daemon ends: a clean exit, an error, SIGKILL, a seccomp kill;
//! 4. then deletes its table(s) (only its own: by name) and, if it was the one that turned
//!    forwarding on, writes the old value back (per family), prints `done` and exits. SIGTERM and SIGHUP to the
//!    helper do the same at once (a service manager stopping the whole group); SIGINT is ignored
//!    (a terminal's ^C reaches the daemon, whose exit then ends the helper).
//!
//! On a clean stop the daemon closes the pipe and reads the helper's stdout to its end, so by the
//! time hostnetd has exited the namespace is as it was. After SIGKILL the helper cleans up on its
//! own, a moment later.
//!
//! Several hostnetd with `--host-setup` in one namespace: each has its own table(s). A table whose
//! name ends in `-fwd` marks an instance that found that family's forwarding off (or found another
//! marked table of that family); forwarding is turned off again only by the last marked instance
//! to exit, so one instance's exit never cuts the others off.
//!
//! Turning `net.ipv6.conf.all.forwarding` on makes the kernel treat the namespace as a router:
//! interfaces with `accept_ra=1` (the default) stop accepting Router Advertisements (only
//! `accept_ra=2` still does), so a namespace that gets its own IPv6 default route by SLAAC loses
//! it when that route expires. `--no-ipv6` leaves IPv6 alone.
//!
//! Why `nft -j` (through the `nftables` crate's typed JSON schema) rather than netlink from Rust:
//! `rustables` is GPL-3.0 (the workspace is MIT OR Apache-2.0), `nftnl`/`mnl` bind the C
//! libraries libnftnl/libmnl (a C toolchain and headers for every build, also for the macOS
//! type-check), and writing nf_tables netlink messages by hand is what the project's rules forbid
//! when a kept tool does it. `nft` is the reference implementation of that protocol and is only
//! needed where `--host-setup` is used (Debian package `nftables`).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, anyhow};
use nftables::batch::Batch;
use nftables::expr::{Expression, Meta, MetaKey, NamedExpression, Payload, PayloadField};
use nftables::helper::NftablesError;
use nftables::schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table};
use nftables::stmt::{Match, Operator, Statement};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook};
use tracing::{info, warn};

use crate::args::{HELPER_FLAG, HelperArgs};

/// `--host-setup` refused: no nft, no nf_tables, no CAP_NET_ADMIN (exit status 2).
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--host-setup cannot be done here: {}", self.0)
    }
}

impl std::error::Error for Refused {}

/// The daemon's side: the running helper. Dropping it (or [`HostSetup::finish`]) closes the
/// helper's stdin and waits until it has undone the set-up.
#[derive(Debug)]
pub(crate) struct HostSetup {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    table: String,
}

impl HostSetup {
    /// Starts the helper for `external` (and `external6` with IPv6) behind `tun` and waits for
    /// its answer.
    ///
    /// # Errors
    /// [`Refused`] when the namespace cannot be set up (nft missing, nf_tables missing, no
    /// privilege); other errors when the helper cannot be started.
    pub(crate) fn start(
        external: Ipv4Addr,
        external6: Option<Ipv6Addr>,
        tun: &str,
        log_json: bool,
    ) -> Result<Self> {
        let mut child = Command::new("/proc/self/exe")
            .arg0("hostnetd")
            // The helper logs as the daemon does (`--log-format`).
            .env(LOG_FORMAT_ENV, if log_json { "json" } else { "text" })
            .arg(HELPER_FLAG)
            .arg(std::process::id().to_string())
            .arg(external.to_string())
            .arg(tun)
            .args(external6.map(|a| a.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the --host-setup helper")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("the helper's stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .context("reading the --host-setup helper's answer")?;
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("ok ") {
            let table = rest
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("table="))
                .unwrap_or("?")
                .to_owned();
            info!(helper = child.id(), "host set-up: {rest}");
            return Ok(Self {
                child,
                stdin,
                stdout: Some(stdout),
                table,
            });
        }
        let _ = child.wait();
        match line.strip_prefix("refused ") {
            Some(why) => Err(Refused(why.to_owned()).into()),
            None => Err(anyhow!(
                "the --host-setup helper failed ({})",
                if line.is_empty() { "no answer" } else { line }
            )),
        }
    }

    /// Closes the helper's stdin and waits until it says the set-up is undone.
    pub(crate) fn finish(mut self) {
        self.undo();
    }

    fn undo(&mut self) {
        let Some(mut stdout) = self.stdout.take() else {
            return;
        };
        drop(self.stdin.take());
        let mut rest = String::new();
        match stdout.read_to_string(&mut rest) {
            Ok(_) if rest.trim_end() == "done" => {
                info!(table = %self.table, "host set-up undone");
            }
            Ok(_) => warn!(
                table = %self.table,
                "the --host-setup helper ended with {rest:?} (see its log above)"
            ),
            Err(e) => warn!(table = %self.table, "waiting for the --host-setup helper: {e}"),
        }
        // Not waited for: the daemon may be under its seccomp filter (no wait4); the helper has
        // exited or is about to, and is reaped when the daemon exits.
        let _ = &self.child;
    }
}

/// The environment variable that tells the helper the daemon's `--log-format`.
const LOG_FORMAT_ENV: &str = "HOSTNETD_LOG_FORMAT";

impl Drop for HostSetup {
    fn drop(&mut self) {
        self.undo();
    }
}

/// The helper process (`hostnetd --host-setup-helper PID EXTERNAL TUN [EXTERNAL6]`): sets up, answers on
/// stdout, undoes at end-of-file on stdin or on SIGTERM/SIGHUP.
pub(crate) fn helper_main(args: &HelperArgs) -> ExitCode {
    let _ = super::init_tracing(std::env::var(LOG_FORMAT_ENV).is_ok_and(|f| f == "json"));
    let nft = Nft::find();
    let done = match set_up(&nft, args) {
        Ok(done) => done,
        Err(e) => {
            warn!("host set-up refused: {e:#}");
            let _ = writeln!(io::stdout(), "refused {e:#}");
            return ExitCode::from(2);
        }
    };
    let answer: Vec<String> = done
        .iter()
        .map(|d| {
            let suffix = d.family.suffix;
            format!(
                "table{suffix}={}/{} forwarding{suffix}={}",
                d.family.name,
                d.table,
                if d.restore_forwarding {
                    "enabled (was 0)"
                } else {
                    "already on"
                }
            )
        })
        .collect();
    let _ = writeln!(io::stdout(), "ok {}", answer.join(" "));
    let _ = io::stdout().flush();
    let state = Arc::new(Mutex::new(Some((nft, done))));
    let on_signal = state.clone();
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            std::thread::spawn(move || {
                for sig in signals.forever() {
                    if sig != signal_hook::consts::SIGINT {
                        info!(signal = sig, "host set-up helper: stop requested");
                        undo_and_exit(&on_signal);
                    }
                }
            });
        }
        Err(e) => warn!("host set-up helper: no signal handlers ({e})"),
    }
    // Block until the daemon is gone (end of file) or sends anything (it never does).
    let mut sink = [0u8; 64];
    loop {
        match io::stdin().read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    undo_and_exit(&state)
}

/// One address family: its nftables family, payload protocol and forwarding sysctl.
#[derive(Debug)]
struct Family {
    nf: NfFamily,
    /// nft's name of the family and of its address payload (`ip`, `ip6`).
    name: &'static str,
    forwarding: &'static str,
    /// Added to the keys of the helper's answer (`table6=`).
    suffix: &'static str,
}

static V4: Family = Family {
    nf: NfFamily::IP,
    name: "ip",
    forwarding: IP_FORWARD,
    suffix: "",
};

static V6: Family = Family {
    nf: NfFamily::IP6,
    name: "ip6",
    forwarding: IP6_FORWARD,
    suffix: "6",
};

/// What the helper set up, per family.
#[derive(Debug)]
struct Done {
    family: &'static Family,
    table: String,
    /// Forwarding was 0 (or held by another marked instance): write 0 back when the last
    /// marked instance leaves.
    restore_forwarding: bool,
}

fn undo_and_exit(state: &Mutex<Option<(Nft, Vec<Done>)>>) -> ! {
    let taken = state.lock().unwrap_or_else(PoisonError::into_inner).take();
    let mut ok = true;
    if let Some((nft, done)) = taken {
        let _lock = NamespaceLock::take();
        for d in &done {
            ok &= undo(&nft, d);
        }
    }
    // The daemon may be gone (SIGKILL): its end of the pipe closed, so no println! (it panics on
    // EPIPE).
    let mut out = io::stdout();
    let _ = writeln!(out, "{}", if ok { "done" } else { "failed" });
    let _ = out.flush();
    std::process::exit(if ok { 0 } else { 1 })
}

/// Undoes one family's set-up (under the namespace lock); false if anything failed.
fn undo(nft: &Nft, done: &Done) -> bool {
    let mut ok = true;
    let family = done.family;
    let path = family.forwarding;
    if let Err(e) = nft.delete_table(family, &done.table) {
        warn!(table = %done.table, "removing the nftables table: {e:#}");
        ok = false;
    }
    if done.restore_forwarding {
        // Only instances whose daemon is alive keep forwarding on: a table left by a daemon
        // and helper killed together must not keep it on for ever.
        match nft.marked_tables(family, alive) {
            Ok(others) if others.is_empty() => {
                if let Err(e) = std::fs::write(path, "0\n") {
                    warn!("restoring {path} to 0: {e}");
                    ok = false;
                }
            }
            Ok(others) => info!(
                others = ?others,
                "{path} left on: other hostnetd instances with --host-setup use it"
            ),
            Err(e) => {
                warn!("listing tables, {path} left on: {e:#}");
                ok = false;
            }
        }
    }
    info!(family = family.name, table = %done.table, "host set-up undone");
    ok
}

fn set_up(nft: &Nft, args: &HelperArgs) -> Result<Vec<Done>> {
    let _lock = NamespaceLock::take();
    let mut done = vec![set_up_family(
        nft,
        &V4,
        args.pid,
        &args.external.to_string(),
        &args.tun,
    )?];
    if let Some(external6) = args.external6 {
        match set_up_family(nft, &V6, args.pid, &external6.to_string(), &args.tun) {
            Ok(d) => done.push(d),
            Err(e) => {
                for d in &done {
                    undo(nft, d);
                }
                return Err(e);
            }
        }
    }
    Ok(done)
}

/// One family's table and forwarding (under the namespace lock).
fn set_up_family(
    nft: &Nft,
    family: &'static Family,
    pid: u32,
    external: &str,
    tun: &str,
) -> Result<Done> {
    let path = family.forwarding;
    // The first contact tells whether we may: no program, no nf_tables, no CAP_NET_ADMIN.
    // Every marked table counts here, also one whose daemon is gone: its helper may not have
    // cleaned up yet (a restart), and a stale one means forwarding was off before it too.
    let marked = nft.marked_tables(family, |_| true)?;
    let forwarding = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let was_off = forwarding.trim() == "0";
    let restore_forwarding = was_off || !marked.is_empty();
    let table = format!(
        "{TABLE_PREFIX}{pid}{}",
        if restore_forwarding { MARK } else { "" }
    );
    nft.apply(&ruleset(family, &table, external, tun))?;
    if was_off && let Err(e) = std::fs::write(path, "1\n") {
        let _ = nft.delete_table(family, &table);
        return Err(anyhow!("enabling forwarding ({path}): {e}"));
    }
    Ok(Done {
        family,
        table,
        restore_forwarding,
    })
}

/// The table, its postrouting chain and the masquerade rule, as one transaction.
fn ruleset<'a>(family: &Family, table: &'a str, external: &'a str, tun: &'a str) -> Nftables<'a> {
    let mut batch = Batch::new();
    batch.add(NfListObject::Table(Table {
        family: family.nf,
        name: table.into(),
        handle: None,
    }));
    batch.add(NfListObject::Chain(Chain {
        family: family.nf,
        table: table.into(),
        name: CHAIN.into(),
        _type: Some(NfChainType::NAT),
        hook: Some(NfHook::Postrouting),
        prio: Some(SRCNAT_PRIORITY),
        policy: Some(NfChainPolicy::Accept),
        ..Chain::default()
    }));
    batch.add(NfListObject::Rule(Rule {
        family: family.nf,
        table: table.into(),
        chain: CHAIN.into(),
        expr: vec![
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: family.name.into(),
                        field: "saddr".into(),
                    },
                ))),
                right: Expression::String(external.into()),
                op: Operator::EQ,
            }),
            Statement::Match(Match {
                left: Expression::Named(NamedExpression::Meta(Meta {
                    key: MetaKey::Oifname,
                })),
                right: Expression::String(tun.into()),
                op: Operator::NEQ,
            }),
            Statement::Masquerade(None),
        ]
        .into(),
        comment: Some("hostnetd --host-setup".into()),
        ..Rule::default()
    }));
    batch.to_nftables()
}

/// The `nft` program.
#[derive(Debug)]
struct Nft {
    program: PathBuf,
}

impl Nft {
    /// `$HOSTNETD_NFT` if set, else `nft` on PATH, else in /usr/sbin or /sbin (root's PATH is
    /// not always set).
    fn find() -> Self {
        if let Some(p) = std::env::var_os("HOSTNETD_NFT") {
            return Self {
                program: PathBuf::from(p),
            };
        }
        let on_path = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("nft"))
                .find(|c| c.is_file())
        });
        let program = on_path
            .or_else(|| {
                ["/usr/sbin/nft", "/sbin/nft"]
                    .into_iter()
                    .map(PathBuf::from)
                    .find(|c| c.is_file())
            })
            .unwrap_or_else(|| PathBuf::from("nft"));
        Self { program }
    }

    fn apply(&self, ruleset: &Nftables<'_>) -> Result<()> {
        nftables::helper::apply_ruleset_with_args(ruleset, Some(&self.program), NO_ARGS)
            .map_err(|e| self.explain(e, "installing the masquerade table"))
    }

    fn delete_table(&self, family: &Family, table: &str) -> Result<()> {
        let mut batch = Batch::new();
        batch.delete(NfListObject::Table(Table {
            family: family.nf,
            name: table.into(),
            handle: None,
        }));
        nftables::helper::apply_ruleset_with_args(
            &batch.to_nftables(),
            Some(&self.program),
            NO_ARGS,
        )
        .map_err(|e| self.explain(e, "deleting the table"))
    }

    /// The `-fwd` tables of `family` of hostnetd instances whose daemon's PID passes `keep`, as
    /// names.
    fn marked_tables(&self, family: &Family, keep: impl Fn(u32) -> bool) -> Result<Vec<String>> {
        let tables = nftables::helper::get_current_ruleset_with_args(
            Some(&self.program),
            ["list", "tables", family.name],
        )
        .map_err(|e| self.explain(e, "listing the tables"))?;
        Ok(tables
            .objects
            .iter()
            .filter_map(|o| match o {
                NfObject::ListObject(NfListObject::Table(t)) => Some(t.name.to_string()),
                _ => None,
            })
            .filter(|name| marked_pid(name).is_some_and(&keep))
            .collect())
    }

    fn explain(&self, e: NftablesError, what: &str) -> anyhow::Error {
        match e {
            NftablesError::NftExecution { inner, .. }
                if inner.kind() == io::ErrorKind::NotFound =>
            {
                anyhow!(
                    "{what}: no nft program (Debian: apt-get install nftables): {}",
                    self.program.display()
                )
            }
            NftablesError::NftFailed { stderr, .. } => {
                let first = stderr.lines().next().unwrap_or("").trim();
                let hint = if stderr.contains("Operation not permitted") {
                    " (needs CAP_NET_ADMIN in this network namespace)"
                } else if stderr.contains("Protocol not supported")
                    || stderr.contains("No such file or directory")
                        && stderr.contains("Could not process rule")
                {
                    " (the kernel lacks nf_tables or its nat/masquerade support)"
                } else {
                    ""
                };
                anyhow!("{what}: nft failed: {first}{hint}")
            }
            other => anyhow!("{what}: {other}"),
        }
    }
}

/// The helpers of one network namespace take turns: set-up and undo each run under an exclusive
/// lock on `/run/hostnet/host-setup-netns-<inode>.lock`, so an instance starting while another
/// one's helper cleans up (a restart) sees either its table or forwarding already restored,
/// never half of it. Without the lock directory (not root) it goes on unlocked, with a warning.
#[derive(Debug)]
struct NamespaceLock {
    held: Option<(std::fs::File, PathBuf)>,
}

impl NamespaceLock {
    fn take() -> Self {
        let attempt = || -> io::Result<(std::fs::File, PathBuf)> {
            use std::os::unix::fs::MetadataExt;
            let ino = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
            std::fs::create_dir_all(LOCK_DIR)?;
            let path = PathBuf::from(format!("{LOCK_DIR}/host-setup-netns-{ino}.lock"));
            // The holder removes the file when done: a lock taken on a removed file is retried.
            for _ in 0..100 {
                let f = std::fs::File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)?;
                f.lock()?;
                let same = std::fs::metadata(&path)
                    .is_ok_and(|m| f.metadata().is_ok_and(|o| o.ino() == m.ino()));
                if same {
                    return Ok((f, path));
                }
            }
            Err(io::Error::other("the lock file kept being replaced"))
        };
        match attempt() {
            Ok(held) => Self { held: Some(held) },
            Err(e) => {
                warn!("host set-up: no lock ({LOCK_DIR}: {e}); going on without");
                Self { held: None }
            }
        }
    }
}

impl Drop for NamespaceLock {
    fn drop(&mut self) {
        if let Some((file, path)) = self.held.take() {
            let _ = std::fs::remove_file(&path);
            drop(file);
        }
    }
}

/// The PID in a table name `hostnetd-<pid>-fwd`, if the name has that form.
fn marked_pid(name: &str) -> Option<u32> {
    name.strip_prefix(TABLE_PREFIX)?
        .strip_suffix(MARK)?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

const LOCK_DIR: &str = "/run/hostnet";
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const IP6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";
const TABLE_PREFIX: &str = "hostnetd-";
const MARK: &str = "-fwd";
const CHAIN: &str = "postrouting";
/// nft's `srcnat` priority for the ip and ip6 families.
const SRCNAT_PRIORITY: i32 = 100;
const NO_ARGS: [&str; 0] = [];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_is_one_table_one_nat_chain_one_masquerade_rule() {
        let json = serde_json::to_value(ruleset(&V4, "hostnetd-42-fwd", "100.64.0.2", "hostnetd0"))
            .unwrap();
        let expected = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "ip", "name": "hostnetd-42-fwd"}}},
            {"add": {"chain": {"family": "ip", "table": "hostnetd-42-fwd", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"rule": {"family": "ip", "table": "hostnetd-42-fwd", "chain": "postrouting",
                "expr": [
                    {"match": {"left": {"payload": {"protocol": "ip", "field": "saddr"}},
                        "right": "100.64.0.2", "op": "=="}},
                    {"match": {"left": {"meta": {"key": "oifname"}}, "right": "hostnetd0",
                        "op": "!="}},
                    {"masquerade": null}
                ],
                "comment": "hostnetd --host-setup"}}}
        ]});
        assert_eq!(json, expected);
    }

    #[test]
    fn the_ipv6_ruleset_is_the_same_in_the_ip6_family() {
        let json =
            serde_json::to_value(ruleset(&V6, "hostnetd-42", "fd64:ffff::2", "hostnetd0")).unwrap();
        let expected = serde_json::json!({"nftables": [
            {"add": {"table": {"family": "ip6", "name": "hostnetd-42"}}},
            {"add": {"chain": {"family": "ip6", "table": "hostnetd-42", "name": "postrouting",
                "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}}},
            {"add": {"rule": {"family": "ip6", "table": "hostnetd-42", "chain": "postrouting",
                "expr": [
                    {"match": {"left": {"payload": {"protocol": "ip6", "field": "saddr"}},
                        "right": "fd64:ffff::2", "op": "=="}},
                    {"match": {"left": {"meta": {"key": "oifname"}}, "right": "hostnetd0",
                        "op": "!="}},
                    {"masquerade": null}
                ],
                "comment": "hostnetd --host-setup"}}}
        ]});
        assert_eq!(json, expected);
    }

    #[test]
    fn only_marked_hostnetd_tables_count() {
        assert_eq!(marked_pid("hostnetd-42-fwd"), Some(42));
        assert_eq!(marked_pid("hostnetd-42"), None);
        assert_eq!(marked_pid("filter"), None);
        assert_eq!(marked_pid("hostnetd--fwd"), None);
    }
}
