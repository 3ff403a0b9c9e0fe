//! The chat example, as a person uses it: processes see each other join, a
//! line typed into one is printed by the others, and a chat stopped with
//! SIGTERM or Ctrl-C leaves with a goodbye and exits at once, with its
//! input still open (a terminal, or a pipe nobody closed). One test drives
//! two chats in a real terminal through tmux. Needs the example binary,
//! which `cargo test` builds before running tests. Run inside a private
//! network namespace (`scripts/test`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Failure bound only: everything here takes milliseconds when it works.
const BOUND: Duration = Duration::from_secs(20);

/// Every chat uses the same namespace and port, as it would for a person:
/// tests that start chats take turns, so they never see each other's.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

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

fn start_chats(n: usize) -> (Vec<Child>, Output) {
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
    let out = Output {
        lines: rx,
        backlog: Vec::new(),
    };
    (chats, out)
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

    /// Each chat's id, from its first line.
    fn ids(&mut self, n: usize) -> Vec<String> {
        (0..n)
            .map(|who| {
                let line = self.expect(who, "its id", |l| l.starts_with("* you are "));
                let rest = line.trim_start_matches("* you are ");
                rest.split('.').next().unwrap().to_owned()
            })
            .collect()
    }
}

/// Waits for `child` to exit, at most `bound`. A thread does the waiting,
/// so the test neither polls nor sleeps.
fn exits_within(child: Child, bound: Duration) -> Option<(ExitStatus, Duration)> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(bound) {
        Ok(status) => Some((status.unwrap(), start.elapsed())),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            None
        }
    }
}

fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn chats_show_joins_pass_lines_and_leave_at_once_on_sigterm_with_stdin_open() {
    let _turn = one_at_a_time();
    let (mut chats, mut out) = start_chats(3);
    let ids = out.ids(3);
    // Chat 0 announces both others joining, so the line has somewhere to go.
    for _ in 0..2 {
        out.expect(0, "a join", |l| l.contains(" joined from "));
    }
    let text = "hello | from chat zero";
    writeln!(chats[0].stdin.as_mut().unwrap(), "{text}").unwrap();
    let expected = format!("[{}] {text}", ids[0]);
    out.expect(1, "the line", |l| l == expected);
    out.expect(2, "the line", |l| l == expected);

    // SIGTERM while its stdin stays open (we keep the pipe): chat 1 leaves
    // gracefully and exits without waiting for input.
    let mut chat1 = chats.remove(1);
    let _stdin_kept_open = chat1.stdin.take();
    signal(&chat1, "TERM");
    let (status, took) = exits_within(chat1, BOUND)
        .expect("the chat did not exit on SIGTERM while its stdin was open");
    assert!(status.success(), "{status}");
    println!("chat exited {took:?} after SIGTERM");
    let left = format!("* {} left: said goodbye", ids[1]);
    out.expect(0, "the goodbye", |l| l == left);
    out.expect(2, "the goodbye", |l| l == left);

    // End of input is a graceful leave too.
    for mut chat in chats {
        drop(chat.stdin.take());
        let (status, _) = exits_within(chat, BOUND).expect("no exit at end of input");
        assert!(status.success());
    }
}

#[test]
fn a_chat_interrupted_with_its_stdin_open_says_goodbye_and_exits() {
    let _turn = one_at_a_time();
    let (mut chats, mut out) = start_chats(2);
    let ids = out.ids(2);
    out.expect(0, "a join", |l| l.contains(" joined from "));
    let chat1 = chats.remove(1);
    signal(&chat1, "INT");
    let (status, _) = exits_within(chat1, BOUND)
        .expect("the chat did not exit on SIGINT while its stdin was open");
    assert!(status.success(), "{status}");
    let left = format!("* {} left: said goodbye", ids[1]);
    out.expect(0, "the goodbye", |l| l == left);
    let mut chat0 = chats.remove(0);
    drop(chat0.stdin.take());
    exits_within(chat0, BOUND).expect("no exit at end of input");
}

#[test]
fn help_prints_usage_and_an_unknown_argument_is_an_error() {
    let help = Command::new(chat_binary()).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.starts_with("usage: chat [--loopback]"), "{text}");
    assert!(
        text.contains("Ctrl-C"),
        "the usage says how to quit: {text}"
    );

    // The typo must not start a LAN chat on the real multicast group.
    let typo = Command::new(chat_binary())
        .arg("--loopbak")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(2));
    let err = String::from_utf8(typo.stderr).unwrap();
    assert!(err.contains("unknown argument \"--loopbak\""), "{err}");
    assert!(
        typo.stdout.is_empty(),
        "it must not start: {:?}",
        typo.stdout
    );
}

/// A private tmux server: two terminals a person could be looking at.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// `None` when tmux is not installed (a failure under CI).
    fn start() -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "tmux is not installed, and CI is set (scripts/test installs it)"
            );
            println!("SKIPPED: tmux is not installed");
            return None;
        }
        let tmux = Tmux {
            socket: format!("cohort-chat-test-{}", std::process::id()),
        };
        tmux.run(&[
            "-f",
            "/dev/null",
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            "160",
            "-y",
            "40",
        ]);
        // Keep a pane after its program exits, to read how it ended.
        tmux.run(&["set-option", "-g", "remain-on-exit", "on"]);
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn open(&self, window: &str, command: &str) {
        self.run(&["new-window", "-t", "t", "-n", window, command]);
    }

    fn screen(&self, window: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", &format!("t:{window}")])
    }

    /// Waits until the window shows what `want` looks for; the screen is
    /// looked at every 20 ms, as a person would keep looking.
    fn wait_for(&self, window: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen(window);
            if want(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < BOUND,
                "window {window} never showed {what}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn keys(&self, window: &str, keys: &[&str]) {
        let target = format!("t:{window}");
        let mut args = vec!["send-keys", "-t", &target];
        args.extend(keys);
        self.run(&args);
    }

    /// `Some(exit status)` once the window's program has ended.
    fn exited(&self, window: &str) -> Option<i32> {
        let out = self.run(&[
            "display-message",
            "-p",
            "-t",
            &format!("t:{window}"),
            "#{pane_dead} #{pane_dead_status}",
        ]);
        let mut words = out.split_whitespace();
        (words.next() == Some("1")).then(|| words.next().unwrap_or("-1").parse().unwrap_or(-1))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

#[test]
fn in_a_real_terminal_ctrl_c_leaves_at_once_and_the_other_chat_says_so() {
    let _turn = one_at_a_time();
    let Some(tmux) = Tmux::start() else { return };
    let chat = format!("{} --loopback", chat_binary().display());
    tmux.open("a", &chat);
    let a = tmux.wait_for("a", "its greeting", |s| s.contains("Type a line"));
    let first = a.lines().next().unwrap_or_default().to_owned();
    assert!(
        first.starts_with("* you are ") && first.contains("Ctrl-C leaves"),
        "the first line says how to type and quit: {first}"
    );
    let a_id = first["* you are ".len()..]
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    tmux.open("b", &chat);
    tmux.wait_for("b", "a's join", |s| s.contains(&format!("* {a_id} joined")));
    tmux.wait_for("a", "b's join", |s| s.matches(" joined from ").count() == 1);

    tmux.keys("a", &["hello from a terminal", "Enter"]);
    tmux.wait_for("b", "the line", |s| {
        s.contains(&format!("[{a_id}] hello from a terminal"))
    });

    // Half a line typed, then Ctrl-C: the chat ends, its terminal stays.
    tmux.keys("a", &["half a line"]);
    tmux.keys("a", &["C-c"]);
    tmux.wait_for("b", "a's goodbye", |s| {
        s.contains(&format!("* {a_id} left: said goodbye"))
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = tmux.exited("a") {
            break status;
        }
        assert!(start.elapsed() < BOUND, "the chat did not exit on Ctrl-C");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status, 0, "{}", tmux.screen("a"));
    tmux.keys("b", &["C-c"]);
}
