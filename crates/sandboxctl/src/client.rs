//! [`Client`]: one method per endpoint of the sand-boxer API, answering the
//! shared wire types, with every failure folded into [`ClientError`].

// `ClientError::Api` carries the whole `Problem` unboxed so callers can match
// on `problem.code` directly; errors are rare next to a network round trip,
// so the larger `Result` costs nothing that matters.
#![allow(clippy::result_large_err)]
use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use sandboxer_api::{
    AuditEntry, Balance, CreateGrant, CreateSandbox, CreateSnapshot, Estimate, Event, ExpireReport,
    ExtendTtl, ExtendedSandbox, Extension, Health, LedgerEntry, Page, Problem, ProblemCode,
    Profile, RecreateSandbox, RestoreSnapshot, Sandbox, Snapshot, UsageReport,
};
use serde::de::DeserializeOwned;

/// How long to wait for a TCP/TLS connection to the daemon.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take. A long-poll may take its wait plus
/// [`LONG_POLL_MARGIN`] instead, when that is longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Extra time a long-poll request gets beyond the wait it asks the server for,
/// so the server's own answer at the end of the wait is not cut off.
pub const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);
/// How long a restore may take before the client gives up on the answer.
pub const RESTORE_WAIT: Duration = Duration::from_secs(600);
/// Error bodies that are not problem+json are cut to this many bytes in
/// the synthesized problem's `detail` (a proxy's HTML page is of no use whole).
const MAX_DETAIL_BYTES: usize = 4096;

/// Everything that can go wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a non-2xx status. `problem` is its
    /// problem+json body, or one synthesized with code `http_<status>` and
    /// the body text as detail when the body was not a problem.
    #[error("{} ({}), HTTP {status}", problem.detail, problem.code)]
    Api {
        /// The HTTP status of the answer.
        status: u16,
        /// The problem the server reported.
        problem: Problem,
    },
    /// The daemon could not be reached, or the request timed out; the
    /// message names the URL.
    #[error("{0}")]
    Transport(String),
    /// The server answered 2xx but with a body that is not what the API promises.
    #[error("{0}")]
    Decode(String),
    /// The client or request could not be built from the given input
    /// (a malformed base URL, a token or idempotency key that is not a valid
    /// header value, an empty id); nothing was sent.
    #[error("{0}")]
    Invalid(String),
}

impl ClientError {
    /// The HTTP status when the server answered, else `None`.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The problem's stable `code` when the server answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { problem, .. } => Some(problem.code.as_str()),
            _ => None,
        }
    }

    /// The problem's code as a [`ProblemCode`] when the server answered with
    /// an error ([`ProblemCode::Unknown`] for a code newer than this client,
    /// and for an error answer that was not a problem).
    pub fn problem_code(&self) -> Option<ProblemCode> {
        match self {
            ClientError::Api { problem, .. } => Some(problem.problem_code()),
            _ => None,
        }
    }
}

/// Filters and paging of `GET /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only sandboxes in this state (`ready`, `destroyed`, ...).
    pub state: Option<String>,
    /// Only sandboxes of this profile id.
    pub profile: Option<String>,
    /// Only sandboxes on this extension id.
    pub extension: Option<String>,
    /// Only sandboxes placed on this host.
    pub host: Option<String>,
    /// Only sandboxes of this project (operators; a consumer sees only its own).
    pub project: Option<String>,
    /// Only sandboxes carrying all these labels; each is sent as `label=k=v`.
    pub labels: Vec<(String, String)>,
    /// Include destroyed sandboxes (`include=all`).
    pub include_all: bool,
    /// Page size (`limit`); the server defaults to 100 and caps at 1000.
    pub limit: Option<u32>,
    /// Start at this page (`cursor`, from a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The query pairs in the order they are sent.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let optional = [
            ("state", &self.state),
            ("profile", &self.profile),
            ("extension", &self.extension),
            ("host", &self.host),
            ("project", &self.project),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        for (k, v) in &self.labels {
            pairs.push(("label", format!("{k}={v}")));
        }
        push_paging(
            &mut pairs,
            self.include_all,
            self.limit,
            self.cursor.as_deref(),
        );
        pairs
    }
}

/// Filters and paging of the snapshot lists (`GET /v1/snapshots`, or
/// `GET /v1/sandboxes/{id}/snapshots` when `sandbox` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// Only snapshots of this sandbox.
    pub sandbox: Option<String>,
    /// Only snapshots in this state (`ready`, `failed`, ...; comma-separated for several).
    pub state: Option<String>,
    /// Only snapshots of this project (operators; a consumer sees only its own).
    pub project: Option<String>,
    /// Include deleted snapshots (`include=all`).
    pub include_all: bool,
    /// Page size (`limit`); the server defaults to 100 and caps at 1000.
    pub limit: Option<u32>,
    /// Start at this page (`cursor`, from a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

impl SnapshotQuery {
    /// The query pairs in the order they are sent (the sandbox goes in the path).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(state) = &self.state {
            pairs.push(("state", state.clone()));
        }
        if let Some(project) = &self.project {
            pairs.push(("project", project.clone()));
        }
        push_paging(
            &mut pairs,
            self.include_all,
            self.limit,
            self.cursor.as_deref(),
        );
        pairs
    }
}

/// `include=all`, `limit` and `cursor`, as the list routes take them.
fn push_paging(
    pairs: &mut Vec<(&'static str, String)>,
    include_all: bool,
    limit: Option<u32>,
    cursor: Option<&str>,
) {
    if include_all {
        pairs.push(("include", "all".to_owned()));
    }
    if let Some(limit) = limit {
        pairs.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor.to_owned()));
    }
}

/// Filters of `GET /v1/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Only this project (a consumer always gets its own).
    pub project: Option<String>,
    /// RFC 3339: debits at or after this time.
    pub from: Option<String>,
    /// RFC 3339: debits before this time.
    pub to: Option<String>,
}

impl UsageQuery {
    /// The query pairs in the order they are sent, with `format`.
    pub fn to_pairs(&self, format: &str) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        for (name, value) in [
            ("project", &self.project),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        pairs.push(("format", format.to_owned()));
        pairs
    }
}

/// A client of one sand-boxer daemon. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Url,
    has_token: bool,
}

impl std::fmt::Debug for Client {
    // By hand so the token can never end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base.as_str())
            .field(
                "token",
                &if self.has_token {
                    "<redacted>"
                } else {
                    "<none>"
                },
            )
            .finish()
    }
}

impl Client {
    /// A client of the daemon at `base_url` (e.g. `http://127.0.0.1:7443`,
    /// optionally with a path prefix), sending `Authorization: Bearer <token>`
    /// when a token is given.
    pub fn new(base_url: &str, token: Option<String>) -> Result<Client, ClientError> {
        let base = parse_base_url(base_url)?;
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                ClientError::Invalid(
                    "the token contains characters not allowed in an HTTP header".into(),
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .default_headers(headers.clone())
            .user_agent(concat!("sandboxctl/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                ClientError::Invalid(format!("cannot build the HTTP client: {}", chain(&e)))
            })?;
        Ok(Client {
            http,
            base,
            has_token: headers.contains_key(AUTHORIZATION),
        })
    }

    /// The base URL requests are sent under.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

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

    /// `POST /v1/sandboxes/{id}/touch`: marks activity (`ready` → `active`).
    pub async fn touch(&self, id: &str) -> Result<Sandbox, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "touch"], &[]);
        self.call_ok(Method::POST, url, None, None).await
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

    /// `GET /v1/profiles`: the profile catalog.
    pub async fn profiles(&self) -> Result<Page<Profile>, ClientError> {
        let url = self.endpoint(&["v1", "profiles"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/profiles/{id}`: one profile.
    pub async fn profile(&self, id: &str) -> Result<Profile, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "profiles", id], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/extensions`: the extension catalog with live availability.
    pub async fn extensions(&self) -> Result<Page<Extension>, ClientError> {
        let url = self.endpoint(&["v1", "extensions"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/extensions/{id}`: one extension with its availability.
    pub async fn extension(&self, id: &str) -> Result<Extension, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "extensions", id], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/snapshots[?wait=..]`: snapshots the
    /// sandbox's workspace. Without `wait`, 202 with the snapshot `creating`;
    /// with it, 201 once `ready`, 200 when it `failed` (see `failure`), or
    /// 202 when the wait ran out. Answers the status and the snapshot.
    pub async fn create_snapshot(
        &self,
        sandbox_id: &str,
        label: Option<String>,
        wait: Option<Duration>,
    ) -> Result<(u16, Snapshot), ClientError> {
        let id = check_id(sandbox_id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "snapshots"], &wait_pairs(wait));
        let body = to_json(&CreateSnapshot { label })?;
        self.call(Method::POST, url, Some(body), HeaderMap::new(), wait)
            .await
    }

    /// One page of snapshots matching `q` (of one sandbox when `q.sandbox` is set).
    pub async fn list_snapshots(&self, q: &SnapshotQuery) -> Result<Page<Snapshot>, ClientError> {
        let url = self.snapshots_url(q, q.cursor.as_deref())?;
        self.call_ok(Method::GET, url, None, None).await
    }

    /// Every snapshot matching `q`, following `next_cursor` from `q.cursor`.
    pub async fn list_all_snapshots(
        &self,
        q: &SnapshotQuery,
    ) -> Result<Vec<Snapshot>, ClientError> {
        if let Some(sandbox) = &q.sandbox {
            check_id(sandbox)?;
        }
        self.all_pages(q.cursor.clone(), |cursor| {
            // The id was checked above, so building the URL cannot fail.
            self.snapshots_url(q, cursor)
                .unwrap_or_else(|_| self.base.clone())
        })
        .await
    }

    fn snapshots_url(&self, q: &SnapshotQuery, cursor: Option<&str>) -> Result<Url, ClientError> {
        let mut q = q.clone();
        q.cursor = cursor.map(str::to_owned);
        Ok(match &q.sandbox {
            Some(sandbox) => {
                let id = check_id(sandbox)?;
                self.endpoint(&["v1", "sandboxes", id, "snapshots"], &q.to_pairs())
            }
            None => self.endpoint(&["v1", "snapshots"], &q.to_pairs()),
        })
    }

    /// `GET /v1/snapshots/{id}`: one snapshot.
    pub async fn get_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "snapshots", id], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `DELETE /v1/snapshots/{id}`: deletes a snapshot (idempotent: a deleted
    /// one answers itself again) and answers it, state `deleted`.
    pub async fn delete_snapshot(&self, id: &str) -> Result<Snapshot, ClientError> {
        let id = check_id(id)?;
        let url = self.endpoint(&["v1", "snapshots", id], &[]);
        self.call_ok(Method::DELETE, url, None, None).await
    }

    /// `POST /v1/sandboxes/{id}/restore`: rolls the sandbox's workspace back
    /// to `snapshot_id` in place; answers the sandbox. A damaged archive is
    /// a 409 `snapshot_corrupt` and leaves the workspace as it was.
    pub async fn restore(
        &self,
        sandbox_id: &str,
        snapshot_id: &str,
    ) -> Result<Sandbox, ClientError> {
        let id = check_id(sandbox_id)?;
        let url = self.endpoint(&["v1", "sandboxes", id, "restore"], &[]);
        let body = to_json(&RestoreSnapshot {
            snapshot_id: snapshot_id.to_owned(),
        })?;
        // A restore of a large archive takes a while; give it the long-poll margin.
        self.call_ok(Method::POST, url, Some(body), Some(RESTORE_WAIT))
            .await
    }

    /// `GET /v1/estimate`: what a sandbox of `profile` living `ttl`
    /// (humantime; the profile's default when `None`) would cost, and where
    /// it would run now.
    pub async fn estimate(
        &self,
        profile: &str,
        ttl: Option<&str>,
    ) -> Result<Estimate, ClientError> {
        let mut query = vec![("profile", profile.to_owned())];
        if let Some(ttl) = ttl {
            query.push(("ttl", ttl.to_owned()));
        }
        let url = self.endpoint(&["v1", "estimate"], &query);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/credits/{project}`: balance, reserved and available credits.
    pub async fn balance(&self, project: &str) -> Result<Balance, ClientError> {
        let project = check_id(project)?;
        let url = self.endpoint(&["v1", "credits", project], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `POST /v1/credits/{project}/grants` (operator): adds `amount` credits.
    /// Answers the status (201 granted, 200 a retry of the grant made with
    /// the same `idempotency_key`) and the ledger entry.
    pub async fn grant(
        &self,
        project: &str,
        amount: i64,
        reason: &str,
        idempotency_key: Option<&str>,
    ) -> Result<(u16, LedgerEntry), ClientError> {
        let project = check_id(project)?;
        let url = self.endpoint(&["v1", "credits", project, "grants"], &[]);
        let mut extra = HeaderMap::new();
        if let Some(key) = idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                ClientError::Invalid(
                    "the idempotency key contains characters not allowed in an HTTP header".into(),
                )
            })?;
            extra.insert("idempotency-key", value);
        }
        let body = to_json(&CreateGrant {
            amount,
            reason: reason.to_owned(),
        })?;
        self.call(Method::POST, url, Some(body), extra, None).await
    }

    /// `GET /v1/credits/{project}/ledger`: one page of ledger entries, newest
    /// first (of one sandbox with `sandbox_id`).
    pub async fn ledger(
        &self,
        project: &str,
        sandbox_id: Option<&str>,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<Page<LedgerEntry>, ClientError> {
        let project = check_id(project)?;
        let url = self.endpoint(
            &["v1", "credits", project, "ledger"],
            &ledger_pairs(sandbox_id, limit, cursor),
        );
        self.call_ok(Method::GET, url, None, None).await
    }

    /// Every ledger entry of `project` (of one sandbox with `sandbox_id`),
    /// newest first, following `next_cursor` to the last page.
    pub async fn ledger_all(
        &self,
        project: &str,
        sandbox_id: Option<&str>,
    ) -> Result<Vec<LedgerEntry>, ClientError> {
        let project = check_id(project)?;
        self.all_pages(None, |cursor| {
            self.endpoint(
                &["v1", "credits", project, "ledger"],
                &ledger_pairs(sandbox_id, Some(1000), cursor),
            )
        })
        .await
    }

    /// `GET /v1/usage?format=json`: per-sandbox usage for billing.
    pub async fn usage(&self, q: &UsageQuery) -> Result<UsageReport, ClientError> {
        let url = self.endpoint(&["v1", "usage"], &q.to_pairs("json"));
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /v1/usage?format=csv`: the same as CSV text (a header row, then
    /// one row per sandbox).
    pub async fn usage_csv(&self, q: &UsageQuery) -> Result<String, ClientError> {
        let url = self.endpoint(&["v1", "usage"], &q.to_pairs("csv"));
        let (status, bytes) = self
            .send(Method::GET, &url, None, HeaderMap::new(), None)
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        String::from_utf8(bytes).map_err(|e| {
            ClientError::Decode(format!("GET {url} answered CSV that is not UTF-8: {e}"))
        })
    }

    /// `GET /healthz`: 200 while the process serves.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let url = self.endpoint(&["healthz"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// `GET /readyz`: 200 once the daemon is ready; a 503 comes back as
    /// [`ClientError::Api`] with status 503.
    pub async fn ready(&self) -> Result<Health, ClientError> {
        let url = self.endpoint(&["readyz"], &[]);
        self.call_ok(Method::GET, url, None, None).await
    }

    /// Escape hatch for tests: sends `method` to `path` (which may carry a
    /// query string, e.g. `/v1/sandboxes?limit=0`) with an optional JSON body
    /// and answers the status and body whatever the status is. An empty body
    /// is `null`; a body that is not JSON comes back as a JSON string.
    /// Only transport failures are errors.
    pub async fn request_json(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(u16, serde_json::Value), ClientError> {
        let url = self.raw_endpoint(path)?;
        let (status, bytes) = self
            .send(method, &url, body, HeaderMap::new(), None)
            .await?;
        let value = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
            })
        };
        Ok((status.as_u16(), value))
    }

    /// The URL of `segments` under the base URL (each segment
    /// percent-encoded, so an id can never escape its path position), with
    /// `query` appended.
    fn endpoint(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        // `parse_base_url` rejected URLs that cannot take path segments.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// `path` (with an optional query) under the base URL, taken as written.
    fn raw_endpoint(&self, path: &str) -> Result<Url, ClientError> {
        let base = self.base.as_str().trim_end_matches('/');
        let path = path.trim_start_matches('/');
        Url::parse(&format!("{base}/{path}"))
            .map_err(|e| ClientError::Invalid(format!("invalid request path `{path}`: {e}")))
    }

    /// Sends a request and decodes a 2xx answer as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        headers: HeaderMap,
        long_poll: Option<Duration>,
    ) -> Result<(u16, T), ClientError> {
        let (status, bytes) = self
            .send(method.clone(), &url, body, headers, long_poll)
            .await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Decode(format!(
                "unexpected answer to {method} {url} (HTTP {}): {e}",
                status.as_u16()
            ))
        })?;
        Ok((status.as_u16(), value))
    }

    /// [`Client::call`] for endpoints whose success status carries no meaning.
    async fn call_ok<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<serde_json::Value>,
        long_poll: Option<Duration>,
    ) -> Result<T, ClientError> {
        self.call(method, url, body, HeaderMap::new(), long_poll)
            .await
            .map(|(_, value)| value)
    }

    /// Sends one request and reads the whole answer.
    async fn send(
        &self,
        method: Method,
        url: &Url,
        body: Option<serde_json::Value>,
        headers: HeaderMap,
        long_poll: Option<Duration>,
    ) -> Result<(StatusCode, Vec<u8>), ClientError> {
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .headers(headers);
        if let Some(body) = &body {
            req = req.json(body);
        }
        if let Some(wait) = long_poll {
            req = req.timeout(request_timeout(wait));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&method, url, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&method, url, &e))?;
        Ok((status, bytes.to_vec()))
    }

    /// Fetches pages from `first` on, following `next_cursor` until it is null.
    async fn all_pages<T: DeserializeOwned>(
        &self,
        first: Option<String>,
        mut url_for: impl FnMut(Option<&str>) -> Url,
    ) -> Result<Vec<T>, ClientError> {
        let mut items = Vec::new();
        let mut cursor = first;
        let mut seen = HashSet::new();
        loop {
            let url = url_for(cursor.as_deref());
            let page: Page<T> = self.call_ok(Method::GET, url.clone(), None, None).await?;
            items.extend(page.items);
            match page.next_cursor {
                None => return Ok(items),
                Some(next) => {
                    // A server that hands out a cursor twice would keep us here forever.
                    if !seen.insert(next.clone()) {
                        return Err(ClientError::Decode(format!(
                            "GET {url} answered the cursor `{next}` a second time; stopping"
                        )));
                    }
                    cursor = Some(next);
                }
            }
        }
    }
}

/// Parses and checks the base URL: http(s), able to take path segments.
fn parse_base_url(base_url: &str) -> Result<Url, ClientError> {
    let url = Url::parse(base_url.trim())
        .map_err(|e| ClientError::Invalid(format!("invalid daemon URL `{base_url}`: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(ClientError::Invalid(format!(
            "invalid daemon URL `{base_url}`: expected http://host:port or https://host:port"
        )));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(ClientError::Invalid(format!(
            "invalid daemon URL `{base_url}`: it must not carry a query or fragment"
        )));
    }
    Ok(url)
}

/// Rejects ids that would not name one path segment.
fn check_id(id: &str) -> Result<&str, ClientError> {
    // `.` and `..` are dropped by URL path normalization and would silently
    // hit another endpoint.
    if id.is_empty() || id == "." || id == ".." {
        return Err(ClientError::Invalid(format!("invalid id `{id}`")));
    }
    Ok(id)
}

/// Query of the ledger list.
fn ledger_pairs(
    sandbox_id: Option<&str>,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(s) = sandbox_id {
        pairs.push(("sandbox_id", s.to_owned()));
    }
    if let Some(l) = limit {
        pairs.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        pairs.push(("cursor", c.to_owned()));
    }
    pairs
}

/// `?wait=<duration>` when there is a wait.
fn wait_pairs(wait: Option<Duration>) -> Vec<(&'static str, String)> {
    wait.map(|w| ("wait", format_duration(w)))
        .into_iter()
        .collect()
}

/// A duration as a humantime string the server parses: whole seconds
/// (`60s`), or milliseconds when there is a fraction of a second (`1500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// The client-side timeout of a request that asks the server to wait `wait`.
fn request_timeout(wait: Duration) -> Duration {
    REQUEST_TIMEOUT.max(wait.saturating_add(LONG_POLL_MARGIN))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ClientError> {
    serde_json::to_value(value)
        .map_err(|e| ClientError::Invalid(format!("cannot encode the request body: {e}")))
}

/// Maps a non-2xx answer to [`ClientError::Api`]: its problem+json body, or
/// a problem made up from the status and the body text.
pub(crate) fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    let code = status.as_u16();
    if let Ok(problem) = serde_json::from_slice::<Problem>(body) {
        return ClientError::Api {
            status: code,
            problem,
        };
    }
    let title = status.canonical_reason().unwrap_or("HTTP error").to_owned();
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let detail = if text.is_empty() {
        format!("HTTP {code} {title} with an empty body")
    } else {
        truncate(text, MAX_DETAIL_BYTES)
    };
    ClientError::Api {
        status: code,
        problem: Problem {
            kind: "about:blank".to_owned(),
            title,
            status: code,
            detail,
            code: format!("http_{code}"),
            field: None,
        },
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes more)", &s[..end], s.len() - end)
}

/// A reqwest failure as [`ClientError::Transport`], naming the URL.
fn transport_error(method: &Method, url: &Url, err: &reqwest::Error) -> ClientError {
    let what = if err.is_timeout() {
        "timed out waiting for"
    } else if err.is_connect() {
        "could not connect to"
    } else {
        "could not reach"
    };
    ClientError::Transport(format!("{what} {url} ({method}): {}", chain(err)))
}

/// An error and its sources as one line, without repeating a message or the URL.
fn chain(err: &reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    // reqwest's own message embeds the URL, which the caller already names.
    let without_url = {
        let msg = err.to_string();
        match err.url() {
            Some(url) => msg.replace(&format!(" for url ({url})"), ""),
            None => msg,
        }
    };
    parts.push(without_url);
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        let msg = e.to_string();
        if parts.last() != Some(&msg) {
            parts.push(msg);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> Client {
        Client::new("http://127.0.0.1:7443", None).expect("valid URL")
    }

    #[test]
    fn list_query_sends_repeated_labels_in_order() {
        let q = ListQuery {
            state: Some("ready".into()),
            profile: Some("profile.local-shell".into()),
            labels: vec![("team".into(), "x".into()), ("run".into(), "a=b c".into())],
            include_all: true,
            limit: Some(10),
            cursor: Some("abc".into()),
            ..Default::default()
        };
        let url = client().endpoint(&["v1", "sandboxes"], &q.to_pairs());
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7443/v1/sandboxes?state=ready&profile=profile.local-shell\
             &label=team%3Dx&label=run%3Da%3Db+c&include=all&limit=10&cursor=abc"
        );
        let labels: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "label")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(labels, ["team=x", "run=a=b c"]);
    }

    #[test]
    fn empty_query_leaves_no_question_mark() {
        let url = client().endpoint(&["v1", "sandboxes"], &ListQuery::default().to_pairs());
        assert_eq!(url.as_str(), "http://127.0.0.1:7443/v1/sandboxes");
    }

    #[test]
    fn base_url_with_prefix_and_trailing_slash() {
        let c = Client::new("https://example.com/sandboxer/", None).expect("valid URL");
        let url = c.endpoint(
            &["v1", "sandboxes", "sbx_1"],
            &wait_pairs(Some(Duration::from_secs(60))),
        );
        assert_eq!(
            url.as_str(),
            "https://example.com/sandboxer/v1/sandboxes/sbx_1?wait=60s"
        );
        assert_eq!(
            c.raw_endpoint("/v1/sandboxes?limit=1")
                .expect("valid path")
                .as_str(),
            "https://example.com/sandboxer/v1/sandboxes?limit=1"
        );
    }

    #[test]
    fn ids_cannot_escape_their_segment() {
        let url = client().endpoint(&["v1", "sandboxes", "a/../b?x"], &[]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7443/v1/sandboxes/a%2F..%2Fb%3Fx"
        );
        assert!(matches!(check_id(".."), Err(ClientError::Invalid(_))));
        assert!(matches!(check_id(""), Err(ClientError::Invalid(_))));
    }

    #[test]
    fn bad_base_urls_are_refused() {
        for bad in [
            "",
            "127.0.0.1:7443",
            "ftp://host",
            "http://host/?x=1",
            "mailto:a@b",
        ] {
            assert!(
                matches!(Client::new(bad, None), Err(ClientError::Invalid(_))),
                "{bad} should be refused"
            );
        }
        assert!(matches!(
            Client::new("http://h", Some("bad\ntoken".into())),
            Err(ClientError::Invalid(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Client::new("http://h", Some("s3cret".into())).expect("valid");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(request_timeout(Duration::from_secs(30)), REQUEST_TIMEOUT);
        assert_eq!(
            request_timeout(Duration::from_secs(300)),
            Duration::from_secs(330)
        );
    }

    #[test]
    fn problem_bodies_are_kept() {
        let body = br#"{"type":"about:blank","title":"Not Found","status":404,
            "detail":"no sandbox sbx_1","code":"sandbox_not_found"}"#;
        match api_error(StatusCode::NOT_FOUND, body) {
            ClientError::Api { status, problem } => {
                assert_eq!(status, 404);
                assert_eq!(problem.code, "sandbox_not_found");
                assert_eq!(problem.detail, "no sandbox sbx_1");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_problem_bodies_become_problems() {
        let err = api_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            b"Failed to deserialize the JSON body\n",
        );
        match err {
            ClientError::Api { status, problem } => {
                assert_eq!(status, 422);
                assert_eq!(problem.code, "http_422");
                assert_eq!(problem.status, 422);
                assert_eq!(problem.title, "Unprocessable Entity");
                assert_eq!(problem.detail, "Failed to deserialize the JSON body");
            }
            other => panic!("unexpected {other:?}"),
        }
        // JSON that is not a problem, and an empty body.
        let err = api_error(StatusCode::SERVICE_UNAVAILABLE, br#"{"status":"starting"}"#);
        assert_eq!(err.code(), Some("http_503"));
        let err = api_error(StatusCode::BAD_GATEWAY, b"");
        match err {
            ClientError::Api { problem, .. } => {
                assert!(problem.detail.contains("502"), "{}", problem.detail)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn huge_error_bodies_are_cut_on_a_char_boundary() {
        let body = "é".repeat(MAX_DETAIL_BYTES);
        match api_error(StatusCode::INTERNAL_SERVER_ERROR, body.as_bytes()) {
            ClientError::Api { problem, .. } => {
                assert!(problem.detail.len() < MAX_DETAIL_BYTES + 64);
                assert!(problem.detail.ends_with("bytes more)"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
