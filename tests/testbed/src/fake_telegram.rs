//! A strict fake of Telegram's Bot API, following shared/telegram-bot-api.md
//! (the hosted service where it differs from the open-source server).
//!
//! It serves plain HTTP on loopback, validates what Telegram validates,
//! answers in Telegram's envelope, records every call (by bot id, never by
//! token) and injects faults. As in Telegram, every setWebhook with a
//! non-empty url counts towards the one-per-second limit, valid or not.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use rand::RngExt as _;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::{Host, Url};

const GET_ME: &str = "getMe";
const SET_WEBHOOK: &str = "setWebhook";
const DELETE_WEBHOOK: &str = "deleteWebhook";
const GET_WEBHOOK_INFO: &str = "getWebhookInfo";
const GET_UPDATES: &str = "getUpdates";
const METHODS: [&str; 5] = [
    GET_ME,
    SET_WEBHOOK,
    DELETE_WEBHOOK,
    GET_WEBHOOK_INFO,
    GET_UPDATES,
];

const WEBHOOK_PORTS: [u16; 4] = [80, 88, 443, 8443];
const DEFAULT_MAX_CONNECTIONS: i64 = 40;
const MAX_CONNECTIONS: std::ops::RangeInclusive<i64> = 1..=100;
const MAX_SECRET_TOKEN_LEN: usize = 256;
const SET_WEBHOOK_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BODY: usize = 10 << 20;
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
const TOKEN_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/// A running fake Bot API. Clones share one server; it stops on
/// [`FakeTelegram::shutdown`] or when the last clone is dropped.
#[derive(Clone)]
pub struct FakeTelegram {
    inner: Arc<Handle>,
}

struct Handle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: Mutex<Option<Server>>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// One request to the Bot API, as the fake recorded it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Call {
    /// When the request arrived.
    pub at: SystemTime,
    /// The digits of the token; `None` when the token is malformed.
    pub bot_id: Option<i64>,
    /// The canonical method name ("setWebhook"), or the name as sent if unknown.
    pub method: String,
    /// The parameters, decoded the same way whatever the encoding.
    pub params: Map<String, Value>,
    /// The HTTP status answered.
    pub status: u16,
}

/// A bot's webhook: what getWebhookInfo describes, plus the secret_token.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Webhook {
    pub url: String,
    pub secret_token: Option<String>,
    pub max_connections: i64,
    /// `None` is Telegram's default set of update types.
    pub allowed_updates: Option<Vec<String>>,
    pub ip_address: Option<String>,
}

/// A fault to inject into matching calls.
#[derive(Clone, Debug)]
pub struct Fault {
    /// `None` matches every method; else a canonical name.
    pub method: Option<String>,
    /// `None` matches every bot.
    pub bot_id: Option<i64>,
    pub kind: FaultKind,
    /// `None` until cleared; `Some(n)` for the next `n` matching calls.
    pub times: Option<u32>,
}

#[derive(Clone, Debug)]
pub enum FaultKind {
    /// 429 with `parameters.retry_after` and a `Retry-After` header.
    TooManyRequests { retry_after: u64 },
    /// A 5xx: 502, 503 and 504 as the HTML page of Telegram's nginx front,
    /// any other code in Telegram's JSON envelope.
    ServerError(u16),
    /// Sleeps, then answers normally.
    Delay(Duration),
    /// 401 `Unauthorized`, as for a revoked token.
    Unauthorized,
}

impl FakeTelegram {
    /// Binds 127.0.0.1:0 and serves in a task on the current runtime.
    ///
    /// # Errors
    /// If the port cannot be bound.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` and serves in a task on the current runtime.
    ///
    /// # Errors
    /// If `addr` cannot be bound.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the fake Telegram Bot API on {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let app = Router::new()
            .fallback(serve_call)
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    // A dropped sender (the last handle gone) stops the server too.
                    stopped.await.ok();
                })
                .await;
            if let Err(error) = served {
                tracing::debug!(%error, "the fake Telegram Bot API stopped serving");
            }
        });
        let server = Mutex::new(Some(Server { stop, task }));
        Ok(Self {
            inner: Arc::new(Handle {
                addr,
                shared,
                server,
            }),
        })
    }

    /// The base URL; clients call `{url}/bot{token}/{method}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Registers a bot (or gives an existing one a new token) and returns a
    /// random token shaped like Telegram's.
    ///
    /// # Panics
    /// If `id` is not positive: a token's bot id is digits only.
    pub fn add_bot(&self, id: i64, username: &str) -> String {
        assert!(id > 0, "a bot id is a positive integer, not {id}");
        let token = new_token(id);
        self.inner.shared.state().register(id, username, &token);
        token
    }

    /// Registers a bot under a given token; returns the bot id (its digits).
    ///
    /// # Errors
    /// If the token is malformed (the error does not show it).
    pub fn add_bot_with_token(&self, token: &str, username: &str) -> anyhow::Result<i64> {
        // The error never shows the token: it may be a real one.
        let id =
            bot_id_of(token).context("a bot token is <digits>:<one or more of A-Za-z0-9_->")?;
        self.inner.shared.state().register(id, username, token);
        Ok(id)
    }

    /// Revokes a token: every call with it answers 401 afterwards.
    pub fn revoke(&self, token: &str) {
        let Some(id) = bot_id_of(token) else { return };
        let mut state = self.inner.shared.state();
        if let Some(bot) = state.bots.get_mut(&id)
            && bot.token.as_deref() == Some(token)
        {
            bot.token = None;
        }
    }

    /// Gives the token's bot a new token (revoking the old one) and returns it.
    ///
    /// # Panics
    /// If the token names no registered bot.
    pub fn replace_token(&self, token: &str) -> String {
        let id = bot_id_of(token).expect("replace_token: the token is malformed");
        let replacement = new_token(id);
        self.inner.shared.state().bot_mut(id).token = Some(replacement.clone());
        replacement
    }

    /// Every call so far, in the order the requests arrived.
    pub fn calls(&self) -> Vec<Call> {
        let state = self.inner.shared.state();
        state.calls.iter().map(|(_, call)| call.clone()).collect()
    }

    /// The calls to `method` (canonical name) for bot `bot_id`.
    pub fn calls_to(&self, bot_id: i64, method: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.bot_id == Some(bot_id) && call.method == method)
            .collect()
    }

    /// The bot's current webhook, secret_token included.
    pub fn webhook(&self, bot_id: i64) -> Option<Webhook> {
        self.inner.shared.state().bots.get(&bot_id)?.webhook()
    }

    /// Changes the webhook behind the operator's back.
    ///
    /// # Panics
    /// If no bot has this id.
    pub fn set_webhook_directly(&self, bot_id: i64, webhook: Option<Webhook>) {
        let mut state = self.inner.shared.state();
        let bot = state.bot_mut(bot_id);
        match webhook {
            Some(webhook) => bot.install(webhook),
            None => bot.endpoint = None,
        }
    }

    /// Sets what getWebhookInfo reports about deliveries.
    ///
    /// # Panics
    /// If no bot has this id.
    pub fn set_delivery_state(
        &self,
        bot_id: i64,
        pending_update_count: i64,
        last_error: Option<(i64, String)>,
    ) {
        let mut state = self.inner.shared.state();
        let bot = state.bot_mut(bot_id);
        bot.pending_update_count = pending_update_count;
        bot.last_error = last_error;
    }

    /// Injects a fault; returns an id for [`FakeTelegram::clear_fault`].
    /// The first matching fault, in injection order, applies to a call.
    pub fn inject(&self, fault: Fault) -> u64 {
        let mut state = self.inner.shared.state();
        state.next_fault_id += 1;
        let id = state.next_fault_id;
        if fault.times != Some(0) {
            state.faults.push((id, fault));
        }
        id
    }

    pub fn clear_fault(&self, id: u64) {
        self.inner
            .shared
            .state()
            .faults
            .retain(|(fault_id, _)| *fault_id != id);
    }

    pub fn clear_faults(&self) {
        self.inner.shared.state().faults.clear();
    }

    /// Turns the one-setWebhook-per-second limit on (the default) or off.
    pub fn set_rate_limit(&self, on: bool) {
        self.inner.shared.state().rate_limit = on;
    }

    /// Stops serving: the port refuses connections once this returns. Calls
    /// in flight get up to five seconds to finish.
    pub async fn shutdown(&self) {
        let server = lock(&self.inner.server).take();
        let Some(Server { stop, mut task }) = server else {
            return;
        };
        // An error means the server has already stopped.
        stop.send(()).ok();
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<Registry>,
    arrivals: AtomicU64,
}

struct Registry {
    bots: HashMap<i64, Bot>,
    /// Sorted by arrival number, so a delayed call keeps its place.
    calls: Vec<(u64, Call)>,
    faults: Vec<(u64, Fault)>,
    next_fault_id: u64,
    rate_limit: bool,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            bots: HashMap::new(),
            calls: Vec::new(),
            faults: Vec::new(),
            next_fault_id: 0,
            rate_limit: true,
        }
    }
}

#[derive(Default)]
struct Bot {
    username: String,
    token: Option<String>,
    endpoint: Option<Endpoint>,
    /// Kept apart from the endpoint: Telegram keeps it across deleteWebhook.
    allowed_updates: Option<Vec<String>>,
    pending_update_count: i64,
    last_error: Option<(i64, String)>,
    next_set_webhook: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq)]
struct Endpoint {
    url: String,
    secret_token: Option<String>,
    max_connections: i64,
    ip_address: Option<String>,
}

/// Parameters as Telegram's server sees them: text by name.
type Args = HashMap<String, String>;

/// An answer in Telegram's envelope, or the HTML page of its front.
enum Reply {
    Success {
        result: Value,
        description: Option<&'static str>,
    },
    Failure {
        status: StatusCode,
        description: String,
        retry_after: Option<u64>,
    },
    GatewayPage(StatusCode),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, Registry> {
        lock(&self.state)
    }

    async fn answer(&self, token: &str, bot_id: Option<i64>, method: &str, args: &Args) -> Reply {
        let fault = self.state().take_fault(bot_id, method);
        match fault {
            None => {}
            Some(FaultKind::Delay(delay)) => tokio::time::sleep(delay).await,
            Some(FaultKind::TooManyRequests { retry_after }) => {
                return Reply::too_many_requests(retry_after);
            }
            Some(FaultKind::ServerError(code)) => return Reply::server_error(code),
            Some(FaultKind::Unauthorized) => return Reply::unauthorized(),
        }
        let Some(bot_id) = bot_id else {
            return Reply::not_found();
        };
        let mut state = self.state();
        let rate_limit = state.rate_limit;
        match state.bots.get_mut(&bot_id) {
            Some(bot) if bot.token.as_deref() == Some(token) => {
                bot.call(bot_id, method, args, rate_limit)
            }
            _ => Reply::unauthorized(),
        }
    }

    fn record(&self, arrival: u64, call: Call) {
        let mut state = self.state();
        let at = state.calls.partition_point(|(number, _)| *number < arrival);
        state.calls.insert(at, (arrival, call));
    }
}

impl Registry {
    fn register(&mut self, id: i64, username: &str, token: &str) {
        let bot = self.bots.entry(id).or_default();
        username.clone_into(&mut bot.username);
        bot.token = Some(token.to_owned());
    }

    fn bot_mut(&mut self, id: i64) -> &mut Bot {
        self.bots
            .get_mut(&id)
            .unwrap_or_else(|| panic!("the fake Telegram has no bot {id}"))
    }

    fn take_fault(&mut self, bot_id: Option<i64>, method: &str) -> Option<FaultKind> {
        let index = self
            .faults
            .iter()
            .position(|(_, fault)| fault.matches(bot_id, method))?;
        let fault = &mut self.faults[index].1;
        let kind = fault.kind.clone();
        if let Some(times) = &mut fault.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.faults.remove(index);
            }
        }
        Some(kind)
    }
}

impl Fault {
    fn matches(&self, bot_id: Option<i64>, method: &str) -> bool {
        self.method.as_deref().is_none_or(|wanted| wanted == method)
            && self.bot_id.is_none_or(|wanted| Some(wanted) == bot_id)
    }
}

impl Bot {
    fn call(&mut self, id: i64, method: &str, args: &Args, rate_limit: bool) -> Reply {
        match method {
            GET_ME => Reply::ok(self.user(id)),
            SET_WEBHOOK => self.set_webhook(args, rate_limit, Instant::now()),
            DELETE_WEBHOOK => self.delete_webhook(flag(args, "drop_pending_updates")),
            GET_WEBHOOK_INFO => Reply::ok(self.webhook_info()),
            GET_UPDATES => self.get_updates(),
            _ => Reply::not_found(),
        }
    }

    fn user(&self, id: i64) -> Value {
        json!({
            "id": id,
            "is_bot": true,
            "first_name": self.username,
            "username": self.username,
            "can_join_groups": true,
            "can_read_all_group_messages": false,
            "supports_inline_queries": false,
            "can_connect_to_business": false,
            "has_main_web_app": false,
        })
    }

    fn webhook(&self) -> Option<Webhook> {
        let endpoint = self.endpoint.clone()?;
        Some(Webhook {
            url: endpoint.url,
            secret_token: endpoint.secret_token,
            max_connections: endpoint.max_connections,
            allowed_updates: self.allowed_updates.clone(),
            ip_address: endpoint.ip_address,
        })
    }

    fn install(&mut self, webhook: Webhook) {
        self.allowed_updates = webhook
            .allowed_updates
            .filter(|updates| !updates.is_empty());
        self.endpoint = Some(Endpoint {
            url: webhook.url,
            secret_token: webhook.secret_token,
            max_connections: webhook.max_connections,
            ip_address: webhook.ip_address,
        });
    }

    fn set_webhook(&mut self, args: &Args, rate_limit: bool, now: Instant) -> Reply {
        let drop_pending = flag(args, "drop_pending_updates");
        let Some(url) = arg(args, "url") else {
            return self.delete_webhook(drop_pending);
        };
        if rate_limit {
            if self.next_set_webhook.is_some_and(|next| now < next) {
                return Reply::too_many_requests(1);
            }
            self.next_set_webhook = Some(now + SET_WEBHOOK_INTERVAL);
        }
        let requested = match requested_webhook(url, args, self.allowed_updates.as_ref()) {
            Ok(webhook) => webhook,
            Err(reply) => return reply,
        };
        let unchanged = self.webhook().as_ref() == Some(&requested);
        self.install(requested);
        if drop_pending {
            self.pending_update_count = 0;
        }
        Reply::done(if unchanged {
            "Webhook is already set"
        } else {
            "Webhook was set"
        })
    }

    fn delete_webhook(&mut self, drop_pending: bool) -> Reply {
        let had_webhook = self.endpoint.take().is_some();
        if drop_pending {
            self.pending_update_count = 0;
        }
        Reply::done(if had_webhook {
            "Webhook was deleted"
        } else {
            "Webhook is already deleted"
        })
    }

    fn webhook_info(&self) -> Value {
        let mut info = Map::new();
        let url = self.endpoint.as_ref().map_or("", |endpoint| &endpoint.url);
        info.insert("url".into(), url.into());
        info.insert("has_custom_certificate".into(), false.into());
        info.insert(
            "pending_update_count".into(),
            self.pending_update_count.into(),
        );
        if let Some(endpoint) = &self.endpoint {
            info.insert("max_connections".into(), endpoint.max_connections.into());
            if let Some(ip_address) = &endpoint.ip_address {
                info.insert("ip_address".into(), ip_address.as_str().into());
            }
            if let Some(updates) = &self.allowed_updates {
                info.insert("allowed_updates".into(), updates.clone().into());
            }
        }
        if let Some((date, message)) = &self.last_error {
            info.insert("last_error_date".into(), (*date).into());
            info.insert("last_error_message".into(), message.as_str().into());
        }
        Value::Object(info)
    }

    fn get_updates(&self) -> Reply {
        if self.endpoint.is_some() {
            return Reply::fail(
                StatusCode::CONFLICT,
                "Conflict: can't use getUpdates method while webhook is active; \
                 use deleteWebhook to delete the webhook first",
            );
        }
        Reply::ok(json!([]))
    }
}

/// Validates a setWebhook with a non-empty url, in the order Telegram checks:
/// the parameters first, then the target itself ("bad webhook").
fn requested_webhook(
    url: &str,
    args: &Args,
    previous_updates: Option<&Vec<String>>,
) -> Result<Webhook, Reply> {
    let target = Url::parse(url)
        .ok()
        .filter(|target| target.host().is_some())
        .ok_or_else(|| Reply::bad_request("invalid webhook URL specified"))?;
    let secret_token = secret_token(args)?;
    let allowed_updates = match arg(args, "allowed_updates") {
        None => previous_updates.cloned(),
        Some(text) => allowed_updates(text)?,
    };
    let ip_address = ip_address(args)?;
    check_target(&target, ip_address)?;
    Ok(Webhook {
        url: url.to_owned(),
        secret_token,
        max_connections: max_connections(args),
        allowed_updates,
        ip_address: ip_address.map(|ip| ip.to_string()),
    })
}

fn secret_token(args: &Args) -> Result<Option<String>, Reply> {
    let Some(token) = arg(args, "secret_token") else {
        return Ok(None);
    };
    if token.len() > MAX_SECRET_TOKEN_LEN {
        return Err(Reply::bad_request("secret token is too long"));
    }
    if !token.bytes().all(is_base64url) {
        return Err(Reply::bad_request(
            "secret token contains unallowed characters",
        ));
    }
    Ok(Some(token.to_owned()))
}

/// `[]` means Telegram's default set, stored as `None`.
fn allowed_updates(text: &str) -> Result<Option<Vec<String>>, Reply> {
    let updates: Vec<String> = serde_json::from_str(text)
        .map_err(|_| Reply::bad_request("can't parse allowed updates"))?;
    Ok(Some(updates).filter(|updates| !updates.is_empty()))
}

fn ip_address(args: &Args) -> Result<Option<Ipv4Addr>, Reply> {
    arg(args, "ip_address")
        .map(|text| {
            text.parse()
                .map_err(|_| Reply::bad_request("invalid IP address specified"))
        })
        .transpose()
}

/// Clamped as Telegram's server does: a value that is not a number counts as 0.
fn max_connections(args: &Args) -> i64 {
    arg(args, "max_connections").map_or(DEFAULT_MAX_CONNECTIONS, |text| {
        let requested = text.trim().parse().unwrap_or(0);
        requested.clamp(*MAX_CONNECTIONS.start(), *MAX_CONNECTIONS.end())
    })
}

/// The checks Telegram makes of the target before it answers. With
/// `ip_address` Telegram connects there instead of resolving the host.
fn check_target(target: &Url, ip_address: Option<Ipv4Addr>) -> Result<(), Reply> {
    if target.scheme() != "https" {
        return Err(Reply::bad_webhook(
            "An HTTPS URL must be provided for webhook",
        ));
    }
    if !target
        .port_or_known_default()
        .is_some_and(|port| WEBHOOK_PORTS.contains(&port))
    {
        return Err(Reply::bad_webhook(
            "Webhook can be set up only on ports 80, 88, 443 or 8443",
        ));
    }
    let address = match (ip_address, target.host()) {
        (Some(address), _) | (None, Some(Host::Ipv4(address))) => address,
        (None, Some(Host::Ipv6(_))) => {
            return Err(Reply::bad_webhook("IPv6-only addresses are not allowed"));
        }
        (None, Some(Host::Domain(domain))) => return resolve(domain),
        (None, None) => return Err(Reply::bad_request("invalid webhook URL specified")),
    };
    if is_reserved(address) {
        return Err(Reply::bad_webhook(&format!(
            "IP address {address} is reserved"
        )));
    }
    Ok(())
}

/// No DNS here: only names that can never resolve (RFC 6761) fail.
fn resolve(domain: &str) -> Result<(), Reply> {
    let name = domain.trim_end_matches('.').to_ascii_lowercase();
    if name == "invalid" || name.ends_with(".invalid") {
        return Err(Reply::bad_webhook(
            "Failed to resolve host: Name or service not known",
        ));
    }
    Ok(())
}

/// IANA's special-purpose IPv4 ranges, none reachable from Telegram.
fn is_reserved(address: Ipv4Addr) -> bool {
    let [a, b, c, _] = address.octets();
    a == 0
        || address.is_private()
        || address.is_loopback()
        || address.is_link_local()
        || a >= 224 // multicast 224/4, reserved 240/4, broadcast
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && (c == 0 || c == 2)) // 192.0.0/24, TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18/15
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
}

/// A non-empty parameter (Telegram treats an empty one as absent).
fn arg<'a>(args: &'a Args, name: &str) -> Option<&'a str> {
    args.get(name)
        .map(String::as_str)
        .filter(|text| !text.is_empty())
}

fn flag(args: &Args, name: &str) -> bool {
    arg(args, name).and_then(parse_bool).unwrap_or(false)
}

fn parse_bool(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// The bot id of a well-formed token (`digits:[A-Za-z0-9_-]+`).
fn bot_id_of(token: &str) -> Option<i64> {
    let (digits, secret) = token.split_once(':')?;
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|byte| byte.is_ascii_digit())
        && !secret.is_empty()
        && secret.bytes().all(is_base64url);
    well_formed.then(|| digits.parse().ok()).flatten()
}

/// Real tokens carry 35 characters after the colon, starting "AA".
fn new_token(id: i64) -> String {
    let mut rng = rand::rng();
    let tail: String = (0..33)
        .map(|_| char::from(TOKEN_ALPHABET[rng.random_range(0..TOKEN_ALPHABET.len())]))
        .collect();
    format!("{id}:AA{tail}")
}

fn canonical_method(sent: &str) -> String {
    METHODS
        .iter()
        .find(|known| known.eq_ignore_ascii_case(sent))
        .map_or(sent, |known| known)
        .to_owned()
}

/// `/bot{token}/{method}` split in two; `None` for any other path.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let (token, method) = path.strip_prefix("/bot")?.split_once('/')?;
    (!method.is_empty() && !method.contains('/')).then_some((token, method))
}

async fn serve_call(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = SystemTime::now();
    let Some((token, method)) = split_path(request.uri().path())
        .map(|(token, method)| (token.to_owned(), canonical_method(method)))
    else {
        return Reply::not_found().into_response();
    };
    let arrival = shared.arrivals.fetch_add(1, Ordering::Relaxed);
    let bot_id = bot_id_of(&token);
    let (args, reply) = if matches!(*request.method(), Method::GET | Method::POST) {
        match read_args(request).await {
            Ok(args) => {
                let reply = shared.answer(&token, bot_id, &method, &args).await;
                (args, reply)
            }
            Err(reply) => (Args::new(), reply),
        }
    } else {
        (Args::new(), Reply::not_found())
    };
    let status = reply.status().as_u16();
    tracing::debug!(
        ?bot_id,
        method,
        status,
        "the fake Telegram Bot API answered"
    );
    let params = recorded_params(&args);
    shared.record(
        arrival,
        Call {
            at,
            bot_id,
            method,
            params,
            status,
        },
    );
    reply.into_response()
}

/// The query string, then the body's parameters over it.
async fn read_args(request: Request) -> Result<Args, Reply> {
    let mut args = request
        .uri()
        .query()
        .map_or_else(Args::new, |query| parse_urlencoded(query.as_bytes()));
    let body_args = match media_type(&request).as_str() {
        "application/x-www-form-urlencoded" => parse_urlencoded(&body(request).await?),
        "application/json" => parse_json(&body(request).await?)?,
        "multipart/form-data" => parse_multipart(request).await?,
        _ => Args::new(),
    };
    args.extend(body_args);
    Ok(args)
}

fn media_type(request: &Request) -> String {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

async fn body(request: Request) -> Result<axum::body::Bytes, Reply> {
    axum::body::to_bytes(request.into_body(), MAX_BODY)
        .await
        .map_err(|_| Reply::fail(StatusCode::PAYLOAD_TOO_LARGE, "Request Entity Too Large"))
}

fn parse_urlencoded(bytes: &[u8]) -> Args {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

/// Telegram's server turns each JSON value into text: strings as they are,
/// anything else (numbers, booleans, arrays) as its JSON.
fn parse_json(bytes: &[u8]) -> Result<Args, Reply> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Args::new());
    }
    let Ok(Value::Object(object)) = serde_json::from_slice(bytes) else {
        return Err(Reply::bad_request("can't parse JSON object"));
    };
    let args = object.into_iter().filter_map(|(name, value)| match value {
        Value::Null => None,
        Value::String(text) => Some((name, text)),
        other => Some((name, other.to_string())),
    });
    Ok(args.collect())
}

/// Text fields only; file parts (a certificate) are skipped.
async fn parse_multipart(request: Request) -> Result<Args, Reply> {
    let unreadable = |_| Reply::bad_request("can't parse multipart/form-data");
    let mut multipart = Multipart::from_request(request, &())
        .await
        .map_err(|_| Reply::bad_request("can't parse multipart/form-data"))?;
    let mut args = Args::new();
    while let Some(field) = multipart.next_field().await.map_err(unreadable)? {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        if field.file_name().is_some() {
            continue;
        }
        args.insert(name, field.text().await.map_err(unreadable)?);
    }
    Ok(args)
}

/// The parameters with Telegram's types, so every encoding records alike.
fn recorded_params(args: &Args) -> Map<String, Value> {
    args.iter()
        .map(|(name, text)| (name.clone(), typed_param(name, text)))
        .collect()
}

fn typed_param(name: &str, text: &str) -> Value {
    let typed = match name {
        "allowed_updates" => serde_json::from_str(text).ok().filter(Value::is_array),
        "max_connections" => text.parse::<i64>().ok().map(Value::from),
        "drop_pending_updates" => parse_bool(text).map(Value::Bool),
        _ => None,
    };
    typed.unwrap_or_else(|| Value::String(text.to_owned()))
}

impl Reply {
    fn ok(result: Value) -> Self {
        Self::Success {
            result,
            description: None,
        }
    }

    fn done(description: &'static str) -> Self {
        Self::Success {
            result: Value::Bool(true),
            description: Some(description),
        }
    }

    fn fail(status: StatusCode, description: impl Into<String>) -> Self {
        Self::Failure {
            status,
            description: description.into(),
            retry_after: None,
        }
    }

    fn bad_request(detail: &str) -> Self {
        Self::fail(StatusCode::BAD_REQUEST, format!("Bad Request: {detail}"))
    }

    fn bad_webhook(detail: &str) -> Self {
        Self::bad_request(&format!("bad webhook: {detail}"))
    }

    fn not_found() -> Self {
        Self::fail(StatusCode::NOT_FOUND, "Not Found")
    }

    fn unauthorized() -> Self {
        Self::fail(StatusCode::UNAUTHORIZED, "Unauthorized")
    }

    fn too_many_requests(retry_after: u64) -> Self {
        Self::Failure {
            status: StatusCode::TOO_MANY_REQUESTS,
            description: format!("Too Many Requests: retry after {retry_after}"),
            retry_after: Some(retry_after),
        }
    }

    /// Gateway errors come from Telegram's nginx front as HTML; the rest in
    /// the envelope. A code that is no HTTP status counts as 500.
    fn server_error(code: u16) -> Self {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match status {
            StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Self::GatewayPage(status),
            _ => Self::fail(status, status.canonical_reason().unwrap_or("Error")),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Success { .. } => StatusCode::OK,
            Self::Failure { status, .. } | Self::GatewayPage(status) => *status,
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        match self {
            Self::Success {
                result,
                description,
            } => {
                let mut body = json!({ "ok": true, "result": result });
                if let Some(description) = description {
                    body["description"] = description.into();
                }
                Json(body).into_response()
            }
            Self::Failure {
                status,
                description,
                retry_after,
            } => {
                let mut body = json!({
                    "ok": false,
                    "error_code": status.as_u16(),
                    "description": description,
                });
                if let Some(seconds) = retry_after {
                    body["parameters"] = json!({ "retry_after": seconds });
                }
                let mut response = (status, Json(body)).into_response();
                if let Some(seconds) = retry_after {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                }
                response
            }
            Self::GatewayPage(status) => (
                status,
                [(header::CONTENT_TYPE, "text/html")],
                nginx_page(status),
            )
                .into_response(),
        }
    }
}

fn nginx_page(status: StatusCode) -> String {
    let title = format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    format!(
        "<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n\
         <center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n\
         </body>\r\n</html>\r\n"
    )
}
