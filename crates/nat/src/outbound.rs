//! The outbound path (guest → host): a packet from the internal side finds
//! or creates its flow by its internal-side key and leaves from the
//! external address and the flow's external port.

use crate::family::{Addr, Family};
use crate::packet::{self, NotFlow};
use crate::ports::{Binding, PortUse, Redirected};
use crate::table::{Flow, PROTO_ICMP, PROTO_TCP, remote_of, state};
use crate::translator::Engine;
use crate::tuple::{Endpoint, EndpointKey, FiveTuple, FourTuple, PortKey};
use crate::{Direction, DropReason, Verdict};
use wire::tcp;

impl<F: Family> Engine<F> {
    /// The outbound path without counting.
    #[inline(always)]
    pub(crate) fn translate_outbound(&mut self, p: &mut [u8], now: u64, partial: bool) -> Verdict {
        let h = match F::parse(p) {
            Ok(h) => h,
            Err(r) => return Verdict::Drop(r),
        };
        if !self.settings.is_internal(h.src_addr) {
            return Verdict::Drop(DropReason::SpoofedSource);
        }
        if h.is_later_fragment() {
            return self.translate_later_fragment(p, &h, Direction::Outbound, now);
        }
        let mut fh = match packet::classify::<F>(p, &h, true) {
            Ok(fh) => fh,
            Err(NotFlow::IcmpError) => return self.outbound_icmp_error(p, h, now),
            Err(NotFlow::EchoReplyFromInside(id)) => {
                return self.echo_reply_hairpin(p, h, id, now);
            }
            Err(NotFlow::Drop(r)) => return Verdict::Drop(r),
        };
        fh.transport = fh.transport.with_partial(partial);
        let external_addr = self.settings.external_addr;
        if h.dst_addr == external_addr && fh.protocol == PROTO_ICMP {
            return self.echo_hairpin(p, h, fh.src_port, now);
        }
        let old = fh.tuple(&h);
        let key = FiveTuple::new(fh.protocol, old);
        let hash = self.table.keys.hash(&key);
        let found = self.table.flows.find(hash, |f| f.has_key(&key));
        let idx = match found {
            Some(i) => i as usize,
            None => match self.create_outbound_flow(key, hash, now) {
                Ok(i) => i,
                Err(r) => return Verdict::Drop(r),
            },
        };
        let Some(f) = self.table.flows.get_mut(idx) else {
            return Verdict::Drop(DropReason::NoMapping);
        };
        let flags = fh.tcp_flags;
        let timeouts = &self.settings.timeouts;
        f.expires = if fh.protocol == PROTO_TCP {
            let expired = f.expires <= now;
            let closing = state::FIN_INBOUND | state::FIN_OUTBOUND | state::RST;
            let reopen = flags & tcp::SYN != 0 && flags & tcp::ACK == 0 && f.state & closing != 0;
            if expired || reopen {
                // A flow from outside stays so, and unconfirmed until its
                // remote confirms it.
                f.state &= state::KEPT | state::UNCONFIRMED;
            }
            f.state |= state::SEEN_OUTBOUND | tcp_state_bits(flags, state::FIN_OUTBOUND);
            let fresh = now.saturating_add(timeouts.of(PROTO_TCP, f.state));
            // An outbound RST answers an inbound packet: it must not extend
            // the flow's life (RFC 7857 section 2.3), only shorten it.
            if flags & tcp::RST != 0 && f.expires > now {
                f.expires.min(fresh)
            } else {
                fresh
            }
        } else {
            now.saturating_add(timeouts.of(fh.protocol, f.state))
        };
        // The flow has the packet's key: its original destination is the
        // packet's.
        let written = Endpoint {
            addr: old.dst_addr,
            port: old.dst_port,
        };
        let remote = remote_of(f, written, &self.ports.redirected);
        let new = FourTuple {
            src_addr: external_addr,
            src_port: f.external_port,
            dst_addr: remote.addr,
            dst_port: remote.port,
        };
        let expires = f.expires;
        self.sweep.note_deadline(expires);
        if new.dst_addr == external_addr {
            return self.hairpin(p, h, fh, new, now, partial);
        }
        packet::rewrite::<F>(p, &h, fh.transport, old, new);
        Verdict::Forward
    }

    /// A new flow for internal-side `key` (hashing to `hash`): applies a
    /// redirect of its destination and gives it an external port (the
    /// internal endpoint's, unless redirected). Returns its position.
    fn create_outbound_flow(
        &mut self,
        key: FiveTuple<F::Addr>,
        hash: u32,
        now: u64,
    ) -> Result<usize, DropReason> {
        let protocol = key.protocol;
        self.check_caps(key.src_addr)?;
        let destination = EndpointKey {
            protocol,
            addr: key.dst_addr,
            port: key.dst_port,
        };
        let redirect = if protocol == PROTO_ICMP {
            None
        } else {
            self.redirects.get(&destination).copied()
        };
        let remote = match redirect {
            Some(to) => to,
            None => Endpoint {
                addr: key.dst_addr,
                port: key.dst_port,
            },
        };
        // Endpoint-independent mapping: reuse the internal endpoint's
        // external port, unless redirected (a redirect gets a port of its own
        // so its replies can't be confused with direct traffic).
        let internal = EndpointKey {
            protocol,
            addr: key.src_addr,
            port: key.src_port,
        };
        let existing = if redirect.is_none() {
            self.ports.by_internal.get(&internal).copied()
        } else {
            None
        };
        let (external_port, fresh) = match existing {
            Some(port) => (port, false),
            None => {
                let range = self.settings.port_range;
                let port = self.ports.allocate(
                    &self.table.keys,
                    range,
                    protocol,
                    key.src_addr,
                    key.src_port,
                )?;
                (port, true)
            }
        };
        if !fresh
            && self
                .find_inbound(protocol, external_port, remote)
                .1
                .is_some()
        {
            return Err(DropReason::NoMapping);
        }
        if fresh {
            if let Some(t) = self.ports.table_mut(protocol) {
                t.set(
                    external_port,
                    Binding {
                        internal_addr: key.src_addr,
                        internal_port: key.src_port,
                        used_by: PortUse::Mapping,
                        redirect: redirect.is_some(),
                    },
                );
            }
            if redirect.is_none() {
                self.ports.by_internal.insert(internal, external_port);
            } else {
                let port = PortKey {
                    protocol,
                    port: external_port,
                };
                let written = Endpoint {
                    addr: key.dst_addr,
                    port: key.dst_port,
                };
                self.ports
                    .redirected
                    .insert(port, Redirected { written, remote });
            }
        }
        let f = Flow {
            expires: now,
            internal: key.src_addr.store(),
            original: key.dst_addr.store(),
            remote: F::Addr::remote_slot(remote),
            internal_port: key.src_port,
            external_port,
            original_port: key.dst_port,
            protocol,
            state: if redirect.is_some() {
                state::REDIRECTED
            } else {
                0
            },
        };
        Ok(self.insert_flow(f, hash))
    }
}

/// The [`state`] bits a TCP packet with `flags` sets; `fin_bit` is the FIN
/// bit of its direction.
#[inline(always)]
pub(crate) fn tcp_state_bits(flags: u8, fin_bit: u8) -> u8 {
    let mut s = 0;
    if flags & tcp::FIN != 0 {
        s |= fin_bit;
    }
    if flags & tcp::RST != 0 {
        s |= state::RST;
    }
    s
}
