//! Least privilege after set-up: the socket file's mode and owner, the switch to `--user`/`--group`,
//! no_new_privs and the seccomp filter.
//!
//! The order is passt's (`isolation.c`: open what is needed, drop identity, then the filter last)
//! and Firecracker's jailer's (set-up as root, `setgid`/`setuid` to the jail user, then the
//! seccomp filter installed before any guest-controlled input is handled):
//!
//! 1. set-up as the invoking user: the TUN created, configured and opened, the socket bound (with a
//!    umask of 0177 so it is never connectable by others, then [`secure_socket`] sets its mode and
//!    owner), the signal handlers installed;
//! 2. [`switch_user`]: supplementary groups, group, user (in that order: after `setuid` the others
//!    are refused); regaining root is checked to fail;
//! 3. [`lock_down`]: `PR_SET_NO_NEW_PRIVS`, then the filters, on every thread (TSYNC). Threads
//!    started later (the signal thread, each connection's worker and relay) inherit them.
//!
//! The filter is an allow list ([`allowed_syscalls`]): every other system call kills the whole
//! process (`SECCOMP_RET_KILL_PROCESS`) as passt's and Firecracker's filters do: a daemon that
//! makes a call it never makes is either broken or taken over, and neither should go on serving a
//! guest. The kernel's audit log (`dmesg`: `type=1326 … syscall=N`) names the call. A second
//! filter answers `clone3` with `ENOSYS`, so the C library falls back to `clone`, whose flags the
//! first filter can read: only threads (`CLONE_THREAD`) may be created, never processes. A
//! third answers `openat` with `EACCES`: nothing is opened after set-up, but glibc's malloc
//! opens a file of `/proc` lazily when a thread arena's heap first shrinks (threads of ended
//! connections), and copes with the refusal; its other lazy read is done before the filter
//! ([`warm_up_allocator`]).
//! Everything here is safe code: nix, std and seccompiler's `apply_filter_all_threads`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Group, Uid, User};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use tracing::{info, warn};

/// Makes glibc's malloc decide its arena limit now, while files may still be opened.
///
/// glibc gives each new thread an arena of its own until there are more than eight; the
/// thread that then needs one counts the CPUs by opening `/sys/devices/system/cpu/online`
/// (once; the limit is kept), and if that fails, `/proc/stat`, then `sched_getaffinity`,
/// which the filter does not allow. Several frontends at once (each a connection thread,
/// its request handler, its worker and relay threads) get there after the filter is in.
/// So: [`WARM_UP_THREADS`] threads alive at once, each allocating, before the filter.
/// Cheap (once, at start-up) and harmless with an allocator that never opens anything.
fn warm_up_allocator() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, RwLock};
    let hold = Arc::new(RwLock::new(()));
    let ready = Arc::new(AtomicUsize::new(0));
    let held = hold
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let threads: Vec<_> = (0..WARM_UP_THREADS)
        .filter_map(|_| {
            let (hold, ready) = (hold.clone(), ready.clone());
            std::thread::Builder::new()
                .name("warm-up".to_owned())
                .spawn(move || {
                    std::hint::black_box(vec![1u8; 256]);
                    ready.fetch_add(1, Ordering::SeqCst);
                    // Alive until every other one has allocated too.
                    drop(hold.read());
                })
                .ok()
        })
        .collect();
    for _ in 0..1000 {
        if ready.load(Ordering::SeqCst) >= threads.len() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(held);
    for t in threads {
        let _ = t.join();
    }
}

/// Threads alive at once in [`warm_up_allocator`]: more than glibc's default `arena_test` (8
/// on 64-bit hosts) plus the main arena.
const WARM_UP_THREADS: usize = 12;

/// The user a daemon started as root runs as after set-up when no `--user` is given (as passt).
pub(crate) const DEFAULT_USER: &str = "nobody";

/// Who the daemon runs as after set-up (`--user`, `--group`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    /// The user's name as given (or its number).
    pub(crate) user: String,
    /// The user id.
    pub(crate) uid: Uid,
    /// The group id (`--group`, or the user's primary group).
    pub(crate) gid: Gid,
}

/// Resolves `--user` (a name in the user database, or a number) and `--group` (likewise; default:
/// the user's primary group, or the number itself for a numeric user not in the database).
///
/// # Errors
/// An unknown name, or a failing user database.
pub(crate) fn resolve_identity(user: &str, group: Option<&str>) -> Result<Identity> {
    let (uid, primary) =
        match User::from_name(user).with_context(|| format!("looking up user {user:?}"))? {
            Some(u) => (u.uid, Some(u.gid)),
            None => match user.parse::<u32>() {
                Ok(n) => {
                    let uid = Uid::from_raw(n);
                    let entry = User::from_uid(uid).ok().flatten();
                    (uid, entry.map(|u| u.gid))
                }
                Err(_) => bail!("no user {user:?}"),
            },
        };
    let gid = match group {
        Some(g) => resolve_group(g)?,
        None => primary.unwrap_or_else(|| Gid::from_raw(uid.as_raw())),
    };
    Ok(Identity {
        user: user.to_owned(),
        uid,
        gid,
    })
}

/// Resolves a group name (in the group database) or number.
///
/// # Errors
/// An unknown name, or a failing group database.
pub(crate) fn resolve_group(group: &str) -> Result<Gid> {
    if let Some(g) =
        Group::from_name(group).with_context(|| format!("looking up group {group:?}"))?
    {
        return Ok(g.gid);
    }
    group
        .parse::<u32>()
        .map(Gid::from_raw)
        .map_err(|_| anyhow!("no group {group:?}"))
}

/// Runs `f` (binding the socket) with a umask of 0177, so the socket file is created `0600` and
/// nobody else can connect before [`secure_socket`] sets the requested mode.
pub(crate) fn with_private_umask<T>(f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let r = f();
    nix::sys::stat::umask(old);
    r
}

/// Sets the socket file's permission bits and, when given, its owner and group (so a frontend
/// running as that user or in that group can connect, and the daemon can remove the file after
/// switching user).
///
/// # Errors
/// `chmod` or `chown` failing.
pub(crate) fn secure_socket(
    path: &Path,
    mode: u32,
    owner: Option<Uid>,
    group: Option<Gid>,
) -> Result<()> {
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, owner.map(Uid::as_raw), group.map(Gid::as_raw))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))?;
    Ok(())
}

/// Switches to `id` for good: supplementary groups (only `id.gid`), group, user.
///
/// # Errors
/// Any step refused (not running as root, or no CAP_SETUID/CAP_SETGID), or root still reachable
/// afterwards.
pub(crate) fn switch_user(id: &Identity) -> Result<()> {
    // Already that user (started unprivileged with `--user` naming itself): nothing to drop, and
    // setgroups would be refused without CAP_SETGID.
    if nix::unistd::getuid() == id.uid
        && nix::unistd::geteuid() == id.uid
        && nix::unistd::getgid() == id.gid
        && nix::unistd::getegid() == id.gid
        && !id.uid.is_root()
    {
        return Ok(());
    }
    nix::unistd::setgroups(&[id.gid]).context("setgroups")?;
    nix::unistd::setgid(id.gid).with_context(|| format!("setgid {}", id.gid))?;
    nix::unistd::setuid(id.uid).with_context(|| format!("setuid {}", id.uid))?;
    if nix::unistd::geteuid() != id.uid || nix::unistd::getegid() != id.gid {
        bail!("the user switch did not take");
    }
    if !id.uid.is_root() && nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
        bail!("root is still reachable after switching to {}", id.user);
    }
    Ok(())
}

/// Sets no_new_privs and installs the filters on every thread of the process. With `selftest`
/// (`--sandbox-selftest`, test only), then makes one forbidden call (`socket(AF_INET)`), which the
/// kernel answers by killing the process with SIGSYS; should the call return, the daemon says so
/// and exits with status 3.
///
/// # Errors
/// prctl or seccomp refused, or the filter failing to compile for this architecture.
pub(crate) fn lock_down(selftest: bool) -> Result<()> {
    warm_up_allocator();
    nix::sys::prctl::set_no_new_privs().context("prctl(PR_SET_NO_NEW_PRIVS)")?;
    let arch = target_arch()?;
    let allow: BpfProgram = SeccompFilter::new(
        allowed_syscalls()?,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| anyhow!("building the seccomp filter: {e}"))?;
    let no_clone3: BpfProgram = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::ENOSYS).unwrap_or(38)),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| anyhow!("building the clone3 filter: {e}"))?;
    let no_open: BpfProgram = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_openat, Vec::new())]),
        SeccompAction::Allow,
        SeccompAction::Errno(u32::try_from(libc::EACCES).unwrap_or(13)),
        arch,
    )
    .and_then(TryInto::try_into)
    .map_err(|e| anyhow!("building the openat filter: {e}"))?;
    // The clone3 and openat filters first: installing a filter calls prctl(PR_SET_NO_NEW_PRIVS)
    // and seccomp, which the allow list does not allow.
    seccompiler::apply_filter_all_threads(&no_clone3)
        .map_err(|e| anyhow!("installing the clone3 filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&no_open)
        .map_err(|e| anyhow!("installing the openat filter: {e}"))?;
    seccompiler::apply_filter_all_threads(&allow)
        .map_err(|e| anyhow!("installing the seccomp filter: {e}"))?;
    info!(
        syscalls = allowed_syscalls().map_or(0, |r| r.len()),
        "seccomp filter installed (any other system call kills the process)"
    );
    if selftest {
        selftest_forbidden_call();
    }
    Ok(())
}

/// `--sandbox-selftest`: one forbidden call. Under the filter it never returns (SIGSYS).
fn selftest_forbidden_call() {
    warn!("sandbox self-test: calling socket(AF_INET), which the filter forbids");
    match std::net::UdpSocket::bind("127.0.0.1:0") {
        Ok(_) => {
            eprintln!("hostnetd: sandbox self-test: socket(AF_INET) succeeded: no filter");
        }
        Err(e) => {
            eprintln!("hostnetd: sandbox self-test: socket(AF_INET) refused ({e}) but not killed");
        }
    }
    std::process::exit(3);
}

/// `--sandbox-selftest` with `--no-sandbox`: the same call, which must then succeed.
pub(crate) fn selftest_without_sandbox() {
    selftest_forbidden_call();
}

fn target_arch() -> Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| anyhow!("no seccomp filter for this architecture: {e}"))
}

/// The system calls hostnetd makes after set-up, with their argument limits where they matter.
///
/// Found by running the daemon under `strace -f` through the privileged tests (an idle daemon, a
/// served frontend with RX buffers posted and its TUN deleted, garbage and bad memory tables) and
/// a real guest under QEMU, and keeping the calls made after the ready line; plus the calls of
/// paths those runs did not take (TX writes to the TUN, `fstat`/`fcntl(F_GET_SEALS)` of memory
/// table checks, SO_PEERCRED, a panic's abort).
fn allowed_syscalls() -> Result<BTreeMap<i64, Vec<SeccompRule>>> {
    use libc::*;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let any = |r: &mut BTreeMap<i64, Vec<SeccompRule>>, calls: &[i64]| {
        for &c in calls {
            r.insert(c, Vec::new());
        }
    };
    // Allowed here, answered EACCES by the openat filter ([`lock_down`]): nothing is ever
    // opened, but glibc's malloc reads `/proc/sys/vm/overcommit_memory` the first time a
    // thread arena's heap shrinks (threads of ended connections) and copes with a refusal.
    any(&mut rules, &[SYS_openat]);
    // Memory: the allocator, thread stacks, guest memory (MAP_SHARED of the frontend's fds).
    any(&mut rules, &[SYS_brk, SYS_munmap, SYS_mremap, SYS_madvise]);
    // Never executable memory.
    let no_exec = || no_bits(2, u64::try_from(PROT_EXEC).unwrap_or(4));
    rules.insert(SYS_mmap, vec![no_exec()?]);
    rules.insert(SYS_mprotect, vec![no_exec()?]);
    // File descriptors: the TUN, eventfds, sockets, received memory fds.
    any(
        &mut rules,
        &[
            SYS_read,
            SYS_readv,
            SYS_write,
            SYS_writev,
            SYS_close,
            SYS_fstat,
            SYS_newfstatat,
            SYS_statx,
            SYS_lseek,
            SYS_eventfd2,
            SYS_epoll_create1,
            SYS_epoll_ctl,
            SYS_epoll_pwait,
            SYS_timerfd_create,
            SYS_timerfd_settime,
            SYS_timerfd_gettime,
            SYS_ppoll,
        ],
    );
    // The older calls the C library uses where they exist (not on aarch64).
    #[cfg(target_arch = "x86_64")]
    any(&mut rules, &[SYS_epoll_wait, SYS_poll, SYS_unlink]);
    rules.insert(
        SYS_fcntl,
        [
            F_GETFD,
            F_SETFD,
            F_GETFL,
            F_SETFL,
            F_DUPFD_CLOEXEC,
            F_GET_SEALS,
        ]
        .into_iter()
        .map(|cmd| arg_eq(1, cmd))
        .collect::<Result<_>>()?,
    );
    // The TUN: offloads follow what the guest accepts; FIONBIO for std's set_nonblocking;
    // TUNSETQUEUE detaches and attaches the queues of pairs out of use (`--queues`).
    rules.insert(
        SYS_ioctl,
        vec![
            arg_eq(1, TUNSETOFFLOAD as i64)?,
            arg_eq(1, FIONBIO as i64)?,
            arg_eq(1, TUNSETQUEUE as i64)?,
        ],
    );
    // Unix sockets only: the listener, each connection's private relay socket, signal-hook's pair.
    rules.insert(SYS_socket, vec![arg_eq(0, AF_UNIX)?]);
    any(
        &mut rules,
        &[
            SYS_bind,
            SYS_listen,
            SYS_connect,
            SYS_accept4,
            SYS_getsockopt,
            SYS_shutdown,
            SYS_sendmsg,
            SYS_recvmsg,
            SYS_sendto,
            SYS_recvfrom,
        ],
    );
    // Threads: created (clone with CLONE_THREAD; clone3 answers ENOSYS, see `lock_down`), named,
    // synchronised, ended.
    rules.insert(
        SYS_clone,
        vec![
            SeccompRule::new(vec![
                SeccompCondition::new(
                    0,
                    SeccompCmpArgLen::Qword,
                    SeccompCmpOp::MaskedEq(CLONE_THREAD as u64),
                    CLONE_THREAD as u64,
                )
                .map_err(|e| anyhow!("{e}"))?,
            ])
            .map_err(|e| anyhow!("{e}"))?,
        ],
    );
    rules.insert(SYS_clone3, Vec::new());
    rules.insert(SYS_prctl, vec![arg_eq(0, PR_SET_NAME)?]);
    any(
        &mut rules,
        &[
            SYS_futex,
            SYS_set_robust_list,
            SYS_rseq,
            SYS_sigaltstack,
            SYS_rt_sigprocmask,
            SYS_rt_sigreturn,
            SYS_sched_getaffinity,
            SYS_sched_yield,
            SYS_gettid,
            SYS_getpid,
            SYS_getrandom,
            SYS_clock_gettime,
            SYS_clock_nanosleep,
            SYS_nanosleep,
            SYS_exit,
            SYS_exit_group,
        ],
    );
    // A panic that aborts restores SIGABRT's default action and raises it at itself (and
    // nothing else: only this process).
    rules.insert(SYS_rt_sigaction, vec![arg_eq(0, SIGABRT)?]);
    rules.insert(SYS_tgkill, vec![arg_eq(0, i64::from(std::process::id()))?]);
    // The socket file is removed at exit (`unlink` too on x86_64, above).
    any(&mut rules, &[SYS_unlinkat]);
    Ok(rules)
}

/// A rule: argument `idx` (32 bits) equals `v`.
fn arg_eq(idx: u8, v: impl Into<i64>) -> Result<SeccompRule> {
    let v = u64::from(u32::try_from(v.into()).map_err(|_| anyhow!("argument value out of range"))?);
    SeccompRule::new(vec![
        SeccompCondition::new(idx, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, v)
            .map_err(|e| anyhow!("{e}"))?,
    ])
    .map_err(|e| anyhow!("{e}"))
}

/// A rule: argument `idx` has none of `bits` set.
fn no_bits(idx: u8, bits: u64) -> Result<SeccompRule> {
    SeccompRule::new(vec![
        SeccompCondition::new(
            idx,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(bits),
            0,
        )
        .map_err(|e| anyhow!("{e}"))?,
    ])
    .map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filters_compile_for_this_architecture() {
        let rules = allowed_syscalls().unwrap();
        assert!(rules.contains_key(&libc::SYS_recvmsg));
        assert!(!rules.contains_key(&libc::SYS_execve));
        // Allowed by this filter, refused (EACCES) by the openat filter.
        assert!(rules.contains_key(&libc::SYS_openat));
        let prog: BpfProgram = SeccompFilter::new(
            rules,
            SeccompAction::KillProcess,
            SeccompAction::Allow,
            target_arch().unwrap(),
        )
        .and_then(TryInto::try_into)
        .unwrap();
        assert!(!prog.is_empty());
    }

    #[test]
    fn numeric_user_and_group_resolve_without_the_database() {
        let id = resolve_identity("4242", Some("4343")).unwrap();
        assert_eq!((id.uid.as_raw(), id.gid.as_raw()), (4242, 4343));
        assert!(resolve_identity("no-such-user-hostnetd", None).is_err());
    }
}
