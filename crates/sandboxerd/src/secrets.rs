//! Secrets: values read at provision time from the daemon's environment or
//! files named in its configuration, handed to the backend, and otherwise
//! never stored, returned or logged.
use std::collections::BTreeMap;

use crate::config::SecretSource;
use crate::extensions::ExtError;

/// A secret value. Its `Debug` prints `[redacted]` and it has no `Display`,
/// so it cannot end up in a log line or an error message by accident.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that hands it to the sandbox.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Resolve a profile's `setup.secret_refs` (variable → secret name) against
/// the configured sources. Errors name the secret and the source, never a value.
pub fn resolve(
    refs: &BTreeMap<String, String>,
    sources: &BTreeMap<String, SecretSource>,
) -> Result<BTreeMap<String, Secret>, ExtError> {
    let mut out = BTreeMap::new();
    for (var, name) in refs {
        let Some(src) = sources.get(name) else {
            return Err(ExtError::new(
                "secret_unavailable",
                format!("secret `{name}` (for ${var}) is not configured in `[secrets]`"),
            ));
        };
        let value = match (&src.env, &src.file) {
            (Some(env), _) => std::env::var(env).map_err(|_| {
                ExtError::new(
                    "secret_unavailable",
                    format!(
                        "secret `{name}`: environment variable `{env}` of the daemon is not set"
                    ),
                )
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| {
                    ExtError::new(
                        "secret_unavailable",
                        format!(
                            "secret `{name}`: cannot read {}: {}",
                            path.display(),
                            e.kind()
                        ),
                    )
                })?,
            (None, None) => {
                return Err(ExtError::new(
                    "secret_unavailable",
                    format!("secret `{name}` names no source"),
                ))
            }
        };
        out.insert(var.clone(), Secret(value));
    }
    Ok(out)
}
