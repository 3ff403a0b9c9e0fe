//! Seeds: peers announced to directly, their names resolved again and
//! again.
//!
//! **Owns:** turning the seeds a user gave (`with_seed`) into socket
//! addresses, at once for literal addresses and every
//! [`RESOLVE_EVERY`] for names, in a task of its own so a slow resolver
//! never holds the driver. **Must not touch:** sockets or the protocol: the
//! driver hands each new set to
//! [`Protocol::set_seeds`](crate::protocol::Protocol::set_seeds).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::builder::{Seed, parse_seed};
use crate::protocol::MAX_SEEDS;

/// How often names are resolved again (a moved host is found again within
/// this).
pub(crate) const RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// How long one resolution may take before it counts as failed.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The seeds' current addresses, as they change.
pub(crate) struct Seeds {
    /// The addresses known at start (literal ones): no wait for those.
    initial: Vec<SocketAddr>,
    updates: Option<mpsc::Receiver<Vec<SocketAddr>>>,
    task: Option<JoinHandle<()>>,
}

impl Seeds {
    /// Parses the seeds (the builder checked them) and, if some are names,
    /// starts resolving them.
    pub(crate) fn start(seeds: &[String], discovery_port: u16) -> Seeds {
        let parsed: Vec<Seed> = seeds
            .iter()
            .filter_map(|s| parse_seed(s, discovery_port).ok())
            .collect();
        let initial: Vec<SocketAddr> = parsed
            .iter()
            .filter_map(|s| match s {
                Seed::Addr(a) => Some(*a),
                Seed::Name(..) => None,
            })
            .collect();
        if !parsed.iter().any(|s| matches!(s, Seed::Name(..))) {
            return Seeds {
                initial,
                updates: None,
                task: None,
            };
        }
        let (tx, rx) = mpsc::channel(1);
        let task = tokio::spawn(resolve_forever(parsed, tx));
        Seeds {
            initial,
            updates: Some(rx),
            task: Some(task),
        }
    }

    /// The literal addresses, known without resolving.
    pub(crate) fn initial(&self) -> Vec<SocketAddr> {
        self.initial.clone()
    }

    /// The next changed set of addresses; never returns without names to
    /// resolve.
    pub(crate) async fn changed(&mut self) -> Vec<SocketAddr> {
        match &mut self.updates {
            Some(rx) => match rx.recv().await {
                Some(addrs) => addrs,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }
}

impl Drop for Seeds {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Resolves every name now and every [`RESOLVE_EVERY`], sending the set
/// whenever it changes. A name that fails keeps its last addresses: a DNS
/// hiccup must not make a seed vanish.
async fn resolve_forever(seeds: Vec<Seed>, tx: mpsc::Sender<Vec<SocketAddr>>) {
    let mut last: Vec<Vec<SocketAddr>> = vec![Vec::new(); seeds.len()];
    let mut sent: Option<Vec<SocketAddr>> = None;
    loop {
        for (seed, last) in seeds.iter().zip(&mut last) {
            match seed {
                Seed::Addr(a) => *last = vec![*a],
                Seed::Name(host, port) => {
                    let lookup = tokio::net::lookup_host((host.as_str(), *port));
                    match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                        Ok(Ok(addrs)) => *last = addrs.take(MAX_SEEDS).collect(),
                        Ok(Err(error)) => {
                            tracing::warn!(seed = %host, %error, "could not resolve a seed; keeping its last addresses");
                        }
                        Err(_) => {
                            tracing::warn!(seed = %host, "resolving a seed timed out; keeping its last addresses");
                        }
                    }
                }
            }
        }
        let mut all: Vec<SocketAddr> = last.iter().flatten().copied().collect();
        all.sort_unstable();
        all.dedup();
        all.truncate(MAX_SEEDS);
        if sent.as_ref() != Some(&all) {
            if tx.send(all.clone()).await.is_err() {
                return;
            }
            sent = Some(all);
        }
        tokio::time::sleep(RESOLVE_EVERY).await;
    }
}
