//! What the integration tests of this crate share: the CRD installed once on
//! the shared control plane of the test process.

#![allow(dead_code)]

use std::{path::Path, sync::OnceLock};

use anyhow::{Context, bail};
use testbed::TestEnv;

/// The repository's root.
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh namespace on the shared control plane with the committed CRD
/// installed and Established.
pub async fn env_with_crd(prefix: &str) -> anyhow::Result<TestEnv> {
    let env = testbed::test_env(prefix).await?;
    let kubectl = env.shared.bin_dir.join("kubectl");
    let kubeconfig = env.shared.kubeconfig.clone();
    tokio::task::spawn_blocking(move || install_crd(&kubectl, &kubeconfig)).await??;
    Ok(env)
}

fn install_crd(kubectl: &Path, kubeconfig: &Path) -> anyhow::Result<()> {
    static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let run = |args: &[&str]| -> anyhow::Result<()> {
                let output = std::process::Command::new(kubectl)
                    .env("KUBECONFIG", kubeconfig)
                    .args(args)
                    .output()
                    .context("running kubectl")?;
                if !output.status.success() {
                    bail!(
                        "kubectl {}: {}",
                        args.join(" "),
                        String::from_utf8_lossy(&output.stderr)
                    );
                }
                Ok(())
            };
            let crd = repo_root().join("crds/managedbot.yaml");
            run(&[
                "apply",
                "--server-side",
                "-f",
                crd.to_str().expect("a UTF-8 path"),
            ])
            .and_then(|()| {
                run(&[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=60s",
                    "crd/managedbots.managedbot.dev",
                ])
            })
            .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}
