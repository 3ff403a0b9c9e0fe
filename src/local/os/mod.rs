//! The operating-system boundary of `cohort::local`: everything that asks the
//! kernel about a process, or spawns one, goes through here.
//!
//! **Owns:** reading a process's start time, owner, executable and boot id,
//! holding a handle on a process that survives pid reuse (a pidfd), signalling
//! and awaiting it, and starting a program in a session of its own.
//! **Must not touch:** sockets, frames, the election or any file outside
//! `/proc` (the runtime directory belongs to `dir`).
//!
//! # Porting
//!
//! One module per operating system implements the same small set of
//! functions; the rest of `cohort::local` calls only those. Linux is the one
//! built and tested. What the others would use:
//!
//! | need | Linux (`linux.rs`) | macOS | Windows |
//! | --- | --- | --- | --- |
//! | start time of a pid | field 22 of `/proc/<pid>/stat` | `proc_pidinfo(PROC_PIDTBSDINFO)`: `pbi_start_tvsec/usec` | `GetProcessTimes` creation time |
//! | boot id | `/proc/sys/kernel/random/boot_id` | `sysctl kern.bootsessionuuid` | boot time from `GetTickCount64` subtracted from now, rounded |
//! | owner and executable | `/proc/<pid>` owner, `/proc/<pid>/exe` | `proc_pidinfo` uid, `proc_pidpath` | `OpenProcessToken` SID, `QueryFullProcessImageNameW` |
//! | a handle that survives pid reuse | `pidfd_open` (5.3+), then the start time rechecked | `kqueue` `EVFILT_PROC`/`NOTE_EXIT` on the pid, start time rechecked | the process `HANDLE` itself |
//! | wait for exit without a thread | pidfd readable (epoll) | kqueue | `WaitForSingleObject` / registered wait |
//! | kill that exact process | `pidfd_send_signal` | `kill` after the start-time recheck | `TerminateProcess` on the handle |
//! | own session | `setsid` (the `setsid` utility, no `unsafe` `pre_exec`) | `setsid` likewise | `DETACHED_PROCESS` creation flag |
//! | peer of a local socket | `SO_PEERCRED` | `getpeereid` / `LOCAL_PEERPID` | `GetNamedPipeClientProcessId` + client SID |

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod unsupported;
#[cfg(not(target_os = "linux"))]
pub(crate) use unsupported::*;
