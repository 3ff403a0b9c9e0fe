//! The etcd source task: sessions with one endpoint at a time, failover,
//! staleness, the read and the watch.
//!
//! **Owns:** the [`Runner`] state, the etcd client of the current session,
//! the endpoint cursor, backoff and the stale flag. **Must not touch:** how
//! keys and values become events (that is [`Table`]'s), how our record is
//! written and withdrawn (`registration`'s), or anything outside its
//! channels.
//!
//! # One session
//!
//! ```text
//! connect to endpoints[cursor]
//! keep our lease (keep-alive) or grant a new one   (if registering)
//! read <dir> page by page at one revision R        -> Put/Delete/Garbage
//! register (a transaction) unless our key already holds our record
//! watch <dir> from R + 1 with previous values
//! Stale(false) if we were stale
//! loop: stop | ours changed | watch event | keep-alive task ended
//!       | probe timer (listening only: a linearizable read)
//! ```
//!
//! The lease is kept alive by a task of its own (`registration`), so a
//! driver that is slow to take events delays the watch, never the lease.
//!
//! Any failure ends the session; the next starts at once on the next
//! endpoint. A whole round of endpoints failing in a row means the cluster
//! is out of reach: `Stale(true)`, then rounds with backoff.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions, WatchOptions,
    WatchResponse, WatchStream,
};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::config::EtcdConfig;
use super::lease_ttl;
use super::registration::{KeeperEnd, KeeperTask};
use super::table::Table;
use crate::source::{Record, SourceEvent};
use crate::wire::Id;

/// First and longest pause between rounds of failed endpoints.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Keys read per request when reading the namespace.
const PAGE: i64 = 256;

/// Why a session ended early. Only logged: the task never gives up.
#[derive(Debug)]
pub(super) struct Failed(pub(super) String);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<etcd_client::Error> for Failed {
    fn from(error: etcd_client::Error) -> Self {
        Failed(error.to_string())
    }
}

/// Runs `what` with a deadline; a timeout or an etcd error is a failure.
pub(super) async fn within<T>(
    limit: Duration,
    what: &str,
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Failed> {
    match timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(Failed(format!("{what}: {error}"))),
        Err(_) => Err(Failed(format!("{what}: no answer within {limit:?}"))),
    }
}

/// The state of one chart's etcd source.
pub(crate) struct Runner {
    pub(super) config: EtcdConfig,
    pub(super) ttl_secs: i64,
    pub(super) ours: watch::Receiver<Option<Record>>,
    stop: watch::Receiver<bool>,
    events: mpsc::Sender<SourceEvent>,
    pub(super) table: Table,
    /// What `ours` said last.
    pub(super) want: Option<Record>,
    /// Our lease, while we believe it exists, and its granted TTL.
    pub(super) lease: Option<(i64, i64)>,
    /// The task keeping our lease alive in the current session.
    pub(super) keeper: Option<KeeperTask>,
    /// The record our key holds under our lease, as far as we know.
    pub(super) written: Option<Record>,
    /// Our (id, incarnation) when a newer incarnation holds our key.
    pub(super) superseded: Option<(Id, u64)>,
    stale: bool,
    driver_gone: bool,
    pub(super) cursor: usize,
    failures_in_round: usize,
    backoff: Duration,
}

enum End {
    Stopped,
}

impl Runner {
    pub(crate) fn new(
        config: EtcdConfig,
        namespace: &str,
        ttl: Duration,
        ours: watch::Receiver<Option<Record>>,
        events: mpsc::Sender<SourceEvent>,
        stop: watch::Receiver<bool>,
    ) -> Runner {
        let dir = format!("{}/{namespace}/", config.prefix()).into_bytes();
        Runner {
            config,
            ttl_secs: lease_ttl(ttl),
            ours,
            stop,
            events,
            table: Table::new(dir),
            want: None,
            lease: None,
            keeper: None,
            written: None,
            superseded: None,
            stale: false,
            driver_gone: false,
            cursor: 0,
            failures_in_round: 0,
            backoff: BACKOFF_FIRST,
        }
    }

    /// Runs until told to stop; then leaves and returns.
    pub(crate) async fn run(mut self) {
        loop {
            if self.must_stop() {
                self.leave_unconnected().await;
                return;
            }
            let endpoint = self.config.endpoints[self.cursor].clone();
            match self.session(&endpoint).await {
                Ok(End::Stopped) => return,
                Err(failed) => {
                    self.keeper = None;
                    tracing::debug!(%endpoint, %failed, "etcd session ended");
                    self.cursor = (self.cursor + 1) % self.config.endpoints.len();
                    self.failures_in_round += 1;
                    if self.failures_in_round >= self.config.endpoints.len() {
                        self.failures_in_round = 0;
                        self.round_failed(&failed).await;
                    }
                }
            }
        }
    }

    fn must_stop(&mut self) -> bool {
        self.driver_gone
            || *self.stop.borrow()
            || self.stop.has_changed().is_err()
            || self.ours.has_changed().is_err()
    }

    /// Every endpoint failed in a row: stale, and a pause before the next
    /// round (cut short by a stop).
    async fn round_failed(&mut self, failed: &Failed) {
        if !self.stale {
            tracing::warn!(%failed, endpoints = ?self.config.endpoints, "etcd cluster out of reach; keeping the last known records and retrying");
            self.stale = true;
            self.emit(vec![SourceEvent::Stale(true)]).await;
        }
        let pause = jitter(self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        tokio::select! {
            () = sleep(pause) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// A session is working: clear the failure count and staleness.
    async fn healthy(&mut self) {
        self.failures_in_round = 0;
        self.backoff = BACKOFF_FIRST;
        if self.stale {
            self.stale = false;
            tracing::info!("etcd cluster reachable again");
            self.emit(vec![SourceEvent::Stale(false)]).await;
        }
    }

    /// Sends events to the driver, except those about our own record.
    async fn emit(&mut self, events: Vec<SourceEvent>) {
        let ours = self.want.as_ref().map(|r| (r.id, r.incarnation));
        for event in events {
            let own = match &event {
                SourceEvent::Put(r) => ours == Some((r.id, r.incarnation)),
                SourceEvent::Delete {
                    id,
                    incarnation: Some(incarnation),
                    ..
                } => ours == Some((*id, *incarnation)),
                _ => false,
            };
            if !own && self.events.send(event).await.is_err() {
                self.driver_gone = true;
                return;
            }
        }
    }

    pub(super) fn heartbeat_interval(&self) -> Duration {
        let ttl = self.lease.map_or(self.ttl_secs, |(_, ttl)| ttl);
        Duration::from_millis(u64::try_from(ttl).unwrap_or(1).saturating_mul(1000) / 3)
            .max(Duration::from_millis(200))
    }

    /// The deadline for one request: the configured timeout, but never
    /// longer than a heartbeat, so a slow member cannot outlast the lease.
    pub(super) fn deadline(&self) -> Duration {
        self.config.request_timeout.min(self.heartbeat_interval())
    }

    pub(super) fn wants_registration(&self) -> bool {
        self.want
            .as_ref()
            .is_some_and(|r| self.superseded != Some((r.id, r.incarnation)))
    }

    pub(super) async fn connect(&self, endpoint: &str) -> Result<Client, Failed> {
        let config = &self.config;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            // A member cut off from its leader fails our requests and
            // cancels our streams instead of serving stale data.
            .with_require_leader(true);
        if let Some((user, password)) = &config.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        if config.ca_pem.is_some() || config.identity_pem.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &config.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &config.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(domain) = &config.tls_domain {
                tls = tls.domain_name(domain.clone());
            }
            options = options.with_tls(tls);
        }
        let limit = config.connect_timeout + config.request_timeout;
        within(
            limit,
            "connecting",
            Client::connect([endpoint], Some(options)),
        )
        .await
    }

    async fn session(&mut self, endpoint: &str) -> Result<End, Failed> {
        let mut client = self.connect(endpoint).await?;
        let new = self.ours.borrow_and_update().clone();
        if !same_identity(&self.want, &new) {
            // Changed while cut off: the old identity's key goes with its
            // lease.
            self.leave(&mut client).await;
        }
        self.want = new;
        if self.wants_registration() {
            self.ensure_lease(&mut client).await?;
        } else {
            self.leave(&mut client).await;
        }
        let (revision, our_kv) = self.resync(&mut client).await?;
        if self.wants_registration() {
            let registered = our_kv.is_some_and(|kv| {
                self.lease.is_some_and(|(lease, _)| lease == kv.lease())
                    && self.want.as_ref().is_some_and(|r| r.encode() == kv.value())
            });
            if registered {
                self.written.clone_from(&self.want);
            } else {
                self.register(&mut client).await?;
            }
        }
        let mut watch = self.watch(&mut client, revision + 1).await?;
        self.healthy().await;
        let mut beat = Instant::now() + self.heartbeat_interval();
        loop {
            if self.must_stop() {
                self.leave(&mut client).await;
                return Ok(End::Stopped);
            }
            tokio::select! {
                _ = self.stop.changed() => {}
                changed = self.ours.changed() => {
                    if changed.is_ok() {
                        self.apply_ours(&mut client).await?;
                    }
                }
                message = watch.message() => {
                    let response = message?
                        .ok_or_else(|| Failed("the watch stream ended".into()))?;
                    self.watched(&mut client, &response).await?;
                }
                end = KeeperTask::ended(&mut self.keeper) => {
                    self.keeper = None;
                    match end {
                        KeeperEnd::Expired => {
                            tracing::warn!("etcd lease expired (out of reach longer than the TTL?); registering anew");
                            self.lease = None;
                            self.written = None;
                            self.ensure_lease(&mut client).await?;
                            self.register(&mut client).await?;
                        }
                        KeeperEnd::Failed(failed) => return Err(failed),
                    }
                }
                () = sleep_until(beat), if self.keeper.is_none() => {
                    self.probe(&mut client).await?;
                    beat = Instant::now() + self.heartbeat_interval();
                }
            }
        }
    }

    /// Reads the whole directory at one revision, page by page, and reports
    /// what changed. Returns the revision and what our key holds.
    async fn resync(&mut self, client: &mut Client) -> Result<(i64, Option<KeyValue>), Failed> {
        let dir = self.table.dir().to_vec();
        let end = prefix_end(&dir);
        let our_key = self.want.as_ref().map(|r| self.table.key_of(r.id));
        let mut resync = self.table.begin_resync();
        let mut our_kv = None;
        let mut start = dir;
        let mut revision = 0;
        let mut limit = PAGE;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let deadline = self.deadline();
            let page = match timeout(deadline, client.get(start.clone(), Some(options))).await {
                Ok(Ok(page)) => page,
                // Values too large for one answer (someone wrote huge
                // values here): fewer keys per page, down to one; a single
                // value too large to read at all is skipped as garbage.
                Ok(Err(error)) if too_large(&error) && limit > 1 => {
                    limit = (limit / 2).max(1);
                    continue;
                }
                Ok(Err(error)) if too_large(&error) => {
                    let options = GetOptions::new()
                        .with_range(end.clone())
                        .with_limit(1)
                        .with_keys_only()
                        .with_revision(revision);
                    let key =
                        within(deadline, "reading a key", client.get(start, Some(options))).await?;
                    if revision == 0 {
                        revision = key.header().map_or(0, |h| h.revision());
                    }
                    let Some(kv) = key.kvs().first() else { break };
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "etcd: a value under the namespace is too large to read; ignored");
                    let mut out = Vec::new();
                    self.table.resync_entry(
                        &mut resync,
                        kv.key(),
                        &[],
                        kv.mod_revision(),
                        &mut out,
                    );
                    self.emit(out).await;
                    start = [kv.key(), &[0]].concat();
                    limit = PAGE;
                    continue;
                }
                Ok(Err(error)) => return Err(Failed(format!("reading the namespace: {error}"))),
                Err(_) => {
                    return Err(Failed(format!(
                        "reading the namespace: no answer within {deadline:?}"
                    )));
                }
            };
            if revision == 0 {
                revision = page
                    .header()
                    .map(|h| h.revision())
                    .ok_or_else(|| Failed("a read without a revision".into()))?;
            }
            let mut out = Vec::new();
            for kv in page.kvs() {
                self.table.resync_entry(
                    &mut resync,
                    kv.key(),
                    kv.value(),
                    kv.mod_revision(),
                    &mut out,
                );
                if our_key.as_deref() == Some(kv.key()) {
                    our_kv = Some(kv.clone());
                }
            }
            self.emit(out).await;
            match page.kvs().last() {
                Some(last) if page.more() => start = [last.key(), &[0]].concat(),
                _ => break,
            }
        }
        let mut out = Vec::new();
        self.table.finish_resync(resync, &mut out);
        self.emit(out).await;
        Ok((revision, our_kv))
    }

    async fn watch(&mut self, client: &mut Client, from: i64) -> Result<WatchStream, Failed> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(from);
        let deadline = self.deadline();
        let dir = self.table.dir().to_vec();
        let mut stream = within(deadline, "watching", client.watch(dir, Some(options))).await?;
        let created = within(deadline, "watching (creation)", stream.message())
            .await?
            .ok_or_else(|| Failed("the watch stream ended at once".into()))?;
        if created.canceled() || !created.created() {
            return Err(Failed(format!(
                "the watch was refused: {}",
                created.cancel_reason()
            )));
        }
        Ok(stream)
    }

    /// Reports a watch response; re-registers when someone else touched
    /// our key.
    async fn watched(
        &mut self,
        client: &mut Client,
        response: &WatchResponse,
    ) -> Result<(), Failed> {
        if response.canceled() {
            return Err(Failed(format!(
                "the watch was cancelled: {}",
                response.cancel_reason()
            )));
        }
        let our_key = self.want.as_ref().map(|r| self.table.key_of(r.id));
        let our_lease = self.lease.map(|(lease, _)| lease);
        let mut touched = false;
        let mut out = Vec::new();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // A delete's kv has version 0; a put's at least 1. (Read this
            // way rather than through `event_type`, which panics on a type
            // it does not know.)
            if kv.version() == 0 {
                let prev = event.prev_kv().map(KeyValue::value);
                self.table.delete(kv.key(), prev, &mut out);
            } else {
                self.table
                    .put(kv.key(), kv.value(), kv.mod_revision(), &mut out);
            }
            if our_key.as_deref() == Some(kv.key())
                && (kv.version() == 0 || our_lease != Some(kv.lease()))
            {
                touched = true;
            }
        }
        self.emit(out).await;
        if touched && self.written.is_some() && self.wants_registration() {
            tracing::info!("etcd: our key was changed by someone else; registering again");
            self.written = None;
            self.register(client).await?;
        }
        Ok(())
    }

    /// Listening only (no lease to keep alive): checks that the cluster
    /// answers a linearizable read, so a lost quorum is noticed.
    async fn probe(&mut self, client: &mut Client) -> Result<(), Failed> {
        let options = GetOptions::new().with_count_only().with_limit(1);
        let key = self.table.dir().to_vec();
        within(
            self.deadline(),
            "probing the cluster",
            client.get(key, Some(options)),
        )
        .await?;
        Ok(())
    }
}

/// Whether two records are the same instance life (id and incarnation).
pub(super) fn same_identity(a: &Option<Record>, b: &Option<Record>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a.id, a.incarnation) == (b.id, b.incarnation),
        _ => false,
    }
}

/// Whether an answer was refused for its size: gRPC `RESOURCE_EXHAUSTED`
/// (8, the server's limit) or `OUT_OF_RANGE` (11, the client's decoding
/// limit of 4 MiB).
fn too_large(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => matches!(status.code() as i32, 8 | 11),
        _ => false,
    }
}

/// The end of the range of keys that start with `prefix`: the prefix with
/// its last byte below 0xff incremented and what follows dropped.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): to the end of the keyspace.
    vec![0]
}

/// `pause` ± 20%, so many instances cut off together do not come back in
/// lockstep.
fn jitter(pause: Duration) -> Duration {
    let r = getrandom::u64().unwrap_or(0) % 401;
    pause * (800 + r as u32) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/cohort/ns/"), b"/cohort/ns0");
        assert_eq!(prefix_end(b"a\xff\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(1));
            assert!(j >= Duration::from_millis(800) && j <= Duration::from_millis(1200));
        }
    }
}
