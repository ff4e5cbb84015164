//! Namespaces and a simulated guest for tests. Filled in by the testbed work.
