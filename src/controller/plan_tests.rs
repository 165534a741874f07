//! The decision table of [`plan`] and [`status::desired`], without any
//! server: every input is built in memory, and [`World::reconcile`] carries
//! out the steps the way the reconciler in `controller/mod.rs` does, against a
//! Kubernetes and a Telegram that are plain fields.

use std::time::Duration;

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::{SignedDuration, Timestamp},
};
use serde_json::{Value, json};

use super::*;
use crate::{
    controller::{
        status::{self, READY, TOKEN_VALID, WEBHOOK_REGISTERED},
        webhook_secret::{InvalidSecret, Pair, Previous, WebhookSecret, keys, sha256_hex},
    },
    resource::{
        BotIdentity, LocalSecretRef, ManagedBotStatus, PreviousRouteHashes, RouteHashes, Routing,
    },
    telegram::{Error, TokenFormatError},
};

// ---------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------

const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
/// The part of [`TOKEN`] that is secret: no message may contain it.
const TOKEN_SECRET_PART: &str = "ABC-DEF1234ghIkl-zyx57W2v1u123ew11";
/// sha256sum of [`TOKEN`], computed outside Rust.
const TOKEN_SHA256: &str = "731fa294d036e54f19df879bfcd4fe72d967dc6327800c5f74a48414a3f258c9";
/// The same bot after /revoke: same id, new secret part.
const NEW_TOKEN: &str = "123456:NEWtoken-after-revoke_0987654321abcdefg";
const BOT_ID: i64 = 123_456;

const TOKEN_SECRET: &str = "support-bot-token";
const TOKEN_KEY: &str = "tg-token";
const BASE: &str = "https://bots.example.com";
const GENERATION: i64 = 3;

/// The first pair the fake CSPRNG hands out, and its sha256sum computed outside Rust.
const PATH_1: &str = "Jt3v0mL8y2bQ6TxZk1W9sR4nC7pHfA5eD0gU8iYoVqM";
const PATH_1_SHA256: &str = "14f4eb1be8164cb9fa9bf4933d4ae55e6b2c4f6815c7be6647e6c53182f94222";
const SECRET_TOKEN_1: &str = "q7PzX2mN5bR8vL1kT4wY6cJ9hF3sD0gA2eU5iO8uWxQ";
const SECRET_TOKEN_1_SHA256: &str =
    "437db436ae8678fa475399f52c828f59b70a54c099b4ca1c56b495dd53867a61";

const RESYNC: Duration = Duration::from_secs(300);
const HOUR: i64 = 3600;
const DAY: i64 = 24 * HOUR;

fn t0() -> Timestamp {
    "2026-01-05T10:00:00Z".parse().unwrap()
}

/// `t0` plus some seconds.
fn at(seconds: i64) -> Timestamp {
    t0() + SignedDuration::from_secs(seconds)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// A ManagedBot at generation [`GENERATION`]; `spec` is merged over a minimal valid spec.
fn bot(spec: Value) -> ManagedBot {
    let mut full = json!({
        "tokenSecretRef": {"name": TOKEN_SECRET, "key": TOKEN_KEY},
        "backend": {"service": {"name": "support-bot", "port": 8080}, "path": "/telegram"},
    });
    let (Some(full_map), Some(extra)) = (full.as_object_mut(), spec.as_object()) else {
        panic!("spec must be a JSON object")
    };
    full_map.extend(extra.clone());
    serde_json::from_value(json!({
        "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
        "metadata": {"name": "support-bot", "namespace": "bots", "uid": "u-1", "generation": GENERATION},
        "spec": full,
    }))
    .unwrap()
}

fn annotate(bot: &mut ManagedBot, value: &str) {
    bot.metadata
        .annotations
        .get_or_insert_default()
        .insert(ROTATE_ANNOTATION.to_string(), value.to_string());
}

fn present(raw: &str) -> TokenState {
    TokenState::Present(BotToken::parse(raw).unwrap())
}

fn settings() -> Settings {
    Settings {
        default_base_url: Some(BASE.to_string()),
        resync_interval: RESYNC,
    }
}

fn me(id: i64) -> User {
    User {
        id,
        is_bot: true,
        first_name: "Support".into(),
        username: Some("support_bot".into()),
    }
}

fn info(url: &str, pending: i64) -> WebhookInfo {
    WebhookInfo {
        url: url.to_string(),
        pending_update_count: pending,
        ..Default::default()
    }
}

/// The pairs the fake CSPRNG hands out: the first is the literal pair above.
fn pair(n: u32) -> Pair {
    match n {
        1 => Pair {
            path_secret: PATH_1.into(),
            secret_token: SECRET_TOKEN_1.into(),
        },
        n => Pair {
            path_secret: format!("p{n:0>42}"),
            secret_token: format!("t{n:0>42}"),
        },
    }
}

fn condition<'a>(status: &'a ManagedBotStatus, type_: &str) -> &'a Condition {
    status::condition(status, type_).unwrap_or_else(|| panic!("no {type_} condition in {status:?}"))
}

/// Asserts a condition's status and reason, with `context` in the failure message.
#[track_caller]
fn assert_condition(status: &ManagedBotStatus, type_: &str, expected: (&str, &str), context: &str) {
    let c = condition(status, type_);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        expected,
        "{context}: {type_} is {c:?}"
    );
}

/// No condition message holds the token or a webhook secret.
#[track_caller]
fn assert_no_secrets(status: &ManagedBotStatus, world: &World, context: &str) {
    let mut forbidden = vec![
        TOKEN.to_string(),
        TOKEN_SECRET_PART.to_string(),
        NEW_TOKEN.to_string(),
    ];
    if let SecretState::Present(secret) = &world.secret {
        forbidden.push(secret.current.path_secret.clone());
        forbidden.push(secret.current.secret_token.clone());
        if let Some(previous) = &secret.previous {
            forbidden.push(previous.pair.path_secret.clone());
            forbidden.push(previous.pair.secret_token.clone());
        }
    }
    assert_eq!(status.conditions.len(), 3, "{context}: {status:?}");
    for c in &status.conditions {
        assert!(
            !c.message.is_empty(),
            "{context}: {} has no message",
            c.type_
        );
        for secret in &forbidden {
            assert!(
                !c.message.contains(secret.as_str()),
                "{context}: {} message leaks a secret: {}",
                c.type_,
                c.message
            );
        }
    }
}

// ---------------------------------------------------------------------------
// The world a decision sees, and a reconciler over it
// ---------------------------------------------------------------------------

/// A change made to a [`World`] before a decision, in a table of cases.
type Setup = fn(&mut World);

/// Everything an [`Input`] borrows, plus a fake Telegram and CSPRNG.
#[derive(Debug, Clone)]
struct World {
    bot: ManagedBot,
    token: TokenState,
    secret: SecretState,
    facts: Facts,
    drift_check_due: bool,
    now: Timestamp,
    settings: Settings,
    /// The webhook URL the fake Telegram holds ("" for none).
    telegram_url: String,
    /// What the fake Telegram reports as pending updates.
    pending: i64,
    /// Pairs handed out by the fake CSPRNG.
    generated: u32,
}

impl World {
    fn with_bot(bot: ManagedBot) -> Self {
        Self {
            bot,
            token: present(TOKEN),
            secret: SecretState::Missing,
            facts: Facts::default(),
            drift_check_due: false,
            now: t0(),
            settings: settings(),
            telegram_url: String::new(),
            pending: 0,
            generated: 0,
        }
    }

    /// A new bot: no status, no webhook Secret.
    fn fresh() -> Self {
        Self::with_bot(bot(json!({})))
    }

    /// A bot the fresh flow registered at `t0`, seen again an hour later
    /// with the drift check not due.
    fn converged() -> Self {
        let mut world = Self::fresh();
        assert_eq!(world.reconcile().last(), Some(&Step::Finish));
        world.facts = Facts::default();
        world.now = at(HOUR);
        world
    }

    fn input(&self) -> Input<'_> {
        Input {
            bot: &self.bot,
            token: &self.token,
            secret: &self.secret,
            facts: &self.facts,
            drift_check_due: self.drift_check_due,
            now: self.now,
            settings: &self.settings,
        }
    }

    fn plan(&self) -> Step {
        plan(&self.input())
    }

    fn desired(&self) -> ManagedBotStatus {
        status::desired(&self.input())
    }

    fn requeue(&self, next_drift_check: Duration) -> Duration {
        requeue_after(&self.input(), next_drift_check)
    }

    fn status(&self) -> &ManagedBotStatus {
        self.bot.status.as_ref().expect("the bot has a status")
    }

    fn secret(&self) -> &WebhookSecret {
        match &self.secret {
            SecretState::Present(secret) => secret,
            other => panic!("no webhook secret: {other:?}"),
        }
    }

    fn secret_mut(&mut self) -> &mut WebhookSecret {
        match &mut self.secret {
            SecretState::Present(secret) => secret,
            other => panic!("no webhook secret: {other:?}"),
        }
    }

    fn bot_token(&self) -> BotToken {
        match &self.token {
            TokenState::Present(token) => token.clone(),
            other => panic!("plan asked for a Telegram call without a token: {other:?}"),
        }
    }

    fn url(&self) -> String {
        webhook_url(&self.input(), self.secret()).expect("a base URL")
    }

    fn next_pair(&mut self) -> Pair {
        self.generated += 1;
        pair(self.generated)
    }

    /// One reconcile, to the end.
    fn reconcile(&mut self) -> Vec<Step> {
        self.reconcile_until(usize::MAX)
    }

    /// One reconcile that crashes after `crash_after` steps: what a step
    /// wrote stays written, what the reconcile learned is lost.
    fn reconcile_until(&mut self, crash_after: usize) -> Vec<Step> {
        self.facts = Facts::default();
        let mut steps = Vec::new();
        for _ in 0..16 {
            if steps.len() == crash_after {
                return steps;
            }
            let step = self.plan();
            steps.push(step.clone());
            match step {
                Step::Finish => {
                    self.bot.status = Some(self.desired());
                    return steps;
                }
                Step::VerifyToken => self.facts.me = Some(me(self.bot_token().bot_id())),
                Step::CreateSecret => {
                    let current = self.next_pair();
                    self.secret = SecretState::Present(WebhookSecret {
                        current,
                        previous: None,
                        rotation_observed: rotate_annotation(&self.bot).map(str::to_string),
                        generated_at: Some(self.now),
                        token_sha256: Some(self.bot_token().sha256_hex()),
                    });
                }
                Step::Rotate(cause) => {
                    let old = self.secret().clone();
                    let grace = rotation_grace(&self.bot, &cause);
                    let now = self.now;
                    let current = self.next_pair();
                    self.secret = SecretState::Present(WebhookSecret {
                        current,
                        previous: (!grace.is_zero()).then(|| Previous {
                            pair: old.current.clone(),
                            expires_at: now + SignedDuration::try_from(grace).unwrap(),
                        }),
                        rotation_observed: match cause {
                            RotationCause::Requested(value) => Some(value),
                            RotationCause::Interval => old.rotation_observed.clone(),
                        },
                        generated_at: Some(now),
                        token_sha256: old.token_sha256.clone(),
                    });
                }
                Step::ExpirePrevious => self.secret_mut().previous = None,
                Step::PublishRouting => {
                    let routing = self.secret().routing(self.now);
                    self.bot.status.get_or_insert_default().routing = Some(routing);
                }
                Step::Register => {
                    self.telegram_url = self.url();
                    self.facts.registered = true;
                    self.drift_check_due = false;
                    let hash = self.bot_token().sha256_hex();
                    self.secret_mut().token_sha256 = Some(hash);
                }
                Step::CheckWebhook => {
                    self.facts.info = Some(info(&self.telegram_url, self.pending));
                    self.drift_check_due = false;
                }
                Step::Unregister => {
                    let secret = match &self.secret {
                        SecretState::Present(secret) => Some(secret),
                        _ => None,
                    };
                    if our_urls(&self.bot, secret, &self.settings).contains(&self.telegram_url) {
                        self.telegram_url.clear();
                    }
                    self.facts.unregistered = true;
                }
            }
        }
        panic!("the plan did not settle: {steps:?}");
    }
}

// ---------------------------------------------------------------------------
// Token states
// ---------------------------------------------------------------------------

#[test]
fn an_unusable_token_finishes_and_names_the_secret_and_key() {
    let cases = [
        (
            "secret not found",
            TokenState::SecretNotFound,
            "TokenSecretNotFound",
        ),
        ("key not found", TokenState::KeyNotFound, "TokenKeyNotFound"),
        (
            "malformed",
            TokenState::Malformed(TokenFormatError::Malformed),
            "TokenMalformed",
        ),
        (
            "empty",
            TokenState::Malformed(TokenFormatError::Empty),
            "TokenMalformed",
        ),
    ];
    let starts = [
        ("fresh", World::fresh(), "Unknown"),
        ("converged", World::converged(), "True"),
        (
            "converged, drift check due, rotation requested",
            {
                let mut w = World::converged();
                w.drift_check_due = true;
                annotate(&mut w.bot, "now");
                w
            },
            "True",
        ),
    ];
    for (token_case, token, reason) in &cases {
        for (start, world, webhook_registered) in &starts {
            let context = format!("{token_case}, {start}");
            let mut w = world.clone();
            w.token = token.clone();
            assert_eq!(w.plan(), Step::Finish, "{context}");
            let desired = w.desired();
            assert_condition(&desired, TOKEN_VALID, ("False", reason), &context);
            assert_condition(&desired, READY, ("False", reason), &context);
            // Telegram still has the webhook a bot last registered: that is not undone by a lost token.
            assert_eq!(
                condition(&desired, WEBHOOK_REGISTERED).status,
                *webhook_registered,
                "{context}"
            );
            let message = &condition(&desired, TOKEN_VALID).message;
            assert!(
                message.contains(TOKEN_SECRET) && message.contains(TOKEN_KEY),
                "{context}: {message}"
            );
            assert_eq!(&condition(&desired, READY).message, message, "{context}");
            assert_eq!(desired.observed_generation, Some(GENERATION), "{context}");
            assert_no_secrets(&desired, &w, &context);
            assert_eq!(
                w.requeue(secs(30)),
                RESYNC,
                "{context}: a person must fix it; the watch reports when"
            );
        }
    }
}

#[test]
fn the_default_token_key_is_named_when_none_is_given() {
    let mut w = World::with_bot(bot(json!({"tokenSecretRef": {"name": "plain"}})));
    w.token = TokenState::KeyNotFound;
    let message = condition(&w.desired(), TOKEN_VALID).message.clone();
    assert!(
        message.contains("Secret plain") && message.contains("no key token"),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------

#[test]
fn a_fresh_bot_verifies_creates_publishes_registers_then_finishes() {
    let mut w = World::fresh();
    assert_eq!(w.plan(), Step::VerifyToken, "getMe comes first");

    w.facts.me = Some(me(BOT_ID));
    assert_eq!(w.plan(), Step::CreateSecret);

    w.secret = SecretState::Present(WebhookSecret {
        current: pair(1),
        previous: None,
        rotation_observed: None,
        generated_at: Some(w.now),
        token_sha256: Some(TOKEN_SHA256.into()),
    });
    assert_eq!(
        w.plan(),
        Step::PublishRouting,
        "routing is published before Telegram knows the URL"
    );

    let routing = Routing {
        current: RouteHashes {
            path_sha256: PATH_1_SHA256.into(),
            token_sha256: SECRET_TOKEN_1_SHA256.into(),
        },
        previous: None,
    };
    assert_eq!(w.secret().routing(w.now), routing);
    w.bot.status = Some(ManagedBotStatus {
        routing: Some(routing.clone()),
        ..Default::default()
    });
    assert_eq!(w.plan(), Step::Register);

    w.facts.registered = true;
    assert_eq!(w.plan(), Step::Finish);

    let desired = w.desired();
    assert_eq!(
        desired.webhook_url.as_deref(),
        Some(format!("{BASE}/webhook/{PATH_1}").as_str())
    );
    assert_eq!(desired.routing, Some(routing));
    assert_eq!(
        desired.bot,
        Some(BotIdentity {
            id: BOT_ID,
            username: Some("support_bot".into())
        })
    );
    assert_eq!(
        desired.webhook_secret_ref,
        Some(LocalSecretRef {
            name: "support-bot-webhook".into()
        })
    );
    assert_eq!(desired.observed_generation, Some(GENERATION));
    let rotation = desired.rotation.as_ref().expect("rotation status");
    assert_eq!(
        (
            rotation.observed.as_deref(),
            rotation.last_rotation_time.as_ref()
        ),
        (None, Some(&Time(t0())))
    );
    assert_eq!(rotation.previous_expires_at, None);
    assert_eq!(desired.telegram, None, "no getWebhookInfo was made");
    for (type_, reason) in [
        (READY, "Registered"),
        (TOKEN_VALID, "Registered"),
        (WEBHOOK_REGISTERED, "Registered"),
    ] {
        assert_condition(&desired, type_, ("True", reason), "fresh");
        let c = condition(&desired, type_);
        assert_eq!(c.observed_generation, Some(GENERATION), "{type_}");
        assert_eq!(c.last_transition_time, Time(t0()), "{type_}");
    }
    assert_no_secrets(&desired, &w, "fresh");
}

#[test]
fn the_reconciler_registers_a_fresh_bot_in_one_pass() {
    let mut w = World::fresh();
    assert_eq!(
        w.reconcile(),
        [
            Step::VerifyToken,
            Step::CreateSecret,
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    assert_eq!(w.telegram_url, format!("{BASE}/webhook/{PATH_1}"));
    assert_eq!(
        w.status().webhook_url.as_deref(),
        Some(w.telegram_url.as_str())
    );
    assert_eq!(w.secret().token_sha256.as_deref(), Some(TOKEN_SHA256));
    assert_condition(w.status(), READY, ("True", "Registered"), "fresh");
}

#[test]
fn a_fresh_bot_with_a_rotate_annotation_does_not_rotate_its_first_pair() {
    let mut b = bot(json!({}));
    annotate(&mut b, "2026-12-04T10:00:00Z");
    let mut w = World::with_bot(b);
    assert_eq!(
        w.reconcile(),
        [
            Step::VerifyToken,
            Step::CreateSecret,
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    assert_eq!(
        w.secret().rotation_observed.as_deref(),
        Some("2026-12-04T10:00:00Z")
    );
    assert_eq!(w.generated, 1);
}

#[test]
fn a_lost_status_is_rebuilt_from_the_secret_not_regenerated() {
    let mut w = World::converged();
    let secret = w.secret().clone();
    w.bot.status = None;
    assert_eq!(w.plan(), Step::VerifyToken);
    let steps = w.reconcile();
    assert_eq!(
        steps,
        [
            Step::VerifyToken,
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    assert_eq!(w.secret(), &secret, "the same pair");
    assert_eq!(w.generated, 1);
    assert_eq!(
        w.status().webhook_url.as_deref(),
        Some(format!("{BASE}/webhook/{PATH_1}").as_str())
    );
}

#[test]
fn a_deleted_webhook_secret_is_generated_anew_and_registered() {
    let mut w = World::converged();
    w.secret = SecretState::Missing;
    assert_eq!(
        w.plan(),
        Step::CreateSecret,
        "identity and token are known: no getMe"
    );
    assert_eq!(
        w.reconcile(),
        [
            Step::CreateSecret,
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    assert_eq!(w.secret().current, pair(2));
    assert_eq!(
        w.telegram_url,
        format!("{BASE}/webhook/{}", pair(2).path_secret)
    );
}

#[test]
fn a_hand_edited_webhook_secret_is_reported_not_regenerated() {
    let mut w = World::converged();
    w.secret = SecretState::Invalid(InvalidSecret::MissingKey(keys::SECRET_TOKEN));
    assert_eq!(w.plan(), Step::Finish);
    let desired = w.desired();
    assert_condition(
        &desired,
        WEBHOOK_REGISTERED,
        ("False", "WebhookSecretInvalid"),
        "invalid",
    );
    assert_condition(
        &desired,
        READY,
        ("False", "WebhookSecretInvalid"),
        "invalid",
    );
    let message = &condition(&desired, WEBHOOK_REGISTERED).message;
    assert!(
        message.contains("support-bot-webhook") && message.contains(keys::SECRET_TOKEN),
        "{message}"
    );
}

// ---------------------------------------------------------------------------
// Converged
// ---------------------------------------------------------------------------

#[test]
fn a_converged_bot_calls_nothing_and_writes_nothing() {
    let mut w = World::converged();
    let status = w.status().clone();
    assert_eq!(
        condition(&status, WEBHOOK_REGISTERED).observed_generation,
        Some(GENERATION)
    );
    assert_eq!(w.secret().token_sha256.as_deref(), Some(TOKEN_SHA256));
    assert_eq!(w.plan(), Step::Finish);
    assert_eq!(w.desired(), status, "no status write");
    assert_eq!(w.reconcile(), [Step::Finish]);
    assert_eq!(w.status(), &status);
}

#[test]
fn last_transition_time_moves_only_when_a_condition_status_moves() {
    let mut w = World::converged();
    w.now = at(30 * DAY);
    let desired = w.desired();
    for type_ in [READY, TOKEN_VALID, WEBHOOK_REGISTERED] {
        assert_eq!(
            condition(&desired, type_).last_transition_time,
            Time(t0()),
            "{type_} kept"
        );
    }
    assert_eq!(desired, *w.status());

    w.token = TokenState::SecretNotFound;
    assert_eq!(w.reconcile(), [Step::Finish]);
    let broken = w.status().clone();
    assert_eq!(
        condition(&broken, READY).last_transition_time,
        Time(at(30 * DAY))
    );
    assert_eq!(
        condition(&broken, TOKEN_VALID).last_transition_time,
        Time(at(30 * DAY))
    );
    assert_eq!(
        condition(&broken, WEBHOOK_REGISTERED).last_transition_time,
        Time(t0()),
        "still True"
    );

    w.now = at(31 * DAY);
    w.token = present(TOKEN);
    assert_eq!(w.reconcile(), [Step::VerifyToken, Step::Finish]);
    let healed = w.status().clone();
    assert_condition(&healed, READY, ("True", "Registered"), "healed");
    assert_eq!(
        condition(&healed, READY).last_transition_time,
        Time(at(31 * DAY))
    );
    assert_eq!(
        condition(&healed, WEBHOOK_REGISTERED).last_transition_time,
        Time(t0())
    );
}

// ---------------------------------------------------------------------------
// Drift
// ---------------------------------------------------------------------------

#[test]
fn a_due_drift_check_reads_the_webhook_and_sets_it_again_if_changed() {
    struct Case {
        name: &'static str,
        telegram_url: Option<&'static str>,
        then: Step,
    }
    let cases = [
        Case {
            name: "unchanged",
            telegram_url: None,
            then: Step::Finish,
        },
        Case {
            name: "pointing elsewhere",
            telegram_url: Some("https://evil.example.com/hook"),
            then: Step::Register,
        },
        Case {
            name: "deleted behind our back",
            telegram_url: Some(""),
            then: Step::Register,
        },
    ];
    for case in cases {
        let mut w = World::converged();
        w.drift_check_due = true;
        assert_eq!(w.plan(), Step::CheckWebhook, "{}", case.name);
        let url = case.telegram_url.map_or_else(|| w.url(), str::to_string);
        w.facts.info = Some(info(&url, 3));
        assert_eq!(w.plan(), case.then, "{}", case.name);
        if case.then == Step::Register {
            w.facts.registered = true;
            assert_eq!(
                w.plan(),
                Step::Finish,
                "{}: no second check, no second setWebhook",
                case.name
            );
        }
        let desired = w.desired();
        assert_condition(&desired, READY, ("True", "Registered"), case.name);
        let telegram = desired.telegram.as_ref().expect("telegram status");
        assert_eq!(
            (
                telegram.pending_update_count,
                telegram.last_sync_time.as_ref()
            ),
            (3, Some(&Time(w.now))),
            "{}",
            case.name
        );
        assert_eq!(
            ManagedBotStatus {
                telegram: None,
                ..desired
            },
            *w.status(),
            "{}: only telegram changed",
            case.name
        );
    }
}

#[test]
fn a_drift_check_with_the_same_answer_writes_nothing() {
    let mut w = World::converged();
    w.pending = 2;
    w.telegram_url = w.url();
    w.drift_check_due = true;
    assert_eq!(w.reconcile(), [Step::CheckWebhook, Step::Finish]);
    let after_first = w.status().clone();
    assert_eq!(
        after_first
            .telegram
            .as_ref()
            .map(|t| t.pending_update_count),
        Some(2)
    );

    w.now = at(2 * HOUR);
    w.drift_check_due = true;
    assert_eq!(w.reconcile(), [Step::CheckWebhook, Step::Finish]);
    assert_eq!(
        w.status(),
        &after_first,
        "lastSyncTime is when Telegram's answer last changed"
    );

    w.now = at(3 * HOUR);
    w.pending = 9;
    w.drift_check_due = true;
    w.reconcile();
    let telegram = w.status().telegram.clone().unwrap();
    assert_eq!(
        (telegram.pending_update_count, telegram.last_sync_time),
        (9, Some(Time(at(3 * HOUR))))
    );
}

// ---------------------------------------------------------------------------
// Spec and token changes
// ---------------------------------------------------------------------------

#[test]
fn a_spec_change_registers_again() {
    let mut w = World::converged();
    w.bot.metadata.generation = Some(GENERATION + 1);
    assert_eq!(w.plan(), Step::Register);
    w.facts.registered = true;
    assert_eq!(w.plan(), Step::Finish);
    let desired = w.desired();
    assert_eq!(desired.observed_generation, Some(GENERATION + 1));
    for c in &desired.conditions {
        assert_eq!(c.observed_generation, Some(GENERATION + 1), "{}", c.type_);
    }
    w.facts = Facts::default();
    assert_eq!(w.reconcile(), [Step::Register, Step::Finish]);
    assert_eq!(
        w.reconcile(),
        [Step::Finish],
        "and then it is converged again"
    );
}

#[test]
fn a_changed_base_url_registers_the_new_url() {
    let mut w = World::converged();
    w.settings.default_base_url = Some("https://moved.example.com".into());
    assert_eq!(w.reconcile(), [Step::Register, Step::Finish]);
    assert_eq!(
        w.telegram_url,
        format!("https://moved.example.com/webhook/{PATH_1}")
    );
    assert_eq!(
        w.status().webhook_url.as_deref(),
        Some(w.telegram_url.as_str())
    );
}

#[test]
fn a_changed_token_is_verified_then_registered() {
    let mut w = World::converged();
    w.token = present(NEW_TOKEN);
    assert_eq!(w.plan(), Step::VerifyToken);
    w.facts.me = Some(me(BOT_ID));
    assert_eq!(
        w.plan(),
        Step::Register,
        "the webhook is set again with the new token"
    );
    w.facts.registered = true;
    assert_eq!(w.plan(), Step::Finish);

    w.facts = Facts::default();
    assert_eq!(
        w.reconcile(),
        [Step::VerifyToken, Step::Register, Step::Finish]
    );
    let new_hash = BotToken::parse(NEW_TOKEN).unwrap().sha256_hex();
    assert_ne!(new_hash, TOKEN_SHA256);
    assert_eq!(w.secret().token_sha256.as_deref(), Some(new_hash.as_str()));
    assert_eq!(w.secret().current, pair(1), "a new token keeps the pair");
    assert_eq!(w.reconcile(), [Step::Finish]);
}

#[test]
fn get_me_is_called_only_when_identity_or_token_is_in_doubt() {
    let cases: [(&str, Setup, Step); 9] = [
        ("converged", |_| {}, Step::Finish),
        (
            "no identity in status",
            |w| w.bot.status.as_mut().unwrap().bot = None,
            Step::VerifyToken,
        ),
        (
            "identity of another bot",
            |w| {
                w.bot.status.as_mut().unwrap().bot = Some(BotIdentity {
                    id: 999,
                    username: None,
                })
            },
            Step::VerifyToken,
        ),
        (
            "token refused last time",
            |w| set_condition(w, TOKEN_VALID, "False"),
            Step::VerifyToken,
        ),
        (
            "token check failed last time",
            |w| set_condition(w, TOKEN_VALID, "Unknown"),
            Step::VerifyToken,
        ),
        (
            "Secret registered with another token",
            |w| w.secret_mut().token_sha256 = Some("0".repeat(64)),
            Step::VerifyToken,
        ),
        (
            "Secret without a token hash",
            |w| w.secret_mut().token_sha256 = None,
            Step::VerifyToken,
        ),
        (
            "webhook Secret gone, identity known",
            |w| w.secret = SecretState::Missing,
            Step::CreateSecret,
        ),
        (
            "changed token already verified in this reconcile",
            |w| {
                w.token = present(NEW_TOKEN);
                w.facts.me = Some(me(BOT_ID));
            },
            Step::Register,
        ),
    ];
    for (name, setup, expected) in cases {
        let mut w = World::converged();
        setup(&mut w);
        assert_eq!(w.plan(), expected, "{name}");
    }
}

fn set_condition(w: &mut World, type_: &str, value: &str) {
    let status = w.bot.status.as_mut().unwrap();
    let c = status
        .conditions
        .iter_mut()
        .find(|c| c.type_ == type_)
        .unwrap();
    c.status = value.to_string();
}

#[test]
fn a_secret_without_a_token_hash_is_verified_and_registered_once() {
    let mut w = World::converged();
    w.secret_mut().token_sha256 = None;
    assert_eq!(
        w.reconcile(),
        [Step::VerifyToken, Step::Register, Step::Finish]
    );
    assert_eq!(w.secret().token_sha256.as_deref(), Some(TOKEN_SHA256));
    assert_eq!(w.reconcile(), [Step::Finish]);
}

// ---------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------

#[test]
fn rotation_is_due_when_the_annotation_changes_or_the_interval_passes() {
    struct Case {
        name: &'static str,
        annotation: Option<&'static str>,
        observed: Option<&'static str>,
        interval: Option<&'static str>,
        generated_ago: Option<i64>,
        expected: Step,
    }
    let requested = |v: &str| Step::Rotate(RotationCause::Requested(v.to_string()));
    let interval = Step::Rotate(RotationCause::Interval);
    let cases = [
        Case {
            name: "annotation changed",
            annotation: Some("r2"),
            observed: Some("r1"),
            interval: None,
            generated_ago: Some(HOUR),
            expected: requested("r2"),
        },
        Case {
            name: "annotation set, none observed",
            annotation: Some("r1"),
            observed: None,
            interval: None,
            generated_ago: Some(HOUR),
            expected: requested("r1"),
        },
        Case {
            name: "annotation already observed",
            annotation: Some("r1"),
            observed: Some("r1"),
            interval: None,
            generated_ago: Some(HOUR),
            expected: Step::Finish,
        },
        Case {
            name: "annotation removed",
            annotation: None,
            observed: Some("r1"),
            interval: None,
            generated_ago: Some(HOUR),
            expected: Step::Finish,
        },
        Case {
            name: "no annotation at all",
            annotation: None,
            observed: None,
            interval: None,
            generated_ago: Some(400 * DAY),
            expected: Step::Finish,
        },
        Case {
            name: "interval elapsed",
            annotation: None,
            observed: None,
            interval: Some("720h"),
            generated_ago: Some(721 * HOUR),
            expected: interval.clone(),
        },
        Case {
            name: "interval elapsed exactly",
            annotation: None,
            observed: None,
            interval: Some("720h"),
            generated_ago: Some(720 * HOUR),
            expected: interval.clone(),
        },
        Case {
            name: "interval not elapsed",
            annotation: None,
            observed: None,
            interval: Some("720h"),
            generated_ago: Some(719 * HOUR),
            expected: Step::Finish,
        },
        Case {
            name: "interval, a second short",
            annotation: None,
            observed: None,
            interval: Some("720h"),
            generated_ago: Some(720 * HOUR - 1),
            expected: Step::Finish,
        },
        Case {
            name: "interval, generation time unknown",
            annotation: None,
            observed: None,
            interval: Some("1h"),
            generated_ago: None,
            expected: Step::Finish,
        },
        Case {
            name: "annotation wins over interval",
            annotation: Some("r3"),
            observed: Some("r1"),
            interval: Some("720h"),
            generated_ago: Some(800 * HOUR),
            expected: requested("r3"),
        },
        Case {
            name: "interval with the annotation observed",
            annotation: Some("r1"),
            observed: Some("r1"),
            interval: Some("1h"),
            generated_ago: Some(2 * HOUR),
            expected: interval.clone(),
        },
    ];
    for case in cases {
        let mut w = World::converged();
        if let Some(value) = case.annotation {
            annotate(&mut w.bot, value);
        }
        if let Some(interval) = case.interval {
            w.bot.spec.rotation =
                Some(serde_json::from_value(json!({"interval": interval})).unwrap());
        }
        let now = w.now;
        let secret = w.secret_mut();
        secret.rotation_observed = case.observed.map(str::to_string);
        secret.generated_at = case
            .generated_ago
            .map(|ago| now - SignedDuration::from_secs(ago));
        assert_eq!(w.plan(), case.expected, "{}", case.name);
    }
}

#[test]
fn a_requested_rotation_routes_both_pairs_registers_the_new_one_then_drops_the_old() {
    let mut w = World::converged();
    let old = w.secret().current.clone();
    annotate(&mut w.bot, "r2");
    let rotated_at = w.now;
    assert_eq!(
        w.reconcile(),
        [
            Step::Rotate(RotationCause::Requested("r2".into())),
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    let expires_at = rotated_at + SignedDuration::from_secs(5 * 60);
    let status = w.status().clone();
    assert_eq!(
        status.webhook_url,
        Some(format!("{BASE}/webhook/{}", pair(2).path_secret))
    );
    assert_eq!(
        w.telegram_url,
        format!("{BASE}/webhook/{}", pair(2).path_secret)
    );
    let routing = status.routing.as_ref().unwrap();
    assert_eq!(routing.current, pair(2).hashes());
    assert_eq!(
        routing.previous,
        Some(PreviousRouteHashes {
            path_sha256: PATH_1_SHA256.into(),
            token_sha256: SECRET_TOKEN_1_SHA256.into(),
            expires_at: Time(expires_at),
        })
    );
    let rotation = status.rotation.as_ref().unwrap();
    assert_eq!(rotation.observed.as_deref(), Some("r2"));
    assert_eq!(rotation.last_rotation_time, Some(Time(rotated_at)));
    assert_eq!(rotation.previous_expires_at, Some(Time(expires_at)));
    assert_eq!(w.secret().previous.as_ref().map(|p| &p.pair), Some(&old));

    w.now = rotated_at + SignedDuration::from_secs(60);
    assert_eq!(
        w.reconcile(),
        [Step::Finish],
        "during the grace period nothing happens"
    );
    assert_eq!(w.status(), &status);
    assert_eq!(w.requeue(secs(3600)), secs(4 * 60), "woken for the expiry");

    w.now = expires_at;
    assert_eq!(
        w.reconcile(),
        [Step::ExpirePrevious, Step::PublishRouting, Step::Finish]
    );
    assert_eq!(w.secret().previous, None);
    assert_eq!(w.status().routing.as_ref().unwrap().previous, None);
    assert_eq!(
        w.status().rotation.as_ref().unwrap().previous_expires_at,
        None
    );
    assert_eq!(w.reconcile(), [Step::Finish]);
    assert_eq!(w.generated, 2, "exactly one rotation");
}

#[test]
fn a_rotation_with_no_grace_period_cuts_the_old_pair_off_at_once() {
    let mut w = World::with_bot(bot(json!({"rotation": {"gracePeriod": "0s"}})));
    w.reconcile();
    annotate(&mut w.bot, "leaked");
    assert_eq!(
        w.reconcile()[0],
        Step::Rotate(RotationCause::Requested("leaked".into()))
    );
    assert_eq!(w.secret().previous, None);
    assert_eq!(
        w.status().routing,
        Some(Routing {
            current: pair(2).hashes(),
            previous: None
        })
    );
}

#[test]
fn rotate_now_cuts_off_the_pair_of_its_own_rotation_only() {
    let mut w = World::with_bot(bot(json!({"rotation": {"gracePeriod": "10m"}})));
    w.reconcile();
    annotate(&mut w.bot, "r1");
    w.reconcile();
    assert!(
        w.secret().previous.is_some(),
        "an ordinary rotation keeps a grace period"
    );
    // A leak is found: rotate again, cutting both old pairs off at once.
    annotate(&mut w.bot, "leak");
    let annotations = w.bot.metadata.annotations.get_or_insert_default();
    annotations.insert(ROTATE_NOW_ANNOTATION.into(), "leak".into());
    assert_eq!(
        w.reconcile()[0],
        Step::Rotate(RotationCause::Requested("leak".into()))
    );
    assert_eq!(w.secret().previous, None);
    assert_eq!(w.status().routing.as_ref().unwrap().previous, None);
    // The annotation left behind does not apply to the next rotation.
    annotate(&mut w.bot, "r3");
    w.reconcile();
    assert_eq!(
        w.secret().previous.as_ref().map(|p| p.expires_at),
        Some(w.now + SignedDuration::from_mins(10))
    );
    let interval = rotation_grace(&w.bot, &RotationCause::Interval);
    assert_eq!(interval, secs(600));
}

#[test]
fn the_grace_period_defaults_to_five_minutes() {
    let cases = [
        (json!({}), secs(300)),
        (json!({"rotation": {"gracePeriod": "0s"}}), secs(0)),
        (json!({"rotation": {"gracePeriod": "90s"}}), secs(90)),
        (json!({"rotation": {"interval": "720h"}}), secs(300)),
    ];
    for (spec, expected) in cases {
        assert_eq!(grace_period(&bot(spec.clone())), expected, "{spec}");
    }
}

#[test]
fn an_interval_rotation_keeps_the_observed_annotation() {
    let mut w = World::with_bot(bot(json!({"rotation": {"interval": "720h"}})));
    annotate(&mut w.bot, "r1");
    w.reconcile();
    w.now = at(720 * HOUR);
    assert_eq!(
        w.reconcile(),
        [
            Step::Rotate(RotationCause::Interval),
            Step::PublishRouting,
            Step::Register,
            Step::Finish
        ]
    );
    assert_eq!(w.secret().rotation_observed.as_deref(), Some("r1"));
    assert_eq!(w.secret().generated_at, Some(at(720 * HOUR)));
    assert_eq!(w.reconcile(), [Step::Finish]);
}

#[test]
fn a_crash_at_any_step_of_a_rotation_converges_without_a_second_rotation() {
    for crash_after in 1..=3 {
        let mut w = World::converged();
        let old = w.secret().current.clone();
        annotate(&mut w.bot, "r2");
        let crashed = w.reconcile_until(crash_after);
        assert_eq!(crashed.len(), crash_after);
        assert_eq!(
            crashed[0],
            Step::Rotate(RotationCause::Requested("r2".into()))
        );
        let new = w.secret().current.clone();

        w.now += SignedDuration::from_secs(10);
        let restarted = w.reconcile();
        assert!(
            !restarted.iter().any(|s| matches!(s, Step::Rotate(_))),
            "crash after {crash_after}: {restarted:?}"
        );
        assert_eq!(restarted.last(), Some(&Step::Finish));
        assert_eq!(
            w.secret().current,
            new,
            "crash after {crash_after}: the pair written is the pair used"
        );
        assert_eq!(
            w.secret().previous.as_ref().map(|p| &p.pair),
            Some(&old),
            "crash after {crash_after}: old pair kept"
        );
        assert_eq!(
            w.telegram_url,
            format!("{BASE}/webhook/{}", new.path_secret),
            "crash after {crash_after}"
        );
        assert_eq!(
            w.status().routing,
            Some(w.secret().routing(w.now)),
            "crash after {crash_after}"
        );
        assert_condition(w.status(), READY, ("True", "Registered"), "after the crash");
        assert_eq!(w.generated, 2, "crash after {crash_after}: one rotation");
    }
}

#[test]
fn the_previous_pair_is_routed_until_it_expires_then_removed() {
    let cases = [
        ("expires in a minute", 60, Step::PublishRouting),
        ("expires now", 0, Step::ExpirePrevious),
        ("expired an hour ago", -HOUR, Step::ExpirePrevious),
    ];
    for (name, expires_in, expected) in cases {
        let mut w = World::converged();
        let expires_at = w.now + SignedDuration::from_secs(expires_in);
        w.secret_mut().previous = Some(Previous {
            pair: pair(7),
            expires_at,
        });
        assert_eq!(w.plan(), expected, "{name}");
        if expected == Step::ExpirePrevious {
            // From its expiry on, a pair is neither routed nor reported, even
            // before the Secret loses it.
            let desired = w.desired();
            assert_eq!(
                desired.routing.as_ref().map(|r| &r.previous),
                Some(&None),
                "{name}"
            );
            let rotation = desired.rotation.as_ref().unwrap();
            assert_eq!(rotation.previous_expires_at, None, "{name}");
            assert_eq!(
                w.reconcile(),
                [Step::ExpirePrevious, Step::Finish],
                "{name}: routing had no previous"
            );
            assert_eq!(w.secret().previous, None, "{name}");
            continue;
        }
        w.facts = Facts::default();
        assert_eq!(
            w.reconcile(),
            [Step::PublishRouting, Step::Finish],
            "{name}: the current URL is unchanged"
        );
        let status = w.status();
        let previous = PreviousRouteHashes {
            path_sha256: sha256_hex(&pair(7).path_secret),
            token_sha256: sha256_hex(&pair(7).secret_token),
            expires_at: Time(expires_at),
        };
        assert_eq!(
            status.routing.as_ref().unwrap().previous,
            Some(previous),
            "{name}"
        );
        assert_eq!(
            status.rotation.as_ref().unwrap().previous_expires_at,
            Some(Time(expires_at)),
            "{name}"
        );
    }
}

// ---------------------------------------------------------------------------
// Suspend, conflicts, base URL
// ---------------------------------------------------------------------------

#[test]
fn suspend_unregisters_then_reports_suspended_and_stops_routing() {
    let mut w = World::converged();
    w.telegram_url = w.url();
    w.bot.spec.suspend = true;
    assert_eq!(w.plan(), Step::Unregister);
    w.facts.unregistered = true;
    assert_eq!(w.plan(), Step::Finish);
    let desired = w.desired();
    assert_condition(&desired, READY, ("False", "Suspended"), "suspended");
    assert_condition(
        &desired,
        WEBHOOK_REGISTERED,
        ("False", "Suspended"),
        "suspended",
    );
    assert_condition(&desired, TOKEN_VALID, ("True", "Registered"), "suspended");
    assert_eq!(
        (desired.routing.as_ref(), desired.webhook_url.as_deref()),
        (None, None)
    );
    assert_eq!(
        desired.webhook_secret_ref,
        Some(LocalSecretRef {
            name: "support-bot-webhook".into()
        }),
        "the secret is kept"
    );

    w.facts = Facts::default();
    assert_eq!(w.reconcile(), [Step::Unregister, Step::Finish]);
    assert_eq!(
        w.telegram_url, "",
        "deleteWebhook was called on our webhook"
    );
    assert_eq!(w.reconcile(), [Step::Finish], "nothing left to unregister");
    assert_eq!(w.secret().current, pair(1));

    w.bot.spec.suspend = false;
    w.bot.metadata.generation = Some(GENERATION + 1);
    assert_eq!(
        w.reconcile(),
        [Step::PublishRouting, Step::Register, Step::Finish],
        "resuming registers the same URL"
    );
    assert_eq!(w.telegram_url, format!("{BASE}/webhook/{PATH_1}"));
}

#[test]
fn a_suspended_bot_with_a_routing_but_no_url_still_unregisters() {
    let mut w = World::converged();
    w.bot.spec.suspend = true;
    w.bot.status.as_mut().unwrap().webhook_url = None;
    assert_eq!(w.plan(), Step::Unregister);
    w.bot.status.as_mut().unwrap().routing = None;
    assert_eq!(w.plan(), Step::Finish);
}

#[test]

fn a_failed_unregister_is_retried() {
    let failures = [
        (Call::GetWebhookInfo, Error::Timeout(secs(10))),
        (Call::DeleteWebhook, Error::Unavailable { code: 502 }),
        (
            Call::DeleteWebhook,
            Error::RateLimited {
                retry_after: secs(7),
            },
        ),
    ];
    for failure in failures {
        let mut w = World::converged();
        w.telegram_url = w.url();
        w.bot.spec.suspend = true;
        assert_eq!(w.plan(), Step::Unregister);
        w.facts.failure = Some(failure.clone());
        assert_eq!(w.plan(), Step::Finish);
        w.bot.status = Some(w.desired());
        w.facts = Facts::default();
        assert_eq!(w.telegram_url, w.url(), "nothing was deleted at Telegram");
        assert_eq!(
            w.plan(),
            Step::Unregister,
            "after {failure:?}: Telegram still holds our webhook"
        );
    }
}

#[test]
fn a_conflicting_bot_finishes_without_routing_and_names_the_holder() {
    let starts = [("fresh", World::fresh()), ("converged", World::converged())];
    for (name, mut w) in starts {
        w.facts.me = Some(me(BOT_ID));
        w.facts.conflict_with = Some("ns/other".into());
        w.drift_check_due = true;
        assert_eq!(
            w.plan(),
            Step::Finish,
            "{name}: no Secret, no routing, no setWebhook"
        );
        let desired = w.desired();
        assert_condition(
            &desired,
            WEBHOOK_REGISTERED,
            ("False", "WebhookConflict"),
            name,
        );
        assert_condition(&desired, READY, ("False", "WebhookConflict"), name);
        assert!(
            condition(&desired, WEBHOOK_REGISTERED)
                .message
                .contains("ns/other"),
            "{name}"
        );
        assert_eq!(
            (desired.routing.as_ref(), desired.webhook_url.as_deref()),
            (None, None),
            "{name}"
        );
        assert_eq!(
            desired.bot.as_ref().map(|b| b.id),
            Some(BOT_ID),
            "{name}: the id the conflict is decided by"
        );
        assert_no_secrets(&desired, &w, name);
    }
}

#[test]
fn the_base_url_comes_from_the_spec_then_the_settings_without_a_trailing_slash() {
    let cases = [
        (
            "spec overrides settings",
            Some("https://spec.example.com/tg"),
            Some(BASE),
            Some("https://spec.example.com/tg"),
        ),
        (
            "spec, trailing slash",
            Some("https://spec.example.com/tg/"),
            None,
            Some("https://spec.example.com/tg"),
        ),
        ("settings only", None, Some(BASE), Some(BASE)),
        (
            "settings, trailing slash",
            None,
            Some("https://default.example.com/"),
            Some("https://default.example.com"),
        ),
        ("neither", None, None, None),
    ];
    for (name, spec, default, expected) in cases {
        let webhook = spec.map_or_else(|| json!({}), |url| json!({"baseUrl": url}));
        let mut w = World::with_bot(bot(json!({"webhook": webhook})));
        w.settings.default_base_url = default.map(str::to_string);
        assert_eq!(base_url(&w.bot, &w.settings), expected, "{name}");
        let steps = w.reconcile();
        match expected {
            Some(base) => {
                assert_eq!(steps.last(), Some(&Step::Finish));
                assert_eq!(steps.len(), 5, "{name}: {steps:?}");
                assert_eq!(w.telegram_url, format!("{base}/webhook/{PATH_1}"), "{name}");
                assert_eq!(
                    w.status().webhook_url.as_deref(),
                    Some(w.telegram_url.as_str()),
                    "{name}"
                );
            }
            None => {
                assert_eq!(
                    steps,
                    [Step::VerifyToken, Step::CreateSecret, Step::Finish],
                    "{name}"
                );
                let status = w.status();
                assert_condition(
                    status,
                    WEBHOOK_REGISTERED,
                    ("False", "BaseUrlMissing"),
                    name,
                );
                assert_condition(status, READY, ("False", "BaseUrlMissing"), name);
                assert!(
                    condition(status, READY)
                        .message
                        .contains("--public-base-url"),
                    "{name}"
                );
                assert_eq!(
                    (status.webhook_url.as_deref(), status.routing.as_ref()),
                    (None, None),
                    "{name}"
                );
                assert_eq!(w.requeue(secs(30)), RESYNC, "{name}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Telegram failures
// ---------------------------------------------------------------------------

/// A fresh bot that is about to call setWebhook.
fn about_to_register() -> World {
    let mut w = World::fresh();
    assert_eq!(
        w.reconcile_until(3),
        [Step::VerifyToken, Step::CreateSecret, Step::PublishRouting]
    );
    w.facts.me = Some(me(BOT_ID));
    assert_eq!(w.plan(), Step::Register);
    w
}

#[test]
fn a_failed_telegram_call_finishes_with_a_reason_per_failure() {
    struct Case {
        name: &'static str,
        failure: (Call, Error),
        token_valid: (&'static str, &'static str),
        webhook: (&'static str, &'static str),
        ready: &'static str,
    }
    let cases = [
        Case {
            name: "setWebhook 429",
            failure: (
                Call::SetWebhook,
                Error::RateLimited {
                    retry_after: secs(7),
                },
            ),
            token_valid: ("True", "Registered"),
            webhook: ("False", "TelegramRateLimited"),
            ready: "TelegramRateLimited",
        },
        Case {
            name: "getMe 401",
            failure: (
                Call::GetMe,
                Error::Unauthorized {
                    description: "Unauthorized".into(),
                },
            ),
            token_valid: ("False", "TokenInvalid"),
            webhook: ("Unknown", "TokenInvalid"),
            ready: "TokenInvalid",
        },
        Case {
            name: "setWebhook 401",
            failure: (
                Call::SetWebhook,
                Error::Unauthorized {
                    description: "Unauthorized".into(),
                },
            ),
            token_valid: ("False", "TokenInvalid"),
            webhook: ("False", "TokenInvalid"),
            ready: "TokenInvalid",
        },
        Case {
            name: "setWebhook 400",
            failure: (
                Call::SetWebhook,
                Error::Rejected {
                    code: 400,
                    description: "Bad Request: bad webhook: Failed to resolve host".into(),
                },
            ),
            token_valid: ("True", "Registered"),
            webhook: ("False", "WebhookRejected"),
            ready: "WebhookRejected",
        },
        Case {
            name: "setWebhook 502",
            failure: (Call::SetWebhook, Error::Unavailable { code: 502 }),
            token_valid: ("True", "Registered"),
            webhook: ("False", "TelegramUnavailable"),
            ready: "TelegramUnavailable",
        },
        Case {
            name: "setWebhook timeout",
            failure: (Call::SetWebhook, Error::Timeout(secs(10))),
            token_valid: ("True", "Registered"),
            webhook: ("False", "TelegramUnavailable"),
            ready: "TelegramUnavailable",
        },
        Case {
            name: "getMe 502",
            failure: (Call::GetMe, Error::Unavailable { code: 502 }),
            token_valid: ("Unknown", "TelegramUnavailable"),
            webhook: ("Unknown", "TelegramUnavailable"),
            ready: "TelegramUnavailable",
        },
    ];
    for case in cases {
        let mut w = about_to_register();
        if case.failure.0 == Call::GetMe {
            w.facts.me = None;
        }
        w.facts.failure = Some(case.failure.clone());
        assert_eq!(w.plan(), Step::Finish, "{}", case.name);
        let desired = w.desired();
        assert_condition(&desired, TOKEN_VALID, case.token_valid, case.name);
        assert_condition(&desired, WEBHOOK_REGISTERED, case.webhook, case.name);
        assert_condition(&desired, READY, ("False", case.ready), case.name);
        assert_eq!(
            desired.webhook_url, None,
            "{}: nothing was registered",
            case.name
        );
        assert_eq!(
            desired.routing,
            w.status().routing,
            "{}: published routing is kept",
            case.name
        );
        assert_no_secrets(&desired, &w, case.name);

        // The next reconcile tries setWebhook again (after getMe if the token is in doubt).
        w.bot.status = Some(desired);
        w.facts = Facts::default();
        let retry = if case.token_valid.0 == "True" {
            Step::Register
        } else {
            Step::VerifyToken
        };
        assert_eq!(w.plan(), retry, "{}: retried", case.name);
    }
}

#[test]
fn a_failed_drift_check_keeps_a_registered_bot_registered() {
    for error in [
        Error::Timeout(secs(10)),
        Error::Unavailable { code: 503 },
        Error::RateLimited {
            retry_after: secs(3),
        },
    ] {
        let mut w = World::converged();
        w.drift_check_due = true;
        assert_eq!(w.plan(), Step::CheckWebhook);
        w.facts.failure = Some((Call::GetWebhookInfo, error.clone()));
        assert_eq!(w.plan(), Step::Finish);
        let desired = w.desired();
        assert_condition(
            &desired,
            WEBHOOK_REGISTERED,
            ("True", "Registered"),
            &error.to_string(),
        );
        assert_condition(&desired, READY, ("True", "Registered"), &error.to_string());
        assert_eq!(desired, *w.status(), "{error}: nothing to write");
    }
}

#[test]
fn a_failed_drift_check_on_an_unregistered_bot_stays_unknown() {
    let mut w = about_to_register();
    w.facts.failure = Some((Call::GetWebhookInfo, Error::Timeout(secs(10))));
    let desired = w.desired();
    assert_condition(
        &desired,
        WEBHOOK_REGISTERED,
        ("Unknown", "TelegramUnavailable"),
        "unregistered",
    );
    assert!(
        condition(&desired, WEBHOOK_REGISTERED)
            .message
            .contains("getWebhookInfo")
    );
}

// ---------------------------------------------------------------------------
// requeue_after
// ---------------------------------------------------------------------------

#[test]
fn requeue_after_follows_the_drift_check_and_the_previous_pair() {
    struct Case {
        name: &'static str,
        next_drift_check: u64,
        previous_expires_in: Option<i64>,
        interval_due_in: Option<i64>,
        expected: u64,
    }
    let cases = [
        Case {
            name: "ready: the next drift check",
            next_drift_check: 120,
            previous_expires_in: None,
            interval_due_in: None,
            expected: 120,
        },
        Case {
            name: "ready: a drift check due now is still a second away",
            next_drift_check: 0,
            previous_expires_in: None,
            interval_due_in: None,
            expected: 1,
        },
        Case {
            name: "previous pair expires first",
            next_drift_check: 120,
            previous_expires_in: Some(30),
            interval_due_in: None,
            expected: 30,
        },
        Case {
            name: "drift check first",
            next_drift_check: 20,
            previous_expires_in: Some(30),
            interval_due_in: None,
            expected: 20,
        },
        Case {
            name: "previous pair expiring now",
            next_drift_check: 120,
            previous_expires_in: Some(0),
            interval_due_in: None,
            expected: 1,
        },
        Case {
            name: "interval rotation first",
            next_drift_check: 120,
            previous_expires_in: None,
            interval_due_in: Some(50),
            expected: 50,
        },
    ];
    for case in cases {
        let mut w = World::converged();
        if let Some(expires_in) = case.previous_expires_in {
            let expires_at = w.now + SignedDuration::from_secs(expires_in);
            w.secret_mut().previous = Some(Previous {
                pair: pair(7),
                expires_at,
            });
        }
        if let Some(due_in) = case.interval_due_in {
            w.bot.spec.rotation =
                Some(serde_json::from_value(json!({"interval": "720h"})).unwrap());
            let now = w.now;
            w.secret_mut().generated_at =
                Some(now - SignedDuration::from_secs(720 * HOUR - due_in));
        }
        assert_eq!(
            status::ready_reason(&w.input()),
            status::Reason::Registered,
            "{}",
            case.name
        );
        assert_eq!(
            w.requeue(secs(case.next_drift_check)),
            secs(case.expected),
            "{}",
            case.name
        );
    }
}

#[test]
fn requeue_after_is_never_below_a_second_nor_past_a_deadline() {
    for next_drift_check in [0, 1, 2, 59, 60, 299, 300, 3600] {
        for expires_in in [
            None,
            Some(-60),
            Some(0),
            Some(1),
            Some(45),
            Some(250),
            Some(1000),
        ] {
            for ready in [true, false] {
                let mut w = World::converged();
                if !ready {
                    w.settings.default_base_url = None;
                }
                if let Some(expires_in) = expires_in {
                    let expires_at = w.now + SignedDuration::from_secs(expires_in);
                    w.secret_mut().previous = Some(Previous {
                        pair: pair(7),
                        expires_at,
                    });
                }
                let wait = w.requeue(secs(next_drift_check));
                let context = format!(
                    "drift {next_drift_check}s, expiry {expires_in:?}, ready {ready}: {wait:?}"
                );
                assert!(wait >= secs(1), "{context}");
                // Only a registered bot acts on the expiry (see the 1-second loop test).
                if ready && let Some(expires_in) = expires_in {
                    assert!(wait <= secs(expires_in.max(1).unsigned_abs()), "{context}");
                }
                if ready {
                    assert!(wait <= secs(next_drift_check.max(1)), "{context}");
                } else {
                    assert!(wait <= RESYNC, "{context}");
                }
            }
        }
    }
}

#[test]

fn a_deadline_the_plan_does_not_act_on_does_not_requeue_every_second() {
    let cases: [(&str, Setup); 3] = [
        ("suspended, interval passed", |w| {
            w.bot.spec.suspend = true;
            w.bot.spec.rotation =
                Some(serde_json::from_value(json!({"interval": "720h"})).unwrap());
            w.now = at(800 * HOUR);
        }),
        ("suspended, previous pair expired", |w| {
            w.bot.spec.suspend = true;
            let expires_at = w.now - SignedDuration::from_secs(60);
            w.secret_mut().previous = Some(Previous {
                pair: pair(7),
                expires_at,
            });
        }),
        ("token Secret gone, previous pair expired", |w| {
            w.token = TokenState::SecretNotFound;
            let expires_at = w.now - SignedDuration::from_secs(60);
            w.secret_mut().previous = Some(Previous {
                pair: pair(7),
                expires_at,
            });
        }),
    ];
    for (name, setup) in cases {
        let mut w = World::converged();
        setup(&mut w);
        w.reconcile();
        assert_eq!(
            w.reconcile(),
            [Step::Finish],
            "{name}: the plan does nothing about the deadline"
        );
        assert_eq!(w.requeue(secs(120)), RESYNC, "{name}");
    }
}

// ---------------------------------------------------------------------------
// Findings about carried-over conditions and the Ready summary
// ---------------------------------------------------------------------------

#[test]

fn a_spec_change_made_while_the_token_is_unusable_is_registered_once_it_is_back() {
    for token in [
        TokenState::SecretNotFound,
        TokenState::KeyNotFound,
        TokenState::Malformed(TokenFormatError::Malformed),
    ] {
        let mut w = World::converged();
        w.bot.metadata.generation = Some(GENERATION + 1); // e.g. maxConnections changed
        w.token = token.clone();
        assert_eq!(w.reconcile(), [Step::Finish]);
        w.token = present(TOKEN);
        assert_eq!(
            w.reconcile(),
            [Step::VerifyToken, Step::Register, Step::Finish],
            "{token:?}"
        );
    }
}

#[test]
fn ready_says_suspended_for_a_bot_suspended_from_the_start() {
    let mut w = World::with_bot(bot(json!({"suspend": true})));
    assert_eq!(
        w.reconcile(),
        [Step::Finish],
        "plan never calls getMe for it"
    );
    assert_condition(
        w.status(),
        WEBHOOK_REGISTERED,
        ("False", "Suspended"),
        "suspended",
    );
    assert_condition(
        w.status(),
        READY,
        ("False", "Suspended"),
        "suspended from the start",
    );
}

#[test]

fn ready_says_webhook_secret_invalid_for_a_new_bot_with_an_edited_secret() {
    let mut w = World::fresh();
    w.secret = SecretState::Invalid(InvalidSecret::BadValue(keys::WEBHOOK_SECRET));
    assert_eq!(
        w.reconcile(),
        [Step::Finish],
        "plan never calls getMe for it"
    );
    assert_condition(
        w.status(),
        WEBHOOK_REGISTERED,
        ("False", "WebhookSecretInvalid"),
        "invalid",
    );
    assert_condition(
        w.status(),
        READY,
        ("False", "WebhookSecretInvalid"),
        "invalid Secret, no status",
    );
}

// ---------------------------------------------------------------------------
// Invariants over many generated inputs
// ---------------------------------------------------------------------------

/// The values each dimension of a generated input takes.
struct Dimensions {
    bots: Vec<ManagedBot>,
    tokens: Vec<TokenState>,
    secrets: Vec<SecretState>,
    facts: Vec<Facts>,
    base_urls: Vec<Option<String>>,
}

fn dimensions() -> Dimensions {
    let converged = World::converged();
    let status = converged.status().clone();
    let old_generation = ManagedBotStatus {
        conditions: status
            .conditions
            .iter()
            .map(|c| Condition {
                observed_generation: Some(1),
                ..c.clone()
            })
            .collect(),
        observed_generation: Some(1),
        ..status.clone()
    };
    let routing_only = ManagedBotStatus {
        routing: status.routing.clone(),
        ..Default::default()
    };
    let mut bots = Vec::new();
    for bot_status in [
        None,
        Some(routing_only),
        Some(status.clone()),
        Some(old_generation),
    ] {
        for annotation in [None, Some("r1"), Some("r2")] {
            for interval in [None, Some("720h")] {
                for suspend in [false, true] {
                    for base in [None, Some("https://spec.example.com/")] {
                        let mut spec = json!({"suspend": suspend});
                        if let Some(base) = base {
                            spec["webhook"] = json!({"baseUrl": base});
                        }
                        if let Some(interval) = interval {
                            spec["rotation"] = json!({"interval": interval});
                        }
                        let mut b = bot(spec);
                        if let Some(value) = annotation {
                            annotate(&mut b, value);
                        }
                        b.status = bot_status.clone();
                        bots.push(b);
                    }
                }
            }
        }
    }
    let tokens = vec![
        TokenState::SecretNotFound,
        TokenState::KeyNotFound,
        TokenState::Malformed(TokenFormatError::Malformed),
        present(TOKEN),
        present(NEW_TOKEN),
    ];
    let now = converged.now;
    let mut secrets = vec![
        SecretState::Missing,
        SecretState::Invalid(InvalidSecret::MissingKey(keys::WEBHOOK_SECRET)),
    ];
    for observed in [None, Some("r1")] {
        for previous_expires_in in [None, Some(-60), Some(60)] {
            for generated_ago in [HOUR, 800 * HOUR] {
                for token_sha256 in [Some(TOKEN_SHA256), Some("0000"), None] {
                    secrets.push(SecretState::Present(WebhookSecret {
                        current: pair(1),
                        previous: previous_expires_in.map(|s| Previous {
                            pair: pair(7),
                            expires_at: now + SignedDuration::from_secs(s),
                        }),
                        rotation_observed: observed.map(str::to_string),
                        generated_at: Some(now - SignedDuration::from_secs(generated_ago)),
                        token_sha256: token_sha256.map(str::to_string),
                    }));
                }
            }
        }
    }
    let our_url = converged.url();
    let mut facts = Vec::new();
    for me_known in [false, true] {
        for registered in [false, true] {
            for unregistered in [false, true] {
                for info_url in [
                    None,
                    Some(our_url.as_str()),
                    Some("https://elsewhere.example.com/x"),
                ] {
                    for conflict in [None, Some("ns/other")] {
                        for failure in [
                            None,
                            Some((
                                Call::SetWebhook,
                                Error::RateLimited {
                                    retry_after: secs(7),
                                },
                            )),
                        ] {
                            facts.push(Facts {
                                me: me_known.then(|| me(BOT_ID)),
                                registered,
                                unregistered,
                                info: info_url.map(|u| info(u, 0)),
                                conflict_with: conflict.map(str::to_string),
                                failure,
                            });
                        }
                    }
                }
            }
        }
    }
    Dimensions {
        bots,
        tokens,
        secrets,
        facts,
        base_urls: vec![Some(BASE.to_string()), None],
    }
}

/// What [`check_invariants`] has checked, to show no invariant is vacuous.
#[derive(Default)]
struct Checked {
    inputs: usize,
    present_secret: usize,
    no_rotation_asked: usize,
    registered: usize,
    failure_or_no_token: usize,
    conflict: usize,
    steps: std::collections::BTreeSet<String>,
}

fn check_invariants(input: &Input, checked: &mut Checked, context: &dyn Fn() -> String) {
    let step = plan(input);
    checked.inputs += 1;
    let name = format!("{step:?}");
    checked
        .steps
        .insert(name.split('(').next().unwrap_or_default().to_string());
    if let SecretState::Present(secret) = input.secret {
        checked.present_secret += 1;
        assert_ne!(
            step,
            Step::CreateSecret,
            "a present Secret is never regenerated: {}",
            context()
        );

        let annotation = rotate_annotation(input.bot);
        let no_interval = input
            .bot
            .spec
            .rotation
            .as_ref()
            .and_then(|r| r.interval)
            .is_none();
        if no_interval && annotation.is_none_or(|a| secret.rotation_observed.as_deref() == Some(a))
        {
            checked.no_rotation_asked += 1;
            assert!(
                !matches!(step, Step::Rotate(_)),
                "no rotation was asked for: {step:?} for {}",
                context()
            );
        }
    }
    if input.facts.registered {
        checked.registered += 1;
        assert_ne!(
            step,
            Step::Register,
            "setWebhook once per reconcile: {}",
            context()
        );
    }
    if input.facts.failure.is_some() || !matches!(input.token, TokenState::Present(_)) {
        checked.failure_or_no_token += 1;
        assert_eq!(
            step,
            Step::Finish,
            "a failure or an unusable token ends the reconcile: {}",
            context()
        );
    }
    if input.facts.conflict_with.is_some() {
        checked.conflict += 1;
        assert!(
            matches!(step, Step::Finish | Step::VerifyToken | Step::Unregister),
            "a conflicting bot touches neither its Secret nor Telegram's webhook: {step:?} for {}",
            context()
        );
    }
    let wait = requeue_after(input, secs(60));
    assert!(
        wait >= secs(1) && wait <= RESYNC,
        "requeue {wait:?}: {}",
        context()
    );
}

#[test]
fn invariants_hold_over_generated_inputs() {
    let d = dimensions();
    let settings: Vec<Settings> = d
        .base_urls
        .iter()
        .map(|base| Settings {
            default_base_url: base.clone(),
            resync_interval: RESYNC,
        })
        .collect();
    let mut checked = Checked::default();

    // Every start of a reconcile (nothing learned yet, or only getMe), exhaustively.
    let starts = [
        Facts::default(),
        Facts {
            me: Some(me(BOT_ID)),
            ..Facts::default()
        },
    ];
    for (b, bot) in d.bots.iter().enumerate() {
        for (t, token) in d.tokens.iter().enumerate() {
            for (s, secret) in d.secrets.iter().enumerate() {
                for (f, facts) in starts.iter().enumerate() {
                    for (u, settings) in settings.iter().enumerate() {
                        for drift_check_due in [false, true] {
                            let input = Input {
                                bot,
                                token,
                                secret,
                                facts,
                                drift_check_due,
                                now: at(HOUR),
                                settings,
                            };
                            let context = || {
                                format!(
                                    "bot {b}, token {t}, secret {s}, start {f}, base {u}, drift {drift_check_due}"
                                )
                            };
                            check_invariants(&input, &mut checked, &context);
                        }
                    }
                }
            }
        }
    }

    // Anything learned midway, sampled: a stride coprime with every
    // dimension's size walks the whole product evenly.
    let sizes = [
        d.bots.len(),
        d.tokens.len(),
        d.secrets.len(),
        d.facts.len(),
        settings.len(),
        2,
    ];
    let total: usize = sizes.iter().product();
    const SAMPLES: usize = 60_000;
    const STRIDE: usize = 1_000_003;
    for k in 0..SAMPLES {
        let mut index = (k * STRIDE) % total;
        let mut digits = sizes.map(|size| {
            let digit = index % size;
            index /= size;
            digit
        });
        let [b, t, s, f, u, drift] = std::mem::take(&mut digits);
        let input = Input {
            bot: &d.bots[b],
            token: &d.tokens[t],
            secret: &d.secrets[s],
            facts: &d.facts[f],
            drift_check_due: drift == 1,
            now: at(HOUR),
            settings: &settings[u],
        };
        let context =
            || format!("bot {b}, token {t}, secret {s}, facts {f}, base {u}, drift {drift}");
        check_invariants(&input, &mut checked, &context);
    }

    let counts = [
        checked.present_secret,
        checked.no_rotation_asked,
        checked.registered,
        checked.failure_or_no_token,
        checked.conflict,
    ];
    assert!(
        counts.iter().all(|c| *c > 1000),
        "some invariant was hardly checked: {counts:?} of {}",
        checked.inputs
    );
    let every_step = [
        "CheckWebhook",
        "CreateSecret",
        "ExpirePrevious",
        "Finish",
        "PublishRouting",
        "Register",
        "Rotate",
        "Unregister",
        "VerifyToken",
    ];
    assert_eq!(
        checked.steps,
        every_step.map(str::to_string).into(),
        "the inputs reach every step"
    );
}

#[test]
fn every_generated_start_converges_in_one_reconcile_and_stays_converged() {
    let d = dimensions();
    let our_url = format!("{BASE}/webhook/{PATH_1}");
    let mut starts = 0;
    let mut registered_runs = 0;
    for (b, bot) in d.bots.iter().enumerate().step_by(3) {
        for (t, token) in d.tokens.iter().enumerate() {
            for (s, secret) in d.secrets.iter().enumerate().step_by(2) {
                for (drift, telegram_url) in [
                    (false, our_url.as_str()),
                    (true, ""),
                    (true, "https://elsewhere.example.com/x"),
                ] {
                    let mut w = World::with_bot(bot.clone());
                    w.token = token.clone();
                    w.secret = secret.clone();
                    w.now = at(HOUR);
                    w.drift_check_due = drift;
                    w.telegram_url = telegram_url.to_string();
                    w.generated = 10;
                    let context =
                        format!("bot {b}, token {t}, secret {s}, telegram {telegram_url:?}");
                    starts += 1;

                    let first = w.reconcile();
                    let count = |step: fn(&Step) -> bool| first.iter().filter(|s| step(s)).count();
                    assert!(count(|s| *s == Step::Register) <= 1, "{context}: {first:?}");
                    assert!(
                        count(|s| matches!(s, Step::Rotate(_))) <= 1,
                        "{context}: {first:?}"
                    );
                    assert!(
                        count(|s| *s == Step::CreateSecret) <= 1,
                        "{context}: {first:?}"
                    );
                    if matches!(secret, SecretState::Present(_)) {
                        assert_eq!(
                            count(|s| *s == Step::CreateSecret),
                            0,
                            "{context}: {first:?}"
                        );
                    }
                    if first.contains(&Step::Register) {
                        registered_runs += 1;
                        assert_eq!(w.telegram_url, w.url(), "{context}");
                        assert_eq!(
                            w.status().webhook_url.as_deref(),
                            Some(w.telegram_url.as_str()),
                            "{context}"
                        );
                        assert_eq!(
                            w.status().routing,
                            Some(w.secret().routing(w.now)),
                            "{context}"
                        );
                    }
                    let status = w.status().clone();
                    assert_no_secrets(&status, &w, &context);

                    let second = w.reconcile();
                    assert_eq!(second, [Step::Finish], "{context}: after {first:?}");
                    assert_eq!(
                        w.status(),
                        &status,
                        "{context}: after {first:?}, a second write"
                    );
                }
            }
        }
    }
    assert!(
        starts > 1000 && registered_runs > 100,
        "{starts} starts, {registered_runs} registered"
    );
}

// ---------------------------------------------------------------------------
// Properties over random histories (proptest)
// ---------------------------------------------------------------------------

/// Something that happens to a bot between reconciles.
#[derive(Debug, Clone)]
enum Happening {
    /// A person sets the rotate annotation (a few values, so repeats happen).
    Annotate(u8),
    /// The same, with rotate-now: no grace period.
    AnnotateNow(u8),
    /// Time passes.
    Advance(u32),
    /// The drift check comes due; Telegram's webhook may have been changed.
    DriftCheck { changed_elsewhere: bool },
    /// The spec changes (a new generation).
    SpecChange(u8),
    /// The controller crashes after this many steps of its next reconcile.
    Crash(usize),
}

fn happening() -> impl proptest::strategy::Strategy<Value = Happening> {
    use proptest::prelude::*;
    prop_oneof![
        (0u8..3).prop_map(Happening::Annotate),
        (0u8..3).prop_map(Happening::AnnotateNow),
        (1u32..(2 * 3600)).prop_map(Happening::Advance),
        any::<bool>().prop_map(|changed_elsewhere| Happening::DriftCheck { changed_elsewhere }),
        (1u8..100).prop_map(Happening::SpecChange),
        (0usize..6).prop_map(Happening::Crash),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// Over any history: a pair is generated only for a requested rotation
    /// (so never more than one more than the annotation's changes), a
    /// previous pair always expires, a converged bot yields no action and a
    /// second reconcile writes nothing, and a desired state is registered
    /// with at most one setWebhook.
    #[test]
    fn random_histories_keep_the_decision_invariants(history in proptest::collection::vec(happening(), 1..30)) {
        let mut w = World::with_bot(bot(json!({"rotation": {"gracePeriod": "10m"}})));
        w.reconcile();
        // Each change of the annotation's value asks for one rotation.
        let mut requested = 0usize;
        for happening in &history {
            let mut crash_after = usize::MAX;
            match happening {
                Happening::Annotate(n) | Happening::AnnotateNow(n) => {
                    let value = format!("r{n}");
                    if rotate_annotation(&w.bot) != Some(value.as_str()) {
                        requested += 1;
                    }
                    annotate(&mut w.bot, &value);
                    let annotations = w.bot.metadata.annotations.get_or_insert_default();
                    if matches!(happening, Happening::AnnotateNow(_)) {
                        annotations.insert(ROTATE_NOW_ANNOTATION.into(), value.clone());
                    } else {
                        annotations.remove(ROTATE_NOW_ANNOTATION);
                    }
                }
                Happening::Advance(seconds) => w.now += SignedDuration::from_secs(i64::from(*seconds)),
                Happening::DriftCheck { changed_elsewhere } => {
                    w.drift_check_due = true;
                    if *changed_elsewhere {
                        w.telegram_url = "https://elsewhere.example.org/hook".into();
                    }
                }
                Happening::SpecChange(max_connections) => {
                    w.bot.spec.webhook.max_connections = Some(i32::from(*max_connections));
                    w.bot.metadata.generation = w.bot.metadata.generation.map(|g| g + 1);
                }
                Happening::Crash(after) => crash_after = *after,
            }
            let steps = w.reconcile_until(crash_after);
            let registers = steps.iter().filter(|s| **s == Step::Register).count();
            proptest::prop_assert!(registers <= 1, "{steps:?}");
            proptest::prop_assert!(
                w.generated as usize <= 1 + requested,
                "{} pairs generated for {} requested rotations: {history:?}",
                w.generated,
                requested
            );
        }
        // Whatever happened, one reconcile converges…
        w.drift_check_due = false;
        let steps = w.reconcile();
        proptest::prop_assert!(steps.iter().filter(|s| **s == Step::Register).count() <= 1);
        proptest::prop_assert_eq!(w.telegram_url.clone(), w.url(), "registered: {:?}", steps);
        // …after which nothing is left to do and nothing is written.
        let status = w.bot.status.clone();
        proptest::prop_assert_eq!(w.reconcile(), vec![Step::Finish]);
        proptest::prop_assert_eq!(&w.bot.status, &status);
        // A previous pair expires when its grace period is over.
        if let Some(expires_at) = w.secret().previous.as_ref().map(|p| p.expires_at) {
            w.now = expires_at;
            w.reconcile();
            proptest::prop_assert!(w.secret().previous.is_none());
            proptest::prop_assert!(w.status().routing.as_ref().is_some_and(|r| r.previous.is_none()));
        }
    }
}
