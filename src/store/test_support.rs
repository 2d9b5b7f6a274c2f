//! Test helpers: a migrated SQLite store in a temporary directory, a PostgreSQL store in a
//! schema of its own, and sample usage events.
//!
//! The PostgreSQL server is `WATCHLLM_TEST_POSTGRES_URL` when set, and otherwise the first of
//! `postgres://postgres@127.0.0.1:5432/test` and `postgres://root@127.0.0.1:5432/test` that
//! accepts a connection. Without a server the PostgreSQL tests print a notice and pass, unless
//! the variable is set, in which case they fail.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::Path;

use futures::FutureExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

use super::Store;
use crate::accounting::UsageEvent;

const POSTGRES_URL_VARIABLE: &str = "WATCHLLM_TEST_POSTGRES_URL";
const DEFAULT_POSTGRES_URLS: [&str; 2] = [
    "postgres://postgres@127.0.0.1:5432/test",
    "postgres://root@127.0.0.1:5432/test",
];

/// Opens and migrates `test.db` in `dir`.
pub(crate) async fn sqlite_store(dir: &Path) -> Store {
    let url = format!("sqlite://{}", dir.join("test.db").display());
    let store = Store::connect(&url)
        .await
        .expect("SQLite store should open");
    store.migrate().await.expect("SQLite migrations should run");
    store
}

/// Runs `body` with a migrated store whose tables live in a new schema, then drops the schema,
/// also when `body` panics.
pub(crate) async fn with_postgres_store<F, Fut>(body: F)
where
    F: FnOnce(Store) -> Fut,
    Fut: Future<Output = ()>,
{
    let Some((admin, base_url)) = connect_admin().await else {
        return;
    };

    let schema = format!("wl_test_{:016x}", rand::random::<u64>());
    admin
        .execute(format!("CREATE SCHEMA {schema}").as_str())
        .await
        .expect("test schema should be created");

    let separator = if base_url.contains('?') { '&' } else { '?' };
    let url = format!("{base_url}{separator}options=-c%20search_path%3D{schema}");
    let outcome = AssertUnwindSafe(async {
        let store = Store::connect(&url)
            .await
            .expect("PostgreSQL store should connect");
        store
            .migrate()
            .await
            .expect("PostgreSQL migrations should run");
        body(store.clone()).await;
        store.close().await;
    })
    .catch_unwind()
    .await;

    let dropped = admin
        .execute(format!("DROP SCHEMA {schema} CASCADE").as_str())
        .await;
    admin.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    dropped.expect("test schema should be dropped");
}

/// Connects to the test server, or returns None when there is none and none was configured.
async fn connect_admin() -> Option<(PgPool, String)> {
    if let Ok(url) = std::env::var(POSTGRES_URL_VARIABLE) {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap_or_else(|error| panic!("{POSTGRES_URL_VARIABLE} should connect: {error}"));
        return Some((pool, url));
    }

    for url in DEFAULT_POSTGRES_URLS {
        if let Ok(pool) = PgPoolOptions::new().max_connections(1).connect(url).await {
            return Some((pool, url.to_string()));
        }
    }
    eprintln!(
        "skipping PostgreSQL test: no server at {DEFAULT_POSTGRES_URLS:?}; \
         set {POSTGRES_URL_VARIABLE} to run it"
    );
    None
}

/// Returns an event in which every field differs from its default and from other `n`.
pub(crate) fn sample_event(n: i64) -> UsageEvent {
    UsageEvent {
        id: uuid::Uuid::new_v4().to_string(),
        created_at_ms: 1_750_000_000_000 + n,
        project_id: format!("proj_{:016x}", n % 3),
        key_id: format!("key_{n}"),
        endpoint: "chat.completions".to_string(),
        model: "gpt-4o-mini".to_string(),
        provider: "openai".to_string(),
        upstream_model: "gpt-4o-mini-2024-07-18".to_string(),
        status: 200 + (n % 300) as u16,
        stream: n % 2 == 0,
        prompt_tokens: 100 + n,
        completion_tokens: 50 + n,
        cached_tokens: 10 + n,
        reasoning_tokens: 5 + n,
        total_tokens: 150 + 2 * n,
        tokens_estimated: n % 2 == 1,
        cost_usd: 0.000_123_456_789 * (n + 1) as f64,
        potential_cost_usd: 0.000_987_654_321 * (n + 1) as f64,
        cache_status: "miss".to_string(),
        latency_ms: 1234 + n,
        ttfb_ms: if n % 2 == 0 { Some(321 + n) } else { None },
        error_type: if n % 2 == 0 {
            None
        } else {
            Some("upstream_timeout".to_string())
        },
        key_source: if n % 2 == 0 { "global".to_string() } else { "byok".to_string() },
        variant: if n % 3 == 0 { Some(format!("variant-{n}")) } else { None },
        cache_similarity: if n % 2 == 0 { None } else { Some(0.9 + n as f64 / 1e6) },
    }
}

/// Waits up to 10 s until the store contains `expected` usage events, and fails otherwise.
pub(crate) async fn wait_for_usage_count(store: &Store, expected: i64) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let count = store
            .count_usage_events()
            .await
            .expect("count usage events");
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "store contains {count} usage events after 10 s, expected {expected}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Returns the stored usage events sorted by id, for comparing sets of events.
pub(crate) async fn stored_events_by_id(store: &Store) -> Vec<UsageEvent> {
    let mut events = store
        .list_usage_events(None, i64::MAX)
        .await
        .expect("list usage events");
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events
}

/// Returns the events sorted by id.
pub(crate) fn sorted_by_id(events: &[UsageEvent]) -> Vec<UsageEvent> {
    let mut events = events.to_vec();
    events.sort_by(|a, b| a.id.cmp(&b.id));
    events
}

/// Asserts that events read back after a trip through the journal's JSON are exactly the
/// recorded ones, costs included (serde_json's `float_roundtrip` feature keeps them exact).
pub(crate) fn assert_same_events_after_json(actual: &[UsageEvent], expected: &[UsageEvent]) {
    assert_eq!(actual.len(), expected.len(), "number of events");
    for (actual, expected) in actual.iter().zip(expected) {
        assert_eq!(actual, expected);
    }
}
