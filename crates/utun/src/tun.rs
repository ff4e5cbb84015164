//! [`Tun`]: an open TUN device (one queue).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use crate::{TunBuilder, error::Truncated, sys};

/// An open TUN device (on Linux: one queue of it). Reads and writes whole IP packets.
///
/// Dropping the last `Tun` of an interface closes its descriptor, and the OS removes the
/// interface. All methods take `&self`, so one `Tun` can be shared by a reader and a writer
/// thread (`Tun` is `Send + Sync` because its fields are).
#[derive(Debug)]
pub struct Tun {
    inner: sys::Device,
    /// A truncation seen inside `recv_batch` after some good packets, reported by the next
    /// receive call (0 = none; see `encode_truncation`).
    pending: AtomicU64,
}

impl Tun {
    /// A [`TunBuilder`] with default options.
    pub fn builder() -> TunBuilder {
        TunBuilder::new()
    }

    /// Receives one packet into `buf` and returns its length.
    ///
    /// The packet is a whole IP packet (Linux TAP: an Ethernet frame; with `vnet_hdr`: a
    /// 12-byte virtio-net header, then the packet). Size `buf` for the MTU plus headers.
    ///
    /// # Errors
    /// `WouldBlock` on a non-blocking device with nothing queued; `InvalidData` carrying
    /// [`Truncated`] if the packet did not fit `buf` (the packet is lost, never silently
    /// cut); `BrokenPipe` carrying [`InterfaceGone`](crate::InterfaceGone) if the interface
    /// was deleted; other OS errors as they come.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.take_pending()?;
        self.inner.recv(buf)
    }

    /// Sends one whole packet; returns the bytes written (the packet's length).
    ///
    /// # Errors
    /// `InvalidInput` carrying [`NotIp`](crate::NotIp) if the packet is not IPv4/IPv6 (TUN
    /// mode); `WouldBlock` if the OS queue is full on a non-blocking device;
    /// [`InterfaceGone`](crate::InterfaceGone) as for `recv`.
    pub fn send(&self, packet: &[u8]) -> io::Result<usize> {
        self.inner.send(packet)
    }

    /// Receives up to `min(bufs.len(), lens.len())` packets, one per buffer, with as few
    /// syscalls as the OS allows (Linux and macOS: one read per packet, no extra poll).
    /// Waits for the first packet as `recv` does (unless non-blocking), then takes only what
    /// is already queued. Returns the number of packets; `lens[i]` is the length of the
    /// packet in `bufs[i]`.
    ///
    /// # Errors
    /// As [`recv`](Self::recv) for the first packet. A later failure ends the batch early
    /// with the packets so far; a truncated packet there is reported by the next call.
    pub fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        self.take_pending()?;
        let mut slots = bufs.iter_mut().zip(lens.iter_mut());
        let Some((first, first_len)) = slots.next() else {
            return Ok(0);
        };
        *first_len = self.inner.recv(first)?;
        let mut count = 1;
        for (buf, len) in slots {
            match self.inner.recv_nowait(buf) {
                Ok(n) => {
                    *len = n;
                    count += 1;
                }
                Err(e) => {
                    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<Truncated>()) {
                        self.pending.store(encode_truncation(*t), Ordering::Relaxed);
                    }
                    break;
                }
            }
        }
        Ok(count)
    }

    /// Sends the packets in order, one write each; returns how many were sent. Stops at the
    /// first failure after at least one packet (the caller resends from there, and that
    /// call reports the error).
    ///
    /// # Errors
    /// As [`send`](Self::send), when the first packet fails.
    pub fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize> {
        let mut count = 0;
        for packet in packets {
            match self.inner.send(packet) {
                Ok(_) => count += 1,
                Err(e) if count == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(count)
    }

    /// Sends one whole packet made of `head` followed by the bytes of `tail` (guest memory,
    /// e.g. the payload of a virtio chain), in one `writev`: the kernel copies straight from
    /// the slices, nothing is copied in userspace. `head` must hold at least the start of the
    /// IP packet (TUN mode: its version is checked as for [`send`](Self::send); with
    /// `vnet_hdr`, after the 12-byte header). Returns the bytes written.
    ///
    /// # Errors
    /// As [`send`](Self::send); `InvalidInput` when `tail` has more than [`MAX_GATHER`](crate::MAX_GATHER)
    /// slices.
    #[cfg(feature = "vm-memory")]
    pub fn send_gather<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &[u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        self.inner.send_gather(head, tail)
    }

    /// Receives one packet into `head`, then on into the guest-memory slices of `tail` in
    /// order (one `readv`; macOS: one `recvmsg`), and returns its length: the kernel copies
    /// straight into guest memory. The bytes stored in each slice are marked in its dirty
    /// bitmap (all of them if the read failed), as vm-memory's own reads do. `head` must hold
    /// at least the headers (with `vnet_hdr` 12 bytes, in TAP mode 14, then 40: the longest
    /// fixed IP header), so that a cut can be told from a whole packet.
    ///
    /// # Errors
    /// As [`recv`](Self::recv) (a packet longer than `head` and `tail` together is
    /// reported [`Truncated`](crate::Truncated), never silently cut); `InvalidInput` when
    /// `head` is shorter than the headers or `tail` has more than
    /// [`MAX_GATHER`](crate::MAX_GATHER) slices.
    #[cfg(feature = "vm-memory")]
    pub fn recv_scatter<B: vm_memory::bitmap::BitmapSlice>(
        &self,
        head: &mut [u8],
        tail: &[vm_memory::VolatileSlice<'_, B>],
    ) -> io::Result<usize> {
        self.take_pending()?;
        self.inner.recv_scatter(head, tail)
    }

    /// The interface's name (e.g. `tun0`, `utun3`).
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The interface's MTU as set (or found) when it was opened.
    pub fn mtu(&self) -> u32 {
        self.inner.mtu()
    }

    /// Switches the descriptor between blocking and non-blocking.
    ///
    /// # Errors
    /// The `fcntl` error.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        self.inner.set_nonblocking(nonblocking)
    }

    /// Waits until a packet can be read or `timeout` passes (`None`: no limit); returns
    /// whether the device is readable (a pending error also counts: the next `recv` reports
    /// it).
    ///
    /// # Errors
    /// The `poll` error.
    pub fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        self.inner.wait_readable(timeout)
    }

    pub(crate) fn from_device(inner: sys::Device) -> Self {
        Self {
            inner,
            pending: AtomicU64::new(0),
        }
    }

    #[cfg(target_os = "linux")]
    pub(crate) fn device(&self) -> &sys::Device {
        &self.inner
    }

    fn take_pending(&self) -> io::Result<()> {
        if self.pending.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        match decode_truncation(self.pending.swap(0, Ordering::Relaxed)) {
            Some(t) => Err(t.into()),
            None => Ok(()),
        }
    }
}

impl AsFd for Tun {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl AsRawFd for Tun {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.as_fd().as_raw_fd()
    }
}

/// Packs a [`Truncated`] into a non-zero `u64`: bit 63 set, bits 32..63 the packet length
/// plus one (0 = unknown), bits 0..32 the buffer length (saturated).
fn encode_truncation(t: Truncated) -> u64 {
    let len = t.packet_len.map_or(0, |l| {
        u64::try_from(l).unwrap_or(u64::MAX).saturating_add(1)
    });
    let buf = u64::try_from(t.buf_len)
        .unwrap_or(u64::MAX)
        .min(u64::from(u32::MAX));
    PENDING_BIT | (len.min(LEN_MAX) << 32) | buf
}

fn decode_truncation(v: u64) -> Option<Truncated> {
    if v & PENDING_BIT == 0 {
        return None;
    }
    let len = (v >> 32) & LEN_MAX;
    Some(Truncated {
        packet_len: len.checked_sub(1).and_then(|l| usize::try_from(l).ok()),
        buf_len: usize::try_from(v & u64::from(u32::MAX)).unwrap_or(usize::MAX),
    })
}

const PENDING_BIT: u64 = 1 << 63;
const LEN_MAX: u64 = (1 << 31) - 1;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_truncation_round_trips() {
        for t in [
            Truncated {
                packet_len: Some(1500),
                buf_len: 64,
            },
            Truncated {
                packet_len: None,
                buf_len: 2,
            },
            Truncated {
                packet_len: Some(0),
                buf_len: 0,
            },
        ] {
            assert_eq!(decode_truncation(encode_truncation(t)), Some(t));
        }
        assert_eq!(decode_truncation(0), None);
    }

    #[test]
    fn tun_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tun>();
    }
}
