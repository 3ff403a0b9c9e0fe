//! When a silent peer is probed, and when it is evicted.
//!
//! **Owns:** the timing maths of one peer's liveness: the TTL it announced,
//! when it was last heard, and the probe round before eviction. **Must not
//! touch:** tables, packets or events; [`Liveness`] only answers "when next?"
//! and "what now?", so the rules can be tested with plain instants.
//!
//! A peer not heard from for 90% of its TTL is probed [`PROBES`] times, evenly
//! over the last tenth. It is evicted only when its whole TTL has passed *and*
//! a whole probe window of probes went unanswered. The second condition
//! matters after a stall of our own (SIGSTOP, a paused VM): then the TTL ran
//! out while no probe could go out, and the silence was ours, so on waking we
//! probe first.

use std::time::{Duration, Instant};

/// How many probes a silent peer gets before it is evicted.
pub const PROBES: u32 = 16;

/// The shortest gap between two probes of one peer.
const MIN_PROBE_GAP: Duration = Duration::from_millis(1);

/// What a peer's deadline asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send it a probe.
    Probe,
    /// It is gone.
    Evict,
    /// Nothing yet (the deadline was early).
    Nothing,
}

/// The liveness clock of one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Liveness {
    last_seen: Instant,
    ttl: Duration,
    /// When the first probe of the current round went out.
    probing_since: Option<Instant>,
    /// When the next probe of the current round is due.
    next_probe: Option<Instant>,
}

impl Liveness {
    pub(crate) fn new(now: Instant, ttl: Duration) -> Self {
        Liveness {
            last_seen: now,
            ttl,
            probing_since: None,
            next_probe: None,
        }
    }

    /// The peer was heard from; `ttl` is what it announced this time, which
    /// may be shorter or longer than before.
    pub(crate) fn heard(&mut self, now: Instant, ttl: Duration) {
        self.last_seen = now;
        self.ttl = ttl;
        self.probing_since = None;
        self.next_probe = None;
    }

    /// A sign of life that carries no TTL (an answer to a probe).
    pub(crate) fn heard_again(&mut self, now: Instant) {
        self.heard(now, self.ttl);
    }

    /// The way to the peer may be gone (its interface vanished): probe it
    /// now, as if it had been silent for nine tenths of its TTL, so it
    /// leaves within a tenth of its TTL unless it answers.
    pub(crate) fn suspect(&mut self, now: Instant) {
        if self.probing_since.is_some() {
            return;
        }
        if let Some(back) = now.checked_sub(self.ttl - self.window()) {
            self.last_seen = self.last_seen.min(back);
        }
    }

    pub(crate) fn last_seen(&self) -> Instant {
        self.last_seen
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    fn expires_at(&self) -> Instant {
        self.last_seen + self.ttl
    }

    fn window(&self) -> Duration {
        self.ttl / 10
    }

    fn probing_from(&self) -> Instant {
        self.expires_at() - self.window()
    }

    fn evict_at(&self) -> Option<Instant> {
        self.probing_since
            .map(|since| (since + self.window()).max(self.expires_at()))
    }

    /// The next instant at which [`Liveness::on_deadline`] has something to
    /// do.
    pub(crate) fn deadline(&self) -> Instant {
        match self.evict_at() {
            None => self.probing_from(),
            Some(evict) => self.next_probe.map_or(evict, |probe| probe.min(evict)),
        }
    }

    /// Called at (or after) [`Liveness::deadline`]. Afterwards the deadline
    /// lies after `now`, unless the answer is [`Due::Evict`].
    pub(crate) fn on_deadline(&mut self, now: Instant) -> Due {
        if self.evict_at().is_some_and(|evict| now >= evict) {
            return Due::Evict;
        }
        if now < self.probing_from() {
            return Due::Nothing;
        }
        self.probing_since.get_or_insert(now);
        if self.next_probe.is_none_or(|at| now >= at) {
            let gap = (self.window() / PROBES).max(MIN_PROBE_GAP);
            self.next_probe = Some(now + gap);
            return Due::Probe;
        }
        Due::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    /// Runs a silent peer's clock from `start` until eviction, the way the
    /// table does: always at the deadline. Returns (probes, eviction time).
    fn run_silent(mut l: Liveness, start: Instant) -> (u32, Instant) {
        let mut probes = 0;
        let mut now = start;
        for _ in 0..10_000 {
            now = now.max(l.deadline());
            match l.on_deadline(now) {
                Due::Probe => probes += 1,
                Due::Evict => return (probes, now),
                Due::Nothing => {}
            }
            assert!(l.deadline() > now, "the deadline must move on");
        }
        panic!("never evicted");
    }

    #[test]
    fn a_silent_peer_is_probed_sixteen_times_then_evicted_at_its_ttl() {
        let t0 = Instant::now();
        let (probes, evicted) = run_silent(Liveness::new(t0, TTL), t0);
        assert_eq!(probes, PROBES);
        assert_eq!(evicted, t0 + TTL);
    }

    #[test]
    fn probing_starts_at_nine_tenths_of_the_ttl() {
        let t0 = Instant::now();
        let l = Liveness::new(t0, TTL);
        assert_eq!(l.deadline(), t0 + TTL * 9 / 10);
    }

    #[test]
    fn hearing_a_shorter_ttl_moves_the_deadline_earlier() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, TTL);
        l.heard(t0, Duration::from_secs(1));
        assert_eq!(l.deadline(), t0 + Duration::from_millis(900));
        let (_, evicted) = run_silent(l, t0);
        assert_eq!(evicted, t0 + Duration::from_secs(1));
    }

    #[test]
    fn after_a_stall_past_the_ttl_the_peer_is_probed_before_it_is_evicted() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, TTL);
        let woke = t0 + TTL * 3;
        assert_eq!(l.on_deadline(woke), Due::Probe);
        let (probes, evicted) = run_silent(l, woke);
        assert_eq!(probes, PROBES - 1);
        assert_eq!(evicted, woke + TTL / 10);
    }

    #[test]
    fn a_suspected_peer_is_probed_at_once_and_evicted_a_tenth_later() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, TTL);
        let gone = t0 + Duration::from_secs(1);
        l.suspect(gone);
        assert_eq!(l.deadline(), gone);
        let (probes, evicted) = run_silent(l, gone);
        assert_eq!(probes, PROBES);
        assert_eq!(evicted, gone + TTL / 10);
    }

    #[test]
    fn an_answer_to_a_probe_ends_the_round() {
        let t0 = Instant::now();
        let mut l = Liveness::new(t0, TTL);
        let probing = l.deadline();
        assert_eq!(l.on_deadline(probing), Due::Probe);
        l.heard_again(probing);
        assert_eq!(l.deadline(), probing + TTL * 9 / 10);
    }
}
