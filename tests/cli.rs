//! The operator-user commands (`rotate`, `status`, `url`, `adopt`, and the
//! same as `kubectl managedbot`) against a real kube-apiserver with the
//! controller running, error cases and exit codes included.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use managedbot::resource::{ManagedBot, ManagedBotStatus};
use testbed::{FakeTelegram, TestEnv};

/// What a command printed and how it exited.
#[derive(Debug)]
struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `managedbot ARGS` as a user with `kubeconfig`, in the test's namespace
/// unless the arguments name one.
async fn managedbot_as(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<Ran> {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_managedbot"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .await?;
    Ok(Ran {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

async fn managedbot(env: &TestEnv, args: &[&str]) -> anyhow::Result<Ran> {
    let mut all = args.to_vec();
    let namespace = format!("--namespace={}", env.namespace);
    if args.first() != Some(&"--help") {
        all.push(&namespace);
    }
    managedbot_as(&env.shared.kubeconfig, &all).await
}

async fn status_of(env: &TestEnv, name: &str) -> anyhow::Result<ManagedBotStatus> {
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    Ok(bots.get(name).await?.status.unwrap_or_default())
}

#[tokio::test]
async fn url_status_and_rotate_of_a_ready_bot() -> anyhow::Result<()> {
    let env = env_with_crd("cli-rotate").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(9101, "cli_bot");
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    apply_bot(
        &env,
        "cli",
        &token,
        serde_json::json!({"rotation": {"gracePeriod": "10m"}}),
    )
    .await?;
    ready_bot(&env, "cli", Duration::from_secs(30)).await?;
    let first_url = status_of(&env, "cli").await?.webhook_url.unwrap();

    let url = managedbot(&env, &["url", "cli"]).await?;
    assert_eq!(
        (url.code, url.stdout.trim()),
        (0, first_url.as_str()),
        "{url:?}"
    );
    let json = managedbot(&env, &["url", "cli", "-o", "json"]).await?;
    let data: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(data["webhookUrl"], first_url.as_str());
    assert_eq!(data["namespace"], env.namespace.as_str());

    let status = managedbot(&env, &["status", "cli"]).await?;
    assert_eq!(status.code, 0, "{status:?}");
    for expected in [
        "Bot:         @cli_bot (id 9101)",
        "Ready:       True (Registered)",
        "Webhook:     https://bots.example.com/webhook/<secret>",
    ] {
        assert!(
            status.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            status.stdout
        );
    }
    let path_secret = first_url.rsplit('/').next().unwrap();
    assert!(
        !status.stdout.contains(path_secret),
        "status shows the path secret"
    );
    let as_yaml = managedbot(&env, &["get", "cli", "-o", "yaml"]).await?;
    let parsed: ManagedBotStatus = serde_yaml_ng::from_str(&as_yaml.stdout)?;
    assert_eq!(parsed.webhook_url.as_deref(), Some(first_url.as_str()));

    // A rotation: waits, then prints the new URL.
    let rotated = managedbot(&env, &["rotate", "cli"]).await?;
    assert_eq!(rotated.code, 0, "{rotated:?}");
    let second_url = rotated.stdout.trim().to_string();
    assert_ne!(second_url, first_url);
    assert_eq!(
        status_of(&env, "cli").await?.webhook_url.as_deref(),
        Some(second_url.as_str())
    );
    assert!(
        rotated.stderr.contains("rotation") && rotated.stderr.contains("requested"),
        "{}",
        rotated.stderr
    );
    let rotation = status_of(&env, "cli").await?.rotation.unwrap();
    assert!(
        rotation.previous_expires_at.is_some(),
        "an ordinary rotation keeps a grace period"
    );

    // A leak: --now leaves no previous pair, in the Secret or the status.
    let leaked = managedbot(&env, &["rotate", "cli", "--now", "-o", "json"]).await?;
    assert_eq!(leaked.code, 0, "{leaked:?}");
    let urls: serde_json::Value = serde_json::from_str(&leaked.stdout)?;
    let third_url = urls[0]["webhookUrl"].as_str().unwrap().to_string();
    assert!(third_url != second_url && third_url != first_url);
    let after_leak = status_of(&env, "cli").await?;
    assert!(after_leak.rotation.unwrap().previous_expires_at.is_none());
    assert!(after_leak.routing.unwrap().previous.is_none());
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets.get("cli-webhook").await?;
    assert!(secret_value(&secret, "previous-webhook-secret").is_none());
    assert_eq!(telegram.webhook(9101).unwrap().url, third_url);

    // Several at once: one line per bot, namespace/name and URL.
    let token2 = telegram.add_bot(9102, "cli2_bot");
    apply_bot(&env, "cli2", &token2, serde_json::json!({})).await?;
    ready_bot(&env, "cli2", Duration::from_secs(30)).await?;
    let both = managedbot(&env, &["rotate", "cli", "cli2"]).await?;
    assert_eq!(both.code, 0, "{both:?}");
    let lines: Vec<&str> = both.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", both.stdout);
    for (line, bot) in lines.iter().zip(["cli", "cli2"]) {
        let url = status_of(&env, bot).await?.webhook_url.unwrap();
        assert_eq!(*line, format!("{}/{bot}\t{url}", env.namespace));
    }
    let before_no_wait = status_of(&env, "cli").await?.webhook_url.unwrap();
    assert_ne!(before_no_wait, third_url);

    // `--no-wait` asks and returns; the rotation still lands.
    let asked = managedbot(&env, &["rotate", "--all", "--no-wait"]).await?;
    assert_eq!((asked.code, asked.stdout.as_str()), (0, ""), "{asked:?}");
    eventually(
        Duration::from_secs(30),
        "the --no-wait rotation",
        || async {
            let url = status_of(&env, "cli").await?.webhook_url;
            Ok((url.as_deref() != Some(before_no_wait.as_str())).then_some(()))
        },
    )
    .await?;
    assert_no_token_leaked(&env, &[&token, &token2], &[&controller]).await?;
    for ran in [&url, &status, &rotated, &leaked, &both, &asked] {
        for token in [&token, &token2] {
            assert!(!ran.stdout.contains(token.split_once(':').unwrap().1));
            assert!(!ran.stderr.contains(token.split_once(':').unwrap().1));
        }
    }
    Ok(())
}

#[tokio::test]
async fn errors_have_clear_messages_and_exit_codes() -> anyhow::Result<()> {
    let env = env_with_crd("cli-errors").await?;
    let telegram = FakeTelegram::start().await?;
    let _controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    // A bot that cannot become Ready: its token Secret does not exist.
    let bot = serde_json::json!({
        "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
        "metadata": {"name": "stuck"},
        "spec": {"tokenSecretRef": {"name": "missing-token"}, "backend": {"service": {"name": "s", "port": 80}}},
    });
    env.kubectl_run(&["apply", "-f", "-"], Some(&bot.to_string()))
        .await?
        .ok()?;
    bot_with_reason(
        &env,
        "stuck",
        "TokenSecretNotFound",
        Duration::from_secs(30),
    )
    .await?;

    let missing = managedbot(&env, &["url", "nope"]).await?;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains("ManagedBot nope not found in namespace"),
        "{}",
        missing.stderr
    );
    let missing = managedbot(&env, &["rotate", "stuck", "nope"]).await?;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert_eq!(
        status_of(&env, "stuck").await?.rotation,
        None,
        "a bad name among several rotates none"
    );

    let not_ready = managedbot(&env, &["url", "stuck"]).await?;
    assert_eq!(not_ready.code, 4, "{not_ready:?}");
    assert!(
        not_ready.stderr.contains("TokenSecretNotFound"),
        "{}",
        not_ready.stderr
    );
    let timed_out = managedbot(&env, &["rotate", "stuck", "--timeout=3s"]).await?;
    assert_eq!(timed_out.code, 4, "{timed_out:?}");
    assert!(
        timed_out.stderr.contains("did not land within 3s")
            && timed_out.stderr.contains("TokenSecretNotFound"),
        "{}",
        timed_out.stderr
    );
    let status = managedbot(&env, &["status", "stuck"]).await?;
    assert_eq!(status.code, 0);
    assert!(
        status
            .stdout
            .contains("Ready:       False (TokenSecretNotFound)"),
        "{}",
        status.stdout
    );

    // The router's ServiceAccount may read bots, not change them.
    let reader = impersonating(&env, "managedbot-router")?;
    let namespace = format!("--namespace={}", env.namespace);
    let forbidden = managedbot_as(&reader, &["rotate", "stuck", &namespace]).await?;
    assert_eq!(forbidden.code, 5, "{forbidden:?}");
    assert!(
        forbidden
            .stderr
            .contains("not allowed to patch ManagedBot stuck"),
        "{}",
        forbidden.stderr
    );
    let forbidden = managedbot_as(
        &reader,
        &["adopt", "x-token", "--backend-url=http://x/", &namespace],
    )
    .await?;
    assert_eq!(forbidden.code, 5, "{forbidden:?}");
    assert!(
        forbidden
            .stderr
            .contains("not allowed to get Secret x-token"),
        "{}",
        forbidden.stderr
    );

    let usage = managedbot(&env, &["rotate"]).await?;
    assert_eq!(usage.code, 2, "{usage:?}");
    let usage = managedbot(&env, &["adopt", "x-token"]).await?;
    assert_eq!(usage.code, 2, "a backend is required: {usage:?}");
    let bad = managedbot(&env, &["adopt", "x-token", "--backend-service=svc:http"]).await?;
    assert_eq!(bad.code, 1, "{bad:?}");
    assert!(
        bad.stderr.contains("\"http\" is not a port"),
        "{}",
        bad.stderr
    );
    let nowhere = managedbot_as(Path::new("/nonexistent/kubeconfig"), &["url", "x"]).await?;
    assert_eq!(nowhere.code, 1, "{nowhere:?}");
    assert!(
        nowhere.stderr.contains("no Kubernetes configuration"),
        "{}",
        nowhere.stderr
    );
    Ok(())
}

#[tokio::test]
async fn adopt_prints_manifests_then_applies_them_and_lists_the_urls() -> anyhow::Result<()> {
    let env = env_with_crd("cli-adopt").await?;
    let telegram = FakeTelegram::start().await?;
    let tokens = [
        telegram.add_bot(9201, "shop_bot"),
        telegram.add_bot(9202, "news_bot"),
    ];
    let _controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let secret = |name: &str, label: &str, token: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"app": label}},
            "stringData": {"token": token},
        })
    };
    let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        secret("shop-token", "telegram", &tokens[0]),
        secret("news-token", "telegram", &tokens[1]),
        secret("broken-token", "broken", "not-a-token-at-all"),
    ]});
    env.kubectl_run(&["apply", "-f", "-"], Some(&list.to_string()))
        .await?
        .ok()?;

    let printed = managedbot(
        &env,
        &[
            "adopt",
            "-l",
            "app=telegram",
            "--backend-service={bot}:8080",
            "--backend-path=/telegram",
        ],
    )
    .await?;
    assert_eq!(printed.code, 0, "{printed:?}");
    assert_eq!(
        printed.stdout.matches("kind: ManagedBot").count(),
        2,
        "{}",
        printed.stdout
    );
    assert!(
        printed.stdout.contains("name: shop-token") && printed.stdout.contains("name: news\n"),
        "{}",
        printed.stdout
    );
    // What it prints is what GitOps would apply: the API server accepts it.
    env.kubectl_run(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&printed.stdout),
    )
    .await?
    .ok()?;

    let broken = managedbot(
        &env,
        &[
            "adopt",
            "broken-token",
            "--backend-url=http://backend.example/",
        ],
    )
    .await?;
    assert_eq!(broken.code, 1, "{broken:?}");
    assert!(
        broken
            .stderr
            .contains("Secret broken-token: its \"token\" is not a bot token"),
        "{}",
        broken.stderr
    );
    assert!(broken.stdout.is_empty());
    let none = managedbot(
        &env,
        &["adopt", "-l", "app=nothing", "--backend-url=http://x/"],
    )
    .await?;
    assert_eq!(none.code, 3, "{none:?}");

    let applied = managedbot(
        &env,
        &[
            "adopt",
            "-l",
            "app=telegram",
            "--backend-service={bot}:8080",
            "--apply",
        ],
    )
    .await?;
    assert_eq!(applied.code, 0, "{applied:?}");
    for (bot, id) in [("shop", 9201), ("news", 9202)] {
        let url = status_of(&env, bot).await?.webhook_url.unwrap();
        assert!(
            applied.stdout.contains(&format!("{bot:<4}  {url}")),
            "{}",
            applied.stdout
        );
        assert_eq!(telegram.webhook(id).unwrap().url, url);
    }
    let again = managedbot(
        &env,
        &[
            "adopt",
            "-l",
            "app=telegram",
            "--backend-service={bot}:8080",
        ],
    )
    .await?;
    assert_eq!((again.code, again.stdout.as_str()), (0, ""), "{again:?}");
    assert!(
        again
            .stderr
            .contains("skipping Secret shop-token: ManagedBot shop already uses it"),
        "{}",
        again.stderr
    );
    for ran in [&printed, &broken, &applied, &again] {
        for token in &tokens {
            assert!(!ran.stdout.contains(token.as_str()) && !ran.stderr.contains(token.as_str()));
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_same_binary_is_the_kubectl_plugin() -> anyhow::Result<()> {
    let env = env_with_crd("cli-plugin").await?;
    let plugin = Path::new(env!("CARGO_BIN_EXE_kubectl-managedbot"));
    let path = format!(
        "{}:{}",
        plugin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // kubectl finds a plugin only when its name comes before any flag.
    let kubectl = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env.shared.bin_dir.join("kubectl"));
        command
            .env("KUBECONFIG", &env.shared.kubeconfig)
            .env("PATH", &path)
            .args(args);
        command
    };
    let output = kubectl(&["plugin", "list"]).output().await?;
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("kubectl-managedbot"),
        "{output:?}"
    );
    let namespace = format!("--namespace={}", env.namespace);
    let output = kubectl(&["managedbot", "url", "nope", &namespace])
        .output()
        .await?;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "ManagedBot nope not found in namespace {}",
            env.namespace
        )),
        "{stderr}"
    );
    let help = kubectl(&["managedbot", "--help"]).output().await?;
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("Usage: kubectl managedbot"),
        "{help:?}"
    );
    Ok(())
}
