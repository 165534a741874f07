//! The public listener: HTTP/1.1 with keep-alive (what Telegram speaks), a
//! deadline on each request's headers against clients that trickle them, the
//! peer address for the source allow-list, and a graceful shutdown that lets
//! requests in flight finish.

use std::{future::Future, net::SocketAddr, time::Duration};

use axum::{Router, extract::ConnectInfo, http::Request};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// How connections are held.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Longest time a request's headers may take to arrive; the connection is
    /// closed past it.
    pub header_read_timeout: Duration,
    /// Longest time shutdown waits for requests in flight.
    pub drain_timeout: Duration,
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting, lets requests in flight finish (at most `drain_timeout`) and
/// returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client that goes away or breaks HTTP ends only its own connection.
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        "stopped accepting; draining requests in flight"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout_secs = limits.drain_timeout.as_secs(),
            "requests still in flight at the end of the drain timeout were cut off"
        );
    }
}
