//! One control plane per test process, shared by every test in it, and a
//! fresh namespace per test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Mutex, OnceLock, mpsc},
};

use anyhow::{Context, anyhow, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use rand::RngExt;

use crate::ControlPlane;

/// What a test needs of the shared control plane.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The directory of the control-plane binaries.
    pub bin_dir: PathBuf,
    /// The control plane's directory (logs, state).
    pub dir: PathBuf,
}

static PLANE: Mutex<Option<ControlPlane>> = Mutex::new(None);
static SHARED: OnceLock<Result<Shared, String>> = OnceLock::new();

/// The process's control plane, started on first use. It stops when the
/// process exits: normally through an exit hook, and by the kernel's
/// parent-death signal when the process is killed.
pub fn shared() -> anyhow::Result<&'static Shared> {
    SHARED
        .get_or_init(|| start_shared().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("the test control plane could not start: {e}"))
}

fn start_shared() -> anyhow::Result<Shared> {
    let (sender, receiver) = mpsc::channel();
    // The processes die with the thread that spawned them, so that thread
    // must outlive every test: it parks for the life of the process.
    std::thread::Builder::new()
        .name("controlplane".into())
        .spawn(move || {
            let started = ControlPlane::start().map(|plane| {
                let shared = Shared {
                    kubeconfig: plane.kubeconfig().to_path_buf(),
                    bin_dir: plane.bin_dir().to_path_buf(),
                    dir: plane.dir().to_path_buf(),
                };
                *PLANE.lock().unwrap_or_else(|p| p.into_inner()) = Some(plane);
                shared
            });
            let _ = sender.send(started);
            loop {
                std::thread::park();
            }
        })?;
    let shared = receiver.recv().context("the control-plane thread died")??;
    // SAFETY: registering a plain extern "C" function.
    unsafe { libc::atexit(stop_at_exit) };
    Ok(shared)
}

extern "C" fn stop_at_exit() {
    if let Ok(mut plane) = PLANE.lock()
        && let Some(mut plane) = plane.take()
    {
        plane.stop();
    }
}

/// A fresh namespace on the shared control plane, with an admin client.
pub struct TestEnv {
    /// Admin client, bound to the test's runtime.
    pub client: kube::Client,
    /// The test's own namespace.
    pub namespace: String,
    /// The shared control plane.
    pub shared: &'static Shared,
}

/// Starts (or joins) the shared control plane and creates a namespace named
/// `{prefix}-{random}` for the calling test.
pub async fn test_env(prefix: &str) -> anyhow::Result<TestEnv> {
    let shared = tokio::task::spawn_blocking(shared).await??;
    let client = client_for(&shared.kubeconfig).await?;
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(6)
        .map(|c| char::from(c).to_ascii_lowercase())
        .collect();
    let namespace = format!("{prefix}-{suffix}");
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(namespace.clone()),
            labels: Some([("managedbot.dev/test".to_string(), "true".to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {namespace}"))?;
    Ok(TestEnv {
        client,
        namespace,
        shared,
    })
}

/// A client for a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

impl TestEnv {
    /// `kubectl` with the admin kubeconfig, in the test's namespace.
    pub fn kubectl(&self) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(self.shared.bin_dir.join("kubectl"));
        command
            .env("KUBECONFIG", &self.shared.kubeconfig)
            .arg(format!("--namespace={}", self.namespace))
            .kill_on_drop(true);
        command
    }

    /// Runs kubectl with `args` and `stdin`, returning (success, stdout, stderr).
    pub async fn kubectl_run(
        &self,
        args: &[&str],
        stdin: Option<&str>,
    ) -> anyhow::Result<KubectlOutput> {
        use tokio::io::AsyncWriteExt;
        let mut child = self
            .kubectl()
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(input.as_bytes()).await?;
        }
        let output = child.wait_with_output().await?;
        Ok(KubectlOutput {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// What a kubectl run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    /// Whether it exited 0.
    pub success: bool,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

impl KubectlOutput {
    /// Standard output, or an error holding standard error when kubectl failed.
    pub fn ok(self) -> anyhow::Result<String> {
        if !self.success {
            bail!("kubectl failed: {}", self.stderr.trim());
        }
        Ok(self.stdout)
    }
}
