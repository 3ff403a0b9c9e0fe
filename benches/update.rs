//! How long a live update takes to reach every peer: the time from
//! `set_service_port` in one process until each of 9 peer processes has
//! seen the `Updated` event. Run it inside a private network namespace:
//!
//! ```text
//! cargo bench --bench update --no-run
//! scripts/isolated cargo bench --bench update --offline
//! ```
//!
//! Peers are separate processes on one host (loopback only, local discovery
//! on, default preset); each prints the wall-clock time at which it saw the
//! update, and the figure is the **last** of them minus the instant just
//! before `set_service_port` was called. Updates are spaced a second apart,
//! long after the eager phase, so they ride on no scheduled announcement.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{child_runtime, loopback_chart, summary, wall_ns};

use cohort::{Event, discovery};

const PORT: u16 = 47970;
const PEERS: usize = 9;
const UPDATES: u16 = 30;

fn main() {
    if let Ok(namespace) = std::env::var("COHORT_BENCH_CHILD") {
        child(&namespace);
        return;
    }
    let namespace = format!("update-{}", std::process::id());
    let (tx, lines) = mpsc::channel();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<Child> = (0..PEERS)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env("COHORT_BENCH_CHILD", &namespace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            let tx = tx.clone();
            let out = BufReader::new(child.stdout.take().unwrap());
            std::thread::spawn(move || {
                for line in out.lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            child
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let samples = rt.block_on(async {
        let chart = loopback_chart(PORT, &namespace);
        let _discovery = discovery::spawn(&chart).unwrap();
        let mut ready = 0;
        while ready < PEERS {
            let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
            ready += usize::from(line == "ready");
        }
        let me = chart.our_id();
        let mut samples = Vec::new();
        for port in 1..=UPDATES {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let before = wall_ns();
            chart.set_service_port(2000 + port);
            let mut last = 0;
            let mut seen = 0;
            while seen < PEERS {
                let line = lines.recv_timeout(Duration::from_secs(30)).unwrap();
                let parts: Vec<&str> = line.split(' ').collect();
                if let ["updated", id, p, at] = parts[..]
                    && id == me.to_string()
                    && p == (2000 + port).to_string()
                {
                    seen += 1;
                    last = last.max(at.parse::<u128>().unwrap());
                }
            }
            samples.push(Duration::from_nanos((last - before) as u64));
        }
        samples
    });
    println!(
        "set_service_port -> Updated seen by all {PEERS} peer processes: {}",
        summary(samples)
    );
    for mut child in children {
        drop(child.stdin.take());
        let _ = child.wait();
    }
}

/// A peer: prints `ready` once it knows all, then `updated <id> <port> <ns>`
/// for every update it sees; leaves when its stdin closes.
fn child(namespace: &str) {
    child_runtime().block_on(async {
        let chart = loopback_chart(PORT, namespace);
        let mut events = chart.subscribe();
        let discovery = discovery::spawn(&chart).unwrap();
        discovery::found_everyone(&chart, PEERS as u16 + 1).await;
        println!("ready");
        let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for _ in std::io::stdin().lines().map_while(Result::ok) {}
            let _ = eof_tx.send(());
        });
        loop {
            tokio::select! {
                event = events.recv() => {
                    if let Ok(Event::Updated(entry)) = event {
                        println!("updated {} {} {}", entry.id, entry.msg, wall_ns());
                    }
                }
                _ = &mut eof => break,
            }
        }
        let _ = discovery.shutdown().await;
    });
}
