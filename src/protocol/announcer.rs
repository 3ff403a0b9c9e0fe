//! What this instance says about itself, and when.
//!
//! **Owns:** our own packets ([`Ours`]: encoded once per change of what they
//! say, then shared by every send) and the announce schedule ([`Announcer`]:
//! the eager start, the doubling gap, the jitter). **Must not touch:** peers,
//! events or sockets; it only queues transmits in the outbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Mode;
use super::output::{Destination, Outbox};
use super::schedule::Schedule;
use crate::wire::{self, Id, Kind, Packet, ProcessTag};

/// The kinds of packet we send about ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Said {
    /// Multicast announcement.
    Announce,
    /// Multicast announcement asking everyone to reply.
    AnnounceEager,
    /// Unicast answer to an announcement or query.
    Reply,
    /// Unicast query to a silent peer, asking for a reply.
    Probe,
    /// Multicast query of a listen-only sniffer.
    Query,
    /// Multicast "I am leaving".
    Goodbye,
}

impl Said {
    const ALL: usize = 6;

    fn kind_and_flag(self) -> (Kind, bool) {
        match self {
            Said::Announce => (Kind::Announce, false),
            Said::AnnounceEager => (Kind::Announce, true),
            Said::Reply => (Kind::Reply, false),
            Said::Probe => (Kind::Query, true),
            Said::Query => (Kind::Query, false),
            Said::Goodbye => (Kind::Goodbye, false),
        }
    }
}

/// Everything our packets carry, and their encodings.
#[derive(Debug)]
pub(crate) struct Ours {
    pub(crate) id: Id,
    pub(crate) incarnation: u64,
    pub(crate) namespace: String,
    payload: Vec<u8>,
    reply_port: u16,
    ttl_ms: u32,
    process: Option<ProcessTag>,
    /// One slot per [`Said`]; emptied when the payload changes.
    cache: [Option<Arc<[u8]>>; Said::ALL],
}

impl Ours {
    pub(crate) fn new(
        id: Id,
        incarnation: u64,
        namespace: String,
        payload: Vec<u8>,
        reply_port: u16,
        ttl: Duration,
        process: Option<ProcessTag>,
    ) -> Self {
        Ours {
            id,
            incarnation,
            namespace,
            payload,
            reply_port,
            ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
            process,
            cache: Default::default(),
        }
    }

    /// The encoded packet, from the cache when nothing changed since it was
    /// last encoded.
    pub(crate) fn packet(&mut self, said: Said) -> Arc<[u8]> {
        let slot = said as usize;
        if let Some(bytes) = &self.cache[slot] {
            return Arc::clone(bytes);
        }
        let (kind, want_reply) = said.kind_and_flag();
        let bytes: Arc<[u8]> = wire::encode(&Packet {
            namespace: &self.namespace,
            sender: self.id,
            incarnation: self.incarnation,
            kind,
            want_reply,
            reply_port: self.reply_port,
            ttl_ms: self.ttl_ms,
            process: self.process,
            payload: &self.payload,
        })
        .into();
        self.cache[slot] = Some(Arc::clone(&bytes));
        bytes
    }

    pub(crate) fn set_payload(&mut self, payload: Vec<u8>) {
        self.payload = payload;
        self.cache = Default::default();
    }
}

/// The announce schedule of one instance.
#[derive(Debug)]
pub(crate) struct Announcer {
    mode: Mode,
    schedule: Schedule,
    interval: Duration,
    sent: u32,
    next_send: Option<Instant>,
    rng: SplitMix64,
}

impl Announcer {
    /// The first announcement (or query) is due at once.
    pub(crate) fn new(mode: Mode, schedule: Schedule, seed: u64, now: Instant) -> Self {
        Announcer {
            mode,
            schedule,
            interval: schedule.first_interval,
            sent: 0,
            next_send: Some(now),
            rng: SplitMix64(seed),
        }
    }

    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next_send
    }

    pub(crate) fn on_timeout(&mut self, now: Instant, ours: &mut Ours, out: &mut Outbox) {
        if self.next_send.is_none_or(|due| now < due) {
            return;
        }
        let eager = self.sent < self.schedule.eager_announcements;
        match self.mode {
            Mode::Announce if eager => {
                out.send(Destination::Group, ours.packet(Said::AnnounceEager))
            }
            Mode::Announce => out.send(Destination::Group, ours.packet(Said::Announce)),
            Mode::Sniff => out.send(Destination::Group, ours.packet(Said::Query)),
        }
        self.sent = self.sent.saturating_add(1);
        if self.mode == Mode::Sniff && self.sent >= self.schedule.eager_announcements {
            // A sniffer only asks while starting; then it listens.
            self.next_send = None;
            return;
        }
        if self.sent > 1 {
            self.interval = (self.interval * 2).min(self.schedule.max_interval);
        }
        self.next_send = Some(now + self.rng.jitter(self.interval));
    }

    /// Our payload changed: announce it at once and restart the doubling, so
    /// the change spreads quickly even if this announcement is lost.
    pub(crate) fn restart(&mut self, now: Instant, ours: &mut Ours, out: &mut Outbox) {
        if self.mode != Mode::Announce || self.next_send.is_none() {
            return;
        }
        out.send(Destination::Group, ours.packet(Said::Announce));
        self.interval = self.schedule.first_interval;
        self.next_send = Some(now + self.rng.jitter(self.interval));
    }

    /// A new network (the group became reachable, an interface appeared):
    /// start over with the eager phase, so peers there answer at once.
    pub(crate) fn restart_eager(&mut self, now: Instant) {
        self.sent = 0;
        self.interval = self.schedule.first_interval;
        self.next_send = Some(now);
    }

    pub(crate) fn stop(&mut self) {
        self.next_send = None;
    }
}

/// SplitMix64: a tiny, well-studied generator. Jitter needs spread, not
/// secrecy, and a seeded generator keeps the machine deterministic.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `gap` scaled by a uniform factor in [0.8, 1.2).
    fn jitter(&mut self, gap: Duration) -> Duration {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        gap.mul_f64(0.8 + 0.4 * unit)
    }
}
