//! `ProcessIdentity::verify` tells apart every way a record goes stale: the
//! process exited, its pid was recycled, its binary was replaced on disk, or
//! the record is from another boot; and it matches the chart's `ProcessTag`.
//!
//! Run inside a private network namespace (no socket is opened, but the
//! suite runs there): `scripts/isolated cargo test --offline --test local_identity`.

use std::path::Path;
use std::process::{Child, Command};

use cohort::local::{ExeHash, IdentityError, ProcessIdentity, Verdict};

mod common;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sleeper(program: &Path) -> Killed {
    Killed(Command::new(program).arg("1000").spawn().unwrap())
}

fn sleep_binary() -> std::path::PathBuf {
    ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.exists())
        .expect("a sleep binary")
}

/// Waits until the child has exec'd `program` (its identity names it).
fn identity_after_exec(pid: u32, program: &Path) -> ProcessIdentity {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let id = ProcessIdentity::of_pid(pid).unwrap();
        if id.exe == program {
            return id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the child never exec'd"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_record_of_a_process_that_exited_reports_dead_also_before_it_is_reaped() {
    let mut child = sleeper(&sleep_binary());
    let record = identity_after_exec(child.0.id(), &sleep_binary());
    assert_eq!(record.verify(), Verdict::Alive);
    child.0.kill().unwrap();
    // Not reaped yet: a zombie is dead for every purpose here.
    let pid = rustix::process::Pid::from_raw(child.0.id() as i32).unwrap();
    rustix::process::waitid(
        rustix::process::WaitId::Pid(pid),
        rustix::process::WaitIdOptions::EXITED | rustix::process::WaitIdOptions::NOWAIT,
    )
    .unwrap();
    assert_eq!(record.verify(), Verdict::Dead);
    child.0.wait().unwrap();
    assert_eq!(record.verify(), Verdict::Dead);
    assert!(matches!(
        ProcessIdentity::of_pid(child.0.id()),
        Err(IdentityError::NoSuchProcess { .. })
    ));
}

#[test]
fn a_record_pointing_at_a_live_unrelated_pid_with_another_start_time_reports_recycled() {
    let unrelated = sleeper(&sleep_binary());
    let mut record = identity_after_exec(unrelated.0.id(), &sleep_binary());
    // The record is of an earlier process that had this pid.
    record.start_time -= 1;
    assert_eq!(record.verify(), Verdict::Recycled);
}

#[test]
fn a_copied_binary_replaced_on_disk_reports_a_changed_binary() {
    let dir = common::scratch("local-identity");
    let copy = dir.join("sleep-copy");
    std::fs::copy(sleep_binary(), &copy).unwrap();
    let child = sleeper(&copy);
    let record = identity_after_exec(child.0.id(), &copy);
    assert_eq!(record.exe_hash, ExeHash::of_file(&copy).unwrap());
    assert_eq!(record.verify(), Verdict::Alive);
    // An upgrade: a modified binary renamed over the path (a running
    // executable cannot be written in place).
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes.extend_from_slice(b"upgraded");
    std::fs::write(dir.join("new"), &bytes).unwrap();
    std::fs::rename(dir.join("new"), &copy).unwrap();
    assert_eq!(record.verify(), Verdict::BinaryChanged);
    // The running image is still the old one.
    assert_eq!(
        ProcessIdentity::of_pid(child.0.id()).unwrap().exe_hash,
        record.exe_hash
    );
}

#[test]
fn a_record_with_another_boot_id_reports_an_earlier_boot() {
    let mut record = ProcessIdentity::current().unwrap();
    record.boot_id = [0x42; 16];
    assert_eq!(record.verify(), Verdict::EarlierBoot);
}

#[test]
fn an_identity_travels_through_serde_and_matches_the_charts_process_tag() {
    let me = ProcessIdentity::current().unwrap();
    assert_eq!(me.verify(), Verdict::Alive);
    let bytes = postcard::to_allocvec(&me).unwrap();
    let back: ProcessIdentity = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(back, me);
    let tag = cohort::wire::ProcessTag {
        boot_id: me.boot_id,
        pid_namespace: me.pid_namespace,
        pid: me.pid,
        start_time: me.start_time,
    };
    assert!(me.matches_tag(&tag));
    assert_eq!(me.tag(), tag);
    assert!(!me.matches_tag(&cohort::wire::ProcessTag {
        start_time: tag.start_time + 1,
        ..tag
    }));
    assert_eq!(ProcessIdentity::of_pid(me.pid).unwrap(), me);
}
