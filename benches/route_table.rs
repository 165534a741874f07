//! What the route table costs a request: the SHA-256 of the path secret, the
//! lookup, and the constant-time check of the secret token, at 10, 10,000
//! and 100,000 routes. The cost must not grow with the number of bots.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use managedbot::{
    controller::webhook_secret::sha256_hex,
    resource::ManagedBot,
    router::{
        auth::PathKey,
        backend::ServiceResolver,
        table::{self, RouteTable},
    },
};

/// `n` bots with status.routing, as the router's watch would hold them.
fn bots(n: usize) -> Vec<ManagedBot> {
    (0..n)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "managedbot.dev/v1alpha1", "kind": "ManagedBot",
                "metadata": {"name": format!("bot-{i}"), "namespace": "bench"},
                "spec": {"tokenSecretRef": {"name": "t"}, "backend": {"service": {"name": format!("bot-{i}"), "port": 8080}}},
                "status": {"routing": {"current": {
                    "pathSha256": sha256_hex(&path(i)), "tokenSha256": sha256_hex(&token(i)),
                }}},
            }))
            .expect("a valid bot")
        })
        .collect()
}

fn path(i: usize) -> String {
    format!("pAtH-{i:0>38}")
}

fn token(i: usize) -> String {
    format!("tOkEn-{i:0>37}")
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_table");
    let now = Timestamp::now();
    for n in [10, 10_000, 100_000] {
        let built = table::build(
            &bots(n),
            &ServiceResolver::default(),
            &RouteTable::default(),
            now,
        );
        assert_eq!(built.table.route_count(), n);
        let table = built.table;
        // Requests for bots spread over the table, not one hot entry.
        let requests: Vec<(String, String)> = (0..1024)
            .map(|k| (path(k * 7919 % n), token(k * 7919 % n)))
            .collect();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &table, |b, table| {
            b.iter(|| {
                let (path, token) = &requests[next % requests.len()];
                next += 1;
                let route = table.lookup(&PathKey::of_secret(black_box(path)), now);
                black_box(route.is_some_and(|r| r.accepts_token(black_box(token.as_bytes()))))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup);
criterion_main!(benches);
