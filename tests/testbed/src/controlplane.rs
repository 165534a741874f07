//! A real local control plane: etcd, kube-apiserver and kube-controller-manager
//! on loopback, the way controller-runtime's envtest starts one.
//!
//! The binaries come from `tests/controlplane/build.sh` (built once from their
//! Go modules and cached), or from the directory named by
//! `MANAGEDBOT_CONTROLPLANE_BIN`. Everything lives in a temporary directory:
//! certificates from a throwaway CA, an admin kubeconfig (client certificate,
//! group `system:masters`), the service-account signing key, etcd's data and
//! each process's log.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The environment variable that names a directory holding the binaries.
pub const BIN_ENV: &str = "MANAGEDBOT_CONTROLPLANE_BIN";
const TEMP_PREFIX: &str = "managedbot-controlplane-";
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// A running control plane. Dropping it stops the processes and removes its
/// directory.
pub struct ControlPlane {
    dir: Option<tempfile::TempDir>,
    kubeconfig: PathBuf,
    server: String,
    bin: PathBuf,
    processes: Vec<(&'static str, Child)>,
}

impl ControlPlane {
    /// Builds (or finds) the binaries and starts etcd, kube-apiserver and
    /// kube-controller-manager, returning once the API server is ready.
    ///
    /// The processes are spawned from the calling thread and are told to die
    /// with it (`PR_SET_PDEATHSIG`), so a control plane is never left behind
    /// by a test process that crashes; call this from a thread that lives as
    /// long as the control plane should.
    pub fn start() -> anyhow::Result<Self> {
        let bin = binaries()?;
        sweep_stale_dirs();
        let dir = tempfile::Builder::new().prefix(TEMP_PREFIX).tempdir()?;
        fs::write(dir.path().join("owner.pid"), std::process::id().to_string())?;
        let pki = Pki::write(dir.path())?;
        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");

        let mut plane = Self {
            kubeconfig: dir.path().join("admin.kubeconfig"),
            server: server.clone(),
            bin,
            processes: Vec::new(),
            dir: None,
        };
        write_kubeconfig(&plane.kubeconfig, &server, &pki.ca_pem, &pki.admin)?;
        let kcm_kubeconfig = dir.path().join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca_pem,
            &pki.controller_manager,
        )?;
        let d = dir.path().to_path_buf();
        plane.dir = Some(dir);

        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");
        plane.spawn(
            "etcd",
            &[
                &format!("--data-dir={}", d.join("etcd").display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )?;
        plane.spawn(
            "kube-apiserver",
            &[
                &format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                // The kubernetes Service would point at loopback, which the
                // endpoint reconciler refuses; nothing here needs it.
                "--endpoint-reconciler-type=none",
                &format!("--secure-port={api_port}"),
                &format!("--cert-dir={}", d.join("pki").display()),
                &format!("--tls-cert-file={}", d.join("pki/apiserver.crt").display()),
                &format!(
                    "--tls-private-key-file={}",
                    d.join("pki/apiserver.key").display()
                ),
                &format!("--client-ca-file={}", d.join("pki/ca.crt").display()),
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--service-account-issuer=https://kubernetes.default.svc",
                &format!(
                    "--service-account-key-file={}",
                    d.join("pki/sa.pub").display()
                ),
                &format!(
                    "--service-account-signing-key-file={}",
                    d.join("pki/sa.key").display()
                ),
                "--allow-privileged=true",
            ],
        )?;
        plane.wait_ready()?;
        plane.spawn(
            "kube-controller-manager",
            &[
                &format!("--kubeconfig={}", kcm_kubeconfig.display()),
                "--controllers=garbage-collector-controller,namespace-controller,serviceaccount-controller",
                "--leader-elect=false",
                "--secure-port=0",
                "--use-service-account-credentials=false",
            ],
        )?;
        Ok(plane)
    }

    /// The admin kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The directory of the control-plane binaries (kubectl among them).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// The directory with the processes' logs and state.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .expect("a started control plane has a directory")
            .path()
    }

    /// `kubectl` with the admin kubeconfig.
    pub fn kubectl(&self) -> Command {
        let mut command = Command::new(self.bin.join("kubectl"));
        command.env("KUBECONFIG", &self.kubeconfig);
        command
    }

    /// A new client with the admin kubeconfig, bound to the calling tokio
    /// runtime (a kube client cannot outlive the runtime it was made on).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Stops every process (SIGTERM, then SIGKILL after 5 s) and removes the
    /// directory.
    pub fn stop(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            terminate(child);
        }
        self.processes.clear();
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }

    /// Stops one process by name and starts it again with the same arguments
    /// (for tests of an API server or etcd restart).
    pub fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self
            .processes
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("no process named {name}"))?;
        let args = fs::read_to_string(self.dir().join(format!("{name}.args")))?;
        let (name, mut child) = self.processes.remove(index);
        terminate(&mut child);
        let args: Vec<&str> = args.lines().collect();
        self.spawn(name, &args)?;
        if name == "kube-apiserver" {
            self.wait_ready()?;
        }
        Ok(())
    }

    fn spawn(&mut self, name: &'static str, args: &[&str]) -> anyhow::Result<()> {
        let dir = self.dir().to_path_buf();
        fs::write(dir.join(format!("{name}.args")), args.join("\n"))?;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{name}.log")))?;
        let mut command = Command::new(self.bin.join(name));
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", self.bin.join(name).display()))?;
        self.processes.push((name, child));
        Ok(())
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    let log = fs::read_to_string(
                        self.dir
                            .as_ref()
                            .unwrap()
                            .path()
                            .join(format!("{name}.log")),
                    )
                    .unwrap_or_default();
                    bail!(
                        "{name} exited with {status} while the control plane started:\n{}",
                        tail(&log, 40)
                    );
                }
            }
            let ready = self
                .kubectl()
                .args(["get", "--raw=/readyz", "--request-timeout=2s"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                let log =
                    fs::read_to_string(self.dir().join("kube-apiserver.log")).unwrap_or_default();
                bail!(
                    "kube-apiserver was not ready within {}s:\n{}",
                    START_TIMEOUT.as_secs(),
                    tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The directory holding the four binaries, building them first if needed.
pub fn binaries() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_ENV) {
        let dir = PathBuf::from(dir);
        for name in [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kubectl",
        ] {
            if !dir.join(name).is_file() {
                bail!("{BIN_ENV}={} holds no {name}", dir.display());
            }
        }
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../controlplane/build.sh");
    // The script prints its progress on stderr, which goes straight to ours.
    let mut child = Command::new("bash")
        .arg(&script)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let mut last = String::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            last = line?;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!(
            "{} failed ({status}): the control plane could not be built",
            script.display()
        );
    }
    Ok(PathBuf::from(last.trim()))
}

struct Pki {
    ca_pem: String,
    admin: ClientCert,
    controller_manager: ClientCert,
}

struct ClientCert {
    cert_pem: String,
    key_pem: String,
}

impl Pki {
    /// Writes the CA, the API server's serving certificate, the
    /// service-account key pair and returns the client certificates.
    fn write(dir: &Path) -> anyhow::Result<Self> {
        let pki = dir.join("pki");
        fs::create_dir_all(&pki)?;

        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "managedbot-testbed-ca");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let serving_key = KeyPair::generate()?;
        let mut serving = CertificateParams::new(vec![
            "127.0.0.1".to_string(),
            "localhost".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        serving
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let serving_cert = serving.signed_by(&serving_key, &issuer)?;

        let client = |user: &str, group: &str| -> anyhow::Result<ClientCert> {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params.distinguished_name.push(DnType::CommonName, user);
            params
                .distinguished_name
                .push(DnType::OrganizationName, group);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &issuer)?;
            Ok(ClientCert {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        let admin = client("admin", "system:masters")?;
        // The garbage collector deletes any kind of object, so the controller
        // manager runs with full rights rather than its bootstrap role.
        let controller_manager = client("system:kube-controller-manager", "system:masters")?;

        let sa_key = KeyPair::generate()?;
        fs::write(pki.join("ca.crt"), ca_cert.pem())?;
        fs::write(pki.join("apiserver.crt"), serving_cert.pem())?;
        fs::write(pki.join("apiserver.key"), serving_key.serialize_pem())?;
        fs::write(pki.join("sa.key"), sa_key.serialize_pem())?;
        fs::write(pki.join("sa.pub"), sa_key.public_key_pem())?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            admin,
            controller_manager,
        })
    }
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &ClientCert,
) -> anyhow::Result<()> {
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "testbed", "cluster": {
            "server": server,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": "testbed", "user": {
            "client-certificate-data": STANDARD.encode(&user.cert_pem),
            "client-key-data": STANDARD.encode(&user.key_pem),
        }}],
        "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "testbed"}}],
        "current-context": "testbed",
    });
    fs::write(path, serde_yaml_ng::to_string(&kubeconfig)?)?;
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Makes the child get SIGKILL when the thread that spawned it ends (for a
/// test: when the test or its process ends, however it ends).
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches nothing but the child.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

fn terminate(child: &mut Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    // SAFETY: sending a signal to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the directories of control planes whose process is gone (killed
/// before it could clean up).
fn sweep_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(TEMP_PREFIX));
        if !is_ours {
            continue;
        }
        let owner = fs::read_to_string(path.join("owner.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        if owner.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
