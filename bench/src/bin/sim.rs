//! cohort at scales this machine cannot run as processes: the sans-IO core
//! (`cohort::protocol::Protocol`) in a deterministic in-memory network with
//! virtual time (adapted from the crate's `tests/sim.rs`, with a timer heap
//! so a step costs O(log N) instead of O(N)).
//!
//! ```text
//! sim --n 1000 [--seed 1] [--out results.tsv]
//! ```
//!
//! One run: N instances start together; run to convergence; settle to
//! t = 120 s; measure steady state over 180 s; then one newcomer joins and
//! everything it causes in the next 10 s is counted. Opens no sockets.
//!
//! Counted: datagrams *sent* (one per multicast or unicast send) and
//! *deliveries* (one per receiving instance: a multicast to N is N).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use cohort::protocol::{Config, Destination, Event, Mode, Protocol, Schedule};
use cohort::wire::{self, Kind};

const MIN_LATENCY: Duration = Duration::from_micros(50);
const MAX_LATENCY: Duration = Duration::from_micros(500);

#[derive(Default, Clone, Copy, Debug)]
struct Counts {
    sent: u64,
    sent_bytes: u64,
    multicast: u64,
    unicast: u64,
    replies: u64,
    probes: u64,
    deliveries: u64,
}

struct Flight {
    at: Duration,
    seq: u64,
    to: usize,
    from: usize,
    bytes: Rc<Vec<u8>>,
}

impl PartialEq for Flight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Flight {}
impl PartialOrd for Flight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Flight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct Sim {
    base: Instant,
    now: Duration,
    rng: u64,
    instances: Vec<Protocol>,
    addrs: Vec<SocketAddr>,
    by_addr: HashMap<SocketAddr, usize>,
    known: Vec<usize>,
    timers: BinaryHeap<Reverse<(Duration, usize)>>,
    deadline: Vec<Option<Duration>>,
    in_flight: BinaryHeap<Reverse<Flight>>,
    seq: u64,
    counts: Counts,
    /// Unicasts addressed to instance `watch`, if set.
    watch: Option<usize>,
    to_watch: u64,
    /// How many instances know exactly `target` others.
    full: usize,
    target: usize,
}

impl Sim {
    fn new(capacity: usize, seed: u64) -> Sim {
        let addrs: Vec<SocketAddr> = (0..capacity)
            .map(|i| {
                let ip = Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
                SocketAddr::new(IpAddr::V4(ip), 40_000)
            })
            .collect();
        Sim {
            base: Instant::now(),
            now: Duration::ZERO,
            rng: seed,
            instances: Vec::with_capacity(capacity),
            by_addr: addrs.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            addrs,
            known: Vec::with_capacity(capacity),
            timers: BinaryHeap::new(),
            deadline: Vec::with_capacity(capacity),
            in_flight: BinaryHeap::new(),
            seq: 0,
            counts: Counts::default(),
            watch: None,
            to_watch: 0,
            full: 0,
            target: usize::MAX,
        }
    }

    fn random(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn start(&mut self) -> usize {
        let i = self.instances.len();
        let config = Config {
            id: i as u64 + 1,
            incarnation: 1,
            namespace: "sim".into(),
            payload: postcard_u16(9000),
            schedule: Schedule::default(),
            seed: self.rng ^ (i as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D),
            mode: Mode::Announce,
            reply_port: self.addrs[i].port(),
            process: None,
        };
        self.instances
            .push(Protocol::new(config, self.base + self.now));
        self.known.push(0);
        self.deadline.push(None);
        self.flush(i);
        i
    }

    fn flush(&mut self, i: usize) {
        let mut transmits = Vec::new();
        {
            let p = &mut self.instances[i];
            while let Some(t) = p.poll_transmit() {
                transmits.push(t);
            }
            let was_full = self.known[i] == self.target;
            while let Some(event) = p.poll_event() {
                match event {
                    Event::Joined { .. } => self.known[i] += 1,
                    Event::Left { .. } => self.known[i] -= 1,
                    _ => {}
                }
            }
            let is_full = self.known[i] == self.target;
            if is_full && !was_full {
                self.full += 1;
            } else if was_full && !is_full {
                self.full -= 1;
            }
        }
        let n = self.instances.len();
        for t in transmits {
            self.counts.sent += 1;
            self.counts.sent_bytes += t.contents.len() as u64;
            if let Ok(packet) = wire::decode(&t.contents) {
                match packet.kind {
                    Kind::Reply => self.counts.replies += 1,
                    Kind::Query => self.counts.probes += 1,
                    _ => {}
                }
            }
            let bytes = Rc::new(t.contents);
            match t.destination {
                Destination::Group => {
                    self.counts.multicast += 1;
                    for to in 0..n {
                        self.deliver(i, to, &bytes);
                    }
                }
                Destination::Unicast(addr) => {
                    self.counts.unicast += 1;
                    if let Some(&to) = self.by_addr.get(&addr) {
                        if self.watch == Some(to) {
                            self.to_watch += 1;
                        }
                        self.deliver(i, to, &bytes);
                    }
                }
            }
        }
        if let Some(at) = self.instances[i].poll_timeout() {
            let at = at - self.base;
            if self.deadline[i] != Some(at) {
                self.deadline[i] = Some(at);
                self.timers.push(Reverse((at, i)));
            }
        } else {
            self.deadline[i] = None;
        }
    }

    fn deliver(&mut self, from: usize, to: usize, bytes: &Rc<Vec<u8>>) {
        let spread = (MAX_LATENCY - MIN_LATENCY).as_secs_f64();
        let at = self.now + MIN_LATENCY + Duration::from_secs_f64(spread * self.random());
        self.seq += 1;
        self.in_flight.push(Reverse(Flight {
            at,
            seq: self.seq,
            to,
            from,
            bytes: Rc::clone(bytes),
        }));
    }

    /// The next valid timer, dropping stale heap entries.
    fn next_timer(&mut self) -> Option<(Duration, usize)> {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if self.deadline[i] == Some(at) {
                return Some((at, i));
            }
            self.timers.pop();
        }
        None
    }

    fn step(&mut self, until: Duration) -> bool {
        let next_delivery = self.in_flight.peek().map(|Reverse(f)| f.at);
        let next_timer = self.next_timer();
        let timer_first = match (next_delivery, next_timer) {
            (None, None) => return false,
            (Some(d), Some((t, _))) => t < d,
            (None, Some(_)) => true,
            (Some(_), None) => false,
        };
        if timer_first {
            let (at, i) = next_timer.expect("timer");
            if at > until {
                return false;
            }
            self.timers.pop();
            self.deadline[i] = None;
            self.now = at;
            self.instances[i].handle_timeout(self.base + at);
            self.flush(i);
        } else {
            let at = next_delivery.expect("delivery");
            if at > until {
                return false;
            }
            let Reverse(f) = self.in_flight.pop().expect("delivery");
            self.now = at;
            self.counts.deliveries += 1;
            let from = self.addrs[f.from];
            let _ = self.instances[f.to].handle_datagram(self.base + at, from, &f.bytes);
            self.flush(f.to);
        }
        true
    }

    /// From now on, count the instances that know `target` others.
    fn set_target(&mut self, target: usize) {
        self.target = target;
        self.full = self.known.iter().filter(|&&k| k == target).count();
    }

    fn run_until(&mut self, until: Duration) {
        while self.step(until) {}
        self.now = until;
    }
}

/// A u16 service port as postcard encodes it (varint), as the chart would.
fn postcard_u16(port: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let mut v = port;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |key: &str, default: &str| {
        args.iter()
            .position(|a| a == key)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_owned())
    };
    let n: usize = opt("--n", "1000").parse().expect("--n");
    let seed: u64 = opt("--seed", "1").parse().expect("--seed");
    let out_path = opt("--out", "");
    let wall = Instant::now();
    let mut sim = Sim::new(n + 1, seed);
    sim.set_target(n - 1);
    for _ in 0..n {
        sim.start();
    }
    // Convergence of N started together, in virtual time.
    let mut converged_at = None;
    while sim.step(Duration::from_secs(120)) {
        if converged_at.is_none() && sim.full == n {
            converged_at = Some(sim.now);
            break;
        }
    }
    sim.run_until(Duration::from_secs(120));
    let startup = sim.counts;
    // Steady state over 3 virtual minutes.
    let before = sim.counts;
    let window = Duration::from_secs(180);
    sim.run_until(Duration::from_secs(120) + window);
    let after = sim.counts;
    let minutes = window.as_secs_f64() / 60.0;
    let per_inst_min = |a: u64, b: u64| (b - a) as f64 / n as f64 / minutes;
    // One newcomer.
    let join_from = sim.counts;
    let t_join = sim.now;
    sim.watch = Some(n);
    sim.set_target(n);
    let newcomer = sim.start();
    let mut learned_at = None;
    let join_end = t_join + Duration::from_secs(10);
    while sim.step(join_end) {
        if learned_at.is_none() && sim.full == n + 1 {
            learned_at = Some(sim.now - t_join);
        }
    }
    sim.run_until(join_end);
    let join = sim.counts;
    let newcomer_sent = sim.instances[newcomer].stats().packets_sent;
    // Expected steady traffic in the same 10 s, to subtract.
    let steady_sent_10s = (after.sent - before.sent) as f64 / window.as_secs_f64() * 10.0;
    let steady_deliv_10s =
        (after.deliveries - before.deliveries) as f64 / window.as_secs_f64() * 10.0;

    let rows = vec![
        (
            "converge_ms",
            converged_at.map_or("none".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
        ),
        ("startup_120s_sent", startup.sent.to_string()),
        ("startup_120s_replies", startup.replies.to_string()),
        ("startup_120s_deliveries", startup.deliveries.to_string()),
        (
            "steady_sent_per_inst_min",
            format!("{:.2}", per_inst_min(before.sent, after.sent)),
        ),
        (
            "steady_bytes_per_inst_min",
            format!("{:.1}", per_inst_min(before.sent_bytes, after.sent_bytes)),
        ),
        (
            "steady_deliveries_per_inst_min",
            format!("{:.1}", per_inst_min(before.deliveries, after.deliveries)),
        ),
        (
            "steady_replies_per_min_total",
            format!("{:.1}", (after.replies - before.replies) as f64 / minutes),
        ),
        (
            "steady_probes_per_min_total",
            format!("{:.1}", (after.probes - before.probes) as f64 / minutes),
        ),
        ("join_newcomer_sent", newcomer_sent.to_string()),
        ("join_unicasts_to_newcomer", sim.to_watch.to_string()),
        (
            "join_sent_total_10s",
            (join.sent - join_from.sent).to_string(),
        ),
        (
            "join_sent_above_steady_10s",
            format!(
                "{:.0}",
                (join.sent - join_from.sent) as f64 - steady_sent_10s
            ),
        ),
        (
            "join_deliveries_above_steady_10s",
            format!(
                "{:.0}",
                (join.deliveries - join_from.deliveries) as f64 - steady_deliv_10s
            ),
        ),
        (
            "join_all_know_ms",
            learned_at.map_or("none".into(), |d| format!("{:.3}", d.as_secs_f64() * 1e3)),
        ),
        ("wall_s", format!("{:.1}", wall.elapsed().as_secs_f64())),
        ("peak_rss_mb", format!("{:.0}", vm_hwm_mb())),
    ];
    let mut out = if out_path.is_empty() {
        None
    } else {
        Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&out_path)
                .expect("open --out"),
        )
    };
    for (key, value) in rows {
        let line = format!("sim\tcohort\t{key}\t{n}\t{value}\n");
        print!("{line}");
        if let Some(f) = out.as_mut() {
            f.write_all(line.as_bytes()).expect("write");
        }
    }
}
