//! The driver as a user meets it: set-up errors that cannot be lost,
//! requests that take effect at once and only on the run they were made
//! for, and a network that is missing at start. Run inside a private network
//! namespace (`scripts/test`).
//!
//! Each test uses its own discovery port and namespace.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Duration;

use cohort::{ChartBuilder, DiscoveryError, Event, LeftReason, Schedule, discovery};
use tokio::time::timeout;

/// Failure bound only: everything here takes milliseconds when it works.
const BOUND: Duration = Duration::from_secs(5);

fn builder(port: u16, id: u64) -> ChartBuilder<cohort::builder::WithId> {
    ChartBuilder::new()
        .with_id(id)
        .with_discovery_port(port)
        .with_namespace(format!("driver-test-{port}"))
        .local_discovery(true)
        .loopback_only()
}

/// A schedule whose timers are all seconds away once two instances have
/// met: anything that arrives sooner was sent because of an input, not a
/// timer.
const SLOW: Schedule = Schedule {
    first_interval: Duration::from_secs(10),
    max_interval: Duration::from_secs(10),
    eager_announcements: 1,
    ttl: Duration::from_secs(20),
};

#[tokio::test]
async fn a_new_message_is_announced_at_once_not_at_the_next_timer() {
    let port = 47921;
    let a = builder(port, 1)
        .with_schedule(SLOW)
        .with_service_port(1)
        .finish()
        .unwrap();
    let b = builder(port, 2)
        .with_schedule(SLOW)
        .with_service_port(2)
        .finish()
        .unwrap();
    let _da = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    for chart in [&a, &b] {
        timeout(BOUND, discovery::found_everyone(chart, 2))
            .await
            .unwrap();
    }
    let mut events = b.subscribe();
    // The first update may ride on a datagram still in flight from the
    // handshake (any input made the old driver send what was queued); by
    // the second, nothing is left to carry it but the driver itself.
    for port in [7, 8] {
        a.set_service_port(port);
        // The next timer of either instance is seconds away.
        loop {
            match timeout(BOUND, events.recv()).await {
                Err(_) => panic!("port {port} did not arrive before the next timer"),
                Ok(Ok(Event::Updated(entry))) if entry.id == 1 && entry.msg == port => break,
                Ok(_) => {}
            }
        }
    }
    assert_eq!(a.our_service_port(), 8);
}

#[tokio::test]
async fn a_shutdown_while_discovery_is_not_running_does_not_stop_the_next_run() {
    let port = 47922;
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2).with_service_port(2).finish().unwrap();
    a.shutdown();
    a.shutdown();
    let maintain = tokio::spawn(discovery::maintain(a.clone()));
    let _db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .expect("the run ended at once, poisoned by an earlier shutdown");
    assert!(!maintain.is_finished());
    a.shutdown();
    timeout(BOUND, maintain).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn a_handle_of_an_ended_run_cannot_stop_a_later_run() {
    let port = 47923;
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2).with_service_port(2).finish().unwrap();
    let first = discovery::spawn(&a).unwrap();
    timeout(BOUND, first.shutdown()).await.unwrap().unwrap();
    let _second = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    assert!(a.status().running);
}

#[tokio::test]
async fn dropping_the_handle_says_goodbye_and_frees_the_chart() {
    let port = 47924;
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2).with_service_port(2).finish().unwrap();
    let _da = discovery::spawn(&a).unwrap();
    let mut events = a.subscribe();
    let db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    drop(db);
    let reason = loop {
        if let Event::Left { id: 2, reason } = timeout(BOUND, events.recv()).await.unwrap().unwrap()
        {
            break reason;
        }
    };
    assert_eq!(reason, LeftReason::Goodbye);
    // b's run ended: its view is empty and a new run may start.
    timeout(BOUND, b.watch_status().wait_for(|s| !s.running))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.size(), 1);
    let _again = discovery::spawn(&b).unwrap();
}

#[tokio::test]
async fn a_port_held_without_reuseport_is_reported_by_spawn_itself() {
    let port = 47925;
    let _holder = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    match discovery::spawn(&a) {
        Err(DiscoveryError::PortInUse { port: p, .. }) => assert_eq!(p, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    assert!(!a.status().running, "a failed start leaves nothing running");
}

#[test]
fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let a = builder(47926, 1).with_service_port(1).finish().unwrap();
    assert!(matches!(
        discovery::spawn(&a),
        Err(DiscoveryError::NoRuntime)
    ));
}

#[tokio::test]
async fn details_say_when_and_where_each_peer_was_heard_and_same_host_entries_prove_their_process()
{
    let port = 47928;
    let a = builder(port, 1).with_service_port(1).finish().unwrap();
    let b = builder(port, 2).with_service_port(2).finish().unwrap();
    assert_eq!(a.details().await, None, "nothing runs yet");
    let _da = discovery::spawn(&a).unwrap();
    let _db = discovery::spawn(&b).unwrap();
    timeout(BOUND, discovery::found_everyone(&a, 2))
        .await
        .unwrap();
    let details = timeout(BOUND, a.details()).await.unwrap().unwrap();
    let [peer] = &details[..] else {
        panic!("{details:?}")
    };
    assert_eq!(peer.id, 2);
    assert!(peer.same_host && peer.learned.lan);
    assert!(peer.last_heard.unwrap() < BOUND);
    assert_eq!(peer.addrs[0].address.ip, Ipv4Addr::LOCALHOST);
    assert!(
        peer.addrs[0].address.interface.is_some(),
        "the interface it was heard on"
    );
    assert_eq!(peer.payload, postcard::to_allocvec(&2u16).unwrap());
    // b runs in this very process: its entry names it, and the check says so.
    let entry = a.get(2).unwrap();
    assert!(entry.same_host());
    let identity = entry.process_identity().unwrap();
    assert_eq!(identity.pid, std::process::id());
}

/// Child side of the no-interface test, run in a network namespace of its
/// own where only loopback is up: the state of a laptop before its network
/// comes up. It starts discovery with the default interfaces, reports the
/// status, waits for "up" on stdin, brings a veth pair up itself, and
/// reports once discovery is listening on it.
#[test]
#[ignore = "child process of the no-interface test"]
fn no_interface_child() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let a = ChartBuilder::new()
            .with_id(1)
            .with_discovery_port(47927)
            .with_namespace("driver-no-interface")
            .with_service_port(1)
            .finish()
            .unwrap();
        let _da = discovery::spawn(&a).expect("no network is not a set-up error");
        let mut watch = a.watch_status();
        timeout(BOUND, watch.wait_for(|s| !s.problems.is_empty()))
            .await
            .expect("the missing interface shows in the status")
            .unwrap();
        let status = a.status();
        assert!(!status.joined);
        println!("status {}", status.problems[0]);
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "up");
        for args in [
            "link add v0 type veth peer name v1",
            "addr add 10.9.0.1/24 dev v0",
            "addr add 10.9.0.2/24 dev v1",
            "link set v0 up",
            "link set v1 up",
        ] {
            let ok = Command::new("ip").args(args.split(' ')).status().unwrap();
            assert!(ok.success(), "ip {args}");
        }
        // Netlink tells the driver; it opens the new interfaces and joins.
        timeout(BOUND, watch.wait_for(|s| s.joined && s.problems.is_empty()))
            .await
            .unwrap_or_else(|_| panic!("still {:?}", a.status()))
            .unwrap();
        assert!(a.stats().io.interface_changes >= 1);
        println!("joined {:?}", a.status());
    });
}

#[test]
fn discovery_without_an_interface_says_so_and_starts_when_one_comes_up() {
    if !namespaces_possible() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$@\"",
            "child",
        ])
        .arg(&exe)
        .args([
            "--exact",
            "no_interface_child",
            "--ignored",
            "--nocapture",
            "--quiet",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The child's own lines, without the test harness's.
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.starts_with("status ") || l.starts_with("joined "));
    let status = lines.next().expect("the child printed no status");
    assert!(
        status.starts_with("status no usable network interface"),
        "unexpected status: {status}"
    );
    writeln!(child.stdin.as_mut().unwrap(), "up").unwrap();
    let joined = lines.next().expect("the child never joined");
    assert!(joined.starts_with("joined "), "{joined}");
    assert!(child.wait().unwrap().success());
}

/// Whether this process may create network namespaces. Where it may not,
/// the test cannot run: that fails under CI and is a printed skip
/// elsewhere.
fn namespaces_possible() -> bool {
    let ok = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let why = "cannot create a network namespace here (needs root)";
        assert!(std::env::var_os("CI").is_none(), "{why}, and CI is set");
        println!("SKIPPED: {why}");
    }
    ok
}
