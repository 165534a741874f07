//! The endpoint Telegram posts to, `POST {prefix}/webhook/{secret}`: source
//! check, route lookup, token check, caps, body limit, forward.

use std::{net::SocketAddr, str::FromStr, sync::Arc, time::Duration, time::Instant};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State},
    http::{HeaderMap, HeaderValue, Method, header},
    response::{IntoResponse, Response},
    routing::any,
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use k8s_openapi::jiff::Timestamp;

use super::{
    answer::Refusal,
    auth::{PathKey, is_well_formed_secret},
    forward::{Forwarder, Reply},
    limit::InFlight,
    metrics::RouterMetrics,
    source::SourceFilter,
    table::{Route, Routes},
};

/// The header Telegram sends the webhook's secret_token in.
pub const SECRET_TOKEN_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The path before `/webhook/{secret}`, matching a baseUrl's path: empty, or
/// `/`-separated segments of `A-Za-z0-9._~-` with a leading `/`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PathPrefix(String);

/// Why a `--path-prefix` is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a path prefix is empty or like /telegram: segments of A-Za-z0-9._~- after a leading /")]
pub struct PrefixError;

impl FromStr for PathPrefix {
    type Err = PrefixError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim_end_matches('/');
        if trimmed.is_empty() {
            return Ok(Self::default());
        }
        let segments = trimmed.strip_prefix('/').ok_or(PrefixError)?;
        let valid = segments.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
        });
        valid.then(|| Self(trimmed.to_string())).ok_or(PrefixError)
    }
}

impl PathPrefix {
    /// The path of the webhook of `secret` under this prefix.
    pub fn webhook_path(&self, secret: &str) -> String {
        format!("{}/webhook/{secret}", self.0)
    }
}

/// The limits a request is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest body accepted, declared or chunked.
    pub max_body_bytes: usize,
    /// Requests forwarded at once, all bots together.
    pub max_in_flight: usize,
    /// Requests forwarded at once for one bot.
    pub max_in_flight_per_bot: usize,
    /// Longest time the whole body may take to arrive.
    pub body_read_timeout: Duration,
}

/// What the endpoint needs.
#[derive(Clone)]
pub struct Endpoint {
    routes: Arc<Routes>,
    forwarder: Forwarder,
    limits: Limits,
    source_filter: Option<SourceFilter>,
    metrics: Arc<RouterMetrics>,
    prefix: PathPrefix,
    webhook_path: String,
    in_flight: Arc<InFlight>,
}

impl Endpoint {
    /// An endpoint serving `routes` under `prefix`.
    pub fn new(
        routes: Arc<Routes>,
        forwarder: Forwarder,
        limits: Limits,
        source_filter: Option<SourceFilter>,
        metrics: Arc<RouterMetrics>,
        prefix: PathPrefix,
    ) -> Self {
        Self {
            routes,
            forwarder,
            limits,
            source_filter,
            metrics,
            webhook_path: prefix.webhook_path(""),
            prefix,
            in_flight: Arc::default(),
        }
    }

    /// The same endpoint with another forwarder: one per serving thread, so
    /// that a thread's backend connections are its own, sharing the table,
    /// the metrics and the overall cap.
    pub fn with_forwarder(&self, forwarder: Forwarder) -> Self {
        Self {
            forwarder,
            ..self.clone()
        }
    }
}

/// The router's public HTTP app: the webhook endpoint, and 404 for anything else.
pub fn app(endpoint: Arc<Endpoint>) -> Router {
    Router::new()
        .route(&endpoint.prefix.webhook_path("{secret}"), any(webhook))
        .fallback(not_found)
        .with_state(endpoint)
}

async fn webhook(State(endpoint): State<Arc<Endpoint>>, request: Request) -> Response {
    let started = Instant::now();
    let response = match deliver(&endpoint, request).await {
        Ok(reply) => reply.into_response(),
        Err(refusal) => refusal.into_response(),
    };
    endpoint
        .metrics
        .answered(response.status(), started.elapsed());
    response
}

async fn not_found(State(endpoint): State<Arc<Endpoint>>) -> Response {
    endpoint
        .metrics
        .answered(Refusal::NotFound.status(), Duration::ZERO);
    Refusal::NotFound.into_response()
}

async fn deliver(endpoint: &Endpoint, request: Request) -> Result<Reply, Refusal> {
    let (parts, body) = request.into_parts();
    if let Some(filter) = &endpoint.source_filter {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        let forwarded_for = parts.headers.get_all("x-forwarded-for");
        if !peer.is_some_and(|peer| filter.admits(peer.0.ip(), forwarded_for.iter())) {
            return Err(Refusal::Forbidden);
        }
    }
    if parts.method != Method::POST {
        return Err(Refusal::MethodNotAllowed);
    }
    let route = find_route(endpoint, parts.uri.path()).ok_or(Refusal::NotFound)?;
    let bot = &route.bot.bot;
    let token = only_value(&parts.headers, SECRET_TOKEN_HEADER);
    if !token.is_some_and(|token| route.accepts_token(token.as_bytes())) {
        tracing::debug!(namespace = %bot.namespace, name = %bot.name, "refused a delivery with a bad secret token");
        return Err(Refusal::Unauthorized);
    }
    let limits = endpoint.limits;
    if declared_length(&parts.headers).is_some_and(|length| length > limits.max_body_bytes as u64) {
        return Err(Refusal::PayloadTooLarge);
    }
    let over_capacity = |scope: &'static str| {
        tracing::warn!(namespace = %bot.namespace, name = %bot.name, scope, "over capacity: answering 503");
        Refusal::OverCapacity
    };
    let _overall = endpoint
        .in_flight
        .try_enter(limits.max_in_flight)
        .ok_or_else(|| over_capacity("overall"))?;
    let _for_bot = route
        .bot
        .in_flight()
        .try_enter(limits.max_in_flight_per_bot)
        .ok_or_else(|| over_capacity("bot"))?;
    let body = read_body(body, limits).await?;
    let reply = endpoint
        .forwarder
        .forward(&route.bot, body)
        .await
        .map_err(|error| {
            endpoint.metrics.backend_error(error.kind());
            tracing::warn!(namespace = %bot.namespace, name = %bot.name, kind = error.kind(), %error, "could not forward an update");
            error.refusal()
        })?;
    tracing::debug!(namespace = %bot.namespace, name = %bot.name, status = reply.status.as_u16(), "forwarded an update");
    Ok(reply)
}

/// The live route of the secret in `path`. The table guard is dropped here,
/// before any await: a request holds the route, never the table.
fn find_route(endpoint: &Endpoint, path: &str) -> Option<Route> {
    let secret = path.strip_prefix(&endpoint.webhook_path)?;
    if !is_well_formed_secret(secret) {
        return None;
    }
    let table = endpoint.routes.load();
    table
        .lookup(&PathKey::of_secret(secret), Timestamp::now())
        .cloned()
}

fn only_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn read_body(body: Body, limits: Limits) -> Result<Bytes, Refusal> {
    let limited = Limited::new(body, limits.max_body_bytes);
    match tokio::time::timeout(limits.body_read_timeout, limited.collect()).await {
        Err(_elapsed) => Err(Refusal::RequestTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<LengthLimitError>() => Err(Refusal::PayloadTooLarge),
        Ok(Err(_broken)) => Err(Refusal::BadRequest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized_and_checked() {
        let parse = |raw: &str| raw.parse::<PathPrefix>();
        assert_eq!(parse("").unwrap().webhook_path("s"), "/webhook/s");
        assert_eq!(parse("/").unwrap().webhook_path("s"), "/webhook/s");
        assert_eq!(
            parse("/telegram/").unwrap().webhook_path("s"),
            "/telegram/webhook/s"
        );
        assert_eq!(
            parse("/a.b/c-d_~").unwrap().webhook_path("s"),
            "/a.b/c-d_~/webhook/s"
        );
        for bad in [
            "telegram", "/a//b", "/{x}", "/a b", "/..", "/a/./b", "/%41", "/*",
        ] {
            assert_eq!(parse(bad), Err(PrefixError), "{bad:?} passed");
        }
    }

    #[test]
    fn a_header_given_twice_has_no_single_value() {
        let mut headers = HeaderMap::new();
        assert!(only_value(&headers, SECRET_TOKEN_HEADER).is_none());
        headers.append(SECRET_TOKEN_HEADER, HeaderValue::from_static("a"));
        assert_eq!(only_value(&headers, SECRET_TOKEN_HEADER).unwrap(), "a");
        headers.append(SECRET_TOKEN_HEADER, HeaderValue::from_static("a"));
        assert!(only_value(&headers, SECRET_TOKEN_HEADER).is_none());
    }
}
