//! Leader election on a coordination.k8s.io Lease (kube-lease-manager): one
//! replica acts, the others stand by. Losing the lease ends the process on
//! purpose, so that two replicas never act at once; the Deployment restarts
//! it as a stand-by.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};

/// How the lease is held.
#[derive(Debug, Clone)]
pub struct LeaseOptions {
    /// The Lease's namespace.
    pub namespace: String,
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// How long a lease lasts without renewal.
    pub duration: Duration,
    /// How long before expiry the holder renews it.
    pub renew_before: Duration,
}

/// Waits until this replica holds the lease, then returns a future that
/// resolves when it loses it.
pub async fn acquire(
    client: Client,
    options: LeaseOptions,
) -> anyhow::Result<impl Future<Output = ()>> {
    let params = LeaseParams::new(
        options.identity.clone(),
        options.duration.as_secs().max(2),
        options.renew_before.as_secs().max(1),
    );
    let manager = LeaseManagerBuilder::new(client, options.name.clone())
        .with_namespace(options.namespace.clone())
        .with_parameters(params)
        .build()
        .await?;
    let (mut leading, task) = manager.watch().await;
    tracing::info!(lease = %options.name, namespace = %options.namespace, identity = %options.identity, "waiting for the lease");
    while !*leading.borrow_and_update() {
        leading.changed().await?;
    }
    tracing::info!(identity = %options.identity, "holding the lease: this replica acts");
    Ok(async move {
        while *leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                break;
            }
        }
        tracing::error!("lost the lease");
        drop(leading);
        let _ = task.await;
    })
}
