//! The `single_instance` example behaves as documented: the first run prints
//! `primary` and each request it receives; a second run prints `secondary`, then
//! the primary's answer to its arguments, and exits 0.
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

fn example() -> Option<PathBuf> {
    // target/<profile>/deps/<this test> -> target/<profile>/examples/single_instance
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples/single_instance");
    path.exists().then_some(path)
}

#[tokio::test]
async fn the_example_prints_its_role_first_and_a_second_run_prints_the_primary_answer() {
    let Some(example) = example() else {
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
