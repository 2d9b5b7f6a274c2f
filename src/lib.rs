//! WatchLLM: an LLM API gateway on Pingora.
//!
//! Each folder is one concern of the gateway; `proxy` holds the thin `ProxyHttp` hooks that call
//! into the others. docs/ARCHITECTURE.md walks a request through them.

// `server::scheduling` is the one module allowed an `unsafe` block: a raw `sched_setattr` call.
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
