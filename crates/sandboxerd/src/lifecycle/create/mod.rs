//! Create a sandbox: check the request against the catalog, route and
//! price it, then insert it (idempotently, under the project's cap and
//! credits) or hand out a warm-pool member, and start its provisioning.
use sandboxer_api::{Consumer, CreateSandbox, ProblemCode, Sandbox};
use sha2::{Digest, Sha256};

use super::error::{OpError, OpResult, Refusal};
use super::validate;
use crate::clock::millis;
use crate::routing::{self, Needs, PlaceError};
use crate::store::{new_id, now_ms, Billing, Created, NewSandbox};
use crate::AppState;

pub mod fork;
pub mod inputs;

/// Who asks for an operation: the consumer its token acts as, and whether
/// it is an operator (who sees and acts on every project).
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    pub consumer: &'a Consumer,
    pub operator: bool,
}

impl<'a> Actor<'a> {
    /// The project every lookup is confined to (`None`: all, for operators).
    pub fn scope(&self) -> Option<&'a str> {
        (!self.operator).then_some(self.consumer.project.as_str())
    }
}

/// What a create answered: a sandbox, and whether it is one that already
/// existed under the asked `name` (get-or-create) rather than a new one.
#[derive(Debug)]
pub struct Made {
    pub sandbox: Sandbox,
    pub existing: bool,
}

/// Create a sandbox from `req` for `actor`. With an `idempotency_key`, the
/// same key and body answer the sandbox made first (another body is
/// `idempotency_conflict`). A `name` taken by a live sandbox of the
/// project answers that sandbox with `if_exists: "return"`, else
/// `name_taken`. A sandbox served from a warm pool is already ready; any
/// other is `requested`, provisioning in the background.
#[tracing::instrument(skip_all, fields(sandbox_id))]
pub async fn create(
    state: &AppState,
    actor: Actor<'_>,
    req: CreateSandbox,
    idempotency_key: Option<&str>,
) -> OpResult<Made> {
    // Get-or-create: a live sandbox of that name is answered before
    // anything else is checked, so it is found even when its snapshot,
    // profile or backend could not make a new one now.
    if let Some(found) = existing_by_name(state, actor, &req).await? {
        return Ok(found);
    }
    let req = fork::resolve(state, actor.scope(), req).await?;
    let keys = ssh_keys(&req)?;
    let (new, billing) = check(state, actor, &req).await?;
    tracing::Span::current().record("sandbox_id", new.id.as_str());
    let hash = idempotency_key.map(|_| request_hash(&new.consumer.project, &req));
    let idem = idempotency_key.zip(hash.as_deref());
    let cap = match state.settings.limits.live_sandboxes_per_project {
        0 => None,
        n => Some(i64::from(n)),
    };
    // A profile with a warm pool: a ready member, claimed in one
    // transaction, is answered just as a create that became ready.
    let (created, pooled) =
        match super::pool::hand_out(state, &req, &new, idem, cap, &billing).await? {
            Some(outcome) => (outcome, true),
            None => (
                state
                    .db
                    .create_sandbox_billed(new, idem, cap, &billing)
                    .await?,
                false,
            ),
        };
    if let Created::New(sbx) = &created {
        super::access::add_keys(state, &sbx.id, &keys).await?;
    }
    let new = |sandbox| Made {
        sandbox,
        existing: false,
    };
    match created {
        Created::New(sbx) if pooled => Ok(new(sbx)),
        Created::New(sbx) => {
            // Read by its provisioning (a fork is never served from a pool).
            fork::record(state, &sbx.id, &req).await?;
            crate::fault::hit("create.after_insert");
            state.spawn(super::provision::provision(
                state.clone(),
                sbx.id.clone(),
                sbx.generation,
                None,
            ));
            Ok(new(sbx))
        }
        Created::Replayed(sbx) => Ok(new(sbx)),
        Created::Existing(sandbox) => same_profile(&req, sandbox).map(|sandbox| Made {
            sandbox,
            existing: true,
        }),
        Created::NameTaken(id) => Err(OpError::conflict(
            ProblemCode::NameTaken,
            format!(
                "the project already has a live sandbox named `{}` ({id}); pass `\"if_exists\": \"return\"` to get it instead",
                req.name.as_deref().unwrap_or_default()
            ),
        )
        .field("name")),
        Created::InsufficientCredits(short) => Err(OpError::insufficient(
            short,
            &actor.consumer.project,
            "this create",
        )),
        Created::OverCap { cap } => Err(OpError::refused(
            Refusal::Busy,
            ProblemCode::TooManySandboxes,
            format!(
                "project already has {cap} live sandboxes (the configured cap); destroy some first"
            ),
        )),
        Created::KeyConflict => Err(OpError::conflict(
            ProblemCode::IdempotencyConflict,
            "this Idempotency-Key was already used with a different request body",
        )
        .field("Idempotency-Key")),
    }
}

/// With `name` and `if_exists: "return"`: the live sandbox of the project
/// with that name (`None`: there is none, go on and create it).
async fn existing_by_name(
    state: &AppState,
    actor: Actor<'_>,
    req: &CreateSandbox,
) -> OpResult<Option<Made>> {
    if !validate::name(req.name.as_deref(), req.if_exists)? {
        return Ok(None);
    }
    let Some(name) = req.name.as_deref() else {
        return Ok(None);
    };
    let consumer = validate::consumer(req.consumer.as_ref(), actor.consumer, actor.operator)?;
    let Some(row) = state.db.live_name_holder(&consumer.project, name).await? else {
        return Ok(None);
    };
    let sandbox = same_profile(req, row.into_api()?)?;
    Ok(Some(Made {
        sandbox,
        existing: true,
    }))
}

/// `sandbox` (found by the name `req` asks for) when it is of the profile
/// `req` names (or `req` names none); a sandbox of another profile under
/// that name is `name_taken`.
fn same_profile(req: &CreateSandbox, sandbox: Sandbox) -> OpResult<Sandbox> {
    if req.profile.is_empty() || req.profile == sandbox.profile {
        return Ok(sandbox);
    }
    Err(OpError::conflict(
        ProblemCode::NameTaken,
        format!(
            "the name `{}` is held by live sandbox {} of profile {}, not {}",
            sandbox.name.as_deref().unwrap_or_default(),
            sandbox.id,
            sandbox.profile,
            req.profile
        ),
    )
    .field("name"))
}

/// The create body's `ssh_keys`, checked (at most the 32 a sandbox holds).
fn ssh_keys(req: &CreateSandbox) -> OpResult<Vec<super::access::CheckedKey>> {
    if req.ssh_keys.len() as i64 > crate::store::MAX_SSH_KEYS {
        return Err(OpError::invalid(
            ProblemCode::InvalidSshKey,
            "ssh_keys",
            format!("at most {} keys", crate::store::MAX_SSH_KEYS),
        ));
    }
    req.ssh_keys
        .iter()
        .enumerate()
        .map(|(i, k)| super::access::check_key(k, &format!("ssh_keys[{i}]")))
        .collect()
}

/// What makes two creates with one Idempotency-Key the same request.
fn request_hash(project: &str, req: &CreateSandbox) -> String {
    let mut h = Sha256::new();
    h.update(project.as_bytes());
    h.update([0]);
    h.update(serde_json::to_vec(req).unwrap_or_default());
    hex::encode(h.finalize())
}

/// Check a create against the catalog and route it; every error names the field.
async fn check(
    state: &AppState,
    actor: Actor<'_>,
    req: &CreateSandbox,
) -> OpResult<(NewSandbox, Billing)> {
    let profile = validate::profile(state, &req.profile)?;
    let spec = &profile.spec;
    for name in req.inputs.keys() {
        if !spec.inputs.contains_key(name) {
            let declared: Vec<&str> = spec.inputs.keys().map(String::as_str).collect();
            return Err(OpError::invalid(
                ProblemCode::UnknownInput,
                &format!("inputs.{name}"),
                format!(
                    "`inputs.{name}`: profile {} declares no such input (declared: {})",
                    spec.id,
                    if declared.is_empty() {
                        "none".to_owned()
                    } else {
                        declared.join(", ")
                    }
                ),
            ));
        }
    }
    // A fork's workspace comes from its snapshot, which stands in for the
    // inputs that would have made it (a compose repository, say).
    for (name, input) in &spec.inputs {
        if input.required
            && req.from_snapshot.is_none()
            && req.inputs.get(name).is_none_or(|v| v.is_empty())
        {
            return Err(OpError::invalid(
                ProblemCode::MissingInput,
                &format!("inputs.{name}"),
                format!("`inputs.{name}` is required by profile {}", spec.id),
            ));
        }
    }
    for (name, value) in &req.inputs {
        if value.len() > 4096 {
            return Err(OpError::invalid(
                ProblemCode::InvalidInput,
                &format!("inputs.{name}"),
                format!("`inputs.{name}` is longer than 4096 bytes"),
            ));
        }
    }
    // Host paths: resolved under `input_roots` now, before anything is
    // provisioned; the canonical path is what is stored and used.
    let mut inputs = req.inputs.clone();
    inputs::resolve(&state.settings, actor.operator, spec, &mut inputs)?;
    let ttl = validate::requested_ttl(req.ttl.as_deref(), profile)?;
    validate::labels(&req.labels)?;
    let reuse_by_name = validate::name(req.name.as_deref(), req.if_exists)?;
    let consumer = validate::consumer(req.consumer.as_ref(), actor.consumer, actor.operator)?;
    // A fork of a routed profile runs where its snapshot was taken.
    let fork_of = match (&req.from_snapshot, &spec.routing) {
        (Some(snap), Some(_)) => state
            .db
            .get_snapshot(snap, actor.scope())
            .await?
            .map(|s| s.extension),
        _ => None,
    };
    let fork_readers = fork_of
        .as_deref()
        .map(|taken_on| {
            state
                .extensions
                .ids()
                .filter(|id| state.extensions.snapshots_compatible(taken_on, id))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let needs = Needs {
        host: req.placement.as_ref().and_then(|p| p.host.clone()),
        fork_of,
        fork_readers,
    };
    let placed = routing::place(state, profile, ttl, &needs)
        .await
        .map_err(|e| place_error(&spec.id, e))?;
    let now = now_ms();
    let new = NewSandbox {
        placement_host: needs.host.clone(),
        id: new_id("sbx"),
        profile: spec.id.clone(),
        profile_version: spec.version,
        extension: placed.target.extension.clone(),
        host: placed.target.host.clone(),
        consumer,
        inputs,
        labels: req.labels.clone(),
        now,
        expires_at: now.saturating_add(millis(ttl)),
        max_expires_at: now.saturating_add(millis(profile.ttl_max)),
        // Whole credits for the lifetime asked for, rounded up (the same
        // price `GET /v1/estimate` quotes).
        estimate_credits: placed.target.estimate_credits,
        name: req.name.clone(),
        reuse_by_name,
    };
    let billing = Billing {
        rate_centicredits: placed.target.rate_centicredits,
        paused_rate_centicredits: placed.target.paused_rate_centicredits,
        route: placed.route,
        enforce: state.settings.credits.enforce,
    };
    Ok((new, billing))
}

/// A routing refusal of a create (or an estimate) of `profile`.
pub fn place_error(profile: &str, e: PlaceError) -> OpError {
    match e {
        PlaceError::UnknownHost { host, hosts } => OpError::invalid(
            ProblemCode::UnknownHost,
            "placement.host",
            format!(
                "`placement.host`: {profile} places on {}, not `{host}`",
                hosts.join(", ")
            ),
        ),
        PlaceError::NoHosts(ext) => OpError::invalid(
            ProblemCode::UnknownHost,
            "placement.host",
            format!(
                "{profile} runs on {ext}, which has no placement host configured: add one (`[[hosts]]` in the daemon's config) and restart"
            ),
        ),
        PlaceError::NotBuiltIn(ext) => OpError::refused(
            Refusal::Unavailable,
            ProblemCode::ExtensionUnavailable,
            format!("extension {ext} is not built into this daemon"),
        ),
        PlaceError::NoCandidate(route) => OpError::refused(
            Refusal::Unavailable,
            ProblemCode::NoExtensionAvailable,
            format!(
                "no candidate of {profile} ({} policy) can take this sandbox now: {}",
                route.policy,
                routing::explain(&route)
            ),
        ),
    }
}
