//! Convergence of real processes on one host, and their idle cost.
//!
//! Run it inside a private network namespace (it opens sockets):
//!
//! ```text
//! cargo bench --bench converge --no-run
//! ../shared/bin/isolated cargo bench --bench converge --offline
//! ```
//!
//! Scenarios (each child is a separate process running one chart, loopback
//! only, local discovery on):
//! - **together**: N processes started at once; time from the *last* one's
//!   start (just before `maintain`) until every one knows all N;
//! - **newcomer**: 100 running peers, one more starts; time from its start
//!   until it knows all 100;
//! - **idle**: 10 converged instances; CPU time they use over a window,
//!   summed over all their threads from `/proc/<pid>/task/*/schedstat`.
//!
//! Timestamps cross process boundaries, so they are wall-clock (CLOCK_REALTIME)
//! nanoseconds; on one host, within seconds, that is accurate to microseconds.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{child_runtime, cpu_ns, loopback_chart, summary, wall_ns};

use cohort::discovery;

const PORT: u16 = 47950;

fn main() {
    if let Ok(role) = std::env::var("COHORT_BENCH_CHILD") {
        child(&role);
        return;
    }
    // `cargo bench` passes `--bench`; ignore arguments otherwise.
    let runs = 5;
    println!("cohort convergence benchmark ({runs} runs each; median [min, max])");
    for n in [2usize, 10, 50, 100] {
        let samples: Vec<Duration> = (0..runs).map(|run| together(n, run)).collect();
        println!("together  n={n:<4} {}", summary(samples));
    }
    let samples: Vec<Duration> = (0..runs).map(newcomer).collect();
    println!("newcomer  peers=100 {}", summary(samples));
    let cpu = idle_cpu(10, Duration::from_secs(30));
    println!(
        "idle      n=10 CPU per instance per minute: {:.3} ms (median [min, max] over instances: {})",
        cpu.iter().sum::<f64>() / cpu.len() as f64,
        summary(
            cpu.iter()
                .map(|ms| Duration::from_secs_f64(ms / 1000.0))
                .collect()
        )
    );
}

/// One benchmark child: `COHORT_BENCH_CHILD=<namespace>/<total>`.
fn child(role: &str) {
    let (namespace, total) = role.split_once('/').unwrap();
    let total: u16 = total.parse().unwrap();
    let rt = child_runtime();
    rt.block_on(async {
        let chart = loopback_chart(PORT, namespace);
        println!("start {}", wall_ns());
        let task = tokio::spawn(discovery::maintain(chart.clone()));
        discovery::found_everyone(&chart, total).await;
        println!("done {}", wall_ns());
        // Run until the parent closes stdin, then leave gracefully.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
        chart.shutdown();
        let _ = task.await;
    });
}

struct Group {
    children: Vec<Child>,
    lines: mpsc::Receiver<(usize, String)>,
    tx: mpsc::Sender<(usize, String)>,
}

impl Group {
    fn new() -> Self {
        let (tx, lines) = mpsc::channel();
        Group {
            children: Vec::new(),
            lines,
            tx,
        }
    }

    fn spawn(&mut self, namespace: &str, total: usize) -> usize {
        let index = self.children.len();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("COHORT_BENCH_CHILD", format!("{namespace}/{total}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn benchmark child");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send((index, line));
            }
        });
        self.children.push(child);
        index
    }

    /// Collects `start` and `done` stamps of the given children.
    fn wait_done(&self, of: &[usize]) -> (Vec<u128>, Vec<u128>) {
        let (mut starts, mut dones) = (Vec::new(), Vec::new());
        while dones.len() < of.len() {
            let (i, line) = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .expect("benchmark children did not converge within 60 s");
            if !of.contains(&i) {
                continue;
            }
            let (what, ns) = line.split_once(' ').unwrap();
            let ns: u128 = ns.parse().unwrap();
            match what {
                "start" => starts.push(ns),
                "done" => dones.push(ns),
                _ => {}
            }
        }
        (starts, dones)
    }

    fn stop(self) {
        for mut child in self.children {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
}

fn together(n: usize, run: usize) -> Duration {
    let namespace = format!("together-{n}-{run}");
    let mut group = Group::new();
    let all: Vec<usize> = (0..n).map(|_| group.spawn(&namespace, n)).collect();
    let (starts, dones) = group.wait_done(&all);
    group.stop();
    let last_start = starts.into_iter().max().unwrap();
    let last_done = dones.into_iter().max().unwrap();
    Duration::from_nanos(last_done.saturating_sub(last_start) as u64)
}

fn newcomer(run: usize) -> Duration {
    let namespace = format!("newcomer-{run}");
    let mut group = Group::new();
    let peers: Vec<usize> = (0..100).map(|_| group.spawn(&namespace, 100)).collect();
    group.wait_done(&peers);
    let late = group.spawn(&namespace, 101);
    let (starts, dones) = group.wait_done(&[late]);
    group.stop();
    Duration::from_nanos((dones[0] - starts[0]) as u64)
}

/// CPU milliseconds per instance per minute, one value per instance.
fn idle_cpu(n: usize, window: Duration) -> Vec<f64> {
    let mut group = Group::new();
    let all: Vec<usize> = (0..n).map(|_| group.spawn("idle", n)).collect();
    group.wait_done(&all);
    // Let the eager start-up announcements finish before measuring.
    std::thread::sleep(Duration::from_secs(5));
    let pids: Vec<u32> = group.children.iter().map(Child::id).collect();
    let before: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    std::thread::sleep(window);
    let after: Vec<u64> = pids.iter().map(|&p| cpu_ns(p)).collect();
    let _ = std::io::stdout().flush();
    group.stop();
    before
        .iter()
        .zip(&after)
        .map(|(b, a)| (a - b) as f64 / 1e6 * 60.0 / window.as_secs_f64())
        .collect()
}
