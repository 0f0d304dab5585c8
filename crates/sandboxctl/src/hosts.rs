//! Placement hosts: `GET /v1/hosts`, host telemetry and orphan reaping.
// `ClientError` is large on purpose (see `client.rs`).
#![allow(clippy::result_large_err)]
use sandboxer_api::{Host, HostInspect, Page, StaleReport};
use serde::de::DeserializeOwned;

use crate::client::{Client, ClientError};
use crate::Method;

fn host_path(id: &str, rest: &str) -> Result<String, ClientError> {
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ClientError::Invalid(format!(
            "`{id}` is not a host id (letters, digits, `-`, `_`, `.`)"
        )));
    }
    Ok(format!("/v1/hosts/{id}{rest}"))
}

impl Client {
    async fn host_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, ClientError> {
        let (status, value) = self.request_json(method, path, body).await?;
        if !(200..300).contains(&status) {
            let bytes = serde_json::to_vec(&value).unwrap_or_default();
            let code = reqwest::StatusCode::from_u16(status)
                .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
            return Err(crate::client::api_error(code, &bytes));
        }
        serde_json::from_value(value)
            .map_err(|e| ClientError::Decode(format!("{path}: unexpected answer: {e}")))
    }

    /// `GET /v1/hosts`: the configured placement hosts.
    pub async fn hosts(&self) -> Result<Page<Host>, ClientError> {
        self.host_call(Method::GET, "/v1/hosts", None).await
    }

    /// `GET /v1/hosts/{id}`.
    pub async fn host(&self, id: &str) -> Result<Host, ClientError> {
        self.host_call(Method::GET, &host_path(id, "")?, None).await
    }

    /// `GET /v1/hosts/{id}/inspect` (operator): live facts from the host.
    pub async fn inspect_host(&self, id: &str) -> Result<HostInspect, ClientError> {
        self.host_call(Method::GET, &host_path(id, "/inspect")?, None)
            .await
    }

    /// `GET /v1/hosts/{id}/stale` (operator): what no live sandbox owns there.
    pub async fn stale(&self, id: &str) -> Result<StaleReport, ClientError> {
        self.host_call(Method::GET, &host_path(id, "/stale")?, None)
            .await
    }

    /// `POST /v1/hosts/{id}/reap-stale` (operator): a dry run unless `apply`.
    pub async fn reap_stale(&self, id: &str, apply: bool) -> Result<StaleReport, ClientError> {
        self.host_call(
            Method::POST,
            &host_path(id, "/reap-stale")?,
            Some(serde_json::json!({ "apply": apply })),
        )
        .await
    }
}
