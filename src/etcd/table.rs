//! What the etcd source has reported, and how each change under the
//! namespace's directory becomes [`SourceEvent`]s.
//!
//! **Owns:** the mapping from keys and values under `<prefix>/<namespace>/`
//! to events: which keys are records (`<dir><id>` holding a [`Record`] of
//! that id), what counts as garbage, the table of records last reported
//! (so a re-read after a cut reports exactly what changed), and its caps.
//! **Must not touch:** the network, the lease, or this instance's own
//! registration (the session decides what to write; it filters our own
//! record out of what this table reports).
//!
//! Everything here is a pure function of the bytes etcd hands over, so it
//! is table-tested without a cluster.
//!
//! # The rules
//!
//! The table mirrors what etcd holds: a key that holds a live record of its
//! id is a member, anything else is not.
//! - A live record that is new or changed is a `Put`.
//! - A key that held a reported record and now holds nothing, garbage, a
//!   record marked `leaving` or an older incarnation is a `Delete` of the
//!   reported incarnation (then a `Put` of the older incarnation, if that is
//!   what the key holds). `leaving` is set only when the reported record
//!   itself said goodbye (the same incarnation, marked `leaving`).
//! - A value that is not a record of ours (bad key, bad value, a record
//!   under another id's key, a table that is full) is `Garbage`, counted
//!   once per write.

use std::collections::HashMap;

use crate::source::{Record, SourceEvent};
use crate::wire::Id;

/// The most records the table follows. More ids than this under one
/// namespace are counted as garbage (a chart that large is beyond what
/// cohort is built for; the cap keeps a hostile writer from growing the
/// table without bound).
pub(crate) const MAX_RECORDS: usize = 65_536;

/// The most garbage keys remembered (by hash), so a re-read does not count
/// the same garbage again. Beyond this, garbage is counted at every read.
pub(crate) const MAX_GARBAGE_TRACKED: usize = 4_096;

/// The longest id part of a key: `u64::MAX` has 20 digits.
const MAX_ID_DIGITS: usize = 20;

/// A record as the table remembers it: enough to diff, never the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    incarnation: u64,
    mod_revision: i64,
}

/// The records and garbage last reported for one directory.
#[derive(Debug)]
pub(crate) struct Table {
    dir: Vec<u8>,
    records: HashMap<Id, Known>,
    garbage: HashMap<[u8; 32], i64>,
}

/// What one value under the directory is.
enum Value {
    Live(Id, Record),
    Leaving(Id, Record),
    Garbage,
}

/// A re-read in progress: the table it builds, beside the old one.
#[derive(Debug)]
pub(crate) struct Resync {
    records: HashMap<Id, Known>,
    garbage: HashMap<[u8; 32], i64>,
    /// Reported records whose key now holds their own goodbye.
    said_goodbye: HashMap<Id, u64>,
}

impl Table {
    /// An empty table for the directory `dir` (`<prefix>/<namespace>/`).
    pub(crate) fn new(dir: Vec<u8>) -> Table {
        Table {
            dir,
            records: HashMap::new(),
            garbage: HashMap::new(),
        }
    }

    /// The directory, `<prefix>/<namespace>/`.
    pub(crate) fn dir(&self) -> &[u8] {
        &self.dir
    }

    /// The key a record of `id` lives at.
    pub(crate) fn key_of(&self, id: Id) -> Vec<u8> {
        let mut key = self.dir.clone();
        key.extend_from_slice(id.to_string().as_bytes());
        key
    }

    /// How many records the table follows.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.records.len()
    }

    /// The id a key names: the directory, then the id in canonical decimal
    /// (no sign, no leading zero), and nothing else.
    fn id_of(&self, key: &[u8]) -> Option<Id> {
        let digits = key.strip_prefix(self.dir.as_slice())?;
        if digits.is_empty()
            || digits.len() > MAX_ID_DIGITS
            || !digits.iter().all(u8::is_ascii_digit)
            || (digits[0] == b'0' && digits.len() > 1)
        {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    fn classify(&self, key: &[u8], value: &[u8]) -> Value {
        let Some(id) = self.id_of(key) else {
            return Value::Garbage;
        };
        match Record::decode(value) {
            Some(record) if record.id == id && record.leaving => Value::Leaving(id, record),
            Some(record) if record.id == id => Value::Live(id, record),
            _ => Value::Garbage,
        }
    }

    /// A put seen by the watch.
    pub(crate) fn put(
        &mut self,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        out: &mut Vec<SourceEvent>,
    ) {
        let hash = *blake3::hash(key).as_bytes();
        match self.classify(key, value) {
            Value::Live(id, record) => {
                self.garbage.remove(&hash);
                let known = Known {
                    incarnation: record.incarnation,
                    mod_revision,
                };
                match self.records.get(&id).copied() {
                    Some(old) if old.mod_revision == mod_revision => return,
                    Some(old) => replaced(id, old, &record, out),
                    None if self.records.len() >= MAX_RECORDS => {
                        over_cap(id);
                        out.push(SourceEvent::Garbage);
                        return;
                    }
                    None => {}
                }
                self.records.insert(id, known);
                out.push(SourceEvent::Put(record));
            }
            Value::Leaving(id, record) => {
                self.garbage.remove(&hash);
                if let Some(old) = self.records.remove(&id) {
                    out.push(gone(id, old, old.incarnation == record.incarnation));
                }
            }
            Value::Garbage => {
                if let Some(id) = self.id_of(key)
                    && let Some(old) = self.records.remove(&id)
                {
                    out.push(gone(id, old, false));
                }
                if self.garbage.get(&hash) == Some(&mod_revision) {
                    return;
                }
                if self.garbage.len() < MAX_GARBAGE_TRACKED || self.garbage.contains_key(&hash) {
                    self.garbage.insert(hash, mod_revision);
                }
                out.push(SourceEvent::Garbage);
            }
        }
    }

    /// A delete seen by the watch; `prev` is the value the key held, when
    /// etcd still had it.
    pub(crate) fn delete(&mut self, key: &[u8], prev: Option<&[u8]>, out: &mut Vec<SourceEvent>) {
        self.garbage.remove(blake3::hash(key).as_bytes());
        let Some(id) = self.id_of(key) else {
            return;
        };
        let Some(old) = self.records.remove(&id) else {
            return;
        };
        let said_goodbye = prev.map(|prev| self.classify(key, prev)).is_some_and(
            |value| matches!(value, Value::Leaving(_, r) if r.incarnation == old.incarnation),
        );
        out.push(gone(id, old, said_goodbye));
    }

    /// Starts a re-read of the whole directory.
    pub(crate) fn begin_resync(&self) -> Resync {
        Resync {
            records: HashMap::new(),
            garbage: HashMap::new(),
            said_goodbye: HashMap::new(),
        }
    }

    /// One key of the re-read: reports what is new or changed since the
    /// table was last updated.
    pub(crate) fn resync_entry(
        &self,
        resync: &mut Resync,
        key: &[u8],
        value: &[u8],
        mod_revision: i64,
        out: &mut Vec<SourceEvent>,
    ) {
        match self.classify(key, value) {
            Value::Live(id, record) => {
                if resync.records.len() >= MAX_RECORDS {
                    over_cap(id);
                    out.push(SourceEvent::Garbage);
                    return;
                }
                let known = Known {
                    incarnation: record.incarnation,
                    mod_revision,
                };
                resync.records.insert(id, known);
                match self.records.get(&id).copied() {
                    Some(old) if old.mod_revision == mod_revision => {}
                    Some(old) => {
                        replaced(id, old, &record, out);
                        out.push(SourceEvent::Put(record));
                    }
                    None => out.push(SourceEvent::Put(record)),
                }
            }
            Value::Leaving(id, record) => {
                if self.records.contains_key(&id) {
                    resync.said_goodbye.insert(id, record.incarnation);
                }
            }
            Value::Garbage => {
                let hash = *blake3::hash(key).as_bytes();
                if resync.garbage.len() < MAX_GARBAGE_TRACKED {
                    resync.garbage.insert(hash, mod_revision);
                }
                if self.garbage.get(&hash) != Some(&mod_revision) {
                    out.push(SourceEvent::Garbage);
                }
            }
        }
    }

    /// Ends a re-read: every reported record that is no longer there is
    /// deleted, and the table becomes what was read.
    pub(crate) fn finish_resync(&mut self, resync: Resync, out: &mut Vec<SourceEvent>) {
        let mut gone_ids: Vec<(Id, Known)> = self
            .records
            .iter()
            .filter(|(id, _)| !resync.records.contains_key(id))
            .map(|(id, known)| (*id, *known))
            .collect();
        gone_ids.sort_unstable_by_key(|(id, _)| *id);
        for (id, old) in gone_ids {
            let said_goodbye = resync.said_goodbye.get(&id) == Some(&old.incarnation);
            out.push(gone(id, old, said_goodbye));
        }
        self.records = resync.records;
        self.garbage = resync.garbage;
    }
}

/// The events for a reported record `old` replaced at its key by the live
/// `record`: an older incarnation first deletes the newer one that went
/// (the caller then reports the put).
fn replaced(id: Id, old: Known, record: &Record, out: &mut Vec<SourceEvent>) {
    if record.incarnation < old.incarnation {
        out.push(gone(id, old, false));
    }
}

fn gone(id: Id, old: Known, leaving: bool) -> SourceEvent {
    SourceEvent::Delete {
        id,
        incarnation: Some(old.incarnation),
        leaving,
    }
}

fn over_cap(id: Id) {
    tracing::warn!(
        id,
        cap = MAX_RECORDS,
        "etcd: more records under the namespace than cohort follows; this one is ignored"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: &[u8] = b"/cohort/ns/";

    fn record(id: Id, incarnation: u64, leaving: bool) -> Record {
        Record {
            id,
            incarnation,
            addrs: vec!["10.0.0.1".parse().unwrap()],
            payload: vec![id as u8],
            process: None,
            leaving,
        }
    }

    fn key(id: &str) -> Vec<u8> {
        [DIR, id.as_bytes()].concat()
    }

    fn put(t: &mut Table, k: &[u8], v: &[u8], rev: i64) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        t.put(k, v, rev, &mut out);
        out
    }

    fn delete(t: &mut Table, k: &[u8], prev: Option<&[u8]>) -> Vec<SourceEvent> {
        let mut out = Vec::new();
        t.delete(k, prev, &mut out);
        out
    }

    fn del(id: Id, incarnation: u64, leaving: bool) -> SourceEvent {
        SourceEvent::Delete {
            id,
            incarnation: Some(incarnation),
            leaving,
        }
    }

    #[test]
    fn keys_name_ids_canonically() {
        let t = Table::new(DIR.to_vec());
        assert_eq!(t.key_of(42), key("42"));
        assert_eq!(t.id_of(&key("42")), Some(42));
        assert_eq!(t.id_of(&key("0")), Some(0));
        assert_eq!(t.id_of(&key("18446744073709551615")), Some(u64::MAX));
        for bad in [
            "",
            "042",
            "+4",
            "-4",
            "4 ",
            "4/x",
            "18446744073709551616",
            "99999999999999999999999",
            "\u{0664}",
        ] {
            assert_eq!(t.id_of(&key(bad)), None, "{bad:?}");
        }
        assert_eq!(t.id_of(b"/cohort/other/4"), None);
    }

    #[test]
    fn puts_updates_goodbyes_and_expiries() {
        let mut t = Table::new(DIR.to_vec());
        let r = record(4, 1, false);
        assert_eq!(
            put(&mut t, &key("4"), &r.encode(), 10),
            [SourceEvent::Put(r.clone())]
        );
        // The same write seen twice (a watch replay) is reported once.
        assert_eq!(put(&mut t, &key("4"), &r.encode(), 10), []);
        let mut updated = r.clone();
        updated.payload = vec![9];
        assert_eq!(
            put(&mut t, &key("4"), &updated.encode(), 11),
            [SourceEvent::Put(updated.clone())]
        );
        // The goodbye is reported at the leaving put; the lease revocation's
        // delete that follows says nothing more.
        let leaving = record(4, 1, true);
        assert_eq!(
            put(&mut t, &key("4"), &leaving.encode(), 12),
            [del(4, 1, true)]
        );
        assert_eq!(delete(&mut t, &key("4"), Some(&leaving.encode())), []);
        // An expiry: the delete of a live record.
        put(&mut t, &key("5"), &record(5, 1, false).encode(), 13);
        assert_eq!(
            delete(&mut t, &key("5"), Some(&record(5, 1, false).encode())),
            [del(5, 1, false)]
        );
        // Without a previous value, the table still knows the incarnation.
        put(&mut t, &key("6"), &record(6, 3, false).encode(), 14);
        assert_eq!(delete(&mut t, &key("6"), None), [del(6, 3, false)]);
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn incarnations_follow_the_key() {
        let mut t = Table::new(DIR.to_vec());
        put(&mut t, &key("4"), &record(4, 1, false).encode(), 10);
        // A restart: the newer incarnation replaces the older one at once.
        let newer = record(4, 2, false);
        assert_eq!(
            put(&mut t, &key("4"), &newer.encode(), 11),
            [SourceEvent::Put(newer)]
        );
        // The predecessor's goodbye overwriting it is no goodbye of the
        // newer incarnation: the newer one went, and did not say goodbye.
        assert_eq!(
            put(&mut t, &key("4"), &record(4, 1, true).encode(), 12),
            [del(4, 2, false)]
        );
        // An older incarnation overwriting a newer one: the newer one is
        // deleted, then the older one is what the key holds.
        put(&mut t, &key("4"), &record(4, 5, false).encode(), 13);
        let older = record(4, 3, false);
        assert_eq!(
            put(&mut t, &key("4"), &older.encode(), 14),
            [del(4, 5, false), SourceEvent::Put(older)]
        );
    }

    #[test]
    fn garbage_is_counted_once_per_write_and_never_a_member() {
        let mut t = Table::new(DIR.to_vec());
        let r = record(4, 1, false);
        for (rev, (k, v)) in [
            (key("x"), r.encode()),
            (key("04"), r.encode()),
            (key("5"), r.encode()),
            (key("4"), b"{\"json\":true}".to_vec()),
            (key("4"), vec![]),
            (key("4"), vec![0xff; 100_000]),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                put(&mut t, &k, &v, rev as i64),
                [SourceEvent::Garbage],
                "{k:?}"
            );
        }
        // The same garbage write seen again (a re-read) is not counted again.
        assert_eq!(put(&mut t, &key("4"), &[0xff; 100_000], 5), []);
        assert_eq!(t.len(), 0);
        // Garbage over a member deletes the member: the key holds no record.
        put(&mut t, &key("4"), &r.encode(), 12);
        assert_eq!(
            put(&mut t, &key("4"), b"junk", 13),
            [del(4, 1, false), SourceEvent::Garbage]
        );
        // Deleting garbage says nothing.
        assert_eq!(delete(&mut t, &key("4"), Some(b"junk")), []);
        assert_eq!(delete(&mut t, &key("nope"), None), []);
    }

    #[test]
    fn a_resync_reports_only_what_changed() {
        let mut t = Table::new(DIR.to_vec());
        for id in 1..=4 {
            put(
                &mut t,
                &key(&id.to_string()),
                &record(id, 1, false).encode(),
                id as i64,
            );
        }
        put(&mut t, &key("junk"), b"junk", 5);
        // While cut off: 1 unchanged, 2 updated, 3 left gracefully, 4
        // expired, 7 joined, the junk unchanged, new junk appeared.
        let mut r = t.begin_resync();
        let mut out = Vec::new();
        let updated = record(2, 1, false);
        let joined = record(7, 1, false);
        t.resync_entry(
            &mut r,
            &key("1"),
            &record(1, 1, false).encode(),
            1,
            &mut out,
        );
        t.resync_entry(&mut r, &key("2"), &updated.encode(), 20, &mut out);
        t.resync_entry(
            &mut r,
            &key("3"),
            &record(3, 1, true).encode(),
            21,
            &mut out,
        );
        t.resync_entry(&mut r, &key("7"), &joined.encode(), 22, &mut out);
        t.resync_entry(&mut r, &key("junk"), b"junk", 5, &mut out);
        t.resync_entry(&mut r, &key("junk2"), b"junk", 23, &mut out);
        t.finish_resync(r, &mut out);
        assert_eq!(
            out,
            [
                SourceEvent::Put(updated),
                SourceEvent::Put(joined),
                SourceEvent::Garbage,
                del(3, 1, true),
                del(4, 1, false),
            ]
        );
        assert_eq!(t.len(), 3);
        // Nothing changed: a second re-read reports nothing.
        let mut r = t.begin_resync();
        let mut out = Vec::new();
        t.resync_entry(
            &mut r,
            &key("1"),
            &record(1, 1, false).encode(),
            1,
            &mut out,
        );
        t.resync_entry(
            &mut r,
            &key("2"),
            &record(2, 1, false).encode(),
            20,
            &mut out,
        );
        t.resync_entry(
            &mut r,
            &key("7"),
            &record(7, 1, false).encode(),
            22,
            &mut out,
        );
        t.resync_entry(&mut r, &key("junk"), b"junk", 5, &mut out);
        t.resync_entry(&mut r, &key("junk2"), b"junk", 23, &mut out);
        t.finish_resync(r, &mut out);
        assert_eq!(out, []);
    }

    #[test]
    fn the_tables_are_capped() {
        let mut t = Table::new(DIR.to_vec());
        let mut out = Vec::new();
        for id in 0..MAX_RECORDS as u64 {
            t.put(
                &key(&id.to_string()),
                &record(id, 1, false).encode(),
                1,
                &mut out,
            );
        }
        assert_eq!(out.len(), MAX_RECORDS);
        let extra = MAX_RECORDS as u64;
        assert_eq!(
            put(
                &mut t,
                &key(&extra.to_string()),
                &record(extra, 1, false).encode(),
                2
            ),
            [SourceEvent::Garbage]
        );
        assert_eq!(t.len(), MAX_RECORDS);
        for i in 0..2 * MAX_GARBAGE_TRACKED {
            put(&mut t, &key(&format!("g{i}")), b"junk", 3);
        }
        assert_eq!(t.garbage.len(), MAX_GARBAGE_TRACKED);
    }
}
