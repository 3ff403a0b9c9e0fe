//! The network half of the builder: interfaces, address families, the
//! reply port, seeds and broadcast.
//!
//! **Owns:** these choices and their checks. **Must not touch:** sockets or
//! the interface scan: the LAN path (`net::lan`) applies the choices when
//! discovery starts and again whenever the interfaces change.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use super::ChartBuilder;
use crate::error::BuildError;
use crate::net::interfaces::InterfaceInfo;

/// The default IPv6 multicast group: link-local scope (`ff02::/16`, never
/// routed), in the range for dynamically allocated groups, and cohort's own.
pub const DEFAULT_GROUP_V6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0xc0, 0x4786);

pub use crate::protocol::MAX_SEEDS;

/// An interface, named the way you know it: by name (`"eth0"`), index
/// (`3`) or one of its addresses (`Ipv4Addr::new(10, 0, 0, 5)`).
///
/// ```
/// use cohort::Interface;
/// use std::net::Ipv4Addr;
/// let by_name: Interface = "eth0".into();
/// let by_index: Interface = 3.into();
/// let by_addr: Interface = Ipv4Addr::new(10, 0, 0, 5).into();
/// assert_eq!(by_name, Interface::Name("eth0".into()));
/// # let _ = (by_index, by_addr);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interface {
    /// Its name, as `ip link` shows it.
    Name(String),
    /// Its index (what an IPv6 scope id names).
    Index(u32),
    /// One of its addresses.
    Addr(IpAddr),
}

impl From<&str> for Interface {
    fn from(name: &str) -> Self {
        Interface::Name(name.to_owned())
    }
}

impl From<String> for Interface {
    fn from(name: String) -> Self {
        Interface::Name(name)
    }
}

impl From<u32> for Interface {
    fn from(index: u32) -> Self {
        Interface::Index(index)
    }
}

impl From<IpAddr> for Interface {
    fn from(ip: IpAddr) -> Self {
        Interface::Addr(ip)
    }
}

impl From<Ipv4Addr> for Interface {
    fn from(ip: Ipv4Addr) -> Self {
        Interface::Addr(ip.into())
    }
}

impl From<Ipv6Addr> for Interface {
    fn from(ip: Ipv6Addr) -> Self {
        Interface::Addr(ip.into())
    }
}

impl Interface {
    pub(crate) fn matches(&self, info: &InterfaceInfo) -> bool {
        match self {
            Interface::Name(name) => &info.name == name,
            Interface::Index(index) => info.index == *index,
            Interface::Addr(ip) => info.addrs.iter().any(|a| a.ip == *ip),
        }
    }
}

/// A predicate choosing interfaces.
pub(crate) type Filter = Arc<dyn Fn(&InterfaceInfo) -> bool + Send + Sync>;

/// Which interfaces the LAN path uses.
#[derive(Clone, Default)]
pub(crate) struct Selection {
    /// Only these (empty: every usable interface).
    pub(crate) include: Vec<Interface>,
    /// Never these.
    pub(crate) exclude: Vec<Interface>,
    /// Of the usable interfaces, those it accepts.
    pub(crate) filter: Option<Filter>,
}

impl Selection {
    pub(crate) fn is_loopback_only(&self) -> bool {
        self.include == [Interface::Addr(Ipv4Addr::LOCALHOST.into())]
    }
}

impl fmt::Debug for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selection")
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("filter", &self.filter.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

/// The network options, as the builder collects them and the LAN path
/// reads them.
#[derive(Debug, Clone)]
pub(crate) struct NetOptions {
    pub(crate) group_v6: Ipv6Addr,
    pub(crate) select: Selection,
    pub(crate) ipv4: bool,
    pub(crate) ipv6: bool,
    pub(crate) reply_port: Option<u16>,
    /// As given: `ip`, `ip:port`, `host` or `host:port`.
    pub(crate) seeds: Vec<String>,
    pub(crate) broadcast: bool,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            group_v6: DEFAULT_GROUP_V6,
            select: Selection::default(),
            ipv4: true,
            ipv6: true,
            reply_port: None,
            seeds: Vec::new(),
            broadcast: true,
        }
    }
}

impl NetOptions {
    pub(crate) fn validate(&self) -> Result<(), BuildError> {
        if !self.group_v6.is_multicast() {
            return Err(BuildError::NotMulticastV6 {
                group: self.group_v6,
            });
        }
        if self.seeds.len() > MAX_SEEDS {
            return Err(BuildError::TooManySeeds {
                count: self.seeds.len(),
            });
        }
        for seed in &self.seeds {
            parse_seed(seed, 1).map_err(|reason| BuildError::BadSeed {
                seed: seed.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// A seed, parsed: an address, or a name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seed {
    /// An address (with its scope, for a link-local IPv6 one).
    Addr(SocketAddr),
    /// A host name and the port, resolved every so often.
    Name(String, u16),
}

/// Parses a seed as given: `ip`, `ip:port`, `[v6]:port`, `[v6%scope]:port`,
/// `host`, `host:port`; without a port, the discovery port.
pub(crate) fn parse_seed(seed: &str, discovery_port: u16) -> Result<Seed, &'static str> {
    const BAD_PORT: &str = "the port is not a number from 1 to 65535";
    if let Ok(addr) = seed.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(BAD_PORT)
        } else {
            Ok(Seed::Addr(addr))
        };
    }
    if let Ok(ip) = seed.parse::<IpAddr>() {
        return Ok(Seed::Addr(SocketAddr::new(ip, discovery_port)));
    }
    let (host, port) = match seed.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| BAD_PORT)?),
        None => (seed, discovery_port),
    };
    if port == 0 {
        return Err(BAD_PORT);
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_';
    if host.is_empty() || host.len() > 253 || !host.chars().all(valid) {
        return Err("expected an address or a host name, optionally with :port");
    }
    Ok(Seed::Name(host.to_owned(), port))
}

impl<I, P> ChartBuilder<I, P> {
    /// Uses this interface, by name, index or address; repeatable. Only the
    /// interfaces chosen this way are used (without any, every usable one
    /// is: up, running, multicast-capable, not loopback).
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .with_service_port(8042)
    ///     .with_interface("eth1")
    ///     .with_interface(Ipv4Addr::new(10, 0, 0, 5))
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    pub fn with_interface(mut self, interface: impl Into<Interface>) -> Self {
        let interface = interface.into();
        if !self.options.net.select.include.contains(&interface) {
            self.options.net.select.include.push(interface);
        }
        self
    }

    /// Never uses this interface (say, `"docker0"`); repeatable.
    pub fn without_interface(mut self, interface: impl Into<Interface>) -> Self {
        let interface = interface.into();
        if !self.options.net.select.exclude.contains(&interface) {
            self.options.net.select.exclude.push(interface);
        }
        self
    }

    /// Of the usable interfaces, uses those `filter` accepts. Asked again
    /// whenever the interfaces change.
    ///
    /// ```
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .with_service_port(8042)
    ///     .with_interface_filter(|i| !i.name.starts_with("veth") && !i.flags.point_to_point)
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    pub fn with_interface_filter(
        mut self,
        filter: impl Fn(&InterfaceInfo) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.options.net.select.filter = Some(Arc::new(filter));
        self
    }

    /// Uses the loopback interface only: only instances on this host are
    /// found. Needs [`local_discovery(true)`](Self::local_discovery).
    pub fn loopback_only(mut self) -> Self {
        self.options.net.select.include = vec![Interface::Addr(Ipv4Addr::LOCALHOST.into())];
        self.options.net.ipv6 = false;
        self
    }

    /// IPv4 only (no IPv6 sockets).
    pub fn ipv4_only(mut self) -> Self {
        self.options.net.ipv4 = true;
        self.options.net.ipv6 = false;
        self
    }

    /// IPv6 only (no IPv4 sockets, no broadcast).
    pub fn ipv6_only(mut self) -> Self {
        self.options.net.ipv4 = false;
        self.options.net.ipv6 = true;
        self
    }

    /// The IPv6 multicast group, joined on each interface's link. Default
    /// [`DEFAULT_GROUP_V6`].
    pub fn with_multicast_group_v6(mut self, group: Ipv6Addr) -> Self {
        self.options.net.group_v6 = group;
        self
    }

    /// The port this instance receives replies and probes on, on every
    /// interface. Default: the discovery port if no other instance on this
    /// host holds it, else a port the kernel picks. With the default and one
    /// instance per host, one firewall rule (the discovery port, UDP)
    /// admits everything cohort receives; with several instances per host,
    /// give each a port of a range you open. `finish` accepts any port;
    /// discovery fails to start with
    /// [`DiscoveryError::ReplyPortInUse`](crate::DiscoveryError::ReplyPortInUse)
    /// if it is taken.
    pub fn with_reply_port(mut self, port: u16) -> Self {
        self.options.net.reply_port = Some(port);
        self
    }

    /// Announces to (and probes) this peer directly, for networks that
    /// drop multicast and broadcast; repeatable, at most [`MAX_SEEDS`].
    /// `"10.0.0.5"`, `"10.0.0.5:47806"`, `"[fe80::1%2]:47806"`,
    /// `"node-1.internal"` or `"node-1.internal:47806"`; without a port,
    /// the discovery port. Names are resolved again every 30 seconds. A seed
    /// reaches the instance that holds the discovery port on its host (the
    /// first one, by default).
    ///
    /// ```
    /// let chart = cohort::ChartBuilder::new()
    ///     .with_random_id()
    ///     .with_service_port(8042)
    ///     .with_seed("10.0.0.5")
    ///     .with_seed("node-2.internal:47806")
    ///     .finish()?;
    /// # Ok::<(), cohort::BuildError>(())
    /// ```
    pub fn with_seed(mut self, seed: impl Into<String>) -> Self {
        let seed = seed.into();
        if !self.options.net.seeds.contains(&seed) {
            self.options.net.seeds.push(seed);
        }
        self
    }

    /// Never sends by IPv4 subnet broadcast. By default announcements also
    /// go to each subnet's broadcast address during the eager phase and
    /// whenever no peer has been heard by multicast for a TTL, so a network
    /// that drops multicast (Wi-Fi client isolation aside) still works.
    pub fn without_broadcast(mut self) -> Self {
        self.options.net.broadcast = false;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_with_and_without_ports_and_names() {
        let addr = |s: &str| Ok(Seed::Addr(s.parse().unwrap()));
        assert_eq!(parse_seed("10.0.0.5", 47806), addr("10.0.0.5:47806"));
        assert_eq!(parse_seed("10.0.0.5:9", 47806), addr("10.0.0.5:9"));
        assert_eq!(parse_seed("[fd00::1]:9", 47806), addr("[fd00::1]:9"));
        assert_eq!(parse_seed("fd00::1", 47806), addr("[fd00::1]:47806"));
        let scoped = parse_seed("[fe80::1%2]:9", 47806);
        assert!(
            matches!(scoped, Ok(Seed::Addr(std::net::SocketAddr::V6(a))) if a.scope_id() == 2),
            "{scoped:?}"
        );
        assert_eq!(
            parse_seed("node-1.internal", 47806),
            Ok(Seed::Name("node-1.internal".into(), 47806))
        );
        assert_eq!(
            parse_seed("node-1:1", 47806),
            Ok(Seed::Name("node-1".into(), 1))
        );
        assert!(parse_seed("10.0.0.5:0", 47806).is_err());
        assert!(parse_seed("node-1:0", 47806).is_err());
        assert!(parse_seed("node-1:99999", 47806).is_err());
        assert!(parse_seed("", 47806).is_err());
        assert!(parse_seed("a b", 47806).is_err());
    }

    #[test]
    fn interfaces_are_chosen_by_name_index_or_address() {
        let b = ChartBuilder::new()
            .with_interface("eth0")
            .with_interface(2)
            .with_interface(Ipv4Addr::new(10, 0, 0, 1))
            .with_interface("eth0")
            .without_interface("docker0");
        assert_eq!(
            b.options.net.select.include,
            vec![
                Interface::Name("eth0".into()),
                Interface::Index(2),
                Interface::Addr(Ipv4Addr::new(10, 0, 0, 1).into())
            ]
        );
        assert_eq!(
            b.options.net.select.exclude,
            vec![Interface::Name("docker0".into())]
        );
    }
}
