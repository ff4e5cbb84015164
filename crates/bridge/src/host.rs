//! [`HostLink`]: where the bridge sends and receives IP packets (a TUN device, or the
//! in-memory [`MemoryLink`] pair for tests and benches).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vm_memory::{GuestAddress, GuestMemory};

/// The host side of the bridge: whole IPv4 packets, in batches.
///
/// Both pipeline threads use one link through `&self` (the RX thread receives, the TX thread
/// sends), hence `Send + Sync`.
pub trait HostLink: Send + Sync {
    /// Sends `packets` in order; returns how many the link took. The rest were not sent
    /// (the link's queue is full) and are counted as dropped by the caller.
    ///
    /// # Errors
    ///
    /// `WouldBlock` means none could be sent right now (counted as drops); `InvalidInput` or
    /// `InvalidData` means the first packet was refused (counted); any other error means the
    /// link is gone and the pipeline stops.
    fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize>;

    /// Receives up to `min(bufs.len(), lens.len())` packets without blocking; `lens[i]` is
    /// the length of the packet in `bufs[i]`. Returns 0 or `WouldBlock` when none is
    /// queued. Fewer than asked means the link had no more right then (or an error stopped
    /// the batch and will be reported by the next call): the driver then waits for
    /// [`HostLink::readiness_fd`] before reading again.
    ///
    /// # Errors
    ///
    /// `WouldBlock`/`Interrupted`: nothing now. `InvalidData`: one packet was lost (did not
    /// fit). Anything else: the link is gone.
    fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize>;

    /// A descriptor that polls readable when [`HostLink::recv_batch`] has packets (level
    /// triggered). The threaded driver needs one; a foreign event loop may poll it too.
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>>;

    /// Called once by the threaded driver before use: puts the link in non-blocking mode.
    ///
    /// # Errors
    ///
    /// The OS error.
    fn prepare(&self) -> io::Result<()> {
        Ok(())
    }

    /// Length of the `virtio_net_hdr_v1` every packet carries in front, both ways: 12 for a
    /// link that takes checksum and GSO requests (a Linux TUN with `IFF_VNET_HDR`), 0 (the
    /// default) for plain IP packets. Offloads ([`crate::BridgeConfig::offloads`]) need 12.
    fn vnet_hdr_len(&self) -> usize {
        0
    }

    /// Which offloads the link may use towards the bridge ([`LinkOffloads`]: partial
    /// checksums, TCPv4 and TCPv6 super-packets). The bridge calls it at activation with what
    /// the guest accepted (GUEST_CSUM, GUEST_TSO4, GUEST_TSO6).
    ///
    /// # Errors
    ///
    /// `Unsupported` (the default) when any is asked of a link without them; the OS error.
    fn set_offloads(&self, offloads: LinkOffloads) -> io::Result<()> {
        if offloads.any() {
            Err(io::Error::from(io::ErrorKind::Unsupported))
        } else {
            Ok(())
        }
    }

    /// Whether [`HostLink::send_gather`] sends (`false`, the default: it returns
    /// `Unsupported`). The bridge then leaves the payload of a large TCP frame in guest
    /// memory and has the link gather it, instead of copying the frame out first.
    fn gathers(&self) -> bool {
        false
    }

    /// Sends one packet made of `head` (with the link's virtio-net header in front, as for
    /// [`HostLink::send_batch`]) followed by the guest-memory bytes of `tail`, in order, and
    /// returns the bytes sent. A TUN device does it in one `writev`: the kernel copies the
    /// payload straight out of guest memory. The link must be done with `tail` when the call
    /// returns: the bridge gives the guest its buffers back right after.
    ///
    /// Generic over the guest memory, so only callable on a sized link (`dyn HostLink` and
    /// `Arc<T>` links do not gather: the bridge copies for them).
    ///
    /// # Errors
    ///
    /// As [`HostLink::send_batch`] for one packet; `Unsupported` (the default) when the link
    /// does not gather; `InvalidInput` when the tail has more pieces than the link takes or
    /// lies outside `mem` (the bridge then copies the packet and sends it whole).
    fn send_gather<M: GuestMemory>(
        &self,
        mem: &M,
        head: &[u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize>
    where
        Self: Sized,
    {
        let _ = (mem, head, tail);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// Whether [`HostLink::recv_scatter`] receives (`false`, the default: it returns
    /// `Unsupported`). The bridge then has the link read a large packet's payload straight
    /// into the guest's RX buffers, instead of into its own buffer and copying it on.
    fn scatters(&self) -> bool {
        false
    }

    /// Receives one packet (without blocking): its first `head.len()` bytes (the link's
    /// virtio-net header in front, as for [`HostLink::recv_batch`]) into `head`, the rest on
    /// into the guest memory of `tail`, in order; returns the packet's length. A TUN device
    /// does it in one `readv`: the kernel copies the payload straight into guest memory.
    ///
    /// Generic over the guest memory, so only callable on a sized link (`dyn HostLink` and
    /// `Arc<T>` links do not scatter: the bridge copies for them).
    ///
    /// # Errors
    ///
    /// As [`HostLink::recv_batch`] for one packet (`InvalidData`: it was longer than `head`
    /// and `tail` together, and lost); `Unsupported` (the default) when the link does not
    /// scatter; `InvalidInput` when the tail has more pieces than the link takes or lies
    /// outside `mem` (nothing was read: the bridge then reads into its own buffer).
    fn recv_scatter<M: GuestMemory>(
        &self,
        mem: &M,
        head: &mut [u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize>
    where
        Self: Sized,
    {
        let _ = (mem, head, tail);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

/// A piece of a packet that lies in guest memory ([`HostLink::send_gather`],
/// [`HostLink::recv_scatter`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestSegment {
    /// Where it starts.
    pub addr: GuestAddress,
    /// How many bytes.
    pub len: u32,
}

/// [`HostLink::send_gather`] and [`HostLink::recv_scatter`] through a trait object: the
/// engines hold the link as `&dyn HostLink`, whose generic methods cannot be called, so a
/// driver with a sized link passes this beside it ([`Gathering`]: the link and the guest
/// memory it works on).
pub(crate) trait Gather {
    /// [`HostLink::send_gather`].
    fn gather(&self, head: &[u8], tail: &[GuestSegment]) -> io::Result<usize>;

    /// [`HostLink::recv_scatter`].
    fn scatter(&self, head: &mut [u8], tail: &[GuestSegment]) -> io::Result<usize>;

    /// Copies the bytes of `tail` into `buf` (as long as they are); `false` if they are not
    /// all in guest memory.
    fn copy_tail(&self, tail: &[GuestSegment], buf: &mut [u8]) -> bool;

    /// Writes `bytes` into the guest memory of `segs`, in order (as far as either goes);
    /// `false` if the segments are not all in guest memory.
    fn write_segments(&self, segs: &[GuestSegment], bytes: &[u8]) -> bool;
}

/// [`HostLink::send_gather`] and [`HostLink::recv_scatter`] for guest memory of type `M`,
/// callable through a trait object (the pipeline's threads keep their link so, built where
/// the link's type is known).
pub(crate) trait GatherLink<M>: Send + Sync {
    /// [`HostLink::send_gather`].
    fn gather_from(&self, mem: &M, head: &[u8], tail: &[GuestSegment]) -> io::Result<usize>;

    /// [`HostLink::recv_scatter`].
    fn scatter_into(&self, mem: &M, head: &mut [u8], tail: &[GuestSegment]) -> io::Result<usize>;
}

impl<M: GuestMemory, H: HostLink> GatherLink<M> for H {
    fn gather_from(&self, mem: &M, head: &[u8], tail: &[GuestSegment]) -> io::Result<usize> {
        self.send_gather(mem, head, tail)
    }

    fn scatter_into(&self, mem: &M, head: &mut [u8], tail: &[GuestSegment]) -> io::Result<usize> {
        self.recv_scatter(mem, head, tail)
    }
}

/// A link that gathers and the guest memory its gathered packets come from ([`Gather`]).
pub(crate) struct Gathering<'a, M, H: ?Sized> {
    pub(crate) mem: &'a M,
    pub(crate) link: &'a H,
}

impl<M: GuestMemory, H: GatherLink<M> + ?Sized> Gather for Gathering<'_, M, H> {
    fn gather(&self, head: &[u8], tail: &[GuestSegment]) -> io::Result<usize> {
        self.link.gather_from(self.mem, head, tail)
    }

    fn scatter(&self, head: &mut [u8], tail: &[GuestSegment]) -> io::Result<usize> {
        self.link.scatter_into(self.mem, head, tail)
    }

    fn copy_tail(&self, tail: &[GuestSegment], buf: &mut [u8]) -> bool {
        let mut at = 0;
        for seg in tail {
            let end = at + seg.len as usize;
            let Some(dst) = buf.get_mut(at..end) else {
                return false;
            };
            if crate::gmem::read(self.mem, seg.addr, dst).is_err() {
                return false;
            }
            at = end;
        }
        true
    }

    fn write_segments(&self, segs: &[GuestSegment], bytes: &[u8]) -> bool {
        let mut at = 0;
        for seg in segs {
            if at == bytes.len() {
                break;
            }
            let n = (seg.len as usize).min(bytes.len() - at);
            if crate::gmem::write(self.mem, seg.addr, &bytes[at..at + n]).is_err() {
                return false;
            }
            at += n;
        }
        true
    }
}

/// The guest-memory slices of `tail` in order (a segment across two regions gives two),
/// handed to `f`; `InvalidInput` when they are more than `N` or outside `mem`.
#[cfg(feature = "utun")]
fn with_slices<M: GuestMemory, R, const N: usize>(
    mem: &M,
    tail: &[GuestSegment],
    read: vm_memory::Permissions,
    f: impl FnOnce(&[vm_memory::VolatileSlice<'_, vm_memory::bitmap::BS<'_, M::Bitmap>>]) -> R,
) -> io::Result<R> {
    let invalid = || io::Error::from(io::ErrorKind::InvalidInput);
    let mut pieces = tail.iter().filter(|s| s.len > 0);
    let Some(first) = pieces.next() else {
        return Ok(f(&[]));
    };
    let mut slices = mem
        .get_slices(first.addr, first.len as usize, read)
        .map_err(|_| invalid())?;
    let Some(Ok(s0)) = slices.next() else {
        return Err(invalid());
    };
    let mut out: [_; N] = std::array::from_fn(|_| s0.clone());
    let mut n = 1;
    let mut put = |s| {
        let slot = out.get_mut(n).ok_or_else(invalid)?;
        *slot = s;
        n += 1;
        Ok::<(), io::Error>(())
    };
    for s in slices {
        put(s.map_err(|_| invalid())?)?;
    }
    for seg in pieces {
        for s in mem
            .get_slices(seg.addr, seg.len as usize, read)
            .map_err(|_| invalid())?
        {
            put(s.map_err(|_| invalid())?)?;
        }
    }
    Ok(f(&out[..n]))
}

/// The offloads a host link may use towards the bridge ([`HostLink::set_offloads`]); a
/// TSO bit implies `csum`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkOffloads {
    /// Partial checksums (`TUN_F_CSUM`).
    pub csum: bool,
    /// TCPv4 super-packets (`TUN_F_TSO4`).
    pub tso4: bool,
    /// TCPv6 super-packets (`TUN_F_TSO6`).
    pub tso6: bool,
}

impl LinkOffloads {
    /// None at all.
    pub const NONE: LinkOffloads = LinkOffloads {
        csum: false,
        tso4: false,
        tso6: false,
    };

    /// Whether any offload is on.
    pub fn any(&self) -> bool {
        self.csum || self.tso4 || self.tso6
    }

    /// One step fewer, for a link that refused these: TCPv6 super-packets first, then
    /// TCPv4 ones, then partial checksums.
    #[must_use]
    pub fn fewer(self) -> LinkOffloads {
        if self.tso6 {
            LinkOffloads {
                tso6: false,
                ..self
            }
        } else if self.tso4 {
            LinkOffloads {
                tso4: false,
                ..self
            }
        } else {
            LinkOffloads::NONE
        }
    }
}

/// Forwards everything but gathering: `send_gather` is generic, and `T` may be unsized, so an
/// `Arc` link answers `gathers() == false` and the bridge copies (the threaded driver asks the
/// link inside the `Arc` itself).
impl<T: HostLink + ?Sized> HostLink for Arc<T> {
    fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize> {
        (**self).send_batch(packets)
    }
    fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        (**self).recv_batch(bufs, lens)
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        (**self).readiness_fd()
    }
    fn prepare(&self) -> io::Result<()> {
        (**self).prepare()
    }
    fn vnet_hdr_len(&self) -> usize {
        (**self).vnet_hdr_len()
    }
    fn set_offloads(&self, offloads: LinkOffloads) -> io::Result<()> {
        (**self).set_offloads(offloads)
    }
}

/// `utun::Tun` as a host link (feature `utun`): the descriptor is switched to non-blocking by
/// [`HostLink::prepare`].
#[cfg(feature = "utun")]
impl HostLink for utun::Tun {
    fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize> {
        utun::Tun::send_batch(self, packets)
    }
    fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        utun::Tun::recv_batch(self, bufs, lens)
    }
    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(std::os::fd::AsFd::as_fd(self))
    }
    fn prepare(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    #[cfg(target_os = "linux")]
    fn vnet_hdr_len(&self) -> usize {
        utun::Tun::vnet_hdr_len(self)
    }
    #[cfg(target_os = "linux")]
    fn set_offloads(&self, offloads: LinkOffloads) -> io::Result<()> {
        let mut flags = 0;
        if offloads.any() {
            flags |= utun::linux::TUN_F_CSUM;
        }
        if offloads.tso4 {
            flags |= utun::linux::TUN_F_TSO4;
        }
        if offloads.tso6 {
            flags |= utun::linux::TUN_F_TSO6;
        }
        if flags == 0 && self.vnet_hdr_len() == 0 {
            return Ok(());
        }
        self.set_offload(flags)
    }
    fn gathers(&self) -> bool {
        true
    }
    fn send_gather<M: GuestMemory>(
        &self,
        mem: &M,
        head: &[u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize> {
        with_slices::<M, _, { utun::MAX_GATHER }>(mem, tail, vm_memory::Permissions::Read, |s| {
            utun::Tun::send_gather(self, head, s)
        })?
    }
    fn scatters(&self) -> bool {
        true
    }
    fn recv_scatter<M: GuestMemory>(
        &self,
        mem: &M,
        head: &mut [u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize> {
        with_slices::<M, _, { utun::MAX_GATHER }>(mem, tail, vm_memory::Permissions::Write, |s| {
            utun::Tun::recv_scatter(self, head, s)
        })?
    }
}

/// One end of an in-memory host link pair. What one end sends, the other receives. Each
/// direction is a bounded queue of reused buffers (no allocation once warm); packets sent
/// to a full queue are refused and counted. Each end has a readiness descriptor (one end of
/// a non-blocking socket pair that holds a byte while packets are queued).
#[derive(Debug)]
pub struct MemoryLink {
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
    vnet_hdr: bool,
    offloads: AtomicU8,
    gather: bool,
}

#[derive(Debug)]
struct Pipe {
    inner: Mutex<PipeInner>,
    ready_r: UnixStream,
    ready_w: UnixStream,
}

#[derive(Debug)]
struct PipeInner {
    queue: VecDeque<Vec<u8>>,
    free: Vec<Vec<u8>>,
    capacity: usize,
    refused: u64,
    closed: bool,
    /// Whether the readiness socket holds a byte; changes only on empty ↔ non-empty.
    signaled: bool,
}

impl MemoryLink {
    /// Two connected ends; each direction holds at most `capacity` packets.
    ///
    /// # Errors
    ///
    /// The eventfd could not be created (Linux).
    pub fn pair(capacity: usize) -> io::Result<(MemoryLink, MemoryLink)> {
        Self::pair_inner(capacity, false)
    }

    /// As [`MemoryLink::pair`], but every packet carries a 12-byte virtio-net header in front
    /// ([`HostLink::vnet_hdr_len`] is 12 and [`HostLink::set_offloads`] is accepted), as a
    /// TUN with `IFF_VNET_HDR` does: for testing offloads without a TUN.
    ///
    /// # Errors
    ///
    /// As [`MemoryLink::pair`].
    pub fn pair_with_vnet_hdr(capacity: usize) -> io::Result<(MemoryLink, MemoryLink)> {
        Self::pair_inner(capacity, true)
    }

    fn pair_inner(capacity: usize, vnet_hdr: bool) -> io::Result<(MemoryLink, MemoryLink)> {
        let a = Arc::new(Pipe::new(capacity)?);
        let b = Arc::new(Pipe::new(capacity)?);
        Ok((
            MemoryLink {
                rx: a.clone(),
                tx: b.clone(),
                vnet_hdr,
                offloads: AtomicU8::new(0),
                gather: true,
            },
            MemoryLink {
                rx: b,
                tx: a,
                vnet_hdr,
                offloads: AtomicU8::new(0),
                gather: true,
            },
        ))
    }

    /// Whether this end takes packets gathered from guest memory ([`HostLink::send_gather`])
    /// and hands packets scattered into it ([`HostLink::recv_scatter`]): on by default, like a
    /// TUN device; off makes the bridge copy every frame out first and in after.
    #[must_use]
    pub fn with_gather(mut self, on: bool) -> Self {
        self.gather = on;
        self
    }

    /// The offloads last set with [`HostLink::set_offloads`].
    pub fn offloads(&self) -> LinkOffloads {
        let v = self.offloads.load(Ordering::Relaxed);
        LinkOffloads {
            csum: v & 1 != 0,
            tso4: v & 2 != 0,
            tso6: v & 4 != 0,
        }
    }

    /// Sends one packet to the other end; `false` if its queue is full.
    pub fn send(&self, packet: &[u8]) -> bool {
        self.send_batch(&[packet]).map(|n| n == 1).unwrap_or(false)
    }

    /// Receives one packet, if any.
    pub fn recv(&self) -> Option<Vec<u8>> {
        let mut g = self.rx.lock();
        let p = g.queue.pop_front();
        self.rx.settle(&mut g);
        p
    }

    /// Number of packets waiting at this end.
    pub fn pending(&self) -> usize {
        self.rx.lock().queue.len()
    }

    /// How many packets this end could not send because the other end's queue was full.
    pub fn refused(&self) -> u64 {
        self.tx.lock().refused
    }

    /// Makes both directions fail with `BrokenPipe` (simulates a deleted TUN device).
    pub fn close(&self) {
        for p in [&self.rx, &self.tx] {
            let mut g = p.lock();
            g.closed = true;
            if !g.signaled {
                g.signaled = true;
                p.notify();
            }
        }
    }
}

impl HostLink for MemoryLink {
    fn send_batch(&self, packets: &[&[u8]]) -> io::Result<usize> {
        let mut g = self.tx.lock();
        if g.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let mut n = 0;
        for p in packets {
            if g.queue.len() >= g.capacity {
                g.refused += (packets.len() - n) as u64;
                break;
            }
            let mut buf = g.free.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(p);
            g.queue.push_back(buf);
            n += 1;
        }
        self.tx.settle(&mut g);
        Ok(n)
    }

    fn recv_batch(&self, bufs: &mut [&mut [u8]], lens: &mut [usize]) -> io::Result<usize> {
        let mut g = self.rx.lock();
        if g.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        let mut n = 0;
        let mut truncated = false;
        for (buf, len) in bufs.iter_mut().zip(lens.iter_mut()) {
            let Some(p) = g.queue.pop_front() else { break };
            if p.len() > buf.len() {
                if n == 0 {
                    // Lost, like a TUN device's truncated read.
                    truncated = true;
                    g.free.push(p);
                } else {
                    // Reported (and lost) by the next call.
                    g.queue.push_front(p);
                }
                break;
            }
            buf[..p.len()].copy_from_slice(&p);
            *len = p.len();
            g.free.push(p);
            n += 1;
        }
        self.rx.settle(&mut g);
        drop(g);
        if truncated && n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "packet larger than the buffer",
            ));
        }
        Ok(n)
    }

    fn vnet_hdr_len(&self) -> usize {
        if self.vnet_hdr {
            crate::device::VIRTIO_NET_HDR_LEN
        } else {
            0
        }
    }

    fn set_offloads(&self, o: LinkOffloads) -> io::Result<()> {
        if !self.vnet_hdr && o.any() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.offloads.store(
            u8::from(o.csum) | u8::from(o.tso4) << 1 | u8::from(o.tso6) << 2,
            Ordering::Relaxed,
        );
        Ok(())
    }

    fn readiness_fd(&self) -> Option<BorrowedFd<'_>> {
        Some(self.rx.ready_r.as_fd())
    }

    fn gathers(&self) -> bool {
        self.gather
    }

    fn send_gather<M: GuestMemory>(
        &self,
        mem: &M,
        head: &[u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize> {
        if !self.gather {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut g = self.tx.lock();
        if g.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        if g.queue.len() >= g.capacity {
            g.refused += 1;
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        }
        let mut buf = g.free.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(head);
        for seg in tail {
            let at = buf.len();
            buf.resize(at + seg.len as usize, 0);
            if crate::gmem::read(mem, seg.addr, &mut buf[at..]).is_err() {
                g.free.push(buf);
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            }
        }
        let n = buf.len();
        g.queue.push_back(buf);
        self.tx.settle(&mut g);
        Ok(n)
    }

    fn scatters(&self) -> bool {
        self.gather
    }

    fn recv_scatter<M: GuestMemory>(
        &self,
        mem: &M,
        head: &mut [u8],
        tail: &[GuestSegment],
    ) -> io::Result<usize> {
        if !self.gather {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let mut g = self.rx.lock();
        if g.closed {
            return Err(io::Error::from(io::ErrorKind::BrokenPipe));
        }
        if !tail
            .iter()
            .all(|s| mem.check_range(s.addr, s.len as usize, vm_memory::Permissions::Write))
        {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let room = head.len() + tail.iter().map(|s| s.len as usize).sum::<usize>();
        let Some(p) = g.queue.pop_front() else {
            return Err(io::Error::from(io::ErrorKind::WouldBlock));
        };
        let res = if p.len() > room {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "packet larger than the buffers",
            ))
        } else {
            let k = p.len().min(head.len());
            head[..k].copy_from_slice(&p[..k]);
            let mut at = k;
            for seg in tail {
                if at == p.len() {
                    break;
                }
                let n = (seg.len as usize).min(p.len() - at);
                if crate::gmem::write(mem, seg.addr, &p[at..at + n]).is_err() {
                    break;
                }
                at += n;
            }
            Ok(p.len())
        };
        g.free.push(p);
        self.rx.settle(&mut g);
        res
    }
}

impl Pipe {
    fn new(capacity: usize) -> io::Result<Self> {
        let (ready_r, ready_w) = UnixStream::pair()?;
        ready_r.set_nonblocking(true)?;
        ready_w.set_nonblocking(true)?;
        Ok(Pipe {
            inner: Mutex::new(PipeInner {
                queue: VecDeque::with_capacity(capacity),
                free: Vec::new(),
                capacity,
                refused: 0,
                closed: false,
                signaled: false,
            }),
            ready_r,
            ready_w,
        })
    }

    fn lock(&self) -> MutexGuard<'_, PipeInner> {
        // A poisoned lock only means a test thread panicked while holding it; the queue is
        // still consistent (every operation leaves it valid).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn notify(&self) {
        // A full socket buffer already means "readable"; the error is irrelevant.
        let _ = (&self.ready_w).write(&[1]);
    }

    fn clear_ready(&self) {
        let mut sink = [0u8; 64];
        // Only one byte is ever outstanding (see `settle`); the bound is belt and braces.
        for _ in 0..16 {
            match (&self.ready_r).read(&mut sink) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }

    /// Makes the readiness socket match the queue (called with the lock held): a syscall
    /// only when the queue turns empty or non-empty.
    fn settle(&self, g: &mut PipeInner) {
        let want = !g.queue.is_empty() || g.closed;
        if want != g.signaled {
            g.signaled = want;
            if want {
                self.notify();
            } else {
                self.clear_ready();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_link_pair_is_bounded_and_closable() {
        let (a, b) = MemoryLink::pair(2).unwrap();
        assert_eq!(a.send_batch(&[b"one", b"two", b"three"]).unwrap(), 2);
        assert_eq!(a.refused(), 1);
        assert_eq!(b.pending(), 2);
        let mut x = [0u8; 8];
        let mut y = [0u8; 2];
        let mut lens = [0usize; 2];
        {
            let mut bufs: [&mut [u8]; 2] = [&mut x, &mut y];
            assert_eq!(
                b.recv_batch(&mut bufs, &mut lens).unwrap(),
                1,
                "second does not fit: batch ends"
            );
        }
        assert_eq!(&x[..lens[0]], b"one");
        {
            let mut bufs: [&mut [u8]; 1] = [&mut y];
            let e = b.recv_batch(&mut bufs, &mut lens).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        }
        assert_eq!(b.pending(), 0);
        assert!(b.send(b"back"));
        assert_eq!(a.recv().as_deref(), Some(&b"back"[..]));
        assert!(a.readiness_fd().is_some());
        a.close();
        assert_eq!(
            b.send_batch(&[b"x"]).unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }
}
