//! Configuration: defaults in code, then the TOML file, then `SANDBOXER_*`
//! environment variables, then command-line flags.
//!
//! (Longer than 600 lines: one tree of sections, each with its defaults
//! beside its fields, and the one pass that checks them into [`Settings`];
//! split, a reader would jump between a field, its default and its check.
//! The tests at the end are the layering's.)
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The shipped example configuration (`sandboxerd --print-default-config`).
pub const EXAMPLE_CONFIG: &str = include_str!("../../../deploy/sandboxerd.example.toml");

/// Everything `sandboxerd` can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to serve the API on.
    pub listen: String,
    /// Where the SQLite file and the sandboxes' workspaces live.
    pub data_dir: PathBuf,
    /// Folder of `profile.*` YAML files.
    pub profiles_dir: PathBuf,
    /// Folder of `ext.*` YAML files.
    pub extensions_dir: PathBuf,
    /// `pretty` or `json`.
    pub log_format: String,
    /// How long a backend may take to report a sandbox ready.
    pub provision_timeout: String,
    /// How long in-flight requests get to finish on shutdown.
    pub shutdown_grace: String,
    /// How often the reaper sweeps for expired and idle sandboxes.
    pub reaper_interval: String,
    /// How often running sandboxes are metered (debited by the second).
    pub metering_interval: String,
    /// How often the placement hosts are swept for stale resources ("0s": never).
    pub stale_sweep_interval: String,
    /// How long a resource must have been seen stale, without a break,
    /// before the periodic sweep reaps it.
    pub stale_grace: String,
    /// Where lifecycle events are POSTed; empty keeps them in the outbox table only.
    pub state_hub_url: String,
    /// Most snapshots (`creating` or `ready`) one project may hold.
    pub snapshot_quota_per_project: u32,
    /// The longest an exit snapshot (`ttl.on_expire: snapshot`) may take
    /// before it is cancelled and the teardown goes on.
    pub exit_snapshot_timeout: String,
    /// Folders under which inputs that name host paths (a copy-mode
    /// workspace's `from_input`, compose's `repo`) must lie for consumer
    /// callers. Empty: only operators may pass host paths.
    pub input_roots: Vec<PathBuf>,
    /// API tokens (stored as SHA-256). None: loopback only, one local operator.
    pub tokens: Vec<TokenConfig>,
    /// Abuse limits.
    pub limits: Limits,
    /// Named secrets that profiles refer to in `setup.secret_refs`.
    pub secrets: BTreeMap<String, SecretSource>,
    /// Placement hosts (`[[hosts]]`) for `ext.compose-ssh`.
    pub hosts: Vec<crate::hosts::HostConfig>,
    /// Credit enforcement.
    pub credits: CreditsConfig,
    /// Warm pools (profiles that declare `pool`).
    pub pools: PoolsConfig,
    /// `ext.local` sandboxes.
    pub local: LocalConfig,
    /// `[access]`: exec, files and ports of running sandboxes.
    pub access: AccessConfig,
    /// `[ssh_gateway]`: SSH into sandboxes (off unless `listen` is set).
    pub ssh_gateway: SshGatewayConfig,
    /// `[egress]`: the filtering proxy of `network: {mode: egress}` sandboxes.
    pub egress: EgressConfig,
}

/// `[local]`: who `ext.local` sandboxes are on the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LocalConfig {
    /// Host uid that uid 0 inside every sandbox maps to when the daemon runs
    /// as root (an unprivileged daemon's sandboxes map to its own uid). Never 0.
    pub sandbox_uid: u32,
    /// Host gid that gid 0 inside every sandbox maps to (root daemon only). Never 0.
    pub sandbox_gid: u32,
    /// `enforce` (default): profiles' `cpus`, `memory` and `pids` are
    /// enforced through cgroups, and ext.local is unavailable (saying why)
    /// where it cannot. `off`: no cgroups; the limits are only recorded.
    pub limits: LimitsMode,
    /// Where the sandboxes' cgroups go, as a path inside each cgroup
    /// hierarchy (e.g. `/sandboxer`); by default `sandboxer` under the
    /// daemon's own cgroup (its delegated subtree under systemd).
    pub cgroup_parent: Option<String>,
    /// How `resources.disk` is enforced: `auto` (default: a loop-mounted
    /// ext4 image per sandbox where the daemon is root, else recorded
    /// only), `image` (required: ext.local is unavailable where it cannot),
    /// `off` (recorded only).
    pub disk: DiskMode,
}

/// `[local] disk`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DiskMode {
    #[default]
    Auto,
    Image,
    Off,
}

/// `[local] limits`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitsMode {
    #[default]
    Enforce,
    Off,
}

impl Default for LocalConfig {
    fn default() -> Self {
        // nobody/nogroup: owns nothing on a Debian host.
        Self {
            sandbox_uid: 65534,
            sandbox_gid: 65534,
            limits: LimitsMode::Enforce,
            cgroup_parent: None,
            disk: DiskMode::Auto,
        }
    }
}

/// `[pools]`: how warm pools are refilled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolsConfig {
    /// `false`: no pool is kept whatever the profiles declare (every create provisions).
    pub enabled: bool,
    /// Most members of one pool being provisioned at once.
    pub refill_concurrency: u32,
    /// Least time between two provisioning starts of one pool.
    pub refill_interval: String,
    /// Longest wait after failed provisions (the wait doubles from 1s up to this).
    pub max_backoff: String,
    /// How often ready members are checked to still exist on their backend.
    pub probe_interval: String,
}

impl Default for PoolsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            refill_concurrency: 2,
            refill_interval: "50ms".into(),
            max_backoff: "60s".into(),
            probe_interval: "5s".into(),
        }
    }
}

/// `[pools]`, checked.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub enabled: bool,
    /// At least 1.
    pub refill_concurrency: u32,
    pub refill_interval: Duration,
    /// At least 1s.
    pub max_backoff: Duration,
    /// More than zero.
    pub probe_interval: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            refill_concurrency: 2,
            refill_interval: Duration::from_millis(50),
            max_backoff: Duration::from_secs(60),
            probe_interval: Duration::from_secs(5),
        }
    }
}

/// `[credits]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CreditsConfig {
    /// `true`: a create reserves its estimate and an extend the extra, or is
    /// refused with 402; metering never debits past what a sandbox holds.
    /// `false`: usage is metered and debited all the same, and a balance may
    /// go below zero.
    pub enforce: bool,
    /// What happens to a project's running sandboxes (those with a price)
    /// when its balance reaches zero: `none` (the default: they run on),
    /// `pause` (resumed when credits are granted), `snapshot_and_destroy`
    /// (an exit snapshot, then teardown) or `destroy`. Termination reason
    /// `credits_exhausted`.
    pub on_exhausted: OnExhausted,
}

/// `[credits] on_exhausted`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    #[default]
    None,
    Pause,
    SnapshotAndDestroy,
    Destroy,
}

/// One `[[tokens]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Hex SHA-256 of the bearer token (`sandboxctl token new` prints it).
    pub token_sha256: String,
    /// `adm` | `agt` | `atm`.
    pub actor_type: String,
    pub actor: String,
    pub project: String,
    /// `consumer` | `operator`.
    pub role: String,
}

/// `[limits]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Sustained requests per second allowed per token (0: no limit).
    pub requests_per_second: u32,
    /// Requests a token may make at once above the sustained rate.
    pub burst: u32,
    /// Most live (requested, provisioning, ready, active) sandboxes per project (0: no cap).
    pub live_sandboxes_per_project: u32,
    /// How long a client may take to send a request's headers; on HTTP/1 it
    /// also bounds how long a keep-alive connection waits for its next request.
    pub header_read_timeout: String,
    /// A connection with no request in flight for this long is closed
    /// (a request in flight, a long-poll included, is never cut).
    pub idle_timeout: String,
    /// Most open connections from one client IP address (0: no cap); one
    /// more is answered 429 `too_many_connections` and closed.
    pub max_connections_per_client: u32,
}

/// The HTTP connection limits of `[limits]`, checked.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// 0: no cap.
    pub max_connections_per_client: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections_per_client: 4096,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            requests_per_second: 50,
            burst: 200,
            live_sandboxes_per_project: 200,
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_connections_per_client: 4096,
        }
    }
}

/// Where a named secret's value is read from, at provision time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    /// An environment variable of the daemon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    /// A file (its content, trailing newline removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

/// A configured token: the hash to compare against and who it stands for.
#[derive(Debug, Clone)]
pub struct TokenEntry {
    pub sha256: [u8; 32],
    pub consumer: sandboxer_api::Consumer,
    pub operator: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7443".into(),
            data_dir: PathBuf::from("data"),
            profiles_dir: PathBuf::from("profiles"),
            extensions_dir: PathBuf::from("extensions"),
            log_format: "pretty".into(),
            provision_timeout: "60s".into(),
            shutdown_grace: "10s".into(),
            reaper_interval: "1s".into(),
            metering_interval: "10s".into(),
            stale_sweep_interval: "5m".into(),
            stale_grace: "15m".into(),
            state_hub_url: String::new(),
            snapshot_quota_per_project: 100,
            exit_snapshot_timeout: "5m".into(),
            input_roots: Vec::new(),
            tokens: Vec::new(),
            limits: Limits::default(),
            secrets: BTreeMap::new(),
            hosts: Vec::new(),
            credits: CreditsConfig::default(),
            pools: PoolsConfig::default(),
            local: LocalConfig::default(),
            access: AccessConfig::default(),
            ssh_gateway: SshGatewayConfig::default(),
            egress: EgressConfig::default(),
        }
    }
}

/// Values given on the command line; each wins over file and environment.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub profiles_dir: Option<PathBuf>,
    pub extensions_dir: Option<PathBuf>,
    pub log_format: Option<String>,
}

/// Configuration checked and parsed.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub profiles_dir: PathBuf,
    pub extensions_dir: PathBuf,
    pub json_logs: bool,
    pub provision_timeout: Duration,
    pub shutdown_grace: Duration,
    pub reaper_interval: Duration,
    /// How often running sandboxes are metered.
    pub metering_interval: Duration,
    /// How often hosts are swept for stale resources (zero: never).
    pub stale_sweep_interval: Duration,
    /// How long something must be seen stale before the sweep reaps it.
    pub stale_grace: Duration,
    pub state_hub_url: Option<String>,
    /// Most snapshots (`creating` or `ready`) one project may hold.
    pub snapshot_quota_per_project: u32,
    pub exit_snapshot_timeout: Duration,
    /// `input_roots`, absolute and canonical (symlinks resolved).
    pub input_roots: Vec<PathBuf>,
    pub tokens: Vec<TokenEntry>,
    pub limits: Limits,
    /// Connection limits of `[limits]`.
    pub http: HttpLimits,
    pub secrets: BTreeMap<String, SecretSource>,
    /// Placement hosts, checked.
    pub hosts: Vec<crate::hosts::Host>,
    /// Credit enforcement (`[credits]`).
    pub credits: CreditsConfig,
    /// Warm pools (`[pools]`).
    pub pools: PoolSettings,
    /// `[local]`, checked.
    pub local: LocalConfig,
    /// `[access]`, checked.
    pub access: AccessSettings,
    /// `[ssh_gateway]`, checked; `None`: off.
    pub ssh_gateway: Option<SshGatewaySettings>,
    /// `[egress]`, checked.
    pub egress: EgressSettings,
}

/// `SANDBOXER_*` variables that are not configuration keys: they are read
/// elsewhere (`--config`, the log filter, crash points, `sandboxctl`'s).
pub const NOT_CONFIG_VARS: &[&str] = &[
    "SANDBOXER_CONFIG",
    "SANDBOXER_LOG",
    "SANDBOXER_FAULT",
    "SANDBOXER_URL",
    "SANDBOXER_TOKEN",
    "SANDBOXER_TEST_VENV",
];

/// Whether `var` is one Kubernetes (service links) or Docker (`--link`)
/// puts into a container's environment for a service named `sandboxer`:
/// `SANDBOXER_SERVICE_HOST`, `SANDBOXER_SERVICE_PORT…`, `SANDBOXER_PORT`,
/// `SANDBOXER_PORT_7443_TCP…`.
fn is_service_link(var: &str) -> bool {
    var.starts_with("SANDBOXER_SERVICE_")
        || var == "SANDBOXER_PORT"
        || var
            .strip_prefix("SANDBOXER_PORT_")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// The configuration variables of this process's environment.
pub fn config_vars() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("SANDBOXER_")
                && !NOT_CONFIG_VARS.contains(&k.as_str())
                && !is_service_link(k)
        })
        .collect()
}

/// The key path a `SANDBOXER_*` variable sets (`SANDBOXER_LIMITS__BURST` →
/// `limits.burst`).
fn var_key(var: &str) -> String {
    var.trim_start_matches("SANDBOXER_")
        .to_ascii_lowercase()
        .replace("__", ".")
}

impl Config {
    /// Layer defaults, `file`, the environment and `overrides`.
    pub fn load(file: Option<&Path>, overrides: Overrides) -> anyhow::Result<Config> {
        Self::load_with(file, &config_vars(), overrides)
    }

    /// [`Config::load`] with the configuration variables `env` instead of
    /// this process's. An unknown key or a bad value stops the load naming
    /// where it came from: the file (with its line) or the variable.
    pub fn load_with(
        file: Option<&Path>,
        env: &[(String, String)],
        overrides: Overrides,
    ) -> anyhow::Result<Config> {
        let mut builder =
            config::Config::builder().add_source(config::Config::try_from(&Config::default())?);
        if let Some(path) = file {
            if !path.is_file() {
                anyhow::bail!("config file {}: not found or not a file", path.display());
            }
            // The file alone first, strictly: an error names its line.
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?;
            if let Err(e) = toml::from_str::<Config>(&text) {
                anyhow::bail!("config file {}: {e}", path.display());
            }
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        let vars: std::collections::HashMap<String, String> = env.iter().cloned().collect();
        builder = builder.add_source(
            config::Environment::with_prefix("SANDBOXER")
                .prefix_separator("_")
                .separator("__")
                .source(Some(vars)),
        );
        let mut cfg: Config = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| {
                // The file passed alone: the environment is at fault.
                let text = e.to_string();
                // An unknown key is named right after "unknown field": the
                // variable whose last level is that name; else a variable
                // whose key the message names.
                let unknown = text
                    .split_once("unknown field `")
                    .and_then(|(_, rest)| rest.split_once('`'))
                    .map(|(name, _)| name.to_owned());
                let last_of = |k: &str| {
                    let key = var_key(k);
                    key.rsplit('.').next().unwrap_or(&key).to_owned()
                };
                let named = match &unknown {
                    Some(name) => env.iter().map(|(k, _)| k).find(|k| last_of(k) == *name),
                    None => env.iter().map(|(k, _)| k).find(|k| {
                        text.contains(&format!("`{}`", var_key(k))) || text.contains(&var_key(k))
                    }),
                };
                match named {
                    Some(var) => anyhow::anyhow!("environment variable {var}: {e}"),
                    None => {
                        anyhow::anyhow!("config from the environment (SANDBOXER_* variables): {e}")
                    }
                }
            })?;
        if let Some(v) = overrides.listen {
            cfg.listen = v;
        }
        if let Some(v) = overrides.data_dir {
            cfg.data_dir = v;
        }
        if let Some(v) = overrides.profiles_dir {
            cfg.profiles_dir = v;
        }
        if let Some(v) = overrides.extensions_dir {
            cfg.extensions_dir = v;
        }
        if let Some(v) = overrides.log_format {
            cfg.log_format = v;
        }
        Ok(cfg)
    }

    /// Check every value; errors name the key.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let listen: SocketAddr = self.listen.parse().map_err(|e| {
            anyhow::anyhow!("config `listen`: `{}` is not an address ({e})", self.listen)
        })?;
        let dur = |key: &str, v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| anyhow::anyhow!("config `{key}`: `{v}` is not a duration ({e})"))
        };
        let json_logs = match self.log_format.as_str() {
            "json" => true,
            "pretty" => false,
            other => anyhow::bail!("config `log_format`: `{other}` is not `pretty` or `json`"),
        };
        Ok(Settings {
            listen,
            data_dir: absolute(&self.data_dir)?,
            profiles_dir: absolute(&self.profiles_dir)?,
            extensions_dir: absolute(&self.extensions_dir)?,
            json_logs,
            provision_timeout: dur("provision_timeout", &self.provision_timeout)?,
            shutdown_grace: dur("shutdown_grace", &self.shutdown_grace)?,
            reaper_interval: match dur("reaper_interval", &self.reaper_interval)? {
                d if d.is_zero() => {
                    anyhow::bail!("config `reaper_interval`: must be more than zero")
                }
                d => d,
            },
            metering_interval: match dur("metering_interval", &self.metering_interval)? {
                d if d.is_zero() => {
                    anyhow::bail!("config `metering_interval`: must be more than zero")
                }
                d => d,
            },
            stale_sweep_interval: dur("stale_sweep_interval", &self.stale_sweep_interval)?,
            stale_grace: dur("stale_grace", &self.stale_grace)?,
            state_hub_url: match self.state_hub_url.trim() {
                "" => None,
                url if url.starts_with("http://") || url.starts_with("https://") => {
                    Some(url.to_owned())
                }
                other => anyhow::bail!(
                    "config `state_hub_url`: `{other}` is not an http:// or https:// URL"
                ),
            },
            snapshot_quota_per_project: self.snapshot_quota_per_project,
            exit_snapshot_timeout: match dur("exit_snapshot_timeout", &self.exit_snapshot_timeout)? {
                d if d.is_zero() => anyhow::bail!("config `exit_snapshot_timeout`: must be more than zero"),
                d => d,
            },
            tokens: self
                .tokens
                .iter()
                .enumerate()
                .map(|(i, t)| t.entry(i))
                .collect::<anyhow::Result<_>>()?,
            limits: self.limits.clone(),
            http: self.limits.http()?,
            input_roots: self
                .input_roots
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let key = format!("config `input_roots[{i}]`");
                    if !r.is_absolute() {
                        anyhow::bail!("{key}: `{}` is not an absolute path", r.display());
                    }
                    r.canonicalize().map_err(|e| {
                        anyhow::anyhow!("{key}: `{}` cannot be resolved ({e})", r.display())
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            secrets: {
                for (name, src) in &self.secrets {
                    if src.env.is_some() == src.file.is_some() {
                        anyhow::bail!(
                            "config `secrets.{name}`: give exactly one of `env` or `file`"
                        );
                    }
                }
                self.secrets.clone()
            },
            hosts: crate::hosts::check_all(&self.hosts)?,
            credits: self.credits.clone(),
            pools: self.pools.settings()?,
            local: match self.local.clone() {
                LocalConfig { sandbox_uid: 0, .. } => anyhow::bail!(
                    "config `local.sandbox_uid`: must not be 0 (sandboxes would own the host's root files)"
                ),
                LocalConfig { sandbox_gid: 0, .. } => anyhow::bail!(
                    "config `local.sandbox_gid`: must not be 0 (sandboxes would own the host's root-group files)"
                ),
                LocalConfig {
                    cgroup_parent: Some(p),
                    ..
                } if !p.starts_with('/') || p.split('/').any(|c| c == "..") => anyhow::bail!(
                    "config `local.cgroup_parent`: `{p}` must be an absolute path inside the cgroup hierarchy, without `..`"
                ),
                ok => ok,
            },
            access: self.access.settings()?,
            ssh_gateway: self.ssh_gateway.settings()?,
            egress: self.egress.settings()?,
        })
    }
}

impl Limits {
    fn http(&self) -> anyhow::Result<HttpLimits> {
        let dur = |key: &str, v: &str| positive_duration("limits", key, v);
        Ok(HttpLimits {
            header_read_timeout: dur("header_read_timeout", &self.header_read_timeout)?,
            idle_timeout: dur("idle_timeout", &self.idle_timeout)?,
            max_connections_per_client: self.max_connections_per_client,
        })
    }
}

impl PoolsConfig {
    fn settings(&self) -> anyhow::Result<PoolSettings> {
        let dur = |key: &str, v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| anyhow::anyhow!("config `pools.{key}`: `{v}` is not a duration ({e})"))
        };
        if !(1..=64).contains(&self.refill_concurrency) {
            anyhow::bail!(
                "config `pools.refill_concurrency`: `{}` is not from 1 to 64",
                self.refill_concurrency
            );
        }
        let max_backoff = dur("max_backoff", &self.max_backoff)?;
        if max_backoff < Duration::from_secs(1) {
            anyhow::bail!("config `pools.max_backoff`: must be at least 1s");
        }
        let probe_interval = dur("probe_interval", &self.probe_interval)?;
        if probe_interval.is_zero() {
            anyhow::bail!("config `pools.probe_interval`: must be more than zero");
        }
        Ok(PoolSettings {
            enabled: self.enabled,
            refill_concurrency: self.refill_concurrency,
            refill_interval: dur("refill_interval", &self.refill_interval)?,
            max_backoff,
            probe_interval,
        })
    }
}

impl TokenConfig {
    fn entry(&self, i: usize) -> anyhow::Result<TokenEntry> {
        let key = |field: &str| format!("config `tokens[{i}].{field}`");
        let digest = self.token_sha256.trim();
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            anyhow::bail!(
                "{}: must be 64 hex digits (the SHA-256 of the token)",
                key("token_sha256")
            );
        }
        let mut sha256 = [0u8; 32];
        hex::decode_to_slice(digest, &mut sha256)?;
        if !matches!(self.actor_type.as_str(), "adm" | "agt" | "atm") {
            anyhow::bail!(
                "{}: `{}` is not adm, agt or atm",
                key("actor_type"),
                self.actor_type
            );
        }
        let operator = match self.role.as_str() {
            "operator" => true,
            "consumer" => false,
            other => anyhow::bail!("{}: `{other}` is not consumer or operator", key("role")),
        };
        for (field, v) in [("actor", &self.actor), ("project", &self.project)] {
            if v.is_empty() {
                anyhow::bail!("{}: must not be empty", key(field));
            }
        }
        Ok(TokenEntry {
            sha256,
            consumer: sandboxer_api::Consumer {
                actor_type: self.actor_type.clone(),
                actor: self.actor.clone(),
                project: self.project.clone(),
            },
            operator,
        })
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    let joined = if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()?.join(p)
    };
    Ok(lexical(&joined))
}

/// `p` without `.` components, and with `dir/..` taken away (by the text,
/// not following links: the path as written, in canonical form).
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            // `/..` is `/`; a relative path keeps a leading `..`.
            Component::ParentDir => {
                if !out.pop() && !out.has_root() {
                    out.push(c);
                }
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> anyhow::Result<Settings> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("sandboxerd.toml");
        std::fs::write(&path, text)?;
        Config::load(Some(&path), Overrides::default())?.settings()
    }

    #[test]
    fn paths_are_kept_in_canonical_form() {
        assert_eq!(lexical(Path::new("/x/./data")), PathBuf::from("/x/data"));
        assert_eq!(
            lexical(Path::new("/x/y/../data/.")),
            PathBuf::from("/x/data")
        );
        assert_eq!(lexical(Path::new("/../data")), PathBuf::from("/data"));
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            absolute(Path::new("./data")).expect("abs"),
            cwd.join("data")
        );
    }

    fn load_err(file: Option<&str>, env: &[(&str, &str)]) -> String {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("typo.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).expect("write");
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let err = Config::load_with(file.map(|_| path.as_path()), &env, Overrides::default())
            .and_then(|c| c.settings().map(|_| ()))
            .expect_err("must not load");
        format!("{err:#}")
    }

    #[test]
    fn an_unknown_key_stops_the_load_naming_its_source() {
        // In the file, top level and in a section: the file and the line.
        for (text, key, line) in [
            (
                "listen = \"127.0.0.1:7443\"\nreaper_intervall = \"2s\"\n",
                "reaper_intervall",
                "line 2",
            ),
            ("profile_dir = \"p\"\n", "profile_dir", "line 1"),
            ("[limits]\nburst = 3\nburstt = 3\n", "burstt", "line 3"),
        ] {
            let err = load_err(Some(text), &[]);
            assert!(
                err.contains("typo.toml") && err.contains(key) && err.contains(line),
                "{text}: {err}"
            );
        }
        // In the environment: the variable, not the file.
        let err = load_err(
            Some("[limits]\nburst = 3\n"),
            &[("SANDBOXER_LIMITS__BURSTT", "3")],
        );
        assert!(
            err.contains("SANDBOXER_LIMITS__BURSTT") && !err.contains("typo.toml"),
            "{err}"
        );
        let err = load_err(
            None,
            &[
                ("SANDBOXER_DATA_DIR", "/srv/x"),
                ("SANDBOXER_REAPER_INTERVALL", "2s"),
                ("SANDBOXER_LISTEN", "127.0.0.1:1"),
            ],
        );
        assert!(
            err.contains("SANDBOXER_REAPER_INTERVALL")
                && !err.contains("SANDBOXER_DATA_DIR")
                && !err.contains("SANDBOXER_LISTEN"),
            "{err}"
        );
        for link in [
            "SANDBOXER_SERVICE_HOST",
            "SANDBOXER_PORT",
            "SANDBOXER_PORT_7443_TCP_ADDR",
        ] {
            assert!(is_service_link(link), "{link}");
        }
        assert!(!is_service_link("SANDBOXER_PORTS"));
        // A bad value in a variable names it too.
        let err = load_err(None, &[("SANDBOXER_SNAPSHOT_QUOTA_PER_PROJECT", "many")]);
        assert!(
            err.contains("SANDBOXER_SNAPSHOT_QUOTA_PER_PROJECT"),
            "{err}"
        );
        // What is not configuration is not read as configuration.
        for var in NOT_CONFIG_VARS {
            assert!(var.starts_with("SANDBOXER_"));
        }
        let ok = Config::load_with(
            None,
            &[("SANDBOXER_LIMITS__BURST".into(), "7".into())],
            Overrides::default(),
        )
        .expect("a known variable loads");
        assert_eq!(ok.limits.burst, 7);
    }

    #[test]
    fn the_example_configuration_loads_with_the_default_pool_settings() {
        let s = from_toml(EXAMPLE_CONFIG).expect("the shipped example loads");
        let d = PoolSettings::default();
        assert_eq!(
            (
                s.pools.enabled,
                s.pools.refill_concurrency,
                s.pools.refill_interval,
                s.pools.max_backoff,
                s.pools.probe_interval
            ),
            (
                d.enabled,
                d.refill_concurrency,
                d.refill_interval,
                d.max_backoff,
                d.probe_interval
            )
        );
    }

    #[test]
    fn the_example_configuration_loads_with_the_default_connection_limits() {
        let s = from_toml(EXAMPLE_CONFIG).expect("the shipped example loads");
        let d = HttpLimits::default();
        assert_eq!(
            (
                s.http.header_read_timeout,
                s.http.idle_timeout,
                s.http.max_connections_per_client
            ),
            (
                d.header_read_timeout,
                d.idle_timeout,
                d.max_connections_per_client
            )
        );
        assert!(s.input_roots.is_empty());
    }

    #[test]
    fn bad_pool_settings_name_the_key() {
        for (text, key) in [
            (
                "[pools]\nrefill_concurrency = 0\n",
                "pools.refill_concurrency",
            ),
            (
                "[pools]\nrefill_interval = \"soon\"\n",
                "pools.refill_interval",
            ),
            ("[pools]\nmax_backoff = \"10ms\"\n", "pools.max_backoff"),
            ("[pools]\nprobe_interval = \"0s\"\n", "pools.probe_interval"),
            ("[pools]\nsize = 3\n", "size"),
            (
                "[limits]\nheader_read_timeout = \"0s\"\n",
                "limits.header_read_timeout",
            ),
            ("[limits]\nidle_timeout = \"soon\"\n", "limits.idle_timeout"),
            ("input_roots = [\"srv/repos\"]\n", "input_roots[0]"),
        ] {
            let err = format!("{:#}", from_toml(text).expect_err(text));
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

/// `[access]`: limits of exec, processes, files and ports (API v1.1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// The in-sandbox agent binary; empty: `sandboxer-agent` next to the
    /// daemon's own executable, else on `PATH`.
    pub agent: String,
    /// Output kept per stream of an exec answered as JSON (the rest is
    /// dropped and `stdout_truncated`/`stderr_truncated` set).
    pub exec_output_max: String,
    /// Output passed on per stream of a streamed exec.
    pub exec_stream_output_max: String,
    /// An exec's `timeout` when the request gives none.
    pub exec_timeout: String,
    /// The longest `timeout` an exec may ask for.
    pub exec_timeout_max: String,
    /// Execs running at once in one sandbox; one more is answered 429 `too_many_execs`.
    pub max_concurrent_execs: u32,
    /// Background processes kept per sandbox (running and exited).
    pub max_processes: u32,
    /// Output kept per background process (the newest).
    pub process_log_max: String,
    /// Largest file `PUT …/files` writes.
    pub file_max: String,
    /// Largest archive `POST …/files/upload` takes.
    pub upload_max: String,
    /// Most entries `GET …/files/list` returns.
    pub list_max_entries: u32,
    /// How long the daemon waits for the agent to accept a request and answer it.
    pub agent_timeout: String,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self {
            agent: String::new(),
            exec_output_max: "1MiB".into(),
            exec_stream_output_max: "1GiB".into(),
            exec_timeout: "60s".into(),
            exec_timeout_max: "24h".into(),
            max_concurrent_execs: 128,
            max_processes: 256,
            process_log_max: "64MiB".into(),
            file_max: "4GiB".into(),
            upload_max: "4GiB".into(),
            list_max_entries: 10_000,
            agent_timeout: "10s".into(),
        }
    }
}

/// `[access]`, checked.
#[derive(Debug, Clone)]
pub struct AccessSettings {
    /// Set when the daemon starts (see [`AccessConfig::agent`]).
    pub agent: Option<PathBuf>,
    pub exec_output_max: u64,
    pub exec_stream_output_max: u64,
    pub exec_timeout: Duration,
    pub exec_timeout_max: Duration,
    pub max_concurrent_execs: u32,
    pub max_processes: u32,
    pub process_log_max: u64,
    pub file_max: u64,
    pub upload_max: u64,
    pub list_max_entries: u32,
    pub agent_timeout: Duration,
}

impl Default for AccessSettings {
    fn default() -> Self {
        // The defaults are valid: this cannot fail.
        AccessConfig::default()
            .settings()
            .unwrap_or_else(|e| panic!("default [access] settings: {e}"))
    }
}

impl AccessConfig {
    fn settings(&self) -> anyhow::Result<AccessSettings> {
        let dur = |key: &str, v: &str| positive_duration("access", key, v);
        let size = |key: &str, v: &str| match parse_size(v) {
            Some(n) if n > 0 => Ok(n),
            _ => Err(anyhow::anyhow!(
                "config `access.{key}`: `{v}` is not a size above zero (e.g. `1MiB`, `4GiB`)"
            )),
        };
        let count = |key: &str, v: u32| {
            if v == 0 {
                anyhow::bail!("config `access.{key}`: must be at least 1");
            }
            Ok(v)
        };
        let agent = match self.agent.trim() {
            "" => None,
            p => {
                let p = PathBuf::from(p);
                if !p.is_absolute() {
                    anyhow::bail!(
                        "config `access.agent`: `{}` is not an absolute path",
                        p.display()
                    );
                }
                Some(p)
            }
        };
        let exec_timeout = dur("exec_timeout", &self.exec_timeout)?;
        let exec_timeout_max = dur("exec_timeout_max", &self.exec_timeout_max)?;
        if exec_timeout > exec_timeout_max {
            anyhow::bail!("config `access.exec_timeout`: longer than `access.exec_timeout_max`");
        }
        Ok(AccessSettings {
            agent,
            exec_output_max: size("exec_output_max", &self.exec_output_max)?,
            exec_stream_output_max: size("exec_stream_output_max", &self.exec_stream_output_max)?,
            exec_timeout,
            exec_timeout_max,
            max_concurrent_execs: count("max_concurrent_execs", self.max_concurrent_execs)?,
            max_processes: count("max_processes", self.max_processes)?,
            process_log_max: size("process_log_max", &self.process_log_max)?,
            file_max: size("file_max", &self.file_max)?,
            upload_max: size("upload_max", &self.upload_max)?,
            list_max_entries: count("list_max_entries", self.list_max_entries)?,
            agent_timeout: dur("agent_timeout", &self.agent_timeout)?,
        })
    }
}

/// `[ssh_gateway]`: SSH into sandboxes with keys registered per sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SshGatewayConfig {
    /// Address to accept SSH on (`0.0.0.0:2222`); empty: no gateway.
    pub listen: String,
    /// Host name clients are told to connect to (`reachability.ssh.host`);
    /// empty: the `listen` address.
    pub advertise_host: String,
    /// The SFTP server run inside a sandbox for the `sftp` subsystem.
    pub sftp_server: String,
}

impl Default for SshGatewayConfig {
    fn default() -> Self {
        Self {
            listen: String::new(),
            advertise_host: String::new(),
            sftp_server: "/usr/lib/openssh/sftp-server".into(),
        }
    }
}

/// `[ssh_gateway]`, checked.
#[derive(Debug, Clone)]
pub struct SshGatewaySettings {
    pub listen: SocketAddr,
    pub advertise_host: Option<String>,
    pub sftp_server: PathBuf,
}

impl SshGatewayConfig {
    fn settings(&self) -> anyhow::Result<Option<SshGatewaySettings>> {
        let listen = self.listen.trim();
        if listen.is_empty() {
            return Ok(None);
        }
        let listen: SocketAddr = listen.parse().map_err(|e| {
            anyhow::anyhow!("config `ssh_gateway.listen`: `{listen}` is not an address ({e})")
        })?;
        let sftp_server = PathBuf::from(self.sftp_server.trim());
        if !sftp_server.is_absolute() {
            anyhow::bail!(
                "config `ssh_gateway.sftp_server`: `{}` is not an absolute path",
                sftp_server.display()
            );
        }
        let host = self.advertise_host.trim();
        Ok(Some(SshGatewaySettings {
            listen,
            advertise_host: (!host.is_empty()).then(|| host.to_string()),
            sftp_server,
        }))
    }
}

/// `[egress]`: the filtering proxy through which `network: {mode: egress}`
/// sandboxes reach out (see `docs/network.md`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EgressConfig {
    /// Names the proxy resolves to fixed addresses instead of asking DNS,
    /// like curl's `--resolve` (`"mirror.internal" = "10.0.0.5"`, or a
    /// list). Addresses given here are trusted: an internal one is reached
    /// without an `allow` range naming it (the daemon's own ports never).
    pub resolve: BTreeMap<String, OneOrMany>,
    /// The port inside each sandbox where the agent relays to the proxy
    /// (`HTTP_PROXY=http://127.0.0.1:<port>`).
    pub proxy_port: u16,
    /// How long connecting to a destination may take.
    pub connect_timeout: String,
    /// How long a client may take to send its request head.
    pub head_timeout: String,
    /// Connections through the proxy open at once per sandbox; one more is answered 503.
    pub max_connections: u32,
    /// The same over every sandbox (each holds about six descriptors).
    pub max_connections_total: u32,
    /// Decisions kept per sandbox for `GET /v1/sandboxes/{id}/network-log`.
    pub log_entries: u32,
}

/// One value or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn values(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

impl Default for EgressConfig {
    fn default() -> Self {
        Self {
            resolve: BTreeMap::new(),
            proxy_port: 3128,
            connect_timeout: "10s".into(),
            head_timeout: "10s".into(),
            max_connections: 256,
            max_connections_total: 4096,
            log_entries: 1000,
        }
    }
}

/// `[egress]`, checked.
#[derive(Debug, Clone)]
pub struct EgressSettings {
    /// Names (normalised) and their fixed addresses.
    pub resolve: BTreeMap<String, Vec<std::net::IpAddr>>,
    pub proxy_port: u16,
    pub connect_timeout: Duration,
    pub head_timeout: Duration,
    pub max_connections: u32,
    pub max_connections_total: u32,
    pub log_entries: u32,
}

impl Default for EgressSettings {
    fn default() -> Self {
        // The defaults are valid: this cannot fail.
        EgressConfig::default()
            .settings()
            .unwrap_or_else(|e| panic!("default [egress] settings: {e}"))
    }
}

impl EgressConfig {
    fn settings(&self) -> anyhow::Result<EgressSettings> {
        let dur = |key: &str, v: &str| positive_duration("egress", key, v);
        let mut resolve = BTreeMap::new();
        for (name, addrs) in &self.resolve {
            let Some(key) = sandboxer_api::normalize_name(name) else {
                anyhow::bail!("config `egress.resolve`: `{name}` is not a host name");
            };
            let mut ips = Vec::new();
            for a in addrs.values() {
                ips.push(a.trim().parse::<std::net::IpAddr>().map_err(|e| {
                    anyhow::anyhow!(
                        "config `egress.resolve.{name}`: `{a}` is not an IP address ({e})"
                    )
                })?);
            }
            if ips.is_empty() {
                anyhow::bail!("config `egress.resolve.{name}`: give at least one address");
            }
            resolve.insert(key, ips);
        }
        if self.proxy_port == 0 {
            anyhow::bail!("config `egress.proxy_port`: must be from 1 to 65535");
        }
        for (key, v) in [
            ("max_connections", self.max_connections),
            ("max_connections_total", self.max_connections_total),
            ("log_entries", self.log_entries),
        ] {
            if v == 0 {
                anyhow::bail!("config `egress.{key}`: must be at least 1");
            }
        }
        Ok(EgressSettings {
            resolve,
            proxy_port: self.proxy_port,
            connect_timeout: dur("connect_timeout", &self.connect_timeout)?,
            head_timeout: dur("head_timeout", &self.head_timeout)?,
            max_connections: self.max_connections,
            max_connections_total: self.max_connections_total,
            log_entries: self.log_entries,
        })
    }
}

/// `v` of key `section.key` as a duration above zero; the error names the key.
fn positive_duration(section: &str, key: &str, v: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(v)
        .map_err(|e| anyhow::anyhow!("config `{section}.{key}`: `{v}` is not a duration ({e})"))?;
    if d.is_zero() {
        anyhow::bail!("config `{section}.{key}`: must be more than zero");
    }
    Ok(d)
}

/// A byte size: a whole number with an optional unit `B`, `KB`/`MB`/`GB`/`TB`
/// (powers of 1000) or `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024).
// Not `bytesize`'s parser: it also takes fractions (`1.5GiB`), any letter
// case and bare `k`/`m`/`g`, and turns an overflow into `u64::MAX`, so a
// mistyped `max_size` would load as unlimited instead of being refused.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1000_u64.pow(2),
        "GB" => 1000_u64.pow(3),
        "TB" => 1000_u64.pow(4),
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(factor)
}
