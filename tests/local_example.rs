//! The examples behave as documented. `single_instance`: the first run prints
//! `primary` and each request it receives; a second run prints `secondary`,
//! then the primary's answer to its arguments, and exits 0. `daemon`: the first
//! run starts the daemon and prints its answer, the second reuses the same
//! daemon, and `--stop` ends it.
//!
//! `cargo test` builds the examples next to the test binaries; when the example
//! binary is missing (for example with `cargo test --test local_example` alone)
//! the test says so and skips, or fails under CI (`CI` set). Run inside a private network namespace:
//! `/work/shared/bin/isolated cargo test`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

mod common;

const BOUND: Duration = Duration::from_secs(20);

fn example(name: &str) -> Option<PathBuf> {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples").join(name);
    path.exists().then_some(path)
}

#[tokio::test]
async fn the_example_prints_its_role_first_and_a_second_run_prints_the_primary_answer() {
    let Some(example) = example("single_instance") else {
        common::cannot_run_here(
            "the single_instance example is not built; run `cargo test` (which builds examples) or `cargo build --example single_instance` first",
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("cohort-local-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();

    let mut primary = Command::new(&example)
        .env("COHORT_EXAMPLE_DIR", &dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut primary_out = BufReader::new(primary.stdout.take().unwrap()).lines();
    let next = async |lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>| {
        tokio::time::timeout(BOUND, lines.next_line())
            .await
            .expect("the example printed in time")
            .unwrap()
            .expect("the example printed a line")
    };
    assert_eq!(next(&mut primary_out).await, "primary");

    let second = tokio::time::timeout(
        BOUND,
        Command::new(&example)
            .args(["one", "two words"])
            .env("COHORT_EXAMPLE_DIR", &dir)
            .stderr(Stdio::null())
            .output(),
    )
    .await
    .expect("the second run finishes")
    .unwrap();
    assert!(second.status.success(), "the second run exits 0");
    let text = String::from_utf8(second.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("secondary"));
    let answer = lines.next().expect("the primary's answer");
    assert!(
        answer.contains(&format!("pid {}", primary.id().unwrap()))
            && answer.contains(r#"["one", "two words"]"#),
        "{answer}"
    );
    let seen = next(&mut primary_out).await;
    assert!(
        seen.starts_with("request from pid") && seen.contains(r#"["one", "two words"]"#),
        "{seen}"
    );

    // --quit makes the primary hand over and exit 0.
    let quit = Command::new(&example)
        .arg("--quit")
        .env("COHORT_EXAMPLE_DIR", &dir)
        .output()
        .await
        .unwrap();
    assert!(quit.status.success());
    let status = tokio::time::timeout(BOUND, primary.wait())
        .await
        .expect("the primary exits after --quit")
        .unwrap();
    assert!(status.success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_daemon_example_starts_one_daemon_reuses_it_and_stops_it() {
    let Some(example) = example("daemon") else {
        common::cannot_run_here(
            "the daemon example is not built; run `cargo test` (which builds examples) or `cargo build --example daemon` first",
        );
        return;
    };
    let dir = common::scratch("local-example-daemon");
    let run = |arg: Option<&'static str>| {
        let mut cmd = Command::new(&example);
        cmd.args(arg).env("COHORT_EXAMPLE_DIR", dir.as_path());
        async move {
            let out = tokio::time::timeout(BOUND, cmd.output())
                .await
                .expect("the example finishes")
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let first = run(None).await;
    let second = run(None).await;
    let pid = |line: &str| -> String {
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .trim_end_matches(':')
            .to_string()
    };
    assert!(first.ends_with("pong #1\n"), "{first}");
    assert!(second.ends_with("pong #2\n"), "{second}");
    assert_eq!(
        pid(&first),
        pid(&second),
        "the second run reuses the daemon"
    );
    let stopped = run(Some("--stop")).await;
    assert_eq!(stopped.trim(), format!("stopped daemon {}", pid(&first)));
    assert!(
        !std::path::Path::new(&format!("/proc/{}", pid(&first))).exists()
            || std::fs::read_to_string(format!("/proc/{}/stat", pid(&first)))
                .is_ok_and(|s| s.contains(") Z ")),
        "the daemon exited"
    );
}
