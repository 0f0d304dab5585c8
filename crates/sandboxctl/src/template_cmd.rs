//! `sandboxctl template build|list|rm`.
use std::path::Path;

use sandboxctl::{Client, TemplateSource};

use crate::args::TemplateCommand;
use crate::output::{emit, emit_json, note, CliError};
use crate::table::Table;

/// Runs one `template` subcommand.
pub async fn run(client: &Client, cmd: TemplateCommand, json: bool) -> Result<(), CliError> {
    match cmd {
        TemplateCommand::Build { id, file, context } => {
            let source = match (file, context) {
                (Some(f), _) => TemplateSource::Dockerfile(
                    std::fs::read_to_string(&f)
                        .map_err(|e| CliError::Usage(format!("{}: {e}", f.display())))?,
                ),
                (None, Some(dir)) => TemplateSource::Context(tar_of(&dir)?),
                (None, None) => {
                    return Err(CliError::Usage(
                        "give the Dockerfile (-f) or a context directory (--context)".into(),
                    ))
                }
            };
            // The build's output goes to stderr, so stdout holds the result.
            let t = client
                .build_template(&id, source, |line| eprintln!("{line}"))
                .await?;
            if json {
                emit_json(&t)
            } else {
                let how = if t.cached { "reused" } else { "built" };
                emit(&format!(
                    "{} {how}: {} ({} bytes)\n",
                    t.id, t.image, t.size_bytes
                ));
                Ok(())
            }
        }
        TemplateCommand::List => {
            let page = client.templates().await?;
            if json {
                return emit_json(&page.items);
            }
            let mut table = Table::new(&["ID", "IMAGE", "HASH", "SIZE", "CREATED"]);
            for t in &page.items {
                table.row(vec![
                    t.id.clone(),
                    t.image.clone(),
                    t.content_hash.chars().take(16).collect(),
                    t.size_bytes.to_string(),
                    t.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ]);
            }
            emit(&table.render());
            Ok(())
        }
        TemplateCommand::Rm { id } => {
            client.delete_template(&id).await?;
            if json {
                emit_json(&serde_json::json!({"id": id, "deleted": true}))
            } else {
                note(&format!("template {id} removed"));
                Ok(())
            }
        }
    }
}

/// A tar of directory `dir` (its files as they are, symlinks kept as links).
fn tar_of(dir: &Path) -> Result<Vec<u8>, CliError> {
    if !dir.join("Dockerfile").is_file() {
        return Err(CliError::Usage(format!(
            "{}: no Dockerfile at the top of the context",
            dir.display()
        )));
    }
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))?;
    tar.into_inner()
        .map_err(|e| CliError::Usage(format!("{}: {e}", dir.display())))
}
