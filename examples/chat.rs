//! Peer-to-peer chat: every line you type goes to every other chat that
//! discovery has found, over TCP to its service port.
//!
//! ```text
//! cargo run --example chat            # in three terminals
//! cargo run --example chat -- --loopback   # same host only
//! ```
//!
//! Prints only chat lines, as `[sender id] text`. Logs go to stderr and stay
//! quiet unless `RUST_LOG` asks for them (`RUST_LOG=info` shows peers joining).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use cohort::{ChartBuilder, Event, Id, discovery};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

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
    let listener = TcpListener::bind("0.0.0.0:0").await?;
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

    let mut events = chart.subscribe();
    tokio::spawn(async move {
        while let Ok(event) = events.recv().await {
            match event {
                Event::Joined(entry) => {
                    tracing::info!(id = entry.id, ip = %entry.ip, "peer joined")
                }
                Event::Left { id, reason } => tracing::info!(id, ?reason, "peer left"),
                _ => {}
            }
        }
    });
    let discovery = tokio::spawn(discovery::maintain(chart.clone()));
    tokio::spawn(receive(listener));

    let mut connections: HashMap<Id, TcpStream> = HashMap::new();
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
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
    // End of input: leave gracefully, so peers drop us at once.
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
