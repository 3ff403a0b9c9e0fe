//! Sockets and the tokio driver: the only place cohort touches the network.
//!
//! **Owns:** every socket cohort opens, their options ([`socket`]), and the
//! task that moves datagrams between the sockets and the protocol
//! ([`driver`]). **Must not touch:** discovery rules (they live in
//! [`crate::protocol`]) or the chart's map (it changes only through
//! [`Chart::apply`](crate::Chart)).
//!
//! # Two sockets per instance
//!
//! - The **group socket** is bound to the discovery port with `SO_REUSEADDR`
//!   and `SO_REUSEPORT`, so any number of instances on one host can share the
//!   port, and joins the multicast group. It only receives: the kernel hands
//!   a copy of every multicast datagram to each socket that joined.
//! - The **unicast socket** is bound to an ephemeral port of its own. It sends
//!   everything (announcements to the group, replies to peers) and receives the
//!   replies addressed to this instance. Its port travels in every packet as
//!   the reply port.
//!
//! Why not reply to the discovery port? With several instances sharing it
//! through `SO_REUSEPORT`, a *unicast* datagram to the shared port is handed
//! to just one of them, chosen by a hash of the source address, and usually
//! not the one it was meant for: instance-chart's bug. A port per instance
//! makes every reply reach its addressee.
//!
//! # Set-up errors and everything else
//!
//! [`Driver::open`] fails only on what a retry would not fix: the port is
//! held without `SO_REUSEPORT`, sockets cannot be created, or discovery
//! already runs for the chart. A group that cannot be joined (no network yet,
//! no multicast route) is retried with backoff, counted, and shown in
//! [`Chart::status`](crate::Chart::status); when the join finally succeeds
//! the protocol starts its eager phase over, so peers answer at once.

mod driver;
mod external;
mod lan;
mod socket;
mod watches;

pub(crate) use driver::Driver;
