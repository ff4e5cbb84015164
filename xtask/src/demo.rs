//! `cargo xtask demo`: the main job (a simulated guest gets a lease and reaches a server through our NAT).

/// Runs the demo.
pub(crate) fn run(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not built yet (issue 5)")
}
