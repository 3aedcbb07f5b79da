//! The `controller` command end to end: the real binary, the Akeyless emulator and a real
//! Kubernetes control plane (tests/common/control_plane.rs) with ESO's kinds as CRDs written
//! here (tests/crds). Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use akeyless_csi_provider::emulator::Seed;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::control_plane::{self, ControlPlane, apply, eventually};
use common::controller::Controller;
use common::eso::{
    Env, ROTATING, STORE, Staged, eso_data_hash, eso_owner_hash, ready, rotating_es, store_yaml,
};
use common::harness::{ACCESS_ID, ACCESS_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};

const MARK: &str = "CTLMARK";
const WAIT: Duration = Duration::from_secs(60);

fn seed() -> Seed {
    let yaml = format!(
        r#"token_ttl_seconds: 900
auth_methods:
  - access_id: {ACCESS_ID}
    access_type: access_key
    access_key: "{ACCESS_KEY}"
    read: ["/*"]
items:
  - name: db-username
    value: "app-user"
  - name: db-password
    value: "pw-{MARK}"
  - name: database-credentials
    format: json
    value: '{{"db": {{"username": "my_user", "password": "my_pass-{MARK}"}}, "apiKey": "myApiKey"}}'
"#
    );
    Seed::from_yaml(&yaml).expect("seed parses")
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", "v1", kind),
        plural,
    )
}

/// The Akeyless emulator with [`seed`], on a port of its own.
async fn emulator() -> akeyless_csi_provider::emulator::EmulatorHandle {
    akeyless_csi_provider::emulator::start(([127, 0, 0, 1], 0).into(), seed())
        .await
        .expect("emulator starts")
}

async fn setup() -> Option<&'static ControlPlane> {
    let cp = control_plane::shared().await?;
    cp.install_crds().await;
    Some(cp)
}

/// ESO's documentation for Akeyless, applied as users write it (the Akeyless URL is the
/// emulator's): the credentials Secret, the SecretStore, and the three ExternalSecrets.
#[tokio::test]
async fn the_manifests_of_esos_akeyless_docs_work_unchanged() {
    let Some(cp) = setup().await else { return };
    let akeyless = emulator().await;
    let ns = cp.namespace("docs").await;
    let client = cp.client().await;
    let url = akeyless.url();
    apply(
        &client,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata:
  name: akeyless-secret-creds
type: Opaque
stringData:
  accessId: "{ACCESS_ID}"
  accessType: api_key
  accessTypeParam: "{ACCESS_KEY}"
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata:
  name: akeyless-secret-store
spec:
  provider:
    akeyless:
      akeylessGWApiURL: "{url}"
      authSecretRef:
        secretRef:
          accessID:
            name: akeyless-secret-creds
            key: accessId
          accessType:
            name: akeyless-secret-creds
            key: accessType
          accessTypeParam:
            name: akeyless-secret-creds
            key: accessTypeParam
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: database-credentials
spec:
  refreshInterval: 1h0m0s
  secretStoreRef:
    kind: SecretStore
    name: akeyless-secret-store
  target:
    name: database-credentials
    creationPolicy: Owner
  data:
    - secretKey: username
      remoteRef:
        key: db-username
    - secretKey: password
      remoteRef:
        key: db-password
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: database-credentials-json
spec:
  refreshInterval: 1h0m0s
  secretStoreRef:
    kind: SecretStore
    name: akeyless-secret-store
  target:
    name: database-credentials-json
    creationPolicy: Owner
  dataFrom:
  - extract:
      key: database-credentials
      property: db
"#
        ),
        Some(&ns),
    )
    .await;
    let _controller = Controller::start(&cp.kubeconfig, &url, &[]);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let data = |name: &'static str| {
        let secrets = secrets.clone();
        async move {
            let secret = secrets.get_opt(name).await.ok()??;
            let data = secret.data?;
            Some(
                data.into_iter()
                    .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
            )
        }
    };
    let creds = eventually("the Secret database-credentials", WAIT, || {
        data("database-credentials")
    })
    .await;
    assert_eq!(creds["username"], "app-user");
    assert_eq!(creds["password"], format!("pw-{MARK}"));
    let json = eventually("the Secret database-credentials-json", WAIT, || {
        data("database-credentials-json")
    })
    .await;
    assert_eq!(json["username"], "my_user");
    assert_eq!(json["password"], format!("my_pass-{MARK}"));
    assert!(!json.contains_key("apiKey"));

    // ESO's status and markers.
    let externals: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &resource("ExternalSecret", "externalsecrets"),
    );
    let es = eventually("the ExternalSecret's status", WAIT, || async {
        let es = externals.get("database-credentials").await.ok()?;
        let ready = es.data.pointer("/status/conditions/0/status")?.as_str()? == "True";
        ready.then_some(es)
    })
    .await;
    assert_eq!(
        es.data.pointer("/status/conditions/0/reason"),
        Some(&Value::from("SecretSynced"))
    );
    assert_eq!(
        es.data.pointer("/status/binding/name"),
        Some(&Value::from("database-credentials"))
    );
    assert!(es.data.pointer("/status/refreshTime").is_some());
    let secret = secrets.get("database-credentials").await.unwrap();
    let labels = secret.metadata.labels.unwrap();
    assert_eq!(labels["reconcile.external-secrets.io/managed"], "true");
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ExternalSecret", "database-credentials")
    );
    assert!(
        secret
            .metadata
            .annotations
            .unwrap()
            .contains_key("reconcile.external-secrets.io/data-hash")
    );

    let stores: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &resource("SecretStore", "secretstores"),
    );
    let store = eventually("the SecretStore Ready", WAIT, || async {
        let store = stores.get("akeyless-secret-store").await.ok()?;
        (store
            .data
            .pointer("/status/conditions/0/status")?
            .as_str()?
            == "True")
            .then_some(store)
    })
    .await;
    assert_eq!(
        store.data.pointer("/status/conditions/0/reason"),
        Some(&Value::from("Valid"))
    );
}

/// Where deploy/ runs the controller, and its Lease.
const DEPLOY_NAMESPACE: &str = "akeyless-csi-provider";

/// The controller's identity as deploy/ makes it: the ServiceAccount of
/// deploy/components/controller, bound by that component's rbac.yaml exactly as shipped (the
/// ClusterRole, and the Role for the Lease in its namespace). Once per test binary.
async fn shipped_identity(cp: &ControlPlane) -> control_plane::Identity {
    static IDENTITY: tokio::sync::OnceCell<control_plane::Identity> =
        tokio::sync::OnceCell::const_new();
    IDENTITY
        .get_or_init(|| async {
            let client = cp.client().await;
            apply(
                &client,
                &format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {DEPLOY_NAMESPACE}}}\n"
                ),
                None,
            )
            .await;
            let component = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("deploy/components/controller");
            for file in ["serviceaccount.yaml", "rbac.yaml"] {
                let text = std::fs::read_to_string(component.join(file)).expect("the shipped file");
                apply(&client, &text, None).await;
            }
            let identity = cp
                .service_account(DEPLOY_NAMESPACE, "akeyless-csi-provider-controller")
                .await;
            for (verb, resource, namespace) in [
                ("create", ("", "secrets"), "default"),
                ("patch", ("coordination.k8s.io", "leases"), DEPLOY_NAMESPACE),
            ] {
                control_plane::wait_access(
                    &client,
                    &identity.user,
                    verb,
                    resource,
                    namespace,
                    true,
                )
                .await;
            }
            identity
        })
        .await
        .clone()
}

/// The holder of the Lease `name` in deploy's namespace, as the API server has it.
async fn lease_holder(client: &kube::Client, name: &str) -> Option<String> {
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), DEPLOY_NAMESPACE);
    leases.get_opt(name).await.ok()??.spec?.holder_identity
}

/// `akeyless_csi_controller_leader` of one replica: "1" while it holds the Lease.
async fn leader_gauge(controller: &Controller) -> Option<String> {
    let (_, metrics) = controller.http_get("/metrics").await?;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("akeyless_csi_controller_leader "))
        .map(str::to_owned)
}

/// Two replicas under the shipped RBAC: one leads and writes, the other stands by (ready, not
/// leading); when the leader dies the other takes the Lease and writes; a stopping leader
/// releases it. Nothing the controller asks is refused, and the Lease is reached only in its
/// namespace with the verbs the Role grants.
#[tokio::test]
async fn two_replicas_under_the_shipped_rbac_hand_over_the_lease() {
    let Some(cp) = setup().await else { return };
    let identity = shipped_identity(cp).await;
    let akeyless = emulator().await;
    let url = akeyless.url();
    let ns = cp.namespace("lease").await;
    let client = cp.client().await;
    // A class of this test's own, with --skip-unclassed: the other tests' controllers leave
    // this store alone and these replicas leave theirs, as beside ESO.
    let class = cp.unique("lease-class");
    apply(
        &client,
        &format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{accessId: "{ACCESS_ID}", accessType: api_key, accessTypeParam: "{ACCESS_KEY}"}}
---
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: akeyless}}
spec:
  controller: {class}
  provider:
    akeyless:
      akeylessGWApiURL: "{url}"
      authSecretRef:
        secretRef:
          accessID: {{name: creds, key: accessId}}
          accessType: {{name: creds, key: accessType}}
          accessTypeParam: {{name: creds, key: accessTypeParam}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: db}}
spec:
  refreshInterval: 1h0m0s
  secretStoreRef: {{kind: SecretStore, name: akeyless}}
  target: {{name: db, creationPolicy: Owner}}
  data:
    - secretKey: password
      remoteRef: {{key: db-password}}
"#
        ),
        Some(&ns),
    )
    .await;

    let lease = cp.unique("controller-lease");
    let args = |replica: &str| {
        [
            format!("--controller-class={class}"),
            "--skip-unclassed".to_owned(),
            "--leader-election=true".to_owned(),
            format!("--leader-election-name={lease}"),
            format!("--leader-election-namespace={DEPLOY_NAMESPACE}"),
            format!("--leader-election-identity={replica}"),
        ]
    };
    let start = |replica: &str| {
        let args = args(replica);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Controller::start(&identity.kubeconfig, &url, &args)
    };
    let mut a = start("replica-a");
    eventually("replica-a to hold the Lease", WAIT, || async {
        (lease_holder(&client, &lease).await? == "replica-a").then_some(())
    })
    .await;
    let mut b = start("replica-b");

    // The leader writes the Secret, its ownerReference blocking the ExternalSecret's deletion.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let secret = eventually("the Secret db", WAIT, || async {
        secrets.get_opt("db").await.ok()?
    })
    .await;
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(owner.block_owner_deletion, Some(true));
    // The standby is ready (probes must not restart it) and does not lead.
    eventually("replica-b ready", WAIT, || async {
        (b.http_get("/readyz").await?.0 == 200).then_some(())
    })
    .await;
    assert_eq!(leader_gauge(&b).await.as_deref(), Some("0"));
    assert_eq!(leader_gauge(&a).await.as_deref(), Some("1"));

    // The leader dies: the standby takes the Lease over and serves the next change.
    a.kill();
    eventually("replica-b to take the Lease over", WAIT, || async {
        (lease_holder(&client, &lease).await? == "replica-b").then_some(())
    })
    .await;
    apply(
        &client,
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: db}
spec:
  refreshInterval: 1h0m0s
  secretStoreRef: {kind: SecretStore, name: akeyless}
  target: {name: db, creationPolicy: Owner}
  data:
    - secretKey: password
      remoteRef: {key: db-password}
    - secretKey: username
      remoteRef: {key: db-username}
"#,
        Some(&ns),
    )
    .await;
    eventually("the new leader to write the change", WAIT, || async {
        let data = secrets.get_opt("db").await.ok()??.data?;
        data.contains_key("username").then_some(())
    })
    .await;
    assert_eq!(leader_gauge(&b).await.as_deref(), Some("1"));
    // Each write was the leader's of the moment (the Events name the replica).
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &ns);
    let reporters: Vec<(String, String)> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|e| {
            (
                e.reason.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        reporters.contains(&("Created".into(), "replica-a".into()))
            && reporters.contains(&("Updated".into(), "replica-b".into())),
        "{reporters:?}"
    );

    // A leader that stops releases the Lease at once.
    assert_eq!(b.stop().await, Some(0), "{}", b.logs());
    assert_eq!(lease_holder(&client, &lease).await, None, "released");

    // Under the shipped RBAC nothing was refused; the Lease only in its namespace, as granted.
    let ours: Vec<_> = cp
        .requests()
        .into_iter()
        .filter(|r| r.user == identity.user)
        .collect();
    let refused: Vec<_> = ours.iter().filter(|r| r.code == 403).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    let lease_calls: BTreeSet<(String, String)> = ours
        .iter()
        .filter(|r| r.resource == "leases")
        .map(|r| (r.namespace.clone(), r.verb.clone()))
        .collect();
    for (namespace, verb) in &lease_calls {
        assert_eq!(namespace, DEPLOY_NAMESPACE);
        assert!(
            ["get", "create", "patch"].contains(&verb.as_str()),
            "{verb}"
        );
    }
    assert!(lease_calls.iter().any(|(_, verb)| verb == "patch"));
}

// ---- What the controller writes (issue 13, item 5) --------------------------------------------

/// The Secret is written when its content changes, never on a refresh that changed nothing;
/// the status is ESO's.
#[tokio::test]
async fn a_secret_is_written_only_when_its_content_changes() {
    let Some(env) = Env::start("writes", ROTATING, &[]).await else {
        return;
    };
    env.apply(&rotating_es("periodic", STORE, "  refreshInterval: 1s"))
        .await;
    let es = env.wait_ready("periodic").await;
    env.wait_refreshes("periodic", 3).await;
    assert_eq!(
        env.secret_writes("periodic"),
        1,
        "one create, then nothing for three refreshes: {:?}",
        env.writes("secrets")
    );
    let create = &env.writes("secrets")[0];
    assert_eq!(create.verb, "create");
    assert_eq!(
        create.field_manager().as_deref(),
        Some("externalsecrets.external-secrets.io/periodic"),
        "ESO's field manager"
    );

    // ESO's status: Ready True/SecretSynced, refreshTime, syncedResourceVersion, binding.
    let (status, reason, message) = ready(&es).unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str(), message.as_str()),
        ("True", "SecretSynced", "secret synced")
    );
    let synced = es
        .data
        .pointer("/status/syncedResourceVersion")
        .and_then(Value::as_str)
        .unwrap();
    let (generation, hash) = synced.split_once('-').unwrap();
    assert_eq!(generation, "1");
    assert_eq!(hash.len(), 56, "a SHA3-224 of the metadata: {synced}");
    assert!(common::eso::refresh_time(&es).is_some());
    assert_eq!(
        es.data.pointer("/status/binding/name"),
        Some(&Value::from("periodic"))
    );
    let secret = env.secrets().get("periodic").await.unwrap();
    let data: std::collections::BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    assert_eq!(
        secret.metadata.annotations.unwrap()["reconcile.external-secrets.io/data-hash"],
        common::eso::eso_data_hash(&data),
        "ESO's data hash"
    );

    // Someone edits the Secret: it is put back at once (its change is watched), not at the
    // next refresh.
    let mut edited = env.secrets().get("periodic").await.unwrap();
    edited
        .data
        .as_mut()
        .unwrap()
        .insert("v".into(), k8s_openapi::ByteString(b"tampered".to_vec()));
    env.secrets()
        .replace("periodic", &Default::default(), &edited)
        .await
        .unwrap();
    env.wait_data("periodic", |d| d["v"] == "r1-ESOMARK").await;
    assert_eq!(
        env.secret_writes("periodic"),
        2,
        "{:?}",
        env.writes("secrets")
    );

    // A change in Akeyless: one update.
    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.wait_data("periodic", |d| d["v"] == "r2-ESOMARK").await;
    env.wait_refreshes("periodic", 2).await;
    assert_eq!(
        env.secret_writes("periodic"),
        3,
        "{:?}",
        env.writes("secrets")
    );
    assert_eq!(env.writes("secrets")[2].verb, "update");
    env.assert_no_leak(&[]);
}

/// A Secret of the target name that no ExternalSecret manages is never overwritten under
/// Owner or Orphan; the condition says why and what to do, and once the user does it (deletes
/// the stale Secret) the ExternalSecret recovers by itself.
#[tokio::test]
async fn an_unmanaged_secret_is_never_overwritten() {
    let Some(env) = Env::start("unmanaged", ROTATING, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: taken}
stringData: {mine: "keep-me"}
---
apiVersion: v1
kind: Secret
metadata: {name: taken-too}
stringData: {mine: "keep-me-too"}
"#,
    )
    .await;
    env.apply(&rotating_es("owner", STORE, "  target: {name: taken}"))
        .await;
    env.apply(&rotating_es(
        "orphan",
        STORE,
        "  target: {name: taken-too, creationPolicy: Orphan}",
    ))
    .await;
    for (es, secret, value) in [
        ("owner", "taken", "keep-me"),
        ("orphan", "taken-too", "keep-me-too"),
    ] {
        let message = env.wait_failed(es, "not managed").await;
        assert!(message.contains(secret), "{message}");
        assert!(
            message.contains("target.name"),
            "says what to do: {message}"
        );
        assert_eq!(
            env.data(secret).await.unwrap(),
            [("mine".to_owned(), value.to_owned())].into(),
        );
        assert_eq!(env.secret_writes(secret), 0);
    }
    // The fix the message names, made outside the ExternalSecret: retried until it works. (The
    // pause lets the reconcile that the failed status itself triggers go by first, so that only
    // a retry can see the deletion.)
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    env.secrets()
        .delete("taken", &Default::default())
        .await
        .unwrap();
    env.wait_data("taken", |d| d.get("v").is_some_and(|v| v == "r1-ESOMARK"))
        .await;
    env.wait_ready("owner").await;
    // Two ExternalSecrets, one Secret: the second is refused, naming the owner.
    env.apply(&rotating_es(
        "first-owner",
        STORE,
        "  target: {name: shared}",
    ))
    .await;
    env.wait_ready("first-owner").await;
    env.apply(&rotating_es(
        "second-owner",
        STORE,
        "  target: {name: shared}",
    ))
    .await;
    let message = env.wait_failed("second-owner", "first-owner").await;
    assert!(message.contains("shared"), "{message}");
    let secret = env.secrets().get("shared").await.unwrap();
    assert_eq!(
        secret.metadata.owner_references.unwrap()[0].name,
        "first-owner"
    );
    env.assert_no_leak(&["keep-me"]);
}

/// Owner Secrets carry an ownerReference to their ExternalSecret and are garbage-collected
/// with it (kube-controller-manager's collector); Orphan Secrets stay.
#[tokio::test]
async fn owner_secrets_are_garbage_collected_with_their_external_secret() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    if !cp.controller_manager().await {
        return;
    }
    let mut env = Env::start_on(cp, "gc", ROTATING, &[]).await;
    env.apply(&rotating_es("owned", STORE, "  refreshInterval: 1h"))
        .await;
    env.apply(&rotating_es(
        "orphaned",
        STORE,
        "  refreshInterval: 1h\n  target: {creationPolicy: Orphan}",
    ))
    .await;
    let owned = env.wait_ready("owned").await;
    env.wait_ready("orphaned").await;
    let secret = env.secrets().get("owned").await.unwrap();
    let owner = &secret.metadata.owner_references.unwrap()[0];
    assert_eq!(Some(&owner.uid), owned.metadata.uid.as_ref());
    assert_eq!(owner.api_version, "external-secrets.io/v1");

    env.delete_es("owned").await;
    env.delete_es("orphaned").await;
    env.wait_gone("owned", control_plane::GC_TIMEOUT).await;
    assert!(
        env.data("orphaned").await.is_some(),
        "an Orphan Secret outlives its ExternalSecret"
    );
    assert!(env.controller.alive());
    env.assert_no_leak(&[]);
}

/// Events on the ExternalSecret: Created, Updated, and UpdateFailed (Warning) naming the item
/// and the fix, never a value.
#[tokio::test]
async fn events_for_created_updated_and_failed_syncs() {
    let Some(env) = Env::start("events", ROTATING, &[]).await else {
        return;
    };
    env.apply(&rotating_es("evented", STORE, "  refreshInterval: 1s"))
        .await;
    env.wait_ready("evented").await;
    env.wait_event("evented", "Created").await;
    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.wait_event("evented", "Updated").await;

    env.akeyless.delete_item("/app/rot");
    let message = env.wait_failed("evented", "/app/rot").await;
    let es = env.es("evented").await;
    assert_eq!(ready(&es).unwrap().1, "SecretSyncedError");
    assert!(message.contains("does not exist"), "{message}");
    assert!(message.contains("remoteRef.key"), "names a fix: {message}");
    let note = env.wait_event("evented", "UpdateFailed").await;
    assert!(note.contains("/app/rot"), "{note}");
    let events = env.events("evented").await;
    assert!(
        events
            .iter()
            .any(|(t, r, _)| t == "Warning" && r == "UpdateFailed"),
        "{events:?}"
    );
    for (_, _, note) in &events {
        assert!(
            !note.contains(common::eso::MARK),
            "a value in an Event: {note}"
        );
    }
    assert_eq!(
        env.data("evented").await.unwrap()["v"],
        "r2-ESOMARK",
        "a failed sync writes nothing"
    );
    env.assert_no_leak(&[]);
}

/// A Secret that ESO wrote (its markers, data hash, owner reference and field manager) is
/// taken over with no write when the content is the same; a later change is one update.
#[tokio::test]
async fn a_secret_written_by_eso_is_adopted_without_a_write() {
    let Some(staged) = Staged::new("adopt", ROTATING).await else {
        return;
    };
    let es = staged
        .apply(&rotating_es("adopted", STORE, "  refreshInterval: 1h"))
        .await
        .remove(0);
    let data: std::collections::BTreeMap<String, Vec<u8>> =
        [("v".to_owned(), b"r1-ESOMARK".to_vec())].into();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "adopted",
            "labels": {
                "reconcile.external-secrets.io/managed": "true",
                "reconcile.external-secrets.io/created-by": eso_owner_hash(&staged.ns, "adopted"),
            },
            "annotations": {"reconcile.external-secrets.io/data-hash": eso_data_hash(&data)},
            "ownerReferences": [{
                "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                "name": "adopted", "uid": es.metadata.uid.clone().unwrap(),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "type": "Opaque",
        "data": {"v": STANDARD.encode(b"r1-ESOMARK")},
    }))
    .unwrap();
    let secrets: Api<Secret> = Api::namespaced(staged.client.clone(), &staged.ns);
    let created = secrets
        .create(
            &PostParams {
                field_manager: Some("externalsecrets.external-secrets.io/adopted".into()),
                ..PostParams::default()
            },
            &secret,
        )
        .await
        .unwrap();
    let env = staged.start(&[]);
    env.wait_ready("adopted").await;
    assert_eq!(
        env.secret_writes("adopted"),
        0,
        "{:?}",
        env.writes("secrets")
    );
    let now = env.secrets().get("adopted").await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        created.metadata.resource_version
    );

    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.force_sync_and_wait("adopted").await;
    env.wait_data("adopted", |d| d["v"] == "r2-ESOMARK").await;
    assert_eq!(
        env.secret_writes("adopted"),
        1,
        "{:?}",
        env.writes("secrets")
    );
    env.assert_no_leak(&[]);
}

// ---- Which stores are ours (issue 13, item 2) -------------------------------------------------

/// Stores of another provider or another controller class, and their ExternalSecrets, are left
/// alone without a word: no status, no Secret, no Event — also an ExternalSecret of ESO's that
/// uses fields this controller does not implement (beside ESO, it is ESO's to report on).
#[tokio::test]
async fn stores_of_other_providers_and_classes_are_ignored_silently() {
    let Some(staged) = Staged::new("classes", ROTATING).await else {
        return;
    };
    let url = staged.akeyless.url();
    staged
        .apply(&format!(
            r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: vault}}
spec:
  provider:
    vault: {{server: "https://vault.example:8200", path: secret, version: v2, auth: {{tokenSecretRef: {{name: t, key: t}}}}}}
---
{}
---
{}
"#,
            store_yaml("other-class", &url, "v1", "  controller: someone-else"),
            store_yaml("our-class", &url, "v1", "  controller: akeyless-csi-provider"),
        ))
        .await;
    for (es, store) in [
        ("es-vault", "vault"),
        ("es-other-class", "other-class"),
        ("es-our-class", "our-class"),
        ("es-unclassed", "akeyless"),
    ] {
        staged
            .apply(&rotating_es(es, store, "  refreshInterval: 1h"))
            .await;
    }
    staged
        .apply(
            r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: es-vault-features}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: vault}
  syncWindows: {kind: allow, windows: [{schedule: "0 * * * *", duration: 1h}]}
  target:
    template:
      templateFrom: [{literal: "x"}]
  data:
    - secretKey: v
      remoteRef: {key: secret/app}
      sourceRef: {generatorRef: {apiVersion: generators.external-secrets.io/v1alpha1, kind: Password, name: p}}
"#,
        )
        .await;
    let env = staged.start(&[]);
    env.wait_ready("es-our-class").await;
    env.wait_ready("es-unclassed").await;
    // Every object has been looked at: the two foreign stores and their two ExternalSecrets
    // were skipped.
    let skipped = |kind: &'static str| {
        let env = &env;
        async move {
            env.metric(&format!(
                "akeyless_csi_controller_reconciles_total{{kind=\"{kind}\",outcome=\"skipped\"}}"
            ))
            .await
        }
    };
    eventually("the foreign objects to be skipped", WAIT, || async {
        (skipped("store").await >= 2.0 && skipped("external_secret").await >= 3.0).then_some(())
    })
    .await;
    for name in ["vault", "other-class"] {
        let store = env.stores().get(name).await.unwrap();
        assert!(
            store.data.get("status").is_none(),
            "{name}: {:?}",
            store.data
        );
    }
    let store = env.stores().get("our-class").await.unwrap();
    assert_eq!(
        store.data.pointer("/status/conditions/0/reason"),
        Some(&Value::from("Valid"))
    );
    for name in ["es-vault", "es-other-class", "es-vault-features"] {
        let es = env.es(name).await;
        assert!(es.data.get("status").is_none(), "{name}: {:?}", es.data);
        assert!(env.data(name).await.is_none());
        assert!(env.events(name).await.is_empty());
    }
    let touched: Vec<_> = env
        .cp
        .requests()
        .into_iter()
        .filter(|r| r.user == env.user && r.is_accepted_write())
        .filter(|r| {
            [
                "vault",
                "other-class",
                "es-vault",
                "es-other-class",
                "es-vault-features",
            ]
            .contains(&r.name.as_str())
        })
        .collect();
    assert!(touched.is_empty(), "{touched:?}");
    env.assert_no_leak(&[]);
}

/// `--skip-unclassed` leaves stores without a class to ESO; `--controller-class` names ours.
#[tokio::test]
async fn skip_unclassed_and_a_custom_controller_class() {
    let Some(staged) = Staged::new("skip-unclassed", ROTATING).await else {
        return;
    };
    let url = staged.akeyless.url();
    staged
        .apply(&format!(
            "{}\n---\n{}",
            store_yaml("custom", &url, "v1", "  controller: team-x"),
            store_yaml(
                "default-class",
                &url,
                "v1",
                "  controller: akeyless-csi-provider"
            ),
        ))
        .await;
    for (es, store) in [
        ("es-unclassed", "akeyless"),
        ("es-custom", "custom"),
        ("es-default-class", "default-class"),
        // No such store: it may be ESO's (a store not created yet), so its status is ESO's.
        ("es-no-store", "nowhere"),
    ] {
        staged
            .apply(&rotating_es(es, store, "  refreshInterval: 1h"))
            .await;
    }
    let env = staged.start(&["--skip-unclassed", "--controller-class", "team-x"]);
    env.wait_ready("es-custom").await;
    eventually("the other three to be skipped", WAIT, || async {
        (env
            .metric(
                "akeyless_csi_controller_reconciles_total{kind=\"external_secret\",outcome=\"skipped\"}",
            )
            .await
            >= 3.0)
            .then_some(())
    })
    .await;
    for name in ["es-unclassed", "es-default-class", "es-no-store"] {
        assert!(env.es(name).await.data.get("status").is_none(), "{name}");
        assert!(env.data(name).await.is_none(), "{name}");
    }
    for name in ["akeyless", "default-class"] {
        let store = env.stores().get(name).await.unwrap();
        assert!(store.data.get("status").is_none(), "{name}");
    }
    env.assert_no_leak(&[]);
}

/// Objects applied as `external-secrets.io/v1beta1` (what many clusters still hold) are served
/// like v1 ones.
#[tokio::test]
async fn objects_applied_as_v1beta1_are_served() {
    let Some(staged) = Staged::new("v1beta1", ROTATING).await else {
        return;
    };
    let url = staged.akeyless.url();
    staged
        .apply(&store_yaml("beta-store", &url, "v1beta1", ""))
        .await;
    staged
        .apply(
            &rotating_es("beta", STORE, "  refreshInterval: 1h")
                .replace("external-secrets.io/v1\n", "external-secrets.io/v1beta1\n")
                .replace("{name: akeyless}", "{name: beta-store, kind: SecretStore}"),
        )
        .await;
    let env = staged.start(&[]);
    env.wait_ready("beta").await;
    assert_eq!(env.data("beta").await.unwrap()["v"], "r1-ESOMARK");
    let beta: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        &env.ns,
        &common::eso::resource("ExternalSecret", "v1beta1"),
    );
    let es = beta.get("beta").await.unwrap();
    assert_eq!(ready(&es).unwrap().1, "SecretSynced");
    env.assert_no_leak(&[]);
}
