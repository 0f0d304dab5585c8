//! The catalog: profiles and extensions loaded from YAML at start and
//! validated against each other and against the backends compiled in.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxer_api::{ExtensionSpec, Isolation, Profile};

use crate::extensions::Registry;

/// A catalog file that cannot be used; names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct CatalogError {
    pub path: PathBuf,
    pub message: String,
}

/// A profile with its durations parsed.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub spec: Profile,
    pub ttl_default: Duration,
    pub ttl_max: Duration,
    pub idle_reap: Option<Duration>,
    /// `snapshot.max_size` in bytes: the most a capture may archive (before compression).
    pub snapshot_max_bytes: u64,
    /// `snapshot.ttl`: how long a snapshot of this profile is kept.
    pub snapshot_ttl: Duration,
    /// `pool`, checked: `None` when the profile keeps no warm pool (or `size: 0`).
    pub pool: Option<PoolPolicy>,
}

/// A profile's warm pool with its duration parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPolicy {
    /// Ready, unassigned sandboxes to keep (1 to [`MAX_POOL_SIZE`]).
    pub size: u32,
    /// How long an unassigned sandbox may wait before it is replaced.
    pub max_age: Duration,
}

/// The largest `pool.size` a profile may declare.
pub const MAX_POOL_SIZE: u32 = 256;
/// The shortest `pool.max_age` a profile may declare.
pub const MIN_POOL_MAX_AGE: Duration = Duration::from_secs(1);

/// `snapshot.max_size` when a profile names none (2 GiB).
pub const DEFAULT_SNAPSHOT_MAX_BYTES: u64 = 2 << 30;

/// Profiles and extensions by id.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub profiles: BTreeMap<String, LoadedProfile>,
    pub extensions: BTreeMap<String, ExtensionSpec>,
    /// Profiles left out because their extension cannot enforce what they
    /// ask (an isolation or network mode it does not offer): id → why, with
    /// the file and the field. The daemon starts without them.
    pub rejected: BTreeMap<String, String>,
}

impl Catalog {
    /// Bind the entries that name another `backend` or carry `options` to
    /// configured instances of that backend, registered in `registry` under
    /// the entry's id. Errors name the entry and the option.
    pub fn bind_backends(&self, registry: &mut Registry) -> Result<(), String> {
        for spec in self.extensions.values() {
            let backend = spec.backend.as_deref().unwrap_or(&spec.id);
            if backend == spec.id && spec.options.is_empty() {
                continue;
            }
            let Some(base) = registry.get(backend) else {
                return Err(format!(
                    "extension {}: field `backend`: no backend `{backend}` is built in",
                    spec.id
                ));
            };
            // Ids of catalog entries live as long as the daemon; an entry is
            // bound once at start.
            let id: &'static str = Box::leak(spec.id.clone().into_boxed_str());
            match base.instance(id, &spec.options) {
                Some(Ok(ext)) => registry.insert(ext),
                Some(Err(e)) => return Err(format!("extension {}: field `options`: {e}", spec.id)),
                None => {
                    return Err(format!(
                        "extension {}: the `{backend}` backend takes no options and serves only its own id",
                        spec.id
                    ))
                }
            }
        }
        Ok(())
    }

    /// Load and cross-check both folders.
    pub fn load(
        profiles_dir: &Path,
        extensions_dir: &Path,
        registry: &Registry,
    ) -> Result<Catalog, CatalogError> {
        let mut catalog = Catalog::default();
        for (path, spec) in read_dir::<ExtensionSpec>(extensions_dir)? {
            let err = |message: String| CatalogError {
                path: path.clone(),
                message,
            };
            if !spec.id.starts_with("ext.") {
                return Err(err(format!(
                    "field `id`: `{}` must start with `ext.`",
                    spec.id
                )));
            }
            // An entry runs on the backend of its id, or the one it names.
            let backend = spec.backend.as_deref().unwrap_or(&spec.id);
            if registry.get(backend).is_none() {
                let known: Vec<&str> = registry.ids().collect();
                let field = if spec.backend.is_some() {
                    "backend"
                } else {
                    "id"
                };
                return Err(err(format!(
                    "field `{field}`: no backend named `{backend}` is built into this sandboxerd (built in: {})",
                    known.join(", ")
                )));
            }
            let code_snapshots = registry.get(backend).is_some_and(|e| e.can_snapshot());
            if (spec.capabilities.snapshot || spec.capabilities.restore) && !code_snapshots {
                return Err(err(format!(
                    "field `capabilities`: the `{}` backend built into this sandboxerd cannot snapshot or restore",
                    spec.id
                )));
            }
            if spec.pricing.credits_per_paused_hour > spec.pricing.credits_per_hour {
                return Err(err(
                    "field `pricing.credits_per_paused_hour`: at most `credits_per_hour` (a paused sandbox never costs more than a running one)".into(),
                ));
            }
            if spec.pricing.credits_per_hour < 0
                || spec.pricing.credits_per_snapshot_gib < 0
                || spec.pricing.credits_per_paused_hour < 0
            {
                return Err(err("field `pricing`: prices cannot be negative".into()));
            }
            if spec.pricing.credits_per_hour > crate::ledger::MAX_CREDITS_PER_HOUR {
                return Err(err(format!(
                    "field `pricing.credits_per_hour`: at most {}",
                    crate::ledger::MAX_CREDITS_PER_HOUR
                )));
            }
            if catalog
                .extensions
                .insert(spec.id.clone(), spec.clone())
                .is_some()
            {
                return Err(err(format!("field `id`: `{}` is defined twice", spec.id)));
            }
        }
        for (path, spec) in read_dir::<Profile>(profiles_dir)? {
            let loaded = validate_profile(&catalog, spec).map_err(|message| CatalogError {
                path: path.clone(),
                message,
            })?;
            let id = loaded.spec.id.clone();
            if let Some(why) = unenforceable(&catalog, &loaded.spec) {
                let why = format!("{}: {why}", path.display());
                tracing::error!(profile = %id, error = %why, "profile rejected: its extension cannot enforce it");
                if catalog.rejected.insert(id.clone(), why).is_some() {
                    return Err(CatalogError {
                        path,
                        message: format!("field `id`: `{id}` is defined twice"),
                    });
                }
                continue;
            }
            if catalog.rejected.contains_key(&id) {
                return Err(CatalogError {
                    path,
                    message: format!("field `id`: `{id}` is defined twice"),
                });
            }
            if catalog.profiles.insert(id.clone(), loaded).is_some() {
                return Err(CatalogError {
                    path,
                    message: format!("field `id`: `{id}` is defined twice"),
                });
            }
        }
        Ok(catalog)
    }
}

/// The smallest `resources.memory` a sandbox can start in.
const MIN_MEMORY: u64 = 16 << 20;

/// `resources`: sizes that parse, counts in range.
fn check_resources(r: &sandboxer_api::Resources) -> Result<(), String> {
    if let Some(c) = r.cpus {
        if !(c.is_finite() && (0.01..=1024.0).contains(&c)) {
            return Err(format!(
                "field `resources.cpus`: `{c}` is not from 0.01 to 1024"
            ));
        }
    }
    if let Some(m) = &r.memory {
        match parse_size(m) {
            Some(n) if n >= MIN_MEMORY => {}
            Some(_) => {
                return Err(format!(
                    "field `resources.memory`: `{m}` is less than 16MiB"
                ))
            }
            None => {
                return Err(format!(
                    "field `resources.memory`: `{m}` is not a size like `512MiB` or `2GiB`"
                ))
            }
        }
    }
    if let Some(d) = &r.disk {
        if parse_size(d).is_none_or(|n| n == 0) {
            return Err(format!(
                "field `resources.disk`: `{d}` is not a size like `1GiB` or `500MB`"
            ));
        }
    }
    if let Some(p) = r.pids {
        if !(8..=4_194_304).contains(&p) {
            return Err(format!(
                "field `resources.pids`: `{p}` is not from 8 to 4194304"
            ));
        }
    }
    Ok(())
}

/// `network`: rules that parse, and only where they mean something.
fn check_network(n: &sandboxer_api::NetworkPolicy) -> Result<(), String> {
    if n.mode != sandboxer_api::NetworkMode::Egress {
        for (field, list) in [("allow", &n.allow), ("deny", &n.deny)] {
            if !list.is_empty() {
                return Err(format!(
                    "field `network.{field}`: only with `mode: egress` (this profile says `{:?}`)",
                    n.mode
                ));
            }
        }
        return Ok(());
    }
    crate::egress::Policy::parse(n).map(|_| ())
}

fn validate_profile(catalog: &Catalog, spec: Profile) -> Result<LoadedProfile, String> {
    if !spec.id.starts_with("profile.") {
        return Err(format!(
            "field `id`: `{}` must start with `profile.`",
            spec.id
        ));
    }
    if spec.version == 0 {
        return Err("field `version`: must be 1 or more".into());
    }
    if !(1..=10_000).contains(&spec.price_factor_percent) {
        return Err(format!(
            "field `price_factor_percent`: `{}` is not from 1 to 10000",
            spec.price_factor_percent
        ));
    }
    let candidates = candidate_specs(catalog, &spec)?;
    let dur = |field: &str, v: &str| {
        humantime::parse_duration(v)
            .map_err(|e| format!("field `{field}`: `{v}` is not a duration ({e})"))
    };
    let ttl_default = dur("ttl.default", &spec.ttl.default)?;
    let ttl_max = dur("ttl.max", &spec.ttl.max)?;
    let idle_reap = spec
        .ttl
        .idle_reap
        .as_deref()
        .map(|v| dur("ttl.idle_reap", v))
        .transpose()?;
    if ttl_default.is_zero() || ttl_default > ttl_max {
        return Err("field `ttl.default`: must be more than zero and at most `ttl.max`".into());
    }
    check_resources(&spec.resources)?;
    check_network(&spec.network)?;
    crate::confine::seccomp::switches(&spec.security.allow)?;
    match (spec.workspace.mode.as_str(), &spec.workspace.from_input) {
        ("empty", None) => {}
        ("copy", Some(input)) if spec.inputs.contains_key(input) => {}
        ("copy", Some(input)) => {
            return Err(format!(
                "field `workspace.from_input`: `{input}` is not a declared input"
            ))
        }
        ("copy", None) => {
            return Err("field `workspace.from_input`: required with mode `copy`".into())
        }
        ("empty", Some(_)) => {
            return Err("field `workspace.from_input`: only with mode `copy`".into())
        }
        (other, _) => {
            return Err(format!(
                "field `workspace.mode`: `{other}` is not one of `empty`, `copy`"
            ))
        }
    }
    for host in spec.placement.prefer.iter().chain(&spec.placement.fallback) {
        if !candidates.iter().any(|ext| ext.hosts.contains(host)) {
            let ids: Vec<&str> = candidates.iter().map(|e| e.id.as_str()).collect();
            return Err(format!(
                "field `placement`: host `{host}` is not a host of {}",
                ids.join(" or ")
            ));
        }
    }
    // A container needs an image; only containers take one.
    let docker = candidates
        .iter()
        .any(|e| e.backend.as_deref().unwrap_or(&e.id) == crate::extensions::docker::ID);
    if spec.image.is_some() && spec.template.is_some() {
        return Err("field `template`: give `image` or `template`, not both".into());
    }
    if let Some(t) = &spec.template {
        if !crate::templates::valid_id(t) {
            return Err(
                "field `template`: a template id (lower-case letters, digits, `.`, `_`, `-`)"
                    .into(),
            );
        }
        if !docker {
            return Err("field `template`: only ext.docker runs templates; this profile's extensions do not".into());
        }
    }
    match (&spec.image, docker) {
        (None, true) if spec.extension.is_some() && spec.template.is_none() => {
            return Err("field `image`: ext.docker runs a container of an image; name one (e.g. `image: local/busybox`) or a `template`".into())
        }
        (Some(image), _) if image.trim().is_empty() || image.len() > 255 || image.chars().any(|c| c.is_whitespace() || c.is_control()) => {
            return Err("field `image`: an image reference (`name[:tag]`, `name@sha256:…`), without spaces".into())
        }
        (Some(_), false) => {
            return Err("field `image`: only ext.docker runs images; this profile's extensions do not".into())
        }
        _ => {}
    }
    if spec.ttl.on_expire == sandboxer_api::OnExpire::Snapshot {
        if let Some(ext) = candidates.iter().find(|e| !e.capabilities.snapshot) {
            return Err(format!(
                "field `ttl.on_expire`: `snapshot`, but {} cannot snapshot sandboxes",
                ext.id
            ));
        }
    }
    let snapshot_max_bytes = parse_size(&spec.snapshot.max_size)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            format!(
                "field `snapshot.max_size`: `{}` is not a size like `2GiB`, `500MB` or `64KiB`",
                spec.snapshot.max_size
            )
        })?;
    let snapshot_ttl = dur("snapshot.ttl", &spec.snapshot.ttl)?;
    if snapshot_ttl.is_zero() {
        return Err("field `snapshot.ttl`: must be more than zero".into());
    }
    let pool = match &spec.pool {
        None => None,
        Some(p) => {
            if p.size > MAX_POOL_SIZE {
                return Err(format!(
                    "field `pool.size`: `{}` is more than {MAX_POOL_SIZE}",
                    p.size
                ));
            }
            let max_age = dur("pool.max_age", &p.max_age)?;
            if max_age < MIN_POOL_MAX_AGE {
                return Err(format!(
                    "field `pool.max_age`: `{}` is shorter than {}",
                    p.max_age,
                    humantime::format_duration(MIN_POOL_MAX_AGE)
                ));
            }
            // A pooled sandbox is made before anyone asks for it, so it can
            // hold nothing a create supplies.
            let required: Vec<&str> = spec
                .inputs
                .iter()
                .filter(|(_, i)| i.required)
                .map(|(n, _)| n.as_str())
                .collect();
            if !required.is_empty() {
                return Err(format!(
                    "field `pool`: a pooled sandbox is made before any create, so it cannot take the required inputs {}",
                    required.join(", ")
                ));
            }
            if spec.workspace.mode != "empty" {
                return Err(format!(
                    "field `pool`: a pooled sandbox is made before any create, so its workspace cannot be filled from an input (`workspace.mode: {}`)",
                    spec.workspace.mode
                ));
            }
            (p.size > 0).then_some(PoolPolicy {
                size: p.size,
                max_age,
            })
        }
    };
    Ok(LoadedProfile {
        spec,
        ttl_default,
        ttl_max,
        idle_reap,
        snapshot_max_bytes,
        snapshot_ttl,
        pool,
    })
}

/// Why the extensions of a (well-formed) profile cannot enforce it: its
/// bound extension does not offer its isolation or network mode, or no
/// routing candidate offers them (with snapshots, where it requires them).
/// `None`: it can run.
fn unenforceable(catalog: &Catalog, spec: &Profile) -> Option<String> {
    let fits = |ext: &ExtensionSpec| {
        isolates_enough(&ext.capabilities.isolation, spec.isolation)
            && ext
                .capabilities
                .network_policies
                .contains(&spec.network.mode)
    };
    if let Some(id) = &spec.extension {
        let ext = catalog.extensions.get(id)?;
        if !ext.capabilities.isolation.contains(&spec.isolation) {
            return Some(format!(
                "field `isolation`: `{:?}` is not offered by {}",
                spec.isolation, ext.id
            ));
        }
        if !ext
            .capabilities
            .network_policies
            .contains(&spec.network.mode)
        {
            return Some(format!(
                "field `network.mode`: `{:?}` is not offered by {}",
                spec.network.mode, ext.id
            ));
        }
        return None;
    }
    let routing = spec.routing.as_ref()?;
    let usable = |id: &String| {
        catalog.extensions.get(id).is_some_and(|ext| {
            fits(ext)
                && (!routing.requires_snapshot
                    || (ext.capabilities.snapshot && ext.capabilities.restore))
        })
    };
    if routing.candidates.iter().any(usable) {
        return None;
    }
    Some(format!(
        "field `routing.candidates`: none offers isolation `{:?}` (or stronger) with network mode `{:?}`{}",
        spec.isolation,
        spec.network.mode,
        if routing.requires_snapshot {
            " and snapshots"
        } else {
            ""
        }
    ))
}

/// The extensions a profile may run on: its bound `extension`, or its
/// routing candidates. Exactly one of the two must be given. Whether they
/// can enforce it is [`unenforceable`]'s question (the router skips
/// candidates that cannot).
fn candidate_specs<'a>(
    catalog: &'a Catalog,
    spec: &Profile,
) -> Result<Vec<&'a ExtensionSpec>, String> {
    match (&spec.extension, &spec.routing) {
        (Some(_), Some(_)) => {
            Err("fields `extension` and `routing`: give exactly one of them, not both".into())
        }
        (None, None) => {
            Err("field `extension`: required (or `routing` with a policy and candidates)".into())
        }
        (Some(id), None) => {
            let Some(ext) = catalog.extensions.get(id) else {
                return Err(format!(
                    "field `extension`: `{id}` is not in the extension catalog"
                ));
            };
            Ok(vec![ext])
        }
        (None, Some(routing)) => {
            if routing.candidates.is_empty() {
                return Err("field `routing.candidates`: name at least one extension".into());
            }
            let mut found = Vec::new();
            for (i, id) in routing.candidates.iter().enumerate() {
                if routing.candidates[..i].contains(id) {
                    return Err(format!(
                        "field `routing.candidates[{i}]`: `{id}` is listed twice"
                    ));
                }
                let Some(ext) = catalog.extensions.get(id) else {
                    return Err(format!(
                        "field `routing.candidates[{i}]`: `{id}` is not in the extension catalog"
                    ));
                };
                found.push(ext);
            }
            Ok(found)
        }
    }
}

impl LoadedProfile {
    /// The extensions this profile may run on: the bound one, or the
    /// routing candidates in listed order.
    pub fn candidates(&self) -> Vec<&str> {
        match (&self.spec.extension, &self.spec.routing) {
            (Some(ext), _) => vec![ext.as_str()],
            (None, Some(r)) => r.candidates.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

pub use crate::config::parse_size;

/// Every `*.yaml`/`*.yml` file of a folder, parsed, in name order.
fn read_dir<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<(PathBuf, T)>, CatalogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| CatalogError {
        path: dir.to_owned(),
        message: format!("cannot read the folder: {e}"),
    })?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CatalogError {
            path: dir.to_owned(),
            message: format!("cannot list the folder: {e}"),
        })?;
        let path = entry.path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            paths.push(path);
        }
    }
    paths.sort();
    if paths.is_empty() {
        return Err(CatalogError {
            path: dir.to_owned(),
            message: "no *.yaml files in this folder".into(),
        });
    }
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(|e| CatalogError {
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            let value = serde_yaml::from_str::<T>(&text).map_err(|e| CatalogError {
                path: path.clone(),
                message: e.to_string(),
            })?;
            Ok((path, value))
        })
        .collect()
}

/// Whether a backend offering `offered` isolates at least as well as
/// `needed`: `process < container < gvisor < microvm`; `saas` (the
/// provider's own isolation) only satisfies itself.
pub fn isolates_enough(offered: &[Isolation], needed: Isolation) -> bool {
    let rank = |i: Isolation| match i {
        Isolation::Process => Some(0),
        Isolation::Container => Some(1),
        Isolation::Gvisor => Some(2),
        Isolation::Microvm => Some(3),
        Isolation::Saas => None,
    };
    offered.iter().any(|o| match (rank(*o), rank(needed)) {
        (Some(a), Some(b)) => a >= b,
        _ => *o == needed,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("64KiB"), Some(65_536));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("42"), Some(42));
        assert_eq!(parse_size(" 1 MiB "), Some(1 << 20));
        for bad in ["", "GiB", "1.5GiB", "-1B", "1 parsec", "99999999999TiB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
