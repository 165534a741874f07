//! The controller killed (SIGKILL) every few seconds while 500 bots are
//! created and then rotated: every bot ends Ready with its rotation, and no
//! bot ever had a pair registered that was neither its first nor the one
//! rotation asked for. A binary of its own: 500 bots would slow the other
//! tests' control plane.

mod common;

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use common::*;
use futures::{StreamExt as _, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use managedbot::resource::ManagedBot;
use testbed::FakeTelegram;

const BOTS: usize = 500;
const KILL_EVERY: Duration = Duration::from_secs(3);

fn name(i: usize) -> String {
    format!("bot-{i:03}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_every_few_seconds_still_registers_each_pair_once() -> anyhow::Result<()>
{
    let env = env_with_crd("chaos").await?;
    let telegram = FakeTelegram::start().await?;
    let tokens: Vec<String> = (0..BOTS)
        .map(|i| telegram.add_bot(9000 + i as i64, &format!("chaos_{i}_bot")))
        .collect();
    let args = ["--leader-elect=false", "--concurrency=16"];
    let mut controllers = vec![spawn_controller(&env, &telegram.url(), &args)?];
    let started = Instant::now();

    let bots: Api<ManagedBot> = Api::namespaced(env.client.clone(), &env.namespace);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let apply = {
        let (bots, secrets, tokens) = (bots.clone(), secrets.clone(), tokens.clone());
        tokio::spawn(async move {
            stream::iter(0..BOTS)
                .map(|i| {
                    let (bots, secrets, token) = (bots.clone(), secrets.clone(), tokens[i].clone());
                    async move {
                        let name = name(i);
                        let secret: Secret = serde_json::from_value(serde_json::json!({
                            "metadata": {"name": format!("{name}-token")}, "stringData": {"token": token},
                        }))?;
                        secrets.create(&PostParams::default(), &secret).await?;
                        let bot: ManagedBot = serde_json::from_value(serde_json::json!({
                            "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
                            "metadata": {"name": name},
                            "spec": {"tokenSecretRef": {"name": format!("{name}-token")},
                                     "backend": {"service": {"name": name, "port": 8080}}},
                        }))?;
                        bots.create(&PostParams::default(), &bot).await?;
                        anyhow::Ok(())
                    }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<anyhow::Result<Vec<()>>>()?;
            // Then one rotation each, while the kills go on.
            let rotate = serde_json::json!({"metadata": {"annotations": {"managedbot.dev/rotate": "chaos-1"}}});
            for i in 0..BOTS {
                bots.patch(&name(i), &PatchParams::default(), &Patch::Merge(&rotate))
                    .await?;
            }
            anyhow::Ok(())
        })
    };

    let rotated = |bot: &ManagedBot| {
        ready_reason(bot).is_some_and(|(status, _)| status == "True")
            && bot
                .status
                .as_ref()
                .and_then(|s| s.rotation.as_ref())
                .and_then(|r| r.observed.as_deref())
                == Some("chaos-1")
    };
    let mut kills = 0;
    let mut applied = false;
    loop {
        tokio::time::sleep(KILL_EVERY).await;
        if !applied && apply.is_finished() {
            applied = true;
        }
        let done = bots
            .list(&Default::default())
            .await?
            .items
            .iter()
            .filter(|b| rotated(b))
            .count();
        if applied && done == BOTS {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "{done} of {BOTS} rotated after 5 minutes"
        );
        if let Some(last) = controllers.last_mut() {
            last.kill().await;
        }
        kills += 1;
        controllers.push(spawn_controller(&env, &telegram.url(), &args)?);
    }
    apply.await??;
    eprintln!(
        "FIGURE: controller SIGKILLed {kills} times every {}s: all {BOTS} bots Ready and rotated in {:.0}s",
        KILL_EVERY.as_secs(),
        started.elapsed().as_secs_f64()
    );

    // Registered pairs: the first and the one rotation, never a third; the
    // last one is the pair the Secret holds.
    let mut registered: HashMap<i64, BTreeSet<String>> = HashMap::new();
    for call in telegram
        .calls()
        .into_iter()
        .filter(|c| c.method == "setWebhook" && c.status == 200)
    {
        if let (Some(id), Some(token)) = (
            call.bot_id,
            call.params.get("secret_token").and_then(|t| t.as_str()),
        ) {
            registered.entry(id).or_default().insert(token.to_string());
        }
    }
    let most = registered.values().map(BTreeSet::len).max().unwrap_or(0);
    eprintln!(
        "FIGURE: controller kills: at most {most} distinct pairs registered per bot (first + 1 rotation = 2)"
    );
    for i in 0..BOTS {
        let id = 9000 + i as i64;
        let pairs = registered.get(&id).map_or(0, BTreeSet::len);
        assert!(
            pairs <= 2,
            "bot {i} had {pairs} pairs registered: a secret generated without a rotation"
        );
        let secret = secrets.get(&format!("{}-webhook", name(i))).await?;
        let token = secret_value(&secret, "secret-token").unwrap_or_default();
        assert_eq!(
            telegram.webhook(id).and_then(|w| w.secret_token),
            Some(token),
            "bot {i}"
        );
    }
    let tokens: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let processes: Vec<&Process> = controllers.iter().collect();
    assert_no_token_leaked(&env, &tokens, &processes).await?;
    Ok(())
}
