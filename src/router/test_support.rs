//! ManagedBots as the router sees them, for the router's unit tests.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
};

use crate::{
    controller::webhook_secret::sha256_hex,
    resource::{
        BackendSpec, ManagedBot, ManagedBotSpec, ManagedBotStatus, PreviousRouteHashes,
        RouteHashes, Routing, ServiceBackend, TokenSecretRef,
    },
};

/// A bot `namespace/name` routed by (`path`, `token`), whose backend is a
/// Service on `port` (a loopback resolver turns it into 127.0.0.1:port).
pub fn bot(namespace: &str, name: &str, path: &str, token: &str, port: i32) -> ManagedBot {
    let mut bot = ManagedBot::new(
        name,
        ManagedBotSpec {
            token_secret_ref: TokenSecretRef {
                name: format!("{name}-token"),
                key: None,
            },
            webhook: Default::default(),
            backend: BackendSpec {
                service: Some(ServiceBackend {
                    name: name.into(),
                    port,
                }),
                url: None,
                path: None,
            },
            rotation: None,
            suspend: false,
        },
    );
    bot.metadata = ObjectMeta {
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    };
    bot.status = Some(ManagedBotStatus {
        routing: Some(Routing {
            current: hashes(path, token),
            previous: None,
        }),
        ..Default::default()
    });
    bot
}

/// A bot with a current pair and a previous pair that expires at `expires_at`.
pub fn bot_with_previous(
    namespace: &str,
    name: &str,
    current: (&str, &str),
    previous: (&str, &str),
    expires_at: Timestamp,
    port: i32,
) -> ManagedBot {
    let mut bot = bot(namespace, name, current.0, current.1, port);
    if let Some(routing) = bot.status.as_mut().and_then(|s| s.routing.as_mut()) {
        let old = hashes(previous.0, previous.1);
        routing.previous = Some(PreviousRouteHashes {
            path_sha256: old.path_sha256,
            token_sha256: old.token_sha256,
            expires_at: Time(expires_at),
        });
    }
    bot
}

fn hashes(path: &str, token: &str) -> RouteHashes {
    RouteHashes {
        path_sha256: sha256_hex(path),
        token_sha256: sha256_hex(token),
    }
}
