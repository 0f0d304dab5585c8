//! Credits: estimates, balances, grants, the ledger, usage.
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::Method;
use sandboxer_api::{Balance, CreateGrant, Estimate, LedgerEntry, Page, UsageReport};

use super::query::{ledger_pairs, UsageQuery};
use super::{api_error, check_id, to_json, Client, ClientError};

impl Client {
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
}
