//! Reaching into a running sandbox (API v1.1): which sandbox, whether it
//! can be reached now, its agent, the activity every call counts as, and
//! how many execs may run in it at once. `http::access` parses and renders
//! around these; the work itself is the agent's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sandboxer_agent::client::{self, CallError, Conn};
use sandboxer_agent::proto::Request;
use sandboxer_api::ProblemCode;

use super::error::{Missing, OpError, Refusal};
use crate::extensions::AgentEndpoint;
use crate::store::Transition;
use crate::AppState;

/// Activity is written at most this often per sandbox (a `ready` sandbox
/// becomes `active` on its first call whatever this says).
const TOUCH_EVERY: Duration = Duration::from_secs(1);

/// A reachable sandbox's agent.
#[derive(Debug, Clone)]
pub struct Target {
    pub sandbox_id: String,
    pub project: String,
    pub extension: String,
    pub endpoint: AgentEndpoint,
}

impl Target {
    /// Processes killed in the sandbox at its memory limit so far, where
    /// its backend counts them.
    pub async fn oom_kills(&self, state: &AppState) -> Option<u64> {
        let ext = state.extensions.get(&self.extension)?;
        ext.usage(&self.sandbox_id, None, false)
            .await
            .map(|u| u.oom_kills)
    }

    /// Whether a command that ended with `exit`, started when the sandbox
    /// had `before` OOM kills, was (most likely) one of them: it died of
    /// SIGKILL and the count rose meanwhile.
    pub async fn was_oom_killed(
        &self,
        state: &AppState,
        before: Option<u64>,
        exit: &sandboxer_api::ExecExit,
    ) -> bool {
        if exit.signal.as_deref() != Some("KILL") || exit.timed_out {
            return false;
        }
        match (before, self.oom_kills(state).await) {
            (Some(b), Some(a)) => a > b,
            _ => false,
        }
    }

    /// Opens one request to the agent (about `service`, for a backend with
    /// several), within `timeout`.
    pub async fn open(
        &self,
        service: Option<&str>,
        req: &Request,
        timeout: Duration,
    ) -> Result<Conn, CallError> {
        match &self.endpoint {
            AgentEndpoint::Unix(socket) => client::open(socket, req, timeout).await,
            AgentEndpoint::Served(server) => {
                let (ours, theirs) = tokio::net::UnixStream::pair()
                    .map_err(|e| CallError::Unreachable(format!("a socket pair: {e}")))?;
                server.clone().serve(service.map(str::to_owned), theirs);
                client::open_on(ours, req, timeout).await
            }
        }
    }

    /// [`Target::open`] and the one-line answer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        service: Option<&str>,
        req: &Request,
        timeout: Duration,
    ) -> Result<(T, Conn), CallError> {
        let mut conn = self.open(service, req, timeout).await?;
        let v = conn.reply(timeout).await?;
        Ok((v, conn))
    }
}

/// Per-sandbox bookkeeping of calls: execs running, last activity written.
#[derive(Default)]
pub struct Gates {
    running: Mutex<HashMap<String, u32>>,
    touched: Mutex<HashMap<String, Instant>>,
}

/// An exec slot; freed when dropped.
pub struct Slot {
    gates: Arc<Gates>,
    id: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.gates.running.lock() {
            if let Some(n) = m.get_mut(&self.id) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.id);
                }
            }
        }
    }
}

impl Gates {
    /// Takes one of the `max` exec slots of sandbox `id`.
    pub fn exec_slot(self: &Arc<Self>, id: &str, max: u32) -> Result<Slot, OpError> {
        let too_many = |running: u32| {
            OpError::refused(
                Refusal::Busy,
                ProblemCode::TooManyExecs,
                format!("{running} execs are running in sandbox {id}, the most `[access] max_concurrent_execs` allows"),
            )
        };
        let mut m = self.running.lock().map_err(|_| too_many(max))?;
        let n = m.entry(id.to_string()).or_insert(0);
        if *n >= max {
            return Err(too_many(*n));
        }
        *n += 1;
        Ok(Slot {
            gates: self.clone(),
            id: id.to_string(),
        })
    }

    /// Whether activity should be written now (and notes that it is).
    fn due(&self, id: &str, force: bool) -> bool {
        let Ok(mut m) = self.touched.lock() else {
            return true;
        };
        let now = Instant::now();
        if !force
            && m.get(id)
                .is_some_and(|t| now.duration_since(*t) < TOUCH_EVERY)
        {
            return false;
        }
        if m.len() > 100_000 {
            m.retain(|_, t| now.duration_since(*t) < TOUCH_EVERY);
        }
        m.insert(id.to_string(), now);
        true
    }
}

/// The agent of sandbox `id` as `scope` sees it (`None`: every project),
/// after checking it is `ready` or `active`; counts as activity.
pub async fn target(state: &AppState, scope: Option<&str>, id: &str) -> Result<Target, OpError> {
    let Some(row) = state.db.get_row(id, scope).await? else {
        return Err(OpError::not_found(Missing::Sandbox, id));
    };
    if row.state != "ready" && row.state != "active" {
        return Err(wrong_state(id, &row.state));
    }
    let backend_state: serde_json::Value = row
        .backend_state
        .as_deref()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    let endpoint = state
        .extensions
        .get(&row.extension)
        .and_then(|ext| ext.agent(id, &backend_state));
    let Some(endpoint) = endpoint else {
        return Err(OpError::conflict(
            ProblemCode::Unsupported,
            format!(
                "extension {} cannot run commands or move files in its sandboxes",
                row.extension
            ),
        ));
    };
    if state.access_gates.due(id, row.state == "ready") {
        match state.db.touch(id).await? {
            Transition::Done { .. } => state.notify(id),
            Transition::Refused(sbx) => return Err(wrong_state(id, &sbx.state.to_string())),
            Transition::NotFound => return Err(OpError::not_found(Missing::Sandbox, id)),
            Transition::InsufficientCredits(short) => {
                return Err(OpError::insufficient(short, &row.project, "more activity"))
            }
        }
    }
    Ok(Target {
        sandbox_id: id.into(),
        project: row.project,
        extension: row.extension,
        endpoint,
    })
}

fn wrong_state(id: &str, state: &str) -> OpError {
    OpError::conflict(
        ProblemCode::InvalidState,
        format!("sandbox {id} is `{state}`; only ready or active sandboxes can be reached"),
    )
}

/// A checked SSH public key.
pub struct CheckedKey {
    /// `SHA256:…`
    pub fingerprint: String,
    /// The key line without its comment.
    pub public_key: String,
    pub comment: String,
}

/// Parses an OpenSSH public key line; refuses what is not one, and RSA
/// keys under 2048 bits. `field` names it in the error.
pub fn check_key(line: &str, field: &str) -> Result<CheckedKey, OpError> {
    use russh::keys::{HashAlg, PublicKey};
    let bad = |why: String| OpError::invalid(ProblemCode::InvalidSshKey, field, why);
    if line.len() > 16 * 1024 {
        return Err(bad("longer than 16 KiB".into()));
    }
    let mut key = PublicKey::from_openssh(line.trim())
        .map_err(|e| bad(format!("not an OpenSSH public key line ({e})")))?;
    if let Some(rsa) = key.key_data().rsa() {
        if rsa.key_size() < 2048 {
            return Err(bad(format!(
                "RSA keys need at least 2048 bits; this one has {}",
                rsa.key_size()
            )));
        }
    }
    let comment = key.comment().as_str_lossy().to_string();
    key.set_comment("");
    let public_key = key
        .to_openssh()
        .map_err(|e| bad(format!("cannot be written back ({e})")))?
        .trim()
        .to_string();
    Ok(CheckedKey {
        fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
        public_key,
        comment: comment.chars().take(256).collect(),
    })
}

/// Registers `keys` (checked already) for sandbox `id`.
pub async fn add_keys(state: &AppState, id: &str, keys: &[CheckedKey]) -> Result<(), OpError> {
    for k in keys {
        state
            .db
            .add_ssh_key(id, &k.fingerprint, &k.public_key, &k.comment)
            .await?;
    }
    Ok(())
}
