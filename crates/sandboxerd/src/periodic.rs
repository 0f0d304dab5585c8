//! The one loop behind every periodic background task (reaper, metering,
//! snapshot sweeper, stale sweeper): a tick every interval until stopped.
use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Run `tick` every `interval` until `stop` is cancelled.
///
/// The first tick runs at once. A tick that overruns the interval delays
/// the ones after it (`MissedTickBehavior::Delay`) instead of letting them
/// burst to catch up. `stop` is looked at between ticks: a tick runs to its
/// end (one that must stop at once selects on `stop` itself). A failed tick
/// is logged as "`name` failed; retrying next tick", and the next one runs
/// as usual.
///
/// `tick` makes a future that owns what it uses (clone an `AppState` into
/// it), so the loop can be spawned: an `AsyncFnMut` borrowing from the
/// closure would not be `Send` for every lifetime.
pub async fn every<T, E, Fut>(
    interval: Duration,
    stop: CancellationToken,
    name: &'static str,
    mut tick: impl FnMut() -> Fut,
) where
    E: Display,
    Fut: Future<Output = Result<T, E>>,
{
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if let Err(e) = tick().await {
            tracing::error!(error = %e, "{name} failed; retrying next tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn ticks_at_once_then_every_interval_until_stopped() {
        let stop = CancellationToken::new();
        let count = Arc::new(AtomicU32::new(0));
        let task = tokio::spawn({
            let (stop, count) = (stop.clone(), count.clone());
            every(Duration::from_millis(300), stop, "test tick", move || {
                // A failing tick does not end the loop.
                count.fetch_add(1, Ordering::SeqCst);
                std::future::ready(Err::<(), _>("boom"))
            })
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            count.load(Ordering::SeqCst),
            1,
            "the first tick runs at once"
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while count.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("ticks go on after failed ones");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop ends when stopped")
            .expect("no panic");
    }
}
