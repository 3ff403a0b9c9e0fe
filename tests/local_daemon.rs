//! `Daemon::ensure`: 16 processes at once spawn exactly one daemon and all get
//! a handle to it; `shutdown` ends it in time; `force_kill` ends one that
//! ignores shutdown; an upgraded binary is replaced on request; a daemon that
//! fails at start reports its exit status and the tail of its log.
//!
//! The daemon and the 16 callers are this test binary re-executed
//! (`child_daemon`, `child_ensure`; ignored in a normal run). Run inside a
//! private network namespace:
//! `scripts/isolated cargo test --offline --test local_daemon`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cohort::local::{Daemon, Error, Expect, InstanceHandle, Reply, Role, SingleInstance};

mod common;

const APP: &str = "test.daemon";
const BOUND: Duration = Duration::from_secs(60);
const CALLERS: usize = 16;

fn app(dir: &Path) -> SingleInstance {
    SingleInstance::new(APP).runtime_dir(dir).timeout(BOUND)
}

/// The command that starts `program` (this test binary or a copy) as the daemon.
fn daemon_command(program: &Path, dir: &Path, mode: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(common::child_args("child_daemon"))
        .env("COHORT_DAEMON_DIR", dir)
        .env("COHORT_DAEMON_MODE", mode);
    cmd
}

fn daemon(program: &Path, dir: &Path, mode: &str) -> Daemon {
    Daemon::new(app(dir), daemon_command(program, dir, mode))
        .ready_timeout(BOUND)
        .shutdown_timeout(Duration::from_secs(2))
}

fn spawned(dir: &Path) -> Vec<u32> {
    std::fs::read_to_string(dir.join("spawned"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
#[ignore = "the daemon started by the daemon tests"]
fn child_daemon() {
    let Some(dir) = std::env::var_os("COHORT_DAEMON_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let mode = std::env::var("COHORT_DAEMON_MODE").unwrap_or_default();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("spawned"))
            .unwrap();
        writeln!(f, "{}", std::process::id()).unwrap();
    }
    if mode == "fail" {
        eprintln!("daemon failing on purpose: the configuration is bad");
        std::process::exit(3);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Role::Primary(primary) = app(&dir).acquire().await.unwrap() else {
            eprintln!("another daemon is the primary; exiting");
            return;
        };
        eprintln!("daemon {} ready", std::process::id());
        while let Some(req) = primary.next_request().await {
            let _ = req.reply(Reply::new(0)).await;
        }
        eprintln!("daemon {} asked to stop", std::process::id());
        if mode == "ignore-shutdown" {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    });
}

#[test]
#[ignore = "a caller started by the daemon tests"]
fn child_ensure() {
    let Some(dir) = std::env::var_os("COHORT_DAEMON_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    common::report("ready");
    // The start gate: end-of-file on the shared pipe reaches everyone at once.
    std::io::stdin().read_to_end(&mut Vec::new()).unwrap();
    let exe = std::env::current_exe().unwrap();
    match daemon(&exe, &dir, "normal").ensure_blocking() {
        Ok(handle) => common::report(&format!("handle {}", handle.identity().pid)),
        Err(e) => common::report(&format!("error {e}")),
    }
}

/// Kills and reaps every caller when dropped.
struct Callers(Vec<Child>);

impl Drop for Callers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Kills the daemon a test leaves behind, also when the test fails.
struct DaemonGuard(Option<InstanceHandle>);

impl Drop for DaemonGuard {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.force_kill();
        }
    }
}

fn session_of(pid: u32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 1..];
    after.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn sixteen_processes_ensuring_at_once_spawn_exactly_one_daemon_and_all_hold_it() {
    let dir = common::scratch("local-daemon");
    let (gate_rx, gate_tx) = std::io::pipe().unwrap();
    let (tx, rx) = mpsc::channel();
    let callers = Callers(
        (0..CALLERS)
            .map(|_| {
                let mut child = Command::new(std::env::current_exe().unwrap())
                    .args(common::child_args("child_ensure"))
                    .env("COHORT_DAEMON_DIR", dir.as_path())
                    .stdin(gate_rx.try_clone().unwrap())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let out = child.stdout.take().unwrap();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(out).lines() {
                        let Ok(line) = line else { return };
                        if let Some(i) = line.find("@@ ") {
                            let _ = tx.send(line[i + 3..].to_string());
                        }
                    }
                });
                child
            })
            .collect(),
    );
    drop(gate_rx);
    let deadline = Instant::now() + BOUND;
    let next = || {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("a caller reported in time")
    };
    for _ in 0..CALLERS {
        assert_eq!(next(), "ready");
    }
    drop(gate_tx);
    let answers: Vec<String> = (0..CALLERS).map(|_| next()).collect();
    drop(callers);
    let handle = InstanceHandle::probe_blocking(&app(&dir), &Expect::any()).unwrap();
    let guard = DaemonGuard(Some(handle));
    let pid = guard.0.as_ref().unwrap().identity().pid;
    assert!(
        answers.iter().all(|a| *a == format!("handle {pid}")),
        "every caller holds a handle to daemon {pid}: {answers:?}"
    );
    assert_eq!(spawned(&dir), [pid], "exactly one daemon was ever started");
    // Detached: a session of its own, stdio in the log.
    assert_eq!(
        session_of(pid),
        pid as i32,
        "the daemon leads its own session"
    );
    let log = std::fs::read_to_string(dir.join(APP).join("daemon.log")).unwrap();
    assert!(log.contains(&format!("daemon {pid} ready")), "{log}");

    // shutdown ends it within the timeout.
    let handle = guard.0.as_ref().unwrap();
    handle.shutdown_blocking(Duration::from_secs(10)).unwrap();
    assert!(!handle.is_alive());
}

#[test]
fn force_kill_ends_a_daemon_that_ignores_shutdown() {
    let dir = common::scratch("local-daemon");
    let exe = std::env::current_exe().unwrap();
    let handle = daemon(&exe, &dir, "ignore-shutdown")
        .ensure_blocking()
        .unwrap();
    let guard = DaemonGuard(Some(handle));
    let handle = guard.0.as_ref().unwrap();
    let err = handle
        .shutdown_blocking(Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::ShutdownTimeout { .. }), "{err}");
    assert!(handle.is_alive());
    handle.force_kill().unwrap();
    assert!(handle.wait_blocking(BOUND).unwrap(), "killed in time");
    assert!(!handle.is_alive());
}

#[test]
fn an_upgraded_binary_is_replaced_on_request_and_reused_otherwise() {
    let dir = common::scratch("local-daemon");
    let program = dir.join("daemon-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &program).unwrap();
    let first = daemon(&program, &dir, "normal").ensure_blocking().unwrap();
    let mut guards = vec![DaemonGuard(None)];
    let first_pid = first.identity().pid;
    // Reused while nothing changed, even when replacement is on.
    let again = daemon(&program, &dir, "normal")
        .replace_if_binary_differs(true)
        .ensure_blocking()
        .unwrap();
    assert_eq!(again.identity().pid, first_pid);

    // Install an "upgrade": a different file renamed over the path.
    let mut bytes = std::fs::read(&program).unwrap();
    bytes.extend_from_slice(b"version 2");
    std::fs::write(dir.join("daemon-bin.new"), &bytes).unwrap();
    std::fs::set_permissions(
        dir.join("daemon-bin.new"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::rename(dir.join("daemon-bin.new"), &program).unwrap();

    // Without the request, the running (old) daemon is reused.
    let old = daemon(&program, &dir, "normal").ensure_blocking().unwrap();
    assert_eq!(old.identity().pid, first_pid);
    // With it, the old one is shut down and the new binary started.
    let new = daemon(&program, &dir, "normal")
        .replace_if_binary_differs(true)
        .ensure_blocking()
        .unwrap();
    guards.push(DaemonGuard(Some(new)));
    let new = guards[1].0.as_ref().unwrap();
    assert_ne!(new.identity().pid, first_pid);
    assert_eq!(
        new.identity().exe_hash,
        cohort::local::ExeHash::of_file(&program).unwrap()
    );
    assert!(first.wait_blocking(BOUND).unwrap(), "the old daemon exited");
    assert_eq!(spawned(&dir).len(), 2);
}

#[test]
fn a_daemon_that_fails_at_start_reports_its_exit_status_and_log_tail() {
    let dir = common::scratch("local-daemon");
    let exe = std::env::current_exe().unwrap();
    let err = daemon(&exe, &dir, "fail").ensure_blocking().unwrap_err();
    match &err {
        Error::DaemonExited {
            status, log_tail, ..
        } => {
            assert_eq!(status.code(), Some(3));
            assert!(log_tail.contains("the configuration is bad"), "{log_tail}");
        }
        other => panic!("expected DaemonExited, got {other}"),
    }
    assert!(err.to_string().contains("the configuration is bad"));
}
