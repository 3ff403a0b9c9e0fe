//! Forwarding through real process arguments: 100 secondaries launched
//! concurrently each get their own reply, and arguments with spaces, newlines,
//! `|` and non-UTF-8 bytes arrive byte-exact.
//!
//! This target has `harness = false`: libtest refuses non-UTF-8 arguments, and
//! the point here is that a secondary's real `argv` (read by
//! `Secondary::forward_args`) travels unmangled. `main` therefore either runs
//! as a secondary (when `COHORT_FORWARD_DIR` is set) or runs the test and prints
//! libtest-style result lines.
//!
//! Run inside a private network namespace:
//! `/work/shared/bin/isolated cargo test --test local_forward`.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cohort::local::{BlockingRole, Reply, Role, SingleInstance};

const SECONDARIES: usize = 100;
const BOUND: Duration = Duration::from_secs(60);
const APP: &str = "test.forward";

/// What the primary sends back: the arguments, working directory and forwarded
/// variable exactly as it received them.
type Echo = (Vec<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

fn args_for(n: usize) -> Vec<OsString> {
    vec![
        OsString::from(format!("id-{n}")),
        OsString::from("with space"),
        OsString::from("new\nline"),
        OsString::from("a|b"),
        OsString::new(), // an empty argument
        OsString::from_vec(
            b"non-utf8 \xff\xfe\x80 "
                .iter()
                .copied()
                .chain(n.to_string().into_bytes())
                .collect(),
        ),
        OsString::from("--looks-like=an option"),
        OsString::from("tab\tand \"quotes\" and 'more'"),
    ]
}

fn env_value(n: usize) -> OsString {
    OsString::from_vec([b"v\xff|".as_slice(), n.to_string().as_bytes()].concat())
}

/// Secondary mode: forward this process's real argv and report the reply.
fn secondary(dir: PathBuf) -> ! {
    let role = SingleInstance::new(APP)
        .runtime_dir(dir)
        .timeout(BOUND)
        .reply_timeout(BOUND)
        .forward_env(["COHORT_FORWARD_VAR"])
        .acquire_blocking();
    match role {
        Ok(BlockingRole::Secondary(s)) => match s.forward_args() {
            Ok(reply) => {
                let hex: String = reply
                    .payload_bytes()
                    .unwrap_or_default()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                println!("{hex}");
                std::process::exit(reply.status());
            }
            Err(e) => {
                eprintln!("forward failed: {e}");
                std::process::exit(200);
            }
        },
        Ok(BlockingRole::Primary(_)) => {
            eprintln!("a secondary unexpectedly became primary");
            std::process::exit(201);
        }
        Err(e) => {
            eprintln!("acquire failed: {e}");
            std::process::exit(202);
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn scratch() -> PathBuf {
    let p = std::env::temp_dir().join(format!("cohort-local-forward-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&p)
        .unwrap();
    p
}

fn a_hundred_concurrent_secondaries_each_get_their_own_reply_with_byte_exact_arguments() {
    let dir = scratch();
    // The secondaries run in a directory whose name is itself awkward.
    let cwd = dir.join(OsString::from_vec(b"cwd with space|\xff".to_vec()));
    std::fs::create_dir(&cwd).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let Role::Primary(primary) = SingleInstance::new(APP)
            .runtime_dir(&dir)
            .acquire()
            .await
            .unwrap()
        else {
            panic!("the test process must be the primary");
        };
        let server = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while seen.len() < SECONDARIES {
                let req = primary.next_request().await.expect("primary keeps running");
                let id: usize = req.args()[0]
                    .to_str()
                    .and_then(|a| a.strip_prefix("id-"))
                    .and_then(|n| n.parse().ok())
                    .expect("first argument is id-N");
                assert_eq!(req.args(), args_for(id).as_slice(), "primary side, id {id}");
                assert!(seen.insert(id), "id {id} forwarded twice");
                let echo: Echo = (
                    req.args().iter().map(|a| a.as_bytes().to_vec()).collect(),
                    req.cwd().map(|c| c.as_os_str().as_bytes().to_vec()),
                    req.env_var("COHORT_FORWARD_VAR")
                        .map(|v| v.as_bytes().to_vec()),
                );
                // Each reply's status is the secondary's own id.
                let reply = Reply::new(id as i32).with_payload(&echo).unwrap();
                tokio::spawn(async move { req.reply(reply).await.unwrap() });
            }
            (primary, seen)
        });

        let started = Instant::now();
        let exe = std::env::current_exe().unwrap();
        let children: Vec<_> = (0..SECONDARIES)
            .map(|n| {
                tokio::process::Command::new(&exe)
                    .args(args_for(n))
                    .current_dir(&cwd)
                    .env("COHORT_FORWARD_DIR", &dir)
                    .env("COHORT_FORWARD_VAR", env_value(n))
                    .stdout(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap()
            })
            .collect();
        for (n, child) in children.into_iter().enumerate() {
            let out = tokio::time::timeout(BOUND, child.wait_with_output())
                .await
                .expect("every secondary finishes")
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(n as i32),
                "secondary {n} got its own status"
            );
            let text = String::from_utf8(out.stdout).unwrap();
            let echo: Echo = postcard::from_bytes(&unhex(text.trim())).unwrap();
            let expected: Vec<Vec<u8>> =
                args_for(n).iter().map(|a| a.as_bytes().to_vec()).collect();
            assert_eq!(echo.0, expected, "secondary {n}: arguments byte-exact");
            assert_eq!(
                echo.1.as_deref(),
                Some(cwd.as_os_str().as_bytes()),
                "secondary {n}: cwd"
            );
            assert_eq!(echo.2, Some(env_value(n).into_vec()), "secondary {n}: env");
        }
        let (_primary, seen) = tokio::time::timeout(BOUND, server).await.unwrap().unwrap();
        assert_eq!(seen.len(), SECONDARIES);
        eprintln!(
            "{SECONDARIES} concurrent secondaries served in {:?}",
            started.elapsed()
        );
    });
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Some(dir) = std::env::var_os("COHORT_FORWARD_DIR") {
        secondary(PathBuf::from(dir));
    }
    let tests: &[(&str, fn())] = &[(
        "a_hundred_concurrent_secondaries_each_get_their_own_reply_with_byte_exact_arguments",
        a_hundred_concurrent_secondaries_each_get_their_own_reply_with_byte_exact_arguments,
    )];
    // Honour a name filter as libtest would (flags such as --nocapture are ignored).
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected: Vec<_> = tests
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    let listing = std::env::args().any(|a| a == "--list");
    if listing {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return;
    }
    let started = Instant::now();
    println!("\nrunning {} tests", selected.len());
    let mut failed = Vec::new();
    for (name, test) in &selected {
        let ok = std::panic::catch_unwind(test).is_ok();
        println!("test {name} ... {}", if ok { "ok" } else { "FAILED" });
        if !ok {
            failed.push(*name);
        }
    }
    let passed = selected.len() - failed.len();
    println!(
        "\ntest result: {}. {passed} passed; {} failed; 0 ignored; 0 measured; {} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        failed.len(),
        tests.len() - selected.len(),
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}
