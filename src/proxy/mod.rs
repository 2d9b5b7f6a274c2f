//! The Pingora `ProxyHttp` implementation. Each hook reads the request context and calls plain
//! functions from the other modules; the order of the hooks is described in docs/ARCHITECTURE.md.

pub mod body;
pub mod cache;
pub mod ctx;
pub mod hooks;
pub mod limits;
pub mod request;
pub mod respond;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::accounting::writer::UsageSink;
use crate::auth::SharedKeys;
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;

pub use ctx::RequestCtx;

/// The gateway service: shared state read by every request.
pub struct Gateway {
    pub config: Arc<ArcSwap<RuntimeConfig>>,
    pub keys: SharedKeys,
    pub usage: UsageSink,
    pub metrics: Arc<Metrics>,
    /// Requests in flight, which a graceful shutdown waits for.
    pub in_flight: Arc<AtomicUsize>,
    /// Quota, rate and address counters.
    pub limits: Arc<crate::limits::Limiter>,
    pub alerts: crate::alerts::AlertSink,
    /// The response cache; `None` when `cache.enabled` is off.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Provider health and the projects' own provider keys.
    pub routing: crate::routing::Routing,
}
