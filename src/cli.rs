//! The command line: one binary, `managedbot`, with a subcommand per part.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};

use crate::{
    commands,
    controller::{self, leader::LeaseOptions, plan::Settings},
    metrics::{self, Metrics},
    router, telegram,
    telemetry::{self, LogFormat},
};

/// A Kubernetes operator that owns the webhook wiring of Telegram bots.
#[derive(Parser, Debug)]
#[command(name = "managedbot", version, about, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ManagedBot CustomResourceDefinition as YAML (pipe it to `kubectl apply -f -`).
    Crd {
        /// Print the resource reference (Markdown) generated from it instead.
        #[arg(long)]
        reference: bool,
    },
    /// Reconcile ManagedBots: secrets, Telegram registration, status, rotation, deletion.
    Controller(Box<ControllerArgs>),
    /// Receive Telegram's deliveries and forward each to its bot's backend.
    Router(Box<RouterArgs>),
    /// Ask for a new webhook secret, wait until it is registered, print the new URL.
    Rotate(commands::rotate::RotateArgs),
    /// Show a bot: Ready and why, Telegram's pending updates and last error, rotation.
    #[command(alias = "get")]
    Status(commands::show::StatusArgs),
    /// Print a Ready bot's webhook URL.
    Url(commands::show::UrlArgs),
    /// Make ManagedBots of existing token Secrets: print them, or apply them and list the URLs.
    Adopt(Box<commands::adopt::AdoptArgs>),
}

/// Options of `managedbot controller`.
#[derive(Args, Debug)]
pub struct ControllerArgs {
    /// Base URL under which the router is reachable from Telegram, for bots
    /// without spec.webhook.baseUrl (e.g. https://bots.example.com).
    #[arg(long, env = "MANAGEDBOT_PUBLIC_BASE_URL", value_parser = parse_base_url)]
    pub public_base_url: Option<String>,
    /// Telegram's Bot API root.
    #[arg(long, env = "MANAGEDBOT_TELEGRAM_API_URL", default_value = telegram::DEFAULT_API_BASE)]
    pub telegram_api_url: url::Url,
    /// Timeout of every Telegram call.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub telegram_timeout: Duration,
    /// A namespace to watch (repeatable); none watches all namespaces.
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// How often each bot's webhook is checked with getWebhookInfo.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub resync_interval: Duration,
    /// Reconciles at once (per namespace watched).
    #[arg(long, default_value_t = 8)]
    pub concurrency: u16,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// Act only while holding the leader Lease (keep it on: a rolling update runs two pods at once).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Namespace of the leader Lease (default: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub leader_election_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "managedbot-controller")]
    pub leader_election_id: String,
    /// How long the Lease is held without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How long before the Lease expires its holder renews it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

/// Options of `managedbot router`.
#[derive(Args, Debug)]
pub struct RouterArgs {
    /// Address Telegram's deliveries arrive on (behind the Ingress).
    #[arg(long, default_value = "0.0.0.0:8000")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz; expose it to no Ingress.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,
    /// A namespace whose bots are routed (repeatable); none routes all namespaces.
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Path before /webhook/{secret}, the path of the bots' baseUrl (e.g. /telegram).
    #[arg(long, default_value = "")]
    pub path_prefix: router::handler::PathPrefix,
    /// How backend.service becomes a URL, from {name}, {namespace} and {port}.
    #[arg(long, default_value = router::backend::DEFAULT_SERVICE_TEMPLATE)]
    pub service_resolver: router::backend::ServiceResolver,
    /// Longest wait for a backend's whole answer (Telegram itself waits about 60s).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub backend_timeout: Duration,
    /// Largest update accepted; larger ones are answered 413.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_body_bytes: usize,
    /// Largest backend reply handed back to Telegram; larger ones are answered 502.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_reply_bytes: usize,
    /// Requests forwarded at once, all bots together; past it, 503 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Requests forwarded at once for one bot (Telegram opens at most 100 connections per bot).
    #[arg(long, default_value_t = 100)]
    pub max_in_flight_per_bot: usize,
    /// Longest time a request's headers may take to arrive.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest time a request's body may take to arrive; past it, 408.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// Longest time shutdown waits for requests in flight.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Threads serving deliveries; 0 is one per CPU the process may use.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Answer 403 to every source outside Telegram's delivery ranges (149.154.160.0/20, 91.108.4.0/22).
    #[arg(long)]
    pub telegram_sources_only: bool,
    /// A proxy (CIDR) whose X-Forwarded-For is believed with --telegram-sources-only (repeatable).
    #[arg(long = "trusted-proxy", requires = "telegram_sources_only")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,
}

fn parse_base_url(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err("Telegram delivers only to https:// URLs".into());
    }
    if !matches!(url.port_or_known_default(), Some(443 | 80 | 88 | 8443)) {
        return Err("Telegram delivers webhooks only to ports 443, 80, 88 and 8443".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("the base URL must not carry a query or a fragment".into());
    }
    Ok(raw.trim_end_matches('/').to_string())
}

/// The program: parses the command line as `bin_name`, runs the command and
/// turns its error into a message and an exit code (see [`commands::Failure`]).
pub fn main(bin_name: &'static str) -> std::process::ExitCode {
    let matches = Cli::command().bin_name(bin_name).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli.run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::from(commands::exit_code(&error))
        }
    }
}

impl Cli {
    /// Runs the chosen command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Crd { reference } => {
                if reference {
                    print!("{}", crate::reference::markdown());
                } else {
                    print!("{}", crate::resource::crd_yaml());
                }
                Ok(())
            }
            Command::Controller(args) => run_controller(*args).await,
            Command::Router(args) => run_router(*args).await,
            Command::Rotate(args) => commands::rotate::run(args).await,
            Command::Status(args) => commands::show::status(args).await,
            Command::Url(args) => commands::show::url(args).await,
            Command::Adopt(args) => commands::adopt::run(*args).await,
        }
    }
}

async fn run_router(args: RouterArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, "info,kube=warn");
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let options = router::Options {
        listen: args.listen,
        metrics_listen: args.metrics_listen,
        namespaces: args.namespaces,
        prefix: args.path_prefix,
        resolver: args.service_resolver,
        limits: router::handler::Limits {
            max_body_bytes: args.max_body_bytes,
            max_in_flight: args.max_in_flight,
            max_in_flight_per_bot: args.max_in_flight_per_bot,
            body_read_timeout: args.body_read_timeout,
        },
        connections: router::server::ConnectionLimits {
            header_read_timeout: args.header_read_timeout,
            drain_timeout: args.drain_timeout,
        },
        backend_timeout: args.backend_timeout,
        max_reply_bytes: args.max_reply_bytes,
        source_filter: args
            .telegram_sources_only
            .then(|| router::source::SourceFilter::telegram(args.trusted_proxies)),
        threads: match args.threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            threads => threads,
        },
    };
    router::run(client, options, shutdown_signal()).await
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format, "info,kube=warn");
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let telegram = telegram::Client::new(&args.telegram_api_url, args.telegram_timeout)?;
    let metrics = Arc::new(Metrics::default());
    let server = tokio::spawn(metrics::serve(args.metrics_listen, metrics.clone()));
    let settings = Settings {
        default_base_url: args.public_base_url.clone(),
        resync_interval: args.resync_interval,
    };
    let options = controller::Options {
        namespaces: args.namespaces.clone(),
        concurrency: args.concurrency,
    };
    let lost_lease = if args.leader_elect {
        let identity = std::env::var("POD_NAME")
            .unwrap_or_else(|_| format!("{}-{}", hostname_or("managedbot"), std::process::id()));
        let lease = LeaseOptions {
            namespace: args.leader_election_namespace.clone(),
            name: args.leader_election_id.clone(),
            identity,
            duration: args.lease_duration,
            renew_before: args.renew_deadline,
        };
        // A stand-by replica is healthy and ready: it is waiting by design.
        metrics.set_ready(true);
        let acquire = controller::leader::acquire(client.clone(), lease);
        tokio::select! {
            lost = acquire => Some(lost?),
            _ = shutdown_signal() => return Ok(()),
        }
    } else {
        None
    };
    let run = controller::run(client, telegram, settings, options, metrics);
    tokio::select! {
        () = run => Ok(()),
        Err(error) = server => Err(error.into()),
        () = async { match lost_lease { Some(lost) => lost.await, None => std::future::pending().await } } => {
            anyhow::bail!("lost the leader Lease: stopping so that only the new leader acts")
        }
    }
}

fn hostname_or(default: &str) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| default.into())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
