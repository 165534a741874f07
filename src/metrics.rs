//! The controller's Prometheus metrics, and the small HTTP server that
//! exposes them with `/healthz` and `/readyz` on a port of its own.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadyLabels {
    ready: &'static str,
}

/// The controller's metrics.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    reconcile_duration: Histogram,
    telegram_calls: Family<CallLabels, Counter>,
    bots: Family<ReadyLabels, Gauge>,
    ready_by_bot: Mutex<HashMap<String, &'static str>>,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("managedbot");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            reconciles.clone(),
        );
        let reconcile_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile takes",
            reconcile_duration.clone(),
        );
        let telegram_calls = Family::<CallLabels, Counter>::default();
        registry.register(
            "telegram_calls",
            "Calls to Telegram's Bot API by method and result (ok or the error kind)",
            telegram_calls.clone(),
        );
        let bots = Family::<ReadyLabels, Gauge>::default();
        registry.register("bots", "ManagedBots by their Ready condition", bots.clone());
        Self {
            registry,
            reconciles,
            reconcile_duration,
            telegram_calls,
            bots,
            ready_by_bot: Mutex::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts a reconcile and its duration.
    pub fn reconciled(&self, started: Instant, ok: bool) {
        self.reconcile_duration
            .observe(started.elapsed().as_secs_f64());
        self.reconciles
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// Counts a Telegram call.
    pub fn telegram_call(&self, method: &'static str, result: &'static str) {
        self.telegram_calls
            .get_or_create(&CallLabels { method, result })
            .inc();
    }

    /// Records a bot's Ready status ("True", "False", "Unknown"), or its
    /// removal with `None`.
    pub fn bot_ready(&self, bot: &str, ready: Option<&'static str>) {
        let mut by_bot = self.ready_by_bot.lock().unwrap_or_else(|p| p.into_inner());
        match ready {
            Some(ready) => by_bot.insert(bot.to_string(), ready),
            None => by_bot.remove(bot),
        };
        for state in ["True", "False", "Unknown"] {
            let count = by_bot.values().filter(|r| **r == state).count();
            self.bots
                .get_or_create(&ReadyLabels { ready: state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// Marks the process ready for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends.
pub async fn serve(listen: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    axum::serve(listener, app).await
}

async fn render(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_in_prometheus_text() {
        let metrics = Metrics::default();
        metrics.reconciled(Instant::now(), true);
        metrics.telegram_call("setWebhook", "ok");
        metrics.bot_ready("ns/a", Some("True"));
        metrics.bot_ready("ns/b", Some("False"));
        metrics.bot_ready("ns/b", None);
        let text = metrics.render();
        for line in [
            "managedbot_reconciles_total{result=\"ok\"} 1",
            "managedbot_telegram_calls_total{method=\"setWebhook\",result=\"ok\"} 1",
            "managedbot_bots{ready=\"True\"} 1",
            "managedbot_bots{ready=\"False\"} 0",
            "managedbot_reconcile_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }
}
