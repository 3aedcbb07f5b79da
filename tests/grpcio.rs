//! The driver's view from another language: Python `grpcio` (C-core, like grpc-go in not being
//! hyper/h2) calls `Version` and `Mount` over the unix socket, with the HTTP/2 `:authority`
//! drivers up to v1.5.6 send (the raw socket path) and the one v1.6 sends (`localhost`).

mod common;

use common::harness::*;
use common::python::python_driver_client;
use serde_json::Value;

fn call(
    socket: &std::path::Path,
    authority: &str,
    method: &str,
    request: Option<&std::path::Path>,
) -> Value {
    let mut cmd = python_driver_client();
    cmd.arg("--socket").arg(socket).args([
        "--authority",
        authority,
        "--method",
        method,
        "--timeout",
        "60",
    ]);
    if let Some(file) = request {
        cmd.arg("--request").arg(file);
    }
    let output = cmd.output().expect("python runs");
    assert!(
        output.status.success(),
        "driver_client.py failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_clients_with_either_authority_mount_and_get_versions() {
    let h = Harness::start(seed(3)).await;
    let request = go_style_request(&objects(3));
    let request_file = h.dir.path().join("request.json");
    std::fs::write(
        &request_file,
        serde_json::json!({
            "attributes": request.attributes,
            "secrets": request.secrets,
            "target_path": request.target_path,
            "permission": request.permission,
        })
        .to_string(),
    )
    .unwrap();

    let socket_path = h.socket.to_string_lossy().into_owned();
    for authority in [socket_path.as_str(), "localhost"] {
        let socket = h.socket.clone();
        let file = request_file.clone();
        let auth = authority.to_owned();
        let (version, mount) = tokio::task::spawn_blocking(move || {
            (
                call(&socket, &auth, "Version", None),
                call(&socket, &auth, "Mount", Some(&file)),
            )
        })
        .await
        .unwrap();

        assert_eq!(
            version["ok"], true,
            "Version with :authority {authority}: {version}"
        );
        assert_eq!(version["response"]["version"], "v1alpha1");
        assert_eq!(version["response"]["runtime_name"], "akeyless-csi-provider");

        assert_eq!(
            mount["ok"], true,
            "Mount with :authority {authority}: {mount}"
        );
        let files = mount["response"]["files"].as_array().expect("files");
        assert_eq!(files.len(), 3);
        for (i, file) in files.iter().enumerate() {
            assert_eq!(file["path"], format!("file-{i}"));
            assert_eq!(file["mode"], 0o644);
            let contents = base64_decode(file["contents_b64"].as_str().unwrap());
            assert_eq!(contents, secret_value(i).into_bytes());
        }
        assert_eq!(
            mount["response"]["object_version"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }
    // Both clients were served by one login and one batched read each.
    assert_eq!(h.akeyless.calls("/auth"), 1);
    assert_eq!(h.akeyless.calls("/get-secret-value"), 2);

    // An invalid request answers INVALID_ARGUMENT through the adapter too.
    let bad = h.dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"attributes": "{\"objects\": \"- secretPath: /a\"}", "secrets": "null", "permission": "420"}"#,
    )
    .unwrap();
    let socket = h.socket.clone();
    let refused = tokio::task::spawn_blocking(move || {
        call(&socket, &socket.to_string_lossy(), "Mount", Some(&bad))
    })
    .await
    .unwrap();
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["code"], "INVALID_ARGUMENT");
    assert!(
        refused["details"]
            .as_str()
            .unwrap()
            .contains("akeylessAccessID: missing")
    );
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64")
}
