//! Retry pacing for launches that find the primary starting or stopping.
//!
//! **Owns:** the delay between attempts (exponential, jittered, capped).
//! **Must not touch:** anything else: it only computes durations.

use std::time::Duration;

/// Exponential backoff with jitter: 0.5 ms doubling to 20 ms.
pub(crate) struct Backoff {
    next: Duration,
    rng: u64,
}

impl Backoff {
    pub(crate) const FIRST: Duration = Duration::from_micros(500);
    pub(crate) const MAX: Duration = Duration::from_millis(20);

    pub(crate) fn new() -> Self {
        let seed = getrandom::u64().unwrap_or(u64::from(std::process::id()) << 17) | 1;
        Backoff {
            next: Self::FIRST,
            rng: seed,
        }
    }

    /// The next delay: between half and all of the current base, which doubles.
    pub(crate) fn next(&mut self) -> Duration {
        // xorshift64: plenty for spreading retries apart.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter = (self.rng % 1024) as u32;
        base / 2 + base / 2 * jitter / 1024
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_stays_within_it() {
        let mut b = Backoff::new();
        let delays: Vec<_> = (0..12).map(|_| b.next()).collect();
        assert!(delays[0] <= Backoff::FIRST && delays[0] >= Backoff::FIRST / 2);
        assert!(delays.iter().all(|d| *d <= Backoff::MAX));
        assert!(delays[11] >= Backoff::MAX / 2);
    }
}
