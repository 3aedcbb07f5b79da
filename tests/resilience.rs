//! A busy node: faults from Akeyless, bursts of identical mounts, saturation, shutdown, probes,
//! and callers the provider must not serve — all through the real binary on its unix socket.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use akeyless_csi_provider::emulator::{Fault, FaultKind};
use akeyless_csi_provider::mount_cli;
use akeyless_csi_provider::proto::v1alpha1::MountRequest;
use common::harness::*;
use tonic::Code;

/// The same volume mounted by pod `i`: identical parameters, a different pod.
fn pod_request(objects: &str, i: usize) -> MountRequest {
    let pod = format!("web-{i}");
    let uid = format!("3f1c2e9a-0000-4000-8000-{i:012}");
    request(
        &[
            ("akeylessAccessID", ACCESS_ID),
            ("objects", objects),
            ("csi.storage.k8s.io/pod.name", &pod),
            ("csi.storage.k8s.io/pod.uid", &uid),
        ],
        Some(&[("akeylessAccessKey", ACCESS_KEY)]),
    )
}

/// Mounts all requests at once over `channels` connections; results in request order.
async fn mount_all(
    h: &Harness,
    requests: Vec<MountRequest>,
    channels: usize,
    timeout: Duration,
) -> Vec<Result<akeyless_csi_provider::proto::v1alpha1::MountResponse, tonic::Status>> {
    let mut clients = Vec::new();
    for _ in 0..channels.max(1) {
        clients.push(mount_cli::connect(&h.socket).await.expect("connect"));
    }
    let tasks: Vec<_> = requests
        .into_iter()
        .enumerate()
        .map(|(i, req)| {
            let mut client = clients[i % clients.len()].clone();
            tokio::spawn(async move { mount_cli::call(&mut client, req, timeout).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.expect("task"));
    }
    results
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_identical_mounts_cause_one_backend_read() {
    let h = Harness::start(seed(5)).await;
    let objects = objects(5);
    h.mount(pod_request(&objects, 0)).await.expect("warm token");
    h.akeyless.reset_stats();
    // Slow enough that every mount arrives while the first read is under way.
    h.akeyless.set_latency(Duration::from_millis(3000));

    let requests = (1..=200).map(|i| pod_request(&objects, i)).collect();
    let results = mount_all(&h, requests, 4, Duration::from_secs(60)).await;
    for result in &results {
        let response = result.as_ref().expect("every mount succeeds");
        assert_eq!(response.files.len(), 5);
        assert_eq!(response.files[2].contents, secret_value(2).into_bytes());
    }
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "200 identical mounts, one read"
    );
    assert_eq!(h.akeyless.calls("/auth"), 0);

    let (status, text) = h.http_get("/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert_eq!(
        metric(&text, "akeyless_csi_dedup_joins_total"),
        199.0,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"akeyless_csi_cache_hits_total{cache="token"}"#),
        200.0,
        "every mount after the first reused the token"
    );
    assert_eq!(
        metric(
            &text,
            r#"akeyless_csi_mounts_total{outcome="success",code="OK"}"#
        ),
        201.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_result_cache_answers_rotation_polls_when_enabled() {
    let h = Harness::start_with(seed(2), &["--result-cache-ttl", "60s"]).await;
    let objects = objects(2);
    h.mount(pod_request(&objects, 0)).await.expect("first");
    h.mount(pod_request(&objects, 1)).await.expect("second");
    assert_eq!(
        h.akeyless.calls("/get-secret-value"),
        1,
        "the second read came from the cache"
    );
    let (_, text) = h.http_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&text, r#"akeyless_csi_cache_hits_total{cache="result"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_never_kills_the_daemon_nor_leaks() {
    let mut h = Harness::start_with(
        seed(8),
        &[
            "--call-timeout",
            "1s",
            "--call-attempts",
            "3",
            "--mount-timeout",
            "8s",
        ],
    )
    .await;
    let status = |status| FaultKind::Status {
        status,
        retry_after_secs: None,
    };
    let kinds = [
        status(500),
        status(503),
        FaultKind::Status {
            status: 429,
            retry_after_secs: Some(1),
        },
        FaultKind::Delay { ms: 3_000 },
        FaultKind::Reset,
        FaultKind::Truncated,
        FaultKind::Malformed,
        FaultKind::SlowBody { ms_per_chunk: 40 },
        FaultKind::SlowBody { ms_per_chunk: 400 },
    ];
    // The token and the items' types are warm (as on a node that has been serving); faults
    // are then used up in order by whatever reads come.
    h.mount(pod_request(&objects(8), 0))
        .await
        .expect("warm token");
    for round in 0..3 {
        for kind in &kinds {
            h.akeyless.add_fault(Fault {
                endpoint: None,
                kind: kind.clone(),
                times: Some(4 + round),
            });
        }
    }

    // 300 concurrent mounts of volumes with different item sets, so that deduplication does
    // not fold them into a few reads.
    let variants: Vec<(String, Vec<usize>)> = (1..=255usize)
        .map(|mask| {
            let items: Vec<usize> = (0..8).filter(|i| mask & (1 << i) != 0).collect();
            let yaml = items
                .iter()
                .map(|i| format!("- secretPath: /e2e/item-{i}\n  fileName: f{i}\n"))
                .collect::<String>();
            (yaml, items)
        })
        .collect();
    let requests: Vec<MountRequest> = (0..300)
        .map(|i| pod_request(&variants[i % variants.len()].0, i))
        .collect();
    let results = mount_all(&h, requests, 8, Duration::from_secs(30)).await;

    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for (i, result) in results.iter().enumerate() {
        let items = &variants[i % variants.len()].1;
        match result {
            Ok(response) => {
                // Complete and correct, never partial.
                assert_eq!(response.files.len(), items.len(), "mount {i} is complete");
                for file in &response.files {
                    let n: usize = file.path[1..].parse().unwrap();
                    assert_eq!(
                        file.contents,
                        secret_value(n).into_bytes(),
                        "mount {i} {}",
                        file.path
                    );
                }
                assert_eq!(response.object_version.len(), items.len());
                *outcomes.entry("OK".into()).or_default() += 1;
            }
            Err(status) => {
                assert!(
                    matches!(
                        status.code(),
                        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
                    ),
                    "mount {i}: unexpected {:?}: {}",
                    status.code(),
                    status.message()
                );
                assert!(
                    status
                        .message()
                        .starts_with("SecretProviderClass shop/e2e-spc"),
                    "mount {i}: the message names the SPC: {}",
                    status.message()
                );
                *outcomes.entry(format!("{:?}", status.code())).or_default() += 1;
            }
        }
    }
    eprintln!("outcomes: {outcomes:?}");
    assert!(outcomes.get("OK").copied().unwrap_or(0) > 0, "{outcomes:?}");
    assert!(outcomes.len() > 1, "some faults surfaced: {outcomes:?}");

    assert!(h.provider_alive(), "the daemon survived");
    let rss = h.provider_rss_kib().expect("rss");
    assert!(rss < 100 * 1024, "memory stays bounded: {rss} KiB");

    // Faults used up: the next mount is clean.
    h.akeyless.clear_faults();
    h.mount(pod_request(&variants[0].0, 999))
        .await
        .expect("recovers");

    assert_eq!(h.stop_provider().await, Some(0));
    let logs = h.logs();
    for secret in [ACCESS_KEY, "SECRETMARK"] {
        assert!(!logs.contains(secret), "{secret} leaked into the logs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_node_answers_resource_exhausted_at_once() {
    let h = Harness::start_with(
        seed(2),
        &["--max-concurrent-calls", "1", "--max-queued-calls", "0"],
    )
    .await;
    h.mount(pod_request(&objects(1), 0))
        .await
        .expect("warm token");
    let slow = h
        .slow_mount(pod_request(&objects(1), 1), Duration::from_secs(3))
        .await;
    // A different volume needs its own read, but the only slot is taken and nobody may queue.
    let started = Instant::now();
    let status = h
        .mount(pod_request(&objects(2), 2))
        .await
        .expect_err("saturated");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once"
    );
    assert_eq!(
        status.code(),
        Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("node-wide limit"),
        "{}",
        status.message()
    );
    slow.await.unwrap().expect("the slow mount still completes");
    let (_, text) = h.http_get("/metrics").await.unwrap();
    assert_eq!(
        metric(&text, r#"akeyless_csi_rejected_total{reason="queue_full"}"#),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_deadline_ends_within_the_providers_bound() {
    let h = Harness::start_with(seed(1), &["--mount-timeout", "2s"]).await;
    h.mount(pod_request(&objects(1), 0))
        .await
        .expect("warm token");
    h.akeyless.add_fault(Fault {
        endpoint: Some("/get-secret-value".into()),
        kind: FaultKind::Delay { ms: 120_000 },
        times: None,
    });
    let mut client = mount_cli::connect(&h.socket).await.unwrap();
    let started = Instant::now();
    // No `set_timeout`: no grpc-timeout header, as drivers up to v1.5 send on rotation.
    let status = client
        .mount(tonic::Request::new(pod_request(&objects(1), 1)))
        .await
        .expect_err("Akeyless hangs");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "ended after {elapsed:?}");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_health_readiness_and_flip_during_shutdown() {
    let mut h = Harness::start(seed(1)).await;
    assert_eq!(h.http_get("/healthz").await.unwrap().0, 200);
    let (status, body) = h.http_get("/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    h.mount(pod_request(&objects(1), 0)).await.expect("mount");
    let (_, text) = h.http_get("/metrics").await.unwrap();
    for name in [
        "akeyless_csi_mounts_total",
        "akeyless_csi_mount_duration_seconds_bucket",
        "akeyless_csi_backend_calls_total{endpoint=\"get-secret-value\",status=\"2xx\"}",
        "akeyless_csi_logins_total",
        "akeyless_csi_inflight_mounts",
        "akeyless_csi_dedup_joins_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(
        !text.contains("web-0") && !text.contains("/e2e/item"),
        "no high-cardinality labels"
    );

    // An in-flight mount keeps the provider draining for a while after SIGTERM.
    let in_flight = h
        .slow_mount(pod_request(&objects(1), 1), Duration::from_secs(2))
        .await;
    let pid = h.provider_pid().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    // While draining: alive, not ready.
    let started = Instant::now();
    loop {
        match h.http_get("/readyz").await {
            Some((503, body)) => {
                assert!(body.contains("not ready"), "{body}");
                break;
            }
            Some(_) if started.elapsed() < Duration::from_secs(2) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("readiness did not flip while draining: {other:?}"),
        }
    }
    in_flight
        .await
        .unwrap()
        .expect("the in-flight mount completes");
    assert_eq!(h.stop_provider().await, Some(0));
    assert!(!h.socket.exists(), "the socket is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_from_unexpected_users_are_refused() {
    let h = Harness::start(seed(1)).await;
    // Loosen the file modes so only the peer check stands between `nobody` and the socket.
    std::fs::set_permissions(h.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&h.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let spc = h.dir.path().join("spc.yaml");
    std::fs::write(
        &spc,
        format!("kind: SecretProviderClass\nmetadata: {{name: x}}\nspec:\n  provider: akeyless\n  parameters:\n    akeylessAccessID: {ACCESS_ID}\n    objects: \"- secretPath: /e2e/item-0\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&spc, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (socket, spc_path) = (h.socket.clone(), spc.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_akeyless-csi-provider"))
            .arg("mount")
            .arg("--socket")
            .arg(&socket)
            .arg("--spc")
            .arg(&spc_path)
            .args([
                "--out",
                "/tmp/akeyless-csi-never-written",
                "--timeout",
                "10s",
            ])
            .output()
            .expect("setpriv runs")
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "a mount by uid 65534 must fail");
    assert!(!std::path::Path::new("/tmp/akeyless-csi-never-written").exists());
    let (_, text) = h.http_get("/metrics").await.unwrap();
    assert!(
        metric(&text, r#"akeyless_csi_rejected_total{reason="peer_uid"}"#) >= 1.0,
        "the refusal is counted:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        h.logs()
            .contains("refused a connection from a user that is not allowed")
    );
    // The driver's user (root, as this test runs) is still served.
    h.mount(pod_request(&objects(1), 0))
        .await
        .expect("root is served");
}
