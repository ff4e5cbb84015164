//! The `hostnetd` binary: see the library's documentation ([`hostnetd::run`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    hostnetd::run(&argv)
}
