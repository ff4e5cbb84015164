//! A frontend that breaks the vhost-user protocol on purpose, to check that a backend refuses
//! it and lives on (the hostile-frontend cases of the hardening issue, driven by this crate's
//! frontend as issue 17 asks).
//!
//! Each [`Hostile`] case is one deviation from [`VhostUserDevice::activate`];
//! [`VhostUserDevice::activate_hostile`] sends it on a connection that has negotiated as
//! usual ([`VhostUserDevice::connect`]) and reports whether the backend refused it. The guest
//! it is given is never started: only its memory and ring layout are used.
//!
//! What the `vhost` crate's frontend will not send, and so no case here does: a memory region
//! of size 0 or without a file, more regions than fit one message, and `SET_VRING_ENABLE`
//! before `SET_FEATURES` has acknowledged `PROTOCOL_FEATURES` (it checks each of these before
//! sending).

use std::fs::File;
use std::os::fd::AsRawFd;

use anyhow::Context;
use vhost::VhostBackend;
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures};
use virtio_queue::QueueT;
use vm_memory::{Address, Bytes};

use super::{
    FRONTEND_VA, VhostUserDevice, kick_eventfds, memory_region, shared_memory_file, vring_config,
};
use crate::guest::{RX_QUEUE, SimGuest, TX_QUEUE};

/// How a hostile frontend breaks the protocol: one deviation from a VMM's activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Hostile {
    /// The memory table's one region claims the guest's memory size, but its file holds one
    /// page: the rings lie past the end of the file (mapping such a region works; touching
    /// the part past the file raises SIGBUS in the backend).
    RegionPastItsFile,
    /// Two regions of the guest's file whose guest-physical ranges overlap: the whole memory,
    /// and the file's first half again as the upper half of the guest range (each region fits
    /// its file).
    OverlappingRegions,
    /// `SET_VRING_ADDR` names descriptor table, avail and used rings beyond every region.
    RingsOutsideMemory,
    /// The descriptor table starts 16 bytes before the end of memory: its first descriptor
    /// is inside, the rest of the table past the end; one chain is made available, its head
    /// the descriptor just past the end.
    RingAcrossTheEnd,
    /// `SET_VRING_ADDR` before `SET_MEM_TABLE` (nothing to translate the addresses with yet),
    /// then the rest in a VMM's order.
    RingAddressBeforeMemTable,
    /// `SET_VRING_NUM`/`BASE`/`CALL`/`KICK` and `SET_VRING_ENABLE`, then a kick, before
    /// `SET_MEM_TABLE` and `SET_VRING_ADDR`: the backend is asked to run rings it has no
    /// memory and no addresses for.
    KickBeforeMemTable,
    /// After a VMM's activation and a kick on each ring: `SET_MEM_TABLE` again with a table of
    /// one page of another file, so that both rings now lie outside memory; then a kick.
    MemTableSwappedWhileRunning,
    /// After a VMM's activation and a kick on each ring: `SET_FEATURES` again without
    /// `VERSION_1` and any other virtio feature (the header layout changes under running
    /// rings); then a kick.
    FeaturesChangedWhileRunning,
}

impl Hostile {
    /// Every case, in the order above.
    pub const ALL: [Hostile; 8] = [
        Hostile::RegionPastItsFile,
        Hostile::OverlappingRegions,
        Hostile::RingsOutsideMemory,
        Hostile::RingAcrossTheEnd,
        Hostile::RingAddressBeforeMemTable,
        Hostile::KickBeforeMemTable,
        Hostile::MemTableSwappedWhileRunning,
        Hostile::FeaturesChangedWhileRunning,
    ];
}

/// What the backend did with a [`Hostile`] sequence.
#[derive(Debug)]
#[must_use]
pub enum Answer {
    /// A message was answered with a failure, or the connection was closed: the error the
    /// frontend got, naming the message it was sending.
    Refused(anyhow::Error),
    /// Every message was taken and the connection still answers `GET_FEATURES`.
    Accepted,
}

impl Answer {
    /// Whether the backend refused the sequence.
    #[must_use]
    pub fn is_refused(&self) -> bool {
        matches!(self, Answer::Refused(_))
    }
}

impl std::fmt::Display for Answer {
    /// `refused: ERROR: CAUSE…` (the error with its causes on one line) or `accepted`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Refused(e) => write!(f, "refused: {e:#}"),
            Answer::Accepted => f.write_str("accepted"),
        }
    }
}

impl VhostUserDevice {
    /// Sends the [`Hostile`] sequence `how` for `guest` (its memory and ring layout; it is
    /// never started) and tells whether the backend refused it. When the backend agreed to
    /// `REPLY_ACK`, every message asks for an ack, so a refusal names the message refused;
    /// otherwise the connection found closed at the closing `GET_FEATURES` is the refusal.
    /// The connection is of no further use either way.
    ///
    /// # Errors
    /// Only local failures (the device is already active, an eventfd or a file can't be
    /// made); whatever the backend does is the [`Answer`].
    pub fn activate_hostile(&mut self, guest: &SimGuest, how: Hostile) -> anyhow::Result<Answer> {
        anyhow::ensure!(!self.is_active(), "the device is already active");
        let region = memory_region(guest.memory())?;
        let queues = [guest.device_queue(RX_QUEUE)?, guest.device_queue(TX_QUEUE)?];
        let kicks = kick_eventfds(2)?;
        let page = shared_memory_file()?;
        page.set_len(PAGE).context("sizing a one-page file")?;
        let hostile = Sequence {
            guest,
            region,
            queues: &queues,
            kicks: &kicks,
            page: &page,
        };
        if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let sent = hostile.send(self, how);
        let probed = sent.and_then(|()| {
            self.frontend
                .get_features()
                .map(drop)
                .context("GET_FEATURES after the sequence")
        });
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        Ok(match probed {
            Ok(()) => Answer::Accepted,
            Err(e) => Answer::Refused(e),
        })
    }

    /// `SET_VRING_ENABLE` without asking for an ack: the `vhost` crate's frontend never reads
    /// one for this message, and an unread ack would be taken for the next reply.
    fn enable_ring_without_ack(&mut self, i: usize) -> anyhow::Result<()> {
        let flags = if self.protocol.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            VhostUserHeaderFlag::NEED_REPLY
        } else {
            VhostUserHeaderFlag::empty()
        };
        self.frontend.set_hdr_flags(VhostUserHeaderFlag::empty());
        let enabled = self.enable_ring(i);
        self.frontend.set_hdr_flags(flags);
        enabled
    }
}

const PAGE: u64 = 4096;
/// A split ring's descriptor: address, length, flags, next.
const DESC_SIZE: u64 = 16;

/// What one hostile sequence works with.
struct Sequence<'a> {
    guest: &'a SimGuest,
    region: vhost::VhostUserMemoryRegionInfo,
    queues: &'a [virtio_queue::Queue; 2],
    kicks: &'a [vmm_sys_util::eventfd::EventFd],
    page: &'a File,
}

impl Sequence<'_> {
    fn send(&self, dev: &mut VhostUserDevice, how: Hostile) -> anyhow::Result<()> {
        dev.ack_features(self.guest.acked_features())?;
        let len = self.region.memory_size;
        match how {
            Hostile::RegionPastItsFile => {
                let short = vhost::VhostUserMemoryRegionInfo {
                    mmap_offset: 0,
                    mmap_handle: self.page.as_raw_fd(),
                    ..self.region
                };
                mem_table(dev, &[short])?;
                self.rings(dev, FRONTEND_VA)?;
                self.kick_all();
            }
            Hostile::OverlappingRegions => {
                // The second region's file range fits the file (a check of each region against
                // its file passes); its guest range is the first region's upper half.
                let half = len / 2;
                let second = vhost::VhostUserMemoryRegionInfo {
                    guest_phys_addr: self.region.guest_phys_addr + half,
                    memory_size: half,
                    userspace_addr: FRONTEND_VA + len,
                    mmap_offset: self.region.mmap_offset,
                    ..self.region
                };
                mem_table(dev, &[self.region, second])?;
                self.rings(dev, FRONTEND_VA)?;
                self.kick_all();
            }
            Hostile::RingsOutsideMemory => {
                mem_table(dev, &[self.region])?;
                // Guest memory starts at 0: its frontend addresses end at FRONTEND_VA + len.
                self.rings(dev, FRONTEND_VA + len.next_power_of_two() * 4)?;
                self.kick_all();
            }
            Hostile::RingAcrossTheEnd => {
                mem_table(dev, &[self.region])?;
                for (i, q) in self.queues.iter().enumerate() {
                    let mut addr = vring_config(q, FRONTEND_VA);
                    addr.desc_table_addr = FRONTEND_VA + len - DESC_SIZE;
                    // One chain made available, its head the first descriptor past the end.
                    self.publish_head(q, 1)?;
                    self.ring(dev, i, &addr)?;
                }
                self.kick_all();
            }
            Hostile::RingAddressBeforeMemTable => {
                for (i, q) in self.queues.iter().enumerate() {
                    dev.frontend
                        .set_vring_num(i, q.size())
                        .with_context(|| format!("SET_VRING_NUM for queue {i}"))?;
                    dev.frontend
                        .set_vring_addr(i, &vring_config(q, FRONTEND_VA))
                        .with_context(|| format!("SET_VRING_ADDR for queue {i}"))?;
                }
                mem_table(dev, &[self.region])?;
                self.rings(dev, FRONTEND_VA)?;
                self.kick_all();
            }
            Hostile::KickBeforeMemTable => {
                let irq = self.guest.interrupts();
                for (i, q) in self.queues.iter().enumerate() {
                    let index = u16::try_from(i).unwrap_or(u16::MAX);
                    dev.frontend
                        .set_vring_num(i, q.size())
                        .with_context(|| format!("SET_VRING_NUM for queue {i}"))?;
                    dev.frontend
                        .set_vring_base(i, 0)
                        .with_context(|| format!("SET_VRING_BASE for queue {i}"))?;
                    let call = irq.line(index).context("no interrupt line")?;
                    dev.frontend
                        .set_vring_call(i, call)
                        .with_context(|| format!("SET_VRING_CALL for queue {i}"))?;
                    dev.frontend
                        .set_vring_kick(i, &self.kicks[i])
                        .with_context(|| format!("SET_VRING_KICK for queue {i}"))?;
                    dev.enable_ring_without_ack(i)?;
                }
                self.kick_all();
                mem_table(dev, &[self.region])?;
                for (i, q) in self.queues.iter().enumerate() {
                    dev.frontend
                        .set_vring_addr(i, &vring_config(q, FRONTEND_VA))
                        .with_context(|| format!("SET_VRING_ADDR for queue {i}"))?;
                }
                self.kick_all();
            }
            Hostile::MemTableSwappedWhileRunning => {
                mem_table(dev, &[self.region])?;
                self.rings(dev, FRONTEND_VA)?;
                self.kick_all();
                let page = vhost::VhostUserMemoryRegionInfo {
                    guest_phys_addr: 0,
                    memory_size: PAGE,
                    userspace_addr: FRONTEND_VA,
                    mmap_offset: 0,
                    mmap_handle: self.page.as_raw_fd(),
                };
                mem_table(dev, &[page])?;
                self.kick_all();
            }
            Hostile::FeaturesChangedWhileRunning => {
                mem_table(dev, &[self.region])?;
                self.rings(dev, FRONTEND_VA)?;
                self.kick_all();
                let protocol = dev.device_features & super::PROTOCOL_FEATURES;
                dev.frontend
                    .set_features(protocol)
                    .context("SET_FEATURES again")?;
                self.kick_all();
            }
        }
        Ok(())
    }

    /// Both rings in a VMM's order, their addresses with guest memory at `va`.
    fn rings(&self, dev: &mut VhostUserDevice, va: u64) -> anyhow::Result<()> {
        for (i, q) in self.queues.iter().enumerate() {
            self.ring(dev, i, &vring_config(q, va))?;
        }
        Ok(())
    }

    /// Ring `i` in a VMM's order (`NUM`, `ADDR`, `BASE`, `CALL`, `KICK`, `ENABLE`).
    fn ring(
        &self,
        dev: &mut VhostUserDevice,
        i: usize,
        addr: &vhost::VringConfigData,
    ) -> anyhow::Result<()> {
        let step = |what: &'static str| format!("{what} for queue {i}");
        let index = u16::try_from(i).unwrap_or(u16::MAX);
        dev.frontend
            .set_vring_num(i, addr.queue_size)
            .with_context(|| step("SET_VRING_NUM"))?;
        dev.frontend
            .set_vring_addr(i, addr)
            .with_context(|| step("SET_VRING_ADDR"))?;
        dev.frontend
            .set_vring_base(i, 0)
            .with_context(|| step("SET_VRING_BASE"))?;
        let irq = self.guest.interrupts();
        let call = irq.line(index).context("no interrupt line")?;
        dev.frontend
            .set_vring_call(i, call)
            .with_context(|| step("SET_VRING_CALL"))?;
        dev.frontend
            .set_vring_kick(i, &self.kicks[i])
            .with_context(|| step("SET_VRING_KICK"))?;
        dev.enable_ring_without_ack(i)
    }

    /// Makes one chain available on `q` (the guest is not running, so its rings are empty):
    /// avail ring entry 0 names descriptor `head`, the avail index is 1.
    fn publish_head(&self, q: &virtio_queue::Queue, head: u16) -> anyhow::Result<()> {
        let mem = self.guest.memory();
        let avail = vm_memory::GuestAddress(q.avail_ring());
        let at = |offset: u64| {
            avail
                .checked_add(offset)
                .context("avail ring address overflows")
        };
        mem.write_obj(head.to_le(), at(4)?)
            .context("writing an avail ring entry")?;
        mem.write_obj(1u16.to_le(), at(2)?)
            .context("writing the avail index")?;
        Ok(())
    }

    /// Kicks both rings (a failed eventfd write is of no interest here).
    fn kick_all(&self) {
        for k in self.kicks {
            let _ = k.write(1);
        }
    }
}

fn mem_table(
    dev: &mut VhostUserDevice,
    regions: &[vhost::VhostUserMemoryRegionInfo],
) -> anyhow::Result<()> {
    dev.frontend
        .set_mem_table(regions)
        .map(drop)
        .context("SET_MEM_TABLE")
}

#[cfg(test)]
mod tests {
    //! Each case against a recording backend (a unix socket read here; it answers only
    //! `GET_FEATURES` and `GET_PROTOCOL_FEATURES`): the messages go out in the order and
    //! with the contents the case names.

    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::{Answer, Hostile, PAGE};
    use crate::guest::{GuestConfig, SimGuest, features};
    use crate::vhost_user::{FRONTEND_VA, PROTOCOL_FEATURES, VhostUserDevice, shared_memory_file};

    const GET_FEATURES: u32 = 1;
    const SET_FEATURES: u32 = 2;
    const SET_MEM_TABLE: u32 = 5;
    const SET_VRING_ADDR: u32 = 9;
    const SET_VRING_KICK: u32 = 12;
    const GET_PROTOCOL_FEATURES: u32 = 15;
    const SET_VRING_ENABLE: u32 = 18;

    fn u64_at(body: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"))
    }

    /// Every request the frontend sent for `how` (code and body), and the guest's memory size.
    fn recorded(how: Hostile) -> (Vec<(u32, Vec<u8>)>, u64, SimGuest) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "hostnet-hostile-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let listener = UnixListener::bind(&path).expect("binding a unix socket");
        let backend = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut got = Vec::new();
            let mut hdr = [0u8; 12];
            // Reading without ancillary buffers drops the descriptors that come along.
            while s.read_exact(&mut hdr).is_ok() {
                let code = u32::from_le_bytes(hdr[0..4].try_into().expect("4 bytes"));
                let size = u32::from_le_bytes(hdr[8..12].try_into().expect("4 bytes"));
                let mut body = vec![0u8; size as usize];
                s.read_exact(&mut body).expect("a message body");
                match code {
                    GET_FEATURES => reply(&mut s, code, features::VERSION_1 | PROTOCOL_FEATURES),
                    GET_PROTOCOL_FEATURES => reply(&mut s, code, 0),
                    _ => {}
                }
                got.push((code, body));
            }
            got
        });
        let mut dev = VhostUserDevice::connect(&path).expect("connect");
        let _ = std::fs::remove_file(&path);
        let guest = SimGuest::new_in_file(
            GuestConfig::default(),
            dev.device_features(),
            shared_memory_file().expect("a memory file"),
        )
        .expect("guest");
        let answer = dev.activate_hostile(&guest, how).expect("sequence");
        assert!(matches!(answer, Answer::Accepted), "{how:?}: {answer}");
        drop(dev);
        let len = GuestConfig::default().mem_size as u64;
        (backend.join().expect("backend thread"), len, guest)
    }

    fn reply(s: &mut UnixStream, code: u32, value: u64) {
        let mut msg = Vec::with_capacity(20);
        msg.extend_from_slice(&code.to_le_bytes());
        msg.extend_from_slice(&(0x1u32 | 0x4).to_le_bytes()); // version 1, REPLY
        msg.extend_from_slice(&8u32.to_le_bytes());
        msg.extend_from_slice(&value.to_le_bytes());
        s.write_all(&msg).expect("a reply");
    }

    fn first(got: &[(u32, Vec<u8>)], code: u32) -> usize {
        got.iter().position(|(c, _)| *c == code).expect("sent")
    }

    fn all(got: &[(u32, Vec<u8>)], code: u32) -> Vec<usize> {
        (0..got.len()).filter(|&i| got[i].0 == code).collect()
    }

    #[test]
    fn every_case_sends_what_it_names_and_probes_last() {
        for how in Hostile::ALL {
            let (got, len, guest) = recorded(how);
            let codes: Vec<u32> = got.iter().map(|(c, _)| *c).collect();
            assert_eq!(codes.last(), Some(&GET_FEATURES), "{how:?}: {codes:?}");
            let tables = all(&got, SET_MEM_TABLE);
            let table = &got[tables[0]].1;
            // VhostUserMemory: regions (u32), padding, then per region gpa, size, va, offset.
            let regions = u32::from_le_bytes(table[0..4].try_into().expect("4 bytes"));
            let addrs = all(&got, SET_VRING_ADDR);
            match how {
                Hostile::RegionPastItsFile => {
                    assert_eq!((regions, u64_at(table, 16)), (1, len), "{how:?}");
                }
                Hostile::OverlappingRegions => {
                    assert_eq!(regions, 2, "{how:?}");
                    let (gpa0, size0, gpa1) =
                        (u64_at(table, 8), u64_at(table, 16), u64_at(table, 40));
                    assert!(gpa1 > gpa0 && gpa1 < gpa0 + size0, "{how:?}");
                }
                Hostile::RingsOutsideMemory => {
                    for i in &addrs {
                        // VhostUserVringAddr: index, flags, then desc, used, avail, log.
                        for at in [8, 16, 24] {
                            assert!(u64_at(&got[*i].1, at) >= FRONTEND_VA + len, "{how:?}");
                        }
                    }
                }
                Hostile::RingAcrossTheEnd => {
                    for i in &addrs {
                        assert_eq!(u64_at(&got[*i].1, 8), FRONTEND_VA + len - 16, "{how:?}");
                    }
                    for q in [crate::guest::RX_QUEUE, crate::guest::TX_QUEUE] {
                        let avail = virtio_queue::QueueT::avail_ring(
                            &guest.device_queue(q).expect("queue"),
                        );
                        let idx: u16 = vm_memory::Bytes::read_obj(
                            guest.memory(),
                            vm_memory::GuestAddress(avail + 2),
                        )
                        .expect("avail index");
                        assert_eq!(idx, 1, "{how:?}");
                    }
                }
                Hostile::RingAddressBeforeMemTable => {
                    assert!(addrs[0] < tables[0], "{how:?}: {codes:?}");
                }
                Hostile::KickBeforeMemTable => {
                    assert!(
                        first(&got, SET_VRING_KICK) < tables[0],
                        "{how:?}: {codes:?}"
                    );
                    assert!(
                        first(&got, SET_VRING_ENABLE) < tables[0],
                        "{how:?}: {codes:?}"
                    );
                    assert!(addrs[0] > tables[0], "{how:?}: {codes:?}");
                }
                Hostile::MemTableSwappedWhileRunning => {
                    assert_eq!(tables.len(), 2, "{how:?}: {codes:?}");
                    let enabled = all(&got, SET_VRING_ENABLE);
                    assert!(enabled.len() == 2 && enabled[1] < tables[1], "{how:?}");
                    assert_eq!(u64_at(&got[tables[1]].1, 16), PAGE, "{how:?}");
                }
                Hostile::FeaturesChangedWhileRunning => {
                    let set = all(&got, SET_FEATURES);
                    let enabled = all(&got, SET_VRING_ENABLE);
                    assert!(set.len() == 2 && enabled[1] < set[1], "{how:?}: {codes:?}");
                    assert_eq!(u64_at(&got[set[1]].1, 0), PROTOCOL_FEATURES, "{how:?}");
                }
            }
            if !matches!(
                how,
                Hostile::MemTableSwappedWhileRunning | Hostile::FeaturesChangedWhileRunning
            ) {
                assert_eq!(tables.len(), 1, "{how:?}: {codes:?}");
            }
        }
    }
}
