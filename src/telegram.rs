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
        let id_ok = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && id.parse::<i64>().is_ok();
        let secret_ok = !secret.is_empty() && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if id_ok && secret_ok { Ok(BotToken(token.to_owned())) } else { Err(TokenFormatError::Malformed) }
    }

    /// The numeric bot id before the colon (public, safe to log).
    pub fn bot_id(&self) -> i64 {
        // `parse` guarantees the prefix is an i64.
        self.0.split_once(':').and_then(|(id, _)| id.parse().ok()).unwrap_or_default()
    }

    /// Hex SHA-256 of the token (to notice a changed token without keeping it).
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(self.0.as_bytes()).iter().fold(String::with_capacity(64), |mut hex, byte| {
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
        self.0.split_once(':').map_or(self.0.as_str(), |(_, secret)| secret)
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
            .field("secret_token", &self.secret_token.as_ref().map(|_| Verbatim(REDACTED)))
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
        matches!(self, Error::Unavailable { .. } | Error::Timeout(_) | Error::Transport(_) | Error::RateLimited { .. })
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
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: url::Url,
    timeout: Duration,
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
        let seconds = value.as_u64().or_else(|| value.as_f64().filter(|s| s.is_finite() && *s >= 0.0).map(|s| s.ceil() as u64))?;
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
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(Error::Transport("the Telegram API base URL must be an http or https URL with a host".to_owned()));
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
        Ok(Client { http, base, timeout })
    }

    /// getMe: who the token belongs to.
    pub async fn get_me(&self, token: &BotToken) -> Result<User, Error> {
        self.call(token, "getMe", &serde_json::json!({}), &[]).await.map(|answer| answer.result)
    }

    /// Returns Telegram's description, e.g. "Webhook was set" / "Webhook is
    /// already set" (empty if Telegram sent none).
    pub async fn set_webhook(&self, token: &BotToken, params: &SetWebhook) -> Result<String, Error> {
        let mut secrets: Vec<&str> = params.url.split(['/', '?', '#']).filter(|segment| segment.len() >= 16).collect();
        secrets.extend(params.secret_token.as_deref());
        let answer = self.call::<serde_json::Value>(token, "setWebhook", params, &secrets).await?;
        expect_true("setWebhook", answer)
    }

    pub async fn get_webhook_info(&self, token: &BotToken) -> Result<WebhookInfo, Error> {
        self.call(token, "getWebhookInfo", &serde_json::json!({}), &[]).await.map(|answer| answer.result)
    }

    /// Returns Telegram's description, e.g. "Webhook was deleted" / "Webhook
    /// is already deleted" (empty if Telegram sent none).
    pub async fn delete_webhook(&self, token: &BotToken, drop_pending_updates: bool) -> Result<String, Error> {
        let body = serde_json::json!({ "drop_pending_updates": drop_pending_updates });
        let answer = self.call::<serde_json::Value>(token, "deleteWebhook", &body, &[]).await?;
        expect_true("deleteWebhook", answer)
    }

    /// `{base}/bot{token}/{method}`.
    fn endpoint(&self, token: &BotToken, method: &str) -> Result<url::Url, Error> {
        let mut url = self.base.clone();
        {
            let Ok(mut segments) = url.path_segments_mut() else {
                return Err(Error::Transport("the Telegram API base URL cannot carry a path".to_owned()));
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
            Ok(_) => tracing::debug!(method, bot_id = token.bot_id(), outcome = "Ok", elapsed_ms, "Telegram Bot API call"),
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

    async fn exchange(&self, url: url::Url, body: &(impl Serialize + ?Sized)) -> Result<RawReply, reqwest::Error> {
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
        Ok(RawReply { status, retry_after, body })
    }
}

/// setWebhook / deleteWebhook answer `result: true`.
fn expect_true(method: &str, answer: Answer<serde_json::Value>) -> Result<String, Error> {
    if answer.result == serde_json::Value::Bool(true) {
        Ok(answer.description.unwrap_or_default())
    } else {
        Err(Error::Protocol(format!("{method} answered ok with a result other than true")))
    }
}

/// Maps an HTTP answer onto a result or an [`Error`].
fn interpret<T: DeserializeOwned>(method: &str, reply: RawReply, redactor: &Redactor<'_>) -> Result<Answer<T>, Error> {
    let status = reply.status;
    let success = (200..300).contains(&status);
    let envelope = serde_json::from_slice::<Envelope>(&reply.body).ok();
    match envelope {
        Some(envelope) if envelope.ok && success => {
            let Some(result) = envelope.result else {
                return Err(Error::Protocol(format!("{method} answered ok without a result")));
            };
            let result = serde_json::from_value(result)
                .map_err(|e| Error::Protocol(redactor.description(&format!("could not decode the result of {method}: {e}"))))?;
            Ok(Answer { result, description: envelope.description.map(|d| redactor.description(&d)) })
        }
        Some(envelope) if !envelope.ok => {
            let code = envelope
                .error_code
                .and_then(|code| u16::try_from(code).ok())
                .filter(|code| (100..=599).contains(code))
                .or((!success).then_some(status));
            let description = envelope.description.as_deref().map(|d| redactor.description(d));
            match code {
                Some(429) => Err(Error::RateLimited {
                    retry_after: envelope.retry_after().or(reply.retry_after).unwrap_or(DEFAULT_RETRY_AFTER).max(DEFAULT_RETRY_AFTER),
                }),
                Some(code) => Err(failure(method, code, description, reply.retry_after)),
                None => Err(Error::Protocol(format!("{method} answered ok=false without an error code"))),
            }
        }
        // Not Telegram's envelope (or ok=true with a failure status): go by the status.
        _ if success => Err(Error::Protocol(format!("{method} answered HTTP {status} with a body that is not Telegram's JSON envelope"))),
        _ => Err(failure(method, status, None, reply.retry_after)),
    }
}

/// The error for a failure `code`; `description` is Telegram's (already
/// scrubbed) or, when the body was not Telegram's, a generic one is made up.
fn failure(method: &str, code: u16, description: Option<String>, retry_after_header: Option<Duration>) -> Error {
    let generic = || {
        let reason = reqwest::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("HTTP error");
        format!("{reason} (not a Telegram JSON answer)")
    };
    match code {
        401 => Error::Unauthorized { description: description.unwrap_or_else(generic) },
        429 => Error::RateLimited { retry_after: retry_after_header.unwrap_or(DEFAULT_RETRY_AFTER).max(DEFAULT_RETRY_AFTER) },
        400..=499 => Error::Rejected { code, description: description.unwrap_or_else(generic) },
        500..=599 => Error::Unavailable { code },
        200..=299 => Error::Protocol(format!("{method} answered ok=false with error code {code}")),
        // 1xx / 3xx: something between us and Telegram (Telegram never redirects).
        _ => Error::Unavailable { code },
    }
}

