//! When announcements go out and how long silence is tolerated.
//!
//! **Owns:** [`Schedule`], its presets and the checks that make a schedule
//! followable. **Must not touch:** anything that runs; a schedule is plain data
//! that the announcer and the peer table read.

use std::time::Duration;

/// When announcements are sent and how long silence is tolerated.
///
/// Two presets, both measured in `tests/sim.rs`:
///
/// | preset | settled traffic | a silent peer is evicted after |
/// |---|---|---|
/// | [`Schedule::responsive`] (default) | 5 datagrams / instance / minute | 29 s |
/// | [`Schedule::quiet`] | 2 datagrams / instance / minute | 75 s |
///
/// ```
/// use std::time::Duration;
/// use cohort::Schedule;
/// let custom = Schedule {
///     max_interval: Duration::from_secs(20),
///     ttl: Duration::from_secs(45),
///     ..Schedule::responsive()
/// };
/// assert!(custom.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Gap between the first and second announcement.
    pub first_interval: Duration,
    /// The gap doubles after every announcement until it reaches this.
    pub max_interval: Duration,
    /// How many of the first announcements ask every receiver for a reply.
    /// At least 1; more make a newcomer robust against a lost first packet.
    pub eager_announcements: u32,
    /// How long peers may go without hearing from us before evicting us;
    /// carried in every packet. At least twice `max_interval`.
    pub ttl: Duration,
}

/// The shortest first gap a schedule may have. Shorter gaps would make a
/// newcomer's eager phase a burst rather than a schedule.
pub const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The longest TTL the wire format carries (`u32` milliseconds, about 49.7
/// days).
pub const MAX_WIRE_TTL: Duration = Duration::from_millis(u32::MAX as u64);

impl Schedule {
    /// The default: announce at 0, ~100 ms, ~300 ms, ~700 ms, ... then every
    /// 12 s ± 20% (5 datagrams a minute once settled); TTL 29 s, so a silent
    /// peer is probed from 26.1 s and evicted 29 s after its last packet:
    /// within 30 s of going silent, with a second to spare for timers and
    /// scheduling on a loaded host.
    pub const fn responsive() -> Self {
        Schedule {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(12),
            eager_announcements: 3,
            ttl: Duration::from_secs(29),
        }
    }

    /// For large or busy networks: settles at one announcement every
    /// 30 s ± 20% (2 a minute); TTL 75 s. Start-up is as fast as
    /// [`Schedule::responsive`].
    pub const fn quiet() -> Self {
        Schedule {
            first_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(30),
            eager_announcements: 3,
            ttl: Duration::from_secs(75),
        }
    }

    /// Checks that the schedule can be followed. Never panics, whatever the
    /// fields hold.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cohort::Schedule;
    /// let absurd = Schedule { max_interval: Duration::MAX, ttl: Duration::MAX, ..Schedule::default() };
    /// assert!(absurd.validate().is_err());
    /// ```
    ///
    /// # Errors
    /// A sentence naming the field to change.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.first_interval < MIN_INTERVAL {
            return Err("first_interval is shorter than 1 ms");
        }
        if self.max_interval < self.first_interval {
            return Err("max_interval is shorter than first_interval");
        }
        if self.eager_announcements == 0 {
            return Err("eager_announcements is zero, so a newcomer would ask nobody to reply");
        }
        if self.ttl > MAX_WIRE_TTL {
            return Err("ttl is longer than the wire format carries (about 49 days)");
        }
        // Checked, not multiplied: `max_interval` may be anything up to
        // `Duration::MAX`, and then twice it does not exist.
        match self.max_interval.checked_mul(2) {
            Some(twice) if self.ttl >= twice => Ok(()),
            _ => Err(
                "ttl is less than twice max_interval, so one late announcement could evict a live instance",
            ),
        }
    }
}

impl Default for Schedule {
    /// [`Schedule::responsive`].
    fn default() -> Self {
        Schedule::responsive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huge_max_interval_is_an_error_not_an_overflow() {
        for max in [Duration::MAX, Duration::MAX / 2 + Duration::from_nanos(1)] {
            let s = Schedule {
                max_interval: max,
                ttl: Duration::MAX,
                ..Schedule::default()
            };
            assert!(s.validate().is_err(), "{max:?}");
        }
    }

    #[test]
    fn a_zero_first_interval_is_rejected() {
        let s = Schedule {
            first_interval: Duration::ZERO,
            ..Schedule::default()
        };
        assert_eq!(s.validate(), Err("first_interval is shorter than 1 ms"));
    }

    #[test]
    fn both_presets_are_valid() {
        Schedule::responsive().validate().unwrap();
        Schedule::quiet().validate().unwrap();
    }
}
