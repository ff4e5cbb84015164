//! A safe TUN device. Filled in by the utun work.
