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
//! tokio::spawn(discovery::maintain(chart.clone()));
//! discovery::found_majority(&chart, 5).await;
//! for (id, addr) in chart.addr_vec() {
//!     println!("instance {id} serves on {addr}");
//! }
//! # Ok(()) }
//! ```
//!
//! # Architecture
//!
//! Four layers, each owning one thing and forbidden to touch the others'
//! (every module's docs say what it owns and must not touch):
//!
//! | layer | owns | never touches |
//! |---|---|---|
//! | [`wire`] | the versioned packet format: magic, version, postcard body; decoding untrusted bytes | sockets, clocks, state |
//! | [`protocol`] | the discovery rules as a sans-IO state machine: `handle_*` inputs, `poll_*` outputs, `now` as a parameter, a seeded rng | sockets, the system clock, global randomness |
//! | `net` (private) | the sockets (socket2 setup) and the tokio driver task | discovery rules, the chart's map |
//! | `host` (private) | this process's identity (boot id, pid namespace, pid, start time) and watching same-host peers' processes (pidfd) | sockets, discovery rules, the chart |
//! | [`Chart`], [`ChartBuilder`], [`Event`] | the public handle (an `Arc` of shared state), its builder and change events | sockets, protocol timing |
//!
//! [`local`] (same-host single instance) stands beside them and shares
//! nothing with the chart.
//!
//! # The driver's run loop
//!
//! [`discovery::maintain`] opens two sockets (a group socket shared by every
//! instance on the host through `SO_REUSEPORT`, and a unicast socket of its
//! own whose port travels in every packet as the reply port), creates the
//! [`protocol::Protocol`] and loops:
//!
//! 1. send every datagram the protocol queued (`poll_transmit`);
//! 2. apply every protocol event to the chart (`poll_event`), which updates
//!    the map and notifies subscribers;
//! 3. sleep until the first of: a datagram on either socket
//!    (`handle_datagram`), the protocol's timer (`poll_timeout` /
//!    `handle_timeout`), a watched same-host peer process exiting
//!    (`handle_process_exit`), or a request from the chart (forget, new
//!    payload, shutdown).
//!
//! Nothing polls: between announcements the task is parked in the kernel.
//! Socket errors are logged with `tracing` and survived; only set-up
//! failures end `maintain`, as a [`DiscoveryError`].
//!
//! # Input is hostile
//!
//! Every datagram is decoded by [`wire::decode`], which never panics, never
//! allocates, and rejects wrong magic, unknown versions, oversize datagrams
//! and trailing bytes with a typed [`DecodeError`]. Rejected datagrams are
//! dropped and logged at debug level; they never change state.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod builder;
mod chart;
pub mod discovery;
mod error;
mod host;
pub mod local;
mod net;
pub mod protocol;
pub mod wire;

pub use builder::ChartBuilder;
pub use chart::{
    Chart, EVENT_CAPACITY, Entry, Event, Lagged, LeftReason, Message, Ports, Subscription,
};
pub use error::{BuildError, DiscoveryError, PayloadError};
pub use protocol::{Schedule, Stats};
pub use wire::{DecodeError, Id};
