//! End-to-end fixture: the Akeyless emulator in this process, the real `serve` binary as a
//! child process on a temporary socket (logging at the most verbose level into a file), and a
//! tonic client over that socket — the parts a cluster would have, minus the cluster.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use akeyless_csi_provider::emulator::{self, EmulatorHandle, Fault, FaultKind, Seed};
use akeyless_csi_provider::mount_cli;
use akeyless_csi_provider::proto::v1alpha1::{MountRequest, MountResponse};

pub const ACCESS_ID: &str = "p-e2etest000001";
pub const ACCESS_KEY: &str = "e2e-access-key-5e1f0c7a";
pub const OTHER_ID: &str = "p-e2etest000002";
pub const OTHER_KEY: &str = "e2e-other-key-9b3d4a11";

/// A seed with two identities and `n` items `/e2e/item-<i>` whose values are `value-<i>-…`.
pub fn seed(n: usize) -> Seed {
    let mut yaml = format!(
        "token_ttl_seconds: 900\nauth_methods:\n  - access_id: {ACCESS_ID}\n    access_type: access_key\n    access_key: \"{ACCESS_KEY}\"\n    read: [\"/e2e/*\"]\n  - access_id: {OTHER_ID}\n    access_type: access_key\n    access_key: \"{OTHER_KEY}\"\n    read: [\"/other/*\"]\nitems:\n"
    );
    for i in 0..n {
        yaml.push_str(&format!(
            "  - name: /e2e/item-{i}\n    value: \"{}\"\n",
            secret_value(i)
        ));
    }
    yaml.push_str(
        "  - name: /e2e/json\n    format: json\n    value: '{\"db\":{\"user\":\"app\",\"password\":\"json-secret-77aa\"},\"port\":5432}'\n",
    );
    yaml.push_str("  - name: /e2e/b64\n    value: \"aGVsbG8gYmluYXJ5IHdvcmxk\"\n");
    yaml.push_str(
        "  - name: /e2e/versioned\n    versions: [\"versioned-one-1a\", \"versioned-two-2b\"]\n",
    );
    yaml.push_str("  - name: /other/item\n    value: \"other-secret-0c0c\"\n");
    Seed::from_yaml(&yaml).expect("test seed parses")
}

/// A seed with one identity (ACCESS_ID, its access key) that may read `read`, top-level
/// `settings` lines (e.g. `list_page_size: 2\n`), and the items given as the YAML list entries
/// of `items:`.
pub fn seed_with_items(read: &str, settings: &str, items: &str) -> Seed {
    let yaml = format!(
        "token_ttl_seconds: 900\n{settings}auth_methods:\n  - access_id: {ACCESS_ID}\n    access_type: access_key\n    access_key: \"{ACCESS_KEY}\"\n    read: [\"{read}\"]\nitems:\n{items}"
    );
    Seed::from_yaml(&yaml).expect("test seed parses")
}

/// The value of `/e2e/item-<i>`: distinctive, so the log checks can look for it.
pub fn secret_value(i: usize) -> String {
    format!("value-{i}-SECRETMARK-{:08x}", 0x5eed_0000u32 + i as u32)
}

pub struct Harness {
    pub akeyless: EmulatorHandle,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub http: std::net::SocketAddr,
    log: PathBuf,
    child: Option<Child>,
    extra_args: Vec<String>,
    /// Extra environment of the provider process (e.g. `KUBECONFIG`).
    envs: Vec<(String, String)>,
}

impl Harness {
    /// Starts the emulator and `serve`, and waits until the socket answers.
    pub async fn start(seed: Seed) -> Self {
        Self::start_with(seed, &[]).await
    }

    pub async fn start_with(seed: Seed, extra_args: &[&str]) -> Self {
        Self::start_with_env(seed, extra_args, &[]).await
    }

    /// As [`Harness::start_with`], with these environment variables set for the provider.
    pub async fn start_with_env(seed: Seed, extra_args: &[&str], envs: &[(&str, &str)]) -> Self {
        let akeyless = emulator::start(([127, 0, 0, 1], 0).into(), seed)
            .await
            .expect("emulator starts");
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("akeyless.sock");
        let log = dir.path().join("provider.log");
        let http = free_port();
        let mut harness = Self {
            akeyless,
            socket,
            http,
            log,
            dir,
            child: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        harness.spawn_provider().await;
        harness
    }

    /// (Re)starts the provider process, appending to the same log file.
    pub async fn spawn_provider(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_akeyless-csi-provider"))
            .arg("serve")
            .arg("--socket")
            .arg(&self.socket)
            .arg("--akeyless-url")
            .arg(self.akeyless.url())
            .arg("--http-addr")
            .arg(self.http.to_string())
            .args(&self.extra_args)
            .env("AKEYLESS_CSI_LOG_LEVEL", "trace")
            .env("AKEYLESS_CSI_LOG_FORMAT", "json")
            .env_remove("AKEYLESS_CSI_VERSION_KEY")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("provider starts");
        self.child = Some(child);
        wait_for_socket(&self.socket, &mut self.child).await;
    }

    /// SIGTERM, then waits for the process to exit; returns its exit status code.
    pub async fn stop_provider(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the provider did not stop within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash or an OOM kill would: the socket file stays behind.
    pub fn kill_provider(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The provider's process id.
    pub fn provider_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The provider's resident memory in KiB (from /proc).
    pub fn provider_rss_kib(&self) -> Option<u64> {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.provider_pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// GET on the provider's HTTP endpoints: (status, body), or None if nothing answers.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }

    /// Whether the provider process is still running.
    pub fn provider_alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The provider's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a Mount the way the driver does, with a 2-minute deadline.
    pub async fn mount(&self, request: MountRequest) -> Result<MountResponse, tonic::Status> {
        self.mount_with_timeout(request, Duration::from_secs(120))
            .await
    }

    /// Starts a mount whose read Akeyless holds for `delay`, and returns once that read has
    /// reached Akeyless: a mount in flight, for drain, saturation and readiness tests.
    pub async fn slow_mount(
        &self,
        request: MountRequest,
        delay: Duration,
    ) -> tokio::task::JoinHandle<Result<MountResponse, tonic::Status>> {
        let before = self.akeyless.calls("/get-secret-value");
        self.akeyless.add_fault(Fault {
            endpoint: Some("/get-secret-value".into()),
            kind: FaultKind::Delay {
                ms: delay.as_millis() as u64,
            },
            times: Some(1),
        });
        let socket = self.socket.clone();
        let in_flight = tokio::spawn(async move {
            let mut client = mount_cli::connect(&socket).await.expect("connect");
            mount_cli::call(&mut client, request, Duration::from_secs(30)).await
        });
        let started = Instant::now();
        while self.akeyless.calls("/get-secret-value") <= before {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the mount never reached Akeyless"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        in_flight
    }

    pub async fn mount_with_timeout(
        &self,
        request: MountRequest,
        timeout: Duration,
    ) -> Result<MountResponse, tonic::Status> {
        let mut client = mount_cli::connect(&self.socket).await.expect("connect");
        mount_cli::call(&mut client, request, timeout).await
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback port nobody listens on right now.
/// Whether `text` holds something shaped like an Akeyless token (`t-` + 32 hex digits).
pub fn has_token(text: &str) -> bool {
    text.split(|c: char| !c.is_ascii_alphanumeric() && c != '-')
        .any(|w| {
            w.len() == 34 && w.starts_with("t-") && w[2..].chars().all(|c| c.is_ascii_hexdigit())
        })
}

pub fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

async fn wait_for_socket(socket: &Path, child: &mut Option<Child>) {
    let started = Instant::now();
    loop {
        if tokio::net::UnixStream::connect(socket).await.is_ok() {
            return;
        }
        if let Some(Ok(Some(status))) = child.as_mut().map(|c| c.try_wait()) {
            panic!("the provider exited early: {status}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the provider socket did not appear"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A Mount request as the v1.6 driver builds it: SPC parameters plus pod info.
pub fn request(params: &[(&str, &str)], secrets: Option<&[(&str, &str)]>) -> MountRequest {
    let mut attributes: BTreeMap<String, String> = params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in [
        ("secretProviderClass", "e2e-spc"),
        ("csi.storage.k8s.io/pod.name", "web-1"),
        ("csi.storage.k8s.io/pod.namespace", "shop"),
        (
            "csi.storage.k8s.io/pod.uid",
            "3f1c2e9a-0000-4000-8000-000000000001",
        ),
        ("csi.storage.k8s.io/serviceAccount.name", "web"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ] {
        attributes
            .entry(k.to_owned())
            .or_insert_with(|| v.to_owned());
    }
    let secrets = match secrets {
        None => "null".to_owned(),
        Some(pairs) => serde_json::to_string(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap(),
    };
    MountRequest {
        attributes: serde_json::to_string(&attributes).unwrap(),
        secrets,
        target_path: "/var/lib/kubelet/pods/3f1c2e9a/volumes/kubernetes.io~csi/secrets/mount"
            .into(),
        permission: "420".into(),
        current_object_version: vec![],
    }
}

/// A Go-provider-style request for `objects`, with the access key in the nodePublishSecretRef.
pub fn go_style_request(objects: &str) -> MountRequest {
    request(
        &[
            ("akeylessAccessID", ACCESS_ID),
            ("akeylessAccessType", "access_key"),
            ("objects", objects),
        ],
        Some(&[("akeylessAccessKey", ACCESS_KEY)]),
    )
}

/// A response's object versions by id.
pub fn versions(response: &MountResponse) -> BTreeMap<String, String> {
    response
        .object_version
        .iter()
        .map(|v| (v.id.clone(), v.version.clone()))
        .collect()
}

/// `objects` YAML for items 0..n, written to `file-<i>`.
pub fn objects(n: usize) -> String {
    (0..n)
        .map(|i| format!("- secretPath: /e2e/item-{i}\n  fileName: file-{i}\n"))
        .collect()
}
