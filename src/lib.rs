//! WatchLLM: an LLM API gateway on Pingora.
//!
//! Each folder is one concern of the gateway; `proxy` holds the thin `ProxyHttp` hooks that call
//! into the others. docs/ARCHITECTURE.md walks a request through them.

// Four modules are allowed `unsafe` blocks. `server::scheduling` makes raw `sched_setattr` calls,
// `embed::kernels::bf16` uses AVX-512 loads and stores, and `embed::kernels::amx` AMX tile
// instructions and the `arch_prctl` call that permits them. `store::sqlite_usage` runs rusqlite
// on the handle of a connection that sqlx holds. Each block has a `SAFETY:` comment.
#![deny(unsafe_code)]

pub mod accounting;
pub mod admin;
pub mod alerts;
pub mod analytics;
pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod embed;
pub mod error;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod mock;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod store;
