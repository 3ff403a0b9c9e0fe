//! One discovery instance of one library, as a real process, for the driver.
//!
//! ```text
//! node <cohort|instance-chart|mdns-sd> <N> <tag> <interface-ipv4>
//! ```
//!
//! - `N`: cohort size, this instance included; `all <ns>` is printed once
//!   this instance knows the other `N - 1`.
//! - `tag`: keeps runs apart (cohort namespace, instance-chart header, mdns-sd
//!   service type); every instance of one run gets the same tag.
//! - `interface-ipv4`: `127.0.0.1` on one host (loopback only, local
//!   discovery on), the host's address on the simulated LAN.
//!
//! Prints, one per line, wall-clock (CLOCK_REALTIME) nanoseconds:
//! `start <ns>` (before the library's set-up: builder, sockets, daemon), `id <id>`, `known <k> <ns>`
//! whenever the number of other instances known changes, `all <ns>`,
//! `left <id> <ns>`, and `ended <how>` if the library's discovery task stops
//! on its own. A line `quit` on stdin, or EOF, makes it leave as gracefully
//! as the library allows, then exit.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

fn wall_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos()
}

/// Tracks how many others are known and prints `known` and `all` lines.
struct Tally {
    n: usize,
    all_said: AtomicBool,
}

impl Tally {
    fn known(&self, k: usize) {
        let now = wall_ns();
        println!("known {k} {now}");
        if k + 1 >= self.n && !self.all_said.swap(true, Ordering::SeqCst) {
            println!("all {now}");
        }
    }
}

/// Resolves when a `quit` line or EOF arrives on stdin.
async fn quit_requested() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            match std::io::stdin().read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.trim() == "quit" => break,
                Ok(_) => {}
            }
        }
        let _ = tx.send(());
    });
    let _ = rx.await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: node <cohort|instance-chart|mdns-sd> <N> <tag> <interface-ipv4>");
        std::process::exit(2);
    }
    let n: usize = args[2].parse().expect("N is a number");
    let tag = args[3].clone();
    let iface: Ipv4Addr = args[4].parse().expect("interface is an IPv4 address");
    let tally = Arc::new(Tally {
        n,
        all_said: AtomicBool::new(false),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match args[1].as_str() {
        "cohort" => rt.block_on(run_cohort(tally, &tag, iface)),
        "instance-chart" => rt.block_on(run_instance_chart(tally, &tag)),
        "mdns-sd" => rt.block_on(run_mdns(tally, &tag, iface)),
        other => {
            eprintln!("unknown library {other}");
            std::process::exit(2);
        }
    }
}

async fn run_cohort(tally: Arc<Tally>, tag: &str, iface: Ipv4Addr) {
    use cohort::{ChartBuilder, Event, discovery};
    // `start` comes before any set-up, for every library alike.
    println!("start {}", wall_ns());
    let builder = ChartBuilder::new()
        .with_random_id()
        .with_service_port(9000)
        .with_namespace(tag);
    let chart = if iface.is_loopback() {
        builder.local_discovery(true).loopback_only().finish()
    } else {
        builder.with_interface(iface).finish()
    }
    .expect("cohort chart");
    println!("id {}", chart.our_id());
    let mut events = chart.subscribe();
    let mut task = tokio::spawn(discovery::maintain(chart.clone()));
    let watch = chart.clone();
    let t = Arc::clone(&tally);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Left { id, .. }) => {
                    println!("left {id} {}", wall_ns());
                    t.known(watch.size() - 1);
                }
                Ok(Event::Joined(_)) => t.known(watch.size() - 1),
                Ok(_) => {}
                Err(_) => t.known(watch.size() - 1),
            }
        }
    });
    let quit = tokio::select! {
        () = quit_requested() => true,
        ended = &mut task => {
            println!("ended {}", how(ended));
            false
        }
    };
    if quit {
        chart.shutdown();
        let _ = task.await;
    }
}

/// How a spawned discovery task ended: `returned ..` or `panic`.
fn how<T: std::fmt::Debug>(ended: Result<T, tokio::task::JoinError>) -> String {
    match ended {
        Ok(result) => format!("returned {result:?}").replace('\n', " "),
        Err(e) if e.is_panic() => "panic".to_owned(),
        Err(e) => format!("join-error {e}"),
    }
}

async fn run_instance_chart(tally: Arc<Tally>, tag: &str) {
    use instance_chart::{ChartBuilder, discovery};
    // The header keeps runs apart, as cohort's namespace does.
    let header = tag.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    // A unique id per process (instance-chart has no random-id helper in use here).
    let id = (wall_ns() as u64 ^ (u64::from(std::process::id()) << 40))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    println!("start {}", wall_ns());
    let chart = ChartBuilder::new()
        .with_id(id)
        .with_service_port(9000)
        .with_header(header)
        .local_discovery(true)
        .finish()
        .expect("instance-chart chart");
    println!("id {}", chart.our_id());
    let mut notify = chart.notify();
    let task = tokio::spawn(discovery::maintain(chart.clone()));
    let watch = chart.clone();
    let t = Arc::clone(&tally);
    tokio::spawn(async move {
        // instance-chart only ever reports new instances; nobody leaves.
        loop {
            match notify.recv().await {
                Ok(_) => t.known(watch.size() - 1),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    t.known(watch.size() - 1);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    });
    tokio::select! {
        // instance-chart has no goodbye: a graceful exit is just an exit.
        () = quit_requested() => {}
        ended = task => println!("ended {}", how(ended)),
    }
}

async fn run_mdns(tally: Arc<Tally>, tag: &str, iface: Ipv4Addr) {
    use mdns_sd::{ServiceDaemon, ServiceEvent, ServiceInfo};
    let service_type = format!("_{tag}._udp.local.");
    println!("start {}", wall_ns());
    let daemon = ServiceDaemon::new().expect("mdns-sd daemon");
    let name = format!("i{:x}", wall_ns() as u64 ^ u64::from(std::process::id()));
    let host = format!("{name}.local.");
    let info = ServiceInfo::new(
        &service_type,
        &name,
        &host,
        std::net::IpAddr::V4(iface),
        9000,
        None::<std::collections::HashMap<String, String>>,
    )
    .expect("mdns-sd service info");
    let fullname = info.get_fullname().to_owned();
    println!("id {fullname}");
    let events = daemon.browse(&service_type).expect("mdns-sd browse");
    daemon.register(info).expect("mdns-sd register");
    let own = fullname.clone();
    let t = Arc::clone(&tally);
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<String>();
    std::thread::spawn(move || {
        let mut known = HashSet::new();
        while let Ok(event) = events.recv() {
            match event {
                ServiceEvent::ServiceResolved(service)
                    if service.fullname != own && known.insert(service.fullname.clone()) =>
                {
                    t.known(known.len());
                }
                ServiceEvent::ServiceRemoved(_, gone) if gone != own && known.remove(&gone) => {
                    println!("left {gone} {}", wall_ns());
                    t.known(known.len());
                }
                _ => {}
            }
        }
        let _ = ended_tx.send("browse channel closed".to_owned());
    });
    tokio::select! {
        () = quit_requested() => {
            if let Ok(done) = daemon.unregister(&fullname) {
                let _ = done.recv_timeout(std::time::Duration::from_secs(2));
            }
            if let Ok(done) = daemon.shutdown() {
                let _ = done.recv_timeout(std::time::Duration::from_secs(2));
            }
        }
        Ok(ended) = ended_rx => println!("ended {ended}"),
    }
}
