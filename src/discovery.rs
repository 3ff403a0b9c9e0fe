//! Running discovery, and waiting for it.
//!
//! **Owns:** the public entry points [`maintain`] and [`sniff`] and the
//! waiting helpers. **Must not touch:** anything but the chart handle; the
//! work happens in the crate's private `net` module.

use crate::chart::{Chart, Message};
use crate::error::DiscoveryError;
use crate::protocol::Mode;

/// Announces this instance and listens for others, keeping `chart` current.
///
/// Runs until [`Chart::shutdown`] is called (then it says goodbye and
/// returns `Ok(())`) or an unrecoverable error occurs. Dropping the future
/// also says goodbye. Spawn it:
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cohort::{ChartBuilder, discovery};
/// let chart = ChartBuilder::new()
///     .with_random_id()
///     .with_service_port(8042)
///     .local_discovery(true)
///     .finish()?;
/// let task = tokio::spawn(discovery::maintain(chart.clone()));
/// discovery::found_everyone(&chart, 3).await;
/// for (id, addr) in chart.addr_vec() {
///     println!("{id} at {addr}");
/// }
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`DiscoveryError`] when the sockets cannot be set up, or when discovery
/// already runs for this chart.
pub async fn maintain<M: Message>(chart: Chart<M>) -> Result<(), DiscoveryError> {
    crate::net::run(chart, Mode::Announce).await
}

/// Listens only: fills `chart` without announcing this instance, which
/// therefore never appears in anyone's chart. It asks the group to announce
/// at start, so the chart fills in about one round trip.
///
/// # Errors
/// As for [`maintain`].
pub async fn sniff<M: Message>(chart: Chart<M>) -> Result<(), DiscoveryError> {
    crate::net::run(chart, Mode::Sniff).await
}

/// Waits until `full_size` instances, this one included, are in the chart.
pub async fn found_everyone<M: Message>(chart: &Chart<M>, full_size: usize) {
    chart.wait_for_size(full_size).await;
}

/// Waits until more than half of `full_size` instances, this one included,
/// are in the chart.
pub async fn found_majority<M: Message>(chart: &Chart<M>, full_size: usize) {
    chart.wait_for_size(full_size / 2 + 1).await;
}
