//! `hostnetd`: a vhost-user-net backend daemon (being built; see issue 7).
fn main() {}
