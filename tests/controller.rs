//! The `controller` command end to end: the real binary, the Akeyless emulator and a real
//! Kubernetes control plane (tests/common/control_plane.rs) with ESO's kinds as CRDs written
//! here (tests/crds). Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset.

mod common;

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
    let akeyless = akeyless_csi_provider::emulator::start(([127, 0, 0, 1], 0).into(), seed())
        .await
        .expect("emulator starts");
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
