//! End-to-end tests of the emulator over real HTTP (reqwest against 127.0.0.1:0).

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::*;

const DEMO_ID: &str = "p-demo0000000001";
const DEMO_KEY: &str = "demo-access-key-not-secret";
const NARROW_ID: &str = "p-narrow00000001";
const NARROW_KEY: &str = "narrow-key";

const SEED: &str = r#"
token_ttl_seconds: 900
list_page_size: 2
auth_methods:
  - access_id: p-demo0000000001
    access_key: "demo-access-key-not-secret"
    read: ["/demo/*"]
  - access_id: p-narrow00000001
    access_type: access_key
    access_key: narrow-key
    read: [/demo/db/password, "/demo/app/*"]
  - access_id: p-k8s000000001
    access_type: k8s
items:
  - name: /demo/db/password
    format: password
    value: "pw-1"
    tags: [team-a]
  - name: /demo/db/config
    format: json
    value: '{"host":"db.internal","port":5432}'
    tags: [team-a, json]
  - name: demo/api/token
    versions: ["v1", "v2", "v3"]
    tags: [team-b]
  - name: /demo/top
    value: top-level
  - name: /demo/dyn/db
    type: dynamic-secret
  - name: /other/secret
    value: "elsewhere"
"#;

async fn emulator() -> EmulatorHandle {
    start(
        "127.0.0.1:0".parse().unwrap(),
        Seed::from_yaml(SEED).unwrap(),
    )
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(emulator: &EmulatorHandle, command: &str, body: Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}/{command}", emulator.url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
    (status, body)
}

async fn login(emulator: &EmulatorHandle, access_id: &str, access_key: &str) -> String {
    let (status, body) = post(
        emulator,
        "auth",
        json!({"access-type": "access_key", "access-id": access_id, "access-key": access_key}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {body}"))
}

#[tokio::test]
async fn auth_issues_tokens() {
    let emulator = emulator().await;
    let (status, body) = post(
        &emulator,
        "auth",
        json!({"access-id": DEMO_ID, "access-key": DEMO_KEY, "json": true, "debug": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("t-") && token.len() == 34, "{token}");
    assert!(token[2..].chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(body["creds"]["token"], token);
    let expiration = body["expiration"].as_str().unwrap();
    assert!(
        expiration.ends_with(" +0000 UTC") && expiration.len() == 29,
        "{expiration}"
    );
    let expiry = body["creds"]["expiry"].as_u64().unwrap();
    let now = state::now_ms() / 1000;
    assert!(
        (now + 890..=now + 910).contains(&expiry),
        "{expiry} vs {now}"
    );
    assert_eq!(go_time_secs(expiry), expiration);
    let other = login(&emulator, DEMO_ID, DEMO_KEY).await;
    assert_ne!(other, token);
    assert_eq!(emulator.calls("/auth"), 2);
    assert_eq!(emulator.stats().tokens_issued, 2);
}

fn go_time_secs(secs: u64) -> String {
    api::go_time(secs * 1000)
}

#[tokio::test]
async fn auth_rejects_bad_credentials() {
    let emulator = emulator().await;
    for body in [
        json!({"access-id": DEMO_ID, "access-key": "wrong"}),
        json!({"access-id": DEMO_ID}),
        json!({"access-id": "p-unknown0000001", "access-key": DEMO_KEY}),
        json!({"access-id": DEMO_ID, "access-key": DEMO_KEY, "access-type": "jwt"}),
    ] {
        let (status, reply) = post(&emulator, "auth", body.clone()).await;
        assert_eq!(status, 401, "{body} -> {reply}");
        let text = error_text(&reply);
        assert!(
            text.contains("Status 401 Unauthorized, Error: UnauthorizedAccess"),
            "{text}"
        );
        assert!(!text.contains(DEMO_KEY));
    }
    let (status, reply) = post(&emulator, "auth", json!({"access-key": DEMO_KEY})).await;
    assert_eq!(status, 400);
    assert_eq!(
        error_text(&reply),
        "invalid request body: Missing required parameter - access-id"
    );
    let (status, reply) = post(
        &emulator,
        "auth",
        json!({"access-id": DEMO_ID, "access-key": DEMO_KEY, "access-type": "api_key"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_text(&reply).contains("invalid access-type \"api_key\""),
        "{reply}"
    );
    let (status, reply) = post(
        &emulator,
        "auth",
        json!({"access-id": "p-k8s000000001", "access-type": "k8s"}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error_text(&reply).contains("Missing required parameter - k8s-auth-config-name"),
        "{reply}"
    );
    let (status, _) = post(&emulator, "auth", json!({"access-id": 5})).await;
    assert_eq!(status, 400);
    assert_eq!(emulator.calls("auth"), 8);
    assert_eq!(emulator.stats().tokens_issued, 0);
}

#[tokio::test]
async fn get_secret_value_batches_and_records_reads() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/db/password", "/demo/db/config", "demo/api/token"], "token": token, "ignore-cache": "false"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({
            "/demo/db/password": "pw-1",
            "/demo/db/config": "{\"host\":\"db.internal\",\"port\":5432}",
            "demo/api/token": "v3",
        })
    );
    assert_eq!(emulator.calls("/get-secret-value"), 1);
    let stats = emulator.stats();
    let fingerprint = hex::encode(&Sha256::digest(token.as_bytes())[..4]);
    assert_eq!(stats.reads.len(), 3);
    assert_eq!(
        stats.reads[2],
        ReadRecord {
            access_id: DEMO_ID.into(),
            token_fingerprint: fingerprint,
            item: "/demo/api/token".into(),
            version: 3,
            ignore_cache: false,
        }
    );
    assert!(!serde_json::to_string(&stats).unwrap().contains(&token));
}

#[tokio::test]
async fn get_secret_value_versions() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    for (version, expected) in [
        (json!(1), "v1"),
        (json!(2), "v2"),
        (json!(0), "v3"),
        (Value::Null, "v3"),
    ] {
        let (status, body) = post(
            &emulator,
            "get-secret-value",
            json!({"names": ["/demo/api/token"], "version": version, "token": token}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["/demo/api/token"], expected);
    }
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/api/token"], "version": 4, "token": token}),
    )
    .await;
    assert_eq!(status, 404);
    assert!(
        error_text(&body).contains("failed to obtain item /demo/api/token version 4"),
        "{body}"
    );
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/api/token"], "version": "1", "token": token}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn get_secret_value_errors() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let narrow = login(&emulator, NARROW_ID, NARROW_KEY).await;

    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/db/password", "/demo/missing/one", "/demo/missing/two"], "token": token}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_text(&body),
        "failed to get secret value: Status 404 Not Found, Error: NotFound. Message: account id: acc-emulator0001, \
         access id: p-demo0000000001. failed to obtain item /demo/missing/one"
    );
    // Forbidden answers 401 whether or not the item exists.
    for name in ["/other/secret", "/other/missing", "/demo/db/config"] {
        let (status, body) = post(
            &emulator,
            "get-secret-value",
            json!({"names": [name], "token": narrow}),
        )
        .await;
        assert_eq!(status, 401, "{name}: {body}");
        assert!(
            error_text(&body).contains("Error: UnauthorizedAccess"),
            "{body}"
        );
        assert!(
            error_text(&body).contains("unauthorized access for access id p-narrow00000001"),
            "{body}"
        );
    }
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/db/password"], "token": narrow}),
    )
    .await;
    assert_eq!((status, &body["/demo/db/password"]), (200, &json!("pw-1")));

    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": [], "token": token}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        error_text(&body),
        "invalid request body: Missing required parameter - names"
    );
    let (status, _) = post(&emulator, "get-secret-value", json!({"token": token})).await;
    assert_eq!(status, 400);
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/dyn/db"], "token": token}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_text(&body).contains("DYNAMIC_SECRET"), "{body}");

    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"]}),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": "t-00000000000000000000000000000000"}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(error_text(&body).contains("invalid authentication token"));
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "uid-token": "u-nope"}),
    )
    .await;
    assert_eq!(status, 401);

    emulator.expire_tokens();
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(
        error_text(&body),
        "failed to get secret value: Status 401 Unauthorized, Error: UnauthorizedAccess. Message: authentication token is expired"
    );
    let fresh = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": fresh}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(emulator.stats().reads.len(), 2);
}

#[tokio::test]
async fn tokens_expire_by_ttl() {
    let seed =
        Seed::from_yaml(&SEED.replace("token_ttl_seconds: 900", "token_ttl_seconds: 1")).unwrap();
    let emulator = start("127.0.0.1:0".parse().unwrap(), seed).await.unwrap();
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(error_text(&body).contains("expired"));
}

#[tokio::test]
async fn validate_token() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, body) = post(&emulator, "validate-token", json!({"token": token})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["is_valid"], true);
    assert_eq!(body["reason"], "");
    assert!(
        (890..=900).contains(&body["ttl"].as_u64().unwrap()),
        "{body}"
    );
    assert!(body["expiration"].as_str().unwrap().ends_with("+0000 UTC"));
    assert!(body["last_rotate"].is_string());
    emulator.expire_tokens();
    let (status, body) = post(&emulator, "validate-token", json!({"token": token})).await;
    assert_eq!(
        (status, &body["is_valid"], &body["ttl"]),
        (200, &json!(false), &json!(0))
    );
    let (status, _) = post(&emulator, "validate-token", json!({"token": "t-unknown"})).await;
    assert_eq!(status, 401);
    let (status, _) = post(&emulator, "validate-token", json!({})).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn describe_item() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/api/token", "token": token}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["item_name"], "/demo/api/token");
    assert_eq!(body["item_type"], "STATIC_SECRET");
    assert_eq!(body["item_sub_type"], "generic");
    assert_eq!(body["last_version"], 3);
    assert_eq!(body["is_enabled"], true);
    assert_eq!(body["item_state"], "Enabled");
    assert_eq!(body["item_tags"], json!(["team-b"]));
    assert_eq!(
        body["item_general_info"]["static_secret_info"]["format"],
        "text"
    );
    assert!(body["item_id"].as_u64().unwrap() > 0);
    let display_id = body["display_id"].as_str().unwrap();
    assert_eq!(display_id.len(), 17, "{display_id}");
    let created = body["creation_date"].as_str().unwrap();
    assert!(created.ends_with('Z') && created.len() == 20, "{created}");
    assert!(body["modification_date"].is_string());
    assert!(body.get("item_versions").is_none());

    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/api/token", "show-versions": true, "token": token}),
    )
    .await;
    let versions = body["item_versions"].as_array().unwrap();
    assert_eq!(
        versions
            .iter()
            .map(|v| v["version"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [3, 2, 1]
    );
    assert_eq!(versions[0]["item_version_state"], "Enabled");

    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "demo/db/password", "token": token}),
    )
    .await;
    assert_eq!(body["item_sub_type"], "password");
    assert_eq!(
        body["item_general_info"]["static_secret_info"]["format"],
        "password"
    );
    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/dyn/db", "token": token}),
    )
    .await;
    assert_eq!(body["item_type"], "DYNAMIC_SECRET");

    let (status, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/nope", "token": token}),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        error_text(&body),
        "failed to obtain item description: Desc: Failed to get item. Status 404 Not Found, Error: NotFound. \
         Message: account id: acc-emulator0001, access id: p-demo0000000001. failed to obtain item /demo/nope"
    );
    let (status, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/other/secret", "token": token}),
    )
    .await;
    assert_eq!(status, 401);
    assert!(error_text(&body).starts_with(
        "failed to obtain item description: Desc: Failed to get item. Status 401 Unauthorized, Error: UnauthorizedAccess."
    ));
    let (status, _) = post(&emulator, "describe-item", json!({"token": token})).await;
    assert_eq!(status, 400);
    let (status, _) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/top", "show-versions": "yes", "token": token}),
    )
    .await;
    assert_eq!(status, 400);
}

fn names(body: &Value) -> Vec<&str> {
    body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["item_name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn list_items() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let list = |body: Value| {
        let emulator = emulator.clone();
        let token = token.clone();
        async move {
            let mut body = body;
            body["token"] = json!(token);
            let (status, reply) = post(&emulator, "list-items", body).await;
            assert_eq!(status, 200, "{reply}");
            reply
        }
    };
    let all = list(json!({})).await;
    assert_eq!(
        names(&all),
        [
            "/demo/api/token",
            "/demo/db/config",
            "/demo/db/password",
            "/demo/dyn/db",
            "/demo/top"
        ]
    );
    assert_eq!(all["folders"], json!(["/demo"]));
    assert_eq!(all["next_page"], "");
    assert!(all["items"][0]["item_general_info"].is_object());

    let demo = list(json!({"path": "/demo"})).await;
    assert_eq!(names(&demo).len(), 5);
    assert_eq!(
        demo["folders"],
        json!(["/demo/api", "/demo/db", "/demo/dyn"])
    );
    let current = list(json!({"path": "/demo/", "current-folder": true})).await;
    assert_eq!(names(&current), ["/demo/top"]);
    assert_eq!(
        names(&list(json!({"path": "demo/db"})).await),
        ["/demo/db/config", "/demo/db/password"]
    );
    assert_eq!(
        names(&list(json!({"filter": "pass"})).await),
        ["/demo/db/password"]
    );
    assert_eq!(
        names(&list(json!({"type": ["dynamic-secret"]})).await),
        ["/demo/dyn/db"]
    );
    assert_eq!(
        names(&list(json!({"tag": "team-a"})).await),
        ["/demo/db/config", "/demo/db/password"]
    );
    let minimal = list(json!({"path": "/demo/top", "minimal-view": true})).await;
    assert_eq!(names(&minimal), Vec::<&str>::new());
    let minimal = list(json!({"filter": "/demo/top", "minimal-view": true})).await;
    assert!(minimal["items"][0].get("item_general_info").is_none());
    assert_eq!(minimal["items"][0]["item_type"], "STATIC_SECRET");

    // Pages of `list_page_size` (2) when auto-pagination is disabled.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    for _ in 0..10 {
        let page =
            list(json!({"auto-pagination": "disabled", "pagination-token": page_token})).await;
        seen.extend(names(&page).into_iter().map(str::to_owned));
        page_token = page["next_page"].as_str().unwrap().to_owned();
        if page_token.is_empty() {
            break;
        }
    }
    assert_eq!(seen.len(), 5);

    let narrow = login(&emulator, NARROW_ID, NARROW_KEY).await;
    let (_, body) = post(&emulator, "list-items", json!({"token": narrow})).await;
    assert_eq!(names(&body), ["/demo/db/password"]);
    let (status, _) = post(
        &emulator,
        "list-items",
        json!({"pagination-token": "bogus", "token": token}),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = post(&emulator, "list-items", json!({})).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn transport_conventions() {
    let emulator = emulator().await;
    let http = client();
    // ESO's probe: an empty POST to the base URL must mention "unknown command".
    let response = http.post(emulator.url()).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(error_text(&body).starts_with("unknown command"), "{body}");
    let (status, body) = post(&emulator, "get-rotated-nonsense", json!({})).await;
    assert_eq!(status, 404);
    assert!(
        error_text(&body).contains("unknown command \"get-rotated-nonsense\""),
        "{body}"
    );

    let response = http
        .post(format!("{}/auth", emulator.url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        error_text(&body).starts_with("invalid request body: "),
        "{body}"
    );
    let response = http
        .post(format!("{}/auth", emulator.url()))
        .body("[1,2]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .get(format!("{}/auth", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let response = http
        .post(format!("{}/auth", emulator.url()))
        .body(vec![0xff, 0xfe, 0x00])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = http
        .post(format!("{}/auth", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        400,
        "empty body is an empty object: missing access-id"
    );
    assert_eq!(emulator.calls("/auth"), 5);
    assert_eq!(emulator.stats().total_calls, 7);
}

#[tokio::test]
async fn status_fault_with_retry_after_and_times() {
    let emulator = emulator().await;
    emulator.add_fault(
        Fault::new(FaultKind::Status {
            status: 503,
            retry_after_secs: Some(7),
        })
        .on("/auth")
        .times(2),
    );
    let http = client();
    for _ in 0..2 {
        let response = http
            .post(format!("{}/auth", emulator.url()))
            .json(&json!({"access-id": DEMO_ID, "access-key": DEMO_KEY}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "7");
        let body: Value = response.json().await.unwrap();
        assert!(
            error_text(&body).contains("Status 503 Service Unavailable"),
            "{body}"
        );
    }
    login(&emulator, DEMO_ID, DEMO_KEY).await;
    assert_eq!(emulator.calls("/auth"), 3);
    assert!(emulator.shared.faults().is_empty());
}

#[tokio::test]
async fn fault_only_hits_its_endpoint() {
    let emulator = emulator().await;
    emulator.add_fault(
        Fault::new(FaultKind::Status {
            status: 429,
            retry_after_secs: None,
        })
        .on("get-secret-value"),
    );
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    for _ in 0..3 {
        let (status, _) = post(
            &emulator,
            "get-secret-value",
            json!({"names": ["/demo/top"], "token": token}),
        )
        .await;
        assert_eq!(status, 429);
    }
    assert_eq!(emulator.calls("/get-secret-value"), 3);
    assert!(emulator.stats().reads.is_empty());
    emulator.clear_faults();
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn delay_fault_and_latency() {
    let emulator = emulator().await;
    emulator.add_fault(Fault::new(FaultKind::Delay { ms: 300 }).times(1));
    let started = Instant::now();
    login(&emulator, DEMO_ID, DEMO_KEY).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        emulator.shared.faults().is_empty(),
        "a times(1) fault is used up"
    );

    emulator.set_latency(Duration::from_millis(200));
    let started = Instant::now();
    login(&emulator, DEMO_ID, DEMO_KEY).await;
    assert!(started.elapsed() >= Duration::from_millis(200));
    emulator.set_latency(Duration::from_secs(3));
    // The control API is not delayed.
    let started = Instant::now();
    let response = client()
        .get(format!("{}/__emulator/stats", emulator.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    emulator.set_latency(Duration::ZERO);
}

#[tokio::test]
async fn reset_fault_closes_the_connection() {
    let emulator = emulator().await;
    emulator.add_fault(Fault::new(FaultKind::Reset).on("/auth").times(1));
    let error = client()
        .post(format!("{}/auth", emulator.url()))
        .json(&json!({"access-id": DEMO_ID, "access-key": DEMO_KEY}))
        .send()
        .await
        .unwrap_err();
    assert!(!error.is_timeout(), "{error:?}");
    login(&emulator, DEMO_ID, DEMO_KEY).await;
    assert_eq!(emulator.calls("/auth"), 2);
    assert_eq!(emulator.stats().tokens_issued, 1);
}

#[tokio::test]
async fn truncated_and_malformed_faults() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    emulator.add_fault(Fault::new(FaultKind::Truncated).times(1));
    emulator.add_fault(Fault::new(FaultKind::Malformed).times(1));
    let http = client();
    let request = json!({"names": ["/demo/db/config"], "token": token});
    let url = format!("{}/get-secret-value", emulator.url());

    let response = http.post(&url).json(&request).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("{\"/demo/db/config\""), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let response = http.post(&url).json(&request).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let text = response.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");

    let response = http.post(&url).json(&request).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["/demo/db/config"],
        "{\"host\":\"db.internal\",\"port\":5432}"
    );
    assert_eq!(emulator.calls("/get-secret-value"), 3);
}

#[tokio::test]
async fn slow_body_fault_dribbles_the_real_body() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    emulator.add_fault(
        Fault::new(FaultKind::SlowBody { ms_per_chunk: 40 })
            .on("/get-secret-value")
            .times(1),
    );
    let started = Instant::now();
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/db/config"], "token": token}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["/demo/db/config"],
        "{\"host\":\"db.internal\",\"port\":5432}"
    );
    // The body is ~60 bytes: at least 4 chunks of 16 bytes.
    assert!(
        started.elapsed() >= Duration::from_millis(160),
        "{:?}",
        started.elapsed()
    );
    // A client deadline shorter than the dribble fails mid-body.
    emulator.add_fault(Fault::new(FaultKind::SlowBody { ms_per_chunk: 300 }).times(1));
    let response = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap()
        .post(format!("{}/get-secret-value", emulator.url()))
        .json(&json!({"names": ["/demo/db/config"], "token": token}))
        .send()
        .await;
    let failed = match response {
        Err(_) => true,
        Ok(response) => response.bytes().await.is_err(),
    };
    assert!(failed);
}

#[tokio::test]
async fn control_api() {
    let emulator = emulator().await;
    let http = client();
    let control = |path: &str| format!("{}/__emulator/{path}", emulator.url());
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;

    let stats: Stats = http
        .get(control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats.calls("/auth"), 1);
    assert_eq!(stats, emulator.stats());
    let response = http.post(control("reset")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(emulator.stats(), Stats::default());

    let response = http
        .post(control("faults"))
        .json(&json!({"endpoint": "/describe-item", "kind": {"type": "status", "status": 500}, "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let faults: Vec<Fault> = http
        .get(control("faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults.len(), 1);
    let (status, _) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/top", "token": token}),
    )
    .await;
    assert_eq!(status, 500);
    http.post(control("faults"))
        .json(&json!({"kind": {"type": "malformed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        http.delete(control("faults"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(emulator.shared.faults().is_empty());
    let response = http
        .post(control("faults"))
        .json(&json!({"kind": {"type": "explode"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    let response = http
        .post(control("secrets"))
        .json(&json!({"name": "/demo/top", "value": "rotated"}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["version"], 2);
    let (_, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(body["/demo/top"], "rotated");
    let response = http
        .delete(control("secrets"))
        .json(&json!({"name": "/demo/top"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/top"], "token": token}),
    )
    .await;
    assert_eq!(status, 404);

    let response = http
        .post(control("latency"))
        .json(&json!({"ms": 150}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    post(&emulator, "validate-token", json!({"token": token})).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    http.post(control("latency"))
        .json(&json!({"ms": 0}))
        .send()
        .await
        .unwrap();
    let response = http
        .post(control("latency"))
        .json(&json!({"ms": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);

    assert_eq!(
        http.post(control("expire-tokens"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, _) = post(&emulator, "validate-token", json!({"token": token})).await;
    assert_eq!(status, 200);
    let (status, _) = post(&emulator, "list-items", json!({"token": token})).await;
    assert_eq!(status, 401);

    assert_eq!(
        http.get(control("nothing")).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        http.get(control("reset")).send().await.unwrap().status(),
        405
    );
    // Control requests are not API calls.
    let stats = emulator.stats();
    assert_eq!(
        stats.calls.keys().collect::<Vec<_>>(),
        [
            "/describe-item",
            "/get-secret-value",
            "/list-items",
            "/validate-token"
        ]
    );
}

#[tokio::test]
async fn rotation_and_deletion_through_the_handle() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    emulator.put_secret("/demo/api/token", "v4");
    emulator.put_secret("demo/new/secret", "fresh");
    emulator.put_secret("", "ignored");
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/api/token", "/demo/new/secret"], "token": token}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"/demo/api/token": "v4", "/demo/new/secret": "fresh"})
    );
    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/api/token", "token": token}),
    )
    .await;
    assert_eq!(body["last_version"], 4);
    emulator.delete_item("/demo/api/token");
    let (status, _) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/api/token", "token": token}),
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn many_concurrent_requests() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let http = client();
    let url = format!("{}/get-secret-value", emulator.url());
    let requests = (0..300).map(|_| {
        let http = http.clone();
        let url = url.clone();
        let body = json!({"names": ["/demo/db/password", "/demo/api/token"], "token": token});
        tokio::spawn(async move {
            http.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        })
    });
    for request in futures::future::join_all(requests).await {
        assert_eq!(request.unwrap(), 200);
    }
    assert_eq!(emulator.calls("/get-secret-value"), 300);
    assert_eq!(emulator.stats().reads.len(), 600);
}

#[tokio::test]
async fn shutdown_stops_the_listener() {
    let emulator = emulator().await;
    let addr = emulator.addr();
    let other = emulator.clone();
    login(&emulator, DEMO_ID, DEMO_KEY).await;
    emulator.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    drop(other);

    // Dropping every handle stops it too.
    let emulator = start("127.0.0.1:0".parse().unwrap(), Seed::demo())
        .await
        .unwrap();
    let addr = emulator.addr();
    drop(emulator);
    let deadline = Instant::now() + Duration::from_secs(2);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "still listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn run_serves_until_shutdown() {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let server = tokio::spawn(run(addr, Seed::demo(), async move {
        let _ = stopped.await;
    }));
    let http = client();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http
            .get(format!("http://{addr}/__emulator/stats"))
            .send()
            .await
        {
            Ok(response) if response.status() == 200 => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("emulator did not come up: {other:?}"),
        }
    }
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn demo_seed_serves_its_items() {
    let emulator = start("127.0.0.1:0".parse().unwrap(), Seed::demo())
        .await
        .unwrap();
    assert!(emulator.url().starts_with("http://127.0.0.1:"));
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let (status, body) = post(
        &emulator,
        "list-items",
        // The demo's static secrets (it also has a dynamic secret and a PKI issuer).
        json!({"path": "/demo", "type": ["static-secret"], "token": token}),
    )
    .await;
    assert_eq!(status, 200);
    let listed = names(&body)
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    assert_eq!(listed.len(), 4);
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": listed, "token": token}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(body["/demo/db/config"].as_str().unwrap()).unwrap();
    assert_eq!(config["port"], 5432);
    use base64::Engine as _;
    let blob = body["/demo/tls/ca.der.b64"].as_str().unwrap();
    assert!(
        base64::engine::general_purpose::STANDARD
            .decode(blob)
            .is_ok()
    );
    assert_eq!(body["/demo/api/token"], "demo-api-token-v3");
}

#[test]
fn seed_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "items:\n  - name: /a\n    value: x\n    colour: red\n",
            4,
            "unknown field `colour`",
        ),
        ("token_ttl_seconds: soon\n", 1, "invalid type"),
        (
            "items:\n  - name: /a\n    type: magic-secret\n    value: x\n",
            3,
            "unknown variant `magic-secret`",
        ),
        (
            "auth_methods:\n  - access_id: p-ok1\n    access_key: k\n  - access_id: x-bad\n    access_key: k\n",
            4,
            "must be 'p-'",
        ),
        (
            "auth_methods:\n  - access_id: p-ok1\n    access_key: k\n  - access_id: p-ok1\n    access_key: k\n",
            4,
            "defined twice",
        ),
        (
            "auth_methods:\n  - access_id: p-nokey\n    read: ['*']\n",
            2,
            "no access_key",
        ),
        (
            "auth_methods:\n  - access_id: p-a\n    access_key: k\n    read: ['/a*b']\n",
            2,
            "read pattern",
        ),
        (
            "items:\n  - name: /a\n    value: x\n  - name: /b\n    value: y\n  - name: a\n    value: z\n",
            6,
            "defined twice",
        ),
        (
            "items:\n  - name: /a\n    value: x\n    versions: [y]\n",
            2,
            "both value and versions",
        ),
        ("items:\n  - name: /a\n", 2, "needs a value"),
        (
            "items:\n  - name: /a\n    versions: []\n",
            2,
            "empty versions",
        ),
        (
            "items:\n  - name: /a\n    value: x\n  - name: '/j'\n    format: json\n    value: '{oops'\n",
            4,
            "not valid JSON",
        ),
        (
            "items:\n  - name: /k\n    format: key-value\n    value: '{\"a\": 1}'\n",
            2,
            "object of strings",
        ),
        ("items:\n  - name: /f/\n    value: x\n", 2, "ends with '/'"),
        ("token_ttl_seconds: 0\n", 1, "between 1"),
        (
            "items:\n  - name: /a\n    value: x\n  - name: /d\n    type: dynamic-secret\n    value: x\n",
            4,
            "has no stored value",
        ),
        (
            "items:\n  - name: /r\n    type: rotated-secret\n",
            2,
            "rotated secret \"/r\" needs a value",
        ),
        (
            "items:\n  - name: /s\n    value: x\n    wrapped: true\n",
            2,
            "wrapped does not apply to a static-secret",
        ),
        (
            "items:\n  - name: /p\n    type: pki-cert-issuer\n    allowed_users: [root]\n",
            2,
            "allowed_users does not apply",
        ),
        (
            "items:\n  - name: /p\n    type: ssh-cert-issuer\n    ttl_seconds: 7200\n    max_ttl_seconds: 3600\n",
            2,
            "exceeds max_ttl_seconds",
        ),
        (
            "items:\n  - name: /d\n    type: dynamic-secret\n    ttl_seconds: 0\n",
            2,
            "ttl_seconds must be between 1",
        ),
        (
            "items:\n  - name: /c/my cert\n    type: certificate\n",
            2,
            "set common_name",
        ),
        (
            "items:\n  - name: /c\n    type: certificate\n    ca: x\n",
            4,
            "unknown field `ca`",
        ),
        ("items: [\n", 2, ""),
    ];
    for (yaml, line, fragment) in cases {
        let Err(err) = Seed::from_yaml(yaml) else {
            panic!("accepted: {yaml:?}")
        };
        let EmulatorError::Seed {
            line: Some(found),
            message,
        } = &err
        else {
            panic!("{yaml:?}: no line in {err}");
        };
        assert_eq!(found, line, "{yaml:?}: {err}");
        assert!(message.contains(fragment), "{yaml:?}: {err}");
        assert!(err.to_string().contains(&format!("(line {line})")), "{err}");
    }
    // Errors never echo the secret values.
    let err = Seed::from_yaml("items:\n  - name: /j\n    format: json\n    value: 'hunter2{'\n")
        .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // Debug output redacts keys and values.
    let seed = Seed::from_yaml(SEED).unwrap();
    let debug = format!("{seed:?}");
    assert!(
        !debug.contains(DEMO_KEY) && !debug.contains("pw-1"),
        "{debug}"
    );
}

#[test]
fn demo_seed_is_valid() {
    let seed = Seed::demo();
    assert_eq!(seed.auth_methods.len(), 1);
    assert_eq!(seed.auth_methods[0].access_id, DEMO_ID);
    assert_eq!(
        seed.auth_methods[0].access_key.as_ref().unwrap().expose(),
        DEMO_KEY
    );
    // Four static secrets, a dynamic secret and a PKI issuer.
    assert_eq!(seed.items.len(), 6);
    assert_eq!(seed.token_ttl_seconds, 900);
}

#[tokio::test]
async fn start_rejects_invalid_programmatic_seeds_and_busy_ports() {
    let mut seed = Seed::default();
    seed.items.push(SeedItem {
        name: "/x".into(),
        item_type: ItemType::StaticSecret,
        format: SecretFormat::Text,
        value: None,
        versions: None,
        tags: vec![],
        ..SeedItem::default()
    });
    let err = start("127.0.0.1:0".parse().unwrap(), seed)
        .await
        .unwrap_err();
    assert!(
        matches!(err, EmulatorError::Seed { line: None, .. }),
        "{err}"
    );

    let emulator = start("127.0.0.1:0".parse().unwrap(), Seed::default())
        .await
        .unwrap();
    let err = start(emulator.addr(), Seed::default()).await.unwrap_err();
    assert!(matches!(err, EmulatorError::Bind { .. }), "{err}");
}

#[tokio::test]
async fn odd_inputs_never_break_it() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let http = client();
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let bodies: Vec<String> = vec![
        r#"{"names": null, "token": "TOKEN"}"#.into(),
        r#"{"names": [null], "token": "TOKEN"}"#.into(),
        r#"{"names": ["/demo/top"], "version": 1e100, "token": "TOKEN"}"#.into(),
        r#"{"names": ["/demo/top"], "version": -3, "token": "TOKEN"}"#.into(),
        r#"{"names": ["/demo/top"], "version": 99999999999, "token": "TOKEN"}"#.into(),
        r#"{"names": ["/demo/top"], "token": 5}"#.into(),
        r#"{"name": "", "token": "TOKEN"}"#.into(),
        r#"{"path": "////", "filter": "", "type": [], "tag": "", "token": "TOKEN"}"#.into(),
        r#"{"names": ["", "/", "//x", "\u0000"], "token": "TOKEN"}"#.into(),
        format!(
            r#"{{"names": ["{}"], "token": "TOKEN"}}"#,
            "é".repeat(50_000)
        ),
        deep,
        "null".into(),
        "\"string\"".into(),
    ];
    for command in [
        "auth",
        "get-secret-value",
        "describe-item",
        "list-items",
        "validate-token",
        "get-dynamic-secret-value",
        "get-rotated-secret-value",
        "get-certificate-value",
        "get-pki-certificate",
        "get-ssh-certificate",
    ] {
        for body in &bodies {
            let response = http
                .post(format!("{}/{command}", emulator.url()))
                .body(body.replace("TOKEN", &token))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let reply: Value = response.json().await.unwrap();
            assert!(
                status == 200 || (400..500).contains(&status),
                "{command} {status} {reply}"
            );
            if status != 200 {
                assert!(reply["error"].is_string(), "{reply}");
            }
        }
    }
    let huge = vec![b' '; 9 * 1024 * 1024];
    let response = http
        .post(format!("{}/auth", emulator.url()))
        .body(huge)
        .send()
        .await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    login(&emulator, DEMO_ID, DEMO_KEY).await;
}

/// A JWT-shaped token (unsigned: the emulator checks the shape, not the signature).
fn fake_jwt(claims: Value) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.c2ln", b64(&json!({"alg": "RS256"})), b64(&claims))
}

fn b64(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

const IDENTITY_SEED: &str = r#"
auth_methods:
  - access_id: p-k8s0001
    access_type: k8s
    k8s_auth_config_name: cluster-a
    bound_audience: akeyless
    read: ["*"]
  - access_id: p-jwt0001
    access_type: jwt
    read: ["*"]
  - access_id: p-uid0001
    access_type: universal_identity
    uid_token: "u-emulator-uid-1"
    read: ["/demo/*"]
  - access_id: p-aws0001
    access_type: aws_iam
    read: ["*"]
  - access_id: p-gcp0001
    access_type: gcp
    gcp_audience: custom-aud
    read: ["*"]
  - access_id: p-az0001
    access_type: azure_ad
    read: ["*"]
items:
  - name: /demo/a
    value: "a-value"
"#;

#[tokio::test]
async fn auth_checks_each_credential_format_and_records_logins() {
    let emulator = start(
        "127.0.0.1:0".parse().unwrap(),
        Seed::from_yaml(IDENTITY_SEED).unwrap(),
    )
    .await
    .unwrap();
    let sa = fake_jwt(json!({"sub": "system:serviceaccount:shop:web", "aud": ["akeyless"]}));
    let auth = |body: Value| post(&emulator, "auth", body);

    // k8s: base64 of a JWT, the seeded config name, the bound audience.
    let k8s = |name: &str, token: String| json!({"access-type": "k8s", "access-id": "p-k8s0001", "k8s-auth-config-name": name, "k8s-service-account-token": token});
    let (status, body) = auth(k8s("cluster-a", b64(&sa))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = auth(k8s("cluster-a", sa.clone())).await;
    assert_eq!(status, 400, "raw JWT instead of base64: {body}");
    let (status, body) = auth(k8s("cluster-b", b64(&sa))).await;
    assert_eq!(status, 401, "{body}");
    assert!(error_text(&body).contains("k8s auth config \"cluster-b\" not found"));
    let other_aud = fake_jwt(json!({"sub": "x", "aud": "vault"}));
    let (status, _) = auth(k8s("cluster-a", b64(&other_aud))).await;
    assert_eq!(status, 401, "wrong audience");
    let (status, _) = auth(k8s("cluster-a", b64("not.a.jwt"))).await;
    assert_eq!(status, 400);

    // jwt: JWT-shaped.
    let (status, _) =
        auth(json!({"access-type": "jwt", "access-id": "p-jwt0001", "jwt": sa})).await;
    assert_eq!(status, 200);
    let (status, _) =
        auth(json!({"access-type": "jwt", "access-id": "p-jwt0001", "jwt": "opaque"})).await;
    assert_eq!(status, 400);

    // universal_identity: the seeded u- token; it also reads directly as uid-token.
    let (status, _) = auth(json!({"access-type": "universal_identity", "access-id": "p-uid0001", "uid-token": "u-emulator-uid-1"})).await;
    assert_eq!(status, 200);
    let (status, _) = auth(json!({"access-type": "universal_identity", "access-id": "p-uid0001", "uid-token": "t-nope"})).await;
    assert_eq!(status, 400);
    let (status, body) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/a"], "uid-token": "u-emulator-uid-1"}),
    )
    .await;
    assert_eq!((status, &body["/demo/a"]), (200, &json!("a-value")));

    // aws_iam: base64 JSON of a signed GetCallerIdentity request.
    let headers = json!({"X-Amz-Date": ["20260101T000000Z"], "Authorization": ["AWS4-HMAC-SHA256 Credential=ASIAPOD/20260101/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=abc"]});
    let aws = |url: &str| {
        b64(&json!({
            "sts_request_method": "POST",
            "sts_request_url": b64(url),
            "sts_request_body": b64("Action=GetCallerIdentity&Version=2011-06-15"),
            "sts_request_headers": b64(&headers.to_string()),
        })
        .to_string())
    };
    let (status, body) = auth(json!({"access-type": "aws_iam", "access-id": "p-aws0001", "cloud-id": aws("https://sts.amazonaws.com/")})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = auth(json!({"access-type": "aws_iam", "access-id": "p-aws0001", "cloud-id": aws("https://evil/")})).await;
    assert_eq!(status, 400);

    // gcp: an ID token for the method's audience, sent as gcp-audience too.
    let id_token = fake_jwt(json!({"aud": "custom-aud", "email": "app@p.iam.gserviceaccount.com"}));
    let (status, body) = auth(json!({"access-type": "gcp", "access-id": "p-gcp0001", "cloud-id": b64(&id_token), "gcp-audience": "custom-aud"})).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) =
        auth(json!({"access-type": "gcp", "access-id": "p-gcp0001", "cloud-id": b64(&id_token)}))
            .await;
    assert_eq!(status, 401, "default audience akeyless.io does not match");

    // azure_ad: base64 of an access token.
    let (status, _) = auth(json!({"access-type": "azure_ad", "access-id": "p-az0001", "cloud-id": b64(&fake_jwt(json!({"sub": "wi"})))})).await;
    assert_eq!(status, 200);
    let (status, _) = auth(
        json!({"access-type": "azure_ad", "access-id": "p-az0001", "cloud-id": b64("opaque")}),
    )
    .await;
    assert_eq!(status, 400);

    let logins = emulator.stats().logins;
    assert_eq!(logins.len(), 6);
    let k8s_login = &logins[0];
    assert_eq!(k8s_login.access_type, "k8s");
    assert_eq!(
        k8s_login.subject.as_deref(),
        Some("system:serviceaccount:shop:web")
    );
    assert_eq!(
        k8s_login.credential_fingerprint,
        hex::encode(&Sha256::digest(sa.as_bytes())[..4]),
        "the fingerprint of the decoded service-account JWT"
    );
    assert_eq!(logins[3].subject.as_deref(), Some("ASIAPOD"));
    assert_eq!(
        logins[4].subject.as_deref(),
        Some("app@p.iam.gserviceaccount.com")
    );
    assert!(
        !serde_json::to_string(&logins).unwrap().contains(&sa),
        "never the credential"
    );
}

// ---- dynamic, rotated, certificate, PKI and SSH items ----

const CREDENTIALS_SEED: &str = r#"
auth_methods:
  - access_id: p-demo0000000001
    access_key: "demo-access-key-not-secret"
    read: ["/demo/*"]
  - access_id: p-narrow00000001
    access_key: narrow-key
    read: [/demo/db/password]
items:
  - name: /demo/db/password
    value: "pw-1"
  - name: /demo/dyn/db
    type: dynamic-secret
    ttl_seconds: 150
  - name: /demo/dyn/dapr
    type: dynamic-secret
    wrapped: true
  - name: /demo/rot/app
    type: rotated-secret
    versions:
      - '{"username":"app","password":"rot-1"}'
      - '{"username":"app","password":"rot-2"}'
  - name: /demo/rot/custom
    type: rotated-secret
    value: "plain-token"
  - name: /demo/tls/web
    type: certificate
    common_name: web.demo.internal
    ttl_seconds: 86400
  - name: /demo/tls/api.demo.internal
    type: certificate
  - name: /demo/pki/issuer
    type: pki-cert-issuer
    ttl_seconds: 600
    max_ttl_seconds: 7200
  - name: /demo/ssh/issuer
    type: ssh-cert-issuer
    ttl_seconds: 300
    max_ttl_seconds: 900
    allowed_users: [ubuntu, deploy]
  - name: /other/dyn
    type: dynamic-secret
"#;

async fn credentials_emulator() -> (EmulatorHandle, String) {
    let emulator = start(
        "127.0.0.1:0".parse().unwrap(),
        Seed::from_yaml(CREDENTIALS_SEED).unwrap(),
    )
    .await
    .unwrap();
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    (emulator, token)
}

fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    let mut rest = pem.as_bytes();
    let mut blocks = Vec::new();
    while !rest.iter().all(u8::is_ascii_whitespace) {
        let (tail, block) = x509_parser::pem::parse_x509_pem(rest).unwrap();
        blocks.push(block.contents);
        rest = tail;
    }
    blocks
}

fn parse_cert(der: &[u8]) -> x509_parser::certificate::X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der).unwrap().1
}

fn common_name(name: &x509_parser::x509::X509Name<'_>) -> String {
    name.iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

fn dns_sans(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    cert.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .map(|name| match name {
                    GeneralName::DNSName(dns) => format!("dns:{dns}"),
                    GeneralName::IPAddress(ip) => format!("ip:{ip:?}"),
                    GeneralName::URI(uri) => format!("uri:{uri}"),
                    other => format!("{other:?}"),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_new_command_checks_permission_existence_and_type() {
    let (emulator, token) = credentials_emulator().await;
    let narrow = login(&emulator, NARROW_ID, NARROW_KEY).await;
    let csr = {
        use base64::Engine as _;
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(vec!["x.demo".to_owned()])
            .unwrap()
            .serialize_request(&key)
            .unwrap();
        base64::engine::general_purpose::STANDARD.encode(csr.der())
    };
    let ssh_key = ssh_ed25519_line(&aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap());
    // (command, request naming `item`, an item of the right type)
    type Body = Box<dyn Fn(&str) -> Value>;
    let cases: Vec<(&str, Body, &str)> = vec![
        (
            "get-dynamic-secret-value",
            Box::new(|item: &str| json!({"name": item})),
            "/demo/dyn/db",
        ),
        (
            "get-rotated-secret-value",
            Box::new(|item: &str| json!({"names": item})),
            "/demo/rot/app",
        ),
        (
            "get-certificate-value",
            Box::new(|item: &str| json!({"name": item})),
            "/demo/tls/web",
        ),
        (
            "get-pki-certificate",
            Box::new(move |item: &str| json!({"cert-issuer-name": item, "csr-data-base64": csr})),
            "/demo/pki/issuer",
        ),
        (
            "get-ssh-certificate",
            Box::new(
                move |item: &str| json!({"cert-issuer-name": item, "cert-username": "ubuntu", "public-key-data": ssh_key}),
            ),
            "/demo/ssh/issuer",
        ),
    ];
    for (command, body, good) in &cases {
        let with = |mut body: Value, token: &str| {
            body["token"] = json!(token);
            body
        };
        let (status, reply) = post(&emulator, command, with(body(good), &token)).await;
        assert_eq!(status, 200, "{command}: {reply}");
        // Names without the leading slash work too.
        let (status, reply) = post(&emulator, command, with(body(&good[1..]), &token)).await;
        assert_eq!(status, 200, "{command}: {reply}");

        let (status, reply) =
            post(&emulator, command, with(body("/demo/db/password"), &token)).await;
        assert_eq!(status, 400, "{command}: {reply}");
        assert!(
            error_text(&reply).starts_with("invalid request body: item /demo/db/password is not ")
                && error_text(&reply).ends_with("(item type STATIC_SECRET)"),
            "{command}: {reply}"
        );
        let (status, reply) = post(&emulator, command, with(body("/demo/nope"), &token)).await;
        assert_eq!(status, 404, "{command}: {reply}");
        assert!(
            error_text(&reply).contains("Status 404 Not Found, Error: NotFound.")
                && error_text(&reply).ends_with("failed to obtain item /demo/nope"),
            "{command}: {reply}"
        );
        // No permission: 401 whether or not the item exists.
        for item in [*good, "/demo/nope", "/other/dyn"] {
            let (status, reply) = post(&emulator, command, with(body(item), &narrow)).await;
            assert_eq!(status, 401, "{command} {item}: {reply}");
            assert!(
                error_text(&reply).contains("Status 401 Unauthorized, Error: UnauthorizedAccess.")
                    && error_text(&reply)
                        .contains("unauthorized access for access id p-narrow00000001"),
                "{command}: {reply}"
            );
        }
        let (status, reply) = post(&emulator, command, body(good)).await;
        assert_eq!(status, 401, "{command} without a token: {reply}");
        let (status, reply) = post(&emulator, command, json!({"token": token})).await;
        assert_eq!(status, 400, "{command}: {reply}");
        assert!(
            error_text(&reply).starts_with("invalid request body: Missing required parameter - "),
            "{command}: {reply}"
        );
        // Every call is counted, failures included.
        assert_eq!(emulator.calls(command), 9, "{command}");
    }
    // Faults apply to the new commands too.
    emulator.add_fault(
        Fault::new(FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        })
        .on("/get-dynamic-secret-value")
        .times(1),
    );
    let (status, _) = post(
        &emulator,
        "get-dynamic-secret-value",
        json!({"name": "/demo/dyn/db", "token": token}),
    )
    .await;
    assert_eq!(status, 503);

    // Every type is listed, with its item_type.
    let (status, body) = post(&emulator, "list-items", json!({"token": token})).await;
    assert_eq!(status, 200);
    let types: std::collections::BTreeMap<&str, &str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            (
                item["item_name"].as_str().unwrap(),
                item["item_type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(types["/demo/dyn/db"], "DYNAMIC_SECRET");
    assert_eq!(types["/demo/rot/app"], "ROTATED_SECRET");
    assert_eq!(types["/demo/tls/web"], "CERTIFICATE");
    assert_eq!(types["/demo/pki/issuer"], "PKI_CERT_ISSUER");
    assert_eq!(types["/demo/ssh/issuer"], "SSH_CERT_ISSUER");
    let (_, body) = post(
        &emulator,
        "list-items",
        json!({"token": token, "type": ["rotated-secret"]}),
    )
    .await;
    assert_eq!(names(&body), ["/demo/rot/app", "/demo/rot/custom"]);
}

#[tokio::test]
async fn dynamic_secrets_mint_a_lease_per_call() {
    let (emulator, token) = credentials_emulator().await;
    let call = |name: &str| {
        post(
            &emulator,
            "get-dynamic-secret-value",
            json!({"name": name, "token": token, "args": ["role=ro"], "timeout": 15}),
        )
    };
    let (status, first) = call("/demo/dyn/db").await;
    assert_eq!(status, 200, "{first}");
    let (_, second) = call("demo/dyn/db").await;
    for lease in [&first, &second] {
        let object = lease.as_object().unwrap();
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            ["id", "password", "ttl_in_minutes", "user"]
        );
        assert!(object.values().all(Value::is_string), "{lease}");
        assert_eq!(lease["ttl_in_minutes"], "3", "150 s rounds up");
        let password = lease["password"].as_str().unwrap();
        assert_eq!(password.len(), 24);
        assert!(password.chars().all(|c| c.is_ascii_alphanumeric()));
        assert!(lease["id"].as_str().unwrap().starts_with("tmp-"));
    }
    for field in ["id", "user", "password"] {
        assert_ne!(first[field], second[field], "{field}");
    }
    assert_eq!(emulator.leases_minted("/demo/dyn/db"), 2);
    assert_eq!(emulator.leases_minted("demo/dyn/db"), 2);
    assert_eq!(emulator.stats().leases_minted("/demo/dyn/db"), 2);
    assert_eq!(emulator.calls("get-dynamic-secret-value"), 2);
    assert!(emulator.stats().reads.is_empty());

    // Dapr's wrapper: the same credentials as a JSON string.
    let (status, wrapped) = call("/demo/dyn/dapr").await;
    assert_eq!(status, 200, "{wrapped}");
    assert_eq!(wrapped["error"], "");
    let inner: Value = serde_json::from_str(wrapped["value"].as_str().unwrap()).unwrap();
    assert_eq!(inner["ttl_in_minutes"], "60");
    assert!(inner["user"].is_string() && inner["password"].is_string() && inner["id"].is_string());
    assert_ne!(inner["id"], first["id"]);
    assert_eq!(emulator.leases_minted("/demo/dyn/dapr"), 1);
    assert_eq!(emulator.stats().leases.len(), 2);

    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/dyn/db", "token": token}),
    )
    .await;
    assert_eq!(
        body["item_general_info"]["dynamic_secret_producer_details"],
        json!({"producer_status": "ProducerConnected", "producer_type": "custom", "user_ttl": "3m"})
    );
    // There is nothing to rotate.
    let response = client()
        .post(format!("{}/__emulator/secrets", emulator.url()))
        .json(&json!({"name": "/demo/dyn/db", "value": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    emulator.reset_stats();
    assert_eq!(emulator.leases_minted("/demo/dyn/db"), 0);
    let (_, third) = call("/demo/dyn/db").await;
    assert_ne!(
        third["id"], first["id"],
        "lease ids stay unique across resets"
    );
}

#[tokio::test]
async fn rotated_secrets_serve_objects_by_version() {
    let (emulator, token) = credentials_emulator().await;
    let get = |body: Value| {
        let mut body = body;
        body["token"] = json!(token);
        post(&emulator, "get-rotated-secret-value", body)
    };
    let (status, body) = get(json!({"names": "/demo/rot/app", "ignore-cache": "false"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"value": {"username": "app", "password": "rot-2"}})
    );
    let (_, body) = get(json!({"names": "/demo/rot/app", "version": 1})).await;
    assert_eq!(body["value"]["password"], "rot-1");
    let (status, _) = get(json!({"names": "/demo/rot/app", "version": 3})).await;
    assert_eq!(status, 404);
    let (status, _) = get(json!({"names": "/demo/rot/app", "version": -1})).await;
    assert_eq!(status, 400);
    let (status, _) = get(json!({"names": ["/demo/rot/app"]})).await;
    assert_eq!(status, 400, "names is a string here");
    let (_, body) = get(json!({"names": "/demo/rot/custom"})).await;
    assert_eq!(body, json!({"value": {"payload": "plain-token"}}));

    // Rotation, through the handle and the control API.
    emulator.put_secret("/demo/rot/app", r#"{"username":"app","password":"rot-3"}"#);
    let (_, body) = get(json!({"names": "/demo/rot/app"})).await;
    assert_eq!(body["value"]["password"], "rot-3");
    let response = client()
        .post(format!("{}/__emulator/secrets", emulator.url()))
        .json(&json!({"name": "/demo/rot/app", "value": "{\"username\":\"app\",\"password\":\"rot-4\"}"}))
        .send()
        .await
        .unwrap();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["version"], 4);
    let (_, body) = get(json!({"names": "demo/rot/app"})).await;
    assert_eq!(body["value"]["password"], "rot-4");
    let (_, body) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/rot/app", "token": token}),
    )
    .await;
    assert_eq!(body["last_version"], 4);
    assert_eq!(
        body["item_general_info"]["rotated_secret_details"]["rotator_status"],
        "RotationSucceeded"
    );
    let reads = emulator.stats().reads;
    assert_eq!(
        reads
            .iter()
            .map(|r| (r.item.as_str(), r.version))
            .collect::<Vec<_>>(),
        [
            ("/demo/rot/app", 2),
            ("/demo/rot/app", 1),
            ("/demo/rot/custom", 1),
            ("/demo/rot/app", 3),
            ("/demo/rot/app", 4)
        ]
    );
    // get-secret-value does not serve them.
    let (status, _) = post(
        &emulator,
        "get-secret-value",
        json!({"names": ["/demo/rot/app"], "token": token}),
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn certificate_items_serve_a_generated_chain_and_key() {
    let (emulator, token) = credentials_emulator().await;
    let get = |body: Value| {
        let mut body = body;
        body["token"] = json!(token);
        post(&emulator, "get-certificate-value", body)
    };
    let (status, body) = get(json!({"name": "/demo/tls/web"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 2);
    let chain = pem_blocks(body["certificate_pem"].as_str().unwrap());
    assert_eq!(chain.len(), 2, "leaf and intermediate");
    let root_pem = emulator.certificate_root_pem("/demo/tls/web").unwrap();
    let root_der = &pem_blocks(&root_pem)[0];
    let (leaf, intermediate, root) = (
        parse_cert(&chain[0]),
        parse_cert(&chain[1]),
        parse_cert(root_der),
    );
    assert_eq!(common_name(leaf.subject()), "web.demo.internal");
    assert_eq!(dns_sans(&leaf), ["dns:web.demo.internal"]);
    assert!(!leaf.is_ca() && intermediate.is_ca() && root.is_ca());
    assert_eq!(leaf.issuer(), intermediate.subject());
    assert_eq!(intermediate.issuer(), root.subject());
    assert_eq!(root.issuer(), root.subject());
    leaf.verify_signature(Some(intermediate.public_key()))
        .unwrap();
    intermediate
        .verify_signature(Some(root.public_key()))
        .unwrap();
    root.verify_signature(None).unwrap();
    let validity = leaf.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        86_400 + 60
    );
    // The key is the leaf's: PKCS#8 P-256.
    let key_pem = body["private_key_pem"].as_str().unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "{key_pem}"
    );
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    assert_eq!(key.algorithm(), &rcgen::PKCS_ECDSA_P256_SHA256);
    assert_eq!(
        key.public_key_raw(),
        leaf.public_key().subject_public_key.data.as_ref()
    );

    // The default CN is the last path element; every item has its own CAs.
    let (_, other) = get(json!({"name": "/demo/tls/api.demo.internal", "version": 0})).await;
    let other_chain = pem_blocks(other["certificate_pem"].as_str().unwrap());
    let other_leaf = parse_cert(&other_chain[0]);
    assert_eq!(common_name(other_leaf.subject()), "api.demo.internal");
    assert_eq!(dns_sans(&other_leaf), ["dns:api.demo.internal"]);
    assert_ne!(
        emulator
            .certificate_root_pem("/demo/tls/api.demo.internal")
            .unwrap(),
        root_pem
    );
    assert_ne!(other["private_key_pem"], body["private_key_pem"]);
    assert_eq!(emulator.certificate_root_pem("/demo/pki/issuer"), None);
    assert_eq!(emulator.certificate_root_pem("/demo/nope"), None);

    let (_, described) = post(
        &emulator,
        "describe-item",
        json!({"name": "/demo/tls/web", "show-versions": true, "token": token}),
    )
    .await;
    let info = &described["item_general_info"]["certificate_chain_info"];
    assert_eq!(info["certificate_pem"], body["certificate_pem"]);
    assert_eq!(info["certificate_has_private_key"], true);
    assert_eq!(info["certificate_status"], "Valid");
    assert_eq!(info["common_name"], "web.demo.internal");
    assert!(info["expiration_date"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        described["item_versions"][0]["certificate_version_info"]["status"],
        "Valid"
    );

    // Rotation: a fresh leaf under the same CAs; version 1 stays readable.
    emulator.put_secret("/demo/tls/web", "ignored");
    let (_, renewed) = get(json!({"name": "/demo/tls/web"})).await;
    assert_ne!(renewed["private_key_pem"], body["private_key_pem"]);
    let renewed_chain = pem_blocks(renewed["certificate_pem"].as_str().unwrap());
    let renewed_leaf = parse_cert(&renewed_chain[0]);
    renewed_leaf
        .verify_signature(Some(intermediate.public_key()))
        .unwrap();
    assert_eq!(renewed_chain[1], chain[1]);
    let (_, first) = get(json!({"name": "/demo/tls/web", "version": 1})).await;
    assert_eq!(first, body);
    let (status, _) = get(json!({"name": "/demo/tls/web", "version": 3})).await;
    assert_eq!(status, 404);
    assert_eq!(
        emulator
            .stats()
            .reads
            .iter()
            .map(|r| r.version)
            .collect::<Vec<_>>(),
        [1, 1, 2, 1]
    );
}

fn csr_base64(key: &rcgen::KeyPair, cn: Option<&str>, sans: &[&str], pem: bool) -> String {
    use base64::Engine as _;
    let mut params =
        rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    if let Some(cn) = cn {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
    }
    let csr = params.serialize_request(key).unwrap();
    let bytes = if pem {
        csr.pem().unwrap().into_bytes()
    } else {
        csr.der().to_vec()
    };
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test]
async fn pki_issuers_sign_csrs() {
    use x509_parser::prelude::FromDer as _;
    let (emulator, token) = credentials_emulator().await;
    let issue = |body: Value| {
        let mut body = body;
        body["token"] = json!(token);
        body["cert-issuer-name"] = json!("/demo/pki/issuer");
        post(&emulator, "get-pki-certificate", body)
    };
    let ca_pem = emulator.pki_ca_pem("/demo/pki/issuer").unwrap();
    let ca_der = pem_blocks(&ca_pem).remove(0);
    let ca = parse_cert(&ca_der);
    assert!(ca.is_ca());
    assert_eq!(emulator.pki_ca_pem("/demo/tls/web"), None);

    let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .expect("aws-lc-rs generates RSA keys");
    let keys = [
        (
            "p256",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        ),
        (
            "p384",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap(),
        ),
        (
            "ed25519",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap(),
        ),
        ("rsa2048", rsa),
    ];
    let mut issued = 0;
    for (label, key) in &keys {
        let csr = csr_base64(
            key,
            Some(&format!("{label}.demo")),
            &[&format!("{label}.demo.internal")],
            false,
        );
        let (status, body) = issue(json!({
            "csr-data-base64": csr,
            "alt-names": "extra.demo, 10.0.0.7",
            "uri-sans": "spiffe://demo/svc",
            "ttl": "300",
        }))
        .await;
        assert_eq!(status, 200, "{label}: {body}");
        issued += 1;
        let object = body.as_object().unwrap();
        assert_eq!(
            object.keys().collect::<Vec<_>>(),
            [
                "cert_display_id",
                "cert_item_id",
                "data",
                "parent_cert",
                "path",
                "reading_token"
            ]
        );
        assert_eq!(body["parent_cert"], ca_pem.as_str());
        assert_eq!(body["reading_token"], "");
        assert!(body["cert_item_id"].is_u64());
        assert_eq!(body["cert_display_id"].as_str().unwrap().len(), 17);
        let der = pem_blocks(body["data"].as_str().unwrap()).remove(0);
        let cert = parse_cert(&der);
        // Bound to the CSR's key, signed by the issuer's CA.
        let csr_der = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(&csr)
                .unwrap()
        };
        let (_, request) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .unwrap();
        assert_eq!(
            cert.public_key().raw,
            request.certification_request_info.subject_pki.raw,
            "{label}"
        );
        assert_eq!(
            cert.public_key().subject_public_key.data.as_ref(),
            key.public_key_raw()
        );
        assert_eq!(cert.issuer(), ca.subject());
        cert.verify_signature(Some(ca.public_key())).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(common_name(cert.subject()), format!("{label}.demo"));
        assert_eq!(
            dns_sans(&cert),
            [
                format!("dns:{label}.demo.internal"),
                "dns:extra.demo".to_owned(),
                "ip:[10, 0, 0, 7]".to_owned(),
                "uri:spiffe://demo/svc".to_owned(),
            ]
        );
        let validity = cert.validity();
        assert_eq!(
            validity.not_after.timestamp() - validity.not_before.timestamp(),
            300
        );
        let now = i64::try_from(state::now_ms() / 1000).unwrap();
        assert!((validity.not_before.timestamp() - now).abs() <= 5);
        let serial = hex::encode(cert.raw_serial());
        assert_eq!(body["path"], format!("/demo/pki/issuer/{serial}"));
    }
    assert_eq!(emulator.leases_minted("/demo/pki/issuer"), issued);

    // A PEM CSR (base64 of the PEM text), no CN: common-name fills in; ttl as a number;
    // the issuer's default ttl otherwise.
    let key = rcgen::KeyPair::generate().unwrap();
    let (status, body) = issue(json!({
        "csr-data-base64": csr_base64(&key, None, &["pem.demo"], true),
        "common-name": "from-request",
        "ttl": 120,
        "extended-key-usage": "clientauth",
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    let der = pem_blocks(body["data"].as_str().unwrap()).remove(0);
    let cert = parse_cert(&der);
    assert_eq!(common_name(cert.subject()), "from-request");
    let usage = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(usage.client_auth && !usage.server_auth);
    let validity = cert.validity();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        120
    );
    let (_, body) =
        issue(json!({"csr-data-base64": csr_base64(&key, Some("d"), &[], false)})).await;
    let der = pem_blocks(body["data"].as_str().unwrap()).remove(0);
    let validity = parse_cert(&der).validity().clone();
    assert_eq!(
        validity.not_after.timestamp() - validity.not_before.timestamp(),
        600
    );

    // Errors.
    let csr = csr_base64(&key, Some("x"), &[], false);
    let (status, body) = issue(json!({"csr-data-base64": csr, "ttl": "7201"})).await;
    assert_eq!(status, 400);
    assert!(
        error_text(&body).contains("exceeds the issuer's max ttl"),
        "{body}"
    );
    let (status, body) = issue(json!({"common-name": "x"})).await;
    assert_eq!(status, 400);
    assert!(
        error_text(&body).contains("a CSR or key is required"),
        "{body}"
    );
    let (status, body) = issue(json!({"csr-data-base64": "bm90IGEgY3Ny"})).await;
    assert_eq!(status, 400);
    assert!(error_text(&body).contains("invalid CSR"), "{body}");
    let (status, body) = issue(json!({"csr-data-base64": "%%%"})).await;
    assert_eq!(status, 400);
    assert!(error_text(&body).contains("not base64"), "{body}");
    let mut tampered = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(&csr)
            .unwrap()
    };
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let tampered = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(&tampered)
    };
    let (status, body) = issue(json!({"csr-data-base64": tampered})).await;
    assert_eq!(status, 400);
    assert!(error_text(&body).contains("invalid CSR"), "{body}");
    let (status, _) = issue(json!({"csr-data-base64": csr, "ttl": "-5"})).await;
    assert_eq!(status, 400);
    let (status, _) = issue(json!({"csr-data-base64": csr, "extended-key-usage": "magic"})).await;
    assert_eq!(status, 400);
    let nameless = csr_base64(&key, None, &[], false);
    let (status, _) = issue(json!({"csr-data-base64": nameless})).await;
    assert_eq!(status, 400);
    assert_eq!(emulator.leases_minted("/demo/pki/issuer"), issued + 2);
}

fn ssh_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap().to_be_bytes());
    out.extend_from_slice(bytes);
}

fn ssh_line(blob: &[u8], comment: &str) -> String {
    use base64::Engine as _;
    let mut reader = blob;
    let key_type = crypto::take_string(&mut reader).unwrap();
    format!(
        "{} {} {comment}",
        std::str::from_utf8(key_type).unwrap(),
        base64::engine::general_purpose::STANDARD.encode(blob)
    )
}

fn ssh_ed25519_line(key: &aws_lc_rs::signature::Ed25519KeyPair) -> String {
    use aws_lc_rs::signature::KeyPair as _;
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-ed25519");
    ssh_string(&mut blob, key.public_key().as_ref());
    ssh_line(&blob, "user@host")
}

/// The fields of an OpenSSH certificate, as `PROTOCOL.certkeys` lays them out.
struct SshCert {
    cert_type: String,
    nonce: Vec<u8>,
    key_fields: Vec<Vec<u8>>,
    serial: u64,
    kind: u32,
    key_id: String,
    principals: Vec<String>,
    valid_after: u64,
    valid_before: u64,
    critical_options: Vec<u8>,
    extensions: Vec<String>,
    reserved: Vec<u8>,
    signature_key: Vec<u8>,
    signature: Vec<u8>,
    signed: Vec<u8>,
}

fn decode_ssh_cert(line: &str, key_field_count: usize) -> SshCert {
    use base64::Engine as _;
    let mut parts = line.split(' ');
    let stated = parts.next().unwrap().to_owned();
    let blob = base64::engine::general_purpose::STANDARD
        .decode(parts.next().unwrap())
        .unwrap();
    let mut r = blob.as_slice();
    let string = |r: &mut &[u8]| crypto::take_string(r).unwrap().to_vec();
    let u64_ = |r: &mut &[u8]| {
        let (v, rest) = r.split_first_chunk::<8>().unwrap();
        *r = rest;
        u64::from_be_bytes(*v)
    };
    let cert_type = String::from_utf8(string(&mut r)).unwrap();
    assert_eq!(cert_type, stated);
    let nonce = string(&mut r);
    let key_fields = (0..key_field_count).map(|_| string(&mut r)).collect();
    let serial = u64_(&mut r);
    let (kind, rest) = r.split_first_chunk::<4>().unwrap();
    let kind = u32::from_be_bytes(*kind);
    r = rest;
    let key_id = String::from_utf8(string(&mut r)).unwrap();
    let principal_blob = string(&mut r);
    let mut p = principal_blob.as_slice();
    let mut principals = Vec::new();
    while !p.is_empty() {
        principals.push(String::from_utf8(string(&mut p)).unwrap());
    }
    let valid_after = u64_(&mut r);
    let valid_before = u64_(&mut r);
    let critical_options = string(&mut r);
    let extension_blob = string(&mut r);
    let mut e = extension_blob.as_slice();
    let mut extensions = Vec::new();
    while !e.is_empty() {
        extensions.push(String::from_utf8(string(&mut e)).unwrap());
        assert!(string(&mut e).is_empty());
    }
    let reserved = string(&mut r);
    let signature_key = string(&mut r);
    let signed = blob[..blob.len() - r.len()].to_vec();
    let signature = string(&mut r);
    assert!(r.is_empty(), "trailing bytes");
    SshCert {
        cert_type,
        nonce,
        key_fields,
        serial,
        kind,
        key_id,
        principals,
        valid_after,
        valid_before,
        critical_options,
        extensions,
        reserved,
        signature_key,
        signature,
        signed,
    }
}

#[tokio::test]
async fn ssh_issuers_sign_user_certificates() {
    use base64::Engine as _;
    let (emulator, token) = credentials_emulator().await;
    let sign = |body: Value| {
        let mut body = body;
        body["token"] = json!(token);
        body["cert-issuer-name"] = json!("/demo/ssh/issuer");
        post(&emulator, "get-ssh-certificate", body)
    };
    let ca_line = emulator.ssh_ca_public_key("/demo/ssh/issuer").unwrap();
    assert_eq!(emulator.ssh_ca_public_key("/demo/pki/issuer"), None);
    let (ca_type, ca_b64) = ca_line.split_once(' ').unwrap();
    assert_eq!(ca_type, "ssh-ed25519");
    let ca_blob = base64::engine::general_purpose::STANDARD
        .decode(ca_b64)
        .unwrap();
    let ca_key = {
        let mut r = ca_blob.as_slice();
        assert_eq!(crypto::take_string(&mut r).unwrap(), b"ssh-ed25519");
        crypto::take_string(&mut r).unwrap().to_vec()
    };

    let user_key = aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap();
    let (status, body) = sign(json!({
        "cert-username": "ubuntu",
        "public-key-data": ssh_ed25519_line(&user_key),
        "legacy-signing-alg-name": false,
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/demo/ssh/issuer");
    let cert = decode_ssh_cert(body["data"].as_str().unwrap(), 1);
    assert_eq!(cert.cert_type, "ssh-ed25519-cert-v01@openssh.com");
    assert_eq!(cert.nonce.len(), 32);
    {
        use aws_lc_rs::signature::KeyPair as _;
        assert_eq!(cert.key_fields, [user_key.public_key().as_ref().to_vec()]);
    }
    assert_eq!(cert.kind, 1, "user certificate");
    assert_eq!(cert.principals, ["ubuntu"]);
    assert_eq!(cert.key_id, format!("{DEMO_ID}:ubuntu"));
    assert_eq!(cert.valid_before - cert.valid_after, 300 + 60);
    let now = state::now_ms() / 1000;
    assert!(cert.valid_after <= now && now < cert.valid_before);
    assert!(cert.critical_options.is_empty() && cert.reserved.is_empty());
    assert_eq!(
        cert.extensions,
        [
            "permit-X11-forwarding",
            "permit-agent-forwarding",
            "permit-port-forwarding",
            "permit-pty",
            "permit-user-rc"
        ]
    );
    assert_eq!(cert.signature_key, ca_blob);
    let signature = {
        let mut r = cert.signature.as_slice();
        assert_eq!(crypto::take_string(&mut r).unwrap(), b"ssh-ed25519");
        crypto::take_string(&mut r).unwrap().to_vec()
    };
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &ca_key)
        .verify(&cert.signed, &signature)
        .unwrap();
    assert_eq!(emulator.leases_minted("/demo/ssh/issuer"), 1);

    // ECDSA P-256 and RSA keys; a ttl above the max is capped.
    let ecdsa = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let point = {
        use aws_lc_rs::signature::KeyPair as _;
        ecdsa.public_key().as_ref().to_vec()
    };
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ecdsa-sha2-nistp256");
    ssh_string(&mut blob, b"nistp256");
    ssh_string(&mut blob, &point);
    let (status, body) = sign(json!({
        "cert-username": "deploy",
        "public-key-data": ssh_line(&blob, ""),
        "ttl": 100_000,
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    let cert = decode_ssh_cert(body["data"].as_str().unwrap(), 2);
    assert_eq!(cert.cert_type, "ecdsa-sha2-nistp256-cert-v01@openssh.com");
    assert_eq!(cert.key_fields, [b"nistp256".to_vec(), point]);
    assert_eq!(cert.valid_before - cert.valid_after, 900 + 60);
    let first_serial = cert.serial;

    let mut n = vec![0u8];
    n.extend(std::iter::repeat_n(0xc5, 256));
    let mut blob = Vec::new();
    ssh_string(&mut blob, b"ssh-rsa");
    ssh_string(&mut blob, &[1, 0, 1]);
    ssh_string(&mut blob, &n);
    let (status, body) = sign(json!({
        "cert-username": "deploy",
        "public-key-data": ssh_line(&blob, "rsa key"),
        "ttl": 60,
    }))
    .await;
    assert_eq!(status, 200, "{body}");
    let cert = decode_ssh_cert(body["data"].as_str().unwrap(), 2);
    assert_eq!(cert.cert_type, "ssh-rsa-cert-v01@openssh.com");
    assert_eq!(cert.key_fields, [vec![1, 0, 1], n]);
    assert_eq!(cert.valid_before - cert.valid_after, 60 + 60);
    assert_ne!(cert.serial, first_serial);
    assert_eq!(emulator.leases_minted("/demo/ssh/issuer"), 3);

    // Errors.
    let line = ssh_ed25519_line(&user_key);
    let (status, body) = sign(json!({"cert-username": "root", "public-key-data": line})).await;
    assert_eq!(status, 400);
    assert!(error_text(&body).contains("not an allowed user"), "{body}");
    let (status, body) = sign(json!({"cert-username": "ubuntu"})).await;
    assert_eq!(status, 400);
    assert!(
        error_text(&body).contains("public-key-data is required"),
        "{body}"
    );
    for bad in [
        "ssh-ed25519",
        "ssh-ed25519 !!!",
        "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIG5vdC1hLXJlYWwta2V5LWF0LWFsbC4uLi4uLg==",
        "ssh-dss AAAAB3NzaC1kc3M=",
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAAQ==",
    ] {
        let (status, body) = sign(json!({"cert-username": "ubuntu", "public-key-data": bad})).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(error_text(&body).contains("public-key-data"), "{body}");
    }
    let (status, _) =
        sign(json!({"cert-username": "ubuntu", "public-key-data": line, "ttl": "60"})).await;
    assert_eq!(status, 400, "ttl is an integer here");
    let (status, _) =
        sign(json!({"cert-username": "ubuntu", "public-key-data": line, "ttl": -1})).await;
    assert_eq!(status, 400);
    assert_eq!(emulator.leases_minted("/demo/ssh/issuer"), 3);
}

#[tokio::test]
async fn modes_choose_the_undocumented_answers() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let read = |names: Value| {
        post(
            &emulator,
            "get-secret-value",
            json!({"names": names, "token": token}),
        )
    };
    // Defaults: a missing name is 404, a non-static one 400.
    let (status, _) = read(json!(["/demo/top", "/demo/gone"])).await;
    assert_eq!(status, 404);
    let (status, _) = read(json!(["/demo/top", "/demo/dyn/db"])).await;
    assert_eq!(status, 400);

    // Through the control API, as a separate process would be steered.
    let (status, _) = post(
        &emulator,
        "__emulator/modes",
        json!({"missing_name": "omitted", "not_static": "not_found"}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = read(json!(["/demo/top", "/demo/gone"])).await;
    assert_eq!((status, body), (200, json!({"/demo/top": "top-level"})));
    let (status, _) = read(json!(["/demo/top", "/demo/dyn/db"])).await;
    assert_eq!(status, 404);
    emulator.set_modes(Modes {
        not_static: Answer::Omitted,
        ..Modes::default()
    });
    let (status, body) = read(json!(["/demo/top", "/demo/dyn/db"])).await;
    assert_eq!((status, body), (200, json!({"/demo/top": "top-level"})));
    let modes: Value = client()
        .get(format!("{}/__emulator/modes", emulator.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(modes["not_static"], "omitted");
    let (status, _) = post(&emulator, "__emulator/modes", json!({"unknown": true})).await;
    assert_eq!(status, 400);

    // Pages even under auto-pagination, followed by next_page.
    emulator.set_modes(Modes {
        always_paginate: true,
        ..Modes::default()
    });
    let mut listed = Vec::new();
    let mut page = String::new();
    loop {
        let (status, body) = post(
            &emulator,
            "list-items",
            json!({"path": "/demo", "auto-pagination": "enabled", "token": token, "pagination-token": page}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(body["items"].as_array().unwrap().len() <= 2);
        listed.extend(names(&body).into_iter().map(str::to_owned));
        page = body["next_page"].as_str().unwrap().to_owned();
        if page.is_empty() {
            break;
        }
    }
    assert_eq!(listed.len(), 5, "{listed:?}");
}

#[tokio::test]
async fn after_faults_lose_the_answer_of_work_done() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    let issue = || {
        client()
            .post(format!("{}/get-dynamic-secret-value", emulator.url()))
            .json(&json!({"name": "/demo/dyn/db", "token": token}))
            .timeout(Duration::from_millis(500))
            .send()
    };
    emulator.add_fault(
        Fault::new(FaultKind::ResetAfter)
            .on("get-dynamic-secret-value")
            .times(1),
    );
    assert!(issue().await.is_err());
    assert_eq!(
        emulator.leases_minted("/demo/dyn/db"),
        1,
        "issued, answer lost"
    );
    emulator.add_fault(
        Fault::new(FaultKind::DelayAfter { ms: 2_000 })
            .on("get-dynamic-secret-value")
            .times(1),
    );
    assert!(issue().await.unwrap_err().is_timeout());
    assert_eq!(emulator.leases_minted("/demo/dyn/db"), 2);
    assert_eq!(issue().await.unwrap().status(), 200);
}

#[tokio::test]
async fn a_slow_producer_is_waited_for_up_to_the_request_timeout() {
    let emulator = emulator().await;
    let token = login(&emulator, DEMO_ID, DEMO_KEY).await;
    emulator.set_modes(Modes {
        producer_delay_ms: 1_200,
        ..Modes::default()
    });
    let issue = |timeout: u64| {
        post(
            &emulator,
            "get-dynamic-secret-value",
            json!({"name": "/demo/dyn/db", "token": token, "timeout": timeout}),
        )
    };
    let (status, body) = issue(1).await;
    assert_eq!(status, 500, "{body}");
    assert!(error_text(&body).contains("within 1s"), "{body}");
    assert_eq!(emulator.leases_minted("/demo/dyn/db"), 0);
    let (status, body) = issue(2).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(emulator.leases_minted("/demo/dyn/db"), 1);
    // The work finishes even when the client has left.
    let gone = client()
        .post(format!("{}/get-dynamic-secret-value", emulator.url()))
        .json(&json!({"name": "/demo/dyn/db", "token": token}))
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gone.is_err());
    let waited = Instant::now();
    while emulator.leases_minted("/demo/dyn/db") < 2 {
        assert!(waited.elapsed() < Duration::from_secs(30), "never minted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
