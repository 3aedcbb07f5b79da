//! Store authentication: every form ESO supports, resolved against a fake Kubernetes API (the
//! Secrets, ConfigMaps and ServiceAccounts a store names, and TokenRequest) and, where a login
//! or a read matters, the Akeyless emulator.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use super::*;
use crate::akeyless::{ClientOptions, ItemRef};
use crate::auth::{AuthOptions, AuthSettings};
use crate::controller::own::{AwsWorkload, AzureWorkload, OwnIdentity};
use crate::emulator::{self, EmulatorHandle, Seed};
use crate::fetch::{Extra, FetchOptions, Fetcher, Lookup, Want};
use crate::telemetry::metrics::Metrics;

const GW: &str = "https://gw.corp:8000/api/v2";
const EVIL: &str = "https://evil.example/api/v2";

// ---- A fake Kubernetes API: objects by path, TokenRequests recorded ----

#[derive(Debug, Clone, PartialEq)]
struct Requested {
    namespace: String,
    service_account: String,
    audiences: Vec<String>,
    expiration_seconds: Option<i64>,
    bound: bool,
}

#[derive(Clone, Default)]
struct FakeApi {
    objects: Arc<Mutex<BTreeMap<String, Value>>>,
    requested: Arc<Mutex<Vec<Requested>>>,
}

impl FakeApi {
    /// A core/v1 object of `kind` with `fields` (`data`, or `annotations`).
    fn put(&self, kind: &str, namespace: &str, name: &str, fields: Value) {
        let mut object = json!({"apiVersion": "v1", "kind": kind,
                                "metadata": {"name": name, "namespace": namespace}});
        for (key, value) in fields.as_object().into_iter().flatten() {
            match key.as_str() {
                "annotations" => object["metadata"]["annotations"] = value.clone(),
                _ => object[key] = value.clone(),
            }
        }
        let plural = format!("{}s", kind.to_ascii_lowercase());
        self.objects.lock().unwrap().insert(
            format!("/api/v1/namespaces/{namespace}/{plural}/{name}"),
            object,
        );
    }

    fn secret(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: BTreeMap<&str, String> = data.iter().map(|(k, v)| (*k, b64(v))).collect();
        self.put("Secret", namespace, name, json!({ "data": data }));
    }

    fn config_map(&self, namespace: &str, name: &str, data: &[(&str, &str)]) {
        let data: BTreeMap<&str, &str> = data.iter().copied().collect();
        self.put("ConfigMap", namespace, name, json!({ "data": data }));
    }

    fn service_account(&self, namespace: &str, name: &str, annotations: &[(&str, &str)]) {
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        self.put(
            "ServiceAccount",
            namespace,
            name,
            json!({ "annotations": annotations }),
        );
    }

    fn requested(&self) -> Vec<Requested> {
        self.requested.lock().unwrap().clone()
    }

    fn client(&self) -> kube::Client {
        let api = self.clone();
        let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
            let api = api.clone();
            async move { Ok::<_, Infallible>(api.answer(request).await) }
        });
        kube::Client::new(service, "default")
    }

    async fn answer(
        &self,
        request: http::Request<kube::client::Body>,
    ) -> http::Response<kube::client::Body> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let body = request
            .into_body()
            .collect_bytes()
            .await
            .unwrap_or_default();
        let respond = |code: u16, value: Value| {
            http::Response::builder()
                .status(code)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(value.to_string().into_bytes()))
                .unwrap()
        };
        let not_found = || {
            respond(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
            )
        };
        if method == http::Method::POST
            && let Some(account) = path.strip_suffix("/token")
        {
            if !self.objects.lock().unwrap().contains_key(account) {
                return not_found();
            }
            let parts: Vec<&str> = account.split('/').collect();
            let (namespace, name) = (parts[4].to_owned(), parts[6].to_owned());
            let spec: Value = serde_json::from_slice(&body).unwrap_or_default();
            let audiences: Vec<String> = spec
                .pointer("/spec/audiences")
                .and_then(|a| serde_json::from_value(a.clone()).ok())
                .unwrap_or_default();
            let expiration_seconds = spec
                .pointer("/spec/expirationSeconds")
                .and_then(Value::as_i64);
            let n = {
                let mut requested = self.requested.lock().unwrap();
                requested.push(Requested {
                    namespace: namespace.clone(),
                    service_account: name.clone(),
                    audiences: audiences.clone(),
                    expiration_seconds,
                    bound: spec
                        .pointer("/spec/boundObjectRef")
                        .is_some_and(|b| !b.is_null()),
                });
                requested.len()
            };
            let token = jwt(json!({
                "aud": audiences,
                "sub": format!("system:serviceaccount:{namespace}:{name}"),
                "n": n,
            }));
            let expires =
                chrono::Utc::now() + chrono::Duration::seconds(expiration_seconds.unwrap_or(3600));
            return respond(
                201,
                json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": spec["spec"],
                       "status": {"token": token,
                                  "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)}}),
            );
        }
        match self.objects.lock().unwrap().get(&path) {
            Some(object) if method == http::Method::GET => respond(200, object.clone()),
            _ => not_found(),
        }
    }
}

/// A JWT-shaped token (unsigned, as the emulator checks shape and audience only).
fn jwt(claims: Value) -> String {
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.c2ln", b64(&json!({"alg": "RS256"})), b64(&claims))
}

// ---- Stores under test ----

struct Fixture {
    api: FakeApi,
    auth: Authenticator,
    stores: Stores,
    akeyless: Client,
    _dir: tempfile::TempDir,
    own_token: PathBuf,
}

fn options(own: OwnIdentity) -> ControllerOptions {
    ControllerOptions {
        class: crate::controller::DEFAULT_CLASS.to_owned(),
        skip_unclassed: false,
        cluster_stores: true,
        namespace: None,
        default_url: Url::parse("https://api.akeyless.io").unwrap(),
        concurrency: 4,
        refresh_timeout: Duration::from_secs(10),
        store_revalidate: Duration::from_secs(300),
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
        leader: None,
        own,
    }
}

/// Stores whose controller may send its own credentials to SaaS, `GW` and `extra_allowed`.
fn fixture_with(extra_allowed: &[&str], own: impl FnOnce(PathBuf) -> OwnIdentity) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let own_token = dir.path().join("token");
    let mut allowed = vec![Url::parse(GW).unwrap()];
    allowed.extend(extra_allowed.iter().map(|u| Url::parse(u).unwrap()));
    let settings = AuthSettings {
        allowed_urls: allowed,
        node_identity: true,
        ..AuthSettings::default()
    };
    let akeyless = Client::new(ClientOptions::default(), Metrics::new());
    let auth = Authenticator::new(
        akeyless.clone(),
        AuthOptions {
            settings,
            ..AuthOptions::default()
        },
    );
    let api = FakeApi::default();
    auth.use_kube_client(api.client());
    let stores = Stores::new(
        api.client(),
        eso::Kinds::at("v1"),
        options(own(own_token.clone())),
        auth.clone(),
        akeyless.clone(),
    );
    Fixture {
        api,
        auth,
        stores,
        akeyless,
        _dir: dir,
        own_token,
    }
}

fn fixture() -> Fixture {
    fixture_with(&[], |token_file| OwnIdentity {
        token_file,
        ..OwnIdentity::default()
    })
}

fn store(kind: StoreKind, namespace: &str, name: &str, akeyless: Value) -> DynamicObject {
    let kind_name = kind.kind().as_str();
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(eso::GROUP, "v1", kind_name));
    let mut object = DynamicObject::new(name, &resource);
    if kind == StoreKind::SecretStore {
        object.metadata.namespace = Some(namespace.to_owned());
    }
    object.metadata.generation = Some(1);
    object.data = json!({"spec": {"provider": {"akeyless": akeyless}}});
    object
}

fn secret_store(akeyless: Value) -> DynamicObject {
    store(StoreKind::SecretStore, "shop", "akeyless", akeyless)
}

impl Fixture {
    async fn resolve(&self, object: &DynamicObject) -> Result<StoreAccess, StoreError> {
        let kind = if object.metadata.namespace.is_some() {
            StoreKind::SecretStore
        } else {
            StoreKind::ClusterSecretStore
        };
        self.stores.resolve(kind, object, None).await
    }

    async fn resolve_for(
        &self,
        object: &DynamicObject,
        user: &str,
    ) -> Result<StoreAccess, StoreError> {
        self.stores
            .resolve(StoreKind::ClusterSecretStore, object, Some(user))
            .await
    }

    /// The access-key store of ESO's docs, its Secret in `shop`.
    fn access_key_secret(&self, access_type: &str, param: &str) {
        self.api.secret(
            "shop",
            "akeyless-secret-creds",
            &[
                ("accessId", "p-shop"),
                ("accessType", access_type),
                ("accessTypeParam", param),
            ],
        );
    }
}

/// A ClusterSecretStore's `conditions` decide which namespaces may use it: listed, by regex,
/// or by the namespace's labels; an ExternalSecret elsewhere is refused before anything is read.
/// Conditions that cannot be read close the store rather than open it.
#[tokio::test]
async fn cluster_store_conditions_select_namespaces() {
    let f = fixture();
    f.api.secret(
        "creds",
        "akeyless-secret-creds",
        &[
            ("accessId", "p-shared"),
            ("accessType", "api_key"),
            ("accessTypeParam", "key"),
        ],
    );
    let labelled = |name: &str, labels: Value| {
        f.api.objects.lock().unwrap().insert(
            format!("/api/v1/namespaces/{name}"),
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": name, "labels": labels}}),
        );
    };
    labelled("labelled", json!({"akeyless": "enabled", "tier": "web"}));
    labelled("excluded", json!({"akeyless": "enabled", "tier": "db"}));
    labelled("plain", json!({}));
    let mut akeyless = secret_ref(GW);
    for key in ["accessID", "accessType", "accessTypeParam"] {
        akeyless["authSecretRef"]["secretRef"][key]["namespace"] = json!("creds");
    }
    let with_conditions = |conditions: Value| {
        let mut object = store(
            StoreKind::ClusterSecretStore,
            "",
            "shared",
            akeyless.clone(),
        );
        object.data["spec"]["conditions"] = conditions;
        object
    };
    let cluster = with_conditions(json!([
        {"namespaces": ["shop"]},
        {"namespaceRegexes": ["^team-"]},
        {"namespaceSelector": {
            "matchLabels": {"akeyless": "enabled"},
            "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]
        }}
    ]));
    for allowed in ["shop", "team-a", "labelled"] {
        f.resolve_for(&cluster, allowed)
            .await
            .unwrap_or_else(|e| panic!("{allowed}: {e}"));
    }
    for refused in ["dev", "my-team-a", "excluded", "plain", "absent"] {
        let (e, message) = problem(f.resolve_for(&cluster, refused).await);
        assert!(
            matches!(e, StoreError::NotAllowed { .. }),
            "{refused}: {e:?}"
        );
        assert!(message.contains("spec.conditions"), "{message}");
        assert!(message.contains(refused), "{message}");
    }
    // No conditions: every namespace.
    let open = with_conditions(Value::Null);
    f.resolve_for(&open, "dev").await.unwrap();

    // Unreadable conditions, an unknown operator: the store is invalid, for everyone.
    for (conditions, expected) in [
        (json!({"namespaces": ["shop"]}), "spec.conditions"),
        (json!([{"namespaces": "shop"}]), "spec.conditions"),
        (
            json!([{"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "in"}]}}]),
            "operator \"in\"",
        ),
    ] {
        let (e, message) = problem(f.resolve_for(&with_conditions(conditions), "shop").await);
        assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
        assert!(message.contains(expected), "{expected} in {message}");
    }
    let mut namespaced = secret_store(secret_ref(GW));
    namespaced.data["spec"]["conditions"] = json!([{"namespaces": ["shop"]}]);
    let (e, message) = problem(f.resolve(&namespaced).await);
    assert!(matches!(e, StoreError::Invalid { .. }), "{e:?}");
    assert!(message.contains("ClusterSecretStores only"), "{message}");
}

fn secret_ref(url: &str) -> Value {
    json!({
        "akeylessGWApiURL": url,
        "authSecretRef": {"secretRef": {
            "accessID": {"name": "akeyless-secret-creds", "key": "accessId"},
            "accessType": {"name": "akeyless-secret-creds", "key": "accessType"},
            "accessTypeParam": {"name": "akeyless-secret-creds", "key": "accessTypeParam"},
        }}
    })
}

fn kubernetes_auth(url: &str, extra: Value) -> Value {
    let mut auth = json!({"accessID": "p-k8s", "k8sConfName": "cluster-a"});
    if let (Some(auth), Some(extra)) = (auth.as_object_mut(), extra.as_object()) {
        auth.extend(extra.clone());
    }
    json!({"akeylessGWApiURL": url, "authSecretRef": {"kubernetesAuth": auth}})
}

fn debug(access: &StoreAccess) -> String {
    format!("{:?}", access.identity)
}

fn problem(result: Result<StoreAccess, StoreError>) -> (StoreError, String) {
    match result {
        Ok(access) => panic!("resolved: {:?}", access.identity),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

fn parse_spec(kind: StoreKind, akeyless: Value) -> Result<Option<StoreSpec>, Problems> {
    let object = store(kind, "shop", "s", akeyless);
    parse(
        kind,
        "shop",
        eso::spec(&object),
        &options(OwnIdentity::default()),
    )
}

fn problems(kind: StoreKind, akeyless: Value) -> String {
    match parse_spec(kind, akeyless) {
        Ok(spec) => panic!("parsed: {spec:?}"),
        Err(p) => p.to_string(),
    }
}

/// A self-signed CA certificate (PEM).
fn ca_pem(name: &str) -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

// ---- Parsing ----

#[test]
fn every_auth_form_and_ca_source_parses() {
    let pem = ca_pem("gw-ca");
    for bundle in [b64(&pem), b64(&b64(&pem)), pem.clone()] {
        let mut spec = secret_ref(GW);
        spec["caBundle"] = json!(bundle);
        let parsed = parse_spec(StoreKind::SecretStore, spec).unwrap().unwrap();
        assert!(matches!(parsed.ca, Some(CaSource::Bundle(_))));
    }
    let mut spec = secret_ref(GW);
    spec["caProvider"] = json!({"type": "ConfigMap", "name": "gw-ca", "key": "ca.crt"});
    let parsed = parse_spec(StoreKind::SecretStore, spec).unwrap().unwrap();
    assert!(
        matches!(&parsed.ca, Some(CaSource::Provider(s)) if s.kind == RefKind::ConfigMap && s.key == "ca.crt")
    );
    // caBundle wins over caProvider, as with ESO (whose docs show both).
    let mut spec = secret_ref(GW);
    spec["caBundle"] = json!(b64(&pem));
    spec["caProvider"] = json!({"type": "Secret", "name": "x", "key": "y"});
    let parsed = parse_spec(StoreKind::SecretStore, spec).unwrap().unwrap();
    assert!(matches!(parsed.ca, Some(CaSource::Bundle(_))));

    let mut spec = secret_ref(GW);
    spec["authSecretRef"]["serviceAccountRef"] = json!({"name": "wi"});
    let parsed = parse_spec(StoreKind::SecretStore, spec).unwrap().unwrap();
    assert!(matches!(
        &parsed.auth,
        Auth::SecretRef(s) if s.service_account.as_ref().is_some_and(|sa| sa.name == "wi" && sa.namespace.is_none())
    ));
    for (extra, expect) in [
        (json!({}), "own"),
        (json!({"secretRef": {"name": "jwt"}}), "secret"),
        (
            json!({"serviceAccountRef": {"name": "web", "audiences": ["akeyless"]}}),
            "account",
        ),
    ] {
        let parsed = parse_spec(StoreKind::SecretStore, kubernetes_auth(GW, extra))
            .unwrap()
            .unwrap();
        let Auth::Kubernetes { token, .. } = &parsed.auth else {
            panic!("{:?}", parsed.auth)
        };
        let found = match token {
            KubeToken::Own => "own",
            KubeToken::Secret(s) => {
                assert_eq!(s.key, "token", "the key defaults to token");
                "secret"
            }
            KubeToken::ServiceAccount(sa) => {
                assert_eq!(sa.audiences, ["akeyless"]);
                "account"
            }
        };
        assert_eq!(found, expect);
    }
}

#[test]
fn bad_ca_and_references_are_named_by_field() {
    let mut spec = secret_ref(GW);
    spec["caBundle"] = json!(b64("not a certificate"));
    let text = problems(StoreKind::SecretStore, spec);
    assert!(
        text.contains("spec.provider.akeyless.caBundle holds no PEM certificate"),
        "{text}"
    );
    let mut spec = secret_ref(GW);
    spec["caBundle"] = json!(b64(
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    ));
    let text = problems(StoreKind::SecretStore, spec);
    assert!(text.contains("caBundle PEM certificate 1"), "{text}");

    let mut spec = secret_ref(GW);
    spec["caProvider"] = json!({"type": "Vault", "name": "", "namespace": "other"});
    let text = problems(StoreKind::SecretStore, spec);
    for needle in [
        "caProvider.type \"Vault\" is not Secret or ConfigMap",
        "caProvider.name is missing",
        "caProvider.key is missing",
        "caProvider.namespace \"other\": a SecretStore reads",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    let mut spec = secret_ref(GW);
    spec["caProvider"] = json!({"type": "Secret", "name": "ca", "key": "ca.crt"});
    let text = problems(StoreKind::ClusterSecretStore, spec);
    assert!(
        text.contains("caProvider.namespace is missing: a ClusterSecretStore must name"),
        "{text}"
    );

    // kubernetesAuth.serviceAccountRef needs a namespace in a ClusterSecretStore; the azure
    // workload identity's falls back to the ExternalSecret's, as ESO's docs say.
    let text = problems(
        StoreKind::ClusterSecretStore,
        kubernetes_auth(GW, json!({"serviceAccountRef": {"name": "web"}})),
    );
    assert!(
        text.contains("kubernetesAuth.serviceAccountRef.namespace is missing"),
        "{text}"
    );
    let mut spec = secret_ref(GW);
    for key in ["accessID", "accessType", "accessTypeParam"] {
        spec["authSecretRef"]["secretRef"][key]["namespace"] = json!("creds");
    }
    spec["authSecretRef"]["serviceAccountRef"] = json!({"name": "wi"});
    assert!(parse_spec(StoreKind::ClusterSecretStore, spec).is_ok());
    let text = problems(
        StoreKind::SecretStore,
        kubernetes_auth(
            GW,
            json!({"serviceAccountRef": {"name": "", "namespace": "other", "audiences": [""]}}),
        ),
    );
    for needle in [
        "serviceAccountRef.name is missing",
        "serviceAccountRef.audiences: an audience is empty",
        "serviceAccountRef.namespace \"other\": a SecretStore reads ServiceAccounts of its own namespace",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
}

// ---- Resolving: secretRef ----

#[tokio::test]
async fn access_keys_resolve_and_empty_values_are_named() {
    let f = fixture();
    f.access_key_secret("api_key", "key-hunter2");
    let access = f.resolve(&secret_store(secret_ref(EVIL))).await.unwrap();
    assert_eq!(access.identity.access_id, "p-shop");
    assert!(debug(&access).contains("access key"), "{}", debug(&access));

    f.access_key_secret("access_key", "");
    let (e, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(matches!(e, StoreError::Reference { .. }), "{e:?}");
    assert!(
        text.contains("accessTypeParam must hold the access key"),
        "{text}"
    );
    f.api.secret(
        "shop",
        "akeyless-secret-creds",
        &[("accessId", " "), ("accessType", "api_key")],
    );
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(
        text.contains("Secret shop/akeyless-secret-creds key \"accessId\"")
            && text.contains("is empty"),
        "{text}"
    );
    f.access_key_secret("password", "x");
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(text.contains("\"password\" is not one of"), "{text}");
    // Keys mixed up: the access key where the type belongs is not shown.
    f.access_key_secret("AbCdEfGh1234567890+/=xyzSECRET", "x");
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(
        text.contains("the value (of 30 characters, not shown) is not one of")
            && !text.contains("SECRET"),
        "{text}"
    );
    let missing = fixture();
    let (e, text) = problem(missing.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(matches!(e, StoreError::Reference { .. }));
    assert!(
        text.contains("Secret shop/akeyless-secret-creds (named by spec.provider.akeyless.authSecretRef.secretRef.accessID) does not exist"),
        "{text}"
    );
}

// ---- The controller's own ServiceAccount token ----

#[tokio::test]
async fn the_own_token_goes_only_to_allowed_urls_and_is_read_fresh() {
    let f = fixture();
    let own = jwt(
        json!({"aud": ["https://kubernetes.default.svc"], "sub": "system:serviceaccount:akeyless:controller"}),
    );
    std::fs::write(&f.own_token, &own).unwrap();
    let object = secret_store(kubernetes_auth(GW, json!({})));
    let first = f.resolve(&object).await.unwrap();
    assert!(debug(&first).contains("(k8s)"), "{}", debug(&first));

    // Refused for a URL the store's author chose, before the file is even read.
    std::fs::remove_file(&f.own_token).unwrap();
    let (e, text) = problem(
        f.resolve(&secret_store(kubernetes_auth(EVIL, json!({}))))
            .await,
    );
    assert!(matches!(e, StoreError::Auth { .. }), "{e:?}");
    for needle in [
        "refusing to send the controller's own ServiceAccount token to https://evil.example/api/v2",
        "--allowed-gateway-url",
        "kubernetesAuth.serviceAccountRef",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(!text.contains(&own));
    // A missing file names the path and the fix.
    let (e, text) = problem(f.resolve(&object).await);
    assert!(matches!(e, StoreError::Reference { .. }));
    assert!(
        text.contains(&f.own_token.display().to_string())
            && text.contains("automountServiceAccountToken"),
        "{text}"
    );
    // A rotated token is read again: another identity.
    std::fs::write(&f.own_token, jwt(json!({"aud": ["x"], "n": 2}))).unwrap();
    let rotated = f.resolve(&object).await.unwrap();
    assert!(rotated.identity != first.identity);
    assert!(f.resolve(&object).await.unwrap().identity == rotated.identity);

    // secretRef with access type k8s: the config name from accessTypeParam, the own token.
    f.access_key_secret("k8s", "cluster-a");
    let access = f.resolve(&secret_store(secret_ref(GW))).await.unwrap();
    assert!(debug(&access).contains("(k8s)"));
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
    assert!(text.contains("refusing to send the controller's own ServiceAccount token"));
    // Kubernetes auth needs a Gateway, named by the store's field.
    let (_, text) = problem(
        f.resolve(&secret_store(secret_ref("https://api.akeyless.io")))
            .await,
    );
    assert!(
        text.contains("validated by your Akeyless Gateway")
            && text.contains("spec.provider.akeyless.akeylessGWApiURL"),
        "{text}"
    );
    f.access_key_secret("k8s", "");
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(GW))).await);
    assert!(
        text.contains("accessTypeParam must name the Kubernetes auth config"),
        "{text}"
    );
}

// ---- kubernetesAuth.serviceAccountRef ----

#[tokio::test(start_paused = true)]
async fn service_account_tokens_last_most_of_their_life_and_other_audiences_are_guarded() {
    let f = fixture();
    f.api.service_account("shop", "web", &[]);
    let object = secret_store(kubernetes_auth(
        EVIL,
        json!({"serviceAccountRef": {"name": "web"}}),
    ));
    // The Akeyless audience may go to any URL: it is good for nothing but Akeyless.
    // Concurrent resolutions share one TokenRequest.
    let (first, again) = tokio::join!(f.resolve(&object), f.resolve(&object));
    let (first, again) = (first.unwrap(), again.unwrap());
    assert!(first.identity == again.identity, "one token, one identity");
    let again = f.resolve(&object).await.unwrap();
    assert!(
        first.identity == again.identity,
        "one identity per token life"
    );
    assert_eq!(
        f.api.requested(),
        [Requested {
            namespace: "shop".into(),
            service_account: "web".into(),
            audiences: vec!["akeyless".into()],
            expiration_seconds: Some(3600),
            bound: false,
        }]
    );
    // Past 80% of its life, a new token: a new identity.
    tokio::time::advance(Duration::from_secs(2_800)).await;
    assert!(f.resolve(&object).await.unwrap().identity == first.identity);
    tokio::time::advance(Duration::from_secs(100)).await;
    assert!(f.resolve(&object).await.unwrap().identity != first.identity);
    assert_eq!(f.api.requested().len(), 2);

    // Another audience (the API server's, a cloud's) is a credential beyond Akeyless: only
    // allowed URLs, and no token is even requested for the others.
    let api_server = json!({"serviceAccountRef": {"name": "web", "audiences": ["https://kubernetes.default.svc"]}});
    let (e, text) = problem(
        f.resolve(&secret_store(kubernetes_auth(EVIL, api_server.clone())))
            .await,
    );
    assert!(matches!(e, StoreError::Auth { .. }));
    for needle in [
        "a token of ServiceAccount shop/web for audiences [\"https://kubernetes.default.svc\"]",
        "--allowed-gateway-url",
        "remove spec.provider.akeyless.authSecretRef.kubernetesAuth.serviceAccountRef.audiences",
    ] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert_eq!(f.api.requested().len(), 2);
    f.resolve(&secret_store(kubernetes_auth(GW, api_server)))
        .await
        .unwrap();
    assert_eq!(
        f.api.requested()[2].audiences,
        ["https://kubernetes.default.svc"]
    );

    // A ServiceAccount that does not exist: the store's configuration.
    let (e, text) = problem(
        f.resolve(&secret_store(kubernetes_auth(
            GW,
            json!({"serviceAccountRef": {"name": "ghost"}}),
        )))
        .await,
    );
    assert!(matches!(e, StoreError::Reference { .. }), "{e:?}");
    assert!(text.contains("HTTP 404"), "{text}");

    // A ClusterSecretStore names the namespace.
    f.api.service_account("team-a", "web", &[]);
    let cluster = store(
        StoreKind::ClusterSecretStore,
        "",
        "shared",
        kubernetes_auth(
            GW,
            json!({"serviceAccountRef": {"name": "web", "namespace": "team-a"}}),
        ),
    );
    f.resolve(&cluster).await.unwrap();
    assert_eq!(f.api.requested().last().unwrap().namespace, "team-a");

    // kubernetesAuth.secretRef: the JWT as stored.
    f.api.secret("shop", "jwt", &[("token", "eyJ.stored.sig")]);
    let access = f
        .resolve(&secret_store(kubernetes_auth(
            EVIL,
            json!({"secretRef": {"name": "jwt"}}),
        )))
        .await
        .unwrap();
    assert!(debug(&access).contains("(k8s)"));
}

// ---- azure_ad ----

#[tokio::test]
async fn azure_workload_identity_of_a_named_service_account() {
    let f = fixture_with(&["https://api.eu.akeyless.io"], |token_file| OwnIdentity {
        token_file,
        ..OwnIdentity::default()
    });
    f.access_key_secret("azure_ad", "");
    f.api.service_account(
        "shop",
        "wi",
        &[
            (
                "azure.workload.identity/client-id",
                "11111111-2222-3333-4444-555555555555",
            ),
            ("azure.workload.identity/tenant-id", "tenant-1"),
        ],
    );
    let mut spec = secret_ref("https://api.akeyless.io");
    spec["authSecretRef"]["serviceAccountRef"] = json!({"name": "wi", "audiences": ["extra"]});
    let access = f.resolve(&secret_store(spec.clone())).await.unwrap();
    assert!(
        debug(&access).contains("azure workload identity"),
        "{}",
        debug(&access)
    );
    assert_eq!(
        f.api.requested()[0].audiences,
        ["extra", "api://AzureADTokenExchange"]
    );

    // The Azure access token it turns into goes to allowed URLs only.
    let mut evil = spec.clone();
    evil["akeylessGWApiURL"] = json!(EVIL);
    let (_, text) = problem(f.resolve(&secret_store(evil)).await);
    assert!(
        text.contains("an Azure access token of ServiceAccount shop/wi's workload identity"),
        "{text}"
    );
    assert_eq!(f.api.requested().len(), 1);

    // Without annotations: accessTypeParam as the client id (as ESO); no tenant, no login.
    f.api.service_account("shop", "wi", &[]);
    let (_, text) = problem(f.resolve(&secret_store(spec.clone())).await);
    assert!(
        text.contains("ServiceAccount shop/wi has no azure.workload.identity/client-id annotation and authSecretRef.secretRef.accessTypeParam is empty"),
        "{text}"
    );
    f.access_key_secret("azure_ad", "client-2");
    let (_, text) = problem(f.resolve(&secret_store(spec)).await);
    assert!(
        text.contains("no azure.workload.identity/tenant-id annotation")
            && text.contains("--azure-tenant-id"),
        "{text}"
    );

    // A ClusterSecretStore without the ServiceAccount's namespace: each ExternalSecret's.
    f.api.secret(
        "creds",
        "akeyless-secret-creds",
        &[
            ("accessId", "p-az"),
            ("accessType", "azure_ad"),
            ("accessTypeParam", ""),
        ],
    );
    f.api.service_account(
        "team-a",
        "wi",
        &[
            ("azure.workload.identity/client-id", "c-a"),
            ("azure.workload.identity/tenant-id", "t-a"),
        ],
    );
    let mut spec = secret_ref("https://api.eu.akeyless.io");
    for key in ["accessID", "accessType", "accessTypeParam"] {
        spec["authSecretRef"]["secretRef"][key]["namespace"] = json!("creds");
    }
    spec["authSecretRef"]["serviceAccountRef"] = json!({"name": "wi"});
    let cluster = store(StoreKind::ClusterSecretStore, "", "shared", spec);
    let (e, _) = problem(f.resolve(&cluster).await);
    assert!(matches!(e, StoreError::Deferred { .. }), "{e:?}");
    assert_eq!(
        Verdict::unresolved(&e).reason,
        VALIDATION_UNKNOWN,
        "validated by each ExternalSecret instead"
    );
    f.resolve_for(&cluster, "team-a").await.unwrap();
    assert_eq!(f.api.requested().last().unwrap().namespace, "team-a");
}

#[tokio::test]
async fn own_cloud_identities_go_only_to_allowed_urls() {
    // Azure: the controller's workload identity (the webhook's environment), else IMDS.
    let f = fixture_with(&[], |token_file| OwnIdentity {
        token_file: token_file.clone(),
        azure: Some(AzureWorkload {
            token_file: token_file.with_file_name("azure"),
            client_id: "c1".into(),
            tenant_id: "t1".into(),
        }),
        aws: Some(AwsWorkload::Irsa {
            role_arn: "arn:aws:iam::1:role/controller".into(),
            token_file: token_file.with_file_name("aws"),
        }),
    });
    let dir = f.own_token.parent().unwrap().to_owned();
    std::fs::write(
        dir.join("azure"),
        jwt(json!({"aud": "api://AzureADTokenExchange"})),
    )
    .unwrap();
    std::fs::write(dir.join("aws"), jwt(json!({"aud": "sts.amazonaws.com"}))).unwrap();
    for (access_type, proof, what) in [
        (
            "azure_ad",
            "azure workload identity",
            "the controller's own Azure identity",
        ),
        ("aws_iam", "aws irsa", "the controller's own AWS identity"),
        (
            "gcp",
            "gcp node metadata identity",
            "the controller's own GCP identity (its metadata server)",
        ),
    ] {
        f.access_key_secret(access_type, "");
        let access = f.resolve(&secret_store(secret_ref(GW))).await.unwrap();
        assert!(debug(&access).contains(proof), "{}", debug(&access));
        let (e, text) = problem(f.resolve(&secret_store(secret_ref(EVIL))).await);
        assert!(matches!(e, StoreError::Auth { .. }), "{access_type}: {e:?}");
        assert!(
            text.contains(&format!("refusing to send {what} to {EVIL}")),
            "{text}"
        );
    }
    // Without workload identities: IMDS with the object id, the node's AWS credentials.
    let f = fixture();
    f.access_key_secret("azure_ad", "object-1");
    let access = f.resolve(&secret_store(secret_ref(GW))).await.unwrap();
    assert!(debug(&access).contains("azure node managed identity"));
    f.access_key_secret("aws_iam", "");
    let access = f.resolve(&secret_store(secret_ref(GW))).await.unwrap();
    assert!(debug(&access).contains("aws node credentials"));
    // EKS Pod Identity.
    let f = fixture_with(&[], |token_file| OwnIdentity {
        aws: Some(AwsWorkload::PodIdentity {
            token_file: token_file.with_file_name("eks"),
        }),
        token_file,
        azure: None,
    });
    f.access_key_secret("aws_iam", "");
    let (_, text) = problem(f.resolve(&secret_store(secret_ref(GW))).await);
    assert!(
        text.contains("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"),
        "{text}"
    );
    std::fs::write(
        f.own_token.with_file_name("eks"),
        jwt(json!({"aud": "pods.eks.amazonaws.com"})),
    )
    .unwrap();
    let access = f.resolve(&secret_store(secret_ref(GW))).await.unwrap();
    assert!(debug(&access).contains("aws eks pod identity"));
}

// ---- CA bundles and ignoreCache ----

#[tokio::test]
async fn trust_roots_and_cache_policy_are_part_of_the_identity() {
    let f = fixture();
    f.access_key_secret("api_key", "key-1");
    let (ca1, ca2) = (ca_pem("ca-1"), ca_pem("ca-2"));
    let with = |bundle: Option<&str>, ignore_cache: bool| {
        let mut spec = secret_ref(GW);
        if let Some(pem) = bundle {
            spec["caBundle"] = json!(b64(pem));
        }
        if ignore_cache {
            spec["ignoreCache"] = json!(true);
        }
        secret_store(spec)
    };
    let plain = f.resolve(&with(None, false)).await.unwrap().identity;
    let first = f.resolve(&with(Some(&ca1), false)).await.unwrap().identity;
    let second = f.resolve(&with(Some(&ca2), false)).await.unwrap().identity;
    let again = f.resolve(&with(Some(&ca1), false)).await.unwrap().identity;
    let uncached = f.resolve(&with(None, true)).await.unwrap().identity;
    assert!(plain != first && first != second && plain != second);
    assert!(first == again, "equal bundles, one identity");
    assert!(uncached != plain && uncached != first);
    assert!(format!("{first:?}").contains("roots="), "{first:?}");
    assert_eq!(
        f.stores.clients.lock().unwrap().len(),
        3,
        "one client per distinct roots and policy"
    );

    // caProvider: the roots from a ConfigMap (or a Secret) of the store's namespace.
    let mut spec = secret_ref(GW);
    spec["caProvider"] = json!({"type": "ConfigMap", "name": "gw-ca", "key": "ca.crt"});
    let (e, text) = problem(f.resolve(&secret_store(spec.clone())).await);
    assert!(matches!(e, StoreError::Reference { .. }));
    assert!(
        text.contains(
            "ConfigMap shop/gw-ca (named by spec.provider.akeyless.caProvider) does not exist"
        ),
        "{text}"
    );
    f.api.config_map("shop", "gw-ca", &[("ca.crt", &ca1)]);
    let provided = f
        .resolve(&secret_store(spec.clone()))
        .await
        .unwrap()
        .identity;
    assert!(provided == first, "the same roots from a ConfigMap");
    f.api.config_map("shop", "gw-ca", &[("ca.crt", "garbage")]);
    let (_, text) = problem(f.resolve(&secret_store(spec)).await);
    assert!(
        text.contains("ConfigMap shop/gw-ca key \"ca.crt\"")
            && text.contains("holds no PEM certificate"),
        "{text}"
    );
    let mut spec = secret_ref(GW);
    spec["caProvider"] = json!({"type": "Secret", "name": "gw-ca", "key": "ca.crt"});
    f.api.secret("shop", "gw-ca", &[("ca.crt", &ca2)]);
    assert!(f.resolve(&secret_store(spec)).await.unwrap().identity == second);
}

fn seed(emulator_items: &str) -> Seed {
    Seed::from_yaml(&format!(
        "auth_methods:
  - access_id: p-k8s
    access_type: k8s
    k8s_auth_config_name: cluster-a
    bound_audience: akeyless
    read: ['*']
  - access_id: p-shop
    access_key: key-1
    read: ['*']
items:
{emulator_items}"
    ))
    .unwrap()
}

async fn start_emulator() -> EmulatorHandle {
    emulator::start(
        ([127, 0, 0, 1], 0).into(),
        seed("  - {name: /shop/db, value: pw-1}\n"),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn one_login_per_token_life_and_reads_keep_their_store_cache_policy() {
    let emulator = start_emulator().await;
    let url = emulator.url();
    let f = fixture_with(&[], |token_file| OwnIdentity {
        token_file,
        ..OwnIdentity::default()
    });
    f.api.service_account("shop", "web", &[]);
    let object = secret_store(kubernetes_auth(
        &url,
        json!({"serviceAccountRef": {"name": "web"}}),
    ));
    // Refreshes resolve the store again and again: one TokenRequest, one login.
    for _ in 0..3 {
        let access = f.resolve(&object).await.unwrap();
        f.auth
            .token(&access.identity, Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap();
    }
    assert_eq!(f.api.requested().len(), 1);
    assert_eq!(emulator.calls("/auth"), 1);
    assert_eq!(
        emulator.stats().logins[0].subject.as_deref(),
        Some("system:serviceaccount:shop:web")
    );

    // Two stores of one credential, one with ignoreCache: their concurrent reads of one item
    // are not shared, and only its reads ask past the Gateway's cache.
    f.access_key_secret("api_key", "key-1");
    let mut uncached = secret_ref(&url);
    uncached["ignoreCache"] = json!(true);
    let plain = f.resolve(&secret_store(secret_ref(&url))).await.unwrap();
    let uncached = f.resolve(&secret_store(uncached)).await.unwrap();
    let fetcher = Fetcher::new(
        f.akeyless.clone(),
        FetchOptions {
            mount_timeout: Duration::from_secs(5),
            result_cache_ttl: Duration::ZERO,
            batch_window: None,
        },
        Metrics::new(),
    );
    emulator.reset_stats();
    let extra = [Extra {
        item: ItemRef {
            name: "/shop/db".into(),
            version: None,
        },
        kind: Some(crate::params::ItemKind::Static),
        optional: false,
    }];
    let read = |access: StoreAccess| {
        let (fetcher, auth, extra) = (fetcher.clone(), f.auth.clone(), extra.clone());
        async move {
            let deadline = Deadline::after(Duration::from_secs(5));
            let token = auth.token(&access.identity, deadline).await.unwrap();
            let want = Want {
                objects: &[],
                extra: &extra,
                scope: None,
            };
            let fetched = fetcher
                .fetch(&access.identity, &token, &want, deadline)
                .await
                .unwrap();
            let kind = crate::params::ItemKind::Static;
            matches!(
                fetched.lookup("/shop/db", None, Some(&kind)),
                Lookup::Found(_)
            )
        }
    };
    let (a, b) = tokio::join!(read(plain), read(uncached));
    assert!(a && b);
    let stats = emulator.stats();
    let mut policies: Vec<bool> = stats.reads.iter().map(|r| r.ignore_cache).collect();
    policies.sort();
    assert_eq!(policies, [false, true], "{:?}", stats.reads);
    assert_eq!(stats.calls("/auth"), 2, "one login per store client");
    emulator.shutdown().await;
}

// ---- Ready conditions ----

#[test]
fn verdicts_use_esos_reasons() {
    use crate::akeyless::ApiError;
    use crate::auth::ExchangeError;
    let (s, p) = (String::from("SecretStore shop/s"), String::from("x"));
    let cases = [
        (
            Verdict::unresolved(&StoreError::Invalid {
                store: s.clone(),
                problems: p.clone(),
            }),
            false,
            INVALID_PROVIDER_CONFIG,
            Retry::OnChange,
        ),
        (
            Verdict::unresolved(&StoreError::Reference {
                store: s.clone(),
                problem: p.clone(),
            }),
            false,
            INVALID_STORE_CONFIGURATION,
            Retry::Revalidate,
        ),
        (
            Verdict::unresolved(&StoreError::Auth {
                store: s.clone(),
                problem: p.clone(),
            }),
            false,
            INVALID_STORE_CONFIGURATION,
            Retry::Revalidate,
        ),
        (
            Verdict::unresolved(&StoreError::Unavailable {
                store: s.clone(),
                problem: p.clone(),
            }),
            false,
            VALIDATION_UNKNOWN,
            Retry::Soon,
        ),
        (
            Verdict::unresolved(&StoreError::Deferred {
                store: s.clone(),
                reason: p.clone(),
            }),
            true,
            VALIDATION_UNKNOWN,
            Retry::Revalidate,
        ),
        (
            Verdict::login_failed(
                &s,
                AuthError::Api(ApiError::Unauthorized {
                    command: "auth".into(),
                    message: "access denied".into(),
                }),
            ),
            false,
            VALIDATION_FAILED,
            Retry::Revalidate,
        ),
        (
            Verdict::login_failed(
                &s,
                AuthError::Exchange(ExchangeError {
                    service: "Entra ID token endpoint",
                    rejected: true,
                    reason: "AADSTS700016".into(),
                }),
            ),
            false,
            VALIDATION_FAILED,
            Retry::Revalidate,
        ),
        (
            Verdict::login_failed(&s, AuthError::Precondition("no gateway".into())),
            false,
            INVALID_STORE_CONFIGURATION,
            Retry::Revalidate,
        ),
        (
            Verdict::login_failed(
                &s,
                AuthError::Api(ApiError::Unavailable {
                    command: "auth".into(),
                    attempts: 3,
                    reason: "HTTP 503".into(),
                }),
            ),
            false,
            VALIDATION_UNKNOWN,
            Retry::Soon,
        ),
    ];
    for (verdict, ready, reason, retry) in cases {
        assert_eq!(
            (verdict.ready, verdict.reason, verdict.retry),
            (ready, reason, retry),
            "{}",
            verdict.message
        );
        assert!(
            verdict.message.contains("SecretStore shop/s"),
            "{}",
            verdict.message
        );
    }
}

// ---- A Gateway behind a private CA ----

#[tokio::test]
async fn a_store_trusts_its_ca_bundle_instead_of_the_system_roots() {
    let emulator = emulator::start_tls(
        ([127, 0, 0, 1], 0).into(),
        seed("  - {name: /shop/db, value: pw-1}\n"),
    )
    .await
    .unwrap();
    let url = emulator.url();
    assert!(url.starts_with("https://"));
    let ca = emulator.ca_pem().unwrap().to_owned();
    let f = fixture();
    f.access_key_secret("api_key", "key-1");
    let login = |bundle: Option<String>| {
        let mut spec = secret_ref(&url);
        if let Some(pem) = bundle {
            spec["caBundle"] = json!(b64(&pem));
        }
        let object = secret_store(spec);
        let f = &f;
        async move {
            let access = f.resolve(&object).await.unwrap();
            f.auth
                .token(&access.identity, Deadline::after(Duration::from_secs(5)))
                .await
                .map(|_| ())
                .map_err(|e| Verdict::login_failed(&access.store, e))
        }
    };
    login(Some(ca.clone())).await.unwrap();
    assert_eq!(emulator.calls("/auth"), 1);
    // The system's roots do not know the CA; nor does another CA stand in for it.
    for bundle in [None, Some(ca_pem("another"))] {
        let verdict = login(bundle).await.unwrap_err();
        assert!(
            verdict.message.contains("invalid peer certificate"),
            "{}",
            verdict.message
        );
        assert!(!verdict.ready, "{}", verdict.message);
    }
    assert_eq!(emulator.calls("/auth"), 1, "nothing reached it untrusted");
    emulator.shutdown().await;
}
