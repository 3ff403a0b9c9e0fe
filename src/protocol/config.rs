//! What the state machine is told about us before it starts.
//!
//! **Owns:** [`Config`], [`Mode`], [`Limits`], [`ClockAnchor`] and
//! [`ConfigError`]. **Must not touch:** anything that runs; the coordinator
//! checks a config once, in [`Protocol::new`](super::Protocol::new).

use std::time::{Duration, Instant};

use super::schedule::Schedule;
use crate::wire::seal::KeyRing;
use crate::wire::{Id, MAX_DATAGRAM, MAX_NAMESPACE, ProcessTag};

/// Whether this instance takes part or only listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Announce ourselves and answer others (`discovery::spawn`).
    Announce,
    /// Listen only, asking the group to announce (`discovery::spawn_sniffer`).
    Sniff,
}

/// Where the protocol's monotonic clock meets the wall clock: at `at`, the
/// wall clock read `unix_ms` milliseconds since the Unix epoch. The protocol
/// never reads a clock; it derives wall time from `now` and this anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockAnchor {
    /// A monotonic instant.
    pub at: Instant,
    /// The wall clock at that instant, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
}

/// Bounds on everything a sender can make this instance hold or send.
///
/// The defaults fit any real LAN and keep an instance under a few megabytes
/// whatever arrives (the README states the bound and how it was measured).
///
/// ```
/// use cohort::protocol::Limits;
/// let small = Limits { max_peers: 64, ..Limits::default() };
/// # let _ = small;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Peers held at most. Claims beyond it are dropped and counted.
    pub max_peers: usize,
    /// Peers held at most per source IP address (one host, or one forger).
    pub max_peers_per_ip: usize,
    /// Unproven claims (senders that have not yet echoed a cookie) held at
    /// most; the oldest goes first.
    pub max_pending: usize,
    /// Answers per second, and burst, to one IP address that has not proven
    /// it receives there (on loopback, where a host's instances share one
    /// IP, to one IP and port).
    pub unproven_answers_per_ip: (u32, u32),
    /// Answers per second, and burst, to all unproven addresses together: a
    /// cap on this instance's own upstream under a flood of forged sources.
    /// Each answer is already no larger than the datagram it answers, so a
    /// flood costs the attacker as much as it costs us; set it low only
    /// where upstream bandwidth is precious, as it also delays newcomers
    /// during a flood.
    pub unproven_answers_total: (u32, u32),
    /// Source addresses tracked for rate limiting at most.
    pub max_tracked_sources: usize,
    /// The longest TTL accepted from a peer; longer ones are clamped.
    pub max_peer_ttl: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_peers: 4096,
            max_peers_per_ip: 256,
            max_pending: 1024,
            unproven_answers_per_ip: (64, 256),
            unproven_answers_total: (100_000, 100_000),
            max_tracked_sources: 4096,
            max_peer_ttl: Duration::from_secs(3600),
        }
    }
}

/// Everything the state machine needs to know about us.
///
/// ```
/// use cohort::protocol::Config;
/// let config = Config { id: 7, namespace: "my-app".into(), ..Config::default() };
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Our instance id.
    pub id: Id,
    /// Our incarnation: larger than that of any earlier run with the same id.
    pub incarnation: u64,
    /// Application namespace; packets from other namespaces are rejected.
    pub namespace: String,
    /// Our payload, already encoded by the chart layer.
    pub payload: Vec<u8>,
    /// The announce schedule and our TTL.
    pub schedule: Schedule,
    /// Seed of the generator used for jitter and pacing.
    pub seed: u64,
    /// Bytes this machine keeps to itself: the key of its address-validation
    /// cookies, the source of its goodbye secret and of sealed packets'
    /// nonces. The driver fills it from the operating system's generator;
    /// it must be unpredictable to others for cookies and goodbyes to mean
    /// anything (simulations may use any value).
    pub secret: [u8; 32],
    /// With keys, every packet is sealed (encrypted and authenticated) and
    /// unsealed packets are dropped; without, packets are open and senders
    /// must prove their address before they are believed.
    pub keys: Option<KeyRing>,
    /// The wall clock, for the replay window of sealed packets and the bound
    /// on incarnations from the future. Without it those two checks are off.
    pub clock: Option<ClockAnchor>,
    /// Announce or only listen.
    pub mode: Mode,
    /// The UDP port of our unicast socket, carried in every packet.
    pub reply_port: u16,
    /// Our process, carried in every packet, if known.
    pub process: Option<ProcessTag>,
    /// Whether a peer's payload is acceptable (the chart passes "decodes as
    /// this chart's message type"). A peer whose payload is refused never
    /// joins. Called only when a payload is new or changed, never on a
    /// refresh.
    pub accept_payload: fn(&[u8]) -> bool,
    /// Bounds on what senders can make us hold or send.
    pub limits: Limits,
}

impl Default for Config {
    /// Id 0, namespace `"cohort"`, no payload, the default schedule, seed 0,
    /// an all-zero secret, no keys, no clock, announcing, reply port 0, no
    /// process, every payload accepted, default limits.
    fn default() -> Self {
        Config {
            id: 0,
            incarnation: 0,
            namespace: crate::builder::DEFAULT_NAMESPACE.to_owned(),
            payload: Vec::new(),
            schedule: Schedule::default(),
            seed: 0,
            secret: [0; 32],
            keys: None,
            clock: None,
            mode: Mode::Announce,
            reply_port: 0,
            process: None,
            accept_payload: |_| true,
            limits: Limits::default(),
        }
    }
}

/// A [`Config`] the state machine cannot follow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The schedule is invalid (see [`Schedule::validate`]).
    #[error("invalid schedule: {0}")]
    Schedule(&'static str),
    /// The namespace is longer than the wire format carries.
    #[error("namespace of {len} bytes is longer than the {MAX_NAMESPACE}-byte maximum")]
    NamespaceTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// Our own announcement would not fit in one datagram.
    #[error("an announcement would be {size} bytes, over the {MAX_DATAGRAM}-byte maximum")]
    PayloadTooLarge {
        /// The size of the announcement.
        size: usize,
    },
    /// A limit is zero, so nothing could ever be held.
    #[error("a limit is zero: every limit must allow at least one")]
    ZeroLimit,
}
