//! Flood benchmark (issue 9): five instances on one host take 50,000
//! forged datagrams a second for 30 s of each kind, while a newcomer joins.
//! Run it inside a private network namespace (it needs root there, for the
//! raw socket that forges source addresses; nothing leaves the namespace):
//!
//! ```text
//! cargo bench --bench flood --no-run
//! scripts/isolated cargo bench --bench flood --offline
//! ```
//!
//! Kinds: random bytes; announcements with random ids; replays of captured
//! packets (of a peer that has left, and of live ones); announcements with
//! random ids carrying a live instance's process tag. Every forged datagram
//! has a random source address in 10.0.0.0/8 (the replays keep theirs).
//! For each phase it reports, over the five instances: peak RSS (VmHWM,
//! since start), RSS after the phase, open fds, CPU per second of flood,
//! chart sizes, and the time from starting a newcomer process until it and
//! all five know each other (compared with the same join without a flood).
//! `COHORT_FLOOD_SECONDS` shortens the phases.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::{child_runtime, cpu_ns, loopback_chart, wall_ns};

use cohort::wire::{self, Info, Message, Packet, ProcessTag};
use cohort::{Event, discovery};

const PORT: u16 = 47980;
const N: usize = 5;
const RATE: u64 = 50_000;

fn main() {
    if let Ok(namespace) = std::env::var("COHORT_BENCH_CHILD") {
        child(&namespace);
        return;
    }
    let seconds: u64 = std::env::var("COHORT_FLOOD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let phase = Duration::from_secs(seconds);
    let namespace = format!("flood-{}", std::process::id());
    let listener = group_listener();
    let mut group = Group::new(&namespace);
    for _ in 0..N {
        group.spawn(N);
    }
    group.wait_ready(N);
    let (baseline, departed) = group.newcomer(&listener);
    println!(
        "newcomer without a flood: all six know each other {:.2} ms after its start",
        ms(baseline)
    );
    let live = capture(&listener, 20);
    let tag = live.iter().find_map(|b| match wire::decode(b) {
        Ok(Packet {
            message: Message::Announce { info, .. },
            ..
        }) => info.process,
        _ => None,
    });
    println!(
        "{:<30} {:>10} {:>10} {:>5} {:>10} {:>10} {:>12}  {:>9} {:>12}",
        "flood (50,000/s)",
        "peak RSS",
        "RSS after",
        "fds",
        "CPU ms/s",
        "charts",
        "newcomer",
        "dgrams in",
        "bytes out"
    );
    let kinds: [(&str, Kind); 4] = [
        ("random bytes", Kind::Garbage),
        ("announces, random ids", Kind::RandomIds),
        ("replays of captured packets", Kind::Replays),
        ("forged process tags", Kind::Tags),
    ];
    for (name, kind) in kinds {
        let (_, sent_before, received_before) = group.sizes();
        let cpu_before: u64 = group.pids().iter().map(|&p| cpu_ns(p)).sum();
        let attack = {
            let (namespace, departed, live) = (namespace.clone(), departed.clone(), live.clone());
            std::thread::spawn(move || flood(kind, &namespace, &departed, &live, tag, phase))
        };
        std::thread::sleep(phase / 3);
        let (joined, _) = group.newcomer(&listener);
        let sent = attack.join().unwrap();
        let cpu_after: u64 = group.pids().iter().map(|&p| cpu_ns(p)).sum();
        let (hwm, rss, fds) = group.memory();
        let (sizes, sent_after, received_after) = group.sizes();
        println!(
            "{:<30} {:>7} kB {:>7} kB {:>5} {:>10.1} {:>10} {:>9.2} ms  {:>9} {:>12}",
            name,
            hwm,
            rss,
            fds,
            (cpu_after - cpu_before) as f64 / 1e6 / N as f64 / phase.as_secs_f64(),
            sizes,
            ms(joined),
            received_after - received_before,
            sent_after - sent_before,
        );
        let _ = sent;
    }
    drop(group);
}

#[derive(Clone, Copy)]
enum Kind {
    Garbage,
    RandomIds,
    Replays,
    Tags,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Sends forged datagrams at `RATE` for `phase`; returns how many.
fn flood(
    kind: Kind,
    namespace: &str,
    departed: &[Vec<u8>],
    live: &[Vec<u8>],
    tag: Option<ProcessTag>,
    phase: Duration,
) -> u64 {
    let raw = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::RAW,
        Some(socket2::Protocol::from(255)), // IPPROTO_RAW: we write the IP header
    )
    .expect("a raw socket (run as root in the namespace)");
    raw.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    let group = SocketAddr::from((cohort::builder::DEFAULT_GROUP, 0));
    let mut rng = Rng(0xF100D ^ wall_ns() as u64);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut datagram = Vec::with_capacity(1500);
    while start.elapsed() < phase {
        // Keep to the rate in batches of 500.
        let due = (start.elapsed().as_secs_f64() * RATE as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        for _ in 0..500 {
            let r = rng.next();
            let source = SocketAddr::from((
                [10, (r >> 8) as u8, (r >> 16) as u8, (r >> 24) as u8],
                (r >> 32) as u16 | 1024,
            ));
            let payload: Vec<u8>;
            let (from, body): (SocketAddr, &[u8]) = match kind {
                Kind::Garbage => {
                    payload = (0..(20 + r % 80)).map(|_| rng.next() as u8).collect();
                    (source, &payload)
                }
                Kind::RandomIds | Kind::Tags => {
                    let process = if matches!(kind, Kind::Tags) {
                        tag
                    } else {
                        None
                    };
                    payload = wire::encode(&Packet {
                        namespace,
                        sender: rng.next(),
                        incarnation: wall_ns() as u64 / 1000,
                        seq: 0,
                        sent_ms: 0,
                        reply_port: source.port(),
                        cookie: None,
                        echo: None,
                        message: Message::Announce {
                            info: Info {
                                ttl_ms: u32::MAX,
                                process,
                                commitment: [0; 16],
                                payload: &[1, 0],
                            },
                            want_reply: true,
                            known: &[],
                        },
                        pad: &[],
                    });
                    (source, &payload)
                }
                Kind::Replays => {
                    let pool = if r.is_multiple_of(2) && !departed.is_empty() {
                        departed
                    } else {
                        live
                    };
                    let captured = &pool[(r >> 40) as usize % pool.len()];
                    // Replayed from where the real instance sent it.
                    (
                        SocketAddr::from(([127, 0, 0, 1], (r >> 1) as u16 | 1024)),
                        captured,
                    )
                }
            };
            ip_udp(&mut datagram, from, PORT, body);
            let _ = raw.send_to(&datagram, &group.into());
            sent += 1;
        }
    }
    sent
}

/// An IPv4 + UDP datagram from `from` to the group. The kernel fills in the
/// IP checksum and total length; a UDP checksum of 0 means none (IPv4).
fn ip_udp(out: &mut Vec<u8>, from: SocketAddr, port: u16, body: &[u8]) {
    let SocketAddr::V4(from) = from else {
        unreachable!()
    };
    out.clear();
    let total = 20 + 8 + body.len();
    out.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0,
        0,
        1,
        17,
        0,
        0,
    ]);
    out.extend_from_slice(&from.ip().octets());
    out.extend_from_slice(&cohort::builder::DEFAULT_GROUP.octets());
    let udp_len = 8 + body.len();
    out.extend_from_slice(&from.port().to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&(udp_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(body);
}

/// A socket on the group, to capture what the instances send.
fn group_listener() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(true).unwrap();
    s.bind(&SocketAddr::from((cohort::builder::DEFAULT_GROUP, PORT)).into())
        .unwrap();
    s.join_multicast_v4(&cohort::builder::DEFAULT_GROUP, &Ipv4Addr::LOCALHOST)
        .unwrap();
    s.set_nonblocking(true).unwrap();
    s.into()
}

/// Up to `n` datagrams that arrived on the group.
fn capture(listener: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    let mut buf = [0u8; 9000];
    let mut out = Vec::new();
    while out.len() < n {
        match listener.recv(&mut buf) {
            Ok(len) => out.push(buf[..len].to_vec()),
            Err(_) => break,
        }
    }
    out
}

struct Group {
    namespace: String,
    children: Vec<(u64, Child, ChildStdin)>,
    lines: mpsc::Receiver<(usize, String)>,
    tx: mpsc::Sender<(usize, String)>,
}

impl Group {
    fn new(namespace: &str) -> Group {
        let (tx, lines) = mpsc::channel();
        Group {
            namespace: namespace.to_owned(),
            children: Vec::new(),
            lines,
            tx,
        }
    }

    /// Starts an instance that says `ready` once its chart holds `want`.
    fn spawn(&mut self, want: usize) -> usize {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .env("COHORT_BENCH_CHILD", &self.namespace)
            .env("COHORT_BENCH_WANT", want.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let i = self.children.len();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                let _ = tx.send((i, line));
            }
        });
        let id = loop {
            let (who, line) = self.lines.recv_timeout(Duration::from_secs(30)).unwrap();
            if who == i
                && let Some(id) = line.strip_prefix("id ")
            {
                break id.parse().unwrap();
            }
        };
        self.children.push((id, child, stdin));
        i
    }

    fn wait_ready(&self, n: usize) {
        let mut ready = 0;
        while ready < n {
            let (_, line) = self.lines.recv_timeout(Duration::from_secs(60)).unwrap();
            ready += usize::from(line == "ready");
        }
    }

    /// Starts a newcomer, times until it and the first N instances all know
    /// each other, then stops it gracefully. Returns the time and what the
    /// listener captured of it (for replays).
    fn newcomer(&mut self, listener: &UdpSocket) -> (Duration, Vec<Vec<u8>>) {
        let _ = capture(listener, 100_000);
        let start = Instant::now();
        let i = self.spawn(N + 1);
        let newcomer_id = self.children[i].0;
        let mut knows = [false; N + 1];
        while knows.iter().any(|k| !k) {
            let (who, line) = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .expect("the newcomer never met everyone");
            if who == i && line == "ready" {
                knows[N] = true;
            }
            if who < N && line == format!("joined {newcomer_id}") {
                knows[who] = true;
            }
        }
        let took = start.elapsed();
        let captured = capture(listener, 1000);
        let (_, mut child, stdin) = self.children.pop().unwrap();
        drop(stdin);
        let _ = child.wait();
        let own: Vec<Vec<u8>> = captured
            .into_iter()
            .filter(|b| wire::decode(b).is_ok_and(|p| p.sender == newcomer_id))
            .collect();
        (took, own)
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(_, c, _)| c.id()).collect()
    }

    /// Largest peak RSS, largest RSS, largest fd count, over the instances.
    fn memory(&self) -> (u64, u64, usize) {
        let mut out = (0, 0, 0);
        for pid in self.pids() {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .count();
            out.0 = out.0.max(field("VmHWM:"));
            out.1 = out.1.max(field("VmRSS:"));
            out.2 = out.2.max(fds);
        }
        out
    }

    /// The chart sizes of the instances, e.g. "5/5/5/5/5", the bytes they
    /// sent in all, and the datagrams they received in all.
    fn sizes(&mut self) -> (String, u64, u64) {
        let mut sizes = Vec::new();
        let (mut sent, mut received) = (0, 0);
        for i in 0..self.children.len() {
            writeln!(self.children[i].2, "size").unwrap();
            loop {
                let (who, line) = self.lines.recv_timeout(Duration::from_secs(30)).unwrap();
                if who == i
                    && let Some(rest) = line.strip_prefix("size ")
                {
                    let fields: Vec<&str> = rest.split(' ').collect();
                    sizes.push(fields[0].to_owned());
                    sent += fields[1].parse::<u64>().unwrap();
                    received += fields[2].parse::<u64>().unwrap();
                    break;
                }
            }
        }
        (sizes.join("/"), sent, received)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An instance: prints `id <id>`, `joined <id>` for each join, `ready` once
/// its chart holds `COHORT_BENCH_WANT` (itself included), `size <n>` when
/// asked on stdin; leaves at end of input.
fn child(namespace: &str) {
    child_runtime().block_on(async {
        let want: usize = std::env::var("COHORT_BENCH_WANT").unwrap().parse().unwrap();
        let chart = loopback_chart(PORT, namespace);
        println!("id {}", chart.our_id());
        let mut events = chart.subscribe();
        let discovery = discovery::spawn(&chart).unwrap();
        let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut announced_ready = false;
        loop {
            tokio::select! {
                event = events.recv() => {
                    if let Ok(Event::Joined(entry)) = event {
                        println!("joined {}", entry.id);
                    }
                    if !announced_ready && chart.size() >= want {
                        announced_ready = true;
                        println!("ready");
                    }
                }
                line = lines.recv() => match line {
                    Some(_) => {
                        let io = chart.stats().io;
                        println!("size {} {} {}", chart.size(), io.bytes_sent, io.datagrams_received);
                    }
                    None => break,
                },
            }
        }
        let _ = discovery.shutdown().await;
    });
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
