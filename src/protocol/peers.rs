//! The table of known peers, with their deadlines kept in order.
//!
//! **Owns:** who is known ([`Peer`] by [`Id`]), each peer's addresses,
//! sources and open contest, and the ordered set of deadlines, so the next
//! one is found in O(log n) and a changed TTL moves a peer's deadline at
//! once. **Must not touch:** packets, events or the rules of membership (they
//! live in `membership`); the table stores, orders and reports what is due.
//!
//! Invariant: `deadlines` holds exactly one `(at, id)` per peer that has a
//! deadline, `at` being `peer.scheduled`. Every mutation goes through
//! [`PeerTable::update`], which re-files the deadline after the change.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::liveness::{Due as LivenessDue, Liveness};
use super::validation::{Bucket, Claim};
use crate::wire::{Id, ProcessTag};

/// The most addresses kept for one peer.
pub const MAX_ADDRS: usize = 8;

/// One address a peer was heard and proven at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr {
    /// Its unicast socket's address (with the IPv6 scope).
    pub addr: SocketAddr,
    /// The local interface it was heard on, when the driver says.
    pub via: Option<u32>,
    /// When a packet last came from it.
    pub last_heard: Instant,
}

/// How good an address is to reach a peer by (lower is better): IPv4
/// first (every service binds it, no scope needed), then routable IPv6,
/// then link-local IPv6 (valid on one link only, and only with its scope).
pub(crate) fn rank(addr: SocketAddr) -> u8 {
    match addr {
        SocketAddr::V4(_) => 0,
        SocketAddr::V6(a) if a.ip().segments()[0] & 0xffc0 == 0xfe80 => 2,
        SocketAddr::V6(_) => 1,
    }
}

/// What an external source (etcd) says of a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct External {
    pub(crate) incarnation: u64,
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) payload: Vec<u8>,
    pub(crate) process: Option<ProcessTag>,
}

/// Another address claiming a known peer's id with a newer incarnation,
/// while the known address is given a chance to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Contest {
    pub(crate) addr: SocketAddr,
    pub(crate) via: Option<u32>,
    pub(crate) claim: Claim,
    /// When the known address has had long enough to answer.
    pub(crate) until: Instant,
    /// Whether it answered (a proven packet of the known incarnation).
    pub(crate) answered: bool,
    /// Probes sent to the known address so far.
    pub(crate) probes: u8,
}

/// What the state machine knows of one peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Peer {
    /// The addresses it was heard and proven at on the LAN, best first.
    /// Empty when it is known only through an external source.
    pub addrs: Vec<PeerAddr>,
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's encoded payload.
    pub payload: Vec<u8>,
    /// The peer's process, if it told us.
    pub process: Option<ProcessTag>,
    /// When we first heard from this incarnation.
    pub since: Instant,
    pub(crate) commitment: [u8; 16],
    pub(crate) liveness: Liveness,
    pub(crate) external: Option<External>,
    pub(crate) contest: Option<Contest>,
    /// When we last probed its address to learn which incarnation is
    /// really there (rate limit).
    pub(crate) truth_probe: Option<Instant>,
    /// Full answers it may still ask for (rate limit against replays of its
    /// packets).
    pub(crate) answers: Bucket,
    /// Where this peer's deadline is filed, if it has one.
    scheduled: Option<Instant>,
}

impl Peer {
    pub(crate) fn new(
        incarnation: u64,
        payload: Vec<u8>,
        process: Option<ProcessTag>,
        commitment: [u8; 16],
        now: Instant,
        ttl: Duration,
    ) -> Self {
        Peer {
            addrs: Vec::new(),
            incarnation,
            payload,
            process,
            since: now,
            commitment,
            liveness: Liveness::new(now, ttl),
            external: None,
            contest: None,
            truth_probe: None,
            answers: Bucket::full(40, now),
            scheduled: None,
        }
    }

    /// Its best LAN address, if it has one.
    pub fn primary(&self) -> Option<SocketAddr> {
        self.addrs.first().map(|a| a.addr)
    }

    /// Whether it is heard on the LAN.
    pub fn on_lan(&self) -> bool {
        !self.addrs.is_empty()
    }

    /// Whether an external source lists it.
    pub fn external(&self) -> bool {
        self.external.is_some()
    }

    /// When we last heard from it on the LAN.
    pub fn last_seen(&self) -> Instant {
        self.liveness.last_seen()
    }

    /// How long it may stay silent (its announced TTL, bounded).
    pub fn ttl(&self) -> Duration {
        self.liveness.ttl()
    }

    /// Whether `addr` is one of its proven LAN addresses.
    pub fn has_addr(&self, addr: SocketAddr) -> bool {
        self.addrs.iter().any(|a| a.addr == addr)
    }

    /// Records a packet from `addr`; returns whether the address is new.
    /// A new address goes after every address as good as it ([`rank`]), so
    /// the best one comes first and never flaps between equals.
    pub(crate) fn heard_at(&mut self, addr: SocketAddr, via: Option<u32>, now: Instant) -> bool {
        if let Some(known) = self.addrs.iter_mut().find(|a| a.addr == addr) {
            known.last_heard = now;
            if via.is_some() {
                known.via = via;
            }
            return false;
        }
        if self.addrs.len() >= MAX_ADDRS {
            // Make room by dropping the address heard least recently.
            if let Some(oldest) = (0..self.addrs.len()).min_by_key(|&i| self.addrs[i].last_heard) {
                self.addrs.remove(oldest);
            }
        }
        let at = self
            .addrs
            .iter()
            .position(|a| rank(a.addr) > rank(addr))
            .unwrap_or(self.addrs.len());
        self.addrs.insert(
            at,
            PeerAddr {
                addr,
                via,
                last_heard: now,
            },
        );
        true
    }

    /// Drops addresses not heard for a whole TTL while another was: an
    /// interface that went away, a DHCP lease that moved. Returns whether
    /// any went.
    pub(crate) fn forget_silent_addrs(&mut self, now: Instant) -> bool {
        let ttl = self.liveness.ttl();
        let before = self.addrs.len();
        if before > 1 {
            self.addrs
                .retain(|a| now.saturating_duration_since(a.last_heard) <= ttl);
        }
        self.addrs.len() != before
    }

    /// The local interface `index` is gone: addresses heard only through
    /// it go if others remain; with none other, the peer is probed at once.
    /// Returns whether its addresses changed.
    pub(crate) fn interface_gone(&mut self, index: u32, now: Instant) -> bool {
        let before = self.addrs.len();
        if self.addrs.iter().any(|a| a.via != Some(index)) {
            self.addrs.retain(|a| a.via != Some(index));
        } else if before > 0 {
            self.liveness.suspect(now);
        }
        self.addrs.len() != before
    }

    fn deadline(&self) -> Option<Instant> {
        let live = self.on_lan().then(|| self.liveness.deadline());
        let contest = self.contest.as_ref().map(|c| c.until);
        match (live, contest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// What a peer's deadline asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Probe it at this address.
    Probe(SocketAddr),
    /// Its LAN presence is over.
    Evict,
    /// Its contest is decided.
    Contest,
}

/// Known peers by id, plus their deadlines in order.
#[derive(Debug, Default)]
pub(crate) struct PeerTable {
    peers: HashMap<Id, Peer>,
    deadlines: BTreeSet<(Instant, Id)>,
    /// Peers per primary IP address (the per-source cap).
    per_ip: HashMap<IpAddr, usize>,
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

    /// How many peers have `ip` as their best address.
    pub(crate) fn at_ip(&self, ip: IpAddr) -> usize {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Adds a peer that is not in the table.
    pub(crate) fn insert(&mut self, id: Id, peer: Peer) {
        if let Some(old) = self.remove(id) {
            debug_assert!(false, "{id} inserted twice: {old:?}");
        }
        self.peers.insert(id, peer);
        self.refile(id, None);
    }

    /// Changes a peer and re-files its deadline. Returns what `change`
    /// returned, or `None` if the peer is unknown.
    pub(crate) fn update<R>(&mut self, id: Id, change: impl FnOnce(&mut Peer) -> R) -> Option<R> {
        let peer = self.peers.get_mut(&id)?;
        let ip_before = peer.primary().map(|a| a.ip());
        let result = change(peer);
        self.refile(id, ip_before);
        Some(result)
    }

    /// Files the peer's deadline and its per-IP count after a change
    /// (`ip_before`: its best IP before the change, for the count).
    fn refile(&mut self, id: Id, ip_before: Option<IpAddr>) {
        let Some(peer) = self.peers.get_mut(&id) else {
            return;
        };
        let deadline = peer.deadline();
        if deadline != peer.scheduled {
            if let Some(at) = peer.scheduled {
                self.deadlines.remove(&(at, id));
            }
            if let Some(at) = deadline {
                self.deadlines.insert((at, id));
            }
            peer.scheduled = deadline;
        }
        let ip_now = peer.primary().map(|a| a.ip());
        if ip_now != ip_before {
            if let Some(ip) = ip_before {
                decrement(&mut self.per_ip, ip);
            }
            if let Some(ip) = ip_now {
                *self.per_ip.entry(ip).or_default() += 1;
            }
        }
    }

    pub(crate) fn remove(&mut self, id: Id) -> Option<Peer> {
        let peer = self.peers.remove(&id)?;
        if let Some(at) = peer.scheduled {
            self.deadlines.remove(&(at, id));
        }
        if let Some(ip) = peer.primary().map(|a| a.ip()) {
            decrement(&mut self.per_ip, ip);
        }
        Some(peer)
    }

    /// The earliest deadline of any peer.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// Handles the first peer whose deadline has come, if any: what it asks
    /// for. The peer stays in the table; the caller acts on the answer.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Id, Option<Due>)> {
        let &(at, id) = self.deadlines.first()?;
        if at > now {
            return None;
        }
        let due = self
            .update(id, |peer| {
                if peer.contest.as_ref().is_some_and(|c| now >= c.until) {
                    return Some(Due::Contest);
                }
                if !peer.on_lan() {
                    return None;
                }
                match peer.liveness.on_deadline(now) {
                    LivenessDue::Probe => peer.primary().map(Due::Probe),
                    LivenessDue::Evict => Some(Due::Evict),
                    LivenessDue::Nothing => None,
                }
            })
            .expect("every filed deadline belongs to a known peer");
        Some((id, due))
    }

    /// Gives memory back after a mass departure.
    pub(crate) fn shrink(&mut self) {
        if self.peers.capacity() > 4 * self.peers.len().max(16) {
            self.peers.shrink_to_fit();
            self.per_ip.shrink_to_fit();
        }
    }
}

fn decrement(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = counts.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(now: Instant, ttl_ms: u64) -> Peer {
        let mut p = Peer::new(1, vec![], None, [0; 16], now, Duration::from_millis(ttl_ms));
        p.heard_at("127.0.0.1:1".parse().unwrap(), None, now);
        p
    }

    fn evicted_at(table: &mut PeerTable, id: Id) -> Instant {
        loop {
            let now = table.next_deadline().unwrap();
            if let Some((got, Some(Due::Evict))) = table.pop_due(now)
                && got == id
            {
                table.remove(id);
                return now;
            }
        }
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
        assert_eq!(table.pop_due(t0 + Duration::from_millis(179)), None);
        assert_eq!(evicted_at(&mut table, 1), t0 + Duration::from_millis(200));
        assert_eq!(table.len(), 0);
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn a_peer_known_only_externally_has_no_deadline() {
        let t0 = Instant::now();
        let mut table = PeerTable::default();
        table.insert(
            1,
            Peer::new(1, vec![], None, [0; 16], t0, Duration::from_secs(1)),
        );
        assert_eq!(table.next_deadline(), None);
    }

    #[test]
    fn every_peer_has_exactly_one_filed_deadline_and_ip_counts_match() {
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
            assert!(table.deadlines.contains(&(p.scheduled.unwrap(), id)));
        }
        assert_eq!(table.at_ip("127.0.0.1".parse().unwrap()), table.len());
    }

    #[test]
    fn a_new_address_goes_last_so_the_best_one_does_not_flap() {
        let t0 = Instant::now();
        let mut p = peer(t0, 1_000);
        let second: SocketAddr = "10.0.0.1:1".parse().unwrap();
        assert!(p.heard_at(second, Some(2), t0));
        assert!(!p.heard_at("127.0.0.1:1".parse().unwrap(), None, t0));
        assert_eq!(p.primary(), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(p.addrs.len(), 2);
    }

    #[test]
    fn a_dual_stack_peer_lists_ipv4_first_whichever_address_was_heard_first() {
        let now = Instant::now();
        let mut p = Peer::new(1, vec![], None, [0; 16], now, Duration::from_secs(30));
        let link_local: SocketAddr = "[fe80::2%3]:5000".parse().unwrap();
        let routable: SocketAddr = "[fd00::2]:5000".parse().unwrap();
        let v4: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let v4_other: SocketAddr = "10.1.0.2:5000".parse().unwrap();
        for a in [link_local, routable, v4, v4_other] {
            assert!(p.heard_at(a, Some(3), now));
        }
        let order: Vec<SocketAddr> = p.addrs.iter().map(|a| a.addr).collect();
        assert_eq!(order, vec![v4, v4_other, routable, link_local]);
        // Hearing them again in another order changes nothing.
        for a in [v4_other, link_local, v4] {
            assert!(!p.heard_at(a, Some(3), now));
        }
        assert_eq!(p.primary(), Some(v4));
    }
}
