//! Static reads merged across concurrent fetches: a `/get-secret-value` of one token and one
//! version gathers, for a short window, every name that other fetches of the same token ask
//! for, and one call answers them all. The controller's ExternalSecrets due in one refresh
//! round thus share one batched read per store identity instead of one each. The mount path does
//! not merge (its window is off): a node's mounts keep their own reads, so one failed call fails
//! one mount, and identical reads are still shared by [`super::Fetcher`].
//!
//! Each waiter gets the values of its own names only. A 404 that names an item fails the waiters
//! that asked for it and the call is made again for the others; a 404 naming none is retried
//! per waiter, so one ExternalSecret's missing item never fails another's refresh. Any other
//! failure (a refused token, an outage) is the same for every waiter of that token.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use url::Url;

use crate::akeyless::{ApiError, ApiToken, Client, Deadline};
use crate::secret::SecretBytes;

/// Most names in one merged call.
pub const MAX_NAMES: usize = 100;

type Values = BTreeMap<String, SecretBytes>;
type Reply = oneshot::Sender<Result<Values, ApiError>>;

/// One token's reads at one version.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    /// The token, compared by its text's address: the caller keeps it alive while it waits.
    token: usize,
    version: Option<u32>,
    base: Url,
}

/// A batch being gathered.
struct Gathering {
    waiters: Vec<(BTreeSet<String>, Reply)>,
    names: BTreeSet<String>,
}

/// The batches being gathered, by token and version.
#[derive(Clone)]
pub struct Batches {
    /// `None`: no merging, every read is its own call.
    linger: Option<Duration>,
    gathering: Arc<Mutex<HashMap<Key, Gathering>>>,
}

/// One fetch's static read.
pub struct Read<'a> {
    /// The identity's client (its trust roots and read options).
    pub client: &'a Client,
    pub base: &'a Url,
    pub token: &'a ApiToken,
    /// Tells tokens apart (the address of the caller's cached token, kept alive while it waits).
    pub token_id: usize,
    pub names: &'a [String],
    pub version: Option<u32>,
}

impl Batches {
    /// `linger`: how long a batch waits for more names after its first (zero: only what arrives
    /// while the runtime is busy with other tasks of the same instant); `None` merges nothing.
    pub fn new(linger: Option<Duration>) -> Self {
        Self {
            linger,
            gathering: Arc::default(),
        }
    }

    /// The values of `names` at `version`, read with `token`, in a call shared with concurrent
    /// readers of the same token. Names Akeyless does not return are left out.
    pub async fn read(&self, read: Read<'_>, deadline: Deadline) -> Result<Values, ApiError> {
        let Read {
            client,
            base,
            token,
            token_id,
            names,
            version,
        } = read;
        let Some(linger) = self.linger else {
            return client
                .get_secret_values(base, token, names, version, deadline)
                .await;
        };
        let key = Key {
            token: token_id,
            version,
            base: base.clone(),
        };
        let wanted: BTreeSet<String> = names.iter().cloned().collect();
        let (tx, rx) = oneshot::channel();
        let leader = {
            let mut gathering = lock(&self.gathering);
            match gathering.get_mut(&key) {
                Some(batch) if batch.names.len() + wanted.len() <= MAX_NAMES => {
                    batch.names.extend(wanted.iter().cloned());
                    batch.waiters.push((wanted, tx));
                    false
                }
                _ => {
                    // No batch, or a full one: this read starts the next. A full batch still
                    // being gathered is sent as it is by its own leader.
                    if let Some(full) = gathering.remove(&key) {
                        let this = self.clone();
                        let (client, base, token) = (client.clone(), base.clone(), token.clone());
                        tokio::spawn(async move {
                            this.send(&client, &base, &token, version, full, deadline)
                                .await;
                        });
                    }
                    gathering.insert(
                        key.clone(),
                        Gathering {
                            names: wanted.clone(),
                            waiters: vec![(wanted, tx)],
                        },
                    );
                    true
                }
            }
        };
        if leader {
            let this = self.clone();
            let (client, base, token) = (client.clone(), base.clone(), token.clone());
            let key = key.clone();
            // In its own task, so a caller that gives up does not strand the others.
            tokio::spawn(async move {
                if linger.is_zero() {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(linger).await;
                }
                let batch = lock(&this.gathering).remove(&key);
                if let Some(batch) = batch {
                    this.send(&client, &base, &token, version, batch, deadline)
                        .await;
                }
            });
        }
        match tokio::time::timeout_at(deadline.instant(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ApiError::Unavailable {
                command: "get-secret-value".to_owned(),
                attempts: 0,
                reason: "the shared read ended unexpectedly".to_owned(),
            }),
            Err(_) => Err(ApiError::DeadlineExceeded {
                command: "get-secret-value".to_owned(),
            }),
        }
    }

    /// Makes the merged call and answers every waiter; 404s are narrowed as described above.
    async fn send(
        &self,
        client: &Client,
        base: &Url,
        token: &ApiToken,
        version: Option<u32>,
        batch: Gathering,
        deadline: Deadline,
    ) {
        let mut waiters = batch.waiters;
        let mut names = batch.names;
        loop {
            if waiters.is_empty() {
                return;
            }
            let list: Vec<String> = names.iter().cloned().collect();
            match client
                .get_secret_values(base, token, &list, version, deadline)
                .await
            {
                Ok(values) => {
                    for (wanted, reply) in waiters {
                        let mine = wanted
                            .iter()
                            .filter_map(|n| values.get(n).map(|v| (n.clone(), v.clone())))
                            .collect();
                        let _ = reply.send(Ok(mine));
                    }
                    return;
                }
                Err(ApiError::NotFound { command, message }) if waiters.len() > 1 => {
                    let error = ApiError::NotFound {
                        command,
                        message: message.clone(),
                    };
                    // The longest name the message contains (so `/a/bc` is not taken for `/a/b`).
                    let missing = names
                        .iter()
                        .filter(|n| message.contains(n.as_str()))
                        .max_by_key(|n| n.len())
                        .cloned();
                    match missing {
                        Some(missing) => {
                            let (failed, rest): (Vec<_>, Vec<_>) = waiters
                                .into_iter()
                                .partition(|(wanted, _)| wanted.contains(&missing));
                            for (_, reply) in failed {
                                let _ = reply.send(Err(error.clone()));
                            }
                            waiters = rest;
                            names = waiters
                                .iter()
                                .flat_map(|(w, _)| w.iter().cloned())
                                .collect();
                        }
                        None => {
                            // Cannot tell whose item is missing: each waiter reads alone.
                            for (wanted, reply) in waiters {
                                let list: Vec<String> = wanted.into_iter().collect();
                                let result = client
                                    .get_secret_values(base, token, &list, version, deadline)
                                    .await;
                                let _ = reply.send(result);
                            }
                            return;
                        }
                    }
                }
                Err(error) => {
                    for (_, reply) in waiters {
                        let _ = reply.send(Err(error.clone()));
                    }
                    return;
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::akeyless::{AuthRequest, ClientOptions};
    use crate::emulator::{self, Seed};
    use crate::secret::SecretString;
    use crate::telemetry::metrics::Metrics;

    async fn setup() -> (emulator::EmulatorHandle, Client, Url, ApiToken) {
        let seed = Seed::from_yaml(
            "auth_methods:\n  - {access_id: p-batch, access_type: access_key, access_key: k, read: [\"/*\"]}\nitems:\n  - {name: /a, value: A}\n  - {name: /b, value: B}\n  - {name: /c, value: C}\n",
        )
        .unwrap();
        let akeyless = emulator::start(([127, 0, 0, 1], 0).into(), seed)
            .await
            .unwrap();
        let client = Client::new(ClientOptions::default(), Metrics::new());
        let base = Url::parse(&akeyless.url()).unwrap();
        let login = AuthRequest {
            access_type: "access_key".into(),
            access_id: "p-batch".into(),
            access_key: Some(SecretString::new("k")),
            ..AuthRequest::default()
        };
        let token = client
            .auth(&base, &login, Deadline::after(Duration::from_secs(5)))
            .await
            .unwrap()
            .token;
        (akeyless, client, base, ApiToken::Token(token))
    }

    async fn read_all(
        batches: &Batches,
        client: &Client,
        base: &Url,
        token: &ApiToken,
        sets: &[&[&str]],
    ) -> Vec<Result<Values, ApiError>> {
        let names: Vec<Vec<String>> = sets
            .iter()
            .map(|set| set.iter().map(|s| s.to_string()).collect())
            .collect();
        let reads = names.iter().map(|names| {
            batches.read(
                Read {
                    client,
                    base,
                    token,
                    token_id: 1,
                    names,
                    version: None,
                },
                Deadline::after(Duration::from_secs(5)),
            )
        });
        futures::future::join_all(reads).await
    }

    fn text(values: &Values, name: &str) -> String {
        String::from_utf8(values[name].expose().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_token_share_one_call_and_get_their_own_names() {
        let (akeyless, client, base, token) = setup().await;
        let batches = Batches::new(Some(Duration::from_millis(50)));
        let results = read_all(
            &batches,
            &client,
            &base,
            &token,
            &[&["/a"], &["/b", "/c"], &["/a", "/c"]],
        )
        .await;
        assert_eq!(akeyless.calls("get-secret-value"), 1, "one merged call");
        let values: Vec<Values> = results.into_iter().map(Result::unwrap).collect();
        assert_eq!(values[0].keys().collect::<Vec<_>>(), ["/a"]);
        assert_eq!(text(&values[1], "/b"), "B");
        assert_eq!(text(&values[2], "/c"), "C");
        assert_eq!(values[2].len(), 2);
    }

    #[tokio::test]
    async fn a_missing_item_fails_only_the_reads_that_asked_for_it() {
        let (_akeyless, client, base, token) = setup().await;
        let batches = Batches::new(Some(Duration::from_millis(50)));
        let results = read_all(
            &batches,
            &client,
            &base,
            &token,
            &[&["/a"], &["/b", "/gone"], &["/c"]],
        )
        .await;
        assert_eq!(text(results[0].as_ref().unwrap(), "/a"), "A");
        assert!(
            matches!(results[1], Err(ApiError::NotFound { .. })),
            "{:?}",
            results[1]
        );
        assert_eq!(text(results[2].as_ref().unwrap(), "/c"), "C");
    }

    #[tokio::test]
    async fn without_a_window_every_read_is_its_own_call() {
        let (akeyless, client, base, token) = setup().await;
        let batches = Batches::new(None);
        let results = read_all(&batches, &client, &base, &token, &[&["/a"], &["/b"]]).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(akeyless.calls("get-secret-value"), 2);
    }
}
