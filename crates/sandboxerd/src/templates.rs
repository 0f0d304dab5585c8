//! Templates: ext.docker images the daemon builds from a Dockerfile (alone,
//! or with a tar of its context) through the Docker Engine, cached by the
//! SHA-256 of that context: the same inputs are built once.
//!
//! A template `<id>` is the image `sandboxer-template/<id>:<hash16>`, and
//! its current build is also tagged `sandboxer-template/<id>:current`,
//! which is what a profile's `template: <id>` runs. Builds run without a
//! network (`networkmode: none`: nothing is pulled, `FROM` names an image
//! on the host), one at a time, within [`BUILD_TIMEOUT`]; every image
//! carries the labels `io.sandboxer.template`, `io.sandboxer.template-hash`
//! and `io.sandboxer.deployment`.
use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    BuildImageOptionsBuilder, ListContainersOptionsBuilder, ListImagesOptionsBuilder,
    RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use sandboxer_api::{ProblemCode, Template};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::extensions::ExtError;

/// The label naming a template's id.
pub const LABEL: &str = "io.sandboxer.template";
/// The label holding the hash of what it was built from.
pub const HASH_LABEL: &str = "io.sandboxer.template-hash";
/// The longest one build may take.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// The largest context a build takes (the tar, or the Dockerfile).
pub const MAX_CONTEXT: usize = 64 << 20;

pub use crate::extensions::docker::template_image as image_of;

/// A template id: 1 to 63 lower-case letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit (it becomes part of an image name).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 63
        && id.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
        && id
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The build context of a Dockerfile alone: a tar holding `Dockerfile`,
/// written the same way every time (so its hash is the Dockerfile's).
pub fn context_of(dockerfile: &str) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_ustar();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())?;
    tar.into_inner()
}

/// The templates of one deployment on the local Docker Engine.
pub struct Templates {
    docker: Result<Docker, String>,
    deployment: String,
    /// One build at a time.
    building: tokio::sync::Mutex<()>,
}

fn failed(code: ProblemCode, what: &str, e: impl std::fmt::Display) -> ExtError {
    ExtError::new(code, format!("{what}: {e}"))
}

impl Templates {
    /// The templates of the deployment whose data dir is `data_dir`.
    pub fn new(data_dir: &std::path::Path) -> Self {
        Templates {
            docker: Docker::connect_with_unix_defaults().map_err(|e| e.to_string()),
            deployment: crate::extensions::docker::deployment_id(data_dir),
            building: tokio::sync::Mutex::new(()),
        }
    }

    fn docker(&self) -> Result<&Docker, ExtError> {
        self.docker.as_ref().map_err(|e| {
            ExtError::new(
                ProblemCode::BackendUnavailable,
                format!("no Docker Engine: {e}"),
            )
        })
    }

    /// Every template's current build (of `only` when given), by id.
    pub async fn list(&self, only: Option<&str>) -> Result<Vec<Template>, ExtError> {
        let label = match only {
            Some(id) => format!("{LABEL}={id}"),
            None => LABEL.to_owned(),
        };
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                label,
                format!(
                    "{}={}",
                    crate::extensions::docker::DEPLOYMENT,
                    self.deployment
                ),
            ],
        )]);
        let opts = ListImagesOptionsBuilder::new().filters(&filters).build();
        let images = tokio::time::timeout(
            Duration::from_secs(30),
            self.docker()?.list_images(Some(opts)),
        )
        .await
        .map_err(|_| {
            ExtError::new(
                ProblemCode::BackendUnavailable,
                "listing images: the Docker Engine did not answer within 30s",
            )
        })?
        .map_err(|e| failed(ProblemCode::BackendUnavailable, "listing images", e))?;
        let mut out: Vec<Template> = images
            .into_iter()
            .filter_map(|i| {
                let id = i.labels.get(LABEL)?.clone();
                let current = image_of(&id);
                i.repo_tags.contains(&current).then(|| Template {
                    image: current,
                    content_hash: i.labels.get(HASH_LABEL).cloned().unwrap_or_default(),
                    image_id: i.id.clone(),
                    size_bytes: u64::try_from(i.size).unwrap_or(0),
                    created_at: chrono::DateTime::from_timestamp(i.created, 0).unwrap_or_default(),
                    cached: false,
                    id,
                })
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Builds template `id` from `context` (a tar with a `Dockerfile` at its
    /// root), sending each line of the build's output to `log`; an earlier
    /// build of the same context is reused (and made current again).
    pub async fn build(
        &self,
        id: &str,
        context: Vec<u8>,
        log: mpsc::Sender<String>,
    ) -> Result<Template, ExtError> {
        let hash = hex::encode(Sha256::digest(&context));
        let tag = format!("sandboxer-template/{id}:{}", &hash[..16]);
        let _one = self.building.lock().await;
        let docker = self.docker()?;
        // Reused only when it is this deployment's build of this template
        // (another daemon on the same engine may have built the same text).
        let cached = match docker.inspect_image(&tag).await {
            Ok(image) => {
                let labels = image.config.and_then(|c| c.labels).unwrap_or_default();
                labels.get(LABEL).map(String::as_str) == Some(id)
                    && labels.get(crate::extensions::docker::DEPLOYMENT) == Some(&self.deployment)
            }
            Err(_) => false,
        };
        if cached {
            let _ = log
                .send(format!("the same context was built before: {tag}\n"))
                .await;
        } else {
            let labels = HashMap::from([
                (LABEL.to_owned(), id.to_owned()),
                (HASH_LABEL.to_owned(), hash.clone()),
                (
                    crate::extensions::docker::DEPLOYMENT.to_owned(),
                    self.deployment.clone(),
                ),
            ]);
            let opts = BuildImageOptionsBuilder::new()
                .dockerfile("Dockerfile")
                .t(&tag)
                .rm(true)
                .forcerm(true)
                .networkmode("none")
                .labels(&labels)
                .build();
            let body = bollard::body_full(context.into());
            let mut stream = docker.build_image(opts, None, Some(body));
            let run = async {
                while let Some(item) = stream.next().await {
                    let info =
                        item.map_err(|e| failed(ProblemCode::TemplateBuildFailed, "the build", e))?;
                    if let Some(text) = info.stream.or(info.status) {
                        let _ = log.send(text).await;
                    }
                    if let Some(err) = info.error {
                        return Err(ExtError::new(ProblemCode::TemplateBuildFailed, err));
                    }
                }
                Ok(())
            };
            tokio::time::timeout(BUILD_TIMEOUT, run)
                .await
                .map_err(|_| {
                    ExtError::new(
                        ProblemCode::TemplateBuildFailed,
                        format!("the build took longer than {BUILD_TIMEOUT:?}"),
                    )
                })??;
        }
        let tag_opts = TagImageOptionsBuilder::new()
            .repo(&format!("sandboxer-template/{id}"))
            .tag("current")
            .build();
        docker.tag_image(&tag, Some(tag_opts)).await.map_err(|e| {
            failed(
                ProblemCode::TemplateBuildFailed,
                "tagging the build current",
                e,
            )
        })?;
        let mut t = self
            .list(Some(id))
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| {
                ExtError::new(
                    ProblemCode::TemplateBuildFailed,
                    "the built image is not listed",
                )
            })?;
        t.cached = cached;
        Ok(t)
    }

    /// Removes every build of template `id`; whether there was one.
    pub async fn delete(&self, id: &str) -> Result<bool, ExtError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL}={id}"),
                format!(
                    "{}={}",
                    crate::extensions::docker::DEPLOYMENT,
                    self.deployment
                ),
            ],
        )]);
        let opts = ListImagesOptionsBuilder::new().filters(&filters).build();
        let docker = self.docker()?;
        let images = docker
            .list_images(Some(opts))
            .await
            .map_err(|e| failed(ProblemCode::BackendUnavailable, "listing images", e))?;
        // Never from under a sandbox: any container of a build (running or
        // not) keeps the template.
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!(
                "{}={}",
                crate::extensions::docker::DEPLOYMENT,
                self.deployment
            )],
        )]);
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| failed(ProblemCode::BackendUnavailable, "listing containers", e))?;
        for i in &images {
            let users: Vec<_> = containers
                .iter()
                .filter(|c| c.image_id.as_deref() == Some(i.id.as_str()))
                .collect();
            if !users.is_empty() {
                return Err(ExtError::new(
                    ProblemCode::InvalidState,
                    format!(
                        "template `{id}` is in use by {} container(s); destroy its sandboxes first",
                        users.len()
                    ),
                ));
            }
        }
        for i in &images {
            // By each of its tags: the image goes with the last one.
            for tag in &i.repo_tags {
                let opts = RemoveImageOptionsBuilder::new().build();
                match docker.remove_image(tag, Some(opts), None).await {
                    Ok(_) => {}
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => {}
                    Err(e) => {
                        return Err(failed(ProblemCode::InvalidState, "removing the image", e))
                    }
                }
            }
        }
        Ok(!images.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_image_name_parts() {
        for ok in ["python-3.12", "a", "node_22", "0x"] {
            assert!(valid_id(ok), "{ok}");
        }
        for bad in [
            "",
            "Python",
            "-a",
            ".a",
            "a/b",
            "a:b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_dockerfile_context_hashes_the_same_every_time() {
        let a = context_of("FROM local/busybox\n").expect("tar");
        let b = context_of("FROM local/busybox\n").expect("tar");
        assert_eq!(a, b);
        assert_ne!(
            a,
            context_of("FROM local/busybox\nRUN true\n").expect("tar")
        );
    }
}
