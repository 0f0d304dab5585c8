//! Prices: integer arithmetic only. A rate is kept in hundredths of a credit
//! per hour (the extension's `credits_per_hour` times the profile's
//! `price_factor_percent`), so a factor never rounds a price; credits are
//! rounded up once, at the end.
use std::time::Duration;

use sandboxer_api::{CostBreakdown, Pricing};

/// Hundredths of a credit-hour in one credit-second: 3600 s × 100.
const CENTI_SECONDS_PER_CREDIT: i128 = 360_000;

/// The most any one amount may be (10^15 credits): keeps every sum far from
/// `i64` overflow, where SQLite would turn an integer into a float.
pub const MAX_CREDITS: i64 = 1_000_000_000_000_000;

/// The most `pricing.credits_per_hour` may be.
pub const MAX_CREDITS_PER_HOUR: i64 = 1_000_000_000;

/// The hourly rate in hundredths of a credit: `credits_per_hour × factor_percent`.
pub fn rate_centicredits(pricing: &Pricing, factor_percent: u32) -> i64 {
    pricing
        .credits_per_hour
        .clamp(0, MAX_CREDITS_PER_HOUR)
        .saturating_mul(i64::from(factor_percent))
}

/// The paused rate in hundredths of a credit: `credits_per_paused_hour ×
/// factor_percent`, never above the running rate.
pub fn paused_rate_centicredits(pricing: &Pricing, factor_percent: u32) -> i64 {
    pricing
        .credits_per_paused_hour
        .clamp(0, pricing.credits_per_hour.clamp(0, MAX_CREDITS_PER_HOUR))
        .saturating_mul(i64::from(factor_percent))
}

/// Whole seconds billed for `ms` milliseconds of running time (rounded up;
/// nothing for none).
pub fn billed_seconds(ms: i64) -> i64 {
    if ms <= 0 {
        0
    } else {
        ms / 1000 + i64::from(ms % 1000 != 0)
    }
}

/// Credits for `seconds` at `rate` hundredths of a credit per hour, rounded
/// up to a whole credit, at most [`MAX_CREDITS`]. Never decreases as
/// `seconds` grows, so a later cumulative target is never below an earlier one.
pub fn credits_for(rate: i64, seconds: i64) -> i64 {
    if rate <= 0 || seconds <= 0 {
        return 0;
    }
    let n = i128::from(rate) * i128::from(seconds);
    let credits = (n + CENTI_SECONDS_PER_CREDIT - 1) / CENTI_SECONDS_PER_CREDIT;
    i64::try_from(credits)
        .unwrap_or(MAX_CREDITS)
        .min(MAX_CREDITS)
}

/// Credits for `running` seconds at `rate` plus `paused` seconds at
/// `paused_rate` (hundredths of a credit per hour), rounded up once, at
/// most [`MAX_CREDITS`]. Never decreases as either grows; with
/// `paused_rate <= rate` never more than `credits_for(rate, running + paused)`.
pub fn credits_for_mix(rate: i64, running: i64, paused_rate: i64, paused: i64) -> i64 {
    let part = |r: i64, s: i64| {
        if r <= 0 || s <= 0 {
            0
        } else {
            i128::from(r) * i128::from(s)
        }
    };
    let n = part(rate, running) + part(paused_rate, paused);
    if n == 0 {
        return 0;
    }
    let credits = (n + CENTI_SECONDS_PER_CREDIT - 1) / CENTI_SECONDS_PER_CREDIT;
    i64::try_from(credits)
        .unwrap_or(MAX_CREDITS)
        .min(MAX_CREDITS)
}

/// What `ttl` costs at `pricing` scaled by `factor_percent`.
pub fn estimate(pricing: &Pricing, factor_percent: u32, ttl: Duration) -> CostBreakdown {
    let seconds = billed_seconds(crate::clock::millis(ttl));
    CostBreakdown {
        credits_per_hour: pricing.credits_per_hour,
        price_factor_percent: factor_percent,
        seconds,
        credits: credits_for(rate_centicredits(pricing, factor_percent), seconds),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing(credits_per_hour: i64) -> Pricing {
        Pricing {
            credits_per_hour,
            credits_per_snapshot_gib: 0,
            credits_per_paused_hour: 0,
        }
    }

    #[test]
    fn paused_time_is_charged_at_the_paused_rate_and_never_past_the_running_price() {
        // 36 credits/hour running, 3.6 paused: 100 s running is 1 credit,
        // 1000 s paused another 1, and the sum is rounded once.
        assert_eq!(credits_for_mix(3600, 100, 360, 1000), 2);
        assert_eq!(credits_for_mix(3600, 50, 360, 500), 1);
        assert_eq!(credits_for_mix(3600, 0, 0, 1000), 0);
        for (run, paused) in [(1, 1), (7, 3599), (3599, 1), (0, 0), (12345, 6789)] {
            assert!(
                credits_for_mix(3700, run, 1900, paused) <= credits_for(3700, run + paused),
                "{run}+{paused}"
            );
        }
        let p = Pricing {
            credits_per_hour: 10,
            credits_per_snapshot_gib: 0,
            credits_per_paused_hour: 50,
        };
        assert_eq!(
            paused_rate_centicredits(&p, 100),
            1000,
            "capped at the running rate"
        );
    }

    #[test]
    fn seconds_round_up() {
        assert_eq!(billed_seconds(0), 0);
        assert_eq!(billed_seconds(-5), 0);
        assert_eq!(billed_seconds(1), 1);
        assert_eq!(billed_seconds(1000), 1);
        assert_eq!(billed_seconds(1001), 2);
        assert_eq!(billed_seconds(i64::MAX), i64::MAX / 1000 + 1);
    }

    #[test]
    fn credits_round_up_once() {
        // 1 credit/hour: any started hour costs one credit.
        assert_eq!(credits_for(100, 1), 1);
        assert_eq!(credits_for(100, 3600), 1);
        assert_eq!(credits_for(100, 3601), 2);
        // 3600 credits/hour is one credit a second.
        assert_eq!(credits_for(360_000, 42), 42);
        // A 150% factor on 1 credit/hour: 1.5 credits for the hour, so 2.
        assert_eq!(credits_for(150, 3600), 2);
        assert_eq!(credits_for(150, 7200), 3);
        assert_eq!(credits_for(0, 3600), 0);
        assert_eq!(credits_for(i64::MAX, i64::MAX), MAX_CREDITS);
    }

    #[test]
    fn credits_never_decrease_with_time() {
        for rate in [1, 7, 100, 150, 360_000] {
            let mut last = 0;
            for s in 0..5000 {
                let c = credits_for(rate, s);
                assert!(c >= last, "rate {rate}, {s}s");
                last = c;
            }
        }
    }

    #[test]
    fn estimates_scale_by_the_factor() {
        let e = estimate(&pricing(10), 250, Duration::from_secs(3600));
        assert_eq!(
            e,
            CostBreakdown {
                credits_per_hour: 10,
                price_factor_percent: 250,
                seconds: 3600,
                credits: 25,
            }
        );
        let e = estimate(&pricing(1), 100, Duration::from_millis(1500));
        assert_eq!((e.seconds, e.credits), (2, 1));
        // Matches the create path's old formula for whole seconds at 100%.
        for (price, secs) in [(1i64, 3600i64), (7, 59), (3600, 3601), (12, 86_400)] {
            let ms = secs * 1000;
            let old = (price * ms + 3_599_999) / 3_600_000;
            let e = estimate(&pricing(price), 100, Duration::from_secs(secs as u64));
            assert_eq!(e.credits, old, "{price}/h for {secs}s");
        }
    }
}
