//! Configuration: the YAML file as written, its validation, and the runtime form the proxy reads.
//!
//! `raw` mirrors the file with serde (`deny_unknown_fields`, a default for every field);
//! `load` reads it, applies the environment overrides and reports every problem with its path;
//! `runtime` is the validated state that the gateway swaps atomically.

pub mod load;
pub mod pricing;
pub mod raw;
pub mod reload;
pub mod runtime;

pub use load::{load_config, modified, ConfigError, FileStamps, LoadedConfig};
pub use pricing::{ModelPrice, PricingTable};
pub use raw::RawConfig;
pub use runtime::{ModelRoute, Provider, RuntimeConfig};
