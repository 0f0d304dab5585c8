//! Sandboxes, their events and snapshots, and the audit trail.
use super::*;

/// A sandbox as `key: value` lines. `full` adds ownership, times, labels,
/// inputs and cost; without it only what a creator needs next is shown.
pub fn sandbox_details(s: &Sandbox, full: bool, now: DateTime<Utc>) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut add = |k: &str, v: String| lines.push((k.to_owned(), v));
    add("id", s.id.clone());
    if let Some(name) = &s.name {
        add("name", name.clone());
    }
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
    if let Some(t) = &s.termination {
        add(
            "termination",
            format!("{} {} ({})", t.reason, timestamp_rel(t.at, now), t.detail),
        );
    }
    if let Some(u) = &s.usage {
        add("usage", usage_line(u));
    }
    if let Some(r) = &s.reachability {
        lines.extend(reachability_lines(r));
    }
    key_values(&lines)
}

/// Live usage on one line: `cpu 1.20 s, memory 12.0 MiB (peak 250.0 MiB), 3 pids, disk 4.0 KiB, 1 OOM kill`.
pub fn usage_line(u: &sandboxer_api::Usage) -> String {
    let mut line = format!(
        "cpu {:.2} s, memory {} (peak {}), {} pids, disk {}",
        u.cpu_seconds,
        bytes(u.memory_bytes),
        bytes(u.memory_peak_bytes),
        u.pids,
        bytes(u.disk_bytes)
    );
    if u.oom_kills > 0 {
        line.push_str(&format!(", {} OOM kill(s)", u.oom_kills));
    }
    if u.pids_refused > 0 {
        line.push_str(&format!(", {} fork(s) refused", u.pids_refused));
    }
    line
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

/// An egress log as a table (AT, VERDICT, METHOD, DESTINATION, ADDRESS,
/// REASON) and a line of counts.
pub fn network_log(log: &sandboxer_api::NetworkLog) -> String {
    let mut t = Table::new(&[
        "AT",
        "VERDICT",
        "METHOD",
        "DESTINATION",
        "ADDRESS",
        "REASON",
    ]);
    for d in &log.items {
        t.row(vec![
            d.at.clone(),
            match d.decision {
                sandboxer_api::NetworkVerdict::Allowed => "allowed".to_owned(),
                sandboxer_api::NetworkVerdict::Denied => "denied".to_owned(),
            },
            d.method.clone(),
            format!("{}:{}", d.host, d.port),
            d.address.clone().unwrap_or_else(|| "-".to_owned()),
            d.reason.clone(),
        ]);
    }
    format!(
        "{}{} allowed, {} denied, {} no longer kept\n",
        t.render(),
        log.allowed,
        log.denied,
        log.dropped
    )
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
    use serde_json::json;

    use super::*;

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
    fn usage_says_what_was_hit() {
        let u = sandboxer_api::Usage {
            cpu_seconds: 1.5,
            memory_bytes: 3 << 20,
            memory_peak_bytes: 256 << 20,
            pids: 4,
            disk_bytes: 4096,
            oom_kills: 1,
            pids_refused: 0,
        };
        assert_eq!(
            usage_line(&u),
            "cpu 1.50 s, memory 3.0 MiB (peak 256.0 MiB), 4 pids, disk 4.0 KiB, 1 OOM kill(s)"
        );
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
}
