//! Deterministic simulation of the sans-IO protocol: virtual time, an
//! in-memory multicast network with seeded latency and loss. No sockets, no
//! real clock: a simulated minute of 100 instances runs in milliseconds, and
//! every run with the same seed is identical.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cohort::protocol::{Change, Config, Destination, LeftReason, Mode, Output, Protocol, Schedule};

/// Loss and latency of the simulated LAN.
#[derive(Clone, Copy)]
struct Link {
    loss: f64,
    min_latency: Duration,
    max_latency: Duration,
}

const LAN: Link = Link {
    loss: 0.0,
    min_latency: Duration::from_micros(50),
    max_latency: Duration::from_micros(500),
};

struct Delivery {
    to: usize,
    from: SocketAddr,
    bytes: Rc<Vec<u8>>,
}

struct Sim {
    base: Instant,
    now: Duration,
    link: Link,
    rng: u64,
    instances: Vec<Option<Protocol>>,
    /// When each instance next wants `handle_timeout`.
    timers: Vec<Option<Duration>>,
    addrs: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    known: Vec<usize>,
    /// Every event each instance emitted, with its virtual time.
    log: Vec<Vec<(Duration, Change)>>,
    schedule: Schedule,
    in_flight: BinaryHeap<Reverse<(Duration, u64)>>,
    deliveries: HashMap<u64, Delivery>,
    seq: u64,
    sent: Vec<u64>,
}

impl Sim {
    fn new(n: usize, link: Link, seed: u64) -> Self {
        // Virtual addresses in the loopback range; nothing is ever sent.
        let addrs: Vec<SocketAddr> = (0..n)
            .map(|i| {
                let ip = Ipv4Addr::new(127, 1, (i / 256) as u8, (i % 256) as u8);
                SocketAddr::new(IpAddr::V4(ip), 40_000)
            })
            .collect();
        Sim {
            base: Instant::now(),
            now: Duration::ZERO,
            link,
            rng: seed,
            instances: (0..n).map(|_| None).collect(),
            timers: vec![None; n],
            by_addr: addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            addrs,
            known: vec![0; n],
            log: vec![Vec::new(); n],
            schedule: Schedule::default(),
            in_flight: BinaryHeap::new(),
            deliveries: HashMap::new(),
            seq: 0,
            sent: vec![0; n],
        }
    }

    fn random(&mut self) -> f64 {
        // SplitMix64, independent of the protocol's own generators.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn start(&mut self, i: usize) {
        self.start_as(i, i as u64, 1);
    }

    /// Starts instance slot `i` (its own address) claiming `id`.
    fn start_as(&mut self, i: usize, id: u64, incarnation: u64) {
        let config = Config {
            id,
            incarnation,
            namespace: "sim".into(),
            payload: vec![i as u8],
            schedule: self.schedule,
            seed: self.rng ^ (i as u64 + incarnation).wrapping_mul(0x2545_F491_4F6C_DD1D),
            mode: Mode::Announce,
            reply_port: self.addrs[i].port(),
            ..Config::default()
        };
        self.instances[i] = Some(Protocol::new(config, self.base + self.now).unwrap());
        self.flush(i);
    }

    /// The instance stops dead: no goodbye, nothing more sent or received.
    fn crash(&mut self, i: usize) {
        self.instances[i] = None;
        self.timers[i] = None;
    }

    /// When each other instance saw `id` leave, and why.
    fn departures_of(&self, id: u64) -> Vec<(usize, Duration, LeftReason)> {
        let mut out = Vec::new();
        for (i, log) in self.log.iter().enumerate() {
            for (at, event) in log {
                if let Change::Left { id: left, reason } = event
                    && *left == id
                {
                    out.push((i, *at, *reason));
                }
            }
        }
        out
    }

    fn flush(&mut self, i: usize) {
        let mut transmits = Vec::new();
        let mut joined: isize = 0;
        {
            let p = self.instances[i].as_mut().unwrap();
            let timeout = loop {
                match p.poll_output() {
                    Output::Transmit(t) => transmits.push(t),
                    Output::Change(change) => {
                        match change {
                            Change::Joined(_) => joined += 1,
                            Change::Left { .. } => joined -= 1,
                            _ => {}
                        }
                        self.log[i].push((self.now, change));
                    }
                    Output::Timeout(at) => break at,
                }
            };
            self.timers[i] = timeout.map(|at| at - self.base);
        }
        self.known[i] = self.known[i].wrapping_add_signed(joined);
        for t in transmits {
            self.sent[i] += 1;
            let bytes = Rc::new(t.contents.to_vec());
            let targets: Vec<usize> = match t.destination {
                // The sender hears its own multicast too (loopback on).
                Destination::Group => (0..self.instances.len()).collect(),
                Destination::Unicast(addr) => {
                    self.by_addr.get(&addr).copied().into_iter().collect()
                }
            };
            for to in targets {
                if self.random() < self.link.loss {
                    continue;
                }
                let spread = (self.link.max_latency - self.link.min_latency).as_secs_f64();
                let at = self.now
                    + self.link.min_latency
                    + Duration::from_secs_f64(spread * self.random());
                self.seq += 1;
                self.in_flight.push(Reverse((at, self.seq)));
                self.deliveries.insert(
                    self.seq,
                    Delivery {
                        to,
                        from: self.addrs[i],
                        bytes: Rc::clone(&bytes),
                    },
                );
            }
        }
    }

    /// Advances to the next delivery or timer, if it is before `until`.
    fn step(&mut self, until: Duration) -> bool {
        let next_delivery = self.in_flight.peek().map(|Reverse((at, _))| *at);
        let next_timer = self
            .timers
            .iter()
            .enumerate()
            .filter(|(i, _)| self.instances[*i].is_some())
            .filter_map(|(i, t)| Some(((*t)?, i)))
            .min();
        let timer_first = match (next_delivery, next_timer) {
            (None, None) => return false,
            (Some(d), Some((t, _))) => t < d,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if timer_first {
            let (at, i) = next_timer.unwrap();
            if at > until {
                return false;
            }
            self.now = at;
            self.instances[i]
                .as_mut()
                .unwrap()
                .handle_timeout(self.base + at);
            self.flush(i);
        } else {
            let Reverse((at, seq)) = self.in_flight.pop().unwrap();
            if at > until {
                self.in_flight.push(Reverse((at, seq)));
                return false;
            }
            self.now = at;
            let d = self.deliveries.remove(&seq).unwrap();
            if let Some(p) = self.instances[d.to].as_mut() {
                let _ = p.handle_datagram(self.base + at, d.from, &d.bytes);
                self.flush(d.to);
            }
        }
        true
    }

    fn converged(&self) -> bool {
        let n = self.instances.len();
        self.instances.iter().all(Option::is_some) && self.known.iter().all(|&k| k == n - 1)
    }

    /// Runs until everyone knows everyone; returns when, or `None` if not
    /// by `until`.
    fn run_until_converged(&mut self, until: Duration) -> Option<Duration> {
        while !self.converged() {
            if !self.step(until) {
                return None;
            }
        }
        Some(self.now)
    }

    fn run_until(&mut self, until: Duration) {
        while self.step(until) {}
        self.now = until;
    }
}

/// The first datagram a new instance with `config` sends.
fn first_packet(config: Config) -> Vec<u8> {
    let mut p = Protocol::new(config, Instant::now()).unwrap();
    match p.poll_output() {
        Output::Transmit(t) => t.contents.to_vec(),
        other => panic!("expected a transmit, got {other:?}"),
    }
}

#[test]
fn a_hundred_instances_started_together_all_know_each_other_within_two_milliseconds() {
    let n = 100;
    for seed in 1..=5 {
        let mut sim = Sim::new(n, LAN, seed);
        for i in 0..n {
            sim.start(i);
        }
        let at = sim
            .run_until_converged(Duration::from_secs(60))
            .expect("never converged");
        // One multicast hop plus one unicast reply: at most 2 x 500 us.
        assert!(
            at <= Duration::from_millis(2),
            "seed {seed}: converged at {at:?}"
        );
    }
}

#[test]
/// One multicast hop, the pacing spread for a group of 101 (2 ms), and the
/// three unicast hops of the handshake (at most 0.5 ms each here).
fn a_newcomer_learns_a_hundred_running_peers_within_four_milliseconds() {
    let n = 101;
    let mut sim = Sim::new(n, LAN, 7);
    for i in 0..n - 1 {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(30));
    assert!(sim.known[..n - 1].iter().all(|&k| k == n - 2));
    let started = sim.now;
    sim.start(n - 1);
    let at = sim
        .run_until_converged(started + Duration::from_secs(60))
        .expect("never converged");
    assert!(
        at - started <= Duration::from_millis(4),
        "took {:?}",
        at - started
    );
}

#[test]
fn instances_starting_over_a_second_converge_within_four_milliseconds_of_the_last_start() {
    let n = 100;
    let mut sim = Sim::new(n, LAN, 11);
    let mut last_start = Duration::ZERO;
    for i in 0..n {
        let at = Duration::from_millis(((i * 7919) % 1000) as u64);
        sim.run_until(at);
        sim.start(i);
        last_start = last_start.max(at);
    }
    let at = sim
        .run_until_converged(Duration::from_secs(60))
        .expect("never converged");
    assert!(
        at.saturating_sub(last_start) <= Duration::from_millis(4),
        "converged at {at:?}"
    );
}

/// With 10% loss on every delivery, every pair still completes its
/// handshake quickly: the settling announcements carry the ids heard, so a
/// handshake that lost a datagram is retried at the next announcement of
/// either side, and the last datagram of each handshake goes twice. The
/// bound leaves room for the unluckiest pair to wait for the backed-off
/// schedule.
#[test]
fn with_ten_percent_loss_a_hundred_instances_converge_within_three_seconds() {
    let n = 100;
    let lossy = Link { loss: 0.10, ..LAN };
    let mut worst = Duration::ZERO;
    for seed in 1..=10 {
        let mut sim = Sim::new(n, lossy, seed);
        for i in 0..n {
            sim.start(i);
        }
        let at = sim
            .run_until_converged(Duration::from_secs(3))
            .unwrap_or_else(|| panic!("seed {seed}: not converged after 3 s"));
        worst = worst.max(at);
    }
    println!("worst convergence with 10% loss over 10 seeds: {worst:?}");
}

#[test]
fn idle_instances_send_at_most_six_datagrams_a_minute_each() {
    let n = 20;
    let mut sim = Sim::new(n, LAN, 3);
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(120));
    let before: u64 = sim.sent.iter().sum();
    sim.run_until(Duration::from_secs(120 + 600));
    let per_minute = (sim.sent.iter().sum::<u64>() - before) as f64 / n as f64 / 10.0;
    assert!(
        per_minute <= 6.0,
        "{per_minute} datagrams per instance per minute"
    );
    assert!(per_minute >= 4.0, "{per_minute}: announcements stopped?");
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let run = |seed| {
        let mut sim = Sim::new(30, Link { loss: 0.2, ..LAN }, seed);
        for i in 0..30 {
            sim.start(i);
        }
        (
            sim.run_until_converged(Duration::from_secs(60)),
            sim.sent.clone(),
        )
    };
    assert_eq!(run(5), run(5));
    assert_ne!(run(5), run(6));
}

/// 20% loss on every delivery, for a simulated day: the probes before
/// eviction keep every live peer in every chart.
#[test]
fn with_twenty_percent_loss_no_live_peer_is_evicted_over_a_simulated_day() {
    let n = 20;
    let mut sim = Sim::new(n, Link { loss: 0.20, ..LAN }, 42);
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(24 * 3600));
    let evictions: Vec<_> = (0..n as u64).flat_map(|id| sim.departures_of(id)).collect();
    assert!(evictions.is_empty(), "live peers evicted: {evictions:?}");
    assert!(sim.known.iter().all(|&k| k == n - 1));
    let probes: u64 = sim
        .instances
        .iter()
        .flatten()
        .map(|p| p.stats().probes_sent)
        .sum();
    println!("probes sent in a day by {n} instances at 20% loss: {probes}");
}

#[test]
fn a_crashed_peer_is_evicted_by_everyone_within_its_ttl() {
    let n = 10;
    let ttl = Schedule::default().ttl;
    for seed in 1..=5 {
        let mut sim = Sim::new(n, LAN, seed);
        for i in 0..n {
            sim.start(i);
        }
        sim.run_until(Duration::from_secs(60 + seed * 7));
        let crashed_at = sim.now;
        sim.crash(3);
        sim.run_until(crashed_at + Duration::from_secs(60));
        let departures = sim.departures_of(3);
        assert_eq!(departures.len(), n - 1, "seed {seed}: {departures:?}");
        for (i, at, reason) in departures {
            assert_eq!(reason, LeftReason::Expired);
            assert!(
                at - crashed_at <= ttl,
                "seed {seed}: instance {i} took {:?}",
                at - crashed_at
            );
        }
    }
}

#[test]
fn a_goodbye_is_seen_by_everyone_within_one_hop() {
    let n = 10;
    let mut sim = Sim::new(n, LAN, 9);
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(30));
    let closed_at = sim.now;
    sim.instances[5].as_mut().unwrap().close(sim.base + sim.now);
    sim.flush(5);
    sim.run_until(closed_at + Duration::from_millis(1));
    let departures = sim.departures_of(5);
    assert_eq!(departures.len(), n - 1);
    assert!(departures.iter().all(|(_, _, r)| *r == LeftReason::Goodbye));
}

#[test]
fn a_restarted_peer_replaces_its_old_incarnation_without_leaving() {
    let n = 5;
    let mut sim = Sim::new(n, LAN, 4);
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(30));
    // An announcement of the old incarnation, to be delivered late.
    let late = first_packet(Config {
        id: 2,
        incarnation: 1,
        namespace: "sim".into(),
        payload: vec![2],
        reply_port: sim.addrs[2].port(),
        ..Config::default()
    });
    sim.crash(2);
    sim.start_as(2, 2, 2);
    sim.run_until(Duration::from_secs(31));
    for i in [0, 1, 3, 4] {
        let p = sim.instances[i].as_mut().unwrap();
        assert_eq!(p.peer(2).unwrap().incarnation, 2, "instance {i}");
        let from = sim.addrs[2];
        assert!(p.handle_datagram(sim.base + sim.now, from, &late).is_err());
        assert_eq!(
            p.peer(2).unwrap().incarnation,
            2,
            "a late old packet changed instance {i}"
        );
        let restarted = sim.log[i].iter().any(
            |(_, e)| matches!(e, Change::Updated(info) if info.id == 2 && info.incarnation == 2),
        );
        assert!(restarted, "instance {i} saw no update");
    }
    assert!(
        sim.departures_of(2).is_empty(),
        "a restart is not a departure"
    );
}

#[test]
fn two_live_instances_claiming_one_id_are_reported_as_a_conflict() {
    let n = 6;
    let mut sim = Sim::new(n, LAN, 8);
    for i in 0..n - 1 {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(5));
    // Slot 5 claims id 1, which slot 1 holds, with a newer incarnation.
    sim.start_as(n - 1, 1, 2);
    sim.run_until(Duration::from_secs(60));
    let reported = |i: usize| {
        sim.log[i]
            .iter()
            .any(|(_, e)| matches!(e, Change::Conflict { id: 1, .. }))
    };
    assert!(
        reported(1),
        "the original holder must learn of the conflict"
    );
    for i in [0, 2, 3, 4] {
        assert!(reported(i), "instance {i} saw no conflict");
    }
}

#[test]
fn idle_instances_on_the_quiet_preset_send_at_most_two_datagrams_a_minute_each() {
    let n = 20;
    let mut sim = Sim::new(n, LAN, 3);
    sim.schedule = Schedule::quiet();
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(300));
    let before: u64 = sim.sent.iter().sum();
    sim.run_until(Duration::from_secs(300 + 1800));
    let per_minute = (sim.sent.iter().sum::<u64>() - before) as f64 / n as f64 / 30.0;
    // One announcement every 30 s ± 20%: 2 a minute on average, and a
    // 30-minute window of jittered gaps lands within a few percent of it.
    assert!(
        per_minute <= 2.0 * 1.03,
        "{per_minute} datagrams per instance per minute"
    );
    assert!(per_minute >= 1.9, "{per_minute}: announcements stopped?");
}

/// Random and mutated datagrams fed straight into the state machine never
/// panic it, never make a peer of a sender that did not prove its address,
/// and leave it working: a real peer still joins afterwards.
#[test]
fn hostile_datagrams_never_panic_the_state_machine_or_invent_peers() {
    let mut sim = Sim::new(2, LAN, 77);
    sim.start(0);
    let valid = first_packet(Config {
        id: 1,
        incarnation: 1,
        namespace: "sim".into(),
        payload: vec![1, 2, 3],
        seed: 1,
        reply_port: 40_000,
        ..Config::default()
    });
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let from: SocketAddr = "127.9.9.9:40000".parse().unwrap();
    let p = sim.instances[0].as_mut().unwrap();
    for _ in 0..100_000 {
        let mut bytes = valid.clone();
        for _ in 0..=(next() % 4) {
            let at = (next() as usize) % bytes.len();
            bytes[at] = next() as u8;
        }
        let _ = p.handle_datagram(sim.base, from, &bytes);
    }
    assert_eq!(p.stats().datagrams_received, 100_000);
    // The forger never proves it receives at 127.9.9.9, so nothing it says
    // makes anyone a peer, however valid the packet.
    assert_eq!(p.peer_count(), 0);
    sim.start(1);
    sim.run_until(Duration::from_secs(1));
    assert!(sim.instances[0].as_ref().unwrap().peer(1).is_some());
}

/// An instance frozen for twice the TTL (SIGSTOP, a paused VM) wakes to an
/// overdue timer *before* it reads what queued up meanwhile, the worst
/// order. It must probe before evicting, so no live peer leaves.
#[test]
fn an_instance_stalled_past_the_ttl_does_not_evict_live_peers_on_waking() {
    let n = 5;
    let ttl = Schedule::default().ttl;
    let mut sim = Sim::new(n, LAN, 21);
    for i in 0..n {
        sim.start(i);
    }
    sim.run_until(Duration::from_secs(60));
    // Freeze instance 0: it neither runs timers nor reads datagrams.
    let frozen = sim.instances[0].take().unwrap();
    let resume_at = sim.now + ttl * 2;
    sim.run_until(resume_at);
    // Wake: the overdue timer first, then the world goes on (its peers
    // answer its probes).
    sim.instances[0] = Some(frozen);
    sim.instances[0]
        .as_mut()
        .unwrap()
        .handle_timeout(sim.base + sim.now);
    sim.flush(0);
    sim.run_until(resume_at + ttl);
    let evictions: Vec<_> = sim.log[0]
        .iter()
        .filter(|(at, e)| *at >= resume_at && matches!(e, Change::Left { .. }))
        .collect();
    assert!(
        evictions.is_empty(),
        "evicted live peers on waking: {evictions:?}"
    );
    assert_eq!(sim.instances[0].as_ref().unwrap().peer_count(), n - 1);
}
