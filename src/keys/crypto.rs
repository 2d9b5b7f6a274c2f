//! Encryption of provider keys at rest: AES-256-GCM under a key derived from the master secret
//! with PBKDF2-HMAC-SHA256.
//!
//! Every encryption draws a fresh random 96-bit nonce and every record has its own random salt,
//! so the same key encrypted twice gives different ciphertexts. The project id and the provider
//! name are bound in as associated data: a ciphertext copied to another project or provider
//! fails authentication instead of decrypting.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use zeroize::Zeroizing;

use super::master::MasterSecret;

/// PBKDF2 iterations for new records; OWASP's 2023 recommendation for PBKDF2-HMAC-SHA256.
pub const PBKDF2_ITERATIONS: u32 = 600_000;
/// Minimum iterations accepted when a record is read, so a tampered row cannot weaken the KDF.
pub const MIN_PBKDF2_ITERATIONS: u32 = 600_000;
pub const SALT_LEN: usize = 16;
pub const NONCE_LEN: usize = 12;

/// An encrypted provider key as stored, without its plaintext.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub ciphertext: Vec<u8>,
    pub nonce: Vec<u8>,
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedKey({} bytes, {} iterations)", self.ciphertext.len(), self.iterations)
    }
}

/// Failure to open a sealed key. No variant carries key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("authentication failed: the master secret differs from the one that encrypted the key, or the record was changed")]
    Authentication,
    #[error("the record is malformed: {0}")]
    Malformed(&'static str),
    #[error("the decrypted key is not valid UTF-8")]
    NotUtf8,
}

/// Derives the AES-256 key for one record's salt. This runs PBKDF2 in full and takes about a
/// quarter of a second in a release build, so callers cache the result.
pub fn derive_cipher(master: &MasterSecret, salt: &[u8], iterations: u32) -> Aes256Gcm {
    let mut key = Zeroizing::new([0u8; 32]);
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(master.expose(), salt, iterations, key.as_mut());
    Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key.as_ref()))
}

/// Returns the associated data for a record: both names with their lengths, so that no two
/// (project, provider) pairs give the same bytes.
pub fn associated_data(project_id: &str, provider: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(40 + project_id.len() + provider.len());
    data.extend_from_slice(b"watchllm provider key v1\0");
    data.extend_from_slice(&(project_id.len() as u64).to_be_bytes());
    data.extend_from_slice(project_id.as_bytes());
    data.extend_from_slice(&(provider.len() as u64).to_be_bytes());
    data.extend_from_slice(provider.as_bytes());
    data
}

/// Returns a new random salt.
pub fn new_salt() -> Vec<u8> {
    let mut salt = vec![0u8; SALT_LEN];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    salt
}

/// Encrypts `plaintext` with an already derived cipher and a fresh random nonce.
pub fn seal_with(cipher: &Aes256Gcm, salt: Vec<u8>, iterations: u32, project_id: &str, provider: &str, plaintext: &str) -> SealedKey {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let aad = associated_data(project_id, provider);
    // NOTE: aes-gcm 0.10 fails encryption only for a plaintext above 64 GiB, far beyond any key.
    let ciphertext = cipher
        .encrypt(&nonce, Payload { msg: plaintext.as_bytes(), aad: &aad })
        .unwrap_or_default();
    SealedKey { ciphertext, nonce: nonce.to_vec(), salt, iterations }
}

/// Encrypts `plaintext` under a new salt, deriving the key (slow: one full PBKDF2 run).
pub fn seal(master: &MasterSecret, project_id: &str, provider: &str, plaintext: &str) -> SealedKey {
    let salt = new_salt();
    let cipher = derive_cipher(master, &salt, PBKDF2_ITERATIONS);
    seal_with(&cipher, salt, PBKDF2_ITERATIONS, project_id, provider, plaintext)
}

/// Decrypts a sealed key with the cipher derived for its salt.
pub fn open_with(cipher: &Aes256Gcm, sealed: &SealedKey, project_id: &str, provider: &str) -> Result<Zeroizing<String>, CryptoError> {
    if sealed.nonce.len() != NONCE_LEN {
        return Err(CryptoError::Malformed("the nonce is not 12 bytes"));
    }
    let aad = associated_data(project_id, provider);
    let plaintext = cipher
        .decrypt(Nonce::from_slice(&sealed.nonce), Payload { msg: &sealed.ciphertext, aad: &aad })
        .map_err(|_| CryptoError::Authentication)?;
    let plaintext = Zeroizing::new(plaintext);
    let text = std::str::from_utf8(&plaintext).map_err(|_| CryptoError::NotUtf8)?;
    Ok(Zeroizing::new(text.to_string()))
}

/// Decrypts a sealed key, deriving the key first (slow: one full PBKDF2 run).
pub fn open(master: &MasterSecret, sealed: &SealedKey, project_id: &str, provider: &str) -> Result<Zeroizing<String>, CryptoError> {
    check_parameters(sealed)?;
    let cipher = derive_cipher(master, &sealed.salt, sealed.iterations);
    open_with(&cipher, sealed, project_id, provider)
}

/// Rejects salts and iteration counts that this gateway would never have written.
pub fn check_parameters(sealed: &SealedKey) -> Result<(), CryptoError> {
    if sealed.salt.len() < SALT_LEN {
        return Err(CryptoError::Malformed("the salt is shorter than 16 bytes"));
    }
    if sealed.iterations < MIN_PBKDF2_ITERATIONS {
        return Err(CryptoError::Malformed("fewer PBKDF2 iterations than the minimum of 600000"));
    }
    Ok(())
}

/// Returns the last four characters of a key, for listings.
pub fn last_four(key: &str) -> String {
    let count = key.chars().count();
    key.chars().skip(count.saturating_sub(4)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master(text: &str) -> MasterSecret {
        MasterSecret::new(text.as_bytes().to_vec()).unwrap()
    }

    const KEY: &str = "sk-test-0123456789abcdefXYZW";

    #[test]
    fn round_trip() {
        let secret = master("correct horse battery staple 1234");
        let sealed = seal(&secret, "proj_a", "openai", KEY);
        assert_eq!(sealed.nonce.len(), NONCE_LEN);
        assert_eq!(sealed.salt.len(), SALT_LEN);
        assert_eq!(sealed.iterations, PBKDF2_ITERATIONS);
        assert_eq!(open(&secret, &sealed, "proj_a", "openai").unwrap().as_str(), KEY);
        assert!(!sealed.ciphertext.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
    }

    #[test]
    fn same_key_twice_differs() {
        let secret = master("correct horse battery staple 1234");
        let cipher = derive_cipher(&secret, &[7u8; SALT_LEN], PBKDF2_ITERATIONS);
        let first = seal_with(&cipher, vec![7u8; SALT_LEN], PBKDF2_ITERATIONS, "p", "q", KEY);
        let second = seal_with(&cipher, vec![7u8; SALT_LEN], PBKDF2_ITERATIONS, "p", "q", KEY);
        assert_ne!(first.nonce, second.nonce);
        assert_ne!(first.ciphertext, second.ciphertext);
        let fresh = seal(&secret, "p", "q", KEY);
        assert_ne!(fresh.salt, first.salt);
    }

    #[test]
    fn tampering_fails_authentication() {
        let secret = master("correct horse battery staple 1234");
        let sealed = seal(&secret, "proj_a", "openai", KEY);
        let cipher = derive_cipher(&secret, &sealed.salt, sealed.iterations);
        for index in 0..sealed.ciphertext.len() {
            let mut changed = sealed.clone();
            changed.ciphertext[index] ^= 0x01;
            assert_eq!(open_with(&cipher, &changed, "proj_a", "openai").unwrap_err(), CryptoError::Authentication, "byte {index}");
        }
        let mut changed_nonce = sealed.clone();
        changed_nonce.nonce[0] ^= 0x80;
        assert_eq!(open_with(&cipher, &changed_nonce, "proj_a", "openai").unwrap_err(), CryptoError::Authentication);
        let mut changed_salt = sealed.clone();
        changed_salt.salt[3] ^= 0x01;
        assert_eq!(open(&secret, &changed_salt, "proj_a", "openai").unwrap_err(), CryptoError::Authentication);
    }

    #[test]
    fn other_project_or_provider_fails() {
        let secret = master("correct horse battery staple 1234");
        let sealed = seal(&secret, "proj_a", "openai", KEY);
        let cipher = derive_cipher(&secret, &sealed.salt, sealed.iterations);
        assert_eq!(open_with(&cipher, &sealed, "proj_b", "openai").unwrap_err(), CryptoError::Authentication);
        assert_eq!(open_with(&cipher, &sealed, "proj_a", "openrouter").unwrap_err(), CryptoError::Authentication);
        // Moving characters between the two names must not give the same associated data.
        assert_ne!(associated_data("ab", "c"), associated_data("a", "bc"));
    }

    #[test]
    fn wrong_master_secret_fails() {
        let sealed = seal(&master("correct horse battery staple 1234"), "p", "q", KEY);
        assert_eq!(open(&master("another master secret of length"), &sealed, "p", "q").unwrap_err(), CryptoError::Authentication);
    }

    #[test]
    fn weak_parameters_rejected() {
        let secret = master("correct horse battery staple 1234");
        let mut sealed = seal(&secret, "p", "q", KEY);
        sealed.iterations = 1000;
        assert!(matches!(open(&secret, &sealed, "p", "q"), Err(CryptoError::Malformed(_))));
    }

    #[test]
    fn last_four_characters() {
        assert_eq!(last_four("sk-abcdef"), "cdef");
        assert_eq!(last_four("ab"), "ab");
        assert_eq!(last_four("sk-ünï"), "-ünï");
    }
}
