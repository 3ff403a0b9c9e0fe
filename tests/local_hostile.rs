//! Hostile input and other users: the primary survives bad frames, and neither
//! side talks to a process of another user.
//!
//! The other-user tests run a child as `nobody` (this binary re-executed under
//! `setpriv`), which needs root; without root they print why they skip, and
//! under CI (`CI` set) they fail instead, so a green CI means they ran.
//! Run inside a private network namespace:
//! `/work/shared/bin/isolated cargo test --test local_hostile`.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cohort::local::{Error, Forward, Primary, Reply, Role, SingleInstance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const BOUND: Duration = Duration::from_secs(20);

/// Everything logged through `tracing` by any thread of this test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || LogWriter(writer.clone()))
            .init();
        buf
    })
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_containing(needle: &str) -> usize {
    let buf = logs().lock().unwrap();
    String::from_utf8_lossy(&buf)
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

mod common;
use common::Scratch;

fn scratch() -> Scratch {
    common::scratch("local-hostile")
}

/// Serves every request with its argument count, until the primary is dropped.
fn serve(primary: Primary) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(req) = primary.next_request().await {
            let n = req.args().len() as i32;
            let _ = req.reply(Reply::new(n)).await;
        }
    })
}

/// Connects raw, reads the greeting, sends `bytes`, and waits for the primary to
/// close the connection.
async fn send_and_expect_close(socket: &Path, bytes: &[u8], then_hold_open: bool) {
    let mut s = UnixStream::connect(socket).await.unwrap();
    let mut hello = [0u8; 7]; // 4-byte length, version, Hello, accepting
    s.read_exact(&mut hello).await.unwrap();
    assert_eq!(hello, [0, 0, 0, 3, 1, 0, 1], "the greeting");
    s.write_all(bytes).await.unwrap();
    if !then_hold_open {
        s.shutdown().await.unwrap();
    }
    let mut rest = Vec::new();
    let read = tokio::time::timeout(BOUND, s.read_to_end(&mut rest))
        .await
        .expect("the primary must close a connection that sent a bad frame");
    // Closed (possibly reset), and nothing was answered.
    assert!(read.is_err() || rest.is_empty(), "got an answer: {rest:?}");
}

#[tokio::test]
async fn garbage_truncated_oversized_and_misversioned_frames_close_only_their_connection() {
    logs();
    let dir = scratch();
    let inst = SingleInstance::new("test.hostile").runtime_dir(dir.as_path());
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary");
    };
    let socket = dir.join("test.hostile/socket");
    let server = serve(primary);

    // A connection that stays half-sent the whole time must not block others.
    let mut stuck = UnixStream::connect(&socket).await.unwrap();
    stuck.write_all(&[0, 0, 0, 100, 1, 0]).await.unwrap();

    let before = log_lines_containing("bad frame");
    let cases: &[(&str, Vec<u8>, bool)] = &[
        (
            "garbage",
            b"\xde\xad\xbe\xef garbage that is no frame".to_vec(),
            false,
        ),
        (
            "garbage body",
            b"\x00\x00\x00\x0a\x01\x00g\xffr\xfeb\x80ge".to_vec(),
            false,
        ),
        ("oversized length", vec![0xff, 0xff, 0xff, 0xff, 1, 0], true),
        (
            "just over the limit",
            {
                let mut v = ((cohort::local::MAX_FRAME + 1) as u32)
                    .to_be_bytes()
                    .to_vec();
                v.push(1);
                v
            },
            true,
        ),
        ("truncated", vec![0, 0, 0, 50, 1, 0, 1, 2], false),
        ("unknown version", vec![0, 0, 0, 2, 9, 1], false),
        ("trailing bytes", vec![0, 0, 0, 3, 1, 1, 0], false),
        ("empty frame", vec![0, 0, 0, 0], false),
        ("malformed body", vec![0, 0, 0, 4, 1, 0, 0xff, 0xff], false),
    ];
    for (name, bytes, hold) in cases {
        eprintln!("case: {name}");
        send_and_expect_close(&socket, bytes, *hold).await;
    }
    let after = log_lines_containing("bad frame");
    assert_eq!(
        after - before,
        cases.len(),
        "every bad frame is logged once; logs:\n{}",
        String::from_utf8_lossy(&logs().lock().unwrap())
    );

    // The primary keeps serving, with the stuck connection still open.
    let Role::Secondary(s) = inst.acquire().await.unwrap() else {
        panic!("must be secondary");
    };
    let reply = s.forward(Forward::new().args(["a", "b"])).await.unwrap();
    assert_eq!(reply.status(), 2);
    drop(stuck);
    server.abort();
}

#[tokio::test]
async fn a_secondary_rejects_a_malformed_greeting_instead_of_trusting_it() {
    // A fake "primary" in our own abstract name that greets with garbage.
    let app = format!("test.fakegreet.{}", std::process::id());
    let uid = rustix::process::geteuid().as_raw();
    let addr = {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(format!("cohort/{uid}/{app}")).unwrap()
    };
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    std::thread::spawn(move || {
        use std::io::Write;
        while let Ok((mut s, _)) = listener.accept() {
            let _ = s.write_all(&[0, 0, 0, 3, 7, 0, 1]); // version 7
        }
    });
    let err = SingleInstance::new(&app)
        .abstract_namespace(true)
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Frame {
                source: cohort::local::FrameError::UnknownVersion { found: 7, .. },
                ..
            }
        ),
        "{err}"
    );
}

// ---- another user -------------------------------------------------------

const NOBODY: u32 = 65534;

/// Runs `child_fn` of this binary as `nobody`; `None` (with the reason printed)
/// when this environment cannot.
fn as_nobody(child_fn: &str, env: &[(&str, &str)]) -> Option<tokio::process::Command> {
    if rustix::process::geteuid().as_raw() != 0 {
        common::cannot_run_here(
            "switching to another user needs root; this test runs as a normal user",
        );
        return None;
    }
    let exe = std::env::current_exe().unwrap();
    // nobody must be able to execute the binary: every directory above it
    // searchable by others, the file executable by others.
    let mut p = exe.clone();
    loop {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&p).unwrap().permissions());
        if mode & 0o001 == 0 {
            common::cannot_run_here(&format!(
                "{} is not accessible to other users (mode {:o}), so nobody cannot run this test binary",
                p.display(),
                mode & 0o777
            ));
            return None;
        }
        if !p.pop() || p.as_os_str().is_empty() {
            break;
        }
    }
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        common::cannot_run_here("setpriv is not installed, so no child can run as nobody");
        return None;
    }
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
        .arg(exe)
        .args([
            "--exact",
            child_fn,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COHORT_NOBODY_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Some(cmd)
}

async fn first_report(child: &mut tokio::process::Child) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let report = tokio::time::timeout(BOUND, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(i) = line.find("@@ ") {
                return line[i + 3..].to_string();
            }
        }
        panic!("the child exited without reporting")
    })
    .await
    .expect("the child reported in time");
    // Keep reading, so the child's test harness can print its summary
    // instead of failing on a closed pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    report
}

fn abstract_addr(name: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap()
}

#[test]
#[ignore = "child process started by the other-user tests"]
fn child_nobody_client() {
    if std::env::var_os("COHORT_NOBODY_CHILD").is_none() {
        return;
    }
    use std::io::{Read, Write};
    let name = std::env::var("COHORT_ENDPOINT").unwrap();
    let uid = rustix::process::geteuid().as_raw();
    let mut s = std::os::unix::net::UnixStream::connect_addr(&abstract_addr(&name)).unwrap();
    // Try to send a request regardless, then see whether anything comes back.
    let _ = s.write_all(&[0, 0, 0, 4, 1, 0, 0, 0]);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    println!(
        "@@ uid {uid} {}",
        if got.is_empty() { "refused" } else { "served" }
    );
}

#[test]
#[ignore = "child process started by the other-user tests"]
fn child_nobody_squatter() {
    if std::env::var_os("COHORT_NOBODY_CHILD").is_none() {
        return;
    }
    use std::io::Write;
    let name = std::env::var("COHORT_ENDPOINT").unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&abstract_addr(&name)).unwrap();
    println!(
        "@@ listening as uid {}",
        rustix::process::geteuid().as_raw()
    );
    std::io::stdout().flush().unwrap();
    while let Ok((mut s, _)) = listener.accept() {
        let _ = s.write_all(&[0, 0, 0, 3, 1, 0, 1]); // a perfect greeting
    }
}

#[tokio::test]
async fn a_process_of_another_user_cannot_send_requests_to_the_primary() {
    logs();
    let app = format!("test.otheruser.{}", std::process::id());
    let inst = SingleInstance::new(&app).abstract_namespace(true);
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary");
    };
    let name = primary.endpoint().trim_start_matches('@').to_string();
    let Some(mut cmd) = as_nobody("child_nobody_client", &[("COHORT_ENDPOINT", &name)]) else {
        return;
    };
    let before = log_lines_containing("refusing a local connection from another user");
    let mut child = cmd.spawn().unwrap();
    assert_eq!(
        first_report(&mut child).await,
        format!("uid {NOBODY} refused")
    );
    child.wait().await.unwrap();
    assert!(
        primary.try_next_request().is_none(),
        "no request got through"
    );
    assert_eq!(
        log_lines_containing("refusing a local connection from another user") - before,
        1
    );
}

#[tokio::test]
async fn a_process_of_another_user_cannot_pose_as_the_primary() {
    let app = format!("test.squat.{}", std::process::id());
    let uid = rustix::process::geteuid().as_raw();
    let name = format!("cohort/{uid}/{app}");
    let Some(mut cmd) = as_nobody("child_nobody_squatter", &[("COHORT_ENDPOINT", &name)]) else {
        return;
    };
    let mut child = cmd.spawn().unwrap();
    assert_eq!(
        first_report(&mut child).await,
        format!("listening as uid {NOBODY}")
    );
    let err = SingleInstance::new(&app)
        .abstract_namespace(true)
        .acquire()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ForeignPrimary { found: NOBODY, expected, .. } if expected == uid),
        "{err}"
    );
    child.kill().await.unwrap();
}
