//! The `controller` command's ExternalSecret semantics end to end (issue 13, item 4): the real
//! binary, the Akeyless emulator and a real control plane (tests/common/control_plane.rs).
//! Every ExternalSecret is applied as users write them; the expected behaviour is ESO's
//! (`pkg/controllers/externalsecret` of external-secrets/external-secrets). Skipped, saying so,
//! where `KUBEBUILDER_ASSETS` is unset.

mod common;

use std::time::Duration;

use common::eso::{Env, MARK, ROTATING, STORE, Staged, ready, rotating_es};
use common::fake_k8s::FaultProxy;
use serde_json::Value;

/// `refreshInterval` (`0` = once), the three refresh policies, and `force-sync`, each checked
/// against a periodic ExternalSecret that reads the same item and serves as the clock: when it
/// has refreshed twice more since the rotation, the others would have refreshed too.
#[tokio::test]
async fn refresh_intervals_policies_and_force_sync() {
    let Some(env) = Env::start("refresh", ROTATING, &[]).await else {
        return;
    };
    let es = |name: &str, extra: &str| rotating_es(name, STORE, extra) + "---";
    let yaml = [
        es("periodic", "  refreshInterval: 1s"),
        es("once", "  refreshInterval: \"0\""),
        es(
            "created-once",
            "  refreshInterval: 1s\n  refreshPolicy: CreatedOnce",
        ),
        es(
            "on-change",
            "  refreshInterval: 1s\n  refreshPolicy: OnChange",
        ),
        es("hourly", "  refreshInterval: 1h"),
    ]
    .join("\n");
    env.apply(&yaml).await;
    let all = ["periodic", "once", "created-once", "on-change", "hourly"];
    for name in all {
        env.wait_data(name, |d| d.get("v").is_some_and(|v| v == "r1-ESOMARK"))
            .await;
        env.wait_ready(name).await;
    }

    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.wait_data("periodic", |d| d["v"] == "r2-ESOMARK").await;
    env.wait_refreshes("periodic", 2).await;
    for name in ["once", "created-once", "on-change", "hourly"] {
        assert_eq!(
            env.data(name).await.unwrap()["v"],
            "r1-ESOMARK",
            "{name} must not refresh on a schedule"
        );
    }

    // force-sync refreshes a periodic ExternalSecret now, whatever its interval; a change of
    // its metadata refreshes an OnChange one. ESO does neither for `refreshInterval: 0` (synced
    // once, never again) or CreatedOnce.
    env.force_sync("hourly").await;
    env.force_sync("once").await;
    env.force_sync("created-once").await;
    env.force_sync("on-change").await;
    env.wait_data("hourly", |d| d["v"] == "r2-ESOMARK").await;
    env.wait_data("on-change", |d| d["v"] == "r2-ESOMARK").await;
    env.wait_refreshes("periodic", 2).await;
    for name in ["once", "created-once"] {
        assert_eq!(
            env.data(name).await.unwrap()["v"],
            "r1-ESOMARK",
            "{name} ignores force-sync, as ESO does"
        );
    }

    // A Secret that is no longer valid (deleted) is synced again whatever the policy.
    env.secrets()
        .delete("created-once", &Default::default())
        .await
        .unwrap();
    env.wait_data("created-once", |d| d["v"] == "r2-ESOMARK")
        .await;
    env.assert_no_leak(&[]);
}

/// `target.name` defaults to the ExternalSecret's name (a rename deletes the Secret of the old
/// name); the four creation policies.
#[tokio::test]
async fn target_name_and_creation_policies() {
    let Some(env) = Env::start("creation", ROTATING, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: merge-target
  labels: {app: mine}
stringData:
  own: "kept"
"#,
    )
    .await;
    let es = |name: &str, target: &str| {
        rotating_es(
            name,
            STORE,
            &format!("  refreshInterval: 1h\n  target: {target}"),
        ) + "---"
    };
    let yaml = [
        es("default-name", "{}"),
        es("orphan", "{name: orphan-target, creationPolicy: Orphan}"),
        es("merge", "{name: merge-target, creationPolicy: Merge}"),
        es(
            "merge-absent",
            "{name: absent-target, creationPolicy: Merge}",
        ),
        es("none", "{name: none-target, creationPolicy: None}"),
    ]
    .join("\n");
    env.apply(&yaml).await;

    // Owner (the default) into a Secret named after the ExternalSecret.
    let owner = env.wait_ready("default-name").await;
    let secret = env.secrets().get("default-name").await.unwrap();
    let refs = secret.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(refs.len(), 1, "one ownerReference: {refs:?}");
    assert_eq!(refs[0].kind, "ExternalSecret");
    assert_eq!(refs[0].name, "default-name");
    assert_eq!(Some(&refs[0].uid), owner.metadata.uid.as_ref());
    assert_eq!(refs[0].controller, Some(true));
    let labels = secret.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["reconcile.external-secrets.io/managed"], "true");
    assert!(labels.contains_key("reconcile.external-secrets.io/created-by"));
    assert_eq!(
        owner.data.pointer("/status/binding/name"),
        Some(&Value::from("default-name"))
    );

    // Orphan: managed, but no owner.
    env.wait_ready("orphan").await;
    let secret = env.secrets().get("orphan-target").await.unwrap();
    assert!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    let labels = secret.metadata.labels.unwrap_or_default();
    assert_eq!(labels["reconcile.external-secrets.io/managed"], "true");
    assert!(!labels.contains_key("reconcile.external-secrets.io/created-by"));

    // Merge: keys added to the existing Secret, its own kept; not created when absent.
    env.wait_ready("merge").await;
    let merged = env.data("merge-target").await.unwrap();
    assert_eq!(merged["own"], "kept");
    assert_eq!(merged["v"], "r1-ESOMARK");
    let secret = env.secrets().get("merge-target").await.unwrap();
    assert!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    assert_eq!(secret.metadata.labels.unwrap()["app"], "mine");
    let absent = env.wait_ready("merge-absent").await;
    let (_, reason, message) = ready(&absent).unwrap();
    assert_eq!(reason, "SecretMissing", "{message}");
    assert!(env.data("absent-target").await.is_none());

    // Owner, renamed: the Secret of the old name is deleted (ESO's orphan clean-up).
    env.externals()
        .patch(
            "default-name",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"target": {"name": "renamed"}}})),
        )
        .await
        .unwrap();
    env.wait_data("renamed", |d| d["v"] == "r1-ESOMARK").await;
    env.wait_gone("default-name", common::eso::WAIT).await;

    // None: synced, nothing written.
    env.wait_ready("none").await;
    assert!(env.data("none-target").await.is_none());
    assert_eq!(env.secret_writes("none-target"), 0);
    assert_eq!(env.secret_writes("absent-target"), 0);
    env.assert_no_leak(&[]);
}

/// `deletionPolicy` when Akeyless no longer has the data: Delete removes the Secret, Merge
/// drops the keys of the items that are gone, Retain keeps the Secret and says what is missing.
#[tokio::test]
async fn deletion_policies_when_items_disappear() {
    let items = r#"  - name: /del/a
    value: "a-ESOMARK"
  - name: /del/b
    value: "b-ESOMARK"
  - name: /del/c
    value: "c-ESOMARK"
  - name: /del/d
    value: "d-ESOMARK"
"#;
    let Some(env) = Env::start("deletion", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: delete}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  target: {deletionPolicy: Delete}
  data:
    - {secretKey: a, remoteRef: {key: /del/a}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: merge}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  target: {deletionPolicy: Merge}
  data:
    - {secretKey: b, remoteRef: {key: /del/b}}
    - {secretKey: c, remoteRef: {key: /del/c}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: retain}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  data:
    - {secretKey: d, remoteRef: {key: /del/d}}
"#,
    )
    .await;
    env.wait_data("delete", |d| d.contains_key("a")).await;
    env.wait_data("merge", |d| d.len() == 2).await;
    env.wait_data("retain", |d| d.contains_key("d")).await;

    for item in ["/del/a", "/del/b", "/del/d"] {
        env.akeyless.delete_item(item);
    }
    env.wait_gone("delete", common::eso::WAIT).await;
    let deleted = env.wait_condition("delete", "True", Some("deleted")).await;
    assert_eq!(ready(&deleted).unwrap().1, "SecretDeleted");

    let merged = env.wait_data("merge", |d| !d.contains_key("b")).await;
    assert_eq!(merged.get("c").map(String::as_str), Some("c-ESOMARK"));
    let message = env.wait_condition("merge", "True", Some("/del/b")).await;
    assert_eq!(ready(&message).unwrap().1, "SecretSynced");

    let message = env.wait_failed("retain", "/del/d").await;
    assert!(message.contains("does not exist"), "{message}");
    assert_eq!(env.data("retain").await.unwrap()["d"], "d-ESOMARK");
    env.assert_no_leak(&[]);
}

/// `deletionPolicy: Delete` is for a Secret the ExternalSecret owns: with Merge (a user's
/// Secret) or Orphan it is refused up front (ESO's admission rule), and nothing is written.
#[tokio::test]
async fn delete_policy_never_deletes_a_secret_it_does_not_own() {
    let items = r#"  - name: /del/merged
    value: "m-ESOMARK"
  - name: /del/orphaned
    value: "o-ESOMARK"
"#;
    let Some(env) = Env::start("delete-not-owned", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: v1
kind: Secret
metadata: {name: users}
stringData: {own: "the user's"}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: merge-delete}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  target: {name: users, creationPolicy: Merge, deletionPolicy: Delete}
  data:
    - {secretKey: m, remoteRef: {key: /del/merged}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: orphan-delete}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  target: {creationPolicy: Orphan, deletionPolicy: Delete}
  data:
    - {secretKey: o, remoteRef: {key: /del/orphaned}}
"#,
    )
    .await;
    for es in ["merge-delete", "orphan-delete"] {
        let message = env
            .wait_failed(es, "deletionPolicy Delete needs creationPolicy Owner")
            .await;
        assert!(message.contains("spec.target.deletionPolicy"), "{message}");
    }
    assert!(env.data("orphan-delete").await.is_none());
    assert_eq!(
        env.data("users").await.unwrap(),
        [("own".to_owned(), "the user's".to_owned())].into()
    );
    assert!(env.writes("secrets").is_empty());
    env.assert_no_leak(&[]);
}

/// `target.immutable`: created immutable; a later change in Akeyless is not written (ESO keeps
/// the content of an existing immutable Secret and reports it synced).
#[tokio::test]
async fn immutable_secrets_are_never_updated() {
    let Some(env) = Env::start("immutable", ROTATING, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: frozen}
spec:
  refreshInterval: 1s
  secretStoreRef: {name: akeyless}
  target: {immutable: true}
  data:
    - {secretKey: v, remoteRef: {key: /app/rot}}
"#,
    )
    .await;
    env.wait_ready("frozen").await;
    let secret = env.secrets().get("frozen").await.unwrap();
    assert_eq!(secret.immutable, Some(true));
    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.wait_refreshes("frozen", 3).await;
    assert_eq!(env.data("frozen").await.unwrap()["v"], "r1-ESOMARK");
    assert_eq!(env.secret_writes("frozen"), 1, "only the create");
    assert!(
        env.akeyless.calls("/get-secret-value") >= 3,
        "it is read on every refresh"
    );
    env.assert_no_leak(&[]);
}

/// `template`: type, metadata, data over the fetched keys, and both merge policies; without a
/// template, the ExternalSecret's own labels and annotations go to the Secret (as ESO does).
#[tokio::test]
async fn templates_shape_the_secret() {
    let items = r#"  - name: /tpl/user
    value: "app"
  - name: /tpl/password
    value: "pw-ESOMARK"
"#;
    let Some(env) = Env::start("template", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: replace}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  target:
    template:
      type: kubernetes.io/basic-auth
      metadata:
        labels: {app: web}
        annotations: {team: payments}
      data:
        username: "{{ .user }}"
        password: "{{ .password }}"
        url: "postgres://{{ .user }}:{{ .password }}@db:5432/app"
  data:
    - {secretKey: user, remoteRef: {key: /tpl/user}}
    - {secretKey: password, remoteRef: {key: /tpl/password}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: merge}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  target:
    template:
      mergePolicy: Merge
      data:
        url: "postgres://{{ .user }}@db"
  data:
    - {secretKey: user, remoteRef: {key: /tpl/user}}
    - {secretKey: password, remoteRef: {key: /tpl/password}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: plain
  labels: {tier: backend}
  annotations: {owner: team-x}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  data:
    - {secretKey: user, remoteRef: {key: /tpl/user}}
"#,
    )
    .await;
    env.wait_ready("replace").await;
    let secret = env.secrets().get("replace").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    assert_eq!(secret.metadata.labels.as_ref().unwrap()["app"], "web");
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()["team"],
        "payments"
    );
    let data = common::eso::text_data(&secret);
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password", "url", "username"],
        "Replace: only the templated keys"
    );
    assert_eq!(data["url"], "postgres://app:pw-ESOMARK@db:5432/app");

    env.wait_ready("merge").await;
    let data = env.data("merge").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["password", "url", "user"],
        "Merge: fetched and templated keys"
    );
    assert_eq!(data["url"], "postgres://app@db");

    env.wait_ready("plain").await;
    let secret = env.secrets().get("plain").await.unwrap();
    assert_eq!(secret.metadata.labels.as_ref().unwrap()["tier"], "backend");
    assert_eq!(
        secret.metadata.annotations.as_ref().unwrap()["owner"],
        "team-x"
    );

    // Kubernetes does not change a Secret's type: a new template.type is refused, saying so.
    env.externals()
        .patch(
            "plain",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"target": {"template": {"type": "example.com/custom"}}}}),
            ),
        )
        .await
        .unwrap();
    let message = env.wait_failed("plain", "example.com/custom").await;
    assert!(
        message.contains("delete the Secret"),
        "names the fix: {message}"
    );
    let secret = env.secrets().get("plain").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    env.assert_no_leak(&["pw-"]);
}

/// `remoteRef`: `property` as a key, a dotted path, an index, a key with a dot in it;
/// `version`; `decodingStrategy`.
#[tokio::test]
async fn remote_ref_property_version_and_decoding() {
    let items = r#"  - name: /ref/json
    format: json
    value: '{"db":{"user":"app","hosts":["h0","h1"]},"a.b":"dotted-ESOMARK","n":5}'
  - name: /ref/versioned
    versions: ["v1-ESOMARK", "v2-ESOMARK"]
  - name: /ref/b64
    value: "aGVsbG8tRVNPTUFSSw=="
  - name: /ref/text
    value: "not base64 ESOMARK!"
"#;
    let Some(env) = Env::start("remote-ref", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: refs}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  data:
    - {secretKey: dotted-path, remoteRef: {key: /ref/json, property: db.user}}
    - {secretKey: indexed, remoteRef: {key: /ref/json, property: db.hosts.1}}
    - {secretKey: dotted-key, remoteRef: {key: /ref/json, property: a.b}}
    - {secretKey: number, remoteRef: {key: /ref/json, property: n}}
    - {secretKey: object, remoteRef: {key: /ref/json, property: db}}
    - {secretKey: first, remoteRef: {key: /ref/versioned, version: "1"}}
    - {secretKey: latest, remoteRef: {key: /ref/versioned}}
    - {secretKey: decoded, remoteRef: {key: /ref/b64, decodingStrategy: Base64}}
    - {secretKey: auto, remoteRef: {key: /ref/text, decodingStrategy: Auto}}
"#,
    )
    .await;
    env.wait_ready("refs").await;
    let data = env.data("refs").await.unwrap();
    assert_eq!(data["dotted-path"], "app");
    assert_eq!(data["indexed"], "h1");
    assert_eq!(data["dotted-key"], "dotted-ESOMARK");
    assert_eq!(data["number"], "5");
    let object: Value = serde_json::from_str(&data["object"]).expect("a JSON object");
    assert_eq!(object["hosts"][0], "h0");
    assert_eq!(data["first"], "v1-ESOMARK");
    assert_eq!(data["latest"], "v2-ESOMARK");
    assert_eq!(data["decoded"], "hello-ESOMARK");
    assert_eq!(data["auto"], "not base64 ESOMARK!");

    // A property that is not there: the entry and the property are named, not the value.
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: no-such-property}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  data:
    - {secretKey: missing, remoteRef: {key: /ref/json, property: db.port}}
"#,
    )
    .await;
    let message = env.wait_failed("no-such-property", "db.port").await;
    assert!(message.contains("/ref/json"), "{message}");
    assert!(!message.contains(MARK), "{message}");
    assert!(env.data("no-such-property").await.is_none());
    env.assert_no_leak(&[]);
}

/// `dataFrom`: `extract` (whole, and at a `property`), `find` by path and `name.regexp`, by
/// path and `tags` (any of them, as ESO's Akeyless provider), and `rewrite`.
#[tokio::test]
async fn data_from_extract_find_and_rewrite() {
    let items = r#"  - name: /cfg/app
    format: json
    value: '{"db":{"host":"db.internal","port":5432},"mode":"prod-ESOMARK"}'
  - name: /found/alpha
    value: "A-ESOMARK"
    tags: [team-a]
  - name: /found/beta
    value: "B-ESOMARK"
    tags: [team-a, team-b]
  - name: /found/gamma
    value: "G-ESOMARK"
    tags: [team-b]
  - name: /found/sub/delta
    value: "D-ESOMARK"
  - name: /elsewhere/alpha
    value: "X-ESOMARK"
    tags: [team-a, team-b]
"#;
    let Some(env) = Env::start("data-from", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: extract}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - extract: {key: /cfg/app}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: extract-property}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - extract: {key: /cfg/app, property: db}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: find-name}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - find: {path: /found, name: {regexp: "alpha|beta"}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: find-tags}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - find: {path: /found, tags: {team: team-b}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: find-any-tag}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - find: {path: /found, tags: {first: team-a, second: team-b}}
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: rewrite}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  dataFrom:
    - find: {path: /found, name: {regexp: "/sub/"}}
      rewrite:
        - regexp: {source: "^/found/sub/(.*)$", target: "sub-$1"}
    - extract: {key: /cfg/app}
      rewrite:
        - regexp: {source: "^(.*)$", target: "app_$1"}
"#,
    )
    .await;
    env.wait_ready("extract").await;
    let data = env.data("extract").await.unwrap();
    assert_eq!(data["mode"], "prod-ESOMARK");
    let db: Value = serde_json::from_str(&data["db"]).expect("db as JSON text");
    assert_eq!(db["port"], 5432);

    env.wait_ready("extract-property").await;
    let data = env.data("extract-property").await.unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), ["host", "port"]);
    assert_eq!(data["port"], "5432");

    env.wait_ready("find-name").await;
    let data = env.data("find-name").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["_found_alpha", "_found_beta"],
        "item names as keys, '/' converted (ESO's Default conversion)"
    );
    assert_eq!(data["_found_alpha"], "A-ESOMARK");

    env.wait_ready("find-tags").await;
    let data = env.data("find-tags").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["_found_beta", "_found_gamma"],
        "items under /found tagged team-b"
    );

    // ESO's Akeyless provider lists the items of each tag and takes them all.
    env.wait_ready("find-any-tag").await;
    let data = env.data("find-any-tag").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["_found_alpha", "_found_beta", "_found_gamma"],
        "items under /found tagged team-a or team-b"
    );

    env.wait_ready("rewrite").await;
    let data = env.data("rewrite").await.unwrap();
    assert_eq!(
        data.keys().collect::<Vec<_>>(),
        ["app_db", "app_mode", "sub-delta"]
    );
    assert_eq!(data["sub-delta"], "D-ESOMARK");
    env.assert_no_leak(&[]);
}

/// Every item type the CSI path reads: static, rotated, dynamic, certificate. A dynamic secret
/// read by several keys is issued once for the refresh, not once per key.
#[tokio::test]
async fn every_item_type_and_one_lease_per_refresh() {
    let items = r#"  - name: /types/static
    value: "s-ESOMARK"
  - name: /types/rotated
    type: rotated-secret
    value: '{"username":"rot-user","password":"rot-ESOMARK"}'
  - name: /types/dyn
    type: dynamic-secret
    ttl_seconds: 3600
  - name: /types/cert
    type: certificate
    common_name: web.example.internal
"#;
    let Some(env) = Env::start("types", items, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: types}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  data:
    - {secretKey: static, remoteRef: {key: /types/static}}
    - {secretKey: rotated-user, remoteRef: {key: /types/rotated, property: username}}
    - {secretKey: rotated-password, remoteRef: {key: /types/rotated, property: password}}
    - {secretKey: dyn-id, remoteRef: {key: /types/dyn, property: id}}
    - {secretKey: dyn-user, remoteRef: {key: /types/dyn, property: user}}
    - {secretKey: dyn-password, remoteRef: {key: /types/dyn, property: password}}
    - {secretKey: tls.crt, remoteRef: {key: /types/cert, property: certificate_pem}}
    - {secretKey: tls.key, remoteRef: {key: /types/cert, property: private_key_pem}}
  dataFrom:
    - extract: {key: /types/dyn}
      rewrite:
        - regexp: {source: "^(.*)$", target: "lease-$1"}
"#,
    )
    .await;
    env.wait_ready("types").await;
    let data = env.data("types").await.unwrap();
    assert_eq!(data["static"], "s-ESOMARK");
    assert_eq!(data["rotated-user"], "rot-user");
    assert_eq!(data["rotated-password"], "rot-ESOMARK");
    assert!(!data["dyn-user"].is_empty() && !data["dyn-password"].is_empty());
    assert_eq!(
        data["lease-id"], data["dyn-id"],
        "every key of the dynamic secret comes from one lease"
    );
    assert_eq!(data["lease-user"], data["dyn-user"]);
    assert!(data["tls.crt"].starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(data["tls.key"].contains("PRIVATE KEY-----"));
    assert_eq!(
        env.akeyless.leases_minted("/types/dyn"),
        1,
        "four keys of one dynamic secret, one issue"
    );

    // Another refresh issues anew, as ESO does: a lease reused until two thirds of its life
    // could end before the next refresh, while the Secret still holds it. Still one issue for
    // the four keys.
    env.force_sync_and_wait("types").await;
    let again = env.data("types").await.unwrap();
    assert_eq!(
        again["lease-id"], again["dyn-id"],
        "still one lease per refresh"
    );
    assert_eq!(
        env.akeyless.leases_minted("/types/dyn"),
        2,
        "one issue per refresh"
    );
    assert_ne!(again["dyn-id"], data["dyn-id"], "the refresh's own lease");
    env.assert_no_leak(&[&data["dyn-password"], &again["dyn-password"], "rot-ESOMARK"]);
}

/// Fields ESO has and we do not implement, and fields ESO does not know: `Ready=False` naming
/// each field, and nothing written.
#[tokio::test]
async fn unsupported_and_unknown_fields_are_named_and_nothing_is_written() {
    let Some(env) = Env::start("unsupported", ROTATING, &[]).await else {
        return;
    };
    env.apply(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: unsupported}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  syncWindows: {windows: [{schedule: "0 * * * *", duration: 1h}]}
  target:
    manifest: {apiVersion: v1, kind: ConfigMap}
  data:
    - secretKey: v
      remoteRef: {key: /app/rot}
      sourceRef: {storeRef: {name: other}}
  dataFrom:
    - rewrite: [{transform: {template: "x"}}]
      extract: {key: /app/rot}
  dataForm: []
---
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata: {name: metadata-policy}
spec:
  refreshInterval: 1h
  secretStoreRef: {name: akeyless}
  data:
    - secretKey: v
      remoteRef: {key: /app/rot, metadataPolicy: Fetch}
"#,
    )
    .await;
    let message = env
        .wait_failed("metadata-policy", "metadataPolicy Fetch")
        .await;
    assert!(message.contains("spec.data[0].remoteRef"), "{message}");
    assert!(env.data("metadata-policy").await.is_none());
    let message = env.wait_failed("unsupported", "syncWindows").await;
    for field in [
        "spec.syncWindows",
        "spec.target.manifest",
        "spec.data[0].sourceRef",
        "spec.dataFrom[0].rewrite[0].transform",
        "spec.dataForm",
    ] {
        assert!(
            message.contains(field),
            "{field} is not named in: {message}"
        );
    }
    let es = env.es("unsupported").await;
    assert_eq!(ready(&es).unwrap().1, "SecretSyncedError");
    assert!(env.data("unsupported").await.is_none());
    assert_eq!(env.secret_writes("unsupported"), 0);
    assert_eq!(
        env.akeyless.calls("/get-secret-value"),
        0,
        "nothing read for an invalid ExternalSecret"
    );
    let note = env.wait_event("unsupported", "UpdateFailed").await;
    assert!(note.contains("spec.syncWindows"), "{note}");
    env.assert_no_leak(&[]);
}

/// A refresh reads and writes once: the watch events of its own writes (the Secret it created
/// or updated, its status) do not refresh the ExternalSecret again, even when the Secret's
/// event comes before its status's (the object at hand then predates the status just
/// written). The ExternalSecrets' watch events reach the controller late here, through the
/// fault proxy, as they do from a loaded API server. Checked over a first sync of ten and a
/// forced refresh of each, by the controller's count of refreshes and the API server's of
/// status writes.
#[tokio::test]
async fn a_refresh_is_not_repeated_for_its_own_watch_events() {
    let Some(staged) = Staged::new("once", ROTATING).await else {
        return;
    };
    let ca = std::fs::read_to_string(staged.cp.dir.join("ca.crt")).unwrap();
    let proxy = FaultProxy::start(&staged.cp.url, &ca).await;
    proxy.delay_watch_events("externalsecrets", Duration::from_millis(500));
    let env = staged.start_through(&proxy, &[]).await;
    let names: Vec<String> = (0..10).map(|i| format!("es-{i}")).collect();
    let yaml: Vec<String> = names
        .iter()
        .map(|name| rotating_es(name, STORE, "  refreshInterval: 1h"))
        .collect();
    env.apply(&yaml.join("\n---\n")).await;
    for name in &names {
        env.wait_ready(name).await;
    }
    let refreshes =
        "akeyless_csi_controller_reconciles_total{kind=\"external_secret\",outcome=\"synced\"}";
    let skips =
        "akeyless_csi_controller_reconciles_total{kind=\"external_secret\",outcome=\"skipped\"}";
    // The reconciles the writes' watch events start have run when the counts stand still for
    // longer than the events are held.
    let settle = || async {
        let mut seen = (env.metric(refreshes).await, env.metric(skips).await);
        let mut still = 0;
        for _ in 0..600 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let now = (env.metric(refreshes).await, env.metric(skips).await);
            still = if now == seen { still + 1 } else { 0 };
            seen = now;
            if still >= 15 {
                return;
            }
        }
        panic!("the controller did not settle within two minutes");
    };
    let status_writes = |name: &str| {
        env.writes("externalsecrets")
            .iter()
            .filter(|r| r.subresource == "status" && r.name == name)
            .count()
    };
    settle().await;
    assert_eq!(env.metric(refreshes).await, 10.0, "one refresh each");
    for name in &names {
        assert_eq!(status_writes(name), 1, "{name}: one status write");
    }

    for name in &names {
        env.force_sync_and_wait(name).await;
    }
    settle().await;
    assert_eq!(env.metric(refreshes).await, 20.0, "one more each");
    for name in &names {
        assert_eq!(status_writes(name), 2, "{name}: one more status write");
    }
    let updates = env
        .writes("secrets")
        .iter()
        .filter(|r| r.verb == "update" && r.name == "es-0")
        .count();
    assert_eq!(
        updates, 1,
        "updated once (force-sync's annotation is copied, as ESO does)"
    );
}
