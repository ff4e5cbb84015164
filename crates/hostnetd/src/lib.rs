//! `hostnetd`: a vhost-user-net backend daemon (the binary is a thin `main` around [`run`]).
//!
//! It serves a vhost-user frontend (QEMU `-netdev vhost-user`, Cloud Hypervisor
//! `--net vhost_user=true,socket=...`) on a unix socket with hostnet's device core: the guest's
//! virtqueues are driven by `bridge`'s thread-free TX/RX paths, the gateway's services (ARP, DHCP,
//! ping, DNS forwarder) answer locally, and everything else goes through the `nat` to a TUN device
//! created in the network namespace the daemon runs in (host 100.64.0.1, peer 100.64.0.2 = the NAT's
//! external address; the next free pair of 100.64.0.0/24 if the namespace uses them, see
//! `bridge::choose_pair`).
//!
//! Checksum and TCPv4 segmentation offloads are offered by default (the TUN carries virtio-net
//! headers and the host kernel segments and checksums); `--no-offload` turns them off.
//!
//! Least privilege: once the TUN is open and the socket bound (created 0600), the daemon runs as
//! `--user` (started as root: `nobody`), sets no_new_privs and installs a seccomp allow list
//! (rust-vmm's `seccompiler`); any other system call kills it with SIGSYS. `--no-sandbox` turns
//! this off for debugging. docs/SECURITY.md has the threat model.
//!
//! `--host-setup` makes the namespace route the guest onwards: IPv4 forwarding on and an nftables
//! masquerade of the external address in a table of its own (`ip hostnetd-<pid>`; with IPv6 also
//! IPv6 forwarding and `ip6 hostnetd-<pid>` for NAT66's external address), set up and
//! undone by a helper process started before the privilege drop, which cleans up when the daemon
//! exits however it ends (docs/qemu.md, docs/SECURITY.md). `--config FILE` reads every option from
//! a TOML file (command-line options win); `--print-config` prints the effective configuration.
//!
//! One frontend at a time; when it disconnects the daemon serves the next one. SIGTERM/SIGINT stop
//! it (the socket file is removed); SIGUSR1 logs the connection's counters. If the TUN fails
//! (deleted underneath) the daemon closes the connection, logs an error naming the TUN and exits
//! with status 1; bad arguments, and a `--tun-addr`/`--external-addr` the namespace already
//! uses, exit with 2. vhost-user is a Linux protocol: on other systems the binary only
//! says so. `hostnetd --help` lists the options.
#![deny(missing_docs)]
#![deny(unsafe_code)]

use std::process::ExitCode;

mod args;
#[cfg(target_os = "linux")]
mod control;
#[cfg(target_os = "linux")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(target_os = "linux")]
mod linux;

/// Runs the daemon with the command-line arguments `argv` (the program name left out) and
/// returns its exit status: 0 after SIGTERM/SIGINT or `--help`, 1 on a failure while serving
/// (the TUN gone, set-up failed), 2 on bad arguments.
pub fn run(argv: &[String]) -> ExitCode {
    match args::parse_args(argv) {
        Err(e) => {
            eprintln!("hostnetd: {e}");
            ExitCode::from(2)
        }
        Ok(args::Invocation::Help) => {
            print!("{}", args::USAGE);
            ExitCode::SUCCESS
        }
        Ok(args::Invocation::PrintConfig(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok(args::Invocation::Serve(a)) => serve(*a),
        Ok(args::Invocation::HostSetupHelper(h)) => host_setup_helper(&h),
        Ok(args::Invocation::Ctl(a)) => ctl(&a),
    }
}

#[cfg(target_os = "linux")]
fn ctl(args: &[String]) -> ExitCode {
    control::ctl_main(args)
}

#[cfg(not(target_os = "linux"))]
fn ctl(_: &[String]) -> ExitCode {
    eprintln!("hostnetd: the control socket is Linux only");
    ExitCode::from(2)
}

#[cfg(target_os = "linux")]
fn host_setup_helper(args: &args::HelperArgs) -> ExitCode {
    linux::host_setup::helper_main(args)
}

#[cfg(not(target_os = "linux"))]
fn host_setup_helper(_: &args::HelperArgs) -> ExitCode {
    eprintln!("hostnetd: --host-setup is Linux only");
    ExitCode::from(2)
}

#[cfg(target_os = "linux")]
fn serve(args: args::Args) -> ExitCode {
    match linux::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hostnetd: error: {e:#}");
            // A used or invalid --tun-addr/--external-addr is the caller's to fix, as a bad
            // argument is.
            if e.downcast_ref::<bridge::PairError>()
                .is_some_and(bridge::PairError::is_usage)
                || e.downcast_ref::<linux::host_setup::Refused>().is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn serve(args: args::Args) -> ExitCode {
    eprintln!(
        "hostnetd: vhost-user is Linux only; cannot serve {} on this system",
        args.socket.display()
    );
    ExitCode::FAILURE
}
