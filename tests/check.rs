//! `akeyless-csi-provider check` as users and pipelines run it: the real binary on files and on
//! stdin, its exit codes and JSON, the project's own examples, and the promise that it says what
//! the provider says (messages from a real mount, calls counted by the emulator).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use common::harness::*;

const BIN: &str = env!("CARGO_BIN_EXE_akeyless-csi-provider");

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .arg("check")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("check runs");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn json(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Every finding of a JSON report: (severity, field, line, message).
fn findings(report: &Value) -> Vec<(String, String, Option<u64>, String)> {
    report["files"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| f["documents"].as_array().unwrap())
        .flat_map(|d| d["findings"].as_array().unwrap())
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_owned(),
                f["field"].as_str().unwrap().to_owned(),
                f["line"].as_u64(),
                f["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Mounts `spc` through the harness's provider as the driver would, for pod `uid`.
async fn mount_spc(h: &Harness, spc: &str, uid: &str) -> Result<(), tonic::Status> {
    let secrets = BTreeMap::from([("akeylessAccessKey".to_owned(), ACCESS_KEY.to_owned())]);
    let pod = akeyless_csi_provider::mount_cli::PodIdentity {
        namespace: None,
        name: "web-1".to_owned(),
        uid: uid.to_owned(),
        service_account: "web".to_owned(),
    };
    let request = akeyless_csi_provider::mount_cli::build_request(
        spc,
        Path::new("spc.yaml"),
        &pod,
        &secrets,
        None,
        &BTreeMap::new(),
    )
    .unwrap();
    h.mount(request).await.map(|_| ())
}

const BAD: &str = r#"apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: web
  namespace: shop
spec:
  provider: akeyless
  parameters:
    akeylessAcessID: "p-123"
    akeylessAccessType: "magic"
    version: 3
    objects: |
      - secretPath: /a
        fileName: x
      - secretPath: /b
        filename: b
      - secretPath: /c
        fileName: x
      - secretPath: /d
        type: pki
    secretSync: |
      - target: {name: Bad_Name}
        dataFrom:
          - extract: {key: /a}
  secretObjects:
    - secretName: s
      type: Opaque
      data:
        - {objectName: nope, key: k}
---
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata: {name: synced, namespace: shop}
spec:
  provider: akeyless
  parameters:
    akeylessAccessID: "p-1"
    akeylessAccessType: "jwt"
    akeylessAWSRoleARN: "arn:aws:iam::123456789012:role/web"
    objects: |
      - {secretPath: /a, fileName: a}
  secretObjects:
    - secretName: s
      type: Opaque
      data:
        - {objectName: nope, key: k}
"#;

#[test]
fn every_example_checks_clean() {
    let mut files = Vec::new();
    for dir in ["examples", "deploy/examples"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if text.contains("kind: SecretProviderClass") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 10, "examples found: {files:?}");
    let args: Vec<&str> = files.iter().map(|p| p.to_str().unwrap()).collect();
    let output = check(&[&["-o", "json"], args.as_slice()].concat(), None);
    let report = json(&output);
    let errors: Vec<_> = findings(&report)
        .into_iter()
        .filter(|f| f.0 == "error")
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(output.status.code(), Some(0));
    for file in report["files"].as_array().unwrap() {
        let checked = file["documents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["kind"] == "SecretProviderClass" && d.get("skipped").is_none())
            .count();
        assert!(checked >= 1, "{}: no SPC checked", file["file"]);
    }
}

#[test]
fn every_problem_at_once_with_field_line_and_exit_code_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, BAD).unwrap();
    let output = check(&["--output", "json", path.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(1));
    let all = findings(&json(&output));
    let find = |needle: &str| {
        all.iter()
            .find(|f| f.3.contains(needle))
            .unwrap_or_else(|| panic!("no finding {needle:?} in {all:#?}"))
    };
    let typo = find("akeylessAcessID: unknown parameter");
    assert!(
        typo.3.contains("did you mean akeylessAccessID?"),
        "{typo:?}"
    );
    assert_eq!(
        (typo.1.as_str(), typo.2),
        ("spec.parameters.akeylessAcessID", Some(9))
    );
    assert_eq!(find("version: is a number").2, Some(11));
    assert_eq!(find("akeylessAccessType: \"magic\"").2, Some(10));
    let unknown = find("objects[1] (/b): unknown field `filename`");
    assert_eq!(
        (unknown.1.as_str(), unknown.2),
        ("spec.parameters.objects[1]", Some(15)),
        "the line of the entry inside the block"
    );
    assert_eq!(
        find("objects[3] (/d): type: pki needs commonName").2,
        Some(19)
    );
    find("fileName \"x\" is used by both /a and /c");
    let sync = find("secretSync[0] (Bad_Name): target.name must be a Secret name");
    assert_eq!(sync.2, Some(22));
    let object = find("objectName \"nope\" is not a file of this volume");
    assert_eq!(
        (object.1.as_str(), object.2),
        ("spec.secretObjects[0].data[0].objectName", Some(46))
    );
    assert!(
        all.iter()
            .any(|f| f.0 == "note" && f.3.contains("--sync-secrets")),
        "{all:#?}"
    );
    let other_type = find("akeylessAWSRoleARN: applies to akeylessAccessType aws_iam only");
    assert_eq!(other_type.2, Some(39), "{other_type:?}");

    // The same, for people: file:line: severity: the SPC: the message.
    let text = check(&[path.to_str().unwrap()], None);
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains(&format!(
            "{}:15: error: SecretProviderClass shop/web: objects[1] (/b): unknown field `filename`",
            path.display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 SecretProviderClasses checked in 1 file"),
        "{stdout}"
    );
}

#[test]
fn unreadable_input_exits_2() {
    let output = check(&["/nonexistent/spc.yaml"], None);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("cannot read it"));
    let output = check(&["-"], Some("kind: [unclosed\n"));
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stdout).contains("<stdin>: unreadable: not YAML"));
    // A problem in a readable file does not hide the unreadable one.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, BAD).unwrap();
    let output = check(&[bad.to_str().unwrap(), "/nonexistent/spc.yaml"], None);
    assert_eq!(output.status.code(), Some(2));
}

/// What `kubectl kustomize` or `helm template` prints: many kinds, one stream, on stdin.
#[test]
fn a_rendered_stream_on_stdin_checks_only_akeyless_spcs() {
    let spc = std::fs::read_to_string(root().join("deploy/examples/access-key.yaml")).unwrap();
    let stream = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n---\n{spc}---\n\
         apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata:\n  name: vault-db\n  namespace: shop\nspec:\n  provider: vault\n  parameters:\n    roleName: db\n---\n\
         apiVersion: v1\nkind: List\nitems:\n- apiVersion: secrets-store.csi.x-k8s.io/v1\n  kind: SecretProviderClass\n  metadata: {{name: listed, namespace: shop}}\n  spec:\n    provider: akeyless\n    parameters:\n      objects: |\n        - secretPath: /a\n          fileName: a\n          typo: 1\n\
         - apiVersion: secrets-store.csi.x-k8s.io/v1\n  kind: SecretProviderClass\n  metadata: {{name: provider-identity, namespace: shop}}\n  spec:\n    provider: akeyless\n    parameters:\n      objects: \"- secretPath: /a\"\n"
    );
    let output = check(&["-o", "json", "-"], Some(&stream));
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report:#}");
    let docs = report["files"][0]["documents"].as_array().unwrap();
    let summary: Vec<(String, bool)> = docs
        .iter()
        .map(|d| {
            (
                format!(
                    "{} {}",
                    d["kind"].as_str().unwrap(),
                    d["name"].as_str().unwrap()
                ),
                d.get("skipped").is_some(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("Namespace shop".to_owned(), true),
            (
                "SecretProviderClass shop/akeyless-access-key".to_owned(),
                false
            ),
            ("Secret shop/akeyless-creds".to_owned(), true),
            ("SecretProviderClass shop/vault-db".to_owned(), true),
            ("SecretProviderClass shop/listed".to_owned(), false),
            (
                "SecretProviderClass shop/provider-identity".to_owned(),
                false
            ),
        ]
    );
    assert!(docs[3]["skipped"].as_str().unwrap().contains("\"vault\""));
    let errors: Vec<_> = findings(&report)
        .into_iter()
        .filter(|f| f.0 == "error")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].3.contains("unknown field `typo`"), "{errors:#?}");
    assert_eq!(errors[0].2, Some(56), "the line in the stream");
    // The SPC without an access id relies on the provider's own identity: a note, not an error.
    assert!(
        findings(&report)
            .iter()
            .any(|f| f.0 == "note" && f.3.contains("provider's own identity"))
    );
}

/// Check and provider share their parsers: a bad SPC mounted through the real provider fails
/// with exactly the problems `check` lists.
#[tokio::test]
async fn check_says_what_the_provider_says() {
    let h = Harness::start(seed(2)).await;
    // The first SPC of BAD, with an access id and without what only the manifest shows.
    let first = BAD.split("\n---\n").next().unwrap();
    let spc = first
        .replace("    akeylessAcessID: \"p-123\"\n", &format!("    akeylessAccessID: \"{ACCESS_ID}\"\n"))
        .replace("    version: 3\n", "")
        .replace("    secretSync: |\n      - target: {name: Bad_Name}\n        dataFrom:\n          - extract: {key: /a}\n", "");
    let path = h.dir.path().join("spc.yaml");
    std::fs::write(&path, &spc).unwrap();
    let report = json(&check(&["-o", "json", path.to_str().unwrap()], None));
    let problems: Vec<String> = findings(&report)
        .into_iter()
        .filter(|f| f.0 == "error" && f.1.starts_with("spec.parameters"))
        .map(|f| f.3)
        .collect();
    assert!(problems.len() >= 4, "{problems:#?}");

    let status = mount_spc(&h, &spc, "3f1c2e9a-0000-4000-8000-000000000009")
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for problem in &problems {
        assert!(
            status.message().contains(problem.as_str()),
            "the provider did not say {problem:?}:\n{}",
            status.message()
        );
    }
}

/// `--plan` lists the calls the fetch stage makes: counted by the emulator on a real mount.
#[tokio::test]
async fn the_plan_is_what_a_mount_does() {
    let h = Harness::start(seed(3)).await;
    let objects = "      - {secretPath: /e2e/item-0, type: static}\n      - {secretPath: /e2e/item-1, type: static, fileName: one}\n      - {secretPath: /e2e/versioned, type: static, version: 1, fileName: v1}\n      - {secretPath: /e2e/item-2, fileName: two}\n      - {secretPath: /e2e/json, fileName: j, property: port}\n";
    let spc = format!(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {{name: planned, namespace: shop}}\nspec:\n  provider: akeyless\n  parameters:\n    akeylessGatewayURL: \"{}\"\n    akeylessAccessID: \"{ACCESS_ID}\"\n    objects: |\n{objects}",
        h.akeyless.url()
    );
    let path = h.dir.path().join("spc.yaml");
    std::fs::write(&path, &spc).unwrap();
    let output = check(&["--plan", "-o", "json", path.to_str().unwrap()], None);
    assert_eq!(output.status.code(), Some(0));
    let report = json(&output);
    let plan = &report["files"][0]["documents"][0]["plan"];
    let calls: Vec<(String, Vec<String>)> = plan["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["command"].as_str().unwrap().to_owned(),
                c["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect();
    let count = |command: &str| calls.iter().filter(|c| c.0 == command).count() as u64;
    assert_eq!(count("describe-item"), 2, "{calls:?}");
    assert_eq!(
        count("get-secret-value"),
        2,
        "latest and version 1: {calls:?}"
    );
    assert_eq!(plan["identity"]["proof"], "access key");
    let files: Vec<&str> = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["item-0", "one", "v1", "two", "j"]);

    mount_spc(&h, &spc, "3f1c2e9a-0000-4000-8000-00000000000a")
        .await
        .expect("mounted");
    assert_eq!(h.akeyless.calls("/auth"), 1);
    assert_eq!(h.akeyless.calls("/describe-item"), count("describe-item"));
    // The described items are static: they join the batches the plan lists.
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        count("get-secret-value")
    );
}
