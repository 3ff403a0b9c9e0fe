//! The chat example, as a person would use it: three processes, a line typed
//! into one, printed by the other two. Needs the example binary, which
//! `cargo test` builds before running tests.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(20);

fn chat_binary() -> PathBuf {
    // target/<profile>/deps/chat-<hash> -> target/<profile>/examples/chat
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("chat");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example chat` (cargo test builds it too)",
        path.display()
    );
    path
}

/// Lines a chat writes, tagged with which chat and which stream.
type Lines = mpsc::Receiver<(usize, &'static str, String)>;

fn start_chats(n: usize) -> (Vec<Child>, Lines) {
    let (tx, rx) = mpsc::channel();
    let chats = (0..n)
        .map(|i| {
            let mut child = Command::new(chat_binary())
                .arg("--loopback")
                .env("RUST_LOG", "chat=info")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            for (stream, reader) in [
                (
                    "out",
                    Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
                ),
                ("err", Box::new(child.stderr.take().unwrap())),
            ] {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(reader).lines().map_while(Result::ok) {
                        let _ = tx.send((i, stream, line));
                    }
                });
            }
            child
        })
        .collect();
    (chats, rx)
}

#[test]
fn a_line_typed_into_one_chat_is_printed_by_the_other_two() {
    let (mut chats, lines) = start_chats(3);
    // Wait until chat 0 has found both others (its log says so on stderr),
    // so the line we type has somewhere to go.
    let mut joined = 0;
    while joined < 2 {
        let (i, stream, line) = lines
            .recv_timeout(BOUND)
            .expect("chat 0 never found its peers");
        if i == 0 && stream == "err" && line.contains("peer joined") {
            joined += 1;
        }
    }
    let text = "hello | from chat zero";
    writeln!(chats[0].stdin.as_mut().unwrap(), "{text}").unwrap();
    let mut printed_by = Vec::new();
    while printed_by.len() < 2 {
        let (i, stream, line) = lines
            .recv_timeout(BOUND)
            .unwrap_or_else(|_| panic!("only chats {printed_by:?} printed the line"));
        if stream == "out" {
            assert!(
                line.ends_with(&format!("] {text}")),
                "chat {i} printed {line:?}"
            );
            assert_ne!(i, 0, "a chat does not echo its own line");
            printed_by.push(i);
        }
    }
    printed_by.sort();
    assert_eq!(printed_by, vec![1, 2]);
    for chat in &mut chats {
        drop(chat.stdin.take()); // end of input: the chat leaves and exits
    }
    for mut chat in chats {
        assert!(chat.wait().unwrap().success());
    }
}
