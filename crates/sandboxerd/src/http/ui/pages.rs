//! The status page's HTML (maud: every interpolation is escaped, so what a
//! tenant put in a name, a label or a failure message stays text).
use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use sandboxer_api::{Sandbox, SandboxState};

use crate::http::caller::Caller;
use crate::store::{ListFilter, SnapshotFilter, StoreError};
use crate::AppState;

/// Live sandboxes shown at most.
const LIVE: u32 = 500;
/// Ended sandboxes shown.
const ENDED: u32 = 25;
/// Recent events shown.
const EVENTS: u32 = 30;

/// `3h 2m`, `4m 10s`, `12s`; `0s` for nothing left.
pub fn span(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

fn at(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The order live states are shown in.
const LIVE_ORDER: [SandboxState; 5] = [
    SandboxState::Requested,
    SandboxState::Provisioning,
    SandboxState::Ready,
    SandboxState::Active,
    SandboxState::Paused,
];

fn frame(state: &AppState, caller: &Caller, title: &str, body: Markup) -> Markup {
    let who = if state.settings.tokens.is_empty() {
        "local operator (no tokens)".to_owned()
    } else if caller.operator {
        format!("{} (operator)", caller.consumer.actor)
    } else {
        format!(
            "{} (project {})",
            caller.consumer.actor, caller.consumer.project
        )
    };
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sand-boxer" }
                link rel="stylesheet" href="/ui/assets/style.css";
                script src="/ui/assets/live.js" defer {}
            }
            body {
                header {
                    a.brand href="/ui" { "sand-boxer" }
                    span.version { "sandboxerd " (env!("CARGO_PKG_VERSION")) }
                    span.who { (who) }
                    span.live-status id="live-status" title="live updates" { "live" }
                    @if !state.settings.tokens.is_empty() {
                        form.logout method="post" action="/ui/logout" { button type="submit" { "Log out" } }
                    }
                }
                main { (body) }
            }
        }
    }
}

fn state_badge(s: SandboxState) -> Markup {
    html! { span class={ "badge " (s.as_str()) } { (s.as_str()) } }
}

fn ttl_cell(s: &Sandbox, now: DateTime<Utc>) -> Markup {
    let left = (s.expires_at - now).num_seconds();
    html! {
        span.ttl data-expires=(s.expires_at.to_rfc3339()) title={ "expires " (at(s.expires_at)) " UTC" } {
            (span(left))
        }
    }
}

fn sandbox_link(id: &str) -> Markup {
    html! { a.id href={ "/ui/sandboxes/" (id) } { (id) } }
}

/// `/ui`.
pub async fn index(state: &AppState, caller: &Caller) -> Result<Markup, StoreError> {
    let scope = caller.scope();
    let now = Utc::now();
    let (live, more) = state
        .db
        .list_sandboxes(&ListFilter {
            states: LIVE_ORDER.to_vec(),
            project: scope.map(str::to_owned),
            limit: LIVE,
            ..ListFilter::default()
        })
        .await?;
    let (ended, _) = state
        .db
        .list_sandboxes(&ListFilter {
            states: vec![
                SandboxState::Destroying,
                SandboxState::Expired,
                SandboxState::Destroyed,
                SandboxState::Failed,
            ],
            include_all: true,
            project: scope.map(str::to_owned),
            limit: ENDED,
            ..ListFilter::default()
        })
        .await?;
    let events = state.db.recent_events(scope, None, EVENTS).await?;
    // Counts of every live sandbox (the table shows the newest only).
    let tally = state.db.live_counts(scope).await?;
    let count = |f: &dyn Fn(&str, &str) -> bool| -> i64 {
        tally
            .iter()
            .filter(|(st, host, _)| f(st, host))
            .map(|(_, _, n)| n)
            .sum()
    };
    // Links to the API's JSON work in a browser only without tokens (the
    // session cookie is the page's alone).
    let api_links = state.settings.tokens.is_empty();
    let balances = state.db.balances(scope, 200).await?;
    let pools = if caller.operator {
        crate::lifecycle::pool::gauges(state).await?
    } else {
        Vec::new()
    };
    let stale = state
        .stale_seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let counts: Vec<(SandboxState, i64)> = LIVE_ORDER
        .iter()
        .map(|st| (*st, count(&|s, _| s == st.as_str())))
        .collect();
    let body = html! {
        section.summary {
            @for (st, n) in &counts {
                div.count { span.n { (n) } " " (state_badge(*st)) }
            }
        }
        section id="live" {
            h2 { "Live sandboxes" }
            @if live.is_empty() {
                p.empty { "No live sandboxes." }
            } @else {
                table {
                    thead { tr {
                        th { "id" } th { "name" } th { "state" } th { "profile" }
                        th { "extension · host" } th { "project" } th { "TTL left" } th { "credits" }
                    } }
                    tbody {
                        @for st in LIVE_ORDER {
                            @for s in live.iter().filter(|s| s.state == st) {
                                tr data-id=(s.id) {
                                    td { (sandbox_link(&s.id)) }
                                    td { (s.name.as_deref().unwrap_or("")) }
                                    td { (state_badge(s.state)) }
                                    td { (s.profile) }
                                    td { (s.extension) " · " (s.host) }
                                    td { (s.consumer.project) }
                                    td { (ttl_cell(s, now)) }
                                    td.num { (s.cost.accrued_credits) " / " (s.cost.estimate_credits) }
                                }
                            }
                        }
                    }
                }
                @if more.is_some() {
                    p.more { "Only the newest " (LIVE) " are shown; " code { "GET /v1/sandboxes" } " has them all." }
                }
            }
        }
        section id="ended" {
            h2 { "Recently ended" }
            @if ended.is_empty() {
                p.empty { "None yet." }
            } @else {
                table {
                    thead { tr { th { "id" } th { "state" } th { "profile" } th { "ended" } th { "reason" } th { "detail" } } }
                    tbody {
                        @for s in &ended {
                            tr data-id=(s.id) {
                                td { (sandbox_link(&s.id)) }
                                td { (state_badge(s.state)) }
                                td { (s.profile) }
                                @match &s.termination {
                                    Some(t) => {
                                        td { (at(t.at)) }
                                        td { span.reason { (t.reason.as_str()) } }
                                        td.detail { (t.detail) }
                                    }
                                    None => { td {} td {} td {} }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if caller.operator {
            section id="hosts" {
                h2 { "Hosts" }
                @if state.settings.hosts.is_empty() {
                    p.empty { "No placement hosts configured ("  code { "[[hosts]]" } "); ext.local runs here." }
                } @else {
                    table {
                        thead { tr { th { "id" } th { "address" } th { "reachable" } th { "checked" } th { "engine · compose" } th { "live sandboxes" } th { "stale (last sweep)" } th { "error" } } }
                        tbody {
                            @for h in &state.settings.hosts {
                                @let seen = state.extensions.inventory_for(&h.id).and_then(|e| e.inventory().and_then(|i| i.seen(&h.id))).unwrap_or_default();
                                tr {
                                    td { (h.id) }
                                    td { (h.address) ":" (h.port) }
                                    td { @if seen.reachable == Some(true) { span.badge.ready { "yes" } } @else if seen.reachable == Some(false) { span.badge.failed { "no" } } @else { "unknown" } }
                                    td { @if let Some(ms) = seen.checked_at_ms { @if let Some(t) = DateTime::from_timestamp_millis(ms) { (at(t)) } } }
                                    td { (seen.engine.as_deref().unwrap_or("-")) " · " (seen.compose.as_deref().unwrap_or("-")) }
                                    td.num { (count(&|_, host| host == h.id)) }
                                    td.num { @match stale.get(&h.id) { Some(n) => { (n) } None => { "-" } } }
                                    td.detail { (seen.error.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            section id="pools" {
                h2 { "Warm pools" }
                @if pools.is_empty() {
                    p.empty { "No profile declares a pool." }
                } @else {
                    table {
                        thead { tr { th { "profile" } th { "size" } th { "members" } } }
                        tbody {
                            @for p in &pools {
                                tr {
                                    td { (p.profile) }
                                    td.num { (p.size) }
                                    td { @for (st, n) in &p.members { span.member { (st) " " (n) } " " } }
                                }
                            }
                        }
                    }
                }
            }
        }
        section id="credits" {
            h2 { "Credits" }
            @if balances.is_empty() {
                p.empty { "No project has a ledger yet." }
            } @else {
                table {
                    thead { tr { th { "project" } th { "balance" } th { "reserved" } th { "available" } } }
                    tbody {
                        @for b in &balances {
                            tr class=@if b.balance <= 0 { "exhausted" } @else { "" } {
                                td { @if api_links { a href={ "/v1/credits/" (b.project) "/ledger" } { (b.project) } } @else { (b.project) } }
                                td.num { (b.balance) }
                                td.num { (b.reserved) }
                                td.num { (b.available) }
                            }
                        }
                    }
                }
            }
        }
        section id="events" {
            h2 { "Recent events" }
            (events_table(&events, true))
        }
    };
    Ok(frame(state, caller, "Status", body))
}

fn events_table(events: &[sandboxer_api::Event], with_sandbox: bool) -> Markup {
    html! {
        @if events.is_empty() {
            p.empty { "No events." }
        } @else {
            table {
                thead { tr {
                    th { "at (UTC)" }
                    @if with_sandbox { th { "sandbox" } }
                    th { "gen" } th { "from" } th { "to" } th { "reason" }
                } }
                tbody {
                    @for e in events {
                        tr {
                            td { (at(e.at)) }
                            @if with_sandbox { td { (sandbox_link(&e.sandbox_id)) } }
                            td.num { (e.generation) }
                            td { @if let Some(f) = e.from_state { (state_badge(f)) } }
                            td { (state_badge(e.to_state)) }
                            td.detail { (e.reason) }
                        }
                    }
                }
            }
        }
    }
}

/// `/ui/sandboxes/{id}`; `None` when the caller may not see it.
pub async fn sandbox(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Option<Markup>, StoreError> {
    let scope = caller.scope();
    let Some(s) = state.db.get_sandbox(id, scope).await? else {
        return Ok(None);
    };
    // What the API would show this caller (host paths and pids are for
    // operators).
    let s = crate::http::render::sandbox(state, caller, s);
    let now = Utc::now();
    let events = state.db.recent_events(scope, Some(id), 500).await?;
    let api_links = state.settings.tokens.is_empty();
    let (snapshots, _) = state
        .db
        .list_snapshots(&SnapshotFilter {
            sandbox_id: Some(id.to_owned()),
            project: scope.map(str::to_owned),
            limit: 100,
            ..SnapshotFilter::default()
        })
        .await?;
    let reach = s
        .reachability
        .as_ref()
        .and_then(|r| serde_json::to_string_pretty(r).ok());
    let body = html! {
        section id="sandbox" {
            h2 { (s.id) " " (state_badge(s.state)) }
            dl {
                dt { "name" } dd { (s.name.as_deref().unwrap_or("-")) }
                dt { "profile" } dd { (s.profile) " v" (s.profile_version) }
                dt { "extension · host" } dd { (s.extension) " · " (s.host) }
                dt { "consumer" } dd { (s.consumer.actor_type) ":" (s.consumer.actor) " · project " (s.consumer.project) }
                dt { "generation" } dd { (s.generation) }
                dt { "created" } dd { (at(s.created_at)) }
                dt { "expires" } dd { (at(s.expires_at)) " (" @if SandboxState::HOLDING.contains(&s.state) { (ttl_cell(&s, now)) } @else { "ended" } ")" }
                @if let Some(p) = s.paused_at { dt { "paused since" } dd { (at(p)) } }
                dt { "credits" } dd { (s.cost.accrued_credits) " accrued of " (s.cost.estimate_credits) " estimated" }
                @if let Some(t) = &s.termination {
                    dt { "termination" } dd { span.reason { (t.reason.as_str()) } " at " (at(t.at)) ": " (t.detail) }
                }
                @if let Some(f) = &s.failure {
                    dt { "failure" } dd { code { (f.code.as_str()) } " " (f.message) }
                }
                @if let Some(snap) = &s.exit_snapshot {
                    dt { "exit snapshot" } dd { code { (snap) } }
                }
                @for (k, v) in &s.labels { dt { "label " (k) } dd { (v) } }
            }
            @if api_links {
                p.api {
                    "JSON: "
                    a href={ "/v1/sandboxes/" (s.id) } { "sandbox" } " · "
                    a href={ "/v1/sandboxes/" (s.id) "/events" } { "events" } " · "
                    a href={ "/v1/snapshots?sandbox=" (s.id) } { "snapshots" }
                }
            } @else {
                p.api { "JSON (with a token): " code { "GET /v1/sandboxes/" (s.id) } ", " code { "…/events" } ", " code { "GET /v1/snapshots?sandbox=" (s.id) } }
            }
            @if let Some(r) = reach { h3 { "Reachability" } pre { (r) } }
        }
        section id="snapshots" {
            h2 { "Snapshots" }
            @if snapshots.is_empty() {
                p.empty { "No snapshots." }
            } @else {
                table {
                    thead { tr { th { "id" } th { "state" } th { "label" } th { "size" } th { "created" } } }
                    tbody {
                        @for sn in &snapshots {
                            tr {
                                td { code { (sn.id) } }
                                td { (format!("{:?}", sn.state).to_lowercase()) }
                                td { (sn.label.as_deref().unwrap_or("")) }
                                td.num { @if let Some(b) = sn.size_bytes { (b) " B" } }
                                td { (at(sn.created_at)) }
                            }
                        }
                    }
                }
            }
        }
        section id="sandbox-events" {
            h2 { "Events (newest first)" }
            (events_table(&events, false))
        }
    };
    Ok(Some(frame(state, caller, &s.id, body)))
}

/// An error page.
pub fn error(state: &AppState, caller: &Caller, message: &str) -> Markup {
    frame(
        state,
        caller,
        "Error",
        html! { section.error { h2 { "Error" } p { (message) } p { a href="/ui" { "Back to the status page" } } } },
    )
}

/// `/ui/login`, with what went wrong last time.
pub fn login(problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Log in · sand-boxer" }
                link rel="stylesheet" href="/ui/assets/style.css";
            }
            body.login {
                main {
                    h1 { "sand-boxer" }
                    p { "The status page takes the same tokens as the API. Paste yours (it is kept in a cookie for this page only, for 12 hours)." }
                    @if let Some(p) = problem { p.problem { (p) } }
                    form method="post" action="/ui/login" {
                        label for="token" { "Token" }
                        input id="token" type="password" name="token" autocomplete="off" required;
                        button type="submit" { "Log in" }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::span;

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(-5), "0s");
        assert_eq!(span(42), "42s");
        assert_eq!(span(250), "4m 10s");
        assert_eq!(span(3 * 3600 + 125), "3h 2m");
        assert_eq!(span(2 * 86_400 + 3600), "2d 1h");
    }
}
