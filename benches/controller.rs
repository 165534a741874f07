//! The controller against the real control plane and the API server's own
//! limit, in one run:
//!
//! - N bots applied at once: time until all are Ready, against the baseline
//!   of the least API work those bots need (a plain client creating N
//!   Secrets and patching N statuses at the same concurrency);
//! - Telegram calls per bot at creation, and in a steady minute the writes
//!   (from the API server's request metrics) and setWebhook calls (from the
//!   fake Telegram's log), both of which should be 0;
//! - rotating all N: time until every new pair is registered;
//! - the controller's RSS at N and at a larger M;
//! - the router's RSS with R routes from a real watch.
//!
//! `cargo bench --bench controller -- --help` lists the knobs. Progress goes
//! to stderr, a Markdown section to stdout (and `--out`).

use std::{
    collections::HashMap,
    path::PathBuf,
    process::Stdio,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use managedbot::resource::ManagedBot;
use testbed::{ControlPlane, FakeTelegram};

#[derive(Parser, Debug)]
#[command(about = "The controller (and the router's memory) against the real control plane")]
struct Args {
    /// Bots of the main measurement.
    #[arg(long, default_value_t = 1000)]
    bots: usize,
    /// Bots in all for the second memory figure.
    #[arg(long, default_value_t = 10_000)]
    more_bots: usize,
    /// Routes loaded into the router for its memory figure (0: skip).
    #[arg(long, default_value_t = 100_000)]
    routes: usize,
    /// Requests at once, for the controller (--concurrency) and the baseline alike.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// How long the converged bots are watched for writes and calls.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// Also write the Markdown section here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Ignored: cargo bench passes it.
    #[arg(long, hide = true)]
    bench: bool,
}

fn progress(message: impl std::fmt::Display) {
    eprintln!("[bench controller] {message}");
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The control plane's processes die with the thread that started them: this one.
    let plane = ControlPlane::start().context("starting the control plane")?;
    let runtime = tokio::runtime::Runtime::new()?;
    let report = runtime.block_on(run(&args, &plane))?;
    print!("{report}");
    if let Some(out) = &args.out {
        std::fs::write(out, &report)?;
    }
    Ok(())
}

struct Bed<'a> {
    args: &'a Args,
    plane: &'a ControlPlane,
    client: Client,
    telegram: FakeTelegram,
    tokens: Vec<String>,
}

async fn run(args: &Args, plane: &ControlPlane) -> anyhow::Result<String> {
    let client = plane.client().await?;
    let status = plane
        .kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(repo().join("crds/managedbot.yaml"))
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("installing the CRD failed");
    }
    plane
        .kubectl()
        .args([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/managedbots.managedbot.dev",
        ])
        .stdout(Stdio::null())
        .status()?;
    let telegram = FakeTelegram::start().await?;
    let count = args.bots.max(args.more_bots);
    progress(format!("registering {count} bots with the fake Telegram"));
    let tokens = (0..count)
        .map(|i| telegram.add_bot(1_000_000 + i as i64, &format!("bench_{i}_bot")))
        .collect();
    let bed = Bed {
        args,
        plane,
        client,
        telegram,
        tokens,
    };
    let mut out = String::from("## The controller against the API server's own limit\n\n");
    out.push_str(&format!(
        "Concurrency {} (the controller's --concurrency and the baseline's requests at once); a local \
         control plane (etcd, kube-apiserver) on the same 2 cores.\n\n",
        args.concurrency
    ));
    bed.controller(&mut out).await?;
    if args.routes > 0 {
        bed.router_memory(&mut out).await?;
    }
    Ok(out)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

async fn namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;
    Ok(())
}

fn token_secret(name: &str, token: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(format!("{name}-token")),
            ..Default::default()
        },
        string_data: Some([("token".to_string(), token.to_string())].into()),
        ..Default::default()
    }
}

fn bot(name: &str) -> anyhow::Result<ManagedBot> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
        "metadata": {"name": name},
        "spec": {"tokenSecretRef": {"name": format!("{name}-token")},
                 "backend": {"service": {"name": name, "port": 8080}}},
    }))?)
}

fn name(i: usize) -> String {
    format!("bot-{i:05}")
}

/// Runs `f` over `items` with `concurrency` at once, failing on the first error.
async fn concurrently<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    concurrency: usize,
    f: F,
) -> anyhow::Result<()>
where
    F: Fn(T) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    stream::iter(items.into_iter().map(f))
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

fn ready(bot: &ManagedBot) -> bool {
    bot.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// Watches until `done` holds for `count` bots of the namespace; the time it
/// took from `since`. A watch, not a polled list: listing a thousand bots
/// every moment would load the API server more than the controller does.
async fn until(
    client: &Client,
    namespace: &str,
    count: usize,
    what: &str,
    since: Instant,
    done: impl Fn(&ManagedBot) -> bool,
) -> anyhow::Result<Duration> {
    use kube::runtime::{WatchStreamExt as _, watcher};
    let api: Api<ManagedBot> = Api::namespaced(client.clone(), namespace);
    let mut states: HashMap<String, bool> = HashMap::new();
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut last_report = Instant::now();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await;
        match event {
            Ok(Some(Ok(watcher::Event::Apply(bot) | watcher::Event::InitApply(bot)))) => {
                states.insert(bot.metadata.name.clone().unwrap_or_default(), done(&bot));
            }
            Ok(Some(Ok(watcher::Event::Delete(bot)))) => {
                states.remove(&bot.metadata.name.clone().unwrap_or_default());
            }
            Ok(Some(Ok(watcher::Event::Init | watcher::Event::InitDone))) | Err(_) => {}
            Ok(Some(Err(error))) => progress(format!("  watch: {error}")),
            Ok(None) => bail!("the watch ended"),
        }
        let n = states.values().filter(|done| **done).count();
        if n >= count {
            return Ok(since.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            progress(format!(
                "  {n}/{count} {what} after {:.0}s",
                since.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        if since.elapsed() > Duration::from_secs(1800) {
            bail!("only {n} of {count} bots {what} after 30 minutes");
        }
    }
}

fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

const WRITES: &[&str] = &["POST", "PUT", "PATCH", "APPLY", "DELETE"];
const READS: &[&str] = &["GET", "LIST"];

/// Requests the API server has answered for the controller's resources, by
/// `verb resource[/subresource]`, from its own metrics.
async fn api_requests(client: &Client) -> anyhow::Result<HashMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut requests = HashMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(&format!(",{name}=\""))
                .nth(1)
                .or_else(|| labels.split(&format!("{{{name}=\"")).nth(1))
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_string()
        };
        let resource = label("resource");
        if !matches!(resource.as_str(), "managedbots" | "secrets" | "events") {
            continue;
        }
        let subresource = label("subresource");
        let key = if subresource.is_empty() {
            format!("{} {resource}", label("verb"))
        } else {
            format!("{} {resource}/{subresource}", label("verb"))
        };
        *requests.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(requests)
}

/// The requests of `verbs` between two snapshots, in all and by key.
fn delta(
    before: &HashMap<String, f64>,
    after: &HashMap<String, f64>,
    verbs: &[&str],
) -> (f64, Vec<(String, f64)>) {
    let mut by_key: Vec<(String, f64)> = after
        .iter()
        .filter(|(key, _)| {
            verbs
                .iter()
                .any(|verb| key.starts_with(&format!("{verb} ")))
        })
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, value)| *value > 0.0)
        .collect();
    by_key.sort_by(|a, b| a.0.cmp(&b.0));
    (by_key.iter().map(|(_, v)| v).sum(), by_key)
}

impl Bed<'_> {
    fn concurrency(&self) -> usize {
        self.args.concurrency
    }

    /// Creates bots `range` (token Secret, then ManagedBot) in `namespace`.
    async fn apply(&self, namespace: &str, range: std::ops::Range<usize>) -> anyhow::Result<()> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let bots: Api<ManagedBot> = Api::namespaced(self.client.clone(), namespace);
        concurrently(range, self.concurrency(), |i| {
            let (secrets, bots) = (secrets.clone(), bots.clone());
            let token = self.tokens[i].clone();
            async move {
                let name = name(i);
                secrets
                    .create(&PostParams::default(), &token_secret(&name, &token))
                    .await?;
                bots.create(&PostParams::default(), &bot(&name)?).await?;
                Ok(())
            }
        })
        .await
    }

    /// The least API work N bots need from whoever registers them: one
    /// Secret created and one status patched per bot, at the same concurrency.
    async fn baseline(&self, n: usize) -> anyhow::Result<Duration> {
        let ns = "baseline";
        namespace(&self.client, ns).await?;
        let bots: Api<ManagedBot> = Api::namespaced(self.client.clone(), ns);
        concurrently(0..n, self.concurrency(), |i| {
            let bots = bots.clone();
            async move {
                bots.create(&PostParams::default(), &bot(&name(i))?).await?;
                Ok(())
            }
        })
        .await?;
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        let started = Instant::now();
        concurrently(0..n, self.concurrency(), |i| {
            let (secrets, bots) = (secrets.clone(), bots.clone());
            async move {
                let name = name(i);
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(format!("{name}-webhook")),
                        ..Default::default()
                    },
                    string_data: Some([("webhook-secret".to_string(), format!("secret-{i}"))].into()),
                    ..Default::default()
                };
                secrets.create(&PostParams::default(), &secret).await?;
                let status = serde_json::json!({"status": {"webhookUrl": format!("https://bots.example.com/webhook/{i}")}});
                bots.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                Ok(())
            }
        })
        .await?;
        Ok(started.elapsed())
    }

    async fn controller(&self, out: &mut String) -> anyhow::Result<()> {
        let n = self.args.bots;
        progress(format!(
            "baseline: a plain client creates {n} Secrets and patches {n} statuses"
        ));
        let baseline = self.baseline(n).await?;
        progress(format!("  {:.1}s", baseline.as_secs_f64()));

        let ns = "bench";
        namespace(&self.client, ns).await?;
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(self.plane.dir().join("controller.log"))?;
        let mut controller = tokio::process::Command::new(env!("CARGO_BIN_EXE_managedbot"))
            .arg("controller")
            .arg(format!("--namespace={ns}"))
            .arg(format!("--telegram-api-url={}", self.telegram.url()))
            .arg("--public-base-url=https://bots.example.com")
            .arg(format!("--metrics-listen=127.0.0.1:{metrics_port}"))
            .arg(format!("--concurrency={}", self.concurrency()))
            .arg("--leader-elect=false")
            .env("KUBECONFIG", self.plane.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = controller.id().context("the controller exited")?;
        let idle_rss = {
            tokio::time::sleep(Duration::from_secs(2)).await;
            rss_mib(pid)?
        };

        progress(format!("{n} bots applied at once; waiting for all Ready"));
        let requests_before = api_requests(&self.client).await?;
        let started = Instant::now();
        self.apply(ns, 0..n).await?;
        let applied = started.elapsed();
        let all_ready = until(&self.client, ns, n, "Ready", started, ready).await?;
        progress(format!(
            "  all Ready after {:.1}s (applying took {:.1}s)",
            all_ready.as_secs_f64(),
            applied.as_secs_f64()
        ));
        let calls = self.telegram.calls();
        let per_bot =
            |method: &str| calls.iter().filter(|c| c.method == method).count() as f64 / n as f64;
        let creation = (
            per_bot("getMe"),
            per_bot("setWebhook"),
            per_bot("getWebhookInfo"),
        );
        // Let the last status writes and Events land before the quiet minute.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let requests_after = api_requests(&self.client).await?;
        // Less the bench's own: one Secret and one ManagedBot created per bot.
        let (writes, write_kinds) = delta(&requests_before, &requests_after, WRITES);
        let (reads, _) = delta(&requests_before, &requests_after, READS);
        let controller_writes = (writes - 2.0 * n as f64) / n as f64;
        let write_kinds: Vec<String> = write_kinds
            .into_iter()
            .map(|(key, v)| format!("{key} {:.2}", v / n as f64))
            .collect();
        let rss_n = rss_mib(pid)?;

        progress(format!(
            "steady state: watching {n} converged bots for {}s",
            self.args.steady.as_secs()
        ));
        let writes_before = api_requests(&self.client).await?;
        let calls_before = self.telegram.calls().len();
        tokio::time::sleep(self.args.steady).await;
        let writes_after = api_requests(&self.client).await?;
        let steady_calls = &self.telegram.calls()[calls_before..];
        let steady_set = steady_calls
            .iter()
            .filter(|c| c.method == "setWebhook")
            .count();
        let steady_info = steady_calls
            .iter()
            .filter(|c| c.method == "getWebhookInfo")
            .count();
        let (steady_writes, _) = delta(&writes_before, &writes_after, WRITES);
        // -0.0 would print as "-0".
        let steady_writes = steady_writes + 0.0;

        progress(format!("rotating all {n}"));
        let bots: Api<ManagedBot> = Api::namespaced(self.client.clone(), ns);
        let value = "bench-rotation-1";
        let started = Instant::now();
        concurrently(0..n, self.concurrency(), |i| {
            let bots = bots.clone();
            async move {
                let patch = serde_json::json!({"metadata": {"annotations": {"managedbot.dev/rotate": value}}});
                bots.patch(&name(i), &PatchParams::default(), &Patch::Merge(&patch)).await?;
                Ok(())
            }
        })
        .await?;
        let rotated = until(&self.client, ns, n, "rotated", started, |b| {
            ready(b)
                && b.status
                    .as_ref()
                    .and_then(|s| s.rotation.as_ref())
                    .and_then(|r| r.observed.as_deref())
                    == Some(value)
        })
        .await?;
        progress(format!("  all rotated after {:.1}s", rotated.as_secs_f64()));

        let more = self.args.more_bots;
        let mut rss_more = None;
        if more > n {
            progress(format!(
                "{} more bots, {more} in all, for the controller's memory",
                more - n
            ));
            let started = Instant::now();
            self.apply(ns, n..more).await?;
            let took = until(&self.client, ns, more, "Ready", started, ready).await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            rss_more = Some((rss_mib(pid)?, took));
        }
        controller.kill().await?;

        let ratio = all_ready.as_secs_f64() / baseline.as_secs_f64();
        out.push_str(&format!(
            "| figure | value |\n| --- | ---: |\n\
             | {n} bots applied at once: all Ready | {:.1} s |\n\
             | baseline: {n} Secrets created + {n} statuses patched by a plain client | {:.1} s |\n\
             | ratio (goal ≤ 1.5) | {ratio:.2} |\n\
             | Telegram calls per bot at creation: getMe, setWebhook, getWebhookInfo | {:.2}, {:.2}, {:.2} |\n\
             | API requests per bot at creation, the controller's: writes, reads (GET) | {controller_writes:.2}, {:.2} |\n\
             | … writes per bot by kind (the bench's own Secret and ManagedBot included) | {} |\n\
             | steady {} s at N = {n}: API writes (managedbots, secrets, events) | {steady_writes:.0} |\n\
             | steady {} s at N = {n}: setWebhook calls, getWebhookInfo calls | {steady_set}, {steady_info} |\n\
             | rotating all {n} (one annotation patch each): all registered | {:.1} s |\n\
             | controller RSS: idle, at N = {n} | {idle_rss:.1} MiB, {rss_n:.1} MiB |\n",
            all_ready.as_secs_f64(),
            baseline.as_secs_f64(),
            creation.0,
            creation.1,
            creation.2,
            reads / n as f64,
            write_kinds.join(", "),
            self.args.steady.as_secs(),
            self.args.steady.as_secs(),
            rotated.as_secs_f64(),
        ));
        if let Some((rss, took)) = rss_more {
            out.push_str(&format!(
                "| controller RSS at N = {more} ({} more bots Ready in {:.1} s) | {rss:.1} MiB |\n",
                more - n,
                took.as_secs_f64()
            ));
        }
        out.push('\n');
        Ok(())
    }

    /// R bots with routing in their status, loaded by a router from a real watch.
    async fn router_memory(&self, out: &mut String) -> anyhow::Result<()> {
        let r = self.args.routes;
        let ns = "routes";
        namespace(&self.client, ns).await?;
        progress(format!(
            "creating {r} ManagedBots with status.routing for the router's memory"
        ));
        let bots: Api<ManagedBot> = Api::namespaced(self.client.clone(), ns);
        let started = Instant::now();
        let concurrency = self.concurrency() * 4;
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        concurrently(0..r, concurrency, |i| {
            let (bots, done) = (bots.clone(), done.clone());
            async move {
                let name = format!("route-{i:06}");
                bots.create(&PostParams::default(), &bot(&name)?).await?;
                let hash = |kind: &str| managedbot::controller::webhook_secret::sha256_hex(&format!("{kind}-{i}"));
                let status = serde_json::json!({"status": {"routing": {"current": {"pathSha256": hash("path"), "tokenSha256": hash("token")}}}});
                bots.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await?;
                let finished = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                if finished % 10_000 == 0 {
                    progress(format!("  {finished}/{r} after {:.0}s", started.elapsed().as_secs_f64()));
                }
                Ok(())
            }
        })
        .await?;
        let listen = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let metrics = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut router = tokio::process::Command::new(env!("CARGO_BIN_EXE_managedbot"))
            .arg("router")
            .arg(format!("--namespace={ns}"))
            .arg(format!("--listen={listen}"))
            .arg(format!("--metrics-listen={metrics}"))
            .env("KUBECONFIG", self.plane.kubeconfig())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = router.id().context("the router exited")?;
        let idle = rss_mib(pid).unwrap_or(0.0);
        let started = Instant::now();
        let http = reqwest::Client::new();
        loop {
            let text = http
                .get(format!("http://{metrics}/metrics"))
                .send()
                .await
                .ok();
            let text = match text {
                Some(response) => response.text().await.unwrap_or_default(),
                None => String::new(),
            };
            if text
                .lines()
                .any(|l| l == format!("managedbot_router_routes {r}"))
            {
                break;
            }
            if started.elapsed() > Duration::from_secs(600) {
                bail!("the router did not load {r} routes in 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let loaded = started.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = rss_mib(pid)?;
        router.kill().await?;
        progress(format!(
            "  router RSS {rss:.1} MiB with {r} routes (listed in {:.1}s)",
            loaded.as_secs_f64()
        ));
        out.push_str(&format!(
            "| router | value |\n| --- | ---: |\n\
             | RSS with {r} routes from a real watch (idle before: {idle:.1} MiB) | {rss:.1} MiB |\n\
             | time from start to all {r} routes in the table | {:.1} s |\n\n",
            loaded.as_secs_f64()
        ));
        Ok(())
    }
}
