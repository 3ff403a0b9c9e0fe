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
            Rejected::Decode(_) => &mut self.dropped_malformed,
            Rejected::ForeignNamespace => &mut self.dropped_foreign_namespace,
            Rejected::StaleIncarnation { .. } => &mut self.dropped_stale,
            Rejected::SameIdAsUs { .. } => &mut self.dropped_same_id,
            Rejected::UndecodablePayload { .. } => &mut self.dropped_undecodable_payload,
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
