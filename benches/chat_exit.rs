//! How soon the chat example exits after SIGTERM or SIGINT while its stdin
//! is still open (a pipe nobody closed, as a terminal would be). Build the
//! example, then run it inside a private network namespace:
//!
//! ```text
//! cargo build --release --example chat && cargo bench --bench chat_exit --no-run
//! scripts/isolated cargo bench --bench chat_exit --offline
//! ```
//!
//! Each run starts one chat (`--loopback`), waits for its first line, keeps
//! its stdin open, sends the signal and times until the process has exited
//! (reaped by a thread blocked in `wait`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::summary;

fn main() {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/chat_exit-<hash> -> target/release/examples/chat
    let chat = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/chat");
    assert!(
        chat.exists(),
        "{} is missing: run `cargo build --release --example chat` first",
        chat.display()
    );
    for signal in ["TERM", "INT"] {
        let samples: Vec<Duration> = (0..20).map(|_| exit_after(&chat, signal)).collect();
        println!(
            "chat exits after SIG{signal} with stdin open: {}",
            summary(samples)
        );
    }
}

fn exit_after(chat: &std::path::Path, signal: &str) -> Duration {
    let mut child = Command::new(chat)
        .arg("--loopback")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _stdin_kept_open = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert!(first.starts_with("* you are "), "{first}");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((Instant::now(), status));
    });
    let sent = Instant::now();
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let (exited, status) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the chat did not exit within 10 s");
    assert!(status.unwrap().success());
    exited - sent
}
