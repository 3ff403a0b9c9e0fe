//! Charts through a real etcd cluster (feature `etcd`): the same `Chart`,
//! events and addresses, from etcd alone or with the LAN. Starts a
//! 3-member cluster on loopback ports; run inside a private network
//! namespace (`scripts/test`). Without etcd, fails under `CI`.
#![cfg(feature = "etcd")]

mod etcd_common;

use std::time::{Duration, Instant};

use cohort::etcd::EtcdConfig;
use cohort::{ChartBuilder, Event, LeftReason, discovery};
use etcd_common::Cluster;
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(30);

fn schedule() -> cohort::Schedule {
    cohort::Schedule {
        first_interval: Duration::from_millis(50),
        max_interval: Duration::from_millis(500),
        eager_announcements: 3,
        ttl: Duration::from_secs(3),
    }
}

fn etcd_only(cluster: &Cluster, ns: &str, id: u64) -> cohort::Chart<u16> {
    ChartBuilder::new()
        .with_id(id)
        .with_namespace(ns)
        .with_schedule(schedule())
        .with_service_port(id as u16)
        .with_etcd(EtcdConfig::new(cluster.endpoints()))
        .without_lan()
        .with_advertised_addr("127.0.0.1".parse().unwrap())
        .finish()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_from_etcd_alone_meet_and_a_goodbye_is_seen_at_once() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let a = etcd_only(&cluster, "etcd-smoke", 1);
    let b = etcd_only(&cluster, "etcd-smoke", 2);
    let mut events = a.subscribe();
    let _da = discovery::spawn(&a).unwrap();
    let db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    timeout(BOUND, discovery::found_everyone(&b, 2))
        .await
        .unwrap();
    let entry = a.get(2).unwrap();
    assert!(
        entry.learned.etcd && !entry.learned.lan,
        "{:?}",
        entry.learned
    );
    assert_eq!(a.get_addr(2), Some("127.0.0.1:2".parse().unwrap()));
    let left = Instant::now();
    db.shutdown().await.unwrap();
    let reason = loop {
        if let Ok(Event::Left { id: 2, reason }) = timeout(BOUND, events.recv()).await.unwrap() {
            break reason;
        }
    };
    assert_eq!(reason, LeftReason::Goodbye);
    println!(
        "goodbye through etcd seen {:?} after shutdown began",
        left.elapsed()
    );
}
