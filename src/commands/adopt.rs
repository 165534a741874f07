//! `managedbot adopt`: brings bots that already exist under managedbot. The
//! system managedbot grew out of ran a one-off script that gave every bot a
//! webhook secret and printed its URL; here the token Secrets people already
//! have become ManagedBot manifests, printed for GitOps or applied, and once
//! applied each bot's webhook URL is listed when it is registered.

use std::time::Duration;

use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use serde_json::json;

use super::{FIELD_MANAGER, Failure, Format, Scope, not_ready_because, wait_for};
use crate::{
    resource::{DEFAULT_TOKEN_KEY, ManagedBot},
    telegram::BotToken,
};

/// Options of `managedbot adopt`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("secrets").required(true).args(["names", "selector"]))]
#[command(group = clap::ArgGroup::new("backend").required(true).args(["backend_service", "backend_url"]))]
pub struct AdoptArgs {
    /// Token Secrets to adopt, by name.
    pub names: Vec<String>,
    /// Adopt the token Secrets matching this label selector (e.g. app=telegram-bot).
    #[arg(long, short = 'l')]
    pub selector: Option<String>,
    /// The namespace of the Secrets and the bots (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// The data key holding the token.
    #[arg(long, default_value = DEFAULT_TOKEN_KEY)]
    pub key: String,
    /// Each bot's backend Service as NAME:PORT; `{bot}` in NAME is the bot's name.
    #[arg(long, value_name = "NAME:PORT")]
    pub backend_service: Option<String>,
    /// Each bot's backend URL; `{bot}` in it is the bot's name.
    #[arg(long, value_name = "URL")]
    pub backend_url: Option<String>,
    /// Path appended to the backend Service address (e.g. /telegram).
    #[arg(long)]
    pub backend_path: Option<String>,
    /// spec.webhook.baseUrl of every bot (default: the controller's --public-base-url).
    #[arg(long)]
    pub base_url: Option<String>,
    /// Apply the manifests, wait for the bots to be Ready and list their URLs.
    #[arg(long)]
    pub apply: bool,
    /// How long --apply waits for every bot to be Ready.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Manifest format without --apply (default YAML); with --apply, the URLs as data.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

/// The bot a token Secret becomes: `support-bot-token` → `support-bot`.
pub fn bot_name(secret: &str) -> &str {
    secret
        .strip_suffix("-token")
        .filter(|name| !name.is_empty())
        .unwrap_or(secret)
}

/// The backend every adopted bot gets, with `{bot}` still to fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A Service in the namespace.
    Service {
        name: String,
        port: u16,
        path: Option<String>,
    },
    /// A URL.
    Url(String),
}

impl Backend {
    /// From the flags; clap makes sure exactly one is given.
    pub fn parse(args: &AdoptArgs) -> anyhow::Result<Self> {
        if let Some(service) = &args.backend_service {
            let (name, port) = service.rsplit_once(':').ok_or_else(|| {
                anyhow::anyhow!("--backend-service takes NAME:PORT, not {service:?}")
            })?;
            let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| {
                anyhow::anyhow!("--backend-service: {port:?} is not a port (1-65535)")
            })?;
            if let Some(path) = &args.backend_path
                && !path.starts_with('/')
            {
                anyhow::bail!("--backend-path must start with /, not {path:?}");
            }
            return Ok(Self::Service {
                name: name.to_string(),
                port,
                path: args.backend_path.clone(),
            });
        }
        let url = args.backend_url.clone().unwrap_or_default();
        let parsed = url::Url::parse(&url.replace("{bot}", "bot"))
            .map_err(|e| anyhow::anyhow!("--backend-url {url:?} is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("--backend-url must be an http:// or https:// URL, not {url:?}");
        }
        Ok(Self::Url(url))
    }

    fn spec(&self, bot: &str) -> serde_json::Value {
        match self {
            Self::Service { name, port, path } => {
                let mut spec =
                    json!({"service": {"name": name.replace("{bot}", bot), "port": port}});
                if let Some(path) = path {
                    spec["path"] = json!(path);
                }
                spec
            }
            Self::Url(url) => json!({"url": url.replace("{bot}", bot)}),
        }
    }
}

/// One Secret and what adopting it takes.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// The manifest of a new bot.
    Adopt(serde_json::Value),
    /// A ManagedBot already uses this Secret.
    AlreadyAdopted { secret: String, bot: String },
    /// It cannot be adopted, and why (never showing the token).
    Refused { secret: String, why: String },
}

/// What adopting `secret` in `namespace` takes, given the bots already there.
pub fn judge(
    secret: &Secret,
    namespace: &str,
    key: &str,
    backend: &Backend,
    base_url: Option<&str>,
    existing: &[ManagedBot],
) -> Verdict {
    let secret_name = secret.metadata.name.clone().unwrap_or_default();
    let refused = |why: String| Verdict::Refused {
        secret: secret_name.clone(),
        why,
    };
    if let Some(bot) = existing
        .iter()
        .find(|b| b.spec.token_secret_ref.name == secret_name)
    {
        return Verdict::AlreadyAdopted {
            secret: secret_name.clone(),
            bot: bot.metadata.name.clone().unwrap_or_default(),
        };
    }
    let name = bot_name(&secret_name);
    if existing
        .iter()
        .any(|b| b.metadata.name.as_deref() == Some(name))
    {
        return refused(format!(
            "a ManagedBot named {name} already exists and uses another Secret"
        ));
    }
    let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) else {
        let keys: Vec<&str> = secret
            .data
            .iter()
            .flat_map(|d| d.keys().map(String::as_str))
            .collect();
        return refused(format!("it has no key {key:?} (keys: {})", keys.join(", ")));
    };
    if let Err(error) = BotToken::parse(&String::from_utf8_lossy(&value.0)) {
        return refused(format!("its {key:?} is not a bot token: {error}"));
    }
    let mut spec = json!({
        "tokenSecretRef": {"name": secret_name},
        "backend": backend.spec(name),
    });
    if key != DEFAULT_TOKEN_KEY {
        spec["tokenSecretRef"]["key"] = json!(key);
    }
    if let Some(base_url) = base_url {
        spec["webhook"] = json!({"baseUrl": base_url});
    }
    Verdict::Adopt(json!({
        "apiVersion": "managedbot.dev/v1alpha1",
        "kind": "ManagedBot",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

/// Runs `managedbot adopt`.
pub async fn run(args: AdoptArgs) -> anyhow::Result<()> {
    let backend = Backend::parse(&args)?;
    let scope = Scope::infer(args.namespace.clone()).await?;
    let secrets_api: Api<Secret> = Api::namespaced(scope.client.clone(), &scope.namespace);
    let secrets = match &args.selector {
        Some(selector) => {
            let listed = secrets_api
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| scope.explain(e, "list", "Secrets"))?
                .items;
            if listed.is_empty() {
                return Err(Failure::NotFound(format!(
                    "no Secret matches {selector:?} in namespace {}",
                    scope.namespace
                ))
                .into());
            }
            listed
        }
        None => {
            let mut found = Vec::new();
            for name in &args.names {
                let secret = secrets_api
                    .get(name)
                    .await
                    .map_err(|e| scope.explain(e, "get", &format!("Secret {name}")))?;
                found.push(secret);
            }
            found
        }
    };
    let existing = scope
        .bots()
        .list(&ListParams::default())
        .await
        .map_err(|e| scope.explain(e, "list", "ManagedBots"))?
        .items;
    let mut manifests = Vec::new();
    let mut refusals = Vec::new();
    for secret in &secrets {
        match judge(
            secret,
            &scope.namespace,
            &args.key,
            &backend,
            args.base_url.as_deref(),
            &existing,
        ) {
            Verdict::Adopt(manifest) => manifests.push(manifest),
            Verdict::AlreadyAdopted { secret, bot } => {
                eprintln!("skipping Secret {secret}: ManagedBot {bot} already uses it");
            }
            Verdict::Refused { secret, why } => refusals.push(format!("Secret {secret}: {why}")),
        }
    }
    if !refusals.is_empty() {
        // Nothing is printed or applied: a partial adoption is harder to
        // reason about than none.
        anyhow::bail!("cannot adopt:\n  {}", refusals.join("\n  "));
    }
    if !args.apply {
        print!("{}", render_manifests(&manifests, args.output)?);
        return Ok(());
    }
    let mut names = Vec::new();
    for manifest in &manifests {
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        scope
            .bots()
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER),
                &Patch::Apply(manifest),
            )
            .await
            .map_err(|e| scope.explain(e, "create", &format!("ManagedBot {name}")))?;
        eprintln!("{}/{name}: applied", scope.namespace);
        names.push(name);
    }
    let waited = wait_for(&scope, &names, args.timeout, |bot| {
        not_ready_because(bot).is_none()
    })
    .await?;
    if !waited.waiting.is_empty() {
        for url in &waited.done {
            println!("{}\t{}", url.name, url.webhook_url);
        }
        return Err(Failure::NotReady(format!(
            "{} of {} bots not Ready after {}s: {}",
            waited.waiting.len(),
            names.len(),
            args.timeout.as_secs(),
            waited.waiting.join("; ")
        ))
        .into());
    }
    let urls = waited.done;
    match args.output {
        Some(format) => print!("{}", format.render(&urls)?),
        None => {
            let width = urls.iter().map(|u| u.name.len()).max().unwrap_or(0).max(4);
            println!("{:<width$}  WEBHOOK URL", "NAME");
            for url in &urls {
                println!("{:<width$}  {}", url.name, url.webhook_url);
            }
        }
    }
    Ok(())
}

/// The manifests as a YAML stream, or as a JSON `List`.
pub fn render_manifests(
    manifests: &[serde_json::Value],
    format: Option<Format>,
) -> anyhow::Result<String> {
    Ok(match format {
        Some(Format::Json) => {
            Format::Json.render(&json!({"apiVersion": "v1", "kind": "List", "items": manifests}))?
        }
        _ => {
            let mut out = String::new();
            for manifest in manifests {
                out.push_str("---\n");
                out.push_str(&serde_yaml_ng::to_string(manifest)?);
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    const TOKEN: &str = "123456:ABC-DEF1234ghIkl-zyx57W2v1u123ew11";

    fn secret(name: &str, key: &str, value: &str) -> Secret {
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            data: Some([(key.to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            ..Default::default()
        }
    }

    fn service() -> Backend {
        Backend::Service {
            name: "{bot}".into(),
            port: 8080,
            path: Some("/telegram".into()),
        }
    }

    fn existing(name: &str, secret: &str) -> ManagedBot {
        serde_json::from_value(json!({
            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
            "metadata": {"name": name, "namespace": "bots"},
            "spec": {"tokenSecretRef": {"name": secret}, "backend": {"url": "http://x/"}},
        }))
        .unwrap()
    }

    #[test]
    fn names_drop_a_token_suffix() {
        assert_eq!(bot_name("support-bot-token"), "support-bot");
        assert_eq!(bot_name("support"), "support");
        assert_eq!(bot_name("-token"), "-token");
    }

    #[test]
    fn a_token_secret_becomes_a_manifest() {
        let verdict = judge(
            &secret("support-token", "tg", TOKEN),
            "bots",
            "tg",
            &service(),
            Some("https://bots.example.com"),
            &[],
        );
        let Verdict::Adopt(manifest) = verdict else {
            panic!("{verdict:?}")
        };
        assert_eq!(
            manifest,
            json!({
                "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
                "metadata": {"name": "support", "namespace": "bots"},
                "spec": {
                    "tokenSecretRef": {"name": "support-token", "key": "tg"},
                    "backend": {"service": {"name": "support", "port": 8080}, "path": "/telegram"},
                    "webhook": {"baseUrl": "https://bots.example.com"},
                },
            })
        );
        let bot: ManagedBot = serde_json::from_value(manifest).unwrap();
        assert_eq!(bot.spec.token_secret_ref.key(), "tg");
    }

    #[test]
    fn bad_secrets_are_refused_without_showing_the_token_and_used_ones_skipped() {
        let url = Backend::Url("https://{bot}.example.com/hook".into());
        let wrong = secret("a-token", "token", "123456-ABC-DEF1234ghIkl");
        let Verdict::Refused { why, .. } = judge(&wrong, "bots", "token", &url, None, &[]) else {
            panic!()
        };
        assert!(why.contains("not a bot token"), "{why}");
        assert!(!why.contains("ABC-DEF1234ghIkl"), "{why}");
        let Verdict::Refused { why, .. } = judge(
            &secret("b", "other", TOKEN),
            "bots",
            "token",
            &url,
            None,
            &[],
        ) else {
            panic!()
        };
        assert_eq!(why, "it has no key \"token\" (keys: other)");
        let taken = [existing("c", "c-old-token")];
        let Verdict::Refused { why, .. } = judge(
            &secret("c-token", "token", TOKEN),
            "bots",
            "token",
            &url,
            None,
            &taken,
        ) else {
            panic!()
        };
        assert!(why.contains("ManagedBot named c already exists"), "{why}");
        let used = [existing("d-bot", "d-token")];
        assert_eq!(
            judge(
                &secret("d-token", "token", TOKEN),
                "bots",
                "token",
                &url,
                None,
                &used
            ),
            Verdict::AlreadyAdopted {
                secret: "d-token".into(),
                bot: "d-bot".into()
            }
        );
        let Verdict::Adopt(manifest) = judge(
            &secret("e-token", "token", TOKEN),
            "bots",
            "token",
            &url,
            None,
            &used,
        ) else {
            panic!()
        };
        assert_eq!(
            manifest["spec"]["backend"],
            json!({"url": "https://e.example.com/hook"})
        );
        assert!(manifest["spec"].get("webhook").is_none());
    }

    #[test]
    fn manifests_render_as_a_yaml_stream_or_a_json_list() {
        let manifests = [
            json!({"kind": "ManagedBot", "metadata": {"name": "a"}}),
            json!({"kind": "ManagedBot"}),
        ];
        let yaml = render_manifests(&manifests, None).unwrap();
        assert_eq!(yaml.matches("---\n").count(), 2);
        assert!(yaml.contains("name: a"));
        let list: serde_json::Value =
            serde_json::from_str(&render_manifests(&manifests, Some(Format::Json)).unwrap())
                .unwrap();
        assert_eq!(list["kind"], "List");
        assert_eq!(list["items"].as_array().unwrap().len(), 2);
    }
}
