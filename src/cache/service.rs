//! The background service that closes the cache at shutdown: it saves the vector index and lets
//! the store finish its disk writes.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::info;

use super::ResponseCache;

pub struct CacheService {
    cache: Arc<ResponseCache>,
}

impl CacheService {
    pub fn new(cache: Arc<ResponseCache>) -> Self {
        CacheService { cache }
    }
}

#[async_trait]
impl BackgroundService for CacheService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        self.cache.close().await;
        info!("response cache closed");
    }
}
