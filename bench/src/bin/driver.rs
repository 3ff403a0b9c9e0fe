//! Runs the real-process scenarios and appends raw results to a TSV file.
//!
//! It opens sockets only in `resilience` (to send the garbage set) and only
//! ever starts `node` processes; run it inside a private network namespace
//! (`scripts/isolated`), as `bench/run.sh` does. For the simulated LAN it
//! starts each node through a prefix command (`scripts/lan.sh exec ...`).
//!
//! ```text
//! driver converge   --out F [--sizes 2,10,50,100] [--runs 5] [--timeout 30]
//! driver idle       --out F --lib L --round R [--n 10] [--settle 30] [--window 60]
//! driver resilience --out F [--runs 3]
//! driver lan        --out F --hosts H --lan SCRIPT --run RUN [--runs 3] [--timeout 30]
//! driver lan-depart --out F --lib L --round R --first F --hosts H --lan SCRIPT --run RUN
//! ```
//!
//! Each TSV line: `scenario  library  key  run  value` where value is a
//! number or a word (`never`, `panic`, ...).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LIBS: [&str; 3] = ["cohort", "instance-chart", "mdns-sd"];

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

struct Args(HashMap<String, String>);

impl Args {
    fn parse(rest: &[String]) -> Args {
        let mut map = HashMap::new();
        for pair in rest.chunks(2) {
            let key = pair[0].trim_start_matches("--").to_owned();
            map.insert(key, pair.get(1).cloned().unwrap_or_default());
        }
        Args(map)
    }
    fn get(&self, key: &str, default: &str) -> String {
        self.0
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }
    fn num(&self, key: &str, default: u64) -> u64 {
        self.get(key, &default.to_string())
            .parse()
            .expect("numeric option")
    }
}

struct Out(std::fs::File);

impl Out {
    fn open(path: &str) -> Out {
        Out(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open results file"))
    }
    fn row(&mut self, scenario: &str, lib: &str, key: &str, run: u64, value: &str) {
        let line = format!("{scenario}\t{lib}\t{key}\t{run}\t{value}\n");
        print!("{line}");
        let _ = std::io::stdout().flush();
        self.0.write_all(line.as_bytes()).expect("write results");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(cmd) = args.get(1) else {
        eprintln!("usage: driver <converge|idle|resilience|lan> --out FILE ...");
        std::process::exit(2);
    };
    let opts = Args::parse(&args[2..]);
    let mut out = Out::open(&opts.get("out", "results.tsv"));
    match cmd.as_str() {
        "converge" => converge(&opts, &mut out),
        "idle" => idle(&opts, &mut out),
        "resilience" => resilience(&opts, &mut out),
        "lan" => lan(&opts, &mut out),
        "lan-depart" => lan_depart(&opts, &mut out),
        other => {
            eprintln!("unknown scenario {other}");
            std::process::exit(2);
        }
    }
}

/// The `node` binary next to this one.
fn node_bin() -> PathBuf {
    std::env::current_exe()
        .expect("current exe")
        .with_file_name("node")
}

/// A line from child `index`, as printed.
type Line = (usize, String);

struct Group {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    ids: Vec<String>,
    starts: Vec<Option<u128>>,
    alls: Vec<Option<u128>>,
    known: Vec<usize>,
    /// (observer, departed id, ns)
    lefts: Vec<(usize, String, u128)>,
    ended: Vec<Option<String>>,
    rx: mpsc::Receiver<Line>,
    tx: mpsc::Sender<Line>,
}

impl Group {
    fn new() -> Group {
        let (tx, rx) = mpsc::channel();
        Group {
            children: Vec::new(),
            stdins: Vec::new(),
            ids: Vec::new(),
            starts: Vec::new(),
            alls: Vec::new(),
            known: Vec::new(),
            lefts: Vec::new(),
            ended: Vec::new(),
            rx,
            tx,
        }
    }

    /// Starts one node; `prefix` runs it elsewhere (e.g. on a LAN host).
    fn spawn(&mut self, prefix: &[String], lib: &str, n: usize, tag: &str, iface: &str) -> usize {
        let index = self.children.len();
        let node = node_bin();
        let mut command = if prefix.is_empty() {
            Command::new(&node)
        } else {
            let mut c = Command::new(&prefix[0]);
            c.args(&prefix[1..]).arg(&node);
            c
        };
        let mut child = command
            .args([lib, &n.to_string(), tag, iface])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn node");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send((index, line)).is_err() {
                    break;
                }
            }
        });
        self.stdins.push(child.stdin.take());
        self.children.push(child);
        self.ids.push(String::new());
        self.starts.push(None);
        self.alls.push(None);
        self.known.push(0);
        self.ended.push(None);
        index
    }

    fn absorb(&mut self, (i, line): Line) {
        let mut words = line.split(' ');
        let what = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        let ns = |s: &str| s.parse::<u128>().ok();
        match (what, rest.as_slice()) {
            ("id", [id]) => self.ids[i] = (*id).to_owned(),
            ("start", [t]) => self.starts[i] = ns(t),
            ("all", [t]) => self.alls[i] = ns(t),
            ("known", [k, _]) => self.known[i] = k.parse().unwrap_or(0),
            ("left", [id, t]) => {
                if let Some(t) = ns(t) {
                    self.lefts.push((i, (*id).to_owned(), t));
                }
            }
            ("ended", _) => self.ended[i] = Some(rest.join(" ")),
            _ => {}
        }
    }

    /// Absorbs lines until `done(self)` or `deadline`; returns whether done.
    fn wait_until(&mut self, deadline: Instant, done: impl Fn(&Group) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => self.absorb(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return done(self),
            }
        }
    }

    /// Absorbs whatever has arrived, without waiting.
    fn drain(&mut self) {
        while let Ok(line) = self.rx.try_recv() {
            self.absorb(line);
        }
    }

    /// Asks one node to leave gracefully.
    fn quit(&mut self, i: usize) {
        if let Some(mut stdin) = self.stdins[i].take() {
            let _ = writeln!(stdin, "quit");
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.children[i].id()
    }

    /// Graceful stop of every node, SIGKILL after 5 s.
    fn stop(mut self) {
        for i in 0..self.children.len() {
            self.quit(i);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

fn rotated(run: u64) -> Vec<&'static str> {
    let k = (run as usize) % LIBS.len();
    LIBS[k..].iter().chain(&LIBS[..k]).copied().collect()
}

fn tag(prefix: &str, run: u64, lib: &str) -> String {
    // Short: mdns-sd service types allow at most 15 characters.
    format!("{prefix}{run}{}", &lib[..1])
}

fn converge(opts: &Args, out: &mut Out) {
    let sizes: Vec<usize> = opts
        .get("sizes", "2,10,50,100")
        .split(',')
        .map(|s| s.parse().expect("size"))
        .collect();
    let runs = opts.num("runs", 5);
    let timeout = Duration::from_secs(opts.num("timeout", 30));
    for &n in &sizes {
        for run in 0..runs {
            for lib in rotated(run) {
                let value = converge_once(
                    &[],
                    lib,
                    n,
                    &tag(&format!("c{n}x"), run, lib),
                    timeout,
                    |_| "127.0.0.1".to_owned(),
                );
                out.row("converge", lib, &n.to_string(), run, &value);
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Starts `n` nodes at once; milliseconds from the last start until every
/// node knew all others, or `timeout:<how many knew all>`.
fn converge_once(
    prefix_of: &[Vec<String>],
    lib: &str,
    n: usize,
    tag: &str,
    timeout: Duration,
    iface_of: impl Fn(usize) -> String,
) -> String {
    let mut group = Group::new();
    for i in 0..n {
        let prefix = prefix_of.get(i).cloned().unwrap_or_default();
        group.spawn(&prefix, lib, n, tag, &iface_of(i));
    }
    let deadline = Instant::now() + timeout;
    let ok = group.wait_until(deadline, |g| {
        g.alls.iter().all(Option::is_some) && g.starts.iter().all(Option::is_some)
    });
    // CPU time all N processes used from their start until now (all know
    // all), when they are this driver's own children (one host).
    if ok && prefix_of.is_empty() {
        let cpu: u64 = (0..n).map(|i| cpu_ns(group.pid(i))).sum();
        eprintln!("cpu\t{lib}\t{n}\t{:.3}", cpu as f64 / 1e6);
    }
    let value = if ok {
        let last_start = group.starts.iter().flatten().max().copied().unwrap_or(0);
        let last_all = group.alls.iter().flatten().max().copied().unwrap_or(0);
        format!("{:.3}", (last_all.saturating_sub(last_start)) as f64 / 1e6)
    } else {
        let done = group.alls.iter().filter(|a| a.is_some()).count();
        format!("timeout:{done}")
    };
    group.stop();
    value
}

/// UDP datagrams sent in this network namespace (IPv4 and IPv6).
fn udp_out_datagrams() -> u64 {
    let mut total = 0;
    if let Ok(snmp) = std::fs::read_to_string("/proc/net/snmp") {
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        if udp.len() == 2 {
            let keys: Vec<&str> = udp[0].split_whitespace().collect();
            let vals: Vec<&str> = udp[1].split_whitespace().collect();
            if let Some(i) = keys.iter().position(|k| *k == "OutDatagrams") {
                total += vals[i].parse::<u64>().unwrap_or(0);
            }
        }
    }
    if let Ok(snmp6) = std::fs::read_to_string("/proc/net/snmp6") {
        for line in snmp6.lines() {
            if let Some(v) = line.strip_prefix("Udp6OutDatagrams") {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// Installs an nftables counter of outgoing UDP in this namespace.
fn nft_setup() -> bool {
    let run = |args: &[&str]| {
        Command::new("nft")
            .args(args)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    run(&["add", "table", "inet", "cohortbench"])
        && run(&[
            "add",
            "chain",
            "inet",
            "cohortbench",
            "out",
            "{ type filter hook output priority 0; }",
        ])
        && run(&[
            "add",
            "rule",
            "inet",
            "cohortbench",
            "out",
            "meta",
            "l4proto",
            "udp",
            "counter",
        ])
}

/// (packets, bytes) of the nftables UDP counter; bytes are IP packet lengths.
fn nft_counter() -> Option<(u64, u64)> {
    let out = Command::new("nft")
        .args(["list", "chain", "inet", "cohortbench", "out"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "packets")?;
    let packets = words.get(at + 1)?.parse().ok()?;
    let bytes = words.get(at + 3)?.parse().ok()?;
    Some((packets, bytes))
}

/// CPU time of all threads of `pid`, nanoseconds.
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) {
                total += stat
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    total
}

/// Peak resident memory of `pid`, kB.
fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Steady state, then departures, for one library in this namespace.
fn idle(opts: &Args, out: &mut Out) {
    let lib = opts.get("lib", "cohort");
    let round = opts.num("round", 0);
    let n = opts.num("n", 10) as usize;
    let settle = Duration::from_secs(opts.num("settle", 30));
    let window = Duration::from_secs(opts.num("window", 60));
    let nft = nft_setup();
    let mut group = Group::new();
    let t = tag("i", round, &lib);
    for _ in 0..n {
        group.spawn(&[], &lib, n, &t, "127.0.0.1");
    }
    let converged = group.wait_until(Instant::now() + Duration::from_secs(60), |g| {
        g.alls.iter().all(Option::is_some)
    });
    if !converged {
        out.row("idle", &lib, "converged", round, "no");
    }
    std::thread::sleep(settle);
    let pids: Vec<u32> = (0..n).map(|i| group.pid(i)).collect();
    let sample = || {
        (
            udp_out_datagrams(),
            nft_counter(),
            pids.iter().map(|&p| cpu_ns(p)).collect::<Vec<u64>>(),
        )
    };
    let (d0, c0, cpu0) = sample();
    std::thread::sleep(window);
    let (d1, c1, cpu1) = sample();
    let minutes = window.as_secs_f64() / 60.0;
    let per = |x: u64| x as f64 / n as f64 / minutes;
    out.row(
        "steady",
        &lib,
        "datagrams",
        round,
        &format!("{:.2}", per(d1 - d0)),
    );
    if nft && let (Some((p0, b0)), Some((p1, b1))) = (c0, c1) {
        out.row(
            "steady",
            &lib,
            "nft_packets",
            round,
            &format!("{:.2}", per(p1 - p0)),
        );
        out.row(
            "steady",
            &lib,
            "ip_bytes",
            round,
            &format!("{:.1}", per(b1 - b0)),
        );
    }
    let cpu: Vec<f64> = cpu0
        .iter()
        .zip(&cpu1)
        .map(|(a, b)| (b - a) as f64 / 1e6 / minutes)
        .collect();
    out.row(
        "steady",
        &lib,
        "cpu_ms",
        round,
        &format!("{:.3}", cpu.iter().sum::<f64>() / n as f64),
    );
    let hwm: Vec<f64> = pids.iter().map(|&p| vm_hwm_kb(p) as f64).collect();
    out.row(
        "steady",
        &lib,
        "vmhwm_kb",
        round,
        &format!("{:.0}", median(hwm)),
    );

    // Departure 1: node 0 leaves gracefully; the other n-1 must see it.
    group.drain();
    let graceful = departure(&mut group, 0, Duration::from_secs(10), |g, _| g.quit(0));
    out.row("depart", &lib, "graceful", round, &graceful);
    // Departure 2: node 1 is killed with SIGKILL; the other n-2 must see it.
    let killed = departure(&mut group, 1, Duration::from_secs(60), |g, _| {
        let _ = g.children[1].kill();
    });
    out.row("depart", &lib, "sigkill", round, &killed);
    group.stop();
}

/// Milliseconds from the action until every live other node printed `left`
/// for the victim, or `never:<how many saw it>` within `bound`.
fn departure(
    group: &mut Group,
    victim: usize,
    bound: Duration,
    act: impl FnOnce(&mut Group, usize),
) -> String {
    let victim_id = group.ids[victim].clone();
    let observers: Vec<usize> = (0..group.children.len())
        .filter(|&i| i != victim && group.stdins[i].is_some())
        .collect();
    let before = group.lefts.len();
    let t0 = wall_ns();
    act(group, victim);
    let seen = |g: &Group| {
        g.lefts[before..]
            .iter()
            .filter(|(i, id, _)| *id == victim_id && observers.contains(i))
            .count()
    };
    let all = group.wait_until(Instant::now() + bound, |g| seen(g) >= observers.len());
    if all {
        let last = group.lefts[before..]
            .iter()
            .filter(|(_, id, _)| *id == victim_id)
            .map(|(_, _, t)| *t)
            .max()
            .unwrap_or(t0);
        format!("{:.3}", last.saturating_sub(t0) as f64 / 1e6)
    } else {
        format!("never:{}", seen(group))
    }
}

/// The fixed set of malformed datagrams.
fn garbage() -> Vec<Vec<u8>> {
    let mut state = 0x1234_5678_u64;
    let mut random = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let mut z = state;
                z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                (z >> 56) as u8
            })
            .collect()
    };
    let mut set = vec![
        Vec::new(),
        vec![0xff],
        random(64),
        random(1400),
        vec![0x41; 9000],
        b"hello world\n".to_vec(),
        vec![0u8; 18],
        vec![0xff; 20],
    ];
    // cohort's magic with a broken body and with an unknown version.
    let mut body = b"cht\0\x01".to_vec();
    body.extend([0xff; 20]);
    set.push(body);
    set.push(b"cht\0\x63".to_vec());
    // DNS: a response claiming 65535 answers and carrying none.
    set.push(vec![0, 0, 0x84, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]);
    // DNS: an answer whose name is a compression pointer to itself.
    set.push(vec![
        0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 10, 0, 4, 1, 2, 3, 4,
    ]);
    // DNS: a query whose label length runs past the end.
    set.push(vec![0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 63, b'a', b'b']);
    set
}

/// (group, port) each library listens on by default.
fn discovery_addr(lib: &str) -> (Ipv4Addr, u16) {
    match lib {
        "cohort" => (
            cohort::builder::DEFAULT_GROUP,
            cohort::builder::DEFAULT_PORT,
        ),
        "instance-chart" => (Ipv4Addr::new(224, 0, 0, 251), 8080),
        _ => (Ipv4Addr::new(224, 0, 0, 251), 5353),
    }
}

fn resilience(opts: &Args, out: &mut Out) {
    let runs = opts.num("runs", 3);
    let set = garbage();
    for run in 0..runs {
        for lib in rotated(run) {
            let t = tag("r", run, lib);
            let mut group = Group::new();
            for _ in 0..3 {
                group.spawn(&[], lib, 3, &t, "127.0.0.1");
            }
            let ok = group.wait_until(Instant::now() + Duration::from_secs(30), |g| {
                g.alls.iter().all(Option::is_some)
            });
            if !ok {
                out.row("resilience", lib, "outcome", run, "setup-failed");
                group.stop();
                continue;
            }
            let (grp, port) = discovery_addr(lib);
            let sock = UdpSocket::bind("127.0.0.1:0").expect("bind garbage socket");
            let _ = sock.set_multicast_loop_v4(true);
            for datagram in &set {
                for dest in [
                    SocketAddrV4::new(grp, port),
                    SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
                ] {
                    let _ = sock.send_to(datagram, dest);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_secs(2));
            group.drain();
            let dead = (0..3)
                .filter(|&i| matches!(group.children[i].try_wait(), Ok(Some(_))))
                .count();
            let ended = (0..3).filter(|&i| group.ended[i].is_some()).count();
            let panicked = (0..3)
                .filter(|&i| group.ended[i].as_deref() == Some("panic"))
                .count();
            // A newcomer: does discovery still work, both ways?
            let newcomer = group.spawn(&[], lib, 4, &t, "127.0.0.1");
            let both = group.wait_until(Instant::now() + Duration::from_secs(10), |g| {
                g.alls[newcomer].is_some() && (0..3).all(|i| g.known[i] >= 3)
            });
            group.drain();
            let newcomer_knows = group.known[newcomer];
            let old_know = (0..3).filter(|&i| group.known[i] >= 3).count();
            let outcome = if dead > 0 {
                format!("process-died:{dead}")
            } else if panicked > 0 {
                format!("task-panicked:{panicked}")
            } else if ended > 0 {
                format!("task-ended:{ended}")
            } else if both {
                "keeps-working".to_owned()
            } else {
                "degraded".to_owned()
            };
            out.row("resilience", lib, "outcome", run, &outcome);
            out.row(
                "resilience",
                lib,
                "newcomer",
                run,
                &format!("newcomer-knows:{newcomer_knows}/3,old-know-newcomer:{old_know}/3"),
            );
            group.stop();
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `INDEX -> ADDRESS` of the hosts of LAN run `lan_run`.
fn lan_hosts(script: &str, lan_run: &str) -> HashMap<usize, String> {
    let listing = Command::new(script)
        .args(["hosts", lan_run])
        .output()
        .expect("run lan script");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter_map(|l| {
            let (i, a) = l.split_once(' ')?;
            Some((i.parse().ok()?, a.trim().to_owned()))
        })
        .collect()
}

/// Departures across hosts: one node on each of hosts `first..first+H`;
/// the first host's node leaves gracefully, then every process on the
/// second host is killed with SIGKILL (`scripts/lan.sh kill`), the path a
/// crashed remote machine takes.
fn lan_depart(opts: &Args, out: &mut Out) {
    let lib = opts.get("lib", "cohort");
    let round = opts.num("round", 0);
    let first = opts.num("first", 1) as usize;
    let hosts = opts.num("hosts", 10) as usize;
    let script = opts.get("lan", "scripts/lan.sh");
    let lan_run = opts.get("run", "bench");
    let addrs = lan_hosts(&script, &lan_run);
    let mut group = Group::new();
    let t = tag("d", round, &lib);
    for h in first..first + hosts {
        let prefix = vec![
            script.clone(),
            "exec".into(),
            lan_run.clone(),
            h.to_string(),
        ];
        group.spawn(&prefix, &lib, hosts, &t, &addrs[&h]);
    }
    let converged = group.wait_until(Instant::now() + Duration::from_secs(60), |g| {
        g.alls.iter().all(Option::is_some)
    });
    if !converged {
        out.row("lan-depart", &lib, "converged", round, "no");
    }
    std::thread::sleep(Duration::from_secs(5));
    group.drain();
    let graceful = departure(&mut group, 0, Duration::from_secs(10), |g, _| g.quit(0));
    out.row("lan-depart", &lib, "graceful", round, &graceful);
    let victim_host = (first + 1).to_string();
    let killed = departure(&mut group, 1, Duration::from_secs(60), |_, _| {
        let _ = Command::new(&script)
            .args(["kill", &lan_run, &victim_host, "KILL"])
            .status();
    });
    out.row("lan-depart", &lib, "sigkill", round, &killed);
    group.stop();
}

/// Convergence on the simulated LAN (`scripts/lan.sh`, already up as run
/// `--run`): one node per host on hosts 1..=H, each started through
/// `<lan script> exec <run> <host>`, announcing on the host's address.
fn lan(opts: &Args, out: &mut Out) {
    let hosts = opts.num("hosts", 10) as usize;
    let runs = opts.num("runs", 3);
    let timeout = Duration::from_secs(opts.num("timeout", 30));
    let script = opts.get("lan", "scripts/lan.sh");
    let lan_run = opts.get("run", "bench");
    let addrs = lan_hosts(&script, &lan_run);
    assert!(
        (1..=hosts).all(|h| addrs.contains_key(&h)),
        "LAN run {lan_run} has fewer than {hosts} hosts"
    );
    let prefixes: Vec<Vec<String>> = (1..=hosts)
        .map(|h| {
            vec![
                script.clone(),
                "exec".into(),
                lan_run.clone(),
                h.to_string(),
            ]
        })
        .collect();
    for run in 0..runs {
        for lib in rotated(run) {
            let t = tag(&format!("l{hosts}x"), run, lib);
            let value = converge_once(&prefixes, lib, hosts, &t, timeout, |i| {
                addrs[&(i + 1)].clone()
            });
            out.row("lan", lib, &hosts.to_string(), run, &value);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}
