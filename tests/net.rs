//! Real sockets on loopback. Run inside a private network namespace
//! (`.ci/run` does; by hand: `../shared/bin/isolated cargo test --test net`).
//!
//! Each test uses its own discovery port and namespace, so tests running in
//! parallel threads never see each other's instances.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use cohort::protocol::Schedule;
use cohort::{Chart, ChartBuilder, DiscoveryError, Event, LeftReason, Message, discovery};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

/// Generous failure bound: discovery on loopback takes milliseconds; this
/// only keeps a broken build from hanging CI.
const BOUND: Duration = Duration::from_secs(10);

fn builder(port: u16, id: u64) -> ChartBuilder<cohort::builder::WithId> {
    ChartBuilder::new()
        .with_id(id)
        .with_discovery_port(port)
        .with_namespace(format!("net-test-{port}"))
        .local_discovery(true)
        .loopback_only()
}

async fn all_find_each_other<M: Message>(charts: &[Chart<M>]) {
    for chart in charts {
        timeout(BOUND, discovery::found_everyone(chart, charts.len() as u16))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "chart {} knows {} of {} instances",
                    chart.our_id(),
                    chart.size(),
                    charts.len()
                )
            });
    }
}

#[tokio::test]
async fn charts_in_one_process_find_each_other_and_their_service_ports() {
    let charts: Vec<_> = (1..=5)
        .map(|id| {
            builder(47901, id)
                .with_service_port(9000 + id as u16)
                .finish()
                .unwrap()
        })
        .collect();
    for chart in &charts {
        tokio::spawn(discovery::maintain(chart.clone()));
    }
    all_find_each_other(&charts).await;
    let mut addrs = charts[0].addr_vec();
    addrs.sort();
    let expected: Vec<_> = (2..=5)
        .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16))))
        .collect();
    assert_eq!(addrs, expected);
    assert_eq!(
        charts[0].get_addr(3),
        Some(SocketAddr::from(([127, 0, 0, 1], 9003)))
    );
    assert_eq!(
        charts[0].get_addr(1),
        None,
        "a chart lists others, not itself"
    );
}

#[tokio::test]
async fn charts_with_several_service_ports_list_every_address() {
    let charts: Vec<_> = (1..=3)
        .map(|id| {
            builder(47902, id)
                .with_service_ports([8000 + id as u16, 9000 + id as u16])
                .finish()
                .unwrap()
        })
        .collect();
    for chart in &charts {
        tokio::spawn(discovery::maintain(chart.clone()));
    }
    all_find_each_other(&charts).await;
    let lists = charts[2].addr_lists_vec();
    assert_eq!(lists.len(), 2);
    let ip = Ipv4Addr::LOCALHOST;
    assert_eq!(
        lists[0],
        (
            1,
            [SocketAddr::from((ip, 8001)), SocketAddr::from((ip, 9001))]
        )
    );
    assert_eq!(
        charts[2].nth_addr_vec::<1>(),
        vec![
            (1, SocketAddr::from((ip, 9001))),
            (2, SocketAddr::from((ip, 9002)))
        ]
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Node {
    role: String,
    weight: u32,
}

#[tokio::test]
async fn charts_carry_custom_payloads() {
    let charts: Vec<_> = (1..=3)
        .map(|id| {
            builder(47903, id)
                .custom_msg(Node {
                    role: format!("worker-{id}"),
                    weight: id as u32 * 10,
                })
                .finish()
                .unwrap()
        })
        .collect();
    for chart in &charts {
        tokio::spawn(discovery::maintain(chart.clone()));
    }
    all_find_each_other(&charts).await;
    assert_eq!(
        charts[0].get_msg(2),
        Some(Node {
            role: "worker-2".into(),
            weight: 20
        })
    );
    let entries = charts[1].entries();
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1, 3]);
}

#[tokio::test]
async fn garbage_sent_to_the_discovery_port_does_not_stop_discovery() {
    let port = 47904;
    let first = builder(port, 1).with_service_port(1).finish().unwrap();
    tokio::spawn(discovery::maintain(first.clone()));
    // Wait until `first` is actually listening: its own chart cannot tell us,
    // so use a sniffer that only succeeds once `first` answers its query.
    let sniffer = builder(port, 99).with_service_port(0).finish().unwrap();
    tokio::spawn(discovery::sniff(sniffer.clone()));
    timeout(BOUND, discovery::found_everyone(&sniffer, 2))
        .await
        .unwrap();

    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&attacker)
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .unwrap();
    let group = SocketAddr::from((cohort::builder::DEFAULT_GROUP, port));
    let mut garbage: Vec<Vec<u8>> = vec![
        vec![],
        b"hello".to_vec(),
        vec![0xff; 9000],
        b"cht\0".to_vec(),
        b"cht\0\x02\x00".to_vec(),
        b"cht\0\x09whatever".to_vec(),
    ];
    // Valid magic, version and mode (open), body of random-looking bytes.
    for seed in 0..200u32 {
        let mut g = b"cht\0\x02\x00".to_vec();
        g.extend(
            (0..(seed % 60))
                .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 97) >> 7) as u8),
        );
        garbage.push(g);
    }
    for g in &garbage {
        attacker.send_to(g, group).unwrap();
    }
    let second = builder(port, 2).with_service_port(2).finish().unwrap();
    tokio::spawn(discovery::maintain(second.clone()));
    all_find_each_other(&[first.clone(), second.clone()]).await;
    for g in &garbage {
        attacker.send_to(g, group).unwrap();
    }
    let third = builder(port, 3).with_service_port(3).finish().unwrap();
    tokio::spawn(discovery::maintain(third.clone()));
    all_find_each_other(&[first.clone(), second, third]).await;
    // `first` heard both floods; every datagram is counted by reason. Per
    // flood: "hello" has bad magic; empty, "cht\0" and a bare header are
    // truncated; 9000 bytes is oversize; version 9 is unsupported; the rest
    // are truncated or malformed bodies.
    let stats = first.stats().protocol;
    assert_eq!(stats.dropped_bad_magic, 2, "{stats:?}");
    assert_eq!(stats.dropped_oversize, 2, "{stats:?}");
    assert_eq!(stats.dropped_bad_version, 2, "{stats:?}");
    assert!(stats.dropped_truncated >= 4, "{stats:?}");
    assert!(stats.dropped_malformed > 0, "{stats:?}");
    assert_eq!(
        stats.dropped_truncated + stats.dropped_malformed,
        2 * (garbage.len() as u64 - 3),
        "{stats:?}"
    );
    assert_eq!(stats.joined, 2, "second and third");
}

#[tokio::test]
async fn a_sniffer_fills_its_chart_without_appearing_in_anyone_elses() {
    let port = 47905;
    let mut charts: Vec<_> = (1..=3)
        .map(|id| builder(port, id).with_service_port(1).finish().unwrap())
        .collect();
    for chart in &charts {
        tokio::spawn(discovery::maintain(chart.clone()));
    }
    all_find_each_other(&charts).await;
    let sniffer = builder(port, 50).with_service_port(0).finish().unwrap();
    tokio::spawn(discovery::sniff(sniffer.clone()));
    timeout(BOUND, discovery::found_everyone(&sniffer, 4))
        .await
        .unwrap();
    // The sniffer's query reached every group socket before the newcomer's
    // announcement did (one sender's datagrams stay in order on loopback).
    // So once everyone knows the newcomer, they have all handled the query,
    // and a querier that got charted would be visible now.
    let newcomer = builder(port, 4).with_service_port(1).finish().unwrap();
    tokio::spawn(discovery::maintain(newcomer.clone()));
    charts.push(newcomer);
    all_find_each_other(&charts).await;
    for chart in &charts {
        assert_eq!(
            chart.get_msg(50),
            None,
            "chart {} lists the sniffer",
            chart.our_id()
        );
    }
}

#[tokio::test]
async fn a_dropped_maintain_says_goodbye_and_shutdown_returns_ok() {
    let port = 47906;
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2).with_service_port(2).finish().unwrap();
    let c = builder(port, 3).with_service_port(3).finish().unwrap();
    let mut events = a.subscribe();
    tokio::spawn(discovery::maintain(a.clone()));
    let b_task = tokio::spawn(discovery::maintain(b.clone()));
    let c_task = tokio::spawn(discovery::maintain(c.clone()));
    all_find_each_other(&[a.clone(), b.clone(), c.clone()]).await;

    b_task.abort();
    c.shutdown();
    assert!(matches!(
        timeout(BOUND, c_task).await.unwrap().unwrap(),
        Ok(())
    ));
    let mut left = Vec::new();
    while left.len() < 2 {
        match timeout(BOUND, events.recv()).await.unwrap().unwrap() {
            Event::Left { id, reason } => left.push((id, reason)),
            Event::Joined(_) | Event::Updated(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    left.sort_by_key(|(id, _)| *id);
    assert_eq!(
        left,
        vec![(2, LeftReason::Goodbye), (3, LeftReason::Goodbye)]
    );
    assert_eq!(a.size(), 1);
}

#[tokio::test]
async fn forgetting_a_live_peer_reports_it_and_it_rejoins_on_its_next_packet() {
    let port = 47907;
    // A short steady interval, so b's next announcement comes soon.
    let schedule = Schedule {
        first_interval: Duration::from_millis(20),
        max_interval: Duration::from_millis(100),
        eager_announcements: 1,
        ttl: Duration::from_secs(1),
    };
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2)
        .with_schedule(schedule)
        .with_service_port(2)
        .finish()
        .unwrap();
    tokio::spawn(discovery::maintain(a.clone()));
    tokio::spawn(discovery::maintain(b.clone()));
    all_find_each_other(&[a.clone(), b.clone()]).await;
    let mut events = a.subscribe();
    assert!(a.forget(2));
    assert_eq!(
        events.recv().await.unwrap(),
        Event::Left {
            id: 2,
            reason: LeftReason::Forgotten
        }
    );
    // `b`'s next scheduled announcement brings it back into `a`'s chart.
    match timeout(BOUND, events.recv()).await.unwrap().unwrap() {
        Event::Joined(entry) => assert_eq!(entry.id, 2),
        other => panic!("expected b to rejoin, got {other:?}"),
    }
}

#[tokio::test]
async fn running_discovery_twice_for_one_chart_is_an_error() {
    let a = builder(47908, 1).with_service_port(1).finish().unwrap();
    let mut one = tokio::spawn(discovery::maintain(a.clone()));
    let mut two = tokio::spawn(discovery::maintain(a.clone()));
    // Whichever starts second must fail at once; the other keeps running.
    let first_to_end = timeout(BOUND, async {
        tokio::select! {
            r = &mut one => r,
            r = &mut two => r,
        }
    })
    .await
    .expect("neither maintain ended")
    .unwrap();
    assert!(
        matches!(first_to_end, Err(DiscoveryError::AlreadyRunning)),
        "{first_to_end:?}"
    );
    assert!(!(one.is_finished() && two.is_finished()));
}

/// Child side of the multi-process test, started by it with `--ignored`:
/// prints "ready [ids]" once it knows every instance.
#[test]
#[ignore = "child process of charts_in_separate_processes_find_each_other"]
fn child_process_entry() {
    let port: u16 = std::env::var("COHORT_CHILD_PORT").unwrap().parse().unwrap();
    let id: u64 = std::env::var("COHORT_CHILD_ID").unwrap().parse().unwrap();
    let total: u16 = std::env::var("COHORT_CHILD_TOTAL")
        .unwrap()
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let chart = builder(port, id)
            .with_service_port(id as u16)
            .finish()
            .unwrap();
        tokio::spawn(discovery::maintain(chart.clone()));
        discovery::found_everyone(&chart, total).await;
        let mut ids: Vec<_> = chart.addr_vec().into_iter().map(|(id, _)| id).collect();
        ids.sort();
        println!("ready {ids:?}");
        // Stay until the parent closes our stdin, so late joiners still get
        // replies from us.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    });
}

#[test]
fn charts_in_separate_processes_find_each_other() {
    use std::io::{BufRead, BufReader};
    use std::sync::mpsc;
    let total = 4u64;
    let exe = std::env::current_exe().unwrap();
    let (lines, ready) = mpsc::channel();
    let mut children = Vec::new();
    for id in 1..=total {
        let mut child = Command::new(&exe)
            .args(["--exact", "child_process_entry", "--ignored", "--nocapture"])
            .env("COHORT_CHILD_PORT", "47909")
            .env("COHORT_CHILD_ID", id.to_string())
            .env("COHORT_CHILD_TOTAL", total.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if line.starts_with("ready") {
                    let _ = lines.send((id, line));
                }
            }
        });
        children.push(child);
    }
    let mut seen = Vec::new();
    for _ in 1..=total {
        let (id, line) = ready
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("only {seen:?} found everyone"));
        let others: Vec<u64> = (1..=total).filter(|&x| x != id).collect();
        assert_eq!(line, format!("ready {others:?}"));
        seen.push(id);
    }
    for mut child in children {
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
    }
}
