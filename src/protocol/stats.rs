//! Counters of everything the state machine handled.
//!
//! **Owns:** [`Stats`] and the one place where each [`Rejected`] and each
//! departure is counted. **Must not touch:** anything else; the coordinator
//! calls in here, nothing here calls out.

use super::events::{LeftReason, Rejected};
use crate::wire::DecodeError;

/// Counters of everything the state machine handled. Monotonic.
///
/// These count what the *protocol* saw and decided. What the sockets did
/// (datagrams really sent, send failures) is counted by the driver, in
/// [`IoStats`](crate::IoStats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Datagrams the protocol asked to be sent.
    pub datagrams_queued: u64,
    /// Bytes in them.
    pub bytes_queued: u64,
    /// Datagrams handed to [`Protocol::handle_datagram`](super::Protocol::handle_datagram).
    pub datagrams_received: u64,
    /// Bytes in them.
    pub bytes_received: u64,
    /// Dropped: too short or cut off.
    pub dropped_truncated: u64,
    /// Dropped: not cohort's magic.
    pub dropped_bad_magic: u64,
    /// Dropped: a protocol version this build does not speak.
    pub dropped_bad_version: u64,
    /// Dropped: larger than the maximum datagram.
    pub dropped_oversize: u64,
    /// Dropped: malformed body, trailing bytes, a non-canonical encoding or
    /// an over-long namespace.
    pub dropped_malformed: u64,
    /// Dropped: another application's namespace.
    pub dropped_foreign_namespace: u64,
    /// Dropped: from an older incarnation of a known peer.
    pub dropped_stale: u64,
    /// Dropped: another instance with our id.
    pub dropped_same_id: u64,
    /// Dropped: the peer's payload does not decode as this chart's message
    /// type (another application, or another version of it, in our
    /// namespace).
    pub dropped_undecodable_payload: u64,
    /// Dropped: open where sealed packets are expected, or the other way
    /// round (an instance without the key, or with one this has not).
    pub dropped_wrong_mode: u64,
    /// Dropped: sealed under a key this instance does not have.
    pub dropped_unknown_key: u64,
    /// Dropped: sealed, but the authentication tag does not verify (a wrong
    /// key, a flipped bit, a forgery).
    pub dropped_unauthentic: u64,
    /// Dropped: a sealed packet delivered already (a replay).
    pub dropped_replayed: u64,
    /// Dropped: a sealed packet whose clock is outside the replay window.
    pub dropped_stale_clock: u64,
    /// Dropped: an incarnation from the future.
    pub dropped_future_incarnation: u64,
    /// Dropped: a goodbye without its incarnation's secret.
    pub dropped_unproven_goodbye: u64,
    /// Dropped: the peer table was full.
    pub dropped_peer_cap: u64,
    /// Dropped: the source address held its share of the table.
    pub dropped_address_cap: u64,
    /// Dropped: a claim on a live peer's id from another address.
    pub dropped_contested: u64,
    /// Answers not sent to unproven addresses because of the rate limits
    /// (or a full queue of paced answers).
    pub dropped_rate_limited: u64,
    /// Answers not sent to unproven addresses because they would have been
    /// larger than what arrived.
    pub dropped_too_large_to_answer: u64,
    /// Unproven claims pushed out of the pending table by newer ones.
    pub pending_evicted: u64,
    /// Senders that proved their address by echoing a cookie.
    pub proven: u64,
    /// Bytes received from addresses not (yet) proven.
    pub unproven_bytes_in: u64,
    /// Bytes sent to addresses not (yet) proven: never more than
    /// `unproven_bytes_in` for any one datagram answered.
    pub unproven_bytes_out: u64,
    /// Probes sent to silent peers.
    pub probes_sent: u64,
    /// Peers that joined.
    pub joined: u64,
    /// Peers that changed payload or address, or restarted.
    pub updated: u64,
    /// Peers that left with a goodbye.
    pub left_goodbye: u64,
    /// Same-host peers whose process died.
    pub left_died: u64,
    /// Peers evicted after their TTL.
    pub left_expired: u64,
    /// Peers the application forgot.
    pub left_forgotten: u64,
    /// Id conflicts reported.
    pub conflicts: u64,
}

impl Stats {
    /// Counts one rejected datagram under its reason.
    pub(crate) fn rejected(&mut self, rejected: &Rejected) {
        let counter = match rejected {
            Rejected::Decode(DecodeError::Truncated { .. }) => &mut self.dropped_truncated,
            Rejected::Decode(DecodeError::BadMagic) => &mut self.dropped_bad_magic,
            Rejected::Decode(DecodeError::UnsupportedVersion { .. }) => {
                &mut self.dropped_bad_version
            }
            Rejected::Decode(DecodeError::Oversize { .. }) => &mut self.dropped_oversize,
            Rejected::Decode(DecodeError::WrongMode { .. }) => &mut self.dropped_wrong_mode,
            Rejected::Decode(DecodeError::UnknownKey) => &mut self.dropped_unknown_key,
            Rejected::Decode(DecodeError::Unauthentic) => &mut self.dropped_unauthentic,
            Rejected::Decode(_) => &mut self.dropped_malformed,
            Rejected::ForeignNamespace => &mut self.dropped_foreign_namespace,
            Rejected::StaleIncarnation { .. } => &mut self.dropped_stale,
            Rejected::SameIdAsUs { .. } => &mut self.dropped_same_id,
            Rejected::UndecodablePayload { .. } => &mut self.dropped_undecodable_payload,
            Rejected::Replayed { .. } => &mut self.dropped_replayed,
            Rejected::StaleClock { .. } => &mut self.dropped_stale_clock,
            Rejected::FutureIncarnation { .. } => &mut self.dropped_future_incarnation,
            Rejected::UnprovenGoodbye { .. } => &mut self.dropped_unproven_goodbye,
            Rejected::PeerCap { .. } => &mut self.dropped_peer_cap,
            Rejected::AddressCap { .. } => &mut self.dropped_address_cap,
            Rejected::Contested { .. } => &mut self.dropped_contested,
        };
        *counter += 1;
    }

    /// Counts one departure under its reason.
    pub(crate) fn left(&mut self, reason: LeftReason) {
        match reason {
            LeftReason::Goodbye => self.left_goodbye += 1,
            LeftReason::Died => self.left_died += 1,
            LeftReason::Expired => self.left_expired += 1,
            LeftReason::Forgotten => self.left_forgotten += 1,
            // Not a departure of the peer: we stopped listening.
            LeftReason::Stopped => {}
        }
    }
}
