//! A real Kubernetes control plane for the end-to-end tests: etcd, kube-apiserver and, on demand,
//! kube-controller-manager, from the directory in `KUBEBUILDER_ASSETS` (the envtest convention;
//! `.ci/run` sets it from `../shared/kube/assets`). Where a test checks Kubernetes' own behaviour
//! (validation, field managers, RBAC, ownerReferences and garbage collection, watches) it runs
//! against this; the fake API server (`fake_k8s`) is for faults a real server cannot be made to
//! produce.
//!
//! - One control plane per test binary, started by the first test that asks ([`shared`]) and shared
//!   by the others, each in its own namespace ([`ControlPlane::namespace`]). A `kube::Client` is
//!   bound to the runtime it was made in, and every `#[tokio::test]` has its own: each test makes
//!   its clients ([`ControlPlane::client`]); what is shared is processes and files.
//! - Without `KUBEBUILDER_ASSETS`, [`shared`] prints one line saying the test is skipped and why,
//!   and returns `None`.
//! - One temporary directory holds everything; every port is on 127.0.0.1, chosen free.
//! - The processes never outlive the test binary, whose statics are never dropped: a watchdog
//!   (`sh`) reads a pipe whose only writer is this process. When the process ends in any way
//!   (return, panic, SIGKILL), the kernel closes the pipe, and the watchdog kills the processes it
//!   was told about (checking that each is still ours) and removes the directory.
//! - Identities: `admin` (`system:masters`, a static token) for the tests' own calls;
//!   ServiceAccount tokens from TokenRequest ([`ControlPlane::service_account`]) for the processes
//!   under test, restricted by the RBAC the test applies.
//! - The API server keeps an audit log (metadata only: who, what, the answer's code), read by
//!   [`ControlPlane::requests`], so a test counts the requests a process made, refused ones too.
//!   The blocking audit backend logs a request before its response is complete, so every request
//!   whose answer a test has seen is in the log.
//! - The controller-manager (ServiceAccounts, namespaces, garbage collection) starts only for the
//!   binaries that ask ([`ControlPlane::controller_manager`]): CI has two cores.
#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Scope;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::harness::free_port;

/// The environment variable naming the directory with the binaries.
pub const ASSETS: &str = "KUBEBUILDER_ASSETS";
/// The field manager of the objects the tests apply.
pub const FIELD_MANAGER: &str = "tests";
const ADMIN: &str = "admin";
const CONTROLLER_MANAGER_USER: &str = "system:kube-controller-manager";
/// How long a process may take to become ready: two busy cores start an API server in 5–10 s.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an object may take to reach a state the control plane converges to.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Garbage collection: the controller-manager's first collection can take ~30 s.
pub const GC_TIMEOUT: Duration = Duration::from_secs(120);

static SHARED: OnceCell<ControlPlane> = OnceCell::const_new();

/// The control plane of this test binary, started on first use; `None` (after one line saying
/// so) when `KUBEBUILDER_ASSETS` is unset, so the calling test returns early.
pub async fn shared() -> Option<&'static ControlPlane> {
    let Some(assets) = std::env::var_os(ASSETS).filter(|v| !v.is_empty()) else {
        skip(&format!(
            "{ASSETS} is unset; point it at a directory holding etcd, kube-apiserver and kube-controller-manager (README, \"Tests\") to run it against a real control plane"
        ));
        return None;
    };
    Some(
        SHARED
            .get_or_init(|| ControlPlane::start(PathBuf::from(assets)))
            .await,
    )
}

pub struct ControlPlane {
    assets: PathBuf,
    /// Holds everything: keys, kubeconfigs, logs, etcd's data; removed by the watchdog.
    pub dir: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The admin's kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    ca_pem: String,
    audit_log: PathBuf,
    watchdog: Watchdog,
    controller_manager: OnceCell<()>,
    controller_manager_running: AtomicBool,
    crds: OnceCell<()>,
    names: AtomicUsize,
}

/// A user the API server knows, with a kubeconfig for it.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The user name RBAC sees, e.g. `system:serviceaccount:<ns>:<name>`.
    pub user: String,
    /// A kubeconfig for it: set `KUBECONFIG` to this for a spawned process.
    pub kubeconfig: PathBuf,
}

impl Identity {
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }
}

/// One request from the API server's audit log.
#[derive(Clone, Debug)]
pub struct Request {
    pub verb: String,
    pub user: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The HTTP status of the answer.
    pub code: u16,
    pub uri: String,
}

impl Request {
    /// The `fieldManager` the request named.
    pub fn field_manager(&self) -> Option<String> {
        super::fake_k8s::field_manager(self.uri.split_once('?').map(|(_, query)| query))
    }

    /// Whether it was a write (create, update, patch, delete) that the API server accepted.
    pub fn is_accepted_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) && (200..300).contains(&self.code)
    }
}

impl ControlPlane {
    async fn start(assets: PathBuf) -> Self {
        for binary in ["etcd", "kube-apiserver"] {
            assert!(
                assets.join(binary).is_file(),
                "{ASSETS}={} has no {binary}; point it at the directory `../shared/kube/assets` prints (README, \"Tests\")",
                assets.display()
            );
        }
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("kube-control-plane-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        let watchdog = Watchdog::start(&dir);
        let ca_pem = write_pki(&dir);
        let audit_log = dir.join("audit.log");
        std::fs::write(dir.join("audit-policy.yaml"), AUDIT_POLICY).expect("audit policy");

        // A port chosen free can be taken by someone else before the process binds it: try again
        // with others.
        let mut failures = Vec::new();
        for attempt in 1..=3 {
            let etcd = match start_etcd(&assets, &dir, attempt, &watchdog).await {
                Ok(url) => url,
                Err(why) => {
                    failures.push(why);
                    continue;
                }
            };
            match start_apiserver(&assets, &dir, attempt, &etcd, &watchdog).await {
                Ok(url) => {
                    let kubeconfig = dir.join("admin.kubeconfig");
                    write_kubeconfig(&kubeconfig, &url, &ca_pem, ADMIN_TOKEN, None);
                    eprintln!(
                        "control plane: {url} ready in {:.1} s ({})",
                        started.elapsed().as_secs_f64(),
                        dir.display()
                    );
                    return Self {
                        assets,
                        dir,
                        url,
                        kubeconfig,
                        ca_pem,
                        audit_log,
                        watchdog,
                        controller_manager: OnceCell::new(),
                        controller_manager_running: AtomicBool::new(false),
                        crds: OnceCell::new(),
                        names: AtomicUsize::new(0),
                    };
                }
                Err(why) => failures.push(why),
            }
        }
        panic!(
            "the control plane did not start:\n{}",
            failures.join("\n---\n")
        );
    }

    /// A client with the admin's rights, for this test's runtime.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// A fresh name `<prefix>-<n>`, unique in this control plane.
    pub fn unique(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.names.fetch_add(1, Ordering::Relaxed))
    }

    /// Creates a namespace of its own for a test, named `<prefix>-<n>`, with its `default`
    /// ServiceAccount (made here when no controller-manager runs to make it).
    pub async fn namespace(&self, prefix: &str) -> String {
        let name = self.unique(prefix);
        let client = self.client().await;
        create_namespace(&client, &name).await;
        if !self.controller_manager_running.load(Ordering::SeqCst) {
            create_service_account(&client, &name, "default").await;
        }
        name
    }

    /// The ServiceAccount `namespace/name` (created if absent) as an identity: a kubeconfig with a
    /// token from TokenRequest, valid for a day. It may do what the RBAC applied for it allows.
    pub async fn service_account(&self, namespace: &str, name: &str) -> Identity {
        let client = self.client().await;
        create_service_account(&client, namespace, name).await;
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(86_400),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let token = Api::<ServiceAccount>::namespaced(client, namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("a token for {namespace}/{name}: {e}"))
            .status
            .expect("a TokenRequest status")
            .token;
        let kubeconfig = self.dir.join(format!("{namespace}.{name}.kubeconfig"));
        write_kubeconfig(
            &kubeconfig,
            &self.url,
            &self.ca_pem,
            &token,
            Some(namespace),
        );
        Identity {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            kubeconfig,
        }
    }

    /// Applies the CRDs of `tests/crds/` (the driver's and ESO's kinds) and waits until they are
    /// `Established`; once per control plane.
    pub async fn install_crds(&self) {
        self.crds
            .get_or_init(|| async {
                let client = self.client().await;
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crds");
                let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                    .map(|entry| entry.expect("a directory entry").path())
                    .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
                    .collect();
                files.sort();
                let mut names = Vec::new();
                for file in files {
                    let text = std::fs::read_to_string(&file).expect("a CRD file");
                    for object in apply(&client, &text, None).await {
                        names.push(object.metadata.name.unwrap_or_default());
                    }
                }
                wait_established(&client, &names).await;
            })
            .await;
    }

    /// Starts kube-controller-manager (ServiceAccounts, namespaces, garbage collection) once, after
    /// the CRDs, so that its garbage collector watches their kinds from the start; returns when
    /// it has made the `default` ServiceAccount of a new namespace. `false` (after one line saying
    /// the test is skipped) where the assets have no controller-manager, as setup-envtest's
    /// have not: the calling test returns early.
    pub async fn controller_manager(&self) -> bool {
        if !self.assets.join("kube-controller-manager").is_file() {
            skip(&format!(
                "{ASSETS}={} has no kube-controller-manager (garbage collection needs it; ../shared/kube/assets has it)",
                self.assets.display()
            ));
            return false;
        }
        self.controller_manager
            .get_or_init(|| async {
                self.install_crds().await;
                let kubeconfig = self.dir.join("controller-manager.kubeconfig");
                write_kubeconfig(
                    &kubeconfig,
                    &self.url,
                    &self.ca_pem,
                    CONTROLLER_MANAGER_TOKEN,
                    None,
                );
                let args: Vec<String> = vec![
                    format!("--kubeconfig={}", kubeconfig.display()),
                    "--controllers=serviceaccount-controller,serviceaccount-token-controller,namespace-controller,garbage-collector-controller,root-ca-certificate-publisher-controller".into(),
                    format!("--service-account-private-key-file={}", self.dir.join("sa.key").display()),
                    format!("--root-ca-file={}", self.dir.join("ca.crt").display()),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                ];
                let log = self.dir.join("kube-controller-manager.log");
                let child = spawn(
                    &self.assets,
                    "kube-controller-manager",
                    &args,
                    &log,
                    &self.watchdog,
                );
                self.controller_manager_running.store(true, Ordering::SeqCst);
                let client = self.client().await;
                let probe = self.unique("controller-manager-probe");
                create_namespace(&client, &probe).await;
                let accounts = Api::<ServiceAccount>::namespaced(client, &probe);
                wait_ready(child, "kube-controller-manager", &log, || async {
                    accounts.get_opt("default").await.is_ok_and(|a| a.is_some())
                })
                .await
                .unwrap_or_else(|why| panic!("{why}"));
            })
            .await;
        true
    }

    /// Every request in the audit log so far (the tests' own, the processes' under test; not the
    /// API server's or the controller-manager's).
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|event| event["stage"] == "ResponseComplete")
            .map(|event| {
                let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                let object = &event["objectRef"];
                Request {
                    verb: text(&event["verb"]),
                    user: text(&event["user"]["username"]),
                    resource: text(&object["resource"]),
                    subresource: text(&object["subresource"]),
                    namespace: text(&object["namespace"]),
                    name: text(&object["name"]),
                    code: event["responseStatus"]["code"].as_u64().unwrap_or_default() as u16,
                    uri: text(&event["requestURI"]),
                }
            })
            .collect()
    }
}

/// A client for the user of a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> kube::Client {
    let file = Kubeconfig::read_from(kubeconfig)
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    let config = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", kubeconfig.display()));
    kube::Client::try_from(config).expect("a Kubernetes client")
}

/// Applies every object of a YAML stream (its documents, and the items of a `List`) by
/// server-side apply as [`FIELD_MANAGER`], forcing ownership; objects of a namespaced kind
/// without a namespace go to `namespace`. Returns them as the API server stored them.
pub async fn apply(
    client: &kube::Client,
    yaml: &str,
    namespace: Option<&str>,
) -> Vec<DynamicObject> {
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let value = Value::deserialize(document).expect("valid YAML");
        if value.is_null() {
            continue;
        }
        if value["kind"] == "List" {
            objects.extend(value["items"].as_array().cloned().unwrap_or_default());
        } else {
            objects.push(value);
        }
    }
    let mut applied = Vec::new();
    for object in objects {
        applied.push(apply_one(client, object, namespace).await);
    }
    applied
}

async fn apply_one(client: &kube::Client, object: Value, namespace: Option<&str>) -> DynamicObject {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    let gvk = GroupVersionKind::gvk(group, version, kind);
    // A kind whose CRD was just established can take a moment to appear in discovery.
    let (resource, capabilities) = eventually(
        &format!("{api_version} {kind} in discovery"),
        CONVERGE_TIMEOUT,
        || async { kube::discovery::pinned_kind(client, &gvk).await.ok() },
    )
    .await;
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or_else(|| panic!("a {kind} without metadata.name"))
        .to_owned();
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Cluster => Api::all_with(client.clone(), &resource),
        Scope::Namespaced => {
            let ns = object["metadata"]["namespace"]
                .as_str()
                .or(namespace)
                .unwrap_or_else(|| panic!("{kind} {name} needs a namespace"));
            Api::namespaced_with(client.clone(), ns, &resource)
        }
    };
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"))
}

/// Waits until these CRDs are `Established` (their kinds served).
pub async fn wait_established(client: &kube::Client, names: &[String]) {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    for name in names {
        eventually(
            &format!("CRD {name} to be Established"),
            CONVERGE_TIMEOUT,
            || async {
                let crd = api.get_opt(name).await.ok().flatten()?;
                let conditions = crd.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// Waits until the API server's authorizer answers `allowed` for `user` doing `verb` on
/// `resource` in `group` and `namespace`: RBAC objects reach the authorizer through a watch, a
/// moment after they are written.
pub async fn wait_access(
    client: &kube::Client,
    user: &str,
    verb: &str,
    (group, resource): (&str, &str),
    namespace: &str,
    allowed: bool,
) {
    let api = Api::<SubjectAccessReview>::all(client.clone());
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            resource_attributes: Some(ResourceAttributes {
                group: Some(group.to_owned()),
                resource: Some(resource.to_owned()),
                verb: Some(verb.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    eventually(
        &format!(
            "{user} to be {} {verb} {resource}",
            if allowed { "allowed to" } else { "denied" }
        ),
        CONVERGE_TIMEOUT,
        || async {
            let answer = api.create(&PostParams::default(), &review).await.ok()?;
            (answer.status?.allowed == allowed).then_some(())
        },
    )
    .await;
}

/// Polls `check` every 100 ms until it returns `Some`, for at most `timeout`; then panics naming
/// what it waited for. A bound on waiting, never a claim about speed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints that the calling test is skipped, and why.
fn skip(why: &str) {
    let thread = std::thread::current();
    eprintln!("{}: skipped: {why}", thread.name().unwrap_or("this test"));
}

async fn create_namespace(client: &kube::Client, name: &str) {
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a Namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
}

async fn create_service_account(client: &kube::Client, namespace: &str, name: &str) {
    let account: ServiceAccount =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}}))
            .expect("a ServiceAccount");
    match Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &account)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {namespace}/{name}: {e}"),
    }
}

// ---- processes ------------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "admin-token-for-tests-only";
const CONTROLLER_MANAGER_TOKEN: &str = "controller-manager-token-for-tests-only";

/// Metadata only (no bodies: no Secret values on disk); not the control plane's own requests,
/// nor non-resource ones such as `/readyz`.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: None
    users: [system:apiserver, system:kube-controller-manager]
  - level: None
    nonResourceURLs: ["*"]
  - level: Metadata
"#;

/// Kills the processes it is told about, and removes the directory, when the test binary ends.
struct Watchdog {
    pipe: Mutex<ChildStdin>,
    /// Never waited for: it outlives this process, by design.
    _process: Child,
}

/// `$1`: the directory. A pid is killed only while its command line still names the directory,
/// so a reused pid is left alone. Ctrl-C reaches the whole process group: the watchdog ignores
/// it to finish its work.
const WATCHDOG: &str = r#"trap '' INT TERM HUP
pids=
while read -r pid; do pids="$pids $pid"; done
for pid in $pids; do
  grep -qaF -- "$1" "/proc/$pid/cmdline" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
done
sleep 1
rm -rf -- "$1" 2>/dev/null || { sleep 2; rm -rf -- "$1"; }
"#;

impl Watchdog {
    fn start(dir: &Path) -> Self {
        let mut child = Command::new("sh")
            .args(["-c", WATCHDOG, "control-plane-watchdog"])
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts (the control plane's watchdog)");
        // The write end is close-on-exec: no other child holds it open.
        let pipe = child.stdin.take().expect("the watchdog's stdin");
        Self {
            pipe: Mutex::new(pipe),
            _process: child,
        }
    }

    fn watch(&self, pid: u32) {
        let mut pipe = self.pipe.lock().unwrap_or_else(|p| p.into_inner());
        writeln!(pipe, "{pid}").expect("the watchdog is running");
        pipe.flush().expect("the watchdog is running");
    }
}

fn spawn(assets: &Path, binary: &str, args: &[String], log: &Path, watchdog: &Watchdog) -> Child {
    let log_file = std::fs::File::create(log).expect("a log file");
    let child = Command::new(assets.join(binary))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().expect("a log file"))
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} does not start: {e}"));
    watchdog.watch(child.id());
    child
}

/// The last lines of a log, for a failure message.
fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Waits for a started process to answer `ready`; kills it if it exits or never does.
async fn wait_ready<F, Fut>(
    mut child: Child,
    binary: &str,
    log: &Path,
    mut ready: F,
) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{binary} exited ({status}):\n{}", tail(log)));
        }
        if ready().await {
            return Ok(());
        }
        if started.elapsed() > START_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{binary} was not ready within {START_TIMEOUT:?}:\n{}",
                tail(log)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Starts etcd (data thrown away, so no fsync); returns its client URL once it is healthy.
async fn start_etcd(
    assets: &Path,
    dir: &Path,
    attempt: usize,
    watchdog: &Watchdog,
) -> Result<String, String> {
    let client_url = format!("http://{}", free_port());
    let peer_url = format!("http://{}", free_port());
    let args: Vec<String> = vec![
        "--name=default".into(),
        format!(
            "--data-dir={}",
            dir.join(format!("etcd-{attempt}")).display()
        ),
        format!("--listen-client-urls={client_url}"),
        format!("--advertise-client-urls={client_url}"),
        format!("--listen-peer-urls={peer_url}"),
        format!("--initial-advertise-peer-urls={peer_url}"),
        format!("--initial-cluster=default={peer_url}"),
        "--initial-cluster-state=new".into(),
        "--unsafe-no-fsync".into(),
    ];
    let log = dir.join(format!("etcd-{attempt}.log"));
    let child = spawn(assets, "etcd", &args, &log, watchdog);
    let http = reqwest::Client::new();
    let health = format!("{client_url}/health");
    wait_ready(child, "etcd", &log, || async {
        let Ok(response) = http
            .get(&health)
            .timeout(Duration::from_secs(2))
            .send()
            .await
        else {
            return false;
        };
        response
            .json::<Value>()
            .await
            .is_ok_and(|v| v["health"] == "true")
    })
    .await?;
    Ok(client_url)
}

/// Starts kube-apiserver; returns its URL once `/readyz` answers 200 to the admin.
async fn start_apiserver(
    assets: &Path,
    dir: &Path,
    attempt: usize,
    etcd: &str,
    watchdog: &Watchdog,
) -> Result<String, String> {
    let address = free_port();
    let url = format!("https://{address}");
    let file = |name: &str| dir.join(name).display().to_string();
    let args: Vec<String> = vec![
        format!("--etcd-servers={etcd}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={}", address.port()),
        format!("--cert-dir={}", file("certs")),
        format!("--tls-cert-file={}", file("apiserver.crt")),
        format!("--tls-private-key-file={}", file("apiserver.key")),
        format!("--token-auth-file={}", file("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        format!("--service-account-key-file={}", file("sa.pub")),
        format!("--service-account-signing-key-file={}", file("sa.key")),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        "--api-audiences=https://kubernetes.default.svc.cluster.local".into(),
        "--service-cluster-ip-range=10.0.0.0/24".into(),
        "--endpoint-reconciler-type=none".into(),
        format!("--audit-policy-file={}", file("audit-policy.yaml")),
        format!("--audit-log-path={}", file("audit.log")),
        "--audit-log-mode=blocking".into(),
        "--profiling=false".into(),
    ];
    let log = dir.join(format!("kube-apiserver-{attempt}.log"));
    let child = spawn(assets, "kube-apiserver", &args, &log, watchdog);
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(dir.join("ca.crt")).expect("the CA certificate"),
    )
    .expect("a PEM certificate");
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("an HTTP client");
    let readyz = format!("{url}/readyz");
    wait_ready(child, "kube-apiserver", &log, || async {
        http.get(&readyz)
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await?;
    Ok(url)
}

// ---- keys and files ---------------------------------------------------------------------------

/// Writes a CA, the API server's serving certificate (127.0.0.1, localhost) signed by it, the
/// ServiceAccount signing key pair and the static tokens; returns the CA's PEM.
fn write_pki(dir: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "test control plane CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("the CA certificate");
    let issuer = Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().expect("a serving key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("serving certificate parameters");
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server
        .signed_by(&server_key, &issuer)
        .expect("the serving certificate");

    let sa_key = KeyPair::generate().expect("a ServiceAccount signing key");
    write("ca.crt", &ca_cert.pem());
    write("apiserver.crt", &server_cert.pem());
    write("apiserver.key", &server_key.serialize_pem());
    write("sa.key", &sa_key.serialize_pem());
    write("sa.pub", &sa_key.public_key_pem());
    write(
        "tokens.csv",
        &format!(
            "{ADMIN_TOKEN},{ADMIN},{ADMIN},\"system:masters\"\n{CONTROLLER_MANAGER_TOKEN},{CONTROLLER_MANAGER_USER},{CONTROLLER_MANAGER_USER},\"system:masters\"\n"
        ),
    );
    ca_cert.pem()
}

fn write_kubeconfig(path: &Path, url: &str, ca_pem: &str, token: &str, namespace: Option<&str>) {
    let mut context = serde_json::json!({"cluster": "test", "user": "user"});
    if let Some(namespace) = namespace {
        context["namespace"] = namespace.into();
    }
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": url,
            "certificate-authority-data": STANDARD.encode(ca_pem),
        }}],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": context}],
        "current-context": "test",
    });
    // JSON is YAML: any kubeconfig reader takes it.
    std::fs::write(path, config.to_string()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}
