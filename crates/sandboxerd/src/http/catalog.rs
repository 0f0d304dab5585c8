//! `/v1/profiles` and `/v1/extensions`: the catalog, with live availability.
use axum::extract::{Path, State};
use axum::Json;
use sandboxer_api::{Availability, Extension, Page, Problem, Profile};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult};
use crate::lifecycle::Missing;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_profiles))
        .routes(routes!(get_profile))
        .routes(routes!(list_extensions))
        .routes(routes!(get_extension))
}

/// Every profile in the catalog.
#[utoipa::path(get, path = "/v1/profiles", tag = "catalog", responses((status = 200, body = Page<Profile>)))]
async fn list_profiles(State(state): State<AppState>) -> Json<Page<Profile>> {
    Json(Page {
        items: state
            .catalog
            .profiles
            .values()
            .map(|p| p.spec.clone())
            .collect(),
        next_cursor: None,
    })
}

/// One profile.
#[utoipa::path(
    get, path = "/v1/profiles/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Profile id (`profile.…`)")),
    responses(
        (status = 200, body = Profile),
        (status = 404, description = "`profile_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_profile(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Profile>> {
    state
        .catalog
        .profiles
        .get(&id)
        .map(|p| Json(p.spec.clone()))
        .ok_or_else(|| ApiError::not_found(Missing::Profile, &id))
}

/// The catalog entry with its live availability; an entry that lists no
/// hosts shows the ones its backend places on (ext.compose-ssh takes its
/// hosts from the daemon's `[[hosts]]`).
async fn with_availability(state: &AppState, spec: &sandboxer_api::ExtensionSpec) -> Extension {
    let backend = state.extensions.get(&spec.id);
    let availability = match &backend {
        Some(ext) => ext.availability().await,
        None => Availability {
            available: false,
            reason: Some("no backend of this id is built into this daemon".into()),
        },
    };
    let mut entry = Extension::new(spec.clone(), availability);
    if entry.hosts.is_empty() {
        entry.hosts = backend.map(|b| b.hosts()).unwrap_or_default();
    }
    entry
}

/// Every extension, with whether it can provision right now.
#[utoipa::path(get, path = "/v1/extensions", tag = "catalog", responses((status = 200, body = Page<Extension>)))]
async fn list_extensions(State(state): State<AppState>) -> Json<Page<Extension>> {
    let mut items = Vec::new();
    for spec in state.catalog.extensions.values() {
        items.push(with_availability(&state, spec).await);
    }
    Json(Page {
        items,
        next_cursor: None,
    })
}

/// One extension.
#[utoipa::path(
    get, path = "/v1/extensions/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Extension id (`ext.…`)")),
    responses(
        (status = 200, body = Extension),
        (status = 404, description = "`extension_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn get_extension(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Extension>> {
    match state.catalog.extensions.get(&id) {
        Some(spec) => Ok(Json(with_availability(&state, spec).await)),
        None => Err(ApiError::not_found(Missing::Extension, &id)),
    }
}
