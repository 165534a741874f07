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
}

/// Runs the router until `shutdown` completes, then drains requests in flight.
pub async fn run(
    client: kube::Client,
    options: Options,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(RouterMetrics::default());
    let routes = Arc::new(Routes::default());
    let forwarder = Forwarder::new(options.backend_timeout, options.max_reply_bytes)?;
    let endpoint = Arc::new(Endpoint::new(
        routes.clone(),
        forwarder,
        options.limits,
        options.source_filter.clone(),
        metrics.clone(),
        options.prefix.clone(),
    ));
    let public = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("listening on {}", options.listen))?;
    let health = tokio::net::TcpListener::bind(options.metrics_listen)
        .await
        .with_context(|| format!("listening on {}", options.metrics_listen))?;
    tracing::info!(
        listen = %options.listen,
        metrics_listen = %options.metrics_listen,
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
    let stopping = {
        let metrics = metrics.clone();
        async move {
            shutdown.await;
            // Load balancers stop sending first; requests already here finish.
            metrics.set_ready(false);
            tracing::info!("shutting down");
        }
    };
    server::serve(
        public,
        handler::app(endpoint),
        options.connections,
        stopping,
    )
    .await;
    watch.abort();
    health_server.abort();
    Ok(())
}
