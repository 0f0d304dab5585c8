//! Snapshots of compose sandboxes. A capture pauses the project, streams
//! the workdir (`tar -c`) and every named volume of the project (`docker
//! cp` from a container that mounts it) back to the daemon, unpauses, and
//! stores the lot as one ordinary snapshot archive:
//!
//! ```text
//! workdir/          the sandbox's workdir (the override file left out)
//! volumes/<name>/   the content of the project's volume `<name>`
//! ```
//!
//! The archive holds nothing host-specific, so a fork goes to any host: the
//! workdir is uploaded as a repository would be, the project is created
//! (`up --no-start`), each volume is filled (`docker cp` into a created
//! container that mounts it) and only then do the services start. A
//! restore in place verifies and unpacks the archive on the daemon first,
//! then takes the stack down (`down -v`) and brings it up the same way
//! under the same project name.
use std::path::{Path, PathBuf};
use std::time::Duration;

use sandboxer_api::ProblemCode;

use super::project::{LABEL, OVERRIDE_FILE};
use super::ssh::{sh_quote, HostPool};
use super::{BringUp, ComposeExtension, ComposeState, Tooling, UP_PID_FILE};
use crate::extensions::archive::{self, ExtractError, WriteError};
use crate::extensions::{BackendState, ExtError, SandboxEnv, SnapshotArchive, SnapshotSource};

/// The label compose puts on a volume with its name in the compose file.
const VOLUME_KEY_LABEL: &str = "com.docker.compose.volume";
/// Time one transfer (the workdir, or one volume) may take.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A folder removed when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io_error(code: ProblemCode, what: &str, e: impl std::fmt::Display) -> ExtError {
    ExtError::new(code, format!("{what}: {e}"))
}

fn too_large(limit: u64) -> ExtError {
    ExtError::new(
        ProblemCode::SnapshotTooLarge,
        format!("the sandbox holds more than the profile's snapshot.max_size ({limit} bytes)"),
    )
}

/// A volume or container name as the engine prints it.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !s.starts_with('.')
}

/// One named volume of a project and a container that mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mounted {
    volume: String,
    key: String,
    container: String,
    dest: String,
}

/// The project's named volumes (label `io.sandboxer.sandbox-id`), each with
/// one container mounting it and where. Volumes no container mounts are
/// left out (there is nothing to copy them through).
async fn mounted_volumes(
    pool: &HostPool,
    t: &Tooling,
    sandbox_id: &str,
) -> Result<Vec<Mounted>, ExtError> {
    let e = &t.engine;
    let label = sh_quote(&format!("label={LABEL}={sandbox_id}"));
    let script = format!(
        r#"for v in $({e} volume ls -q --filter {label}); do
  k=$({e} volume inspect -f '{{{{index .Labels "{VOLUME_KEY_LABEL}"}}}}' "$v") || exit 1
  c=$({e} ps -a -q --filter volume="$v" | head -n 1)
  [ -n "$c" ] || continue
  d=$({e} inspect -f '{{{{range .Mounts}}}}{{{{if eq .Name "'"$v"'"}}}}{{{{.Destination}}}}{{{{end}}}}{{{{end}}}}' "$c") || exit 1
  printf '%s\t%s\t%s\t%s\n' "$v" "$k" "$c" "$d"
done
"#
    );
    let out = pool
        .run(
            &script,
            ProblemCode::HostError,
            "listing the project's volumes",
        )
        .await?;
    let mut found = Vec::new();
    for line in out.stdout_text().lines() {
        let parts: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [volume, key, container, dest] = parts[..] else {
            continue;
        };
        // A volume without compose's label is not one the compose file
        // names; a mount point must be an absolute path.
        if !is_plain_name(volume)
            || !is_plain_name(key)
            || !is_plain_name(container)
            || !dest.starts_with('/')
            || dest == "/"
        {
            continue;
        }
        found.push(Mounted {
            volume: volume.to_owned(),
            key: key.to_owned(),
            container: container.to_owned(),
            dest: dest.to_owned(),
        });
    }
    Ok(found)
}

/// Stream `command`'s stdout (a tar stream) into `tar_path`, within the
/// `budget` of bytes left (`snapshot_too_large` past it).
async fn download(
    pool: &HostPool,
    command: &str,
    tar_path: &Path,
    budget: &mut u64,
    max: u64,
    what: &str,
) -> Result<(), ExtError> {
    let got = pool
        .exec_to_file(command, tar_path, *budget, TRANSFER_TIMEOUT)
        .await?;
    if got.over_limit {
        return Err(too_large(max));
    }
    if got.status != Some(0) {
        return Err(ExtError::new(
            ProblemCode::SnapshotFailed,
            format!(
                "host {}: {what} failed (exit {:?}): {}",
                pool.host.id,
                got.status,
                got.stderr_tail()
            ),
        ));
    }
    *budget -= got.bytes;
    Ok(())
}

/// Unpack the tar file `tar_path` into `dest` (permissions, times and, as
/// root, owners kept; entries escaping `dest` are refused by the tar crate).
fn unpack(tar_path: &Path, dest: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dest)?;
    let mut ar = tar::Archive::new(std::fs::File::open(tar_path)?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    ar.set_unpack_xattrs(false);
    ar.set_overwrite(true);
    ar.unpack(dest)?;
    std::fs::remove_file(tar_path)
}

/// Capture sandbox `sandbox_id` (stack `s`) into the new archive `dest`.
pub async fn capture(
    pool: &HostPool,
    s: &ComposeState,
    sandbox_id: &str,
    dest: &Path,
    max: u64,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<SnapshotArchive, ExtError> {
    if cancel.is_cancelled() {
        return Err(crate::extensions::snapshot_cancelled());
    }
    let staging = Staging(PathBuf::from(format!("{}.d", dest.display())));
    let root = staging.0.clone();
    std::fs::create_dir_all(root.join("volumes"))
        .map_err(|e| io_error(ProblemCode::SnapshotFailed, "making the staging folder", e))?;
    let qdir = sh_quote(&s.dir);
    let compose = format!(
        "cd {qdir} && {} -p {} -f {} -f {OVERRIDE_FILE}",
        s.tooling.compose,
        sh_quote(&s.project),
        sh_quote(&s.compose_file)
    );
    // Paused, so the workdir and the volumes are taken at one moment.
    let paused = pool
        .exec(&format!("{compose} pause"), None, None)
        .await
        .is_ok_and(|o| o.success());
    if !paused {
        tracing::warn!(
            sandbox_id,
            "could not pause the project; capturing it running"
        );
    }
    let copied = copy_out(pool, s, sandbox_id, &root, max).await;
    if paused {
        if let Err(e) = pool
            .exec(&format!("{compose} unpause"), None, None)
            .await
            .map_err(ExtError::from)
            .and_then(|o| {
                if o.success() {
                    Ok(())
                } else {
                    Err(ExtError::new(ProblemCode::HostError, o.stderr_tail()))
                }
            })
        {
            tracing::error!(sandbox_id, error = %e, "could not unpause the project after a capture");
            return Err(ExtError::new(
                ProblemCode::SnapshotFailed,
                format!("unpausing the project after the capture: {e}"),
            ));
        }
    }
    copied?;
    if cancel.is_cancelled() {
        return Err(crate::extensions::snapshot_cancelled());
    }
    let dest = dest.to_owned();
    let cancel = cancel.clone();
    let info = tokio::task::spawn_blocking(move || {
        archive::write_archive(&root, &dest, max, &|| cancel.is_cancelled())
    })
    .await
    .map_err(|e| io_error(ProblemCode::SnapshotFailed, "archive task", e))?;
    drop(staging);
    match info {
        Ok(info) => Ok(SnapshotArchive {
            sha256: info.sha256,
            size_bytes: info.size_bytes,
            content_bytes: info.content_bytes,
        }),
        Err(WriteError::TooLarge { limit }) => Err(too_large(limit)),
        Err(WriteError::Cancelled) => Err(crate::extensions::snapshot_cancelled()),
        Err(e) => Err(ExtError::new(ProblemCode::SnapshotFailed, e.to_string())),
    }
}

/// The workdir and each mounted volume, into `root/workdir` and
/// `root/volumes/<name>`.
async fn copy_out(
    pool: &HostPool,
    s: &ComposeState,
    sandbox_id: &str,
    root: &Path,
    max: u64,
) -> Result<(), ExtError> {
    let mut budget = max;
    let tar_path = root.join("workdir.tar");
    download(
        pool,
        &format!(
            "tar -c -C {} --exclude=./{OVERRIDE_FILE} --exclude=./{UP_PID_FILE} .",
            sh_quote(&s.dir)
        ),
        &tar_path,
        &mut budget,
        max,
        "archiving the workdir",
    )
    .await?;
    let into = root.join("workdir");
    tokio::task::spawn_blocking(move || unpack(&tar_path, &into))
        .await
        .map_err(|e| io_error(ProblemCode::SnapshotFailed, "unpack task", e))?
        .map_err(|e| io_error(ProblemCode::SnapshotFailed, "unpacking the workdir", e))?;
    for m in mounted_volumes(pool, &s.tooling, sandbox_id).await? {
        let tar_path = root.join(format!("volume-{}.tar", m.key));
        download(
            pool,
            &format!(
                "{} cp -a {}:{} -",
                s.tooling.engine,
                sh_quote(&m.container),
                sh_quote(&m.dest)
            ),
            &tar_path,
            &mut budget,
            max,
            &format!("copying volume {}", m.volume),
        )
        .await?;
        // `docker cp` puts the tree under the mount point's base name.
        let tmp = root.join(format!("volume-{}.d", m.key));
        let base = Path::new(&m.dest)
            .file_name()
            .map(|n| n.to_owned())
            .unwrap_or_default();
        let target = root.join("volumes").join(&m.key);
        tokio::task::spawn_blocking(move || {
            unpack(&tar_path, &tmp)?;
            std::fs::rename(tmp.join(base), &target)?;
            std::fs::remove_dir_all(&tmp)
        })
        .await
        .map_err(|e| io_error(ProblemCode::SnapshotFailed, "unpack task", e))?
        .map_err(|e| {
            io_error(
                ProblemCode::SnapshotFailed,
                &format!("unpacking volume {}", m.volume),
                e,
            )
        })?;
    }
    Ok(())
}

/// Verify and unpack the archive `src` into a staging folder beside it.
async fn unpack_snapshot(src: &SnapshotSource, staging: &Path) -> Result<(), ExtError> {
    let (path, sha, into) = (src.path.clone(), src.sha256.clone(), staging.to_owned());
    let id = src.id.clone();
    tokio::task::spawn_blocking(move || archive::extract_archive(&path, &sha, &into, None))
        .await
        .map_err(|e| io_error(ProblemCode::RestoreFailed, "unpack task", e))?
        .map_err(|e| match e {
            ExtractError::Corrupt(msg) => ExtError::new(
                ProblemCode::SnapshotCorrupt,
                format!("snapshot {id} is damaged: {msg}"),
            ),
            ExtractError::Io(msg) => ExtError::new(ProblemCode::RestoreFailed, msg),
        })?;
    if !staging.join("workdir").is_dir() {
        return Err(ExtError::new(
            ProblemCode::SnapshotIncompatible,
            format!("snapshot {} holds no compose workdir", src.id),
        ));
    }
    Ok(())
}

fn staging_for(ext_dir: &Path, sandbox_id: &str) -> Staging {
    Staging(ext_dir.join(format!(
        "compose-restore-{sandbox_id}-{}",
        crate::clock::now_ms()
    )))
}

/// Provision sandbox `sandbox_id` on `pool` from snapshot `src` (a fork).
pub async fn fork(
    ext: &ComposeExtension,
    pool: &HostPool,
    sandbox_id: &str,
    internal: bool,
    src: &SnapshotSource,
    env: SandboxEnv<'_>,
    allow: Vec<sandboxer_api::ComposeAllow>,
) -> Result<BackendState, ExtError> {
    let staging = staging_for(&scratch_dir(src), sandbox_id);
    unpack_snapshot(src, &staging.0).await?;
    let up = BringUp {
        sandbox_id,
        root: staging.0.join("workdir"),
        internal,
        volumes: Some(staging.0.join("volumes")),
        check_capacity: true,
        allow,
    };
    ext.bring_up(pool, up, env).await
}

/// Replace the stack of sandbox `sandbox_id` (`s`) with snapshot `src`,
/// same host and project. The archive is verified and unpacked, and its
/// compose file checked, before the running stack is touched.
pub async fn restore(
    ext: &ComposeExtension,
    pool: &HostPool,
    s: &ComposeState,
    sandbox_id: &str,
    src: &SnapshotSource,
    env: SandboxEnv<'_>,
    internal: bool,
) -> Result<(), ExtError> {
    let staging = staging_for(&scratch_dir(src), sandbox_id);
    unpack_snapshot(src, &staging.0).await?;
    let workdir = staging.0.join("workdir");
    let (id, host_workdir) = (sandbox_id.to_owned(), pool.host.workdir.clone());
    let check = workdir.clone();
    let allow = s.allow.clone();
    tokio::task::spawn_blocking(move || {
        super::project::prepare(&check, &id, &host_workdir, internal, &allow).map(|_| ())
    })
    .await
    .map_err(|e| io_error(ProblemCode::RestoreFailed, "check task", e))??;
    // Down with its volumes and workdir (the snapshot has both), then up.
    ext.teardown_on(pool, sandbox_id, Some(s)).await?;
    let up = BringUp {
        sandbox_id,
        root: workdir,
        internal,
        volumes: Some(staging.0.join("volumes")),
        check_capacity: false,
        allow: s.allow.clone(),
    };
    ext.bring_up(pool, up, env).await.map(|_| ()).map_err(|e| {
        ExtError::new(
            ProblemCode::RestoreFailed,
            format!(
                "the stack was taken down but did not come back up from the snapshot ({}: {}); \
                 restore again or destroy the sandbox",
                e.code, e.message
            ),
        )
    })
}

/// Where archives are unpacked: the blob store's `tmp/` (emptied at every
/// start, so a crash leaves nothing behind).
fn scratch_dir(src: &SnapshotSource) -> PathBuf {
    src.path
        .parent()
        .map(|p| p.join("tmp"))
        .unwrap_or_else(std::env::temp_dir)
}

/// Fill each named volume of the created (not started) project from
/// `volumes/<name>/`, through a container that mounts it.
pub(crate) async fn fill_volumes(
    pool: &HostPool,
    t: &Tooling,
    sandbox_id: &str,
    project: &str,
    volumes: &Path,
) -> Result<(), ExtError> {
    let Ok(entries) = std::fs::read_dir(volumes) else {
        return Ok(());
    };
    let mut keys: Vec<String> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|k| is_plain_name(k))
        .collect();
    keys.sort();
    if keys.is_empty() {
        return Ok(());
    }
    let mounted = mounted_volumes(pool, t, sandbox_id).await?;
    for key in keys {
        let Some(m) = mounted.iter().find(|m| m.key == key) else {
            return Err(ExtError::new(
                ProblemCode::SnapshotIncompatible,
                format!(
                    "the snapshot holds volume `{key}`, which no service of project {project} mounts"
                ),
            ));
        };
        let dir = volumes.join(&key);
        let tar = tokio::task::spawn_blocking(move || tar_dir(&dir))
            .await
            .map_err(|e| io_error(ProblemCode::RestoreFailed, "pack task", e))?
            .map_err(|e| {
                io_error(
                    ProblemCode::RestoreFailed,
                    &format!("packing volume {key}"),
                    e,
                )
            })?;
        let out = pool
            .exec(
                &format!(
                    "{} cp -a - {}:{}",
                    t.engine,
                    sh_quote(&m.container),
                    sh_quote(&m.dest)
                ),
                Some(&tar),
                Some(TRANSFER_TIMEOUT),
            )
            .await?;
        if !out.success() {
            return Err(ExtError::new(
                ProblemCode::RestoreFailed,
                format!(
                    "host {}: filling volume {} failed: {}",
                    pool.host.id,
                    m.volume,
                    out.stderr_tail()
                ),
            ));
        }
    }
    Ok(())
}

/// The tree under `dir` as a tar stream of relative entries (owners kept).
fn tar_dir(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder.append_dir_all(".", dir)?;
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::is_plain_name;

    #[test]
    fn names_from_the_host_are_checked() {
        assert!(is_plain_name("sbx_01abc_data"));
        for bad in ["", "..", ".x", "a/b", "a b", "a;b", "$(x)"] {
            assert!(!is_plain_name(bad), "{bad}");
        }
    }
}
