//! The master secret that provider keys are encrypted under, read from a file or an environment
//! variable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use zeroize::Zeroizing;

/// Minimum length of a master secret, in bytes. PBKDF2 slows guessing, but cannot save a short one.
pub const MIN_MASTER_SECRET_LEN: usize = 16;

/// The master secret. Its `Debug` output is redacted and its memory is zeroed on drop.
#[derive(Clone)]
pub struct MasterSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(<redacted>)")
    }
}

impl MasterSecret {
    /// Wraps a secret after trimming surrounding whitespace (a file usually ends with a newline).
    /// Fails when fewer than 16 bytes remain.
    pub fn new(bytes: Vec<u8>) -> anyhow::Result<MasterSecret> {
        let bytes = Zeroizing::new(bytes);
        let trimmed = bytes.trim_ascii();
        if trimmed.len() < MIN_MASTER_SECRET_LEN {
            bail!(
                "the master secret is {} bytes long; it must be at least {MIN_MASTER_SECRET_LEN} (for example `openssl rand -base64 32`)",
                trimmed.len()
            );
        }
        Ok(MasterSecret(Zeroizing::new(trimmed.to_vec())))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

/// Source of the master secret: `provider_keys` in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MasterSecretSource {
    /// Environment variable holding the secret.
    pub env: String,
    /// File holding the secret; relative paths are resolved in systemd's `$CREDENTIALS_DIRECTORY`
    /// when it is set (so `LoadCredential=` works), else in the working directory.
    pub file: String,
}

impl MasterSecretSource {
    /// Returns the file path, resolved as [`MasterSecretSource::file`] describes, if a file is set.
    pub fn file_path(&self, env: &HashMap<String, String>) -> Option<PathBuf> {
        if self.file.is_empty() {
            return None;
        }
        let path = Path::new(&self.file);
        match env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            Some(directory) if path.is_relative() => Some(Path::new(directory).join(path)),
            _ => Some(path.to_path_buf()),
        }
    }

    /// Describes the source for messages, without the secret.
    pub fn describe(&self) -> String {
        if self.file.is_empty() {
            format!("environment variable {}", self.env)
        } else {
            format!("file {}", self.file)
        }
    }

    /// Reads the secret: the file when one is configured (a missing file is an error), otherwise
    /// the environment variable, otherwise the file named like the variable in
    /// `$CREDENTIALS_DIRECTORY`. Returns `None` when nothing is configured.
    pub fn load(&self, env: &HashMap<String, String>) -> anyhow::Result<Option<MasterSecret>> {
        if let Some(path) = self.file_path(env) {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("failed to read the master secret file {}", path.display()))?;
            return MasterSecret::new(bytes).map(Some).with_context(|| format!("invalid master secret in {}", path.display()));
        }
        if self.env.is_empty() {
            return Ok(None);
        }
        if let Some(value) = env.get(&self.env).filter(|v| !v.trim().is_empty()) {
            return MasterSecret::new(value.as_bytes().to_vec())
                .map(Some)
                .with_context(|| format!("invalid master secret in the environment variable {}", self.env));
        }
        let Some(directory) = env.get("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) else { return Ok(None) };
        if self.env.contains('/') {
            return Ok(None);
        }
        let path = Path::new(directory).join(&self.env);
        match std::fs::read(&path) {
            Ok(bytes) => MasterSecret::new(bytes).map(Some).with_context(|| format!("invalid master secret in {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("failed to read the master secret file {}", path.display())),
        }
    }

    /// Reads the secret from the process environment.
    pub fn load_from_process(&self) -> anyhow::Result<Option<MasterSecret>> {
        let env: HashMap<String, String> = std::env::vars().collect();
        self.load(&env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn source(file: &str) -> MasterSecretSource {
        MasterSecretSource { env: "WATCHLLM_MASTER_KEY".into(), file: file.into() }
    }

    #[test]
    fn read_from_environment() {
        let secret = source("").load(&env(&[("WATCHLLM_MASTER_KEY", "  0123456789abcdef0123\n")])).unwrap().unwrap();
        assert_eq!(secret.expose(), b"0123456789abcdef0123");
    }

    #[test]
    fn missing_everywhere_is_none() {
        assert!(source("").load(&env(&[])).unwrap().is_none());
    }

    #[test]
    fn short_secret_rejected() {
        let error = source("").load(&env(&[("WATCHLLM_MASTER_KEY", "short")])).unwrap_err();
        assert!(format!("{error:#}").contains("at least 16"), "{error:#}");
    }

    #[test]
    fn file_in_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("master-key"), "from-a-credential-file-0001\n").unwrap();
        let variables = env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap()), ("WATCHLLM_MASTER_KEY", "ignored-because-file-is-set")]);
        let secret = source("master-key").load(&variables).unwrap().unwrap();
        assert_eq!(secret.expose(), b"from-a-credential-file-0001");
    }

    #[test]
    fn credential_named_like_variable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("WATCHLLM_MASTER_KEY"), "credential-named-like-the-variable").unwrap();
        let variables = env(&[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
        assert!(source("").load(&variables).unwrap().is_some());
    }

    #[test]
    fn missing_configured_file_is_error() {
        let error = source("/nonexistent/watchllm-master-key").load(&env(&[])).unwrap_err();
        assert!(format!("{error:#}").contains("/nonexistent/watchllm-master-key"), "{error:#}");
    }

    #[test]
    fn debug_output_redacted() {
        let secret = MasterSecret::new(b"0123456789abcdef-secret".to_vec()).unwrap();
        assert!(!format!("{secret:?}").contains("0123"));
    }
}
