//! What a compose file may ask of the placement host. A tenant's compose
//! file runs with the host engine's privileges, so every setting that
//! reaches the host (privileged containers, the host's network, pid, ipc or
//! user namespace, devices, added capabilities, seccomp/AppArmor turned off,
//! bind mounts from outside the uploaded project) is refused before `up`
//! unless the profile allows it (`compose: {allow: [...]}`).
use std::path::{Component, Path};

use sandboxer_api::ComposeAllow;
use serde_yaml::Value;

/// Check every service of `doc` (a compose file found under `project_root`,
/// at `compose_dir` inside it) against `allow`. The error names the service
/// and the key, and the profile field that would allow it.
pub fn check(
    doc: &Value,
    project_root: &Path,
    compose_dir: &Path,
    allow: &[ComposeAllow],
) -> Result<(), String> {
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return Ok(());
    };
    check_named_volumes(doc, allow)?;
    let allowed = |a: ComposeAllow| allow.contains(&a);
    for (name, def) in services {
        let name = name.as_str().unwrap_or("?");
        let refuse = |key: &str, what: &str, a: ComposeAllow| {
            Err(format!(
                "service `{name}`: `{key}` {what} is not allowed by this profile \
                 (profile field `compose.allow` would need `{}`)",
                allow_name(a)
            ))
        };
        let Some(def) = def.as_mapping() else {
            continue;
        };
        if truthy(def.get("privileged")) && !allowed(ComposeAllow::Privileged) {
            return refuse("privileged", "true", ComposeAllow::Privileged);
        }
        for (key, a) in [
            ("network_mode", ComposeAllow::HostNetwork),
            ("pid", ComposeAllow::HostPid),
            ("ipc", ComposeAllow::HostIpc),
            ("userns_mode", ComposeAllow::HostUserns),
        ] {
            // `service:x` / `container:x` join another namespace, not the host's.
            if def.get(key).and_then(Value::as_str).map(str::trim) == Some("host") && !allowed(a) {
                return refuse(key, "`host`", a);
            }
        }
        if non_empty(def.get("devices")) && !allowed(ComposeAllow::Devices) {
            return refuse("devices", "(host devices)", ComposeAllow::Devices);
        }
        if non_empty(def.get("device_cgroup_rules")) && !allowed(ComposeAllow::Devices) {
            return refuse(
                "device_cgroup_rules",
                "(host devices)",
                ComposeAllow::Devices,
            );
        }
        if non_empty(def.get("cap_add")) && !allowed(ComposeAllow::CapAdd) {
            return refuse("cap_add", "(added capabilities)", ComposeAllow::CapAdd);
        }
        if let Some(opts) = def.get("security_opt").and_then(Value::as_sequence) {
            for opt in opts.iter().filter_map(Value::as_str) {
                if disables_confinement(opt) && !allowed(ComposeAllow::Unconfined) {
                    return refuse(
                        "security_opt",
                        &format!("`{opt}`"),
                        ComposeAllow::Unconfined,
                    );
                }
            }
        }
        if let Some(vols) = def.get("volumes").and_then(Value::as_sequence) {
            if !allowed(ComposeAllow::HostBinds) {
                for v in vols {
                    if let Some(src) = bind_source(v) {
                        if !stays_inside(project_root, compose_dir, &src) {
                            return refuse(
                                "volumes",
                                &format!("bind mount of `{src}` (outside the project)"),
                                ComposeAllow::HostBinds,
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn allow_name(a: ComposeAllow) -> String {
    serde_json::to_value(a)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "true" | "yes" | "on" | "1"
        ),
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

fn non_empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(_) => true,
    }
}

/// `seccomp:unconfined`, `seccomp=unconfined`, `apparmor:unconfined`, ...
fn disables_confinement(opt: &str) -> bool {
    let opt = opt.trim().to_ascii_lowercase();
    let Some((kind, value)) = opt.split_once([':', '=']) else {
        return false;
    };
    matches!(
        kind.trim(),
        "seccomp" | "apparmor" | "systempaths" | "label"
    ) && matches!(value.trim(), "unconfined" | "disable")
}

/// The host side of a bind mount, or `None` for a named volume, tmpfs or
/// anonymous volume. Short syntax `SRC:DST[:MODE]` binds when `SRC` is a
/// path (`/`, `.`, `~`); long syntax binds with `type: bind`.
fn bind_source(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => {
            let (src, _) = s.split_once(':')?;
            let is_path = src.starts_with('/') || src.starts_with('.') || src.starts_with('~');
            is_path.then(|| src.to_owned())
        }
        Value::Mapping(m) => {
            let kind = m.get("type").and_then(Value::as_str).unwrap_or("volume");
            if kind != "bind" {
                return None;
            }
            // A bind without a source is refused: nothing to check it against.
            Some(
                m.get("source")
                    .and_then(Value::as_str)
                    .unwrap_or("/")
                    .to_owned(),
            )
        }
        _ => None,
    }
}

/// Whether the bind source `src` (relative to the compose file's folder)
/// stays inside the uploaded project: `~`, absolute paths, variables and
/// any `..` that climbs above the project are outside, and so is a path
/// through a symlink of the project (the engine would follow it on the
/// placement host, where it can point anywhere).
fn stays_inside(project_root: &Path, compose_dir: &Path, src: &str) -> bool {
    if src.starts_with('~') || src.starts_with('/') || src.contains('$') {
        return false;
    }
    let rel = compose_dir
        .strip_prefix(project_root)
        .unwrap_or(Path::new(""));
    let mut parts: Vec<Component> = rel.components().collect();
    for c in Path::new(src).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if parts.pop().is_none() {
                    return false;
                }
            }
            Component::Normal(_) => parts.push(c),
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    let mut at = project_root.to_path_buf();
    for c in parts {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_symlink() => return false,
            Ok(_) => {}
            // Missing: the engine makes a folder there, inside the project.
            Err(_) => break,
        }
    }
    true
}

/// Top-level named volumes that are host binds in disguise
/// (`driver_opts: {type: none, o: bind, device: /etc}`).
fn check_named_volumes(doc: &Value, allow: &[ComposeAllow]) -> Result<(), String> {
    if allow.contains(&ComposeAllow::HostBinds) {
        return Ok(());
    }
    let Some(vols) = doc.get("volumes").and_then(Value::as_mapping) else {
        return Ok(());
    };
    for (name, def) in vols {
        let device = def
            .get("driver_opts")
            .and_then(|o| o.get("device"))
            .and_then(Value::as_str);
        if let Some(device) = device {
            return Err(format!(
                "volume `{}`: `driver_opts.device` `{device}` (a host path) is not allowed by this profile \
                 (profile field `compose.allow` would need `host_binds`)",
                name.as_str().unwrap_or("?")
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str, allow: &[ComposeAllow]) -> Result<(), String> {
        let doc: Value = serde_yaml::from_str(yaml).expect("yaml");
        check(&doc, Path::new("/p"), Path::new("/p/e2e"), allow)
    }

    #[test]
    fn a_plain_stack_passes() {
        run(
            r#"
services:
  web:
    image: nginx
    volumes: ["data:/var/lib", "./conf:/etc/nginx:ro", "../src:/src", {type: volume, source: data, target: /d}, "/tmpdata"]
    network_mode: "service:db"
    security_opt: ["no-new-privileges:true"]
    cap_drop: [ALL]
  db: {image: postgres, pid: "container:x", privileged: false}
volumes: {data: {}}
"#,
            &[],
        )
        .expect("nothing reaches the host");
    }

    #[test]
    fn each_host_reaching_setting_is_refused_naming_service_and_key() {
        for (yaml, key, allow) in [
            (
                "services: {a: {privileged: true}}",
                "privileged",
                ComposeAllow::Privileged,
            ),
            (
                "services: {a: {network_mode: host}}",
                "network_mode",
                ComposeAllow::HostNetwork,
            ),
            ("services: {a: {pid: host}}", "pid", ComposeAllow::HostPid),
            ("services: {a: {ipc: host}}", "ipc", ComposeAllow::HostIpc),
            (
                "services: {a: {userns_mode: host}}",
                "userns_mode",
                ComposeAllow::HostUserns,
            ),
            (
                "services: {a: {devices: [\"/dev/kmsg:/dev/kmsg\"]}}",
                "devices",
                ComposeAllow::Devices,
            ),
            (
                "services: {a: {cap_add: [SYS_ADMIN]}}",
                "cap_add",
                ComposeAllow::CapAdd,
            ),
            (
                "services: {a: {security_opt: [\"seccomp:unconfined\"]}}",
                "security_opt",
                ComposeAllow::Unconfined,
            ),
            (
                "services: {a: {security_opt: [\"apparmor=unconfined\"]}}",
                "security_opt",
                ComposeAllow::Unconfined,
            ),
            (
                "services: {a: {volumes: [\"/etc:/host-etc\"]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
            (
                "services: {a: {volumes: [\"~/.ssh:/k\"]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
            (
                "services: {a: {volumes: [\"../../x:/x\"]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
            (
                "services: {a: {volumes: [\"/var/run/docker.sock:/var/run/docker.sock\"]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
            (
                "services: {a: {volumes: [{type: bind, source: /, target: /h}]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
            (
                "services: {a: {volumes: [{type: bind, source: ../.., target: /h}]}}",
                "volumes",
                ComposeAllow::HostBinds,
            ),
        ] {
            let err = run(yaml, &[]).expect_err(yaml);
            assert!(err.contains("service `a`"), "{yaml}: {err}");
            assert!(err.contains(&format!("`{key}`")), "{yaml}: {err}");
            run(yaml, &[allow]).unwrap_or_else(|e| panic!("{yaml} with {allow:?} allowed: {e}"));
        }
    }

    #[test]
    fn a_named_volume_bound_to_a_host_path_is_refused() {
        let yaml = "services: {a: {image: x}}\nvolumes: {v: {driver_opts: {type: none, o: bind, device: /etc}}}";
        let err = run(yaml, &[]).expect_err("host bind in disguise");
        assert!(err.contains("volume `v`"), "{err}");
        run(yaml, &[ComposeAllow::HostBinds]).expect("allowed");
    }

    #[test]
    fn a_bind_through_a_symlink_of_the_project_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir(root.join("conf")).expect("mkdir");
        std::os::unix::fs::symlink("/", root.join("escape")).expect("symlink");
        let doc: Value =
            serde_yaml::from_str("services: {a: {volumes: [\"./escape/etc:/x\"]}}").expect("yaml");
        let err = check(&doc, root, root, &[]).expect_err("through a symlink");
        assert!(err.contains("`volumes`"), "{err}");
        let doc: Value =
            serde_yaml::from_str("services: {a: {volumes: [\"./conf:/x\", \"./new:/y\"]}}")
                .expect("yaml");
        check(&doc, root, root, &[]).expect("plain folders of the project");
    }
}
