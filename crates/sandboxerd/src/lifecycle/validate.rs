//! Checks of what a request asks for, shared by the operations: durations,
//! lifetimes against a profile, labels, names, the consumer a create acts
//! for. Every refusal names its field.
use std::collections::BTreeMap;
use std::time::Duration;

use sandboxer_api::{Consumer, ProblemCode};

use super::error::{Missing, OpError, OpResult, Refusal};
use crate::catalog::LoadedProfile;
use crate::AppState;

/// Profile `id` from the catalog: 404 `profile_not_found` when there is
/// none, 422 `profile_rejected` (with why) when it was left out at load.
pub fn profile<'a>(state: &'a AppState, id: &str) -> OpResult<&'a LoadedProfile> {
    if let Some(p) = state.catalog.profiles.get(id) {
        return Ok(p);
    }
    if let Some(why) = state.catalog.rejected.get(id) {
        return Err(OpError::invalid(
            ProblemCode::ProfileRejected,
            "profile",
            format!("profile `{id}` was left out when the catalog loaded: {why}"),
        ));
    }
    Err(OpError::not_found(Missing::Profile, id).field("profile"))
}

/// Parse a humantime duration from field `field`; `max` bounds it.
pub fn duration(field: &str, value: &str, max: Option<Duration>) -> OpResult<Duration> {
    let d = humantime::parse_duration(value.trim()).map_err(|e| {
        OpError::invalid(
            ProblemCode::InvalidDuration,
            field,
            format!("`{field}`: `{value}` is not a duration like `30m`, `4h` or `1h30m` ({e})"),
        )
    })?;
    if let Some(max) = max {
        if d > max {
            return Err(OpError::invalid(
                ProblemCode::InvalidDuration,
                field,
                format!(
                    "`{field}`: {value} is longer than the most allowed, {}",
                    humantime::format_duration(max)
                ),
            ));
        }
    }
    Ok(d)
}

/// A duration of field `field` that must be more than zero.
pub fn positive_duration(field: &str, value: &str) -> OpResult<Duration> {
    let d = duration(field, value, None)?;
    if d.is_zero() {
        return Err(OpError::invalid(
            ProblemCode::InvalidDuration,
            field,
            format!("`{field}` must be more than zero"),
        ));
    }
    Ok(d)
}

/// The lifetime asked for (or the profile's default): more than zero, at most `ttl.max`.
pub fn requested_ttl(ttl: Option<&str>, profile: &LoadedProfile) -> OpResult<Duration> {
    let Some(v) = ttl else {
        return Ok(profile.ttl_default);
    };
    let ttl = positive_duration("ttl", v)?;
    if ttl > profile.ttl_max {
        return Err(OpError::invalid(
            ProblemCode::TtlExceedsMax,
            "ttl",
            format!(
                "`ttl` {v} is longer than profile {}'s ttl.max of {}",
                profile.spec.id, profile.spec.ttl.max
            ),
        ));
    }
    Ok(ttl)
}

fn valid_name(v: &str, max: usize) -> bool {
    !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | ':'))
}

/// A sandbox's labels: at most 64, keys of name characters, short printable values.
pub fn labels(labels: &BTreeMap<String, String>) -> OpResult<()> {
    if labels.len() > 64 {
        return Err(OpError::invalid(
            ProblemCode::InvalidLabel,
            "labels",
            "at most 64 labels",
        ));
    }
    for (k, v) in labels {
        if !valid_name(k, 63) {
            return Err(OpError::invalid(
                ProblemCode::InvalidLabel,
                &format!("labels.{k}"),
                format!(
                    "label key `{k}` must be 1 to 63 letters, digits, `.`, `_`, `-`, `/` or `:`"
                ),
            ));
        }
        if v.len() > 256 || v.chars().any(char::is_control) {
            return Err(OpError::invalid(
                ProblemCode::InvalidLabel,
                &format!("labels.{k}"),
                format!("label `{k}`: the value must be at most 256 characters without control characters"),
            ));
        }
    }
    Ok(())
}

/// A create's `name` and `if_exists`: 1 to 128 letters, digits, `-`, `_`
/// and `.`, starting with a letter or digit; `if_exists` only with a name.
/// Answers whether a taken name returns its sandbox.
pub fn name(name: Option<&str>, if_exists: Option<sandboxer_api::IfExists>) -> OpResult<bool> {
    let Some(name) = name else {
        if if_exists.is_some() {
            return Err(OpError::invalid(
                ProblemCode::InvalidName,
                "if_exists",
                "`if_exists` needs a `name`",
            ));
        }
        return Ok(false);
    };
    let ok = (1..=128).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(OpError::invalid(
            ProblemCode::InvalidName,
            "name",
            format!(
                "`name`: `{}` must be 1 to 128 letters, digits, `-`, `_` or `.`, starting with a letter or digit",
                name.chars().take(140).collect::<String>()
            ),
        ));
    }
    Ok(if_exists == Some(sandboxer_api::IfExists::Return))
}

/// The consumer a create acts for: the caller's own, or (operators only)
/// the one the request names.
pub fn consumer(asked: Option<&Consumer>, caller: &Consumer, operator: bool) -> OpResult<Consumer> {
    let c = match asked {
        None => return Ok(caller.clone()),
        Some(c) if !operator && c != caller => return Err(OpError::refused(
            Refusal::Forbidden,
            ProblemCode::Forbidden,
            "`consumer`: a consumer token creates sandboxes only for itself; leave `consumer` out",
        )
        .field("consumer")),
        Some(c) => c,
    };
    if !matches!(c.actor_type.as_str(), "adm" | "agt" | "atm") {
        return Err(OpError::invalid(
            ProblemCode::InvalidConsumer,
            "consumer.actor_type",
            format!(
                "`consumer.actor_type`: `{}` is not one of adm, agt, atm",
                c.actor_type
            ),
        ));
    }
    for (field, v) in [
        ("consumer.actor", &c.actor),
        ("consumer.project", &c.project),
    ] {
        if !valid_name(v, 128) {
            return Err(OpError::invalid(
                ProblemCode::InvalidConsumer,
                field,
                format!("`{field}` must be 1 to 128 letters, digits, `.`, `_`, `-`, `/` or `:`"),
            ));
        }
    }
    Ok(c.clone())
}

/// A snapshot's label: at most 256 characters without control characters.
pub fn snapshot_label(label: Option<&str>) -> OpResult<()> {
    match label {
        Some(l) if l.chars().count() > 256 || l.chars().any(char::is_control) => {
            Err(OpError::invalid(
                ProblemCode::InvalidLabel,
                "label",
                "`label` must be at most 256 characters without control characters",
            ))
        }
        _ => Ok(()),
    }
}
