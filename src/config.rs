//! Configuration: the TOML file, environment and flags turned into one validated `Config`, once,
//! at start-up. Secrets are referenced (`*_env`, `*_file`), never inline. Unknown keys are errors.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::authz::{Principal, Scope};
use crate::model::{ProviderName, Thresholds, quote_input};

/// The embedded demo inventories, used when no config names providers.
pub const DEMO_INVENTORIES: [(&str, &str); 4] = [
    ("demo-aws", include_str!("../examples/inventory/aws.toml")),
    (
        "demo-postgres",
        include_str!("../examples/inventory/postgres.toml"),
    ),
    (
        "demo-github",
        include_str!("../examples/inventory/github.toml"),
    ),
    ("demo-k8s", include_str!("../examples/inventory/k8s.toml")),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: {message}")]
    Parse { file: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("config: cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the command line and environment say; these win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    stdio: Option<RawStdio>,
    http: Option<RawHttp>,
    auth: Option<RawAuth>,
    policy: Option<RawPolicy>,
    approval: Option<RawApproval>,
    findings: Option<RawFindings>,
    /// Each entry is decoded by its `kind` after the file parses, so errors can name it.
    #[serde(default)]
    providers: Vec<toml::Spanned<toml::Table>>,
    debug: Option<RawDebug>,
    audit: Option<RawAudit>,
    #[serde(default)]
    approvers: Vec<RawApprover>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    checkpoint_key_file: Option<PathBuf>,
    checkpoint_file: Option<PathBuf>,
    checkpoint_interval: Option<String>,
}

/// One `[[approvers]]` entry: a human who may approve, and how the CLI proves it is them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApprover {
    id: String,
    /// Ed25519 public key, SPKI PEM (what `nhi-mcp approvers keygen` prints).
    public_key: Option<String>,
    public_key_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStdio {
    principal: Option<String>,
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    resource: Option<String>,
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    principal: Option<String>,
    scopes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    issuer: Option<String>,
    audience: Option<String>,
    jwks_uri: Option<String>,
    leeway: Option<String>,
    max_token_lifetime: Option<String>,
    require_typ: Option<String>,
    refusal_audit_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    files: Option<Vec<PathBuf>>,
    max_proposals_per_hour: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    token_ttl: Option<String>,
    proposal_ttl: Option<String>,
    key_file: Option<PathBuf>,
    required_approvals: Option<u32>,
    issuer: Option<String>,
    cli_client_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFindings {
    unused_days: Option<u32>,
    max_credential_age_days: Option<u32>,
}

/// One `[[providers]]` entry, by `kind`: each kind declares exactly the keys it takes, so a key
/// that does not apply to a kind is an "unknown field" error listing the ones that do.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawProvider {
    Inventory(RawInventoryProvider),
    Postgres(RawPostgresProvider),
    AwsIam(RawAwsIamProvider),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventoryProvider {
    name: String,
    path: Option<PathBuf>,
    refresh: Option<String>,
    sink: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgresProvider {
    name: String,
    url_env: Option<String>,
    url_file: Option<PathBuf>,
    refresh: Option<String>,
    sink: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAwsIamProvider {
    name: String,
    region: Option<String>,
    endpoint_url: Option<String>,
    profile: Option<String>,
    path_prefix: Option<String>,
    tag_keys: Option<RawTagKeys>,
    refresh: Option<String>,
    timeout: Option<String>,
    sink: Option<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTagKeys {
    owner: Option<String>,
    environment: Option<String>,
    purpose: Option<String>,
}

/// A provider's `sink = { kind = … }`, by kind.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawSink {
    File(RawFileSink),
    AwsSecretsmanager(RawSecretsManagerSink),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFileSink {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretsManagerSink {
    prefix: Option<String>,
    region: Option<String>,
    endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDebug {
    step_pause: Option<String>,
}

#[derive(Debug, Clone)]
pub enum DatabaseConfig {
    Sqlite(PathBuf),
}

#[derive(Debug, Clone)]
pub enum InventorySource {
    File(PathBuf),
    /// One of `DEMO_INVENTORIES`.
    Embedded(&'static str),
}

#[derive(Debug, Clone)]
pub enum ProviderKind {
    Inventory {
        source: InventorySource,
    },
    /// A PostgreSQL cluster's login roles; the admin URL (with its password) is read from the
    /// environment variable or file that config named when the provider is built.
    Postgres {
        url: PostgresUrl,
    },
    /// One AWS account's IAM users and roles, with credentials from the SDK's standard chain.
    AwsIam {
        endpoint: AwsEndpoint,
        tag_keys: TagKeys,
        /// Only users and roles whose IAM path starts with this (default `/`: all).
        path_prefix: Option<String>,
    },
}

/// Where a `postgres` provider's admin URL is read from. Resolved only by [`PostgresUrl::read`],
/// when a command builds the provider, so an approver's shell needs no database password.
#[derive(Debug, Clone)]
pub struct PostgresUrl {
    /// The provider's place in the config, for errors.
    at: String,
    from: UrlFrom,
}

#[derive(Debug, Clone)]
enum UrlFrom {
    Env(String),
    File(PathBuf),
}

impl PostgresUrl {
    /// Reads the URL from the environment variable or file; the error never shows the value.
    pub fn read(&self) -> Result<crate::model::Secret, ConfigError> {
        let at = &self.at;
        let url = match &self.from {
            UrlFrom::Env(var) => std::env::var(var).map_err(|_| {
                invalid(format!(
                    "{at}: environment variable `{var}` (from `url_env`) is not set"
                ))
            })?,
            UrlFrom::File(file) => std::fs::read_to_string(file)
                .map_err(|e| {
                    invalid(format!(
                        "{at}: cannot read `url_file` {}: {e}",
                        file.display()
                    ))
                })?
                .trim()
                .to_owned(),
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(invalid(format!(
                "{at}: the database URL must start with `postgres://` (the value is not shown)"
            )));
        }
        Ok(crate::model::Secret::new(url))
    }
}

/// Where a provider's new secrets go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkConfig {
    /// `<data_dir>/secrets/<proposal>.json`, mode 0600.
    File,
    /// AWS Secrets Manager, secret `<prefix><provider>/<native id>`.
    SecretsManager {
        prefix: String,
        endpoint: AwsEndpoint,
    },
}

#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub name: ProviderName,
    pub kind: ProviderKind,
    pub sink: SinkConfig,
    /// How old the cached inventory may grow before a background refresh; zero reads the
    /// provider on every call (no cache).
    pub refresh: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    /// This server's resource URI (RFC 8707/9728), e.g. `https://nhi.example.com/mcp`.
    pub resource: Option<String>,
    /// Bearer-token authentication; when set, every HTTP call must carry a valid token.
    pub auth: Option<crate::auth::AuthConfig>,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    /// Who an HTTP caller is when `[auth]` is not configured (loopback only).
    pub principal: Principal,
}

#[derive(Debug, Clone)]
pub struct ApprovalConfig {
    pub token_ttl: Duration,
    pub proposal_ttl: Duration,
    pub key_file: PathBuf,
    pub required_approvals: u32,
    pub issuer: String,
    /// The OAuth client `nhi-mcp approve` signs in with (device authorization grant) under
    /// `[auth]`: a public client at the issuer allowed the device-code grant.
    pub cli_client_id: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file the config came from, if any.
    pub source: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub stdio_principal: Principal,
    pub http: HttpConfig,
    pub approval: ApprovalConfig,
    pub thresholds: Thresholds,
    pub providers: Vec<ProviderConfig>,
    /// Pause after each step's external call, before its outcome is recorded; crash tests only.
    pub step_pause: Duration,
    /// Cedar policy files; empty means the shipped default policy.
    pub policy_files: Vec<PathBuf>,
    /// How many proposals one principal may create per hour (none: no limit).
    pub max_proposals_per_hour: Option<u32>,
    pub audit: AuditConfig,
    /// Who may approve (`[[approvers]]`), ids normalised; empty: nobody approves from the CLI
    /// with `--key`.
    pub approvers: Vec<crate::authz::approvers::ApproverConfig>,
}

/// Signed checkpoints of the audit chain (`[audit]`).
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The Ed25519 key that signs checkpoints (PKCS#8 PEM, 0600); not the approval key.
    pub checkpoint_key_file: PathBuf,
    /// Where `serve` appends each checkpoint, one JSON line each.
    pub checkpoint_file: PathBuf,
    /// How often `serve` writes a checkpoint (when records were added).
    pub checkpoint_interval: Duration,
}

impl Config {
    /// Reads the file named by the overrides (if any) and validates everything.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        match &overrides.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Self::from_toml(&text, Some(path), overrides)
            }
            None => Self::from_toml("", None, overrides),
        }
    }

    /// Parses and validates `text`; `path` names the file in errors and anchors relative paths.
    pub fn from_toml(
        text: &str,
        path: Option<&Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            message: toml_error_line(text, &e),
            file: file.clone(),
        })?;
        let base = path
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        validate(raw, text, &base, path, overrides)
    }
}

/// One line from a TOML error: `line N: message`.
pub fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

fn invalid(message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(message.into())
}

fn parse_scopes(key: &str, raw: &[String]) -> Result<Vec<Scope>, ConfigError> {
    raw.iter()
        .map(|s| Scope::parse(s).map_err(|e| invalid(format!("`{key}`: {e}"))))
        .collect()
}

/// The longest duration any setting accepts: longer ones overflow time arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn parse_duration(key: &str, raw: &str) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(raw).map_err(|e| {
        invalid(format!(
            "`{key}` = {} is not a duration like `15m` or `24h`: {}",
            quote_input(raw),
            crate::model::bound_echoes(&e.to_string())
        ))
    })?;
    if d > MAX_DURATION {
        return Err(invalid(format!(
            "`{key}` = {} is longer than 100 years",
            quote_input(raw)
        )));
    }
    Ok(d)
}

/// An endpoint override must be an http(s) URL; it is for emulators and VPC endpoints.
fn check_endpoint_url(at: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(format!(
            "{at}: `endpoint_url` = {} must start with `http://` or `https://`",
            quote_input(url)
        )))
    }
}

fn default_data_dir() -> Result<PathBuf, ConfigError> {
    directories::ProjectDirs::from("", "", "nhi-mcp")
        .map(|d| d.data_dir().to_path_buf())
        .ok_or_else(|| invalid("no home directory to put the data dir in; pass `--data-dir`"))
}

fn validate(
    raw: RawConfig,
    text: &str,
    base: &Path,
    source: Option<&Path>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let resolve = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
    let data_dir = match (&overrides.data_dir, raw.data_dir) {
        (Some(flag), _) => flag.clone(),
        (None, Some(file)) => resolve(file),
        (None, None) => default_data_dir()?,
    };
    let database = match raw.database_url.as_deref() {
        None => DatabaseConfig::Sqlite(data_dir.join("nhi-mcp.sqlite3")),
        Some(url) if url.starts_with("sqlite:") => {
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            DatabaseConfig::Sqlite(resolve(PathBuf::from(path)))
        }
        Some(url) if url.starts_with("postgres") => {
            return Err(invalid(
                "`database_url`: PostgreSQL is not available in this version; omit it to use SQLite in the data dir",
            ));
        }
        Some(_) => {
            return Err(invalid(
                "`database_url` must start with `sqlite:` (the value is not shown: it may hold a password)",
            ));
        }
    };

    let stdio = raw.stdio.unwrap_or_default();
    let default_scopes = vec![Scope::Read, Scope::Propose, Scope::Apply];
    let stdio_principal = principal(
        "stdio",
        stdio.principal,
        stdio.scopes,
        default_scopes.clone(),
    )?;

    let http = raw.http.unwrap_or_default();
    let listen_raw = http.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen: SocketAddr = listen_raw.parse().map_err(|_| {
        invalid(format!(
            "`http.listen` = {} is not an address like `127.0.0.1:8080`",
            quote_input(listen_raw)
        ))
    })?;
    if let Some(r) = &http.resource
        && !(r.starts_with("https://") || r.starts_with("http://"))
    {
        return Err(invalid(format!(
            "`http.resource` = {} must be an http(s) URL",
            quote_input(r)
        )));
    }
    let auth = raw
        .auth
        .map(|a| auth_config(a, http.resource.clone()))
        .transpose()?;
    if !listen.ip().is_loopback() && auth.is_none() {
        return Err(invalid(format!(
            "`http.listen` = {listen} is not loopback: configure `[auth]` before serving other machines"
        )));
    }
    let http = HttpConfig {
        listen,
        resource: http.resource,
        auth,
        allowed_hosts: http
            .allowed_hosts
            .unwrap_or_else(|| vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]),
        // Browsers send `Origin`; only pages served from this machine may call the server.
        // Clients that are not browsers send none and are not affected.
        allowed_origins: http.allowed_origins.unwrap_or_else(|| {
            vec![
                "http://localhost:*".into(),
                "http://127.0.0.1:*".into(),
                "http://[::1]:*".into(),
            ]
        }),
        principal: principal("http", http.principal, http.scopes, default_scopes)?,
    };

    let approval = approval_config(raw.approval.unwrap_or_default(), &data_dir, &resolve)?;
    let approvers = approvers(raw.approvers, &resolve)?;

    let findings = raw.findings.unwrap_or_default();
    let defaults = Thresholds::default();
    let thresholds = Thresholds {
        unused_days: findings.unused_days.unwrap_or(defaults.unused_days),
        max_credential_age_days: findings
            .max_credential_age_days
            .unwrap_or(defaults.max_credential_age_days),
    };
    if thresholds.unused_days == 0 || thresholds.max_credential_age_days == 0 {
        return Err(invalid("`[findings]` thresholds must be at least 1 day"));
    }

    let mut providers: Vec<ProviderConfig> = Vec::new();
    for (i, entry) in raw.providers.into_iter().enumerate() {
        let at = format!("`providers[{i}]`");
        let line = text
            .get(..entry.span().start)
            .map_or(0, |before| before.matches('\n').count())
            + 1;
        let raw =
            RawProvider::deserialize(toml::Value::Table(entry.into_inner())).map_err(|e| {
                ConfigError::Parse {
                    file: source
                        .map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string()),
                    message: format!(
                        "line {line}: {at}: {}",
                        crate::model::bound_echoes(e.message().trim())
                    ),
                }
            })?;
        let p = provider(&at, raw, &resolve)?;
        if providers.iter().any(|q| q.name == p.name) {
            return Err(invalid(format!(
                "{at}: provider name `{}` is used twice",
                p.name
            )));
        }
        providers.push(p);
    }
    if providers.is_empty() {
        for (name, _) in DEMO_INVENTORIES {
            providers.push(ProviderConfig {
                name: ProviderName::parse(name).map_err(|e| invalid(e.0))?,
                kind: ProviderKind::Inventory {
                    source: InventorySource::Embedded(name),
                },
                sink: SinkConfig::File,
                refresh: Duration::ZERO,
            });
        }
    }

    let audit = audit_config(raw.audit, &data_dir, &resolve)?;
    let step_pause = match raw.debug.and_then(|d| d.step_pause) {
        Some(raw) => parse_duration("debug.step_pause", &raw)?,
        None => Duration::ZERO,
    };

    let (policy_files, max_proposals_per_hour) = match raw.policy {
        Some(p) => {
            if p.max_proposals_per_hour == Some(0) {
                return Err(invalid(
                    "`policy.max_proposals_per_hour` must be at least 1",
                ));
            }
            (
                p.files
                    .unwrap_or_default()
                    .into_iter()
                    .map(resolve)
                    .collect(),
                p.max_proposals_per_hour,
            )
        }
        None => (Vec::new(), None),
    };

    Ok(Config {
        audit,
        approvers,
        policy_files,
        max_proposals_per_hour,
        source: source.map(Path::to_path_buf),
        data_dir,
        database,
        stdio_principal,
        http,
        approval,
        thresholds,
        providers,
        step_pause,
    })
}

/// One provider entry, checked for its kind.
fn provider(
    at: &str,
    raw: RawProvider,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<ProviderConfig, ConfigError> {
    let (name, refresh, sink, kind) = match raw {
        RawProvider::Inventory(p) => {
            let path = p
                .path
                .ok_or_else(|| invalid(format!("{at}: kind `inventory` needs `path`")))?;
            let kind = ProviderKind::Inventory {
                source: InventorySource::File(resolve(path)),
            };
            (p.name, p.refresh, p.sink, kind)
        }
        RawProvider::Postgres(p) => {
            let from = match (p.url_env, p.url_file) {
                (Some(var), None) => UrlFrom::Env(var),
                (None, Some(file)) => UrlFrom::File(resolve(file)),
                _ => {
                    return Err(invalid(format!(
                        "{at}: kind `postgres` needs exactly one of `url_env` or `url_file` (the URL holds a password, so it is never written inline)"
                    )));
                }
            };
            // Read when the provider is built, not here: commands that never call a provider
            // (approvals, proposals, the audit log) work without its secret.
            let kind = ProviderKind::Postgres {
                url: PostgresUrl {
                    at: at.to_owned(),
                    from,
                },
            };
            (p.name, p.refresh, p.sink, kind)
        }
        RawProvider::AwsIam(p) => {
            if let Some(url) = &p.endpoint_url {
                check_endpoint_url(at, url)?;
            }
            if let Some(prefix) = &p.path_prefix
                && !(prefix.starts_with('/') && prefix.ends_with('/'))
            {
                return Err(invalid(format!(
                    "{at}: `path_prefix` = {} must start and end with `/`, like an IAM path",
                    quote_input(prefix)
                )));
            }
            let defaults = TagKeys::default();
            let tag_keys = match p.tag_keys {
                None => defaults,
                Some(t) => TagKeys {
                    owner: t.owner.unwrap_or(defaults.owner),
                    environment: t.environment.unwrap_or(defaults.environment),
                    purpose: t.purpose.unwrap_or(defaults.purpose),
                },
            };
            let timeout = match &p.timeout {
                Some(raw) => {
                    let t = parse_duration(&format!("{}.timeout", at.trim_matches('`')), raw)?;
                    if t < Duration::from_secs(1) || t > Duration::from_secs(25) {
                        return Err(invalid(format!(
                            "{at}: `timeout` must be between 1s and 25s (every provider call is also cut off at 30s)"
                        )));
                    }
                    Some(t)
                }
                None => None,
            };
            let kind = ProviderKind::AwsIam {
                endpoint: AwsEndpoint {
                    region: p.region,
                    endpoint_url: p.endpoint_url,
                    profile: p.profile,
                    timeout,
                },
                tag_keys,
                path_prefix: p.path_prefix,
            };
            (p.name, p.refresh, p.sink, kind)
        }
    };
    let name = ProviderName::parse(&name).map_err(|e| invalid(format!("{at}: {e}")))?;
    let sink = match sink {
        None => SinkConfig::File,
        Some(table) => {
            let raw = RawSink::deserialize(toml::Value::Table(table)).map_err(|e| {
                invalid(format!(
                    "{at}: `sink`: {}",
                    crate::model::bound_echoes(e.message().trim())
                ))
            })?;
            sink_config(at, raw, &kind)?
        }
    };
    let refresh = match &refresh {
        Some(raw) => parse_duration(&format!("{}.refresh", at.trim_matches('`')), raw)?,
        // A local file and one SQL query are cheap; an AWS account's inventory is not.
        None => match kind {
            ProviderKind::AwsIam { .. } => Duration::from_secs(300),
            _ => Duration::ZERO,
        },
    };
    Ok(ProviderConfig {
        name,
        kind,
        sink,
        refresh,
    })
}

/// Where a provider's new secrets go; an AWS provider's Secrets Manager sink defaults to the
/// provider's own region and endpoint.
fn sink_config(at: &str, raw: RawSink, kind: &ProviderKind) -> Result<SinkConfig, ConfigError> {
    let sm = match raw {
        RawSink::File(RawFileSink {}) => return Ok(SinkConfig::File),
        RawSink::AwsSecretsmanager(sm) => sm,
    };
    if matches!(kind, ProviderKind::Inventory { .. }) {
        return Err(invalid(format!(
            "{at}: the inventory provider's secrets are demo data: it delivers to the `file` sink only"
        )));
    }
    if let Some(url) = &sm.endpoint_url {
        check_endpoint_url(at, url)?;
    }
    let prefix = sm.prefix.unwrap_or_else(|| "nhi-mcp/".to_owned());
    if !prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/_+=.@-".contains(c))
    {
        return Err(invalid(format!(
            "{at}: sink `prefix` = {} may hold only letters, digits and /_+=.@- (Secrets Manager's name characters)",
            quote_input(&prefix)
        )));
    }
    let endpoint = match kind {
        ProviderKind::AwsIam { endpoint, .. } => AwsEndpoint {
            region: sm.region.or_else(|| endpoint.region.clone()),
            endpoint_url: sm.endpoint_url.or_else(|| endpoint.endpoint_url.clone()),
            ..endpoint.clone()
        },
        _ => AwsEndpoint {
            region: sm.region,
            endpoint_url: sm.endpoint_url,
            ..AwsEndpoint::default()
        },
    };
    Ok(SinkConfig::SecretsManager { prefix, endpoint })
}

/// `[auth]`: bearer tokens from one issuer for this server's resource.
fn auth_config(
    a: RawAuth,
    resource: Option<String>,
) -> Result<crate::auth::AuthConfig, ConfigError> {
    let issuer = a
        .issuer
        .ok_or_else(|| invalid("`auth.issuer` is required in `[auth]`"))?;
    if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
        return Err(invalid(format!(
            "`auth.issuer` = {} must be an http(s) URL",
            quote_input(&issuer)
        )));
    }
    let resource = resource.ok_or_else(|| {
        invalid("`[auth]` needs `http.resource`: this server's resource URI, e.g. `https://nhi.example.com/mcp`")
    })?;
    let leeway = match a.leeway.as_deref() {
        Some(raw) => parse_duration("auth.leeway", raw)?,
        None => crate::auth::DEFAULT_LEEWAY,
    };
    if leeway > Duration::from_secs(300) {
        return Err(invalid("`auth.leeway` may be at most 5m"));
    }
    let max_token_lifetime = match a.max_token_lifetime.as_deref() {
        Some(raw) => parse_duration("auth.max_token_lifetime", raw)?,
        None => crate::auth::DEFAULT_MAX_TOKEN_LIFETIME,
    };
    if max_token_lifetime < Duration::from_secs(1) {
        return Err(invalid("`auth.max_token_lifetime` must be at least 1s"));
    }
    if let Some(t) = &a.require_typ
        && (t.trim().is_empty() || t.trim() != t)
    {
        return Err(invalid(format!(
            "`auth.require_typ` = {} must be a media type like `at+jwt`",
            quote_input(t)
        )));
    }
    let refusal_audit_interval = match a.refusal_audit_interval.as_deref() {
        Some(raw) => parse_duration("auth.refusal_audit_interval", raw)?,
        None => crate::auth::DEFAULT_REFUSAL_AUDIT_INTERVAL,
    };
    if refusal_audit_interval < Duration::from_secs(1)
        || refusal_audit_interval > Duration::from_secs(3600)
    {
        return Err(invalid(
            "`auth.refusal_audit_interval` must be between 1s and 1h",
        ));
    }
    Ok(crate::auth::AuthConfig {
        issuer,
        audience: a.audience.unwrap_or(resource),
        jwks_uri: a.jwks_uri,
        leeway,
        max_token_lifetime,
        require_typ: a.require_typ,
        refusal_audit_interval,
    })
}

/// `[approval]`: how long approvals and proposals live, the key, how many approvers.
fn approval_config(
    approval: RawApproval,
    data_dir: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<ApprovalConfig, ConfigError> {
    let token_ttl = parse_duration(
        "approval.token_ttl",
        approval.token_ttl.as_deref().unwrap_or("15m"),
    )?;
    if token_ttl < Duration::from_secs(10) || token_ttl > Duration::from_secs(24 * 3600) {
        return Err(invalid("`approval.token_ttl` must be between 10s and 24h"));
    }
    let proposal_ttl = parse_duration(
        "approval.proposal_ttl",
        approval.proposal_ttl.as_deref().unwrap_or("24h"),
    )?;
    if proposal_ttl < Duration::from_secs(60) || proposal_ttl > Duration::from_secs(30 * 86400) {
        return Err(invalid(
            "`approval.proposal_ttl` must be between 1m and 30d",
        ));
    }
    let required_approvals = approval.required_approvals.unwrap_or(1);
    if !(1..=5).contains(&required_approvals) {
        return Err(invalid(
            "`approval.required_approvals` must be between 1 and 5",
        ));
    }
    Ok(ApprovalConfig {
        token_ttl,
        proposal_ttl,
        key_file: approval
            .key_file
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("approval.key")),
        required_approvals,
        issuer: approval.issuer.unwrap_or_else(|| "nhi-mcp".to_owned()),
        cli_client_id: approval
            .cli_client_id
            .unwrap_or_else(|| "nhi-mcp-cli".to_owned()),
    })
}

fn audit_config(
    raw: Option<RawAudit>,
    data_dir: &Path,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<AuditConfig, ConfigError> {
    let raw = raw.unwrap_or_default();
    let checkpoint_interval = parse_duration(
        "audit.checkpoint_interval",
        raw.checkpoint_interval.as_deref().unwrap_or("5m"),
    )?;
    if checkpoint_interval < Duration::from_secs(1)
        || checkpoint_interval > Duration::from_secs(24 * 3600)
    {
        return Err(invalid(
            "`audit.checkpoint_interval` must be between 1s and 24h",
        ));
    }
    Ok(AuditConfig {
        checkpoint_key_file: raw
            .checkpoint_key_file
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("audit-checkpoint.key")),
        checkpoint_file: raw
            .checkpoint_file
            .map(resolve)
            .unwrap_or_else(|| data_dir.join("audit-checkpoints.jsonl")),
        checkpoint_interval,
    })
}

fn principal(
    section: &str,
    id: Option<String>,
    scopes: Option<Vec<String>>,
    default_scopes: Vec<Scope>,
) -> Result<Principal, ConfigError> {
    let id = id.unwrap_or_else(|| "agent:local".to_owned());
    let id = crate::authz::principal_id::parse_external(&format!("`{section}.principal`"), &id)
        .map_err(|e| invalid(e.0))?;
    let scopes = match scopes {
        Some(raw) => parse_scopes(&format!("{section}.scopes"), &raw)?,
        None => default_scopes,
    };
    if scopes.contains(&Scope::Approve) {
        return Err(invalid(format!(
            "`{section}.scopes`: `nhi:approve` is for humans on a separate channel, never for an MCP client"
        )));
    }
    Ok(Principal::new(id, scopes))
}

/// `[[approvers]]`: ids normalised and unique, keys parsed.
fn approvers(
    raw: Vec<RawApprover>,
    resolve: &dyn Fn(PathBuf) -> PathBuf,
) -> Result<Vec<crate::authz::approvers::ApproverConfig>, ConfigError> {
    use crate::authz::approvers::{ApproverConfig, parse_public_key};
    let mut out: Vec<ApproverConfig> = Vec::new();
    for (i, a) in raw.into_iter().enumerate() {
        let at = format!("`approvers[{i}]`");
        let id = crate::authz::principal_id::parse_external(&format!("{at}: `id`"), &a.id)
            .map_err(|e| invalid(e.0))?;
        if let Some(j) = out.iter().position(|o| o.id == id) {
            return Err(invalid(format!(
                "{at}: `id` = {} is `{id}`, which `approvers[{j}]` already names",
                quote_input(&a.id)
            )));
        }
        let pem = match (a.public_key, a.public_key_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "{at}: give `public_key` or `public_key_file`, not both"
                )));
            }
            (Some(pem), None) => Some(pem),
            (None, Some(file)) => {
                let path = resolve(file);
                Some(
                    std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                        path: path.clone(),
                        source,
                    })?,
                )
            }
            (None, None) => None,
        };
        let public_key = pem
            .map(|pem| {
                parse_public_key(&pem).map_err(|e| invalid(format!("{at}: the public key {e}")))
            })
            .transpose()?;
        out.push(ApproverConfig { id, public_key });
    }
    Ok(out)
}

/// Which tags hold an identity's owner, environment and purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagKeys {
    pub owner: String,
    pub environment: String,
    pub purpose: String,
}

impl Default for TagKeys {
    fn default() -> Self {
        Self {
            owner: "owner".to_owned(),
            environment: "environment".to_owned(),
            purpose: "purpose".to_owned(),
        }
    }
}

/// Where the AWS clients connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AwsEndpoint {
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// How long one AWS call may take, retries included (default 25 s).
    pub timeout: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, String> {
        let overrides = Overrides {
            config_file: None,
            data_dir: Some(PathBuf::from("/tmp/nhi-test")),
        };
        Config::from_toml(text, Some(Path::new("/etc/nhi/config.toml")), &overrides)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_use_the_demo_inventory_and_sqlite() {
        let c = load("").unwrap();
        assert_eq!(c.providers.len(), 4);
        assert_eq!(c.approval.token_ttl, Duration::from_secs(900));
        assert_eq!(
            c.stdio_principal.scope_list(),
            vec!["nhi:read", "nhi:propose", "nhi:apply"]
        );
        assert!(
            matches!(c.database, DatabaseConfig::Sqlite(ref p) if p.starts_with("/tmp/nhi-test"))
        );
    }

    #[test]
    fn errors_name_the_file_line_and_key() {
        let check = |text: &str, expected: &[&str]| {
            let err = load(text).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            for e in expected {
                assert!(err.contains(e), "`{err}` lacks `{e}`");
            }
        };
        check(
            "[findings]\nunused_dayz = 3\n",
            &["/etc/nhi/config.toml", "line 2", "unused_dayz"],
        );
        check(
            "[approval]\ntoken_ttl = \"soon\"\n",
            &["approval.token_ttl", "soon"],
        );
        check(
            "[stdio]\nscopes = [\"nhi:root\"]\n",
            &["stdio.scopes", "nhi:root"],
        );
        check("[stdio]\nscopes = [\"nhi:approve\"]\n", &["humans"]);
        check(
            "[[providers]]\nname = \"x\"\nkind = \"ldap\"\n",
            &["providers[0]", "ldap"],
        );
        check(
            "[[providers]]\nname = \"x\"\nkind = \"inventory\"\n",
            &["needs `path`"],
        );
        check("database_url = \"mysql://u:hunter2@h\"\n", &["sqlite:"]);
        assert!(
            !load("database_url = \"mysql://u:hunter2@h\"\n")
                .unwrap_err()
                .contains("hunter2")
        );
    }

    /// Each provider and sink kind takes exactly its own keys: a key of another kind is an
    /// error that names the entry, its line and the keys that do apply.
    #[test]
    fn provider_and_sink_keys_are_checked_by_kind() {
        let check = |text: &str, expected: &[&str]| {
            let err = load(text).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            for e in expected {
                assert!(err.contains(e), "`{err}` lacks `{e}`");
            }
        };
        let inv = "[[providers]]\nname = \"a\"\nkind = \"inventory\"\npath = \"a.toml\"\n";
        check(
            &format!(
                "{inv}\n[[providers]]\nname = \"pg\"\nkind = \"postgres\"\nurl_env = \"U\"\nregion = \"x\"\n"
            ),
            &[
                "/etc/nhi/config.toml",
                "line 6: `providers[1]`",
                "unknown field `region`",
                "`url_env`",
                "`url_file`",
            ],
        );
        check(
            "[[providers]]\nname = \"a\"\nkind = \"inventory\"\npath = \"a\"\ntimeout = \"3s\"\n",
            &[
                "line 1: `providers[0]`",
                "unknown field `timeout`",
                "`path`",
            ],
        );
        check(
            "[[providers]]\nname = \"a\"\npath = \"a\"\n",
            &["`providers[0]`", "missing field `kind`"],
        );
        check(
            "[[providers]]\nname = \"a\"\nkind = \"aws_iam\"\nsink = { kind = \"file\", prefix = \"p/\" }\n",
            &["`providers[0]`: `sink`", "unknown field `prefix`"],
        );
        check(
            "[[providers]]\nname = \"a\"\nkind = \"aws_iam\"\nsink = { kind = \"aws_secretsmanager\", path = \"p\" }\n",
            &["`providers[0]`: `sink`", "unknown field `path`", "`prefix`"],
        );
        check(
            &format!("{inv}sink = {{ kind = \"aws_secretsmanager\" }}\n"),
            &["demo data", "`file` sink only"],
        );
        check(
            "[[providers]]\nname = \"pg\"\nkind = \"postgres\"\n",
            &["exactly one of `url_env` or `url_file`"],
        );
        check(
            &format!("{inv}[[providers]]\nname = \"a\"\nkind = \"inventory\"\npath = \"b.toml\"\n"),
            &["`providers[1]`", "used twice"],
        );
        let long = "k".repeat(10_000);
        let err = load(&format!("[[providers]]\nname = \"a\"\nkind = \"{long}\"\n")).unwrap_err();
        assert!(err.len() < 400, "{} characters", err.len());
        let c = load(
            "[[providers]]\nname = \"aws\"\nkind = \"aws_iam\"\nregion = \"eu-west-1\"\nendpoint_url = \"http://127.0.0.1:5000\"\nsink = { kind = \"aws_secretsmanager\" }\n",
        )
        .unwrap();
        let SinkConfig::SecretsManager { prefix, endpoint } = &c.providers[0].sink else {
            panic!("not Secrets Manager");
        };
        assert_eq!(prefix, "nhi-mcp/");
        assert_eq!(endpoint.region.as_deref(), Some("eu-west-1"));
        assert_eq!(c.providers[0].refresh, Duration::from_secs(300));
    }

    /// Issue #8: configured principals are normalised, look-alikes and the server's own names
    /// refused, and two spellings of one approver are one approver.
    #[test]
    fn principals_and_approvers_are_normalised_and_checked() {
        let c = load("[stdio]\nprincipal = \" Agent:Local\"\n[http]\nprincipal = \"ＢＯＴ\"\n")
            .unwrap();
        assert_eq!(c.stdio_principal.id, "agent:local");
        assert_eq!(c.http.principal.id, "bot");
        for bad in [
            "\u{430}gent",
            "agent\u{200b}",
            "nhi-mcp",
            "CLI:local",
            "Anonymous",
            "a b",
            "",
        ] {
            for section in ["stdio", "http"] {
                let err = load(&format!("[{section}]\nprincipal = \"{bad}\"\n")).unwrap_err();
                assert!(err.contains(&format!("`{section}.principal`")), "{err}");
                assert!(!err.contains('\n'), "{err}");
            }
        }
        let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let pem = crate::authz::approvers::public_key_pem(&key.verifying_key()).unwrap();
        let c = load(&format!(
            "[[approvers]]\nid = \"Alice@Example.com \"\npublic_key = \"\"\"\n{pem}\"\"\"\n[[approvers]]\nid = \"bob\"\n"
        ))
        .unwrap();
        assert_eq!(c.approvers.len(), 2);
        assert_eq!(c.approvers[0].id, "alice@example.com");
        assert_eq!(c.approvers[0].public_key, Some(key.verifying_key()));
        assert_eq!(c.approvers[1].public_key, None);
        let err =
            load("[[approvers]]\nid = \"alice\"\n[[approvers]]\nid = \"ALICE \"\n").unwrap_err();
        assert!(err.contains("approvers[0]` already names"), "{err}");
        let err = load("[[approvers]]\nid = \"\u{430}lice\"\n").unwrap_err();
        assert!(err.contains("approvers[0]"), "{err}");
        let err = load("[[approvers]]\nid = \"nhi-mcp\"\n").unwrap_err();
        assert!(err.contains("reserved"), "{err}");
        let err = load("[[approvers]]\nid = \"a\"\npublic_key = \"nope\"\n").unwrap_err();
        assert!(err.contains("not an Ed25519 public key"), "{err}");
        let err = load("[[approvers]]\nid = \"a\"\npublic_key = \"x\"\npublic_key_file = \"k\"\n")
            .unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn relative_paths_are_anchored_at_the_config_file() {
        let c = load("[[providers]]\nname = \"mine\"\nkind = \"inventory\"\npath = \"inv.toml\"\n")
            .unwrap();
        let ProviderKind::Inventory {
            source: InventorySource::File(p),
        } = &c.providers[0].kind
        else {
            panic!("not a file inventory");
        };
        assert_eq!(p, Path::new("/etc/nhi/inv.toml"));
    }

    #[test]
    fn audit_checkpoints_have_defaults_and_bounds() {
        let c = load("").unwrap();
        assert_eq!(
            c.audit.checkpoint_key_file,
            Path::new("/tmp/nhi-test/audit-checkpoint.key")
        );
        assert_eq!(
            c.audit.checkpoint_file,
            Path::new("/tmp/nhi-test/audit-checkpoints.jsonl")
        );
        assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(300));
        let c = load(
            "[audit]\ncheckpoint_interval = \"1s\"\ncheckpoint_file = \"cp.jsonl\"\ncheckpoint_key_file = \"/k/cp.key\"\n",
        )
        .unwrap();
        assert_eq!(c.audit.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(c.audit.checkpoint_file, Path::new("/etc/nhi/cp.jsonl"));
        assert_eq!(c.audit.checkpoint_key_file, Path::new("/k/cp.key"));
        for bad in ["999ms", "25h", "0s", "often"] {
            let err = load(&format!("[audit]\ncheckpoint_interval = \"{bad}\"\n")).unwrap_err();
            assert!(err.contains("audit.checkpoint_interval"), "{err}");
        }
        assert!(
            load("[audit]\ncheckpoint = 1\n")
                .unwrap_err()
                .contains("checkpoint")
        );
    }

    #[test]
    fn auth_token_and_refusal_settings() {
        let base = "[http]\nresource = \"https://nhi.example.com/mcp\"\n[auth]\nissuer = \"https://idp.example.com\"\n";
        let auth = |extra: &str| load(&format!("{base}{extra}")).map(|c| c.http.auth.unwrap());
        let d = auth("").unwrap();
        assert_eq!(d.max_token_lifetime, Duration::from_secs(86_400));
        assert_eq!(d.require_typ, None);
        assert_eq!(d.refusal_audit_interval, Duration::from_secs(60));
        let c = auth("max_token_lifetime = \"1h\"\nrequire_typ = \"at+jwt\"\nrefusal_audit_interval = \"5s\"\n").unwrap();
        assert_eq!(c.max_token_lifetime, Duration::from_secs(3600));
        assert_eq!(c.require_typ.as_deref(), Some("at+jwt"));
        assert_eq!(c.refusal_audit_interval, Duration::from_secs(5));
        for (extra, expect) in [
            ("max_token_lifetime = \"0s\"\n", "at least 1s"),
            (
                "max_token_lifetime = \"forever\"\n",
                "`auth.max_token_lifetime`",
            ),
            ("require_typ = \"\"\n", "`auth.require_typ`"),
            ("require_typ = \" at+jwt\"\n", "`auth.require_typ`"),
            ("refusal_audit_interval = \"0s\"\n", "between 1s and 1h"),
            ("refusal_audit_interval = \"2h\"\n", "between 1s and 1h"),
        ] {
            let err = auth(extra).unwrap_err();
            assert!(err.contains(expect), "{extra}: `{err}`");
        }
    }

    /// Issue 8: a hostile value for any string setting is a one-line error, never a panic.
    #[test]
    fn hostile_values_are_one_line_errors_not_panics() {
        use proptest::prelude::*;
        const KEYS: [&str; 16] = [
            "database_url",
            "stdio.principal",
            "http.listen",
            "http.resource",
            "http.principal",
            "auth.issuer",
            "auth.leeway",
            "approval.token_ttl",
            "approval.proposal_ttl",
            "debug.step_pause",
            "providers.0.name",
            "providers.0.kind",
            "providers.0.refresh",
            "providers.0.timeout",
            "providers.0.endpoint_url",
            "sinks.0.kind",
        ];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(768));
        let strategy = (crate::model::hostile::text(), 0..KEYS.len());
        runner
            .run(&strategy, |(value, key)| {
                let mut doc = serde_json::json!({
                    "providers": [{"name": "aws", "kind": "aws_iam", "region": "us-east-1"}],
                    "sinks": [{"kind": "file"}],
                });
                let path: Vec<&str> = KEYS[key].split('.').collect();
                let mut slot = &mut doc;
                for (i, part) in path.iter().enumerate() {
                    slot = match part.parse::<usize>() {
                        Ok(n) => &mut slot[n],
                        Err(_) if i + 1 < path.len() && slot.get(*part).is_none() => {
                            slot[*part] = serde_json::json!({});
                            &mut slot[*part]
                        }
                        Err(_) => &mut slot[*part],
                    };
                }
                *slot = serde_json::Value::String(value);
                let text = toml::to_string(&doc).expect("toml");
                if let Err(e) = load(&text) {
                    prop_assert!(!e.contains(['\n', '\r', '\u{2028}', '\u{2029}']), "{e}");
                }
                Ok(())
            })
            .unwrap();
    }
}
