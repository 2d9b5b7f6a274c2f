//! Provider keys that projects bring (BYOK): their encryption at rest, the master secret, the
//! `provider_keys` table, and the in-memory vault the proxy decrypts them from.

pub mod crypto;
pub mod manage;
pub mod master;
pub mod store;
pub mod vault;

pub use master::{MasterSecret, MasterSecretSource};
pub use vault::{KeyError, RecordSnapshot, Vault};
