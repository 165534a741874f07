//! deploy/ against the real API server: every object validated, the
//! restricted Pod Security profile met, and the namespace-scoped overlay
//! both free of cluster-scoped objects and enough to run managedbot in one
//! team's namespace.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use testbed::{FakeTelegram, TestEnv, backend::Backend};

fn repo_path(path: &str) -> String {
    repo_root().join(path).display().to_string()
}

#[tokio::test]
async fn deploy_passes_a_server_dry_run_within_the_restricted_profile() -> anyhow::Result<()> {
    let env = env_with_crd("deploy-dry").await?;
    let dry = cluster_kubectl(
        &env,
        &[
            "apply",
            "--server-side",
            "-k",
            &repo_path("deploy"),
            "--dry-run=server",
        ],
        None,
    )
    .await?;
    assert!(dry.success, "{}", dry.stderr);
    assert!(!dry.stderr.contains("Warning"), "{}", dry.stderr);
    for kind in [
        "namespace/managedbot",
        "customresourcedefinition.apiextensions.k8s.io/managedbots.managedbot.dev",
        "clusterrole.rbac.authorization.k8s.io/managedbot-controller",
        "clusterrole.rbac.authorization.k8s.io/managedbot-router",
        "deployment.apps/managedbot-controller",
        "deployment.apps/managedbot-router",
        "service/managedbot-router",
        "poddisruptionbudget.policy/managedbot-router",
        "networkpolicy.networking.k8s.io/managedbot-router",
        "role.rbac.authorization.k8s.io/managedbot-controller-leader-election",
    ] {
        assert!(
            dry.stdout.contains(kind),
            "{kind} missing from\n{}",
            dry.stdout
        );
    }
    let ingress = cluster_kubectl(
        &env,
        &[
            "apply",
            "-f",
            &repo_path("deploy/ingress.yaml"),
            "--dry-run=server",
        ],
        None,
    )
    .await?;
    assert!(ingress.success, "{}", ingress.stderr);

    // The check above can fail: a pod template outside the profile is named.
    let privileged = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "privileged", "namespace": DEPLOY_NAMESPACE},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]},
        }},
    });
    let warned = cluster_kubectl(
        &env,
        &["apply", "-f", "-", "--dry-run=server"],
        Some(&privileged.to_string()),
    )
    .await?;
    assert!(
        warned
            .stderr
            .contains("would violate PodSecurity \"restricted"),
        "{}",
        warned.stderr
    );
    Ok(())
}

/// kubectl as the admin, in no namespace of its own: objects say theirs.
async fn cluster_kubectl(
    env: &TestEnv,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<testbed::shared::KubectlOutput> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(env.shared.bin_dir.join("kubectl"))
        .env("KUBECONFIG", &env.shared.kubeconfig)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut pipe = child.stdin.take().expect("piped");
    pipe.write_all(stdin.unwrap_or_default().as_bytes()).await?;
    drop(pipe);
    let output = child.wait_with_output().await?;
    Ok(testbed::shared::KubectlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// The namespaced overlay rendered for `namespace`, as a user would: an
/// overlay of theirs that sets the namespace.
async fn render_namespaced(
    env: &TestEnv,
    namespace: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = tempfile_dir()?;
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {namespace}\nresources:\n  - {}\n",
            relative(&dir, &repo_root().join("deploy/namespaced")).display()
        ),
    )?;
    let rendered = env
        .kubectl_run(&["kustomize", &dir.display().to_string()], None)
        .await?
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let mut objects = Vec::new();
    for document in serde_yaml_ng::Deserializer::from_str(&rendered) {
        let object: serde_json::Value = serde::Deserialize::deserialize(document)?;
        if !object.is_null() {
            objects.push(object);
        }
    }
    Ok(objects)
}

/// `to` as seen from the directory `from` (kustomize takes no absolute path).
fn relative(from: &std::path::Path, to: &std::path::Path) -> std::path::PathBuf {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut path = std::path::PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    to[common..].iter().for_each(|c| path.push(c));
    path
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "overlay-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

#[tokio::test]
async fn the_namespaced_overlay_runs_managedbot_in_one_namespace_without_cluster_rights()
-> anyhow::Result<()> {
    let env = env_with_crd("deploy-team").await?;
    let team = env.namespace.clone();
    let objects = render_namespaced(&env, &team).await?;
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for cluster_scoped in [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Namespace",
    ] {
        assert!(
            !kinds.contains(&cluster_scoped),
            "{cluster_scoped} in the namespaced overlay: {kinds:?}"
        );
    }
    for expected in [
        "Role",
        "RoleBinding",
        "ServiceAccount",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&expected), "{expected} missing: {kinds:?}");
    }
    for object in &objects {
        assert_eq!(object["metadata"]["namespace"], team.as_str(), "{object}");
        for subject in object["subjects"].as_array().into_iter().flatten() {
            assert_eq!(subject["namespace"], team.as_str(), "{object}");
        }
        if object["kind"] == "Deployment" {
            let args = &object["spec"]["template"]["spec"]["containers"][0]["args"];
            assert!(
                args.as_array()
                    .unwrap()
                    .iter()
                    .any(|a| a == "--namespace=$(POD_NAMESPACE)"),
                "{args}"
            );
        }
    }
    let rendered =
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects}).to_string();
    env.kubectl_run(&["apply", "--server-side", "-f", "-"], Some(&rendered))
        .await?
        .ok()?;

    // The team's controller and router, with exactly the overlay's rights.
    let controller_kubeconfig = impersonating_in(&env, &team, "managedbot-controller")?;
    let router_kubeconfig = impersonating_in(&env, &team, "managedbot-router")?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(9301, "team_bot");
    let backend = Backend::start().await?;
    let controller = spawn(
        &env,
        "controller",
        &[
            format!("--namespace={team}"),
            format!("--leader-election-namespace={team}"),
            format!("--telegram-api-url={}", telegram.url()),
            "--public-base-url=https://bots.example.com".into(),
            "--metrics-listen=127.0.0.1:0".into(),
        ],
        &controller_kubeconfig,
    )?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let router = router_with(
        &env,
        &[
            format!("--namespace={team}"),
            format!("--listen={addr}"),
            format!("--metrics-listen={metrics_addr}"),
            "--service-resolver=http://127.0.0.1:{port}".into(),
        ],
        &router_kubeconfig,
        addr,
        metrics_addr,
    )
    .await?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "team",
        &token,
        serde_json::json!({"backend": {"service": {"name": "team", "port": port}}}),
    )
    .await?;
    ready_bot(&env, "team", Duration::from_secs(30)).await?;
    let webhook = telegram.webhook(9301).expect("registered");
    let url = webhook
        .url
        .replace("https://bots.example.com", &format!("http://{addr}"));
    let http = reqwest::Client::builder().no_proxy().build()?;
    let status = eventually(
        Duration::from_secs(5),
        "a delivery through the team's router",
        || async {
            let response = http
                .post(&url)
                .header(
                    "x-telegram-bot-api-secret-token",
                    webhook.secret_token.clone().unwrap_or_default(),
                )
                .body(r#"{"update_id":1}"#)
                .send()
                .await?;
            Ok(response.status().is_success().then_some(response.status()))
        },
    )
    .await?;
    assert_eq!(status, reqwest::StatusCode::OK);
    assert_eq!(backend.received().len(), 1);

    // Outside its namespace, the team's controller reads no Secret; the router none at all.
    let forbidden = |result: Result<_, kube::Error>| matches!(result, Err(kube::Error::Api(s)) if s.code == 403);
    let controller_client = testbed::shared::client_for(&controller_kubeconfig).await?;
    let elsewhere: Api<Secret> = Api::namespaced(controller_client.clone(), "default");
    assert!(forbidden(
        elsewhere.list(&ListParams::default()).await.map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::all(controller_client)
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    let router_client = testbed::shared::client_for(&router_kubeconfig).await?;
    let own: Api<Secret> = Api::namespaced(router_client, &team);
    assert!(forbidden(own.get("team-token").await.map(|_| ())));
    assert_no_token_leaked(&env, &[&token], &[&controller, &router.process]).await?;
    Ok(())
}
