//! A namespace of ESO objects served by the real `controller` binary: the Akeyless emulator in
//! this process, a credentials Secret and a SecretStore `akeyless` pointing at it, and a
//! controller watching only this namespace, running as a ServiceAccount of its own so that the
//! API server's audit log tells its requests apart from the test's and other tests'.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use akeyless_csi_provider::emulator::{self, EmulatorHandle, Seed};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
};
use serde_json::{Value, json};

use super::control_plane::{self, ControlPlane, Identity, Request, apply, eventually};
use super::controller::Controller;
use super::fake_k8s::FaultProxy;
use super::harness::{ACCESS_ID, ACCESS_KEY};

/// A bound on waiting for the controller to converge (never a claim about its speed).
pub const WAIT: Duration = Duration::from_secs(60);
/// The SecretStore every fixture namespace has.
pub const STORE: &str = "akeyless";
/// Values carry this, so the log checks can look for it.
pub const MARK: &str = "ESOMARK";
/// One item, `/app/rot`, for tests that rotate it (`put_secret`) to see what is refreshed.
pub const ROTATING: &str = "  - name: /app/rot\n    value: \"r1-ESOMARK\"\n";

/// An ExternalSecret `name` reading `/app/rot` ([`ROTATING`]) into key `v` from the
/// SecretStore `store`, with `spec` lines (indented by two spaces) added.
pub fn rotating_es(name: &str, store: &str, spec: &str) -> String {
    format!(
        r#"
apiVersion: external-secrets.io/v1
kind: ExternalSecret
metadata:
  name: {name}
spec:
  secretStoreRef: {{name: {store}}}
{spec}
  data:
    - secretKey: v
      remoteRef: {{key: /app/rot}}
"#
    )
}

/// ESO's kinds at a version.
pub fn resource(kind: &str, version: &str) -> ApiResource {
    let plural = format!("{}s", kind.to_lowercase());
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("external-secrets.io", version, kind),
        &plural,
    )
}

/// A seed with the test identity (reading everything) and these items (YAML list entries,
/// indented by two spaces, as under `items:`).
pub fn seed(items: &str) -> Seed {
    let yaml = format!(
        "token_ttl_seconds: 900\nauth_methods:\n  - access_id: {ACCESS_ID}\n    access_type: access_key\n    access_key: \"{ACCESS_KEY}\"\n    read: [\"/*\"]\nitems:\n{items}"
    );
    Seed::from_yaml(&yaml).expect("the seed parses")
}

/// The credentials Secret and the SecretStore `name` for the emulator at `url` (ESO's
/// documentation's shape), with `extra` lines added under `spec` (e.g. `controller: x`).
pub fn store_yaml(name: &str, url: &str, api_version: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata:
  name: {name}-creds
type: Opaque
stringData:
  accessId: "{ACCESS_ID}"
  accessType: api_key
  accessTypeParam: "{ACCESS_KEY}"
---
apiVersion: external-secrets.io/{api_version}
kind: SecretStore
metadata:
  name: {name}
spec:
{extra}
  provider:
    akeyless:
      akeylessGWApiURL: "{url}"
      authSecretRef:
        secretRef:
          accessID: {{name: {name}-creds, key: accessId}}
          accessType: {{name: {name}-creds, key: accessType}}
          accessTypeParam: {{name: {name}-creds, key: accessTypeParam}}
"#
    )
}

/// The ServiceAccount `namespace/name`, allowed everything (the deploy overlay's least
/// privilege is tested elsewhere): an identity of its own for one controller process.
pub async fn controller_identity(cp: &ControlPlane, namespace: &str, name: &str) -> Identity {
    let identity = cp.service_account(namespace, name).await;
    let client = cp.client().await;
    apply(
        &client,
        &format!(
            r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: {namespace}-{name}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects:
  - {{kind: ServiceAccount, name: {name}, namespace: {namespace}}}
"#
        ),
        None,
    )
    .await;
    control_plane::wait_access(
        &client,
        &identity.user,
        "update",
        ("", "secrets"),
        namespace,
        true,
    )
    .await;
    identity
}

/// A test's namespace, emulator and store, before its controller starts.
pub struct Staged {
    pub cp: &'static ControlPlane,
    pub client: kube::Client,
    pub ns: String,
    pub akeyless: EmulatorHandle,
    identity: Identity,
}

impl Staged {
    /// The namespace, with the emulator's `items` and the store; `None` where there is no
    /// control plane (the test returns).
    pub async fn new(prefix: &str, items: &str) -> Option<Staged> {
        let cp = control_plane::shared().await?;
        cp.install_crds().await;
        Some(Self::on(cp, prefix, items).await)
    }

    /// As [`Staged::new`], on a control plane already running.
    pub async fn on(cp: &'static ControlPlane, prefix: &str, items: &str) -> Staged {
        let akeyless = emulator::start(([127, 0, 0, 1], 0).into(), seed(items))
            .await
            .expect("the emulator starts");
        let ns = cp.namespace(prefix).await;
        let client = cp.client().await;
        apply(
            &client,
            &store_yaml(STORE, &akeyless.url(), "v1", ""),
            Some(&ns),
        )
        .await;
        let identity = controller_identity(cp, &ns, "controller").await;
        Staged {
            cp,
            client,
            ns,
            akeyless,
            identity,
        }
    }

    /// Applies YAML in this namespace.
    pub async fn apply(&self, yaml: &str) -> Vec<DynamicObject> {
        apply(&self.client, yaml, Some(&self.ns)).await
    }

    /// Starts another controller process for this namespace, as the ServiceAccount `name` (an
    /// identity of its own); returns it and its user.
    pub async fn spawn(&self, name: &str, args: &[&str]) -> (Controller, String) {
        let identity = controller_identity(self.cp, &self.ns, name).await;
        let controller = self.controller_as(&identity, args);
        (controller, identity.user)
    }

    /// Starts the controller with its API server requests going through `proxy`.
    pub async fn start_through(self, proxy: &FaultProxy, args: &[&str]) -> Env {
        let identity = Identity {
            user: self.identity.user.clone(),
            kubeconfig: proxy.kubeconfig(&self.identity.kubeconfig),
        };
        let controller = self.controller_as(&identity, args);
        self.with(controller)
    }

    fn controller_as(&self, identity: &Identity, args: &[&str]) -> Controller {
        let mut all = vec!["--namespace", &self.ns, "--cluster-stores=false"];
        all.extend_from_slice(args);
        Controller::start(&identity.kubeconfig, &self.akeyless.url(), &all)
    }

    /// Starts the controller, watching this namespace only, with extra `args`.
    pub fn start(self, args: &[&str]) -> Env {
        let controller = self.controller_as(&self.identity, args);
        self.with(controller)
    }

    fn with(self, controller: Controller) -> Env {
        Env {
            cp: self.cp,
            client: self.client,
            ns: self.ns,
            akeyless: self.akeyless,
            controller,
            user: self.identity.user,
        }
    }
}

/// One test's namespace, emulator, store and controller.
pub struct Env {
    pub cp: &'static ControlPlane,
    pub client: kube::Client,
    pub ns: String,
    pub akeyless: EmulatorHandle,
    pub controller: Controller,
    /// The controller's user, as the audit log names it.
    pub user: String,
}

impl Env {
    /// Starts it all, with the emulator's `items` and the controller's extra `args`; `None`
    /// where there is no control plane (the test returns).
    pub async fn start(prefix: &str, items: &str, args: &[&str]) -> Option<Env> {
        Some(Staged::new(prefix, items).await?.start(args))
    }

    /// As [`Env::start`], on a control plane already running.
    pub async fn start_on(
        cp: &'static ControlPlane,
        prefix: &str,
        items: &str,
        args: &[&str],
    ) -> Env {
        Staged::on(cp, prefix, items).await.start(args)
    }

    /// Applies YAML in this namespace.
    pub async fn apply(&self, yaml: &str) -> Vec<DynamicObject> {
        apply(&self.client, yaml, Some(&self.ns)).await
    }

    pub fn externals(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &resource("ExternalSecret", "v1"),
        )
    }

    pub fn stores(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.ns,
            &resource("SecretStore", "v1"),
        )
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// The ExternalSecret as stored now.
    pub async fn es(&self, name: &str) -> DynamicObject {
        self.externals()
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("ExternalSecret {name}: {e}"))
    }

    /// Waits for `Ready` True on the ExternalSecret at its current generation; returns it.
    pub async fn wait_ready(&self, name: &str) -> DynamicObject {
        self.wait_condition(name, "True", None).await
    }

    /// Waits for `Ready` False with a message containing `needle`; returns the message.
    pub async fn wait_failed(&self, name: &str, needle: &str) -> String {
        let es = self.wait_condition(name, "False", Some(needle)).await;
        ready(&es).expect("a Ready condition").2
    }

    /// Waits for the `Ready` condition `status`, with `needle` in its message if given.
    pub async fn wait_condition(
        &self,
        name: &str,
        status: &str,
        needle: Option<&str>,
    ) -> DynamicObject {
        let api = self.externals();
        let started = std::time::Instant::now();
        let mut last = Value::Null;
        loop {
            if let Ok(es) = api.get(name).await {
                if let Some((s, _, message)) = ready(&es)
                    && s == status
                    && needle.is_none_or(|n| message.contains(n))
                {
                    return es;
                }
                last = es.data.get("status").cloned().unwrap_or(Value::Null);
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for ExternalSecret {}/{name} Ready={status}{}; its status: {last}\ncontroller log tail:\n{}",
                self.ns,
                needle
                    .map(|n| format!(" mentioning {n:?}"))
                    .unwrap_or_default(),
                tail(&self.controller.logs(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the ExternalSecret's `refreshTime` is later than `after` (RFC 3339); returns
    /// the new one. A refresh that wrote nothing still moves it.
    pub async fn wait_refreshed_after(&self, name: &str, after: &str) -> String {
        let api = self.externals();
        let after = chrono::DateTime::parse_from_rfc3339(after).expect("an RFC 3339 time");
        eventually(
            &format!("ExternalSecret {name} to be refreshed after {after}"),
            WAIT,
            || async {
                let es = api.get(name).await.ok()?;
                let at = refresh_time(&es)?;
                (chrono::DateTime::parse_from_rfc3339(&at).ok()? > after).then_some(at)
            },
        )
        .await
    }

    /// Waits for `n` more refreshes of a periodic ExternalSecret (its `refreshTime` moving on
    /// `n` times).
    pub async fn wait_refreshes(&self, name: &str, n: usize) {
        let mut at = refresh_time(&self.wait_ready(name).await).expect("a refreshTime");
        for _ in 0..n {
            at = self.wait_refreshed_after(name, &at).await;
        }
    }

    /// The Secret's data as text, `None` if it does not exist.
    pub async fn data(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let secret = self
            .secrets()
            .get_opt(name)
            .await
            .expect("reading a Secret")?;
        Some(text_data(&secret))
    }

    /// Waits for the Secret to exist and satisfy `check`; returns its data.
    pub async fn wait_data(
        &self,
        name: &str,
        check: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        let started = std::time::Instant::now();
        loop {
            let data = self.data(name).await;
            if let Some(data) = &data
                && check(data)
            {
                return data.clone();
            }
            assert!(
                started.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for Secret {}/{name}; its keys: {:?}; the ExternalSecret's status: {}\ncontroller log tail:\n{}",
                self.ns,
                data.map(|d| d.into_keys().collect::<Vec<_>>()),
                self.externals()
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|es| es.data.get("status").cloned())
                    .unwrap_or(Value::Null),
                tail(&self.controller.logs(), 30)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the Secret to be gone.
    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let secrets = self.secrets();
        eventually(
            &format!("Secret {}/{name} to be deleted", self.ns),
            timeout,
            || async { secrets.get_opt(name).await.ok()?.is_none().then_some(()) },
        )
        .await;
    }

    /// The requests of the controller of this fixture that the API server accepted as writes
    /// of `resource` (`secrets`, `externalsecrets`, `events`, ...).
    pub fn writes(&self, resource: &str) -> Vec<Request> {
        writes_by(self.cp, &self.user, resource)
    }

    /// Writes of the Secret `name` (create, update, patch, delete) by the controller.
    pub fn secret_writes(&self, name: &str) -> usize {
        self.writes("secrets")
            .iter()
            .filter(|r| r.name == name || (r.verb == "create" && r.name.is_empty()))
            .count()
    }

    /// Sets the `force-sync` annotation to a new value.
    pub async fn force_sync(&self, name: &str) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        self.externals()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"force-sync": now}}})),
            )
            .await
            .expect("annotating the ExternalSecret");
    }

    /// Sets `force-sync` and waits until the controller has synced that change (its
    /// `syncedResourceVersion` moved on, Ready True).
    pub async fn force_sync_and_wait(&self, name: &str) -> DynamicObject {
        let before = synced_version(&self.es(name).await);
        self.force_sync(name).await;
        let api = self.externals();
        eventually(
            &format!("ExternalSecret {name} to sync its force-sync"),
            WAIT,
            || async {
                let es = api.get(name).await.ok()?;
                (synced_version(&es) != before && ready(&es)?.0 == "True").then_some(es)
            },
        )
        .await
    }

    pub async fn delete_es(&self, name: &str) {
        self.externals()
            .delete(name, &DeleteParams::background())
            .await
            .expect("deleting the ExternalSecret");
    }

    /// The Events about the ExternalSecret `name`: (type, reason, note).
    pub async fn events(&self, name: &str) -> Vec<(String, String, String)> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        let list = api.list(&Default::default()).await.expect("listing Events");
        list.items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("ExternalSecret") && r.name.as_deref() == Some(name)
                })
            })
            .map(|e| {
                (
                    e.type_.unwrap_or_default(),
                    e.reason.unwrap_or_default(),
                    e.note.unwrap_or_default(),
                )
            })
            .collect()
    }

    /// Waits for an Event with this reason about the ExternalSecret; returns its note.
    pub async fn wait_event(&self, name: &str, reason: &str) -> String {
        eventually(
            &format!("an Event {reason} on ExternalSecret {name}"),
            WAIT,
            || async {
                self.events(name)
                    .await
                    .into_iter()
                    .find(|(_, r, _)| r == reason)
                    .map(|(_, _, note)| note)
            },
        )
        .await
    }

    /// The value of a sample on the controller's `/metrics` (`name{labels}` as printed);
    /// 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        metric(&self.controller, sample).await.unwrap_or(0.0)
    }

    /// Panics if the controller's log holds any of `secrets` (values, keys).
    pub fn assert_no_leak(&self, secrets: &[&str]) {
        let logs = self.controller.logs();
        assert!(
            logs.contains(r#""level":"DEBUG""#),
            "the controller logs at debug level"
        );
        for secret in secrets.iter().chain([&MARK, &ACCESS_KEY]) {
            assert!(
                !logs.contains(secret),
                "{secret} leaked into the controller's log"
            );
        }
        assert!(
            !super::harness::has_token(&logs),
            "an Akeyless token leaked into the controller's log"
        );
    }
}

/// ESO's `ObjectHash` of a Secret's data (`reconcile.external-secrets.io/data-hash`): SHA3-224
/// over Go's `%+v` of a `map[string][]byte`, written here from ESO's code, independently of
/// the controller's.
pub fn eso_data_hash(data: &BTreeMap<String, Vec<u8>>) -> String {
    let entries: Vec<String> = data
        .iter()
        .map(|(k, v)| {
            let bytes: Vec<String> = v.iter().map(u8::to_string).collect();
            format!("{k}:[{}]", bytes.join(" "))
        })
        .collect();
    sha3_224(&format!("map[{}]", entries.join(" ")))
}

/// ESO's `reconcile.external-secrets.io/created-by` label of an Owner Secret.
pub fn eso_owner_hash(namespace: &str, name: &str) -> String {
    sha3_224(&format!("{namespace}/{name}"))
}

fn sha3_224(text: &str) -> String {
    use sha3::Digest;
    hex::encode(sha3::Sha3_224::digest(text.as_bytes()))
}

/// The value of a sample on a controller's `/metrics` (`name{labels}` as printed); `None`
/// when it does not answer or has no such sample.
pub async fn metric(controller: &Controller, sample: &str) -> Option<f64> {
    let (_, body) = controller.http_get("/metrics").await?;
    body.lines()
        .find_map(|line| line.strip_prefix(sample)?.trim().parse().ok())
}

/// Accepted writes of `resource` by `user`.
pub fn writes_by(cp: &ControlPlane, user: &str, resource: &str) -> Vec<Request> {
    cp.requests()
        .into_iter()
        .filter(|r| r.user == user && r.resource == resource && r.is_accepted_write())
        .collect()
}

/// The `Ready` condition: (status, reason, message).
pub fn ready(object: &DynamicObject) -> Option<(String, String, String)> {
    let conditions = object.data.pointer("/status/conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "Ready")?;
    let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

/// ESO's `status.syncedResourceVersion`.
pub fn synced_version(object: &DynamicObject) -> Option<String> {
    object
        .data
        .pointer("/status/syncedResourceVersion")?
        .as_str()
        .map(str::to_owned)
}

pub fn refresh_time(object: &DynamicObject) -> Option<String> {
    object
        .data
        .pointer("/status/refreshTime")?
        .as_str()
        .map(str::to_owned)
}

/// A Secret's data as text (lossy for binary values).
pub fn text_data(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// The last `n` lines of a log.
pub fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
