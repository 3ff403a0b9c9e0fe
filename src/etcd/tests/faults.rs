//! Faults: members killed, quorum lost, a process killed, an instance cut
//! off by nftables, and a cluster that requires TLS and a user.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::harness::{COHORT_PASSWORD, Cluster, Options, cannot_run_here, have};
use super::helpers::{BOUND, config, quick, read_key, record, start};
use crate::etcd::EtcdConfig;
use crate::source::SourceEvent;

const TTL: Duration = Duration::from_secs(3);

fn stale(on: bool) -> impl FnMut(&SourceEvent) -> bool {
    move |e| *e == SourceEvent::Stale(on)
}

#[tokio::test]
async fn killing_one_member_keeps_everything_working() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    // Every source talks to a follower first: killing it forces a failover
    // while the cluster keeps its leader.
    let leader = cluster.leader().await;
    let follower = (0..3).find(|&i| i != leader).unwrap();
    let mut endpoints = cluster.endpoints();
    endpoints.swap(0, follower);
    let config = quick(EtcdConfig::new(endpoints));
    let a = start(config.clone(), "one", TTL, Some(record(1, 1, 10)));
    let mut b = start(config.clone(), "one", TTL, Some(record(2, 1, 20)));
    b.put_of(1, 10).await;
    cluster.kill(follower);
    a.publish(Some(record(1, 1, 11)));
    b.put_of(1, 11).await;
    let mut c = start(config.clone(), "one", TTL, Some(record(3, 1, 30)));
    c.put_of(1, 11).await;
    c.put_of(2, 20).await;
    b.put_of(3, 30).await;
    // Longer than a TTL with the member dead: leases are kept alive
    // through the others, so nobody expires.
    let mut probe = start(config.clone(), "one", TTL, None);
    probe.put_of(1, 11).await;
    let quiet_until = Instant::now() + TTL * 2;
    while Instant::now() < quiet_until {
        a.publish(Some(record(1, 1, 12)));
        b.put_of(1, 12).await;
        a.publish(Some(record(1, 1, 11)));
        b.put_of(1, 11).await;
    }
    for instance in [&mut b, &mut c, &mut probe] {
        instance.drain();
        let bad: Vec<_> = instance
            .seen
            .iter()
            .filter(|e| matches!(e, SourceEvent::Stale(true) | SourceEvent::Delete { .. }))
            .collect();
        assert!(
            bad.is_empty(),
            "one member down made a source stale or lose a peer: {bad:?}"
        );
    }
    // The member comes back; then the leader dies: a new one is elected and
    // everything keeps converging (a short stale spell during the election
    // is allowed: the cluster has no leader then).
    cluster.restart_and_wait(&[follower]).await;
    let leader = cluster.leader().await;
    let killed = Instant::now();
    cluster.kill(leader);
    a.publish(Some(record(1, 1, 13)));
    let (_, at) = b
        .until(
            "the update after the leader died",
            |e| matches!(e, SourceEvent::Put(r) if r.id == 1 && r.payload == [13]),
        )
        .await;
    eprintln!(
        "leader killed: an update arrived {:?} after the kill",
        at - killed
    );
    c.put_of(1, 13).await;
}

#[tokio::test]
async fn losing_quorum_is_stale_then_recovers_and_reconciles() {
    let Some(mut cluster) = Cluster::start().await else {
        return;
    };
    let mut a = start(config(&cluster), "quorum", TTL, Some(record(1, 1, 10)));
    let mut b = start(config(&cluster), "quorum", TTL, Some(record(2, 1, 20)));
    let mut c = start(config(&cluster), "quorum", TTL, Some(record(3, 1, 30)));
    a.put_of(2, 20).await;
    a.put_of(3, 30).await;
    b.put_of(1, 10).await;
    let killed = Instant::now();
    cluster.kill(1);
    cluster.kill(2);
    let (_, at) = a.until("Stale(true)", stale(true)).await;
    eprintln!("quorum lost: Stale(true) {:?} after the kill", at - killed);
    b.until("Stale(true)", stale(true)).await;
    c.until("Stale(true)", stale(true)).await;
    // While cut off: b changes its payload and c leaves (neither can reach
    // etcd). The last known records are kept: no source reports a delete.
    b.publish(Some(record(2, 1, 21)));
    c.shutdown().await;
    for instance in [&mut a, &mut b] {
        instance.drain();
        assert!(
            !instance.saw(|e| matches!(e, SourceEvent::Delete { .. })),
            "a delete while stale: {:?}",
            instance.seen
        );
    }
    let back = Instant::now();
    cluster.restart_and_wait(&[1, 2]).await;
    let serving = Instant::now();
    let (_, at) = a.until("Stale(false)", stale(false)).await;
    eprintln!(
        "quorum back: members serve {:?} after the restart, Stale(false) {:?} after that",
        serving - back,
        at.saturating_duration_since(serving)
    );
    b.until("Stale(false)", stale(false)).await;
    // Consistent again: b's update arrives, c's record expires (its lease
    // was never revoked), and both a and b are registered in etcd.
    a.put_of(2, 21).await;
    let (incarnation, leaving, _) = a.delete_of(3).await;
    assert_eq!((incarnation, leaving), (Some(1), false));
    for id in [1, 2] {
        let (held, lease) = read_key(&cluster, &format!("/cohort/quorum/{id}"))
            .await
            .expect("registered again");
        assert_eq!(held.map(|r| r.id), Some(id));
        assert_ne!(lease, 0);
    }
    let mut d = start(config(&cluster), "quorum", TTL, None);
    d.put_of(1, 10).await;
    d.put_of(2, 21).await;
    a.publish(Some(record(1, 1, 11)));
    b.put_of(1, 11).await;
}

#[tokio::test]
async fn tls_and_auth_work_where_the_cluster_requires_them() {
    let options = Options {
        tls: true,
        auth: true,
        ..Options::default()
    };
    let Some(cluster) = Cluster::start_with(options).await else {
        return;
    };
    let tls = cluster.tls().unwrap().clone();
    let secure = quick(EtcdConfig::new(cluster.endpoints()))
        .with_ca_file(&tls.ca)
        .unwrap()
        .with_client_identity_files(&tls.client_cert, &tls.client_key)
        .unwrap();
    let good = secure.clone().with_user("cohort", COHORT_PASSWORD);
    good.validate().unwrap();
    let mut a = start(good.clone(), "secure", TTL, Some(record(1, 1, 10)));
    let mut b = start(good.clone(), "secure", TTL, Some(record(2, 1, 20)));
    a.put_of(2, 20).await;
    b.put_of(1, 10).await;
    a.shutdown().await;
    let (_, leaving, _) = b.delete_of(1).await;
    assert!(
        leaving,
        "the goodbye and the revocation need the user's rights"
    );
    // A wrong password, a missing client certificate, or no TLS at all:
    // stale, never a record, never a crash.
    let wrong_password = secure.clone().with_user("cohort", "wrong");
    let no_client_cert = quick(EtcdConfig::new(cluster.endpoints()))
        .with_ca_file(&tls.ca)
        .unwrap()
        .with_user("cohort", COHORT_PASSWORD);
    let plain = quick(EtcdConfig::new(
        cluster
            .endpoints()
            .iter()
            .map(|e| e.replace("https://", "http://")),
    ))
    .with_user("cohort", COHORT_PASSWORD);
    for (what, config) in [
        ("a wrong password", wrong_password),
        ("no client certificate", no_client_cert),
        ("plain http", plain),
    ] {
        let mut bad = start(config, "secure", TTL, Some(record(9, 1, 90)));
        bad.until(&format!("Stale(true) with {what}"), stale(true))
            .await;
        assert!(
            !bad.saw(|e| matches!(e, SourceEvent::Put(_))),
            "{what}: {:?}",
            bad.seen
        );
    }
    let mut c = start(good, "secure", TTL, None);
    c.put_of(2, 20).await;
    assert!(!c.saw(|e| matches!(e, SourceEvent::Put(r) if r.id == 9)));
}

/// A child process of this test binary running one source (see
/// [`child_source`]), with its `@@` lines.
struct ChildSource {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
}

impl ChildSource {
    fn spawn(command: &mut Command) -> ChildSource {
        let mut child = command
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting a child source");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("@@ ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        ChildSource { child, lines }
    }

    async fn line(&mut self, wanted: &str) {
        let deadline = Instant::now() + BOUND;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match timeout(left, self.lines.recv()).await {
                Ok(Some(line)) if line == wanted => return,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the child exited before saying {wanted:?}"),
                Err(_) => panic!("the child did not say {wanted:?} within {BOUND:?}"),
            }
        }
    }
}

impl Drop for ChildSource {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary, running only `test` (ignored, so only on request).
fn this_binary(test: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    command
}

const CHILD: &str = "etcd::tests::faults::child_source";
const CUT: &str = "etcd::tests::faults::cut_off_scenario";

/// Not a test: the source a child process runs (`COHORT_ETCD_CHILD` =
/// `ENDPOINTS|NAMESPACE|ID|TTL_SECS`); prints `@@` lines for what it sees,
/// and runs until killed.
#[test]
#[ignore = "a child process of the etcd tests"]
fn child_source() {
    let Ok(spec) = std::env::var("COHORT_ETCD_CHILD") else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let endpoints: Vec<String> = parts[0].split(',').map(str::to_owned).collect();
    let (namespace, id, ttl) = (
        parts[1],
        parts[2].parse().unwrap(),
        parts[3].parse().unwrap(),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = quick(EtcdConfig::new(endpoints));
        let mut me = start(
            config,
            namespace,
            Duration::from_secs(ttl),
            Some(record(id, 1, 70)),
        );
        println!("@@ started");
        let deadline = Instant::now() + Duration::from_secs(300);
        while let Ok(Some(event)) = timeout(
            deadline.saturating_duration_since(Instant::now()),
            me.events.recv(),
        )
        .await
        {
            match event {
                SourceEvent::Stale(on) => println!("@@ stale {on}"),
                SourceEvent::Put(r) => println!("@@ put {}", r.id),
                other => println!("@@ {other:?}"),
            }
        }
    });
}

#[tokio::test]
async fn a_sigkilled_process_is_seen_after_its_lease_ttl() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut watcher = start(config(&cluster), "kill9", TTL, Some(record(2, 1, 20)));
    let mut child = ChildSource::spawn(this_binary(CHILD).env(
        "COHORT_ETCD_CHILD",
        format!(
            "{}|kill9|7|{}",
            cluster.endpoints().join(","),
            TTL.as_secs()
        ),
    ));
    child.line("put 2").await;
    watcher.put_of(7, 70).await;
    let killed = Instant::now();
    child.child.kill().unwrap(); // SIGKILL
    let (incarnation, leaving, at) = watcher.delete_of(7).await;
    assert_eq!((incarnation, leaving), (Some(1), false));
    let after = at - killed;
    eprintln!("SIGKILL seen {after:?} after the kill (TTL {TTL:?})");
    assert!(
        after >= TTL * 2 / 3,
        "seen after {after:?}: too soon for a lease expiry"
    );
}

/// The test itself runs in a network namespace of its own (so its nftables
/// rule can touch nothing else), as a child of this test binary.
#[tokio::test]
async fn an_instance_cut_off_by_nftables_goes_stale_recovers_and_registers_again() {
    for tool in ["unshare", "nft", "setpriv", "ip"] {
        if !have(tool) {
            cannot_run_here(&format!("{tool} is not installed"));
            return;
        }
    }
    if !rustix::process::geteuid().is_root() {
        cannot_run_here(
            "cutting an instance off with nftables needs root (scripts/test runs as root in CI)",
        );
        return;
    }
    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CUT,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("COHORT_ETCD_CUT", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("running the scenario");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("@@ cut-off scenario passed"),
        "the scenario failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
}

/// Not a test: the nftables scenario, run by the test above in a fresh
/// network namespace.
#[tokio::test]
#[ignore = "run by an_instance_cut_off_by_nftables_... in its own network namespace"]
async fn cut_off_scenario() {
    if std::env::var_os("COHORT_ETCD_CUT").is_none() {
        return;
    }
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    let mut watcher = start(config(&cluster), "cut", TTL, Some(record(2, 1, 20)));
    // The instance to cut off runs as `nobody`, so one nftables rule on the
    // socket owner catches exactly its packets.
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--",
        ])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            CHILD,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "COHORT_ETCD_CHILD",
            format!("{}|cut|7|{}", cluster.endpoints().join(","), TTL.as_secs()),
        );
    let mut child = ChildSource::spawn(&mut command);
    child.line("put 2").await;
    watcher.put_of(7, 70).await;
    let (_, old_lease) = read_key(&cluster, "/cohort/cut/7").await.unwrap();
    nft("add table inet cohort_cut\n\
         add chain inet cohort_cut out { type filter hook output priority 0; }\n\
         add rule inet cohort_cut out meta skuid 65534 counter drop\n");
    child.line("stale true").await;
    // Cut off longer than its TTL: the cluster expires its lease.
    let (_, leaving, _) = watcher.delete_of(7).await;
    assert!(!leaving);
    nft("delete table inet cohort_cut\n");
    child.line("stale false").await;
    // It registers again, with a new lease, and is seen again.
    watcher.put_of(7, 70).await;
    let (held, lease) = read_key(&cluster, "/cohort/cut/7").await.unwrap();
    assert_eq!(held.map(|r| r.id), Some(7));
    assert_ne!(lease, old_lease);
    println!("@@ cut-off scenario passed");
}

fn nft(script: &str) {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("running nft");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft failed on:\n{script}");
}
