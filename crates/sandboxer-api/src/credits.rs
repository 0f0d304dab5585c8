//! Credits: balances, the ledger, estimates and usage. Every amount is an
//! integer number of credits; there are no floats in money.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::Route;

/// Answer of `GET /v1/credits/{project}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Balance {
    pub project: String,
    /// Grants and refunds minus debits. May go below zero when credits are
    /// not enforced.
    pub balance: i64,
    /// Held for live sandboxes (reserves minus releases).
    pub reserved: i64,
    /// `balance - reserved`: what new creates and extends can reserve.
    pub available: i64,
}

/// Body of `POST /v1/credits/{project}/grants`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateGrant {
    /// Credits to add: a whole number from 1 to 1,000,000,000,000.
    pub amount: i64,
    /// Why (an invoice, a trial, ...): 1 to 512 characters.
    pub reason: String,
}

/// What a ledger entry does to a project's numbers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LedgerKind {
    /// Adds to the balance (operator).
    Grant,
    /// Holds credits for a sandbox (adds to reserved).
    Reserve,
    /// Gives held credits back (subtracts from reserved).
    Release,
    /// Charges use (subtracts from the balance).
    Debit,
    /// Gives charged credits back (adds to the balance).
    Refund,
}

impl LedgerKind {
    /// Every kind.
    pub const ALL: [LedgerKind; 5] = [
        LedgerKind::Grant,
        LedgerKind::Reserve,
        LedgerKind::Release,
        LedgerKind::Debit,
        LedgerKind::Refund,
    ];

    /// The wire name (`grant`, `debit`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LedgerKind::Grant => "grant",
            LedgerKind::Reserve => "reserve",
            LedgerKind::Release => "release",
            LedgerKind::Debit => "debit",
            LedgerKind::Refund => "refund",
        }
    }
}

impl std::fmt::Display for LedgerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for LedgerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LedgerKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("unknown ledger kind `{s}`"))
    }
}

/// One append-only ledger row.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LedgerEntry {
    /// `led_` followed by a ULID.
    pub id: String,
    pub project: String,
    /// The sandbox the entry is about (`null` for grants).
    pub sandbox_id: Option<String>,
    /// The sandbox generation the entry is about.
    pub generation: Option<u32>,
    pub kind: LedgerKind,
    /// Credits, never negative: the kind says which way they move.
    pub amount: i64,
    pub reason: String,
    /// Unique: writing the same key twice records the entry once.
    pub idempotency_key: String,
    pub created_at: DateTime<Utc>,
}

/// How an estimate is made up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CostBreakdown {
    /// The extension's price (`pricing.credits_per_hour`).
    pub credits_per_hour: i64,
    /// The profile's scale of that price (`price_factor_percent`, 100 = as is).
    pub price_factor_percent: u32,
    /// The lifetime priced, in whole seconds (rounded up).
    pub seconds: i64,
    /// `credits_per_hour × price_factor_percent / 100 × seconds / 3600`,
    /// rounded up to whole credits.
    pub credits: i64,
}

/// Answer of `GET /v1/estimate`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Estimate {
    pub profile: String,
    /// The extension a create would use now.
    pub extension: String,
    /// What a create would reserve.
    pub credits: i64,
    pub breakdown: CostBreakdown,
    /// For routed profiles, the decision a create would get now.
    #[serde(default)]
    pub route: Option<Route>,
}

/// One sandbox's use, as billed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageRecord {
    pub sandbox_id: String,
    pub project: String,
    pub profile: String,
    pub extension: String,
    pub host: String,
    /// The sandbox's current generation (`start`, `end` and `seconds` are its).
    pub generation: u32,
    /// When it became ready (billing starts); `null` if it never did.
    pub start: Option<DateTime<Utc>>,
    /// When it stopped being usable (billing ends); `null` while it runs.
    pub end: Option<DateTime<Utc>>,
    /// Billed running time so far, in whole seconds.
    pub seconds: i64,
    /// Credits debited for this sandbox within the report's window.
    pub credits: i64,
}

/// Answer of `GET /v1/usage?format=json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UsageReport {
    /// Only this project (`null`: every project, for operators).
    pub project: Option<String>,
    /// Debits at or after this time count.
    pub from: DateTime<Utc>,
    /// Debits before this time count.
    pub to: DateTime<Utc>,
    /// The sum of `credits` over `items`.
    pub total_credits: i64,
    /// Sandboxes debited in the window or running in it, oldest first.
    pub items: Vec<UsageRecord>,
}
