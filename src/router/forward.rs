//! The backend client: posts an update to a bot's backend over pooled
//! keep-alive connections and brings back its status, content type and body
//! (a webhook reply may carry a Bot API call). hyper's own pooled client: the
//! request is built from what the route table prepared, nothing is parsed per
//! request, no proxy is consulted and no redirect followed.

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, Method, Request, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

use super::{answer::Refusal, table::BotRoute};

/// Names the bot's namespace to the backend.
pub const NAMESPACE_HEADER: &str = "x-managedbot-namespace";
/// Names the bot to the backend.
pub const NAME_HEADER: &str = "x-managedbot-name";

/// Posts updates to backends.
#[derive(Clone, Debug)]
pub struct Forwarder {
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
    max_reply_bytes: usize,
}

/// What a backend answered, to be handed back to Telegram.
#[derive(Debug)]
pub struct Reply {
    /// The backend's status (never 410).
    pub status: StatusCode,
    /// The backend's Content-Type, if any.
    pub content_type: Option<HeaderValue>,
    /// The backend's Retry-After, which Telegram honours.
    pub retry_after: Option<HeaderValue>,
    /// The backend's body.
    pub body: Bytes,
}

/// Why an update did not reach its backend, or came back unusable.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No connection to the backend.
    #[error("could not connect to the backend: {0}")]
    Connect(String),
    /// No full answer within the backend timeout.
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend's body is over the limit.
    #[error("the backend's reply is over {0} bytes")]
    ReplyTooLarge(usize),
    /// The backend answered 410, which Telegram takes as "delete the webhook".
    #[error("the backend answered 410 Gone")]
    Gone,
    /// The exchange broke off (reset connection, bad HTTP).
    #[error("the request to the backend failed: {0}")]
    Request(String),
}

impl ForwardError {
    /// The metric label of this error.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout(_) => "timeout",
            Self::ReplyTooLarge(_) => "reply_too_large",
            Self::Gone => "gone",
            Self::Request(_) => "request",
        }
    }

    /// What Telegram is answered.
    pub fn refusal(&self) -> Refusal {
        match self {
            Self::Timeout(_) => Refusal::GatewayTimeout,
            _ => Refusal::BadGateway,
        }
    }
}

/// The backend client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("could not build the backend HTTP client: {0}")]
pub struct ClientBuildError(String);

const USER_AGENT: &str = concat!("managedbot-router/", env!("CARGO_PKG_VERSION"));

impl Forwarder {
    /// A client whose every exchange (connect, send, full reply) takes at most
    /// `timeout`, and whose replies are at most `max_reply_bytes`.
    pub fn new(timeout: Duration, max_reply_bytes: usize) -> Result<Self, ClientBuildError> {
        let mut connector = HttpConnector::new();
        connector.enforce_http(false);
        connector.set_nodelay(true);
        connector.set_keepalive(Some(Duration::from_secs(30)));
        connector.set_connect_timeout(Some(timeout));
        // https backends are checked against the system's CA certificates.
        let provider = || std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = match HttpsConnectorBuilder::new().with_provider_and_native_roots(provider()) {
            Ok(builder) => builder,
            Err(error) => {
                tracing::warn!(%error, "no system CA certificates: https backends will fail to verify");
                let config = rustls::ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .map_err(|e| ClientBuildError(e.to_string()))?
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                HttpsConnectorBuilder::new().with_tls_config(config)
            }
        };
        let https = tls.https_or_http().enable_http1().wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(https);
        Ok(Self {
            http,
            timeout,
            max_reply_bytes,
        })
    }

    /// Posts `body` unchanged to the bot's backend.
    pub async fn forward(&self, bot: &BotRoute, body: Bytes) -> Result<Reply, ForwardError> {
        tokio::time::timeout(self.timeout, self.exchange(bot, body))
            .await
            .map_err(|_| ForwardError::Timeout(self.timeout))?
    }

    async fn exchange(&self, bot: &BotRoute, body: Bytes) -> Result<Reply, ForwardError> {
        let request = Request::builder()
            .method(Method::POST)
            .uri(bot.backend.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(header::USER_AGENT, HeaderValue::from_static(USER_AGENT))
            .header(NAMESPACE_HEADER, bot.namespace_header.clone())
            .header(NAME_HEADER, bot.name_header.clone())
            .body(Full::new(body))
            .map_err(|e| ForwardError::Request(e.to_string()))?;
        let response = self.http.request(request).await.map_err(transport_error)?;
        if response.status() == StatusCode::GONE {
            return Err(ForwardError::Gone);
        }
        let too_large = ForwardError::ReplyTooLarge(self.max_reply_bytes);
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.max_reply_bytes as u64) {
            return Err(too_large);
        }
        let (parts, body) = response.into_parts();
        let body = match Limited::new(body, self.max_reply_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<LengthLimitError>() => return Err(too_large),
            Err(error) => return Err(ForwardError::Request(chain(&*error))),
        };
        Ok(Reply {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
            body,
        })
    }
}

fn transport_error(error: hyper_util::client::legacy::Error) -> ForwardError {
    let message = chain(&error);
    if error.is_connect() {
        ForwardError::Connect(message)
    } else {
        ForwardError::Request(message)
    }
}

/// An error and its causes, `: `-separated (hyper's errors name no URL).
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if let Some(content_type) = self.content_type {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        if let Some(retry_after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after);
        }
        response
    }
}
