//! `watchllm cache`: a project's response cache settings in the store, which win over its entry
//! in the config file. Running gateways pick a change up within about one second.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};

use super::manage::{load, print_json_line, with_store};
use super::ConfigArg;
use crate::cache::overrides::{describe, CacheOverride, CacheOverridePatch};
use crate::store::{Project, Store};

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Print a project's stored override, its settings from the config and the settings in
    /// force, as JSON.
    Show {
        /// Project name or id.
        project: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Store overrides for a project. Options left out keep their stored value. Prints the
    /// result as `show` does.
    Set {
        /// Project name or id.
        project: String,
        /// Turn the cache on or off for the project (true or false).
        #[arg(long)]
        enabled: Option<bool>,
        /// Turn the semantic cache on or off for the project (true or false).
        #[arg(long)]
        semantic: Option<bool>,
        /// Minimum cosine similarity of a semantic hit, greater than 0 and at most 1.
        #[arg(long)]
        threshold: Option<f64>,
        /// Lifetime of new entries, in seconds (at least 1).
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Remove stored overrides of a project, so the config's values apply again. Without a
    /// field, every override of the project is removed.
    Clear {
        /// Project name or id.
        project: String,
        /// Fields to clear.
        #[arg(value_enum)]
        fields: Vec<CacheField>,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheField {
    Enabled,
    Semantic,
    Threshold,
    #[value(name = "ttl_seconds")]
    TtlSeconds,
}

/// Runs a `cache` command.
pub fn run(action: CacheAction) -> anyhow::Result<()> {
    match action {
        CacheAction::Show { project, config } => {
            let settings = load(&config)?.runtime.cache.clone();
            with_store(&config, |store| async move {
                let found = find(&store, &project).await?;
                let stored = store.cache_override(&found.id).await?;
                print_json_line(&describe(&settings, &found, stored.as_ref()))
            })
        }
        CacheAction::Set { project, enabled, semantic, threshold, ttl_seconds, config } => {
            let patch = CacheOverridePatch { enabled: enabled.map(Some), semantic: semantic.map(Some), threshold: threshold.map(Some), ttl_seconds: ttl_seconds.map(Some) };
            if patch == CacheOverridePatch::default() {
                bail!("nothing to set: give at least one of --enabled, --semantic, --threshold and --ttl-seconds");
            }
            // Checked before the store is opened, so that an invalid value changes nothing.
            CacheOverride { enabled, semantic, threshold, ttl_seconds }.validate()?;
            update(&config, project, patch)
        }
        CacheAction::Clear { project, fields, config } => {
            let clear_all = fields.is_empty();
            let clears = |field: CacheField| clear_all || fields.contains(&field);
            let patch = CacheOverridePatch {
                enabled: clears(CacheField::Enabled).then_some(None),
                semantic: clears(CacheField::Semantic).then_some(None),
                threshold: clears(CacheField::Threshold).then_some(None),
                ttl_seconds: clears(CacheField::TtlSeconds).then_some(None),
            };
            update(&config, project, patch)
        }
    }
}

/// Applies `patch` to the project's stored override and prints the result.
fn update(config: &ConfigArg, project: String, patch: CacheOverridePatch) -> anyhow::Result<()> {
    let settings = load(config)?.runtime.cache.clone();
    with_store(config, |store| async move {
        let found = find(&store, &project).await?;
        let current = store.cache_override(&found.id).await?.map(|s| s.settings).unwrap_or_default();
        let next = current.merged(&patch);
        next.validate()?;
        store.set_cache_override(&found.id, &next).await?;
        let stored = store.cache_override(&found.id).await?;
        print_json_line(&describe(&settings, &found, stored.as_ref()))
    })
}

async fn find(store: &Store, project: &str) -> anyhow::Result<Project> {
    match store.find_project(project).await? {
        Some(found) => Ok(found),
        None => bail!("project {project:?} not found; `watchllm project list` shows the projects"),
    }
}
