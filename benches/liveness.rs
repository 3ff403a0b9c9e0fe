//! How fast departures are seen, and what an idle cohort costs, with real
//! processes on one host. Run it inside a private network namespace:
//!
//! ```text
//! cargo bench --bench liveness --no-run
//! ../shared/bin/isolated cargo bench --bench liveness --offline
//! ```
//!
//! Every scenario runs 10 instances as separate processes (loopback only,
//! local discovery on, default preset). Each child prints what it sees with a
//! wall-clock timestamp; the figures are the time until the **last** of the
//! other 9 saw the departure:
//! - **SIGTERM**: graceful exit, seen as `goodbye`;
//! - **SIGKILL**: same-host crash, seen as `died` through the process;
//! - **SIGSTOP**: a frozen peer, alive to the kernel but silent: the path a
//!   crashed or disconnected *remote* peer takes (probes, then `expired`);
//! - **idle**: datagrams sent and CPU used per instance per minute once the
//!   schedule has settled.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod common;
use common::{child_runtime, cpu_ns, loopback_chart, summary, wall_ns};

use cohort::{Event, discovery};

const PORT: u16 = 47960;
const N: usize = 10;

fn main() {
    if let Ok(namespace) = std::env::var("COHORT_BENCH_CHILD") {
        child(&namespace);
        return;
    }
    let runs = 5;
    println!("cohort liveness benchmark: {N} processes on one host, default preset");
    // COHORT_BENCH_ONLY=idle measures only the idle cost (about 3 minutes).
    if std::env::var("COHORT_BENCH_ONLY").as_deref() == Ok("idle") {
        let (packets, cpu_ms) = idle(Duration::from_secs(60), Duration::from_secs(120));
        println!(
            "idle: {packets:.2} datagrams sent and {cpu_ms:.3} ms CPU per instance per minute"
        );
        return;
    }
    let term: Vec<_> = (0..runs)
        .map(|r| departure(&format!("term-{r}"), "-TERM", "Goodbye"))
        .collect();
    println!("SIGTERM -> goodbye seen by all: {}", summary(term));
    let kill: Vec<_> = (0..runs)
        .map(|r| departure(&format!("kill-{r}"), "-KILL", "Died"))
        .collect();
    println!("SIGKILL -> died seen by all:    {}", summary(kill));
    // Three frozen-peer runs at once: each takes about a TTL.
    let stops: Vec<_> = (0..3)
        .map(|r| std::thread::spawn(move || departure(&format!("stop-{r}"), "-STOP", "Expired")))
        .collect();
    let stop: Vec<_> = stops.into_iter().map(|t| t.join().unwrap()).collect();
    println!("SIGSTOP -> expired seen by all: {}", summary(stop));
    let (packets, cpu_ms) = idle(Duration::from_secs(60), Duration::from_secs(120));
    println!("idle: {packets:.2} datagrams sent and {cpu_ms:.3} ms CPU per instance per minute");
}

/// A benchmark child: prints `id <id>`, `ready`, `left <id> <reason> <ns>`,
/// and `stats <packets sent>` whenever a line arrives on stdin.
fn child(namespace: &str) {
    let rt = child_runtime();
    rt.block_on(async {
        let chart = loopback_chart(PORT, namespace);
        // Installed before anything is printed: the driver may signal as soon
        // as it has read our lines.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        println!("id {}", chart.our_id());
        let mut events = chart.subscribe();
        let task = tokio::spawn(discovery::maintain(chart.clone()));
        discovery::found_everyone(&chart, N as u16).await;
        println!("ready");
        let watcher = chart.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let Event::Left { id, reason } = event {
                    println!("left {id} {reason:?} {}", wall_ns());
                }
            }
            drop(watcher);
        });
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        loop {
            tokio::select! {
                line = lines.recv() => match line {
                    Some(_) => println!("stats {}", chart.stats().io.datagrams_sent),
                    None => break,
                },
                _ = terminate.recv() => break,
            }
        }
        chart.shutdown();
        let _ = task.await;
    });
}

struct Group {
    children: Vec<Child>,
    stdins: Vec<ChildStdin>,
    ids: Vec<u64>,
    lines: mpsc::Receiver<(usize, String)>,
}

impl Group {
    fn start(namespace: &str) -> Group {
        let (tx, lines) = mpsc::channel();
        let mut children = Vec::new();
        let mut stdins = Vec::new();
        for i in 0..N {
            let mut child = Command::new(std::env::current_exe().unwrap())
                .env("COHORT_BENCH_CHILD", namespace)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            stdins.push(child.stdin.take().unwrap());
            let stdout = BufReader::new(child.stdout.take().unwrap());
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in stdout.lines().map_while(Result::ok) {
                    let _ = tx.send((i, line));
                }
            });
            children.push(child);
        }
        let mut group = Group {
            children,
            stdins,
            ids: vec![0; N],
            lines,
        };
        let mut ready = 0;
        while ready < N {
            let (i, line) = group.next();
            if let Some(id) = line.strip_prefix("id ") {
                group.ids[i] = id.parse().unwrap();
            } else if line == "ready" {
                ready += 1;
            }
        }
        group
    }

    fn next(&self) -> (usize, String) {
        self.lines
            .recv_timeout(Duration::from_secs(120))
            .expect("benchmark children stopped answering")
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Signals instance 0 and waits until the 9 others all report it left for
/// `reason`; returns the time from the signal to the last report.
fn departure(namespace: &str, signal: &str, reason: &str) -> Duration {
    let group = Group::start(namespace);
    let victim = group.ids[0];
    let pid = group.children[0].id().to_string();
    let sent = wall_ns();
    assert!(
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut last = 0;
    let mut seen = 0;
    while seen < N - 1 {
        let (_, line) = group.next();
        let fields: Vec<&str> = line.split(' ').collect();
        if let ["left", id, why, at] = fields[..]
            && id.parse::<u64>().unwrap() == victim
        {
            assert_eq!(why, reason, "{signal} was seen as {why}");
            last = last.max(at.parse::<u128>().unwrap());
            seen += 1;
        }
    }
    if signal == "-STOP" {
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
    }
    Duration::from_nanos((last - sent) as u64)
}

/// Datagrams sent and CPU milliseconds per instance per minute, measured over
/// `window` after `settle`.
fn idle(settle: Duration, window: Duration) -> (f64, f64) {
    let mut group = Group::start("idle");
    std::thread::sleep(settle);
    let sample = |group: &mut Group| {
        for stdin in &mut group.stdins {
            writeln!(stdin, "stats").unwrap();
        }
        let mut sent = 0u64;
        for _ in 0..N {
            loop {
                let (_, line) = group.next();
                if let Some(n) = line.strip_prefix("stats ") {
                    sent += n.parse::<u64>().unwrap();
                    break;
                }
            }
        }
        let cpu: u64 = group.children.iter().map(|c| cpu_ns(c.id())).sum();
        (sent, cpu)
    };
    let (sent0, cpu0) = sample(&mut group);
    std::thread::sleep(window);
    let (sent1, cpu1) = sample(&mut group);
    let minutes = window.as_secs_f64() / 60.0;
    let per = |x: u64| x as f64 / N as f64 / minutes;
    (per(sent1 - sent0), per(cpu1 - cpu0) / 1e6)
}
