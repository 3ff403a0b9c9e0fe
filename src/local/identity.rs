//! Who a process is, across pid reuse, reboots and upgrades.
//!
//! **Owns:** [`ProcessIdentity`] (reading it for this process or any pid, and
//! checking it against the live system with [`ProcessIdentity::verify`]), the
//! BLAKE3 hash of executables ([`ExeHash`]) and the cache of those hashes.
//! **Must not touch:** sockets, frames, the election; every kernel query goes
//! through `os`.
//!
//! A pid alone names a process only until it exits; a pid plus its start time
//! (clock ticks after boot) names it for as long as this boot lasts; the boot
//! id makes a record from another boot recognisable; the pid namespace makes
//! the pid meaningful at all. The executable's path and hash say which program
//! it is, so a record can tell "the same process, but the binary on disk was
//! replaced" (an upgrade) from "the same process running the same binary".

use std::collections::HashMap;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::os;
use crate::wire::ProcessTag;

/// A BLAKE3 hash of an executable file.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExeHash(pub [u8; 32]);

impl std::fmt::Debug for ExeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExeHash({self})")
    }
}

impl std::fmt::Display for ExeHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl ExeHash {
    /// The hash of the file at `path` (cached by inode, size and times, so a
    /// file is read once until it changes).
    ///
    /// ```no_run
    /// let hash = cohort::local::ExeHash::of_file("/usr/bin/env")?;
    /// println!("{hash}");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn of_file(path: impl AsRef<Path>) -> std::io::Result<ExeHash> {
        hash_file(std::fs::File::open(path)?)
    }
}

/// Hashes whose files were already read, keyed by what changes when a file does.
type FileKey = (u64, u64, u64, i64, i64, i64, i64);

/// At most this many hashes are cached; the cache starts over when full.
const HASH_CACHE: usize = 64;

fn hash_file(mut file: std::fs::File) -> std::io::Result<ExeHash> {
    static CACHE: OnceLock<Mutex<HashMap<FileKey, ExeHash>>> = OnceLock::new();
    let m = file.metadata()?;
    let key = (
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    );
    let cache = CACHE.get_or_init(Default::default);
    if let Some(hash) = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&key)
    {
        return Ok(*hash);
    }
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut file, &mut hasher)?;
    let hash = ExeHash(*hasher.finalize().as_bytes());
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if cache.len() >= HASH_CACHE {
        cache.clear();
    }
    cache.insert(key, hash);
    Ok(hash)
}

/// Why a process's identity could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// There is no process with this pid (or it is hidden from this user).
    #[error("there is no process {pid} (it exited, or /proc hides it from this user)")]
    NoSuchProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// Part of the identity could not be read.
    #[error(
        "could not read the {what} of process {pid}; reading another user's process needs the same rights as ptrace"
    )]
    Unreadable {
        /// Which part.
        what: &'static str,
        /// The pid asked for.
        pid: u32,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
}

/// One process, identified so that a record of it can be checked later.
///
/// It is `Serialize + Deserialize`, so it can be stored (a daemon's record
/// file) or travel (`cohort::local` frames; same-host chart entries):
///
/// ```no_run
/// use cohort::local::{ProcessIdentity, Verdict};
/// let me = ProcessIdentity::current()?;
/// assert_eq!(me.verify(), Verdict::Alive);
/// # Ok::<(), cohort::local::IdentityError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessIdentity {
    /// Process id, in the pid namespace `pid_namespace`.
    pub pid: u32,
    /// Start time in clock ticks after boot.
    pub start_time: u64,
    /// The kernel's boot id.
    pub boot_id: [u8; 16],
    /// Inode of the pid namespace the pid belongs to.
    pub pid_namespace: u64,
    /// The process's effective user id.
    pub uid: u32,
    /// The path the executable was started from (Linux appends ` (deleted)`
    /// when that file has since been removed).
    #[serde(with = "path_bytes")]
    pub exe: PathBuf,
    /// BLAKE3 of the executable image the process runs.
    pub exe_hash: ExeHash,
}

/// What [`ProcessIdentity::verify`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The same process is alive and its executable on disk is unchanged.
    Alive,
    /// The process exited.
    Dead,
    /// The pid now belongs to another process (another start time), or the
    /// process exec'd another program.
    Recycled,
    /// The same process, but the file at its executable path has changed
    /// (an upgrade was installed, or the file was removed).
    BinaryChanged,
    /// The record is from an earlier boot: its process cannot exist now.
    EarlierBoot,
    /// This system cannot tell: another pid namespace, `/proc` hidden, or an
    /// unsupported OS.
    Unverifiable,
}

impl ProcessIdentity {
    /// This process (read once, then cached: including the executable's hash).
    pub fn current() -> Result<ProcessIdentity, IdentityError> {
        static ME: OnceLock<ProcessIdentity> = OnceLock::new();
        if let Some(me) = ME.get() {
            return Ok(me.clone());
        }
        let me = Self::of_pid(std::process::id())?;
        Ok(ME.get_or_init(|| me).clone())
    }

    /// The process `pid` as it is now.
    ///
    /// ```no_run
    /// let init = cohort::local::ProcessIdentity::of_pid(std::process::id())?;
    /// println!("{} started at tick {} from {}", init.pid, init.start_time, init.exe.display());
    /// # Ok::<(), cohort::local::IdentityError>(())
    /// ```
    pub fn of_pid(pid: u32) -> Result<ProcessIdentity, IdentityError> {
        let unreadable = |what| move |source| IdentityError::Unreadable { what, pid, source };
        let stat = os::stat(pid)
            .map_err(unreadable("start time"))?
            .filter(|s| !s.zombie)
            .ok_or(IdentityError::NoSuchProcess { pid })?;
        let identity = ProcessIdentity {
            pid,
            start_time: stat.start_time,
            boot_id: os::boot_id().map_err(unreadable("boot id"))?,
            pid_namespace: os::pid_namespace(pid).map_err(unreadable("pid namespace"))?,
            uid: os::owner(pid).map_err(unreadable("owner"))?,
            exe: os::exe_path(pid).map_err(unreadable("executable path"))?,
            exe_hash: os::open_exe(pid)
                .and_then(hash_file)
                .map_err(unreadable("executable"))?,
        };
        // The pid may have been reused while we read: the start time must hold.
        match os::stat(pid) {
            Ok(Some(s)) if s.start_time == stat.start_time => Ok(identity),
            _ => Err(IdentityError::NoSuchProcess { pid }),
        }
    }

    /// Checks this record against the live system.
    pub fn verify(&self) -> Verdict {
        let Ok(boot) = os::boot_id() else {
            return Verdict::Unverifiable;
        };
        if boot != self.boot_id {
            return Verdict::EarlierBoot;
        }
        match os::pid_namespace(std::process::id()) {
            Ok(ns) if ns == self.pid_namespace => {}
            _ => return Verdict::Unverifiable,
        }
        match os::stat(self.pid) {
            Err(_) => return Verdict::Unverifiable,
            Ok(None) => return Verdict::Dead,
            Ok(Some(s)) if s.zombie => return Verdict::Dead,
            Ok(Some(s)) if s.start_time != self.start_time => return Verdict::Recycled,
            Ok(Some(_)) => {}
        }
        // The same process: does it still run the same image (no exec)?
        if let Ok(image) = os::open_exe(self.pid).and_then(hash_file)
            && image != self.exe_hash
        {
            return Verdict::Recycled;
        }
        match ExeHash::of_file(&self.exe) {
            Ok(on_disk) if on_disk == self.exe_hash => Verdict::Alive,
            _ => Verdict::BinaryChanged,
        }
    }

    /// The chart's compact form of this identity.
    pub fn tag(&self) -> ProcessTag {
        ProcessTag {
            boot_id: self.boot_id,
            pid_namespace: self.pid_namespace,
            pid: self.pid,
            start_time: self.start_time,
        }
    }

    /// True when `tag` (for example from a same-host chart entry) names this
    /// very process: same boot, pid namespace, pid and start time.
    pub fn matches_tag(&self, tag: &ProcessTag) -> bool {
        self.tag() == *tag
    }
}

/// Paths travel as raw bytes: any path, UTF-8 or not, survives.
mod path_bytes {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(path.as_os_str().as_bytes())
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = PathBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a path as bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<PathBuf, E> {
                Ok(PathBuf::from(std::ffi::OsString::from_vec(v.to_vec())))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PathBuf, E> {
                Ok(PathBuf::from(v))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_verifies_alive_and_survives_a_postcard_round_trip() {
        let me = ProcessIdentity::current().unwrap();
        assert_eq!(me.pid, std::process::id());
        assert_eq!(me.verify(), Verdict::Alive);
        let bytes = postcard::to_allocvec(&me).unwrap();
        let back: ProcessIdentity = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, me);
        assert!(me.matches_tag(&crate::host::this_process().unwrap()));
    }

    #[test]
    fn a_record_of_another_boot_or_start_time_is_told_apart() {
        let me = ProcessIdentity::current().unwrap();
        let mut other_boot = me.clone();
        other_boot.boot_id[0] ^= 0xff;
        assert_eq!(other_boot.verify(), Verdict::EarlierBoot);
        let mut recycled = me.clone();
        recycled.start_time += 1;
        assert_eq!(recycled.verify(), Verdict::Recycled);
        assert!(!recycled.matches_tag(&me.tag()));
    }
}
