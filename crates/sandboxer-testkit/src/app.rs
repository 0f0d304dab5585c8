//! The daemon's app in-process on a fresh database, driven with
//! `Router::oneshot`: the handler-test layer.
use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use sandboxerd::config::Settings;
use sandboxerd::AppState;
use serde_json::Value;
use tower::ServiceExt;

use crate::dir::TestDir;
use crate::fixtures::settings;

/// An answer of the app: status, content type, and the body as JSON (a
/// JSON string holding the text when it is not JSON).
pub type Reply = (StatusCode, String, Value);

/// The app on a fresh database in a [`TestDir`] of its own; clones share
/// both (to send from spawned tasks).
#[derive(Clone)]
pub struct TestApp {
    /// Its directory; the data dir is `<dir>/data`.
    pub dir: Arc<TestDir>,
    /// The state the app runs on (store, settings, extensions).
    pub state: AppState,
    /// The router requests go through.
    pub app: Router,
}

impl TestApp {
    /// The app on the checkout's catalog with [`settings`].
    pub async fn new() -> TestApp {
        Self::with(|_, _| {}).await
    }

    /// The app on [`settings`] changed by `edit`, which also gets the
    /// directory (to write a catalog of its own there).
    pub async fn with(edit: impl FnOnce(&Path, &mut Settings)) -> TestApp {
        let dir = TestDir::new();
        let mut s = settings(&dir.path().join("data"));
        edit(dir.path(), &mut s);
        let state = sandboxerd::build_state(s).await.expect("state");
        let app = sandboxerd::http::app(state.clone());
        TestApp {
            dir: Arc::new(dir),
            state,
            app,
        }
    }

    /// Send `req` as it is.
    pub async fn send(&self, req: Request<Body>) -> Reply {
        let resp = self.app.clone().oneshot(req).await.expect("response");
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, ctype, body)
    }

    /// `method uri` without a token, with `body` as JSON when given.
    pub async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        self.call_as(method, uri, None, body).await
    }

    /// `method uri` with a bearer `token` when given, and `body` as JSON
    /// when given.
    pub async fn call_as(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).expect("request")).await
    }
}

/// Assert a problem answer: `status`, `application/problem+json`, the
/// stable `code`, a `status` field, a non-empty `detail`, and the `field`
/// it names when given.
pub fn assert_problem(got: &Reply, status: StatusCode, code: &str, field: Option<&str>) {
    let (s, ctype, body) = got;
    assert_eq!(*s, status, "status; body: {body}");
    assert_eq!(
        ctype, "application/problem+json",
        "content type; body: {body}"
    );
    assert_eq!(body["code"], code, "code; body: {body}");
    assert_eq!(
        body["status"],
        status.as_u16(),
        "status field; body: {body}"
    );
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "detail; body: {body}"
    );
    if let Some(f) = field {
        assert_eq!(body["field"], f, "field; body: {body}");
    }
}
