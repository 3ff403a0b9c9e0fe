//! Run it twice: the first run becomes the primary and prints each request it
//! receives; the second prints `secondary`, then the primary's answer to its
//! arguments, and exits with the primary's status (0).
//!
//! ```text
//! $ cargo run --example single_instance &          # prints: primary
//! $ cargo run --example single_instance -- a "b c" # prints: secondary, then the answer
//! $ cargo run --example single_instance -- --quit  # asks the primary to hand over and exit
//! ```
//!
//! The first line of output is always the role. Set `COHORT_EXAMPLE_DIR` to use
//! another runtime directory than `$XDG_RUNTIME_DIR`.

use std::process::ExitCode;

use cohort::local::{Reply, Role, SingleInstance};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let mut instance = SingleInstance::new("org.cohort.single-instance-example");
    if let Some(dir) = std::env::var_os("COHORT_EXAMPLE_DIR") {
        instance = instance.runtime_dir(dir);
    }
    match instance.acquire().await {
        Ok(Role::Primary(primary)) => {
            println!("primary");
            eprintln!(
                "serving at {}; stop with Ctrl-C or a launch with --quit",
                primary.endpoint()
            );
            loop {
                let request = tokio::select! {
                    request = primary.next_request() => request,
                    _ = tokio::signal::ctrl_c() => None,
                };
                let Some(request) = request else { break };
                let args: Vec<String> = request
                    .args()
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect();
                println!(
                    "request from pid {}: args {:?} in {}",
                    request.pid(),
                    args,
                    request
                        .cwd()
                        .map(|c| c.display().to_string())
                        .unwrap_or_else(|| "?".into())
                );
                let quit = args.iter().any(|a| a == "--quit");
                let answer = format!(
                    "primary (pid {}) received {} argument(s): {:?}{}",
                    std::process::id(),
                    args.len(),
                    args,
                    if quit { "; shutting down" } else { "" }
                );
                let reply = Reply::ok()
                    .with_payload(&answer)
                    .expect("a string always encodes");
                if let Err(e) = request.reply(reply).await {
                    eprintln!("could not reply: {e}");
                }
                if quit {
                    break;
                }
            }
            // Dropping the primary hands over: the next launch becomes primary.
            ExitCode::SUCCESS
        }
        Ok(Role::Secondary(secondary)) => {
            println!("secondary");
            match secondary.forward_args().await {
                Ok(reply) => {
                    match reply.payload::<String>() {
                        Ok(Some(answer)) => println!("{answer}"),
                        _ => println!("(status {} without an answer)", reply.status()),
                    }
                    ExitCode::from(reply.status().clamp(0, 255) as u8)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            println!("error");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
