//! Helpers shared by the integration tests of `cohort::local`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A private (0700) scratch directory, removed when dropped, also when a
/// test fails.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh scratch directory named after `test` and this process.
pub fn scratch(test: &str) -> Scratch {
    static N: AtomicUsize = AtomicUsize::new(0);
    let p = std::env::temp_dir().join(format!(
        "cohort-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&p);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&p)
        .unwrap();
    Scratch(p)
}

/// A test that cannot run in this environment: prints why and returns
/// normally, except under CI (the `CI` environment variable is set), where it
/// panics, so a green CI run always means every test really ran.
#[allow(dead_code)]
pub fn cannot_run_here(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "this test cannot run here, and CI is set, so it fails instead of skipping: {reason}"
        );
    }
    eprintln!("SKIPPED: {reason}");
}

/// Arguments that make this test binary run only the ignored test `name`
/// (the way these tests start helper processes).
#[allow(dead_code)]
pub fn child_args(name: &str) -> [&str; 5] {
    [
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]
}

/// Prints one report line for the parent test (`@@ ` prefixed, flushed).
#[allow(dead_code)]
pub fn report(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {line}").unwrap();
    out.flush().unwrap();
}

/// Waits (in a blocking thread) until the kernel reports `pid` stopped, so a
/// SIGSTOP that was only queued has taken effect.
#[allow(dead_code)]
pub fn wait_until_stopped(pid: i32) {
    let pid = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::waitid(
        rustix::process::WaitId::Pid(pid),
        rustix::process::WaitIdOptions::STOPPED | rustix::process::WaitIdOptions::NOWAIT,
    )
    .unwrap();
}
