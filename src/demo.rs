//! `akeyless-csi-provider demo`: the whole data path on one machine, with nothing to install.
//!
//! It starts the Akeyless emulator with fake sample items, serves the provider on a temporary
//! socket exactly as `serve` does, and mounts `examples/demo-spc.yaml` the way the driver would:
//! first mount, a rotation poll (no new login, same versions), a rotated secret (one version
//! changes), and a mistake in the SPC (a clear error naming the object); then
//! `examples/demo-issued-spc.yaml`: a dynamic secret and a PKI certificate, issued once per pod
//! volume and reused on polls.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use clap::Parser;

use crate::cli::{Cli, Command, DemoArgs};
use crate::emulator::{self, EmulatorHandle};
use crate::mount_cli::{self, MountCliError, PodIdentity};
use crate::proto::v1alpha1::MountResponse;
use crate::server;

const SPC: &str = include_str!("../examples/demo-spc.yaml");
const ISSUED_SPC: &str = include_str!("../examples/demo-issued-spc.yaml");
const SECRET: &str = include_str!("../examples/demo-secret.yaml");
const TIMEOUT: Duration = Duration::from_secs(30);

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Emulator(#[from] emulator::EmulatorError),
    #[error(transparent)]
    Server(#[from] server::ServerError),
    #[error(transparent)]
    Start(#[from] crate::cli::StartError),
    #[error(transparent)]
    Client(#[from] MountCliError),
    #[error("cannot use a temporary directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("the demo mount failed: {0}")]
    Mount(String),
}

/// Runs the demo, printing what happens to stdout.
pub async fn run(args: &DemoArgs) -> Result<(), DemoError> {
    let work = tempfile::Builder::new()
        .prefix("akeyless-csi-demo")
        .tempdir()?;
    let socket = work.path().join("akeyless.sock");
    let out = match &args.out {
        Some(dir) => dir.clone(),
        None => work.path().join("mount"),
    };

    let akeyless = emulator::start(([127, 0, 0, 1], 0).into(), emulator::Seed::demo()).await?;
    println!("Akeyless emulator   {}", akeyless.url());

    let Command::Serve(serve_args) = Cli::try_parse_from([
        "akeyless-csi-provider",
        "serve",
        "--socket",
        &socket.to_string_lossy(),
        "--akeyless-url",
        &akeyless.url(),
    ])
    .map_err(|e| DemoError::Mount(e.to_string()))?
    .command
    else {
        return Err(DemoError::Mount("unexpected command".to_owned()));
    };
    let provider = serve_args.provider(crate::telemetry::metrics::Metrics::new())?;
    let bound = server::bind(&socket)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        bound,
        provider,
        async {
            let _ = stopped.await;
        },
        server::ServeOptions {
            grace: Duration::from_secs(5),
            request_timeout: TIMEOUT,
            allowed_peer_uids: Vec::new(),
        },
        None,
    ));
    println!("provider socket     {} (mode 0600)\n", socket.display());

    let outcome = steps(&akeyless, &socket, &out).await;

    let _ = stop.send(());
    let _ = server.await;
    akeyless.shutdown().await;
    if let Err(e) = &outcome {
        println!("\nThe demo stopped: {e}");
    } else if args.out.is_some() {
        println!("The files are in {}", out.display());
    }
    outcome
}

async fn steps(akeyless: &EmulatorHandle, socket: &Path, out: &Path) -> Result<(), DemoError> {
    let secrets = mount_cli::read_secret_data(SECRET, Path::new("examples/demo-secret.yaml"))?;
    let spc = SPC.replace("https://api.akeyless.io", &akeyless.url());
    let pod = PodIdentity {
        namespace: None,
        name: "demo-app-7d9f8b6c4-x2v9k".to_owned(),
        uid: "0f0c7d0e-5a0b-4a8e-9d3e-2c1f6b8a9e11".to_owned(),
        service_account: "demo-app".to_owned(),
    };
    let request = |spc: &str| {
        mount_cli::build_request(
            spc,
            Path::new("examples/demo-spc.yaml"),
            &pod,
            &secrets,
            None,
            &BTreeMap::new(),
        )
    };
    let mut client = mount_cli::connect(socket).await?;
    let calls = |label: &str| {
        println!(
            "Akeyless calls so far: /auth {}, /describe-item {}, /get-secret-value {}  ({label})\n",
            akeyless.calls("/auth"),
            akeyless.calls("/describe-item"),
            akeyless.calls("/get-secret-value")
        );
    };

    println!("1. The pod starts: the driver calls Mount for examples/demo-spc.yaml");
    let first = mount_cli::call(&mut client, request(&spc)?, TIMEOUT)
        .await
        .map_err(|s| DemoError::Mount(format!("{:?}: {}", s.code(), s.message())))?;
    mount_cli::write_files(out, &first)?;
    print!("{}", indent(&mount_cli::describe(&first)));
    show_files(&first);
    calls(
        "one login; each item's type asked once, as the objects declare none; one batched read for the five objects at their latest version, one for the object pinned to version 1",
    );

    println!("2. A rotation poll a minute later: same identity, nothing changed");
    let second = mount_cli::call(&mut client, request(&spc)?, TIMEOUT)
        .await
        .map_err(|s| DemoError::Mount(s.message().to_owned()))?;
    let same = first.object_version == second.object_version;
    println!("   versions unchanged: {same}");
    calls("the cached token and item types are reused: no new login, no new describe");

    println!("3. Someone rotates /demo/db/password in Akeyless; the next poll picks it up");
    akeyless.put_secret("/demo/db/password", "rotated-password-1c2d");
    let third = mount_cli::call(&mut client, request(&spc)?, TIMEOUT)
        .await
        .map_err(|s| DemoError::Mount(s.message().to_owned()))?;
    mount_cli::write_files(out, &third)?;
    for (before, after) in second.object_version.iter().zip(&third.object_version) {
        let mark = if before.version == after.version {
            "same   "
        } else {
            "CHANGED"
        };
        println!("   {mark}  {}", after.id);
    }
    println!();

    println!("4. A typo in the SecretProviderClass fails the mount with a clear message:");
    let typo = spc.replace("/demo/db/password", "/demo/db/passwrd");
    match mount_cli::call(&mut client, request(&typo)?, TIMEOUT).await {
        Ok(_) => println!("   (unexpectedly mounted)"),
        Err(status) => println!("   {:?}: {}\n", status.code(), status.message()),
    }
    println!(
        "All-or-nothing: that mount returned no files, and the pod's files stay as they were.\n"
    );

    println!(
        "5. Issued, not stored (examples/demo-issued-spc.yaml): a dynamic database login, a TLS certificate\n   for a key made on the node (only a CSR is sent), and a template using the login"
    );
    let issued = ISSUED_SPC.replace("https://api.akeyless.io", &akeyless.url());
    let mut mounts = Vec::new();
    for _ in 0..3 {
        let response = mount_cli::call(&mut client, request(&issued)?, TIMEOUT)
            .await
            .map_err(|s| DemoError::Mount(format!("{:?}: {}", s.code(), s.message())))?;
        mounts.push(response);
    }
    let first = &mounts[0];
    mount_cli::write_files(out, first)?;
    print!("{}", indent(&mount_cli::describe(first)));
    show_files(first);
    let same = mounts.iter().all(|m| m.files == first.files);
    let minted = |akeyless: &EmulatorHandle| {
        (
            akeyless.leases_minted("/demo/db/dynamic"),
            akeyless.leases_minted("/demo/pki/web"),
        )
    };
    let (leases, certificates) = minted(akeyless);
    println!(
        "   3 mounts of this pod volume (first + 2 polls): same files every time: {same}; \
         {leases} lease and {certificates} certificate issued"
    );
    let other_pod = PodIdentity {
        name: "demo-app-7d9f8b6c4-q8w2z".to_owned(),
        uid: "0f0c7d0e-5a0b-4a8e-9d3e-2c1f6b8a9e12".to_owned(),
        ..pod.clone()
    };
    let other = mount_cli::build_request(
        &issued,
        Path::new("examples/demo-issued-spc.yaml"),
        &other_pod,
        &secrets,
        None,
        &BTreeMap::new(),
    )?;
    mount_cli::call(&mut client, other, TIMEOUT)
        .await
        .map_err(|s| DemoError::Mount(s.message().to_owned()))?;
    let (leases, certificates) = minted(akeyless);
    println!(
        "   another pod mounts the same SPC and gets its own: now {leases} leases and {certificates} certificates"
    );
    Ok(())
}

/// Shows the demo's (fake) file contents, the way `cat` in the pod would.
fn show_files(response: &MountResponse) {
    println!("   contents (fake demo values):");
    for file in &response.files {
        let preview = match std::str::from_utf8(&file.contents) {
            // Made for the demo, but a private key is still not something to print.
            Ok(text) if text.contains("PRIVATE KEY-----") => {
                format!("<PEM private key, {} bytes>", file.contents.len())
            }
            Ok(text) if !text.chars().any(|c| c.is_control() && c != '\n') => {
                let text = text.replace('\n', "\\n");
                if text.chars().count() > 70 {
                    format!("{}…", text.chars().take(70).collect::<String>())
                } else {
                    text
                }
            }
            _ => format!("<{} bytes of binary>", file.contents.len()),
        };
        println!("     {:<16} {preview}", file.path);
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("   {l}\n")).collect()
}
