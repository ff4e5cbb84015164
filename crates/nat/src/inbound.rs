//! The inbound path (host → guest): a packet to the external address is
//! translated through the flow of its external port and remote, or through
//! the port's binding (a port forward, or endpoint-independent filtering).
//!
//! There is no index of the external side: every flow on an external port
//! has the internal endpoint of the port's binding, so the flow is found by
//! its internal-side key ([`Nat::find_inbound`]). A packet reads the port's
//! 8-byte binding (a 512 KiB array per protocol, which stays in the caches)
//! and then one table slot.

use crate::family::{Addr, Family};
use crate::packet::{self, FlowHeader, IpHeader, NotFlow};
use crate::ports::{Binding, PortUse};
use crate::table::{Flow, PROTO_TCP, state};
use crate::translator::Engine;
use crate::tuple::{Endpoint, FiveTuple, FourTuple, PortKey};
use crate::{Direction, DropReason, Filtering, Verdict};

/// A flow found by [`Nat::find_inbound`]: its position and a copy.
pub(crate) type Found<A> = Option<(usize, Flow<A>)>;

impl<F: Family> Engine<F> {
    /// The inbound path without counting. `outside`: the packet came from
    /// the external side (not looped back by hairpinning, whose source is
    /// the external address), so a source no outside host can have is a
    /// drop ([`DropReason::InboundSpoofedSource`]).
    #[inline(always)]
    pub(crate) fn translate_inbound(
        &mut self,
        p: &mut [u8],
        now: u64,
        partial: bool,
        outside: bool,
    ) -> Verdict {
        // Start reading the destination port's binding before validating
        // the rest of the packet: its cache miss then overlaps the parse.
        // Not before the version check, so that a packet of the other
        // family (given to NAT44 first by the per-packet calls) leaves at
        // once.
        let ports = &self.ports;
        let h = match F::parse_then(p, || {
            core::hint::black_box(crate::batch::peek_binding::<F>(ports, p));
        }) {
            Ok(h) => h,
            Err(r) => return Verdict::Drop(r),
        };
        if h.dst_addr != self.settings.external_addr {
            return Verdict::Drop(DropReason::NoMapping);
        }
        if outside && self.settings.is_martian_source(h.src_addr) {
            return Verdict::Drop(DropReason::InboundSpoofedSource);
        }
        if h.is_later_fragment() {
            return self.translate_later_fragment(p, &h, Direction::Inbound, now);
        }
        let mut fh = match packet::classify::<F>(p, &h, false) {
            Ok(fh) => fh,
            Err(NotFlow::IcmpError) => return self.inbound_icmp_error(p, &h, now),
            Err(NotFlow::EchoReplyFromInside(_)) => {
                return Verdict::Drop(DropReason::UnsupportedProtocol);
            }
            Err(NotFlow::Drop(r)) => return Verdict::Drop(r),
        };
        fh.transport = fh.transport.with_partial(partial);
        let remote = Endpoint {
            addr: h.src_addr,
            port: fh.src_port,
        };
        let (binding, found) = self.find_inbound(fh.protocol, fh.dst_port, remote);
        if let Some((i, f)) = found
            && f.expires > now
        {
            self.inbound_via_flow(p, &h, &fh, i, f, now);
            return Verdict::Forward;
        }
        match binding.used_by {
            PortUse::Forward => {
                let idx = match found {
                    Some((i, _)) => Some(i),
                    None => match self.create_inbound_flow(
                        fh.protocol,
                        remote,
                        fh.dst_port,
                        &binding,
                        now,
                    ) {
                        Ok(i) => i,
                        Err(r) => return Verdict::Drop(r),
                    },
                };
                match idx {
                    Some(i) => {
                        if let Some(f) = self.table.flows.get_mut(i) {
                            // A revived session starts over; one from
                            // outside is unconfirmed again.
                            let was = f.state;
                            f.state &= state::KEPT;
                            if f.state & state::INBOUND != 0 {
                                f.state |= state::UNCONFIRMED;
                            }
                            let f = *f;
                            if f.state & !was & state::UNCONFIRMED != 0 {
                                self.requeue_unconfirmed(&f, now);
                            }
                            self.inbound_via_flow(p, &h, &fh, i, f, now);
                        }
                    }
                    None => inbound_via_binding::<F>(p, &h, &fh, &binding),
                }
                Verdict::Forward
            }
            PortUse::Mapping
                if found.is_none()
                    && self
                        .ports
                        .table(fh.protocol)
                        .is_some_and(|t| t.refs(fh.dst_port) > 0) =>
            {
                match self.settings.config.filtering {
                    Filtering::EndpointIndependent => {
                        inbound_via_binding::<F>(p, &h, &fh, &binding);
                        Verdict::Forward
                    }
                    Filtering::AddressAndPortDependent => Verdict::Drop(DropReason::Filtered),
                }
            }
            _ => Verdict::Drop(DropReason::NoMapping),
        }
    }

    /// Translates an inbound packet through flow `f` at position `i`; TCP
    /// packets advance its state and refresh it.
    #[inline(always)]
    fn inbound_via_flow(
        &mut self,
        p: &mut [u8],
        h: &IpHeader<F::Addr>,
        fh: &FlowHeader,
        i: usize,
        f: Flow<F::Addr>,
        now: u64,
    ) {
        let new = FourTuple {
            src_addr: f.original_addr(),
            src_port: f.original_port,
            dst_addr: f.internal_addr(),
            dst_port: f.internal_port,
        };
        packet::rewrite::<F>(p, h, fh.transport, fh.tuple(h), new);
        if f.protocol == PROTO_TCP {
            // TCP: inbound packets advance the state and refresh the flow;
            // UDP and ICMP flows are refreshed by outbound traffic only.
            let mut g = f;
            g.state |= state::SEEN_INBOUND
                | crate::outbound::tcp_state_bits(fh.tcp_flags, state::FIN_INBOUND);
            if g.state & state::UNCONFIRMED != 0 {
                core::hint::cold_path();
                if confirms_tcp(f.state, fh.tcp_flags) {
                    g.state &= !state::UNCONFIRMED;
                }
            }
            g.expires = now.saturating_add(self.settings.timeouts.of(g.protocol, g.state));
            if let Some(s) = self.table.flows.get_mut(i) {
                *s = g;
            }
            self.sweep.note_deadline(g.expires);
        } else if f.state & state::UNCONFIRMED != 0 {
            core::hint::cold_path();
            // UDP from outside: confirmed (conntrack's ASSURED) if the
            // remote sends again after the guest answered.
            self.confirm_udp(i, now);
        }
    }

    /// Confirms the unconfirmed UDP flow from outside at `i` if the guest
    /// has answered: it gets the UDP timeout. Only the guest's packets
    /// refresh a UDP flow, and a flow from outside is created (or revived)
    /// expired, so one still live at `now` has been answered.
    #[cold]
    #[inline(never)]
    fn confirm_udp(&mut self, i: usize, now: u64) {
        let udp = self.settings.timeouts.udp;
        if let Some(f) = self.table.flows.get_mut(i)
            && f.expires > now
        {
            f.state &= !state::UNCONFIRMED;
            f.expires = now.saturating_add(udp);
            let expires = f.expires;
            self.sweep.note_deadline(expires);
        }
    }

    /// A session of protocol index `protocol` through a port forward from
    /// `remote` to `external_port` (bound to `b`). `Ok(None)`: translate without one (the internal
    /// 5-tuple is already taken by another flow).
    fn create_inbound_flow(
        &mut self,
        protocol: u8,
        remote: Endpoint<F::Addr>,
        external_port: u16,
        b: &Binding<F::Addr>,
        now: u64,
    ) -> Result<Option<usize>, DropReason> {
        let key = FiveTuple {
            protocol,
            src_addr: b.internal_addr,
            src_port: b.internal_port,
            dst_addr: remote.addr,
            dst_port: remote.port,
        };
        let hash = self.table.keys.hash(&key);
        if self.table.flows.find(hash, |f| f.has_key(&key)).is_some() {
            return Ok(None);
        }
        self.admit_inbound(PortKey {
            protocol,
            port: external_port,
        })?;
        let f = Flow {
            expires: now,
            internal: b.internal_addr.store(),
            original: remote.addr.store(),
            remote: F::Addr::remote_slot(remote),
            internal_port: b.internal_port,
            external_port,
            original_port: remote.port,
            protocol,
            state: state::INBOUND | state::UNCONFIRMED,
        };
        Ok(Some(self.insert_flow(f, hash)))
    }

    /// Looks up the flow of an external-side key. Every flow on an external
    /// port has the internal endpoint of the port's binding, and (unless it
    /// was redirected) the remote as its internal-side destination, so the
    /// flow is found by its internal-side key: one table probe, no second
    /// index. Returns the port's binding and the flow's position and value.
    #[inline(always)]
    pub(crate) fn find_inbound(
        &self,
        protocol: u8,
        external_port: u16,
        remote: Endpoint<F::Addr>,
    ) -> (Binding<F::Addr>, Found<F::Addr>) {
        let b = self.ports.binding(protocol, external_port);
        if b.used_by == PortUse::Free {
            return (b, None);
        }
        let destination = if b.redirect {
            let port = PortKey {
                protocol,
                port: external_port,
            };
            // One flow per redirected port: its remote is the entry's.
            match self.ports.redirected.get(&port) {
                Some(r) if r.remote == remote => r.written,
                _ => return (b, None),
            }
        } else {
            remote
        };
        let key = FiveTuple {
            protocol,
            src_addr: b.internal_addr,
            src_port: b.internal_port,
            dst_addr: destination.addr,
            dst_port: destination.port,
        };
        let hash = self.table.keys.hash(&key);
        // A flow on a port that is not a redirect's has its remote as its
        // internal-side destination, so the internal key and the external
        // port identify it; a redirected flow's remote was checked above.
        let found = self.table.flows.lookup_on_port(hash, &key, external_port);
        (b, found)
    }
}

/// Whether an inbound TCP packet with `flags` confirms a flow from outside
/// in `flow_state` (before the packet): the guest has answered (its SYN-ACK),
/// and this is the remote's next segment (its ACK or data, no SYN or RST),
/// as conntrack's SYN_RECV → ESTABLISHED. (Unlike conntrack, sequence
/// numbers are not checked.)
#[inline(always)]
fn confirms_tcp(flow_state: u8, flags: u8) -> bool {
    flow_state & state::SEEN_OUTBOUND != 0
        && flags & wire::tcp::ACK != 0
        && flags & (wire::tcp::SYN | wire::tcp::RST) == 0
}

/// Translates an inbound packet to the internal endpoint of binding `b`
/// without a flow.
#[inline(always)]
fn inbound_via_binding<F: Family>(
    p: &mut [u8],
    h: &IpHeader<F::Addr>,
    fh: &FlowHeader,
    b: &Binding<F::Addr>,
) {
    let old = fh.tuple(h);
    let new = FourTuple {
        dst_addr: b.internal_addr,
        dst_port: b.internal_port,
        ..old
    };
    packet::rewrite::<F>(p, h, fh.transport, old, new);
}
