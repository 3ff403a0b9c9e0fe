//! Membership through a healthy cluster: seeing each other, updates,
//! goodbyes, expiries, incarnations and garbage.

use std::time::Duration;

use tokio::time::Instant;

use super::harness::{Cluster, Options};
use super::helpers::{config, eventually, read_key, record, start};
use crate::source::SourceEvent;

/// A long TTL: a `Delete` that arrives well before it cannot be an expiry.
const LONG_TTL: Duration = Duration::from_secs(60);
/// A short TTL for the tests that wait for a lease to expire.
const SHORT_TTL: Duration = Duration::from_secs(3);

#[tokio::test]
async fn sources_see_each_other_and_never_themselves() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut a = start(config(&cluster), "see", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "see", LONG_TTL, Some(record(2, 1, 20)));
    let mut listener = start(config(&cluster), "see", LONG_TTL, None);
    let mut other_namespace = start(config(&cluster), "see-other", LONG_TTL, None);
    a.put_of(2, 20).await;
    b.put_of(1, 10).await;
    listener.put_of(1, 10).await;
    listener.put_of(2, 20).await;
    // A listener is never registered: a newcomer sees only the two.
    let mut c = start(config(&cluster), "see", LONG_TTL, Some(record(3, 1, 30)));
    c.put_of(1, 10).await;
    c.put_of(2, 20).await;
    a.put_of(3, 30).await;
    // Nobody reports itself, and another namespace reports nothing of these.
    for (who, instance) in [(1, &mut a), (2, &mut b), (3, &mut c)] {
        instance.drain();
        assert!(
            !instance.saw(|e| matches!(e, SourceEvent::Put(r) if r.id == who)),
            "instance {who} reported itself: {:?}",
            instance.seen
        );
    }
    // The other namespace's listener sees its own namespace's records only.
    let mut d = start(
        config(&cluster),
        "see-other",
        LONG_TTL,
        Some(record(4, 1, 40)),
    );
    other_namespace.put_of(4, 40).await;
    assert!(
        !other_namespace.saw(|e| matches!(e, SourceEvent::Put(r) if r.id != 4)),
        "{:?}",
        other_namespace.seen
    );
    d.shutdown().await;
}

#[tokio::test]
async fn a_payload_change_is_a_put() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let a = start(config(&cluster), "update", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "update", LONG_TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    a.publish(Some(record(1, 1, 11)));
    let updated = b.put_of(1, 11).await;
    assert_eq!(updated.incarnation, 1);
    // An update is not a leave and rejoin.
    assert!(
        !b.saw(|e| matches!(e, SourceEvent::Delete { .. })),
        "{:?}",
        b.seen
    );
}

#[tokio::test]
async fn a_graceful_shutdown_is_a_goodbye_and_so_is_a_drop() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut a = start(config(&cluster), "bye", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "bye", LONG_TTL, Some(record(2, 1, 20)));
    let mut c = start(config(&cluster), "bye", LONG_TTL, Some(record(3, 1, 30)));
    b.put_of(1, 10).await;
    b.put_of(3, 30).await;
    let asked = Instant::now();
    a.shutdown().await;
    let (incarnation, leaving, at) = b.delete_of(1).await;
    assert_eq!((incarnation, leaving), (Some(1), true));
    eprintln!("goodbye seen {:?} after shutdown began", at - asked);
    assert!(
        at - asked < LONG_TTL / 2,
        "that was no goodbye but an expiry"
    );
    // The key is gone at once, not left to expire.
    assert!(read_key(&cluster, "/cohort/bye/1").await.is_none());
    // Dropping the task leaves too (it finishes on the runtime).
    let asked = Instant::now();
    drop(c.task.take());
    let (incarnation, leaving, at) = b.delete_of(3).await;
    assert_eq!((incarnation, leaving), (Some(1), true));
    assert!(
        at - asked < LONG_TTL / 2,
        "that was no goodbye but an expiry"
    );
    // Publishing `None` leaves too, and the source keeps listening.
    let mut d = start(config(&cluster), "bye", LONG_TTL, Some(record(4, 1, 40)));
    d.put_of(2, 20).await;
    b.publish(None);
    let (_, leaving, _) = d.delete_of(2).await;
    assert!(leaving);
    assert!(read_key(&cluster, "/cohort/bye/2").await.is_none());
    d.publish(Some(record(4, 1, 41)));
    b.put_of(4, 41).await;
}

#[tokio::test]
async fn an_aborted_task_expires_after_its_ttl() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut a = start(config(&cluster), "crash", SHORT_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "crash", SHORT_TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    let crashed = Instant::now();
    a.abort();
    let (incarnation, leaving, at) = b.delete_of(1).await;
    assert_eq!((incarnation, leaving), (Some(1), false));
    let after = at - crashed;
    eprintln!("expiry seen {after:?} after the crash (TTL {SHORT_TTL:?})");
    // The last keep-alive was at most a third of the TTL before the crash.
    assert!(
        after >= SHORT_TTL * 2 / 3,
        "seen after {after:?}: too soon to be the lease expiring"
    );
}

#[tokio::test]
async fn a_restarted_incarnation_is_not_deleted_by_its_predecessors_lease() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut old = start(
        config(&cluster),
        "restart",
        SHORT_TTL,
        Some(record(1, 1, 10)),
    );
    let mut b = start(
        config(&cluster),
        "restart",
        SHORT_TTL,
        Some(record(2, 1, 20)),
    );
    b.put_of(1, 10).await;
    let (_, old_lease) = read_key(&cluster, "/cohort/restart/1").await.unwrap();
    // The old one crashes; its lease lives on for up to a TTL. The restart
    // registers at once, while that lease still exists.
    old.abort();
    let mut new = start(
        config(&cluster),
        "restart",
        SHORT_TTL,
        Some(record(1, 2, 11)),
    );
    let restarted = b.put_of(1, 11).await;
    assert_eq!(restarted.incarnation, 2);
    // Wait until the old lease is gone for sure.
    let client = cluster.client().await;
    eventually("the predecessor's lease expires", || {
        let mut client = client.clone();
        async move {
            let ttl = client.lease_time_to_live(old_lease, None).await.unwrap();
            ttl.ttl() < 0
        }
    })
    .await;
    // Then the key still holds the new incarnation, and nobody saw it go.
    let (held, lease) = read_key(&cluster, "/cohort/restart/1").await.unwrap();
    assert_eq!(held.map(|r| r.incarnation), Some(2));
    assert_ne!(lease, old_lease);
    // One more write by b, to know b's watch has passed the expiry.
    b.publish(Some(record(2, 1, 21)));
    new.put_of(2, 21).await;
    b.drain();
    assert!(
        !b.saw(|e| matches!(e, SourceEvent::Delete { id: 1, .. })),
        "{:?}",
        b.seen
    );
}

#[tokio::test]
async fn a_lingering_predecessor_cannot_overwrite_or_delete_its_successor() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut old = start(config(&cluster), "linger", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "linger", LONG_TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    // The successor registers while the predecessor still runs.
    let _new = start(config(&cluster), "linger", LONG_TTL, Some(record(1, 2, 11)));
    b.put_of(1, 11).await;
    // The predecessor sees the newer incarnation and stops writing: its
    // payload update and its goodbye must not touch the successor's key.
    old.publish(Some(record(1, 1, 12)));
    old.until(
        "the successor's record reported",
        |e| matches!(e, SourceEvent::Put(r) if r.id == 1 && r.incarnation == 2),
    )
    .await;
    old.shutdown().await;
    let (held, _) = read_key(&cluster, "/cohort/linger/1").await.unwrap();
    let held = held.unwrap();
    assert_eq!(
        (held.incarnation, held.payload, held.leaving),
        (2, vec![11], false)
    );
    // b saw no delete of 1 and no payload 12.
    b.publish(Some(record(2, 1, 21)));
    let mut probe = start(config(&cluster), "linger", LONG_TTL, None);
    probe.put_of(2, 21).await;
    b.drain();
    assert!(
        !b.saw(|e| matches!(e, SourceEvent::Delete { id: 1, .. })
            || matches!(e, SourceEvent::Put(r) if r.payload == [12])),
        "{:?}",
        b.seen
    );
}

#[tokio::test]
async fn garbage_under_the_prefix_is_counted_and_never_fatal() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut admin = cluster.client().await;
    // Garbage before the source starts: found by the snapshot.
    admin
        .put("/cohort/junk/not-an-id", "x", None)
        .await
        .unwrap();
    admin
        .put("/cohort/junk/7", vec![1u8, 2, 3], None)
        .await
        .unwrap();
    let a = start(config(&cluster), "junk", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "junk", LONG_TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    let garbage = |seen: &[SourceEvent]| {
        seen.iter()
            .filter(|e| matches!(e, SourceEvent::Garbage))
            .count()
    };
    assert_eq!(garbage(&b.seen), 2, "{:?}", b.seen);
    // Garbage while watching: each write counted once.
    let mut wrong_id = record(5, 1, 50).encode();
    admin
        .put("/cohort/junk/6", wrong_id.clone(), None)
        .await
        .unwrap();
    wrong_id[0] = 99; // an unknown version
    admin.put("/cohort/junk/5", wrong_id, None).await.unwrap();
    admin
        .put("/cohort/junk/8", vec![0xffu8; 1_000_000], None)
        .await
        .unwrap();
    admin
        .put(
            "/cohort/junk/18446744073709551616",
            record(1, 1, 1).encode(),
            None,
        )
        .await
        .unwrap();
    // Garbage over a member's key: the member is gone from etcd.
    admin
        .put("/cohort/junk/1", "overwritten", None)
        .await
        .unwrap();
    let (incarnation, leaving, _) = b.delete_of(1).await;
    assert_eq!((incarnation, leaving), (Some(1), false));
    // ... and the member, seeing its key taken, registers again.
    b.put_of(1, 10).await;
    // Still working: an update after all that arrives.
    a.publish(Some(record(1, 1, 11)));
    b.put_of(1, 11).await;
    assert_eq!(garbage(&b.seen), 7, "{:?}", b.seen);
    // Another application's keys outside the namespace are not seen at all.
    admin.put("/cohort/junkyard/1", "x", None).await.unwrap();
    admin.put("/elsewhere/1", "x", None).await.unwrap();
    a.publish(Some(record(1, 1, 12)));
    b.put_of(1, 12).await;
    assert_eq!(garbage(&b.seen), 7, "{:?}", b.seen);
}

#[tokio::test]
async fn values_too_large_to_read_are_skipped_not_fatal() {
    // etcd accepts values up to 8 MiB here; a client decodes at most 4 MiB.
    let options = Options {
        max_request_bytes: Some(8 << 20),
        ..Options::default()
    };
    let Some(cluster) = Cluster::start_with(options).await else {
        return;
    };
    let mut admin = cluster.client().await;
    // Three values that are readable one by one but not in one answer, and
    // one that no answer can carry.
    for i in 0..3 {
        admin
            .put(format!("/cohort/huge/big{i}"), vec![b'x'; 1_500_000], None)
            .await
            .unwrap();
    }
    admin
        .put("/cohort/huge/giant", vec![b'x'; 5_000_000], None)
        .await
        .unwrap();
    let a = start(config(&cluster), "huge", LONG_TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "huge", LONG_TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    for n in 1..=4 {
        b.until(&format!("garbage #{n}"), |e| *e == SourceEvent::Garbage)
            .await;
    }
    // One more while watching: the watch cannot carry it either; the
    // source reads again around it and keeps working.
    admin
        .put("/cohort/huge/giant2", vec![b'x'; 5_000_000], None)
        .await
        .unwrap();
    b.until("garbage #5", |e| *e == SourceEvent::Garbage).await;
    a.publish(Some(record(1, 1, 11)));
    b.put_of(1, 11).await;
    b.drain();
    let garbage = b
        .seen
        .iter()
        .filter(|e| matches!(e, SourceEvent::Garbage))
        .count();
    assert_eq!(garbage, 5, "{:?}", b.seen);
}
