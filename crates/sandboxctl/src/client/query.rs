//! Query strings the client sends: list filters and paging, `wait`,
//! durations as the server parses them.
use std::time::Duration;

/// Filters and paging of `GET /v1/sandboxes`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only sandboxes in this state (`ready`, `destroyed`, ...).
    pub state: Option<String>,
    /// Only sandboxes of this profile id.
    pub profile: Option<String>,
    /// Only sandboxes on this extension id.
    pub extension: Option<String>,
    /// Only sandboxes placed on this host.
    pub host: Option<String>,
    /// Only sandboxes of this project (operators; a consumer sees only its own).
    pub project: Option<String>,
    /// Only the sandbox of this name (`name`).
    pub name: Option<String>,
    /// Only sandboxes carrying all these labels; each is sent as `label=k=v`.
    pub labels: Vec<(String, String)>,
    /// Include destroyed sandboxes (`include=all`).
    pub include_all: bool,
    /// Page size (`limit`); the server defaults to 100 and caps at 1000.
    pub limit: Option<u32>,
    /// Start at this page (`cursor`, from a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

impl ListQuery {
    /// The query pairs in the order they are sent.
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        let optional = [
            ("state", &self.state),
            ("profile", &self.profile),
            ("extension", &self.extension),
            ("host", &self.host),
            ("project", &self.project),
            ("name", &self.name),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        for (k, v) in &self.labels {
            pairs.push(("label", format!("{k}={v}")));
        }
        push_paging(
            &mut pairs,
            self.include_all,
            self.limit,
            self.cursor.as_deref(),
        );
        pairs
    }
}

/// Filters and paging of the snapshot lists (`GET /v1/snapshots`, or
/// `GET /v1/sandboxes/{id}/snapshots` when `sandbox` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SnapshotQuery {
    /// Only snapshots of this sandbox.
    pub sandbox: Option<String>,
    /// Only snapshots in this state (`ready`, `failed`, ...; comma-separated for several).
    pub state: Option<String>,
    /// Only snapshots of this project (operators; a consumer sees only its own).
    pub project: Option<String>,
    /// Include deleted snapshots (`include=all`).
    pub include_all: bool,
    /// Page size (`limit`); the server defaults to 100 and caps at 1000.
    pub limit: Option<u32>,
    /// Start at this page (`cursor`, from a previous page's `next_cursor`).
    pub cursor: Option<String>,
}

impl SnapshotQuery {
    /// The query pairs in the order they are sent (the sandbox goes in the path).
    pub fn to_pairs(&self) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        if let Some(state) = &self.state {
            pairs.push(("state", state.clone()));
        }
        if let Some(project) = &self.project {
            pairs.push(("project", project.clone()));
        }
        push_paging(
            &mut pairs,
            self.include_all,
            self.limit,
            self.cursor.as_deref(),
        );
        pairs
    }
}

/// `include=all`, `limit` and `cursor`, as the list routes take them.
fn push_paging(
    pairs: &mut Vec<(&'static str, String)>,
    include_all: bool,
    limit: Option<u32>,
    cursor: Option<&str>,
) {
    if include_all {
        pairs.push(("include", "all".to_owned()));
    }
    if let Some(limit) = limit {
        pairs.push(("limit", limit.to_string()));
    }
    if let Some(cursor) = cursor {
        pairs.push(("cursor", cursor.to_owned()));
    }
}

/// Filters of `GET /v1/usage`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageQuery {
    /// Only this project (a consumer always gets its own).
    pub project: Option<String>,
    /// RFC 3339: debits at or after this time.
    pub from: Option<String>,
    /// RFC 3339: debits before this time.
    pub to: Option<String>,
}

impl UsageQuery {
    /// The query pairs in the order they are sent, with `format`.
    pub fn to_pairs(&self, format: &str) -> Vec<(&'static str, String)> {
        let mut pairs = Vec::new();
        for (name, value) in [
            ("project", &self.project),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if let Some(value) = value {
                pairs.push((name, value.clone()));
            }
        }
        pairs.push(("format", format.to_owned()));
        pairs
    }
}

/// Query of the ledger list.
pub(super) fn ledger_pairs(
    sandbox_id: Option<&str>,
    limit: Option<u32>,
    cursor: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut pairs = Vec::new();
    if let Some(s) = sandbox_id {
        pairs.push(("sandbox_id", s.to_owned()));
    }
    if let Some(l) = limit {
        pairs.push(("limit", l.to_string()));
    }
    if let Some(c) = cursor {
        pairs.push(("cursor", c.to_owned()));
    }
    pairs
}

/// `?wait=<duration>` when there is a wait.
pub(super) fn wait_pairs(wait: Option<Duration>) -> Vec<(&'static str, String)> {
    wait.map(|w| ("wait", format_duration(w)))
        .into_iter()
        .collect()
}

/// A duration as a humantime string the server parses: whole seconds
/// (`60s`), or milliseconds when there is a fraction of a second (`1500ms`).
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::tests::client;
    use crate::client::{request_timeout, REQUEST_TIMEOUT};

    #[test]
    fn list_query_sends_repeated_labels_in_order() {
        let q = ListQuery {
            state: Some("ready".into()),
            profile: Some("profile.local-shell".into()),
            labels: vec![("team".into(), "x".into()), ("run".into(), "a=b c".into())],
            include_all: true,
            limit: Some(10),
            cursor: Some("abc".into()),
            ..Default::default()
        };
        let url = client().endpoint(&["v1", "sandboxes"], &q.to_pairs());
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:7443/v1/sandboxes?state=ready&profile=profile.local-shell\
             &label=team%3Dx&label=run%3Da%3Db+c&include=all&limit=10&cursor=abc"
        );
        let labels: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "label")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(labels, ["team=x", "run=a=b c"]);
    }

    #[test]
    fn empty_query_leaves_no_question_mark() {
        let url = client().endpoint(&["v1", "sandboxes"], &ListQuery::default().to_pairs());
        assert_eq!(url.as_str(), "http://127.0.0.1:7443/v1/sandboxes");
    }

    #[test]
    fn durations_are_humantime() {
        assert_eq!(format_duration(Duration::from_secs(60)), "60s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(request_timeout(Duration::from_secs(30)), REQUEST_TIMEOUT);
        assert_eq!(
            request_timeout(Duration::from_secs(300)),
            Duration::from_secs(330)
        );
    }
}
