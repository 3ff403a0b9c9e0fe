//! Building a [`Chart`].
//!
//! **Owns:** every choice a user makes before discovery starts, and the
//! checks on them. **Must not touch:** sockets (nothing is opened until
//! [`discovery::spawn`](crate::discovery::spawn) runs).
//!
//! The builder is typed by two states: whether an id was chosen and what the
//! instances carry. Forgetting the id, choosing a payload twice, or asking for
//! `addr_vec` on a chart of custom messages does not compile; everything the
//! types cannot catch is a [`BuildError`] from [`ChartBuilder::finish`].
//!
//! ```compile_fail
//! // No id chosen: `finish` does not exist yet.
//! let chart = cohort::ChartBuilder::new().with_service_port(8042).finish();
//! ```
//!
//! ```compile_fail
//! // A payload can be chosen only once.
//! let b = cohort::ChartBuilder::new().with_id(1).with_service_port(1).with_service_port(2);
//! ```

use std::net::{IpAddr, Ipv4Addr};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::chart::{Chart, Message, Ports, Settings, encode_payload};
use crate::error::BuildError;
use crate::protocol::{Limits, Schedule};
use crate::wire::seal::{Key, KeyRing, MIN_SECRET};
use crate::wire::{Id, MAX_NAMESPACE};

mod network;

pub use network::{DEFAULT_GROUP_V6, Interface, MAX_SEEDS};
pub(crate) use network::{NetOptions, Seed, parse_seed};

/// The default discovery port. Not a well-known service port; it is in the
/// IANA registered range and unassigned.
pub const DEFAULT_PORT: u16 = 47806;

/// The default multicast group: administratively scoped (RFC 2365,
/// 239.255.0.0/16), so routers keep it inside the site, and distinct from
/// mDNS (224.0.0.251).
pub const DEFAULT_GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 47, 86);

/// The default application namespace. Set your own with
/// [`ChartBuilder::with_namespace`] so other applications never see yours.
pub const DEFAULT_NAMESPACE: &str = "cohort";

/// Builder state: no id chosen yet.
#[derive(Debug, Clone, Copy)]
pub struct NoId;

/// Builder state: the id is chosen.
#[derive(Debug, Clone, Copy)]
pub struct WithId(Option<Id>);

/// Builder state: no payload chosen yet.
#[derive(Debug, Clone, Copy)]
pub struct NoPayload;

/// Configures and creates a [`Chart`].
///
/// ```
/// use cohort::ChartBuilder;
/// let chart = ChartBuilder::new()
///     .with_id(7)
///     .with_service_port(8042)
///     .with_namespace("my-app")
///     .local_discovery(true)
///     .finish()?;
/// assert_eq!(chart.our_id(), 7);
/// # Ok::<(), cohort::BuildError>(())
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `finish` is called"]
pub struct ChartBuilder<I = NoId, P = NoPayload> {
    id: I,
    payload: P,
    options: Options,
}

#[derive(Clone)]
struct Options {
    port: u16,
    group: Ipv4Addr,
    namespace: String,
    net: NetOptions,
    local_discovery: bool,
    multicast_ttl: u32,
    schedule: Schedule,
    secret: Option<(Vec<u8>, Option<Vec<u8>>)>,
    limits: Limits,
    lan: bool,
    advertise: Vec<IpAddr>,
    #[cfg(feature = "etcd")]
    etcd: Option<crate::etcd::EtcdConfig>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("port", &self.port)
            .field("group", &self.group)
            .field("namespace", &self.namespace)
            .field("net", &self.net)
            .field("local_discovery", &self.local_discovery)
            .field("multicast_ttl", &self.multicast_ttl)
            .field("schedule", &self.schedule)
            .field("secret", &self.secret.as_ref().map(|_| "<secret>"))
            .field("limits", &self.limits)
            .field("lan", &self.lan)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl Default for ChartBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChartBuilder {
    /// A builder with the defaults: port [`DEFAULT_PORT`], groups
    /// [`DEFAULT_GROUP`] and [`DEFAULT_GROUP_V6`], namespace
    /// [`DEFAULT_NAMESPACE`], every usable interface with IPv4 and IPv6,
    /// subnet broadcast while multicast is not heard, the discovery port as
    /// reply port when free, no same-host discovery, multicast TTL 1 (one
    /// subnet), [`Schedule::default`].
    pub fn new() -> Self {
        ChartBuilder {
            id: NoId,
            payload: NoPayload,
            options: Options {
                port: DEFAULT_PORT,
                group: DEFAULT_GROUP,
                namespace: DEFAULT_NAMESPACE.to_owned(),
                net: NetOptions::default(),
                local_discovery: false,
                multicast_ttl: 1,
                schedule: Schedule::default(),
                secret: None,
                limits: Limits::default(),
                lan: true,
                advertise: Vec::new(),
                #[cfg(feature = "etcd")]
                etcd: None,
            },
        }
    }
}

impl<P> ChartBuilder<NoId, P> {
    /// Uses `id` as this instance's id. Ids must be unique in a namespace.
    pub fn with_id(self, id: Id) -> ChartBuilder<WithId, P> {
        ChartBuilder {
            id: WithId(Some(id)),
            payload: self.payload,
            options: self.options,
        }
    }

    /// Picks a random id from the operating system's generator at `finish`.
    pub fn with_random_id(self) -> ChartBuilder<WithId, P> {
        ChartBuilder {
            id: WithId(None),
            payload: self.payload,
            options: self.options,
        }
    }
}

impl<I> ChartBuilder<I, NoPayload> {
    /// Each instance carries one service port: use
    /// [`Chart::addr_vec`](crate::Chart::addr_vec).
    pub fn with_service_port(self, port: u16) -> ChartBuilder<I, u16> {
        self.custom_msg(port)
    }

    /// Each instance carries `N` service ports: use
    /// [`Chart::addr_lists_vec`](crate::Chart::addr_lists_vec) and
    /// [`Chart::nth_addr_vec`](crate::Chart::nth_addr_vec).
    pub fn with_service_ports<const N: usize>(self, ports: [u16; N]) -> ChartBuilder<I, Ports<N>> {
        self.custom_msg(Ports(ports))
    }

    /// Each instance carries a message of your own type, encoded with
    /// postcard: read them with [`Chart::get_msg`](crate::Chart::get_msg) and
    /// [`Chart::entries`](crate::Chart::entries).
    ///
    /// ```
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Node { role: String, port: u16 }
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .custom_msg(Node { role: "worker".into(), port: 9000 })
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    pub fn custom_msg<M: Message>(self, msg: M) -> ChartBuilder<I, M> {
        ChartBuilder {
            id: self.id,
            payload: msg,
            options: self.options,
        }
    }
}

impl<I, P> ChartBuilder<I, P> {
    /// The UDP port announcements go to. Every instance of a cohort must use
    /// the same one. Default [`DEFAULT_PORT`].
    pub fn with_discovery_port(mut self, port: u16) -> Self {
        self.options.port = port;
        self
    }

    /// The IPv4 multicast group. Default [`DEFAULT_GROUP`].
    pub fn with_multicast_group(mut self, group: Ipv4Addr) -> Self {
        self.options.group = group;
        self
    }

    /// The application namespace (at most 64 bytes): instances only see
    /// instances with the same namespace. Default [`DEFAULT_NAMESPACE`].
    pub fn with_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.options.namespace = namespace.into();
        self
    }

    /// Whether instances on this host find each other (multicast loopback).
    /// Default `false`, as in instance-chart.
    pub fn local_discovery(mut self, on: bool) -> Self {
        self.options.local_discovery = on;
        self
    }

    /// Multicast TTL: how many routers announcements may cross. Default 1
    /// (this subnet only).
    pub fn with_multicast_ttl(mut self, ttl: u32) -> Self {
        self.options.multicast_ttl = ttl;
        self
    }

    /// The announce schedule. Default [`Schedule::default`].
    pub fn with_schedule(mut self, schedule: Schedule) -> Self {
        self.options.schedule = schedule;
        self
    }

    /// Seals every packet with a key derived from `secret` (at least 16
    /// bytes; 32 random bytes are good): XChaCha20-Poly1305, the header
    /// authenticated too. Instances with another secret, or none, never see
    /// each other; payloads, ports and process tags are unreadable to
    /// outsiders; forged, altered and replayed packets are dropped and
    /// counted. Every instance of the cohort needs the same secret, and
    /// clocks that agree within [`REPLAY_WINDOW`](crate::protocol::REPLAY_WINDOW).
    ///
    /// ```
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .with_service_port(8042)
    ///     .with_secret(b"32 random bytes from a secret store")
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    pub fn with_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.options.secret = Some((secret.as_ref().to_vec(), None));
        self
    }

    /// Like [`with_secret`](Self::with_secret), and also accepts packets
    /// sealed with `next`: the middle step of a key rotation (see
    /// [`Chart::set_secret`](crate::Chart::set_secret), which rotates a
    /// running chart).
    pub fn with_secrets(mut self, current: impl AsRef<[u8]>, next: impl AsRef<[u8]>) -> Self {
        self.options.secret = Some((current.as_ref().to_vec(), Some(next.as_ref().to_vec())));
        self
    }

    /// Also learns (and publishes) the chart through an etcd cluster: this
    /// instance registers under `<prefix>/<namespace>/<id>` with a lease of
    /// the chart's TTL, and every instance registered there joins the chart
    /// as if heard on the LAN. An instance heard both ways is one entry
    /// ([`Entry::learned`](crate::Entry::learned) says how). Add
    /// [`without_lan`](Self::without_lan) for etcd alone. See the README's
    /// etcd section for when to use which.
    ///
    /// ```no_run
    /// use cohort::etcd::EtcdConfig;
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .with_service_port(8042)
    ///     .with_etcd(EtcdConfig::new(["http://10.0.0.5:2379", "http://10.0.0.6:2379"]))
    ///     .without_lan()
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    #[cfg(feature = "etcd")]
    pub fn with_etcd(mut self, config: crate::etcd::EtcdConfig) -> Self {
        self.options.etcd = Some(config);
        self
    }

    /// Does not use the LAN (no multicast sockets, nothing sent or heard
    /// there): for a chart that comes from etcd alone.
    pub fn without_lan(mut self) -> Self {
        self.options.lan = false;
        self
    }

    /// An address this instance publishes to external sources (etcd), so
    /// that instances on other networks reach it there. Repeatable. Without
    /// it, the addresses of the chosen interfaces, or the address the kernel
    /// uses toward the group (or toward the first etcd endpoint) are
    /// published.
    pub fn with_advertised_addr(mut self, ip: IpAddr) -> Self {
        if !self.options.advertise.contains(&ip) {
            self.options.advertise.push(ip);
        }
        self
    }

    /// Bounds on what other senders can make this instance hold or send.
    /// The defaults fit any real LAN. Default [`Limits::default`].
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.options.limits = limits;
        self
    }
}

impl<P: Message> ChartBuilder<WithId, P> {
    /// Checks the configuration and creates the chart. Nothing is opened or
    /// sent until [`discovery::spawn`](crate::discovery::spawn) runs.
    ///
    /// # Errors
    /// A [`BuildError`] that names the setting to change.
    pub fn finish(self) -> Result<Chart<P>, BuildError> {
        let o = self.options;
        if o.port == 0 {
            return Err(BuildError::ZeroDiscoveryPort);
        }
        if !o.group.is_multicast() {
            return Err(BuildError::NotMulticast { group: o.group });
        }
        if o.namespace.len() > MAX_NAMESPACE {
            return Err(BuildError::NamespaceTooLong {
                len: o.namespace.len(),
            });
        }
        o.schedule
            .validate()
            .map_err(|reason| BuildError::BadSchedule { reason })?;
        if o.net.select.is_loopback_only() && !o.local_discovery && o.lan {
            return Err(BuildError::LoopbackWithoutLocalDiscovery);
        }
        o.net.validate()?;
        #[cfg(feature = "etcd")]
        if let Some(etcd) = &o.etcd {
            etcd.validate().map_err(BuildError::Etcd)?;
        }
        #[cfg(feature = "etcd")]
        let has_etcd = o.etcd.is_some();
        #[cfg(not(feature = "etcd"))]
        let has_etcd = false;
        if !o.lan && !has_etcd {
            return Err(BuildError::NoSource);
        }
        let payload = encode_payload(&o.namespace, &self.payload)?;
        let keys = match &o.secret {
            Some((current, next)) => Some(key_ring(current, next.as_deref())?),
            None => None,
        };
        let id = match self.id.0 {
            Some(id) => id,
            None => getrandom::u64().map_err(BuildError::Random)?,
        };
        let seed = getrandom::u64().map_err(BuildError::Random)?;
        // Microseconds since the epoch: a restart gets a larger incarnation
        // unless the clock went backwards by more than the process's lifetime.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let settings = Settings {
            id,
            incarnation,
            namespace: o.namespace,
            group: o.group,
            port: o.port,
            net: o.net,
            local_discovery: o.local_discovery,
            multicast_ttl: o.multicast_ttl,
            schedule: o.schedule,
            seed,
            limits: o.limits,
            lan: o.lan,
            advertise: o.advertise,
            #[cfg(feature = "etcd")]
            etcd: o.etcd,
        };
        Ok(Chart::new(settings, self.payload, payload, keys))
    }
}

/// The keys for a secret (and the next one of a rotation).
pub(crate) fn key_ring(current: &[u8], next: Option<&[u8]>) -> Result<KeyRing, BuildError> {
    for secret in std::iter::once(current).chain(next) {
        if secret.len() < MIN_SECRET {
            return Err(BuildError::WeakSecret { len: secret.len() });
        }
    }
    let ring = KeyRing::new(Key::derive(current));
    Ok(match next {
        Some(next) => ring.with_next(Key::derive(next)),
        None => ring,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn every_unworkable_setting_is_a_build_error_that_names_the_fix() {
        let b = || ChartBuilder::new().with_id(1).with_service_port(1);
        let cases: Vec<(BuildError, &str)> = vec![
            (
                b().with_discovery_port(0).finish().unwrap_err(),
                "with_discovery_port",
            ),
            (
                b().with_multicast_group(Ipv4Addr::new(10, 0, 0, 1))
                    .finish()
                    .unwrap_err(),
                "with_multicast_group",
            ),
            (
                b().with_namespace("x".repeat(65)).finish().unwrap_err(),
                "with_namespace",
            ),
            (
                b().with_schedule(Schedule {
                    first_interval: Duration::from_secs(2),
                    max_interval: Duration::from_secs(1),
                    ..Schedule::default()
                })
                .finish()
                .unwrap_err(),
                "with_schedule",
            ),
            (
                b().loopback_only().finish().unwrap_err(),
                "local_discovery(true)",
            ),
            (
                ChartBuilder::new()
                    .with_id(1)
                    .custom_msg(vec![0u8; crate::wire::MAX_DATAGRAM])
                    .finish()
                    .unwrap_err(),
                "send less",
            ),
        ];
        for (error, fix) in cases {
            assert!(
                error.to_string().contains(fix),
                "{error} should mention {fix}"
            );
        }
    }

    #[test]
    fn a_random_id_differs_between_charts() {
        let a = ChartBuilder::new()
            .with_random_id()
            .with_service_port(1)
            .finish()
            .unwrap();
        let b = ChartBuilder::new()
            .with_random_id()
            .with_service_port(1)
            .finish()
            .unwrap();
        assert_ne!(a.our_id(), b.our_id());
    }
}
