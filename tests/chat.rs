//! The chat example, as a person would use it: three processes see each
//! other join, a line typed into one is printed by the other two, and one
//! stopped with SIGTERM is seen leaving with a goodbye. Needs the example binary, which
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

/// Everything the chats print, with lines not yet asked for kept aside.
struct Output {
    lines: Lines,
    backlog: Vec<(usize, &'static str, String)>,
}

impl Output {
    /// Waits for a line from chat `who` on stdout that satisfies `want`.
    fn expect(&mut self, who: usize, what: &str, want: impl Fn(&str) -> bool) -> String {
        let matches =
            |(i, stream, line): &(usize, &str, String)| *i == who && *stream == "out" && want(line);
        if let Some(at) = self.backlog.iter().position(matches) {
            return self.backlog.remove(at).2;
        }
        loop {
            let next = self
                .lines
                .recv_timeout(BOUND)
                .unwrap_or_else(|_| panic!("chat {who} never printed {what}"));
            if matches(&next) {
                return next.2;
            }
            self.backlog.push(next);
        }
    }
}

#[test]
fn chats_show_joins_pass_lines_and_show_a_graceful_leave() {
    let (mut chats, lines) = start_chats(3);
    let mut out = Output {
        lines,
        backlog: Vec::new(),
    };
    // Each chat names itself first.
    let mut ids = Vec::new();
    for who in 0..3 {
        let line = out.expect(who, "its id", |l| l.starts_with("* you are "));
        ids.push(line.trim_start_matches("* you are ").to_owned());
    }
    // Chat 0 announces both others joining, so the line has somewhere to go.
    for _ in 0..2 {
        out.expect(0, "a join", |l| l.contains(" joined from "));
    }
    let text = "hello | from chat zero";
    writeln!(chats[0].stdin.as_mut().unwrap(), "{text}").unwrap();
    let expected = format!("[{}] {text}", ids[0]);
    out.expect(1, "the line", |l| l == expected);
    out.expect(2, "the line", |l| l == expected);

    // SIGTERM: chat 1 leaves gracefully, and the others say so.
    let pid = chats[1].id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let left = format!("* {} left: said goodbye", ids[1]);
    out.expect(0, "the goodbye", |l| l == left);
    out.expect(2, "the goodbye", |l| l == left);
    assert!(chats[1].wait().unwrap().success());

    for chat in &mut chats {
        drop(chat.stdin.take()); // end of input: the chat leaves and exits
    }
    for mut chat in chats {
        assert!(chat.wait().unwrap().success());
    }
}
