//! End to end: every access type through the real gRPC interface, against the emulator (which
//! checks each credential's format and records which credential every token came from) and
//! fake cloud endpoints; isolation between identities under concurrency; one login per
//! identity; the allow-list for the provider's and the node's own credentials.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use akeyless_csi_provider::emulator::{EmulatorHandle, Seed};
use akeyless_csi_provider::proto::v1alpha1::{MountRequest, MountResponse};
use common::cloud::{self, FakeCloud, fingerprint, pod_token};
use common::harness::{Harness, request};
use futures::StreamExt;
use tonic::Code;

const K8S_ID: &str = "p-k8s000001";
const JWT_ID: &str = "p-jwt000001";
const OIDC_ID: &str = "p-oidc00001";
const KEY_ID: &str = "p-key000001";
const PROVIDER_KEY: &str = "provider-key-5f0c9a21";
const UID_ID: &str = "p-uid000001";
const UID_TOKEN: &str = "u-e2e-uid-token-77c1";
const AZURE_ID: &str = "p-azure0001";
const AWS_ID: &str = "p-aws000001";
const GCP_ID: &str = "p-gcp000001";
const PODS: usize = 10;

fn seed(token_ttl_seconds: u64) -> Seed {
    let mut yaml = format!(
        r#"token_ttl_seconds: {token_ttl_seconds}
auth_methods:
  - access_id: {K8S_ID}
    access_type: k8s
    k8s_auth_config_name: e2e-cluster
    bound_audience: akeyless
    read: ["/team-a/*"]
  - access_id: {JWT_ID}
    access_type: jwt
    bound_audience: jwt-aud
    read: ["/team-b/*"]
  - access_id: {OIDC_ID}
    access_type: oidc
    read: ["/team-b/*"]
  - access_id: {KEY_ID}
    access_type: access_key
    access_key: "{PROVIDER_KEY}"
    read: ["/team-c/*"]
  - access_id: {UID_ID}
    access_type: universal_identity
    uid_token: "{UID_TOKEN}"
    read: ["/team-c/*"]
  - access_id: {AZURE_ID}
    access_type: azure_ad
    read: ["/cloud/*"]
  - access_id: {AWS_ID}
    access_type: aws_iam
    read: ["/cloud/*"]
  - access_id: {GCP_ID}
    access_type: gcp
    read: ["/cloud/*"]
items:
  - name: /team-c/x
    value: "team-c-value"
  - name: /cloud/x
    value: "cloud-value"
"#
    );
    for team in ["a", "b"] {
        yaml.push_str(&format!(
            "  - name: /team-{team}/common\n    value: \"{team}-common\"\n"
        ));
        for pod in 0..PODS {
            yaml.push_str(&format!(
                "  - name: /team-{team}/pod-{pod}\n    value: \"{team}-pod-{pod}\"\n"
            ));
        }
    }
    Seed::from_yaml(&yaml).expect("seed parses")
}

/// `csi.storage.k8s.io/serviceAccount.tokens` as the driver sends it.
fn tokens_json(tokens: &[(&str, &str)]) -> String {
    let map: BTreeMap<&str, serde_json::Value> = tokens
        .iter()
        .map(|(aud, token)| {
            (
                *aud,
                serde_json::json!({"token": token, "expirationTimestamp": "2099-01-01T00:00:00Z"}),
            )
        })
        .collect();
    serde_json::to_string(&map).unwrap()
}

/// A Mount of `pod` (namespace `shop`) with SPC `params`, pod tokens and Secret data.
fn mount_request(
    params: &[(&str, &str)],
    pod: &str,
    tokens: &[(&str, &str)],
    secrets: Option<&[(&str, &str)]>,
) -> MountRequest {
    let tokens = tokens_json(tokens);
    let uid = format!("00000000-0000-4000-8000-{:0>12}", fingerprint(pod));
    let mut all: Vec<(&str, &str)> = params.to_vec();
    all.extend([
        ("csi.storage.k8s.io/pod.name", pod),
        ("csi.storage.k8s.io/pod.uid", uid.as_str()),
    ]);
    if tokens != "{}" {
        all.push(("csi.storage.k8s.io/serviceAccount.tokens", tokens.as_str()));
    }
    request(&all, secrets)
}

fn objects(paths: &[&str]) -> String {
    paths
        .iter()
        .map(|p| {
            format!(
                "- secretPath: {p}\n  fileName: {}\n",
                p.trim_start_matches('/').replace('/', "-")
            )
        })
        .collect()
}

fn file(response: &MountResponse, path: &str) -> String {
    let f = response
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no file {path}"));
    String::from_utf8(f.contents.clone()).unwrap()
}

/// The credential fingerprint behind every token fingerprint the emulator issued or knows.
fn credential_of_token(akeyless: &EmulatorHandle) -> HashMap<String, String> {
    akeyless
        .stats()
        .logins
        .into_iter()
        .map(|l| (l.token_fingerprint, l.credential_fingerprint))
        .collect()
}

async fn start(cloud: Option<&FakeCloud>, args: &[&str]) -> Harness {
    start_seeded(seed(900), cloud, args).await
}

async fn start_seeded(seed: Seed, cloud: Option<&FakeCloud>, args: &[&str]) -> Harness {
    let mut all: Vec<String> = cloud.map(FakeCloud::provider_args).unwrap_or_default();
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    Harness::start_with(seed, &refs).await
}

/// The provider's log never holds a credential.
fn assert_logs_clean(h: &Harness, secrets: &[&str]) {
    let logs = h.logs();
    for secret in secrets {
        assert!(!logs.contains(secret), "a credential reached the log");
    }
}

#[tokio::test]
async fn k8s_mounts_with_the_pods_own_token_at_the_gateway() {
    let h = start(None, &[]).await;
    let token = pod_token("shop", "web", "web-1", "akeyless");
    let other_audience = pod_token("shop", "web", "web-1", "vault");
    let params = [
        ("akeylessGatewayURL", h.akeyless.url()),
        ("akeylessAccessID", K8S_ID.to_owned()),
        ("akeylessAccessType", "k8s".to_owned()),
        ("akeylessK8sAuthConfigName", "e2e-cluster".to_owned()),
        ("objects", objects(&["/team-a/common"])),
    ];
    let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let response = h
        .mount(mount_request(
            &params,
            "web-1",
            &[("vault", &other_audience), ("akeyless", &token)],
            None,
        ))
        .await
        .expect("mount");
    assert_eq!(file(&response, "team-a-common"), "a-common");

    let logins = h.akeyless.stats().logins;
    assert_eq!(logins.len(), 1);
    assert_eq!(logins[0].access_type, "k8s");
    assert_eq!(
        logins[0].credential_fingerprint,
        fingerprint(&token),
        "the pod's token for the akeyless audience, not another one"
    );
    assert_eq!(
        logins[0].subject.as_deref(),
        Some("system:serviceaccount:shop:web")
    );

    // A wrong config name is the login's fault, named as such.
    let mut wrong = params.clone();
    wrong[3].1 = "other-cluster";
    let err = h
        .mount(mount_request(
            &wrong,
            "web-1",
            &[("akeyless", &token)],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("akeylessK8sAuthConfigName"),
        "{}",
        err.message()
    );
    assert_logs_clean(&h, &[&token]);
}

#[tokio::test]
async fn jwt_and_oidc_send_the_pod_token_of_the_configured_audience() {
    let h = start(None, &[]).await;
    let jwt = pod_token("shop", "api", "api-1", "jwt-aud");
    let default_aud = pod_token("shop", "api", "api-1", "akeyless");
    let tokens = [
        ("jwt-aud", jwt.as_str()),
        ("akeyless", default_aud.as_str()),
    ];
    let objects = objects(&["/team-b/common"]);
    let jwt_params = [
        ("akeylessAccessID", JWT_ID),
        ("akeylessAccessType", "jwt"),
        ("akeylessTokenAudience", "jwt-aud"),
        ("objects", objects.as_str()),
    ];
    let response = h
        .mount(mount_request(&jwt_params, "api-1", &tokens, None))
        .await
        .expect("jwt mount");
    assert_eq!(file(&response, "team-b-common"), "b-common");

    // oidc without an audience uses the documented default, "akeyless".
    let oidc_params = [
        ("akeylessAccessID", OIDC_ID),
        ("akeylessAccessType", "oidc"),
        ("objects", objects.as_str()),
    ];
    h.mount(mount_request(&oidc_params, "api-1", &tokens, None))
        .await
        .expect("oidc mount");

    let logins = h.akeyless.stats().logins;
    let by_type: HashMap<&str, &str> = logins
        .iter()
        .map(|l| (l.access_type.as_str(), l.credential_fingerprint.as_str()))
        .collect();
    assert_eq!(by_type["jwt"], fingerprint(&jwt));
    assert_eq!(by_type["oidc"], fingerprint(&default_aud));
    assert_logs_clean(&h, &[&jwt, &default_aud]);
}

#[tokio::test]
async fn a_missing_audience_gives_the_admin_the_fix() {
    let h = start(None, &[]).await;
    let url = h.akeyless.url();
    let objects = objects(&["/team-a/common"]);
    let params = [
        ("akeylessGatewayURL", url.as_str()),
        ("akeylessAccessID", K8S_ID),
        ("akeylessAccessType", "k8s"),
        ("akeylessK8sAuthConfigName", "e2e-cluster"),
        ("objects", objects.as_str()),
    ];
    let vault = pod_token("shop", "web", "web-1", "vault");
    let err = h
        .mount(mount_request(&params, "web-1", &[("vault", &vault)], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let msg = err.message();
    for needle in [
        "SecretProviderClass shop/e2e-spc (pod shop/web-1)",
        "no service-account token of the pod for audience \"akeyless\"",
        "it sent only \"vault\"",
        "spec.tokenRequests of the CSIDriver",
        "tokenRequests[0].audience=akeyless",
        "akeylessTokenAudience",
    ] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    let err = h
        .mount(mount_request(&params, "web-1", &[], None))
        .await
        .unwrap_err();
    assert!(
        err.message().contains("the CSIDriver has no tokenRequests"),
        "{}",
        err.message()
    );
    assert_eq!(
        h.akeyless.calls("/auth"),
        0,
        "no login without the pod's token"
    );
}

#[tokio::test]
async fn universal_identity_reads_with_the_uid_token_and_never_logs_in() {
    let h = start(None, &[]).await;
    let objects = objects(&["/team-c/x"]);
    let params = [
        ("akeylessAccessID", UID_ID),
        ("akeylessAccessType", "universal_identity"),
        ("objects", objects.as_str()),
    ];
    for _ in 0..3 {
        let response = h
            .mount(mount_request(
                &params,
                "uid-1",
                &[],
                Some(&[("akeylessUIDInitToken", UID_TOKEN)]),
            ))
            .await
            .expect("mount");
        assert_eq!(file(&response, "team-c-x"), "team-c-value");
    }
    assert_eq!(h.akeyless.calls("/auth"), 0);
    let reads = h.akeyless.stats().reads;
    assert_eq!(reads.len(), 3);
    assert!(
        reads
            .iter()
            .all(|r| r.token_fingerprint == fingerprint(UID_TOKEN) && r.access_id == UID_ID)
    );

    let err = h
        .mount(mount_request(
            &params,
            "uid-1",
            &[],
            Some(&[("akeylessUIDInitToken", "t-not-a-uid-token")]),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert_logs_clean(&h, &[UID_TOKEN]);
}

/// Two SPCs (k8s and jwt, each with 10 pods of their own service-account token) mount 1,000
/// times concurrently, with every token expiring twice on the way; every read must have used a
/// token issued for exactly the mounting pod's credential.
#[tokio::test]
async fn isolation_two_identities_mounting_concurrently_never_share_a_token() {
    const MOUNTS: usize = 1_000;
    let h = start(None, &[]).await;
    let url = h.akeyless.url();
    let mut requests = Vec::new();
    // (item, credential fingerprint of the pod that mounts it)
    let mut owner: HashMap<String, String> = HashMap::new();
    for pod in 0..PODS {
        let a = pod_token(
            "team-a",
            &format!("sa-{pod}"),
            &format!("a-{pod}"),
            "akeyless",
        );
        let b = pod_token(
            "team-b",
            &format!("sa-{pod}"),
            &format!("b-{pod}"),
            "jwt-aud",
        );
        owner.insert(format!("/team-a/pod-{pod}"), fingerprint(&a));
        owner.insert(format!("/team-b/pod-{pod}"), fingerprint(&b));
        let objects_a = objects(&["/team-a/common", &format!("/team-a/pod-{pod}")]);
        let objects_b = objects(&["/team-b/common", &format!("/team-b/pod-{pod}")]);
        requests.push((
            format!("a-{pod}"),
            mount_request(
                &[
                    ("akeylessGatewayURL", &url),
                    ("akeylessAccessID", K8S_ID),
                    ("akeylessAccessType", "k8s"),
                    ("akeylessK8sAuthConfigName", "e2e-cluster"),
                    ("objects", &objects_a),
                ],
                &format!("a-{pod}"),
                &[("akeyless", &a)],
                None,
            ),
            (format!("team-a-pod-{pod}"), format!("a-pod-{pod}")),
        ));
        requests.push((
            format!("b-{pod}"),
            mount_request(
                &[
                    ("akeylessAccessID", JWT_ID),
                    ("akeylessAccessType", "jwt"),
                    ("akeylessTokenAudience", "jwt-aud"),
                    ("objects", &objects_b),
                ],
                &format!("b-{pod}"),
                &[("jwt-aud", &b)],
                None,
            ),
            (format!("team-b-pod-{pod}"), format!("b-pod-{pod}")),
        ));
    }
    let client = akeyless_csi_provider::mount_cli::connect(&h.socket)
        .await
        .expect("connect");
    let akeyless = h.akeyless.clone();
    let results: Vec<Result<(), String>> = futures::stream::iter(0..MOUNTS)
        .map(|i| {
            let (pod, request, (path, value)) = requests[i % requests.len()].clone();
            let mut client = client.clone();
            let akeyless = akeyless.clone();
            async move {
                if i == MOUNTS / 3 || i == 2 * MOUNTS / 3 {
                    akeyless.expire_tokens();
                }
                let response = akeyless_csi_provider::mount_cli::call(
                    &mut client,
                    request,
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| format!("{pod}: {e:?}"))?;
                let got = file(&response, &path);
                if got != value {
                    return Err(format!("{pod} got another pod's value"));
                }
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );

    let stats = h.akeyless.stats();
    let credential = credential_of_token(&h.akeyless);
    let mut checked = 0;
    for read in &stats.reads {
        let Some(expected) = owner.get(&read.item) else {
            continue;
        };
        let actual = credential
            .get(&read.token_fingerprint)
            .unwrap_or_else(|| panic!("{} was read with a token /auth never issued", read.item));
        assert_eq!(
            actual, expected,
            "{} was read with another pod's token",
            read.item
        );
        checked += 1;
    }
    // Identical concurrent mounts may share one read; every pod's item was read nonetheless.
    let read_items: HashSet<&str> = stats.reads.iter().map(|r| r.item.as_str()).collect();
    assert!(
        owner.keys().all(|item| read_items.contains(item.as_str())),
        "every pod's own item was read ({checked} checked reads)"
    );
    // One login per pod, plus at most one per pod after each expiry.
    let logins = stats.logins.len();
    assert!(
        (2 * PODS..=3 * 2 * PODS).contains(&logins),
        "{logins} logins for {} identities",
        2 * PODS
    );
    let distinct: HashSet<&str> = stats
        .logins
        .iter()
        .map(|l| l.credential_fingerprint.as_str())
        .collect();
    assert_eq!(
        distinct.len(),
        2 * PODS,
        "every pod logged in with its own token"
    );
}

#[tokio::test]
async fn one_login_for_100_mounts_and_the_next_only_after_expiry() {
    const TTL: u64 = 8;
    let h = start_seeded(seed(TTL), None, &[]).await;
    let token = pod_token("shop", "web", "web-1", "jwt-aud");
    let objects = objects(&["/team-b/common"]);
    let params = [
        ("akeylessAccessID", JWT_ID),
        ("akeylessAccessType", "jwt"),
        ("akeylessTokenAudience", "jwt-aud"),
        ("objects", objects.as_str()),
    ];
    let request = mount_request(&params, "web-1", &[("jwt-aud", &token)], None);
    let client = akeyless_csi_provider::mount_cli::connect(&h.socket)
        .await
        .unwrap();
    let started = Instant::now();
    let results: Vec<_> = futures::stream::iter(0..100)
        .map(|_| {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                akeyless_csi_provider::mount_cli::call(
                    &mut client,
                    request,
                    Duration::from_secs(30),
                )
                .await
            }
        })
        .buffer_unordered(25)
        .collect()
        .await;
    assert!(
        results.iter().all(Result::is_ok),
        "{:?}",
        results.iter().find(|r| r.is_err())
    );
    assert_eq!(h.akeyless.calls("/auth"), 1, "100 mounts, one login");
    // (Reads may be fewer: identical concurrent mounts of one identity are deduplicated.)

    // Well inside the lifetime (refresh happens at most a tenth before expiry): no login.
    tokio::time::sleep(Duration::from_secs(TTL / 2).saturating_sub(started.elapsed())).await;
    h.mount(request.clone()).await.expect("mount before expiry");
    assert_eq!(h.akeyless.calls("/auth"), 1, "not before it expires");

    // After the expiry: the next mount logs in again, once.
    tokio::time::sleep(Duration::from_secs(TTL + 1).saturating_sub(started.elapsed())).await;
    h.mount(request.clone()).await.expect("mount after expiry");
    h.mount(request).await.expect("and another");
    assert_eq!(h.akeyless.calls("/auth"), 2, "one new login after expiry");
    let stats = h.akeyless.stats();
    assert!(
        stats
            .logins
            .iter()
            .all(|l| l.credential_fingerprint == fingerprint(&token))
    );
}

#[tokio::test]
async fn the_providers_own_credentials_go_only_to_allowed_urls() {
    // Two more Akeyless-compatible servers: one the admin allows, one an SPC author chose.
    let allowed = akeyless_csi_provider::emulator::start(([127, 0, 0, 1], 0).into(), seed(900))
        .await
        .unwrap();
    let chosen = akeyless_csi_provider::emulator::start(([127, 0, 0, 1], 0).into(), seed(900))
        .await
        .unwrap();
    let allowed_url = allowed.url();
    let h = start(
        None,
        &[
            "--allowed-gateway-url",
            &format!("https://unused.example,{allowed_url}"),
            "--default-access-id",
            KEY_ID,
            "--default-access-key",
            PROVIDER_KEY,
        ],
    )
    .await;
    let objects = objects(&["/team-c/x"]);
    // No credentials in the SPC: the provider's identity, at --akeyless-url.
    let response = h
        .mount(mount_request(&[("objects", &objects)], "web-1", &[], None))
        .await
        .expect("default URL");
    assert_eq!(file(&response, "team-c-x"), "team-c-value");
    assert_eq!(h.akeyless.stats().logins[0].access_id, KEY_ID);
    // At an allow-listed URL.
    h.mount(mount_request(
        &[("akeylessGatewayURL", &allowed_url), ("objects", &objects)],
        "web-1",
        &[],
        None,
    ))
    .await
    .expect("allowed URL");
    assert_eq!(allowed.calls("/auth"), 1);

    // At a URL the SPC chose: refused before anything is sent.
    let err = h
        .mount(mount_request(
            &[("akeylessGatewayURL", &chosen.url()), ("objects", &objects)],
            "web-1",
            &[],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for needle in [
        "refusing to send the provider's access key (AKEYLESS_ACCESS_KEY)",
        &chosen.url(),
        "--allowed-gateway-url",
    ] {
        assert!(
            err.message().contains(needle),
            "{needle:?} missing from {}",
            err.message()
        );
    }
    assert!(!err.message().contains(PROVIDER_KEY));
    assert_eq!(
        chosen.stats().total_calls,
        0,
        "nothing reached the chosen URL"
    );

    // An SPC with its own credentials may use any URL.
    h.mount(mount_request(
        &[
            ("akeylessGatewayURL", &chosen.url()),
            ("akeylessAccessID", KEY_ID),
            ("objects", &objects),
        ],
        "web-1",
        &[],
        Some(&[("akeylessAccessKey", PROVIDER_KEY)]),
    ))
    .await
    .expect("own credentials");
    assert_logs_clean(&h, &[PROVIDER_KEY]);
}

#[tokio::test]
async fn node_identity_is_off_by_default_and_refused_outside_the_allow_list() {
    let cloud = FakeCloud::start().await;
    let chosen = akeyless_csi_provider::emulator::start(([127, 0, 0, 1], 0).into(), seed(900))
        .await
        .unwrap();
    let objects = objects(&["/cloud/x"]);
    let azure = [
        ("akeylessAccessID", AZURE_ID),
        ("akeylessAccessType", "azure_ad"),
        ("objects", objects.as_str()),
    ];

    let off = start(Some(&cloud), &[]).await;
    let err = off
        .mount(mount_request(&azure, "web-1", &[], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("--node-identity"),
        "{}",
        err.message()
    );
    assert!(
        err.message().contains("api://AzureADTokenExchange"),
        "{}",
        err.message()
    );

    let on = start(Some(&cloud), &["--node-identity"]).await;
    let response = on
        .mount(mount_request(&azure, "web-1", &[], None))
        .await
        .expect("node identity at the default URL");
    assert_eq!(file(&response, "cloud-x"), "cloud-value");
    assert_eq!(cloud.calls("azure-imds"), 1);
    assert_eq!(
        on.akeyless.stats().logins[0].subject.as_deref(),
        Some("node-managed-identity")
    );

    let mut elsewhere = azure.to_vec();
    let chosen_url = chosen.url();
    elsewhere.push(("akeylessGatewayURL", &chosen_url));
    let err = on
        .mount(mount_request(&elsewhere, "web-1", &[], None))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message()
            .contains("refusing to send the node's identity")
            && err.message().contains("--allowed-gateway-url"),
        "{}",
        err.message()
    );
    assert_eq!(
        cloud.calls("azure-imds"),
        1,
        "IMDS was not asked for that URL"
    );
    assert_eq!(chosen.stats().total_calls, 0);
}

#[tokio::test]
async fn azure_workload_identity_exchanges_the_pod_token_once_per_login() {
    let cloud = FakeCloud::start().await;
    let h = start(Some(&cloud), &[]).await;
    let objects = objects(&["/cloud/x"]);
    let params = [
        ("akeylessAccessID", AZURE_ID),
        ("akeylessAccessType", "azure_ad"),
        (
            "akeylessAzureClientID",
            "11111111-2222-3333-4444-555555555555",
        ),
        ("akeylessAzureTenantID", "tenant-1"),
        ("objects", objects.as_str()),
    ];
    let wi = pod_token("shop", "web", "web-1", "api://AzureADTokenExchange");
    let request = mount_request(
        &params,
        "web-1",
        &[("api://AzureADTokenExchange", &wi)],
        None,
    );
    for _ in 0..5 {
        let response = h.mount(request.clone()).await.expect("mount");
        assert_eq!(file(&response, "cloud-x"), "cloud-value");
    }
    assert_eq!(
        cloud.calls("entra"),
        1,
        "the exchange happens inside the one login"
    );
    assert_eq!(h.akeyless.calls("/auth"), 1);
    let subject = h.akeyless.stats().logins[0].subject.clone().unwrap();
    assert_eq!(
        subject,
        format!("wi:system:serviceaccount:shop:web:{}", fingerprint(&wi)),
        "the cloud-id is the access token Entra issued for this pod's token"
    );

    // Entra refusing the federation is a login failure that names the service.
    let mut unknown = params.to_vec();
    unknown[2].1 = "unknown-client";
    let err = h
        .mount(mount_request(
            &unknown,
            "web-1",
            &[("api://AzureADTokenExchange", &wi)],
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("Entra ID token endpoint") && err.message().contains("AADSTS70021"),
        "{}",
        err.message()
    );
    assert_logs_clean(&h, &[&wi]);
}

#[tokio::test]
async fn aws_iam_signs_get_caller_identity_with_the_pods_credentials() {
    let cloud = FakeCloud::start().await;
    let h = start(Some(&cloud), &["--node-identity"]).await;
    let objects = objects(&["/cloud/x"]);

    // EKS Pod Identity.
    let pod_identity = pod_token("shop", "web", "web-1", "pods.eks.amazonaws.com");
    let params = [
        ("akeylessAccessID", AWS_ID),
        ("akeylessAccessType", "aws_iam"),
        ("objects", objects.as_str()),
    ];
    for _ in 0..3 {
        h.mount(mount_request(
            &params,
            "web-1",
            &[("pods.eks.amazonaws.com", &pod_identity)],
            None,
        ))
        .await
        .expect("pod identity mount");
    }
    assert_eq!(cloud.calls("eks-pod-identity"), 1);

    // IRSA.
    let irsa = pod_token("shop", "api", "api-1", "sts.amazonaws.com");
    let irsa_params = [
        ("akeylessAccessID", AWS_ID),
        ("akeylessAccessType", "aws_iam"),
        ("akeylessAWSRoleARN", "arn:aws:iam::123456789012:role/api"),
        ("objects", objects.as_str()),
    ];
    h.mount(mount_request(
        &irsa_params,
        "api-1",
        &[("sts.amazonaws.com", &irsa)],
        None,
    ))
    .await
    .expect("irsa mount");
    assert_eq!(cloud.calls("aws-sts"), 1);

    // The node's credentials (IMDSv2), enabled by flag, for a pod without either token.
    h.mount(mount_request(&params, "legacy-1", &[], None))
        .await
        .expect("node mount");
    assert_eq!(cloud.calls("aws-imds"), 3, "session, role, credentials");

    // The emulator checked each cloud-id's format and names the signing key.
    let subjects: Vec<String> = h
        .akeyless
        .stats()
        .logins
        .iter()
        .map(|l| l.subject.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        subjects,
        [
            cloud::aws_key_id(&pod_identity),
            cloud::aws_key_id(&irsa),
            "ASIANODE".to_owned()
        ]
    );
    assert_logs_clean(
        &h,
        &[&pod_identity, &irsa, "fake-secret-key", "irsa-secret"],
    );
}

#[tokio::test]
async fn gcp_workload_identity_and_node_metadata() {
    let cloud = FakeCloud::start().await;
    let h = start(Some(&cloud), &["--node-identity"]).await;
    let objects = objects(&["/cloud/x"]);
    let wi = pod_token("shop", "web", "web-1", "proj.svc.id.goog");
    let params = [
        ("akeylessAccessID", GCP_ID),
        ("akeylessAccessType", "gcp"),
        (
            "akeylessGCPWorkloadIdentityAudience",
            "identitynamespace:proj.svc.id.goog:https://container.googleapis.com/v1/projects/proj/locations/eu/clusters/c1",
        ),
        (
            "akeylessGCPServiceAccount",
            "app@proj.iam.gserviceaccount.com",
        ),
        ("objects", objects.as_str()),
    ];
    for _ in 0..3 {
        h.mount(mount_request(
            &params,
            "web-1",
            &[("proj.svc.id.goog", &wi)],
            None,
        ))
        .await
        .expect("workload identity mount");
    }
    assert_eq!((cloud.calls("gcp-sts"), cloud.calls("gcp-iam")), (1, 1));

    let node = [
        ("akeylessAccessID", GCP_ID),
        ("akeylessAccessType", "gcp"),
        ("objects", objects.as_str()),
    ];
    h.mount(mount_request(&node, "legacy-1", &[], None))
        .await
        .expect("node metadata mount");
    assert_eq!(cloud.calls("gcp-metadata"), 1);

    let subjects: Vec<String> = h
        .akeyless
        .stats()
        .logins
        .iter()
        .map(|l| l.subject.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        subjects,
        [
            "app@proj.iam.gserviceaccount.com",
            "node@project.iam.gserviceaccount.com"
        ]
    );
    assert_logs_clean(&h, &[&wi]);
}

#[tokio::test]
async fn token_request_fallback_requests_a_pod_bound_token_and_reads_annotations() {
    let cloud = FakeCloud::start().await;
    let kube = common::fake_k8s::FakeK8s::start().await;
    let kube_url = kube.url();
    let h = start(
        Some(&cloud),
        &["--token-request", "--kube-api-url", &kube_url],
    )
    .await;
    let url = h.akeyless.url();
    let objects_a = objects(&["/team-a/common"]);
    let k8s = [
        ("akeylessGatewayURL", url.as_str()),
        ("akeylessAccessID", K8S_ID),
        ("akeylessAccessType", "k8s"),
        ("akeylessK8sAuthConfigName", "e2e-cluster"),
        ("objects", objects_a.as_str()),
    ];
    // The driver sent a token for another audience only.
    let vault = pod_token("shop", "web", "web-1", "vault");
    for _ in 0..3 {
        let response = h
            .mount(mount_request(&k8s, "web-1", &[("vault", &vault)], None))
            .await
            .expect("mount with a requested token");
        assert_eq!(file(&response, "team-a-common"), "a-common");
    }
    let issued = kube.issued();
    assert_eq!(issued.len(), 1, "one TokenRequest per login, not per mount");
    let expected_uid = format!("00000000-0000-4000-8000-{:0>12}", fingerprint("web-1"));
    assert_eq!(
        (
            issued[0].namespace.as_str(),
            issued[0].service_account.as_str(),
            issued[0].pod.as_str(),
            issued[0].pod_uid.as_str(),
            issued[0].audience.as_str()
        ),
        ("shop", "web", "web-1", expected_uid.as_str(), "akeyless"),
        "bound to the mounting pod, for the SPC's audience"
    );
    let login = &h.akeyless.stats().logins[0];
    assert_eq!(login.credential_fingerprint, fingerprint(&issued[0].token));
    assert_eq!(
        login.subject.as_deref(),
        Some("system:serviceaccount:shop:web")
    );

    // azure_ad with neither the client id in the SPC nor a token from the driver: the
    // TokenRequest and the ServiceAccount's workload-identity annotation supply both.
    kube.annotate(
        "shop",
        "web",
        "azure.workload.identity/client-id",
        "99999999-8888-7777-6666-555555555555",
    );
    let objects_cloud = objects(&["/cloud/x"]);
    let azure = [
        ("akeylessAccessID", AZURE_ID),
        ("akeylessAccessType", "azure_ad"),
        ("akeylessAzureTenantID", "tenant-1"),
        ("objects", objects_cloud.as_str()),
    ];
    h.mount(mount_request(&azure, "web-1", &[], None))
        .await
        .expect("azure workload identity via TokenRequest and annotation");
    assert_eq!(kube.issued()[1].audience, "api://AzureADTokenExchange");
    assert_eq!(kube.service_account_gets(), 1);
    assert_eq!(cloud.calls("entra"), 1);

    // The API server refusing the provider is named, with the API server's reason.
    let mut forbidden = mount_request(&k8s, "web-2", &[], None);
    forbidden.attributes = forbidden.attributes.replace(
        "\"csi.storage.k8s.io/serviceAccount.name\":\"web\"",
        "\"csi.storage.k8s.io/serviceAccount.name\":\"forbidden\"",
    );
    let err = h.mount(forbidden).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("Kubernetes TokenRequest")
            && err.message().contains("cannot create resource"),
        "{}",
        err.message()
    );
    assert_logs_clean(&h, &[&issued[0].token]);
}
