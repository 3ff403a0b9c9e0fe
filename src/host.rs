//! This process's identity, and watching the processes of same-host peers.
//!
//! **Owns:** reading `/proc` for our [`ProcessTag`] and waiting for another
//! process on this host to exit. **Must not touch:** sockets, discovery rules
//! or the chart. The driver in `net` starts a watch when the protocol reports
//! a peer whose tag shares our boot id and pid namespace, and feeds the exit
//! back to the protocol as an input.
//!
//! # Why this is exact
//!
//! A pid alone is not an identity: pids are reused. So every announcement
//! carries the sender's pid *and* its start time (ticks after boot), plus the
//! boot id and pid namespace that make the pid meaningful. To watch a peer,
//! the driver opens a pidfd for the pid first and then checks the start time
//! of whatever process has that pid: if it matches, the pidfd refers to the
//! announced process (a pidfd never changes process), and it becomes
//! readable the instant that process exits, however it exits. If the pid is
//! held by a process with another start time, the announced one is already
//! gone.
//!
//! Where any of this is unavailable (not Linux, kernels before 5.3, `/proc`
//! hidden), the watch reports [`Watch::Unwatchable`] and the peer is covered
//! by its TTL like a remote one.

use crate::wire::ProcessTag;

/// How a watch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Watch {
    /// The process exited (or was already gone).
    Exited,
    /// The process cannot be watched from here; rely on the TTL.
    Unwatchable,
}

/// Whether pids in `theirs` mean the same processes as pids in `ours`.
pub(crate) fn same_pid_space(ours: &ProcessTag, theirs: &ProcessTag) -> bool {
    ours.boot_id == theirs.boot_id && ours.pid_namespace == theirs.pid_namespace
}

/// Our own tag, or `None` where it cannot be read.
#[cfg(target_os = "linux")]
pub(crate) fn this_process() -> Option<ProcessTag> {
    use std::os::unix::fs::MetadataExt;
    let boot_id = parse_boot_id(&std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?)?;
    let pid_namespace = std::fs::metadata("/proc/self/ns/pid").ok()?.ino();
    let pid = std::process::id();
    let start_time = start_time(pid).ok()??;
    Some(ProcessTag {
        boot_id,
        pid_namespace,
        pid,
        start_time,
    })
}

/// Our own tag, or `None` where it cannot be read.
#[cfg(not(target_os = "linux"))]
pub(crate) fn this_process() -> Option<ProcessTag> {
    None
}

/// Waits until the process `tag` names has exited.
#[cfg(target_os = "linux")]
pub(crate) async fn exited(tag: ProcessTag) -> Watch {
    use rustix::process::{Pid, PidfdFlags, pidfd_open};
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    let Some(pid) = i32::try_from(tag.pid).ok().and_then(Pid::from_raw) else {
        return Watch::Unwatchable;
    };
    let pidfd = match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::SRCH) => return Watch::Exited,
        Err(_) => return Watch::Unwatchable,
    };
    // Opened first, checked second: see the module docs.
    match start_time(tag.pid) {
        Ok(Some(t)) if t == tag.start_time => {}
        Ok(Some(_)) => return Watch::Exited, // the pid now belongs to another process
        // Gone between the two calls, or hidden from us (hidepid): the
        // pidfd alone cannot tell which, so leave it to the TTL.
        Ok(None) | Err(()) => return Watch::Unwatchable,
    }
    // tokio 1.54 deprecated this constructor because a generic `T` may close
    // or swap its fd while registered; its replacement is `unsafe` with that
    // contract. An `OwnedFd` moved into the `AsyncFd` stays open and unchanged
    // until the `AsyncFd` drops it, so the contract holds here and the crate
    // can stay `forbid(unsafe_code)`.
    #[allow(deprecated)]
    let Ok(pidfd) = AsyncFd::with_interest(pidfd, Interest::READABLE) else {
        return Watch::Unwatchable;
    };
    if pidfd.readable().await.is_err() {
        return Watch::Unwatchable;
    }
    Watch::Exited
}

/// Waits until the process `tag` names has exited.
#[cfg(not(target_os = "linux"))]
pub(crate) async fn exited(_tag: ProcessTag) -> Watch {
    Watch::Unwatchable
}

/// Start time of `pid` in clock ticks after boot: `Ok(None)` if there is no
/// such process (or it is hidden), `Err` if `/proc` could not be parsed.
#[cfg(target_os = "linux")]
fn start_time(pid: u32) -> Result<Option<u64>, ()> {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => parse_start_time(&stat).map(Some).ok_or(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(_) => Err(()),
    }
}

/// Field 22 of `/proc/<pid>/stat`. Field 2, the command name, is in
/// parentheses and may itself contain spaces and parentheses, so fields are
/// counted from the *last* `)`.
fn parse_start_time(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3, 4, ... follow the name; field 22 is the 20th of them.
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into 16 bytes.
pub(crate) fn parse_boot_id(text: &str) -> Option<[u8; 16]> {
    let hex: Vec<u8> = text.trim().bytes().filter(|b| *b != b'-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (byte, pair) in out.iter_mut().zip(hex.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_time_is_found_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("42 (short) S 1"), None);
        assert_eq!(parse_start_time("no parenthesis"), None);
    }

    #[test]
    fn a_boot_id_parses_into_sixteen_bytes_and_garbage_does_not() {
        let id = parse_boot_id("0123abcd-4567-89ef-0123-456789abcdef\n").unwrap();
        assert_eq!(id[0], 0x01);
        assert_eq!(id[15], 0xef);
        assert_eq!(parse_boot_id("0123"), None);
        assert_eq!(parse_boot_id("zz23abcd-4567-89ef-0123-456789abcdef"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_tagged_with_its_own_pid_and_a_matching_start_time() {
        let tag = this_process().expect("/proc is readable here");
        assert_eq!(tag.pid, std::process::id());
        assert_eq!(start_time(tag.pid), Ok(Some(tag.start_time)));
        assert!(same_pid_space(&tag, &tag));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_watch_ends_when_the_watched_child_is_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .spawn()
            .unwrap();
        let ours = this_process().unwrap();
        let tag = ProcessTag {
            pid: child.id(),
            start_time: start_time(child.id()).unwrap().unwrap(),
            ..ours
        };
        let watch = tokio::spawn(exited(tag));
        child.kill().unwrap();
        assert_eq!(watch.await.unwrap(), Watch::Exited);
        child.wait().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_recycled_pid_with_another_start_time_counts_as_exited() {
        let ours = this_process().unwrap();
        let stale = ProcessTag {
            start_time: ours.start_time.wrapping_add(1),
            ..ours
        };
        assert_eq!(exited(stale).await, Watch::Exited);
    }
}
