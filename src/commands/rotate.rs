//! `managedbot rotate`: asks for a new webhook secret the way `kubectl
//! rollout restart` asks for new pods, by stamping an annotation, then waits
//! for the controller to register it and prints the new URL.

use std::time::Duration;

use clap::Args;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};

use super::{FIELD_MANAGER, Failure, Format, Scope, not_ready_because, wait_for};
use crate::resource::{ManagedBot, ROTATE_ANNOTATION, ROTATE_NOW_ANNOTATION};

/// Options of `managedbot rotate`.
#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["names", "all"]))]
pub struct RotateArgs {
    /// The ManagedBots to rotate.
    pub names: Vec<String>,
    /// Rotate every ManagedBot of the namespace.
    #[arg(long)]
    pub all: bool,
    /// Their namespace (default: the kubeconfig context's).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    /// Stop routing the old secret at once instead of after the grace
    /// period: for a secret that leaked.
    #[arg(long)]
    pub now: bool,
    /// How long to wait for the new secret to be registered.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Ask for the rotation and return without waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the new URLs as data.
    #[arg(long, short = 'o', value_enum)]
    pub output: Option<Format>,
}

/// The annotations that ask for a rotation named `value`, as a merge patch;
/// `now` also asks that it keep no grace period (and `null` removes a
/// rotate-now left from an earlier leak).
pub fn rotation_patch(value: &str, now: bool) -> serde_json::Value {
    serde_json::json!({
        "metadata": {"annotations": {
            ROTATE_ANNOTATION: value,
            ROTATE_NOW_ANNOTATION: if now { serde_json::Value::from(value) } else { serde_json::Value::Null },
        }}
    })
}

/// Whether the rotation named `value` has landed: the controller acted on it
/// and the bot is Ready with the new pair registered.
pub fn landed(bot: &ManagedBot, value: &str) -> bool {
    let observed = bot
        .status
        .as_ref()
        .and_then(|s| s.rotation.as_ref())
        .and_then(|r| r.observed.as_deref());
    observed == Some(value) && not_ready_because(bot).is_none()
}

/// Runs `managedbot rotate`.
pub async fn run(args: RotateArgs) -> anyhow::Result<()> {
    let scope = Scope::infer(args.namespace.clone()).await?;
    let names = if args.all {
        let list = scope
            .bots()
            .list(&ListParams::default())
            .await
            .map_err(|e| scope.explain(e, "list", "ManagedBots"))?;
        let names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|b| b.metadata.name)
            .collect();
        if names.is_empty() {
            return Err(Failure::NotFound(format!(
                "no ManagedBots in namespace {}",
                scope.namespace
            ))
            .into());
        }
        names
    } else {
        args.names.clone()
    };
    // Check every bot first: a typo in the third name must not leave the
    // first two rotated and the user unsure which were.
    for name in &names {
        scope.bot(name).await?;
    }
    // Unique per call, so that rotating twice in one second rotates twice.
    let value = Timestamp::now().to_string();
    let patch = rotation_patch(&value, args.now);
    for name in &names {
        scope
            .bots()
            .patch(
                name,
                &PatchParams {
                    field_manager: Some(FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| scope.explain(e, "patch", &format!("ManagedBot {name}")))?;
        let how = if args.now {
            " (old secret cut off at once)"
        } else {
            ""
        };
        eprintln!(
            "{}/{name}: rotation {value} requested{how}",
            scope.namespace
        );
    }
    if args.no_wait {
        return Ok(());
    }
    let waited = wait_for(&scope, &names, args.timeout, |bot| landed(bot, &value)).await?;
    if !waited.waiting.is_empty() {
        return Err(Failure::NotReady(format!(
            "the rotation did not land within {}s: {}",
            args.timeout.as_secs(),
            waited.waiting.join("; ")
        ))
        .into());
    }
    let urls = waited.done;
    match args.output {
        Some(format) => print!("{}", format.render(&urls)?),
        None => {
            for url in &urls {
                if names.len() == 1 {
                    println!("{}", url.webhook_url);
                } else {
                    println!("{}/{}\t{}", url.namespace, url.name, url.webhook_url);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_patch_sets_the_rotate_annotation_and_rotate_now_only_when_asked() {
        let patch = rotation_patch("2026-12-04T10:00:00.123Z", false);
        let annotations = &patch["metadata"]["annotations"];
        assert_eq!(annotations[ROTATE_ANNOTATION], "2026-12-04T10:00:00.123Z");
        assert!(
            annotations[ROTATE_NOW_ANNOTATION].is_null(),
            "a leftover rotate-now is removed"
        );
        let now = rotation_patch("v", true);
        assert_eq!(now["metadata"]["annotations"][ROTATE_NOW_ANNOTATION], "v");
    }
}
