//! The controller: reconciles every ManagedBot it can see. The decisions are
//! in [`plan`] and [`status`]; this module only reads what they need, carries
//! out the step they name, and reports.

pub mod known;
pub mod leader;
pub mod plan;
pub mod status;
pub mod webhook_secret;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{api::core::v1::Secret, jiff::Timestamp};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{PartialObjectMeta, Patch, PatchParams, PostParams},
    runtime::{
        Controller, WatchStreamExt as _,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        finalizer::{self, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use rand::RngExt;

use crate::{
    metrics::Metrics,
    resource::{FINALIZER, ManagedBot, ManagedBotStatus},
    telegram::{self, BotToken, SetWebhook},
};
use known::Known;
use plan::{Call, Facts, Input, RotationCause, SecretState, Settings, Step, TokenState};
use webhook_secret::{Previous, WebhookSecret, secret_name};

/// The field manager of every write the controller makes.
pub const FIELD_MANAGER: &str = "managedbot-controller";

/// Errors that end a reconcile early; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// Telegram failed in a way worth retrying.
    #[error("{0}")]
    Telegram(telegram::Error),
    /// The OS random number generator failed.
    #[error("the OS random number generator failed: {0}")]
    Random(#[from] rand::rngs::SysError),
    /// The finalizer helper failed.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<finalizer::Error<Error>>),
    /// The plan did not settle (a bug).
    #[error("the reconcile did not settle after {0} steps")]
    NoProgress(usize),
    /// A patch could not be built (a bug).
    #[error("building a patch: {0}")]
    Patch(String),
}

impl Error {
    /// A label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Telegram(e) => e.label(),
            Self::Random(_) => "random",
            Self::Finalizer(_) => "finalizer",
            Self::NoProgress(_) => "no_progress",
            Self::Patch(_) => "patch",
        }
    }
}

type Result<T, E = Error> = std::result::Result<T, E>;

/// What every reconcile shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Telegram client.
    pub telegram: telegram::Client,
    /// Events.
    pub recorder: Recorder,
    /// Decision settings.
    pub settings: Settings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The bots of every watched namespace, for conflicts and token Secrets.
    pub stores: Vec<Store<ManagedBot>>,
    /// The metadata of every Secret of the watched namespaces: their versions.
    pub secrets: Vec<Store<PartialObjectMeta<Secret>>>,
    /// How many of the caches (`expected_caches` in all) have been listed.
    /// Not `Store::wait_until_ready`: kube-runtime 5 wakes only the last of
    /// several tasks waiting on one store, and leaves the others waiting.
    listed: tokio::sync::watch::Receiver<usize>,
    expected_caches: usize,
    known: Known,
    drift_checked: Mutex<HashMap<ObjectRef<ManagedBot>, Instant>>,
    telegram_not_before: Mutex<HashMap<i64, Instant>>,
    failures: Mutex<HashMap<ObjectRef<ManagedBot>, u32>>,
}

impl Context {
    /// A context over the given stores.
    pub fn new(
        client: Client,
        telegram: telegram::Client,
        settings: Settings,
        metrics: Arc<Metrics>,
        stores: Vec<Store<ManagedBot>>,
        secrets: Vec<Store<PartialObjectMeta<Secret>>>,
        listed: tokio::sync::watch::Receiver<usize>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: hostname(),
            },
        );
        Self {
            client,
            telegram,
            recorder,
            settings,
            metrics,
            expected_caches: stores.len() + secrets.len(),
            stores,
            secrets,
            listed,
            known: Known::default(),
            drift_checked: Mutex::default(),
            telegram_not_before: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    fn drift_check_due(&self, key: &ObjectRef<ManagedBot>) -> (bool, Duration) {
        let checked = lock(&self.drift_checked).get(key).copied();
        match checked {
            Some(at) if at.elapsed() < self.settings.resync_interval => {
                (false, self.settings.resync_interval - at.elapsed())
            }
            _ => (true, self.settings.resync_interval),
        }
    }

    /// Returns once every cache has been listed.
    async fn caches_listed(&self) {
        let mut listed = self.listed.clone();
        let _ = listed.wait_for(|n| *n >= self.expected_caches).await;
    }

    /// The version of a Secret as the watch cache shows it; `None` when absent.
    fn secret_version(&self, namespace: &str, name: &str) -> Option<String> {
        let reference = ObjectRef::<PartialObjectMeta<Secret>>::new(name).within(namespace);
        self.secrets
            .iter()
            .find_map(|store| store.get(&reference))
            .and_then(|secret| secret.resource_version())
    }

    fn mark_drift_checked(&self, key: &ObjectRef<ManagedBot>) {
        lock(&self.drift_checked).insert(key.clone(), Instant::now());
    }

    /// How long Telegram asked us to wait before calling for this bot again.
    fn telegram_wait(&self, bot_id: i64) -> Option<Duration> {
        let not_before = lock(&self.telegram_not_before).get(&bot_id).copied()?;
        not_before.checked_duration_since(Instant::now())
    }

    fn telegram_wait_at_least(&self, bot_id: i64, wait: Duration) {
        lock(&self.telegram_not_before).insert(bot_id, Instant::now() + wait);
    }

    /// The oldest other bot that holds the same Telegram bot, as `namespace/name`.
    fn conflict_with(&self, bot: &ManagedBot, bot_id: i64) -> Option<String> {
        let me = (bot.creation_timestamp().map(|t| t.0), key_of(bot));
        self.stores
            .iter()
            .flat_map(|store| store.state())
            .filter(|other| {
                other.uid() != bot.uid()
                    && other.meta().deletion_timestamp.is_none()
                    && !other.spec.suspend
                    && other
                        .status
                        .as_ref()
                        .and_then(|s| s.bot.as_ref())
                        .is_some_and(|b| b.id == bot_id)
                    && other
                        .status
                        .as_ref()
                        .and_then(|s| status::condition(s, status::READY))
                        .is_none_or(|c| c.reason != status::Reason::WebhookConflict.as_str())
            })
            .map(|other| (other.creation_timestamp().map(|t| t.0), key_of(&other)))
            .filter(|other| *other < me)
            .min()
            .map(|(_, key)| key)
    }

    async fn publish(
        &self,
        bot: &ManagedBot,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &bot.object_ref(&())).await {
            tracing::warn!(bot = %key_of(bot), %error, "could not publish an Event");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn key_of(bot: &ManagedBot) -> String {
    format!("{}/{}", bot.namespace().unwrap_or_default(), bot.name_any())
}

fn hostname() -> Option<String> {
    std::env::var("POD_NAME").ok().or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
    })
}

/// Now at whole seconds: Kubernetes stores times at second precision, and a
/// status computed with a finer time would never equal the stored one.
fn now() -> Timestamp {
    Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// Reconciles one bot.
pub async fn reconcile(bot: Arc<ManagedBot>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    // Conflicts are decided over every bot, Secrets by their cached
    // versions: wait for every first list.
    ctx.caches_listed().await;
    let namespace = bot.namespace().unwrap_or_default();
    let api: Api<ManagedBot> = Api::namespaced(ctx.client.clone(), &namespace);
    let adding =
        bot.meta().deletion_timestamp.is_none() && !bot.finalizers().iter().any(|f| f == FINALIZER);
    let result = if adding {
        // kube's finalizer helper would stop after adding the finalizer and
        // wait for the watch to bring the bot back; carrying on with the
        // patched bot saves a round trip per new bot.
        match add_finalizer(&api, &bot).await {
            Ok(patched) => {
                ctx.known.saw_bot(&patched);
                apply(Arc::new(patched), &ctx).await
            }
            Err(error) => Err(error),
        }
    } else {
        finalizer(&api, FINALIZER, bot.clone(), |event| async {
            match event {
                finalizer::Event::Apply(bot) => apply(bot, &ctx).await,
                finalizer::Event::Cleanup(bot) => cleanup(bot, &ctx).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    };
    ctx.metrics.reconciled(started, result.is_ok());
    if result.is_ok() {
        lock(&ctx.failures).remove(&ObjectRef::from_obj(&*bot));
    }
    // A failed step may have left things other than this controller knows;
    // a deleted bot needs nothing known.
    if result.is_err() || bot.meta().deletion_timestamp.is_some() {
        ctx.known.forget(&ObjectRef::from_obj(&*bot));
    }
    result
}

/// Adds the finalizer, failing (to be retried) if the finalizers changed
/// since `bot` was read, as kube's helper does; returns the patched bot.
async fn add_finalizer(api: &Api<ManagedBot>, bot: &ManagedBot) -> Result<ManagedBot> {
    let current = bot.finalizers();
    let patch = if current.is_empty() {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]},
        ])
    } else {
        serde_json::json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER},
        ])
    };
    let patch: json_patch::Patch =
        serde_json::from_value(patch).map_err(|e| Error::Patch(e.to_string()))?;
    Ok(api
        .patch(
            &bot.name_any(),
            &PatchParams::default(),
            &Patch::Json::<()>(patch),
        )
        .await?)
}

/// Exponential backoff with jitter: 1 s, 2 s, 4 s … up to 5 min.
pub fn error_policy(bot: Arc<ManagedBot>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempts = {
        let mut failures = lock(&ctx.failures);
        let attempts = failures.entry(ObjectRef::from_obj(&*bot)).or_insert(0);
        *attempts = attempts.saturating_add(1);
        *attempts
    };
    let base = Duration::from_secs(1u64 << attempts.min(9).saturating_sub(1))
        .min(Duration::from_secs(300));
    let jitter = rand::rng().random_range(0.8..1.2);
    tracing::warn!(bot = %key_of(&bot), error = %error, kind = error.label(), attempts, "reconcile failed");
    Action::requeue(base.mul_f64(jitter))
}

/// The bot's token, from what is known while its Secret is unchanged.
async fn read_token(bot: &ManagedBot, ctx: &Context) -> Result<TokenState> {
    let key = ObjectRef::from_obj(bot);
    let namespace = bot.namespace().unwrap_or_default();
    let reference = &bot.spec.token_secret_ref;
    let cached = ctx.secret_version(&namespace, &reference.name);
    if let Some(known) = ctx
        .known
        .token(&key, &reference.name, reference.key(), cached.as_deref())
    {
        return Ok(known);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets.get_opt(&reference.name).await?;
    let version = secret.as_ref().and_then(|s| s.resource_version());
    let state = match secret {
        None => TokenState::SecretNotFound,
        Some(secret) => match secret.data.as_ref().and_then(|d| d.get(reference.key())) {
            None => TokenState::KeyNotFound,
            Some(value) => match BotToken::parse(&String::from_utf8_lossy(&value.0)) {
                Ok(token) => TokenState::Present(token),
                Err(error) => TokenState::Malformed(error),
            },
        },
    };
    ctx.known
        .saw_token(&key, &reference.name, reference.key(), version, &state);
    Ok(state)
}

/// The bot's webhook Secret and its version, from what is known while it is
/// unchanged.
async fn read_webhook_secret(
    bot: &ManagedBot,
    ctx: &Context,
) -> Result<(SecretState, Option<String>)> {
    let key = ObjectRef::from_obj(bot);
    let namespace = bot.namespace().unwrap_or_default();
    let name = secret_name(&bot.name_any());
    let cached = ctx.secret_version(&namespace, &name);
    if let Some(known) = ctx.known.webhook(&key, cached.as_deref()) {
        return Ok(known);
    }
    if cached.is_none() {
        // Absent from the listed cache: it is created next, and should it
        // exist after all, the create fails with 409 and reads it then.
        return Ok((SecretState::Missing, None));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let (state, version) = match secrets.get_opt(&name).await? {
        None => (SecretState::Missing, None),
        Some(secret) => {
            let version = secret.resource_version();
            match WebhookSecret::from_secret(&secret) {
                Ok(parsed) => (SecretState::Present(parsed), version),
                Err(error) => (SecretState::Invalid(error), version),
            }
        }
    };
    ctx.known.saw_webhook(&key, version.clone(), &state);
    Ok((state, version))
}

/// One reconcile of a bot that is not being deleted: plan, act, repeat.
async fn apply(bot: Arc<ManagedBot>, ctx: &Context) -> Result<Action> {
    let key = ObjectRef::from_obj(&*bot);
    // The watch cache can lag behind this controller's own last writes (an
    // event for the owned Secret may arrive before the one for the status);
    // deciding from a stale status would register twice. A cached bot at the
    // version this controller last wrote or read is not stale in that way;
    // any other is read afresh.
    let mut bot = if ctx.known.bot_is_current(&bot) {
        (*bot).clone()
    } else {
        let api: Api<ManagedBot> =
            Api::namespaced(ctx.client.clone(), &bot.namespace().unwrap_or_default());
        let Some(fresh) = api.get_opt(&bot.name_any()).await? else {
            return Ok(Action::await_change());
        };
        ctx.known.saw_bot(&fresh);
        fresh
    };
    let token = read_token(&bot, ctx).await?;
    if let TokenState::Present(token) = &token
        && let Some(wait) = ctx.telegram_wait(token.bot_id())
    {
        return Ok(Action::requeue(wait));
    }
    let (mut secret, mut version) = read_webhook_secret(&bot, ctx).await?;
    let mut facts = Facts::default();
    let secrets: Api<Secret> =
        Api::namespaced(ctx.client.clone(), &bot.namespace().unwrap_or_default());
    const MAX_STEPS: usize = 16;
    for _ in 0..MAX_STEPS {
        let now = now();
        let (drift_check_due, next_drift_check) = ctx.drift_check_due(&key);
        if let TokenState::Present(token) = &token {
            let bot_id = facts.me.as_ref().map(|m| m.id).or(Some(token.bot_id()));
            facts.conflict_with = bot_id.and_then(|id| ctx.conflict_with(&bot, id));
        }
        let input = Input {
            bot: &bot,
            token: &token,
            secret: &secret,
            facts: &facts,
            drift_check_due,
            now,
            settings: &ctx.settings,
        };
        let step = plan::plan(&input);
        tracing::debug!(bot = %key, ?step, "next step");
        let TokenState::Present(bot_token) = &token else {
            return finish(&bot, &input, next_drift_check, ctx).await;
        };
        // What the steps below wrote is what the next reconcile will find.
        ctx.known.saw_webhook(&key, version.clone(), &secret);
        match step {
            Step::Finish => return finish(&bot, &input, next_drift_check, ctx).await,
            Step::VerifyToken => match call(ctx, "getMe", ctx.telegram.get_me(bot_token)).await {
                Ok(me) => facts.me = Some(me),
                Err(error) => facts.failure = Some((Call::GetMe, error)),
            },
            Step::CreateSecret => {
                let rotation_observed = plan::rotate_annotation(&bot).map(str::to_string);
                let fresh =
                    WebhookSecret::generate(rotation_observed, now, bot_token.sha256_hex())?;
                let url = plan::webhook_url(&input, &fresh);
                let lost = bot.status.as_ref().is_some_and(|s| s.routing.is_some());
                match secrets
                    .create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &fresh.to_secret(&bot, url.as_deref()),
                    )
                    .await
                {
                    Ok(created) => {
                        version = created.resource_version();
                        secret = SecretState::Present(fresh);
                        if lost {
                            ctx.publish(
                                &bot,
                                EventType::Warning,
                                "WebhookSecretRecreated",
                                "Recreate",
                                format!(
                                    "Secret {} was gone: generated a new pair and registering it",
                                    secret_name(&bot.name_any())
                                ),
                            )
                            .await;
                        }
                    }
                    // Another writer (an earlier reconcile) won the race: use its pair.
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        (secret, version) = read_webhook_secret(&bot, ctx).await?
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Step::Rotate(cause) => {
                let SecretState::Present(current) = &secret else {
                    return Err(Error::NoProgress(0));
                };
                let grace = plan::rotation_grace(&bot, &cause);
                let rotated = WebhookSecret {
                    current: webhook_secret::Pair::generate()?,
                    previous: (!grace.is_zero()).then(|| Previous {
                        pair: current.current.clone(),
                        expires_at: now
                            + k8s_openapi::jiff::SignedDuration::try_from(grace)
                                .unwrap_or_default(),
                    }),
                    rotation_observed: match &cause {
                        RotationCause::Requested(value) => Some(value.clone()),
                        RotationCause::Interval => current.rotation_observed.clone(),
                    },
                    generated_at: Some(now),
                    token_sha256: current.token_sha256.clone(),
                };
                version =
                    Some(replace_secret(&secrets, &bot, &rotated, version, &ctx.settings).await?);
                tracing::info!(bot = %key, ?cause, grace_secs = grace.as_secs(), "rotated the webhook secret");
                secret = SecretState::Present(rotated);
            }
            Step::ExpirePrevious => {
                let SecretState::Present(current) = &secret else {
                    return Err(Error::NoProgress(0));
                };
                let expired = WebhookSecret {
                    previous: None,
                    ..current.clone()
                };
                version =
                    Some(replace_secret(&secrets, &bot, &expired, version, &ctx.settings).await?);
                secret = SecretState::Present(expired);
            }
            Step::PublishRouting => {
                let SecretState::Present(current) = &secret else {
                    return Err(Error::NoProgress(0));
                };
                let mut status = bot.status.clone().unwrap_or_default();
                status.routing = Some(current.routing(now));
                bot.status = Some(write_status(ctx, &bot, &status).await?);
            }
            Step::Register => {
                let SecretState::Present(current) = &secret else {
                    return Err(Error::NoProgress(0));
                };
                let url = plan::webhook_url(&input, current).unwrap_or_default();
                let webhook = &bot.spec.webhook;
                let params = SetWebhook {
                    url: url.clone(),
                    secret_token: Some(current.current.secret_token.clone()),
                    max_connections: webhook.max_connections,
                    // Omitted would keep Telegram's previous list; [] means its default.
                    allowed_updates: Some(
                        webhook
                            .allowed_updates
                            .iter()
                            .flatten()
                            .map(|u| {
                                serde_json::to_value(u)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_string))
                                    .unwrap_or_default()
                            })
                            .collect(),
                    ),
                    drop_pending_updates: webhook.drop_pending_updates,
                    ip_address: None,
                };
                let drifted = facts.info.as_ref().is_some_and(|i| i.url != url);
                let previous_url = bot.status.as_ref().and_then(|s| s.webhook_url.clone());
                match call(
                    ctx,
                    "setWebhook",
                    ctx.telegram.set_webhook(bot_token, &params),
                )
                .await
                {
                    Ok(_) => {
                        facts.registered = true;
                        ctx.mark_drift_checked(&key);
                        if current.token_sha256.as_deref() != Some(bot_token.sha256_hex().as_str())
                        {
                            let updated = WebhookSecret {
                                token_sha256: Some(bot_token.sha256_hex()),
                                ..current.clone()
                            };
                            version = Some(
                                replace_secret(&secrets, &bot, &updated, version, &ctx.settings)
                                    .await?,
                            );
                            secret = SecretState::Present(updated);
                        }
                        let (reason, note) = if drifted {
                            ("DriftCorrected", "Telegram's webhook had been changed elsewhere; registered ours again".to_string())
                        } else if previous_url.as_ref().is_some_and(|p| *p != url) {
                            (
                                "Rotated",
                                "registered the new webhook secret with Telegram".to_string(),
                            )
                        } else {
                            (
                                "Registered",
                                "registered the webhook with Telegram".to_string(),
                            )
                        };
                        ctx.publish(&bot, EventType::Normal, reason, "SetWebhook", note)
                            .await;
                    }
                    Err(error) => {
                        ctx.publish(
                            &bot,
                            EventType::Warning,
                            "RegistrationFailed",
                            "SetWebhook",
                            format!("setWebhook failed: {error}"),
                        )
                        .await;
                        facts.failure = Some((Call::SetWebhook, error));
                    }
                }
            }
            Step::CheckWebhook => match call(
                ctx,
                "getWebhookInfo",
                ctx.telegram.get_webhook_info(bot_token),
            )
            .await
            {
                Ok(info) => {
                    ctx.mark_drift_checked(&key);
                    facts.info = Some(info);
                }
                Err(error) => facts.failure = Some((Call::GetWebhookInfo, error)),
            },
            Step::Unregister => {
                let secret = match &secret {
                    SecretState::Present(s) => Some(s),
                    _ => None,
                };
                match unregister_if_ours(&bot, bot_token, secret, ctx).await {
                    Ok(()) => facts.unregistered = true,
                    Err(failure) => facts.failure = Some(failure),
                }
            }
        }
    }
    Err(Error::NoProgress(MAX_STEPS))
}

async fn call<T>(
    ctx: &Context,
    method: &'static str,
    future: impl Future<Output = Result<T, telegram::Error>>,
) -> Result<T, telegram::Error> {
    let result = future.await;
    ctx.metrics.telegram_call(
        method,
        result
            .as_ref()
            .map_or_else(telegram::Error::label, |_| "ok"),
    );
    result
}

async fn replace_secret(
    secrets: &Api<Secret>,
    bot: &ManagedBot,
    content: &WebhookSecret,
    version: Option<String>,
    settings: &Settings,
) -> Result<String> {
    let mut object = content.to_secret(bot, plan::url_for(bot, settings, content).as_deref());
    // The resourceVersion makes this a compare-and-swap: a concurrent writer
    // makes it fail with 409 and the reconcile starts over from what is stored.
    object.metadata.resource_version = version;
    let replaced = secrets
        .replace(
            &secret_name(&bot.name_any()),
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &object,
        )
        .await?;
    Ok(replaced.resource_version().unwrap_or_default())
}

async fn write_status(
    ctx: &Context,
    bot: &ManagedBot,
    status: &ManagedBotStatus,
) -> Result<ManagedBotStatus> {
    let api: Api<ManagedBot> =
        Api::namespaced(ctx.client.clone(), &bot.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "managedbot.dev/v1alpha1",
        "kind": "ManagedBot",
        "status": status,
    });
    let written = api
        .patch_status(
            &bot.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.known.saw_bot(&written);
    Ok(written.status.unwrap_or_default())
}

/// Writes the status if it changed, reports transitions, and says when to
/// come back.
async fn finish(
    bot: &ManagedBot,
    input: &Input<'_>,
    next_drift_check: Duration,
    ctx: &Context,
) -> Result<Action> {
    let desired = status::desired(input);
    let before = bot
        .status
        .as_ref()
        .and_then(|s| status::condition(s, status::READY))
        .map(|c| c.reason.clone());
    let after = status::condition(&desired, status::READY);
    ctx.metrics.bot_ready(
        &key_of(bot),
        after.map(|c| match c.status.as_str() {
            "True" => "True",
            "False" => "False",
            _ => "Unknown",
        }),
    );
    if bot.status.as_ref() != Some(&desired) {
        write_status(ctx, bot, &desired).await?;
        if let Some(after) = after
            && before.as_deref() != Some(after.reason.as_str())
            && after.status != "True"
        {
            let reason = match after.reason.as_str() {
                "WebhookConflict" => "Conflict",
                other => other,
            };
            ctx.publish(
                bot,
                EventType::Warning,
                reason,
                "Reconcile",
                after.message.clone(),
            )
            .await;
        }
    }
    match &input.facts.failure {
        Some((_, telegram::Error::RateLimited { retry_after })) => {
            if let TokenState::Present(token) = input.token {
                ctx.telegram_wait_at_least(token.bot_id(), *retry_after);
            }
            Ok(Action::requeue(*retry_after + Duration::from_millis(100)))
        }
        // A refused token only changes when its Secret does, which the watch reports.
        Some((_, telegram::Error::Unauthorized { .. })) => {
            Ok(Action::requeue(ctx.settings.resync_interval))
        }
        Some((_, error)) => Err(Error::Telegram(error.clone())),
        None => Ok(Action::requeue(plan::requeue_after(
            input,
            next_drift_check,
        ))),
    }
}

/// deleteWebhook, but only when Telegram's webhook is one of ours.
async fn unregister_if_ours(
    bot: &ManagedBot,
    token: &BotToken,
    secret: Option<&WebhookSecret>,
    ctx: &Context,
) -> Result<(), (Call, telegram::Error)> {
    let info = call(ctx, "getWebhookInfo", ctx.telegram.get_webhook_info(token))
        .await
        .map_err(|e| (Call::GetWebhookInfo, e))?;
    if info.url.is_empty() {
        return Ok(());
    }
    if !plan::our_urls(bot, secret, &ctx.settings).contains(&info.url) {
        ctx.publish(
            bot,
            EventType::Normal,
            "UnregisterSkipped",
            "DeleteWebhook",
            "Telegram's webhook points elsewhere; left it alone".into(),
        )
        .await;
        return Ok(());
    }
    call(
        ctx,
        "deleteWebhook",
        ctx.telegram.delete_webhook(token, false),
    )
    .await
    .map_err(|e| (Call::DeleteWebhook, e))?;
    ctx.publish(
        bot,
        EventType::Normal,
        "Unregistered",
        "DeleteWebhook",
        "deleted the webhook at Telegram".into(),
    )
    .await;
    Ok(())
}

/// How long deletion keeps retrying a Telegram that fails before it lets
/// the bot go with its webhook still set.
const CLEANUP_PATIENCE: Duration = Duration::from_secs(5 * 60);

async fn cleanup(bot: Arc<ManagedBot>, ctx: &Context) -> Result<Action> {
    ctx.metrics.bot_ready(&key_of(&bot), None);
    lock(&ctx.drift_checked).remove(&ObjectRef::from_obj(&*bot));
    let TokenState::Present(token) = read_token(&bot, ctx).await? else {
        ctx.publish(
            &bot,
            EventType::Warning,
            "UnregisterSkipped",
            "DeleteWebhook",
            "no usable token: Telegram's webhook was left as it is".into(),
        )
        .await;
        return Ok(Action::await_change());
    };
    if ctx.conflict_with(&bot, token.bot_id()).is_some() {
        return Ok(Action::await_change());
    }
    let (secret, _) = read_webhook_secret(&bot, ctx).await?;
    let secret = match &secret {
        SecretState::Present(s) => Some(s),
        _ => None,
    };
    match unregister_if_ours(&bot, &token, secret, ctx).await {
        Ok(()) => Ok(Action::await_change()),
        Err((_, telegram::Error::Unauthorized { .. })) => {
            ctx.publish(
                &bot,
                EventType::Warning,
                "UnregisterSkipped",
                "DeleteWebhook",
                "Telegram refused the token: the webhook could not be deleted".into(),
            )
            .await;
            Ok(Action::await_change())
        }
        Err((_, error)) => {
            let deleting_for = bot
                .meta()
                .deletion_timestamp
                .as_ref()
                .and_then(|t| Duration::try_from(Timestamp::now().duration_since(t.0)).ok())
                .unwrap_or_default();
            if deleting_for > CLEANUP_PATIENCE {
                ctx.publish(
                    &bot,
                    EventType::Warning,
                    "UnregisterSkipped",
                    "DeleteWebhook",
                    format!(
                        "gave up deleting the webhook after {}s: {error}",
                        deleting_for.as_secs()
                    ),
                )
                .await;
                Ok(Action::await_change())
            } else {
                Err(Error::Telegram(error))
            }
        }
    }
}

/// The controller's run-time options.
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Reconciles at once, per namespace watched.
    pub concurrency: u16,
}

/// Runs the controllers until the process is asked to stop.
pub async fn run(
    client: Client,
    telegram: telegram::Client,
    settings: Settings,
    options: Options,
    metrics: Arc<Metrics>,
) {
    let scopes: Vec<Option<String>> = if options.namespaces.is_empty() {
        vec![None]
    } else {
        options.namespaces.iter().cloned().map(Some).collect()
    };
    let mut secret_stores = Vec::with_capacity(scopes.len());
    let (listed, listed_rx) = tokio::sync::watch::channel(0usize);
    let controllers: Vec<Controller<ManagedBot>> = scopes
        .iter()
        .map(|scope| {
            let bots: Api<ManagedBot> = scoped(&client, scope.as_deref());
            // managedFields are most of a cached object's memory and of no use here.
            let (store, writer) = reflector::store();
            let bot_changes = watcher(bots, watcher::Config::default())
                .modify(|bot: &mut ManagedBot| bot.managed_fields_mut().clear())
                .reflect(writer)
                .inspect(first_list_counted(&listed))
                .applied_objects();
            let controller = Controller::for_stream(bot_changes, store.clone());
            // One watch of Secrets' metadata (never their data) serves three
            // purposes: the owned webhook Secret reconciles its bot, a token
            // Secret every bot that names it, and its versions tell a
            // reconcile whether what it knows of a Secret still holds.
            let (secrets, secrets_writer) = reflector::store();
            secret_stores.push(secrets);
            let secrets_metadata: Api<PartialObjectMeta<Secret>> =
                scoped(&client, scope.as_deref());
            let secret_changes = watcher(secrets_metadata, watcher::Config::default())
                .default_backoff()
                .modify(|secret: &mut PartialObjectMeta<Secret>| {
                    secret.managed_fields_mut().clear()
                })
                .reflect(secrets_writer)
                .inspect(first_list_counted(&listed))
                .touched_objects();
            controller
                .watches_stream(secret_changes, move |secret: PartialObjectMeta<Secret>| {
                    bots_of_secret(&secret, &store.state())
                })
                .with_config(
                    kube::runtime::controller::Config::default().concurrency(options.concurrency),
                )
                .shutdown_on_signal()
        })
        .collect();
    let stores = controllers.iter().map(Controller::store).collect();
    let ctx = Arc::new(Context::new(
        client,
        telegram,
        settings,
        metrics.clone(),
        stores,
        secret_stores,
        listed_rx,
    ));
    metrics.set_ready(true);
    let runs = controllers.into_iter().map(|controller| {
        controller
            .run(reconcile, error_policy, ctx.clone())
            .for_each(|result| async move {
                if let Err(error) = result {
                    tracing::debug!(%error, "reconcile ended with an error");
                }
            })
    });
    futures::future::join_all(runs).await;
}

/// Counts a watch's first complete list (its store is then ready) once.
fn first_list_counted<K>(
    listed: &tokio::sync::watch::Sender<usize>,
) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) + use<K> {
    let listed = listed.clone();
    let mut counted = false;
    move |event| {
        if !counted && matches!(event, Ok(watcher::Event::InitDone)) {
            counted = true;
            listed.send_modify(|n| *n += 1);
        }
    }
}

/// The bots a change of `secret` concerns: the bot that owns it (its webhook
/// Secret) and the bots that name it as their token Secret.
fn bots_of_secret(
    secret: &PartialObjectMeta<Secret>,
    bots: &[Arc<ManagedBot>],
) -> Vec<ObjectRef<ManagedBot>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    let owner = secret
        .owner_references()
        .iter()
        .filter(|owner| {
            owner.kind == "ManagedBot" && owner.api_version.starts_with("managedbot.dev/")
        })
        .map(|owner| ObjectRef::new(&owner.name).within(namespace.as_deref().unwrap_or_default()));
    let users = bots
        .iter()
        .filter(|bot| bot.namespace() == namespace && bot.spec.token_secret_ref.name == name)
        .map(|bot| ObjectRef::from_obj(&**bot));
    owner.chain(users).collect()
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}
