//! Deafness: whether this instance hears anything where it should.
//!
//! **Owns:** the rule that turns silence into [`Problem::Deaf`](crate::Problem::Deaf).
//! **Must not touch:** sockets or the protocol; the driver reports
//! arrivals and expiries and asks when to look.

use std::time::Duration;

use tokio::time::Instant;

/// Whether this instance hears anything where it should: a datagram of
/// some kind at least once a TTL, when seeds are set or a peer expired in
/// the silence (peers expiring while *nothing at all* arrives is what a
/// firewall that drops incoming UDP looks like; peers leaving while others
/// are heard is just peers leaving).
pub(crate) struct Hearing {
    last: Instant,
    ttl: Duration,
    seeds: bool,
    /// A peer expired while nothing was heard.
    lost_in_silence: bool,
    /// Deafness is reported (until something arrives).
    deaf: bool,
}

impl Hearing {
    pub(crate) fn new(now: Instant, ttl: Duration, seeds: bool) -> Self {
        Hearing {
            last: now,
            ttl,
            seeds,
            lost_in_silence: false,
            deaf: false,
        }
    }

    /// A peer expired: if nothing has arrived for half a TTL, that counts.
    pub(crate) fn expired(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last) >= self.ttl / 2 {
            self.lost_in_silence = true;
        }
    }

    /// Something arrived; returns whether that ends a deaf spell.
    pub(crate) fn heard(&mut self, now: Instant) -> bool {
        self.last = now;
        self.lost_in_silence = false;
        std::mem::take(&mut self.deaf)
    }

    /// When silence would become deafness, unless already reported.
    pub(crate) fn check_at(&self) -> Option<Instant> {
        ((self.seeds || self.lost_in_silence) && !self.deaf).then(|| self.last + self.ttl)
    }

    /// Marks the instance deaf; returns for how long it has been silent.
    pub(crate) fn deaf(&mut self, now: Instant) -> Duration {
        self.deaf = true;
        now.saturating_duration_since(self.last)
    }
}
