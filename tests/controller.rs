//! The `controller` command end to end: the real binary, the Akeyless emulator and a real
//! Kubernetes control plane (tests/common/control_plane.rs) with ESO's kinds as CRDs written
//! here (tests/crds). Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use akeyless_csi_provider::emulator::Seed;
use common::control_plane::{self, ControlPlane, apply, eventually};
use common::controller::Controller;
use common::harness::{ACCESS_ID, ACCESS_KEY};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use serde_json::Value;

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
