//! Regression tests for the `cohort::local` defects of issue 8: every one of
//! them panicked or hid a queued request before its fix.
//!
//! Run inside a private network namespace:
//! `scripts/isolated cargo test --offline --test local_defects`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use cohort::local::{BlockingRole, Error, Forward, Reply, Role, SingleInstance};

mod common;

const BOUND: Duration = Duration::from_secs(20);

fn instance(dir: &Path) -> SingleInstance {
    SingleInstance::new("test.defects").runtime_dir(dir)
}

async fn primary_in(dir: &Path) -> cohort::local::Primary {
    match instance(dir).acquire().await.unwrap() {
        Role::Primary(p) => p,
        Role::Secondary(_) => panic!("the first launch must be primary"),
    }
}

/// A blocking secondary on its own thread that forwards `arg` and returns the
/// status it got back.
fn forward_from_thread(dir: &Path, arg: &str) -> std::thread::JoinHandle<i32> {
    let dir = dir.to_owned();
    let arg = arg.to_owned();
    std::thread::spawn(move || match instance(&dir).acquire_blocking().unwrap() {
        BlockingRole::Secondary(s) => s.forward(Forward::new().arg(arg)).unwrap().status(),
        BlockingRole::Primary(_) => panic!("must be secondary"),
    })
}

#[tokio::test]
async fn next_request_timeout_blocking_inside_a_runtime_is_an_error_not_a_panic() {
    let dir = common::scratch("local-defects");
    let primary = primary_in(&dir).await;
    let err = primary
        .next_request_timeout_blocking(Duration::from_millis(10))
        .unwrap_err();
    assert!(matches!(err, Error::BlockingInRuntime { .. }), "{err}");
}

#[tokio::test]
async fn next_request_blocking_inside_a_runtime_is_an_error_not_a_panic() {
    let dir = common::scratch("local-defects");
    let primary = primary_in(&dir).await;
    let err = primary.next_request_blocking().unwrap_err();
    assert!(matches!(err, Error::BlockingInRuntime { .. }), "{err}");
}

#[test]
fn reply_blocking_inside_a_runtime_is_an_error_not_a_panic() {
    let dir = common::scratch("local-defects");
    let BlockingRole::Primary(primary) = instance(&dir).acquire_blocking().unwrap() else {
        panic!("must be primary");
    };
    let client = forward_from_thread(&dir, "x");
    let request = primary
        .next_request_timeout_blocking(BOUND)
        .unwrap()
        .expect("the request arrives");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(async { request.reply_blocking(Reply::new(1)) })
        .unwrap_err();
    assert!(matches!(err, Error::BlockingInRuntime { .. }), "{err}");
    // The request was consumed unanswered: the secondary is refused, not left hanging.
    let _ = client.join();
}

#[test]
fn a_blocking_secondary_used_inside_a_runtime_is_an_error_not_a_panic() {
    let dir = common::scratch("local-defects");
    let BlockingRole::Primary(_primary) = instance(&dir).acquire_blocking().unwrap() else {
        panic!("must be primary");
    };
    let BlockingRole::Secondary(secondary) = instance(&dir).acquire_blocking().unwrap() else {
        panic!("must be secondary");
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime
        .block_on(async { secondary.forward(Forward::new()) })
        .unwrap_err();
    assert!(matches!(err, Error::BlockingInRuntime { .. }), "{err}");
}

/// One task parks in `next_request` on a current-thread runtime; the test body
/// never yields, so that task cannot run. A request queued meanwhile must still
/// be taken by `try_next_request`.
#[test]
fn try_next_request_takes_a_queued_request_while_another_task_waits() {
    let dir = common::scratch("local-defects");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let primary = std::sync::Arc::new(runtime.block_on(primary_in(&dir)));
    let waiter = runtime.spawn({
        let primary = primary.clone();
        async move { primary.next_request().await.map(|r| r.args().to_vec()) }
    });
    // Let the waiter reach its await point once.
    runtime.block_on(tokio::task::yield_now());
    assert!(!waiter.is_finished());

    let client = forward_from_thread(&dir, "queued");
    // Bounded poll of an observable state, without yielding to the waiter.
    let deadline = Instant::now() + BOUND;
    let request = loop {
        if let Some(r) = primary.try_next_request() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "a queued request was never handed to try_next_request while a task waited"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(request.args(), ["queued"]);
    request.reply_blocking(Reply::new(4)).unwrap();
    assert_eq!(client.join().unwrap(), 4);
    waiter.abort();
}

/// `Primary::start` failing after its runtime exists used to drop that
/// runtime inside the caller's async context, which panics. A child process
/// caps its address space so that the server thread cannot get a stack.
#[test]
fn a_primary_that_cannot_start_its_server_returns_an_error_instead_of_panicking() {
    if std::env::var_os("COHORT_DEFECTS_CHILD").is_some() {
        return;
    }
    let dir = common::scratch("local-defects");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_start_without_memory",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COHORT_DEFECTS_CHILD", dir.as_os_str())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("@@ error:"),
        "the election must report an error; child stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "no panic allowed; stderr:\n{stderr}"
    );
}

#[test]
#[ignore = "child process started by a_primary_that_cannot_start_its_server_returns_an_error_instead_of_panicking"]
fn child_start_without_memory() {
    let Some(dir) = std::env::var_os("COHORT_DEFECTS_CHILD") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let inst = SingleInstance::new("test.defects.nomem").runtime_dir(&dir);
    // The application directory exists before the limit, so only the
    // election's own allocations meet it. (No warm-up election: glibc would
    // cache the first server thread's stack for the second.)
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(std::path::Path::new(&dir).join("test.defects.nomem"))
        .unwrap();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let vm_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    // A thread stack is 2 MiB: leave less than that.
    let limit = (vm_kb + 1024) * 1024;
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: None,
        },
    )
    .unwrap();
    let result = runtime.block_on(inst.acquire());
    match result {
        Ok(Role::Primary(_)) => println!("@@ primary"),
        Ok(Role::Secondary(_)) => println!("@@ secondary"),
        Err(e) => println!("@@ error: {e}"),
    }
}
