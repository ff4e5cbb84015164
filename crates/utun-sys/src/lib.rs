//! Raw declarations for TUN devices. Filled in by the utun-sys work.
#![no_std]
