//! The provider-key operations shared by the CLI and the admin API: set, delete, list and
//! master-secret rotation.

use anyhow::{bail, Context, Result};

use super::crypto::{last_four, open, seal};
use super::master::MasterSecret;
use super::store::{require_project, ProviderKeyInfo, Reencrypted};
use crate::store::Store;

/// Maximum length of a provider key, in bytes.
pub const MAX_PROVIDER_KEY_LEN: usize = 4096;

/// Checks a provider key as read from stdin or a request: surrounding whitespace is removed, and
/// an empty key or one with inner whitespace or control characters is rejected.
pub fn normalize_key(raw: &str) -> Result<String> {
    let key = raw.trim();
    if key.is_empty() {
        bail!("the provider key is empty");
    }
    if key.len() > MAX_PROVIDER_KEY_LEN {
        bail!("the provider key is longer than {MAX_PROVIDER_KEY_LEN} bytes");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("the provider key contains whitespace or control characters; pass exactly one key");
    }
    Ok(key.to_string())
}

/// Checks that `provider` is configured, so that a typo does not store a key nothing uses.
pub fn check_provider(provider: &str, configured: &[String]) -> Result<()> {
    if !configured.iter().any(|name| name == provider) {
        bail!("unknown provider {provider:?}; the config defines: {}", configured.join(", "));
    }
    Ok(())
}

/// Encrypts and stores a project's key for a provider, replacing any previous one. Returns the
/// masked listing entry.
pub async fn set_key(store: &Store, master: &MasterSecret, project: &str, provider: &str, key: &str) -> Result<ProviderKeyInfo> {
    let found = require_project(store, project).await?;
    let key = zeroize::Zeroizing::new(normalize_key(key)?);
    let (master, project_id, provider_name, plaintext) = (master.clone(), found.id.clone(), provider.to_string(), key.clone());
    // PBKDF2 takes a noticeable fraction of a second, so it runs off the async threads.
    let sealed = tokio::task::spawn_blocking(move || seal(&master, &project_id, &provider_name, &plaintext))
        .await
        .context("the encryption task failed")?;
    store.upsert_provider_key(&found.id, provider, &sealed, &last_four(&key)).await?;
    let listed = store.list_provider_keys(Some(&found.id)).await?;
    listed
        .into_iter()
        .find(|info| info.provider == provider)
        .context("the stored provider key was not found right after writing it")
}

/// Deletes a project's key for a provider. Returns false when there was none.
pub async fn delete_key(store: &Store, project: &str, provider: &str) -> Result<bool> {
    let found = require_project(store, project).await?;
    store.delete_provider_key(&found.id, provider).await
}

/// Lists keys masked, for one project (name or id) or all.
pub async fn list_keys(store: &Store, project: Option<&str>) -> Result<Vec<ProviderKeyInfo>> {
    let project_id = match project {
        Some(name) => Some(require_project(store, name).await?.id),
        None => None,
    };
    store.list_provider_keys(project_id.as_deref()).await
}

/// Re-encrypts every provider key under `new`, all or nothing. Every record is decrypted with
/// `old` first; if any fails, nothing is written and the error names the records (never a key).
/// Returns the number of keys re-encrypted.
pub async fn rotate_master(store: &Store, old: &MasterSecret, new: &MasterSecret) -> Result<usize> {
    if old.expose() == new.expose() {
        bail!("the new master secret equals the current one");
    }
    let records = store.load_provider_keys().await?;
    let (old, new) = (old.clone(), new.clone());
    let reencrypted = tokio::task::spawn_blocking(move || {
        let mut failed = Vec::new();
        let mut done = Vec::with_capacity(records.len());
        for record in &records {
            match open(&old, &record.sealed, &record.project_id, &record.provider) {
                Ok(plaintext) => done.push(Reencrypted {
                    project_id: record.project_id.clone(),
                    provider: record.provider.clone(),
                    previous_nonce: record.sealed.nonce.clone(),
                    sealed: seal(&new, &record.project_id, &record.provider, &plaintext),
                }),
                Err(e) => failed.push(format!("project {} provider {}: {e}", record.project_id, record.provider)),
            }
        }
        if failed.is_empty() {
            Ok(done)
        } else {
            Err(failed)
        }
    })
    .await
    .context("the re-encryption task failed")?;
    let reencrypted = match reencrypted {
        Ok(done) => done,
        Err(failed) => bail!(
            "{} provider key(s) could not be decrypted with the current master secret, so nothing was changed: {}",
            failed.len(),
            failed.join("; ")
        ),
    };
    store.replace_provider_keys(&reencrypted).await?;
    Ok(reencrypted.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::crypto::open;
    use crate::store::test_support::{sqlite_store, with_postgres_store};

    fn master(text: &str) -> MasterSecret {
        MasterSecret::new(text.as_bytes().to_vec()).unwrap()
    }

    async fn exercise(store: Store) {
        let old = master("the-first-master-secret-000");
        let new = master("the-second-master-secret-111");
        let alpha = store.create_project("alpha", "free").await.unwrap();
        let beta = store.create_project("beta", "free").await.unwrap();

        let info = set_key(&store, &old, "alpha", "openai", "sk-alpha-openai-key-AAAA\n").await.unwrap();
        assert_eq!(info.key, "****AAAA");
        assert_eq!(info.key_version, 1);
        set_key(&store, &old, "beta", "openai", "sk-beta-openai-key-BBBB").await.unwrap();
        set_key(&store, &old, &alpha.id, "openrouter", "sk-or-alpha-CCCC").await.unwrap();
        let replaced = set_key(&store, &old, "alpha", "openrouter", "sk-or-alpha-DDDD").await.unwrap();
        assert_eq!(replaced.key, "****DDDD");
        assert_eq!(replaced.key_version, 2);
        let version_before = store.provider_keys_version().await.unwrap();

        assert_eq!(rotate_master(&store, &old, &new).await.unwrap(), 3);
        assert!(store.provider_keys_version().await.unwrap() > version_before);
        let records = store.load_provider_keys().await.unwrap();
        let plain: Vec<String> = records.iter().map(|r| open(&new, &r.sealed, &r.project_id, &r.provider).unwrap().to_string()).collect();
        assert!(plain.contains(&"sk-alpha-openai-key-AAAA".to_string()), "{}", plain.len());
        assert!(plain.contains(&"sk-beta-openai-key-BBBB".to_string()));
        assert!(plain.contains(&"sk-or-alpha-DDDD".to_string()));
        assert!(records.iter().all(|r| r.rotated_at_ms.is_some()));
        assert!(records.iter().all(|r| open(&old, &r.sealed, &r.project_id, &r.provider).is_err()));

        // The old secret no longer decrypts anything, so a second rotation from it changes nothing.
        let error = rotate_master(&store, &old, &master("a-third-master-secret-2222")).await.unwrap_err();
        assert!(format!("{error:#}").contains("nothing was changed"), "{error:#}");
        let after = store.load_provider_keys().await.unwrap();
        assert_eq!(after.iter().map(|r| r.sealed.clone()).collect::<Vec<_>>(), records.iter().map(|r| r.sealed.clone()).collect::<Vec<_>>());
        assert!(!format!("{error:#}").contains("sk-"), "{error:#}");

        let listed = list_keys(&store, None).await.unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|info| info.key.starts_with("****") && info.key.len() == 8));
        assert_eq!(list_keys(&store, Some("beta")).await.unwrap().len(), 1);
        assert!(delete_key(&store, "beta", "openai").await.unwrap());
        assert!(!delete_key(&store, &beta.id, "openai").await.unwrap());
        assert!(set_key(&store, &old, "missing", "openai", "sk-x").await.is_err());
    }

    #[tokio::test]
    async fn sqlite_set_rotate_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path()).await;
        exercise(store.clone()).await;
        // The plaintext keys never reach the database files.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            for key in ["sk-alpha-openai-key-AAAA", "sk-beta-openai-key-BBBB", "sk-or-alpha-DDDD", "sk-or-alpha-CCCC"] {
                assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()), "{key} found in a database file");
            }
        }
    }

    #[tokio::test]
    async fn postgres_set_rotate_delete() {
        with_postgres_store(exercise).await;
    }

    #[test]
    fn key_input_checked() {
        assert_eq!(normalize_key("  sk-abc\n").unwrap(), "sk-abc");
        assert!(normalize_key("\n").is_err());
        assert!(normalize_key("sk-a sk-b").is_err());
        assert!(check_provider("openai", &["openai".into()]).is_ok());
        assert!(check_provider("opneai", &["openai".into()]).is_err());
    }
}
