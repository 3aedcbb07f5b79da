//! `aws_iam`: the `cloud-id` is a SigV4-signed, unsent `sts:GetCallerIdentity` request
//! (akeyless-api.md §1.3); Akeyless sends it to STS to learn who signed it. The signing
//! credentials are the pod's — EKS Pod Identity (its token for `pods.eks.amazonaws.com` at the
//! node's Pod Identity agent) or IRSA (its token for `sts.amazonaws.com` and a role ARN, at
//! `AssumeRoleWithWebIdentity`) — or, when the admin enables it, the node's.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use super::exchange::ExchangeError;
use super::resolve::Ctx;
use super::settings::{AwsCredentials, endpoint};
use super::{AuthError, LoginCtx, PodJwt, Setting};
use crate::params::keys;
use crate::secret::SecretString;

pub const IRSA_AUDIENCE: &str = "sts.amazonaws.com";
pub const POD_IDENTITY_AUDIENCE: &str = "pods.eks.amazonaws.com";

/// What Akeyless replays: always global STS in us-east-1, whatever endpoint fetched the keys.
const STS_URL: &str = "https://sts.amazonaws.com/";
const STS_HOST: &str = "sts.amazonaws.com";
const STS_BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";
const REGION: &str = "us-east-1";

#[derive(Clone)]
pub(super) enum Proof {
    /// IRSA: the pod's token is exchanged for the role's credentials.
    WebIdentity {
        token: PodJwt,
        role_arn: Setting,
        session: String,
    },
    /// EKS Pod Identity: the agent on the node trades the pod's token for its credentials.
    PodIdentity { token: PodJwt },
    /// The node's own credentials (the provider's environment, else IMDSv2).
    Node,
}

pub(super) fn proof(ctx: &Ctx<'_>) -> Result<Proof, AuthError> {
    let irsa_audience = ctx.audience(IRSA_AUDIENCE);
    let pod_identity_audience = ctx.audience(POD_IDENTITY_AUDIENCE);
    // Without a role ARN in the SPC, a Pod Identity token the driver sent decides.
    if ctx.access.aws_role_arn.is_none()
        && let Some(token) = ctx.sent_token(pod_identity_audience)
    {
        return Ok(Proof::PodIdentity { token });
    }
    let role = ctx.setting(
        &ctx.access.aws_role_arn,
        "eks.amazonaws.com/role-arn",
        keys::AWS_ROLE_ARN,
    );
    if let Some(role_arn) = role {
        if let Setting::Given(arn) = &role_arn {
            check_role_arn(arn)?;
        }
        let token = ctx.pod_token(irsa_audience).ok_or_else(|| {
            AuthError::Precondition(ctx.missing_audience(irsa_audience, " (IRSA)"))
        })?;
        // The session name shows in CloudTrail: the pod, within STS's 64-character limit.
        let session: String = format!("akeyless-csi-{}", ctx.pod.uid)
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "=,.@-_".contains(*c))
            .take(64)
            .collect();
        return Ok(Proof::WebIdentity {
            token,
            role_arn,
            session,
        });
    }
    if ctx.sent_token(irsa_audience).is_some() {
        return Err(AuthError::Missing(format!(
            "{}: missing; IRSA needs the IAM role ARN (the eks.amazonaws.com/role-arn annotation \
             of the pod's service account)",
            keys::AWS_ROLE_ARN
        )));
    }
    let missing = ctx.missing_audience(
        pod_identity_audience,
        &format!(
            " for EKS Pod Identity (or, for IRSA, set {} and add the audience {IRSA_AUDIENCE})",
            keys::AWS_ROLE_ARN
        ),
    );
    ctx.node_identity("the node's AWS credentials", &missing)?;
    Ok(Proof::Node)
}

fn check_role_arn(arn: &str) -> Result<(), AuthError> {
    if arn.starts_with("arn:") && !arn.chars().any(char::is_whitespace) {
        return Ok(());
    }
    Err(AuthError::Missing(format!(
        "{}: {arn:?} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)",
        keys::AWS_ROLE_ARN
    )))
}

impl Proof {
    /// The pod token it uses; `None` and `true`: the node's identity.
    pub fn pod_token(&self) -> (Option<&PodJwt>, bool) {
        match self {
            Self::WebIdentity { token, .. } | Self::PodIdentity { token } => (Some(token), false),
            Self::Node => (None, true),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::WebIdentity { .. } => "aws irsa",
            Self::PodIdentity { .. } => "aws eks pod identity",
            Self::Node => "aws node credentials",
        }
    }

    pub fn key_parts(&self) -> Vec<&str> {
        match self {
            Self::WebIdentity {
                token,
                role_arn,
                session: _,
            } => {
                let mut parts = vec![role_arn.key_part()];
                parts.extend(token.key_parts());
                parts
            }
            Self::PodIdentity { token } => token.key_parts(),
            Self::Node => vec![],
        }
    }

    pub async fn cloud_id(&self, login: &LoginCtx<'_>) -> Result<SecretString, AuthError> {
        let credentials = self.credentials(login).await?;
        let now = chrono::Utc::now();
        Ok(cloud_id(
            &credentials,
            &now.format("%Y%m%dT%H%M%SZ").to_string(),
        ))
    }

    async fn credentials(&self, login: &LoginCtx<'_>) -> Result<AwsCredentials, AuthError> {
        let (http, settings, deadline) = (login.http, login.settings, login.deadline);
        let endpoints = &settings.endpoints;
        match self {
            Self::WebIdentity {
                token,
                role_arn,
                session,
            } => {
                const SERVICE: &str = "AWS STS AssumeRoleWithWebIdentity";
                let role_arn = role_arn.get(login).await?;
                check_role_arn(&role_arn)?;
                let token = token.get(login).await?;
                let form = url::form_urlencoded::Serializer::new(String::new())
                    .append_pair("Action", "AssumeRoleWithWebIdentity")
                    .append_pair("Version", "2011-06-15")
                    .append_pair("RoleArn", &role_arn)
                    .append_pair("RoleSessionName", session)
                    .append_pair("DurationSeconds", "900")
                    .append_pair("WebIdentityToken", token.expose())
                    .finish();
                let url = endpoint(&endpoints.aws_sts, "");
                let build = || {
                    http.client()
                        .post(&url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .header("accept", "application/xml")
                        .body(form.clone())
                };
                let body = http
                    .send(SERVICE, build, &[token.expose()], deadline)
                    .await?;
                let text = String::from_utf8_lossy(&body);
                let field =
                    |name: &str| xml_text(&text, name).ok_or_else(|| missing_field(SERVICE, name));
                Ok(AwsCredentials {
                    access_key_id: field("AccessKeyId")?,
                    secret_access_key: SecretString::new(field("SecretAccessKey")?),
                    session_token: Some(SecretString::new(field("SessionToken")?)),
                })
            }
            Self::PodIdentity { token } => {
                const SERVICE: &str = "EKS Pod Identity agent";
                let token = token.get(login).await?;
                let build = || {
                    http.client()
                        .get(endpoints.eks_pod_identity.clone())
                        .header("authorization", token.expose())
                };
                let body = http
                    .send(SERVICE, build, &[token.expose()], deadline)
                    .await?;
                json_credentials(SERVICE, &body)
            }
            Self::Node => {
                if let Some(credentials) = &settings.aws_node_credentials {
                    return Ok(credentials.clone());
                }
                const SERVICE: &str = "AWS instance metadata service";
                let imds = &endpoints.aws_imds;
                let token_url = endpoint(imds, "latest/api/token");
                let build = || {
                    http.client()
                        .put(&token_url)
                        .header("x-aws-ec2-metadata-token-ttl-seconds", "60")
                };
                let session =
                    String::from_utf8_lossy(&http.send(SERVICE, build, &[], deadline).await?)
                        .trim()
                        .to_owned();
                let roles_url = endpoint(imds, "latest/meta-data/iam/security-credentials/");
                let get = |url: String| {
                    let session = session.clone();
                    move || {
                        http.client()
                            .get(&url)
                            .header("x-aws-ec2-metadata-token", &session)
                    }
                };
                let roles = http
                    .send(SERVICE, get(roles_url.clone()), &[&session], deadline)
                    .await?;
                let role = String::from_utf8_lossy(&roles)
                    .lines()
                    .next()
                    .map(str::trim)
                    .filter(|r| !r.is_empty() && !r.contains('/'))
                    .map(str::to_owned)
                    .ok_or_else(|| ExchangeError {
                        service: SERVICE,
                        rejected: true,
                        reason: "the node has no IAM role (instance profile)".to_owned(),
                    })?;
                let body = http
                    .send(
                        SERVICE,
                        get(format!("{roles_url}{role}")),
                        &[&session],
                        deadline,
                    )
                    .await?;
                json_credentials(SERVICE, &body)
            }
        }
    }
}

fn missing_field(service: &'static str, name: &str) -> AuthError {
    AuthError::Exchange(ExchangeError {
        service,
        rejected: false,
        reason: format!("the answer has no {name}"),
    })
}

/// `{"AccessKeyId", "SecretAccessKey", "Token"}`, the container/IMDS credentials format.
fn json_credentials(service: &'static str, body: &[u8]) -> Result<AwsCredentials, AuthError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Raw {
        access_key_id: String,
        secret_access_key: SecretString,
        #[serde(default)]
        token: Option<SecretString>,
    }
    let raw: Raw = serde_json::from_slice(body)
        .map_err(|_| missing_field(service, "AccessKeyId/SecretAccessKey"))?;
    Ok(AwsCredentials {
        access_key_id: raw.access_key_id,
        secret_access_key: raw.secret_access_key,
        session_token: raw.token.filter(|t| !t.is_empty()),
    })
}

/// The text of the first `<name>…</name>` (STS answers are flat enough for this).
fn xml_text(xml: &str, name: &str) -> Option<String> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    let text = xml[start..end].trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// base64 of the JSON Akeyless expects (`akeyless-go-cloud-id`, with `sts_request_body`).
fn cloud_id(credentials: &AwsCredentials, amz_date: &str) -> SecretString {
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut headers = vec![
        (
            "content-type",
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        ),
        ("host", STS_HOST.to_owned()),
        ("x-amz-date", amz_date.to_owned()),
    ];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token", token.expose().to_owned()));
    }
    let authorization = sign(
        &Request {
            method: "POST",
            path: "/",
            query: "",
            headers: &headers,
            body: STS_BODY.as_bytes(),
        },
        credentials,
        amz_date,
        REGION,
        "sts",
    );
    // Go's http.Header: canonical names, each with a list of values; Host comes from the URL.
    let mut map = serde_json::Map::new();
    for (name, value) in &headers {
        if *name != "host" {
            map.insert(go_header_name(name), serde_json::json!([value]));
        }
    }
    map.insert(
        "Authorization".to_owned(),
        serde_json::json!([authorization]),
    );
    let document = serde_json::json!({
        "sts_request_method": "POST",
        "sts_request_url": b64(STS_URL.as_bytes()),
        "sts_request_body": b64(STS_BODY.as_bytes()),
        "sts_request_headers": b64(serde_json::Value::Object(map).to_string().as_bytes()),
    });
    SecretString::new(b64(document.to_string().as_bytes()))
}

/// `x-amz-date` → `X-Amz-Date`.
fn go_header_name(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .map(|c| c.to_ascii_uppercase().to_string() + chars.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("-")
}

/// An HTTP request to sign; header names lowercase, values as sent.
struct Request<'a> {
    method: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a [(&'a str, String)],
    body: &'a [u8],
}

/// The SigV4 `Authorization` header value.
fn sign(
    request: &Request<'_>,
    credentials: &AwsCredentials,
    amz_date: &str,
    region: &str,
    service: &str,
) -> String {
    let date = &amz_date[..amz_date.len().min(8)];
    let mut headers: Vec<(String, String)> = request
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_request = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        request.path,
        request.query,
        hex::encode(Sha256::digest(request.body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let secret = format!("AWS4{}", credentials.secret_access_key.expose());
    let mut key = hmac(secret.as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex::encode(hmac(&key, string_to_sign.as_bytes()));
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
        credentials.access_key_id
    )
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_credentials() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    /// AWS's documented SigV4 example (IAM ListUsers, 2015-08-30).
    #[test]
    fn sigv4_matches_the_aws_documentation_example() {
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
            ),
            ("host", "iam.amazonaws.com".to_owned()),
            ("x-amz-date", "20150830T123600Z".to_owned()),
        ];
        let authorization = sign(
            &Request {
                method: "GET",
                path: "/",
                query: "Action=ListUsers&Version=2010-05-08",
                headers: &headers,
                body: b"",
            },
            &example_credentials(),
            "20150830T123600Z",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn cloud_id_is_the_documented_json() {
        let mut credentials = example_credentials();
        credentials.session_token = Some("session-token-1".into());
        let id = cloud_id(&credentials, "20260101T000000Z");
        let b64 = base64::engine::general_purpose::STANDARD;
        let doc: serde_json::Value =
            serde_json::from_slice(&b64.decode(id.expose()).unwrap()).unwrap();
        assert_eq!(doc["sts_request_method"], "POST");
        let decode =
            |f: &str| String::from_utf8(b64.decode(doc[f].as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(decode("sts_request_url"), STS_URL);
        assert_eq!(decode("sts_request_body"), STS_BODY);
        let headers: serde_json::Value =
            serde_json::from_str(&decode("sts_request_headers")).unwrap();
        assert_eq!(headers["X-Amz-Security-Token"][0], "session-token-1");
        assert_eq!(headers["X-Amz-Date"][0], "20260101T000000Z");
        let auth = headers["Authorization"][0].as_str().unwrap();
        assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/sts/aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature="), "{auth}");
        assert!(
            !decode("sts_request_headers").contains("EXAMPLEKEY"),
            "never the secret key"
        );
    }

    #[test]
    fn sts_xml_and_header_names() {
        let xml = "<AssumeRoleWithWebIdentityResponse><Credentials><AccessKeyId>ASIA1</AccessKeyId>\n<SecretAccessKey>s</SecretAccessKey></Credentials></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(xml_text(xml, "AccessKeyId").as_deref(), Some("ASIA1"));
        assert_eq!(xml_text(xml, "SessionToken"), None);
        assert_eq!(
            go_header_name("x-amz-security-token"),
            "X-Amz-Security-Token"
        );
    }
}
