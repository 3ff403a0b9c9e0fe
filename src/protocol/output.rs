//! What the state machine asks of its driver, and the queues that hold it.
//!
//! **Owns:** [`Output`], [`Transmit`], [`Destination`] and the outbox the other
//! concerns write into. **Must not touch:** rules; whatever is queued here was
//! decided elsewhere. Counting happens here, as things are queued, so every
//! event and every datagram is counted exactly once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::events::{Change, Rejected};
use super::stats::Stats;

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The multicast group (every listening instance).
    Group,
    /// One instance's unicast reply socket.
    Unicast(SocketAddr),
}

/// A datagram the state machine wants sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to send it.
    pub destination: Destination,
    /// The encoded packet. Shared: an announcement is encoded once per
    /// change of what it says, not once per send.
    pub contents: Arc<[u8]>,
}

/// One thing the state machine wants done; see
/// [`Protocol::poll_output`](super::Protocol::poll_output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram.
    Transmit(Transmit),
    /// Apply this change to the chart.
    Change(Change),
    /// Nothing more to do now: call
    /// [`Protocol::handle_timeout`](super::Protocol::handle_timeout) at this
    /// instant (replacing any earlier arrangement), or never if `None`.
    Timeout(Option<Instant>),
}

/// The most paced transmits waiting at once; answers beyond it are dropped
/// (and counted), which only happens when far more newcomers ask at once
/// than any LAN has.
pub(crate) const MAX_DELAYED: usize = 16_384;

/// A transmit held back until its time (paced answers).
#[derive(Debug)]
struct Delayed {
    at: Instant,
    seq: u64,
    transmit: Transmit,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Transmits and events waiting to be polled, and the counters they feed.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    transmits: VecDeque<Transmit>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    delayed_seq: u64,
    events: VecDeque<Change>,
    pub(crate) stats: Stats,
}

impl Outbox {
    pub(crate) fn send(&mut self, destination: Destination, contents: Arc<[u8]>) {
        self.stats.datagrams_queued += 1;
        self.stats.bytes_queued += contents.len() as u64;
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    /// Queues a transmit for `at` (now or later).
    pub(crate) fn send_at(&mut self, at: Instant, destination: Destination, contents: Arc<[u8]>) {
        if self.delayed.len() >= MAX_DELAYED {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        self.delayed_seq += 1;
        self.delayed.push(Reverse(Delayed {
            at,
            seq: self.delayed_seq,
            transmit: Transmit {
                destination,
                contents,
            },
        }));
    }

    /// Moves every held-back transmit whose time has come to the queue.
    pub(crate) fn release(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|Reverse(d)| d.at <= now) {
            let Reverse(d) = self.delayed.pop().expect("peeked");
            self.send(d.transmit.destination, d.transmit.contents);
        }
        if self.delayed.is_empty() && self.delayed.capacity() > 1024 {
            self.delayed.shrink_to_fit();
        }
    }

    /// When the next held-back transmit is due.
    pub(crate) fn next_delayed(&self) -> Option<Instant> {
        self.delayed.peek().map(|Reverse(d)| d.at)
    }

    pub(crate) fn event(&mut self, event: Change) {
        match &event {
            Change::Joined(_) => self.stats.joined += 1,
            Change::Updated(_) => self.stats.updated += 1,
            Change::Left { reason, .. } => self.stats.left(*reason),
            Change::Conflict { .. } => self.stats.conflicts += 1,
        }
        self.events.push_back(event);
    }

    pub(crate) fn rejected(&mut self, rejected: &Rejected) {
        self.stats.rejected(rejected);
    }

    /// Transmits first (peers wait on them), then events.
    pub(crate) fn pop(&mut self) -> Option<Output> {
        if let Some(t) = self.transmits.pop_front() {
            return Some(Output::Transmit(t));
        }
        self.events.pop_front().map(Output::Change)
    }
}
