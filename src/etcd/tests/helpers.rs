//! What the etcd tests share: a source under test with its channels, and
//! waits with deadlines.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout};

use super::harness::Cluster;
use crate::etcd::{EtcdConfig, EtcdTask, spawn};
use crate::source::{Record, SourceEvent};
use crate::wire::Id;

/// Failure bound for anything that should happen within seconds.
pub(super) const BOUND: Duration = Duration::from_secs(30);

/// A record of `id` with a one-byte payload.
pub(super) fn record(id: Id, incarnation: u64, payload: u8) -> Record {
    Record {
        id,
        incarnation,
        addrs: vec!["127.0.0.1".parse().unwrap()],
        payload: vec![payload],
        process: None,
        leaving: false,
    }
}

/// The configuration tests use: every member, short timeouts.
pub(super) fn config(cluster: &Cluster) -> EtcdConfig {
    quick(EtcdConfig::new(cluster.endpoints()))
}

/// Short timeouts, so a dead member is left within a second.
pub(super) fn quick(config: EtcdConfig) -> EtcdConfig {
    config
        .with_connect_timeout(Duration::from_millis(800))
        .with_request_timeout(Duration::from_millis(800))
}

/// One source under test: its task, what it publishes, what it reported.
pub(super) struct Instance {
    pub(super) ours: watch::Sender<Option<Record>>,
    pub(super) events: mpsc::Receiver<SourceEvent>,
    pub(super) task: Option<EtcdTask>,
    /// Every event received so far, in order.
    pub(super) seen: Vec<SourceEvent>,
    /// Events received but not yet matched by a wait, with when they came.
    backlog: VecDeque<(SourceEvent, Instant)>,
    name: String,
}

/// Starts a source: registered with `record`, or listening only.
pub(super) fn start(
    config: EtcdConfig,
    namespace: &str,
    ttl: Duration,
    record: Option<Record>,
) -> Instance {
    // `RUST_LOG=cohort=debug` shows what the sources do.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let name = match &record {
        Some(r) => format!("instance {}", r.id),
        None => "listener".to_owned(),
    };
    let (ours, ours_rx) = watch::channel(record);
    let (events_tx, events) = mpsc::channel(1024);
    let task = spawn(config, namespace.to_owned(), ttl, ours_rx, events_tx);
    Instance {
        ours,
        events,
        task: Some(task),
        seen: Vec::new(),
        backlog: VecDeque::new(),
        name,
    }
}

impl Instance {
    /// Waits (up to [`BOUND`]) for an event that `matches` and that no
    /// earlier wait took (each event satisfies one wait; the others stay
    /// for later waits); returns it and when it came. Every event is kept
    /// in `seen`.
    pub(super) async fn until(
        &mut self,
        what: &str,
        mut matches: impl FnMut(&SourceEvent) -> bool,
    ) -> (SourceEvent, Instant) {
        if let Some(at) = self.backlog.iter().position(|(e, _)| matches(e)) {
            return self.backlog.remove(at).unwrap();
        }
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.events.recv()).await {
                Ok(Some(event)) => {
                    let now = Instant::now();
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return (event, now);
                    }
                    self.backlog.push_back((event, now));
                }
                Ok(None) => panic!("{}: the source ended while waiting for {what}", self.name),
                Err(_) => panic!(
                    "{}: no {what} within {BOUND:?}; saw {:#?}",
                    self.name, self.seen
                ),
            }
        }
    }

    /// Waits for a `Put` of `id` (any incarnation) whose payload is
    /// `payload`.
    pub(super) async fn put_of(&mut self, id: Id, payload: u8) -> Record {
        let (event, _) = self
            .until(
                &format!("a Put of {id} with payload {payload}"),
                |e| matches!(e, SourceEvent::Put(r) if r.id == id && r.payload == [payload]),
            )
            .await;
        match event {
            SourceEvent::Put(r) => r,
            _ => unreachable!(),
        }
    }

    /// Waits for a `Delete` of `id`; returns (incarnation, leaving, when).
    pub(super) async fn delete_of(&mut self, id: Id) -> (Option<u64>, bool, Instant) {
        let (event, at) = self
            .until(
                &format!("a Delete of {id}"),
                |e| matches!(e, SourceEvent::Delete { id: i, .. } if *i == id),
            )
            .await;
        match event {
            SourceEvent::Delete {
                incarnation,
                leaving,
                ..
            } => (incarnation, leaving, at),
            _ => unreachable!(),
        }
    }

    /// Whether any event so far matches.
    pub(super) fn saw(&self, mut matches: impl FnMut(&SourceEvent) -> bool) -> bool {
        self.seen.iter().any(&mut matches)
    }

    /// Takes what has arrived without waiting.
    pub(super) fn drain(&mut self) {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event.clone());
            self.backlog.push_back((event, Instant::now()));
        }
    }

    /// Publishes a new record (a payload update, or a new incarnation).
    pub(super) fn publish(&self, record: Option<Record>) {
        self.ours.send_replace(record);
    }

    /// Leaves gracefully and waits until the task ended.
    pub(super) async fn shutdown(&mut self) {
        if let Some(task) = self.task.take() {
            timeout(BOUND, task.shutdown())
                .await
                .expect("shutdown took too long");
        }
    }

    /// Ends the task without leaving (a crash, as far as etcd can tell).
    pub(super) fn abort(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Waits (up to [`BOUND`]) until `check` holds, trying every 50 ms.
pub(super) async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + BOUND;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {BOUND:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What etcd holds at `key`: (decoded record, lease), if anything.
pub(super) async fn read_key(cluster: &Cluster, key: &str) -> Option<(Option<Record>, i64)> {
    let mut client = cluster.client().await;
    let response = client.get(key, None).await.expect("reading a key");
    response
        .kvs()
        .first()
        .map(|kv| (Record::decode(kv.value()), kv.lease()))
}
