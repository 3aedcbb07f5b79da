//! `akeyless-csi-provider mount`: a driver-equivalent client for debugging a SecretProviderClass.
//!
//! It builds the `MountRequest` the driver would build (SPC parameters, then the pod's volume
//! attributes, then the pod-info keys kubelet adds; the nodePublishSecretRef data as `secrets`;
//! `permission` "420"), sends it over the socket with a deadline, writes the returned files with
//! their modes and prints the object versions.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::cli::MountArgs;
use crate::params::keys;
use crate::proto::v1alpha1::csi_driver_provider_client::CsiDriverProviderClient;
use crate::proto::v1alpha1::{MountRequest, MountResponse, VersionRequest, VersionResponse};

/// Why the mount client could not do its work (a refused mount is not an error here: it is
/// reported with its gRPC code).
#[derive(Debug, thiserror::Error)]
pub enum MountCliError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("cannot connect to the provider at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the provider returned an unsafe file path {0:?}; nothing was written")]
    UnsafePath(String),
    #[error("the provider at {socket} did not answer Version: {message}")]
    Version { socket: PathBuf, message: String },
    #[error("{0}")]
    Usage(String),
}

/// The pod whose mount is simulated.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub namespace: Option<String>,
    pub name: String,
    pub uid: String,
    pub service_account: String,
}

/// A SecretProviderClass as far as the driver reads it.
#[derive(Debug, Deserialize)]
pub struct Spc {
    #[serde(default)]
    pub metadata: Metadata,
    pub spec: SpcSpec,
}

#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SpcSpec {
    #[serde(default)]
    pub provider: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl Spc {
    /// Reads one YAML document as the driver reads a SecretProviderClass.
    pub fn from_value(value: serde_norway::Value) -> Result<Self, String> {
        serde_norway::from_value(value).map_err(|e| {
            format!("not a valid SecretProviderClass ({e}); every parameter value must be a string")
        })
    }

    /// The request the driver would send for this SecretProviderClass mounted by `pod`: SPC
    /// parameters, then the volume context (the pod's volumeAttributes, then kubelet's pod-info
    /// keys over them); the nodePublishSecretRef data as `secrets`; `permission` "420".
    pub fn request(
        &self,
        pod: &PodIdentity,
        secrets: &BTreeMap<String, String>,
        tokens_json: Option<&str>,
        extra_attributes: &BTreeMap<String, String>,
    ) -> Result<MountRequest, String> {
        if self.spec.parameters.is_empty() {
            return Err(
                "spec.parameters is empty; the driver refuses such a SecretProviderClass"
                    .to_owned(),
            );
        }
        let spc_name = self
            .metadata
            .name
            .clone()
            .unwrap_or_else(|| "unnamed".to_owned());
        let namespace = pod
            .namespace
            .clone()
            .or_else(|| self.metadata.namespace.clone())
            .unwrap_or_else(|| "default".to_owned());
        let mut attributes = self.spec.parameters.clone();
        attributes.insert(keys::SPC_NAME.to_owned(), spc_name);
        attributes.extend(extra_attributes.clone());
        attributes.insert(keys::POD_NAME.to_owned(), pod.name.clone());
        attributes.insert(keys::POD_NAMESPACE.to_owned(), namespace);
        attributes.insert(keys::POD_UID.to_owned(), pod.uid.clone());
        attributes.insert(
            keys::SERVICE_ACCOUNT.to_owned(),
            pod.service_account.clone(),
        );
        attributes.insert("csi.storage.k8s.io/ephemeral".to_owned(), "true".to_owned());
        if let Some(tokens) = tokens_json {
            attributes.insert(keys::SA_TOKENS.to_owned(), tokens.to_owned());
        }
        let secrets = if secrets.is_empty() {
            "null".to_owned()
        } else {
            serde_json::to_string(secrets).unwrap_or_else(|_| "null".to_owned())
        };
        Ok(MountRequest {
            attributes: serde_json::to_string(&attributes).unwrap_or_default(),
            secrets,
            target_path: format!(
                "/var/lib/kubelet/pods/{}/volumes/kubernetes.io~csi/secrets-store/mount",
                pod.uid
            ),
            permission: "420".to_owned(),
            current_object_version: Vec::new(),
        })
    }
}

/// Builds the request the driver would send for `spc_yaml` mounted by `pod`.
pub fn build_request(
    spc_yaml: &str,
    spc_path: &Path,
    pod: &PodIdentity,
    secrets: &BTreeMap<String, String>,
    tokens_json: Option<&str>,
    extra_attributes: &BTreeMap<String, String>,
) -> Result<MountRequest, MountCliError> {
    let input = |message: String| MountCliError::Input {
        path: spc_path.to_owned(),
        message,
    };
    // A file may hold several documents (e.g. the SPC next to a pod); take the SPC.
    let mut spc = None;
    for doc in serde_norway::Deserializer::from_str(spc_yaml) {
        let value = serde_norway::Value::deserialize(doc).map_err(|e| input(e.to_string()))?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("SecretProviderClass") {
            spc = Some(Spc::from_value(value).map_err(input)?);
            break;
        }
    }
    let spc = spc.ok_or_else(|| input("holds no SecretProviderClass".to_owned()))?;
    if spc.spec.provider.as_deref() != Some("akeyless") {
        tracing::warn!(
            provider = spc.spec.provider.as_deref().unwrap_or(""),
            "spec.provider is not \"akeyless\"; the driver would not call this provider"
        );
    }
    spc.request(pod, secrets, tokens_json, extra_attributes)
        .map_err(input)
}

/// Reads nodePublishSecretRef data: a Secret YAML (`data` base64, `stringData`), a JSON
/// object, or `KEY=VALUE` lines.
pub fn read_secret_data(
    text: &str,
    path: &Path,
) -> Result<BTreeMap<String, String>, MountCliError> {
    let input = |message: String| MountCliError::Input {
        path: path.to_owned(),
        message,
    };
    #[derive(Deserialize)]
    struct Secret {
        #[serde(default)]
        data: BTreeMap<String, String>,
        #[serde(default, rename = "stringData")]
        string_data: BTreeMap<String, String>,
    }
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        return serde_json::from_str(trimmed)
            .map_err(|e| input(format!("not a JSON object of strings ({e})")));
    }
    if let Ok(serde_norway::Value::Mapping(map)) =
        serde_norway::from_str::<serde_norway::Value>(text)
        && map.contains_key("kind")
    {
        let secret: Secret = serde_norway::from_value(serde_norway::Value::Mapping(map))
            .map_err(|e| input(format!("not a valid Secret ({e})")))?;
        let mut out = BTreeMap::new();
        for (key, b64) in secret.data {
            let bytes = STANDARD
                .decode(b64.trim())
                .map_err(|_| input(format!("data.{key} is not base64")))?;
            out.insert(key, String::from_utf8_lossy(&bytes).into_owned());
        }
        out.extend(secret.string_data);
        return Ok(out);
    }
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| input(format!("line {} is not KEY=VALUE", n + 1)))?;
        out.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(out)
}

/// A gRPC channel to the provider's unix socket.
pub async fn connect(socket: &Path) -> Result<CsiDriverProviderClient<Channel>, MountCliError> {
    let path = socket.to_owned();
    // The URI is a placeholder: the connector ignores it, and `localhost` is the authority
    // current drivers send.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|source| MountCliError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    Ok(CsiDriverProviderClient::new(channel))
}

/// Asks the provider at `socket` for its version, as the driver does before it mounts.
pub async fn version(socket: &Path, timeout: Duration) -> Result<VersionResponse, MountCliError> {
    let failed = |message: String| MountCliError::Version {
        socket: socket.to_owned(),
        message,
    };
    let call = async {
        let mut client = connect(socket).await?;
        let mut request = tonic::Request::new(VersionRequest {
            version: crate::service::API_VERSION.to_owned(),
        });
        request.set_timeout(timeout);
        client
            .version(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| failed(s.message().to_owned()))
    };
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| Err(failed(format!("no answer within {timeout:?}"))))
}

/// Sends one Mount with a deadline, as the driver does.
pub async fn call(
    client: &mut CsiDriverProviderClient<Channel>,
    request: MountRequest,
    timeout: Duration,
) -> Result<MountResponse, tonic::Status> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    client.mount(request).await.map(tonic::Response::into_inner)
}

/// Writes the files of a response under `out`, refusing any path the driver would refuse.
pub fn write_files(out: &Path, response: &MountResponse) -> Result<(), MountCliError> {
    use std::os::unix::fs::PermissionsExt;
    for file in &response.files {
        let relative = Path::new(&file.path);
        let safe = !file.path.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(MountCliError::UnsafePath(file.path.clone()));
        }
    }
    for file in &response.files {
        let path = out.join(&file.path);
        let write = |source| MountCliError::Write {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(write)?;
        }
        // Replace rather than truncate, so a previous read-only file is no obstacle.
        let _ = std::fs::remove_file(&path);
        std::fs::write(&path, &file.contents).map_err(write)?;
        let mode = u32::try_from(file.mode).unwrap_or(0) & 0o777;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(write)?;
    }
    Ok(())
}

/// A human-readable summary of a response: files with modes and sizes, then versions.
pub fn describe(response: &MountResponse) -> String {
    let mut text = String::from("files:\n");
    for file in &response.files {
        text.push_str(&format!(
            "  {:04o}  {:>7} bytes  {}\n",
            file.mode,
            file.contents.len(),
            file.path
        ));
    }
    text.push_str("object versions:\n");
    for v in &response.object_version {
        text.push_str(&format!("  {}  {}\n", v.version, v.id));
    }
    text
}

/// The `mount` command; returns the process exit code (0 mounted, 1 refused).
pub async fn run(args: &MountArgs) -> Result<i32, MountCliError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| MountCliError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let spc_yaml = read(&args.spc)?;
    let secrets = match &args.secret_file {
        Some(path) => read_secret_data(&read(path)?, path)?,
        None => BTreeMap::new(),
    };
    let tokens = match &args.tokens_file {
        Some(path) => Some(read(path)?),
        None => None,
    };
    let mut extra = BTreeMap::new();
    for pair in &args.attributes {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            MountCliError::Usage(format!("--attribute {pair:?} is not KEY=VALUE"))
        })?;
        extra.insert(k.to_owned(), v.to_owned());
    }
    let pod = PodIdentity {
        namespace: args.namespace.clone(),
        name: args.pod_name.clone(),
        uid: args.pod_uid.clone(),
        service_account: args.service_account.clone(),
    };
    let request = build_request(
        &spc_yaml,
        &args.spc,
        &pod,
        &secrets,
        tokens.as_deref(),
        &extra,
    )?;
    let mut client = connect(&args.socket).await?;
    match call(&mut client, request, args.timeout).await {
        Ok(response) => {
            write_files(&args.out, &response)?;
            print!("{}", describe(&response));
            println!("written to {}", args.out.display());
            Ok(0)
        }
        Err(status) => {
            eprintln!("mount refused: {:?}: {}", status.code(), status.message());
            Ok(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPC: &str = r#"
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: web
  namespace: shop
spec:
  provider: akeyless
  parameters:
    akeylessAccessID: p-1
    objects: |
      - secretPath: /a
        fileName: a
"#;

    fn pod() -> PodIdentity {
        PodIdentity {
            namespace: None,
            name: "web-1".into(),
            uid: "u1".into(),
            service_account: "web".into(),
        }
    }

    #[test]
    fn requests_are_built_like_the_driver_builds_them() {
        let secrets = BTreeMap::from([("akeylessAccessKey".to_owned(), "k".to_owned())]);
        let extra = BTreeMap::from([("akeylessAccessID".to_owned(), "p-override".to_owned())]);
        let req =
            build_request(SPC, Path::new("spc.yaml"), &pod(), &secrets, None, &extra).unwrap();
        let attrs: BTreeMap<String, String> = serde_json::from_str(&req.attributes).unwrap();
        assert_eq!(attrs["secretProviderClass"], "web");
        assert_eq!(attrs["csi.storage.k8s.io/pod.namespace"], "shop");
        assert_eq!(
            attrs["akeylessAccessID"], "p-override",
            "volume attributes override"
        );
        assert_eq!(req.permission, "420");
        assert_eq!(req.secrets, r#"{"akeylessAccessKey":"k"}"#);
        let none = build_request(
            SPC,
            Path::new("spc.yaml"),
            &pod(),
            &BTreeMap::new(),
            None,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(none.secrets, "null");
    }

    #[test]
    fn secret_files_in_three_forms() {
        let p = Path::new("s");
        let yaml = "apiVersion: v1\nkind: Secret\nmetadata: {name: creds}\ndata:\n  akeylessAccessKey: aGVsbG8=\nstringData:\n  other: x\n";
        let m = read_secret_data(yaml, p).unwrap();
        assert_eq!(m["akeylessAccessKey"], "hello");
        assert_eq!(m["other"], "x");
        assert_eq!(read_secret_data(r#"{"a":"b"}"#, p).unwrap()["a"], "b");
        assert_eq!(read_secret_data("# c\na = b\n", p).unwrap()["a"], "b");
        assert!(read_secret_data("nonsense", p).is_err());
    }

    #[test]
    fn unsafe_paths_are_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let response = MountResponse {
            files: vec![crate::proto::v1alpha1::File {
                path: "../escape".into(),
                mode: 0o644,
                contents: b"x".to_vec(),
            }],
            ..Default::default()
        };
        assert!(matches!(
            write_files(dir.path(), &response),
            Err(MountCliError::UnsafePath(_))
        ));
    }
}
