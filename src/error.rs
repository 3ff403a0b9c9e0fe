//! Errors, layered by where they arise.
//!
//! **Owns:** the error types users see from the chart: [`BuildError`] (a
//! configuration to fix before anything runs) and [`DiscoveryError`] (the
//! driver could not run). Packet-level rejections live beside their
//! code ([`crate::wire::DecodeError`], [`crate::protocol::Rejected`]): they
//! never reach the user as errors, only as logs and statistics, because bad
//! input from the network is expected, not exceptional.
//! **Must not touch:** anything else; this module only describes failures.
//!
//! Every message says what failed and what to do about it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::wire::{MAX_DATAGRAM, MAX_NAMESPACE};

/// A chart configuration that cannot work. Returned by
/// [`ChartBuilder::finish`](crate::ChartBuilder::finish); nothing has been
/// opened or sent when you see it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// Port 0 would give every instance a different random port.
    #[error(
        "discovery port 0 would give every instance its own random port, so none could find another; pick a fixed port with `with_discovery_port`"
    )]
    ZeroDiscoveryPort,
    /// The group address is not an IPv4 multicast address.
    #[error(
        "{group} is not an IPv4 multicast address; pick one in the administratively scoped range 239.255.0.0/16 with `with_multicast_group`"
    )]
    NotMulticast {
        /// The address given.
        group: Ipv4Addr,
    },
    /// The IPv6 group address is not multicast.
    #[error(
        "{group} is not an IPv6 multicast address; pick one in ff02::/16 (link-local scope) with `with_multicast_group_v6`"
    )]
    NotMulticastV6 {
        /// The address given.
        group: Ipv6Addr,
    },
    /// A seed cannot be understood.
    #[error(
        "seed {seed:?}: {reason}; write it as `10.0.0.5`, `10.0.0.5:47806`, `[fd00::5]:47806` or `host.name:47806` in `with_seed`"
    )]
    BadSeed {
        /// The seed as given.
        seed: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More seeds than are announced to.
    #[error(
        "{count} seeds, over the maximum of {max}; list a few stable hosts (each announces to the others it hears)",
        max = crate::builder::MAX_SEEDS
    )]
    TooManySeeds {
        /// How many were given.
        count: usize,
    },
    /// The namespace is longer than the wire format carries.
    #[error(
        "namespace of {len} bytes is longer than the {MAX_NAMESPACE}-byte maximum; use a shorter `with_namespace`"
    )]
    NamespaceTooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The announce schedule cannot be followed.
    #[error(
        "announce schedule is invalid: {reason}; fix it in `with_schedule` or use `Schedule::default()`"
    )]
    BadSchedule {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The payload cannot be announced.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// Loopback only, but same-host discovery is off: nobody could be found.
    #[error(
        "`loopback_only()` with `local_discovery(false)` can find nobody: enable `local_discovery(true)` or choose another interface"
    )]
    LoopbackWithoutLocalDiscovery,
    /// The operating system's random number generator failed.
    #[error(
        "the operating system's random number generator failed, so no random id or seed could be chosen; set an id with `with_id`"
    )]
    Random(#[source] getrandom::Error),
    /// The etcd configuration cannot work.
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdConfigError),
    /// Neither the LAN nor an external source is used: nobody could be found.
    #[error("`without_lan()` leaves no way to find anyone: add `with_etcd(..)` or keep the LAN")]
    NoSource,
    /// The secret is too short to derive a key from.
    #[error(
        "the secret is {len} bytes; use at least 16 (32 random bytes are good) in `with_secret`"
    )]
    WeakSecret {
        /// Its length in bytes.
        len: usize,
    },
}

/// A message that cannot be announced. Returned by
/// [`ChartBuilder::finish`](crate::ChartBuilder::finish) (inside
/// [`BuildError::Payload`]) and [`Chart::set_msg`](crate::Chart::set_msg),
/// which then keeps the previous message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload does not fit in one datagram.
    #[error(
        "the message makes a {size}-byte announcement, over the {MAX_DATAGRAM}-byte maximum; send less (under about 1,200 bytes avoids IP fragmentation)"
    )]
    TooLarge {
        /// Size of the announcement it makes.
        size: usize,
    },
    /// The payload could not be encoded.
    #[error("the message could not be encoded with postcard; check its `Serialize` implementation")]
    Encode(#[source] postcard::Error),
}

/// Why [`discovery::maintain`](crate::discovery::maintain) or
/// [`discovery::sniff`](crate::discovery::sniff) stopped.
///
/// Transient socket errors never end up here: they are logged with
/// `tracing` and survived. These are the errors that leave nothing to retry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// Another process holds the discovery port without `SO_REUSEPORT`.
    #[error(
        "discovery port {port} is in use by a process without SO_REUSEPORT; pick another with `with_discovery_port`"
    )]
    PortInUse {
        /// The discovery port.
        port: u16,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// The reply port chosen with `with_reply_port` is taken on one of the
    /// interfaces.
    #[error(
        "reply port {port} is in use on one of the chosen interfaces (another instance on this host?); give each instance its own port with `with_reply_port`, or leave it out to let cohort choose"
    )]
    ReplyPortInUse {
        /// The port.
        port: u16,
        /// The bind error.
        #[source]
        source: io::Error,
    },
    /// A socket could not be created or configured.
    #[error("could not set up the {what} socket: {source}")]
    Socket {
        /// Which socket and step.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `maintain` or `sniff` is already running for this chart.
    #[error(
        "discovery is already running for this chart; run one `spawn` (or `maintain`) per chart and clone the chart to share it"
    )]
    AlreadyRunning,
    /// The operating system's random number generator failed.
    #[error(
        "the operating system's random number generator failed; discovery needs it for its address-validation cookies"
    )]
    Random(#[source] getrandom::Error),
    /// `discovery::spawn` was called outside a tokio runtime.
    #[error(
        "discovery::spawn needs a tokio runtime; call it from async code (for example inside #[tokio::main]) or inside `Runtime::enter()`"
    )]
    NoRuntime,
    /// The protocol refused the configuration (only possible for settings
    /// the builder does not check, which would be a bug).
    #[error("the discovery protocol refused its configuration: {0}")]
    Config(#[source] crate::protocol::ConfigError),
    /// The discovery task was cancelled (its runtime shut down) or panicked.
    #[error(
        "the discovery task {}; discovery has stopped",
        if *panicked { "panicked (a bug in cohort: please report it)" } else { "was cancelled, most likely because its runtime shut down" }
    )]
    Stopped {
        /// Whether it panicked (rather than being cancelled).
        panicked: bool,
    },
}
