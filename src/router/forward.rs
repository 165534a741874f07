//! The backend client: posts an update to a bot's backend over pooled
//! keep-alive connections and brings back its status, content type and body
//! (a webhook reply may carry a Bot API call).

use std::time::Duration;

use axum::{
    body::{Body, Bytes},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{answer::Refusal, table::BotRoute};

/// Names the bot's namespace to the backend.
pub const NAMESPACE_HEADER: &str = "x-managedbot-namespace";
/// Names the bot to the backend.
pub const NAME_HEADER: &str = "x-managedbot-name";

/// Posts updates to backends.
#[derive(Clone, Debug)]
pub struct Forwarder {
    http: reqwest::Client,
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

impl Forwarder {
    /// A client whose every exchange (connect, send, full reply) takes at most
    /// `timeout`, and whose replies are at most `max_reply_bytes`.
    pub fn new(timeout: Duration, max_reply_bytes: usize) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            // A proxy meant for reaching Telegram must not carry in-cluster traffic.
            .no_proxy()
            // Following a redirect would post the update somewhere the bot did not name.
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("managedbot-router/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientBuildError(e.without_url().to_string()))?;
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
        let mut response = self
            .http
            .post(bot.backend.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(NAMESPACE_HEADER, &bot.bot.namespace)
            .header(NAME_HEADER, &bot.bot.name)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        if response.status() == StatusCode::GONE {
            return Err(ForwardError::Gone);
        }
        let too_large = ForwardError::ReplyTooLarge(self.max_reply_bytes);
        if response
            .content_length()
            .is_some_and(|length| length > self.max_reply_bytes as u64)
        {
            return Err(too_large);
        }
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
        let mut collected = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
            if collected.len() + chunk.len() > self.max_reply_bytes {
                return Err(too_large);
            }
            collected.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            content_type,
            retry_after,
            body: collected.into(),
        })
    }
}

fn transport_error(error: reqwest::Error) -> ForwardError {
    let connect = error.is_connect();
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    if connect {
        ForwardError::Connect(message)
    } else {
        ForwardError::Request(message)
    }
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
