//! The ManagedBot CRD against a real kube-apiserver: it installs, the
//! examples are accepted, bad manifests are refused with a message that names
//! the field, and kubectl shows the docs and the printer columns.

mod common;

use std::time::{Duration, Instant};

use common::{env_with_crd, repo_root};

#[test]
fn committed_crd_is_what_the_binary_prints() {
    let committed = std::fs::read_to_string(repo_root().join("crds/managedbot.yaml")).unwrap();
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_managedbot"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert!(
        committed == String::from_utf8(printed.stdout).unwrap(),
        "crds/managedbot.yaml is stale: run `make crd`"
    );
}

#[test]
fn committed_reference_is_what_the_binary_prints() {
    let committed = std::fs::read_to_string(repo_root().join("docs/reference.md")).unwrap();
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_managedbot"))
        .args(["crd", "--reference"])
        .output()
        .unwrap();
    assert!(printed.status.success());
    assert!(
        committed == String::from_utf8(printed.stdout).unwrap(),
        "docs/reference.md is stale: run `make crd`"
    );
}

#[tokio::test]
async fn crd_is_established() -> anyhow::Result<()> {
    let env = env_with_crd("crd-established").await?;
    let out = env
        .kubectl_run(
            &[
                "get",
                "crd",
                "managedbots.managedbot.dev",
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
            ],
            None,
        )
        .await?
        .ok()?;
    assert_eq!(out, "True");
    Ok(())
}

#[tokio::test]
async fn every_example_is_accepted() -> anyhow::Result<()> {
    let env = env_with_crd("crd-examples").await?;
    let mut examples: Vec<_> = std::fs::read_dir(repo_root().join("examples"))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    examples.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
    examples.sort();
    assert!(
        examples.len() >= 4,
        "examples/ holds {} manifests",
        examples.len()
    );
    for example in &examples {
        let path = example.to_str().unwrap();
        env.kubectl_run(&["apply", "--dry-run=server", "-f", path], None)
            .await?
            .ok()?;
        let applied = env.kubectl_run(&["apply", "-f", path], None).await?.ok()?;
        assert!(
            applied.contains("managedbot.managedbot.dev/"),
            "{path}: {applied}"
        );
    }
    let names = env
        .kubectl_run(
            &["get", "mbot", "-o", "jsonpath={.items[*].metadata.name}"],
            None,
        )
        .await?
        .ok()?;
    let mut names: Vec<&str> = names.split_whitespace().collect();
    names.sort();
    assert_eq!(
        names,
        ["echo-bot", "seasonal-bot", "shop-bot", "support-bot"]
    );
    Ok(())
}

/// A valid bot whose spec the table below breaks one field at a time.
const VALID: &str = r#"{
  "apiVersion": "managedbot.dev/v1alpha1",
  "kind": "ManagedBot",
  "metadata": {"name": "bad-bot"},
  "spec": {
    "tokenSecretRef": {"name": "bad-bot-token"},
    "webhook": {"baseUrl": "https://bots.example.com", "maxConnections": 40, "allowedUpdates": ["message"]},
    "backend": {"service": {"name": "bad-bot", "port": 8080}},
    "rotation": {"interval": "720h", "gracePeriod": "5m"}
  }
}"#;

struct Invalid {
    what: &'static str,
    /// JSON pointer into the valid manifest, and the value to put there
    /// (`null` removes the field).
    pointer: &'static str,
    value: serde_json::Value,
    /// What the API server's refusal must say: the field path first.
    expect: &'static [&'static str],
}

fn invalid_manifests() -> Vec<Invalid> {
    use serde_json::json;
    let case = |what, pointer, value, expect| Invalid {
        what,
        pointer,
        value,
        expect,
    };
    vec![
        case(
            "plain http",
            "/spec/webhook/baseUrl",
            json!("http://bots.example.com"),
            &["spec.webhook.baseUrl", "must be an https:// URL"],
        ),
        case(
            "port 8080",
            "/spec/webhook/baseUrl",
            json!("https://bots.example.com:8080"),
            &["spec.webhook.baseUrl", "only to ports 443, 80, 88 and 8443"],
        ),
        case(
            "not a URL",
            "/spec/webhook/baseUrl",
            json!("bots.example.com"),
            &["spec.webhook.baseUrl", "must be an https:// URL"],
        ),
        case(
            "query in baseUrl",
            "/spec/webhook/baseUrl",
            json!("https://bots.example.com/?a=b"),
            &["spec.webhook.baseUrl", "must not carry a query"],
        ),
        case(
            "maxConnections 0",
            "/spec/webhook/maxConnections",
            json!(0),
            &["spec.webhook.maxConnections", "greater than or equal to 1"],
        ),
        case(
            "maxConnections 101",
            "/spec/webhook/maxConnections",
            json!(101),
            &["spec.webhook.maxConnections", "less than or equal to 100"],
        ),
        case(
            "unknown update type",
            "/spec/webhook/allowedUpdates",
            json!(["message", "messages"]),
            &[
                "spec.webhook.allowedUpdates[1]",
                "Unsupported value: \"messages\"",
            ],
        ),
        case(
            "duplicate update type",
            "/spec/webhook/allowedUpdates",
            json!(["message", "message"]),
            &["spec.webhook.allowedUpdates[1]", "Duplicate value"],
        ),
        case(
            "both backends",
            "/spec/backend",
            json!({"service": {"name": "bad-bot", "port": 8080}, "url": "http://bad-bot:8080"}),
            &[
                "spec.backend",
                "exactly one of backend.service or backend.url",
            ],
        ),
        case(
            "empty backend",
            "/spec/backend",
            json!({}),
            &[
                "spec.backend",
                "exactly one of backend.service or backend.url",
            ],
        ),
        case(
            "no backend",
            "/spec/backend",
            json!(null),
            &["spec.backend", "Required value"],
        ),
        case(
            "backend url not http",
            "/spec/backend",
            json!({"url": "ftp://bad-bot"}),
            &["spec.backend.url", "must be an http:// or https:// URL"],
        ),
        case(
            "service port 0",
            "/spec/backend/service/port",
            json!(0),
            &["spec.backend.service.port", "greater than or equal to 1"],
        ),
        case(
            "service name not a DNS label",
            "/spec/backend/service/name",
            json!("Bad_Bot"),
            &["spec.backend.service.name", "should match"],
        ),
        case(
            "backend path without slash",
            "/spec/backend/path",
            json!("telegram"),
            &["spec.backend.path", "should match"],
        ),
        case(
            "no tokenSecretRef",
            "/spec/tokenSecretRef",
            json!(null),
            &["spec.tokenSecretRef", "Required value"],
        ),
        case(
            "token Secret name",
            "/spec/tokenSecretRef/name",
            json!("Bad Name"),
            &["spec.tokenSecretRef.name", "should match"],
        ),
        case(
            "token key with a slash",
            "/spec/tokenSecretRef/key",
            json!("a/b"),
            &["spec.tokenSecretRef.key", "should match"],
        ),
        case(
            "duration in words",
            "/spec/rotation/gracePeriod",
            json!("5 minutes"),
            &["spec.rotation.gracePeriod", "should match"],
        ),
        case(
            "grace over a day",
            "/spec/rotation/gracePeriod",
            json!("25h"),
            &["spec.rotation.gracePeriod", "must be at most 24h"],
        ),
        case(
            "interval under an hour",
            "/spec/rotation/interval",
            json!("10m"),
            &["spec.rotation.interval", "must be at least 1h"],
        ),
        case(
            "grace not shorter than interval",
            "/spec/rotation",
            json!({"interval": "2h", "gracePeriod": "3h"}),
            &["spec.rotation", "gracePeriod must be shorter than interval"],
        ),
        case(
            "fragment in baseUrl",
            "/spec/webhook/baseUrl",
            json!("https://bots.example.com/#hook"),
            &[
                "spec.webhook.baseUrl",
                "must not carry a query or a fragment",
            ],
        ),
        case(
            "baseUrl without a host",
            "/spec/webhook/baseUrl",
            json!("https://:443/hook"),
            &["spec.webhook.baseUrl"],
        ),
        case(
            "baseUrl too long",
            "/spec/webhook/baseUrl",
            json!(format!("https://bots.example.com/{}", "a".repeat(600))),
            &["spec.webhook.baseUrl", "Too long"],
        ),
        case(
            "maxConnections as text",
            "/spec/webhook/maxConnections",
            json!("forty"),
            &["spec.webhook.maxConnections", "integer"],
        ),
        case(
            "dropPendingUpdates as text",
            "/spec/webhook/dropPendingUpdates",
            json!("yes"),
            &["spec.webhook.dropPendingUpdates", "boolean"],
        ),
        case(
            "suspend as text",
            "/spec/suspend",
            json!("please"),
            &["spec.suspend", "boolean"],
        ),
        case(
            "too many update types",
            "/spec/webhook/allowedUpdates",
            json!(vec!["message"; 65]),
            &["spec.webhook.allowedUpdates", "must have at most 64 items"],
        ),
        case(
            "backend url without a host",
            "/spec/backend/url",
            json!("http:///hooks"),
            &[
                "spec.backend.url",
                "must be an http:// or https:// URL with a host",
            ],
        ),
        case(
            "service port 65536",
            "/spec/backend/service/port",
            json!(65536),
            &["spec.backend.service.port", "less than or equal to 65535"],
        ),
        case(
            "service without a name",
            "/spec/backend/service/name",
            json!(""),
            &["spec.backend.service.name"],
        ),
        case(
            "backend path with a query",
            "/spec/backend/path",
            json!("/telegram?x=1"),
            &["spec.backend.path", "should match"],
        ),
        case(
            "token Secret without a name",
            "/spec/tokenSecretRef/name",
            json!(""),
            &["spec.tokenSecretRef.name"],
        ),
        case(
            "empty token key",
            "/spec/tokenSecretRef/key",
            json!(""),
            &["spec.tokenSecretRef.key"],
        ),
        case(
            "negative grace period",
            "/spec/rotation/gracePeriod",
            json!("-5m"),
            &["spec.rotation.gracePeriod", "should match"],
        ),
        case(
            "misspelled field",
            "/spec/webhok",
            json!({"baseUrl": "https://bots.example.com"}),
            &["spec.webhok", "unknown field"],
        ),
        case(
            "bot name not a DNS name",
            "/metadata/name",
            json!("Support_Bot"),
            &["metadata.name", "Invalid value"],
        ),
    ]
}

fn apply_patch(manifest: &mut serde_json::Value, pointer: &str, value: serde_json::Value) {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = manifest
        .pointer_mut(parent)
        .unwrap()
        .as_object_mut()
        .unwrap();
    if value.is_null() {
        parent.remove(key);
    } else {
        parent.insert(key.to_string(), value);
    }
}

#[tokio::test]
async fn invalid_manifests_are_refused_naming_the_field() -> anyhow::Result<()> {
    let env = env_with_crd("crd-invalid").await?;
    let valid: serde_json::Value = serde_json::from_str(VALID)?;
    env.kubectl_run(&["apply", "--dry-run=server", "-f", "-"], Some(VALID))
        .await?
        .ok()?;

    let table = invalid_manifests();
    assert!(table.len() >= 10);
    let mut failures = Vec::new();
    for case in table {
        let mut manifest = valid.clone();
        apply_patch(&mut manifest, case.pointer, case.value);
        let out = env
            .kubectl_run(
                &["apply", "--dry-run=server", "-f", "-"],
                Some(&manifest.to_string()),
            )
            .await?;
        let missing: Vec<_> = case
            .expect
            .iter()
            .filter(|e| !out.stderr.contains(**e))
            .collect();
        if out.success || !missing.is_empty() {
            failures.push(format!(
                "{}: accepted={} missing {missing:?} in: {}",
                case.what,
                out.success,
                out.stderr.trim()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_shows_the_field_docs() -> anyhow::Result<()> {
    let env = env_with_crd("crd-explain").await?;
    // The OpenAPI document catches up with a new CRD a moment after it is Established.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env
            .kubectl_run(&["explain", "managedbot.spec"], None)
            .await?;
        if out.success {
            for expected in [
                "tokenSecretRef",
                "holds the bot token from",
                "backend",
                "exactly one of `service` or `url`",
                "suspend",
                "rotation",
            ] {
                assert!(
                    out.stdout.contains(expected),
                    "missing {expected:?} in:\n{}",
                    out.stdout
                );
            }
            let webhook = env
                .kubectl_run(&["explain", "managedbot.spec.webhook.baseUrl"], None)
                .await?
                .ok()?;
            assert!(webhook.contains("ports 443, 80, 88 and 8443"), "{webhook}");
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "kubectl explain kept failing: {}",
            out.stderr
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() -> anyhow::Result<()> {
    let env = env_with_crd("crd-columns").await?;
    let example = repo_root().join("examples/minimal.yaml");
    env.kubectl_run(&["apply", "-f", example.to_str().unwrap()], None)
        .await?
        .ok()?;
    let out = env.kubectl_run(&["get", "mbot"], None).await?.ok()?;
    let header: Vec<&str> = out
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "BOT", "READY", "REASON", "PENDING", "AGE"],
        "{out}"
    );
    assert!(out.contains("echo-bot"), "{out}");
    let wide = env
        .kubectl_run(&["get", "managedbots.managedbot.dev", "-o", "wide"], None)
        .await?
        .ok()?;
    assert!(
        wide.lines()
            .next()
            .unwrap_or_default()
            .contains("SUSPENDED"),
        "{wide}"
    );
    Ok(())
}
