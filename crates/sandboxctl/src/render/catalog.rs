//! The catalog: profiles (with their routing) and extensions.
use super::*;

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
