//! Keeps the route table in step with the cluster: a watch on ManagedBots
//! whose cache holds only what routing needs, and a rebuild of the table after
//! each batch of changes. The router is ready once every watched scope has
//! been listed.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt as _, stream};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};

use super::{
    backend::ServiceResolver,
    metrics::RouterMetrics,
    table::{self, BotRef, Routes},
};
use crate::resource::{ManagedBot, ManagedBotStatus};

/// Events taken in one batch before the table is rebuilt: a rebuild costs
/// time in proportion to the number of bots, so a burst of changes (the
/// first list, a mass rotation) is folded into few rebuilds.
const BATCH: usize = 4096;

/// Drops all but what the router needs from a watched bot: less memory per
/// bot, and no webhook URL (it holds the path secret) in the router's cache.
pub fn strip(bot: &mut ManagedBot) {
    let metadata = &mut bot.metadata;
    metadata.managed_fields = None;
    metadata.annotations = None;
    metadata.labels = None;
    metadata.owner_references = None;
    metadata.finalizers = None;
    bot.status = bot.status.take().map(|status| ManagedBotStatus {
        routing: status.routing,
        ..Default::default()
    });
}

/// Watches the bots of `namespaces` (all when empty) and republishes the
/// table in `routes` after every batch of changes, and when a previous pair
/// expires. Runs until the process ends; watch errors are retried with
/// backoff while the last table keeps serving.
pub async fn maintain(
    client: Client,
    namespaces: &[String],
    resolver: ServiceResolver,
    routes: Arc<Routes>,
    metrics: Arc<RouterMetrics>,
) {
    let scopes: Vec<Api<ManagedBot>> = if namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        namespaces
            .iter()
            .map(|namespace| Api::namespaced(client.clone(), namespace))
            .collect()
    };
    let mut stores: Vec<Store<ManagedBot>> = Vec::with_capacity(scopes.len());
    let mut streams = Vec::with_capacity(scopes.len());
    for (index, api) in scopes.into_iter().enumerate() {
        let (store, writer) = reflector::store();
        stores.push(store);
        let events = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(strip)
            .reflect(writer)
            .map(move |event| (index, event));
        streams.push(events.boxed());
    }
    let mut listed = vec![false; stores.len()];
    let mut batches = stream::select_all(streams).ready_chunks(BATCH);
    let mut reported: HashMap<BotRef, String> = HashMap::new();
    let mut next_expiry: Option<Timestamp> = None;
    loop {
        let wake = async {
            match next_expiry {
                Some(at) => {
                    let wait = Timestamp::now().duration_until(at);
                    tokio::time::sleep(Duration::try_from(wait).unwrap_or_default()).await;
                }
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            batch = batches.next() => {
                let Some(batch) = batch else { return };
                absorb(batch, &mut listed)
            }
            () = wake => true,
        };
        if !changed || !listed.iter().all(|done| *done) {
            continue;
        }
        let now = Timestamp::now();
        let bots: Vec<Arc<ManagedBot>> = stores.iter().flat_map(Store::state).collect();
        let mut skipped = Vec::new();
        let published = routes.update(|current| {
            let built = table::build(bots.iter().map(|b| &**b), &resolver, current, now);
            skipped = built.skipped;
            built.table
        });
        next_expiry = published.next_expiry();
        metrics.published(published.route_count(), published.bot_count());
        report_skipped(skipped, &mut reported);
        if !metrics.is_ready() {
            tracing::info!(
                bots = published.bot_count(),
                routes = published.route_count(),
                "route table loaded: ready"
            );
            metrics.set_ready(true);
        }
    }
}

/// Takes in a batch of watch events; whether the table needs a rebuild.
fn absorb(
    batch: Vec<(usize, Result<watcher::Event<ManagedBot>, watcher::Error>)>,
    listed: &mut [bool],
) -> bool {
    let mut changed = false;
    for (scope, event) in batch {
        match event {
            Ok(watcher::Event::InitDone) => {
                listed[scope] = true;
                changed = true;
            }
            Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => changed = true,
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
            Err(error) => {
                tracing::warn!(%error, "watching ManagedBots failed; retrying, the last routes keep serving");
            }
        }
    }
    changed
}

/// Logs each bot left out of the table once per reason, and when it is back.
fn report_skipped(skipped: Vec<table::Skipped>, reported: &mut HashMap<BotRef, String>) {
    let mut now: HashMap<BotRef, String> = HashMap::with_capacity(skipped.len());
    for table::Skipped { bot, reason } in skipped {
        let reason = reason.to_string();
        if reported.get(&bot) != Some(&reason) {
            tracing::warn!(namespace = %bot.namespace, name = %bot.name, %reason, "not routing this bot");
        }
        now.insert(bot, reason);
    }
    for bot in reported.keys().filter(|bot| !now.contains_key(*bot)) {
        tracing::info!(namespace = %bot.namespace, name = %bot.name, "routing this bot again");
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::test_support::bot;

    #[test]
    fn strip_keeps_routing_and_drops_the_webhook_url() {
        let mut full = bot("ns", "a", "path", "token", 8080);
        full.metadata.annotations = Some([("a".into(), "b".into())].into());
        if let Some(status) = full.status.as_mut() {
            status.webhook_url = Some("https://x/webhook/path".into());
            status.observed_generation = Some(3);
        }
        let routing = full.status.as_ref().and_then(|s| s.routing.clone());
        strip(&mut full);
        assert!(full.metadata.annotations.is_none());
        assert_eq!(full.metadata.name.as_deref(), Some("a"));
        let status = full.status.unwrap();
        assert_eq!(status.routing, routing);
        assert!(status.webhook_url.is_none());
        assert!(status.observed_generation.is_none());
        assert_eq!(full.spec.backend.service.unwrap().port, 8080);
    }

    #[test]
    fn a_batch_asks_for_a_rebuild_only_once_listed_and_changed() {
        let mut listed = [false, false];
        let apply = |scope| {
            (
                scope,
                Ok(watcher::Event::InitApply(bot("ns", "a", "p", "t", 1))),
            )
        };
        assert!(!absorb(
            vec![(0, Ok(watcher::Event::Init)), apply(0)],
            &mut listed
        ));
        assert!(absorb(vec![(0, Ok(watcher::Event::InitDone))], &mut listed));
        assert_eq!(listed, [true, false]);
        let deleted = (1, Ok(watcher::Event::Delete(bot("ns", "a", "p", "t", 1))));
        assert!(absorb(vec![deleted], &mut listed));
    }
}
