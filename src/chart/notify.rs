//! instance-chart 0.4's `notify()`: new instances only, as tuples.
//!
//! **Owns:** [`Notify`], a thin filter over a [`Subscription`] kept so that
//! code written for instance-chart compiles unchanged. **Must not touch:**
//! anything else. New code should use [`Chart::subscribe`](crate::Chart::subscribe),
//! which also reports updates, departures and conflicts.

use std::net::{IpAddr, SocketAddr};

use super::event::{Event, Lagged, Subscription};
use super::ports::{Message, Ports};
use crate::wire::Id;

/// Instances as they join, in instance-chart 0.4's shape: `(id, ip, msg)`.
/// Created with [`Chart::notify`](crate::Chart::notify).
///
/// Only joins are reported. Updates, departures and conflicts are skipped;
/// [`Chart::subscribe`](crate::Chart::subscribe) reports them all.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cohort::{ChartBuilder, discovery};
/// let chart = ChartBuilder::new().with_id(1).with_service_port(8042).finish()?;
/// let mut new = chart.notify();
/// let _discovery = discovery::spawn(&chart)?;
/// while chart.size() < 4 {
///     let (id, addr) = new.recv_addr().await?;
///     println!("{id} serves on {addr}");
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Notify<M> {
    pub(crate) events: Subscription<M>,
}

impl<M: Message> Notify<M> {
    /// The next instance that joined: its id, address and message, the
    /// message as a one-element array as instance-chart returns it (so
    /// `msg[0]` is the service port of a one-port chart).
    ///
    /// # Errors
    /// [`Lagged`] when more than [`EVENT_CAPACITY`](crate::EVENT_CAPACITY)
    /// events arrived since the last call; the next call goes on with newer
    /// ones.
    pub async fn recv(&mut self) -> Result<(Id, IpAddr, [M; 1]), Lagged> {
        let (id, ip, msg) = self.recv_one().await?;
        Ok((id, ip, [msg]))
    }

    /// The next instance that joined: its id, address and message.
    ///
    /// # Errors
    /// [`Lagged`], as for [`Notify::recv`].
    pub async fn recv_one(&mut self) -> Result<(Id, IpAddr, M), Lagged> {
        loop {
            if let Event::Joined(entry) = self.events.recv().await? {
                return Ok((entry.id, entry.ip, entry.msg));
            }
        }
    }
}

impl Notify<u16> {
    /// The next instance that joined, with its service address.
    ///
    /// # Errors
    /// [`Lagged`], as for [`Notify::recv`].
    pub async fn recv_addr(&mut self) -> Result<(Id, SocketAddr), Lagged> {
        let (id, ip, port) = self.recv_one().await?;
        Ok((id, SocketAddr::new(ip, port)))
    }
}

impl<const N: usize> Notify<Ports<N>> {
    /// The next instance that joined, with its service addresses.
    ///
    /// # Errors
    /// [`Lagged`], as for [`Notify::recv`].
    pub async fn recv_addresses(&mut self) -> Result<(Id, [SocketAddr; N]), Lagged> {
        let (id, ip, ports) = self.recv_one().await?;
        Ok((id, ports.0.map(|port| SocketAddr::new(ip, port))))
    }

    /// The next instance that joined, with its address for port number
    /// `IDX`. An `IDX` out of range is a compile error.
    ///
    /// # Errors
    /// [`Lagged`], as for [`Notify::recv`].
    pub async fn recv_nth_addr<const IDX: usize>(&mut self) -> Result<(Id, SocketAddr), Lagged> {
        const { assert!(IDX < N, "port index out of range for this chart") };
        let (id, ip, ports) = self.recv_one().await?;
        Ok((id, SocketAddr::new(ip, ports.0[IDX])))
    }
}
