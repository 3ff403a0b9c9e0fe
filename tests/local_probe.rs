//! `InstanceHandle::probe`: a real primary is accepted; a process that holds
//! the endpoint but answers the identity challenge wrongly, as someone else,
//! with garbage, or not at all is rejected with a typed reason.
//!
//! Run inside a private network namespace:
//! `scripts/isolated cargo test --offline --test local_probe`.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use cohort::local::{
    Error, Expect, InstanceHandle, ProbeError, ProcessIdentity, Role, SingleInstance, Verdict,
};

mod common;

const APP: &str = "test.probe";

fn app(dir: &Path) -> SingleInstance {
    SingleInstance::new(APP)
        .runtime_dir(dir)
        .timeout(Duration::from_millis(500))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

const HELLO: [u8; 7] = [0, 0, 0, 3, 1, 0, 1];

/// What the fake does after greeting and reading the challenge's nonce.
enum Fake {
    WrongNonce,
    SomeoneElse(ProcessIdentity),
    Garbage,
    Silent,
}

/// Holds the application's endpoint in place of a primary (no lock held:
/// nothing but the socket), greets, reads the challenge, answers as told.
fn fake_primary(dir: &Path, fake: Fake) {
    let app_dir = dir.join(APP);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&app_dir)
        .unwrap();
    let listener = UnixListener::bind(app_dir.join("socket")).unwrap();
    std::thread::spawn(move || {
        let Ok((mut s, _)) = listener.accept() else {
            return;
        };
        s.write_all(&HELLO).unwrap();
        let mut challenge = [0u8; 4 + 1 + 1 + 16];
        s.read_exact(&mut challenge).unwrap();
        let mut nonce: [u8; 16] = challenge[6..].try_into().unwrap();
        let identity = match fake {
            Fake::Silent => {
                let _ = s.read_to_end(&mut Vec::new());
                return;
            }
            Fake::Garbage => {
                s.write_all(&frame(&[1, 0xff, 0xff, 0xff])).unwrap();
                return;
            }
            Fake::WrongNonce => {
                nonce[0] ^= 1;
                ProcessIdentity::current().unwrap()
            }
            Fake::SomeoneElse(identity) => identity,
        };
        // ToSecondary::Identity is variant 3: nonce, then the identity.
        let mut body = vec![1, 3];
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&postcard::to_allocvec(&identity).unwrap());
        s.write_all(&frame(&body)).unwrap();
        let _ = s.read_to_end(&mut Vec::new());
    });
}

fn probe_error(dir: &Path) -> ProbeError {
    match InstanceHandle::probe_blocking(&app(dir), &Expect::any()) {
        Err(Error::Probe(reason)) => reason,
        other => panic!("expected a typed probe rejection, got {other:?}"),
    }
}

#[test]
fn a_real_primary_is_accepted_and_its_handle_names_it() {
    let dir = common::scratch("local-probe");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let Role::Primary(primary) = runtime.block_on(app(&dir).acquire()).unwrap() else {
        panic!("must be primary");
    };
    drop(runtime);
    let me = ProcessIdentity::current().unwrap();
    let handle =
        InstanceHandle::probe_blocking(&app(&dir), &Expect::any().exe_hash(me.exe_hash)).unwrap();
    assert_eq!(handle.identity(), &me);
    assert!(handle.is_alive());
    // Expecting another process (an old record) is refused with the reason.
    let mut old = me.clone();
    old.start_time -= 1;
    assert!(matches!(
        InstanceHandle::probe_blocking(&app(&dir), &Expect::any().identity(old)),
        Err(Error::Probe(ProbeError::Unexpected { .. }))
    ));
    drop(primary);
    assert!(matches!(probe_error(&dir), ProbeError::NoPrimary { .. }));
}

#[test]
fn an_answer_with_the_wrong_nonce_is_rejected() {
    let dir = common::scratch("local-probe");
    fake_primary(&dir, Fake::WrongNonce);
    assert!(matches!(probe_error(&dir), ProbeError::WrongNonce { .. }));
}

#[test]
fn an_answer_claiming_another_process_is_rejected_as_an_impostor() {
    let dir = common::scratch("local-probe");
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let identity = loop {
        let id = ProcessIdentity::of_pid(other.id()).unwrap();
        if id.exe.ends_with("sleep") {
            break id;
        }
        std::thread::yield_now();
    };
    fake_primary(&dir, Fake::SomeoneElse(identity));
    let reason = probe_error(&dir);
    other.kill().unwrap();
    other.wait().unwrap();
    assert!(
        matches!(reason, ProbeError::PeerMismatch { socket_pid, claimed_pid } if socket_pid as u32 == std::process::id() && claimed_pid == other.id()),
        "{reason}"
    );
}

#[test]
fn a_stale_identity_of_this_very_pid_is_rejected_as_not_verified() {
    let dir = common::scratch("local-probe");
    let mut stale = ProcessIdentity::current().unwrap();
    stale.boot_id = [7; 16];
    fake_primary(&dir, Fake::SomeoneElse(stale));
    assert!(matches!(
        probe_error(&dir),
        ProbeError::NotVerified {
            verdict: Verdict::EarlierBoot,
            ..
        }
    ));
}

#[test]
fn a_garbage_answer_is_rejected_as_a_bad_frame() {
    let dir = common::scratch("local-probe");
    fake_primary(&dir, Fake::Garbage);
    assert!(matches!(probe_error(&dir), ProbeError::Frame { .. }));
}

#[test]
fn no_answer_at_all_is_rejected_at_the_deadline() {
    let dir = common::scratch("local-probe");
    fake_primary(&dir, Fake::Silent);
    assert!(matches!(probe_error(&dir), ProbeError::Unresponsive { .. }));
}

#[tokio::test]
async fn a_blocking_probe_inside_a_runtime_is_an_error() {
    let dir = common::scratch("local-probe");
    assert!(matches!(
        InstanceHandle::probe_blocking(&app(&dir), &Expect::any()),
        Err(Error::BlockingInRuntime { .. })
    ));
}
