//! Secrets (SMTP passwords, bot tokens, webhook URLs and signing keys):
//! named in the config by the file or environment variable that holds
//! them, read once at start, and never printed: their `Debug` is redacted
//! and errors name the source, not the value.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest secret file read, in bytes.
const MAX_SECRET_LEN: u64 = 64 * 1024;

/// Where a secret is read from, as written in the config:
/// `{ env = "NAME" }` or `{ file = "/path" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file; surrounding whitespace (a trailing newline) is trimmed.
    File(PathBuf),
}

impl SecretSource {
    /// Reads the secret.
    pub fn load(&self) -> Result<Secret> {
        let (name, value) = match self {
            SecretSource::Env(var) => {
                let name = format!("environment variable {var}");
                let value = std::env::var(var).map_err(|e| Error::Secret {
                    name: name.clone(),
                    reason: e.to_string(),
                })?;
                (name, value)
            }
            SecretSource::File(path) => {
                let name = format!("file {}", path.display());
                let fail = |reason: String| Error::Secret {
                    name: name.clone(),
                    reason,
                };
                let len = std::fs::metadata(path)
                    .map_err(|e| fail(e.to_string()))?
                    .len();
                if len > MAX_SECRET_LEN {
                    return Err(fail(format!("longer than {MAX_SECRET_LEN} bytes")));
                }
                let value = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
                (name, value)
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(Error::Secret {
                name,
                reason: "is empty".into(),
            });
        }
        Ok(Secret(value.to_owned()))
    }
}

/// A secret value. `Debug` and `Display` never show it; code that needs
/// it calls [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (a node's own key store).
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one call that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_trimmed_from_files_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "hunter2-token\n").unwrap();
        let secret = SecretSource::File(path).load().unwrap();
        assert_eq!(secret.expose(), "hunter2-token");
        assert!(!format!("{secret:?} {secret}").contains("hunter2"));
    }

    #[test]
    fn a_missing_or_empty_secret_is_an_error_naming_its_source() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let err = SecretSource::File(missing).load().unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        let err = SecretSource::File(empty).load().unwrap_err();
        assert!(err.to_string().contains("is empty"), "{err}");
        let err = SecretSource::Env("RIGMESH_NOTIFY_TEST_UNSET_VARIABLE".into())
            .load()
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("RIGMESH_NOTIFY_TEST_UNSET_VARIABLE"));
    }
}
