//! [`Client`]: one method per endpoint of the sand-boxer API, answering the
//! shared wire types, with every failure folded into [`ClientError`].

// `ClientError::Api` carries the whole `Problem` unboxed so callers can match
// on `problem.code` directly; errors are rare next to a network round trip,
// so the larger `Result` costs nothing that matters.
//!
//! The methods are grouped by resource: `sandboxes.rs`, `snapshots.rs`,
//! `credits.rs` (and the crate's `hosts.rs`); here are the client itself,
//! the catalog and health routes, and the one way every request is sent.

// `ClientError::Api` carries the whole `Problem` unboxed so callers can match
// on `problem.code` directly; errors are rare next to a network round trip,
// so the larger `Result` costs nothing that matters.
#![allow(clippy::result_large_err)]
use std::collections::HashSet;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode, Url};
use sandboxer_api::{Extension, Health, Page, Profile};
use serde::de::DeserializeOwned;

mod access;
mod credits;
mod error;
mod query;
mod sandboxes;
mod snapshots;
mod templates;

pub use access::{Download, EventStream, ExecEvent};
pub(crate) use error::api_error;
pub use error::ClientError;
use error::{chain, transport_error};
pub use query::{format_duration, ListQuery, SnapshotQuery, UsageQuery};
pub use templates::TemplateSource;

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

/// The client-side timeout of a request that asks the server to wait `wait`.
fn request_timeout(wait: Duration) -> Duration {
    REQUEST_TIMEOUT.max(wait.saturating_add(LONG_POLL_MARGIN))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, ClientError> {
    serde_json::to_value(value)
        .map_err(|e| ClientError::Invalid(format!("cannot encode the request body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::query::wait_pairs;
    use super::*;

    pub(super) fn client() -> Client {
        Client::new("http://127.0.0.1:7443", None).expect("valid URL")
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
}
