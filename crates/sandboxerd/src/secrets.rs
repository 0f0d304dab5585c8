//! Secrets: values read at provision time from the daemon's environment or
//! files named in its configuration, handed to the backend, and otherwise
//! never stored, returned or logged.
use std::collections::BTreeMap;

use crate::config::SecretSource;

/// A secret that cannot be had (code `secret_unavailable` wherever it
/// fails a sandbox). The message names the secret and its source, never a
/// value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

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
) -> Result<BTreeMap<String, Secret>, SecretError> {
    let mut out = BTreeMap::new();
    for (var, name) in refs {
        let Some(src) = sources.get(name) else {
            return Err(SecretError(format!(
                "secret `{name}` (for ${var}) is not configured in `[secrets]`"
            )));
        };
        let value = match (&src.env, &src.file) {
            (Some(env), _) => std::env::var(env).map_err(|_| {
                SecretError(format!(
                    "secret `{name}`: environment variable `{env}` of the daemon is not set"
                ))
            })?,
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| {
                    SecretError(format!(
                        "secret `{name}`: cannot read {}: {}",
                        path.display(),
                        e.kind()
                    ))
                })?,
            (None, None) => return Err(SecretError(format!("secret `{name}` names no source"))),
        };
        out.insert(var.clone(), Secret(value));
    }
    Ok(out)
}
