//! Every Akeyless item type and every output shape, end to end: the emulator serving the real
//! endpoints, the real `serve` binary on a unix socket, and a tonic client calling `Mount` as the
//! driver does.

mod common;

use std::collections::BTreeMap;

use akeyless_csi_provider::emulator::Seed;
use akeyless_csi_provider::proto::v1alpha1::{MountRequest, MountResponse};
use aws_lc_rs::signature::{self, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::harness::*;
use tonic::Code;
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const FOLDER_ITEMS: usize = 50;
const SSH_USER_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnM0bWmN2mB3mHq0m3QmJ0yq5p1cK0s9mXWkq3Kc1fA deploy@laptop";

fn seed() -> Seed {
    let mut yaml = format!(
        "token_ttl_seconds: 900\nauth_methods:\n  - access_id: {ACCESS_ID}\n    access_type: access_key\n    access_key: \"{ACCESS_KEY}\"\n    read: [\"/items/*\"]\nitems:\n"
    );
    yaml.push_str(
        r#"  - name: /items/text
    value: "plain-text-value-1"
  - name: /items/json
    format: json
    value: '{"db":{"user":"app","hosts":["a","b"]},"a.b":"dotted","n":5}'
  - name: /items/kv
    format: key-value
    value: '{"API_KEY":"kv-api-key","REGION":"eu"}'
  - name: /items/password
    format: password
    value: '{"username":"svc","password":"pw-secret-9"}'
  - name: /items/hex
    value: "68657820776f726c64"
  - name: /items/dyn
    type: dynamic-secret
    ttl_seconds: 3600
  - name: /items/dyn-wrapped
    type: dynamic-secret
    wrapped: true
  - name: /items/rotated
    type: rotated-secret
    value: '{"username":"rot-user","password":"rot-pass-1"}'
  - name: /items/cert
    type: certificate
    common_name: web.example.internal
  - name: /items/pki
    type: pki-cert-issuer
    max_ttl_seconds: 86400
  - name: /items/ssh
    type: ssh-cert-issuer
    allowed_users: [deploy]
  - name: /items/weird/a b
    value: "space"
  - name: /items/weird/a_b
    value: "underscore"
  - name: /items/weird/..x
    value: "dots"
  - name: /items/folder/sub/deep
    value: "deep-value"
  - name: /items/folder/dyn
    type: dynamic-secret
"#,
    );
    for i in 0..FOLDER_ITEMS {
        yaml.push_str(&format!(
            "  - name: /items/folder/item-{i:02}\n    value: \"folder-value-{i}\"\n"
        ));
    }
    Seed::from_yaml(&yaml).expect("items seed parses")
}

/// A driver request for `objects` from pod `uid` (its own volume path).
fn pod_request(objects: &str, uid: &str) -> MountRequest {
    let mut req = request(
        &[
            ("akeylessAccessID", ACCESS_ID),
            ("objects", objects),
            ("csi.storage.k8s.io/pod.uid", uid),
        ],
        Some(&[("akeylessAccessKey", ACCESS_KEY)]),
    );
    req.target_path =
        format!("/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/secrets/mount");
    req
}

fn mount_request(objects: &str) -> MountRequest {
    pod_request(objects, "0d9a6c3e-1111-4000-8000-000000000001")
}

fn files(response: &MountResponse) -> BTreeMap<String, String> {
    response
        .files
        .iter()
        .map(|f| {
            (
                f.path.clone(),
                String::from_utf8_lossy(&f.contents).into_owned(),
            )
        })
        .collect()
}

fn certificates(pem: &str) -> Vec<Vec<u8>> {
    Pem::iter_from_buffer(pem.as_bytes())
        .map(|b| b.expect("valid PEM"))
        .filter(|b| b.label == "CERTIFICATE")
        .map(|b| b.contents)
        .collect()
}

/// The public key bits of a PKCS#8 PEM key, computed independently of the provider.
fn key_public(pem: &str) -> Vec<u8> {
    let block = Pem::iter_from_buffer(pem.as_bytes())
        .map(|b| b.expect("valid PEM"))
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .expect("a private key block");
    signature::EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &block.contents)
        .map(|k| k.public_key().as_ref().to_vec())
        .or_else(|_| {
            signature::RsaKeyPair::from_pkcs8(&block.contents)
                .map(|k| k.public_key().as_ref().to_vec())
        })
        .expect("a P-256 or RSA key")
}

/// Reads PROTOCOL.certkeys strings.
struct Cursor<'a> {
    blob: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn string(&mut self) -> &'a [u8] {
        let len = u32::from_be_bytes(self.blob[self.at..self.at + 4].try_into().unwrap()) as usize;
        let s = &self.blob[self.at + 4..self.at + 4 + len];
        self.at += 4 + len;
        s
    }
}

fn spki(der: &[u8]) -> Vec<u8> {
    let (_, cert) = X509Certificate::from_der(der).expect("X.509");
    cert.public_key().subject_public_key.data.to_vec()
}

#[tokio::test]
async fn static_formats_properties_and_encodings_with_types_asked_once() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/text
- secretPath: /items/json
  fileName: db-user
  property: db.user
- secretPath: /items/json
  fileName: second-host
  property: db.hosts[1]
- secretPath: /items/json
  fileName: dotted
  property: a.b
- secretPath: /items/kv
  fileName: api-key
  property: API_KEY
- secretPath: /items/password
  fileName: password
  property: password
- secretPath: /items/hex
  fileName: hex
  encoding: hex
  type: static
";
    let first = h.mount(mount_request(objects)).await.expect("mount");
    let got = files(&first);
    assert_eq!(got["text"], "plain-text-value-1");
    assert_eq!(got["db-user"], "app");
    assert_eq!(got["second-host"], "b");
    assert_eq!(got["dotted"], "dotted");
    assert_eq!(got["api-key"], "kv-api-key");
    assert_eq!(got["password"], "pw-secret-9");
    assert_eq!(got["hex"], "hex world");
    // Four undeclared items (three objects read /items/json), each described once; the
    // declared one is not.
    assert_eq!(h.akeyless.calls("/describe-item"), 4);
    assert_eq!(h.akeyless.calls("/get-secret-value"), 1, "one batched read");

    let second = h.mount(mount_request(objects)).await.expect("second mount");
    assert_eq!(
        h.akeyless.calls("/describe-item"),
        4,
        "types are remembered"
    );
    assert_eq!(h.akeyless.calls("/get-secret-value"), 2);
    assert_eq!(versions(&first), versions(&second));

    let err = h
        .mount(mount_request(
            "- secretPath: /items/json\n  property: db.nope\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("/items/json") && err.message().contains("db.nope"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_dynamic_secret_is_one_lease_per_pod_volume() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/dyn
  type: dynamic
  fileName: creds.json
- secretPath: /items/dyn
  type: dynamic
  fileName: password
  property: password
";
    let mut seen = None;
    for _ in 0..10 {
        let r = h.mount(mount_request(objects)).await.expect("mount");
        let got = files(&r);
        let creds: serde_json::Value = serde_json::from_str(&got["creds.json"]).unwrap();
        assert_eq!(
            creds["password"].as_str().unwrap(),
            got["password"],
            "one lease for both files"
        );
        let version = versions(&r)["creds.json:/items/dyn"].clone();
        assert!(version.starts_with("lease-"), "{version}");
        match &seen {
            None => seen = Some((got, version)),
            Some((files, v)) => {
                assert_eq!(files, &got, "the same credentials on every poll");
                assert_eq!(v, &version);
            }
        }
    }
    assert_eq!(
        h.akeyless.leases_minted("/items/dyn"),
        1,
        "10 polls, 1 lease"
    );

    let mut passwords = std::collections::BTreeSet::new();
    for pod in 0..10 {
        let uid = format!("5e5e5e5e-2222-4000-8000-{pod:012}");
        let r = h.mount(pod_request(objects, &uid)).await.expect("mount");
        passwords.insert(files(&r)["password"].clone());
    }
    assert_eq!(
        h.akeyless.leases_minted("/items/dyn"),
        11,
        "10 more pods, 10 more leases"
    );
    assert_eq!(passwords.len(), 10, "each pod has its own credentials");

    // The wrapped shape ({"value": "<json>", "error": ""}) reads the same, type undeclared.
    let r = h
        .mount(mount_request(
            "- secretPath: /items/dyn-wrapped\n  property: user\n",
        ))
        .await
        .expect("wrapped");
    assert!(!files(&r)["dyn-wrapped"].is_empty());
    assert_eq!(h.akeyless.leases_minted("/items/dyn-wrapped"), 1);
}

#[tokio::test]
async fn rotated_secrets_give_their_value_or_one_property() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/rotated
  type: rotated
  fileName: rotated.json
- secretPath: /items/rotated
  fileName: rotated-password
  property: password
";
    let r = h.mount(mount_request(objects)).await.expect("mount");
    let got = files(&r);
    let value: serde_json::Value = serde_json::from_str(&got["rotated.json"]).unwrap();
    assert_eq!(value["username"], "rot-user");
    assert_eq!(got["rotated-password"], "rot-pass-1");
    assert_eq!(
        h.akeyless.calls("/get-rotated-secret-value"),
        1,
        "one read for both objects"
    );

    h.akeyless.put_secret(
        "/items/rotated",
        r#"{"username":"rot-user","password":"rot-pass-2"}"#,
    );
    let after = h
        .mount(mount_request(objects))
        .await
        .expect("after rotation");
    assert_eq!(files(&after)["rotated-password"], "rot-pass-2");
    assert_ne!(
        versions(&r)["rotated-password:/items/rotated"],
        versions(&after)["rotated-password:/items/rotated"]
    );
}

#[tokio::test]
async fn stored_certificates_as_a_bundle_or_cert_key_chain_files() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/cert
  type: certificate
  fileName: bundle.pem
- secretPath: /items/cert
  type: certificate
  certFile: tls/tls.crt
  keyFile: tls/tls.key
  chainFile: tls/ca.crt
  filePermission: \"0400\"
- secretPath: /items/cert
  fileName: go-provider.json
";
    let r = h.mount(mount_request(objects)).await.expect("mount");
    let got = files(&r);

    let bundle = certificates(&got["bundle.pem"]);
    assert_eq!(bundle.len(), 2, "leaf and intermediate");
    let (_, leaf) = X509Certificate::from_der(&bundle[0]).unwrap();
    let cn = leaf
        .subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(cn, "web.example.internal", "the leaf comes first");
    assert_eq!(
        key_public(&got["bundle.pem"]),
        spki(&bundle[0]),
        "the bundle's key is the leaf's"
    );

    let cert = certificates(&got["tls/tls.crt"]);
    assert_eq!(cert, bundle[..1].to_vec(), "tls.crt holds the leaf only");
    assert_eq!(
        key_public(&got["tls/tls.key"]),
        spki(&cert[0]),
        "tls.key matches tls.crt"
    );
    let chain = certificates(&got["tls/ca.crt"]);
    assert_eq!(chain, bundle[1..].to_vec());
    let (_, intermediate) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        leaf.issuer().as_raw(),
        intermediate.subject().as_raw(),
        "the chain issues the leaf"
    );
    let root = certificates(&h.akeyless.certificate_root_pem("/items/cert").unwrap());
    let (_, root) = X509Certificate::from_der(&root[0]).unwrap();
    assert_eq!(intermediate.issuer().as_raw(), root.subject().as_raw());
    let modes: BTreeMap<_, _> = r.files.iter().map(|f| (f.path.clone(), f.mode)).collect();
    assert_eq!(modes["tls/tls.key"], 0o400);

    // Objects without `type` keep the Go provider's JSON.
    let json: serde_json::Value = serde_json::from_str(&got["go-provider.json"]).unwrap();
    assert!(
        json["certificate_pem"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        json["private_key_pem"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY")
    );

    let serial = hex::encode(leaf.tbs_certificate.raw_serial());
    assert_eq!(
        versions(&r)["bundle.pem:/items/cert"],
        format!("serial-{serial}")
    );
    assert_eq!(
        h.akeyless.calls("/get-certificate-value"),
        1,
        "one read for three objects"
    );
}

#[tokio::test]
async fn pki_certificates_are_issued_for_a_local_key_and_reused_per_volume() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/pki
  type: pki
  commonName: web.shop.svc
  altNames: [web, web.shop]
  uriSans: spiffe://cluster.local/ns/shop/sa/web
  ttl: 2h
  certFile: tls.crt
  keyFile: tls.key
  chainFile: ca.crt
";
    let first = h.mount(mount_request(objects)).await.expect("mount");
    let got = files(&first);
    let cert = certificates(&got["tls.crt"]);
    assert_eq!(cert.len(), 1);
    assert_eq!(
        key_public(&got["tls.key"]),
        spki(&cert[0]),
        "the local key is the certificate's"
    );
    let (_, leaf) = X509Certificate::from_der(&cert[0]).unwrap();
    assert_eq!(
        leaf.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "web.shop.svc"
    );
    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::URI(u) => u.to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    for want in ["web", "web.shop", "spiffe://cluster.local/ns/shop/sa/web"] {
        assert!(sans.iter().any(|s| s == want), "{want} in {sans:?}");
    }
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((7000..=7300).contains(&life), "ttl 2h, got {life}s");
    let ca = certificates(&h.akeyless.pki_ca_pem("/items/pki").unwrap());
    assert_eq!(
        certificates(&got["ca.crt"]),
        ca,
        "the chain is the issuer's CA"
    );
    let version = versions(&first)["tls.crt:/items/pki"].clone();
    assert_eq!(
        version,
        format!("serial-{}", hex::encode(leaf.tbs_certificate.raw_serial()))
    );

    for _ in 0..5 {
        let again = h.mount(mount_request(objects)).await.expect("poll");
        assert_eq!(
            files(&again),
            got,
            "the same certificate and key until near expiry"
        );
    }
    assert_eq!(h.akeyless.leases_minted("/items/pki"), 1);
    let other = h
        .mount(pod_request(objects, "77777777-3333-4000-8000-000000000001"))
        .await
        .expect("another pod");
    assert_ne!(
        files(&other)["tls.key"],
        got["tls.key"],
        "another pod, another key"
    );
    assert_eq!(h.akeyless.leases_minted("/items/pki"), 2);

    // The issuer refuses a ttl over its maximum: the error names the object.
    let err = h
        .mount(mount_request(
            "- secretPath: /items/pki\n  type: pki\n  commonName: x\n  ttl: 48h\n",
        ))
        .await
        .unwrap_err();
    assert!(err.message().contains("/items/pki"), "{}", err.message());
}

#[tokio::test]
async fn ssh_certificates_sign_the_objects_public_key() {
    let h = Harness::start(seed()).await;
    let objects = format!(
        "- secretPath: /items/ssh\n  type: ssh\n  username: deploy\n  publicKey: \"{SSH_USER_KEY}\"\n  ttl: 30m\n  fileName: id_ed25519-cert.pub\n"
    );
    let r = h.mount(mount_request(&objects)).await.expect("mount");
    let line = files(&r)["id_ed25519-cert.pub"].clone();
    let mut fields = line.split_whitespace();
    assert_eq!(fields.next(), Some("ssh-ed25519-cert-v01@openssh.com"));
    let blob = STANDARD.decode(fields.next().unwrap()).unwrap();

    // Walk PROTOCOL.certkeys: the signed key is ours, the principal is the user, and the CA's
    // signature verifies.
    let mut c = Cursor { blob: &blob, at: 0 };
    c.string(); // type
    c.string(); // nonce
    let public = c.string();
    let user_blob = STANDARD
        .decode(SSH_USER_KEY.split_whitespace().nth(1).unwrap())
        .unwrap();
    assert_eq!(
        &user_blob[user_blob.len() - 32..],
        public,
        "our public key is signed"
    );
    c.at += 8 + 4; // serial, type
    c.string(); // key id
    let principals = c.string();
    assert_eq!(&principals[4..], b"deploy");
    c.at += 16; // validity
    c.string(); // critical options
    c.string(); // extensions
    c.string(); // reserved
    let ca_line = h.akeyless.ssh_ca_public_key("/items/ssh").unwrap();
    let ca_key = STANDARD
        .decode(ca_line.split_whitespace().nth(1).unwrap())
        .unwrap();
    assert_eq!(c.string(), ca_key.as_slice());
    let signed_len = c.at;
    let signature_blob = c.string();
    let sig = &signature_blob[signature_blob.len() - 64..];
    signature::UnparsedPublicKey::new(&signature::ED25519, &ca_key[ca_key.len() - 32..])
        .verify(&blob[..signed_len], sig)
        .expect("the CA signed the certificate");

    assert!(versions(&r)["id_ed25519-cert.pub:/items/ssh"].starts_with("serial-"));
    h.mount(mount_request(&objects)).await.expect("poll");
    assert_eq!(
        h.akeyless.leases_minted("/items/ssh"),
        1,
        "reused until near expiry"
    );

    let err = h
        .mount(mount_request("- secretPath: /items/ssh\n  type: ssh\n  username: deploy\n  publicKey: \"-----BEGIN OPENSSH PRIVATE KEY-----\"\n"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        !err.message().contains("BEGIN OPENSSH"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn a_folder_of_fifty_items_is_one_listing_and_one_batched_read() {
    let h = Harness::start(seed()).await;
    let r = h
        .mount(mount_request(
            "- secretPath: /items/folder/*\n  fileName: app\n",
        ))
        .await
        .expect("mount");
    let got = files(&r);
    assert_eq!(
        got.len(),
        FOLDER_ITEMS,
        "direct static items only: {:?}",
        got.keys()
    );
    assert_eq!(got["app/item-07"], "folder-value-7");
    assert!(h.akeyless.calls("/list-items") <= 2);
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "all values in one batched call"
    );
    assert_eq!(versions(&r).len(), FOLDER_ITEMS, "a version per item");
    assert!(versions(&r).contains_key("app/item-07:/items/folder/item-07"));

    // Everything below, and the path + filter form.
    let r = h
        .mount(mount_request("- secretPath: /items/folder/**\n"))
        .await
        .expect("recursive");
    assert_eq!(files(&r)["sub/deep"], "deep-value");
    let r = h
        .mount(mount_request(
            "- path: /items/folder\n  filter: item-4\n  fileName: f\n",
        ))
        .await
        .expect("filter");
    assert_eq!(files(&r).len(), 10);

    // Names that clash or are unsafe still get their own, safe files.
    let r = h
        .mount(mount_request("- secretPath: /items/weird/*\n"))
        .await
        .expect("weird names");
    let got = files(&r);
    assert_eq!(got.len(), 3, "{:?}", got.keys());
    assert!(got.values().any(|v| v == "space") && got.values().any(|v| v == "underscore"));
    assert!(
        got.keys().all(|k| !k.starts_with("..") && !k.contains(' ')),
        "{:?}",
        got.keys()
    );

    let err = h
        .mount(mount_request("- secretPath: /items/nothing-here/*\n"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains("/items/nothing-here"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn templates_render_several_keys_into_one_file() {
    let h = Harness::start(seed()).await;
    let objects = r#"
- fileName: app.env
  template: |
    DB_USER={{ .user }}
    DB_PASSWORD={{ .password | quote }}
    API_KEY={{ .api }}
  keys:
    user: {secretPath: /items/json, property: db.user}
    password: {secretPath: /items/password, property: password}
    api: {secretPath: /items/kv, property: API_KEY}
- secretPath: /items/kv
  fileName: kv.conf
  template: "region = {{ .REGION }}\n"
"#;
    let r = h.mount(mount_request(objects)).await.expect("mount");
    let got = files(&r);
    assert_eq!(
        got["app.env"],
        "DB_USER=app\nDB_PASSWORD=\"pw-secret-9\"\nAPI_KEY=kv-api-key\n"
    );
    assert_eq!(got["kv.conf"], "region = eu\n");
    assert_eq!(h.akeyless.calls("/get-secret-value"), 1);

    let err = h
        .mount(mount_request(
            "- fileName: x\n  template: \"{{ .missing }}\"\n  keys:\n    a: /items/text\n",
        ))
        .await
        .unwrap_err();
    assert!(err.message().contains("missing"), "{}", err.message());
}

#[tokio::test]
async fn optional_objects_are_skipped_until_they_appear() {
    let h = Harness::start(seed()).await;
    let objects = "
- secretPath: /items/text
- secretPath: /items/later
  optional: true
- secretPath: /items/later-typed
  type: static
  optional: true
";
    let first = h
        .mount(mount_request(objects))
        .await
        .expect("optional missing is fine");
    assert_eq!(files(&first).len(), 1);
    assert_eq!(versions(&first)["later:/items/later"], "absent");
    assert_eq!(versions(&first)["later-typed:/items/later-typed"], "absent");
    assert!(h.logs().contains("optional item does not exist"));

    h.akeyless.put_secret("/items/later", "arrived");
    h.akeyless.put_secret("/items/later-typed", "arrived-too");
    let second = h.mount(mount_request(objects)).await.expect("mount");
    assert_eq!(files(&second)["later"], "arrived");
    assert_eq!(files(&second)["later-typed"], "arrived-too");
    assert_ne!(versions(&second)["later:/items/later"], "absent");

    let err = h
        .mount(mount_request(
            "- secretPath: /items/text\n- secretPath: /items/never\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("/items/never"), "{}", err.message());
    let err = h
        .mount(mount_request(
            "- secretPath: /items/text\n- secretPath: /items/never\n  type: static\n",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("/items/never"), "{}", err.message());
}
