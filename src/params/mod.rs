//! Parameter parsing: the driver's `MountRequest` strings become one typed [`MountConfig`].
//!
//! Everything a pod author or the driver can put in a request is checked here, once, before any
//! network call, and every problem is reported at once so that one round of fixes is enough.
//! SecretProviderClasses written for Akeyless's Go provider parse unchanged.

mod objects;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use url::Url;

use crate::proto::v1alpha1::MountRequest;
use crate::secret::SecretString;

/// SPC parameter and volume-context keys, spelled as users and the driver spell them.
pub mod keys {
    pub const GATEWAY_URL: &str = "akeylessGatewayURL";
    pub const ACCESS_ID: &str = "akeylessAccessID";
    pub const ACCESS_TYPE: &str = "akeylessAccessType";
    pub const ACCESS_KEY: &str = "akeylessAccessKey";
    pub const UID_TOKEN: &str = "akeylessUIDInitToken";
    pub const K8S_AUTH_CONFIG_NAME: &str = "akeylessK8sAuthConfigName";
    pub const TOKEN_AUDIENCE: &str = "akeylessTokenAudience";
    pub const AZURE_OBJECT_ID: &str = "akeylessAzureObjectID";
    pub const AZURE_CLIENT_ID: &str = "akeylessAzureClientID";
    pub const AZURE_TENANT_ID: &str = "akeylessAzureTenantID";
    pub const AWS_ROLE_ARN: &str = "akeylessAWSRoleARN";
    pub const GCP_AUDIENCE: &str = "akeylessGCPAudience";
    pub const GCP_SERVICE_ACCOUNT: &str = "akeylessGCPServiceAccount";
    pub const GCP_WORKLOAD_IDENTITY_AUDIENCE: &str = "akeylessGCPWorkloadIdentityAudience";
    pub const OBJECTS: &str = "objects";
    pub const SPC_NAME: &str = "secretProviderClass";
    pub const POD_NAME: &str = "csi.storage.k8s.io/pod.name";
    pub const POD_NAMESPACE: &str = "csi.storage.k8s.io/pod.namespace";
    pub const POD_UID: &str = "csi.storage.k8s.io/pod.uid";
    pub const SERVICE_ACCOUNT: &str = "csi.storage.k8s.io/serviceAccount.name";
    pub const SA_TOKENS: &str = "csi.storage.k8s.io/serviceAccount.tokens";

    /// The SecretProviderClass parameters the provider reads here (mirroring into Secrets adds
    /// [`crate::sync::SECRET_SYNC`] and [`crate::sync::FAILURE_POLICY`]).
    pub const SPC_PARAMETERS: &[&str] = &[
        GATEWAY_URL,
        ACCESS_ID,
        ACCESS_TYPE,
        ACCESS_KEY,
        UID_TOKEN,
        K8S_AUTH_CONFIG_NAME,
        TOKEN_AUDIENCE,
        AZURE_OBJECT_ID,
        AZURE_CLIENT_ID,
        AZURE_TENANT_ID,
        AWS_ROLE_ARN,
        GCP_AUDIENCE,
        GCP_SERVICE_ACCOUNT,
        GCP_WORKLOAD_IDENTITY_AUDIENCE,
        OBJECTS,
    ];
    /// Parameters of SecretProviderClasses written for the Go provider that nothing reads.
    pub const IGNORED: &[&str] = &["vaultKubernetesMountPath"];
}

/// The driver's default `permission` ("420" = 0644) when a request carries none.
pub const DEFAULT_MODE: u32 = 0o644;

use objects::parse_objects_cached;
pub use objects::{
    Encoding, Folder, ItemKind, KeyRef, KeyType, LeaseSpec, ObjectSpec, PemFiles, PkiSpec, Shape,
    SshSpec, TemplateSpec,
};
pub(crate) use objects::{check_file_name, file_prefix_clash};

/// Everything one mount needs, parsed and validated.
#[derive(Debug, Clone)]
pub struct MountConfig {
    /// The SPC's `akeylessGatewayURL`; `None` means the provider's `--akeyless-url`.
    pub gateway: Option<Url>,
    pub access: AccessConfig,
    pub objects: Vec<ObjectSpec>,
    pub pod: PodInfo,
    /// The name of the SecretProviderClass, when the driver sent it (not on old rotation calls).
    pub spc_name: Option<String>,
    /// Informational: the tmpfs the driver mounted; the driver writes the files itself.
    pub target_path: String,
    /// The request's `secretSync*` attributes as sent; [`crate::sync`] checks them against the
    /// SecretProviderClass object and never takes a mapping from them.
    pub sync_attributes: BTreeMap<String, String>,
}

impl MountConfig {
    /// The SecretProviderClass as messages and audit events name it: `ns/name`, or by the pod
    /// that mounts it when the request does not say (drivers up to v1.5 send no
    /// `secretProviderClass` on rotation calls).
    pub fn spc_label(&self) -> String {
        match (&self.spc_name, self.pod_label()) {
            (Some(name), _) => self.qualify(name),
            (None, Some(pod)) => format!("the SecretProviderClass of pod {pod}"),
            (None, None) => "a SecretProviderClass the driver did not name".to_owned(),
        }
    }

    /// The pod as `ns/name`, when the driver named it.
    pub fn pod_label(&self) -> Option<String> {
        (!self.pod.name.is_empty()).then(|| self.qualify(&self.pod.name))
    }

    fn qualify(&self, name: &str) -> String {
        match self.pod.namespace.as_str() {
            "" => name.to_owned(),
            ns => format!("{ns}/{name}"),
        }
    }
}

/// How the pod authenticates to Akeyless, as the SPC (and its nodePublishSecretRef) says.
///
/// Nothing here is resolved yet: which pod token, provider default or node identity proves the
/// identity is decided by [`crate::auth`], which also knows the admin's flags.
#[derive(Debug, Clone, Default)]
pub struct AccessConfig {
    /// `akeylessAccessType`; `None` when unset (access_key, or the provider's default type).
    pub access_type: Option<AccessType>,
    /// `akeylessAccessID`; empty when unset, which selects the provider's own identity.
    pub access_id: String,
    /// The access key (`access_key`), from the nodePublishSecretRef or the SPC.
    pub access_key: Option<SecretString>,
    /// The Universal Identity `u-` token (`universal_identity`), from the nodePublishSecretRef
    /// or the SPC.
    pub uid_token: Option<SecretString>,
    /// `akeylessK8sAuthConfigName`: the K8s auth config on the Gateway.
    pub k8s_auth_config_name: Option<String>,
    /// `akeylessTokenAudience`: which of the pod's service-account tokens to use. `Some("")`
    /// (set but empty) is the kube-apiserver's own audience.
    pub token_audience: Option<String>,
    pub azure_object_id: Option<String>,
    pub azure_client_id: Option<String>,
    pub azure_tenant_id: Option<String>,
    pub aws_role_arn: Option<String>,
    pub gcp_audience: Option<String>,
    pub gcp_service_account: Option<String>,
    pub gcp_workload_identity_audience: Option<String>,
}

impl AccessConfig {
    /// The access type in effect when the SPC names one (else `access_key`), for messages.
    pub fn effective_type(&self) -> AccessType {
        self.access_type.unwrap_or(AccessType::AccessKey)
    }
}

/// Akeyless auth methods, by the names of `akeylessAccessType` (the Go provider's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessType {
    AccessKey,
    K8s,
    Jwt,
    Oidc,
    AzureAd,
    AwsIam,
    Gcp,
    UniversalIdentity,
}

impl AccessType {
    const ALL: [(&'static str, AccessType); 8] = [
        ("access_key", AccessType::AccessKey),
        ("k8s", AccessType::K8s),
        ("jwt", AccessType::Jwt),
        ("oidc", AccessType::Oidc),
        ("azure_ad", AccessType::AzureAd),
        ("aws_iam", AccessType::AwsIam),
        ("gcp", AccessType::Gcp),
        ("universal_identity", AccessType::UniversalIdentity),
    ];

    /// The wire name Akeyless expects in `access-type`.
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, t)| *t == self)
            .map(|(n, _)| *n)
            .unwrap_or("access_key")
    }

    /// Parses an `akeylessAccessType` value (case-insensitive; `api_key` = `access_key`).
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        // `api_key` is what ESO and the CLI call an access key; it is not a server value.
        if text.eq_ignore_ascii_case("api_key") {
            return Some(Self::AccessKey);
        }
        Self::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(text))
            .map(|(_, t)| *t)
    }

    pub fn names() -> String {
        Self::ALL.map(|(n, _)| n).join(", ")
    }

    /// The parameters only some access types read, and which: what [`crate::auth`] reads for
    /// this type. The others ignore them.
    pub fn own_parameters(self) -> &'static [&'static str] {
        match self {
            Self::AccessKey => &[keys::ACCESS_KEY],
            Self::UniversalIdentity => &[keys::UID_TOKEN],
            Self::K8s => &[keys::K8S_AUTH_CONFIG_NAME, keys::TOKEN_AUDIENCE],
            Self::Jwt | Self::Oidc => &[keys::TOKEN_AUDIENCE],
            Self::AzureAd => &[
                keys::AZURE_CLIENT_ID,
                keys::AZURE_TENANT_ID,
                keys::AZURE_OBJECT_ID,
                keys::TOKEN_AUDIENCE,
            ],
            Self::AwsIam => &[keys::AWS_ROLE_ARN, keys::TOKEN_AUDIENCE],
            Self::Gcp => &[
                keys::GCP_AUDIENCE,
                keys::GCP_SERVICE_ACCOUNT,
                keys::GCP_WORKLOAD_IDENTITY_AUDIENCE,
                keys::TOKEN_AUDIENCE,
            ],
        }
    }

    /// The access types that read `parameter`, when only some do.
    pub fn reading(parameter: &str) -> Vec<AccessType> {
        Self::ALL
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| t.own_parameters().contains(&parameter))
            .collect()
    }
}

impl fmt::Display for AccessType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is mounting: the pod the driver names in the volume context.
#[derive(Debug, Clone, Default)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
    /// Service-account tokens the driver requested for the pod, by audience.
    pub tokens: BTreeMap<String, PodToken>,
}

/// A pod-bound service-account token from `csi.storage.k8s.io/serviceAccount.tokens`.
#[derive(Debug, Clone, Deserialize)]
pub struct PodToken {
    pub token: SecretString,
    #[serde(rename = "expirationTimestamp", default)]
    pub expiration: Option<String>,
}

/// Invalid input: every problem found, each naming the field and what to fix.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid SecretProviderClass parameters: {}", .problems.join("; "))]
pub struct ParamsError {
    pub problems: Vec<String>,
}

/// Parses and validates a `Mount` request.
pub fn parse(request: &MountRequest) -> Result<MountConfig, ParamsError> {
    let mut problems = Vec::new();

    let attributes = parse_attributes(&request.attributes, &mut problems);
    let secrets = parse_secrets(&request.secrets, &mut problems);
    let default_mode = parse_permission(&request.permission, &mut problems);
    let attr = |key: &str| {
        attributes
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    };

    let gateway = attr(keys::GATEWAY_URL).and_then(|raw| match parse_gateway_url(raw) {
        Ok(url) => Some(url),
        Err(why) => {
            problems.push(format!("{}: {why}", keys::GATEWAY_URL));
            None
        }
    });

    let access = parse_access(&attributes, &secrets, &mut problems);
    let objects = match attributes.get(keys::OBJECTS).map(|s| s.as_str()) {
        None | Some("") => {
            problems.push(format!(
                "{}: missing; list the items to mount as YAML, e.g. \"- secretPath: /path/to/item\\n  fileName: item\"",
                keys::OBJECTS
            ));
            Vec::new()
        }
        Some(text) => parse_objects_cached(text, default_mode, &mut problems),
    };

    let pod = PodInfo {
        namespace: attr(keys::POD_NAMESPACE).unwrap_or_default().to_owned(),
        name: attr(keys::POD_NAME).unwrap_or_default().to_owned(),
        uid: attr(keys::POD_UID).unwrap_or_default().to_owned(),
        service_account: attr(keys::SERVICE_ACCOUNT).unwrap_or_default().to_owned(),
        tokens: attr(keys::SA_TOKENS)
            .map(|raw| parse_tokens(raw, &mut problems))
            .unwrap_or_default(),
    };

    if !problems.is_empty() {
        return Err(ParamsError { problems });
    }
    Ok(MountConfig {
        gateway,
        access,
        objects,
        pod,
        spc_name: attr(keys::SPC_NAME).map(str::to_owned),
        target_path: request.target_path.clone(),
        sync_attributes: attributes
            .iter()
            .filter(|(k, _)| k.starts_with(crate::sync::PARAMETER_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

/// Who a request is for, even when the rest of it does not parse: for audit records of
/// refused mounts.
#[derive(Debug, Clone, Default)]
pub struct PodHint {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// Best-effort [`PodHint`] from raw attributes; empty fields where they cannot be read.
pub fn pod_hint(attributes: &str) -> PodHint {
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(attributes).unwrap_or_default();
    let get = |key: &str| {
        map.get(key)
            .and_then(|v| v.as_str())
            .map(|v| v.chars().take(253).collect())
            .unwrap_or_default()
    };
    PodHint {
        namespace: get(keys::POD_NAMESPACE),
        name: get(keys::POD_NAME),
        uid: get(keys::POD_UID),
        service_account: get(keys::SERVICE_ACCOUNT),
    }
}

/// The access parameters. Only what the SPC itself gets wrong is a problem here; what may come
/// from the provider's defaults (an unset access id, config name, ...) is checked by `auth`.
fn parse_access(
    attributes: &BTreeMap<String, String>,
    secrets: &BTreeMap<String, String>,
    problems: &mut Vec<String>,
) -> AccessConfig {
    let attr = |key: &str| {
        attributes
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    // The nodePublishSecretRef Secret is the recommended home of credentials; an SPC may carry
    // them inline like the Go provider's examples do. The Secret wins when both are set.
    let credential = |key: &str| {
        secrets
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
            .map(SecretString::new)
            .or_else(|| attr(key).map(SecretString::new))
    };

    let access_type = attr(keys::ACCESS_TYPE).and_then(|raw| {
        let parsed = AccessType::parse(&raw);
        if parsed.is_none() {
            problems.push(format!(
                "{}: {raw:?} is not a supported access type; use one of {}",
                keys::ACCESS_TYPE,
                AccessType::names()
            ));
        }
        parsed
    });

    let access_id = attr(keys::ACCESS_ID).unwrap_or_default();
    if access_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        problems.push(format!("{}: contains whitespace", keys::ACCESS_ID));
    }

    let access_key = credential(keys::ACCESS_KEY);
    let uid_token = credential(keys::UID_TOKEN);
    // With its own access id, an SPC must bring the credential its type needs.
    if !access_id.is_empty() {
        match access_type.unwrap_or(AccessType::AccessKey) {
            AccessType::AccessKey if access_key.is_none() => problems.push(format!(
                "{}: missing; put the access key under key {} of the Secret named in the volume's \
                 nodePublishSecretRef (or, for tests only, in the SecretProviderClass)",
                keys::ACCESS_KEY,
                keys::ACCESS_KEY
            )),
            AccessType::UniversalIdentity if uid_token.is_none() => problems.push(format!(
                "{}: missing; put the Universal Identity token (u-...) under key {} of the Secret \
                 named in the volume's nodePublishSecretRef",
                keys::UID_TOKEN,
                keys::UID_TOKEN
            )),
            _ => {}
        }
    }
    if uid_token
        .as_ref()
        .is_some_and(|t| !t.expose().starts_with("u-"))
    {
        // Never echo it: it is a credential.
        problems.push(format!(
            "{}: not a Universal Identity token (they start with \"u-\")",
            keys::UID_TOKEN
        ));
    }

    let gcp_workload_identity_audience = attr(keys::GCP_WORKLOAD_IDENTITY_AUDIENCE);
    AccessConfig {
        access_type,
        access_id,
        access_key,
        uid_token,
        k8s_auth_config_name: attr(keys::K8S_AUTH_CONFIG_NAME),
        // Set-but-empty is meaningful here: the kube-apiserver's own audience.
        token_audience: attributes
            .get(keys::TOKEN_AUDIENCE)
            .map(|v| v.trim().to_owned()),
        azure_object_id: attr(keys::AZURE_OBJECT_ID),
        azure_client_id: attr(keys::AZURE_CLIENT_ID),
        azure_tenant_id: attr(keys::AZURE_TENANT_ID),
        aws_role_arn: attr(keys::AWS_ROLE_ARN),
        gcp_audience: attr(keys::GCP_AUDIENCE),
        gcp_service_account: attr(keys::GCP_SERVICE_ACCOUNT),
        gcp_workload_identity_audience,
    }
}

fn parse_attributes(raw: &str, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    match serde_json::from_str::<BTreeMap<String, String>>(raw) {
        Ok(map) => map,
        Err(e) => {
            problems.push(format!(
                "attributes: not a JSON object of strings (line {}, column {}); every \
                 SecretProviderClass parameter must be a string: quote numbers and booleans",
                e.line(),
                e.column()
            ));
            BTreeMap::new()
        }
    }
}

/// `secrets` is the nodePublishSecretRef data: `null` without a ref, a JSON map with one.
fn parse_secrets(raw: &str, problems: &mut Vec<String>) -> BTreeMap<String, String> {
    let raw = raw.trim();
    if raw.is_empty() || raw == "null" {
        return BTreeMap::new();
    }
    match serde_json::from_str::<Option<BTreeMap<String, String>>>(raw) {
        Ok(map) => {
            let mut map = map.unwrap_or_default();
            // Newer drivers copy the pod's tokens here too; they are read from attributes.
            map.remove(keys::SA_TOKENS);
            map
        }
        Err(e) => {
            // Never echo the text: it holds credentials.
            problems.push(format!(
                "secrets: the nodePublishSecretRef data is not a JSON object of strings (line {}, column {})",
                e.line(),
                e.column()
            ));
            BTreeMap::new()
        }
    }
}

/// `permission` is the volume's default mode as a decimal JSON number in a string ("420").
fn parse_permission(raw: &str, problems: &mut Vec<String>) -> u32 {
    let raw = raw.trim();
    if raw.is_empty() {
        return DEFAULT_MODE;
    }
    match raw.parse::<u32>() {
        Ok(mode) if mode <= 0o777 => mode,
        _ => {
            problems.push(format!(
                "permission: {raw:?} is not a decimal file mode between 0 and 511 (e.g. \"420\" for 0644)"
            ));
            DEFAULT_MODE
        }
    }
}

/// The API base URL of Akeyless SaaS or a Gateway, e.g. `https://gw:8000/api/v2`.
pub fn parse_gateway_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw.trim()).map_err(|e| format!("{raw:?} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{raw:?} must be an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{raw:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        // Never echo it: the userinfo may be a credential.
        return Err("the URL must not contain a user name or password".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{raw:?} must not have a query or fragment"));
    }
    Ok(url)
}

fn parse_tokens(raw: &str, problems: &mut Vec<String>) -> BTreeMap<String, PodToken> {
    match serde_json::from_str::<BTreeMap<String, PodToken>>(raw) {
        Ok(tokens) => tokens,
        Err(e) => {
            problems.push(format!(
                "{}: not a JSON map of audience to {{token, expirationTimestamp}} (line {}, column {})",
                keys::SA_TOKENS,
                e.line(),
                e.column()
            ));
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(attrs: &[(&str, &str)], secrets: &str) -> MountRequest {
        let map: BTreeMap<&str, &str> = attrs.iter().copied().collect();
        MountRequest {
            attributes: serde_json::to_string(&map).unwrap(),
            secrets: secrets.to_owned(),
            target_path: "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/v/mount".into(),
            permission: "420".into(),
            current_object_version: vec![],
        }
    }

    const GO_PROVIDER_OBJECTS: &str = "- secretPath: \"/full/path/to/secret/item\"\n  fileName: \"local-secret-filename\"\n- secretPath: \"/full/path/to/certificate/item\"\n  fileName: \"local-certificate-filename\"\n";

    #[test]
    fn go_provider_spc_parses_unchanged() {
        let req = request(
            &[
                ("akeylessGatewayURL", "https://api.akeyless.io"),
                ("akeylessAccessID", "p-abcdefgh1234"),
                ("akeylessAccessType", "access_key"),
                ("objects", GO_PROVIDER_OBJECTS),
                ("secretProviderClass", "nginx"),
                ("csi.storage.k8s.io/pod.name", "web-1"),
                ("csi.storage.k8s.io/pod.namespace", "shop"),
                ("csi.storage.k8s.io/pod.uid", "0f0c"),
                ("csi.storage.k8s.io/serviceAccount.name", "web"),
            ],
            r#"{"akeylessAccessKey":"the-key"}"#,
        );
        let cfg = parse(&req).unwrap();
        assert_eq!(cfg.gateway.unwrap().as_str(), "https://api.akeyless.io/");
        assert_eq!(cfg.access.access_type, Some(AccessType::AccessKey));
        assert_eq!(cfg.access.access_key.unwrap().expose(), "the-key");
        assert_eq!(cfg.objects.len(), 2);
        assert_eq!(cfg.objects[0].file_name, "local-secret-filename");
        assert_eq!(cfg.objects[0].mode, 0o644);
        assert_eq!(
            cfg.objects[0].id(),
            "local-secret-filename:/full/path/to/secret/item"
        );
        assert_eq!(cfg.pod.namespace, "shop");
        assert_eq!(cfg.spc_name.as_deref(), Some("nginx"));
    }

    #[test]
    fn access_key_may_sit_in_the_spc_and_type_defaults_to_access_key() {
        let req = request(
            &[
                ("akeylessAccessID", "p-1"),
                ("akeylessAccessKey", "inline"),
                ("objects", "- secretPath: /a/b"),
            ],
            "null",
        );
        let cfg = parse(&req).unwrap();
        assert!(cfg.gateway.is_none());
        assert_eq!(cfg.access.access_key.unwrap().expose(), "inline");
        assert_eq!(
            cfg.objects[0].file_name, "b",
            "fileName defaults to the last element"
        );
    }

    fn objects_of(yaml: &str) -> Result<Vec<ObjectSpec>, ParamsError> {
        let req = request(
            &[("akeylessAccessID", "p-1"), ("objects", yaml)],
            r#"{"akeylessAccessKey":"k"}"#,
        );
        parse(&req).map(|c| c.objects)
    }

    #[test]
    fn item_types_issuers_folders_templates_and_cert_files_parse() {
        let yaml = r#"
- secretPath: /d
  type: dynamic
  ttl: 90m
- secretPath: /p
  type: PKI_CERT_ISSUER
  commonName: web
  altNames: "a, b"
  keyType: rsa-2048
  certFile: tls.crt
  keyFile: tls.key
- secretPath: /s
  type: ssh
  username: deploy
  publicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGnM0bWmN2mB3mHq0m3QmJ0yq5p1cK0s9mXWkq3Kc1fA x"
- secretPath: /f/**
  fileName: f
- path: /g
  filter: db
- fileName: app.env
  template: "{{ .a }}"
  keys: {a: /x, b: {secretPath: /y, property: p, version: 2}}
- secretPath: /o
  optional: true
"#;
        let objects = objects_of(yaml).unwrap();
        assert_eq!(
            objects[0].kind,
            Some(ItemKind::Dynamic(LeaseSpec {
                ttl: Some(std::time::Duration::from_secs(5400))
            }))
        );
        let Some(ItemKind::Pki(pki)) = &objects[1].kind else {
            panic!("pki")
        };
        assert_eq!(pki.alt_names, ["a", "b"]);
        assert_eq!(pki.key_type, KeyType::Rsa2048);
        assert_eq!(
            objects[1].file_name, "tls.crt",
            "the first split file names it"
        );
        assert_eq!(objects[1].planned_files(), ["tls.crt", "tls.key"]);
        assert!(matches!(&objects[2].kind, Some(ItemKind::Ssh(s)) if s.username == "deploy"));
        assert_eq!(
            (objects[3].secret_path.as_str(), &objects[3].shape),
            (
                "/f",
                &Shape::Folder(Folder {
                    filter: None,
                    recursive: true
                })
            )
        );
        assert!(
            matches!(&objects[4].shape, Shape::Folder(f) if f.filter.as_deref() == Some("db") && !f.recursive)
        );
        let Shape::Template(t) = &objects[5].shape else {
            panic!("template")
        };
        assert_eq!(t.keys["b"].version, Some(2));
        assert!(objects[6].optional);
    }

    #[test]
    fn misplaced_or_incomplete_item_fields_are_all_reported() {
        let yaml = r#"
- secretPath: /a
  commonName: x
- secretPath: /b
  type: pki
- secretPath: /c
  type: ssh
  username: u
  publicKey: "-----BEGIN OPENSSH PRIVATE KEY----- abc"
- secretPath: /d
  certFile: d.crt
- secretPath: /e
  type: dynamic
  version: 2
- secretPath: /f/*
  version: 3
- secretPath: /g*
- secretPath: /h
  type: vault
- fileName: t
  template: "{{ .x "
  keys: {x: /x}
- secretPath: /i
  type: static
- secretPath: /i
  type: rotated
"#;
        let problems = objects_of(yaml).unwrap_err().problems.join("\n");
        for expected in [
            "objects[0] (/a): commonName applies to type: pki only",
            "objects[1] (/b): type: pki needs commonName",
            "objects[2] (/c): publicKey holds a private key",
            "objects[3] (/d): certFile, keyFile and chainFile need type: certificate or type: pki",
            "objects[4] (/e): version does not apply",
            "objects[5] (/f/*): version cannot be pinned for a folder's items",
            "objects[6] (/g*): secretPath may hold '*' only as a final /*",
            "objects[7] (/h): type \"vault\" is not one of",
            "objects[8]: template: unclosed",
            "/i is declared both type: static and type: rotated",
        ] {
            assert!(
                problems.contains(expected),
                "missing {expected:?} in:\n{problems}"
            );
        }
        assert!(!problems.contains("abc"), "no key material echoed");
    }

    #[test]
    fn new_object_fields_parse() {
        let objects = "- secretPath: /a\n  fileName: conf/a.json\n  version: 3\n  property: db.password\n  encoding: base64\n  filePermission: \"0440\"\n- secretPath: /b\n  fileName: b\n  filePermission: 0600\n";
        let req = request(
            &[("akeylessAccessID", "p-1"), ("objects", objects)],
            r#"{"akeylessAccessKey":"k","csi.storage.k8s.io/serviceAccount.tokens":"{}"}"#,
        );
        let cfg = parse(&req).unwrap();
        let a = &cfg.objects[0];
        assert_eq!(
            (a.version, a.property.as_deref(), a.encoding, a.mode),
            (Some(3), Some("db.password"), Encoding::Base64, 0o440)
        );
        assert_eq!(cfg.objects[1].mode, 0o600, "unquoted 0600 is read as octal");
    }

    #[test]
    fn cached_objects_give_the_same_result_and_problems() {
        let text = "- secretPath: /cache/a\n  fileName: ../bad\n";
        for _ in 0..2 {
            let mut problems = Vec::new();
            let objects = parse_objects_cached(text, 0o600, &mut problems);
            assert!(objects.is_empty());
            assert_eq!(problems.len(), 1, "{problems:?}");
        }
        let mut problems = Vec::new();
        let a = parse_objects_cached("- secretPath: /cache/b", 0o600, &mut problems);
        let b = parse_objects_cached("- secretPath: /cache/b", 0o400, &mut problems);
        assert_eq!(
            (a[0].mode, b[0].mode),
            (0o600, 0o400),
            "the default mode is part of the key"
        );
    }

    #[test]
    fn azure_array_form_is_accepted() {
        let objects =
            "array:\n  - |\n    secretPath: /a\n    fileName: a\n  - |\n    secretPath: /b\n";
        let req = request(
            &[("akeylessAccessID", "p-1"), ("objects", objects)],
            r#"{"akeylessAccessKey":"k"}"#,
        );
        let cfg = parse(&req).unwrap();
        assert_eq!(cfg.objects.len(), 2);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let objects = "- secretPath: /a\n  fileName: ../etc/passwd\n- secretPath: /b\n  fileName: /abs\n- secretPath: /c\n  fileName: x\n- secretPath: /d\n  fileName: x\n- secretPath: /e\n  fileName: ./e\n- secretPath: /f\n  fileName: f\n  filePermission: \"0999\"\n  encoding: rot13\n";
        let req = request(
            &[
                ("akeylessAccessType", "magic"),
                ("akeylessGatewayURL", "ftp://gw"),
                ("objects", objects),
            ],
            "null",
        );
        let err = parse(&req).unwrap_err();
        let all = err.to_string();
        for needle in [
            "akeylessAccessType: \"magic\"",
            "akeylessGatewayURL",
            "objects[0] (/a): fileName \"../etc/passwd\"",
            "objects[1] (/b): fileName \"/abs\" is absolute",
            "fileName \"x\" is used by both /c and /d",
            "objects[4] (/e): fileName \"./e\"",
            "filePermission \"0999\"",
            "encoding \"rot13\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in {all}");
        }
    }

    #[test]
    fn bad_yaml_names_its_line_and_unknown_fields_are_refused() {
        let req = request(
            &[
                ("akeylessAccessID", "p-1"),
                ("objects", "- secretPath: /a\n  fileName: [oops\n"),
            ],
            r#"{"akeylessAccessKey":"k"}"#,
        );
        let msg = parse(&req).unwrap_err().to_string();
        assert!(
            msg.contains("objects: not a YAML list") && msg.contains("line 2"),
            "{msg}"
        );

        let req = request(
            &[
                ("akeylessAccessID", "p-1"),
                ("objects", "- secretPath: /a\n  filename: a\n"),
            ],
            r#"{"akeylessAccessKey":"k"}"#,
        );
        let msg = parse(&req).unwrap_err().to_string();
        assert!(msg.contains("unknown field `filename`"), "{msg}");
    }

    #[test]
    fn missing_or_empty_objects_are_refused() {
        for objects in [None, Some(""), Some("[]")] {
            let mut attrs = vec![("akeylessAccessID", "p-1")];
            if let Some(o) = objects {
                attrs.push(("objects", o));
            }
            let msg = parse(&request(&attrs, r#"{"akeylessAccessKey":"k"}"#))
                .unwrap_err()
                .to_string();
            assert!(msg.contains("objects:"), "{msg}");
        }
    }

    #[test]
    fn file_name_rules_match_the_driver() {
        assert!(check_file_name("a/b.txt").is_ok());
        assert!(check_file_name("..data").is_err());
        assert!(check_file_name("a/../b").is_err());
        assert!(check_file_name("a/").is_err());
        assert!(check_file_name("a//b").is_err());
        assert!(check_file_name(&"x".repeat(256)).is_err());
        assert!(check_file_name(&format!("{}/b", "x".repeat(255))).is_ok());
    }

    #[test]
    fn a_file_cannot_also_be_a_directory() {
        let objects = "- secretPath: /a\n  fileName: tls\n- secretPath: /b\n  fileName: tls/key\n";
        let msg = parse(&request(
            &[("akeylessAccessID", "p-1"), ("objects", objects)],
            r#"{"akeylessAccessKey":"k"}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("\"tls\" is a file but \"tls/key\""), "{msg}");
    }

    #[test]
    fn bad_json_and_modes_are_reported_without_echoing_secrets() {
        let req = MountRequest {
            attributes: "{not json".into(),
            secrets: "{\"akeylessAccessKey\": \"hunter2\"".into(),
            target_path: String::new(),
            permission: "0x1a4".into(),
            current_object_version: vec![],
        };
        let msg = parse(&req).unwrap_err().to_string();
        assert!(msg.contains("attributes: not a JSON object"), "{msg}");
        assert!(
            msg.contains("secrets: the nodePublishSecretRef data"),
            "{msg}"
        );
        assert!(msg.contains("permission: \"0x1a4\""), "{msg}");
        assert!(!msg.contains("hunter2"));
    }

    #[test]
    fn gateway_urls() {
        assert!(parse_gateway_url("http://gw.akeyless.svc:8000/api/v2").is_ok());
        assert!(parse_gateway_url("https://api.akeyless.io").is_ok());
        let err = parse_gateway_url("https://user:pw@gw").unwrap_err();
        assert!(!err.contains("pw"));
        assert!(parse_gateway_url("gw:8000").is_err());
        assert!(parse_gateway_url("https://gw?x=1").is_err());
    }

    #[test]
    fn an_spc_with_an_access_id_must_bring_its_credential() {
        let objects = ("objects", "- secretPath: /a");
        let msg = parse(&request(&[("akeylessAccessID", "p-1"), objects], "null"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("akeylessAccessKey: missing"), "{msg}");
        let msg = parse(&request(
            &[
                ("akeylessAccessID", "p-1"),
                ("akeylessAccessType", "universal_identity"),
                objects,
            ],
            "null",
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("akeylessUIDInitToken: missing"), "{msg}");
        // Without an access id the provider's own identity may apply: auth decides.
        let cfg = parse(&request(&[objects], "null")).unwrap();
        assert!(cfg.access.access_id.is_empty() && cfg.access.access_type.is_none());
    }

    #[test]
    fn access_parameters_parse() {
        let req = request(
            &[
                ("akeylessAccessID", "p-1"),
                ("akeylessAccessType", "K8S"),
                ("akeylessK8sAuthConfigName", "prod-k8s"),
                ("akeylessTokenAudience", ""),
                ("akeylessAzureClientID", "cid"),
                ("akeylessGCPAudience", "aud"),
                ("objects", "- secretPath: /a"),
            ],
            r#"{"akeylessUIDInitToken":"u-abc"}"#,
        );
        let access = parse(&req).unwrap().access;
        assert_eq!(access.access_type, Some(AccessType::K8s));
        assert_eq!(access.k8s_auth_config_name.as_deref(), Some("prod-k8s"));
        assert_eq!(access.token_audience.as_deref(), Some(""), "set but empty");
        assert_eq!(access.azure_client_id.as_deref(), Some("cid"));
        assert_eq!(access.gcp_audience.as_deref(), Some("aud"));
        assert_eq!(access.uid_token.unwrap().expose(), "u-abc");

        let msg = parse(&request(
            &[
                ("akeylessAccessID", "p-1"),
                ("akeylessAccessType", "universal_identity"),
                ("objects", "- secretPath: /a"),
            ],
            r#"{"akeylessUIDInitToken":"t-not-a-uid-hunter2"}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(msg.contains("not a Universal Identity token"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn pod_tokens_parse_and_stay_redacted() {
        let tokens = r#"{"akeyless":{"token":"eyJhbGciOi.secret","expirationTimestamp":"2026-05-01T13:00:00Z"}}"#;
        let req = request(
            &[
                ("akeylessAccessID", "p-1"),
                ("objects", "- secretPath: /a"),
                ("csi.storage.k8s.io/serviceAccount.tokens", tokens),
            ],
            r#"{"akeylessAccessKey":"k"}"#,
        );
        let cfg = parse(&req).unwrap();
        assert_eq!(
            cfg.pod.tokens["akeyless"].token.expose(),
            "eyJhbGciOi.secret"
        );
        assert!(!format!("{cfg:?}").contains("eyJhbGciOi"));
        assert!(!format!("{cfg:?}").contains("\"k\""));
    }
}
