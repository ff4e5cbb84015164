//! Errors: [`OpenError`] for opening a device, and the payloads carried inside the
//! `io::Error`s of the data path ([`Truncated`], [`NotIp`], [`InterfaceGone`]).

use std::{fmt, io};

/// Why [`TunBuilder::open`](crate::TunBuilder::open) failed: bad configuration, missing
/// privilege, or which OS step went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The requested interface name does not fit `IFNAMSIZ` (16 bytes with the NUL).
    #[error("interface name {0:?} is longer than {max} bytes", max = crate::name::MAX_NAME_LEN)]
    NameTooLong(String),
    /// The requested interface name is not valid on this OS.
    #[error("invalid interface name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The builder's options contradict each other or are out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    /// The OS refused for lack of privilege (`EPERM`/`EACCES`); `what` says which privilege.
    #[error("permission denied: {what}")]
    PermissionDenied {
        /// The step and the privilege it needs, e.g. "creating a TUN interface needs
        /// CAP_NET_ADMIN".
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// TUN devices are not implemented for this OS.
    #[error("TUN devices are not supported on this platform")]
    Unsupported,
    /// An OS call failed; `step` names it.
    #[error("{step} failed")]
    Os {
        /// The step that failed, e.g. "TUNSETIFF" or "SIOCAIFADDR".
        step: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A received packet did not fit the buffer (the OS cut it, or would have).
///
/// Carried inside an `io::Error` of kind [`io::ErrorKind::InvalidData`] by
/// [`Tun::recv`](crate::Tun::recv) and [`Tun::recv_batch`](crate::Tun::recv_batch); find it with
/// `err.get_ref().and_then(|e| e.downcast_ref::<Truncated>())`. The packet is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated {
    /// The packet's length as far as it is known (from the IP header, or from the OS); `None`
    /// when the buffer was too small to hold even the header that gives the length.
    pub packet_len: Option<usize>,
    /// The buffer's length.
    pub buf_len: usize,
}

/// A packet given to [`Tun::send`](crate::Tun::send) is not an IPv4 or IPv6 packet.
///
/// Carried inside an `io::Error` of kind [`io::ErrorKind::InvalidInput`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotIp {
    /// The first byte of the packet, if any.
    pub first_byte: Option<u8>,
}

/// The interface was deleted while the descriptor was still open (Linux: `EBADFD`).
///
/// Carried inside an `io::Error` of kind [`io::ErrorKind::BrokenPipe`]; every later call
/// fails the same way, so a loop on it ends instead of spinning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceGone;

impl fmt::Display for Truncated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.packet_len {
            Some(len) => write!(
                f,
                "received packet of {len} bytes does not fit the {}-byte buffer (truncated)",
                self.buf_len
            ),
            None => write!(
                f,
                "received packet does not fit the {}-byte buffer (truncated)",
                self.buf_len
            ),
        }
    }
}

impl std::error::Error for Truncated {}

impl fmt::Display for NotIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.first_byte {
            Some(b) => write!(
                f,
                "packet is not IPv4 or IPv6 (version nibble {}, first byte {b:#04x})",
                b >> 4
            ),
            None => f.write_str("packet is empty, not IPv4 or IPv6"),
        }
    }
}

impl std::error::Error for NotIp {}

impl fmt::Display for InterfaceGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the tun interface was deleted underneath the open descriptor")
    }
}

impl std::error::Error for InterfaceGone {}

impl From<Truncated> for io::Error {
    fn from(e: Truncated) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl From<NotIp> for io::Error {
    fn from(e: NotIp) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

impl From<InterfaceGone> for io::Error {
    fn from(e: InterfaceGone) -> Self {
        io::Error::new(io::ErrorKind::BrokenPipe, e)
    }
}

/// Turns the OS error of `step` into an [`OpenError`]: `EPERM`/`EACCES` become
/// [`OpenError::PermissionDenied`] with `what`, everything else [`OpenError::Os`].
pub(crate) fn open_error(step: &'static str, what: &'static str, source: io::Error) -> OpenError {
    match source.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => OpenError::PermissionDenied { what, source },
        _ => OpenError::Os { step, source },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eperm_and_eacces_map_to_permission_denied_naming_the_privilege() {
        for errno in [libc::EPERM, libc::EACCES] {
            let e = open_error(
                "TUNSETIFF",
                "creating a TUN interface needs CAP_NET_ADMIN",
                io::Error::from_raw_os_error(errno),
            );
            match e {
                OpenError::PermissionDenied { what, .. } => assert!(what.contains("CAP_NET_ADMIN")),
                other => panic!("unexpected {other:?}"),
            }
        }
        let e = open_error("TUNSETIFF", "x", io::Error::from_raw_os_error(libc::EBUSY));
        assert!(matches!(
            e,
            OpenError::Os {
                step: "TUNSETIFF",
                ..
            }
        ));
        assert_eq!(e.to_string(), "TUNSETIFF failed");
    }

    #[test]
    fn data_path_errors_keep_their_kind_and_payload() {
        let e = io::Error::from(Truncated {
            packet_len: Some(1500),
            buf_len: 100,
        });
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let t = e.get_ref().and_then(|e| e.downcast_ref::<Truncated>());
        assert_eq!(
            t,
            Some(&Truncated {
                packet_len: Some(1500),
                buf_len: 100
            })
        );
        assert!(e.to_string().contains("1500"));
        let e = io::Error::from(NotIp {
            first_byte: Some(0x12),
        });
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("nibble 1"));
        assert_eq!(
            io::Error::from(InterfaceGone).kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
