//! The SQLite insert of usage events, through rusqlite on the connection that sqlx holds.
//!
//! sqlx builds a multi-row statement's arguments on the calling task and binds them on its
//! worker thread, which cost about as many instructions per event as SQLite's own insert (the
//! load benchmark's "Instructions per request"). Here one prepared single-row `INSERT` runs for
//! each event on the transaction's connection, with its values bound directly. Its change count
//! shows which events were new, so the statement needs no `RETURNING`.

// `rusqlite::Connection::from_handle` is the one `unsafe` call, and its `SAFETY:` comment is below.
#![allow(unsafe_code)]

use std::time::Duration;

use anyhow::{Context, Result};
use rusqlite::{params, Connection};
use sqlx::SqliteConnection;

use super::usage::usage_columns;
use crate::accounting::UsageEvent;

/// One event's insert. An id that is already stored is skipped, so a replayed batch is safe.
const INSERT: &str = concat!(
    "INSERT INTO usage_events (",
    usage_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
     ?19, ?20, ?21, ?22, ?23, ?24, ?25) ON CONFLICT (id) DO NOTHING"
);

/// Inserts `events` through `conn`, which should be inside a transaction, and returns the
/// events that were stored: not those whose id was stored before, and of an id that appears
/// twice in the batch, only the first.
///
/// NOTE: the rows are written synchronously on the calling thread, so the writer's insert
/// timeout cannot cut this part short. SQLite's busy timeout (5 s) still bounds the wait for the
/// write lock.
pub(super) async fn insert_new<'e>(conn: &mut SqliteConnection, events: &'e [UsageEvent]) -> Result<Vec<&'e UsageEvent>> {
    let mut locked = conn.lock_handle().await.context("failed to lock the SQLite connection")?;
    let handle = locked.as_raw_handle();
    // SAFETY: `locked` keeps sqlx's worker away from the handle until it drops, after `db` and
    // the statement below. `from_handle` borrows the handle: dropping `db` finalizes the
    // statement and leaves the connection open. The bundled SQLite is built thread-safe, and a
    // connection may move between threads as long as two never use it at once, which the lock
    // ensures.
    let db = unsafe { Connection::from_handle(handle.as_ptr()) }.context("failed to use the SQLite connection")?;
    let inserted = insert_rows(&db, events).context("failed to insert usage events")?;
    drop(db);
    drop(locked);
    Ok(inserted)
}

/// Rows inserted between two short sleeps of the writer.
const ROWS_BETWEEN_PAUSES: usize = 64;
/// How long the writer sleeps between two groups of rows.
const PAUSE: Duration = Duration::from_micros(50);

fn insert_rows<'e>(db: &Connection, events: &'e [UsageEvent]) -> rusqlite::Result<Vec<&'e UsageEvent>> {
    let mut statement = db.prepare(INSERT)?;
    let mut inserted = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        // A request thread that shares the core runs during the sleep instead of waiting for the
        // whole batch, and the writer's wake-up gets the core back. With `yield_now`, a busy
        // request thread kept the core until the next scheduler tick and the writer fell behind.
        if index > 0 && index % ROWS_BETWEEN_PAUSES == 0 {
            std::thread::sleep(PAUSE);
        }
        let changed = statement.execute(params![
            event.id,
            event.created_at_ms,
            event.project_id,
            event.key_id,
            event.endpoint,
            event.model,
            event.provider,
            event.upstream_model,
            event.status,
            event.stream,
            event.prompt_tokens,
            event.completion_tokens,
            event.cached_tokens,
            event.reasoning_tokens,
            event.total_tokens,
            event.tokens_estimated,
            event.cost_usd,
            event.potential_cost_usd,
            event.cache_status,
            event.latency_ms,
            event.ttfb_ms,
            event.error_type,
            event.key_source,
            event.variant,
            event.cache_similarity,
        ])?;
        if changed == 1 {
            inserted.push(event);
        }
    }
    Ok(inserted)
}
