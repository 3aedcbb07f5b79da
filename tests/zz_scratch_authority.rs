//! SCRATCH (to be deleted): drives driver_client.py against a tiny server behind AuthorityFix.
mod common;

use akeyless_csi_provider::proto::v1alpha1::csi_driver_provider_server::{
    CsiDriverProvider, CsiDriverProviderServer,
};
use akeyless_csi_provider::proto::v1alpha1::*;
use akeyless_csi_provider::server::authority::AuthorityFix;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

struct Svc;
#[tonic::async_trait]
impl CsiDriverProvider for Svc {
    async fn version(
        &self,
        _r: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        Ok(Response::new(VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "scratch".into(),
            runtime_version: "0.0.1".into(),
        }))
    }
    async fn mount(&self, r: Request<MountRequest>) -> Result<Response<MountResponse>, Status> {
        let r = r.into_inner();
        if r.attributes.is_empty() {
            return Err(Status::invalid_argument("attributes missing"));
        }
        Ok(Response::new(MountResponse {
            object_version: vec![ObjectVersion {
                id: "a".into(),
                version: "1".into(),
            }],
            error: None,
            files: vec![File {
                path: "echo".into(),
                mode: 420,
                contents: format!(
                    "{}|{}|{}|{:?}",
                    r.attributes, r.secrets, r.permission, r.current_object_version
                )
                .into_bytes(),
            }],
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scratch() {
    let dir = tempfile::tempdir().unwrap();
    for with_fix in [true, false] {
        let path = dir.path().join(format!("p{with_fix}.sock"));
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let inc = tokio_stream::wrappers::UnixListenerStream::new(l);
        let router =
            tonic::transport::Server::builder().add_service(CsiDriverProviderServer::new(Svc));
        if with_fix {
            tokio::spawn(router.serve_with_incoming(inc.map(|c| c.map(AuthorityFix::new))));
        } else {
            tokio::spawn(router.serve_with_incoming(inc));
        }
        let req = dir.path().join("req.json");
        std::fs::write(&req, r#"{"attributes": {"b": "2", "a": "1"}, "secrets": "null", "target_path": "/t", "permission": "420", "current_object_version": [{"id": "x", "version": "v"}]}"#).unwrap();
        for auth in [path.to_str().unwrap(), "/some/path.sock", "localhost"] {
            for (method, reqf) in [("Version", None), ("Mount", Some(&req)), ("Mount", None)] {
                let mut cmd = common::python::python_driver_client();
                cmd.args([
                    "--socket",
                    path.to_str().unwrap(),
                    "--authority",
                    auth,
                    "--method",
                    method,
                    "--timeout",
                    "5",
                ]);
                if let Some(f) = reqf {
                    cmd.arg("--request").arg(f);
                }
                let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
                    .await
                    .unwrap();
                println!(
                    "fix={with_fix} auth={auth} method={method} req={} exit={} stdout={} stderr={}",
                    reqf.is_some(),
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
    }
}
