//! The controller's decisions, as pure functions: given the bot, its token,
//! its webhook Secret, what Telegram said during this reconcile and the time,
//! [`plan`] names the next step. The reconciler executes it, records what it
//! learned in [`Facts`], and asks again until the answer is [`Step::Finish`].
//! Nothing here does I/O, so the whole decision table is unit-tested.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::{
    resource::{ManagedBot, ROTATE_ANNOTATION, ROTATE_NOW_ANNOTATION},
    telegram::{self, BotToken, TokenFormatError, User, WebhookInfo},
};

use super::{
    status::{self, Reason},
    webhook_secret::{InvalidSecret, WebhookSecret},
};

/// The default grace period of a rotated pair.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(5 * 60);

/// What the token Secret gave.
#[derive(Debug, Clone)]
pub enum TokenState {
    /// The Secret does not exist.
    SecretNotFound,
    /// The Secret has no such key.
    KeyNotFound,
    /// The value is not in Telegram's token format.
    Malformed(TokenFormatError),
    /// A token to use.
    Present(BotToken),
}

/// What the generated Secret gave.
#[derive(Debug, Clone)]
pub enum SecretState {
    /// Not created yet, or deleted.
    Missing,
    /// Edited into something unusable.
    Invalid(InvalidSecret),
    /// The pair.
    Present(WebhookSecret),
}

/// A Telegram method, to say which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// getMe
    GetMe,
    /// setWebhook
    SetWebhook,
    /// getWebhookInfo
    GetWebhookInfo,
    /// deleteWebhook
    DeleteWebhook,
}

/// What this reconcile has learned so far.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// getMe's answer.
    pub me: Option<User>,
    /// setWebhook succeeded for the current pair.
    pub registered: bool,
    /// The webhook is no longer ours at Telegram (deleted, or pointing elsewhere).
    pub unregistered: bool,
    /// getWebhookInfo's answer.
    pub info: Option<WebhookInfo>,
    /// Another ManagedBot, named `namespace/name`, holds this bot.
    pub conflict_with: Option<String>,
    /// A Telegram call failed: the reconcile stops and reports it.
    pub failure: Option<(Call, telegram::Error)>,
}

/// The controller's settings that decisions depend on.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--public-base-url`, for bots without `spec.webhook.baseUrl`.
    pub default_base_url: Option<String>,
    /// How often the webhook is checked with getWebhookInfo.
    pub resync_interval: Duration,
}

/// Everything a decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// The bot as last seen.
    pub bot: &'a ManagedBot,
    /// Its token.
    pub token: &'a TokenState,
    /// Its generated Secret.
    pub secret: &'a SecretState,
    /// What Telegram said during this reconcile.
    pub facts: &'a Facts,
    /// Whether a getWebhookInfo drift check is due.
    pub drift_check_due: bool,
    /// Now, at whole seconds.
    pub now: Timestamp,
    /// The controller's settings.
    pub settings: &'a Settings,
}

/// Why a new pair is generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationCause {
    /// The rotate annotation changed to this value.
    Requested(String),
    /// `spec.rotation.interval` has passed since the pair was generated.
    Interval,
}

/// The next thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// getMe, to validate the token and learn the bot's id.
    VerifyToken,
    /// Generate a pair into a new Secret.
    CreateSecret,
    /// Generate a new pair, keeping the current one as previous during the grace period.
    Rotate(RotationCause),
    /// Remove the expired previous pair from the Secret.
    ExpirePrevious,
    /// Write `status.routing`, before Telegram is told the new URL.
    PublishRouting,
    /// setWebhook with the current pair.
    Register,
    /// getWebhookInfo, the periodic drift check.
    CheckWebhook,
    /// Suspended: deleteWebhook if Telegram's webhook is ours.
    Unregister,
    /// Write the status if it changed, and wait.
    Finish,
}

/// The next step for a bot that is not being deleted.
pub fn plan(input: &Input) -> Step {
    let Input {
        bot,
        token,
        secret,
        facts,
        now,
        ..
    } = *input;
    if facts.failure.is_some() {
        return Step::Finish;
    }
    let TokenState::Present(token) = token else {
        return Step::Finish;
    };
    let current_status = bot.status.clone().unwrap_or_default();
    if bot.spec.suspend {
        let registered = current_status.webhook_url.is_some() || current_status.routing.is_some();
        return if registered && !facts.unregistered {
            Step::Unregister
        } else {
            Step::Finish
        };
    }
    let secret = match secret {
        SecretState::Present(secret) => Some(secret),
        SecretState::Invalid(_) => return Step::Finish,
        SecretState::Missing => None,
    };
    if facts.me.is_none() && needs_token_check(input, token, secret) {
        return Step::VerifyToken;
    }
    if facts.conflict_with.is_some() {
        return Step::Finish;
    }
    let Some(secret) = secret else {
        return Step::CreateSecret;
    };
    let Some(url) = webhook_url(input, secret) else {
        return Step::Finish;
    };
    if let Some(cause) = rotation_due(input, secret) {
        return Step::Rotate(cause);
    }
    if secret
        .previous
        .as_ref()
        .is_some_and(|p| p.expires_at <= now)
    {
        return Step::ExpirePrevious;
    }
    if current_status.routing.as_ref() != Some(&secret.routing(now)) {
        return Step::PublishRouting;
    }
    if !facts.registered && needs_registration(input, token, secret, &url) {
        return Step::Register;
    }
    if input.drift_check_due && facts.info.is_none() && !facts.registered {
        return Step::CheckWebhook;
    }
    Step::Finish
}

/// getMe is needed when the bot's identity is unknown or the token changed.
fn needs_token_check(input: &Input, token: &BotToken, secret: Option<&WebhookSecret>) -> bool {
    let status = input.bot.status.as_ref();
    let identity_known = status
        .and_then(|s| s.bot.as_ref())
        .is_some_and(|b| b.id == token.bot_id());
    let token_trusted = status::condition_is_true(status, status::TOKEN_VALID);
    let same_token =
        secret.is_none_or(|s| s.token_sha256.as_deref() == Some(token.sha256_hex().as_str()));
    !(identity_known && token_trusted && same_token)
}

fn needs_registration(input: &Input, token: &BotToken, secret: &WebhookSecret, url: &str) -> bool {
    let status = input.bot.status.as_ref();
    let registered_for_this_spec = status
        .and_then(|s| status::condition(s, status::WEBHOOK_REGISTERED))
        .is_some_and(|c| {
            c.status == "True" && c.observed_generation == input.bot.metadata.generation
        });
    let url_registered = status.and_then(|s| s.webhook_url.as_deref()) == Some(url);
    let token_registered = secret.token_sha256.as_deref() == Some(token.sha256_hex().as_str());
    let drifted = input
        .facts
        .info
        .as_ref()
        .is_some_and(|info| info.url != url);
    !(registered_for_this_spec && url_registered && token_registered) || drifted
}

fn rotation_due(input: &Input, secret: &WebhookSecret) -> Option<RotationCause> {
    let requested = rotate_annotation(input.bot);
    if let Some(value) = requested
        && secret.rotation_observed.as_deref() != Some(value)
    {
        return Some(RotationCause::Requested(value.to_string()));
    }
    let interval = input.bot.spec.rotation.as_ref()?.interval.as_ref()?;
    let generated = secret.generated_at?;
    let due = generated
        .checked_add(SignedDuration::try_from(std::time::Duration::from(*interval)).ok()?)
        .ok()?;
    (input.now >= due).then_some(RotationCause::Interval)
}

/// The value of the rotate annotation, if set.
pub fn rotate_annotation(bot: &ManagedBot) -> Option<&str> {
    bot.metadata
        .annotations
        .as_ref()?
        .get(ROTATE_ANNOTATION)
        .map(String::as_str)
}

/// The base URL a bot's webhook lives under, without a trailing slash.
pub fn base_url<'a>(bot: &'a ManagedBot, settings: &'a Settings) -> Option<&'a str> {
    bot.spec
        .webhook
        .base_url
        .as_deref()
        .or(settings.default_base_url.as_deref())
        .map(|base| base.trim_end_matches('/'))
}

/// `{baseUrl}/webhook/{path secret}` for the current pair.
pub fn webhook_url(input: &Input, secret: &WebhookSecret) -> Option<String> {
    url_for(input.bot, input.settings, secret)
}

/// `{baseUrl}/webhook/{path secret}` for a bot's current pair.
pub fn url_for(bot: &ManagedBot, settings: &Settings, secret: &WebhookSecret) -> Option<String> {
    base_url(bot, settings).map(|base| format!("{base}/webhook/{}", secret.current.path_secret))
}

/// The URLs of a bot's pairs that are ours at Telegram: current and previous.
pub fn our_urls(
    bot: &ManagedBot,
    secret: Option<&WebhookSecret>,
    settings: &Settings,
) -> Vec<String> {
    let mut urls: Vec<String> = bot
        .status
        .as_ref()
        .and_then(|s| s.webhook_url.clone())
        .into_iter()
        .collect();
    if let (Some(base), Some(secret)) = (base_url(bot, settings), secret) {
        urls.push(format!("{base}/webhook/{}", secret.current.path_secret));
        if let Some(previous) = &secret.previous {
            urls.push(format!("{base}/webhook/{}", previous.pair.path_secret));
        }
    }
    urls
}

/// The grace period of a rotated pair.
pub fn grace_period(bot: &ManagedBot) -> Duration {
    bot.spec
        .rotation
        .as_ref()
        .and_then(|r| r.grace_period)
        .map(Duration::from)
        .unwrap_or(DEFAULT_GRACE_PERIOD)
}

/// The grace period of the pair a rotation for `cause` retires: none when
/// the rotate-now annotation names the requested value, else the spec's.
pub fn rotation_grace(bot: &ManagedBot, cause: &RotationCause) -> Duration {
    let cut_now = match cause {
        RotationCause::Requested(value) => bot
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROTATE_NOW_ANNOTATION))
            .is_some_and(|now| now == value),
        RotationCause::Interval => false,
    };
    if cut_now {
        Duration::ZERO
    } else {
        grace_period(bot)
    }
}

/// When the bot next needs attention without any event: the drift check,
/// the previous pair's expiry, the next interval rotation, or a slow retry
/// of a state only a person can fix.
pub fn requeue_after(input: &Input, next_drift_check: Duration) -> Duration {
    let reason = status::ready_reason(input);
    let mut wait = match reason {
        Reason::Registered => next_drift_check,
        _ => input.settings.resync_interval,
    };
    // Expiry and interval rotation are acted on only for a registered bot; a
    // deadline the plan would not act on must not pull the next reconcile in.
    if reason == Reason::Registered
        && let SecretState::Present(secret) = input.secret
    {
        let until =
            |at: Timestamp| Duration::try_from(at.duration_since(input.now)).unwrap_or_default();
        if let Some(previous) = &secret.previous {
            wait = wait.min(until(previous.expires_at));
        }
        if let (Some(interval), Some(generated)) = (
            input.bot.spec.rotation.as_ref().and_then(|r| r.interval),
            secret.generated_at,
        ) && let Ok(due) = generated
            .checked_add(SignedDuration::try_from(Duration::from(interval)).unwrap_or_default())
        {
            wait = wait.min(until(due));
        }
    }
    wait.max(Duration::from_secs(1))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
