//! cohort: find and coordinate the other running instances of your program.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod builder;
mod chart;
pub mod discovery;
mod error;
pub mod local;
mod net;
pub mod protocol;
pub mod wire;

pub use builder::ChartBuilder;
pub use chart::{
    Chart, EVENT_CAPACITY, Entry, Event, Lagged, LeftReason, Message, Ports, Subscription,
};
pub use error::{BuildError, DiscoveryError};
pub use wire::{DecodeError, Id};
