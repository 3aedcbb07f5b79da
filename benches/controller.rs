//! The controller benchmark: `cargo bench --bench controller`, with `KUBEBUILDER_ASSETS` set as
//! for the end-to-end tests (`KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets)`); without it,
//! it says so and is skipped.
//!
//! It measures the `controller` command as a cluster meets it: the real release binary (info
//! logs, production defaults) against a real control plane (etcd and kube-apiserver, started as
//! the end-to-end tests start them: `tests/common/control_plane.rs`), serving N
//! ExternalSecrets of K `data` keys each, every key its own Akeyless item, on one SecretStore.
//! Akeyless is the in-process emulator with a delay injected before every API response (the
//! round-trip time).
//!
//! Rounds. The ExternalSecrets are applied before the controller starts, so its first sync is
//! one round of all N. Later rounds come from their `refreshInterval`: each ExternalSecret is
//! due one interval after its last refresh, so a steady round is spread in time as the first
//! sync was. One steady round with nothing changed in Akeyless, then one after every value
//! changed. Per round: Akeyless calls by endpoint (the emulator's counters), the controller's
//! Kubernetes API requests by verb and resource, reads included (the API server's audit log,
//! its own user only), Secret, status and Event writes among them, reconciles by outcome (its
//! `/metrics`), CPU time and RSS (`/proc/<pid>`).
//!
//! Then, with the controller stopped, against the same emulator and RTT, a client replays ESO's
//! Akeyless provider for the same N×K (`providers/v1/akeyless` of external-secrets, read at
//! commit cc5bfbc): ESO reconciles `--concurrent` ExternalSecrets at once (default 1), reads
//! each `data` entry in turn, and every read (`GetSecret`) logs in anew (`contextWithToken`
//! keeps the token in a context of that call only), then asks the item's type and reads it
//! alone: `/auth`, `/describe-item`, `/get-secret-value` per entry. Measured at concurrency 1
//! and at a higher one, and, at the higher one, with one login per ExternalSecret instead (the
//! pattern as `../shared/reference/eso.md` describes it). The replay has no Kubernetes side and a
//! kept-alive connection pool: it flatters ESO.
//!
//! Plain report on stdout, the same numbers as JSON in `target/bench/controller.json`. Sizes
//! from `CONTROLLER_BENCH_*` variables ([`Settings`]). It asserts nothing, and `cargo test`
//! does not run it. Every wait is bounded; all traffic stays on 127.0.0.1.

mod common;
#[path = "../tests/common/mod.rs"]
mod fixtures;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Akeyless, RssSampler, cpu_time, mib, ms, round, status_kib, total};
use fixtures::control_plane::{self, ControlPlane, Request};
use fixtures::controller::Controller;
use fixtures::eso::{Env, STORE, Staged};
use fixtures::harness::{ACCESS_ID, ACCESS_KEY};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::task::JoinSet;

fn main() {
    if !common::bench_mode("controller") {
        return;
    }
    if std::env::var_os(control_plane::ASSETS).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "controller benchmark: skipped: it needs a real control plane, and {} is unset; run \
             `KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets) cargo bench --bench controller` \
             (etcd and kube-apiserver; README, \"Tests\")",
            control_plane::ASSETS
        );
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(error) = runtime.block_on(run()) {
        eprintln!("controller benchmark failed: {error}");
        std::process::exit(1);
    }
}

/// Sizes, from `CONTROLLER_BENCH_*` variables.
#[derive(Debug, Clone, serde::Serialize)]
struct Settings {
    /// `CONTROLLER_BENCH_N` (1000): ExternalSecrets, all on one SecretStore.
    n: usize,
    /// `CONTROLLER_BENCH_KEYS` (10): `data` entries per ExternalSecret, each its own item.
    keys: usize,
    /// `CONTROLLER_BENCH_RTT_MS` (20): the delay before every Akeyless response.
    rtt_ms: u64,
    /// `CONTROLLER_BENCH_INTERVAL_S` (20 + N/10): the ExternalSecrets' `refreshInterval`. A
    /// steady round lasts about as long as the first sync; the interval must leave room for
    /// a round and the quiet that ends it, or rounds overlap (the report says so).
    interval_s: u64,
    /// `CONTROLLER_BENCH_ESO_N` (N): ExternalSecrets the ESO replay reads per run (its calls
    /// per ExternalSecret do not depend on N; its time grows linearly with it).
    eso_n: usize,
    /// `CONTROLLER_BENCH_ESO_CONCURRENCY` (10): the higher `--concurrent` of the ESO replay.
    eso_concurrency: usize,
}

impl Settings {
    fn from_env() -> Self {
        let count = |name, default| common::env_u64(name, default).max(1) as usize;
        let n = count("CONTROLLER_BENCH_N", 1000);
        Self {
            n,
            keys: count("CONTROLLER_BENCH_KEYS", 10),
            rtt_ms: common::env_u64("CONTROLLER_BENCH_RTT_MS", 20),
            interval_s: common::env_u64("CONTROLLER_BENCH_INTERVAL_S", 20 + n as u64 / 10).max(5),
            eso_n: count("CONTROLLER_BENCH_ESO_N", n as u64),
            eso_concurrency: count("CONTROLLER_BENCH_ESO_CONCURRENCY", 10),
        }
    }
}

/// How long the controller must do nothing for a round to count as over.
const QUIET: Duration = Duration::from_secs(3);
/// How often the controller's `/metrics` is read while a round runs.
const POLL: Duration = Duration::from_millis(100);
/// The `/metrics` samples a round is followed by.
const RECONCILES: &str = "akeyless_csi_controller_reconciles_total{";
const SYNCED: &str =
    "akeyless_csi_controller_reconciles_total{kind=\"external_secret\",outcome=\"synced\"}";

// ---- the world: items, ExternalSecrets ----

fn item(es: usize, key: usize) -> String {
    format!("/bench/es-{es}/key-{key}")
}

/// 64-byte values, a typical password or API key; `generation` changes them all.
fn value(es: usize, key: usize, generation: u32) -> String {
    format!("{:0<64}", format!("bench-es{es}-k{key}-g{generation}-"))
}

/// The emulator's items (YAML list entries as under `items:`).
fn items(settings: &Settings) -> String {
    let mut yaml = String::new();
    for es in 0..settings.n.max(settings.eso_n) {
        for key in 0..settings.keys {
            let _ = write!(
                yaml,
                "  - name: {}\n    value: \"{}\"\n",
                item(es, key),
                value(es, key, 1)
            );
        }
    }
    yaml
}

/// ExternalSecrets `from..to` as one YAML stream, in ESO's documentation's shape: K `data`
/// entries, Owner Secret of the same name, the store `akeyless`.
fn external_secrets(settings: &Settings, from: usize, to: usize) -> String {
    let mut yaml = String::new();
    for es in from..to {
        let _ = write!(
            yaml,
            "---\napiVersion: external-secrets.io/v1\nkind: ExternalSecret\nmetadata:\n  name: es-{es}\nspec:\n  refreshInterval: {}s\n  secretStoreRef: {{name: {STORE}, kind: SecretStore}}\n  target: {{name: es-{es}}}\n  data:\n",
            settings.interval_s
        );
        for key in 0..settings.keys {
            let _ = writeln!(
                yaml,
                "    - secretKey: key-{key}\n      remoteRef: {{key: {}}}",
                item(es, key)
            );
        }
    }
    yaml
}

// ---- following the controller ----

/// The samples of the controller's `/metrics` (`name{labels}` → value); empty when it does not
/// answer (yet).
async fn scrape(controller: &Controller) -> BTreeMap<String, f64> {
    let Some((200, body)) = controller.http_get("/metrics").await else {
        return BTreeMap::new();
    };
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn sample(samples: &BTreeMap<String, f64>, name: &str) -> f64 {
    samples.get(name).copied().unwrap_or(0.0)
}

/// Every reconcile so far, whatever its kind and outcome.
fn reconciles(samples: &BTreeMap<String, f64>) -> f64 {
    samples
        .iter()
        .filter(|(name, _)| name.starts_with(RECONCILES))
        .map(|(_, v)| v)
        .sum()
}

/// Where a round starts: what the controller had done so far.
struct Mark {
    at: Instant,
    metrics: BTreeMap<String, f64>,
    /// The controller's requests in the audit log so far.
    requests: usize,
    cpu: Duration,
}

impl Mark {
    async fn take(env: &Env, tick: Duration) -> Self {
        Self {
            at: Instant::now(),
            metrics: scrape(&env.controller).await,
            requests: own_requests(env).len(),
            cpu: env
                .controller
                .pid()
                .map_or(Duration::ZERO, |pid| cpu_time(pid, tick)),
        }
    }
}

/// The ExternalSecrets whose status the controller wrote since its `skip`th request: those
/// refreshed (or failed) since then, with the number of status writes each.
fn refreshed(env: &Env, skip: usize) -> BTreeMap<String, u64> {
    let mut names = BTreeMap::new();
    for r in own_requests(env).into_iter().skip(skip) {
        if r.resource == "externalsecrets" && r.subresource == "status" && r.is_accepted_write() {
            *names.entry(r.name).or_insert(0) += 1;
        }
    }
    names
}

/// The controller's requests in the API server's audit log, in order.
fn own_requests(env: &Env) -> Vec<Request> {
    env.cp
        .requests()
        .into_iter()
        .filter(|r| r.user == env.user)
        .collect()
}

/// One round, measured.
struct Round {
    name: &'static str,
    /// The round's time: from the controller's exec to the last ExternalSecret refreshed for
    /// the first sync; from the first refresh to the last for a steady round (its
    /// ExternalSecrets come due as their first sync ended, so this follows the first sync's
    /// spread as much as the controller's speed).
    wall: Duration,
    /// From the first ExternalSecret refreshed to the last.
    spread: Duration,
    calls: BTreeMap<String, u64>,
    /// Kubernetes API requests by `verb resource[/subresource]`, and how many were refused.
    requests: BTreeMap<String, u64>,
    refused: u64,
    secret_writes: u64,
    status_writes: u64,
    /// The most status writes one ExternalSecret had in the round (1: refreshed once).
    status_writes_max: u64,
    events: u64,
    /// Reconciles by outcome (`/metrics` deltas).
    reconciles: BTreeMap<String, u64>,
    secrets_written: BTreeMap<String, u64>,
    cpu: Duration,
    rss_peak_kib: u64,
}

impl Round {
    fn calls(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).copied().unwrap_or(0)
    }

    fn request_total(&self) -> u64 {
        self.requests.values().sum()
    }

    fn json(&self, n: usize) -> Value {
        json!({
            "round": self.name,
            "wall_s": round(self.wall.as_secs_f64()),
            "first_to_last_refresh_s": round(self.spread.as_secs_f64()),
            "akeyless_calls": self.calls,
            "akeyless_calls_total": total(&self.calls),
            "akeyless_calls_per_external_secret": round(total(&self.calls) as f64 / n as f64),
            "kubernetes_requests": self.requests,
            "kubernetes_requests_total": self.request_total(),
            "kubernetes_requests_per_external_secret": round(self.request_total() as f64 / n as f64),
            "kubernetes_requests_refused": self.refused,
            "secret_writes": self.secret_writes,
            "status_writes": self.status_writes,
            "status_writes_most_for_one_external_secret": self.status_writes_max,
            "event_writes": self.events,
            "reconciles": self.reconciles,
            "secret_write_outcomes": self.secrets_written,
            "cpu_s": round(self.cpu.as_secs_f64()),
            "cpu_ms_per_external_secret": round(ms(self.cpu) / n as f64),
            "rss_peak_kib": self.rss_peak_kib,
        })
    }
}

/// Waits until `n` more ExternalSecrets than at `mark` have been refreshed (the `synced`
/// reconciles), then until the controller has been quiet for [`QUIET`] (the reconciles that
/// its own writes' watch events cause); measures what happened since `mark`. `from_mark`:
/// the round is timed from the mark, else from its first refresh.
async fn finish_round(
    name: &'static str,
    env: &mut Env,
    mark: Mark,
    from_mark: bool,
    n: usize,
    limit: Duration,
    tick: Duration,
) -> Result<Round, String> {
    let pid = env
        .controller
        .pid()
        .ok_or("the controller is not running")?;
    let sampler = RssSampler::every(pid, Duration::from_millis(10), 360_000);
    let base = sample(&mark.metrics, SYNCED);
    let mut first = None;
    let last = loop {
        if !env.controller.alive() {
            return Err(format!(
                "the controller exited during the round \"{name}\"; its log: {}",
                fixtures::eso::tail(&env.controller.logs(), 20)
            ));
        }
        let synced = sample(&scrape(&env.controller).await, SYNCED) - base;
        if synced > 0.0 && first.is_none() {
            first = Some(Instant::now());
        }
        // A refresh counts once per ExternalSecret: one refreshed twice is not another done.
        if synced >= n as f64 && refreshed(env, mark.requests).len() >= n {
            break Instant::now();
        }
        if mark.at.elapsed() > limit {
            return Err(format!(
                "round \"{name}\": {synced} of {n} ExternalSecrets refreshed within {limit:?}; \
                 the controller's log: {}",
                fixtures::eso::tail(&env.controller.logs(), 20)
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    // Quiet: no reconcile for QUIET (at most a minute).
    let mut seen = reconciles(&scrape(&env.controller).await);
    let mut since = Instant::now();
    let quiet_limit = Instant::now() + Duration::from_secs(60);
    while since.elapsed() < QUIET && Instant::now() < quiet_limit {
        tokio::time::sleep(POLL).await;
        let now = reconciles(&scrape(&env.controller).await);
        if now != seen {
            seen = now;
            since = Instant::now();
        }
    }
    println!(
        "   round \"{name}\": {n} ExternalSecrets refreshed {:.1} s after its start, quiet {:.1} s later",
        (last - mark.at).as_secs_f64(),
        last.elapsed().as_secs_f64()
    );
    let metrics = scrape(&env.controller).await;
    let cpu = cpu_time(pid, tick).saturating_sub(mark.cpu);
    let rss_peak_kib = sampler.peak().await;
    let requests: Vec<Request> = own_requests(env).into_iter().skip(mark.requests).collect();
    let mut by_kind = BTreeMap::new();
    for r in &requests {
        let resource = if r.subresource.is_empty() {
            r.resource.clone()
        } else {
            format!("{}/{}", r.resource, r.subresource)
        };
        *by_kind.entry(format!("{} {resource}", r.verb)).or_insert(0) += 1;
    }
    let writes = |resource: &str, subresource: &str| {
        requests
            .iter()
            .filter(|r| {
                r.resource == resource && r.subresource == subresource && r.is_accepted_write()
            })
            .count() as u64
    };
    let delta = |prefix: &str| -> BTreeMap<String, u64> {
        metrics
            .iter()
            .filter_map(|(name, v)| {
                let labels = name.strip_prefix(prefix)?;
                let d = v - sample(&mark.metrics, name);
                (d > 0.0).then(|| (labels.trim_end_matches('}').to_owned(), d as u64))
            })
            .collect()
    };
    Ok(Round {
        name,
        wall: if from_mark {
            last - mark.at
        } else {
            last - first.unwrap_or(last).min(last)
        },
        spread: last - first.unwrap_or(last).min(last),
        calls: env.akeyless.stats().calls,
        // A get of a Secret not created yet answers 404: expected, not refused.
        refused: requests
            .iter()
            .filter(|r| r.code >= 400 && !(r.verb == "get" && r.code == 404))
            .count() as u64,
        status_writes_max: refreshed(env, mark.requests)
            .values()
            .copied()
            .max()
            .unwrap_or(0),
        secret_writes: writes("secrets", ""),
        status_writes: writes("externalsecrets", "status"),
        events: writes("events", ""),
        requests: by_kind,
        reconciles: delta(RECONCILES),
        secrets_written: delta("akeyless_csi_controller_secret_writes_total{"),
        cpu,
        rss_peak_kib,
    })
}

// ---- ESO's pattern ----

/// How ESO's Akeyless provider logs in.
#[derive(Clone, Copy, PartialEq)]
enum Login {
    /// As its code does: every `GetSecret` logs in (one `/auth` per `data` entry).
    PerRead,
    /// As `eso.md` describes it: once per store client (here: once per ExternalSecret's
    /// reconcile, which is generous).
    PerExternalSecret,
}

/// Replays ESO's reconciles of ExternalSecrets `0..n`, `concurrency` at once (its workers),
/// each reading its `keys` entries one after another. Returns the wall time, or the first
/// failure.
async fn eso_round(
    akeyless: &Akeyless,
    n: usize,
    keys: usize,
    concurrency: usize,
    login: Login,
) -> Result<Duration, String> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (akeyless, next) = (akeyless.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let es = next.fetch_add(1, Ordering::Relaxed);
                if es >= n {
                    return Ok::<(), String>(());
                }
                let mut token: Option<String> = None;
                for key in 0..keys {
                    if token.is_none() || login == Login::PerRead {
                        token = Some(akeyless.login(ACCESS_ID, ACCESS_KEY).await?);
                    }
                    let token = token.as_deref().unwrap_or_default();
                    akeyless.describe_and_read(token, &item(es, key)).await?;
                }
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.map_err(|e| format!("an ESO worker failed: {e}"))??;
    }
    Ok(started.elapsed())
}

struct EsoRun {
    who: String,
    concurrency: usize,
    n: usize,
    calls: BTreeMap<String, u64>,
    wall: Duration,
}

impl EsoRun {
    fn calls(&self, endpoint: &str) -> u64 {
        self.calls.get(endpoint).copied().unwrap_or(0)
    }

    /// The time for all N ExternalSecrets (scaled linearly when fewer were replayed).
    fn wall_for(&self, n: usize) -> f64 {
        self.wall.as_secs_f64() * n as f64 / self.n as f64
    }
}

// ---- the run ----

async fn run() -> Result<(), String> {
    let settings = Settings::from_env();
    let (n, keys) = (settings.n, settings.keys);
    let tick = common::clock_tick();
    let rtt = Duration::from_millis(settings.rtt_ms);
    let interval = Duration::from_secs(settings.interval_s);
    let machine = common::machine();
    let mut problems: Vec<String> = Vec::new();
    for line in common::machine_lines("controller", &machine) {
        println!("{line}");
    }
    println!(
        "{n} ExternalSecrets × {keys} data keys (each its own static item) on one SecretStore; \
         Akeyless RTT {} ms (the emulator's delay before every response); refreshInterval {} s",
        settings.rtt_ms, settings.interval_s
    );

    // ---- the control plane, the store, the ExternalSecrets ----
    let started = Instant::now();
    let cp: &'static ControlPlane = control_plane::shared()
        .await
        .ok_or("no control plane (KUBEBUILDER_ASSETS)")?;
    cp.install_crds().await;
    let staged = Staged::on(cp, "bench", &items(&settings)).await;
    let chunk = 50;
    let applied: Vec<usize> = futures::stream::iter((0..n).step_by(chunk))
        .map(|from| {
            let yaml = external_secrets(&settings, from, (from + chunk).min(n));
            let staged = &staged;
            async move { staged.apply(&yaml).await.len() }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    println!(
        "set-up: control plane, namespace {}, store and {} ExternalSecrets applied in {:.1} s",
        staged.ns,
        applied.iter().sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    staged.akeyless.set_latency(rtt);
    staged.akeyless.reset_stats();

    // ---- the controller: first sync, then two steady rounds ----
    let spawned = Instant::now();
    let mut env = staged.start(&["--log-level", "info"]);
    let pid = env.controller.pid().ok_or("the controller did not start")?;
    let whole_life = RssSampler::every(pid, Duration::from_millis(10), 360_000);
    let start_mark = Mark {
        at: spawned,
        metrics: BTreeMap::new(),
        requests: 0,
        cpu: Duration::ZERO,
    };
    let round_limit = interval * 3 + Duration::from_secs(600);
    let first = finish_round(
        "first sync",
        &mut env,
        start_mark,
        true,
        n,
        round_limit,
        tick,
    )
    .await?;
    let first_wall = first.wall;
    if first_wall * 2 + QUIET * 2 > interval {
        problems.push(format!(
            "the first sync took {:.1} s: a refreshInterval of {} s leaves too little room between \
             rounds (set CONTROLLER_BENCH_INTERVAL_S to at least {:.0})",
            first_wall.as_secs_f64(),
            settings.interval_s,
            (first_wall * 3).as_secs_f64() + 10.0
        ));
    }

    env.akeyless.reset_stats();
    let mark = Mark::take(&env, tick).await;
    let unchanged = finish_round(
        "steady, nothing changed",
        &mut env,
        mark,
        false,
        n,
        round_limit,
        tick,
    )
    .await?;
    let rss_steady = status_kib(pid, "VmRSS");
    let (anon_steady, file_steady) = (status_kib(pid, "RssAnon"), status_kib(pid, "RssFile"));

    // Every value changes before the next round starts (one interval after this one's first
    // refresh).
    for es in 0..n {
        for key in 0..keys {
            env.akeyless.put_secret(&item(es, key), &value(es, key, 2));
        }
    }
    env.akeyless.reset_stats();
    let mark = Mark::take(&env, tick).await;
    let changed = finish_round(
        "steady, values changed",
        &mut env,
        mark,
        false,
        n,
        round_limit,
        tick,
    )
    .await?;
    let hwm = status_kib(pid, "VmHWM");
    let threads = status_kib(pid, "Threads");
    let rss_after = status_kib(pid, "VmRSS");
    let life_peak = whole_life.peak().await;
    let total_cpu = cpu_time(pid, tick);
    env.controller.stop().await;
    let rounds = [first, unchanged, changed];
    for r in &rounds {
        if let Some(errors) = r
            .reconciles
            .get("kind=\"external_secret\",outcome=\"error\"")
        {
            problems.push(format!(
                "round \"{}\": {errors} ExternalSecret reconciles failed (retried)",
                r.name
            ));
        }
    }

    // ---- ESO's pattern, same emulator and RTT ----
    let akeyless = Akeyless::new(&env.akeyless.url())?;
    let mut eso = Vec::new();
    for (who, concurrency, login) in [
        ("ESO, as its code does", 1, Login::PerRead),
        (
            "ESO, as its code does",
            settings.eso_concurrency,
            Login::PerRead,
        ),
        (
            "ESO, one login per ES",
            settings.eso_concurrency,
            Login::PerExternalSecret,
        ),
    ] {
        env.akeyless.reset_stats();
        let wall = eso_round(&akeyless, settings.eso_n, keys, concurrency, login).await?;
        eso.push(EsoRun {
            who: who.to_owned(),
            concurrency,
            n: settings.eso_n,
            calls: env.akeyless.stats().calls,
            wall,
        });
    }
    env.akeyless.set_latency(Duration::ZERO);

    // ---- the report ----
    let mut json = serde_json::Map::new();
    json.insert("machine".into(), machine.clone());
    json.insert(
        "command".into(),
        json!("KUBEBUILDER_ASSETS=$(bash ../shared/kube/assets) cargo bench --bench controller"),
    );
    json.insert("settings".into(), json!(settings.clone()));
    let per_es = |x: u64| x as f64 / n as f64;

    println!();
    println!(
        "1. Akeyless calls per round (N = {n}, K = {keys}: {} items; first sync timed from the \
         controller's exec, steady rounds from their first refresh to their last)",
        n * keys
    );
    println!(
        "   {:<26} {:>7} {:>14} {:>18} {:>7} {:>8} {:>9} {:>8}",
        "round",
        "/auth",
        "/describe-item",
        "/get-secret-value",
        "other",
        "total",
        "calls/ES",
        "wall s"
    );
    let known = ["/auth", "/describe-item", "/get-secret-value"];
    for r in &rounds {
        let all = total(&r.calls);
        let other: u64 = all - known.iter().map(|e| r.calls(e)).sum::<u64>();
        println!(
            "   {:<26} {:>7} {:>14} {:>18} {:>7} {:>8} {:>9.3} {:>8.1}",
            format!("ours, {}", r.name),
            r.calls("/auth"),
            r.calls("/describe-item"),
            r.calls("/get-secret-value"),
            other,
            all,
            per_es(all),
            r.wall.as_secs_f64()
        );
    }
    for e in &eso {
        let all = total(&e.calls);
        let scaled = e.n != n;
        println!(
            "   {:<26} {:>7} {:>14} {:>18} {:>7} {:>8} {:>9.3} {:>8.1}{}",
            format!("{} (c={})", e.who, e.concurrency),
            e.calls("/auth"),
            e.calls("/describe-item"),
            e.calls("/get-secret-value"),
            all - known.iter().map(|k| e.calls(k)).sum::<u64>(),
            all,
            all as f64 / e.n as f64,
            e.wall_for(n),
            if scaled {
                format!(
                    " ({} ES replayed, calls as counted, time scaled to {n})",
                    e.n
                )
            } else {
                String::new()
            }
        );
    }
    println!(
        "   ESO's rounds are all alike (no cache); its replay has no Kubernetes side at all and a \
         kept-alive connection pool"
    );

    println!();
    println!("2. Kubernetes writes per round (accepted; the audit log)");
    println!(
        "   {:<26} {:>14} {:>22} {:>8}   reconciles by outcome (/metrics)",
        "round", "Secret writes", "status writes (max/ES)", "Events"
    );
    for r in &rounds {
        let outcomes: Vec<String> = r
            .reconciles
            .iter()
            .map(|(labels, v)| {
                let short = labels
                    .replace("kind=\"external_secret\",outcome=", "es ")
                    .replace("kind=\"store\",outcome=", "store ")
                    .replace('"', "");
                format!("{short} {v}")
            })
            .collect();
        println!(
            "   {:<26} {:>14} {:>22} {:>8}   {}",
            r.name,
            r.secret_writes,
            format!("{} ({})", r.status_writes, r.status_writes_max),
            r.events,
            outcomes.join(", ")
        );
    }

    println!();
    println!(
        "3. The controller's Kubernetes API requests per round, by verb and resource (reads \
         included; watches appear when they end)"
    );
    let mut kinds: Vec<String> = rounds
        .iter()
        .flat_map(|r| r.requests.keys().cloned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds.sort_by_key(|k| {
        std::cmp::Reverse(
            rounds
                .iter()
                .map(|r| r.requests.get(k).copied().unwrap_or(0))
                .sum::<u64>(),
        )
    });
    println!(
        "   {:<36} {:>12} {:>12} {:>12}",
        "request", rounds[0].name, "unchanged", "changed"
    );
    for kind in &kinds {
        let cell = |r: &Round| r.requests.get(kind).copied().unwrap_or(0);
        println!(
            "   {:<36} {:>12} {:>12} {:>12}",
            kind,
            cell(&rounds[0]),
            cell(&rounds[1]),
            cell(&rounds[2])
        );
    }
    println!(
        "   {:<36} {:>12} {:>12} {:>12}",
        "total",
        rounds[0].request_total(),
        rounds[1].request_total(),
        rounds[2].request_total()
    );
    println!(
        "   {:<36} {:>12.2} {:>12.2} {:>12.2}",
        "per ExternalSecret",
        per_es(rounds[0].request_total()),
        per_es(rounds[1].request_total()),
        per_es(rounds[2].request_total())
    );
    for r in &rounds {
        if r.refused > 0 {
            problems.push(format!(
                "round \"{}\": the API server refused {} of the controller's requests",
                r.name, r.refused
            ));
        }
    }

    println!();
    println!("4. Resources of the controller process");
    println!(
        "   RSS: high-water mark (VmHWM) {:.1} MiB (sampled peak {:.1}); after the steady round \
         {:.1} MiB ({:.1} anonymous + {:.1} file-backed); at the end {:.1} MiB; {threads} threads",
        mib(hwm),
        mib(life_peak),
        mib(rss_steady),
        mib(anon_steady),
        mib(file_steady),
        mib(rss_after)
    );
    for r in &rounds {
        println!(
            "   CPU {:<26} {:>7.2} s ({:.2} ms per ExternalSecret); RSS peak {:.1} MiB",
            r.name,
            r.cpu.as_secs_f64(),
            ms(r.cpu) / n as f64,
            mib(r.rss_peak_kib)
        );
    }
    println!(
        "   CPU over the controller's life: {:.2} s",
        total_cpu.as_secs_f64()
    );

    let steady_calls = total(&rounds[1].calls);
    let eso_calls = eso
        .first()
        .map_or(0, |e| total(&e.calls) * n as u64 / e.n as u64);
    let hwm_mib = mib(hwm.max(life_peak));
    let targets = [
        (
            "Secret writes in a round where nothing changed",
            "0".to_owned(),
            rounds[1].secret_writes.to_string(),
            rounds[1].secret_writes == 0,
        ),
        (
            "RSS high-water mark",
            "≤ 64 MiB".to_owned(),
            format!("{hwm_mib:.1} MiB"),
            hwm_mib <= 64.0,
        ),
        (
            "Akeyless calls per steady round vs ESO's",
            "fewer".to_owned(),
            format!(
                "{steady_calls} vs {eso_calls} ({:.0}× fewer)",
                eso_calls as f64 / steady_calls.max(1) as f64
            ),
            steady_calls < eso_calls,
        ),
    ];
    println!();
    println!("Targets");
    let mut target_rows = Vec::new();
    for (what, target, measured, met) in targets {
        println!(
            "   {:<48} {:>9}  {:<32} {}",
            what,
            target,
            measured,
            if met { "met" } else { "MISSED" }
        );
        target_rows
            .push(json!({ "what": what, "target": target, "measured": measured, "met": met }));
    }
    if !problems.is_empty() {
        println!();
        println!("Problems");
        for problem in &problems {
            println!("   {problem}");
        }
    }

    json.insert(
        "rounds".into(),
        json!(rounds.iter().map(|r| r.json(n)).collect::<Vec<_>>()),
    );
    json.insert(
        "eso_pattern".into(),
        json!(
            eso.iter()
                .map(|e| json!({
                    "who": e.who,
                    "concurrency": e.concurrency,
                    "external_secrets_replayed": e.n,
                    "akeyless_calls": e.calls,
                    "akeyless_calls_total": total(&e.calls),
                    "akeyless_calls_per_external_secret": round(total(&e.calls) as f64 / e.n as f64),
                    "wall_s": round(e.wall.as_secs_f64()),
                    "wall_s_for_n": round(e.wall_for(n)),
                }))
                .collect::<Vec<_>>()
        ),
    );
    json.insert(
        "resources".into(),
        json!({
            "rss_high_water_kib": hwm,
            "rss_sampled_peak_kib": life_peak,
            "rss_after_steady_round_kib": rss_steady,
            "rss_after_steady_round_anon_kib": anon_steady,
            "rss_after_steady_round_file_kib": file_steady,
            "rss_at_end_kib": rss_after,
            "threads": threads,
            "cpu_s_total": round(total_cpu.as_secs_f64()),
            "clock_tick_ms": round(ms(tick)),
        }),
    );
    json.insert("targets".into(), json!(target_rows));
    json.insert("problems".into(), json!(problems));
    let path = common::write_json("controller", Value::Object(json))?;
    println!("\nJSON: {}", path.display());
    Ok(())
}
