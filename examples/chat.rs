//! Peer-to-peer chat: every line you type goes to every other chat that
//! discovery has found, over TCP to its service port.
//!
//! ```text
//! cargo run --example chat -- --loopback   # in three terminals, same host
//! cargo run --example chat                 # across the LAN
//! ```
//!
//! Prints chat lines as `[sender id] text`, and a `*` line when a peer joins
//! or leaves, with the reason (said goodbye, died, expired). On Ctrl-C,
//! SIGTERM or end of input (Ctrl-D) it leaves gracefully (its peers see a
//! goodbye) and exits at once, even while a line is half typed. Logs go to
//! stderr and stay quiet unless `RUST_LOG` asks for them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use cohort::{ChartBuilder, Event, Id, discovery};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

const USAGE: &str = "\
usage: chat [--loopback]

A peer-to-peer chat: every chat on the network (or, with --loopback, on
this host) finds the others by itself. Type a line and press Enter to send
it to everyone; Ctrl-C or Ctrl-D leaves.

options:
  --loopback   find chats on this host only (127.0.0.1)
  -h, --help   print this help";

#[tokio::main]
async fn main() -> ExitCode {
    let mut loopback = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--loopback" => loopback = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("chat: unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match run(loopback).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("chat: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(loopback: bool) -> Result<(), Box<dyn std::error::Error>> {
    // Before anything is printed: a script that reads our output may send
    // SIGTERM at once, and must get a graceful leave.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    // The service port: whatever the OS gives us; discovery tells the others.
    // Same-host chats only need loopback; LAN peers need every interface.
    let listen_on = if loopback { "127.0.0.1:0" } else { "0.0.0.0:0" };
    let listener = TcpListener::bind(listen_on).await?;
    let port = listener.local_addr()?.port();
    let mut builder = ChartBuilder::new()
        .with_random_id()
        .with_service_port(port)
        .with_namespace("cohort-chat")
        .local_discovery(true);
    if loopback {
        builder = builder.loopback_only();
    }
    let chart = builder.finish()?;
    let me = chart.our_id();
    println!("* you are {me}. Type a line and press Enter to send it to everyone; Ctrl-C leaves.");

    let mut events = chart.subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Joined(entry)) => println!("* {} joined from {}", entry.id, entry.ip),
                Ok(Event::Left { id, reason }) => println!("* {id} left: {reason}"),
                Ok(Event::Conflict { id, other }) => {
                    println!("* another chat at {other} uses id {id} too")
                }
                Ok(_) => {}
                Err(lagged) => tracing::warn!(%lagged, "missed chart events"),
            }
        }
    });
    // Problems in discovery's way (no network yet, ...) are shown, not
    // hidden: discovery keeps retrying meanwhile.
    let mut status = chart.watch_status();
    tokio::spawn(async move {
        let mut shown = Vec::new();
        while status.changed().await.is_ok() {
            let problems = status.borrow_and_update().problems.clone();
            for problem in problems.iter().filter(|p| !shown.contains(*p)) {
                println!("* discovery: {problem}");
            }
            shown = problems;
        }
    });
    let discovery = discovery::spawn(&chart)?;
    tokio::spawn(receive(listener));

    // Stdin is read on a thread of its own: a blocking read the runtime
    // does not know about, so nothing waits for it when the chat exits.
    let mut lines = read_stdin();
    let mut connections: HashMap<Id, TcpStream> = HashMap::new();
    loop {
        let line = tokio::select! {
            line = lines.recv() => match line {
                Some(line) => line,
                None => break, // end of input
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        };
        let message = format!("{me} {line}\n");
        let peers = chart.addr_vec();
        connections.retain(|id, _| peers.iter().any(|(p, _)| p == id));
        for (id, addr) in peers {
            if let Err(error) = send(&mut connections, id, addr, &message).await {
                tracing::warn!(id, %addr, %error, "could not reach peer");
                connections.remove(&id);
            }
        }
    }
    // Leave gracefully, so peers drop us at once.
    discovery.shutdown().await?;
    Ok(())
}

/// Lines typed on stdin, from a plain thread.
fn read_stdin() -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

async fn send(
    connections: &mut HashMap<Id, TcpStream>,
    id: Id,
    addr: SocketAddr,
    message: &str,
) -> std::io::Result<()> {
    let stream = match connections.entry(id) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => {
            let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                })??;
            stream.set_nodelay(true)?;
            entry.insert(stream)
        }
    };
    stream.write_all(message.as_bytes()).await
}

/// Prints every line every peer sends us: `[sender] text`.
async fn receive(listener: TcpListener) {
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.split_once(' ') {
                    Some((sender, text)) => println!("[{sender}] {text}"),
                    None => tracing::warn!(%from, "malformed chat line"),
                }
            }
        });
    }
}
