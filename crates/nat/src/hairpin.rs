//! Hairpinning (RFC 4787 REQ-9, RFC 5508 REQ-7, RFC 7857 section 13): a
//! guest reaching the external address gets its packet translated out and
//! back in, for delivery to the guest behind the mapping or forward; echo
//! requests loop back through a live echo mapping and their replies follow.

use std::collections::HashMap;

use crate::family::Family;
use crate::packet::{self, FlowHeader, IpHeader, Transport};
use crate::ports::PortUse;
use crate::table::{PROTO_ICMP, SeededState};
use crate::translator::Engine;
use crate::tuple::{EndpointKey, FourTuple};
use crate::{DropReason, Filtering, Verdict};
use wire::{ipv4, tcp};

/// The senders of the echo requests hairpinned through each external ICMP
/// identifier, so that the target's reply loops back to them.
#[derive(Debug)]
pub(crate) struct EchoRequesters<A> {
    /// External identifier -> the latest sender through it.
    by_external_id: HashMap<u16, Requester<A>, SeededState>,
    /// Lower bound of the deadlines in `by_external_id`.
    earliest: u64,
}

/// The sender of the last echo request hairpinned through an identifier.
#[derive(Clone, Copy, Debug)]
struct Requester<A> {
    addr: A,
    expires: u64,
}

impl<A> EchoRequesters<A> {
    /// None.
    pub(crate) fn new(hasher: SeededState) -> EchoRequesters<A> {
        EchoRequesters {
            by_external_id: HashMap::with_hasher(hasher),
            earliest: u64::MAX,
        }
    }

    /// Forgets the requesters expired at `now`.
    pub(crate) fn expire(&mut self, now: u64) {
        if now >= self.earliest {
            let mut min = u64::MAX;
            self.by_external_id.retain(|_, r| {
                min = if r.expires > now {
                    min.min(r.expires)
                } else {
                    min
                };
                r.expires > now
            });
            self.earliest = min;
        }
    }

    /// When [`EchoRequesters::expire`] next has work, if ever (may be early).
    pub(crate) fn next_deadline(&self) -> Option<u64> {
        (!self.by_external_id.is_empty()).then_some(self.earliest)
    }
}

impl<F: Family> Engine<F> {
    /// Hairpinning: the guest reached our external address. Translates the
    /// source as for any outbound packet (`fh` from `old` to `new`), then
    /// runs the inbound path on the result; a drop there restores the
    /// packet as it came.
    #[cold]
    pub(crate) fn hairpin(
        &mut self,
        p: &mut [u8],
        h: IpHeader<F::Addr>,
        fh: FlowHeader,
        new: FourTuple<F::Addr>,
        now: u64,
        partial: bool,
    ) -> Verdict {
        let h = &h;
        // rewrite() touches at most the IPv4 header and the first 20
        // transport bytes (a TCP header without options).
        // (The longest IP header of either family, IPv4's 60 bytes.)
        let mut saved = [0u8; ipv4::MAX_HEADER_LEN + tcp::HEADER_LEN];
        let n = p.len().min(h.header_len + tcp::HEADER_LEN);
        if let (Some(d), Some(s)) = (saved.get_mut(..n), p.get(..n)) {
            d.copy_from_slice(s);
        }
        packet::rewrite::<F>(p, h, fh.transport, fh.tuple(h), new);
        match self.translate_inbound(p, now, partial, false) {
            Verdict::Forward => Verdict::Hairpin,
            v => {
                if let (Some(d), Some(s)) = (p.get_mut(..n), saved.get(..n)) {
                    d.copy_from_slice(s);
                }
                v
            }
        }
    }

    /// An echo request from inside to the external address (RFC 7857
    /// section 13): its identifier names an external ICMP query identifier
    /// as a port would. If a live echo mapping holds that identifier, the
    /// request loops back to the mapping's guest, from the external address,
    /// with the identifier that guest uses (its internal one); otherwise
    /// (or when address-and-port-dependent filtering applies, the guest
    /// never having sent to the external address) it is dropped. No flow is
    /// created for the sender; the sender's address is remembered per
    /// external identifier (the latest one, for the ICMP query timeout) so
    /// that the target's echo reply loops back (see
    /// [`Nat::echo_reply_hairpin`]).
    #[cold]
    pub(crate) fn echo_hairpin(
        &mut self,
        p: &mut [u8],
        h: IpHeader<F::Addr>,
        id: u16,
        now: u64,
    ) -> Verdict {
        let h = &h;
        let b = self.ports.binding(PROTO_ICMP, id);
        let refs = self.ports.table(PROTO_ICMP).map_or(0, |t| t.refs(id));
        if b.used_by != PortUse::Mapping || refs == 0 {
            return Verdict::Drop(DropReason::NoMapping);
        }
        if self.settings.config.filtering == Filtering::AddressAndPortDependent {
            return Verdict::Drop(DropReason::Filtered);
        }
        let old = FourTuple {
            src_addr: h.src_addr,
            src_port: id,
            dst_addr: h.dst_addr,
            dst_port: 0,
        };
        let new = FourTuple {
            src_addr: self.settings.external_addr,
            src_port: b.internal_port,
            dst_addr: b.internal_addr,
            dst_port: 0,
        };
        packet::rewrite::<F>(p, h, Transport::EchoSourceId, old, new);
        // Remember the requester (one per external identifier: the latest)
        // so the target's reply can loop back to it.
        let expires = now.saturating_add(self.settings.timeouts.icmp);
        let echo = &mut self.echo_requesters;
        let requester = Requester {
            addr: h.src_addr,
            expires,
        };
        echo.by_external_id.insert(id, requester);
        echo.earliest = echo.earliest.min(expires);
        Verdict::Hairpin
    }

    /// An echo reply from inside. Only the answer to a hairpinned echo
    /// request is translated: from a guest to the external address, with
    /// the guest's internal identifier of a mapping that a request was
    /// hairpinned through within the ICMP query timeout; it loops back to
    /// that request's sender, from the external address, with the mapping's
    /// external identifier (the one the sender used). Any other echo reply
    /// from inside is dropped as unsupported.
    #[cold]
    pub(crate) fn echo_reply_hairpin(
        &mut self,
        p: &mut [u8],
        h: IpHeader<F::Addr>,
        id: u16,
        now: u64,
    ) -> Verdict {
        let h = &h;
        let external_addr = self.settings.external_addr;
        if h.dst_addr != external_addr {
            return Verdict::Drop(DropReason::UnsupportedProtocol);
        }
        let internal = EndpointKey {
            protocol: PROTO_ICMP,
            addr: h.src_addr,
            port: id,
        };
        let Some(&external_id) = self.ports.by_internal.get(&internal) else {
            return Verdict::Drop(DropReason::NoMapping);
        };
        let requester = match self.echo_requesters.by_external_id.get(&external_id) {
            Some(r) if r.expires > now => r.addr,
            _ => return Verdict::Drop(DropReason::NoMapping),
        };
        let old = FourTuple {
            src_addr: h.src_addr,
            src_port: 0,
            dst_addr: h.dst_addr,
            dst_port: id,
        };
        let new = FourTuple {
            src_addr: external_addr,
            src_port: 0,
            dst_addr: requester,
            dst_port: external_id,
        };
        let transport = Transport::EchoDestinationId;
        packet::rewrite::<F>(p, h, transport, old, new);
        Verdict::Hairpin
    }
}
