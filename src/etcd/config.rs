//! How to reach an etcd cluster: [`EtcdConfig`] and its checks.
//!
//! **Owns:** the endpoints, the key prefix, TLS material, credentials and
//! timeouts a user chooses, and [`EtcdConfigError`] for the choices that
//! cannot work. **Must not touch:** the network (nothing connects here) or
//! the chart.

use std::fmt;
use std::path::Path;
use std::time::Duration;

/// The default key prefix: records live under `/cohort/<namespace>/<id>`.
pub const DEFAULT_PREFIX: &str = "/cohort";

/// The default time allowed to open a connection to one endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The default time allowed for one request (a read, a write, a lease
/// keep-alive). A keep-alive is also never allowed longer than a third of
/// the chart's TTL, so a slow member cannot let the lease run out.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where an etcd cluster is and how to talk to it, for a chart whose
/// membership comes from etcd (the cargo feature `etcd`).
///
/// Every instance registers under `<prefix>/<namespace>/<id>` with a lease
/// of the chart's TTL, reads everything under `<prefix>/<namespace>/` and
/// follows it with a watch. Endpoints are tried in turn: when one fails, the
/// next one is used, so list every member of the cluster.
///
/// ```
/// use std::time::Duration;
/// use cohort::etcd::EtcdConfig;
///
/// let config = EtcdConfig::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"])
///     .with_prefix("/services/cohort")
///     .with_request_timeout(Duration::from_secs(2));
/// assert!(config.validate().is_ok());
/// assert_eq!(config.prefix(), "/services/cohort");
/// ```
///
/// A cluster that requires TLS and a user:
///
/// ```no_run
/// use cohort::etcd::EtcdConfig;
///
/// # fn demo() -> Result<(), cohort::etcd::EtcdConfigError> {
/// let config = EtcdConfig::new(["https://etcd-1.example:2379", "https://etcd-2.example:2379"])
///     .with_ca_file("/etc/etcd/ca.pem")?
///     .with_client_identity_files("/etc/cohort/client.pem", "/etc/cohort/client-key.pem")?
///     .with_user("cohort", "secret");
/// config.validate()?;
/// # Ok(()) }
/// ```
///
/// `Debug` never prints the password or the private key.
#[derive(Clone)]
#[must_use = "a configuration does nothing until a chart uses it"]
pub struct EtcdConfig {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) ca_pem: Option<Vec<u8>>,
    pub(crate) identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    pub(crate) tls_domain: Option<String>,
    pub(crate) user: Option<(String, String)>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

/// A configuration that cannot work, from [`EtcdConfig::validate`] or from
/// reading a TLS file. Each says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdConfigError {
    /// No endpoint was given.
    #[error("no etcd endpoint given: list every member's client URL, e.g. `http://127.0.0.1:2379`")]
    NoEndpoints,
    /// An endpoint is not `http://HOST:PORT`, `https://HOST:PORT` or
    /// `HOST:PORT`.
    #[error(
        "etcd endpoint `{endpoint}` is not a client URL: write `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT`"
    )]
    BadEndpoint {
        /// The endpoint as given.
        endpoint: String,
    },
    /// TLS material was given with an `http://` endpoint.
    #[error(
        "etcd endpoint `{endpoint}` is plain http but TLS options are set: use `https://` for every endpoint, or drop the TLS options"
    )]
    TlsWithHttp {
        /// The endpoint as given.
        endpoint: String,
    },
    /// An `https://` endpoint, but no certificate authority to check the
    /// members' certificates against.
    #[error(
        "etcd endpoint `{endpoint}` is https but no CA is set: give the CA that signed the members' certificates (`with_ca_file` or `with_ca_pem`)"
    )]
    NoCa {
        /// The endpoint as given.
        endpoint: String,
    },
    /// The key prefix is unusable.
    #[error("etcd key prefix {prefix:?} is unusable: {why}")]
    BadPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A timeout is zero.
    #[error("the etcd {which} timeout is zero: give it at least a few hundred milliseconds")]
    ZeroTimeout {
        /// `connect` or `request`.
        which: &'static str,
    },
    /// A PEM input holds no PEM block.
    #[error("the {what} is not PEM (no `-----BEGIN` line): give the PEM text, not DER or a path")]
    NotPem {
        /// Which input.
        what: &'static str,
    },
    /// A TLS file could not be read.
    #[error("cannot read the {what} {path}: {source}")]
    ReadFile {
        /// Which input.
        what: &'static str,
        /// The path as given.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
}

/// The longest accepted prefix, in bytes.
const MAX_PREFIX: usize = 512;

impl EtcdConfig {
    /// A configuration for the cluster whose members serve clients at
    /// `endpoints` (`http://HOST:PORT`, `https://HOST:PORT`, or `HOST:PORT`
    /// for plain http, or https once a CA is set), with the prefix
    /// [`DEFAULT_PREFIX`], no TLS, no user, and the default timeouts.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        EtcdConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            ca_pem: None,
            identity_pem: None,
            tls_domain: None,
            user: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Puts the records under `prefix` instead of [`DEFAULT_PREFIX`]:
    /// `<prefix>/<namespace>/<id>`. A trailing `/` is ignored. Use it to give
    /// one application its own subtree, or to match the keys an etcd role
    /// grants.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Authenticates as `user` with `password` (etcd's own users, for a
    /// cluster with `auth enable`). The user needs read and write access
    /// to `<prefix>/` and the right to grant and revoke leases.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// Trusts the certificate authority in `pem` (PEM text) for the
    /// members' certificates, and speaks TLS. Without it, TLS (for
    /// `https://` endpoints) trusts nothing and fails; give the CA that
    /// signed the members' certificates.
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Reads the certificate authority from a PEM file
    /// ([`with_ca_pem`](Self::with_ca_pem)).
    ///
    /// # Errors
    /// [`EtcdConfigError::ReadFile`] when the file cannot be read.
    pub fn with_ca_file(self, path: impl AsRef<Path>) -> Result<Self, EtcdConfigError> {
        let pem = read("CA certificate file", path.as_ref())?;
        Ok(self.with_ca_pem(pem))
    }

    /// Presents this client certificate and its private key (PEM text) to
    /// members that require client certificates (`--client-cert-auth`).
    pub fn with_client_identity_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// Reads the client certificate and key from PEM files
    /// ([`with_client_identity_pem`](Self::with_client_identity_pem)).
    ///
    /// # Errors
    /// [`EtcdConfigError::ReadFile`] when a file cannot be read.
    pub fn with_client_identity_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, EtcdConfigError> {
        let cert = read("client certificate file", cert.as_ref())?;
        let key = read("client key file", key.as_ref())?;
        Ok(self.with_client_identity_pem(cert, key))
    }

    /// Checks the members' certificates against `name` instead of the host
    /// in each endpoint (for members reached by address whose certificates
    /// name a host).
    pub fn with_tls_domain(mut self, name: impl Into<String>) -> Self {
        self.tls_domain = Some(name.into());
        self
    }

    /// How long to wait for a connection to one endpoint before trying the
    /// next ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for one request before counting the endpoint as
    /// failed and trying the next ([`DEFAULT_REQUEST_TIMEOUT`]).
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The key prefix, without a trailing `/`.
    pub fn prefix(&self) -> &str {
        self.prefix.trim_end_matches('/')
    }

    /// Whether TLS is used (a CA or client identity is set, or an endpoint
    /// is `https://`).
    pub fn uses_tls(&self) -> bool {
        self.ca_pem.is_some()
            || self.identity_pem.is_some()
            || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Checks everything that can be checked without connecting.
    ///
    /// ```
    /// use cohort::etcd::{EtcdConfig, EtcdConfigError};
    /// let none: [&str; 0] = [];
    /// assert!(matches!(EtcdConfig::new(none).validate(), Err(EtcdConfigError::NoEndpoints)));
    /// let tls_on_http = EtcdConfig::new(["http://127.0.0.1:2379"]).with_ca_pem("-----BEGIN CERTIFICATE-----");
    /// assert!(matches!(tls_on_http.validate(), Err(EtcdConfigError::TlsWithHttp { .. })));
    /// ```
    ///
    /// # Errors
    /// The first problem found, as an [`EtcdConfigError`] that says what to
    /// change.
    pub fn validate(&self) -> Result<(), EtcdConfigError> {
        if self.endpoints.is_empty() {
            return Err(EtcdConfigError::NoEndpoints);
        }
        let explicit_tls = self.ca_pem.is_some() || self.identity_pem.is_some();
        for endpoint in &self.endpoints {
            let rest = if let Some(rest) = endpoint.strip_prefix("https://") {
                if self.ca_pem.is_none() {
                    return Err(EtcdConfigError::NoCa {
                        endpoint: endpoint.clone(),
                    });
                }
                rest
            } else if let Some(rest) = endpoint.strip_prefix("http://") {
                if explicit_tls {
                    return Err(EtcdConfigError::TlsWithHttp {
                        endpoint: endpoint.clone(),
                    });
                }
                rest
            } else {
                endpoint
            };
            if !host_port(rest.trim_end_matches('/')) {
                return Err(EtcdConfigError::BadEndpoint {
                    endpoint: endpoint.clone(),
                });
            }
        }
        if explicit_tls && self.ca_pem.is_none() {
            return Err(EtcdConfigError::NoCa {
                endpoint: self.endpoints[0].clone(),
            });
        }
        let prefix = self.prefix();
        let bad_prefix = |why| EtcdConfigError::BadPrefix {
            prefix: self.prefix.clone(),
            why,
        };
        if prefix.len() > MAX_PREFIX {
            return Err(bad_prefix("longer than 512 bytes"));
        }
        if prefix.contains('\0') {
            return Err(bad_prefix("it contains a NUL byte"));
        }
        if self.connect_timeout.is_zero() {
            return Err(EtcdConfigError::ZeroTimeout { which: "connect" });
        }
        if self.request_timeout.is_zero() {
            return Err(EtcdConfigError::ZeroTimeout { which: "request" });
        }
        if let Some(ca) = &self.ca_pem {
            pem("CA certificate", ca)?;
        }
        if let Some((cert, key)) = &self.identity_pem {
            pem("client certificate", cert)?;
            pem("client key", key)?;
        }
        Ok(())
    }
}

impl fmt::Debug for EtcdConfig {
    /// Shows everything but secrets: the password and the private key are
    /// never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("ca", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field(
                "client_identity",
                &self.identity_pem.as_ref().map(|_| "<PEM, key redacted>"),
            )
            .field("tls_domain", &self.tls_domain)
            .field(
                "user",
                &self.user.as_ref().map(|(user, _)| (user, "<redacted>")),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, EtcdConfigError> {
    std::fs::read(path).map_err(|source| EtcdConfigError::ReadFile {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn pem(what: &'static str, bytes: &[u8]) -> Result<(), EtcdConfigError> {
    if bytes.windows(10).any(|w| w == b"-----BEGIN") {
        Ok(())
    } else {
        Err(EtcdConfigError::NotPem { what })
    }
}

/// `HOST:PORT` with a non-empty host (a name, an IPv4 address or a
/// bracketed IPv6 address) and a port from 1 to 65535.
fn host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|v6| v6.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
    };
    port_ok && host_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        for good in [
            "http://127.0.0.1:2379",
            "127.0.0.1:2379",
            "etcd-1.example:2379/",
            "http://[::1]:2379",
        ] {
            assert!(EtcdConfig::new([good]).validate().is_ok(), "{good}");
        }
        for bad in [
            "",
            "http://",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:99999",
            "http://a b:1",
            "ftp://x:1",
            "[::1:2379",
        ] {
            assert!(
                matches!(
                    EtcdConfig::new([bad]).validate(),
                    Err(EtcdConfigError::BadEndpoint { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            EtcdConfig::new(["https://b:1"]).validate(),
            Err(EtcdConfigError::NoCa { .. })
        ));
        assert!(matches!(
            EtcdConfig::new(["a:1", "https://b:1"])
                .with_ca_pem("-----BEGIN CERTIFICATE-----")
                .validate(),
            Ok(())
        ));
    }

    #[test]
    fn prefix_timeouts_and_pem_are_checked() {
        let base =
            EtcdConfig::new(["https://127.0.0.1:2379"]).with_ca_pem("-----BEGIN CERTIFICATE-----");
        assert_eq!(base.clone().with_prefix("/a/b///").prefix(), "/a/b");
        assert!(matches!(
            base.clone().with_prefix("a\0b").validate(),
            Err(EtcdConfigError::BadPrefix { .. })
        ));
        assert!(matches!(
            base.clone().with_prefix("x".repeat(513)).validate(),
            Err(EtcdConfigError::BadPrefix { .. })
        ));
        assert!(matches!(
            base.clone().with_request_timeout(Duration::ZERO).validate(),
            Err(EtcdConfigError::ZeroTimeout { which: "request" })
        ));
        assert!(matches!(
            base.clone().with_ca_pem(vec![0x30, 0x82]).validate(),
            Err(EtcdConfigError::NotPem { .. })
        ));
        assert!(matches!(
            base.with_ca_file("/nonexistent/ca.pem"),
            Err(EtcdConfigError::ReadFile { .. })
        ));
    }

    #[test]
    fn debug_never_shows_secrets() {
        let config = EtcdConfig::new(["127.0.0.1:2379"])
            .with_user("alice", "hunter2")
            .with_client_identity_pem(
                "-----BEGIN CERTIFICATE-----",
                "-----BEGIN PRIVATE KEY-----SECRETKEY",
            );
        let shown = format!("{config:?}");
        assert!(shown.contains("alice"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("SECRETKEY"), "{shown}");
    }
}
