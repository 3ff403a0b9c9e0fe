//! Linux: `/proc`, pidfds and the `setsid` utility.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// What `/proc/<pid>/stat` tells.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stat {
    /// Clock ticks after boot.
    pub start_time: u64,
    /// Exited, not yet reaped by its parent: dead for every purpose here.
    pub zombie: bool,
}

/// `Ok(None)` when there is no such process (or it is hidden from us).
pub(crate) fn stat(pid: u32) -> std::io::Result<Option<Stat>> {
    let text = match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::SRCH.raw_os_error()) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    parse_stat(&text).map(Some).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })
}

/// Fields 3 (state) and 22 (start time), counted after the last
/// `)` because the command name in field 2 may contain anything.
fn parse_stat(text: &str) -> Option<Stat> {
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().take(20).collect();
    Some(Stat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// This boot's id (read once: it cannot change while we run).
pub(crate) fn boot_id() -> std::io::Result<[u8; 16]> {
    static BOOT: std::sync::OnceLock<Option<[u8; 16]>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .and_then(|t| crate::host::parse_boot_id(&t))
    })
    .ok_or_else(|| std::io::Error::other("/proc/sys/kernel/random/boot_id is unreadable"))
}

/// Inode of `pid`'s pid namespace.
pub(crate) fn pid_namespace(pid: u32) -> std::io::Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{pid}/ns/pid"))?.ino())
}

/// The effective uid of `pid` (the owner of its `/proc` entry).
pub(crate) fn owner(pid: u32) -> std::io::Result<u32> {
    Ok(std::fs::metadata(format!("/proc/{pid}"))?.uid())
}

/// The path `pid` was started from (` (deleted)` appended when it is gone).
pub(crate) fn exe_path(pid: u32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

/// The executable image `pid` runs, even if its path was since replaced.
pub(crate) fn open_exe(pid: u32) -> std::io::Result<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/exe"))
}

/// Every `flock` held on device `dev`: inode -> pids holding it, from
/// `/proc/locks` (one read). `None` when it cannot be read or parsed, so
/// callers fall back to trying each lock.
pub(crate) fn flock_holders(dev: u64) -> Option<std::collections::HashMap<u64, Vec<u32>>> {
    let text = std::fs::read_to_string("/proc/locks").ok()?;
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let mut held: std::collections::HashMap<u64, Vec<u32>> = std::collections::HashMap::new();
    for line in text.lines() {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF"; waiters carry "->".
        let mut fields = line.split_whitespace().skip(1);
        if fields.next()? != "FLOCK" {
            continue;
        }
        let mut fields = fields.skip(2);
        let pid: u32 = fields.next()?.parse().ok()?;
        let mut id = fields.next()?.split(':');
        let maj = u32::from_str_radix(id.next()?, 16).ok()?;
        let min = u32::from_str_radix(id.next()?, 16).ok()?;
        let ino: u64 = id.next()?.parse().ok()?;
        if (maj, min) == (major, minor) {
            held.entry(ino).or_default().push(pid);
        }
    }
    Some(held)
}

/// A handle on one process that can never come to mean another one: a pidfd,
/// opened first and checked against the start time second.
#[derive(Debug)]
pub(crate) struct ProcessHandle {
    pidfd: OwnedFd,
}

impl ProcessHandle {
    /// `Ok(None)` when the process with this pid and start time is gone.
    pub(crate) fn open(pid: u32, start_time: u64) -> std::io::Result<Option<Self>> {
        use rustix::process::{Pid, PidfdFlags, pidfd_open};
        let Some(raw) = i32::try_from(pid).ok().and_then(Pid::from_raw) else {
            return Ok(None);
        };
        let pidfd = match pidfd_open(raw, PidfdFlags::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::SRCH) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        match stat(pid)? {
            Some(s) if s.start_time == start_time && !s.zombie => Ok(Some(ProcessHandle { pidfd })),
            _ => Ok(None),
        }
    }

    /// True once the process exited (the pidfd is readable); never blocks.
    pub(crate) fn has_exited(&self) -> bool {
        self.wait_blocking(Duration::ZERO)
    }

    /// Waits up to `timeout` for the process to exit; true if it did.
    pub(crate) fn wait_blocking(&self, timeout: Duration) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = Timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&self.pidfd, PollFlags::IN)];
        loop {
            match poll(&mut fds, Some(&timeout)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Resolves when the process exits, without blocking the runtime.
    pub(crate) async fn exited(&self) {
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;
        let Ok(fd) = self.pidfd.try_clone() else {
            return;
        };
        // As in `host`: an `OwnedFd` moved into the `AsyncFd` stays open and
        // unchanged until it is dropped, which is the contract the deprecated
        // safe constructor cannot check for a generic `T`.
        #[allow(deprecated)]
        let Ok(fd) = AsyncFd::with_interest(fd, Interest::READABLE) else {
            return;
        };
        let _ = fd.readable().await;
    }

    /// SIGKILL to exactly this process.
    pub(crate) fn kill(&self) -> std::io::Result<()> {
        match rustix::process::pidfd_send_signal(&self.pidfd, rustix::process::Signal::KILL) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// `cmd` run in a session of its own.
///
/// `setsid` needs to run in the child between `fork` and `exec`, which only
/// an `unsafe` `pre_exec` hook can do; this crate forbids `unsafe`, so the
/// `setsid` utility (util-linux, busybox) does it and then execs the program
/// in place (same pid). Without that utility, the program gets a process
/// group of its own instead, which already keeps terminal signals away.
pub(crate) fn in_new_session(cmd: &std::process::Command) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let setsid = ["/usr/bin/setsid", "/bin/setsid", "/usr/sbin/setsid"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let mut out = match setsid {
        Some(setsid) => {
            let mut out = std::process::Command::new(setsid);
            out.arg(cmd.get_program());
            out
        }
        None => {
            let mut out = std::process::Command::new(cmd.get_program());
            out.process_group(0);
            out
        }
    };
    out.args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        out.current_dir(dir);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces_and_parentheses() {
        let text = "42 (a) b (c)) Z 1 42 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(text).unwrap();
        assert_eq!(s.start_time, 987_654);
        assert!(s.zombie);
        assert!(parse_stat("42 (short) S 1").is_none());
    }

    #[test]
    fn a_flock_this_process_holds_is_in_the_kernels_lock_table_with_our_pid() {
        let path = std::env::temp_dir().join(format!("cohort-flock-{}", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let meta = file.metadata().unwrap();
        file.try_lock().unwrap();
        let held = flock_holders(meta.dev()).expect("/proc/locks is readable here");
        assert!(held[&meta.ino()].contains(&std::process::id()));
        file.unlock().unwrap();
        let held = flock_holders(meta.dev()).unwrap();
        assert!(!held.contains_key(&meta.ino()));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn this_process_is_alive_and_not_a_zombie() {
        let s = stat(std::process::id()).unwrap().unwrap();
        assert!(!s.zombie);
        let handle = ProcessHandle::open(std::process::id(), s.start_time)
            .unwrap()
            .unwrap();
        assert!(!handle.has_exited());
        assert!(
            ProcessHandle::open(std::process::id(), s.start_time + 1)
                .unwrap()
                .is_none()
        );
    }
}
