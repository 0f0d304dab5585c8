//! Inputs that name a path on the daemon's machine (the input a copy-mode
//! workspace copies `from_input`, `ext.compose-ssh`'s `repo`): resolved at
//! create time, before anything is provisioned, under the operator's
//! `input_roots`. A consumer's refused path answers the same 422 whether or
//! not it exists, so the API never tells what is on the host.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use sandboxer_api::{ProblemCode, Profile};

use crate::config::Settings;
use crate::extensions::compose;
use crate::lifecycle::error::{OpError, OpResult};

/// The names of `profile`'s inputs that are host paths.
pub fn path_inputs(profile: &Profile) -> BTreeSet<&str> {
    let mut names = BTreeSet::new();
    if profile.workspace.mode == "copy" {
        if let Some(input) = &profile.workspace.from_input {
            names.insert(input.as_str());
        }
    }
    let on_compose = profile.extension.as_deref() == Some(compose::ID)
        || profile
            .routing
            .as_ref()
            .is_some_and(|r| r.candidates.iter().any(|c| c == compose::ID));
    if on_compose {
        names.insert(compose::REPO_INPUT);
    }
    names
}

/// Resolve every host-path input of `inputs` in place (to its canonical
/// path), or refuse it.
///
/// - `input_roots` configured: every caller's path must be absolute and,
///   once symlinks are resolved, lie under a root and outside `data_dir`.
/// - none configured: operators keep passing any path as given; consumers
///   may pass none.
pub fn resolve(
    settings: &Settings,
    operator: bool,
    profile: &Profile,
    inputs: &mut BTreeMap<String, String>,
) -> OpResult<()> {
    let names = path_inputs(profile);
    if names.is_empty() {
        return Ok(());
    }
    if settings.input_roots.is_empty() && operator {
        return Ok(());
    }
    let data_dir = settings
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| settings.data_dir.clone());
    for (name, value) in inputs.iter_mut() {
        if !names.contains(name.as_str()) || value.is_empty() {
            continue;
        }
        let refused = || refusal(name, settings.input_roots.is_empty());
        if settings.input_roots.is_empty() {
            return Err(refused());
        }
        let resolved = resolve_under(Path::new(value.as_str()), &settings.input_roots, &data_dir)
            .ok_or_else(refused)?;
        *value = resolved.to_string_lossy().into_owned();
    }
    Ok(())
}

/// `path` canonicalized when it is absolute, exists, and lies under one of
/// `roots` (canonical) and not under `data_dir` (canonical); else `None`.
pub fn resolve_under(path: &Path, roots: &[PathBuf], data_dir: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let real = path.canonicalize().ok()?;
    if real.starts_with(data_dir) {
        return None;
    }
    roots.iter().any(|r| real.starts_with(r)).then_some(real)
}

/// One message for every refused path, so it tells nothing about the host.
fn refusal(name: &str, no_roots: bool) -> OpError {
    let detail = if no_roots {
        format!(
            "`inputs.{name}` names a path on the sand-boxer host, which this daemon accepts only \
             from operators (no `input_roots` are configured)"
        )
    } else {
        format!(
            "`inputs.{name}` is not an accepted path: it must be an absolute path to an existing \
             folder under one of the daemon's `input_roots`, outside its data dir"
        )
    };
    OpError::invalid(ProblemCode::InvalidInput, &format!("inputs.{name}"), detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_only_under_a_root_and_outside_the_data_dir() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().canonicalize().expect("canonical");
        let data = root.join("data");
        let repo = root.join("repos/a");
        std::fs::create_dir_all(&data).expect("mkdir");
        std::fs::create_dir_all(&repo).expect("mkdir");
        std::os::unix::fs::symlink("/etc", root.join("repos/link")).expect("symlink");
        let roots = [root.clone()];
        assert_eq!(resolve_under(&repo, &roots, &data), Some(repo.clone()));
        assert_eq!(
            resolve_under(&root.join("repos/a/../a"), &roots, &data),
            Some(repo.clone())
        );
        assert_eq!(resolve_under(&data, &roots, &data), None);
        assert_eq!(resolve_under(&root.join("repos/link"), &roots, &data), None);
        assert_eq!(
            resolve_under(&root.join("repos/../../../etc"), &roots, &data),
            None
        );
        assert_eq!(resolve_under(Path::new("repos/a"), &roots, &data), None);
        assert_eq!(resolve_under(&root.join("missing"), &roots, &data), None);
    }
}
