//! The controller under Telegram faults, conflicts, suspension, crashes and
//! leader election, as processes against a real kube-apiserver.

mod common;

use std::{collections::BTreeSet, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use managedbot::resource::ManagedBot;
use testbed::{
    FakeTelegram,
    fake_telegram::{Fault, FaultKind},
};

const BASE: &str = "https://bots.example.com";

fn fault(bot_id: i64, method: Option<&str>, kind: FaultKind) -> Fault {
    Fault {
        method: method.map(str::to_string),
        bot_id: Some(bot_id),
        kind,
        times: None,
    }
}

#[tokio::test]
async fn a_webhook_changed_behind_our_back_is_set_again() -> anyhow::Result<()> {
    let env = env_with_crd("flt-drift").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7101, "drift_bot");
    let controller = spawn_controller(
        &env,
        &telegram.url(),
        &["--resync-interval=2s", "--leader-elect=false"],
    )?;
    apply_bot(&env, "drift", &token, serde_json::json!({})).await?;
    let bot = ready_bot(&env, "drift", Duration::from_secs(30)).await?;
    let ours = bot.status.unwrap().webhook_url.unwrap();
    let mut theirs = telegram.webhook(7101).unwrap();
    theirs.url = "https://someone-else.example.org/hook".into();
    telegram.set_webhook_directly(7101, Some(theirs));
    eventually(Duration::from_secs(20), "the webhook set again", || async {
        Ok(telegram.webhook(7101).filter(|w| w.url == ours).map(|_| ()))
    })
    .await?;
    eventually(
        Duration::from_secs(10),
        "a DriftCorrected Event",
        || async {
            Ok(event_reasons(&env, "drift")
                .await?
                .contains(&"DriftCorrected".to_string())
                .then_some(()))
        },
    )
    .await?;
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn a_missing_token_secret_is_reported_then_picked_up() -> anyhow::Result<()> {
    let env = env_with_crd("flt-notoken").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7102, "late_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let bot = serde_json::json!({
        "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot", "metadata": {"name": "late"},
        "spec": {"tokenSecretRef": {"name": "late-token"}, "backend": {"url": "http://late.example:8080"}}
    });
    env.kubectl_run(&["apply", "-f", "-"], Some(&bot.to_string()))
        .await?
        .ok()?;
    let waiting =
        bot_with_reason(&env, "late", "TokenSecretNotFound", Duration::from_secs(30)).await?;
    let token_valid = waiting
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "TokenValid")
        .unwrap();
    assert_eq!(
        (token_valid.status.as_str(), token_valid.reason.as_str()),
        ("False", "TokenSecretNotFound")
    );
    assert!(
        token_valid.message.contains("late-token"),
        "{}",
        token_valid.message
    );
    assert!(telegram.calls().is_empty());

    // The wrong key first: a condition that says which key is missing.
    env.kubectl_run(
        &[
            "create",
            "secret",
            "generic",
            "late-token",
            &format!("--from-literal=bot-token={token}"),
        ],
        None,
    )
    .await?
    .ok()?;
    bot_with_reason(&env, "late", "TokenKeyNotFound", Duration::from_secs(30)).await?;
    env.kubectl_run(&["delete", "secret", "late-token"], None)
        .await?
        .ok()?;
    env.kubectl_run(
        &[
            "create",
            "secret",
            "generic",
            "late-token",
            "--from-literal=token=not-a-token",
        ],
        None,
    )
    .await?
    .ok()?;
    bot_with_reason(&env, "late", "TokenMalformed", Duration::from_secs(30)).await?;
    env.kubectl_run(&["delete", "secret", "late-token"], None)
        .await?
        .ok()?;
    env.kubectl_run(
        &[
            "create",
            "secret",
            "generic",
            "late-token",
            &format!("--from-literal=token={token}"),
        ],
        None,
    )
    .await?
    .ok()?;
    ready_bot(&env, "late", Duration::from_secs(30)).await?;
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_token_is_reported_without_a_hot_loop_and_a_new_one_recovers()
-> anyhow::Result<()> {
    let env = env_with_crd("flt-revoked").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7103, "revoked_bot");
    let controller = spawn_controller(
        &env,
        &telegram.url(),
        &["--resync-interval=2s", "--leader-elect=false"],
    )?;
    apply_bot(&env, "revoked", &token, serde_json::json!({})).await?;
    ready_bot(&env, "revoked", Duration::from_secs(30)).await?;
    telegram.revoke(&token);
    bot_with_reason(&env, "revoked", "TokenInvalid", Duration::from_secs(30)).await?;
    let before = telegram.calls().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let calls = telegram.calls().len() - before;
    // At most one call per resync interval (2 s): no hot loop.
    assert!(calls <= 7, "{calls} calls in 10 s with a revoked token");

    let new_token = telegram.replace_token(&token);
    let secret = serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "revoked-token"}, "stringData": {"token": new_token}});
    env.kubectl_run(&["apply", "-f", "-"], Some(&secret.to_string()))
        .await?
        .ok()?;
    ready_bot(&env, "revoked", Duration::from_secs(30)).await?;
    assert_no_token_leaked(&env, &[&token, &new_token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn rate_limits_are_honoured_and_server_errors_back_off() -> anyhow::Result<()> {
    let env = env_with_crd("flt-429").await?;
    let telegram = FakeTelegram::start().await?;
    let limited = telegram.add_bot(7104, "limited_bot");
    let failing = telegram.add_bot(7105, "failing_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let limit = telegram.inject(fault(
        7104,
        None,
        FaultKind::TooManyRequests { retry_after: 3 },
    ));
    let outage = telegram.inject(fault(7105, Some("setWebhook"), FaultKind::ServerError(502)));
    apply_bot(&env, "limited", &limited, serde_json::json!({})).await?;
    apply_bot(&env, "failing", &failing, serde_json::json!({})).await?;
    bot_with_reason(
        &env,
        "limited",
        "TelegramRateLimited",
        Duration::from_secs(30),
    )
    .await?;
    bot_with_reason(
        &env,
        "failing",
        "TelegramUnavailable",
        Duration::from_secs(30),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(10)).await;

    let times: Vec<_> = telegram
        .calls()
        .into_iter()
        .filter(|c| c.bot_id == Some(7104))
        .map(|c| c.at)
        .collect();
    assert!(times.len() >= 2, "{times:?}");
    for pair in times.windows(2) {
        let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
        assert!(
            gap >= Duration::from_millis(2900),
            "a call {gap:?} after a 429 with retry_after=3"
        );
    }
    let failing_calls = telegram.calls_to(7105, "setWebhook").len();
    assert!(
        (2..=8).contains(&failing_calls),
        "{failing_calls} setWebhook calls in ~12 s of 502s: backoff"
    );

    telegram.clear_fault(limit);
    telegram.clear_fault(outage);
    ready_bot(&env, "limited", Duration::from_secs(30)).await?;
    ready_bot(&env, "failing", Duration::from_secs(90)).await?;
    assert_no_token_leaked(&env, &[&limited, &failing], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn two_bots_with_one_token_conflict_and_the_first_keeps_working() -> anyhow::Result<()> {
    let env = env_with_crd("flt-conflict").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(7106, "shared_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    apply_bot(&env, "first", &token, serde_json::json!({})).await?;
    let first = ready_bot(&env, "first", Duration::from_secs(30)).await?;
    apply_bot(&env, "second", &token, serde_json::json!({})).await?;
    let second =
        bot_with_reason(&env, "second", "WebhookConflict", Duration::from_secs(30)).await?;
    let message = &second
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap()
        .message;
    assert!(
        message.contains(&format!("{}/first", env.namespace)),
        "{message}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(telegram.calls_to(7106, "setWebhook").len(), 1);
    assert_eq!(
        telegram.webhook(7106).unwrap().url,
        first.status.unwrap().webhook_url.unwrap()
    );
    ready_bot(&env, "first", Duration::from_secs(5)).await?;
    assert!(
        event_reasons(&env, "second")
            .await?
            .contains(&"Conflict".to_string())
    );
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn suspend_unregisters_and_resume_registers_the_same_secret() -> anyhow::Result<()> {
    let env = env_with_crd("flt-suspend").await?;
    let telegram = FakeTelegram::start().await?;
    telegram.set_rate_limit(false);
    let token = telegram.add_bot(7107, "pause_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    apply_bot(&env, "pause", &token, serde_json::json!({})).await?;
    let url = ready_bot(&env, "pause", Duration::from_secs(30))
        .await?
        .status
        .unwrap()
        .webhook_url
        .unwrap();
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let suspend = |on: bool| serde_json::json!({"spec": {"suspend": on}});
    bots.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(suspend(true)),
    )
    .await?;
    let paused = bot_with_reason(&env, "pause", "Suspended", Duration::from_secs(30)).await?;
    let status = paused.status.unwrap();
    assert!(status.routing.is_none() && status.webhook_url.is_none());
    assert_eq!(telegram.calls_to(7107, "deleteWebhook").len(), 1);
    assert!(telegram.webhook(7107).is_none());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    assert!(
        secrets.get_opt("pause-webhook").await?.is_some(),
        "the secret is kept"
    );

    bots.patch(
        "pause",
        &PatchParams::default(),
        &Patch::Merge(suspend(false)),
    )
    .await?;
    let resumed = eventually(Duration::from_secs(30), "resumed", || async {
        let bot = ready_bot(&env, "pause", Duration::from_secs(30)).await?;
        Ok((bot
            .status
            .as_ref()
            .and_then(|s| s.routing.as_ref())
            .is_some())
        .then_some(bot))
    })
    .await?;
    assert_eq!(
        resumed.status.unwrap().webhook_url.as_deref(),
        Some(url.as_str())
    );
    assert_eq!(telegram.webhook(7107).unwrap().url, url);
    assert_no_token_leaked(&env, &[&token], &[&controller]).await?;
    Ok(())
}

#[tokio::test]
async fn a_crash_between_secret_and_set_webhook_converges_without_a_second_rotation()
-> anyhow::Result<()> {
    let env = env_with_crd("flt-crash").await?;
    let telegram = FakeTelegram::start().await?;
    telegram.set_rate_limit(false);
    let token = telegram.add_bot(7108, "crash_bot");
    let mut controller = spawn_controller(
        &env,
        &telegram.url(),
        &["--leader-elect=false", "--telegram-timeout=30s"],
    )?;
    apply_bot(&env, "crash", &token, serde_json::json!({})).await?;
    ready_bot(&env, "crash", Duration::from_secs(30)).await?;

    // setWebhook stalls: the controller dies after writing the new pair.
    let stall = telegram.inject(fault(
        7108,
        Some("setWebhook"),
        FaultKind::Delay(Duration::from_secs(20)),
    ));
    env.kubectl_run(
        &[
            "annotate",
            "--overwrite",
            "mbot",
            "crash",
            "managedbot.dev/rotate=after-crash",
        ],
        None,
    )
    .await?
    .ok()?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let written = eventually(
        Duration::from_secs(30),
        "the new pair in the Secret",
        || async {
            let secret = secrets.get("crash-webhook").await?;
            let observed = secret
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("managedbot.dev/rotation-observed"))
                .cloned();
            Ok((observed.as_deref() == Some("after-crash")).then_some(secret))
        },
    )
    .await?;
    eventually(Duration::from_secs(10), "setWebhook in flight", || async {
        Ok((telegram.calls_to(7108, "setWebhook").len() >= 2).then_some(()))
    })
    .await
    .ok();
    controller.kill().await;
    telegram.clear_fault(stall);

    let restarted = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let pair = secret_value(&written, "webhook-secret").unwrap();
    let expected = format!("{BASE}/webhook/{pair}");
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    eventually(
        Duration::from_secs(30),
        "the Secret's pair registered",
        || async {
            let bot = bots.get("crash").await?;
            let status = bot.status.clone().unwrap_or_default();
            let observed =
                status.rotation.as_ref().and_then(|r| r.observed.as_deref()) == Some("after-crash");
            Ok((observed
                && status.webhook_url.as_deref() == Some(expected.as_str())
                && ready_reason(&bot).is_some_and(|(s, _)| s == "True"))
            .then_some(()))
        },
    )
    .await?;
    assert_eq!(
        secret_value(&secrets.get("crash-webhook").await?, "webhook-secret"),
        Some(pair)
    );
    assert_eq!(telegram.webhook(7108).unwrap().url, expected);
    let registered: BTreeSet<String> = telegram
        .calls_to(7108, "setWebhook")
        .into_iter()
        .filter_map(|c| {
            c.params
                .get("url")
                .and_then(|u| u.as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        registered.len(),
        2,
        "one pair at creation, one rotation: {registered:?}"
    );
    assert_no_token_leaked(&env, &[&token], &[&controller, &restarted]).await?;
    Ok(())
}

#[tokio::test]
async fn with_leader_election_exactly_one_replica_acts_and_the_other_takes_over()
-> anyhow::Result<()> {
    let env = env_with_crd("flt-leader").await?;
    let telegram = FakeTelegram::start().await?;
    let lease = [
        "--leader-elect=true".to_string(),
        format!("--leader-election-namespace={DEPLOY_NAMESPACE}"),
        format!("--leader-election-id=managedbot-{}", env.namespace),
        // Short enough to take over within the test, long enough that a renewal
        // slowed by the other tests' load on the API server still lands in time.
        "--lease-duration=10s".to_string(),
        "--renew-deadline=4s".to_string(),
    ];
    let lease: Vec<&str> = lease.iter().map(String::as_str).collect();
    let mut a = spawn_controller(&env, &telegram.url(), &lease)?;
    let mut b = spawn_controller(&env, &telegram.url(), &lease)?;
    let token = telegram.add_bot(7109, "leader_bot");
    apply_bot(&env, "leader", &token, serde_json::json!({})).await?;
    ready_bot(&env, "leader", Duration::from_secs(40)).await?;
    let leading = |p: &Process| p.output().contains("holding the lease");
    let (leader, _) = eventually(Duration::from_secs(10), "a leader", || async {
        Ok(match (leading(&a), leading(&b)) {
            (true, false) => Some((0, 1)),
            (false, true) => Some((1, 0)),
            _ => None,
        })
    })
    .await?;
    assert_eq!(
        telegram.calls_to(7109, "setWebhook").len(),
        1,
        "exactly one replica acted"
    );
    let (leader, standby) = if leader == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    assert!(
        !standby.output().contains("next step"),
        "the stand-by reconciled"
    );

    leader.kill().await;
    let token2 = telegram.add_bot(7110, "after_bot");
    apply_bot(&env, "after", &token2, serde_json::json!({})).await?;
    // The lease expires 10 s after the last renewal; the stand-by then acts.
    ready_bot(&env, "after", Duration::from_secs(30)).await?;
    assert!(leading(standby));
    assert_no_token_leaked(&env, &[&token, &token2], &[leader, standby]).await?;
    Ok(())
}

#[tokio::test]
async fn two_hundred_bots_applied_at_once_all_become_ready() -> anyhow::Result<()> {
    let env = env_with_crd("flt-many").await?;
    let telegram = FakeTelegram::start().await?;
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let mut items = Vec::new();
    let mut tokens = Vec::new();
    for i in 0..200 {
        let token = telegram.add_bot(80_000 + i, &format!("many_{i}_bot"));
        items.push(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("many-{i}-token")}, "stringData": {"token": token}}));
        items.push(serde_json::json!({"apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot", "metadata": {"name": format!("many-{i}")},
            "spec": {"tokenSecretRef": {"name": format!("many-{i}-token")}, "backend": {"url": "http://many.example:8080"}}}));
        tokens.push(token);
    }
    let started = std::time::Instant::now();
    env.kubectl_run(
        &["apply", "-f", "-"],
        Some(&serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()),
    )
    .await?
    .ok()?;
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    eventually(Duration::from_secs(240), "200 bots Ready", || async {
        let list = bots.list(&Default::default()).await?;
        let ready = list
            .items
            .iter()
            .filter(|b| ready_reason(b).is_some_and(|(s, _)| s == "True"))
            .count();
        Ok((ready == 200).then_some(()))
    })
    .await?;
    eprintln!(
        "FIGURE: 200 bots applied at once were all Ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for i in 0..200 {
        assert_eq!(telegram.calls_to(80_000 + i, "setWebhook").len(), 1);
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_token_leaked(&env, &tokens, &[&controller]).await?;
    Ok(())
}

/// The calls the controller made for one bot between two instants.
fn calls_between(
    telegram: &FakeTelegram,
    bot_id: i64,
    from: std::time::SystemTime,
    to: std::time::SystemTime,
) -> Vec<std::time::SystemTime> {
    telegram
        .calls()
        .into_iter()
        .filter(|c| c.bot_id == Some(bot_id) && c.at >= from && c.at < to)
        .map(|c| c.at)
        .collect()
}

#[tokio::test]
async fn permanent_telegram_faults_cost_a_bounded_number_of_calls_then_converge()
-> anyhow::Result<()> {
    const WINDOW: Duration = Duration::from_secs(30);
    let env = env_with_crd("flt-perm").await?;
    let telegram = FakeTelegram::start().await?;
    // Each bot meets one fault on every method, from its first call.
    let faults = [
        (
            7201,
            "limited",
            FaultKind::TooManyRequests { retry_after: 5 },
            "TelegramRateLimited",
        ),
        (
            7202,
            "erring",
            FaultKind::ServerError(500),
            "TelegramUnavailable",
        ),
        (
            7203,
            "gateway",
            FaultKind::ServerError(502),
            "TelegramUnavailable",
        ),
        (
            7204,
            "slow",
            FaultKind::Delay(Duration::from_secs(3)),
            "TelegramUnavailable",
        ),
    ];
    let mut tokens = Vec::new();
    let mut injected = Vec::new();
    for (id, name, kind, _) in &faults {
        let token = telegram.add_bot(*id, &format!("{name}_bot"));
        injected.push(telegram.inject(fault(*id, None, kind.clone())));
        apply_bot(&env, name, &token, serde_json::json!({})).await?;
        tokens.push(token);
    }
    // Telegram unreachable: a controller whose Bot API address refuses connections.
    let refusing = env_with_crd("flt-refused").await?;
    let closed = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let unreachable = format!("http://{closed}");
    let refused_token = telegram.add_bot(7205, "refused_bot");
    tokens.push(refused_token.clone());
    // The fake Telegram records a call when it answers: a call the client
    // gave up on is counted by the controller's own metrics instead.
    let main_metrics = free_port()?;
    let main_metrics_flag = format!("--metrics-listen=127.0.0.1:{main_metrics}");
    let controller = spawn_controller(
        &env,
        &telegram.url(),
        &[
            "--leader-elect=false",
            "--telegram-timeout=1s",
            &main_metrics_flag,
        ],
    )?;
    let metrics_port = free_port()?;
    let metrics = format!("--metrics-listen=127.0.0.1:{metrics_port}");
    let refused_controller =
        spawn_controller(&refusing, &unreachable, &["--leader-elect=false", &metrics])?;
    apply_bot(&refusing, "refused", &refused_token, serde_json::json!({})).await?;

    for (_, name, _, reason) in &faults {
        bot_with_reason(&env, name, reason, Duration::from_secs(30)).await?;
    }
    bot_with_reason(
        &refusing,
        "refused",
        "TelegramUnavailable",
        Duration::from_secs(30),
    )
    .await?;
    let http = reqwest::Client::builder().no_proxy().build()?;
    // Telegram calls a controller counted, of the lines that contain `filter`.
    let counted = |port: u16, filter: &'static str| {
        let http = http.clone();
        async move {
            let text = http
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            Ok::<_, anyhow::Error>(
                text.lines()
                    .filter(|l| {
                        l.starts_with("managedbot_telegram_calls_total{") && l.contains(filter)
                    })
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum::<f64>(),
            )
        }
    };
    let from = std::time::SystemTime::now();
    let refused_before = counted(metrics_port, "").await?;
    let timeouts_before = counted(main_metrics, "result=\"Timeout\"").await?;
    tokio::time::sleep(WINDOW).await;
    let to = std::time::SystemTime::now();
    let refused_in_window = counted(metrics_port, "").await? - refused_before;
    let timeouts_in_window = counted(main_metrics, "result=\"Timeout\"").await? - timeouts_before;

    let per_minute = |calls: f64| calls * 60.0 / WINDOW.as_secs_f64();
    for (id, name, _, _) in &faults {
        let mut calls = calls_between(&telegram, *id, from, to);
        if *name == "slow" {
            // Its calls time out before the fake answers and records them.
            assert!(calls.is_empty());
            assert!(timeouts_in_window >= 1.0, "the slow bot was never retried");
            calls = vec![from; timeouts_in_window as usize];
        }
        eprintln!(
            "FIGURE: permanent fault {name}: {} calls in {}s ({:.0}/min)",
            calls.len(),
            WINDOW.as_secs(),
            per_minute(calls.len() as f64)
        );
        // Backoff (1 s doubling, jittered) or retry_after (5 s) allow a handful.
        assert!(
            calls.len() <= 8,
            "{name}: {} calls in {}s",
            calls.len(),
            WINDOW.as_secs()
        );
        if *name == "limited" {
            for pair in calls.windows(2) {
                let gap = pair[1].duration_since(pair[0]).unwrap_or_default();
                assert!(
                    gap >= Duration::from_millis(4900),
                    "a call {gap:?} after retry_after=5"
                );
            }
        }
    }
    eprintln!(
        "FIGURE: permanent fault refused: {refused_in_window} calls in {}s ({:.0}/min)",
        WINDOW.as_secs(),
        per_minute(refused_in_window)
    );
    assert!(
        refused_in_window <= 8.0,
        "{refused_in_window} calls to a refusing Telegram"
    );

    // The faults clear: every bot converges, within its current backoff.
    let cleared = std::time::Instant::now();
    for id in injected {
        telegram.clear_fault(id);
    }
    let late_telegram = FakeTelegram::start_on(closed).await?;
    late_telegram.add_bot_with_token(&refused_token, "refused_bot")?;
    for (_, name, _, _) in &faults {
        ready_bot(&env, name, Duration::from_secs(120)).await?;
    }
    ready_bot(&refusing, "refused", Duration::from_secs(120)).await?;
    eprintln!(
        "FIGURE: permanent faults cleared: all Ready {:.0}s later",
        cleared.elapsed().as_secs_f64()
    );
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    assert_no_token_leaked(&env, &tokens, &[&controller]).await?;
    assert_no_token_leaked(&refusing, &tokens, &[&refused_controller]).await?;
    Ok(())
}
