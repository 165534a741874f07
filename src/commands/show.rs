//! `managedbot status NAME` (a person's view of a bot) and `managedbot url
//! NAME` (its webhook URL, for scripts).

use std::fmt::Write as _;

use clap::Args;
use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use serde::Serialize;

use super::{Failure, Format, Key, Scope, not_ready_because};
use crate::resource::ManagedBot;

/// Options of `managedbot status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The ManagedBot.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Print the status as data instead.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

/// Options of `managedbot url`.
#[derive(Args, Debug)]
pub struct UrlArgs {
    /// The ManagedBot.
    pub name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Print as data (namespace, name, webhookUrl) instead of the bare URL.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

/// A bot's URL, as data.
#[derive(Serialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BotUrl {
    /// The bot's namespace.
    pub namespace: String,
    /// The bot's name.
    pub name: String,
    /// Its registered webhook URL.
    pub webhook_url: String,
}

impl BotUrl {
    /// The registered URL of a Ready bot; [`Failure::NotReady`] otherwise.
    pub fn of(bot: &ManagedBot) -> anyhow::Result<Self> {
        if let Some(why) = not_ready_because(bot) {
            return Err(Failure::NotReady(format!(
                "{} has no registered webhook: {why}",
                Key(bot)
            ))
            .into());
        }
        let url = bot.status.as_ref().and_then(|s| s.webhook_url.clone());
        let url = url.ok_or_else(|| {
            Failure::NotReady(format!("{} has no webhook URL in its status", Key(bot)))
        })?;
        Ok(Self {
            namespace: bot.metadata.namespace.clone().unwrap_or_default(),
            name: bot.metadata.name.clone().unwrap_or_default(),
            webhook_url: url,
        })
    }
}

/// Runs `managedbot url`.
pub async fn url(args: UrlArgs) -> anyhow::Result<()> {
    let scope = Scope::infer(args.namespace).await?;
    let bot = scope.bot(&args.name).await?;
    let url = BotUrl::of(&bot)?;
    match args.output {
        Some(format) => print!("{}", format.render(&url)?),
        None => println!("{}", url.webhook_url),
    }
    Ok(())
}

/// Runs `managedbot status`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let scope = Scope::infer(args.namespace).await?;
    let bot = scope.bot(&args.name).await?;
    match args.output {
        Some(format) => print!(
            "{}",
            format.render(&bot.status.clone().unwrap_or_default())?
        ),
        None => print!("{}", describe(&bot, Timestamp::now())),
    }
    Ok(())
}

/// A person's view of a bot at `now`. The webhook URL shows its host and
/// path but not its secret (`managedbot url` prints it whole).
pub fn describe(bot: &ManagedBot, now: Timestamp) -> String {
    let status = bot.status.clone().unwrap_or_default();
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<13}{value}", format!("{label}:"));
    };
    line("Name", Key(bot).to_string());
    line(
        "Bot",
        match &status.bot {
            Some(identity) => format!(
                "@{} (id {})",
                identity.username.as_deref().unwrap_or("?"),
                identity.id
            ),
            None => "unknown (getMe not answered yet)".into(),
        },
    );
    line(
        "Ready",
        match super::ready(bot) {
            Some((ready, reason, message)) => format!("{ready} ({reason}) {message}"),
            None => "not reconciled yet (is the controller running?)".into(),
        },
    );
    line("Suspended", bot.spec.suspend.to_string());
    line(
        "Webhook",
        status
            .webhook_url
            .as_deref()
            .map_or_else(|| "none registered".into(), redact_url),
    );
    if let Some(secret) = &status.webhook_secret_ref {
        line("Secret", secret.name.clone());
    }
    if let Some(rotation) = &status.rotation {
        let mut text = format!(
            "last {}",
            rotation
                .last_rotation_time
                .as_ref()
                .map_or("never".into(), |t| when(t, now))
        );
        if let Some(observed) = &rotation.observed {
            let _ = write!(text, ", for managedbot.dev/rotate={observed:?}");
        }
        if let Some(expires) = &rotation.previous_expires_at {
            let _ = write!(
                text,
                "; the previous secret is routed until {}",
                when(expires, now)
            );
        }
        line("Rotation", text);
    }
    if let Some(telegram) = &status.telegram {
        let mut text = format!("{} pending updates", telegram.pending_update_count);
        if let Some(message) = &telegram.last_error_message {
            let at = telegram
                .last_error_date
                .as_ref()
                .map_or(String::new(), |t| format!(" ({})", when(t, now)));
            let _ = write!(text, "; last delivery error{at}: {message}");
        }
        if let Some(synced) = &telegram.last_sync_time {
            let _ = write!(text, "; checked {}", when(synced, now));
        }
        line("Telegram", text);
    }
    if !status.conditions.is_empty() {
        let _ = writeln!(out, "Conditions:");
        let _ = writeln!(
            out,
            "  {:<18} {:<7} {:<20} {:<8} MESSAGE",
            "TYPE", "STATUS", "REASON", "SINCE"
        );
        for c in &status.conditions {
            let _ = writeln!(
                out,
                "  {:<18} {:<7} {:<20} {:<8} {}",
                c.type_,
                c.status,
                c.reason,
                age(&c.last_transition_time, now),
                c.message
            );
        }
    }
    out
}

/// The URL with its last segment, the path secret, replaced.
fn redact_url(url: &str) -> String {
    match url.rsplit_once("/webhook/") {
        Some((base, _secret)) => format!("{base}/webhook/<secret> (managedbot url prints it)"),
        None => "<hidden>".into(),
    }
}

fn when(time: &Time, now: Timestamp) -> String {
    format!("{} ({} ago)", time.0, age(time, now))
}

/// `90s`, `5m`, `3h`, `2d`: how long ago, the way kubectl prints ages.
fn age(time: &Time, now: Timestamp) -> String {
    let seconds = now.duration_since(time.0).as_secs().max(0);
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    use super::*;
    use crate::resource::{BotIdentity, ManagedBotStatus, RotationStatus, TelegramStatus};

    fn bot(ready: Option<&str>) -> ManagedBot {
        let mut bot: ManagedBot = serde_json::from_value(serde_json::json!({
            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
            "metadata": {"name": "support", "namespace": "bots"},
            "spec": {"tokenSecretRef": {"name": "t"}, "backend": {"service": {"name": "s", "port": 80}}},
        }))
        .unwrap();
        let at: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        bot.status = ready.map(|ready| ManagedBotStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: ready.into(),
                reason: if ready == "True" {
                    "Registered"
                } else {
                    "TokenInvalid"
                }
                .into(),
                message: "the message".into(),
                observed_generation: Some(1),
                last_transition_time: Time(at),
            }],
            webhook_url: Some("https://bots.example.com/tg/webhook/SeCrEtPaTh".into()),
            bot: Some(BotIdentity {
                id: 42,
                username: Some("support_bot".into()),
            }),
            rotation: Some(RotationStatus {
                observed: Some("r1".into()),
                last_rotation_time: Some(Time(at)),
                previous_expires_at: None,
            }),
            telegram: Some(TelegramStatus {
                pending_update_count: 3,
                last_error_date: Some(Time(at)),
                last_error_message: Some("Wrong response from the webhook: 502 Bad Gateway".into()),
                last_sync_time: None,
            }),
            ..Default::default()
        });
        bot
    }

    #[test]
    fn the_url_of_a_ready_bot_and_a_not_ready_failure_otherwise() {
        let url = BotUrl::of(&bot(Some("True"))).unwrap();
        assert_eq!(
            url.webhook_url,
            "https://bots.example.com/tg/webhook/SeCrEtPaTh"
        );
        for not_ready in [bot(Some("False")), bot(None)] {
            let error = BotUrl::of(&not_ready).unwrap_err();
            assert_eq!(super::super::exit_code(&error), 4, "{error}");
            assert!(
                error
                    .to_string()
                    .starts_with("bots/support has no registered webhook"),
                "{error}"
            );
        }
    }

    #[test]
    fn the_description_shows_state_and_trouble_but_not_the_secret() {
        let now: Timestamp = "2026-12-04T10:05:00Z".parse().unwrap();
        let text = describe(&bot(Some("False")), now);
        for expected in [
            "Name:        bots/support",
            "Bot:         @support_bot (id 42)",
            "Ready:       False (TokenInvalid) the message",
            "Webhook:     https://bots.example.com/tg/webhook/<secret>",
            "Telegram:    3 pending updates; last delivery error (2026-12-04T10:00:00Z (5m ago)): Wrong response from the webhook: 502 Bad Gateway",
            "Ready              False   TokenInvalid         5m       the message",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
        assert!(!text.contains("SeCrEtPaTh"), "{text}");
        let fresh = describe(&bot(None), now);
        assert!(fresh.contains("not reconciled yet"), "{fresh}");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let ago = |s: i64| {
            age(
                &Time(now - k8s_openapi::jiff::SignedDuration::from_secs(s)),
                now,
            )
        };
        assert_eq!(
            [ago(5), ago(300), ago(4 * 3600), ago(3 * 86400)],
            ["5s", "5m", "4h", "3d"]
        );
    }
}
