//! Who is a member: the rules for joining, changing, restarting, moving and
//! leaving, from the LAN and from external sources.
//!
//! **Owns:** the [`PeerTable`] and every rule that changes it. Every change
//! is reported as a [`Change`] in the outbox, in order. **Must not touch:**
//! decoding, address validation or answering: the coordinator tells this
//! module whether a sender proved its address, and decides what to send.
//!
//! # The rules
//!
//! - Only a sender that proved its address (or sent a sealed packet) joins.
//! - A known peer is refreshed by packets from an address it proved. A
//!   proven packet from a new address of the same incarnation adds that
//!   address (a peer on two networks is one entry with two addresses, in the
//!   order they were proven, so the best one does not flap).
//! - A newer incarnation from a proven address of the peer is a restart,
//!   believed at once. From another address it is a restart on a new port,
//!   or a takeover: the known address is probed, and only if it stays
//!   silent for the contest (three probes over a second) does the newcomer
//!   replace it. While it answers, the claim is refused and reported as a
//!   conflict.
//! - A proven packet from a peer's own address names the incarnation really
//!   there; an older one than believed undoes a forged restart.
//! - A goodbye is believed only with its incarnation's secret, whose hash
//!   the incarnation announced.
//! - Tables are bounded: at most `max_peers`, at most `max_peers_per_ip` per
//!   source address; conflicts are reported at most once per id per
//!   [`CONFLICT_EVERY`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::announcer::commitment_of;
use super::config::Limits;
use super::events::{Change, LeftReason, PeerInfo, Rejected};
use super::output::Outbox;
use super::peers::{Contest, Due, External, Peer, PeerTable};
use super::validation::Claim;
use crate::source::{Learned, Record};
use crate::wire::Id;

/// How long packets from an older incarnation may keep arriving from
/// another address (reordered or delayed in flight) before they mean a
/// second live instance with the same id.
pub const CONFLICT_GRACE: Duration = Duration::from_secs(2);

/// The shortest TTL accepted from a peer; shorter ones are raised to it, so a
/// hostile or broken peer cannot make everyone churn its entry.
pub const MIN_TTL: Duration = Duration::from_millis(100);

/// A conflict over one id is reported at most this often.
pub const CONFLICT_EVERY: Duration = Duration::from_secs(10);

/// How long a known address gets to answer each contest probe.
pub const CONTEST_STEP: Duration = Duration::from_millis(333);

/// Probes in a contest before the known address counts as gone.
const CONTEST_PROBES: u8 = 3;

/// Bound on remembered conflict reports.
const MAX_CONFLICTS_REMEMBERED: usize = 256;

/// A packet with info (announcement or reply), as membership sees it.
#[derive(Debug)]
pub(crate) struct Heard<'p> {
    pub(crate) now: Instant,
    pub(crate) from: SocketAddr,
    pub(crate) via: Option<u32>,
    pub(crate) id: Id,
    pub(crate) incarnation: u64,
    pub(crate) ttl: Duration,
    pub(crate) process: Option<crate::wire::ProcessTag>,
    pub(crate) commitment: [u8; 16],
    pub(crate) payload: &'p [u8],
    /// The sender proved it receives at `from` (a good echo, or a sealed
    /// packet).
    pub(crate) proven: bool,
}

impl Heard<'_> {
    pub(crate) fn claim(&self) -> Claim {
        Claim {
            incarnation: self.incarnation,
            ttl: self.ttl,
            process: self.process,
            commitment: self.commitment,
            payload: self.payload.to_vec(),
        }
    }
}

/// What became of a packet with info.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A peer we did not have joined.
    Joined,
    /// A known peer was refreshed (and maybe updated).
    Known,
    /// The sender has not proven its address: hold the claim and challenge.
    Unproven,
    /// A contest began: probe the known address.
    ContestBegun(SocketAddr),
    /// A contest is under way; nothing to do.
    Contesting,
    /// An older incarnation from the peer's own address: probe it to learn
    /// which incarnation is really there.
    ProbeForTruth(SocketAddr),
}

/// The membership of one instance's view.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) peers: PeerTable,
    conflicts: HashMap<Id, Instant>,
    accept_payload: fn(&[u8]) -> bool,
    pub(crate) limits: Limits,
}

impl Membership {
    pub(crate) fn new(accept_payload: fn(&[u8]) -> bool, limits: Limits) -> Self {
        Membership {
            peers: PeerTable::default(),
            conflicts: HashMap::new(),
            accept_payload,
            limits,
        }
    }

    fn admit(&self, id: Id, ip: Option<std::net::IpAddr>, payload: &[u8]) -> Result<(), Rejected> {
        if self.peers.len() >= self.limits.max_peers {
            return Err(Rejected::PeerCap { id });
        }
        if let Some(ip) = ip
            && self.peers.at_ip(ip) >= self.limits.max_peers_per_ip
        {
            return Err(Rejected::AddressCap { id });
        }
        if !(self.accept_payload)(payload) {
            return Err(Rejected::UndecodablePayload { id });
        }
        Ok(())
    }

    /// An announcement or reply.
    pub(crate) fn heard(&mut self, h: &Heard<'_>, out: &mut Outbox) -> Result<Outcome, Rejected> {
        let Some(peer) = self.peers.get(h.id) else {
            if !h.proven {
                return Ok(Outcome::Unproven);
            }
            self.admit(h.id, Some(h.from.ip()), h.payload)?;
            let mut peer = Peer::new(
                h.incarnation,
                h.payload.to_vec(),
                h.process,
                h.commitment,
                h.now,
                h.ttl,
            );
            peer.heard_at(h.from, h.via, h.now);
            out.event(Change::Joined(info(h.id, &peer)));
            self.peers.insert(h.id, peer);
            return Ok(Outcome::Joined);
        };
        let at_known = peer.has_addr(h.from);
        if h.incarnation == peer.incarnation {
            if !(at_known || h.proven) {
                return Ok(Outcome::Unproven);
            }
            if h.payload != peer.payload && !(self.accept_payload)(h.payload) {
                return Err(Rejected::UndecodablePayload { id: h.id });
            }
            let changed = self
                .peers
                .update(h.id, |peer| {
                    let mut changed = peer.heard_at(h.from, h.via, h.now);
                    changed |= peer.forget_silent_addrs(h.now);
                    peer.liveness.heard(h.now, h.ttl);
                    if at_known
                        && h.proven
                        && let Some(contest) = &mut peer.contest
                    {
                        contest.answered = true;
                    }
                    if peer.payload != h.payload {
                        peer.payload = h.payload.to_vec();
                        changed = true;
                    }
                    if peer.process != h.process {
                        peer.process = h.process;
                        changed = true;
                    }
                    changed.then(|| info(h.id, peer))
                })
                .flatten();
            if let Some(info) = changed {
                out.event(Change::Updated(info));
            }
            return Ok(Outcome::Known);
        }
        if h.incarnation > peer.incarnation {
            if at_known || !peer.on_lan() {
                // A restart at a proven address (or first heard on the LAN
                // after an external source listed it): believed at once.
                if !(at_known || h.proven) {
                    return Ok(Outcome::Unproven);
                }
                self.replace(h.id, h.from, h.via, &h.claim(), h.now, out)?;
                return Ok(Outcome::Known);
            }
            if !h.proven {
                return Ok(Outcome::Unproven);
            }
            let probe = peer.primary();
            let begun = self
                .peers
                .update(h.id, |peer| match &mut peer.contest {
                    Some(contest) if contest.addr == h.from => {
                        contest.claim = h.claim();
                        Ok(false)
                    }
                    Some(_) => Err(Rejected::Contested { id: h.id }),
                    None => {
                        peer.contest = Some(Contest {
                            addr: h.from,
                            via: h.via,
                            claim: h.claim(),
                            until: h.now + CONTEST_STEP,
                            answered: false,
                            probes: 1,
                        });
                        Ok(true)
                    }
                })
                .expect("known");
            return Ok(match (begun?, probe) {
                (true, Some(addr)) => Outcome::ContestBegun(addr),
                _ => Outcome::Contesting,
            });
        }
        // An older incarnation than we know.
        if at_known {
            if h.proven {
                // Proof from the peer's own address: this is the process
                // really there; a "restart" we believed was forged.
                self.replace(h.id, h.from, h.via, &h.claim(), h.now, out)?;
                return Ok(Outcome::Known);
            }
            let due = peer
                .truth_probe
                .is_none_or(|at| h.now.saturating_duration_since(at) >= CONFLICT_EVERY);
            if due {
                self.peers.update(h.id, |p| p.truth_probe = Some(h.now));
                return Ok(Outcome::ProbeForTruth(h.from));
            }
        } else if h.now.saturating_duration_since(peer.since) > CONFLICT_GRACE {
            self.conflict(h.id, h.from, h.now, out);
        }
        Err(Rejected::StaleIncarnation { id: h.id })
    }

    /// Replaces a peer's incarnation (a restart, or the truth about a
    /// forged one) with what `claim` says, at `addr`.
    fn replace(
        &mut self,
        id: Id,
        addr: SocketAddr,
        via: Option<u32>,
        claim: &Claim,
        now: Instant,
        out: &mut Outbox,
    ) -> Result<(), Rejected> {
        let known = self
            .peers
            .get(id)
            .is_some_and(|p| p.payload == claim.payload);
        if !known && !(self.accept_payload)(&claim.payload) {
            return Err(Rejected::UndecodablePayload { id });
        }
        let info = self.peers.update(id, |peer| {
            if !peer.has_addr(addr) {
                peer.addrs.clear();
            }
            peer.heard_at(addr, via, now);
            peer.incarnation = claim.incarnation;
            peer.payload.clone_from(&claim.payload);
            peer.process = claim.process;
            peer.commitment = claim.commitment;
            peer.since = now;
            peer.contest = None;
            peer.liveness.heard(now, claim.ttl);
            info(id, peer)
        });
        if let Some(info) = info {
            out.event(Change::Updated(info));
        }
        Ok(())
    }

    /// A query from a proven address of a known peer (its probe of us) is a
    /// sign of life too.
    pub(crate) fn queried_by(&mut self, now: Instant, id: Id, incarnation: u64, from: SocketAddr) {
        if self
            .peers
            .get(id)
            .is_some_and(|p| p.incarnation == incarnation && p.has_addr(from))
        {
            self.peers.update(id, |p| {
                p.heard_at(from, None, now);
                p.liveness.heard_again(now);
            });
        }
    }

    /// A goodbye: the peer leaves if `proof` is its incarnation's secret.
    pub(crate) fn goodbye(
        &mut self,
        id: Id,
        incarnation: u64,
        proof: &[u8; 16],
        out: &mut Outbox,
    ) -> Result<(), Rejected> {
        let Some(peer) = self.peers.get(id) else {
            return Ok(());
        };
        if incarnation < peer.incarnation {
            return Err(Rejected::StaleIncarnation { id });
        }
        if incarnation != peer.incarnation || commitment_of(proof) != peer.commitment {
            return Err(Rejected::UnprovenGoodbye { id });
        }
        self.leave(id, LeftReason::Goodbye, out);
        Ok(())
    }

    /// `id` leaves for `reason`. Returns whether it was known.
    pub(crate) fn leave(&mut self, id: Id, reason: LeftReason, out: &mut Outbox) -> bool {
        let known = self.peers.remove(id).is_some();
        if known {
            out.event(Change::Left { id, reason });
            self.peers.shrink();
        }
        known
    }

    /// Every peer leaves for `reason`, in id order.
    pub(crate) fn clear(&mut self, reason: LeftReason, out: &mut Outbox) {
        let mut ids: Vec<Id> = self.peers.iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            self.leave(id, reason, out);
        }
    }

    /// Handles every peer deadline that has come: ends the LAN presence of
    /// peers gone silent, decides contests, and calls `probe` for each
    /// address to probe, in deadline order.
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        mut probe: impl FnMut(Id, SocketAddr, &mut Outbox),
    ) {
        while let Some((id, due)) = self.peers.pop_due(now) {
            match due {
                Some(Due::Probe(addr)) => {
                    out.stats.probes_sent += 1;
                    probe(id, addr, out);
                }
                Some(Due::Evict) => self.lan_gone(id, LeftReason::Expired, out),
                Some(Due::Contest) => {
                    if let Some(addr) = self.decide_contest(id, now, out) {
                        probe(id, addr, out);
                    }
                }
                None => {}
            }
        }
    }

    /// Decides (or extends) a contest; returns an address to probe again.
    fn decide_contest(
        &mut self,
        id: Id,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<std::net::SocketAddr> {
        let peer = self.peers.get(id)?;
        let contest = peer.contest.clone()?;
        if contest.answered {
            // The known address answered: the claim was not a restart.
            self.peers.update(id, |p| p.contest = None);
            out.stats.dropped_contested += 1;
            self.conflict(id, contest.addr, now, out);
            return None;
        }
        if contest.probes < CONTEST_PROBES {
            let again = peer.primary();
            self.peers.update(id, |p| {
                if let Some(c) = &mut p.contest {
                    c.probes += 1;
                    c.until = now + CONTEST_STEP;
                }
            });
            return again;
        }
        // Silent through every probe: the claimant is the peer now.
        let _ = self.replace(id, contest.addr, contest.via, &contest.claim, now, out);
        None
    }

    /// The peer's LAN presence ended; it leaves unless an external source
    /// still lists it.
    fn lan_gone(&mut self, id: Id, reason: LeftReason, out: &mut Outbox) {
        let external = self.peers.get(id).is_some_and(Peer::external);
        if !external {
            self.leave(id, reason, out);
            return;
        }
        let info = self.peers.update(id, |p| {
            p.addrs.clear();
            p.contest = None;
            info(id, p)
        });
        if let Some(info) = info {
            out.event(Change::Updated(info));
        }
    }

    /// An external source lists (or relists) a record.
    pub(crate) fn external_put(
        &mut self,
        now: Instant,
        record: Record,
        out: &mut Outbox,
    ) -> Result<(), Rejected> {
        let id = record.id;
        let external = External {
            incarnation: record.incarnation,
            addrs: record.addrs,
            payload: record.payload,
            process: record.process,
        };
        let Some(peer) = self.peers.get(id) else {
            self.admit(id, None, &external.payload)?;
            let mut peer = Peer::new(
                external.incarnation,
                external.payload.clone(),
                external.process,
                [0; 16],
                now,
                MIN_TTL,
            );
            peer.external = Some(external);
            out.event(Change::Joined(info(id, &peer)));
            self.peers.insert(id, peer);
            return Ok(());
        };
        if external.incarnation < peer.incarnation {
            return Err(Rejected::StaleIncarnation { id });
        }
        if external.payload != peer.payload && !(self.accept_payload)(&external.payload) {
            return Err(Rejected::UndecodablePayload { id });
        }
        let info = self.peers.update(id, |p| {
            let before = info(id, p);
            if external.incarnation > p.incarnation {
                // The LAN addresses were the old process's.
                p.addrs.clear();
                p.since = now;
            }
            p.incarnation = external.incarnation;
            p.payload.clone_from(&external.payload);
            p.process = external.process;
            p.external = Some(external);
            let after = info(id, p);
            (after != before).then_some(after)
        });
        if let Some(Some(info)) = info {
            out.event(Change::Updated(info));
        }
        Ok(())
    }

    /// An external source no longer lists `id` (or its `incarnation`).
    pub(crate) fn external_delete(
        &mut self,
        id: Id,
        incarnation: Option<u64>,
        leaving: bool,
        out: &mut Outbox,
    ) {
        let Some(peer) = self.peers.get(id) else {
            return;
        };
        if incarnation.is_some_and(|inc| inc < peer.incarnation) || peer.external.is_none() {
            return; // a predecessor's record, or not listed anyway
        }
        if !peer.on_lan() {
            let reason = if leaving {
                LeftReason::Goodbye
            } else {
                LeftReason::Expired
            };
            self.leave(id, reason, out);
            return;
        }
        let info = self.peers.update(id, |p| {
            p.external = None;
            info(id, p)
        });
        if let Some(info) = info {
            out.event(Change::Updated(info));
        }
    }

    /// Reports a conflict over `id`, at most once per [`CONFLICT_EVERY`].
    pub(crate) fn conflict(&mut self, id: Id, other: SocketAddr, now: Instant, out: &mut Outbox) {
        if let Some(at) = self.conflicts.get(&id)
            && now.saturating_duration_since(*at) < CONFLICT_EVERY
        {
            return;
        }
        if self.conflicts.len() >= MAX_CONFLICTS_REMEMBERED {
            self.conflicts
                .retain(|_, at| now.saturating_duration_since(*at) < CONFLICT_EVERY);
            if self.conflicts.len() >= MAX_CONFLICTS_REMEMBERED {
                return; // a storm: enough reported for now
            }
        }
        self.conflicts.insert(id, now);
        out.event(Change::Conflict { id, other });
    }
}

/// What a change reports of a peer.
impl Membership {
    /// A local interface is gone: see
    /// [`Protocol::handle_interface_gone`](super::Protocol::handle_interface_gone).
    pub(crate) fn interface_gone(&mut self, now: Instant, index: u32, out: &mut Outbox) {
        let heard_there: Vec<Id> = self
            .peers
            .iter()
            .filter(|(_, p)| p.addrs.iter().any(|a| a.via == Some(index)))
            .map(|(id, _)| id)
            .collect();
        for id in heard_there {
            let changed = self
                .peers
                .update(id, |p| p.interface_gone(index, now).then(|| info(id, p)))
                .flatten();
            if let Some(info) = changed {
                out.event(Change::Updated(info));
            }
        }
    }
}

pub(crate) fn info(id: Id, peer: &Peer) -> PeerInfo {
    let mut addrs: Vec<SocketAddr> = peer.addrs.iter().map(|a| a.addr).collect();
    let mut interfaces: Vec<Option<u32>> = peer.addrs.iter().map(|a| a.via).collect();
    if let Some(external) = &peer.external {
        for ip in &external.addrs {
            if !addrs.iter().any(|a| a.ip() == *ip) {
                addrs.push(SocketAddr::new(*ip, 0));
                interfaces.push(None);
            }
        }
    }
    PeerInfo {
        id,
        incarnation: peer.incarnation,
        ip: addrs.first().map_or(
            std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            SocketAddr::ip,
        ),
        addrs,
        interfaces,
        learned: Learned {
            lan: peer.on_lan(),
            etcd: peer.external(),
        },
        payload: peer.payload.clone(),
        process: peer.process,
    }
}
