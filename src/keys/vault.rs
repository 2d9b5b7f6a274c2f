//! The gateway's in-memory view of the provider keys: the encrypted records, the master secret,
//! and the ciphers derived from it, cached per salt so that PBKDF2 does not run per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use aes_gcm::Aes256Gcm;
use arc_swap::ArcSwap;
use zeroize::Zeroizing;

use super::crypto::{check_parameters, derive_cipher, open_with, CryptoError};
use super::master::MasterSecret;
use super::store::ProviderKeyRecord;

/// The records loaded from the store, by project id and then provider name.
#[derive(Debug, Default)]
pub struct RecordSnapshot {
    pub version: i64,
    records: HashMap<String, HashMap<String, Arc<ProviderKeyRecord>>>,
}

impl RecordSnapshot {
    pub fn new(version: i64, records: Vec<ProviderKeyRecord>) -> Self {
        let mut by_project: HashMap<String, HashMap<String, Arc<ProviderKeyRecord>>> = HashMap::new();
        for record in records {
            by_project.entry(record.project_id.clone()).or_default().insert(record.provider.clone(), Arc::new(record));
        }
        RecordSnapshot { version, records: by_project }
    }

    pub fn get(&self, project_id: &str, provider: &str) -> Option<&Arc<ProviderKeyRecord>> {
        self.records.get(project_id)?.get(provider)
    }

    pub fn len(&self) -> usize {
        self.records.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<ProviderKeyRecord>> {
        self.records.values().flat_map(HashMap::values)
    }
}

/// Failure to use a project's provider key. No variant carries key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no master secret is configured, so the stored key cannot be decrypted; set the variable or file named under provider_keys")]
    NoMasterSecret,
    #[error("{0}")]
    Crypto(#[from] CryptoError),
    #[error("the key derivation task failed: {0}")]
    Derivation(String),
}

/// The master secret with the ciphers derived from it, keyed by salt (with the iteration count
/// they were derived with).
struct Keyring {
    master: MasterSecret,
    ciphers: RwLock<HashMap<Vec<u8>, (u32, Arc<Aes256Gcm>)>>,
}

impl Keyring {
    fn cached(&self, salt: &[u8], iterations: u32) -> Option<Arc<Aes256Gcm>> {
        let ciphers = self.ciphers.read().unwrap_or_else(|e| e.into_inner());
        ciphers.get(salt).filter(|(rounds, _)| *rounds == iterations).map(|(_, cipher)| cipher.clone())
    }

    fn derive(&self, salt: &[u8], iterations: u32) -> Arc<Aes256Gcm> {
        if let Some(cipher) = self.cached(salt, iterations) {
            return cipher;
        }
        let cipher = Arc::new(derive_cipher(&self.master, salt, iterations));
        let mut ciphers = self.ciphers.write().unwrap_or_else(|e| e.into_inner());
        ciphers.insert(salt.to_vec(), (iterations, cipher.clone()));
        cipher
    }
}

/// The records and the keyring, swapped together so that a lookup never pairs records with
/// a master secret they were not encrypted under (except for the NOTE in `replace_snapshot`).
#[derive(Default)]
struct VaultState {
    snapshot: Arc<RecordSnapshot>,
    keyring: Option<Arc<Keyring>>,
}

/// Provider keys as the proxy uses them. Cheap to clone: the state is behind an `Arc`.
#[derive(Clone, Default)]
pub struct Vault {
    state: Arc<ArcSwap<VaultState>>,
}

fn keyring_of(master: Option<MasterSecret>) -> Option<Arc<Keyring>> {
    master.map(|master| Arc::new(Keyring { master, ciphers: RwLock::new(HashMap::new()) }))
}

impl Vault {
    pub fn new(master: Option<MasterSecret>) -> Self {
        let state = VaultState { snapshot: Arc::new(RecordSnapshot::default()), keyring: keyring_of(master) };
        Vault { state: Arc::new(ArcSwap::from_pointee(state)) }
    }

    /// Replaces the master secret and drops every cached cipher.
    pub fn set_master(&self, master: Option<MasterSecret>) {
        let keyring = keyring_of(master);
        self.state.rcu(|state| VaultState { snapshot: state.snapshot.clone(), keyring: keyring.clone() });
    }

    /// Replaces the master secret and the records in one step, after a rotation.
    pub fn replace_all(&self, master: MasterSecret, snapshot: RecordSnapshot) {
        self.state.store(Arc::new(VaultState { snapshot: Arc::new(snapshot), keyring: keyring_of(Some(master)) }));
    }

    /// Returns the master secret in use, for encrypting new records under the same secret.
    pub fn master(&self) -> Option<MasterSecret> {
        self.state.load().keyring.as_ref().map(|keyring| keyring.master.clone())
    }

    pub fn has_master(&self) -> bool {
        self.state.load().keyring.is_some()
    }

    pub fn snapshot(&self) -> Arc<RecordSnapshot> {
        self.state.load().snapshot.clone()
    }

    /// Replaces the records and keeps the master secret.
    // NOTE: records re-encrypted by a rotation in another process fail to decrypt here until this
    // gateway has the new master secret: the routing service reads a secret file again at every
    // refresh, while a secret in an environment variable needs a restart.
    pub fn replace_snapshot(&self, snapshot: RecordSnapshot) {
        let snapshot = Arc::new(snapshot);
        self.state.rcu(|state| VaultState { snapshot: snapshot.clone(), keyring: state.keyring.clone() });
    }

    /// Returns whether the project stored its own key for this provider.
    pub fn has_key(&self, project_id: &str, provider: &str) -> bool {
        self.state.load().snapshot.get(project_id, provider).is_some()
    }

    /// Decrypts the project's own key for `provider`. Returns `Ok(None)` when it has none.
    ///
    /// With the cipher cached this is one AES-GCM decryption; otherwise PBKDF2 runs once on a
    /// blocking thread and its result is cached.
    pub async fn resolve(&self, project_id: &str, provider: &str) -> Result<Option<Zeroizing<String>>, KeyError> {
        let state = self.state.load_full();
        let Some(record) = state.snapshot.get(project_id, provider) else { return Ok(None) };
        let keyring = state.keyring.clone().ok_or(KeyError::NoMasterSecret)?;
        check_parameters(&record.sealed)?;
        let cipher = match keyring.cached(&record.sealed.salt, record.sealed.iterations) {
            Some(cipher) => cipher,
            None => {
                let (salt, iterations) = (record.sealed.salt.clone(), record.sealed.iterations);
                tokio::task::spawn_blocking(move || keyring.derive(&salt, iterations))
                    .await
                    .map_err(|e| KeyError::Derivation(e.to_string()))?
            }
        };
        Ok(Some(open_with(&cipher, &record.sealed, project_id, provider)?))
    }

    /// Decrypts with a cached cipher only; `None` when there is no record or its cipher is not
    /// derived yet. For the benchmarks and for callers that cannot wait.
    pub fn resolve_cached(&self, project_id: &str, provider: &str) -> Option<Result<Zeroizing<String>, KeyError>> {
        let state = self.state.load();
        let record = state.snapshot.get(project_id, provider)?;
        let cipher = state.keyring.as_ref()?.cached(&record.sealed.salt, record.sealed.iterations)?;
        Some(open_with(&cipher, &record.sealed, project_id, provider).map_err(KeyError::from))
    }

    /// Derives the cipher of every record not cached yet, so that the first request of each
    /// project does not wait for PBKDF2. Blocking: run it on a blocking thread.
    pub fn warm_up(&self) -> usize {
        let state = self.state.load_full();
        let Some(keyring) = state.keyring.as_ref() else { return 0 };
        let mut derived = 0;
        for record in state.snapshot.iter() {
            if check_parameters(&record.sealed).is_err() || keyring.cached(&record.sealed.salt, record.sealed.iterations).is_some() {
                continue;
            }
            keyring.derive(&record.sealed.salt, record.sealed.iterations);
            derived += 1;
        }
        derived
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::crypto::{last_four, seal};

    fn record(master: &MasterSecret, project: &str, provider: &str, key: &str) -> ProviderKeyRecord {
        ProviderKeyRecord {
            project_id: project.into(),
            provider: provider.into(),
            sealed: seal(master, project, provider, key),
            key_version: 1,
            last_four: last_four(key),
            created_at_ms: 0,
            rotated_at_ms: None,
        }
    }

    #[tokio::test]
    async fn resolves_and_caches() {
        let master = MasterSecret::new(b"vault-test-master-secret-0001".to_vec()).unwrap();
        let vault = Vault::new(Some(master.clone()));
        vault.replace_snapshot(RecordSnapshot::new(1, vec![record(&master, "p1", "openai", "sk-project-one")]));
        assert!(vault.resolve_cached("p1", "openai").is_none(), "nothing is derived before the first use");
        assert_eq!(vault.resolve("p1", "openai").await.unwrap().unwrap().as_str(), "sk-project-one");
        assert_eq!(vault.resolve_cached("p1", "openai").unwrap().unwrap().as_str(), "sk-project-one");
        assert_eq!(vault.resolve("p1", "other").await.unwrap(), None);
        assert_eq!(vault.resolve("p2", "openai").await.unwrap(), None);
    }

    #[tokio::test]
    async fn wrong_master_is_error_not_none() {
        let master = MasterSecret::new(b"vault-test-master-secret-0001".to_vec()).unwrap();
        let vault = Vault::new(Some(MasterSecret::new(b"a-different-master-secret-02".to_vec()).unwrap()));
        vault.replace_snapshot(RecordSnapshot::new(1, vec![record(&master, "p1", "openai", "sk-project-one")]));
        assert_eq!(vault.resolve("p1", "openai").await.unwrap_err(), KeyError::Crypto(CryptoError::Authentication));

        vault.set_master(None);
        assert_eq!(vault.resolve("p1", "openai").await.unwrap_err(), KeyError::NoMasterSecret);
    }

    #[test]
    fn warm_up_derives_once() {
        let master = MasterSecret::new(b"vault-test-master-secret-0001".to_vec()).unwrap();
        let vault = Vault::new(Some(master.clone()));
        vault.replace_snapshot(RecordSnapshot::new(1, vec![record(&master, "p1", "a", "k1")]));
        assert_eq!(vault.warm_up(), 1);
        assert_eq!(vault.warm_up(), 0);
        assert_eq!(vault.resolve_cached("p1", "a").unwrap().unwrap().as_str(), "k1");
    }
}
