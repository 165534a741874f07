//! The API server and etcd restarted under the controller and the router
//! while 200 bots are created and rotated: both recover their watches without
//! restarting, and every bot ends Ready with exactly the pair its Secret
//! holds registered at Telegram and routed by the router.
//!
//! Its own control plane (restarting the shared one would fail every other
//! test of the process), started on the test's thread, which also restarts
//! its processes: they die with the thread that started them.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use common::*;
use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use managedbot::resource::ManagedBot;
use testbed::{ControlPlane, FakeTelegram, TestEnv, backend::Backend, shared::Shared};

const BOTS: usize = 200;
const BASE: &str = "https://bots.example.com";

fn name(i: usize) -> String {
    format!("bot-{i:03}")
}

/// Retries `op` until it succeeds, or finds its object already there (a
/// create whose answer was lost): the API server may be down for a while.
async fn persist<T, F, Fut>(what: &str, mut op: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    loop {
        match op().await {
            Ok(_) => return,
            Err(kube::Error::Api(status)) if status.code == 409 => return,
            Err(error) => eprintln!("retrying {what}: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn the_api_server_and_etcd_restart_under_the_controller_and_the_router() -> anyhow::Result<()> {
    let mut plane = ControlPlane::start().context("starting a control plane of its own")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let shared: &'static Shared = Box::leak(Box::new(Shared {
        kubeconfig: plane.kubeconfig().to_path_buf(),
        bin_dir: plane.bin_dir().to_path_buf(),
        dir: plane.dir().to_path_buf(),
    }));
    let (env, telegram, tokens, backend, controller, router) = runtime.block_on(async {
        let client = plane.client().await?;
        let status = plane
            .kubectl()
            .args(["apply", "--server-side", "-k"])
            .arg(repo_root().join("deploy"))
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "applying deploy/");
        plane
            .kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/managedbots.managedbot.dev",
            ])
            .status()?;
        let namespace = "restarts".to_string();
        Api::<Namespace>::all(client.clone())
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(namespace.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await?;
        let env = TestEnv {
            client,
            namespace,
            shared,
        };
        let telegram = FakeTelegram::start().await?;
        let tokens: Vec<String> = (0..BOTS)
            .map(|i| telegram.add_bot(8000 + i as i64, &format!("restart_{i}_bot")))
            .collect();
        let backend = Backend::start().await?;
        let controller = spawn_controller(
            &env,
            &telegram.url(),
            &["--leader-elect=false", "--concurrency=8"],
        )?;
        let router = spawn_router(&env, &[]).await?;
        anyhow::Ok((env, telegram, tokens, backend, controller, router))
    })?;
    let port = backend.addr().port();

    // The workload: create the bots, then rotate each, retrying every call
    // that fails while the API server or etcd is down.
    let created = Arc::new(AtomicUsize::new(0));
    let workload = runtime.spawn({
        let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
        let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
        let tokens = tokens.clone();
        let created = created.clone();
        async move {
            stream::iter(0..BOTS)
                .for_each_concurrent(8, |i| {
                    let (bots, secrets, token, created) = (bots.clone(), secrets.clone(), tokens[i].clone(), created.clone());
                    async move {
                        let name = name(i);
                        let secret: Secret = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("{name}-token")}, "stringData": {"token": token},
                        }))
                        .expect("a Secret");
                        let params = PostParams::default();
                        persist("a token Secret", || secrets.create(&params, &secret)).await;
                        let bot: ManagedBot = serde_json::from_value(serde_json::json!({
                            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
                            "metadata": {"name": name},
                            "spec": {"tokenSecretRef": {"name": format!("{name}-token")},
                                     "backend": {"service": {"name": name, "port": port}}},
                        }))
                        .expect("a ManagedBot");
                        persist("a ManagedBot", || bots.create(&params, &bot)).await;
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .await;
            let rotate = serde_json::json!({"metadata": {"annotations": {"managedbot.dev/rotate": "after-restarts"}}});
            stream::iter(0..BOTS)
                .for_each_concurrent(8, |i| {
                    let (bots, rotate) = (bots.clone(), rotate.clone());
                    async move {
                        let (name, params, patch) = (name(i), PatchParams::default(), Patch::Merge(&rotate));
                        persist("a rotation", || bots.patch(&name, &params, &patch)).await;
                    }
                })
                .await;
        }
    });

    // The API server goes while the bots are being created…
    wait_for(&runtime, || created.load(Ordering::Relaxed) >= BOTS / 4);
    let down = Instant::now();
    plane.restart("kube-apiserver")?;
    eprintln!(
        "FIGURE: kube-apiserver restarted: down and back in {:.1}s",
        down.elapsed().as_secs_f64()
    );
    let back = Instant::now();
    // …and etcd while they are being rotated.
    wait_for(&runtime, || created.load(Ordering::Relaxed) >= BOTS);
    runtime.block_on(async { tokio::time::sleep(Duration::from_millis(500)).await });
    plane.restart("etcd")?;
    eprintln!(
        "FIGURE: etcd restarted after {:.1}s",
        back.elapsed().as_secs_f64()
    );

    runtime.block_on(async {
        workload.await?;
        let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
        let all_rotated = eventually(Duration::from_secs(240), "every bot Ready with its rotation registered", || async {
            let list = match bots.list(&Default::default()).await {
                Ok(list) => list,
                Err(_) => return Ok(None),
            };
            let done = list
                .items
                .iter()
                .filter(|b| {
                    ready_reason(b).is_some_and(|(status, _)| status == "True")
                        && b.status.as_ref().and_then(|s| s.rotation.as_ref()).and_then(|r| r.observed.as_deref())
                            == Some("after-restarts")
                })
                .count();
            Ok((done == BOTS).then_some(()))
        })
        .await;
        all_rotated?;
        eprintln!(
            "FIGURE: API server restarts: all {BOTS} bots Ready and rotated {:.1}s after the API server was back",
            back.elapsed().as_secs_f64()
        );

        // Exactly the pair each Secret holds is registered and routed.
        let http = reqwest::Client::builder().no_proxy().build()?;
        for i in 0..BOTS {
            let (path, token) = webhook_pair(&env, &name(i)).await?;
            let webhook = telegram.webhook(8000 + i as i64).context("no webhook at Telegram")?;
            assert_eq!(webhook.url, format!("{BASE}/webhook/{path}"), "bot {i}");
            assert_eq!(webhook.secret_token.as_deref(), Some(token.as_str()), "bot {i}");
            let routed = eventually(Duration::from_secs(10), "the route", || async {
                let response = http
                    .post(router.webhook_url(&path))
                    .header("x-telegram-bot-api-secret-token", &token)
                    .body(format!(r#"{{"update_id":{i}}}"#))
                    .send()
                    .await?;
                Ok(response.status().is_success().then_some(()))
            })
            .await;
            routed.with_context(|| format!("bot {i} through the router"))?;
        }
        let mut controller = controller;
        let mut router_process = router.process;
        assert!(controller.child.try_wait()?.is_none(), "the controller exited:\n{}", controller.output());
        assert!(router_process.child.try_wait()?.is_none(), "the router exited:\n{}", router_process.output());
        assert_eq!(backend.received().len(), BOTS);
        let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
        assert_no_token_leaked(&env, &tokens, &[&controller, &router_process]).await?;
        anyhow::Ok(())
    })?;
    plane.stop();
    Ok(())
}

/// Blocks the test's thread (the one that restarts the control plane) until `done`.
fn wait_for(runtime: &tokio::runtime::Runtime, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "the workload made no progress in 2 minutes"
        );
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
    }
}
