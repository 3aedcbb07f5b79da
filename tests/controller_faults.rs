//! The `controller` command under bad input and faults (issue 13, item 7), end to end: the
//! real binary, the Akeyless emulator (its faults) and a real control plane; the faults a real
//! API server cannot be made to produce on cue (conflicts, 403s, dropped watches) come from a
//! proxy in front of it (`fake_k8s::FaultProxy`). In every case the controller keeps running,
//! reports the problem in the right object's status, writes nothing on a failed fetch, and
//! recovers when the cause goes away. Skipped, saying so, where `KUBEBUILDER_ASSETS` is unset.

mod common;

use akeyless_csi_provider::emulator::{Fault, FaultKind};
use common::control_plane::eventually;
use common::eso::{Env, MARK, ROTATING, Staged, WAIT, ready, rotating_es, store_yaml};
use common::fake_k8s::FaultProxy;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;

/// A periodic (1s) ExternalSecret of `/app/rot`.
fn es(name: &str, store: &str, spec: &str) -> String {
    rotating_es(name, store, &format!("  refreshInterval: 1s\n{spec}"))
}

/// Waits until a healthy ExternalSecret picked up a rotation: the controller is alive and
/// serving other objects.
async fn still_serving(env: &Env, name: &str, value: &'static str) {
    env.akeyless.put_secret("/app/rot", value);
    env.wait_data(name, |d| d["v"] == value).await;
}

/// A store whose credentials Secret does not exist: the store says which Secret is missing,
/// its ExternalSecrets say which store is broken; once the Secret exists, both recover. A
/// store with a wrong access key fails its login, saying as whom (never the key). A wrong
/// item name is reported on its own ExternalSecret. Others are served meanwhile.
#[tokio::test]
async fn a_missing_credentials_secret_and_a_wrong_key_are_reported_where_they_are() {
    let Some(staged) = Staged::new("references", ROTATING).await else {
        return;
    };
    let url = staged.akeyless.url();
    // The store, without its Secret.
    let store = store_yaml("broken", &url, "v1", "");
    let store = &store[store.find("---").unwrap() + 3..];
    staged.apply(store).await;
    staged.apply(&es("es-broken", "broken", "")).await;
    staged.apply(&es("healthy", "akeyless", "")).await;
    staged
        .apply(&es("wrong-key", "akeyless", "").replace("key: /app/rot", "key: /app/no-such-item"))
        .await;
    // A store whose access key is wrong.
    staged
        .apply(
            &store_yaml("wrong-access-key", &url, "v1", "")
                .replace(common::harness::ACCESS_KEY, "wrong-access-key-LEAKCHECK"),
        )
        .await;
    staged
        .apply(&es("es-wrong-access-key", "wrong-access-key", ""))
        .await;
    let env = staged.start(&["--store-revalidate", "1s"]);

    let stores = env.stores();
    let message = eventually("store broken to say what is missing", WAIT, || async {
        let store = stores.get("broken").await.ok()?;
        let (status, _, message) = ready(&store)?;
        (status == "False").then_some(message)
    })
    .await;
    assert!(message.contains("broken-creds"), "{message}");
    assert!(message.contains("does not exist"), "{message}");
    let message = env.wait_failed("es-broken", "broken-creds").await;
    assert!(message.contains("SecretStore"), "{message}");
    assert!(env.data("es-broken").await.is_none());

    let message = eventually("store wrong-access-key to fail its login", WAIT, || async {
        let store = stores.get("wrong-access-key").await.ok()?;
        let (status, reason, message) = ready(&store)?;
        (status == "False").then_some(format!("{reason}: {message}"))
    })
    .await;
    assert!(message.starts_with("ValidationFailed"), "{message}");
    assert!(message.contains(common::harness::ACCESS_ID), "{message}");
    let message = env.wait_failed("es-wrong-access-key", "log in").await;
    assert!(message.contains(common::harness::ACCESS_ID), "{message}");
    assert!(!message.contains("LEAKCHECK"), "{message}");
    assert!(env.data("es-wrong-access-key").await.is_none());

    let message = env.wait_failed("wrong-key", "/app/no-such-item").await;
    assert!(
        message.contains("remoteRef.key"),
        "names the fix: {message}"
    );
    assert!(env.data("wrong-key").await.is_none(), "nothing written");
    still_serving(&env, "healthy", "r2-ESOMARK").await;

    // The Secret appears: the store and its ExternalSecret recover.
    env.apply(&store_yaml("broken", &url, "v1", "")).await;
    env.wait_data("es-broken", |d| d["v"] == "r2-ESOMARK").await;
    env.wait_ready("es-broken").await;
    eventually("store broken to be valid", WAIT, || async {
        let store = stores.get("broken").await.ok()?;
        (ready(&store)?.0 == "True").then_some(())
    })
    .await;
    assert!(env.controller.logs().contains("reconcile failed"));
    env.assert_no_leak(&["LEAKCHECK"]);
}

/// An Akeyless outage, then a 429 storm: nothing is written while reads fail, the status
/// says what failed, the object is retried with backoff (the log shows growing failure
/// counts), and the rotation made meanwhile arrives once Akeyless answers again.
#[tokio::test]
async fn an_akeyless_outage_and_a_429_storm_write_nothing_and_recover() {
    let Some(mut env) = Env::start("outage", ROTATING, &[]).await else {
        return;
    };
    env.apply(&es("synced", "akeyless", "")).await;
    env.wait_data("synced", |d| d["v"] == "r1-ESOMARK").await;
    env.wait_ready("synced").await;
    let mut writes = env.secret_writes("synced");
    for (fault, needle, value) in [
        (
            FaultKind::Status {
                status: 503,
                retry_after_secs: None,
            },
            "503",
            "r2-ESOMARK",
        ),
        (
            FaultKind::Status {
                status: 429,
                retry_after_secs: Some(1),
            },
            "429",
            "r3-ESOMARK",
        ),
    ] {
        let seen = backoffs(&env.controller.logs(), "synced").len();
        env.akeyless.add_fault(Fault::new(fault));
        env.akeyless.put_secret("/app/rot", value);
        let message = env.wait_failed("synced", needle).await;
        assert!(message.contains("/app/rot"), "names the item: {message}");
        assert!(!message.contains(MARK), "{message}");
        // Retried with backoff, counting this object's failures from one (a success reset
        // the count of the round before).
        let counts = eventually("three backed-off retries", WAIT, || async {
            let counts = backoffs(&env.controller.logs(), "synced");
            let round = counts.get(seen..)?.to_vec();
            round.iter().any(|n| *n >= 3).then_some(round)
        })
        .await;
        assert_eq!(
            counts[0], 1,
            "the count starts again after a success: {counts:?}"
        );
        assert_eq!(env.secret_writes("synced"), writes, "nothing written");
        assert!(env.controller.alive());
        env.akeyless.clear_faults();
        env.wait_data("synced", |d| d["v"] == value).await;
        env.wait_ready("synced").await;
        writes += 1;
        assert_eq!(env.secret_writes("synced"), writes, "one update");
    }
    env.assert_no_leak(&[]);
}

/// The failure counts the controller logged when backing off `name`, in order.
fn backoffs(logs: &str, name: &str) -> Vec<u64> {
    logs.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == "backing off")
        .filter(|line| line["name"] == name)
        .filter_map(|line| line["failures"].as_u64())
        .collect()
}

/// A store deleted under its ExternalSecrets: each says its store is gone, its Secret stays;
/// the store back, they recover.
#[tokio::test]
async fn a_store_deleted_under_its_external_secrets() {
    let Some(env) = Env::start("store-deleted", ROTATING, &[]).await else {
        return;
    };
    env.apply(&es("first", "akeyless", "")).await;
    env.apply(&es("second", "akeyless", "")).await;
    env.wait_ready("first").await;
    env.wait_ready("second").await;
    env.stores()
        .delete("akeyless", &DeleteParams::default())
        .await
        .unwrap();
    for name in ["first", "second"] {
        let message = env.wait_failed(name, "not found").await;
        assert!(message.contains("akeyless"), "{message}");
        assert!(
            message.contains("secretStoreRef"),
            "names the fix: {message}"
        );
        assert_eq!(env.data(name).await.unwrap()["v"], "r1-ESOMARK", "kept");
    }
    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.apply(&store_yaml("akeyless", &env.akeyless.url(), "v1", ""))
        .await;
    for name in ["first", "second"] {
        env.wait_data(name, |d| d["v"] == "r2-ESOMARK").await;
        env.wait_ready(name).await;
    }
    env.assert_no_leak(&[]);
}

/// A template that does not parse, and one that fails as it renders: Ready False naming the
/// template key, the Secret as it was, others served.
#[tokio::test]
async fn a_malformed_template_is_reported_and_nothing_is_written() {
    let Some(env) = Env::start("template", ROTATING, &[]).await else {
        return;
    };
    env.apply(&es("healthy", "akeyless", "")).await;
    env.apply(&es(
        "templated",
        "akeyless",
        "  target:\n    template:\n      data: {out: \"v={{ .v }}\"}",
    ))
    .await;
    env.wait_data("templated", |d| d["out"] == "v=r1-ESOMARK")
        .await;
    let writes = env.secret_writes("templated");
    let set_template = |text: &'static str| {
        let api = env.externals();
        async move {
            api.patch(
                "templated",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"target": {"template": {"data": {"out": text}}}}})),
            )
            .await
            .unwrap();
        }
    };
    set_template("{{ .v | no_such_function }}").await;
    let message = env.wait_failed("templated", "template.data[out]").await;
    assert!(message.contains("no_such_function"), "{message}");
    set_template("{{ .no_such_key }}").await;
    let message = env.wait_failed("templated", "no_such_key").await;
    assert!(message.contains("template.data[out]"), "{message}");
    assert!(!message.contains(MARK), "{message}");
    assert_eq!(env.data("templated").await.unwrap()["out"], "v=r1-ESOMARK");
    assert_eq!(env.secret_writes("templated"), writes, "nothing written");
    still_serving(&env, "healthy", "r2-ESOMARK").await;
    set_template("fixed {{ .v }}").await;
    env.wait_data("templated", |d| d["out"] == "fixed r2-ESOMARK")
        .await;
    env.assert_no_leak(&[]);
}

/// Through the fault proxy: write conflicts on the Secret are retried from a fresh read; a
/// 403 on Secrets is reported naming the permission and retried until granted; dropped
/// watches (and a watch refused for a while) are resumed, and what changed meanwhile is served.
#[tokio::test]
async fn conflicts_403s_and_dropped_watches_from_the_api_server() {
    let Some(staged) = Staged::new("api-faults", ROTATING).await else {
        return;
    };
    let ca = std::fs::read_to_string(staged.cp.dir.join("ca.crt")).unwrap();
    let proxy = FaultProxy::start(&staged.cp.url, &ca).await;
    staged.apply(&es("synced", "akeyless", "")).await;
    let env = staged.start_through(&proxy, &[]).await;
    env.wait_data("synced", |d| d["v"] == "r1-ESOMARK").await;
    env.wait_ready("synced").await;

    // Three conflicts in a row: the write is computed again from a fresh read each time.
    proxy.conflict_next("update", "secrets", 3);
    env.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    env.wait_data("synced", |d| d["v"] == "r2-ESOMARK").await;
    assert_eq!(proxy.served("update", "secrets", 409), 3);
    env.wait_ready("synced").await;

    // Conflicts without end: reported, retried, written once they stop.
    proxy.conflict_next("update", "secrets", usize::MAX);
    env.akeyless.put_secret("/app/rot", "r3-ESOMARK");
    env.wait_failed("synced", "kept changing").await;
    proxy.heal();
    env.wait_data("synced", |d| d["v"] == "r3-ESOMARK").await;

    // No permission to update Secrets: the condition names it; granted, it is written.
    proxy.refuse("update", "secrets", 403);
    env.akeyless.put_secret("/app/rot", "r4-ESOMARK");
    let message = env.wait_failed("synced", "403").await;
    assert!(message.contains("update"), "{message}");
    assert!(message.contains("secrets"), "{message}");
    assert!(
        message.contains("deploy/overlays/controller"),
        "where to grant it: {message}"
    );
    proxy.heal();
    env.wait_data("synced", |d| d["v"] == "r4-ESOMARK").await;
    env.wait_ready("synced").await;

    // Watches dropped, and refused for a while: a new ExternalSecret applied meanwhile is
    // served once they are back.
    proxy.refuse("watch", "externalsecrets", 503);
    proxy.refuse("list", "externalsecrets", 503);
    proxy.drop_watches();
    env.apply(&es("while-dropped", "akeyless", "")).await;
    eventually("the watch to be refused", WAIT, || async {
        (proxy.served("watch", "externalsecrets", 503)
            + proxy.served("list", "externalsecrets", 503)
            > 0)
        .then_some(())
    })
    .await;
    proxy.heal();
    env.wait_data("while-dropped", |d| d["v"] == "r4-ESOMARK")
        .await;
    env.wait_ready("while-dropped").await;
    proxy.drop_watches();
    env.akeyless.put_secret("/app/rot", "r5-ESOMARK");
    env.wait_data("while-dropped", |d| d["v"] == "r5-ESOMARK")
        .await;
    env.apply(&es("after-drop", "akeyless", "")).await;
    env.wait_ready("after-drop").await;
    assert!(env.controller.logs().contains("reconcile failed"));
    env.assert_no_leak(&[]);
}
