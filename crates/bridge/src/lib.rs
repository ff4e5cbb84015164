//! The virtio-net device side. Filled in by the bridge work.
