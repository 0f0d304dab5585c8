//! `/v1/sandboxes/{id}/ssh-keys`: the public keys that may open SSH
//! sessions into a sandbox through the daemon's SSH gateway.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use sandboxer_api::{AddSshKey, Problem, ProblemCode, SshKey, SshKeyList};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::caller::Caller;
use crate::http::error::{ApiError, ApiResult};
use crate::http::extract::ApiJson;
use crate::lifecycle::Missing;
use crate::store::{KeyAdded, MAX_SSH_KEYS};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(add_key, list_keys))
        .routes(routes!(remove_key))
}

use crate::lifecycle::access::check_key;

async fn scoped(state: &AppState, caller: &Caller, id: &str) -> ApiResult<()> {
    match state.db.get_row(id, caller.scope()).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(Missing::Sandbox, id)),
    }
}

/// Register a public key for SSH into this sandbox (user = the sandbox id). Idempotent.
#[utoipa::path(
    post, path = "/v1/sandboxes/{id}/ssh-keys", tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    request_body = AddSshKey,
    responses(
        (status = 201, description = "Registered", body = SshKey),
        (status = 200, description = "It was registered already", body = SshKey),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`too_many_ssh_keys`", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`invalid_ssh_key`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn add_key(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<AddSshKey>,
) -> ApiResult<(StatusCode, Json<SshKey>)> {
    let key = check_key(&req.public_key, "public_key").map_err(ApiError::from)?;
    scoped(&state, &caller, &id).await?;
    match state
        .db
        .add_ssh_key(&id, &key.fingerprint, &key.public_key, &key.comment)
        .await?
    {
        KeyAdded::Added(k) => Ok((StatusCode::CREATED, Json(k))),
        KeyAdded::Existing(k) => Ok((StatusCode::OK, Json(k))),
        KeyAdded::Full => Err(ApiError::new(
            StatusCode::CONFLICT,
            ProblemCode::TooManySshKeys,
            format!("sandbox {id} holds {MAX_SSH_KEYS} keys, the most it takes; remove one first"),
        )),
    }
}

/// The keys registered for SSH into this sandbox.
#[utoipa::path(
    get, path = "/v1/sandboxes/{id}/ssh-keys", tag = "access",
    params(("id" = String, Path, description = "Sandbox id")),
    responses(
        (status = 200, body = SshKeyList),
        (status = 404, description = "`sandbox_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<SshKeyList>> {
    scoped(&state, &caller, &id).await?;
    Ok(Json(SshKeyList {
        items: state.db.ssh_keys(&id).await?,
    }))
}

/// Remove a key (by its `SHA256:…` fingerprint); sessions it opened stay until they end.
#[utoipa::path(
    delete, path = "/v1/sandboxes/{id}/ssh-keys/{fingerprint}", tag = "access",
    params(("id" = String, Path, description = "Sandbox id"), ("fingerprint" = String, Path, description = "`SHA256:…`, percent-encoded (its base64 holds `/` and `+`)")),
    responses(
        (status = 200, description = "Removed", body = SshKeyList),
        (status = 404, description = "`sandbox_not_found`, `ssh_key_not_found`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn remove_key(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, fingerprint)): Path<(String, String)>,
) -> ApiResult<Json<SshKeyList>> {
    scoped(&state, &caller, &id).await?;
    if !state.db.remove_ssh_key(&id, &fingerprint).await? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ProblemCode::SshKeyNotFound,
            format!("no key {fingerprint} on sandbox {id}"),
        ));
    }
    Ok(Json(SshKeyList {
        items: state.db.ssh_keys(&id).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_parsed_fingerprinted_and_weak_ones_refused() {
        let k = check_key(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl someone@host",
            "public_key",
        )
        .unwrap();
        assert!(k.fingerprint.starts_with("SHA256:"), "{}", k.fingerprint);
        assert_eq!(k.comment, "someone@host");
        assert!(k.public_key.starts_with("ssh-ed25519 AAAA") && !k.public_key.contains("someone"));
        for bad in ["", "ssh-ed25519", "ssh-ed25519 notbase64!!", "hello world"] {
            let e = ApiError::from(check_key(bad, "public_key").err().expect(bad));
            assert_eq!(
                (e.code, e.field.as_deref()),
                (ProblemCode::InvalidSshKey, Some("public_key"))
            );
        }
    }
}
