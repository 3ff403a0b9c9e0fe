//! Unit tests of the view: ordering, lag, forgetting and run boundaries.

use std::net::{IpAddr, Ipv4Addr};

use super::*;
use crate::ChartBuilder;

/// A chart of one service port, with id 0; nothing runs discovery.
fn chart() -> Chart<u16> {
    ChartBuilder::new()
        .with_id(0)
        .with_service_port(1)
        .finish()
        .unwrap()
}

fn info(id: Id, payload: Vec<u8>) -> PeerInfo {
    PeerInfo {
        id,
        incarnation: 1,
        ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        addrs: vec![(Ipv4Addr::LOCALHOST, 4000).into()],
        interfaces: vec![Some(1)],
        learned: crate::Learned {
            lan: true,
            etcd: false,
        },
        payload,
        process: None,
    }
}

/// The protocol reporting that `id` joined with service port `id`.
fn joined(id: Id) -> Change {
    Change::Joined(info(id, postcard::to_allocvec(&(id as u16)).unwrap()))
}

fn left(id: Id, reason: LeftReason) -> Change {
    Change::Left { id, reason }
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed_and_can_resync() {
    let chart = chart();
    let mut events = chart.subscribe();
    let total = EVENT_CAPACITY as u64 + 76;
    for id in 1..=total {
        chart.apply(joined(id));
    }
    assert_eq!(events.recv().await, Err(Lagged { missed: 76 }));
    // The oldest event still held comes next; nothing after it is lost.
    let mut next = 77;
    while let Some(event) = events.try_recv().unwrap() {
        assert!(matches!(event, Event::Joined(e) if e.id == next));
        next += 1;
    }
    assert_eq!(next, total + 1);
    assert_eq!(
        chart.entries().len(),
        total as usize,
        "the snapshot has everyone"
    );
}

#[test]
fn a_payload_with_bytes_left_over_does_not_decode() {
    // A 300-byte string starts with the varint 300, which would decode as
    // the port 300 if the rest were ignored.
    let string = postcard::to_allocvec(&"x".repeat(300)).unwrap();
    assert!(!payload_decodes::<u16>(&string));
    assert!(payload_decodes::<u16>(
        &postcard::to_allocvec(&300u16).unwrap()
    ));
}

#[test]
fn events_follow_the_order_of_changes() {
    let chart = chart();
    let mut events = chart.subscribe();
    chart.apply(joined(5));
    chart.apply(left(5, LeftReason::Died));
    chart.apply(joined(5));
    assert!(matches!(events.try_recv(), Ok(Some(Event::Joined(e))) if e.id == 5));
    assert_eq!(
        events.try_recv(),
        Ok(Some(Event::Left {
            id: 5,
            reason: LeftReason::Died
        }))
    );
    assert!(matches!(events.try_recv(), Ok(Some(Event::Joined(e))) if e.id == 5));
    assert_eq!(chart.size(), 2);
}

/// The race of issue 8: `forget` removed the entry from the chart, then an
/// already queued `Joined`/`Updated` put it back, then the protocol forgot
/// it, leaving an entry nothing would ever remove. Now, while discovery
/// runs, `forget` only asks the protocol, and the entry leaves when the
/// protocol says so, after every change queued before it.
#[test]
fn forget_while_running_leaves_the_view_to_the_protocol() {
    let chart = chart();
    let run = chart.begin_run().unwrap();
    chart.apply(joined(5));
    assert!(chart.forget(5));
    // A change the protocol queued before it handled the forget request.
    chart.apply(Change::Updated(info(
        5,
        postcard::to_allocvec(&9u16).unwrap(),
    )));
    assert_eq!(chart.take_requests().forget, vec![5]);
    // The protocol forgets it and reports so.
    chart.apply(left(5, LeftReason::Forgotten));
    assert_eq!(chart.get_msg(5), None, "no stale entry is left behind");
    drop(run);
}

#[test]
fn forget_while_nothing_runs_changes_the_view_at_once() {
    let chart = chart();
    let run = chart.begin_run().unwrap();
    chart.apply(joined(5));
    chart.apply(joined(6));
    // The run ends: everything leaves the view.
    let mut events = chart.subscribe();
    drop(run);
    assert_eq!(chart.size(), 1);
    assert_eq!(
        events.try_recv(),
        Ok(Some(Event::Left {
            id: 5,
            reason: LeftReason::Stopped
        }))
    );
    assert!(!chart.forget(5));
}

#[test]
fn a_shutdown_while_nothing_runs_does_not_reach_the_next_run() {
    let chart = chart();
    chart.shutdown();
    chart.shutdown();
    let _ = chart.set_msg(7);
    let run = chart.begin_run().unwrap();
    assert!(chart.take_requests().is_empty());
    assert_eq!(chart.our_msg(), 7, "the new message is kept for the run");
    drop(run);
}

#[test]
fn only_one_run_at_a_time_and_its_end_frees_the_chart() {
    let chart = chart();
    let run = chart.begin_run().unwrap();
    assert!(chart.begin_run().is_none());
    assert!(chart.status().running);
    drop(run);
    assert!(!chart.status().running);
    assert!(chart.begin_run().is_some());
}

/// instance-chart's `exchange_id` example exits as soon as it has found
/// everyone, so its goodbye can follow its join before the waiting task
/// of a peer runs. Sampling the size then saw 1 and waited forever; the
/// ordered events show the join.
#[tokio::test(flavor = "current_thread")]
async fn a_peer_that_joins_and_leaves_before_the_waiter_runs_was_still_found() {
    let chart = chart();
    let waiter = tokio::spawn({
        let chart = chart.clone();
        async move { crate::discovery::found_everyone(&chart, 2).await }
    });
    // Let the waiter subscribe, then join and leave with no await between.
    tokio::task::yield_now().await;
    chart.apply(joined(5));
    chart.apply(left(5, LeftReason::Goodbye));
    tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
        .await
        .expect("the join was missed")
        .unwrap();
}

#[test]
fn a_chart_of_raw_payloads_takes_every_payload_as_it_travels_and_announces_bytes_as_given() {
    let raw = ChartBuilder::new()
        .with_id(0)
        .custom_msg(RawPayload(vec![0xea, 0x3e]))
        .finish()
        .unwrap();
    // What a `with_service_port(8042)` chart announces.
    assert_eq!(raw.our_payload(), postcard::to_allocvec(&8042u16).unwrap());
    let odd = vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(payload_decodes::<RawPayload>(&odd), "anything is accepted");
    assert!(!payload_decodes::<u16>(&odd));
    raw.apply(Change::Joined(info(5, odd.clone())));
    assert_eq!(raw.get_msg(5), Some(RawPayload(odd)));
}

#[tokio::test]
async fn details_are_none_while_nothing_runs_and_end_with_the_run() {
    let c = chart();
    assert_eq!(c.details().await, None);
    let guard = c.begin_run().unwrap();
    let waiting = tokio::spawn({
        let c = c.clone();
        async move { c.details().await }
    });
    // The request reaches the (absent) driver; the run ends unanswered.
    while !c.view().control.take().details {
        tokio::task::yield_now().await;
    }
    drop(guard);
    assert_eq!(waiting.await.unwrap(), None);
}
