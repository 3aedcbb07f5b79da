#![allow(dead_code)]
//! The grpcio client of `tests/python/driver_client.py`: it reaches the provider the way the
//! Secrets Store CSI driver does (not through hyper/h2), e.g. with the raw socket path as
//! `:authority` like drivers up to v1.5.6.
//!
//! Its pinned requirements are installed once into `<target>/pydeps`, and again only when
//! `requirements.txt` or the Python version changes. Several test binaries may ask at once:
//! a lock file makes one of them install, and the install goes to a scratch dir that is renamed
//! into place, so a killed run never leaves a half-installed tree behind.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, SystemTime};

const STAMP: &str = ".requirements.stamp";
/// A lock older than this was left by a killed run.
const STALE_LOCK: Duration = Duration::from_secs(15 * 60);

/// `python3 tests/python/driver_client.py` with its dependencies on `PYTHONPATH`; add the
/// client's arguments (`--socket`, `--authority`, `--method`, ...) and run it.
pub fn python_driver_client() -> Command {
    static DEPS: OnceLock<PathBuf> = OnceLock::new();
    let deps = DEPS.get_or_init(install_requirements);
    let mut command = Command::new(python());
    command
        .arg(manifest_dir().join("tests/python/driver_client.py"))
        .env("PYTHONPATH", deps)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("DRIVER_CLIENT_CACHE", target_dir().join("pyproto"));
    command
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => manifest_dir().join(dir), // `join` keeps an absolute dir as it is
        None => manifest_dir().join("target"),
    }
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// What the installed tree must have been made from.
fn wanted_stamp(requirements: &Path) -> String {
    let text = fs::read_to_string(requirements)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", requirements.display()));
    let version = Command::new(python())
        .args(["-c", "import sys; print(sys.version)"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}; the e2e tests need Python 3", python()));
    assert!(
        version.status.success(),
        "{} -c 'import sys' failed",
        python()
    );
    format!("{}{text}", String::from_utf8_lossy(&version.stdout))
}

fn is_current(deps: &Path, stamp: &str) -> bool {
    fs::read_to_string(deps.join(STAMP)).is_ok_and(|found| found == stamp)
}

fn install_requirements() -> PathBuf {
    let requirements = manifest_dir().join("tests/python/requirements.txt");
    let stamp = wanted_stamp(&requirements);
    let target = target_dir();
    let deps = target.join("pydeps");
    if is_current(&deps, &stamp) {
        return deps;
    }
    fs::create_dir_all(&target).unwrap();
    let _lock = Lock::acquire(&target.join("pydeps.lock"), || is_current(&deps, &stamp));
    if is_current(&deps, &stamp) {
        return deps; // installed by another test binary while we waited
    }

    let scratch = target.join(format!("pydeps.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&scratch);
    let output = Command::new(python())
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg("--target")
        .arg(&scratch)
        .arg("-r")
        .arg(&requirements)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{} -m pip`: {e}", python()));
    if !output.status.success() {
        let _ = fs::remove_dir_all(&scratch);
        panic!(
            "`{} -m pip install --target {} -r {}` failed ({}):\n{}\n{}",
            python(),
            scratch.display(),
            requirements.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
    }
    fs::write(scratch.join(STAMP), &stamp).unwrap();
    if deps.exists() {
        let old = target.join(format!("pydeps.old-{}", std::process::id()));
        fs::rename(&deps, &old).unwrap();
        let _ = fs::remove_dir_all(&old);
    }
    fs::rename(&scratch, &deps).unwrap();
    deps
}

/// An exclusively created lock file, removed on drop.
struct Lock(PathBuf);

impl Lock {
    /// Waits for the lock; returns `None` early if `done` says the work was done meanwhile.
    fn acquire(path: &Path, done: impl Fn() -> bool) -> Option<Self> {
        loop {
            match OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(_) => return Some(Self(path.to_owned())),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
            if done() {
                return None;
            }
            let age = fs::metadata(path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|modified| SystemTime::now().duration_since(modified).ok());
            if age.is_some_and(|age| age > STALE_LOCK) {
                let _ = fs::remove_file(path);
            }
            sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
