//! The etcd source against a real etcd cluster (Debian's `etcd-server`),
//! started by each test on loopback ports. Run inside a private network
//! namespace (`scripts/test`; by hand: `scripts/isolated cargo test
//! --offline --features etcd --lib etcd::`). Without etcd these tests fail
//! under `CI` and print `SKIPPED:` otherwise.
//!
//! Every wait has a deadline and waits on an observable condition (an event
//! from a source, a key in etcd, a line from a child process); the only
//! timing asserted is a lower bound that tells an expired lease from a
//! goodbye.

#[path = "../../tests/etcd_common/mod.rs"]
mod harness;
mod helpers;
mod scenarios;

mod faults;
