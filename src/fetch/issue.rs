//! Issuing: a dynamic secret's credentials, a PKI certificate for a key made here, an SSH
//! certificate. Each call creates something new in Akeyless; [`super::lease`] decides when.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use url::Url;

use super::lease::Issued;
use super::{CertPem, FetchError, Item, Unit};
use crate::akeyless::{ApiToken, Client, Deadline, PkiRequest, SecretJson, SshRequest};
use crate::params::{ItemKind, KeyType, PkiSpec};
use crate::render::pem::Bundle;
use crate::secret::{SecretBytes, SecretString};

/// A dynamic secret's life when neither Akeyless nor the object says.
const DEFAULT_LEASE: Duration = Duration::from_secs(15 * 60);
/// An SSH certificate's life when the answer cannot be read.
const DEFAULT_SSH: Duration = Duration::from_secs(3600);

/// Issues `unit` (a dynamic secret, PKI or SSH certificate).
pub async fn issue(
    client: &Client,
    base: &Url,
    token: &ApiToken,
    unit: &Unit,
    deadline: Deadline,
) -> Result<Issued, FetchError> {
    let name = unit.name.as_str();
    let api = |e| FetchError::Api {
        source: e,
        items: vec![name.to_owned()],
    };
    match &unit.kind {
        ItemKind::Dynamic(spec) => {
            let SecretJson(json) = client
                .get_dynamic_secret_value(base, token, name, deadline)
                .await
                .map_err(api)?;
            let lifetime = lease_ttl(&json).or(spec.ttl).unwrap_or(DEFAULT_LEASE);
            let lease_id = ["id", "lease_id", "tmp_creds_id"]
                .iter()
                .find_map(|k| json.get(*k).and_then(scalar_text))
                .filter(|id| id.len() <= 256);
            let item = Item {
                value: SecretBytes::new(json.to_string().into_bytes()),
                version: lease_id.map(|id| format!("lease-{id}")),
                cert: None,
            };
            Ok(Issued::new(item, lifetime))
        }
        ItemKind::Pki(spec) => {
            let spec = spec.clone();
            let (key, csr) = tokio::task::spawn_blocking(move || key_and_csr(&spec))
                .await
                .map_err(|_| FetchError::Item {
                    item: name.to_owned(),
                    problem: "making the private key failed unexpectedly".to_owned(),
                })?
                .map_err(|problem| FetchError::Item {
                    item: name.to_owned(),
                    problem,
                })?;
            let ItemKind::Pki(spec) = &unit.kind else {
                unreachable_kind()?
            };
            let request = PkiRequest {
                issuer: name,
                csr_base64: &csr,
                common_name: &spec.common_name,
                alt_names: &spec.alt_names,
                uri_sans: &spec.uri_sans,
                ttl: spec.ttl,
            };
            let (certificate, parent) = client
                .get_pki_certificate(base, token, &request, deadline)
                .await
                .map_err(api)?;
            let certificates = format!("{}\n{}", certificate.trim_end(), parent.trim_end());
            let bundle = Bundle::assemble(&certificates, Some(&key)).map_err(|problem| {
                FetchError::Item {
                    item: name.to_owned(),
                    problem: format!("the issued certificate is unusable: {problem}"),
                }
            })?;
            // Renewed two thirds into its validity, as dynamic secrets are.
            let now = unix_now();
            let (from, to) = (bundle.leaf.not_before, bundle.leaf.not_after);
            let secs = |t: i64| Duration::from_secs(u64::try_from(t).unwrap_or(0));
            let lifetime = secs(to - now);
            let renew_after = secs(from + (to - from) * 2 / 3 - now);
            let value = serde_json::json!({
                "certificate_pem": format!("{}{}", bundle.leaf_pem(), bundle.chain_pem()),
                "private_key_pem": key.expose(),
            });
            let item = Item {
                value: SecretBytes::new(value.to_string().into_bytes()),
                version: Some(format!("serial-{}", bundle.leaf.serial)),
                cert: Some(CertPem {
                    certificates,
                    key: Some(key),
                }),
            };
            Ok(Issued {
                item: std::sync::Arc::new(item),
                lifetime,
                renew_after,
            })
        }
        ItemKind::Ssh(spec) => {
            let certificate = client
                .get_ssh_certificate(
                    base,
                    token,
                    &SshRequest {
                        issuer: name,
                        username: &spec.username,
                        public_key: &spec.public_key,
                        ttl: spec.ttl,
                    },
                    deadline,
                )
                .await
                .map_err(api)?;
            let parsed = parse_ssh_certificate(&certificate);
            let lifetime = parsed
                .as_ref()
                .map(|c| {
                    Duration::from_secs(c.valid_before.saturating_sub(unix_now().max(0) as u64))
                })
                .unwrap_or(spec.ttl.unwrap_or(DEFAULT_SSH));
            let item = Item {
                value: SecretBytes::new(format!("{certificate}\n").into_bytes()),
                version: parsed.map(|c| format!("serial-{}", c.serial)),
                cert: None,
            };
            Ok(Issued::new(item, lifetime))
        }
        ItemKind::Static | ItemKind::Rotated | ItemKind::Certificate => unreachable_kind(),
    }
}

fn unreachable_kind<T>() -> Result<T, FetchError> {
    Err(FetchError::Item {
        item: String::new(),
        problem: "is not issued (a bug)".to_owned(),
    })
}

/// The lease's life as the producer reports it: `ttl_in_minutes` (the CLI's AWS output),
/// `ttl` or `lease_duration` (seconds).
fn lease_ttl(json: &serde_json::Value) -> Option<Duration> {
    let number = |k: &str| {
        json.get(k)
            .and_then(scalar_text)
            .and_then(|t| t.trim().parse::<u64>().ok())
            .filter(|n| *n > 0)
    };
    number("ttl_in_minutes")
        .map(|m| Duration::from_secs(m.saturating_mul(60)))
        .or_else(|| number("ttl").map(Duration::from_secs))
        .or_else(|| number("lease_duration").map(Duration::from_secs))
}

fn scalar_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A new private key (PKCS#8 PEM, never leaving the node but for the pod) and a CSR for it
/// (base64 DER) naming the object's common name and SANs.
pub fn key_and_csr(spec: &PkiSpec) -> Result<(SecretString, String), String> {
    let algorithm = match spec.key_type {
        KeyType::EcP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
        KeyType::EcP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        KeyType::Ed25519 => &rcgen::PKCS_ED25519,
        KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
    };
    let key = match spec.key_type {
        KeyType::Rsa2048 => rcgen::KeyPair::generate_rsa_for(algorithm, rcgen::RsaKeySize::_2048),
        KeyType::Rsa3072 => rcgen::KeyPair::generate_rsa_for(algorithm, rcgen::RsaKeySize::_3072),
        KeyType::Rsa4096 => rcgen::KeyPair::generate_rsa_for(algorithm, rcgen::RsaKeySize::_4096),
        _ => rcgen::KeyPair::generate_for(algorithm),
    }
    .map_err(|e| format!("cannot make a {} key: {e}", spec.key_type.name()))?;
    let mut sans: Vec<String> = Vec::new();
    for name in std::iter::once(&spec.common_name).chain(&spec.alt_names) {
        if !name.is_empty() && !sans.contains(name) && !name.contains("://") {
            sans.push(name.clone());
        }
    }
    let mut params = rcgen::CertificateParams::new(sans)
        .map_err(|e| format!("commonName or altNames are not valid names: {e}"))?;
    for uri in &spec.uri_sans {
        let uri = rcgen::string::Ia5String::try_from(uri.as_str())
            .map_err(|_| format!("uriSans {uri:?} is not an ASCII URI"))?;
        params.subject_alt_names.push(rcgen::SanType::URI(uri));
    }
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, spec.common_name.as_str());
    let csr = params
        .serialize_request(&key)
        .map_err(|e| format!("cannot make the certificate request: {e}"))?;
    let pem = SecretString::new(key.serialize_pem());
    Ok((pem, STANDARD.encode(csr.der())))
}

/// What the provider reads of an OpenSSH certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshCertificate {
    pub key_type: String,
    pub serial: u64,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
}

/// Parses `<type>-cert-v01@openssh.com <base64>` (PROTOCOL.certkeys) up to its validity.
pub fn parse_ssh_certificate(line: &str) -> Option<SshCertificate> {
    let mut fields = line.split_whitespace();
    let kind = fields.next()?;
    let blob = STANDARD.decode(fields.next()?).ok()?;
    let mut r = Reader(&blob);
    let key_type = String::from_utf8(r.string()?.to_vec()).ok()?;
    if key_type != kind || !key_type.ends_with("-cert-v01@openssh.com") {
        return None;
    }
    r.string()?; // nonce
    // The public key's own fields, by its type.
    let fields = match key_type.trim_end_matches("-cert-v01@openssh.com") {
        "ssh-ed25519" => 1,
        "ssh-rsa" => 2,
        "ssh-dss" => 4,
        t if t.starts_with("ecdsa-sha2-") => 2,
        _ => return None,
    };
    for _ in 0..fields {
        r.string()?;
    }
    let serial = r.u64()?;
    r.u32()?; // type
    r.string()?; // key id
    let mut principals = Vec::new();
    let mut list = Reader(r.string()?);
    while !list.0.is_empty() {
        principals.push(String::from_utf8(list.string()?.to_vec()).ok()?);
    }
    let valid_after = r.u64()?;
    let valid_before = r.u64()?;
    Some(SshCertificate {
        key_type,
        serial,
        principals,
        valid_after,
        valid_before,
    })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = tail;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(b);
        Some(u64::from_be_bytes(bytes))
    }

    fn string(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        self.take(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::pem::private_key_public_bits;
    use rcgen::PublicKeyData;

    #[test]
    fn keys_and_csrs_of_every_type() {
        for key_type in [
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Ed25519,
            KeyType::Rsa2048,
        ] {
            let spec = PkiSpec {
                common_name: "web.default.svc".into(),
                alt_names: vec!["web".into()],
                uri_sans: vec!["spiffe://cluster.local/ns/default/sa/web".into()],
                ttl: None,
                key_type,
            };
            let (key, csr) = key_and_csr(&spec).unwrap();
            let der = STANDARD.decode(&csr).unwrap();
            let parsed = rcgen::CertificateSigningRequestParams::from_der(&der.into()).unwrap();
            let public = private_key_public_bits(key.expose()).unwrap();
            assert_eq!(
                parsed.public_key.der_bytes(),
                public.as_slice(),
                "{key_type:?}"
            );
            assert!(!format!("{key:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn ssh_certificates_parse_and_garbage_does_not() {
        fn string(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(&(s.len() as u32).to_be_bytes());
            out.extend_from_slice(s);
        }
        let t = b"ssh-ed25519-cert-v01@openssh.com";
        let mut blob = Vec::new();
        string(&mut blob, t);
        string(&mut blob, &[7; 32]);
        string(&mut blob, &[1; 32]);
        blob.extend_from_slice(&42u64.to_be_bytes());
        blob.extend_from_slice(&1u32.to_be_bytes());
        string(&mut blob, b"id");
        let mut principals = Vec::new();
        string(&mut principals, b"deploy");
        string(&mut blob, &principals);
        blob.extend_from_slice(&100u64.to_be_bytes());
        blob.extend_from_slice(&200u64.to_be_bytes());
        let line = format!(
            "ssh-ed25519-cert-v01@openssh.com {}",
            STANDARD.encode(&blob)
        );
        let cert = parse_ssh_certificate(&line).unwrap();
        assert_eq!(
            (
                cert.serial,
                cert.principals,
                cert.valid_after,
                cert.valid_before
            ),
            (42, vec!["deploy".to_owned()], 100, 200)
        );
        for bad in ["", "ssh-ed25519 AAAA", "x y z", &line[..line.len() - 8]] {
            assert!(parse_ssh_certificate(bad).is_none() || bad == &line[..line.len() - 8]);
        }
    }

    #[test]
    fn lease_lifetimes_are_read_from_either_shape() {
        let j = serde_json::json!({"ttl_in_minutes": "180"});
        assert_eq!(lease_ttl(&j), Some(Duration::from_secs(10800)));
        let j = serde_json::json!({"ttl": 90});
        assert_eq!(lease_ttl(&j), Some(Duration::from_secs(90)));
        assert_eq!(lease_ttl(&serde_json::json!({"user": "x"})), None);
    }
}
