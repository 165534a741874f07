//! `testbed`: the repository's tooling around the test bed (not part of the
//! shipped operator). `testbed controlplane` runs a local control plane until
//! interrupted; `testbed fake-telegram` serves the fake Bot API.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};
use testbed::{Backend, ControlPlane, FakeTelegram};

#[derive(Parser)]
#[command(
    name = "testbed",
    about = "managedbot's local control plane and fake Telegram"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start etcd, kube-apiserver and kube-controller-manager on loopback,
    /// print the kubeconfig's path, and stop them on Ctrl-C or SIGTERM.
    Controlplane {
        /// Also write the kubeconfig's path to this file (for scripts).
        #[arg(long)]
        kubeconfig_out: Option<PathBuf>,
    },
    /// A bot backend that prints every update it receives, until Ctrl-C or SIGTERM.
    Backend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
        /// What it answers with: a JSON body (e.g. a Bot API method call).
        #[arg(long, default_value = "")]
        reply: String,
    },
    /// The trivial backend of the benchmarks: answers every request 200 with
    /// an empty JSON body, records nothing, until Ctrl-C or SIGTERM.
    BenchBackend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8091")]
        listen: SocketAddr,
    },
    /// Serve the fake Telegram Bot API until Ctrl-C or SIGTERM.
    FakeTelegram {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// A bot token to accept, with its username: TOKEN=USERNAME (repeatable).
        #[arg(long = "bot", value_name = "TOKEN=USERNAME")]
        bots: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Controlplane { kubeconfig_out } => {
            let started = std::time::Instant::now();
            let mut plane = tokio::task::block_in_place(ControlPlane::start)?;
            let kubeconfig = plane.kubeconfig().display().to_string();
            eprintln!(
                "control plane ready in {:.1}s at {} (logs in {})",
                started.elapsed().as_secs_f64(),
                plane.server(),
                plane.dir().display()
            );
            println!("export KUBECONFIG={kubeconfig}");
            if let Some(out) = kubeconfig_out {
                std::fs::write(out, &kubeconfig)?;
            }
            shutdown_signal().await;
            eprintln!("stopping the control plane");
            plane.stop();
        }
        Cmd::Backend { listen, reply } => {
            let backend = Backend::start_on(listen).await?;
            backend.set_reply(testbed::backend::Reply {
                body: reply,
                ..Default::default()
            });
            eprintln!("backend listening on {}", backend.url());
            let printer = async {
                let mut shown = 0;
                loop {
                    let received = backend.received();
                    for update in &received[shown..] {
                        let bot = update.header("x-managedbot-name").unwrap_or("?");
                        println!(
                            "backend got an update for bot {bot}: {}",
                            String::from_utf8_lossy(&update.body)
                        );
                    }
                    shown = received.len();
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            };
            tokio::select! {
                () = printer => {}
                () = shutdown_signal() => {}
            }
            backend.stop();
        }
        Cmd::BenchBackend { listen } => {
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let app = axum::Router::new().fallback(|_body: axum::body::Bytes| async {
                ([(axum::http::header::CONTENT_TYPE, "application/json")], "")
            });
            eprintln!(
                "bench backend listening on http://{}",
                listener.local_addr()?
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        Cmd::FakeTelegram { listen, bots } => {
            let fake = FakeTelegram::start_on(listen).await?;
            for bot in bots {
                let (token, username) = bot
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--bot takes TOKEN=USERNAME"))?;
                let id = fake.add_bot_with_token(token, username)?;
                eprintln!("bot {username} (id {id}) accepted");
            }
            eprintln!("fake Telegram Bot API listening on {}", fake.url());
            shutdown_signal().await;
            fake.shutdown().await;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
