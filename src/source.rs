#![cfg_attr(not(feature = "etcd"), allow(dead_code))] // encodings and events the etcd source uses
//! Membership from sources beside the LAN (etcd), as the driver hands it to
//! the protocol.
//!
//! **Owns:** [`Record`], what one instance publishes about itself to an
//! external registry, and [`SourceEvent`], what such a registry reports.
//! **Must not touch:** sockets, clients or the protocol's rules: a source
//! task (for example `etcd`) produces these, the driver feeds them to the
//! protocol, which merges them with what the LAN says, so one instance heard
//! both ways is one entry.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::wire::{Id, ProcessTag};

/// Where an entry was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Source {
    /// UDP multicast (or seeds, or broadcast) on the local network.
    Lan,
    /// An etcd cluster.
    Etcd,
}

/// Where an entry was learned: the LAN, an external registry, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Learned {
    /// Heard on the LAN (multicast, seeds or broadcast).
    pub lan: bool,
    /// Read from an etcd cluster.
    pub etcd: bool,
}

impl std::fmt::Display for Learned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match (self.lan, self.etcd) {
            (true, true) => "lan+etcd",
            (true, false) => "lan",
            (false, true) => "etcd",
            (false, false) => "-",
        })
    }
}

/// What one instance publishes about itself to an external registry.
/// Encoded with postcard behind a version byte ([`Record::encode`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    /// The instance's id.
    pub(crate) id: Id,
    /// Its incarnation: a restart publishes a larger one, so a late delete
    /// of its predecessor's record is recognised and ignored.
    pub(crate) incarnation: u64,
    /// Addresses others can reach it at (its interfaces' addresses, or what
    /// the application advertised).
    pub(crate) addrs: Vec<IpAddr>,
    /// Its payload, encoded by the chart layer (service ports or a custom
    /// message).
    pub(crate) payload: Vec<u8>,
    /// Its process, for same-host peers.
    pub(crate) process: Option<ProcessTag>,
    /// Set on the last write before a graceful exit, so watchers can tell a
    /// goodbye from a lease that expired.
    pub(crate) leaving: bool,
}

/// The version byte in front of every encoded [`Record`].
pub(crate) const RECORD_VERSION: u8 = 1;

/// The largest encoded record accepted from a registry, in bytes.
pub(crate) const MAX_RECORD: usize = 16 * 1024;

impl Record {
    /// The version byte, then the postcard body.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let out = vec![RECORD_VERSION];
        // A record of plain integers, byte strings and addresses always encodes.
        postcard::to_extend(self, out).expect("a Record always encodes")
    }

    /// Decodes a value found in a registry. Anything but exactly one record
    /// of this version (garbage, another application's value, a newer
    /// version, an oversized value) is `None`: counted and ignored by the
    /// caller, never fatal.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() > MAX_RECORD {
            return None;
        }
        let (&version, body) = bytes.split_first()?;
        if version != RECORD_VERSION {
            return None;
        }
        match postcard::take_from_bytes::<Record>(body) {
            Ok((record, [])) => Some(record),
            _ => None,
        }
    }
}

/// What an external source reports to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SourceEvent {
    /// An instance's record appeared or changed (a snapshot read counts as
    /// a put for every record in it).
    Put(Record),
    /// An instance's record is gone. `leaving` tells a goodbye (the record
    /// said so before it went) from an expiry (its lease ran out).
    Delete {
        /// The instance.
        id: Id,
        /// The incarnation whose record went, when the source knows it; a
        /// delete of an older incarnation than the one known is ignored.
        incarnation: Option<u64>,
        /// Whether the record was marked as leaving.
        leaving: bool,
    },
    /// The source cannot currently be trusted to be up to date (lost its
    /// cluster) or recovered. Entries are kept while stale.
    Stale(bool),
    /// A value under the prefix that is not a record of ours (counted).
    Garbage,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            id: 7,
            incarnation: 3,
            addrs: vec!["10.0.0.7".parse().unwrap(), "fe80::1".parse().unwrap()],
            payload: vec![1, 2, 3],
            process: None,
            leaving: false,
        }
    }

    #[test]
    fn a_record_survives_a_round_trip() {
        assert_eq!(Record::decode(&record().encode()), Some(record()));
    }

    #[test]
    fn garbage_other_versions_and_trailing_bytes_are_not_records() {
        let good = record().encode();
        let mut trailing = good.clone();
        trailing.push(0);
        let mut newer = good.clone();
        newer[0] = RECORD_VERSION + 1;
        for bad in [
            &[][..],
            b"{\"json\":1}",
            &trailing,
            &newer,
            &vec![1; MAX_RECORD + 1],
        ] {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }
}
