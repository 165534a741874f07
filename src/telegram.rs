//! The Telegram Bot API client: the four calls the operator makes (`getMe`,
//! `setWebhook`, `getWebhookInfo`, `deleteWebhook`), Telegram's answer
//! envelope mapped onto one [`Error`] type, and the [`BotToken`] credential.
//!
//! The bot token travels in the request path, so every URL this module builds
//! is a secret. It never reaches an error message, a `Debug` output or a
//! tracing event: reqwest errors lose their URL before they are formatted, and
//! every string that goes into an [`Error`] is scrubbed of the token (and, for
//! setWebhook, of the webhook secrets) in case a proxy echoes the path back.

use std::fmt;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Telegram's hosted Bot API root.
pub const DEFAULT_API_BASE: &str = "https://api.telegram.org";

/// What replaces a secret in any text this module produces.
const REDACTED: &str = "<redacted>";
/// Answers are small JSON objects; anything bigger is cut here (and then
/// fails to parse) instead of being buffered without bound.
const MAX_BODY_BYTES: usize = 1 << 20;
/// Telegram's descriptions are one short line; longer ones are cut here so
/// they fit in a condition message.
const MAX_DESCRIPTION_CHARS: usize = 1000;
/// 429 without `retry_after` in the body or a `Retry-After` header; also the
/// least wait reported (a `retry_after` of 0 would invite a hot loop).
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------
// The token
// ---------------------------------------------------------------------------

/// A bot token. Debug prints `BotToken(<redacted>)`; there is no Display. Never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct BotToken(String);

impl BotToken {
    /// Loose validation as the facts sheet says: digits, ':', a non-empty
    /// `[A-Za-z0-9_-]` part. Surrounding whitespace/newlines are trimmed
    /// first (tokens pasted into Secrets often end in `\n`).
    pub fn parse(raw: &str) -> Result<BotToken, TokenFormatError> {
        let token = raw.trim();
        if token.is_empty() {
            return Err(TokenFormatError::Empty);
        }
        let (id, secret) = token.split_once(':').ok_or(TokenFormatError::Malformed)?;
        let id_ok =
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && id.parse::<i64>().is_ok();
        let secret_ok = !secret.is_empty()
            && secret
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if id_ok && secret_ok {
            Ok(BotToken(token.to_owned()))
        } else {
            Err(TokenFormatError::Malformed)
        }
    }

    /// The numeric bot id before the colon (public, safe to log).
    pub fn bot_id(&self) -> i64 {
        // `parse` guarantees the prefix is an i64.
        self.0
            .split_once(':')
            .and_then(|(id, _)| id.parse().ok())
            .unwrap_or_default()
    }

    /// Hex SHA-256 of the token (to notice a changed token without keeping it).
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(self.0.as_bytes())
            .iter()
            .fold(String::with_capacity(64), |mut hex, byte| {
                use fmt::Write as _;
                let _ = write!(hex, "{byte:02x}");
                hex
            })
    }

    /// The token itself: only for building the request path.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The part after the colon: the part that is actually secret.
    fn secret_part(&self) -> &str {
        self.0
            .split_once(':')
            .map_or(self.0.as_str(), |(_, secret)| secret)
    }
}

impl fmt::Debug for BotToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BotToken(<redacted>)")
    }
}

/// Why a string is not a bot token. The messages never include the token text.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TokenFormatError {
    #[error("the token is empty")]
    Empty,
    #[error("the token is not in Telegram's format <bot id>:<secret>")]
    Malformed,
}

// ---------------------------------------------------------------------------
// Types of the Bot API
// ---------------------------------------------------------------------------

/// The bot, as getMe returns it (the bot-only flags are ignored).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct User {
    pub id: i64,
    pub is_bot: bool,
    pub first_name: String,
    #[serde(default)]
    pub username: Option<String>,
}

/// setWebhook's parameters. Debug redacts `secret_token` and the last path
/// segment of `url` (where the webhook secret lives).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct SetWebhook {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<i32>,
    /// `Some(vec![])` means Telegram's default set; `None` keeps the previous setting.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_updates: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drop_pending_updates: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
}

impl fmt::Debug for SetWebhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetWebhook")
            .field("url", &Verbatim(&redact_last_segment(&self.url)))
            .field(
                "secret_token",
                &self.secret_token.as_ref().map(|_| Verbatim(REDACTED)),
            )
            .field("max_connections", &self.max_connections)
            .field("allowed_updates", &self.allowed_updates)
            .field("drop_pending_updates", &self.drop_pending_updates)
            .field("ip_address", &self.ip_address)
            .finish()
    }
}

/// Writes its text as is (no quotes) in Debug output.
struct Verbatim<'a>(&'a str);

impl fmt::Debug for Verbatim<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// `https://bots.example.com/webhook/<redacted>`: the webhook URL without the
/// path secret; an unparseable URL is redacted whole.
fn redact_last_segment(raw: &str) -> String {
    if raw.is_empty() {
        return String::new();
    }
    let Ok(mut url) = url::Url::parse(raw) else {
        return REDACTED.to_owned();
    };
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_password(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty();
        segments.pop();
        segments.push(REDACTED);
    } else {
        return REDACTED.to_owned();
    }
    // `push` percent-encodes the angle brackets; show them plainly.
    url.as_str().replace("%3Credacted%3E", REDACTED)
}

/// getWebhookInfo's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Deserialize)]
pub struct WebhookInfo {
    pub url: String,
    #[serde(default)]
    pub has_custom_certificate: bool,
    #[serde(default)]
    pub pending_update_count: i64,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub last_error_date: Option<i64>,
    #[serde(default)]
    pub last_error_message: Option<String>,
    #[serde(default)]
    pub last_synchronization_error_date: Option<i64>,
    #[serde(default)]
    pub max_connections: Option<i64>,
    #[serde(default)]
    pub allowed_updates: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything a Bot API call can end in. No message ever contains the token.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Error {
    /// 401: wrong or revoked token.
    #[error("Telegram refused the token (401): {description}")]
    Unauthorized { description: String },
    /// 429: wait at least retry_after.
    #[error("Telegram rate limit: retry after {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    /// Other 4xx with Telegram's description (400 bad webhook, 404 not found, 409 conflict, ...).
    #[error("Telegram refused the call ({code}): {description}")]
    Rejected { code: u16, description: String },
    /// 5xx, or a body that is not Telegram's envelope (e.g. an HTML 502 page).
    #[error("Telegram is unavailable ({code})")]
    Unavailable { code: u16 },
    #[error("Telegram did not answer within {}s", .0.as_secs())]
    Timeout(Duration),
    /// Connection refused, DNS, TLS — message from reqwest with the URL stripped.
    #[error("could not reach Telegram: {0}")]
    Transport(String),
    /// A 2xx whose body we could not understand.
    #[error("unexpected answer from Telegram: {0}")]
    Protocol(String),
}

impl Error {
    /// True for errors worth retrying with backoff (Unavailable, Timeout, Transport, RateLimited).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable { .. }
                | Error::Timeout(_)
                | Error::Transport(_)
                | Error::RateLimited { .. }
        )
    }

    /// A stable CamelCase label for metrics and condition reasons.
    pub fn label(&self) -> &'static str {
        match self {
            Error::Unauthorized { .. } => "Unauthorized",
            Error::RateLimited { .. } => "RateLimited",
            Error::Rejected { .. } => "Rejected",
            Error::Unavailable { .. } => "Unavailable",
            Error::Timeout(_) => "Timeout",
            Error::Transport(_) => "Transport",
            Error::Protocol(_) => "Protocol",
        }
    }
}

/// Removes secrets from text that is about to go into an [`Error`].
struct Redactor<'a> {
    secrets: Vec<&'a str>,
}

impl<'a> Redactor<'a> {
    fn new(token: &'a BotToken, extra: &[&'a str]) -> Self {
        let mut secrets = vec![token.expose()];
        // The secret part alone also catches a percent-encoded or partial echo
        // of the path; a very short one is covered by the whole token.
        if token.secret_part().len() >= 4 {
            secrets.push(token.secret_part());
        }
        secrets.extend(extra.iter().copied().filter(|s| s.len() >= 4));
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Redactor { secrets }
    }

    fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret) {
                text = text.replace(secret, REDACTED);
            }
        }
        text
    }

    /// Scrubbed and cut to a length that fits a condition message.
    fn description(&self, text: &str) -> String {
        let text = self.scrub(text.trim());
        match text.char_indices().nth(MAX_DESCRIPTION_CHARS) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text,
        }
    }
}

/// A reqwest error, its URL removed, with its source chain.
fn transport_error(error: reqwest::Error, timeout: Duration, redactor: &Redactor<'_>) -> Error {
    if error.is_timeout() {
        return Error::Timeout(timeout);
    }
    let error = error.without_url();
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Error::Transport(redactor.scrub(&message))
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

/// A Bot API client; cheap to clone (one connection pool).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The base may carry a proxy's credentials: show the origin and path only.
        let mut base = self.base.clone();
        let _ = base.set_username("");
        let _ = base.set_password(None);
        f.debug_struct("Client")
            .field("base", &Verbatim(base.as_str()))
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Telegram's answer envelope.
#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    result: Option<serde_json::Value>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    parameters: Option<serde_json::Value>,
}

impl Envelope {
    fn retry_after(&self) -> Option<Duration> {
        let value = self.parameters.as_ref()?.get("retry_after")?;
        let seconds = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(|s| s.ceil() as u64)
        })?;
        Some(Duration::from_secs(seconds))
    }
}

/// A successful call: the result and Telegram's description.
struct Answer<T> {
    result: T,
    description: Option<String>,
}

/// What came back over HTTP, before interpretation.
struct RawReply {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl Client {
    /// `base` is the API root, default [`DEFAULT_API_BASE`] (tests pass
    /// `http://127.0.0.1:PORT`); a path in it is kept. Every call has `timeout`.
    pub fn new(base: &url::Url, timeout: Duration) -> Result<Client, Error> {
        if !matches!(base.scheme(), "http" | "https")
            || base.cannot_be_a_base()
            || base.host_str().is_none()
        {
            return Err(Error::Transport(
                "the Telegram API base URL must be an http or https URL with a host".to_owned(),
            ));
        }
        let mut base = base.clone();
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // Telegram never redirects; following one would resend the call elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("managedbot/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                let e = e.without_url();
                Error::Transport(format!("could not build the HTTP client: {e}"))
            })?;
        Ok(Client {
            http,
            base,
            timeout,
        })
    }

    /// getMe: who the token belongs to.
    pub async fn get_me(&self, token: &BotToken) -> Result<User, Error> {
        self.call(token, "getMe", &serde_json::json!({}), &[])
            .await
            .map(|answer| answer.result)
    }

    /// Returns Telegram's description, e.g. "Webhook was set" / "Webhook is
    /// already set" (empty if Telegram sent none).
    pub async fn set_webhook(
        &self,
        token: &BotToken,
        params: &SetWebhook,
    ) -> Result<String, Error> {
        // The webhook secret is a path segment of the URL: hide long segments
        // (not the host) if an answer echoes them.
        let path = params
            .url
            .split_once("://")
            .map_or(params.url.as_str(), |(_, rest)| {
                rest.find('/').map_or("", |slash| &rest[slash..])
            });
        let mut secrets: Vec<&str> = path
            .split(['/', '?', '#', '&', '='])
            .filter(|segment| segment.len() >= 16)
            .collect();
        secrets.extend(params.secret_token.as_deref());
        let answer = self
            .call::<serde_json::Value>(token, "setWebhook", params, &secrets)
            .await?;
        expect_true("setWebhook", answer)
    }

    pub async fn get_webhook_info(&self, token: &BotToken) -> Result<WebhookInfo, Error> {
        self.call(token, "getWebhookInfo", &serde_json::json!({}), &[])
            .await
            .map(|answer| answer.result)
    }

    /// Returns Telegram's description, e.g. "Webhook was deleted" / "Webhook
    /// is already deleted" (empty if Telegram sent none).
    pub async fn delete_webhook(
        &self,
        token: &BotToken,
        drop_pending_updates: bool,
    ) -> Result<String, Error> {
        let body = serde_json::json!({ "drop_pending_updates": drop_pending_updates });
        let answer = self
            .call::<serde_json::Value>(token, "deleteWebhook", &body, &[])
            .await?;
        expect_true("deleteWebhook", answer)
    }

    /// `{base}/bot{token}/{method}`.
    fn endpoint(&self, token: &BotToken, method: &str) -> Result<url::Url, Error> {
        let mut url = self.base.clone();
        {
            let Ok(mut segments) = url.path_segments_mut() else {
                return Err(Error::Transport(
                    "the Telegram API base URL cannot carry a path".to_owned(),
                ));
            };
            segments.pop_if_empty();
            segments.push(&format!("bot{}", token.expose()));
            segments.push(method);
        }
        Ok(url)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        token: &BotToken,
        method: &'static str,
        body: &(impl Serialize + ?Sized),
        extra_secrets: &[&str],
    ) -> Result<Answer<T>, Error> {
        let started = Instant::now();
        let redactor = Redactor::new(token, extra_secrets);
        let outcome = match self.endpoint(token, method) {
            Ok(url) => match tokio::time::timeout(self.timeout, self.exchange(url, body)).await {
                Ok(Ok(reply)) => interpret(method, reply, &redactor),
                Ok(Err(error)) => Err(transport_error(error, self.timeout, &redactor)),
                Err(_elapsed) => Err(Error::Timeout(self.timeout)),
            },
            Err(error) => Err(error),
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match &outcome {
            Ok(_) => tracing::debug!(
                method,
                bot_id = token.bot_id(),
                outcome = "Ok",
                elapsed_ms,
                "Telegram Bot API call"
            ),
            Err(error) => tracing::debug!(
                method,
                bot_id = token.bot_id(),
                outcome = error.label(),
                elapsed_ms,
                error = %error,
                "Telegram Bot API call"
            ),
        }
        outcome
    }

    async fn exchange(
        &self,
        url: url::Url,
        body: &(impl Serialize + ?Sized),
    ) -> Result<RawReply, reqwest::Error> {
        let mut response = self.http.post(url).json(body).send().await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            let room = MAX_BODY_BYTES - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_BODY_BYTES {
                break;
            }
        }
        Ok(RawReply {
            status,
            retry_after,
            body,
        })
    }
}

/// setWebhook / deleteWebhook answer `result: true`.
fn expect_true(method: &str, answer: Answer<serde_json::Value>) -> Result<String, Error> {
    if answer.result == serde_json::Value::Bool(true) {
        Ok(answer.description.unwrap_or_default())
    } else {
        Err(Error::Protocol(format!(
            "{method} answered ok with a result other than true"
        )))
    }
}

/// Maps an HTTP answer onto a result or an [`Error`].
fn interpret<T: DeserializeOwned>(
    method: &str,
    reply: RawReply,
    redactor: &Redactor<'_>,
) -> Result<Answer<T>, Error> {
    let status = reply.status;
    let success = (200..300).contains(&status);
    let envelope = serde_json::from_slice::<Envelope>(&reply.body).ok();
    match envelope {
        Some(envelope) if envelope.ok && success => {
            let Some(result) = envelope.result else {
                return Err(Error::Protocol(format!(
                    "{method} answered ok without a result"
                )));
            };
            let result = serde_json::from_value(result).map_err(|e| {
                Error::Protocol(
                    redactor.description(&format!("could not decode the result of {method}: {e}")),
                )
            })?;
            Ok(Answer {
                result,
                description: envelope.description.map(|d| redactor.description(&d)),
            })
        }
        Some(envelope) if !envelope.ok => {
            let code = envelope
                .error_code
                .and_then(|code| u16::try_from(code).ok())
                .filter(|code| (100..=599).contains(code))
                .or((!success).then_some(status));
            let description = envelope
                .description
                .as_deref()
                .map(|d| redactor.description(d));
            match code {
                Some(429) => Err(Error::RateLimited {
                    retry_after: envelope
                        .retry_after()
                        .or(reply.retry_after)
                        .unwrap_or(DEFAULT_RETRY_AFTER)
                        .max(DEFAULT_RETRY_AFTER),
                }),
                Some(code) => Err(failure(method, code, description, reply.retry_after)),
                None => Err(Error::Protocol(format!(
                    "{method} answered ok=false without an error code"
                ))),
            }
        }
        // Not Telegram's envelope (or ok=true with a failure status): go by the status.
        _ if success => Err(Error::Protocol(format!(
            "{method} answered HTTP {status} with a body that is not Telegram's JSON envelope"
        ))),
        _ => Err(failure(method, status, None, reply.retry_after)),
    }
}

/// The error for a failure `code`; `description` is Telegram's (already
/// scrubbed) or, when the body was not Telegram's, a generic one is made up.
fn failure(
    method: &str,
    code: u16,
    description: Option<String>,
    retry_after_header: Option<Duration>,
) -> Error {
    let generic = || {
        let reason = reqwest::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("HTTP error");
        format!("{reason} (not a Telegram JSON answer)")
    };
    match code {
        401 => Error::Unauthorized {
            description: description.unwrap_or_else(generic),
        },
        429 => Error::RateLimited {
            retry_after: retry_after_header
                .unwrap_or(DEFAULT_RETRY_AFTER)
                .max(DEFAULT_RETRY_AFTER),
        },
        400..=499 => Error::Rejected {
            code,
            description: description.unwrap_or_else(generic),
        },
        500..=599 => Error::Unavailable { code },
        200..=299 => Error::Protocol(format!("{method} answered ok=false with error code {code}")),
        // 1xx / 3xx: something between us and Telegram (Telegram never redirects).
        _ => Error::Unavailable { code },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use axum::extract::{Request, State};
    use axum::http::{StatusCode, header};
    use axum::response::Response;
    use serde_json::{Value, json};

    use super::*;

    const TOKEN: &str = "123456:SECRETPARTabcdefghijklmnopqrstuvwxyz012";
    const SECRET_PART: &str = "SECRETPARTabcdefghijklmnopqrstuvwxyz012";

    fn token() -> BotToken {
        BotToken::parse(TOKEN).unwrap()
    }

    // --- a tiny fake Bot API -------------------------------------------------

    #[derive(Clone, Debug)]
    struct Seen {
        http_method: String,
        path: String,
        query: Option<String>,
        content_type: Option<String>,
        body: Value,
        raw: String,
    }

    #[derive(Clone)]
    struct Reply {
        status: u16,
        body: String,
        headers: Vec<(&'static str, String)>,
        delay: Duration,
    }

    impl Reply {
        fn raw(status: u16, body: impl Into<String>) -> Self {
            Reply {
                status,
                body: body.into(),
                headers: vec![("content-type", "text/html".into())],
                delay: Duration::ZERO,
            }
        }
        fn json(status: u16, body: Value) -> Self {
            Reply {
                status,
                body: body.to_string(),
                headers: vec![("content-type", "application/json".into())],
                delay: Duration::ZERO,
            }
        }
        fn ok(result: Value) -> Self {
            Reply::json(200, json!({ "ok": true, "result": result }))
        }
        fn fail(code: u16, description: &str) -> Self {
            Reply::json(
                code,
                json!({ "ok": false, "error_code": code, "description": description }),
            )
        }
        fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers.push((name, value.to_owned()));
            self
        }
        fn delay(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }
    }

    type Responder = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

    #[derive(Clone)]
    struct Shared {
        responder: Responder,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    struct Fake {
        base: url::Url,
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    impl Fake {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
        fn only(&self) -> Seen {
            let seen = self.seen();
            assert_eq!(seen.len(), 1, "expected exactly one request: {seen:?}");
            seen[0].clone()
        }
        fn client(&self) -> Client {
            Client::new(&self.base, Duration::from_secs(5)).unwrap()
        }
    }

    async fn start(responder: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            responder: Arc::new(responder),
            seen: seen.clone(),
        };
        let app = axum::Router::new().fallback(serve).with_state(shared);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fake {
            base: url::Url::parse(&format!("http://{addr}")).unwrap(),
            seen,
        }
    }

    async fn serve(State(shared): State<Shared>, request: Request) -> Response {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20)
            .await
            .unwrap_or_default();
        let raw = String::from_utf8_lossy(&bytes).into_owned();
        let seen = Seen {
            http_method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw,
        };
        let reply = (shared.responder)(&seen);
        shared.seen.lock().unwrap().push(seen);
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        let mut response = Response::new(axum::body::Body::from(reply.body));
        *response.status_mut() = StatusCode::from_u16(reply.status).unwrap();
        for (name, value) in reply.headers {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        response
    }

    /// A port nobody listens on.
    async fn closed_port() -> url::Url {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        url::Url::parse(&format!("http://{addr}")).unwrap()
    }

    fn assert_no_token(text: &str) {
        assert!(!text.contains(TOKEN), "token leaked: {text}");
        assert!(!text.contains(SECRET_PART), "token secret leaked: {text}");
    }

    fn assert_request(seen: &Seen, method: &str) {
        assert_eq!(seen.http_method, "POST");
        assert_eq!(seen.path, format!("/bot{TOKEN}/{method}"));
        assert_eq!(seen.query, None);
        assert_eq!(seen.content_type.as_deref(), Some("application/json"));
        assert!(seen.body.is_object(), "body is a JSON object: {}", seen.raw);
        assert_no_token(&seen.raw);
    }

    // --- requests and successful answers --------------------------------------

    #[tokio::test]
    async fn get_me_request_and_result() {
        let fake = start(|_| {
            Reply::ok(json!({
                "id": 123456, "is_bot": true, "first_name": "Support", "username": "support_bot",
                "can_join_groups": true, "supports_inline_queries": false, "has_main_web_app": false
            }))
        })
        .await;
        let user = fake.client().get_me(&token()).await.unwrap();
        assert_eq!(
            user,
            User {
                id: 123456,
                is_bot: true,
                first_name: "Support".into(),
                username: Some("support_bot".into())
            }
        );
        let seen = fake.only();
        assert_request(&seen, "getMe");
        assert_eq!(seen.body, json!({}));
    }

    #[tokio::test]
    async fn get_me_without_username() {
        let fake =
            start(|_| Reply::ok(json!({ "id": 5, "is_bot": true, "first_name": "X" }))).await;
        assert_eq!(fake.client().get_me(&token()).await.unwrap().username, None);
    }

    #[tokio::test]
    async fn set_webhook_sends_every_parameter() {
        let fake = start(|_| {
            Reply::json(
                200,
                json!({ "ok": true, "result": true, "description": "Webhook was set" }),
            )
        })
        .await;
        let params = SetWebhook {
            url: "https://bots.example.com/webhook/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcde"
                .into(),
            secret_token: Some("tok_en-123".into()),
            max_connections: Some(40),
            allowed_updates: Some(vec!["message".into(), "callback_query".into()]),
            drop_pending_updates: Some(false),
            ip_address: Some("203.0.113.7".into()),
        };
        let description = fake.client().set_webhook(&token(), &params).await.unwrap();
        assert_eq!(description, "Webhook was set");
        let seen = fake.only();
        assert_request(&seen, "setWebhook");
        assert_eq!(
            seen.body,
            json!({
                "url": "https://bots.example.com/webhook/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcde",
                "secret_token": "tok_en-123",
                "max_connections": 40,
                "allowed_updates": ["message", "callback_query"],
                "drop_pending_updates": false,
                "ip_address": "203.0.113.7",
            })
        );
        assert!(
            seen.body["allowed_updates"].is_array(),
            "a plain JSON array, not a JSON-encoded string"
        );
    }

    #[tokio::test]
    async fn set_webhook_omits_unset_parameters() {
        let fake = start(|_| {
            Reply::json(
                200,
                json!({ "ok": true, "result": true, "description": "Webhook is already set" }),
            )
        })
        .await;
        let params = SetWebhook {
            url: "https://bots.example.com/webhook/x".into(),
            secret_token: None,
            max_connections: None,
            allowed_updates: Some(vec![]),
            drop_pending_updates: None,
            ip_address: None,
        };
        assert_eq!(
            fake.client().set_webhook(&token(), &params).await.unwrap(),
            "Webhook is already set"
        );
        assert_eq!(
            fake.only().body,
            json!({ "url": "https://bots.example.com/webhook/x", "allowed_updates": [] })
        );
    }

    #[tokio::test]
    async fn set_webhook_result_false_is_protocol() {
        let fake = start(|_| Reply::ok(json!(false))).await;
        let params = SetWebhook {
            url: String::new(),
            secret_token: None,
            max_connections: None,
            allowed_updates: None,
            drop_pending_updates: None,
            ip_address: None,
        };
        let error = fake
            .client()
            .set_webhook(&token(), &params)
            .await
            .unwrap_err();
        assert_eq!(error.label(), "Protocol");
    }

    #[tokio::test]
    async fn get_webhook_info_full_and_empty() {
        let fake = start(|seen| {
            if seen.path.ends_with("getWebhookInfo") && seen.raw == "{}" {
                Reply::ok(json!({
                    "url": "https://bots.example.com/webhook/s", "has_custom_certificate": false,
                    "pending_update_count": 3, "ip_address": "203.0.113.7", "last_error_date": 1700000000,
                    "last_error_message": "Wrong response from the webhook: 502 Bad Gateway",
                    "last_synchronization_error_date": 1700000001, "max_connections": 40,
                    "allowed_updates": ["message"], "something_new": 1
                }))
            } else {
                Reply::ok(json!({ "url": "", "has_custom_certificate": false, "pending_update_count": 0 }))
            }
        })
        .await;
        let info = fake.client().get_webhook_info(&token()).await.unwrap();
        assert_eq!(
            info,
            WebhookInfo {
                url: "https://bots.example.com/webhook/s".into(),
                has_custom_certificate: false,
                pending_update_count: 3,
                ip_address: Some("203.0.113.7".into()),
                last_error_date: Some(1700000000),
                last_error_message: Some("Wrong response from the webhook: 502 Bad Gateway".into()),
                last_synchronization_error_date: Some(1700000001),
                max_connections: Some(40),
                allowed_updates: Some(vec!["message".into()]),
            }
        );
        let seen = fake.only();
        assert_request(&seen, "getWebhookInfo");
        assert_eq!(seen.body, json!({}));

        let empty = start(|_| {
            Reply::ok(
                json!({ "url": "", "has_custom_certificate": false, "pending_update_count": 0 }),
            )
        })
        .await;
        assert_eq!(
            empty.client().get_webhook_info(&token()).await.unwrap(),
            WebhookInfo::default()
        );
    }

    #[tokio::test]
    async fn delete_webhook_request_and_description() {
        let fake = start(|_| {
            Reply::json(
                200,
                json!({ "ok": true, "result": true, "description": "Webhook was deleted" }),
            )
        })
        .await;
        let client = fake.client();
        assert_eq!(
            client.delete_webhook(&token(), true).await.unwrap(),
            "Webhook was deleted"
        );
        assert_eq!(
            client.delete_webhook(&token(), false).await.unwrap(),
            "Webhook was deleted"
        );
        let seen = fake.seen();
        assert_request(&seen[0], "deleteWebhook");
        assert_eq!(seen[0].body, json!({ "drop_pending_updates": true }));
        assert_eq!(seen[1].body, json!({ "drop_pending_updates": false }));
    }

    #[tokio::test]
    async fn ok_without_description_gives_empty_string() {
        let fake = start(|_| Reply::ok(json!(true))).await;
        assert_eq!(
            fake.client().delete_webhook(&token(), false).await.unwrap(),
            ""
        );
    }

    #[tokio::test]
    async fn base_path_is_kept() {
        let fake =
            start(|_| Reply::ok(json!({ "id": 1, "is_bot": true, "first_name": "B" }))).await;
        for suffix in ["tg", "tg/"] {
            let base = fake.base.join(suffix).unwrap();
            Client::new(&base, Duration::from_secs(5))
                .unwrap()
                .get_me(&token())
                .await
                .unwrap();
        }
        let paths: Vec<String> = fake.seen().into_iter().map(|s| s.path).collect();
        assert_eq!(
            paths,
            vec![
                format!("/tg/bot{TOKEN}/getMe"),
                format!("/tg/bot{TOKEN}/getMe")
            ]
        );
    }

    #[test]
    fn new_refuses_bases_that_cannot_take_a_path() {
        for base in [
            "mailto:someone@example.com",
            "ftp://example.com",
            "data:text/plain,x",
        ] {
            let base = url::Url::parse(base).unwrap();
            assert!(
                Client::new(&base, Duration::from_secs(1)).is_err(),
                "{base}"
            );
        }
        let client = Client::new(
            &url::Url::parse(DEFAULT_API_BASE).unwrap(),
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(format!("{client:?}").contains("https://api.telegram.org/"));
        let with_credentials = url::Url::parse("http://user:hunter2@proxy.example/tg").unwrap();
        let client = Client::new(&with_credentials, Duration::from_secs(1)).unwrap();
        let debug = format!("{client:?}");
        assert!(
            !debug.contains("hunter2") && !debug.contains("user"),
            "{debug}"
        );
    }

    // --- failures --------------------------------------------------------------

    #[tokio::test]
    async fn unauthorized_401() {
        let fake = start(|_| Reply::fail(401, "Unauthorized")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::Unauthorized {
                description: "Unauthorized".into()
            }
        );
        assert!(!error.is_transient());
        assert_eq!(error.label(), "Unauthorized");
    }

    #[tokio::test]
    async fn rate_limited_with_parameters_retry_after() {
        let fake = start(|_| {
            Reply::json(
                429,
                json!({ "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 7", "parameters": { "retry_after": 7 } }),
            )
            .header("retry-after", "3")
        })
        .await;
        let error = fake.client().get_webhook_info(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::RateLimited {
                retry_after: Duration::from_secs(7)
            }
        );
        assert!(error.is_transient());
        assert_eq!(error.to_string(), "Telegram rate limit: retry after 7s");
    }

    #[tokio::test]
    async fn rate_limited_with_only_a_header() {
        let fake = start(|_| {
            Reply::fail(429, "Too Many Requests: retry after 5").header("retry-after", "5")
        })
        .await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::RateLimited {
                retry_after: Duration::from_secs(5)
            }
        );

        let fake = start(|_| Reply::raw(429, "slow down").header("retry-after", " 9 ")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::RateLimited {
                retry_after: Duration::from_secs(9)
            }
        );
    }

    #[tokio::test]
    async fn rate_limited_without_any_hint_waits_one_second() {
        let fake = start(|_| Reply::fail(429, "Too Many Requests")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::RateLimited {
                retry_after: Duration::from_secs(1)
            }
        );

        let fake = start(|_| {
            Reply::json(429, json!({ "ok": false, "error_code": 429, "description": "x", "parameters": { "retry_after": 0 } }))
        })
        .await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::RateLimited {
                retry_after: Duration::from_secs(1)
            }
        );
    }

    #[tokio::test]
    async fn rejected_keeps_telegram_description() {
        let description =
            "Bad Request: bad webhook: Webhook can be set up only on ports 80, 88, 443 or 8443";
        let fake = start(move |_| Reply::fail(400, description)).await;
        let params = SetWebhook {
            url: "https://bots.example.com:9999/webhook/x".into(),
            secret_token: None,
            max_connections: None,
            allowed_updates: None,
            drop_pending_updates: None,
            ip_address: None,
        };
        let error = fake
            .client()
            .set_webhook(&token(), &params)
            .await
            .unwrap_err();
        assert_eq!(
            error,
            Error::Rejected {
                code: 400,
                description: description.into()
            }
        );
        assert!(!error.is_transient());
        assert_eq!(
            error.to_string(),
            format!("Telegram refused the call (400): {description}")
        );
    }

    #[tokio::test]
    async fn conflict_409_is_rejected() {
        let fake = start(|_| Reply::fail(409, "Conflict: terminated by other setWebhook")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::Rejected {
                code: 409,
                description: "Conflict: terminated by other setWebhook".into()
            }
        );
    }

    #[tokio::test]
    async fn non_json_4xx_is_rejected_with_a_generic_description() {
        let fake = start(|_| Reply::raw(404, "<html>nope</html>")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(
            error,
            Error::Rejected {
                code: 404,
                description: "Not Found (not a Telegram JSON answer)".into()
            }
        );
    }

    #[tokio::test]
    async fn html_502_is_unavailable() {
        let fake =
            start(|_| Reply::raw(502, "<html><body><h1>502 Bad Gateway</h1></body></html>")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(error, Error::Unavailable { code: 502 });
        assert!(error.is_transient());
        assert_eq!(error.label(), "Unavailable");
    }

    #[tokio::test]
    async fn envelope_500_is_unavailable() {
        let fake = start(|_| Reply::fail(500, "Internal Server Error")).await;
        let error = fake.client().get_webhook_info(&token()).await.unwrap_err();
        assert_eq!(error, Error::Unavailable { code: 500 });
    }

    #[tokio::test]
    async fn error_code_wins_over_http_status() {
        // An envelope's error_code is Telegram's word even if a proxy changed the status.
        let fake = start(|_| {
            Reply::json(
                200,
                json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }),
            )
        })
        .await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(error.label(), "Unauthorized");
    }

    #[tokio::test]
    async fn slow_server_times_out() {
        let fake = start(|_| Reply::ok(json!(true)).delay(Duration::from_secs(10))).await;
        let timeout = Duration::from_millis(300);
        let client = Client::new(&fake.base, timeout).unwrap();
        let started = Instant::now();
        let error = client.get_me(&token()).await.unwrap_err();
        assert_eq!(error, Error::Timeout(timeout));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.is_transient());
    }

    #[tokio::test]
    async fn closed_port_is_transport() {
        let client = Client::new(&closed_port().await, Duration::from_secs(5)).unwrap();
        let error = client.get_me(&token()).await.unwrap_err();
        let Error::Transport(message) = &error else {
            panic!("expected Transport, got {error:?}")
        };
        assert!(!message.is_empty());
        assert!(!message.contains("http://"), "no URL in {message}");
        assert!(error.is_transient());
        assert_no_token(&error.to_string());
    }

    #[tokio::test]
    async fn garbage_2xx_is_protocol() {
        let fake = start(|_| Reply::raw(200, "<html>hello</html>")).await;
        let error = fake.client().get_me(&token()).await.unwrap_err();
        assert_eq!(error.label(), "Protocol");
        assert!(!error.is_transient());

        let fake = start(|_| {
            Reply::ok(json!({ "id": "not a number", "is_bot": true, "first_name": "B" }))
        })
        .await;
        assert_eq!(
            fake.client().get_me(&token()).await.unwrap_err().label(),
            "Protocol"
        );

        let fake = start(|_| Reply::json(200, json!({ "ok": true }))).await;
        assert_eq!(
            fake.client()
                .get_webhook_info(&token())
                .await
                .unwrap_err()
                .label(),
            "Protocol"
        );
    }

    // --- the token never leaks ----------------------------------------------------

    /// A server that echoes the request path (which holds the token) in every
    /// place an answer can carry text.
    async fn every_error_with_echoes() -> Vec<Error> {
        let echo = |status: u16| {
            move |seen: &Seen| {
                let path = &seen.path;
                let encoded = path.replace(':', "%3A");
                Reply::json(
                    status,
                    json!({ "ok": false, "error_code": status, "description": format!("echo {path} {encoded} {SECRET_PART}") }),
                )
                .header("x-echo", path)
            }
        };
        let client = |fake: &Fake| fake.client();
        let mut errors = Vec::new();
        for status in [401, 429, 400, 404, 409, 500, 502] {
            let fake = start(echo(status)).await;
            errors.push(client(&fake).get_me(&token()).await.unwrap_err());
        }
        let fake = start(|seen| Reply::raw(502, format!("<html>{}</html>", seen.path))).await;
        errors.push(client(&fake).get_me(&token()).await.unwrap_err());
        let fake = start(|seen| Reply::raw(403, format!("<html>{}</html>", seen.path))).await;
        errors.push(client(&fake).get_me(&token()).await.unwrap_err());
        let fake = start(|seen| Reply::raw(200, format!("<html>{}</html>", seen.path))).await;
        errors.push(client(&fake).get_me(&token()).await.unwrap_err());
        let fake = start(|seen| {
            Reply::ok(json!({ "id": seen.path, "is_bot": true, "first_name": seen.path }))
        })
        .await;
        errors.push(client(&fake).get_me(&token()).await.unwrap_err());
        let fake = start(|seen| Reply::ok(json!({ "url": 5, "allowed_updates": seen.path }))).await;
        errors.push(client(&fake).get_webhook_info(&token()).await.unwrap_err());
        let fake = start(|_| Reply::ok(json!(true)).delay(Duration::from_secs(10))).await;
        errors.push(
            Client::new(&fake.base, Duration::from_millis(200))
                .unwrap()
                .get_me(&token())
                .await
                .unwrap_err(),
        );
        let closed = Client::new(&closed_port().await, Duration::from_secs(5)).unwrap();
        errors.push(closed.get_me(&token()).await.unwrap_err());
        errors.push(closed.delete_webhook(&token(), true).await.unwrap_err());
        errors
    }

    #[tokio::test]
    async fn no_error_variant_shows_the_token() {
        let errors = every_error_with_echoes().await;
        let labels: BTreeSet<&str> = errors.iter().map(Error::label).collect();
        let all: BTreeSet<&str> = [
            "Unauthorized",
            "RateLimited",
            "Rejected",
            "Unavailable",
            "Timeout",
            "Transport",
            "Protocol",
        ]
        .into_iter()
        .collect();
        assert_eq!(labels, all, "every variant is exercised");
        for error in &errors {
            assert_no_token(&format!("{error}"));
            assert_no_token(&format!("{error:?}"));
            assert_no_token(&format!("{error:#?}"));
        }
        // The echoed description survives, with the token cut out.
        let Error::Rejected { description, .. } = &errors[2] else {
            panic!("{:?}", errors[2])
        };
        assert_eq!(
            description,
            "echo /bot<redacted>/getMe /bot123456%3A<redacted>/getMe <redacted>"
        );
    }

    #[tokio::test]
    async fn set_webhook_errors_hide_the_webhook_secrets() {
        let path_secret = "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcde";
        let secret_token = "SeCrEtToKeN_0123456789";
        let fake = start(|seen| {
            Reply::fail(
                400,
                &format!(
                    "Bad Request: echo {} {}",
                    seen.body["url"].as_str().unwrap_or(""),
                    seen.body["secret_token"]
                ),
            )
        })
        .await;
        let params = SetWebhook {
            url: format!("https://bots.example.com/webhook/{path_secret}"),
            secret_token: Some(secret_token.into()),
            max_connections: None,
            allowed_updates: None,
            drop_pending_updates: None,
            ip_address: None,
        };
        let error = fake
            .client()
            .set_webhook(&token(), &params)
            .await
            .unwrap_err();
        for text in [format!("{error}"), format!("{error:?}")] {
            assert!(!text.contains(path_secret), "{text}");
            assert!(!text.contains(secret_token), "{text}");
            assert!(
                text.contains("https://bots.example.com/webhook/<redacted>"),
                "{text}"
            );
        }
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn tracing_events_carry_no_token() {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("managedbot=trace"))
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);

        let fake = start(|seen| {
            if seen.path.ends_with("getMe") {
                Reply::ok(json!({ "id": 123456, "is_bot": true, "first_name": "B" }))
            } else {
                Reply::fail(400, &format!("echo {}", seen.path))
            }
        })
        .await;
        let client = fake.client();
        client.get_me(&token()).await.unwrap();
        client.get_webhook_info(&token()).await.unwrap_err();
        Client::new(&closed_port().await, Duration::from_secs(5))
            .unwrap()
            .get_me(&token())
            .await
            .unwrap_err();

        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains("Telegram Bot API call"))
            .collect();
        assert_eq!(lines.len(), 3, "one event per call:\n{logs}");
        assert!(
            lines[0].contains("method=\"getMe\"")
                && lines[0].contains("bot_id=123456")
                && lines[0].contains("outcome=\"Ok\"")
        );
        assert!(lines[0].contains("elapsed_ms="));
        assert!(
            lines[1].contains("method=\"getWebhookInfo\"")
                && lines[1].contains("outcome=\"Rejected\"")
        );
        assert!(lines[2].contains("outcome=\"Transport\""));
        assert_no_token(&logs);
        assert!(!logs.contains("127.0.0.1"), "no URL in the events:\n{logs}");
    }

    // --- token and parameter types --------------------------------------------------

    #[test]
    fn token_parse() {
        let parsed = BotToken::parse(&format!("  {TOKEN}\n")).unwrap();
        assert_eq!(parsed.expose(), TOKEN);
        assert_eq!(parsed.bot_id(), 123456);
        assert_eq!(BotToken::parse("\r\n\t"), Err(TokenFormatError::Empty));
        assert_eq!(BotToken::parse(""), Err(TokenFormatError::Empty));
        for bad in [
            "123456",
            "123456:",
            ":abc",
            "abc:def",
            "12a:def",
            "-1:def",
            "123456:abc def",
            "123456:abc:def",
            "123456:abc/def",
            "123456:abc\ndef",
            "99999999999999999999:abc",
        ] {
            assert_eq!(
                BotToken::parse(bad),
                Err(TokenFormatError::Malformed),
                "{bad:?}"
            );
        }
        let example = BotToken::parse("123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11").unwrap();
        assert_eq!(example.bot_id(), 123456);
        assert_eq!(BotToken::parse("7:x").unwrap().bot_id(), 7);
        assert_eq!(
            BotToken::parse("8123456789:AAF_-x").unwrap().bot_id(),
            8123456789
        );
    }

    #[test]
    fn token_errors_do_not_show_the_token() {
        let error = BotToken::parse("123456:SECRET PART").unwrap_err();
        assert!(!format!("{error} {error:?}").contains("SECRET"));
    }

    #[test]
    fn token_debug_and_hash() {
        assert_eq!(format!("{:?}", token()), "BotToken(<redacted>)");
        assert_eq!(format!("{:#?}", token()), "BotToken(<redacted>)");
        assert_eq!(
            token().sha256_hex(),
            "f0f056959ee3d12fe1e449f81aa0f89ad76bc95c7c3a09418f788b2196571e69"
        );
        assert_ne!(
            BotToken::parse("123456:other").unwrap().sha256_hex(),
            token().sha256_hex()
        );
    }

    #[test]
    fn set_webhook_debug_is_redacted() {
        let params = SetWebhook {
            url: "https://bots.example.com/prefix/webhook/AbCdEfGhIjKlMnOpQrStUvWxYz0123456789_-abcde".into(),
            secret_token: Some("SeCrEtToKeN_0123456789".into()),
            max_connections: Some(40),
            allowed_updates: Some(vec!["message".into()]),
            drop_pending_updates: Some(true),
            ip_address: None,
        };
        let debug = format!("{params:?}");
        assert!(!debug.contains("SeCrEtToKeN"), "{debug}");
        assert!(!debug.contains("AbCdEfGh"), "{debug}");
        assert!(
            debug.contains("https://bots.example.com/prefix/webhook/<redacted>"),
            "{debug}"
        );
        assert!(debug.contains("secret_token: Some(<redacted>)"), "{debug}");
        assert!(debug.contains("max_connections: Some(40)"), "{debug}");
        let none = SetWebhook {
            secret_token: None,
            url: String::new(),
            ..params
        };
        assert!(format!("{none:?}").contains("secret_token: None"));
        assert_eq!(redact_last_segment("not a url"), REDACTED);
    }

    #[test]
    fn labels_and_transience() {
        let cases = [
            (
                Error::Unauthorized {
                    description: String::new(),
                },
                "Unauthorized",
                false,
            ),
            (
                Error::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
                "RateLimited",
                true,
            ),
            (
                Error::Rejected {
                    code: 400,
                    description: String::new(),
                },
                "Rejected",
                false,
            ),
            (Error::Unavailable { code: 503 }, "Unavailable", true),
            (Error::Timeout(Duration::from_secs(1)), "Timeout", true),
            (Error::Transport(String::new()), "Transport", true),
            (Error::Protocol(String::new()), "Protocol", false),
        ];
        for (error, label, transient) in cases {
            assert_eq!(error.label(), label);
            assert_eq!(error.is_transient(), transient, "{label}");
        }
    }
}
