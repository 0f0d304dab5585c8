//! Credits: balances, the ledger, estimates, usage.
use super::*;

/// A balance as `key: value` lines.
pub fn balance_details(b: &sandboxer_api::Balance) -> String {
    key_values(&[
        ("project".into(), b.project.clone()),
        ("balance".into(), b.balance.to_string()),
        ("reserved".into(), b.reserved.to_string()),
        ("available".into(), b.available.to_string()),
    ])
}

/// Ledger entries as a table.
pub fn ledger_table(items: &[sandboxer_api::LedgerEntry]) -> String {
    let mut t = Table::new(&["AT", "KIND", "AMOUNT", "SANDBOX", "REASON"]);
    for e in items {
        t.row(vec![
            timestamp(e.created_at),
            e.kind.to_string(),
            e.amount.to_string(),
            match (&e.sandbox_id, e.generation) {
                (Some(s), Some(g)) if g > 1 => format!("{s} (gen {g})"),
                (Some(s), _) => s.clone(),
                (None, _) => "-".to_owned(),
            },
            e.reason.clone(),
        ]);
    }
    t.render()
}

/// An estimate as `key: value` lines.
pub fn estimate_details(e: &sandboxer_api::Estimate) -> String {
    let b = &e.breakdown;
    let mut lines: Vec<(String, String)> = vec![
        ("profile".into(), e.profile.clone()),
        ("extension".into(), e.extension.clone()),
        ("credits".into(), e.credits.to_string()),
        (
            "breakdown".into(),
            format!(
                "{} credits/hour × {}% × {}s, rounded up",
                b.credits_per_hour, b.price_factor_percent, b.seconds
            ),
        ),
    ];
    if let Some(r) = &e.route {
        lines.push(("route".into(), route_line(r)));
    }
    key_values(&lines)
}

/// A usage report as a table and a total.
pub fn usage_table(r: &sandboxer_api::UsageReport) -> String {
    let mut t = Table::new(&[
        "SANDBOX",
        "PROJECT",
        "PROFILE",
        "EXTENSION",
        "HOST",
        "START",
        "END",
        "SECONDS",
        "CREDITS",
    ]);
    for u in &r.items {
        t.row(vec![
            u.sandbox_id.clone(),
            u.project.clone(),
            u.profile.clone(),
            u.extension.clone(),
            u.host.clone(),
            u.start.map(timestamp).unwrap_or_else(|| "-".into()),
            u.end.map(timestamp).unwrap_or_else(|| "-".into()),
            u.seconds.to_string(),
            u.credits.to_string(),
        ]);
    }
    format!("{}total: {} credits\n", t.render(), r.total_credits)
}
