//! hostnetd's control socket (docs/control.md): request lines from the input (raw bytes, so
//! broken JSON, unknown commands and fields, odd types, huge numbers, forward specs of every
//! shape) through the daemon's request handler (`hostnetd::fuzzing::ControlSocket`, no guest
//! connected). Never a panic; every reply is one JSON object with a boolean `ok` (and an
//! `error` string when it is false); the configured forwards stay unique per protocol, family
//! and external port, however adds and removes interleave.
//!
//! Input: request lines separated by `\n`; a line starting with `+` or `-` becomes a
//! `forward-add` / `forward-remove` of the rest (so the fuzzer reaches the forward logic
//! without spelling JSON).
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let control = hostnetd::fuzzing::ControlSocket::default();
    for raw in input.split(|&b| b == b'\n').take(64) {
        let text = String::from_utf8_lossy(raw);
        let line = match text.as_bytes().first() {
            Some(b'+') => {
                serde_json::json!({"command": "forward-add", "spec": &text[1..]}).to_string()
            }
            Some(b'-') => {
                serde_json::json!({"command": "forward-remove", "spec": &text[1..]}).to_string()
            }
            _ => text.into_owned(),
        };
        let reply = control.handle(&line);
        assert!(!reply.contains('\n'), "a reply is one line: {reply:?}");
        let v: serde_json::Value = serde_json::from_str(&reply).expect("the reply is JSON");
        let ok = v
            .get("ok")
            .and_then(serde_json::Value::as_bool)
            .expect("a boolean ok");
        if !ok {
            assert!(
                v.get("error").is_some_and(serde_json::Value::is_string),
                "{reply}"
            );
        }
    }
    let mut seen = HashSet::new();
    for f in control.forwards() {
        // `proto:ext:...`: one forward per protocol (family included) and external port.
        let mut parts = f.split(':');
        let key = (
            parts.next().map(str::to_owned),
            parts.next().map(str::to_owned),
        );
        assert!(seen.insert(key), "a forward twice: {f}");
    }
});
