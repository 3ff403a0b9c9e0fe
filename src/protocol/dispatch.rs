//! Handling one datagram: open it, check it, prove its sender, let
//! membership judge it, and answer within the rules.
//!
//! **Owns:** the order of checks on every datagram (decode or open, namespace,
//! replay, own id, incarnation bound, proof of address) and the answering
//! policy: who gets a full answer, who a challenge, what is paced, and that
//! no answer to an unproven address is larger than what arrived from it or
//! beyond the rate limits. **Must not touch:** membership rules (they are
//! `membership`'s) or timers (the coordinator's).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::MAX_FUTURE_INCARNATION;
use super::announcer::{Build, Said};
use super::membership::{Heard, Outcome};
use super::replay::Replay;
use super::{
    Destination, FINAL_AGAIN, MAX_PACING, MIN_TTL, Mode, PACING_PER_PEER, Protocol, Rejected,
    filter,
};
use crate::source::SourceEvent;
use crate::wire::{self, Frame, Id, Message, Packet};

/// Full answers per second, and burst, to one known peer.
const PEER_ANSWERS: (u32, u32) = (20, 40);

/// Padding added to a challenge so that the answer it asks for (one echo
/// larger) fits in it.
const CHALLENGE_ROOM: usize = 24;

impl Protocol {
    /// Handles one datagram that arrived from `source`.
    ///
    /// # Errors
    /// [`Rejected`] says why a datagram was ignored, for logs; it is already
    /// counted in [`Stats`](super::Stats).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        self.handle_datagram_via(now, source, None, datagram)
    }

    /// [`Protocol::handle_datagram`] for a datagram that arrived on local
    /// interface `via` (its index), so that a peer's addresses say which
    /// network they are on.
    ///
    /// # Errors
    /// As for [`Protocol::handle_datagram`].
    pub fn handle_datagram_via(
        &mut self,
        now: Instant,
        source: SocketAddr,
        via: Option<u32>,
        datagram: &[u8],
    ) -> Result<(), Rejected> {
        self.out.stats.datagrams_received += 1;
        self.out.stats.bytes_received += datagram.len() as u64;
        let result = if self.closed {
            Ok(())
        } else {
            self.out.release(now);
            let mut scratch = std::mem::take(&mut self.scratch);
            let result = self.open_and_handle(now, source, via, datagram, &mut scratch);
            self.scratch = scratch;
            result
        };
        if let Err(rejected) = &result {
            self.out.rejected(rejected);
        }
        result
    }

    fn open_and_handle(
        &mut self,
        now: Instant,
        source: SocketAddr,
        via: Option<u32>,
        datagram: &[u8],
        scratch: &mut Vec<u8>,
    ) -> Result<(), Rejected> {
        let frame = wire::split(datagram)?;
        let (packet, sealed) = match (self.ours.keys(), frame) {
            (None, Frame::Open(body)) => (wire::decode_body(body, datagram.len())?, false),
            (Some(ring), frame @ Frame::Sealed { .. }) => (ring.open(frame, scratch)?, true),
            (None, Frame::Sealed { .. }) => {
                return Err(wire::DecodeError::WrongMode {
                    found: "sealed",
                    expected: "open",
                }
                .into());
            }
            (Some(_), Frame::Open(_)) => {
                return Err(wire::DecodeError::WrongMode {
                    found: "open",
                    expected: "sealed",
                }
                .into());
            }
        };
        self.handle_packet(now, source, via, datagram.len(), &packet, sealed)
    }

    fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        via: Option<u32>,
        len: usize,
        packet: &Packet<'_>,
        sealed: bool,
    ) -> Result<(), Rejected> {
        if packet.namespace != self.ours.namespace {
            return Err(Rejected::ForeignNamespace);
        }
        let (id, inc) = (packet.sender, packet.incarnation);
        if sealed {
            let wall = self.wall_ms(now);
            self.replay
                .check(now, wall, id, inc, packet.seq, packet.sent_ms)
                .map_err(|replay| match replay {
                    Replay::Stale => Rejected::StaleClock { id },
                    Replay::Repeat => Rejected::Replayed { id },
                })?;
        }
        // The source IP (with its IPv6 scope) and the sender's reply port.
        let mut from = source;
        from.set_port(packet.reply_port);
        if id == self.ours.id {
            if inc == self.ours.incarnation {
                return Ok(()); // our own multicast, looped back
            }
            self.members.conflict(id, from, now, &mut self.out);
            return Err(Rejected::SameIdAsUs { id });
        }
        if let Some(wall) = self.wall_ms(now) {
            let limit_us = (wall + MAX_FUTURE_INCARNATION.as_millis() as u64).saturating_mul(1000);
            if inc > limit_us {
                return Err(Rejected::FutureIncarnation { id });
            }
        }
        let proven = sealed
            || packet
                .echo
                .is_some_and(|echo| self.validator.verify(now, echo, from, id));
        if proven && !sealed {
            self.out.stats.proven += 1;
        }
        // Any packet from an address a peer proved, or a sealed one, may be
        // answered in full; anything else gets at most what it carried.
        let trusted = proven || self.members.peers.get(id).is_some_and(|p| p.has_addr(from));
        if !trusted {
            self.out.stats.unproven_bytes_in += len as u64;
        }
        let cookie = packet.cookie;
        match packet.message {
            Message::Goodbye { proof } => self.members.goodbye(id, inc, &proof, &mut self.out),
            Message::Query { want_reply } => {
                if proven {
                    // The last step of a handshake: the claim it proves.
                    if let Some(claim) = self.pending.take(id, from) {
                        let h = Heard {
                            now,
                            from,
                            via,
                            id,
                            incarnation: claim.incarnation,
                            ttl: claim.ttl,
                            process: claim.process,
                            commitment: claim.commitment,
                            payload: &claim.payload,
                            proven: true,
                        };
                        self.heard(&h)?;
                    }
                } else {
                    self.members.queried_by(now, id, inc, from);
                }
                match self.mode {
                    Mode::Announce if want_reply && trusted => {
                        if !self.budget(now, id, from) {
                            return Ok(());
                        }
                        self.answer(now, from, Said::Reply, None, cookie, None);
                        if proven && cookie.is_some() {
                            // The last datagram of a handshake, to an address
                            // just proven: a second copy a little later, so
                            // one loss does not leave the sender waiting for
                            // our next announcement (with 10% loss the worst
                            // of 10 simulated runs converged in 12.4 s
                            // without it, 1.6 s with it).
                            self.answer(now, from, Said::Reply, None, cookie, Some(FINAL_AGAIN));
                        }
                    }
                    Mode::Announce if want_reply => {
                        self.challenge(now, from, id, cookie, len, None);
                    }
                    // A sniffer never says who it is; it only proves its
                    // address when challenged, so that it is answered.
                    Mode::Sniff if cookie.is_some() => {
                        self.challenge(now, from, id, cookie, len, None);
                    }
                    _ => {}
                }
                Ok(())
            }
            Message::Announce { info, .. } | Message::Reply { info } => {
                let ttl = Duration::from_millis(u64::from(info.ttl_ms))
                    .clamp(MIN_TTL, self.members.limits.max_peer_ttl.max(MIN_TTL));
                let h = Heard {
                    now,
                    from,
                    via,
                    id,
                    incarnation: inc,
                    ttl,
                    process: info.process,
                    commitment: info.commitment,
                    payload: info.payload,
                    proven,
                };
                let outcome = self.heard(&h)?;
                let announcing = self.mode == Mode::Announce;
                match (packet.message, outcome) {
                    (Message::Announce { want_reply, .. }, Outcome::Unproven) if announcing => {
                        // Paced like any answer to a newcomer.
                        let pace = want_reply.then(|| self.pacing());
                        self.challenge(now, from, id, cookie, len, pace);
                    }
                    (Message::Reply { .. }, Outcome::Unproven) => {
                        self.challenge(now, from, id, cookie, len, None);
                    }
                    (
                        Message::Announce {
                            want_reply, known, ..
                        },
                        outcome,
                    ) if announcing => {
                        // Asked by name (want_reply), or by the absence of our
                        // id from a settling announcement's filter.
                        let asked = (want_reply || !known.is_empty())
                            && !filter::contains(known, self.ours.id);
                        if (asked || outcome == Outcome::Joined) && self.budget(now, id, from) {
                            let pace = self.pacing();
                            self.answer(now, from, Said::Reply, None, cookie, Some(pace));
                        }
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// Membership's verdict on a packet with info, and what follows from it:
    /// an unproven claim waits, a contest or a doubt is probed.
    fn heard(&mut self, h: &Heard<'_>) -> Result<Outcome, Rejected> {
        let outcome = self.members.heard(h, &mut self.out)?;
        match outcome {
            Outcome::Unproven => {
                if self.pending.insert(h.id, h.from, h.claim()) {
                    self.out.stats.pending_evicted += 1;
                }
            }
            Outcome::ContestBegun(addr) => self.probe(h.now, h.id, addr),
            Outcome::ProbeForTruth(addr) => {
                // Still a stale packet; the probe finds out what is there.
                self.probe(h.now, h.id, addr);
                return Err(Rejected::StaleIncarnation { id: h.id });
            }
            Outcome::Joined | Outcome::Known => {
                if h.proven {
                    self.pending.take(h.id, h.from);
                }
            }
            Outcome::Contesting => {}
        }
        Ok(outcome)
    }

    /// Whether one more full answer may go to a known peer's address: a
    /// peer's own packets ask for a few a second at most (probes, handshake
    /// steps), so a replayed stream of them is answered at a bounded rate.
    /// Addresses that are not a peer's (a sniffer that proved itself) are
    /// not limited here.
    fn budget(&mut self, now: Instant, id: Id, from: SocketAddr) -> bool {
        let allowed = self
            .members
            .peers
            .update(id, |p| {
                !p.has_addr(from) || p.answers.take(now, PEER_ANSWERS)
            })
            .unwrap_or(true);
        if !allowed {
            self.out.stats.dropped_rate_limited += 1;
        }
        allowed
    }

    /// A uniform delay over the group's pacing spread.
    fn pacing(&mut self) -> Duration {
        let spread = (PACING_PER_PEER * self.group_size() as u32).min(MAX_PACING);
        self.announcer.spread(spread)
    }

    fn probe(&mut self, now: Instant, id: Id, addr: SocketAddr) {
        let cookie = self.validator.cookie(now, addr, id);
        self.answer(
            now,
            addr,
            Said::Query { want_reply: true },
            Some(cookie),
            None,
            None,
        );
    }

    /// Sends `said` to a trusted address, now or after `delay`.
    fn answer(
        &mut self,
        now: Instant,
        to: SocketAddr,
        said: Said,
        cookie: Option<wire::Cookie>,
        echo: Option<wire::Cookie>,
        delay: Option<Duration>,
    ) {
        let wall = self.wall_ms(now).unwrap_or(0);
        let bytes = self.ours.packet(
            wall,
            Build {
                cookie,
                echo,
                ..Build::plain(said)
            },
        );
        match delay {
            Some(delay) if !delay.is_zero() => {
                self.out
                    .send_at(now + delay, Destination::Unicast(to), bytes);
            }
            _ => self.out.send(Destination::Unicast(to), bytes),
        }
    }

    /// Asks an unproven sender to prove its address: a query with a cookie
    /// (and the echo of its own cookie, if it sent one), padded so that the
    /// sender's answer, one echo larger, still fits in what this carried;
    /// never larger than `len`, the datagram it answers, and rate limited.
    #[allow(clippy::too_many_arguments)]
    fn challenge(
        &mut self,
        now: Instant,
        to: SocketAddr,
        id: Id,
        echo: Option<wire::Cookie>,
        len: usize,
        delay: Option<Duration>,
    ) {
        if self.mode != Mode::Announce && echo.is_none() {
            // A sniffer challenges only to answer a challenge.
            return;
        }
        if !self.limiter.allow(now, to) {
            self.out.stats.dropped_rate_limited += 1;
            return;
        }
        let cookie = self.validator.cookie(now, to, id);
        let wall = self.wall_ms(now).unwrap_or(0);
        let build = Build {
            cookie: Some(cookie),
            echo,
            ..Build::plain(Said::Query { want_reply: true })
        };
        let mut bytes = self.ours.packet(wall, build);
        // Room for the answer (our packet plus one echo, with slack), so the
        // sender's answer fits its own rule; never beyond what arrived.
        let room = (bytes.len() + CHALLENGE_ROOM).min(len);
        if room > bytes.len() {
            bytes = self.ours.packet(
                wall,
                Build {
                    pad_to: room,
                    ..build
                },
            );
        }
        if bytes.len() > len {
            self.out.stats.dropped_too_large_to_answer += 1;
            return;
        }
        self.out.stats.unproven_bytes_out += bytes.len() as u64;
        match delay {
            Some(delay) if !delay.is_zero() => {
                self.out
                    .send_at(now + delay, Destination::Unicast(to), bytes);
            }
            _ => self.out.send(Destination::Unicast(to), bytes),
        }
    }

    /// Feeds what an external source (etcd) reports into membership.
    pub(crate) fn handle_source(&mut self, now: Instant, event: SourceEvent) {
        if self.closed {
            return;
        }
        match event {
            SourceEvent::Put(record) if record.id == self.ours.id => {}
            SourceEvent::Put(record) if record.leaving => {
                let (id, inc) = (record.id, record.incarnation);
                self.members
                    .external_delete(id, Some(inc), true, &mut self.out);
            }
            SourceEvent::Put(record) => {
                if let Err(rejected) = self.members.external_put(now, record, &mut self.out) {
                    self.out.rejected(&rejected);
                }
            }
            SourceEvent::Delete {
                id,
                incarnation,
                leaving,
            } => self
                .members
                .external_delete(id, incarnation, leaving, &mut self.out),
            SourceEvent::Stale(_) | SourceEvent::Garbage => {}
        }
    }
}
