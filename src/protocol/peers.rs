//! The table of known peers, with their deadlines kept in order.
//!
//! **Owns:** who is known ([`Peer`] by [`Id`]) and the ordered set of their
//! liveness deadlines, so the next deadline is found in O(log n) and a changed
//! TTL moves a peer's deadline at once. **Must not touch:** packets, events or
//! the rules of membership (they live in `membership`); the table only stores
//! and orders.
//!
//! Invariant: `deadlines` holds exactly one `(peer.scheduled, id)` per peer.
//! Every mutation goes through [`PeerTable::update`], which re-files the
//! peer's deadline after the change.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::liveness::{Due, Liveness};
use crate::wire::{Id, ProcessTag};

/// What the state machine knows of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's unicast reply address: source IP + its reply port.
    pub reply_addr: SocketAddr,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's encoded payload.
    pub payload: Vec<u8>,
    /// The peer's process, if it told us.
    pub process: Option<ProcessTag>,
    /// When we first heard from this incarnation.
    pub since: Instant,
    pub(crate) liveness: Liveness,
    /// Where this peer's deadline is filed in the table.
    scheduled: Instant,
}

impl Peer {
    pub(crate) fn new(
        reply_addr: SocketAddr,
        incarnation: u64,
        payload: Vec<u8>,
        process: Option<ProcessTag>,
        now: Instant,
        ttl: Duration,
    ) -> Self {
        let liveness = Liveness::new(now, ttl);
        Peer {
            reply_addr,
            incarnation,
            payload,
            process,
            since: now,
            scheduled: liveness.deadline(),
            liveness,
        }
    }

    /// When we last heard from it.
    pub fn last_seen(&self) -> Instant {
        self.liveness.last_seen()
    }

    /// How long it may stay silent (its announced TTL, bounded).
    pub fn ttl(&self) -> Duration {
        self.liveness.ttl()
    }
}

/// Known peers by id, plus their deadlines in order.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: HashMap<Id, Peer>,
    deadlines: BTreeSet<(Instant, Id)>,
}

impl PeerTable {
    pub(crate) fn get(&self, id: Id) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Id, &Peer)> {
        self.peers.iter().map(|(id, p)| (*id, p))
    }

    /// Adds a peer that is not in the table.
    pub(crate) fn insert(&mut self, id: Id, mut peer: Peer) {
        peer.scheduled = peer.liveness.deadline();
        self.deadlines.insert((peer.scheduled, id));
        if let Some(old) = self.peers.insert(id, peer) {
            // Not expected (callers check), but keep the invariant anyway.
            self.deadlines.remove(&(old.scheduled, id));
        }
    }

    /// Changes a peer and re-files its deadline. Returns what `change`
    /// returned, or `None` if the peer is unknown.
    pub(crate) fn update<R>(&mut self, id: Id, change: impl FnOnce(&mut Peer) -> R) -> Option<R> {
        let peer = self.peers.get_mut(&id)?;
        let result = change(peer);
        let deadline = peer.liveness.deadline();
        if deadline != peer.scheduled {
            self.deadlines.remove(&(peer.scheduled, id));
            self.deadlines.insert((deadline, id));
            peer.scheduled = deadline;
        }
        Some(result)
    }

    pub(crate) fn remove(&mut self, id: Id) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        self.deadlines.remove(&(peer.scheduled, id));
        Some(peer)
    }

    /// The earliest deadline of any peer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Handles the first peer whose deadline has come, if any: what it asks
    /// for, with its reply address. An evicted peer is removed from the
    /// table before this returns.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Id, SocketAddr, Due)> {
        let &(at, id) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        let (due, addr) = self
            .update(id, |peer| (peer.liveness.on_deadline(now), peer.reply_addr))
            .expect("every filed deadline belongs to a known peer");
        if due == Due::Evict {
            self.remove(id);
        }
        Some((id, addr, due))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(now: Instant, ttl_ms: u64) -> Peer {
        Peer::new(
            "127.0.0.1:1".parse().unwrap(),
            1,
            vec![],
            None,
            now,
            Duration::from_millis(ttl_ms),
        )
    }

    #[test]
    fn the_next_deadline_is_the_earliest_of_all_peers() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.insert(1, peer(t0, 10_000));
        table.insert(2, peer(t0, 1_000));
        table.insert(3, peer(t0, 5_000));
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_millis(900)));
        table.remove(2);
        assert_eq!(
            table.next_deadline(),
            Some(t0 + Duration::from_millis(4_500))
        );
    }

    #[test]
    fn a_shrinking_ttl_moves_the_deadline_earlier() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.insert(1, peer(t0, 29_000));
        table.update(1, |p| p.liveness.heard(t0, Duration::from_millis(200)));
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_millis(180)));
        // Nothing is due before it, and the peer is gone by its new TTL.
        assert_eq!(table.pop_due(t0 + Duration::from_millis(179)), None);
        let evicted = loop {
            let now = table.next_deadline().unwrap();
            if let Some((1, _, Due::Evict)) = table.pop_due(now) {
                break now;
            }
        };
        assert_eq!(evicted, t0 + Duration::from_millis(200));
        assert_eq!(table.len(), 0);
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn every_peer_has_exactly_one_filed_deadline() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        for id in 0..100u64 {
            table.insert(id, peer(t0, 1_000 + id * 10));
        }
        for id in (0..100u64).step_by(3) {
            table.update(id, |p| {
                p.liveness
                    .heard(t0 + Duration::from_millis(id), Duration::from_millis(500))
            });
        }
        for id in (0..100u64).step_by(7) {
            table.remove(id);
        }
        assert_eq!(table.deadlines.len(), table.len());
        for (id, p) in table.iter() {
            assert!(table.deadlines.contains(&(p.scheduled, id)));
        }
    }
}
