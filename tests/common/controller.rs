//! The real `controller` binary, run against the real control plane and the Akeyless emulator.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::harness::free_port;

/// One `akeyless-csi-provider controller` process.
pub struct Controller {
    child: Option<Child>,
    log: PathBuf,
    /// Where `/healthz`, `/readyz` and `/metrics` listen.
    pub http: std::net::SocketAddr,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

impl Controller {
    /// Starts the controller with `kubeconfig`'s identity against `akeyless_url`, with `args`
    /// added (leader election is off unless the args turn it on).
    pub fn start(kubeconfig: &Path, akeyless_url: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all = vec![
            "--akeyless-url".to_owned(),
            akeyless_url.to_owned(),
            "--min-backoff".to_owned(),
            "200ms".to_owned(),
            "--max-backoff".to_owned(),
            "2s".to_owned(),
        ];
        if !args.iter().any(|a| a.starts_with("--leader-election")) {
            all.push("--leader-election=false".to_owned());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut controller = Self {
            child: None,
            log: dir.path().join("controller.log"),
            http: free_port(),
            args: all,
            envs: vec![("KUBECONFIG".to_owned(), kubeconfig.display().to_string())],
            _dir: dir,
        };
        controller.spawn();
        controller
    }

    /// (Re)starts the process, appending to the same log.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_akeyless-csi-provider"))
            .arg("controller")
            .arg("--http-addr")
            .arg(self.http.to_string())
            .args(&self.args)
            .env("AKEYLESS_CSI_LOG_LEVEL", "akeyless_csi_provider=debug,info")
            .env("AKEYLESS_CSI_LOG_FORMAT", "json")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("controller starts");
        self.child = Some(child);
    }

    /// SIGKILL, as a crashed node would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for it to exit (at most 30 s).
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = child.kill();
        panic!("the controller did not stop within 30 s of SIGTERM");
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The controller's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET on the HTTP endpoints: (status, body), or None if nothing answers.
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::Client::new()
            .get(format!("http://{}{path}", self.http))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.unwrap_or_default()))
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill();
    }
}
