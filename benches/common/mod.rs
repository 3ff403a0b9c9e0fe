#![allow(dead_code)] // each benchmark uses part of these helpers
//! Helpers shared by the benchmarks: timestamps that cross process
//! boundaries, per-process CPU time, and a median [min, max] summary.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock nanoseconds: comparable between processes on one host.
pub fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Total CPU time of all threads of `pid`, in nanoseconds.
pub fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
            total += stat
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap();
        }
    }
    total
}

/// `median ms [min, max]` of the samples.
pub fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{:.3} ms [{:.3}, {:.3}] over {} runs",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(*samples.last().unwrap()),
        samples.len()
    )
}

/// The runtime a benchmark child runs on: one thread, like a small service.
pub fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The chart every benchmark child uses: a random id, loopback only, local
/// discovery on, the default schedule.
pub fn loopback_chart(port: u16, namespace: &str) -> cohort::Chart<u16> {
    cohort::ChartBuilder::new()
        .with_random_id()
        .with_service_port(1)
        .with_discovery_port(port)
        .with_namespace(namespace)
        .local_discovery(true)
        .loopback_only()
        .finish()
        .unwrap()
}
