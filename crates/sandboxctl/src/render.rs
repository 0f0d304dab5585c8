//! Human output: sandboxes, events and the catalog as aligned text.
//! Everything here treats server data as untrusted text: control
//! characters are escaped and no field is assumed to be present.

use chrono::{DateTime, SecondsFormat, Utc};
use sandboxer_api::{Event, Extension, Profile, Sandbox, Snapshot};
use serde_json::Value;

use crate::table::Table;

// Defined with the table, which escapes every cell.
pub use crate::table::clean;

/// `key: value` lines with the values aligned.
pub fn key_values(pairs: &[(String, String)]) -> String {
    let width = pairs
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let pad = width - key.chars().count();
        let line = format!("{key}:{} {}", " ".repeat(pad), clean(value));
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One word quoted for a POSIX shell, so a printed command line can be pasted.
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_owned();
    }
    if s.chars().any(char::is_control) {
        // ANSI-C quoting keeps the word exact without writing raw control
        // characters to the terminal.
        let mut out = String::from("$'");
        for c in s.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() && (c as u32) < 0x80 => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Words joined into one shell command line.
pub fn shell_join<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words
        .into_iter()
        .map(shell_quote)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A span as at most two units: `45s`, `5m`, `1h55m`, `3d4h`.
pub fn compact_duration(span: chrono::TimeDelta) -> String {
    let secs = span.num_seconds().unsigned_abs();
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    let two = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 {
            format!("{big}{bu}")
        } else {
            format!("{big}{bu}{small}{su}")
        }
    };
    if d > 0 {
        two(d, "d", h, "h")
    } else if h > 0 {
        two(h, "h", m, "m")
    } else if m > 0 {
        format!("{m}m")
    } else {
        format!("{s}s")
    }
}

/// `in 1h55m` or `5m ago`.
pub fn relative(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let span = t - now;
    if span.num_seconds() >= 0 {
        format!("in {}", compact_duration(span))
    } else {
        format!("{} ago", compact_duration(span))
    }
}

/// A time as RFC 3339 to the second.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A time with how far it is from now: `2025-01-01T02:00:00Z (in 1h55m)`.
fn timestamp_rel(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    format!("{} ({})", timestamp(t), relative(t, now))
}

/// The wire name of an enum value (`process`, `self-hosted`, ...).
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_owned(),
    }
}

/// `k=v,k2=v2`, or `-` when there are none.
fn pairs_inline<'a>(map: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let joined: Vec<String> = map.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    if joined.is_empty() {
        "-".to_owned()
    } else {
        joined.join(",")
    }
}

/// A sandbox as `key: value` lines. `full` adds ownership, times, labels,
/// inputs and cost; without it only what a creator needs next is shown.
pub fn sandbox_details(s: &Sandbox, full: bool, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_owned(), v));
    add("id", s.id.clone());
    add("state", s.state.to_string());
    add("profile", format!("{} (v{})", s.profile, s.profile_version));
    add("host", format!("{} ({})", s.host, s.extension));
    if full || s.generation > 1 {
        add("generation", s.generation.to_string());
    }
    if full {
        add(
            "consumer",
            format!(
                "{}/{} (project {})",
                s.consumer.actor_type, s.consumer.actor, s.consumer.project
            ),
        );
        add("created_at", timestamp_rel(s.created_at, now));
        if let Some(t) = s.ready_at {
            add("ready_at", timestamp_rel(t, now));
        }
        add("last_activity_at", timestamp_rel(s.last_activity_at, now));
    }
    add("expires_at", timestamp_rel(s.expires_at, now));
    if let Some(t) = s.destroyed_at {
        add("destroyed_at", timestamp_rel(t, now));
    }
    if full || !s.labels.is_empty() {
        add("labels", pairs_inline(&s.labels));
    }
    if full {
        add("inputs", pairs_inline(&s.inputs));
        add(
            "cost",
            format!(
                "{} credits accrued, {} estimated",
                s.cost.accrued_credits, s.cost.estimate_credits
            ),
        );
    }
    if let Some(r) = &s.route {
        add("route", route_line(r));
    }
    if let Some(f) = &s.failure {
        add("failure", format!("{}: {}", f.code, f.message));
    }
    if let Some(r) = &s.reachability {
        lines.extend(reachability_lines(r));
    }
    key_values(&lines)
}

/// How to get into a sandbox, as `key: value` pairs: for `local` a
/// copy-pasteable shell command, for `compose` an ssh command line and the
/// services; any other shape as compact JSON.
pub fn reachability_lines(r: &Value) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let str_field = |name: &str| r.get(name).and_then(Value::as_str).map(str::to_owned);
    let scalar = |name: &str| {
        r.get(name).and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
    };
    let raw = || ("reachability".to_owned(), r.to_string());
    match r.get("kind").and_then(Value::as_str) {
        Some("local") => {
            let enter: Option<Vec<&str>> = r
                .get("enter")
                .and_then(Value::as_array)
                .and_then(|argv| argv.iter().map(Value::as_str).collect());
            match enter {
                Some(argv) if !argv.is_empty() => {
                    lines.push(("enter".to_owned(), format!("{} sh", shell_join(argv))));
                }
                _ => lines.push(raw()),
            }
            if let Some(w) = str_field("workdir") {
                lines.push(("workdir".to_owned(), w));
            }
            if let Some(pid) = scalar("pid") {
                lines.push(("pid".to_owned(), pid));
            }
        }
        Some("compose") => {
            match (str_field("host"), str_field("user")) {
                (Some(host), user) => {
                    let mut argv = vec!["ssh".to_owned()];
                    if let Some(port) = scalar("port") {
                        argv.push("-p".to_owned());
                        argv.push(port);
                    }
                    argv.push(match user {
                        Some(user) => format!("{user}@{host}"),
                        None => host,
                    });
                    lines.push((
                        "ssh".to_owned(),
                        shell_join(argv.iter().map(String::as_str)),
                    ));
                }
                (None, _) => lines.push(raw()),
            }
            for name in ["workdir", "project"] {
                if let Some(v) = str_field(name) {
                    lines.push((name.to_owned(), v));
                }
            }
            if let Some(services) = r.get("services").and_then(Value::as_object) {
                for (name, svc) in services {
                    let container = svc.get("container").and_then(Value::as_str).unwrap_or("?");
                    let text = match svc.get("ports") {
                        None | Some(Value::Null) => container.to_owned(),
                        Some(ports) => format!("{container} {ports}"),
                    };
                    lines.push((format!("service {name}"), text));
                }
            }
        }
        _ => lines.push(raw()),
    }
    lines
}

/// Sandboxes as a table: ID, PROFILE, STATE, HOST, AGE/EXPIRES, LABELS.
pub fn sandboxes_table(items: &[Sandbox], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&["ID", "PROFILE", "STATE", "HOST", "AGE/EXPIRES", "LABELS"]);
    for s in items {
        let age = compact_duration(now - s.created_at);
        let left = if s.state.is_settled() || s.destroyed_at.is_some() {
            "-".to_owned()
        } else if s.expires_at <= now {
            "expired".to_owned()
        } else {
            compact_duration(s.expires_at - now)
        };
        t.row(vec![
            s.id.clone(),
            s.profile.clone(),
            s.state.to_string(),
            s.host.clone(),
            format!("{age}/{left}"),
            pairs_inline(&s.labels),
        ]);
    }
    t.render()
}

/// A byte count for people (`512 B`, `1.5 MiB`): powers of 1024, one decimal.
pub fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

/// Snapshots as a table: ID, SANDBOX, STATE, SIZE, AGE/EXPIRES, LABEL.
pub fn snapshots_table(items: &[Snapshot], now: DateTime<Utc>) -> String {
    let mut t = Table::new(&["ID", "SANDBOX", "STATE", "SIZE", "AGE/EXPIRES", "LABEL"]);
    for s in items {
        let left = if s.deleted_at.is_some() {
            "-".to_owned()
        } else if s.expires_at <= now {
            "expired".to_owned()
        } else {
            compact_duration(s.expires_at - now)
        };
        t.row(vec![
            s.id.clone(),
            s.sandbox_id.clone(),
            s.state.to_string(),
            s.size_bytes.map_or_else(|| "-".to_owned(), bytes),
            format!("{}/{left}", compact_duration(now - s.created_at)),
            s.label.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// One snapshot as `key: value` lines.
pub fn snapshot_details(s: &Snapshot, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("id".into(), s.id.clone()),
        ("state".into(), s.state.to_string()),
        (
            "sandbox".into(),
            format!("{} (generation {})", s.sandbox_id, s.sandbox_generation),
        ),
        (
            "profile".into(),
            format!("{} (v{})", s.profile, s.profile_version),
        ),
        ("extension".into(), format!("{} on {}", s.extension, s.host)),
        ("project".into(), s.project.clone()),
    ];
    if let Some(label) = &s.label {
        lines.push(("label".into(), label.clone()));
    }
    if let (Some(size), Some(content)) = (s.size_bytes, s.content_bytes) {
        lines.push((
            "size".into(),
            format!(
                "{} stored ({} before compression)",
                bytes(size),
                bytes(content)
            ),
        ));
    }
    if let Some(sha) = &s.sha256 {
        lines.push(("sha256".into(), sha.clone()));
    }
    lines.push(("created_at".into(), timestamp(s.created_at)));
    if let Some(deleted) = s.deleted_at {
        lines.push(("deleted_at".into(), timestamp(deleted)));
    } else {
        lines.push((
            "expires_at".into(),
            format!(
                "{} ({})",
                timestamp(s.expires_at),
                relative(s.expires_at, now)
            ),
        ));
    }
    if let Some(f) = &s.failure {
        lines.push(("failure".into(), format!("{} ({})", f.message, f.code)));
    }
    key_values(&lines)
}

/// Events as a table, oldest first as the server answers them.
pub fn events_table(items: &[Event]) -> String {
    let mut t = Table::new(&["AT", "GEN", "FROM", "TO", "REASON"]);
    for e in items {
        t.row(vec![
            timestamp(e.at),
            e.generation.to_string(),
            e.from_state
                .map_or_else(|| "-".to_owned(), |s| s.to_string()),
            e.to_state.to_string(),
            e.reason.clone(),
        ]);
    }
    t.render()
}

/// Profiles as a table.
pub fn profiles_table(items: &[Profile]) -> String {
    let mut t = Table::new(&[
        "ID",
        "VERSION",
        "EXTENSION",
        "ISOLATION",
        "TTL",
        "DESCRIPTION",
    ]);
    for p in items {
        t.row(vec![
            p.id.clone(),
            p.version.to_string(),
            profile_backends(p),
            wire_name(&p.isolation),
            format!("{}/{}", p.ttl.default, p.ttl.max),
            p.description.clone(),
        ]);
    }
    t.render()
}

/// One profile as `key: value` lines, its inputs listed below.
pub fn profile_details(p: &Profile) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("id".into(), format!("{} (v{})", p.id, p.version)),
        ("description".into(), p.description.clone()),
        ("extension".into(), profile_backends(p)),
        ("isolation".into(), wire_name(&p.isolation)),
    ];
    let mut network = wire_name(&p.network.mode);
    if !p.network.allow.is_empty() {
        network.push_str(&format!(" (allow {})", p.network.allow.join(", ")));
    }
    lines.push(("network".into(), network));
    let workspace = match &p.workspace.from_input {
        Some(input) => format!("{} from input `{input}`", p.workspace.mode),
        None => p.workspace.mode.clone(),
    };
    lines.push(("workspace".into(), workspace));
    let mut ttl = format!("default {}, max {}", p.ttl.default, p.ttl.max);
    if let Some(idle) = &p.ttl.idle_reap {
        ttl.push_str(&format!(", idle reap {idle}"));
    }
    lines.push(("ttl".into(), ttl));
    if let Some(pool) = &p.pool {
        lines.push((
            "warm pool".into(),
            format!("{} ready, replaced after {}", pool.size, pool.max_age),
        ));
    }
    let mut resources = Vec::new();
    if let Some(cpus) = p.resources.cpus {
        resources.push(format!("{cpus} cpus"));
    }
    if let Some(m) = &p.resources.memory {
        resources.push(format!("memory {m}"));
    }
    if let Some(d) = &p.resources.disk {
        resources.push(format!("disk {d}"));
    }
    if !resources.is_empty() {
        lines.push(("resources".into(), resources.join(", ")));
    }
    let prefer = p.placement.prefer.join(",");
    let fallback = p.placement.fallback.join(",");
    if !prefer.is_empty() || !fallback.is_empty() {
        lines.push((
            "placement".into(),
            format!("prefer [{prefer}], fallback [{fallback}]"),
        ));
    }
    lines.push(("reachability".into(), p.reachability.clone()));
    lines.push(("cost_class".into(), p.cost_class.clone()));
    let mut out = key_values(&lines);
    if !p.inputs.is_empty() {
        let mut t = Table::new(&["INPUT", "REQUIRED", "DESCRIPTION"]);
        for (name, spec) in &p.inputs {
            let required = if spec.required { "yes" } else { "no" };
            t.row(vec![
                name.clone(),
                required.to_owned(),
                spec.description.clone(),
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

/// What a profile runs on: its extension, or its routing policy and candidates.
pub fn profile_backends(p: &Profile) -> String {
    match (&p.extension, &p.routing) {
        (Some(ext), _) => ext.clone(),
        (None, Some(r)) => format!("{}: {}", r.policy, r.candidates.join(",")),
        (None, None) => "-".to_owned(),
    }
}

/// A router's decision as one line: policy, each candidate and why it was
/// skipped, the one chosen.
pub fn route_line(r: &sandboxer_api::Route) -> String {
    let considered: Vec<String> = r
        .considered
        .iter()
        .map(|c| match &c.skipped {
            Some(why) => format!("{} (skipped: {why})", c.extension),
            None if r.chosen.as_deref() == Some(c.extension.as_str()) => {
                format!("{} (chosen, {} credits)", c.extension, c.estimate_credits)
            }
            None => format!("{} (not needed)", c.extension),
        })
        .collect();
    format!("{}: {}", r.policy, considered.join("; "))
}

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

/// Extensions as a table with their availability.
pub fn extensions_table(items: &[Extension]) -> String {
    let mut t = Table::new(&["ID", "CLASS", "AVAILABLE", "CREDITS/H", "HOSTS", "REASON"]);
    for e in items {
        t.row(vec![
            e.id.clone(),
            wire_name(&e.class),
            yes_no(e.availability.available).to_owned(),
            e.pricing.credits_per_hour.to_string(),
            list_or_dash(&e.hosts),
            e.availability.reason.clone().unwrap_or_default(),
        ]);
    }
    t.render()
}

/// One extension as `key: value` lines.
pub fn extension_details(e: &Extension) -> String {
    let s = e;
    let mut available = yes_no(e.availability.available).to_owned();
    if let Some(reason) = &e.availability.reason {
        available.push_str(&format!(" ({reason})"));
    }
    let isolation: Vec<String> = s.capabilities.isolation.iter().map(wire_name).collect();
    let network: Vec<String> = s
        .capabilities
        .network_policies
        .iter()
        .map(wire_name)
        .collect();
    let lines: Vec<(String, String)> = vec![
        ("id".into(), s.id.clone()),
        ("description".into(), s.description.clone()),
        ("class".into(), wire_name(&s.class)),
        ("available".into(), available),
        ("isolation".into(), list_or_dash(&isolation)),
        ("network".into(), list_or_dash(&network)),
        (
            "snapshot".into(),
            yes_no(s.capabilities.snapshot).to_owned(),
        ),
        ("restore".into(), yes_no(s.capabilities.restore).to_owned()),
        (
            "pricing".into(),
            format!(
                "{} credits/hour, {} credits per snapshot GiB",
                s.pricing.credits_per_hour, s.pricing.credits_per_snapshot_gib
            ),
        ),
        ("hosts".into(), list_or_dash(&s.hosts)),
    ];
    key_values(&lines)
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(",")
    }
}

/// The audit trail as a table.
pub fn audit_table(items: &[sandboxer_api::AuditEntry]) -> String {
    let mut t = Table::new(&["AT", "WHO", "ROLE", "REQUEST", "STATUS", "CODE"]);
    for e in items {
        t.row(vec![
            timestamp(e.at),
            format!("{}/{} ({})", e.actor_type, e.actor, e.project),
            e.role.clone(),
            format!("{} {}", e.method, e.path),
            e.status.to_string(),
            e.code.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    t.render()
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    #[test]
    fn shell_words() {
        assert_eq!(shell_quote("nsenter"), "nsenter");
        assert_eq!(shell_quote("--wd=/a/b"), "--wd=/a/b");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a\u{1b}b'"), r"$'a\x1bb\''");
        assert_eq!(
            shell_join(["nsenter", "-t", "123", "--", "x y"]),
            "nsenter -t 123 -- 'x y'"
        );
    }

    #[test]
    fn durations_are_compact() {
        let d = chrono::TimeDelta::seconds;
        assert_eq!(compact_duration(d(45)), "45s");
        assert_eq!(compact_duration(d(300)), "5m");
        assert_eq!(compact_duration(d(7200 - 300)), "1h55m");
        assert_eq!(compact_duration(d(7200)), "2h");
        assert_eq!(compact_duration(d(3 * 86_400 + 4 * 3600 + 59)), "3d4h");
        let now = Utc
            .with_ymd_and_hms(2025, 1, 1, 0, 0, 0)
            .single()
            .expect("valid time");
        assert_eq!(relative(now + d(90), now), "in 1m");
        assert_eq!(relative(now - d(90), now), "1m ago");
    }

    #[test]
    fn local_reachability_is_a_command_line() {
        let r = json!({"kind": "local", "workdir": "/w", "pid": 123,
            "enter": ["nsenter", "-t", "123", "-m", "-u", "-i", "-n", "-p", "--wd=/w", "--"]});
        let lines = reachability_lines(&r);
        assert_eq!(
            lines[0],
            (
                "enter".into(),
                "nsenter -t 123 -m -u -i -n -p --wd=/w -- sh".into()
            )
        );
        assert_eq!(lines[1], ("workdir".into(), "/w".into()));
        assert_eq!(lines[2], ("pid".into(), "123".into()));
    }

    #[test]
    fn odd_reachability_is_shown_raw() {
        let r = json!({"kind": "local", "enter": [1, 2]});
        assert_eq!(reachability_lines(&r)[0].0, "reachability");
        let r = json!({"kind": "saas", "url": "https://x"});
        assert_eq!(
            reachability_lines(&r),
            [("reachability".into(), r.to_string())]
        );
        let r = json!({"kind": "compose", "host": "h1", "port": 2222, "user": "sbx",
            "services": {"web": {"container": "c1", "ports": [8080]}}});
        let lines = reachability_lines(&r);
        assert_eq!(lines[0], ("ssh".into(), "ssh -p 2222 sbx@h1".into()));
        assert_eq!(lines[1], ("service web".into(), "c1 [8080]".into()));
    }

    #[test]
    fn byte_counts() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(100 << 20), "100.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(bytes((1 << 20) - 1), "1024.0 KiB");
        assert_eq!(bytes(5 << 40), "5.0 TiB");
        assert_eq!(bytes(1 << 50), "1.0 PiB");
    }

    #[test]
    fn key_values_align_and_escape() {
        let out = key_values(&[
            ("id".into(), "sbx_1".into()),
            ("expires_at".into(), "x\ny".into()),
        ]);
        assert_eq!(out, "id:         sbx_1\nexpires_at: x\\ny\n");
    }
}
