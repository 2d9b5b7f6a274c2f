//! Store tests. Each check runs against SQLite in a temporary directory and against PostgreSQL
//! in a schema of its own (see `test_support`).

use super::test_support::{sample_event, sqlite_store, with_postgres_store};
use super::{with_pool, NewKey, Store};
use crate::accounting::UsageEvent;

/// Generates one `#[tokio::test]` per dialect for each check function.
macro_rules! dialect_tests {
    ($($check:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $check() {
                    let dir = tempfile::tempdir().expect("temporary directory");
                    let store = super::sqlite_store(dir.path()).await;
                    super::$check(&store).await;
                    store.close().await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $check() {
                    super::with_postgres_store(|store| async move { super::$check(&store).await })
                        .await;
                }
            )*
        }
    };
}

dialect_tests!(
    migrate_twice,
    projects_crud,
    keys_and_version,
    usage_round_trip,
    usage_duplicates_skipped,
    usage_large_batch,
);

fn new_key(id: &str, project_id: &str, hash: &str) -> NewKey {
    NewKey {
        id: id.to_string(),
        project_id: project_id.to_string(),
        key_hash: hash.to_string(),
        prefix: format!("wl-{id}"),
    }
}

async fn migrate_twice(store: &Store) {
    store
        .migrate()
        .await
        .expect("second migration run should be a no-op");
    store.ping().await.expect("ping");

    let plans: Vec<String> = with_pool!(store, pool => {
        sqlx::query_scalar("SELECT name FROM plans WHERE monthly_requests IS NULL \
                             AND monthly_tokens IS NULL AND monthly_cost_usd IS NULL ORDER BY name")
            .fetch_all(pool)
            .await
            .expect("plans query")
    });
    assert_eq!(plans, ["enterprise", "free", "pro"]);
    assert_eq!(store.keys_version().await.expect("keys version"), 0);
}

async fn projects_crud(store: &Store) {
    let alpha = store
        .create_project("alpha", "free")
        .await
        .expect("create alpha");
    assert!(alpha.id.starts_with("proj_"));
    assert_eq!(alpha.id.len(), "proj_".len() + 16);
    assert!(alpha.id["proj_".len()..]
        .chars()
        .all(|c| c.is_ascii_hexdigit()));
    assert_eq!(alpha.plan, "free");
    let beta = store
        .create_project("beta", "pro")
        .await
        .expect("create beta");
    assert_ne!(alpha.id, beta.id);

    let duplicate = store.create_project("alpha", "pro").await;
    let message = duplicate
        .expect_err("duplicate name should fail")
        .to_string();
    assert_eq!(message, "project alpha already exists");
    assert!(store.create_project("", "free").await.is_err());

    let names: Vec<String> = store
        .list_projects()
        .await
        .expect("list projects")
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["alpha", "beta"]);

    let by_name = store.find_project("beta").await.expect("find by name");
    assert_eq!(by_name.map(|p| p.id), Some(beta.id.clone()));
    let by_id = store.find_project(&alpha.id).await.expect("find by id");
    let by_id = by_id.expect("alpha should be found by id");
    assert_eq!(by_id.name, "alpha");
    assert_eq!(by_id.created_at_ms, alpha.created_at_ms);
    assert!(store
        .find_project("gamma")
        .await
        .expect("find missing")
        .is_none());
}

async fn keys_and_version(store: &Store) {
    let project = store
        .create_project("keys", "pro")
        .await
        .expect("create project");
    let other = store
        .create_project("other", "free")
        .await
        .expect("create project");
    assert_eq!(store.keys_version().await.expect("version"), 0);

    store
        .insert_key(&new_key("key_a", &project.id, "aa"))
        .await
        .expect("insert key_a");
    assert_eq!(store.keys_version().await.expect("version"), 1);
    store
        .insert_key(&new_key("key_b", &project.id, "bb"))
        .await
        .expect("insert key_b");
    store
        .insert_key(&new_key("key_c", &other.id, "cc"))
        .await
        .expect("insert key_c");
    assert_eq!(store.keys_version().await.expect("version"), 3);

    let same_hash = store.insert_key(&new_key("key_d", &project.id, "aa")).await;
    assert!(
        same_hash.is_err(),
        "a second key with the same hash should fail"
    );
    let no_project = store
        .insert_key(&new_key("key_e", "proj_missing", "ee"))
        .await;
    let message = no_project
        .expect_err("a key of a missing project should fail")
        .to_string();
    assert!(
        message.contains("project proj_missing not found"),
        "{message}"
    );
    assert_eq!(
        store.keys_version().await.expect("version"),
        3,
        "failed inserts bump nothing"
    );

    let active = store.load_active_keys().await.expect("load active keys");
    let ids: Vec<&str> = active.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(ids, ["key_a", "key_b", "key_c"]);
    assert_eq!(active[0].key_hash, "aa");
    assert_eq!(active[0].project_id, project.id);
    assert_eq!(active[0].project_name, "keys");
    assert_eq!(active[0].plan, "pro");
    assert_eq!(active[2].project_name, "other");

    assert!(store.revoke_key("key_a").await.expect("revoke key_a"));
    assert_eq!(store.keys_version().await.expect("version"), 4);
    assert!(!store.revoke_key("key_a").await.expect("revoke key_a again"));
    assert!(!store
        .revoke_key("key_missing")
        .await
        .expect("revoke missing key"));
    assert_eq!(
        store.keys_version().await.expect("version"),
        4,
        "no-op revokes bump nothing"
    );

    let active = store.load_active_keys().await.expect("load active keys");
    let ids: Vec<&str> = active.iter().map(|k| k.key_id.as_str()).collect();
    assert_eq!(ids, ["key_b", "key_c"]);

    let listed = store.list_keys(&project.id).await.expect("list keys");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, "key_a");
    assert_eq!(listed[0].prefix, "wl-key_a");
    assert!(listed[0].revoked_at_ms.is_some());
    assert!(listed[0].revoked_at_ms >= Some(listed[0].created_at_ms));
    assert_eq!(listed[1].id, "key_b");
    assert!(listed[1].revoked_at_ms.is_none());
    assert!(store
        .list_keys("proj_missing")
        .await
        .expect("list keys")
        .is_empty());
}

async fn usage_round_trip(store: &Store) {
    let events: Vec<UsageEvent> = (0..6).map(sample_event).collect();
    assert_eq!(store.insert_usage_events(&events).await.expect("insert"), 6);
    assert_eq!(
        store
            .insert_usage_events(&[])
            .await
            .expect("insert nothing"),
        0
    );
    assert_eq!(store.count_usage_events().await.expect("count"), 6);

    let newest_first: Vec<UsageEvent> = events.iter().rev().cloned().collect();
    let read = store.list_usage_events(None, 100).await.expect("list all");
    assert_eq!(read.len(), newest_first.len());
    for (read, expected) in read.iter().zip(&newest_first) {
        assert_eq!(
            read, expected,
            "event read back should equal the event inserted"
        );
    }

    let limited = store.list_usage_events(None, 2).await.expect("list two");
    assert_eq!(limited, newest_first[..2]);

    let project_id = events[1].project_id.clone();
    let expected: Vec<UsageEvent> = newest_first
        .iter()
        .filter(|e| e.project_id == project_id)
        .cloned()
        .collect();
    let read = store
        .list_usage_events(Some(&project_id), 100)
        .await
        .expect("list project");
    assert_eq!(read, expected);
    assert!(store
        .list_usage_events(Some("proj_missing"), 10)
        .await
        .expect("list")
        .is_empty());
    assert!(
        store.list_usage_events(None, -1).await.is_err(),
        "negative limit should fail"
    );
}

async fn usage_duplicates_skipped(store: &Store) {
    let events: Vec<UsageEvent> = (0..4).map(sample_event).collect();
    assert_eq!(store.insert_usage_events(&events).await.expect("insert"), 4);
    assert_eq!(
        store
            .insert_usage_events(&events)
            .await
            .expect("insert again"),
        0
    );

    let mut changed = events[0].clone();
    changed.cost_usd = 99.0;
    let mixed = vec![changed, sample_event(10), sample_event(11)];
    assert_eq!(
        store
            .insert_usage_events(&mixed)
            .await
            .expect("insert mixed"),
        2
    );

    let repeated = sample_event(20);
    let within_batch = vec![repeated.clone(), repeated.clone()];
    assert_eq!(
        store
            .insert_usage_events(&within_batch)
            .await
            .expect("insert repeated"),
        1
    );
    assert_eq!(store.count_usage_events().await.expect("count"), 7);

    let first = store.list_usage_events(None, 100).await.expect("list");
    let stored = first
        .iter()
        .find(|e| e.id == events[0].id)
        .expect("first event stored");
    assert_eq!(
        stored.cost_usd, events[0].cost_usd,
        "a duplicate must not overwrite the row"
    );
}

/// More rows than fit in one statement in either dialect, so the insert takes several chunks.
async fn usage_large_batch(store: &Store) {
    let events: Vec<UsageEvent> = (0..3_500).map(sample_event).collect();
    assert_eq!(
        store.insert_usage_events(&events).await.expect("insert"),
        3_500
    );
    assert_eq!(store.count_usage_events().await.expect("count"), 3_500);
    assert_eq!(
        store
            .insert_usage_events(&events)
            .await
            .expect("insert again"),
        0
    );
}

#[tokio::test]
async fn connect_rejects_unknown_scheme() {
    let error = Store::connect("mysql://user:secret@localhost/db").await;
    let message = error.expect_err("mysql URL should fail").to_string();
    assert!(message.contains("unsupported database URL"), "{message}");
    assert!(
        !message.contains("secret"),
        "the password must not appear: {message}"
    );
}

#[test]
fn redact_url_hides_passwords() {
    let redacted = super::redact_url("postgres://user:secret@db:5432/app?sslmode=require");
    assert_eq!(
        redacted,
        "postgres://user:REDACTED@db:5432/app?sslmode=require"
    );
    let redacted = super::redact_url("postgres://db/app?user=gw&password=secret");
    assert_eq!(redacted, "postgres://db/app?user=gw&password=REDACTED");
    assert_eq!(super::redact_url("not a url"), "(unparsable URL)");
}

#[tokio::test]
async fn sqlite_connect_settings() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("nested").join("gateway.db");
    let store = Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("connect");
    assert_eq!(store.kind(), "sqlite");
    assert!(
        path.exists(),
        "the file and its directory should be created"
    );

    let Store::Sqlite(pool) = &store else {
        panic!("a sqlite:// URL should give a SQLite store");
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .expect("mode");
    assert_eq!(mode, "wal");
    let foreign_keys: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .expect("foreign_keys");
    assert_eq!(foreign_keys, 1);
    let busy_timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(pool)
        .await
        .expect("busy_timeout");
    assert_eq!(busy_timeout, 5_000);

    store.close().await;
    assert!(store.ping().await.is_err(), "a closed store should fail");
}

#[test]
fn statement_chunks_cover_all_rows() {
    for rows in 0..=300 {
        let chunks: Vec<usize> = super::statement_chunks(rows).collect();
        assert_eq!(chunks.iter().sum::<usize>(), rows, "{rows} rows: {chunks:?}");
        assert!(chunks.iter().all(|length| super::STATEMENT_ROWS.contains(length)), "{rows} rows: {chunks:?}");
        assert!(chunks.windows(2).all(|pair| pair[0] >= pair[1]), "largest first: {chunks:?}");
        assert!(chunks.len() <= rows / 64 + 6, "{rows} rows take {} statements", chunks.len());
    }
}

/// Returns the number of statements cached by the connection that caches the most, after
/// acquiring every open connection at once so that the one that ran the inserts is among them.
async fn max_cached_statements(pool: &sqlx::SqlitePool) -> usize {
    use sqlx::Connection;

    let open = pool.size();
    assert!(open > 0, "the inserts opened a connection");
    let mut connections = Vec::new();
    for _ in 0..open {
        connections.push(pool.acquire().await.expect("acquire an open connection"));
    }
    connections.iter_mut().map(|connection| connection.cached_statements_size()).max().unwrap_or(0)
}

#[tokio::test]
async fn batch_inserts_cache_bounded_statements() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = sqlite_store(dir.path()).await;
    let Store::Sqlite(pool) = &store else { unreachable!("sqlite_store opens SQLite") };
    // Batches of every length run only the fixed chunk lengths, so the cached statements stay
    // within one per length and table (usage events, hourly and daily rollups) plus the
    // transaction's BEGIN and COMMIT, however many batch lengths there are.
    let mut n = 0;
    let mut insert = async |lengths: Vec<usize>| {
        for length in lengths {
            let events: Vec<UsageEvent> = (0..length).map(|_| { n += 1; sample_event(n) }).collect();
            assert_eq!(store.insert_usage_events(&events).await.expect("insert batch"), length as u64);
        }
    };
    let bound = 3 * super::STATEMENT_ROWS.len() + 2;
    insert((1..=40).chain([200]).collect()).await;
    let cached = max_cached_statements(pool).await;
    assert!(cached <= bound, "a connection caches {cached} statements after 41 batch lengths");
    insert((41..=120).collect()).await;
    let cached = max_cached_statements(pool).await;
    assert!(cached <= bound, "a connection caches {cached} statements after 121 batch lengths");
    let total = (1..=120).sum::<i64>() + 200;
    assert_eq!(store.count_usage_events().await.expect("count"), total);
}
