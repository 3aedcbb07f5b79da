//! The mount benchmark: `cargo bench --bench mount`.
//!
//! It measures the provider the way the driver meets it: the real release binary runs as
//! `serve` on a temporary unix socket, and this process sends `Mount`s over gRPC, built as the
//! driver builds them. Akeyless is the in-process emulator with an injected delay before every
//! API response (the round-trip time). Next to the provider, a baseline client replays the call
//! pattern of Akeyless's Go provider (`/auth` on every mount, then `/describe-item` and a
//! one-name `/get-secret-value` per object, sequentially) against the same emulator, so every
//! ratio is measured in the same run. CPU time, RSS and start-to-ready are read from the
//! provider process's own `/proc` entries.
//!
//! It prints a plain-text report and writes the same numbers as JSON to
//! `target/bench/mount.json`. Iteration counts come from `MOUNT_BENCH_*` variables (see
//! [`Settings`]); `MOUNT_BENCH_BIN` benchmarks another provider binary. Every loop is bounded;
//! all traffic stays on 127.0.0.1 and the socket. It is not a test: it asserts nothing, and
//! `cargo test` does not run it.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Akeyless, RssSampler, clock_tick, env_u64, machine, ms, round, status_kib, total};

use akeyless_csi_provider::emulator::{self, EmulatorHandle, Seed};
use akeyless_csi_provider::mount_cli;
use akeyless_csi_provider::proto::v1alpha1::csi_driver_provider_client::CsiDriverProviderClient;
use akeyless_csi_provider::proto::v1alpha1::{MountRequest, VersionRequest};
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tonic::transport::Channel;

type Client = CsiDriverProviderClient<Channel>;

const BIN: &str = env!("CARGO_BIN_EXE_akeyless-csi-provider");

/// The provider binary: `MOUNT_BENCH_BIN` (e.g. a copy, or another build), else the one cargo
/// built with this benchmark.
fn provider_bin() -> PathBuf {
    std::env::var_os("MOUNT_BENCH_BIN").map_or_else(|| PathBuf::from(BIN), PathBuf::from)
}
/// Items seeded in the emulator: `/bench/item-<i>`.
const ITEMS: usize = 50;
/// Object counts of the calls-per-mount table.
const SIZES: [usize; 3] = [1, 10, 50];
/// Object count of the latency, storm and throughput runs.
const N: usize = 10;
/// The deadline every mount is sent with (the driver's default is about this order).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a provider to become ready before the run is abandoned.
const READY_LIMIT: Duration = Duration::from_secs(20);

fn main() {
    if !common::bench_mode("mount") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("mount benchmark failed: {error}");
        std::process::exit(1);
    }
}

/// Iteration counts, from `MOUNT_BENCH_*` variables. `MOUNT_BENCH_ONLY=idle` measures only
/// start-to-ready and the idle RSS, and stops.
#[derive(Debug, Clone, serde::Serialize)]
struct Settings {
    /// `MOUNT_BENCH_RTT_MS` (20): the injected round-trip time of the latency and storm runs.
    rtt_ms: u64,
    /// `MOUNT_BENCH_WARM` (50): warm mounts per N in the calls table (the baseline runs as
    /// many, at most 20).
    warm_mounts: usize,
    /// `MOUNT_BENCH_SEQ` (1000): sequential warm mounts at 0 ms (latency, CPU per mount).
    seq_mounts: usize,
    /// `MOUNT_BENCH_RTT_MOUNTS` (100): sequential warm mounts at the injected RTT.
    rtt_mounts: usize,
    /// `MOUNT_BENCH_COLD` (20): cold-token mounts (fresh identities) per RTT.
    cold_mounts: usize,
    /// `MOUNT_BENCH_BASELINE_SEQ` (200): baseline mounts at 0 ms.
    baseline_seq_mounts: usize,
    /// `MOUNT_BENCH_BASELINE_RTT` (30): baseline mounts at the injected RTT (each ≈ 21 RTTs).
    baseline_rtt_mounts: usize,
    /// `MOUNT_BENCH_PODS` (200): pod volumes in the rotation storm.
    storm_pods: usize,
    /// `MOUNT_BENCH_CLIENTS` (64): concurrent clients of the throughput run.
    clients: usize,
    /// `MOUNT_BENCH_SECS` (5): duration of each throughput run, in seconds.
    throughput_secs: u64,
    /// `MOUNT_BENCH_STARTS` (5): provider starts timed for start-to-ready.
    starts: usize,
}

impl Settings {
    fn from_env() -> Self {
        let var = env_u64;
        let count = |name, default| var(name, default).max(1) as usize;
        Self {
            rtt_ms: var("MOUNT_BENCH_RTT_MS", 20),
            warm_mounts: count("MOUNT_BENCH_WARM", 50),
            seq_mounts: count("MOUNT_BENCH_SEQ", 1000),
            rtt_mounts: count("MOUNT_BENCH_RTT_MOUNTS", 100),
            cold_mounts: count("MOUNT_BENCH_COLD", 20),
            baseline_seq_mounts: count("MOUNT_BENCH_BASELINE_SEQ", 200),
            baseline_rtt_mounts: count("MOUNT_BENCH_BASELINE_RTT", 30),
            storm_pods: count("MOUNT_BENCH_PODS", 200),
            clients: count("MOUNT_BENCH_CLIENTS", 64),
            throughput_secs: var("MOUNT_BENCH_SECS", 5).max(1),
            starts: count("MOUNT_BENCH_STARTS", 5),
        }
    }

    /// Identities the run logs in with: one per cold mount, plus a few warm ones.
    fn identities(&self) -> usize {
        SIZES.len() + 2 * self.cold_mounts + self.clients + 16
    }
}

// ---- the world: seed, identities, requests ----

fn access_id(identity: usize) -> String {
    format!("p-bench{identity:06}")
}

fn access_key(identity: usize) -> String {
    format!("bench-access-key-{identity:06}-5f0e")
}

fn item(i: usize) -> String {
    format!("/bench/item-{i}")
}

fn seed(identities: usize) -> Result<Seed, String> {
    let mut yaml = String::from("token_ttl_seconds: 3600\nauth_methods:\n");
    for identity in 0..identities {
        let _ = write!(
            yaml,
            "  - access_id: {}\n    access_type: access_key\n    access_key: \"{}\"\n    read: [\"/bench/*\"]\n",
            access_id(identity),
            access_key(identity)
        );
    }
    yaml.push_str("items:\n");
    for i in 0..ITEMS {
        // 64-byte values: a typical password or API key.
        let _ = writeln!(
            yaml,
            "  - name: {}\n    value: \"{:0<64}\"",
            item(i),
            format!("bench-value-{i}-")
        );
    }
    Seed::from_yaml(&yaml).map_err(|e| e.to_string())
}

/// Hands out identities nobody has logged in with yet.
struct Identities {
    next: AtomicUsize,
    limit: usize,
}

impl Identities {
    fn fresh(&self) -> Result<usize, String> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if id < self.limit {
            Ok(id)
        } else {
            Err("the seed has too few identities for this run".to_owned())
        }
    }
}

/// A `Mount` as the v1.6 driver builds it for a Go-provider-style SPC with `n` objects, for
/// pod volume `pod`: SPC parameters, then the pod-info keys; the access key from the
/// nodePublishSecretRef Secret.
fn request(url: &str, identity: usize, n: usize, pod: usize) -> MountRequest {
    let objects: String = (0..n)
        .map(|i| format!("- secretPath: \"{}\"\n  fileName: \"item-{i}\"\n", item(i)))
        .collect();
    let uid = format!("6a1f3c2e-0000-4000-8000-{pod:012}");
    let attributes: BTreeMap<&str, String> = BTreeMap::from([
        ("akeylessGatewayURL", url.to_owned()),
        ("akeylessAccessID", access_id(identity)),
        ("akeylessAccessType", "access_key".to_owned()),
        ("objects", objects),
        ("secretProviderClass", "bench-spc".to_owned()),
        ("csi.storage.k8s.io/pod.name", format!("web-{pod}")),
        ("csi.storage.k8s.io/pod.namespace", "shop".to_owned()),
        ("csi.storage.k8s.io/pod.uid", uid.clone()),
        ("csi.storage.k8s.io/serviceAccount.name", "web".to_owned()),
        ("csi.storage.k8s.io/ephemeral", "true".to_owned()),
    ]);
    MountRequest {
        attributes: serde_json::to_string(&attributes).unwrap_or_default(),
        secrets: json!({ "akeylessAccessKey": access_key(identity) }).to_string(),
        target_path: format!(
            "/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~csi/secrets-store/mount"
        ),
        permission: "420".to_owned(),
        current_object_version: Vec::new(),
    }
}

/// One mount; an answer without all `n` files counts as a failure.
async fn timed_mount(
    client: &mut Client,
    request: MountRequest,
    n: usize,
) -> Result<Duration, String> {
    let started = Instant::now();
    let response = mount_cli::call(client, request, MOUNT_TIMEOUT)
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    let elapsed = started.elapsed();
    if response.files.len() != n {
        return Err(format!("{} files instead of {n}", response.files.len()));
    }
    Ok(elapsed)
}

// ---- the Go provider's call pattern ----

/// Replays what Akeyless's Go provider does per mount (akeyless-api.md §2): a login, then per
/// object `/describe-item` and a one-name `/get-secret-value`, one after another. It is given
/// a kept-alive connection pool, which the Go provider (a new SDK client per mount) does not
/// have: the baseline is, if anything, flattered.
struct GoPattern {
    akeyless: Akeyless,
}

impl GoPattern {
    async fn mount(&self, identity: usize, n: usize) -> Result<Duration, String> {
        let started = Instant::now();
        let token = self
            .akeyless
            .login(&access_id(identity), &access_key(identity))
            .await?;
        for i in 0..n {
            self.akeyless.describe_and_read(&token, &item(i)).await?;
        }
        Ok(started.elapsed())
    }
}

// ---- the provider process ----

struct Provider {
    child: Child,
    socket: PathBuf,
    /// exec → first successful `Version` over the socket.
    ready: Duration,
}

impl Provider {
    /// Starts `serve` in `dir` with production defaults (info logs as JSON, here to a file)
    /// and waits until `Version` answers.
    async fn start(dir: &Path, url: &str) -> Result<Self, String> {
        let socket = dir.join("akeyless.sock");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("provider.log"))
            .map_err(|e| format!("provider log: {e}"))?;
        let bin = provider_bin();
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--akeyless-url")
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("AKEYLESS_") {
                command.env_remove(name);
            }
        }
        let started = Instant::now();
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut provider = Self {
            child,
            socket,
            ready: Duration::ZERO,
        };
        loop {
            if let Ok(Some(status)) = provider.child.try_wait() {
                return Err(format!("the provider exited during start-up: {status}"));
            }
            if started.elapsed() > READY_LIMIT {
                return Err("the provider did not answer Version within 20 s".to_owned());
            }
            if provider.socket.exists()
                && let Ok(mut client) = mount_cli::connect(&provider.socket).await
                && client
                    .version(VersionRequest {
                        version: "v1alpha1".to_owned(),
                    })
                    .await
                    .is_ok()
            {
                provider.ready = started.elapsed();
                return Ok(provider);
            }
            tokio::time::sleep(Duration::from_micros(250)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/<pid>/status in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        status_kib(self.pid(), field)
    }

    /// User plus system CPU time so far, all threads (exited ones included).
    fn cpu(&self, tick: Duration) -> Duration {
        common::cpu_time(self.pid(), tick)
    }

    /// SIGTERM, then waits (at most 30 s) for the exit.
    async fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Drop kills it.
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- measurements ----

#[derive(Default)]
struct Samples {
    ok: Vec<Duration>,
    errors: usize,
    first_error: Option<String>,
}

impl Samples {
    fn push(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(elapsed) => self.ok.push(elapsed),
            Err(error) => {
                self.errors += 1;
                self.first_error.get_or_insert(error);
            }
        }
    }

    fn count(&self) -> usize {
        self.ok.len() + self.errors
    }

    /// Nearest-rank percentile of the successful mounts, in ms.
    fn pct(&self, p: f64) -> f64 {
        if self.ok.is_empty() {
            return f64::NAN;
        }
        let mut sorted = self.ok.clone();
        sorted.sort();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        ms(sorted[rank.clamp(1, sorted.len()) - 1])
    }

    fn json(&self) -> Value {
        json!({
            "mounts": self.count(),
            "errors": self.errors,
            "first_error": self.first_error,
            "p50_ms": round(self.pct(50.0)),
            "p99_ms": round(self.pct(99.0)),
            "max_ms": round(self.pct(100.0)),
        })
    }

    fn check(&self, what: &str, problems: &mut Vec<String>) {
        if self.errors > 0 {
            problems.push(format!(
                "{what}: {} of {} mounts failed, e.g. {}",
                self.errors,
                self.count(),
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
    }
}

/// Backend calls since the last reset, by endpoint.
fn calls(akeyless: &EmulatorHandle) -> BTreeMap<String, u64> {
    akeyless.stats().calls
}

fn per_mount(calls: &BTreeMap<String, u64>, mounts: usize) -> BTreeMap<String, f64> {
    calls
        .iter()
        .map(|(k, v)| (k.clone(), *v as f64 / mounts.max(1) as f64))
        .collect()
}

fn endpoint(calls: &BTreeMap<String, f64>, name: &str) -> f64 {
    calls.get(name).copied().unwrap_or(0.0)
}

/// `count` sequential mounts of `n` objects by `identity`, each from another pod.
async fn sequential(
    client: &Client,
    url: &str,
    identity: usize,
    n: usize,
    count: usize,
    first_pod: usize,
) -> Samples {
    let mut client = client.clone();
    let mut samples = Samples::default();
    for pod in first_pod..first_pod + count {
        samples.push(timed_mount(&mut client, request(url, identity, n, pod), n).await);
    }
    samples
}

async fn baseline_sequential(go: &GoPattern, identity: usize, n: usize, count: usize) -> Samples {
    let mut samples = Samples::default();
    for _ in 0..count {
        samples.push(go.mount(identity, n).await);
    }
    samples
}

/// Releases `mounts` at the same instant; each latency counts from that instant.
async fn storm<F, Fut>(mounts: usize, mount: F) -> (Samples, Duration)
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Duration, String>> + Send + 'static,
{
    let (go, release) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = JoinSet::new();
    for pod in 0..mounts {
        let mut release = release.clone();
        let work = mount(pod);
        tasks.spawn(async move {
            let at = match release.wait_for(Option::is_some).await {
                Ok(at) => at.unwrap_or_else(Instant::now),
                Err(_) => return Err("not released".to_owned()),
            };
            work.await.map(|_| at.elapsed())
        });
    }
    // Let every task reach the gate.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    go.send_replace(Some(started));
    let mut samples = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined.unwrap_or_else(|e| Err(format!("task failed: {e}"))));
    }
    (samples, started.elapsed())
}

/// `clients` loops of `mount` until `duration` has passed.
async fn saturate<F, Fut>(clients: usize, duration: Duration, mount: F) -> (Samples, Duration)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Duration, String>> + Send + 'static,
{
    let mount = Arc::new(mount);
    let started = Instant::now();
    let end = started + duration;
    let mut tasks = JoinSet::new();
    for client in 0..clients {
        let mount = mount.clone();
        tasks.spawn(async move {
            let mut samples = Samples::default();
            let mut iteration = 0;
            while Instant::now() < end {
                samples.push(mount(client, iteration).await);
                iteration += 1;
            }
            samples
        });
    }
    let mut all = Samples::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(samples) => {
                all.ok.extend(samples.ok);
                all.errors += samples.errors;
                if all.first_error.is_none() {
                    all.first_error = samples.first_error;
                }
            }
            Err(e) => all.push(Err(format!("task failed: {e}"))),
        }
    }
    (all, started.elapsed())
}

// ---- the run ----

struct Report {
    json: serde_json::Map<String, Value>,
    problems: Vec<String>,
}

impl Report {
    fn line(&mut self, line: impl AsRef<str>) {
        println!("{}", line.as_ref());
    }
}

async fn run() -> Result<(), String> {
    let settings = Settings::from_env();
    let tick = clock_tick();
    let identities = Identities {
        next: AtomicUsize::new(0),
        limit: settings.identities(),
    };
    let akeyless = emulator::start(([127, 0, 0, 1], 0).into(), seed(identities.limit)?)
        .await
        .map_err(|e| e.to_string())?;
    let url = akeyless.url();
    let go = GoPattern {
        akeyless: Akeyless::new(&url)?,
    };
    let mut report = Report {
        json: serde_json::Map::new(),
        problems: Vec::new(),
    };
    let machine = machine();
    for line in common::machine_lines("mount", &machine) {
        report.line(line);
    }
    report.line(format!(
        "provider: {} serve (release, info logs as JSON to a file); Akeyless: the emulator, \
         delay injected before every API response; client: tonic over the unix socket",
        provider_bin().display()
    ));
    report.json.insert("machine".into(), machine);
    report
        .json
        .insert("command".into(), json!("cargo bench --bench mount"));
    report
        .json
        .insert("settings".into(), json!(settings.clone()));

    // ---- 5a. start to ready, idle RSS ----
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut readies = Vec::new();
    let mut idle_rss = Vec::new();
    let mut provider = None;
    for start in 0..settings.starts {
        let started = Provider::start(dir.path(), &url).await?;
        readies.push(started.ready);
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle_rss.push((
            started.status_kib("VmRSS"),
            started.status_kib("RssAnon"),
            started.status_kib("RssFile"),
        ));
        if start + 1 < settings.starts {
            started.stop().await;
        } else {
            provider = Some(started);
        }
    }
    let provider = provider.ok_or("no provider")?;
    let ready_ms: Vec<f64> = readies.iter().copied().map(ms).collect();
    let mut sorted_ready = ready_ms.clone();
    sorted_ready.sort_by(f64::total_cmp);
    let ready_median = sorted_ready[sorted_ready.len() / 2];
    // The largest of the starts; the split is that start's.
    let (idle_after_start, idle_anon, idle_file) =
        idle_rss.iter().copied().max().unwrap_or_default();
    if std::env::var("MOUNT_BENCH_ONLY").as_deref() == Ok("idle") {
        // The cheap way to measure just the idle RSS (and start to ready), e.g. per build option.
        println!(
            "idle RSS after start: {:.1} MiB (anonymous {:.1}, file {:.1}) — the largest of {} starts; ready median {ready_median:.1} ms",
            idle_after_start as f64 / 1024.0,
            idle_anon as f64 / 1024.0,
            idle_file as f64 / 1024.0,
            settings.starts,
        );
        for (rss, anon, file) in &idle_rss {
            println!("  start: VmRSS {rss} KiB, RssAnon {anon} KiB, RssFile {file} KiB");
        }
        provider.stop().await;
        return Ok(());
    }
    let client = mount_cli::connect(&provider.socket)
        .await
        .map_err(|e| e.to_string())?;

    // ---- 1. backend calls per mount ----
    report.line("");
    report.line("1. Backend calls per mount, by endpoint (0 ms RTT; warm = mean of later mounts)");
    report.line(format!(
        "   {:>3}  {:<5}  {:>6} {:>11} {:>9} {:>6}   {:>9}  {:>6}",
        "N", "token", "/auth", "/get-secret", "/describe", "total", "Go total", "ratio"
    ));
    let mut calls_rows = Vec::new();
    for n in SIZES {
        let identity = identities.fresh()?;
        akeyless.set_latency(Duration::ZERO);
        akeyless.reset_stats();
        let cold = sequential(&client, &url, identity, n, 1, 0).await;
        let cold_calls = per_mount(&calls(&akeyless), 1);
        cold.check(&format!("cold mount N={n}"), &mut report.problems);
        akeyless.reset_stats();
        let warm = sequential(&client, &url, identity, n, settings.warm_mounts, 1).await;
        let warm_calls = per_mount(&calls(&akeyless), settings.warm_mounts);
        warm.check(&format!("warm mounts N={n}"), &mut report.problems);
        let baseline_mounts = settings.warm_mounts.min(20);
        akeyless.reset_stats();
        let base = baseline_sequential(&go, identity, n, baseline_mounts).await;
        let base_calls = per_mount(&calls(&akeyless), baseline_mounts);
        base.check(&format!("baseline N={n}"), &mut report.problems);
        let go_total: f64 = base_calls.values().sum();
        for (label, c) in [("cold", &cold_calls), ("warm", &warm_calls)] {
            let ours: f64 = c.values().sum();
            report.line(format!(
                "   {n:>3}  {label:<5}  {:>6.2} {:>11.2} {:>9.2} {:>6.2}   {:>9.2}  {:>5.1}x",
                endpoint(c, "/auth"),
                endpoint(c, "/get-secret-value"),
                endpoint(c, "/describe-item"),
                ours,
                go_total,
                go_total / ours.max(f64::MIN_POSITIVE),
            ));
        }
        calls_rows.push(json!({
            "n": n,
            "cold": cold_calls,
            "warm": warm_calls,
            "warm_mounts": warm.count(),
            "go_pattern": base_calls,
            "go_pattern_mounts": base.count(),
            "go_total_over_warm_total": go_total / warm_calls.values().sum::<f64>().max(f64::MIN_POSITIVE),
        }));
    }
    report
        .json
        .insert("calls_per_mount".into(), json!(calls_rows));
    let warm_calls_max = calls_rows
        .iter()
        .map(|row| {
            row["warm"]
                .as_object()
                .map_or(0.0, |m| m.values().filter_map(Value::as_f64).sum())
        })
        .fold(0.0, f64::max);

    // ---- 2. latency, N = 10 ----
    report.line("");
    report.line(format!(
        "2. Mount latency, N = {N}, sequential (one client); CPU = provider CPU time / mounts"
    ));
    report.line(format!(
        "   {:>4}  {:<22} {:>6} {:>8} {:>8} {:>8} {:>10} {:>9}",
        "RTT", "who", "mounts", "p50 ms", "p99 ms", "max ms", "calls/mnt", "CPU ms"
    ));
    let warm_identity = identities.fresh()?;
    let _ = sequential(&client, &url, warm_identity, N, 1, 0).await;
    let mut latency_rows = Vec::new();
    let mut p50_rtt_warm = f64::NAN;
    let mut cpu_sequential = f64::NAN;
    let mut baseline_p50 = BTreeMap::new();
    for rtt in [0, settings.rtt_ms] {
        akeyless.set_latency(Duration::from_millis(rtt));
        let mut rows = Vec::new();
        // ours, warm token
        let count = if rtt == 0 {
            settings.seq_mounts
        } else {
            settings.rtt_mounts
        };
        akeyless.reset_stats();
        let cpu0 = provider.cpu(tick);
        let warm = sequential(&client, &url, warm_identity, N, count, 1000).await;
        let cpu = ms(provider.cpu(tick).saturating_sub(cpu0)) / count as f64;
        let warm_calls = total(&calls(&akeyless)) as f64 / count as f64;
        warm.check(&format!("warm latency at {rtt} ms"), &mut report.problems);
        if rtt == 0 {
            cpu_sequential = cpu;
        } else {
            p50_rtt_warm = warm.pct(50.0);
        }
        rows.push(("provider, warm token", warm, warm_calls, Some(cpu)));
        // ours, cold token: a fresh identity per mount
        akeyless.reset_stats();
        let mut cold = Samples::default();
        let mut c = client.clone();
        for pod in 0..settings.cold_mounts {
            let identity = identities.fresh()?;
            cold.push(timed_mount(&mut c, request(&url, identity, N, pod), N).await);
        }
        let cold_calls = total(&calls(&akeyless)) as f64 / settings.cold_mounts as f64;
        cold.check(&format!("cold latency at {rtt} ms"), &mut report.problems);
        rows.push(("provider, cold token", cold, cold_calls, None));
        // the Go provider's pattern
        let count = if rtt == 0 {
            settings.baseline_seq_mounts
        } else {
            settings.baseline_rtt_mounts
        };
        akeyless.reset_stats();
        let base = baseline_sequential(&go, warm_identity, N, count).await;
        let base_calls = total(&calls(&akeyless)) as f64 / count as f64;
        base.check(
            &format!("baseline latency at {rtt} ms"),
            &mut report.problems,
        );
        baseline_p50.insert(rtt, base.pct(50.0));
        rows.push(("Go provider's pattern", base, base_calls, None));
        for (who, samples, calls, cpu) in rows {
            report.line(format!(
                "   {:>4}  {:<22} {:>6} {:>8.2} {:>8.2} {:>8.2} {:>10.2} {:>9}",
                format!("{rtt}ms"),
                who,
                samples.count(),
                samples.pct(50.0),
                samples.pct(99.0),
                samples.pct(100.0),
                calls,
                cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
            ));
            let mut row = samples.json();
            row["rtt_ms"] = json!(rtt);
            row["who"] = json!(who);
            row["backend_calls_per_mount"] = json!(calls);
            row["cpu_ms_per_mount"] = cpu.map_or(Value::Null, round);
            latency_rows.push(row);
        }
    }
    akeyless.set_latency(Duration::ZERO);
    report.json.insert("latency".into(), json!(latency_rows));
    let p50_ratio = baseline_p50
        .get(&settings.rtt_ms)
        .copied()
        .unwrap_or(f64::NAN)
        / p50_rtt_warm;
    report.line(format!(
        "   at {} ms RTT the Go provider's pattern has a {:.1}x higher p50 (warm token)",
        settings.rtt_ms, p50_ratio
    ));

    // ---- 3. rotation storm ----
    let pods = settings.storm_pods;
    report.line("");
    report.line(format!(
        "3. Rotation storm: {pods} pod volumes of one SPC and identity mount at once, N = {N}, \
         {} ms RTT, one gRPC connection (as the driver has)",
        settings.rtt_ms
    ));
    report.line(format!(
        "   {:<26} {:>7} {:>8} {:>13} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "who", "/auth", "/get-sec", "/describe", "total", "% pods", "p50 ms", "p99 ms", "wall ms"
    ));
    akeyless.set_latency(Duration::from_millis(settings.rtt_ms));
    let mut storm_rows = Vec::new();
    let mut storm_warm_calls = u64::MAX;
    let mut rss_storm_peak = 0;
    let storm_identity = identities.fresh()?;
    let _ = sequential(&client, &url, storm_identity, N, 1, 0).await;
    for who in [
        "provider, warm token",
        "provider, cold token",
        "Go provider's pattern",
    ] {
        akeyless.reset_stats();
        let sampler = RssSampler::start(provider.pid());
        let cpu0 = provider.cpu(tick);
        let (samples, wall) = match who {
            "provider, warm token" | "provider, cold token" => {
                let identity = if who.ends_with("warm token") {
                    storm_identity
                } else {
                    identities.fresh()?
                };
                let (client, url) = (client.clone(), url.clone());
                storm(pods, move |pod| {
                    let mut client = client.clone();
                    let request = request(&url, identity, N, 10_000 + pod);
                    async move { timed_mount(&mut client, request, N).await }
                })
                .await
            }
            _ => {
                let go = Arc::new(GoPattern {
                    akeyless: go.akeyless.clone(),
                });
                storm(pods, move |_| {
                    let go = go.clone();
                    async move { go.mount(storm_identity, N).await }
                })
                .await
            }
        };
        let cpu = ms(provider.cpu(tick).saturating_sub(cpu0));
        let peak = sampler.peak().await;
        let c = calls(&akeyless);
        let all = total(&c);
        if who.starts_with("provider") {
            rss_storm_peak = rss_storm_peak.max(peak);
        }
        if who == "provider, warm token" {
            storm_warm_calls = all;
        }
        samples.check(&format!("storm ({who})"), &mut report.problems);
        report.line(format!(
            "   {:<26} {:>7} {:>8} {:>13} {:>8} {:>7.1}% {:>8.1} {:>9.1} {:>8.1}",
            who,
            c.get("/auth").unwrap_or(&0),
            c.get("/get-secret-value").unwrap_or(&0),
            c.get("/describe-item").unwrap_or(&0),
            all,
            100.0 * all as f64 / pods as f64,
            samples.pct(50.0),
            samples.pct(99.0),
            ms(wall),
        ));
        let mut row = samples.json();
        row["who"] = json!(who);
        row["pods"] = json!(pods);
        row["backend_calls"] = json!(c);
        row["backend_calls_total"] = json!(all);
        row["backend_calls_per_pod"] = json!(all as f64 / pods as f64);
        row["wall_ms"] = round(ms(wall));
        if who.starts_with("provider") {
            row["provider_cpu_ms"] = round(cpu);
            row["provider_peak_rss_kib"] = json!(peak);
        }
        storm_rows.push(row);
    }
    akeyless.set_latency(Duration::ZERO);
    report.json.insert("storm".into(), json!(storm_rows));

    // ---- 4. throughput ----
    let clients = settings.clients;
    let duration = Duration::from_secs(settings.throughput_secs);
    report.line("");
    report.line(format!(
        "4. Throughput: {clients} concurrent clients (one connection each), 0 ms RTT, N = {N}, \
         warm token, {} s each",
        settings.throughput_secs
    ));
    report.line(format!(
        "   {:<26} {:>8} {:>10} {:>8} {:>8} {:>10} {:>9}",
        "who", "mounts", "mounts/s", "p50 ms", "p99 ms", "calls/mnt", "CPU ms"
    ));
    let mut connections = Vec::new();
    for _ in 0..clients {
        connections.push(
            mount_cli::connect(&provider.socket)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let connections = Arc::new(connections);
    // Two runs: every client its own identity (no read can be shared: the plain cost of a
    // mount), and all clients one identity and SPC (concurrent identical reads are shared).
    let throughput_identity = identities.fresh()?;
    let own: Vec<usize> = (0..clients)
        .map(|_| identities.fresh())
        .collect::<Result<_, _>>()?;
    for identity in own.iter().copied().chain([throughput_identity]) {
        let _ = sequential(&client, &url, identity, N, 1, 0).await;
    }
    let mut runs = Vec::new();
    let mut rss_throughput_peak = 0;
    for (who, per_client) in [
        ("provider, own identities", own.clone()),
        ("provider, one identity", vec![throughput_identity; clients]),
    ] {
        akeyless.reset_stats();
        let sampler = RssSampler::start(provider.pid());
        let cpu0 = provider.cpu(tick);
        let run = {
            let (connections, url) = (connections.clone(), url.clone());
            saturate(clients, duration, move |client, round| {
                let mut c = connections[client].clone();
                let request = request(&url, per_client[client], N, client * 1_000_000 + round);
                async move { timed_mount(&mut c, request, N).await }
            })
            .await
        };
        let cpu = ms(provider.cpu(tick).saturating_sub(cpu0)) / run.0.ok.len().max(1) as f64;
        rss_throughput_peak = rss_throughput_peak.max(sampler.peak().await);
        let calls = total(&calls(&akeyless)) as f64 / run.0.count().max(1) as f64;
        run.0
            .check(&format!("throughput ({who})"), &mut report.problems);
        runs.push((who, run, calls, Some(cpu)));
    }
    // The plain cost, without shared reads, is the one the target is about.
    let cpu_per_mount = runs[0].3.unwrap_or(f64::NAN);
    let cpu_per_mount_shared = runs[1].3.unwrap_or(f64::NAN);
    akeyless.reset_stats();
    let base = {
        let go = Arc::new(GoPattern {
            akeyless: go.akeyless.clone(),
        });
        let own = own.clone();
        saturate(clients, duration, move |client, _| {
            let go = go.clone();
            let identity = own[client];
            async move { go.mount(identity, N).await }
        })
        .await
    };
    let base_calls = total(&calls(&akeyless)) as f64 / base.0.count().max(1) as f64;
    base.0.check("baseline throughput", &mut report.problems);
    runs.push(("Go provider's pattern", base, base_calls, None));
    let mut throughput_rows = Vec::new();
    for (who, (samples, wall), calls, cpu) in &runs {
        let rate = samples.ok.len() as f64 / wall.as_secs_f64();
        report.line(format!(
            "   {:<26} {:>8} {:>10.0} {:>8.2} {:>8.2} {:>10.2} {:>9}",
            who,
            samples.count(),
            rate,
            samples.pct(50.0),
            samples.pct(99.0),
            calls,
            cpu.map_or_else(|| "-".to_owned(), |c| format!("{c:.3}")),
        ));
        let mut row = samples.json();
        row["who"] = json!(who);
        row["mounts_per_s"] = round(rate);
        row["backend_calls_per_mount"] = json!(calls);
        row["cpu_ms_per_mount"] = cpu.map_or(Value::Null, round);
        throughput_rows.push(row);
    }
    let rate = |i: usize| runs[i].1.0.ok.len() as f64 / runs[i].1.1.as_secs_f64();
    let throughput_ratio = rate(0) / rate(2);
    report.line(format!(
        "   own identities vs the Go pattern: {throughput_ratio:.1}x (the Go pattern's replay has no provider process to pay for; \
         both share these {} CPUs with the emulator and the clients)",
        report.json["machine"]["cpus"]
    ));
    drop(connections);
    report
        .json
        .insert("throughput".into(), json!(throughput_rows));

    // ---- 5. resources ----
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_after_load = provider.status_kib("VmRSS");
    let (anon_after_load, file_after_load) = (
        provider.status_kib("RssAnon"),
        provider.status_kib("RssFile"),
    );
    // VmHWM lags a little behind the sampled VmRSS; take the larger.
    let hwm = provider
        .status_kib("VmHWM")
        .max(rss_storm_peak)
        .max(rss_throughput_peak);
    let threads = provider.status_kib("Threads");
    let mib = common::mib;
    report.line("");
    report.line("5. Resources of the provider process");
    report.line(format!(
        "   start to ready (exec → first Version answered): median {:.1} ms, min {:.1}, max {:.1} over {} starts",
        ready_median,
        sorted_ready.first().copied().unwrap_or(f64::NAN),
        sorted_ready.last().copied().unwrap_or(f64::NAN),
        sorted_ready.len()
    ));
    report.line(format!(
        "   RSS idle after start {:.1} MiB ({:.1} anonymous + {:.1} file-backed, i.e. the binary's \
         pages); idle after the run {:.1} MiB ({:.1} + {:.1})",
        mib(idle_after_start),
        mib(idle_anon),
        mib(idle_file),
        mib(idle_after_load),
        mib(anon_after_load),
        mib(file_after_load),
    ));
    report.line(format!(
        "   RSS peak during the {pods}-pod storms {:.1} MiB, during the throughput run {:.1} MiB; \
         high-water mark {:.1} MiB; {threads} threads",
        mib(rss_storm_peak),
        mib(rss_throughput_peak),
        mib(hwm),
    ));
    report.line(format!(
        "   CPU per mount: {cpu_per_mount:.3} ms at {clients} clients, 0 ms RTT; {cpu_sequential:.3} ms \
         sequential at 0 ms (a mount's wake-ups are not shared); see table 2 for the RTT run; \
         {cpu_per_mount_shared:.3} ms with shared reads"
    ));
    report.json.insert(
        "resources".into(),
        json!({
            "ready_ms": ready_ms.iter().copied().map(round).collect::<Vec<_>>(),
            "ready_median_ms": round(ready_median),
            "rss_idle_after_start_kib": idle_after_start,
            "rss_idle_after_start_anon_kib": idle_anon,
            "rss_idle_after_start_file_kib": idle_file,
            "rss_idle_after_run_anon_kib": anon_after_load,
            "rss_idle_after_run_file_kib": file_after_load,
            "rss_peak_storm_kib": rss_storm_peak,
            "rss_peak_throughput_kib": rss_throughput_peak,
            "rss_idle_after_run_kib": idle_after_load,
            "rss_high_water_kib": hwm,
            "threads": threads,
            "cpu_ms_per_mount_sequential": round(cpu_sequential),
            "cpu_ms_per_mount_concurrent": round(cpu_per_mount),
            "cpu_ms_per_mount_concurrent_shared_reads": round(cpu_per_mount_shared),
            "clock_tick_ms": round(ms(tick)),
        }),
    );
    provider.stop().await;

    // ---- targets ----
    let targets = [
        (
            "backend calls per mount, warm token (max over N)",
            "= 1",
            format!("{warm_calls_max:.2}"),
            warm_calls_max <= 1.0,
        ),
        (
            "p50 at 20 ms RTT, N = 10, warm token",
            "≤ 25 ms",
            format!("{p50_rtt_warm:.1} ms (at {} ms RTT)", settings.rtt_ms),
            p50_rtt_warm <= 25.0,
        ),
        (
            "storm backend calls / pods (warm token)",
            "≤ 10%",
            format!("{:.1}%", 100.0 * storm_warm_calls as f64 / pods as f64),
            (storm_warm_calls as f64) <= 0.1 * pods as f64,
        ),
        (
            "CPU per mount (64 clients, own identities, 0 ms)",
            "≤ 0.3 ms",
            format!("{cpu_per_mount:.3} ms"),
            cpu_per_mount <= 0.3,
        ),
        (
            "RSS idle after start",
            "≤ 10 MiB",
            format!("{:.1} MiB", mib(idle_after_start)),
            mib(idle_after_start) <= 10.0,
        ),
        (
            "RSS under load (high-water mark)",
            "≤ 40 MiB",
            format!("{:.1} MiB", mib(hwm)),
            mib(hwm) <= 40.0,
        ),
        (
            "start to ready (median)",
            "≤ 50 ms",
            format!("{ready_median:.1} ms"),
            ready_median <= 50.0,
        ),
    ];
    report.line("");
    report.line("Targets");
    let mut target_rows = Vec::new();
    for (what, target, measured, met) in targets {
        report.line(format!(
            "   {:<50} {:>9}  {:<28} {}",
            what,
            target,
            measured,
            if met { "met" } else { "MISSED" }
        ));
        target_rows
            .push(json!({ "what": what, "target": target, "measured": measured, "met": met }));
    }
    report.json.insert("targets".into(), json!(target_rows));
    if !report.problems.is_empty() {
        report.line("");
        report.line("Problems (mounts that failed; their numbers above exclude them)");
        for problem in report.problems.clone() {
            report.line(format!("   {problem}"));
        }
    }
    report
        .json
        .insert("problems".into(), json!(report.problems));

    let path = common::write_json("mount", Value::Object(report.json))?;
    println!("\nJSON: {}", path.display());
    akeyless.shutdown().await;
    Ok(())
}
