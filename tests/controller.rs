//! The controller as a process against a real kube-apiserver and the fake
//! Telegram, driven with kubectl as a user would.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use managedbot::{controller::webhook_secret::sha256_hex, resource::ManagedBot};
use testbed::FakeTelegram;

const BASE: &str = "https://bots.example.com";

#[tokio::test]
async fn a_new_bot_is_registered_once_and_then_left_alone() -> anyhow::Result<()> {
    let env = env_with_crd("ctl-create").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7001, "create_bot");
    let controller = spawn_controller(
        &env,
        &telegram.url(),
        &["--resync-interval=3s", "--leader-elect=false"],
    )?;
    apply_bot(&env, "create", &token, serde_json::json!({})).await?;

    let bot = ready_bot(&env, "create", Duration::from_secs(30)).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets.get("create-webhook").await?;
    let path_secret = secret_value(&secret, "webhook-secret").unwrap();
    let secret_token = secret_value(&secret, "secret-token").unwrap();
    assert_eq!(path_secret.len(), 43);
    assert_eq!(secret_token.len(), 43);
    let url = format!("{BASE}/webhook/{path_secret}");
    assert_eq!(
        secret_value(&secret, "webhook-url").as_deref(),
        Some(url.as_str())
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("ManagedBot", "create", Some(true))
    );
    assert_eq!(
        secret.metadata.labels.as_ref().unwrap()["managedbot.dev/bot"],
        "create"
    );

    let set = telegram.calls_to(7001, "setWebhook");
    assert_eq!(set.len(), 1, "exactly one setWebhook: {set:?}");
    assert_eq!(set[0].params["url"], url.as_str());
    assert_eq!(set[0].params["secret_token"], secret_token.as_str());
    assert_eq!(telegram.webhook(7001).unwrap().url, url);

    let status = bot.status.clone().unwrap();
    assert_eq!(status.webhook_url.as_deref(), Some(url.as_str()));
    assert_eq!(
        status.bot.as_ref().map(|b| (b.id, b.username.clone())),
        Some((7001, Some("create_bot".into())))
    );
    let routing = status.routing.unwrap();
    assert_eq!(routing.current.path_sha256, sha256_hex(&path_secret));
    assert_eq!(routing.current.token_sha256, sha256_hex(&secret_token));
    assert_eq!(status.observed_generation, bot.metadata.generation);
    for type_ in ["Ready", "TokenValid", "WebhookRegistered"] {
        let condition = status.conditions.iter().find(|c| c.type_ == type_).unwrap();
        assert_eq!(condition.status, "True", "{condition:?}");
        assert_eq!(condition.observed_generation, bot.metadata.generation);
    }
    assert!(
        event_reasons(&env, "create")
            .await?
            .contains(&"Registered".to_string())
    );

    // The first drift check fills status.telegram; from then on the bot is
    // converged: 30 s with a 3 s resync bring drift checks and not one write.
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let synced = eventually(Duration::from_secs(15), "status.telegram", || async {
        let bot = bots.get("create").await?;
        Ok(bot
            .status
            .as_ref()
            .and_then(|s| s.telegram.clone())
            .map(|_| bot))
    })
    .await?;
    assert_eq!(
        synced
            .status
            .unwrap()
            .telegram
            .unwrap()
            .pending_update_count,
        0
    );
    let bot_version = bots.get("create").await?.metadata.resource_version;
    let secret_version = secrets
        .get("create-webhook")
        .await?
        .metadata
        .resource_version;
    let checks_before = telegram.calls_to(7001, "getWebhookInfo").len();
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        bots.get("create").await?.metadata.resource_version,
        bot_version,
        "the converged bot was written"
    );
    assert_eq!(
        secrets
            .get("create-webhook")
            .await?
            .metadata
            .resource_version,
        secret_version
    );
    assert_eq!(telegram.calls_to(7001, "setWebhook").len(), 1);
    assert_eq!(telegram.calls_to(7001, "getMe").len(), 1);
    let checks = telegram.calls_to(7001, "getWebhookInfo").len() - checks_before;
    assert!(
        (5..=15).contains(&checks),
        "{checks} drift checks in 30 s at a 3 s resync"
    );
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn rotation_keeps_the_previous_pair_for_the_grace_period() -> anyhow::Result<()> {
    let env = env_with_crd("ctl-rotate").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7002, "rotate_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    apply_bot(
        &env,
        "rotate",
        &token,
        serde_json::json!({"rotation": {"gracePeriod": "6s"}}),
    )
    .await?;
    ready_bot(&env, "rotate", Duration::from_secs(30)).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let old = secrets.get("rotate-webhook").await?;
    let old_path = secret_value(&old, "webhook-secret").unwrap();

    env.kubectl_run(
        &[
            "annotate",
            "--overwrite",
            "mbot",
            "rotate",
            "managedbot.dev/rotate=first",
        ],
        None,
    )
    .await?
    .ok()?;
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let bot = eventually(Duration::from_secs(30), "rotation observed", || async {
        let bot = bots.get("rotate").await?;
        let observed = bot
            .status
            .as_ref()
            .and_then(|s| s.rotation.as_ref())
            .and_then(|r| r.observed.clone());
        Ok((observed.as_deref() == Some("first")
            && ready_reason(&bot).is_some_and(|(s, _)| s == "True"))
        .then_some(bot))
    })
    .await?;
    let rotated = secrets.get("rotate-webhook").await?;
    let new_path = secret_value(&rotated, "webhook-secret").unwrap();
    assert_ne!(new_path, old_path);
    assert_eq!(
        secret_value(&rotated, "previous-webhook-secret").as_deref(),
        Some(old_path.as_str())
    );
    assert!(secret_value(&rotated, "previous-expires-at").is_some());
    let status = bot.status.unwrap();
    assert_eq!(
        status.webhook_url,
        Some(format!("{BASE}/webhook/{new_path}"))
    );
    let routing = status.routing.unwrap();
    assert_eq!(routing.current.path_sha256, sha256_hex(&new_path));
    assert_eq!(
        routing.previous.as_ref().map(|p| p.path_sha256.clone()),
        Some(sha256_hex(&old_path))
    );
    let set = telegram.calls_to(7002, "setWebhook");
    let successful: Vec<_> = set.iter().filter(|c| c.status == 200).collect();
    assert_eq!(successful.len(), 2, "{set:?}");
    assert_eq!(
        successful[1].params["url"],
        format!("{BASE}/webhook/{new_path}").as_str()
    );
    assert_eq!(
        successful[1].params["secret_token"],
        secret_value(&rotated, "secret-token").unwrap().as_str()
    );

    // After the grace period the previous pair goes, from the Secret and the routing.
    eventually(Duration::from_secs(30), "previous pair dropped", || async {
        let secret = secrets.get("rotate-webhook").await?;
        let bot = bots.get("rotate").await?;
        let routed = bot
            .status
            .and_then(|s| s.routing)
            .and_then(|r| r.previous)
            .is_some();
        Ok((secret_value(&secret, "previous-webhook-secret").is_none() && !routed).then_some(()))
    })
    .await?;

    // The same value again asks for nothing.
    env.kubectl_run(
        &[
            "annotate",
            "--overwrite",
            "mbot",
            "rotate",
            "managedbot.dev/rotate=first",
        ],
        None,
    )
    .await?
    .ok()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        secret_value(&secrets.get("rotate-webhook").await?, "webhook-secret"),
        Some(new_path)
    );
    assert_eq!(
        telegram
            .calls_to(7002, "setWebhook")
            .iter()
            .filter(|c| c.status == 200)
            .count(),
        2
    );
    assert!(
        event_reasons(&env, "rotate")
            .await?
            .contains(&"Rotated".to_string())
    );
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn deletion_unregisters_and_the_secret_is_collected() -> anyhow::Result<()> {
    let env = env_with_crd("ctl-delete").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7003, "delete_bot");
    let gone_token = telegram.add_bot(7004, "gone_bot");
    let foreign_token = telegram.add_bot(7005, "foreign_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    apply_bot(&env, "delete", &token, serde_json::json!({})).await?;
    apply_bot(&env, "gone", &gone_token, serde_json::json!({})).await?;
    apply_bot(&env, "foreign", &foreign_token, serde_json::json!({})).await?;
    for name in ["delete", "gone", "foreign"] {
        ready_bot(&env, name, Duration::from_secs(30)).await?;
    }

    env.kubectl_run(&["delete", "mbot", "delete", "--timeout=30s"], None)
        .await?
        .ok()?;
    assert_eq!(telegram.calls_to(7003, "deleteWebhook").len(), 1);
    assert!(telegram.webhook(7003).is_none());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    eventually(
        Duration::from_secs(60),
        "the webhook Secret garbage-collected",
        || async {
            Ok(secrets
                .get_opt("delete-webhook")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await?;

    // A bot whose token Secret is gone is still deleted, promptly.
    env.kubectl_run(&["delete", "secret", "gone-token"], None)
        .await?
        .ok()?;
    env.kubectl_run(&["delete", "mbot", "gone", "--timeout=30s"], None)
        .await?
        .ok()?;
    assert!(telegram.calls_to(7004, "deleteWebhook").is_empty());

    // A webhook someone else set is left alone.
    let mut other = telegram.webhook(7005).unwrap();
    other.url = "https://elsewhere.example.org/hook".into();
    telegram.set_webhook_directly(7005, Some(other));
    env.kubectl_run(&["delete", "mbot", "foreign", "--timeout=30s"], None)
        .await?
        .ok()?;
    assert!(telegram.calls_to(7005, "deleteWebhook").is_empty());
    assert_eq!(
        telegram.webhook(7005).unwrap().url,
        "https://elsewhere.example.org/hook"
    );
    assert_no_token_leaked(&env, &[&token, &gone_token, &foreign_token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn a_lost_status_is_rebuilt_from_the_secret_and_a_lost_secret_is_regenerated()
-> anyhow::Result<()> {
    let env = env_with_crd("ctl-lost").await?;
    let telegram = FakeTelegram::start().await?;
    telegram.set_rate_limit(false);
    let token = telegram.add_bot(7006, "lost_bot");
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen = format!("--metrics-listen=127.0.0.1:{metrics_port}");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false", &listen])?;
    apply_bot(&env, "lost", &token, serde_json::json!({})).await?;
    ready_bot(&env, "lost", Duration::from_secs(30)).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let path = secret_value(&secrets.get("lost-webhook").await?, "webhook-secret").unwrap();

    // The status is wiped: it comes back with the Secret's pair, not a new one.
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    bots.patch_status(
        "lost",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": null})),
    )
    .await?;
    let rebuilt = ready_bot(&env, "lost", Duration::from_secs(30)).await?;
    assert_eq!(
        rebuilt.status.unwrap().webhook_url,
        Some(format!("{BASE}/webhook/{path}"))
    );
    assert_eq!(
        secret_value(&secrets.get("lost-webhook").await?, "webhook-secret").as_deref(),
        Some(path.as_str())
    );

    // The Secret is deleted: a new pair, registered, with an Event.
    secrets.delete("lost-webhook", &Default::default()).await?;
    let renewed = eventually(Duration::from_secs(30), "a new pair registered", || async {
        let Some(secret) = secrets.get_opt("lost-webhook").await? else {
            return Ok(None);
        };
        let new_path = secret_value(&secret, "webhook-secret").unwrap_or_default();
        let url = format!("{BASE}/webhook/{new_path}");
        Ok(
            (new_path != path && telegram.webhook(7006).is_some_and(|w| w.url == url))
                .then_some(url),
        )
    })
    .await?;
    assert_eq!(
        ready_bot(&env, "lost", Duration::from_secs(30))
            .await?
            .status
            .unwrap()
            .webhook_url,
        Some(renewed)
    );
    assert!(
        event_reasons(&env, "lost")
            .await?
            .contains(&"WebhookSecretRecreated".to_string())
    );

    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .await?
        .text()
        .await?;
    for family in [
        "managedbot_reconciles_total{result=\"ok\"}",
        "managedbot_reconcile_duration_seconds_bucket",
        "managedbot_telegram_calls_total{method=\"setWebhook\",result=\"ok\"}",
        "managedbot_bots{ready=\"True\"} 1",
    ] {
        assert!(metrics.contains(family), "missing {family} in\n{metrics}");
    }
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/healthz"))
            .await?
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("http://127.0.0.1:{metrics_port}/readyz"))
            .await?
            .status(),
        200
    );
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}
