//! Reaching the current primary: connecting, checking who serves the
//! endpoint, reading its greeting, and watching it until it exits.
//!
//! **Owns:** the secondary's side of the first exchange ([`Reach`]) and the
//! watch connection of `acquire_or_wait` ([`Watched`]).
//! **Must not touch:** the election lock (`election`), retry pacing
//! (`backoff`), forwarding itself (`secondary`).

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;

use super::election::{Plan, PlanKind};
use super::frame::{self, FrameError, ToPrimary, ToSecondary};
use super::{Error, Secondary, SingleInstance};

impl SingleInstance {
    /// Connects to the current primary's endpoint and checks who serves it.
    pub(super) async fn connect(&self, plan: &Plan, deadline: Instant) -> Result<Connected, Error> {
        let target = match &plan.kind {
            PlanKind::Abstract { name } => {
                let mut p = OsString::from("\0");
                p.push(name);
                PathBuf::from(p)
            }
            PlanKind::Files {
                dir, lock, shared, ..
            } => {
                if *shared {
                    match std::fs::read(lock) {
                        Ok(name) if !name.is_empty() && !name.contains(&b'/') => {
                            dir.join(std::ffi::OsStr::from_bytes(&name))
                        }
                        _ => {
                            return Ok(Connected::NotYet(
                                "the primary has not published its socket yet".into(),
                            ));
                        }
                    }
                } else {
                    dir.join("socket")
                }
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let stream = match tokio::time::timeout(remaining, UnixStream::connect(&target)).await {
            Err(_) => return Ok(Connected::NotYet("connecting took too long".into())),
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                let why = match e.kind() {
                    std::io::ErrorKind::NotFound => "no endpoint yet (the primary is starting)",
                    std::io::ErrorKind::ConnectionRefused => {
                        "the endpoint refused the connection (the primary is starting or stopping)"
                    }
                    std::io::ErrorKind::WouldBlock => "the primary's connection queue is full",
                    _ => "connecting to the primary failed",
                };
                return Ok(Connected::NotYet(format!("{why}: {e}")));
            }
        };
        let cred = stream.peer_cred().map_err(|source| Error::Io {
            what: "reading the primary's peer credentials",
            source,
        })?;
        if let Some(expected) = plan.required_uid
            && cred.uid() != expected
        {
            return Err(Error::ForeignPrimary {
                endpoint: endpoint_name(&target),
                found: cred.uid(),
                expected,
            });
        }
        Ok(Connected::Yes(stream, cred.pid().unwrap_or(0)))
    }

    pub(super) async fn try_secondary(
        &self,
        plan: &Plan,
        deadline: Instant,
    ) -> Result<Reach, Error> {
        let (mut stream, pid) = match self.connect(plan, deadline).await? {
            Connected::Yes(stream, pid) => (stream, pid),
            Connected::NotYet(why) => return Ok(Reach::NotYet(why)),
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let mut buf = Vec::new();
        match tokio::time::timeout(remaining, frame::read_frame(&mut stream, &mut buf)).await {
            Err(_) => Ok(Reach::Silent(pid)),
            Ok(Err(FrameError::Closed)) => Ok(Reach::NotYet(
                "the primary closed the connection (it is stopping)".into(),
            )),
            // Reset or cut off before the greeting: the primary died or is
            // stopping; only the lock can tell, so retry.
            Ok(Err(FrameError::Io(e))) => Ok(Reach::NotYet(format!(
                "the connection to the primary broke before its greeting: {e}"
            ))),
            Ok(Err(FrameError::Truncated)) => Ok(Reach::NotYet(
                "the primary's greeting was cut off (it is stopping)".into(),
            )),
            Ok(Err(source)) => Err(Error::Frame { pid, source }),
            Ok(Ok(())) => match frame::decode::<ToSecondary<'_>>(&buf) {
                Ok(ToSecondary::Hello { accepting: true }) => Ok(Reach::Greeted(Secondary {
                    stream,
                    pid,
                    reply_timeout: self.reply_timeout,
                    env_names: self.env.clone(),
                })),
                Ok(ToSecondary::Hello { accepting: false }) => {
                    Ok(Reach::NotYet("the primary is shutting down".into()))
                }
                Ok(_) => Err(Error::Frame {
                    pid,
                    source: FrameError::Unexpected("a reply before any request"),
                }),
                Err(source) => Err(Error::Frame { pid, source }),
            },
        }
    }

    /// Holds a connection to the primary until it ends or the deadline passes.
    ///
    /// Returns [`Watched::Ended`] when a primary that greeted us as accepting
    /// went away (retry the lock at once), [`Watched::Short`] otherwise (it was
    /// shutting down, or not there yet: back off first).
    pub(super) async fn watch(&self, plan: &Plan, deadline: Instant) -> Result<Watched, Error> {
        let mut stream = match self.connect(plan, deadline).await? {
            Connected::Yes(stream, _) => stream,
            Connected::NotYet(_) => return Ok(Watched::Short),
        };
        let watch = frame::encode(&ToPrimary::Watch)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let watched = tokio::time::timeout(remaining, async {
            if frame::write_frame(&mut stream, &watch).await.is_err() {
                return Watched::Short;
            }
            let mut buf = Vec::new();
            match frame::read_frame(&mut stream, &mut buf).await {
                Ok(()) => {}
                Err(_) => return Watched::Short,
            }
            if !matches!(
                frame::decode::<ToSecondary<'_>>(&buf),
                Ok(ToSecondary::Hello { accepting: true })
            ) {
                return Watched::Short;
            }
            // Greeted: now wait for the end of the stream, which comes the
            // moment the primary exits or hands over.
            let mut sink = [0u8; 64];
            while let Ok(n) = stream.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            Watched::Ended
        })
        .await;
        Ok(watched.unwrap_or(Watched::Short))
    }
}

pub(super) fn endpoint_name(target: &Path) -> String {
    let bytes = target.as_os_str().as_bytes();
    match bytes.strip_prefix(b"\0") {
        Some(name) => format!("@{}", String::from_utf8_lossy(name)),
        None => target.display().to_string(),
    }
}

pub(super) enum Connected {
    Yes(UnixStream, i32),
    NotYet(String),
}

pub(super) enum Reach {
    Greeted(Secondary),
    NotYet(String),
    /// Connected, but no greeting came before the deadline.
    Silent(i32),
}

pub(super) enum Watched {
    Ended,
    Short,
}
