//! The election race: 32 processes released at the same instant elect exactly
//! one primary, in every one of 200 trials.
//!
//! This test is the driver; the contenders are this same binary re-executed as
//! `child_contender` (ignored in a normal run). Each trial spawns 32 fresh
//! processes. They all block reading one shared pipe; once every one has said it
//! is ready, the driver closes the pipe's write end and the kernel wakes all 32
//! at once with end-of-file. Each then runs `acquire()` and reports its role. The
//! primary stays alive until every contender has reported, so a second primary
//! could not hide behind the first one's exit.
//!
//! `COHORT_RACE_TRIALS` overrides the trial count (at least 200 by default).
//! Run inside a private network namespace:
//! `/work/shared/bin/isolated cargo test --release --test local_race`.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cohort::local::{BlockingRole, SingleInstance};

const CONTENDERS: usize = 32;
const TRIALS: usize = 200;
/// Failure bound for one trial.
const BOUND: Duration = Duration::from_secs(30);

#[test]
#[ignore = "child process started by the race driver"]
fn child_contender() {
    let Some(dir) = std::env::var_os("COHORT_RACE_DIR") else {
        return;
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ ready").unwrap();
    out.flush().unwrap();
    // The start gate: end-of-file on the shared pipe reaches everyone at once.
    let mut sink = Vec::new();
    std::io::stdin().read_to_end(&mut sink).unwrap();
    let role = SingleInstance::new("race")
        .runtime_dir(PathBuf::from(dir))
        .timeout(BOUND)
        .acquire_blocking();
    match role {
        Ok(BlockingRole::Primary(_primary)) => {
            writeln!(out, "@@ primary").unwrap();
            out.flush().unwrap();
            // Hold the role until the driver has every answer and kills us.
            loop {
                std::thread::park();
            }
        }
        Ok(BlockingRole::Secondary(_)) => writeln!(out, "@@ secondary").unwrap(),
        Err(e) => writeln!(out, "@@ error {e}").unwrap(),
    }
    out.flush().unwrap();
}

fn spawn_reader(stdout: ChildStdout, index: usize, tx: mpsc::Sender<(usize, String)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(i) = line.find("@@ ")
                && tx.send((index, line[i + 3..].to_string())).is_err()
            {
                return;
            }
        }
    });
}

/// Kills and reaps every contender when dropped, on success and on failure, so
/// a failing trial leaves no parked primary behind.
struct Contenders(Vec<Child>);

impl Drop for Contenders {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn trial(base: &std::path::Path, n: usize) -> Result<(), String> {
    let dir = base.join(format!("trial-{n}"));
    std::fs::create_dir(&dir).unwrap();
    let (gate_rx, gate_tx) = std::io::pipe().unwrap();
    let (tx, rx) = mpsc::channel();
    let children = Contenders(
        (0..CONTENDERS)
            .map(|i| {
                let mut child = Command::new(std::env::current_exe().unwrap())
                    .args([
                        "--exact",
                        "child_contender",
                        "--ignored",
                        "--nocapture",
                        "--test-threads=1",
                    ])
                    .env("COHORT_RACE_DIR", &dir)
                    .stdin(gate_rx.try_clone().unwrap())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                spawn_reader(child.stdout.take().unwrap(), i, tx.clone());
                child
            })
            .collect(),
    );
    drop(gate_rx);
    drop(tx);
    let deadline = Instant::now() + BOUND;
    let next = |what: &str| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| format!("trial {n}: a contender never reported {what}"))
    };
    for _ in 0..CONTENDERS {
        let (_, line) = next("ready")?;
        assert_eq!(line, "ready");
    }
    drop(gate_tx); // open the gate
    let mut primaries = Vec::new();
    let mut secondaries = 0;
    for _ in 0..CONTENDERS {
        let (i, line) = next("its role")?;
        match line.as_str() {
            "primary" => primaries.push(i),
            "secondary" => secondaries += 1,
            other => return Err(format!("trial {n}: contender {i} said {other:?}")),
        }
    }
    drop(children);
    if primaries.len() != 1 {
        return Err(format!(
            "trial {n}: {} primaries ({primaries:?}) and {secondaries} secondaries",
            primaries.len()
        ));
    }
    assert_eq!(secondaries, CONTENDERS - 1);
    Ok(())
}

#[test]
fn thirty_two_processes_started_at_once_elect_exactly_one_primary_in_every_trial() {
    let trials = std::env::var("COHORT_RACE_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(TRIALS);
    let base = std::env::temp_dir().join(format!("cohort-local-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&base)
        .unwrap();
    let started = Instant::now();
    for n in 0..trials {
        if let Err(e) = trial(&base, n) {
            panic!("{e}");
        }
    }
    eprintln!(
        "race: {trials} trials x {CONTENDERS} processes, exactly one primary each, in {:?}",
        started.elapsed()
    );
    let _ = std::fs::remove_dir_all(&base);
}
