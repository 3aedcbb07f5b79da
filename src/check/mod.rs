//! `akeyless-csi-provider check`: SecretProviderClass manifests checked offline, the way the
//! provider will read them.
//!
//! Each SPC document goes through the provider's own code: the `MountRequest` the driver builds
//! ([`crate::mount_cli::Spc::request`]), [`params::parse`], [`crate::sync::mapping::parse`], the
//! identity resolution of [`auth`], and for `--plan` the call planning of [`crate::fetch::plan`].
//! So a message here is the message a mount would fail with, and the two never disagree. What
//! only the manifest shows (unknown or non-string parameters, the driver's `secretObjects`) is
//! checked here. Nothing is sent anywhere.

mod lines;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_norway::Value;

use crate::auth::{self, Need};
use crate::cli::{CheckArgs, CheckOutput, DEFAULT_AKEYLESS_URL};
use crate::fetch::Want;
use crate::fetch::plan::{BY_TYPE, Call, calls};
use crate::mount_cli::{Metadata, PodIdentity, Spc, SpcSpec};
use crate::params::{self, AccessType, MountConfig, Shape, keys};
use crate::sync::{self, mapping};
use lines::{Doc, Lines};

/// The API group of SecretProviderClasses.
const GROUP: &str = "secrets-store.csi.x-k8s.io/";
/// The pod the check mounts as: only its namespace matters (the SPC's).
const POD_NAME: &str = "check";
/// Stands in for a credential the nodePublishSecretRef Secret holds; never sent anywhere.
const PLACEHOLDER: &str = "u-placeholder-of-the-nodePublishSecretRef";

/// Everything `check` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: Vec<FileReport>,
}

/// One input file (or stdin, `-`).
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub file: String,
    /// Why the file could not be read as YAML; the documents before the problem are kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
    pub documents: Vec<DocumentReport>,
}

/// One document (or one item of a `kind: List`).
#[derive(Debug, Serialize)]
pub struct DocumentReport {
    /// 1-based, in the file.
    pub document: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub kind: String,
    /// `namespace/name`, or `name`.
    pub name: String,
    /// Why it was not checked: another kind, or an SPC of another provider.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    pub findings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Plan>,
}

/// One problem (the mount would fail) or note (something the cluster or the provider's flags
/// must provide).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// The manifest field, e.g. `spec.parameters.objects[2]`.
    pub field: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Note,
}

/// What a first mount of an SPC does, by a pod in its namespace on a provider that has just
/// started (no type remembered, no lease to reuse).
#[derive(Debug, Serialize)]
pub struct Plan {
    /// The Akeyless API: `akeylessGatewayURL`, else the provider's `--akeyless-url`.
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityPlan>,
    pub files: Vec<PlannedFile>,
    /// Kubernetes Secrets written (`secretSync`, with `--sync-secrets`).
    pub secrets: Vec<String>,
    /// The Akeyless calls after the login, in order.
    pub calls: Vec<Call>,
}

#[derive(Debug, Serialize)]
pub struct IdentityPlan {
    pub access_type: String,
    pub access_id: String,
    /// What proves it: "access key", "aws irsa", ...
    pub proof: String,
    /// Whether the mount logs in with `/auth` (once; the token is then cached).
    pub login: bool,
}

#[derive(Debug, Serialize)]
pub struct PlannedFile {
    /// The path in the volume; a folder's directory ends in `/`.
    pub path: String,
    pub mode: String,
    pub object: String,
}

impl Report {
    /// 2 when an input could not be read, else 1 when any problem was found, else 0.
    pub fn exit_code(&self) -> i32 {
        if self.files.iter().any(|f| f.unreadable.is_some()) {
            2
        } else if self.findings().any(|f| f.severity == Severity::Error) {
            1
        } else {
            0
        }
    }

    fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.files
            .iter()
            .flat_map(|f| &f.documents)
            .flat_map(|d| &d.findings)
    }

    /// The report for people: one line per finding (`file:line: severity: SPC: message`), the
    /// plans when asked, then a summary.
    pub fn text(&self, verbose: bool) -> String {
        let mut out = String::new();
        let mut checked = 0;
        let mut skipped = 0;
        for file in &self.files {
            for doc in &file.documents {
                let at = |line: Option<usize>| match line.or(doc.line) {
                    Some(line) => format!("{}:{line}", file.file),
                    None => format!("{} (document {})", file.file, doc.document),
                };
                let what = format!("{} {}", doc.kind, doc.name);
                if let Some(why) = &doc.skipped {
                    skipped += 1;
                    if verbose {
                        out.push_str(&format!("{}: skipped: {what}: {why}\n", at(None)));
                    }
                    continue;
                }
                checked += 1;
                for f in &doc.findings {
                    let severity = match f.severity {
                        Severity::Error => "error",
                        Severity::Note => "note",
                    };
                    out.push_str(&format!(
                        "{}: {severity}: {what}: {}\n",
                        at(f.line),
                        f.message
                    ));
                }
                if verbose && !doc.findings.iter().any(|f| f.severity == Severity::Error) {
                    out.push_str(&format!("{}: ok: {what}\n", at(None)));
                }
                if let Some(plan) = &doc.plan {
                    out.push_str(&plan_text(&at(None), &what, plan));
                }
            }
            if let Some(why) = &file.unreadable {
                out.push_str(&format!("{}: unreadable: {why}\n", file.file));
            }
        }
        let count = |severity| self.findings().filter(|f| f.severity == severity).count();
        out.push_str(&format!(
            "{} checked in {}: {}, {}; {} skipped\n",
            plural(checked, "SecretProviderClass", "SecretProviderClasses"),
            plural(self.files.len(), "file", "files"),
            plural(count(Severity::Error), "problem", "problems"),
            plural(count(Severity::Note), "note", "notes"),
            plural(skipped, "other document", "other documents"),
        ));
        out
    }
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn plan_text(at: &str, what: &str, plan: &Plan) -> String {
    let mut out = format!("{at}: plan: {what}: a pod's first mount on a provider just started\n");
    match &plan.identity {
        Some(id) => out.push_str(&format!(
            "  identity  {} {} at {} ({}{})\n",
            id.access_type,
            id.access_id,
            plan.url,
            id.proof,
            if id.login {
                "; one /auth, then the token is cached"
            } else {
                "; no login"
            }
        )),
        None => out.push_str(&format!(
            "  identity  the provider's own (AKEYLESS_ACCESS_ID) at {}\n",
            plan.url
        )),
    }
    out.push_str("  files\n");
    for file in &plan.files {
        out.push_str(&format!(
            "    {}  {:<28} {}\n",
            file.mode, file.path, file.object
        ));
    }
    if !plan.secrets.is_empty() {
        out.push_str(&format!("  Secrets   {}\n", plan.secrets.join(", ")));
    }
    out.push_str(&format!("  Akeyless calls ({})\n", plan.calls.len()));
    for call in &plan.calls {
        let version = call
            .version
            .map(|v| format!(" version {v}"))
            .unwrap_or_default();
        let command = match call.command {
            BY_TYPE => "then, by type:".to_owned(),
            command => format!("/{command}"),
        };
        out.push_str(&format!(
            "    {command:<27} {}{version}  ({})\n",
            call.items.join(", "),
            call.why
        ));
    }
    out
}

/// The `check` command; returns the exit code.
pub fn run(args: &CheckArgs) -> i32 {
    let report = check_files(&args.files, args.plan);
    match args.output {
        CheckOutput::Text => print!("{}", report.text(args.verbose)),
        CheckOutput::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("cannot write the report: {e}");
                return 2;
            }
        },
    }
    report.exit_code()
}

/// Checks files (`-` is stdin, read once).
pub fn check_files(paths: &[impl AsRef<Path>], plan: bool) -> Report {
    let mut report = Report::default();
    for path in paths {
        let path = path.as_ref();
        let (name, text) = if path == Path::new("-") {
            let mut text = String::new();
            let read = std::io::stdin().read_to_string(&mut text).map(|_| text);
            ("<stdin>".to_owned(), read)
        } else {
            (path.display().to_string(), std::fs::read_to_string(path))
        };
        report.files.push(match text {
            Ok(text) => check_text(&name, &text, plan),
            Err(e) => FileReport {
                file: name,
                unreadable: Some(format!("cannot read it: {e}")),
                documents: Vec::new(),
            },
        });
    }
    report
}

/// Checks one YAML stream.
pub fn check_text(file: &str, text: &str, plan: bool) -> FileReport {
    let lines = Lines::of(text);
    let mut report = FileReport {
        file: file.to_owned(),
        unreadable: None,
        documents: Vec::new(),
    };
    for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value = match Value::deserialize(doc) {
            Ok(value) => value,
            Err(e) => {
                report.unreadable = Some(format!("not YAML: {e}"));
                break;
            }
        };
        let at = lines.doc(i);
        // `kubectl get -o yaml` wraps objects in a List.
        let items: Vec<(String, &Value)> = match value.get("items") {
            Some(Value::Sequence(items)) if kind_of(&value) == "List" => items
                .iter()
                .enumerate()
                .map(|(j, item)| (format!("items[{j}]"), item))
                .collect(),
            _ if value.is_null() => Vec::new(),
            _ => vec![(String::new(), &value)],
        };
        for (prefix, value) in items {
            let document = report.documents.len() + 1;
            report.documents.push(check_document(
                document,
                Locator { doc: at, prefix },
                value,
                plan,
            ));
        }
    }
    report
}

fn kind_of(value: &Value) -> &str {
    value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// Lines of one document's fields.
struct Locator<'a> {
    doc: Option<&'a Doc>,
    /// The document's path inside its YAML document (`items[2]` in a List).
    prefix: String,
}

impl Locator<'_> {
    fn node(&self, field: &str) -> Option<lines::Node> {
        let path = match (self.prefix.as_str(), field) {
            ("", field) => field.to_owned(),
            (prefix, "") => prefix.to_owned(),
            (prefix, field) => format!("{prefix}.{field}"),
        };
        self.doc?.node(&path)
    }

    /// The line of `field`, else of the closest enclosing field that has one.
    fn line(&self, field: &str) -> Option<usize> {
        let mut field = field;
        loop {
            if let Some(node) = self.node(field) {
                return Some(node.line);
            }
            field = match field.rfind(['.', '[']) {
                Some(at) => &field[..at],
                None if !field.is_empty() => "",
                None => return self.doc.map(|d| d.start),
            };
        }
    }

    fn finding(&self, severity: Severity, field: &str, message: String) -> Finding {
        Finding {
            severity,
            field: field.to_owned(),
            line: self.line(field),
            message,
        }
    }

    /// A problem the provider reported about a parameter, placed by the label it starts with:
    /// `objects[2] (/a): …`, `secretSync[0] (name): …`, `akeylessAccessType: …`, or a YAML
    /// error's `line N` inside a parameter.
    fn provider_problem(&self, parameter: &str, text: Option<&str>, message: String) -> Finding {
        let (field, inner) = place(parameter, &message);
        let line = inner
            .and_then(|inner| match inner {
                Inner::Path(path) => {
                    let node = self.node(&format!("spec.parameters.{parameter}"))?;
                    let list = Lines::of(text?);
                    let entry = list.doc(0)?.node(&path)?;
                    node.inner_line(entry.line)
                }
                Inner::Line(n) => self
                    .node(&format!("spec.parameters.{parameter}"))?
                    .inner_line(n),
            })
            .or_else(|| self.line(&field));
        Finding {
            severity: Severity::Error,
            field,
            line,
            message,
        }
    }
}

/// Where inside a parameter's YAML a problem is.
enum Inner {
    /// A node path, e.g. `[2]`.
    Path(String),
    /// A line of the parameter's text (1-based).
    Line(usize),
}

/// The manifest field a provider message is about, and where inside the parameter's text.
fn place(parameter: &str, message: &str) -> (String, Option<Inner>) {
    if parameter.is_empty() {
        return ("spec.parameters".to_owned(), None);
    }
    let base = format!("spec.parameters.{parameter}");
    // `objects[2] (/a): …`, `secretSync[0] (x): …`, `objects: array[1]: …`
    let labelled = message
        .strip_prefix(parameter)
        .and_then(|rest| {
            rest.strip_prefix('[')
                .or_else(|| rest.strip_prefix(": array["))
        })
        .and_then(|rest| rest.split(']').next())
        .and_then(|n| n.parse::<usize>().ok());
    if let Some(i) = labelled {
        let path = if message.starts_with(&format!("{parameter}: array[")) {
            format!("array[{i}]")
        } else {
            format!("[{i}]")
        };
        return (
            format!("{base}{}", &path[path.find('[').unwrap_or(0)..]),
            Some(Inner::Path(path)),
        );
    }
    let line = message
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<usize>().ok());
    (base, line.map(Inner::Line))
}

fn check_document(document: usize, at: Locator<'_>, value: &Value, plan: bool) -> DocumentReport {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    let metadata = value.get("metadata");
    let namespace = text(metadata.and_then(|m| m.get("namespace")));
    let name = text(metadata.and_then(|m| m.get("name")));
    let mut report = DocumentReport {
        document,
        line: at.line(""),
        kind: match kind_of(value) {
            "" => "(no kind)".to_owned(),
            kind => kind.to_owned(),
        },
        name: match (namespace.as_str(), name.as_str()) {
            (_, "") => "(unnamed)".to_owned(),
            ("", name) => name.to_owned(),
            (ns, name) => format!("{ns}/{name}"),
        },
        skipped: None,
        findings: Vec::new(),
        plan: None,
    };
    let api_version = text(value.get("apiVersion"));
    if kind_of(value) != "SecretProviderClass" || !api_version.starts_with(GROUP) {
        report.skipped = Some("not a SecretProviderClass".to_owned());
        return report;
    }
    let provider = text(value.get("spec").and_then(|s| s.get("provider")));
    if provider != "akeyless" {
        report.skipped = Some(match provider.as_str() {
            "" => "spec.provider is not set, so no provider serves it".to_owned(),
            other => format!("a SecretProviderClass for provider {other:?}"),
        });
        return report;
    }
    let mut spc = SpcCheck {
        at: &at,
        findings: Vec::new(),
    };
    report.plan = spc.run(value, &namespace, &name, plan);
    report.findings = spc.findings;
    report
}

/// The checks of one SPC of provider `akeyless`.
struct SpcCheck<'a> {
    at: &'a Locator<'a>,
    findings: Vec<Finding>,
}

impl SpcCheck<'_> {
    fn error(&mut self, field: &str, message: String) {
        self.findings
            .push(self.at.finding(Severity::Error, field, message));
    }

    fn note(&mut self, field: &str, message: String) {
        self.findings
            .push(self.at.finding(Severity::Note, field, message));
    }

    fn run(&mut self, value: &Value, namespace: &str, name: &str, plan: bool) -> Option<Plan> {
        if name.is_empty() {
            self.error(
                "metadata.name",
                "metadata.name: missing; the API server refuses a SecretProviderClass without one"
                    .to_owned(),
            );
        }
        if let Some(version) = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .filter(|v| v.ends_with("/v1alpha1"))
        {
            self.note(
                "apiVersion",
                format!("apiVersion: {version} is deprecated; use secrets-store.csi.x-k8s.io/v1"),
            );
        }
        let spec = value.get("spec").and_then(Value::as_mapping);
        for key in spec.into_iter().flat_map(|s| s.keys()) {
            let key = key.as_str().unwrap_or("?");
            if !["provider", "parameters", "secretObjects"].contains(&key) {
                self.error(
                    &format!("spec.{key}"),
                    format!("spec.{key}: unknown field; a SecretProviderClass's spec has provider, parameters and secretObjects"),
                );
            }
        }
        let parameters = self.parameters(value.get("spec").and_then(|s| s.get("parameters")));
        let spc = Spc {
            metadata: Metadata {
                name: Some(name.to_owned()).filter(|n| !n.is_empty()),
                namespace: Some(namespace.to_owned()).filter(|n| !n.is_empty()),
            },
            spec: SpcSpec {
                provider: Some("akeyless".to_owned()),
                parameters,
            },
        };
        let config = self.provider_parse(&spc);
        let namespace = match namespace {
            "" => "default",
            ns => ns,
        };
        let mapping = self.secret_sync(&spc.spec.parameters, namespace);
        let config = config?;
        self.auth_parameters(&spc.spec.parameters, &config);
        let identity = self.identity(&config);
        self.secret_objects(value, &config);
        plan.then(|| planned(&config, identity, mapping.as_ref()))
    }

    /// `spec.parameters` as the driver passes them: strings only; unknown names refused.
    fn parameters(&mut self, raw: Option<&Value>) -> BTreeMap<String, String> {
        let mut parameters = BTreeMap::new();
        let Some(raw) = raw else {
            return parameters;
        };
        let Some(map) = raw.as_mapping() else {
            self.error(
                "spec.parameters",
                "spec.parameters: not a map of names to strings".to_owned(),
            );
            return parameters;
        };
        let known: Vec<&str> = keys::SPC_PARAMETERS
            .iter()
            .chain(&[sync::SECRET_SYNC, sync::FAILURE_POLICY])
            .copied()
            .collect();
        for (key, value) in map {
            let Some(key) = key.as_str() else {
                self.error(
                    "spec.parameters",
                    "spec.parameters: every parameter name must be a string".to_owned(),
                );
                continue;
            };
            let field = format!("spec.parameters.{key}");
            match value {
                Value::String(text) => {
                    parameters.insert(key.to_owned(), text.clone());
                }
                other => {
                    let what = match other {
                        Value::Number(_) => "a number",
                        Value::Bool(_) => "a boolean",
                        Value::Null => "empty (null)",
                        Value::Sequence(_) => "a list",
                        _ => "a map",
                    };
                    self.error(
                        &field,
                        format!("{key}: is {what}; every SecretProviderClass parameter must be a string: quote it, or write YAML as a block (|)"),
                    );
                }
            }
            if keys::IGNORED.contains(&key) {
                self.note(
                    &field,
                    format!("{key}: ignored (the Go provider never used it either); it can go"),
                );
            } else if !known.contains(&key) {
                let hint = known
                    .iter()
                    .map(|k| {
                        (
                            strsim::jaro_winkler(&key.to_lowercase(), &k.to_lowercase()),
                            k,
                        )
                    })
                    .filter(|(score, _)| *score > 0.85)
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .map(|(_, k)| format!(": did you mean {k}?"))
                    .unwrap_or_else(|| {
                        "; check its spelling (README, \"SecretProviderClass reference\")"
                            .to_owned()
                    });
                self.error(
                    &field,
                    format!("{key}: unknown parameter, which the provider ignores{hint}"),
                );
            }
        }
        parameters
    }

    /// The request the driver would send, parsed by the provider's parser. The credentials of
    /// the nodePublishSecretRef Secret are stood in for (the check cannot see the Secret).
    fn provider_parse(&mut self, spc: &Spc) -> Option<MountConfig> {
        let parameters = &spc.spec.parameters;
        let get = |key: &str| {
            parameters
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let mut secrets = BTreeMap::new();
        if get(keys::ACCESS_ID).is_some() {
            // As the provider decides: an unset (or unknown) type is an access key.
            let needed = match get(keys::ACCESS_TYPE).and_then(AccessType::parse) {
                None | Some(AccessType::AccessKey) => Some(keys::ACCESS_KEY),
                Some(AccessType::UniversalIdentity) => Some(keys::UID_TOKEN),
                _ => None,
            };
            if let Some(key) = needed {
                if get(key).is_some() {
                    self.note(
                        &format!("spec.parameters.{key}"),
                        format!("{key}: a credential in the SecretProviderClass can be read by anyone who may read the SecretProviderClass; keep it in the Secret named by the volume's nodePublishSecretRef"),
                    );
                } else {
                    secrets.insert(key.to_owned(), PLACEHOLDER.to_owned());
                    self.note(
                        &format!("spec.parameters.{}", keys::ACCESS_ID),
                        format!("{key}: the pod's volume must name a Secret holding it under key {key} (nodePublishSecretRef); the check assumes it does"),
                    );
                }
            }
        }
        let pod = PodIdentity {
            namespace: None,
            name: POD_NAME.to_owned(),
            uid: "00000000-0000-0000-0000-000000000000".to_owned(),
            service_account: "default".to_owned(),
        };
        let request = match spc.request(&pod, &secrets, None, &BTreeMap::new()) {
            Ok(request) => request,
            Err(why) => {
                self.error("spec.parameters", why);
                return None;
            }
        };
        match params::parse(&request) {
            Ok(config) => Some(config),
            Err(e) => {
                for problem in e.problems {
                    let parameter = parameter_of(&problem);
                    let text = parameters.get(parameter).map(String::as_str);
                    self.findings
                        .push(self.at.provider_problem(parameter, text, problem));
                }
                None
            }
        }
    }

    /// `secretSync`, parsed as the provider parses it.
    fn secret_sync(
        &mut self,
        parameters: &BTreeMap<String, String>,
        namespace: &str,
    ) -> Option<mapping::Mapping> {
        let text = parameters.get(sync::SECRET_SYNC);
        let policy = parameters.get(sync::FAILURE_POLICY);
        if text.is_none() && policy.is_none() {
            return None;
        }
        self.note(
            &format!("spec.parameters.{}", sync::SECRET_SYNC),
            format!("{}: the provider mirrors into Kubernetes Secrets only with {} and its RBAC (deploy/overlays/sync); without it the mount fails", sync::SECRET_SYNC, sync::FLAG),
        );
        let Some(text) = text else {
            self.note(
                &format!("spec.parameters.{}", sync::FAILURE_POLICY),
                format!(
                    "{}: does nothing without {}",
                    sync::FAILURE_POLICY,
                    sync::SECRET_SYNC
                ),
            );
            return None;
        };
        match mapping::parse(text, policy.map(String::as_str), namespace) {
            Ok(mapping) => Some(mapping),
            Err(mapping::MappingError(problems)) => {
                for problem in problems {
                    let parameter = if problem.starts_with(sync::FAILURE_POLICY) {
                        sync::FAILURE_POLICY
                    } else {
                        sync::SECRET_SYNC
                    };
                    self.findings
                        .push(self.at.provider_problem(parameter, Some(text), problem));
                }
                None
            }
        }
    }

    /// Parameters of another access type than the one in effect, which the provider ignores:
    /// left from a copy, or the wrong `akeylessAccessType`.
    fn auth_parameters(&mut self, parameters: &BTreeMap<String, String>, config: &MountConfig) {
        let access = &config.access;
        // Without an access id or a type, the provider's own type applies: not known here.
        if access.access_type.is_none() && access.access_id.is_empty() {
            return;
        }
        let effective = access.effective_type();
        for key in parameters.keys() {
            let readers = AccessType::reading(key);
            if readers.is_empty() || readers.contains(&effective) {
                continue;
            }
            let readers: Vec<&str> = readers.iter().map(|t| t.as_str()).collect();
            self.error(
                &format!("spec.parameters.{key}"),
                format!(
                    "{key}: applies to {} {} only, and this SecretProviderClass's is {effective}: remove it, or correct {}",
                    keys::ACCESS_TYPE,
                    readers.join(", "),
                    keys::ACCESS_TYPE
                ),
            );
        }
    }

    /// The identity the provider would resolve, and what it needs from the cluster.
    fn identity(&mut self, config: &MountConfig) -> Option<auth::Identity> {
        let id_field = format!("spec.parameters.{}", keys::ACCESS_ID);
        if config.access.access_id.is_empty() {
            self.note(
                &id_field,
                format!("{}: not set, so mounts use the provider's own identity (AKEYLESS_ACCESS_ID and its credential), which it sends only to --akeyless-url and the --allowed-gateway-url list", keys::ACCESS_ID),
            );
            return None;
        }
        match auth::offline_identity(base_url(config), config) {
            Ok(identity) => {
                for need in identity.needs() {
                    match need {
                        Need::PodToken(audience) => self.note(
                            &format!("spec.parameters.{}", keys::ACCESS_TYPE),
                            format!("{} {}: the driver must send the pod's service-account token for audience {audience:?}: add {{audience: {audience:?}}} to the CSIDriver's tokenRequests (driver chart: tokenRequests, see deploy/driver/values.yaml), or run the provider with --token-request", keys::ACCESS_TYPE, identity.access_type),
                        ),
                        Need::ProviderDefault(parameter, flag) => self.note(
                            &format!("spec.parameters.{}", keys::ACCESS_TYPE),
                            format!("{parameter}: not set, so the provider's {flag} must be"),
                        ),
                        Need::NodeIdentity => self.note(
                            &format!("spec.parameters.{}", keys::ACCESS_TYPE),
                            format!("{} {}: uses the node's own cloud identity, which the provider allows only with --node-identity and only towards --akeyless-url and the --allowed-gateway-url list", keys::ACCESS_TYPE, identity.access_type),
                        ),
                    }
                }
                Some(identity)
            }
            Err(e) => {
                let message = e.to_string();
                let parameter = parameter_of(&message);
                self.findings
                    .push(self.at.provider_problem(parameter, None, message));
                None
            }
        }
    }

    /// The driver's own mirroring: every `objectName` must be a file of the volume.
    fn secret_objects(&mut self, value: &Value, config: &MountConfig) {
        let Some(list) = value.get("spec").and_then(|s| s.get("secretObjects")) else {
            return;
        };
        let Some(list) = list.as_sequence() else {
            self.error(
                "spec.secretObjects",
                "spec.secretObjects: not a list".to_owned(),
            );
            return;
        };
        let files: BTreeSet<&str> = config
            .objects
            .iter()
            .flat_map(|o| o.planned_files())
            .collect();
        let folders: Vec<&str> = config
            .objects
            .iter()
            .filter(|o| matches!(o.shape, Shape::Folder(_)))
            .map(|o| o.file_name.as_str())
            .collect();
        let in_folder = |name: &str| {
            folders
                .iter()
                .any(|dir| dir.is_empty() || name.starts_with(&format!("{dir}/")))
        };
        for (i, entry) in list.iter().enumerate() {
            let base = format!("spec.secretObjects[{i}]");
            self.unknown_fields(
                entry,
                &base,
                &["secretName", "type", "labels", "annotations", "data"],
            );
            for required in ["secretName", "type"] {
                if entry
                    .get(required)
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.error(
                        &base,
                        format!(
                            "{base}.{required}: missing; the driver needs it to create the Secret"
                        ),
                    );
                }
            }
            let data = entry.get("data").and_then(Value::as_sequence);
            for (j, item) in data.into_iter().flatten().enumerate() {
                let field = format!("{base}.data[{j}]");
                self.unknown_fields(item, &field, &["objectName", "key"]);
                let object = item
                    .get("objectName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                if item
                    .get("key")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    self.error(
                        &field,
                        format!("{field}.key: missing; name the Secret's key"),
                    );
                }
                if !files.contains(object) && !in_folder(object) {
                    let known: Vec<&str> = files.iter().copied().collect();
                    self.error(
                        &format!("{field}.objectName"),
                        format!("{field}.objectName {object:?} is not a file of this volume, so the driver cannot sync it (its files: {})", known.join(", ")),
                    );
                }
            }
        }
    }

    fn unknown_fields(&mut self, value: &Value, base: &str, allowed: &[&str]) {
        for key in value.as_mapping().into_iter().flat_map(|m| m.keys()) {
            let key = key.as_str().unwrap_or("?");
            if !allowed.contains(&key) {
                self.error(
                    &format!("{base}.{key}"),
                    format!(
                        "{base}.{key}: unknown field (expected {})",
                        allowed.join(", ")
                    ),
                );
            }
        }
    }
}

/// The parameter a provider message names first (`objects[2] …`, `akeylessAccessType: …`).
fn parameter_of(message: &str) -> &'static str {
    let known = keys::SPC_PARAMETERS
        .iter()
        .chain(&[sync::FAILURE_POLICY, sync::SECRET_SYNC]);
    known
        .filter(|k| {
            message
                .strip_prefix(**k)
                .is_some_and(|rest| rest.starts_with([':', '[', ' ']))
        })
        .max_by_key(|k| k.len())
        .copied()
        .unwrap_or("")
}

/// The Akeyless API of a mount: the SPC's, else the provider's default.
fn base_url(config: &MountConfig) -> url::Url {
    config.gateway.clone().unwrap_or_else(|| {
        params::parse_gateway_url(DEFAULT_AKEYLESS_URL)
            .unwrap_or_else(|_| unreachable!("the default URL parses"))
    })
}

/// What a first mount does, from the code that does it.
fn planned(
    config: &MountConfig,
    identity: Option<auth::Identity>,
    mapping: Option<&mapping::Mapping>,
) -> Plan {
    let (extra, optional_extra) = crate::service::secret_reads(mapping, &config.objects);
    let want = Want {
        objects: &config.objects,
        extra: &extra,
        optional_extra: &optional_extra,
        scope: None,
    };
    let mut files = Vec::new();
    for object in &config.objects {
        let mode = format!("{:04o}", object.mode);
        let source = if object.secret_path.is_empty() {
            "template".to_owned()
        } else {
            object.secret_path.clone()
        };
        if let Shape::Folder(folder) = &object.shape {
            let dir = match object.file_name.as_str() {
                "" => String::new(),
                dir => format!("{dir}/"),
            };
            files.push(PlannedFile {
                path: format!("{dir}<item>"),
                mode,
                object: format!(
                    "each static secret {} {}",
                    if folder.recursive { "below" } else { "in" },
                    object.secret_path
                ),
            });
            continue;
        }
        for path in object.planned_files() {
            files.push(PlannedFile {
                path: path.to_owned(),
                mode: mode.clone(),
                object: source.clone(),
            });
        }
    }
    let url = match &config.gateway {
        Some(url) => url.to_string(),
        None => format!("--akeyless-url (default {DEFAULT_AKEYLESS_URL})"),
    };
    Plan {
        url,
        identity: identity.map(|id| IdentityPlan {
            access_type: id.access_type.to_string(),
            access_id: id.access_id.clone(),
            proof: id.proof_kind().to_owned(),
            login: id.logs_in(),
        }),
        files,
        secrets: mapping
            .map(|m| m.written().map(|t| t.name.clone()).collect())
            .unwrap_or_default(),
        calls: calls(&want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(report: &FileReport) -> Vec<&Finding> {
        report
            .documents
            .iter()
            .flat_map(|d| &d.findings)
            .filter(|f| f.severity == Severity::Error)
            .collect()
    }

    #[test]
    fn provider_messages_are_placed_by_their_label() {
        let field = |parameter, message| place(parameter, message).0;
        assert_eq!(
            field("objects", "objects[12] (/a): type: pki needs commonName"),
            "spec.parameters.objects[12]"
        );
        assert_eq!(
            field("objects", "objects: array[1]: unknown field"),
            "spec.parameters.objects[1]"
        );
        assert!(matches!(
            place("objects", "objects: not a YAML list of {secretPath, fileName}: did not find expected node content at line 3 column 1").1,
            Some(Inner::Line(3))
        ));
        assert_eq!(
            field("secretSync", "secretSync[0] (web): target.name must be"),
            "spec.parameters.secretSync[0]"
        );
        assert_eq!(
            field("", "attributes: not a JSON object"),
            "spec.parameters"
        );
        assert_eq!(
            parameter_of("akeylessAccessType: \"x\" is not"),
            keys::ACCESS_TYPE
        );
        assert_eq!(parameter_of("objects[0] (/a): x"), keys::OBJECTS);
        assert_eq!(
            parameter_of("secretSyncFailurePolicy: x"),
            sync::FAILURE_POLICY
        );
        assert_eq!(parameter_of("secretSync[1] (a): x"), sync::SECRET_SYNC);
        assert_eq!(parameter_of("something else"), "");
    }

    /// Written for Akeyless's Go provider: its leftovers and inline key are notes, not errors.
    #[test]
    fn a_go_provider_spc_checks_clean() {
        let spc = r#"
apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: akeyless-test
spec:
  provider: akeyless
  parameters:
    akeylessGatewayURL: "https://api.akeyless.io"
    akeylessAccessID: "p-xxxxxxxx"
    akeylessAccessKey: "inline"
    vaultKubernetesMountPath: "kubernetes"
    objects: |
      - secretPath: "/path/to/secret"
        fileName: "secret"
        secretType: "static"
        secretArgs: {}
"#;
        let report = check_text("go.yaml", spc, true);
        assert!(errors(&report).is_empty(), "{report:#?}");
        let notes: Vec<&str> = report.documents[0]
            .findings
            .iter()
            .map(|f| f.message.as_str())
            .collect();
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("vaultKubernetesMountPath: ignored"))
        );
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("akeylessAccessKey: a credential in"))
        );
        let plan = report.documents[0].plan.as_ref().unwrap();
        assert_eq!(plan.files[0].path, "secret");
        assert_eq!(plan.calls[0].command, "describe-item");
        assert_eq!(report.documents[0].name, "akeyless-test");
    }

    #[test]
    fn auth_parameters_of_another_type_and_flags_it_needs() {
        let spc = |params: &str| {
            format!(
                "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {{name: a, namespace: b}}\nspec:\n  provider: akeyless\n  parameters:\n{params}    objects: \"- secretPath: /a\"\n"
            )
        };
        let report = check_text(
            "a.yaml",
            &spc(
                "    akeylessAccessID: p-1\n    akeylessAccessType: k8s\n    akeylessGCPAudience: x\n    akeylessGatewayURL: https://gw:8000/api/v2\n",
            ),
            false,
        );
        let found = errors(&report);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].line, Some(9));
        assert!(
            found[0]
                .message
                .contains("applies to akeylessAccessType gcp only")
        );
        let notes: Vec<&str> = report.documents[0]
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Note)
            .map(|f| f.message.as_str())
            .collect();
        assert!(
            notes.iter().any(|n| n.contains("audience \"akeyless\""))
                && notes
                    .iter()
                    .any(|n| n.contains("AKEYLESS_K8S_AUTH_CONFIG_NAME")),
            "{notes:#?}"
        );
        // gcp without a workload identity: the node's identity, a flag away.
        let report = check_text(
            "g.yaml",
            &spc("    akeylessAccessID: p-1\n    akeylessAccessType: gcp\n"),
            false,
        );
        assert!(errors(&report).is_empty(), "{report:#?}");
        assert!(
            report.documents[0]
                .findings
                .iter()
                .any(|f| f.message.contains("--node-identity"))
        );
    }

    #[test]
    fn exit_codes() {
        let clean = check_text("a.yaml", "kind: ConfigMap\n", false);
        let bad = check_text(
            "b.yaml",
            "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {name: a}\nspec:\n  provider: akeyless\n",
            false,
        );
        assert_eq!(
            errors(&bad)[0].message,
            "spec.parameters is empty; the driver refuses such a SecretProviderClass"
        );
        let broken = check_text("c.yaml", "a: [\n", false);
        let code = |files: Vec<FileReport>| Report { files }.exit_code();
        assert_eq!(code(vec![clean]), 0);
        assert_eq!(code(vec![bad]), 1);
        assert_eq!(code(vec![broken]), 2);
    }
}
