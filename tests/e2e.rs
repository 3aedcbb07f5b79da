//! End to end: the emulator, the real `serve` binary on a unix socket, and a tonic client
//! calling it exactly as the Secrets Store CSI driver does.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use akeyless_csi_provider::emulator::{Fault, FaultKind};
use akeyless_csi_provider::proto::v1alpha1::{MountResponse, VersionRequest};
use common::harness::*;
use tonic::Code;

fn files(response: &MountResponse) -> BTreeMap<String, (i32, Vec<u8>)> {
    response
        .files
        .iter()
        .map(|f| (f.path.clone(), (f.mode, f.contents.clone())))
        .collect()
}

#[tokio::test]
async fn version_answers_and_the_socket_is_owner_only() {
    let h = Harness::start(seed(1)).await;
    let mode = std::fs::metadata(&h.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut client = akeyless_csi_provider::mount_cli::connect(&h.socket)
        .await
        .unwrap();
    let v = client
        .version(VersionRequest {
            version: "v1alpha1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.version, "v1alpha1");
    assert_eq!(v.runtime_name, "akeyless-csi-provider");
    assert_eq!(v.runtime_version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn n_objects_cost_one_batched_read_and_a_second_mount_no_login() {
    const N: usize = 12;
    let mut h = Harness::start(seed(N)).await;
    let mut objects = objects(N);
    objects.push_str("- secretPath: /e2e/json\n  fileName: conf/db-user\n  property: db.user\n  filePermission: \"0440\"\n");
    objects.push_str("- secretPath: /e2e/json\n  fileName: conf/db.json\n");
    objects.push_str("- secretPath: /e2e/b64\n  fileName: bin/blob\n  encoding: base64\n  filePermission: \"0400\"\n");
    let req = go_style_request(&objects);

    let first = h.mount(req.clone()).await.expect("mount");
    let got = files(&first);
    assert_eq!(got.len(), N + 3, "the complete file set");
    for i in 0..N {
        assert_eq!(
            got[&format!("file-{i}")],
            (0o644, secret_value(i).into_bytes()),
            "file-{i} has the value and the default mode"
        );
    }
    assert_eq!(got["conf/db-user"], (0o440, b"app".to_vec()));
    assert!(String::from_utf8_lossy(&got["conf/db.json"].1).contains("json-secret-77aa"));
    assert_eq!(got["bin/blob"], (0o400, b"hello binary world".to_vec()));
    let v1 = versions(&first);
    assert_eq!(v1.len(), N + 3, "one version per object");
    assert!(v1.contains_key("file-0:/e2e/item-0"));
    assert!(
        v1.values()
            .all(|v| !v.is_empty() && !v.contains("SECRETMARK"))
    );

    assert_eq!(h.akeyless.calls("/auth"), 1);
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "one batched read for every object"
    );
    // The objects declare no `type`: each item's type is asked once (issue 4), then remembered.
    assert_eq!(h.akeyless.calls("/describe-item"), N as u64 + 2);

    // A rotation poll: cached token and types, same versions.
    let second = h.mount(req.clone()).await.expect("second mount");
    assert_eq!(h.akeyless.calls("/auth"), 1, "the token is reused");
    assert_eq!(h.akeyless.calls("/get-secret-value"), 2);
    assert_eq!(
        h.akeyless.calls("/describe-item"),
        N as u64 + 2,
        "types are not asked again"
    );
    assert_eq!(
        versions(&second),
        v1,
        "versions are stable while content is unchanged"
    );

    // A rotated item changes its version only.
    h.akeyless
        .put_secret("/e2e/item-3", "rotated-value-SECRETMARK");
    let third = h.mount(req.clone()).await.expect("third mount");
    let v3 = versions(&third);
    for (id, version) in &v1 {
        if id == "file-3:/e2e/item-3" {
            assert_ne!(&v3[id], version, "{id} changed");
        } else {
            assert_eq!(&v3[id], version, "{id} did not change");
        }
    }
    assert_eq!(files(&third)["file-3"].1, b"rotated-value-SECRETMARK");

    // Versions survive a provider restart (the key file persists beside the socket).
    assert_eq!(h.stop_provider().await, Some(0));
    assert!(!h.socket.exists(), "the socket is removed on shutdown");
    h.spawn_provider().await;
    let after_restart = h.mount(req).await.expect("mount after restart");
    assert_eq!(versions(&after_restart), v3);
}

#[tokio::test]
async fn pinned_versions_and_gateway_url_from_the_spc() {
    let h = Harness::start(seed(1)).await;
    let url = h.akeyless.url();
    let objects = "- secretPath: /e2e/versioned\n  fileName: latest\n- secretPath: /e2e/versioned\n  fileName: first\n  version: 1\n";
    let req = request(
        &[
            ("akeylessGatewayURL", &url),
            ("akeylessAccessID", ACCESS_ID),
            ("objects", objects),
            ("akeylessAccessKey", ACCESS_KEY),
        ],
        None,
    );
    let response = h.mount(req).await.expect("mount");
    let got = files(&response);
    assert_eq!(got["latest"].1, b"versioned-two-2b");
    assert_eq!(got["first"].1, b"versioned-one-1a");
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        2,
        "one read per distinct version"
    );
}

#[tokio::test]
async fn invalid_inputs_are_refused_and_the_daemon_keeps_serving() {
    let mut h = Harness::start(seed(2)).await;
    let good = go_style_request(&objects(2));
    let cases: Vec<(
        &str,
        akeyless_csi_provider::proto::v1alpha1::MountRequest,
        &[&str],
    )> = vec![
        (
            "unknown access type",
            request(
                &[
                    ("akeylessAccessID", ACCESS_ID),
                    ("akeylessAccessType", "telepathy"),
                    ("objects", &objects(1)),
                ],
                Some(&[("akeylessAccessKey", ACCESS_KEY)]),
            ),
            &["akeylessAccessType", "telepathy"],
        ),
        (
            "no objects",
            request(
                &[("akeylessAccessID", ACCESS_ID)],
                Some(&[("akeylessAccessKey", ACCESS_KEY)]),
            ),
            &["objects: missing"],
        ),
        (
            "missing access id and key",
            request(&[("objects", &objects(1))], None),
            // Without an access id the provider's default identity would apply; it has none.
            &["akeylessAccessID: missing", "AKEYLESS_ACCESS_ID"],
        ),
        (
            "duplicate file names",
            go_style_request(
                "- secretPath: /e2e/item-0\n  fileName: same\n- secretPath: /e2e/item-1\n  fileName: same\n",
            ),
            &["fileName \"same\" is used by both"],
        ),
        (
            "absolute file name",
            go_style_request("- secretPath: /e2e/item-0\n  fileName: /etc/passwd\n"),
            &["objects[0] (/e2e/item-0)", "absolute"],
        ),
        (
            "parent traversal",
            go_style_request("- secretPath: /e2e/item-0\n  fileName: a/../../b\n"),
            &["\"..\" element"],
        ),
        (
            "unclean path",
            go_style_request("- secretPath: /e2e/item-0\n  fileName: a//b\n"),
            &["not a clean path"],
        ),
        (
            "over-long element",
            go_style_request(&format!(
                "- secretPath: /e2e/item-0\n  fileName: {}\n",
                "n".repeat(256)
            )),
            &["longer than 255 bytes"],
        ),
        (
            "bad mode",
            go_style_request(
                "- secretPath: /e2e/item-0\n  fileName: a\n  filePermission: \"0888\"\n",
            ),
            &["filePermission \"0888\""],
        ),
        (
            "bad URL",
            request(
                &[
                    ("akeylessGatewayURL", "gw.example:8000"),
                    ("akeylessAccessID", ACCESS_ID),
                    ("objects", &objects(1)),
                ],
                Some(&[("akeylessAccessKey", ACCESS_KEY)]),
            ),
            &["akeylessGatewayURL"],
        ),
        (
            "bad YAML",
            go_style_request("- secretPath: /e2e/item-0\n  fileName: [unclosed\n"),
            &["objects: not a YAML list", "line 2"],
        ),
    ];
    for (what, req, needles) in cases {
        let status = h.mount(req).await.expect_err(what);
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{what}: {}",
            status.message()
        );
        for needle in needles {
            assert!(
                status.message().contains(needle),
                "{what}: {needle:?} not in {:?}",
                status.message()
            );
        }
        assert!(!status.message().contains(ACCESS_KEY));
        h.mount(good.clone())
            .await
            .unwrap_or_else(|s| panic!("after {what}: {s:?}"));
    }

    // A missing item: NotFound naming it; nothing else is returned.
    let missing = go_style_request(
        "- secretPath: /e2e/item-0\n  fileName: a\n- secretPath: /e2e/nope\n  fileName: b\n",
    );
    let status = h.mount(missing).await.expect_err("missing item");
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    assert!(
        status.message().contains("item /e2e/nope does not exist"),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("SecretProviderClass shop/e2e-spc"),
        "{}",
        status.message()
    );

    // A property that is not there: the object and the path are named.
    let bad_property =
        go_style_request("- secretPath: /e2e/json\n  fileName: x\n  property: db.nope\n");
    let status = h.mount(bad_property).await.expect_err("bad property");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("object x (/e2e/json): property \"db.nope\""),
        "{}",
        status.message()
    );

    assert!(h.provider_alive());
    h.mount(good).await.expect("still serving");
}

#[tokio::test]
async fn tokens_are_renewed_once_on_401_and_permissions_are_reported() {
    let h = Harness::start(seed(2)).await;
    let req = go_style_request(&objects(2));
    h.mount(req.clone()).await.expect("mount");
    assert_eq!(h.akeyless.calls("/auth"), 1);

    // The server forgets the token: one new login, and the mount still succeeds.
    h.akeyless.expire_tokens();
    h.mount(req.clone()).await.expect("mount after expiry");
    assert_eq!(h.akeyless.calls("/auth"), 2);

    // An item the identity may not read: 401 even after a fresh login → PermissionDenied.
    let denied = go_style_request("- secretPath: /other/item\n  fileName: x\n");
    let status = h.mount(denied).await.expect_err("denied");
    assert_eq!(
        status.code(),
        Code::PermissionDenied,
        "{}",
        status.message()
    );
    assert!(status.message().contains(ACCESS_ID) && status.message().contains("/other/item"));

    // Wrong key: the login is rejected.
    let wrong = request(
        &[("akeylessAccessID", ACCESS_ID), ("objects", &objects(1))],
        Some(&[("akeylessAccessKey", "not-the-key-1234")]),
    );
    let status = h.mount(wrong).await.expect_err("wrong key");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    assert!(!status.message().contains("not-the-key-1234"));
}

#[tokio::test]
async fn transient_failures_are_retried_and_persistent_ones_reported() {
    let h = Harness::start(seed(2)).await;
    let req = go_style_request(&objects(2));
    h.akeyless.add_fault(Fault {
        endpoint: Some("/get-secret-value".into()),
        kind: FaultKind::Status {
            status: 503,
            retry_after_secs: None,
        },
        times: Some(1),
    });
    h.mount(req.clone()).await.expect("one 503 is retried");
    assert_eq!(h.akeyless.calls("/get-secret-value"), 2);

    h.akeyless.add_fault(Fault {
        endpoint: Some("/get-secret-value".into()),
        kind: FaultKind::Status {
            status: 500,
            retry_after_secs: None,
        },
        times: None,
    });
    let status = h.mount(req.clone()).await.expect_err("persistent 500");
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert!(
        status.message().contains("/e2e/item-0"),
        "{}",
        status.message()
    );
    h.akeyless.clear_faults();
    h.mount(req).await.expect("recovers");
}

#[tokio::test]
async fn a_hanging_backend_ends_inside_the_callers_deadline() {
    let h = Harness::start(seed(1)).await;
    let req = go_style_request(&objects(1));
    h.mount(req.clone()).await.expect("warm token");
    h.akeyless.add_fault(Fault {
        endpoint: Some("/get-secret-value".into()),
        kind: FaultKind::Delay { ms: 60_000 },
        times: None,
    });
    let started = Instant::now();
    let status = h
        .mount_with_timeout(req, Duration::from_secs(3))
        .await
        .expect_err("hangs");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered before the deadline"
    );
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("/e2e/item-0"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn logs_at_trace_level_hold_no_secret_material() {
    let mut h = Harness::start(seed(3)).await;
    let req = go_style_request(&format!(
        "{}- secretPath: /e2e/json\n  fileName: j\n  property: db.password\n",
        objects(3)
    ));
    h.mount(req.clone()).await.expect("mount");
    h.akeyless.expire_tokens();
    h.mount(req.clone()).await.expect("mount after re-login");
    let wrong = request(
        &[("akeylessAccessID", ACCESS_ID), ("objects", &objects(1))],
        Some(&[("akeylessAccessKey", "wrong-key-LEAKCHECK")]),
    );
    let _ = h.mount(wrong).await;
    assert_eq!(h.stop_provider().await, Some(0));

    let logs = h.logs();
    assert!(
        logs.contains(r#""outcome":"success""#),
        "the audit events were captured"
    );
    assert!(logs.lines().count() > 20, "trace level is on");
    for secret in [
        ACCESS_KEY,
        "wrong-key-LEAKCHECK",
        "SECRETMARK",
        "json-secret-77aa",
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
    assert!(
        !common::harness::has_token(&logs),
        "an Akeyless token leaked into the logs"
    );
}

#[tokio::test]
async fn the_demo_command_runs() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_akeyless-csi-provider"))
        .args(["demo", "--log-format", "text", "--log-level", "warn"])
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("versions unchanged: true"), "{stdout}");
    assert!(
        stdout.contains("CHANGED  db-password:/demo/db/password"),
        "{stdout}"
    );
    assert!(
        stdout.contains("item /demo/db/passwrd does not exist"),
        "{stdout}"
    );
}

#[tokio::test]
async fn sigterm_drains_in_flight_mounts_then_removes_the_socket() {
    let mut h = Harness::start(seed(1)).await;
    let req = go_style_request(&objects(1));
    h.mount(req.clone()).await.expect("warm token");
    // A mount reaches the (slow) backend, then the provider is asked to stop.
    let in_flight = h.slow_mount(req, Duration::from_millis(1500)).await;
    assert_eq!(h.stop_provider().await, Some(0));
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight mount completes during the drain");
    assert_eq!(files(&response)["file-0"].1, secret_value(0).into_bytes());
    assert!(!h.socket.exists(), "the socket is gone after shutdown");
}

#[tokio::test]
async fn a_crashed_providers_stale_socket_is_replaced() {
    let mut h = Harness::start(seed(1)).await;
    h.kill_provider();
    assert!(
        h.socket.exists(),
        "a killed provider leaves its socket behind"
    );
    h.spawn_provider().await;
    h.mount(go_style_request(&objects(1)))
        .await
        .expect("the restarted provider serves");
}
