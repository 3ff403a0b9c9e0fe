//! Speed of `cohort::local` against the targets of issue 5:
//!
//! - an uncontended launch knows its role within 1 ms;
//! - after the primary is killed with SIGKILL, a waiting secondary is primary
//!   within 50 ms;
//! - a forward round trip (connect, send argv + cwd, get the reply) p50 under 200 us.
//!
//! Real processes where it matters: a fresh process times itself from `main` to
//! knowing its role, the killed primary is a child (this bench binary
//! re-executed) and the waiter is this process; the in-process rows repeat the
//! role and round-trip measurements many times. Run it isolated:
//!
//! ```text
//! cargo bench --bench local_roles --no-run
//! /work/shared/bin/isolated cargo bench --bench local_roles
//! ```

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cohort::local::{Forward, Reply, Role, SingleInstance};

const APP: &str = "bench.local";

fn scratch(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("cohort-bench-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&p)
        .unwrap();
    p
}

fn summary(name: &str, mut samples: Vec<Duration>, target: &str) {
    samples.sort();
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    println!(
        "{name:<44} n={:<5} p50={:>10.1?} p90={:>10.1?} p99={:>10.1?} max={:>10.1?}   target: {target}",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1],
    );
}

/// Child mode: become primary, say so, and serve until killed.
fn child(dir: &Path) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let Role::Primary(primary) = SingleInstance::new(APP)
            .runtime_dir(dir)
            .acquire()
            .await
            .unwrap()
        else {
            panic!("the child must be primary");
        };
        println!("primary");
        std::io::stdout().flush().unwrap();
        while let Some(req) = primary.next_request().await {
            let _ = req.reply(Reply::ok()).await;
        }
    });
    std::process::exit(0)
}

async fn uncontended_role(iterations: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = scratch("uncontended");
    let inst = SingleInstance::new(APP).runtime_dir(&dir);
    let mut primary_times = Vec::with_capacity(iterations);
    let mut secondary_times = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let role = inst.acquire().await.unwrap();
        primary_times.push(t.elapsed());
        let Role::Primary(primary) = role else {
            panic!("uncontended must be primary")
        };
        let t = Instant::now();
        let role = inst.acquire().await.unwrap();
        secondary_times.push(t.elapsed());
        assert!(matches!(role, Role::Secondary(_)));
        drop(primary);
    }
    (primary_times, secondary_times)
}

async fn takeover_after_sigkill(rounds: usize) -> Vec<Duration> {
    let dir = scratch("takeover");
    let exe = std::env::current_exe().unwrap();
    let mut samples = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let mut child = Command::new(&exe)
            .env("COHORT_BENCH_CHILD", &dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "primary");
        let inst = SingleInstance::new(APP).runtime_dir(&dir);
        let waiter =
            tokio::spawn(async move { inst.acquire_or_wait(Duration::from_secs(10)).await });
        // Let the waiter settle into its watch connection (a benchmark may pause;
        // what is measured starts at the kill).
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!waiter.is_finished());
        let killed = Instant::now();
        child.kill().unwrap(); // SIGKILL
        let primary = waiter.await.unwrap().unwrap();
        samples.push(killed.elapsed());
        child.wait().unwrap();
        drop(primary);
    }
    samples
}

async fn forward_round_trip(iterations: usize) -> Vec<Duration> {
    let dir = scratch("forward");
    let inst = SingleInstance::new(APP).runtime_dir(&dir);
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary")
    };
    let server = tokio::spawn(async move {
        while let Some(req) = primary.next_request().await {
            let _ = req.reply(Reply::ok()).await;
        }
    });
    let cwd = std::env::current_dir().unwrap();
    let args = ["--open", "/home/user/some file.txt", "+42"];
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let Role::Secondary(s) = inst.acquire().await.unwrap() else {
            panic!("must be secondary")
        };
        let reply = s
            .forward(Forward::new().args(args).cwd(&cwd))
            .await
            .unwrap();
        samples.push(t.elapsed());
        assert_eq!(reply.status(), 0);
    }
    server.abort();
    samples
}

/// Child mode: a fresh process measures from `main` to knowing its role.
fn role_child(dir: &Path, started: Instant) -> ! {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let role = rt.block_on(SingleInstance::new(APP).runtime_dir(dir).acquire());
    let elapsed = started.elapsed();
    assert!(matches!(role, Ok(Role::Primary(_))));
    println!("{}", elapsed.as_nanos());
    std::process::exit(0)
}

fn fresh_process_role(rounds: usize) -> Vec<Duration> {
    let dir = scratch("fresh");
    let exe = std::env::current_exe().unwrap();
    (0..rounds)
        .map(|_| {
            let out = Command::new(&exe)
                .env("COHORT_BENCH_ROLE_CHILD", &dir)
                .output()
                .unwrap();
            assert!(out.status.success());
            let nanos: u64 = String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            Duration::from_nanos(nanos)
        })
        .collect()
}

fn main() {
    let started = Instant::now();
    if let Some(dir) = std::env::var_os("COHORT_BENCH_CHILD") {
        child(Path::new(&dir));
    }
    if let Some(dir) = std::env::var_os("COHORT_BENCH_ROLE_CHILD") {
        role_child(Path::new(&dir), started);
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: run a
    // quick smoke version then.
    let full = std::env::args().any(|a| a == "--bench");
    let (n_role, n_kill, n_fwd) = if full { (2000, 50, 5000) } else { (20, 3, 50) };
    summary(
        "fresh process: main() -> knows it is primary",
        fresh_process_role(if full { 200 } else { 5 }),
        "< 1 ms",
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (p, s) = uncontended_role(n_role).await;
        summary("uncontended launch -> primary", p, "< 1 ms");
        summary(
            "launch with a live primary -> secondary",
            s,
            "(connect + greeting)",
        );
        summary(
            "SIGKILL of primary -> waiter is primary",
            takeover_after_sigkill(n_kill).await,
            "< 50 ms",
        );
        summary(
            "forward round trip (connect, argv+cwd, reply)",
            forward_round_trip(n_fwd).await,
            "p50 < 200 us",
        );
    });
    for name in ["fresh", "uncontended", "takeover", "forward"] {
        let _ = std::fs::remove_dir_all(
            std::env::temp_dir().join(format!("cohort-bench-{}-{name}", std::process::id())),
        );
    }
}
