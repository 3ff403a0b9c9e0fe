//! What the state machine is told about us before it starts.
//!
//! **Owns:** [`Config`], [`Mode`] and [`ConfigError`]. **Must not touch:**
//! anything that runs; the coordinator checks a config once, in
//! [`Protocol::new`](super::Protocol::new).

use super::schedule::Schedule;
use crate::wire::{Id, MAX_DATAGRAM, MAX_NAMESPACE, ProcessTag};

/// Whether this instance takes part or only listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Announce ourselves and answer others (`discovery::spawn`).
    Announce,
    /// Listen only, asking the group to announce (`discovery::spawn_sniffer`).
    Sniff,
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
    /// Seed of the generator used for jitter.
    pub seed: u64,
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
}

impl Default for Config {
    /// Id 0, namespace `"cohort"`, no payload, the default schedule, seed 0,
    /// announcing, reply port 0, no process, every payload accepted.
    fn default() -> Self {
        Config {
            id: 0,
            incarnation: 0,
            namespace: crate::builder::DEFAULT_NAMESPACE.to_owned(),
            payload: Vec::new(),
            schedule: Schedule::default(),
            seed: 0,
            mode: Mode::Announce,
            reply_port: 0,
            process: None,
            accept_payload: |_| true,
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
}
