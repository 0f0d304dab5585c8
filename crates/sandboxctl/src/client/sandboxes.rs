//! `/v1/sandboxes`: create, get, list, destroy, recreate, extend, touch,
//! events; and the operator routes `/v1/expire` and `/v1/audit`.
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use sandboxer_api::{
    AuditEntry, CreateSandbox, Event, ExpireReport, ExtendTtl, ExtendedSandbox, Page,
    RecreateSandbox, Sandbox,
};

use super::query::{format_duration, wait_pairs, ListQuery};
use super::{check_id, to_json, Client, ClientError};

impl Client {
    /// `POST /v1/sandboxes[?wait=..]`: asks for a sandbox. With `wait` the
    /// server answers 201 once it is ready, 200/2xx with state `failed`, or
    /// 202 when the wait ran out; without, 202 at once. Answers the status
    /// and the sandbox. `idempotency_key` is sent as `Idempotency-Key`.
    pub async fn create(
        &self,
        req: &CreateSandbox,
        wait: Option<Duration>,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, Sandbox), ClientError> {
        let url = self.endpoint(&["v1", "sandboxes"], &wait_pairs(wait));
        let mut extra = HeaderMap::new();
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                ClientError::Invalid(
                    "the idempotency key contains characters not allowed in an HTTP header".into(),
                )
            })?;
            extra.insert("idempotency-key", value);
        }
        self.call(Method::POST, url, Some(to_json(req)?), extra, wait)
            .await
    }

    /// `GET /v1/sandboxes/{id}`; with `wait_for_ready`, long-polls
    /// (`?wait_for=ready&timeout=..`) until the sandbox is ready or the wait runs out.
    pub async fn get(
        &self,
        id: &str,
        wait_for_ready: Option<Duration>,
    ) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let mut query = Vec::new();
        if let Some(wait) = wait_for_ready {
            query.push(("wait_for", "ready".to_owned()));
            query.push(("timeout", format_duration(wait)));
        }
        let url = self.endpoint(&["v1", "sandboxes", id], &query);
        self.call_ok(Method::GET, url, None, wait_for_ready).await
    }

    /// `GET /v1/sandboxes`: one page of sandboxes matching `q`.
    pub async fn list(&self, q: &ListQuery) -> Result<Page<Sandbox>, ClientError> {
        let url = self.endpoint(&["v1", "sandboxes"], &q.to_pairs());
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/sandboxes`, following `next_cursor` from `q.cursor` until the
    /// last page; `q.limit` is the page size.
    pub async fn list_all(&self, q: &ListQuery) -> Result<Vec<Sandbox>, ClientError> {
        let mut q = q.clone();
        self.all_pages(q.cursor.take(), |cursor| {
            q.cursor = cursor.map(str::to_owned);
            self.endpoint(&["v1", "sandboxes"], &q.to_pairs())
        })
        .await
    }

    /// `DELETE /v1/sandboxes/{id}[?wait=..]`: starts teardown (202, `destroying`);
    /// a destroyed sandbox answers 200 with itself. With `wait` the server
    /// answers once it is destroyed or the wait ran out.
    pub async fn destroy(
        &self,
        id: &str,
        wait: Option<Duration>,
    ) -> Result<(u16, Sandbox), ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id], &wait_pairs(wait));
        self.call(Method::DELETE, url, None, HeaderMap::new(), wait)
            .await
    }

    /// `POST /v1/sandboxes/{id}/recreate`: same id, next generation, fresh TTL
    /// (`ttl`, else the profile's default).
    pub async fn recreate(&self, id: &str, ttl: Option<String>) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "recreate"], &[]);
        let body = to_json(&RecreateSandbox { ttl })?;
        self.call_ok(Method::POST, url, Some(body), None).await
    }

    /// `PATCH /v1/sandboxes/{id}/ttl`: moves `expires_at` forward by
    /// `duration` (humantime), never past the profile's `ttl.max`.
    pub async fn extend_ttl(
        &self,
        id: &str,
        duration: &str,
    ) -> Result<ExtendedSandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "ttl"], &[]);
        let body = to_json(&ExtendTtl {
            duration: duration.to_owned(),
        })?;
        self.call_ok(Method::PATCH, url, Some(body), None).await
    }

    /// `POST /v1/expire` (operator): the sandboxes past their expiry; with
    /// `apply`, expired and torn down now.
    pub async fn expire(&self, apply: bool) -> Result<ExpireReport, ClientError> {
        let url = self.endpoint(&["v1", "expire"], &[]);
        self.call_ok(
            Method::POST,
            url,
            Some(serde_json::json!({ "apply": apply })),
            None,
        )
        .await
    }

    /// `GET /v1/audit` (operator): one page of the audit trail, newest first.
    pub async fn audit(
        &self,
        project: Option<&str>,
        sandbox_id: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, ClientError> {
        let mut query = vec![("limit", limit.to_string())];
        if let Some(p) = project {
            query.push(("project", p.to_owned()));
        }
        if let Some(s) = sandbox_id {
            query.push(("sandbox_id", s.to_owned()));
        }
        let url = self.endpoint(&["v1", "audit"], &query);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/pause`: `paused` (idempotent).
    pub async fn pause(&self, id: &str) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "pause"], &[]);
        self.call_ok(Method::POST, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/resume`: `ready` again (idempotent).
    pub async fn resume(&self, id: &str) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "resume"], &[]);
        self.call_ok(Method::POST, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/touch`: marks activity (`ready` → `active`).
    pub async fn touch(&self, id: &str) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "touch"], &[]);
        self.call_ok(Method::POST, url, None, None).await
    }

    /// `GET /v1/sandboxes/{id}/network-log`: the egress proxy's decisions.
    pub async fn network_log(&self, id: &str) -> Result<sandboxer_api::NetworkLog, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "network-log"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/sandboxes/{id}/events`: every lifecycle transition, oldest
    /// first, all pages followed (the answer's `next_cursor` is `None`).
    pub async fn events(&self, id: &str) -> Result<Page<Event>, ClientError> {
        let id = check_id(id)?;
        let items = self
            .all_pages(None, |cursor| {
                let query: Vec<(&str, String)> = cursor
                    .map(|c| ("cursor", c.to_owned()))
                    .into_iter()
                    .collect();
                self.endpoint(&["v1", "sandboxes", id, "events"], &query)
            })
            .await?;
        Ok(Page {
            items,
            next_cursor: None,
        })
    }
}
