//! Certificates as files: PEM chains put in order (leaf first), and the private key checked
//! against the leaf, so that a `cert`/`key` pair written to a pod always belongs together.

use aws_lc_rs::signature::{self, KeyPair};
use x509_parser::pem::Pem;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroize;

use crate::secret::SecretString;

/// One certificate of a chain.
#[derive(Debug, Clone)]
pub struct Cert {
    der: Vec<u8>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    public_key: Vec<u8>,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

impl Cert {
    /// The certificate as DER.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    fn pem(&self) -> String {
        pem_block("CERTIFICATE", &self.der)
    }
}

/// A certificate with its chain and (when there is one) its key, in order.
#[derive(Debug)]
pub struct Bundle {
    pub leaf: Cert,
    /// Issuers, leaf's issuer first.
    pub chain: Vec<Cert>,
    pub key: Option<SecretString>,
}

impl Bundle {
    /// Builds the bundle from PEM text holding certificates in any order (and maybe a key
    /// block, which is ignored) plus a separate key; the key must match the leaf.
    pub fn assemble(certificates: &str, key: Option<&SecretString>) -> Result<Self, String> {
        let mut certs = parse_certificates(certificates)?;
        if certs.is_empty() {
            return Err("the value holds no PEM certificate".to_owned());
        }
        let key_public = key
            .map(|k| private_key_public_bits(k.expose()))
            .transpose()?;
        // The leaf: the key's certificate, else the one that issued none of the others.
        let leaf_at = match &key_public {
            Some(public) => certs
                .iter()
                .position(|c| &c.public_key == public)
                .ok_or_else(|| {
                    "the private key does not match any certificate of the chain".to_owned()
                })?,
            None => (0..certs.len())
                .find(|&i| {
                    !certs.iter().enumerate().any(|(j, c)| {
                        j != i && c.issuer == certs[i].subject && c.subject != c.issuer
                    })
                })
                .unwrap_or(0),
        };
        let leaf = certs.remove(leaf_at);
        let mut chain = Vec::new();
        let mut current = leaf.issuer.clone();
        let mut last_subject = leaf.subject.clone();
        while last_subject != current
            && let Some(at) = certs.iter().position(|c| c.subject == current)
        {
            let next = certs.remove(at);
            last_subject = next.subject.clone();
            current = next.issuer.clone();
            chain.push(next);
        }
        // Anything left (cross-signed, unrelated) is kept, after the ordered part.
        chain.extend(certs);
        Ok(Self {
            leaf,
            chain,
            key: key.cloned(),
        })
    }

    pub fn leaf_pem(&self) -> String {
        self.leaf.pem()
    }

    pub fn chain_pem(&self) -> String {
        self.chain.iter().map(Cert::pem).collect()
    }

    /// Leaf, chain, then key: the order servers such as HAProxy and nginx accept.
    pub fn bundle_pem(&self) -> SecretString {
        let mut text = self.leaf_pem();
        text.push_str(&self.chain_pem());
        if let Some(key) = &self.key {
            let key = key.expose().trim_end();
            text.push_str(key);
            text.push('\n');
        }
        SecretString::new(text)
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Every `CERTIFICATE` block of `text`, parsed; other blocks are skipped.
pub fn parse_certificates(text: &str) -> Result<Vec<Cert>, String> {
    let mut out: Vec<Cert> = Vec::new();
    for (i, block) in Pem::iter_from_buffer(text.as_bytes()).enumerate() {
        let block = block.map_err(|_| format!("PEM block {} is malformed", i + 1))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = parse_der(&block.contents)
            .map_err(|why| format!("PEM certificate {} {why}", out.len() + 1))?;
        if !out.iter().any(|c| c.der == cert.der) {
            out.push(cert);
        }
    }
    Ok(out)
}

fn parse_der(der: &[u8]) -> Result<Cert, String> {
    let (_, x509) = X509Certificate::from_der(der)
        .map_err(|_| "is not a valid X.509 certificate".to_owned())?;
    Ok(Cert {
        der: der.to_vec(),
        subject: x509.subject().as_raw().to_vec(),
        issuer: x509.issuer().as_raw().to_vec(),
        public_key: x509.public_key().subject_public_key.data.to_vec(),
        serial: hex::encode(x509.tbs_certificate.raw_serial()),
        not_before: x509.validity().not_before.timestamp(),
        not_after: x509.validity().not_after.timestamp(),
    })
}

/// The public key of a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC), in the form a
/// certificate's `subjectPublicKey` holds it. Errors never contain key material.
pub fn private_key_public_bits(pem: &str) -> Result<Vec<u8>, String> {
    let mut block = Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|b| b.label.ends_with("PRIVATE KEY"))
        .ok_or_else(|| "the private key is not a PEM private key".to_owned())?;
    let der = &block.contents;
    let ec = [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
        &signature::ECDSA_P521_SHA512_ASN1_SIGNING,
    ];
    let public = match block.label.as_str() {
        "PRIVATE KEY" => ec
            .iter()
            .find_map(|alg| signature::EcdsaKeyPair::from_pkcs8(alg, der).ok())
            .map(|k| k.public_key().as_ref().to_vec())
            .or_else(|| {
                signature::RsaKeyPair::from_pkcs8(der)
                    .ok()
                    .map(|k| k.public_key().as_ref().to_vec())
            })
            .or_else(|| {
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .ok()
                    .map(|k| k.public_key().as_ref().to_vec())
            }),
        "RSA PRIVATE KEY" => signature::RsaKeyPair::from_der(der)
            .ok()
            .map(|k| k.public_key().as_ref().to_vec()),
        "EC PRIVATE KEY" => ec
            .iter()
            .find_map(|alg| signature::EcdsaKeyPair::from_private_key_der(alg, der).ok())
            .map(|k| k.public_key().as_ref().to_vec()),
        _ => None,
    };
    block.contents.zeroize();
    public.ok_or_else(|| {
        "the private key is encrypted or of an unsupported type (PKCS#8, PKCS#1 RSA or SEC1 EC keys are read)"
            .to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain() -> (String, String, SecretString, String) {
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut root_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        root_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        root_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "root");
        let root = root_params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(root_params, root_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let mut leaf_params = rcgen::CertificateParams::new(vec!["web".to_owned()]).unwrap();
        leaf_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "web");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        (
            leaf.pem(),
            root.pem(),
            SecretString::new(leaf_key.serialize_pem()),
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        )
    }

    #[test]
    fn chains_are_ordered_leaf_first_and_keys_must_match() {
        let (leaf, root, key, other_key) = chain();
        // Root first on purpose: the bundle still starts with the leaf.
        let text = format!("{root}{leaf}");
        let bundle = Bundle::assemble(&text, Some(&key)).unwrap();
        assert_eq!(bundle.leaf_pem().trim(), leaf.trim().replace("\r", ""));
        assert_eq!(bundle.chain.len(), 1);
        let pem = bundle.bundle_pem();
        assert!(pem.expose().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(
            pem.expose()
                .trim_end()
                .ends_with("-----END PRIVATE KEY-----")
        );
        let without_key = Bundle::assemble(&text, None).unwrap();
        assert_eq!(without_key.leaf.serial, bundle.leaf.serial);

        let err = Bundle::assemble(&text, Some(&SecretString::new(other_key.clone()))).unwrap_err();
        assert!(err.contains("does not match"));
        assert!(!err.contains("PRIVATE"), "no key material in errors: {err}");
        assert!(Bundle::assemble("not pem", None).is_err());
    }
}
