//! Many hosts on a simulated LAN (`scripts/lan.sh`): network namespaces on
//! one bridge, each host with its own address, pid namespace and nftables
//! rules for loss and partitions. Run inside a private network namespace
//! (`scripts/test`), or as root anywhere: the script creates everything in
//! namespaces of its own and touches no interface of the machine.
//!
//! Each test skips, printing `SKIPPED: <reason>`, only when `scripts/lan.sh
//! check` says namespaces cannot be created here (not root, no iproute2),
//! and fails instead when `CI` is set, so a green CI means they ran.
//!
//! The instances are real processes: the test binary re-executes itself as
//! `lan_child` (ignored when run directly) on a host through `scripts/lan.sh
//! exec`, and reports every change to its chart on stdout (`started`,
//! `joined <id> <ip>`, `left <id> <reason>`), which the test reads and
//! timestamps. Every test has its own LAN (run id) and discovery port, so
//! tests running in parallel threads never meet.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cohort::protocol::Schedule;
use cohort::{ChartBuilder, Event, discovery};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/lan.sh");

/// The instances' schedule: short, so eviction takes seconds, not 30 s.
/// Settled, an instance announces every 1 s ± 20%; a peer silent for 3 s
/// (probes included) is evicted. Not shorter: an instance stalled for longer
/// than the TTL (a CPU-starved CI machine) evicts live peers whose packets
/// wait unread in its socket, which would fail these tests for the wrong
/// reason.
const SCHEDULE: Schedule = Schedule {
    first_interval: Duration::from_millis(50),
    max_interval: Duration::from_millis(1000),
    eager_announcements: 3,
    ttl: Duration::from_millis(3000),
};

/// Latest announcement gap: `max_interval` plus 20% jitter.
const MAX_GAP: Duration = Duration::from_millis(1200);

/// Allowance for scheduling and reading 50 processes' output on a loaded
/// 2-core machine, added to the protocol's own bounds.
const SLACK: Duration = Duration::from_secs(1);

/// Failure bound only (discovery takes milliseconds): keeps a broken build
/// from hanging CI.
const BOUND: Duration = Duration::from_secs(30);

const HOSTS: usize = 10;
const PER_HOST: usize = 5;

/// One instance on a LAN host: announces id `COHORT_LAN_ID` (service port =
/// the discovery port) from the host's address (`HOST_ADDR`, set by
/// `scripts/lan.sh exec`) with local discovery on, prints every chart change,
/// and leaves gracefully when its stdin closes.
#[test]
#[ignore = "child process of the LAN tests"]
fn lan_child() {
    let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let port: u16 = env("COHORT_LAN_PORT").parse().unwrap();
    let id: u64 = env("COHORT_LAN_ID").parse().unwrap();
    let addr: Ipv4Addr = env("HOST_ADDR").parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let chart = ChartBuilder::new()
            .with_id(id)
            .with_service_port(port)
            .with_discovery_port(port)
            .with_namespace(format!("lan-{port}"))
            .with_interface(addr)
            .local_discovery(true)
            .with_schedule(SCHEDULE)
            .finish()
            .unwrap();
        let mut events = chart.subscribe();
        let mut task = tokio::spawn(discovery::maintain(chart.clone()));
        println!("started");
        let (eof_tx, mut eof) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            for _ in std::io::stdin().lines().map_while(Result::ok) {}
            let _ = eof_tx.send(());
        });
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(Event::Joined(e)) => println!("joined {} {}", e.id, e.ip),
                    Ok(Event::Updated(e)) => println!("updated {} {}", e.id, e.ip),
                    Ok(Event::Left { id, reason }) => {
                        println!("left {id} {}", format!("{reason:?}").to_lowercase());
                    }
                    Ok(other) => println!("other {other:?}"),
                    Err(lagged) => println!("lagged {}", lagged.missed),
                },
                _ = &mut eof => break,
                ended = &mut task => panic!("discovery ended: {ended:?}"),
            }
        }
        chart.shutdown();
        task.await.unwrap().unwrap();
    });
}

/// Runs `scripts/lan.sh ARGS`; panics with its stderr if it fails.
fn lan(args: &[&str]) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    assert!(
        out.status.success(),
        "scripts/lan.sh {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Whether this machine can build a LAN. `Err` carries the reason.
fn lan_possible() -> Result<(), String> {
    let out = Command::new("bash")
        .args([SCRIPT, "check"])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {SCRIPT}: {e}"));
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        _ => panic!(
            "scripts/lan.sh check failed unexpectedly ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A LAN that exists as long as this value: dropping it (also while a test
/// panics) runs `scripts/lan.sh down`, which kills every process on it.
struct Lan {
    run: String,
    addrs: Vec<IpAddr>,
}

impl Lan {
    /// Builds `hosts` hosts for test `test`, or returns `None`, printing
    /// why, if namespaces cannot be created here.
    fn up(test: &str, tag: char, hosts: usize) -> Option<Lan> {
        if let Err(reason) = lan_possible() {
            // A green CI must mean these tests ran.
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: cannot build a LAN here, and CI is set: {reason}"
            );
            eprintln!("SKIPPED: {test}: {reason}");
            // Straight to the process's stderr, past the test harness's
            // capture, so the skip shows in a passing run too.
            let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
            return None;
        }
        // Built before `up`, so a failing `up` is cleaned up too.
        let mut lan = Lan {
            run: format!("l{}{tag}", std::process::id()),
            addrs: Vec::new(),
        };
        lan.script(&["up", &lan.run, &hosts.to_string()]);
        lan.addrs = lan
            .script(&["hosts", &lan.run])
            .lines()
            .map(|line| line.split_whitespace().nth(1).unwrap().parse().unwrap())
            .collect();
        assert_eq!(lan.addrs.len(), hosts);
        Some(lan)
    }

    fn script(&self, args: &[&str]) -> String {
        lan(args)
    }

    /// The address of host `host` (1-based).
    fn addr(&self, host: usize) -> IpAddr {
        self.addrs[host - 1]
    }

    /// Packet counts of the host's nftables rules, summed over all hosts:
    /// name -> count.
    fn counters(&self) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::new();
        for line in self.script(&["counters", &self.run]).lines() {
            let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
            for pair in fields.chunks(2) {
                *sums.entry(pair[0].to_owned()).or_insert(0) += pair[1].parse::<u64>().unwrap();
            }
        }
        sums
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args([SCRIPT, "down", &self.run])
            .stdin(Stdio::null())
            .status();
    }
}

/// One instance process.
struct Instance {
    id: u64,
    host: usize,
    /// `scripts/lan.sh exec`, which waits for the instance.
    child: Child,
}

/// What one instance said, when the test read it.
enum Said {
    Line(String),
    Exited,
}

/// The instances of one test and what the test knows of their charts.
struct Cohort {
    instances: Vec<Instance>,
    said: mpsc::Receiver<(usize, Said, Instant)>,
    /// Per instance: the ids in its chart, as its output says.
    known: Vec<BTreeSet<u64>>,
    started: Vec<Option<Instant>>,
    /// Every `left` line: (instance, peer id, reason, when read).
    departures: Vec<(usize, u64, String, Instant)>,
    /// Instances deliberately killed: their exit is expected.
    killed: BTreeSet<usize>,
    lan: Lan,
}

impl Cohort {
    /// Starts `per_host` instances on each host, ids `100 * host + k`.
    fn start(lan: Lan, port: u16, per_host: usize) -> Cohort {
        let exe = std::env::current_exe().unwrap();
        let exe = exe.to_str().unwrap();
        let (tx, said) = mpsc::channel();
        let mut instances = Vec::new();
        for host in 1..=lan.addrs.len() {
            for k in 1..=per_host {
                let id = (100 * host + k) as u64;
                let mut child = Command::new("bash")
                    .args([SCRIPT, "exec", &lan.run, &host.to_string(), exe])
                    .args(["--exact", "lan_child", "--ignored", "--nocapture"])
                    .arg("--quiet")
                    .env("COHORT_LAN_PORT", port.to_string())
                    .env("COHORT_LAN_ID", id.to_string())
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()
                    .unwrap();
                let stdout = BufReader::new(child.stdout.take().unwrap());
                let index = instances.len();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in stdout.lines().map_while(Result::ok) {
                        let _ = tx.send((index, Said::Line(line), Instant::now()));
                    }
                    let _ = tx.send((index, Said::Exited, Instant::now()));
                });
                instances.push(Instance { id, host, child });
            }
        }
        let n = instances.len();
        Cohort {
            instances,
            said,
            known: vec![BTreeSet::new(); n],
            started: vec![None; n],
            departures: Vec::new(),
            killed: BTreeSet::new(),
            lan,
        }
    }

    fn alive(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.instances.len()).filter(|i| !self.killed.contains(i))
    }

    /// Whether every live instance knows exactly the live instances that
    /// `reachable(it, other)` says it can reach.
    fn charts_match(&self, reachable: &dyn Fn(&Instance, &Instance) -> bool) -> bool {
        self.alive().all(|i| {
            let expected: BTreeSet<u64> = self
                .alive()
                .filter(|&j| j != i && reachable(&self.instances[i], &self.instances[j]))
                .map(|j| self.instances[j].id)
                .collect();
            self.known[i] == expected
        })
    }

    /// Reads the instances' output until `done` holds; returns when the line
    /// that made it hold was read. Panics after `bound`.
    fn wait_until(
        &mut self,
        what: &str,
        bound: Duration,
        done: &dyn Fn(&Cohort) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + bound;
        let mut last = Instant::now();
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.said.recv_timeout(left) {
                Ok((i, said, at)) => {
                    last = at;
                    self.handle(i, said, at);
                }
                Err(_) => panic!("{what}: not within {bound:?}; {}", self.summary()),
            }
        }
        last
    }

    fn handle(&mut self, i: usize, said: Said, at: Instant) {
        let id = self.instances[i].id;
        let line = match said {
            Said::Line(line) => line,
            Said::Exited => {
                assert!(self.killed.contains(&i), "instance {id} exited");
                return;
            }
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["started"] => self.started[i] = Some(at),
            ["joined", peer, ip] => {
                let peer: u64 = peer.parse().unwrap();
                let host = usize::try_from(peer / 100).unwrap();
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(
                    ip,
                    self.lan.addr(host),
                    "instance {id} sees {peer} at the wrong address"
                );
                assert!(self.known[i].insert(peer), "{id}: {peer} joined twice");
            }
            ["left", peer, reason] => {
                let peer: u64 = peer.parse().unwrap();
                assert!(self.known[i].remove(&peer), "{id}: unknown {peer} left");
                self.departures.push((i, peer, (*reason).to_owned(), at));
            }
            ["updated", ..] | ["other", ..] | ["lagged", ..] => {
                panic!("instance {id} said unexpected `{line}`")
            }
            _ => {} // the test harness's own output
        }
    }

    /// A short account of who misses whom, for failure messages.
    fn summary(&self) -> String {
        let sizes: BTreeMap<u64, usize> = self
            .alive()
            .map(|i| (self.instances[i].id, self.known[i].len()))
            .collect();
        format!(
            "chart sizes (others known) by instance: {sizes:?}; departures: {}",
            self.departures.len()
        )
    }

    /// Every departure as `observer:peer:reason@ms` (ms since the first).
    fn departures_text(&self) -> String {
        let Some(first) = self.departures.iter().map(|d| d.3).min() else {
            return "none".to_owned();
        };
        self.departures
            .iter()
            .map(|(i, peer, reason, at)| {
                format!(
                    "{}:{peer}:{reason}@{}",
                    self.instances[*i].id,
                    (*at - first).as_millis()
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Waits until every live instance knows every other live one; returns
    /// when.
    fn converge(&mut self, what: &str) -> Instant {
        self.wait_until(what, BOUND, &|c| c.charts_match(&|_, _| true))
    }

    fn last_start(&self) -> Instant {
        self.started
            .iter()
            .map(|s| s.expect("every instance started"))
            .max()
            .unwrap()
    }
}

impl Drop for Cohort {
    fn drop(&mut self) {
        // Kill everything on the LAN first (the `exec` processes then exit),
        // then reap them; `lan` is dropped (down again: a no-op) after this.
        let _ = Command::new("bash")
            .args([SCRIPT, "down", &self.lan.run])
            .stdin(Stdio::null())
            .status();
        for instance in &mut self.instances {
            let _ = instance.child.kill();
            let _ = instance.child.wait();
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn ten_hosts_with_five_instances_each_all_converge() {
    let Some(lan) = Lan::up(
        "ten_hosts_with_five_instances_each_all_converge",
        'a',
        HOSTS,
    ) else {
        return;
    };
    let began = Instant::now();
    let mut cohort = Cohort::start(lan, 48011, PER_HOST);
    let done = cohort.converge("50 instances on 10 hosts converge");
    assert!(
        cohort.departures.is_empty(),
        "no instance left on a clean LAN"
    );
    println!(
        "50 instances on 10 hosts: all know all {} after the last started ({} after the first spawn)",
        ms(done - cohort.last_start()),
        ms(done - began)
    );
}

#[test]
fn with_20_percent_loss_on_every_host_they_still_converge() {
    let Some(lan) = Lan::up(
        "with_20_percent_loss_on_every_host_they_still_converge",
        'b',
        HOSTS,
    ) else {
        return;
    };
    lan.script(&["loss", &lan.run, "all", "20"]);
    let mut cohort = Cohort::start(lan, 48012, PER_HOST);
    let done = cohort.converge("50 instances converge with 20% loss per host link");
    let counts = cohort.lan.counters();
    // The loss is real: about a fifth of the UDP datagrams through every
    // host's link, in each direction, were dropped.
    for (seen, lost) in [("sent", "lost_out"), ("received", "lost_in")] {
        let ratio = counts[lost] as f64 / counts[seen] as f64;
        assert!(
            counts[seen] > 500 && (0.12..0.28).contains(&ratio),
            "{lost}/{seen} = {} / {}",
            counts[lost],
            counts[seen]
        );
    }
    println!(
        "50 instances on 10 hosts with 20% loss each way per host: all know all {} after the last started; dropped {} of {} sent and {} of {} received datagrams; {} transient evictions",
        ms(done - cohort.last_start()),
        counts["lost_out"],
        counts["sent"],
        counts["lost_in"],
        counts["received"],
        cohort.departures.len()
    );
}

#[test]
fn a_partition_into_two_halves_makes_each_half_evict_the_other_within_the_ttl_and_healing_reconverges()
 {
    let Some(lan) = Lan::up(
        "a_partition_into_two_halves_makes_each_half_evict_the_other_within_the_ttl_and_healing_reconverges",
        'c',
        HOSTS,
    ) else {
        return;
    };
    let mut cohort = Cohort::start(lan, 48013, PER_HOST);
    cohort.converge("50 instances converge");
    assert!(
        cohort.departures.is_empty(),
        "nobody left before the fault: {}",
        cohort.departures_text()
    );

    let half = |host: usize| host <= HOSTS / 2;
    let before = Instant::now();
    cohort
        .lan
        .script(&["partition", &cohort.lan.run, "1-5", "6-10"]);
    let in_place = Instant::now();
    let split = cohort.wait_until("each half evicts the other", BOUND, &|c| {
        c.charts_match(&|a, b| half(a.host) == half(b.host))
    });
    // Every departure was an eviction of the other half, by TTL: no peer
    // heard after the partition was in place can be evicted before TTL has
    // passed since, and no peer can be evicted later than TTL after the
    // partition was in place.
    assert_eq!(
        cohort.departures.len(),
        2 * 25 * 25,
        "departures: {}",
        cohort.departures_text()
    );
    for (i, peer, reason, at) in &cohort.departures {
        let who = &cohort.instances[*i];
        assert_ne!(
            half(who.host),
            half((*peer / 100) as usize),
            "{} evicted {peer} of its own half",
            who.id
        );
        assert_eq!(reason, "expired", "{} saw {peer} leave", who.id);
        assert!(
            *at >= before + SCHEDULE.ttl - MAX_GAP,
            "{} evicted {peer} {} after the partition began: before its TTL",
            who.id,
            ms(*at - before)
        );
    }
    let evicted_after = split - in_place;
    assert!(
        evicted_after <= SCHEDULE.ttl + SLACK,
        "the last eviction came {} after the partition, bound TTL {} + {}",
        ms(evicted_after),
        ms(SCHEDULE.ttl),
        ms(SLACK)
    );
    let first = cohort.departures.iter().map(|d| d.3).min().unwrap();

    cohort.lan.script(&["heal", &cohort.lan.run]);
    let healed = Instant::now();
    let merged = cohort.converge("the halves find each other after healing");
    // One announcement heard mends a pair both ways, and every instance
    // announces at least every MAX_GAP.
    assert!(
        merged - healed <= MAX_GAP + SLACK,
        "reconverged {} after healing, bound {}",
        ms(merged - healed),
        ms(MAX_GAP + SLACK)
    );
    assert_eq!(
        cohort.departures.len(),
        2 * 25 * 25,
        "nobody else left: {}",
        cohort.departures_text()
    );
    println!(
        "partition of 50 instances into 2 x 25: first eviction {} and last {} after the partition was in place (TTL {}); reconverged {} after healing",
        ms(first.saturating_duration_since(in_place)),
        ms(evicted_after),
        ms(SCHEDULE.ttl),
        ms(merged - healed)
    );
}

#[test]
fn killing_every_instance_of_one_host_is_seen_by_all_other_hosts_as_expired_within_the_ttl() {
    let Some(lan) = Lan::up(
        "killing_every_instance_of_one_host_is_seen_by_all_other_hosts_as_expired_within_the_ttl",
        'd',
        HOSTS,
    ) else {
        return;
    };
    let mut cohort = Cohort::start(lan, 48014, PER_HOST);
    cohort.converge("50 instances converge");
    assert!(
        cohort.departures.is_empty(),
        "nobody left before the fault: {}",
        cohort.departures_text()
    );

    let victim = HOSTS;
    let before = Instant::now();
    cohort
        .lan
        .script(&["kill", &cohort.lan.run, &victim.to_string(), "KILL"]);
    let killed = Instant::now();
    cohort.killed = (0..cohort.instances.len())
        .filter(|&i| cohort.instances[i].host == victim)
        .collect();
    assert_eq!(cohort.killed.len(), PER_HOST);
    let seen = cohort.converge("every other host drops the killed host's instances");
    // The killed instances may see each other die (same host: their
    // processes are watched) in the moment between two SIGKILLs; only the
    // other hosts matter here. 45 observers x 5 killed instances, each gone
    // by TTL: another host's process cannot be watched, and SIGKILL leaves
    // no goodbye.
    let observed: Vec<_> = cohort
        .departures
        .iter()
        .filter(|(i, ..)| cohort.instances[*i].host != victim)
        .collect();
    assert_eq!(
        observed.len(),
        45 * 5,
        "departures: {}",
        cohort.departures_text()
    );
    for (i, peer, reason, at) in observed.iter().copied() {
        let who = &cohort.instances[*i];
        assert_eq!((*peer / 100) as usize, victim, "{} lost {peer}", who.id);
        assert_eq!(reason, "expired", "{} saw {peer} leave", who.id);
        assert!(
            *at >= before + SCHEDULE.ttl - MAX_GAP,
            "{} dropped {peer} {} after the kill: before its TTL",
            who.id,
            ms(*at - before)
        );
    }
    assert!(
        seen - killed <= SCHEDULE.ttl + SLACK,
        "the last observer dropped the killed instances {} after the kill, bound TTL {} + {}",
        ms(seen - killed),
        ms(SCHEDULE.ttl),
        ms(SLACK)
    );
    let first = observed.iter().map(|d| d.3).min().unwrap();
    println!(
        "SIGKILL of host {victim}'s 5 instances: all 45 others saw them expire between {} and {} after the kill (TTL {})",
        ms(first.saturating_duration_since(killed)),
        ms(seen - killed),
        ms(SCHEDULE.ttl)
    );
}
