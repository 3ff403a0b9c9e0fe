//! Who is a member: the rules for joining, changing, restarting and leaving.
//!
//! **Owns:** the [`PeerTable`] and every rule that changes it: a new sender
//! joins, a known one is refreshed or updated, a larger incarnation replaces
//! the old one, a smaller one is stale, two live claimants of one id are a
//! conflict, and a peer leaves with a reason. Every change is reported as an
//! [`Change`] in the outbox, in order. **Must not touch:** decoding, sending
//! policy or timers beyond the peers' own deadlines; the coordinator decides
//! what to answer.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::events::{Change, LeftReason, PeerInfo, Rejected};
use super::liveness::Due;
use super::output::Outbox;
use super::peers::{Peer, PeerTable};
use crate::wire::{Id, Packet};

/// How long packets from an older incarnation may keep arriving (reordered
/// or delayed in flight) before they mean a second live instance with the
/// same id.
pub const CONFLICT_GRACE: Duration = Duration::from_secs(2);

/// The shortest TTL accepted from a peer; shorter ones are raised to it, so a
/// hostile or broken peer cannot make everyone churn its entry.
pub const MIN_TTL: Duration = Duration::from_millis(100);

/// Bound on remembered conflict reports, so a flood of forged claimants
/// cannot grow memory; when full it is cleared (a conflict may then be
/// reported again, which is harmless).
const MAX_CONFLICTS_REMEMBERED: usize = 256;

/// The membership of one instance's view.
#[derive(Debug)]
pub(crate) struct Membership {
    pub(crate) peers: PeerTable,
    conflicts: HashSet<(Id, SocketAddr)>,
    accept_payload: fn(&[u8]) -> bool,
}

impl Membership {
    pub(crate) fn new(accept_payload: fn(&[u8]) -> bool) -> Self {
        Membership {
            peers: PeerTable::default(),
            conflicts: HashSet::new(),
            accept_payload,
        }
    }

    /// An announcement or reply from `reply_addr`: adds or refreshes its
    /// sender. Returns whether the sender is new to us.
    pub(crate) fn upsert(
        &mut self,
        now: Instant,
        reply_addr: SocketAddr,
        packet: &Packet<'_>,
        out: &mut Outbox,
    ) -> Result<bool, Rejected> {
        let id = packet.sender;
        let ttl = Duration::from_millis(u64::from(packet.ttl_ms)).max(MIN_TTL);
        let Some(known) = self.peers.get(id) else {
            if !(self.accept_payload)(packet.payload) {
                return Err(Rejected::UndecodablePayload { id });
            }
            let peer = Peer::new(
                reply_addr,
                packet.incarnation,
                packet.payload.to_vec(),
                packet.process,
                now,
                ttl,
            );
            out.event(Change::Joined(info(id, &peer)));
            self.peers.insert(id, peer);
            return Ok(true);
        };
        if packet.incarnation < known.incarnation {
            if reply_addr != known.reply_addr
                && now.saturating_duration_since(known.since) > CONFLICT_GRACE
            {
                self.conflict(id, reply_addr, out);
            }
            return Err(Rejected::StaleIncarnation { id });
        }
        let restarted = packet.incarnation != known.incarnation;
        let new_payload = known.payload != packet.payload;
        if new_payload && !(self.accept_payload)(packet.payload) {
            return Err(Rejected::UndecodablePayload { id });
        }
        let changed = restarted || new_payload || known.reply_addr != reply_addr;
        let updated = self
            .peers
            .update(id, |peer| {
                peer.liveness.heard(now, ttl);
                if restarted {
                    peer.since = now;
                }
                if changed {
                    peer.incarnation = packet.incarnation;
                    peer.reply_addr = reply_addr;
                    if new_payload {
                        peer.payload = packet.payload.to_vec();
                    }
                    peer.process = packet.process;
                }
                changed.then(|| info(id, peer))
            })
            .flatten();
        if let Some(info) = updated {
            out.event(Change::Updated(info));
        }
        Ok(false)
    }

    /// A query from a known peer (its probe of us) is a sign of life too.
    pub(crate) fn queried_by(&mut self, now: Instant, reply_addr: SocketAddr, packet: &Packet<'_>) {
        let same = |p: &Peer| p.incarnation == packet.incarnation && p.reply_addr == reply_addr;
        if self.peers.get(packet.sender).is_some_and(same) {
            self.peers
                .update(packet.sender, |p| p.liveness.heard_again(now));
        }
    }

    /// A goodbye: the sender leaves, unless the goodbye is from an older
    /// incarnation than the one we know.
    pub(crate) fn goodbye(
        &mut self,
        packet: &Packet<'_>,
        out: &mut Outbox,
    ) -> Result<(), Rejected> {
        match self.peers.get(packet.sender) {
            Some(peer) if packet.incarnation < peer.incarnation => {
                Err(Rejected::StaleIncarnation { id: packet.sender })
            }
            Some(_) => {
                self.leave(packet.sender, LeftReason::Goodbye, out);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// `id` leaves for `reason`. Returns whether it was known.
    pub(crate) fn leave(&mut self, id: Id, reason: LeftReason, out: &mut Outbox) -> bool {
        let known = self.peers.remove(id).is_some();
        if known {
            out.event(Change::Left { id, reason });
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

    /// Handles every peer deadline that has come: evicts those gone, and
    /// calls `probe` for each peer to probe, in deadline order.
    pub(crate) fn on_timeout(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        mut probe: impl FnMut(SocketAddr, &mut Outbox),
    ) {
        while let Some((id, addr, due)) = self.peers.pop_due(now) {
            match due {
                Due::Evict => out.event(Change::Left {
                    id,
                    reason: LeftReason::Expired,
                }),
                Due::Probe => probe(addr, out),
                Due::Nothing => {}
            }
        }
    }

    /// Reports a conflict once per (id, claimant address).
    pub(crate) fn conflict(&mut self, id: Id, other: SocketAddr, out: &mut Outbox) {
        if self.conflicts.len() >= MAX_CONFLICTS_REMEMBERED {
            self.conflicts.clear();
        }
        if self.conflicts.insert((id, other)) {
            out.event(Change::Conflict { id, other });
        }
    }
}

fn info(id: Id, peer: &Peer) -> PeerInfo {
    PeerInfo {
        id,
        incarnation: peer.incarnation,
        ip: peer.reply_addr.ip(),
        payload: peer.payload.clone(),
        process: peer.process,
    }
}
