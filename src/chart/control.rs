//! Requests from chart handles to the running driver.
//!
//! **Owns:** the coalesced requests (shutdown, a new payload, ids to forget)
//! and which discovery run, if any, they are for. **Must not touch:** the
//! view or the protocol; the driver takes requests and acts on them.
//!
//! Requests are state, not a queue: a second `shutdown()` sets a flag that is
//! already set, ten `set_msg` calls leave the newest payload, and an id is
//! queued for forgetting at most once. So nothing grows while no driver
//! drains it, and a request made while discovery is not running can never
//! reach (and poison) a later run: each run starts with no requests.

use crate::wire::Id;
use crate::wire::seal::KeyRing;

/// What the driver should do, taken in one go.
#[derive(Debug, Default)]
pub(crate) struct Requests {
    pub(crate) shutdown: bool,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) forget: Vec<Id>,
    /// New keys (`Some(None)`: none, open packets from now on).
    pub(crate) keys: Option<Option<KeyRing>>,
    /// Someone waits for peer details.
    pub(crate) details: bool,
}

impl Requests {
    /// Whether nothing is asked.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        !self.shutdown
            && self.payload.is_none()
            && self.forget.is_empty()
            && self.keys.is_none()
            && !self.details
    }
}

/// Shared between the handles and the driver, under the chart's lock.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// The run going on, if any, by number.
    running: Option<u64>,
    /// The number the next run gets.
    next_run: u64,
    pending: Requests,
}

impl Control {
    /// Claims the chart for a new run and returns its number, or `None` if
    /// one is running.
    pub(crate) fn begin(&mut self) -> Option<u64> {
        if self.running.is_some() {
            return None;
        }
        let run = self.next_run;
        self.next_run += 1;
        self.running = Some(run);
        self.pending = Requests::default();
        Some(run)
    }

    /// The run ended; requests left for it are dropped with it.
    pub(crate) fn end(&mut self) {
        self.running = None;
        self.pending = Requests::default();
    }

    /// Asks the running driver to stop; with `Some(run)`, only if that run
    /// is the one going on. Returns whether a request was made.
    pub(crate) fn shutdown(&mut self, run: Option<u64>) -> bool {
        let asked = self.running.is_some() && (run.is_none() || run == self.running);
        self.pending.shutdown |= asked;
        asked
    }

    /// Hands a new payload to the running driver, replacing one not yet
    /// taken. Returns whether one was running.
    pub(crate) fn payload(&mut self, payload: Vec<u8>) -> bool {
        if self.running.is_some() {
            self.pending.payload = Some(payload);
        }
        self.running.is_some()
    }

    /// Hands new keys to the running driver. Returns whether one was
    /// running.
    pub(crate) fn keys(&mut self, keys: Option<KeyRing>) -> bool {
        if self.running.is_some() {
            self.pending.keys = Some(keys);
        }
        self.running.is_some()
    }

    /// Asks the running driver to forget `id`. Returns whether one was
    /// running.
    pub(crate) fn forget(&mut self, id: Id) -> bool {
        if self.running.is_some() && !self.pending.forget.contains(&id) {
            self.pending.forget.push(id);
        }
        self.running.is_some()
    }

    /// Asks the running driver for peer details. Returns whether one was
    /// running.
    pub(crate) fn details(&mut self) -> bool {
        self.pending.details |= self.running.is_some();
        self.running.is_some()
    }

    pub(crate) fn take(&mut self) -> Requests {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_made_while_nothing_runs_never_reach_a_later_run() {
        let mut c = Control::default();
        assert!(!c.shutdown(None));
        assert!(!c.shutdown(None));
        assert!(!c.payload(vec![1]));
        assert!(!c.forget(3));
        assert!(c.begin().is_some());
        assert!(c.take().is_empty());
    }

    #[test]
    fn requests_coalesce_instead_of_piling_up() {
        let mut c = Control::default();
        c.begin();
        for i in 0..10_000u32 {
            c.payload(i.to_le_bytes().to_vec());
            c.forget(u64::from(i % 3));
            c.shutdown(None);
        }
        let taken = c.take();
        assert!(taken.shutdown);
        assert_eq!(taken.payload, Some(9_999u32.to_le_bytes().to_vec()));
        assert_eq!(taken.forget, vec![0, 1, 2]);
        assert!(c.take().is_empty());
    }

    #[test]
    fn only_one_run_at_a_time() {
        let mut c = Control::default();
        let first = c.begin().unwrap();
        assert!(c.begin().is_none());
        c.end();
        let second = c.begin().unwrap();
        assert_ne!(first, second);
        // A handle of the first run cannot stop the second.
        assert!(!c.shutdown(Some(first)));
        assert!(c.shutdown(Some(second)));
    }
}
