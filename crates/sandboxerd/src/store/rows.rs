//! Row types as stored.
use std::str::FromStr;

use sandboxer_api::{Consumer, Cost, Event, Failure, Sandbox, SandboxState, Termination};

use super::to_time;

use super::StoreError;

/// A `sandboxes` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SandboxRow {
    pub id: String,
    pub profile: String,
    pub profile_version: u32,
    pub extension: String,
    pub host: String,
    pub state: String,
    pub actor_type: String,
    pub actor: String,
    pub project: String,
    pub inputs: String,
    pub labels: String,
    pub generation: u32,
    pub created_at: i64,
    pub updated_at: i64,
    pub ready_at: Option<i64>,
    pub expires_at: i64,
    pub max_expires_at: i64,
    pub destroyed_at: Option<i64>,
    pub last_activity_at: i64,
    pub reachability: Option<String>,
    pub backend_state: Option<String>,
    pub failure_code: Option<String>,
    pub failure_message: Option<String>,
    pub estimate_credits: i64,
    pub accrued_credits: i64,
    pub teardown_attempts: i64,
    pub next_teardown_at: Option<i64>,
    /// Hundredths of a credit per hour of running time.
    pub rate_centicredits: i64,
    /// When this generation stopped being usable (billing ends).
    pub ended_at: Option<i64>,
    /// When this generation's use was settled.
    pub settled_at: Option<i64>,
    /// The router's decision (JSON), for routed profiles.
    pub route: Option<String>,
    /// The profile whose warm pool holds this sandbox, while it is unassigned.
    pub pool: Option<String>,
    pub termination_reason: Option<String>,
    pub termination_at: Option<i64>,
    pub termination_detail: Option<String>,
    pub name: Option<String>,
    pub exit_snapshot: Option<String>,
    pub paused_at: Option<i64>,
    pub paused_ms: i64,
    /// Hundredths of a credit per hour of paused time.
    pub paused_rate_centicredits: i64,
    /// `user` or `credits_exhausted`, while paused.
    pub pause_reason: Option<String>,
    /// `ttl.pause_stops_clock`: the TTL left when the pause began.
    pub ttl_left_ms: Option<i64>,
    /// `ttl.pause_stops_clock`: credits added to the estimate for the pause.
    pub pause_reserve_credits: i64,
}

impl SandboxRow {
    /// The lifecycle state.
    pub fn state(&self) -> Result<SandboxState, StoreError> {
        SandboxState::from_str(&self.state).map_err(|what| StoreError::Corrupt {
            id: self.id.clone(),
            what,
        })
    }

    /// The extension's handle, if one was recorded.
    pub fn backend_state(&self) -> Option<serde_json::Value> {
        self.backend_state
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok())
    }
}

/// An `events` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub seq: i64,
    pub id: String,
    pub sandbox_id: String,
    pub generation: u32,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub at: i64,
    pub termination: Option<String>,
}

impl EventRow {
    /// The event as the API shows it.
    pub fn into_api(self) -> Result<Event, StoreError> {
        let parse = |s: &str| {
            SandboxState::from_str(s).map_err(|what| StoreError::Corrupt {
                id: self.id.clone(),
                what,
            })
        };
        Ok(Event {
            from_state: self.from_state.as_deref().map(parse).transpose()?,
            to_state: parse(&self.to_state)?,
            generation: self.generation,
            at: to_time(self.at),
            id: self.id,
            sandbox_id: self.sandbox_id,
            reason: self.reason,
            termination: self.termination.as_deref().and_then(|t| t.parse().ok()),
        })
    }
}

impl SandboxRow {
    /// The row as the API shows it.
    pub fn into_api(self) -> Result<Sandbox, StoreError> {
        let state = self.state()?;
        let corrupt = |what: String| StoreError::Corrupt {
            id: self.id.clone(),
            what,
        };
        let inputs =
            serde_json::from_str(&self.inputs).map_err(|e| corrupt(format!("inputs: {e}")))?;
        let labels =
            serde_json::from_str(&self.labels).map_err(|e| corrupt(format!("labels: {e}")))?;
        let reachability = match &self.reachability {
            Some(r) => {
                Some(serde_json::from_str(r).map_err(|e| corrupt(format!("reachability: {e}")))?)
            }
            None => None,
        };
        let route = match &self.route {
            Some(r) => Some(serde_json::from_str(r).map_err(|e| corrupt(format!("route: {e}")))?),
            None => None,
        };
        let termination = match (&self.termination_reason, self.termination_at) {
            (Some(reason), Some(at)) => Some(Termination {
                reason: reason.parse().map_err(&corrupt)?,
                at: to_time(at),
                detail: self.termination_detail.clone().unwrap_or_default(),
            }),
            _ => None,
        };
        let failure = self.failure_code.clone().map(|code| Failure {
            code,
            message: self.failure_message.clone().unwrap_or_default(),
        });
        Ok(Sandbox {
            profile_version: self.profile_version,
            generation: self.generation,
            created_at: to_time(self.created_at),
            updated_at: to_time(self.updated_at),
            ready_at: self.ready_at.map(to_time),
            expires_at: to_time(self.expires_at),
            destroyed_at: self.destroyed_at.map(to_time),
            last_activity_at: to_time(self.last_activity_at),
            // Shown while paused only (a sandbox that ended paused keeps it
            // on the row, for its billing).
            paused_at: self
                .paused_at
                .filter(|_| state == SandboxState::Paused)
                .map(to_time),
            consumer: Consumer {
                actor_type: self.actor_type,
                actor: self.actor,
                project: self.project,
            },
            inputs,
            labels,
            state,
            reachability,
            failure,
            cost: Cost {
                estimate_credits: self.estimate_credits,
                accrued_credits: self.accrued_credits,
            },
            route,
            termination,
            usage: None,
            name: self.name,
            exit_snapshot: self.exit_snapshot,
            id: self.id,
            profile: self.profile,
            extension: self.extension,
            host: self.host,
        })
    }
}
