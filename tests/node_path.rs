//! The node path under the conditions of real nodes: old drivers' rotation calls, SPC reads
//! bounded per node, issuing calls that must not issue twice, and answers whose shape Akeyless
//! does not document. The real `serve` binary, the Akeyless emulator and, for secret sync, the
//! in-process fake Kubernetes API server (tests/common/fake_k8s.rs).

mod common;

use std::collections::BTreeMap;

use akeyless_csi_provider::emulator::Seed;
use akeyless_csi_provider::proto::v1alpha1::MountRequest;
use common::fake_k8s::FakeK8s;
use common::harness::{ACCESS_ID, ACCESS_KEY, Harness};
use tonic::Code;

const NS: &str = "shop";
const SPC: &str = "web-spc";
const POD: &str = "web-1";
const POD_UID: &str = "3f1c2e9a-0000-4000-8000-000000000001";
const TARGET: &str = "/var/lib/kubelet/pods/3f1c2e9a/volumes/kubernetes.io~csi/secrets/mount";
const MAPPING: &str = "- target: {name: cfg}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
const OBJECTS: &str = "- secretPath: /prod/plain\n  fileName: plain\n";

fn sync_seed() -> Seed {
    let yaml = format!(
        r#"token_ttl_seconds: 900
auth_methods:
  - access_id: {ACCESS_ID}
    access_type: access_key
    access_key: "{ACCESS_KEY}"
    read: ["/prod/*"]
items:
  - name: /prod/app-config
    format: json
    value: '{{"log_level":"info"}}'
  - name: /prod/plain
    value: "plain-value"
"#
    );
    Seed::from_yaml(&yaml).expect("seed parses")
}

async fn sync_setup(extra: &[&str]) -> (Harness, FakeK8s) {
    let k8s = FakeK8s::start().await;
    let url = k8s.url();
    let mut args = vec!["--sync-secrets", "--kube-api-url", url.as_str()];
    args.extend_from_slice(extra);
    let h = Harness::start_with(sync_seed(), &args).await;
    (h, k8s)
}

/// The SPC's parameters with `secretSync: mapping`.
fn spc_parameters(mapping: &str) -> Vec<(&str, &str)> {
    vec![
        ("akeylessAccessID", ACCESS_ID),
        ("akeylessAccessType", "access_key"),
        ("objects", OBJECTS),
        ("secretSync", mapping),
    ]
}

/// What a v1.6 driver sends for the pod volume: the SPC's parameters, `secretProviderClass`,
/// the pod keys and `ephemeral`.
fn current_driver_mount(k8s: &FakeK8s, mapping: &str) -> MountRequest {
    let params = spc_parameters(mapping);
    k8s.put_spc(NS, SPC, &params);
    let mut attributes = params;
    attributes.push(("secretProviderClass", SPC));
    common::harness::request(&attributes, Some(&[("akeylessAccessKey", ACCESS_KEY)]))
}

/// What a driver up to v1.5 sends when it rotates the same volume (csi-driver.md §2.1): the
/// SPC's parameters plus the four pod keys — no `secretProviderClass`, no `ephemeral`.
fn old_driver_rotation(request: &MountRequest) -> MountRequest {
    let mut attributes: BTreeMap<String, String> =
        serde_json::from_str(&request.attributes).unwrap();
    attributes.remove("secretProviderClass");
    attributes.remove("csi.storage.k8s.io/ephemeral");
    for key in [
        "csi.storage.k8s.io/pod.name",
        "csi.storage.k8s.io/pod.namespace",
        "csi.storage.k8s.io/pod.uid",
        "csi.storage.k8s.io/serviceAccount.name",
    ] {
        assert!(attributes.contains_key(key), "{key}");
    }
    MountRequest {
        attributes: serde_json::to_string(&attributes).unwrap(),
        ..request.clone()
    }
}

fn log_level(k8s: &FakeK8s) -> String {
    k8s.data(NS, "cfg")
        .get("log_level")
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn old_driver_rotation_calls_sync_before_and_after_a_provider_restart() {
    let (mut h, k8s) = sync_setup(&[]).await;
    let first = current_driver_mount(&k8s, MAPPING);
    h.mount(first.clone()).await.expect("first mount");
    assert_eq!(log_level(&k8s), "info");

    // Rotation by an old driver: the pod volume named its SPC on its first mount.
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"debug"}"#);
    let rotation = old_driver_rotation(&first);
    let response = h.mount(rotation.clone()).await.expect("rotation");
    assert_eq!(response.files.len(), 1);
    assert_eq!(log_level(&k8s), "debug", "the Secret follows rotation");
    assert_eq!(k8s.spcps_lists(), 0, "remembered, not looked up");

    // After a restart the provider has forgotten; the driver's SecretProviderClassPodStatus of
    // this pod volume says which SPC it is. Another pod's status (another uid, another volume)
    // sits beside it and names another SPC.
    h.stop_provider().await;
    h.spawn_provider().await;
    k8s.put_spcps(
        NS,
        "web-2",
        "99999999-0000-4000-8000-000000000002",
        "/var/lib/kubelet/pods/99999999/volumes/kubernetes.io~csi/secrets/mount",
        "other-spc",
    );
    k8s.put_spcps(NS, POD, POD_UID, TARGET, SPC);
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"warn"}"#);
    h.mount(rotation.clone())
        .await
        .expect("rotation after restart");
    assert_eq!(log_level(&k8s), "warn", "the Secret follows rotation");
    assert_eq!(k8s.spcps_lists(), 1);

    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"error"}"#);
    h.mount(rotation).await.expect("next rotation");
    assert_eq!(log_level(&k8s), "error");
    assert_eq!(k8s.spcps_lists(), 1, "the volume is remembered now");
    assert_eq!(k8s.spc_gets(), 2, "one SPC read per provider life");
}

#[tokio::test]
async fn another_pods_status_is_never_trusted() {
    let (mut h, k8s) = sync_setup(&[]).await;
    let first = current_driver_mount(&k8s, MAPPING);
    h.mount(first.clone()).await.expect("first mount");
    h.stop_provider().await;
    h.spawn_provider().await;
    // Same pod name and target path, another uid (a pod of the same name, recreated), and the
    // same uid with another target path: neither is this pod volume.
    k8s.put_spcps(NS, POD, "another-uid", TARGET, SPC);
    k8s.put_spcps(
        NS,
        POD,
        POD_UID,
        "/var/lib/kubelet/pods/3f1c2e9a/volumes/kubernetes.io~csi/other/mount",
        "x",
    );
    h.akeyless
        .put_secret("/prod/app-config", r#"{"log_level":"debug"}"#);
    let response = h
        .mount(old_driver_rotation(&first))
        .await
        .expect("files are served");
    assert_eq!(response.files.len(), 1);
    assert_eq!(
        log_level(&k8s),
        "info",
        "no sync without this volume's own status"
    );
    assert_eq!(k8s.spcps_lists(), 1);
}

#[tokio::test]
async fn two_hundred_mounts_of_one_synced_spc_read_it_once() {
    let (h, k8s) = sync_setup(&[]).await;
    let request = current_driver_mount(&k8s, MAPPING);
    // 200 pod volumes, half at once, half one after another.
    let pod = |i: usize| {
        let mut attributes: BTreeMap<String, String> =
            serde_json::from_str(&request.attributes).unwrap();
        attributes.insert("csi.storage.k8s.io/pod.name".into(), format!("web-{i}"));
        attributes.insert("csi.storage.k8s.io/pod.uid".into(), format!("uid-{i}"));
        MountRequest {
            attributes: serde_json::to_string(&attributes).unwrap(),
            target_path: format!("/var/lib/kubelet/pods/uid-{i}/volumes/kubernetes.io~csi/s/mount"),
            ..request.clone()
        }
    };
    let burst = (0..100).map(|i| h.mount(pod(i)));
    for outcome in futures::future::join_all(burst).await {
        outcome.expect("mount");
    }
    for i in 100..200 {
        h.mount(pod(i)).await.expect("mount");
    }
    assert_eq!(k8s.spc_gets(), 1, "200 mounts of one SPC, one read");
    assert_eq!(k8s.writes().len(), 1, "one create, then unchanged");

    // An injected mapping is still refused: it is compared with the SPC object (read again once,
    // in case the SPC changed since it was cached).
    let injected =
        "- target: {name: stolen}\n  data: [{secretKey: v, remoteRef: {key: /prod/plain}}]\n";
    let mut attributes: BTreeMap<String, String> =
        serde_json::from_str(&request.attributes).unwrap();
    attributes.insert("secretSync".into(), injected.into());
    let e = h
        .mount(MountRequest {
            attributes: serde_json::to_string(&attributes).unwrap(),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(k8s.secret(NS, "stolen").is_none());
    assert_eq!(k8s.spc_gets(), 2);

    // A changed mapping is taken at once when the driver already sends it.
    let renamed = "- target: {name: cfg2}\n  dataFrom: [{extract: {key: /prod/app-config}}]\n";
    let request = current_driver_mount(&k8s, renamed);
    h.mount(request).await.expect("mount with the new mapping");
    assert!(k8s.secret(NS, "cfg2").is_some());
}

#[tokio::test]
async fn a_zero_ttl_reads_the_spc_on_every_mount() {
    let (h, k8s) = sync_setup(&["--spc-cache-ttl", "0s"]).await;
    let request = current_driver_mount(&k8s, MAPPING);
    for _ in 0..3 {
        h.mount(request.clone()).await.expect("mount");
    }
    assert_eq!(k8s.spc_gets(), 3);
}
