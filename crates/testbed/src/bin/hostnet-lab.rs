//! `hostnet-lab`: attach a simulated virtio-net guest in one network namespace to hostnet's
//! bridge and a TUN in another. The command line is a contract: see `docs/hostnet-lab.md`.
#![deny(unsafe_code)]

use std::process::ExitCode;

use testbed::attach::{self, Invocation};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match attach::parse_args(&args) {
        Ok(Invocation::Help) => {
            print!("{}", attach::USAGE);
            return ExitCode::SUCCESS;
        }
        Ok(Invocation::Attach(a)) => attach::run(&a),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace(['\n', '\r'], " ");
            eprintln!("hostnet-lab: error: {msg}");
            ExitCode::from(2)
        }
    }
}
