//! Shared by the benchmarks (`benches/mount.rs`, `benches/controller.rs`): the measured
//! process's CPU time and memory from `/proc`, the machine note, settings from environment
//! variables, the JSON report under `target/bench/`, and a plain Akeyless API client for the
//! baselines that replay other providers' call patterns against the emulator.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};

/// Whether cargo runs this as a benchmark: `cargo bench` passes `--bench`, `cargo test
/// --benches` does not. Then there is nothing to check, and a debug-build benchmark would only
/// be slow and misleading: it says so and the caller returns.
pub fn bench_mode(name: &str) -> bool {
    if std::env::args().any(|arg| arg == "--bench") {
        return true;
    }
    eprintln!("{name} benchmark: run it with `cargo bench --bench {name}`; skipped");
    false
}

/// A numeric setting from the environment, `default` when unset or not a number (said so).
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={text:?} is not a number; using {default}");
            default
        }),
        Err(_) => default,
    }
}

/// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`, `RssAnon`), or a count (`Threads`).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// User plus system CPU time of a process so far, all threads (exited ones included).
pub fn cpu_time(pid: u32, tick: Duration) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name: state is the first; utime and stime are
    // fields 14 and 15 of the line, so the 12th and 13th after the name.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    tick * u32::try_from(ticks).unwrap_or(u32::MAX)
}

/// The length of a clock tick (`getconf CLK_TCK`, usually 10 ms).
pub fn clock_tick() -> Duration {
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .filter(|hz| *hz > 0)
        .unwrap_or(100);
    Duration::from_nanos(1_000_000_000 / hz)
}

/// Samples a process's VmRSS every `every` until stopped; `peak` is the largest seen (KiB).
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssSampler {
    /// Every 2 ms, for at most ten minutes.
    pub fn start(pid: u32) -> Self {
        Self::every(pid, Duration::from_millis(2), 300_000)
    }

    /// Every `every`, at most `samples` times (bounded).
    pub fn every(pid: u32, every: Duration, samples: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            for _ in 0..samples {
                peak = peak.max(status_kib(pid, "VmRSS"));
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                tokio::time::sleep(every).await;
            }
            peak
        });
        Self { stop, task }
    }

    pub async fn peak(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A number for the JSON report: three decimals, `null` when not finite.
pub fn round(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

/// The sum of calls by endpoint.
pub fn total(calls: &BTreeMap<String, u64>) -> u64 {
    calls.values().sum()
}

/// What the numbers were measured on: CPUs, kernel, load before the run, commit, date.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let git = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu,
        "kernel": kernel.trim(),
        "loadavg_at_start": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "git": git.trim(),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    })
}

/// The report's first lines: the benchmark, the machine, the load before the run.
pub fn machine_lines(what: &str, machine: &Value) -> [String; 2] {
    [
        format!(
            "akeyless-csi-provider {what} benchmark — {} CPU(s) {}, Linux {}, {} ({})",
            machine["cpus"],
            machine["cpu_model"].as_str().unwrap_or(""),
            machine["kernel"].as_str().unwrap_or(""),
            machine["date"].as_str().unwrap_or(""),
            machine["git"].as_str().unwrap_or(""),
        ),
        format!(
            "load average before the run: {} (anything well above 0 means other processes share the CPUs)",
            machine["loadavg_at_start"].as_str().unwrap_or("?")
        ),
    ]
}

/// Writes the report as `target/bench/<name>.json` (under `CARGO_TARGET_DIR` if set); returns
/// the path.
pub fn write_json(name: &str, report: Value) -> Result<PathBuf, String> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target_dir.join("bench");
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = out.join(format!("{name}.json"));
    let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// The Akeyless API as another provider's SDK calls it: one JSON POST per command, over a
/// kept-alive connection pool (which flatters a baseline that makes a new client per mount).
#[derive(Clone)]
pub struct Akeyless {
    http: reqwest::Client,
    base: String,
}

impl Akeyless {
    pub fn new(base: &str) -> Result<Self, String> {
        Ok(Self {
            http: reqwest::Client::builder()
                .build()
                .map_err(|e| e.to_string())?,
            base: base.to_owned(),
        })
    }

    /// `/auth` with an access key; the token.
    pub async fn login(&self, access_id: &str, access_key: &str) -> Result<String, String> {
        let login = self
            .post(
                "auth",
                json!({
                    "access-type": "access_key",
                    "access-id": access_id,
                    "access-key": access_key,
                }),
            )
            .await?;
        login["token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "/auth answered no token".to_owned())
    }

    /// `/describe-item` then a one-name `/get-secret-value` of a static secret, as the Go SDK
    /// users (the Go provider, ESO's provider) read one item.
    pub async fn describe_and_read(&self, token: &str, name: &str) -> Result<(), String> {
        let described = self
            .post("describe-item", json!({ "name": name, "token": token }))
            .await?;
        if described["item_type"] != "STATIC_SECRET" {
            return Err(format!("{name} is not a static secret"));
        }
        let value = self
            .post(
                "get-secret-value",
                json!({ "names": [name], "token": token }),
            )
            .await?;
        if value.get(name).is_none() {
            return Err(format!("no value for {name}"));
        }
        Ok(())
    }

    pub async fn post(&self, command: &str, body: Value) -> Result<Value, String> {
        let response = self
            .http
            .post(format!("{}/{command}", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("/{command}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("/{command}: HTTP {status}"));
        }
        response
            .json()
            .await
            .map_err(|e| format!("/{command}: {e}"))
    }
}
