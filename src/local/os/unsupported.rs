//! Systems without a port yet: every query reports "unsupported", so the
//! portable code above compiles and answers with typed errors.

use std::path::PathBuf;
use std::time::Duration;

/// What `/proc/<pid>/stat` tells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    pub start_time: u64,
    pub zombie: bool,
}

fn unsupported() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "process identity is implemented for Linux only",
    )
}

pub(crate) fn stat(_pid: u32) -> std::io::Result<Option<Stat>> {
    Err(unsupported())
}
pub(crate) fn boot_id() -> std::io::Result<[u8; 16]> {
    Err(unsupported())
}
pub(crate) fn pid_namespace(_pid: u32) -> std::io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn owner(_pid: u32) -> std::io::Result<u32> {
    Err(unsupported())
}
pub(crate) fn exe_path(_pid: u32) -> std::io::Result<PathBuf> {
    Err(unsupported())
}
pub(crate) fn open_exe(_pid: u32) -> std::io::Result<std::fs::File> {
    Err(unsupported())
}

pub(crate) fn flock_holders(_dev: u64) -> Option<std::collections::HashMap<u64, Vec<u32>>> {
    None
}

/// A handle on one process.
#[derive(Debug)]
pub(crate) struct ProcessHandle(());

impl ProcessHandle {
    pub(crate) fn open(_pid: u32, _start_time: u64) -> std::io::Result<Option<Self>> {
        Err(unsupported())
    }
    pub(crate) fn has_exited(&self) -> bool {
        false
    }
    pub(crate) async fn exited(&self) {}
    pub(crate) fn wait_blocking(&self, _timeout: Duration) -> bool {
        false
    }
    pub(crate) fn kill(&self) -> std::io::Result<()> {
        Err(unsupported())
    }
}

pub(crate) fn in_new_session(cmd: &std::process::Command) -> std::process::Command {
    let mut out = std::process::Command::new(cmd.get_program());
    out.args(cmd.get_args());
    out
}
