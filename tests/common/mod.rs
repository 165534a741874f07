//! What the integration tests of this crate share: the CRD installed once on
//! the shared control plane of the test process.

#![allow(dead_code)]

use std::{path::Path, sync::OnceLock};

use anyhow::{Context, bail};
use testbed::TestEnv;

/// The repository's root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh namespace on the shared control plane with deploy/ applied (the
/// committed CRD Established, the ServiceAccounts and their RBAC).
pub async fn env_with_crd(prefix: &str) -> anyhow::Result<TestEnv> {
    let env = testbed::test_env(prefix).await?;
    let kubectl = env.shared.bin_dir.join("kubectl");
    let kubeconfig = env.shared.kubeconfig.clone();
    tokio::task::spawn_blocking(move || install_crd(&kubectl, &kubeconfig)).await??;
    Ok(env)
}

fn install_crd(kubectl: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let run = |args: &[&str]| -> anyhow::Result<()> {
                let output = std::process::Command::new(kubectl)
                    .env("KUBECONFIG", kubeconfig)
                    .args(args)
                    .output()
                    .context("running kubectl")?;
                if !output.status.success() {
                    bail!(
                        "kubectl {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                Ok(())
            };
            let path = |p: &str| {
                repo_root()
                    .join(p)
                    .to_str()
                    .expect("a UTF-8 path")
                    .to_string()
            };
            // Exactly what a cluster admin applies: the CRD, the namespace,
            // the ServiceAccounts and RBAC the processes under test act as, and
            // the workloads (which no kubelet here runs).
            run(&["apply", "--server-side", "-k", &path("deploy")])
                .and_then(|()| {
                    run(&[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        "crd/managedbots.managedbot.dev",
                    ])
                })
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

use std::{
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use managedbot::resource::ManagedBot;

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last state seen.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await? {
            return Ok(value);
        }
        if Instant::now() > deadline {
            bail!("timed out after {}s waiting for {what}", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `managedbot` process under test; killed when dropped. Its output goes
/// to a log file that the token checks read.
pub struct Process {
    pub child: tokio::process::Child,
    pub log: PathBuf,
}

impl Process {
    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `managedbot controller` for the test's namespace against `telegram`.
pub fn spawn_controller(
    env: &TestEnv,
    telegram_url: &str,
    extra: &[&str],
) -> anyhow::Result<Process> {
    let mut args = vec![
        format!("--namespace={}", env.namespace),
        format!("--telegram-api-url={telegram_url}"),
        "--public-base-url=https://bots.example.com".into(),
        "--metrics-listen=127.0.0.1:0".into(),
        "--telegram-timeout=3s".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    spawn(
        env,
        "controller",
        &args,
        &impersonating(env, "managedbot-controller")?,
    )
}

/// A `managedbot router` process and where it listens.
pub struct RouterProcess {
    pub process: Process,
    /// Where deliveries go.
    pub addr: std::net::SocketAddr,
    /// Where /metrics, /healthz and /readyz are.
    pub metrics_addr: std::net::SocketAddr,
}

impl RouterProcess {
    /// `http://{addr}/webhook/{secret}`.
    pub fn webhook_url(&self, secret: &str) -> String {
        format!("http://{}/webhook/{secret}", self.addr)
    }
}

/// Starts `managedbot router` for the test's namespace, with Services
/// resolved to loopback (`backend.service.port` is a local port), as the
/// router's ServiceAccount; returns once it reports ready.
pub async fn spawn_router(env: &TestEnv, extra: &[&str]) -> anyhow::Result<RouterProcess> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let metrics_addr = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut args = vec![
        format!("--namespace={}", env.namespace),
        format!("--listen={addr}"),
        format!("--metrics-listen={metrics_addr}"),
        "--service-resolver=http://127.0.0.1:{port}".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    let kubeconfig = impersonating(env, "managedbot-router")?;
    router_with(env, &args, &kubeconfig, addr, metrics_addr).await
}

/// Starts `managedbot router ARGS` with `kubeconfig`, listening on `addr`
/// and `metrics_addr` as ARGS say; returns once it reports ready.
pub async fn router_with(
    env: &TestEnv,
    args: &[String],
    kubeconfig: &Path,
    addr: std::net::SocketAddr,
    metrics_addr: std::net::SocketAddr,
) -> anyhow::Result<RouterProcess> {
    let mut process = spawn(env, "router", args, kubeconfig)?;
    let readyz = format!("http://{metrics_addr}/readyz");
    let http = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(&readyz).send().await
            && response.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            bail!("the router exited with {status}:\n{}", process.output());
        }
        if Instant::now() > deadline {
            process.kill().await;
            bail!("the router was not ready after 30s:\n{}", process.output());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(RouterProcess {
        process,
        addr,
        metrics_addr,
    })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `managedbot {subcommand} {args}` with `kubeconfig`.
pub fn spawn(
    env: &TestEnv,
    subcommand: &str,
    args: &[String],
    kubeconfig: &Path,
) -> anyhow::Result<Process> {
    // Kept after the run (target/tmp/logs), for reading what a failed test's process did.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
    std::fs::create_dir_all(&dir)?;
    let log = dir.join(format!(
        "{subcommand}-{}-{}.log",
        env.namespace,
        rand_suffix()
    ));
    let file = std::fs::File::create(&log)?;
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_managedbot"));
    testbed::controlplane::die_with_parent(command.as_std_mut());
    let child = command
        .arg(subcommand)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("MANAGEDBOT_TEST_RUST_LOG").unwrap_or("info,managedbot=debug".into()),
        )
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .kill_on_drop(true)
        .spawn()?;
    Ok(Process { child, log })
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A token Secret and a bot that forwards to a Service, applied with kubectl
/// as a user would.
pub async fn apply_bot(
    env: &TestEnv,
    name: &str,
    token: &str,
    spec_extra: serde_json::Value,
) -> anyhow::Result<()> {
    let mut spec = serde_json::json!({
        "tokenSecretRef": {"name": format!("{name}-token")},
        "backend": {"service": {"name": name, "port": 8080}},
    });
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), spec_extra.as_object()) {
        for (k, v) in extra {
            spec.insert(k.clone(), v.clone());
        }
    }
    let manifests = serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": format!("{name}-token")}, "stringData": {"token": token}},
            {"apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot", "metadata": {"name": name}, "spec": spec},
        ]
    });
    env.kubectl_run(&["apply", "-f", "-"], Some(&manifests.to_string()))
        .await?
        .ok()?;
    Ok(())
}

/// The bot once its Ready condition is True.
pub async fn ready_bot(env: &TestEnv, name: &str, timeout: Duration) -> anyhow::Result<ManagedBot> {
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    eventually(timeout, &format!("{name} Ready"), || async {
        let bot = bots.get(name).await?;
        Ok(ready_reason(&bot)
            .filter(|(status, _)| status == "True")
            .map(|_| bot))
    })
    .await
}

/// The bot once its Ready condition has `reason`.
pub async fn bot_with_reason(
    env: &TestEnv,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> anyhow::Result<ManagedBot> {
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    eventually(
        timeout,
        &format!("{name} with Ready reason {reason}"),
        || async {
            let bot = bots.get(name).await?;
            Ok(ready_reason(&bot).filter(|(_, r)| r == reason).map(|_| bot))
        },
    )
    .await
}

/// (status, reason) of the Ready condition.
pub fn ready_reason(bot: &ManagedBot) -> Option<(String, String)> {
    bot.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A data key of a Secret, as text.
pub fn secret_value(secret: &Secret, key: &str) -> Option<String> {
    secret
        .data
        .as_ref()?
        .get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// The webhook pair (path secret, secret token) the bot's Secret holds now.
pub async fn webhook_pair(env: &TestEnv, bot: &str) -> anyhow::Result<(String, String)> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = secrets.get(&format!("{bot}-webhook")).await?;
    Ok((
        secret_value(&secret, "webhook-secret").unwrap_or_default(),
        secret_value(&secret, "secret-token").unwrap_or_default(),
    ))
}

/// The reasons of the Events about an object.
pub async fn event_reasons(env: &TestEnv, name: &str) -> anyhow::Result<Vec<String>> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.namespace);
    let list = events.list(&Default::default()).await?;
    Ok(list
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect())
}

/// Everything the test can see that a token must never be in: the process
/// logs, Events, and the bots' status.
pub async fn assert_no_token_leaked(
    env: &TestEnv,
    tokens: &[&str],
    processes: &[&Process],
) -> anyhow::Result<()> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.namespace);
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut seen = serde_json::to_string(&events.list(&Default::default()).await?.items)?;
    seen.push_str(&serde_json::to_string(
        &bots.list(&Default::default()).await?.items,
    )?);
    for process in processes {
        seen.push_str(&process.output());
    }
    assert!(!seen.is_empty());
    for token in tokens {
        let secret_part = token.split_once(':').map_or(*token, |(_, s)| s);
        assert!(
            !seen.contains(secret_part),
            "a bot token appears in logs, Events or status"
        );
    }
    Ok(())
}

/// Like [`assert_no_token_leaked`], for webhook secrets too: a path secret
/// may appear in `status.webhookUrl` (a ManagedBot reader may see the URL),
/// and nowhere else that the test can see.
pub async fn assert_no_secret_leaked(
    env: &TestEnv,
    secrets: &[&str],
    processes: &[&Process],
) -> anyhow::Result<()> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(env.client.clone(), &env.namespace);
    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut listed = bots.list(&Default::default()).await?.items;
    for bot in &mut listed {
        if let Some(status) = bot.status.as_mut() {
            status.webhook_url = None;
        }
    }
    let mut seen = serde_json::to_string(&events.list(&Default::default()).await?.items)?;
    seen.push_str(&serde_json::to_string(&listed)?);
    for process in processes {
        seen.push_str(&process.output());
    }
    for (index, secret) in secrets.iter().enumerate() {
        let secret_part = secret.split_once(':').map_or(*secret, |(_, s)| s);
        assert!(
            secret_part.len() >= 16,
            "secret {index} is too short to search for"
        );
        assert!(
            !seen.contains(secret_part),
            "secret {index} appears in logs, Events or status"
        );
    }
    Ok(())
}

/// The namespace of deploy/, where the ServiceAccounts and the leader Lease live.
pub const DEPLOY_NAMESPACE: &str = "managedbot";

/// A kubeconfig that acts as a ServiceAccount of deploy/, so that a process
/// under test has exactly the rights deploy/ grants it.
pub fn impersonating(env: &TestEnv, service_account: &str) -> anyhow::Result<PathBuf> {
    impersonating_in(env, DEPLOY_NAMESPACE, service_account)
}

/// A kubeconfig that acts as the ServiceAccount `namespace/service_account`.
pub fn impersonating_in(
    env: &TestEnv,
    namespace: &str,
    service_account: &str,
) -> anyhow::Result<PathBuf> {
    let path = env
        .shared
        .dir
        .join(format!("{namespace}-{service_account}.kubeconfig"));
    if !path.exists() {
        let mut kubeconfig: serde_json::Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&env.shared.kubeconfig)?)?;
        let user = kubeconfig
            .pointer_mut("/users/0/user")
            .and_then(|u| u.as_object_mut())
            .context("the admin kubeconfig has no user")?;
        user.insert(
            "as".into(),
            format!("system:serviceaccount:{namespace}:{service_account}").into(),
        );
        user.insert(
            "as-groups".into(),
            serde_json::json!([
                "system:serviceaccounts",
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated"
            ]),
        );
        let partial = path.with_extension(format!("partial-{}", rand_suffix()));
        std::fs::write(&partial, serde_yaml_ng::to_string(&kubeconfig)?)?;
        std::fs::rename(partial, &path)?;
    }
    Ok(path)
}
