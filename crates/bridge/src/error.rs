//! The crate's error type.

use std::io;
use std::sync::Arc;

/// Errors from the device core and the threaded driver.
///
/// Guest misbehaviour is never an error: bad descriptor chains and bad frames are counted
/// ([`crate::DropCause`]) and skipped. Errors mean the queue or the host link can no longer be
/// used, or a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A virtqueue operation failed (for example the driver published an available index that
    /// is more than a queue size ahead: the device then needs a reset).
    #[error("virtqueue operation failed")]
    Queue(#[from] virtio_queue::Error),
    /// Guest memory could not be accessed.
    #[error("guest memory access failed")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// An OS call failed (eventfd, epoll, thread spawn) or the host link failed.
    #[error("i/o failed")]
    Io(#[from] io::Error),
    /// A configuration value was refused; the string names the field and the rule.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The NAT refused its configuration.
    #[error("invalid nat configuration: {0:?}")]
    NatConfig(nat::ConfigError),
    /// The NAT refused a port forward or redirect.
    #[error("nat rule refused: {0:?}")]
    NatRule(nat::RuleError),
    /// The host link failed (for example the TUN device was deleted); the pipeline stopped.
    #[error("host link failed")]
    HostLink(#[source] io::Error),
    /// The driver violated the virtio protocol on queue `queue`; the device needs a reset
    /// (the embedder sets DEVICE_NEEDS_RESET in the device status).
    #[error("queue {queue} is broken; the device needs a reset")]
    NeedsReset {
        /// The queue index (0 = RX, 1 = TX).
        queue: u16,
    },
    /// An event for a queue pair the port does not use (the driver's
    /// `VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET` left it out, or set fewer pairs meanwhile): nothing
    /// was done.
    #[error("queue pair {0} is not in use")]
    PairNotInUse(usize),
    /// A queue index other than 0 (RX) or 1 (TX).
    #[error("no queue with index {0}")]
    NoSuchQueue(u16),
    /// A pipeline thread panicked (a bug: please report it).
    #[error("pipeline thread {0:?} panicked")]
    ThreadPanicked(&'static str),
    /// The pipeline stopped earlier because of this error.
    #[error("the pipeline failed")]
    Failed(#[source] Arc<Error>),
    /// The threaded driver cannot poll this host link (it has no readiness descriptor); the
    /// device core can still be driven by the embedder.
    #[error("the host link has no readiness descriptor for the threaded driver")]
    Unsupported,
}
