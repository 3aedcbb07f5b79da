//! Leader election of the `controller` command (issue 13, item 1), end to end: two real
//! controller processes for one namespace, each as its own ServiceAccount, so that the API
//! server's audit log tells who wrote what. Skipped, saying so, where `KUBEBUILDER_ASSETS` is
//! unset.

mod common;

use common::control_plane::eventually;
use common::eso::{ROTATING, STORE, Staged, WAIT, metric, rotating_es, writes_by};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const LEASE: &str = "akeyless-csi-provider-controller";

fn es(name: &str) -> String {
    rotating_es(name, STORE, "  refreshInterval: 1s")
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// The Lease's holder now.
async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(LEASE)
        .await
        .expect("reading the Lease")?
        .spec?
        .holder_identity
}

/// Writes by `user` other than its own Lease and Events: what only a leader may do.
fn leader_writes(cp: &common::control_plane::ControlPlane, user: &str) -> usize {
    ["secrets", "externalsecrets", "secretstores"]
        .iter()
        .map(|r| writes_by(cp, user, r).len())
        .sum()
}

/// Only the Lease holder writes; a SIGKILLed leader's standby takes over once the Lease runs
/// out and serves new ExternalSecrets; a SIGTERMed leader releases the Lease as it exits.
#[tokio::test]
async fn one_leader_writes_a_standby_takes_over_and_sigterm_releases_the_lease() {
    let Some(staged) = Staged::new("leader", ROTATING).await else {
        return;
    };
    let ns = staged.ns.clone();
    let args = |identity: &str| -> Vec<String> {
        [
            "--leader-election=true",
            "--leader-election-namespace",
            &ns,
            "--leader-election-identity",
            identity,
            "--lease-duration",
            "4s",
            "--lease-grace",
            "2s",
        ]
        .map(str::to_owned)
        .to_vec()
    };
    let (args_a, args_b) = (args("a"), args("b"));
    let leases: Api<Lease> = Api::namespaced(staged.client.clone(), &ns);
    staged.apply(&es("first")).await;
    let (mut a, user_a) = staged.spawn("controller-a", &strs(&args_a)).await;
    eventually("a to hold the Lease", WAIT, || async {
        (holder(&leases).await.as_deref() == Some("a")).then_some(())
    })
    .await;
    let (mut b, user_b) = staged.spawn("controller-b", &strs(&args_b)).await;
    let secrets = staged.client.clone();
    let data = |name: &'static str| {
        let secrets: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(secrets.clone(), &ns);
        async move {
            let secret = secrets.get_opt(name).await.ok()??;
            Some(common::eso::text_data(&secret))
        }
    };
    let value_is = |name: &'static str, want: &'static str| {
        let data = &data;
        async move { (data(name).await?.get("v")? == want).then_some(()) }
    };
    eventually("first synced", WAIT, || value_is("first", "r1-ESOMARK")).await;
    staged.akeyless.put_secret("/app/rot", "r2-ESOMARK");
    eventually("first updated", WAIT, || value_is("first", "r2-ESOMARK")).await;
    // b has stood by through both writes (and a's refreshes every second).
    assert!(b.alive(), "the standby runs:\n{}", b.logs());
    assert!(leader_writes(staged.cp, &user_a) >= 2, "a wrote");
    assert_eq!(
        leader_writes(staged.cp, &user_b),
        0,
        "the standby wrote nothing: {:?}",
        writes_by(staged.cp, &user_b, "secrets")
    );
    assert_eq!(
        metric(&a, "akeyless_csi_controller_leader").await,
        Some(1.0)
    );
    assert_eq!(
        metric(&b, "akeyless_csi_controller_leader").await,
        Some(0.0)
    );

    // The leader dies without a word: b takes over when the Lease runs out.
    a.kill();
    staged.apply(&es("second")).await;
    eventually("second synced by the new leader", WAIT, || {
        value_is("second", "r2-ESOMARK")
    })
    .await;
    assert_eq!(holder(&leases).await.as_deref(), Some("b"));
    assert!(leader_writes(staged.cp, &user_b) >= 1, "b writes now");

    // a comes back as a standby; b is asked to stop and releases the Lease on its way out.
    a.spawn();
    eventually("a to stand by", WAIT, || async {
        (metric(&a, "akeyless_csi_controller_leader").await == Some(0.0)
            && a.http_get("/readyz").await?.0 == 200)
            .then_some(())
    })
    .await;
    assert_eq!(b.stop().await, Some(0), "b exits cleanly:\n{}", b.logs());
    assert_ne!(
        holder(&leases).await.as_deref(),
        Some("b"),
        "the Lease is released as b exits, not left to run out"
    );
    assert!(
        b.logs().contains("released the leader Lease"),
        "{}",
        b.logs()
    );
    staged.apply(&es("third")).await;
    eventually("third synced by a", WAIT, || {
        value_is("third", "r2-ESOMARK")
    })
    .await;
    assert_eq!(holder(&leases).await.as_deref(), Some("a"));
    for controller in [&a, &b] {
        let logs = controller.logs();
        assert!(!logs.contains("ESOMARK"), "a value leaked into a log");
    }
}
