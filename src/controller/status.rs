//! The status a reconcile leaves behind, computed without I/O: conditions
//! after the Kubernetes API conventions (a lastTransitionTime that moves only
//! when a condition's status moves), and the fields of design.md.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::{
    resource::{BotIdentity, LocalSecretRef, ManagedBotStatus, RotationStatus, TelegramStatus},
    telegram,
};

use super::{
    plan::{self, Call, Input, SecretState, TokenState},
    webhook_secret::{WebhookSecret, secret_name},
};

/// The summary condition.
pub const READY: &str = "Ready";
/// The token was accepted by Telegram's getMe.
pub const TOKEN_VALID: &str = "TokenValid";
/// Telegram's webhook is the bot's current URL.
pub const WEBHOOK_REGISTERED: &str = "WebhookRegistered";

/// Condition reasons: CamelCase, stable, one per thing a person must know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The webhook is registered with the current pair.
    Registered,
    /// The token Secret does not exist.
    TokenSecretNotFound,
    /// The token Secret lacks the key.
    TokenKeyNotFound,
    /// The value is not a Telegram token.
    TokenMalformed,
    /// Telegram refused the token (401).
    TokenInvalid,
    /// Telegram answered 429.
    TelegramRateLimited,
    /// Telegram answered 5xx, timed out or could not be reached.
    TelegramUnavailable,
    /// Telegram refused setWebhook (e.g. the URL is not reachable from Telegram).
    WebhookRejected,
    /// Another ManagedBot holds the same bot.
    WebhookConflict,
    /// spec.suspend is true.
    Suspended,
    /// No baseUrl and no --public-base-url.
    BaseUrlMissing,
    /// The generated Secret was edited into something unusable.
    WebhookSecretInvalid,
    /// Work is under way.
    Pending,
    /// Not known yet.
    Unknown,
}

impl Reason {
    /// The reason as written in conditions.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "Registered",
            Self::TokenSecretNotFound => "TokenSecretNotFound",
            Self::TokenKeyNotFound => "TokenKeyNotFound",
            Self::TokenMalformed => "TokenMalformed",
            Self::TokenInvalid => "TokenInvalid",
            Self::TelegramRateLimited => "TelegramRateLimited",
            Self::TelegramUnavailable => "TelegramUnavailable",
            Self::WebhookRejected => "WebhookRejected",
            Self::WebhookConflict => "WebhookConflict",
            Self::Suspended => "Suspended",
            Self::BaseUrlMissing => "BaseUrlMissing",
            Self::WebhookSecretInvalid => "WebhookSecretInvalid",
            Self::Pending => "Pending",
            Self::Unknown => "Unknown",
        }
    }
}

fn telegram_reason(error: &telegram::Error) -> Reason {
    match error {
        telegram::Error::Unauthorized { .. } => Reason::TokenInvalid,
        telegram::Error::RateLimited { .. } => Reason::TelegramRateLimited,
        telegram::Error::Rejected { .. } => Reason::WebhookRejected,
        _ => Reason::TelegramUnavailable,
    }
}

/// The condition of a type, if present.
pub fn condition<'a>(status: &'a ManagedBotStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is present and True.
pub fn condition_is_true(status: Option<&ManagedBotStatus>, type_: &str) -> bool {
    status
        .and_then(|s| condition(s, type_))
        .is_some_and(|c| c.status == "True")
}

struct Verdict {
    status: &'static str,
    reason: Reason,
    message: String,
    /// A verdict carried over from an earlier reconcile still describes the
    /// spec it was made for: its observedGeneration must not move on.
    carried: bool,
}

fn verdict(ok: bool, reason: Reason, message: impl Into<String>) -> Verdict {
    Verdict {
        status: if ok { "True" } else { "False" },
        reason,
        message: message.into(),
        carried: false,
    }
}

fn unknown(reason: Reason, message: impl Into<String>) -> Verdict {
    Verdict {
        status: "Unknown",
        reason,
        message: message.into(),
        carried: false,
    }
}

fn token_verdict(input: &Input) -> Verdict {
    let secret = &input.bot.spec.token_secret_ref;
    match input.token {
        TokenState::SecretNotFound => verdict(
            false,
            Reason::TokenSecretNotFound,
            format!(
                "Secret {} not found; create it with the bot token under key {}",
                secret.name,
                secret.key()
            ),
        ),
        TokenState::KeyNotFound => verdict(
            false,
            Reason::TokenKeyNotFound,
            format!(
                "Secret {} has no key {}; set spec.tokenSecretRef.key or add the key",
                secret.name,
                secret.key()
            ),
        ),
        TokenState::Malformed(error) => verdict(
            false,
            Reason::TokenMalformed,
            format!("key {} of Secret {}: {error}", secret.key(), secret.name),
        ),
        TokenState::Present(_) => match &input.facts.failure {
            Some((Call::GetMe, error @ telegram::Error::Unauthorized { .. })) => verdict(
                false,
                Reason::TokenInvalid,
                format!(
                    "Telegram refused the token in Secret {} (revoked or wrong): {error}",
                    secret.name
                ),
            ),
            Some((_, telegram::Error::Unauthorized { .. })) => verdict(
                false,
                Reason::TokenInvalid,
                format!("Telegram refused the token in Secret {}", secret.name),
            ),
            Some((Call::GetMe, error)) => {
                unknown(telegram_reason(error), format!("getMe failed: {error}"))
            }
            _ if input.facts.me.is_some()
                || condition_is_true(input.bot.status.as_ref(), TOKEN_VALID) =>
            {
                verdict(true, Reason::Registered, "Telegram accepted the token")
            }
            _ => unknown(Reason::Pending, "the token has not been checked yet"),
        },
    }
}

fn webhook_verdict(input: &Input) -> Verdict {
    if !matches!(input.token, TokenState::Present(_)) {
        return carried_over(
            input,
            WEBHOOK_REGISTERED,
            Reason::Unknown,
            "waiting for a usable token",
        );
    }
    if input.bot.spec.suspend {
        return verdict(
            false,
            Reason::Suspended,
            "spec.suspend is true: the webhook is unregistered, the secret kept",
        );
    }
    if let Some(owner) = &input.facts.conflict_with {
        return verdict(
            false,
            Reason::WebhookConflict,
            format!("ManagedBot {owner} already manages this bot; a bot has only one webhook"),
        );
    }
    match input.secret {
        SecretState::Invalid(error) => {
            return verdict(
                false,
                Reason::WebhookSecretInvalid,
                format!(
                    "{error}; delete Secret {} to have a new pair generated",
                    secret_name(name(input))
                ),
            );
        }
        SecretState::Missing => return unknown(Reason::Pending, "generating the webhook secret"),
        SecretState::Present(_) => {}
    }
    if plan::base_url(input.bot, input.settings).is_none() {
        return verdict(
            false,
            Reason::BaseUrlMissing,
            "set spec.webhook.baseUrl, or start the controller with --public-base-url",
        );
    }
    match &input.facts.failure {
        Some((Call::SetWebhook, error)) => verdict(
            false,
            telegram_reason(error),
            format!("setWebhook failed: {error}"),
        ),
        Some((Call::GetWebhookInfo, error)) => carried_over(
            input,
            WEBHOOK_REGISTERED,
            telegram_reason(error),
            format!("getWebhookInfo failed: {error}"),
        ),
        Some((_, error)) => carried_over(
            input,
            WEBHOOK_REGISTERED,
            telegram_reason(error),
            error.to_string(),
        ),
        None => verdict(
            true,
            Reason::Registered,
            "Telegram delivers to the current webhook URL",
        ),
    }
}

/// Keeps the previous verdict of a condition when this reconcile could not
/// tell (e.g. the drift check failed: the webhook is probably still set).
fn carried_over(input: &Input, type_: &str, reason: Reason, message: impl Into<String>) -> Verdict {
    match input.bot.status.as_ref().and_then(|s| condition(s, type_)) {
        Some(previous) if previous.status == "True" => Verdict {
            status: "True",
            reason: Reason::Registered,
            message: previous.message.clone(),
            carried: true,
        },
        _ => unknown(reason, message),
    }
}

fn name<'a>(input: &Input<'a>) -> &'a str {
    input.bot.metadata.name.as_deref().unwrap_or_default()
}

/// The reason the Ready condition will carry.
pub fn ready_reason(input: &Input) -> Reason {
    ready_verdict(&token_verdict(input), &webhook_verdict(input)).reason
}

fn ready_verdict(token: &Verdict, webhook: &Verdict) -> Verdict {
    // A token never checked (the bot is suspended, or its Secret is unusable)
    // is not what holds the bot back: the webhook's reason says more.
    let token_unchecked = token.reason == Reason::Pending && webhook.status == "False";
    if token.status != "True" && !token_unchecked {
        return Verdict {
            status: "False",
            reason: token.reason,
            message: token.message.clone(),
            carried: false,
        };
    }
    if webhook.status != "True" {
        let status = if webhook.reason == Reason::Pending {
            "Unknown"
        } else {
            "False"
        };
        return Verdict {
            status,
            reason: webhook.reason,
            message: webhook.message.clone(),
            carried: false,
        };
    }
    Verdict {
        status: "True",
        reason: Reason::Registered,
        message: webhook.message.clone(),
        carried: false,
    }
}

fn to_condition(
    type_: &str,
    v: Verdict,
    previous: &ManagedBotStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let old = condition(previous, type_);
    let last_transition_time = match old {
        Some(old) if old.status == v.status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let observed_generation = if v.carried {
        old.and_then(|o| o.observed_generation)
    } else {
        generation
    };
    Condition {
        type_: type_.to_string(),
        status: v.status.to_string(),
        reason: v.reason.as_str().to_string(),
        message: v.message,
        observed_generation,
        last_transition_time,
    }
}

/// The status to leave behind once [`plan::plan`] says Finish.
pub fn desired(input: &Input) -> ManagedBotStatus {
    let previous = input.bot.status.clone().unwrap_or_default();
    let generation = input.bot.metadata.generation;
    let token = token_verdict(input);
    let webhook = webhook_verdict(input);
    let ready = ready_verdict(&token, &webhook);
    let registered = webhook.status == "True" && input.facts.failure.is_none();
    let suspended_or_conflict =
        matches!(webhook.reason, Reason::Suspended | Reason::WebhookConflict);

    let mut status = ManagedBotStatus {
        observed_generation: generation,
        conditions: Vec::new(),
        webhook_secret_ref: previous.webhook_secret_ref.clone(),
        bot: previous.bot.clone(),
        telegram: previous.telegram.clone(),
        webhook_url: previous.webhook_url.clone(),
        rotation: previous.rotation.clone(),
        routing: previous.routing.clone(),
    };
    if let Some(me) = &input.facts.me {
        status.bot = Some(BotIdentity {
            id: me.id,
            username: me.username.clone(),
        });
    }
    if let SecretState::Present(secret) = input.secret {
        status.webhook_secret_ref = Some(LocalSecretRef {
            name: secret_name(name(input)),
        });
        if registered {
            status.webhook_url = plan::webhook_url(input, secret);
            status.routing = Some(secret.routing(input.now));
            status.rotation = Some(rotation_status(input, secret));
        }
    }
    // A failed deleteWebhook leaves the webhook ours: keep what says so, so
    // that the next reconcile tries again.
    let unregister_failed = webhook.reason == Reason::Suspended && input.facts.failure.is_some();
    if suspended_or_conflict && !unregister_failed {
        status.webhook_url = None;
        status.routing = None;
    }
    if let Some(info) = &input.facts.info {
        status.telegram = telegram_status(info, previous.telegram.as_ref(), input.now);
    }
    status.conditions = vec![
        to_condition(READY, ready, &previous, generation, input.now),
        to_condition(TOKEN_VALID, token, &previous, generation, input.now),
        to_condition(
            WEBHOOK_REGISTERED,
            webhook,
            &previous,
            generation,
            input.now,
        ),
    ];
    status
}

fn rotation_status(input: &Input, secret: &WebhookSecret) -> RotationStatus {
    RotationStatus {
        observed: secret.rotation_observed.clone(),
        last_rotation_time: secret.generated_at.map(Time),
        previous_expires_at: secret
            .previous
            .as_ref()
            .filter(|p| p.expires_at > input.now)
            .map(|p| Time(p.expires_at)),
    }
}

/// Telegram's delivery state, written only when it changed: a converged bot
/// must cost no write per drift check, so `lastSyncTime` is when Telegram's
/// answer last changed.
fn telegram_status(
    info: &telegram::WebhookInfo,
    previous: Option<&TelegramStatus>,
    now: Timestamp,
) -> Option<TelegramStatus> {
    let observed = TelegramStatus {
        pending_update_count: info.pending_update_count,
        last_error_date: info
            .last_error_date
            .and_then(|s| Timestamp::from_second(s).ok())
            .map(Time),
        last_error_message: info.last_error_message.clone(),
        last_sync_time: None,
    };
    match previous {
        Some(previous)
            if TelegramStatus {
                last_sync_time: None,
                ..previous.clone()
            } == observed =>
        {
            Some(previous.clone())
        }
        _ => Some(TelegramStatus {
            last_sync_time: Some(Time(now)),
            ..observed
        }),
    }
}
