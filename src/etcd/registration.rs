//! This instance's registration: the lease, the task that keeps it alive,
//! the transactions that write our record, and leaving.
//!
//! **Owns:** every write this source makes to etcd. **Must not touch:** the
//! read, the watch or failover (`session`'s), or how values become events
//! (`table`'s).
//!
//! Every write after the first is conditioned on our key still being
//! attached to our lease (`Compare::lease`), so a predecessor that lingers
//! can never overwrite or delete its successor's record; a registration that
//! finds a newer incarnation of our id stops writing.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn, TxnOp,
    TxnOpResponse,
};
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout};

use super::session::{Failed, Runner, same_identity, within};
use crate::source::Record;

/// Attempts at a contended registration before waiting for the next event.
const REGISTER_ATTEMPTS: usize = 4;

/// How the keep-alive task ended.
pub(super) enum KeeperEnd {
    /// etcd says the lease no longer exists.
    Expired,
    /// A keep-alive failed or went unanswered: the session is over.
    Failed(Failed),
}

/// The task that keeps our lease alive, every third of its TTL; aborted
/// when dropped (the session ended).
pub(super) struct KeeperTask(JoinHandle<KeeperEnd>);

impl KeeperTask {
    pub(super) fn spawn(
        (mut keeper, mut stream): (LeaseKeeper, LeaseKeepAliveStream),
        interval: Duration,
        deadline: Duration,
    ) -> KeeperTask {
        KeeperTask(tokio::spawn(async move {
            loop {
                sleep(interval).await;
                if let Err(failed) =
                    within(deadline, "sending a keep-alive", keeper.keep_alive()).await
                {
                    return KeeperEnd::Failed(failed);
                }
                match within(deadline, "keep-alive", stream.message()).await {
                    Ok(Some(answer)) if answer.ttl() > 0 => {}
                    Ok(Some(_)) => return KeeperEnd::Expired,
                    Ok(None) => {
                        return KeeperEnd::Failed(Failed("the keep-alive stream ended".into()));
                    }
                    Err(failed) => return KeeperEnd::Failed(failed),
                }
            }
        }))
    }

    /// Waits until the task in `keeper` ends; never, when there is none.
    pub(super) async fn ended(keeper: &mut Option<KeeperTask>) -> KeeperEnd {
        match keeper {
            Some(task) => match (&mut task.0).await {
                Ok(end) => end,
                Err(_) => KeeperEnd::Failed(Failed("the keep-alive task ended".into())),
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for KeeperTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Runner {
    /// Keeps the lease we have if it is still alive, or grants a new one;
    /// starts the task that keeps it alive.
    pub(super) async fn ensure_lease(&mut self, client: &mut Client) -> Result<(), Failed> {
        let deadline = self.deadline();
        if let Some((lease, _)) = self.lease {
            match timeout(deadline, client.lease_keep_alive(lease)).await {
                Ok(Ok(keeper)) => {
                    self.keeper = Some(KeeperTask::spawn(
                        keeper,
                        self.heartbeat_interval(),
                        deadline,
                    ));
                    return Ok(());
                }
                Ok(Err(etcd_client::Error::LeaseKeepAliveError(why))) => {
                    tracing::info!(lease, %why, "etcd lease gone; registering anew");
                    self.lease = None;
                    self.written = None;
                }
                Ok(Err(error)) => return Err(Failed(format!("keeping the lease alive: {error}"))),
                Err(_) => return Err(Failed("keeping the lease alive: no answer".into())),
            }
        }
        let granted = within(
            deadline,
            "granting a lease",
            client.lease_grant(self.ttl_secs, None),
        )
        .await?;
        self.lease = Some((granted.id(), granted.ttl().max(1)));
        self.written = None;
        let keeper = within(
            deadline,
            "keeping the new lease alive",
            client.lease_keep_alive(granted.id()),
        )
        .await?;
        tracing::debug!(
            lease = granted.id(),
            ttl = granted.ttl(),
            "etcd lease granted"
        );
        self.keeper = Some(KeeperTask::spawn(
            keeper,
            self.heartbeat_interval(),
            deadline,
        ));
        Ok(())
    }

    /// `ours` changed: update, re-register or leave.
    pub(super) async fn apply_ours(&mut self, client: &mut Client) -> Result<(), Failed> {
        let new = self.ours.borrow_and_update().clone();
        if !same_identity(&self.want, &new) {
            self.leave(client).await;
        }
        self.want = new;
        if !self.wants_registration() || self.written == self.want {
            return Ok(());
        }
        if self.lease.is_none() || self.keeper.is_none() {
            self.ensure_lease(client).await?;
        }
        self.register(client).await
    }

    /// Writes our record: a put while the key is attached to our lease (or
    /// absent); a compare-and-swap over garbage or an older incarnation;
    /// nothing over a newer incarnation (then we are superseded).
    pub(super) async fn register(&mut self, client: &mut Client) -> Result<(), Failed> {
        let (Some(record), Some((lease, _))) = (self.want.clone(), self.lease) else {
            return Ok(());
        };
        let key = self.table.key_of(record.id);
        let value = record.encode();
        let put = || {
            TxnOp::put(
                key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )
        };
        let deadline = self.deadline();
        for _ in 0..REGISTER_ATTEMPTS {
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([put()])
                .or_else([TxnOp::get(key.clone(), None)]);
            let answer = within(deadline, "registering", client.txn(txn)).await?;
            if answer.succeeded() {
                self.written = Some(record);
                return Ok(());
            }
            let current = answer.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            let guard = match &current {
                None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                Some(kv) => {
                    if let Some(theirs) = Record::decode(kv.value())
                        && theirs.id == record.id
                        && theirs.incarnation > record.incarnation
                        && !theirs.leaving
                    {
                        tracing::warn!(
                            id = record.id,
                            ours = record.incarnation,
                            theirs = theirs.incarnation,
                            "etcd: a newer incarnation of this instance is registered; this one stops writing"
                        );
                        self.superseded = Some((record.id, record.incarnation));
                        self.written = None;
                        // Our lease now holds nothing worth keeping.
                        self.leave(client).await;
                        return Ok(());
                    }
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision())
                }
            };
            let txn = Txn::new().when([guard]).and_then([put()]);
            if within(deadline, "registering", client.txn(txn))
                .await?
                .succeeded()
            {
                self.written = Some(record);
                return Ok(());
            }
        }
        tracing::warn!(
            id = record.id,
            "etcd: our key keeps changing under us; trying again at the next change"
        );
        Ok(())
    }

    /// Says goodbye: our record marked `leaving` (only while the key is
    /// still ours), then the lease revoked. Best effort: failures are
    /// logged, and the lease then expires on its own.
    pub(super) async fn leave(&mut self, client: &mut Client) {
        let deadline = self.deadline();
        self.keeper = None;
        let Some((lease, _)) = self.lease.take() else {
            self.written = None;
            return;
        };
        if let Some(mut bye) = self.written.take() {
            bye.leaving = true;
            let key = self.table.key_of(bye.id);
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::put(
                    key,
                    bye.encode(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if let Err(failed) = within(deadline, "saying goodbye", client.txn(txn)).await {
                tracing::debug!(%failed, "etcd goodbye not written; the lease will expire instead");
            }
        }
        if let Err(failed) =
            within(deadline, "revoking the lease", client.lease_revoke(lease)).await
        {
            tracing::debug!(%failed, "etcd lease not revoked; it will expire");
        }
    }

    /// Leaves when no session is open: one attempt on the current endpoint,
    /// bounded by the connect and request timeouts.
    pub(super) async fn leave_unconnected(&mut self) {
        if self.lease.is_none() {
            return;
        }
        let endpoint = self.config.endpoints[self.cursor].clone();
        match self.connect(&endpoint).await {
            Ok(mut client) => self.leave(&mut client).await,
            Err(failed) => {
                tracing::debug!(%failed, "etcd goodbye impossible; the lease will expire instead");
            }
        }
    }
}
