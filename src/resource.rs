//! The `ManagedBot` custom resource (`managedbot.dev/v1alpha1`): what people
//! apply, and the status the controller reports.
//!
//! The doc comments on these types become `kubectl explain` text; the
//! `x_kube(validation)` rules become CEL `x-kubernetes-validations` in the CRD,
//! so the API server refuses a bad manifest at `kubectl apply` with a message
//! that names the field.
//!
//! Not to be confused with Telegram's own "managed bots" (Bot API 10.1, bots
//! created and controlled by another bot): a `ManagedBot` here is any bot whose
//! webhook this operator manages.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema, core::Duration};
use serde::{Deserialize, Serialize};

/// The API group of every managedbot resource, annotation and label.
pub const GROUP: &str = "managedbot.dev";
/// Changing this annotation's value asks for a rotation of the webhook secret.
pub const ROTATE_ANNOTATION: &str = "managedbot.dev/rotate";
/// Set to the same value as [`ROTATE_ANNOTATION`], asks that the rotation
/// it requests keep no grace period: the old pair stops being routed at once
/// (for a leaked secret; `managedbot rotate --now` sets both).
pub const ROTATE_NOW_ANNOTATION: &str = "managedbot.dev/rotate-now";
/// The finalizer that keeps a bot until its webhook is unregistered.
pub const FINALIZER: &str = "managedbot.dev/webhook";
/// The key of the token in the token Secret when `tokenSecretRef.key` is not given.
pub const DEFAULT_TOKEN_KEY: &str = "token";

/// Desired state of a Telegram bot whose webhook managedbot owns: managedbot
/// generates a random webhook secret into the Secret `{name}-webhook`,
/// registers `{baseUrl}/webhook/{secret}` with Telegram's setWebhook, and the
/// router forwards Telegram's deliveries to the backend. The bot token is never
/// part of any URL.
// clippy reads the repeated `type_ =` of the printcolumn(...) lists as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "managedbot.dev",
    version = "v1alpha1",
    kind = "ManagedBot",
    plural = "managedbots",
    shortname = "mbot",
    category = "managedbot",
    namespaced,
    status = "ManagedBotStatus",
    derive = "PartialEq",
    doc = "A Telegram bot whose webhook managedbot registers, routes and rotates.",
    printcolumn(
        name = "Bot",
        type_ = "string",
        json_path = ".status.bot.username",
        description = "The bot's username, from getMe"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.telegram.pendingUpdateCount",
        description = "Updates Telegram has not delivered yet"
    ),
    printcolumn(
        name = "Suspended",
        type_ = "boolean",
        json_path = ".spec.suspend",
        priority = "1"
    ),
    printcolumn(
        name = "Last Error",
        type_ = "string",
        json_path = ".status.telegram.lastErrorMessage",
        priority = "1",
        description = "Telegram's last delivery error"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBotSpec {
    /// The Secret, in the bot's namespace, that holds the bot token from
    /// @BotFather. managedbot reads it and never copies it anywhere.
    pub token_secret_ref: TokenSecretRef,

    /// How Telegram delivers updates: the public base URL and setWebhook's
    /// options.
    #[serde(default, skip_serializing_if = "WebhookSpec::is_empty")]
    pub webhook: WebhookSpec,

    /// Where the router forwards each update: exactly one of `service` or `url`.
    pub backend: BackendSpec,

    /// Automatic rotation of the webhook secret and the grace period of a
    /// rotated one. A rotation is also requested by changing the value of the
    /// annotation `managedbot.dev/rotate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationSpec>,

    /// True unregisters the webhook and stops routing, keeping the secret, so
    /// that resuming registers the same URL again.
    #[serde(default)]
    pub suspend: bool,
}

/// A key of a Secret in the bot's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretRef {
    /// Name of the Secret.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,

    /// Key of the token in the Secret's data. Defaults to `token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: Option<String>,
}

impl TokenSecretRef {
    /// The data key that holds the token.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_TOKEN_KEY)
    }
}

/// The webhook Telegram calls, and setWebhook's options.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Public HTTPS base URL that reaches the router, e.g.
    /// `https://bots.example.com` or `https://example.com/telegram`; the
    /// webhook URL is `{baseUrl}/webhook/{secret}`. Telegram only delivers to
    /// ports 443, 80, 88 and 8443. Defaults to the controller's
    /// `--public-base-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() == 'https'").message("must be an https:// URL"),
        validation = Rule::new("!isURL(self) || url(self).getHostname() != ''").message("must name a host"),
        validation = Rule::new("!isURL(self) || url(self).getPort() in ['', '443', '80', '88', '8443']").message("Telegram delivers webhooks only to ports 443, 80, 88 and 8443"),
        validation = Rule::new("!self.contains('?') && !self.contains('#')").message("must not carry a query or a fragment"),
    )]
    pub base_url: Option<String>,

    /// Update types Telegram delivers. Empty or absent: Telegram's default (all
    /// types except chat_member, message_reaction and message_reaction_count).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_updates: Option<Vec<UpdateType>>,

    /// The most simultaneous HTTPS connections Telegram opens for deliveries,
    /// 1 to 100. Telegram's default is 40.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_connections: Option<i32>,

    /// Drop the updates Telegram has queued when the webhook is (re)registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop_pending_updates: Option<bool>,
}

impl WebhookSpec {
    fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// An update type of Telegram's Bot API, as accepted by setWebhook's
/// `allowed_updates`. New Bot API versions add types: a new one is a new
/// variant here.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum UpdateType {
    Message,
    EditedMessage,
    ChannelPost,
    EditedChannelPost,
    BusinessConnection,
    BusinessMessage,
    EditedBusinessMessage,
    DeletedBusinessMessages,
    MessageReaction,
    MessageReactionCount,
    InlineQuery,
    ChosenInlineResult,
    CallbackQuery,
    ShippingQuery,
    PreCheckoutQuery,
    PurchasedPaidMedia,
    Poll,
    PollAnswer,
    MyChatMember,
    ChatMember,
    ChatJoinRequest,
    ChatBoost,
    RemovedChatBoost,
    ManagedBot,
}

/// Where the router forwards updates: exactly one of `service` or `url`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.url)").message("exactly one of backend.service or backend.url must be set"))]
pub struct BackendSpec {
    /// A Service in the bot's namespace; the router posts to
    /// `http://{name}.{namespace}.svc:{port}{path}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,

    /// A full http(s) URL the router posts to, for a backend outside the
    /// namespace or the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https'] && url(self).getHostname() != ''").message("must be an http:// or https:// URL with a host"))]
    pub url: Option<String>,

    /// Path appended to the Service address, e.g. `/telegram`. Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^/[^?#\s]*$"))]
    pub path: Option<String>,
}

/// A port of a Service in the bot's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// Name of the Service.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,

    /// Port number of the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Rotation of the webhook secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.interval) || !has(self.gracePeriod) || duration(self.gracePeriod) < duration(self.interval)").message("gracePeriod must be shorter than interval"))]
pub struct RotationSpec {
    /// Rotate automatically this long after the last rotation (a Go duration
    /// such as `720h`; at least `1h`). Absent: only on request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"),
        length(max = 64)
    )]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h')").message("must be at least 1h"))]
    pub interval: Option<Duration>,

    /// How long the previous secret is still routed after a rotation, so that
    /// deliveries Telegram already started are not lost (a Go duration; `0s`
    /// cuts it off at once, for a leaked secret; at most `24h`, the longest
    /// Telegram keeps an update). Defaults to `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$"),
        length(max = 64)
    )]
    #[x_kube(validation = Rule::new("duration(self) <= duration('24h')").message("must be at most 24h"))]
    pub grace_period: Option<Duration>,
}

/// Observed state of a ManagedBot.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ManagedBotStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready` sums up the bot; `TokenValid` and `WebhookRegistered` say which
    /// step holds it back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The webhook URL registered with Telegram. It holds the path secret, so
    /// whoever reads this ManagedBot can post to its router path (still
    /// refused without the secret token, which only the Secret holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,

    /// The generated Secret that holds the webhook secret pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret_ref: Option<LocalSecretRef>,

    /// The bot as Telegram's getMe describes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<BotIdentity>,

    /// Progress of secret rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationStatus>,

    /// What the router needs to route and authenticate deliveries, as SHA-256
    /// hashes only: the router reads no Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,

    /// Delivery state from Telegram's getWebhookInfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telegram: Option<TelegramStatus>,
}

/// A Secret in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LocalSecretRef {
    /// Name of the Secret.
    pub name: String,
}

/// A bot's identity from getMe.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BotIdentity {
    /// The bot's numeric Telegram id.
    pub id: i64,
    /// The bot's username, without the @.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Progress of secret rotation.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RotationStatus {
    /// The value of the `managedbot.dev/rotate` annotation last acted on. A
    /// rotation happens when the annotation differs from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,

    /// When the current secret was generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<Time>,

    /// When the previous secret stops being routed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<Time>,
}

/// The hashes the router routes by.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Routing {
    /// The current pair.
    pub current: RouteHashes,
    /// The pair before the last rotation, routed until `expiresAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousRouteHashes>,
}

/// SHA-256 hashes, in lowercase hex, of a webhook secret pair.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RouteHashes {
    /// SHA-256 of the path secret.
    pub path_sha256: String,
    /// SHA-256 of the secret token Telegram sends as X-Telegram-Bot-Api-Secret-Token.
    pub token_sha256: String,
}

/// A previous pair and its expiry.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PreviousRouteHashes {
    /// SHA-256 of the previous path secret.
    pub path_sha256: String,
    /// SHA-256 of the previous secret token.
    pub token_sha256: String,
    /// When the router stops accepting the previous pair.
    pub expires_at: Time,
}

/// Delivery state from Telegram's getWebhookInfo.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TelegramStatus {
    /// Updates Telegram holds that were not delivered yet.
    #[serde(default)]
    pub pending_update_count: i64,
    /// When the last delivery to the webhook failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_date: Option<Time>,
    /// Telegram's description of the last delivery error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error_message: Option<String>,
    /// When managedbot last read getWebhookInfo.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_time: Option<Time>,
}

/// The CRD as YAML, exactly what `managedbot crd` prints and
/// `crds/managedbot.yaml` holds.
pub fn crd_yaml() -> String {
    let crd = ManagedBot::crd();
    let yaml = serde_yaml_ng::to_string(&crd).expect("a CRD always serializes");
    format!("---\n{yaml}")
}
