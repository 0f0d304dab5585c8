//! The outbox dispatcher: delivers lifecycle events to State Hub.
//!
//! Events are appended in the same transaction as each state change, so none
//! is lost; this task POSTs them in order per sandbox, marks them delivered
//! afterwards (at least once: a crash between the two sends an event again,
//! with the same id), and backs off while the hub fails. It runs apart from
//! the API, so an unreachable hub never slows a request.
use std::collections::HashSet;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::metrics::Counter;
use crate::store::{to_time, OutboxEvent};
use crate::AppState;

const BATCH: u32 = 256;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The waits after failed rounds: 100 ms, doubling up to 30 s, no jitter,
/// for as long as the hub keeps failing.
fn backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(MIN_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .without_max_times()
        .build()
}

/// Deliver events to `url` until `stop` is cancelled.
pub async fn run(state: AppState, url: String, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the State Hub client; events stay in the outbox");
            return;
        }
    };
    let mut changes = state.events.subscribe();
    let mut delays = backoff();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let batch = match state.db.undelivered(BATCH).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "reading the outbox failed");
                Vec::new()
            }
        };
        if batch.is_empty() {
            // Wake on the next state change, or poll now and then anyway.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = changes.recv() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        }
        let mut blocked: HashSet<String> = HashSet::new();
        let mut delivered = Vec::with_capacity(batch.len());
        for event in &batch {
            // Order per sandbox: after one failure, its later events wait.
            if blocked.contains(&event.sandbox_id) {
                continue;
            }
            match post(&client, &url, event).await {
                Ok(()) => delivered.push(event.seq),
                Err(e) => {
                    state.metrics.count(Counter::EventDeliveryFailures);
                    tracing::warn!(event_id = %event.id, sandbox_id = %event.sandbox_id, error = %e, "event delivery failed; will retry");
                    blocked.insert(event.sandbox_id.clone());
                }
            }
        }
        state
            .metrics
            .add(Counter::EventsDelivered, delivered.len() as u64);
        if let Err(e) = state.db.mark_delivered(&delivered).await {
            tracing::error!(error = %e, "marking events delivered failed; they will be sent again");
        }
        if blocked.is_empty() {
            delays = backoff();
        } else {
            let wait = delays.next().unwrap_or(MAX_BACKOFF);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The JSON body POSTed for one event.
pub fn payload(event: &OutboxEvent) -> serde_json::Value {
    json!({
        "event_id": event.id,
        "sandbox_id": event.sandbox_id,
        "generation": event.generation,
        "profile": event.profile,
        "extension": event.extension,
        "host": event.host,
        "consumer": {"actor_type": event.actor_type, "actor": event.actor, "project": event.project},
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        "at": to_time(event.at),
        "expires_at": to_time(event.expires_at),
        "termination": event.termination.as_ref().map(|reason| json!({
            "reason": reason,
            "at": to_time(event.at),
            "detail": event.termination_detail,
        })),
    })
}

async fn post(client: &reqwest::Client, url: &str, event: &OutboxEvent) -> Result<(), String> {
    let resp = client
        .post(url)
        .header("Idempotency-Key", &event.id)
        .json(&payload(event))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("State Hub answered {}", resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_to_30s() {
        let waits: Vec<u128> = backoff().take(11).map(|d| d.as_millis()).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
    }
}
