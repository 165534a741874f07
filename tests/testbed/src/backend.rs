//! A bot backend for tests and the demo: a real HTTP server on loopback that
//! records every update the router hands it and answers like a bot would
//! (200 with an optional Bot API method call in the body). It can be made
//! slow, failing, or stopped, to test what the router does then.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use tokio::{net::TcpListener, sync::oneshot};

/// One request the backend received.
#[derive(Clone, Debug)]
pub struct Received {
    /// When it arrived.
    pub at: SystemTime,
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, as sent.
    pub body: Bytes,
}

impl Received {
    /// `update_id` of the body, when it is an Update.
    pub fn update_id(&self) -> Option<i64> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()?
            .get("update_id")?
            .as_i64()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

/// How the backend answers.
#[derive(Clone, Debug)]
pub struct Reply {
    /// Status code.
    pub status: StatusCode,
    /// Content type of the body.
    pub content_type: String,
    /// The body.
    pub body: String,
    /// Wait this long before answering.
    pub delay: Duration,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            status: StatusCode::OK,
            content_type: "application/json".into(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    reply: Reply,
}

/// A running backend. Clones share it.
#[derive(Clone)]
pub struct Backend {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    stop: Arc<Mutex<Option<oneshot::Sender<()>>>>,
}

impl Backend {
    /// Serves on 127.0.0.1 on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on("127.0.0.1:0".parse()?).await
    }

    /// Serves on `addr` (binding a port a stopped backend used brings it back).
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let inner = Arc::new(Mutex::new(Inner::default()));
        Self::serve(addr, inner).await
    }

    async fn serve(addr: SocketAddr, inner: Arc<Mutex<Inner>>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = Router::new()
            .fallback(any(receive))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            inner,
            stop: Arc::new(Mutex::new(Some(stop))),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Changes how it answers from now on.
    pub fn set_reply(&self, reply: Reply) {
        self.lock().reply = reply;
    }

    /// Stops listening: connections are refused until [`Backend::restart`].
    pub fn stop(&self) {
        if let Some(stop) = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = stop.send(());
        }
    }

    /// Listens again on the same port, keeping what it received.
    pub async fn restart(&self) -> anyhow::Result<()> {
        let restarted = Self::serve(self.addr, self.inner.clone()).await?;
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = restarted
            .stop
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut inner = inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.received.push(Received {
            at: SystemTime::now(),
            path: uri.path().to_string(),
            headers,
            body,
        });
        inner.reply.clone()
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    (
        reply.status,
        [(axum::http::header::CONTENT_TYPE, reply.content_type)],
        reply.body,
    )
        .into_response()
}
