//! Key material the emulator generates: certificate chains of `certificate` items, the CAs of
//! `pki-cert-issuer` items (which sign CSRs), and the SSH CAs of `ssh-cert-issuer` items (which
//! sign OpenSSH user certificates, `PROTOCOL.certkeys`).
//!
//! Every key generated here is ECDSA P-256 or Ed25519, so building the state stays cheap.
//! Nothing here implements `Debug`: private keys must not reach logs.

use std::net::IpAddr;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, CertifiedIssuer,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::time::ASN1Time;

use crate::secret::SecretString;

/// Validity of generated CA certificates (ten years).
const CA_VALIDITY_SECS: u64 = 10 * 365 * 24 * 3600;
/// CA certificates start this long before they are made, for clock skew.
const CA_BACKDATE_SECS: u64 = 3600;
/// Generated leaves of `certificate` items start this long before they are made.
const LEAF_BACKDATE_SECS: u64 = 60;
/// SSH certificates are valid from this long before they are signed.
const SSH_BACKDATE_SECS: u64 = 60;
const ORGANIZATION: &str = "Akeyless emulator";

/// Why material could not be made: the request's fault (400) or the emulator's (500).
pub(crate) enum CryptoError {
    Request(String),
    Internal(String),
}

fn internal(what: &str) -> impl Fn(rcgen::Error) -> CryptoError + '_ {
    move |err| CryptoError::Internal(format!("{what}: {err}"))
}

/// `unix_secs` as the time type rcgen takes.
fn at(unix_secs: u64) -> Result<ASN1Time, CryptoError> {
    i64::try_from(unix_secs)
        .ok()
        .and_then(|secs| ASN1Time::from_timestamp(secs).ok())
        .ok_or_else(|| CryptoError::Request(format!("time {unix_secs} is out of range")))
}

/// 16 random bytes, positive and without a leading zero byte (so its hex is stable).
fn random_serial() -> Vec<u8> {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    bytes.to_vec()
}

fn ca_params(
    common_name: String,
    now: u64,
    path_len: Option<u8>,
) -> Result<CertificateParams, CryptoError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, ORGANIZATION);
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(match path_len {
        Some(len) => BasicConstraints::Constrained(len),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = at(now.saturating_sub(CA_BACKDATE_SECS))?.to_datetime();
    params.not_after = at(now.saturating_add(CA_VALIDITY_SECS))?.to_datetime();
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    Ok(params)
}

// ---- certificate items ----

/// The CAs behind a `certificate` item: a root, and an intermediate that signs its leaves.
pub(crate) struct CertChain {
    root_pem: String,
    intermediate: CertifiedIssuer<'static, KeyPair>,
    common_name: String,
    ttl_secs: u64,
}

/// One generated leaf of a `certificate` item.
pub(crate) struct Leaf {
    /// The leaf PEM followed by the intermediate CA PEM.
    pub chain_pem: String,
    /// PKCS#8 PEM of the leaf's P-256 key.
    pub key_pem: SecretString,
    pub not_before_secs: u64,
    pub not_after_secs: u64,
}

impl CertChain {
    /// A fresh root and intermediate for the item `item_name`, whose leaves name `common_name`
    /// and live `ttl_secs`.
    pub fn generate(
        item_name: &str,
        common_name: &str,
        ttl_secs: u64,
        now: u64,
    ) -> Result<CertChain, CryptoError> {
        let root_key = KeyPair::generate().map_err(internal("root key"))?;
        let root = CertifiedIssuer::self_signed(
            ca_params(format!("Emulator Root CA for {item_name}"), now, None)?,
            root_key,
        )
        .map_err(internal("root certificate"))?;
        let mut params = ca_params(
            format!("Emulator Intermediate CA for {item_name}"),
            now,
            Some(0),
        )?;
        params.use_authority_key_identifier_extension = true;
        let intermediate_key = KeyPair::generate().map_err(internal("intermediate key"))?;
        let intermediate = CertifiedIssuer::signed_by(params, intermediate_key, &root)
            .map_err(internal("intermediate certificate"))?;
        Ok(CertChain {
            root_pem: root.pem(),
            intermediate,
            common_name: common_name.to_owned(),
            ttl_secs,
        })
    }

    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// A fresh leaf (new key) signed by the intermediate.
    pub fn issue_leaf(&self, now: u64) -> Result<Leaf, CryptoError> {
        let key = KeyPair::generate().map_err(internal("leaf key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, self.common_name.as_str());
        params.distinguished_name = name;
        params.subject_alt_names = vec![san_for_name(&self.common_name)?];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let not_before_secs = now.saturating_sub(LEAF_BACKDATE_SECS);
        let not_after_secs = now.saturating_add(self.ttl_secs);
        params.not_before = at(not_before_secs)?.to_datetime();
        params.not_after = at(not_after_secs)?.to_datetime();
        params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
        let cert = params
            .signed_by(&key, &self.intermediate)
            .map_err(internal("leaf certificate"))?;
        Ok(Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.intermediate.pem()),
            key_pem: SecretString::new(key.serialize_pem()),
            not_before_secs,
            not_after_secs,
        })
    }
}

/// A DNS name, or an IP address, as a SAN.
fn san_for_name(name: &str) -> Result<SanType, CryptoError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    name.to_owned()
        .try_into()
        .map(SanType::DnsName)
        .map_err(|_| CryptoError::Request(format!("{name:?} is not a usable DNS name")))
}

// ---- PKI issuers ----

/// The CA of a `pki-cert-issuer` item.
pub(crate) struct PkiCa {
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_pem: String,
}

/// What `/get-pki-certificate` asks for, once decoded.
pub(crate) struct PkiRequest<'a> {
    /// DER or PEM of a PKCS#10 CSR.
    pub csr: &'a [u8],
    pub common_name: Option<&'a str>,
    pub alt_names: Vec<&'a str>,
    pub uri_sans: Vec<&'a str>,
    /// `None`: the CSR's, else server and client auth.
    pub extended_key_usage: Option<Vec<ExtendedKeyUsagePurpose>>,
    pub ttl_secs: u64,
    pub now: u64,
}

/// A certificate issued from a CSR.
pub(crate) struct Issued {
    pub pem: String,
    /// Lowercase hex of the serial number.
    pub serial_hex: String,
}

impl PkiCa {
    pub fn generate(issuer_name: &str, now: u64) -> Result<PkiCa, CryptoError> {
        let key = KeyPair::generate().map_err(internal("CA key"))?;
        let ca = CertifiedIssuer::self_signed(
            ca_params(format!("Emulator PKI CA {issuer_name}"), now, None)?,
            key,
        )
        .map_err(internal("CA certificate"))?;
        let ca_pem = ca.pem();
        Ok(PkiCa { ca, ca_pem })
    }

    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Signs a certificate for the CSR's public key.
    pub fn issue(&self, request: &PkiRequest<'_>) -> Result<Issued, CryptoError> {
        let csr_der = if request.csr.trim_ascii_start().starts_with(b"-----BEGIN") {
            let text = std::str::from_utf8(request.csr)
                .map_err(|_| CryptoError::Request("the CSR PEM is not UTF-8".into()))?;
            let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
                .map_err(|err| CryptoError::Request(format!("the CSR PEM is unreadable: {err}")))?;
            if pem.label != "CERTIFICATE REQUEST" && pem.label != "NEW CERTIFICATE REQUEST" {
                return Err(CryptoError::Request(format!(
                    "expected a CERTIFICATE REQUEST PEM, got {:?}",
                    pem.label
                )));
            }
            pem.contents
        } else {
            request.csr.to_vec()
        };
        let csr = CertificateSigningRequestParams::from_der(&csr_der.as_slice().into())
            .map_err(|err| CryptoError::Request(format!("invalid CSR: {err}")))?;
        let (_, parsed) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr_der)
                .map_err(|err| CryptoError::Request(format!("invalid CSR: {err}")))?;
        let requested_spki = parsed.certification_request_info.subject_pki.raw;

        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        match csr.params.distinguished_name.get(&DnType::CommonName) {
            Some(cn) => subject.push(DnType::CommonName, cn.clone()),
            None => {
                if let Some(cn) = request.common_name.filter(|cn| !cn.is_empty()) {
                    subject.push(DnType::CommonName, cn);
                }
            }
        }
        let mut sans = csr.params.subject_alt_names.clone();
        for name in &request.alt_names {
            let san = san_for_name(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        for uri in &request.uri_sans {
            let san =
                SanType::URI((*uri).to_owned().try_into().map_err(|_| {
                    CryptoError::Request(format!("uri-sans: {uri:?} is not ASCII"))
                })?);
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        if subject.get(&DnType::CommonName).is_none() && sans.is_empty() {
            return Err(CryptoError::Request(
                "the certificate would name nobody: the CSR has no CN and no SAN; send common-name or alt-names"
                    .into(),
            ));
        }
        params.distinguished_name = subject;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let rsa = [
            &rcgen::PKCS_RSA_SHA256,
            &rcgen::PKCS_RSA_SHA384,
            &rcgen::PKCS_RSA_SHA512,
        ];
        if rsa.contains(&csr.public_key.algorithm()) {
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = match &request.extended_key_usage {
            Some(usages) => usages.clone(),
            None if !csr.params.extended_key_usages.is_empty() => {
                csr.params.extended_key_usages.clone()
            }
            None => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(request.now)?.to_datetime();
        params.not_after = at(request.now.saturating_add(request.ttl_secs))?.to_datetime();
        let serial = random_serial();
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let cert = params
            .signed_by(&csr.public_key, &self.ca)
            .map_err(internal("signing"))?;
        // rcgen re-encodes the key's algorithm from the CSR's signature algorithm; refuse the
        // rare combinations where that would not reproduce the requested key exactly.
        let (_, issued) = x509_parser::parse_x509_certificate(cert.der())
            .map_err(|err| CryptoError::Internal(format!("issued certificate: {err}")))?;
        if issued.tbs_certificate.subject_pki.raw != requested_spki {
            return Err(CryptoError::Request(
                "unsupported combination of CSR key type and signature algorithm".into(),
            ));
        }
        Ok(Issued {
            pem: cert.pem(),
            serial_hex: hex::encode(serial),
        })
    }
}

// ---- SSH issuers ----

const SSH_ED25519: &str = "ssh-ed25519";
/// The extensions of the certificates issued, sorted as `PROTOCOL.certkeys` requires.
const SSH_EXTENSIONS: &[&str] = &[
    "permit-X11-forwarding",
    "permit-agent-forwarding",
    "permit-port-forwarding",
    "permit-pty",
    "permit-user-rc",
];
/// `uint32 type` of a user certificate.
const SSH_CERT_TYPE_USER: u32 = 1;

/// The Ed25519 CA of an `ssh-cert-issuer` item.
pub(crate) struct SshCa {
    key: Ed25519KeyPair,
    /// `string "ssh-ed25519", string pk`.
    public_blob: Vec<u8>,
}

/// An OpenSSH user certificate to sign.
pub(crate) struct SshRequest<'a> {
    /// An OpenSSH public key line: `ssh-ed25519 AAAA… comment`.
    pub public_key: &'a str,
    pub username: &'a str,
    pub key_id: &'a str,
    pub ttl_secs: u64,
    pub now: u64,
}

impl SshCa {
    pub fn generate() -> Result<SshCa, CryptoError> {
        let key = Ed25519KeyPair::generate()
            .map_err(|_| CryptoError::Internal("cannot generate an Ed25519 key".into()))?;
        let mut public_blob = Vec::new();
        put_string(&mut public_blob, SSH_ED25519.as_bytes());
        put_string(&mut public_blob, key.public_key().as_ref());
        Ok(SshCa { key, public_blob })
    }

    /// `ssh-ed25519 <base64>`, as in `authorized_keys` / `TrustedUserCAKeys`.
    pub fn public_key_line(&self) -> String {
        format!("{SSH_ED25519} {}", STANDARD.encode(&self.public_blob))
    }

    /// Signs a user certificate; returns `<cert type> <base64>` and the serial.
    pub fn sign_user(&self, request: &SshRequest<'_>) -> Result<(String, u64), CryptoError> {
        let (key_type, key_fields) = parse_public_key(request.public_key)?;
        let cert_type = format!("{key_type}-cert-v01@openssh.com");
        let serial = rand::random::<u64>();
        let mut cert = Vec::with_capacity(512);
        put_string(&mut cert, cert_type.as_bytes());
        put_string(&mut cert, &rand::random::<[u8; 32]>());
        cert.extend_from_slice(&key_fields);
        cert.extend_from_slice(&serial.to_be_bytes());
        cert.extend_from_slice(&SSH_CERT_TYPE_USER.to_be_bytes());
        put_string(&mut cert, request.key_id.as_bytes());
        let mut principals = Vec::new();
        put_string(&mut principals, request.username.as_bytes());
        put_string(&mut cert, &principals);
        let valid_after = request.now.saturating_sub(SSH_BACKDATE_SECS);
        let valid_before = request.now.saturating_add(request.ttl_secs);
        cert.extend_from_slice(&valid_after.to_be_bytes());
        cert.extend_from_slice(&valid_before.to_be_bytes());
        put_string(&mut cert, b"");
        let mut extensions = Vec::new();
        for name in SSH_EXTENSIONS {
            put_string(&mut extensions, name.as_bytes());
            put_string(&mut extensions, b"");
        }
        put_string(&mut cert, &extensions);
        put_string(&mut cert, b"");
        put_string(&mut cert, &self.public_blob);
        let signature = self.key.sign(&cert);
        let mut signature_blob = Vec::new();
        put_string(&mut signature_blob, SSH_ED25519.as_bytes());
        put_string(&mut signature_blob, signature.as_ref());
        put_string(&mut cert, &signature_blob);
        Ok((format!("{cert_type} {}", STANDARD.encode(&cert)), serial))
    }
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    // Inputs are bounded by the request size limit, far below 4 GiB.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Reads one SSH `string` from the front of `input`.
pub(crate) fn take_string<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (len, rest) = input.split_first_chunk::<4>()?;
    let len = usize::try_from(u32::from_be_bytes(*len)).ok()?;
    if rest.len() < len {
        return None;
    }
    let (value, rest) = rest.split_at(len);
    *input = rest;
    Some(value)
}

/// Parses an OpenSSH public key line; returns its type and the key's fields (the blob after
/// its type string), which a certificate copies after its nonce.
fn parse_public_key(line: &str) -> Result<(String, Vec<u8>), CryptoError> {
    let bad = |why: &str| CryptoError::Request(format!("public-key-data: {why}"));
    let mut parts = line.split_ascii_whitespace();
    let (Some(stated), Some(encoded)) = (parts.next(), parts.next()) else {
        return Err(bad(
            "expected an OpenSSH public key line such as 'ssh-ed25519 AAAA… comment'",
        ));
    };
    let blob = STANDARD
        .decode(encoded)
        .map_err(|_| bad("the key is not base64"))?;
    let mut rest = blob.as_slice();
    let key_type = take_string(&mut rest)
        .and_then(|t| std::str::from_utf8(t).ok())
        .ok_or_else(|| bad("the key blob is malformed"))?;
    if key_type != stated {
        return Err(bad(&format!(
            "the line says {stated:?} but the key is {key_type:?}"
        )));
    }
    let fields = rest;
    let mut reader = rest;
    let well_formed = match key_type {
        "ssh-ed25519" => take_string(&mut reader).is_some_and(|pk| pk.len() == 32),
        "ssh-rsa" => {
            let e = take_string(&mut reader);
            let n = take_string(&mut reader);
            e.is_some_and(|e| !e.is_empty()) && n.is_some_and(|n| n.len() >= 128)
        }
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            let curve = take_string(&mut reader);
            let point = take_string(&mut reader);
            curve
                .is_some_and(|c| key_type.strip_prefix("ecdsa-sha2-").map(str::as_bytes) == Some(c))
                && point.is_some_and(|q| q.first() == Some(&4))
        }
        other if other.contains("-cert-v01@openssh.com") => {
            return Err(bad(
                "a certificate cannot be signed again; send the public key",
            ));
        }
        other => {
            return Err(bad(&format!(
                "key type {other:?} is not supported (ssh-ed25519, ssh-rsa, ecdsa-sha2-nistp256/384/521)"
            )));
        }
    };
    if !well_formed || !reader.is_empty() {
        return Err(bad(&format!("the {key_type} key blob is malformed")));
    }
    Ok((key_type.to_owned(), fields.to_vec()))
}
