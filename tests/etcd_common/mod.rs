//! A real etcd cluster for tests, started and stopped by the test.
//!
//! **Owns:** etcd member processes (Debian's `etcd-server` 3.4 binary), their
//! data directories and ports, throwaway TLS material and etcd users.
//! **Must not touch:** anything of cohort: tests drive cohort themselves.
//!
//! [`Cluster::start`] runs N members on 127.0.0.1 with ports the kernel
//! handed out (so tests in parallel threads never collide), one data
//! directory per cluster (on `/dev/shm` when there is one), and returns once
//! every member serves linearizable reads. [`Cluster::kill`] SIGKILLs one
//! member (its data stays), [`Cluster::restart`] starts it again and waits
//! until it serves. Dropping the cluster kills every member and removes the
//! directory, also when the test panics (then it prints each member's log
//! tail). Members run under `setpriv --pdeathsig KILL`, so they also die if
//! the test process is killed.
//!
//! At most [`MAX_CLUSTERS`] clusters run at once per test process (2 cores:
//! more would starve elections); later ones wait for a slot.
//!
//! Tests that cannot run because etcd is missing call [`cannot_run_here`]:
//! a failure under `CI`, `SKIPPED:` otherwise.
//!
//! Used by `src/etcd/tests.rs` (through `#[path]`) and by `tests/etcd_*.rs`.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

mod tls;
use tls::make_tls;

/// How many clusters one test process runs at once.
pub const MAX_CLUSTERS: usize = 2;

/// How long a member may take to serve after a (re)start.
const START_BOUND: Duration = Duration::from_secs(60);

/// The etcd binary: `$ETCD_BIN` (only that one, when set), else `etcd` on
/// `PATH`, else Debian's `/usr/bin/etcd`.
pub fn etcd_binary() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("ETCD_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// A test that cannot run here: fails under `CI`, prints `SKIPPED:` and
/// returns otherwise.
pub fn cannot_run_here(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "this test cannot run here, and CI is set, so it fails instead of skipping: {reason}"
        );
    }
    eprintln!("SKIPPED: {reason}");
}

/// Whether a command exists on `PATH`.
pub fn have(command: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| dir.join(command).is_file())
}

/// What kind of cluster to start.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Members (3 unless set).
    pub members: usize,
    /// Serve clients over TLS with client certificates (`--client-cert-auth`),
    /// from a CA made for this cluster.
    pub tls: bool,
    /// Turn on etcd auth with users `root` / [`ROOT_PASSWORD`] and `cohort` /
    /// [`COHORT_PASSWORD`], who may read and write `/cohort/`.
    pub auth: bool,
    /// `--max-request-bytes` (etcd's default, 1.5 MiB, unless set).
    pub max_request_bytes: Option<u64>,
}

/// The password of the `root` user of a cluster with auth.
pub const ROOT_PASSWORD: &str = "root-pw-for-tests";
/// The password of the `cohort` user of a cluster with auth.
pub const COHORT_PASSWORD: &str = "cohort-pw-for-tests";

/// PEM files of a TLS cluster, made at run time in its directory.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed every certificate.
    pub ca: PathBuf,
    /// A client certificate (CN `cohort`) and its key.
    pub client_cert: PathBuf,
    /// The client certificate's key.
    pub client_key: PathBuf,
}

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// A running etcd cluster on loopback.
pub struct Cluster {
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    token: String,
    tls: Option<TlsFiles>,
    auth: bool,
    max_request_bytes: Option<u64>,
    /// One administrator's client per member, reused: every connection the
    /// harness opened and closed itself would leave a socket in TIME_WAIT
    /// on an ephemeral port, which other tests in the namespace may want.
    clients: Mutex<Vec<Option<Client>>>,
    _slot: Option<Slot>,
}

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

struct Slot;

impl Slot {
    fn take() -> Slot {
        let (count, freed) = &SLOTS;
        let mut count = count.lock().unwrap_or_else(|e| e.into_inner());
        while *count >= MAX_CLUSTERS {
            count = freed.wait(count).unwrap_or_else(|e| e.into_inner());
        }
        *count += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (count, freed) = &SLOTS;
        *count.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// Ports the kernel hands out now (held together, so they are distinct).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn scratch_dir() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!(
        "cohort-etcd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700)
        .create(&dir)
        .expect("creating the cluster's directory");
    dir
}

impl Cluster {
    /// Starts a 3-member plain-http cluster, or returns `None` (after
    /// [`cannot_run_here`]) when etcd is not installed.
    pub async fn start() -> Option<Cluster> {
        Cluster::start_with(Options::default()).await
    }

    /// Starts a cluster as `options` say (see [`Cluster::start`]).
    pub async fn start_with(options: Options) -> Option<Cluster> {
        let Some(binary) = etcd_binary() else {
            cannot_run_here("etcd is not installed (Debian: apt-get install etcd-server)");
            return None;
        };
        if !have("setpriv") {
            cannot_run_here("setpriv is not installed (Debian: util-linux)");
            return None;
        }
        if options.tls && !have("openssl") {
            cannot_run_here("openssl is not installed");
            return None;
        }
        let slot = Slot::take();
        let members = if options.members == 0 {
            3
        } else {
            options.members
        };
        let mut last_error = String::new();
        let mut slot = Some(slot);
        // A port the kernel handed out can be taken by someone else before
        // etcd binds it: start again with new ports.
        for _attempt in 0..3 {
            let dir = scratch_dir();
            let tls = options.tls.then(|| make_tls(&dir));
            let ports = free_ports(2 * members);
            let members: Vec<Member> = (0..members)
                .map(|i| Member {
                    name: format!("m{i}"),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    child: None,
                })
                .collect();
            let initial_cluster = members
                .iter()
                .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
                .collect::<Vec<_>>()
                .join(",");
            let count = members.len();
            let mut cluster = Cluster {
                token: dir.file_name().unwrap().to_string_lossy().into_owned(),
                dir,
                binary: binary.clone(),
                members,
                initial_cluster,
                tls,
                auth: false,
                max_request_bytes: options.max_request_bytes,
                clients: Mutex::new(vec![None; count]),
                _slot: slot.take(),
            };
            for i in 0..cluster.members.len() {
                cluster.spawn(i);
            }
            match cluster.wait_healthy_within(START_BOUND).await {
                Ok(()) => {
                    if options.auth {
                        cluster.enable_auth().await;
                    }
                    return Some(cluster);
                }
                Err(error) => {
                    last_error = format!("{error}\n{}", cluster.log_tails());
                    cluster.stop_all();
                    slot = cluster._slot.take();
                }
            }
        }
        panic!("the etcd cluster did not start: {last_error}");
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    fn spawn(&mut self, i: usize) {
        let scheme = self.scheme();
        let m = &self.members[i];
        let client_url = format!("{scheme}://127.0.0.1:{}", m.client_port);
        let peer_url = format!("http://127.0.0.1:{}", m.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", m.name)))
            .expect("creating a member log");
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "--"])
            .arg(&self.binary)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(self.dir.join(&m.name))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(bytes) = self.max_request_bytes {
            command.arg(format!("--max-request-bytes={bytes}"));
        }
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(self.dir.join("server.pem"))
                .arg("--key-file")
                .arg(self.dir.join("server.key"))
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = command.spawn().expect("starting etcd");
        self.members[i].child = Some(child);
    }

    /// The client URL of every member, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://127.0.0.1:{}",
            self.scheme(),
            self.members[i].client_port
        )
    }

    /// The TLS files, for a TLS cluster.
    pub fn tls(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// The cluster's directory (data, logs, TLS files).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// SIGKILLs member `i` and waits until it is gone. Its data stays.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // After the member: its end closed first, so no TIME_WAIT here.
        self.cached_clients()[i] = None;
    }

    fn cached_clients(&self) -> std::sync::MutexGuard<'_, Vec<Option<Client>>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached client of member `i`, or a new one (cached).
    async fn connect_via(&self, i: usize, bound: Duration) -> Result<Client, String> {
        if let Some(client) = self.cached_clients()[i].clone() {
            return Ok(client);
        }
        let connect = Client::connect([self.endpoint(i)], Some(self.admin_options()));
        let client = match tokio::time::timeout(bound, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("connect timed out".into()),
        };
        self.cached_clients()[i] = Some(client.clone());
        Ok(client)
    }

    /// Starts member `i` again (after [`kill`](Self::kill)) and waits until
    /// the cluster serves through it.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} is running");
        self.spawn(i);
    }

    /// Restarts members and waits until each serves linearizable reads.
    pub async fn restart_and_wait(&mut self, members: &[usize]) {
        for &i in members {
            self.restart(i).await;
        }
        if let Err(error) = self.wait_healthy_within(START_BOUND).await {
            panic!("etcd did not recover: {error}\n{}", self.log_tails());
        }
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Connect options for an administrator (root with a client
    /// certificate, when the cluster has them).
    fn admin_options(&self) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(std::fs::read(&tls.ca).unwrap()))
                    .identity(Identity::from_pem(
                        std::fs::read(self.dir.join("root.pem")).unwrap(),
                        std::fs::read(self.dir.join("root.key")).unwrap(),
                    )),
            );
        }
        if self.auth {
            options = options.with_user("root", ROOT_PASSWORD);
        }
        options
    }

    /// An administrator's client through member `i`.
    pub async fn client_via(&self, i: usize) -> Client {
        self.connect_via(i, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("connecting to etcd member {i}: {e}"))
    }

    /// An administrator's client through the first running member.
    pub async fn client(&self) -> Client {
        let i = (0..self.members.len())
            .find(|&i| self.is_running(i))
            .expect("no member runs");
        self.client_via(i).await
    }

    /// The index of the current leader, asked through a running member.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + START_BOUND;
        loop {
            for i in (0..self.members.len()).filter(|&i| self.is_running(i)) {
                let Ok(mut client) = self.connect_via(i, Duration::from_secs(2)).await else {
                    continue;
                };
                let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(2), client.status()).await
                else {
                    continue;
                };
                let leader = status.leader();
                let Ok(Ok(members)) =
                    tokio::time::timeout(Duration::from_secs(2), client.member_list()).await
                else {
                    continue;
                };
                if let Some(m) = members.members().iter().find(|m| m.id() == leader)
                    && let Some(index) = self.members.iter().position(|x| x.name == m.name())
                {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no etcd leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running member serves a linearizable read.
    pub async fn wait_healthy(&mut self) {
        if let Err(error) = self.wait_healthy_within(START_BOUND).await {
            panic!("etcd is not healthy: {error}\n{}", self.log_tails());
        }
    }

    async fn wait_healthy_within(&mut self, bound: Duration) -> Result<(), String> {
        let deadline = Instant::now() + bound;
        for i in 0..self.members.len() {
            if !self.is_running(i) {
                continue;
            }
            loop {
                let last = match self.probe(i).await {
                    Ok(()) => break,
                    Err(error) => error,
                };
                if let Some(exited) = self.exited(i) {
                    return Err(format!("member {i} exited: {exited}"));
                }
                if Instant::now() >= deadline {
                    return Err(format!("member {i} did not serve within {bound:?}: {last}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// How member `i` ended, if it did (it is then no longer running).
    fn exited(&mut self, i: usize) -> Option<String> {
        let child = self.members[i].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.members[i].child = None;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    async fn probe(&self, i: usize) -> Result<(), String> {
        let mut client = self.connect_via(i, Duration::from_secs(2)).await?;
        match tokio::time::timeout(Duration::from_secs(2), client.get("health-probe", None)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("read timed out".into()),
        }
    }

    async fn enable_auth(&mut self) {
        let mut c = self.client().await;
        c.user_add("root", ROOT_PASSWORD, None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.user_add("cohort", COHORT_PASSWORD, None).await.unwrap();
        c.role_add("cohort-rw").await.unwrap();
        c.role_grant_permission(
            "cohort-rw",
            etcd_client::Permission::read_write("/cohort/").with_prefix(),
        )
        .await
        .unwrap();
        c.user_grant_role("cohort", "cohort-rw").await.unwrap();
        c.auth_enable().await.unwrap();
        self.auth = true;
        // Clients from before have no user: connect again with root's.
        self.cached_clients().iter_mut().for_each(|c| *c = None);
    }

    /// The last lines of every member's log.
    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(self.dir.join(format!("{}.log", m.name)))
                .unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let _ = writeln!(out, "--- etcd {} (last lines) ---", m.name);
            for line in &lines[lines.len().saturating_sub(15)..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    fn stop_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails());
        }
        self.stop_all();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
