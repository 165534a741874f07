//! The operator-user commands: `rotate`, `status`, `url` and `adopt`, for
//! people and scripts (also as the kubectl plugin `kubectl managedbot`).
//! Each fails with an [`Failure`] whose exit code a script can branch on.

pub mod adopt;
pub mod rotate;
pub mod show;

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use kube::{Api, Client, Config, api::ListParams};

use crate::resource::ManagedBot;

/// The field manager of every write these commands make.
pub const FIELD_MANAGER: &str = "managedbot-cli";

/// A failure a script can tell apart by the process's exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The bot (or Secret) does not exist: exit code 3.
    #[error("{0}")]
    NotFound(String),
    /// The bot exists but is not Ready, or did not get there in time: exit code 4.
    #[error("{0}")]
    NotReady(String),
    /// RBAC does not allow what was asked: exit code 5.
    #[error("{0}")]
    Forbidden(String),
}

impl Failure {
    /// The process exit code of this failure. Other errors exit 1; clap's
    /// usage errors exit 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotFound(_) => 3,
            Self::NotReady(_) => 4,
            Self::Forbidden(_) => 5,
        }
    }
}

/// The exit code of a command's error.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    error
        .downcast_ref::<Failure>()
        .map_or(1, Failure::exit_code)
}

/// Output of data for scripts.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

impl Format {
    /// `value` in this format, ending with a newline.
    pub fn render(self, value: &impl serde::Serialize) -> anyhow::Result<String> {
        Ok(match self {
            Self::Json => serde_json::to_string_pretty(value)? + "\n",
            Self::Yaml => serde_yaml_ng::to_string(value)?,
        })
    }
}

/// A client and the namespace to act in: `--namespace`, else the
/// kubeconfig context's namespace (what kubectl would use).
pub struct Scope {
    /// The Kubernetes client.
    pub client: Client,
    /// The namespace.
    pub namespace: String,
}

impl Scope {
    /// From the kubeconfig (or the in-cluster config).
    pub async fn infer(namespace: Option<String>) -> anyhow::Result<Self> {
        let config = Config::infer().await.map_err(|e| {
            anyhow::anyhow!(
                "no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {e}"
            )
        })?;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        Ok(Self {
            client: Client::try_from(config)?,
            namespace,
        })
    }

    /// The ManagedBots of the namespace.
    pub fn bots(&self) -> Api<ManagedBot> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// One bot, with a clear error when it is missing or forbidden.
    pub async fn bot(&self, name: &str) -> anyhow::Result<ManagedBot> {
        self.bots()
            .get(name)
            .await
            .map_err(|e| self.explain(e, "get", &format!("ManagedBot {name}")))
    }

    /// Turns a Kubernetes error into a [`Failure`] where one applies.
    pub fn explain(&self, error: kube::Error, verb: &str, what: &str) -> anyhow::Error {
        let namespace = &self.namespace;
        match &error {
            kube::Error::Api(status) if status.code == 404 => {
                Failure::NotFound(format!("{what} not found in namespace {namespace}")).into()
            }
            kube::Error::Api(status) if status.code == 403 => Failure::Forbidden(format!(
                "not allowed to {verb} {what} in namespace {namespace}: {}",
                status.message
            ))
            .into(),
            _ => {
                anyhow::Error::new(error).context(format!("{verb} {what} in namespace {namespace}"))
            }
        }
    }
}

/// `namespace/name`.
pub struct Key<'a>(pub &'a ManagedBot);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let meta = &self.0.metadata;
        write!(
            f,
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    }
}

/// The Ready condition's (status, reason, message), if any.
pub fn ready(bot: &ManagedBot) -> Option<(&str, &str, &str)> {
    let status = bot.status.as_ref()?;
    crate::controller::status::condition(status, crate::controller::status::READY)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// Why a bot is not Ready, in a sentence, or `None` when it is.
pub fn not_ready_because(bot: &ManagedBot) -> Option<String> {
    match ready(bot) {
        Some(("True", _, _)) => None,
        Some((status, reason, message)) => Some(format!("Ready={status} {reason}: {message}")),
        None => Some("not reconciled yet (is the controller running?)".into()),
    }
}

/// Where a wait for several bots ended: the URLs of those done, and why
/// each other one is not (empty when all are done).
pub struct Waited {
    /// The bots done, in the order asked for.
    pub done: Vec<show::BotUrl>,
    /// `namespace/name: why` for each bot not done when the time ran out.
    pub waiting: Vec<String>,
}

/// Polls the bots `names` until `done` holds for each or `timeout` passes,
/// saying every few seconds which are still waited for. Several bots cost
/// one list a round, not a read each.
pub async fn wait_for(
    scope: &Scope,
    names: &[String],
    timeout: Duration,
    done: impl Fn(&ManagedBot) -> bool,
) -> anyhow::Result<Waited> {
    let started = Instant::now();
    let mut last_report = Instant::now();
    loop {
        let listed: Option<HashMap<String, ManagedBot>> = if names.len() > 1 {
            let list = scope
                .bots()
                .list(&ListParams::default())
                .await
                .map_err(|e| scope.explain(e, "list", "ManagedBots"))?;
            Some(
                list.items
                    .into_iter()
                    .filter_map(|b| Some((b.metadata.name.clone()?, b)))
                    .collect(),
            )
        } else {
            None
        };
        let mut waited = Waited {
            done: Vec::new(),
            waiting: Vec::new(),
        };
        for name in names {
            let bot = match listed.as_ref().and_then(|l| l.get(name)) {
                Some(bot) => bot.clone(),
                None => scope.bot(name).await?,
            };
            if done(&bot) {
                waited.done.push(show::BotUrl::of(&bot)?);
            } else {
                let why = not_ready_because(&bot)
                    .unwrap_or_else(|| "the controller has not acted on it yet".into());
                waited.waiting.push(format!("{}: {why}", Key(&bot)));
            }
        }
        if waited.waiting.is_empty() || started.elapsed() >= timeout {
            return Ok(waited);
        }
        if last_report.elapsed() >= Duration::from_secs(3) {
            eprintln!(
                "waiting {}s for {} of {} bots: {}",
                started.elapsed().as_secs(),
                waited.waiting.len(),
                names.len(),
                waited.waiting.join("; ")
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
