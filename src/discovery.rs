//! Running discovery, and waiting for it.
//!
//! **Owns:** the public entry points ([`spawn`], [`spawn_sniffer`], and the
//! instance-chart-shaped [`maintain`] and [`sniff`]), the [`Discovery`]
//! handle, and the waiting helpers. **Must not touch:** anything but the
//! chart handle; the work happens in the crate's private `net` module.
//!
//! [`spawn`] is the form that cannot lose errors: it opens the sockets before
//! it returns, so a set-up error is a `Result` you have to look at, and it
//! hands back a handle that says goodbye and stops discovery when dropped.
//! Problems that a retry can fix (no network yet) do not fail it: they show
//! in [`Chart::status`] while discovery keeps trying.

use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::chart::{Chart, Message};
use crate::error::DiscoveryError;
use crate::net::Driver;
use crate::protocol::Mode;
use crate::status::Status;

/// Announces this instance and listens for others, keeping `chart` current,
/// on a task of the current tokio runtime.
///
/// The sockets are open when this returns, so a set-up error (the port held
/// by another program, discovery already running for this chart, no tokio
/// runtime) is returned here and cannot be lost. Everything else is retried
/// in the background and reported by [`Chart::status`].
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use cohort::{ChartBuilder, discovery};
/// let chart = ChartBuilder::new()
///     .with_random_id()
///     .with_service_port(8042)
///     .local_discovery(true)
///     .finish()?;
/// let discovery = discovery::spawn(&chart)?;
/// discovery::found_everyone(&chart, 3).await;
/// for (id, addr) in chart.addr_vec() {
///     println!("{id} at {addr}");
/// }
/// discovery.shutdown().await?; // says goodbye; so does dropping it
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`DiscoveryError`] when the sockets cannot be set up, discovery already
/// runs for this chart, or there is no tokio runtime.
pub fn spawn<M: Message>(chart: &Chart<M>) -> Result<Discovery, DiscoveryError> {
    spawn_mode(chart, Mode::Announce)
}

/// Listens only: fills `chart` without announcing this instance, which
/// therefore never appears in anyone's chart. It asks the group to announce
/// at start, so the chart fills in about one round trip. Otherwise as
/// [`spawn`].
///
/// # Errors
/// As for [`spawn`].
pub fn spawn_sniffer<M: Message>(chart: &Chart<M>) -> Result<Discovery, DiscoveryError> {
    spawn_mode(chart, Mode::Sniff)
}

fn spawn_mode<M: Message>(chart: &Chart<M>, mode: Mode) -> Result<Discovery, DiscoveryError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
    let driver = {
        // Sockets register with the reactor of the runtime they run on.
        let _entered = runtime.enter();
        Driver::open(chart.clone(), mode)?
    };
    let run = driver.run_id();
    Ok(Discovery {
        task: Some(runtime.spawn(driver.run())),
        chart: Arc::new(chart.clone()),
        run,
    })
}

/// Announces this instance and listens for others until
/// [`Chart::shutdown`] is called (then it says goodbye and returns
/// `Ok(())`). Dropping the future says goodbye too.
///
/// This is instance-chart's shape, kept so its users can switch by renaming
/// the crate. Prefer [`spawn`]: `tokio::spawn(maintain(..))` drops the
/// `Result`, and with it any set-up error.
///
/// # Errors
/// As for [`spawn`], except that the runtime is the caller's.
pub async fn maintain<M: Message>(chart: Chart<M>) -> Result<(), DiscoveryError> {
    Driver::open(chart, Mode::Announce)?.run().await
}

/// Listens only, like [`spawn_sniffer`], until [`Chart::shutdown`].
///
/// # Errors
/// As for [`maintain`].
pub async fn sniff<M: Message>(chart: Chart<M>) -> Result<(), DiscoveryError> {
    Driver::open(chart, Mode::Sniff)?.run().await
}

/// Waits until `full_size` instances, this one included, have been in the
/// chart at the same time since the call. (A peer that joined and left again
/// in between still counts: it was found.)
pub async fn found_everyone<M: Message>(chart: &Chart<M>, full_size: u16) {
    chart.wait_for_size(usize::from(full_size)).await;
}

/// Waits until more than half of `full_size` instances, this one included,
/// have been in the chart at the same time since the call: `full_size / 2 +
/// 1` of them (3 of 4, 3 of 5).
pub async fn found_majority<M: Message>(chart: &Chart<M>, full_size: u16) {
    chart.wait_for_size(usize::from(full_size) / 2 + 1).await;
}

/// Running discovery, from [`spawn`]. Dropping it says goodbye and stops
/// discovery (in the background; await [`Discovery::shutdown`] to know when
/// it is done).
#[derive(Debug)]
#[must_use = "dropping the handle stops discovery at once"]
pub struct Discovery {
    task: Option<JoinHandle<Result<(), DiscoveryError>>>,
    chart: Arc<dyn RunningChart>,
    /// The run this handle started; it never stops a later one.
    run: u64,
}

impl Discovery {
    /// Says goodbye to the peers, stops, and returns how discovery ended.
    ///
    /// # Errors
    /// [`DiscoveryError::Stopped`] if the task was cancelled or panicked.
    pub async fn shutdown(mut self) -> Result<(), DiscoveryError> {
        self.chart.shutdown(self.run);
        let task = self.task.take().expect("taken only here and in drop");
        task.await.map_err(|e| DiscoveryError::Stopped {
            panicked: e.is_panic(),
        })?
    }

    /// Whether discovery is running, and what stands in its way if
    /// anything; the same as [`Chart::status`].
    pub fn status(&self) -> Status {
        self.chart.status()
    }

    /// Whether the discovery task has ended.
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Discovery {
    fn drop(&mut self) {
        if self.task.is_some() {
            // The task says goodbye and ends on its own; if the runtime is
            // going away instead, the driver's destructor says goodbye.
            self.chart.shutdown(self.run);
        }
    }
}

/// What the handle needs of the chart, without its message type.
trait RunningChart: Send + Sync + std::fmt::Debug {
    fn shutdown(&self, run: u64);
    fn status(&self) -> Status;
}

impl<M: Message> RunningChart for Chart<M> {
    fn shutdown(&self, run: u64) {
        self.shutdown_run(Some(run));
    }
    fn status(&self) -> Status {
        Chart::status(self)
    }
}
