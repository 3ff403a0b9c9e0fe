//! Speed of the issue-12 parts of `cohort::local`, with real processes:
//!
//! - probe latency (connect, greeting, nonce challenge, identity answer,
//!   verification, pidfd) over 1,000 probes of a primary in another process;
//! - listing 100 registered instances (target: well under 1 ms), and one
//!   handshake round with all 100 (target: a few ms);
//! - `Daemon::ensure`: spawning a daemon and returning a verified handle, and
//!   reusing a running one.
//!
//! The primary, the instances and the daemon are this bench binary
//! re-executed. Build outside the namespace, run inside it:
//!
//! ```text
//! cargo bench --bench local_instances --no-run
//! scripts/isolated cargo bench --offline --bench local_instances
//! COHORT_BENCH_BASE=/dev/shm scripts/isolated cargo bench --offline --bench local_instances
//! ```
//!
//! The runtime directories go in the temp directory, or in
//! `COHORT_BENCH_BASE` (a tmpfs such as `/dev/shm` is what a real
//! `$XDG_RUNTIME_DIR` is).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohort::local::{Daemon, Expect, InstanceHandle, Instances, Reply, Role, SingleInstance};

const APP: &str = "bench.instances";

/// Where the runtime directories go: `COHORT_BENCH_BASE`, else the temp
/// directory. A real `$XDG_RUNTIME_DIR` is a tmpfs: `COHORT_BENCH_BASE=/dev/shm`
/// measures that case on a machine whose temp directory is a disk.
fn base() -> PathBuf {
    std::env::var_os("COHORT_BENCH_BASE")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

fn scratch(name: &str) -> PathBuf {
    let p = base().join(format!("cohort-bench-{}-{name}", std::process::id()));
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
        "{name:<46} n={:<5} p50={:>10.1?} p90={:>10.1?} p99={:>10.1?} max={:>10.1?}   target: {target}",
        samples.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        samples[samples.len() - 1],
    );
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Child mode: the primary (also the daemon): serve until asked to stop.
fn child_primary(dir: &Path) -> ! {
    runtime().block_on(async {
        let Role::Primary(primary) = SingleInstance::new(APP)
            .runtime_dir(dir)
            .acquire()
            .await
            .unwrap()
        else {
            std::process::exit(0);
        };
        println!("ready");
        while let Some(req) = primary.next_request().await {
            let _ = req.reply(Reply::ok()).await;
        }
    });
    std::process::exit(0)
}

/// Child mode: a registered instance that answers with its pid.
fn child_instance(dir: &Path) -> ! {
    let pid = std::process::id();
    let _registration = Instances::new(APP)
        .runtime_dir(dir)
        .register(move |_: ()| pid)
        .unwrap();
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// Busy and total jiffies of all CPUs, from `/proc/stat`.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu[3] + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_ready(env: &str, dir: &Path) -> Child {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(env, dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

async fn probe_samples(app: &SingleInstance, n: usize) -> Vec<Duration> {
    InstanceHandle::probe(app, &Expect::any()).await.unwrap();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let handle = InstanceHandle::probe(app, &Expect::any()).await.unwrap();
        samples.push(t.elapsed());
        drop(handle);
    }
    samples
}

fn instances(count: usize, lists: usize, rounds: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = scratch("instances");
    let _fleet = Children(
        (0..count)
            .map(|_| spawn_ready("COHORT_BENCH_INSTANCE", &dir))
            .collect(),
    );
    let app = Instances::new(APP).runtime_dir(&dir);
    assert_eq!(app.list().unwrap().len(), count);
    // A fresh process lists once: every record takes the exact path.
    let cold: Vec<Duration> = (0..lists.min(50))
        .map(|_| {
            let out = Command::new(std::env::current_exe().unwrap())
                .env("COHORT_BENCH_LIST_ONCE", &dir)
                .output()
                .unwrap();
            let nanos: u64 = String::from_utf8(out.stdout)
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            Duration::from_nanos(nanos)
        })
        .collect();
    summary(
        &format!("list {count} instances, first time in a process"),
        cold,
        "well under 1 ms",
    );
    let list_samples = (0..lists)
        .map(|_| {
            let t = Instant::now();
            let listed = app.list().unwrap();
            let e = t.elapsed();
            assert_eq!(listed.len(), count);
            e
        })
        .collect();
    let rt = runtime();
    let one = app.list().unwrap().remove(0);
    let single: Vec<Duration> = rt.block_on(async {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let _: u32 = one.handshake(&(), Duration::from_secs(5)).await.unwrap();
            samples.push(t.elapsed());
        }
        samples
    });
    summary("handshake with one instance", single, "(for comparison)");
    let (busy0, total0) = cpu_jiffies();
    let handshake_samples = rt.block_on(async {
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let t = Instant::now();
            let answers = app
                .handshake::<(), u32>(&(), Duration::from_secs(5))
                .await
                .unwrap();
            samples.push(t.elapsed());
            assert!(answers.iter().all(|a| a.result.is_ok()));
        }
        samples
    });
    let (busy1, total1) = cpu_jiffies();
    println!(
        "  (both cores were {:.0}% busy during the handshake rounds)",
        100.0 * (busy1 - busy0) as f64 / (total1 - total0).max(1) as f64
    );
    (list_samples, handshake_samples)
}

fn ensure(spawns: usize, reuses: usize) -> (Vec<Duration>, Vec<Duration>) {
    let dir = scratch("ensure");
    let app = SingleInstance::new(APP).runtime_dir(&dir);
    let daemon = || {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("COHORT_BENCH_PRIMARY", &dir);
        Daemon::new(app.clone(), cmd)
    };
    let rt = runtime();
    rt.block_on(async {
        let mut spawn_samples = Vec::with_capacity(spawns);
        let mut reuse_samples = Vec::with_capacity(reuses);
        for round in 0..spawns {
            let t = Instant::now();
            let handle = daemon().ensure().await.unwrap();
            spawn_samples.push(t.elapsed());
            if round == 0 {
                for _ in 0..reuses {
                    let t = Instant::now();
                    let again = daemon().ensure().await.unwrap();
                    reuse_samples.push(t.elapsed());
                    assert_eq!(again.identity().pid, handle.identity().pid);
                }
            }
            handle.shutdown(Duration::from_secs(10)).await.unwrap();
        }
        (spawn_samples, reuse_samples)
    })
}

fn main() {
    if let Some(dir) = std::env::var_os("COHORT_BENCH_PRIMARY") {
        child_primary(Path::new(&dir));
    }
    if let Some(dir) = std::env::var_os("COHORT_BENCH_INSTANCE") {
        child_instance(Path::new(&dir));
    }
    if let Some(dir) = std::env::var_os("COHORT_BENCH_LIST_ONCE") {
        let app = Instances::new(APP).runtime_dir(dir);
        let t = Instant::now();
        let listed = app.list().unwrap();
        let elapsed = t.elapsed();
        assert!(!listed.is_empty());
        println!("{}", elapsed.as_nanos());
        std::process::exit(0);
    }
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing:
    // run a quick smoke version then.
    let full = std::env::args().any(|a| a == "--bench");
    let (n_probe, n_inst, n_list, n_round, n_spawn, n_reuse) = if full {
        (1000, 100, 1000, 200, 20, 200)
    } else {
        (20, 5, 10, 5, 2, 5)
    };
    {
        let dir = scratch("probe");
        let _primary = Children(vec![spawn_ready("COHORT_BENCH_PRIMARY", &dir)]);
        let app = SingleInstance::new(APP).runtime_dir(&dir);
        summary(
            "probe (challenge + verify) of a primary",
            runtime().block_on(probe_samples(&app, n_probe)),
            "(report p50/p99)",
        );
    }
    let (lists, rounds) = instances(n_inst, n_list, n_round);
    summary(
        &format!("list {n_inst} live instances, again (fast path)"),
        lists,
        "well under 1 ms",
    );
    summary(
        &format!("handshake round with {n_inst} instances"),
        rounds,
        "a few ms",
    );
    let (spawned, reused) = ensure(n_spawn, n_reuse);
    summary("Daemon::ensure, spawning the daemon", spawned, "(report)");
    summary(
        "Daemon::ensure, reusing the running daemon",
        reused,
        "(report)",
    );
    for name in ["probe", "instances", "ensure"] {
        let _ = std::fs::remove_dir_all(
            base().join(format!("cohort-bench-{}-{name}", std::process::id())),
        );
    }
}
