//! The route table: `sha256(path secret)` → the bot, its token digest, its
//! backend and, for a rotated-out pair, its expiry. Built whole from a list
//! of ManagedBots by a pure function, published by an atomic swap: a request
//! loads the table without a lock and finds its route in O(1).

use std::{
    collections::{HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
};

use arc_swap::{ArcSwap, Guard};
use axum::http::{HeaderValue, Uri};
use k8s_openapi::jiff::Timestamp;

use super::{
    auth::{Digest, PathKey, token_matches},
    backend::{InvalidBackend, ServiceResolver},
    limit::InFlight,
};
use crate::resource::ManagedBot;

/// A bot by namespace and name: what logs and metrics name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BotRef {
    /// The bot's namespace.
    pub namespace: String,
    /// The bot's name.
    pub name: String,
}

impl fmt::Display for BotRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What every route of one bot shares, made once per table build so that a
/// request parses nothing of it.
#[derive(Debug)]
pub struct BotRoute {
    /// The bot.
    pub bot: BotRef,
    /// Where its updates are posted.
    pub backend: Uri,
    /// The values of the headers that name the bot to its backend.
    pub namespace_header: HeaderValue,
    /// See `namespace_header`.
    pub name_header: HeaderValue,
    in_flight: Arc<InFlight>,
}

impl BotRoute {
    /// The bot's requests in flight; the count outlives table swaps.
    pub fn in_flight(&self) -> &Arc<InFlight> {
        &self.in_flight
    }
}

/// One routed path secret.
#[derive(Debug, Clone)]
pub struct Route {
    /// The bot it routes to.
    pub bot: Arc<BotRoute>,
    token: Digest,
    expires_at: Option<Timestamp>,
}

impl Route {
    /// Whether the secret-token header value is this pair's token.
    pub fn accepts_token(&self, presented: &[u8]) -> bool {
        token_matches(presented, &self.token)
    }

    fn is_live(&self, now: Timestamp) -> bool {
        self.expires_at.is_none_or(|expires_at| now < expires_at)
    }
}

/// An immutable route table.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: HashMap<PathKey, Route>,
    in_flight: HashMap<BotRef, Arc<InFlight>>,
    next_expiry: Option<Timestamp>,
}

impl RouteTable {
    /// The route of a path secret's digest, unless it is unknown or its grace
    /// period is over at `now`.
    pub fn lookup(&self, key: &PathKey, now: Timestamp) -> Option<&Route> {
        self.routes.get(key).filter(|route| route.is_live(now))
    }

    /// Routed path secrets (current and previous pairs).
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// Routed bots.
    pub fn bot_count(&self) -> usize {
        self.in_flight.len()
    }

    /// When the first previous pair in the table expires: the table is
    /// rebuilt then, so that it stops holding (and counting) the pair.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.next_expiry
    }
}

/// Why a bot, or one of its pairs, is left out of the table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidRoute {
    /// Its backend gives no URL.
    #[error(transparent)]
    Backend(#[from] InvalidBackend),
    /// A digest in status.routing is not 64 hex digits.
    #[error("status.routing.{0} is not a SHA-256 hex digest")]
    BadDigest(&'static str),
    /// Another bot publishes the same path digest: neither is routed by it,
    /// since either could be a copy made to take the other's deliveries.
    #[error("status.routing publishes a path digest that {0} publishes too")]
    SharedPath(BotRef),
}

/// A bot left out of the table, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The bot.
    pub bot: BotRef,
    /// Why.
    pub reason: InvalidRoute,
}

/// A new table and the bots it leaves out.
#[derive(Debug)]
pub struct Built {
    /// The table.
    pub table: RouteTable,
    /// Bots with routing in status that are not (fully) routed.
    pub skipped: Vec<Skipped>,
}

/// Builds the table of `bots` at `now`: for each bot with status.routing that
/// is not suspended, its current pair and its previous pair unless expired.
/// Per-bot in-flight counts are carried over from `previous`, so a swap
/// neither resets nor leaks a bot's cap.
pub fn build<'a>(
    bots: impl IntoIterator<Item = &'a ManagedBot>,
    resolver: &ServiceResolver,
    previous: &RouteTable,
    now: Timestamp,
) -> Built {
    let mut routes: HashMap<PathKey, Route> = HashMap::new();
    let mut in_flight = HashMap::new();
    let mut skipped = Vec::new();
    let mut shared: HashMap<PathKey, HashSet<BotRef>> = HashMap::new();
    for bot in bots {
        let Some(routing) = bot.status.as_ref().and_then(|s| s.routing.as_ref()) else {
            continue;
        };
        if bot.spec.suspend {
            continue;
        }
        let bot_ref = BotRef {
            namespace: bot.metadata.namespace.clone().unwrap_or_default(),
            name: bot.metadata.name.clone().unwrap_or_default(),
        };
        let mut pairs = Vec::with_capacity(2);
        match pair(
            &routing.current.path_sha256,
            &routing.current.token_sha256,
            ["current.pathSha256", "current.tokenSha256"],
        ) {
            Ok((path, token)) => pairs.push((path, token, None)),
            Err(reason) => {
                skipped.push(Skipped {
                    bot: bot_ref,
                    reason,
                });
                continue;
            }
        }
        if let Some(old) = &routing.previous {
            let expires_at = old.expires_at.0;
            if now < expires_at {
                match pair(
                    &old.path_sha256,
                    &old.token_sha256,
                    ["previous.pathSha256", "previous.tokenSha256"],
                ) {
                    Ok((path, token)) => pairs.push((path, token, Some(expires_at))),
                    Err(reason) => skipped.push(Skipped {
                        bot: bot_ref.clone(),
                        reason,
                    }),
                }
            }
        }
        let resolved = resolver
            .resolve(&bot_ref.namespace, &bot.spec.backend)
            .and_then(|url| {
                let uri = Uri::try_from(url.as_str()).map_err(|_| InvalidBackend::NotHttpUrl)?;
                let header = |text: &str| {
                    HeaderValue::from_str(text).map_err(|_| InvalidBackend::NotHttpUrl)
                };
                Ok((uri, header(&bot_ref.namespace)?, header(&bot_ref.name)?))
            });
        let (backend, namespace_header, name_header) = match resolved {
            Ok(resolved) => resolved,
            Err(error) => {
                skipped.push(Skipped {
                    bot: bot_ref,
                    reason: error.into(),
                });
                continue;
            }
        };
        let counter = previous
            .in_flight
            .get(&bot_ref)
            .cloned()
            .unwrap_or_default();
        in_flight.insert(bot_ref.clone(), counter.clone());
        let shared_route = Arc::new(BotRoute {
            bot: bot_ref,
            backend,
            namespace_header,
            name_header,
            in_flight: counter,
        });
        for (path, token, expires_at) in pairs {
            let route = Route {
                bot: shared_route.clone(),
                token,
                expires_at,
            };
            match routes.get(&path) {
                None => {
                    routes.insert(path, route);
                }
                Some(existing) if existing.bot.bot == shared_route.bot => {}
                Some(existing) => {
                    let owners = shared.entry(path).or_default();
                    owners.insert(existing.bot.bot.clone());
                    owners.insert(shared_route.bot.clone());
                }
            }
        }
    }
    for (path, owners) in shared {
        routes.remove(&path);
        let mut owners: Vec<BotRef> = owners.into_iter().collect();
        owners.sort();
        for (index, owner) in owners.iter().enumerate() {
            let other = owners[(index + 1) % owners.len()].clone();
            skipped.push(Skipped {
                bot: owner.clone(),
                reason: InvalidRoute::SharedPath(other),
            });
        }
    }
    let next_expiry = routes.values().filter_map(|route| route.expires_at).min();
    Built {
        table: RouteTable {
            routes,
            in_flight,
            next_expiry,
        },
        skipped,
    }
}

fn pair(
    path_hex: &str,
    token_hex: &str,
    fields: [&'static str; 2],
) -> Result<(PathKey, Digest), InvalidRoute> {
    let path = Digest::from_hex(path_hex).ok_or(InvalidRoute::BadDigest(fields[0]))?;
    let token = Digest::from_hex(token_hex).ok_or(InvalidRoute::BadDigest(fields[1]))?;
    Ok((path.into_path_key(), token))
}

/// The live table. Requests [`load`](Routes::load) it without a lock; the
/// watch replaces it whole with [`update`](Routes::update). Updates are
/// serialized among themselves only.
#[derive(Debug, Default)]
pub struct Routes {
    table: ArcSwap<RouteTable>,
    updates: Mutex<()>,
}

impl Routes {
    /// A live table starting from `table`.
    pub fn new(table: RouteTable) -> Self {
        Self {
            table: ArcSwap::from_pointee(table),
            updates: Mutex::new(()),
        }
    }

    /// The table now, for one request.
    pub fn load(&self) -> Guard<Arc<RouteTable>> {
        self.table.load()
    }

    /// Replaces the table by `rebuild(current)`; returns the new table.
    pub fn update(&self, rebuild: impl FnOnce(&RouteTable) -> RouteTable) -> Arc<RouteTable> {
        let _serialized = self.updates.lock().unwrap_or_else(|p| p.into_inner());
        let next = Arc::new(rebuild(&self.table.load_full()));
        self.table.store(next.clone());
        next
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::SignedDuration;

    use super::*;
    use crate::router::test_support::{bot, bot_with_previous};

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn resolver() -> ServiceResolver {
        ServiceResolver::parse("http://127.0.0.1:{port}").unwrap()
    }

    fn key(secret: &str) -> PathKey {
        PathKey::of_secret(secret)
    }

    #[test]
    fn current_and_unexpired_previous_pairs_are_routed() {
        let now = at("2026-12-04T10:00:00Z");
        let bots = [
            bot("ns", "a", "path-a", "token-a", 9001),
            bot_with_previous(
                "ns",
                "b",
                ("path-b2", "token-b2"),
                ("path-b1", "token-b1"),
                now + SignedDuration::from_secs(300),
                9002,
            ),
        ];
        let built = build(&bots, &resolver(), &RouteTable::default(), now);
        assert!(built.skipped.is_empty(), "{:?}", built.skipped);
        let table = built.table;
        assert_eq!((table.route_count(), table.bot_count()), (3, 2));
        let a = table.lookup(&key("path-a"), now).unwrap();
        assert_eq!(a.bot.bot.to_string(), "ns/a");
        assert_eq!(a.bot.backend.to_string(), "http://127.0.0.1:9001/");
        assert!(a.accepts_token(b"token-a"));
        assert!(!a.accepts_token(b"token-b2"));
        let old = table.lookup(&key("path-b1"), now).unwrap();
        assert_eq!(old.bot.bot.name, "b");
        assert!(old.accepts_token(b"token-b1"));
        assert!(!old.accepts_token(b"token-b2"), "pairs never mix");
        assert!(
            table
                .lookup(&key("path-b2"), now)
                .unwrap()
                .accepts_token(b"token-b2")
        );
        assert!(table.lookup(&key("token-a"), now).is_none());
    }

    #[test]
    fn a_previous_pair_expires_at_lookup_before_any_rebuild() {
        let now = at("2026-12-04T10:00:00Z");
        let expires_at = now + SignedDuration::from_secs(60);
        let bots = [bot_with_previous(
            "ns",
            "b",
            ("new", "t2"),
            ("old", "t1"),
            expires_at,
            9000,
        )];
        let table = build(&bots, &resolver(), &RouteTable::default(), now).table;
        let just_before = expires_at - SignedDuration::from_millis(1);
        assert!(table.lookup(&key("old"), just_before).is_some());
        assert!(table.lookup(&key("old"), expires_at).is_none());
        assert!(
            table
                .lookup(&key("new"), expires_at + SignedDuration::from_hours(48))
                .is_some()
        );
        assert_eq!(table.next_expiry(), Some(expires_at));
        let rebuilt = build(&bots, &resolver(), &table, expires_at).table;
        assert_eq!(rebuilt.route_count(), 1);
        assert_eq!(rebuilt.next_expiry(), None);
    }

    #[test]
    fn suspended_bots_and_bots_without_routing_are_not_routed() {
        let mut suspended = bot("ns", "s", "path-s", "t", 9000);
        suspended.spec.suspend = true;
        let mut unpublished = bot("ns", "u", "path-u", "t", 9000);
        unpublished.status = None;
        let bots = [suspended, unpublished];
        let built = build(&bots, &resolver(), &RouteTable::default(), Timestamp::now());
        assert_eq!(built.table.route_count(), 0);
        assert!(built.skipped.is_empty());
    }

    #[test]
    fn bad_digests_and_backends_are_skipped_with_the_bot_named() {
        let mut bad_digest = bot("ns", "d", "path-d", "t", 9000);
        if let Some(routing) = bad_digest.status.as_mut().and_then(|s| s.routing.as_mut()) {
            routing.current.token_sha256 = "not-hex".into();
        }
        let mut bad_port = bot("ns", "p", "path-p", "t", 9000);
        if let Some(service) = bad_port.spec.backend.service.as_mut() {
            service.port = 0;
        }
        let good = bot("ns", "g", "path-g", "t", 9000);
        let bots = [bad_digest, bad_port, good];
        let built = build(&bots, &resolver(), &RouteTable::default(), Timestamp::now());
        assert_eq!(built.table.route_count(), 1);
        let reasons: Vec<(String, InvalidRoute)> = built
            .skipped
            .into_iter()
            .map(|s| (s.bot.to_string(), s.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (
                    "ns/d".to_string(),
                    InvalidRoute::BadDigest("current.tokenSha256")
                ),
                (
                    "ns/p".to_string(),
                    InvalidRoute::Backend(InvalidBackend::BadPort)
                ),
            ]
        );
    }

    #[test]
    fn a_path_digest_published_by_two_bots_routes_to_neither() {
        let bots = [
            bot("ns", "victim", "same-path", "t1", 9000),
            bot("other", "copycat", "same-path", "t2", 9000),
            bot("ns", "bystander", "own-path", "t3", 9000),
        ];
        let built = build(&bots, &resolver(), &RouteTable::default(), Timestamp::now());
        let now = Timestamp::now();
        assert!(built.table.lookup(&key("same-path"), now).is_none());
        assert!(built.table.lookup(&key("own-path"), now).is_some());
        let mut named: Vec<String> = built.skipped.iter().map(|s| s.bot.to_string()).collect();
        named.sort();
        assert_eq!(named, ["ns/victim", "other/copycat"]);
    }

    #[test]
    fn in_flight_counts_survive_a_rebuild_and_changes_of_backend() {
        let now = Timestamp::now();
        let first = build(
            &[bot("ns", "a", "p1", "t", 9000)],
            &resolver(),
            &RouteTable::default(),
            now,
        )
        .table;
        let slot = first
            .lookup(&key("p1"), now)
            .unwrap()
            .bot
            .in_flight()
            .try_enter(10)
            .unwrap();
        let second = build(&[bot("ns", "a", "p2", "t", 9100)], &resolver(), &first, now).table;
        let counter = second.lookup(&key("p2"), now).unwrap().bot.in_flight();
        assert_eq!(counter.current(), 1);
        drop(slot);
        assert_eq!(counter.current(), 0);
        let unrelated = build(
            &[bot("ns", "b", "p3", "t", 9000)],
            &resolver(),
            &second,
            now,
        )
        .table;
        assert_eq!(unrelated.bot_count(), 1);
        assert!(!Arc::ptr_eq(
            unrelated.lookup(&key("p3"), now).unwrap().bot.in_flight(),
            counter
        ));
    }

    #[test]
    fn an_update_swaps_the_whole_table_and_old_loads_stay_valid() {
        let now = Timestamp::now();
        let routes = Routes::default();
        let before = routes.load();
        assert_eq!(before.route_count(), 0);
        let after = routes.update(|current| {
            build(&[bot("ns", "a", "p", "t", 9000)], &resolver(), current, now).table
        });
        assert_eq!(after.route_count(), 1);
        assert_eq!(routes.load().route_count(), 1);
        assert_eq!(before.route_count(), 0, "a loaded table never changes");
    }
}
