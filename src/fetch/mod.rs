//! Fetching: the items a mount needs, read from Akeyless with as few calls as possible.
//!
//! A mount's objects become *units* (an item, a version, a type). Types come from the object's
//! `type:` or from `/describe-item`, asked once per item and remembered; folders are listed with
//! `/list-items`. Then, concurrently: every static secret in one batched `/get-secret-value` per
//! pinned version, each rotated secret and stored certificate in one call, and each dynamic
//! secret, PKI certificate and SSH certificate through [`lease`], which reuses what was issued
//! for the same pod volume until shortly before it ends. Identical reads of concurrent mounts
//! are shared; a missing optional item is reported as absent, and any other failure fails the
//! whole fetch.

pub mod batch;
pub mod issue;
pub mod lease;
pub mod plan;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared, try_join_all};
use tokio::time::Instant;
use url::Url;

use crate::akeyless::{ApiError, Client, Deadline, ItemRef, ListQuery, Listed, SecretJson};
use crate::auth::{CachedToken, Identity};
use crate::params::{ItemKind, ObjectSpec, Shape};
use crate::render::Values;
use crate::secret::{SecretBytes, SecretString};
use crate::telemetry::metrics::{CacheKind, Metrics};

pub use lease::LeaseScope;

/// Settings fixed at start-up.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// The bound of a shared read or an issue, which outlives the mount that started it.
    pub mount_timeout: Duration,
    /// How long a read's result may answer identical reads of the same token (0 = off).
    pub result_cache_ttl: Duration,
    /// How long a static read waits for other fetches of the same token to join it (0: only
    /// those of the same instant; `None`: no merging, the mount path): the controller's refresh
    /// rounds batch across ExternalSecrets.
    pub batch_window: Option<Duration>,
}

/// How long an item's type is remembered. Types do not change; an item deleted and created
/// again with another type fails its read, which forgets the type.
const TYPE_TTL: Duration = Duration::from_secs(3600);
const MAX_TYPES: usize = 50_000;
/// Most cached read results kept; expired ones go first, from this many entries on.
const MAX_CACHED_RESULTS: usize = 10_000;
const PRUNE_CACHED_RESULTS: usize = 256;
/// Pages of `/list-items` one folder may take (the server returns everything on one page
/// unless it paginates).
const MAX_LIST_PAGES: usize = 20;

/// One thing fetched: an item at a version, read as one type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unit {
    pub name: String,
    pub version: Option<u32>,
    pub kind: ItemKind,
}

/// A fetched value.
#[derive(Debug)]
pub struct Item {
    /// The value as a file would hold it: text for static secrets, JSON for the others
    /// (`{"certificate_pem", "private_key_pem"}` for certificates), the certificate line for SSH.
    pub value: SecretBytes,
    /// The object version the API gives (a lease id, an SSH serial); `None` = derived from
    /// the content by [`crate::render`].
    pub version: Option<String>,
    /// Certificates: the PEM chain as Akeyless gave it and the key, for bundles and splits.
    pub cert: Option<CertPem>,
}

/// A certificate chain in PEM and its key.
#[derive(Debug, Clone)]
pub struct CertPem {
    pub certificates: String,
    pub key: Option<SecretString>,
}

/// One item's value at a version, read as a type.
type Version = (Option<u32>, ItemKind, Arc<Item>);

/// What one mount fetched.
#[derive(Debug, Default)]
pub struct Fetched {
    /// By item name (looked up without allocating): version, type, value.
    units: HashMap<String, Vec<Version>>,
    /// The types Akeyless gave for objects that declare none.
    kinds: HashMap<String, ItemKind>,
    /// Optional items that do not exist.
    absent: BTreeSet<String>,
    /// Each folder object's items, by the object's id.
    folders: HashMap<String, Vec<String>>,
}

/// What a reference to one item resolved to.
pub enum Lookup<'a> {
    Found(&'a Arc<Item>),
    /// An optional item that does not exist.
    Absent,
    /// Not fetched (a bug, reported as such).
    Missing,
}

impl Fetched {
    /// The value of `name` at `version`, read as `declared` or as Akeyless said.
    pub fn lookup(
        &self,
        name: &str,
        version: Option<u32>,
        declared: Option<&ItemKind>,
    ) -> Lookup<'_> {
        if self.absent.contains(name) {
            return Lookup::Absent;
        }
        let Some(kind) = declared.or_else(|| self.kinds.get(name)) else {
            return Lookup::Missing;
        };
        self.units
            .get(name)
            .and_then(|units| units.iter().find(|(v, k, _)| *v == version && k == kind))
            .map_or(Lookup::Missing, |(_, _, item)| Lookup::Found(item))
    }

    /// The type an item was read as.
    pub fn kind_of<'a>(
        &'a self,
        name: &str,
        declared: Option<&'a ItemKind>,
    ) -> Option<&'a ItemKind> {
        declared.or_else(|| self.kinds.get(name))
    }

    /// The items a folder object listed (sorted), `None` if it was not listed.
    pub fn folder(&self, object: &ObjectSpec) -> Option<&[String]> {
        self.folders.get(&object.id()).map(Vec::as_slice)
    }

    /// Static values as if read for objects that declare no type, e.g. to test later stages.
    pub fn from_static_values(values: Values) -> Self {
        let mut fetched = Self::default();
        for (item, value) in values {
            fetched.kinds.insert(item.name.clone(), ItemKind::Static);
            let unit = Unit {
                name: item.name,
                version: item.version,
                kind: ItemKind::Static,
            };
            fetched.insert(
                unit,
                Item {
                    value,
                    version: None,
                    cert: None,
                },
            );
        }
        fetched
    }

    /// Adds a value, e.g. to test later stages.
    pub fn insert(&mut self, unit: Unit, item: Item) {
        self.put(unit, Arc::new(item));
    }

    fn put(&mut self, unit: Unit, item: Arc<Item>) {
        let units = self.units.entry(unit.name).or_default();
        units.retain(|(v, k, _)| !(*v == unit.version && *k == unit.kind));
        units.push((unit.version, unit.kind, item));
    }

    /// Records a folder's listing, e.g. to test later stages.
    pub fn insert_folder(&mut self, object: &ObjectSpec, names: Vec<String>) {
        self.folders.insert(object.id(), names);
    }

    /// The static values, for [`crate::sync`].
    pub fn statics(&self) -> Values {
        self.units
            .iter()
            .flat_map(|(name, units)| {
                units
                    .iter()
                    .filter(|(_, kind, _)| *kind == ItemKind::Static)
                    .map(move |(version, _, item)| {
                        let item_ref = ItemRef {
                            name: name.clone(),
                            version: *version,
                        };
                        (item_ref, item.value.clone())
                    })
            })
            .collect()
    }
}

/// What a mount (or a controller refresh) asks for.
#[derive(Debug)]
pub struct Want<'a> {
    pub objects: &'a [ObjectSpec],
    /// Items read for Kubernetes Secrets.
    pub extra: &'a [Extra],
    /// The pod volume (or ExternalSecret) that leases belong to; `None` issues anew every time.
    pub scope: Option<LeaseScope>,
}

/// An item read for a Kubernetes Secret rather than a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    pub item: ItemRef,
    /// Its type, when known (an SPC's Secrets read static items; a listing says); `None` asks
    /// Akeyless once per item and identity.
    pub kind: Option<ItemKind>,
    /// May be missing: reported absent instead of failing the fetch.
    pub optional: bool,
}

/// One item a `find` listing gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub name: String,
    /// Its type, as the listing says (`None`: not said, or not readable as a value).
    pub kind: Option<ItemKind>,
    pub tags: Vec<String>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    /// An Akeyless call failed; `items` are the items it was about.
    #[error("{source}")]
    Api {
        source: ApiError,
        items: Vec<String>,
    },
    /// An item exists but cannot be used as the object asks.
    #[error("item {item}: {problem}")]
    Item { item: String, problem: String },
    /// A required item or folder does not exist.
    #[error("{what} {name} {problem}")]
    Missing {
        /// `item` or `folder`.
        what: &'static str,
        name: String,
        problem: String,
    },
}

impl FetchError {
    fn api(source: ApiError, items: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::Api {
            source,
            items: items.into_iter().map(Into::into).collect(),
        }
    }

    /// A required item that does not exist.
    fn missing_item(name: &str) -> Self {
        Self::Missing {
            what: "item",
            name: name.to_owned(),
            problem: "does not exist: check secretPath in objects".to_owned(),
        }
    }

    /// Whether this failure may come from reading `name` as a type it no longer has (an item
    /// deleted and created again as another type): Akeyless's answer to reading an item as the
    /// wrong type is not documented (400, 404, or a 200 without it).
    fn may_be_wrong_type(&self, name: &str) -> bool {
        match self {
            Self::Api {
                source: ApiError::NotFound { .. } | ApiError::Rejected { .. },
                items,
            } => items.iter().any(|i| i == name),
            Self::Missing {
                what: "item",
                name: missing,
                ..
            } => missing == name,
            _ => false,
        }
    }

    /// A refused token: the caller may log in again once.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            Self::Api {
                source: ApiError::Unauthorized { .. },
                ..
            }
        )
    }
}

/// A read that concurrent mounts can share.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Op {
    Values {
        version: Option<u32>,
        names: Vec<String>,
    },
    Rotated {
        name: String,
        version: Option<u32>,
    },
    Certificate {
        name: String,
        version: Option<u32>,
    },
    Describe {
        name: String,
    },
    List {
        path: String,
        filter: Option<String>,
        recursive: bool,
        /// Static secrets only (folders), or every readable type (`find`).
        statics: bool,
        tag: Option<String>,
    },
}

impl Op {
    fn command(&self) -> &'static str {
        match self {
            Self::Values { .. } => plan::command(&ItemKind::Static),
            Self::Rotated { .. } => plan::command(&ItemKind::Rotated),
            Self::Certificate { .. } => plan::command(&ItemKind::Certificate),
            Self::Describe { .. } => "describe-item",
            Self::List { .. } => "list-items",
        }
    }
}

/// One read by one token (an identity, at one login). The token is compared by pointer and
/// kept alive by the map entries, so a key can never be confused with another identity's.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    token: usize,
    op: Op,
}

enum Answer {
    Values(BTreeMap<String, SecretBytes>),
    Json(SecretJson),
    Type(String),
    Listing(Vec<Listed>),
}

type ReadFuture = Shared<BoxFuture<'static, Result<Arc<Answer>, ApiError>>>;

/// Reads under way (joined by identical ones) and, optionally, recent results.
#[derive(Default)]
struct Reads {
    inflight: HashMap<ReadKey, (Arc<CachedToken>, ReadFuture)>,
    recent: HashMap<ReadKey, (Arc<CachedToken>, Instant, Arc<Answer>)>,
}

/// Item types by identity (API URL and access id), then item; parsed once. `Err` holds an
/// `item_type` that cannot be mounted.
type Types = HashMap<String, HashMap<String, (Result<ItemKind, String>, Instant)>>;

/// The fetch stage, shared by every mount.
#[derive(Clone)]
pub struct Fetcher {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    options: FetchOptions,
    metrics: Arc<Metrics>,
    reads: Mutex<Reads>,
    types: Mutex<Types>,
    leases: lease::Leases,
    batches: batch::Batches,
}

/// A reference to one item by an object.
struct Ref<'a> {
    name: &'a str,
    version: Option<u32>,
    declared: Option<&'a ItemKind>,
    optional: bool,
}

impl Fetcher {
    pub fn new(client: Client, options: FetchOptions, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                batches: batch::Batches::new(options.batch_window),
                client,
                options,
                leases: lease::Leases::new(metrics.clone()),
                metrics,
                reads: Mutex::default(),
                types: Mutex::default(),
            }),
        }
    }

    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Fetches everything `want` needs with `token`: all of it, or an error.
    ///
    /// An item read as the type remembered for it that fails as if it had another type (it
    /// may have been deleted and created again) is not concluded on: its type is asked again
    /// and the fetch runs once more.
    pub async fn fetch(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        want: &Want<'_>,
        deadline: Deadline,
    ) -> Result<Fetched, FetchError> {
        let mut remembered = Vec::new();
        let error = match self
            .fetch_once(identity, token, want, deadline, &mut remembered)
            .await
        {
            Ok(fetched) => return Ok(fetched),
            Err(error) => error,
        };
        let doubtful: Vec<&String> = remembered
            .iter()
            .filter(|name| error.may_be_wrong_type(name))
            .collect();
        if doubtful.is_empty() {
            return Err(error);
        }
        for name in doubtful {
            tracing::debug!(item = %name, %error, "a read as the remembered item type failed; asking the type again");
            self.forget_type(identity, name);
        }
        self.fetch_once(identity, token, want, deadline, &mut Vec::new())
            .await
    }

    /// One fetch; `remembered` receives the items whose types came from the cache.
    async fn fetch_once(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        want: &Want<'_>,
        deadline: Deadline,
        remembered: &mut Vec<String>,
    ) -> Result<Fetched, FetchError> {
        let refs = references(want);
        let required = plan::required(&refs);
        let mut fetched = Fetched::default();

        // Types of undeclared items (unless another object declares the item's type) and
        // folder listings, concurrently.
        let first = plan::first_reads(&refs, want);
        for (name, kind) in first.declared_elsewhere {
            fetched.kinds.insert(name.to_owned(), kind);
        }
        let (undeclared, folders) = (first.describe, first.folders);
        // Known types in one look at the cache; the others are asked.
        let scope = type_scope(identity);
        let mut unknown = Vec::new();
        {
            let types = lock(&self.inner.types);
            let known = types.get(&scope);
            for name in undeclared {
                match known
                    .and_then(|items| items.get(name))
                    .filter(|(_, at)| at.elapsed() < TYPE_TTL)
                {
                    Some((kind, _)) => {
                        self.inner.metrics.cache_hit(CacheKind::ItemType);
                        let kind = usable(name, kind.clone())?;
                        fetched.kinds.insert(name.to_owned(), kind);
                        remembered.push(name.to_owned());
                    }
                    None => unknown.push(name),
                }
            }
        }
        let undeclared = unknown;
        let describes = try_join_all(
            undeclared
                .iter()
                .map(|name| self.item_type(identity, token, &scope, name, deadline)),
        );
        let listings = try_join_all(
            folders
                .iter()
                .map(|object| self.list_folder(identity, token, object, deadline)),
        );
        let (types, listings) = futures::try_join!(describes, listings)?;
        for (name, kind) in undeclared.iter().zip(types) {
            match kind {
                None if required.contains(name) => return Err(FetchError::missing_item(name)),
                None => {
                    tracing::info!(item = %name, "optional item does not exist; skipped");
                    fetched.absent.insert((*name).to_owned());
                }
                Some(kind) => {
                    fetched.kinds.insert((*name).to_owned(), kind);
                }
            }
        }
        let mut units: HashMap<Unit, bool> = HashMap::new();
        // `None`: an optional folder with nothing in it, which [`Fetched::folder`] reports.
        for (object, names) in folders.iter().zip(listings) {
            let Some(names) = names else { continue };
            for name in &names {
                let unit = Unit {
                    name: name.clone(),
                    version: None,
                    kind: ItemKind::Static,
                };
                units.insert(unit, false);
            }
            fetched.folders.insert(object.id(), names);
        }
        plan::add_units(&mut units, &refs, &required, |r| {
            if fetched.absent.contains(r.name) {
                return None;
            }
            r.declared.or_else(|| fetched.kinds.get(r.name)).cloned()
        });

        // The reads, concurrently: one batch per pinned version, one call per other item.
        let (batches, singles) = plan::group(&units);
        let optional_statics: BTreeSet<(String, Option<u32>)> = units
            .iter()
            .filter(|(u, optional)| u.kind == ItemKind::Static && **optional)
            .map(|(u, _)| (u.name.clone(), u.version))
            .collect();
        let statics = self.read_statics(identity, token, batches, &optional_statics, deadline);
        let others = try_join_all(singles.into_iter().map(|(unit, optional)| async move {
            match self.read_one(identity, token, unit, want, deadline).await {
                Ok(item) => Ok((unit.clone(), Some(item))),
                Err(FetchError::Api {
                    source: ApiError::NotFound { .. },
                    ..
                }) if optional => Ok((unit.clone(), None)),
                Err(e) => Err(e),
            }
        }));
        let ((values, gone), others) = futures::try_join!(statics, others)?;
        for ((name, version), value) in values {
            let item = Item {
                value,
                version: None,
                cert: None,
            };
            fetched.units.entry(name).or_default().push((
                version,
                ItemKind::Static,
                Arc::new(item),
            ));
        }
        for name in gone {
            tracing::info!(item = %name, "optional item does not exist; skipped");
            fetched.absent.insert(name);
        }
        for (unit, item) in others {
            match item {
                Some(item) => fetched.put(unit, item),
                None => {
                    tracing::info!(item = %unit.name, "optional item does not exist; skipped");
                    fetched.absent.insert(unit.name);
                }
            }
        }
        // A folder item missing between listing and reading leaves its folder.
        for names in fetched.folders.values_mut() {
            names.retain(|n| !fetched.absent.contains(n));
        }
        Ok(fetched)
    }

    /// The type of an undeclared item the cache does not know: asked once (shared by
    /// concurrent mounts) and remembered. `None`: the item does not exist.
    async fn item_type(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        scope: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<Option<ItemKind>, FetchError> {
        let op = Op::Describe {
            name: name.to_owned(),
        };
        let item_type = match self.read(identity, token, op, deadline).await {
            Ok(answer) => match &*answer {
                Answer::Type(t) => t.clone(),
                _ => return Err(unexpected("describe-item", name)),
            },
            Err(ApiError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(FetchError::api(e, [name])),
        };
        let kind = ItemKind::parse(&item_type).ok_or(item_type);
        {
            let mut types = lock(&self.inner.types);
            if types.values().map(HashMap::len).sum::<usize>() >= MAX_TYPES {
                types.clear();
            }
            types
                .entry(scope.to_owned())
                .or_default()
                .insert(name.to_owned(), (kind.clone(), Instant::now()));
        }
        usable(name, kind).map(Some)
    }

    /// Forgets an item's type, after a read that says it is not what we thought.
    fn forget_type(&self, identity: &Identity, name: &str) {
        if let Some(items) = lock(&self.inner.types).get_mut(&type_scope(identity)) {
            items.remove(name);
        }
    }

    /// The static secrets of a folder object, sorted; `None` when an optional folder is empty
    /// or missing.
    async fn list_folder(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        object: &ObjectSpec,
        deadline: Deadline,
    ) -> Result<Option<Vec<String>>, FetchError> {
        let Shape::Folder(folder) = &object.shape else {
            return Ok(Some(Vec::new()));
        };
        let op = Op::List {
            path: object.secret_path.clone(),
            filter: folder.filter.clone(),
            recursive: folder.recursive,
            statics: true,
            tag: None,
        };
        let listing = match self.read(identity, token, op, deadline).await {
            Ok(answer) => match &*answer {
                Answer::Listing(items) => items.clone(),
                _ => return Err(unexpected("list-items", &object.secret_path)),
            },
            Err(ApiError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(FetchError::api(e, [object.secret_path.as_str()])),
        };
        // Checked here too: servers differ on recursion, and a listing is not trusted to stay
        // inside the folder.
        let prefix = format!("{}/", object.secret_path.trim_end_matches('/'));
        let mut names: Vec<String> = listing
            .into_iter()
            .filter(|item| {
                item.item_type.is_empty()
                    || ItemKind::parse(&item.item_type) == Some(ItemKind::Static)
            })
            .map(|item| item.name)
            .filter(|name| {
                name.strip_prefix(&prefix).is_some_and(|rest| {
                    !rest.is_empty() && (folder.recursive || !rest.contains('/'))
                })
            })
            .filter(|name| folder.filter.as_deref().is_none_or(|f| name.contains(f)))
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            if object.optional {
                tracing::info!(folder = %object.secret_path, "optional folder has no items; skipped");
                return Ok(None);
            }
            let filter = folder
                .filter
                .as_deref()
                .map(|f| format!(" matching filter {f:?}"))
                .unwrap_or_default();
            return Err(FetchError::Missing {
                what: "folder",
                name: object.secret_path.clone(),
                problem: format!(
                    "has no static secrets{filter} that this identity may list: check the path, or set optional: true"
                ),
            });
        }
        Ok(Some(names))
    }

    /// Every item under the folder `path` (recursively) that Akeyless lists for this identity,
    /// optionally only those tagged `tag`: for ExternalSecrets' `dataFrom.find`. Shared by
    /// concurrent identical listings; a missing folder lists nothing.
    pub async fn find(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        path: &str,
        tag: Option<&str>,
        deadline: Deadline,
    ) -> Result<Vec<Found>, FetchError> {
        let folder = path.trim_end_matches('/');
        let op = Op::List {
            path: if folder.is_empty() {
                "/".to_owned()
            } else {
                folder.to_owned()
            },
            filter: None,
            recursive: true,
            statics: false,
            tag: tag.map(str::to_owned),
        };
        let listing = match self.read(identity, token, op, deadline).await {
            Ok(answer) => match &*answer {
                Answer::Listing(items) => items.clone(),
                _ => return Err(unexpected("list-items", path)),
            },
            Err(ApiError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(FetchError::api(e, [path])),
        };
        // A listing is not trusted to stay inside the folder.
        let prefix = format!("{folder}/");
        let mut found: Vec<Found> = listing
            .into_iter()
            .filter(|item| item.name.starts_with(&prefix))
            .map(|item| Found {
                kind: match ItemKind::parse(&item.item_type) {
                    Some(ItemKind::Pki(_) | ItemKind::Ssh(_)) => None,
                    Some(kind) => Some(kind),
                    None if item.item_type.is_empty() => Some(ItemKind::Static),
                    None => None,
                },
                name: item.name,
                tags: item.tags,
            })
            .filter(|item| item.kind.is_some())
            .collect();
        found.sort_by(|a, b| a.name.cmp(&b.name));
        found.dedup_by(|a, b| a.name == b.name);
        Ok(found)
    }

    /// Every static batch; an optional item the server says is missing is dropped and the
    /// batch read again without it. Returns the values and the dropped items.
    async fn read_statics(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        mut batches: BTreeMap<Option<u32>, BTreeSet<String>>,
        optional: &BTreeSet<(String, Option<u32>)>,
        deadline: Deadline,
    ) -> Result<(Vec<((String, Option<u32>), SecretBytes)>, Vec<String>), FetchError> {
        let mut gone = Vec::new();
        loop {
            let calls = batches.iter().map(|(version, names)| async move {
                let op = Op::Values {
                    version: *version,
                    names: names.iter().cloned().collect(),
                };
                let answer = self.read(identity, token, op, deadline).await;
                (*version, names, answer)
            });
            let mut values = Vec::new();
            let mut retry = false;
            for (version, names, answer) in futures::future::join_all(calls).await {
                match answer {
                    Ok(answer) => {
                        let Answer::Values(map) = &*answer else {
                            return Err(unexpected("get-secret-value", "a batch"));
                        };
                        // A name the answer leaves out does not exist (whether Akeyless
                        // answers a batch with a missing name by 404 or by leaving it out is
                        // not documented).
                        for name in names.iter().filter(|n| !map.contains_key(*n)) {
                            if !optional.contains(&(name.clone(), version)) {
                                return Err(FetchError::missing_item(name));
                            }
                            gone.push((name.clone(), version));
                        }
                        values.extend(
                            map.iter()
                                .map(|(name, value)| ((name.clone(), version), value.clone())),
                        );
                    }
                    Err(ApiError::NotFound { message, .. })
                        if let Some(missing) = names
                            .iter()
                            .filter(|n| message.contains(n.as_str()))
                            .max_by_key(|n| n.len())
                            .filter(|n| optional.contains(&((*n).clone(), version))) =>
                    {
                        gone.push((missing.clone(), version));
                        retry = true;
                    }
                    Err(e) => {
                        if let ApiError::Rejected { .. } = e {
                            for name in names {
                                self.forget_type(identity, name);
                            }
                        }
                        return Err(FetchError::api(e, names.iter().map(String::as_str)));
                    }
                }
            }
            if !retry {
                return Ok((values, gone.into_iter().map(|(n, _)| n).collect()));
            }
            for (name, version) in &gone {
                if let Some(names) = batches.get_mut(version) {
                    names.remove(name);
                    if names.is_empty() {
                        batches.remove(version);
                    }
                }
            }
        }
    }

    /// One non-static unit.
    async fn read_one(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        unit: &Unit,
        want: &Want<'_>,
        deadline: Deadline,
    ) -> Result<Arc<Item>, FetchError> {
        let name = unit.name.as_str();
        let op = match &unit.kind {
            ItemKind::Rotated => Op::Rotated {
                name: name.to_owned(),
                version: unit.version,
            },
            ItemKind::Certificate => Op::Certificate {
                name: name.to_owned(),
                version: unit.version,
            },
            ItemKind::Static => {
                return Err(unexpected("get-secret-value", name));
            }
            ItemKind::Dynamic(_) | ItemKind::Pki(_) | ItemKind::Ssh(_) => {
                let base = identity.base.clone();
                let client = identity.client(&self.inner.client).clone();
                let api_token = token.token.clone();
                let unit_owned = unit.clone();
                let bound = self.inner.options.mount_timeout;
                let issue = move || {
                    async move {
                        issue::issue(
                            &client,
                            &base,
                            &api_token,
                            &unit_owned,
                            Deadline::after(bound),
                        )
                        .await
                    }
                    .boxed()
                };
                let scope = want.scope.as_ref().map(|s| s.for_identity(identity));
                return self
                    .inner
                    .leases
                    .get(scope, unit, issue, deadline)
                    .await
                    .inspect_err(|e| {
                        if let FetchError::Api {
                            source: ApiError::Rejected { .. },
                            ..
                        } = e
                        {
                            self.forget_type(identity, name);
                        }
                    });
            }
        };
        let answer = match self.read(identity, token, op, deadline).await {
            Ok(answer) => answer,
            Err(e) => {
                if let ApiError::Rejected { .. } = e {
                    self.forget_type(identity, name);
                }
                return Err(FetchError::api(e, [name]));
            }
        };
        let Answer::Json(SecretJson(json)) = &*answer else {
            return Err(unexpected(unit.kind.name(), name));
        };
        Ok(Arc::new(match unit.kind {
            ItemKind::Certificate => {
                let text = |field: &str| {
                    json.get(field)
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default()
                };
                let key = text("private_key_pem");
                Item {
                    value: SecretBytes::new(json.to_string().into_bytes()),
                    version: None,
                    cert: Some(CertPem {
                        certificates: text("certificate_pem").to_owned(),
                        key: (!key.trim().is_empty()).then(|| SecretString::new(key)),
                    }),
                }
            }
            // The Go provider wrote rotated values as indented JSON; so do we.
            _ => Item {
                value: SecretBytes::new(
                    serde_json::to_vec_pretty(json)
                        .unwrap_or_else(|_| json.to_string().into_bytes()),
                ),
                version: None,
                cert: None,
            },
        }))
    }

    /// One read, shared: a recent identical result answers it (when the result cache is on),
    /// an identical read under way is joined, and otherwise a new read starts in its own task,
    /// so the mount that started it may give up without failing the others.
    async fn read(
        &self,
        identity: &Identity,
        token: &Arc<CachedToken>,
        op: Op,
        deadline: Deadline,
    ) -> Result<Arc<Answer>, ApiError> {
        let inner = &self.inner;
        let ttl = inner.options.result_cache_ttl;
        let command = op.command();
        let key = ReadKey {
            token: Arc::as_ptr(token) as usize,
            op,
        };
        let flight = {
            let mut reads = lock(&inner.reads);
            if !ttl.is_zero()
                && let Some((_, at, answer)) = reads.recent.get(&key)
                && at.elapsed() < ttl
            {
                inner.metrics.cache_hit(CacheKind::Result);
                return Ok(answer.clone());
            }
            if let Some((_, flight)) = reads.inflight.get(&key) {
                inner.metrics.dedup_joins.inc();
                flight.clone()
            } else {
                let client = identity.client(&inner.client).clone();
                let flight = self.start_read(client, identity.base.clone(), token, key.clone());
                reads.inflight.insert(key, (token.clone(), flight.clone()));
                flight
            }
        };
        match tokio::time::timeout_at(deadline.instant(), flight).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::DeadlineExceeded {
                command: command.to_owned(),
            }),
        }
    }

    fn start_read(
        &self,
        client: Client,
        base: Url,
        token: &Arc<CachedToken>,
        key: ReadKey,
    ) -> ReadFuture {
        let inner = self.inner.clone();
        let token = token.clone();
        let command = key.op.command();
        let task = tokio::spawn(async move {
            // Bounded by the provider's own limit, not by the mount that happened to start it.
            let deadline = Deadline::after(inner.options.mount_timeout);
            let result = execute(&client, &inner.batches, &base, &token, &key.op, deadline)
                .await
                .map(Arc::new);
            let mut reads = lock(&inner.reads);
            reads.inflight.remove(&key);
            let ttl = inner.options.result_cache_ttl;
            if let Ok(answer) = &result
                && !ttl.is_zero()
            {
                // Drop expired results as the cache grows, so values do not outlive their use.
                if reads.recent.len() >= PRUNE_CACHED_RESULTS {
                    reads.recent.retain(|_, (_, at, _)| at.elapsed() < ttl);
                }
                if reads.recent.len() >= MAX_CACHED_RESULTS {
                    reads.recent.clear();
                }
                reads
                    .recent
                    .insert(key, (token, Instant::now(), answer.clone()));
            }
            result
        });
        async move {
            task.await.unwrap_or_else(|_| {
                Err(ApiError::InvalidResponse {
                    command: command.to_owned(),
                    reason: "the read task failed unexpectedly".to_owned(),
                })
            })
        }
        .boxed()
        .shared()
    }
}

async fn execute(
    client: &Client,
    batches: &batch::Batches,
    base: &Url,
    cached: &Arc<CachedToken>,
    op: &Op,
    deadline: Deadline,
) -> Result<Answer, ApiError> {
    let token = &cached.token;
    Ok(match op {
        // Merged with other fetches' static reads of the same token and version.
        Op::Values { version, names } => Answer::Values(
            batches
                .read(
                    batch::Read {
                        client,
                        base,
                        token,
                        token_id: Arc::as_ptr(cached) as usize,
                        names,
                        version: *version,
                    },
                    deadline,
                )
                .await?,
        ),
        Op::Rotated { name, version } => Answer::Json(
            client
                .get_rotated_secret_value(base, token, name, *version, deadline)
                .await?,
        ),
        Op::Certificate { name, version } => Answer::Json(
            client
                .get_certificate_value(base, token, name, *version, deadline)
                .await?,
        ),
        Op::Describe { name } => Answer::Type(
            client
                .describe_item_type(base, token, name, deadline)
                .await?,
        ),
        Op::List {
            path,
            filter,
            recursive,
            statics,
            tag,
        } => {
            let query = ListQuery {
                path: path.clone(),
                filter: filter.clone(),
                tag: tag.clone(),
                recursive: *recursive,
                types: if *statics {
                    vec!["static-secret"]
                } else {
                    vec![
                        "static-secret",
                        "dynamic-secret",
                        "rotated-secret",
                        "certificate",
                    ]
                },
                max_pages: MAX_LIST_PAGES,
            };
            Answer::Listing(client.list_items(base, token, &query, deadline).await?)
        }
    })
}

/// Every item the objects (and the Secrets) read, except folders' items.
fn references<'a>(want: &'a Want<'a>) -> Vec<Ref<'a>> {
    let mut refs = Vec::new();
    for object in want.objects {
        match &object.shape {
            Shape::Folder(_) => {}
            Shape::Template(t) if !t.keys.is_empty() => {
                refs.extend(t.keys.values().map(|k| Ref {
                    name: &k.secret_path,
                    version: k.version,
                    declared: k.kind.as_ref(),
                    optional: object.optional,
                }));
            }
            _ => refs.push(Ref {
                name: &object.secret_path,
                version: object.version,
                declared: object.kind.as_ref(),
                optional: object.optional,
            }),
        }
    }
    refs.extend(want.extra.iter().map(|extra| Ref {
        name: &extra.item.name,
        version: extra.item.version,
        declared: extra.kind.as_ref(),
        optional: extra.optional,
    }));
    refs
}

/// An item type an object without `type` can be mounted as.
fn usable(name: &str, kind: Result<ItemKind, String>) -> Result<ItemKind, FetchError> {
    let problem = match kind {
        Ok(ItemKind::Pki(_)) => {
            "is a PKI certificate issuer: set type: pki and commonName on its object".to_owned()
        }
        Ok(ItemKind::Ssh(_)) => {
            "is an SSH certificate issuer: set type: ssh, username and publicKey on its object"
                .to_owned()
        }
        Ok(kind) => return Ok(kind),
        Err(item_type) => format!(
            "has item type {item_type:?}, which cannot be mounted (types: {})",
            ItemKind::NAMES
        ),
    };
    Err(FetchError::Item {
        item: name.to_owned(),
        problem,
    })
}

/// Whose item types these are: types are not secret, but one identity's knowledge is not
/// another's.
fn type_scope(identity: &Identity) -> String {
    format!("{}\n{}", identity.endpoint(), identity.access_id)
}

fn unexpected(command: &str, item: &str) -> FetchError {
    FetchError::Item {
        item: item.to_owned(),
        problem: format!("the {command} read gave an unexpected answer (a bug)"),
    }
}

/// A poisoned lock only means another request panicked; the maps stay consistent.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
