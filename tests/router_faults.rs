//! The router under faults, as processes against a real kube-apiserver with
//! the controller and a real backend: routes churning under load with two
//! routers that must agree, and 10,000 updates sent the way Telegram sends
//! them across rotations, a router restart and a backend outage, none lost.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use kube::Api;
use reqwest::StatusCode;
use testbed::{FakeTelegram, TestEnv, backend::Backend};

const BASE: &str = "https://bots.example.com";
const SECRET_TOKEN_HEADER: &str = "x-telegram-bot-api-secret-token";

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .expect("a client")
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: String) -> Option<StatusCode> {
    let response = http
        .post(url)
        .header(SECRET_TOKEN_HEADER, token)
        .body(body)
        .send()
        .await;
    response.ok().map(|r| r.status())
}

async fn router_on(
    env: &TestEnv,
    addr: SocketAddr,
    metrics: SocketAddr,
) -> anyhow::Result<RouterProcess> {
    let args = vec![
        format!("--namespace={}", env.namespace),
        format!("--listen={addr}"),
        format!("--metrics-listen={metrics}"),
        "--service-resolver=http://127.0.0.1:{port}".to_string(),
        "--backend-timeout=3s".to_string(),
    ];
    router_with(
        env,
        &args,
        &impersonating(env, "managedbot-router")?,
        addr,
        metrics,
    )
    .await
}

fn loopback() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_updates_across_rotations_a_router_restart_and_a_backend_outage_none_lost()
-> anyhow::Result<()> {
    const UPDATES: usize = 10_000;
    const SENDERS: usize = 16;
    let env = env_with_crd("rtf-loss").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(8201, "stream_bot");
    let backend = Backend::start().await?;
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let (addr, metrics) = (loopback()?, loopback()?);
    let mut router = router_on(&env, addr, metrics).await?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "stream",
        &token,
        serde_json::json!({"backend": {"service": {"name": "stream", "port": port}}, "rotation": {"gracePeriod": "30s"}}),
    )
    .await?;
    ready_bot(&env, "stream", Duration::from_secs(30)).await?;

    // Telegram's side: each update is sent to the webhook registered at that
    // moment, and sent again after any answer but a 2xx, or none.
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let refusals = Arc::new(Mutex::new(BTreeMap::<String, usize>::new()));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (telegram, next, acked, refusals) = (
                telegram.clone(),
                next.clone(),
                acked.clone(),
                refusals.clone(),
            );
            tokio::spawn(async move {
                let http = http();
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= UPDATES {
                        return;
                    }
                    loop {
                        let webhook = telegram.webhook(8201).expect("a webhook");
                        let url = webhook.url.replace(BASE, &format!("http://{addr}"));
                        let token = webhook.secret_token.unwrap_or_default();
                        let answer =
                            post(&http, &url, &token, format!(r#"{{"update_id":{id}}}"#)).await;
                        match answer {
                            Some(status) if status.is_success() => {
                                acked.lock().unwrap().insert(id as i64);
                                break;
                            }
                            other => {
                                let key = other
                                    .map_or("no answer".to_string(), |s| s.as_u16().to_string());
                                *refusals.lock().unwrap().entry(key).or_default() += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    let at = |share: usize| {
        let acked = acked.clone();
        async move {
            while acked.lock().unwrap().len() < UPDATES * share / 100 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let started = Instant::now();
    at(15).await;
    env.kubectl_run(
        &[
            "annotate",
            "--overwrite",
            "mbot",
            "stream",
            "managedbot.dev/rotate=one",
        ],
        None,
    )
    .await?
    .ok()?;
    at(35).await;
    router.process.kill().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    router = router_on(&env, addr, metrics).await?;
    at(55).await;
    backend.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    backend.restart().await?;
    at(75).await;
    // A leak: the old pair cut off at once.
    env.kubectl_run(
        &[
            "annotate",
            "--overwrite",
            "mbot",
            "stream",
            "managedbot.dev/rotate=two",
            "managedbot.dev/rotate-now=two",
        ],
        None,
    )
    .await?
    .ok()?;
    for sender in senders {
        sender.await?;
    }
    let took = started.elapsed();

    let received: Vec<i64> = backend
        .received()
        .iter()
        .filter_map(|r| r.update_id())
        .collect();
    let unique: BTreeSet<i64> = received.iter().copied().collect();
    let acked = acked.lock().unwrap().clone();
    let missing: Vec<i64> = (0..UPDATES as i64)
        .filter(|id| !unique.contains(id))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "updates never delivered: {missing:?}");
    let acked_not_taken: Vec<&i64> = acked.difference(&unique).take(10).collect();
    assert!(
        acked_not_taken.is_empty(),
        "2xx answered for updates the backend never took: {acked_not_taken:?}"
    );
    assert_eq!(acked.len(), UPDATES);
    let refusals = refusals.lock().unwrap().clone();
    eprintln!(
        "FIGURE: no update lost: {UPDATES} sent, {} received ({} unique, {} duplicates) in {:.0}s across 2 rotations, \
         a router restart and a 2 s backend outage; refused and retried: {refusals:?}",
        received.len(),
        unique.len(),
        received.len() - unique.len(),
        took.as_secs_f64()
    );
    let (path, secret_token) = webhook_pair(&env, "stream").await?;
    assert_no_secret_leaked(
        &env,
        &[&token, &path, &secret_token],
        &[&controller, &router.process],
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_churning_under_load_never_misroute_and_two_routers_agree() -> anyhow::Result<()> {
    let env = env_with_crd("rtf-churn").await?;
    let telegram = FakeTelegram::start().await?;
    let backend = Backend::start().await?;
    let port = backend.addr().port();
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let router_processes = [
        router_on(&env, loopback()?, loopback()?).await?,
        router_on(&env, loopback()?, loopback()?).await?,
    ];
    let routers: Vec<SocketAddr> = router_processes.iter().map(|r| r.addr).collect();
    let spec = serde_json::json!({"backend": {"service": {"name": "b", "port": port}}, "rotation": {"gracePeriod": "0s"}});
    let mut tokens = Vec::new();
    let mut stable = Vec::new();
    for i in 0..3 {
        let token = telegram.add_bot(8300 + i, &format!("stable_{i}_bot"));
        apply_bot(&env, &format!("stable-{i}"), &token, spec.clone()).await?;
        tokens.push(token);
    }
    for i in 0..3 {
        ready_bot(&env, &format!("stable-{i}"), Duration::from_secs(30)).await?;
        stable.push(webhook_pair(&env, &format!("stable-{i}")).await?);
    }

    // The load: the stable bots' deliveries, alternating between the routers.
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<(String, u16), usize>::new()));
    let load: Vec<_> = (0..6)
        .map(|k| {
            let (stop, answers, stable, routers) = (
                stop.clone(),
                answers.clone(),
                stable.clone(),
                routers.clone(),
            );
            tokio::spawn(async move {
                let http = http();
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let (path, token) = &stable[k % stable.len()];
                    let router = routers[n % routers.len()];
                    let url = format!("http://{router}/webhook/{path}");
                    let (kind, token) = if n % 5 == 4 {
                        ("wrong token", "wrong")
                    } else {
                        ("valid", token.as_str())
                    };
                    let status = post(&http, &url, token, format!(r#"{{"update_id":{n}}}"#)).await;
                    let code = status.map_or(0, |s| s.as_u16());
                    *answers
                        .lock()
                        .unwrap()
                        .entry((kind.to_string(), code))
                        .or_default() += 1;
                    n += 1;
                }
            })
        })
        .collect();

    // The churn: bots created, rotated (grace 0) and deleted; each retired
    // pair must be refused by both routers from the moment it is retired on.
    let http = http();
    let started = Instant::now();
    let mut retired = Vec::new();
    let mut unrouted_after = Vec::new();
    for round in 0..4 {
        let name = format!("churn-{round}");
        let token = telegram.add_bot(8400 + round, &format!("churn_{round}_bot"));
        apply_bot(&env, &name, &token, spec.clone()).await?;
        tokens.push(token);
        ready_bot(&env, &name, Duration::from_secs(30)).await?;
        let first = webhook_pair(&env, &name).await?;
        for router in &routers {
            let url = format!("http://{router}/webhook/{}", first.0);
            let routed = eventually(Duration::from_secs(5), "a new bot's route", || async {
                Ok(
                    (post(&http, &url, &first.1, "{}".into()).await == Some(StatusCode::OK))
                        .then_some(()),
                )
            })
            .await;
            routed?;
        }
        env.kubectl_run(
            &[
                "annotate",
                "--overwrite",
                "mbot",
                &name,
                "managedbot.dev/rotate=r1",
            ],
            None,
        )
        .await?
        .ok()?;
        let bots: Api<managedbot::resource::ManagedBot> =
            Api::namespaced(env.client.clone(), &env.namespace);
        eventually(Duration::from_secs(30), "the rotation", || async {
            let bot = bots.get(&name).await?;
            Ok((bot
                .status
                .and_then(|s| s.rotation)
                .and_then(|r| r.observed)
                .as_deref()
                == Some("r1"))
            .then_some(()))
        })
        .await?;
        let rotated_at = Instant::now();
        let second = webhook_pair(&env, &name).await?;
        // The rotated-out pair: gone from both routers (grace 0), for good.
        for router in &routers {
            let url = format!("http://{router}/webhook/{}", first.0);
            eventually(
                Duration::from_secs(2),
                "the rotated-out pair refused",
                || async {
                    Ok((post(&http, &url, &first.1, "{}".into()).await
                        == Some(StatusCode::NOT_FOUND))
                    .then_some(()))
                },
            )
            .await?;
        }
        unrouted_after.push(rotated_at.elapsed());
        env.kubectl_run(
            &["delete", "mbot", &name, "--wait=true", "--timeout=60s"],
            None,
        )
        .await?
        .ok()?;
        let deleted_at = Instant::now();
        for router in &routers {
            let url = format!("http://{router}/webhook/{}", second.0);
            eventually(
                Duration::from_secs(2),
                "a deleted bot's route gone",
                || async {
                    Ok((post(&http, &url, &second.1, "{}".into()).await
                        == Some(StatusCode::NOT_FOUND))
                    .then_some(()))
                },
            )
            .await?;
        }
        unrouted_after.push(deleted_at.elapsed());
        retired.push(first);
        retired.push(second);
        // Retired pairs stay refused by both.
        for (path, token) in &retired {
            for router in &routers {
                let status = post(
                    &http,
                    &format!("http://{router}/webhook/{path}"),
                    token,
                    "{}".into(),
                )
                .await;
                assert_eq!(
                    status,
                    Some(StatusCode::NOT_FOUND),
                    "a retired pair routed again"
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await?;
    }
    let answers = answers.lock().unwrap().clone();
    let valid: usize = answers
        .iter()
        .filter(|((k, _), _)| k == "valid")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        answers
            .get(&("valid".to_string(), 200))
            .copied()
            .unwrap_or(0),
        valid,
        "{answers:?}"
    );
    let wrong: usize = answers
        .iter()
        .filter(|((k, _), _)| k == "wrong token")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        answers
            .get(&("wrong token".to_string(), 401))
            .copied()
            .unwrap_or(0),
        wrong,
        "{answers:?}"
    );
    // Both routers give one answer for every pair: current, rotated out, deleted.
    for (path, token) in stable.iter().chain(&retired) {
        let a = post(
            &http,
            &format!("http://{}/webhook/{path}", routers[0]),
            token,
            "{}".into(),
        )
        .await;
        let b = post(
            &http,
            &format!("http://{}/webhook/{path}", routers[1]),
            token,
            "{}".into(),
        )
        .await;
        assert_eq!(a, b, "the two routers disagree");
    }
    let slowest = unrouted_after.iter().max().copied().unwrap_or_default();
    eprintln!(
        "FIGURE: route churn: {valid} valid deliveries all 200 and {wrong} with a wrong token all 401 over {:.0}s \
         of 4 bots created, rotated and deleted; retired pairs refused by both routers within {slowest:?}",
        started.elapsed().as_secs_f64()
    );
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let processes = [
        &controller,
        &router_processes[0].process,
        &router_processes[1].process,
    ];
    assert_no_token_leaked(&env, &tokens, &processes).await?;
    Ok(())
}
