//! The surface instance-chart 0.4 users rely on, so that switching crates
//! is a rename: `notify()` tuples, `u16` cohort sizes, `our_*` accessors,
//! `get_nth_addr`, and `maintain` spawned with its result ignored. Run inside
//! a private network namespace (`scripts/test`).

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use cohort::{ChartBuilder, discovery};
use tokio::time::timeout;

const BOUND: Duration = Duration::from_secs(10);

fn builder(port: u16, id: u64) -> ChartBuilder<cohort::builder::WithId> {
    ChartBuilder::new()
        .with_id(id)
        .with_discovery_port(port)
        .with_namespace(format!("ic-api-{port}"))
        .local_discovery(true)
        .loopback_only()
}

#[tokio::test]
async fn notify_yields_joins_as_tuples_with_the_port_at_index_zero() {
    let port = 47931;
    let cohort_size: u16 = 4;
    let watcher = builder(port, 1).with_service_port(9001).finish().unwrap();
    let mut joins = watcher.notify();
    let _ignored = tokio::spawn(discovery::maintain(watcher.clone()));
    let others: Vec<_> = (2..=u64::from(cohort_size))
        .map(|id| {
            let chart = builder(port, id)
                .with_service_port(9000 + id as u16)
                .finish()
                .unwrap();
            tokio::spawn(discovery::maintain(chart.clone()));
            chart
        })
        .collect();
    let mut seen = Vec::new();
    while watcher.size() < usize::from(cohort_size) || seen.len() < others.len() {
        let (id, ip, msg) = timeout(BOUND, joins.recv()).await.unwrap().unwrap();
        seen.push(SocketAddr::new(ip, msg[0]));
        assert_eq!(msg[0], 9000 + id as u16);
    }
    seen.sort();
    let expected: Vec<_> = (2..=4u16)
        .map(|id| SocketAddr::from((Ipv4Addr::LOCALHOST, 9000 + id)))
        .collect();
    assert_eq!(seen, expected);
    for chart in &others {
        timeout(BOUND, discovery::found_everyone(chart, cohort_size))
            .await
            .unwrap();
        timeout(BOUND, discovery::found_majority(chart, cohort_size))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn multi_port_charts_answer_by_index_and_say_what_they_announce() {
    let port = 47932;
    let a = builder(port, 1)
        .with_service_ports([7001, 8001, 9001])
        .finish()
        .unwrap();
    let b = builder(port, 2)
        .with_service_ports([7002, 8002, 9002])
        .finish()
        .unwrap();
    let mut joins = a.notify();
    let _da = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    let (id, addrs) = timeout(BOUND, joins.recv_addresses())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 2);
    assert_eq!(addrs[2], SocketAddr::from((Ipv4Addr::LOCALHOST, 9002)));
    assert_eq!(
        a.get_nth_addr::<1>(2),
        Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 8002)))
    );
    assert_eq!(a.get_nth_addr::<1>(3), None);
    assert_eq!(a.our_service_ports(), [7001, 8001, 9001]);
    assert_eq!(a.our_msg().0, [7001, 8001, 9001]);
    // A chart is Debug, as instance-chart users print it.
    let printed = format!("{a:?}");
    assert!(printed.contains("id: 1"), "{printed}");
}

#[tokio::test]
async fn one_port_charts_give_the_service_address_and_their_own_port() {
    let port = 47933;
    let a = builder(port, 1).with_service_port(6001).finish().unwrap();
    let b = builder(port, 2).with_service_port(6002).finish().unwrap();
    let mut joins = a.notify();
    let _da = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    let (id, addr) = timeout(BOUND, joins.recv_addr()).await.unwrap().unwrap();
    assert_eq!(
        (id, addr),
        (2, SocketAddr::from((Ipv4Addr::LOCALHOST, 6002)))
    );
    assert_eq!(a.our_service_port(), 6001);
    assert_eq!(b.our_msg(), 6002);
}
