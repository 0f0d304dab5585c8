//! The workspace sent to a host: the repository as a tar stream (without
//! `.git`), plus the override file that labels everything the project makes
//! and closes its networks.
use std::path::{Path, PathBuf};

use sandboxer_api::ProblemCode;
use serde_yaml::{Mapping, Value};

use crate::extensions::ExtError;

/// The label every container, network and volume of a sandbox carries.
pub const LABEL: &str = "io.sandboxer.sandbox-id";
/// The label naming the host's `workdir` the sandbox was made under, so two
/// deployments sharing one engine never take each other's resources for stale.
pub const WORKDIR_LABEL: &str = "io.sandboxer.workdir";
/// The override file, written at the root of the uploaded workspace.
pub const OVERRIDE_FILE: &str = ".sandboxer-compose.override.yml";
/// Where a compose file is looked for, in order.
pub const COMPOSE_FILES: [&str; 2] = ["e2e/docker-compose.yml", "docker-compose.yml"];
/// Largest workspace uploaded (the tar stream, before it is sent).
pub const MAX_UPLOAD_BYTES: u64 = 512 << 20;

/// A repository checked for upload.
#[derive(Debug, Clone)]
pub struct Workspace {
    /// The repository on the daemon's machine.
    pub root: PathBuf,
    /// The compose file, relative to `root`.
    pub compose_file: String,
    /// Service names the compose file declares.
    pub services: Vec<String>,
    /// The override file's YAML.
    pub override_yaml: String,
}

/// Find the compose file under `root`, parse it and write the override.
/// `internal`: make every project network `internal: true` (default-deny).
pub fn prepare(
    root: &Path,
    sandbox_id: &str,
    workdir: &str,
    internal: bool,
    allow: &[sandboxer_api::ComposeAllow],
) -> Result<Workspace, ExtError> {
    let bad = |m: String| ExtError::new(ProblemCode::InvalidInput, m);
    if !root.is_dir() {
        return Err(bad(format!(
            "input `repo`: `{}` is not a directory on the sand-boxer host",
            root.display()
        )));
    }
    let Some(compose_file) = COMPOSE_FILES.iter().find(|f| root.join(f).is_file()) else {
        return Err(bad(format!(
            "input `repo`: `{}` holds neither {}",
            root.display(),
            COMPOSE_FILES.join(" nor ")
        )));
    };
    let text = std::fs::read_to_string(root.join(compose_file))
        .map_err(|e| bad(format!("input `repo`: cannot read {compose_file}: {e}")))?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| bad(format!("input `repo`: {compose_file} is not YAML: {e}")))?;
    // Before anything reaches the host: settings that would reach past the
    // project (privileged, host namespaces, devices, host binds, ...).
    let compose_dir = root.join(compose_file);
    let compose_dir = compose_dir.parent().unwrap_or(root);
    super::policy::check(&doc, root, compose_dir, allow).map_err(|m| {
        ExtError::new(
            ProblemCode::ComposeNotAllowed,
            format!("input `repo`: {compose_file}: {m}"),
        )
    })?;
    let tag = Tag {
        sandbox_id,
        workdir,
    };
    let (override_yaml, services) = override_for(&doc, &tag, internal)
        .map_err(|m| bad(format!("input `repo`: {compose_file}: {m}")))?;
    Ok(Workspace {
        root: root.to_owned(),
        compose_file: (*compose_file).to_owned(),
        services,
        override_yaml,
    })
}

/// The labels put on everything a sandbox makes.
pub struct Tag<'a> {
    /// Value of [`LABEL`].
    pub sandbox_id: &'a str,
    /// Value of [`WORKDIR_LABEL`].
    pub workdir: &'a str,
}

impl Tag<'_> {
    fn pairs(&self) -> [(&'static str, &str); 2] {
        [(LABEL, self.sandbox_id), (WORKDIR_LABEL, self.workdir)]
    }
}

fn labels(tag: &Tag) -> Value {
    let mut m = Mapping::new();
    for (k, v) in tag.pairs() {
        m.insert(k.into(), v.into());
    }
    Value::Mapping(m)
}

/// Add our labels to a definition's `labels`, which may be a map or a list of `k=v`.
fn add_label(def: &mut Mapping, tag: &Tag) {
    match def.get_mut("labels") {
        Some(Value::Mapping(m)) => {
            for (k, v) in tag.pairs() {
                m.insert(k.into(), v.into());
            }
        }
        Some(Value::Sequence(items)) => {
            for (k, v) in tag.pairs() {
                items.retain(|i| !i.as_str().is_some_and(|s| s.starts_with(&format!("{k}="))));
                items.push(format!("{k}={v}").into());
            }
        }
        _ => {
            def.insert("labels".into(), labels(tag));
        }
    }
}

/// The override document for a parsed compose file, and its service names.
///
/// Top-level networks and volumes of a later file replace the earlier
/// definition whole (docker-compose v1), so each is copied and amended.
pub fn override_for(
    doc: &Value,
    tag: &Tag,
    internal: bool,
) -> Result<(String, Vec<String>), String> {
    let Some(top) = doc.as_mapping() else {
        return Err("the top level is not a mapping".into());
    };
    let Some(services) = top.get("services").and_then(Value::as_mapping) else {
        return Err("no `services` mapping".into());
    };
    let mut out = Mapping::new();
    if let Some(version) = top.get("version") {
        out.insert("version".into(), version.clone());
    }
    let mut names = Vec::new();
    let mut svc_out = Mapping::new();
    let mut uses_default = false;
    for (name, def) in services {
        let Some(name) = name.as_str() else {
            return Err("a service name is not a string".into());
        };
        names.push(name.to_owned());
        let mut m = Mapping::new();
        let own_labels = def.get("labels").cloned();
        if let Some(l) = own_labels {
            m.insert("labels".into(), l);
        }
        add_label(&mut m, tag);
        svc_out.insert(name.into(), Value::Mapping(m));
        let custom_net = def.get("networks").is_some() || def.get("network_mode").is_some();
        if !custom_net {
            uses_default = true;
        }
    }
    out.insert("services".into(), Value::Mapping(svc_out));
    let mut nets = Mapping::new();
    if let Some(declared) = top.get("networks").and_then(Value::as_mapping) {
        for (name, def) in declared {
            let mut d = def.as_mapping().cloned().unwrap_or_default();
            if d.get("external")
                .is_some_and(|v| v.as_bool() != Some(false))
            {
                continue;
            }
            add_label(&mut d, tag);
            if internal {
                d.insert("internal".into(), true.into());
            }
            nets.insert(name.clone(), Value::Mapping(d));
        }
    }
    if uses_default && !nets.contains_key("default") {
        let mut d = Mapping::new();
        d.insert("labels".into(), labels(tag));
        if internal {
            d.insert("internal".into(), true.into());
        }
        nets.insert("default".into(), Value::Mapping(d));
    }
    if !nets.is_empty() {
        out.insert("networks".into(), Value::Mapping(nets));
    }
    let mut vols = Mapping::new();
    if let Some(declared) = top.get("volumes").and_then(Value::as_mapping) {
        for (name, def) in declared {
            let mut d = def.as_mapping().cloned().unwrap_or_default();
            if d.get("external")
                .is_some_and(|v| v.as_bool() != Some(false))
            {
                continue;
            }
            add_label(&mut d, tag);
            vols.insert(name.clone(), Value::Mapping(d));
        }
    }
    if !vols.is_empty() {
        out.insert("volumes".into(), Value::Mapping(vols));
    }
    let yaml = serde_yaml::to_string(&Value::Mapping(out)).map_err(|e| e.to_string())?;
    Ok((yaml, names))
}

/// The workspace as a tar stream: every file under `root` except `.git`,
/// symlinks kept as links, plus the override file at the top.
pub fn tar(ws: &Workspace) -> Result<Vec<u8>, ExtError> {
    let fail = |e: std::io::Error| {
        ExtError::new(
            ProblemCode::UploadFailed,
            format!("packing `{}`: {e}", ws.root.display()),
        )
    };
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    let mut size = 0u64;
    add_dir(&mut builder, &ws.root, Path::new(""), &mut size).map_err(fail)?;
    let bytes = ws.override_yaml.as_bytes();
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder
        .append_data(&mut header, OVERRIDE_FILE, bytes)
        .map_err(fail)?;
    builder.into_inner().map_err(fail)
}

fn add_dir(
    builder: &mut tar::Builder<Vec<u8>>,
    dir: &Path,
    rel: &Path,
    size: &mut u64,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" || name == OVERRIDE_FILE {
            continue;
        }
        let path = entry.path();
        let rel = rel.join(&name);
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            builder.append_dir(&rel, &path)?;
            add_dir(builder, &path, &rel, size)?;
        } else if meta.is_file() || meta.file_type().is_symlink() {
            *size += meta.len();
            if *size > MAX_UPLOAD_BYTES {
                return Err(std::io::Error::other(format!(
                    "the workspace is larger than {} MiB",
                    MAX_UPLOAD_BYTES >> 20
                )));
            }
            builder.append_path_with_name(&path, &rel)?;
        }
        // Sockets, fifos and devices are not sent.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_labels_everything_and_closes_networks() {
        let doc: Value = serde_yaml::from_str(
            r#"
version: "3.8"
services:
  web: {image: x, labels: {a: b}}
  db: {image: y, networks: [back]}
networks:
  back: {driver: bridge}
  outside: {external: true}
volumes:
  data: {}
"#,
        )
        .unwrap();
        let tag = Tag {
            sandbox_id: "sbx_1",
            workdir: "/w",
        };
        let (yaml, names) = override_for(&doc, &tag, true).unwrap();
        assert_eq!(names, vec!["web", "db"]);
        let v: Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["version"], Value::from("3.8"));
        assert_eq!(v["services"]["web"]["labels"]["a"], Value::from("b"));
        assert_eq!(v["services"]["web"]["labels"][LABEL], Value::from("sbx_1"));
        assert_eq!(v["services"]["db"]["labels"][LABEL], Value::from("sbx_1"));
        assert_eq!(v["networks"]["back"]["driver"], Value::from("bridge"));
        assert_eq!(v["networks"]["back"]["internal"], Value::from(true));
        assert_eq!(v["networks"]["default"]["internal"], Value::from(true));
        assert!(v["networks"].get("outside").is_none());
        assert_eq!(v["volumes"]["data"]["labels"][LABEL], Value::from("sbx_1"));
        assert_eq!(
            v["services"]["db"]["labels"][WORKDIR_LABEL],
            Value::from("/w")
        );
    }
}
