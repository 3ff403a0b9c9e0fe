//! cohort: find and coordinate the other running instances of your program,
//! on the LAN and on the same machine.
//!
//! ```no_run
//! use cohort::{ChartBuilder, discovery};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let chart = ChartBuilder::new()
//!     .with_random_id()
//!     .with_service_port(8042)
//!     .with_namespace("my-app")
//!     .local_discovery(true)
//!     .finish()?;
//! // Sockets are open when this returns: set-up errors cannot be lost.
//! // Dropping the handle says goodbye and stops discovery.
//! let _discovery = discovery::spawn(&chart)?;
//! discovery::found_majority(&chart, 5).await;
//! for (id, addr) in chart.addr_vec() {
//!     println!("instance {id} serves on {addr}");
//! }
//! # Ok(()) }
//! ```
//!
//! # The user API
//!
//! - [`ChartBuilder`] -> [`Chart`]: the shared map of instances, with
//!   [`Chart::subscribe`] for [`Event`]s (joined, updated, left with a
//!   [`LeftReason`], conflicts), [`Chart::stats`] and [`Chart::status`].
//! - [`discovery`]: [`discovery::spawn`] keeps a chart current and returns a
//!   [`discovery::Discovery`] handle; `found_everyone` / `found_majority` wait
//!   for a cohort.
//! - [`local`]: same-host coordination: one primary per application and user
//!   with forwarding, every running instance listed with a handshake,
//!   verified process identities, daemons spawned or reused, port helpers.
//!
//! [`protocol`] and [`wire`] are the advanced layers underneath, public for
//! custom drivers, simulation and fuzzing.
//!
//! # Architecture
//!
//! Each layer owns one thing and is forbidden to touch the others' (every
//! module's docs say what it owns and must not touch):
//!
//! | layer | owns | never touches |
//! |---|---|---|
//! | [`wire`] | the versioned packet format: magic, version, postcard body; decoding untrusted bytes | sockets, clocks, state |
//! | [`protocol`] | the discovery rules as a sans-IO state machine, and **membership**: inputs `handle_*`, one output `poll_output`, `now` as a parameter, a seeded rng | sockets, the system clock, global randomness |
//! | `net` (private) | the sockets (socket2 setup) and the tokio driver task | discovery rules, the chart's map |
//! | `host` (private) | this process's identity and watching same-host peers' processes (pidfd) | sockets, discovery rules, the chart |
//! | [`Chart`], [`ChartBuilder`], [`discovery`] | the public handle (an `Arc` of shared state): a *view* of the protocol's membership that only protocol events change; its builder; the handle that runs discovery | sockets, protocol timing |
//!
//! [`local`] (same-host coordination) stands beside them and shares nothing
//! with the chart. `source` describes membership from registries beside the
//! LAN (etcd, behind the `etcd` feature), which the protocol merges with
//! what the LAN says.
//!
//! # The driver's run loop
//!
//! [`discovery::spawn`] opens the LAN's sockets (per interface and family:
//! a unicast socket whose port travels in every packet as the reply port,
//! a group socket shared by every instance on the host, and a broadcast
//! socket), creates the [`protocol::Protocol`] and runs a task that loops:
//!
//! 1. drain the protocol ([`protocol::Protocol::poll_output`]): send every
//!    datagram, apply every change to the chart, until it names its next
//!    timeout;
//! 2. sleep until the first input: a datagram on any socket, the timer, a
//!    change of the interfaces, a watched same-host peer process exiting,
//!    or a request from the chart (forget, new payload, shutdown).
//!
//! Nothing polls: between announcements the task is parked in the kernel.
//! Socket errors are counted and survived; a group that cannot be joined yet
//! is retried and shown in [`Chart::status`].
//!
//! # Input is hostile
//!
//! Every datagram is decoded by [`wire::decode`], which never panics, never
//! allocates, and rejects wrong magic, unknown versions, oversize datagrams
//! and trailing bytes with a typed [`DecodeError`]. Rejected datagrams are
//! dropped and counted; they never change state.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod builder;
mod chart;
pub mod discovery;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod host;
pub mod local;
mod net;
pub mod protocol;
mod source;
mod status;
pub mod wire;

pub use builder::{ChartBuilder, Interface};
pub use chart::{
    Address, AddressDetails, Chart, EVENT_CAPACITY, Entry, Event, Lagged, LeftReason, Message,
    Notify, PeerDetails, Ports, RawPayload, Subscription,
};
pub use error::{BuildError, DiscoveryError, PayloadError};
pub use net::interfaces::{InterfaceAddr, InterfaceFlags, InterfaceInfo, interfaces};
pub use protocol::Schedule;
pub use source::{Learned, Source};
pub use status::{IoStats, Problem, SourceStats, Stats, Status};
pub use wire::{DecodeError, Id};

/// The README's code, compiled and run as doctests so it cannot drift from
/// the crate.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
