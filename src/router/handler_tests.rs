//! The router end to end in one process, no Kubernetes: a real listener on
//! loopback, a table built from bots, a real HTTP backend. Every answer of
//! design.md's list, and the table changing under load.

use std::{
    net::SocketAddr,
    sync::{Arc, mpsc},
    time::Duration,
};

use axum::http::StatusCode;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use testbed::backend::{Backend, Reply};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::oneshot,
};

use super::{
    backend::ServiceResolver,
    forward::{Forwarder, NAME_HEADER, NAMESPACE_HEADER},
    handler::{self, Endpoint, Limits, PathPrefix, SECRET_TOKEN_HEADER},
    metrics::RouterMetrics,
    server::{self, ConnectionLimits},
    source::SourceFilter,
    table::{self, Routes},
    test_support::{bot, bot_with_previous},
};
use crate::resource::ManagedBot;

const PATH: &str = "pAtH-SeCrEt_0123456789abcdefghijklmnopqrstu";
const TOKEN: &str = "ToKeN-SeCrEt_0123456789abcdefghijklmnopqrst";
const UPDATE: &str = r#"{"update_id":1001,"message":{"message_id":7,"date":1764842400,"chat":{"id":42,"type":"private"},"text":"hi"}}"#;

fn limits() -> Limits {
    Limits {
        max_body_bytes: 64 * 1024,
        max_in_flight: 64,
        max_in_flight_per_bot: 16,
        body_read_timeout: Duration::from_secs(2),
    }
}

/// How a test router is set up.
struct Config {
    limits: Limits,
    backend_timeout: Duration,
    header_read_timeout: Duration,
    source_filter: Option<SourceFilter>,
    prefix: PathPrefix,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: limits(),
            backend_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            source_filter: None,
            prefix: PathPrefix::default(),
        }
    }
}

struct Router {
    addr: SocketAddr,
    routes: Arc<Routes>,
    metrics: Arc<RouterMetrics>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<()>,
}

impl Router {
    async fn start(bots: &[ManagedBot], limits: Limits, backend_timeout: Duration) -> Self {
        Self::start_with(
            bots,
            Config {
                limits,
                backend_timeout,
                ..Config::default()
            },
        )
        .await
    }

    async fn start_with(bots: &[ManagedBot], config: Config) -> Self {
        let Config {
            limits,
            backend_timeout,
            header_read_timeout,
            source_filter,
            prefix,
        } = config;
        let routes = Arc::new(Routes::default());
        publish(&routes, bots);
        let metrics = Arc::new(RouterMetrics::default());
        let endpoint = Arc::new(Endpoint::new(
            routes.clone(),
            Forwarder::new(backend_timeout, 1 << 20).unwrap(),
            limits,
            source_filter,
            metrics.clone(),
            prefix,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(server::serve(
            listener,
            handler::app(endpoint),
            ConnectionLimits {
                header_read_timeout,
                drain_timeout: Duration::from_secs(10),
            },
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            routes,
            metrics,
            stop: Some(stop),
            served,
        }
    }

    fn url(&self, secret: &str) -> String {
        format!("http://{}/webhook/{secret}", self.addr)
    }

    async fn post(&self, secret: &str, token: Option<&str>, body: &str) -> (StatusCode, String) {
        let mut request = client().post(self.url(secret)).body(body.to_string());
        if let Some(token) = token {
            request = request.header(SECRET_TOKEN_HEADER, token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.text().await.unwrap())
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.served.await.unwrap();
    }
}

fn publish(routes: &Routes, bots: &[ManagedBot]) {
    let resolver = ServiceResolver::parse("http://127.0.0.1:{port}").unwrap();
    routes.update(|current| table::build(bots, &resolver, current, Timestamp::now()).table);
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn port_of(backend: &Backend) -> i32 {
    i32::from(backend.addr().port())
}

fn closed_port() -> i32 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    i32::from(listener.local_addr().unwrap().port())
}

/// Sends `request` as raw bytes (write errors ignored: the router may answer
/// and close before the request is all sent) and reads until the router
/// closes the connection or `wait` passes.
async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn an_update_reaches_the_backend_as_sent_and_its_reply_comes_back_unchanged() {
    let backend = Backend::start().await.unwrap();
    let reply = r#"{"method":"sendMessage","chat_id":42,"text":"hello"}"#;
    backend.set_reply(Reply {
        status: StatusCode::OK,
        content_type: "application/json".into(),
        body: reply.into(),
        delay: Duration::ZERO,
    });
    let router = Router::start(
        &[bot("bots", "support", PATH, TOKEN, port_of(&backend))],
        limits(),
        Duration::from_secs(5),
    )
    .await;
    let response = client()
        .post(router.url(PATH))
        .header(SECRET_TOKEN_HEADER, TOKEN)
        .header("content-type", "application/json")
        .body(UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.text().await.unwrap(), reply);
    let received = backend.received();
    assert_eq!(received.len(), 1);
    let got = &received[0];
    assert_eq!(got.body, UPDATE.as_bytes());
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header(NAMESPACE_HEADER), Some("bots"));
    assert_eq!(got.header(NAME_HEADER), Some("support"));
    assert!(
        got.header(SECRET_TOKEN_HEADER).is_none(),
        "the secret token never reaches the backend"
    );
    // A body that is not JSON is the backend's business: forwarded as is.
    let (status, _) = router.post(PATH, Some(TOKEN), "not json \u{1}").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(backend.received()[1].body, "not json \u{1}".as_bytes());
    // A backend's non-2xx goes back as it is, so Telegram delivers again.
    backend.set_reply(Reply {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        content_type: "text/plain".into(),
        body: "boom".into(),
        delay: Duration::ZERO,
    });
    assert_eq!(
        router.post(PATH, Some(TOKEN), UPDATE).await,
        (StatusCode::INTERNAL_SERVER_ERROR, "boom".into())
    );
    router.shutdown().await;
}

#[tokio::test]
async fn every_refusal_has_its_status_and_nothing_reaches_the_backend() {
    let backend = Backend::start().await.unwrap();
    let now = Timestamp::now();
    let router = Router::start(
        &[
            bot("ns", "a", PATH, TOKEN, port_of(&backend)),
            bot_with_previous(
                "ns",
                "rotated",
                ("new-path", "new-token"),
                ("expired-path", "old-token"),
                now - SignedDuration::from_secs(1),
                port_of(&backend),
            ),
        ],
        Limits {
            max_body_bytes: 1024,
            ..limits()
        },
        Duration::from_secs(5),
    )
    .await;
    let not_found = (StatusCode::NOT_FOUND, "not found\n".to_string());
    let unauthorized = (StatusCode::UNAUTHORIZED, "unauthorized\n".to_string());
    assert_eq!(
        router.post("no-such-secret", Some(TOKEN), UPDATE).await,
        not_found
    );
    assert_eq!(
        router.post("expired-path", Some("old-token"), UPDATE).await,
        not_found,
        "an expired secret looks exactly like one that never existed"
    );
    assert_eq!(
        router.post(&"x".repeat(10_240), Some(TOKEN), UPDATE).await,
        not_found
    );
    for path in ["", "..", "%2e%2e", "p%41th", "p\u{e9}th", "a/b", "a;b"] {
        let url = format!("http://{}/webhook/{path}", router.addr);
        let response = client()
            .post(url)
            .header(SECRET_TOKEN_HEADER, TOKEN)
            .body(UPDATE)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path:?}");
    }
    let elsewhere = client()
        .post(format!("http://{}/{PATH}", router.addr))
        .body(UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::NOT_FOUND);
    assert_eq!(router.post(PATH, None, UPDATE).await, unauthorized);
    assert_eq!(router.post(PATH, Some("wrong"), UPDATE).await, unauthorized);
    assert_eq!(router.post(PATH, Some(""), UPDATE).await, unauthorized);
    assert_eq!(
        router.post("new-path", Some(TOKEN), UPDATE).await,
        unauthorized,
        "pairs never mix"
    );
    let twice = client()
        .post(router.url(PATH))
        .header(SECRET_TOKEN_HEADER, TOKEN)
        .header(SECRET_TOKEN_HEADER, TOKEN)
        .body(UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(
        twice.status(),
        StatusCode::UNAUTHORIZED,
        "a duplicated token header"
    );
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PUT,
        reqwest::Method::DELETE,
    ] {
        let response = client()
            .request(method.clone(), router.url(PATH))
            .header(SECRET_TOKEN_HEADER, TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(response.headers()["allow"], "POST");
    }
    let large = "x".repeat(1025);
    let (status, _) = router.post(PATH, Some(TOKEN), &large).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let chunked = format!(
        "POST /webhook/{PATH} HTTP/1.1\r\nhost: r\r\n{SECRET_TOKEN_HEADER}: {TOKEN}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{}",
        "200\r\n".to_string()
            + &"y".repeat(0x200)
            + "\r\n"
            + "200\r\n"
            + &"y".repeat(0x200)
            + "\r\n"
            + "10\r\n"
            + &"y".repeat(16)
            + "\r\n0\r\n\r\n"
    );
    let answer = raw(router.addr, chunked.as_bytes(), Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(backend.received().is_empty(), "{:?}", backend.received());
    router.shutdown().await;
}

#[tokio::test]
async fn a_backend_down_is_502_slow_is_504_and_410_is_never_passed_on() {
    let slow = Backend::start().await.unwrap();
    slow.set_reply(Reply {
        delay: Duration::from_secs(3),
        ..Reply::default()
    });
    let gone = Backend::start().await.unwrap();
    gone.set_reply(Reply {
        status: StatusCode::GONE,
        ..Reply::default()
    });
    let router = Router::start(
        &[
            bot("ns", "down", "down-path", TOKEN, closed_port()),
            bot("ns", "slow", "slow-path", TOKEN, port_of(&slow)),
            bot("ns", "gone", "gone-path", TOKEN, port_of(&gone)),
        ],
        limits(),
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        router.post("down-path", Some(TOKEN), UPDATE).await,
        (StatusCode::BAD_GATEWAY, "bad gateway\n".into())
    );
    assert_eq!(
        router.post("slow-path", Some(TOKEN), UPDATE).await,
        (StatusCode::GATEWAY_TIMEOUT, "gateway timeout\n".into())
    );
    assert_eq!(
        router.post("gone-path", Some(TOKEN), UPDATE).await.0,
        StatusCode::BAD_GATEWAY
    );
    let metrics = router.metrics.render();
    for line in [
        "managedbot_router_backend_errors_total{kind=\"connect\"} 1",
        "managedbot_router_backend_errors_total{kind=\"timeout\"} 1",
        "managedbot_router_backend_errors_total{kind=\"gone\"} 1",
        "managedbot_router_requests_total{code=\"502\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    router.shutdown().await;
}

#[tokio::test]
async fn a_backend_that_comes_back_takes_the_retried_update() {
    let backend = Backend::start().await.unwrap();
    let router = Router::start(
        &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
        limits(),
        Duration::from_secs(2),
    )
    .await;
    backend.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        router.post(PATH, Some(TOKEN), UPDATE).await.0,
        StatusCode::BAD_GATEWAY
    );
    assert!(backend.received().is_empty());
    backend.restart().await.unwrap();
    assert_eq!(
        router.post(PATH, Some(TOKEN), UPDATE).await.0,
        StatusCode::OK
    );
    assert_eq!(backend.received().len(), 1);
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_a_cap_the_router_answers_503_with_retry_after_at_once() {
    let backend = Backend::start().await.unwrap();
    backend.set_reply(Reply {
        delay: Duration::from_millis(800),
        ..Reply::default()
    });
    let router = Arc::new(
        Router::start(
            &[
                bot("ns", "a", "path-a", TOKEN, port_of(&backend)),
                bot("ns", "b", "path-b", TOKEN, port_of(&backend)),
            ],
            Limits {
                max_in_flight: 3,
                max_in_flight_per_bot: 2,
                ..limits()
            },
            Duration::from_secs(5),
        )
        .await,
    );
    let send = |secret: &'static str| {
        let router = router.clone();
        tokio::spawn(async move {
            let response = client()
                .post(router.url(secret))
                .header(SECRET_TOKEN_HEADER, TOKEN)
                .body(UPDATE)
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.headers().get("retry-after").cloned(),
            )
        })
    };
    let a = [send("path-a"), send("path-a")];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let (status, retry_after) = send("path-a").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the bot's cap");
    assert_eq!(retry_after.unwrap(), "1");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused without waiting"
    );
    let b = send("path-b");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        send("path-b").await.unwrap().0,
        StatusCode::SERVICE_UNAVAILABLE,
        "the overall cap"
    );
    for task in a.into_iter().chain([b]) {
        assert_eq!(task.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(
        send("path-a").await.unwrap().0,
        StatusCode::OK,
        "slots come back"
    );
    assert_eq!(backend.received().len(), 4);
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let backend = Backend::start().await.unwrap();
    let router = Router::start_with(
        &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
        Config {
            header_read_timeout: Duration::from_millis(700),
            ..Config::default()
        },
    )
    .await;
    let mut stream = TcpStream::connect(router.addr).await.unwrap();
    let request =
        format!("POST /webhook/{PATH} HTTP/1.1\r\nhost: r\r\n{SECRET_TOKEN_HEADER}: {TOKEN}\r\n");
    let started = std::time::Instant::now();
    let mut cut_off = false;
    for byte in request.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let mut buffer = [0u8; 256];
        if let Ok(read) =
            tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buffer)).await
        {
            // The router closed the connection (0 bytes) or reset it.
            assert!(!String::from_utf8_lossy(&buffer[..read.unwrap_or(0)]).contains(" 200 "));
            cut_off = true;
            break;
        }
    }
    assert!(cut_off, "the router waited for a whole trickled request");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        router.post(PATH, Some(TOKEN), UPDATE).await.0,
        StatusCode::OK
    );
    assert!(backend.received().len() == 1);
    router.shutdown().await;
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_408_and_not_forwarded() {
    let backend = Backend::start().await.unwrap();
    let router = Router::start(
        &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
        Limits {
            body_read_timeout: Duration::from_millis(500),
            ..limits()
        },
        Duration::from_secs(5),
    )
    .await;
    let head = format!(
        "POST /webhook/{PATH} HTTP/1.1\r\nhost: r\r\n{SECRET_TOKEN_HEADER}: {TOKEN}\r\ncontent-length: 100\r\n\r\n{{\"update_id\":"
    );
    let answer = raw(router.addr, head.as_bytes(), Duration::from_secs(3)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(backend.received().is_empty());
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_swaps_during_a_burst_lose_no_request() {
    let backend = Backend::start().await.unwrap();
    let port = port_of(&backend);
    let router = Arc::new(
        Router::start(
            &[bot("ns", "a", PATH, TOKEN, port)],
            limits(),
            Duration::from_secs(5),
        )
        .await,
    );
    let swapping = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swapper = {
        let routes = router.routes.clone();
        let swapping = swapping.clone();
        std::thread::spawn(move || {
            let mut swaps = 0u32;
            while swapping.load(std::sync::atomic::Ordering::Relaxed) {
                // The bot stays; other bots come and go around it.
                let mut bots = vec![bot("ns", "a", PATH, TOKEN, port)];
                bots.extend((0..(swaps % 50)).map(|i| {
                    bot(
                        "churn",
                        &format!("b{i}"),
                        &format!("p{swaps}-{i}"),
                        "t",
                        port,
                    )
                }));
                publish(&routes, &bots);
                swaps += 1;
            }
            swaps
        })
    };
    // Eight senders, under the per-bot cap: every refusal would be the table's fault.
    let senders: Vec<_> = (0..8)
        .map(|sender| {
            let router = router.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for i in (sender * 50)..(sender * 50 + 50) {
                    let body = format!(r#"{{"update_id":{i}}}"#);
                    answers.push(router.post(PATH, Some(TOKEN), &body).await.0);
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for sender in senders {
        answers.extend(sender.await.unwrap());
    }
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps > 10, "only {swaps} swaps happened during the burst");
    assert!(answers.iter().all(|s| *s == StatusCode::OK), "{answers:?}");
    let mut ids: Vec<i64> = backend
        .received()
        .iter()
        .filter_map(|r| r.update_id())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..400).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_while_a_table_update_is_stuck() {
    let backend = Backend::start().await.unwrap();
    let port = port_of(&backend);
    let router = Router::start(
        &[bot("ns", "a", PATH, TOKEN, port)],
        limits(),
        Duration::from_secs(5),
    )
    .await;
    let (entered, in_update) = mpsc::channel::<()>();
    let (release, released) = mpsc::channel::<()>();
    let routes = router.routes.clone();
    let updater = std::thread::spawn(move || {
        routes.update(|current| {
            entered.send(()).unwrap();
            released.recv().unwrap();
            let resolver = ServiceResolver::parse("http://127.0.0.1:{port}").unwrap();
            table::build(
                &[bot("ns", "a", "next-path", TOKEN, port)],
                &resolver,
                current,
                Timestamp::now(),
            )
            .table
        });
    });
    in_update.recv().unwrap();
    for _ in 0..20 {
        let answer = tokio::time::timeout(
            Duration::from_secs(2),
            router.post(PATH, Some(TOKEN), UPDATE),
        )
        .await;
        assert_eq!(
            answer.expect("a request waited on the table update").0,
            StatusCode::OK
        );
    }
    release.send(()).unwrap();
    updater.join().unwrap();
    assert_eq!(
        router.post(PATH, Some(TOKEN), UPDATE).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        router.post("next-path", Some(TOKEN), UPDATE).await.0,
        StatusCode::OK
    );
    router.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_request_in_flight_finish_and_accepts_no_more() {
    let backend = Backend::start().await.unwrap();
    backend.set_reply(Reply {
        delay: Duration::from_millis(1500),
        body: "late but here".into(),
        ..Reply::default()
    });
    let router = Router::start(
        &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
        limits(),
        Duration::from_secs(5),
    )
    .await;
    let url = router.url(PATH);
    let in_flight = tokio::spawn(async move {
        let response = client()
            .post(url)
            .header(SECRET_TOKEN_HEADER, TOKEN)
            .body(UPDATE)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let addr = router.addr;
    router.shutdown().await;
    assert_eq!(
        in_flight.await.unwrap(),
        (StatusCode::OK, "late but here".into())
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn with_the_allow_list_only_telegram_behind_a_trusted_proxy_gets_through() {
    let backend = Backend::start().await.unwrap();
    let bots = [bot("ns", "a", PATH, TOKEN, port_of(&backend))];
    let direct = Router::start_with(
        &bots,
        Config {
            source_filter: Some(SourceFilter::telegram(Vec::new())),
            ..Config::default()
        },
    )
    .await;
    // Loopback is not Telegram, whatever it claims to forward for.
    let spoofed = client()
        .post(direct.url(PATH))
        .header(SECRET_TOKEN_HEADER, TOKEN)
        .header("x-forwarded-for", "149.154.167.99")
        .body(UPDATE)
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::FORBIDDEN);
    direct.shutdown().await;

    let behind_proxy = Router::start_with(
        &bots,
        Config {
            source_filter: Some(SourceFilter::telegram(vec![
                "127.0.0.1/32".parse().unwrap(),
            ])),
            ..Config::default()
        },
    )
    .await;
    let send = |forwarded_for: Option<&'static str>| {
        let mut request = client()
            .post(behind_proxy.url(PATH))
            .header(SECRET_TOKEN_HEADER, TOKEN)
            .body(UPDATE);
        if let Some(value) = forwarded_for {
            request = request.header("x-forwarded-for", value);
        }
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(send(Some("149.154.167.99")).await, StatusCode::OK);
    assert_eq!(send(None).await, StatusCode::FORBIDDEN, "the proxy itself");
    assert_eq!(
        send(Some("149.154.167.99, 203.0.113.9")).await,
        StatusCode::FORBIDDEN,
        "the nearest untrusted hop is the client"
    );
    assert_eq!(backend.received().len(), 1);
    behind_proxy.shutdown().await;
}

#[tokio::test]
async fn a_path_prefix_routes_only_under_it() {
    let backend = Backend::start().await.unwrap();
    let router = Router::start_with(
        &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
        Config {
            prefix: "/telegram".parse().unwrap(),
            ..Config::default()
        },
    )
    .await;
    let at = |path: String| {
        client()
            .post(format!("http://{}{path}", router.addr))
            .header(SECRET_TOKEN_HEADER, TOKEN)
            .body(UPDATE)
            .send()
    };
    assert_eq!(
        at(format!("/telegram/webhook/{PATH}"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        at(format!("/webhook/{PATH}")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        at(format!("/other/webhook/{PATH}")).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    router.shutdown().await;
}

/// One arbitrary request: method, path, secret-token headers, body.
#[derive(Debug, Clone)]
struct AnyRequest {
    method: String,
    path: String,
    tokens: Vec<String>,
    body: Vec<u8>,
}

fn arbitrary_request() -> impl proptest::strategy::Strategy<Value = AnyRequest> {
    use proptest::prelude::*;
    let method = prop_oneof![
        4 => Just("POST".to_string()),
        1 => prop::sample::select(vec!["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW"]).prop_map(str::to_string),
    ];
    // Printable ASCII without space: what can stand in a request line.
    let segment = "[!-~&&[^ ]]{0,80}";
    let path = prop_oneof![
        3 => Just(format!("/webhook/{PATH}")),
        2 => segment.prop_map(|s| format!("/webhook/{s}")),
        1 => segment.prop_map(|s| format!("/{s}")),
        1 => Just(format!("/webhook/{PATH}/..")),
        1 => Just(format!("/webhook/%{}", &PATH[1..])),
    ];
    let token = prop_oneof![
        3 => Just(TOKEN.to_string()),
        1 => "[!-~]{0,300}",
        1 => Just(format!("{TOKEN} ")),
    ];
    let tokens = prop::collection::vec(token, 0..3);
    let body = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..512),
        1 => prop::collection::vec(any::<u8>(), 1025..4096),
    ];
    (method, path, tokens, body).prop_map(|(method, path, tokens, body)| AnyRequest {
        method,
        path,
        tokens,
        body,
    })
}

#[test]
fn arbitrary_requests_get_a_bare_answer_and_only_a_valid_pair_is_forwarded() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (router, backend) = runtime.block_on(async {
        let backend = Backend::start().await.unwrap();
        let router = Router::start(
            &[bot("ns", "a", PATH, TOKEN, port_of(&backend))],
            Limits {
                max_body_bytes: 1024,
                ..limits()
            },
            Duration::from_secs(5),
        )
        .await;
        (router, backend)
    });
    let bodies: Vec<&str> = [
        "bad request\n",
        "not found\n",
        "unauthorized\n",
        "method not allowed\n",
        "payload too large\n",
    ]
    .into();
    let mut runner =
        proptest::test_runner::TestRunner::new(proptest::test_runner::Config::with_cases(300));
    runner
        .run(&arbitrary_request(), |request| {
            let forwarded_before = backend.received().len();
            let mut raw_request = format!(
                "{} {} HTTP/1.1\r\nhost: router\r\nconnection: close\r\n",
                request.method, request.path
            );
            for token in &request.tokens {
                raw_request.push_str(&format!("{SECRET_TOKEN_HEADER}: {token}\r\n"));
            }
            raw_request.push_str(&format!("content-length: {}\r\n\r\n", request.body.len()));
            let mut bytes = raw_request.into_bytes();
            bytes.extend_from_slice(&request.body);
            let answer = runtime.block_on(raw(router.addr, &bytes, Duration::from_secs(5)));
            let status: u16 = answer.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
            let valid = request.method == "POST"
                && request.path == format!("/webhook/{PATH}")
                // Whitespace around a header value is not part of it (RFC 9110, 5.5).
                && request.tokens.len() == 1
                && request.tokens[0].trim_matches([' ', '\t']) == TOKEN
                && request.body.len() <= 1024;
            let forwarded = backend.received().len() - forwarded_before;
            if valid {
                proptest::prop_assert_eq!((status, forwarded), (200, 1), "{}", answer);
            } else {
                proptest::prop_assert!(
                    matches!(status, 400 | 401 | 404 | 405 | 413),
                    "{status} for {request:?}: {answer}"
                );
                proptest::prop_assert_eq!(forwarded, 0, "forwarded without a valid pair");
                proptest::prop_assert!(
                    body.is_empty() || bodies.contains(&body),
                    "an answer with detail: {body:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    runtime.block_on(router.shutdown());
}
