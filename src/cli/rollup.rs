//! `watchllm rollup rebuild`: recomputes the usage rollups of a date range from the raw events.

use anyhow::{bail, Context};
use serde_json::json;

use super::{ConfigArg, RollupAction};
use crate::analytics::month::parse_date;
use crate::analytics::rollup::DAY_MS;
use crate::config::load_config;
use crate::store::Store;

pub fn run(action: RollupAction) -> anyhow::Result<()> {
    let RollupAction::Rebuild { from, to, config } = action;
    let Some(from_ms) = parse_date(&from) else {
        bail!("invalid --from {from:?}: expected a date as YYYY-MM-DD (UTC)");
    };
    let Some(to_day) = parse_date(&to) else {
        bail!("invalid --to {to:?}: expected a date as YYYY-MM-DD (UTC)");
    };
    if to_day < from_ms {
        bail!("invalid range: --to {to} is before --from {from}");
    }
    let to_ms = to_day + DAY_MS;

    let database_url = database_url(&config)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let events = runtime.block_on(async {
        let store = Store::connect(&database_url).await.context("failed to connect to the database")?;
        store.migrate().await.context("failed to apply database migrations")?;
        let result = store.rebuild_rollups(from_ms, to_ms).await;
        store.close().await;
        result
    })?;
    eprintln!("rebuilt the hourly and daily rollups of {from} to {to} (UTC days) from {events} usage events");
    println!("{}", json!({"from": from, "to": to, "events": events}));
    Ok(())
}

/// Returns the configured database URL; for SQLite, creates the state directory first.
fn database_url(arg: &ConfigArg) -> anyhow::Result<String> {
    let loaded = load_config(&arg.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let runtime = loaded.runtime;
    if runtime.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&runtime.state_dir)
            .with_context(|| format!("failed to create the state directory {}", runtime.state_dir.display()))?;
    }
    Ok(runtime.database_url.clone())
}
