//! Liveness with real processes on loopback: how peers leave, and that no
//! event is lost. Run inside a private network namespace (`scripts/test`).
//!
//! The test binary re-executes itself as the peer processes
//! (`liveness_child`, ignored when run directly).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use cohort::{Chart, ChartBuilder, Event, LeftReason, Subscription, discovery};
use tokio::time::timeout;

/// Failure bound only; discovery on loopback takes milliseconds.
const BOUND: Duration = Duration::from_secs(20);

fn builder(port: u16, id: u64) -> ChartBuilder<cohort::builder::WithId> {
    ChartBuilder::new()
        .with_id(id)
        .with_discovery_port(port)
        .with_namespace(format!("liveness-{port}"))
        .local_discovery(true)
        .loopback_only()
}

/// A peer process: announces `COHORT_LIVE_ID` with service port = id,
/// prints "ready" once it knows `COHORT_LIVE_TOTAL` instances, then obeys
/// stdin: `port N` sets its service port; end of input or SIGTERM makes it
/// shut down gracefully.
#[test]
#[ignore = "child process of the liveness tests"]
fn liveness_child() {
    let env = |name: &str| std::env::var(name).unwrap().parse::<u64>().unwrap();
    let (port, id, total) = (
        env("COHORT_LIVE_PORT"),
        env("COHORT_LIVE_ID"),
        env("COHORT_LIVE_TOTAL"),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let chart = builder(port as u16, id)
            .with_service_port(id as u16)
            .finish()
            .unwrap();
        // Before "ready": once the parent reads it, it may send SIGTERM.
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        let task = tokio::spawn(discovery::maintain(chart.clone()));
        discovery::found_everyone(&chart, total as u16).await;
        println!("ready");
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        loop {
            tokio::select! {
                _ = term.recv() => break,
                line = lines.recv() => match line {
                    Some(line) => {
                        if let Some(port) = line.strip_prefix("port ") {
                            chart.set_service_port(port.parse().unwrap());
                        }
                    }
                    None => break,
                },
            }
        }
        chart.shutdown();
        task.await.unwrap().unwrap();
    });
}

struct Peers {
    children: Vec<Child>,
    ready: tokio::sync::mpsc::UnboundedReceiver<u64>,
}

fn spawn_peers(port: u16, ids: impl IntoIterator<Item = u64>, total: usize) -> Peers {
    let (tx, ready) = tokio::sync::mpsc::unbounded_channel();
    let exe = std::env::current_exe().unwrap();
    let children = ids
        .into_iter()
        .map(|id| {
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "liveness_child",
                    "--ignored",
                    "--nocapture",
                    "--quiet",
                ])
                .env("COHORT_LIVE_PORT", port.to_string())
                .env("COHORT_LIVE_ID", id.to_string())
                .env("COHORT_LIVE_TOTAL", total.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    if line == "ready" {
                        let _ = tx.send(id);
                    }
                }
            });
            child
        })
        .collect();
    Peers { children, ready }
}

impl Peers {
    /// Waits, without blocking the runtime (the observer's own discovery
    /// runs on it), until `n` peers have printed "ready".
    async fn wait_ready(&mut self, n: usize) {
        for _ in 0..n {
            timeout(BOUND, self.ready.recv())
                .await
                .expect("a peer process never became ready")
                .expect("peer output closed");
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `id` to leave; returns why and how long after `since`.
async fn left(events: &mut Subscription<u16>, id: u64, since: Instant) -> (LeftReason, Duration) {
    loop {
        match timeout(BOUND, events.recv())
            .await
            .expect("no departure seen")
        {
            Ok(Event::Left { id: left, reason }) if left == id => return (reason, since.elapsed()),
            Ok(_) => {}
            Err(lagged) => panic!("{lagged}"),
        }
    }
}

async fn observer(port: u16) -> (Chart<u16>, Subscription<u16>) {
    let chart = builder(port, 1000)
        .with_service_port(1000)
        .finish()
        .unwrap();
    let events = chart.subscribe();
    tokio::spawn(discovery::maintain(chart.clone()));
    (chart, events)
}

#[tokio::test]
async fn a_peer_process_stopped_with_sigterm_is_seen_leaving_with_goodbye() {
    let port = 47931;
    let (chart, mut events) = observer(port).await;
    let mut peers = spawn_peers(port, [1], 2);
    peers.wait_ready(1).await;
    assert!(chart.get_addr(1).is_some());
    let pid = peers.children[0].id().to_string();
    let sent = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let (reason, after) = left(&mut events, 1, sent).await;
    assert_eq!(reason, LeftReason::Goodbye);
    println!("goodbye seen {after:?} after SIGTERM");
}

#[tokio::test]
async fn a_same_host_peer_killed_with_sigkill_is_seen_dead_within_a_second() {
    let port = 47932;
    let (_chart, mut events) = observer(port).await;
    let mut peers = spawn_peers(port, [1], 2);
    peers.wait_ready(1).await;
    let killed = Instant::now();
    peers.children[0].kill().unwrap(); // SIGKILL: no goodbye is possible
    let (reason, after) = left(&mut events, 1, killed).await;
    assert_eq!(
        reason,
        LeftReason::Died,
        "seen through the process, not the TTL"
    );
    assert!(after < Duration::from_secs(1), "took {after:?}");
    println!("SIGKILL seen as died {after:?} after the kill");
}

#[tokio::test]
async fn a_live_update_of_the_service_port_reaches_peers() {
    let port = 47933;
    let (chart, mut events) = observer(port).await;
    let mut peers = spawn_peers(port, [1], 2);
    peers.wait_ready(1).await;
    assert_eq!(chart.get_addr(1).map(|a| a.port()), Some(1));
    let stdin: &mut ChildStdin = peers.children[0].stdin.as_mut().unwrap();
    writeln!(stdin, "port 4242").unwrap();
    loop {
        match timeout(BOUND, events.recv()).await.expect("no update seen") {
            Ok(Event::Updated(entry)) if entry.id == 1 => {
                assert_eq!(entry.msg, 4242);
                break;
            }
            Ok(_) => {}
            Err(lagged) => panic!("{lagged}"),
        }
    }
    assert_eq!(chart.get_addr(1).map(|a| a.port()), Some(4242));
}

#[tokio::test]
async fn no_event_is_lost_when_200_processes_join_at_once() {
    let port = 47934;
    let n = 200u64;
    let (chart, mut events) = observer(port).await;
    let mut peers = spawn_peers(port, 1..=n, n as usize + 1);
    let mut joined = HashSet::new();
    while joined.len() < n as usize {
        match timeout(BOUND, events.recv()).await {
            Ok(Ok(Event::Joined(entry))) => {
                assert!(joined.insert(entry.id), "{} joined twice", entry.id)
            }
            Ok(Ok(other)) => panic!("unexpected {other:?}"),
            Ok(Err(lagged)) => panic!("{lagged}"),
            Err(_) => panic!("only {} of {n} joins seen", joined.len()),
        }
    }
    assert_eq!(chart.size(), n as usize + 1);
    peers.wait_ready(n as usize).await;
}
