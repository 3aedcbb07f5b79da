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
    common::harness::seed_with_items(
        "/prod/*",
        "",
        r#"  - name: /prod/app-config
    format: json
    value: '{"log_level":"info"}'
  - name: /prod/plain
    value: "plain-value"
"#,
    )
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

// ---- issuing calls: at most once per need ----

fn items_seed() -> Seed {
    let mut items = r#"  - name: /n/dyn
    type: dynamic-secret
    ttl_seconds: 3600
  - name: /n/pki
    type: pki-cert-issuer
    max_ttl_seconds: 86400
  - name: /n/a
    value: "a-value"
  - name: /n/b
    value: "b-value"
  - name: /n/opt
    value: "opt-value"
"#
    .to_owned();
    for i in 0..3 {
        items.push_str(&format!(
            "  - name: /n/changing-{i}\n    value: \"static-{i}\"\n"
        ));
    }
    for i in 0..5 {
        items.push_str(&format!(
            "  - name: /n/folder/item-{i}\n    value: \"folder-{i}\"\n"
        ));
    }
    common::harness::seed_with_items("/n/*", "list_page_size: 2\n", &items)
}

/// A v1.6 driver's request for `objects` from pod volume `uid`.
fn pod_request(objects: &str, uid: &str) -> MountRequest {
    let mut request = common::harness::request(
        &[
            ("akeylessAccessID", ACCESS_ID),
            ("objects", objects),
            ("csi.storage.k8s.io/pod.uid", uid),
        ],
        Some(&[("akeylessAccessKey", ACCESS_KEY)]),
    );
    request.target_path =
        format!("/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/secrets/mount");
    request
}

fn file(response: &akeyless_csi_provider::proto::v1alpha1::MountResponse, path: &str) -> String {
    response
        .files
        .iter()
        .find(|f| f.path == path)
        .map(|f| String::from_utf8_lossy(&f.contents).into_owned())
        .unwrap_or_default()
}

const DYN: &str = "- secretPath: /n/dyn\n  type: dynamic\n  fileName: creds.json\n";
const PKI: &str =
    "- secretPath: /n/pki\n  type: pki\n  commonName: web.shop.svc\n  fileName: tls.pem\n";

#[tokio::test]
async fn an_issue_whose_answer_is_lost_is_not_sent_again() {
    use akeyless_csi_provider::emulator::{Fault, FaultKind};
    let h = Harness::start_with(items_seed(), &["--call-timeout", "1s"]).await;
    let calls = || h.akeyless.calls("/get-dynamic-secret-value");

    // Akeyless issues, then the connection drops before the answer: one lease, no second one.
    h.akeyless.add_fault(
        Fault::new(FaultKind::ResetAfter)
            .on("/get-dynamic-secret-value")
            .times(1),
    );
    let e = h.mount(pod_request(DYN, "pod-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("/n/dyn"), "{}", e.message());
    assert!(e.message().contains("not sent again"), "{}", e.message());
    assert_eq!((calls(), h.akeyless.leases_minted("/n/dyn")), (1, 1));
    // The next poll issues afresh.
    h.mount(pod_request(DYN, "pod-1")).await.expect("next poll");
    assert_eq!((calls(), h.akeyless.leases_minted("/n/dyn")), (2, 2));

    // The answer comes after the client's timeout: the same.
    h.akeyless.add_fault(
        Fault::new(FaultKind::DelayAfter { ms: 2_500 })
            .on("/get-pki-certificate")
            .times(1),
    );
    let e = h.mount(pod_request(PKI, "pod-2")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert!(e.message().contains("/n/pki"), "{}", e.message());
    assert_eq!(h.akeyless.calls("/get-pki-certificate"), 1);
    assert_eq!(h.akeyless.leases_minted("/n/pki"), 1);

    // A 500 may come after the work: not sent again either.
    h.akeyless.add_fault(
        Fault::new(FaultKind::Status {
            status: 500,
            retry_after_secs: None,
        })
        .on("/get-dynamic-secret-value")
        .times(1),
    );
    let e = h.mount(pod_request(DYN, "pod-3")).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(calls(), 3);

    // 429 and 503 are refusals before any work: retried (Retry-After honoured), one lease.
    for status in [429, 503] {
        h.akeyless.add_fault(
            Fault::new(FaultKind::Status {
                status,
                retry_after_secs: Some(0),
            })
            .on("/get-dynamic-secret-value")
            .times(1),
        );
    }
    let before = (calls(), h.akeyless.leases_minted("/n/dyn"));
    h.mount(pod_request(DYN, "pod-4"))
        .await
        .expect("retried after 429 and 503");
    assert_eq!(
        (calls(), h.akeyless.leases_minted("/n/dyn")),
        (before.0 + 3, before.1 + 1)
    );

    // Reads are retried as before.
    h.akeyless.add_fault(
        Fault::new(FaultKind::Reset)
            .on("/get-secret-value")
            .times(1),
    );
    let objects = "- secretPath: /n/a\n  type: static\n  fileName: a\n";
    let r = h
        .mount(pod_request(objects, "pod-5"))
        .await
        .expect("read retried");
    assert_eq!(file(&r, "a"), "a-value");
}

#[tokio::test]
async fn a_slow_producer_is_waited_for_not_abandoned() {
    use akeyless_csi_provider::emulator::Modes;
    // The producer takes longer than a call's timeout, within Akeyless's own wait.
    let h = Harness::start_with(items_seed(), &["--call-timeout", "1s"]).await;
    h.akeyless.set_modes(Modes {
        producer_delay_ms: 1_500,
        ..Modes::default()
    });
    let r = h.mount(pod_request(DYN, "pod-1")).await.expect("mount");
    assert!(file(&r, "creds.json").contains("password"));
    assert_eq!(h.akeyless.calls("/get-dynamic-secret-value"), 1);
    assert_eq!(h.akeyless.leases_minted("/n/dyn"), 1, "one lease, not two");
}

// ---- answers the API definition leaves open ----

#[tokio::test]
async fn a_batch_answer_without_a_name_means_it_is_missing() {
    use akeyless_csi_provider::emulator::{Answer, Modes};
    let h = Harness::start(items_seed()).await;
    h.akeyless.set_modes(Modes {
        missing_name: Answer::Omitted,
        ..Modes::default()
    });
    h.akeyless.delete_item("/n/opt");
    h.akeyless.delete_item("/n/b");
    let objects = "
- secretPath: /n/a
  type: static
  fileName: a
- secretPath: /n/opt
  type: static
  fileName: opt
  optional: true
";
    let r = h
        .mount(pod_request(objects, "pod-1"))
        .await
        .expect("optional skipped");
    assert_eq!(file(&r, "a"), "a-value");
    assert!(r.files.iter().all(|f| f.path != "opt"));
    assert_eq!(h.akeyless.calls("/get-secret-value"), 1);

    let objects = "- secretPath: /n/a\n  type: static\n- secretPath: /n/b\n  type: static\n";
    let e = h.mount(pod_request(objects, "pod-1")).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("item /n/b does not exist"),
        "{}",
        e.message()
    );
}

#[tokio::test]
async fn an_item_that_changed_type_is_described_again_whatever_akeyless_answers() {
    use akeyless_csi_provider::emulator::{Answer, ItemType, Modes, SeedItem};
    let h = Harness::start(items_seed()).await;
    for (i, answer) in [Answer::Rejected, Answer::NotFound, Answer::Omitted]
        .into_iter()
        .enumerate()
    {
        let name = format!("/n/changing-{i}");
        let objects = format!("- secretPath: {name}\n  fileName: value\n");
        let r = h
            .mount(pod_request(&objects, "pod-1"))
            .await
            .expect("static");
        assert_eq!(file(&r, "value"), format!("static-{i}"));
        let describes = h.akeyless.calls("/describe-item");

        // Deleted and created again as a rotated secret; the provider remembers "static".
        h.akeyless.put_item(&SeedItem {
            name: name.clone(),
            item_type: ItemType::RotatedSecret,
            value: Some(format!(r#"{{"username":"rot-{i}","password":"p"}}"#)),
            ..SeedItem::default()
        });
        h.akeyless.set_modes(Modes {
            not_static: answer,
            ..Modes::default()
        });
        let r = h
            .mount(pod_request(&objects, "pod-1"))
            .await
            .unwrap_or_else(|e| panic!("{answer:?}: {e}"));
        assert!(
            file(&r, "value").contains(&format!("rot-{i}")),
            "{answer:?}"
        );
        assert_eq!(
            h.akeyless.calls("/describe-item"),
            describes + 1,
            "{answer:?}: the type is asked again"
        );
    }
}

#[tokio::test]
async fn a_paginated_folder_listing_is_followed_to_its_end() {
    use akeyless_csi_provider::emulator::Modes;
    let h = Harness::start(items_seed()).await;
    h.akeyless.set_modes(Modes {
        always_paginate: true,
        ..Modes::default()
    });
    let r = h
        .mount(pod_request("- secretPath: /n/folder/*\n", "pod-1"))
        .await
        .expect("mount");
    assert_eq!(r.files.len(), 5);
    assert_eq!(file(&r, "item-4"), "folder-4");
    assert_eq!(h.akeyless.calls("/list-items"), 3, "pages of 2");
}

// ---- Universal Identity tokens: not rotated, their end made visible ----

const UID_NEAR: &str = "u-near0000000001";
const UID_EXPIRED: &str = "u-expired00000001";

fn uid_seed() -> Seed {
    let yaml = format!(
        r#"token_ttl_seconds: 900
auth_methods:
  - access_id: p-uidnear0001
    access_type: universal_identity
    uid_token: "{UID_NEAR}"
    uid_token_ttl_seconds: 3600
    uid_token_age_seconds: 3000
    read: ["/n/*"]
  - access_id: p-uidgone0001
    access_type: universal_identity
    uid_token: "{UID_EXPIRED}"
    uid_token_ttl_seconds: 3600
    uid_token_age_seconds: 3700
    read: ["/n/*"]
items:
  - name: /n/a
    value: "a-value"
"#
    );
    Seed::from_yaml(&yaml).expect("seed parses")
}

fn uid_request(access_id: &str, token: &str) -> MountRequest {
    common::harness::request(
        &[
            ("akeylessAccessID", access_id),
            ("akeylessAccessType", "universal_identity"),
            ("objects", "- secretPath: /n/a\n  fileName: a\n"),
        ],
        Some(&[("akeylessUIDInitToken", token)]),
    )
}

#[tokio::test]
async fn a_universal_identity_token_near_its_end_is_reported_not_rotated() {
    let h = Harness::start(uid_seed()).await;
    let r = h
        .mount(uid_request("p-uidnear0001", UID_NEAR))
        .await
        .expect("mount");
    assert_eq!(file(&r, "a"), "a-value");

    // Ten minutes left of an hour's life: a warning and the gauge, before mounts fail.
    let started = std::time::Instant::now();
    while !h
        .logs()
        .contains("the Universal Identity token expires soon")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "no warning"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, metrics) = h.http_get("/metrics").await.expect("metrics");
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("akeyless_csi_uid_token_expiry_timestamp_seconds "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the gauge");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now..now + 3600).contains(&expiry), "{expiry} vs {now}");
    assert_eq!(h.akeyless.calls("/validate-token"), 1);
    assert_eq!(h.akeyless.calls("/uid-rotate-token"), 0, "never rotated");
    h.mount(uid_request("p-uidnear0001", UID_NEAR))
        .await
        .expect("mount");
    assert_eq!(h.akeyless.calls("/validate-token"), 1, "learnt once");

    // An expired one: the mount says so.
    let e = h
        .mount(uid_request("p-uidgone0001", UID_EXPIRED))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(
        e.message().contains("Universal Identity token expired at")
            && e.message().contains("akeylessUIDInitToken"),
        "{}",
        e.message()
    );
    for text in [h.logs(), e.message().to_owned()] {
        assert!(!text.contains(UID_NEAR) && !text.contains(UID_EXPIRED));
    }
}
