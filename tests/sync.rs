//! Secret sync end to end: the real `serve` binary with `--sync-secrets`, the Akeyless emulator,
//! and the in-process fake Kubernetes API server (tests/common/fake_k8s.rs) on real HTTP.

mod common;

use akeyless_csi_provider::emulator::Seed;
use akeyless_csi_provider::proto::v1alpha1::MountRequest;
use common::fake_k8s::FakeK8s;
use common::harness::{ACCESS_ID, ACCESS_KEY, Harness};
use serde_json::Value;
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

/// Stores the SPC in the fake API server and builds the driver's request for it: the SPC's
/// parameters, then the pod's `volume_attributes` merged over them (as the driver does).
fn spc_and_request(
    k8s: &FakeK8s,
    spc_params: &[(&str, &str)],
    volume_attributes: &[(&str, &str)],
) -> (String, MountRequest) {
    let params = parameters(spc_params);
    let uid = k8s.put_spc(NS, SPC, &params);
    let mut merged: std::collections::BTreeMap<&str, &str> = params.into_iter().collect();
    merged.extend(volume_attributes.iter().copied());
    merged.insert("secretProviderClass", SPC);
    let merged: Vec<(&str, &str)> = merged.into_iter().collect();
    let request = common::harness::request(&merged, Some(&[("akeylessAccessKey", ACCESS_KEY)]));
    (uid, request)
}

fn mapping_request(k8s: &FakeK8s, mapping: &str) -> (String, MountRequest) {
    spc_and_request(k8s, &[("secretSync", mapping)], &[])
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

#[tokio::test]
async fn owner_creates_the_issue_example_in_the_same_batched_reads() {
    let Setup { h, k8s } = setup().await;
    let (uid, request) = mapping_request(&k8s, ISSUE_MAPPING);
    let response = h.mount(request).await.expect("mount");
    assert_eq!(response.files.len(), 1, "the files are served as before");

    let secret = k8s.secret(NS, "db-credentials").expect("the Secret exists");
    assert_eq!(secret["type"], "kubernetes.io/basic-auth");
    assert_eq!(secret["metadata"]["namespace"], NS);
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

    let data = k8s.data(NS, "db-credentials");
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
    assert_no_leak(&h, None);
}

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
async fn an_unchanged_poll_writes_nothing_and_rotation_updates_the_secret() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
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
    let data = k8s.data(NS, "cfg");
    assert_eq!(data["log_level"], "debug", "rotation updates the Secret");
    assert!(
        data.contains_key("api_key"),
        "deletionPolicy Retain keeps a vanished key"
    );
    h.mount(request).await.expect("poll after rotation");
    assert_eq!(k8s.writes().len(), 2, "still no write while unchanged");
}

#[tokio::test]
async fn deletion_policy_delete_removes_keys_whose_source_is_gone() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: cfg, deletionPolicy: Delete}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request.clone()).await.expect("first mount");
    assert!(k8s.data(NS, "cfg").contains_key("api_key"));
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"info"}"#);
    h.mount(request).await.expect("after the key vanished");
    let data = k8s.data(NS, "cfg");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["log_level"]);
}

#[tokio::test]
async fn deletion_policy_delete_drops_the_keys_of_a_deleted_item_retain_fails() {
    let Setup { h, k8s } = setup().await;
    let mapping = r#"
- target: {name: creds, deletionPolicy: Delete}
  data:
    - {secretKey: config, remoteRef: {key: /prod/app-config}}
    - {secretKey: user, remoteRef: {key: /prod/db, property: username}}
"#;
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request.clone()).await.expect("first mount");
    assert!(k8s.data(NS, "creds").contains_key("config"));

    // The item is deleted in Akeyless: under Delete its key leaves the Secret, while the mount
    // and the other keys stay.
    h.akeyless.delete_item("/prod/app-config");
    let response = h
        .mount(request)
        .await
        .expect("Delete tolerates a deleted item");
    assert!(!response.files.is_empty());
    let data = k8s.data(NS, "creds");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["user"]);

    // Under Retain a deleted item is an error naming it, as for a file.
    let retain = r#"
- target: {name: kept, deletionPolicy: Retain}
  data: [{secretKey: config, remoteRef: {key: /prod/app-config}}]
"#;
    let (_, request) = mapping_request(&k8s, retain);
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
    let Setup { h, k8s } = setup().await;
    let mapping = r#"
- target: {name: orphaned, creationPolicy: Orphan}
  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]
- target: {name: never, creationPolicy: None}
  data: [{secretKey: v, remoteRef: {key: /prod/db, property: username, version: 2}}]
"#;
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request).await.expect("mount");
    let secret = k8s.secret(NS, "orphaned").expect("Orphan creates it");
    assert!(
        secret["metadata"]["ownerReferences"].is_null(),
        "Orphan: no owner"
    );
    assert_eq!(
        secret["metadata"]["annotations"]["akeyless-csi-provider/managed-by"],
        SPC
    );
    assert!(k8s.secret(NS, "never").is_none(), "None: not written");
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "None: its items are not read"
    );
}

#[tokio::test]
async fn merge_writes_only_our_keys_into_a_secret_that_opted_in() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: shared, creationPolicy: Merge, deletionPolicy: Delete}\n  data: [{secretKey: db-user, remoteRef: {key: /prod/db, property: username}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);

    let missing = h.mount(request.clone()).await.unwrap_err();
    assert_eq!(missing.code(), Code::FailedPrecondition);
    assert!(
        missing.message().contains("does not exist"),
        "{}",
        missing.message()
    );

    k8s.put_secret(NS, "shared", "Opaque", &[], &[("theirs", "keep")]);
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
        NS,
        "shared",
        "Opaque",
        &[("akeyless-csi-provider/merge-from", SPC)],
        &[("theirs", "keep")],
    );
    h.mount(request.clone()).await.expect("merge");
    let secret = k8s.secret(NS, "shared").unwrap();
    assert_eq!(k8s.data(NS, "shared")["theirs"], "keep");
    assert_eq!(k8s.data(NS, "shared")["db-user"], "app");
    assert!(
        secret["metadata"]["ownerReferences"].is_null(),
        "Merge adds no owner"
    );
    assert!(secret["metadata"]["annotations"]["akeyless-csi-provider/managed-by"].is_null());

    // Delete under Merge removes only keys we wrote whose source went away, never theirs.
    let shrunk = "- target: {name: shared, creationPolicy: Merge, deletionPolicy: Delete}\n  data: [{secretKey: other, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = mapping_request(&k8s, shrunk);
    h.mount(request).await.expect("merge again");
    let data = k8s.data(NS, "shared");
    assert_eq!(data.keys().collect::<Vec<_>>(), ["other", "theirs"]);
}

#[tokio::test]
async fn template_types_opaque_tls_and_dockerconfigjson() {
    let Setup { h, k8s } = setup().await;
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
    let (_, request) = mapping_request(&k8s, mapping);
    h.mount(request).await.expect("mount");
    assert_eq!(k8s.secret(NS, "opaque").unwrap()["type"], "Opaque");
    assert_eq!(k8s.secret(NS, "tls").unwrap()["type"], "kubernetes.io/tls");
    let tls = k8s.data(NS, "tls");
    assert!(tls["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(tls["tls.key"].contains("PRIVATE KEY"));
    assert_eq!(
        k8s.secret(NS, "registry").unwrap()["type"],
        "kubernetes.io/dockerconfigjson"
    );
    let config: Value =
        serde_json::from_str(&k8s.data(NS, "registry")[".dockerconfigjson"]).unwrap();
    let auth = &config["auths"]["registry.example.com"];
    assert_eq!(auth["username"], "app");
    assert_eq!(auth["password"], format!("v4-{MARK}"));
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, format!("app:v4-{MARK}").as_bytes());
    assert_no_leak(&h, None);
}

#[tokio::test]
async fn a_type_kubernetes_refuses_is_reported_not_retried() {
    let Setup { h, k8s } = setup().await;
    // A tls Secret without tls.key: the API server's validation refuses it.
    let mapping = "- target: {name: bad-tls, template: {type: kubernetes.io/tls}}\n  data: [{secretKey: tls.crt, remoteRef: {key: /prod/tls, property: crt}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("tls.key") && e.message().contains("HTTP 422"),
        "{}",
        e.message()
    );

    // A type change on a Secret we manage: Kubernetes forbids it, so it is not attempted.
    let opaque = "- target: {name: typed}\n  data: [{secretKey: tls.crt, remoteRef: {key: /prod/tls, property: crt}}, {secretKey: tls.key, remoteRef: {key: /prod/tls, property: key}}]\n";
    let (_, request) = mapping_request(&k8s, opaque);
    h.mount(request).await.expect("Opaque first");
    let writes = k8s.writes().len();
    let tls = opaque.replace(
        "{name: typed}",
        "{name: typed, template: {type: kubernetes.io/tls}}",
    );
    let (_, request) = mapping_request(&k8s, &tls);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().contains("has type Opaque, and Kubernetes does not allow changing it to kubernetes.io/tls; delete the Secret"),
        "{}",
        e.message()
    );
    assert_eq!(k8s.writes().len(), writes, "no write attempted");
    assert_no_leak(&h, Some(&e));
}

#[tokio::test]
async fn an_unmanaged_secret_is_never_overwritten() {
    let Setup { h, k8s } = setup().await;
    k8s.put_secret(
        NS,
        "db-credentials",
        "kubernetes.io/basic-auth",
        &[],
        &[("username", "theirs")],
    );
    let (_, request) = mapping_request(&k8s, ISSUE_MAPPING);
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(
        e.code(),
        Code::FailedPrecondition,
        "all-or-nothing: the mount fails"
    );
    assert!(
        e.message().contains(
            "Secret shop/db-credentials exists and is not managed by SecretProviderClass web-spc"
        ) && e.message().contains("choose another target.name"),
        "{}",
        e.message()
    );
    assert_eq!(k8s.data(NS, "db-credentials")["username"], "theirs");

    // Orphan refuses it the same way.
    let orphan = "- target: {name: db-credentials, creationPolicy: Orphan}\n  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]\n";
    let (_, request) = mapping_request(&k8s, orphan);
    let e = h.mount(request).await.unwrap_err();
    assert!(e.message().contains("is not managed by"), "{}", e.message());
    assert!(k8s.writes().is_empty());
}

#[tokio::test]
async fn pods_mounting_at_once_create_the_secret_once() {
    let Setup { h, k8s } = setup().await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
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
async fn missing_rbac_names_the_permission_and_the_fix() {
    // SPC reads are cached (--spc-cache-ttl): read on every mount, so that the second refusal
    // below comes from the API server.
    let k8s = FakeK8s::start().await;
    let url = k8s.url();
    let args = [
        "--sync-secrets",
        "--kube-api-url",
        &url,
        "--spc-cache-ttl",
        "0s",
    ];
    let h = Harness::start_with(seed(), &args).await;
    let mapping = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let (_, request) = mapping_request(&k8s, mapping);
    k8s.deny("create", "secrets");
    let e = h.mount(request.clone()).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains(
            "the provider's service account may not create secrets in namespace shop (HTTP 403)"
        ) && e.message().contains("get, create, update on secrets")
            && e.message().contains("Mirroring into Kubernetes Secrets"),
        "{}",
        e.message()
    );
    k8s.deny("get", "secretproviderclasses");
    let e = h.mount(request).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("may not get secretproviderclasses.secrets-store.csi.x-k8s.io"),
        "{}",
        e.message()
    );
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
