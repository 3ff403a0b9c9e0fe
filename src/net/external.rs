//! The driver's link to membership sources beside the LAN (etcd).
//!
//! **Owns:** the running source task of a chart (with the `etcd` feature),
//! the channel of this instance's record it reads, and the channel of
//! events it reports. **Must not touch:** the protocol or the chart; the
//! driver takes events from here and hands them on. Without the feature (or
//! without `with_etcd`) there is no source and [`External::next`] never
//! returns.

use crate::source::{Record, SourceEvent};

#[cfg(feature = "etcd")]
struct Link {
    task: Option<crate::etcd::EtcdTask>,
    ours: tokio::sync::watch::Sender<Option<Record>>,
    events: tokio::sync::mpsc::Receiver<SourceEvent>,
}

/// The external sources of one chart's discovery run.
pub(crate) struct External {
    #[cfg(feature = "etcd")]
    link: Option<Link>,
}

/// Events a source may report before the driver reads them.
#[cfg(feature = "etcd")]
const EVENTS: usize = 1024;

impl External {
    /// Starts the chart's sources (none without `with_etcd`). `ours` is this
    /// instance's record, `None` for a listener that never registers.
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))]
    pub(crate) fn start(settings: &crate::chart::Settings, ours: Option<Record>) -> External {
        #[cfg(feature = "etcd")]
        {
            let link = settings.etcd.clone().map(|config| {
                let (ours_tx, ours_rx) = tokio::sync::watch::channel(ours);
                let (events_tx, events) = tokio::sync::mpsc::channel(EVENTS);
                let task = crate::etcd::spawn(
                    config,
                    settings.namespace.clone(),
                    settings.schedule.ttl,
                    ours_rx,
                    events_tx,
                );
                Link {
                    task: Some(task),
                    ours: ours_tx,
                    events,
                }
            });
            External { link }
        }
        #[cfg(not(feature = "etcd"))]
        External {}
    }

    /// Whether any source runs.
    pub(crate) fn any(&self) -> bool {
        #[cfg(feature = "etcd")]
        return self.link.is_some();
        #[cfg(not(feature = "etcd"))]
        false
    }

    /// The next event of any source; never returns when there is none.
    pub(crate) async fn next(&mut self) -> SourceEvent {
        #[cfg(feature = "etcd")]
        if let Some(link) = &mut self.link
            && let Some(event) = link.events.recv().await
        {
            return event;
        }
        std::future::pending().await
    }

    /// Publishes this instance's record anew (its payload changed).
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))]
    pub(crate) fn publish(&self, ours: Option<Record>) {
        #[cfg(feature = "etcd")]
        if let Some(link) = &self.link {
            link.ours.send_replace(ours);
        }
    }

    /// Leaves every source gracefully and waits until done (bounded by the
    /// sources' own timeouts).
    pub(crate) async fn shutdown(&mut self) {
        #[cfg(feature = "etcd")]
        if let Some(task) = self.link.as_mut().and_then(|link| link.task.take()) {
            task.shutdown().await;
        }
    }
}
