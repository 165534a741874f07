//! The router: the axum service Telegram posts updates to. It routes each
//! `POST {prefix}/webhook/{secret}` by the SHA-256 of the secret, from
//! `status.routing` of the ManagedBots it watches (it reads no Secret),
//! checks `X-Telegram-Bot-Api-Secret-Token` in constant time, and forwards
//! the update to the bot's backend (see design.md, "The router").
//!
//! [`table`] is the route table and [`watch`] keeps it current; [`handler`]
//! answers a delivery with [`forward`] and [`answer`]; [`server`] holds the
//! connections; [`metrics`] serves the health port.

pub mod answer;
pub mod auth;
pub mod backend;
pub mod forward;
pub mod handler;
pub mod limit;
pub mod metrics;
pub mod server;
pub mod source;
pub mod table;
pub mod watch;

#[cfg(test)]
mod handler_tests;
#[cfg(test)]
pub(crate) mod test_support;

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;

use backend::ServiceResolver;
use forward::Forwarder;
use handler::{Endpoint, Limits, PathPrefix};
use metrics::RouterMetrics;
use server::ConnectionLimits;
use source::SourceFilter;
use table::Routes;

/// Everything `managedbot router` is configured with.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where Telegram's deliveries arrive.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub metrics_listen: SocketAddr,
    /// Namespaces whose bots are routed; empty: all.
    pub namespaces: Vec<String>,
    /// The path before `/webhook/{secret}`.
    pub prefix: PathPrefix,
    /// How `backend.service` becomes a URL.
    pub resolver: ServiceResolver,
    /// Per-request limits.
    pub limits: Limits,
    /// Per-connection limits and the shutdown drain.
    pub connections: ConnectionLimits,
    /// Longest wait for a backend's whole answer.
    pub backend_timeout: std::time::Duration,
    /// Largest backend reply handed back to Telegram.
    pub max_reply_bytes: usize,
    /// Only Telegram's source ranges may post, when set.
    pub source_filter: Option<SourceFilter>,
    /// Threads serving deliveries, each with its own listener on `listen`
    /// (SO_REUSEPORT) and its own backend connections.
    pub threads: usize,
}

/// Runs the router until `shutdown` completes, then drains requests in flight.
///
/// Deliveries are served thread per core, as nginx serves them with worker
/// processes: each thread runs its own single-threaded runtime with its own
/// listener on the same port (the kernel spreads connections over them) and
/// its own backend connections, so that a request never crosses threads. The
/// route table, the metrics and the overall cap are shared. The watch and the
/// health port run on the caller's runtime.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(RouterMetrics::default());
    let routes = Arc::new(Routes::default());
    // Built here first so that a bad configuration fails before any thread starts.
    let template = Arc::new(Endpoint::new(
        routes.clone(),
        Forwarder::new(options.backend_timeout, options.max_reply_bytes)?,
        options.limits,
        options.source_filter.clone(),
        metrics.clone(),
        options.prefix.clone(),
    ));
    let health = tokio::net::TcpListener::bind(options.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", options.metrics_listen))?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut listen = options.listen;
    let mut workers = Vec::with_capacity(options.threads.max(1));
    for index in 0..options.threads.max(1) {
        let (bound, started) = tokio::sync::oneshot::channel();
        let worker = Worker {
            listen,
            template: template.clone(),
            options: options.clone(),
            stopped: stopped.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("router-{index}"))
            .spawn(move || worker.run(bound))
            .context("starting a serving thread")?;
        // A port of 0 is chosen by the first listener; the others join it.
        listen = started
            .await
            .context("a serving thread died while starting")??;
        workers.push(thread);
    }
    tracing::info!(
        listen = %listen,
        metrics_listen = %options.metrics_listen,
        threads = workers.len(),
        webhook_path = %options.prefix.webhook_path("{secret}"),
        "router starting; ready once the ManagedBots are listed"
    );
    let health_server = tokio::spawn({
        let app = metrics::health_app(metrics.clone());
        async move { axum::serve(health, app).await }
    });
    let watch = tokio::spawn({
        let namespaces = options.namespaces.clone();
        let resolver = options.resolver.clone();
        let metrics = metrics.clone();
        async move { watch::maintain(client, &namespaces, resolver, routes, metrics).await }
    });
    shutdown.await;
    // Load balancers stop sending first; requests already here finish.
    metrics.set_ready(false);
    tracing::info!("shutting down");
    let _ = stop.send(true);
    for worker in workers {
        let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    }
    watch.abort();
    health_server.abort();
    Ok(())
}

/// One serving thread.
struct Worker {
    listen: SocketAddr,
    template: Arc<Endpoint>,
    options: Options,
    stopped: tokio::sync::watch::Receiver<bool>,
}

impl Worker {
    /// Binds, reports the bound address (or why not) through `bound`, then
    /// serves until told to stop.
    fn run(self, bound: tokio::sync::oneshot::Sender<anyhow::Result<SocketAddr>>) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = bound.send(Err(anyhow::Error::new(error).context("starting a runtime")));
                return;
            }
        };
        runtime.block_on(async move {
            let started = self.listener().and_then(|listener| {
                let forwarder =
                    Forwarder::new(self.options.backend_timeout, self.options.max_reply_bytes)?;
                Ok((listener, forwarder))
            });
            let (listener, forwarder) = match started {
                Ok(started) => started,
                Err(error) => {
                    let _ = bound.send(Err(error));
                    return;
                }
            };
            let _ = bound.send(listener.local_addr().map_err(Into::into));
            let endpoint = Arc::new(self.template.with_forwarder(forwarder));
            let mut stopped = self.stopped;
            let stop = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            server::serve(
                listener,
                handler::app(endpoint),
                self.options.connections,
                stop,
            )
            .await;
        });
    }

    fn listener(&self) -> anyhow::Result<tokio::net::TcpListener> {
        let socket = if self.listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket
            .bind(self.listen)
            .with_context(|| format!("listening on {}", self.listen))?;
        Ok(socket.listen(1024)?)
    }
}
