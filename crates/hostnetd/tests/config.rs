//! `--config FILE` and `--print-config` through the binary (no privileges: `--print-config`
//! exits before anything is created).

use std::path::PathBuf;
use std::process::{Command, Output};

fn hostnetd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hostnetd"))
        .args(args)
        .output()
        .expect("running hostnetd")
}

/// A file in the temp folder, removed on drop.
struct Temp(PathBuf);

impl Temp {
    fn new(tag: &str, text: &str) -> Self {
        let p =
            std::env::temp_dir().join(format!("hostnetd-config-{}-{tag}.toml", std::process::id()));
        std::fs::write(&p, text).expect("writing the config file");
        Self(p)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn print_config_merges_the_file_and_the_flags_and_reads_back() {
    let file = Temp::new(
        "merge",
        "socket = \"/run/hn.sock\"\nmtu = 9000\nforward = [\"tcp:8022:22\"]\nhost-setup = true\n",
    );
    let out = hostnetd(&["--config", file.path(), "--mtu", "4000", "--print-config"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    for line in [
        "socket = \"/run/hn.sock\"",
        "mtu = 4000",
        "forward = [\"tcp:8022:22\"]",
        "host-setup = true",
        "offload = true",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} not in\n{text}");
    }
    // The printed configuration is a valid --config file that says the same.
    let printed = Temp::new("printed", &text);
    let again = hostnetd(&["--config", printed.path(), "--print-config"]);
    assert!(again.status.success(), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), text);
}

#[test]
fn a_config_file_with_an_unknown_key_is_refused_with_its_name() {
    let file = Temp::new("unknown", "socket = \"/run/hn.sock\"\nhost_setup = true\n");
    let out = hostnetd(&["--config", file.path(), "--print-config"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("unknown field `host_setup`") && err.contains(file.path()),
        "{err}"
    );
}
