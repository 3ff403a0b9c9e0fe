//! Address validation: who has proven that it receives where it claims to.
//!
//! **Owns:** the cookies this instance issues and checks, the bounded table
//! of unproven claims, and the rate limits on answering unproven addresses.
//! **Must not touch:** membership or sending; the coordinator asks here
//! whether an echo is good, what a claim said, and whether it may answer.
//!
//! A packet's source address can be forged; receiving at an address cannot.
//! So a sender is believed only once it has echoed a cookie that this
//! instance sent to its claimed address ([`Validator::cookie`]). Cookies
//! are stateless: a keyed BLAKE3 hash of the claimed address, the claimed
//! id and a 30-second time slot, valid for the current and the
//! previous slot, so checking one needs no table that a forger could fill.
//! What an unproven sender said waits in [`Pending`], bounded, the oldest
//! going first. Every answer to an unproven address is rate limited per
//! source IP and in total, and the coordinator keeps it no larger than the
//! datagram it answers.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::{Cookie, Id, ProcessTag};

/// How long one cookie slot lasts; a cookie is good for one to two slots.
pub(crate) const COOKIE_SLOT: Duration = Duration::from_secs(30);

/// Issues and checks cookies.
#[derive(Debug)]
pub(crate) struct Validator {
    key: [u8; 32],
    start: Instant,
}

impl Validator {
    pub(crate) fn new(secret: &[u8; 32], start: Instant) -> Self {
        Validator {
            key: blake3::derive_key("cohort 2026 v2 address cookie", secret),
            start,
        }
    }

    fn slot(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.start).as_secs() / COOKIE_SLOT.as_secs()
    }

    fn cookie_in(&self, slot: u64, addr: SocketAddr, id: Id) -> Cookie {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        match addr.ip() {
            IpAddr::V4(ip) => hasher.update(&ip.octets()),
            IpAddr::V6(ip) => hasher.update(&ip.octets()),
        };
        hasher.update(&addr.port().to_le_bytes());
        hasher.update(&id.to_le_bytes());
        hasher.update(&slot.to_le_bytes());
        let hash = hasher.finalize();
        let mut cookie = [0; 8];
        cookie.copy_from_slice(&hash.as_bytes()[..8]);
        cookie
    }

    /// The cookie for a sender claiming `id` at `addr`. It does not bind an
    /// incarnation: the echo proves who receives at the address, and the
    /// incarnation of the packet that carries it is then the truth.
    pub(crate) fn cookie(&self, now: Instant, addr: SocketAddr, id: Id) -> Cookie {
        self.cookie_in(self.slot(now), addr, id)
    }

    /// Whether `echo` is a cookie this instance issued to `addr` for `id`
    /// in this slot or the one before.
    pub(crate) fn verify(&self, now: Instant, echo: Cookie, addr: SocketAddr, id: Id) -> bool {
        let slot = self.slot(now);
        echo == self.cookie_in(slot, addr, id)
            || (slot > 0 && echo == self.cookie_in(slot - 1, addr, id))
    }
}

/// What an unproven sender claimed about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    pub(crate) incarnation: u64,
    pub(crate) ttl: Duration,
    pub(crate) process: Option<ProcessTag>,
    pub(crate) commitment: [u8; 16],
    pub(crate) payload: Vec<u8>,
}

/// Unproven claims, by (id, claimed address). Bounded: at capacity, the
/// oldest claim goes. A real sender proves itself within a round trip, so
/// even a flood that replaces every slot each second leaves it plenty of
/// time.
#[derive(Debug)]
pub(crate) struct Pending {
    claims: HashMap<(Id, SocketAddr), (u64, Claim)>,
    order: VecDeque<((Id, SocketAddr), u64)>,
    next: u64,
    cap: usize,
}

impl Pending {
    pub(crate) fn new(cap: usize) -> Self {
        Pending {
            claims: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            cap,
        }
    }

    /// Records (or replaces) a claim. Returns whether an older claim was
    /// pushed out to make room.
    pub(crate) fn insert(&mut self, id: Id, addr: SocketAddr, claim: Claim) -> bool {
        let stamp = self.next;
        self.next += 1;
        self.claims.insert((id, addr), (stamp, claim));
        self.order.push_back(((id, addr), stamp));
        let mut evicted = false;
        while self.claims.len() > self.cap {
            evicted |= self.pop_oldest();
        }
        // Stale order entries (replaced or taken claims) are skipped lazily;
        // keep the queue from growing past twice the table.
        if self.order.len() > 2 * self.cap.max(1) {
            self.order
                .retain(|(key, stamp)| self.claims.get(key).is_some_and(|(s, _)| s == stamp));
        }
        evicted
    }

    fn pop_oldest(&mut self) -> bool {
        while let Some((key, stamp)) = self.order.pop_front() {
            if self.claims.get(&key).is_some_and(|(s, _)| *s == stamp) {
                self.claims.remove(&key);
                return true;
            }
        }
        false
    }

    /// Takes the claim of `id` at `addr`, if one waits.
    pub(crate) fn take(&mut self, id: Id, addr: SocketAddr) -> Option<Claim> {
        self.claims.remove(&(id, addr)).map(|(_, claim)| claim)
    }

    pub(crate) fn len(&self) -> usize {
        self.claims.len()
    }

    /// Gives memory back after a flood has passed.
    pub(crate) fn shrink(&mut self) {
        if self.claims.capacity() > 4 * self.claims.len().max(16) {
            self.claims.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }
}

/// Token buckets for answers to unproven addresses: one per source IP
/// (bounded table) and one for all of them.
#[derive(Debug)]
pub(crate) struct Limiter {
    /// By source IP; loopback sources by IP and port (see [`Limiter::allow`]).
    per_ip: HashMap<SocketAddr, Bucket>,
    total: Bucket,
    rate: (u32, u32),
    total_rate: (u32, u32),
    cap: usize,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn full(burst: u32, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(burst),
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant, (rate, burst): (u32, u32)) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(rate)).min(f64::from(burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Limiter {
    pub(crate) fn new(per_ip: (u32, u32), total: (u32, u32), cap: usize, now: Instant) -> Self {
        Limiter {
            per_ip: HashMap::new(),
            total: Bucket::full(total.1, now),
            rate: per_ip,
            total_rate: total,
            cap,
        }
    }

    /// Whether one more answer may go to `to` now. The limit is per source
    /// IP address, except on loopback, where every instance of the host
    /// shares one IP: there it is per IP and port, so a hundred instances
    /// starting at once on one host are not throttled as one source, while
    /// one address (a closed port that a local process replays packets of)
    /// still is.
    pub(crate) fn allow(&mut self, now: Instant, to: SocketAddr) -> bool {
        let key = if to.ip().is_loopback() {
            to
        } else {
            SocketAddr::new(to.ip(), 0)
        };
        if !self.per_ip.contains_key(&key) && self.per_ip.len() >= self.cap {
            // Forget sources that have been quiet long enough to be full again.
            let refill =
                Duration::from_secs_f64(f64::from(self.rate.1) / f64::from(self.rate.0.max(1)));
            self.per_ip
                .retain(|_, b| now.saturating_duration_since(b.at) < refill);
            if self.per_ip.len() >= self.cap {
                // A flood from ever new (forged) sources: start over rather
                // than refuse the next real newcomer. A source forgotten
                // this way gets one more burst, each answer still no larger
                // than what it answers.
                self.per_ip.clear();
            }
        }
        let rate = self.rate;
        let bucket = self
            .per_ip
            .entry(key)
            .or_insert_with(|| Bucket::full(rate.1, now));
        bucket.take(now, rate) && self.total.take(now, self.total_rate)
    }

    pub(crate) fn shrink(&mut self) {
        if self.per_ip.capacity() > 4 * self.per_ip.len().max(16) {
            self.per_ip.shrink_to_fit();
        }
    }
}
