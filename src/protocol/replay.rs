//! Replay protection for sealed packets.
//!
//! **Owns:** the record of which sealed packets each sender incarnation has
//! already delivered, and the time window outside which a sealed packet is
//! too old (or too new) to be believed. **Must not touch:** keys or
//! membership: sealing proves who wrote a packet, this proves it is not a
//! copy.
//!
//! A sealed packet carries its sender's sequence number and clock. It is
//! accepted once per (sender, incarnation, sequence number), within a window
//! of 64 behind the newest (as IPsec and WireGuard do), and only when its
//! clock is within [`REPLAY_WINDOW`] of ours. A captured packet replayed
//! later is therefore rejected: within the window by its sequence number
//! (the record of a departed sender is kept for the whole window), after it
//! by its age. Instances of a keyed cohort need clocks that agree within the
//! window; NTP gives far better.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::wire::Id;

/// How far a sealed packet's clock may be from ours.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(300);

/// Sequence numbers tracked behind the newest.
const SEQ_WINDOW: u64 = 64;

/// Why a sealed packet was refused as a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Its clock is outside the window.
    Stale,
    /// This exact packet was delivered already, or it is too far behind.
    Repeat,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    top: u64,
    seen: u64,
    last: Instant,
}

/// Per sender incarnation: the newest sequence number and the ones seen
/// just behind it.
#[derive(Debug)]
pub(crate) struct ReplayGuard {
    windows: HashMap<(Id, u64), Window>,
    cap: usize,
}

impl ReplayGuard {
    pub(crate) fn new(cap: usize) -> Self {
        ReplayGuard {
            windows: HashMap::new(),
            cap,
        }
    }

    /// Accepts a sealed packet once. `wall_ms` is our clock, if known.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        wall_ms: Option<u64>,
        id: Id,
        incarnation: u64,
        seq: u64,
        sent_ms: u64,
    ) -> Result<(), Replay> {
        if let Some(wall) = wall_ms
            && wall.abs_diff(sent_ms) > REPLAY_WINDOW.as_millis() as u64
        {
            return Err(Replay::Stale);
        }
        if !self.windows.contains_key(&(id, incarnation)) && self.windows.len() >= self.cap {
            self.make_room(now);
        }
        let window = self.windows.entry((id, incarnation)).or_insert(Window {
            top: seq,
            seen: 0,
            last: now,
        });
        window.last = now;
        if seq > window.top || window.seen == 0 {
            let shift = seq.saturating_sub(window.top);
            window.seen = if shift >= SEQ_WINDOW {
                0
            } else {
                window.seen << shift
            } | 1;
            window.top = seq;
            return Ok(());
        }
        let behind = window.top - seq;
        if behind >= SEQ_WINDOW || window.seen & (1 << behind) != 0 {
            return Err(Replay::Repeat);
        }
        window.seen |= 1 << behind;
        Ok(())
    }

    /// Forgets windows unused for longer than the replay window (their
    /// packets are refused by age now), then, if still full, the least
    /// recently used.
    fn make_room(&mut self, now: Instant) {
        self.windows
            .retain(|_, w| now.saturating_duration_since(w.last) <= REPLAY_WINDOW);
        if self.windows.len() >= self.cap
            && let Some(oldest) = self
                .windows
                .iter()
                .min_by_key(|(_, w)| w.last)
                .map(|(key, _)| *key)
        {
            self.windows.remove(&oldest);
        }
        if self.windows.capacity() > 4 * self.windows.len().max(16) {
            self.windows.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sequence_number_is_accepted_once_and_reordering_within_the_window_is_fine() {
        let now = Instant::now();
        let mut g = ReplayGuard::new(16);
        for seq in [5, 3, 4, 10, 6] {
            assert_eq!(g.check(now, None, 1, 1, seq, 0), Ok(()), "{seq}");
        }
        for seq in [5, 3, 10] {
            assert_eq!(
                g.check(now, None, 1, 1, seq, 0),
                Err(Replay::Repeat),
                "{seq}"
            );
        }
        // Far behind the newest: refused rather than remembered.
        assert_eq!(g.check(now, None, 1, 1, 100, 0), Ok(()));
        assert_eq!(g.check(now, None, 1, 1, 20, 0), Err(Replay::Repeat));
        // Another incarnation has its own window.
        assert_eq!(g.check(now, None, 1, 2, 5, 0), Ok(()));
    }

    #[test]
    fn a_packet_older_or_newer_than_the_window_is_refused() {
        let now = Instant::now();
        let mut g = ReplayGuard::new(16);
        let wall = 10_000_000;
        let window = REPLAY_WINDOW.as_millis() as u64;
        assert_eq!(
            g.check(now, Some(wall), 1, 1, 0, wall - window - 1),
            Err(Replay::Stale)
        );
        assert_eq!(
            g.check(now, Some(wall), 1, 1, 1, wall + window + 1),
            Err(Replay::Stale)
        );
        assert_eq!(g.check(now, Some(wall), 1, 1, 2, wall - window), Ok(()));
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut g = ReplayGuard::new(8);
        for id in 0..1000 {
            g.check(now, None, id, 1, 0, 0).unwrap();
        }
        assert!(g.windows.len() <= 8);
    }
}
