//! Becoming the primary: where the endpoint lives, taking the election lock,
//! and binding the endpoint.
//!
//! **Owns:** the [`Plan`] (the directory, lock file and socket path, or the
//! abstract name, of one application), validating application ids, and one
//! attempt at the election ([`SingleInstance::try_primary`]).
//! **Must not touch:** reaching an existing primary (`reach`), retry pacing
//! (`backoff`), what the primary serves (`primary`).

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::PathBuf;

use tokio::net::UnixStream;

use super::server::Limits;
use super::{Error, Primary, Scope, SingleInstance, dir, primary};

impl SingleInstance {
    pub(super) fn plan(&self) -> Result<Plan, Error> {
        validate_app(&self.app)?;
        let me = dir::euid();
        let required_uid = match self.scope {
            Scope::User => Some(me),
            Scope::System => None,
        };
        let kind = if self.abstract_ns {
            let name = match self.scope {
                Scope::User => format!("cohort/{me}/{}", self.app),
                Scope::System => format!("cohort/system/{}", self.app),
            };
            PlanKind::Abstract { name }
        } else {
            let (dir, shared) = match self.scope {
                Scope::User => (
                    dir::user_dir(&self.app, self.runtime_dir.as_deref())?,
                    false,
                ),
                Scope::System => (
                    dir::system_dir(&self.app, self.runtime_dir.as_deref())?,
                    true,
                ),
            };
            let own_socket = dir.join(if shared {
                format!("socket.{me}")
            } else {
                "socket".to_string()
            });
            let len = own_socket.as_os_str().len();
            if len > 107 {
                return Err(Error::PathTooLong {
                    path: own_socket,
                    len,
                });
            }
            PlanKind::Files {
                lock: dir.join("lock"),
                dir,
                own_socket,
                shared,
            }
        };
        Ok(Plan { kind, required_uid })
    }

    /// One attempt at becoming primary; `None` if another process is primary.
    pub(super) async fn try_primary(&self, plan: &Plan) -> Result<Option<Primary>, Error> {
        match &plan.kind {
            PlanKind::Abstract { name } => {
                let addr = abstract_addr(name).map_err(|source| Error::Bind {
                    endpoint: format!("@{name}"),
                    source,
                })?;
                match StdUnixListener::bind_addr(&addr) {
                    Ok(listener) => {
                        let config = primary::ServerConfig {
                            required_uid: plan.required_uid,
                            endpoint: format!("@{name}"),
                            limits: self.limits(),
                        };
                        Primary::start(listener, config, None, None).map(Some)
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(None),
                    Err(source) => Err(Error::Bind {
                        endpoint: format!("@{name}"),
                        source,
                    }),
                }
            }
            PlanKind::Files {
                lock,
                own_socket,
                shared,
                ..
            } => {
                // A replaced lock file is retried at once; a few times is plenty.
                let mut held = None;
                for _ in 0..8 {
                    match dir::try_lock(lock, *shared)? {
                        dir::LockAttempt::Won(file) => {
                            held = Some(file);
                            break;
                        }
                        dir::LockAttempt::Busy => return Ok(None),
                        dir::LockAttempt::Replaced => continue,
                    }
                }
                let Some(mut file) = held else {
                    return Ok(None);
                };
                // Only the holder gets here. A socket nobody listens on is stale.
                match UnixStream::connect(own_socket).await {
                    Ok(_) => {
                        tracing::warn!(
                            socket = %own_socket.display(),
                            "a primary is listening although this process holds the lock (its lock file was removed?); standing back"
                        );
                        return Ok(None);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(_) => {
                        let _ = std::fs::remove_file(own_socket);
                    }
                }
                let endpoint = own_socket.display().to_string();
                let listener = StdUnixListener::bind(own_socket).map_err(|source| Error::Bind {
                    endpoint: endpoint.clone(),
                    source,
                })?;
                if *shared {
                    use std::io::Write;
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(
                        own_socket,
                        std::fs::Permissions::from_mode(0o666),
                    );
                    let name = own_socket
                        .file_name()
                        .unwrap_or_default()
                        .as_encoded_bytes();
                    let written = file.set_len(0).and_then(|()| {
                        use std::io::Seek;
                        file.seek(std::io::SeekFrom::Start(0))?;
                        file.write_all(name)
                    });
                    if let Err(source) = written {
                        let _ = std::fs::remove_file(own_socket);
                        return Err(Error::Lock {
                            path: lock.clone(),
                            source,
                        });
                    }
                }
                let config = primary::ServerConfig {
                    required_uid: plan.required_uid,
                    endpoint,
                    limits: self.limits(),
                };
                Primary::start(listener, config, Some(own_socket.clone()), Some(file)).map(Some)
            }
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            first_frame: self.first_frame_timeout,
            ..Limits::default()
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub(super) fn abstract_addr(name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(super) fn abstract_addr(_name: &str) -> std::io::Result<std::os::unix::net::SocketAddr> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

pub(super) fn validate_app(app: &str) -> Result<(), Error> {
    let bad = |reason| {
        Err(Error::InvalidAppId {
            id: app.to_owned(),
            reason,
        })
    };
    if app.is_empty() || app.len() > 64 {
        return bad("it must be 1 to 64 characters long");
    }
    if app == "." || app == ".." {
        return bad("it must not be . or ..");
    }
    if !app
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("it contains a character other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

pub(super) struct Plan {
    pub(super) kind: PlanKind,
    pub(super) required_uid: Option<u32>,
}

pub(super) enum PlanKind {
    Files {
        dir: PathBuf,
        lock: PathBuf,
        own_socket: PathBuf,
        shared: bool,
    },
    Abstract {
        name: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_ids_that_cannot_name_a_file_are_rejected() {
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(65)] {
            assert!(
                matches!(validate_app(bad), Err(Error::InvalidAppId { .. })),
                "{bad:?} must be rejected"
            );
        }
        validate_app("org.example.editor_2-x").unwrap();
    }
}
