//! Routing: how a profile that names candidates instead of one extension is
//! placed, and the decision recorded on each routed sandbox.
use serde::{Deserialize, Serialize};

/// How the router orders a profile's candidates.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RoutingPolicy {
    /// The candidates in the order the profile lists them.
    Explicit,
    /// Self-hosted candidates first, then SaaS; listed order within each class.
    PreferSelfHosted,
    /// Cheapest estimate for the requested TTL first; listed order breaks ties.
    LowestCost,
}

impl RoutingPolicy {
    /// The wire name (`prefer-self-hosted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RoutingPolicy::Explicit => "explicit",
            RoutingPolicy::PreferSelfHosted => "prefer-self-hosted",
            RoutingPolicy::LowestCost => "lowest-cost",
        }
    }
}

impl std::fmt::Display for RoutingPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A profile's routing: a policy over candidate extensions (instead of one
/// bound `extension`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Routing {
    pub policy: RoutingPolicy,
    /// Extension ids (`ext.…`), each at most once.
    pub candidates: Vec<String>,
    /// Only candidates that can snapshot and restore qualify.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_snapshot: bool,
}

/// One candidate as the router saw it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RouteCandidate {
    /// The extension id.
    pub extension: String,
    /// What a sandbox of the requested TTL would cost on it, in credits.
    pub estimate_credits: i64,
    /// Why it was not used (unavailable, a missing capability, failed
    /// before ready, ...); absent for the chosen one and for candidates
    /// after it that were not needed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// The router's decision, recorded on the sandbox (`null` for profiles
/// bound to one extension).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Route {
    pub policy: RoutingPolicy,
    /// Every candidate, in the order the policy put them.
    pub considered: Vec<RouteCandidate>,
    /// The extension the sandbox runs (or last tried) on; `null` when none qualified.
    pub chosen: Option<String>,
}
