//! Choosing, creating and checking the directory that holds the lock and the socket,
//! and taking the election lock in it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::Error;

/// Returns this process's effective uid.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// How the directory must look to be trusted.
#[derive(Clone, Copy)]
pub(crate) enum Trust {
    /// Owned by us, not a symlink, no access for group or others.
    Private,
    /// Shared by all users: not a symlink, sticky bit set (so no user can
    /// remove or replace another user's files in it).
    SharedSticky,
}

/// Creates `path` if missing (with `mode`) and checks it against `trust`.
pub(crate) fn ensure_dir(path: &Path, trust: Trust) -> Result<(), Error> {
    let mode = match trust {
        Trust::Private => 0o700,
        Trust::SharedSticky => 0o1777,
    };
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            if let Trust::SharedSticky = trust {
                // The umask trimmed the mode; widen it explicitly.
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
                    Error::RuntimeDir {
                        path: path.to_owned(),
                        source,
                    }
                })?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(Error::RuntimeDir {
                path: path.to_owned(),
                source,
            });
        }
    }
    check_dir(path, trust)
}

/// Checks an existing directory without following a final symlink.
pub(crate) fn check_dir(path: &Path, trust: Trust) -> Result<(), Error> {
    let meta = fs::symlink_metadata(path).map_err(|source| Error::RuntimeDir {
        path: path.to_owned(),
        source,
    })?;
    let unsafe_dir = |reason: String| Error::UnsafeDir {
        path: path.to_owned(),
        reason,
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_dir("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_dir("it is not a directory".into()));
    }
    match trust {
        Trust::Private => {
            let me = euid();
            if meta.uid() != me {
                return Err(unsafe_dir(format!(
                    "it is owned by uid {}, not by this user (uid {me})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                return Err(unsafe_dir(format!(
                    "its mode is {:o}; group and others must have no access (expected 700)",
                    meta.mode() & 0o7777
                )));
            }
        }
        Trust::SharedSticky => {
            if meta.mode() & 0o1000 == 0 {
                return Err(unsafe_dir(format!(
                    "it is shared but its mode {:o} lacks the sticky bit (expected 1777)",
                    meta.mode() & 0o7777
                )));
            }
        }
    }
    Ok(())
}

/// The directory to use for `app` in the per-user scope.
///
/// `$XDG_RUNTIME_DIR/<app>` when that variable names an absolute directory owned
/// by us with no access for others; otherwise `<tmp>/cohort-<uid>/<app>`.
pub(crate) fn user_dir(app: &str, base: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(base) = base {
        let dir = base.join(app);
        ensure_dir(&dir, Trust::Private)?;
        return Ok(dir);
    }
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from)
        && xdg.is_absolute()
        && xdg_is_usable(&xdg)
    {
        let dir = xdg.join(app);
        ensure_dir(&dir, Trust::Private)?;
        return Ok(dir);
    }
    let top = std::env::temp_dir().join(format!("cohort-{}", euid()));
    ensure_dir(&top, Trust::Private)?;
    let dir = top.join(app);
    ensure_dir(&dir, Trust::Private)?;
    Ok(dir)
}

fn xdg_is_usable(xdg: &Path) -> bool {
    // The runtime directory itself may legitimately be reached through a symlink,
    // so follow it here; what matters is who owns the directory and its mode.
    match fs::metadata(xdg) {
        Ok(m) => m.is_dir() && m.uid() == euid() && m.mode() & 0o077 == 0,
        Err(_) => false,
    }
}

/// The directory to use for `app` in the system-wide scope.
pub(crate) fn system_dir(app: &str, base: Option<&Path>) -> Result<PathBuf, Error> {
    let top = match base {
        Some(b) => b.to_owned(),
        None => std::env::temp_dir().join("cohort-system"),
    };
    ensure_dir(&top, Trust::SharedSticky)?;
    let dir = top.join(app);
    ensure_dir(&dir, Trust::SharedSticky)?;
    Ok(dir)
}

/// The outcome of one attempt at the election lock.
pub(crate) enum LockAttempt {
    /// We hold the lock on the file the path names.
    Won(File),
    /// Another process holds it.
    Busy,
    /// The file was replaced or removed between opening and locking; try again.
    Replaced,
}

/// Opens (creating if needed) and tries to lock `path` without waiting.
///
/// The file is opened close-on-exec (std always does) and without following a
/// symlink. After locking, the inode of the open file is compared with the one
/// the path names now, so that a lock on a deleted or replaced file never counts.
pub(crate) fn try_lock(path: &Path, shared_scope: bool) -> Result<LockAttempt, Error> {
    let file = open_lock(path, shared_scope)?;
    lock_opened(file, path, shared_scope)
}

fn open_lock(path: &Path, shared_scope: bool) -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(if shared_scope { 0o666 } else { 0o600 })
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|source| Error::Lock {
            path: path.to_owned(),
            source,
        })
}

fn lock_opened(file: File, path: &Path, shared_scope: bool) -> Result<LockAttempt, Error> {
    let lock_err = |source| Error::Lock {
        path: path.to_owned(),
        source,
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => return Ok(LockAttempt::Busy),
        Err(TryLockError::Error(e)) => return Err(lock_err(e)),
    }
    let held = file.metadata().map_err(lock_err)?;
    match fs::symlink_metadata(path) {
        Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
            if shared_scope && held.uid() == euid() && held.mode() & 0o666 != 0o666 {
                // Let every user open it; the umask trimmed the creation mode.
                let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
            }
            Ok(LockAttempt::Won(file))
        }
        Ok(_) => Ok(LockAttempt::Replaced),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockAttempt::Replaced),
        Err(e) => Err(lock_err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("cohort-dirtest-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn a_directory_open_to_others_is_refused() {
        let p = scratch("open");
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(matches!(
            check_dir(&p, Trust::Private),
            Err(Error::UnsafeDir { .. })
        ));
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn a_symlinked_directory_is_refused() {
        let real = scratch("real");
        let link = scratch("link");
        fs::DirBuilder::new().mode(0o700).create(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            ensure_dir(&link, Trust::Private),
            Err(Error::UnsafeDir { .. })
        ));
        fs::remove_file(&link).unwrap();
        fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn a_private_directory_is_created_with_mode_700() {
        let p = scratch("new");
        ensure_dir(&p, Trust::Private).unwrap();
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o700);
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn a_lock_on_a_file_deleted_or_replaced_after_opening_does_not_win() {
        let p = scratch("lock");
        ensure_dir(&p, Trust::Private).unwrap();
        let lock = p.join("lock");
        // Opened, then the path is removed before the lock is taken.
        let opened = open_lock(&lock, false).unwrap();
        fs::remove_file(&lock).unwrap();
        assert!(matches!(
            lock_opened(opened, &lock, false).unwrap(),
            LockAttempt::Replaced
        ));
        // Opened, then the path is replaced by another file.
        let opened = open_lock(&lock, false).unwrap();
        fs::rename(p.join("lock"), p.join("old")).unwrap();
        fs::write(&lock, b"").unwrap();
        assert!(matches!(
            lock_opened(opened, &lock, false).unwrap(),
            LockAttempt::Replaced
        ));
        // The file the path names now is won, and then busy for the next opener.
        let won = try_lock(&lock, false).unwrap();
        assert!(matches!(won, LockAttempt::Won(_)));
        assert!(matches!(try_lock(&lock, false).unwrap(), LockAttempt::Busy));
        drop(won);
        fs::remove_dir_all(&p).unwrap();
    }

    #[test]
    fn a_symlink_in_place_of_the_lock_file_is_not_followed() {
        let p = scratch("lnk");
        ensure_dir(&p, Trust::Private).unwrap();
        std::os::unix::fs::symlink(p.join("elsewhere"), p.join("lock")).unwrap();
        assert!(matches!(
            try_lock(&p.join("lock"), false),
            Err(Error::Lock { .. })
        ));
        assert!(!p.join("elsewhere").exists());
        fs::remove_dir_all(&p).unwrap();
    }
}
