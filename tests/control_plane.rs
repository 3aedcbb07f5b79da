//! The real control plane of the end-to-end tests (tests/common/control_plane.rs) and the CRDs
//! written for them (tests/crds/): what other tests rely on, checked against the API server
//! itself. Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset.

mod common;

use common::control_plane::{self, ControlPlane, apply, eventually};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn with_crds() -> Option<&'static ControlPlane> {
    let cp = control_plane::shared().await?;
    cp.install_crds().await;
    Some(cp)
}

#[tokio::test]
async fn eso_kinds_are_served_as_v1_and_v1beta1_with_esos_defaults() {
    let Some(cp) = with_crds().await else { return };
    let ns = cp.namespace("eso").await;
    let client = cp.client().await;
    let yaml = format!(
        r#"
apiVersion: external-secrets.io/v1
kind: SecretStore
metadata: {{name: akeyless}}
spec:
  provider:
    akeyless:
      akeylessGWApiURL: https://api.akeyless.io
      authSecretRef:
        secretRef:
          accessID: {{name: akeyless-secret-creds, key: accessId}}
          accessType: {{name: akeyless-secret-creds, key: accessType}}
          accessTypeParam: {{name: akeyless-secret-creds, key: accessTypeParam}}
      futureField: kept
---
apiVersion: external-secrets.io/v1beta1
kind: ClusterSecretStore
metadata: {{name: {ns}-cluster}}
spec:
  controller: akeyless-csi-provider
  refreshInterval: 60
  conditions: [{{namespaces: ["{ns}"]}}]
  provider:
    akeyless:
      akeylessGWApiURL: https://gw:8080/v2
      authSecretRef:
        kubernetesAuth:
          accessID: p-xxxx
          k8sConfName: k8s-conf
          serviceAccountRef: {{name: reader, namespace: {ns}}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {{name: database}}
spec:
  secretStoreRef: {{name: akeyless, kind: SecretStore}}
  data:
    - secretKey: password
      remoteRef: {{key: /prod/db, property: password}}
  dataFrom:
    - find: {{path: /prod, name: {{regexp: "^db"}}}}
      rewrite: [{{regexp: {{source: "/prod/(.*)", target: "$1"}}}}]
  syncWindows: {{kind: allow, windows: []}}
"#
    );
    let applied = apply(&client, &yaml, Some(&ns)).await;
    assert_eq!(applied.len(), 3);
    let store = &applied[0].data;
    assert_eq!(
        store["spec"]["provider"]["akeyless"]["futureField"], "kept",
        "fields we do not model reach the controller"
    );
    let external = &applied[2].data;
    assert_eq!(
        external["spec"]["refreshInterval"], "1h0m0s",
        "ESO's default"
    );
    assert_eq!(
        external["spec"]["target"],
        json!({"creationPolicy": "Owner", "deletionPolicy": "Retain"}),
        "ESO's default target"
    );
    assert_eq!(external["spec"]["syncWindows"]["kind"], "allow");

    // Both versions serve the same objects (no conversion webhook: only apiVersion changes).
    let beta = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &resource(
            "external-secrets.io",
            "v1beta1",
            "ExternalSecret",
            "externalsecrets",
        ),
    );
    let read = beta.get("database").await.expect("v1beta1 is served");
    assert_eq!(read.data["spec"]["data"][0]["remoteRef"]["key"], "/prod/db");
    let cluster = Api::<DynamicObject>::all_with(
        client.clone(),
        &resource(
            "external-secrets.io",
            "v1",
            "ClusterSecretStore",
            "clustersecretstores",
        ),
    );
    let css = cluster.get(&format!("{ns}-cluster")).await.expect("v1");
    assert_eq!(css.data["spec"]["refreshInterval"], 60);

    // The status subresource: a status written with the object is dropped, one written through
    // /status is kept.
    let stores = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &resource("external-secrets.io", "v1", "SecretStore", "secretstores"),
    );
    let status =
        json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Valid"}]}});
    stores
        .patch_status(
            "akeyless",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&status),
        )
        .await
        .expect("status subresource");
    let store = stores.get("akeyless").await.unwrap();
    assert_eq!(store.data["status"]["conditions"][0]["reason"], "Valid");

    // ESO's validation: an unknown creationPolicy and a store with two providers are refused.
    let bad = format!(
        "apiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata: {{name: bad, namespace: {ns}}}\nspec:\n  target: {{creationPolicy: Sometimes}}\n"
    );
    let object: DynamicObject = serde_norway::from_str(&bad).unwrap();
    let externals = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        &ns,
        &resource(
            "external-secrets.io",
            "v1",
            "ExternalSecret",
            "externalsecrets",
        ),
    );
    let e = externals
        .create(&PostParams::default(), &object)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("creationPolicy"), "{e}");
    let two = format!(
        "apiVersion: external-secrets.io/v1\nkind: SecretStore\nmetadata: {{name: two, namespace: {ns}}}\nspec:\n  provider: {{akeyless: {{akeylessGWApiURL: x, authSecretRef: {{}}}}, vault: {{}}}}\n"
    );
    let object: DynamicObject = serde_norway::from_str(&two).unwrap();
    assert!(
        stores
            .create(&PostParams::default(), &object)
            .await
            .is_err(),
        "one provider per store"
    );
}

#[tokio::test]
async fn a_service_account_identity_gets_what_its_rbac_allows() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    let ns = cp.namespace("rbac").await;
    let reader = cp.service_account(&ns, "reader").await;
    assert_eq!(reader.user, format!("system:serviceaccount:{ns}:reader"));
    let client = reader.client().await;
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns);
    let e = secrets.list(&Default::default()).await.unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "User \"{}\" cannot list resource \"secrets\"",
            reader.user
        )),
        "{e}"
    );

    let admin = cp.client().await;
    apply(
        &admin,
        &format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: read-secrets}}
rules: [{{apiGroups: [""], resources: [secrets], verbs: [list]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: read-secrets}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-secrets}}
subjects: [{{kind: ServiceAccount, name: reader, namespace: {ns}}}]
"#
        ),
        Some(&ns),
    )
    .await;
    control_plane::wait_access(&admin, &reader.user, "list", ("", "secrets"), &ns, true).await;
    secrets
        .list(&Default::default())
        .await
        .expect("allowed now");

    // The audit log has both answers, under the ServiceAccount's name.
    let lists: Vec<u16> = cp
        .requests()
        .into_iter()
        .filter(|r| r.user == reader.user && r.verb == "list" && r.namespace == ns)
        .map(|r| r.code)
        .collect();
    assert_eq!(lists, [403, 200]);
}

#[tokio::test]
async fn garbage_collection_follows_owner_references() {
    let Some(cp) = control_plane::shared().await else {
        return;
    };
    if !cp.controller_manager().await {
        return;
    }
    let ns = cp.namespace("gc").await;
    let client = cp.client().await;
    let owner = apply(
        &client,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owner}\n",
        Some(&ns),
    )
    .await
    .remove(0);
    let uid = owner.metadata.uid.unwrap();
    apply(
        &client,
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: dependent\n  ownerReferences: [{{apiVersion: v1, kind: ConfigMap, name: owner, uid: {uid}, controller: true}}]\n"
        ),
        Some(&ns),
    )
    .await;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &ns)
        .delete("owner", &Default::default())
        .await
        .unwrap();
    let secrets = Api::<Secret>::namespaced(client, &ns);
    eventually(
        "the dependent Secret to be collected",
        control_plane::GC_TIMEOUT,
        || async {
            secrets
                .get_opt("dependent")
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await;
}
