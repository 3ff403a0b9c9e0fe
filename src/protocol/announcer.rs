//! What this instance says about itself, and when.
//!
//! **Owns:** our own packets ([`Ours`]: open packets that say the same every
//! time are encoded once per change and shared by every send; sealed ones
//! are sealed per send, each with a fresh nonce and sequence number), our
//! goodbye secret and its commitment, and the announce schedule
//! ([`Announcer`]: the eager start, the doubling gap, the jitter, and the
//! stretch of the gap with the size of the group). **Must not touch:**
//! peers, events or sockets; it only encodes, and queues in the outbox.
//!
//! # Scaling with the group
//!
//! Every instance hears every announcement, so a group of n instances each
//! announcing every `max_interval` makes each one receive n / `max_interval`
//! datagrams. Up to [`SCALE_FROM`] known instances the schedule is followed
//! as given (a silent peer is evicted within its TTL: 29 s by default).
//! Beyond, the settled gap grows in proportion to the group (as RTCP's
//! report interval does), and the announced TTL with it, so what each
//! instance receives stays flat; the price is that a silent peer is evicted
//! later, in proportion too (about 290 s at 1,000 instances by default).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Mode;
use super::schedule::Schedule;
use crate::wire::seal::KeyRing;
use crate::wire::{self, Cookie, Id, Info, MAX_PAD, Message, Packet, ProcessTag};

/// Announcements after the eager ones that still carry the filter of ids
/// heard (see [`Announcer::settling`]).
pub const SETTLING: u32 = 4;

/// The group size up to which the schedule is followed as given.
pub const SCALE_FROM: usize = 100;

/// What kind of packet to send about ourselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Said {
    /// An announcement, asking for replies or not.
    Announce { want_reply: bool },
    /// An answer with our info.
    Reply,
    /// A question without info (probe, validation step, sniffer query).
    Query { want_reply: bool },
    /// "I am leaving".
    Goodbye,
}

/// How one packet is to be built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Build<'a> {
    pub(crate) said: Said,
    pub(crate) cookie: Option<Cookie>,
    pub(crate) echo: Option<Cookie>,
    pub(crate) known: &'a [u8],
    /// Pad the datagram to at least this many bytes (open mode only).
    pub(crate) pad_to: usize,
}

impl Build<'_> {
    pub(crate) fn plain(said: Said) -> Self {
        Build {
            said,
            cookie: None,
            echo: None,
            known: &[],
            pad_to: 0,
        }
    }
}

/// Everything our packets carry, and how they are encoded.
#[derive(Debug)]
pub(crate) struct Ours {
    pub(crate) id: Id,
    pub(crate) incarnation: u64,
    pub(crate) namespace: String,
    payload: Vec<u8>,
    reply_port: u16,
    ttl: Duration,
    process: Option<ProcessTag>,
    proof: [u8; 16],
    commitment: [u8; 16],
    keys: Option<KeyRing>,
    nonce_key: [u8; 32],
    seq: u64,
    /// Open packets that say the same every time, by what they say.
    cache: Vec<(Said, usize, Arc<[u8]>)>,
}

impl Ours {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        id: Id,
        incarnation: u64,
        namespace: String,
        payload: Vec<u8>,
        reply_port: u16,
        ttl: Duration,
        process: Option<ProcessTag>,
        secret: &[u8; 32],
        keys: Option<KeyRing>,
    ) -> Self {
        let proof_key = blake3::derive_key("cohort 2026 v2 goodbye secret", secret);
        let mut hasher = blake3::Hasher::new_keyed(&proof_key);
        hasher.update(&id.to_le_bytes());
        hasher.update(&incarnation.to_le_bytes());
        let mut proof = [0; 16];
        proof.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Ours {
            id,
            incarnation,
            namespace,
            payload,
            reply_port,
            ttl,
            process,
            proof,
            commitment: commitment_of(&proof),
            keys,
            nonce_key: blake3::derive_key("cohort 2026 v2 nonce", secret),
            seq: 0,
            cache: Vec::new(),
        }
    }

    pub(crate) fn sealed(&self) -> bool {
        self.keys.is_some()
    }

    pub(crate) fn keys(&self) -> Option<&KeyRing> {
        self.keys.as_ref()
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Encodes (or takes from the cache) one packet. `wall_ms` is our clock
    /// for sealed packets' replay window.
    pub(crate) fn packet(&mut self, wall_ms: u64, build: Build<'_>) -> Arc<[u8]> {
        let cacheable = self.keys.is_none()
            && build.cookie.is_none()
            && build.echo.is_none()
            && build.known.is_empty();
        if cacheable
            && let Some((_, _, bytes)) = self
                .cache
                .iter()
                .find(|(s, pad, _)| *s == build.said && *pad == build.pad_to)
        {
            return Arc::clone(bytes);
        }
        let info = Info {
            ttl_ms: u32::try_from(self.ttl.as_millis()).unwrap_or(u32::MAX),
            process: self.process,
            commitment: self.commitment,
            payload: &self.payload,
        };
        let message = match build.said {
            Said::Announce { want_reply } => Message::Announce {
                info,
                want_reply,
                known: build.known,
            },
            Said::Reply => Message::Reply { info },
            Said::Query { want_reply } => Message::Query { want_reply },
            Said::Goodbye => Message::Goodbye { proof: self.proof },
        };
        let sealed = self.keys.is_some();
        if sealed {
            self.seq += 1;
        }
        let mut packet = Packet {
            namespace: &self.namespace,
            sender: self.id,
            incarnation: self.incarnation,
            seq: if sealed { self.seq } else { 0 },
            sent_ms: if sealed { wall_ms } else { 0 },
            reply_port: self.reply_port,
            cookie: build.cookie,
            echo: build.echo,
            message,
            pad: &[],
        };
        // Zeros up to the size asked for; open mode only (sealed packets
        // are answered without address validation, so need no padding).
        const ZEROS: [u8; MAX_PAD] = [0; MAX_PAD];
        if !sealed {
            let len = wire::HEADER_LEN + wire::body_len(&packet);
            // A length prefix of two bytes goes with any padding.
            let want = build.pad_to.saturating_sub(len + 2).min(MAX_PAD);
            packet.pad = &ZEROS[..want];
        }
        let bytes: Arc<[u8]> = match &self.keys {
            Some(ring) => {
                let mut hasher = blake3::Hasher::new_keyed(&self.nonce_key);
                hasher.update(&self.seq.to_le_bytes());
                let mut nonce = [0; 24];
                nonce.copy_from_slice(&hasher.finalize().as_bytes()[..24]);
                ring.seal(&packet, nonce).into()
            }
            None => wire::encode(&packet).into(),
        };
        if cacheable {
            self.cache
                .push((build.said, build.pad_to, Arc::clone(&bytes)));
        }
        bytes
    }

    pub(crate) fn set_payload(&mut self, payload: Vec<u8>) {
        self.payload = payload;
        self.cache.clear();
    }

    pub(crate) fn set_ttl(&mut self, ttl: Duration) {
        if ttl != self.ttl {
            self.ttl = ttl;
            self.cache.clear();
        }
    }

    pub(crate) fn set_keys(&mut self, keys: Option<KeyRing>) {
        self.keys = keys;
        self.cache.clear();
    }
}

/// What an incarnation publishes so that only it can later say goodbye.
pub(crate) fn commitment_of(proof: &[u8; 16]) -> [u8; 16] {
    let mut commitment = [0; 16];
    commitment.copy_from_slice(&blake3::hash(proof).as_bytes()[..16]);
    commitment
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

    /// Whether the next announcement is still an eager one.
    pub(crate) fn eager(&self) -> bool {
        self.sent < self.schedule.eager_announcements
    }

    /// Whether this is the first announcement (nobody heard yet).
    pub(crate) fn first(&self) -> bool {
        self.sent == 0
    }

    /// Whether the next announcement is still in the settling phase: the
    /// eager ones and [`SETTLING`] more after them. Settling announcements
    /// carry the filter of ids heard, so a peer missing from it answers
    /// even when nobody asks: a handshake that lost a datagram is mended at
    /// the next announcement of either side.
    pub(crate) fn settling(&self) -> bool {
        self.sent < self.schedule.eager_announcements.saturating_add(SETTLING)
    }

    /// The settled gap for a group of `n` instances, and the TTL that goes
    /// with it.
    pub(crate) fn scaled(&self, n: usize) -> (Duration, Duration) {
        let s = &self.schedule;
        if n <= SCALE_FROM {
            return (s.max_interval, s.ttl);
        }
        let factor = n as f64 / SCALE_FROM as f64;
        (s.max_interval.mul_f64(factor), s.ttl.mul_f64(factor))
    }

    /// Whether an announcement is due at `now`; if so, schedules the next
    /// one for a group of `n` and says what to send.
    pub(crate) fn due(&mut self, now: Instant, n: usize) -> Option<Said> {
        if self.next_send.is_none_or(|due| now < due) {
            return None;
        }
        let eager = self.eager();
        let said = match self.mode {
            Mode::Announce => Said::Announce { want_reply: eager },
            Mode::Sniff => Said::Query { want_reply: true },
        };
        self.sent = self.sent.saturating_add(1);
        if self.mode == Mode::Sniff && !self.eager() {
            // A sniffer only asks while starting; then it listens.
            self.next_send = None;
            return Some(said);
        }
        let (max, _) = self.scaled(n);
        if self.sent > 1 {
            self.interval = (self.interval * 2).min(max);
        }
        self.next_send = Some(now + self.rng.jitter(self.interval));
        Some(said)
    }

    /// Our payload changed: announce it at once and restart the doubling, so
    /// the change spreads quickly even if this announcement is lost.
    pub(crate) fn restart(&mut self, now: Instant) -> bool {
        if self.mode != Mode::Announce || self.next_send.is_none() {
            return false;
        }
        self.interval = self.schedule.first_interval;
        self.next_send = Some(now + self.rng.jitter(self.interval));
        true
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

    /// A uniform delay in `[0, spread)`, from the seeded generator.
    pub(crate) fn spread(&mut self, spread: Duration) -> Duration {
        spread.mul_f64(self.rng.unit())
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

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `gap` scaled by a uniform factor in [0.8, 1.2).
    fn jitter(&mut self, gap: Duration) -> Duration {
        gap.mul_f64(0.8 + 0.4 * self.unit())
    }
}
