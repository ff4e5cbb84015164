//! Criterion benches of hostnet's cores live in `benches/`; this crate has no library code.
