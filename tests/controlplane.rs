//! The test control plane itself: RBAC is enforced, and kube-controller-manager
//! runs the garbage collector.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

#[tokio::test]
async fn rbac_is_enforced() -> anyhow::Result<()> {
    let env = testbed::test_env("rbac").await?;
    env.kubectl_run(&["create", "serviceaccount", "nobody"], None)
        .await?
        .ok()?;
    let nobody = format!("--as=system:serviceaccount:{}:nobody", env.namespace);
    let denied = env.kubectl_run(&["get", "secrets", &nobody], None).await?;
    assert!(!denied.success);
    assert!(
        denied.stderr.contains("Forbidden")
            && denied.stderr.contains("cannot list resource \"secrets\""),
        "{}",
        denied.stderr
    );
    let can = env
        .kubectl_run(&["auth", "can-i", "get", "secrets", &nobody], None)
        .await?;
    assert_eq!(can.stdout.trim(), "no");
    // The same identity gets exactly what a Role grants it.
    env.kubectl_run(
        &[
            "create",
            "role",
            "read-configmaps",
            "--verb=get,list",
            "--resource=configmaps",
        ],
        None,
    )
    .await?
    .ok()?;
    env.kubectl_run(
        &[
            "create",
            "rolebinding",
            "nobody-reads",
            "--role=read-configmaps",
            &format!("--serviceaccount={}:nobody", env.namespace),
        ],
        None,
    )
    .await?
    .ok()?;
    env.kubectl_run(&["get", "configmaps", &nobody], None)
        .await?
        .ok()?;
    assert!(
        !env.kubectl_run(&["get", "secrets", &nobody], None)
            .await?
            .success
    );
    Ok(())
}

#[tokio::test]
async fn garbage_collector_removes_owned_objects() -> anyhow::Result<()> {
    let env = testbed::test_env("gc").await?;
    let configmaps: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.namespace);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let owner = configmaps
        .create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some("owner".into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await?;
    let owned = Secret {
        metadata: ObjectMeta {
            name: Some("owned".into()),
            owner_references: Some(vec![
                k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    name: "owner".into(),
                    uid: owner.metadata.uid.clone().unwrap(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        },
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &owned).await?;
    configmaps.delete("owner", &DeleteParams::default()).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while secrets.get_opt("owned").await?.is_some() {
        assert!(
            Instant::now() < deadline,
            "the owned Secret outlived its owner by 60 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}
