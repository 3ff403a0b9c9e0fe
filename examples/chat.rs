//! Peer-to-peer chat: every line you type goes to every other chat that
//! discovery has found, over TCP to its service port.
//!
//! ```text
//! cargo run --example chat            # in three terminals
//! cargo run --example chat -- --loopback   # same host only
//! ```
//!
//! Prints chat lines as `[sender id] text`, and a `*` line when a peer joins
//! or leaves, with the reason (said goodbye, died, expired). On Ctrl-C,
//! SIGTERM or end of input it leaves gracefully: its peers see a goodbye.
//! Logs go to stderr and stay quiet unless `RUST_LOG` asks for them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cohort::{ChartBuilder, Event, Id, discovery};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let loopback = std::env::args().any(|a| a == "--loopback");

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
    tracing::info!(id = me, port, "chat started");

    // Before anything is printed: a script that reads our output may
    // send SIGTERM at once, and must get a graceful leave.
    let mut terminate = signal(SignalKind::terminate())?;
    println!("* you are {me}");
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
    let discovery = tokio::spawn(discovery::maintain(chart.clone()));
    tokio::spawn(receive(listener));

    let mut connections: HashMap<Id, TcpStream> = HashMap::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = stdin.next_line() => match line? {
                Some(line) => line,
                None => break, // end of input
            },
            _ = tokio::signal::ctrl_c() => break,
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
    chart.shutdown();
    let _ = discovery.await;
    Ok(())
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
