//! A sandbox as its caller sees it: `reachability` gains how to reach the
//! sandbox through the daemon (`api`, and `ssh` where the gateway runs);
//! host pids, host paths and the host's `enter` command line are for
//! operators only.

use sandboxer_api::Sandbox;
use serde_json::{json, Value};

use super::caller::Caller;
use crate::AppState;

/// `reachability` keys that describe the daemon's host, not the sandbox.
const HOST_ONLY: &[&str] = &["workdir", "pid", "enter"];

/// `sbx` as `caller` may see it.
pub fn sandbox(state: &AppState, caller: &Caller, mut sbx: Sandbox) -> Sandbox {
    let id = sbx.id.clone();
    let Some(Value::Object(r)) = sbx.reachability.as_mut() else {
        return sbx;
    };
    let has_agent = state
        .extensions
        .get(&sbx.extension)
        .is_some_and(|ext| ext.has_agent());
    if has_agent {
        let base = format!("/v1/sandboxes/{id}");
        r.insert(
            "api".into(),
            json!({
                "exec": format!("{base}/exec"),
                "processes": format!("{base}/processes"),
                "files": format!("{base}/files"),
                "ports": format!("{base}/ports"),
                "ssh_keys": format!("{base}/ssh-keys"),
            }),
        );
        if let Some(gw) = &state.ssh_gateway {
            r.insert("ssh".into(), gw.reachability(&id));
        }
    }
    if !caller.operator {
        for k in HOST_ONLY {
            r.remove(*k);
        }
    }
    sbx
}
