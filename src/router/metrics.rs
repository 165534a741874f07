//! The router's Prometheus metrics and the port that serves them with
//! `/healthz` and `/readyz`, apart from the port Telegram reaches.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// The router's metrics and readiness.
pub struct RouterMetrics {
    registry: Registry,
    requests: Family<CodeLabels, Counter>,
    request_duration: Histogram,
    routes: Gauge,
    bots: Gauge,
    backend_errors: Family<KindLabels, Counter>,
    ready: AtomicBool,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("managedbot_router");
        let requests = Family::<CodeLabels, Counter>::default();
        registry.register(
            "requests",
            "Webhook requests by the status code answered",
            requests.clone(),
        );
        let request_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "request_duration_seconds",
            "Time from a webhook request to its answer, backend included",
            request_duration.clone(),
        );
        let routes = Gauge::default();
        registry.register(
            "routes",
            "Path secrets routed (current and unexpired previous pairs)",
            routes.clone(),
        );
        let bots = Gauge::default();
        registry.register("bots", "Bots routed", bots.clone());
        let backend_errors = Family::<KindLabels, Counter>::default();
        registry.register(
            "backend_errors",
            "Failed forwards by kind (connect, timeout, request, reply_too_large, gone)",
            backend_errors.clone(),
        );
        Self {
            registry,
            requests,
            request_duration,
            routes,
            bots,
            backend_errors,
            ready: AtomicBool::new(false),
        }
    }
}

impl RouterMetrics {
    /// Counts an answered request.
    pub fn answered(&self, code: StatusCode, took: Duration) {
        self.request_duration.observe(took.as_secs_f64());
        self.requests
            .get_or_create(&CodeLabels {
                code: code.as_u16(),
            })
            .inc();
    }

    /// Counts a failed forward.
    pub fn backend_error(&self, kind: &'static str) {
        self.backend_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Records the size of the table just published.
    pub fn published(&self, routes: usize, bots: usize) {
        self.routes.set(i64::try_from(routes).unwrap_or(i64::MAX));
        self.bots.set(i64::try_from(bots).unwrap_or(i64::MAX));
    }

    /// Sets what `/readyz` answers.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// `/metrics`, `/healthz` and `/readyz`.
pub fn health_app(metrics: Arc<RouterMetrics>) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

async fn render(State(metrics): State<Arc<RouterMetrics>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

async fn readyz(State(metrics): State<Arc<RouterMetrics>>) -> impl IntoResponse {
    if metrics.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt as _;

    use super::*;

    async fn get_text(app: &Router, path: &str) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[test]
    fn renders_every_family() {
        let metrics = RouterMetrics::default();
        metrics.answered(StatusCode::OK, Duration::from_millis(3));
        metrics.answered(StatusCode::OK, Duration::from_millis(5));
        metrics.answered(StatusCode::NOT_FOUND, Duration::from_micros(10));
        metrics.backend_error("timeout");
        metrics.published(3, 2);
        let text = metrics.render();
        for line in [
            "managedbot_router_requests_total{code=\"200\"} 2",
            "managedbot_router_requests_total{code=\"404\"} 1",
            "managedbot_router_request_duration_seconds_count 3",
            "managedbot_router_routes 3",
            "managedbot_router_bots 2",
            "managedbot_router_backend_errors_total{kind=\"timeout\"} 1",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn readyz_follows_readiness_and_healthz_is_always_ok() {
        let metrics = Arc::new(RouterMetrics::default());
        let app = health_app(metrics.clone());
        assert_eq!(get_text(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get_text(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        metrics.set_ready(true);
        assert_eq!(
            get_text(&app, "/readyz").await,
            (StatusCode::OK, "ok\n".into())
        );
        metrics.published(7, 1);
        let (status, text) = get_text(&app, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(text.contains("managedbot_router_routes 7"), "{text}");
    }
}
