//! The router as a process beside the controller, against a real
//! kube-apiserver, the fake Telegram and a real HTTP backend, each process
//! with the RBAC of its ServiceAccount from deploy/.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, api::ListParams};
use managedbot::resource::ManagedBot;
use reqwest::StatusCode;
use testbed::{
    FakeTelegram,
    backend::{Backend, Reply},
};

const BASE: &str = "https://bots.example.com";
const SECRET_TOKEN_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

fn update(id: u64) -> String {
    format!(
        r#"{{"update_id":{id},"message":{{"message_id":{id},"date":1764842400,"chat":{{"id":42,"type":"private"}},"from":{{"id":42,"is_bot":false,"first_name":"Ada"}},"text":"update {id}"}}}}"#
    )
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("a client")
}

async fn post(url: &str, token: &str, body: String) -> anyhow::Result<(StatusCode, String)> {
    let response = http()
        .post(url)
        .header(SECRET_TOKEN_HEADER, token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok((response.status(), response.text().await?))
}

/// Writes `head` and as much of `body` as the router takes, then reads its
/// answer: a router that refuses a request early closes the connection while
/// a client like reqwest is still sending, and such a client never sees it.
async fn declare_and_send(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(head.as_bytes()).await?;
    let _ = stream.write_all(body).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Telegram's side of a delivery: it posts to the URL and secret token
/// registered at Telegram right now, with the public base mapped to the
/// router's loopback address.
struct Telegram(std::net::SocketAddr);

impl Telegram {
    async fn deliver(
        &self,
        telegram: &FakeTelegram,
        bot_id: i64,
        body: String,
    ) -> anyhow::Result<StatusCode> {
        let Some(webhook) = telegram.webhook(bot_id) else {
            anyhow::bail!("no webhook is registered");
        };
        let url = webhook.url.replace(BASE, &format!("http://{}", self.0));
        Ok(post(&url, &webhook.secret_token.unwrap_or_default(), body)
            .await?
            .0)
    }
}

#[tokio::test]
async fn an_applied_bot_is_routed_by_ready_and_its_backend_reply_comes_back() -> anyhow::Result<()>
{
    let env = env_with_crd("rt-route").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(8101, "route_bot");
    let backend = Backend::start().await?;
    let reply = r#"{"method":"sendMessage","chat_id":42,"text":"pong"}"#;
    backend.set_reply(Reply {
        body: reply.into(),
        ..Reply::default()
    });
    let router = spawn_router(&env, &[]).await?;
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "route",
        &token,
        serde_json::json!({"backend": {"service": {"name": "route", "port": port}, "path": "/telegram"}}),
    )
    .await?;
    ready_bot(&env, "route", Duration::from_secs(30)).await?;
    let ready_seen = Instant::now();
    let (path, secret_token) = webhook_pair(&env, "route").await?;
    let url = router.webhook_url(&path);
    // Routing is published before setWebhook, so a Ready bot is routed; the
    // bound is the issue's "within a second of Ready".
    let (status, body) = eventually(
        Duration::from_secs(1),
        "the route of a Ready bot",
        || async {
            let answer = post(&url, &secret_token, update(1)).await?;
            Ok((answer.0 != StatusCode::NOT_FOUND).then_some(answer))
        },
    )
    .await?;
    eprintln!("routed {:?} after Ready was seen", ready_seen.elapsed());
    assert_eq!((status, body.as_str()), (StatusCode::OK, reply));
    let received = backend.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/telegram");
    assert_eq!(received[0].body, update(1).as_bytes());
    assert_eq!(received[0].header("x-managedbot-name"), Some("route"));
    assert_eq!(
        received[0].header("x-managedbot-namespace"),
        Some(env.namespace.as_str())
    );
    assert!(received[0].header(SECRET_TOKEN_HEADER).is_none());

    // A delivery the way Telegram makes it, from what setWebhook registered.
    assert_eq!(
        Telegram(router.addr)
            .deliver(&telegram, 8101, update(2))
            .await?,
        StatusCode::OK
    );
    assert_eq!(
        post(&url, "wrong-token", update(3)).await?.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        post(&router.webhook_url("unknown"), &secret_token, update(4))
            .await?
            .0,
        StatusCode::NOT_FOUND
    );
    // A 10 MiB update: refused by its declared length before the body is read.
    let answer = declare_and_send(
        router.addr,
        &format!(
            "POST /webhook/{path} HTTP/1.1\r\nhost: router\r\n{SECRET_TOKEN_HEADER}: {secret_token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            10 << 20
        ),
        &[b'x'; 64 << 10],
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let get = http()
        .get(&url)
        .header(SECRET_TOKEN_HEADER, &secret_token)
        .send()
        .await?;
    assert_eq!(get.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        backend.received().len(),
        2,
        "refused requests never reach the backend"
    );

    let metrics = http()
        .get(format!("http://{}/metrics", router.metrics_addr))
        .send()
        .await?
        .text()
        .await?;
    for line in [
        "managedbot_router_routes 1",
        "managedbot_router_bots 1",
        "managedbot_router_requests_total{code=\"200\"} 2",
        "managedbot_router_requests_total{code=\"401\"} 1",
        "managedbot_router_requests_total{code=\"413\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    assert_no_secret_leaked(
        &env,
        &[&token, &path, &secret_token],
        &[&controller, &router.process],
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_rotation_under_steady_deliveries_delivers_every_update_exactly_once()
-> anyhow::Result<()> {
    let env = env_with_crd("rt-rotate").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(8102, "rotate_bot");
    let backend = Backend::start().await?;
    let router = spawn_router(&env, &[]).await?;
    let controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "rotate",
        &token,
        serde_json::json!({
            "backend": {"service": {"name": "rotate", "port": port}},
            "rotation": {"gracePeriod": "6s"},
        }),
    )
    .await?;
    ready_bot(&env, "rotate", Duration::from_secs(30)).await?;
    let (old_path, old_token) = webhook_pair(&env, "rotate").await?;

    // Telegram's side: numbered updates, each sent to the webhook registered
    // at that moment and sent again after any non-2xx, as Telegram does.
    const UPDATES: u64 = 300;
    let sender = {
        let telegram = telegram.clone();
        let router_addr = router.addr;
        tokio::spawn(async move {
            let router = Telegram(router_addr);
            let mut refused = 0u32;
            for id in 0..UPDATES {
                loop {
                    match router.deliver(&telegram, 8102, update(id)).await {
                        Ok(status) if status.is_success() => break,
                        _ => refused += 1,
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            refused
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
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
    let rotated = eventually(
        Duration::from_secs(30),
        "the rotation to be registered",
        || async {
            let bot = bots.get("rotate").await?;
            let status = bot.status.clone().unwrap_or_default();
            let done = status.rotation.as_ref().and_then(|r| r.observed.as_deref())
                == Some("first")
                && status
                    .webhook_url
                    .as_deref()
                    .is_some_and(|u| !u.ends_with(&old_path));
            Ok(done.then_some(bot))
        },
    )
    .await?;
    let refused = sender.await?;
    let (new_path, new_token) = webhook_pair(&env, "rotate").await?;
    assert_ne!(new_path, old_path);
    assert!(telegram.webhook(8102).unwrap().url.ends_with(&new_path));

    let mut ids: Vec<i64> = backend
        .received()
        .iter()
        .filter_map(|r| r.update_id())
        .collect();
    ids.sort_unstable();
    let expected: Vec<i64> = (0..UPDATES as i64).collect();
    assert_eq!(ids, expected, "every update exactly once");
    eprintln!("{UPDATES} updates across a rotation; {refused} attempts refused and retried");

    // The old pair is routed until the grace period ends, then 404.
    let expires_at = rotated
        .status
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .and_then(|r| r.previous_expires_at.clone())
        .expect("a previous pair with an expiry")
        .0;
    let old_url = router.webhook_url(&old_path);
    if k8s_openapi::jiff::Timestamp::now() < expires_at {
        assert_eq!(
            post(&old_url, &old_token, update(1000)).await?.0,
            StatusCode::OK
        );
    }
    let until = Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_until(expires_at))
        .unwrap_or_default();
    tokio::time::sleep(until + Duration::from_millis(100)).await;
    assert_eq!(
        post(&old_url, &old_token, update(1001)).await?.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        post(&router.webhook_url(&new_path), &new_token, update(1002))
            .await?
            .0,
        StatusCode::OK
    );
    assert_no_secret_leaked(
        &env,
        &[&token, &old_path, &old_token, &new_path, &new_token],
        &[&controller, &router.process],
    )
    .await?;
    Ok(())
}

async fn set_suspend(env: &testbed::TestEnv, bot: &str, suspend: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"suspend": suspend}}).to_string();
    env.kubectl_run(&["patch", "mbot", bot, "--type=merge", "-p", &patch], None)
        .await?
        .ok()?;
    Ok(())
}

#[tokio::test]
async fn suspend_and_delete_take_the_route_away() -> anyhow::Result<()> {
    let env = env_with_crd("rt-gone").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(8103, "gone_bot");
    let backend = Backend::start().await?;
    let router = spawn_router(&env, &[]).await?;
    let _controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "gone",
        &token,
        serde_json::json!({"backend": {"service": {"name": "gone", "port": port}}}),
    )
    .await?;
    ready_bot(&env, "gone", Duration::from_secs(30)).await?;
    let (path, secret_token) = webhook_pair(&env, "gone").await?;
    let url = router.webhook_url(&path);
    let routed = |expected: StatusCode| {
        let url = url.clone();
        let secret_token = secret_token.clone();
        move || {
            let url = url.clone();
            let secret_token = secret_token.clone();
            async move { Ok((post(&url, &secret_token, update(1)).await?.0 == expected).then_some(())) }
        }
    };
    eventually(Duration::from_secs(1), "the route", routed(StatusCode::OK)).await?;

    set_suspend(&env, "gone", true).await?;
    let patched = Instant::now();
    eventually(
        Duration::from_secs(1),
        "404 for a suspended bot",
        routed(StatusCode::NOT_FOUND),
    )
    .await?;
    eprintln!(
        "suspended bot unrouted {:?} after the patch",
        patched.elapsed()
    );
    bot_with_reason(&env, "gone", "Suspended", Duration::from_secs(30)).await?;

    set_suspend(&env, "gone", false).await?;
    ready_bot(&env, "gone", Duration::from_secs(30)).await?;
    assert_eq!(
        webhook_pair(&env, "gone").await?.0,
        path,
        "resuming keeps the secret"
    );
    eventually(
        Duration::from_secs(1),
        "the route back",
        routed(StatusCode::OK),
    )
    .await?;

    env.kubectl_run(
        &["delete", "mbot", "gone", "--wait=true", "--timeout=60s"],
        None,
    )
    .await?
    .ok()?;
    let deleted = Instant::now();
    eventually(
        Duration::from_secs(1),
        "404 for a deleted bot",
        routed(StatusCode::NOT_FOUND),
    )
    .await?;
    eprintln!(
        "deleted bot unrouted {:?} after it was gone",
        deleted.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_backend_outage_is_502_and_the_retried_update_goes_through() -> anyhow::Result<()> {
    let env = env_with_crd("rt-outage").await?;
    let telegram = FakeTelegram::start().await?;
    let token = telegram.add_bot(8104, "outage_bot");
    let backend = Backend::start().await?;
    let router = spawn_router(&env, &["--backend-timeout=2s"]).await?;
    let _controller = spawn_controller(&env, &telegram.url(), &["--leader-elect=false"])?;
    let port = backend.addr().port();
    apply_bot(
        &env,
        "outage",
        &token,
        serde_json::json!({"backend": {"service": {"name": "outage", "port": port}}}),
    )
    .await?;
    ready_bot(&env, "outage", Duration::from_secs(30)).await?;
    eventually(Duration::from_secs(5), "the route", || async {
        Ok((Telegram(router.addr)
            .deliver(&telegram, 8104, update(1))
            .await?
            == StatusCode::OK)
            .then_some(()))
    })
    .await?;

    backend.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        Telegram(router.addr)
            .deliver(&telegram, 8104, update(2))
            .await?,
        StatusCode::BAD_GATEWAY
    );
    backend.set_reply(Reply {
        delay: Duration::from_secs(5),
        ..Reply::default()
    });
    backend.restart().await?;
    assert_eq!(
        Telegram(router.addr)
            .deliver(&telegram, 8104, update(2))
            .await?,
        StatusCode::GATEWAY_TIMEOUT,
        "a backend slower than --backend-timeout"
    );
    backend.set_reply(Reply::default());
    assert_eq!(
        Telegram(router.addr)
            .deliver(&telegram, 8104, update(2))
            .await?,
        StatusCode::OK
    );
    let ids: Vec<i64> = backend
        .received()
        .iter()
        .filter_map(|r| r.update_id())
        .collect();
    // The slow attempt reached the backend, which took it after the router had
    // given up: Telegram's retry makes that an at-least-once delivery.
    assert_eq!(ids, [1, 2, 2]);
    Ok(())
}

#[tokio::test]
async fn the_router_service_account_reads_managedbots_and_no_secret() -> anyhow::Result<()> {
    let env = env_with_crd("rt-rbac").await?;
    let kubeconfig = impersonating(&env, "managedbot-router")?;
    let client = testbed::shared::client_for(&kubeconfig).await?;
    let bots: Api<ManagedBot> = Api::namespaced(client.clone(), &env.namespace);
    bots.list(&ListParams::default()).await?;
    Api::<ManagedBot>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let forbidden = |result: Result<_, kube::Error>| match result {
        Err(kube::Error::Api(status)) => status.code == 403,
        _ => false,
    };
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &env.namespace);
    assert!(forbidden(
        secrets.list(&ListParams::default()).await.map(|_| ())
    ));
    assert!(forbidden(secrets.get("anything").await.map(|_| ())));
    assert!(forbidden(
        Api::<Secret>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    let patch = kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": {"x": "y"}}}));
    assert!(forbidden(
        bots.patch("any", &Default::default(), &patch)
            .await
            .map(|_| ())
    ));
    let can_i = env
        .kubectl_run(
            &[
                "auth",
                "can-i",
                "get",
                "secrets",
                "--as=system:serviceaccount:managedbot:managedbot-router",
            ],
            None,
        )
        .await?;
    assert_eq!(can_i.stdout.trim(), "no");
    Ok(())
}
