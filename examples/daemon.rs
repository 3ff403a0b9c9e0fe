//! A tiny background daemon, spawned on first use and reused after.
//!
//! ```text
//! $ cargo run --example daemon            # starts the daemon, asks it once
//! daemon 41230: pong #1
//! $ cargo run --example daemon            # reuses it
//! daemon 41230: pong #2
//! $ cargo run --example daemon -- --stop  # asks it to exit, waits until it has
//! stopped daemon 41230
//! ```
//!
//! The same binary is both sides: `--serve` is the daemon (it runs the
//! election and serves as the primary); without arguments it is a client that
//! calls `Daemon::ensure`, which starts `<this binary> --serve` detached, in
//! its own session, with its output in `daemon.log` in the runtime directory,
//! when no verified daemon answers. Set `COHORT_EXAMPLE_DIR` to use another
//! runtime directory than `$XDG_RUNTIME_DIR`.

use std::process::{Command, ExitCode};
use std::time::Duration;

use cohort::local::{Daemon, Expect, Forward, InstanceHandle, Reply, Role, SingleInstance};

const APP: &str = "org.cohort.daemon-example";

fn app() -> SingleInstance {
    let app = SingleInstance::new(APP);
    match std::env::var_os("COHORT_EXAMPLE_DIR") {
        Some(dir) => app.runtime_dir(dir),
        None => app,
    }
}

/// The daemon: serve "ping" requests until asked to stop.
async fn serve() -> Result<(), cohort::local::Error> {
    let Role::Primary(primary) = app().acquire().await? else {
        eprintln!("a daemon is already running; exiting");
        return Ok(());
    };
    eprintln!(
        "daemon {} ready at {}",
        std::process::id(),
        primary.endpoint()
    );
    let mut served = 0u64;
    while let Some(request) = primary.next_request().await {
        served += 1;
        let answer = format!("daemon {}: pong #{served}", std::process::id());
        request.reply(Reply::ok().with_payload(&answer)?).await?;
    }
    eprintln!(
        "daemon {} stopping after {served} requests",
        std::process::id()
    );
    Ok(())
}

async fn client() -> Result<(), cohort::local::Error> {
    let mut command =
        Command::new(
            std::env::current_exe().map_err(|source| cohort::local::Error::Io {
                what: "finding this program",
                source,
            })?,
        );
    command.arg("--serve");
    if let Some(dir) = std::env::var_os("COHORT_EXAMPLE_DIR") {
        command.env("COHORT_EXAMPLE_DIR", dir);
    }
    let daemon = Daemon::new(app(), command)
        .replace_if_binary_differs(true)
        .ensure()
        .await?;
    let reply = daemon
        .connect()
        .await?
        .forward(Forward::new().arg("ping"))
        .await?;
    println!("{}", reply.payload::<String>()?.unwrap_or_default());
    Ok(())
}

async fn stop() -> Result<(), cohort::local::Error> {
    let daemon = InstanceHandle::probe(&app(), &Expect::any()).await?;
    daemon.shutdown(Duration::from_secs(5)).await?;
    println!("stopped daemon {}", daemon.identity().pid);
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let result = match std::env::args().nth(1).as_deref() {
        Some("--serve") => serve().await,
        Some("--stop") => stop().await,
        None => client().await,
        Some(other) => {
            eprintln!("unknown argument {other:?}; use no argument, --serve or --stop");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  because: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}
