//! The developer commands as a user runs them: `mount` against a running provider, and the
//! `emulator` as its own process.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_akeyless-csi-provider");

#[tokio::test]
async fn mount_writes_the_files_and_prints_versions() {
    let h = Harness::start(seed(2)).await;
    let spc = h.dir.path().join("spc.yaml");
    std::fs::write(
        &spc,
        format!(
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  provider: akeyless\n  parameters:\n    akeylessGatewayURL: \"{}\"\n    akeylessAccessID: \"{ACCESS_ID}\"\n    objects: |\n      - secretPath: /e2e/item-0\n        fileName: a/zero\n        filePermission: \"0400\"\n      - secretPath: /e2e/item-1\n        fileName: one\n",
            h.akeyless.url()
        ),
    )
    .unwrap();
    let secret = h.dir.path().join("secret.yaml");
    std::fs::write(
        &secret,
        format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  akeylessAccessKey: \"{ACCESS_KEY}\"\n"),
    )
    .unwrap();
    let out = h.dir.path().join("out");
    let (socket, spc2, secret2, out2) =
        (h.socket.clone(), spc.clone(), secret.clone(), out.clone());
    let output = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("mount")
            .arg("--socket")
            .arg(&socket)
            .arg("--spc")
            .arg(&spc2)
            .arg("--secret-file")
            .arg(&secret2)
            .arg("--out")
            .arg(&out2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("a/zero:/e2e/item-0"), "{stdout}");
    assert_eq!(
        std::fs::read(out.join("a/zero")).unwrap(),
        secret_value(0).into_bytes()
    );
    let mode = std::fs::metadata(out.join("a/zero"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o400);
    assert_eq!(
        std::fs::read(out.join("one")).unwrap(),
        secret_value(1).into_bytes()
    );

    // Without the Secret the mount is refused, and the exit code says so.
    let socket = h.socket.clone();
    let refused = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("mount")
            .arg("--socket")
            .arg(&socket)
            .arg("--spc")
            .arg(&spc)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("akeylessAccessKey: missing"));
}

#[test]
fn the_emulator_runs_as_its_own_process() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut child = Command::new(BIN)
        .args(["emulator", "--listen", &addr.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let result = runtime.block_on(async {
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let auth = http
                .post(format!("http://{addr}/auth"))
                .json(&serde_json::json!({"access-id": "p-demo0000000001", "access-type": "access_key", "access-key": "demo-access-key-not-secret"}))
                .send()
                .await;
            match auth {
                Ok(response) => break response.json::<serde_json::Value>().await,
                Err(_) if started.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("the emulator never answered: {e}"),
            }
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    let body = result.unwrap();
    assert!(body["token"].as_str().unwrap().starts_with("t-"), "{body}");
}

#[tokio::test]
async fn version_prints_the_binary_and_asks_a_provider_on_its_socket() {
    let h = Harness::start(seed(1)).await;
    let socket = h.socket.clone();
    let (own, asked, missing) = tokio::task::spawn_blocking(move || {
        let run = |args: &[&std::ffi::OsStr]| {
            Command::new(BIN)
                .arg("version")
                .args(args)
                .output()
                .unwrap()
        };
        let dir = socket.parent().unwrap().join("nothing-here.sock");
        (
            run(&[]),
            run(&["--socket".as_ref(), socket.as_os_str()]),
            run(&[
                "--socket".as_ref(),
                dir.as_os_str(),
                "--timeout".as_ref(),
                "1s".as_ref(),
            ]),
        )
    })
    .await
    .unwrap();
    let text = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(own.status.success());
    assert!(
        text(&own).starts_with(&format!(
            "akeyless-csi-provider {} (linux",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        text(&own)
    );
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    assert!(
        text(&asked).contains("(API v1alpha1) at "),
        "{}",
        text(&asked)
    );
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("did not answer Version")
            || String::from_utf8_lossy(&missing.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
}
