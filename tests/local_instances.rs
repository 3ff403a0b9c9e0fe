//! `Instances`: 50 real instances register; after 10 are SIGKILLed exactly the
//! 40 live ones are listed; a handshake answers for every live one, and the
//! one that is SIGSTOPped gives a timeout for itself alone.
//!
//! The instances are this test binary re-executed (`child_instance`, ignored
//! in a normal run). Run inside a private network namespace:
//! `scripts/isolated cargo test --offline --test local_instances`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cohort::local::{HandshakeError, Instances};

mod common;

const APP: &str = "test.instances";
const BOUND: Duration = Duration::from_secs(60);

fn app(dir: &Path) -> Instances {
    Instances::new(APP).runtime_dir(dir)
}

#[test]
#[ignore = "child process started by the instances tests"]
fn child_instance() {
    let Some(dir) = std::env::var_os("COHORT_INSTANCES_DIR") else {
        return;
    };
    let pid = std::process::id();
    let _registration = app(Path::new(&dir))
        .register(move |question: String| (pid, format!("{question} from {pid}")))
        .unwrap();
    common::report("registered");
    loop {
        std::thread::park();
    }
}

/// The instances, killed and reaped when dropped, also when a test fails.
struct Fleet(Vec<Child>);

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
                rustix::process::Signal::CONT,
            );
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn start_fleet(dir: &Path, n: usize) -> Fleet {
    let (tx, rx) = mpsc::channel();
    let mut fleet = Fleet(Vec::new());
    for _ in 0..n {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(common::child_args("child_instance"))
            .env("COHORT_INSTANCES_DIR", dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if line.contains("@@ registered") {
                    let _ = tx.send(());
                }
            }
        });
        fleet.0.push(child);
    }
    let deadline = Instant::now() + BOUND;
    for i in 0..n {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("only {i} of {n} instances registered in time"));
    }
    fleet
}

fn pids(list: &[cohort::local::Instance]) -> BTreeSet<u32> {
    list.iter().map(|i| i.identity().pid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_instances_ten_killed_one_stopped_list_and_handshake_exactly_the_live_ones() {
    let dir = common::scratch("local-instances");
    let mut fleet = start_fleet(&dir, 50);
    let all: BTreeSet<u32> = fleet.0.iter().map(Child::id).collect();
    assert_eq!(pids(&app(&dir).list().unwrap()), all, "all 50 are listed");

    // SIGKILL ten, and reap them: they are gone for good.
    let killed: Vec<Child> = fleet.0.drain(..10).collect();
    let mut killed = Fleet(killed);
    for child in &mut killed.0 {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let live: BTreeSet<u32> = fleet.0.iter().map(Child::id).collect();
    let listed = app(&dir).list().unwrap();
    assert_eq!(
        pids(&listed),
        live,
        "exactly the 40 live instances are listed"
    );
    for instance in &listed {
        assert_eq!(instance.identity().verify(), cohort::local::Verdict::Alive);
    }
    // Their files were cleaned up by the listing.
    let files = std::fs::read_dir(dir.join(APP).join("instances"))
        .unwrap()
        .count();
    assert_eq!(files, 2 * 40, "one record and one socket per live instance");

    // SIGSTOP one: it stays listed (it holds its lock), and only it times out.
    let stopped = fleet.0[0].id();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(stopped as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    common::wait_until_stopped(stopped as i32);
    let answers = app(&dir)
        .handshake::<str, (u32, String)>("hello", Duration::from_millis(1500))
        .await
        .unwrap();
    assert_eq!(answers.len(), 40);
    for answer in &answers {
        let pid = answer.instance.identity().pid;
        match &answer.result {
            Ok((answered_pid, text)) => {
                assert_ne!(pid, stopped, "the stopped instance cannot answer");
                assert_eq!(*answered_pid, pid);
                assert_eq!(*text, format!("hello from {pid}"));
            }
            Err(HandshakeError::Timeout) => assert_eq!(pid, stopped),
            Err(other) => panic!("pid {pid}: unexpected {other}"),
        }
    }
    let timeouts = answers.iter().filter(|a| a.result.is_err()).count();
    assert_eq!(timeouts, 1, "only the stopped instance times out");
}

#[test]
fn a_registration_dropped_is_no_longer_listed_and_one_instance_can_be_asked_alone() {
    let dir = common::scratch("local-instances");
    let registration = app(&dir).register(|n: u32| n * 2).unwrap();
    let listed = app(&dir).list().unwrap();
    assert_eq!(pids(&listed), BTreeSet::from([std::process::id()]));
    let doubled: u32 = listed[0]
        .handshake_blocking(&21u32, Duration::from_secs(5))
        .unwrap();
    assert_eq!(doubled, 42);
    // A question of another type is answered "not understood", not guessed at.
    let wrong = listed[0].handshake_blocking::<str, u32>(
        "a string that is not a u32 question",
        Duration::from_secs(5),
    );
    assert!(
        matches!(
            wrong,
            Err(HandshakeError::NotUnderstood | HandshakeError::Payload(_))
        ),
        "{wrong:?}"
    );
    assert!(registration.socket().exists());
    drop(registration);
    assert!(app(&dir).list().unwrap().is_empty());
}

#[tokio::test]
async fn a_blocking_handshake_inside_a_runtime_is_an_error() {
    let dir = common::scratch("local-instances");
    let err = app(&dir)
        .handshake_blocking::<u8, u8>(&1, Duration::from_millis(10))
        .unwrap_err();
    assert!(
        matches!(err, cohort::local::Error::BlockingInRuntime { .. }),
        "{err}"
    );
}
