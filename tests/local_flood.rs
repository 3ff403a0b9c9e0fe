//! Floods against a primary in another process (issue 9): its memory stays
//! bounded under connections that announce 1 MiB frames and send one byte, its
//! file descriptors stay flat under thousands of idle connections, and a real
//! secondary still gets its reply.
//!
//! The primary is this test binary re-executed (`child_primary`, ignored in a
//! normal run); the test reads its RSS, read-byte counter and open fds from
//! `/proc`. Run inside a private network namespace:
//! `scripts/isolated cargo test --offline --test local_flood`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cohort::local::Error;

use cohort::local::{Forward, Reply, Role, SingleInstance};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

mod common;

const APP: &str = "test.flood";
const BOUND: Duration = Duration::from_secs(30);

/// The primary process, killed when dropped.
struct PrimaryProc(Child);

impl Drop for PrimaryProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl PrimaryProc {
    fn start(dir: &Path) -> PrimaryProc {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_primary",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("COHORT_FLOOD_DIR", dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("the child reports").unwrap();
            if line.contains("@@ primary") {
                break;
            }
        }
        PrimaryProc(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn proc_field(&self, file: &str, key: &str) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", self.pid())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in /proc/{}/{file}", self.pid()))
    }

    fn rss_kib(&self) -> u64 {
        self.proc_field("status", "VmRSS:")
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }
}

#[test]
#[ignore = "child process started by the flood tests"]
fn child_primary() {
    let Some(dir) = std::env::var_os("COHORT_FLOOD_DIR") else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let Role::Primary(primary) = SingleInstance::new(APP)
            .runtime_dir(dir)
            .acquire()
            .await
            .unwrap()
        else {
            panic!("the child must be primary");
        };
        println!("@@ primary");
        while let Some(req) = primary.next_request().await {
            // "stats" asks for the bytes the primary has read so far.
            let reply = if req.args() == ["stats"] {
                Reply::new(7)
                    .with_payload(&primary.stats().bytes_received)
                    .unwrap()
            } else {
                Reply::new(7)
            };
            let _ = req.reply(reply).await;
        }
    });
}

/// Connects, retrying while the primary's accept queue is full.
async fn connect(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + BOUND;
    loop {
        match UnixStream::connect(socket).await {
            Ok(s) => return s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("connecting to the primary failed: {e}"),
        }
    }
}

/// A real secondary's round trip must still work.
async fn real_secondary_is_served(dir: &Path) {
    assert_eq!(forward(dir, "real").await.status(), 7);
}

/// The bytes the primary has read from all its connections so far.
async fn bytes_received(dir: &Path) -> u64 {
    forward(dir, "stats").await.payload().unwrap().unwrap()
}

async fn forward(dir: &Path, arg: &str) -> Reply {
    tokio::time::timeout(BOUND, async {
        let Role::Secondary(s) = SingleInstance::new(APP)
            .runtime_dir(dir)
            .timeout(BOUND)
            .acquire()
            .await
            .unwrap()
        else {
            panic!("must be secondary");
        };
        s.forward(Forward::new().arg(arg)).await.unwrap()
    })
    .await
    .expect("a real secondary is served during the flood")
}

#[tokio::test]
async fn two_hundred_connections_announcing_a_mebibyte_and_sending_one_byte_keep_memory_bounded() {
    let dir = common::scratch("local-flood");
    let primary = PrimaryProc::start(&dir);
    let socket = dir.join(APP).join("socket");
    real_secondary_is_served(&dir).await;
    let rss_before = primary.rss_kib();
    let read_before = bytes_received(&dir).await;

    let mut attackers = Vec::new();
    for _ in 0..200 {
        let mut s = connect(&socket).await;
        s.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        s.write_all(&[1]).await.unwrap();
        attackers.push(s);
    }
    // Wait until the primary has read every attacker's 5 bytes (each poll is
    // a real request, which also shows the primary serving meanwhile).
    let deadline = Instant::now() + BOUND;
    while bytes_received(&dir).await < read_before + 200 * 5 {
        assert!(
            Instant::now() < deadline,
            "the primary never read the attackers' bytes"
        );
    }
    real_secondary_is_served(&dir).await;
    let grown_kib = primary.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "RSS before {rss_before} KiB, grew by {grown_kib} KiB under 200 x (1 MiB announced, 1 byte sent)"
    );
    assert!(
        grown_kib < 16 * 1024,
        "the primary's RSS grew by {grown_kib} KiB; it must not allocate announced lengths"
    );
    drop(attackers);
}

#[tokio::test]
async fn thousands_of_idle_connections_keep_fds_flat_and_a_real_secondary_is_served() {
    const IDLE: usize = 5000;
    let dir = common::scratch("local-flood");
    let primary = PrimaryProc::start(&dir);
    let socket = dir.join(APP).join("socket");
    real_secondary_is_served(&dir).await;
    let fds_before = primary.open_fds();

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(&socket).await);
    }
    // The primary accepts in order: once a last connection is greeted, every
    // idle one before it was accepted (and kept or closed).
    let mut last = connect(&socket).await;
    let mut hello = [0u8; 7];
    tokio::time::timeout(BOUND, last.read_exact(&mut hello))
        .await
        .expect("the primary greets a new connection during the flood")
        .unwrap();
    let fds = primary.open_fds();
    eprintln!("primary fds: {fds_before} before, {fds} with {IDLE} idle connections open");
    assert!(
        fds <= fds_before + 300,
        "the primary holds {fds} fds (was {fds_before}) with {IDLE} idle connections"
    );
    real_secondary_is_served(&dir).await;
    drop(idle);
}

fn in_process(dir: &Path) -> SingleInstance {
    SingleInstance::new("test.flood.inproc").runtime_dir(dir)
}

async fn is_closed_by_the_primary(s: &mut UnixStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(BOUND, s.read_to_end(&mut rest))
        .await
        .expect("the primary closes the connection");
    assert!(
        read.is_err() || rest.len() <= 7,
        "got more than a greeting: {rest:?}"
    );
}

#[tokio::test]
async fn a_connection_that_sends_no_complete_frame_is_closed_at_its_deadline() {
    let dir = common::scratch("local-flood");
    let inst = in_process(&dir).first_frame_timeout(Duration::from_millis(200));
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary");
    };
    let socket = dir.join("test.flood.inproc/socket");
    // Silent, and a slow-loris that keeps trickling a frame that never ends.
    let mut silent = connect(&socket).await;
    let mut loris = connect(&socket).await;
    let trickle = async {
        for b in [0u8, 0, 0, 100, 1] {
            if loris.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
        is_closed_by_the_primary(&mut loris).await;
    };
    tokio::join!(is_closed_by_the_primary(&mut silent), trickle);
    assert_eq!(primary.stats().timed_out, 2);
    assert_eq!(primary.stats().open, 0);
}

#[tokio::test]
async fn at_the_cap_the_oldest_idle_connection_makes_room_for_a_real_secondary() {
    let dir = common::scratch("local-flood");
    let inst = in_process(&dir).max_connections(4);
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary");
    };
    let socket = dir.join("test.flood.inproc/socket");
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut s = connect(&socket).await;
        let mut hello = [0u8; 7];
        s.read_exact(&mut hello).await.unwrap();
        idle.push(s);
    }
    assert_eq!(primary.stats().open, 4);
    let Role::Secondary(s) = inst.acquire().await.unwrap() else {
        panic!("must be secondary");
    };
    let (reply, ()) = tokio::join!(s.forward(Forward::new()), async {
        let req = primary.next_request().await.unwrap();
        req.reply(Reply::new(3)).await.unwrap();
    });
    assert_eq!(reply.unwrap().status(), 3);
    assert_eq!(primary.stats().evicted, 1);
    // The oldest idle one was closed; the three others stay open (the
    // secondary's own connection ends just after its reply).
    is_closed_by_the_primary(&mut idle[0]).await;
    let deadline = Instant::now() + BOUND;
    while primary.stats().open != 3 {
        assert!(Instant::now() < deadline, "{:?}", primary.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test]
async fn at_the_cap_with_every_slot_busy_a_new_connection_is_closed_at_once() {
    let dir = common::scratch("local-flood");
    let inst = in_process(&dir).max_connections(2);
    let Role::Primary(primary) = inst.acquire().await.unwrap() else {
        panic!("must be primary");
    };
    // Two requests in flight, not yet answered: both slots wait for the app.
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let Role::Secondary(s) = inst.acquire().await.unwrap() else {
            panic!("must be secondary");
        };
        waiting.push(tokio::spawn(s.forward(Forward::new())));
    }
    let first = primary.next_request().await.unwrap();
    let second = primary.next_request().await.unwrap();
    let err = inst
        .clone()
        .timeout(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(primary.stats().refused_over_cap >= 1);
    first.reply(Reply::new(1)).await.unwrap();
    second.reply(Reply::new(1)).await.unwrap();
    for w in waiting {
        assert_eq!(w.await.unwrap().unwrap().status(), 1);
    }
}
