//! What the daemon costs the machine: its memory, and the reaper's sweep
//! query over many rows.
use super::*;

/// 5. Resident memory of the daemon.
pub(crate) fn memory_section(
    plan: &Plan,
    idle: Memory,
    phases: &[(String, Memory)],
    peak_kib: u64,
    after: Memory,
) -> Section {
    let limit = 40 * 1024;
    let mut rows = vec![Row::judged(
        format!(
            "idle after start, {} rows (VmRSS)",
            thousands(plan.list_rows)
        ),
        mib(idle.rss_kib),
        "≤ 40 MiB",
        idle.rss_kib <= limit,
    )];
    for (phase, m) in phases {
        rows.push(Row::info(
            format!("right after the {phase} (VmRSS)"),
            mib(m.rss_kib),
        ));
    }
    rows.extend([
        Row::judged(
            "idle, 2 s after the whole run (VmRSS)",
            mib(after.rss_kib),
            "≤ 40 MiB",
            after.rss_kib <= limit,
        ),
        Row::info(
            format!(
                "peak during the {} concurrent creates (VmRSS sampled)",
                plan.concurrent
            ),
            mib(peak_kib),
        ),
        Row::info(
            "high-water mark over the whole run (VmHWM)",
            mib(after.hwm_kib),
        ),
    ]);
    Section {
        title: "5. Daemon memory".into(),
        note: format!(
            "`VmRSS` / `VmHWM` from `/proc/<pid>/status`. Idle: 2 s after start, before any \
             request, with the {rows} fixture rows in the database; and again 2 s after the whole \
             run. The peak is the highest `VmRSS` sampled every 5 ms during the {c} concurrent \
             creates and their destruction.",
            rows = thousands(plan.list_rows),
            c = plan.concurrent
        ),
        rows,
    }
}

/// `12345` as `12,345`.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// 6. The reaper's sweep query over a big table.
pub(crate) async fn reaper_section(plan: &Plan, db_path: &Path) -> anyhow::Result<Section> {
    let db = Db::open(db_path)
        .await
        .with_context(|| format!("opening {}", db_path.display()))?;
    let shape = fixtures::ReaperShape::new(plan.reaper_rows, plan.reaper_expired);
    let t0 = Instant::now();
    fixtures::reaper_rows(&db, shape).await?;
    let insert = t0.elapsed();
    let limit = u32::try_from(plan.reaper_expired).context("reaper batch")?;
    let mut runs = Vec::with_capacity(plan.reaper_runs);
    let mut first = Duration::ZERO;
    for i in 0..plan.reaper_runs {
        let t0 = Instant::now();
        let due = db.due_expiries(now_ms(), limit).await?;
        let dt = t0.elapsed();
        ensure!(
            due.len() == plan.reaper_expired,
            "the sweep found {} due rows, not {}",
            due.len(),
            plan.reaper_expired
        );
        if i == 0 {
            first = dt;
        }
        runs.push(dt);
    }
    db.close().await;
    let runs = Samples::new(runs);
    let limit_ms = Duration::from_millis(200);
    Ok(Section {
        title: format!(
            "6. Reaper sweep over {} rows, {} expired",
            thousands(plan.reaper_rows),
            thousands(plan.reaper_expired)
        ),
        note: format!(
            "A fresh database (`Db::open`, the daemon's pragmas and migrations) holding {} live rows \
             past `expires_at`, {} live rows not yet due and {} destroyed rows (expired long ago), \
             interleaved, written in one transaction in {}. Timed: \
             `Db::due_expiries(now, {})`, the sweep's query as the reaper runs it (what \
             `sandboxer_reaper_last_sweep_seconds` shows), {} runs.",
            thousands(shape.expired),
            thousands(shape.live),
            thousands(shape.destroyed),
            ms(insert),
            plan.reaper_expired,
            plan.reaper_runs
        ),
        rows: vec![
            Row::judged("median", ms(runs.p50()), "≤ 200 ms", runs.p50() <= limit_ms),
            Row::judged("max", ms(runs.max()), "≤ 200 ms", runs.max() <= limit_ms),
            Row::info("first run after opening", ms(first)),
        ],
    })
}
