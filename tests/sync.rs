//! Secret sync end to end: the real `serve` binary with `--sync-secrets` and the Akeyless emulator,
//! against
//! - the real control plane (tests/common/control_plane.rs) where Kubernetes' behaviour is what is
//!   checked: Secrets created and updated under our field manager, ownerReferences and garbage
//!   collection, validation and type immutability, RBAC, concurrent writers. The provider runs as
//!   the ServiceAccount of deploy/, bound by the ClusterRole deploy/components/sync/rbac.yaml ships.
//!   Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset;
//! - the in-process fake API server (tests/common/fake_k8s.rs) for faults (write conflicts, a 403
//!   on cue) and for what does not depend on Kubernetes (reads shared with the files, refusals
//!   made before any write).

mod common;

use std::collections::BTreeMap;

use akeyless_csi_provider::emulator::Seed;
use akeyless_csi_provider::proto::v1alpha1::MountRequest;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::control_plane::{self, ControlPlane, Identity, apply, eventually};
use common::fake_k8s::{FakeK8s, Write, decoded_data};
use common::harness::{ACCESS_ID, ACCESS_KEY, Harness};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use tonic::Code;

const NS: &str = "shop";
const SPC: &str = "web-spc";
const MARK: &str = "SYNCMARK";

fn seed() -> Seed {
    let yaml = format!(
        r#"token_ttl_seconds: 900
auth_methods:
  - access_id: {ACCESS_ID}
    access_type: access_key
    access_key: "{ACCESS_KEY}"
    read: ["/prod/*"]
items:
  - name: /prod/db
    format: json
    versions:
      - '{{"username":"app","password":"v1-{MARK}"}}'
      - '{{"username":"app","password":"v2-{MARK}"}}'
      - '{{"username":"app","password":"v3-{MARK}"}}'
      - '{{"username":"app","password":"v4-{MARK}"}}'
  - name: /prod/app-config
    format: json
    value: '{{"log_level":"info","feature.flag":"on","api key":"k-{MARK}"}}'
  - name: /prod/plain
    value: "plain-{MARK}"
  - name: /prod/tls
    format: json
    value: '{{"crt":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n","key":"-----BEGIN PRIVATE KEY-----\nMIIE-{MARK}\n-----END PRIVATE KEY-----\n"}}'
"#
    );
    Seed::from_yaml(&yaml).expect("seed parses")
}

const OBJECTS: &str = "- secretPath: /prod/plain\n  fileName: plain\n";

const ISSUE_MAPPING: &str = r#"
- target:
    name: db-credentials
    creationPolicy: Owner
    deletionPolicy: Retain
    template:
      type: kubernetes.io/basic-auth
      metadata: {labels: {app: api}, annotations: {team: payments}}
      data: {url: "postgres://{{ .username }}:{{ .password }}@db:5432/app"}
  data:
    - secretKey: username
      remoteRef: {key: /prod/db, property: username}
    - secretKey: password
      remoteRef: {key: /prod/db, property: password, version: 3}
  dataFrom:
    - extract: {key: /prod/app-config}
"#;

struct Setup {
    h: Harness,
    k8s: FakeK8s,
}

async fn setup() -> Setup {
    let k8s = FakeK8s::start().await;
    let url = k8s.url();
    let h = Harness::start_with(seed(), &["--sync-secrets", "--kube-api-url", &url]).await;
    Setup { h, k8s }
}

/// The SPC's parameters: the access settings, `objects` and the given extra ones.
fn parameters<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut p = vec![
        ("akeylessAccessID", ACCESS_ID),
        ("akeylessAccessType", "access_key"),
        ("objects", OBJECTS),
    ];
    p.extend_from_slice(extra);
    p
}

/// The driver's request for the SPC with these parameters, for a pod in `namespace`: the SPC's
/// parameters, then the pod's `volume_attributes` merged over them (as the driver does).
fn request(
    namespace: &str,
    params: &[(&str, &str)],
    volume_attributes: &[(&str, &str)],
) -> MountRequest {
    let mut merged: BTreeMap<&str, &str> = params.iter().copied().collect();
    merged.extend(volume_attributes.iter().copied());
    merged.insert("secretProviderClass", SPC);
    merged.insert("csi.storage.k8s.io/pod.namespace", namespace);
    let merged: Vec<(&str, &str)> = merged.into_iter().collect();
    common::harness::request(&merged, Some(&[("akeylessAccessKey", ACCESS_KEY)]))
}

/// Stores the SPC in the fake API server and builds the driver's request for it.
fn spc_and_request(
    k8s: &FakeK8s,
    spc_params: &[(&str, &str)],
    volume_attributes: &[(&str, &str)],
) -> (String, MountRequest) {
    let params = parameters(spc_params);
    let uid = k8s.put_spc(NS, SPC, &params);
    (uid, request(NS, &params, volume_attributes))
}

fn mapping_request(k8s: &FakeK8s, mapping: &str) -> (String, MountRequest) {
    spc_and_request(k8s, &[("secretSync", mapping)], &[])
}

/// The provider's identity on the real control plane: the ServiceAccount `akeyless-csi-provider`
/// in the namespace `akeyless-csi-provider`, as deploy/ creates it, bound by the ClusterRole and
/// binding of deploy/components/sync/rbac.yaml exactly as shipped. Once per test binary.
async fn provider_identity(cp: &ControlPlane) -> Identity {
    static PROVIDER: OnceCell<Identity> = OnceCell::const_new();
    PROVIDER
        .get_or_init(|| async {
            cp.install_crds().await;
            let client = cp.client().await;
            apply(
                &client,
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: akeyless-csi-provider}\n",
                None,
            )
            .await;
            let identity = cp
                .service_account("akeyless-csi-provider", "akeyless-csi-provider")
                .await;
            let rbac = std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("deploy/components/sync/rbac.yaml"),
            )
            .expect("the shipped RBAC");
            apply(&client, &rbac, None).await;
            control_plane::wait_access(
                &client,
                &identity.user,
                "create",
                ("", "secrets"),
                "default",
                true,
            )
            .await;
            identity
        })
        .await
        .clone()
}

/// The provider against the real control plane, in a namespace of this test's own.
struct Real {
    h: Harness,
    cp: &'static ControlPlane,
    client: kube::Client,
    ns: String,
    /// Who the provider is to the API server.
    provider: Identity,
}

/// `None` (the test returns) where `KUBEBUILDER_ASSETS` is unset.
async fn real() -> Option<Real> {
    let cp = control_plane::shared().await?;
    let provider = provider_identity(cp).await;
    let ns = cp.namespace("shop").await;
    Some(Real::start(cp, provider, ns).await)
}

impl Real {
    /// Starts the provider as `provider`, for pods in `ns`.
    async fn start(cp: &'static ControlPlane, provider: Identity, ns: String) -> Self {
        Self::start_with(cp, provider, ns, &[]).await
    }

    /// Starts the provider as `provider`, for pods in `ns`, with these flags besides
    /// `--sync-secrets`.
    async fn start_with(
        cp: &'static ControlPlane,
        provider: Identity,
        ns: String,
        flags: &[&str],
    ) -> Self {
        let kubeconfig = provider.kubeconfig.display().to_string();
        let args: Vec<&str> = std::iter::once("--sync-secrets")
            .chain(flags.iter().copied())
            .collect();
        let h = Harness::start_with_env(seed(), &args, &[("KUBECONFIG", &kubeconfig)]).await;
        Self {
            h,
            cp,
            client: cp.client().await,
            ns,
            provider,
        }
    }

    fn spcs(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("secrets-store.csi.x-k8s.io", "v1", "SecretProviderClass");
        let resource = ApiResource::from_gvk_with_plural(&gvk, "secretproviderclasses");
        Api::namespaced_with(self.client.clone(), &self.ns, &resource)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Applies the SPC with these parameters and builds the driver's request for it; returns
    /// the SPC's uid too.
    async fn spc_and_request(
        &self,
        spc_params: &[(&str, &str)],
        volume_attributes: &[(&str, &str)],
    ) -> (String, MountRequest) {
        let params = parameters(spc_params);
        let spc = json!({
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": SPC},
            "spec": {"provider": "akeyless", "parameters": params.iter().copied().collect::<BTreeMap<_, _>>()},
        });
        let applied = apply(&self.client, &spc.to_string(), Some(&self.ns)).await;
        let uid = applied[0].metadata.uid.clone().expect("a uid");
        (uid, request(&self.ns, &params, volume_attributes))
    }

    async fn mapping_request(&self, mapping: &str) -> (String, MountRequest) {
        self.spc_and_request(&[("secretSync", mapping)], &[]).await
    }

    /// Writes a Secret as a user would (server-side apply by the tests' field manager).
    async fn put_secret(
        &self,
        name: &str,
        secret_type: &str,
        annotations: &[(&str, &str)],
        data: &[(&str, &str)],
    ) {
        let data: BTreeMap<&str, String> =
            data.iter().map(|(k, v)| (*k, STANDARD.encode(v))).collect();
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret", "type": secret_type, "data": data,
            "metadata": {"name": name, "annotations": annotations},
        });
        apply(&self.client, &secret.to_string(), Some(&self.ns)).await;
    }

    /// The Secret as the API server has it, as JSON.
    async fn secret(&self, name: &str) -> Option<Value> {
        let secret = self.secrets().get_opt(name).await.expect("GET Secret")?;
        Some(serde_json::to_value(secret).expect("JSON"))
    }

    /// The Secret's data, decoded.
    async fn data(&self, name: &str) -> BTreeMap<String, String> {
        self.secret(name)
            .await
            .map(|s| decoded_data(&s))
            .unwrap_or_default()
    }

    async fn secret_names(&self) -> Vec<String> {
        self.secrets()
            .list(&Default::default())
            .await
            .expect("LIST Secrets")
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect()
    }

    /// The provider's requests on Secrets in this namespace, from the audit log.
    fn secret_requests(&self) -> Vec<control_plane::Request> {
        self.cp
            .requests()
            .into_iter()
            .filter(|r| {
                r.user == self.provider.user && r.namespace == self.ns && r.resource == "secrets"
            })
            .collect()
    }

    /// The Secret writes of the provider that the API server accepted, in order.
    fn writes(&self) -> Vec<Write> {
        self.secret_requests()
            .into_iter()
            .filter(|r| r.is_accepted_write())
            .map(|r| Write {
                verb: match r.verb.as_str() {
                    "create" => "create",
                    "update" => "update",
                    "patch" => "patch",
                    _ => "delete",
                },
                field_manager: r.field_manager(),
                namespace: r.namespace,
                name: r.name,
            })
            .collect()
    }
}

fn assert_no_leak(h: &Harness, error: Option<&tonic::Status>) {
    assert!(!h.logs().contains(MARK), "a value reached the log");
    if let Some(e) = error {
        assert!(
            !e.message().contains(MARK),
            "a value reached the error: {}",
            e.message()
        );
    }
}

// ---- Kubernetes' behaviour: the real control plane ----------------------------------------

#[tokio::test]
async fn owner_creates_the_issue_example_in_the_same_batched_reads() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let (uid, request) = k8s.mapping_request(ISSUE_MAPPING).await;
    let response = h.mount(request).await.expect("mount");
    assert_eq!(response.files.len(), 1, "the files are served as before");

    let secret = k8s
        .secret("db-credentials")
        .await
        .expect("the Secret exists");
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(secret["metadata"]["namespace"], k8s.ns.as_str());
    assert_eq!(secret["metadata"]["labels"]["app"], "api");
    assert_eq!(secret["metadata"]["annotations"]["team"], "payments");
    assert_eq!(
        secret["metadata"]["annotations"]["akeyless-csi-provider/managed-by"],
        SPC
    );
    let owner = &secret["metadata"]["ownerReferences"][0];
    assert_eq!(owner["apiVersion"], "secrets-store.csi.x-k8s.io/v1");
    assert_eq!(owner["kind"], "SecretProviderClass");
    assert_eq!(owner["name"], SPC);
    assert_eq!(owner["uid"], uid.as_str());
    assert_eq!(
        secret["metadata"]["managedFields"][0]["manager"],
        "akeyless-csi-provider"
    );

    let data = k8s.data("db-credentials").await;
    assert_eq!(data["username"], "app");
    assert_eq!(
        data["password"],
        format!("v3-{MARK}"),
        "version 3 is pinned"
    );
    assert_eq!(data["url"], format!("postgres://app:v3-{MARK}@db:5432/app"));
    assert_eq!(data["log_level"], "info", "dataFrom extracts every key");
    assert_eq!(data["feature.flag"], "on");
    assert_eq!(
        data["api_key"],
        format!("k-{MARK}"),
        "keys are converted like ESO's"
    );

    // Files + latest items in one call, the pinned version in another: nothing read twice.
    assert_eq!(h.akeyless.calls("/get-secret-value"), 2);
    let writes = k8s.writes();
    assert_eq!(writes.len(), 1);
    assert_eq!(writes[0].verb, "create");
    assert_eq!(
        writes[0].field_manager.as_deref(),
        Some("akeyless-csi-provider")
    );
    assert_no_leak(h, None);
}

#[tokio::test]
async fn an_unchanged_poll_writes_nothing_and_rotation_updates_the_secret() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = k8s.mapping_request(mapping).await;
    h.mount(request.clone()).await.expect("first mount");
    h.mount(request.clone()).await.expect("rotation poll");
    assert_eq!(k8s.writes().len(), 1, "an unchanged poll makes no write");

    h.akeyless.put_secret(
        "/prod/app-config",
        r#"{"log_level":"debug","feature.flag":"on"}"#,
    );
    h.mount(request.clone()).await.expect("after rotation");
    let writes = k8s.writes();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[1].verb, "update");
    assert_eq!(
        writes[1].field_manager.as_deref(),
        Some("akeyless-csi-provider")
    );
    let data = k8s.data("cfg").await;
    assert_eq!(data["log_level"], "debug", "rotation updates the Secret");
    assert!(
        data.contains_key("api_key"),
        "deletionPolicy Retain keeps a vanished key"
    );
    h.mount(request).await.expect("poll after rotation");
    assert_eq!(k8s.writes().len(), 2, "still no write while unchanged");
    let attempts = k8s
        .secret_requests()
        .iter()
        .filter(|r| r.verb == "update" || r.verb == "create")
        .count();
    assert_eq!(attempts, 2, "nor any refused attempt");
}

#[tokio::test]
async fn deletion_policy_delete_removes_keys_whose_source_is_gone() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = "- target: {name: cfg, deletionPolicy: Delete}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = k8s.mapping_request(mapping).await;
    h.mount(request.clone()).await.expect("first mount");
    assert!(k8s.data("cfg").await.contains_key("api_key"));
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"info"}"#);
    h.mount(request).await.expect("after the key vanished");
    let data = k8s.data("cfg").await;
    assert_eq!(data.keys().collect::<Vec<_>>(), ["log_level"]);
}

#[tokio::test]
async fn deletion_policy_delete_drops_the_keys_of_a_deleted_item_retain_fails() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = r#"
- target: {name: creds, deletionPolicy: Delete}
  data:
    - {secretKey: config, remoteRef: {key: /prod/app-config}}
    - {secretKey: user, remoteRef: {key: /prod/db, property: username}}
"#;
    let (_, request) = k8s.mapping_request(mapping).await;
    h.mount(request.clone()).await.expect("first mount");
    assert!(k8s.data("creds").await.contains_key("config"));

    // The item is deleted in Akeyless: under Delete its key leaves the Secret, while the mount
    // and the other keys stay.
    h.akeyless.delete_item("/prod/app-config");
    let response = h
        .mount(request)
        .await
        .expect("Delete tolerates a deleted item");
    assert!(!response.files.is_empty());
    let data = k8s.data("creds").await;
    assert_eq!(data.keys().collect::<Vec<_>>(), ["user"]);

    // Under Retain a deleted item is an error naming it, as for a file.
    let retain = r#"
- target: {name: kept, deletionPolicy: Retain}
  data: [{secretKey: config, remoteRef: {key: /prod/app-config}}]
"#;
    let (_, request) = k8s.mapping_request(retain).await;
    let status = h.mount(request).await.expect_err("Retain needs the item");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().contains("/prod/app-config"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn orphan_has_no_owner_and_none_writes_nothing() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = r#"
- target: {name: orphaned, creationPolicy: Orphan}
  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]
- target: {name: never, creationPolicy: None}
  data: [{secretKey: v, remoteRef: {key: /prod/db, property: username, version: 2}}]
"#;
    let (_, request) = k8s.mapping_request(mapping).await;
    h.mount(request).await.expect("mount");
    let secret = k8s.secret("orphaned").await.expect("Orphan creates it");
    assert!(
        secret["metadata"]["ownerReferences"].is_null(),
        "Orphan: no owner"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["akeyless-csi-provider/managed-by"],
        SPC
    );
    assert!(k8s.secret("never").await.is_none(), "None: not written");
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "None: its items are not read"
    );
}

#[tokio::test]
async fn merge_writes_only_our_keys_into_a_secret_that_opted_in() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = "- target: {name: shared, creationPolicy: Merge, deletionPolicy: Delete}\n  data: [{secretKey: db-user, remoteRef: {key: /prod/db, property: username}}]\n";
    let (_, request) = k8s.mapping_request(mapping).await;

    let missing = h.mount(request.clone()).await.unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(
        missing.message().contains("does not exist"),
        "{}",
        missing.message()
    );

    k8s.put_secret("shared", "Opaque", &[], &[("theirs", "keep")])
        .await;
    let refused = h.mount(request.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused
            .message()
            .contains("annotate it with akeyless-csi-provider/merge-from: web-spc"),
        "{}",
        refused.message()
    );
    assert!(
        k8s.writes().is_empty(),
        "nothing written without the opt-in"
    );

    k8s.put_secret(
        "shared",
        "Opaque",
        &[("akeyless-csi-provider/merge-from", SPC)],
        &[("theirs", "keep")],
    )
    .await;
    h.mount(request.clone()).await.expect("merge");
    let secret = k8s.secret("shared").await.unwrap();
    assert_eq!(k8s.data("shared").await["theirs"], "keep");
    assert_eq!(k8s.data("shared").await["db-user"], "app");
    assert!(
        secret["metadata"]["ownerReferences"].is_null(),
        "Merge adds no owner"
    );
    assert!(secret["metadata"]["annotations"]["akeyless-csi-provider/managed-by"].is_null());

    // Delete under Merge removes only keys we wrote whose source went away, never theirs.
    let shrunk = "- target: {name: shared, creationPolicy: Merge, deletionPolicy: Delete}\n  data: [{secretKey: other, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = k8s.mapping_request(shrunk).await;
    h.mount(request).await.expect("merge again");
    let data = k8s.data("shared").await;
    assert_eq!(data.keys().collect::<Vec<_>>(), ["other", "theirs"]);
}

#[tokio::test]
async fn template_types_opaque_tls_and_dockerconfigjson() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = r#"
- target: {name: opaque}
  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]
- target:
    name: tls
    template:
      type: kubernetes.io/tls
      data: {tls.crt: "{{ .crt }}", tls.key: "{{ .key }}"}
  dataFrom: [{extract: {key: /prod/tls}}]
- target:
    name: registry
    template:
      type: kubernetes.io/dockerconfigjson
      data:
        .dockerconfigjson: '{"auths":{"registry.example.com":{"username":{{ .username | toJson }},"password":{{ .password | toJson }},"auth":"{{ printf "%s:%s" .username .password | b64enc }}"}}}'
  data:
    - {secretKey: username, remoteRef: {key: /prod/db, property: username}}
    - {secretKey: password, remoteRef: {key: /prod/db, property: password}}
"#;
    let (_, request) = k8s.mapping_request(mapping).await;
    h.mount(request).await.expect("mount");
    assert_eq!(k8s.secret("opaque").await.unwrap()["type"], "Opaque");
    assert_eq!(
        k8s.secret("tls").await.unwrap()["type"],
        "kubernetes.io/tls"
    );
    let tls = k8s.data("tls").await;
    assert!(tls["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(tls["tls.key"].contains("PRIVATE KEY"));
    assert_eq!(
        k8s.secret("registry").await.unwrap()["type"],
        "kubernetes.io/dockerconfigjson"
    );
    let config: Value =
        serde_json::from_str(&k8s.data("registry").await[".dockerconfigjson"]).unwrap();
    let auth = &config["auths"]["registry.example.com"];
    assert_eq!(auth["username"], "app");
    assert_eq!(auth["password"], format!("v4-{MARK}"));
    let decoded = STANDARD.decode(auth["auth"].as_str().unwrap()).unwrap();
    assert_eq!(decoded, format!("app:v4-{MARK}").as_bytes());
    assert_no_leak(h, None);
}

#[tokio::test]
async fn a_type_kubernetes_refuses_is_reported_not_retried() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    // What the API server's validation refuses: a tls Secret without tls.key, basic-auth with
    // neither username nor password, a .dockerconfigjson that is not JSON. Its message (which
    // redacts the value) is clipped before anything it quotes.
    let tls = "- target: {name: bad-tls, template: {type: kubernetes.io/tls}}\n  data: [{secretKey: tls.crt, remoteRef: {key: /prod/tls, property: crt}}]\n";
    let basic = "- target: {name: bad-auth, template: {type: kubernetes.io/basic-auth}}\n  data: [{secretKey: token, remoteRef: {key: /prod/plain}}]\n";
    let docker = "- target: {name: bad-registry, template: {type: kubernetes.io/dockerconfigjson}}\n  data: [{secretKey: .dockerconfigjson, remoteRef: {key: /prod/plain}}]\n";
    for (mapping, refusal) in [
        (tls, "tls.key"),
        (basic, "data[username]: Required value"),
        (docker, "data[.dockerconfigjson]"),
    ] {
        let (_, request) = k8s.mapping_request(mapping).await;
        let e = h.mount(request).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{}", e.message());
        assert!(
            e.message().contains(refusal) && e.message().contains("HTTP 422"),
            "{}",
            e.message()
        );
        assert_no_leak(h, Some(&e));
    }
    assert!(k8s.writes().is_empty(), "nothing was stored");

    // A type change on a Secret we manage: Kubernetes forbids it, so it is not attempted.
    let opaque = "- target: {name: typed}\n  data: [{secretKey: tls.crt, remoteRef: {key: /prod/tls, property: crt}}, {secretKey: tls.key, remoteRef: {key: /prod/tls, property: key}}]\n";
    let (_, request) = k8s.mapping_request(opaque).await;
    h.mount(request).await.expect("Opaque first");
    let writes = k8s.writes().len();
    let attempts = k8s.secret_requests().len();
    let tls = opaque.replace(
        "{name: typed}",
        "{name: typed, template: {type: kubernetes.io/tls}}",
    );
    let (_, request) = k8s.mapping_request(&tls).await;
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("has type Opaque, and Kubernetes does not allow changing it to kubernetes.io/tls; delete the Secret"),
        "{}",
        e.message()
    );
    assert_eq!(k8s.writes().len(), writes, "no write attempted");
    let after: Vec<String> = k8s.secret_requests()[attempts..]
        .iter()
        .map(|r| r.verb.clone())
        .collect();
    assert_eq!(after, ["get"], "only the read that found the type");
    assert_no_leak(h, Some(&e));

    // What the provider relies on: the API server itself refuses the change.
    let mut secret = k8s.secrets().get("typed").await.unwrap();
    secret.type_ = Some("kubernetes.io/tls".to_owned());
    let refused = k8s
        .secrets()
        .replace("typed", &PostParams::default(), &secret)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("field is immutable"),
        "{refused}"
    );
}

#[tokio::test]
async fn an_unmanaged_secret_is_never_overwritten() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    k8s.put_secret(
        "db-credentials",
        "kubernetes.io/basic-auth",
        &[],
        &[("username", "theirs")],
    )
    .await;
    let (_, request) = k8s.mapping_request(ISSUE_MAPPING).await;
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "all-or-nothing: the mount fails"
    );
    assert!(
        e.message().contains(&format!(
            "Secret {}/db-credentials exists and is not managed by SecretProviderClass web-spc",
            k8s.ns
        )) && e.message().contains("choose another target.name"),
        "{}",
        e.message()
    );
    assert_eq!(k8s.data("db-credentials").await["username"], "theirs");

    // Orphan refuses it the same way.
    let orphan = "- target: {name: db-credentials, creationPolicy: Orphan}\n  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = k8s.mapping_request(orphan).await;
    let e = h.mount(request).await.unwrap_err();
    assert!(e.message().contains("is not managed by"), "{}", e.message());
    assert!(k8s.writes().is_empty());
}

#[tokio::test]
async fn pods_mounting_at_once_create_the_secret_once() {
    let Some(k8s) = real().await else { return };
    let h = &k8s.h;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = k8s.mapping_request(mapping).await;
    let mounts = (0..6).map(|_| h.mount(request.clone()));
    for outcome in futures::future::join_all(mounts).await {
        outcome.expect("every mount succeeds");
    }
    let writes = k8s.writes();
    assert_eq!(
        writes.len(),
        1,
        "one create; the others find it unchanged: {writes:?}"
    );
}

#[tokio::test]
async fn an_old_drivers_rotation_syncs_after_a_restart_through_the_pods_status() {
    // A driver up to v1.5 rotates without `secretProviderClass`. After a provider restart, the
    // driver's SecretProviderClassPodStatus of the pod volume names the SPC: read with the
    // shipped RBAC, it must match the real Pod (its uid, as the status's owner) and target path.
    let Some(mut k8s) = real().await else { return };
    let pod = apply(
        &k8s.client,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1}\nspec: {automountServiceAccountToken: false, containers: [{name: app, image: app}]}\n",
        Some(&k8s.ns),
    )
    .await;
    let pod_uid = pod[0].metadata.uid.clone().expect("a pod uid");
    let target = format!("/var/lib/kubelet/pods/{pod_uid}/volumes/kubernetes.io~csi/secrets/mount");
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, first) = k8s.mapping_request(mapping).await;
    let mut attributes: BTreeMap<String, String> = serde_json::from_str(&first.attributes).unwrap();
    attributes.insert("csi.storage.k8s.io/pod.uid".into(), pod_uid.clone());
    let first = MountRequest {
        attributes: serde_json::to_string(&attributes).unwrap(),
        target_path: target.clone(),
        ..first
    };
    attributes.remove("secretProviderClass");
    attributes.remove("csi.storage.k8s.io/ephemeral");
    let rotation = MountRequest {
        attributes: serde_json::to_string(&attributes).unwrap(),
        ..first.clone()
    };
    k8s.h.mount(first).await.expect("first mount");
    assert_eq!(k8s.data("cfg").await["log_level"], "info");

    k8s.h.stop_provider().await;
    k8s.h.spawn_provider().await;
    let status = json!({
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {
            "name": format!("web-1-{}-{SPC}", k8s.ns),
            "labels": {"internal.secrets-store.csi.k8s.io/node-name": "node-1"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-1", "uid": pod_uid}],
        },
        "status": {
            "podName": "web-1", "secretProviderClassName": SPC, "mounted": true,
            "targetPath": target, "objects": [{"id": "plain", "version": "1"}],
        },
    });
    apply(&k8s.client, &status.to_string(), Some(&k8s.ns)).await;
    k8s.h
        .akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"warn"}"#);
    k8s.h.mount(rotation).await.expect("rotation after restart");
    assert_eq!(
        k8s.data("cfg").await["log_level"],
        "warn",
        "the Secret follows rotation"
    );
}

#[tokio::test]
async fn missing_rbac_names_the_permission_and_the_fix() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    cp.install_crds().await;
    // A provider whose ServiceAccount may get SPCs and get and update Secrets, but not create
    // them: the real API server's RBAC refuses.
    let ns = cp.namespace("rbac").await;
    let restricted = cp.service_account(&ns, "restricted").await;
    let role = |rules: &str| {
        format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: restricted}}
rules: {rules}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: restricted}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: restricted}}
subjects: [{{kind: ServiceAccount, name: restricted, namespace: {ns}}}]
"#
        )
    };
    let admin = cp.client().await;
    let spc_rule = "{apiGroups: [secrets-store.csi.x-k8s.io], resources: [secretproviderclasses], verbs: [get]}";
    let secret_rule = "{apiGroups: [\"\"], resources: [secrets], verbs: [get, update]}";
    apply(
        &admin,
        &role(&format!("[{spc_rule}, {secret_rule}]")),
        Some(&ns),
    )
    .await;
    let spcs = ("secrets-store.csi.x-k8s.io", "secretproviderclasses");
    control_plane::wait_access(&admin, &restricted.user, "get", spcs, &ns, true).await;
    // SPC reads are cached (--spc-cache-ttl): read on every mount, so that the second refusal
    // below comes from the API server rather than the cache.
    let k8s = Real::start_with(
        cp,
        restricted.clone(),
        ns.clone(),
        &["--spc-cache-ttl", "0s"],
    )
    .await;

    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = k8s.mapping_request(mapping).await;
    let e = k8s.h.mount(request.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains(&format!(
            "the provider's service account may not create secrets in namespace {ns} (HTTP 403)"
        )) && e.message().contains("get, create, update on secrets")
            && e.message().contains("Mirroring into Kubernetes Secrets"),
        "{}",
        e.message()
    );
    // The API server's own words name the identity and the missing permission.
    assert!(
        e.message().contains(&format!(
            "User \"{}\" cannot create resource \"secrets\" in API group \"\" in the namespace \"{ns}\"",
            restricted.user
        )),
        "{}",
        e.message()
    );

    apply(&admin, &role(&format!("[{secret_rule}]")), Some(&ns)).await;
    control_plane::wait_access(&admin, &restricted.user, "get", spcs, &ns, false).await;
    let e = k8s.h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("may not get secretproviderclasses.secrets-store.csi.x-k8s.io"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn deleting_the_spc_collects_owner_secrets_and_keeps_orphans() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    if !cp.controller_manager().await {
        return;
    }
    let provider = provider_identity(cp).await;
    let k8s = Real::start(cp, provider, cp.namespace("shop").await).await;
    let mapping = r#"
- target: {name: owned}
  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]
- target: {name: orphaned, creationPolicy: Orphan}
  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]
"#;
    let (_, request) = k8s.mapping_request(mapping).await;
    k8s.h.mount(request).await.expect("mount");
    assert!(k8s.secret("owned").await.is_some());
    k8s.spcs()
        .delete(SPC, &Default::default())
        .await
        .expect("delete the SPC");
    eventually(
        "the garbage collector to delete the Owner Secret",
        control_plane::GC_TIMEOUT,
        || async { k8s.secret("owned").await.is_none().then_some(()) },
    )
    .await;
    assert_eq!(
        k8s.data("orphaned").await["v"],
        format!("plain-{MARK}"),
        "an Orphan Secret outlives its SPC"
    );
    assert_eq!(k8s.secret_names().await, ["orphaned"]);
}

// ---- the provider's own logic and faults: the fake API server -------------------------------

#[tokio::test]
async fn an_item_already_read_for_a_file_is_not_read_again() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: plain}\n  data:\n    - secretKey: value\n      remoteRef: {key: /prod/plain}\n";
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request).await.expect("mount");
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "one batched read for files and Secret"
    );
    assert_eq!(k8s.data(NS, "plain")["value"], format!("plain-{MARK}"));
}

#[tokio::test]
async fn a_mapping_injected_through_volume_attributes_is_refused() {
    let Setup { h, k8s } = setup().await;
    // The SPC has no mapping; the pod adds one.
    let injected = "- target: {name: kube-root-ca.crt, creationPolicy: Orphan}\n  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = spc_and_request(&k8s, &[], &[("secretSync", injected)]);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("volume attributes change secretSync"),
        "{}",
        e.message()
    );

    // The SPC has one; the pod overrides it, or its failure policy.
    let (_, request) = spc_and_request(
        &k8s,
        &[("secretSync", ISSUE_MAPPING)],
        &[("secretSync", injected)],
    );
    assert_eq!(
        h.mount(request).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    let (_, request) = spc_and_request(
        &k8s,
        &[("secretSync", ISSUE_MAPPING)],
        &[("secretSyncFailurePolicy", "Warn")],
    );
    let e = h.mount(request).await.unwrap_err();
    assert!(
        e.message().contains("secretSyncFailurePolicy"),
        "{}",
        e.message()
    );
    assert!(k8s.secret_names().is_empty(), "nothing written");
}

#[tokio::test]
async fn any_namespace_but_the_pods_is_refused() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: x, namespace: kube-system}\n  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("target.namespace \"kube-system\" is refused: Secrets are written only in the pod's namespace \"shop\""),
        "{}",
        e.message()
    );
    assert!(k8s.secret_names().is_empty());
}

#[tokio::test]
async fn a_write_conflict_is_retried_on_a_fresh_read() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request.clone()).await.expect("create");
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"warn"}"#);
    k8s.conflict_next_updates(2);
    h.mount(request.clone())
        .await
        .expect("update after two conflicts");
    assert_eq!(k8s.conflicts_served(), 2);
    assert_eq!(k8s.data(NS, "cfg")["log_level"], "warn");

    // A writer that never stops: reported, not retried forever.
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"error"}"#);
    k8s.conflict_next_updates(100);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("kept changing"), "{}", e.message());
    assert_eq!(k8s.conflicts_served(), 2 + 4);
}

#[tokio::test]
async fn failure_policy_warn_serves_the_files() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = spc_and_request(
        &k8s,
        &[("secretSync", mapping), ("secretSyncFailurePolicy", "Warn")],
        &[],
    );
    k8s.deny("create", "secrets");
    let response = h.mount(request).await.expect("Warn: the mount succeeds");
    assert_eq!(response.files.len(), 1);
    assert!(
        h.logs()
            .contains("secret sync failed; the files are served")
    );
    assert_no_leak(&h, None);
}

#[tokio::test]
async fn sync_off_names_the_flag_and_old_rotation_calls_skip_it() {
    let k8s = FakeK8s::start().await;
    let h = Harness::start(seed()).await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("--sync-secrets"), "{}", e.message());
    drop(h);

    // With sync on, a driver up to v1.5 rotating sends no secretProviderClass; when neither
    // the provider's memory of the pod volume nor a SecretProviderClassPodStatus names the SPC
    // (tests/node_path.rs shows both naming it), files only.
    let url = k8s.url();
    let h = Harness::start_with(seed(), &["--sync-secrets", "--kube-api-url", &url]).await;
    let (_, mut request) = mapping_request(&k8s, mapping);
    let mut attributes: serde_json::Map<String, Value> =
        serde_json::from_str(&request.attributes).unwrap();
    attributes.remove("secretProviderClass");
    request.attributes = serde_json::to_string(&attributes).unwrap();
    let response = h.mount(request).await.expect("files are served");
    assert_eq!(response.files.len(), 1);
    assert_eq!(k8s.spc_gets(), 0);
    assert_eq!(
        k8s.spcps_lists(),
        1,
        "the pod volume's status was looked for"
    );
    assert!(k8s.writes().is_empty());
}
