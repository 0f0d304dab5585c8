//! Backends behind one trait. A backend is one module here plus one YAML
//! file under `extensions/`; the catalog binds the two by id.
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sandboxer_api::{Availability, Profile};

pub mod local;

/// What a backend needs to provision one sandbox.
#[derive(Debug, Clone)]
pub struct ProvisionRequest {
    pub sandbox_id: String,
    pub generation: u32,
    pub profile: Profile,
    pub inputs: BTreeMap<String, String>,
    pub host: String,
}

/// A backend's view of a running sandbox, kept on the sandbox row as JSON so a
/// restarted daemon can find (and tear down) what it made.
pub type BackendState = serde_json::Value;

/// What `wait_ready` learns: how to reach the sandbox, and the state to keep.
#[derive(Debug, Clone)]
pub struct ReadyInfo {
    pub reachability: serde_json::Value,
    pub backend_state: BackendState,
}

/// Whether a backend still holds a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    Gone,
}

/// A backend failure with a stable code that ends up in the sandbox's `failure`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ExtError {
    pub code: &'static str,
    pub message: String,
}

impl ExtError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// One sandbox backend. Every method may be retried: `teardown` in
/// particular must succeed on a sandbox that is half made, already gone, or
/// was never made at all, so that a restarted daemon can always finish it.
#[async_trait]
pub trait Extension: Send + Sync {
    /// The catalog id (`ext.local`).
    fn id(&self) -> &'static str;

    /// Whether the backend can provision right now (checked live).
    async fn availability(&self) -> Availability;

    /// Host ids this backend places on.
    fn hosts(&self) -> Vec<String>;

    /// Start making the sandbox. Returns the state needed to find it again.
    async fn provision(&self, req: &ProvisionRequest) -> Result<BackendState, ExtError>;

    /// Wait until the sandbox is reachable, at most `timeout`.
    async fn wait_ready(
        &self,
        sandbox_id: &str,
        state: &BackendState,
        timeout: Duration,
    ) -> Result<ReadyInfo, ExtError>;

    /// Remove everything the sandbox holds on the backend. Idempotent.
    async fn teardown(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<(), ExtError>;

    /// Ask the backend whether the sandbox still exists.
    async fn probe(
        &self,
        sandbox_id: &str,
        state: Option<&BackendState>,
    ) -> Result<Liveness, ExtError>;
}

/// The extensions the daemon has code for, by id.
#[derive(Clone, Default)]
pub struct Registry {
    by_id: HashMap<String, Arc<dyn Extension>>,
}

impl Registry {
    pub fn insert(&mut self, ext: Arc<dyn Extension>) {
        self.by_id.insert(ext.id().to_owned(), ext);
    }

    pub fn get(&self, id: &str) -> Option<Arc<dyn Extension>> {
        self.by_id.get(id).cloned()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }
}
